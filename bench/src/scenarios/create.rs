//! **create**: what one CreateVoiceClone costs: latency, the server's CPU,
//! and the CPU of its audio-check children (which decode, measure and
//! report on the samples), per create, one call in flight, the fake provider
//! answering at once. Server on PostgreSQL and Redis, default thresholds.
//!
//! Sets of samples, all speech read by espeak-ng (22,050 Hz mono WAV):
//! - `one`: one sample of about 14 s (the README's);
//! - `slowest test sample`: the longest of the quality tests' samples,
//!   their reading after 20 s of silence and before 5 s (about 43 s);
//! - `25 at the limit`: 25 samples of 2 MiB each, 50 MiB in all (about 20
//!   minutes of audio, of which the first 10 are analysed).
//!
//! Ceiling, same run: AnalyzeSamples of the same set, which runs the same
//! check and report without the write path (reservation, intake record,
//! queue, provider call).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use serde::Serialize;
use tonic::Request;
use uuid::Uuid;
use voicehub::pb::{
    AnalyzeSamplesRequest, AudioSample, CreateVoiceCloneRequest,
    voice_service_client::VoiceServiceClient,
};

use crate::{
    fake_provider::FakeProvider,
    report::{Panel, Series, Table, write_chart, write_json},
    server::{Server, authenticator, bearer, consent, new_postgres_database, production_env},
};

/// The settings of one `create` run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CreateArgs {
    /// Creates (and analyses) per set of one sample; the 25-sample set gets a quarter.
    #[arg(long, default_value_t = 20)]
    pub(crate) calls: usize,
}

/// The README's sample text (about 14 s read).
const READING: &str = "Hello, this is my voice. I am reading a few sentences aloud, at an even \
    pace, so that a clone can learn how I sound. The weather is mild today, and the trains run \
    on time. I like long walks by the river, and I read the news every morning.";

/// The quality tests' reading (about 17.7 s read); after 20 s of silence
/// and followed by 5 s, it is their longest sample.
const TEST_READING: &str = "The quick brown fox jumps over the lazy dog. A voice sample should \
    hold clean speech, recorded close to the microphone in a quiet room. Read a page of a book \
    aloud, at an even pace, with natural pauses between the sentences. Then listen to it before \
    you upload it, and record it again if it sounds wrong.";

/// The upload limit: 50 MiB in all, 25 samples.
const LIMIT_BYTES: usize = 50 * 1024 * 1024;
const LIMIT_SAMPLES: usize = 25;

#[derive(Debug, Serialize)]
struct Point {
    set: String,
    samples: usize,
    bytes: usize,
    audio_seconds: f64,
    calls: usize,
    create_p50_ms: f64,
    create_max_ms: f64,
    create_server_cpu_ms: f64,
    create_check_cpu_ms: f64,
    analyze_p50_ms: f64,
    analyze_server_cpu_ms: f64,
    analyze_check_cpu_ms: f64,
    /// Per call, in order: (create ms, analyze ms).
    runs: Vec<(f64, f64)>,
}

/// Runs the scenario and writes `create.json` and `create.svg` into `out`.
pub(crate) async fn run(binary: &Path, out: &Path, args: CreateArgs) -> anyhow::Result<()> {
    let fake = FakeProvider::start(
        Duration::ZERO,
        Duration::from_hours(1)..Duration::from_hours(2),
    )
    .await?;
    let (_, url, pool) = new_postgres_database().await?;
    pool.close().await;
    let mut env = production_env("create", url)?;
    env.extend(fake.env());
    env.extend([
        ("VOICEHUB_MIN_SPEECH_SECONDS", "10".to_owned()),
        ("VOICEHUB_MAX_VOICES_PER_USER", "100000".to_owned()),
        ("VOICEHUB_CREATE_LIMIT_PER_HOUR", "0".to_owned()),
        ("VOICEHUB_CREATE_LIMIT_PER_DAY", "0".to_owned()),
        ("VOICEHUB_MAX_CONCURRENT_UPLOADS_PER_USER", "0".to_owned()),
    ]);
    let dir = tempfile::tempdir()?;
    let server = Server::start(binary, dir.path(), &env).await?;
    let (reading, rate) = speech(READING)?;
    let (test_reading, test_rate) = speech(TEST_READING)?;
    ensure!(rate == test_rate, "espeak-ng changed its rate");
    let mut padded = vec![0i16; rate as usize * 20];
    padded.extend(&test_reading);
    padded.extend(vec![0i16; rate as usize * 5]);
    let sets = [
        ("one", vec![wav(&reading, rate)], args.calls),
        ("slowest test sample", vec![wav(&padded, rate)], args.calls),
        (
            "25 at the limit",
            at_the_limit(&reading, rate),
            (args.calls / 4).max(2),
        ),
    ];
    let mut points = Vec::new();
    for (name, samples, calls) in sets {
        points.push(measure(&server, name, &samples, rate, calls).await?);
    }
    print_table(&points);
    let json = serde_json::json!({"scenario": "create", "points": points});
    println!("wrote {}", write_json(out, "create", &json)?.display());
    let panels: Vec<Panel> = points
        .iter()
        .map(|p| Panel {
            title: format!("create: {}", p.set),
            x_label: "call".into(),
            y_label: "ms".into(),
            log_x: false,
            series: vec![
                Series {
                    name: "CreateVoiceClone".into(),
                    points: p
                        .runs
                        .iter()
                        .enumerate()
                        .map(|(i, r)| ((i + 1) as f64, r.0))
                        .collect(),
                    ceiling: false,
                },
                Series {
                    name: "AnalyzeSamples (ceiling)".into(),
                    points: p
                        .runs
                        .iter()
                        .enumerate()
                        .map(|(i, r)| ((i + 1) as f64, r.1))
                        .collect(),
                    ceiling: true,
                },
            ],
        })
        .collect();
    println!(
        "wrote {}",
        write_chart(out, "create", 3, &panels)?.display()
    );
    Ok(())
}

fn print_table(points: &[Point]) {
    let mut table = Table::new(&[
        "set",
        "audio",
        "create p50",
        "server CPU / create",
        "check CPU / create",
        "analyze p50 (ceiling)",
        "server CPU / analyze",
        "check CPU / analyze",
    ]);
    for p in points {
        table.row(vec![
            format!(
                "{} ({} × {:.1} MiB)",
                p.set,
                p.samples,
                p.bytes as f64 / p.samples as f64 / 1_048_576.0
            ),
            format!("{:.1} s", p.audio_seconds),
            format!("{:.1} ms", p.create_p50_ms),
            format!("{:.1} ms", p.create_server_cpu_ms),
            format!("{:.1} ms", p.create_check_cpu_ms),
            format!("{:.1} ms", p.analyze_p50_ms),
            format!("{:.1} ms", p.analyze_server_cpu_ms),
            format!("{:.1} ms", p.analyze_check_cpu_ms),
        ]);
    }
    table.print();
}

/// Creates and analyses `samples` `calls` times each, one call in flight.
async fn measure(
    server: &Server,
    set: &str,
    samples: &[AudioSample],
    rate: u32,
    calls: usize,
) -> anyhow::Result<Point> {
    let channel = server.channel().await?;
    let auth = authenticator();
    let mut client = VoiceServiceClient::new(channel)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let bytes: usize = samples.iter().map(|s| s.data.len()).sum();
    let audio_seconds = samples
        .iter()
        .map(|s| (s.data.len() - 44) as f64 / 2.0 / f64::from(rate))
        .sum();
    let request = |samples: &[AudioSample]| CreateVoiceCloneRequest {
        name: "Benchmark".into(),
        samples: samples.to_vec(),
        consent: Some(consent()),
        ..CreateVoiceCloneRequest::default()
    };
    let token = bearer(&auth, Uuid::new_v4())?;
    // Warm-up: the first call of a set pays for connections and caches.
    let mut warm = Request::new(request(samples));
    warm.metadata_mut().insert("authorization", token.clone());
    client
        .create_voice_clone(warm)
        .await
        .context("a warm-up create")?;

    let mut creates = Vec::with_capacity(calls);
    let (cpu, children) = (server.cpu()?, server.children_cpu()?);
    for _ in 0..calls {
        let mut call = Request::new(request(samples));
        call.metadata_mut().insert("authorization", token.clone());
        let started = Instant::now();
        client.create_voice_clone(call).await.context("a create")?;
        creates.push(started.elapsed());
    }
    let create_cpu = (
        server.cpu()?.saturating_sub(cpu),
        server.children_cpu()?.saturating_sub(children),
    );
    let mut analyses = Vec::with_capacity(calls);
    let (cpu, children) = (server.cpu()?, server.children_cpu()?);
    for _ in 0..calls {
        let mut call = Request::new(AnalyzeSamplesRequest {
            samples: samples.to_vec(),
        });
        call.metadata_mut().insert("authorization", token.clone());
        let started = Instant::now();
        let report = client
            .analyze_samples(call)
            .await
            .context("an analysis")?
            .into_inner();
        ensure!(report.report.is_some(), "an analysis without a report");
        analyses.push(started.elapsed());
    }
    let analyze_cpu = (
        server.cpu()?.saturating_sub(cpu),
        server.children_cpu()?.saturating_sub(children),
    );
    let per_call = |d: Duration| d.as_secs_f64() * 1e3 / calls as f64;
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    Ok(Point {
        set: set.into(),
        samples: samples.len(),
        bytes,
        audio_seconds,
        calls,
        create_p50_ms: median(&creates),
        create_max_ms: creates.iter().map(ms).fold(0.0, f64::max),
        create_server_cpu_ms: per_call(create_cpu.0),
        create_check_cpu_ms: per_call(create_cpu.1),
        analyze_p50_ms: median(&analyses),
        analyze_server_cpu_ms: per_call(analyze_cpu.0),
        analyze_check_cpu_ms: per_call(analyze_cpu.1),
        runs: creates
            .iter()
            .map(ms)
            .zip(analyses.iter().map(ms))
            .collect(),
    })
}

fn median(durations: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// `text` read by espeak-ng: 16-bit samples and their rate.
fn speech(text: &str) -> anyhow::Result<(Vec<i16>, u32)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("speech.wav");
    let status = Command::new("espeak-ng")
        .arg("-w")
        .arg(&path)
        .arg(text)
        .status()
        .context("running espeak-ng (scripts/bench installs it)")?;
    ensure!(status.success(), "espeak-ng failed");
    let mut reader = hound::WavReader::open(&path)?;
    let rate = reader.spec().sample_rate;
    let samples = reader.samples::<i16>().collect::<Result<_, _>>()?;
    Ok((samples, rate))
}

/// A 16-bit mono PCM WAV sample of `samples` at `rate`.
fn wav(samples: &[i16], rate: u32) -> AudioSample {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    let mut writer = hound::WavWriter::new(&mut out, spec).expect("a WAV in memory");
    for s in samples {
        writer.write_sample(*s).expect("a WAV in memory");
    }
    writer.finalize().expect("a WAV in memory");
    AudioSample {
        filename: "speech.wav".into(),
        content_type: "audio/wav".into(),
        data: out.into_inner().into(),
    }
}

/// 25 samples of the reading, repeated, that fill the upload limit exactly.
fn at_the_limit(reading: &[i16], rate: u32) -> Vec<AudioSample> {
    let frames = (LIMIT_BYTES / LIMIT_SAMPLES - 44) / 2;
    let long: Vec<i16> = reading.iter().copied().cycle().take(frames).collect();
    (0..LIMIT_SAMPLES).map(|_| wav(&long, rate)).collect()
}
