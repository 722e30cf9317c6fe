//! A provider that behaves like ElevenLabs without any network: the
//! zero-configuration default for `cargo run` and demos.
//!
//! A clone is accepted at once and reported as an instant clone awaiting
//! verification until `ready_after` has passed, then as verified and ready.
//! Voices live in memory: a restart forgets them, and the sync engine then
//! finds them gone, exactly as it would for a voice deleted at ElevenLabs.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

use super::{CloneRequest, Cloned, ProviderError, ProviderVoice, VoiceEdit, VoiceProvider};

struct SimVoice {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    ready_at: Instant,
}

pub struct Simulated {
    ready_after: Duration,
    voices: Mutex<HashMap<String, SimVoice>>,
}

impl Simulated {
    pub fn new(ready_after: Duration) -> Self {
        Simulated {
            ready_after,
            voices: Mutex::new(HashMap::new()),
        }
    }

    fn voices(&self) -> std::sync::MutexGuard<'_, HashMap<String, SimVoice>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.voices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let voice_id = new_voice_id();
        self.voices().insert(
            voice_id.clone(),
            SimVoice {
                name: request.name,
                labels: request.labels,
                ready_at: Instant::now() + self.ready_after,
            },
        );
        Ok(Cloned {
            voice_id,
            requires_verification: !self.ready_after.is_zero(),
        })
    }

    async fn get_voice(&self, voice_id: &str) -> Result<ProviderVoice, ProviderError> {
        let voices = self.voices();
        let voice = voices.get(voice_id).ok_or(ProviderError::NotFound)?;
        let ready = Instant::now() >= voice.ready_at;
        Ok(ProviderVoice {
            voice_id: voice_id.to_owned(),
            name: voice.name.clone(),
            category: "cloned".into(),
            preview_url: ready
                .then(|| format!("https://simulated.voicehub.invalid/previews/{voice_id}.mp3")),
            labels: voice.labels.clone(),
            requires_verification: !ready,
            is_verified: ready,
            ..ProviderVoice::default()
        })
    }

    async fn edit_voice(&self, voice_id: &str, edit: VoiceEdit) -> Result<(), ProviderError> {
        let mut voices = self.voices();
        let voice = voices.get_mut(voice_id).ok_or(ProviderError::NotFound)?;
        voice.name = edit.name;
        if let Some(labels) = edit.labels {
            voice.labels = labels;
        }
        Ok(())
    }

    async fn delete_voice(&self, voice_id: &str) -> Result<(), ProviderError> {
        self.voices()
            .remove(voice_id)
            .map(drop)
            .ok_or(ProviderError::NotFound)
    }
}
