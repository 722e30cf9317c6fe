//! The Redis Streams event bus: one stream, `{prefix}:events`, whose entries
//! hold one encoded [`VoiceEvent`] each under the field `v1`.
//!
//! Retention is by time, not count: each publish trims entries older than
//! [`RETENTION`] (`XADD … MINID ~`), so no burst of events, however large,
//! takes entries a replica has not read within that window.
//!
//! Gaps are detected, not assumed away: after each read the reader asks the
//! stream how many entries were ever added and how many it holds (`XINFO
//! STREAM`, Redis 7). Trimming removes the oldest entries first, so if more
//! were removed than this reader has passed, it missed some (a pause longer
//! than the retention, an `XTRIM`, a stream deleted or recreated), and
//! every watch stream re-reads its voices from storage. A reconnect asks the
//! same. Duplicates are harmless downstream (revisions), losses are not.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use fred::{interfaces::EventInterface, prelude::*, types::streams::XReadResponse};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

use super::{EventBus, Hub, PublishError, VoiceEvent, wire::STREAM_FIELD};

/// How long entries stay in the stream (at least; trimming is approximate):
/// a replica whose reader is away for less misses nothing, and one away for
/// longer notices (see the module's doc) and re-reads storage.
pub(crate) const RETENTION: Duration = Duration::from_mins(10);
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
        let mut cursor: Option<Cursor> = None;
        let mut failing = false;
        // Events may be lost while the reader is away (a Redis restart or
        // flush takes unread entries with it): once it reads again, every
        // watch stream re-reads its voices from storage.
        let mut missed = false;
        let mut reconnects = reader.reconnect_rx();
        loop {
            let position = match &cursor {
                Some(cursor) => cursor.last.clone(),
                None => match self.counts(&reader).await {
                    Ok(counts) => {
                        let start = Cursor::start(&counts);
                        let last = start.last.clone();
                        cursor = Some(start);
                        last
                    }
                    Err(e) => {
                        failing = outage(failing, &e);
                        if sleep_or_stop(&shutdown).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let read = async {
                let reply: Value = reader
                    .xread(
                        Some(100),
                        Some(u64::try_from(READ_BLOCK.as_millis()).unwrap_or(u64::MAX)),
                        self.stream.as_str(),
                        position.as_str(),
                    )
                    .await?;
                // A blocking read that times out answers nil: nothing new, not an error.
                let entries = if reply.is_null() {
                    XReadResponse::default()
                } else {
                    reply.into_xread_response::<String, String, String, Bytes>()?
                };
                Ok::<_, Error>((entries, self.counts(&reader).await?))
            };
            let read = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                read = read => read,
            };
            // Reconnected meanwhile (the read itself may have been replayed
            // and succeeded): what was sent while away may be gone.
            while reconnects.try_recv().is_ok() {
                missed = true;
            }
            match read {
                Ok((streams, counts)) => {
                    if failing {
                        tracing::info!("event stream reachable again");
                        failing = false;
                    }
                    let cursor = cursor.get_or_insert_with(|| Cursor::start(&counts));
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
                        cursor.passed(id);
                    }
                    if cursor.missed_any(&counts) {
                        tracing::warn!(
                            position = cursor.last,
                            added = counts.added,
                            length = counts.length,
                            "events were trimmed from the stream before this replica read them; \
                             watch streams re-read their voices from storage"
                        );
                        missed = true;
                    }
                    if std::mem::take(&mut missed) {
                        self.hub.resync();
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

    /// The stream's counts now (`XINFO STREAM`).
    async fn counts(&self, reader: &Client) -> Result<StreamCounts, Error> {
        match reader
            .xinfo_stream::<HashMap<String, Value>, _>(self.stream.as_str(), false, None)
            .await
        {
            Ok(info) => Ok(StreamCounts::from_info(&info)),
            Err(e) if e.details().contains("no such key") => Ok(StreamCounts::missing()),
            Err(e) => Err(e),
        }
    }
}

/// What `XINFO STREAM` says of the stream's history.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamCounts {
    /// Entries ever added (`entries-added`); `None` before Redis 7.
    added: Option<u64>,
    /// Entries it holds now.
    length: u64,
    /// The id of the newest entry ever added (`0-0` for none).
    last_generated: String,
}

impl StreamCounts {
    /// A stream that does not exist (never made, or deleted).
    fn missing() -> Self {
        StreamCounts {
            added: Some(0),
            length: 0,
            last_generated: "0-0".to_owned(),
        }
    }

    fn from_info(info: &HashMap<String, Value>) -> Self {
        let number = |key: &str| info.get(key).and_then(Value::as_u64);
        StreamCounts {
            added: number("entries-added"),
            length: number("length").unwrap_or_default(),
            last_generated: info
                .get("last-generated-id")
                .and_then(Value::as_string)
                .unwrap_or_else(|| "0-0".to_owned()),
        }
    }

    /// Entries ever removed: trimmed (oldest first) or deleted.
    fn removed(&self) -> Option<u64> {
        self.added.map(|added| added.saturating_sub(self.length))
    }
}

/// Where the reader is: the last id it passed, and how many entries the
/// stream ever held up to there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    last: String,
    /// Entries ever added with an id at or below `last`; `None` when the
    /// stream does not count them (Redis before 7: no gap detection).
    counted: Option<u64>,
}

impl Cursor {
    /// After everything the stream holds now.
    fn start(counts: &StreamCounts) -> Self {
        Cursor {
            last: counts.last_generated.clone(),
            counted: counts.added,
        }
    }

    /// One more entry read.
    fn passed(&mut self, id: String) {
        self.last = id;
        if let Some(counted) = &mut self.counted {
            *counted += 1;
        }
    }

    /// True if entries this reader had not passed were removed, or the
    /// stream was recreated (its count went back); then the cursor counts
    /// every removed entry as passed, so a gap is reported once.
    fn missed_any(&mut self, counts: &StreamCounts) -> bool {
        let (Some(counted), Some(removed), Some(added)) =
            (self.counted, counts.removed(), counts.added)
        else {
            return false;
        };
        if removed > counted || added < counted {
            self.counted = Some(removed);
            return true;
        }
        false
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
        let min_id = retained_from(SystemTime::now());
        // The stored bytes go out as they are: only readers decode them.
        for event in events {
            let entry = (STREAM_FIELD, event.clone());
            pipeline
                .xadd::<(), _, _, _, _>(
                    &self.stream,
                    false,
                    ("MINID", "~", min_id.as_str()),
                    "*",
                    entry,
                )
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

/// The oldest id to keep when publishing at `now`: [`RETENTION`] ago.
fn retained_from(now: SystemTime) -> String {
    let since = now
        .checked_sub(RETENTION)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    format!("{}-0", since.as_millis())
}

/// The stream every replica under `prefix` publishes to and reads.
#[must_use]
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}:events")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(added: u64, length: u64) -> StreamCounts {
        StreamCounts {
            added: Some(added),
            length,
            last_generated: format!("{added}-0"),
        }
    }

    #[test]
    fn a_reader_notices_entries_trimmed_before_it_read_them_once() {
        // 10 entries, all present: start after them.
        let mut cursor = Cursor::start(&counts(10, 10));
        assert_eq!((cursor.last.as_str(), cursor.counted), ("10-0", Some(10)));
        // 5 more added, read; 12 of the 15 trimmed (all 10 it had passed
        // before, and 2 it has just read): nothing it had not passed.
        for id in 11..=15 {
            cursor.passed(format!("{id}-0"));
        }
        assert!(!cursor.missed_any(&counts(15, 3)));
        // 5 more added, and 18 of the 20 trimmed before it read any: 3 it
        // never saw are gone.
        assert!(cursor.missed_any(&counts(20, 2)));
        // Reported once: the next read goes on from there.
        cursor.passed("19-0".into());
        cursor.passed("20-0".into());
        assert!(!cursor.missed_any(&counts(20, 2)));
    }

    #[test]
    fn a_stream_recreated_or_without_counts_is_judged_as_it_can_be() {
        let mut cursor = Cursor::start(&counts(100, 100));
        // Deleted and recreated with 4 entries: the count went back.
        assert!(cursor.missed_any(&counts(4, 4)));
        assert_eq!(cursor.counted, Some(0));
        // A missing stream starts at the beginning; deleting it is noticed.
        let mut empty = Cursor::start(&StreamCounts::missing());
        assert_eq!(empty.last, "0-0");
        assert!(!empty.missed_any(&StreamCounts::missing()));
        // The recreated stream's 4 entries read, then the stream deleted.
        for id in 1..=4 {
            cursor.passed(format!("{id}-1"));
        }
        assert!(cursor.missed_any(&StreamCounts::missing()));
        // Redis before 7 has no entries-added: no judgement, no false alarm.
        let mut old = Cursor::start(&StreamCounts {
            added: None,
            length: 5,
            last_generated: "5-0".into(),
        });
        assert!(!old.missed_any(&StreamCounts {
            added: None,
            length: 0,
            last_generated: "9-0".into(),
        }));
    }

    #[test]
    fn publishing_keeps_the_retention_window() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            retained_from(now),
            format!("{}-0", (1_000_000 - 600) * 1000)
        );
        assert_eq!(retained_from(UNIX_EPOCH), "0-0");
    }
}
