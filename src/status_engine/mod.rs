//! The status engine: after CreateVoiceClone a voice is PROCESSING until the
//! provider says it is ready or failed; this module finds out, with a
//! due-queue (Redis or in-process) and a worker on every replica.
//!
//! ```text
//! create ─▶ enqueue(id, due now) ─▶ wake workers (Notify here, pub/sub elsewhere)
//!                                        │
//!   worker: claim due ids (lease) ◀──────┘   one round trip, no SQL when idle
//!        ─▶ read the k claimed voices (one query)
//!        ─▶ ask the provider about each
//!        ─▶ COMPLETED / FAILED (guarded write) ─▶ publish event ─▶ watchers
//!        └▶ still processing: re-score with backoff
//! ```
//!
//! Guarantees: every PROCESSING voice is on the queue or will be put back on
//! it (at start-up, when the queue reports data loss, after an outage, and
//! periodically); a claimed voice that is not finished comes back when its
//! lease ends; a reserved voice whose create is running (its replica holds
//! the create lease) is left alone; one whose create's outcome is unknown
//! (a lost answer, a crash) is looked up by its tag at the pace of any
//! PROCESSING voice and adopted as soon as the provider holds it, or FAILED
//! `adopt_after` after its create ended; one "not found" answer is a
//! reading, confirmed `confirm_gone_after` later before a voice is failed
//! as gone; a voice past its deadline is
//! asked about once more and is
//! COMPLETED if ready, FAILED with a reason otherwise; the provider voice of
//! a FAILED voice is deleted (see `compensation`, never one a live voice
//! holds), and what is left behind anyway is found by the hourly sweep,
//! which acts only on what this installation discarded (see `sweep`). Checks
//! are at-least-once; transitions are written only from PROCESSING, so a
//! repeated check is harmless.
//!
//! The engine also pushes updates: a voice UpdateVoice marked
//! `push_pending` is queued, and its stored name, description and labels
//! are pushed to the provider under the voice's push lease (one pusher at a
//! time) until the provider holds the latest stored revision's values.

mod compensation;
mod local_queue;
mod queue;
mod redis_queue;
mod sweep;
mod worker;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

pub(crate) use compensation::{delete_at_provider, delete_many_at_provider};
pub(crate) use local_queue::LocalQueue;
pub(crate) use queue::DynCoordination;
pub(crate) use queue::DynQueue;
pub use queue::{Claim, Coordination, DueQueue, QueueError};
pub use redis_queue::RedisQueue;
use sweep::COMPLETED_MARK;
pub use sweep::{Sweeper, Swept};
use uuid::Uuid;
pub use worker::{EngineError, Step, Worker};

/// Delay between the checks of a voice in its first minute: instant clones
/// are usually ready within seconds, and a watcher should hear of it within
/// a second. Checks of many voices share lookups, so this costs the provider
/// far less than one request per voice per interval.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(500);

/// The longest create lease (shorter when `adopt_after` is): a create that
/// waits for a provider slot longer renews it, one short write a time.
const CREATE_LEASE: Duration = Duration::from_secs(30);

/// How the status engine paces its work (set from the `VOICEHUB_SYNC_*` flags).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most voices claimed in one step.
    pub batch: usize,
    /// How long a claim keeps other replicas away.
    pub claim_lease: Duration,
    /// Delay between the first checks of a new voice.
    pub min_backoff: Duration,
    /// Longest delay between checks of one voice.
    pub max_backoff: Duration,
    /// Longest sleep when nothing is due.
    pub idle: Duration,
    /// How often the queue is reconciled with storage regardless.
    pub reconcile_every: Duration,
    /// How long after its reservation a voice the provider has not accepted
    /// is looked for at the provider by its tag (adoption), and failed if
    /// it is not there. Longer than the provider's longest create, so a
    /// create still running is never mistaken for a lost one.
    pub adopt_after: Duration,
    /// How long one replica holds a voice's push of an update to the
    /// provider: longer than the provider's longest call, retries included.
    pub push_lease: Duration,
    /// How often the provider is swept for voices voicehub no longer wants
    /// (zero: never).
    pub sweep_every: Duration,
    /// How long after start-up a replica first sweeps.
    pub sweep_first_after: Duration,
    /// Most provider voices one sweep deletes; a sweep that would delete
    /// more deletes none.
    pub sweep_max_deletions: usize,
    /// Whether the sweep deletes; `false`: it only reports what it would.
    pub sweep_delete: bool,
    /// How far apart two "not found" answers about one voice must be before
    /// the voice counts as gone at the provider.
    pub confirm_gone_after: Duration,
}

/// How the write path hands a new voice to the engine; made by
/// [`Worker::scheduler`], so it always shares the worker's queue and its
/// "reconcile needed" flag.
#[derive(Clone)]
pub(crate) struct Scheduler {
    queue: DynQueue,
    coordination: DynCoordination,
    reconcile_needed: Arc<AtomicBool>,
    adopt_after: Duration,
}

impl Scheduler {
    /// Queues `id` for a check now. Never fails the caller: if the queue is
    /// unreachable, the next reconciliation puts the voice on it.
    pub(crate) async fn schedule(&self, id: Uuid) {
        self.schedule_in(id, Duration::ZERO).await;
    }

    /// Queues a just-reserved `id` for the check that adopts or fails it
    /// should its create never finish (a crash): when its first create
    /// lease ends, or at its deadline (`max_age` from now) if that comes
    /// first. The create that finishes schedules it again, due now.
    pub(crate) async fn schedule_reserved(&self, id: Uuid, max_age: Duration) {
        self.schedule_in(id, self.create_lease().min(max_age)).await;
    }

    /// How long a create's lease lasts: the write path renews it every
    /// third of that while the create runs, and nobody else fails the voice
    /// before it ends.
    pub(crate) fn create_lease(&self) -> Duration {
        CREATE_LEASE.min(self.adopt_after)
    }

    /// Takes `id` off the queue: its reservation was released (the row is
    /// gone), so nothing is left to check. Best effort: an entry left
    /// behind is reported as unknown by the worker and expires with its lease.
    pub(crate) async fn forget(&self, id: Uuid) {
        if let Err(e) = self.queue.finish(&[id]).await {
            tracing::debug!(voice_id = %id, error = %e, "could not take a released voice off the queue");
        }
    }

    /// Where deleting a provider voice records an orphan for the sweep.
    pub(crate) fn coordination(&self) -> &DynCoordination {
        &self.coordination
    }

    async fn schedule_in(&self, id: Uuid, delay: Duration) {
        if let Err(e) = self.queue.enqueue(id, delay).await {
            tracing::warn!(voice_id = %id, error = %e, "could not queue a status check; reconciliation will");
            self.reconcile_needed.store(true, Ordering::Relaxed);
        }
    }
}
