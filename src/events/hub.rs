//! The local hub: routes each change to the watch streams that asked for it.
//!
//! Streams subscribe by voice id (explicit watches) or by owner (a user's
//! "all my voices" watch). Dispatch looks up exactly those subscribers: an
//! event never wakes a stream that does not watch its voice.
//!
//! Each subscription has a mailbox that keeps **at most one state per
//! voice** — the newest revision. A fast reader sees every change; a slow one
//! sees fewer intermediate states but always the latest, so a terminal state
//! is never lost, and the mailbox's size is bounded by the number of voices
//! it watches. Events are shared (`Arc`): dispatching to a thousand streams
//! copies no voice, and the voice is encoded for clients once (see
//! `pb::status_event`). Dropping a [`Subscription`] unregisters it at once; the
//! `voicehub_watch_streams` gauge counts open subscriptions.
//!
//! When events may have been lost (the event reader reconnected), the hub
//! asks every subscription to resync: its stream re-reads the voices it
//! watches from storage and sends the states it has not sent.

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    sync::Arc,
};

use parking_lot::Mutex;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::sync::Notify;
use uuid::Uuid;

use super::wire::VoiceEvent;
use crate::metrics::Metrics;

/// What a subscription watches.
#[derive(Debug, Clone)]
pub(crate) enum Interest {
    /// These voices, whoever owns them.
    Voices(Vec<Uuid>),
    /// Every voice of this owner, including ones created later.
    Owner(Uuid),
}

/// This replica's routing table from voices and owners to subscriptions.
pub(crate) struct Hub {
    routes: Mutex<Routes>,
    open: Gauge,
    counts: Arc<Counts>,
    /// Bumped when events may have been missed (the event reader was
    /// away): every subscription then re-reads what it watches.
    resyncs: tokio::sync::watch::Sender<u64>,
    resynced: Counter,
}

/// What mailboxes count: events taken by their stream, and events replaced
/// before their stream took them.
struct Counts {
    delivered: Counter,
    coalesced: Counter,
}

#[derive(Default)]
struct Routes {
    next_id: u64,
    by_voice: HashMap<Uuid, HashMap<u64, Arc<Mailbox>>>,
    by_owner: HashMap<Uuid, HashMap<u64, Arc<Mailbox>>>,
}

impl Hub {
    /// An empty hub that counts its open subscriptions, and the events
    /// they took or skipped, in `metrics`.
    #[must_use]
    pub(crate) fn new(metrics: &Metrics) -> Arc<Self> {
        Arc::new(Hub {
            routes: Mutex::default(),
            open: metrics.watch_streams.clone(),
            counts: Arc::new(Counts {
                delivered: metrics.events_delivered.clone(),
                coalesced: metrics.events_coalesced.clone(),
            }),
            resyncs: tokio::sync::watch::Sender::new(0),
            resynced: metrics.watch_resyncs.clone(),
        })
    }

    /// Asks every open subscription to re-read what it watches from
    /// storage: events may have been lost while the event reader was away.
    pub(crate) fn resync(&self) {
        self.resyncs.send_modify(|generation| *generation += 1);
        self.resynced.inc();
        tracing::info!(
            streams = self.open.get(),
            "event reader back: watch streams re-read their voices from storage"
        );
    }

    /// Registers interest; events dispatched from now on reach the subscription.
    pub(crate) fn subscribe(self: &Arc<Self>, interest: Interest) -> Subscription {
        let mailbox = Arc::new(Mailbox {
            undelivered: Mutex::default(),
            notify: Notify::new(),
            counts: self.counts.clone(),
        });
        let mut routes = self.routes.lock();
        routes.next_id += 1;
        self.open.inc();
        let id = routes.next_id;
        match &interest {
            Interest::Voices(ids) => {
                for voice in ids {
                    routes
                        .by_voice
                        .entry(*voice)
                        .or_default()
                        .insert(id, mailbox.clone());
                }
            }
            Interest::Owner(owner) => {
                routes
                    .by_owner
                    .entry(*owner)
                    .or_default()
                    .insert(id, mailbox.clone());
            }
        }
        Subscription {
            hub: self.clone(),
            id,
            interest,
            mailbox,
            resyncs: self.resyncs.subscribe(),
        }
    }

    /// Decodes an event as stored or published and dispatches it; an event
    /// that does not decode is logged and skipped.
    pub(crate) fn dispatch_encoded(&self, event: &[u8]) {
        match VoiceEvent::decode(event) {
            Ok(event) => self.dispatch(&Arc::new(event)),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable event"),
        }
    }

    /// Hands a stored change to every subscription interested in it.
    pub(crate) fn dispatch(&self, event: &Arc<VoiceEvent>) {
        let routes = self.routes.lock();
        let by_voice = routes.by_voice.get(&event.voice_id).into_iter().flatten();
        let by_owner = routes.by_owner.get(&event.owner).into_iter().flatten();
        for (_, mailbox) in by_voice.chain(by_owner) {
            mailbox.offer(event);
        }
    }

    fn unsubscribe(&self, id: u64, interest: &Interest) {
        let mut routes = self.routes.lock();
        self.open.dec();
        let remove = |map: &mut HashMap<Uuid, HashMap<u64, Arc<Mailbox>>>, key: Uuid| {
            if let Entry::Occupied(mut e) = map.entry(key) {
                e.get_mut().remove(&id);
                if e.get().is_empty() {
                    e.remove();
                }
            }
        };
        match interest {
            Interest::Voices(ids) => ids.iter().for_each(|v| remove(&mut routes.by_voice, *v)),
            Interest::Owner(owner) => remove(&mut routes.by_owner, *owner),
        }
    }
}

struct Mailbox {
    undelivered: Mutex<Undelivered>,
    notify: Notify,
    counts: Arc<Counts>,
}

/// What a mailbox holds: the latest undelivered state of each voice, in
/// the order the voices first arrived.
#[derive(Default)]
struct Undelivered {
    order: VecDeque<Uuid>,
    latest: HashMap<Uuid, Arc<VoiceEvent>>,
}

impl Mailbox {
    fn offer(&self, event: &Arc<VoiceEvent>) {
        let mut undelivered = self.undelivered.lock();
        match undelivered.latest.entry(event.voice_id) {
            Entry::Occupied(mut e) => {
                // Coalesce: a newer state replaces one the reader has not taken yet.
                if event.revision > e.get().revision {
                    e.insert(event.clone());
                }
                self.counts.coalesced.inc();
            }
            Entry::Vacant(e) => {
                e.insert(event.clone());
                undelivered.order.push_back(event.voice_id);
            }
        }
        drop(undelivered);
        self.notify.notify_one();
    }

    fn take(&self) -> Option<Arc<VoiceEvent>> {
        let mut undelivered = self.undelivered.lock();
        let id = undelivered.order.pop_front()?;
        let event = undelivered.latest.remove(&id);
        self.counts.delivered.inc();
        event
    }
}

/// An open subscription; dropping it unregisters it.
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    interest: Interest,
    mailbox: Arc<Mailbox>,
    resyncs: tokio::sync::watch::Receiver<u64>,
}

impl Subscription {
    /// The next change, oldest voice first; waits until there is one.
    pub(crate) async fn next(&self) -> Arc<VoiceEvent> {
        loop {
            if let Some(voice) = self.mailbox.take() {
                return voice;
            }
            // notify_one stores a permit when nobody waits, so an offer made
            // between take() and here is not missed.
            self.mailbox.notify.notified().await;
        }
    }
}

impl Subscription {
    /// The hub's requests to resync, from now on.
    pub(crate) fn resyncs(&self) -> Resyncs {
        Resyncs(self.resyncs.clone())
    }
}

/// A subscription's view of the hub's resync requests (see [`Hub::resync`]).
pub(crate) struct Resyncs(tokio::sync::watch::Receiver<u64>);

impl Resyncs {
    /// Completes at a resync request not yet seen here.
    pub(crate) async fn requested(&mut self) {
        if self.0.changed().await.is_err() {
            // The hub is gone, and with it any reason to resync.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id, &self.interest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        pb,
        store::{Visibility, VoiceStatus},
    };

    fn event(id: Uuid, owner: Uuid, revision: i64, status: VoiceStatus) -> Arc<VoiceEvent> {
        Arc::new(VoiceEvent {
            voice_id: id,
            owner,
            visibility: Visibility::Private,
            revision,
            voice: pb::Voice {
                voice_id: id.to_string(),
                status: pb::VoiceStatus::from(status).into(),
                revision,
                ..pb::Voice::default()
            },
            change: None,
            encoded: super::super::wire::EncodeOnce::default(),
        })
    }

    #[tokio::test]
    async fn a_slow_reader_gets_the_latest_state_of_each_voice_in_order() {
        let metrics = Metrics::new();
        let hub = Hub::new(&metrics);
        let owner = Uuid::new_v4();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let sub = hub.subscribe(Interest::Owner(owner));
        for revision in 1..=50 {
            hub.dispatch(&event(a, owner, revision, VoiceStatus::Processing));
        }
        hub.dispatch(&event(b, owner, 1, VoiceStatus::Processing));
        hub.dispatch(&event(a, owner, 51, VoiceStatus::Completed));
        hub.dispatch(&event(a, owner, 7, VoiceStatus::Processing)); // late and old: ignored
        let first = sub.next().await;
        assert_eq!((first.voice_id, first.revision), (a, 51));
        assert!(first.is_terminal());
        assert_eq!(sub.next().await.voice_id, b);
        assert!(sub.mailbox.take().is_none());
        // 50 + 1 + 1 + 1 offers of a: all but the one taken were replaced
        // or ignored (the late one counts too: the reader never sees it).
        assert_eq!(metrics.events_delivered.get(), 2);
        assert_eq!(metrics.events_coalesced.get(), 51);
    }

    #[tokio::test]
    async fn events_reach_only_interested_subscriptions_and_drop_unregisters() {
        let metrics = Metrics::new();
        let open = metrics.watch_streams.clone();
        let hub = Hub::new(&metrics);
        let (owner, other) = (Uuid::new_v4(), Uuid::new_v4());
        let watched = Uuid::new_v4();
        let by_voice = hub.subscribe(Interest::Voices(vec![watched]));
        let by_owner = hub.subscribe(Interest::Owner(owner));
        assert_eq!(open.get(), 2);
        hub.dispatch(&event(Uuid::new_v4(), other, 1, VoiceStatus::Processing));
        assert!(by_voice.mailbox.take().is_none() && by_owner.mailbox.take().is_none());
        hub.dispatch(&event(watched, owner, 1, VoiceStatus::Processing));
        assert!(by_voice.mailbox.take().is_some() && by_owner.mailbox.take().is_some());
        drop(by_voice);
        drop(by_owner);
        assert_eq!(open.get(), 0);
        let routes = hub.routes.lock();
        assert!(routes.by_voice.is_empty() && routes.by_owner.is_empty());
    }
}
