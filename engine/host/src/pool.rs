//! A second engine for each step's instance, with its memories, tables and fiber stacks taken
//! from a pool rather than mapped and unmapped per step.
//!
//! A one-step no-op run spends half its time in the kernel when each instance maps its own
//! linear memory, fiber stack and tables and unmaps them at the end: `mmap`, `mprotect`,
//! `munmap` and the page faults and TLB shootdowns that follow. wasmtime's pooling allocator
//! keeps those mappings for the process's life and only resets a slot between uses (wasm pages
//! the plugin touched are discarded with `madvise`, so the next step sees fresh memory).
//!
//! A pool has a fixed number of slots, and a component larger than a slot cannot use it. So
//! the pool is an addition, not a replacement: a plugin is also loaded into its pool engine
//! when it fits a slot (wasmtime checks this when the component is loaded), and a step takes a
//! pool slot when one is free. Everything else, a plugin too large for a slot, a step that
//! finds every slot busy, `describe()`, runs on the ordinary engine as before, with the same
//! limits. Only the engine of the default wasm stack gets a pool: each pool reserves address
//! space for all its memories up front, and other stack sizes are rare. And only a host that
//! asks for one (`HostConfig::instance_pool`, the daemon) has it.

use std::sync::Arc;

use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How many steps can hold a pool slot at once. Past this, steps run on the ordinary engine.
/// A daemon running 50 runs of a chain at once has one step of each in flight; 128 covers that
/// with room for fan-outs. Each slot reserves [`MEMORIES_PER_SLOT`] × 4 GiB (plus guards) of
/// address space, never memory: 1 TiB for the pool, of the 128 TiB a process may address.
pub(crate) const SLOTS: u32 = 128;

/// The linear memories a component may define to use a slot. A Rust, Python or JavaScript
/// plugin defines one (the others import it); two leave room for a component that embeds a
/// second module with its own.
const MEMORIES_PER_SLOT: u32 = 2;

/// The tables a component may define to use a slot: `wit-component` adds a shim table and
/// languages with dynamic linking one per library; a table slot reserves 160 KiB of address
/// space at its default 20,000 elements.
const TABLES_PER_SLOT: u32 = 16;

/// The core instances a component may create to use a slot. A Rust plugin has about five, and
/// the Python and JavaScript examples fit too; they cost no address space, only a count.
const INSTANCES_PER_SLOT: u32 = 64;

/// How much of a slot's tables and fiber stack is zeroed in place rather than discarded.
const KEEP_RESIDENT: usize = 64 * 1024;

/// The pool of one engine, and how many of its slots are free.
pub(crate) struct Pool {
    pub(crate) engine: Engine,
    pub(crate) linker: wasmtime::component::Linker<crate::sandbox::StepState>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// A pool slot, held for as long as the step's store lives.
pub(crate) type Slot = tokio::sync::OwnedSemaphorePermit;

impl Pool {
    /// An engine like the one `config` makes, with instances in a pool. `None` (and a debug
    /// line) when the pool cannot be made, e.g. when the process may not reserve that much
    /// address space (`ulimit -v`): steps then run on the ordinary engine only.
    pub(crate) fn new(mut config: wasmtime::Config) -> Option<Pool> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(SLOTS)
            .total_stacks(SLOTS)
            .max_memories_per_component(MEMORIES_PER_SLOT)
            .total_memories(SLOTS * MEMORIES_PER_SLOT)
            .max_tables_per_component(TABLES_PER_SLOT)
            .total_tables(SLOTS * TABLES_PER_SLOT)
            .max_core_instances_per_component(INSTANCES_PER_SLOT)
            .total_core_instances(SLOTS * INSTANCES_PER_SLOT)
            // A slot's memory pages are discarded, not zeroed in place: a plugin touches
            // little of a large memory, and the next step sees fresh pages. Tables and the
            // fiber stack are small and used at their start, where zeroing the first
            // [`KEEP_RESIDENT`] in place costs less than faulting them back in.
            .linear_memory_keep_resident(0)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT);
        // A fiber stack holds host frames that passed a step's secrets around; clear it
        // between steps even though wasm cannot read its own stack.
        config.async_stack_zeroing(true);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let built = Engine::new(&config).and_then(|engine| {
            let linker = crate::sandbox::linker(&engine)?;
            Ok((engine, linker))
        });
        match built {
            Ok((engine, linker)) => Some(Pool {
                engine,
                linker,
                slots: Arc::new(tokio::sync::Semaphore::new(SLOTS as usize)),
            }),
            Err(e) => {
                tracing::debug!("no instance pool, each step maps its own memory: {e:#}");
                None
            }
        }
    }

    /// A free slot, if there is one. The pool's totals are [`SLOTS`] times what one component
    /// may use, so a step holding a slot always finds its memories, tables and instances free.
    pub(crate) fn try_slot(&self) -> Option<Slot> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin is compiled once: the pool's engine finds the ordinary engine's compile cache
    /// entry, because the pool changes nothing that compiled code depends on.
    #[test]
    fn the_pool_engine_shares_the_compile_cache_entry() {
        let config = crate::engine_config(shiphat_workflow::DEFAULT_STACK);
        let engine = Engine::new(&config).unwrap();
        let pool = Pool::new(config).expect("a pool on this machine");
        let digest = [7; 32];
        assert_eq!(
            crate::cache::key(&engine, &digest),
            crate::cache::key(&pool.engine, &digest)
        );
    }

    #[test]
    fn a_slot_is_free_again_once_dropped() {
        let pool = Pool::new(crate::engine_config(shiphat_workflow::DEFAULT_STACK)).unwrap();
        let slots: Vec<Slot> = (0..SLOTS).map(|_| pool.try_slot().unwrap()).collect();
        assert!(pool.try_slot().is_none(), "more slots than the pool has");
        drop(slots);
        assert!(pool.try_slot().is_some());
    }
}
