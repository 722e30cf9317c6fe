//! **fanout**: many open WatchVoiceStatus streams, then a burst of
//! completions. Ten PROCESSING voices of one user are written to
//! PostgreSQL; the fake provider reports them not ready. The benchmark
//! opens N streams (each on one of the ten voices, or each on all of the
//! user's voices), a hundred per HTTP/2 connection, and reads each
//! stream's snapshot. Then the fake reports all ten ready, so the status
//! engine completes them together and every stream gets its COMPLETED.
//!
//! Measured: the server's resident memory before the streams open (after
//! a warm-up of GetVoice calls on every connection, so its database pool
//! and connection buffers are in use), once
//! they are open (per stream), right after they close, and a minute later;
//! server-side commit → `emitted_at` (the voice's `updated_at` to the
//! event's `emitted_at`, both the server's clock), and commit → received by
//! the client (same machine, same clock), p50/p99/max.
//!
//! Ceiling, in the same run: the client's own receive rate, as the time it
//! takes to open N grpc.health.v1 Watch streams and receive the first
//! message of each (a stream on which the server does no work).

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::bail;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tonic::{Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;
use voicehub::{
    pb::{
        GetVoiceRequest, VoiceStatus, WatchVoiceStatusRequest,
        voice_service_client::VoiceServiceClient,
    },
    store::entity::voice,
};

use crate::{
    fake_provider::FakeProvider,
    report::{Panel, Series, Table, print_goals, write_chart, write_json},
    scenarios::sync::{migrate, seed, seeded_owner},
    server::{Server, authenticator, bearer, new_postgres_database, production_env, wait_until},
};

/// The settings of one `fanout` run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FanoutArgs {
    /// Stream counts, each on one voice.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000, 50_000])]
    pub(crate) streams: Vec<usize>,
    /// Streams on all of one user's voices (0: skip).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) all_streams: usize,
    /// Seconds to wait after the streams close before the last memory reading.
    #[arg(long, default_value_t = 60)]
    pub(crate) settle: u64,
}

/// Voices that complete in the burst.
const VOICES: u64 = 10;
/// Streams per HTTP/2 connection.
const PER_CONNECTION: usize = 100;

#[derive(Debug, Serialize)]
struct Point {
    case: String,
    streams: usize,
    open_seconds: f64,
    rss_before_mib: f64,
    rss_open_mib: f64,
    rss_per_stream_kib: f64,
    rss_closed_mib: f64,
    rss_settled_mib: f64,
    rss_settled_vs_before: f64,
    server_p50_ms: f64,
    server_p99_ms: f64,
    server_max_ms: f64,
    e2e_p50_ms: f64,
    e2e_p99_ms: f64,
    e2e_max_ms: f64,
    client_ceiling_ms: f64,
}

/// When one stream heard of a completion (all times in µs since the epoch).
struct Heard {
    committed: i64,
    emitted: i64,
    received: i64,
}

/// Runs the scenario and writes `fanout.json` and `fanout.svg` into `out`.
pub(crate) async fn run(binary: &Path, out: &Path, args: FanoutArgs) -> anyhow::Result<()> {
    let mut cases: Vec<(String, usize, bool)> = args
        .streams
        .iter()
        .map(|n| (format!("{n} streams, one voice each"), *n, false))
        .collect();
    if args.all_streams > 0 {
        cases.push((
            format!("{} streams on one user's \"all\"", args.all_streams),
            args.all_streams,
            true,
        ));
    }
    let mut points = Vec::new();
    for (case, streams, all) in cases {
        points.push(measure(binary, &case, streams, all, args.settle).await?);
    }
    report(out, &args, &points)
}

async fn measure(
    binary: &Path,
    case: &str,
    streams: usize,
    all: bool,
    settle: u64,
) -> anyhow::Result<Point> {
    let fake =
        FakeProvider::start(Duration::from_millis(20), Duration::ZERO..Duration::ZERO).await?;
    fake.set_others_ready(false);
    let (_, url, pool) = new_postgres_database().await?;
    pool.close().await;
    let dir = tempfile::tempdir()?;
    migrate(binary, dir.path(), &url)?;
    seed(&url, VOICES, 1).await?;
    let ids = voice_ids(&url).await?;
    let mut env = fake.env();
    env.extend(production_env("fanout", url)?);
    // One user watches from every stream: the per-user and per-replica
    // stream limits are not what this measures.
    env.push(("VOICEHUB_MAX_WATCHES_PER_USER", "0".into()));
    env.push(("VOICEHUB_MAX_WATCHES", "0".into()));
    let server = Server::start(binary, dir.path(), &env).await?;
    let channels = connections(&server, streams).await?;
    warm_up(&channels, ids[0]).await?;
    let rss_before = server.rss()?;

    let heard = Arc::new(Mutex::new(Vec::with_capacity(streams)));
    let started = Instant::now();
    let readers = open_streams(&channels, &ids, streams, all, &heard).await?;
    let open_seconds = started.elapsed().as_secs_f64();
    let rss_open = server.rss()?;

    fake.set_others_ready(true);
    let expected = if all { streams * ids.len() } else { streams };
    let all_heard = || heard.lock().len() >= expected;
    if !wait_until(Duration::from_mins(2), Duration::from_millis(20), all_heard).await {
        bail!(
            "{case}: only {} of {expected} completions arrived within two minutes",
            heard.lock().len()
        );
    }
    for reader in &readers {
        reader.abort();
    }
    drop(readers);
    drop(channels);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_closed = server.rss()?;
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let rss_settled = server.rss()?;
    // Last, so its streams do not count in the server's memory above.
    let client_ceiling_ms = health_ceiling(&connections(&server, streams).await?, streams).await?;
    drop(server);

    let (mut server_side, mut e2e) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
    for h in heard.lock().iter() {
        server_side.record(u64::try_from((h.emitted - h.committed).max(0))?)?;
        e2e.record(u64::try_from((h.received - h.committed).max(0))?)?;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    Ok(Point {
        case: case.to_owned(),
        streams,
        open_seconds,
        rss_before_mib: mib(rss_before),
        rss_open_mib: mib(rss_open),
        rss_per_stream_kib: rss_open.saturating_sub(rss_before) as f64 / 1024.0 / streams as f64,
        rss_closed_mib: mib(rss_closed),
        rss_settled_mib: mib(rss_settled),
        rss_settled_vs_before: rss_settled as f64 / rss_before as f64,
        server_p50_ms: ms(&server_side, 0.5),
        server_p99_ms: ms(&server_side, 0.99),
        server_max_ms: server_side.max() as f64 / 1e3,
        e2e_p50_ms: ms(&e2e, 0.5),
        e2e_p99_ms: ms(&e2e, 0.99),
        e2e_max_ms: e2e.max() as f64 / 1e3,
        client_ceiling_ms,
    })
}

/// Opens `streams` watch streams of the seeded user (each on one of `ids`,
/// or each on all of the user's voices), waits for each one's snapshot, and
/// leaves a task per stream that records every COMPLETED in `heard`.
async fn open_streams(
    channels: &[Channel],
    ids: &[Uuid],
    streams: usize,
    all: bool,
    heard: &Arc<Mutex<Vec<Heard>>>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let token = bearer(&authenticator(), seeded_owner(0))?;
    let opened: Vec<anyhow::Result<tokio::task::JoinHandle<()>>> =
        futures_util::stream::iter(0..streams)
            .map(|i| {
                let mut client = VoiceServiceClient::new(channels[i / PER_CONNECTION].clone());
                let voice_ids = if all {
                    Vec::new()
                } else {
                    vec![ids[i % ids.len()].to_string()]
                };
                let (token, heard) = (token.clone(), heard.clone());
                async move {
                    let mut request = Request::new(WatchVoiceStatusRequest { voice_ids });
                    request.metadata_mut().insert("authorization", token);
                    let mut stream = client.watch_voice_status(request).await?.into_inner();
                    // The snapshot: the stream is open once it arrived.
                    stream.next().await.transpose()?;
                    Ok(tokio::spawn(async move {
                        while let Some(Ok(event)) = stream.next().await {
                            let received = chrono::Utc::now().timestamp_micros();
                            if let (Some(voice), Some(emitted)) = (event.voice, event.emitted_at)
                                && voice.status() == VoiceStatus::Completed
                            {
                                let micros = |t: prost_types::Timestamp| {
                                    t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000
                                };
                                heard.lock().push(Heard {
                                    committed: voice.updated_at.map_or(0, micros),
                                    emitted: micros(emitted),
                                    received,
                                });
                            }
                        }
                    }))
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
    opened.into_iter().collect()
}

/// GetVoice calls, 64 at a time, at least 500 and at least 5 on every
/// connection, so the server's database pool and every connection's
/// buffers are in use before the first memory reading: the pre-open level
/// is that of a server that has served these clients, and the growth after
/// it is the streams' own.
async fn warm_up(channels: &[Channel], id: Uuid) -> anyhow::Result<()> {
    let token = bearer(&authenticator(), seeded_owner(0))?;
    let calls: Vec<anyhow::Result<()>> =
        futures_util::stream::iter(0..(channels.len() * 5).max(500))
            .map(|i| {
                let mut client = VoiceServiceClient::new(channels[i % channels.len()].clone());
                let token = token.clone();
                async move {
                    let mut request = Request::new(GetVoiceRequest {
                        voice_id: id.to_string(),
                    });
                    request.metadata_mut().insert("authorization", token);
                    client.get_voice(request).await?;
                    Ok(())
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
    calls.into_iter().collect()
}

/// The ids of the voices [`seed`] wrote.
async fn voice_ids(url: &str) -> anyhow::Result<Vec<Uuid>> {
    use sea_orm::{EntityTrait, QuerySelect};
    let db = sea_orm::Database::connect(url).await?;
    let ids: Vec<Uuid> = voice::Entity::find()
        .select_only()
        .column(voice::Column::Id)
        .into_tuple()
        .all(&db)
        .await?;
    db.close().await?;
    Ok(ids)
}

/// Enough HTTP/2 connections for `streams` streams, a hundred each.
async fn connections(server: &Server, streams: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..streams.div_ceil(PER_CONNECTION) {
        channels.push(server.channel().await?);
    }
    Ok(channels)
}

/// The client's ceiling: milliseconds to open `streams` Health/Watch
/// streams on `channels` and receive the first message of each.
async fn health_ceiling(channels: &[Channel], streams: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let opened: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..streams)
        .map(|i| {
            let mut client = HealthClient::new(channels[i / PER_CONNECTION].clone());
            async move {
                let mut stream = client
                    .watch(HealthCheckRequest::default())
                    .await?
                    .into_inner();
                stream.next().await.transpose()?;
                Ok(())
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    opened.into_iter().collect::<anyhow::Result<()>>()?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

fn report(out: &Path, args: &FanoutArgs, points: &[Point]) -> anyhow::Result<()> {
    let mut table = Table::new(&[
        "case",
        "open s",
        "RSS before",
        "open",
        "KiB/stream",
        "closed",
        "+1 min",
        "÷before",
        "commit→emitted p50/p99/max ms",
        "commit→received p50/p99/max ms",
        "client ceiling ms",
    ]);
    for p in points {
        table.row(vec![
            p.case.clone(),
            format!("{:.1}", p.open_seconds),
            format!("{:.1} MiB", p.rss_before_mib),
            format!("{:.1} MiB", p.rss_open_mib),
            format!("{:.1}", p.rss_per_stream_kib),
            format!("{:.1} MiB", p.rss_closed_mib),
            format!("{:.1} MiB", p.rss_settled_mib),
            format!("{:.2}", p.rss_settled_vs_before),
            format!(
                "{:.0} / {:.0} / {:.0}",
                p.server_p50_ms, p.server_p99_ms, p.server_max_ms
            ),
            format!(
                "{:.0} / {:.0} / {:.0}",
                p.e2e_p50_ms, p.e2e_p99_ms, p.e2e_max_ms
            ),
            format!("{:.0}", p.client_ceiling_ms),
        ]);
    }
    table.print();
    let goals = goals(points);
    print_goals(&goals);
    let json = serde_json::json!({
        "scenario": "fanout",
        "voices_completing": VOICES,
        "streams_per_connection": PER_CONNECTION,
        "settle_seconds": args.settle,
        "points": points,
        "goals": goals,
    });
    println!("wrote {}", write_json(out, "fanout", &json)?.display());
    let per_voice: Vec<&Point> = points.iter().filter(|p| !p.case.contains("all")).collect();
    let line = |name: &str, ceiling: bool, y: &dyn Fn(&Point) -> f64| Series {
        name: name.into(),
        points: per_voice.iter().map(|p| (p.streams as f64, y(p))).collect(),
        ceiling,
    };
    let panels = [
        Panel {
            title: "server memory per open stream".into(),
            x_label: "open streams".into(),
            y_label: "KiB".into(),
            log_x: true,
            series: vec![
                line("RSS per stream", false, &|p| p.rss_per_stream_kib),
                line("goal: 10 KiB", true, &|_| 10.0),
            ],
        },
        Panel {
            title: "server RSS: before, open, a minute after close".into(),
            x_label: "open streams".into(),
            y_label: "MiB".into(),
            log_x: true,
            series: vec![
                line("before", false, &|p| p.rss_before_mib),
                line("open", false, &|p| p.rss_open_mib),
                line("+1 min after close", false, &|p| p.rss_settled_mib),
            ],
        },
        Panel {
            title: "burst of 10 completions: p99 latency".into(),
            x_label: "open streams".into(),
            y_label: "ms".into(),
            log_x: true,
            series: vec![
                line("commit → emitted_at", false, &|p| p.server_p99_ms),
                line("commit → received", false, &|p| p.e2e_p99_ms),
                line("client ceiling (N health watches)", true, &|p| {
                    p.client_ceiling_ms
                }),
                line("goal: 100 ms server-side", true, &|_| 100.0),
            ],
        },
    ];
    println!(
        "wrote {}",
        write_chart(out, "fanout", 3, &panels)?.display()
    );
    Ok(())
}

/// The scenario's goals, each with what was measured and whether it is met.
fn goals(points: &[Point]) -> serde_json::Value {
    let at_10k: Vec<&Point> = points.iter().filter(|p| p.streams == 10_000).collect();
    serde_json::json!([
        {
            "what": "≤ 10 KiB RSS per open stream",
            "measured": points.iter().map(|p| format!("{:.1} KiB ({})", p.rss_per_stream_kib, p.case)).collect::<Vec<_>>(),
            "met": points.iter().all(|p| p.rss_per_stream_kib <= 10.0),
        },
        {
            "what": "RSS within 20 % of its pre-open level a minute after the streams close",
            "measured": points.iter().map(|p| format!("{:.2}× ({})", p.rss_settled_vs_before, p.case)).collect::<Vec<_>>(),
            "met": points.iter().all(|p| p.rss_settled_vs_before <= 1.2),
        },
        {
            "what": "server-side commit → emitted_at p99 ≤ 100 ms at 10k streams",
            "measured": at_10k.iter().map(|p| format!("{:.0} ms ({})", p.server_p99_ms, p.case)).collect::<Vec<_>>(),
            "met": !at_10k.is_empty() && at_10k.iter().all(|p| p.server_p99_ms <= 100.0),
        },
    ])
}
