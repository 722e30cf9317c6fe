//! Webhooks: a user's endpoints that receive the events of that user's
//! voices, as the public stream carries them (`docs/webhooks.md`).
//!
//! This module holds what endpoints are allowed to be (`address.rs`: only
//! https URLs of public hosts, never an address inside the network voicehub
//! runs in), their signing secrets and signatures (`signing.rs`), and the
//! deliverer that sends what the relay queued (`delivery.rs`). Endpoints and
//! deliveries are stored by `store`; endpoints are managed through
//! `grpc::webhooks`.

mod address;
mod delivery;
mod signing;

use std::time::Duration;

use base64::Engine;

pub use address::{MAX_URL_CHARS, UrlRefused, check_url, is_public};
pub use delivery::{Deliverer, IDLE_CHECK};
pub use signing::{sign, signature_header};

/// The event types an endpoint may ask for (`docs/events.md`).
pub const EVENT_TYPES: [&str; 5] = [
    "voicehub.voice.created.v1",
    "voicehub.voice.updated.v1",
    "voicehub.voice.completed.v1",
    "voicehub.voice.failed.v1",
    "voicehub.voice.deleted.v1",
];

/// The type of the event SendTestWebhook sends.
pub const TEST_EVENT_TYPE: &str = "voicehub.webhook.test.v1";

/// A test event for endpoint `endpoint_id`, from `source`: its id and its
/// CloudEvents document.
#[must_use]
pub fn test_event(source: &str, endpoint_id: uuid::Uuid) -> (String, String) {
    let id = format!("test:{}", uuid::Uuid::now_v7());
    let document = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": TEST_EVENT_TYPE,
        "subject": endpoint_id.to_string(),
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "datacontenttype": "application/json",
        "data": { "endpoint_id": endpoint_id.to_string() },
    });
    (id, document.to_string())
}

/// Random bytes in a signing secret (Standard Webhooks asks for 24 to 64).
const SECRET_BYTES: usize = 32;

/// How webhooks may be used on this installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Lets endpoints be http, and private or loopback addresses: for
    /// development and tests only.
    pub allow_private: bool,
    /// Most endpoints one user may have.
    pub max_endpoints_per_user: u32,
    /// How long a rotated-out secret keeps signing beside the new one.
    pub secret_overlap: Duration,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// The delay before each attempt: the first (usually zero), then each
    /// retry; used up, the delivery is given up.
    pub retry_schedule: Vec<Duration>,
    /// An endpoint whose attempts have all failed for this long is disabled.
    pub disable_after: Duration,
}

impl WebhookSettings {
    /// The settings' defaults (as `serve --help` shows them).
    #[must_use]
    pub fn defaults() -> Self {
        WebhookSettings {
            allow_private: false,
            max_endpoints_per_user: 10,
            secret_overlap: Duration::from_hours(24),
            timeout: Duration::from_secs(10),
            retry_schedule: DEFAULT_RETRY_SCHEDULE.to_vec(),
            disable_after: Duration::from_hours(24 * 5),
        }
    }
}

/// In the spirit of Standard Webhooks: at once, then after 5 s, 5 min,
/// 30 min, 2 h, 5 h, 10 h and 10 h (about a day and a half in all).
pub const DEFAULT_RETRY_SCHEDULE: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_mins(5),
    Duration::from_mins(30),
    Duration::from_hours(2),
    Duration::from_hours(5),
    Duration::from_hours(10),
    Duration::from_hours(10),
];

/// A new signing secret: `whsec_` and the base64 of random bytes.
///
/// # Errors
/// The operating system gave no random bytes.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_whsec_and_32_random_bytes_in_base64() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        let key = a.strip_prefix("whsec_").expect("the prefix");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap();
        assert_eq!(bytes.len(), 32);
    }
}
