//! Change events: every stored change of a voice (status transition, update,
//! delete, creation) is published once, and reaches the watch streams of
//! every replica through that replica's local [`Hub`].
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

use std::sync::Arc;

pub use hub::{Hub, Interest, Subscription};
pub use redis::RedisBus;

use crate::store::Voice;

/// Publishes stored changes to every replica.
#[async_trait::async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes `voice`, as stored after a change.
    async fn publish(&self, voice: &Voice);

    /// This replica's hub, where watch streams subscribe.
    fn hub(&self) -> &Arc<Hub>;
}

pub type DynBus = Arc<dyn EventBus>;

/// The in-process bus: publishing is dispatching.
pub struct LocalBus {
    hub: Arc<Hub>,
}

impl LocalBus {
    pub fn new() -> Self {
        LocalBus { hub: Hub::new() }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl EventBus for LocalBus {
    async fn publish(&self, voice: &Voice) {
        self.hub.dispatch(voice);
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}
