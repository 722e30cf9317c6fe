//! The relay: publishes what the outbox holds to the bus, then deletes it.
//!
//! Guarantees:
//! - **At-least-once.** An event leaves the outbox only after the bus took
//!   it; a crash between the two publishes it again, and watch streams drop
//!   the revision they already sent.
//! - **In order.** Events are read and published in outbox order, and a
//!   later change of a voice always has a higher outbox id (it waited for
//!   the earlier change's row lock, or, on SQLite, for its write lock), so a
//!   voice's revisions are published in order.
//! - **Nothing stays behind.** When the process that stored an event dies
//!   before publishing it, or the bus refuses it, the event waits in the
//!   outbox: it is published at start-up, after the outage (retries back
//!   off from 250 ms to 5 s), on the reconcile interval, and, on
//!   PostgreSQL, by the other replicas, which hear of every commit through
//!   `LISTEN voicehub_events` and publish what is still there a second
//!   later.
//! - **No SQL when idle.** The relay runs when a commit of this replica
//!   wakes it (the store notifies it after every commit that wrote events,
//!   so no writer can forget), when another replica's commit is heard, on the reconcile
//!   interval, and while retrying; never on a poll.
//! - **Visible backlog.** While the bus refuses events, the number waiting
//!   is logged (at WARN once per outage) and kept in the
//!   `voicehub_outbox_backlog` gauge; published events are counted in
//!   `voicehub_events_published_total`.
//!
//! While the bus refuses events, this replica's own watchers get them at
//! once (its hub is in-process); everyone else gets them once the bus is
//! back.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use sea_orm::DbErr;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{DynBus, EventSummary, PublicEvent, PublicStream, PublishError, public::document};
use crate::{
    error::chain,
    store::{EventNotifications, Notified, Owed, Pending, Store, StoredEvent},
};

/// Events read and published per pass: more than the status engine
/// settles in one step (its batch is at most a few hundred), so a step's
/// events take one pass, whatever the batch size.
const BATCH: u64 = 1_000;
/// How long another replica has to publish its own events before this one
/// does it for it (it died between its commit and its publication).
const REMOTE_GRACE: Duration = Duration::from_secs(1);
/// The first and the longest delay between retries while the bus or the
/// database fail.
const RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));
/// How long a shutting-down relay tries to publish what is left.
const FINAL_PASS: Duration = Duration::from_secs(5);
/// How long to wait before listening again after the listening connection failed.
const LISTEN_RETRY: Duration = Duration::from_secs(5);

/// Why a pass published nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    /// The outbox could not be read or cleared.
    #[error("outbox: {0}")]
    Storage(#[from] DbErr),
    /// The bus refused the events.
    #[error(transparent)]
    Bus(#[from] PublishError),
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// Events published and deleted from the outbox.
    pub(crate) published: usize,
    /// The batch was full: more may be waiting.
    pub(crate) more: bool,
}

/// One replica's relay from the outbox to the bus.
pub struct Relay {
    store: Store,
    bus: DynBus,
    reconcile_every: Duration,
    published: Counter,
    backlog: Gauge,
    /// Outbox ids already handed to this replica's hub while the bus
    /// refused them, so retries do not hand them over again (at most the
    /// outbox's size: an id leaves once published).
    dispatched_here: Mutex<BTreeSet<i64>>,
    /// The public event stream, if there is one.
    public: Option<PublicStream>,
    /// The CloudEvents `source` of the public stream's and webhooks' events.
    source: String,
}

impl Relay {
    /// A relay from `store`'s outbox to `bus`, that also reads the outbox
    /// every `reconcile_every`.
    #[must_use]
    pub(crate) fn new(
        store: Store,
        bus: DynBus,
        reconcile_every: Duration,
        published: Counter,
        backlog: Gauge,
    ) -> Self {
        Relay {
            store,
            bus,
            reconcile_every,
            published,
            backlog,
            dispatched_here: Mutex::default(),
            public: None,
            source: "voicehub".into(),
        }
    }

    /// A pass over up to a batch of the events `which` names.
    async fn pass(&self, which: Pending) -> Result<Relayed, RelayError> {
        let stored = self.store.pending_events(which, BATCH).await?;
        if stored.is_empty() {
            return Ok(Relayed::default());
        }
        let more = stored.len() as u64 == BATCH;
        let ids: Vec<i64> = stored.iter().map(|e| e.id).collect();
        let documents = documents(&self.source, &stored);
        let events: Vec<Bytes> = stored.into_iter().map(|e| Bytes::from(e.payload)).collect();
        if let Err(e) = self.bus.publish(&events).await {
            self.dispatch_here(&ids, &events);
            return Err(e.into());
        }
        // Published to the replicas but not to the public stream: the rows
        // stay, and the next pass publishes both again (replicas drop what
        // they already have).
        if let Some(stream) = &self.public {
            stream.publish(&documents).await?;
        }
        self.published.inc_by(events.len() as u64);
        // The webhook deliveries are queued in the transaction that takes
        // the events out of the outbox: both happen, or neither.
        let owed: Vec<Owed> = documents
            .into_iter()
            .map(|(owner, _, document)| Owed {
                owner,
                event_id: document.id,
                event_type: document.event_type.to_owned(),
                payload: document.document,
            })
            .collect();
        self.store.forget_events_and_queue(&ids, &owed).await?;
        let mut here = self.dispatched_here.lock();
        if !here.is_empty() {
            for id in &ids {
                here.remove(id);
            }
        }
        drop(here);
        Ok(Relayed {
            published: events.len(),
            more,
        })
    }

    /// Also publishes every event to `public`, after the bus took it and
    /// before it leaves the outbox; `source` names voicehub in the public
    /// stream's and webhooks' events.
    #[must_use]
    pub(crate) fn with_public(mut self, public: Option<PublicStream>, source: String) -> Self {
        self.public = public;
        self.source = source;
        self
    }

    /// Hands events the bus refused to this replica's watchers, once each.
    fn dispatch_here(&self, ids: &[i64], events: &[Bytes]) {
        let mut here = self.dispatched_here.lock();
        for (id, event) in ids.iter().zip(events) {
            if here.insert(*id) {
                self.bus.hub().dispatch_encoded(event);
            }
        }
    }

    /// Passes until the outbox holds none of the events `which` names.
    async fn drain(&self, which: Pending) -> Result<usize, RelayError> {
        let mut published = 0;
        loop {
            let pass = self.pass(which).await?;
            published += pass.published;
            if !pass.more {
                return Ok(published);
            }
        }
    }

    /// Relays until `shutdown`, as the module says, then tries once more to
    /// publish what is left.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut notifications: Option<EventNotifications> = None;
        // SQLite has no notifications: `None` means never try again.
        let mut listen_at = Some(Instant::now());
        // Start-up: whatever a process that stopped left behind.
        let mut due = Some(Pass::Leftovers);
        let mut remote = Remote::default();
        let mut retry: Option<(Instant, Duration)> = None;
        let mut next_reconcile = Instant::now() + self.reconcile_every;
        // Each wait below also waits for shutdown: while the database is
        // unreachable, a listen or a pass takes as long as the pool's
        // acquire timeout, and shutdown must not wait for it.
        loop {
            if notifications.is_none() && listen_at.is_some_and(|at| at <= Instant::now()) {
                let listening = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    listening = self.store.event_notifications() => listening,
                };
                match listening {
                    Ok(Some(listening)) => {
                        notifications = Some(listening);
                        listen_at = None;
                        // Commits before the LISTEN were not heard.
                        due = Some(Pass::Leftovers);
                    }
                    Ok(None) => listen_at = None,
                    Err(e) => {
                        tracing::debug!(error = %chain(&e), "cannot listen for other replicas' events yet");
                        listen_at = Some(Instant::now() + LISTEN_RETRY);
                    }
                }
            }
            if let Some(pass) = due.take() {
                let which = match pass {
                    Pass::Mine => Pending::Mine,
                    Pass::Leftovers => {
                        remote.looked();
                        leftovers()
                    }
                };
                retry = tokio::select! {
                    biased;
                    // A pass cut short publishes its events again later: harmless.
                    () = shutdown.cancelled() => break,
                    retry = self.drain_logged(which, retry) => retry,
                };
            }
            let wake_at = [
                retry.map(|(at, _)| at),
                remote.due,
                Some(next_reconcile),
                listen_at.filter(|_| notifications.is_none()),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_reconcile);
            tokio::select! {
                // Shutdown first: when it and other work are both ready, stop.
                biased;
                () = shutdown.cancelled() => break,
                () = self.store.events_committed().notified() => due = Some(Pass::Mine.or(due)),
                heard = heard(&mut notifications) => match heard {
                    Ok(Notified::Events) => remote.heard(),
                    Ok(Notified::Reconnected) => due = Some(Pass::Leftovers),
                    Err(e) => {
                        tracing::debug!(error = %chain(&e), "lost the connection that listens for other replicas' events");
                        notifications = None;
                        listen_at = Some(Instant::now() + LISTEN_RETRY);
                    }
                },
                () = tokio::time::sleep_until(wake_at) => {
                    let now = Instant::now();
                    // A retry takes leftovers too: the failed pass may have been either.
                    if retry.is_some_and(|(at, _)| at <= now) || remote.due.is_some_and(|at| at <= now) {
                        due = Some(Pass::Leftovers);
                    }
                    if next_reconcile <= now {
                        next_reconcile = now + self.reconcile_every;
                        due = Some(Pass::Leftovers);
                    }
                }
            }
        }
        drop(notifications);
        match tokio::time::timeout(FINAL_PASS, self.drain(Pending::Mine)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "stopping with events not yet published; another replica or the next start publishes them");
            }
            Err(_) => tracing::warn!(
                "stopping before every event was published; another replica or the next start publishes them"
            ),
        }
    }

    /// A drain whose failure is logged (once per outage) and turned into
    /// the next retry; `retry` is the one under way, if any.
    async fn drain_logged(
        &self,
        which: Pending,
        retry: Option<(Instant, Duration)>,
    ) -> Option<(Instant, Duration)> {
        match self.drain(which).await {
            Ok(published) => {
                if retry.is_some() {
                    tracing::info!(published, "events published again: the outbox is drained");
                }
                self.backlog.set(0);
                None
            }
            Err(e) => {
                let backlog = self.store.event_backlog().await.ok();
                if let Some(backlog) = backlog {
                    self.backlog.set(i64::try_from(backlog).unwrap_or(i64::MAX));
                }
                let delay = retry.map_or(RETRY.0, |(_, delay)| (delay * 2).min(RETRY.1));
                if retry.is_none() {
                    tracing::warn!(error = %e, backlog, "cannot publish events; they wait in the outbox, retrying (logged once per outage)");
                } else {
                    tracing::debug!(error = %e, backlog, "still cannot publish events");
                }
                Some((Instant::now() + delay, delay))
            }
        }
    }
}

/// The public form of each stored event, with its voice's owner and id.
/// An event this build cannot read (it stored it itself, so never in
/// practice) is logged and left out of the public stream and webhooks.
fn documents(source: &str, stored: &[StoredEvent]) -> Vec<(Uuid, String, PublicEvent)> {
    stored
        .iter()
        .filter_map(|row| match EventSummary::decode(&row.payload) {
            Ok(event) => Some((
                event.owner,
                document(source, &event, row.created_at),
                event.voice_id,
            ))
            .map(|(owner, document, voice_id)| (owner, voice_id, document)),
            Err(e) => {
                tracing::error!(outbox_id = row.id, error = %e, "an outbox event cannot be read; it is left out of the public stream and webhooks");
                None
            }
        })
        .collect()
}

/// What a pass of the running relay takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Events this replica stored (it just committed some).
    Mine,
    /// Those, and every event left behind by anyone.
    Leftovers,
}

impl Pass {
    /// This pass, or `other` if that takes more.
    fn or(self, other: Option<Pass>) -> Pass {
        if other == Some(Pass::Leftovers) {
            Pass::Leftovers
        } else {
            self
        }
    }
}

/// Mine, and others' stored over [`REMOTE_GRACE`] ago: their own replica
/// would have published them by now if it could.
fn leftovers() -> Pending {
    let grace = chrono::Duration::from_std(REMOTE_GRACE).unwrap_or_default();
    Pending::MineAndStoredBefore(chrono::Utc::now() - grace)
}

/// The next notification, or never when not listening.
async fn heard(notifications: &mut Option<EventNotifications>) -> Result<Notified, DbErr> {
    match notifications {
        Some(listening) => listening.next().await,
        None => std::future::pending().await,
    }
}

/// Commits other replicas made, whose events they should publish
/// themselves: this relay looks for leftovers [`REMOTE_GRACE`] after it
/// heard of them.
#[derive(Default)]
struct Remote {
    /// When to look.
    due: Option<Instant>,
    /// When the latest commit was heard of.
    latest: Option<Instant>,
}

impl Remote {
    fn heard(&mut self) {
        let now = Instant::now();
        self.latest = Some(now);
        self.due.get_or_insert(now + REMOTE_GRACE);
    }

    /// A look for leftovers is being made now: it covers every commit heard
    /// at least [`REMOTE_GRACE`] ago; those heard since need another look.
    fn looked(&mut self) {
        let now = Instant::now();
        self.due = self
            .latest
            .map(|latest| latest + REMOTE_GRACE)
            .filter(|at| *at > now);
    }
}
