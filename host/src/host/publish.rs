//! Events through the [`Host`]: the embedding program publishes its own, subscribes handlers
//! of its own, and reads the bus's counts. Plugins use the same bus through their own exports.

use std::time::Duration;

use super::Host;
use crate::bus::{EventStats, SubscribeOptions, Subscription};
use crate::error::{CallError, PublishError};
use crate::event::Event;

impl Host {
    /// Publishes `event` to every subscriber whose pattern matches its topic, plugins and the
    /// program's own handlers alike, and returns how many it was queued for (0, when nobody
    /// subscribes, is counted but is not an error). Handlers run on the host's threads, never
    /// this one; this waits only when a subscriber's queue is full under policy `block`.
    /// Topics under `plughost.` are the host's own and refused.
    ///
    /// ```no_run
    /// # let host = plughost::Host::new(plughost::HostConfig::default())?;
    /// let event = plughost::Event::json("user.created", &serde_json::json!({"id": 7}))?;
    /// host.publish(event)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn publish(&self, event: Event) -> Result<usize, PublishError> {
        self.shared.events.bus().publish(event)
    }

    /// Runs `handler` on every event whose topic matches one of `patterns` (`user.*`: one
    /// more token; `user.>`: one or more), on a thread of the host's, in publish order per
    /// publisher, through a queue of its own with `options`. `name` names it in statistics
    /// and logs. An error (or a panic) the handler returns is counted and logged; delivery
    /// goes on. Dropping the [`Subscription`] unsubscribes.
    pub fn subscribe_events(
        &self,
        name: &str,
        patterns: &[&str],
        options: SubscribeOptions,
        handler: impl Fn(&Event) -> Result<(), String> + Send + Sync + 'static,
    ) -> Result<Subscription, PublishError> {
        self.shared
            .events
            .bus()
            .subscribe(name, patterns, options, Box::new(handler))
    }

    /// The bus's counts: per topic published, unrouted, delivered, dropped, failed; per
    /// subscriber the same with its queue depth and latency percentiles.
    pub fn event_stats(&self) -> EventStats {
        self.shared.events.bus().stats()
    }

    /// Announces that `plugin`'s circuit in a dispatcher changed state.
    pub(crate) fn circuit_changed(
        &self,
        plugin: &str,
        from: crate::events::CircuitState,
        to: crate::events::CircuitState,
    ) {
        self.shared.emit(crate::events::HostEvent::CircuitChanged {
            plugin: plugin.to_owned(),
            from,
            to,
        });
    }

    /// Announces a failed call of the guarded path as `plughost.call.failed`.
    pub(crate) fn call_failed(&self, plugin: &str, error: &CallError, took: Duration) {
        self.shared
            .events
            .bus()
            .publish_hook(crate::events::call_failed_event(plugin, error, took));
    }
}
