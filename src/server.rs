//! The server as a whole: storage, auth, health, reflection and the API on
//! one listener.
//!
//! [`Application::build`] does everything that can fail at start-up (connect,
//! migrate, bind) and returns a server that knows its address, so tests bind
//! `127.0.0.1:0` and call it without waiting. [`Application::run_until_stopped`]
//! serves until the shutdown token is cancelled: health goes NOT_SERVING,
//! the listener closes, in-flight calls finish, background tasks stop.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::{
    auth::Authenticator,
    config::Config,
    grpc::VoiceApi,
    health::{self, StorageHealth},
    pb, provider,
    store::Store,
    voices::Voices,
};

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    store: Store,
    auth: Authenticator,
    voices: Voices,
    health_interval: Duration,
}

impl Application {
    /// Connects to storage, applies migrations (unless disabled) and binds the
    /// listen address.
    ///
    /// # Errors
    /// Storage unreachable, a migration failing, or the address in use; each
    /// with its context.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if config.auth.development {
            tracing::warn!(
                secret_file = crate::config::DEV_SECRET_FILE,
                "development mode: user tokens are signed with a locally generated secret; \
                 set VOICEHUB_JWT_SECRET in production"
            );
        }
        let provider = provider::from_config(&config.provider)?;
        tracing::info!(provider = provider.name(), "voice provider");
        let store = Store::connect(&config.database)
            .await
            .context("connecting to the database (DATABASE_URL)")?;
        if config.migrate_on_start {
            store
                .migrate()
                .await
                .context("applying database migrations")?;
        }
        store.ping().await.context("checking the database")?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {} (VOICEHUB_LISTEN)", config.listen))?;
        let local_addr = listener.local_addr()?;
        let voices = Voices::new(
            store.clone(),
            provider,
            config.max_voices_per_user,
            config.sync_max_age,
        );
        Ok(Application {
            listener,
            local_addr,
            store,
            auth: Authenticator::new(&config.auth),
            voices,
            health_interval: config.health_interval,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `shutdown` is cancelled, then drains and returns.
    ///
    /// # Errors
    /// The transport failed while serving.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            listener,
            local_addr,
            store,
            auth,
            voices,
            health_interval,
        } = self;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        health::set_all(&reporter, ServingStatus::Serving).await;

        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let tasks = TaskTracker::new();
        tasks.spawn(
            StorageHealth::new(store.clone(), reporter.clone(), health_interval, true)
                .run(shutdown.clone()),
        );

        tracing::info!(%local_addr, "voicehub serving gRPC");
        let stopping = shutdown.clone();
        let served = Server::builder()
            // Detects dead peers behind NATs and load balancers that drop idle
            // connections silently; without it a half-open stream lives forever.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .trace_fn(|req| tracing::info_span!("grpc", method = %req.uri().path()))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(VoiceApi::new(store.clone(), voices).into_service(auth))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                stopping.cancelled().await;
                // Before the listener closes, so health watchers see it go.
                health::set_all(&reporter, ServingStatus::NotServing).await;
                tracing::info!("shutting down: NOT_SERVING, draining calls");
            })
            .await;
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        store.close().await;
        tracing::info!("voicehub stopped");
        served.context("serving gRPC")
    }
}

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
