//! The status engine's worker: claims due voices, asks the provider about them, and
//! moves them to COMPLETED or FAILED.
//!
//! [`Worker::run_once`] is one step: [`Worker::check_due`] claims and asks
//! the provider, [`Worker::settle`] stores and publishes the outcome.
//! [`Worker::run`] loops, running two steps at once while batches come back
//! full (one claims, reads and writes while the other waits for the
//! provider), sleeping until
//! the earliest due entry (at most `idle`), waking early when work is
//! enqueued, backing off while Redis or the database fail (logged once per
//! outage), and stopping on cancellation.
//!
//! Cost: a step that finds nothing due is one queue round trip and no SQL.
//! A step that claims k voices costs the same few round trips whatever k
//! is: one query reads them, the provider is asked in lookups of up to its
//! limit (100 voices at ElevenLabs), one statement per target status settles
//! those the provider decided (in one transaction with their events, which
//! the relay publishes), and the queue is called at most three
//! times (one claim, one reschedule of those still processing, one finish of
//! the rest). A voice a lookup leaves out is asked about alone, and a
//! "not found" is confirmed before it fails anything (see
//! [`Worker::missing`]); a lookup that
//! fails reschedules its voices, a lookup the provider refuses is replaced by
//! single checks. Once stored, the provider voices of the voices that FAILED
//! are deleted (compensation), so a failed voice holds no slot at the
//! provider. Claimed voices with a push pending get their stored metadata
//! pushed beside the checks (see [`Worker::push`]), and stay queued until
//! the provider holds it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
use tokio::time::Instant;
use uuid::Uuid;

mod adoption;
mod checking;
mod pushing;
mod run_loop;
mod settling;
mod timing;

use timing::gathered;

use super::{
    EngineConfig, Scheduler,
    queue::{DynCoordination, DynQueue, QueueError},
};
use crate::{
    metrics::Metrics,
    provider::{DynProvider, ProviderError},
    store::{Settlement, Store},
};

/// Why a whole step failed (single voices that fail do not fail the step).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The due-queue is unreachable.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] sea_orm::DbErr),
    /// The provider failed a call the whole step needs (the sweep's listing).
    #[error("provider: {0}")]
    Provider(#[from] ProviderError),
}

/// What one step did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Step {
    /// The queue was (re)built from storage in this step.
    pub reconciled: bool,
    /// Voices claimed from the queue.
    pub claimed: usize,
    /// Voices moved to COMPLETED.
    pub completed: usize,
    /// Voices moved to FAILED.
    pub failed: usize,
    /// Still processing (or the provider failed): checked again later.
    pub rescheduled: usize,
    /// When the next queued voice is due, if any.
    pub next_due: Option<Duration>,
}

/// A step between its two halves: what was claimed and what the provider said.
#[derive(Default)]
struct Checked {
    step: Step,
    /// No longer PROCESSING when read: finished without a check.
    done: Vec<Uuid>,
    /// Decided: to be written.
    settle: Vec<(Uuid, Settlement)>,
    /// Still processing, or the check failed: checked again after the delay.
    again: Vec<(Uuid, Duration)>,
    /// A push to the provider still pending: claimed again after the delay,
    /// whatever its status check decided.
    push_again: HashMap<Uuid, Duration>,
}

impl Checked {
    fn decide(&mut self, id: Uuid, decision: Decision, claimed_at: Instant) {
        match decision {
            Decision::Settle(settlement) => self.settle.push((id, settlement)),
            Decision::Again(interval) => self.again.push((
                id,
                gathered(interval, claimed_at.elapsed(), SystemTime::now()),
            )),
        }
    }
}

/// What one check decided.
enum Decision {
    /// Settle the voice (written with the rest of the batch).
    Settle(Settlement),
    /// Check it again after this delay.
    Again(Duration),
}

/// One replica's status checker; cheap to clone (its step state is shared).
#[derive(Clone)]
pub struct Worker {
    queue: DynQueue,
    /// The sweep's marks (this worker sets `completed`).
    coordination: DynCoordination,
    store: Store,
    provider: DynProvider,
    config: EngineConfig,
    reconcile_needed: Arc<AtomicBool>,
    next_reconcile: Arc<Mutex<Instant>>,
    /// Voices this replica has claimed and not yet handed back: on shutdown
    /// they are made due again at once, for another replica.
    held: Arc<Mutex<HashSet<Uuid>>>,
    /// Held while renewing the held voices' leases or handing them back, so
    /// the queue sees the two in the order they were decided.
    claims: Arc<tokio::sync::Mutex<()>>,
    /// Voices whose reschedule failed (Redis away, a failover): handed back
    /// by the next step that reaches the queue, rather than left leased
    /// until their leases expire.
    unscheduled: Arc<Mutex<Vec<(Uuid, Duration)>>>,
    /// Claimed ids unknown to storage (see `report_unknown`): counted, and
    /// the ones already logged.
    unknown_ids: Counter,
    unknown_reported: Arc<Mutex<HashSet<Uuid>>>,
    /// This process has set the queue's `completed` mark (for the sweep),
    /// since it started or the queue last lost its data.
    completed_marked: Arc<AtomicBool>,
    /// The queue's depth and each step's claim, as seen by the claims.
    queue_depth: Gauge,
    claimed_per_step: Histogram,
}

impl Worker {
    /// A worker that reconciles the queue with storage on its first step.
    #[must_use]
    pub(crate) fn new(
        (queue, coordination): (DynQueue, DynCoordination),
        store: Store,
        provider: DynProvider,
        config: EngineConfig,
        metrics: &Metrics,
    ) -> Self {
        Worker {
            queue,
            coordination,
            store,
            provider,
            held: Arc::default(),
            claims: Arc::default(),
            unscheduled: Arc::default(),
            unknown_ids: metrics.sync_unknown_ids.clone(),
            unknown_reported: Arc::default(),
            completed_marked: Arc::default(),
            queue_depth: metrics.queue_depth.clone(),
            claimed_per_step: metrics.claimed_per_step.clone(),
            next_reconcile: Arc::new(Mutex::new(Instant::now() + config.reconcile_every)),
            config,
            reconcile_needed: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The handle the write path schedules new voices with: a failed
    /// enqueue makes this worker reconcile on its next step.
    #[must_use]
    pub(crate) fn scheduler(&self) -> Scheduler {
        Scheduler {
            queue: self.queue.clone(),
            coordination: self.coordination.clone(),
            reconcile_needed: self.reconcile_needed.clone(),
            adopt_after: self.config.adopt_after,
        }
    }

    /// Claims what is due, checks it, and stores the outcome: one step.
    ///
    /// # Errors
    /// The queue or storage failed as a whole; single voices that fail are
    /// rescheduled and do not fail the step.
    pub async fn run_once(&self) -> Result<Step, EngineError> {
        // Boxed: the checks' futures are large, and callers hold this one.
        let checked = Box::pin(self.check_due()).await?;
        self.settle(checked).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{
        checking::chunks,
        timing::{check_interval, gathered},
    };

    #[test]
    fn a_voice_is_checked_every_half_second_in_its_first_minute_then_less_often() {
        let (min, max) = (super::super::MIN_BACKOFF, Duration::from_mins(1));
        assert_eq!(min, Duration::from_millis(500));
        let interval = |secs| check_interval(Duration::from_secs(secs), min, max);
        for young in [0, 1, 30, 59, 60, 62] {
            assert_eq!(interval(young), min, "{young} s old");
        }
        assert_eq!(interval(64), Duration::from_secs(1));
        assert_eq!(interval(120), Duration::from_secs(15));
        assert_eq!(interval(3 * 60), Duration::from_secs(30));
        assert_eq!(interval(5 * 60), max);
        assert_eq!(interval(3 * 3600), max, "professional clones: at the cap");
    }

    #[test]
    fn voices_are_looked_up_in_chunks_of_at_most_the_providers_limit() {
        let sizes = |n: usize, limit| {
            chunks((0..n).collect(), limit)
                .iter()
                .map(Vec::len)
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(512, 100), [100, 100, 100, 100, 100, 12]);
        assert_eq!(sizes(100, 100), [100]);
        assert_eq!(sizes(3, 1), [1, 1, 1]);
        assert_eq!(sizes(3, 0), [1, 1, 1], "a limit of 0 is taken as 1");
        assert!(sizes(0, 100).is_empty());
        assert_eq!(chunks(vec![1, 2, 3], 2), [vec![1, 2], vec![3]], "in order");
    }

    #[test]
    fn due_times_are_gathered_on_a_grid_of_half_the_interval_at_most_a_second() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let half = Duration::from_millis(500);
        let zero = Duration::ZERO;
        // Due at 10.6 s, 10.7 s and 10.75 s: all three at 10.75 s, together.
        assert_eq!(gathered(half, zero, at(10_100)), Duration::from_millis(650));
        assert_eq!(gathered(half, zero, at(10_200)), Duration::from_millis(550));
        assert_eq!(
            gathered(half, zero, at(10_250)),
            half,
            "already on the grid"
        );
        // The grid follows the interval, not what is left of it: claimed
        // 40 ms ago, due at 10.56 s, so at 10.75 s like the others.
        let elapsed = Duration::from_millis(40);
        assert_eq!(
            gathered(half, elapsed, at(10_100)),
            Duration::from_millis(650)
        );
        // Never earlier, and later by less than the grid.
        for now in (0..2_000).step_by(7) {
            let delay = gathered(half, zero, at(now));
            assert!(
                delay >= half && delay < half + half / 2,
                "{delay:?} at {now} ms"
            );
        }
        // Long intervals gather on whole seconds; zero stays zero.
        assert_eq!(
            gathered(Duration::from_mins(1), zero, at(1_500)),
            Duration::from_millis(60_500)
        );
        assert_eq!(gathered(zero, zero, at(1_234)), zero);
    }
}
