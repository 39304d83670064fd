//! A plugin that misbehaves on purpose, one way per `mode`, so the engine's tests can check
//! that each misbehaviour is contained: a fuel or time limit stops `loop`, the memory limit
//! stops `alloc`, the stack limit stops `recurse`, the log limit bounds `flood`, the output
//! limit rejects `big_output`, and so on.
//!
//! It plays the part of Extism's `loop.wasm` and `unreachable.wasm` test guests, built from
//! source. Every mode must really do what it says once compiled with optimisations, so the
//! busy ones route their values through `core::hint::black_box` to keep the optimiser from
//! proving the work useless.

use std::hint::black_box;
use std::io::Write;

use serde::Deserialize;
use serde_json::json;
use shiphat_plugin_sdk::bindings::shiphat::plugin::host;
use shiphat_plugin_sdk::bindings::wasi::clocks::monotonic_clock;
use shiphat_plugin_sdk::bindings::wasi::filesystem::types::{
    DescriptorFlags, OpenFlags, PathFlags,
};
use shiphat_plugin_sdk::{
    self as sdk, Guest, Output, PluginInfo, StepError, StepInput, StepOutput,
};

/// What `big_output` returns when no `size` is given: twice the engine's default output limit
/// of 1 MiB, so the default configuration is over the limit.
const DEFAULT_BIG_OUTPUT: usize = 2 * 1024 * 1024;

/// How much `flood` writes per call: large enough to fill a log limit quickly, small enough
/// that a limit is crossed by at most this much.
const FLOOD_CHUNK: usize = 64 * 1024;

/// How much `print_secret` writes per call.
const PRINT_PIECE: usize = 4096;

/// What `alloc` adds per round. One MiB grows memory fast without a single request already
/// exceeding a small limit.
const ALLOC_STEP: usize = 1024 * 1024;

/// The size of a wasm page: touching one byte per page commits the whole page.
const PAGE: usize = 64 * 1024;

struct Misbehave;

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Loop,
    Alloc,
    Recurse,
    Flood,
    Panic,
    Unreachable,
    Exit,
    NotJson,
    NotObject,
    BigOutput,
    Stderr,
    Sleep,
    PrintSecret,
    BigSummary,
    BigFailure,
    BigTransient,
    BigInvalidConfig,
    OpenFiles,
    Lock,
    LockAndLoop,
    LockReadOnly,
    SyncFilesystem,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: Mode,
    bytes: Option<u64>,
    size: Option<usize>,
    ms: Option<u64>,
    secret: Option<String>,
    path: Option<String>,
}

impl Guest for Misbehave {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Misbehaves on purpose, one way per mode, for the engine's tests.".into(),
            config_schema: json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "mode": {
                        "description": "How to misbehave.",
                        "oneOf": [
                            { "const": "loop", "description": "Spin forever." },
                            { "const": "alloc", "description": "Allocate and touch 1 MiB after 1 MiB, keeping all of it, until memory runs out." },
                            { "const": "recurse", "description": "Recurse without end until the stack overflows." },
                            { "const": "flood", "description": "Write `bytes` bytes to stdout in 64 KiB chunks (forever without `bytes`), then succeed with outputs `{\"written\": n}`; stops early when stdout refuses a write." },
                            { "const": "panic", "description": "Panic with `misbehave: deliberate panic`." },
                            { "const": "unreachable", "description": "Execute the `unreachable` instruction." },
                            { "const": "exit", "description": "Call `wasi:cli/exit` with status 1 instead of returning." },
                            { "const": "not_json", "description": "Succeed with outputs that are not JSON." },
                            { "const": "not_object", "description": "Succeed with outputs that are JSON but not an object (`[1,2]`)." },
                            { "const": "big_output", "description": "Succeed with an output string of `size` bytes (2 MiB by default)." },
                            { "const": "stderr", "description": "Write a line to stderr, then succeed." },
                            { "const": "sleep", "description": "Sleep `ms` milliseconds in one blocking host call, then succeed." },
                            { "const": "print_secret", "description": "Write `size` bytes of `x`, then the value of the secret `secret`, then a newline, to stdout in writes of 4 KiB; then succeed." },
                            { "const": "big_summary", "description": "Succeed with a summary of `size` bytes (2 MiB by default)." },
                            { "const": "big_failure", "description": "Fail with a message of `size` bytes (2 MiB by default)." },
                            { "const": "big_transient", "description": "Fail transiently with a message of `size` bytes (2 MiB by default)." },
                            { "const": "big_invalid_config", "description": "Reject the config with a message of `size` bytes (2 MiB by default)." },
                            { "const": "open_files", "description": "Open the file `path` again and again, keeping every handle, until an open fails; then succeed with outputs `{\"opened\": n, \"error\": \"...\"}`." },
                            { "const": "lock", "description": "Try to lock the file `path` (`host.try-lock`), then succeed with outputs `{\"taken\": bool}`; the lock is released as the step ends." },
                            { "const": "lock_and_loop", "description": "Lock the file `path`, failing when another holder has it, then spin forever." },
                            { "const": "lock_read_only", "description": "Open the existing file `path` for reading only and try to lock it, as a step with only a read grant could; succeed with outputs `{\"taken\": bool}`." },
                            { "const": "sync_filesystem", "description": "Sync the filesystem that holds the directory `path` (`host.sync-filesystem`); succeed with outputs `{\"synced\": bool}`." }
                        ]
                    },
                    "bytes": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "For `flood`: how many bytes to write in all. Unlimited when absent."
                    },
                    "size": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "For `big_output` and the other `big_` modes: the length of the string in bytes, 2 MiB by default; for `print_secret`: how much comes before the secret."
                    },
                    "secret": {
                        "type": "string",
                        "description": "For `print_secret`: the name of the secret to print."
                    },
                    "path": {
                        "type": "string",
                        "description": "For `open_files` and the `lock` modes: the file to open; for `sync_filesystem`, a directory."
                    },
                    "ms": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "For `sleep`: how long to sleep, in milliseconds. 0 by default."
                    }
                },
                "required": ["mode"],
                "additionalProperties": false
            })
            .to_string(),
        }
    }

    fn run(input: StepInput) -> Result<StepOutput, StepError> {
        let config: Config = sdk::config(&input)?;
        match config.mode {
            Mode::Loop => spin(),
            Mode::Alloc => hoard(),
            Mode::Recurse => {
                let depth = recurse(black_box(0));
                // Never reached; printing it keeps the result used.
                Ok(Output::new(format!("recursed {depth} deep")).into())
            }
            Mode::Flood => Ok(flood(config.bytes)),
            Mode::Panic => panic!("misbehave: deliberate panic"),
            Mode::Unreachable => unreachable_instruction(),
            Mode::Exit => std::process::exit(1),
            Mode::NotJson => Ok(raw("not json")),
            Mode::NotObject => Ok(raw("[1,2]")),
            Mode::BigOutput => {
                let size = config.size.unwrap_or(DEFAULT_BIG_OUTPUT);
                Ok(Output::new(format!("{size} bytes of output"))
                    .set("big", "x".repeat(size))
                    .into())
            }
            Mode::Stderr => {
                eprintln!("misbehave: a line on stderr");
                Ok(Output::new("wrote to stderr").into())
            }
            Mode::PrintSecret => {
                let name = config.secret.unwrap_or_default();
                let value = sdk::secret(&name).unwrap_or_default();
                let line = format!("{}{value}\n", "x".repeat(config.size.unwrap_or(0)));
                // Separate writes of 4 KiB, as a buffered runtime would make them: the engine
                // sees the line arrive in pieces, cut wherever the pieces end.
                let mut out = std::io::stdout().lock();
                for piece in line.as_bytes().chunks(PRINT_PIECE) {
                    let _ = out.write_all(piece);
                    let _ = out.flush();
                }
                Ok(Output::new("printed the secret").into())
            }
            Mode::BigSummary => Ok(Output::new(big(config.size)).into()),
            Mode::BigFailure => Err(StepError::Failed(sdk::Failure {
                message: big(config.size),
                outputs: "{}".into(),
            })),
            Mode::BigTransient => Err(StepError::Transient(big(config.size))),
            Mode::BigInvalidConfig => Err(StepError::InvalidConfig(big(config.size))),
            Mode::OpenFiles => {
                let path = config.path.unwrap_or_default();
                let mut held = Vec::new();
                let error = loop {
                    match std::fs::File::open(&path) {
                        Ok(file) => held.push(file),
                        Err(e) => break e.to_string(),
                    }
                };
                Ok(Output::new(format!("opened `{path}` {} times", held.len()))
                    .set("opened", held.len())
                    .set("error", error)
                    .into())
            }
            Mode::Lock => {
                let taken = lock(config.path)?;
                Ok(Output::new(format!("taken: {taken}"))
                    .set("taken", taken)
                    .into())
            }
            Mode::LockReadOnly => {
                let path = config.path.unwrap_or_default();
                let fail = |e: std::io::Error| sdk::failed(format!("`{path}`: {e}"));
                let (dir, rest) =
                    sdk::fs::preopen_for(std::path::Path::new(&path)).map_err(fail)?;
                let file = dir
                    .open_at(
                        PathFlags::empty(),
                        &sdk::fs::slash_path(&rest),
                        OpenFlags::empty(),
                        DescriptorFlags::READ,
                    )
                    .map_err(|code| fail(sdk::fs::error("open-at", code)))?;
                let taken =
                    host::try_lock(&file).map_err(|e| sdk::failed(format!("`{path}`: {e}")))?;
                Ok(Output::new(format!("taken: {taken}"))
                    .set("taken", taken)
                    .into())
            }
            Mode::SyncFilesystem => {
                let path = config.path.unwrap_or_default();
                let synced = sdk::fs::sync_filesystem(std::path::Path::new(&path))
                    .map_err(|e| sdk::failed(format!("`{path}`: {e}")))?;
                Ok(Output::new(format!("synced: {synced}"))
                    .set("synced", synced)
                    .into())
            }
            Mode::LockAndLoop => {
                if !lock(config.path)? {
                    return Err(sdk::failed("the lock is held by another holder"));
                }
                spin()
            }
            Mode::Sleep => {
                let ms = config.ms.unwrap_or(0);
                // One blocking `wasi:clocks` call, not a busy loop: the engine must be able to
                // time it out while the guest executes no instructions.
                monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000)).block();
                Ok(Output::new(format!("slept {ms} ms"))
                    .set("slept_ms", ms)
                    .into())
            }
        }
    }
}

/// A text of `size` bytes, [`DEFAULT_BIG_OUTPUT`] by default.
fn big(size: Option<usize>) -> String {
    "x".repeat(size.unwrap_or(DEFAULT_BIG_OUTPUT))
}

/// A step result whose outputs are `text` verbatim, for the modes that break the contract.
fn raw(text: &str) -> StepOutput {
    StepOutput {
        outputs: text.into(),
        summary: format!("returned `{text}` as outputs"),
    }
}

/// Executes wasm's `unreachable`, the trap a C or Rust abort turns into, without Rust's panic
/// machinery in front of it.
fn unreachable_instruction() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    // Plugins run only as wasm; this keeps `cargo check` for the host target working.
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

/// Opens the file `path` and tries to lock it, keeping the file open (and so the lock held)
/// until the step ends.
fn lock(path: Option<String>) -> Result<bool, StepError> {
    let path = path.unwrap_or_default();
    let file = sdk::fs::LockFile::open(std::path::Path::new(&path))
        .map_err(|e| sdk::failed(format!("`{path}`: {e}")))?;
    let taken = file
        .try_lock()
        .map_err(|e| sdk::failed(format!("`{path}`: {e}")))?;
    std::mem::forget(file);
    Ok(taken)
}

fn spin() -> ! {
    let mut i = 0u64;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

fn hoard() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; ALLOC_STEP];
        // A zeroed allocation may be lazily committed on some hosts; writing every page
        // makes the memory real.
        for i in (0..block.len()).step_by(PAGE) {
            block[i] = black_box(1);
        }
        hoard.push(black_box(block));
    }
}

/// Recurses until the wasm stack overflows.
///
/// The frame holds only scalars, which live in wasm locals: an array or a `black_box`ed
/// local would sit on Rust's shadow stack in linear memory instead, and overflowing that
/// is an out-of-bounds access, not the engine's stack limit. The result of the call is
/// mixed in after it returns, with an operation that is not a simple accumulator, so the
/// optimiser cannot turn the recursion into a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    // Never true at run time (the caller starts at an opaque depth); the compiler rejects a
    // function that provably never returns.
    if depth == u64::MAX {
        return depth;
    }
    let below = recurse(depth + 1);
    below.rotate_left((depth & 63) as u32) ^ depth
}

fn flood(limit: Option<u64>) -> StepOutput {
    // Lines of 64 bytes: the log is line-oriented, and a 64 KiB line would test line length
    // rather than volume.
    let mut chunk = [b'x'; FLOOD_CHUNK];
    for line_end in (63..FLOOD_CHUNK).step_by(64) {
        chunk[line_end] = b'\n';
    }
    let mut out = std::io::stdout().lock();
    let mut written = 0u64;
    let mut refused = None;
    while limit.is_none_or(|limit| written < limit) {
        let n = limit.map_or(FLOOD_CHUNK, |limit| {
            (limit - written).min(FLOOD_CHUNK as u64) as usize
        });
        if let Err(e) = out.write_all(&chunk[..n]) {
            refused = Some(e);
            break;
        }
        written += n as u64;
    }
    let _ = out.flush();
    let summary = match refused {
        Some(e) => format!("wrote {written} bytes to stdout, then it refused: {e}"),
        None => format!("wrote {written} bytes to stdout"),
    };
    Output::new(summary).set("written", written).into()
}

shiphat_plugin_sdk::export!(Misbehave);
