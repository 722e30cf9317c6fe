//! What a sweep deletes, and what it spares: only provider voices this
//! installation provably discarded (its tag, and a row here that is FAILED
//! or DELETED or holds another provider voice), never one a live row holds;
//! every spared voice logged and counted.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{PAGE, Sweeper, Swept};
use crate::{
    provider::{ProviderError, TaggedVoice},
    status_engine::EngineError,
    store::{Voice, VoiceStatus},
};

/// A provider voice the sweep means to delete.
pub(super) struct Doomed {
    pub(super) provider_voice_id: String,
    pub(super) voice_id: Option<Uuid>,
    pub(super) reason: &'static str,
    /// The orphan record to forget once it is gone.
    pub(super) orphan: Option<Uuid>,
}

/// Why this installation discards the provider voice `provider_voice_id`
/// tagged for `row`; `None` if it does not.
pub(super) fn discarded(row: &Voice, provider_voice_id: &str) -> Option<&'static str> {
    match row.status {
        // Confirmed gone once: if it is listed after all, an operator looks.
        VoiceStatus::Failed if row.provider_missing_since.is_some() => None,
        VoiceStatus::Failed | VoiceStatus::Deleted => {
            Some("its voicehub voice is FAILED or DELETED")
        }
        VoiceStatus::Processing | VoiceStatus::Completed => match &row.provider_voice_id {
            Some(held) if held != provider_voice_id => {
                Some("its voicehub voice holds another provider voice (a second clone)")
            }
            _ => None,
        },
    }
}

impl Sweeper {
    /// The listed voices this installation may delete; the others it may
    /// not are reported.
    pub(super) async fn doomed(
        &self,
        tagged: Vec<TaggedVoice>,
        swept: &mut Swept,
    ) -> Result<Vec<Doomed>, EngineError> {
        let ours = &self.installation;
        let mut candidates = Vec::with_capacity(tagged.len());
        for voice in tagged {
            match &voice.installation {
                Some(theirs) if theirs != ours => {
                    self.spare(
                        &voice,
                        "other_installation",
                        "tagged by another installation sharing this provider account",
                        swept,
                    );
                }
                _ => candidates.push(voice),
            }
        }
        let ids: Vec<Uuid> = candidates
            .iter()
            .map(|t| t.voicehub_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut rows = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(usize::try_from(PAGE).unwrap_or(1_000)) {
            rows.extend(
                self.store
                    .get_many(chunk)
                    .await?
                    .into_iter()
                    .map(|v| (v.id, v)),
            );
        }
        let mut doomed = Vec::new();
        for voice in candidates {
            let Some(row) = rows.get(&voice.voicehub_id) else {
                self.spare(&voice, "no_row", "tagged for a voice this database does not have (another installation's, or made after the backup this database was restored from)", swept);
                continue;
            };
            if let Some(reason) = discarded(row, &voice.provider_voice_id) {
                doomed.push(Doomed {
                    provider_voice_id: voice.provider_voice_id,
                    voice_id: Some(voice.voicehub_id),
                    reason,
                    orphan: None,
                });
            }
        }
        Ok(doomed)
    }

    /// Takes out of `doomed` every provider voice a live row holds: its
    /// labels were edited or copied at the provider, or an orphan record
    /// is stale; deleting it would take a customer's voice.
    pub(super) async fn spare_held(
        &self,
        doomed: &mut Vec<Doomed>,
        swept: &mut Swept,
    ) -> Result<(), EngineError> {
        let mut held = HashMap::new();
        let ids: Vec<&str> = doomed
            .iter()
            .map(|d| d.provider_voice_id.as_str())
            .collect();
        for chunk in ids.chunks(usize::try_from(PAGE).unwrap_or(1_000)) {
            for voice in self.store.holders(chunk).await? {
                if matches!(
                    voice.status,
                    VoiceStatus::Processing | VoiceStatus::Completed
                ) && let Some(id) = voice.provider_voice_id
                {
                    held.insert(id, voice.id);
                }
            }
        }
        doomed.retain(|d| {
            let Some(holder) = held.get(&d.provider_voice_id) else {
                return true;
            };
            tracing::error!(provider_voice_id = d.provider_voice_id, tagged_for = ?d.voice_id, held_by = %holder, reason = d.reason, "sweep spared a provider voice a live voice holds (its labels say otherwise: edited or copied at the provider?)");
            self.metrics.spared("held_by_live_voice");
            swept.spared += 1;
            false
        });
        Ok(())
    }

    pub(super) fn spare(
        &self,
        voice: &TaggedVoice,
        why: &'static str,
        what: &str,
        swept: &mut Swept,
    ) {
        tracing::error!(
            provider_voice_id = voice.provider_voice_id,
            voicehub_id = %voice.voicehub_id,
            installation = ?voice.installation,
            "sweep left a tagged provider voice alone: {what}"
        );
        self.metrics.spared(why);
        swept.spared += 1;
    }

    /// Whether the provider voice is gone now; logs and counts either way.
    pub(super) async fn delete_one(&self, d: &Doomed) -> bool {
        let (provider_voice_id, voice_id, reason) = (&d.provider_voice_id, d.voice_id, d.reason);
        match self.provider.delete_voice(provider_voice_id).await {
            Ok(()) | Err(ProviderError::NotFound) => {
                tracing::warn!(
                    provider_voice_id,
                    ?voice_id,
                    reason,
                    "sweep deleted a provider voice"
                );
                self.metrics.deletion("deleted");
                true
            }
            Err(e) => {
                tracing::error!(provider_voice_id, ?voice_id, reason, error = %e, "sweep could not delete a provider voice; the next sweep tries again");
                self.metrics.deletion("failed");
                false
            }
        }
    }
}
