//! The status engine's worker: claims due voices, asks the provider about them, and
//! moves them to COMPLETED or FAILED.
//!
//! [`Worker::run_once`] is one step; [`Worker::run`] loops, sleeping until
//! the earliest due entry (at most `idle`), waking early when work is
//! enqueued, backing off while Redis or the database fail (logged once per
//! outage), and stopping on cancellation.
//!
//! Cost: a step that finds nothing due is one queue round trip and no SQL.
//! A step that claims k voices reads them with one query, writes only the
//! voices whose status changes, and talks to the queue at most three times
//! whatever k is: one claim, one reschedule of those still processing, one
//! finish of the rest.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Scheduler, SyncConfig,
    queue::{Claim, DynQueue, QueueError},
};
use crate::{
    error::chain,
    events::DynBus,
    provider::{DynProvider, GONE_AT_PROVIDER, ProviderError, Verdict},
    store::{Store, Voice, VoiceStatus},
};

/// Why a whole step failed (single voices that fail do not fail the step).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The due-queue is unreachable.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] sea_orm::DbErr),
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

enum Outcome {
    Completed,
    Failed,
    /// No longer ours to check: finished, deleted, or changed by someone else.
    Gone,
    Again(Duration),
}

/// One replica's status checker; cheap to clone (its step state is shared).
#[derive(Clone)]
pub struct Worker {
    queue: DynQueue,
    store: Store,
    provider: DynProvider,
    bus: DynBus,
    config: SyncConfig,
    reconcile_needed: Arc<AtomicBool>,
    next_reconcile: Arc<Mutex<Instant>>,
}

impl Worker {
    /// A worker that reconciles the queue with storage on its first step.
    #[must_use]
    pub(crate) fn new(
        queue: DynQueue,
        store: Store,
        provider: DynProvider,
        bus: DynBus,
        config: SyncConfig,
    ) -> Self {
        Worker {
            queue,
            store,
            provider,
            bus,
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
            reconcile_needed: self.reconcile_needed.clone(),
        }
    }

    /// Claims what is due and checks it.
    ///
    /// # Errors
    /// The queue or storage failed as a whole; single voices that fail are
    /// rescheduled and do not fail the step.
    pub async fn run_once(&self) -> Result<Step, SyncError> {
        let mut step = Step::default();
        if self.reconcile_due() {
            self.reconcile().await?;
            step.reconciled = true;
        }
        let ids = match self
            .queue
            .claim(self.config.batch, self.config.lease)
            .await?
        {
            Claim::Lost => {
                tracing::warn!(
                    "the due-queue lost its data (Redis restart, failover or flush): rebuilding it from storage"
                );
                self.reconcile().await?;
                step.reconciled = true;
                step.next_due = Some(Duration::ZERO);
                return Ok(step);
            }
            Claim::Claimed { ids, next_due } => {
                step.next_due = next_due;
                ids
            }
        };
        step.claimed = ids.len();
        if ids.is_empty() {
            return Ok(step);
        }
        let voices = self.store.get_many(&ids).await?;
        let processing: Vec<Voice> = voices
            .into_iter()
            .filter(|v| v.status == VoiceStatus::Processing)
            .collect();
        let checked: HashSet<Uuid> = processing.iter().map(|v| v.id).collect();
        // Deleted or already settled elsewhere: nothing left to check.
        let mut done: Vec<Uuid> = ids
            .iter()
            .copied()
            .filter(|id| !checked.contains(id))
            .collect();
        let outcomes = futures_util::future::join_all(processing.into_iter().map(|v| async move {
            let id = v.id;
            (id, self.check(v).await)
        }))
        .await;
        let mut again = Vec::new();
        for (id, outcome) in outcomes {
            match outcome {
                Outcome::Completed => step.completed += 1,
                Outcome::Failed => step.failed += 1,
                Outcome::Gone => {}
                Outcome::Again(delay) => {
                    step.next_due = Some(step.next_due.map_or(delay, |d| d.min(delay)));
                    again.push((id, delay));
                    continue;
                }
            }
            done.push(id);
        }
        step.rescheduled = again.len();
        // One round trip for the whole batch. A failed reschedule is covered
        // by the leases running out.
        if let Err(e) = self.queue.reschedule(&again).await {
            tracing::debug!(voices = again.len(), error = %e, "reschedule failed; the leases will expire instead");
        }
        self.queue.finish(&done).await?;
        Ok(step)
    }

    fn reconcile_due(&self) -> bool {
        let mut next = self.next_reconcile.lock();
        let now = Instant::now();
        if self.reconcile_needed.load(Ordering::Relaxed) || now >= *next {
            *next = now + self.config.reconcile_every;
            return true;
        }
        false
    }

    /// Puts every PROCESSING voice on the queue (keeping existing entries'
    /// due times) and sets the marker.
    async fn reconcile(&self) -> Result<(), SyncError> {
        // Cleared first: a failure below sets it again via the error path.
        self.reconcile_needed.store(false, Ordering::Relaxed);
        let result = async {
            let ids = self.store.processing_ids().await?;
            self.queue.restore(&ids).await?;
            tracing::info!(voices = ids.len(), "due-queue reconciled with storage");
            Ok(())
        }
        .await;
        if result.is_err() {
            self.reconcile_needed.store(true, Ordering::Relaxed);
        }
        result
    }

    async fn check(&self, voice: Voice) -> Outcome {
        let now = chrono::Utc::now();
        if voice
            .processing_deadline
            .is_some_and(|deadline| deadline <= now)
        {
            let age = (now - voice.created_at).to_std().unwrap_or_default();
            let reason = format!(
                "gave up: still processing at the provider {} after creation",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            );
            return self.settle(voice.id, Settle::Fail(reason)).await;
        }
        let backoff = self.backoff(&voice);
        let Some(provider_voice_id) = &voice.provider_voice_id else {
            // Reserved but not yet accepted by the provider: its create is in flight.
            return Outcome::Again(backoff);
        };
        match self.provider.check_voice(provider_voice_id).await {
            Ok(verdict) => match verdict {
                Verdict::Processing => Outcome::Again(backoff),
                Verdict::Completed {
                    preview_url,
                    labels,
                } => {
                    let labels = Some(labels).filter(|l| !l.is_empty());
                    self.settle(
                        voice.id,
                        Settle::Complete {
                            preview_url,
                            labels,
                        },
                    )
                    .await
                }
                Verdict::Failed(reason) => self.settle(voice.id, Settle::Fail(reason)).await,
            },
            Err(ProviderError::NotFound) => {
                self.settle(voice.id, Settle::Fail(GONE_AT_PROVIDER.into()))
                    .await
            }
            Err(e) => {
                tracing::warn!(voice_id = %voice.id, error = %e, "status check failed; will retry");
                Outcome::Again(backoff.max(self.config.min_backoff * 5))
            }
        }
    }

    /// Checks come ~1 s apart for a young voice and spread out as it ages
    /// (a quarter of its age), up to the cap: instant clones are ready in
    /// seconds, professional ones take hours.
    fn backoff(&self, voice: &Voice) -> Duration {
        let age = (chrono::Utc::now() - voice.created_at)
            .to_std()
            .unwrap_or_default();
        (age / 4).clamp(self.config.min_backoff, self.config.max_backoff)
    }

    async fn settle(&self, id: Uuid, settle: Settle) -> Outcome {
        let (written, outcome) = match settle {
            Settle::Complete {
                preview_url,
                labels,
            } => (
                self.store.complete(id, preview_url, labels).await,
                Outcome::Completed,
            ),
            Settle::Fail(reason) => (self.store.fail(id, &reason).await, Outcome::Failed),
        };
        match written {
            Ok(Some(voice)) => {
                tracing::info!(voice_id = %id, status = ?voice.status, reason = ?voice.failure_reason, "voice status settled");
                self.bus.publish(&voice).await;
                outcome
            }
            // Not PROCESSING any more: another check or a delete got there first.
            Ok(None) => Outcome::Gone,
            Err(e) => {
                tracing::warn!(voice_id = %id, error = %chain(&e), "could not store a status change; will retry");
                Outcome::Again(self.config.min_backoff * 5)
            }
        }
    }

    /// Loops until `shutdown`, sleeping between steps as the module says.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let wakeup = self.queue.wakeup();
        let mut failing = false;
        let mut error_delay = self.config.min_backoff;
        loop {
            let delay = match self.run_once().await {
                Ok(step) => {
                    if failing {
                        tracing::info!("status sync recovered");
                        failing = false;
                        // Enqueues may have failed meanwhile.
                        self.reconcile_needed.store(true, Ordering::Relaxed);
                    }
                    error_delay = self.config.min_backoff;
                    if step.claimed >= self.config.batch || step.reconciled {
                        Duration::ZERO
                    } else {
                        step.next_due
                            .map_or(self.config.idle, |d| d.min(self.config.idle))
                    }
                }
                Err(e) => {
                    if failing {
                        tracing::debug!(error = %e, "status sync still failing");
                    } else {
                        tracing::warn!(error = %e, "status sync failing; retrying with backoff (logged once per outage)");
                        failing = true;
                    }
                    let delay = error_delay;
                    error_delay = (error_delay * 2).min(Duration::from_secs(30));
                    delay
                }
            };
            if delay.is_zero() && !shutdown.is_cancelled() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = wakeup.notified() => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

enum Settle {
    Complete {
        preview_url: Option<String>,
        labels: Option<BTreeMap<String, String>>,
    },
    Fail(String),
}
