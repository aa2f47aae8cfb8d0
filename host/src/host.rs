//! The [`Host`]: a plugins folder, a shadow folder and a registry, with the operations that
//! move plugins through their life: load, call, replace, unload, shut down.
//!
//! Every change of which version serves a name (load, reload, unload) runs under one lifecycle
//! lock, so changes never interleave; calls never take that lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, info_span, warn};

use crate::discovery;
use crate::dispatch::PluginHandle;
use crate::error::{CallError, HostError, LoadError};
use crate::events::{HostEvent, Subscribers};
use crate::instance::{Retired, RunningPlugin};
use crate::library::{self, PluginLibrary};
use crate::mapping::{self, UnloadStatus};
use crate::metadata::PluginInfo;
use crate::registry::{Registry, Slot};
use crate::shadow::{self, ShadowDir};

/// Where a host finds plugins and keeps its shadow copies.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The folder scanned for plugin libraries (non-recursive). Default: `plugins`.
    pub plugins_dir: PathBuf,
    /// Where private copies of loaded libraries go. Default: `plughost-shadow-<uid>` in the
    /// system's temporary folder.
    pub shadow_dir: PathBuf,
    /// How long [`Host::shutdown`] waits for a plugin's calls in flight before leaving it
    /// loaded without Shutdown. Default 10 s.
    pub shutdown_timeout: Duration,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            plugins_dir: PathBuf::from("plugins"),
            shadow_dir: shadow::default_shadow_dir(),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl HostOptions {
    /// Default options with another plugins folder.
    pub fn with_plugins_dir(dir: impl Into<PathBuf>) -> Self {
        HostOptions {
            plugins_dir: dir.into(),
            ..Self::default()
        }
    }
}

/// What [`Host::load_all`] did: the plugins it started and the files it refused.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Started plugins, in load order.
    pub loaded: Vec<PluginInfo>,
    /// Refused files, each error naming its file and the reason.
    pub refused: Vec<LoadError>,
}

/// A plugin host. Dropping it shuts every plugin down, newest first.
pub struct Host {
    options: HostOptions,
    shadow: ShadowDir,
    registry: Registry,
    lifecycle: Mutex<Lifecycle>,
    shared: Arc<Shared>,
}

/// State only touched under the lifecycle lock.
#[derive(Default)]
struct Lifecycle {
    /// Content hash of the last refused content of each file, so an extra event for a file
    /// already refused does not refuse (and log) it again.
    refused: HashMap<PathBuf, u128>,
    /// Threads retiring old versions, joined at shutdown.
    retiring: Vec<JoinHandle<()>>,
    /// The Init configuration each plugin name was last started with, reused when its file
    /// is reloaded or comes back after a deletion.
    configs: HashMap<String, Vec<u8>>,
    /// Set by `shutdown`: nothing is loaded after it.
    closed: bool,
}

/// What background retirements share with the host.
#[derive(Default)]
struct Shared {
    events: Subscribers,
    /// Shadow paths of closed versions that were still mapped when checked.
    still_mapped: Mutex<Vec<PathBuf>>,
}

impl Shared {
    /// Records `closed` (a version found still mapped after closing), forgets those that have
    /// left memory since, and says how many remain.
    fn still_mapped(&self, closed: Option<PathBuf>) -> usize {
        let mut paths = self.still_mapped.lock().unwrap_or_else(|e| e.into_inner());
        paths.retain(|p| mapping::is_mapped(p).unwrap_or(false));
        paths.extend(closed);
        paths.len()
    }
}

impl Host {
    /// A host with no plugin running yet. Creates the shadow folder.
    pub fn new(options: HostOptions) -> Result<Self, HostError> {
        let shadow = ShadowDir::new(&options.shadow_dir).map_err(|error| HostError::ShadowDir {
            path: options.shadow_dir.clone(),
            error,
        })?;
        Ok(Host {
            options,
            shadow,
            registry: Registry::default(),
            lifecycle: Mutex::default(),
            shared: Arc::default(),
        })
    }

    /// The options it was made with.
    pub fn options(&self) -> &HostOptions {
        &self.options
    }

    /// Events from now on: loads, reloads, refusals, unloads.
    pub fn subscribe(&self) -> Receiver<HostEvent> {
        self.shared.events.subscribe()
    }

    fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        // Lifecycle state stays consistent across a panic (each field is updated in one step).
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The library files in the plugins folder.
    pub fn discover(&self) -> Result<Vec<PathBuf>, HostError> {
        let dir = &self.options.plugins_dir;
        discovery::discover(dir).map_err(|error| HostError::PluginsDir {
            path: dir.clone(),
            error,
        })
    }

    /// Checks, copies, loads and validates one library without starting it.
    pub fn open(&self, path: &Path) -> Result<PluginLibrary, LoadError> {
        PluginLibrary::open(path, &self.shadow)
    }

    /// Opens every library in the plugins folder without starting any.
    pub fn scan(&self) -> Result<Vec<Result<PluginLibrary, LoadError>>, HostError> {
        Ok(self.discover()?.iter().map(|p| self.open(p)).collect())
    }

    /// Starts an opened library: refuses a name another file already serves, calls Init with
    /// `config` (JSON; empty means `{}`), and puts it in service. If the same file already
    /// serves the name, this replaces it like a reload.
    pub fn start(&self, library: PluginLibrary, config: &[u8]) -> Result<PluginHandle, LoadError> {
        let mut lifecycle = self.lifecycle();
        self.install(&mut lifecycle, library, Some(config), Instant::now())
            .map(PluginHandle::new)
    }

    /// Opens and starts one library.
    pub fn load_file(&self, path: &Path, config: &[u8]) -> Result<PluginHandle, LoadError> {
        self.start(self.open(path)?, config)
    }

    /// Loads every library in the plugins folder with `config_for(plugin)` as its Init
    /// configuration. Refusals are logged and reported; the others load regardless.
    pub fn load_all_with(
        &self,
        mut config_for: impl FnMut(&PluginInfo) -> Vec<u8>,
    ) -> Result<LoadReport, HostError> {
        let mut report = LoadReport::default();
        for path in self.discover()? {
            let outcome = self.open(&path).and_then(|library| {
                let config = config_for(library.info());
                self.start(library, &config)
            });
            match outcome {
                Ok(handle) => report.loaded.extend(handle.info()),
                Err(error) => {
                    self.refused(&error, None);
                    report.refused.push(error);
                }
            }
        }
        Ok(report)
    }

    /// Loads every library in the plugins folder with an empty configuration.
    pub fn load_all(&self) -> Result<LoadReport, HostError> {
        self.load_all_with(|_| Vec::new())
    }

    /// Brings the host in line with what `path` now holds: loads a new library, replaces the
    /// running version if the content changed, keeps the running version if the new content is
    /// refused, unloads the plugin if the file is gone. This is what the watcher calls.
    pub fn sync_file(&self, path: &Path) {
        let noticed = Instant::now();
        let mut lifecycle = self.lifecycle();
        if lifecycle.closed {
            return;
        }
        let existing = self.registry.find_by_file(path);
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                lifecycle.refused.remove(path);
                if let Some(slot) = existing {
                    let retiring = self.take_out_of_service(&slot);
                    lifecycle.retiring.extend(retiring);
                }
                return;
            }
            Err(error) => {
                let error = LoadError::Read {
                    path: path.to_owned(),
                    error,
                };
                self.refused(&error, existing.as_deref());
                return;
            }
        };
        let hash = library::content_hash(&bytes);
        let running = existing.as_ref().and_then(|s| s.current());
        if running
            .as_ref()
            .is_some_and(|v| v.library().content_hash() == hash)
        {
            debug!("{}: content unchanged, nothing to reload", path.display());
            return;
        }
        if lifecycle.refused.get(path) == Some(&hash) {
            debug!("{}: content already refused", path.display());
            return;
        }
        let outcome = PluginLibrary::open_bytes(path, &bytes, &self.shadow)
            .and_then(|library| self.install(&mut lifecycle, library, None, noticed));
        drop(bytes);
        match outcome {
            Ok(slot) => {
                lifecycle.refused.remove(path);
                // The file now holds another plugin: the one it held before goes.
                if let Some(previous) = existing.filter(|s| s.name() != slot.name()) {
                    let retiring = self.take_out_of_service(&previous);
                    lifecycle.retiring.extend(retiring);
                }
            }
            Err(error) => {
                // An Init failure may pass (say, a port the old version still holds): only a
                // file refused for what it is stays refused until its content changes.
                if !matches!(error, LoadError::Init { .. }) {
                    lifecycle.refused.insert(path.to_owned(), hash);
                }
                self.refused(&error, existing.as_deref());
            }
        }
        lifecycle.retiring.retain(|t| !t.is_finished());
    }

    /// Puts `library` in service. `config`: the Init configuration, or `None` to reuse the
    /// running version's (a reload).
    fn install(
        &self,
        lifecycle: &mut Lifecycle,
        library: PluginLibrary,
        config: Option<&[u8]>,
        noticed: Instant,
    ) -> Result<Arc<Slot>, LoadError> {
        let info = library.info().clone();
        let _span = info_span!("plugin", name = %info.name, version = %info.version).entered();
        let slot = self.registry.slot_or_insert(&info.name);
        let old = slot.current();
        if let Some(old) = &old {
            if old.library().file() != library.file() {
                return Err(LoadError::DuplicateName {
                    path: library.file().to_owned(),
                    name: info.name.clone(),
                    existing: old.library().file().to_owned(),
                });
            }
        }
        let config = config.map_or_else(
            || {
                old.as_ref()
                    .map(|v| v.config().to_vec())
                    .unwrap_or_default()
            },
            <[u8]>::to_vec,
        );
        let state = match old.as_ref().map(|v| v.save_state()) {
            Some(Err(e)) => {
                warn!("{e}; the new version starts without the old one's state");
                None
            }
            Some(Ok(state)) => state,
            None => None,
        };
        let load_time = library.load_time();
        if lifecycle.closed {
            return Err(LoadError::Init {
                path: library.file().to_owned(),
                name: info.name.clone(),
                cause: CallError::Failed {
                    plugin: info.name.as_str().into(),
                    message: "the host has shut down".into(),
                },
            });
        }
        let running = RunningPlugin::start(library, &config, state.as_deref())?;
        lifecycle.configs.insert(info.name.clone(), config);
        let file = running.library().file().to_owned();
        let previous = slot.swap(Some(Arc::new(running)));
        let took = noticed.elapsed();
        match previous {
            None => {
                self.registry.mark_loaded(&slot);
                info!(
                    "loaded {} {} from {} in {:.1} ms (plugin-api {})",
                    info.name,
                    info.version,
                    file.display(),
                    (load_time + took).as_secs_f64() * 1e3,
                    info.api_version,
                );
                self.shared.events.emit(HostEvent::Loaded {
                    name: info.name,
                    version: info.version,
                    file,
                });
            }
            Some(previous) => {
                let handed_over = state.is_some();
                let thread = retire_in_background(
                    previous,
                    self.shared.clone(),
                    move |old, retired, shared| {
                        let status = describe_unload(&retired, shared, "old version");
                        if let Err(e) = &retired.shutdown {
                            warn!("old version {}: {e}", old.version);
                        }
                        info!(
                            "reloaded {} {} -> {} in {:.1} ms{} ({status})",
                            info.name,
                            old.version,
                            info.version,
                            took.as_secs_f64() * 1e3,
                            if handed_over {
                                ", state handed over"
                            } else {
                                ""
                            },
                        );
                        shared.events.emit(HostEvent::Reloaded {
                            name: info.name,
                            from: old.version,
                            to: info.version,
                            file,
                            took,
                            state_handed_over: handed_over,
                            old: retired.unload,
                        });
                    },
                );
                lifecycle.retiring.push(thread);
            }
        }
        Ok(slot)
    }

    /// Logs and announces a refusal. `kept`: the plugin that keeps serving, if any.
    fn refused(&self, error: &LoadError, kept: Option<&Slot>) {
        let kept = kept.and_then(Slot::current).map(|v| {
            let info = v.library().info();
            (info.name.clone(), info.version.clone())
        });
        match &kept {
            Some((name, version)) => warn!("kept {name} {version}: new file refused: {error}"),
            None => warn!("refused {error}"),
        }
        self.shared.events.emit(HostEvent::Refused {
            file: error.path().to_owned(),
            reason: error.to_string(),
            kept,
        });
    }

    /// Empties `slot` and retires its version in the background once in-flight calls are done.
    fn take_out_of_service(&self, slot: &Slot) -> Option<JoinHandle<()>> {
        let version = slot.swap(None)?;
        Some(retire_in_background(
            version,
            self.shared.clone(),
            |old, retired, shared| report_unload(old, &retired, shared),
        ))
    }

    /// A handle to call the plugin `name`.
    pub fn handle(&self, name: &str) -> Result<PluginHandle, CallError> {
        self.registry
            .slot(name)
            .filter(|s| s.current().is_some())
            .map(PluginHandle::new)
            .ok_or_else(|| CallError::NotFound {
                plugin: name.to_owned(),
            })
    }

    /// The files the plugins in service were loaded from.
    pub fn loaded_files(&self) -> Vec<PathBuf> {
        self.registry
            .loaded()
            .iter()
            .filter_map(|s| s.current())
            .map(|v| v.library().file().to_owned())
            .collect()
    }

    /// The plugins in service, oldest first.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.registry
            .loaded()
            .iter()
            .filter_map(|s| s.current())
            .map(|v| v.library().info().clone())
            .collect()
    }

    /// How many closed plugin versions are still mapped into the process (see
    /// [`UnloadStatus::StillMapped`]). Checked afresh on every call: a pinned library leaves
    /// once the thread pinning it ends.
    pub fn still_mapped(&self) -> usize {
        self.shared.still_mapped(None)
    }

    /// Takes a plugin out of service: waits for its calls in flight, calls Shutdown, unloads
    /// the library. Returns what Shutdown reported.
    pub fn unload(&self, name: &str) -> Result<(), CallError> {
        let version = {
            let _lifecycle = self.lifecycle();
            self.registry.slot(name).and_then(|slot| slot.swap(None))
        }
        .ok_or_else(|| CallError::NotFound {
            plugin: name.to_owned(),
        })?;
        // Out of service already; the wait for calls in flight happens outside the lock.
        let (old, retired) = retire_now(version);
        report_unload(old, &retired, &self.shared);
        retired.shutdown
    }

    /// Shuts every plugin down, newest first, and unloads them; waits for versions still
    /// being retired after reloads.
    pub fn shutdown(&self) {
        let (versions, threads) = {
            let mut lifecycle = self.lifecycle();
            lifecycle.closed = true;
            let versions: Vec<Arc<RunningPlugin>> = self
                .registry
                .loaded()
                .iter()
                .rev()
                .filter_map(|slot| slot.swap(None))
                .collect();
            (versions, std::mem::take(&mut lifecycle.retiring))
        };
        // One at a time, newest first: a later plugin may still be using an earlier one.
        for version in versions {
            match retire_within(version, Some(self.options.shutdown_timeout)) {
                Ok((old, retired)) => report_unload(old, &retired, &self.shared),
                Err((old, version)) => {
                    error!(
                        "{} {} still has calls running {} s after shutdown began; left loaded \
                         without Shutdown (unloading code that runs would crash)",
                        old.name,
                        old.version,
                        self.options.shutdown_timeout.as_secs()
                    );
                    // Never dropped: dropping would shut it down under the running calls.
                    std::mem::forget(version);
                }
            }
        }
        // Old versions still retiring after reloads: wait for them within the same bound; a
        // thread still waiting on a stuck call is left to finish on its own.
        let deadline = Instant::now() + self.options.shutdown_timeout;
        for thread in threads {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// Logs and announces that a plugin was taken out of service.
fn report_unload(old: OldVersion, retired: &Retired, shared: &Shared) {
    let status = describe_unload(retired, shared, "library");
    match &retired.shutdown {
        Ok(()) => info!("unloaded {} {} ({status})", old.name, old.version),
        Err(e) => warn!(
            "unloaded {} {} after a failed shutdown: {e} ({status})",
            old.name, old.version
        ),
    }
    shared.events.emit(HostEvent::Unloaded {
        name: old.name,
        version: old.version,
        file: old.file,
        status: retired.unload,
    });
}

/// Who a retired version was, kept for the log line once it is gone.
struct OldVersion {
    name: String,
    version: semver::Version,
    file: PathBuf,
}

/// Waits until no call holds `version` any more, then shuts it down and unloads it.
fn retire_now(version: Arc<RunningPlugin>) -> (OldVersion, Retired) {
    match retire_within(version, None) {
        Ok(retired) => retired,
        Err(_) => unreachable!("no time limit"),
    }
}

/// Like [`retire_now`], giving up after `limit`: then the version is left loaded, without
/// Shutdown (its code is still running, so unloading it would crash the calls), and handed
/// back.
fn retire_within(
    version: Arc<RunningPlugin>,
    limit: Option<Duration>,
) -> Result<(OldVersion, Retired), (OldVersion, Arc<RunningPlugin>)> {
    let info = version.library().info();
    let old = OldVersion {
        name: info.name.clone(),
        version: info.version.clone(),
        file: version.library().file().to_owned(),
    };
    let mut version = version;
    let mut pause = Duration::from_micros(20);
    let waiting_since = Instant::now();
    let mut next_warning = Duration::from_secs(5);
    let running = loop {
        match Arc::try_unwrap(version) {
            Ok(running) => break running,
            Err(shared) => {
                // Calls in flight (or `PluginOutput`s still held) keep this version alive.
                if limit.is_some_and(|limit| waiting_since.elapsed() >= limit) {
                    return Err((old, shared));
                }
                if waiting_since.elapsed() >= next_warning {
                    warn!(
                        "{} {} is out of service but still in use ({} calls or outputs held) \
                         after {} s; it shuts down when they are done",
                        old.name,
                        old.version,
                        Arc::strong_count(&shared) - 1,
                        next_warning.as_secs()
                    );
                    next_warning *= 2;
                }
                version = shared;
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
        }
    };
    Ok((old, running.retire()))
}

/// [`retire_now`] on a thread of its own, then `report`.
fn retire_in_background(
    version: Arc<RunningPlugin>,
    shared: Arc<Shared>,
    report: impl FnOnce(OldVersion, Retired, &Shared) + Send + 'static,
) -> JoinHandle<()> {
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("plughost-retire".into())
        .spawn(move || {
            let _span = span.entered();
            let (old, retired) = retire_now(version);
            report(old, retired, &shared);
        })
        .expect("spawn a retiring thread")
}

/// Records a still-mapped library and says what became of it, for log lines.
fn describe_unload(retired: &Retired, shared: &Shared, subject: &str) -> String {
    match retired.unload {
        UnloadStatus::StillMapped => format!(
            "{}; {} closed version(s) still mapped in all",
            retired.unload.describe(subject),
            shared.still_mapped(Some(retired.shadow.clone()))
        ),
        other => other.describe(subject),
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shutdown();
    }
}
