//! The write path: create, update and delete voices across the provider and
//! storage, so that the two never silently disagree.
//!
//! Guarantees:
//! - **Idempotent create.** A `request_id` is reserved in storage (unique per
//!   owner) *before* the provider is called, so two requests with one key —
//!   sequential or racing, on any replica — make one provider call and return
//!   one voice. A provider failure that surely made nothing releases the
//!   reservation, so a retry with the same key can succeed; a repeat that
//!   arrives while the first create still runs waits for its outcome, so
//!   it never answers with a reservation that is then released.
//! - **A create is never cut in half.** The reserved voice is on the
//!   due-queue from the start; the provider call runs in a task of its own,
//!   so a caller who goes away does not stop it. While it runs (waiting for
//!   a provider slot included) this replica renews the voice's create
//!   lease, so no other replica fails it.
//! - **Never cloned twice blind.** An answer that does not prove the
//!   provider did nothing is resolved by the voice's tag: after a 5xx the
//!   tag is looked up (found: adopted; not there: created again, at most
//!   twice); after a timeout or reset (the request may still be running
//!   there), or a refusal following a 5xx, the reservation is kept and
//!   returned PROCESSING, and the status engine adopts the voice by its tag
//!   as soon as it appears, or fails it.
//! - **No orphans.** If the provider created a voice that storage then
//!   refuses to record, the provider voice is deleted again (compensation);
//!   if that fails too, its id is logged at error level and recorded in
//!   `provider_orphans`. If storage does not answer (the record may or may
//!   not have been made), the voice is returned PROCESSING and the status
//!   engine adopts it by its tag, as for a lost provider answer.
//! - **Owner only.** Update and delete find the voice by owner; anyone else's
//!   voice, public or not, is NOT_FOUND.
//! - **Guarded writes.** Updates apply only to the revision that was read
//!   (a concurrent change makes this one ABORTED, never lost).
//! - **Updates converge.** An update is stored first and the voice marked
//!   for a push; the status engine pushes the stored name, description and
//!   labels to the provider (one pusher at a time per voice) until the
//!   provider holds the latest stored revision's values, also when the
//!   provider was unreachable or the voice was still being created. A call
//!   that fails (ABORTED, NOT_FOUND, storage) changed nothing anywhere.
//! - **Every stored change is published** (creation, update, delete): its
//!   event is stored with it (the outbox, whose commit wakes the relay);
//!   a new voice is handed to the status engine.
//! - **`created` comes first.** A voice handed to its caller before its
//!   provider voice is known is announced then, and its adoption later adds
//!   no event; an update while its create still runs is ABORTED. So a
//!   voice's first event is its `created`, or, for one the provider never
//!   accepted, its failure or deletion.

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use uuid::Uuid;

use crate::{
    audio,
    error::{Error, chain},
    provider::{AudioFile, CloneRequest, DynProvider, INSTANT_CLONE, ProviderError, labels_sent},
    quota::CreateQuota,
    status_engine::{Scheduler, delete_at_provider},
    store::{self, Labels, Reservation, Store, Visibility, Voice, VoiceStatus},
};

/// A validated CreateVoiceClone request: what the write path creates a voice from.
#[derive(Debug, Clone)]
pub(crate) struct NewVoice {
    /// Display name, trimmed.
    pub(crate) name: String,
    /// Free text; empty when not set.
    pub(crate) description: String,
    /// Canonical BCP-47 tag; empty when not set.
    pub(crate) language: String,
    /// Free-form; empty when not set.
    pub(crate) gender: String,
    /// The caller's labels.
    pub(crate) labels: BTreeMap<String, String>,
    /// Who may see the voice.
    pub(crate) visibility: Visibility,
    /// The caller's idempotency key.
    pub(crate) request_id: Option<String>,
    /// The audio to clone from.
    pub(crate) samples: Vec<AudioFile>,
    /// Ask the provider to remove background noise.
    pub(crate) remove_background_noise: bool,
    /// What is recorded beside the voice, in the same transaction.
    pub(crate) intake: NewIntake,
}

/// What CreateVoiceClone records beside the voice (`voice_intakes`).
#[derive(Debug, Clone, Default)]
pub(crate) struct NewIntake {
    /// The consent the user attested; `None` when none was required or given.
    pub(crate) consent: Option<AttestedConsent>,
    /// The sample quality report; `None` only before the samples are checked.
    pub(crate) report: Option<audio::Report>,
    /// The caller's address, as this replica saw it.
    pub(crate) caller_address: Option<String>,
    /// The caller's `user-agent`.
    pub(crate) user_agent: Option<String>,
}

/// A consent, as the user attested it (validated).
#[derive(Debug, Clone)]
pub(crate) struct AttestedConsent {
    pub(crate) speaker_name: String,
    /// Its stored name (`speaker_is_caller`, `speaker_permission`, `licensed`).
    pub(crate) basis: &'static str,
    pub(crate) statement: Statement,
    /// Lowercase hexadecimal.
    pub(crate) evidence_sha256: Option<String>,
}

/// The consent statement the user confirmed.
#[derive(Debug, Clone)]
pub(crate) enum Statement {
    /// Its text.
    Text(String),
    /// A statement the operator publishes.
    Published { id: String, version: String },
}

/// A create's answer.
#[derive(Debug)]
pub(crate) struct CreateAnswer {
    /// The voice.
    pub(crate) voice: Voice,
    /// Its intake record, when this call wrote it; `None` when the call
    /// repeated an earlier one's `request_id` (that call's record stands).
    pub(crate) intake: Option<store::Intake>,
}

/// A validated UpdateVoice request: new values for the fields it may
/// change; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub(crate) struct VoicePatch {
    /// A new name.
    pub(crate) name: Option<String>,
    /// A new description (empty clears it).
    pub(crate) description: Option<String>,
    /// A new visibility.
    pub(crate) visibility: Option<Visibility>,
    /// New labels, replacing all of them.
    pub(crate) labels: Option<BTreeMap<String, String>>,
}

impl VoicePatch {
    /// Whether the patch touches what the provider holds too.
    fn reaches_provider(&self) -> bool {
        self.name.is_some() || self.description.is_some() || self.labels.is_some()
    }

    /// `voice` with this patch applied.
    fn applied_to(&self, voice: &Voice) -> Voice {
        let mut next = voice.clone();
        if let Some(name) = &self.name {
            next.name.clone_from(name);
        }
        if let Some(description) = &self.description {
            next.description.clone_from(description);
        }
        if let Some(visibility) = self.visibility {
            next.visibility = visibility;
        }
        if let Some(labels) = &self.labels {
            next.labels = Labels(labels.clone());
        }
        next
    }
}

/// What one create got from the provider, its unknown outcomes resolved.
enum Cloned {
    /// The provider voice made for it (or found by its tag).
    Made(String),
    /// The provider may hold a voice for it, or make one yet.
    Unknown(String),
    /// The provider surely made nothing.
    Refused(ProviderError),
}

/// How a create ended when it did not fail.
enum Created {
    /// The provider voice is recorded.
    Recorded(Voice),
    /// The outcome is unknown: the status engine takes it from here.
    HandedOver(Voice),
}

impl Created {
    fn into_voice(self) -> Voice {
        match self {
            Created::Recorded(voice) | Created::HandedOver(voice) => voice,
        }
    }
}

/// The shortest time between two renewals of a create's lease.
const MIN_RENEWAL: Duration = Duration::from_millis(10);

/// Retries of a create whose server error left no tagged voice behind.
const UNKNOWN_OUTCOME_RETRIES: u32 = 2;

/// The pause before such a retry, times the retry's number.
const UNKNOWN_OUTCOME_PAUSE: Duration = Duration::from_millis(500);

/// How often a repeated `request_id` looks again at a create still running.
const CREATE_RUNNING_POLL: Duration = Duration::from_millis(100);

/// Creates, updates and deletes voices across the provider and storage.
#[derive(Clone)]
pub(crate) struct WritePath {
    store: Store,
    provider: DynProvider,
    scheduler: Scheduler,
    limits: CreateLimits,
    quota: Arc<CreateQuota>,
}

/// The limits the write path enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CreateLimits {
    /// Live voices per user.
    pub(crate) max_per_user: u64,
    /// How long a voice may stay PROCESSING.
    pub(crate) max_age: Duration,
}

impl WritePath {
    /// The write path over these parts.
    #[must_use]
    pub(crate) fn new(
        store: Store,
        provider: DynProvider,
        scheduler: Scheduler,
        limits: CreateLimits,
        quota: Arc<CreateQuota>,
    ) -> Self {
        WritePath {
            store,
            provider,
            scheduler,
            limits,
            quota,
        }
    }

    /// Clones a voice at the provider and stores it as PROCESSING.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED at the per-user limit or creation rate, a provider
    /// failure, or a storage failure (after compensation).
    pub(crate) async fn create(&self, owner: Uuid, new: NewVoice) -> Result<CreateAnswer, Error> {
        let repeated = |voice| CreateAnswer {
            voice,
            intake: None,
        };
        if let Some(request_id) = &new.request_id
            && let Some(existing) = self.store.find_by_request_id(owner, request_id).await?
            && let Some(voice) = self.outcome_of(owner, request_id, existing).await?
        {
            tracing::info!(voice_id = %voice.id, request_id, "repeated request_id: returning the same voice");
            return Ok(repeated(Box::pin(self.announced(voice)).await));
        }
        // Counted before anything is written: a refused create leaves nothing.
        if let Err(exceeded) = self.quota.take(owner).await {
            return Err(Error::RateLimited {
                limit: exceeded.limit,
                retry_after: exceeded.retry_after,
            });
        }
        let (voice, intake) = self.reservation(owner, &new);
        let reserved = match self
            .store
            .reserve(voice, intake.clone(), self.limits.max_per_user)
            .await?
        {
            Reservation::Reserved(voice) => voice,
            Reservation::Existing(voice) => {
                // A create of the same request_id got there first.
                let request_id = new.request_id.as_deref().unwrap_or_default();
                return match self.outcome_of(owner, request_id, voice).await? {
                    Some(voice) => Ok(repeated(Box::pin(self.announced(voice)).await)),
                    None => Err(Error::Aborted(
                        "a create with this request_id was refused by the voice provider meanwhile; retry with the same request_id",
                    )),
                };
            }
            Reservation::LimitReached => {
                return Err(Error::ResourceExhausted(format!(
                    "voice limit reached: a user may have at most {} voices; delete one first",
                    self.limits.max_per_user
                )));
            }
        };
        // On the due-queue from now on: should this create never finish (the
        // process dies, the provider's answer is lost), the status engine
        // adopts the voice by its tag or fails it.
        self.scheduler
            .schedule_reserved(reserved.id, self.limits.max_age)
            .await;
        // The provider call and what follows run as a task of their own, so
        // a caller who goes away (cancelled, past its deadline) does not cut
        // the create in half: it finishes, or is handed to the engine.
        let this = self.clone();
        match tokio::spawn(async move { this.clone_reserved(reserved, new).await }).await {
            Ok(result) => result.map(|voice| CreateAnswer {
                voice,
                intake: Some(intake),
            }),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::ShuttingDown),
        }
    }

    /// The voice an earlier create of `request_id` made, once that create is
    /// no longer running: accepted, or handed over (kept until the status
    /// engine adopts or fails it). `None` if it was released (the provider
    /// surely made nothing): this call may create it anew. While it runs
    /// (its reservation's create lease is live) this waits, polling storage:
    /// answering with the reservation at once would hand the caller a voice
    /// that a refusal may yet remove.
    ///
    /// # Errors
    /// Storage.
    async fn outcome_of(
        &self,
        owner: Uuid,
        request_id: &str,
        mut existing: Voice,
    ) -> Result<Option<Voice>, Error> {
        loop {
            let running = existing.provider_voice_id.is_none()
                && existing.status == VoiceStatus::Processing
                && existing
                    .create_lease_until
                    .is_some_and(|until| until > store::now());
            if !running {
                return Ok(Some(existing));
            }
            tokio::time::sleep(CREATE_RUNNING_POLL).await;
            match self.store.find_by_request_id(owner, request_id).await? {
                Some(voice) => existing = voice,
                None => return Ok(None),
            }
        }
    }

    /// Clones the reserved voice at the provider and records the provider's
    /// id, holding the voice's create lease all the while (renewed every
    /// third of it), so no other replica fails the voice while this create
    /// waits for a provider slot or runs.
    ///
    /// A renewal runs beside the work, never instead of it: the record's
    /// transaction holds the voice's row, so a renewal that stopped the work
    /// until it finished would wait for a lock its own task holds (until the
    /// statement timeout).
    async fn clone_reserved(&self, reserved: Voice, new: NewVoice) -> Result<Voice, Error> {
        let lease = self.scheduler.create_lease();
        let id = reserved.id;
        // On the heap: the samples and the provider call make a large future.
        let mut work = Box::pin(self.clone_and_record(reserved, new));
        let mut renew = tokio::time::interval_at(
            tokio::time::Instant::now() + lease / 3,
            (lease / 3).max(MIN_RENEWAL),
        );
        let mut renewal: Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = None;
        loop {
            tokio::select! {
                result = &mut work => {
                    // After the last renewal, so none can follow the end.
                    if let Some(last) = renewal.take() {
                        last.await;
                    }
                    return match result {
                        Ok(Created::HandedOver(voice)) => Ok(Box::pin(self.hand_over(voice)).await),
                        other => other.map(Created::into_voice),
                    };
                }
                () = async { renewal.as_mut().expect("guarded").await }, if renewal.is_some() => {
                    renewal = None;
                }
                _ = renew.tick(), if renewal.is_none() => {
                    renewal = Some(Box::pin(self.renew_lease(id, lease)));
                }
            }
        }
    }

    /// Extends the create lease of voice `id` by `lease` from now.
    async fn renew_lease(&self, id: Uuid, lease: Duration) {
        let until = store::now() + chrono::Duration::from_std(lease).unwrap_or_default();
        if let Err(e) = self.store.renew_create_lease(id, until).await {
            // The lease runs out; another replica may then look the voice
            // up by its tag, which is harmless.
            tracing::warn!(voice_id = %id, error = %chain(&e), "could not renew a create's lease");
        }
    }

    /// The create itself: the provider call, resolving an unknown outcome
    /// by the voice's tag, then the record.
    async fn clone_and_record(&self, reserved: Voice, new: NewVoice) -> Result<Created, Error> {
        let request = CloneRequest {
            voicehub_id: reserved.id,
            name: new.name.clone(),
            description: Some(new.description.clone()).filter(|d| !d.is_empty()),
            labels: labels_sent(&new.labels, &new.language, &new.gender),
            files: new.samples,
            remove_background_noise: new.remove_background_noise,
        };
        let provider_voice_id = match self.clone_once(&request).await {
            Cloned::Made(id) => id,
            Cloned::Unknown(detail) => {
                // The provider may hold the voice, or may make it yet: keep
                // the reservation (a retry with the same request_id returns
                // it) and let the status engine adopt it by its tag as soon
                // as it is there, or fail it once it cannot come any more.
                tracing::warn!(voice_id = %reserved.id, %detail, "the outcome of a create is unknown; the status engine will adopt the voice by its tag, or fail it");
                return Ok(Created::HandedOver(reserved));
            }
            Cloned::Refused(e) => {
                self.release(reserved.id).await;
                return Err(e.into());
            }
        };
        self.record(reserved, &provider_voice_id).await
    }

    /// Asks the provider to clone, once: an answer that does not prove the
    /// provider did nothing is never retried blind. It is resolved by the
    /// voice's tag (adopted if there), and retried only if the request is
    /// over (a server error answered it) and the tag is not there.
    async fn clone_once(&self, request: &CloneRequest) -> Cloned {
        let mut ambiguous: Option<String> = None;
        for attempt in 0..=UNKNOWN_OUTCOME_RETRIES {
            if attempt > 0 {
                tokio::time::sleep(UNKNOWN_OUTCOME_PAUSE * attempt).await;
            }
            let detail = match self.provider.clone_voice(request.clone()).await {
                Ok(cloned) => return Cloned::Made(cloned.provider_voice_id),
                Err(ProviderError::OutcomeUnknown {
                    detail,
                    may_still_run: true,
                }) => return Cloned::Unknown(detail),
                Err(ProviderError::OutcomeUnknown {
                    detail,
                    may_still_run: false,
                }) => detail,
                // The voice an ambiguous answer made may hold the last slot,
                // or the outage may have hidden it: the engine finds out.
                Err(e) if ambiguous.is_some() => {
                    return Cloned::Unknown(format!(
                        "{e}, after {}",
                        ambiguous.unwrap_or_default()
                    ));
                }
                Err(e) => return Cloned::Refused(e),
            };
            match self.provider.find_tagged(request.voicehub_id).await {
                Ok(Some(found)) => {
                    tracing::info!(voice_id = %request.voicehub_id, provider_voice_id = found, %detail, "a create answered a server error but the provider made the voice: adopted");
                    return Cloned::Made(found);
                }
                Ok(None) => {
                    tracing::info!(voice_id = %request.voicehub_id, %detail, "a create answered a server error and the provider holds no voice with its tag: retrying");
                    ambiguous = Some(detail);
                }
                Err(e) => return Cloned::Unknown(format!("{detail}; looking for its tag: {e}")),
            }
        }
        Cloned::Unknown(ambiguous.unwrap_or_default())
    }

    /// Ends this replica's create of `reserved` with an unknown outcome: it
    /// is announced (the caller is handed it), its lease ends now and the
    /// status engine looks for it by its tag at once. The voice as answered.
    async fn hand_over(&self, reserved: Voice) -> Voice {
        let id = reserved.id;
        let voice = self.announced(reserved).await;
        if let Err(e) = self.store.renew_create_lease(id, store::now()).await {
            tracing::warn!(voice_id = %id, error = %chain(&e), "could not end a create's lease; the engine waits for it to run out");
        }
        self.scheduler.schedule(id).await;
        voice
    }

    /// `voice`, announced if it was not: a caller is about to be handed it,
    /// and its first event must be `created`, before any change the caller
    /// makes. Best effort: unannounced, it cannot be updated until the
    /// status engine adopts it (which announces it).
    async fn announced(&self, voice: Voice) -> Voice {
        if !voice.is_unannounced() {
            return voice;
        }
        match self.store.announce(voice.id).await {
            Ok(Some(announced)) => announced,
            // Moved on meanwhile (adopted, settled): its current state.
            Ok(None) => match self.store.get_many(&[voice.id]).await {
                Ok(found) => found.into_iter().next().unwrap_or(voice),
                Err(_) => voice,
            },
            Err(e) => {
                tracing::warn!(voice_id = %voice.id, error = %chain(&e), "could not announce a voice handed over to its caller; it is announced when adopted");
                voice
            }
        }
    }

    /// Records the provider voice `provider_voice_id` made for `reserved`.
    async fn record(&self, reserved: Voice, provider_voice_id: &str) -> Result<Created, Error> {
        match self
            .store
            .accept(reserved.id, provider_voice_id, INSTANT_CLONE)
            .await
        {
            Ok(Some(voice)) => {
                tracing::info!(voice_id = %voice.id, provider_voice_id, "voice cloned");
                self.scheduler.schedule(voice.id).await;
                Ok(Created::Recorded(voice))
            }
            Ok(None) => {
                // Deleted by its owner while the provider was cloning it.
                self.compensate(
                    provider_voice_id,
                    reserved.id,
                    "the voice was deleted while it was being cloned",
                )
                .await;
                Err(Error::Aborted(
                    "the voice was deleted while it was being created",
                ))
            }
            Err(e) if store::unavailable(&e) => {
                // Storage did not answer: the provider id may have been
                // recorded (a commit cut short) or not. Deleting the
                // provider voice could leave a row pointing at nothing, so
                // it is kept, and so is the reservation: the status engine
                // finds the voice by its tag (adopts it) or checks it by
                // the recorded id, either way once storage is back.
                tracing::warn!(voice_id = %reserved.id, provider_voice_id, error = %chain(&e), "storage did not answer while recording a cloned voice; the status engine will adopt it");
                Ok(Created::HandedOver(reserved))
            }
            Err(e) => {
                self.compensate(
                    provider_voice_id,
                    reserved.id,
                    "storage failed to record the cloned voice",
                )
                .await;
                self.release(reserved.id).await;
                Err(e.into())
            }
        }
    }

    fn reservation(&self, owner: Uuid, new: &NewVoice) -> (Voice, store::Intake) {
        let now = store::now();
        let id = Uuid::now_v7();
        let consent = new.intake.consent.as_ref();
        let (text, published) = match consent.map(|c| &c.statement) {
            Some(Statement::Text(text)) => (Some(text.clone()), None),
            Some(Statement::Published { id, version }) => {
                (None, Some((id.clone(), version.clone())))
            }
            None => (None, None),
        };
        let intake = store::Intake {
            voice_id: id,
            owner_user_id: owner,
            recorded_at: now,
            request_id: new.request_id.clone(),
            caller_address: new.intake.caller_address.clone(),
            user_agent: new.intake.user_agent.clone(),
            consent_speaker_name: consent.map(|c| c.speaker_name.clone()),
            consent_basis: consent.map(|c| c.basis.to_owned()),
            consent_statement_text: text,
            consent_statement_id: published.as_ref().map(|p| p.0.clone()),
            consent_statement_version: published.map(|p| p.1),
            consent_evidence_sha256: consent.and_then(|c| c.evidence_sha256.clone()),
            sample_report: new
                .intake
                .report
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok()),
        };
        let voice = Voice {
            id,
            owner_user_id: owner,
            provider_voice_id: None,
            name: new.name.clone(),
            description: new.description.clone(),
            language: new.language.clone(),
            gender: new.gender.clone(),
            category: String::new(),
            visibility: new.visibility,
            status: VoiceStatus::Processing,
            failure_reason: None,
            preview_url: None,
            labels: Labels(new.labels.clone()),
            provider_labels: Labels::default(),
            request_id: new.request_id.clone(),
            revision: 1,
            created_at: now,
            updated_at: now,
            completed_at: None,
            deleted_at: None,
            processing_deadline: Some(now + self.limits.max_age),
            create_lease_until: Some(
                now + chrono::Duration::from_std(self.scheduler.create_lease()).unwrap_or_default(),
            ),
            push_pending: false,
            push_lease_until: None,
            provider_missing_since: None,
            consent_recorded: consent.is_some(),
        };
        (voice, intake)
    }

    async fn release(&self, id: Uuid) {
        match self.store.release(id).await {
            // Gone from storage: off the queue too, or it would be an id
            // storage does not know.
            Ok(()) => self.scheduler.forget(id).await,
            // The row stays PROCESSING without a provider id; the status engine's
            // maximum age turns it FAILED, so it cannot linger for ever.
            Err(e) => {
                tracing::error!(voice_id = %id, error = %chain(&e), "could not release a voice reservation");
            }
        }
    }

    /// Deletes a provider voice that storage does not hold (or records it
    /// as an orphan).
    async fn compensate(&self, provider_voice_id: &str, voice_id: Uuid, reason: &str) {
        delete_at_provider(
            &self.provider,
            &self.store,
            self.scheduler.coordination(),
            provider_voice_id,
            voice_id,
            reason,
        )
        .await;
    }

    /// Applies `patch` to the owner's voice. Storage first: the change is
    /// stored (guarded by the revision that was read) and, when it touches
    /// what the provider holds, the voice is marked for a push, which the
    /// status engine makes until the provider holds the stored values.
    ///
    /// # Errors
    /// NOT_FOUND unless the caller owns the live voice; ABORTED when the
    /// voice changed meanwhile, or while it is an unannounced reservation
    /// (its create still running: a conflict that ends by itself). Either
    /// way nothing changed anywhere.
    pub(crate) async fn update(
        &self,
        owner: Uuid,
        id: Uuid,
        patch: VoicePatch,
    ) -> Result<Voice, Error> {
        let current = self
            .store
            .get_owned(owner, id)
            .await?
            .ok_or(Error::NotFound("voice"))?;
        if current.is_unannounced() {
            // Seen in a listing while its create runs: an update now would
            // be published before the voice's `created`.
            return Err(Error::Aborted(
                "voice_id: the voice is still being created; retry once CreateVoiceClone has answered",
            ));
        }
        let next = patch.applied_to(&current);
        // A FAILED voice's provider voice is deleted: its metadata is ours alone.
        let push = patch.reaches_provider()
            && matches!(
                current.status,
                VoiceStatus::Processing | VoiceStatus::Completed
            );
        let updated = self
            .store
            .update_metadata(&next, current.revision, push)
            .await?
            .ok_or(Error::Aborted(
                "the voice changed while it was being updated; retry",
            ))?;
        // A voice still being created is pushed once its create is accepted
        // (which schedules it); scheduling it now could delay that check.
        if push && updated.provider_voice_id.is_some() {
            self.scheduler.schedule(updated.id).await;
        }
        Ok(updated)
    }

    /// Deletes the owner's voice at the provider, then marks it DELETED.
    ///
    /// # Errors
    /// NOT_FOUND unless the caller owns the live voice; a provider failure
    /// (then nothing changed).
    pub(crate) async fn delete(&self, owner: Uuid, id: Uuid) -> Result<Voice, Error> {
        let current = self
            .store
            .get_owned(owner, id)
            .await?
            .ok_or(Error::NotFound("voice"))?;
        if let Some(provider_voice_id) = &current.provider_voice_id {
            match self.provider.delete_voice(provider_voice_id).await {
                // Already gone there: the goal is reached.
                Ok(()) | Err(ProviderError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let deleted = self
            .store
            .mark_deleted(id)
            .await?
            .ok_or(Error::NotFound("voice"))?;
        Ok(deleted)
    }
}
