//! Pushing updates: a voice whose stored name, description or labels the
//! provider does not hold yet gets them sent beside its status check, by
//! one replica at a time (the push lease), and stays queued until the
//! provider holds them.

use super::Worker;
use crate::error::chain;
use crate::provider::ProviderError;
use crate::provider::VoiceEdit;
use crate::store::Voice;
use std::time::Duration;

impl Worker {
    /// Pushes `voice`'s stored name, description and labels to the provider,
    /// holding its push lease (one pusher at a time, so two revisions'
    /// pushes never cross at the provider). Returns when to try again while
    /// a push is still pending: the provider failed, the voice changed
    /// during the push, or another pusher holds it.
    pub(super) async fn push(&self, voice: Voice) -> Option<Duration> {
        let lease = self.config.push_lease;
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
}
