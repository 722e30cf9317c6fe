//! Prometheus metrics of one server, kept in a registry of its own (no
//! global state), so each in-process server of a test suite counts alone.
//!
//! Components receive the instruments they update when they are built; the
//! registry renders them all in the OpenMetrics text format, which [`serve`]
//! answers on `GET /metrics` of its own listener (`VOICEHUB_METRICS_LISTEN`),
//! apart from the gRPC port. Counters only grow; a gauge is the current
//! value. Every label's values come from a fixed set (methods, codes,
//! endpoints, statuses), so no caller can grow the number of series.

use std::sync::Arc;

use axum::{Router, http::header, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// What a SQL statement did: by its verb, apart from the outbox's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum StatementKind {
    /// A `SELECT` of voices.
    Read,
    /// Anything else on voices: `INSERT`, `UPDATE`, `DELETE`, ...
    Write,
    /// Any statement on the event outbox: writing a change's event,
    /// reading and clearing what the relay publishes.
    Outbox,
    /// Any statement on webhook endpoints, deliveries and attempts.
    Webhooks,
}

impl EncodeLabelValue for StatementKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let value = match self {
            StatementKind::Read => "read",
            StatementKind::Write => "write",
            StatementKind::Outbox => "outbox",
            StatementKind::Webhooks => "webhooks",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

/// The labels of `voicehub_sql_statements_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct StatementLabels {
    /// Read or write.
    pub(crate) kind: StatementKind,
}

/// The labels of `voicehub_rpc_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RpcLabels {
    /// `package.Service/Method`, or `unknown` for a path no service has.
    pub(crate) method: &'static str,
    /// The gRPC status code's name, e.g. `OK`, `NOT_FOUND`.
    pub(crate) code: &'static str,
}

/// Labels that name one thing: an RPC method, a provider endpoint, a
/// connection, a state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct MethodLabel {
    /// `package.Service/Method`.
    pub(crate) method: &'static str,
}

/// The labels of `voicehub_provider_calls_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ProviderLabels {
    /// The provider's endpoint, e.g. `voices.add`.
    pub(crate) endpoint: &'static str,
    /// `ok`, or the failure's class (`unavailable`, `rejected`, ...).
    pub(crate) outcome: &'static str,
}

/// The label of the provider's latency and retry metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct EndpointLabel {
    /// The provider's endpoint, e.g. `voices.add`.
    pub(crate) endpoint: &'static str,
}

/// The label of `voicehub_voice_transitions_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TransitionLabel {
    /// The status a voice moved to: `processing` (created), `completed`,
    /// `failed`, `deleted`.
    pub(crate) to: &'static str,
}

/// The label of `voicehub_redis_reconnects_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ConnectionLabel {
    /// Which of the replica's Redis connections: `commands`, `reader`, `subscriber`.
    pub(crate) connection: &'static str,
}

/// The label of `voicehub_webhook_deliveries_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct DeliveryLabel {
    /// `delivered`, `retried`, `given_up` or `disabled` (410 Gone).
    pub(crate) outcome: &'static str,
}

/// The label of `voicehub_limit_refusals_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct LimitLabel {
    /// The limit: `concurrent_rpcs`, `concurrent_uploads`, `watches_per_user`,
    /// `watches`, `create_rate`.
    pub(crate) limit: &'static str,
}

/// The label of `voicehub_audio_checks_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct AudioCheckLabel {
    /// `accepted` (every sample is audio), `refused` (one is not, or broke
    /// a bound), `failed` (the check could not run).
    pub(crate) outcome: &'static str,
}

/// The label of `voicehub_audio_bounds_broken_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct AudioBoundLabel {
    /// `memory`, `cpu`, `stack`, `wall`, or `crash` (the parser died otherwise).
    pub(crate) bound: &'static str,
}

/// The label of `voicehub_db_connections`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct PoolLabel {
    /// `in_use` or `idle`.
    pub(crate) state: &'static str,
}

/// The label of `voicehub_installation_info`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct InstallationLabel {
    /// This installation's id (one per database; one series per process).
    pub(crate) installation: String,
}

/// The label of the sweep's counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct SweepLabel {
    /// `voicehub_sweep_spared_total`: why a tagged provider voice was left
    /// alone (`other_installation`, `no_row`, `held_by_live_voice`).
    /// `voicehub_sweep_deletions_total`: `deleted`, `reported` (report-only
    /// mode), `failed`.
    pub(crate) what: &'static str,
}

/// A latency histogram: 1 ms to ~33 s in powers of two.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Voices per status-engine step: 0, 1, 2, 4 ... 1024.
fn batch_sizes() -> Histogram {
    Histogram::new(std::iter::once(0.0).chain(exponential_buckets(1.0, 2.0, 11)))
}

/// A family of latency histograms.
pub(crate) type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every instrument voicehub updates, and the registry that renders them.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Finished RPCs, by method and gRPC code.
    pub(crate) rpc_requests: Family<RpcLabels, Counter>,
    /// How long RPCs took, by method (a stream: until it ended).
    pub(crate) rpc_duration: Latencies<MethodLabel>,
    /// SQL statements sent to the database, by kind.
    pub(crate) sql_statements: Family<StatementLabels, Counter>,
    /// Database connections of this replica's pool, in use and idle.
    pub(crate) db_connections: Family<PoolLabel, Gauge>,
    /// Round trips to the due-queue's store (Redis, or the in-process map).
    pub(crate) queue_round_trips: Counter,
    /// Voices in the due-queue, as of the last claim.
    pub(crate) queue_depth: Gauge,
    /// Voices one status-engine step claimed.
    pub(crate) claimed_per_step: Histogram,
    /// Claimed ids storage does not know (another deployment's entries).
    pub(crate) sync_unknown_ids: Counter,
    /// Voices that moved to a status, by status.
    pub(crate) transitions: Family<TransitionLabel, Counter>,
    /// Calls to the voice provider (after retries), by endpoint and outcome.
    pub(crate) provider_calls: Family<ProviderLabels, Counter>,
    /// How long provider calls took, retries included, by endpoint.
    pub(crate) provider_duration: Latencies<EndpointLabel>,
    /// Attempts sent again after a transient failure, by endpoint.
    pub(crate) provider_retries: Family<EndpointLabel, Counter>,
    /// Reconnections of the replica's Redis connections.
    pub(crate) redis_reconnects: Family<ConnectionLabel, Counter>,
    /// Watch streams open on this replica.
    pub(crate) watch_streams: Gauge,
    /// Events the relay published to the bus.
    pub(crate) events_published: Counter,
    /// Events handed to watch streams on this replica.
    pub(crate) events_delivered: Counter,
    /// Events a slow watch stream never saw because a newer state of the
    /// same voice replaced them in its mailbox.
    pub(crate) events_coalesced: Counter,
    /// Events waiting in the outbox, as of the relay's last failed pass (0
    /// once it drained the outbox).
    pub(crate) outbox_backlog: Gauge,
    /// Times every watch stream was asked to re-read its voices from storage.
    pub(crate) watch_resyncs: Counter,
    /// Changes a watch stream's periodic recheck found that no event delivered.
    pub(crate) watch_recheck_catches: Counter,
    /// Watch streams' re-reads that failed (tried again shortly).
    pub(crate) watch_reread_failures: Counter,
    /// Batches of watch streams' storage reads (each at most two queries).
    pub(crate) snapshot_batches: Counter,
    /// Watch streams' storage reads, answered by those batches.
    pub(crate) snapshot_reads: Counter,
    /// Batches of GetVoice reads (one query each).
    pub(crate) lookup_batches: Counter,
    /// GetVoice reads, answered by those batches.
    pub(crate) lookup_reads: Counter,
    /// Calls refused at a limit, by limit.
    pub(crate) limit_refusals: Family<LimitLabel, Counter>,
    /// Webhook delivery attempts, by what followed.
    pub(crate) webhook_deliveries: Family<DeliveryLabel, Counter>,
    /// Webhook deliveries pending, as of the deliverer's last look.
    pub(crate) webhook_backlog: Gauge,
    /// Webhook endpoints voicehub disabled (410 Gone, failing too long, a
    /// URL no longer allowed).
    pub(crate) webhook_endpoints_disabled: Counter,
    /// Unary calls in progress.
    pub(crate) rpcs_in_flight: Gauge,
    /// CreateVoiceClone calls in progress.
    pub(crate) uploads_in_flight: Gauge,
    /// Creates let through because the creation rate could not be checked.
    pub(crate) quota_unchecked: Counter,
    /// This installation's id, as a label of a constant 1.
    pub(crate) installation: Family<InstallationLabel, Gauge>,
    /// Tagged provider voices the sweep left alone as not provably its own, by why.
    pub(crate) sweep_spared: Family<SweepLabel, Counter>,
    /// Provider voices the sweep deleted, would have deleted, or failed to delete.
    pub(crate) sweep_deletions: Family<SweepLabel, Counter>,
    /// Sweeps that deleted nothing because they would have deleted more than their budget.
    pub(crate) sweep_over_budget: Counter,
    /// COMPLETED voices FAILED because they were confirmed gone at the provider.
    pub(crate) voices_vanished: Counter,
    /// Connections the listener failed to accept (EMFILE and the like).
    pub(crate) accept_errors: Counter,
    /// Connections closed at once: the replica had its most open.
    pub(crate) connections_refused: Counter,
    /// Connections open on the gRPC listener.
    pub(crate) connections_open: Gauge,
    /// CreateVoiceClone audio checks, by outcome.
    pub(crate) audio_checks: Family<AudioCheckLabel, Counter>,
    /// Audio checks whose child process broke a bound, by bound.
    pub(crate) audio_bounds_broken: Family<AudioBoundLabel, Counter>,
}

impl Metrics {
    /// A fresh registry with every instrument at zero.
    #[must_use]
    #[allow(clippy::too_many_lines)] // one registration per metric, nothing else
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("voicehub");
        let metrics = Metrics {
            registry: Arc::default(),
            rpc_requests: Family::default(),
            rpc_duration: Family::new_with_constructor(latency),
            sql_statements: Family::default(),
            db_connections: Family::default(),
            queue_round_trips: Counter::default(),
            queue_depth: Gauge::default(),
            claimed_per_step: batch_sizes(),
            sync_unknown_ids: Counter::default(),
            transitions: Family::default(),
            provider_calls: Family::default(),
            provider_duration: Family::new_with_constructor(latency),
            provider_retries: Family::default(),
            redis_reconnects: Family::default(),
            watch_streams: Gauge::default(),
            events_published: Counter::default(),
            events_delivered: Counter::default(),
            events_coalesced: Counter::default(),
            outbox_backlog: Gauge::default(),
            watch_resyncs: Counter::default(),
            watch_recheck_catches: Counter::default(),
            snapshot_batches: Counter::default(),
            watch_reread_failures: Counter::default(),
            snapshot_reads: Counter::default(),
            lookup_batches: Counter::default(),
            lookup_reads: Counter::default(),
            limit_refusals: Family::default(),
            webhook_deliveries: Family::default(),
            webhook_backlog: Gauge::default(),
            webhook_endpoints_disabled: Counter::default(),
            rpcs_in_flight: Gauge::default(),
            uploads_in_flight: Gauge::default(),
            quota_unchecked: Counter::default(),
            installation: Family::default(),
            sweep_spared: Family::default(),
            sweep_deletions: Family::default(),
            sweep_over_budget: Counter::default(),
            voices_vanished: Counter::default(),
            accept_errors: Counter::default(),
            connections_refused: Counter::default(),
            connections_open: Gauge::default(),
            audio_checks: Family::default(),
            audio_bounds_broken: Family::default(),
        };
        let m = &metrics;
        let r = &mut registry;
        r.register(
            "rpc_requests",
            "Finished RPCs by method and gRPC status code",
            m.rpc_requests.clone(),
        );
        r.register_with_unit(
            "rpc_duration",
            "How long RPCs took (a stream: until it ended), by method",
            Unit::Seconds,
            m.rpc_duration.clone(),
        );
        r.register(
            "sql_statements",
            "SQL statements sent to the database",
            m.sql_statements.clone(),
        );
        r.register(
            "db_connections",
            "Database connections of this replica's pool, in use and idle",
            m.db_connections.clone(),
        );
        r.register(
            "queue_round_trips",
            "Round trips to the due-queue's store",
            m.queue_round_trips.clone(),
        );
        r.register(
            "sync_queue_depth",
            "Voices in the due-queue, as of the last claim",
            m.queue_depth.clone(),
        );
        r.register(
            "sync_claimed_per_step",
            "Voices one status-engine step claimed",
            m.claimed_per_step.clone(),
        );
        r.register(
            "sync_unknown_ids",
            "Claimed queue entries this database does not know (a shared VOICEHUB_REDIS_PREFIX?)",
            m.sync_unknown_ids.clone(),
        );
        r.register(
            "voice_transitions",
            "Voices that moved to a status (processing: created)",
            m.transitions.clone(),
        );
        r.register(
            "provider_calls",
            "Calls to the voice provider, after retries, by endpoint and outcome",
            m.provider_calls.clone(),
        );
        r.register_with_unit(
            "provider_call_duration",
            "How long voice provider calls took, retries included",
            Unit::Seconds,
            m.provider_duration.clone(),
        );
        r.register(
            "provider_retries",
            "Provider requests sent again after a transient failure",
            m.provider_retries.clone(),
        );
        r.register(
            "redis_reconnects",
            "Reconnections of this replica's Redis connections",
            m.redis_reconnects.clone(),
        );
        r.register(
            "watch_streams",
            "WatchVoiceStatus streams open on this replica",
            m.watch_streams.clone(),
        );
        r.register(
            "events_published",
            "Voice events the relay published to the event bus",
            m.events_published.clone(),
        );
        r.register(
            "events_delivered",
            "Voice events handed to watch streams on this replica",
            m.events_delivered.clone(),
        );
        r.register(
            "events_coalesced",
            "Voice events a slow watch stream skipped: a newer state of the voice replaced them",
            m.events_coalesced.clone(),
        );
        r.register(
            "outbox_backlog",
            "Voice events waiting in the outbox while the event bus refuses them",
            m.outbox_backlog.clone(),
        );
        r.register(
            "watch_resyncs",
            "Times the watch streams re-read their voices from storage after the event reader was away",
            m.watch_resyncs.clone(),
        );
        r.register(
            "watch_recheck_catches",
            "Changes a watch stream's periodic recheck of its processing voices found that no event had delivered (a lost event)",
            m.watch_recheck_catches.clone(),
        );
        r.register(
            "watch_reread_failures",
            "Watch streams' re-reads of their voices that failed (storage busy or away); the stream stays open and reads again 1 to 2 s later",
            m.watch_reread_failures.clone(),
        );
        r.register(
            "watch_snapshot_batches",
            "Batches of watch streams' storage reads (a snapshot, a re-read), each at most two queries however many streams it serves",
            m.snapshot_batches.clone(),
        );
        r.register(
            "watch_snapshot_reads",
            "Watch streams' storage reads (a snapshot, a re-read), served by the batches",
            m.snapshot_reads.clone(),
        );
        r.register(
            "get_voice_batches",
            "Batches of GetVoice reads: calls in flight together share one query",
            m.lookup_batches.clone(),
        );
        r.register(
            "get_voice_reads",
            "GetVoice reads of storage, served by the batches",
            m.lookup_reads.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by what followed: delivered, retried, given_up, disabled",
            m.webhook_deliveries.clone(),
        );
        r.register(
            "webhook_backlog",
            "Webhook deliveries pending, as of the deliverer's last look",
            m.webhook_backlog.clone(),
        );
        r.register(
            "webhook_endpoints_disabled",
            "Webhook endpoints voicehub disabled: 410 Gone, failing too long, or a URL no longer allowed",
            m.webhook_endpoints_disabled.clone(),
        );
        r.register(
            "limit_refusals",
            "Calls refused with RESOURCE_EXHAUSTED at a limit, by limit",
            m.limit_refusals.clone(),
        );
        r.register(
            "rpcs_in_flight",
            "Unary calls in progress",
            m.rpcs_in_flight.clone(),
        );
        r.register(
            "uploads_in_flight",
            "CreateVoiceClone calls in progress (each holds its samples)",
            m.uploads_in_flight.clone(),
        );
        r.register(
            "quota_unchecked",
            "Creates let through because the creation rate could not be checked (Redis away)",
            m.quota_unchecked.clone(),
        );
        r.register(
            "installation_info",
            "This installation's id (one per database), as a label",
            m.installation.clone(),
        );
        r.register(
            "sweep_spared",
            "Tagged provider voices the sweep left alone, not provably this installation's, by why",
            m.sweep_spared.clone(),
        );
        r.register(
            "sweep_deletions",
            "Provider voices the sweep deleted, reported (report-only mode) or failed to delete",
            m.sweep_deletions.clone(),
        );
        r.register(
            "sweep_over_budget",
            "Sweeps that deleted nothing: they would have deleted more than VOICEHUB_SWEEP_MAX_DELETIONS",
            m.sweep_over_budget.clone(),
        );
        r.register(
            "voices_vanished",
            "COMPLETED voices FAILED because they were confirmed deleted at the provider",
            m.voices_vanished.clone(),
        );
        r.register(
            "accept_errors",
            "Connections the gRPC listener failed to accept (out of file descriptors, ...); accepts pause after each",
            m.accept_errors.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed as soon as they were accepted: this replica had VOICEHUB_MAX_CONNECTIONS open",
            m.connections_refused.clone(),
        );
        r.register(
            "connections_open",
            "Connections open on the gRPC listener",
            m.connections_open.clone(),
        );
        r.register(
            "audio_checks",
            "CreateVoiceClone audio checks (each in a bounded child process), by outcome",
            m.audio_checks.clone(),
        );
        r.register(
            "audio_bounds_broken",
            "Audio checks whose child broke a bound (memory, cpu, stack, wall) or crashed; the sample was refused",
            m.audio_bounds_broken.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// Every metric in the OpenMetrics text format.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The content type of [`Metrics::render`]'s output.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the metrics at `GET /metrics` on `listener` until `shutdown`.
/// `refresh` runs before each render, to update what is read on demand
/// (the database pool's connections).
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    refresh: impl Fn(&Metrics) + Clone + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    let scrape = move || {
        let (metrics, refresh) = (metrics.clone(), refresh.clone());
        async move {
            refresh(&metrics);
            ([(header::CONTENT_TYPE, OPENMETRICS)], metrics.render())
        }
    };
    let app = Router::new().route("/metrics", get(scrape));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruments_render_in_the_text_format() {
        let metrics = Metrics::new();
        metrics
            .sql_statements
            .get_or_create(&StatementLabels {
                kind: StatementKind::Read,
            })
            .inc_by(3);
        metrics.queue_round_trips.inc();
        metrics.watch_streams.set(2);
        let text = metrics.render();
        assert!(
            text.contains("voicehub_sql_statements_total{kind=\"read\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("voicehub_queue_round_trips_total 1"),
            "{text}"
        );
        assert!(text.contains("voicehub_watch_streams 2"), "{text}");
    }
}
