//! A voicehub server process under test: the release binary, started with
//! the environment a scenario gives it, known by its address and pid, and
//! measured from `/proc` (CPU time, resident memory) the way an operator
//! would see it. A process of its own, so its CPU time is the server's alone.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The HS256 secret every benchmark server signs tokens with.
pub(crate) const JWT_SECRET: &str = "bench-secret-bench-secret-bench-secret!";

/// A bearer token as gRPC metadata.
pub(crate) type Token = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// Mints tokens the benchmark servers accept.
pub(crate) fn authenticator() -> voicehub::auth::Authenticator {
    voicehub::auth::Authenticator::new(&voicehub::auth::AuthConfig {
        secret: secrecy::SecretString::from(JWT_SECRET.to_owned()),
        issuer: None,
        audience: None,
        development: false,
    })
}

/// `Bearer <token>` for `user`, valid for four hours.
pub(crate) fn bearer(
    auth: &voicehub::auth::Authenticator,
    user: uuid::Uuid,
) -> anyhow::Result<Token> {
    Ok(format!("Bearer {}", auth.mint(user, Duration::from_hours(4))?).parse()?)
}

/// The consent every benchmark create attests (one is required by default).
pub(crate) fn consent() -> voicehub::pb::Consent {
    use voicehub::pb::{Consent, ConsentBasis, consent::Statement};
    Consent {
        speaker_name: "Benchmark speaker".into(),
        basis: ConsentBasis::SpeakerIsCaller.into(),
        statement: Some(Statement::StatementText(
            "I am the speaker and agree to this clone.".into(),
        )),
        ..Consent::default()
    }
}

/// The URL of the services `scripts/bench` started: `VOICEHUB_BENCH_PG_URL`
/// or `VOICEHUB_BENCH_REDIS_URL`.
pub(crate) fn service_url(variable: &str) -> anyhow::Result<String> {
    std::env::var(variable)
        .with_context(|| format!("{variable} is not set: run this scenario through scripts/bench"))
}

/// The environment of a production-shaped server: PostgreSQL at
/// `database_url`, the Redis `scripts/bench` started, and a key prefix of
/// its own (`<scenario><random>`) so runs never share a queue or stream.
pub(crate) fn production_env(
    scenario: &str,
    database_url: String,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    Ok(vec![
        ("DATABASE_URL", database_url),
        ("REDIS_URL", service_url("VOICEHUB_BENCH_REDIS_URL")?),
        (
            "VOICEHUB_REDIS_PREFIX",
            format!("{scenario}{}", uuid::Uuid::new_v4().simple()),
        ),
    ])
}

/// Polls `done` every `every` until it holds (true) or `limit` has passed (false).
pub(crate) async fn wait_until(limit: Duration, every: Duration, done: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(every).await;
    }
    true
}

/// A new, empty database on the PostgreSQL `scripts/bench` started: its
/// name and URL, and an administrative pool on the server.
pub(crate) async fn new_postgres_database() -> anyhow::Result<(String, String, sqlx::PgPool)> {
    let admin = service_url("VOICEHUB_BENCH_PG_URL")?;
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await?;
    let base = admin.rsplit_once('/').context("a database URL")?.0;
    let url = format!("{base}/{name}");
    Ok((name, url, pool))
}

/// Calls so far of each statement run in database `name`, keyed by its
/// normalised text, as `pg_stat_statements` counts them.
pub(crate) async fn statement_calls(
    pool: &sqlx::PgPool,
    name: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT query, sum(calls)::bigint FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1) GROUP BY query",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Builds the release `voicehub` binary (a no-op when it is up to date) and
/// returns its path, beside this benchmark's own executable.
pub(crate) fn build_binary() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "voicehub",
            "--bin",
            "voicehub",
        ])
        .status()
        .context("running cargo build for the voicehub binary")?;
    if !status.success() {
        bail!("cargo build --release --bin voicehub failed");
    }
    let dir = std::env::current_exe()?
        .parent()
        .context("the benchmark's directory")?
        .to_owned();
    let binary = dir.join("voicehub");
    if !binary.exists() {
        bail!("{} is missing after the build", binary.display());
    }
    Ok(binary)
}

/// A running voicehub process.
pub(crate) struct Server {
    child: Child,
    /// Where it serves gRPC.
    pub(crate) addr: SocketAddr,
    /// From `exec` to the first Health/Check that answered SERVING.
    pub(crate) started_in: Duration,
}

impl Server {
    /// Starts `binary serve` in `dir` with `env` (on top of a clean voicehub
    /// environment), waits for its bound address in the log, then for
    /// Health/Check to answer SERVING.
    pub(crate) async fn start(
        binary: &Path,
        dir: &Path,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command.current_dir(dir).arg("serve");
        for (var, _) in std::env::vars() {
            if var.starts_with("VOICEHUB_") || var.starts_with("ELEVENLABS_") {
                command.env_remove(var);
            }
        }
        command
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "info")
            .env("VOICEHUB_LOG_FORMAT", "json")
            .env("VOICEHUB_LISTEN", "127.0.0.1:0")
            .env("VOICEHUB_JWT_SECRET", JWT_SECRET)
            // The benchmark's samples are short tones, not speech.
            .env("VOICEHUB_MIN_SPEECH_SECONDS", "0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let exec = Instant::now();
        let mut child = command.spawn().context("starting voicehub serve")?;
        let stderr = child.stderr.take().context("the server's stderr")?;
        let (tx, rx) = mpsc::channel();
        // Reads the log for the bound address, then keeps draining it so the
        // server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && json["message"] == "voicehub serving gRPC"
                    && let Some(addr) = json["local_addr"].as_str()
                {
                    let _ = tx.send(Ok(addr.to_owned()));
                } else if line.contains("\"level\":\"ERROR\"") {
                    let _ = tx.send(Err(line));
                }
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_mins(2)))
            .await?
            .context("voicehub did not report its address")?
            .map_err(|line| anyhow::anyhow!("voicehub failed to start: {line}"))?;
        let addr: SocketAddr = addr.parse()?;
        let mut health = HealthClient::new(endpoint(addr).connect().await?);
        let serving = health
            .check(HealthCheckRequest::default())
            .await?
            .into_inner()
            .status;
        let started_in = exec.elapsed();
        if serving != 1 {
            bail!("voicehub is not SERVING ({serving})");
        }
        Ok(Server {
            child,
            addr,
            started_in,
        })
    }

    /// A new HTTP/2 connection to the server.
    pub(crate) async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(endpoint(self.addr).connect().await?)
    }

    /// The process's CPU time so far (user + system).
    pub(crate) fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_of(self.child.id())
    }

    /// The CPU time (user + system) of its children that have exited: its
    /// audio checks.
    pub(crate) fn children_cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let after = stat.rsplit_once(')').context("a /proc stat line")?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // cutime and cstime are fields 16 and 17 of the line: 14 and 15 after ')'.
        let ticks: u64 = fields[13].parse::<u64>()? + fields[14].parse::<u64>()?;
        Ok(Duration::from_micros(ticks * 1_000_000 / clock_ticks()))
    }

    /// The process's resident memory now, in bytes.
    pub(crate) fn rss(&self) -> anyhow::Result<u64> {
        rss_of(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .tcp_nodelay(true)
}

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times.
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// User plus system CPU time of process `pid`.
pub(crate) fn cpu_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are fixed.
    let after = stat.rsplit_once(')').context("a /proc stat line")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after ')'.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_micros(ticks * 1_000_000 / clock_ticks()))
}

/// Resident memory of process `pid`, in bytes.
pub(crate) fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("VmRSS in /proc status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// Busy and total CPU ticks of the whole machine so far (`/proc/stat`), to
/// tell a server-bound figure from a machine-bound one.
pub(crate) fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("the cpu line of /proc/stat")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = ticks.iter().take(8).sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// The share of the machine's CPU (all cores) that was busy between two
/// [`machine_ticks`] readings.
pub(crate) fn busy_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64
}
