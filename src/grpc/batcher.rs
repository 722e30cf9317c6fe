//! Reads that arrive together share queries: the one mechanism behind
//! watch streams' snapshots ([`super::snapshots`]) and GetVoice
//! ([`super::lookups`]). What is read, and how, is a [`Reads`]; how many
//! batches run and how long reads gather is its [`Pace`].
//!
//! - A read joins the queue and, if fewer than `running` batches run,
//!   starts one at once: a lone read on a quiet replica waits for nothing.
//!   A running batch takes everything queued (up to `batch_keys` ids and
//!   owners), answers each read, and takes the next while reads keep
//!   coming, after letting them gather for `linger` (none for GetVoice:
//!   reads queue behind the running batch anyway).
//! - Bounded: at most `queued_keys` wait; a read past it is shed with
//!   RESOURCE_EXHAUSTED and a RetryInfo, as is a read whose batch timed out
//!   waiting for a pool connection while the database answered (every
//!   connection busy). A database that does not answer is UNAVAILABLE, as
//!   everywhere.
//! - A batch runs on as a task of its own, so a caller that goes away does
//!   not cancel the others' reads; a batch task that panics gives its place
//!   back, so later reads still start one.

use std::{future::Future, sync::Arc, time::Duration};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use sea_orm::DbErr;
use tokio::sync::oneshot;

use super::{shed, shed_saturated};
use crate::{error::Error, store::Store};

/// What a batcher reads, and how one batch of reads is answered.
pub(crate) trait Reads: Send + Sync + 'static {
    /// One caller's read.
    type Read: Send + Sync + 'static;
    /// Its answer.
    type Answer: Send + 'static;
    /// The ids and owners `read` asks for: its weight against the bounds.
    fn keys(read: &Self::Read) -> usize;
    /// One answer per read of `batch`, in order.
    fn answer(
        &self,
        store: &Store,
        batch: &[&Self::Read],
    ) -> impl Future<Output = Vec<Result<Self::Answer, DbErr>>> + Send;
}

/// How a batcher paces its batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// Batches that run at once.
    pub(crate) running: usize,
    /// How long reads gather between a running batch's queries.
    pub(crate) linger: Duration,
    /// The most ids and owners one batch reads.
    pub(crate) batch_keys: usize,
    /// The most ids and owners waiting; past it reads are shed.
    pub(crate) queued_keys: usize,
}

/// What the batcher counts, and what a shed read is told.
pub(crate) struct Counters {
    /// Batches read.
    pub(crate) batches: Counter,
    /// Reads answered by them.
    pub(crate) reads: Counter,
    /// Reads refused because too many waited.
    pub(crate) refused: Counter,
    /// The message of a read shed past the queue's bound.
    pub(crate) busy: &'static str,
}

struct Waiting<R: Reads> {
    read: R::Read,
    answer: oneshot::Sender<Result<R::Answer, DbErr>>,
}

struct Queue<R: Reads> {
    waiting: Vec<Waiting<R>>,
    /// Ids and owners in `waiting`.
    keys: usize,
    running: usize,
}

/// Shared reads of one replica (see the module's doc).
pub(crate) struct Batcher<R: Reads> {
    reads: R,
    store: Store,
    pace: Pace,
    counters: Counters,
    queue: Mutex<Queue<R>>,
}

impl<R: Reads> Batcher<R> {
    pub(crate) fn new(reads: R, store: Store, pace: Pace, counters: Counters) -> Arc<Self> {
        Arc::new(Batcher {
            reads,
            store,
            pace,
            counters,
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                keys: 0,
                running: 0,
            }),
        })
    }

    /// Reads `read` in the next batch.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED (with when to retry) when too many reads wait or
    /// every pool connection is busy; storage.
    pub(crate) async fn read(self: &Arc<Self>, read: R::Read) -> Result<R::Answer, Error> {
        let (answer, answered) = oneshot::channel();
        {
            let mut queue = self.queue.lock();
            let keys = R::keys(&read);
            if queue.keys + keys > self.pace.queued_keys {
                self.counters.refused.inc();
                return Err(shed(self.counters.busy));
            }
            queue.keys += keys;
            queue.waiting.push(Waiting { read, answer });
            if queue.running < self.pace.running {
                queue.running += 1;
                tokio::spawn(self.clone().run());
            }
        }
        match answered.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(shed_saturated(&self.store, e.into())),
            Err(_) => Err(Error::Unavailable {
                what: "reading voices",
                detail: "the batch ended without an answer".into(),
            }),
        }
    }

    /// Reads batches until the queue is empty.
    async fn run(self: Arc<Self>) {
        let mut running = Running(Some(self.clone()));
        let mut first = true;
        loop {
            if !first
                && !self.pace.linger.is_zero()
                && self.queue.lock().keys < self.pace.batch_keys
            {
                tokio::time::sleep(self.pace.linger).await;
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
                take_batch(&mut queue, self.pace.batch_keys)
            };
            self.counters.batches.inc();
            self.counters.reads.inc_by(batch.len() as u64);
            let reads: Vec<&R::Read> = batch.iter().map(|w| &w.read).collect();
            let answers = self.reads.answer(&self.store, &reads).await;
            drop(reads);
            for (waiting, answer) in batch.into_iter().zip(answers) {
                // A caller that went away no longer wants its answer.
                let _ = waiting.answer.send(answer);
            }
        }
    }
}

/// A running batch task's place: given back if the task panics, so reads
/// queued later still start a batch.
struct Running<R: Reads>(Option<Arc<Batcher<R>>>);

impl<R: Reads> Drop for Running<R> {
    fn drop(&mut self) {
        if let Some(batcher) = self.0.take() {
            batcher.queue.lock().running -= 1;
        }
    }
}

/// The reads of the next batch: the oldest first, up to `bound` ids and
/// owners (at least one read, however large).
fn take_batch<R: Reads>(queue: &mut Queue<R>, bound: usize) -> Vec<Waiting<R>> {
    let mut keys = 0;
    let mut count = 0;
    for waiting in &queue.waiting {
        let more = R::keys(&waiting.read);
        if count > 0 && keys + more > bound {
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
    use crate::metrics::Metrics;

    /// Reads of `n` keys, answered with their size.
    struct Sizes;

    impl Reads for Sizes {
        type Read = usize;
        type Answer = usize;
        fn keys(read: &usize) -> usize {
            *read
        }
        async fn answer(&self, _: &Store, batch: &[&usize]) -> Vec<Result<usize, DbErr>> {
            batch.iter().map(|n| Ok(**n)).collect()
        }
    }

    const PACE: Pace = Pace {
        running: 1,
        linger: Duration::ZERO,
        batch_keys: 1_000,
        queued_keys: 5_000,
    };

    fn counters() -> Counters {
        Counters {
            batches: Counter::default(),
            reads: Counter::default(),
            refused: Counter::default(),
            busy: "too many reads are waiting",
        }
    }

    fn waiting(read: usize) -> Waiting<Sizes> {
        Waiting {
            read,
            answer: oneshot::channel().0,
        }
    }

    #[tokio::test]
    async fn a_read_past_the_queue_bound_is_shed_with_when_to_come_back() {
        let store = crate::store::test_store(&Metrics::new()).await;
        let batcher = Batcher::new(Sizes, store, PACE, counters());
        batcher.queue.lock().keys = PACE.queued_keys;
        let err = batcher.read(1).await.unwrap_err();
        let Error::Busy {
            message,
            retry_after,
        } = err
        else {
            panic!("shed: {err:?}")
        };
        assert!(
            message.starts_with("too many reads are waiting"),
            "{message}"
        );
        assert!((Duration::from_millis(100)..Duration::from_secs(1)).contains(&retry_after));
        assert_eq!(batcher.counters.refused.get(), 1);
        assert!(batcher.queue.lock().waiting.is_empty());
        // Below the bound, a lone read is answered by a batch of its own.
        batcher.queue.lock().keys = 0;
        assert_eq!(batcher.read(7).await.unwrap(), 7);
        assert_eq!(batcher.counters.batches.get(), 1);
        assert_eq!(batcher.queue.lock().running, 0);
    }

    #[test]
    fn a_batch_takes_the_oldest_reads_up_to_its_bound_and_at_least_one() {
        let mut queue = Queue::<Sizes> {
            waiting: Vec::new(),
            keys: 0,
            running: 0,
        };
        for read in [1_005, 1, 600, 600] {
            queue.keys += read;
            queue.waiting.push(waiting(read));
        }
        // One read larger than the bound goes alone.
        assert_eq!(take_batch(&mut queue, 1_000).len(), 1);
        // Then as many as fit: 1 + 600 ids and owners, not 1 + 600 + 600.
        assert_eq!(take_batch(&mut queue, 1_000).len(), 2);
        assert_eq!((queue.waiting.len(), queue.keys), (1, 600));
        assert_eq!(take_batch(&mut queue, 1_000).len(), 1);
        assert_eq!((queue.waiting.len(), queue.keys), (0, 0));
    }
}
