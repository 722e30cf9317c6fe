//! `voicehub.v1.VoiceStatusEvent`, written here instead of generated, so a
//! change going to many watchers is encoded once.
//!
//! A change reaches every stream watching its voice: with the generated
//! type each stream owned a copy of the `Voice` (a dozen allocations) and
//! encoded it again. Here a message may carry the voice already encoded
//! ([`EncodedVoice`], shared by reference count), and encoding it is one
//! copy of those bytes behind field 1's key: the same bytes on the wire as
//! the generated encoder writes, so clients see no difference (the unit
//! tests below compare them). Decoding is prost's, into `voice`, as before.
//! `build.rs` maps the proto's type here (`extern_path`); reflection and
//! the contract still come from the proto, and a unit test fails when the
//! proto's message gains or changes a field, so the two cannot drift.

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{self, DecodeContext, WireType},
};

use super::Voice;

/// A `Voice` encoded once, shared by every message that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedVoice(Bytes);

impl EncodedVoice {
    /// Encodes `voice`.
    #[must_use]
    pub fn new(voice: &Voice) -> Self {
        EncodedVoice(voice.encode_to_vec().into())
    }
}

/// One message of WatchVoiceStatus.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VoiceStatusEvent {
    /// The voice as stored after the change.
    pub voice: Option<Voice>,
    /// True for the initial state sent when the stream opens.
    pub snapshot: bool,
    /// When the server sent the event.
    pub emitted_at: Option<prost_types::Timestamp>,
    /// The voice, already encoded; sent in place of `voice` (never both).
    pub(crate) encoded_voice: Option<EncodedVoice>,
}

impl VoiceStatusEvent {
    /// A message whose voice is `voice`, already encoded.
    #[must_use]
    pub fn encoded(
        voice: EncodedVoice,
        snapshot: bool,
        emitted_at: prost_types::Timestamp,
    ) -> Self {
        VoiceStatusEvent {
            voice: None,
            snapshot,
            emitted_at: Some(emitted_at),
            encoded_voice: Some(voice),
        }
    }
}

impl Message for VoiceStatusEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match (&self.encoded_voice, &self.voice) {
            // A length-delimited field either way: key, length, the message's bytes.
            (Some(encoded), _) => encoding::bytes::encode(1, &encoded.0, buf),
            (None, Some(voice)) => encoding::message::encode(1, voice, buf),
            (None, None) => {}
        }
        if self.snapshot {
            encoding::bool::encode(2, &self.snapshot, buf);
        }
        if let Some(at) = &self.emitted_at {
            encoding::message::encode(3, at, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::message::merge(
                wire_type,
                self.voice.get_or_insert_with(Voice::default),
                buf,
                ctx,
            ),
            2 => encoding::bool::merge(wire_type, &mut self.snapshot, buf, ctx),
            3 => encoding::message::merge(
                wire_type,
                self.emitted_at
                    .get_or_insert_with(prost_types::Timestamp::default),
                buf,
                ctx,
            ),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let voice = match (&self.encoded_voice, &self.voice) {
            (Some(encoded), _) => encoding::bytes::encoded_len(1, &encoded.0),
            (None, Some(voice)) => encoding::message::encoded_len(1, voice),
            (None, None) => 0,
        };
        let snapshot = if self.snapshot {
            encoding::bool::encoded_len(2, &self.snapshot)
        } else {
            0
        };
        voice
            + snapshot
            + self
                .emitted_at
                .as_ref()
                .map_or(0, |at| encoding::message::encoded_len(3, at))
    }

    fn clear(&mut self) {
        *self = VoiceStatusEvent::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::VoiceStatus;

    fn voice() -> Voice {
        Voice {
            voice_id: "0b5e55ed-0000-7000-8000-000000000001".into(),
            name: "Ada".into(),
            status: VoiceStatus::Completed.into(),
            labels: [("accent".to_owned(), "british".to_owned())].into(),
            revision: 3,
            ..Voice::default()
        }
    }

    fn at() -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 5,
        }
    }

    #[test]
    fn a_shared_voice_is_sent_as_the_same_bytes_and_read_back_as_the_voice() {
        for snapshot in [false, true] {
            let owned = VoiceStatusEvent {
                voice: Some(voice()),
                snapshot,
                emitted_at: Some(at()),
                encoded_voice: None,
            };
            let shared = VoiceStatusEvent::encoded(EncodedVoice::new(&voice()), snapshot, at());
            let bytes = shared.encode_to_vec();
            assert_eq!(bytes, owned.encode_to_vec());
            assert_eq!(shared.encoded_len(), bytes.len());
            assert_eq!(VoiceStatusEvent::decode(bytes.as_slice()).unwrap(), owned);
        }
    }

    #[test]
    fn the_proto_has_exactly_the_fields_written_here() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let message = set
            .file
            .iter()
            .flat_map(|file| &file.message_type)
            .find(|message| message.name() == "VoiceStatusEvent")
            .unwrap();
        let fields: Vec<(i32, &str)> = message
            .field
            .iter()
            .map(|field| (field.number(), field.name()))
            .collect();
        assert_eq!(
            fields,
            [(1, "voice"), (2, "snapshot"), (3, "emitted_at")],
            "VoiceStatusEvent changed in the proto: pb::status_event must change with it"
        );
    }

    #[test]
    fn fields_this_build_does_not_know_are_skipped_and_an_empty_message_is_empty() {
        let mut bytes =
            VoiceStatusEvent::encoded(EncodedVoice::new(&voice()), true, at()).encode_to_vec();
        // Field 9, a string, from a newer contract.
        encoding::string::encode(9, &"later".to_owned(), &mut bytes);
        let read = VoiceStatusEvent::decode(bytes.as_slice()).unwrap();
        assert_eq!(read.voice, Some(voice()));
        assert!(read.snapshot);
        assert!(VoiceStatusEvent::default().encode_to_vec().is_empty());
        assert!(VoiceStatusEvent::decode([0x0a, 0x05, 0x01].as_slice()).is_err());
    }
}
