//! A provider that behaves like ElevenLabs without any network: the
//! zero-configuration default for `cargo run` and demos.
//!
//! A clone is accepted at once and reported as an instant clone awaiting
//! verification until `ready_after` has passed, then as verified and ready.
//! Voices live in memory: a restart forgets them, and the status engine then
//! finds them gone, exactly as it would for a voice deleted at ElevenLabs.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::time::Instant;
use uuid::Uuid;

use super::{CloneRequest, Cloned, ProviderError, TaggedVoice, Verdict, VoiceEdit, VoiceProvider};

struct SimVoice {
    voicehub_id: Uuid,
    labels: BTreeMap<String, String>,
    ready_at: Instant,
}

/// The simulated provider; its voices live in this value.
pub(crate) struct Simulated {
    ready_after: Duration,
    /// The installation every voice here is tagged with.
    installation: Uuid,
    voices: Mutex<HashMap<String, SimVoice>>,
}

impl Simulated {
    /// A provider whose clones become ready `ready_after` they were made.
    #[must_use]
    pub(crate) fn new(ready_after: Duration, installation: Uuid) -> Self {
        Simulated {
            ready_after,
            installation,
            voices: Mutex::new(HashMap::new()),
        }
    }
}

/// A 20-character alphanumeric id, the shape ElevenLabs uses.
fn new_voice_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).unwrap_or_default();
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[async_trait::async_trait]
impl VoiceProvider for Simulated {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn clone_voice(&self, request: CloneRequest) -> Result<Cloned, ProviderError> {
        let provider_voice_id = new_voice_id();
        self.voices.lock().insert(
            provider_voice_id.clone(),
            SimVoice {
                voicehub_id: request.voicehub_id,
                labels: request.labels,
                ready_at: Instant::now() + self.ready_after,
            },
        );
        Ok(Cloned {
            provider_voice_id,
            requires_verification: !self.ready_after.is_zero(),
        })
    }

    async fn check_voice(&self, provider_voice_id: &str) -> Result<Verdict, ProviderError> {
        let voices = self.voices.lock();
        let voice = voices
            .get(provider_voice_id)
            .ok_or(ProviderError::NotFound)?;
        if Instant::now() < voice.ready_at {
            return Ok(Verdict::Processing);
        }
        Ok(Verdict::Completed {
            preview_url: Some(format!(
                "https://simulated.voicehub.invalid/previews/{provider_voice_id}.mp3"
            )),
            labels: voice.labels.clone(),
        })
    }

    async fn find_tagged(&self, voicehub_id: Uuid) -> Result<Option<String>, ProviderError> {
        Ok(self
            .voices
            .lock()
            .iter()
            .find(|(_, v)| v.voicehub_id == voicehub_id)
            .map(|(id, _)| id.clone()))
    }

    async fn list_tagged(&self) -> Result<Vec<TaggedVoice>, ProviderError> {
        Ok(self
            .voices
            .lock()
            .iter()
            .map(|(id, v)| TaggedVoice {
                provider_voice_id: id.clone(),
                voicehub_id: v.voicehub_id,
                installation: Some(self.installation.to_string()),
            })
            .collect())
    }

    async fn edit_voice(
        &self,
        provider_voice_id: &str,
        edit: VoiceEdit,
    ) -> Result<(), ProviderError> {
        let mut voices = self.voices.lock();
        let voice = voices
            .get_mut(provider_voice_id)
            .ok_or(ProviderError::NotFound)?;
        if let Some(labels) = edit.labels {
            voice.labels = labels;
        }
        Ok(())
    }

    async fn delete_voice(&self, provider_voice_id: &str) -> Result<(), ProviderError> {
        self.voices
            .lock()
            .remove(provider_voice_id)
            .map(drop)
            .ok_or(ProviderError::NotFound)
    }
}
