//! How calls to a plugin are guarded on the async path: deadline, concurrency, rate and
//! circuit breaking. A host-wide default, overridable per plugin.

use std::time::Duration;

/// The guards around calls to one plugin.
#[derive(Debug, Clone)]
pub struct CallPolicy {
    /// How long a call may take before the caller gets
    /// [`CallError::Timeout`](crate::CallError::Timeout) and the plugin is asked to stop. Waiting for a concurrency
    /// or rate slot counts too. Default 5 s.
    pub timeout: Duration,
    /// How long past its deadline a call may keep running before the plugin is reported stuck.
    /// Default 1 s.
    pub stuck_after: Duration,
    /// At most this many calls in flight at once. Default: no limit.
    pub max_concurrent: Option<usize>,
    /// At most this many calls per period. Default: no limit.
    pub rate: Option<Rate>,
    /// What a call beyond the concurrency or rate limit does. Default: fail with `Busy` /
    /// `RateLimited`.
    pub when_limited: WhenLimited,
    /// Circuit breaking after repeated failures. Default: after 5 consecutive failures, fail
    /// fast for 10 s.
    pub breaker: Option<Breaker>,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            timeout: Duration::from_secs(5),
            stuck_after: Duration::from_secs(1),
            max_concurrent: None,
            rate: None,
            when_limited: WhenLimited::Reject,
            breaker: Some(Breaker::default()),
        }
    }
}

/// A number of calls per period.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Calls allowed...
    pub calls: u32,
    /// ...per this long (a token bucket: the allowance refills continuously).
    pub per: Duration,
}

/// What a call beyond a limit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenLimited {
    /// Fail at once with a clear error.
    Reject,
    /// Wait for room, within the call's deadline.
    Wait,
}

/// When a plugin's circuit opens and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Breaker {
    /// Consecutive failures (errors, panics, timeouts) that open the circuit.
    pub failures: u32,
    /// How long calls fail fast before one is let through to try again.
    pub cool_down: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failures: 5,
            cool_down: Duration::from_secs(10),
        }
    }
}
