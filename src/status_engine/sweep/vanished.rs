//! Voices deleted at the provider behind voicehub's back: a COMPLETED voice
//! the listing lacks is looked up alone, twice, `confirm_gone_after` apart,
//! before it is FAILED and its change published.

use std::collections::HashSet;

use super::{DELETED_AT_PROVIDER, PAGE, Sweeper};
use crate::{provider::ProviderError, status_engine::EngineError};

/// The most COMPLETED voices missing from a listing one sweep looks up.
pub(super) const VANISHED_LOOKUPS_PER_SWEEP: usize = 100;

impl Sweeper {
    /// Looks up the COMPLETED voices whose provider voice `listed` lacks
    /// and fails those confirmed gone; returns how many, and whether any
    /// COMPLETED voice was found at all.
    pub(super) async fn vanished(
        &self,
        listed: &HashSet<String>,
    ) -> Result<(usize, bool), EngineError> {
        let mut missing = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.completed_page(after.as_deref(), PAGE).await?;
            let full = page.len() == usize::try_from(PAGE).unwrap_or(0);
            if page.is_empty() && after.is_none() {
                return Ok((0, false));
            }
            after = page.last().map(|(_, p)| p.clone());
            missing.extend(page.into_iter().filter(|(_, p)| !listed.contains(p)));
            if !full {
                break;
            }
        }
        if missing.len() > VANISHED_LOOKUPS_PER_SWEEP {
            tracing::warn!(
                missing = missing.len(),
                looked_up = VANISHED_LOOKUPS_PER_SWEEP,
                "many COMPLETED voices are missing from the provider's listing; looking up some now, the rest next sweep"
            );
            missing.truncate(VANISHED_LOOKUPS_PER_SWEEP);
        }
        // First reading: the voice alone, by its id.
        let mut suspects = Vec::new();
        for (id, provider_voice_id) in missing {
            if self.not_found(&provider_voice_id).await {
                suspects.push((id, provider_voice_id));
            }
        }
        if suspects.is_empty() {
            return Ok((0, true));
        }
        // A second reading, later: one not-found answer is not a verdict.
        tokio::time::sleep(self.confirm_gone_after).await;
        let mut vanished = 0;
        for (id, provider_voice_id) in suspects {
            if !self.not_found(&provider_voice_id).await {
                continue;
            }
            if let Some(voice) = self.store.fail_vanished(id, DELETED_AT_PROVIDER).await? {
                tracing::error!(voice_id = %voice.id, provider_voice_id, "a COMPLETED voice was deleted at the provider behind voicehub's back: now FAILED");
                self.metrics.vanished.inc();
                vanished += 1;
            }
        }
        Ok((vanished, true))
    }

    /// Whether the provider says it does not hold `provider_voice_id`
    /// (a failed lookup says nothing).
    pub(super) async fn not_found(&self, provider_voice_id: &str) -> bool {
        match self.provider.check_voice(provider_voice_id).await {
            Err(ProviderError::NotFound) => true,
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(provider_voice_id, error = %e, "could not look up a voice missing from the provider's listing; the next sweep tries again");
                false
            }
        }
    }
}
