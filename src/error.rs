//! The application's one error type and its one mapping to `tonic::Status`.
//!
//! Client errors carry a message meant for the caller (and, for bad fields, a
//! `google.rpc.BadRequest` naming the field). Server errors are logged here
//! with their whole cause chain and reach the caller only as a generic
//! message, so no internal detail (SQL, hostnames, secrets) leaks out.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed or out of range.
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        field: &'static str,
        description: String,
    },
    /// The thing does not exist, or the caller may not see it: the two are
    /// deliberately indistinguishable.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The call carries no valid user token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The RPC exists in the contract but is not served by this version.
    #[error("{0} is not implemented yet")]
    Unimplemented(&'static str),
    /// The database failed or is unreachable.
    #[error("storage error")]
    Storage(#[from] sea_orm::DbErr),
    /// A bug or an impossible state; the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            description: description.into(),
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

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument { field, description } => {
                tracing::debug!(field, %description, "rejected invalid argument");
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid {field}: {description}"),
                    ErrorDetails::with_bad_request_violation(field, description),
                )
            }
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::Unauthenticated(why) => {
                tracing::debug!(reason = why, "rejected unauthenticated call");
                Status::unauthenticated(why)
            }
            Error::Unimplemented(rpc) => {
                Status::unimplemented(format!("{rpc} is not implemented yet"))
            }
            Error::Storage(ref cause) => {
                tracing::error!(error = %chain(cause), "storage failure");
                match cause {
                    // The database cannot be reached: the caller may retry, here or elsewhere.
                    sea_orm::DbErr::ConnectionAcquire(_) | sea_orm::DbErr::Conn(_) => {
                        Status::unavailable("storage is unavailable, try again later")
                    }
                    _ => Status::internal("internal error"),
                }
            }
            Error::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}
