//! `plughost.toml`: the operator's file.
//!
//! Every setting has a default, so no file is needed. A file is read in three steps, each of
//! which can refuse it with a message that points at the line and column:
//!
//! 1. parse the TOML, keeping where every key and value sits in the text;
//! 2. replace `${VAR}` and `${VAR:-default}` in string values from the environment
//!    (`$${` writes a literal `${`);
//! 3. read the settings: unknown keys and wrong types are refused. A message about a value
//!    that came from the environment names the variables, never the value (it may be a secret).
//!
//! [`HostConfig::check_structure`] does steps 1 and 3 without the environment, for tools that
//! edit the file on behalf of a host that may run with other variables set.
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
    /// The values that took something from the environment, by key path: their variables.
    from_env: HashMap<Vec<String>, Vec<String>>,
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
    /// are taken from its folder), substituting variables from the process environment.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::read(path, text, Some(&|name| std::env::var(name).ok()))
    }

    /// Checks that `text`, as the content of `path`, is a configuration file the host could
    /// read, without reading the environment: it is valid TOML, has no unknown keys, every
    /// value that does not use a variable has the right type, and every `${` is closed.
    /// Values that use `${VAR}` (with or without a default) are not type-checked: their
    /// content depends on the environment of the host that reads the file, which need not be
    /// this process's.
    pub fn check_structure(path: &Path, text: &str) -> Result<(), ConfigError> {
        Self::read(path, text, None).map(|_| ())
    }

    /// [`parse`](Self::parse) with `lookup` as the environment; `None` leaves out the values
    /// that use it ([`check_structure`](Self::check_structure)).
    fn read(path: &Path, text: &str, lookup: Option<&Lookup<'_>>) -> Result<Self, ConfigError> {
        let located = |span: Option<Range<usize>>, message: String| ConfigError::Invalid {
            at: locate(path, text, span.map_or(0, |s| s.start)),
            message,
        };
        let document = DeTable::parse(text).map_err(|e| located(e.span(), e.message().into()))?;
        let mut spans = HashMap::new();
        index(document.get_ref(), &mut Vec::new(), &mut spans);

        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| located(e.span(), e.message().into()))?;
        let mut substitution = Substitution {
            lookup,
            from_env: HashMap::new(),
        };
        substitution
            .table(&mut table, &mut Vec::new())
            .map_err(|(keys, error)| {
                let at = locate(path, text, value_offset(&spans, &keys));
                let key = keys.join(".");
                match error {
                    ExpandError::Unset(variable) => ConfigError::Env { at, key, variable },
                    ExpandError::Unclosed { .. } => ConfigError::UnclosedVariable { at, key },
                }
            })?;
        let from_env = substitution.from_env;

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
                if !unknown_key {
                    // serde quotes the value it refused, which may be a secret from the
                    // environment: such a message names the variables instead.
                    let variables = from_env.get(&keys).or_else(|| {
                        from_env
                            .iter()
                            .find(|(at, _)| !keys.is_empty() && at.starts_with(&keys))
                            .map(|(_, variables)| variables)
                    });
                    if let Some(variables) = variables {
                        message = without_value(&message, variables);
                    }
                }
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
            from_env,
            text: text.to_owned(),
        })
    }

    /// The environment variables the value at `keys` (e.g. `["plugins", "storage", "config",
    /// "token"]`) was built from, if it used any. A message about such a value should name
    /// them rather than quote the value, which may be a secret.
    pub fn from_environment(&self, keys: &[&str]) -> Option<&[String]> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        self.from_env.get(&keys).map(Vec::as_slice)
    }

    /// Where the value of config key `key` of plugin `plugin` came from, if from the
    /// environment: `"value from ${TOKEN}"`, for [`schema::check_with`](crate::schema::check_with).
    pub fn config_origin(&self, plugin: &str, key: &str) -> Option<String> {
        let variables = self.from_environment(&["plugins", plugin, "config", key])?;
        let variables: Vec<String> = variables.iter().map(|v| format!("${{{v}}}")).collect();
        Some(format!("value from {}", variables.join(", ")))
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

/// Where the value at `keys` starts, or else the nearest enclosing key that has a place (array
/// items have none of their own); the start of the file if none has.
fn value_offset(spans: &HashMap<Vec<String>, Spans>, keys: &[String]) -> usize {
    (0..=keys.len())
        .rev()
        .find_map(|n| {
            spans.get(&keys[..n]).map(|s| {
                if n == keys.len() {
                    s.value.start
                } else {
                    s.key.start
                }
            })
        })
        .unwrap_or(0)
}

/// A refused message about a value built from `variables`, rewritten so as not to quote it:
/// `invalid type: string (value from ${PORT}), expected usize`.
fn without_value(message: &str, variables: &[String]) -> String {
    let kind = if message.starts_with("invalid type") {
        "invalid type"
    } else {
        "invalid value"
    };
    let from: Vec<String> = variables.iter().map(|v| format!("${{{v}}}")).collect();
    // serde's own messages end in ", expected WHAT", which names the type, not the value;
    // other (custom) messages may quote the value anywhere, so nothing of them is kept.
    let standard = ["invalid type: ", "invalid value: ", "unknown variant "]
        .iter()
        .any(|prefix| message.starts_with(prefix));
    let expected = message
        .rsplit_once(", expected ")
        .filter(|_| standard)
        .map(|(_, expected)| format!(", expected {expected}"))
        .unwrap_or_default();
    format!("{kind}: string (value from {}){expected}", from.join(", "))
}

/// An environment: the value of a variable, if set.
type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// Step 2: `${VAR}` substitution over the whole file.
struct Substitution<'a> {
    /// The environment; `None` when it is not read, and values that use it are left out.
    lookup: Option<&'a Lookup<'a>>,
    /// The values that used it, by key path: their variables.
    from_env: HashMap<Vec<String>, Vec<String>>,
}

/// A failed substitution: where (key path) and why.
type Failed = (Vec<String>, ExpandError);

impl Substitution<'_> {
    fn table(&mut self, table: &mut toml::Table, path: &mut Vec<String>) -> Result<(), Failed> {
        let mut left_out = Vec::new();
        for (key, value) in table.iter_mut() {
            path.push(key.clone());
            if self.value(value, path)? {
                left_out.push(key.clone());
            }
            path.pop();
        }
        for key in left_out {
            table.remove(&key);
        }
        Ok(())
    }

    /// Substitutes inside `value`; `true` when the value is to be left out because it uses
    /// the environment, which is not read (its key then reads as absent: nothing to check).
    fn value(&mut self, value: &mut toml::Value, path: &mut Vec<String>) -> Result<bool, Failed> {
        match value {
            toml::Value::String(text) => {
                // Without an environment every variable reads as empty: this still finds an
                // unclosed `${`, and which variables the value uses.
                let empty: &Lookup<'_> = &|_| Some(String::new());
                let expanded = expand_string(text, self.lookup.unwrap_or(empty))
                    .map_err(|e| (path.clone(), e))?;
                if expanded.variables.is_empty() {
                    *text = expanded.text;
                    return Ok(false);
                }
                if self.lookup.is_none() {
                    return Ok(true);
                }
                *text = expanded.text;
                self.from_env.insert(path.clone(), expanded.variables);
                Ok(false)
            }
            toml::Value::Array(items) => {
                // One item left out would shift the others: the whole array goes.
                let mut left_out = false;
                for (i, item) in items.iter_mut().enumerate() {
                    path.push(i.to_string());
                    left_out |= self.value(item, path)?;
                    path.pop();
                }
                Ok(left_out)
            }
            toml::Value::Table(table) => self.table(table, path).map(|()| false),
            _ => Ok(false),
        }
    }
}

/// Why [`expand`] could not substitute a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExpandError {
    /// `${VAR}` without a default names a variable that is not set.
    #[error("environment variable {0} is not set")]
    Unset(String),
    /// A `${` is not closed by a `}`.
    #[error("`${{` at byte {at} is not closed")]
    Unclosed {
        /// The byte offset of the `${` in the string.
        at: usize,
    },
}

/// A string after substitution, and the variables it used.
struct Expanded {
    text: String,
    variables: Vec<String>,
}

/// Replaces `${VAR}` and `${VAR:-default}` in `text` with `lookup(VAR)`; the default applies
/// when the variable is unset or empty, as in the shell. `$${` is a literal `${`. An unset
/// variable without a default is an [`ExpandError::Unset`]; an unclosed `${` an
/// [`ExpandError::Unclosed`].
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    expand_string(text, &lookup).map(|expanded| expanded.text)
}

fn expand_string(text: &str, lookup: &Lookup<'_>) -> Result<Expanded, ExpandError> {
    let mut variables = Vec::new();
    if !text.contains("${") {
        return Ok(Expanded {
            text: text.to_owned(),
            variables,
        });
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
            let end = body.find('}').ok_or(ExpandError::Unclosed {
                at: text.len() - after.len(),
            })?;
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
                (None, None) => return Err(ExpandError::Unset(name.to_owned())),
            }
            if !variables.iter().any(|v| v == name) {
                variables.push(name.to_owned());
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(Expanded {
        text: out,
        variables,
    })
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

    /// Parses `text` with `vars` as the whole environment.
    fn parse_with_env(text: &str, vars: &[(&str, &str)]) -> Result<HostConfig, String> {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        };
        HostConfig::read(Path::new("plughost.toml"), text, Some(&lookup)).map_err(|e| e.to_string())
    }

    #[test]
    fn a_wrong_value_from_the_environment_is_named_not_quoted() {
        let secret = [
            ("N", "s3cret"),
            ("FMT", "s3cret"),
            ("D", "s3cret"),
            ("T", "s3cret"),
        ];
        for (text, expected) in [
            (
                "[host]\nmax_plugins = \"${N}\"\n",
                "plughost.toml:2:15: host.max_plugins: invalid type: string (value from ${N}), \
                 expected usize",
            ),
            (
                "[host]\nlog_format = \"${FMT}\"\n",
                "plughost.toml:2:14: host.log_format: invalid value: string (value from \
                 ${FMT}), expected `human` or `json`",
            ),
            (
                "[host]\ndebounce = \"${D}\"\n",
                "plughost.toml:2:12: host.debounce: invalid value: string (value from ${D}), \
                 expected a duration",
            ),
            (
                "[plugins.a]\ntimeout = \"${T:-1s}${D}\"\n",
                "plughost.toml:2:11: plugins.a.timeout: invalid value: string (value from \
                 ${T}, ${D}), expected a duration",
            ),
        ] {
            let error = parse_with_env(text, &secret).unwrap_err();
            assert_eq!(error, expected);
        }
        // A message in no standard shape may quote the value anywhere: none of it is kept.
        assert_eq!(
            without_value(r#"unknown unit "s3cret", expected ms"#, &["D".into()]),
            "invalid value: string (value from ${D})"
        );
        // The value from the environment reaches the settings; it is known to be from there.
        let config =
            parse_with_env("[plugins.a.config]\ntoken = \"${T}\"\n", &[("T", "s3cret")]).unwrap();
        assert_eq!(config.plugin("a").config["token"], "s3cret");
        assert_eq!(
            config.from_environment(&["plugins", "a", "config", "token"]),
            Some(&["T".to_owned()][..])
        );
        assert_eq!(config.from_environment(&["plugins", "a"]), None);
    }

    #[test]
    fn an_unclosed_variable_names_the_key_and_place() {
        let error = parse_with_env("[plugins.s.config]\npath = \"${HOME/x\"\n", &[]).unwrap_err();
        assert_eq!(
            error,
            "plughost.toml:2:8: plugins.s.config.path: a `${` is not closed (write ${VAR} or \
             ${VAR:-default}, or $${ for a literal `${`)"
        );
        // Also when the environment is not read.
        let error = HostConfig::check_structure(
            Path::new("plughost.toml"),
            "[host]\nplugins_dir = \"${X\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("plughost.toml:2:15: host.plugins_dir: a `${` is not closed"),
            "{error}"
        );
    }

    #[test]
    fn structure_is_checked_without_the_environment() {
        let check = |text: &str| {
            HostConfig::check_structure(Path::new("plughost.toml"), text).map_err(|e| e.to_string())
        };
        // Values using variables are the host's business, set or not here.
        check(
            "[host]\ndebounce = \"${PLUGHOST_UNIT_TEST_UNSET}\"\nmax_plugins = 3\n\
             [plugins.a]\nenabled = false\ntimeout = \"${PLUGHOST_UNIT_TEST_UNSET:-1s}\"\n\
             [plugins.a.config]\nlist = [\"${PLUGHOST_UNIT_TEST_UNSET}\"]\n",
        )
        .unwrap();
        // Everything else is checked as usual.
        let error = check("[host]\nmax_plugins = \"many\"\n").unwrap_err();
        assert!(
            error.starts_with("plughost.toml:2:15: host.max_plugins: invalid type"),
            "{error}"
        );
        let error = check("[plugins.a]\nenabeld = false\n").unwrap_err();
        assert!(error.contains("unknown field `enabeld`"), "{error}");
        let error = check("[plugins.a]\nenabled = \"$${literal}\"\n").unwrap_err();
        assert!(
            error.contains(r#"invalid type: string "${literal}""#),
            "{error}"
        );
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
        assert_eq!(
            expand("${NOPE}", lookup).unwrap_err(),
            ExpandError::Unset("NOPE".into())
        );
        assert_eq!(
            expand("ab${HOME", lookup).unwrap_err(),
            ExpandError::Unclosed { at: 2 }
        );
    }
}
