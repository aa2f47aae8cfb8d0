//! What happens to plugins, as events an embedding program (or a test) can wait for instead of
//! sleeping: [`Host::subscribe`](crate::Host::subscribe).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

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
}

/// The open subscriptions.
#[derive(Default)]
pub(crate) struct Subscribers {
    senders: Mutex<Vec<Sender<HostEvent>>>,
}

impl Subscribers {
    pub(crate) fn subscribe(&self) -> Receiver<HostEvent> {
        let (sender, receiver) = channel();
        self.lock().push(sender);
        receiver
    }

    /// Sends the event to every subscriber still listening.
    pub(crate) fn emit(&self, event: HostEvent) {
        self.lock().retain(|s| s.send(event.clone()).is_ok());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sender<HostEvent>>> {
        // A list of senders cannot be left inconsistent by a panic.
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }
}
