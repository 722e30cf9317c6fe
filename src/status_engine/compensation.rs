//! Compensation: deleting a provider voice that voicehub no longer wants,
//! so that it stops taking one of the account's voice slots at the
//! provider. That is a voice storage could not record (or whose row was
//! deleted while it was being cloned), and the provider voice of every
//! voice that FAILED.
//!
//! A voice already gone at the provider counts as deleted. A deletion that
//! fails is logged at error level with the provider voice id and recorded in
//! `provider_orphans`, and the queue's orphans mark is set, so the next
//! sweep (or an operator) deletes it later; a failure to record it is
//! logged too. Should the mark be lost (Redis flushed), the sweep still
//! finds the voice by its tag. Nothing here fails its caller: the
//! change that made the voice unwanted is already decided.

use uuid::Uuid;

use super::{queue::DynQueue, sweep::ORPHANS_MARK};
use crate::{
    error::chain,
    provider::{DynProvider, ProviderError},
    store::Store,
};

/// Deletes `provider_voice_id` (of voicehub's `voice_id`) at the provider,
/// or records it as an orphan; `reason` says why it is unwanted.
pub(crate) async fn delete_at_provider(
    provider: &DynProvider,
    store: &Store,
    queue: &DynQueue,
    provider_voice_id: &str,
    voice_id: Uuid,
    reason: &str,
) {
    match provider.delete_voice(provider_voice_id).await {
        Ok(()) | Err(ProviderError::NotFound) => {
            tracing::warn!(provider_voice_id, %voice_id, reason, "deleted the provider voice (compensation)");
        }
        Err(e) => {
            tracing::error!(
                provider_voice_id,
                %voice_id,
                reason,
                error = %e,
                "ORPHANED provider voice: it exists at the provider but voicehub does not want it; recorded for deletion"
            );
            if let Err(db) = store
                .record_orphan(provider.name(), provider_voice_id, Some(voice_id), reason)
                .await
            {
                tracing::error!(provider_voice_id, error = %chain(&db), "could not record the orphaned provider voice");
            } else if let Err(e) = queue.mark(ORPHANS_MARK).await {
                tracing::warn!(provider_voice_id, error = %e, "could not tell the sweep of the recorded orphan; it finds the voice by its tag");
            }
        }
    }
}
