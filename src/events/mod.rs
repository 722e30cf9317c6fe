//! Change events: every stored change of a voice (status transition, update,
//! delete, creation) is published once, and reaches the watch streams of
//! every replica through that replica's local [`Hub`].
//!
//! An event is converted from the stored row once, on the replica that
//! stored it, into [`VoiceEvent`] (wire format: `wire.rs`), and shared by
//! every watch stream.
//!
//! Two buses:
//! - [`RedisBus`]: a Redis Stream (`XADD`, approximate `MAXLEN`). Each replica
//!   runs one blocking reader that remembers the last id it saw and resumes
//!   from it after a reconnect, so a replica misses nothing still in the
//!   stream. Delivery is at-least-once per replica; watch streams drop
//!   revisions they have already sent, so duplicates are harmless.
//! - [`LocalBus`]: in-process, for the single-replica embedded default.
//!
//! Publishing never fails the caller's request: the change is already
//! stored. If Redis cannot take it, the event is still dispatched to this
//! replica's watchers and the failure is logged; watchers elsewhere see the
//! voice's state when they next (re)connect, since every stream starts with
//! a snapshot.

mod hub;
mod redis;
mod wire;

use std::sync::Arc;

pub(crate) use hub::{Hub, Interest};
use prometheus_client::metrics::gauge::Gauge;
pub use redis::stream_key;
pub(crate) use redis::{READ_BLOCK, RedisBus};
pub use wire::{DecodeError, STREAM_FIELD, VoiceEvent};

use crate::store::Voice;

/// Publishes stored changes to every replica.
#[async_trait::async_trait]
pub(crate) trait EventBus: Send + Sync + 'static {
    /// Publishes `voices`, as stored after a change each, in one round
    /// trip (the status engine settles a whole batch at once).
    async fn publish(&self, voices: &[Voice]);

    /// This replica's hub, where watch streams subscribe.
    fn hub(&self) -> &Arc<Hub>;
}

/// The configured bus, shared.
pub(crate) type DynBus = Arc<dyn EventBus>;

/// The in-process bus: publishing is dispatching.
pub(crate) struct LocalBus {
    hub: Arc<Hub>,
}

impl LocalBus {
    /// A bus whose hub counts its watch streams in `watch_streams`.
    #[must_use]
    pub(crate) fn new(watch_streams: Gauge) -> Self {
        LocalBus {
            hub: Hub::new(watch_streams),
        }
    }
}

#[async_trait::async_trait]
impl EventBus for LocalBus {
    async fn publish(&self, voices: &[Voice]) {
        for voice in voices {
            self.hub.dispatch(&Arc::new(VoiceEvent::stored(voice)));
        }
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}
