//! The Redis due-queue: a sorted set scored by due time (milliseconds on the
//! Redis server's clock), a marker key, and a pub/sub channel for wake-ups.
//!
//! - Claiming is one Lua script: it checks the marker, takes up to N due ids,
//!   re-scores them to now + lease and returns how long until the next entry
//!   is due and how many entries there are — one round trip per worker
//!   wake-up, whatever it finds.
//! - The sorted set has no TTL: a quiet period must not drop pending voices.
//! - The marker is set when the queue is (re)built from storage. Redis losing
//!   its data loses the marker too, which the next claim reports, so the
//!   queue is rebuilt and no voice stays PROCESSING for ever.
//! - Wake-ups are at-most-once pub/sub messages; a lost one only delays a
//!   check until the worker's next timed wake-up.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use fred::{clients::SubscriberClient, prelude::*, types::scripts::Script};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::queue::{Claim, Coordination, DueQueue, QueueError};

/// Milliseconds now on the Redis server's clock.
const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

const CLAIM: &str = "if redis.call('EXISTS', KEYS[2]) == 0 then return {-2} end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), id) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if #first > 0 then wait = math.max(0, tonumber(first[2]) - now) end
table.insert(ids, 1, redis.call('ZCARD', KEYS[1]))
table.insert(ids, 1, wait)
return ids";

const ENQUEUE: &str = "redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PUBLISH', ARGV[3], 'due')
return 1";

const RESCHEDULE: &str = "for i = 1, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[i]), ARGV[i + 1])
end
return #ARGV";

const RESTORE: &str = "for i = 1, #ARGV do redis.call('ZADD', KEYS[1], 'NX', now, ARGV[i]) end
redis.call('SET', KEYS[2], '1')
return #ARGV";

/// Ids restored per script call, so one call never blocks Redis for long.
const RESTORE_CHUNK: usize = 1_000;

fn script(body: &str) -> Script {
    Script::from_lua(format!("{NOW}{body}"))
}

/// The due-queue shared by every replica on one Redis and key prefix.
pub struct RedisQueue {
    client: Client,
    queue_key: String,
    marker_key: String,
    channel: String,
    claim: Script,
    enqueue: Script,
    reschedule: Script,
    restore: Script,
    wakeup: Arc<Notify>,
    round_trips: Counter,
    /// Set at each reconnection or cluster change (see `notice_reconnects`).
    reconnected: Arc<AtomicBool>,
}

#[allow(clippy::needless_pass_by_value)] // shaped for `map_err`
fn err(e: Error) -> QueueError {
    QueueError(e.to_string())
}

impl RedisQueue {
    /// A queue under `prefix`, sending commands through `client` and
    /// counting them in `round_trips`.
    #[must_use]
    pub fn new(client: Client, prefix: &str, round_trips: Counter) -> Self {
        RedisQueue {
            client,
            queue_key: format!("{prefix}:sync:due"),
            // Hash-tagged with the queue's name: the scripts that use both
            // keys run on a Redis Cluster only when they share a slot (a
            // key without braces hashes by its whole name).
            marker_key: format!("{{{prefix}:sync:due}}:marker"),
            channel: format!("{prefix}:sync:wake"),
            claim: script(CLAIM),
            enqueue: script(ENQUEUE),
            reschedule: script(RESCHEDULE),
            restore: script(RESTORE),
            wakeup: Arc::new(Notify::new()),
            round_trips,
            reconnected: Arc::default(),
        }
    }

    /// From now on, notes each reconnection of the command connection and
    /// each change of the cluster's layout (a failover), for
    /// [`DueQueue::take_reconnected`]. Needs a Tokio runtime.
    pub fn notice_reconnects(&self) {
        let flag = self.reconnected.clone();
        self.client.on_reconnect(move |_| {
            flag.store(true, Ordering::Relaxed);
            std::future::ready(Ok(()))
        });
        let flag = self.reconnected.clone();
        self.client.on_cluster_change(move |_| {
            flag.store(true, Ordering::Relaxed);
            std::future::ready(Ok(()))
        });
    }

    /// Forwards wake-ups published by any replica to this replica's worker
    /// until `shutdown`. The subscriber re-subscribes after reconnects.
    pub async fn listen(&self, subscriber: SubscriberClient, shutdown: CancellationToken) {
        let _resubscribe = subscriber.manage_subscriptions();
        let mut messages = subscriber.message_rx();
        if let Err(e) = subscriber.subscribe(self.channel.as_str()).await {
            tracing::warn!(error = %e, "cannot subscribe to sync wake-ups yet; the subscriber retries after reconnecting");
        }
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                message = messages.recv() => match message {
                    // Lagged: wake-ups were dropped, which only means "work is due".
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.wakeup.notify_one(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    async fn eval<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<&str>,
        args: Vec<Value>,
    ) -> Result<R, QueueError> {
        self.round_trips.inc();
        script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(err)
    }
}

fn millis(d: Duration) -> Value {
    Value::Integer(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait::async_trait]
impl Coordination for RedisQueue {
    async fn try_lease(&self, name: &str, ttl: Duration) -> Result<bool, QueueError> {
        self.round_trips.inc();
        let key = format!("{}:lease:{name}", self.queue_key);
        let taken: Option<String> = self
            .client
            .set(
                key,
                Uuid::new_v4().to_string(),
                Some(Expiration::PX(
                    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
                )),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(err)?;
        Ok(taken.is_some())
    }

    async fn mark(&self, name: &str) -> Result<(), QueueError> {
        self.round_trips.inc();
        let key = format!("{}:mark:{name}", self.queue_key);
        self.client
            .set::<(), _, _>(key, 1, None, None, false)
            .await
            .map_err(err)
    }

    async fn take_mark(&self, name: &str) -> Result<bool, QueueError> {
        self.round_trips.inc();
        let key = format!("{}:mark:{name}", self.queue_key);
        let removed: i64 = self.client.del(key).await.map_err(err)?;
        Ok(removed > 0)
    }
}

#[async_trait::async_trait]
impl DueQueue for RedisQueue {
    async fn enqueue(&self, id: Uuid, delay: Duration) -> Result<(), QueueError> {
        // Creates and updates enqueue while their caller waits: while Redis
        // is away, fail at once (reconciliation queues the voice later)
        // instead of holding the caller for the command timeout.
        if !self.client.is_connected() {
            return Err(QueueError("Redis is not connected".into()));
        }
        let args = vec![
            millis(delay),
            id.to_string().into(),
            self.channel.as_str().into(),
        ];
        let _: i64 = self
            .eval(&self.enqueue, vec![&self.queue_key], args)
            .await?;
        // This replica's worker need not wait for the round trip through pub/sub.
        self.wakeup.notify_one();
        Ok(())
    }

    async fn claim(&self, max: usize, lease: Duration) -> Result<Claim, QueueError> {
        let args = vec![
            Value::Integer(i64::try_from(max).unwrap_or(i64::MAX)),
            millis(lease),
        ];
        let reply: Vec<Value> = self
            .eval(&self.claim, vec![&self.queue_key, &self.marker_key], args)
            .await?;
        let mut reply = reply.into_iter();
        let wait = reply.next().and_then(|v| v.as_i64()).unwrap_or(-1);
        if wait == -2 {
            return Ok(Claim::Lost);
        }
        let queued = reply
            .next()
            .and_then(|v| v.as_u64())
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or_default();
        let ids = reply
            .filter_map(|v| v.as_string().and_then(|s| Uuid::parse_str(&s).ok()))
            .collect();
        let next_due = u64::try_from(wait).ok().map(Duration::from_millis);
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
        let args = due
            .iter()
            .flat_map(|(id, delay)| [millis(*delay), id.to_string().into()])
            .collect();
        let _: i64 = self
            .eval(&self.reschedule, vec![&self.queue_key], args)
            .await?;
        Ok(())
    }

    async fn finish(&self, ids: &[Uuid]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.round_trips.inc();
        let members: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let _: i64 = self
            .client
            .zrem(&self.queue_key, members)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn restore(&self, ids: &[Uuid]) -> Result<(), QueueError> {
        let keys = || vec![self.queue_key.as_str(), self.marker_key.as_str()];
        if ids.is_empty() {
            let _: i64 = self.eval(&self.restore, keys(), Vec::new()).await?;
        }
        // The marker is (re)set with every chunk; a restore cut short is
        // completed by the next periodic reconciliation.
        for chunk in ids.chunks(RESTORE_CHUNK) {
            let args = chunk.iter().map(|id| Value::from(id.to_string())).collect();
            let _: i64 = self.eval(&self.restore, keys(), args).await?;
        }
        self.wakeup.notify_one();
        Ok(())
    }

    fn wakeup(&self) -> Arc<Notify> {
        self.wakeup.clone()
    }

    fn take_reconnected(&self) -> bool {
        self.reconnected.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod slot_tests {
    use fred::util::redis_keyslot;

    #[test]
    fn the_keys_a_script_uses_together_share_a_cluster_slot() {
        let queue = super::RedisQueue::new(
            fred::prelude::Builder::default_centralized()
                .build()
                .unwrap(),
            "voicehub",
            prometheus_client::metrics::counter::Counter::default(),
        );
        assert_eq!(
            queue.queue_key, "voicehub:sync:due",
            "the queue keeps its name"
        );
        assert_eq!(
            redis_keyslot(queue.queue_key.as_bytes()),
            redis_keyslot(queue.marker_key.as_bytes())
        );
    }
}
