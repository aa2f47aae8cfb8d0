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
//! A [`watchdog`] thread times handlers out and logs drops and failures at most once a second
//! per subscriber. The program subscribes through a [`Subscription`] ([`subscription`]);
//! [`stats`] holds the counts.

#![forbid(unsafe_code)]

mod queue;
pub(crate) mod stats;
mod subscriber;
mod subscription;
mod watchdog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use plugin_api::ffi::RawEvent;
use tracing::warn;

use queue::{Item, Pushed, Queued};
use stats::TopicCounters;
pub use stats::{EventStats, Percentiles, SubscriberStats, TopicStats};
use subscriber::{Handler, Subscriber, Target};
pub use subscription::{SubscribeOptions, Subscription};

use crate::config::{HostConfig, PluginSettings};
use crate::error::PublishError;
use crate::event::topic::{self, HOST_PREFIX};
use crate::event::Event;
use crate::runtime::{Publisher, Slot};

/// How many topics get a cached route and counters of their own; the rest share
/// `(other topics)` and are routed afresh on every publish.
const MAX_TOPICS: usize = 4096;

/// The bus. Cloning it is cheap; the last clone dropped ends its threads.
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

impl Drop for Inner {
    /// A bus dropped without [`Bus::close`] still lets its subscribers' threads end (the
    /// watchdog ends on its own: it holds the bus weakly).
    fn drop(&mut self) {
        let subscribers = self
            .subscribers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        for subscriber in subscribers.drain(..) {
            subscriber.stop_taker();
            subscriber.queue.close();
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
            .spawn(move || watchdog::watch(bus))
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
