//! **scale**: the read path (GetVoice, ListUserVoices(20, OWNED)) on 1, 2
//! and 3 replicas sharing one PostgreSQL (and one Redis), the same total
//! load spread evenly over them. Reported per point: the rate and its ratio
//! to one replica, p99, the replicas' CPU per call and PostgreSQL's (its
//! backends serving this database, from `/proc`). Their quotient is how many
//! replica CPUs one PostgreSQL CPU keeps busy on this path: the figure that
//! says when PostgreSQL, not the replicas, becomes the limit.

use std::{path::Path, sync::Arc, time::Duration};

use serde::Serialize;
use tonic::transport::Channel;

use super::read::{Rpc, rpc_call, seed};
use crate::{
    load::closed_loop,
    report::{Panel, Series, Table, write_chart, write_json},
    server::{Server, cpu_of, new_postgres_database, production_env},
};

/// The settings of one `scale` run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ScaleArgs {
    /// Voices in the catalogue.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) voices: u64,
    /// Users owning them.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) users: u64,
    /// Calls in flight, in all (spread over the replicas).
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Measured seconds per point (after a warm-up of a fifth of it).
    #[arg(long, default_value_t = 5.0)]
    pub(crate) seconds: f64,
}

#[derive(Debug, Serialize)]
struct Point {
    replicas: usize,
    rpc: &'static str,
    rate: f64,
    ratio_to_one: f64,
    p99_ms: f64,
    errors: u64,
    replica_cpu_us_per_call: f64,
    postgres_cpu_us_per_call: f64,
    /// Replica CPU per PostgreSQL CPU on this path.
    replica_cpus_per_postgres_cpu: f64,
}

/// CPU time so far of the PostgreSQL backends connected to database `name`.
fn postgres_cpu(name: &str) -> Duration {
    let mut total = Duration::ZERO;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        // A backend names its database: `postgres: USER DB HOST(PORT) STATE`.
        if cmdline.starts_with("postgres: ") && cmdline.split_whitespace().any(|w| w == name) {
            total += cpu_of(pid).unwrap_or_default();
        }
    }
    total
}

/// Runs the scenario and writes `scale.json` and `scale.svg` into `out`.
pub(crate) async fn run(binary: &Path, out: &Path, args: ScaleArgs) -> anyhow::Result<()> {
    let (name, url, pool) = new_postgres_database().await?;
    pool.close().await;
    let env = production_env("scale", url.clone())?;
    // The first replica migrates the database; the catalogue goes in after.
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut servers = vec![Server::start(binary, dirs[0].path(), &env).await?];
    let catalogue = seed(&url, args.voices, args.users).await?;
    for dir in &dirs[1..] {
        servers.push(Server::start(binary, dir.path(), &env).await?);
    }
    let (voices, users) = catalogue.with_tokens()?;
    let measure = Duration::from_secs_f64(args.seconds);
    let mut points: Vec<Point> = Vec::new();
    for replicas in 1..=3 {
        // Sixteen calls per connection, the connections dealt over the replicas.
        let mut channels: Vec<Channel> = Vec::new();
        for i in 0..args.concurrency.div_ceil(16).max(replicas) {
            channels.push(servers[i % replicas].channel().await?);
        }
        let channels = Arc::new(channels);
        for rpc in [Rpc::GetVoice, Rpc::ListOwned] {
            let cpu_of_replicas = || -> anyhow::Result<Duration> {
                servers[..replicas].iter().map(Server::cpu).sum()
            };
            let (replicas_before, postgres_before) = (cpu_of_replicas()?, postgres_cpu(&name));
            let run = closed_loop(
                args.concurrency,
                measure / 5,
                measure,
                rpc_call(rpc, &channels, &voices, &users),
            )
            .await;
            let calls = run.total.max(1) as f64;
            let replica_us = cpu_of_replicas()?
                .saturating_sub(replicas_before)
                .as_secs_f64()
                * 1e6
                / calls;
            let postgres_us = postgres_cpu(&name)
                .saturating_sub(postgres_before)
                .as_secs_f64()
                * 1e6
                / calls;
            let one = points
                .iter()
                .find(|p| p.replicas == 1 && p.rpc == rpc.name())
                .map_or(run.rate(), |p| p.rate);
            points.push(Point {
                replicas,
                rpc: rpc.name(),
                rate: run.rate(),
                ratio_to_one: run.rate() / one.max(f64::EPSILON),
                p99_ms: run.ms(0.99),
                errors: run.errors,
                replica_cpu_us_per_call: replica_us,
                postgres_cpu_us_per_call: postgres_us,
                replica_cpus_per_postgres_cpu: replica_us / postgres_us.max(f64::EPSILON),
            });
            let p = points.last().expect("just pushed");
            println!(
                "{replicas} replica(s) {}: {:.0}/s ({:.2} × one) p99 {:.2} ms, replicas {:.0} µs + PostgreSQL {:.0} µs CPU per call",
                p.rpc, p.rate, p.ratio_to_one, p.p99_ms, replica_us, postgres_us
            );
        }
    }
    report(out, &args, &points)
}

fn report(out: &Path, args: &ScaleArgs, points: &[Point]) -> anyhow::Result<()> {
    let mut table = Table::new(&[
        "replicas",
        "rpc",
        "req/s",
        "× one",
        "p99 ms",
        "errors",
        "replica µs",
        "pg µs",
        "replica/pg",
    ]);
    for p in points {
        table.row(vec![
            p.replicas.to_string(),
            p.rpc.to_owned(),
            format!("{:.0}", p.rate),
            format!("{:.2}", p.ratio_to_one),
            format!("{:.2}", p.p99_ms),
            p.errors.to_string(),
            format!("{:.0}", p.replica_cpu_us_per_call),
            format!("{:.0}", p.postgres_cpu_us_per_call),
            format!("{:.1}", p.replica_cpus_per_postgres_cpu),
        ]);
    }
    table.print();
    let json = serde_json::json!({
        "scenario": "scale",
        "voices": args.voices,
        "users": args.users,
        "concurrency": args.concurrency,
        "seconds_per_point": args.seconds,
        "cpus": std::thread::available_parallelism().map_or(1, usize::from),
        "points": points,
    });
    println!("wrote {}", write_json(out, "scale", &json)?.display());
    let series = |rpc: Rpc| Series {
        name: rpc.name().into(),
        points: points
            .iter()
            .filter(|p| p.rpc == rpc.name())
            .map(|p| (p.replicas as f64, p.rate))
            .collect(),
        ceiling: false,
    };
    let panel = Panel {
        title: format!(
            "scale: {} calls in flight over 1-3 replicas, one PostgreSQL",
            args.concurrency
        ),
        x_label: "replicas".into(),
        y_label: "req/s".into(),
        log_x: false,
        series: vec![series(Rpc::GetVoice), series(Rpc::ListOwned)],
    };
    println!(
        "wrote {}",
        write_chart(out, "scale", 1, &[panel])?.display()
    );
    Ok(())
}
