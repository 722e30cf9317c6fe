//! What ElevenLabs' details of a voice mean for its readiness: a banned
//! voice failed; a professional clone follows its per-model training state;
//! an instant clone is ready once it exists, unless it still awaits voice
//! verification (`docs/elevenlabs.md`, "Voice states, and what voicehub
//! makes of them").
//!
//! Only the fields this decision needs are read from `GET /v1/voices/{id}`
//! or a `GET /v2/voices` page; everything else in the answer is ignored.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::provider::{Verdict, untagged};

/// The fields of a voice (`GET /v1/voices/{voice_id}`, or one of a
/// `GET /v2/voices` page) that decide readiness.
#[derive(Debug, Default, Deserialize)]
pub(super) struct VoiceDetails {
    /// Read from `GET /v2/voices` pages, whose voices say who they are.
    #[serde(default, rename = "voice_id")]
    pub(super) provider_voice_id: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    preview_url: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    fine_tuning: Option<FineTuning>,
    #[serde(default)]
    voice_verification: Option<Verification>,
    #[serde(default)]
    safety_control: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct FineTuning {
    #[serde(default)]
    state: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    message: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct Verification {
    #[serde(default)]
    requires_verification: bool,
    #[serde(default)]
    is_verified: bool,
}

/// String values of a JSON map; nulls dropped, other values rendered as JSON.
fn strings(map: Option<BTreeMap<String, Value>>) -> BTreeMap<String, String> {
    map.unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::Null => None,
            Value::String(s) => Some((k, s)),
            other => Some((k, other.to_string())),
        })
        .collect()
}

/// The part of a `GET /v2/voices` page voicehub reads.
#[derive(Debug, Deserialize)]
pub(super) struct VoicesPage {
    pub(super) voices: Vec<VoiceDetails>,
}

impl VoiceDetails {
    /// The provider-neutral verdict on this voice.
    pub(super) fn verdict(self) -> Verdict {
        if matches!(
            self.safety_control.as_deref(),
            Some("BAN" | "ENTERPRISE_BAN")
        ) {
            return Verdict::Failed("the voice provider banned this voice (safety control)".into());
        }
        if self.category.as_deref() == Some("professional") {
            let fine_tuning = self.fine_tuning.unwrap_or_default();
            let state = strings(fine_tuning.state);
            if let Some((model, _)) = state.iter().find(|(_, s)| *s == "failed") {
                let messages = strings(fine_tuning.message);
                return Verdict::Failed(match messages.get(model).filter(|m| !m.is_empty()) {
                    Some(m) => format!("training failed at the provider: {m}"),
                    None => format!("training failed at the provider for model {model}"),
                });
            }
            if !state.values().any(|s| s == "fine_tuned") {
                // queued, fine_tuning, delayed (re-queued), not_started: still on its way.
                return Verdict::Processing;
            }
        } else {
            let verification = self.voice_verification.unwrap_or_default();
            if verification.requires_verification && !verification.is_verified {
                return Verdict::Processing;
            }
        }
        let labels = untagged(strings(self.labels));
        Verdict::Completed {
            preview_url: self.preview_url.filter(|u| !u.is_empty()),
            labels,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn verdict(details: &Value) -> Verdict {
        serde_json::from_value::<VoiceDetails>(details.clone())
            .unwrap()
            .verdict()
    }

    #[test]
    fn an_existing_instant_clone_is_completed_unless_verification_is_pending() {
        let ready = json!({"voice_id": "v", "category": "cloned", "preview_url": "https://p/1.mp3",
            "labels": {"accent": "british", "age": null, "voicehub_id": "0190e1f0-0000-7000-8000-000000000000"}});
        assert_eq!(
            verdict(&ready),
            Verdict::Completed {
                preview_url: Some("https://p/1.mp3".into()),
                labels: [("accent".to_owned(), "british".to_owned())].into(),
            }
        );
        let pending = json!({"category": "cloned",
            "voice_verification": {"requires_verification": true, "is_verified": false}});
        assert_eq!(verdict(&pending), Verdict::Processing);
        let verified = json!({"category": "cloned",
            "voice_verification": {"requires_verification": true, "is_verified": true}});
        assert!(matches!(verdict(&verified), Verdict::Completed { .. }));
    }

    #[test]
    fn a_professional_clone_follows_its_training_state() {
        let pro = |state: &str| {
            json!({"category": "professional",
                "fine_tuning": {"state": {"eleven_multilingual_v2": state},
                                "message": {"eleven_multilingual_v2": "audio too noisy"}}})
        };
        for state in ["not_started", "queued", "fine_tuning", "delayed"] {
            assert_eq!(verdict(&pro(state)), Verdict::Processing, "{state}");
        }
        assert!(matches!(
            verdict(&pro("fine_tuned")),
            Verdict::Completed { .. }
        ));
        assert_eq!(
            verdict(&pro("failed")),
            Verdict::Failed("training failed at the provider: audio too noisy".into())
        );
    }

    #[test]
    fn a_banned_voice_failed() {
        let banned = json!({"category": "cloned", "safety_control": "BAN"});
        assert!(matches!(verdict(&banned), Verdict::Failed(_)));
    }
}
