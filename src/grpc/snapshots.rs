//! The storage reads of watch streams, shared: streams that open (or
//! re-read after lost events) together are served by one query each for
//! many of them, not one query per stream.
//!
//! - A read joins the queue and, if no batch runs ([`RUNNING`]), starts
//!   one; a running batch takes everything queued (up to
//!   [`BATCH_KEYS`] ids and owners), reads it in at most two queries (the
//!   voices by id; the PROCESSING voices of the owners), answers each
//!   read, and, while reads keep coming, lets them gather for [`LINGER`]
//!   before it takes the next. A lone read on a quiet replica waits for
//!   nothing: it starts its own batch at once.
//! - Bounded: at most [`QUEUED_KEYS`] ids and owners wait; a read past it
//!   is shed with RESOURCE_EXHAUSTED and a RetryInfo, as is a read whose
//!   batch timed out waiting for a pool connection while the database
//!   answered (every connection busy). A database that does not answer is
//!   UNAVAILABLE, as everywhere.
//! - A batch runs on as a task of its own, so a caller that goes away
//!   does not cancel the others' reads.
//! - Reads return what is stored, DELETED and private voices included:
//!   the caller applies the visibility rule.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{shed, shed_saturated};
use crate::{
    error::Error,
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
pub(crate) const QUEUED_KEYS: usize = 50_000;

/// What a stream needs to read.
#[derive(Debug, Clone)]
pub(crate) enum Read {
    /// These voices, in any status.
    Voices(Vec<Uuid>),
    /// The owner's PROCESSING voices, oldest first.
    ProcessingOf(Uuid),
}

impl Read {
    fn keys(&self) -> usize {
        match self {
            Read::Voices(ids) => ids.len(),
            Read::ProcessingOf(_) => 1,
        }
    }
}

type Answer = Result<Vec<Voice>, sea_orm::DbErr>;

struct Waiting {
    read: Read,
    answer: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// Ids and owners in `waiting`.
    keys: usize,
    running: usize,
}

/// The shared reads of one replica's watch streams.
pub(crate) struct Snapshots {
    store: Store,
    queue: Mutex<Queue>,
    /// Batches read (each at most two queries).
    batches: Counter,
    /// Reads answered by them.
    reads: Counter,
    /// Reads refused because too many waited.
    refused: Counter,
}

impl Snapshots {
    pub(crate) fn new(store: Store, metrics: &Metrics) -> Arc<Self> {
        Arc::new(Snapshots {
            store,
            queue: Mutex::default(),
            batches: metrics.snapshot_batches.clone(),
            reads: metrics.snapshot_reads.clone(),
            refused: metrics
                .limit_refusals
                .get_or_create(&LimitLabel {
                    limit: "watch_snapshots",
                })
                .clone(),
        })
    }

    /// Reads `read` in the next batch.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED (with when to retry) when too many reads wait or
    /// every pool connection is busy; storage.
    pub(crate) async fn read(self: &Arc<Self>, read: Read) -> Result<Vec<Voice>, Error> {
        let (answer, answered) = oneshot::channel();
        {
            let mut queue = self.queue.lock();
            let keys = read.keys();
            if queue.keys + keys > QUEUED_KEYS {
                self.refused.inc();
                return Err(shed("too many watch streams are opening on this replica"));
            }
            queue.keys += keys;
            queue.waiting.push(Waiting { read, answer });
            if queue.running < RUNNING {
                queue.running += 1;
                tokio::spawn(self.clone().run());
            }
        }
        match answered.await {
            Ok(Ok(voices)) => Ok(voices),
            Ok(Err(e)) => Err(shed_saturated(&self.store, e.into())),
            Err(_) => Err(Error::Unavailable {
                what: "reading watched voices",
                detail: "the batch ended without an answer".into(),
            }),
        }
    }

    /// Reads batches until the queue is empty.
    async fn run(self: Arc<Self>) {
        let mut running = Running(Some(self.clone()));
        let mut first = true;
        loop {
            if !first && self.queue.lock().keys < BATCH_KEYS {
                tokio::time::sleep(LINGER).await;
            }
            first = false;
            let batch = {
                let mut queue = self.queue.lock();
                if queue.waiting.is_empty() {
                    // Under the lock that queues reads, so a read queued
                    // after this look starts a batch of its own.
                    queue.running -= 1;
                    running.0 = None;
                    return;
                }
                take_batch(&mut queue)
            };
            self.batches.inc();
            self.reads.inc_by(batch.len() as u64);
            let answers = self.read_batch(&batch).await;
            for (waiting, answer) in batch.into_iter().zip(answers) {
                // A caller that went away no longer wants its answer.
                let _ = waiting.answer.send(answer);
            }
        }
    }

    /// One answer per read of `batch`, in order, from at most two queries.
    async fn read_batch(&self, batch: &[Waiting]) -> Vec<Answer> {
        let mut ids = Vec::new();
        let mut owners = Vec::new();
        for waiting in batch {
            match &waiting.read {
                Read::Voices(wanted) => ids.extend_from_slice(wanted),
                Read::ProcessingOf(owner) => owners.push(*owner),
            }
        }
        ids.sort_unstable();
        ids.dedup();
        owners.sort_unstable();
        owners.dedup();
        let by_id = self.store.get_many(&ids).await.map(|voices| {
            voices
                .into_iter()
                .map(|v| (v.id, v))
                .collect::<HashMap<_, _>>()
        });
        let processing = self.store.processing_of_many(&owners).await.map(|voices| {
            let mut by_owner: HashMap<Uuid, Vec<Voice>> = HashMap::new();
            for voice in voices {
                by_owner.entry(voice.owner_user_id).or_default().push(voice);
            }
            by_owner
        });
        batch
            .iter()
            .map(|waiting| match &waiting.read {
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
}

/// A running batch task's place: given back if the task panics, so reads
/// queued later still start a batch.
struct Running(Option<Arc<Snapshots>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(snapshots) = self.0.take() {
            snapshots.queue.lock().running -= 1;
        }
    }
}

/// The reads of the next batch: the oldest first, up to [`BATCH_KEYS`]
/// (at least one, however large).
fn take_batch(queue: &mut Queue) -> Vec<Waiting> {
    let mut keys = 0;
    let mut count = 0;
    for waiting in &queue.waiting {
        let more = waiting.read.keys();
        if count > 0 && keys + more > BATCH_KEYS {
            break;
        }
        keys += more;
        count += 1;
    }
    queue.keys -= keys;
    queue.waiting.drain(..count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(read: Read) -> Waiting {
        Waiting {
            read,
            answer: oneshot::channel().0,
        }
    }

    #[tokio::test]
    async fn a_read_past_the_queue_bound_is_shed_with_when_to_come_back() {
        let metrics = Metrics::new();
        let snapshots = Snapshots::new(crate::store::test_store(&metrics).await, &metrics);
        snapshots.queue.lock().keys = QUEUED_KEYS;
        let err = snapshots
            .read(Read::ProcessingOf(Uuid::new_v4()))
            .await
            .unwrap_err();
        let Error::Busy {
            message,
            retry_after,
        } = err
        else {
            panic!("shed: {err:?}")
        };
        assert!(message.contains("too many watch streams"), "{message}");
        assert!((Duration::from_millis(100)..Duration::from_secs(1)).contains(&retry_after));
        assert_eq!(snapshots.refused.get(), 1);
        assert!(snapshots.queue.lock().waiting.is_empty());
    }

    #[test]
    fn a_batch_takes_the_oldest_reads_up_to_its_bound_and_at_least_one() {
        let mut queue = Queue::default();
        let big = Read::Voices((0..BATCH_KEYS + 5).map(|_| Uuid::new_v4()).collect());
        for read in [
            big,
            Read::ProcessingOf(Uuid::new_v4()),
            Read::Voices(vec![Uuid::new_v4(); 600]),
            Read::Voices(vec![Uuid::new_v4(); 600]),
        ] {
            queue.keys += read.keys();
            queue.waiting.push(waiting(read));
        }
        // One read larger than the bound goes alone.
        assert_eq!(take_batch(&mut queue).len(), 1);
        // Then as many as fit: 1 + 600 ids and owners, not 1 + 600 + 600.
        assert_eq!(take_batch(&mut queue).len(), 2);
        assert_eq!((queue.waiting.len(), queue.keys), (1, 600));
        assert_eq!(take_batch(&mut queue).len(), 1);
        assert_eq!((queue.waiting.len(), queue.keys), (0, 0));
    }
}
