//! What happens to plugins, as events an embedding program (or a test) can wait for instead of
//! sleeping: [`Host::subscribe`](crate::Host::subscribe). Each is also published on the event
//! bus under the reserved prefix `plughost.`, where plugins subscribe to them like to any topic.
//! Their data is JSON; their source is `plughost`:
//!
//! - `plughost.plugin.loaded`, `.reloaded`, `.refused`, `.unloaded`: a plugin's life;
//! - `plughost.config.applied`, `.refused`: the settings;
//! - `plughost.circuit.changed`: a plugin's circuit in a [`Dispatcher`](crate::Dispatcher)
//!   opened, half-opened or closed (`{"plugin", "from", "to"}`, states `closed`, `open`,
//!   `half_open`);
//! - `plughost.call.failed`: a call through the guarded path failed (bus only).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::json;

use crate::bus::Bus;
use crate::error::CallError;
use crate::event::Event;
use crate::loader::residency::UnloadStatus;

/// One thing that happened to a plugin.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HostEvent {
    /// A plugin started.
    Loaded {
        /// Its name.
        name: String,
        /// Its version.
        version: semver::Version,
        /// The file it came from.
        file: PathBuf,
    },
    /// A new version replaced a running one, and the old one was retired.
    Reloaded {
        /// The plugin's name.
        name: String,
        /// The version that was running.
        from: semver::Version,
        /// The version now running.
        to: semver::Version,
        /// The file.
        file: PathBuf,
        /// From noticing the file to the new version serving calls.
        took: Duration,
        /// Whether the old version handed its state over.
        state_handed_over: bool,
        /// What became of the old version's library.
        old: UnloadStatus,
    },
    /// A file was refused. If a version of the plugin was running, it keeps serving.
    Refused {
        /// The file.
        file: PathBuf,
        /// Why, in one line naming the file.
        reason: String,
        /// The plugin and version that keep serving, if any.
        kept: Option<(String, semver::Version)>,
    },
    /// A plugin was taken out of service (its file deleted, or the host shut down).
    Unloaded {
        /// Its name.
        name: String,
        /// Its version.
        version: semver::Version,
        /// The file it came from.
        file: PathBuf,
        /// What became of its library.
        status: UnloadStatus,
    },
    /// A new `plughost.toml` (or enable / disable) was applied.
    ConfigApplied {
        /// The file, if the change came from one.
        file: Option<PathBuf>,
        /// The plugins it changed: started, stopped or re-initialised.
        changed: Vec<String>,
    },
    /// An edit of `plughost.toml` was refused; the running configuration stays.
    ConfigRefused {
        /// The file.
        file: PathBuf,
        /// Why, naming the line or the plugin.
        reason: String,
    },
    /// A plugin's circuit breaker in a [`Dispatcher`](crate::Dispatcher) changed state:
    /// opened after failures, half-opened for a trial call, closed again.
    CircuitChanged {
        /// The plugin.
        plugin: String,
        /// The state it left.
        from: CircuitState,
        /// The state it is in now.
        to: CircuitState,
    },
}

/// The state of one plugin's circuit in a [`Dispatcher`](crate::Dispatcher). Serialized as its
/// name ([`as_str`](Self::as_str)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through; this many consecutive failures so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Calls fail fast until `until`.
    Open {
        /// When the next call is let through.
        until: tokio::time::Instant,
        /// The failures that opened it.
        failures: u32,
    },
    /// One trial call is in flight; others fail fast until it has answered.
    HalfOpen,
}

impl CircuitState {
    /// Its name: `closed`, `open`, `half_open`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CircuitState::Closed { .. } => "closed",
            CircuitState::Open { .. } => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

impl std::fmt::Display for CircuitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for CircuitState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The open subscriptions, and the bus the events also go to.
#[derive(Default)]
pub(crate) struct Subscribers {
    senders: Mutex<Vec<Sender<HostEvent>>>,
    bus: Bus,
}

impl Subscribers {
    pub(crate) fn subscribe(&self) -> Receiver<HostEvent> {
        let (sender, receiver) = channel();
        self.lock().push(sender);
        receiver
    }

    /// Sends the event to every subscriber still listening, and publishes it on the bus.
    pub(crate) fn emit(&self, event: HostEvent) {
        self.bus.publish_hook(hook_event(&event));
        self.lock().retain(|s| s.send(event.clone()).is_ok());
    }

    /// The event bus.
    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sender<HostEvent>>> {
        // A list of senders cannot be left inconsistent by a panic.
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn host_source() -> Arc<str> {
    static SOURCE: OnceLock<Arc<str>> = OnceLock::new();
    SOURCE.get_or_init(|| Arc::from("plughost")).clone()
}

fn event(topic: &'static str, data: serde_json::Value) -> Event {
    Event::json(topic, &data)
        .expect("a JSON value serializes")
        .with_source(host_source())
}

/// The bus event of a lifecycle event.
fn hook_event(happened: &HostEvent) -> Event {
    match happened {
        HostEvent::Loaded {
            name,
            version,
            file,
        } => event(
            "plughost.plugin.loaded",
            json!({"plugin": name, "version": version.to_string(), "file": file}),
        ),
        HostEvent::Reloaded {
            name,
            from,
            to,
            file,
            took,
            state_handed_over,
            old,
        } => event(
            "plughost.plugin.reloaded",
            json!({
                "plugin": name,
                "from": from.to_string(),
                "to": to.to_string(),
                "file": file,
                "took_ms": millis(*took),
                "state_handed_over": state_handed_over,
                "old_version": format!("{old:?}"),
            }),
        ),
        HostEvent::Refused { file, reason, kept } => event(
            "plughost.plugin.refused",
            json!({
                "file": file,
                "reason": reason,
                "kept": kept.as_ref().map(|(name, version)| json!({
                    "plugin": name, "version": version.to_string()
                })),
            }),
        ),
        HostEvent::Unloaded {
            name,
            version,
            file,
            status,
        } => event(
            "plughost.plugin.unloaded",
            json!({
                "plugin": name,
                "version": version.to_string(),
                "file": file,
                "status": format!("{status:?}"),
            }),
        ),
        HostEvent::ConfigApplied { file, changed } => event(
            "plughost.config.applied",
            json!({"file": file, "changed": changed}),
        ),
        HostEvent::ConfigRefused { file, reason } => event(
            "plughost.config.refused",
            json!({"file": file, "reason": reason}),
        ),
        HostEvent::CircuitChanged { plugin, from, to } => event(
            "plughost.circuit.changed",
            json!({"plugin": plugin, "from": from.as_str(), "to": to.as_str()}),
        ),
    }
}

/// The bus event of a failed call through the guarded path.
pub(crate) fn call_failed_event(plugin: &str, error: &CallError, took: Duration) -> Event {
    event(
        "plughost.call.failed",
        json!({
            "plugin": plugin,
            "error": error.to_string(),
            "took_ms": millis(took),
        }),
    )
}

fn millis(took: Duration) -> f64 {
    (took.as_secs_f64() * 1e6).round() / 1e3
}
