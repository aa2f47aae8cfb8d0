//! The event bus: one publish/subscribe system for plugins that publish, plugins that
//! subscribe, event-source plugins, the embedding program, and the host's own lifecycle
//! (`crate::events`).
//!
//! The data path, top to bottom: an [`Event`] is published ([`Bus::publish`], a plugin's
//! `ctx.emit` through [`Publisher`], a host hook); its topic is checked and routed to the
//! subscribers whose patterns match it (the route is cached per topic); a copy of the shared
//! event is put in each subscriber's own bounded [`queue`], under that subscriber's full-queue
//! policy; the [`subscriber`]'s thread takes it and runs the handler of the plugin version in
//! service. Nothing runs on the publisher's thread but the checks and the queueing.
//!
//! A watchdog thread times handlers out and logs drops and failures at most once a second per
//! subscriber.

#![forbid(unsafe_code)]

mod queue;
pub(crate) mod stats;
mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use plugin_api::ffi::RawEvent;
use tracing::{error, warn};

use queue::{Item, Pushed, Queued};
use stats::TopicCounters;
pub use stats::{EventStats, Percentiles, SubscriberStats, TopicStats};
use subscriber::{Handler, Subscriber, Target, MAX_STRANDED};

use crate::config::{HostConfig, PluginSettings, QueuePolicy};
use crate::error::PublishError;
use crate::event::topic::{self, HOST_PREFIX};
use crate::event::Event;
use crate::runtime::{Publisher, Slot};

/// How many topics get a cached route and counters of their own; the rest share
/// `(other topics)` and are routed afresh on every publish.
const MAX_TOPICS: usize = 4096;

/// The bus. Cloning it is cheap; the last clone dropped stops its threads.
#[derive(Clone)]
pub(crate) struct Bus {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    subscribers: RwLock<Vec<Arc<Subscriber>>>,
    /// Routes by topic, dropped whenever a subscription changes.
    routes: RwLock<Routes>,
    /// Bumped (under the routes' write lock) whenever a subscription changes: a route built
    /// from the subscribers of an older generation is not cached.
    routes_generation: AtomicU64,
    /// Counters by topic, kept across route changes, in the order first seen.
    topics: Mutex<Vec<(Arc<str>, Arc<TopicCounters>)>>,
    topic_index: Mutex<HashMap<Arc<str>, usize>>,
    other_topics: Arc<TopicCounters>,
    max_event_size: AtomicUsize,
    watchdog: Mutex<Option<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
    epoch: Instant,
}

/// Routes by topic, hashed with xxh3 (publishing hashes the topic every time).
type Routes = HashMap<Arc<str>, Arc<Route>, xxhash_rust::xxh3::Xxh3Builder>;

/// Where the events of one topic go.
struct Route {
    topic: Arc<str>,
    counters: Arc<TopicCounters>,
    subscribers: Vec<Arc<Subscriber>>,
}

/// An open subscription of the program's: [`Host::subscribe_events`](crate::Host).
/// Dropping it (or [`close`](Self::close)) unsubscribes; events still queued for it are
/// dropped and counted.
pub struct Subscription {
    bus: Weak<Inner>,
    subscriber: Arc<Subscriber>,
}

impl Subscription {
    /// Its name, as the statistics show it.
    pub fn name(&self) -> &str {
        &self.subscriber.name
    }

    /// Events waiting for the handler now.
    pub fn queue_depth(&self) -> usize {
        self.subscriber.queue.len()
    }

    /// Unsubscribes.
    pub fn close(self) {}
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.remove(&self.subscriber, "unsubscribed");
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.subscriber.name)
            .field("patterns", &self.subscriber.patterns())
            .finish()
    }
}

/// How the program's handler is subscribed: its queue and time limit, as a plugin's
/// `plughost.toml` settings say them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// How many events may wait. Default 1024.
    pub capacity: usize,
    /// What a publisher meets when the queue is full. Default `block`.
    pub policy: QueuePolicy,
    /// How long `block` waits. Default 1 s.
    pub block: Duration,
    /// How long the handler may take per event. Default 5 s.
    pub timeout: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions::of(&PluginSettings::default())
    }
}

impl SubscribeOptions {
    /// A plugin's event settings from its `plughost.toml` table.
    fn of(settings: &PluginSettings) -> Self {
        SubscribeOptions {
            // A queue of none would drop everything: plughost.toml refuses 0, and settings
            // built in code get one.
            capacity: settings.event_queue.max(1),
            policy: settings.event_policy,
            block: settings.event_block,
            timeout: settings.event_timeout,
        }
    }

    /// With queue capacity `capacity`.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }
    /// With full-queue policy `policy`.
    pub fn policy(mut self, policy: QueuePolicy) -> Self {
        self.policy = policy;
        self
    }
    /// With `block` waiting at most `block`.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }
    /// With handler time limit `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new(crate::config::HostSettings::default().max_event_size.0 as usize)
    }
}

impl Bus {
    pub(crate) fn new(max_event_size: usize) -> Self {
        Bus {
            inner: Arc::new(Inner {
                subscribers: RwLock::default(),
                routes: RwLock::default(),
                routes_generation: AtomicU64::new(0),
                topics: Mutex::default(),
                topic_index: Mutex::default(),
                other_topics: Arc::default(),
                max_event_size: AtomicUsize::new(max_event_size),
                watchdog: Mutex::default(),
                closed: AtomicBool::new(false),
                epoch: Instant::now(),
            }),
        }
    }

    /// What plugins publish through.
    pub(crate) fn publisher(&self) -> Weak<dyn Publisher> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        weak
    }

    /// Publishes an event of the program's (or `plughost emit`'s): any topic but the host's
    /// own. Returns how many subscribers it was queued for.
    pub(crate) fn publish(&self, event: Event) -> Result<usize, PublishError> {
        if event.topic().starts_with(HOST_PREFIX) {
            return Err(PublishError::Reserved {
                topic: event.topic().to_owned(),
            });
        }
        self.inner.publish(event, true)
    }

    /// Publishes one of the host's own events; never waits for room.
    pub(crate) fn publish_hook(&self, event: Event) {
        let _ = self.inner.publish(event, false);
    }

    /// Subscribes plugin `slot` with `patterns`, or, if it is subscribed already (a reload),
    /// updates its patterns and settings and keeps its queue.
    pub(crate) fn attach(&self, slot: &Arc<Slot>, patterns: &[String], settings: &PluginSettings) {
        let existing = self.inner.plugin_subscriber(slot.name());
        if patterns.is_empty() {
            if existing.is_some() {
                self.detach(slot.name(), "its new version subscribes to nothing");
            }
            return;
        }
        if let Some(subscriber) = existing {
            let changed = subscriber.patterns() != patterns;
            if changed {
                *subscriber
                    .patterns
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = patterns.to_vec();
                self.inner.routes_changed();
                // The new version receives only what it subscribes to.
                let left = subscriber
                    .queue
                    .retain(|item| subscriber.wants(item.event.topic()));
                dropped(
                    &subscriber,
                    &left,
                    "its new version does not subscribe to them",
                );
            }
            configure(&subscriber, settings);
            // A new version gets a new thread, even if the old one's handler used them all.
            if subscriber.exhausted.swap(false, Ordering::AcqRel) {
                subscriber.stranded.store(0, Ordering::Release);
                subscriber.start_taker();
            }
            return;
        }
        let subscriber = Subscriber::new(
            slot.shared_name().clone(),
            Target::Plugin(slot.clone()),
            patterns.to_vec(),
            &SubscribeOptions::of(settings),
            self.inner.epoch,
        );
        self.inner.add(subscriber);
    }

    /// Unsubscribes plugin `name` (it left service): what was still queued is dropped,
    /// counted, and said in one line with `why`.
    pub(crate) fn detach(&self, name: &str, why: &str) {
        if let Some(subscriber) = self.inner.plugin_subscriber(name) {
            self.inner.remove(&subscriber, why);
        }
    }

    /// Subscribes the program's `handler` to `patterns` under `name`.
    pub(crate) fn subscribe(
        &self,
        name: &str,
        patterns: &[&str],
        options: SubscribeOptions,
        handler: Handler,
    ) -> Result<Subscription, PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed {
                topic: patterns.join(", "),
            });
        }
        for pattern in patterns {
            topic::check_pattern(pattern).map_err(|reason| PublishError::BadTopic {
                topic: (*pattern).to_owned(),
                reason,
            })?;
        }
        let options = SubscribeOptions {
            capacity: options.capacity.max(1),
            ..options
        };
        let subscriber = Subscriber::new(
            Arc::from(name),
            Target::App(handler),
            patterns.iter().map(|p| (*p).to_owned()).collect(),
            &options,
            self.inner.epoch,
        );
        self.inner.add(subscriber.clone());
        Ok(Subscription {
            bus: Arc::downgrade(&self.inner),
            subscriber,
        })
    }

    /// Applies the settings: the event size limit, and each plugin's queue and timeouts.
    pub(crate) fn configure(&self, config: &HostConfig) {
        self.inner
            .max_event_size
            .store(config.host.max_event_size.0 as usize, Ordering::Relaxed);
        for subscriber in self.inner.subscribers() {
            if subscriber.is_plugin() {
                configure(&subscriber, &config.plugin(&subscriber.name));
            }
        }
    }

    /// The counts, per topic and per subscriber.
    pub(crate) fn stats(&self) -> EventStats {
        let topics = self
            .inner
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(topic, counters)| counters.snapshot(topic))
            .chain(
                Some(self.inner.other_topics.snapshot("(other topics)"))
                    .filter(|t| t.published > 0),
            )
            .collect();
        let subscribers = self
            .inner
            .subscribers()
            .iter()
            .map(|s| {
                let (capacity, policy) = s.queue.settings();
                stats::subscriber_stats(
                    &s.name,
                    s.is_plugin(),
                    s.patterns(),
                    &s.counters,
                    (s.queue.len(), capacity, policy),
                )
            })
            .collect();
        EventStats {
            topics,
            subscribers,
        }
    }

    /// Stops delivering: every queue is closed (what was in them is counted as dropped).
    pub(crate) fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for subscriber in self.inner.subscribers() {
            self.inner.remove(&subscriber, "the host shut down");
        }
        let watchdog = self
            .inner
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(watchdog) = watchdog {
            watchdog.thread().unpark();
            let _ = watchdog.join();
        }
    }
}

fn configure(subscriber: &Subscriber, settings: &PluginSettings) {
    subscriber.configure(&SubscribeOptions::of(settings));
}

impl Inner {
    fn subscribers(&self) -> Vec<Arc<Subscriber>> {
        self.subscribers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn plugin_subscriber(&self, name: &str) -> Option<Arc<Subscriber>> {
        self.subscribers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| s.is_plugin() && &*s.name == name)
            .cloned()
    }

    fn add(self: &Arc<Self>, subscriber: Arc<Subscriber>) {
        subscriber.start_taker();
        self.subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(subscriber);
        self.routes_changed();
        self.start_watchdog();
    }

    fn remove(&self, subscriber: &Arc<Subscriber>, why: &str) {
        self.subscribers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| !Arc::ptr_eq(s, subscriber));
        self.routes_changed();
        subscriber.stop_taker();
        let left = subscriber.queue.close();
        dropped(subscriber, &left, why);
    }

    fn routes_changed(&self) {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        self.routes_generation.fetch_add(1, Ordering::AcqRel);
        routes.clear();
    }

    /// The route of `topic`: cached, or built (checking the topic) and cached.
    fn route(&self, topic: &str) -> Result<Arc<Route>, PublishError> {
        if let Some(route) = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return Ok(route.clone());
        }
        topic::check_topic(topic).map_err(|reason| PublishError::BadTopic {
            topic: topic.to_owned(),
            reason,
        })?;
        let topic: Arc<str> = Arc::from(topic);
        let generation = self.routes_generation.load(Ordering::Acquire);
        let subscribers: Vec<Arc<Subscriber>> = self
            .subscribers()
            .into_iter()
            .filter(|s| s.wants(&topic))
            .collect();
        let counters = self.counters_of(&topic);
        let route = Arc::new(Route {
            topic: topic.clone(),
            counters,
            subscribers,
        });
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        // A subscription that changed meanwhile is not in this route: used once, not kept.
        let current = self.routes_generation.load(Ordering::Acquire) == generation;
        if current && routes.len() < MAX_TOPICS {
            routes.insert(topic, route.clone());
        }
        Ok(route)
    }

    fn counters_of(&self, topic: &Arc<str>) -> Arc<TopicCounters> {
        let mut index = self.topic_index.lock().unwrap_or_else(|e| e.into_inner());
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = index.get(topic) {
            return topics[i].1.clone();
        }
        if topics.len() >= MAX_TOPICS {
            return self.other_topics.clone();
        }
        let counters = Arc::new(TopicCounters::default());
        index.insert(topic.clone(), topics.len());
        topics.push((topic.clone(), counters.clone()));
        counters
    }

    /// Checks, routes and queues `event`.
    fn publish(&self, event: Event, may_block: bool) -> Result<usize, PublishError> {
        self.check(event.topic(), event.size())?;
        check_extensions(event.topic(), event.extensions())?;
        let route = self.route(event.topic())?;
        self.queue(&route, event, may_block, &|| false)
    }

    /// What every publish must pass before its event is built: the host open, the size.
    fn check(&self, topic: &str, size: usize) -> Result<(), PublishError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed {
                topic: topic.to_owned(),
            });
        }
        let max = self.max_event_size.load(Ordering::Relaxed);
        if size > max {
            return Err(PublishError::TooLarge {
                topic: topic.to_owned(),
                size,
                max,
            });
        }
        Ok(())
    }

    /// Puts `event` in the queue of every subscriber of `route`. Returns how many it was
    /// queued for; an error if a `block` subscriber's queue stayed full.
    /// `cancelled`: whether a publisher waiting for room is being stopped.
    fn queue(
        &self,
        route: &Route,
        event: Event,
        may_block: bool,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<usize, PublishError> {
        route.counters.published.fetch_add(1, Ordering::Relaxed);
        if route.subscribers.is_empty() {
            route.counters.unrouted.fetch_add(1, Ordering::Relaxed);
            return Ok(0);
        }
        let item: Item = Arc::new(Queued {
            event,
            topic: route.counters.clone(),
            published: Instant::now(),
        });
        let mut queued = 0;
        let mut refused = None;
        for subscriber in &route.subscribers {
            let dropped_oldest = |old: Item| {
                old.topic.dropped.fetch_add(1, Ordering::Relaxed);
            };
            match subscriber
                .queue
                .push(&item, may_block, cancelled, dropped_oldest)
            {
                Pushed::Queued => queued += 1,
                Pushed::DroppedOldest => {
                    queued += 1;
                    subscriber.counters.dropped(1);
                }
                Pushed::DroppedNewest { waited } => {
                    subscriber.counters.dropped(1);
                    route.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(waited) = waited {
                        refused.get_or_insert(PublishError::Dropped {
                            topic: route.topic.to_string(),
                            subscriber: subscriber.name.to_string(),
                            waited,
                        });
                    }
                }
                Pushed::Cancelled => {
                    subscriber.counters.dropped(1);
                    route.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    refused.get_or_insert(PublishError::Stopping {
                        topic: route.topic.to_string(),
                        subscriber: subscriber.name.to_string(),
                    });
                }
                Pushed::Closed => {}
            }
        }
        match refused {
            Some(error) => Err(error),
            None => Ok(queued),
        }
    }

    fn start_watchdog(self: &Arc<Self>) {
        let mut watchdog = self.watchdog.lock().unwrap_or_else(|e| e.into_inner());
        if watchdog.is_some() || self.closed.load(Ordering::Acquire) {
            return;
        }
        let bus = Arc::downgrade(self);
        *watchdog = std::thread::Builder::new()
            .name("plughost-events-watch".into())
            .spawn(move || watch(bus))
            .map_err(|e| warn!("events: cannot start the watchdog thread: {e}"))
            .ok();
    }
}

/// Refuses extension attributes CloudEvents would not accept, or that would take the place of
/// a core attribute in the event's JSON form.
fn check_extensions<'a>(
    topic: &str,
    extensions: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), PublishError> {
    for (name, _) in extensions {
        crate::event::check_extension_name(name).map_err(|reason| PublishError::BadTopic {
            topic: topic.to_owned(),
            reason,
        })?;
    }
    Ok(())
}

/// Counts `left`, taken out of `subscriber`'s queue, as dropped, and says so with `why` (here,
/// not in the watchdog's summary of full queues).
fn dropped(subscriber: &Subscriber, left: &[Item], why: &str) {
    if left.is_empty() {
        return;
    }
    for item in left {
        item.topic.dropped.fetch_add(1, Ordering::Relaxed);
    }
    subscriber
        .counters
        .dropped
        .fetch_add(left.len() as u64, Ordering::Relaxed);
    warn!(
        "{} events queued for {} were dropped: {why}",
        left.len(),
        subscriber.name
    );
}

/// Times handlers out, and logs drops and failures once per interval.
fn watch(bus: Weak<Inner>) {
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

impl Publisher for Inner {
    fn publish_for(
        &self,
        plugin: &Arc<str>,
        emits: &[String],
        raw: &RawEvent<'_>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), PublishError> {
        let topic = raw.topic.as_str();
        // Checked at load too; again here, since a worker's report of its plugin's
        // declarations comes from the worker.
        if topic.starts_with(HOST_PREFIX) {
            return Err(PublishError::Reserved {
                topic: topic.to_owned(),
            });
        }
        if !emits.iter().any(|t| t == topic) {
            return Err(PublishError::NotDeclared {
                plugin: plugin.to_string(),
                topic: topic.to_owned(),
                declared: emits.to_vec(),
            });
        }
        let size = raw.data.len()
            + topic.len()
            + plugin.len()
            + raw.datacontenttype.len()
            + raw
                .extensions
                .iter()
                .map(|e| e.name.len() + e.value.len())
                .sum::<usize>();
        self.check(topic, size)?;
        check_extensions(
            topic,
            raw.extensions
                .iter()
                .map(|e| (e.name.as_str(), e.value.as_str())),
        )?;
        let route = self.route(topic)?;
        let extensions = raw
            .extensions
            .iter()
            .map(|e| (e.name.as_str().to_owned(), e.value.as_str().to_owned()))
            .collect();
        let event = Event::published_by(
            plugin.clone(),
            route.topic.clone(),
            raw.datacontenttype.as_str(),
            raw.data.as_slice(),
            extensions,
        );
        self.queue(&route, event, true, cancelled).map(drop)
    }
}
