//! The two kinds of error: [`AdminError`], the server could not start; [`ApiError`], one
//! request's answer, written as `{"error": "...", "plugin": "..."}` with its status.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use plughost::{CallError, ConfigError, HostError, LoadError, PublishError};
use serde::Serialize;

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The address could not be listened on.
    #[error("admin API: cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Unix socket could not be served.
    #[error("admin API: cannot serve the socket {}: {source}", path.display())]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Listening there would expose the API without a token.
    #[error("admin API: refusing to listen on {addr}: {reason}")]
    Exposed {
        /// The address.
        addr: SocketAddr,
        /// Why, with the fix.
        reason: String,
    },
    /// The server's threads could not start.
    #[error("admin API: cannot start its threads: {source}")]
    Runtime {
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The answer to a request that failed: its status and the JSON body
/// `{"error": "...", "plugin": "..."}` (`plugin` only when the request was about one).
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: ErrorBody,
    /// Seconds to wait before trying again (429, 503).
    pub(crate) retry_after: Option<u64>,
}

/// The JSON body of an error; also the OpenAPI schema of every error response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong, in one line.
    pub(crate) error: String,
    /// The plugin the request was about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plugin: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                plugin: None,
            },
            retry_after: None,
        }
    }

    /// The same error, about plugin `name`.
    pub(crate) fn about(mut self, name: &str) -> Self {
        self.body.plugin = Some(name.to_owned());
        self
    }

    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub(crate) fn bad_request(error: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, error)
    }

    pub(crate) fn unknown_plugin(name: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no plugin named {name} (GET /plugins lists them)"),
        )
        .about(name)
    }

    /// A failed call: the plugin's own error is the caller's problem (422), the plugin
    /// breaking is a bad gateway (502), its time running out a gateway timeout (504), a limit
    /// or open circuit asks the caller to come back (429 / 503).
    pub(crate) fn call(name: &str, error: &CallError) -> Self {
        let status = match error {
            CallError::NotFound { .. } | CallError::NotLoaded { .. } => StatusCode::NOT_FOUND,
            CallError::Failed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            CallError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            CallError::Timeout { .. } | CallError::Stuck { .. } => StatusCode::GATEWAY_TIMEOUT,
            CallError::Busy { .. } | CallError::RateLimited { .. } => {
                return ApiError::new(StatusCode::TOO_MANY_REQUESTS, error.to_string())
                    .about(name)
                    .retry_after(1)
            }
            CallError::CircuitOpen { .. }
            | CallError::Restarting { .. }
            | CallError::GaveUp { .. } => {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
                    .about(name)
                    .retry_after(1)
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, error.to_string()).about(name)
    }

    /// A refused settings change: an invalid config is 422, anything else the host refused
    /// (disabling a plugin others require, shutting down) a conflict.
    pub(crate) fn config(name: &str, error: &ConfigError) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        let mut invalid = false;
        while let Some(error) = cause {
            invalid |= matches!(
                error.downcast_ref::<LoadError>(),
                Some(LoadError::Config { .. } | LoadError::ConfigRefused { .. })
            );
            cause = error.source();
        }
        let status = if invalid {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::CONFLICT
        };
        ApiError::new(status, error.to_string()).about(name)
    }

    /// A refused reload: the new file was refused (409, the old version keeps serving), or
    /// there is nothing to reload.
    pub(crate) fn host(name: &str, error: &HostError) -> Self {
        let status = if error.is_unknown_plugin() {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::CONFLICT
        };
        ApiError::new(status, error.to_string()).about(name)
    }

    /// A refused publish.
    pub(crate) fn publish(error: &PublishError) -> Self {
        let status = match error {
            PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            PublishError::Dropped { .. } => StatusCode::SERVICE_UNAVAILABLE,
            PublishError::Closed { .. } | PublishError::Stopping { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"plughost\""),
            );
        }
        response
    }
}

/// A rejection of axum's extractors (a body too large or unreadable, malformed JSON, a bad
/// path) in the API's error format, with the status axum chose.
impl<R: IntoResponse + std::fmt::Display> From<Rejected<R>> for ApiError {
    fn from(Rejected(rejection): Rejected<R>) -> Self {
        let text = rejection.to_string();
        let status = rejection.into_response().status();
        ApiError::new(status, text)
    }
}

/// Wraps an extractor rejection for the conversion above.
pub(crate) struct Rejected<R>(pub(crate) R);
