//! **idle**: a server on PostgreSQL and Redis with an empty due-queue, left
//! alone for a minute. Counted from the outside: SQL statements run in
//! voicehub's database (`pg_stat_statements`), its transactions
//! (`pg_stat_database`, which also counts autovacuum's visits), and Redis
//! commands (`INFO commandstats`, which also counts the commands a Lua
//! script runs, less this scenario's own calls).
//!
//! PostgreSQL's own background work (autovacuum's visits) counts as
//! transactions too, so a control database, migrated by `voicehub migrate`
//! and served by nobody, is watched over the same window: what voicehub's
//! database counts beyond it is voicehub's.
//!
//! Baseline, run in the same window against the same Redis: the seed's
//! design, which polled `SMEMBERS` of a set every 60 s and ran one `SELECT`
//! per member (none here: the queue is empty).

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{
    report::{Panel, Series, Table, write_chart, write_json},
    server::{Server, new_postgres_database, production_env, service_url, statement_calls},
};

/// The settings of one `idle` run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct IdleArgs {
    /// How long to watch the idle server.
    #[arg(long, default_value_t = 60)]
    pub(crate) seconds: u64,
    /// Seconds to let start-up work (migration, queue reconciliation) finish
    /// first, and be counted: an idle PostgreSQL backend reports its
    /// counters up to 10 s late (`PGSTAT_IDLE_INTERVAL`), so a shorter wait
    /// counts start-up transactions in the window.
    #[arg(long, default_value_t = 15)]
    pub(crate) settle: u64,
}

#[derive(Debug, Serialize)]
struct Figures {
    sql_statements: i64,
    sql_transactions: i64,
    sql_per_second: f64,
    control_transactions: i64,
    redis_commands: i64,
    redis_per_second: f64,
    redis_by_command: BTreeMap<String, i64>,
    baseline_redis_commands: i64,
    baseline_sql: i64,
}

/// Runs the scenario and writes `idle.json` and `idle.svg` into `out`.
pub(crate) async fn run(binary: &Path, out: &Path, args: IdleArgs) -> anyhow::Result<()> {
    let redis = service_url("VOICEHUB_BENCH_REDIS_URL")?;
    let (name, url, pool) = new_postgres_database().await?;
    let (control, control_url, _) = new_postgres_database().await?;
    let status = Command::new(binary)
        .arg("migrate")
        .env("DATABASE_URL", &control_url)
        .status()
        .context("running voicehub migrate on the control database")?;
    if !status.success() {
        bail!("voicehub migrate on the control database failed: {status}");
    }
    let env = production_env("idle", url)?;
    let prefix = env
        .iter()
        .find(|(var, _)| *var == "VOICEHUB_REDIS_PREFIX")
        .map(|(_, prefix)| prefix.clone())
        .context("the server's Redis prefix")?;
    let dir = tempfile::tempdir()?;
    let _server = Server::start(binary, dir.path(), &env).await?;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;

    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await?;
    let (sql_before, redis_before) = (transactions(&pool, &name).await?, command_stats(&redis)?);
    let control_before = transactions(&pool, &control).await?;
    let statements_before = statements(&pool, &name).await?;
    let baseline_key = format!("{prefix}:seed-design-set");
    let started = Instant::now();
    let mut baseline_redis = 0;
    // The seed's design: SMEMBERS every 60 s (the first at once), a SELECT per member.
    while started.elapsed() < Duration::from_secs(args.seconds) {
        let members = redis_cli(&redis, &["SMEMBERS", &baseline_key])?;
        baseline_redis += 1;
        if !members.trim().is_empty() {
            bail!("the baseline's set should be empty");
        }
        let left = Duration::from_secs(args.seconds).saturating_sub(started.elapsed());
        tokio::time::sleep(left.min(Duration::from_mins(1))).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await; // let the last stats report land
    let (sql_after, redis_after) = (transactions(&pool, &name).await?, command_stats(&redis)?);
    let control_transactions = transactions(&pool, &control).await? - control_before;
    let statements_run = statements(&pool, &name).await? - statements_before;

    let mut by_command = BTreeMap::new();
    for (command, calls) in &redis_after {
        let delta = calls - redis_before.get(command).copied().unwrap_or(0);
        if delta > 0 {
            by_command.insert(command.clone(), delta);
        }
    }
    // This scenario's own calls: its two INFOs and the baseline's SMEMBERS.
    if let Some(info) = by_command.get_mut("info") {
        *info -= 1;
    }
    if let Some(smembers) = by_command.get_mut("smembers") {
        *smembers -= baseline_redis;
    }
    by_command.retain(|_, calls| *calls > 0);
    let redis_commands: i64 = by_command.values().sum();
    let sql = sql_after - sql_before;
    let figures = Figures {
        sql_statements: statements_run,
        sql_transactions: sql,
        sql_per_second: sql as f64 / elapsed,
        control_transactions,
        redis_commands,
        redis_per_second: redis_commands as f64 / elapsed,
        redis_by_command: by_command,
        baseline_redis_commands: baseline_redis,
        baseline_sql: 0,
    };
    report(out, elapsed, &figures)
}

/// Prints the table and writes `idle.json` and `idle.svg`.
fn report(out: &Path, elapsed: f64, figures: &Figures) -> anyhow::Result<()> {
    let (statements, sql, redis_commands, baseline_redis) = (
        figures.sql_statements,
        figures.sql_transactions,
        figures.redis_commands,
        figures.baseline_redis_commands,
    );
    let mut table = Table::new(&[
        "figure",
        "voicehub",
        "seed's design (same window)",
        "goal",
        "met",
    ]);
    table.row(vec![
        "SQL statements / s".into(),
        format!(
            "{:.3} ({statements} in {elapsed:.0} s)",
            statements as f64 / elapsed
        ),
        "0.000 (no member to SELECT)".into(),
        "0".into(),
        if statements == 0 { "yes" } else { "NO" }.into(),
    ]);
    let control = figures.control_transactions;
    table.row(vec![
        "transactions / s (autovacuum included)".into(),
        format!(
            "{:.3} ({sql} in {elapsed:.0} s; a control database nobody serves: {control})",
            figures.sql_per_second
        ),
        "—".into(),
        "—".into(),
        "—".into(),
    ]);
    table.row(vec![
        "Redis commands / s".into(),
        format!(
            "{:.3} ({redis_commands}: {:?})",
            figures.redis_per_second, figures.redis_by_command
        ),
        format!(
            "{:.3} ({baseline_redis} SMEMBERS)",
            baseline_redis as f64 / elapsed
        ),
        "≤ 0.5".into(),
        if figures.redis_per_second <= 0.5 {
            "yes"
        } else {
            "NO"
        }
        .into(),
    ]);
    table.print();
    let json = serde_json::json!({
        "scenario": "idle",
        "seconds": elapsed,
        "goals": {"sql_statements_per_second": 0, "redis_per_second": 0.5},
        "figures": figures,
    });
    println!("wrote {}", write_json(out, "idle", &json)?.display());
    let bars = |value: f64| vec![(1.0, value), (2.0, value)];
    let panels = [Panel {
        title: format!("idle for {elapsed:.0} s: commands per second"),
        x_label: "(flat over the window)".into(),
        y_label: "per second".into(),
        log_x: false,
        series: vec![
            Series {
                name: "voicehub: Redis commands".into(),
                points: bars(figures.redis_per_second),
                ceiling: false,
            },
            Series {
                name: "voicehub: SQL statements".into(),
                points: bars(statements as f64 / elapsed),
                ceiling: false,
            },
            Series {
                name: "seed's design: Redis commands".into(),
                points: bars(baseline_redis as f64 / elapsed),
                ceiling: true,
            },
            Series {
                name: "goal: Redis ≤ 0.5/s".into(),
                points: bars(0.5),
                ceiling: true,
            },
        ],
    }];
    println!("wrote {}", write_chart(out, "idle", 1, &panels)?.display());
    Ok(())
}

/// Committed plus rolled-back transactions of database `name` so far.
async fn transactions(pool: &sqlx::PgPool, name: &str) -> anyhow::Result<i64> {
    // Statistics are read from a snapshot per transaction; each query here is its own.
    let (commit, rollback): (i64, i64) = sqlx::query_as(
        "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await?;
    Ok(commit + rollback)
}

/// Statements run in database `name` so far, as pg_stat_statements counts them.
async fn statements(pool: &sqlx::PgPool, name: &str) -> anyhow::Result<i64> {
    Ok(statement_calls(pool, name).await?.values().sum())
}

/// `redis-cli -u URL ARGS…`'s output.
fn redis_cli(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .output()
        .context("running redis-cli")?;
    if !output.status.success() {
        bail!(
            "redis-cli {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Calls per command from `INFO commandstats` (`cmdstat_xread:calls=12,…`).
fn command_stats(url: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let info = redis_cli(url, &["INFO", "commandstats"])?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect())
}
