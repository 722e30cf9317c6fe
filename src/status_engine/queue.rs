//! The due-queue: which PROCESSING voices to check, and when.
//!
//! A voice id is scored by the time it is next due. [`DueQueue::claim`] takes
//! up to N due ids atomically and re-scores them to now + lease, so no other
//! replica takes them while the lease lasts; if the claimer dies, the lease
//! expires and they are simply due again (at-least-once, no reaper).
//!
//! All times are relative ("due in 2 s"): the Redis queue turns them into
//! scores with the Redis server's clock, so replicas with skewed clocks still
//! agree on what is due.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use uuid::Uuid;

/// What one claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The queue's marker is gone: the queue lost its data (restart without
    /// persistence, failover, FLUSHALL) and must be rebuilt from storage.
    Lost,
    /// These ids are now leased to the claimer.
    Claimed {
        /// The claimed ids, earliest due first.
        ids: Vec<Uuid>,
        /// When the earliest remaining entry is due; `None` if the queue is empty.
        next_due: Option<Duration>,
        /// Entries in the queue after the claim, leased ones included.
        queued: usize,
    },
}

/// The queue's store failed or could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("due-queue unavailable: {0}")]
pub struct QueueError(pub String);

/// Voice ids scored by when they are next due; shared by every replica that
/// uses the same store.
#[async_trait::async_trait]
pub trait DueQueue: Send + Sync + 'static {
    /// Makes `id` due after `delay` (replacing its current score), and wakes
    /// the workers of every replica.
    async fn enqueue(&self, id: Uuid, delay: Duration) -> Result<(), QueueError>;

    /// Claims up to `max` due ids for `lease`, in one round trip.
    async fn claim(&self, max: usize, lease: Duration) -> Result<Claim, QueueError>;

    /// Makes claimed ids due again, each after its delay, in one round trip;
    /// an id finished meanwhile stays finished.
    async fn reschedule(&self, due: &[(Uuid, Duration)]) -> Result<(), QueueError>;

    /// Removes ids that need no more checks.
    async fn finish(&self, ids: &[Uuid]) -> Result<(), QueueError>;

    /// Adds `ids` as due now unless already queued, and (re)sets the marker.
    async fn restore(&self, ids: &[Uuid]) -> Result<(), QueueError>;

    /// Notified when work was enqueued, here or on another replica.
    fn wakeup(&self) -> Arc<Notify>;

    /// Whether the queue's store reconnected (or its cluster's layout
    /// changed) since the last call: writes it acknowledged may be lost (a
    /// failover loses what the old primary had not yet copied), so the
    /// worker reconciles with storage.
    fn take_reconnected(&self) -> bool {
        false
    }
}

/// The configured due-queue, shared.
pub(crate) type DynQueue = Arc<dyn DueQueue>;

/// Coordination between replicas for jobs other than checking voices (the
/// sweep): a lease that picks one replica, and marks that say "there is
/// work of this kind". Kept in the due-queue's store (Redis when replicas
/// share one), but a seam of its own: the queue's users need none of it.
#[async_trait::async_trait]
pub trait Coordination: Send + Sync + 'static {
    /// Takes the lease `name` for `ttl` unless another replica holds it:
    /// how a job that must run on one replica at a time (the sweep) picks
    /// its replica. The lease is not released early: it also spaces the job.
    async fn try_lease(&self, name: &str, ttl: Duration) -> Result<bool, QueueError>;

    /// Sets the mark `name` for every replica: "there is work of this kind"
    /// (an orphan was recorded), so the job that does it needs no SQL to
    /// find out.
    async fn mark(&self, name: &str) -> Result<(), QueueError>;

    /// Clears the mark `name`; whether it was set. Taken before the work is
    /// read, so a mark set meanwhile survives for the next run.
    async fn take_mark(&self, name: &str) -> Result<bool, QueueError>;
}

/// The configured coordination, shared.
pub(crate) type DynCoordination = Arc<dyn Coordination>;
