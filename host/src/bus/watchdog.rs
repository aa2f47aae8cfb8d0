//! The bus's watchdog: one thread that times handlers out (a late one is counted, and a new
//! thread takes over its queue) and logs each subscriber's drops and failures at most once a
//! second.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::subscriber::{Subscriber, MAX_STRANDED};
use super::Inner;

/// Times handlers out, and logs drops and failures once per interval.
pub(super) fn watch(bus: Weak<Inner>) {
    let mut last_summary = Instant::now();
    loop {
        let tick = {
            let Some(bus) = bus.upgrade() else { return };
            if bus.closed.load(Ordering::Acquire) {
                return;
            }
            let subscribers = bus.subscribers();
            let now = Instant::now();
            for subscriber in &subscribers {
                let until = subscriber.busy_until.load(Ordering::Acquire);
                let late = until != 0 && until < subscriber.nanos_since_epoch(now);
                if late && subscriber.time_out(until) {
                    timed_out(subscriber);
                }
            }
            if last_summary.elapsed() >= Duration::from_secs(1) {
                let interval = last_summary.elapsed();
                last_summary = Instant::now();
                for subscriber in &subscribers {
                    summarize(subscriber, interval);
                }
            }
            // A quarter of the shortest handler time limit: a late handler is noticed
            // within 25% of its limit.
            subscribers
                .iter()
                .map(|s| s.timeout() / 4)
                .min()
                .unwrap_or(Duration::from_millis(250))
                .clamp(Duration::from_millis(2), Duration::from_millis(250))
        };
        std::thread::park_timeout(tick);
    }
}

/// A handler ran past its time (counted already): a new thread takes over the queue, unless
/// too many are stranded in late handlers at once.
fn timed_out(subscriber: &Arc<Subscriber>) {
    let stranded = subscriber.stranded.fetch_add(1, Ordering::AcqRel) + 1;
    if stranded > MAX_STRANDED {
        error!(
            "event handler of {} did not return within {}, and {} earlier threads are still \
             in it: no more threads are given to it; its events are dropped as its queue \
             fills (reload or disable it)",
            subscriber.name,
            humantime::format_duration(subscriber.timeout()),
            stranded - 1
        );
        subscriber.exhausted.store(true, Ordering::Release);
        subscriber.stop_taker();
        return;
    }
    warn!(
        "event handler of {} did not return within {}: counted as timed out; its thread \
         is left to finish, and a new one delivers its next events",
        subscriber.name,
        humantime::format_duration(subscriber.timeout())
    );
    subscriber.start_taker();
}

fn summarize(subscriber: &Subscriber, interval: Duration) {
    let dropped = subscriber
        .counters
        .dropped_unlogged
        .swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let (capacity, policy) = subscriber.queue.settings();
        warn!(
            "{dropped} events dropped for {} in the last {:.1} s: its queue ({capacity}) was \
             full (policy {})",
            subscriber.name,
            interval.as_secs_f64(),
            policy.as_str()
        );
    }
    let failures = subscriber.failures_unlogged.swap(0, Ordering::Relaxed);
    if failures > 0 {
        warn!(
            "event handler of {} failed {failures} more times in the last {:.1} s",
            subscriber.name,
            interval.as_secs_f64()
        );
    }
}
