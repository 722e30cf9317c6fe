//! Load shedding at the door: a tower layer that refuses a call at once,
//! with RESOURCE_EXHAUSTED and a `RetryInfo`, instead of queueing it when
//! the server is at one of its limits (`0` turns a limit off):
//! - `VOICEHUB_MAX_CONCURRENT_RPCS`: unary calls in progress (streams, which
//!   may stay open for hours, have their own limits in `watch.rs`; health
//!   checks are never refused);
//! - `VOICEHUB_MAX_CONCURRENT_UPLOADS`: CreateVoiceClone calls in progress.
//!   Each holds up to 50 MiB of samples, so the refusal comes before the
//!   request's body is read.
//!
//! - request size: every call but CreateVoiceClone (whose samples have
//!   their own limits) carries at most [`MAX_SMALL_REQUEST_BYTES`] of
//!   request body; the call ends with OUT_OF_RANGE as soon as more arrives,
//!   before the rest is buffered (every field of those requests is far
//!   smaller: names, labels, ids).
//!
//! A refused call did nothing. Refusals are counted in
//! `voicehub_limit_refusals_total{limit}`, calls in progress in
//! `voicehub_rpcs_in_flight` and `voicehub_uploads_in_flight`.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower_layer::Layer;
use tower_service::Service;

use super::methods;
use crate::metrics::{LimitLabel, Metrics};

/// The path of the call that uploads samples.
const CREATE: &str = "/voicehub.v1.VoiceService/CreateVoiceClone";

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
        left: usize,
        // The first message's 5-byte header (flag, length), as it arrives.
        header: [u8; 5],
        header_seen: usize,
    }
}

impl<B> Capped<B> {
    fn new(inner: B) -> Self {
        Capped {
            inner,
            left: MAX_SMALL_REQUEST_BYTES,
            header: [0; 5],
            header_seen: 0,
        }
    }
}

fn too_large() -> BoxError {
    Box::new(Status::out_of_range(format!(
        "the request is larger than this method accepts ({MAX_SMALL_REQUEST_BYTES} bytes)"
    )))
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
        let frame = match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
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
            let Some(left) = this.left.checked_sub(data.len()) else {
                return Poll::Ready(Some(Err(too_large())));
            };
            *this.left = left;
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
            return Err(Status::with_error_details(
                Code::ResourceExhausted,
                self.message,
                ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
            ));
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

/// The limits of one server.
#[derive(Clone)]
pub(crate) struct LimitLayer {
    calls: Option<Bound>,
    uploads: Option<Bound>,
}

impl LimitLayer {
    /// At most `calls` unary calls and `uploads` creates at a time.
    pub(crate) fn new(calls: usize, uploads: usize, metrics: &Metrics) -> Self {
        let refused = |limit| {
            metrics
                .limit_refusals
                .get_or_create(&LimitLabel { limit })
                .clone()
        };
        LimitLayer {
            calls: Bound::new(
                calls,
                &metrics.rpcs_in_flight,
                &refused("concurrent_rpcs"),
                "this server is at its limit of concurrent calls; retry with backoff",
            ),
            uploads: Bound::new(
                uploads,
                &metrics.uploads_in_flight,
                &refused("concurrent_uploads"),
                "this server is at its limit of CreateVoiceClone uploads in progress; retry with backoff",
            ),
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
        let bounds = [
            self.limits.calls.as_ref().filter(|_| !streaming && !health),
            self.limits.uploads.as_ref().filter(|_| path == CREATE),
        ];
        let mut entered = Vec::with_capacity(2);
        for bound in bounds.into_iter().flatten() {
            match bound.enter() {
                Ok(inside) => entered.push(inside),
                Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
            }
        }
        let request = if path == CREATE {
            request.map(tonic::body::Body::new)
        } else {
            request.map(|inner| tonic::body::Body::new(Capped::new(inner)))
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(entered);
            response
        })
    }
}
