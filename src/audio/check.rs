//! The serving side of the audio check: hands a call's samples to a child
//! process (`voicehub check-audio`) and reads its verdicts.
//!
//! Guarantees: the child is killed when the call is cancelled or the wall
//! bound passes (`kill_on_drop`); at most one child per CPU runs at a time,
//! the rest wait their turn (bounded by the caller's deadline); a child that
//! dies is blamed on the first sample it gave no verdict for, and only that
//! sample is refused; a child that cannot be started, or speaks nonsense, is
//! this server's failure (UNAVAILABLE to the caller), never the sample's.

use std::{
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use bytes::Bytes;
use rustix::process::Signal;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::Command,
    sync::Semaphore,
};

use super::{Figures, Format};
use crate::metrics::{AudioBoundLabel, AudioCheckLabel, Metrics};

/// Memory a child may use beyond the samples it was sent: far above what
/// parsing real audio needs (a few MiB), far below what hurts the host.
pub const MEMORY_BOUND: u64 = 256 * 1024 * 1024;

/// CPU time a child may use for all of one call's samples: real audio
/// takes well under a second even at the upload limit (50 MiB).
pub const CPU_BOUND: Duration = Duration::from_secs(10);

/// Wall time a child may take by default ([`CheckerConfig::wall`]).
pub const WALL_BOUND: Duration = Duration::from_secs(30);

/// How samples are checked.
#[derive(Debug, Clone)]
pub struct CheckerConfig {
    /// The program run as `<program> check-audio`: `serve`'s own executable.
    pub program: PathBuf,
    /// Wall time a child may take, from its start to its last verdict; past
    /// it, the child is killed and the call is UNAVAILABLE.
    pub wall: Duration,
}

/// The most a child writes that is read: one short line per sample.
const MAX_OUTPUT_BYTES: u64 = 64 * 1024;

/// The subcommand that runs [`super::child::main`].
pub(crate) const SUBCOMMAND: &str = "check-audio";

/// One sample to check.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) format: Format,
    pub(crate) data: Bytes,
}

/// Why samples were not all found to be audio.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    /// Sample `index` is not audio, or broke a bound; `why` is for the caller.
    #[error("sample {index}: {why}")]
    Refused { index: usize, why: String },
    /// The check itself failed (the child could not start, or misbehaved
    /// in a way no sample explains): the caller may retry.
    #[error("the audio check failed: {0}")]
    Failed(String),
}

/// Runs audio checks in bounded child processes.
#[derive(Debug)]
pub(crate) struct Checker {
    config: CheckerConfig,
    children: Semaphore,
    metrics: Metrics,
}

impl Checker {
    /// Checks as `config` says, at most one child per CPU at once.
    pub(crate) fn new(config: CheckerConfig, metrics: &Metrics) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Checker {
            config,
            children: Semaphore::new(cpus),
            metrics: metrics.clone(),
        }
    }

    /// The figures of each sample, in order.
    ///
    /// # Errors
    /// [`CheckError::Refused`] for the first sample that is not audio or
    /// breaks a bound; [`CheckError::Failed`] if the check could not run.
    pub(crate) async fn check(&self, samples: &[Sample]) -> Result<Vec<Figures>, CheckError> {
        let outcome = self.run(samples).await;
        self.count(match &outcome {
            Ok(_) => "accepted",
            Err(CheckError::Refused { .. }) => "refused",
            Err(CheckError::Failed(_)) => "failed",
        });
        outcome
    }

    /// Runs the child with no samples: proves at start-up that the
    /// program exists, runs, and can set its limits.
    ///
    /// # Errors
    /// What went wrong, for the operator.
    pub(crate) async fn self_test(&self) -> Result<(), CheckError> {
        self.run(&[]).await.map(drop)
    }

    async fn run(&self, samples: &[Sample]) -> Result<Vec<Figures>, CheckError> {
        let _turn = self
            .children
            .acquire()
            .await
            .map_err(|_| CheckError::Failed("the checker is closed".into()))?;
        let program = &self.config.program;
        let mut child = Command::new(program)
            .arg(SUBCOMMAND)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CheckError::Failed(format!("cannot start {}: {e}", program.display())))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(CheckError::Failed("the child has no pipes".into()));
        };
        let send = async move {
            for sample in samples {
                let len = u32::try_from(sample.data.len()).unwrap_or(u32::MAX);
                stdin.write_u8(sample.format.code()).await?;
                stdin.write_u32_le(len).await?;
                stdin.write_all(&sample.data).await?;
            }
            stdin.shutdown().await
        };
        let finished = tokio::time::timeout(self.config.wall, async {
            // A child that dies early stops reading: its verdicts say why,
            // so a broken pipe here is not the failure.
            let (_, out, err) = tokio::join!(send, read_bounded(stdout), read_bounded(stderr));
            let status = child.wait().await;
            (out, err, status)
        })
        .await;
        let Ok((out, err, status)) = finished else {
            // Which sample it was on is unknown (its verdicts were not
            // read), and a host too busy to give it CPU is as likely a
            // cause as the sample: the call fails, retryable. Dropping the
            // child kills it.
            self.broke("wall");
            return Err(CheckError::Failed(format!(
                "the child ran out of wall time ({:?}) and was killed",
                self.config.wall
            )));
        };
        let status =
            status.map_err(|e| CheckError::Failed(format!("cannot wait for the child: {e}")))?;
        let out = out.map_err(|e| CheckError::Failed(format!("cannot read the child: {e}")))?;
        let err = String::from_utf8_lossy(&err.unwrap_or_default()).into_owned();
        self.judge(samples.len(), &out, status, &err)
    }

    /// Reads the child's verdicts: one line per sample, then a clean exit.
    fn judge(
        &self,
        count: usize,
        out: &[u8],
        status: ExitStatus,
        stderr: &str,
    ) -> Result<Vec<Figures>, CheckError> {
        let text = std::str::from_utf8(out)
            .map_err(|_| CheckError::Failed("the child wrote something other than text".into()))?;
        let mut verdicts = Vec::with_capacity(count);
        for line in text.lines() {
            let index = verdicts.len();
            if index == count {
                return Err(CheckError::Failed(
                    "the child gave too many verdicts".into(),
                ));
            }
            if let Some(figures) = line.strip_prefix("ok ") {
                let figures = serde_json::from_str(figures).map_err(|_| {
                    CheckError::Failed(format!("a verdict the checker does not know: {line:?}"))
                })?;
                verdicts.push(figures);
            } else if let Some(why) = line.strip_prefix("no ") {
                return Err(CheckError::Refused {
                    index,
                    why: why.to_owned(),
                });
            } else {
                return Err(CheckError::Failed(format!(
                    "a verdict the checker does not know: {line:?}"
                )));
            }
        }
        if verdicts.len() == count && status.success() {
            return Ok(verdicts);
        }
        let index = verdicts.len();
        if index == count || status.code().is_some() {
            // It exited by itself without a verdict for each sample: it
            // refused its input, which is this server's doing.
            return Err(CheckError::Failed(format!(
                "the child stopped after {index} of {count} verdicts ({status}): {}",
                stderr.trim()
            )));
        }
        let (what, why) = match status.signal() {
            Some(signal) if signal == Signal::XCPU.as_raw() => (
                "cpu",
                format!(
                    "parsing it took more than {} s of CPU time",
                    CPU_BOUND.as_secs()
                ),
            ),
            _ if stderr.contains("memory allocation of") => (
                "memory",
                format!(
                    "parsing it needs more than {} MiB of memory (its container declares sizes far beyond the bytes sent)",
                    MEMORY_BOUND >> 20
                ),
            ),
            _ if stderr.contains("overflowed its stack") => (
                "stack",
                "parsing it nests deeper than the checker's stack".to_owned(),
            ),
            signal => (
                "crash",
                format!(
                    "the parser stopped on it (signal {})",
                    signal.unwrap_or_default()
                ),
            ),
        };
        tracing::warn!(sample = index, bound = what, %status, stderr = stderr.trim(), "a sample broke a bound of the audio check; the server is unharmed");
        self.broke(what);
        Err(CheckError::Refused { index, why })
    }

    fn broke(&self, bound: &'static str) {
        self.metrics
            .audio_bounds_broken
            .get_or_create(&AudioBoundLabel { bound })
            .inc();
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .audio_checks
            .get_or_create(&AudioCheckLabel { outcome })
            .inc();
    }
}

/// Reads at most [`MAX_OUTPUT_BYTES`] of `pipe`, then drains the rest, so a
/// chatty child cannot grow this server's memory nor block on a full pipe.
async fn read_bounded(pipe: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut pipe = pipe;
    (&mut pipe)
        .take(MAX_OUTPUT_BYTES)
        .read_to_end(&mut out)
        .await?;
    tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await?;
    Ok(out)
}
