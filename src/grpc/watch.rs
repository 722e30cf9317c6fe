//! WatchVoiceStatus: the current state of each watched voice, then every
//! change, in revision order.
//!
//! - Subscribe first, then read the snapshot: a change stored in between is
//!   in the mailbox, so nothing falls between snapshot and stream.
//! - Per voice, a revision at or below the last one sent is dropped: never an
//!   older state after a newer one, and bus duplicates are harmless.
//! - A slow reader is served from the subscription's mailbox, which keeps
//!   the latest state per voice (see `events::hub`).
//! - With explicit ids the stream ends with OK once every watched voice is
//!   terminal; the "all my voices" form stays open.
//! - Disconnect drops the stream and with it the subscription; server
//!   shutdown ends the stream with UNAVAILABLE so clients reconnect elsewhere.
//! - The stream ends with UNAUTHENTICATED when the token that opened it
//!   expires (its `exp` plus the clock leeway): a client re-authenticates
//!   and watches again, and the snapshot makes that lossless.
//! - When events may have been lost (the event reader reconnected, or found
//!   entries trimmed before it read them), the stream re-reads its voices
//!   from storage and sends what changed. A re-read that fails (storage
//!   busy or away) does not end the stream: it is tried again 1 to 2 s
//!   later, while events go on flowing.
//! - Whatever the event reader knows, a stream with voices still processing
//!   re-reads them every `VOICEHUB_WATCH_RECHECK_INTERVAL` (its first time
//!   at a random point within it, so streams opened together spread out): a
//!   lost event delays a terminal state by at most that much, never for
//!   ever. A recheck that finds a change no event brought is counted
//!   (`voicehub_watch_recheck_catches_total`) and logged.
//! - Every storage read of a stream (its snapshot, a resync, a recheck)
//!   goes through the replica's shared [`Snapshots`]: streams opening
//!   together cost a few queries, not one each, and past its bound a
//!   stream is shed with RESOURCE_EXHAUSTED and a RetryInfo.
//! - Open streams are bounded on each replica, per user
//!   (`VOICEHUB_MAX_WATCHES_PER_USER`) and in all (`VOICEHUB_MAX_WATCHES`):
//!   one more is RESOURCE_EXHAUSTED before anything is read (see [`Watches`]).

use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::{
    error::{Error, jitter},
    events::{Hub, Interest, Subscription, VoiceEvent},
    metrics::{LimitLabel, Metrics},
    pb::{self, timestamp},
    store::{Store, Voice, VoiceStatus, may_see},
};

use super::snapshots::{Read, Snapshots, snapshots};

/// The stream of one WatchVoiceStatus call.
pub(crate) type EventStream =
    Pin<Box<dyn Stream<Item = Result<pb::VoiceStatusEvent, Status>> + Send>>;

/// A voice as a stream sends it: read from storage for this stream, or a
/// change's, encoded once for every stream it goes to.
enum Body {
    Read(Box<pb::Voice>),
    Shared(pb::EncodedVoice),
}

fn message(body: Body, snapshot: bool) -> pb::VoiceStatusEvent {
    let emitted_at = timestamp(chrono::Utc::now());
    match body {
        Body::Read(voice) => pb::VoiceStatusEvent {
            voice: Some(*voice),
            snapshot,
            emitted_at: Some(emitted_at),
            ..pb::VoiceStatusEvent::default()
        },
        Body::Shared(voice) => pb::VoiceStatusEvent::encoded(voice, snapshot, emitted_at),
    }
}

/// The open watch streams of one replica, by user, within their limits
/// (`0`: no limit), and their shared storage reads.
pub(crate) struct Watches {
    snapshots: Arc<Snapshots>,
    per_user: usize,
    total: usize,
    /// How often a stream re-reads its processing voices.
    recheck_every: Duration,
    open: Mutex<(usize, HashMap<Uuid, usize>)>,
    refused_per_user: Counter,
    refused_total: Counter,
    recheck_catches: Counter,
    reread_failures: Counter,
}

impl Watches {
    /// At most `per_user` streams of one user and `total` in all, each
    /// re-reading its processing voices every `recheck_every`, reading from `store`.
    pub(crate) fn new(
        store: Store,
        (per_user, total): (usize, usize),
        recheck_every: Duration,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let refused = |limit| {
            metrics
                .limit_refusals
                .get_or_create(&LimitLabel { limit })
                .clone()
        };
        Arc::new(Watches {
            snapshots: snapshots(store, metrics),
            per_user,
            total,
            recheck_every,
            open: Mutex::default(),
            refused_per_user: refused("watches_per_user"),
            refused_total: refused("watches"),
            recheck_catches: metrics.watch_recheck_catches.clone(),
            reread_failures: metrics.watch_reread_failures.clone(),
        })
    }

    /// A place for one more stream of `user`, held until it is dropped.
    fn admit(self: &Arc<Self>, user: Uuid) -> Result<WatchSlot, Error> {
        let mut open = self.open.lock();
        let (all, by_user) = &mut *open;
        if self.total > 0 && *all >= self.total {
            self.refused_total.inc();
            return Err(Error::ResourceExhausted(
                "this server has its most open watch streams; retry later or on another replica"
                    .into(),
            ));
        }
        let mine = by_user.entry(user).or_default();
        if self.per_user > 0 && *mine >= self.per_user {
            self.refused_per_user.inc();
            return Err(Error::ResourceExhausted(format!(
                "a user may have at most {} open watch streams; close one first",
                self.per_user
            )));
        }
        *mine += 1;
        *all += 1;
        Ok(WatchSlot {
            watches: self.clone(),
            user,
        })
    }
}

/// One stream's place among the open ones.
struct WatchSlot {
    watches: Arc<Watches>,
    user: Uuid,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.watches.open.lock();
        let (all, by_user) = &mut *open;
        *all -= 1;
        if let Some(mine) = by_user.get_mut(&self.user) {
            *mine -= 1;
            if *mine == 0 {
                by_user.remove(&self.user);
            }
        }
    }
}

/// What woke a stream.
enum Next {
    /// The server is stopping, or the token expired.
    End(Error),
    Resync,
    Recheck,
    Event(Arc<VoiceEvent>),
}

/// Why a stream ends when its token expires.
const TOKEN_EXPIRED: &str = "token has expired: re-authenticate and watch again (the new stream starts with the current state)";

/// How soon a stream reads again after a re-read failed (plus up to as
/// much again at random).
const RETRY_READ: Duration = Duration::from_secs(1);

/// When a stream first rechecks: at a random point of the interval.
fn first_recheck(every: Duration) -> Duration {
    // A v4 UUID is 122 random bits; 16 of them pick the point.
    let bits = Uuid::new_v4().into_bytes();
    let fraction = f64::from(u16::from_le_bytes([bits[14], bits[15]])) / f64::from(u16::MAX);
    every.mul_f64(fraction.max(0.01))
}

/// A state of a voice a stream may send.
struct Change {
    id: Uuid,
    revision: i64,
    terminal: bool,
    body: Body,
}

/// The current state of what a stream watches, after events may have been
/// lost: its voices not yet terminal, plus, for the "all my voices" form,
/// every voice of the user still processing (some may be new).
///
/// # Errors
/// NOT_FOUND if an explicitly watched voice is no longer visible; storage.
async fn resync(
    snapshots: &Arc<Snapshots>,
    user: Uuid,
    explicit: bool,
    open: &HashSet<Uuid>,
) -> Result<Vec<Change>, Error> {
    let ids: Vec<Uuid> = open.iter().copied().collect();
    let mut voices = if ids.is_empty() {
        Vec::new()
    } else {
        snapshots.read(Read::Voices(ids.clone())).await?
    };
    if let Some(hidden) = voices
        .iter()
        .find(|v| !may_see(user, v.owner_user_id, v.visibility))
    {
        tracing::debug!(voice_id = %hidden.id, "a watched voice is no longer visible");
        return Err(Error::NotFound("voice"));
    }
    if explicit && voices.len() != ids.len() {
        return Err(Error::NotFound("voice"));
    }
    if !explicit {
        voices.extend(
            snapshots
                .read(Read::ProcessingOf(user))
                .await?
                .into_iter()
                .filter(|v| !open.contains(&v.id)),
        );
    }
    Ok(voices
        .into_iter()
        .map(|v| Change {
            id: v.id,
            revision: v.revision,
            terminal: v.status.is_terminal(),
            body: Body::Read(Box::new(v.into())),
        })
        .collect())
}

/// Subscribes `user` to `ids` (or all their voices), then reads what they
/// are now: a change stored in between is in the subscription's mailbox.
///
/// # Errors
/// NOT_FOUND if any id is not a voice the user may see; storage.
async fn subscribe(
    snapshots: &Arc<Snapshots>,
    hub: &Arc<Hub>,
    user: Uuid,
    ids: Vec<Uuid>,
) -> Result<(Subscription, Vec<Voice>), Error> {
    if ids.is_empty() {
        let subscription = hub.subscribe(Interest::Owner(user));
        return Ok((
            subscription,
            snapshots.read(Read::ProcessingOf(user)).await?,
        ));
    }
    let subscription = hub.subscribe(Interest::Voices(ids.clone()));
    // In the order of `ids`.
    let found = snapshots.read(Read::Voices(ids.clone())).await?;
    let visible = |v: &Voice| {
        v.status != VoiceStatus::Deleted && may_see(user, v.owner_user_id, v.visibility)
    };
    if found.len() != ids.len() || !found.iter().all(visible) {
        return Err(Error::NotFound("voice"));
    }
    Ok((subscription, found))
}

/// Opens a watch for `user` on `ids` (validated, distinct), or on all of the
/// user's voices when `ids` is empty.
///
/// # Errors
/// RESOURCE_EXHAUSTED at a limit of open streams; NOT_FOUND (before the
/// stream starts) if any id is not a voice the user may see. The stream of
/// `user` ends when `valid_until` (the token's end) passes.
pub(super) async fn open(
    hub: &Arc<Hub>,
    watches: &Arc<Watches>,
    shutdown: CancellationToken,
    (user, valid_until): (Uuid, Option<SystemTime>),
    ids: Vec<Uuid>,
) -> Result<EventStream, Error> {
    let slot = watches.admit(user)?;
    // The stream lives no longer than the token that opened it.
    let expired = valid_until.map_or(Duration::MAX, |until| {
        until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    });
    let explicit = !ids.is_empty();
    let snapshots = watches.snapshots.clone();
    let (subscription, snapshot) = subscribe(&snapshots, hub, user, ids).await?;

    let recheck_every = watches.recheck_every;
    let (recheck_catches, reread_failures) = (
        watches.recheck_catches.clone(),
        watches.reread_failures.clone(),
    );
    Ok(Box::pin(async_stream::try_stream! {
        let _slot = slot;
        let mut sent: HashMap<Uuid, i64> = HashMap::new();
        let mut open: HashSet<Uuid> = HashSet::new();
        for voice in snapshot {
            sent.insert(voice.id, voice.revision);
            if !voice.status.is_terminal() {
                open.insert(voice.id);
            }
            yield message(Body::Read(Box::new(voice.into())), true);
        }
        if explicit && open.is_empty() {
            return;
        }
        let mut resyncs = subscription.resyncs();
        let expiry = tokio::time::sleep(expired);
        tokio::pin!(expiry);
        let recheck = tokio::time::sleep(first_recheck(recheck_every));
        tokio::pin!(recheck);
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => Next::End(Error::ShuttingDown),
                () = &mut expiry => Next::End(Error::Unauthenticated(TOKEN_EXPIRED)),
                () = resyncs.requested() => Next::Resync,
                event = subscription.next() => Next::Event(event),
                () = &mut recheck, if !open.is_empty() => Next::Recheck,
            };
            let rechecking = matches!(next, Next::Recheck);
            if matches!(next, Next::Recheck | Next::Resync) {
                recheck.as_mut().reset(tokio::time::Instant::now() + recheck_every);
            }
            let changes = match next {
                Next::End(e) => Err(Status::from(e))?,
                Next::Event(event) => {
                    if sent.get(&event.voice_id).is_some_and(|revision| event.revision <= *revision) {
                        continue;
                    }
                    if !may_see(user, event.owner, event.visibility) {
                        // Made private by its owner while we watched it.
                        tracing::debug!(voice_id = %event.voice_id, "a watched voice is no longer visible");
                        Err(Status::from(Error::NotFound("voice")))?;
                    }
                    vec![Change {
                        id: event.voice_id,
                        revision: event.revision,
                        terminal: event.is_terminal(),
                        body: Body::Shared(event.encoded_voice()),
                    }]
                }
                Next::Resync | Next::Recheck => match resync(&snapshots, user, explicit, &open).await {
                    Ok(changes) => changes,
                    Err(e @ Error::NotFound(_)) => Err(Status::from(e))?,
                    Err(e) => {
                        // Storage busy or away: the stream stays open (its
                        // events still flow) and reads again shortly.
                        reread_failures.inc();
                        tracing::warn!(error = %e, "a watch stream could not re-read its voices; trying again shortly");
                        recheck.as_mut().reset(tokio::time::Instant::now() + RETRY_READ + jitter(RETRY_READ));
                        continue;
                    }
                },
            };
            for change in changes {
                if sent.get(&change.id).is_some_and(|revision| change.revision <= *revision) {
                    continue;
                }
                if rechecking {
                    // No event brought this: one was lost on the way here.
                    recheck_catches.inc();
                    tracing::warn!(voice_id = %change.id, revision = change.revision, "a watch stream's recheck found a change no event delivered");
                }
                sent.insert(change.id, change.revision);
                // A voice first heard of by an event (one created after an
                // "all my voices" stream opened) is open too: were its end
                // lost, a resync or recheck must still look for it.
                if change.terminal {
                    open.remove(&change.id);
                } else {
                    open.insert(change.id);
                }
                yield message(change.body, false);
            }
            if explicit && open.is_empty() {
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_are_admitted_within_both_limits_and_leaving_frees_a_place() {
        let metrics = Metrics::new();
        let store = crate::store::test_store(&metrics).await;
        let watches = Watches::new(store.clone(), (2, 3), Duration::from_mins(1), &metrics);
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = watches.admit(alice).unwrap();
        let _a2 = watches.admit(alice).unwrap();
        let err = watches.admit(alice).err().unwrap();
        assert!(err.to_string().contains("at most 2"), "{err}");
        let _b1 = watches.admit(bob).unwrap();
        let err = watches.admit(bob).err().unwrap();
        assert!(err.to_string().contains("most open watch streams"), "{err}");
        drop(a1);
        let _a3 = watches.admit(alice).unwrap();
        let refused = |limit| {
            metrics
                .limit_refusals
                .get_or_create(&LimitLabel { limit })
                .get()
        };
        assert_eq!((refused("watches_per_user"), refused("watches")), (1, 1));
        let unlimited = Watches::new(store, (0, 0), Duration::from_mins(1), &metrics);
        let many: Vec<_> = (0..50).map(|_| unlimited.admit(alice).unwrap()).collect();
        drop(many);
        assert!(unlimited.open.lock().1.is_empty());
    }
}
