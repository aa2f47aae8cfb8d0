//! One subscriber: its patterns, its queue, and the thread that takes from the queue and runs
//! its handler. A plugin's subscriber belongs to its name, not to a version: a hot reload
//! leaves the queue where it is, and each event goes to the version in service when it is
//! taken, so none is lost or handled twice.
//!
//! A handler that does not return within its time is counted as timed out; the thread stuck
//! in it is left (code running in this process cannot be stopped) and a new one takes over
//! the queue, so delivery goes on. A subscriber that strands too many threads this way gets no
//! more: its queue fills and its policy drops.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::warn;

use super::queue::{Item, Pace, Queue};
use super::stats::{SubscriberCounters, TopicCounters};
use super::SubscribeOptions;
use crate::error::CallError;
use crate::event::Event;
use crate::runtime::{RunningPlugin, Slot};

/// The most threads one subscriber may leave stuck in its handler.
pub(crate) const MAX_STRANDED: usize = 4;

/// The embedding program's handler.
pub(crate) type Handler = Box<dyn Fn(&Event) -> Result<(), String> + Send + Sync>;

/// Who handles the events.
pub(crate) enum Target {
    /// The plugin in service under a name, whichever version that is.
    Plugin(Arc<Slot>),
    /// The embedding program's own handler.
    App(Handler),
}

pub(crate) struct Subscriber {
    pub(crate) name: Arc<str>,
    pub(crate) target: Target,
    pub(crate) patterns: RwLock<Vec<String>>,
    pub(crate) queue: Queue,
    pub(crate) counters: SubscriberCounters,
    timeout_nanos: AtomicU64,
    /// When the handler running now must be done by (ns since the bus's epoch); 0 when none
    /// runs. Whoever swaps it to 0 first (the taker when the handler returns, the watchdog
    /// when it is late) decides whether the event was handled or timed out.
    pub(crate) busy_until: AtomicU64,
    /// The number of the thread entitled to take from the queue.
    taker: AtomicU64,
    /// Threads left running a late handler (they come back, or not).
    pub(crate) stranded: AtomicUsize,
    /// The topic of the event being handled, for the watchdog to count a timeout against.
    current_topic: Mutex<Option<Arc<TopicCounters>>>,
    /// Set when no taker runs because too many threads were stranded.
    pub(crate) exhausted: AtomicBool,
    /// When a failure was last logged (ms since the epoch), to log at most one per second.
    last_failure_log: AtomicU64,
    pub(crate) failures_unlogged: AtomicU64,
    epoch: Instant,
}

/// How a delivery went.
enum Delivery {
    Handled,
    Failed(String, bool),
    /// No version in service takes events: the event is dropped for this subscriber.
    NoHandler,
}

impl Subscriber {
    pub(crate) fn new(
        name: Arc<str>,
        target: Target,
        patterns: Vec<String>,
        options: &SubscribeOptions,
        epoch: Instant,
    ) -> Arc<Self> {
        Arc::new(Subscriber {
            name,
            target,
            patterns: RwLock::new(patterns),
            queue: Queue::new(options.capacity, options.policy, options.block),
            counters: SubscriberCounters::default(),
            timeout_nanos: AtomicU64::new(options.timeout.as_nanos() as u64),
            busy_until: AtomicU64::new(0),
            taker: AtomicU64::new(0),
            stranded: AtomicUsize::new(0),
            current_topic: Mutex::new(None),
            exhausted: AtomicBool::new(false),
            last_failure_log: AtomicU64::new(0),
            failures_unlogged: AtomicU64::new(0),
            epoch,
        })
    }

    pub(crate) fn is_plugin(&self) -> bool {
        matches!(self.target, Target::Plugin(_))
    }

    pub(crate) fn patterns(&self) -> Vec<String> {
        self.patterns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn wants(&self, topic: &str) -> bool {
        self.patterns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|p| crate::event::topic::matches(p, topic))
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_nanos.load(Ordering::Relaxed))
    }

    pub(crate) fn configure(&self, options: &SubscribeOptions) {
        self.queue
            .configure(options.capacity, options.policy, options.block);
        self.timeout_nanos
            .store(options.timeout.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn nanos_since_epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Starts a thread that takes from the queue, replacing any other.
    pub(crate) fn start_taker(self: &Arc<Self>) {
        let number = self.taker.fetch_add(1, Ordering::AcqRel) + 1;
        // A replaced taker asleep on the queue must see it is no longer the one.
        self.queue.wake();
        let subscriber = self.clone();
        let spawned = std::thread::Builder::new()
            .name("plughost-events".into())
            .spawn(move || subscriber.take_and_deliver(number));
        if let Err(e) = spawned {
            warn!("events for {}: cannot start a thread: {e}", self.name);
        }
    }

    /// Stops the taker (after the event it is handling, if any).
    pub(crate) fn stop_taker(&self) {
        self.taker.fetch_add(1, Ordering::AcqRel);
        self.queue.wake();
    }

    fn take_and_deliver(&self, number: u64) {
        let mine = || self.taker.load(Ordering::Acquire) == number;
        let mut pace = Pace::default();
        let mut scratch = String::new();
        while let Some(item) = self.queue.take(mine, &mut pace) {
            let started = Instant::now();
            let timeout = self.timeout();
            // The version in service now takes this event: the queue outlives versions.
            let version = match &self.target {
                Target::Plugin(slot) => slot.current(),
                Target::App(_) => None,
            };
            // An isolated handler is timed by its worker's supervisor, which kills and
            // restarts the worker; the watchdog only steps in if that failed.
            let margin = if version.as_ref().is_some_and(|v| v.worker().is_some()) {
                Duration::from_secs(30)
            } else {
                Duration::ZERO
            };
            *self.current_topic.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(item.topic.clone());
            let until = self.nanos_since_epoch(started + timeout + margin).max(1);
            self.busy_until.store(until, Ordering::Release);
            let delivery = self.deliver(version.as_deref(), &item.event, timeout, &mut scratch);
            drop(version);
            let took = started.elapsed();
            // Only this taker's own deadline is cleared: if the watchdog took it, the event
            // was counted as timed out, another taker runs, and this one is done.
            let own =
                self.busy_until
                    .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire);
            if own.is_err() {
                let _ = self
                    .stranded
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                return;
            }
            self.settle(
                &item,
                delivery,
                started.duration_since(item.published),
                took,
            );
            if !mine() {
                return;
            }
        }
    }

    /// The watchdog's side of a timeout: the deadline `until` passed. Whether it was first
    /// (the handler had not returned), counting the event as failed and timed out.
    pub(crate) fn time_out(&self, until: u64) -> bool {
        let late = self
            .busy_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if late {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
            let topic = self
                .current_topic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(topic) = topic {
                topic.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        late
    }

    fn deliver(
        &self,
        version: Option<&RunningPlugin>,
        event: &Event,
        timeout: Duration,
        scratch: &mut String,
    ) -> Delivery {
        match &self.target {
            Target::App(handler) => {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(event))) {
                    Ok(Ok(())) => Delivery::Handled,
                    Ok(Err(message)) => Delivery::Failed(message, false),
                    Err(_) => Delivery::Failed("the handler panicked".into(), false),
                }
            }
            Target::Plugin(_) => {
                let Some(version) = version else {
                    return Delivery::NoHandler;
                };
                match version.on_event(event, timeout, scratch) {
                    None => Delivery::NoHandler,
                    Some(Ok(())) => Delivery::Handled,
                    Some(Err(e)) => {
                        let timed_out = matches!(e, CallError::Timeout { .. });
                        Delivery::Failed(e.to_string(), timed_out)
                    }
                }
            }
        }
    }

    fn settle(&self, item: &Item, delivery: Delivery, waited: Duration, took: Duration) {
        match delivery {
            Delivery::Handled => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                item.topic.delivered.fetch_add(1, Ordering::Relaxed);
                self.counters.record(waited, took);
            }
            Delivery::Failed(message, timed_out) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                if timed_out {
                    self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                item.topic.failed.fetch_add(1, Ordering::Relaxed);
                self.counters.record(waited, took);
                self.failed(item.event.topic(), &message);
            }
            Delivery::NoHandler => {
                self.counters.dropped(1);
                item.topic.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Logs a failure, at most one line per second; the rest are summed up by the watchdog.
    fn failed(&self, topic: &str, message: &str) {
        let now = self.nanos_since_epoch(Instant::now()) / 1_000_000;
        let last = self.last_failure_log.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_failure_log
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                "event handler of {} failed on {topic}: {message}; delivery goes on",
                self.name
            );
        } else {
            self.failures_unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }
}
