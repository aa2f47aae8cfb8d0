//! What the bus counts, per topic and per subscriber, and the snapshot of it the `Host` API
//! returns ([`EventStats`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::config::QueuePolicy;

/// Counters of one topic, shared by every queued copy of its events. What publishers count and
/// what subscribers' threads count sit on cache lines of their own, so the two sides do not
/// take the line from each other on every event.
#[derive(Default)]
pub(crate) struct TopicCounters {
    pub(crate) published: Padded<AtomicU64>,
    pub(crate) unrouted: AtomicU64,
    pub(crate) delivered: Padded<AtomicU64>,
    pub(crate) dropped: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// A value alone on its cache line (128 bytes: adjacent lines are fetched in pairs).
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Counters of one subscriber.
pub(crate) struct SubscriberCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    /// Drops not yet logged: the watchdog logs them once per interval.
    pub(crate) dropped_unlogged: AtomicU64,
    /// From publish to the handler's start, and the handler's own time, in nanoseconds.
    latency: Mutex<(Histogram<u64>, Histogram<u64>)>,
}

impl Default for SubscriberCounters {
    fn default() -> Self {
        let histogram = || Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("bounds");
        SubscriberCounters {
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            dropped_unlogged: AtomicU64::new(0),
            latency: Mutex::new((histogram(), histogram())),
        }
    }
}

impl SubscriberCounters {
    pub(crate) fn record(&self, waited: Duration, handler: Duration) {
        let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        latency.0.saturating_record(waited.as_nanos().max(1) as u64);
        latency
            .1
            .saturating_record(handler.as_nanos().max(1) as u64);
    }

    pub(crate) fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.dropped_unlogged.fetch_add(n, Ordering::Relaxed);
    }

    fn percentiles(&self) -> (Percentiles, Percentiles) {
        let latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        (Percentiles::of(&latency.0), Percentiles::of(&latency.1))
    }
}

/// The bus's counts: [`Host::event_stats`](crate::Host::event_stats).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EventStats {
    /// Per topic published, in the order first seen.
    pub topics: Vec<TopicStats>,
    /// Per subscriber, plugins and the program's own.
    pub subscribers: Vec<SubscriberStats>,
}

/// One topic's counts.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TopicStats {
    /// The topic (`(other topics)` for those past the number the bus keeps apart).
    pub topic: String,
    /// Events published.
    pub published: u64,
    /// Published while nobody subscribed: counted, not an error.
    pub unrouted: u64,
    /// Handled by a subscriber (one per subscriber that handled it).
    pub delivered: u64,
    /// Dropped for a subscriber: its queue full, or it left service.
    pub dropped: u64,
    /// A subscriber's handler returned an error, panicked or timed out.
    pub failed: u64,
}

/// One subscriber's counts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// The plugin's name, or the name the program subscribed under.
    pub name: String,
    /// Whether it is a plugin (rather than the program's own handler).
    pub plugin: bool,
    /// Its patterns.
    pub patterns: Vec<String>,
    /// Events its handler took without error.
    pub delivered: u64,
    /// Events dropped for it.
    pub dropped: u64,
    /// Events its handler failed on (errors, panics, timeouts).
    pub failed: u64,
    /// Of `failed`, those its handler did not finish within `event_timeout`.
    pub timed_out: u64,
    /// Events waiting now.
    pub queue_depth: usize,
    /// Its queue's capacity.
    pub capacity: usize,
    /// Its full-queue policy.
    pub policy: QueuePolicy,
    /// From publish to its handler starting.
    pub latency: Percentiles,
    /// Its handler's own time.
    pub handler: Percentiles,
}

/// Percentiles of a duration, since the subscriber appeared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Percentiles {
    /// How many were measured.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let at = |q: f64| Duration::from_nanos(histogram.value_at_quantile(q));
        Percentiles {
            count: histogram.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: Duration::from_nanos(histogram.max()),
        }
    }
}

impl TopicCounters {
    pub(crate) fn snapshot(&self, topic: &str) -> TopicStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TopicStats {
            topic: topic.to_owned(),
            published: get(&self.published),
            unrouted: get(&self.unrouted),
            delivered: get(&self.delivered),
            dropped: get(&self.dropped),
            failed: get(&self.failed),
        }
    }
}

/// Builds a subscriber's snapshot from its parts.
pub(crate) fn subscriber_stats(
    name: &str,
    plugin: bool,
    patterns: Vec<String>,
    counters: &SubscriberCounters,
    queue: (usize, usize, QueuePolicy),
) -> SubscriberStats {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (latency, handler) = counters.percentiles();
    SubscriberStats {
        name: name.to_owned(),
        plugin,
        patterns,
        delivered: get(&counters.delivered),
        dropped: get(&counters.dropped),
        failed: get(&counters.failed),
        timed_out: get(&counters.timed_out),
        queue_depth: queue.0,
        capacity: queue.1,
        policy: queue.2,
        latency,
        handler,
    }
}
