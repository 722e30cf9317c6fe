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

use super::convert::{parse_voice_id, timestamp};
use crate::{
    error::Error,
    events::{Hub, Interest},
    pb,
    store::{Store, Visibility, Voice},
};

/// Most voices one stream may watch by id.
pub const MAX_WATCHED: usize = 100;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::VoiceStatusEvent, Status>> + Send>>;

fn event(voice: Voice, snapshot: bool) -> pb::VoiceStatusEvent {
    pb::VoiceStatusEvent {
        voice: Some(voice.into()),
        snapshot,
        emitted_at: Some(timestamp(chrono::Utc::now())),
    }
}

/// Opens a watch for `user`.
///
/// # Errors
/// INVALID_ARGUMENT for malformed or too many ids; NOT_FOUND (before the
/// stream starts) if any id is not a voice the user may see.
pub async fn open(
    store: &Store,
    hub: &Arc<Hub>,
    shutdown: CancellationToken,
    user: Uuid,
    voice_ids: Vec<String>,
) -> Result<EventStream, Error> {
    if voice_ids.len() > MAX_WATCHED {
        return Err(Error::invalid(
            "voice_ids",
            format!("may name at most {MAX_WATCHED} voices"),
        ));
    }
    let mut ids = Vec::with_capacity(voice_ids.len());
    for (i, raw) in voice_ids.iter().enumerate() {
        let id = parse_voice_id("voice_ids", raw)
            .map_err(|_| Error::invalid(format!("voice_ids[{i}]"), "must be a UUID"))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
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
            yield event(voice, true);
        }
        if explicit && open.is_empty() {
            return;
        }
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => None,
                voice = subscription.next() => Some(voice),
            };
            let Some(voice) = next else {
                Err(Status::unavailable("the server is shutting down; reconnect to continue watching"))?;
                return;
            };
            if sent.get(&voice.id).is_some_and(|revision| voice.revision <= *revision) {
                continue;
            }
            if voice.owner_user_id != user && voice.visibility != Visibility::Public {
                // Made private by its owner while we watched it.
                Err(Status::not_found(format!("voice {} is no longer visible", voice.id)))?;
            }
            sent.insert(voice.id, voice.revision);
            if voice.status.is_terminal() {
                open.remove(&voice.id);
            }
            yield event(voice, false);
            if explicit && open.is_empty() {
                return;
            }
        }
    }))
}
