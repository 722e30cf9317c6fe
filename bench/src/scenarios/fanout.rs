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
//!
//! Memory depends on the client (its HTTP/2 windows and settings), so the
//! one-voice cases also run with Python grpcio (`bench/grpcio_watch.py`,
//! gRPC's C-core client) opening the streams: memory before, open, closed
//! and a minute later, without the burst (that client reports no
//! timings). Each case runs `--runs` times; the goals hold for the worst.

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
    /// Clients that open the streams: `tonic` (this program), `grpcio`
    /// (Python; one-voice cases only).
    #[arg(long, value_delimiter = ',', default_value = "tonic,grpcio")]
    pub(crate) clients: Vec<String>,
    /// Runs of each case and client.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
}

/// Who opens the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Tonic,
    Grpcio,
}

impl Client {
    /// As `--clients` spells it.
    fn name(self) -> &'static str {
        match self {
            Client::Tonic => "tonic",
            Client::Grpcio => "grpcio",
        }
    }
}

/// Voices that complete in the burst.
const VOICES: u64 = 10;
/// Streams per HTTP/2 connection.
const PER_CONNECTION: usize = 100;

#[derive(Debug, Serialize)]
struct Point {
    case: String,
    client: &'static str,
    run: usize,
    streams: usize,
    open_seconds: f64,
    rss_before_mib: f64,
    rss_open_mib: f64,
    rss_per_stream_kib: f64,
    rss_closed_mib: f64,
    rss_settled_mib: f64,
    rss_settled_vs_before: f64,
    /// The burst's figures (tonic only).
    burst: Option<Burst>,
}

/// Commit → `emitted_at` and commit → received, and the client's ceiling.
#[derive(Debug, Serialize)]
#[allow(
    clippy::struct_field_names,
    reason = "the JSON's names carry their unit"
)]
struct Burst {
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
    let mut clients = Vec::new();
    for client in &args.clients {
        clients.push(match client.as_str() {
            "tonic" => Client::Tonic,
            "grpcio" => Client::Grpcio,
            other => bail!("unknown client {other:?}: tonic or grpcio"),
        });
    }
    let mut points = Vec::new();
    for run in 1..=args.runs {
        for (case, streams, all) in &cases {
            for &client in &clients {
                if client == Client::Grpcio && *all {
                    continue;
                }
                let point = measure(binary, case, (*streams, *all), client, args.settle).await?;
                println!(
                    "run {run}, {case}, {}: {:.1} KiB per stream, {:.2} × a minute after",
                    client.name(),
                    point.rss_per_stream_kib,
                    point.rss_settled_vs_before
                );
                points.push(Point { run, ..point });
            }
        }
    }
    report(out, &args, &points)
}

async fn measure(
    binary: &Path,
    case: &str,
    (streams, all): (usize, bool),
    client: Client,
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
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    let (open_seconds, rss_open, rss_closed, burst) = match client {
        Client::Tonic => {
            let (open_seconds, rss_open, rss_closed, heard) =
                burst(&server, &fake, (channels, &ids), (streams, all), case).await?;
            (open_seconds, rss_open, rss_closed, Some(heard))
        }
        Client::Grpcio => {
            let (open_seconds, rss_open, rss_closed) = grpcio(&server, &ids, streams).await?;
            drop(channels);
            (open_seconds, rss_open, rss_closed, None)
        }
    };
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let rss_settled = server.rss()?;
    let burst = match burst {
        Some(heard) => {
            // Last, so its streams do not count in the server's memory above.
            let ceiling = health_ceiling(&connections(&server, streams).await?, streams).await?;
            Some(latencies(&heard, ceiling)?)
        }
        None => None,
    };
    drop(server);
    Ok(Point {
        case: case.to_owned(),
        client: client.name(),
        run: 0,
        streams,
        open_seconds,
        rss_before_mib: mib(rss_before),
        rss_open_mib: mib(rss_open),
        rss_per_stream_kib: rss_open.saturating_sub(rss_before) as f64 / 1024.0 / streams as f64,
        rss_closed_mib: mib(rss_closed),
        rss_settled_mib: mib(rss_settled),
        rss_settled_vs_before: rss_settled as f64 / rss_before as f64,
        burst,
    })
}

/// Opens the streams with this program's tonic client, completes the ten
/// voices, waits until every stream heard it, and closes them: seconds to
/// open, RSS open and a second after closing, and what each stream heard.
async fn burst(
    server: &Server,
    fake: &FakeProvider,
    (channels, ids): (Vec<Channel>, &[Uuid]),
    (streams, all): (usize, bool),
    case: &str,
) -> anyhow::Result<(f64, u64, u64, Vec<Heard>)> {
    let heard = Arc::new(Mutex::new(Vec::with_capacity(streams)));
    let started = Instant::now();
    let readers = open_streams(&channels, ids, streams, all, &heard).await?;
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
    let heard = std::mem::take(&mut *heard.lock());
    Ok((open_seconds, rss_open, rss_closed, heard))
}

/// Opens the streams with Python grpcio (`bench/grpcio_watch.py`), a
/// hundred per connection, on the (not yet completing) voices, then
/// closes them: seconds to open, RSS open and a second after closing.
async fn grpcio(server: &Server, ids: &[Uuid], streams: usize) -> anyhow::Result<(f64, u64, u64)> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let token = bearer(&authenticator(), seeded_owner(0))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("grpcio_watch.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(server.addr.to_string())
        .arg(token.to_str()?)
        .arg(streams.to_string())
        .arg(streams.div_ceil(PER_CONNECTION).to_string())
        .args(ids.iter().map(Uuid::to_string))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("python3 {}: {e}", script.display()))?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut stdin = child.stdin.take().context("stdin")?;
    let line = |what: &'static str, line: Option<String>| {
        line.ok_or_else(|| anyhow::anyhow!("grpcio_watch.py exited before {what}"))
    };
    let open = line("opening", lines.next_line().await?)?;
    let open_seconds: f64 = open
        .strip_prefix("open ")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("grpcio_watch.py: {open}"))?;
    let rss_open = server.rss()?;
    stdin.write_all(b"close\n").await?;
    stdin.flush().await?;
    let closed = line("closing", lines.next_line().await?)?;
    if closed != "closed" {
        bail!("grpcio_watch.py: {closed}");
    }
    child.wait().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok((open_seconds, rss_open, server.rss()?))
}

/// The burst's percentiles from what the streams heard.
fn latencies(heard: &[Heard], client_ceiling_ms: f64) -> anyhow::Result<Burst> {
    let (mut server_side, mut e2e) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
    for h in heard {
        server_side.record(u64::try_from((h.emitted - h.committed).max(0))?)?;
        e2e.record(u64::try_from((h.received - h.committed).max(0))?)?;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    Ok(Burst {
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
    print_points(points);
    let worst = worst(points);
    print_worst(&worst);
    let goals = goals(&worst);
    print_goals(&goals);
    let json = serde_json::json!({
        "scenario": "fanout",
        "voices_completing": VOICES,
        "streams_per_connection": PER_CONNECTION,
        "settle_seconds": args.settle,
        "runs": args.runs,
        "points": points,
        "worst": worst,
        "goals": goals,
    });
    println!("wrote {}", write_json(out, "fanout", &json)?.display());
    let one_voice = |client: &'static str| -> Vec<&Worst> {
        worst
            .iter()
            .filter(|w| w.client == client && !w.case.contains("all"))
            .collect()
    };
    let line = |name: &str,
                client: &'static str,
                ceiling: bool,
                y: &dyn Fn(&Worst) -> Option<f64>| Series {
        name: name.into(),
        points: one_voice(client)
            .iter()
            .filter_map(|w| Some((w.streams as f64, y(w)?)))
            .collect(),
        ceiling,
    };
    let panels = [
        Panel {
            title: "server memory per open stream (worst run)".into(),
            x_label: "open streams".into(),
            y_label: "KiB".into(),
            log_x: true,
            series: vec![
                line("tonic client", "tonic", false, &|w| Some(w.kib_per_stream)),
                line("grpcio client", "grpcio", false, &|w| {
                    Some(w.kib_per_stream)
                }),
                line("goal: 10 KiB", "tonic", true, &|_| Some(10.0)),
            ],
        },
        Panel {
            title: "server RSS a minute after close ÷ before (worst run)".into(),
            x_label: "open streams".into(),
            y_label: "ratio".into(),
            log_x: true,
            series: vec![
                line("tonic client", "tonic", false, &|w| {
                    Some(w.settled_vs_before)
                }),
                line("grpcio client", "grpcio", false, &|w| {
                    Some(w.settled_vs_before)
                }),
                line("goal: 1.2", "tonic", true, &|_| Some(1.2)),
            ],
        },
        Panel {
            title: "burst of 10 completions: p99 latency (worst run)".into(),
            x_label: "open streams".into(),
            y_label: "ms".into(),
            log_x: true,
            series: vec![
                line("commit → emitted_at", "tonic", false, &|w| {
                    w.server_p99_ms
                }),
                line("commit → received", "tonic", false, &|w| w.e2e_p99_ms),
                line("client ceiling (N health watches)", "tonic", true, &|w| {
                    w.client_ceiling_ms
                }),
                line("goal: 100 ms server-side", "tonic", true, &|_| Some(100.0)),
            ],
        },
    ];
    println!(
        "wrote {}",
        write_chart(out, "fanout", 3, &panels)?.display()
    );
    Ok(())
}

/// Every run's figures.
fn print_points(points: &[Point]) {
    let mut table = Table::new(&[
        "case",
        "client",
        "run",
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
        let (server, e2e, ceiling) = p.burst.as_ref().map_or_else(
            || ("—".to_owned(), "—".to_owned(), "—".to_owned()),
            |b| {
                (
                    format!(
                        "{:.0} / {:.0} / {:.0}",
                        b.server_p50_ms, b.server_p99_ms, b.server_max_ms
                    ),
                    format!(
                        "{:.0} / {:.0} / {:.0}",
                        b.e2e_p50_ms, b.e2e_p99_ms, b.e2e_max_ms
                    ),
                    format!("{:.0}", b.client_ceiling_ms),
                )
            },
        );
        table.row(vec![
            p.case.clone(),
            p.client.to_owned(),
            p.run.to_string(),
            format!("{:.1}", p.open_seconds),
            format!("{:.1} MiB", p.rss_before_mib),
            format!("{:.1} MiB", p.rss_open_mib),
            format!("{:.1}", p.rss_per_stream_kib),
            format!("{:.1} MiB", p.rss_closed_mib),
            format!("{:.1} MiB", p.rss_settled_mib),
            format!("{:.2}", p.rss_settled_vs_before),
            server,
            e2e,
            ceiling,
        ]);
    }
    table.print();
}

/// The worst run of each case and client.
fn print_worst(worst: &[Worst]) {
    let mut worst_table = Table::new(&[
        "case",
        "client",
        "runs",
        "worst KiB/stream",
        "worst ÷before +1 min",
        "worst commit→emitted p99 ms",
    ]);
    for w in worst {
        worst_table.row(vec![
            w.case.clone(),
            w.client.to_owned(),
            w.runs.to_string(),
            format!("{:.1}", w.kib_per_stream),
            format!("{:.2}", w.settled_vs_before),
            w.server_p99_ms.map_or("—".into(), |ms| format!("{ms:.0}")),
        ]);
    }
    worst_table.print();
}

/// The worst of a case's runs with one client.
#[derive(Debug, Serialize)]
struct Worst {
    case: String,
    client: &'static str,
    streams: usize,
    runs: usize,
    kib_per_stream: f64,
    settled_vs_before: f64,
    server_p99_ms: Option<f64>,
    e2e_p99_ms: Option<f64>,
    client_ceiling_ms: Option<f64>,
}

fn worst(points: &[Point]) -> Vec<Worst> {
    let mut worst: Vec<Worst> = Vec::new();
    for p in points {
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let burst = |f: fn(&Burst) -> f64| p.burst.as_ref().map(f);
        match worst
            .iter_mut()
            .find(|w| w.case == p.case && w.client == p.client)
        {
            Some(w) => {
                w.runs += 1;
                w.kib_per_stream = w.kib_per_stream.max(p.rss_per_stream_kib);
                w.settled_vs_before = w.settled_vs_before.max(p.rss_settled_vs_before);
                w.server_p99_ms = max(w.server_p99_ms, burst(|b| b.server_p99_ms));
                w.e2e_p99_ms = max(w.e2e_p99_ms, burst(|b| b.e2e_p99_ms));
                w.client_ceiling_ms = max(w.client_ceiling_ms, burst(|b| b.client_ceiling_ms));
            }
            None => worst.push(Worst {
                case: p.case.clone(),
                client: p.client,
                streams: p.streams,
                runs: 1,
                kib_per_stream: p.rss_per_stream_kib,
                settled_vs_before: p.rss_settled_vs_before,
                server_p99_ms: burst(|b| b.server_p99_ms),
                e2e_p99_ms: burst(|b| b.e2e_p99_ms),
                client_ceiling_ms: burst(|b| b.client_ceiling_ms),
            }),
        }
    }
    worst
}

/// The scenario's goals, each with the worst run measured and whether it is met.
fn goals(worst: &[Worst]) -> serde_json::Value {
    let at_10k: Vec<&Worst> = worst
        .iter()
        .filter(|w| w.streams == 10_000 && w.server_p99_ms.is_some())
        .collect();
    let label = |w: &Worst| format!("{}, {}, worst of {}", w.case, w.client, w.runs);
    serde_json::json!([
        {
            "what": "≤ 10 KiB RSS per open stream, whatever the client",
            "measured": worst.iter().map(|w| format!("{:.1} KiB ({})", w.kib_per_stream, label(w))).collect::<Vec<_>>(),
            "met": worst.iter().all(|w| w.kib_per_stream <= 10.0),
        },
        {
            "what": "RSS within 20 % of its pre-open level a minute after the streams close",
            "measured": worst.iter().map(|w| format!("{:.2}× ({})", w.settled_vs_before, label(w))).collect::<Vec<_>>(),
            "met": worst.iter().all(|w| w.settled_vs_before <= 1.2),
        },
        {
            "what": "server-side commit → emitted_at p99 ≤ 100 ms at 10k streams",
            "measured": at_10k.iter().map(|w| format!("{:.0} ms ({})", w.server_p99_ms.unwrap_or(f64::NAN), label(w))).collect::<Vec<_>>(),
            "met": !at_10k.is_empty() && at_10k.iter().all(|w| w.server_p99_ms.is_some_and(|ms| ms <= 100.0)),
        },
    ])
}
