//! The one rule of who may see a voice: its owner, and everyone while it is
//! public ([`may_see`]). GetVoice (its shared read) and watch streams apply
//! it to the voice in hand; listings build it into their queries, scope by
//! scope (`Store::list`).
//!
//! DELETED is a separate matter: reads never return a DELETED voice, but a
//! watcher who could see a voice is told that it was deleted.

use uuid::Uuid;

use super::entity::voice::Visibility;

/// Whether `caller` may see a voice of `owner` with `visibility`.
#[must_use]
pub(crate) fn may_see(caller: Uuid, owner: Uuid, visibility: Visibility) -> bool {
    owner == caller || visibility == Visibility::Public
}
