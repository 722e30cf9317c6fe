//! The sweep: finds the provider voices this installation made and decided
//! to discard, and deletes them, so none keeps taking one of the account's
//! voice slots; and notices COMPLETED voices that vanished at the provider.
//!
//! A provider account may be shared (production and staging, a laptop with
//! the company's key), and its labels are editable by anyone who holds the
//! account. So the sweep acts only on what it can prove is its own, and
//! reports the rest:
//! - **May delete** a provider voice tagged with this installation's id (or
//!   tagged before installations had ids, when this database has its row)
//!   whose voicehub voice is FAILED or DELETED, or holds another provider
//!   voice (a second clone); and the orphans this installation recorded.
//! - **Never deletes** a voice tagged by another installation, an untagged
//!   voice, a voice whose row this database does not have (another
//!   installation's, or created after the backup this database was restored
//!   from), a voice FAILED as gone (confirmed missing; if it is listed after
//!   all, it is left for an operator), or a provider voice that any live
//!   (PROCESSING or COMPLETED) row holds, whatever its labels say. Each
//!   spared voice is logged at ERROR, once per sweep, and counted.
//! - **A budget**: a sweep that would delete more than `max_deletions`
//!   deletes none, logs ERROR and counts the refusal, so a mistake costs at
//!   most one budget, once. With `delete` off, the sweep only reports what
//!   it would delete, and why.
//! - **Vanished voices**: a COMPLETED voice whose provider voice the listing
//!   lacks is looked up directly; only two "not found" answers
//!   `confirm_gone_after` apart move it to FAILED ("deleted at the
//!   provider"), published like any change. A listing that is short or
//!   empty fails no voice by itself; one that fails ends the sweep.
//!
//! One replica at a time: a sweep first takes the sweep lease for its whole
//! interval ([`Coordination`](super::Coordination), in Redis when replicas
//! share one), so the
//! replicas together sweep once per interval. A deletion the provider
//! refuses is logged and counted, and found again by the next sweep. Every
//! deletion is logged with its provider voice id and reason. Cost: one
//! listing of the account, one read of the rows its tags name (none when it
//! names none), and one read per 1,000 COMPLETED voices, made only when the
//! listing holds a voice of this installation or one completed since the
//! last sweep (the `completed` mark): a sweep with nothing to do
//! runs no SQL. Should the mark be lost (Redis flushed, an in-process
//! restart) while every voice of this installation is gone from the
//! provider, those go unnoticed until the next voice completes.

use std::{collections::HashSet, time::Duration};

use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod deletion;
mod vanished;

use deletion::Doomed;

use super::{EngineConfig, EngineError, queue::DynCoordination};
use crate::{
    error::chain,
    metrics::{Metrics, SweepLabel},
    provider::DynProvider,
    store::Store,
};

/// The most orphan records one sweep retries.
const ORPHANS_PER_SWEEP: u64 = 1_000;

/// Rows read per query.
const PAGE: u64 = 1_000;

/// The queue mark set when an orphan is recorded.
pub(crate) const ORPHANS_MARK: &str = "orphans";

/// The queue mark that says this installation has COMPLETED voices: set by
/// the status engine when voices complete, taken by the sweep, and set
/// again by it while any are left.
pub(crate) const COMPLETED_MARK: &str = "completed";

/// The failure reason of a voice confirmed deleted at the provider.
pub(crate) const DELETED_AT_PROVIDER: &str =
    "the voice was deleted at the provider (outside voicehub); create it again";

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Provider voices carrying voicehub's tag (of any installation).
    pub tagged: usize,
    /// Tagged voices left alone as not provably this installation's to
    /// delete (another installation's, no row here, held by a live voice).
    pub spared: usize,
    /// Deleted (or found gone already).
    pub deleted: usize,
    /// Would have been deleted: the sweep only reports (or was over budget).
    pub reported: usize,
    /// Deletions the provider refused; the next sweep tries again.
    pub failed: usize,
    /// Of the deleted, recorded orphans (forgotten once gone).
    pub orphans_cleared: usize,
    /// The sweep would have deleted more than its budget, and deleted none.
    pub over_budget: bool,
    /// COMPLETED voices confirmed gone at the provider, now FAILED.
    pub vanished: usize,
}

/// The sweep's counters.
#[derive(Clone)]
struct SweepMetrics {
    spared: Family<SweepLabel, Counter>,
    deletions: Family<SweepLabel, Counter>,
    over_budget: Counter,
    vanished: Counter,
}

impl SweepMetrics {
    fn spared(&self, why: &'static str) {
        self.spared.get_or_create(&SweepLabel { what: why }).inc();
    }
    fn deletion(&self, outcome: &'static str) {
        self.deletions
            .get_or_create(&SweepLabel { what: outcome })
            .inc();
    }
}

/// Sweeps the provider for voices this installation no longer wants.
#[derive(Clone)]
pub struct Sweeper {
    provider: DynProvider,
    store: Store,
    coordination: DynCoordination,
    /// This installation's id, as its voices' labels carry it.
    installation: String,
    every: Duration,
    first_after: Duration,
    max_deletions: usize,
    delete: bool,
    confirm_gone_after: Duration,
    metrics: SweepMetrics,
}

impl Sweeper {
    /// A sweeper of `installation`'s voices as `config` says (`sweep_every`
    /// zero: never).
    pub(crate) fn new(
        (provider, store, coordination): (DynProvider, Store, DynCoordination),
        installation: Uuid,
        config: &EngineConfig,
        metrics: &Metrics,
    ) -> Self {
        Sweeper {
            provider,
            store,
            coordination,
            installation: installation.to_string(),
            every: config.sweep_every,
            first_after: config.sweep_first_after,
            max_deletions: config.sweep_max_deletions,
            delete: config.sweep_delete,
            confirm_gone_after: config.confirm_gone_after,
            metrics: SweepMetrics {
                spared: metrics.sweep_spared.clone(),
                deletions: metrics.sweep_deletions.clone(),
                over_budget: metrics.sweep_over_budget.clone(),
                vanished: metrics.voices_vanished.clone(),
            },
        }
    }

    /// One sweep, unless another replica holds this interval's lease (`None`).
    ///
    /// # Errors
    /// The queue, storage or the provider's listing failed; single deletions
    /// and lookups that fail are counted or logged, not errors.
    pub async fn run_once(&self) -> Result<Option<Swept>, EngineError> {
        if !self
            .coordination
            .try_lease("sweep", self.every.max(Duration::from_millis(1)))
            .await?
        {
            return Ok(None);
        }
        let mut swept = Swept::default();
        let tagged = self.provider.list_tagged().await?;
        swept.tagged = tagged.len();
        let listed: HashSet<String> = tagged.iter().map(|t| t.provider_voice_id.clone()).collect();
        let ours_listed = tagged.iter().any(|t| {
            t.installation
                .as_ref()
                .is_none_or(|i| *i == self.installation)
        });
        let mut doomed = self.doomed(tagged, &mut swept).await?;
        // The mark is taken before the records are read: one recorded
        // meanwhile sets it again for the next sweep.
        let orphans_marked = self.coordination.take_mark(ORPHANS_MARK).await?;
        let mut orphans_left = false;
        if orphans_marked {
            let orphans = self
                .store
                .orphans(self.provider.name(), ORPHANS_PER_SWEEP)
                .await;
            let orphans = match orphans {
                Ok(orphans) => orphans,
                Err(e) => {
                    self.coordination.mark(ORPHANS_MARK).await?;
                    return Err(e.into());
                }
            };
            orphans_left = orphans.len() == usize::try_from(ORPHANS_PER_SWEEP).unwrap_or(0);
            for orphan in orphans {
                // Listed and doomed already: one deletion forgets the record too.
                if let Some(listed) = doomed
                    .iter_mut()
                    .find(|d| d.provider_voice_id == orphan.provider_voice_id)
                {
                    listed.orphan = Some(orphan.id);
                    continue;
                }
                doomed.push(Doomed {
                    provider_voice_id: orphan.provider_voice_id,
                    voice_id: orphan.voice_id,
                    reason: "recorded as an orphan",
                    orphan: Some(orphan.id),
                });
            }
        }
        self.spare_held(&mut doomed, &mut swept).await?;
        if doomed.len() > self.max_deletions {
            swept.over_budget = true;
            swept.reported = doomed.len();
            self.metrics.over_budget.inc();
            tracing::error!(
                would_delete = doomed.len(),
                budget = self.max_deletions,
                tagged = swept.tagged,
                "provider sweep OVER BUDGET: it would delete more provider voices than VOICEHUB_SWEEP_MAX_DELETIONS and deleted none; check what it would delete (VOICEHUB_SWEEP_DELETE=false reports it)"
            );
            orphans_left |= orphans_marked;
        } else if !self.delete {
            for d in &doomed {
                tracing::warn!(provider_voice_id = d.provider_voice_id, voice_id = ?d.voice_id, reason = d.reason, "sweep (report only) would delete a provider voice");
                self.metrics.deletion("reported");
            }
            swept.reported = doomed.len();
            orphans_left |= orphans_marked;
        } else {
            for d in doomed {
                if !self.delete_one(&d).await {
                    swept.failed += 1;
                    orphans_left |= d.orphan.is_some();
                    continue;
                }
                swept.deleted += 1;
                if let Some(orphan) = d.orphan {
                    self.store.forget_orphan(orphan).await?;
                    swept.orphans_cleared += 1;
                }
            }
        }
        if orphans_left {
            self.coordination.mark(ORPHANS_MARK).await?;
        }
        // With none of its voices listed and none completed since the last
        // sweep, nothing can have vanished: no SQL.
        if self.coordination.take_mark(COMPLETED_MARK).await? || ours_listed {
            let vanished = self.vanished(&listed).await;
            if !matches!(vanished, Ok((_, false))) {
                self.coordination.mark(COMPLETED_MARK).await?;
            }
            swept.vanished = vanished?.0;
        }
        tracing::info!(?swept, "provider sweep done");
        Ok(Some(swept))
    }

    /// Sweeps `first_after` start-up and then every interval (the lease
    /// keeps it to one replica per interval) until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        if self.every.is_zero() {
            tracing::info!("provider sweep disabled (VOICEHUB_SWEEP_INTERVAL=0)");
            return;
        }
        let mut wait = self.first_after;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = self.every;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                result = self.run_once() => if let Err(e) = result {
                    tracing::warn!(error = %chain(&e), "provider sweep failed; trying again next interval");
                },
            }
        }
    }
}
