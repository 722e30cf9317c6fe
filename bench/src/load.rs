//! Closed-loop load: `concurrency` workers, each sending its next request as
//! soon as the previous one answered, for a fixed time after a warm-up.
//! Latencies go into an HdrHistogram (nanoseconds, 3 significant digits).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

/// One request of a worker; `Err` counts as an error, not as a latency.
pub(crate) type Call =
    Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

/// What one run measured.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    /// Requests answered inside the measured window.
    pub(crate) requests: u64,
    /// Requests answered, warm-up included (what the server's CPU time covers).
    pub(crate) total: u64,
    /// Requests that failed inside the measured window.
    pub(crate) errors: u64,
    /// The measured window.
    pub(crate) elapsed: Duration,
    /// Latencies of the answered requests, in nanoseconds.
    pub(crate) latency: Histogram<u64>,
}

impl Run {
    /// Answered requests per second.
    pub(crate) fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `quantile` latency, in milliseconds.
    pub(crate) fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1e6
    }

    /// The largest latency, in milliseconds.
    pub(crate) fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1e6
    }
}

/// Runs `concurrency` workers calling `call(worker << 32 | iteration)` for
/// `warmup` (not measured) plus `measure`.
pub(crate) async fn closed_loop(
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    call: Call,
) -> Run {
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + measure);
    let workers: Vec<_> = (0..concurrency as u64)
        .map(|worker| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latency = histogram();
                let mut errors = 0;
                let mut answered = 0u64;
                let mut iteration = 0u64;
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let result = call(worker << 32 | iteration).await;
                    let done = Instant::now();
                    iteration += 1;
                    answered += u64::from(result.is_ok());
                    if sent < from || done > until {
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            let nanos = u64::try_from((done - sent).as_nanos()).unwrap_or(u64::MAX);
                            latency.saturating_record(nanos);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (latency, errors, answered)
            })
        })
        .collect();
    let mut latency = histogram();
    let (mut errors, mut total) = (0, 0);
    for worker in workers {
        let (h, e, answered) = worker.await.expect("a load worker panicked");
        latency.add(&h).expect("histograms of one shape");
        errors += e;
        total += answered;
    }
    Run {
        requests: latency.len(),
        total,
        errors,
        elapsed: measure,
        latency,
    }
}

fn histogram() -> Histogram<u64> {
    // 1 ns to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answered_and_failed_calls_are_counted_apart() {
        let call: Call = Arc::new(|i| {
            Box::pin(async move {
                tokio::task::yield_now().await;
                if i % 2 == 0 {
                    Ok(())
                } else {
                    anyhow::bail!("odd")
                }
            })
        });
        let run = closed_loop(2, Duration::ZERO, Duration::from_millis(50), call).await;
        assert!(run.requests > 0 && run.errors > 0, "{run:?}");
        assert_eq!(run.latency.len(), run.requests);
        assert!(run.total >= run.requests);
        assert!(run.ms(0.5) <= run.max_ms());
    }
}
