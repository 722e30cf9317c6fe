//! When a voice is due, and how old it is: the one definition of a voice's
//! age, its deadline and its create lease, and of the intervals between
//! its checks (gathered on a grid so voices fall due together).

use crate::store::Voice;
use crate::store::VoiceStatus;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

/// The time between two checks of a voice of this `age`. For its first
/// minute a voice is checked every `min` (0.5 s): instant clones are ready
/// within seconds to a minute, and a watcher should hear of it within a
/// second. After that, checks spread out with age (a quarter of the time
/// past the first minute), up to `max`: professional clones take hours.
pub(super) fn check_interval(age: Duration, min: Duration, max: Duration) -> Duration {
    (age.saturating_sub(FIRST_MINUTE) / 4).clamp(min, max)
}

/// How long a new voice is checked at the shortest interval.
pub(super) const FIRST_MINUTE: Duration = Duration::from_mins(1);

/// The delay from `now` until a check `interval` after a claim `elapsed`
/// ago, lengthened so that it falls due on a wall-clock grid of half the
/// interval (at most [`GATHER`]): voices checked at the same interval then
/// fall due together and share one lookup, instead of each waking the
/// worker for a lookup of its own.
pub(super) fn gathered(interval: Duration, elapsed: Duration, now: SystemTime) -> Duration {
    let delay = interval.saturating_sub(elapsed);
    let grid = (interval / 2).min(GATHER).as_nanos();
    if grid == 0 {
        return delay;
    }
    let due = (now.duration_since(UNIX_EPOCH).unwrap_or_default() + delay).as_nanos();
    let late = (grid - due % grid) % grid;
    delay + Duration::from_nanos(u64::try_from(late).unwrap_or_default())
}

/// The coarsest grid due times are gathered on.
pub(super) const GATHER: Duration = Duration::from_secs(1);

/// How long ago `voice` was created.
pub(super) fn age(voice: &Voice) -> Duration {
    (chrono::Utc::now() - voice.created_at)
        .to_std()
        .unwrap_or_default()
}

/// How long the create lease of reserved `voice` still runs, if it does:
/// its create is running on some replica, which schedules it when done.
pub(super) fn create_lease_left(voice: &Voice) -> Option<Duration> {
    let until = voice.create_lease_until?;
    (until - chrono::Utc::now())
        .to_std()
        .ok()
        .filter(|d| !d.is_zero())
}

/// Whether `voice` has been PROCESSING longer than it may.
pub(super) fn past_deadline(voice: &Voice) -> bool {
    voice
        .processing_deadline
        .is_some_and(|deadline| deadline <= chrono::Utc::now())
}

/// The failure reason of a voice given up on at its deadline.
pub(super) fn gave_up(voice: &Voice) -> String {
    format!(
        "gave up: still processing at the provider {} after creation",
        humantime::format_duration(Duration::from_secs(age(voice).as_secs()))
    )
}

/// Whether the provider lacks `voice`'s stored metadata and can take it
/// (the voice is at the provider and not FAILED or DELETED).
pub(super) fn push_due(voice: &Voice) -> bool {
    voice.push_pending
        && voice.provider_voice_id.is_some()
        && matches!(
            voice.status,
            VoiceStatus::Processing | VoiceStatus::Completed
        )
}
