//! The generated bindings for `wit/shiphat.wit`. Nothing outside this crate sees them.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "shiphat:plugin/step",
    imports: { default: async },
    exports: { default: async },
    with: {
        "wasi": wasmtime_wasi::p2::bindings,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
    },
});

pub use self::shiphat::plugin::host::{Host as HostImports, Level};
pub use self::shiphat::plugin::types::StepContext;
