//! The sweep: finds the provider voices voicehub made but no longer wants
//! and deletes them, so none keeps taking one of the account's voice slots.
//!
//! It lists every provider voice that carries voicehub's tag and deletes
//! those whose voicehub voice is FAILED or DELETED, holds another provider
//! voice (a second clone of one voice), or does not exist and was reserved
//! longer ago than the grace period (its id is a UUIDv7, so it tells when).
//! Voices without the tag are never touched: an account may hold voices
//! that are not voicehub's. It then retries the deletions recorded in
//! `provider_orphans`, forgetting each one that is gone, when the queue's
//! orphans mark says one was recorded since: a sweep with nothing to
//! retry and no tagged voice at the provider runs no SQL.
//!
//! One replica at a time: a sweep first takes a lease for its whole
//! interval from the due-queue (Redis when replicas share one), so the
//! replicas together sweep once per interval. A deletion the provider
//! refuses is logged and counted, and found again by the next sweep. Every
//! deletion is logged with its provider voice id and reason.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{SyncConfig, SyncError, queue::DynQueue};
use crate::{
    error::chain,
    provider::{DynProvider, ProviderError},
    store::{Store, Voice, VoiceStatus},
};

/// The most orphan records one sweep retries.
const ORPHANS_PER_SWEEP: u64 = 1_000;

/// The queue mark set when an orphan is recorded.
pub(crate) const ORPHANS_MARK: &str = "orphans";

/// How soon after start-up a replica first tries to sweep.
const FIRST_SWEEP: Duration = Duration::from_mins(1);

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Provider voices carrying voicehub's tag.
    pub tagged: usize,
    /// Of those, deleted (or found gone): no live voicehub voice holds them.
    pub deleted: usize,
    /// Recorded orphans deleted at the provider and forgotten.
    pub orphans_cleared: usize,
    /// Deletions the provider refused; the next sweep tries again.
    pub failed: usize,
}

/// Sweeps the provider for voices voicehub no longer wants.
#[derive(Clone)]
pub struct Sweeper {
    provider: DynProvider,
    store: Store,
    queue: DynQueue,
    grace: Duration,
    every: Duration,
}

impl Sweeper {
    /// A sweeper that sweeps every `config.sweep_every` (zero: never),
    /// sparing voices reserved less than `config.adopt_after` ago.
    pub(crate) fn new(
        provider: DynProvider,
        store: Store,
        queue: DynQueue,
        config: &SyncConfig,
    ) -> Self {
        Sweeper {
            provider,
            store,
            queue,
            grace: config.adopt_after,
            every: config.sweep_every,
        }
    }

    /// One sweep, unless another replica holds this interval's lease (`None`).
    ///
    /// # Errors
    /// The queue, storage or the provider's listing failed; single deletions
    /// that fail are counted, not errors.
    pub async fn run_once(&self) -> Result<Option<Swept>, SyncError> {
        if !self
            .queue
            .try_lease("sweep", self.every.max(Duration::from_millis(1)))
            .await?
        {
            return Ok(None);
        }
        let mut swept = Swept::default();
        let tagged = self.provider.list_tagged().await?;
        swept.tagged = tagged.len();
        let ids: Vec<Uuid> = tagged
            .iter()
            .map(|(_, id)| *id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut rows = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(1_000) {
            rows.extend(
                self.store
                    .get_many(chunk)
                    .await?
                    .into_iter()
                    .map(|v| (v.id, v)),
            );
        }
        for (provider_voice_id, voice_id) in tagged {
            let Some(reason) = unwanted(
                rows.get(&voice_id),
                &provider_voice_id,
                voice_id,
                self.grace,
            ) else {
                continue;
            };
            if self
                .delete(&provider_voice_id, Some(voice_id), reason)
                .await
            {
                swept.deleted += 1;
            } else {
                swept.failed += 1;
            }
        }
        // The mark is taken before the records are read: one recorded
        // meanwhile sets it again for the next sweep.
        if self.queue.take_mark(ORPHANS_MARK).await? {
            self.retry_orphans(&mut swept).await?;
        }
        tracing::info!(
            tagged = swept.tagged,
            deleted = swept.deleted,
            orphans_cleared = swept.orphans_cleared,
            failed = swept.failed,
            "provider sweep done"
        );
        Ok(Some(swept))
    }

    /// Retries the recorded orphans' deletions, forgetting each that is
    /// gone. Those left (refused, or past this sweep's share) keep the mark.
    async fn retry_orphans(&self, swept: &mut Swept) -> Result<(), SyncError> {
        let result = async {
            let orphans = self
                .store
                .orphans(self.provider.name(), ORPHANS_PER_SWEEP)
                .await?;
            let mut left =
                orphans.len() == usize::try_from(ORPHANS_PER_SWEEP).unwrap_or(usize::MAX);
            for orphan in orphans {
                let reason = "recorded as an orphan";
                if self
                    .delete(&orphan.provider_voice_id, orphan.voice_id, reason)
                    .await
                {
                    self.store.forget_orphan(orphan.id).await?;
                    swept.orphans_cleared += 1;
                } else {
                    swept.failed += 1;
                    left = true;
                }
            }
            Ok::<_, SyncError>(left)
        }
        .await;
        if !matches!(result, Ok(false)) {
            self.queue.mark(ORPHANS_MARK).await?;
        }
        result.map(drop)
    }

    /// Whether the provider voice is gone now; logs either way.
    async fn delete(&self, provider_voice_id: &str, voice_id: Option<Uuid>, reason: &str) -> bool {
        match self.provider.delete_voice(provider_voice_id).await {
            Ok(()) | Err(ProviderError::NotFound) => {
                tracing::warn!(
                    provider_voice_id,
                    ?voice_id,
                    reason,
                    "sweep deleted a provider voice"
                );
                true
            }
            Err(e) => {
                tracing::error!(provider_voice_id, ?voice_id, reason, error = %e, "sweep could not delete a provider voice; the next sweep tries again");
                false
            }
        }
    }

    /// Sweeps a minute after start-up and then every interval (the lease
    /// keeps it to one replica per interval) until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        if self.every.is_zero() {
            tracing::info!("provider sweep disabled (VOICEHUB_SWEEP_INTERVAL=0)");
            return;
        }
        let mut wait = FIRST_SWEEP.min(self.every);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = self.every;
            if let Err(e) = self.run_once().await {
                tracing::warn!(error = %chain(&e), "provider sweep failed; trying again next interval");
            }
        }
    }
}

/// Why the provider voice `provider_voice_id`, tagged `voice_id`, is no
/// longer wanted, given its voicehub voice `row`; `None` if it is.
fn unwanted(
    row: Option<&Voice>,
    provider_voice_id: &str,
    voice_id: Uuid,
    grace: Duration,
) -> Option<&'static str> {
    match row {
        // Reserved before its create began, so a missing row is a lost one;
        // the grace spares a reservation still being written.
        None => (reserved_ago(voice_id)? > grace).then_some("no voicehub voice holds it"),
        Some(voice) if matches!(voice.status, VoiceStatus::Failed | VoiceStatus::Deleted) => {
            Some("its voicehub voice is FAILED or DELETED")
        }
        Some(voice) => match &voice.provider_voice_id {
            Some(held) if held != provider_voice_id => {
                Some("its voicehub voice holds another provider voice (a second clone)")
            }
            _ => None,
        },
    }
}

/// How long ago the UUIDv7 `id` was made; `None` for another kind of id.
fn reserved_ago(id: Uuid) -> Option<Duration> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    let made = UNIX_EPOCH + Duration::new(secs, nanos);
    Some(SystemTime::now().duration_since(made).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_uuid_v7_tells_its_age() {
        let old = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, 1_000, 0));
        assert!(reserved_ago(old).unwrap() > Duration::from_hours(24 * 365));
        assert!(reserved_ago(Uuid::now_v7()).unwrap() < Duration::from_mins(1));
        assert_eq!(reserved_ago(Uuid::new_v4()), None);
    }
}
