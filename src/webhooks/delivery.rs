//! The deliverer: sends queued webhook deliveries and records each attempt.
//!
//! Guarantees:
//! - **At least once, durably.** A delivery is a row, queued by the relay
//!   in the transaction that took its event out of the outbox; it stays
//!   pending until an attempt is answered 2xx or the retry schedule is used
//!   up, across restarts. A replica takes a delivery for a lease (twice the
//!   request timeout) before sending, so in the normal case each endpoint
//!   gets each event once, whichever replica sends it; a replica that dies
//!   mid-attempt leaves it to be sent again when the lease ends.
//! - **The same `webhook-id` on every attempt** (the event's id), a fresh
//!   `webhook-timestamp`, and a `webhook-signature` with the endpoint's
//!   secret (and the previous one, during a rotation's overlap).
//! - **Safe to point anywhere.** No redirect is followed; at most 64 KiB of
//!   an answer is read; a host is resolved at each attempt and refused if
//!   any of its addresses is not public (`address.rs`), and the connection
//!   goes to the addresses checked, so DNS cannot swap them in between.
//! - **Retries** follow `VOICEHUB_WEBHOOK_RETRY_SCHEDULE`, with up to 10 %
//!   jitter; a `Retry-After` is honoured within the schedule's bounds. 410
//!   Gone disables the endpoint, with that reason, and so does failing
//!   every attempt for `VOICEHUB_WEBHOOK_DISABLE_AFTER`.
//!
//! [`Deliverer::run_once`] is one step; [`Deliverer::run`] owns waiting
//! (woken when this replica queues deliveries, otherwise at the next due
//! time or every [`IDLE_CHECK`]) and stopping.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use reqwest::{
    StatusCode,
    dns::{Addrs, Name, Resolve, Resolving},
    header,
};
use sea_orm::DbErr;
use tokio_util::sync::CancellationToken;

use super::{WebhookSettings, check_url, is_public, signature_header};
use crate::{
    metrics::{DeliveryLabel, Metrics},
    store::{Attempted, Due, Next, Store, now},
};

/// Deliveries taken and sent at a time.
const BATCH: u64 = 32;
/// The most bytes of an answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// How often an idle deliverer looks for deliveries other replicas queued
/// (and then died before sending).
pub const IDLE_CHECK: Duration = Duration::from_secs(30);

/// Sends webhook deliveries.
pub struct Deliverer {
    store: Store,
    http: reqwest::Client,
    settings: WebhookSettings,
    outcomes: Family<DeliveryLabel, Counter>,
    backlog: Gauge,
    disabled: Counter,
}

impl Deliverer {
    /// A deliverer of `store`'s deliveries, as `settings` say.
    ///
    /// # Errors
    /// The HTTP client cannot be built (no TLS roots).
    pub fn new(
        store: Store,
        settings: WebhookSettings,
        metrics: &Metrics,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .dns_resolver(Arc::new(PublicOnly {
                allow_private: settings.allow_private,
            }))
            .user_agent(concat!("voicehub-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer {
            store,
            http,
            settings,
            outcomes: metrics.webhook_deliveries.clone(),
            backlog: metrics.webhook_backlog.clone(),
            disabled: metrics.webhook_endpoints_disabled.clone(),
        })
    }

    /// Sends what is due, up to a batch; how many attempts were made.
    ///
    /// # Errors
    /// Storage failed; what was taken is sent again once its lease ends.
    pub async fn run_once(&self) -> Result<usize, DbErr> {
        let lease = self.settings.timeout * 2;
        let due = self.store.take_due_deliveries(BATCH, lease).await?;
        let made = due.len();
        let results: Vec<Result<(), DbErr>> = stream::iter(due)
            .map(|due| async move {
                let attempted = self.attempt(&due).await;
                self.outcomes
                    .get_or_create(&DeliveryLabel {
                        outcome: outcome(&attempted),
                    })
                    .inc();
                let disable_after = chrono::Duration::from_std(self.settings.disable_after)
                    .unwrap_or(chrono::Duration::MAX);
                let disabled = self
                    .store
                    .record_attempt(&due, attempted, disable_after)
                    .await?;
                if let Some(reason) = disabled {
                    self.disabled.inc();
                    tracing::info!(endpoint = %due.endpoint.id, reason, "webhook endpoint disabled");
                }
                Ok(())
            })
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), DbErr>>()?;
        Ok(made)
    }

    /// Sends until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let wait = match self.run_once().await {
                Ok(made) if made as u64 >= BATCH => Duration::ZERO,
                Ok(_) => self.until_next_due().await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot send webhook deliveries; trying again");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = self.store.deliveries_queued().notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How long until the next pending delivery is due, at most
    /// [`IDLE_CHECK`]; keeps the backlog gauge.
    async fn until_next_due(&self) -> Duration {
        match self.store.pending_deliveries().await {
            Ok((pending, next)) => {
                self.backlog.set(i64::try_from(pending).unwrap_or(i64::MAX));
                next.map_or(IDLE_CHECK, |at| {
                    (at - now()).to_std().unwrap_or_default().min(IDLE_CHECK)
                })
            }
            Err(_) => IDLE_CHECK,
        }
    }

    /// One POST of `due`, and what follows from its answer.
    async fn attempt(&self, due: &Due) -> Attempted {
        let started = Instant::now();
        let timestamp = now().timestamp();
        let (delivery, endpoint) = (&due.delivery, &due.endpoint);
        // A literal address is not resolved: check it here, in case the
        // rules changed since the endpoint was made.
        if let Err(refused) = check_url(&endpoint.url, self.settings.allow_private) {
            return Attempted {
                http_status: None,
                latency: started.elapsed(),
                error: Some(format!("the URL {refused}")),
                next: Next::GiveUp {
                    disable: Some(format!("its URL {refused}")),
                },
            };
        }
        let mut secrets = vec![endpoint.secret.as_str()];
        if let (Some(previous), Some(until)) =
            (&endpoint.previous_secret, endpoint.previous_secret_until)
            && until > now()
        {
            secrets.push(previous);
        }
        let signature =
            signature_header(&secrets, &delivery.event_id, timestamp, &delivery.payload);
        let sent = self
            .http
            .post(&endpoint.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &delivery.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.payload.clone())
            .send()
            .await;
        let attempts = usize::try_from(delivery.attempts).unwrap_or(usize::MAX) + 1;
        match sent {
            Ok(answer) => {
                let status = answer.status();
                let retry_after = retry_after(&answer);
                let error = (!status.is_success()).then(|| format!("answered {status}"));
                drain(answer).await;
                Attempted {
                    http_status: Some(status.as_u16()),
                    latency: started.elapsed(),
                    error,
                    next: self.next(status, attempts, retry_after),
                }
            }
            Err(e) => Attempted {
                http_status: None,
                latency: started.elapsed(),
                error: Some(crate::error::chain(&e)),
                next: self.retry(attempts, None),
            },
        }
    }

    /// What follows an answer with `status` to attempt number `attempts`.
    fn next(&self, status: StatusCode, attempts: usize, retry_after: Option<Duration>) -> Next {
        if status.is_success() {
            Next::Delivered
        } else if status == StatusCode::GONE {
            Next::GiveUp {
                disable: Some("the endpoint answered 410 Gone".into()),
            }
        } else {
            self.retry(attempts, retry_after)
        }
    }

    /// The retry after attempt number `attempts` failed, or giving up when
    /// the schedule is used up.
    fn retry(&self, attempts: usize, retry_after: Option<Duration>) -> Next {
        match retry_delay(&self.settings.retry_schedule, attempts, retry_after) {
            Some(delay) => {
                let jitter = delay.mul_f64(f64::from(jitter_percent()) / 100.0);
                let delay =
                    chrono::Duration::from_std(delay + jitter).unwrap_or(chrono::Duration::MAX);
                Next::RetryAt(now() + delay)
            }
            None => Next::GiveUp { disable: None },
        }
    }
}

/// The delay before the attempt after attempt number `attempts` (jitter
/// aside): the schedule's, or the endpoint's `Retry-After` kept between it
/// and the schedule's longest; `None` when the schedule is used up.
fn retry_delay(
    schedule: &[Duration],
    attempts: usize,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let delay = *schedule.get(attempts)?;
    let longest = schedule
        .iter()
        .max()
        .copied()
        .unwrap_or_default()
        .max(delay);
    Some(retry_after.map_or(delay, |asked| asked.clamp(delay, longest)))
}

/// 0 to 10, from the clock's nanoseconds: spreads retries, needs no generator.
fn jitter_percent() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 11)
}

/// A `Retry-After` in seconds, if the answer has one.
fn retry_after(answer: &reqwest::Response) -> Option<Duration> {
    answer
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Reads at most [`MAX_ANSWER`] bytes of an answer, so the connection can
/// be reused, and drops the rest.
async fn drain(mut answer: reqwest::Response) {
    let mut read = 0;
    while read < MAX_ANSWER {
        match answer.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => return,
        }
    }
}

fn outcome(attempted: &Attempted) -> &'static str {
    match attempted.next {
        Next::Delivered => "delivered",
        Next::RetryAt(_) => "retried",
        Next::GiveUp { disable: Some(_) } => "disabled",
        Next::GiveUp { disable: None } => "given_up",
    }
}

/// Resolves a host and keeps only its public addresses (all of them, with
/// `allow_private`); a host with none left is refused. reqwest connects to
/// what this returns, so what was checked is what is reached.
struct PublicOnly {
    allow_private: bool,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if public.is_empty() || (!allow_private && public.len() != found.len()) {
                let refused: Box<dyn std::error::Error + Send + Sync> = format!(
                    "{host} resolves to an address that is not public ({})",
                    found
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into();
                return Err(refused);
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_schedule_and_retry_after_within_its_bounds() {
        let schedule = [
            Duration::ZERO,
            Duration::from_secs(5),
            Duration::from_mins(5),
        ];
        assert_eq!(
            retry_delay(&schedule, 1, None),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_delay(&schedule, 2, None),
            Some(Duration::from_mins(5))
        );
        assert_eq!(retry_delay(&schedule, 3, None), None, "used up");
        // Asked for a minute: granted.
        let minute = Some(Duration::from_mins(1));
        assert_eq!(retry_delay(&schedule, 1, minute), minute);
        // Sooner than the schedule: the schedule's delay.
        let soon = Some(Duration::from_secs(1));
        assert_eq!(
            retry_delay(&schedule, 1, soon),
            Some(Duration::from_secs(5))
        );
        // Later than the schedule's longest: its longest.
        let day = Some(Duration::from_hours(24));
        assert_eq!(retry_delay(&schedule, 1, day), Some(Duration::from_mins(5)));
    }
}
