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
//! it watches. Dropping a [`Subscription`] unregisters it at once.

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::store::Voice;

/// What a subscription watches.
#[derive(Debug, Clone)]
pub enum Interest {
    /// These voices, whoever owns them.
    Voices(Vec<Uuid>),
    /// Every voice of this owner, including ones created later.
    Owner(Uuid),
}

#[derive(Default)]
pub struct Hub {
    routes: Mutex<Routes>,
}

#[derive(Default)]
struct Routes {
    next_id: u64,
    by_voice: HashMap<Uuid, HashMap<u64, Arc<Mailbox>>>,
    by_owner: HashMap<Uuid, HashMap<u64, Arc<Mailbox>>>,
    count: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps stay consistent even if a holder panicked; keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// Registers interest; events dispatched from now on reach the subscription.
    pub fn subscribe(self: &Arc<Self>, interest: Interest) -> Subscription {
        let mailbox = Arc::new(Mailbox::default());
        let mut routes = lock(&self.routes);
        routes.next_id += 1;
        routes.count += 1;
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
        }
    }

    /// Hands a stored change to every subscription interested in it.
    pub fn dispatch(&self, voice: &Voice) {
        let routes = lock(&self.routes);
        let by_voice = routes.by_voice.get(&voice.id).into_iter().flatten();
        let by_owner = routes
            .by_owner
            .get(&voice.owner_user_id)
            .into_iter()
            .flatten();
        for (_, mailbox) in by_voice.chain(by_owner) {
            mailbox.offer(voice);
        }
    }

    /// Open subscriptions, for tests and metrics.
    pub fn subscribers(&self) -> usize {
        lock(&self.routes).count
    }

    fn unsubscribe(&self, id: u64, interest: &Interest) {
        let mut routes = lock(&self.routes);
        routes.count -= 1;
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

#[derive(Default)]
struct Mailbox {
    pending: Mutex<Pending>,
    notify: Notify,
}

#[derive(Default)]
struct Pending {
    order: VecDeque<Uuid>,
    latest: HashMap<Uuid, Voice>,
}

impl Mailbox {
    fn offer(&self, voice: &Voice) {
        let mut pending = lock(&self.pending);
        match pending.latest.entry(voice.id) {
            Entry::Occupied(mut e) => {
                // Coalesce: a newer state replaces one the reader has not taken yet.
                if voice.revision > e.get().revision {
                    e.insert(voice.clone());
                }
            }
            Entry::Vacant(e) => {
                e.insert(voice.clone());
                pending.order.push_back(voice.id);
            }
        }
        drop(pending);
        self.notify.notify_one();
    }

    fn take(&self) -> Option<Voice> {
        let mut pending = lock(&self.pending);
        let id = pending.order.pop_front()?;
        pending.latest.remove(&id)
    }
}

/// An open subscription; dropping it unregisters it.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    interest: Interest,
    mailbox: Arc<Mailbox>,
}

impl Subscription {
    /// The next change, oldest voice first; waits until there is one.
    pub async fn next(&self) -> Voice {
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

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id, &self.interest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Labels, Visibility, VoiceStatus};

    fn voice(id: Uuid, owner: Uuid, revision: i64, status: VoiceStatus) -> Voice {
        let now = crate::store::now();
        Voice {
            id,
            owner_user_id: owner,
            provider_voice_id: None,
            name: "v".into(),
            description: String::new(),
            language: String::new(),
            gender: String::new(),
            category: String::new(),
            visibility: Visibility::Private,
            status,
            failure_reason: None,
            preview_url: None,
            labels: Labels::default(),
            request_id: None,
            revision,
            created_at: now,
            updated_at: now,
            completed_at: None,
            deleted_at: None,
            processing_deadline: None,
        }
    }

    #[tokio::test]
    async fn a_slow_reader_gets_the_latest_state_of_each_voice_in_order() {
        let hub = Hub::new();
        let owner = Uuid::new_v4();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let sub = hub.subscribe(Interest::Owner(owner));
        for revision in 1..=50 {
            hub.dispatch(&voice(a, owner, revision, VoiceStatus::Processing));
        }
        hub.dispatch(&voice(b, owner, 1, VoiceStatus::Processing));
        hub.dispatch(&voice(a, owner, 51, VoiceStatus::Completed));
        hub.dispatch(&voice(a, owner, 7, VoiceStatus::Processing)); // late and old: ignored
        let first = sub.next().await;
        assert_eq!(
            (first.id, first.revision, first.status),
            (a, 51, VoiceStatus::Completed)
        );
        assert_eq!(sub.next().await.id, b);
        assert!(sub.mailbox.take().is_none());
    }

    #[tokio::test]
    async fn events_reach_only_interested_subscriptions_and_drop_unregisters() {
        let hub = Hub::new();
        let (owner, other) = (Uuid::new_v4(), Uuid::new_v4());
        let watched = Uuid::new_v4();
        let by_voice = hub.subscribe(Interest::Voices(vec![watched]));
        let by_owner = hub.subscribe(Interest::Owner(owner));
        assert_eq!(hub.subscribers(), 2);
        hub.dispatch(&voice(Uuid::new_v4(), other, 1, VoiceStatus::Processing));
        assert!(by_voice.mailbox.take().is_none() && by_owner.mailbox.take().is_none());
        hub.dispatch(&voice(watched, owner, 1, VoiceStatus::Processing));
        assert!(by_voice.mailbox.take().is_some() && by_owner.mailbox.take().is_some());
        drop(by_voice);
        drop(by_owner);
        assert_eq!(hub.subscribers(), 0);
        assert!(lock(&hub.routes).by_voice.is_empty() && lock(&hub.routes).by_owner.is_empty());
    }
}
