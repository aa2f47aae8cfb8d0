//! The async call path: a plugin call wrapped in tower layers, each one concern.
//!
//! Outermost first: [`metrics`] records every outcome; [`breaker`] fails fast while a plugin's
//! circuit is open; [`deadline`] gives the caller a timeout error at the deadline and asks the
//! plugin to stop; [`limit`] enforces the concurrency and rate limits (inside the deadline, so
//! waiting for a slot is bounded too); [`blocking`] runs the call itself on the
//! [`pool`](super::pool)'s threads, never on an async worker.
//!
//! tower supplies the `Layer`/`Service` traits and `ServiceBuilder`; the layers are ours:
//! tower's own limits wait in `poll_ready`, outside any deadline, and its rate limit cannot be
//! shared between concurrent callers without a buffer task.

pub(super) mod blocking;
pub(super) mod breaker;
pub(super) mod deadline;
pub(super) mod limit;
pub(super) mod metrics;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::Service;

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

/// What one layer does to a call, given the rest of the stack. Each layer's settings type
/// implements it; [`Layered`] makes that a tower `Service`, and the type a tower `Layer`.
pub trait CallLayer: Clone + Send + Sync + 'static {
    /// Handles `call`, passing it on to `inner` (or not).
    fn call<S: Next>(&self, inner: &mut S, call: PluginCall) -> CallFuture;
}

/// The rest of the stack, as a layer sees it. Every service in the stack is always ready
/// (limits are taken inside the call, within its deadline), so `poll_ready` is trivial.
pub trait Next:
    Service<PluginCall, Response = Vec<u8>, Error = CallError, Future = CallFuture>
    + Clone
    + Send
    + 'static
{
}

impl<T> Next for T where
    T: Service<PluginCall, Response = Vec<u8>, Error = CallError, Future = CallFuture>
        + Clone
        + Send
        + 'static
{
}

/// A layer `L` in front of the service `S`.
#[derive(Clone)]
pub struct Layered<L, S> {
    layer: L,
    inner: S,
}

impl<L: CallLayer, S: Next> Service<PluginCall> for Layered<L, S> {
    type Response = Vec<u8>;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: PluginCall) -> CallFuture {
        self.layer.call(&mut self.inner, call)
    }
}

/// Makes each layer's settings a tower `Layer` (a blanket impl is not allowed for a foreign
/// trait).
macro_rules! tower_layer {
    ($($layer:ty),*) => {$(
        impl<S> tower::Layer<S> for $layer {
            type Service = Layered<$layer, S>;
            fn layer(&self, inner: S) -> Self::Service {
                Layered { layer: self.clone(), inner }
            }
        }
    )*};
}

tower_layer!(
    metrics::MetricsLayer,
    breaker::BreakerLayer,
    deadline::DeadlineLayer,
    limit::RateLayer,
    limit::ConcurrencyLayer
);
