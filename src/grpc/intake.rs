//! What only a voice's owner reads: the intake record (its consent and
//! sample quality report), added to the voice on the answers of
//! CreateVoiceClone and GetVoice.

use crate::{audio, pb, store::Intake};

/// `voice` with what only its owner reads, from `intake` (none: as it is).
pub(super) fn with_intake(mut voice: pb::Voice, intake: Option<&Intake>) -> pb::Voice {
    let Some(intake) = intake else {
        return voice;
    };
    voice.consent = pb::consent_of(intake);
    voice.sample_report = intake.sample_report.as_ref().and_then(|json| {
        serde_json::from_value::<audio::Report>(json.clone())
            .inspect_err(|e| {
                tracing::error!(voice_id = %intake.voice_id, error = %e, "a stored sample report does not read back; left out");
            })
            .ok()
            .map(|report| pb::SampleReport::from(&report))
    });
    voice
}

impl From<&audio::Report> for pb::SampleReport {
    fn from(report: &audio::Report) -> Self {
        let severity = |s: audio::Severity| match s {
            audio::Severity::Warning => pb::FindingSeverity::Warning,
            audio::Severity::Blocking => pb::FindingSeverity::Blocking,
        };
        pb::SampleReport {
            verdict: match report.verdict {
                audio::Verdict::Good => pb::SampleVerdict::Good,
                audio::Verdict::Warnings => pb::SampleVerdict::Warnings,
                audio::Verdict::Refused => pb::SampleVerdict::Refused,
            }
            .into(),
            samples: report
                .samples
                .iter()
                .map(|s| {
                    let f = &s.figures;
                    pb::SampleFigures {
                        filename: s.filename.clone(),
                        duration_seconds: f.duration_seconds,
                        sample_rate: f.sample_rate,
                        channels: f.channels,
                        analysed_seconds: f.analysed_seconds,
                        speech_seconds: f.speech_seconds,
                        loudness_lufs: f.loudness_lufs,
                        true_peak_dbtp: f.true_peak_dbtp,
                        clipped_fraction: f.clipped_fraction,
                        leading_silence_seconds: f.leading_silence_seconds,
                        trailing_silence_seconds: f.trailing_silence_seconds,
                        silent_seconds: f.silent_seconds,
                        snr_db: f.snr_db,
                    }
                })
                .collect(),
            total_duration_seconds: report.total_duration_seconds,
            total_speech_seconds: report.total_speech_seconds,
            findings: report
                .findings
                .iter()
                .map(|f| pb::SampleFinding {
                    code: f.code.clone(),
                    severity: severity(f.severity).into(),
                    message: f.message.clone(),
                    sample_index: f.sample.and_then(|i| i32::try_from(i).ok()),
                })
                .collect(),
        }
    }
}
