//! Changing the settings of a running host: applying an edited `plughost.toml` (enable and
//! disable through the API are in [`switch`](super::switch)). An edit is checked whole before anything changes (every plugin's config
//! against its schema and by the plugin itself, every requirement of the plugins that would
//! run); a refused edit leaves the running state as it was.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::{error, info, warn};

use super::init_config::{checked_config, CheckedConfig};
use super::{Host, Lifecycle, LoadReport};
use crate::config::{ConfigError, HostConfig};
use crate::dependencies;
use crate::error::LoadError;
use crate::events::HostEvent;
use crate::plugin_info::PluginInfo;
use crate::runtime::{PluginLibrary, RunningPlugin};

impl Host {
    /// Reads the configuration file again and applies it (see
    /// [`reconfigure`](Self::reconfigure)); a file that does not parse, or an edit that is
    /// refused, is logged and announced, and the running state stays. This is what the
    /// watcher calls when the file changes.
    pub fn reload_config(&self) {
        if self.is_closing() {
            return;
        }
        let Some(file) = self.lifecycle().config.file.clone() else {
            return;
        };
        let outcome = HostConfig::reload(&file).and_then(|config| self.reconfigure(config));
        if let Err(e) = outcome {
            error!(
                "refused the edit of {}: {e}; the running configuration stays",
                file.display()
            );
            self.shared.emit(HostEvent::ConfigRefused {
                file,
                reason: e.to_string(),
            });
        }
    }

    /// Applies `new` settings: stops plugins it disables (each before those it requires),
    /// re-initialises plugins whose config changed through the same swap as a reload, starts
    /// plugins it enables in dependency order, and tries again enabled plugins that were not
    /// running. Checks everything first: if any plugin's config does not fit its schema or is
    /// refused by the plugin (its Init included), or a running plugin would lose what it
    /// requires, nothing changes. Returns the plugins changed.
    pub fn reconfigure(&self, new: HostConfig) -> Result<Vec<String>, ConfigError> {
        self.refuse_if_closing("")?;
        let mut lifecycle = self.lifecycle();
        let changed = self.apply_settings(&mut lifecycle, new)?;
        let file = lifecycle.config.file.clone();
        drop(lifecycle);
        Ok(self.applied(file, changed))
    }

    /// [`reconfigure`](Self::reconfigure) under the lifecycle lock, without announcing it.
    /// Returns the plugins changed.
    pub(super) fn apply_settings(
        &self,
        lifecycle: &mut Lifecycle,
        mut new: HostConfig,
    ) -> Result<Vec<String>, ConfigError> {
        // Folders, watching, logging and the admin API were set up at start (possibly by
        // command-line flags, which the file does not know about): they stay.
        warn_restart_only(&lifecycle.config, &new);
        new.admin = lifecycle.config.admin.clone();
        let running_host = &lifecycle.config.host;
        new.host.plugins_dir = running_host.plugins_dir.clone();
        new.host.shadow_dir = running_host.shadow_dir.clone();
        new.host.watch = running_host.watch;
        new.host.debounce = running_host.debounce;
        new.host.log_format = running_host.log_format;
        new.host.probe = running_host.probe.clone();
        new.host.probe_timeout = running_host.probe_timeout;
        let switched = lifecycle.keep_switches(&mut new);
        let new = new;
        // Files refused for what these settings say of trust (a pin, the keys, ownership) are
        // tried again with the new ones: fixing a pin must bring back the plugin it refused.
        let retrust: Vec<PathBuf> = if trust_changed(&lifecycle.config, &new) {
            let serving = self.loaded_files();
            let mut files: Vec<PathBuf> = lifecycle.refused.keys().cloned().collect();
            files.extend(self.discover().unwrap_or_default());
            files.sort();
            files.dedup();
            files.retain(|file| !serving.contains(file));
            files
        } else {
            Vec::new()
        };

        let running: Vec<Arc<RunningPlugin>> = self
            .registry
            .loaded()
            .iter()
            .filter_map(|s| s.current())
            .collect();
        let mut stop = Vec::new();
        let mut reinit = Vec::new();
        let mut staying: Vec<PluginInfo> = Vec::new();
        for version in &running {
            let library = version.library();
            let name = &library.info().name;
            let settings = new.plugin(name);
            if !settings.enabled {
                stop.push(library.info().clone());
                continue;
            }
            if settings.sha256 != lifecycle.config.plugin(name).sha256 {
                pinned_running(&new, version)?;
            }
            staying.push(library.info().clone());
            // A config given through the API stands until the file gives one.
            if lifecycle.configs.contains_key(name) && settings.config.is_empty() {
                continue;
            }
            let json = serde_json::to_vec(&settings.config).unwrap_or_default();
            let checked = checked_config(&new, library.info(), library.file(), &json, true)
                .map_err(|e| load_refusal(&new, e))?;
            if checked.bytes != version.config() {
                ask_plugin(&new, library, &checked, "its new config")?;
                reinit.push((name.clone(), "config changed"));
            } else if runs_elsewhere(&lifecycle.config, &new, name) {
                reinit.push((name.clone(), "isolation, limits or confinement changed"));
            } else if lifecycle.config.plugin(name).grant != settings.grant {
                // Its worker is confined to its grants, and what the host lets it call or
                // publish is bound at Init: a new instance takes the new ones (or the edit is
                // refused, naming what it would no longer be granted).
                reinit.push((name.clone(), "its grants changed"));
            }
        }
        // Plugins the edit switches on, opened to read their descriptors.
        let mut starting: Vec<PluginLibrary> = Vec::new();
        let switched_on: Vec<String> = lifecycle
            .known
            .keys()
            .filter(|name| {
                new.plugin(name).enabled
                    && !lifecycle.config.plugin(name).enabled
                    && !running.iter().any(|v| v.name() == name.as_str())
            })
            .cloned()
            .collect();
        // Enabled plugins that are not running and that the edit does not switch on (refused
        // at start, say, for a config this edit may fix): tried once the edit is applied.
        let stopped: Vec<PathBuf> = lifecycle
            .known
            .iter()
            .filter(|(name, _)| {
                new.plugin(name).enabled
                    && !running.iter().any(|v| v.name() == name.as_str())
                    && !switched_on.contains(name)
            })
            .map(|(_, file)| file.clone())
            .collect();
        for name in switched_on {
            // Where it was last seen, else wherever it is now: files move and get replaced.
            let library = match self.find_in_folder(lifecycle, &name, Some(&new)) {
                Ok(library) => library,
                Err(reason) => {
                    info!("{name} is enabled but does not start: {reason}");
                    continue;
                }
            };
            let json = serde_json::to_vec(&new.plugin(&name).config).unwrap_or_default();
            let checked = checked_config(&new, library.info(), library.file(), &json, true)
                .map_err(|e| load_refusal(&new, e))?;
            ask_plugin(&new, &library, &checked, "its config")?;
            starting.push(library);
        }
        // Every plugin that would run must find what it requires among those that would run.
        let after: Vec<&PluginInfo> = staying
            .iter()
            .chain(starting.iter().map(|l| l.info()))
            .collect();
        let version_of = |name: &str| {
            let found = after.iter().find(|p| p.name == name)?;
            Some(found.version.clone())
        };
        for plugin in &after {
            if let Some(unmet) = dependencies::unmet(plugin, version_of) {
                let file = lifecycle
                    .known
                    .get(&plugin.name)
                    .cloned()
                    .unwrap_or_default();
                let error = unmet.refusal(&file, &plugin.name, |name| {
                    if new.plugin(name).enabled {
                        dependencies::NOT_LOADED.into()
                    } else {
                        "would be disabled".into()
                    }
                });
                return Err(ConfigError::Plugin {
                    path: new.file.clone(),
                    at: None,
                    plugin: plugin.name.clone(),
                    reason: error.reason(),
                    cause: Some(Box::new(error)),
                });
            }
        }

        // Nor may they require each other in a circle.
        for library in &starting {
            if let Some(cycle) = dependencies::cycle_through(library.info(), after.iter().copied())
            {
                let error = LoadError::DependencyCycle {
                    path: library.file().to_owned(),
                    name: library.info().name.clone(),
                    cycle,
                };
                return Err(load_refusal(&new, error));
            }
        }

        // Re-initialise under the new settings, nothing in service yet: if any Init refuses
        // its new config, the new instances are dropped and nothing has changed.
        let old_config = std::mem::replace(&mut lifecycle.config, new);
        let old_api_configs = lifecycle.configs.clone();
        // A config the file now gives a plugin replaces the one given through the API.
        let Lifecycle {
            config, configs, ..
        } = lifecycle;
        configs.retain(|name, _| config.plugin(name).config.is_empty());
        let mut prepared = Vec::new();
        for (name, why) in &reinit {
            let version = running
                .iter()
                .find(|v| v.name() == name.as_str())
                .expect("re-initialised plugins are running");
            info!("{name}: {why}, re-initialising");
            // From the bytes that run now (its shadow copy), not the file, which may hold a
            // newer build that is refused or not yet reloaded: a config edit is not a reload.
            let (file, shadow) = (version.library().file(), version.library().shadow_path());
            match crate::loader::read(shadow)
                .and_then(|bytes| {
                    let mut settings = lifecycle.config.clone();
                    // These bytes passed the signature and pin checks when they were loaded;
                    // the signature beside the file may be a newer build's by now.
                    settings.host.require_signatures = false;
                    settings.plugins.values_mut().for_each(|p| p.sha256 = None);
                    self.open_bytes(file, &bytes, &|_| true, &settings)
                })
                .and_then(|library| self.prepare(lifecycle, library, None))
            {
                Ok(version) => prepared.push(version),
                Err(e) => {
                    let refused = load_refusal(&lifecycle.config, e);
                    lifecycle.config = old_config;
                    lifecycle.configs = old_api_configs;
                    // Shuts the new instances down; the running versions go on (their event
                    // sources, stopped for the hand-over, start again).
                    prepared
                        .into_iter()
                        .for_each(super::admit::Prepared::abandon);
                    return Err(refused);
                }
            }
        }

        // Checked and initialised: apply.
        lifecycle.switched = switched;
        self.publish_settings(lifecycle);
        let mut changed = Vec::new();
        for i in dependencies::stop_order(&stop) {
            let name = &stop[i].name;
            if let Some(slot) = self.registry.slot(name) {
                info!("disabled {name}");
                let retiring = self.take_out_of_service(&slot);
                lifecycle.retiring(retiring);
                changed.push(name.clone());
            }
        }
        for version in prepared {
            let slot = self.commit(lifecycle, version, Instant::now());
            changed.push(slot.name().to_owned());
        }
        // Checked above, so these fail only in the plugin's Init: like a plugin failing at
        // start, it is reported and the rest of the edit stands.
        let mut report = LoadReport::default();
        self.start_in_order(lifecycle, starting, |_| None, true, &mut report);
        changed.extend(report.loaded.into_iter().map(|p| p.name));
        // The stopped plugins, and those waiting on plugins that started.
        let before: Vec<String> = self.plugins().into_iter().map(|p| p.name).collect();
        let mut stopped = stopped;
        for file in retrust {
            if !stopped.contains(&file) {
                stopped.push(file);
            }
        }
        self.retry_waiting(lifecycle, stopped);
        changed.extend(
            self.plugins()
                .into_iter()
                .map(|p| p.name)
                .filter(|name| !before.contains(name)),
        );
        Ok(changed)
    }

    /// Logs and announces applied settings, from `file` if they came from one; returns
    /// `changed`, the plugins they changed.
    pub(super) fn applied(&self, file: Option<PathBuf>, changed: Vec<String>) -> Vec<String> {
        info!(
            "applied {}: {}",
            file.as_deref()
                .map_or("the new settings".into(), |f| f.display().to_string()),
            if changed.is_empty() {
                "no plugin changed".into()
            } else {
                format!("changed {}", changed.join(", "))
            }
        );
        self.shared.emit(HostEvent::ConfigApplied {
            file,
            changed: changed.clone(),
        });
        changed
    }
}

/// Asks the plugin of `library` whether it accepts `checked` (its `validate_config`); if
/// not, refuses the change with the plugin's reason, secrets masked. `what`: "its config".
fn ask_plugin(
    config: &HostConfig,
    library: &PluginLibrary,
    checked: &CheckedConfig,
    what: &str,
) -> Result<(), ConfigError> {
    let name = &library.info().name;
    checked
        .ask(|bytes| library.validate_config(bytes, config.host.check_timeout))
        .map_err(|reason| ConfigError::Plugin {
            path: config.file.clone(),
            at: None,
            plugin: name.to_owned(),
            reason: format!("plugin {name} refuses {what}: {reason}"),
            // Kept as the plugin's refusal, so a caller can tell an invalid config (the admin
            // API's 422) from other refused changes.
            cause: Some(Box::new(LoadError::ConfigRefused {
                path: library.file().to_owned(),
                name: name.to_owned(),
                reason,
            })),
        })
}

/// A refused change, naming the file the settings came from.
impl Host {
    /// Refuses a change about `plugin` (or none, `""`) once the host is shutting down: the
    /// one rule for edits, enable and disable, and configs given through the API.
    pub(super) fn refuse_if_closing(&self, plugin: &str) -> Result<(), ConfigError> {
        if self.is_closing() {
            let reason = "the host is shutting down".into();
            return Err(refusal(&self.config(), plugin, reason));
        }
        Ok(())
    }
}

pub(super) fn refusal(config: &HostConfig, plugin: &str, reason: String) -> ConfigError {
    ConfigError::Plugin {
        path: config.file.clone(),
        at: None,
        plugin: plugin.to_owned(),
        reason,
        cause: None,
    }
}

/// A plugin's refusal as a refused change: a config that does not fit its schema points at
/// its place in the file; other reasons name the plugin's file.
fn load_refusal(config: &HostConfig, error: LoadError) -> ConfigError {
    let (at, reason) = match &error {
        LoadError::Config {
            name,
            key,
            reason,
            at,
            ..
        } => (
            at.clone(),
            format!("plugin {name}: config key `{key}` {reason}"),
        ),
        other => (None, other.to_string()),
    };
    ConfigError::Plugin {
        path: config.file.clone(),
        at,
        plugin: error.plugin().unwrap_or_default().to_owned(),
        reason,
        cause: Some(Box::new(error)),
    }
}

/// Refuses an edit that pins `version`'s plugin to a digest other than that of the bytes it
/// runs (its private copy): the operator must install the pinned build first, or pin this one.
fn pinned_running(new: &HostConfig, version: &RunningPlugin) -> Result<(), ConfigError> {
    let name = version.name();
    let Some(expected) = new.plugin(name).sha256 else {
        return Ok(());
    };
    let library = version.library();
    let bytes = crate::loader::read(library.shadow_path()).map_err(|e| load_refusal(new, e))?;
    let found = crate::config::Sha256Digest::of(&bytes);
    if found == expected {
        return Ok(());
    }
    Err(refusal(
        new,
        name,
        format!(
            "plugins.{name}.sha256 pins {expected}, but the build of {name} running now is \
             {found}: install the pinned build first, or pin the running one"
        ),
    ))
}

/// Whether `new` says other than `old` about which content may load: a plugin's pinned
/// digest or grants, the signature rule and keys, the ownership rule.
fn trust_changed(old: &HostConfig, new: &HostConfig) -> bool {
    let pins = |config: &HostConfig| -> Vec<(String, Option<_>, Vec<_>)> {
        config
            .plugins
            .iter()
            .map(|(name, settings)| (name.clone(), settings.sha256, settings.grant.clone()))
            .collect()
    };
    old.host.require_signatures != new.host.require_signatures
        || old.host.trusted_keys != new.host.trusted_keys
        || old.host.check_ownership != new.host.check_ownership
        || pins(old) != pins(new)
}

/// Whether plugin `name` must be started again to run as `new` says: in a worker instead of
/// in this process or the other way round, or in a worker with other resource limits or
/// confinement.
fn runs_elsewhere(old: &HostConfig, new: &HostConfig, name: &str) -> bool {
    let limits = |config: &HostConfig| {
        let settings = config.plugin(name);
        (
            settings.memory,
            settings.cpu,
            settings.max_open_files,
            settings.max_processes,
        )
    };
    old.isolation_of(name) != new.isolation_of(name)
        || (new.isolation_of(name) == crate::config::Isolation::Process
            && (limits(old) != limits(new) || old.host.confinement != new.host.confinement))
}

/// Settings a running host cannot change: say so, in one line, instead of ignoring the edit
/// silently. Compared as the files say them (flags may have changed what runs).
fn warn_restart_only(old: &HostConfig, new: &HostConfig) {
    let (a, b) = (&old.file_host, &new.file_host);
    let mut changed = Vec::new();
    let mut host = |key: &'static str, differs: bool| {
        if differs {
            changed.push(format!("host.{key}"));
        }
    };
    host("plugins_dir", a.plugins_dir != b.plugins_dir);
    host("shadow_dir", a.shadow_dir != b.shadow_dir);
    host("watch", a.watch != b.watch);
    host("debounce", a.debounce != b.debounce);
    host("log_format", a.log_format != b.log_format);
    host("probe", a.probe != b.probe);
    host("probe_timeout", a.probe_timeout != b.probe_timeout);
    host("cgroup", a.cgroup != b.cgroup);
    // The admin API is set up once, at start.
    let (a, b) = (&old.file_admin, &new.file_admin);
    let mut admin = |key: &'static str, differs: bool| {
        if differs {
            changed.push(format!("admin.{key}"));
        }
    };
    admin("listen", a.listen != b.listen);
    admin("token", a.token != b.token);
    admin("max_body", a.max_body != b.max_body);
    admin("rate_limit", a.rate_limit != b.rate_limit);
    admin("write_config", a.write_config != b.write_config);
    if !changed.is_empty() {
        warn!(
            "{} changed; it takes effect when plughost restarts",
            changed.join(", ")
        );
    }
}
