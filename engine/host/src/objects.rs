//! What a component's core instances cost the host outside their memories and tables.
//!
//! wasmtime keeps each core instance's globals and function references in a context it
//! allocates on the host, sized by the module: a module with a million globals costs 16 MiB
//! per instance, and a component may instantiate it over and over. The memory limiter never
//! sees that memory, so it is estimated here once per plugin, from the component's bytes, and
//! charged to each step's `memory` limit before the plugin starts.

use wasmparser::{Encoding, Instance, Parser, Payload};

/// Host bytes per global in an instance's context (`VMGlobalDefinition`).
const GLOBAL_BYTES: u64 = 16;

/// Host bytes per function or import in an instance's context: a function reference is four
/// pointers, an import about three; the larger is charged for both.
const FUNCTION_BYTES: u64 = 32;

/// What any instance costs besides: its context header and the engine's bookkeeping.
const INSTANCE_BYTES: u64 = 1024;

/// A scope being parsed: a core module and its estimate so far, or a component and the
/// estimates of the core modules it has defined, by index.
enum Scope {
    Module(u64),
    Component(Vec<u64>),
}

/// The host bytes the core instances of `component` cost, by their modules' globals,
/// functions and imports. An instance of a module the parse cannot place (imported, aliased
/// from an outer scope) is charged as the largest module seen. Bytes that do not parse give
/// what was counted so far; compiling them reports the error.
pub(crate) fn instances_cost(component: &[u8]) -> u64 {
    let mut scopes = Vec::new();
    let mut largest = INSTANCE_BYTES;
    let mut total = 0u64;
    for payload in Parser::new(0).parse_all(component) {
        let Ok(payload) = payload else {
            break;
        };
        let add = |scopes: &mut Vec<Scope>, count: u32, each: u64| {
            if let Some(Scope::Module(bytes)) = scopes.last_mut() {
                *bytes = bytes.saturating_add(each.saturating_mul(u64::from(count)));
            }
        };
        match payload {
            Payload::Version { encoding, .. } => scopes.push(match encoding {
                Encoding::Module => Scope::Module(INSTANCE_BYTES),
                Encoding::Component => Scope::Component(Vec::new()),
            }),
            Payload::GlobalSection(globals) => add(&mut scopes, globals.count(), GLOBAL_BYTES),
            Payload::FunctionSection(functions) => {
                add(&mut scopes, functions.count(), FUNCTION_BYTES)
            }
            Payload::ImportSection(imports) => add(&mut scopes, imports.count(), FUNCTION_BYTES),
            Payload::InstanceSection(instances) => {
                if let Some(Scope::Component(modules)) = scopes.last() {
                    for instance in instances.into_iter().flatten() {
                        if let Instance::Instantiate { module_index, .. } = instance {
                            let cost = modules.get(module_index as usize).copied();
                            total = total.saturating_add(cost.unwrap_or(largest));
                        }
                    }
                }
            }
            Payload::End(_) => {
                if let Some(Scope::Module(bytes)) = scopes.pop() {
                    largest = largest.max(bytes);
                    if let Some(Scope::Component(modules)) = scopes.last_mut() {
                        modules.push(bytes);
                    }
                }
            }
            _ => {}
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_is_charged_its_modules_globals_and_functions() {
        let component = wat::parse_str(
            r#"(component
                (core module $small)
                (core module $globals
                    (global i32 (i32.const 0)) (global i32 (i32.const 0))
                    (func) (func) (func))
                (core instance (instantiate $small))
                (core instance (instantiate $globals))
                (core instance (instantiate $globals)))"#,
        )
        .unwrap();
        let globals = INSTANCE_BYTES + 2 * GLOBAL_BYTES + 3 * FUNCTION_BYTES;
        assert_eq!(instances_cost(&component), INSTANCE_BYTES + 2 * globals);
    }
}
