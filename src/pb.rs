//! The contract, `voicehub.v1`, as generated from `proto/voicehub/v1/voice.proto`
//! (but for `VoiceStatusEvent`, written by hand in [`status_event`] so a
//! change is encoded once for all its watchers), and the one conversion of
//! a stored voice into it.
//!
//! The conversion lives here, beside the generated types, because two layers
//! send voices out: the API (`grpc/`) answers with them and the event bus
//! (`events/`) carries them between replicas. It destructures every stored
//! field, so a new column is a compile error here until it is consciously
//! exposed or kept internal.

use chrono::{DateTime, Utc};

use crate::store::{
    Intake as StoredIntake, Visibility as StoredVisibility, Voice as StoredVoice,
    VoiceStatus as StoredStatus,
};

/// Generated code: documented by the proto's comments, linted by `buf` rather than here.
#[allow(missing_docs, unreachable_pub, unused_qualifications, clippy::pedantic)]
mod generated {
    tonic::include_proto!("voicehub.v1");
}

pub use generated::*;

mod status_event;
pub use status_event::{EncodedVoice, VoiceStatusEvent};

/// The contract's codec: prost, with a small first encode buffer.
///
/// tonic's default codec gives every response stream an 8 KiB buffer for
/// its whole life; a WatchVoiceStatus stream is open for minutes and sends
/// messages of a few hundred bytes, so on a replica with thousands of
/// watchers that buffer was most of a stream's memory. This one starts at
/// 1 KiB and grows like the default when a message needs more (a page of
/// ListUserVoices). Decoding is tonic's default.
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(std::marker::PhantomData<fn() -> (T, U)>);

/// The first encode buffer of every response (see [`Codec`]).
const ENCODE_BUFFER: usize = 1024;
/// tonic's default: encode at most this much before yielding to the runtime.
const YIELD_THRESHOLD: usize = 32 * 1024;

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(tonic::codec::BufferSettings::new(
            ENCODE_BUFFER,
            YIELD_THRESHOLD,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::raw_decoder(tonic::codec::BufferSettings::default())
    }
}

/// The encoded descriptors of the contract, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("voicehub_descriptor");

/// A timestamp on the wire.
#[must_use]
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        // Always below 1e9 for a valid DateTime (2e9 in a leap second), so it fits.
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(i32::MAX),
    }
}

impl From<StoredStatus> for VoiceStatus {
    fn from(s: StoredStatus) -> Self {
        match s {
            StoredStatus::Processing => VoiceStatus::Processing,
            StoredStatus::Completed => VoiceStatus::Completed,
            StoredStatus::Failed => VoiceStatus::Failed,
            StoredStatus::Deleted => VoiceStatus::Deleted,
        }
    }
}

impl From<StoredVisibility> for Visibility {
    fn from(v: StoredVisibility) -> Self {
        match v {
            StoredVisibility::Private => Visibility::Private,
            StoredVisibility::Public => Visibility::Public,
        }
    }
}

impl From<StoredVoice> for Voice {
    fn from(v: StoredVoice) -> Self {
        let StoredVoice {
            id,
            owner_user_id,
            provider_voice_id,
            name,
            description,
            language,
            gender,
            category,
            visibility,
            status,
            failure_reason,
            preview_url,
            labels,
            provider_labels,
            revision,
            created_at,
            updated_at,
            completed_at,
            // Internal bookkeeping, not part of the contract.
            request_id: _,
            deleted_at: _,
            processing_deadline: _,
            push_pending: _,
            push_lease_until: _,
            provider_missing_since: _,
            create_lease_until: _,
            consent_recorded,
        } = v;
        Voice {
            voice_id: id.to_string(),
            owner_user_id: owner_user_id.to_string(),
            provider_voice_id: provider_voice_id.unwrap_or_default(),
            name,
            description,
            language,
            gender,
            category,
            visibility: Visibility::from(visibility).into(),
            status: VoiceStatus::from(status).into(),
            failure_reason: failure_reason.unwrap_or_default(),
            preview_url: preview_url.unwrap_or_default(),
            labels: labels.0.into_iter().collect(),
            provider_labels: provider_labels.0.into_iter().collect(),
            created_at: Some(timestamp(created_at)),
            updated_at: Some(timestamp(updated_at)),
            completed_at: completed_at.map(timestamp),
            revision,
            consent_recorded,
            // The owner's alone: added by `with_intake`.
            consent: None,
            sample_report: None,
        }
    }
}

/// The stored name of each consent basis.
pub(crate) const CONSENT_BASES: [(ConsentBasis, &str); 3] = [
    (ConsentBasis::SpeakerIsCaller, "speaker_is_caller"),
    (ConsentBasis::SpeakerPermission, "speaker_permission"),
    (ConsentBasis::Licensed, "licensed"),
];

/// The consent `intake` records, if it records one.
#[must_use]
pub(crate) fn consent_of(intake: &StoredIntake) -> Option<Consent> {
    let speaker_name = intake.consent_speaker_name.clone()?;
    let basis = CONSENT_BASES
        .iter()
        .find(|(_, name)| Some(*name) == intake.consent_basis.as_deref())
        .map_or(ConsentBasis::Unspecified, |(basis, _)| *basis);
    let statement = match (&intake.consent_statement_text, &intake.consent_statement_id) {
        (Some(text), _) => Some(consent::Statement::StatementText(text.clone())),
        (None, Some(id)) => Some(consent::Statement::StatementRef(ConsentStatementRef {
            id: id.clone(),
            version: intake.consent_statement_version.clone().unwrap_or_default(),
        })),
        (None, None) => None,
    };
    Some(Consent {
        speaker_name,
        basis: basis.into(),
        statement,
        evidence_sha256: intake.consent_evidence_sha256.clone().unwrap_or_default(),
        recorded_at: Some(timestamp(intake.recorded_at)),
    })
}
