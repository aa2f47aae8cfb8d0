//! The async call path: a plugin call wrapped in tower layers, each one concern.
//!
//! Outermost first: [`metrics`] records every outcome; [`breaker`] fails fast while a plugin's
//! circuit is open; [`deadline`] gives the caller a timeout error at the deadline and asks the
//! plugin to stop; [`limit`] enforces the concurrency and rate limits (inside the deadline, so
//! waiting for a slot is bounded too); [`blocking`] runs the call itself on the [`pool`]'s
//! threads, never on an async worker.
//!
//! tower supplies the `Layer`/`Service` traits and `ServiceBuilder`; the layers are ours:
//! tower's own limits wait in `poll_ready`, outside any deadline, and its rate limit cannot be
//! shared between concurrent callers without a buffer task.

pub mod blocking;
pub mod breaker;
pub mod deadline;
pub mod limit;
pub mod metrics;
pub mod pool;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::time::Instant;

use crate::error::CallError;

/// One call travelling down the layers.
pub struct PluginCall {
    /// The input bytes.
    pub input: Vec<u8>,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// Set when the caller stopped waiting; the plugin sees it as `ctx.is_cancelled()`.
    pub cancel: Arc<AtomicBool>,
    /// Set by [`blocking`] when the plugin starts running the call.
    pub started: Arc<AtomicBool>,
    /// The concurrency slot, once [`limit`] took one. It travels with the call to the thread
    /// that runs it and is released when the plugin returns, even if the caller gave up.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What every layer's future is.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, CallError>> + Send>>;
