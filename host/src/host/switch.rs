//! Enable and disable through the API ([`Host::enable`], [`Host::disable`]), and how that
//! choice stands through later edits of `plughost.toml` (the latest word wins).

use std::collections::HashMap;
use std::time::Instant;

use tracing::info;

use super::reconfigure::refusal;
use super::{Host, Lifecycle, Switch};
use crate::config::{ConfigError, HostConfig};
use crate::error::{HostError, LoadError};
use crate::events::HostEvent;
use crate::runtime::PluginLibrary;

impl Host {
    /// Disables plugin `name`: it stays off across reloads and restarts of its file, and if it
    /// runs it is shut down and unloaded (its file is left alone). Refused while a running
    /// plugin requires it. The choice stands through edits of the configuration file until an
    /// edit changes this plugin's `enabled`.
    pub fn disable(&self, name: &str) -> Result<(), ConfigError> {
        self.refuse_if_closing(name)?;
        let version = {
            let mut lifecycle = self.lifecycle();
            let dependents = self.dependents_of(name);
            if !dependents.is_empty() {
                return Err(refusal(
                    &lifecycle.config,
                    name,
                    format!(
                        "cannot disable {name}: {} require{} it (disable {} first)",
                        dependents.join(", "),
                        if dependents.len() == 1 { "s" } else { "" },
                        if dependents.len() == 1 { "it" } else { "them" },
                    ),
                ));
            }
            lifecycle.switch(name, false);
            self.publish_settings(&lifecycle);
            let version = self.take_from_slot(name, "it was disabled");
            info!("disabled {name}");
            // A plugin refused because it would have broken this one may start now.
            self.retry_waiting(&mut lifecycle, Vec::new());
            version
        };
        if let Some(version) = version {
            // Out of service already; the wait for calls in flight happens outside the lock.
            // A failed Shutdown is logged there; the plugin is disabled all the same.
            let _ = self.retire_and_report(version);
        }
        self.shared.emit(HostEvent::ConfigApplied {
            file: None,
            changed: vec![name.to_owned()],
        });
        Ok(())
    }

    /// Enables plugin `name` and starts it from the plugins folder if it is not running. If
    /// it cannot start, the setting stays as it was and the reason is returned. Like
    /// [`disable`](Self::disable), the choice stands through edits of the file that leave this
    /// plugin's `enabled` as it was.
    pub fn enable(&self, name: &str) -> Result<(), ConfigError> {
        self.refuse_if_closing(name)?;
        let mut lifecycle = self.lifecycle();
        let before = (
            lifecycle.config.plugin(name).enabled,
            lifecycle.switched.get(name).copied(),
        );
        lifecycle.switch(name, true);
        if self.registry.slot(name).and_then(|s| s.current()).is_none() {
            let started = self
                .find_in_folder(&mut lifecycle, name, None)
                .map_err(|e| e.to_string())
                .and_then(|library| {
                    self.install(&mut lifecycle, library, None, Instant::now())
                        .map_err(|e| {
                            self.refused(&e, None);
                            e.to_string()
                        })
                });
            if let Err(reason) = started {
                // As it was: the setting, and whether the API had switched it.
                let (enabled, switched) = before;
                lifecycle.switch(name, enabled);
                match switched {
                    Some(switched) => lifecycle.switched.insert(name.to_owned(), switched),
                    None => lifecycle.switched.remove(name),
                };
                return Err(refusal(&lifecycle.config, name, reason));
            }
        }
        self.publish_settings(&lifecycle);
        info!("enabled {name}");
        // Plugins waiting for this one may start now.
        self.retry_waiting(&mut lifecycle, Vec::new());
        drop(lifecycle);
        self.shared.emit(HostEvent::ConfigApplied {
            file: None,
            changed: vec![name.to_owned()],
        });
        Ok(())
    }

    /// Opens the library of plugin `name`: from the file it was last seen in, or else by
    /// looking through the plugins folder.
    /// `settings`: those it is to run with, if not the ones in force.
    pub(super) fn find_in_folder(
        &self,
        lifecycle: &mut Lifecycle,
        name: &str,
        settings: Option<&HostConfig>,
    ) -> Result<PluginLibrary, HostError> {
        let in_force = lifecycle.config.clone();
        let settings = settings.unwrap_or(&in_force);
        if let Some(file) = lifecycle.known.get(name).cloned() {
            if let Ok(library) = self.open_wanted(&file, &|_| true, settings) {
                if library.info().name == name {
                    return Ok(library);
                }
            }
        }
        let loaded = self.loaded_files();
        for file in self.discover()? {
            if loaded.contains(&file) {
                continue;
            }
            // Only `name`'s library is opened here (when its probe tells names).
            match self.open_wanted(&file, &|found| found == name, settings) {
                Ok(library) => {
                    lifecycle.know(&library.info().name, &file, Some(library.info()));
                    if library.info().name == name {
                        return Ok(library);
                    }
                }
                Err(LoadError::Unwanted { name: other, .. }) => {
                    lifecycle.know(&other, &file, None);
                }
                Err(_) => {}
            }
        }
        Err(HostError::NoSuchPlugin {
            dir: self.plugins_dir.clone(),
            name: name.to_owned(),
            refused: Vec::new(),
        })
    }
}

impl Lifecycle {
    /// Records that the API switched plugin `name` on or off, and sets it in the settings.
    pub(super) fn switch(&mut self, name: &str, enabled: bool) {
        let in_file = match self.switched.get(name) {
            Some(switch) => switch.in_file,
            None => self.config.plugin(name).enabled,
        };
        self.switched
            .insert(name.to_owned(), Switch { in_file, enabled });
        self.config
            .plugins
            .entry(name.to_owned())
            .or_default()
            .enabled = enabled;
    }

    /// Carries the API's enable / disable over to `new` settings read from the file, except
    /// for plugins whose `enabled` the file itself changed since: the latest word wins.
    /// Returns the switches still standing, to keep once `new` is applied.
    pub(super) fn keep_switches(&self, new: &mut HostConfig) -> HashMap<String, Switch> {
        let mut kept = self.switched.clone();
        kept.retain(|name, switch| {
            if new.plugin(name).enabled != switch.in_file {
                return false;
            }
            new.plugins.entry(name.clone()).or_default().enabled = switch.enabled;
            true
        });
        kept
    }
}
