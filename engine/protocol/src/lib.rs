//! shiphat's wire contract: every type that crosses a process boundary, and nothing else.
//! The runner's events (which the CLI prints, the daemon stores and streams, and Slack and the
//! web page follow), the statuses of runs and steps (which the store keeps), the answers of
//! the HTTP API and the requests it takes. Each is `Serialize + Deserialize`, so every side
//! reads and writes the same shape, and `JsonSchema`, so the OpenAPI document's schemas are
//! generated from them rather than written by hand.
//!
//! Facts derived from these types, such as whether a run was rolled back ([`Rollback::of`]),
//! are computed here once, so no front end computes them its own way.
//!
//! The crate knows nothing of wasmtime, SQLite, HTTP or tokio: it is data and its rules.
//! The JSON shapes are a public, documented interface (docs/events.md, docs/daemon.md):
//! fields may be added, never renamed or removed.

mod api;
mod event;
mod openapi;
mod status;
mod why;

pub use crate::api::*;
pub use crate::event::*;
pub use crate::openapi::openapi_schemas;
pub use crate::status::*;
pub use crate::why::why;
