//! The voice provider seam: where voices are actually cloned.
//!
//! [`VoiceProvider`] is what the service needs from a provider: clone a voice
//! from samples, tell how far a voice is ([`Verdict`], in the provider's own
//! terms kept inside its module), edit and delete it. Two implementations:
//! [`ElevenLabs`] (the real HTTP API) and [`Simulated`] (no network, for the
//! zero-configuration `cargo run` and demos).
//!
//! Errors come back classified ([`ProviderError`]) so callers can act on
//! them: a transient failure has already been retried inside the provider by
//! the time it is returned, so `Unavailable` means "retry later", not "retry
//! now".

mod elevenlabs;
mod simulated;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use bytes::Bytes;
use uuid::Uuid;

use crate::store::Voice;

pub(crate) use elevenlabs::ElevenLabs;
pub use elevenlabs::{ElevenLabsConfig, RetryPolicy};
pub(crate) use simulated::Simulated;

/// One audio file to clone from.
#[derive(Debug, Clone)]
pub(crate) struct AudioFile {
    /// A plain file name.
    pub(crate) filename: String,
    /// The MIME type, canonical for the format the data has.
    pub(crate) content_type: String,
    /// The file's bytes (shared, not copied, across retries).
    pub(crate) data: Bytes,
}

/// The label every voice voicehub creates at the provider carries, holding
/// its voicehub id: it tells voicehub's voices from the others in the same
/// account and finds the voice of a create whose answer was lost. Providers
/// add it to what they send and leave it out of the labels they report.
pub(crate) const TAG_LABEL: &str = "voicehub_id";

/// The label beside [`TAG_LABEL`] holding the id of the installation (one
/// database) that made the voice: installations sharing one provider
/// account act only on their own voices. Reserved and left out like it.
pub(crate) const INSTALLATION_LABEL: &str = "voicehub_installation";

/// The label keys voicehub keeps for itself.
pub(crate) const RESERVED_LABELS: [&str; 2] = [TAG_LABEL, INSTALLATION_LABEL];

/// `labels` plus the tags of the voicehub voice `id` of `installation`.
pub(crate) fn tagged(
    labels: &BTreeMap<String, String>,
    id: Uuid,
    installation: Uuid,
) -> BTreeMap<String, String> {
    let mut tagged = labels.clone();
    tagged.insert(TAG_LABEL.to_owned(), id.to_string());
    tagged.insert(INSTALLATION_LABEL.to_owned(), installation.to_string());
    tagged
}

/// `labels` without the keys voicehub keeps for itself.
pub(crate) fn untagged(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    for key in RESERVED_LABELS {
        labels.remove(key);
    }
    labels
}

/// A provider voice that carries voicehub's tag, as a listing shows it.
/// Its labels are the provider's, which anyone with the account can edit:
/// they say what the voice claims to be, not what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaggedVoice {
    /// The provider's id of the voice.
    pub(crate) provider_voice_id: String,
    /// The voicehub voice its tag names.
    pub(crate) voicehub_id: Uuid,
    /// The installation label's value, as found; `None` for a voice tagged
    /// before installations had ids.
    pub(crate) installation: Option<String>,
}

/// What the provider needs to clone a voice.
#[derive(Debug, Clone)]
pub(crate) struct CloneRequest {
    /// The voicehub voice this clone is for; sent as its tag.
    pub(crate) voicehub_id: Uuid,
    /// The voice's display name.
    pub(crate) name: String,
    /// Free text, when set.
    pub(crate) description: Option<String>,
    /// Sent to the provider as its labels (ours plus `language`/`gender`).
    pub(crate) labels: BTreeMap<String, String>,
    /// The samples.
    pub(crate) files: Vec<AudioFile>,
    /// Ask the provider to clean the samples first.
    pub(crate) remove_background_noise: bool,
}

/// The provider's answer to a clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cloned {
    /// The provider's id of the new voice.
    pub(crate) provider_voice_id: String,
    /// The provider still has to verify the voice before it is usable.
    pub(crate) requires_verification: bool,
}

/// New metadata for a voice; the provider requires the name on every edit.
#[derive(Debug, Clone)]
pub(crate) struct VoiceEdit {
    /// The voicehub voice; its tag is sent with new labels, so they keep it.
    pub(crate) voicehub_id: Uuid,
    /// The name (always sent).
    pub(crate) name: String,
    /// The description; `None` leaves it as it is.
    pub(crate) description: Option<String>,
    /// The labels, replacing all; `None` leaves them as they are.
    pub(crate) labels: Option<BTreeMap<String, String>>,
}

impl VoiceEdit {
    /// The stored name, description and labels of `voice`, all of them:
    /// what the provider must hold.
    #[must_use]
    pub(crate) fn of(voice: &Voice) -> Self {
        VoiceEdit {
            voicehub_id: voice.id,
            name: voice.name.clone(),
            description: Some(voice.description.clone()).filter(|d| !d.is_empty()),
            labels: Some(labels_sent(&voice.labels.0, &voice.language, &voice.gender)),
        }
    }
}

/// The labels the provider gets: the caller's, plus `language` and `gender`
/// (which ElevenLabs documents as label keys) when they are set.
#[must_use]
pub(crate) fn labels_sent(
    labels: &BTreeMap<String, String>,
    language: &str,
    gender: &str,
) -> BTreeMap<String, String> {
    let mut out = labels.clone();
    for (key, value) in [("language", language), ("gender", gender)] {
        if !value.is_empty() {
            out.insert(key.to_owned(), value.to_owned());
        }
    }
    out
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
        /// Our request field the provider objected to, when it said.
        field: Option<&'static str>,
        /// The provider's words.
        message: String,
    },
    /// The voice does not exist at the provider (any more).
    #[error("the voice does not exist at the provider")]
    NotFound,
    /// Overloaded, failing or unreachable, still after the retries.
    #[error("the voice provider is unavailable: {0}")]
    Unavailable(String),
    /// A create whose outcome is unknown: the provider may or may not have
    /// made the voice. Never retried blind: the voice's tag tells.
    #[error("the voice provider's answer was lost; it may have acted: {detail}")]
    OutcomeUnknown {
        /// What happened.
        detail: String,
        /// No answer came back (a timeout, a reset after sending): the
        /// request may still be running at the provider, so its absence
        /// now proves nothing. Otherwise a server error answered it.
        may_still_run: bool,
    },
    /// Our API key is wrong or lacks a permission: an operator problem.
    #[error("the voice provider refused our credentials: {0}")]
    Unauthorized(String),
    /// The provider answered something we cannot read.
    #[error("unexpected answer from the voice provider: {0}")]
    Protocol(String),
}

impl ProviderError {
    /// A short name of the failure's class, for metrics.
    #[must_use]
    pub(crate) fn class(&self) -> &'static str {
        match self {
            ProviderError::LimitReached(_) => "limit_reached",
            ProviderError::Rejected { .. } => "rejected",
            ProviderError::NotFound => "not_found",
            ProviderError::Unavailable(_) => "unavailable",
            ProviderError::OutcomeUnknown { .. } => "outcome_unknown",
            ProviderError::Unauthorized(_) => "unauthorized",
            ProviderError::Protocol(_) => "protocol",
        }
    }
}

/// The operations voicehub needs from a voice provider.
#[async_trait::async_trait]
pub(crate) trait VoiceProvider: Send + Sync + 'static {
    /// A short name for logs: `elevenlabs` or `simulated`.
    fn name(&self) -> &'static str;

    /// Clones a voice from samples.
    ///
    /// # Errors
    /// Any [`ProviderError`]; on error no voice was created, except after
    /// [`ProviderError::OutcomeUnknown`], when one may have been.
    async fn clone_voice(&self, request: CloneRequest) -> Result<Cloned, ProviderError>;

    /// How far the provider is with a voice: still processing, ready, or failed.
    ///
    /// # Errors
    /// [`ProviderError::NotFound`] when the voice is gone, or another failure.
    async fn check_voice(&self, provider_voice_id: &str) -> Result<Verdict, ProviderError>;

    /// The most voices one [`VoiceProvider::check_voices`] call asks about;
    /// 1 when the provider has no lookup of several voices at once.
    fn lookup_limit(&self) -> usize {
        1
    }

    /// How far the provider is with each of `voice_ids` (at most
    /// [`VoiceProvider::lookup_limit`]), in one call where the provider
    /// allows. A voice missing from the answer was not reported: whether it
    /// still exists is for [`VoiceProvider::check_voice`] to say.
    ///
    /// # Errors
    /// The lookup as a whole failed.
    async fn check_voices(
        &self,
        voice_ids: &[&str],
    ) -> Result<HashMap<String, Verdict>, ProviderError> {
        let mut verdicts = HashMap::with_capacity(voice_ids.len());
        for id in voice_ids {
            match self.check_voice(id).await {
                Ok(verdict) => {
                    verdicts.insert((*id).to_owned(), verdict);
                }
                Err(ProviderError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(verdicts)
    }

    /// The provider voice tagged with voicehub's `voicehub_id` (see
    /// [`TAG_LABEL`]), if the provider holds one.
    ///
    /// # Errors
    /// The search failed.
    async fn find_tagged(&self, voicehub_id: Uuid) -> Result<Option<String>, ProviderError>;

    /// Every provider voice that carries voicehub's tag (of any
    /// installation); voices without the tag are not voicehub's and are
    /// left out. The whole account, or an error: never a part of it.
    ///
    /// # Errors
    /// Listing failed.
    async fn list_tagged(&self) -> Result<Vec<TaggedVoice>, ProviderError>;

    /// Changes a voice's name, description and labels.
    ///
    /// # Errors
    /// Any [`ProviderError`].
    async fn edit_voice(
        &self,
        provider_voice_id: &str,
        edit: VoiceEdit,
    ) -> Result<(), ProviderError>;

    /// Deletes a voice.
    ///
    /// # Errors
    /// [`ProviderError::NotFound`] when it was already gone, or another failure.
    async fn delete_voice(&self, provider_voice_id: &str) -> Result<(), ProviderError>;
}

/// The configured provider, shared.
pub(crate) type DynProvider = Arc<dyn VoiceProvider>;

/// A provider's verdict on a voice, in terms of our statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not ready yet: check again later.
    Processing,
    /// Ready to use.
    Completed {
        /// A short audio preview, when the provider offers one.
        preview_url: Option<String>,
        /// The labels the provider holds for the voice.
        labels: BTreeMap<String, String>,
    },
    /// Will never be ready; the reason is meant for people.
    Failed(String),
}

/// The category ElevenLabs gives an instant clone, the only kind voicehub creates.
pub(crate) const INSTANT_CLONE: &str = "cloned";

/// The reason given for a voice the provider said twice, a while apart, it
/// does not hold, and does not list.
pub(crate) const GONE_AT_PROVIDER: &str = "voice no longer exists at the provider";
