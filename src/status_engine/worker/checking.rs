//! Claiming due voices and asking the provider about them: one lookup per
//! provider limit of voices, single checks for what a lookup leaves out,
//! and a "not found" confirmed before it fails anything (see
//! [`Worker::missing`]). A failed lookup reschedules its voices; a refused
//! one is replaced by single checks. Nothing here writes a voice: the
//! decisions go to settling.

use super::timing::{check_interval, create_lease_left, gave_up, past_deadline, push_due};
use super::{Checked, Decision, EngineError, Step, Worker};
use crate::error::chain;
use crate::provider::GONE_AT_PROVIDER;
use crate::provider::ProviderError;
use crate::provider::Verdict;
use crate::status_engine::queue::Claim;
use crate::store::Settlement;
use crate::store::Voice;
use crate::store::VoiceStatus;
use futures_util::future::join_all;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

/// Unknown ids remembered as logged, at most (then forgotten, and logged again).
pub(super) const UNKNOWN_REPORTED_MAX: usize = 10_000;

/// `items` in order, in chunks of at most `limit` (at least 1).
pub(super) fn chunks<T>(mut items: Vec<T>, limit: usize) -> Vec<Vec<T>> {
    let limit = limit.max(1);
    let mut chunks = Vec::with_capacity(items.len().div_ceil(limit));
    while !items.is_empty() {
        let rest = items.split_off(items.len().min(limit));
        chunks.push(std::mem::replace(&mut items, rest));
    }
    chunks
}

impl Worker {
    /// Claims what is due; `None` when the queue had lost its data and was
    /// rebuilt instead (the step then claims nothing).
    pub(super) async fn claim(&self, step: &mut Step) -> Result<Option<Vec<Uuid>>, EngineError> {
        match self
            .queue
            .claim(self.config.batch, self.config.claim_lease)
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
    pub(super) fn report_unknown<'a>(&self, unknown: impl Iterator<Item = &'a Uuid>) {
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

    pub(super) fn observe_claim(&self, claimed: usize, queued: usize) {
        self.queue_depth
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
        #[allow(clippy::cast_precision_loss)] // at most the batch size
        self.claimed_per_step.observe(claimed as f64);
    }

    /// Stops holding `ids` (claimed by a step that failed before deciding
    /// them): the next step makes them due again after `delay`.
    fn release_held(&self, ids: &[Uuid], delay: Duration) {
        {
            let mut held = self.held.lock();
            for id in ids {
                held.remove(id);
            }
        }
        self.unscheduled
            .lock()
            .extend(ids.iter().map(|id| (*id, delay)));
    }

    /// Extends the lease of every voice this replica holds to a whole claim
    /// lease from now, so a step that runs long (a slow provider) keeps its
    /// voices, and the lease can be short: a replica that dies holding
    /// voices leaves them for at most one lease. The number renewed.
    ///
    /// # Errors
    /// The queue failed (the leases run out as they would have).
    pub async fn renew_claims(&self) -> Result<usize, EngineError> {
        // Ordered with settling's hand-back, so a renewal never lands after
        // a voice's reschedule and pushes its next check back.
        let _ordered = self.claims.lock().await;
        let held: Vec<(Uuid, Duration)> = self
            .held
            .lock()
            .iter()
            .map(|id| (*id, self.config.claim_lease))
            .collect();
        if held.is_empty() {
            return Ok(0);
        }
        self.queue.reschedule(&held).await?;
        Ok(held.len())
    }

    /// Reschedules what an earlier step could not (their delays count
    /// again from now); kept for the next step if the queue still fails.
    async fn hand_back_unscheduled(&self) -> Result<(), EngineError> {
        let pending = std::mem::take(&mut *self.unscheduled.lock());
        if pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.queue.reschedule(&pending).await {
            self.unscheduled.lock().extend(pending);
            return Err(e.into());
        }
        tracing::info!(
            voices = pending.len(),
            "voices a failed reschedule had left leased are due again"
        );
        Ok(())
    }

    /// The first half of a step: claims what is due, reads it, and asks the
    /// provider about each voice. Nothing is written yet; the claimed voices
    /// stay leased to this replica until [`Worker::settle`] finishes them.
    pub(super) async fn check_due(&self) -> Result<Checked, EngineError> {
        let mut checked = Checked::default();
        let step = &mut checked.step;
        if self.reconcile_due() {
            self.reconcile().await?;
            step.reconciled = true;
        }
        self.hand_back_unscheduled().await?;
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
        let voices = match self.store.get_many(&ids).await {
            Ok(voices) => voices,
            Err(e) => {
                // Not held any more (no renewal keeps them from others):
                // handed back by the next step that reaches the queue.
                self.release_held(&ids, self.after_failure());
                return Err(e.into());
            }
        };
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
        // Another deployment's: left for its owner once this lease ends,
        // never renewed.
        let unknown: Vec<Uuid> = ids
            .iter()
            .filter(|id| !known.contains(id))
            .copied()
            .collect();
        self.report_unknown(unknown.iter());
        {
            let mut held = self.held.lock();
            for id in &unknown {
                held.remove(id);
            }
        }
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

    /// Asks the provider about `voices` (all with a provider voice id), in
    /// one lookup when there are several, and decides each.
    pub(super) async fn check(&self, voices: Vec<Voice>) -> Vec<(Uuid, Decision)> {
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
    pub(super) async fn check_alone(&self, voice: Voice) -> (Uuid, Decision) {
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
    pub(super) fn decide(&self, voice: &Voice, answer: Result<Verdict, ProviderError>) -> Decision {
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
    pub(super) async fn judge(
        &self,
        voice: &Voice,
        answer: Result<Verdict, ProviderError>,
    ) -> Decision {
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
    pub(super) async fn missing(&self, voice: &Voice) -> Decision {
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
    pub(super) async fn seen_again(&self, voice: &Voice) {
        if let Err(e) = self.store.set_missing_since(voice.id, None).await {
            tracing::warn!(voice_id = %voice.id, error = %chain(&e), "could not clear a voice's missing mark");
        }
    }

    /// After a failed check: not sooner than [`Worker::after_failure`].
    pub(super) fn retry_later(&self, voice: &Voice) -> Decision {
        Decision::Again(self.backoff(voice).max(self.after_failure()))
    }

    /// The shortest wait after a failure (a check, a write, a push): five
    /// times the shortest interval, so a failing dependency is not hammered.
    pub(super) fn after_failure(&self) -> Duration {
        self.config.min_backoff * 5
    }

    /// How long until `voice` is checked again (see [`check_interval`]).
    pub(super) fn backoff(&self, voice: &Voice) -> Duration {
        let age = (chrono::Utc::now() - voice.created_at)
            .to_std()
            .unwrap_or_default();
        check_interval(age, self.config.min_backoff, self.config.max_backoff)
    }
}
