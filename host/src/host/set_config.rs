//! Setting one plugin's config on request ([`Host::set_plugin_config`]): the settings in
//! force with that plugin's table replaced, applied through the path of a live edit of
//! `plughost.toml` ([`reconfigure`](super::reconfigure)), and written back into the file on
//! request through [`config::edit`](crate::config::edit).

use serde_json::{Map, Value};

use super::Host;
use crate::config::edit::Edit;
use crate::config::schema::MASK;
use crate::config::{ConfigError, HostConfig};

/// What [`Host::set_plugin_config`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct ConfigChange {
    /// The plugins started, stopped or re-initialised (none if the config is what runs
    /// already).
    pub changed: Vec<String>,
    /// With `write_back`, why the settings file could not be written, if it could not. The
    /// change stands in the running host all the same.
    pub write_error: Option<ConfigError>,
}

impl Host {
    /// Sets plugin `name`'s `config` (its `[plugins.NAME.config]` table) while the host runs:
    /// the settings in force, with that table replaced, are applied as an edit of
    /// `plughost.toml` is ([`reconfigure`](Self::reconfigure)): checked against the plugin's
    /// schema and by the plugin itself, the plugin re-initialised through the reload swap, and
    /// the change refused whole, with the same messages, if anything refuses it. Returns the
    /// plugins changed (none if the config is what runs already).
    ///
    /// Without `write_back`, the change lives in the running host only: the file is left as
    /// it is, and a later edit of the file (which the watcher applies) wins, as does a restart.
    /// With `write_back`, the table is also written into the settings file, keeping the rest of
    /// it as it was (comments, layout, other values): a value the config keeps stays as the
    /// file writes it, so a `${VAR}` whose value is unchanged stays `${VAR}` and no secret is
    /// written in its place; the file is checked before anything changes, and written once
    /// the change is applied (a watching host then reads it and finds nothing to change). If
    /// writing fails, the change stands in the running host and
    /// [`ConfigChange::write_error`] says why the file was not updated.
    ///
    /// A value given as `"***"` where the config in force is shown masked (a sensitive key, a
    /// `${VAR}` value, any key of a plugin whose schema is unknown) keeps the value in force:
    /// a config read from [`masked_config`](HostConfig::masked_config), changed and sent back
    /// does not replace its secrets with the mask.
    ///
    /// Errors: [`ConfigError::UnknownPlugin`] for a plugin the host has never seen in a file
    /// and the settings do not name; [`ConfigError::NoFile`] for `write_back` when the settings
    /// come from no file; otherwise as [`reconfigure`](Self::reconfigure).
    pub fn set_plugin_config(
        &self,
        name: &str,
        config: Map<String, Value>,
        write_back: bool,
    ) -> Result<ConfigChange, ConfigError> {
        self.refuse_if_closing(name)?;
        let mut lifecycle = self.lifecycle();
        let in_force = &lifecycle.config;
        let known = self.shared.ledger.knows(name)
            || self.registry.is_serving(name)
            || in_force.plugins.contains_key(name);
        if !known {
            return Err(ConfigError::UnknownPlugin {
                path: in_force.file.clone(),
                plugin: name.to_owned(),
            });
        }
        let info = self.plugin_status(name).and_then(|status| status.info);
        let config = secrets_kept(in_force, name, info.as_ref(), config);
        let (new, edit) = if write_back {
            let file = in_force.file.clone().ok_or_else(|| ConfigError::NoFile {
                plugin: name.to_owned(),
            })?;
            // The file as it will read: exactly what the watcher applies once it is written.
            let edit = Edit::plugin_config(&file, name, &config)?;
            (edit.config.clone(), Some(edit))
        } else {
            let mut new = in_force.with_plugin_config(name, config);
            // Enable and disable through the API, as the file has them: `apply_settings`
            // carries the API's choice over, as for an edit of the file.
            for (plugin, switch) in &lifecycle.switched {
                new.plugins.entry(plugin.clone()).or_default().enabled = switch.in_file;
            }
            (new, None)
        };
        let changed = self.apply_settings(&mut lifecycle, new)?;
        // Written while the lock is held: a watcher reading it applies it after this, and
        // finds nothing to change.
        let write_error = edit.as_ref().and_then(|edit| edit.write().err());
        let file = edit.and_then(|_| lifecycle.config.file.clone());
        drop(lifecycle);
        let changed = self.applied(file, changed);
        if let Some(error) = &write_error {
            tracing::warn!("{name}'s new config is applied, but not written: {error}");
        }
        Ok(ConfigChange {
            changed,
            write_error,
        })
    }
}

/// `config` with every `"***"` that stands where `in_force` shows plugin `name`'s value
/// masked replaced by that value.
fn secrets_kept(
    in_force: &HostConfig,
    name: &str,
    info: Option<&crate::PluginInfo>,
    mut config: Map<String, Value>,
) -> Map<String, Value> {
    let shown = in_force.masked_config(name, info);
    let current = in_force.plugin(name).config;
    for (key, value) in &mut config {
        let masked = shown.get(key).and_then(Value::as_str) == Some(MASK);
        if masked && value.as_str() == Some(MASK) {
            if let Some(real) = current.get(key) {
                value.clone_from(real);
            }
        }
    }
    config
}
