//! Opaque page tokens for ListUserVoices (AIP-158).
//!
//! A token is base64url(JSON) holding the keyset position plus the listing it
//! belongs to (caller, scope, status filter). It is opaque to clients, not
//! secret: a forged token can only move the position within a listing the
//! caller is allowed to see anyway, because every query still filters by the
//! authenticated caller. A token presented with another caller, scope or
//! filter is refused rather than silently restarting the listing.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    error::Error,
    store::{Cursor, Scope, VoiceStatus},
};

const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Token {
    v: u8,
    user: Uuid,
    scope: String,
    status: Option<String>,
    at: DateTime<Utc>,
    id: Uuid,
}

/// Identifies one listing: tokens only continue the listing they came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listing {
    pub(crate) user: Uuid,
    pub(crate) scope: Scope,
    pub(crate) status: Option<VoiceStatus>,
}

impl Listing {
    fn scope_name(&self) -> String {
        format!("{:?}", self.scope).to_lowercase()
    }

    fn status_name(&self) -> Option<String> {
        self.status.map(|s| format!("{s:?}").to_lowercase())
    }

    pub(crate) fn encode(&self, cursor: Cursor) -> String {
        let token = Token {
            v: VERSION,
            user: self.user,
            scope: self.scope_name(),
            status: self.status_name(),
            at: cursor.created_at,
            id: cursor.id,
        };
        // Serialising plain owned data to JSON cannot fail.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
    }

    /// The position a `page_token` continues from; `None` for the first page.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `page_token` when it is malformed or belongs to
    /// another listing.
    pub(crate) fn decode(&self, page_token: &str) -> Result<Option<Cursor>, Error> {
        if page_token.is_empty() {
            return Ok(None);
        }
        let token: Token = URL_SAFE_NO_PAD
            .decode(page_token)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(|t: &Token| t.v == VERSION)
            .ok_or_else(|| Error::invalid("page_token", "is malformed"))?;
        if token.user != self.user
            || token.scope != self.scope_name()
            || token.status != self.status_name()
        {
            return Err(Error::invalid(
                "page_token",
                "was issued for another listing (user, scope or status differ)",
            ));
        }
        Ok(Some(Cursor {
            created_at: token.at,
            id: token.id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(scope: Scope, status: Option<VoiceStatus>) -> Listing {
        Listing {
            user: Uuid::nil(),
            scope,
            status,
        }
    }

    #[test]
    fn token_round_trips_its_position() {
        let cursor = Cursor {
            created_at: crate::store::now(),
            id: Uuid::now_v7(),
        };
        let l = listing(Scope::All, Some(VoiceStatus::Completed));
        assert_eq!(l.decode(&l.encode(cursor)).unwrap(), Some(cursor));
        assert_eq!(l.decode("").unwrap(), None);
    }

    #[test]
    fn token_is_refused_for_another_listing() {
        let cursor = Cursor {
            created_at: crate::store::now(),
            id: Uuid::now_v7(),
        };
        let token = listing(Scope::Owned, None).encode(cursor);
        for other in [
            listing(Scope::Public, None),
            listing(Scope::Owned, Some(VoiceStatus::Failed)),
            Listing {
                user: Uuid::max(),
                ..listing(Scope::Owned, None)
            },
        ] {
            assert!(matches!(
                other.decode(&token),
                Err(Error::InvalidArgument { ref field, .. }) if field == "page_token"
            ));
        }
    }
}
