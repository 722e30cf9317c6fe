//! The event as it crosses replicas, and as it is shared inside one.
//!
//! On the wire an event is the protobuf `voicehub.events.v1.VoiceChanged`
//! (`proto/voicehub/events/v1/events.proto`), never a database row: the
//! stored voice is converted to the contract's `voicehub.v1.Voice` once, so
//! internal columns do not travel and a new column changes nothing here.
//! Readers ignore fields they do not know, so replicas of different builds
//! run side by side. Inside a replica the converted event is shared behind
//! an `Arc` by every watch stream, instead of being converted per stream,
//! and its voice is encoded for clients once, by the first stream that
//! sends it ([`VoiceEvent::encoded_voice`]).

use std::sync::OnceLock;

use prost::Message;
use uuid::Uuid;

use crate::{
    pb,
    store::{Change, Visibility, Voice},
};

/// Generated from `events.proto`.
#[allow(missing_docs, unreachable_pub, unused_qualifications, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/voicehub.events.v1.rs"));
}

use generated::{Change as WireChange, VoiceChanged};

/// The Redis Stream field that holds a `v1` event. A breaking change of the
/// message would use a new package and a new field name, which older
/// replicas skip.
pub const STREAM_FIELD: &str = "v1";

/// One stored change of one voice, converted once, with the fields watch
/// streams route and filter by.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceEvent {
    /// The voice's id.
    pub voice_id: Uuid,
    /// Its owner.
    pub owner: Uuid,
    /// Who may see it after this change.
    pub visibility: Visibility,
    /// Its revision after this change; higher is newer.
    pub revision: i64,
    /// The voice as clients receive it.
    pub voice: pb::Voice,
    /// What the change was; `None` in events of builds that did not say.
    pub change: Option<Change>,
    /// `voice` encoded for clients, once.
    pub(crate) encoded: EncodeOnce,
}

/// A cache of a voice's encoding: not part of an event's value, so two
/// events are equal whether or not either was encoded yet.
#[derive(Default, Clone)]
pub(crate) struct EncodeOnce(OnceLock<pb::EncodedVoice>);

impl PartialEq for EncodeOnce {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for EncodeOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncodeOnce")
    }
}

/// Why bytes from the stream are not an event this replica can use.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a `VoiceChanged` message.
    #[error("not a VoiceChanged message: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A required field is missing or malformed.
    #[error("VoiceChanged.{0} is missing or malformed")]
    Field(&'static str),
}

impl VoiceEvent {
    /// The event of a voice as just stored by `change`.
    #[must_use]
    pub fn stored(voice: &Voice, change: Change) -> Self {
        VoiceEvent {
            voice_id: voice.id,
            owner: voice.owner_user_id,
            visibility: voice.visibility,
            revision: voice.revision,
            voice: voice.clone().into(),
            change: Some(change),
            encoded: EncodeOnce::default(),
        }
    }

    /// The voice encoded for clients: encoded by the first caller, shared
    /// by every stream that sends this change.
    #[must_use]
    pub fn encoded_voice(&self) -> pb::EncodedVoice {
        self.encoded
            .0
            .get_or_init(|| pb::EncodedVoice::new(&self.voice))
            .clone()
    }

    /// Whether the voice's status will never change again. A status this
    /// build does not know (from a newer replica) counts as not terminal.
    #[must_use]
    pub fn is_terminal(&self) -> bool {
        // `status()` reads an unknown number as UNSPECIFIED.
        matches!(
            self.voice.status(),
            pb::VoiceStatus::Completed | pb::VoiceStatus::Failed | pb::VoiceStatus::Deleted
        )
    }

    /// The `VoiceChanged` bytes sent to other replicas.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        VoiceChanged {
            voice: Some(self.voice.clone()),
            change: self.change.map_or(WireChange::Unspecified, to_wire) as i32,
        }
        .encode_to_vec()
    }

    /// Reads an event another replica encoded; unknown fields are ignored.
    ///
    /// # Errors
    /// The bytes are not a `VoiceChanged`, or lack the voice's id, owner or revision.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let changed = VoiceChanged::decode(bytes)?;
        let change = from_wire(changed.change());
        let voice = changed.voice.ok_or(DecodeError::Field("voice"))?;
        let voice_id =
            Uuid::parse_str(&voice.voice_id).map_err(|_| DecodeError::Field("voice.voice_id"))?;
        let owner = Uuid::parse_str(&voice.owner_user_id)
            .map_err(|_| DecodeError::Field("voice.owner_user_id"))?;
        if voice.revision < 1 {
            return Err(DecodeError::Field("voice.revision"));
        }
        // An unknown visibility is treated as the narrower one.
        let visibility = match pb::Visibility::try_from(voice.visibility) {
            Ok(pb::Visibility::Public) => Visibility::Public,
            _ => Visibility::Private,
        };
        Ok(VoiceEvent {
            voice_id,
            owner,
            visibility,
            revision: voice.revision,
            voice,
            change,
            encoded: EncodeOnce::default(),
        })
    }
}

/// What the public stream and webhooks need of an event, read without the
/// rest of the voice (names, labels and timestamps are skipped unparsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    /// The voice's id, as the contract spells it.
    pub voice_id: String,
    /// Its owner.
    pub owner: Uuid,
    /// `voicehub.v1.Visibility`, as a number.
    pub visibility: i32,
    /// `voicehub.v1.VoiceStatus`, as a number.
    pub status: i32,
    /// Why it failed, when it did.
    pub failure_reason: String,
    /// Its revision after the change.
    pub revision: i64,
    /// What the change was; `None` in events of builds that did not say.
    pub change: Option<Change>,
}

impl EventSummary {
    /// Reads the summary of an encoded `VoiceChanged`.
    ///
    /// # Errors
    /// The bytes are not a `VoiceChanged`, or lack the voice's id, owner or revision.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let changed = ChangedSummary::decode(bytes)?;
        let change = from_wire(WireChange::try_from(changed.change).unwrap_or_default());
        let voice = changed.voice.ok_or(DecodeError::Field("voice"))?;
        let owner = Uuid::parse_str(&voice.owner_user_id)
            .map_err(|_| DecodeError::Field("voice.owner_user_id"))?;
        if voice.voice_id.is_empty() {
            return Err(DecodeError::Field("voice.voice_id"));
        }
        if voice.revision < 1 {
            return Err(DecodeError::Field("voice.revision"));
        }
        Ok(EventSummary {
            voice_id: voice.voice_id,
            owner,
            visibility: voice.visibility,
            status: voice.status,
            failure_reason: voice.failure_reason,
            revision: voice.revision,
            change,
        })
    }
}

/// `VoiceChanged` with only the fields [`EventSummary`] needs.
#[derive(Clone, PartialEq, prost::Message)]
struct ChangedSummary {
    #[prost(message, optional, tag = "1")]
    voice: Option<VoiceSummary>,
    #[prost(int32, tag = "2")]
    change: i32,
}

/// `voicehub.v1.Voice` with only the fields [`EventSummary`] needs.
#[derive(Clone, PartialEq, prost::Message)]
struct VoiceSummary {
    #[prost(string, tag = "1")]
    voice_id: String,
    #[prost(string, tag = "2")]
    owner_user_id: String,
    #[prost(int32, tag = "9")]
    visibility: i32,
    #[prost(int32, tag = "10")]
    status: i32,
    #[prost(string, tag = "11")]
    failure_reason: String,
    #[prost(int64, tag = "17")]
    revision: i64,
}

fn to_wire(change: Change) -> WireChange {
    match change {
        Change::Created => WireChange::Created,
        Change::Updated => WireChange::Updated,
        Change::Completed => WireChange::Completed,
        Change::Failed => WireChange::Failed,
        Change::Deleted => WireChange::Deleted,
    }
}

/// A number this build does not know reads as UNSPECIFIED, that is `None`.
fn from_wire(change: WireChange) -> Option<Change> {
    match change {
        WireChange::Unspecified => None,
        WireChange::Created => Some(Change::Created),
        WireChange::Updated => Some(Change::Updated),
        WireChange::Completed => Some(Change::Completed),
        WireChange::Failed => Some(Change::Failed),
        WireChange::Deleted => Some(Change::Deleted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{VoiceStatus, test_voice};

    fn stored() -> Voice {
        Voice {
            request_id: Some("internal-request-id".into()),
            revision: 3,
            ..test_voice(Uuid::now_v7(), Visibility::Public, VoiceStatus::Completed)
        }
    }

    #[test]
    fn an_event_round_trips_and_carries_no_internal_field() {
        let event = VoiceEvent::stored(&stored(), Change::Completed);
        let bytes = event.encode();
        assert_eq!(VoiceEvent::decode(&bytes).unwrap(), event);
        assert!(event.is_terminal());
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("internal-request-id"),
            "request_id stays home"
        );
    }

    /// `VoiceChanged` as an older build knew it: its voice without labels
    /// and preview_url (fields 12 and 13).
    #[derive(Clone, PartialEq, prost::Message)]
    struct OldVoiceChanged {
        #[prost(message, optional, tag = "1")]
        voice: Option<OldVoice>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct OldVoice {
        #[prost(string, tag = "1")]
        voice_id: String,
        #[prost(string, tag = "2")]
        owner_user_id: String,
        #[prost(int32, tag = "9")]
        visibility: i32,
        #[prost(int32, tag = "10")]
        status: i32,
        #[prost(int64, tag = "17")]
        revision: i64,
    }

    #[test]
    fn an_older_decoder_reads_what_it_knows_of_a_newer_event() {
        let event = VoiceEvent::stored(&stored(), Change::Completed);
        let old = OldVoiceChanged::decode(event.encode().as_slice())
            .unwrap()
            .voice
            .unwrap();
        assert_eq!(old.voice_id, event.voice_id.to_string());
        assert_eq!(old.owner_user_id, event.owner.to_string());
        assert_eq!(old.revision, 3);
        assert_eq!(old.status, pb::VoiceStatus::Completed as i32);
        assert_eq!(old.visibility, pb::Visibility::Public as i32);
    }

    #[test]
    fn a_newer_event_with_an_unknown_field_decodes() {
        let event = VoiceEvent::stored(&stored(), Change::Completed);
        let mut bytes = event.encode();
        // Field 15, length-delimited: a field this build does not know.
        bytes.extend_from_slice(&[15 << 3 | 2, 5]);
        bytes.extend_from_slice(b"later");
        assert_eq!(VoiceEvent::decode(&bytes).unwrap(), event);
    }

    #[test]
    fn bytes_that_are_not_an_event_are_refused() {
        assert!(VoiceEvent::decode(b"\x0a\x02\x08").is_err());
        assert!(matches!(
            VoiceEvent::decode(&[]),
            Err(DecodeError::Field("voice"))
        ));
    }
}
