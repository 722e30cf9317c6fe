//! The worker's loop: steps back to back while batches come back full (two
//! at once, so the provider's concurrency stays busy), otherwise sleeping
//! until the earliest due entry or a wake-up; backing off while the queue or
//! storage fail (logged once per outage); on cancellation, handing every
//! claimed voice back to the queue, due now, for another replica. Beside
//! the steps, a task renews the claim leases of the voices this replica
//! holds every third of a lease, so a long step keeps its voices and a dead
//! replica's come back after one (short) lease.

use super::{EngineError, Step, Worker};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

impl Worker {
    /// Loops until `shutdown`, sleeping between steps as the module says.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let wakeup = self.queue.wakeup();
        // Renewing claims beside the steps, until this loop returns.
        let renewal = shutdown.child_token();
        tokio::spawn(self.clone().renew_until(renewal.clone()));
        let _renewal = renewal.drop_guard();
        let mut failing = false;
        let mut error_delay = self.config.min_backoff;
        // While batches come back full, two steps run at once: while one
        // waits for the provider, the other claims, reads and writes, so the
        // provider's concurrency is never left idle. The provider client's
        // own limit still bounds the checks in flight.
        let mut steps = JoinSet::new();
        let mut parallel = 1;
        loop {
            while steps.len() < parallel {
                let this = self.clone();
                steps.spawn(async move { this.run_once().await });
            }
            let joined = tokio::select! {
                biased;
                () = shutdown.cancelled() => return self.stop(steps).await,
                joined = steps.join_next() => joined,
            };
            let Some(joined) = joined else {
                continue;
            };
            let result = match joined {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            };
            let delay = match result {
                Ok(step) => {
                    if failing {
                        tracing::info!("status engine recovered");
                        failing = false;
                        // Enqueues may have failed meanwhile.
                        self.reconcile_needed.store(true, Ordering::Relaxed);
                    }
                    error_delay = self.config.min_backoff;
                    parallel = if step.claimed >= self.config.batch {
                        2
                    } else {
                        1
                    };
                    self.delay_after(&step)
                }
                Err(e) => {
                    if failing {
                        tracing::debug!(error = %e, "status engine still failing");
                    } else {
                        tracing::warn!(error = %e, "status engine failing; retrying with backoff (logged once per outage)");
                        failing = true;
                    }
                    parallel = 1;
                    let delay = error_delay;
                    error_delay = (error_delay * 2).min(Duration::from_secs(30));
                    delay
                }
            };
            // The other step still running decides what comes next.
            if !steps.is_empty() && !shutdown.is_cancelled() {
                continue;
            }
            if delay.is_zero() && !shutdown.is_cancelled() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                // Shutdown first: when it and other work are both ready, stop.
                biased;
                () = shutdown.cancelled() => return self.stop(steps).await,
                () = wakeup.notified() => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Renews the held voices' leases every third of a lease until `stop`.
    async fn renew_until(self, stop: CancellationToken) {
        let every = (self.config.claim_lease / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.renew_claims().await {
                tracing::debug!(error = %e, "could not renew claimed voices' leases; they may be checked twice");
            }
        }
    }

    /// Stops the steps under way (a check is only a question; a settle cut
    /// short rolls back or is found settled by the next check) and hands
    /// every voice this replica holds back to the queue, due now, so another
    /// replica takes them at once instead of after the lease.
    pub(super) async fn stop(&self, mut steps: JoinSet<Result<Step, EngineError>>) {
        steps.shutdown().await;
        let _ordered = self.claims.lock().await;
        // What it holds, and what a failed reschedule left leased.
        let mut held: Vec<(Uuid, Duration)> = self
            .held
            .lock()
            .drain()
            .map(|id| (id, Duration::ZERO))
            .collect();
        held.extend(
            self.unscheduled
                .lock()
                .drain(..)
                .map(|(id, _)| (id, Duration::ZERO)),
        );
        if held.is_empty() {
            return;
        }
        match self.queue.reschedule(&held).await {
            Ok(()) => tracing::info!(
                voices = held.len(),
                "shutting down: claimed voices handed back to the queue, due now"
            ),
            Err(e) => tracing::warn!(
                voices = held.len(),
                error = %e,
                "shutting down: could not hand claimed voices back; their leases will expire"
            ),
        }
    }

    /// How long to sleep after `step`: not at all while work keeps coming,
    /// else until the earliest due voice (at most `idle`).
    pub(super) fn delay_after(&self, step: &Step) -> Duration {
        if step.claimed >= self.config.batch || step.reconciled {
            Duration::ZERO
        } else {
            step.next_due
                .map_or(self.config.idle, |d| d.min(self.config.idle))
        }
    }
}
