//! The voice provider seam: where voices are actually cloned.
//!
//! [`VoiceProvider`] is what the service needs from a provider: clone a voice
//! from samples, read a voice's details, edit and delete it. Two
//! implementations: [`ElevenLabs`] (the real HTTP API) and [`Simulated`] (no
//! network, for the zero-configuration `cargo run` and demos).
//!
//! Errors come back classified ([`ProviderError`]) so callers can act on
//! them: a transient failure has already been retried inside the provider by
//! the time it is returned, so `Unavailable` means "retry later", not "retry
//! now".

mod elevenlabs;
mod simulated;

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;

pub use elevenlabs::{ElevenLabs, ElevenLabsConfig, RetryPolicy};
pub use simulated::Simulated;

/// One audio file to clone from.
#[derive(Debug, Clone)]
pub struct AudioFile {
    pub filename: String,
    pub content_type: String,
    pub data: Bytes,
}

/// What the provider needs to clone a voice.
#[derive(Debug, Clone)]
pub struct CloneRequest {
    pub name: String,
    pub description: Option<String>,
    /// Sent to the provider as its labels (ours plus `language`/`gender`).
    pub labels: BTreeMap<String, String>,
    pub files: Vec<AudioFile>,
    pub remove_background_noise: bool,
}

/// The provider's answer to a clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloned {
    pub voice_id: String,
    pub requires_verification: bool,
}

/// New metadata for a voice; the provider requires the name on every edit.
#[derive(Debug, Clone)]
pub struct VoiceEdit {
    pub name: String,
    pub description: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// What the provider reports about a voice (the facts; what they mean for
/// our status is decided by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderVoice {
    pub voice_id: String,
    pub name: String,
    /// `cloned` (instant clone), `professional`, ...
    pub category: String,
    pub preview_url: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Professional clones: training state per model id.
    pub fine_tuning_state: BTreeMap<String, String>,
    /// Professional clones: the provider's message per model id.
    pub fine_tuning_message: BTreeMap<String, String>,
    pub requires_verification: bool,
    pub is_verified: bool,
    pub safety_control: Option<String>,
}

/// A provider failure, classified by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider account's voice slots or credits are used up.
    #[error("the voice provider's limit is reached: {0}")]
    LimitReached(String),
    /// The provider refused the request's content; `field` is ours when known.
    #[error("the voice provider rejected the request: {message}")]
    Rejected {
        field: Option<&'static str>,
        message: String,
    },
    /// The voice does not exist at the provider (any more).
    #[error("the voice does not exist at the provider")]
    NotFound,
    /// Overloaded, failing or unreachable, still after the retries.
    #[error("the voice provider is unavailable: {0}")]
    Unavailable(String),
    /// Our API key is wrong or lacks a permission: an operator problem.
    #[error("the voice provider refused our credentials: {0}")]
    Unauthorized(String),
    /// The provider answered something we cannot read.
    #[error("unexpected answer from the voice provider: {0}")]
    Protocol(String),
}

/// The operations voicehub needs from a voice provider.
#[async_trait::async_trait]
pub trait VoiceProvider: Send + Sync + 'static {
    /// A short name for logs: `elevenlabs` or `simulated`.
    fn name(&self) -> &'static str;

    /// Clones a voice from samples.
    ///
    /// # Errors
    /// Any [`ProviderError`]; on error no voice was created, unless the
    /// failure hid a success (a lost response), which callers must assume
    /// possible only for `Unavailable`.
    async fn clone_voice(&self, request: CloneRequest) -> Result<Cloned, ProviderError>;

    /// Reads a voice's current details.
    ///
    /// # Errors
    /// [`ProviderError::NotFound`] when the voice is gone, or another failure.
    async fn get_voice(&self, voice_id: &str) -> Result<ProviderVoice, ProviderError>;

    /// Changes a voice's name, description and labels.
    ///
    /// # Errors
    /// Any [`ProviderError`].
    async fn edit_voice(&self, voice_id: &str, edit: VoiceEdit) -> Result<(), ProviderError>;

    /// Deletes a voice.
    ///
    /// # Errors
    /// [`ProviderError::NotFound`] when it was already gone, or another failure.
    async fn delete_voice(&self, voice_id: &str) -> Result<(), ProviderError>;
}

pub type DynProvider = Arc<dyn VoiceProvider>;

/// Builds the configured provider.
///
/// # Errors
/// The ElevenLabs client cannot be built (a malformed key).
pub fn from_config(config: &crate::config::ProviderConfig) -> anyhow::Result<DynProvider> {
    Ok(match config {
        crate::config::ProviderConfig::ElevenLabs(c) => Arc::new(ElevenLabs::new(c.clone())?),
        crate::config::ProviderConfig::Simulated { ready_after } => {
            Arc::new(Simulated::new(*ready_after))
        }
    })
}

/// What a provider's report means for a voice's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not ready yet: check again later.
    Processing,
    /// Ready to use.
    Completed {
        preview_url: Option<String>,
        labels: BTreeMap<String, String>,
    },
    /// Will never be ready; the reason is meant for people.
    Failed(String),
}

/// The reason given for a voice that vanished at the provider.
pub const GONE_AT_PROVIDER: &str = "voice no longer exists at the provider";

impl ProviderVoice {
    /// Maps ElevenLabs' facts to a status (see elevenlabs-voices.md §2, §7):
    /// a banned voice failed; a professional clone follows its per-model
    /// training state; an instant clone is ready once it exists, unless it
    /// still awaits verification.
    pub fn verdict(&self) -> Verdict {
        if matches!(
            self.safety_control.as_deref(),
            Some("BAN" | "ENTERPRISE_BAN")
        ) {
            return Verdict::Failed("the voice provider banned this voice (safety control)".into());
        }
        if self.category == "professional" {
            if let Some((model, _)) = self.fine_tuning_state.iter().find(|(_, s)| *s == "failed") {
                let message = self
                    .fine_tuning_message
                    .get(model)
                    .filter(|m| !m.is_empty());
                return Verdict::Failed(match message {
                    Some(m) => format!("training failed at the provider: {m}"),
                    None => format!("training failed at the provider for model {model}"),
                });
            }
            if !self.fine_tuning_state.values().any(|s| s == "fine_tuned") {
                // queued, fine_tuning, delayed (re-queued), not_started: still on its way.
                return Verdict::Processing;
            }
        } else if self.requires_verification && !self.is_verified {
            return Verdict::Processing;
        }
        Verdict::Completed {
            preview_url: self.preview_url.clone(),
            labels: self.labels.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice(category: &str) -> ProviderVoice {
        ProviderVoice {
            voice_id: "v".into(),
            category: category.into(),
            preview_url: Some("https://p/1.mp3".into()),
            ..ProviderVoice::default()
        }
    }

    #[test]
    fn an_existing_instant_clone_is_completed_unless_verification_is_pending() {
        assert!(matches!(
            voice("cloned").verdict(),
            Verdict::Completed { .. }
        ));
        let mut pending = voice("cloned");
        pending.requires_verification = true;
        assert_eq!(pending.verdict(), Verdict::Processing);
        pending.is_verified = true;
        assert!(matches!(pending.verdict(), Verdict::Completed { .. }));
    }

    #[test]
    fn a_professional_clone_follows_its_training_state() {
        let mut pro = voice("professional");
        for state in ["not_started", "queued", "fine_tuning", "delayed"] {
            pro.fine_tuning_state = [("eleven_multilingual_v2".into(), state.into())].into();
            assert_eq!(pro.verdict(), Verdict::Processing, "{state}");
        }
        pro.fine_tuning_state = [("eleven_multilingual_v2".into(), "fine_tuned".into())].into();
        assert!(matches!(pro.verdict(), Verdict::Completed { .. }));
        pro.fine_tuning_state = [("eleven_multilingual_v2".into(), "failed".into())].into();
        pro.fine_tuning_message =
            [("eleven_multilingual_v2".into(), "audio too noisy".into())].into();
        assert_eq!(
            pro.verdict(),
            Verdict::Failed("training failed at the provider: audio too noisy".into())
        );
    }

    #[test]
    fn a_banned_voice_failed() {
        let mut banned = voice("cloned");
        banned.safety_control = Some("BAN".into());
        assert!(matches!(banned.verdict(), Verdict::Failed(_)));
    }
}
