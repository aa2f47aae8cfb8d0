//! The latency of a plugin's calls, recorded without a lock: a call adds to three atomic
//! counters, and a snapshot reads them all once without stopping anyone.
//!
//! Two sets of counters, for two questions:
//!
//! - **Percentiles** come from a log-linear histogram (as HdrHistogram's, but of atomics):
//!   below 128 ns one bucket per nanosecond, then each power of two of nanoseconds split in 64
//!   buckets of equal width, up to 2^42 ns (73 minutes). A bucket is at most 1/64 of the
//!   values in it wide and a percentile is reported as its bucket's middle, so it is within
//!   1/128 (0.8%) of the true value. Longer calls count in the last bucket. 2,368 counters:
//!   18.5 KiB per plugin.
//! - **Prometheus buckets**, count and sum are exact: one counter per bound of
//!   [`MetricsSnapshot::LATENCY_BOUNDS`] (and one past the last), and the sum in nanoseconds.
//!
//! The `histogram` crate's `AtomicHistogram` would do the first half, but keeps no sum and no
//! bounds of our choosing; the whole is a hundred lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::MetricsSnapshot;

/// Each power of two is split in 2^SUB_BITS buckets.
const SUB_BITS: u32 = 6;
const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// The longest time told apart from longer ones: 2^42 - 1 ns, 73 minutes.
const MAX_NANOS: u64 = (1 << 42) - 1;
/// One bucket per value below 2 * SUB_BUCKETS, then SUB_BUCKETS per power of two up to
/// MAX_NANOS's.
const BUCKETS: usize = index_of(MAX_NANOS) + 1;

/// The bucket `nanos` falls in. Below 2 * SUB_BUCKETS, `nanos` itself; above, its top
/// SUB_BITS + 1 bits (the leading one and the next SUB_BITS) after the power-of-two groups
/// before it.
const fn index_of(nanos: u64) -> usize {
    let nanos = if nanos > MAX_NANOS { MAX_NANOS } else { nanos };
    let bits = u64::BITS - nanos.leading_zeros();
    let shift = bits.saturating_sub(SUB_BITS + 1);
    // (nanos >> shift) is in [SUB_BUCKETS, 2 * SUB_BUCKETS) once shift > 0.
    (shift as usize) * SUB_BUCKETS + (nanos >> shift) as usize
}

/// The lowest value in bucket `index`, and the bucket's width.
fn bucket_range(index: usize) -> (u64, u64) {
    let shift = (index / SUB_BUCKETS).saturating_sub(1);
    let mantissa = (index - shift * SUB_BUCKETS) as u64;
    (mantissa << shift, 1 << shift)
}

/// The latency counters of one plugin: fixed size, updated by any number of threads at once.
pub(super) struct Latency {
    /// Calls per log-linear bucket (see the module docs), for percentiles.
    histogram: Box<[AtomicU64]>,
    /// Calls per bound: at index `i`, those that took more than bound `i - 1` and at most bound
    /// `i`; at the last index, those longer than every bound. Not cumulative: a call adds to
    /// one counter.
    bounded: Box<[AtomicU64]>,
    /// Every call's nanoseconds added up (wraps after 584 years of calls).
    sum_nanos: AtomicU64,
}

/// What [`Latency::summary`] read.
pub(super) struct Summary {
    pub(super) p50: Duration,
    pub(super) p95: Duration,
    pub(super) p99: Duration,
    pub(super) count: u64,
    pub(super) sum: Duration,
    /// Cumulative, as [`MetricsSnapshot::latency_buckets`].
    pub(super) buckets: Vec<(Duration, u64)>,
}

impl Default for Latency {
    fn default() -> Self {
        let counters = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Latency {
            histogram: counters(BUCKETS),
            bounded: counters(MetricsSnapshot::LATENCY_BOUNDS.len() + 1),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Latency {
    /// Counts one call that took `took`. Wait-free: three atomic additions.
    pub(super) fn record(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.histogram[index_of(nanos)].fetch_add(1, Ordering::Relaxed);
        // The first bound the call took at most (or one past the last).
        let bound = MetricsSnapshot::LATENCY_BOUNDS.partition_point(|bound| *bound < took);
        self.bounded[bound].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Reads every counter once. Calls recorded meanwhile may be in some of the figures and not
    /// in others; the buckets and the count always agree with each other.
    pub(super) fn summary(&self) -> Summary {
        let histogram: Vec<u64> = self
            .histogram
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect();
        let mut count = 0;
        let mut buckets = Vec::with_capacity(MetricsSnapshot::LATENCY_BOUNDS.len());
        for (i, counter) in self.bounded.iter().enumerate() {
            count += counter.load(Ordering::Relaxed);
            if let Some(bound) = MetricsSnapshot::LATENCY_BOUNDS.get(i) {
                buckets.push((*bound, count));
            }
        }
        Summary {
            p50: percentile(&histogram, 500),
            p95: percentile(&histogram, 950),
            p99: percentile(&histogram, 990),
            count,
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)),
            buckets,
        }
    }
}

/// The value `per_mille` thousandths of the calls in `histogram` took at most (nearest rank),
/// as the middle of its bucket; zero if there are none.
fn percentile(histogram: &[u64], per_mille: u64) -> Duration {
    let total: u64 = histogram.iter().sum();
    // ceil(total * per_mille / 1000), in integers so that 95% of 100 calls is the 95th.
    let rank = (u128::from(total) * u128::from(per_mille)).div_ceil(1000);
    let rank = u64::try_from(rank).unwrap_or(u64::MAX).max(1);
    let mut seen = 0;
    for (index, count) in histogram.iter().enumerate() {
        seen += count;
        if seen >= rank {
            let (lowest, width) = bucket_range(index);
            return Duration::from_nanos(lowest + width / 2);
        }
    }
    Duration::ZERO
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut next = 0;
        for index in 0..BUCKETS {
            let (lowest, width) = bucket_range(index);
            assert_eq!(lowest, next, "bucket {index}");
            assert_eq!(index_of(lowest), index);
            assert_eq!(index_of(lowest + width - 1), index);
            // No wider than 1/64 of its values (exact below 128 ns).
            assert!(
                width == 1 || width * SUB_BUCKETS as u64 <= lowest,
                "bucket {index}"
            );
            next = lowest + width;
        }
        assert_eq!(next, MAX_NANOS + 1);
        assert_eq!(index_of(u64::MAX), BUCKETS - 1);
        // Fixed memory, well under HdrHistogram's 264 KiB for the same range.
        let latency = Latency::default();
        assert_eq!(std::mem::size_of_val(&*latency.histogram), 18_944);
    }

    /// A small deterministic generator (xorshift), so a failure can be reproduced.
    fn random(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn percentiles_are_within_0_8_percent_of_the_sorted_values() {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        // Spread over many orders of magnitude: 1 ns to about 70 minutes, log-uniform.
        let shapes: [&dyn Fn(&mut u64) -> u64; 3] = [
            &|s| 1 + random(s) % 100,
            &|s| 1_000 + random(s) % 5_000_000,
            &|s| (random(s) % (1 << 42)) >> (random(s) % 42),
        ];
        for shape in shapes {
            for n in [1, 2, 7, 100, 1_001, 20_000] {
                let latency = Latency::default();
                let mut values: Vec<u64> = (0..n).map(|_| shape(&mut state)).collect();
                for value in &values {
                    latency.record(Duration::from_nanos(*value));
                }
                values.sort_unstable();
                let summary = latency.summary();
                for (per_mille, got) in [
                    (500u64, summary.p50),
                    (950, summary.p95),
                    (990, summary.p99),
                ] {
                    let rank = (n * per_mille).div_ceil(1000).max(1);
                    let want = values[rank as usize - 1];
                    let got = u64::try_from(got.as_nanos()).unwrap();
                    assert!(
                        got.abs_diff(want) * 128 <= want,
                        "p{per_mille}‰ of {n}: {got} ns, sorted says {want} ns"
                    );
                }
                assert_eq!(summary.count, n);
                assert_eq!(summary.sum, Duration::from_nanos(values.iter().sum()));
            }
        }
    }

    #[test]
    fn no_calls_read_as_zero() {
        let summary = Latency::default().summary();
        assert_eq!(
            (summary.p50, summary.p99, summary.count, summary.sum),
            (Duration::ZERO, Duration::ZERO, 0, Duration::ZERO)
        );
        assert!(summary.buckets.iter().all(|(_, n)| *n == 0));
    }

    #[test]
    fn buckets_count_calls_at_most_each_bound_exactly() {
        let latency = Latency::default();
        let ns = Duration::from_nanos;
        // Just under, at and just over a bound are told apart, past the histogram's resolution.
        for took in [
            ns(9_999),
            ns(10_000),
            ns(10_001),
            ns(999_999),
            ns(1_000_000),
        ] {
            latency.record(took);
        }
        latency.record(Duration::from_secs(7200));
        let summary = latency.summary();
        let at = |bound: Duration| summary.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(Duration::from_micros(10)), 2);
        assert_eq!(at(Duration::from_micros(50)), 3);
        assert_eq!(at(Duration::from_millis(1)), 5);
        assert_eq!(at(Duration::from_secs(10)), 5);
        assert_eq!(summary.count, 6);
        for pair in summary.buckets.windows(2) {
            assert!(pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1, "{pair:?}");
        }
    }

    #[test]
    fn concurrent_recording_loses_no_call_and_snapshots_never_go_back() {
        const THREADS: u64 = 4;
        const CALLS: u64 = 50_000;
        let latency = Arc::new(Latency::default());
        let recorders: Vec<_> = (0..THREADS)
            .map(|thread| {
                let latency = latency.clone();
                std::thread::spawn(move || {
                    for call in 0..CALLS {
                        // 1 ns to about 1 s: many buckets and bounds, shared between threads.
                        latency
                            .record(Duration::from_nanos(1 + (call * 7919 + thread) % (1 << 30)));
                    }
                })
            })
            .collect();
        let mut last = latency.summary();
        while recorders.iter().any(|r| !r.is_finished()) {
            let now = latency.summary();
            assert!(now.count >= last.count && now.sum >= last.sum);
            for (before, after) in last.buckets.iter().zip(&now.buckets) {
                assert!(after.1 >= before.1, "{before:?} then {after:?}");
            }
            last = now;
        }
        for recorder in recorders {
            recorder.join().unwrap();
        }
        let summary = latency.summary();
        assert_eq!(summary.count, THREADS * CALLS);
        let histogram_total: u64 = latency
            .histogram
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        assert_eq!(histogram_total, THREADS * CALLS);
        let sum: u64 = (0..THREADS)
            .flat_map(|thread| (0..CALLS).map(move |call| 1 + (call * 7919 + thread) % (1 << 30)))
            .sum();
        assert_eq!(summary.sum, Duration::from_nanos(sum));
    }
}
