//! The randomized fault soak: three `voicehub serve` replicas on one
//! PostgreSQL and a Redis Cluster (private ones: the faults touch no other
//! test), under a workload of creates (retried with their `request_id`),
//! updates, deletes, watches on every replica, the public stream and
//! a webhook endpoint per user, while faults drawn from a seeded schedule
//! arrive, together as often as not: a replica SIGKILLed and restarted,
//! PostgreSQL frozen, a Redis primary killed (its replica takes over; it
//! rejoins), provider storms and slow answers, clients cancelling, the
//! webhook receiver down.
//!
//! Invariants, each with how many things it checked: rows reach a terminal
//! status within their max age (checked every 2 s and at the end); the
//! provider holds exactly the live rows' voices after a final sweep; no
//! `request_id` (no row) made two provider voices; every watcher saw the
//! terminal state of the voice it watched; revisions only increase, per
//! voice, on every watch stream and on the public stream; every stored
//! change reached the public stream and its owner's webhook endpoint.
//!
//! `VOICEHUB_CHAOS_SECS` (120 in the test command) sets the length and
//! `VOICEHUB_CHAOS_SEED` replays a schedule (the seed is printed).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use tonic::Code;
use uuid::Uuid;
use voicehub::pb::{self, CreateWebhookEndpointRequest, WatchVoiceStatusRequest};

use crate::{
    fake_elevenlabs::{API_KEY, FakeElevenLabs, Fault as ProviderFault, Report, Route},
    helpers::{Bearer, Client, JWT_SECRET, Server, client_at, create_request, try_serve},
    pg_server::PgServer,
    redis_server::RedisCluster,
};

const USERS: usize = 4;
const REPLICAS: usize = 3;
/// `VOICEHUB_SYNC_MAX_AGE` of the replicas.
const MAX_AGE: Duration = Duration::from_secs(30);
/// How long past its deadline a row may still be PROCESSING: its last
/// check (at most the engine's backoff) plus a fault in the way.
const AGE_SLACK: Duration = Duration::from_secs(45);

/// A replica process's log lines, as its reader collects them.
type LogLines = Arc<Mutex<Vec<String>>>;

/// One fault of the schedule.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillReplica { replica: usize, down: Duration },
    FreezePostgres { frozen: Duration },
    KillRedisPrimary { nth: usize, down: Duration },
    ProviderStorm { lasting: Duration },
    ProviderSlow { requests: usize },
    ReceiverDown { lasting: Duration },
    ClientCancels { lasting: Duration },
}

impl Fault {
    fn kind(self) -> &'static str {
        match self {
            Fault::KillReplica { .. } => "replica SIGKILLed, restarted",
            Fault::FreezePostgres { .. } => "PostgreSQL frozen (SIGSTOP)",
            Fault::KillRedisPrimary { .. } => "Redis primary killed, rejoined",
            Fault::ProviderStorm { .. } => "provider storm (429/500)",
            Fault::ProviderSlow { .. } => "provider answers late",
            Fault::ReceiverDown { .. } => "webhook receiver down (503)",
            Fault::ClientCancels { .. } => "clients cancel their calls",
        }
    }
}

fn secs(rng: &mut StdRng, from: u64, to: u64) -> Duration {
    Duration::from_millis(rng.random_range(from * 1000..=to * 1000))
}

/// The faults of a run of length `run`, from `seed` alone: when each
/// starts, and what it is. No replica is killed while it is down, nor a
/// Redis primary while the cluster is not yet whole again.
fn schedule(seed: u64, run: Duration) -> Vec<(Duration, Fault)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut at = Duration::from_secs(5);
    let mut replica_back = [Duration::ZERO; REPLICAS];
    let mut redis_back = Duration::ZERO;
    let mut faults = Vec::new();
    while at + Duration::from_secs(10) < run {
        let fault = match rng.random_range(0..7) {
            0 => {
                let replica = rng.random_range(0..REPLICAS);
                let down = secs(&mut rng, 1, 5);
                (replica_back[replica] <= at).then(|| {
                    replica_back[replica] = at + down + Duration::from_secs(15);
                    Fault::KillReplica { replica, down }
                })
            }
            1 => Some(Fault::FreezePostgres {
                frozen: secs(&mut rng, 1, 4),
            }),
            2 => {
                let (nth, down) = (rng.random_range(0..3), secs(&mut rng, 3, 8));
                (redis_back <= at).then(|| {
                    redis_back = at + down + Duration::from_secs(20);
                    Fault::KillRedisPrimary { nth, down }
                })
            }
            3 => Some(Fault::ProviderStorm {
                lasting: secs(&mut rng, 2, 8),
            }),
            4 => Some(Fault::ProviderSlow {
                requests: rng.random_range(2..8),
            }),
            5 => Some(Fault::ReceiverDown {
                lasting: secs(&mut rng, 2, 10),
            }),
            _ => Some(Fault::ClientCancels {
                lasting: secs(&mut rng, 2, 6),
            }),
        };
        if let Some(fault) = fault {
            faults.push((at, fault));
        }
        at += secs(&mut rng, 2, 8);
    }
    faults
}

/// What the run counted and found.
#[derive(Default)]
struct Ledger {
    ops: BTreeMap<String, u64>,
    faults: BTreeMap<&'static str, u64>,
    /// Per invariant: things checked, and each violation found.
    checked: BTreeMap<&'static str, u64>,
    violations: BTreeMap<&'static str, Vec<String>>,
    /// When each fault began, and its kind.
    fault_log: Vec<(chrono::DateTime<chrono::Utc>, &'static str)>,
    /// Rows seen PROCESSING past their deadline and the slack.
    overdue: BTreeSet<Uuid>,
    /// The voices the workload made: owner, and whether it deleted them.
    voices: BTreeMap<Uuid, (usize, bool)>,
    /// Per explicit watcher: the terminal state it saw, if any.
    terminal_seen: BTreeMap<Uuid, Option<(pb::VoiceStatus, i64)>>,
}

impl Ledger {
    fn op(&mut self, what: impl Into<String>) {
        *self.ops.entry(what.into()).or_default() += 1;
    }

    fn check(&mut self, invariant: &'static str, count: u64) {
        *self.checked.entry(invariant).or_default() += count;
        self.violations.entry(invariant).or_default();
    }

    fn violation(&mut self, invariant: &'static str, what: String) {
        println!("VIOLATION of {invariant}: {what}");
        self.violations.entry(invariant).or_default().push(what);
    }
}

const AGES: &str = "rows terminal within their max age (+45 s)";
const PROVIDER: &str = "provider voices = live rows' voices, after a sweep";
const ONE_CLONE: &str = "no request_id (row) made two provider voices";
const WATCHERS: &str = "every watcher saw its voice's terminal state";
const STREAM_ORDER: &str = "revisions only increase, per voice, on each watch stream";
const EVENT_ORDER: &str = "revisions only increase, per voice, on the public stream";
const ON_STREAM: &str = "every stored change on the public stream";
const AT_WEBHOOKS: &str = "every stored change at its owner's webhook endpoint";
const CREATED_FIRST: &str =
    "a voice's first public event is its creation (or, never accepted, its end)";
const CALLS: &str = "calls fail only as faults explain (retryable codes)";

/// The webhook endpoint of every user: records `webhook-id`s it accepted.
#[derive(Clone, Default)]
struct Receiver {
    down: Arc<AtomicBool>,
    accepted: Arc<Mutex<BTreeMap<usize, BTreeSet<String>>>>,
}

async fn receive(
    State(receiver): State<Receiver>,
    Path(user): Path<usize>,
    headers: HeaderMap,
) -> StatusCode {
    if receiver.down.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    receiver
        .accepted
        .lock()
        .unwrap()
        .entry(user)
        .or_default()
        .insert(id);
    StatusCode::OK
}

/// Everything the run works on.
struct Rig {
    pg: PgServer,
    db: DatabaseConnection,
    cluster: Mutex<RedisCluster>,
    cluster_url: String,
    stream: String,
    fake: FakeElevenLabs,
    receiver: Receiver,
    receiver_url: String,
    env: Vec<(String, String)>,
    dirs: Vec<tempfile::TempDir>,
    replicas: Mutex<Vec<Option<Server>>>,
    /// The log lines of each replica's earlier (killed) runs, by replica.
    past_logs: Mutex<Vec<(usize, LogLines)>>,
    /// The address of each replica while it runs.
    addrs: Mutex<Vec<Option<String>>>,
    users: Vec<Uuid>,
    cancels: AtomicBool,
    ledger: Mutex<Ledger>,
}

impl Rig {
    async fn start() -> Arc<Self> {
        let pg = PgServer::start();
        let db = Database::connect(pg.url()).await.unwrap();
        let cluster = RedisCluster::start();
        let cluster_url = cluster.url();
        let fake = FakeElevenLabs::start().await;
        fake.set_default_report(Report::awaiting_verification());
        let receiver = Receiver::default();
        let app = Router::new()
            .route("/hook/{user}", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let prefix = format!("chaos-{}", Uuid::new_v4().simple());
        let stream = format!("{prefix}:voice-events");
        let env: Vec<(String, String)> = [
            ("DATABASE_URL", pg.url()),
            ("REDIS_URL", cluster_url.clone()),
            ("VOICEHUB_REDIS_PREFIX", prefix),
            ("VOICEHUB_EVENTS_STREAM", stream.clone()),
            ("ELEVENLABS_BASE_URL", fake.url.clone()),
            ("ELEVENLABS_API_KEY", API_KEY.into()),
            ("ELEVENLABS_TIMEOUT", "2s".into()),
            ("ELEVENLABS_RETRY_BUDGET", "8s".into()),
            ("VOICEHUB_JWT_SECRET", JWT_SECRET.into()),
            ("VOICEHUB_SYNC_MAX_AGE", "30s".into()),
            ("VOICEHUB_SYNC_IDLE", "1s".into()),
            ("VOICEHUB_SYNC_MAX_BACKOFF", "5s".into()),
            ("VOICEHUB_SYNC_ADOPT_AFTER", "15s".into()),
            ("VOICEHUB_SWEEP_INTERVAL", "10s".into()),
            ("VOICEHUB_SWEEP_FIRST_AFTER", "5s".into()),
            ("VOICEHUB_PROVIDER_CONFIRM_GONE_AFTER", "2s".into()),
            ("VOICEHUB_MAX_VOICES_PER_USER", "100000".into()),
            ("VOICEHUB_MAX_WATCHES_PER_USER", "10000".into()),
            ("VOICEHUB_CREATE_LIMIT_PER_HOUR", "0".into()),
            ("VOICEHUB_CREATE_LIMIT_PER_DAY", "0".into()),
            ("VOICEHUB_WEBHOOK_ALLOW_PRIVATE", "true".into()),
            ("VOICEHUB_WEBHOOK_TIMEOUT", "2s".into()),
            (
                "VOICEHUB_WEBHOOK_RETRY_SCHEDULE",
                "0s,1s,1s,2s,2s,5s,5s,10s,10s,10s".into(),
            ),
            ("VOICEHUB_SHUTDOWN_GRACE", "2s".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let rig = Arc::new(Rig {
            pg,
            db,
            cluster: Mutex::new(cluster),
            cluster_url,
            stream,
            fake,
            receiver,
            receiver_url,
            env,
            dirs: (0..REPLICAS)
                .map(|_| tempfile::tempdir().unwrap())
                .collect(),
            replicas: Mutex::new((0..REPLICAS).map(|_| None).collect()),
            past_logs: Mutex::default(),
            addrs: Mutex::new(vec![None; REPLICAS]),
            users: (0..USERS).map(|_| Uuid::new_v4()).collect(),
            cancels: AtomicBool::new(false),
            ledger: Mutex::default(),
        });
        for replica in 0..REPLICAS {
            rig.launch(replica);
        }
        rig.endpoints().await;
        rig
    }

    /// Starts replica `replica` (again) and publishes its address; as a
    /// supervisor would, starts it again while it exits at start-up
    /// (storage or Redis unreachable: a fault in progress).
    fn launch(&self, replica: usize) {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for _ in 0..60 {
            match try_serve(self.dirs[replica].path(), &env) {
                Ok(server) => {
                    self.addrs.lock().unwrap()[replica] = Some(server.addr.clone());
                    self.replicas.lock().unwrap()[replica] = Some(server);
                    return;
                }
                Err(logs) => {
                    let last = logs.last().cloned().unwrap_or_default();
                    println!("replica {replica} did not start, starting it again: {last}");
                    self.ledger()
                        .op("replica start refused (a fault in progress), started again");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        self.ledger().violation(
            CALLS,
            format!("replica {replica} did not start in 60 tries"),
        );
    }

    /// SIGKILLs replica `replica`.
    fn kill(&self, replica: usize) {
        self.addrs.lock().unwrap()[replica] = None;
        let server = self.replicas.lock().unwrap()[replica].take();
        if let Some(server) = server {
            let logs = server.logs.clone();
            drop(server);
            self.past_logs.lock().unwrap().push((replica, logs));
        }
    }

    /// After a violation: every run's log lines into files of a directory
    /// that outlives the test, and each run's WARN and ERROR messages,
    /// counted, on the test's output (often all a CI log keeps).
    fn keep_logs(&self, seed: u64) {
        let dir = std::env::temp_dir().join(format!("voicehub-chaos-{seed}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut runs = self.past_logs.lock().unwrap().clone();
        for (replica, server) in self.replicas.lock().unwrap().iter().enumerate() {
            if let Some(server) = server {
                runs.push((replica, server.logs.clone()));
            }
        }
        for (n, (replica, logs)) in runs.iter().enumerate() {
            let lines = logs.lock().unwrap().clone();
            let path = dir.join(format!("run-{n:02}-replica-{replica}.log"));
            std::fs::write(&path, lines.join("\n")).unwrap();
            let mut counted: BTreeMap<(String, String), u64> = BTreeMap::new();
            for line in &lines {
                let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let level = json["level"].as_str().unwrap_or_default();
                if level == "WARN" || level == "ERROR" {
                    let message = json["message"].as_str().unwrap_or_default().to_owned();
                    *counted.entry((level.to_owned(), message)).or_default() += 1;
                }
            }
            println!(
                "{} ({} lines), WARN and ERROR:",
                path.display(),
                lines.len()
            );
            for ((level, message), count) in counted {
                println!("  {count:>6}  {level}  {message}");
            }
        }
    }

    /// A client of `user` on a running replica (the `nth` running one, wrapping).
    fn client(&self, user: Uuid, nth: usize) -> Option<Client> {
        let addrs = self.addrs.lock().unwrap();
        let live: Vec<&String> = addrs.iter().flatten().collect();
        (!live.is_empty()).then(|| client_at(live[nth % live.len()], user))
    }

    /// One webhook endpoint per user, on the receiver.
    async fn endpoints(&self) {
        let addr = self.addrs.lock().unwrap()[0].clone().unwrap();
        for (n, user) in self.users.iter().enumerate() {
            let token = voicehub::auth::Authenticator::new(&crate::helpers::auth_config())
                .mint(*user, Duration::from_hours(2))
                .unwrap();
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy();
            let mut webhooks = pb::webhook_service_client::WebhookServiceClient::with_interceptor(
                channel,
                Bearer(format!("Bearer {token}")),
            );
            webhooks
                .create_webhook_endpoint(CreateWebhookEndpointRequest {
                    url: format!("{}/hook/{n}", self.receiver_url),
                    description: String::new(),
                    event_types: Vec::new(),
                })
                .await
                .unwrap();
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap()
    }
}

/// Codes a call may end with while faults are about: each says "try again".
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Unknown
    )
}

/// Runs `fault`, restoring what it broke before it returns.
async fn inject(rig: Arc<Rig>, fault: Fault) {
    {
        let mut ledger = rig.ledger();
        ledger.faults.entry(fault.kind()).or_default();
        ledger.fault_log.push((chrono::Utc::now(), fault.kind()));
    }
    match fault {
        Fault::KillReplica { replica, down } => {
            rig.kill(replica);
            tokio::time::sleep(down).await;
            let rig2 = rig.clone();
            tokio::task::spawn_blocking(move || rig2.launch(replica))
                .await
                .unwrap();
        }
        Fault::FreezePostgres { frozen } => {
            rig.pg.freeze();
            tokio::time::sleep(frozen).await;
            rig.pg.thaw();
        }
        Fault::KillRedisPrimary { nth, down } => {
            let whole = rig.cluster.lock().unwrap().whole();
            if !whole {
                rig.ledger()
                    .op("Redis kill skipped: the cluster was not whole yet");
                return;
            }
            let port = {
                let mut cluster = rig.cluster.lock().unwrap();
                let primaries = cluster.primaries();
                let port = primaries[nth % primaries.len()];
                cluster.kill(port);
                port
            };
            tokio::time::sleep(down).await;
            let rig2 = rig.clone();
            tokio::task::spawn_blocking(move || rig2.cluster.lock().unwrap().restart(port))
                .await
                .unwrap();
        }
        Fault::ProviderStorm { lasting } => rig.fake.storm(lasting),
        Fault::ProviderSlow { requests } => {
            for route in [Route::Add, Route::Get, Route::Lookup, Route::Delete] {
                rig.fake
                    .inject(route, requests, ProviderFault::Slow(Duration::from_secs(3)));
            }
        }
        Fault::ReceiverDown { lasting } => {
            rig.receiver.down.store(true, Ordering::Relaxed);
            tokio::time::sleep(lasting).await;
            rig.receiver.down.store(false, Ordering::Relaxed);
        }
        Fault::ClientCancels { lasting } => {
            rig.cancels.store(true, Ordering::Relaxed);
            tokio::time::sleep(lasting).await;
            rig.cancels.store(false, Ordering::Relaxed);
        }
    }
    *rig.ledger().faults.entry(fault.kind()).or_default() += 1;
}

/// Runs the schedule from `started`; returns once every fault was restored.
async fn run_schedule(rig: Arc<Rig>, faults: Vec<(Duration, Fault)>, started: Instant) {
    let mut running = Vec::new();
    for (at, fault) in faults {
        tokio::time::sleep_until((started + at).into()).await;
        running.push(tokio::spawn(inject(rig.clone(), fault)));
    }
    for fault in running {
        fault.await.unwrap();
    }
}

/// Calls `call` on running replicas until it answers something other
/// than a retryable code (each attempt of at most `timeout`, shorter and
/// cut short while clients cancel), for at most 2 minutes.
async fn until_answered<T, F, Fut>(
    rig: &Rig,
    user: usize,
    what: &str,
    rng: &mut StdRng,
    mut call: F,
) -> Option<Result<T, tonic::Status>>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let until = Instant::now() + Duration::from_mins(2);
    let mut attempts = 0;
    while Instant::now() < until {
        attempts += 1;
        let Some(client) = rig.client(rig.users[user], rng.random_range(0..REPLICAS)) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let timeout = if rig.cancels.load(Ordering::Relaxed) {
            Duration::from_millis(rng.random_range(10..300))
        } else {
            Duration::from_secs(20)
        };
        match tokio::time::timeout(timeout, call(client)).await {
            Err(_) => rig.ledger().op(format!("{what}: cancelled by the client")),
            Ok(Err(status)) if retryable(status.code()) => {
                rig.ledger()
                    .op(format!("{what}: {:?}, retried", status.code()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(answer) => {
                rig.ledger().op(format!(
                    "{what}: {}",
                    if attempts > 1 {
                        "answered after retries"
                    } else {
                        "answered at once"
                    }
                ));
                return Some(answer);
            }
        }
    }
    rig.ledger()
        .violation(CALLS, format!("a {what} never answered in 2 minutes"));
    None
}

/// One user's workload until `until`: creates, renames and deletes.
async fn user_loop(rig: Arc<Rig>, user: usize, until: Instant, seed: u64) {
    let mut rng =
        StdRng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(user as u64 + 1));
    let mut live: Vec<Uuid> = Vec::new();
    let mut watchers = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        let roll = rng.random_range(0..100);
        if live.is_empty() || roll < 55 {
            n += 1;
            if let Some(voice) = create(&rig, user, n, &mut rng).await {
                live.push(voice);
                let seed = rng.random();
                watchers.push(tokio::spawn(follow(rig.clone(), user, voice, seed)));
            }
        } else if roll < 85 {
            let voice = live[rng.random_range(0..live.len())];
            rename(&rig, user, voice, n, &mut rng).await;
        } else {
            let voice = live.swap_remove(rng.random_range(0..live.len()));
            delete(&rig, user, voice, &mut rng).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
    }
    for watcher in watchers {
        watcher.await.unwrap();
    }
}

async fn create(rig: &Rig, user: usize, n: u64, rng: &mut StdRng) -> Option<Uuid> {
    let mut request = create_request(&format!("Chaos {user}-{n}"));
    request.request_id = format!("chaos-{user}-{n}");
    let answer = until_answered(rig, user, "create", rng, |mut client| {
        let request = request.clone();
        async move { client.create_voice_clone(request).await }
    })
    .await?;
    let voice = match answer {
        Ok(voice) => voice.into_inner(),
        Err(status) => {
            rig.ledger()
                .violation(CALLS, format!("create {n} of user {user}: {status:?}"));
            return None;
        }
    };
    let id: Uuid = voice.voice_id.parse().unwrap();
    // Most voices become ready, some fail at the provider, some never
    // finish there (FAILED at their max age).
    let fate = rng.random_range(0..10);
    let report = match fate {
        0 => None,
        1 => Some(Report::professional("failed")),
        _ => Some(Report::default()),
    };
    if let Some(report) = report {
        rig.fake
            .set_report_if_held(&voice.provider_voice_id, report);
    }
    rig.ledger().voices.insert(id, (user, false));
    Some(id)
}

async fn rename(rig: &Rig, user: usize, voice: Uuid, n: u64, rng: &mut StdRng) {
    let request = pb::UpdateVoiceRequest {
        voice: Some(pb::Voice {
            voice_id: voice.to_string(),
            name: format!("Chaos {user}-{n} renamed"),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["name".into()],
        }),
    };
    let answer = until_answered(rig, user, "update", rng, |mut client| {
        let request = request.clone();
        async move { client.update_voice(request).await }
    })
    .await;
    if let Some(Err(status)) = answer {
        rig.ledger()
            .violation(CALLS, format!("update of {voice}: {status:?}"));
    }
}

async fn delete(rig: &Rig, user: usize, voice: Uuid, rng: &mut StdRng) {
    rig.ledger().voices.insert(voice, (user, true));
    let mut tries = 0;
    let answer = until_answered(rig, user, "delete", rng, |mut client| {
        tries += 1;
        let request = pb::DeleteVoiceRequest {
            voice_id: voice.to_string(),
        };
        async move { client.delete_voice(request).await }
    })
    .await;
    match answer {
        // NOT_FOUND after a retry: the first attempt deleted it.
        Some(Err(status)) if !(status.code() == Code::NotFound && tries > 1) => {
            rig.ledger()
                .violation(CALLS, format!("delete of {voice}: {status:?}"));
        }
        _ => {}
    }
}

/// Watches `voice` (reopening on any running replica after a failure)
/// until a terminal state arrives, checking that revisions only increase.
async fn follow(rig: Arc<Rig>, user: usize, voice: Uuid, rng_seed: u64) {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let until = Instant::now() + MAX_AGE + AGE_SLACK + Duration::from_mins(3);
    let mut highest = 0;
    rig.ledger().terminal_seen.insert(voice, None);
    while Instant::now() < until {
        let Some(mut client) = rig.client(rig.users[user], rng.random_range(0..REPLICAS)) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let request = WatchVoiceStatusRequest {
            voice_ids: vec![voice.to_string()],
        };
        let mut stream = match client.watch_voice_status(request).await {
            Ok(stream) => stream.into_inner(),
            Err(status) if status.code() == Code::NotFound && rig.ledger().voices[&voice].1 => {
                // Deleted by its owner while this watcher was away.
                rig.ledger()
                    .op("watch: reopened after the owner deleted it");
                rig.ledger().terminal_seen.remove(&voice);
                return;
            }
            Err(status) if retryable(status.code()) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(status) => {
                rig.ledger()
                    .violation(CALLS, format!("watch of {voice}: {status:?}"));
                return;
            }
        };
        let mut last = 0;
        // Ends OK only once its voice is terminal (returned below); an
        // error: reopen.
        while let Ok(Some(event)) = stream.message().await {
            let seen = event.voice.unwrap();
            let mut ledger = rig.ledger();
            ledger.check(STREAM_ORDER, 1);
            if seen.revision <= last || seen.revision < highest {
                ledger.violation(
                    STREAM_ORDER,
                    format!(
                        "{voice}: revision {} after {last} (highest {highest})",
                        seen.revision
                    ),
                );
            }
            last = seen.revision;
            highest = highest.max(seen.revision);
            let status = seen.status();
            if matches!(
                status,
                pb::VoiceStatus::Completed | pb::VoiceStatus::Failed | pb::VoiceStatus::Deleted
            ) {
                ledger
                    .terminal_seen
                    .insert(voice, Some((status, seen.revision)));
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per replica and user, a watch of "all my voices", reopened on the same
/// replica after each failure, checking that revisions only increase.
async fn watch_all(rig: Arc<Rig>, replica: usize, user: usize, until: Instant) {
    while Instant::now() < until {
        let addr = rig.addrs.lock().unwrap()[replica].clone();
        let Some(addr) = addr else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut client = client_at(&addr, rig.users[user]);
        let Ok(stream) = client
            .watch_voice_status(WatchVoiceStatusRequest::default())
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        let mut last: HashMap<String, i64> = HashMap::new();
        let ending = tokio::time::sleep_until(until.into());
        tokio::pin!(ending);
        loop {
            let message = tokio::select! {
                () = &mut ending => return,
                message = stream.message() => message,
            };
            let Ok(Some(event)) = message else { break };
            let seen = event.voice.unwrap();
            let mut ledger = rig.ledger();
            ledger.check(STREAM_ORDER, 1);
            ledger.op(format!(
                "events heard by the all-voices watchers of replica {replica}"
            ));
            let before = last.insert(seen.voice_id.clone(), seen.revision);
            if before.is_some_and(|b| seen.revision <= b) {
                ledger.violation(
                    STREAM_ORDER,
                    format!(
                        "{} on replica {replica}: revision {} after {before:?}",
                        seen.voice_id, seen.revision
                    ),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rows PROCESSING past their deadline and the slack, by id.
async fn overdue(db: &DatabaseConnection) -> Option<Vec<String>> {
    let sql = format!(
        "SELECT id::text AS id FROM voices WHERE status = 'processing' \
         AND processing_deadline < now() - interval '{} seconds'",
        AGE_SLACK.as_secs()
    );
    let query = db.query_all_raw(Statement::from_string(db.get_database_backend(), sql));
    let rows = tokio::time::timeout(Duration::from_secs(1), query)
        .await
        .ok()?
        .ok()?;
    Some(rows.iter().map(|r| r.try_get("", "id").unwrap()).collect())
}

/// Checks row ages every 2 s until `until`.
async fn check_ages(rig: Arc<Rig>, until: Instant) {
    let mut reported = BTreeSet::new();
    while Instant::now() < until {
        if let Some(late) = overdue(&rig.db).await {
            let mut ledger = rig.ledger();
            ledger.check(AGES, 1);
            for id in late {
                ledger.overdue.insert(id.parse().unwrap());
                if reported.insert(id.clone()) {
                    ledger.violation(AGES, format!("{id} still PROCESSING past its deadline"));
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A row as the run ends.
struct Row {
    id: Uuid,
    owner: Uuid,
    created_at: chrono::DateTime<chrono::Utc>,
    status: String,
    revision: i64,
    provider_voice_id: Option<String>,
}

async fn rows(db: &DatabaseConnection) -> Vec<Row> {
    let sql =
        "SELECT id, owner_user_id, created_at, status, revision, provider_voice_id FROM voices";
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .iter()
        .map(|r| Row {
            id: r.try_get("", "id").unwrap(),
            owner: r.try_get("", "owner_user_id").unwrap(),
            created_at: r.try_get("", "created_at").unwrap(),
            status: r.try_get("", "status").unwrap(),
            revision: r.try_get("", "revision").unwrap(),
            provider_voice_id: r.try_get("", "provider_voice_id").unwrap(),
        })
        .collect()
}

/// Polls `done` every second for up to `within`; whether it came true.
async fn eventually(within: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    loop {
        if done().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every voice's (type, revision, time) on the public stream, in order.
async fn event_stream(rig: &Rig) -> BTreeMap<String, Vec<(String, i64, String)>> {
    use fred::prelude::*;
    let config = Config::from_url(&rig.cluster_url).unwrap();
    let client = Builder::from_config(config).build().unwrap();
    client.init().await.unwrap();
    let entries: Vec<(String, HashMap<String, String>)> =
        client.xrange(&rig.stream, "-", "+", None).await.unwrap();
    client.quit().await.unwrap();
    let mut by_voice: BTreeMap<String, Vec<(String, i64, String)>> = BTreeMap::new();
    for (_, fields) in entries {
        let event: serde_json::Value = serde_json::from_str(&fields["event"]).unwrap();
        by_voice
            .entry(event["subject"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                event["type"].as_str().unwrap().to_owned(),
                event["data"]["revision"].as_i64().unwrap(),
                event["time"].as_str().unwrap_or_default().to_owned(),
            ));
    }
    by_voice
}

/// The provider and the rows agree: the provider holds exactly the live
/// rows' voices (after the sweep), and no row made two provider voices.
async fn check_provider(rig: &Rig) {
    let live = async || -> (BTreeSet<String>, BTreeSet<String>) {
        let live: BTreeSet<String> = rows(&rig.db)
            .await
            .into_iter()
            .filter(|r| r.status == "processing" || r.status == "completed")
            .filter_map(|r| r.provider_voice_id)
            .collect();
        (live, rig.fake.voice_ids().into_iter().collect())
    };
    let agreed = eventually(Duration::from_secs(90), async || {
        let (rows, provider) = live().await;
        rows == provider
    })
    .await;
    let (rows_held, provider) = live().await;
    let mut ledger = rig.ledger();
    ledger.check(PROVIDER, provider.len() as u64);
    if !agreed {
        ledger.violation(
            PROVIDER,
            format!(
                "provider only: {:?}; rows only: {:?}",
                provider.difference(&rows_held).collect::<Vec<_>>(),
                rows_held.difference(&provider).collect::<Vec<_>>()
            ),
        );
    }
    let created = rig.fake.created();
    ledger.check(ONE_CLONE, created.len() as u64);
    let mut per_row: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (provider_voice, tag) in created {
        per_row
            .entry(tag.unwrap_or_default())
            .or_default()
            .push(provider_voice);
    }
    for (row, voices) in per_row.into_iter().filter(|(_, v)| v.len() > 1) {
        ledger.violation(
            ONE_CLONE,
            format!("row {row} made provider voices {voices:?}"),
        );
    }
}

/// Each stored change on the public stream and at its owner's endpoint,
/// revisions only increasing on it; each watcher saw its terminal state.
async fn check_changes(rig: &Rig) {
    let rows = rows(&rig.db).await;
    let stream = event_stream(rig).await;
    explain_overdue(&rig.ledger(), &rows, &stream);
    let expected: Vec<(usize, Uuid, Vec<i64>)> = {
        let mut ledger = rig.ledger();
        let mut expected = Vec::new();
        for row in &rows {
            let Some(user) = rig.users.iter().position(|u| *u == row.owner) else {
                continue;
            };
            let seen = stream.get(&row.id.to_string()).cloned().unwrap_or_default();
            ledger.check(EVENT_ORDER, seen.len() as u64);
            for pair in seen.windows(2) {
                if pair[1].1 < pair[0].1 {
                    ledger.violation(EVENT_ORDER, format!("{}: {:?}", row.id, seen));
                }
            }
            // A voice's first change is its creation, or, for a reservation
            // the provider never accepted (its create cut off, then given up
            // or deleted by its owner), its failure or deletion.
            let Some(first) = seen.first() else {
                ledger.violation(ON_STREAM, format!("{}: no event at all", row.id));
                continue;
            };
            ledger.check(CREATED_FIRST, 1);
            let created = first.0.ends_with(".created.v1");
            let ended = first.0.ends_with(".failed.v1") || first.0.ends_with(".deleted.v1");
            if !(created || ended && row.provider_voice_id.is_none()) {
                ledger.violation(CREATED_FIRST, format!("{}: {seen:?}", row.id));
            }
            let changes: Vec<i64> = (first.1..=row.revision).collect();
            ledger.check(ON_STREAM, changes.len() as u64);
            let on_stream: BTreeSet<i64> = seen.iter().map(|(_, r, _)| *r).collect();
            for missing in changes.iter().filter(|r| !on_stream.contains(r)) {
                ledger.violation(ON_STREAM, format!("{} revision {missing}", row.id));
            }
            expected.push((user, row.id, changes));
        }
        expected
    };
    let delivered = async || {
        let accepted = rig.receiver.accepted.lock().unwrap().clone();
        expected
            .iter()
            .flat_map(|(user, id, changes)| {
                changes.iter().map(move |r| (*user, format!("{id}:{r}")))
            })
            .filter(|(user, key)| !accepted.get(user).is_some_and(|got| got.contains(key)))
            .collect::<Vec<_>>()
    };
    eventually(Duration::from_secs(90), async || {
        delivered().await.is_empty()
    })
    .await;
    let undelivered = delivered().await;
    let mut ledger = rig.ledger();
    let total = expected.iter().map(|(_, _, c)| c.len() as u64).sum();
    ledger.check(AT_WEBHOOKS, total);
    for (user, key) in undelivered {
        ledger.violation(AT_WEBHOOKS, format!("user {user} never got {key}"));
    }
    let final_status: HashMap<Uuid, (&str, i64)> = rows
        .iter()
        .map(|r| (r.id, (r.status.as_str(), r.revision)))
        .collect();
    let watchers: Vec<(Uuid, Option<(pb::VoiceStatus, i64)>)> =
        ledger.terminal_seen.iter().map(|(k, v)| (*k, *v)).collect();
    ledger.check(WATCHERS, watchers.len() as u64);
    for (voice, seen) in watchers {
        match (seen, final_status.get(&voice)) {
            (Some((_, revision)), Some((_, last))) if revision <= *last => {}
            (seen, stored) => ledger.violation(
                WATCHERS,
                format!("{voice}: saw {seen:?}, stored {stored:?}"),
            ),
        }
    }
}

/// For each row once seen PROCESSING past its deadline (and the slack):
/// how long past its deadline its terminal event came, and which faults
/// began in the minute before that deadline.
fn explain_overdue(
    ledger: &Ledger,
    rows: &[Row],
    stream: &BTreeMap<String, Vec<(String, i64, String)>>,
) {
    if ledger.overdue.is_empty() {
        return;
    }
    let mut late_by = Vec::new();
    let mut before: BTreeMap<&str, u64> = BTreeMap::new();
    for row in rows.iter().filter(|r| ledger.overdue.contains(&r.id)) {
        let deadline = row.created_at + chrono::Duration::from_std(MAX_AGE).unwrap();
        let terminal = stream.get(&row.id.to_string()).and_then(|events| {
            events
                .iter()
                .find(|(kind, _, _)| {
                    kind.ends_with(".failed.v1")
                        || kind.ends_with(".completed.v1")
                        || kind.ends_with(".deleted.v1")
                })
                .and_then(|(_, _, time)| chrono::DateTime::parse_from_rfc3339(time).ok())
        });
        if let Some(terminal) = terminal {
            late_by.push((terminal.with_timezone(&chrono::Utc) - deadline).num_milliseconds());
        }
        for (at, kind) in &ledger.fault_log {
            if *at <= deadline && deadline - *at <= chrono::Duration::minutes(1) {
                *before.entry(kind).or_default() += 1;
            }
        }
    }
    late_by.sort_unstable();
    println!(
        "{} rows were seen PROCESSING past their deadline + {} s; terminal event past the deadline (ms): {late_by:?}",
        ledger.overdue.len(),
        AGE_SLACK.as_secs()
    );
    println!("faults that began in the minute before those deadlines, by kind: {before:?}");
}

/// Prints what ran, what broke and what held; the count of violations.
fn report(rig: &Rig, seed: u64, run: Duration) -> usize {
    let ledger = rig.ledger();
    println!(
        "chaos soak, seed {seed}, {} s: 3 replicas, PostgreSQL, Redis Cluster (3 primaries + 3 replicas)",
        run.as_secs()
    );
    println!("faults injected, by kind:");
    for (kind, count) in &ledger.faults {
        println!("  {count:>6}  {kind}");
    }
    println!("operations, by kind and outcome:");
    for (op, count) in &ledger.ops {
        println!("  {count:>6}  {op}");
    }
    println!("invariants: things checked, violations");
    let mut violations = 0;
    for (invariant, found) in &ledger.violations {
        let checked = ledger.checked.get(invariant).copied().unwrap_or_default();
        println!("  {checked:>8}  {:>3}  {invariant}", found.len());
        violations += found.len();
    }
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_fault_soak_keeps_every_invariant() {
    let seed: u64 = std::env::var("VOICEHUB_CHAOS_SEED")
        .ok()
        .map_or_else(rand::random, |s| {
            s.parse().expect("VOICEHUB_CHAOS_SEED is a u64")
        });
    let run = Duration::from_secs(
        std::env::var("VOICEHUB_CHAOS_SECS")
            .ok()
            .map_or(120, |s| s.parse().expect("VOICEHUB_CHAOS_SECS is seconds")),
    );
    let faults = schedule(seed, run);
    println!(
        "chaos soak: seed {seed} (replay: VOICEHUB_CHAOS_SEED={seed}), {} faults scheduled:",
        faults.len()
    );
    for (at, fault) in &faults {
        println!("  {:>7.1} s  {fault:?}", at.as_secs_f64());
    }
    let rig = Rig::start().await;
    let started = Instant::now();
    let until = started + run;
    let mut background = vec![
        tokio::spawn(run_schedule(rig.clone(), faults, started)),
        tokio::spawn(check_ages(rig.clone(), until)),
    ];
    for replica in 0..REPLICAS {
        for user in 0..USERS {
            background.push(tokio::spawn(watch_all(rig.clone(), replica, user, until)));
        }
    }
    let users: Vec<_> = (0..USERS)
        .map(|user| tokio::spawn(user_loop(rig.clone(), user, until, seed)))
        .collect();
    for task in background {
        task.await.unwrap();
    }
    // Every fault is restored; the voices settle (the stuck ones at their
    // max age), their watchers end.
    let settled = eventually(MAX_AGE + AGE_SLACK + Duration::from_mins(1), async || {
        rows(&rig.db).await.iter().all(|r| r.status != "processing")
    })
    .await;
    if !settled {
        let late = overdue(&rig.db).await.unwrap_or_default();
        rig.ledger()
            .violation(AGES, format!("still PROCESSING at the end: {late:?}"));
    }
    let count = rows(&rig.db).await.len() as u64;
    rig.ledger().check(AGES, count);
    for user in users {
        user.await.unwrap();
    }
    check_provider(&rig).await;
    check_changes(&rig).await;
    let violations = report(&rig, seed, run);
    if violations > 0 {
        rig.keep_logs(seed);
    }
    assert_eq!(violations, 0, "seed {seed}: see VIOLATION lines above");
}
