//! The program's side of subscribing: the options of its handler's queue
//! ([`SubscribeOptions`], a plugin's `plughost.toml` event settings in code) and the handle
//! that keeps it subscribed ([`Subscription`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::subscriber::Subscriber;
use super::Inner;
use crate::config::{PluginSettings, QueuePolicy};

/// An open subscription of the program's: [`Host::subscribe_events`](crate::Host).
/// Dropping it (or [`close`](Self::close)) unsubscribes; events still queued for it are
/// dropped and counted.
pub struct Subscription {
    pub(super) bus: Weak<Inner>,
    pub(super) subscriber: Arc<Subscriber>,
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
    pub(crate) fn of(settings: &PluginSettings) -> Self {
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
