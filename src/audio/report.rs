//! The sample quality report: the figures the check measured, judged
//! against the operator's thresholds.
//!
//! Role: turns one call's [`Figures`] into a [`Report`]: per-sample and
//! whole-set findings, each a stable code (clients may branch on it) and a
//! sentence for people, and a verdict. Only a set with too little speech is
//! refused; everything else is accepted with warnings, since the user may
//! know better (a whisper voice is quiet on purpose).
//!
//! Guarantees: the report is a pure function of the figures and the
//! thresholds; a figure that could not be measured (an Opus sample, audio
//! past the analysis budget) never produces a finding, and speech that may
//! hide in unanalysed audio is counted as possible, so a set is never
//! refused for speech voicehub did not listen to.

use serde::{Deserialize, Serialize};

use super::{Figures, analysis::MAX_SNR_DB};

/// What a report's findings are judged against (`VOICEHUB_MIN_SPEECH_SECONDS`
/// and the `VOICEHUB_SAMPLE_*` settings; defaults from ElevenLabs' guidance
/// for instant clones, see docs/sample-quality.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityThresholds {
    /// Below this much speech in all, a set is refused.
    pub min_speech_seconds: f64,
    /// Below this much speech in all, a set is warned (`little_speech`).
    pub recommended_speech_seconds: f64,
    /// Above this much audio in all, a set is warned (`too_much_audio`).
    pub max_useful_audio_seconds: f64,
    /// A sample quieter than this (integrated, LUFS) is `too_quiet`.
    pub min_loudness_lufs: f64,
    /// A sample louder than this (integrated, LUFS) is `too_loud`.
    pub max_loudness_lufs: f64,
    /// A sample with more than this share of clipped samples is `clipping`.
    pub max_clipped_fraction: f64,
    /// A sample whose estimated SNR is below this (dB) is `noisy`.
    pub min_snr_db: f64,
    /// A sample silent for more than this share of its frames is `mostly_silence`.
    pub max_silent_fraction: f64,
}

impl QualityThresholds {
    /// The defaults, which the settings' defaults are.
    pub const DEFAULT: QualityThresholds = QualityThresholds {
        min_speech_seconds: 10.0,
        recommended_speech_seconds: 60.0,
        max_useful_audio_seconds: 180.0,
        min_loudness_lufs: -30.0,
        max_loudness_lufs: -13.0,
        max_clipped_fraction: 0.001,
        min_snr_db: 25.0,
        max_silent_fraction: 0.5,
    };
}

/// How usable a set of samples is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    /// Nothing to say.
    Good,
    /// Accepted; the findings say what would make a better clone.
    Warnings,
    /// Not cloned: a blocking finding says why.
    Refused,
}

/// How much a finding weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Severity {
    /// Accepted as it is.
    Warning,
    /// The set is refused.
    Blocking,
}

/// One thing the report says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Finding {
    /// Stable, snake_case: what clients branch on.
    pub(crate) code: String,
    pub(crate) severity: Severity,
    /// For people; names the figure and the threshold.
    pub(crate) message: String,
    /// The sample it is about; `None`: the whole set.
    pub(crate) sample: Option<usize>,
}

/// One sample in the report: its name and figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SampleEntry {
    pub(crate) filename: String,
    #[serde(flatten)]
    pub(crate) figures: Figures,
}

/// The report on one set of samples, as stored with the voice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) verdict: Verdict,
    pub(crate) samples: Vec<SampleEntry>,
    pub(crate) total_duration_seconds: f64,
    pub(crate) total_speech_seconds: f64,
    pub(crate) findings: Vec<Finding>,
}

impl Report {
    /// The blocking finding, if the set is refused.
    pub(crate) fn refusal(&self) -> Option<&Finding> {
        self.findings
            .iter()
            .find(|f| f.severity == Severity::Blocking)
    }
}

/// Judges the samples named `filenames`, measured as `figures`.
pub(crate) fn judge(
    filenames: Vec<String>,
    figures: Vec<Figures>,
    limits: &QualityThresholds,
) -> Report {
    let mut findings = Vec::new();
    for (i, f) in figures.iter().enumerate() {
        sample_findings(i, f, limits, &mut findings);
    }
    let total: f64 = figures.iter().map(|f| f.duration_seconds).sum();
    let speech: f64 = figures.iter().map(|f| f.speech_seconds).sum();
    let unheard: f64 = figures
        .iter()
        .map(|f| (f.duration_seconds - f.analysed_seconds).max(0.0))
        .sum();
    let set = |code: &str, severity, message: String| Finding {
        code: code.into(),
        severity,
        message,
        sample: None,
    };
    if speech + unheard < limits.min_speech_seconds {
        findings.push(set(
            "too_little_speech",
            Severity::Blocking,
            format!(
                "{speech:.1} s of speech in all; at least {} s needed",
                limits.min_speech_seconds
            ),
        ));
    } else if speech + unheard < limits.recommended_speech_seconds {
        findings.push(set(
            "little_speech",
            Severity::Warning,
            format!(
                "{speech:.1} s of speech in all; a clone is better from at least {} s (1 to 2 minutes is ideal)",
                limits.recommended_speech_seconds
            ),
        ));
    }
    if total > limits.max_useful_audio_seconds {
        findings.push(set(
            "too_much_audio",
            Severity::Warning,
            format!(
                "{total:.1} s of audio in all; beyond {} s a clone gains little",
                limits.max_useful_audio_seconds
            ),
        ));
    }
    let verdict = if findings.iter().any(|f| f.severity == Severity::Blocking) {
        Verdict::Refused
    } else if findings.is_empty() {
        Verdict::Good
    } else {
        Verdict::Warnings
    };
    Report {
        verdict,
        samples: filenames
            .into_iter()
            .zip(figures)
            .map(|(filename, figures)| SampleEntry { filename, figures })
            .collect(),
        total_duration_seconds: total,
        total_speech_seconds: speech,
        findings,
    }
}

/// The warnings about sample `i`.
fn sample_findings(i: usize, f: &Figures, limits: &QualityThresholds, out: &mut Vec<Finding>) {
    let mut warn = |code: &str, message: String| {
        out.push(Finding {
            code: code.into(),
            severity: Severity::Warning,
            message: format!("samples[{i}]: {message}"),
            sample: Some(i),
        });
    };
    // Durations come from the container, analysed time from decoded
    // frames: they differ by rounding.
    if f.analysed_seconds < f.duration_seconds - 0.05 {
        warn(
            "not_analysed",
            if f.analysed_seconds == 0.0 {
                "not analysed (Opus is not decoded here, or the call's analysis budget was used up); its figures are unknown".into()
            } else {
                format!(
                    "only its first {:.1} s were analysed (the call's analysis budget)",
                    f.analysed_seconds
                )
            },
        );
    }
    if f.analysed_seconds == 0.0 {
        return;
    }
    if f.speech_seconds < 1.0 {
        warn(
            "no_speech",
            format!(
                "{:.2} s of speech; it may not hold a voice",
                f.speech_seconds
            ),
        );
    }
    if let Some(lufs) = f.loudness_lufs {
        if lufs < limits.min_loudness_lufs {
            warn(
                "too_quiet",
                format!(
                    "{lufs:.1} LUFS integrated loudness; below {} (about −23 to −18 is best)",
                    limits.min_loudness_lufs
                ),
            );
        } else if lufs > limits.max_loudness_lufs {
            warn(
                "too_loud",
                format!(
                    "{lufs:.1} LUFS integrated loudness; above {} (about −23 to −18 is best)",
                    limits.max_loudness_lufs
                ),
            );
        }
    }
    if f.clipped_fraction > limits.max_clipped_fraction {
        warn(
            "clipping",
            format!(
                "{:.2} % of its samples are clipped (more than {} %); record with less gain",
                f.clipped_fraction * 100.0,
                limits.max_clipped_fraction * 100.0
            ),
        );
    }
    if let Some(snr) = f.snr_db.filter(|snr| *snr < limits.min_snr_db) {
        warn(
            "noisy",
            format!(
                "about {snr:.0} dB signal-to-noise ratio; below {} dB, background noise carries into the clone",
                limits.min_snr_db
            ),
        );
    }
    let silent = f.silent_seconds / f.analysed_seconds;
    if silent > limits.max_silent_fraction {
        warn(
            "mostly_silence",
            format!(
                "{:.0} % of it is silent ({:.1} s at the start, {:.1} s at the end); trim it",
                silent * 100.0,
                f.leading_silence_seconds,
                f.trailing_silence_seconds
            ),
        );
    }
    debug_assert!(f.snr_db.is_none_or(|snr| snr <= MAX_SNR_DB));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(seconds: f64) -> Figures {
        Figures {
            duration_seconds: seconds,
            sample_rate: 22_050,
            channels: 1,
            analysed_seconds: seconds,
            speech_seconds: seconds * 0.9,
            loudness_lufs: Some(-20.0),
            true_peak_dbtp: Some(-3.0),
            clipped_fraction: 0.0,
            leading_silence_seconds: 0.2,
            trailing_silence_seconds: 0.3,
            silent_seconds: 0.8,
            snr_db: Some(60.0),
        }
    }

    fn codes(report: &Report) -> Vec<(&str, Option<usize>)> {
        report
            .findings
            .iter()
            .map(|f| (f.code.as_str(), f.sample))
            .collect()
    }

    fn report(figures: Vec<Figures>) -> Report {
        let names = (0..figures.len()).map(|i| format!("{i}.wav")).collect();
        judge(names, figures, &QualityThresholds::DEFAULT)
    }

    #[test]
    fn each_threshold_finds_what_it_names_and_nothing_on_clean_samples() {
        assert_eq!(
            report(vec![clean(40.0), clean(40.0)]).verdict,
            Verdict::Good
        );
        let mut quiet = clean(40.0);
        quiet.loudness_lufs = Some(-40.0);
        let mut loud = clean(40.0);
        loud.loudness_lufs = Some(-8.0);
        let mut clipped = clean(40.0);
        clipped.clipped_fraction = 0.05;
        let mut noisy = clean(40.0);
        noisy.snr_db = Some(10.0);
        let mut silent = clean(40.0);
        silent.silent_seconds = 30.0;
        let r = report(vec![quiet, loud, clipped, noisy, silent]);
        assert_eq!(r.verdict, Verdict::Warnings);
        assert_eq!(
            codes(&r),
            [
                ("too_quiet", Some(0)),
                ("too_loud", Some(1)),
                ("clipping", Some(2)),
                ("noisy", Some(3)),
                ("mostly_silence", Some(4)),
                ("too_much_audio", None),
            ]
        );
    }

    #[test]
    fn too_little_speech_refuses_and_names_the_figure() {
        let r = report(vec![clean(2.0), clean(1.4)]);
        assert_eq!(r.verdict, Verdict::Refused);
        let refusal = r.refusal().unwrap();
        assert_eq!(refusal.code, "too_little_speech");
        assert_eq!(
            refusal.message,
            "3.1 s of speech in all; at least 10 s needed"
        );
        let r = report(vec![clean(30.0)]);
        assert_eq!(codes(&r), [("little_speech", None)]);
    }

    #[test]
    fn audio_not_listened_to_is_never_held_against_the_set() {
        let mut opus = clean(30.0);
        opus.analysed_seconds = 0.0;
        opus.speech_seconds = 0.0;
        opus.loudness_lufs = None;
        opus.silent_seconds = 0.0;
        let r = report(vec![opus]);
        assert_eq!(r.verdict, Verdict::Warnings, "{r:?}");
        assert_eq!(
            codes(&r),
            [("not_analysed", Some(0)), ("little_speech", None)]
        );
    }
}
