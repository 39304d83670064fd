//! A plugin's stdout and stderr, captured as step log lines within a byte budget.
//!
//! WASI's own `MemoryOutputPipe` traps the guest when it is full, which would turn a chatty
//! plugin into a crashed one. Here a full budget drops further bytes instead and says so
//! once, so a plugin that writes gigabytes keeps running with bounded memory.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::redact::Redactor;
use crate::{Level, fmt_bytes};

/// Where a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogSource {
    /// `host.log` from the plugin.
    Plugin,
    Stdout,
    Stderr,
    /// A line the engine adds: a refused HTTP request, a truncation marker.
    Engine,
}

impl LogSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Plugin => "plugin",
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
            LogSource::Engine => "engine",
        }
    }
}

/// One line of a step's log, secrets already redacted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    pub source: LogSource,
    pub message: String,
}

/// Receives a step's log lines as they are produced.
pub type LogSink = Arc<dyn Fn(LogLine) + Send + Sync>;

/// A partial line longer than this is emitted as it is (less what may be the start of a
/// secret), so one endless line is not held back whole while it waits for its newline.
const MAX_LINE: usize = 16 * 1024;

/// How much of stderr is kept aside to find a panic message in, after the budget is spent.
const STDERR_TAIL: usize = 4 * 1024;

/// A byte budget shared by the writers of one stream, and the lines they make.
pub(crate) struct Capture {
    inner: Mutex<CaptureInner>,
}

struct CaptureInner {
    source: LogSource,
    budget: usize,
    used: usize,
    dropped: u64,
    pending: Vec<u8>,
    /// The last bytes written, kept even past the budget (stderr only): where a panic
    /// message is found when the plugin traps.
    tail: Option<Vec<u8>>,
    sink: LogSink,
    redactor: Redactor,
}

impl Capture {
    pub(crate) fn new(
        source: LogSource,
        budget: usize,
        sink: LogSink,
        redactor: Redactor,
    ) -> Arc<Self> {
        let tail = (source == LogSource::Stderr).then(Vec::new);
        Arc::new(Capture {
            inner: Mutex::new(CaptureInner {
                source,
                budget,
                used: 0,
                dropped: 0,
                pending: Vec::new(),
                tail,
                sink,
                redactor,
            }),
        })
    }

    /// Adds bytes the plugin wrote; never fails and never blocks.
    pub(crate) fn write(&self, mut bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(tail) = &mut inner.tail {
            tail.extend_from_slice(&bytes[bytes.len().saturating_sub(STDERR_TAIL)..]);
            let excess = tail.len().saturating_sub(STDERR_TAIL);
            tail.drain(..excess);
        }
        let room = inner.budget - inner.used;
        if bytes.len() > room {
            let first_drop = inner.dropped == 0;
            inner.dropped += (bytes.len() - room) as u64;
            bytes = &bytes[..room];
            inner.take(bytes);
            if first_drop {
                // Nothing more of this line will come: the start of a secret cut off here
                // would never be completed, and so never redacted.
                let CaptureInner {
                    pending, redactor, ..
                } = &mut *inner;
                redactor.mask_partial_tail(pending);
                inner.flush_pending();
                let marker = format!(
                    "[{} truncated: the step's log_limit of {} is reached; further output is dropped]",
                    inner.source.as_str(),
                    fmt_bytes(inner.budget as u64)
                );
                inner.emit(Level::Warn, LogSource::Engine, marker);
            }
            return;
        }
        inner.take(bytes);
    }

    /// Emits what is left of a last, unterminated line, and how much was dropped. `cut` says
    /// the plugin was stopped (a trap, a timeout) rather than done: the line may end in the
    /// middle of a secret, whose start is then masked.
    pub(crate) fn finish(&self, cut: bool) {
        let mut inner = self.inner.lock().unwrap();
        if cut {
            let CaptureInner {
                pending, redactor, ..
            } = &mut *inner;
            redactor.mask_partial_tail(pending);
        }
        inner.flush_pending();
        if inner.dropped > 0 {
            let message = format!(
                "[{} bytes of {} dropped]",
                inner.dropped,
                inner.source.as_str()
            );
            inner.emit(Level::Warn, LogSource::Engine, message);
            inner.dropped = 0;
        }
    }

    /// The last few KiB of what the plugin wrote, as text.
    pub(crate) fn tail(&self) -> String {
        let inner = self.inner.lock().unwrap();
        String::from_utf8_lossy(inner.tail.as_deref().unwrap_or_default()).into_owned()
    }
}

impl CaptureInner {
    fn take(&mut self, bytes: &[u8]) {
        self.used += bytes.len();
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..newline]);
            self.flush_pending();
            rest = &rest[newline + 1..];
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() >= MAX_LINE {
            // Cut where no secret straddles the cut, keeping back what may be a secret's start.
            let cut = self.redactor.safe_cut(&self.pending);
            let rest = self.pending.split_off(cut);
            self.flush_pending();
            self.pending = rest;
        }
    }

    /// Emits the pending line. Blank lines carry nothing in a step log and are dropped.
    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let line = String::from_utf8_lossy(&self.pending)
            .trim_end_matches('\r')
            .to_owned();
        self.pending.clear();
        let level = if self.source == LogSource::Stderr {
            Level::Warn
        } else {
            Level::Info
        };
        self.emit(level, self.source, line);
    }

    fn emit(&self, level: Level, source: LogSource, message: String) {
        let message = self.redactor.redact(&message);
        (self.sink)(LogLine {
            level,
            source,
            message,
        });
    }
}

/// The handle WASI gets for the guest's stdout or stderr.
#[derive(Clone)]
pub(crate) struct CaptureStream(pub(crate) Arc<Capture>);

/// How much the guest may write in one go: any amount is accepted, this only sizes chunks.
const WRITE_PERMIT: usize = 64 * 1024;

impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CaptureStream {
    async fn ready(&mut self) {}
}

impl OutputStream for CaptureStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for CaptureStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(budget: usize) -> (Arc<Capture>, Arc<Mutex<Vec<LogLine>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink_lines = lines.clone();
        let sink: LogSink = Arc::new(move |line| sink_lines.lock().unwrap().push(line));
        (
            Capture::new(LogSource::Stderr, budget, sink, Redactor::default()),
            lines,
        )
    }

    #[test]
    fn lines_are_split_across_writes_and_blank_ones_dropped() {
        let (capture, lines) = collect(1024);
        capture.write(b"hel");
        capture.write(b"lo\nwor");
        capture.write(b"ld\n\npartial");
        capture.finish(false);
        let messages: Vec<_> = lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.message.clone())
            .collect();
        assert_eq!(messages, ["hello", "world", "partial"]);
    }

    #[test]
    fn output_past_the_budget_is_dropped_with_one_marker_and_a_count() {
        let (capture, lines) = collect(10);
        capture.write(b"0123456789abc\n");
        capture.write(&[b'x'; 1000]);
        capture.finish(false);
        let lines = lines.lock().unwrap();
        let messages: Vec<_> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "0123456789",
                "[stderr truncated: the step's log_limit of 10B is reached; further output is dropped]",
                "[1004 bytes of stderr dropped]"
            ]
        );
        assert!(capture.tail().ends_with("xxxx"));
    }

    fn collect_redacted(budget: usize, secret: &str) -> (Arc<Capture>, Arc<Mutex<Vec<LogLine>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink_lines = lines.clone();
        let sink: LogSink = Arc::new(move |line| sink_lines.lock().unwrap().push(line));
        let redactor = Redactor::new([secret]);
        (
            Capture::new(LogSource::Stdout, budget, sink, redactor),
            lines,
        )
    }

    fn joined(lines: &Mutex<Vec<LogLine>>) -> String {
        lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.message.as_str())
            .collect()
    }

    #[test]
    fn a_secret_across_the_long_line_cut_is_redacted() {
        // Bug: a line force-flushed at 16 KiB was redacted piece by piece.
        let secret = "s3cr3t-value-0123456789";
        for offset in [1, 5, 10, 22] {
            let (capture, lines) = collect_redacted(1 << 20, secret);
            let mut text = "x".repeat(MAX_LINE - offset);
            text.push_str(secret);
            text.push_str(&"y".repeat(100));
            // Two writes, the first ending at the flush size, in the middle of the secret.
            let (first, second) = text.as_bytes().split_at(MAX_LINE);
            capture.write(first);
            capture.write(second);
            capture.finish(false);
            let out = joined(&lines);
            assert!(!out.contains("s3cr3t"), "offset {offset}");
            assert!(!out.contains("0123456789"), "offset {offset}");
            assert!(out.contains("***"), "offset {offset}");
        }
    }

    #[test]
    fn a_secret_cut_by_a_stopped_plugin_is_masked() {
        // A plugin killed mid-line leaves the start of a secret that never ends.
        let (capture, lines) = collect_redacted(1 << 20, "s3cr3t-value-0123456789");
        capture.write(b"token=s3cr3t-val");
        capture.finish(true);
        assert_eq!(joined(&lines), "token=***");
    }

    #[test]
    fn a_secret_cut_by_the_log_limit_is_masked() {
        // Bug: the log budget cut a secret in two and printed its first half.
        let secret = "s3cr3t-value-0123456789";
        let (capture, lines) = collect_redacted(20, secret);
        capture.write(format!("token={secret}\n").as_bytes());
        capture.finish(false);
        let out = joined(&lines);
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(out.starts_with("token=***"), "{out}");
    }
}
