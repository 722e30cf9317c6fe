//! The Redis Streams event bus: one stream, `{prefix}:events`, whose entries
//! hold one encoded [`VoiceEvent`] each under the field `v1`.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use fred::{interfaces::EventInterface, prelude::*, types::streams::XReadResponse};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

use super::{EventBus, Hub, PublishError, VoiceEvent, wire::STREAM_FIELD};

/// Entries kept in the stream (approximately): enough for a replica that
/// reconnects after a short outage to catch up.
const MAX_LEN: i64 = 10_000;
/// How long one blocking read waits for new entries. The reader's Redis
/// connection must allow a command this long plus its usual timeout.
pub(crate) const READ_BLOCK: Duration = Duration::from_secs(5);

/// The event bus of replicas that share one Redis and key prefix.
pub(crate) struct RedisBus {
    client: Client,
    stream: String,
    hub: Arc<Hub>,
}

impl RedisBus {
    /// `client` publishes; the reader needs its own connection (see
    /// [`RedisBus::read`]). The hub counts its watch streams and
    /// deliveries in `metrics`.
    #[must_use]
    pub(crate) fn new(client: Client, prefix: &str, metrics: &Metrics) -> Self {
        RedisBus {
            client,
            stream: stream_key(prefix),
            hub: Hub::new(metrics),
        }
    }

    /// Reads the stream into this replica's hub until `shutdown`. `reader`
    /// must be a client of its own: a blocking XREAD holds its connection.
    pub(crate) async fn read(self: Arc<Self>, reader: Client, shutdown: CancellationToken) {
        // Start after the newest entry present now; from then on, resume from
        // the last id seen, across reconnects.
        let mut last = "$".to_owned();
        let mut failing = false;
        // Events may be lost while the reader is away (a Redis restart or
        // flush takes unread entries with it): once it reads again, every
        // watch stream re-reads its voices from storage.
        let mut missed = false;
        let mut reconnects = reader.reconnect_rx();
        loop {
            if last == "$" {
                match reader
                    .xrevrange::<Vec<(String, Value)>, _, _, _>(&self.stream, "+", "-", Some(1))
                    .await
                {
                    Ok(newest) => {
                        last = newest
                            .first()
                            .map_or_else(|| "0-0".to_owned(), |(id, _)| id.clone());
                    }
                    Err(e) => {
                        failing = outage(failing, &e);
                        if sleep_or_stop(&shutdown).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let read = async {
                let reply: Value = reader
                    .xread(
                        Some(100),
                        Some(u64::try_from(READ_BLOCK.as_millis()).unwrap_or(u64::MAX)),
                        self.stream.as_str(),
                        last.as_str(),
                    )
                    .await?;
                // A blocking read that times out answers nil: nothing new, not an error.
                if reply.is_null() {
                    return Ok(XReadResponse::default());
                }
                reply.into_xread_response::<String, String, String, Bytes>()
            };
            let entries = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                entries = read => entries,
            };
            // Reconnected meanwhile (the read itself may have been replayed
            // and succeeded): what was sent while away may be gone.
            while reconnects.try_recv().is_ok() {
                missed = true;
            }
            match entries {
                Ok(streams) => {
                    if failing {
                        tracing::info!("event stream reachable again");
                        failing = false;
                    }
                    if std::mem::take(&mut missed) {
                        self.hub.resync();
                    }
                    for (id, fields) in streams.into_values().flatten() {
                        match fields.get(STREAM_FIELD).map(|b| VoiceEvent::decode(b)) {
                            Some(Ok(event)) => self.hub.dispatch(&Arc::new(event)),
                            Some(Err(e)) => {
                                tracing::warn!(id, error = %e, "skipping an unreadable event");
                            }
                            None => tracing::warn!(
                                id,
                                "skipping an event without a `v1` field (written by a newer build?)"
                            ),
                        }
                        last = id;
                    }
                }
                Err(e) => {
                    failing = outage(failing, &e);
                    missed = true;
                    if sleep_or_stop(&shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}

#[allow(clippy::needless_pass_by_value)] // shaped for `map_err`
fn refused(e: Error) -> PublishError {
    PublishError(e.to_string())
}

/// Logs the first error of an outage at WARN, the rest at DEBUG.
fn outage(failing: bool, e: &Error) -> bool {
    if failing {
        tracing::debug!(error = %e, "event stream still unreachable");
    } else {
        tracing::warn!(error = %e, "event stream unreachable; retrying (logged once per outage)");
    }
    true
}

/// Waits a retry interval; true if shutdown came first.
async fn sleep_or_stop(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(Duration::from_millis(500)) => false,
    }
}

#[async_trait::async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, events: &[Bytes]) -> Result<(), PublishError> {
        if events.is_empty() {
            return Ok(());
        }
        // One pipeline, one round trip, for the relay's whole batch.
        let pipeline = self.client.pipeline();
        // The stored bytes go out as they are: only readers decode them.
        for event in events {
            let entry = (STREAM_FIELD, event.clone());
            pipeline
                .xadd::<(), _, _, _, _>(&self.stream, false, ("MAXLEN", "~", MAX_LEN), "*", entry)
                .await
                .map_err(refused)?;
        }
        let added = pipeline.try_all::<String>().await;
        if added.len() != events.len() {
            return Err(PublishError("the pipeline gave too few answers".into()));
        }
        added
            .into_iter()
            .try_for_each(|added| added.map(drop).map_err(refused))
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

/// The stream every replica under `prefix` publishes to and reads.
#[must_use]
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}:events")
}
