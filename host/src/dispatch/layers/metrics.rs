//! Per-plugin metrics: calls, errors, timeouts, panics, rejections, calls in flight, stuck
//! calls, and a latency histogram (HdrHistogram: exact percentiles within 0.1%, fixed memory),
//! from which a snapshot also derives Prometheus-style cumulative buckets, count and sum: a
//! call costs the same whether anyone scrapes or not.

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
    failed: AtomicU64,
    crashed: AtomicU64,
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
            failed: AtomicU64::new(0),
            crashed: AtomicU64::new(0),
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
    /// Median time of the calls that reached the plugin.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// How many calls reached the plugin (those the latencies are of).
    pub latency_count: u64,
    /// Their times added up.
    pub latency_sum: Duration,
    /// For each of [`LATENCY_BOUNDS`](Self::LATENCY_BOUNDS), how many of those calls took at
    /// most that long (cumulative, as Prometheus buckets: never decreasing, and the count for
    /// a bound past every call is `latency_count`). Within the histogram's 0.1% resolution.
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

/// The buckets, count and sum of `latency` (nanoseconds), in one pass over its recorded values.
fn buckets(latency: &Histogram<u64>) -> (Vec<(Duration, u64)>, u64, Duration) {
    let bounds = MetricsSnapshot::LATENCY_BOUNDS;
    let mut counts = vec![0u64; bounds.len()];
    let mut sum: u128 = 0;
    for recorded in latency.iter_recorded() {
        let count = recorded.count_at_value();
        let value = recorded.value_iterated_to();
        // A value stands for its whole bucket of equivalent values: the bucket's lowest decides
        // where it falls (so a call of exactly 1 ms is at most 1 ms), its middle adds to the sum.
        let lowest = latency.lowest_equivalent(value);
        sum += u128::from(latency.median_equivalent(value)) * u128::from(count);
        if let Some(i) = bounds
            .iter()
            .position(|bound| u128::from(lowest) <= bound.as_nanos())
        {
            counts[i] += count;
        }
    }
    let mut running = 0;
    let buckets = bounds
        .iter()
        .zip(counts)
        .map(|(bound, count)| {
            running += count;
            (*bound, running)
        })
        .collect();
    let sum = Duration::from_nanos(u64::try_from(sum).unwrap_or(u64::MAX));
    (buckets, latency.len(), sum)
}

impl PluginMetrics {
    /// The current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let at = |q: f64| Duration::from_nanos(latency.value_at_quantile(q));
        let (latency_buckets, latency_count, latency_sum) = buckets(&latency);
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
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            latency_count,
            latency_sum,
            latency_buckets,
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
        let error = snapshot.latency_sum.abs_diff(expected);
        assert!(
            error < expected / 500,
            "{:?} vs {expected:?}",
            snapshot.latency_sum
        );
    }
}
