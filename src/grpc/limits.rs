//! Load shedding at the door: a tower layer that refuses a call at once,
//! with RESOURCE_EXHAUSTED and a `RetryInfo`, instead of queueing it when
//! the server is at one of its limits (`0` turns a limit off):
//! - `VOICEHUB_MAX_CONCURRENT_RPCS`: unary calls in progress (streams, which
//!   may stay open for hours, have their own limits in `watch.rs`; health
//!   checks are never refused);
//! - `VOICEHUB_MAX_CONCURRENT_UPLOADS`: CreateVoiceClone and AnalyzeSamples
//!   calls in progress (both carry samples).
//!   Each holds up to 50 MiB of samples, so the refusal comes before the
//!   request's body is read.
//! - `…_PER_USER` of both: one user's share, taken before a place among all,
//!   so a user at their share takes no place from anyone (the user is the
//!   token's claimed `sub`; see [`claimed_user`] for why unchecked is safe).
//! - arrival: a request must have arrived in full within
//!   `VOICEHUB_REQUEST_ARRIVAL_TIMEOUT` of its headers (uploads:
//!   `VOICEHUB_UPLOAD_ARRIVAL_TIMEOUT`), or the call ends with
//!   DEADLINE_EXCEEDED and gives its places back: a trickled body cannot
//!   hold them.
//!
//! - request size: every call but the uploads (whose samples have
//!   their own limits) carries at most [`MAX_SMALL_REQUEST_BYTES`] of
//!   request body; the call ends with OUT_OF_RANGE as soon as more arrives,
//!   before the rest is buffered (every field of those requests is far
//!   smaller: names, labels, ids).
//!
//! A refused call did nothing. Refusals are counted in
//! `voicehub_limit_refusals_total{limit}`, calls in progress in
//! `voicehub_rpcs_in_flight` and `voicehub_uploads_in_flight`.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use uuid::Uuid;

use super::methods;
use crate::{
    error::Error,
    metrics::{LimitLabel, Metrics},
};

/// The paths of the calls that upload samples.
const UPLOADS: [&str; 2] = [
    "/voicehub.v1.VoiceService/CreateVoiceClone",
    "/voicehub.v1.VoiceService/AnalyzeSamples",
];

/// The health service's paths.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// The most request body a call other than CreateVoiceClone may send.
pub(crate) const MAX_SMALL_REQUEST_BYTES: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// A request body that fails with OUT_OF_RANGE once it has carried more
    /// than its limit, or as soon as its message's gRPC header declares more
    /// (tonic reserves a buffer of the declared length when it reads the
    /// header): tonic reports a `Status` found in a body error as it is.
    struct Capped<B> {
        #[pin]
        inner: B,
        // The most it may still carry; `None`: uncapped (uploads, which
        // tonic caps at their own limit).
        left: Option<usize>,
        // The first message's 5-byte header (flag, length), as it arrives.
        header: [u8; 5],
        header_seen: usize,
        // When the whole body must have arrived.
        deadline: Instant,
        within: Duration,
        // Made the first time the body is not all there yet: most bodies
        // arrive with their headers and never need a timer.
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> Capped<B> {
    fn new(inner: B, left: Option<usize>, within: Duration) -> Self {
        Capped {
            inner,
            left,
            header: [0; 5],
            header_seen: 0,
            deadline: Instant::now() + within,
            within,
            timer: None,
        }
    }
}

fn too_slow(within: Duration) -> BoxError {
    Box::new(Status::from(Error::ArrivedTooSlowly { within }))
}

fn too_large() -> BoxError {
    Box::new(Status::from(Error::TooLarge {
        limit: MAX_SMALL_REQUEST_BYTES,
    }))
}

impl<B> Body for Capped<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(*this.deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(too_slow(*this.within))));
                }
                return Poll::Pending;
            }
        };
        if let Some(data) = frame.data_ref()
            && let Some(left) = this.left
        {
            if *this.header_seen < this.header.len() {
                let take = (this.header.len() - *this.header_seen).min(data.len());
                this.header[*this.header_seen..*this.header_seen + take]
                    .copy_from_slice(&data[..take]);
                *this.header_seen += take;
                if *this.header_seen == this.header.len() {
                    let [_, a, b, c, d] = *this.header;
                    let declared = u32::from_be_bytes([a, b, c, d]) as usize;
                    if declared > MAX_SMALL_REQUEST_BYTES - this.header.len() {
                        return Poll::Ready(Some(Err(too_large())));
                    }
                }
            }
            let Some(still) = left.checked_sub(data.len()) else {
                return Poll::Ready(Some(Err(too_large())));
            };
            *left = still;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// When a refused caller may try again: calls here last milliseconds to a
/// minute, so a second is a fair first backoff.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One bounded resource.
#[derive(Clone)]
struct Bound {
    permits: Arc<Semaphore>,
    in_flight: Gauge,
    refused: Counter,
    message: &'static str,
}

impl Bound {
    fn new(
        max: usize,
        in_flight: &Gauge,
        refused: &Counter,
        message: &'static str,
    ) -> Option<Self> {
        (max > 0).then(|| Bound {
            permits: Arc::new(Semaphore::new(max)),
            in_flight: in_flight.clone(),
            refused: refused.clone(),
            message,
        })
    }

    fn enter(&self) -> Result<Entered, Status> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.refused.inc();
            return Err(Status::from(Error::Busy {
                message: self.message.to_owned(),
                retry_after: RETRY_AFTER,
            }));
        };
        self.in_flight.inc();
        Ok(Entered {
            _permit: permit,
            in_flight: self.in_flight.clone(),
        })
    }
}

/// A call inside a bound; leaving (the call finished or was cancelled)
/// gives its place back.
struct Entered {
    _permit: OwnedSemaphorePermit,
    in_flight: Gauge,
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// How many calls of one user may be in progress on this replica.
#[derive(Clone)]
struct PerUser {
    max: usize,
    held: Arc<Mutex<HashMap<Uuid, usize>>>,
    refused: Counter,
    message: String,
}

impl PerUser {
    fn new(max: usize, refused: &Counter, what: &str) -> Option<Self> {
        (max > 0).then(|| PerUser {
            max,
            held: Arc::default(),
            refused: refused.clone(),
            message: format!(
                "a user may have at most {max} {what} in progress on this server; retry with backoff"
            ),
        })
    }

    fn enter(&self, user: Uuid) -> Result<UserEntered, Status> {
        let mut held = self.held.lock();
        let mine = held.entry(user).or_default();
        if *mine >= self.max {
            self.refused.inc();
            return Err(Status::from(Error::Busy {
                message: self.message.clone(),
                retry_after: RETRY_AFTER,
            }));
        }
        *mine += 1;
        Ok(UserEntered {
            held: self.held.clone(),
            user,
        })
    }
}

/// A user's call inside their share.
struct UserEntered {
    held: Arc<Mutex<HashMap<Uuid, usize>>>,
    user: Uuid,
}

impl Drop for UserEntered {
    fn drop(&mut self) {
        let mut held = self.held.lock();
        if let Some(mine) = held.get_mut(&self.user) {
            *mine -= 1;
            if *mine == 0 {
                held.remove(&self.user);
            }
        }
    }
}

/// What a call holds at the door until it ends.
enum Held {
    Slot(#[allow(dead_code)] Entered),
    Share(#[allow(dead_code)] UserEntered),
}

/// The user a call says it is (the token's `sub`), read without checking
/// the token: the authenticator, right behind this layer, refuses a forged
/// one before its body is read, so a forged subject holds nothing for long,
/// while a real user's every token lands in the same share.
fn claimed_user(headers: &http::HeaderMap) -> Option<Uuid> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: Uuid,
    }
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Claims>(&json).ok().map(|c| c.sub)
}

/// The limits at the door (`0` turns a count off).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DoorLimits {
    /// Unary calls in progress, and of one user.
    pub(crate) calls: (usize, usize),
    /// CreateVoiceClone calls in progress, and of one user.
    pub(crate) uploads: (usize, usize),
    /// How long after its headers a unary call's request must have arrived,
    /// and an upload's.
    pub(crate) arrival: (Duration, Duration),
}

/// The limits of one server.
#[derive(Clone)]
pub(crate) struct LimitLayer {
    calls: Option<Bound>,
    uploads: Option<Bound>,
    calls_per_user: Option<PerUser>,
    uploads_per_user: Option<PerUser>,
    arrival: (Duration, Duration),
}

impl LimitLayer {
    /// The door with `limits`, counted in `metrics`.
    pub(crate) fn new(limits: DoorLimits, metrics: &Metrics) -> Self {
        let refused = |limit| {
            metrics
                .limit_refusals
                .get_or_create(&LimitLabel { limit })
                .clone()
        };
        LimitLayer {
            calls: Bound::new(
                limits.calls.0,
                &metrics.rpcs_in_flight,
                &refused("concurrent_rpcs"),
                "this server is at its limit of concurrent calls; retry with backoff",
            ),
            uploads: Bound::new(
                limits.uploads.0,
                &metrics.uploads_in_flight,
                &refused("concurrent_uploads"),
                "this server is at its limit of uploads (CreateVoiceClone, AnalyzeSamples) in progress; retry with backoff",
            ),
            calls_per_user: PerUser::new(
                limits.calls.1,
                &refused("concurrent_rpcs_per_user"),
                "calls",
            ),
            uploads_per_user: PerUser::new(
                limits.uploads.1,
                &refused("concurrent_uploads_per_user"),
                "uploads (CreateVoiceClone, AnalyzeSamples)",
            ),
            arrival: limits.arrival,
        }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            limits: self.clone(),
        }
    }
}

/// The service behind the limits.
#[derive(Clone)]
pub(crate) struct Limit<S> {
    inner: S,
    limits: LimitLayer,
}

impl<S, ReqBody> Service<Request<ReqBody>> for Limit<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>>,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let streaming = methods::lookup(path).is_some_and(|m| m.streaming);
        // Health must answer when the server is busiest, or load balancers
        // would take a loaded replica for a dead one.
        let health = path.starts_with(HEALTH);
        let (unary, upload) = (!streaming && !health, UPLOADS.contains(&path));
        let limits = &self.limits;
        let shares = [
            limits.calls_per_user.as_ref().filter(|_| unary),
            limits.uploads_per_user.as_ref().filter(|_| upload),
        ];
        let bounds = [
            limits.calls.as_ref().filter(|_| unary),
            limits.uploads.as_ref().filter(|_| upload),
        ];
        // A user's share first: a user at theirs takes no place from others.
        let user = shares
            .iter()
            .any(Option::is_some)
            .then(|| claimed_user(request.headers()))
            .flatten();
        let mut entered = Vec::with_capacity(4);
        let taken = shares
            .into_iter()
            .flatten()
            .filter_map(|share| user.map(|user| share.enter(user).map(Held::Share)))
            .chain(
                bounds
                    .into_iter()
                    .flatten()
                    .map(|b| b.enter().map(Held::Slot)),
            );
        for held in taken {
            match held {
                Ok(held) => entered.push(held),
                Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
            }
        }
        let request = if upload {
            request.map(|inner| tonic::body::Body::new(Capped::new(inner, None, limits.arrival.1)))
        } else {
            request.map(|inner| {
                tonic::body::Body::new(Capped::new(
                    inner,
                    Some(MAX_SMALL_REQUEST_BYTES),
                    limits.arrival.0,
                ))
            })
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(entered);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claimed_user_is_the_tokens_subject_or_none() {
        use base64::Engine;
        let encode =
            |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.as_bytes());
        let user = Uuid::new_v4();
        let token = format!("h.{}.s", encode(&format!(r#"{{"sub":"{user}","exp":1}}"#)));
        let headers = |value: &str| {
            let mut map = http::HeaderMap::new();
            map.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            map
        };
        assert_eq!(
            claimed_user(&headers(&format!("Bearer {token}"))),
            Some(user)
        );
        assert_eq!(
            claimed_user(&headers(&format!("bearer {token}"))),
            Some(user)
        );
        assert_eq!(claimed_user(&headers(&format!("Basic {token}"))), None);
        assert_eq!(claimed_user(&headers("Bearer not-a-token")), None);
        let no_uuid = format!("h.{}.s", encode(r#"{"sub":"alice"}"#));
        assert_eq!(claimed_user(&headers(&format!("Bearer {no_uuid}"))), None);
        assert_eq!(claimed_user(&http::HeaderMap::new()), None);
    }
}
