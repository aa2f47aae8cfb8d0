//! Per-plugin metrics: calls, errors, timeouts, panics, rejections, calls in flight, stuck
//! calls, and a latency histogram (HdrHistogram: exact percentiles within 0.1%, fixed memory).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{CallFuture, CallLayer, Next, PluginCall};
use crate::error::CallError;

/// The counters and histogram of one plugin.
pub struct PluginMetrics {
    calls: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    panics: AtomicU64,
    rejected: AtomicU64,
    in_flight: AtomicI64,
    stuck: AtomicI64,
    /// Nanoseconds, 1 ns to 1 hour, 3 significant digits.
    latency: Mutex<Histogram<u64>>,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        PluginMetrics {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            stuck: AtomicI64::new(0),
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds"),
            ),
        }
    }
}

/// A copy of a plugin's metrics at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricsSnapshot {
    /// Calls made (every outcome).
    pub calls: u64,
    /// Calls that did not succeed, of any kind below.
    pub errors: u64,
    /// Calls that hit their deadline.
    pub timeouts: u64,
    /// Calls in which the plugin panicked.
    pub panics: u64,
    /// Calls refused by a limit or an open circuit, without reaching the plugin.
    pub rejected: u64,
    /// Calls running now.
    pub in_flight: i64,
    /// Calls running past their deadline now (reported stuck).
    pub stuck: i64,
    /// Median time of the calls that reached the plugin.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

impl PluginMetrics {
    /// The current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let at = |q: f64| Duration::from_nanos(latency.value_at_quantile(q));
        MetricsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            stuck: self.stuck.load(Ordering::Relaxed),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
        }
    }

    pub(crate) fn stuck_began(&self) {
        self.stuck.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stuck_ended(&self) {
        self.stuck.fetch_sub(1, Ordering::Relaxed);
    }

    fn record(&self, outcome: &Result<Vec<u8>, CallError>, took: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let reached_plugin = match outcome {
            Ok(_) => true,
            Err(error) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let counter = match error {
                    CallError::Timeout { .. } => Some(&self.timeouts),
                    CallError::Panicked { .. } => Some(&self.panics),
                    CallError::Busy { .. }
                    | CallError::RateLimited { .. }
                    | CallError::CircuitOpen { .. } => Some(&self.rejected),
                    _ => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                matches!(
                    error,
                    CallError::Failed { .. }
                        | CallError::Panicked { .. }
                        | CallError::Crashed { .. }
                )
            }
        };
        if reached_plugin {
            let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
            let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
            latency.saturating_record(nanos);
        }
    }
}

/// What is told of each failed call, with the time it took (the host's
/// `plughost.call.failed` event).
pub(crate) type OnFailure = Arc<dyn Fn(&CallError, Duration) + Send + Sync>;

/// Records every call's outcome and time.
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<PluginMetrics>,
    on_failure: Option<OnFailure>,
}

impl MetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<PluginMetrics>) -> Self {
        MetricsLayer {
            metrics,
            on_failure: None,
        }
    }

    /// Also tells `on_failure` of every failed call.
    pub(crate) fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = Some(on_failure);
        self
    }
}

impl CallLayer for MetricsLayer {
    fn call<S: Next>(&self, inner: &mut S, call: PluginCall) -> CallFuture {
        let metrics = self.metrics.clone();
        let on_failure = self.on_failure.clone();
        let in_flight = InFlight::new(metrics.clone());
        let started = std::time::Instant::now();
        let answer = inner.call(call);
        Box::pin(async move {
            let outcome = answer.await;
            drop(in_flight);
            let took = started.elapsed();
            metrics.record(&outcome, took);
            if let (Err(error), Some(on_failure)) = (&outcome, &on_failure) {
                on_failure(error, took);
            }
            if let Err(CallError::Panicked { plugin, message }) = &outcome {
                let _span = tracing::info_span!("plugin", name = %plugin).entered();
                tracing::warn!("plugin {plugin} panicked: {message}");
            }
            outcome
        })
    }
}

/// Counts a call in flight for as long as it lives, so a call whose caller gave up (its future
/// dropped) is not counted forever.
struct InFlight(Arc<PluginMetrics>);

impl InFlight {
    fn new(metrics: Arc<PluginMetrics>) -> Self {
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(metrics)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
