//! **sync**: the status engine draining a backlog. 100,000 PROCESSING voices
//! are written to PostgreSQL before the server starts (so its start-up
//! reconciliation puts them all on the Redis due-queue); the fake provider
//! answers every check in 20 ms with "ready". The server runs with the
//! provider concurrency under test (`ELEVENLABS_MAX_CONCURRENCY`).
//!
//! Measured over a window once the drain is under way: checks per second
//! (voices the fake answered about, alone or in lookups of up to 100, with
//! the requests that took), server CPU per check (from `/proc`), and SQL
//! statements per claimed batch (`pg_stat_statements`; a batch is one call
//! of the batch read, `SELECT … WHERE id IN (…)`).
//!
//! Ceiling, in the same run: the fake provider's own rate of single-voice
//! GETs at that concurrency, driven by a closed loop of plain HTTP GETs: the
//! most a checker asking about one voice per request could reach.

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sea_orm::{Database, EntityTrait, IntoActiveModel};
use serde::Serialize;
use uuid::Uuid;
use voicehub::store::{Voice, VoiceStatus, entity::voice};

use crate::{
    fake_provider::FakeProvider,
    load::{Call, closed_loop},
    report::{Panel, Series, Table, print_goals, write_chart, write_json},
    scenarios::read::catalogue_voice,
    server::{
        Server, busy_share, machine_ticks, new_postgres_database, production_env, statement_calls,
        wait_until,
    },
};

/// The settings of one `sync` run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SyncArgs {
    /// PROCESSING voices written before each server starts.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) voices: u64,
    /// Provider concurrencies to measure (`ELEVENLABS_MAX_CONCURRENCY`).
    #[arg(long, value_delimiter = ',', default_values_t = [4, 32, 128])]
    pub(crate) concurrency: Vec<usize>,
    /// The fake provider's answer time, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub(crate) latency_ms: u64,
    /// Voices one step claims, as a multiple of the concurrency (`VOICEHUB_SYNC_BATCH`).
    #[arg(long, default_value_t = 4)]
    pub(crate) batch_factor: usize,
    /// Longest measured window per concurrency, in seconds (less if the backlog drains first).
    #[arg(long, default_value_t = 30)]
    pub(crate) seconds: u64,
}

#[derive(Debug, Serialize)]
struct Point {
    concurrency: usize,
    batch: usize,
    checks: u64,
    seconds: f64,
    checks_per_second: f64,
    /// Provider requests the checks took (a lookup of many voices is one).
    requests: u64,
    checks_per_request: f64,
    ceiling_per_second: f64,
    ratio: f64,
    /// Share of the whole machine's CPU that was busy (server, databases, fake, benchmark).
    machine_busy: f64,
    server_cpu_us_per_check: f64,
    batches: i64,
    sql_statements: i64,
    sql_per_batch: f64,
    sql_by_statement: BTreeMap<String, i64>,
}

/// Runs the scenario and writes `sync.json` and `sync.svg` into `out`.
pub(crate) async fn run(binary: &Path, out: &Path, args: SyncArgs) -> anyhow::Result<()> {
    let latency = Duration::from_millis(args.latency_ms);
    let mut points = Vec::new();
    for &concurrency in &args.concurrency {
        let fake = FakeProvider::start(latency, Duration::ZERO..Duration::ZERO).await?;
        let ceiling = provider_ceiling(&fake, concurrency).await?;
        points.push(drain(binary, &fake, concurrency, ceiling, &args).await?);
    }
    report(out, &args, &points)
}

/// The fake's own rate at `concurrency`: GETs in a closed loop, for 5 s.
async fn provider_ceiling(fake: &FakeProvider, concurrency: usize) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/voices/ceiling", fake.url);
    let call: Call = Arc::new(move |_| {
        let request = http.get(&url).send();
        Box::pin(async move {
            request.await?.error_for_status()?.bytes().await?;
            Ok(())
        })
    });
    let run = closed_loop(
        concurrency,
        Duration::from_secs(1),
        Duration::from_secs(5),
        call,
    )
    .await;
    Ok(run.rate())
}

async fn drain(
    binary: &Path,
    fake: &FakeProvider,
    concurrency: usize,
    ceiling: f64,
    args: &SyncArgs,
) -> anyhow::Result<Point> {
    let (name, url, pool) = new_postgres_database().await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await?;
    let dir = tempfile::tempdir()?;
    migrate(binary, dir.path(), &url)?;
    seed(&url, args.voices, 1_000).await?;

    let batch = concurrency * args.batch_factor;
    let mut env = fake.env();
    env.extend(production_env("sync", url)?);
    env.extend([
        ("ELEVENLABS_MAX_CONCURRENCY", concurrency.to_string()),
        ("VOICEHUB_SYNC_BATCH", batch.to_string()),
    ]);
    let server = Server::start(binary, dir.path(), &env).await?;

    // The window opens once 1 % of the backlog is checked (start-up and the
    // reconciliation of the whole backlog are behind us) and closes after
    // `seconds` or when all but 1 % are checked, whichever comes first.
    let (open_at, close_at) = (args.voices / 100, args.voices - args.voices / 100);
    let before = fake.answered();
    let opened = || fake.answered() - before >= open_at;
    if !wait_until(Duration::from_mins(5), Duration::from_millis(5), opened).await {
        bail!("the status engine checked 1 % of the backlog not within five minutes");
    }
    let (answered0, gets0, machine0, cpu0, sql0, t0) = (
        fake.answered(),
        fake.gets(),
        machine_ticks()?,
        server.cpu()?,
        statement_calls(&pool, &name).await?,
        Instant::now(),
    );
    let window = Duration::from_secs(args.seconds);
    // The window closes on time or when the backlog is (almost) checked.
    wait_until(window, Duration::from_millis(5), || {
        fake.answered() - before >= close_at
    })
    .await;
    let (answered1, gets1, machine1, cpu1, sql1, seconds) = (
        fake.answered(),
        fake.gets(),
        machine_ticks()?,
        server.cpu()?,
        statement_calls(&pool, &name).await?,
        t0.elapsed().as_secs_f64(),
    );
    drop(server);
    pool.close().await;

    let mut by_statement = BTreeMap::new();
    for (query, calls) in &sql1 {
        let delta = calls - sql0.get(query).copied().unwrap_or(0);
        if delta > 0 {
            *by_statement.entry(statement_kind(query)).or_insert(0) += delta;
        }
    }
    let batches = by_statement.get("batch read").copied().unwrap_or(0);
    let statements: i64 = by_statement.values().sum();
    let checks = answered1 - answered0;
    let requests = gets1 - gets0;
    let rate = checks as f64 / seconds;
    Ok(Point {
        concurrency,
        batch,
        checks,
        seconds,
        checks_per_second: rate,
        requests,
        checks_per_request: checks as f64 / requests.max(1) as f64,
        ceiling_per_second: ceiling,
        ratio: rate / ceiling,
        machine_busy: busy_share(machine0, machine1),
        server_cpu_us_per_check: cpu1.saturating_sub(cpu0).as_secs_f64() * 1e6 / checks as f64,
        batches,
        sql_statements: statements,
        sql_per_batch: statements as f64 / batches.max(1) as f64,
        sql_by_statement: by_statement,
    })
}

/// A short name for a normalised statement of the status engine.
fn statement_kind(query: &str) -> String {
    let query = query.trim_start();
    if query.starts_with("SELECT") && query.contains("\"voices\".\"id\" IN (") {
        "batch read".into()
    } else if query.starts_with("UPDATE") {
        "update".into()
    } else {
        query.chars().take(40).collect()
    }
}

/// The `n`th owner of the voices [`seed`] writes.
pub(crate) fn seeded_owner(n: u64) -> Uuid {
    Uuid::from_u128(0x5eed_0000_7000_8000_0000_0000_0000_0000 | u128::from(n))
}

/// `voicehub migrate` against `url`: the schema, before any row is written.
pub(crate) fn migrate(binary: &Path, dir: &Path, url: &str) -> anyhow::Result<()> {
    let status = Command::new(binary)
        .current_dir(dir)
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .status()
        .context("running voicehub migrate")?;
    if !status.success() {
        bail!("voicehub migrate failed");
    }
    Ok(())
}

/// Writes `voices` PROCESSING voices of `owners` owners, each with a provider
/// voice id, created just now, as the server writes them (through SeaORM).
pub(crate) async fn seed(url: &str, voices: u64, owners: u64) -> anyhow::Result<()> {
    const BATCH: u64 = 1_000;
    let db = Database::connect(url).await?;
    let now = voicehub::store::now();
    let txn = sea_orm::TransactionTrait::begin(&db).await?;
    for first in (0..voices).step_by(usize::try_from(BATCH)?) {
        let rows: Vec<voice::ActiveModel> = (first..(first + BATCH).min(voices))
            .map(|i| {
                let owner = seeded_owner(i % owners);
                Voice {
                    status: VoiceStatus::Processing,
                    completed_at: None,
                    preview_url: None,
                    processing_deadline: Some(now + chrono::Duration::hours(1)),
                    ..catalogue_voice(owner, i, now)
                }
                .into_active_model()
            })
            .collect();
        voice::Entity::insert_many(rows).exec(&txn).await?;
    }
    txn.commit().await?;
    sea_orm::ConnectionTrait::execute_unprepared(&db, "ANALYZE voices").await?;
    db.close().await?;
    Ok(())
}

fn report(out: &Path, args: &SyncArgs, points: &[Point]) -> anyhow::Result<()> {
    let mut table = Table::new(&[
        "conc",
        "batch",
        "checks",
        "checks/s",
        "checks/request",
        "provider/s",
        "ratio",
        "machine busy",
        "cpu µs/check",
        "batches",
        "SQL/batch",
        "SQL by statement",
    ]);
    for p in points {
        table.row(vec![
            p.concurrency.to_string(),
            p.batch.to_string(),
            p.checks.to_string(),
            format!("{:.0}", p.checks_per_second),
            format!("{:.1}", p.checks_per_request),
            format!("{:.0}", p.ceiling_per_second),
            format!("{:.2}", p.ratio),
            format!("{:.0} %", p.machine_busy * 100.0),
            format!("{:.0}", p.server_cpu_us_per_check),
            p.batches.to_string(),
            format!("{:.2}", p.sql_per_batch),
            format!("{:?}", p.sql_by_statement),
        ]);
    }
    table.print();
    let goals = goals(points);
    print_goals(&goals);
    let json = serde_json::json!({
        "scenario": "sync",
        "voices": args.voices,
        "provider_latency_ms": args.latency_ms,
        "batch_factor": args.batch_factor,
        "points": points,
        "goals": goals,
    });
    println!("wrote {}", write_json(out, "sync", &json)?.display());
    let line = |name: &str, ceiling: bool, y: &dyn Fn(&Point) -> f64| Series {
        name: name.into(),
        points: points
            .iter()
            .map(|p| (p.concurrency as f64, y(p)))
            .collect(),
        ceiling,
    };
    let panels = [
        Panel {
            title: format!("checks per second ({} ms provider)", args.latency_ms),
            x_label: "provider concurrency".into(),
            y_label: "checks / s".into(),
            log_x: true,
            series: vec![
                line("voicehub", false, &|p| p.checks_per_second),
                line("fake provider's own rate", true, &|p| p.ceiling_per_second),
            ],
        },
        Panel {
            title: "server CPU per check".into(),
            x_label: "provider concurrency".into(),
            y_label: "µs".into(),
            log_x: true,
            series: vec![
                line("voicehub", false, &|p| p.server_cpu_us_per_check),
                line("goal: 100 µs", true, &|_| 100.0),
            ],
        },
        Panel {
            title: "SQL statements per claimed batch".into(),
            x_label: "provider concurrency (batch = 4 × it)".into(),
            y_label: "statements".into(),
            log_x: true,
            series: vec![line("voicehub", false, &|p| p.sql_per_batch)],
        },
    ];
    println!("wrote {}", write_chart(out, "sync", 3, &panels)?.display());
    Ok(())
}

/// The scenario's goals, each with what was measured and whether it is met.
fn goals(points: &[Point]) -> serde_json::Value {
    let sql_per_batch: Vec<f64> = points.iter().map(|p| p.sql_per_batch).collect();
    let spread = sql_per_batch.iter().copied().fold(0.0, f64::max)
        - sql_per_batch.iter().copied().fold(f64::MAX, f64::min);
    serde_json::json!([
        {
            "what": "checks ≥ 0.9 × the provider's own rate",
            "measured": points.iter().map(|p| format!("{:.2} at {}", p.ratio, p.concurrency)).collect::<Vec<_>>(),
            "met": points.iter().all(|p| p.ratio >= 0.9),
        },
        {
            "what": "server CPU per check ≤ 100 µs",
            "measured": points.iter().map(|p| format!("{:.0} µs at {}", p.server_cpu_us_per_check, p.concurrency)).collect::<Vec<_>>(),
            "met": points.iter().all(|p| p.server_cpu_us_per_check <= 100.0),
        },
        {
            "what": "SQL statements per claimed batch independent of the batch size",
            "measured": points.iter().map(|p| format!("{:.2} per batch of {}", p.sql_per_batch, p.batch)).collect::<Vec<_>>(),
            "met": spread < 0.5,
        },
    ])
}
