//! The deadline: the caller gets [`CallError::Timeout`] at the deadline, not when the plugin
//! finally returns; the plugin's cancellation flag is set; a plugin still running
//! `stuck_after` later is reported stuck, and its call is followed until it does return (it
//! keeps its concurrency slot until then, so stuck calls cannot pile up).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn, Instrument};

use super::metrics::PluginMetrics;
use super::{CallFuture, CallLayer, Next, PluginCall};
use crate::error::CallError;

/// Adds the deadline to a service.
#[derive(Clone)]
pub struct DeadlineLayer {
    plugin: Arc<str>,
    timeout: Duration,
    stuck_after: Duration,
    metrics: Arc<PluginMetrics>,
}

impl DeadlineLayer {
    /// Calls to `plugin` get `timeout` (for the error message) and are reported stuck
    /// `stuck_after` past their deadline.
    pub fn new(
        plugin: Arc<str>,
        timeout: Duration,
        stuck_after: Duration,
        metrics: Arc<PluginMetrics>,
    ) -> Self {
        DeadlineLayer {
            plugin,
            timeout,
            stuck_after,
            metrics,
        }
    }
}

impl CallLayer for DeadlineLayer {
    fn call<S: Next>(&self, inner: &mut S, call: PluginCall) -> CallFuture {
        let deadline = call.deadline;
        let cancel = call.cancel.clone();
        let started = call.started.clone();
        let mut answer = inner.call(call);
        let layer = self.clone();
        // A caller that stops waiting (its future dropped) gives up on the call too.
        let abandoned = CancelOnDrop(Some(cancel.clone()));
        Box::pin(async move {
            let _abandoned = abandoned;
            match tokio::time::timeout_at(deadline, &mut answer).await {
                Ok(result) => {
                    _abandoned.disarm();
                    result
                }
                Err(_) => {
                    {
                        let _span = tracing::info_span!("plugin", name = %layer.plugin).entered();
                        warn!(
                            "call to plugin {} timed out after {} ms; asking it to stop",
                            layer.plugin,
                            layer.timeout.as_millis()
                        );
                    }
                    cancel.store(true, Ordering::SeqCst);
                    // A call that never started (it waited for a slot or a thread) just ends
                    // here; see `blocking` for why SeqCst.
                    if started.load(Ordering::SeqCst) {
                        tokio::spawn(follow_late_call(answer, layer.clone()));
                    }
                    Err(CallError::Timeout {
                        plugin: layer.plugin,
                        timeout: layer.timeout,
                    })
                }
            }
        })
    }
}

/// Waits for a call that missed its deadline; reports it stuck if it runs `stuck_after`
/// longer, and says when it finally returns.
async fn follow_late_call(answer: CallFuture, layer: DeadlineLayer) {
    let span = tracing::info_span!("plugin", name = %layer.plugin);
    follow(answer, layer).instrument(span).await
}

async fn follow(mut answer: CallFuture, layer: DeadlineLayer) {
    if tokio::time::timeout(layer.stuck_after, &mut answer)
        .await
        .is_ok()
    {
        return; // stopped in time, as asked
    }
    layer.metrics.stuck_began();
    warn!(
        "plugin {} is stuck: still running {} ms after its deadline despite being cancelled",
        layer.plugin,
        layer.stuck_after.as_millis()
    );
    let late = tokio::time::Instant::now();
    let _ = answer.await;
    layer.metrics.stuck_ended();
    info!(
        "stuck call to plugin {} returned {} ms later",
        layer.plugin,
        (late.elapsed() + layer.stuck_after).as_millis()
    );
}

/// Sets a call's cancellation flag if dropped while armed.
struct CancelOnDrop(Option<std::sync::Arc<std::sync::atomic::AtomicBool>>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = &self.0 {
            cancel.store(true, Ordering::SeqCst);
        }
    }
}
