//! Logging setup: `tracing` to stderr, as text or JSON. Log fields come first and the message
//! last; no secret is ever a field (keys and tokens are [`crate::secret::Secret`]).
//!
//! Lines at info and below (one per request) are buffered and written by a small flusher
//! thread every [`FLUSH_EVERY`] or whenever [`FLUSH_AT`] bytes are waiting, so a busy proxy pays
//! one `write(2)` per batch instead of one per request (the way access logs are usually
//! written). Warnings and errors go out at once, after whatever was buffered before them, so
//! order is kept. [`flush`] empties the buffer; the binary calls it before exiting.

use std::io::Write;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Longest a buffered line waits before it reaches stderr.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Buffered bytes that trigger an immediate write.
const FLUSH_AT: usize = 64 * 1024;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = clap::ValueEnum::to_possible_value(self);
        f.write_str(name.as_ref().map_or("", |v| v.get_name()))
    }
}

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Held while lines are written to stderr (taken before [`BUFFER`], never after), so writes keep
/// their order while [`BUFFER`] itself is only ever held to append or swap.
static WRITING: Mutex<()> = Mutex::new(());
static FLUSHER: OnceLock<()> = OnceLock::new();

/// Install the global subscriber. `RUST_LOG` overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, never into a log file or collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(Stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_ok() {
        FLUSHER.get_or_init(|| {
            let spawned = std::thread::Builder::new()
                .name("log-flush".into())
                .spawn(|| loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush();
                });
            if spawned.is_err() {
                // No flusher: every line is written as it comes.
                UNBUFFERED.get_or_init(|| ());
            }
        });
    }
}

static UNBUFFERED: OnceLock<()> = OnceLock::new();

/// Write out everything buffered. The lines are swapped out under the buffer's lock and written
/// after it is released, so a request logging a line never waits for the `write(2)`.
pub fn flush() {
    let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = std::mem::take(&mut *lock());
    write_out(&mut out);
    // Hand the emptied allocation back when nothing was logged meanwhile.
    let mut buf = lock();
    if buf.is_empty() {
        *buf = out;
    }
}

fn lock() -> MutexGuard<'static, Vec<u8>> {
    // A panic while holding the lock leaves plain bytes behind: still fine to write.
    BUFFER.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        let _ = std::io::stderr().write_all(buf);
        buf.clear();
    }
}

/// The writer the subscriber gets: buffered for info and below, immediate above.
struct Stderr;

/// One log line on its way out.
pub struct LineWriter {
    urgent: bool,
}

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if self.urgent || UNBUFFERED.get().is_some() {
            // After whatever was buffered before it: order is kept.
            let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = std::mem::take(&mut *lock());
            out.extend_from_slice(line);
            write_out(&mut out);
            return Ok(line.len());
        }
        let full = {
            let mut buf = lock();
            buf.extend_from_slice(line);
            buf.len() >= FLUSH_AT
        };
        if full {
            flush();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        LineWriter {
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}
