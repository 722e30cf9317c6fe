//! The per-user creation rate: at most N creates per hour and M per day
//! (`VOICEHUB_CREATE_LIMIT_PER_HOUR`, `_PER_DAY`; 0 turns one off), as
//! voice-clone APIs limit them.
//!
//! Windows are fixed (the clock hour and the UTC day), counted in Redis when
//! the replicas share one, so the limit holds across replicas, and in this
//! process otherwise. A create is counted when it passes validation and is
//! not a repeat of an earlier `request_id`, whether it then succeeds or not.
//! A refusal says when the window that refused ends (`RetryInfo`).
//!
//! On failure the quota fails open: when Redis cannot be asked, the create
//! goes ahead (storage is the truth, and a Redis outage must not stop
//! creates); the miss is logged and counted.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fred::{prelude::*, types::scripts::Script};
use parking_lot::Mutex;
use prometheus_client::metrics::{counter::Counter, family::Family};
use uuid::Uuid;

use crate::metrics::{LimitLabel, Metrics};

/// The two windows: their length in seconds and their name.
const WINDOWS: [(u64, &str); 2] = [(3_600, "hour"), (86_400, "day")];

/// Checks every limit, then counts the create in every window, atomically.
/// `KEYS`: the user's hour and day counters (one hash tag, so one slot on a
/// Redis Cluster); `ARGV`: the two limits, then now in Unix seconds.
/// Returns `{0, 0}` when counted, else `{window, seconds until it ends}`.
const TAKE: &str = "local now = tonumber(ARGV[3])
local spans = {3600, 86400}
for i = 1, 2 do
  local limit = tonumber(ARGV[i])
  if limit > 0 and tonumber(redis.call('GET', KEYS[i]) or '0') >= limit then
    return {i, spans[i] - now % spans[i]}
  end
end
for i = 1, 2 do
  if tonumber(ARGV[i]) > 0 then
    redis.call('INCR', KEYS[i])
    redis.call('EXPIRE', KEYS[i], spans[i])
  end
end
return {0, 0}";

/// A create the rate refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exceeded {
    /// The limit that refused it, e.g. "20 voice creations per hour".
    pub(crate) limit: String,
    /// When the window that refused it ends.
    pub(crate) retry_after: Duration,
}

/// Where the counts are kept.
enum Counts {
    Local(Mutex<HashMap<(Uuid, u64, u64), u32>>),
    Redis {
        client: Client,
        prefix: String,
        take: Script,
    },
}

/// The per-user creation rate limit.
pub(crate) struct CreateQuota {
    limits: [u32; 2],
    counts: Counts,
    refused: Counter,
    unchecked: Counter,
}

impl CreateQuota {
    /// Counts kept in this process: one replica.
    #[must_use]
    pub(crate) fn local(per_hour: u32, per_day: u32, metrics: &Metrics) -> Self {
        Self::new(
            [per_hour, per_day],
            Counts::Local(Mutex::default()),
            metrics,
        )
    }

    /// Counts kept in Redis under `prefix`: shared by the replicas.
    #[must_use]
    pub(crate) fn redis(
        client: Client,
        prefix: &str,
        per_hour: u32,
        per_day: u32,
        metrics: &Metrics,
    ) -> Self {
        let counts = Counts::Redis {
            client,
            prefix: format!("{prefix}:quota:create"),
            take: Script::from_lua(TAKE),
        };
        Self::new([per_hour, per_day], counts, metrics)
    }

    fn new(limits: [u32; 2], counts: Counts, metrics: &Metrics) -> Self {
        let refusals: &Family<LimitLabel, Counter> = &metrics.limit_refusals;
        CreateQuota {
            limits,
            counts,
            refused: refusals
                .get_or_create(&LimitLabel {
                    limit: "create_rate",
                })
                .clone(),
            unchecked: metrics.quota_unchecked.clone(),
        }
    }

    /// Counts one create of `user`, or says which limit refuses it.
    ///
    /// # Errors
    /// The create would exceed a limit; nothing was counted.
    pub(crate) async fn take(&self, user: Uuid) -> Result<(), Exceeded> {
        if self.limits == [0, 0] {
            return Ok(());
        }
        let refused = match &self.counts {
            Counts::Local(counts) => self.take_local(counts, user, unix_now()),
            Counts::Redis {
                client,
                prefix,
                take,
            } => {
                // The windows are this replica's clock's: replicas' clocks
                // agree to well within a window, and Redis's own time
                // (`TIME`) would leave the keys undeclared.
                let now = unix_now();
                let keys = counters(prefix, user, now);
                let mut args: Vec<Value> =
                    self.limits.iter().map(|l| i64::from(*l).into()).collect();
                args.push(i64::try_from(now).unwrap_or(i64::MAX).into());
                // Not connected: fail open at once rather than after the timeout.
                let asked = if client.is_connected() {
                    take.evalsha_with_reload::<Vec<i64>, _, _>(client, keys.to_vec(), args)
                        .await
                } else {
                    Err(Error::new(ErrorKind::IO, "Redis is not connected"))
                };
                match asked {
                    Ok(reply) => match reply.as_slice() {
                        [window, left] if *window > 0 => {
                            let window = usize::try_from(*window - 1).unwrap_or_default();
                            Some((window, u64::try_from(*left).unwrap_or_default()))
                        }
                        _ => None,
                    },
                    Err(e) => {
                        self.unchecked.inc();
                        tracing::warn!(error = %e, %user, "cannot check the creation rate in Redis; the create goes ahead");
                        None
                    }
                }
            }
        };
        match refused {
            None => Ok(()),
            Some((window, left)) => {
                self.refused.inc();
                let (_, name) = WINDOWS[window.min(1)];
                Err(Exceeded {
                    limit: format!("{} voice creations per {name}", self.limits[window.min(1)]),
                    retry_after: Duration::from_secs(left.max(1)),
                })
            }
        }
    }

    /// The local twin of the Redis script: `(window, seconds left)` if refused.
    fn take_local(
        &self,
        counts: &Mutex<HashMap<(Uuid, u64, u64), u32>>,
        user: Uuid,
        now: u64,
    ) -> Option<(usize, u64)> {
        let mut counts = counts.lock();
        let active = || {
            WINDOWS
                .iter()
                .zip(self.limits)
                .enumerate()
                .filter(|(_, (_, limit))| *limit > 0)
        };
        for (i, ((span, _), limit)) in active() {
            let taken = counts.get(&(user, *span, now / span)).copied().unwrap_or(0);
            if taken >= limit {
                return Some((i, span - now % span));
            }
        }
        for (_, ((span, _), _)) in active() {
            *counts.entry((user, *span, now / span)).or_default() += 1;
        }
        // Windows past are never asked again.
        counts.retain(|(_, span, index), _| *index >= now / span);
        None
    }
}

/// The counters of `user`'s hour and day windows at `now`, one hash tag
/// for both (`{<prefix>:<user>}:<span>:<window>`).
fn counters(prefix: &str, user: Uuid, now: u64) -> [String; 2] {
    WINDOWS.map(|(span, _)| format!("{{{prefix}:{user}}}:{span}:{}", now / span))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_counters_share_a_cluster_slot() {
        use fred::util::redis_keyslot;
        let user = Uuid::new_v4();
        let [hour, day] = counters("voicehub:quota:create", user, 1_796_600_000);
        assert_eq!(
            redis_keyslot(hour.as_bytes()),
            redis_keyslot(day.as_bytes())
        );
        assert!(
            hour.starts_with(&format!("{{voicehub:quota:create:{user}}}:3600:")),
            "{hour}"
        );
    }

    #[test]
    fn local_windows_refuse_past_their_limit_and_say_when_they_end() {
        let quota = CreateQuota::local(2, 3, &Metrics::new());
        let Counts::Local(counts) = &quota.counts else {
            unreachable!()
        };
        let user = Uuid::new_v4();
        // 10:00:00 UTC on some day.
        let ten = 86_400 * 20_000 + 10 * 3_600;
        assert_eq!(quota.take_local(counts, user, ten), None);
        assert_eq!(quota.take_local(counts, user, ten + 1), None);
        assert_eq!(
            quota.take_local(counts, user, ten + 600),
            Some((0, 3_000)),
            "the hour's third is refused until 11:00"
        );
        assert_eq!(
            quota.take_local(counts, Uuid::new_v4(), ten + 600),
            None,
            "another user has their own"
        );
        assert_eq!(quota.take_local(counts, user, ten + 3_600), None);
        assert_eq!(
            quota.take_local(counts, user, ten + 7_200),
            Some((1, 86_400 - 12 * 3_600)),
            "the day's fourth is refused until midnight"
        );
        let off = CreateQuota::local(0, 1, &Metrics::new());
        let Counts::Local(counts) = &off.counts else {
            unreachable!()
        };
        assert_eq!(off.take_local(counts, user, ten), None);
        assert_eq!(off.take_local(counts, user, ten), Some((1, 14 * 3_600)));
    }
}
