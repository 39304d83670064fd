//! Components written by hand in WAT, for tests that need wasm objects no compiler emits:
//! many memories, many tables, many core instances.

use std::path::{Path, PathBuf};

use super::root;

/// Builds a component from a core module in WAT laid out by the canonical ABI of the `step`
/// world (as `plugins/examples/echo-wat/echo.wat` is), the way `wasm-tools component embed` +
/// `component new` would. `extra` is component-level WAT added after everything
/// `wit-component` generated, e.g. more core modules and instances of them. Writes
/// `{name}.wasm` into `dir` and returns its path.
pub fn component(dir: &Path, name: &str, core: &str, extra: &str) -> PathBuf {
    let mut module = wat::parse_str(core).expect("the core module parses");
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(root().join("wit"))
        .expect("the WIT parses");
    let world = resolve
        .select_world(&[package], Some("step"))
        .expect("the `step` world");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("the world embeds");
    let mut component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .expect("the module fits the world")
        .encode()
        .expect("the component encodes");
    if !extra.is_empty() {
        // Appending after the last item keeps every index wit-component assigned valid.
        let text = wasmprinter::print_bytes(&component).expect("the component prints");
        let body = text
            .trim_end()
            .strip_suffix(')')
            .expect("a component ends with `)`");
        component = wat::parse_str(format!("{body}\n{extra}\n)")).expect("the component parses");
    }
    let file = dir.join(format!("{name}.wasm"));
    std::fs::write(&file, component).unwrap();
    file
}

/// A core module for [`component`] that, when run, grows each of `memories` extra memories
/// by `pages` wasm pages and each of `tables` tables by `elements` elements, then succeeds.
/// A refused growth traps.
pub fn hoarder(memories: usize, pages: u32, tables: usize, elements: u32) -> String {
    let mut declare = String::new();
    let mut grow = String::new();
    for i in 0..memories {
        declare.push_str(&format!("  (memory $m{i} 0)\n"));
        grow.push_str(&format!(
            "    (if (i32.eq (memory.grow $m{i} (i32.const {pages})) (i32.const -1)) (then unreachable))\n"
        ));
    }
    for i in 0..tables {
        declare.push_str(&format!("  (table $t{i} 0 funcref)\n"));
        grow.push_str(&format!(
            "    (if (i32.eq (table.grow $t{i} (ref.null func) (i32.const {elements})) (i32.const -1)) (then unreachable))\n"
        ));
    }
    format!(
        r#"(module
  (memory (export "memory") 1)
{declare}
  (data (i32.const 16) "hoarder")
  (data (i32.const 32) "0.1.0")
  (data (i32.const 48) "{{}}")
  (data (i32.const 64) "{{}}")
  (data (i32.const 80) "grew")
  (global $ret i32 (i32.const 256))
  (global $heap (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get 3) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size 0) (i32.const 65536))) (then unreachable))
    (local.get $at))
  (func (export "describe") (result i32)
    (i32.store offset=0 (global.get $ret) (i32.const 16))
    (i32.store offset=4 (global.get $ret) (i32.const 7))
    (i32.store offset=8 (global.get $ret) (i32.const 32))
    (i32.store offset=12 (global.get $ret) (i32.const 5))
    (i32.store offset=16 (global.get $ret) (i32.const 16))
    (i32.store offset=20 (global.get $ret) (i32.const 7))
    (i32.store offset=24 (global.get $ret) (i32.const 48))
    (i32.store offset=28 (global.get $ret) (i32.const 2))
    (global.get $ret))
  (func (export "run")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32)
    (result i32)
{grow}
    (i32.store8 offset=0 (global.get $ret) (i32.const 0))
    (i32.store offset=4 (global.get $ret) (i32.const 64))
    (i32.store offset=8 (global.get $ret) (i32.const 2))
    (i32.store offset=12 (global.get $ret) (i32.const 80))
    (i32.store offset=16 (global.get $ret) (i32.const 4))
    (global.get $ret))
)"#
    )
}
