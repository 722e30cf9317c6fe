//! Adoption: a reserved voice whose create's outcome was lost is looked for
//! at the provider by its tag; found, its provider voice is stored and the
//! voice checked like any other; not found once its create can no longer be
//! running, it is FAILED as never received.

use super::timing::past_deadline;
use super::{Decision, Worker};
use crate::error::chain;
use crate::provider::INSTANT_CLONE;
use crate::store::Settlement;
use crate::store::Voice;
use std::time::Duration;
use uuid::Uuid;

/// The failure reason of a reserved voice the provider does not hold.
pub(super) const NEVER_RECEIVED: &str =
    "the voice provider never received this voice (its create was interrupted); create it again";

impl Worker {
    /// Whether reserved `voice`, not found by its tag, may be FAILED as never
    /// received: its create's lease ended `adopt_after` ago (longer than any
    /// request the create sent may still run at the provider), or it is
    /// past its deadline.
    pub(super) fn may_fail_reserved(&self, voice: &Voice) -> bool {
        let ended = voice.create_lease_until.unwrap_or(voice.created_at);
        let since = (chrono::Utc::now() - ended).to_std().unwrap_or_default();
        past_deadline(voice) || since >= self.config.adopt_after
    }

    /// Looks a voice whose create's outcome is unknown up at the provider by
    /// its tag. Found, it is attached to the row (adopted; its event
    /// published) and checked like any other from the next step on; not
    /// there, it is looked for again until [`Worker::may_fail_reserved`]
    /// says the provider never received it, and it FAILED.
    pub(super) async fn adopt(&self, voice: Voice) -> (Uuid, Decision) {
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
}
