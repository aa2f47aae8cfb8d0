//! Who may do what: the bearer token that every mutating request needs, and the rate limit
//! per client address. Requests over the host's Unix socket pass both: the socket is its
//! owner's alone (mode 0600), so whoever reaches it could edit the plugins folder anyway.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::ApiError;
use crate::state;

/// Where a request came from; set by the server on each connection. A request without one
/// (the router mounted in someone else's server) is treated as remote.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Peer {
    /// A TCP client.
    Remote(SocketAddr),
    /// A client of the host's own Unix socket.
    Local,
}

/// Refuses a request that changes something unless it carries the configured token
/// (`Authorization: Bearer TOKEN`), compared in constant time ([`plughost::Secret::matches`]).
pub(crate) async fn require_token(
    State(state): State<Arc<state::State>>,
    request: Request,
    next: Next,
) -> Response {
    if matches!(request.extensions().get::<Peer>(), Some(Peer::Local)) {
        return next.run(request).await;
    }
    let Some(token) = &state.token else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this request changes the host and needs a token, and none is configured: set [admin] \
             token = \"${PLUGHOST_ADMIN_TOKEN}\" in plughost.toml (or use the host's control \
             socket)",
        )
        .into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        // The scheme is case-insensitive (RFC 9110).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(given) if token.matches(given) => next.run(request).await,
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "the bearer token is wrong").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this request changes the host: send the admin token as `Authorization: Bearer \
             TOKEN`",
        )
        .into_response(),
    }
}

/// Requests per second per client address.
pub(crate) struct RateLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl RateLimit {
    /// `per_second` requests a second, in bursts of as many; `None` for 0 (no limit).
    pub(crate) fn per_second(per_second: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        Some(RateLimit {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate)),
        })
    }

    /// Forgets clients not seen lately, so that many addresses do not grow the table for
    /// good.
    pub(crate) fn forget_idle(&self) {
        self.limiter.retain_recent();
    }
}

/// Answers 429 to a client over its rate.
pub(crate) async fn limit_rate(
    State(state): State<Arc<state::State>>,
    request: Request,
    next: Next,
) -> Response {
    if let (Some(limit), Some(Peer::Remote(addr))) =
        (&state.rate_limit, request.extensions().get::<Peer>())
    {
        if limit.limiter.check_key(&addr.ip()).is_err() {
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many requests from {}: the limit is [admin] rate_limit per second",
                    addr.ip()
                ),
            )
            .retry_after(1)
            .into_response();
        }
    }
    next.run(request).await
}
