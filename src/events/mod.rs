//! Change events: every stored change of a voice (status transition, update,
//! delete, creation) reaches the watch streams of every replica.
//!
//! ```text
//! change + its event ─▶ outbox (one transaction) ─▶ Relay ─▶ bus ─▶ each replica's Hub ─▶ watch streams
//! ```
//!
//! - The store writes each change's event into the outbox in the change's
//!   own transaction, encoded once as [`VoiceEvent`] (wire format: `wire.rs`).
//! - The [`Relay`] publishes what the outbox holds, in outbox order, and
//!   then deletes it: at-least-once, in revision order per voice, also after
//!   a crash or a bus outage (see `relay.rs` for when it runs).
//! - Two buses:
//!   - [`RedisBus`]: a Redis Stream (`XADD`, approximate `MAXLEN`). Each
//!     replica runs one blocking reader that remembers the last id it saw and
//!     resumes from it after a reconnect, so a replica misses nothing still
//!     in the stream.
//!   - [`LocalBus`]: in-process, for the single-replica embedded default.
//! - Delivery is at-least-once per replica; watch streams drop revisions
//!   they have already sent, so duplicates are harmless.
//! - With Redis, the relay also appends each change to the public stream
//!   ([`PublicStream`], `public.rs`): CloudEvents for other services, the
//!   contract in `docs/events.md`. A change leaves the outbox only once both
//!   took it.
//!
//! A change is stored before anyone hears of it, so publishing never fails
//! the caller's request. While the bus refuses events, the relay hands them
//! to this replica's watchers at once and keeps them in the outbox until the
//! bus takes them.

mod hub;
mod public;
mod redis;
mod relay;
mod wire;

use std::sync::Arc;

use bytes::Bytes;
pub(crate) use hub::{Hub, Interest, Subscription};
pub(crate) use public::PublicStream;
pub use public::{EVENT_FIELD, PublicEvent, PublicEvents, document};
pub use redis::stream_key;
pub(crate) use redis::{READ_BLOCK, RedisBus};
pub use relay::Relay;
pub use wire::{DecodeError, EventSummary, STREAM_FIELD, VoiceEvent};

use crate::{
    metrics::Metrics,
    store::{Change, Voice},
};

/// The outbox payload of a voice as just stored by `change`: its encoded
/// [`VoiceEvent`]. Handed to the store, which writes it with each change.
#[must_use]
pub fn encode_stored(voice: &Voice, change: Change) -> Vec<u8> {
    VoiceEvent::stored(voice, change).encode()
}

/// The bus did not take every event of a publication.
#[derive(Debug, thiserror::Error)]
#[error("the event bus refused events: {0}")]
pub struct PublishError(pub(crate) String);

/// Carries stored changes to every replica.
#[async_trait::async_trait]
pub(crate) trait EventBus: Send + Sync + 'static {
    /// Publishes `events` (each an encoded [`VoiceEvent`], as stored in
    /// the outbox), in order, in one round trip.
    ///
    /// # Errors
    /// The bus did not take all of them; they count as not published.
    async fn publish(&self, events: &[Bytes]) -> Result<(), PublishError>;

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
    /// A bus whose hub counts its watch streams and deliveries in `metrics`.
    #[must_use]
    pub(crate) fn new(metrics: &Metrics) -> Self {
        LocalBus {
            hub: Hub::new(metrics),
        }
    }
}

#[async_trait::async_trait]
impl EventBus for LocalBus {
    async fn publish(&self, events: &[Bytes]) -> Result<(), PublishError> {
        for event in events {
            self.hub.dispatch_encoded(event);
        }
        Ok(())
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}
