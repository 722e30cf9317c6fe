//! The application's one error type and its one mapping to `tonic::Status`.
//!
//! Client errors carry a message meant for the caller (and, for bad fields, a
//! `google.rpc.BadRequest` naming the field). Server errors are logged here
//! with their whole cause chain and reach the caller only as a generic
//! message, so no internal detail (SQL, hostnames, secrets) leaks out.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::provider::ProviderError;

/// The window over which the callers of a stopping replica are told to come
/// back (each a random moment in it): reconnects arrive spread out, not as
/// one burst on the remaining replicas.
pub const RECONNECT_SPREAD: Duration = Duration::from_secs(5);

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed or out of range. `field` is the field's
    /// path in the request, e.g. `samples[2].content_type`.
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        /// The field's path in the request.
        field: String,
        /// What is wrong with it, for the caller.
        description: String,
    },
    /// The thing does not exist, or the caller may not see it: the two are
    /// deliberately indistinguishable.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The call carries no valid user token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A per-user quota is used up.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A per-user rate is used up until `retry_after` from now.
    #[error("rate limit reached: {limit}")]
    RateLimited {
        /// The limit, e.g. "20 voice creations per hour".
        limit: String,
        /// When the caller may try again.
        retry_after: Duration,
    },
    /// A concurrent change got in the way; retrying is safe.
    #[error("{0}")]
    Aborted(&'static str),
    /// The thing is not in a state that allows the call (a disabled
    /// webhook endpoint asked for a test event).
    #[error("{0}")]
    FailedPrecondition(&'static str),
    /// This replica is at one of its limits of work in progress; the caller
    /// may retry after `retry_after`, here or on another replica.
    #[error("{message}")]
    Busy {
        /// Which limit, for the caller.
        message: String,
        /// When trying again makes sense.
        retry_after: Duration,
    },
    /// The request is larger than the method accepts.
    #[error("the request is larger than this method accepts ({limit} bytes)")]
    TooLarge {
        /// The most the method accepts, in bytes.
        limit: usize,
    },
    /// The request did not arrive in full in time.
    #[error("the request did not arrive within {} s of its headers", .within.as_secs_f64())]
    ArrivedTooSlowly {
        /// How long it had.
        within: Duration,
    },
    /// The server is stopping: the caller retries on another replica (a
    /// watch stream reconnects, and its snapshot makes that lossless).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A part of this server cannot serve now; retrying, here or on
    /// another replica, may work. `detail` is logged, never sent.
    #[error("{what} is unavailable: {detail}")]
    Unavailable {
        /// What cannot serve, for the caller: "the audio check".
        what: &'static str,
        /// Why, for the log.
        detail: String,
    },
    /// The voice provider failed or refused.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The database failed or is unreachable.
    #[error("storage error")]
    Storage(#[from] sea_orm::DbErr),
}

impl Error {
    /// An INVALID_ARGUMENT naming `field`.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// What a caller can do about a provider failure decides the code.
fn provider_status(e: ProviderError) -> Status {
    match e {
        ProviderError::LimitReached(detail) => {
            tracing::warn!(%detail, "the voice provider's account limit is reached");
            Status::resource_exhausted("the voice provider has no capacity for more voices")
        }
        ProviderError::Rejected { field, message } => {
            tracing::info!(?field, %message, "the voice provider rejected a request");
            let text = format!("the voice provider rejected the request: {message}");
            match field {
                Some(field) => Status::with_error_details(
                    Code::InvalidArgument,
                    text,
                    ErrorDetails::with_bad_request_violation(field, message),
                ),
                None => Status::invalid_argument(text),
            }
        }
        ProviderError::NotFound => {
            Status::failed_precondition("the voice no longer exists at the voice provider")
        }
        ProviderError::Unavailable(detail) => {
            tracing::warn!(%detail, "the voice provider is unavailable");
            Status::unavailable(
                "the voice provider is unavailable; retry later (with the same request_id)",
            )
        }
        ProviderError::OutcomeUnknown { detail, .. } => {
            tracing::warn!(%detail, "the voice provider's answer was lost");
            Status::unavailable(
                "the voice provider did not answer; retry later (with the same request_id)",
            )
        }
        ProviderError::Unauthorized(detail) => {
            tracing::error!(%detail, "the voice provider refused our credentials: check ELEVENLABS_API_KEY and its permissions");
            Status::internal("internal error")
        }
        ProviderError::Protocol(detail) => {
            tracing::error!(%detail, "unexpected answer from the voice provider");
            Status::internal("internal error")
        }
    }
}

/// Renders an error and its sources as `a: b: c`, for logs.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// A random delay below `within` (zero if it is), for callers told to come
/// back: spread, so they do not all come back in the same instant.
#[must_use]
pub(crate) fn jitter(within: Duration) -> Duration {
    let millis = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(u64::from(getrandom::u32().unwrap_or_default()) % millis.max(1))
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { field, description } => {
                tracing::debug!(%field, %description, "rejected invalid argument");
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid {field}: {description}"),
                    ErrorDetails::with_bad_request_violation(field, description),
                )
            }
            Error::ResourceExhausted(why) => {
                tracing::info!(reason = %why, "refused: resource exhausted");
                Status::resource_exhausted(why)
            }
            Error::RateLimited { limit, retry_after } => {
                tracing::info!(%limit, ?retry_after, "refused: rate limit");
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "rate limit reached: at most {limit}; retry in {} s",
                        retry_after.as_secs()
                    ),
                    ErrorDetails::with_retry_info(Some(retry_after)),
                )
            }
            Error::Aborted(why) => Status::aborted(why),
            Error::FailedPrecondition(why) => Status::failed_precondition(why),
            Error::Busy {
                message,
                retry_after,
            } => {
                tracing::info!(reason = %message, "refused: at a limit");
                Status::with_error_details(
                    Code::ResourceExhausted,
                    message,
                    ErrorDetails::with_retry_info(Some(retry_after)),
                )
            }
            e @ Error::TooLarge { .. } => Status::out_of_range(e.to_string()),
            e @ Error::ArrivedTooSlowly { .. } => Status::deadline_exceeded(e.to_string()),
            Error::ShuttingDown => {
                // Each caller is told its own moment within the spread, so
                // the streams of a stopping replica do not all reconnect to
                // the others in one instant.
                let delay = jitter(RECONNECT_SPREAD);
                Status::with_error_details(
                    Code::Unavailable,
                    "the server is shutting down; retry on another replica after the RetryInfo delay (a watch: reconnect to continue watching)",
                    ErrorDetails::with_retry_info(Some(delay)),
                )
            }
            Error::Unavailable { what, detail } => {
                tracing::error!(%what, %detail, "cannot serve a call");
                Status::unavailable(format!("{what} is unavailable, try again later"))
            }
            Error::Provider(e) => provider_status(e),
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::Unauthenticated(why) => {
                tracing::debug!(reason = why, "rejected unauthenticated call");
                Status::unauthenticated(why)
            }
            Error::Storage(ref cause) => {
                tracing::error!(error = %chain(cause), "storage failure");
                // The database cannot serve now: the caller may retry, here or elsewhere.
                if crate::store::unavailable(cause) {
                    Status::unavailable("storage is unavailable, try again later")
                } else {
                    Status::internal("internal error")
                }
            }
        }
    }
}
