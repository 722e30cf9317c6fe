//! Every call the server answers, observed once it is finished: one log
//! line (method, gRPC code, latency, the caller's user id when the call was
//! authenticated) and the `voicehub_rpc_*` metrics.
//!
//! A tower layer around the whole server, so health, reflection and calls
//! refused by the authenticator are seen too. A call is finished when its
//! status is known: in the response headers (a call refused at once), in the
//! trailers (after the last message, for unary calls and streams alike), or
//! CANCELLED when the caller went away first (the response or its body was
//! dropped unfinished). Log lines never carry tokens, keys or audio: only the
//! fields named above. Client errors are logged at INFO, server errors
//! (UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS) at ERROR,
//! under the target `voicehub::rpc`.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use super::methods;
use crate::{
    auth::CallerSlot,
    connections::{self, CallOnConnection},
    metrics::{MethodLabel, Metrics, RpcLabels},
};

/// Observes every call of the service it wraps.
#[derive(Clone)]
pub(crate) struct ObserveLayer {
    /// Shared by every call: `Metrics` is dozens of handles, too many to
    /// clone per call (1.2 % of GetVoice's CPU at 64 in flight).
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub(crate) fn new(metrics: Metrics) -> Self {
        ObserveLayer {
            metrics: Arc::new(metrics),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service with its calls observed.
#[derive(Clone)]
pub(crate) struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let call = Call {
            method: methods::name(request.uri().path()),
            started: Instant::now(),
            caller: CallerSlot::default(),
            metrics: Some(self.metrics.clone()),
            _on_connection: connections::call_on_connection(request.extensions()),
        };
        request.extensions_mut().insert(call.caller.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut call = call;
            let response = match response.await {
                Ok(response) => response,
                Err(e) => {
                    call.finish(Code::Unknown);
                    return Err(e);
                }
            };
            let (parts, body) = response.into_parts();
            // Trailers-only: the call was answered with its status at once.
            if let Some(code) = status_of(&parts.headers) {
                call.finish(code);
            }
            Ok(Response::from_parts(
                parts,
                ObservedBody { inner: body, call },
            ))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that finishes its call when the trailers pass.
    pub(crate) struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Call,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    this.call.finish(code);
                }
            }
            // A broken body, or an end without a status (not gRPC; if the
            // headers had one, the call is finished already).
            Poll::Ready(Some(Err(_)) | None) => this.call.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One call until it is observed; observed as CANCELLED if dropped before.
struct Call {
    method: &'static str,
    started: Instant,
    caller: CallerSlot,
    /// `None` once observed.
    metrics: Option<Arc<Metrics>>,
    /// Keeps its connection from being closed as idle while the call lives.
    _on_connection: Option<CallOnConnection>,
}

impl Call {
    fn finish(&mut self, code: Code) {
        let Some(metrics) = self.metrics.take() else {
            return;
        };
        let elapsed = self.started.elapsed();
        let code = code_name(code);
        metrics
            .rpc_requests
            .get_or_create(&RpcLabels {
                method: self.method,
                code,
            })
            .inc();
        metrics
            .rpc_duration
            .get_or_create(&MethodLabel {
                method: self.method,
            })
            .observe(elapsed.as_secs_f64());
        log(self.method, code, elapsed, &self.caller);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

fn log(method: &'static str, code: &'static str, elapsed: Duration, caller: &CallerSlot) {
    let latency_ms = elapsed.as_secs_f64() * 1e3;
    let user = caller.get().map(tracing::field::display);
    if is_server_error(code) {
        tracing::error!(target: "voicehub::rpc", method, code, latency_ms, user, "rpc finished");
    } else {
        tracing::info!(target: "voicehub::rpc", method, code, latency_ms, user, "rpc finished");
    }
}

fn is_server_error(code: &str) -> bool {
    matches!(
        code,
        "UNKNOWN" | "DEADLINE_EXCEEDED" | "INTERNAL" | "UNAVAILABLE" | "DATA_LOSS"
    )
}

/// The status a header map carries, if any (a malformed one is UNKNOWN).
fn status_of(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .map_or(Code::Unknown, Code::from),
    )
}

/// The canonical name of a gRPC code, as grpcurl and the gRPC docs spell it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_read_from_headers_and_a_bad_one_is_unknown() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_of(&headers), None);
        headers.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(status_of(&headers), Some(Code::NotFound));
        headers.insert("grpc-status", "five".parse().unwrap());
        assert_eq!(status_of(&headers), Some(Code::Unknown));
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert!(is_server_error("INTERNAL") && !is_server_error("NOT_FOUND"));
    }
}
