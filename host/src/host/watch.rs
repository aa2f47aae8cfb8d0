//! Watching the plugins folder and reloading what changes in it.
//!
//! The folder is watched, not the files: replacing a file makes a new inode, and a watch on the
//! old one goes dead (docs/design.md, "Watching the folder"). Each event is sorted by what it
//! says about the write:
//!
//! - **finished**: a rename into the folder (how `cargo xtask build-plugins` installs), a
//!   deletion or rename out of it, and on Linux `Close(Write)`, sent when the writer closes the
//!   file. Acted on at once.
//! - **in progress**: creation and modification. On Linux the close that ends the write will
//!   follow, so these only arm a long fallback ([`WatchOptions::write_timeout`]) for writers
//!   that never close; elsewhere there is no such signal, and the file is taken once it has
//!   been quiet for [`WatchOptions::settle`].
//!
//! A signature file beside a library (`libx.so.minisig`) is noted like a library: when it
//! changes, its library is checked again, so that a signature installed after its library
//! lets it load.
//!
//! The folder of the configuration file is watched too; a change to the file is
//! [`Host::reload_config`]. If the file is a symbolic link, its target's folder is watched as
//! well (the target as it is when the watch starts): `plughost enable`/`disable` and most
//! editors replace the target, not the link.
//!
//! Acting on a file is [`Host::sync_file`]: an unchanged hash does nothing; a file that fails
//! validation (say, still being written) keeps the old version serving and is simply tried
//! again on its next event.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tracing::{debug, error, warn};

use super::Host;
use crate::error::HostError;
use crate::loader::discovery;
use crate::loader::trust::library_of_signature;

/// How the watcher waits for writes to finish.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Where the platform does not say when a write is finished (everywhere but Linux), how
    /// long a file must be quiet before it is taken. Default 50 ms.
    pub settle: Duration,
    /// On Linux, how long after its last write a file that was never closed is taken anyway.
    /// Default 2 s.
    pub write_timeout: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            settle: Duration::from_millis(50),
            write_timeout: Duration::from_secs(2),
        }
    }
}

/// A running watch of a host's plugins folder. Dropping it stops the watch; so does dropping
/// the host.
pub struct Watcher {
    // Dropping the notify watcher closes the event channel, which ends the thread.
    watcher: Option<notify::RecommendedWatcher>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.watcher.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What an event says about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Finished,
    InProgress,
}

impl Host {
    /// Starts watching the plugins folder: new libraries are loaded, changed ones reloaded
    /// beside the running version and swapped in, deleted ones unloaded. Start it before
    /// [`Host::load_all`] so that nothing written in between is missed (an event for a file
    /// already loaded with the same content does nothing).
    pub fn watch(self: &Arc<Self>, options: WatchOptions) -> Result<Watcher, HostError> {
        let dir = self.plugins_dir.clone();
        let watch_error = |e: notify::Error| HostError::Watch {
            path: dir.clone(),
            source: Box::new(e),
        };
        let (sender, events) = channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = sender.send(event);
        })
        .map_err(watch_error)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        // The configuration file too: its folder, since editors replace files by renaming.
        let config = self.config().file.clone().and_then(|file| {
            let folder = file.parent().filter(|p| !p.as_os_str().is_empty());
            let folder = folder.unwrap_or(Path::new(".")).canonicalize().ok()?;
            Some(folder.join(file.file_name()?))
        });
        let target = config
            .as_ref()
            .and_then(|config| config.canonicalize().ok())
            .filter(|target| Some(target) != config.as_ref());
        let mut watched = vec![dir.canonicalize().unwrap_or_else(|_| dir.clone())];
        for file in config.iter().chain(&target) {
            let Some(folder) = file.parent() else {
                continue;
            };
            if !watched.iter().any(|w| w == folder) {
                watcher
                    .watch(folder, RecursiveMode::NonRecursive)
                    .map_err(|e| HostError::Watch {
                        path: folder.to_owned(),
                        source: Box::new(e),
                    })?;
                watched.push(folder.to_owned());
            }
        }

        // Weak: a watcher must not keep its host alive (dropping the host shuts plugins down).
        let host = Arc::downgrade(self);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("plughost-watch".into())
            .spawn(move || {
                let mut due: HashMap<PathBuf, Instant> = HashMap::new();
                while !stopping.load(Ordering::Relaxed) {
                    let wait = due.values().min().map_or(Duration::from_millis(500), |t| {
                        t.saturating_duration_since(Instant::now())
                    });
                    let event = events.recv_timeout(wait);
                    let Some(host) = host.upgrade() else {
                        break;
                    };
                    match event {
                        Ok(Ok(event)) => {
                            let files = ConfigFile {
                                path: config.as_deref(),
                                target: target.as_deref(),
                            };
                            note(&host, &dir, files, &options, &event, &mut due)
                        }
                        Ok(Err(e)) => warn!("watching {}: {e}", dir.display()),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    let now = Instant::now();
                    let ready: Vec<PathBuf> = due
                        .iter()
                        .filter(|(_, t)| **t <= now)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for path in ready {
                        due.remove(&path);
                        // One event's trouble must not end the watch: a panic is logged, and
                        // the next event is handled as usual.
                        let handled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            if Some(&path) == config.as_ref() {
                                host.reload_config();
                            } else if library_of_signature(&path).is_some() {
                                host.sync_signature(&path);
                            } else {
                                host.sync_file(&path);
                            }
                        }));
                        if let Err(payload) = handled {
                            let message = crate::loader::panic_message(payload.as_ref());
                            // Only the host's own code runs here (plugins catch their own
                            // panics), so its payload can be dropped.
                            drop(payload);
                            error!(
                                "handling a change of {} panicked: {message}; still watching",
                                path.display()
                            );
                        }
                    }
                }
            })
            .map_err(|e| HostError::Watch {
                path: self.plugins_dir.clone(),
                source: Box::new(e),
            })?;
        Ok(Watcher {
            watcher: Some(watcher),
            stop,
            thread: Some(thread),
        })
    }
}

/// The configuration file as watched: its path (folder canonical), and the file it links to
/// if it is a symbolic link.
#[derive(Clone, Copy)]
struct ConfigFile<'a> {
    path: Option<&'a Path>,
    target: Option<&'a Path>,
}

/// Schedules the files an event is about.
fn note(
    host: &Host,
    dir: &Path,
    config: ConfigFile<'_>,
    options: &WatchOptions,
    event: &notify::Event,
    due: &mut HashMap<PathBuf, Instant>,
) {
    if event.need_rescan() {
        // Events were lost: look at every library in the folder and every loaded plugin.
        let now = Instant::now();
        for path in discovery::discover(dir).unwrap_or_default() {
            due.insert(path, now);
        }
        for plugin in host.loaded_files() {
            due.insert(plugin, now);
        }
        return;
    }
    let Some(signal) = classify(&event.kind) else {
        return;
    };
    for path in &event.paths {
        // Rebuild the path from the folder as the host knows it, so that it compares equal
        // to the paths discovery produced (the watcher may report them differently).
        let Some(name) = path.file_name() else {
            continue;
        };
        let path = if config.path == Some(path.as_path()) {
            path.clone()
        } else if let (Some(config), true) = (config.path, config.target == Some(path.as_path())) {
            // The link's target changed: that is a change of the file.
            config.to_owned()
        } else {
            let path = dir.join(name);
            // A library, or the signature beside one (which has that library checked again).
            if !discovery::is_library_path(&path) && library_of_signature(&path).is_none() {
                continue;
            }
            path
        };
        let now = Instant::now();
        let when = match signal {
            Signal::Finished => now,
            Signal::InProgress if cfg!(target_os = "linux") => now + options.write_timeout,
            Signal::InProgress => now + options.settle,
        };
        debug!("{}: {:?} ({signal:?})", path.display(), event.kind);
        due.insert(path, when);
    }
}

fn classify(kind: &EventKind) -> Option<Signal> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Signal::Finished),
        EventKind::Modify(ModifyKind::Name(
            RenameMode::To | RenameMode::From | RenameMode::Any,
        )) => Some(Signal::Finished),
        EventKind::Remove(_) => Some(Signal::Finished),
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
            Some(Signal::InProgress)
        }
        // `Both` repeats a `From` and a `To` already seen; metadata and reads change nothing.
        _ => None,
    }
}
