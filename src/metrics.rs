//! Prometheus metrics of one server, kept in a registry of its own (no
//! global state), so each in-process server of a test suite counts alone.
//!
//! Components receive the instruments they update when they are built; the
//! registry renders them all in the text exposition format. Counters only
//! grow; a gauge is the current value.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
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
}

impl EncodeLabelValue for StatementKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let value = match self {
            StatementKind::Read => "read",
            StatementKind::Write => "write",
            StatementKind::Outbox => "outbox",
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

/// Every instrument voicehub updates, and the registry that renders them.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// SQL statements sent to the database, by kind.
    pub(crate) sql_statements: Family<StatementLabels, Counter>,
    /// Round trips to the due-queue's store (Redis, or the in-process map).
    pub(crate) queue_round_trips: Counter,
    /// Watch streams open on this replica.
    pub(crate) watch_streams: Gauge,
    /// Events the relay published to the bus.
    pub(crate) events_published: Counter,
    /// Events waiting in the outbox, as of the relay's last failed pass (0
    /// once it drained the outbox).
    pub(crate) outbox_backlog: Gauge,
}

impl Metrics {
    /// A fresh registry with every instrument at zero.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("voicehub");
        let sql_statements = Family::<StatementLabels, Counter>::default();
        let queue_round_trips = Counter::default();
        let watch_streams = Gauge::default();
        let events_published = Counter::default();
        let outbox_backlog = Gauge::default();
        registry.register(
            "sql_statements",
            "SQL statements sent to the database",
            sql_statements.clone(),
        );
        registry.register(
            "queue_round_trips",
            "Round trips to the due-queue's store",
            queue_round_trips.clone(),
        );
        registry.register(
            "watch_streams",
            "WatchVoiceStatus streams open on this replica",
            watch_streams.clone(),
        );
        registry.register(
            "events_published",
            "Voice events the relay published to the event bus",
            events_published.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Voice events waiting in the outbox while the event bus refuses them",
            outbox_backlog.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            sql_statements,
            queue_round_trips,
            watch_streams,
            events_published,
            outbox_backlog,
        }
    }

    /// Every metric in the Prometheus text exposition format.
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
