//! The runner's side of the events, whose types are the wire contract's
//! (`shiphat_protocol::Event`): their time stamps, and the host's log levels and sources in
//! the contract's words.

use shiphat_protocol::{LogLevel, LogSource};

/// Now, as an RFC 3339 timestamp in UTC with milliseconds.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A plugin's log level as the events spell it.
pub(crate) fn level(level: shiphat_host::Level) -> LogLevel {
    match level {
        shiphat_host::Level::Trace => LogLevel::Trace,
        shiphat_host::Level::Debug => LogLevel::Debug,
        shiphat_host::Level::Info => LogLevel::Info,
        shiphat_host::Level::Warn => LogLevel::Warn,
        shiphat_host::Level::Error => LogLevel::Error,
    }
}

/// Where a captured log line came from, as the events spell it.
pub(crate) fn source(source: shiphat_host::LogSource) -> LogSource {
    match source {
        shiphat_host::LogSource::Plugin => LogSource::Plugin,
        shiphat_host::LogSource::Stdout => LogSource::Stdout,
        shiphat_host::LogSource::Stderr => LogSource::Stderr,
        shiphat_host::LogSource::Engine => LogSource::Engine,
    }
}
