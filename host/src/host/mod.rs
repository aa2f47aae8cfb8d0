//! The [`Host`]: a plugins folder, a shadow folder and a registry, with the operations that
//! move plugins through their life. It uses every other part of the crate and holds no FFI.
//!
//! One file per job, in the order a plugin meets them:
//!
//! - [`start`]: which libraries to start: the folder ([`Host::load_all`]), one plugin by name
//!   with what it requires, one file;
//! - [`admit`]: a library is admitted into service: requirements checked, config checked,
//!   Init called beside the running version, then swapped in; several in start order;
//! - [`init_config`]: the configuration a plugin is started with, checked against its schema;
//! - [`sync`]: what a change of a file in the plugins folder does;
//! - [`retire`]: taking a version out of service, unloading it, reporting how it went;
//! - [`switch`]: enable and disable through the API;
//! - [`reconfigure`]: live edits of `plughost.toml`;
//! - [`set_config`]: one plugin's config set on request, as a live edit;
//! - [`publish`]: the program's events: publish, subscribe, statistics;
//! - [`check`]: `plughost config check`, the whole configuration checked without starting
//!   anything;
//! - [`trust`]: a file's digest and signature as shown, and a signature file's change;
//! - [`watch`]: the watcher that calls [`sync`] and [`reconfigure`] on file events;
//! - [`status`]: where each plugin stands, from a ledger kept beside the events.
//!
//! Every change of which version serves a name runs under one lifecycle lock, so changes never
//! interleave; calls never take that lock.

#![forbid(unsafe_code)]

mod admit;
mod check;
mod init_config;
mod publish;
mod reconfigure;
mod retire;
mod set_config;
mod start;
mod status;
mod switch;
mod sync;
mod trust;
mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

pub use check::ConfigReport;
pub use set_config::ConfigChange;
pub use status::{PluginState, PluginStatus, Refusal};
pub use trust::Examined;
pub use watch::{WatchOptions, Watcher};

use crate::config::{HostConfig, Isolation, ProbeSetting};
use crate::dependencies::Candidate;
use crate::error::{CallError, HostError, LoadError};
use crate::events::{HostEvent, Subscribers};
use crate::loader::discovery;
use crate::loader::probe::{self, Probe, Program};
use crate::loader::shadow::{self, ShadowDir};
use crate::loader::{Content, Library, Naming, Opened, Placement};
use crate::plugin_info::PluginInfo;
use crate::runtime::{PluginHandle, PluginLibrary, Registry, Workers};

/// What [`Host::load_all`] did: the plugins it started and the files it refused.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Started plugins, in load order.
    pub loaded: Vec<PluginInfo>,
    /// Refused files, each error naming its file and the reason.
    pub refused: Vec<LoadError>,
}

/// A plugin host. Dropping it shuts every plugin down, each before the plugins it requires.
pub struct Host {
    plugins_dir: PathBuf,
    shadow: ShadowDir,
    probe: Probe,
    /// How isolated plugins' workers are started.
    workers: Workers,
    registry: Registry,
    lifecycle: Mutex<Lifecycle>,
    shared: Arc<Shared>,
    /// When the host was created.
    started_at: SystemTime,
    /// Set once a `load_all` has finished.
    started: AtomicBool,
}

/// Whether the API switched a plugin on or off, and what the file said when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Switch {
    /// The file's `enabled` when the API switched it.
    in_file: bool,
    /// What the API set.
    enabled: bool,
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
    /// ([`Host::load_file`], [`Host::load`]), reused when its file is reloaded or comes back
    /// after a deletion. Plugins without one take theirs from `config`.
    configs: HashMap<String, Vec<u8>>,
    /// The settings: `plughost.toml`, with enable / disable applied.
    config: HostConfig,
    /// Plugins enabled or disabled through the API ([`Host::enable`], [`Host::disable`]). The
    /// API's choice stands through edits of the file until an edit changes that plugin's
    /// `enabled` itself.
    switched: HashMap<String, Switch>,
    /// The file each plugin name was last seen in, running or not (for `enable`).
    known: HashMap<String, PathBuf>,
    /// Files refused because of other plugins (a requirement missing or out of range, a
    /// dependent it would break, a cycle): tried again when those change.
    waiting: Vec<PathBuf>,
    /// Set by `shutdown`: nothing is loaded after it.
    closed: bool,
    /// The status ledger (the one in [`Shared`]), told of plugins found in files.
    ledger: Arc<status::Ledger>,
}

/// What background retirements share with the host.
#[derive(Default)]
struct Shared {
    events: Subscribers,
    /// Versions out of service still in memory, by plugin name: closed but still mapped (with
    /// their private copies, kept while they are), or left loaded for good (`None`).
    still_mapped: Mutex<Vec<(String, Option<crate::loader::ShadowCopy>)>>,
    /// Versions of each plugin whose Init never returned: left loaded for good.
    stuck: Mutex<HashMap<String, usize>>,
    /// Bumped whenever the settings change, so a dispatcher knows to rebuild its policies.
    settings_generation: AtomicU64,
    /// A copy of `Lifecycle::config`, readable without waiting for a load in progress.
    settings: arc_swap::ArcSwap<HostConfig>,
    /// Set as soon as shutdown is asked for, before it waits for the lifecycle lock: a load in
    /// progress starts nothing more.
    closing: std::sync::atomic::AtomicBool,
    /// What each plugin went through, for [`Host::status`]; told of every event emitted.
    ledger: Arc<status::Ledger>,
}

impl Shared {
    /// Records `event` in the status ledger, then sends it to subscribers and the bus.
    fn emit(&self, event: HostEvent) {
        self.ledger.note(&event);
        self.events.emit(event);
    }
}

impl Host {
    /// A host with no plugin running yet, set up from `config` (`plughost.toml`, or
    /// [`HostConfig::with_plugins_dir`]): plugins folder, shadow folder, and each plugin's
    /// settings, applied by [`load_all`](Self::load_all) and every later load. Creates the
    /// shadow folder.
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        let shadow_dir = config
            .host
            .shadow_dir
            .clone()
            .unwrap_or_else(shadow::default_shadow_dir);
        let shadow = ShadowDir::new(&shadow_dir).map_err(|source| HostError::ShadowDir {
            path: shadow_dir,
            source,
        })?;
        let program = match &config.host.probe {
            ProbeSetting::Off => Program::Off,
            ProbeSetting::Program(path) => Program::At(path.clone()),
            ProbeSetting::Auto => probe::find_program().map_or(Program::Missing, Program::At),
        };
        let workers = Workers::new(
            match &program {
                Program::At(program) => Some(program.clone()),
                Program::Off | Program::Missing => probe::find_program(),
            },
            &config,
        );
        let verdicts = shadow.path().join("verdicts");
        let probe = Probe::new(program, config.host.probe_timeout, verdicts);
        let shared = Arc::new(Shared::default());
        let lifecycle = Lifecycle {
            ledger: shared.ledger.clone(),
            ..Lifecycle::default()
        };
        let host = Host {
            plugins_dir: config.host.plugins_dir.clone(),
            shadow,
            probe,
            workers,
            registry: Registry::default(),
            lifecycle: Mutex::new(lifecycle),
            shared,
            started_at: SystemTime::now(),
            started: AtomicBool::new(false),
        };
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
        self.shared.events.bus().configure(&lifecycle.config);
        self.shared
            .settings_generation
            .fetch_add(1, Ordering::AcqRel);
    }

    /// Changes whenever [`config`](Self::config) does. Cheap: one atomic load.
    pub(crate) fn settings_generation(&self) -> u64 {
        self.shared.settings_generation.load(Ordering::Acquire)
    }

    /// Events from now on: loads, reloads, refusals, unloads, configuration changes.
    pub fn subscribe(&self) -> Receiver<HostEvent> {
        self.shared.events.subscribe()
    }

    fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        // Lifecycle state stays consistent across a panic (each field is updated in one step).
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether shutting down has begun.
    fn is_closing(&self) -> bool {
        self.shared
            .closing
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The plugins folder.
    pub fn plugins_dir(&self) -> &Path {
        &self.plugins_dir
    }

    /// The library files in the plugins folder, sorted by name.
    pub fn discover(&self) -> Result<Vec<PathBuf>, HostError> {
        discovery::discover(&self.plugins_dir).map_err(|source| HostError::PluginsDir {
            path: self.plugins_dir.clone(),
            source,
        })
    }

    /// Checks, copies, loads and validates one library without starting it: to read its
    /// metadata, or ask its plugin about a configuration.
    pub fn open(&self, path: &Path) -> Result<PluginLibrary, LoadError> {
        self.open_wanted(path, &|_| true, &self.config())
    }

    /// Like [`open`](Self::open), leaving unopened a plugin `wanted` says no to, when its probe
    /// told its name ([`LoadError::Unwanted`]); placed in this process or a worker as
    /// `settings` say.
    fn open_wanted(
        &self,
        path: &Path,
        wanted: &dyn Fn(&str) -> bool,
        settings: &HostConfig,
    ) -> Result<PluginLibrary, LoadError> {
        let started = Instant::now();
        let bytes = crate::loader::read_library(path, settings.host.check_ownership)?;
        self.open_from(path, &bytes, wanted, settings, started)
    }

    /// Opens `bytes`, the content of `path` already read; see [`open_wanted`](Self::open_wanted).
    fn open_bytes(
        &self,
        path: &Path,
        bytes: &Content,
        wanted: &dyn Fn(&str) -> bool,
        settings: &HostConfig,
    ) -> Result<PluginLibrary, LoadError> {
        self.open_from(path, bytes, wanted, settings, Instant::now())
    }

    /// Checks `bytes` and loads them here, or in a worker process if the settings isolate the
    /// plugin. Its name decides. Where no plugin may be isolated, the probe tells it. Where any
    /// may, nothing runs the library unconfined before the host knows whether its plugin is to
    /// be confined: a worker confined to no grants tells the name (unless a probe or worker
    /// told it for these bytes before); the plugin's pin and grants are checked, then it runs in
    /// a worker within its own sandbox, or here, loaded again from the same bytes, if it is a
    /// plugin that runs in process.
    fn open_from(
        &self,
        path: &Path,
        bytes: &Content,
        wanted: &dyn Fn(&str) -> bool,
        settings: &HostConfig,
        started: Instant,
    ) -> Result<PluginLibrary, LoadError> {
        let place_by = |isolation| match isolation {
            Isolation::Process => Placement::Worker,
            Isolation::InProcess => Placement::Here,
        };
        let any_isolated = settings.host.isolation == Isolation::Process
            || settings
                .plugins
                .values()
                .any(|p| p.isolation == Some(Isolation::Process));
        let place = |name: Option<&str>| match name {
            Some(name) if !wanted(name) => Placement::Unwanted,
            Some(name) => place_by(settings.isolation_of(name)),
            None if any_isolated => Placement::Worker,
            None => Placement::Here,
        };
        let here = |library| {
            let mut library = PluginLibrary::new(library);
            library.set_load_time(started.elapsed());
            library
        };
        // Without workers (not Linux), an isolated plugin is refused by name: the probe tells it.
        let naming = if any_isolated && cfg!(isolation) {
            Naming::Worker
        } else {
            Naming::Probe
        };
        let opened = Library::open_bytes(
            path,
            bytes,
            &self.shadow,
            &self.probe,
            naming,
            &place,
            settings,
        )?;
        let checked = match opened {
            Opened::Here(library) => return Ok(here(*library)),
            Opened::Checked(checked) => checked,
        };
        let told = checked.name.clone();
        let (trust, hash) = (checked.trust, checked.hash);
        // Once the worker names the plugin, before its library runs anywhere else (in a worker
        // within its own sandbox, or here).
        let admit = |info: &PluginInfo| {
            let name = &info.name;
            match &told {
                // The name the worker's library gives, not the one the probe heard, decides.
                Some(told) => self.probe.same_name(path, hash, told, name)?,
                // That worker was the probe.
                None => self.probe.learned(hash, name),
            }
            if !wanted(name) {
                return Err(LoadError::Unwanted {
                    path: path.to_owned(),
                    name: name.clone(),
                });
            }
            trust.pin(path, name, settings)?;
            crate::capability::check(path, info, &settings.plugin(name).grant)
        };
        let isolated = self.workers.isolate(checked, settings, started, &admit)?;
        let name = isolated.info().name.clone();
        if told.is_some() || settings.isolation_of(&name) == Isolation::Process {
            return Ok(isolated);
        }
        // Only the worker could tell its name: it runs here after all.
        drop(isolated);
        let here_only = |_: Option<&str>| Placement::Here;
        let told = Naming::Told(&name);
        match Library::open_bytes(
            path,
            bytes,
            &self.shadow,
            &self.probe,
            told,
            &here_only,
            settings,
        )? {
            Opened::Here(library) => Ok(here(*library)),
            Opened::Checked(_) => unreachable!("placed here"),
        }
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
    pub(crate) fn loaded_files(&self) -> Vec<PathBuf> {
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

    /// Logs and announces a refusal. `kept`: the plugin that keeps serving, if any.
    fn refused(&self, error: &LoadError, kept: Option<&crate::runtime::Slot>) {
        if let Some(name) = error.plugin() {
            // Counts toward the plugin it names, even from a file it was never seen in.
            self.shared.ledger.refusing(name, error.path());
        }
        // A plugin serving from that file keeps serving, whichever path refused the new
        // content (a reload, `load_all` again, `enable`).
        let serving = kept
            .is_none()
            .then(|| self.registry.find_by_file(error.path()))
            .flatten();
        let kept = kept
            .or(serving.as_deref())
            .and_then(|slot| slot.current())
            .map(|v| {
                let info = v.library().info();
                (info.name.clone(), info.version.clone())
            });
        match &kept {
            Some((name, version)) => {
                tracing::warn!("kept {name} {version}: new file refused: {error}")
            }
            None => tracing::warn!("refused {error}"),
        }
        self.shared.emit(HostEvent::Refused {
            file: error.path().to_owned(),
            reason: error.to_string(),
            kept,
        });
    }
}

/// The plugin `info` from `file` as a candidate to start, with its priority from `config`.
fn candidate(config: &HostConfig, info: &PluginInfo, file: &Path) -> Candidate {
    Candidate {
        info: info.clone(),
        file: file.to_owned(),
        priority: config.plugin(&info.name).priority,
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Lifecycle {
    /// Notes where `library`'s plugin lives and says whether the settings let it run.
    fn admit(&mut self, library: &PluginLibrary) -> bool {
        let info = library.info();
        let enabled = self.config.plugin(&info.name).enabled;
        self.know(&info.name, library.file(), Some(info));
        if !enabled {
            self.not_started(&info.name, library.file());
        }
        enabled
    }

    /// Notes where plugin `name`, disabled in the settings, lives, and says it was not started.
    fn not_started(&mut self, name: &str, file: &Path) {
        self.know(name, file, None);
        // Its file is fine, only switched off: not among the refused files.
        self.ledger.not_refused(file);
        tracing::info!("{name} in {} is disabled: not started", file.display());
    }

    /// Notes that `file` holds plugin `name` (`info`, if its library was opened).
    fn know(&mut self, name: &str, file: &Path, info: Option<&PluginInfo>) {
        self.known.insert(name.to_owned(), file.to_owned());
        self.ledger.seen(name, file, info);
    }

    /// `libraries` as candidates for [`start_order`](crate::dependencies::start_order).
    fn candidates(&self, libraries: &[PluginLibrary]) -> Vec<Candidate> {
        libraries
            .iter()
            .map(|library| candidate(&self.config, library.info(), library.file()))
            .collect()
    }

    /// Keeps `threads` (retiring old versions) to join at shutdown, and lets go of those that
    /// have finished: a host that reloads all day must not keep a dead thread per reload.
    fn retiring(&mut self, threads: impl IntoIterator<Item = JoinHandle<()>>) {
        self.retiring.retain(|t| !t.is_finished());
        self.retiring.extend(threads);
    }

    /// Remembers the file of a refusal that depends on other plugins (a requirement missing
    /// or out of range, a dependent it would break, a cycle), to try it again when they change.
    fn wait_if_passing(&mut self, error: &LoadError) {
        if error.depends_on_others() && !self.waiting.iter().any(|p| p == error.path()) {
            self.waiting.push(error.path().to_owned());
        }
    }
}
