//! Per-plugin metrics: calls, errors, timeouts, panics, rejections, calls in flight, stuck
//! calls, and the latency of the calls that reached the plugin ([`latency`]): percentiles
//! within 0.8%, and exact Prometheus-style cumulative buckets, count and sum, in 19 KiB per
//! plugin.
//!
//! Everything is an atomic counter: a call adds to a few of them and never waits, and a
//! snapshot (taken by the admin API for every request that shows metrics) reads them without
//! stopping any call. A call costs the same whether anyone scrapes or not.

mod latency;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use latency::Latency;

use super::{CallFuture, CallLayer, Next, PluginCall};
use crate::error::CallError;

/// The counters of one plugin.
pub struct PluginMetrics {
    calls: AtomicU64,
    errors: AtomicU64,
    failed: AtomicU64,
    crashed: AtomicU64,
    timeouts: AtomicU64,
    panics: AtomicU64,
    rejected: AtomicU64,
    in_flight: AtomicI64,
    stuck: AtomicI64,
    /// Of the calls that reached the plugin.
    latency: Latency,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        PluginMetrics {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            crashed: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            stuck: AtomicI64::new(0),
            latency: Latency::default(),
        }
    }
}

/// A copy of a plugin's metrics at one moment, read without stopping any call: a call that
/// ends meanwhile may be in some of the figures and not yet in others.
///
/// Counts, sums and buckets are exact; the percentiles are within 0.8% of the true value
/// (exact below 128 ns; calls over 73 minutes count as 73 minutes in them).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricsSnapshot {
    /// Calls made (every outcome).
    pub calls: u64,
    /// Calls that did not succeed, of any kind below.
    pub errors: u64,
    /// Calls the plugin returned an error from.
    pub failed: u64,
    /// Calls during which an isolated plugin's worker process crashed.
    pub crashed: u64,
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
    /// Median time of the calls that reached the plugin, within 0.8%.
    pub p50: Duration,
    /// 95th percentile, within 0.8%.
    pub p95: Duration,
    /// 99th percentile, within 0.8%.
    pub p99: Duration,
    /// How many calls reached the plugin (those the latencies are of).
    pub latency_count: u64,
    /// Their times added up (exact).
    pub latency_sum: Duration,
    /// For each of [`LATENCY_BOUNDS`](Self::LATENCY_BOUNDS), how many of those calls took at
    /// most that long (cumulative, as Prometheus buckets: never decreasing, and the count for
    /// a bound past every call is `latency_count`). Exact: a call of exactly 1 ms counts at
    /// 1 ms, one of 1 ms and 1 ns does not.
    pub latency_buckets: Vec<(Duration, u64)>,
}

impl MetricsSnapshot {
    /// The bounds of [`latency_buckets`](Self::latency_buckets): 10 µs to 10 s.
    pub const LATENCY_BOUNDS: &'static [Duration] = &[
        Duration::from_micros(10),
        Duration::from_micros(50),
        Duration::from_micros(100),
        Duration::from_micros(250),
        Duration::from_micros(500),
        Duration::from_millis(1),
        Duration::from_micros(2500),
        Duration::from_millis(5),
        Duration::from_millis(10),
        Duration::from_millis(25),
        Duration::from_millis(50),
        Duration::from_millis(100),
        Duration::from_millis(250),
        Duration::from_millis(500),
        Duration::from_secs(1),
        Duration::from_millis(2500),
        Duration::from_secs(5),
        Duration::from_secs(10),
    ];
}

impl PluginMetrics {
    /// The current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let latency = self.latency.summary();
        MetricsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            crashed: self.crashed.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            stuck: self.stuck.load(Ordering::Relaxed),
            p50: latency.p50,
            p95: latency.p95,
            p99: latency.p99,
            latency_count: latency.count,
            latency_sum: latency.sum,
            latency_buckets: latency.buckets,
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
                    CallError::Failed { .. } => Some(&self.failed),
                    CallError::Crashed { .. } => Some(&self.crashed),
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
            self.latency.record(took);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> CallError {
        CallError::Failed {
            plugin: "p".into(),
            message: "no".into(),
        }
    }

    #[test]
    fn buckets_are_cumulative_and_never_decrease() {
        let metrics = PluginMetrics::default();
        let empty = metrics.snapshot();
        assert_eq!(
            empty.latency_buckets.len(),
            MetricsSnapshot::LATENCY_BOUNDS.len()
        );
        assert!(empty.latency_buckets.iter().all(|(_, n)| *n == 0));
        assert_eq!(
            (empty.latency_count, empty.latency_sum),
            (0, Duration::ZERO)
        );

        for micros in [5, 10, 11, 700, 1000, 1000, 3000, 20_000_000] {
            metrics.record(&Ok(Vec::new()), Duration::from_micros(micros));
        }
        metrics.record(&Err(failed()), Duration::from_millis(2));
        // Refused without reaching the plugin: counted, not timed.
        metrics.record(
            &Err(CallError::Busy {
                plugin: "p".into(),
                limit: 1,
            }),
            Duration::from_millis(1),
        );
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.calls, snapshot.errors), (10, 2));
        assert_eq!(
            (snapshot.failed, snapshot.crashed, snapshot.rejected),
            (1, 0, 1)
        );
        assert_eq!(snapshot.latency_count, 9);
        let count = |bound: Duration| {
            snapshot
                .latency_buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .unwrap()
                .1
        };
        // At or below: 10 µs counts in the 10 µs bucket, 1 ms in the 1 ms one.
        assert_eq!(count(Duration::from_micros(10)), 2);
        assert_eq!(count(Duration::from_micros(50)), 3);
        assert_eq!(count(Duration::from_millis(1)), 6);
        assert_eq!(count(Duration::from_micros(2500)), 7);
        assert_eq!(count(Duration::from_millis(5)), 8);
        // 20 s is past every bound: only in the count.
        assert_eq!(count(Duration::from_secs(10)), 8);
        for pair in snapshot.latency_buckets.windows(2) {
            assert!(pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1, "{pair:?}");
        }
        let expected = Duration::from_micros(5 + 10 + 11 + 700 + 1000 + 1000 + 3000 + 2000)
            + Duration::from_secs(20);
        assert_eq!(snapshot.latency_sum, expected);
    }
}
