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
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::future::join_all;
use parking_lot::Mutex;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    COMPLETED_MARK, Scheduler, SyncConfig, delete_many_at_provider,
    queue::{Claim, DynQueue, QueueError},
};
use crate::{
    error::chain,
    metrics::Metrics,
    provider::{DynProvider, GONE_AT_PROVIDER, INSTANT_CLONE, ProviderError, Verdict, VoiceEdit},
    store::{Settlement, Store, Voice, VoiceStatus},
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

/// The time between two checks of a voice of this `age`. For its first
/// minute a voice is checked every `min` (0.5 s): instant clones are ready
/// within seconds to a minute, and a watcher should hear of it within a
/// second. After that, checks spread out with age (a quarter of the time
/// past the first minute), up to `max`: professional clones take hours.
fn check_interval(age: Duration, min: Duration, max: Duration) -> Duration {
    (age.saturating_sub(FIRST_MINUTE) / 4).clamp(min, max)
}

/// Unknown ids remembered as logged, at most (then forgotten, and logged again).
const UNKNOWN_REPORTED_MAX: usize = 10_000;

/// How long a new voice is checked at the shortest interval.
const FIRST_MINUTE: Duration = Duration::from_mins(1);

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

/// The delay from `now` until a check `interval` after a claim `elapsed`
/// ago, lengthened so that it falls due on a wall-clock grid of half the
/// interval (at most [`GATHER`]): voices checked at the same interval then
/// fall due together and share one lookup, instead of each waking the
/// worker for a lookup of its own.
fn gathered(interval: Duration, elapsed: Duration, now: SystemTime) -> Duration {
    let delay = interval.saturating_sub(elapsed);
    let grid = (interval / 2).min(GATHER).as_nanos();
    if grid == 0 {
        return delay;
    }
    let due = (now.duration_since(UNIX_EPOCH).unwrap_or_default() + delay).as_nanos();
    let late = (grid - due % grid) % grid;
    delay + Duration::from_nanos(u64::try_from(late).unwrap_or_default())
}

/// `items` in order, in chunks of at most `limit` (at least 1).
fn chunks<T>(mut items: Vec<T>, limit: usize) -> Vec<Vec<T>> {
    let limit = limit.max(1);
    let mut chunks = Vec::with_capacity(items.len().div_ceil(limit));
    while !items.is_empty() {
        let rest = items.split_off(items.len().min(limit));
        chunks.push(std::mem::replace(&mut items, rest));
    }
    chunks
}

/// The coarsest grid due times are gathered on.
const GATHER: Duration = Duration::from_secs(1);

/// The failure reason of a reserved voice the provider does not hold.
const NEVER_RECEIVED: &str =
    "the voice provider never received this voice (its create was interrupted); create it again";

/// How long ago `voice` was created.
fn age(voice: &Voice) -> Duration {
    (chrono::Utc::now() - voice.created_at)
        .to_std()
        .unwrap_or_default()
}

/// How long the create lease of reserved `voice` still runs, if it does:
/// its create is running on some replica, which schedules it when done.
fn create_lease_left(voice: &Voice) -> Option<Duration> {
    let until = voice.create_lease_until?;
    (until - chrono::Utc::now())
        .to_std()
        .ok()
        .filter(|d| !d.is_zero())
}

/// Whether `voice` has been PROCESSING longer than it may.
fn past_deadline(voice: &Voice) -> bool {
    voice
        .processing_deadline
        .is_some_and(|deadline| deadline <= chrono::Utc::now())
}

/// The failure reason of a voice given up on at its deadline.
fn gave_up(voice: &Voice) -> String {
    format!(
        "gave up: still processing at the provider {} after creation",
        humantime::format_duration(Duration::from_secs(age(voice).as_secs()))
    )
}

/// Whether the provider lacks `voice`'s stored metadata and can take it
/// (the voice is at the provider and not FAILED or DELETED).
fn push_due(voice: &Voice) -> bool {
    voice.push_pending
        && voice.provider_voice_id.is_some()
        && matches!(
            voice.status,
            VoiceStatus::Processing | VoiceStatus::Completed
        )
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
    store: Store,
    provider: DynProvider,
    config: SyncConfig,
    reconcile_needed: Arc<AtomicBool>,
    next_reconcile: Arc<Mutex<Instant>>,
    /// Voices this replica has claimed and not yet handed back: on shutdown
    /// they are made due again at once, for another replica.
    held: Arc<Mutex<HashSet<Uuid>>>,
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
        queue: DynQueue,
        store: Store,
        provider: DynProvider,
        config: SyncConfig,
        metrics: &Metrics,
    ) -> Self {
        Worker {
            queue,
            store,
            provider,
            held: Arc::default(),
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
            reconcile_needed: self.reconcile_needed.clone(),
            adopt_after: self.config.adopt_after,
        }
    }

    /// Claims what is due, checks it, and stores the outcome: one step.
    ///
    /// # Errors
    /// The queue or storage failed as a whole; single voices that fail are
    /// rescheduled and do not fail the step.
    pub async fn run_once(&self) -> Result<Step, SyncError> {
        // Boxed: the checks' futures are large, and callers hold this one.
        let checked = Box::pin(self.check_due()).await?;
        self.settle(checked).await
    }

    /// Claims what is due; `None` when the queue had lost its data and was
    /// rebuilt instead (the step then claims nothing).
    async fn claim(&self, step: &mut Step) -> Result<Option<Vec<Uuid>>, SyncError> {
        match self
            .queue
            .claim(self.config.batch, self.config.lease)
            .await?
        {
            Claim::Lost => {
                self.completed_marked.store(false, Ordering::Relaxed);
                tracing::warn!(
                    "the due-queue lost its data (Redis restart, failover or flush): rebuilding it from storage"
                );
                self.reconcile().await?;
                step.reconciled = true;
                step.next_due = Some(Duration::ZERO);
                Ok(None)
            }
            Claim::Claimed {
                ids,
                next_due,
                queued,
            } => {
                step.next_due = next_due;
                self.observe_claim(ids.len(), queued);
                Ok(Some(ids))
            }
        }
    }

    /// Claimed ids storage has never heard of: another deployment shares this
    /// Redis prefix but not this database (a misconfiguration). Their
    /// entries are left as they are, for their owner to take when the lease
    /// ends; each is logged once at ERROR and counted every time.
    fn report_unknown<'a>(&self, unknown: impl Iterator<Item = &'a Uuid>) {
        for id in unknown {
            self.unknown_ids.inc();
            let mut reported = self.unknown_reported.lock();
            if reported.len() >= UNKNOWN_REPORTED_MAX {
                reported.clear();
            }
            if reported.insert(*id) {
                tracing::error!(
                    voice_id = %id,
                    "the due-queue holds a voice this database does not know: is another deployment using the same VOICEHUB_REDIS_PREFIX? Its entry is left for its owner"
                );
            }
        }
    }

    fn observe_claim(&self, claimed: usize, queued: usize) {
        self.queue_depth
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
        #[allow(clippy::cast_precision_loss)] // at most the batch size
        self.claimed_per_step.observe(claimed as f64);
    }

    /// The first half of a step: claims what is due, reads it, and asks the
    /// provider about each voice. Nothing is written yet; the claimed voices
    /// stay leased to this replica until [`Worker::settle`] finishes them.
    async fn check_due(&self) -> Result<Checked, SyncError> {
        let mut checked = Checked::default();
        let step = &mut checked.step;
        if self.reconcile_due() {
            self.reconcile().await?;
            step.reconciled = true;
        }
        let Some(ids) = self.claim(step).await? else {
            return Ok(checked);
        };
        step.claimed = ids.len();
        if ids.is_empty() {
            return Ok(checked);
        }
        self.held.lock().extend(ids.iter().copied());
        // Delays count from the claim, not from the answer: a voice checked
        // every half second is asked twice a second, however long the step takes.
        let claimed_at = Instant::now();
        let voices = self.store.get_many(&ids).await?;
        let known: HashSet<Uuid> = voices.iter().map(|v| v.id).collect();
        let pushes: Vec<Voice> = voices.iter().filter(|v| push_due(v)).cloned().collect();
        let processing: Vec<Voice> = voices
            .into_iter()
            .filter(|v| v.status == VoiceStatus::Processing)
            .collect();
        let to_check: HashSet<Uuid> = processing.iter().map(|v| v.id).collect();
        // Deleted or already settled elsewhere: nothing left to check.
        checked.done = ids
            .iter()
            .copied()
            .filter(|id| !to_check.contains(id) && known.contains(id))
            .collect();
        self.report_unknown(ids.iter().filter(|id| !known.contains(id)));
        // Stored metadata the provider does not hold yet, pushed beside the checks.
        let mut pushing = JoinSet::new();
        for voice in pushes {
            let this = self.clone();
            pushing.spawn(async move { (voice.id, this.push(voice).await) });
        }
        let (mut asks, mut adoptions) = (Vec::with_capacity(processing.len()), Vec::new());
        for voice in processing {
            if voice.provider_voice_id.is_some() {
                asks.push(voice);
                continue;
            }
            // Reserved, not accepted by the provider: its create is running
            // (its replica holds the create lease) and is left alone, or its
            // outcome is unknown (a lost answer, a crash): looked up by its
            // tag, adopted as soon as it is there, failed once it cannot be.
            match create_lease_left(&voice) {
                Some(left) if !past_deadline(&voice) => {
                    checked.decide(voice.id, Decision::Again(left), claimed_at);
                }
                _ => adoptions.push(voice),
            }
        }
        // Voices are asked about in lookups of up to the provider's limit,
        // one task each, so answers are parsed on every core rather than
        // inside this one task.
        let mut checks = JoinSet::new();
        for lookup in chunks(asks, self.provider.lookup_limit()) {
            let this = self.clone();
            checks.spawn(async move { this.check(lookup).await });
        }
        for voice in adoptions {
            let this = self.clone();
            checks.spawn(async move { vec![this.adopt(voice).await] });
        }
        while let Some(joined) = checks.join_next().await {
            let decisions = match joined {
                Ok(decided) => decided,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
            for (id, decision) in decisions {
                checked.decide(id, decision, claimed_at);
            }
        }
        while let Some(joined) = pushing.join_next().await {
            match joined {
                Ok((id, Some(delay))) => {
                    checked.push_again.insert(id, delay);
                }
                Ok((_, None)) => {}
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        Ok(checked)
    }

    /// The second half of a step: stores the decisions of
    /// [`Worker::check_due`] (one statement per target status), publishes
    /// their events (one pipeline), and hands the claimed voices back to the
    /// queue: rescheduled if still processing, finished otherwise.
    async fn settle(&self, checked: Checked) -> Result<Step, SyncError> {
        let Checked {
            mut step,
            mut done,
            settle,
            mut again,
            mut push_again,
        } = checked;
        if step.claimed == 0 {
            return Ok(step);
        }
        match self.store.settle_many(&settle).await {
            Ok(settled) => {
                for voice in &settled {
                    tracing::info!(voice_id = %voice.id, status = ?voice.status, reason = ?voice.failure_reason, "voice status settled");
                    match voice.status {
                        VoiceStatus::Completed => step.completed += 1,
                        _ => step.failed += 1,
                    }
                }
                if step.completed > 0 {
                    self.mark_completed().await;
                }
                // A FAILED voice must not keep a voice slot at the provider.
                let failed: Vec<(Uuid, &str)> = settled
                    .iter()
                    // Failed as gone: nothing there to delete.
                    .filter(|v| {
                        v.status == VoiceStatus::Failed && v.provider_missing_since.is_none()
                    })
                    .filter_map(|v| Some((v.id, v.provider_voice_id.as_deref()?)))
                    .collect();
                delete_many_at_provider(
                    &self.provider,
                    &self.store,
                    &self.queue,
                    &failed,
                    "the voice FAILED",
                )
                .await;
                // Those not settled are no longer PROCESSING: another check
                // or a delete got there first. Either way, done.
                done.extend(settle.iter().map(|(id, _)| *id));
            }
            Err(e) => {
                tracing::warn!(voices = settle.len(), error = %chain(&e), "could not store status changes; will retry");
                let delay = self.after_failure();
                again.extend(settle.iter().map(|(id, _)| (*id, delay)));
            }
        }
        // A voice whose push is still pending stays on the queue, whatever
        // its check decided.
        for (id, delay) in &mut again {
            if let Some(push) = push_again.remove(id) {
                *delay = (*delay).min(push);
            }
        }
        done.retain(|id| !push_again.contains_key(id));
        again.extend(push_again);
        for (_, delay) in &again {
            step.next_due = Some(step.next_due.map_or(*delay, |d| d.min(*delay)));
        }
        step.rescheduled = again.len();
        {
            let mut held = self.held.lock();
            for id in done.iter().chain(again.iter().map(|(id, _)| id)) {
                held.remove(id);
            }
        }
        // One round trip for the whole batch. A failed reschedule is covered
        // by the leases running out.
        if let Err(e) = self.queue.reschedule(&again).await {
            tracing::debug!(voices = again.len(), error = %e, "reschedule failed; the leases will expire instead");
        }
        self.queue.finish(&done).await?;
        Ok(step)
    }

    /// Tells the sweep this installation has COMPLETED voices to watch for
    /// deletion at the provider: once per process, or after data loss.
    async fn mark_completed(&self) {
        if self.completed_marked.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.queue.mark(COMPLETED_MARK).await {
            self.completed_marked.store(false, Ordering::Relaxed);
            tracing::debug!(error = %e, "could not mark COMPLETED voices for the sweep; the next completion tries again");
        }
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
            let ids = self.store.unfinished_ids().await?;
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

    /// Whether reserved `voice`, not found by its tag, may be FAILED as never
    /// received: its create's lease ended `adopt_after` ago (longer than any
    /// request the create sent may still run at the provider), or it is
    /// past its deadline.
    fn may_fail_reserved(&self, voice: &Voice) -> bool {
        let ended = voice.create_lease_until.unwrap_or(voice.created_at);
        let since = (chrono::Utc::now() - ended).to_std().unwrap_or_default();
        past_deadline(voice) || since >= self.config.adopt_after
    }

    /// Looks a voice whose create's outcome is unknown up at the provider by
    /// its tag. Found, it is attached to the row (adopted; its event
    /// published) and checked like any other from the next step on; not
    /// there, it is looked for again until [`Worker::may_fail_reserved`]
    /// says the provider never received it, and it FAILED.
    async fn adopt(&self, voice: Voice) -> (Uuid, Decision) {
        let found = match self.provider.find_tagged(voice.id).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(voice_id = %voice.id, error = %e, "could not look for the provider voice of an unfinished create; will retry");
                return (voice.id, self.retry_later(&voice));
            }
        };
        let Some(provider_voice_id) = found else {
            // Not there yet: looked for again, paced like any PROCESSING
            // voice, until the create cannot make it any more.
            let decision = if self.may_fail_reserved(&voice) {
                Decision::Settle(Settlement::Fail(NEVER_RECEIVED.into()))
            } else {
                Decision::Again(self.backoff(&voice))
            };
            return (voice.id, decision);
        };
        match self
            .store
            .accept(voice.id, &provider_voice_id, INSTANT_CLONE)
            .await
        {
            Ok(Some(_)) => {
                tracing::info!(voice_id = %voice.id, provider_voice_id, "adopted the provider voice of an unfinished create");
            }
            // Changed meanwhile (deleted, or accepted by its create): the
            // next check sees how it stands.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(voice_id = %voice.id, error = %chain(&e), "could not record an adopted provider voice; will retry");
                return (voice.id, self.retry_later(&voice));
            }
        }
        (voice.id, Decision::Again(Duration::ZERO))
    }

    /// Pushes `voice`'s stored name, description and labels to the provider,
    /// holding its push lease (one pusher at a time, so two revisions'
    /// pushes never cross at the provider). Returns when to try again while
    /// a push is still pending: the provider failed, the voice changed
    /// during the push, or another pusher holds it.
    async fn push(&self, voice: Voice) -> Option<Duration> {
        // Longer than the provider's longest call, retries included.
        let lease = self.config.adopt_after;
        let taken = match self.store.take_push(voice.id, lease).await {
            Ok(Some(taken)) => taken,
            // Another pusher holds it: look again when its lease ends (it
            // reschedules the voice itself if it finishes sooner).
            Ok(None) => {
                return voice
                    .push_lease_until
                    .and_then(|until| (until - chrono::Utc::now()).to_std().ok());
            }
            Err(e) => {
                tracing::warn!(voice_id = %voice.id, error = %chain(&e), "could not take a push to the provider; will retry");
                return Some(self.after_failure());
            }
        };
        let provider_voice_id = taken.provider_voice_id.as_deref()?;
        let pushed = self
            .provider
            .edit_voice(provider_voice_id, VoiceEdit::of(&taken))
            .await;
        let settled = match &pushed {
            Ok(()) => {
                tracing::info!(voice_id = %taken.id, revision = taken.revision, "pushed the stored name, description and labels to the provider");
                true
            }
            Err(ProviderError::NotFound) => {
                tracing::warn!(voice_id = %taken.id, provider_voice_id, "the provider voice is gone; nothing to push to");
                true
            }
            // The values themselves are refused: pushing them again changes nothing.
            Err(e @ ProviderError::Rejected { .. }) => {
                tracing::error!(voice_id = %taken.id, revision = taken.revision, error = %e, "the provider refused the stored name, description or labels; not pushed");
                true
            }
            // Anything else (an outage, our credentials, a quota) passes: retry.
            Err(e) => {
                tracing::warn!(voice_id = %taken.id, error = %e, "push to the provider failed; will retry");
                false
            }
        };
        let retry = self.after_failure();
        match self.store.end_push(taken.id, taken.revision, settled).await {
            // Changed during the push: push the newer values now.
            Ok(true) if settled => Some(Duration::ZERO),
            Ok(true) => Some(retry),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(voice_id = %taken.id, error = %chain(&e), "could not record a push; it is made again when its lease ends");
                Some(lease)
            }
        }
    }

    /// Asks the provider about `voices` (all with a provider voice id), in
    /// one lookup when there are several, and decides each.
    async fn check(&self, voices: Vec<Voice>) -> Vec<(Uuid, Decision)> {
        if voices.len() == 1 {
            return join_all(voices.into_iter().map(|v| self.check_alone(v))).await;
        }
        let ids: Vec<&str> = voices
            .iter()
            .filter_map(|v| v.provider_voice_id.as_deref())
            .collect();
        match self.provider.check_voices(&ids).await {
            Ok(mut verdicts) => {
                let mut decisions = Vec::with_capacity(voices.len());
                let mut unreported = Vec::new();
                for voice in voices {
                    let verdict = voice
                        .provider_voice_id
                        .as_deref()
                        .and_then(|id| verdicts.remove(id));
                    match verdict {
                        Some(verdict) => {
                            decisions.push((voice.id, self.judge(&voice, Ok(verdict)).await));
                        }
                        None => unreported.push(voice),
                    }
                }
                // Left out of the answer: only a lookup of the voice alone
                // may say that it is gone.
                decisions
                    .extend(join_all(unreported.into_iter().map(|v| self.check_alone(v))).await);
                decisions
            }
            Err(
                e @ (ProviderError::Rejected { .. }
                | ProviderError::Protocol(_)
                | ProviderError::NotFound),
            ) => {
                tracing::warn!(voices = voices.len(), error = %e, "the provider refused a lookup of several voices; asking about each alone");
                join_all(voices.into_iter().map(|v| self.check_alone(v))).await
            }
            Err(e) => {
                tracing::warn!(voices = voices.len(), error = %e, "status lookup failed; will retry");
                voices.iter().map(|v| (v.id, self.retry_later(v))).collect()
            }
        }
    }

    /// Asks the provider about one voice and decides it.
    async fn check_alone(&self, voice: Voice) -> (Uuid, Decision) {
        let Some(provider_voice_id) = &voice.provider_voice_id else {
            return (voice.id, Decision::Again(self.backoff(&voice)));
        };
        let answer = self.provider.check_voice(provider_voice_id).await;
        (voice.id, self.judge(&voice, answer).await)
    }

    /// What the provider's answer about `voice` means for it.
    /// Past its deadline a voice is still asked once more: ready means
    /// COMPLETED; still processing means FAILED. A failed check decides
    /// nothing, not even then: the voice waits for an answer.
    fn decide(&self, voice: &Voice, answer: Result<Verdict, ProviderError>) -> Decision {
        match answer {
            Ok(Verdict::Processing) if past_deadline(voice) => {
                Decision::Settle(Settlement::Fail(gave_up(voice)))
            }
            Ok(Verdict::Processing) => Decision::Again(self.backoff(voice)),
            Ok(Verdict::Completed {
                preview_url,
                labels,
            }) => Decision::Settle(Settlement::Complete {
                preview_url,
                provider_labels: Some(labels).filter(|l| !l.is_empty()),
            }),
            Ok(Verdict::Failed(reason)) => Decision::Settle(Settlement::Fail(reason)),
            // A not-found answer never reaches here: `judge` confirms it.
            Err(e) => {
                tracing::warn!(voice_id = %voice.id, error = %e, "status check failed; will retry");
                self.retry_later(voice)
            }
        }
    }

    /// What the provider's answer about `voice` means for it, once a "not
    /// found" is confirmed or refuted (see [`Worker::missing`]), and a voice
    /// seen again has its missing mark cleared.
    async fn judge(&self, voice: &Voice, answer: Result<Verdict, ProviderError>) -> Decision {
        match answer {
            Err(ProviderError::NotFound) => self.missing(voice).await,
            answer => {
                if answer.is_ok() && voice.provider_missing_since.is_some() {
                    self.seen_again(voice).await;
                }
                self.decide(voice, answer)
            }
        }
    }

    /// The provider says it does not hold `voice`. One such answer is a
    /// reading, not a verdict: the first is recorded and the voice checked
    /// again `confirm_gone_after` later; a second one then, with no voice
    /// carrying its tag in the provider's listing, fails it as gone.
    async fn missing(&self, voice: &Voice) -> Decision {
        let confirm = self.config.confirm_gone_after;
        let Some(since) = voice.provider_missing_since else {
            if let Err(e) = self
                .store
                .set_missing_since(voice.id, Some(crate::store::now()))
                .await
            {
                tracing::warn!(voice_id = %voice.id, error = %chain(&e), "could not record a not-found answer; will check again");
                return self.retry_later(voice);
            }
            tracing::info!(voice_id = %voice.id, ?confirm, "the provider says it does not hold the voice; checking again before believing it");
            return Decision::Again(confirm);
        };
        let waited = (chrono::Utc::now() - since).to_std().unwrap_or_default();
        if waited < confirm {
            return Decision::Again(confirm.saturating_sub(waited));
        }
        match self.provider.find_tagged(voice.id).await {
            Ok(None) => Decision::Settle(Settlement::Fail(GONE_AT_PROVIDER.into())),
            Ok(Some(listed)) => {
                tracing::warn!(voice_id = %voice.id, listed, "the provider answers not found for a voice its listing still shows; not gone");
                self.seen_again(voice).await;
                Decision::Again(self.backoff(voice))
            }
            Err(e) => {
                tracing::warn!(voice_id = %voice.id, error = %e, "could not confirm a voice gone at the provider; will retry");
                self.retry_later(voice)
            }
        }
    }

    /// Clears `voice`'s missing mark: the provider holds it after all.
    async fn seen_again(&self, voice: &Voice) {
        if let Err(e) = self.store.set_missing_since(voice.id, None).await {
            tracing::warn!(voice_id = %voice.id, error = %chain(&e), "could not clear a voice's missing mark");
        }
    }

    /// After a failed check: not sooner than [`Worker::after_failure`].
    fn retry_later(&self, voice: &Voice) -> Decision {
        Decision::Again(self.backoff(voice).max(self.after_failure()))
    }

    /// The shortest wait after a failure (a check, a write, a push): five
    /// times the shortest interval, so a failing dependency is not hammered.
    fn after_failure(&self) -> Duration {
        self.config.min_backoff * 5
    }

    /// How long until `voice` is checked again (see [`check_interval`]).
    fn backoff(&self, voice: &Voice) -> Duration {
        let age = (chrono::Utc::now() - voice.created_at)
            .to_std()
            .unwrap_or_default();
        check_interval(age, self.config.min_backoff, self.config.max_backoff)
    }

    /// Loops until `shutdown`, sleeping between steps as the module says.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let wakeup = self.queue.wakeup();
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
                        tracing::info!("status sync recovered");
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
                        tracing::debug!(error = %e, "status sync still failing");
                    } else {
                        tracing::warn!(error = %e, "status sync failing; retrying with backoff (logged once per outage)");
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

    /// Stops the steps under way (a check is only a question; a settle cut
    /// short rolls back or is found settled by the next check) and hands
    /// every voice this replica holds back to the queue, due now, so another
    /// replica takes them at once instead of after the lease.
    async fn stop(&self, mut steps: JoinSet<Result<Step, SyncError>>) {
        steps.shutdown().await;
        let held: Vec<(Uuid, Duration)> = self
            .held
            .lock()
            .drain()
            .map(|id| (id, Duration::ZERO))
            .collect();
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
    fn delay_after(&self, step: &Step) -> Duration {
        if step.claimed >= self.config.batch || step.reconciled {
            Duration::ZERO
        } else {
            step.next_due
                .map_or(self.config.idle, |d| d.min(self.config.idle))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
