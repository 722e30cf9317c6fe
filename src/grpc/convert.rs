//! Conversions between the wire types (`pb`) and the stored ones.
//!
//! Outbound conversion destructures every stored field, so a new column is a
//! compile error here until it is consciously exposed or skipped. Inbound
//! enum values are checked: an unknown number is INVALID_ARGUMENT naming the
//! field, never silently mapped to a default.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    error::Error,
    pb,
    store::{Scope, Visibility, Voice, VoiceStatus},
};

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        // Always below 1e9 for a valid DateTime, so the cast cannot truncate.
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn status_to_pb(s: VoiceStatus) -> pb::VoiceStatus {
    match s {
        VoiceStatus::Processing => pb::VoiceStatus::Processing,
        VoiceStatus::Completed => pb::VoiceStatus::Completed,
        VoiceStatus::Failed => pb::VoiceStatus::Failed,
        VoiceStatus::Deleted => pb::VoiceStatus::Deleted,
    }
}

pub fn visibility_to_pb(v: Visibility) -> pb::Visibility {
    match v {
        Visibility::Private => pb::Visibility::Private,
        Visibility::Public => pb::Visibility::Public,
    }
}

impl From<Voice> for pb::Voice {
    fn from(v: Voice) -> Self {
        let Voice {
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
            revision,
            created_at,
            updated_at,
            completed_at,
            // Internal bookkeeping, not part of the contract.
            request_id: _,
            deleted_at: _,
            processing_deadline: _,
        } = v;
        pb::Voice {
            voice_id: id.to_string(),
            owner_user_id: owner_user_id.to_string(),
            provider_voice_id: provider_voice_id.unwrap_or_default(),
            name,
            description,
            language,
            gender,
            category,
            visibility: visibility_to_pb(visibility).into(),
            status: status_to_pb(status).into(),
            failure_reason: failure_reason.unwrap_or_default(),
            preview_url: preview_url.unwrap_or_default(),
            labels: labels.0.into_iter().collect(),
            created_at: Some(timestamp(created_at)),
            updated_at: Some(timestamp(updated_at)),
            completed_at: completed_at.map(timestamp),
            revision,
        }
    }
}

/// Parses a voice id from a request field.
///
/// # Errors
/// INVALID_ARGUMENT naming `field` when it is empty or not a UUID.
pub fn parse_voice_id(field: &'static str, value: &str) -> Result<Uuid, Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Uuid::parse_str(value).map_err(|_| Error::invalid(field, "must be a UUID"))
}

/// The listing scope; UNSPECIFIED is OWNED.
///
/// # Errors
/// INVALID_ARGUMENT for a number outside the enum.
pub fn parse_scope(value: i32) -> Result<Scope, Error> {
    match pb::VoiceScope::try_from(value) {
        Ok(pb::VoiceScope::Unspecified | pb::VoiceScope::Owned) => Ok(Scope::Owned),
        Ok(pb::VoiceScope::Public) => Ok(Scope::Public),
        Ok(pb::VoiceScope::All) => Ok(Scope::All),
        Err(_) => Err(Error::invalid(
            "scope",
            format!("unknown VoiceScope value {value}"),
        )),
    }
}

/// The listing status filter; UNSPECIFIED is `None` (all but DELETED).
///
/// # Errors
/// INVALID_ARGUMENT for DELETED (never listed) or a number outside the enum.
pub fn parse_status_filter(value: i32) -> Result<Option<VoiceStatus>, Error> {
    match pb::VoiceStatus::try_from(value) {
        Ok(pb::VoiceStatus::Unspecified) => Ok(None),
        Ok(pb::VoiceStatus::Processing) => Ok(Some(VoiceStatus::Processing)),
        Ok(pb::VoiceStatus::Completed) => Ok(Some(VoiceStatus::Completed)),
        Ok(pb::VoiceStatus::Failed) => Ok(Some(VoiceStatus::Failed)),
        Ok(pb::VoiceStatus::Deleted) => {
            Err(Error::invalid("status", "deleted voices are not listed"))
        }
        Err(_) => Err(Error::invalid(
            "status",
            format!("unknown VoiceStatus value {value}"),
        )),
    }
}
