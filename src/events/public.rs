//! The public event stream: every stored change, as a CloudEvents 1.0
//! document in JSON, on a Redis stream other services read
//! (`VOICEHUB_EVENTS_STREAM`). `docs/events.md` is its contract.
//!
//! Guarantees:
//! - **At least once.** The relay publishes here before it deletes the
//!   outbox rows; a crash or a refusal in between publishes the change
//!   again, under the same `id`.
//! - **In revision order per voice**, across replicas and restarts: the
//!   relay never publishes a voice's event while an older one of it waits
//!   in the outbox, and the publishing script appends an event only if its
//!   revision is newer than the voice's last one appended (kept beside the
//!   stream as long as the stream keeps entries), so a late duplicate is
//!   dropped instead of arriving after a newer change.
//! - **Retention by time**: each append trims entries older than the
//!   retention (`XADD … MINID ~`), never by count.
//! - **Only what the contract names**: the voice's id, owner, revision,
//!   status, visibility and failure reason. Names, labels and audio stay
//!   behind GetVoice.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};
use fred::{prelude::*, types::scripts::Script};
use serde::Serialize;

use super::{EventSummary, PublishError};
use crate::{pb, store::Change};

/// The stream field that holds the CloudEvents document.
pub const EVENT_FIELD: &str = "event";

/// Appends each event whose revision is newer than its voice's last one.
/// KEYS[1] is the stream; KEYS[1 + i] the last-revision key of event i.
/// ARGV: MINID, the last-revision keys' lifetime in seconds, then per event
/// its revision and its document.
const APPEND: &str = r"
local added = 0
for i = 2, #KEYS do
  local revision = tonumber(ARGV[2 * i - 1])
  local last = tonumber(redis.call('GET', KEYS[i]) or '0')
  if revision > last then
    redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[1], '*', 'event', ARGV[2 * i])
    redis.call('SET', KEYS[i], revision, 'EX', ARGV[2])
    added = added + 1
  end
end
return added
";

/// Where and how the public stream is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicEvents {
    /// The stream's key.
    pub stream: String,
    /// How long entries stay (at least; trimming is approximate).
    pub retention: Duration,
}

/// One change as the public stream and webhooks carry it.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicEvent {
    /// The CloudEvents `id`: the same for every publication of this change.
    pub id: String,
    /// The CloudEvents `type`.
    pub event_type: &'static str,
    /// The voice's revision after the change.
    pub revision: i64,
    /// The CloudEvents document, as JSON text.
    pub document: String,
}

/// The public form of `event`, committed at `time`, from `source`.
#[must_use]
pub fn document(source: &str, event: &EventSummary, time: DateTime<Utc>) -> PublicEvent {
    let status = pb::VoiceStatus::try_from(event.status).unwrap_or_default();
    let visibility = pb::Visibility::try_from(event.visibility).unwrap_or_default();
    let id = format!("{}:{}", event.voice_id, event.revision);
    let event_type = event_type(event.change, status);
    let failed = status == pb::VoiceStatus::Failed;
    // Serialized from borrowed fields: one string, no intermediate tree
    // (the relay makes one per stored change).
    let document = serde_json::to_string(&Envelope {
        specversion: "1.0",
        id: &id,
        source,
        kind: event_type,
        subject: &event.voice_id,
        time: time.to_rfc3339_opts(SecondsFormat::Millis, true),
        datacontenttype: "application/json",
        data: Data {
            voice_id: &event.voice_id,
            user_id: &event.owner.to_string(),
            revision: event.revision,
            status: status.as_str_name(),
            visibility: visibility.as_str_name(),
            failure_reason: failed.then_some(event.failure_reason.as_str()),
        },
    })
    .unwrap_or_default();
    PublicEvent {
        id,
        event_type,
        revision: event.revision,
        document,
    }
}

/// The CloudEvents envelope, in structured mode.
#[derive(Serialize)]
struct Envelope<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    data: Data<'a>,
}

/// `data` of every `voicehub.voice.*.v1` event.
#[derive(Serialize)]
struct Data<'a> {
    voice_id: &'a str,
    user_id: &'a str,
    revision: i64,
    status: &'static str,
    visibility: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<&'a str>,
}

impl PublicEvents {
    /// The key that remembers the last revision of `voice_id` appended:
    /// hash-tagged with the stream's name, so the append script's keys
    /// share the stream's slot on a Redis Cluster (a key without braces
    /// hashes by its whole name).
    fn last_revision_key(&self, voice_id: &str) -> String {
        format!("{{{}}}:revision:{voice_id}", self.stream)
    }
}

/// The CloudEvents `type` of a change. An event of a build that did not
/// say what the change was is named by the status it left.
fn event_type(change: Option<Change>, status: pb::VoiceStatus) -> &'static str {
    let change = change.unwrap_or(match status {
        pb::VoiceStatus::Completed => Change::Completed,
        pb::VoiceStatus::Failed => Change::Failed,
        pb::VoiceStatus::Deleted => Change::Deleted,
        _ => Change::Created,
    });
    match change {
        Change::Created => "voicehub.voice.created.v1",
        Change::Updated => "voicehub.voice.updated.v1",
        Change::Completed => "voicehub.voice.completed.v1",
        Change::Failed => "voicehub.voice.failed.v1",
        Change::Deleted => "voicehub.voice.deleted.v1",
    }
}

/// The public stream in Redis.
pub(crate) struct PublicStream {
    client: Client,
    events: PublicEvents,
    append: Script,
}

impl PublicStream {
    pub(crate) fn new(client: Client, events: PublicEvents) -> Self {
        PublicStream {
            client,
            events,
            append: Script::from_lua(APPEND),
        }
    }

    /// Appends `events` (each with its voice's owner and id) in order, in
    /// one round trip; those not newer than their voice's last are dropped.
    ///
    /// # Errors
    /// Redis did not run the script: none or some were appended, and the
    /// caller publishes them all again.
    pub(crate) async fn publish(
        &self,
        events: &[(uuid::Uuid, String, PublicEvent)],
    ) -> Result<(), PublishError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(events.len() + 1);
        keys.push(self.events.stream.clone());
        let lifetime = self.events.retention.as_secs().max(1);
        let mut args: Vec<Value> = Vec::with_capacity(2 * events.len() + 2);
        args.push(retained_from(SystemTime::now(), self.events.retention).into());
        args.push(i64::try_from(lifetime).unwrap_or(i64::MAX).into());
        for (_, voice_id, event) in events {
            keys.push(self.events.last_revision_key(voice_id));
            args.push(event.revision.into());
            args.push(event.document.as_str().into());
        }
        self.append
            .evalsha_with_reload::<i64, _, _>(&self.client, keys, args)
            .await
            .map(drop)
            .map_err(|e| PublishError(format!("public stream: {e}")))
    }
}

/// The oldest id to keep when appending at `now`: `retention` ago.
fn retained_from(now: SystemTime, retention: Duration) -> String {
    let since = now
        .checked_sub(retention)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    format!("{}-0", since.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::VoiceEvent,
        store::{Visibility, VoiceStatus, test_voice},
    };

    /// The ```json blocks of `docs/events.md`, parsed.
    fn documented() -> Vec<serde_json::Value> {
        let page = include_str!("../../docs/events.md");
        page.split("```json\n")
            .skip(1)
            .map(|block| {
                let json = block.split("```").next().unwrap();
                serde_json::from_str(json).expect("each example is JSON")
            })
            .collect()
    }

    #[test]
    fn revision_keys_share_the_streams_cluster_slot() {
        use fred::util::redis_keyslot;
        let events = PublicEvents {
            stream: "voicehub:voice-events".into(),
            retention: Duration::from_mins(1),
        };
        let stream = redis_keyslot(events.stream.as_bytes());
        for voice in ["01a24dde-9f52-709a-a198-bae76425961e", "another"] {
            assert_eq!(
                redis_keyslot(events.last_revision_key(voice).as_bytes()),
                stream
            );
        }
    }

    #[test]
    fn the_documented_examples_are_what_is_published() {
        let examples = documented();
        assert_eq!(examples.len(), 5, "one example per type");
        for example in examples {
            let data = &example["data"];
            let change = match example["type"].as_str().unwrap() {
                "voicehub.voice.created.v1" => Change::Created,
                "voicehub.voice.updated.v1" => Change::Updated,
                "voicehub.voice.completed.v1" => Change::Completed,
                "voicehub.voice.failed.v1" => Change::Failed,
                "voicehub.voice.deleted.v1" => Change::Deleted,
                other => panic!("an example of an unknown type {other}"),
            };
            let status = match data["status"].as_str().unwrap() {
                "VOICE_STATUS_PROCESSING" => VoiceStatus::Processing,
                "VOICE_STATUS_COMPLETED" => VoiceStatus::Completed,
                "VOICE_STATUS_FAILED" => VoiceStatus::Failed,
                "VOICE_STATUS_DELETED" => VoiceStatus::Deleted,
                other => panic!("an unknown status {other}"),
            };
            let visibility = if data["visibility"] == "VISIBILITY_PUBLIC" {
                Visibility::Public
            } else {
                Visibility::Private
            };
            let owner = data["user_id"].as_str().unwrap().parse().unwrap();
            let mut voice = test_voice(owner, visibility, status);
            voice.id = data["voice_id"].as_str().unwrap().parse().unwrap();
            voice.revision = data["revision"].as_i64().unwrap();
            voice.failure_reason = data["failure_reason"].as_str().map(str::to_owned);
            let time = example["time"].as_str().unwrap().parse().unwrap();
            let encoded = VoiceEvent::stored(&voice, change).encode();
            let summary = EventSummary::decode(&encoded).unwrap();
            let published = document("voicehub", &summary, time);
            let published: serde_json::Value = serde_json::from_str(&published.document).unwrap();
            assert_eq!(published, example, "{}", example["type"]);
        }
    }

    #[test]
    fn an_event_of_a_build_that_did_not_say_what_changed_is_named_by_its_status() {
        let voice = test_voice(
            uuid::Uuid::now_v7(),
            Visibility::Private,
            VoiceStatus::Failed,
        );
        let mut event = VoiceEvent::stored(&voice, Change::Failed);
        event.change = None;
        let summary = EventSummary::decode(&event.encode()).unwrap();
        assert_eq!(summary.change, None);
        assert_eq!(
            event_type(summary.change, pb::VoiceStatus::Failed),
            "voicehub.voice.failed.v1"
        );
        assert_eq!(
            event_type(None, pb::VoiceStatus::Processing),
            "voicehub.voice.created.v1"
        );
    }
}
