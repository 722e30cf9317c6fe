//! The sample quality report, on audio made with known properties: speech
//! (espeak-ng), the same with noise at a known SNR, a clipped sine, a sine
//! at a known loudness, speech after 20 s of silence, and a set with about
//! 3 s of speech. Each finding appears where it should and not on the clean
//! sample; the figures are within stated tolerances of the known values.
// Signal arithmetic on sample counts far below 2^23.
#![allow(clippy::cast_precision_loss)]

use rand::{Rng, SeedableRng, rngs::StdRng};
use sea_orm::{EntityTrait, PaginatorTrait};
use tonic::Code;
use uuid::Uuid;
use voicehub::{
    audio::QualityThresholds,
    pb::{self, AnalyzeSamplesRequest, SampleFigures, SampleReport},
    store::entity::voice_intake,
};

use crate::{
    fake_elevenlabs::FakeElevenLabs,
    helpers::{
        Backend, TestApp, assert_invalid_field, consent, create_voice, sample, spawn_app_with,
        spawn_app_with_fake, speech, wav_of,
    },
    on_both_backends,
};

/// About 17 s of read speech.
const READING: &str = "The quick brown fox jumps over the lazy dog. A voice sample should hold \
    clean speech, recorded close to the microphone in a quiet room. Read a page of a book aloud, \
    at an even pace, with natural pauses between the sentences. Then listen to it before you \
    upload it, and record it again if it sounds wrong.";

/// Tolerances the report promises (docs/sample-quality.md).
const LOUDNESS_LU: f64 = 1.0;
const SECONDS: f64 = 0.1;
const SNR_DB: f64 = 3.0;

/// The defaults, as an operator gets them (the other tests lower the
/// speech minimum for their short tones).
fn default_quality(config: &mut voicehub::config::Config) {
    config.sample_quality = QualityThresholds::DEFAULT;
}

/// `seconds` of silence at `rate`.
fn silence(seconds: f32, rate: u32) -> Vec<f32> {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = (seconds * rate as f32) as usize;
    vec![0.0; n]
}

/// A 1 kHz sine of `peak` amplitude (clipped at full scale), `seconds` long.
fn sine(seconds: f32, peak: f32, rate: u32) -> Vec<f32> {
    let mut out = silence(seconds, rate);
    for (i, v) in out.iter_mut().enumerate() {
        let t = i as f32 / rate as f32;
        *v = (peak * (2.0 * std::f32::consts::PI * 1_000.0 * t).sin()).clamp(-1.0, 1.0);
    }
    out
}

/// The mean power of `samples` over its 16-ms frames that are not silent
/// (above −60 dBFS): the level of active speech.
fn active_power(samples: &[f32], rate: u32) -> f64 {
    let frame = (rate as usize * 16) / 1000;
    let powers: Vec<f64> = samples
        .chunks_exact(frame)
        .map(|f| f.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / frame as f64)
        .filter(|p| *p > 1e-6)
        .collect();
    powers.iter().sum::<f64>() / powers.len() as f64
}

/// `samples` with white noise (uniform, seeded) at `snr_db` below their
/// active speech level.
fn with_noise(samples: &[f32], rate: u32, snr_db: f64) -> Vec<f32> {
    let noise_power = active_power(samples, rate) / 10f64.powf(snr_db / 10.0);
    // Uniform on [−a, a] has power a²/3.
    #[allow(clippy::cast_possible_truncation)]
    let a = (3.0 * noise_power).sqrt() as f32;
    let mut rng = StdRng::seed_from_u64(22);
    samples
        .iter()
        .map(|v| v + rng.random_range(-a..=a))
        .collect()
}

/// What the test made, and what it knows about each sample.
struct Corpus {
    samples: Vec<pb::AudioSample>,
    /// Each sample's exact length.
    seconds: Vec<f64>,
}

/// clean speech, noisy speech (10 dB), a clipped sine, a sine at −40 LUFS,
/// speech after 20 s of silence (and 5 s after it).
fn corpus() -> Corpus {
    let (voice, rate) = speech(READING);
    let mut clean = silence(1.0, rate);
    clean.extend(&voice);
    clean.extend(silence(1.0, rate));
    let noisy = with_noise(&clean, rate, 10.0);
    // BS.1770: a mono 1 kHz sine reads 3.01 dB below its peak in dBFS.
    #[allow(clippy::cast_possible_truncation)]
    let quiet_peak = 10f64.powf((-40.0 + 3.01) / 20.0) as f32;
    let quiet = sine(5.0, quiet_peak, rate);
    let clipped = sine(3.0, 2.0, rate);
    let mut padded = silence(20.0, rate);
    padded.extend(&voice);
    padded.extend(silence(5.0, rate));
    let made = [
        ("clean.wav", clean),
        ("noisy.wav", noisy),
        ("clipped.wav", clipped),
        ("quiet.wav", quiet),
        ("padded.wav", padded),
    ];
    Corpus {
        seconds: made
            .iter()
            .map(|(_, s)| s.len() as f64 / f64::from(rate))
            .collect(),
        samples: made
            .into_iter()
            .map(|(name, s)| sample(name, wav_of(&s, rate)))
            .collect(),
    }
}

async fn analyze(app: &TestApp, samples: Vec<pb::AudioSample>) -> SampleReport {
    app.client(Uuid::new_v4())
        .analyze_samples(AnalyzeSamplesRequest { samples })
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap()
}

fn codes_of(report: &SampleReport, sample: usize) -> Vec<&str> {
    report
        .findings
        .iter()
        .filter(|f| f.sample_index == i32::try_from(sample).ok())
        .map(|f| f.code.as_str())
        .collect()
}

fn print(report: &SampleReport) {
    for s in &report.samples {
        let SampleFigures {
            filename,
            duration_seconds,
            speech_seconds,
            loudness_lufs,
            true_peak_dbtp,
            clipped_fraction,
            leading_silence_seconds,
            trailing_silence_seconds,
            snr_db,
            ..
        } = s;
        println!(
            "{filename}: {duration_seconds:.2} s, speech {speech_seconds:.2} s, {loudness_lufs:.1?} LUFS, \
             peak {true_peak_dbtp:.1?} dBTP, clipped {:.2} %, silence {leading_silence_seconds:.2} s + \
             {trailing_silence_seconds:.2} s, SNR {snr_db:.1?} dB",
            clipped_fraction * 100.0
        );
    }
    for f in &report.findings {
        println!("  {} {:?}: {}", f.code, f.sample_index, f.message);
    }
}

#[tokio::test]
async fn each_finding_appears_where_it_should_and_the_figures_are_the_known_ones() {
    let app = spawn_app_with(Backend::Sqlite, default_quality).await;
    let corpus = corpus();
    let report = analyze(&app, corpus.samples).await;
    print(&report);
    let figures = &report.samples;
    for (i, seconds) in corpus.seconds.iter().enumerate() {
        let measured = figures[i].duration_seconds;
        assert!(
            (measured - seconds).abs() < SECONDS,
            "sample {i}: {measured} s, made {seconds} s"
        );
        assert!((figures[i].analysed_seconds - seconds).abs() < SECONDS);
    }
    assert_eq!(codes_of(&report, 0), Vec::<&str>::new(), "the clean sample");
    assert!(figures[0].speech_seconds > 12.0, "{:?}", figures[0]);
    assert!(figures[0].snr_db.unwrap() > 40.0);

    assert_eq!(codes_of(&report, 1), ["noisy"]);
    let snr = figures[1].snr_db.unwrap();
    assert!((snr - 10.0).abs() < SNR_DB, "made at 10 dB, measured {snr}");

    assert!(codes_of(&report, 2).contains(&"clipping"));
    assert!((figures[2].clipped_fraction - 2.0 / 3.0).abs() < 0.02);

    assert!(codes_of(&report, 3).contains(&"too_quiet"));
    let loudness = figures[3].loudness_lufs.unwrap();
    assert!(
        (loudness + 40.0).abs() < LOUDNESS_LU,
        "made at −40 LUFS, measured {loudness}"
    );

    assert!(codes_of(&report, 4).contains(&"mostly_silence"));
    let leading = figures[4].leading_silence_seconds;
    assert!(
        (leading - 20.0).abs() < SECONDS,
        "made with 20 s, measured {leading}"
    );
    assert!(figures[4].trailing_silence_seconds >= 5.0 - SECONDS);

    // The set holds enough speech, with warnings.
    assert_eq!(report.verdict(), pb::SampleVerdict::Warnings);
    assert!(report.total_speech_seconds > 30.0);
}

async fn too_little_speech_is_refused_before_the_provider_and_analysis_writes_nothing(
    backend: Backend,
) {
    let (app, fake) = spawn_app_with_fake(backend, default_quality).await;
    let (hello, rate) = speech("Hello there, my friend, how are you today?");
    let (again, _) = speech("Good morning to you.");
    let short = vec![
        sample("hello.wav", wav_of(&hello, rate)),
        sample("again.wav", wav_of(&again, rate)),
    ];
    let report = analyze(&app, short.clone()).await;
    print(&report);
    assert_eq!(report.verdict(), pb::SampleVerdict::Refused);
    let blocking: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.severity() == pb::FindingSeverity::Blocking)
        .collect();
    assert_eq!(blocking.len(), 1);
    assert_eq!(blocking[0].code, "too_little_speech");
    assert!(report.total_speech_seconds < 5.0, "{report:?}");

    let mut request = crate::helpers::create_request("Short");
    request.samples = short;
    let refused = app
        .client(Uuid::new_v4())
        .create_voice_clone(request)
        .await
        .unwrap_err();
    assert_invalid_field(&refused, "samples");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("s of speech in all; at least 10 s needed"),
        "{}",
        refused.message()
    );
    nothing_written(&app, &fake).await;
}

/// No voice, no intake record, no provider request.
async fn nothing_written(app: &TestApp, fake: &FakeElevenLabs) {
    assert_eq!(app.voice_rows().await, 0);
    let intakes = voice_intake::Entity::find().count(&app.db).await.unwrap();
    assert_eq!(intakes, 0);
    assert_eq!(fake.requests().len(), 0, "the provider was not called");
}

async fn the_report_is_stored_with_the_voice_and_shown_to_its_owner_only(backend: Backend) {
    let (app, fake) = spawn_app_with_fake(backend, default_quality).await;
    let (voice, rate) = speech(READING);
    let samples = vec![sample("reading.wav", wav_of(&voice, rate))];
    let analysed = analyze(&app, samples.clone()).await;
    nothing_written(&app, &fake).await;

    let owner = Uuid::new_v4();
    let mut client = app.client(owner);
    let mut request = crate::helpers::create_request("Reader");
    request.samples = samples;
    request.visibility = pb::Visibility::Public.into();
    let created = create_voice(&mut client, request).await;
    assert_eq!(created.sample_report.as_ref(), Some(&analysed));
    let got = crate::helpers::get_voice(&mut client, &created.voice_id).await;
    assert_eq!(got.sample_report.as_ref(), Some(&analysed));
    assert_eq!(
        got.consent.as_ref().map(|c| &c.speaker_name),
        Some(&consent().speaker_name)
    );

    let other = crate::helpers::get_voice(&mut app.client(Uuid::new_v4()), &created.voice_id).await;
    assert_eq!(
        other.sample_report, None,
        "another user does not see the report"
    );
    assert_eq!(other.consent, None);
    assert!(other.consent_recorded);
}

on_both_backends!(
    too_little_speech_is_refused_before_the_provider_and_analysis_writes_nothing,
    the_report_is_stored_with_the_voice_and_shown_to_its_owner_only,
);
