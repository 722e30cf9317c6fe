//! The server as a whole: storage, provider, status engine, events, auth,
//! health, reflection and the API on one listener.
//!
//! [`Application::build`] does everything that can fail at start-up (connect,
//! migrate, bind) and returns a server that knows its address, so tests bind
//! `127.0.0.1:0` and call it without waiting. [`Application::run_until_stopped`]
//! serves until the shutdown token is cancelled — the one token every
//! background task and every watch stream listens to: health goes
//! NOT_SERVING, watch streams end with UNAVAILABLE, the listener closes,
//! in-flight calls finish, background tasks stop (the status engine hands
//! the voices it claimed back to the queue, due now), connections close;
//! all within `VOICEHUB_SHUTDOWN_GRACE`, past which what is left is cut.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::Context;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::{
    allocator, audio,
    auth::Authenticator,
    config::{self, Config, TlsFiles},
    connections::{self, ConnectionLimits},
    events::{self, DynBus, LocalBus, PublicStream, RedisBus, Relay},
    grpc::{DoorLimits, IntakePolicy, LimitLayer, ObserveLayer, VoiceApi, Watches, WebhookApi},
    health::{self, StorageHealth},
    metrics::{self, Metrics, PoolLabel},
    pb,
    quota::CreateQuota,
    redis::Redis,
    status_engine::{DynCoordination, DynQueue, LocalQueue, RedisQueue, Sweeper, Worker},
    store::Store,
    webhooks::Deliverer,
    write_path::{CreateLimits, WritePath},
};

/// The Redis side of a replica, when REDIS_URL is set.
struct RedisParts {
    redis: Redis,
    queue: Arc<RedisQueue>,
    bus: Arc<RedisBus>,
}

impl RedisParts {
    /// This replica's readers of Redis: the event stream into the hub, and
    /// the queue's wake-ups into the worker.
    fn spawn_readers(&self, tasks: &TaskTracker, shutdown: &CancellationToken) {
        tasks.spawn(
            self.bus
                .clone()
                .read(self.redis.reader.clone(), shutdown.clone()),
        );
        let queue = self.queue.clone();
        let (subscriber, stop) = (self.redis.subscriber.clone(), shutdown.clone());
        tasks.spawn(async move { queue.listen(subscriber, stop).await });
    }
}

/// A built server: bound, connected and migrated, not yet serving.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics_listener: Option<TcpListener>,
    store: Store,
    auth: Authenticator,
    writes: WritePath,
    audio: Arc<audio::Checker>,
    /// What a create must bring besides its samples.
    intake: IntakePolicy,
    worker: Worker,
    sweeper: Sweeper,
    relay: Arc<Relay>,
    run_worker: bool,
    bus: DynBus,
    redis: Option<RedisParts>,
    metrics: Metrics,
    health_interval: Duration,
    limits: config::Limits,
    /// The bounds on the gRPC listener's connections.
    connection_limits: ConnectionLimits,
    /// The open watch streams, their limits and their rechecks.
    watches: Arc<Watches>,
    /// How long a shutdown waits for calls in progress.
    grace: Duration,
    /// TLS for the gRPC listener, when configured.
    tls: Option<ServerTlsConfig>,
    /// The WebhookService.
    webhooks: WebhookApi,
    /// Sends webhook deliveries.
    deliverer: Deliverer,
}

impl Application {
    /// Builds the provider, connects to storage (and Redis), applies
    /// migrations (unless disabled) and binds the listen address.
    ///
    /// # Errors
    /// A bad provider setting, storage unreachable, a migration failing, or
    /// the address in use; each with its context.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        warn_about_tokens(&config.auth);
        let metrics = Metrics::new();
        let (store, installation) = open_store(&config, &metrics).await?;
        let provider = config.provider.build(&metrics, installation)?;
        tracing::info!(provider = provider.name(), "voice provider");

        let (queue, coordination, bus, redis) = queue_and_bus(&config, &metrics).await?;
        let public = public_stream(&config, redis.as_ref());
        let relay = Arc::new(
            Relay::new(
                store.clone(),
                bus.clone(),
                config.outbox_recheck,
                metrics.events_published.clone(),
                metrics.outbox_backlog.clone(),
            )
            .with_public(public, config.events_source.clone()),
        );
        let sweeper = Sweeper::new(
            (provider.clone(), store.clone(), coordination.clone()),
            installation,
            &config.engine,
            &metrics,
        );
        let worker = Worker::new(
            (queue, coordination),
            store.clone(),
            provider.clone(),
            config.engine.clone(),
            &metrics,
        );
        let writes = WritePath::new(
            store.clone(),
            provider,
            worker.scheduler(),
            CreateLimits {
                max_per_user: config.max_voices_per_user,
                max_age: config.sync_max_age,
            },
            create_quota(&config, redis.as_ref(), &metrics),
        );

        let audio = audio_checker(&config.audio_check, &metrics).await?;
        let webhooks = WebhookApi::new(
            store.clone(),
            config.webhooks.clone(),
            config.events_source.clone(),
        );
        let deliverer = Deliverer::new(store.clone(), config.webhooks.clone(), &metrics)
            .context("the webhooks' HTTP client")?;

        let watches = Watches::new(
            store.clone(),
            (config.limits.watches_per_user, config.limits.watches),
            config.watch_recheck,
            &metrics,
        );

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {} (VOICEHUB_LISTEN)", config.listen))?;
        let local_addr = listener.local_addr()?;
        let tls = tls_config(config.tls.as_ref())?;
        let metrics_listener = metrics_listener(config.metrics_listen).await?;
        Ok(Application {
            listener,
            local_addr,
            metrics_listener,
            store,
            auth: Authenticator::new(&config.auth),
            writes,
            audio,
            intake: IntakePolicy {
                require_consent: config.require_consent,
                quality: config.sample_quality,
            },
            worker,
            sweeper,
            relay,
            run_worker: config.run_worker,
            bus,
            redis,
            metrics,
            health_interval: config.health_interval,
            limits: config.limits,
            connection_limits: config.connections,
            watches,
            grace: config.shutdown_grace,
            tls,
            webhooks,
            deliverer,
        })
    }

    /// The address the listener is bound to (the real port when asked for 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where metrics are served (`GET /metrics`), when they are.
    #[must_use]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The server's storage handle.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A handle on the status engine's worker, to drive single steps
    /// (`run_once`) from tests and tools.
    #[must_use]
    pub fn worker(&self) -> Worker {
        self.worker.clone()
    }

    /// A handle on the provider sweep, to run single sweeps (`run_once`)
    /// from tests and tools.
    #[must_use]
    pub fn sweeper(&self) -> Sweeper {
        self.sweeper.clone()
    }

    /// This server's metrics.
    #[must_use]
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains and returns.
    ///
    /// # Errors
    /// The transport failed while serving.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            listener,
            local_addr,
            metrics_listener,
            store,
            auth,
            writes,
            audio,
            intake,
            worker,
            sweeper,
            relay,
            run_worker,
            bus,
            redis,
            metrics,
            health_interval,
            limits,
            connection_limits,
            watches,
            grace,
            tls,
            webhooks,
            deliverer,
        } = self;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        health::set_all(&reporter, ServingStatus::Serving).await;

        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let tasks = TaskTracker::new();
        tasks.spawn(allocator::run(allocator::INTERVAL, shutdown.clone()));
        let mut health = StorageHealth::new(&store, reporter.clone(), health_interval, true);
        // Its own connection is made now, before the first call is accepted:
        // a replica that later runs out of descriptors keeps it.
        health.run_once().await;
        tasks.spawn(health.run(shutdown.clone()));
        // Every replica relays (its own writes' events, and others'
        // leftovers) and sends webhook deliveries.
        tasks.spawn(relay.clone().run(shutdown.clone()));
        tasks.spawn(deliverer.run(shutdown.clone()));
        if run_worker {
            tasks.spawn(worker.run(shutdown.clone()));
            tasks.spawn(sweeper.run(shutdown.clone()));
        } else {
            tracing::info!(
                "status engine worker disabled in this process (VOICEHUB_SYNC_WORKER=false)"
            );
        }
        if let Some(listener) = metrics_listener {
            tasks.spawn(serve_metrics(
                listener,
                store.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(parts) = &redis {
            parts.spawn_readers(&tasks, &shutdown);
        }

        let api = VoiceApi::new(
            store.clone(),
            &metrics,
            writes,
            audio,
            bus.hub().clone(),
            watches,
            shutdown.clone(),
            intake,
        );
        tracing::info!(%local_addr, "voicehub serving gRPC");
        let stopping = shutdown.clone();
        let serving = server_builder(tls, connection_limits)?
            .trace_fn(|req| tracing::info_span!("grpc", method = %req.uri().path()))
            .layer(ObserveLayer::new(metrics.clone()))
            .layer(LimitLayer::new(door_limits(&limits), &metrics))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api.into_service(auth.clone()))
            .add_service(webhooks.into_service(auth))
            .serve_with_incoming_shutdown(
                connections::incoming(listener, connection_limits, &metrics),
                async move {
                    stopping.cancelled().await;
                    // Before the listener closes, so health watchers see it go.
                    health::set_all(&reporter, ServingStatus::NotServing).await;
                    tracing::info!(
                        "shutting down: NOT_SERVING, ending watch streams, draining calls"
                    );
                },
            );
        let served = drain(serving, &shutdown, grace, &tasks).await;
        if let Some(parts) = redis {
            parts.redis.quit().await;
        }
        store.close().await;
        tracing::info!("voicehub stopped");
        served.context("serving gRPC")
    }
}

/// Start-up warnings about how user tokens are checked.
fn warn_about_tokens(auth: &crate::auth::AuthConfig) {
    if auth.development {
        tracing::warn!(
            secret_file = config::DEV_SECRET_FILE,
            "development mode: user tokens are signed with a locally generated secret; \
             set VOICEHUB_JWT_SECRET in production"
        );
    } else if auth.issuer.is_none() || auth.audience.is_none() {
        // Two environments with one secret would accept each other's tokens.
        tracing::warn!(
            issuer = auth.issuer.is_some(),
            audience = auth.audience.is_some(),
            "VOICEHUB_JWT_ISSUER or VOICEHUB_JWT_AUDIENCE is unset: any token signed with \
             this secret is accepted, also one minted for another environment; set both"
        );
    }
}

/// Storage, migrated (unless disabled), and this installation's id read
/// from it, logged and shown as a metric.
/// The server's HTTP/2 and connection settings, before its layers.
fn server_builder(
    tls: Option<ServerTlsConfig>,
    limits: ConnectionLimits,
) -> anyhow::Result<Server> {
    let mut builder = Server::builder();
    if !limits.age.is_zero() {
        // GOAWAY at the age; `connections` cuts what is left after the grace.
        builder = builder.max_connection_age(limits.age);
    }
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context(TLS_FILES)?;
        tracing::info!("gRPC over TLS");
    }
    Ok(builder
        // Detects dead peers behind NATs and load balancers that drop idle
        // connections silently; without it a half-open stream lives forever.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // hyper's 16 KiB default turns a large header (a 64 KiB token)
        // into a GOAWAY that kills every call on the connection; up to
        // this size the call alone is refused (see auth).
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES)))
}

/// The listener's TLS settings from `files`, checked now: bad files are
/// refused at start-up rather than when serving begins.
fn tls_config(files: Option<&TlsFiles>) -> anyhow::Result<Option<ServerTlsConfig>> {
    use secrecy::ExposeSecret;
    let Some(files) = files else {
        return Ok(None);
    };
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(
        &files.cert,
        files.key.expose_secret().as_bytes(),
    ));
    Server::builder()
        .tls_config(tls.clone())
        .context(TLS_FILES)?;
    Ok(Some(tls))
}

/// The audio checker, proven to run: a broken one is found at start-up,
/// not by the first upload.
async fn audio_checker(
    config: &audio::CheckerConfig,
    metrics: &Metrics,
) -> anyhow::Result<Arc<audio::Checker>> {
    let checker = audio::Checker::new(config.clone(), metrics);
    checker.self_test().await.with_context(|| {
        format!(
            "the audio checker ({} check-audio) does not run",
            config.program.display()
        )
    })?;
    Ok(Arc::new(checker))
}

async fn open_store(config: &Config, metrics: &Metrics) -> anyhow::Result<(Store, uuid::Uuid)> {
    let store = Store::connect(&config.database, metrics, events::encode_stored)
        .await
        .context("connecting to the database (DATABASE_URL)")?;
    if config.migrate_on_start {
        store
            .migrate()
            .await
            .context("applying database migrations")?;
    }
    let installation = store
        .installation_id()
        .await
        .context("reading this installation's id (is the database migrated?)")?;
    tracing::info!(%installation, "installation id: every provider voice made here carries it");
    metrics
        .installation
        .get_or_create(&metrics::InstallationLabel {
            installation: installation.to_string(),
        })
        .set(1);
    Ok((store, installation))
}

/// The due-queue and the event bus: in Redis when REDIS_URL is set (shared
/// by the replicas), in-process otherwise.
async fn queue_and_bus(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<(DynQueue, DynCoordination, DynBus, Option<RedisParts>)> {
    Ok(if let Some(url) = &config.redis_url {
        use secrecy::ExposeSecret;
        let redis = Redis::connect(
            url.expose_secret(),
            config.redis_timeout,
            events::READ_BLOCK,
            metrics,
        )
        .await?;
        let queue = Arc::new(RedisQueue::new(
            redis.commands.clone(),
            &config.redis_prefix,
            metrics.queue_round_trips.clone(),
        ));
        queue.notice_reconnects();
        let bus = Arc::new(RedisBus::new(
            redis.commands.clone(),
            &config.redis_prefix,
            metrics,
        ));
        tracing::info!(
            prefix = config.redis_prefix,
            "due-queue and events in Redis: replicas share the work"
        );
        (
            queue.clone(),
            queue.clone(),
            bus.clone(),
            Some(RedisParts { redis, queue, bus }),
        )
    } else {
        tracing::info!("no REDIS_URL: in-process due-queue and event bus (a single replica only)");
        let queue = Arc::new(LocalQueue::new(metrics.queue_round_trips.clone()));
        (queue.clone(), queue, Arc::new(LocalBus::new(metrics)), None)
    })
}

/// The metrics listener, when one is configured.
async fn metrics_listener(addr: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} (VOICEHUB_METRICS_LISTEN)"))?;
    Ok(Some(listener))
}

/// The door's share of the replica's limits.
fn door_limits(limits: &config::Limits) -> DoorLimits {
    DoorLimits {
        calls: (limits.concurrent_rpcs, limits.concurrent_rpcs_per_user),
        uploads: (
            limits.concurrent_uploads,
            limits.concurrent_uploads_per_user,
        ),
        arrival: (limits.request_arrival, limits.upload_arrival),
    }
}

/// The public event stream: in Redis, when there is one and the stream's
/// retention is not zero.
fn public_stream(config: &Config, redis: Option<&RedisParts>) -> Option<PublicStream> {
    let (Some(redis), Some(public)) = (redis, &config.public_events) else {
        if config.public_events.is_some() {
            tracing::info!("no REDIS_URL: no public event stream");
        }
        return None;
    };
    tracing::info!(
        stream = public.stream,
        retention = %humantime::format_duration(public.retention),
        "public events in Redis"
    );
    Some(PublicStream::new(
        redis.redis.commands.clone(),
        public.clone(),
    ))
}

/// Lets the server drain after `shutdown` (calls in progress finish, streams
/// end), then the background tasks stop (the worker hands its claims back):
/// all within `grace` of the signal; past it, what is left is cut.
async fn drain(
    serving: impl Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: &CancellationToken,
    grace: Duration,
    tasks: &TaskTracker,
) -> Result<(), tonic::transport::Error> {
    let cut_at = OnceLock::new();
    let grace_over = async {
        shutdown.cancelled().await;
        let at = *cut_at.get_or_init(|| Instant::now() + grace);
        tokio::time::sleep_until(at).await;
    };
    let served = tokio::select! {
        served = serving => served,
        () = grace_over => {
            tracing::warn!(?grace, "shutdown grace over: calls still in progress are cut");
            Ok(())
        }
    };
    shutdown.cancel();
    tasks.close();
    let at = *cut_at.get_or_init(|| Instant::now() + grace);
    if tokio::time::timeout_at(at, tasks.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown grace over: background tasks still running are cut"
        );
    }
    served
}

/// Serves `GET /metrics` on `listener`, with the pool's connections read at
/// each scrape.
fn serve_metrics(
    listener: TcpListener,
    store: Store,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> {
    let refresh = move |metrics: &Metrics| {
        let (open, idle) = store.pool_usage();
        let idle = i64::try_from(idle).unwrap_or(i64::MAX);
        let gauge = |state| {
            metrics
                .db_connections
                .get_or_create(&PoolLabel { state })
                .clone()
        };
        gauge("idle").set(idle);
        gauge("in_use").set(i64::from(open) - idle);
    };
    metrics::serve(listener, metrics, refresh, shutdown)
}

/// The per-user creation rate, counted in Redis when the replicas share one.
fn create_quota(
    config: &Config,
    redis: Option<&RedisParts>,
    metrics: &Metrics,
) -> Arc<CreateQuota> {
    let (per_hour, per_day) = (
        config.limits.creates_per_hour,
        config.limits.creates_per_day,
    );
    Arc::new(match redis {
        Some(parts) => CreateQuota::redis(
            parts.redis.commands.clone(),
            &config.redis_prefix,
            per_hour,
            per_day,
            metrics,
        ),
        None => CreateQuota::local(per_hour, per_day, metrics),
    })
}

/// What a TLS failure at start-up names.
const TLS_FILES: &str = "the TLS certificate or key (VOICEHUB_TLS_CERT, VOICEHUB_TLS_KEY)";

/// The largest header list a request may carry (HTTP/2 SETTINGS).
const MAX_HEADER_LIST_BYTES: u32 = 256 * 1024;

/// Reflection knows every type a client may meet: the API, health, both
/// reflection versions, and `google.rpc` (so grpcurl can print BadRequest details).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}
