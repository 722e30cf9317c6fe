//! Compensation: deleting a provider voice that voicehub no longer wants,
//! so that it stops taking one of the account's voice slots at the
//! provider. That is a voice storage could not record (or whose row was
//! deleted while it was being cloned), and the provider voice of every
//! voice that FAILED.
//!
//! A provider voice that a live (PROCESSING or COMPLETED) row holds is never
//! deleted, whatever led here: it is logged at ERROR and left alone. A
//! voice already gone at the provider counts as deleted. A deletion that
//! fails is logged at error level with the provider voice id and recorded in
//! `provider_orphans`, and the orphans mark is set, so the next
//! sweep (or an operator) deletes it later; a failure to record it is
//! logged too. Should the mark be lost (Redis flushed), the sweep still
//! finds the voice by its tag. Nothing here fails its caller: the
//! change that made the voice unwanted is already decided.

use std::collections::HashMap;

use futures_util::future::join_all;
use uuid::Uuid;

use super::{queue::DynCoordination, sweep::ORPHANS_MARK};
use crate::{
    error::chain,
    provider::{DynProvider, ProviderError},
    store::{Store, VoiceStatus},
};

/// Deletes `provider_voice_id` (of voicehub's `voice_id`) at the provider,
/// or records it as an orphan; `reason` says why it is unwanted.
pub(crate) async fn delete_at_provider(
    provider: &DynProvider,
    store: &Store,
    coordination: &DynCoordination,
    provider_voice_id: &str,
    voice_id: Uuid,
    reason: &str,
) {
    delete_many_at_provider(
        provider,
        store,
        coordination,
        &[(voice_id, provider_voice_id)],
        reason,
    )
    .await;
}

/// [`delete_at_provider`] for several voices, with one query of who holds
/// their provider voices.
pub(crate) async fn delete_many_at_provider(
    provider: &DynProvider,
    store: &Store,
    coordination: &DynCoordination,
    voices: &[(Uuid, &str)],
    reason: &str,
) {
    if voices.is_empty() {
        return;
    }
    let ids: Vec<&str> = voices.iter().map(|(_, p)| *p).collect();
    let held: HashMap<String, Uuid> = match store.holders(&ids).await {
        Ok(holders) => holders
            .into_iter()
            .filter(|v| matches!(v.status, VoiceStatus::Processing | VoiceStatus::Completed))
            .filter_map(|v| Some((v.provider_voice_id?, v.id)))
            .collect(),
        // Unknown: a deletion could take a live voice. Recorded for the
        // sweep, which checks again before it deletes.
        Err(e) => {
            tracing::warn!(voices = voices.len(), error = %chain(&e), "could not check who holds provider voices; leaving their deletion to the sweep");
            for (voice_id, provider_voice_id) in voices {
                record(
                    provider,
                    store,
                    coordination,
                    provider_voice_id,
                    *voice_id,
                    reason,
                )
                .await;
            }
            return;
        }
    };
    let held = &held;
    join_all(voices.iter().map(|(voice_id, provider_voice_id)| async move {
        if let Some(live) = held.get(*provider_voice_id) {
            tracing::error!(provider_voice_id, %voice_id, held_by = %live, reason, "not deleting a provider voice a live voice holds");
            return;
        }
        delete_one(provider, store, coordination, provider_voice_id, *voice_id, reason).await;
    }))
    .await;
}

async fn delete_one(
    provider: &DynProvider,
    store: &Store,
    coordination: &DynCoordination,
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
            record(
                provider,
                store,
                coordination,
                provider_voice_id,
                voice_id,
                reason,
            )
            .await;
        }
    }
}

/// Records `provider_voice_id` in `provider_orphans` and tells the sweep.
async fn record(
    provider: &DynProvider,
    store: &Store,
    coordination: &DynCoordination,
    provider_voice_id: &str,
    voice_id: Uuid,
    reason: &str,
) {
    if let Err(db) = store
        .record_orphan(provider.name(), provider_voice_id, Some(voice_id), reason)
        .await
    {
        tracing::error!(provider_voice_id, error = %chain(&db), "could not record the orphaned provider voice");
    } else if let Err(e) = coordination.mark(ORPHANS_MARK).await {
        tracing::warn!(provider_voice_id, error = %e, "could not tell the sweep of the recorded orphan; it finds the voice by its tag");
    }
}
