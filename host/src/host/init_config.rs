//! The configuration a plugin is started with: the JSON its Init receives, checked against the
//! schema in its descriptor (defaults filled in, unknown keys warned about), then, where a
//! change is being considered, asked of the plugin itself (`validate_config`). Secrets (values
//! of `sensitive` keys) are masked in every message that could quote them.

use std::path::Path;

use serde_json::{Map, Value};
use tracing::warn;

use super::Host;
use crate::config::{schema, HostConfig};
use crate::error::{CallError, LoadError};
use crate::plugin_info::PluginInfo;
use crate::runtime::PluginLibrary;

/// An Init configuration that fits the plugin's schema, and the secrets in it.
pub(super) struct CheckedConfig {
    /// The configuration with the schema's defaults filled in (empty if the bytes given were
    /// not a JSON object: those are passed on as they are, for the plugin to refuse).
    pub(super) config: Map<String, Value>,
    /// What Init gets.
    pub(super) bytes: Vec<u8>,
    /// Every secret in it, to mask in messages.
    pub(super) secrets: Vec<String>,
    /// A warning for each key the schema does not know (passed on all the same).
    pub(super) unknown: Vec<String>,
}

impl CheckedConfig {
    /// Asks the plugin, through `validate` (its `validate_config`), whether it would accept
    /// this configuration; if not, its reason, secrets masked.
    pub(super) fn ask(
        &self,
        validate: impl FnOnce(&[u8]) -> Result<(), CallError>,
    ) -> Result<(), String> {
        validate(&self.bytes).map_err(|e| {
            let reason = match e {
                CallError::Failed { message, .. } => message,
                other => other.to_string(),
            };
            schema::scrub(&reason, &self.secrets)
        })
    }

    /// Logs the warnings about unknown keys.
    pub(super) fn warn_unknown(&self) {
        for warning in &self.unknown {
            warn!("{warning}");
        }
    }
}

impl Host {
    /// Checks `config` (JSON) as `library`'s Init configuration without starting it: against
    /// the plugin's schema, with the defaults filled in, then by the plugin itself. Secrets
    /// are masked in the refusal.
    pub fn check_init_config(
        &self,
        library: &PluginLibrary,
        config: &[u8],
    ) -> Result<(), LoadError> {
        let checked = checked_config(
            &self.config(),
            library.info(),
            library.file(),
            config,
            false,
        )?;
        checked.warn_unknown();
        checked
            .ask(|bytes| library.validate_config(bytes, self.config().host.check_timeout))
            .map_err(|reason| LoadError::ConfigRefused {
                path: library.file().to_owned(),
                name: library.info().name.clone(),
                reason,
            })
    }
}

/// Checks `given` (JSON) against the schema of `info`'s plugin, from `file`, and fills in the
/// defaults. `from_settings`: the configuration came from the settings, so errors and warnings
/// point into `config`'s file. Bytes that are not a JSON object are passed on as they are, for
/// the plugin to refuse.
pub(super) fn checked_config(
    config: &HostConfig,
    info: &PluginInfo,
    file: &Path,
    given: &[u8],
    from_settings: bool,
) -> Result<CheckedConfig, LoadError> {
    let given_map = if given.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<serde_json::Value>(given) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => {
                return Ok(CheckedConfig {
                    config: Map::new(),
                    bytes: given.to_vec(),
                    secrets: Vec::new(),
                    unknown: Vec::new(),
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
    let fitted =
        schema::fit_with(info, &given_map, &origin).map_err(|problem| LoadError::Config {
            path: file.to_owned(),
            name: info.name.clone(),
            at: at(&problem.key),
            key: problem.key,
            reason: problem.reason,
        })?;
    let unknown = fitted
        .unknown
        .iter()
        .map(|key| {
            let at = at(key).map(|a| format!("{a}: ")).unwrap_or_default();
            format!(
                "{at}plugin {}: unknown config key `{key}` (not in its schema; passed on)",
                info.name
            )
        })
        .collect();
    Ok(CheckedConfig {
        bytes: serde_json::to_vec(&fitted.config).unwrap_or_default(),
        secrets: schema::secrets(info, &fitted.config),
        config: fitted.config,
        unknown,
    })
}

/// `error` with any secret the plugin quoted in its Init failure masked.
pub(super) fn scrub_init_error(error: LoadError, secrets: &[String]) -> LoadError {
    match error {
        LoadError::Init { path, name, cause } => {
            let cause = match cause {
                CallError::Failed { plugin, message } => CallError::Failed {
                    plugin,
                    message: schema::scrub(&message, secrets),
                },
                CallError::Panicked { plugin, message } => CallError::Panicked {
                    plugin,
                    message: schema::scrub(&message, secrets),
                },
                other => other,
            };
            LoadError::Init { path, name, cause }
        }
        other => other,
    }
}
