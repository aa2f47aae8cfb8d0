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

use crate::config::HostConfig;
use crate::dependencies::{self, Candidate};
use crate::discovery;
use crate::dispatch::PluginHandle;
use crate::error::{CallError, HostError, LoadError};
use crate::events::{HostEvent, Subscribers};
use crate::instance::{Retired, RunningPlugin};
use crate::library::{self, PluginLibrary};
use crate::mapping::{self, UnloadStatus};
use crate::metadata::PluginInfo;
use crate::registry::{Registry, Slot};
use crate::schema;
use crate::shadow::{self, ShadowDir};

mod reconfigure;

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
    /// The Init configuration each plugin name was last given through the API
    /// ([`Host::start`]), reused when its file is reloaded or comes back after a deletion.
    /// Plugins without one take theirs from `config`.
    configs: HashMap<String, Vec<u8>>,
    /// The settings: `plughost.toml`, with enable / disable applied.
    config: HostConfig,
    /// Plugins enabled or disabled through the API ([`Host::enable`], [`Host::disable`]):
    /// name -> (the file's `enabled` when that was done, the API's). The API's choice stands
    /// through edits of the file until an edit changes that plugin's `enabled` itself.
    switched: HashMap<String, (bool, bool)>,
    /// The file each plugin name was last seen in, running or not (for `enable`).
    known: HashMap<String, PathBuf>,
    /// Files refused because a plugin they require was missing: tried again after a load.
    waiting: Vec<PathBuf>,
    /// Set by `shutdown`: nothing is loaded after it.
    closed: bool,
}

/// What background retirements share with the host.
#[derive(Default)]
struct Shared {
    events: Subscribers,
    /// Shadow paths of closed versions that were still mapped when checked.
    still_mapped: Mutex<Vec<PathBuf>>,
    /// Bumped whenever the settings change, so a dispatcher knows to rebuild its policies.
    settings_generation: std::sync::atomic::AtomicU64,
    /// A copy of `Lifecycle::config`, readable without waiting for a load in progress.
    settings: arc_swap::ArcSwap<HostConfig>,
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

    /// A host set up from a configuration (`plughost.toml`): plugins folder, shadow folder,
    /// and each plugin's settings, applied by [`load_all`](Self::load_all) and every later
    /// load.
    pub fn with_config(config: HostConfig) -> Result<Self, HostError> {
        let mut options = HostOptions::with_plugins_dir(&config.host.plugins_dir);
        if let Some(dir) = &config.host.shadow_dir {
            options.shadow_dir = dir.clone();
        }
        let host = Host::new(options)?;
        let mut lifecycle = host.lifecycle();
        lifecycle.config = config;
        host.publish_settings(&lifecycle);
        drop(lifecycle);
        Ok(host)
    }

    /// The settings in force: the configuration file's, with enable / disable applied. Never
    /// waits, even while a plugin is being loaded.
    pub fn config(&self) -> Arc<HostConfig> {
        self.shared.settings.load_full()
    }

    /// Makes `lifecycle.config` what [`config`](Self::config) returns and tells dispatchers.
    fn publish_settings(&self, lifecycle: &Lifecycle) {
        self.shared
            .settings
            .store(Arc::new(lifecycle.config.clone()));
        self.settings_changed();
    }

    /// Changes whenever [`config`](Self::config) does. Cheap: one atomic load.
    pub fn settings_generation(&self) -> u64 {
        self.shared
            .settings_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn settings_changed(&self) {
        self.shared
            .settings_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
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

    /// Starts an opened library with its configuration from the settings (or the one last
    /// given through [`start`](Self::start)).
    pub fn start_configured(&self, library: PluginLibrary) -> Result<PluginHandle, LoadError> {
        let mut lifecycle = self.lifecycle();
        self.install(&mut lifecycle, library, None, Instant::now())
            .map(PluginHandle::new)
    }

    /// Opens and starts one library.
    pub fn load_file(&self, path: &Path, config: &[u8]) -> Result<PluginHandle, LoadError> {
        self.start(self.open(path)?, config)
    }

    /// Loads every library in the plugins folder with `config_for(plugin)` as its Init
    /// configuration, in dependency order. Refusals are logged and reported; the others load
    /// regardless.
    pub fn load_all_with(
        &self,
        mut config_for: impl FnMut(&PluginInfo) -> Vec<u8>,
    ) -> Result<LoadReport, HostError> {
        self.load_folder(|info| Some(config_for(info)))
    }

    /// Loads every enabled library in the plugins folder, in dependency order (then by
    /// priority), each with its configuration from the settings.
    pub fn load_all(&self) -> Result<LoadReport, HostError> {
        self.load_folder(|_| None)
    }

    fn load_folder(
        &self,
        mut config_for: impl FnMut(&PluginInfo) -> Option<Vec<u8>>,
    ) -> Result<LoadReport, HostError> {
        let mut report = LoadReport::default();
        let mut libraries = Vec::new();
        for path in self.discover()? {
            match self.open(&path) {
                Ok(library) => libraries.push(library),
                Err(error) => {
                    self.refused(&error, None);
                    report.refused.push(error);
                }
            }
        }
        let mut lifecycle = self.lifecycle();
        libraries.retain(|library| lifecycle.admit(library));
        let candidates: Vec<Candidate> = libraries
            .iter()
            .map(|library| Candidate {
                info: library.info().clone(),
                file: library.file().to_owned(),
                priority: lifecycle.config.plugin(&library.info().name).priority,
            })
            .collect();
        let running: Vec<PluginInfo> = self
            .plugins()
            .into_iter()
            .filter(|p| !candidates.iter().any(|c| c.info.name == p.name))
            .collect();
        let config = &lifecycle.config;
        let plan =
            dependencies::start_order(&candidates, &running, &|name| !config.plugin(name).enabled);
        let mut libraries: Vec<Option<PluginLibrary>> = libraries.into_iter().map(Some).collect();
        for (i, error) in plan.refused {
            drop(libraries[i].take());
            lifecycle.wait_if_passing(&error);
            self.refused(&error, None);
            report.refused.push(error);
        }
        for i in plan.order {
            let Some(library) = libraries[i].take() else {
                continue;
            };
            let config = config_for(library.info());
            match self.install(&mut lifecycle, library, config.as_deref(), Instant::now()) {
                Ok(slot) => report
                    .loaded
                    .extend(slot.current().map(|v| v.library().info().clone())),
                Err(error) => {
                    lifecycle.wait_if_passing(&error);
                    self.refused(&error, None);
                    report.refused.push(error);
                }
            }
        }
        Ok(report)
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
        if self.sync_locked(&mut lifecycle, path, noticed) {
            // A plugin started, changed or left: files waiting on it may load now.
            self.retry_waiting(&mut lifecycle, Vec::new());
        }
    }

    /// Tries again the files refused for what other plugins were at the time (a requirement
    /// missing or out of range, a dependent it would break, a cycle), and `also`, until no
    /// more start.
    fn retry_waiting(&self, lifecycle: &mut Lifecycle, also: Vec<PathBuf>) {
        for file in also {
            // Tried afresh even if its content was refused: what refused it may have changed.
            lifecycle.refused.remove(&file);
            if !lifecycle.waiting.contains(&file) {
                lifecycle.waiting.push(file);
            }
        }
        loop {
            let waiting = std::mem::take(&mut lifecycle.waiting);
            let mut progress = false;
            for file in waiting {
                progress |= self.sync_locked(lifecycle, &file, Instant::now());
            }
            if !progress || lifecycle.waiting.is_empty() {
                break;
            }
        }
    }

    /// [`sync_file`](Self::sync_file) under the lifecycle lock. Says whether what serves a
    /// name changed: a plugin started, was replaced or left.
    fn sync_locked(&self, lifecycle: &mut Lifecycle, path: &Path, noticed: Instant) -> bool {
        let existing = self.registry.find_by_file(path);
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                lifecycle.refused.remove(path);
                lifecycle.waiting.retain(|p| p != path);
                let Some(slot) = existing else {
                    return false;
                };
                let retiring = self.take_out_of_service(&slot);
                let left = retiring.is_some();
                lifecycle.retiring.extend(retiring);
                return left;
            }
            Err(error) => {
                let error = LoadError::Read {
                    path: path.to_owned(),
                    error,
                };
                self.refused(&error, existing.as_deref());
                return false;
            }
        };
        let hash = library::content_hash(&bytes);
        let running = existing.as_ref().and_then(|s| s.current());
        if running
            .as_ref()
            .is_some_and(|v| v.library().content_hash() == hash)
        {
            debug!("{}: content unchanged, nothing to reload", path.display());
            return false;
        }
        if lifecycle.refused.get(path) == Some(&hash) {
            debug!("{}: content already refused", path.display());
            return false;
        }
        let outcome = PluginLibrary::open_bytes(path, &bytes, &self.shadow).and_then(|library| {
            if !lifecycle.admit(&library) {
                return Ok(None);
            }
            self.install(lifecycle, library, None, noticed).map(Some)
        });
        drop(bytes);
        lifecycle.retiring.retain(|t| !t.is_finished());
        match outcome {
            Ok(Some(slot)) => {
                lifecycle.refused.remove(path);
                lifecycle.waiting.retain(|p| p != path);
                // The file now holds another plugin: the one it held before goes.
                if let Some(previous) = existing.filter(|s| s.name() != slot.name()) {
                    let retiring = self.take_out_of_service(&previous);
                    lifecycle.retiring.extend(retiring);
                }
                true
            }
            Ok(None) => false,
            Err(error) => {
                match error {
                    // Passing refusals: an Init failure (say, a port the old version still
                    // holds) is tried again on the next event; a refusal that depends on
                    // other plugins, when they change.
                    LoadError::Init { .. } | LoadError::TooMany { .. } => {}
                    LoadError::MissingDependency { .. }
                    | LoadError::DependencyVersion { .. }
                    | LoadError::BreaksDependent { .. }
                    | LoadError::DependencyCycle { .. } => {
                        lifecycle.wait_if_passing(&error);
                    }
                    // Only a file refused for what it is stays refused until its content
                    // changes.
                    _ => {
                        lifecycle.refused.insert(path.to_owned(), hash);
                    }
                }
                self.refused(&error, existing.as_deref());
                false
            }
        }
    }

    /// Puts `library` in service: [`prepare`](Self::prepare) then [`commit`](Self::commit).
    fn install(
        &self,
        lifecycle: &mut Lifecycle,
        library: PluginLibrary,
        config: Option<&[u8]>,
        noticed: Instant,
    ) -> Result<Arc<Slot>, LoadError> {
        let prepared = self.prepare(lifecycle, library, config)?;
        Ok(self.commit(lifecycle, prepared, noticed))
    }

    /// Makes `library` ready to serve, without putting it in service: checks the plugins it
    /// requires are in service (and that those requiring it accept this version), checks its
    /// configuration against its schema and calls Init. `config`: the Init configuration
    /// (JSON), or `None` for the one last given through the API, else the settings'. Dropping
    /// the result shuts the new instance down; the version in service, if any, never noticed.
    fn prepare(
        &self,
        lifecycle: &mut Lifecycle,
        library: PluginLibrary,
        config: Option<&[u8]>,
    ) -> Result<Prepared, LoadError> {
        let info = library.info().clone();
        let _span = info_span!("plugin", name = %info.name, version = %info.version).entered();
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
        let max = lifecycle.config.host.max_plugins;
        if old.is_none() && self.registry.loaded().len() >= max {
            return Err(LoadError::TooMany {
                path: library.file().to_owned(),
                name: info.name.clone(),
                max,
            });
        }
        let required = self.required_slots(lifecycle, &library)?;
        let given = config
            .map(<[u8]>::to_vec)
            .or_else(|| lifecycle.configs.get(&info.name).cloned());
        let init_config = match &given {
            Some(given) => checked_config(&lifecycle.config, &library, given, false)?,
            None => {
                let settings = lifecycle.config.plugin(&info.name).config;
                let json = serde_json::to_vec(&settings).unwrap_or_default();
                checked_config(&lifecycle.config, &library, &json, true)?
            }
        };
        let state = match old.as_ref().map(|v| v.save_state()) {
            Some(Err(e)) => {
                warn!("{e}; the new version starts without the old one's state");
                None
            }
            Some(Ok(state)) => state,
            None => None,
        };
        let load_time = library.load_time();
        library.bind_dependencies(required);
        let running = RunningPlugin::start(library, &init_config.bytes, state.as_deref())
            .map_err(|e| scrub_init_error(e, &init_config.secrets))?;
        Ok(Prepared {
            slot,
            running,
            given,
            handed_over: state.is_some(),
            load_time,
        })
    }

    /// Puts a prepared version in service: swaps it into its slot and retires the version it
    /// replaces in the background.
    fn commit(&self, lifecycle: &mut Lifecycle, prepared: Prepared, noticed: Instant) -> Arc<Slot> {
        let Prepared {
            slot,
            running,
            given,
            handed_over,
            load_time,
        } = prepared;
        let info = running.library().info().clone();
        let _span = info_span!("plugin", name = %info.name, version = %info.version).entered();
        if let Some(given) = given {
            lifecycle.configs.insert(info.name.clone(), given);
        }
        let file = running.library().file().to_owned();
        lifecycle.known.insert(info.name.clone(), file.clone());
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
        slot
    }

    /// The slots of the plugins `library` requires, each in service at a version in range;
    /// and no plugin in service that requires `library`'s plugin may be left out of range.
    fn required_slots(
        &self,
        lifecycle: &Lifecycle,
        library: &PluginLibrary,
    ) -> Result<Vec<Arc<Slot>>, LoadError> {
        let info = library.info();
        if let Some(cycle) = dependencies::cycle_through(info, &self.plugins()) {
            return Err(LoadError::DependencyCycle {
                path: library.file().to_owned(),
                name: info.name.clone(),
                cycle,
            });
        }
        let mut slots = Vec::with_capacity(info.dependencies.len());
        for requirement in &info.dependencies {
            let slot = self.registry.slot(&requirement.name);
            let version = slot.as_ref().and_then(|s| s.current());
            match (slot, version) {
                (Some(slot), Some(version)) => {
                    let found = &version.library().info().version;
                    if !requirement.range.matches(found) {
                        return Err(LoadError::DependencyVersion {
                            path: library.file().to_owned(),
                            name: info.name.clone(),
                            requirement: Box::new(requirement.clone()),
                            found: Box::new(found.clone()),
                        });
                    }
                    slots.push(slot);
                }
                _ => {
                    let disabled = !lifecycle.config.plugin(&requirement.name).enabled;
                    return Err(LoadError::MissingDependency {
                        path: library.file().to_owned(),
                        name: info.name.clone(),
                        requirement: Box::new(requirement.clone()),
                        why: if disabled {
                            dependencies::DISABLED.into()
                        } else {
                            "is not loaded".into()
                        },
                    });
                }
            }
        }
        for dependent in self.plugins() {
            let breaks = dependent
                .dependencies
                .iter()
                .find(|r| r.name == info.name && !r.range.matches(&info.version));
            if let Some(requirement) = breaks {
                return Err(LoadError::BreaksDependent {
                    path: library.file().to_owned(),
                    name: info.name.clone(),
                    version: Box::new(info.version.clone()),
                    dependent: dependent.name.clone(),
                    requirement: Box::new(requirement.clone()),
                });
            }
        }
        Ok(slots)
    }

    /// The plugins in service that require `name`.
    fn dependents_of(&self, name: &str) -> Vec<String> {
        self.plugins()
            .into_iter()
            .filter(|p| p.dependencies.iter().any(|r| r.name == name))
            .map(|p| p.name)
            .collect()
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
        let dependents = self.dependents_of(slot.name());
        if !dependents.is_empty() {
            warn!(
                "{} is out of service; {} require it, and their calls to it fail until it is back",
                slot.name(),
                dependents.join(", ")
            );
        }
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
            let mut lifecycle = self.lifecycle();
            let version = self.registry.slot(name).and_then(|slot| slot.swap(None));
            if version.is_some() {
                // A plugin refused because it would have broken this one may start now.
                self.retry_waiting(&mut lifecycle, Vec::new());
            }
            version
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
            let mut slots = self.registry.loaded();
            slots.reverse();
            let infos: Vec<PluginInfo> = slots
                .iter()
                .map(|slot| {
                    slot.current()
                        .map(|v| v.library().info().clone())
                        .expect("loaded slots hold a version")
                })
                .collect();
            let versions: Vec<Arc<RunningPlugin>> = dependencies::stop_order(&infos)
                .into_iter()
                .filter_map(|i| slots[i].swap(None))
                .collect();
            (versions, std::mem::take(&mut lifecycle.retiring))
        };
        // One at a time, each before the plugins it requires, otherwise newest first: a later
        // plugin may still be using an earlier one.
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

impl Lifecycle {
    /// Remembers the file of a refusal that depends on other plugins (a requirement missing
    /// or out of range, a dependent it would break, a cycle), to try it again when they change.
    fn wait_if_passing(&mut self, error: &LoadError) {
        let passing = matches!(
            error,
            LoadError::MissingDependency { .. }
                | LoadError::DependencyVersion { .. }
                | LoadError::BreaksDependent { .. }
                | LoadError::DependencyCycle { .. }
        );
        if passing && !self.waiting.iter().any(|p| p == error.path()) {
            self.waiting.push(error.path().to_owned());
        }
    }

    /// Records that the API switched plugin `name` on or off, and sets it in the settings.
    fn switch(&mut self, name: &str, enabled: bool) {
        let in_file = match self.switched.get(name) {
            Some(&(in_file, _)) => in_file,
            None => self.config.plugin(name).enabled,
        };
        self.switched.insert(name.to_owned(), (in_file, enabled));
        self.config
            .plugins
            .entry(name.to_owned())
            .or_default()
            .enabled = enabled;
    }

    /// Carries the API's enable / disable over to `new` settings read from the file, except
    /// for plugins whose `enabled` the file itself changed since: the latest word wins.
    /// Returns the switches still standing, to keep once `new` is applied.
    fn keep_switches(&self, new: &mut HostConfig) -> HashMap<String, (bool, bool)> {
        let mut kept = self.switched.clone();
        kept.retain(|name, (in_file, enabled)| {
            if new.plugin(name).enabled != *in_file {
                return false;
            }
            new.plugins.entry(name.clone()).or_default().enabled = *enabled;
            true
        });
        kept
    }

    /// Notes where `library`'s plugin lives and says whether the settings let it run.
    fn admit(&mut self, library: &PluginLibrary) -> bool {
        let info = library.info();
        self.known
            .insert(info.name.clone(), library.file().to_owned());
        let enabled = self.config.plugin(&info.name).enabled;
        if !enabled {
            info!(
                "{} {} in {} is disabled: not started",
                info.name,
                info.version,
                library.file().display()
            );
        }
        enabled
    }
}

/// A version whose Init succeeded, waiting to be put in service by [`Host::commit`].
struct Prepared {
    slot: Arc<Slot>,
    running: RunningPlugin,
    /// The configuration given through the API, if any, remembered once in service.
    given: Option<Vec<u8>>,
    handed_over: bool,
    load_time: Duration,
}

/// An Init configuration that fits the plugin's schema, and the secrets in it.
struct CheckedConfig {
    bytes: Vec<u8>,
    secrets: Vec<String>,
}

/// Checks `given` (JSON) against `library`'s schema and fills in the defaults. `from_settings`:
/// the configuration came from the settings, so errors point into `config`'s file. Bytes that
/// are not a JSON object are passed on as they are, for the plugin to refuse.
fn checked_config(
    config: &HostConfig,
    library: &PluginLibrary,
    given: &[u8],
    from_settings: bool,
) -> Result<CheckedConfig, LoadError> {
    let info = library.info();
    let given_map = if given.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<serde_json::Value>(given) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => {
                return Ok(CheckedConfig {
                    bytes: given.to_vec(),
                    secrets: Vec::new(),
                })
            }
        }
    };
    let at = |key: &str| {
        from_settings
            .then(|| config.locate(&["plugins", &info.name, "config", key]))
            .flatten()
            .map(Box::new)
    };
    // A value from the environment may be a secret: a problem with it names the variable.
    let origin = |key: &str| {
        from_settings
            .then(|| config.config_origin(&info.name, key))
            .flatten()
    };
    let checked =
        schema::check_with(info, &given_map, &origin).map_err(|problem| LoadError::Config {
            path: library.file().to_owned(),
            name: info.name.clone(),
            at: at(&problem.key),
            key: problem.key,
            reason: problem.reason,
        })?;
    for key in &checked.unknown {
        let at = at(key).map(|a| format!("{a}: ")).unwrap_or_default();
        warn!(
            "{at}plugin {}: unknown config key `{key}` (not in its schema; passed on)",
            info.name
        );
    }
    Ok(CheckedConfig {
        bytes: serde_json::to_vec(&checked.config).unwrap_or_default(),
        secrets: schema::secrets(info, &checked.config),
    })
}

/// `error` with any secret the plugin quoted in its Init failure masked.
fn scrub_init_error(error: LoadError, secrets: &[String]) -> LoadError {
    match error {
        LoadError::Init {
            path,
            name,
            cause: CallError::Failed { plugin, message },
        } => LoadError::Init {
            path,
            name,
            cause: CallError::Failed {
                plugin,
                message: schema::scrub(&message, secrets),
            },
        },
        LoadError::Init {
            path,
            name,
            cause: CallError::Panicked { plugin, message },
        } => LoadError::Init {
            path,
            name,
            cause: CallError::Panicked {
                plugin,
                message: schema::scrub(&message, secrets),
            },
        },
        other => other,
    }
}
