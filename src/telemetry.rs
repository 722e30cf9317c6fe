//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG` (default `info`).
//!
//! Lines are written by a thread of their own, not by the task that logs
//! them: every finished RPC logs a line, and writing each with its own
//! `write(2)` on a runtime worker was about 5 % of the server's CPU on the
//! read path (a perf profile of GetVoice at 64 in flight). The writer
//! thread takes what is queued, writes it in as few calls as it fits, and
//! flushes whenever the queue is empty, so a line is out as soon as that
//! thread runs. Nothing is dropped: a full queue (128,000 lines) makes the
//! logging task wait. Lines still queued when the process is killed are
//! lost; on a normal exit the guard [`init`] returns writes them out.

use std::io::{BufWriter, stderr};

use clap::ValueEnum;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. Call once, first thing in `main`, and
/// keep the guard until the process ends: dropping it writes out what is
/// still queued.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(format: LogFormat) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("voicehub-log")
        .finish(BufWriter::new(stderr()));
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}
