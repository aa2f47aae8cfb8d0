//! `plughost.toml`: the operator's file.
//!
//! Every setting has a default, so no file is needed. A file is read in three steps, each of
//! which can refuse it with a message that points at the line and column:
//!
//! 1. parse the TOML, keeping where every key and value sits in the text;
//! 2. replace `${VAR}` and `${VAR:-default}` in string values from the environment
//!    (`$${` writes a literal `${`);
//! 3. read the settings: unknown keys and wrong types are refused.
//!
//! A plugin's own `config` table is kept as JSON for its Init; it is checked against the
//! plugin's schema only once the plugin's descriptor is known ([`schema`](crate::schema)).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use crate::error::ConfigError;

/// The default name of the file, looked for in the working folder.
pub const DEFAULT_FILE: &str = "plughost.toml";

/// The host's whole configuration: settings for the host, and a table per plugin.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// The file it was read from; `None` for the built-in defaults.
    pub file: Option<PathBuf>,
    /// The `[host]` table.
    pub host: HostSettings,
    /// The `[plugins.NAME]` tables, by plugin name.
    pub plugins: BTreeMap<String, PluginSettings>,
    /// The `[host]` table as the file says it, before command-line flags change `host`: what a
    /// live edit is compared with.
    pub(crate) file_host: HostSettings,
    /// Where each key and value sits in the file, for messages.
    spans: HashMap<Vec<String>, Spans>,
    text: String,
}

/// The `[host]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostSettings {
    /// The folder scanned for plugin libraries. Relative paths are taken from the folder the
    /// file is in. Default `plugins`.
    pub plugins_dir: PathBuf,
    /// Where private copies of loaded libraries go. Default: `plughost-shadow-<uid>` in the
    /// system's temporary folder.
    pub shadow_dir: Option<PathBuf>,
    /// Whether to watch the plugins folder and this file, and apply changes live. Default on.
    pub watch: bool,
    /// How long a file must stay quiet after a change the watcher cannot tell is finished
    /// (`"100ms"`, `"1s"`). Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
    /// The time limit of a call through the dispatcher, unless a plugin sets its own. Default:
    /// the dispatcher's own (5 s for `Dispatcher`'s default policy; 30 s for `plughost exec`).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Option<Duration>,
    /// How many plugins may run at once; more are refused. Default 256.
    pub max_plugins: usize,
    /// `human` or `json` log lines. Default `human`.
    pub log_format: LogFormat,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            plugins_dir: PathBuf::from("plugins"),
            shadow_dir: None,
            watch: true,
            debounce: Duration::from_millis(100),
            call_timeout: None,
            max_plugins: 256,
            log_format: LogFormat::Human,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A `[plugins.NAME]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSettings {
    /// Whether the plugin runs. A disabled plugin's file is left alone. Default true.
    pub enabled: bool,
    /// Among plugins whose dependencies are met, higher priorities start first. Default 0.
    pub priority: i64,
    /// The time limit of a call through the dispatcher, overriding `host.call_timeout`.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Handed to the plugin's Init, as JSON, after checking it against the plugin's schema.
    pub config: serde_json::Map<String, serde_json::Value>,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            enabled: true,
            priority: 0,
            timeout: None,
            config: serde_json::Map::new(),
        }
    }
}

/// A place in the file: `plughost.toml:12:5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line; 0 when the place is the whole file.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

#[derive(Debug, Clone)]
struct Spans {
    key: Range<usize>,
    value: Range<usize>,
}

/// The file as serde reads it, after substitution.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawFile {
    host: HostSettings,
    plugins: BTreeMap<String, PluginSettings>,
}

impl HostConfig {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(path, &text)
    }

    /// Reads `--config FILE` if given (which must exist), else `plughost.toml` in the working
    /// folder if there is one, else the defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        match explicit {
            Some(path) => Self::load(path),
            None if Path::new(DEFAULT_FILE).is_file() => Self::load(Path::new(DEFAULT_FILE)),
            None => Ok(Self::default()),
        }
    }

    /// Parses `text` as the content of `path` (named in messages; relative paths in the file
    /// are taken from its folder).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let located = |span: Option<Range<usize>>, message: String| ConfigError::Invalid {
            at: locate(path, text, span.map_or(0, |s| s.start)),
            message,
        };
        let document = DeTable::parse(text).map_err(|e| located(e.span(), e.message().into()))?;
        let mut spans = HashMap::new();
        index(document.get_ref(), &mut Vec::new(), &mut spans);

        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| located(e.span(), e.message().into()))?;
        substitute_table(&mut table, &mut Vec::new(), &|key, variable| {
            let at = spans.get(key).map_or(0, |s: &Spans| s.value.start);
            ConfigError::Env {
                at: locate(path, text, at),
                key: key.join("."),
                variable: variable.to_owned(),
            }
        })?;

        let raw: RawFile =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let keys: Vec<String> = e
                    .path()
                    .iter()
                    .filter_map(|segment| match segment {
                        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                        _ => None,
                    })
                    .collect();
                let error = e.into_inner();
                let unknown_key = error.message().starts_with("unknown field");
                // The deepest key the file has; for a wrong type, its value.
                let span = (0..=keys.len()).rev().find_map(|n| {
                    spans.get(&keys[..n]).map(|s| {
                        if n == keys.len() && !unknown_key {
                            s.value.clone()
                        } else {
                            s.key.clone()
                        }
                    })
                });
                let mut message = error.message().to_owned();
                if !keys.is_empty() {
                    message = format!("{}: {message}", keys.join("."));
                }
                located(span, message)
            })?;
        let mut host = raw.host;
        let base = path.parent().unwrap_or(Path::new(""));
        host.plugins_dir = base.join(&host.plugins_dir);
        host.shadow_dir = host.shadow_dir.map(|dir| base.join(dir));
        Ok(HostConfig {
            file: Some(path.to_owned()),
            file_host: host.clone(),
            host,
            plugins: raw.plugins,
            spans,
            text: text.to_owned(),
        })
    }

    /// The settings of plugin `name` (the defaults if the file has no table for it).
    pub fn plugin(&self, name: &str) -> PluginSettings {
        self.plugins.get(name).cloned().unwrap_or_default()
    }

    /// Where `keys` (e.g. `["plugins", "storage", "config", "path"]`) is in the file, or the
    /// nearest enclosing table that is; the file itself if none is; `None` without a file.
    pub fn locate(&self, keys: &[&str]) -> Option<Location> {
        let file = self.file.as_ref()?;
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        let offset = (1..=keys.len())
            .rev()
            .find_map(|n| self.spans.get(&keys[..n]).map(|s| s.key.start));
        Some(match offset {
            Some(offset) => locate(file, &self.text, offset),
            None => Location {
                file: file.clone(),
                line: 0,
                column: 0,
            },
        })
    }
}

/// Records the spans of every key under `table`, by key path.
fn index(table: &DeTable<'_>, path: &mut Vec<String>, out: &mut HashMap<Vec<String>, Spans>) {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        out.insert(
            path.clone(),
            Spans {
                key: key.span(),
                value: value.span(),
            },
        );
        match value.get_ref() {
            DeValue::Table(inner) => index(inner, path, out),
            DeValue::Array(items) => {
                // Arrays of tables (`[[x]]`) hold keys too; index them by position.
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        path.push(i.to_string());
                        index(inner, path, out);
                        path.pop();
                    }
                }
            }
            _ => {}
        }
        path.pop();
    }
}

fn substitute_table(
    table: &mut toml::Table,
    path: &mut Vec<String>,
    unset: &dyn Fn(&[String], &str) -> ConfigError,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        path.push(key.clone());
        substitute_value(value, path, unset)?;
        path.pop();
    }
    Ok(())
}

fn substitute_value(
    value: &mut toml::Value,
    path: &mut Vec<String>,
    unset: &dyn Fn(&[String], &str) -> ConfigError,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(text) => {
            *text = expand(text, |name| std::env::var(name).ok())
                .map_err(|variable| unset(path, &variable))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                substitute_value(item, path, unset)?;
                path.pop();
            }
        }
        toml::Value::Table(table) => substitute_table(table, path, unset)?,
        _ => {}
    }
    Ok(())
}

/// Replaces `${VAR}` and `${VAR:-default}` in `text` with `lookup(VAR)`; the default applies
/// when the variable is unset or empty, as in the shell. `$${` is a literal `${`. An unset
/// variable without a default is an error carrying its name; so is an unclosed `${`.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| format!("{} (no closing brace)", body))?;
            let (name, default) = match body[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&body[..end], None),
            };
            match (
                lookup(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => return Err(name.to_owned()),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Line and column (1-based, in characters) of byte `offset` in `text`.
fn locate(file: &Path, text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        file: file.to_owned(),
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostConfig, String> {
        HostConfig::parse(Path::new("plughost.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_need_no_file() {
        let config = parse("").unwrap();
        assert_eq!(config.host, HostSettings::default());
        assert!(config.plugin("anything").enabled);
    }

    #[test]
    fn reads_every_setting() {
        let config = parse(
            r#"
[host]
plugins_dir = "libs"
watch = false
debounce = "250ms"
call_timeout = "2s"
max_plugins = 3
log_format = "json"

[plugins.transform]
enabled = false
priority = 7
timeout = "150ms"
config = { mode = "lower", nested = { list = [1, 2] } }
"#,
        )
        .unwrap();
        assert_eq!(config.host.plugins_dir, PathBuf::from("libs"));
        assert!(!config.host.watch);
        assert_eq!(config.host.debounce, Duration::from_millis(250));
        assert_eq!(config.host.call_timeout, Some(Duration::from_secs(2)));
        assert_eq!(config.host.log_format, LogFormat::Json);
        let transform = config.plugin("transform");
        assert!(!transform.enabled);
        assert_eq!(transform.priority, 7);
        assert_eq!(transform.timeout, Some(Duration::from_millis(150)));
        assert_eq!(
            serde_json::Value::Object(transform.config),
            serde_json::json!({"mode": "lower", "nested": {"list": [1, 2]}})
        );
    }

    #[test]
    fn unknown_key_points_at_it() {
        let error =
            parse("[host]\nwatch = true\n\n[plugins.counter]\nenabeld = false\n").unwrap_err();
        assert!(error.starts_with("plughost.toml:5:1: "), "{error}");
        assert!(error.contains("unknown field `enabeld`"), "{error}");
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        let error = parse("[host]\nmax_plugins = \"many\"\n").unwrap_err();
        assert!(
            error.starts_with("plughost.toml:2:15: host.max_plugins: "),
            "{error}"
        );
        assert!(error.contains("invalid type"), "{error}");
    }

    #[test]
    fn syntax_error_points_at_it() {
        let error = parse("[host]\nwatch = \n").unwrap_err();
        assert!(error.starts_with("plughost.toml:2:"), "{error}");
    }

    #[test]
    fn expands_variables_with_and_without_defaults() {
        let lookup = |name: &str| match name {
            "HOME" => Some("/home/me".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(expand("${HOME}/x", lookup).unwrap(), "/home/me/x");
        assert_eq!(expand("${NOPE:-fallback}", lookup).unwrap(), "fallback");
        assert_eq!(expand("${EMPTY:-fallback}", lookup).unwrap(), "fallback");
        assert_eq!(expand("${EMPTY}", lookup).unwrap(), "");
        assert_eq!(
            expand("$${HOME} costs $5", lookup).unwrap(),
            "${HOME} costs $5"
        );
        assert_eq!(expand("${NOPE}", lookup).unwrap_err(), "NOPE");
    }
}
