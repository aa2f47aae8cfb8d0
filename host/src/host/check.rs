//! `plughost config check`: the settings and every plugin's config checked as `plughost run`
//! would check them (schema, the plugin's own `validate_config`, requirements, start order),
//! reading descriptors only and starting nothing.

use std::path::PathBuf;

use super::init_config::checked_config;
use super::{candidate, Host};
use crate::config::{schema, HostConfig};
use crate::dependencies;
use crate::error::{CallError, HostError, LoadError};
use crate::plugin_info::PluginInfo;

/// What [`Host::check_config`] found.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ConfigReport {
    /// Where the settings came from: the file, or the built-in defaults.
    pub source: String,
    /// The effective configuration as TOML: defaults filled in, secrets shown as `***`.
    pub effective: String,
    /// The order the enabled plugins would start in.
    pub start_order: Vec<String>,
    /// What `plughost run` would refuse, a line each, naming the file or the place in it.
    pub problems: Vec<String>,
    /// What it would only warn about: unknown config keys, settings for absent plugins.
    pub warnings: Vec<String>,
}

impl Host {
    /// Checks the settings and every plugin in the folder without starting any: each
    /// library must open, each config fit its plugin's schema and be accepted by the plugin
    /// (for enabled plugins), and each requirement be met. Returns the effective configuration
    /// and every problem found.
    pub fn check_config(&self) -> Result<ConfigReport, HostError> {
        let config = self.config();
        let limit = config.host.check_timeout;
        let mut libraries = Vec::new();
        let mut refused = Vec::new();
        for path in self.discover()? {
            match self.open(&path) {
                Ok(library) => libraries.push(library),
                Err(error) => refused.push(error),
            }
        }
        let plugins: Vec<Surveyed<'_>> = libraries
            .iter()
            .map(|library| Surveyed {
                info: library.info(),
                file: library.file().to_owned(),
                ask: Box::new(move |bytes| library.validate_config(bytes, limit)),
            })
            .collect();
        Ok(survey(&config, &plugins, &refused))
    }
}

/// Asks a plugin whether it accepts a config (its `validate_config`).
type Ask<'a> = Box<dyn Fn(&[u8]) -> Result<(), CallError> + 'a>;

/// One plugin found, with the way to ask it about a config.
struct Surveyed<'a> {
    info: &'a PluginInfo,
    file: PathBuf,
    ask: Ask<'a>,
}

/// The report on `config`, for `plugins` found in the folder and files `refused` there.
fn survey(config: &HostConfig, plugins: &[Surveyed<'_>], refused: &[LoadError]) -> ConfigReport {
    // `plughost run` would refuse such a file: as much a problem as a config it would refuse.
    let mut problems: Vec<String> = refused.iter().map(ToString::to_string).collect();
    let mut warnings = Vec::new();
    let at = |keys: &[&str]| {
        config
            .locate(keys)
            .map(|a| format!("{a}: "))
            .unwrap_or_default()
    };
    let mut effective = toml::Table::new();
    if let Ok(host) = toml::Value::try_from(&config.host) {
        effective.insert("host".into(), host);
    }
    // The token shows as `***` (`Secret` serializes so).
    if let Ok(admin) = toml::Value::try_from(&config.admin) {
        effective.insert("admin".into(), admin);
    }
    let mut tables = toml::Table::new();
    let mut candidates = Vec::new();
    for plugin in plugins {
        let info = plugin.info;
        let settings = config.plugin(&info.name);
        let mut table = toml::Table::new();
        table.insert("enabled".into(), settings.enabled.into());
        table.insert("priority".into(), settings.priority.into());
        if let Some(timeout) = settings.timeout {
            let timeout = humantime::format_duration(timeout).to_string();
            table.insert("timeout".into(), timeout.into());
        }
        if let Some(digest) = settings.sha256 {
            table.insert("sha256".into(), digest.to_string().into());
        }
        let grants: Vec<toml::Value> = settings
            .grant
            .iter()
            .map(|g| g.to_string().into())
            .collect();
        table.insert("grant".into(), grants.into());
        let json = serde_json::to_vec(&settings.config).unwrap_or_default();
        match checked_config(config, info, &plugin.file, &json, true) {
            Ok(checked) => {
                warnings.extend(checked.unknown.iter().cloned());
                if settings.enabled {
                    if let Err(reason) = checked.ask(&plugin.ask) {
                        // Where the config is: its table in the file (or the plugin's table,
                        // or the file); the library itself without a file.
                        let place = config
                            .locate(&["plugins", &info.name, "config"])
                            .map_or_else(|| plugin.file.display().to_string(), |a| a.to_string());
                        problems.push(format!(
                            "{place}: plugin {} refuses its config: {reason}",
                            info.name
                        ));
                    }
                }
                let shown = serde_json::Value::Object(schema::masked(info, &checked.config));
                if let Ok(value) = toml::Value::try_from(&shown) {
                    table.insert("config".into(), value);
                }
            }
            // Said from the file's point of view: the place first, then the plugin.
            Err(LoadError::Config {
                at: Some(at),
                name,
                key,
                reason,
                ..
            }) => problems.push(format!("{at}: plugin {name}: config key `{key}` {reason}")),
            Err(other) => problems.push(other.to_string()),
        }
        tables.insert(info.name.clone(), table.into());
        if settings.enabled {
            candidates.push(candidate(config, info, &plugin.file));
        }
    }
    // Plugins whose file was read far enough to name them (refused for a pin or a grant,
    // say) are in the folder: the refusal says what is wrong with them.
    let named: Vec<&str> = refused.iter().filter_map(LoadError::plugin).collect();
    for name in config.plugins.keys() {
        if !tables.contains_key(name) && !named.contains(&name.as_str()) {
            warnings.push(format!(
                "{}no plugin named {} in {}",
                at(&["plugins", name]),
                crate::plugin_info::shown(name),
                config.host.plugins_dir.display()
            ));
        }
    }
    let plan = dependencies::start_order(&candidates, &[], &|n| !config.plugin(n).enabled);
    problems.extend(plan.refused.iter().map(|(_, e)| e.to_string()));
    effective.insert("plugins".into(), tables.into());
    ConfigReport {
        // Not "plughost.toml": without a file the settings are the built-in defaults.
        source: config.file.as_ref().map_or_else(
            || "the built-in defaults (no configuration file)".to_owned(),
            |f| f.display().to_string(),
        ),
        effective: toml::to_string_pretty(&effective).unwrap_or_default(),
        start_order: plan
            .order
            .iter()
            .map(|&i| candidates[i].info.name.clone())
            .collect(),
        problems,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin_info::{ConfigKey, Requirement};
    use std::path::Path;

    fn info(name: &str, requires: &[&str], schema: Vec<ConfigKey>) -> PluginInfo {
        PluginInfo {
            config_schema: schema,
            dependencies: requires
                .iter()
                .map(|n| Requirement {
                    name: (*n).into(),
                    range: "^1".parse().unwrap(),
                })
                .collect(),
            ..PluginInfo::named(name, "1.3.0")
        }
    }

    fn key(name: &str, required: bool, sensitive: bool) -> ConfigKey {
        ConfigKey {
            key: name.into(),
            ty: "string",
            required,
            sensitive,
            default: None,
            description: String::new(),
        }
    }

    fn surveyed<'a>(
        info: &'a PluginInfo,
        ask: impl Fn(&[u8]) -> Result<(), CallError> + 'a,
    ) -> Surveyed<'a> {
        Surveyed {
            info,
            file: PathBuf::from(format!("lib{}.so", info.name)),
            ask: Box::new(ask),
        }
    }

    fn settings(text: &str) -> HostConfig {
        HostConfig::parse(Path::new("plughost.toml"), text).unwrap()
    }

    #[test]
    fn a_good_configuration_has_no_problems_and_a_start_order() {
        let storage = info("storage", &[], vec![key("path", true, false)]);
        let notes = info("notes", &["storage"], vec![]);
        let plugins = [surveyed(&notes, |_| Ok(())), surveyed(&storage, |_| Ok(()))];
        let config = settings("[plugins.storage.config]\npath = \"/data\"\n");
        let report = survey(&config, &plugins, &[]);
        assert_eq!(report.problems, Vec::<String>::new());
        assert_eq!(report.start_order, ["storage", "notes"]);
        assert_eq!(report.source, "plughost.toml");
        assert!(
            report.effective.contains("path = \"/data\""),
            "{}",
            report.effective
        );
    }

    #[test]
    fn problems_name_the_place_and_never_a_secret() {
        let storage = info(
            "storage",
            &[],
            vec![key("path", true, false), key("token", false, true)],
        );
        let notes = info("notes", &["storage"], vec![]);
        // The plugin quotes the secret it was given; the report must not.
        let plugins = [
            surveyed(&storage, |_| {
                Err(CallError::Failed {
                    plugin: "storage".into(),
                    message: "token hunter2 was revoked".into(),
                })
            }),
            surveyed(&notes, |_| Ok(())),
        ];
        let config = settings(
            "[plugins.storage.config]\npath = \"/d\"\ntoken = \"hunter2\"\ncolour = \"red\"\n\
             [plugins.absent]\nenabled = true\n[admin]\ntoken = \"admin-s3cret\"\n",
        );
        let report = survey(&config, &plugins, &[]);
        assert!(
            !report.effective.contains("admin-s3cret")
                && report.effective.contains("token = \"***\""),
            "{}",
            report.effective
        );
        assert_eq!(
            report.problems,
            ["plughost.toml:1:18: plugin storage refuses its config: token *** was revoked"]
        );
        assert!(
            !report.effective.contains("hunter2"),
            "{}",
            report.effective
        );
        assert_eq!(
            report.warnings,
            [
                "plughost.toml:4:1: plugin storage: unknown config key `colour` (not in its \
                 schema; passed on)",
                "plughost.toml:5:10: no plugin named absent in plugins",
            ]
        );
        // A config that does not fit, and a requirement switched off.
        let config = settings("[plugins.storage]\nenabled = false\n");
        let report = survey(&config, &plugins, &[]);
        assert_eq!(
            report.problems,
            [
                "plughost.toml:1:10: plugin storage: config key `path` is required (string) but \
                 missing",
                "libnotes.so: plugin notes requires storage ^1, which is disabled in the settings",
            ]
        );
        assert_eq!(report.start_order, Vec::<String>::new());
    }
}
