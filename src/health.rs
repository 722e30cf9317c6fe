//! grpc.health.v1 status, kept truthful.
//!
//! The overall service `""`, `voicehub.v1.VoiceService` and
//! `voicehub.v1.WebhookService` report
//! SERVING only while storage answers; [`StorageHealth::run`] pings it every
//! `VOICEHUB_HEALTH_INTERVAL` (1 s) and flips both to NOT_SERVING when a
//! ping fails or takes over 750 ms (and back at the first that succeeds).
//! The ping is the database protocol's own (PostgreSQL: a Sync message), not
//! SQL: an idle server still runs no statement and no transaction. It goes
//! over a connection of its own, not the serving pool: a replica whose pool
//! is saturated (a burst of streams opening) still answers health truthfully,
//! since the database does answer. On shutdown the server marks them NOT_SERVING
//! before it stops accepting calls, so load balancers drain it first.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    error::chain,
    pb::{voice_service_server, webhook_service_server},
    store::{Probe, Store},
};

/// How long a ping may take before storage counts as unreachable. With the
/// default 1 s interval, an outage shows within 1.75 s.
const PING_TIMEOUT: Duration = Duration::from_millis(750);

/// The health service names this server reports.
pub(crate) const SERVICES: [&str; 3] = [
    "",
    voice_service_server::SERVICE_NAME,
    webhook_service_server::SERVICE_NAME,
];

pub(crate) async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Watches storage and reports it through the health service.
pub(crate) struct StorageHealth {
    /// Storage's own connection for pings, apart from the serving pool.
    probe: Probe,
    reporter: HealthReporter,
    interval: Duration,
    healthy: bool,
}

impl StorageHealth {
    /// Starts from the state the caller established (SERVING after migration).
    pub(crate) fn new(
        store: &Store,
        reporter: HealthReporter,
        interval: Duration,
        healthy: bool,
    ) -> Self {
        StorageHealth {
            probe: store.probe(),
            reporter,
            interval,
            healthy,
        }
    }

    /// One check: pings storage and reports a change. Returns whether storage answered.
    pub(crate) async fn run_once(&mut self) -> bool {
        let result = tokio::time::timeout(PING_TIMEOUT, self.probe.ping()).await;
        if result.is_err() {
            self.probe.reset();
        }
        let healthy = matches!(result, Ok(Ok(())));
        if healthy != self.healthy {
            match &result {
                Ok(Ok(())) => tracing::info!("storage reachable again: SERVING"),
                Ok(Err(e)) => {
                    tracing::error!(error = %chain(e), "storage unreachable: NOT_SERVING");
                }
                Err(_) => tracing::error!(
                    timeout = ?PING_TIMEOUT,
                    "storage did not answer a ping: NOT_SERVING"
                ),
            }
            let status = if healthy {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_all(&self.reporter, status).await;
            self.healthy = healthy;
        }
        healthy
    }

    /// Checks every `interval` until `shutdown` is cancelled.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            self.run_once().await;
        }
    }
}
