//! grpc.health.v1 status, kept truthful.
//!
//! Both the overall service `""` and `voicehub.v1.VoiceService` report
//! SERVING only while storage answers; [`StorageHealth::run`] pings it
//! periodically and flips both to NOT_SERVING when it stops answering (and
//! back when it recovers). On shutdown the server marks them NOT_SERVING
//! before it stops accepting calls, so load balancers drain it first.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{error::chain, pb::voice_service_server::SERVICE_NAME, store::Store};

/// The health service names this server reports.
pub(crate) const SERVICES: [&str; 2] = ["", SERVICE_NAME];

pub(crate) async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Watches storage and reports it through the health service.
pub(crate) struct StorageHealth {
    store: Store,
    reporter: HealthReporter,
    interval: Duration,
    healthy: bool,
}

impl StorageHealth {
    /// Starts from the state the caller established (SERVING after migration).
    pub(crate) fn new(
        store: Store,
        reporter: HealthReporter,
        interval: Duration,
        healthy: bool,
    ) -> Self {
        StorageHealth {
            store,
            reporter,
            interval,
            healthy,
        }
    }

    /// One check: pings storage and reports a change. Returns whether storage answered.
    pub(crate) async fn run_once(&mut self) -> bool {
        let result = self.store.ping().await;
        let healthy = result.is_ok();
        if healthy != self.healthy {
            match &result {
                Ok(()) => tracing::info!("storage reachable again: SERVING"),
                Err(e) => tracing::error!(error = %chain(e), "storage unreachable: NOT_SERVING"),
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
