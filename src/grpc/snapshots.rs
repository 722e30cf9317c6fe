//! The storage reads of watch streams, shared: streams that open (or
//! re-read after lost events) together are served by one query each for
//! many of them, not one query per stream ([`super::batcher`]: one batch at
//! a time, reads gathering for [`LINGER`] between its queries, at most
//! [`QUEUED_KEYS`] waiting).
//!
//! A batch reads everything it took in at most two queries: the voices by
//! id; the PROCESSING voices of the owners. Reads return what is stored,
//! DELETED and private voices included: the caller applies the visibility
//! rule.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sea_orm::DbErr;
use uuid::Uuid;

use super::batcher::{Batcher, Counters, Pace, Reads};
use crate::{
    metrics::{LimitLabel, Metrics},
    store::{Store, Voice},
};

/// Batches that run at once: one. Its queries are large and few, and a
/// second one mostly waits for a pool connection beside the first (the
/// burst test on a pool of 2 shed 1,034 of 10,000 streams in a run with
/// two; 0 to 547 in four runs with one), leaving the rest of the pool to
/// other calls.
const RUNNING: usize = 1;

/// How long reads gather between a running batch's queries: a burst of
/// 10,000 streams within a second is a few dozen queries, and each waits
/// at most this much more for its snapshot.
const LINGER: Duration = Duration::from_millis(25);

/// The most ids and owners one batch reads.
const BATCH_KEYS: usize = 1_000;

/// The most ids and owners waiting for a batch; past it reads are shed.
const QUEUED_KEYS: usize = 50_000;

/// What a stream needs to read.
#[derive(Debug, Clone)]
pub(crate) enum Read {
    /// These voices, in any status.
    Voices(Vec<Uuid>),
    /// The owner's PROCESSING voices, oldest first.
    ProcessingOf(Uuid),
}

/// The shared reads of one replica's watch streams.
pub(crate) type Snapshots = Batcher<SnapshotReads>;

/// Reads of watch streams, as [`Snapshots`] batches them.
pub(crate) struct SnapshotReads;

/// The replica's [`Snapshots`], counted in `metrics`.
pub(crate) fn snapshots(store: Store, metrics: &Metrics) -> Arc<Snapshots> {
    Batcher::new(
        SnapshotReads,
        store,
        Pace {
            running: RUNNING,
            linger: LINGER,
            batch_keys: BATCH_KEYS,
            queued_keys: QUEUED_KEYS,
        },
        Counters {
            batches: metrics.snapshot_batches.clone(),
            reads: metrics.snapshot_reads.clone(),
            refused: metrics
                .limit_refusals
                .get_or_create(&LimitLabel {
                    limit: "watch_snapshots",
                })
                .clone(),
            busy: "too many watch streams are opening on this replica",
        },
    )
}

impl Reads for SnapshotReads {
    type Read = Read;
    type Answer = Vec<Voice>;

    fn keys(read: &Read) -> usize {
        match read {
            Read::Voices(ids) => ids.len(),
            Read::ProcessingOf(_) => 1,
        }
    }

    async fn answer(&self, store: &Store, batch: &[&Read]) -> Vec<Result<Vec<Voice>, DbErr>> {
        read_batch(store, batch).await
    }
}

/// One answer per read of `batch`, in order, from at most two queries.
async fn read_batch(store: &Store, batch: &[&Read]) -> Vec<Result<Vec<Voice>, DbErr>> {
    let mut ids = Vec::new();
    let mut owners = Vec::new();
    for read in batch {
        match read {
            Read::Voices(wanted) => ids.extend_from_slice(wanted),
            Read::ProcessingOf(owner) => owners.push(*owner),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    owners.sort_unstable();
    owners.dedup();
    let by_id = store.get_many(&ids).await.map(|voices| {
        voices
            .into_iter()
            .map(|v| (v.id, v))
            .collect::<HashMap<_, _>>()
    });
    let processing = store.processing_of_many(&owners).await.map(|voices| {
        let mut by_owner: HashMap<Uuid, Vec<Voice>> = HashMap::new();
        for voice in voices {
            by_owner.entry(voice.owner_user_id).or_default().push(voice);
        }
        by_owner
    });
    batch
        .iter()
        .map(|read| match read {
            Read::Voices(wanted) => by_id
                .as_ref()
                .map(|found| {
                    wanted
                        .iter()
                        .filter_map(|id| found.get(id).cloned())
                        .collect()
                })
                .map_err(Clone::clone),
            Read::ProcessingOf(owner) => processing
                .as_ref()
                .map(|by_owner| by_owner.get(owner).cloned().unwrap_or_default())
                .map_err(Clone::clone),
        })
        .collect()
}
