//! What CreateVoiceClone requires and reports besides the audio check: the
//! consent requirement and the sample quality thresholds.

use anyhow::bail;
use clap::{ArgAction, Args};

use crate::audio::QualityThresholds;

const DEFAULT: QualityThresholds = QualityThresholds::DEFAULT;

/// The intake flags (`serve`).
#[derive(Debug, Clone, Args)]
pub struct IntakeArgs {
    /// A create without a `consent` is INVALID_ARGUMENT.
    #[arg(long, env = "VOICEHUB_REQUIRE_CONSENT", default_value_t = true, action = ArgAction::Set)]
    pub require_consent: bool,
    /// Below this much speech in all samples, a create is refused (INVALID_ARGUMENT naming `samples`).
    #[arg(long, env = "VOICEHUB_MIN_SPEECH_SECONDS", default_value_t = DEFAULT.min_speech_seconds)]
    pub min_speech_seconds: f64,
    /// Below this much speech in all, the report warns `little_speech`.
    #[arg(long, env = "VOICEHUB_SAMPLE_RECOMMENDED_SPEECH_SECONDS", default_value_t = DEFAULT.recommended_speech_seconds)]
    pub sample_recommended_speech_seconds: f64,
    /// Above this much audio in all, the report warns `too_much_audio`.
    #[arg(long, env = "VOICEHUB_SAMPLE_MAX_USEFUL_SECONDS", default_value_t = DEFAULT.max_useful_audio_seconds)]
    pub sample_max_useful_seconds: f64,
    /// A sample quieter than this integrated loudness (LUFS) is `too_quiet`.
    #[arg(long, env = "VOICEHUB_SAMPLE_MIN_LOUDNESS_LUFS", default_value_t = DEFAULT.min_loudness_lufs, allow_negative_numbers = true)]
    pub sample_min_loudness_lufs: f64,
    /// A sample louder than this integrated loudness (LUFS) is `too_loud`.
    #[arg(long, env = "VOICEHUB_SAMPLE_MAX_LOUDNESS_LUFS", default_value_t = DEFAULT.max_loudness_lufs, allow_negative_numbers = true)]
    pub sample_max_loudness_lufs: f64,
    /// A sample with a larger share of clipped samples (0 to 1) is `clipping`.
    #[arg(long, env = "VOICEHUB_SAMPLE_MAX_CLIPPED_FRACTION", default_value_t = DEFAULT.max_clipped_fraction)]
    pub sample_max_clipped_fraction: f64,
    /// A sample whose estimated signal-to-noise ratio (dB) is lower is `noisy`.
    #[arg(long, env = "VOICEHUB_SAMPLE_MIN_SNR_DB", default_value_t = DEFAULT.min_snr_db)]
    pub sample_min_snr_db: f64,
    /// A sample silent for a larger share of its length (0 to 1) is `mostly_silence`.
    #[arg(long, env = "VOICEHUB_SAMPLE_MAX_SILENT_FRACTION", default_value_t = DEFAULT.max_silent_fraction)]
    pub sample_max_silent_fraction: f64,
}

impl IntakeArgs {
    /// The thresholds, checked.
    ///
    /// # Errors
    /// A threshold that cannot work, named by its variable.
    pub fn thresholds(&self) -> anyhow::Result<QualityThresholds> {
        let finite = [
            self.min_speech_seconds,
            self.sample_recommended_speech_seconds,
            self.sample_max_useful_seconds,
            self.sample_min_loudness_lufs,
            self.sample_max_loudness_lufs,
            self.sample_max_clipped_fraction,
            self.sample_min_snr_db,
            self.sample_max_silent_fraction,
        ];
        if finite.iter().any(|v| !v.is_finite()) {
            bail!(
                "the VOICEHUB_MIN_SPEECH_SECONDS and VOICEHUB_SAMPLE_* thresholds must be numbers"
            );
        }
        if self.min_speech_seconds < 0.0
            || self.sample_recommended_speech_seconds < self.min_speech_seconds
        {
            bail!(
                "VOICEHUB_MIN_SPEECH_SECONDS must be at least 0 and at most VOICEHUB_SAMPLE_RECOMMENDED_SPEECH_SECONDS"
            );
        }
        if self.sample_min_loudness_lufs >= self.sample_max_loudness_lufs {
            bail!(
                "VOICEHUB_SAMPLE_MIN_LOUDNESS_LUFS must be below VOICEHUB_SAMPLE_MAX_LOUDNESS_LUFS"
            );
        }
        let fraction = 0.0..=1.0;
        if !fraction.contains(&self.sample_max_clipped_fraction)
            || !fraction.contains(&self.sample_max_silent_fraction)
        {
            bail!(
                "VOICEHUB_SAMPLE_MAX_CLIPPED_FRACTION and VOICEHUB_SAMPLE_MAX_SILENT_FRACTION must be between 0 and 1"
            );
        }
        Ok(QualityThresholds {
            min_speech_seconds: self.min_speech_seconds,
            recommended_speech_seconds: self.sample_recommended_speech_seconds,
            max_useful_audio_seconds: self.sample_max_useful_seconds,
            min_loudness_lufs: self.sample_min_loudness_lufs,
            max_loudness_lufs: self.sample_max_loudness_lufs,
            max_clipped_fraction: self.sample_max_clipped_fraction,
            min_snr_db: self.sample_min_snr_db,
            max_silent_fraction: self.sample_max_silent_fraction,
        })
    }
}
