//! **read**: GetVoice and ListUserVoices(page 20, scope ALL and OWNED) at
//! several concurrencies, over a seeded catalogue, on SQLite and PostgreSQL.
//!
//! Ceilings, measured in the same run: Health/Check on the same server (the
//! transport's own rate), the database's rate for the identical SQL run
//! directly (sqlx, the server's pool size and settings), and on PostgreSQL
//! pgbench running GetVoice's statement (prepared, 8 clients): the
//! database's rate with no client library in the way. The server's CPU
//! time per GetVoice comes from its `/proc` CPU counters over the GetVoice
//! runs.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::bail;
use chrono::{DateTime, Utc};
use sea_orm::{Database, EntityTrait, IntoActiveModel};
use serde::Serialize;
use tonic::{Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;
use voicehub::{
    pb::{
        GetVoiceRequest, ListUserVoicesRequest, VoiceScope,
        voice_service_client::VoiceServiceClient,
    },
    store::{Labels, Visibility, Voice, VoiceStatus, entity::voice},
};

use crate::{
    load::{Call, Run, closed_loop},
    report::{Panel, Series, Table, write_chart, write_json},
    server::{Server, Token, authenticator, bearer, new_postgres_database},
};

/// The settings of one `read` run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReadArgs {
    /// Voices in the catalogue.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) voices: u64,
    /// Users owning them (voices are spread evenly; every tenth is public).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) users: u64,
    /// Concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub(crate) concurrency: Vec<usize>,
    /// Measured seconds per point (after a warm-up of a fifth of it).
    #[arg(long, default_value_t = 3.0)]
    pub(crate) seconds: f64,
    /// Backends to run: `sqlite`, `postgres` (needs VOICEHUB_BENCH_PG_URL: run through scripts/bench).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    pub(crate) backends: Vec<String>,
}

/// The server's database pool size in this scenario (voicehub's default),
/// also the direct-SQL ceiling's pool size.
const POOL: u32 = 10;

#[derive(Debug, Serialize)]
struct Point {
    backend: String,
    rpc: &'static str,
    concurrency: usize,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    errors: u64,
    health_rate: f64,
    sql_rate: f64,
    ratio_to_sql: f64,
    ratio_to_health: f64,
    server_cpu_us_per_call: f64,
}

#[derive(Debug, Serialize)]
struct Goal {
    #[serde(rename = "goal")]
    what: String,
    measured: String,
    met: bool,
}

/// Runs the scenario and writes `read.json` and `read.svg` into `out`.
pub(crate) async fn run(binary: &Path, out: &Path, args: ReadArgs) -> anyhow::Result<()> {
    let mut points = Vec::new();
    let mut goals = Vec::new();
    let mut pgbench = None;
    for backend in &args.backends {
        let db = BenchDatabase::new(backend).await?;
        let server = Server::start(binary, db.dir(), &[("DATABASE_URL", db.url.clone())]).await?;
        let catalogue = seed(&db.url, args.voices, args.users).await?;
        let measured = measure(backend, &server, &db, &catalogue, &args).await?;
        if backend == "postgres" {
            pgbench = Some(pgbench_get(&db.url, db.dir(), &args).await?);
        }
        goals.extend(goals_of(
            backend,
            &measured,
            pgbench.filter(|_| backend == "postgres"),
        ));
        points.extend(measured);
    }
    let mut table = Table::new(&[
        "backend", "rpc", "conc", "req/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "health/s",
        "sql/s", "÷sql", "cpu µs",
    ]);
    for p in &points {
        table.row(vec![
            p.backend.clone(),
            p.rpc.to_owned(),
            p.concurrency.to_string(),
            format!("{:.0}", p.rate),
            format!("{:.3}", p.p50_ms),
            format!("{:.3}", p.p99_ms),
            format!("{:.3}", p.p999_ms),
            format!("{:.2}", p.max_ms),
            format!("{:.0}", p.health_rate),
            format!("{:.0}", p.sql_rate),
            format!("{:.2}", p.ratio_to_sql),
            format!("{:.0}", p.server_cpu_us_per_call),
        ]);
    }
    table.print();
    let mut goal_table = Table::new(&["goal", "measured", "met"]);
    for g in &goals {
        goal_table.row(vec![
            g.what.clone(),
            g.measured.clone(),
            if g.met { "yes" } else { "NO" }.into(),
        ]);
    }
    goal_table.print();
    let json = serde_json::json!({
        "scenario": "read",
        "voices": args.voices,
        "users": args.users,
        "seconds_per_point": args.seconds,
        "pool": POOL,
        "pgbench_get_voice": pgbench.map(|rate| serde_json::json!({
            "clients": PGBENCH_CLIENTS,
            "mode": "prepared",
            "rate": rate,
        })),
        "points": points,
        "goals": goals,
    });
    println!("wrote {}", write_json(out, "read", &json)?.display());
    println!(
        "wrote {}",
        write_chart(out, "read", 2, &panels(&points, &args.backends))?.display()
    );
    Ok(())
}

/// A fresh database for one backend: a SQLite file, or a new PostgreSQL
/// database on the server scripts/bench started.
struct BenchDatabase {
    url: String,
    /// The server's working directory (and the SQLite file's home).
    dir: tempfile::TempDir,
}

impl BenchDatabase {
    async fn new(backend: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let url = match backend {
            "sqlite" => format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("voicehub.db").display()
            ),
            "postgres" => {
                let (_, url, pool) = new_postgres_database().await?;
                pool.close().await;
                url
            }
            other => bail!("unknown backend {other:?}: sqlite or postgres"),
        };
        Ok(BenchDatabase { url, dir })
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The voices and users the load picks from.
pub(crate) struct Catalogue {
    /// (voice id, its owner), a sample of the catalogue.
    pub(crate) voices: Vec<(Uuid, Uuid)>,
    /// A sample of the owners.
    pub(crate) users: Vec<Uuid>,
}

/// The prefixes of owners' and voices' ids: the rest is the number of the
/// owner or voice, so pgbench (which draws only numbers) can name them.
const OWNER_PREFIX: u128 = 0x0b5e_55ed_0000_7000_8000_0000_0000_0000;
const VOICE_PREFIX: u128 = 0x0b5e_55ed_0001_7000_8000_0000_0000_0000;

fn owner(user: u64) -> Uuid {
    Uuid::from_u128(OWNER_PREFIX | u128::from(user))
}

fn voice_id(i: u64) -> Uuid {
    Uuid::from_u128(VOICE_PREFIX | u128::from(i))
}

/// Every `SAMPLE`th voice is in the sample the load picks from.
const SAMPLE: u64 = 97;

/// The voices and users the load picks from, with each owner's bearer token.
pub(crate) type Tokened = (Arc<Vec<(Uuid, Uuid, Token)>>, Arc<Vec<(Uuid, Token)>>);

impl Catalogue {
    /// The sample's voices and users with a bearer token for each owner.
    pub(crate) fn with_tokens(&self) -> anyhow::Result<Tokened> {
        let auth = authenticator();
        let voices = self
            .voices
            .iter()
            .map(|(id, owner)| Ok((*id, *owner, bearer(&auth, *owner)?)))
            .collect::<anyhow::Result<_>>()?;
        let users = self
            .users
            .iter()
            .map(|user| Ok((*user, bearer(&auth, *user)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok((Arc::new(voices), Arc::new(users)))
    }
}

/// Stores `voices` completed voices of `users` owners (every tenth public),
/// created one millisecond apart, through SeaORM, so they are encoded
/// exactly as the server writes them.
pub(crate) async fn seed(url: &str, voices: u64, users: u64) -> anyhow::Result<Catalogue> {
    const BATCH: u64 = 1_000;
    let started = Instant::now();
    let db = Database::connect(url).await?;
    let base: DateTime<Utc> =
        voicehub::store::now() - chrono::Duration::milliseconds(i64::try_from(voices)?);
    let mut sample = Vec::new();
    let txn = sea_orm::TransactionTrait::begin(&db).await?;
    for first in (0..voices).step_by(usize::try_from(BATCH)?) {
        let rows: Vec<voice::ActiveModel> = (first..(first + BATCH).min(voices))
            .map(|i| {
                let at =
                    base + chrono::Duration::milliseconds(i64::try_from(i).unwrap_or(i64::MAX));
                let v = Voice {
                    id: voice_id(i),
                    ..catalogue_voice(owner(i % users), i, at)
                };
                if i.is_multiple_of(SAMPLE) {
                    sample.push((v.id, v.owner_user_id));
                }
                v.into_active_model()
            })
            .collect();
        voice::Entity::insert_many(rows).exec(&txn).await?;
    }
    txn.commit().await?;
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        sea_orm::ConnectionTrait::execute_unprepared(&db, "ANALYZE voices").await?;
    }
    db.close().await?;
    println!(
        "seeded {voices} voices of {users} users in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let users = (0..users.min(1_000))
        .map(|u| owner(u * (users / users.min(1_000)).max(1)))
        .collect();
    Ok(Catalogue {
        voices: sample,
        users,
    })
}

pub(crate) fn catalogue_voice(owner: Uuid, i: u64, at: DateTime<Utc>) -> Voice {
    Voice {
        id: Uuid::now_v7(),
        owner_user_id: owner,
        provider_voice_id: Some(format!("pv{i:018}")),
        name: format!("Voice {i}"),
        description: "a benchmark voice".into(),
        language: "en".into(),
        gender: String::new(),
        category: "cloned".into(),
        visibility: if i.is_multiple_of(10) {
            Visibility::Public
        } else {
            Visibility::Private
        },
        status: VoiceStatus::Completed,
        failure_reason: None,
        preview_url: Some(format!("https://cdn.example/{i}.mp3")),
        labels: Labels([("accent".to_owned(), "british".to_owned())].into()),
        provider_labels: Labels::default(),
        request_id: None,
        revision: 1,
        created_at: at,
        updated_at: at,
        completed_at: Some(at),
        deleted_at: None,
        processing_deadline: None,
        push_pending: false,
        push_lease_until: None,
        provider_missing_since: None,
        consent_recorded: false,
        create_lease_until: None,
    }
}

/// The three RPCs of the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rpc {
    GetVoice,
    ListAll,
    ListOwned,
}

impl Rpc {
    const ALL: [Rpc; 3] = [Rpc::GetVoice, Rpc::ListAll, Rpc::ListOwned];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Rpc::GetVoice => "GetVoice",
            Rpc::ListAll => "ListUserVoices(20, ALL)",
            Rpc::ListOwned => "ListUserVoices(20, OWNED)",
        }
    }
}

async fn measure(
    backend: &str,
    server: &Server,
    db: &BenchDatabase,
    catalogue: &Catalogue,
    args: &ReadArgs,
) -> anyhow::Result<Vec<Point>> {
    let (voices, users) = catalogue.with_tokens()?;
    let direct = Arc::new(Direct::connect(&db.url).await?);
    let measure = Duration::from_secs_f64(args.seconds);
    let warmup = measure / 5;
    let mut points = Vec::new();
    for &concurrency in &args.concurrency {
        // Sixteen calls in flight per HTTP/2 connection at most, as a client pool would.
        let mut channels = Vec::new();
        for _ in 0..concurrency.div_ceil(16) {
            channels.push(server.channel().await?);
        }
        let channels = Arc::new(channels);
        let health = closed_loop(concurrency, warmup, measure, health_call(&channels)).await;
        for rpc in Rpc::ALL {
            let cpu_before = server.cpu()?;
            let run = closed_loop(
                concurrency,
                warmup,
                measure,
                rpc_call(rpc, &channels, &voices, &users),
            )
            .await;
            let cpu = server.cpu()?.saturating_sub(cpu_before);
            let sql = closed_loop(
                concurrency,
                warmup,
                measure,
                sql_call(rpc, &direct, &voices, &users),
            )
            .await;
            points.push(point(backend, rpc, concurrency, &run, &health, &sql, cpu));
            let p = points.last().expect("just pushed");
            println!(
                "{backend} {} ×{concurrency}: {:.0}/s p50 {:.3} ms p99 {:.3} ms (health {:.0}/s, sql {:.0}/s, cpu {:.0} µs)",
                rpc.name(),
                p.rate,
                p.p50_ms,
                p.p99_ms,
                p.health_rate,
                p.sql_rate,
                p.server_cpu_us_per_call
            );
        }
    }
    Ok(points)
}

fn point(
    backend: &str,
    rpc: Rpc,
    concurrency: usize,
    run: &Run,
    health: &Run,
    sql: &Run,
    cpu: Duration,
) -> Point {
    Point {
        backend: backend.to_owned(),
        rpc: rpc.name(),
        concurrency,
        rate: run.rate(),
        p50_ms: run.ms(0.5),
        p99_ms: run.ms(0.99),
        p999_ms: run.ms(0.999),
        max_ms: run.max_ms(),
        errors: run.errors,
        health_rate: health.rate(),
        sql_rate: sql.rate(),
        ratio_to_sql: run.rate() / sql.rate().max(f64::EPSILON),
        ratio_to_health: run.rate() / health.rate().max(f64::EPSILON),
        server_cpu_us_per_call: cpu.as_secs_f64() * 1e6 / (run.total.max(1) as f64),
    }
}

fn health_call(channels: &Arc<Vec<Channel>>) -> Call {
    let channels = channels.clone();
    Arc::new(move |i| {
        let mut client = HealthClient::new(channels[(i >> 32) as usize % channels.len()].clone());
        Box::pin(async move {
            client.check(HealthCheckRequest::default()).await?;
            Ok(())
        })
    })
}

pub(crate) fn rpc_call(
    rpc: Rpc,
    channels: &Arc<Vec<Channel>>,
    voices: &Arc<Vec<(Uuid, Uuid, Token)>>,
    users: &Arc<Vec<(Uuid, Token)>>,
) -> Call {
    let (channels, voices, users) = (channels.clone(), voices.clone(), users.clone());
    Arc::new(move |i| {
        let mut client =
            VoiceServiceClient::new(channels[(i >> 32) as usize % channels.len()].clone());
        // Spread the workers over the sample: worker w, iteration n.
        let pick = (i >> 32).wrapping_mul(7919).wrapping_add(i & 0xffff_ffff) as usize;
        match rpc {
            Rpc::GetVoice => {
                let (id, _, token) = &voices[pick % voices.len()];
                let mut request = Request::new(GetVoiceRequest {
                    voice_id: id.to_string(),
                });
                request
                    .metadata_mut()
                    .insert("authorization", token.clone());
                Box::pin(async move {
                    client.get_voice(request).await?;
                    Ok(())
                })
            }
            Rpc::ListAll | Rpc::ListOwned => {
                let (_, token) = &users[pick % users.len()];
                let scope = if rpc == Rpc::ListAll {
                    VoiceScope::All
                } else {
                    VoiceScope::Owned
                };
                let mut request = Request::new(ListUserVoicesRequest {
                    page_size: 20,
                    scope: scope.into(),
                    ..ListUserVoicesRequest::default()
                });
                request
                    .metadata_mut()
                    .insert("authorization", token.clone());
                Box::pin(async move {
                    client.list_user_voices(request).await?;
                    Ok(())
                })
            }
        }
    })
}

fn sql_call(
    rpc: Rpc,
    direct: &Arc<Direct>,
    voices: &Arc<Vec<(Uuid, Uuid, Token)>>,
    users: &Arc<Vec<(Uuid, Token)>>,
) -> Call {
    let (direct, voices, users) = (direct.clone(), voices.clone(), users.clone());
    Arc::new(move |i| {
        let direct = direct.clone();
        let pick = (i >> 32).wrapping_mul(7919).wrapping_add(i & 0xffff_ffff) as usize;
        let (id, owner, _) = voices[pick % voices.len()].clone();
        let user = users[pick % users.len()].0;
        Box::pin(async move {
            match rpc {
                Rpc::GetVoice => direct.get(id, owner).await,
                Rpc::ListAll => direct.list(user, true).await,
                Rpc::ListOwned => direct.list(user, false).await,
            }
        })
    })
}

/// The SQL the server runs for each RPC, run directly: the database's own
/// rate is the ceiling of what the server can serve.
enum Direct {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// The server's statements, with PostgreSQL's and SQLite's placeholders.
macro_rules! statement {
    ($name:ident, $sqlite:ident, $head:literal, $($rest:literal),*) => {
        const $name: &str = concat!($head, "$1", $($rest),*);
        const $sqlite: &str = concat!($head, "?1", $($rest),*);
    };
}
/// The server's GetVoice (`store::reads`, as sea-query writes it, with its
/// column aliases left out): the voice if the caller may see it, with the
/// caller's own intake record joined in.
const GET_PG: &str = "SELECT v.*, i.* FROM voices v LEFT JOIN voice_intakes i \
    ON v.id = i.voice_id AND i.owner_user_id = $2 \
    WHERE v.id = $1 AND v.status <> 'deleted' AND (v.owner_user_id = $2 OR v.visibility = 'public') LIMIT 1";
const GET_SQLITE: &str = "SELECT v.*, i.* FROM voices v LEFT JOIN voice_intakes i \
    ON v.id = i.voice_id AND i.owner_user_id = ?2 \
    WHERE v.id = ?1 AND v.status <> 'deleted' AND (v.owner_user_id = ?2 OR v.visibility = 'public') LIMIT 1";
statement!(
    LIST_OWN_PG,
    LIST_OWN_SQLITE,
    "SELECT * FROM voices WHERE owner_user_id = ",
    " AND status <> 'deleted' ORDER BY created_at DESC, id DESC LIMIT 21"
);
statement!(
    LIST_PUBLIC_PG,
    LIST_PUBLIC_SQLITE,
    "SELECT * FROM voices WHERE visibility = 'public' AND owner_user_id <> ",
    " AND status <> 'deleted' ORDER BY created_at DESC, id DESC LIMIT 21"
);

impl Direct {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(if url.starts_with("sqlite:") {
            Direct::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(POOL)
                    .test_before_acquire(false)
                    .connect(url)
                    .await?,
            )
        } else {
            Direct::Postgres(
                // Configured as the server's pool: no ping before each statement.
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(POOL)
                    .test_before_acquire(false)
                    .connect(url)
                    .await?,
            )
        })
    }

    async fn get(&self, id: Uuid, caller: Uuid) -> anyhow::Result<()> {
        match self {
            Direct::Postgres(pool) => {
                sqlx::query(GET_PG)
                    .bind(id)
                    .bind(caller)
                    .fetch_optional(pool)
                    .await?;
            }
            Direct::Sqlite(pool) => {
                sqlx::query(GET_SQLITE)
                    .bind(id)
                    .bind(caller)
                    .fetch_optional(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Like the server: the caller's own page, and for ALL the others'
    /// public page too, read concurrently.
    async fn list(&self, caller: Uuid, all: bool) -> anyhow::Result<()> {
        match self {
            Direct::Postgres(pool) => {
                let own = sqlx::query(LIST_OWN_PG).bind(caller).fetch_all(pool);
                if all {
                    let others = sqlx::query(LIST_PUBLIC_PG).bind(caller).fetch_all(pool);
                    tokio::try_join!(own, others)?;
                } else {
                    own.await?;
                }
            }
            Direct::Sqlite(pool) => {
                let own = sqlx::query(LIST_OWN_SQLITE).bind(caller).fetch_all(pool);
                if all {
                    let others = sqlx::query(LIST_PUBLIC_SQLITE).bind(caller).fetch_all(pool);
                    tokio::try_join!(own, others)?;
                } else {
                    own.await?;
                }
            }
        }
        Ok(())
    }
}

/// pgbench's clients for the GetVoice ceiling.
const PGBENCH_CLIENTS: u32 = 8;

/// PostgreSQL's own rate for the server's GetVoice statement: pgbench,
/// prepared, `PGBENCH_CLIENTS` clients, drawing from the load's sample.
/// pgbench draws numbers, not UUIDs, so the script builds each id from its
/// number (`VOICE_PREFIX`, `OWNER_PREFIX`): a few string functions more per
/// statement than the server's bound parameters, which if anything lowers
/// this ceiling a little.
async fn pgbench_get(url: &str, dir: &Path, args: &ReadArgs) -> anyhow::Result<f64> {
    let uuid = |prefix: u128, var: &str| {
        let head = Uuid::from_u128(prefix).to_string();
        format!(
            "CAST('{}' || lpad(to_hex(CAST(:{var} AS bigint)), 12, '0') AS uuid)",
            &head[..24]
        )
    };
    let (voice, caller) = (uuid(VOICE_PREFIX, "vi"), uuid(OWNER_PREFIX, "vu"));
    let script = format!(
        "\\set n random(0, {last})\n\\set vi :n * {SAMPLE}\n\\set vu :vi % {users}\n\
         SELECT v.*, i.* FROM voices v LEFT JOIN voice_intakes i \
         ON v.id = i.voice_id AND i.owner_user_id = {caller} \
         WHERE v.id = {voice} AND v.status <> 'deleted' \
         AND (v.owner_user_id = {caller} OR v.visibility = 'public') LIMIT 1;\n",
        last = (args.voices - 1) / SAMPLE,
        users = args.users,
    );
    let file = dir.join("get_voice.sql");
    std::fs::write(&file, script)?;
    let pgbench = std::env::var_os("VOICEHUB_BENCH_PGBIN")
        .map_or_else(|| "pgbench".into(), |bin| Path::new(&bin).join("pgbench"));
    let output = tokio::process::Command::new(&pgbench)
        .args(["-n", "-M", "prepared", "-j", "2", "-c"])
        .arg(PGBENCH_CLIENTS.to_string())
        .arg("-T")
        .arg(format!("{}", args.seconds.ceil().max(1.0)))
        .arg("-f")
        .arg(&file)
        .arg(url)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tps = stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench's output: {stdout}"))?;
    println!("pgbench GetVoice statement, prepared, {PGBENCH_CLIENTS} clients: {tps:.0}/s");
    Ok(tps)
}

/// ListUserVoices(20) at 64 in flight, as a fraction of the same run's
/// direct SQL, when issue 24 began (docs/benchmarks.md): ALL, OWNED.
const LIST_RATIO_BEFORE: [f64; 2] = [0.31, 0.38];

fn goals_of(backend: &str, points: &[Point], pgbench: Option<f64>) -> Vec<Goal> {
    let at = |rpc: Rpc, concurrency: usize| {
        points
            .iter()
            .find(|p| p.rpc == rpc.name() && p.concurrency == concurrency)
    };
    let mut goals = Vec::new();
    if let Some(p) = at(Rpc::GetVoice, 1) {
        goals.push(Goal {
            what: format!("{backend}: GetVoice at 1 client, p50 ≤ 0.3 ms"),
            measured: format!("{:.3} ms", p.p50_ms),
            met: p.p50_ms <= 0.3,
        });
    }
    for rpc in [Rpc::ListAll, Rpc::ListOwned] {
        if let Some(p) = at(rpc, 1) {
            goals.push(Goal {
                what: format!("{backend}: {} at 1 client, p50 ≤ 0.5 ms", rpc.name()),
                measured: format!("{:.3} ms", p.p50_ms),
                met: p.p50_ms <= 0.5,
            });
        }
    }
    if let Some(p) = at(Rpc::GetVoice, 64) {
        if let Some(pgbench) = pgbench {
            let ratio = p.rate / pgbench.max(f64::EPSILON);
            goals.push(Goal {
                what: format!(
                    "{backend}: GetVoice at 64, ≥ 0.3 × pgbench ({PGBENCH_CLIENTS} clients, prepared)"
                ),
                measured: format!("{ratio:.2} × ({:.0} of {pgbench:.0}/s)", p.rate),
                met: ratio >= 0.3,
            });
        }
        goals.push(Goal {
            what: format!("{backend}: GetVoice at 64, p99 ≤ 10 ms"),
            measured: format!("{:.3} ms", p.p99_ms),
            met: p.p99_ms <= 10.0,
        });
        goals.push(Goal {
            what: format!("{backend}: server CPU per GetVoice at 64 ≤ 50 µs"),
            measured: format!("{:.0} µs", p.server_cpu_us_per_call),
            met: p.server_cpu_us_per_call <= 50.0,
        });
    }
    for (rpc, before) in [Rpc::ListAll, Rpc::ListOwned]
        .into_iter()
        .zip(LIST_RATIO_BEFORE)
    {
        if let Some(p) = at(rpc, 64) {
            goals.push(Goal {
                what: format!(
                    "{backend}: {} at 64, ≥ 2 × {before:.2} × direct SQL",
                    rpc.name()
                ),
                measured: format!(
                    "{:.2} × ({:.0} of {:.0}/s)",
                    p.ratio_to_sql, p.rate, p.sql_rate
                ),
                met: p.ratio_to_sql >= 2.0 * before,
            });
        }
    }
    goals
}

fn panels(points: &[Point], backends: &[String]) -> Vec<Panel> {
    let mut panels = Vec::new();
    for backend in backends {
        let of = |rpc: Rpc, value: fn(&Point) -> f64| -> Vec<(f64, f64)> {
            points
                .iter()
                .filter(|p| &p.backend == backend && p.rpc == rpc.name())
                .map(|p| (p.concurrency as f64, value(p)))
                .collect()
        };
        let mut throughput = Vec::new();
        let mut latency = Vec::new();
        for rpc in Rpc::ALL {
            throughput.push(Series {
                name: rpc.name().into(),
                points: of(rpc, |p| p.rate),
                ceiling: false,
            });
            latency.push(Series {
                name: format!("{} p99", rpc.name()),
                points: of(rpc, |p| p.p99_ms),
                ceiling: false,
            });
        }
        throughput.push(Series {
            name: "Health/Check (ceiling)".into(),
            points: of(Rpc::GetVoice, |p| p.health_rate),
            ceiling: true,
        });
        for rpc in Rpc::ALL {
            throughput.push(Series {
                name: format!("{} direct SQL (ceiling)", rpc.name()),
                points: of(rpc, |p| p.sql_rate),
                ceiling: true,
            });
        }
        panels.push(Panel {
            title: format!("read on {backend}: requests per second"),
            x_label: "concurrent requests".into(),
            y_label: "req/s".into(),
            log_x: true,
            series: throughput,
        });
        panels.push(Panel {
            title: format!("read on {backend}: p99 latency"),
            x_label: "concurrent requests".into(),
            y_label: "ms".into(),
            log_x: true,
            series: latency,
        });
    }
    panels
}
