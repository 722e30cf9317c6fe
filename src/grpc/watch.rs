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

use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::Arc,
};

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::{
    error::Error,
    events::{Hub, Interest},
    pb::{self, timestamp},
    store::{Store, may_see},
};

/// The stream of one WatchVoiceStatus call.
pub(crate) type EventStream =
    Pin<Box<dyn Stream<Item = Result<pb::VoiceStatusEvent, Status>> + Send>>;

fn message(voice: pb::Voice, snapshot: bool) -> pb::VoiceStatusEvent {
    pb::VoiceStatusEvent {
        voice: Some(voice),
        snapshot,
        emitted_at: Some(timestamp(chrono::Utc::now())),
    }
}

/// Opens a watch for `user` on `ids` (validated, distinct), or on all of the
/// user's voices when `ids` is empty.
///
/// # Errors
/// NOT_FOUND (before the stream starts) if any id is not a voice the user may see.
pub(super) async fn open(
    store: &Store,
    hub: &Arc<Hub>,
    shutdown: CancellationToken,
    user: Uuid,
    ids: Vec<Uuid>,
) -> Result<EventStream, Error> {
    let explicit = !ids.is_empty();
    let (subscription, snapshot) = if explicit {
        let subscription = hub.subscribe(Interest::Voices(ids.clone()));
        let mut found = store.get_visible_many(user, &ids).await?;
        if found.len() != ids.len() {
            return Err(Error::NotFound("voice"));
        }
        found.sort_by_key(|v| ids.iter().position(|id| *id == v.id));
        (subscription, found)
    } else {
        let subscription = hub.subscribe(Interest::Owner(user));
        (subscription, store.processing_of(user).await?)
    };

    Ok(Box::pin(async_stream::try_stream! {
        let mut sent: HashMap<Uuid, i64> = HashMap::new();
        let mut open: HashSet<Uuid> = HashSet::new();
        for voice in snapshot {
            sent.insert(voice.id, voice.revision);
            if !voice.status.is_terminal() {
                open.insert(voice.id);
            }
            yield message(voice.into(), true);
        }
        if explicit && open.is_empty() {
            return;
        }
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => None,
                voice = subscription.next() => Some(voice),
            };
            let Some(event) = next else {
                Err(Status::unavailable("the server is shutting down; reconnect to continue watching"))?;
                return;
            };
            if sent.get(&event.voice_id).is_some_and(|revision| event.revision <= *revision) {
                continue;
            }
            if !may_see(user, event.owner, event.visibility) {
                // Made private by its owner while we watched it.
                Err(Status::not_found(format!("voice {} is no longer visible", event.voice_id)))?;
            }
            sent.insert(event.voice_id, event.revision);
            if event.is_terminal() {
                open.remove(&event.voice_id);
            }
            yield message(event.voice.clone(), false);
            if explicit && open.is_empty() {
                return;
            }
        }
    }))
}
