//! The in-process due-queue: a `BTreeSet` ordered by due time plus a
//! `Notify`, for the single-replica embedded default. It lives and dies with
//! the process; start-up reconciliation refills it from storage.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use parking_lot::{Mutex, MutexGuard};
use prometheus_client::metrics::counter::Counter;
use tokio::{sync::Notify, time::Instant};
use uuid::Uuid;

use super::queue::{Claim, Coordination, DueQueue, QueueError};

#[derive(Default)]
struct Entries {
    by_due: BTreeSet<(Instant, Uuid)>,
    due_of: HashMap<Uuid, Instant>,
}

impl Entries {
    fn set(&mut self, id: Uuid, due: Instant) {
        if let Some(old) = self.due_of.insert(id, due) {
            self.by_due.remove(&(old, id));
        }
        self.by_due.insert((due, id));
    }

    fn remove(&mut self, id: Uuid) {
        if let Some(old) = self.due_of.remove(&id) {
            self.by_due.remove(&(old, id));
        }
    }
}

/// The due-queue of a single replica without Redis.
pub(crate) struct LocalQueue {
    entries: Mutex<Entries>,
    marks: Mutex<HashSet<String>>,
    wakeup: Arc<Notify>,
    round_trips: Counter,
}

impl LocalQueue {
    /// An empty queue; every access counts as a round trip in `round_trips`.
    #[must_use]
    pub(crate) fn new(round_trips: Counter) -> Self {
        LocalQueue {
            entries: Mutex::default(),
            marks: Mutex::default(),
            wakeup: Arc::default(),
            round_trips,
        }
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        self.round_trips.inc();
        self.entries.lock()
    }
}

#[async_trait::async_trait]
impl Coordination for LocalQueue {
    async fn try_lease(&self, _name: &str, _ttl: Duration) -> Result<bool, QueueError> {
        // One process holds this queue: it is the only replica.
        Ok(true)
    }

    async fn mark(&self, name: &str) -> Result<(), QueueError> {
        self.round_trips.inc();
        self.marks.lock().insert(name.to_owned());
        Ok(())
    }

    async fn take_mark(&self, name: &str) -> Result<bool, QueueError> {
        self.round_trips.inc();
        Ok(self.marks.lock().remove(name))
    }
}

#[async_trait::async_trait]
impl DueQueue for LocalQueue {
    async fn enqueue(&self, id: Uuid, delay: Duration) -> Result<(), QueueError> {
        self.entries().set(id, Instant::now() + delay);
        self.wakeup.notify_one();
        Ok(())
    }

    async fn claim(&self, max: usize, lease: Duration) -> Result<Claim, QueueError> {
        let now = Instant::now();
        let mut entries = self.entries();
        let ids: Vec<Uuid> = entries
            .by_due
            .iter()
            .take_while(|(due, _)| *due <= now)
            .take(max)
            .map(|(_, id)| *id)
            .collect();
        for id in &ids {
            entries.set(*id, now + lease);
        }
        let next_due = entries
            .by_due
            .first()
            .map(|(due, _)| due.saturating_duration_since(now));
        let queued = entries.by_due.len();
        Ok(Claim::Claimed {
            ids,
            next_due,
            queued,
        })
    }

    async fn reschedule(&self, due: &[(Uuid, Duration)]) -> Result<(), QueueError> {
        if due.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let mut entries = self.entries();
        for (id, delay) in due {
            if entries.due_of.contains_key(id) {
                entries.set(*id, now + *delay);
            }
        }
        Ok(())
    }

    async fn finish(&self, ids: &[Uuid]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut entries = self.entries();
        for id in ids {
            entries.remove(*id);
        }
        Ok(())
    }

    async fn restore(&self, ids: &[Uuid]) -> Result<(), QueueError> {
        let now = Instant::now();
        let mut entries = self.entries();
        for id in ids {
            if !entries.due_of.contains_key(id) {
                entries.set(*id, now);
            }
        }
        drop(entries);
        self.wakeup.notify_one();
        Ok(())
    }

    fn wakeup(&self) -> Arc<Notify> {
        self.wakeup.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn claims_lease_and_expired_leases_come_back() {
        let queue = LocalQueue::new(Counter::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        queue.enqueue(a, Duration::ZERO).await.unwrap();
        queue.enqueue(b, Duration::from_secs(5)).await.unwrap();
        let lease = Duration::from_secs(30);
        assert_eq!(
            queue.claim(10, lease).await.unwrap(),
            Claim::Claimed {
                ids: vec![a],
                next_due: Some(Duration::from_secs(5)),
                queued: 2,
            }
        );
        // Leased: not claimable again until the lease ends.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            queue.claim(10, lease).await.unwrap(),
            Claim::Claimed {
                ids: vec![b],
                next_due: Some(Duration::from_secs(24)),
                queued: 2,
            }
        );
        tokio::time::advance(Duration::from_secs(25)).await;
        let Claim::Claimed { ids, .. } = queue.claim(10, lease).await.unwrap() else {
            panic!()
        };
        assert_eq!(ids, vec![a], "the expired lease made it due again");
        queue.finish(&[a, b]).await.unwrap();
        assert_eq!(
            queue.claim(10, lease).await.unwrap(),
            Claim::Claimed {
                ids: vec![],
                next_due: None,
                queued: 0,
            }
        );
        queue.reschedule(&[(a, Duration::ZERO)]).await.unwrap();
        assert_eq!(
            queue.claim(10, lease).await.unwrap(),
            Claim::Claimed {
                ids: vec![],
                next_due: None,
                queued: 0,
            },
            "finished stays finished"
        );
    }
}
