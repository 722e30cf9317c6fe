//! `spawn_app()` and what tests need around it: clients, a test database
//! of their own, the `voicehub` command line, watch helpers, metrics.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, IntoActiveModel};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Status, Streaming,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;
use voicehub::{
    Application,
    auth::{AuthConfig, Authenticator},
    config::{Config, Limits, ProviderConfig},
    metrics::Metrics,
    pb::{
        self, Consent, CreateVoiceCloneRequest, VoiceStatusEvent, WatchVoiceStatusRequest,
        voice_service_client::VoiceServiceClient, webhook_service_client::WebhookServiceClient,
    },
    status_engine::{EngineConfig, Sweeper, Worker},
    store::{self, DatabaseConfig, Labels, Store, Visibility, Voice, VoiceStatus},
};

pub(crate) const JWT_SECRET: &str = "test-secret-test-secret-test-secret!";

/// Generates one `#[tokio::test]` per backend for each named `async fn(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::helpers::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::helpers::Backend::Postgres).await
            })*
        }
    };
}

/// The two stacks every behaviour test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The embedded default: a SQLite file, in-process queue and event bus.
    Sqlite,
    /// Production: PostgreSQL, plus Redis for the queue and the event bus.
    Postgres,
}

/// The shared test Redis (started by scripts/test).
pub(crate) fn redis_url() -> String {
    std::env::var("VOICEHUB_TEST_REDIS_URL").expect(
        "VOICEHUB_TEST_REDIS_URL is not set: Redis tests need a server; run them with scripts/test",
    )
}

/// Sync settings that make tests deterministic: re-checks are due at once,
/// and nothing is reconciled unless a test asks.
pub(crate) fn test_engine_config() -> EngineConfig {
    EngineConfig {
        batch: 32,
        claim_lease: Duration::from_secs(30),
        min_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        idle: Duration::from_millis(200),
        reconcile_every: Duration::from_hours(1),
        // Past the fake provider's longest create (four attempts of 400 ms).
        adopt_after: Duration::from_secs(3),
        push_lease: Duration::from_secs(3),
        sweep_every: Duration::from_hours(1),
        sweep_first_after: Duration::from_mins(1),
        sweep_max_deletions: 50,
        sweep_delete: true,
        confirm_gone_after: Duration::from_millis(300),
    }
}

/// A fresh, empty database for one test.
pub(crate) struct TestDatabase {
    pub(crate) url: String,
    // Keeps the SQLite file alive for the test's duration.
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub(crate) async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("voicehub.db").display()
                );
                TestDatabase {
                    url,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin_url = std::env::var("VOICEHUB_TEST_PG_URL").expect(
                    "VOICEHUB_TEST_PG_URL is not set: PostgreSQL tests need a server; run them with scripts/test",
                );
                let admin = Database::connect(&admin_url).await.unwrap_or_else(|e| {
                    panic!("cannot reach PostgreSQL at VOICEHUB_TEST_PG_URL: {e}")
                });
                let name = format!("vh_{}", Uuid::new_v4().simple());
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                admin.close().await.expect("close admin connection");
                let base = admin_url
                    .rsplit_once('/')
                    .expect("database URL has a path")
                    .0;
                TestDatabase {
                    url: format!("{base}/{name}"),
                    _dir: None,
                }
            }
        }
    }

    pub(crate) fn config(&self) -> DatabaseConfig {
        DatabaseConfig {
            url: SecretString::from(self.url.clone()),
            max_connections: 5,
            // Generous: on a loaded test machine a short wait for one of five
            // connections is contention, not the outage the fault tests make.
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(15),
        }
    }

    /// A connection of the test's own, beside the server's pool.
    pub(crate) async fn connect(&self) -> DatabaseConnection {
        Database::connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

pub(crate) fn auth_config() -> AuthConfig {
    AuthConfig {
        secret: SecretString::from(JWT_SECRET.to_owned()),
        issuer: None,
        audience: None,
        development: false,
    }
}

pub(crate) struct TestApp {
    /// The server's own storage handle (closing it simulates an outage).
    pub(crate) store: Store,
    /// The test's own connection to the same database, to seed and count rows.
    pub(crate) db: DatabaseConnection,
    /// The status engine's worker, for driving single steps (its loop is off
    /// unless a test turns `run_worker` on).
    pub(crate) worker: Worker,
    /// The provider sweep, for running single sweeps (its loop is off with
    /// the worker's).
    pub(crate) sweeper: Sweeper,
    pub(crate) metrics: Metrics,
    /// Where the server listens.
    pub(crate) addr: std::net::SocketAddr,
    /// Where its metrics are served, when the test asked for them.
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    pub(crate) database: DatabaseConfig,
    pub(crate) redis: Option<(String, String)>,
    /// The key of the public event stream.
    pub(crate) public_stream: String,
    pub(crate) auth: Authenticator,
    pub(crate) channel: Channel,
    pub(crate) shutdown: CancellationToken,
    pub(crate) server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _db: TestDatabase,
}

/// Starts the real server on 127.0.0.1:0 over a fresh database of `backend`.
pub(crate) async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// The configuration tests start from, over `db`.
pub(crate) fn test_config(backend: Backend, db: &TestDatabase) -> Config {
    let redis_prefix = format!("vhtest-{}", Uuid::new_v4().simple());
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        tls: None,
        migrate_on_start: true,
        health_interval: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(30),
        max_voices_per_user: 50,
        // Tests create many voices quickly and in parallel; the limits'
        // own tests set them.
        limits: Limits {
            concurrent_uploads: 0,
            concurrent_uploads_per_user: 0,
            creates_per_hour: 0,
            creates_per_day: 0,
            ..Limits::DEFAULT
        },
        sync_max_age: Duration::from_mins(30),
        watch_recheck: Duration::from_mins(1),
        outbox_recheck: Duration::from_hours(1),
        connections: voicehub::connections::ConnectionLimits::DEFAULT,
        redis_url: (backend == Backend::Postgres).then(|| SecretString::from(redis_url())),
        webhooks: voicehub::webhooks::WebhookSettings::defaults(),
        public_events: Some(voicehub::events::PublicEvents {
            stream: format!("{redis_prefix}:voice-events"),
            retention: Duration::from_hours(24 * 7),
        }),
        events_source: "voicehub".into(),
        redis_prefix,
        redis_timeout: Duration::from_secs(1),
        run_worker: false,
        engine: test_engine_config(),
        database: db.config(),
        auth: auth_config(),
        provider: ProviderConfig::Simulated {
            ready_after: Duration::from_secs(1),
        },
        // The test binary is not voicehub: check audio with the built one.
        audio_check: voicehub::audio::CheckerConfig {
            program: BIN.into(),
            wall: voicehub::audio::WALL_BOUND,
        },
        require_consent: true,
        // The tests' samples are short tones (fast to check); the tests of
        // the speech minimum set it back.
        sample_quality: voicehub::audio::QualityThresholds {
            min_speech_seconds: 0.0,
            ..voicehub::audio::QualityThresholds::DEFAULT
        },
    }
}

/// As [`spawn_app`], letting the test adjust the configuration first.
pub(crate) async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDatabase::new(backend).await;
    let mut config = test_config(backend, &db);
    adjust(&mut config);
    let auth = Authenticator::new(&config.auth);
    let database = config.database.clone();
    let redis = config
        .redis_url
        .as_ref()
        .map(|u| (u.expose_secret().to_owned(), config.redis_prefix.clone()));
    let public_stream = config
        .public_events
        .as_ref()
        .map(|p| p.stream.clone())
        .unwrap_or_default();
    // Boxed: the server's start-up is a large future.
    let app = Box::pin(Application::build(config))
        .await
        .expect("application builds");
    let (addr, metrics_addr) = (app.local_addr(), app.metrics_addr());
    let store = app.store().clone();
    let (worker, sweeper, metrics) = (app.worker(), app.sweeper(), app.metrics());
    // The database the server uses, which a test may have pointed elsewhere
    // (a replica shares another app's).
    let db_connection = Database::connect(database.url.expose_secret())
        .await
        .expect("connect to the test database");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    // The listener is already bound, so the first call needs no waiting
    // (lazily: a TLS listener's test brings its own channel).
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    TestApp {
        store,
        db: db_connection,
        worker,
        sweeper,
        metrics,
        addr,
        metrics_addr,
        database,
        redis,
        public_stream,
        auth,
        channel,
        shutdown,
        server,
        _db: db,
    }
}

/// A server whose provider is a fresh fake ElevenLabs.
pub(crate) async fn spawn_app_with_fake(
    backend: Backend,
    adjust: impl FnOnce(&mut Config),
) -> (TestApp, crate::fake_elevenlabs::FakeElevenLabs) {
    let fake = crate::fake_elevenlabs::FakeElevenLabs::start().await;
    let provider = fake.provider_config();
    let app = Box::pin(spawn_app_with(backend, |c| {
        c.provider = provider;
        adjust(c);
    }))
    .await;
    (app, fake)
}

/// `app`'s Redis, connected as another process would, and its key prefix.
pub(crate) async fn redis_of(app: &TestApp) -> (voicehub::redis::Redis, String) {
    let (url, prefix) = app.redis.clone().expect("a Redis-backed app");
    let redis = voicehub::redis::Redis::connect(
        &url,
        Duration::from_secs(1),
        Duration::from_secs(1),
        &Metrics::new(),
    )
    .await
    .unwrap();
    (redis, prefix)
}

/// `app`'s due-queue, as another replica would open it.
pub(crate) async fn queue_of(
    app: &TestApp,
) -> (voicehub::redis::Redis, voicehub::status_engine::RedisQueue) {
    let (redis, prefix) = redis_of(app).await;
    let queue = voicehub::status_engine::RedisQueue::new(
        redis.commands.clone(),
        &prefix,
        prometheus_client::metrics::counter::Counter::default(),
    );
    (redis, queue)
}

/// Polls `done` every 20 ms until it holds or `within` has passed; the
/// caller asserts what it waited for.
pub(crate) async fn wait_for(within: Duration, mut done: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + within;
    while !done() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Another replica of `app`: same database, same Redis and prefix, with
/// `fake` as its provider, adjusted by `adjust`.
pub(crate) async fn replica_of(
    app: &TestApp,
    fake: &crate::fake_elevenlabs::FakeElevenLabs,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    let (url, prefix) = app.redis.clone().expect("a Redis-backed app");
    let (database, provider) = (app.database.clone(), fake.provider_config());
    spawn_app_with(Backend::Postgres, |c| {
        c.database = database;
        c.redis_url = Some(SecretString::from(url));
        c.redis_prefix = prefix;
        c.provider = provider;
        adjust(c);
    })
    .await
}

/// A `voicehub serve` process sharing `app`'s database, Redis, prefix and
/// public stream (its status engine on), calling `fake`, with `extra`
/// settings; and the directory it runs in, to keep while it lives.
pub(crate) fn serve_replica_of(
    app: &TestApp,
    fake: &crate::fake_elevenlabs::FakeElevenLabs,
    extra: &[(&str, &str)],
) -> (Server, tempfile::TempDir) {
    let (redis_url, prefix) = app.redis.clone().expect("a Redis-backed app");
    let database_url = app.database.url.expose_secret().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("VOICEHUB_REDIS_PREFIX", prefix.as_str()),
        ("VOICEHUB_EVENTS_STREAM", app.public_stream.as_str()),
        ("ELEVENLABS_BASE_URL", fake.url.as_str()),
        ("ELEVENLABS_API_KEY", crate::fake_elevenlabs::API_KEY),
        ("VOICEHUB_JWT_SECRET", JWT_SECRET),
    ];
    env.extend_from_slice(extra);
    (serve(dir.path(), &env), dir)
}

/// The ElevenLabs settings inside a test configuration.
pub(crate) fn elevenlabs(config: &mut Config) -> &mut voicehub::provider::ElevenLabsConfig {
    match &mut config.provider {
        ProviderConfig::ElevenLabs(e) => e,
        ProviderConfig::Simulated { .. } => {
            panic!("this test needs the (fake) ElevenLabs provider")
        }
    }
}

/// A real PCM WAV file: 16 kHz, 16-bit mono, a 440 Hz tone of `millis` ms.
pub(crate) fn wav(millis: u32) -> Vec<u8> {
    let samples = 16 * millis;
    let data_len = samples * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&16_000u32.to_le_bytes()); // sample rate
    out.extend_from_slice(&32_000u32.to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..samples {
        let t = f64::from(i) / 16_000.0;
        // |sin| ≤ 1, so the amplitude stays within ±8000: the cast cannot overflow.
        #[allow(clippy::cast_possible_truncation)]
        let v = (f64::sin(2.0 * std::f64::consts::PI * 440.0 * t) * 8_000.0) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// An MP3 of just over a second: an ID3v2.3 tag with a title, then 40
/// silent MPEG-1 Layer III frames (128 kb/s, 44.1 kHz, 26 ms each).
pub(crate) fn mp3() -> Vec<u8> {
    let mut out = b"ID3\x03\x00\x00\x00\x00\x00\x0fTIT2\x00\x00\x00\x05\x00\x00\x00Take".to_vec();
    for _ in 0..40 {
        out.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
        out.extend(std::iter::repeat_n(0u8, 413));
    }
    out
}

/// Speech: `text` read by espeak-ng (22,050 Hz mono), as samples in −1..1.
pub(crate) fn speech(text: &str) -> (Vec<f32>, u32) {
    let program = std::env::var("VOICEHUB_ESPEAK").unwrap_or_else(|_| "espeak-ng".into());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("speech.wav");
    let status = Command::new(&program)
        .arg("-w")
        .arg(&path)
        .arg(text)
        .status()
        .unwrap_or_else(|e| panic!("cannot run espeak-ng ({program}): {e}; run scripts/test"));
    assert!(status.success(), "espeak-ng failed");
    let mut reader = hound::WavReader::open(&path).unwrap();
    let rate = reader.spec().sample_rate;
    let samples = reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32_768.0)
        .collect();
    (samples, rate)
}

/// A 16-bit mono WAV of `samples` (−1..1, clipped beyond) at `rate`.
pub(crate) fn wav_of(samples: &[f32], rate: u32) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut out, spec).unwrap();
    for v in samples {
        #[allow(clippy::cast_possible_truncation)]
        writer
            .write_sample((v.clamp(-1.0, 1.0) * 32_767.0).round() as i16)
            .unwrap();
    }
    writer.finalize().unwrap();
    out.into_inner()
}

/// A WAV sample for a request.
pub(crate) fn sample(filename: &str, data: Vec<u8>) -> pb::AudioSample {
    pb::AudioSample {
        filename: filename.into(),
        content_type: "audio/wav".into(),
        data: data.into(),
    }
}

/// A valid request with one WAV and one MP3 sample.
pub(crate) fn create_request(name: &str) -> CreateVoiceCloneRequest {
    use voicehub::pb::{AudioSample, Visibility};
    CreateVoiceCloneRequest {
        name: name.to_owned(),
        description: "Warm narrator voice".into(),
        samples: vec![
            AudioSample {
                filename: "take-1.wav".into(),
                content_type: "audio/wav".into(),
                data: wav(1_000).into(),
            },
            AudioSample {
                filename: "take-2.mp3".into(),
                content_type: "audio/mpeg".into(),
                data: mp3().into(),
            },
        ],
        visibility: Visibility::Private as i32,
        labels: [("accent".to_owned(), "british".to_owned())].into(),
        language: "en-gb".into(),
        gender: "female".into(),
        request_id: String::new(),
        remove_background_noise: true,
        consent: Some(consent()),
    }
}

/// `voice` as listings, updates and events carry it: without the owner's
/// intake record (consent and sample report), which only CreateVoiceClone
/// and GetVoice return.
pub(crate) fn basic(mut voice: pb::Voice) -> pb::Voice {
    voice.consent = None;
    voice.sample_report = None;
    voice
}

/// A complete consent: the caller is the speaker, confirming a published statement.
pub(crate) fn consent() -> Consent {
    use voicehub::pb::{ConsentBasis, ConsentStatementRef, consent::Statement};
    Consent {
        speaker_name: "Ada Lovelace".into(),
        basis: ConsentBasis::SpeakerIsCaller.into(),
        statement: Some(Statement::StatementRef(ConsentStatementRef {
            id: "voice-clone-consent".into(),
            version: "2026-12".into(),
        })),
        evidence_sha256: String::new(),
        recorded_at: None,
    }
}

impl TestApp {
    /// How many voice rows exist, deleted ones included.
    pub(crate) async fn voice_rows(&self) -> u64 {
        use sea_orm::{EntityTrait, PaginatorTrait};
        store::entity::voice::Entity::find()
            .count(&self.db)
            .await
            .unwrap()
    }

    /// How many events wait in the outbox to be published.
    pub(crate) async fn outbox_rows(&self) -> u64 {
        use sea_orm::{EntityTrait, PaginatorTrait};
        store::entity::voice_event::Entity::find()
            .count(&self.db)
            .await
            .unwrap()
    }

    /// Waits until the relay has published every event in the outbox
    /// (within 15 s: after an outage its retries are up to 5 s apart).
    pub(crate) async fn until_published(&self) {
        for _ in 0..600 {
            if self.outbox_rows().await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the outbox was not drained within 15 s");
    }

    /// Stops the server as a dying process would leave things: its tasks
    /// end, nothing is cleaned up beyond what they do on the way out.
    pub(crate) async fn stop(&mut self) {
        self.shutdown.cancel();
        (&mut self.server)
            .await
            .unwrap()
            .expect("the server stops cleanly");
    }

    /// Every recorded orphan, oldest first.
    pub(crate) async fn orphans(&self) -> Vec<store::entity::provider_orphan::Model> {
        use sea_orm::{EntityTrait, QueryOrder};
        use store::entity::provider_orphan::{Column, Entity};
        Entity::find()
            .order_by_asc(Column::CreatedAt)
            .all(&self.db)
            .await
            .unwrap()
    }

    /// Runs SQL on the test's own connection (schema tricks, fault injection).
    pub(crate) async fn execute(&self, sql: &str) {
        self.db.execute_unprepared(sql).await.unwrap();
    }

    /// The current value of one metric series, e.g.
    /// `voicehub_sql_statements_total{kind="read"}`; 0 when not yet reported.
    pub(crate) fn metric(&self, series: &str) -> u64 {
        metric(&self.metrics.render(), series)
    }
}

/// Every voice row, once none is PROCESSING or `within` has passed.
pub(crate) async fn rows_once_settled(
    db: &DatabaseConnection,
    within: Duration,
) -> Vec<store::entity::voice::Model> {
    use sea_orm::EntityTrait;
    let until = tokio::time::Instant::now() + within;
    loop {
        let rows = store::entity::voice::Entity::find().all(db).await.unwrap();
        if tokio::time::Instant::now() > until
            || rows.iter().all(|v| v.status != VoiceStatus::Processing)
        {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of `series` in a Prometheus text exposition; 0 when absent.
pub(crate) fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<u64>().expect("a whole number"))
        })
        .unwrap_or(0)
}

/// What [`create_voice`] sends: a name, for the usual request
/// ([`create_request`]), or a whole request.
pub(crate) trait CreateWith {
    fn into_request(self) -> CreateVoiceCloneRequest;
}

impl CreateWith for &str {
    fn into_request(self) -> CreateVoiceCloneRequest {
        create_request(self)
    }
}

impl CreateWith for &String {
    fn into_request(self) -> CreateVoiceCloneRequest {
        create_request(self)
    }
}

impl CreateWith for CreateVoiceCloneRequest {
    fn into_request(self) -> CreateVoiceCloneRequest {
        self
    }
}

/// Creates a voice as the client's user and returns it; the one way tests
/// make a voice they expect to be accepted.
pub(crate) async fn create_voice(client: &mut Client, request: impl CreateWith) -> pb::Voice {
    let request = request.into_request();
    let name = request.name.clone();
    client
        .create_voice_clone(request)
        .await
        .unwrap_or_else(|status| panic!("creating {name:?}: {status:?}"))
        .into_inner()
}

/// Reads one voice as the client's user sees it.
pub(crate) async fn get_voice(client: &mut Client, voice_id: &str) -> pb::Voice {
    client
        .get_voice(pb::GetVoiceRequest {
            voice_id: voice_id.to_owned(),
        })
        .await
        .unwrap_or_else(|status| panic!("getting {voice_id}: {status:?}"))
        .into_inner()
}

/// Opens a WatchVoiceStatus stream on `ids` (all my voices when empty).
pub(crate) async fn watch(client: &mut Client, ids: &[&str]) -> Streaming<VoiceStatusEvent> {
    let request = WatchVoiceStatusRequest {
        voice_ids: ids.iter().map(ToString::to_string).collect(),
    };
    client
        .watch_voice_status(request)
        .await
        .unwrap()
        .into_inner()
}

/// The next event, or `None` when the stream ended with OK.
pub(crate) async fn next(stream: &mut Streaming<VoiceStatusEvent>) -> Option<VoiceStatusEvent> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .expect("the stream does not fail")
}

/// The path of the built `voicehub` binary.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_voicehub");

/// A `voicehub` command in `dir` that inherits no voicehub configuration
/// (nor `RUST_LOG`) from the environment the tests run in.
pub(crate) fn voicehub(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for (var, _) in std::env::vars() {
        if var.starts_with("VOICEHUB_") || var.starts_with("ELEVENLABS_") {
            cmd.env_remove(var);
        }
    }
    for var in ["DATABASE_URL", "REDIS_URL", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    cmd
}

/// A `voicehub serve` process of its own; killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: String,
    pub(crate) logs: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Starts `voicehub serve` with zero configuration except a free port (and
/// `env`), and returns once it logged its bound address (no sleeping).
pub(crate) fn serve(dir: &Path, env: &[(&str, &str)]) -> Server {
    try_serve(dir, env).unwrap_or_else(|logs| panic!("voicehub serve did not start: {logs:?}"))
}

/// As [`serve`], or the log of a process that exited first (or did not
/// report its address within a minute; it is killed).
pub(crate) fn try_serve(dir: &Path, env: &[(&str, &str)]) -> Result<Server, Vec<String>> {
    let mut child = voicehub(dir)
        .arg("serve")
        .env("VOICEHUB_LISTEN", "127.0.0.1:0")
        .env("VOICEHUB_LOG_FORMAT", "json")
        // The tests' samples are short tones (fast to check); the tests of
        // the speech minimum set it back.
        .env("VOICEHUB_MIN_SPEECH_SECONDS", "0")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start voicehub serve");
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = logs.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                && json["message"] == "voicehub serving gRPC"
            {
                let _ = tx.send(json["local_addr"].as_str().unwrap_or_default().to_owned());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let Ok(addr) = rx.recv_timeout(Duration::from_mins(1)) else {
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
        return Err(logs.lock().unwrap().clone());
    };
    Ok(Server {
        child,
        addr,
        logs,
        reader: Some(reader),
    })
}

impl Server {
    /// Waits for the process to exit and for its last log line to be read
    /// (the reader ends at end of file).
    pub(crate) fn exited(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        status
    }

    /// A client of this process calling as `user`, on a connection of its
    /// own (clones share it). The process must have been started with
    /// `VOICEHUB_JWT_SECRET` set to [`JWT_SECRET`].
    pub(crate) fn client(&self, user: Uuid) -> Client {
        client_at(&self.addr, user)
    }

    /// A new connection to this process (made on its first call).
    pub(crate) fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_lazy()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the `voicehub serve` at `addr` calling as `user`, on a
/// connection of its own (made at its first call). The process must have
/// been started with `VOICEHUB_JWT_SECRET` set to [`JWT_SECRET`].
pub(crate) fn client_at(addr: &str, user: Uuid) -> Client {
    let token = Authenticator::new(&auth_config())
        .mint(user, Duration::from_hours(2))
        .unwrap();
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    VoiceServiceClient::with_interceptor(channel, Bearer(format!("Bearer {token}")))
}

/// Adds a fixed `authorization` header to every call.
#[derive(Clone)]
pub(crate) struct Bearer(pub String);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.parse().expect("ascii header"));
        Ok(request)
    }
}

pub(crate) type Client = VoiceServiceClient<InterceptedService<Channel, Bearer>>;
pub(crate) type WebhookClient = WebhookServiceClient<InterceptedService<Channel, Bearer>>;

impl TestApp {
    /// A client that sends no credentials.
    pub(crate) fn anonymous(&self) -> VoiceServiceClient<Channel> {
        VoiceServiceClient::new(self.channel.clone())
    }

    /// A client that sends exactly `authorization: <header>`.
    pub(crate) fn with_authorization(&self, header: &str) -> Client {
        VoiceServiceClient::with_interceptor(self.channel.clone(), Bearer(header.to_owned()))
    }

    /// A client acting as `user`, with a valid token.
    pub(crate) fn client(&self, user: Uuid) -> Client {
        let token = self.auth.mint(user, Duration::from_mins(10)).unwrap();
        self.with_authorization(&format!("Bearer {token}"))
    }

    /// A client acting as `user` over a connection of its own (made at its
    /// first call), not the app's shared one.
    pub(crate) fn client_on_own_connection(&self, user: Uuid) -> Client {
        let token = self.auth.mint(user, Duration::from_mins(10)).unwrap();
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_lazy();
        VoiceServiceClient::with_interceptor(channel, Bearer(format!("Bearer {token}")))
    }

    /// A WebhookService client acting as `user`.
    pub(crate) fn webhooks(&self, user: Uuid) -> WebhookClient {
        let token = self.auth.mint(user, Duration::from_mins(10)).unwrap();
        WebhookServiceClient::with_interceptor(
            self.channel.clone(),
            Bearer(format!("Bearer {token}")),
        )
    }

    pub(crate) fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// Stores a voice directly, as the write path would have.
    pub(crate) async fn seed(
        &self,
        owner: Uuid,
        visibility: Visibility,
        status: VoiceStatus,
    ) -> Voice {
        self.insert(voice(owner, visibility, status, store::now()))
            .await
    }

    /// Stores `voice` as given.
    pub(crate) async fn insert(&self, voice: Voice) -> Voice {
        insert(&self.db, voice).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Stores `voice` as given through `db`.
pub(crate) async fn insert(db: &DatabaseConnection, voice: Voice) -> Voice {
    voice
        .into_active_model()
        .insert(db)
        .await
        .expect("insert a voice")
}

/// A fully populated voice row.
pub(crate) fn voice(
    owner: Uuid,
    visibility: Visibility,
    status: VoiceStatus,
    at: chrono::DateTime<chrono::Utc>,
) -> Voice {
    let id = Uuid::now_v7();
    Voice {
        id,
        owner_user_id: owner,
        provider_voice_id: Some(format!("el{}", &id.simple().to_string()[..18])),
        name: format!("voice {}", &id.simple().to_string()[24..]),
        description: "a test voice".into(),
        language: "en".into(),
        gender: "female".into(),
        category: "cloned".into(),
        visibility,
        status,
        failure_reason: (status == VoiceStatus::Failed)
            .then(|| "provider rejected the samples".into()),
        preview_url: (status == VoiceStatus::Completed)
            .then(|| format!("https://cdn.example/{id}.mp3")),
        labels: Labels([("accent".to_owned(), "british".to_owned())].into()),
        provider_labels: Labels([("age".to_owned(), "young".to_owned())].into()),
        request_id: None,
        revision: 1,
        created_at: at,
        updated_at: at,
        completed_at: (status == VoiceStatus::Completed).then_some(at),
        deleted_at: (status == VoiceStatus::Deleted).then_some(at),
        processing_deadline: (status == VoiceStatus::Processing)
            .then(|| at + chrono::Duration::minutes(30)),
        push_pending: false,
        push_lease_until: None,
        provider_missing_since: None,
        consent_recorded: false,
        create_lease_until: None,
    }
}

/// Asserts a gRPC error's code and, for INVALID_ARGUMENT, the field its BadRequest names.
pub(crate) fn assert_invalid_field(status: &Status, field: &str) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest details in {status:?}"));
    let fields: Vec<_> = bad
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, [field], "{status:?}");
    assert!(
        status.message().contains(field),
        "message names the field: {status:?}"
    );
}

/// What `health` reports for the whole server now (Health/Check).
pub(crate) async fn serving_status(
    health: &mut HealthClient<Channel>,
) -> tonic_health::pb::health_check_response::ServingStatus {
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    tonic_health::pb::health_check_response::ServingStatus::try_from(status).unwrap()
}
