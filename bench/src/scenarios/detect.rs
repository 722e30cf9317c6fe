//! **detect**: how soon a watcher hears that a voice is ready. Voices are
//! created through CreateVoiceClone; the fake provider makes each one ready
//! at a uniformly random time 1–60 s after it was added, and answers every
//! `GET` in `latency_ms`. Every user has a WatchVoiceStatus stream on all
//! their voices, opened before the voices are created.
//!
//! Measured: provider-ready → watcher-received (the fake's ready time to
//! the arrival of COMPLETED, one clock, this process), p50/p99/max; and the
//! provider `GET` requests per voice-second (the requests from the first
//! create to the last detection, over the voices' summed time from `add` to
//! detection; a lookup of many voices is one request), beside how often a
//! voice was answered about. Server on PostgreSQL and Redis.
//!
//! Floor: a poller that asks about each voice once per second sees a
//! readiness that falls uniformly in its period, so its p99 is 0.99 s plus
//! the path from the provider's answer to the watcher. The provider's GET
//! time as the benchmark's client sees it is measured in the same run.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tonic::{Request, transport::Channel};
use uuid::Uuid;
use voicehub::pb::{
    AudioSample, CreateVoiceCloneRequest, VoiceStatus, WatchVoiceStatusRequest,
    voice_service_client::VoiceServiceClient,
};

use crate::{
    fake_provider::FakeProvider,
    report::{Panel, Series, Table, write_chart, write_json},
    server::{
        Server, Token, authenticator, bearer, consent, new_postgres_database, production_env,
        wait_until,
    },
};

/// The settings of one `detect` run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DetectArgs {
    /// Voices created.
    #[arg(long, default_value_t = 200)]
    pub(crate) voices: usize,
    /// Voices per user (each user has one watch on all their voices).
    #[arg(long, default_value_t = 10)]
    pub(crate) per_user: usize,
    /// The fake provider's answer time, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub(crate) latency_ms: u64,
}

#[derive(Debug, Serialize)]
struct Figures {
    voices: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    gets: u64,
    voice_seconds: f64,
    gets_per_voice_second: f64,
    /// Times a voice was answered about (alone or in a lookup).
    answers: u64,
    answers_per_voice_second: f64,
    provider_get_ms: f64,
    poller_floor_p99_ms: f64,
    /// (ready after add, s; detected after ready, ms) per voice.
    samples: Vec<(f64, f64)>,
}

/// One detected voice.
struct Detected {
    provider_voice_id: String,
    at: Instant,
}

/// Runs the scenario and writes `detect.json` and `detect.svg` into `out`.
pub(crate) async fn run(binary: &Path, out: &Path, args: DetectArgs) -> anyhow::Result<()> {
    let latency = Duration::from_millis(args.latency_ms);
    let fake = FakeProvider::start(latency, Duration::from_secs(1)..Duration::from_mins(1)).await?;
    let (_, url, pool) = new_postgres_database().await?;
    pool.close().await;
    let dir = tempfile::tempdir()?;
    let mut env = fake.env();
    env.extend(production_env("detect", url)?);
    // Creates and checks share the provider client's limit.
    env.push(("ELEVENLABS_MAX_CONCURRENCY", "16".into()));
    // The scenario creates many voices per user quickly: the creation rate
    // limit is not what it measures.
    env.push(("VOICEHUB_CREATE_LIMIT_PER_HOUR", "0".into()));
    env.push(("VOICEHUB_CREATE_LIMIT_PER_DAY", "0".into()));
    env.push(("VOICEHUB_MAX_CONCURRENT_UPLOADS_PER_USER", "0".into()));
    let server = Server::start(binary, dir.path(), &env).await?;
    let channel = server.channel().await?;
    let auth = authenticator();
    let users: Vec<Token> = (0..args.voices.div_ceil(args.per_user))
        .map(|_| bearer(&auth, Uuid::new_v4()))
        .collect::<anyhow::Result<_>>()?;

    let detected = Arc::new(Mutex::new(Vec::new()));
    for token in &users {
        watch_all(&channel, token, detected.clone()).await?;
    }
    let started = Instant::now();
    let gets_before = fake.gets();
    let created = create_all(&channel, &users, args.voices).await?;
    println!(
        "created {} voices in {:.1} s; waiting for them to be ready (1–60 s each)",
        created,
        started.elapsed().as_secs_f64()
    );
    let all_detected = || detected.lock().len() >= created;
    if !wait_until(
        Duration::from_secs(150),
        Duration::from_millis(100),
        all_detected,
    )
    .await
    {
        bail!(
            "only {} of {created} voices were detected within 150 s",
            detected.lock().len()
        );
    }
    let gets = fake.gets() - gets_before;
    let provider_get_ms = provider_get_ms(&fake).await?;
    drop(server);

    let mut histogram = Histogram::<u64>::new(3)?;
    let (mut answers, mut voice_seconds, mut samples) = (0, 0.0, Vec::new());
    for voice in detected.lock().iter() {
        let c = fake
            .created(&voice.provider_voice_id)
            .context("a voice the fake never created")?;
        let late = voice.at.saturating_duration_since(c.ready_at);
        histogram.record(u64::try_from(late.as_micros())?)?;
        answers += c.asked;
        voice_seconds += voice.at.duration_since(c.added_at).as_secs_f64();
        samples.push((
            c.ready_at.duration_since(c.added_at).as_secs_f64(),
            late.as_secs_f64() * 1e3,
        ));
    }
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1e3;
    let figures = Figures {
        voices: created,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1e3,
        gets,
        voice_seconds,
        gets_per_voice_second: gets as f64 / voice_seconds,
        answers,
        answers_per_voice_second: answers as f64 / voice_seconds,
        provider_get_ms,
        poller_floor_p99_ms: 990.0,
        samples,
    };
    report(out, &args, &figures)
}

/// Opens a watch on all of `token`'s voices that records each COMPLETED.
async fn watch_all(
    channel: &Channel,
    token: &Token,
    detected: Arc<Mutex<Vec<Detected>>>,
) -> anyhow::Result<()> {
    let mut request = Request::new(WatchVoiceStatusRequest::default());
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    let mut stream = VoiceServiceClient::new(channel.clone())
        .watch_voice_status(request)
        .await?
        .into_inner();
    tokio::spawn(async move {
        while let Some(Ok(event)) = stream.next().await {
            let at = Instant::now();
            if let Some(voice) = event.voice
                && voice.status() == VoiceStatus::Completed
            {
                detected.lock().push(Detected {
                    provider_voice_id: voice.provider_voice_id,
                    at,
                });
            }
        }
    });
    Ok(())
}

/// Creates `voices` voices, spread over `users`, eight at a time.
async fn create_all(channel: &Channel, users: &[Token], voices: usize) -> anyhow::Result<usize> {
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..voices)
        .map(|i| {
            let mut client = VoiceServiceClient::new(channel.clone());
            let token = users[i % users.len()].clone();
            async move {
                let mut request = Request::new(CreateVoiceCloneRequest {
                    name: format!("Detect {i}"),
                    samples: vec![AudioSample {
                        filename: "take.mp3".into(),
                        content_type: "audio/mpeg".into(),
                        data: mp3().into(),
                    }],
                    consent: Some(consent()),
                    ..CreateVoiceCloneRequest::default()
                });
                request.metadata_mut().insert("authorization", token);
                client.create_voice_clone(request).await?;
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        bail!("{} of {voices} creates failed, e.g.: {e}", voices - created);
    }
    Ok(created)
}

/// An MP3 of just over a second (an ID3v2.3 tag, 40 silent MPEG-1 Layer III
/// frames): a sample voicehub accepts (the fake provider does not listen to it).
fn mp3() -> Vec<u8> {
    let mut out = b"ID3\x03\x00\x00\x00\x00\x00\x0fTIT2\x00\x00\x00\x05\x00\x00\x00Take".to_vec();
    for _ in 0..40 {
        out.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
        out.extend(std::iter::repeat_n(0u8, 413));
    }
    out
}

/// The fake's GET answer time as a client sees it: the median of 50 GETs.
async fn provider_get_ms(fake: &FakeProvider) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/voices/probe", fake.url);
    let mut times = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        http.get(&url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn report(out: &Path, args: &DetectArgs, f: &Figures) -> anyhow::Result<()> {
    let mut table = Table::new(&["figure", "measured", "ceiling (same run)", "goal", "met"]);
    let p99_met = f.p99_ms <= 1_000.0;
    table.row(vec![
        "provider-ready → watcher, p50 / p99 / max".into(),
        format!("{:.0} / {:.0} / {:.0} ms", f.p50_ms, f.p99_ms, f.max_ms),
        format!(
            "p99 ≥ {:.0} ms + answer→watcher for any per-voice poller at 1 GET/voice-s",
            f.poller_floor_p99_ms
        ),
        "p99 ≤ 1000 ms".into(),
        if p99_met { "yes" } else { "NO" }.into(),
    ]);
    let gets_met = f.gets_per_voice_second <= 1.0;
    table.row(vec![
        "provider GET requests per voice-second".into(),
        format!(
            "{:.3} ({} GETs over {:.0} voice-s; a voice answered about {:.2} times per s)",
            f.gets_per_voice_second, f.gets, f.voice_seconds, f.answers_per_voice_second
        ),
        "—".into(),
        "≤ 1".into(),
        if gets_met { "yes" } else { "NO" }.into(),
    ]);
    table.print();
    let json = serde_json::json!({
        "scenario": "detect",
        "voices": args.voices,
        "per_user": args.per_user,
        "provider_latency_ms": args.latency_ms,
        "goals": [
            {"what": "provider-ready → watcher p99 ≤ 1.0 s", "measured": f.p99_ms, "met": p99_met},
            {"what": "≤ 1 provider GET per voice-second", "measured": f.gets_per_voice_second, "met": gets_met},
        ],
        "figures": f,
    });
    println!("wrote {}", write_json(out, "detect", &json)?.display());
    let mut late: Vec<f64> = f.samples.iter().map(|s| s.1).collect();
    late.sort_by(f64::total_cmp);
    let n = late.len().max(1) as f64;
    let panels = [
        Panel {
            title: "provider-ready → watcher-received (CDF)".into(),
            x_label: "ms".into(),
            y_label: "share of voices".into(),
            log_x: false,
            series: vec![
                Series {
                    name: "voicehub".into(),
                    points: late
                        .iter()
                        .enumerate()
                        .map(|(i, ms)| (*ms, (i + 1) as f64 / n))
                        .collect(),
                    ceiling: false,
                },
                Series {
                    name: "goal: p99 ≤ 1000 ms".into(),
                    points: vec![(1_000.0, 0.0), (1_000.0, 0.99)],
                    ceiling: true,
                },
            ],
        },
        Panel {
            title: "detection delay by readiness time (10 s buckets)".into(),
            x_label: "ready after add (s)".into(),
            y_label: "ms after ready".into(),
            log_x: false,
            series: vec![
                Series {
                    name: "median".into(),
                    points: by_bucket(&f.samples, 0.5),
                    ceiling: false,
                },
                Series {
                    name: "max".into(),
                    points: by_bucket(&f.samples, 1.0),
                    ceiling: false,
                },
            ],
        },
    ];
    println!(
        "wrote {}",
        write_chart(out, "detect", 2, &panels)?.display()
    );
    Ok(())
}

/// The `quantile` delay of the voices ready in each 10 s bucket, at the bucket's middle.
fn by_bucket(samples: &[(f64, f64)], quantile: f64) -> Vec<(f64, f64)> {
    (0..6)
        .filter_map(|bucket| {
            let from = f64::from(bucket) * 10.0;
            let mut delays: Vec<f64> = samples
                .iter()
                .filter(|(ready, _)| (from..from + 10.0).contains(ready))
                .map(|(_, late)| *late)
                .collect();
            delays.sort_by(f64::total_cmp);
            let last = delays.len().checked_sub(1)?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let at = ((last as f64) * quantile).round() as usize;
            Some((from + 5.0, delays[at]))
        })
        .collect()
}
