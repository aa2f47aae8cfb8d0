//! The [`Host`]: a plugins folder, a shadow folder and a registry, with the operations that
//! move plugins through their life: scan, load, start, call, unload, shut down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, info_span, warn};

use crate::discovery;
use crate::dispatch::PluginHandle;
use crate::error::{CallError, HostError, LoadError};
use crate::instance::RunningPlugin;
use crate::library::PluginLibrary;
use crate::metadata::PluginInfo;
use crate::registry::Registry;
use crate::shadow::{self, ShadowDir};

/// Where a host finds plugins and keeps its shadow copies.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The folder scanned for plugin libraries (non-recursive). Default: `plugins`.
    pub plugins_dir: PathBuf,
    /// Where private copies of loaded libraries go. Default: `plughost-shadow` in the system's
    /// temporary folder.
    pub shadow_dir: PathBuf,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            plugins_dir: PathBuf::from("plugins"),
            shadow_dir: shadow::default_shadow_dir(),
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
        })
    }

    /// The options it was made with.
    pub fn options(&self) -> &HostOptions {
        &self.options
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

    /// Starts an opened library: refuses a name already running, calls Init with `config`
    /// (JSON; empty means `{}`), and registers it.
    pub fn start(&self, library: PluginLibrary, config: &[u8]) -> Result<PluginHandle, LoadError> {
        let info = library.info();
        let _span = info_span!("plugin", name = %info.name, version = %info.version).entered();
        // Check before Init, so a duplicate never runs; `insert` checks again under its lock.
        if let Some(existing) = self.registry.file_of(&info.name) {
            return Err(LoadError::DuplicateName {
                path: library.file().to_owned(),
                name: info.name.clone(),
                existing,
            });
        }
        let started = Instant::now();
        let load_time = library.load_time();
        let running = RunningPlugin::start(library, config)?;
        let plugin = self.registry.insert(running).map_err(|(refused, error)| {
            drop(refused);
            error
        })?;
        let info = plugin.library().info();
        info!(
            "loaded {} {} from {} in {:.1} ms (plugin-api {})",
            info.name,
            info.version,
            plugin.library().file().display(),
            (load_time + started.elapsed()).as_secs_f64() * 1e3,
            info.api_version,
        );
        Ok(PluginHandle::new(plugin))
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
                Ok(handle) => report.loaded.push(handle.info().clone()),
                Err(error) => {
                    warn!("refused {error}");
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

    /// A handle to call the running plugin `name`.
    pub fn handle(&self, name: &str) -> Result<PluginHandle, CallError> {
        self.registry
            .get(name)
            .map(PluginHandle::new)
            .ok_or_else(|| CallError::NotFound {
                plugin: name.to_owned(),
            })
    }

    /// The running plugins, oldest first.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.registry
            .list()
            .iter()
            .map(|p| p.library().info().clone())
            .collect()
    }

    /// Takes a plugin out of service: Shutdown, then unload. If handles to it are still held,
    /// Shutdown runs when the last one is dropped.
    pub fn unload(&self, name: &str) -> Result<(), CallError> {
        let plugin = self
            .registry
            .remove(name)
            .ok_or_else(|| CallError::NotFound {
                plugin: name.to_owned(),
            })?;
        stop(plugin)
    }

    /// Shuts every plugin down, newest first, and unloads them.
    pub fn shutdown(&self) {
        for plugin in self.registry.drain_newest_first() {
            // Errors are logged by `stop`; shutdown goes on with the others.
            let _ = stop(plugin);
        }
    }
}

/// Shuts a plugin down (now, or when its last handle goes) and logs the outcome.
fn stop(plugin: Arc<RunningPlugin>) -> Result<(), CallError> {
    let info = plugin.library().info().clone();
    let _span = info_span!("plugin", name = %info.name, version = %info.version).entered();
    match Arc::try_unwrap(plugin) {
        Ok(plugin) => {
            let result = plugin.shutdown();
            match &result {
                Ok(()) => info!("unloaded {} {}", info.name, info.version),
                Err(e) => warn!(
                    "unloaded {} {} after a failed shutdown: {e}",
                    info.name, info.version
                ),
            }
            result
        }
        Err(plugin) => {
            info!(
                "{} {} leaves the registry; it shuts down when its last {} handle(s) are dropped",
                info.name,
                info.version,
                Arc::strong_count(&plugin) - 1
            );
            Ok(())
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shutdown();
    }
}
