//! `plughost.toml`: the operator's file, and the rules about it. (Just over 600 lines: every
//! key's documentation lives on its field here, where `config check` and the docs are read
//! from.)
//!
//! Every setting has a default, so no file is needed. A file is read in three steps
//! ([`parse`]), each of which can refuse it with a message that points at the line and column:
//!
//! 1. parse the TOML, keeping where every key and value sits in the text;
//! 2. replace `${VAR}` and `${VAR:-default}` in string values from the environment
//!    ([`env`](mod@env); `$${` writes a literal `${`);
//! 3. read the settings: unknown keys and wrong types are refused. A message about a value
//!    that came from the environment names the variables, never the value (it may be a secret).
//!
//! [`HostConfig::check_structure`] does steps 1 and 3 without the environment, for tools that
//! edit the file on behalf of a host that may run with other variables set ([`edit`]).
//!
//! A plugin's own `config` table is kept as JSON for its Init; it is checked against the
//! plugin's schema only once the plugin's descriptor is known ([`schema`]).

#![forbid(unsafe_code)]

mod admin;
pub(crate) mod edit;
mod env;
mod error;
mod isolation;
mod parse;
pub(crate) mod schema;
mod trust;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use admin::{AdminSettings, Secret};
pub use error::{ConfigError, Location};
pub use isolation::{ByteSize, CpuLimit, Isolation};
use parse::{Source, Spans};
pub(crate) use trust::key_id as trust_key_id;
pub use trust::{Sha256Digest, TrustedKey};

/// The host's whole configuration: settings for the host, and a table per plugin.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// The file it was read from; `None` for the built-in defaults.
    pub file: Option<PathBuf>,
    /// The `[host]` table.
    pub host: HostSettings,
    /// The `[plugins.NAME]` tables, by plugin name.
    pub plugins: BTreeMap<String, PluginSettings>,
    /// The `[admin]` table: the admin API's address and guards. A running host keeps the
    /// table it started with: a live edit of it is logged and applies at the next start.
    pub admin: AdminSettings,
    /// The `[host]` table as the file says it, before command-line flags change `host`: what a
    /// live edit is compared with.
    pub(crate) file_host: HostSettings,
    /// The `[admin]` table as the file says it (flags may change `admin`), for the same reason.
    pub(crate) file_admin: AdminSettings,
    /// Where each key and value sits in the file, for messages.
    spans: HashMap<Vec<String>, Spans>,
    /// The values that took something from the environment, by key path: their variables.
    from_env: HashMap<Vec<String>, Vec<String>>,
    /// The text of the file, with where its lines start.
    source: Source,
}

/// The `[host]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostSettings {
    /// The folder scanned for plugin libraries. Relative paths are taken from the folder the
    /// file is in. Default `plugins`.
    pub plugins_dir: PathBuf,
    /// Where the probe's verdicts go, and private copies of loaded libraries where they cannot
    /// be memory files (anywhere but Linux). Default: `plughost-shadow-<uid>` in the system's
    /// temporary folder.
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
    /// How long a plugin's Shutdown may take, and how long shutting the host down waits, for
    /// all plugins together, for calls in flight and Shutdowns, before it leaves what still
    /// runs loaded and goes on (unloading code that runs would crash the process). Default
    /// 10 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long a plugin's Init may take before the host gives up on it (it is then left
    /// loaded, not serving). Default 30 s.
    #[serde(with = "humantime_serde")]
    pub init_timeout: Duration,
    /// How long a plugin's quick entry points may take: validate_config and the state
    /// hand-over's save. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// Whether, and with which program, bytes the host has not seen load are first loaded in a
    /// short-lived probe process, so that a damaged library crashes the probe instead of the
    /// host: `"auto"` (default: the `plughost` executable beside this program, or on `PATH`),
    /// `"off"` (load files unchecked, for those who trust them), or the probe program: a path
    /// (relative ones from the file's folder) or a bare name looked up on `PATH`.
    pub probe: ProbeSetting,
    /// How long a probe may take. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// How many closed versions of one plugin may stay in memory (pinned by a thread or a
    /// thread-local destructor it left behind) before loading it again is refused. Default 8.
    pub max_pinned: usize,
    /// Where plugins run unless their own table says: `"in-process"` (default) or `"process"`,
    /// a worker process each (Linux).
    pub isolation: Isolation,
    /// How many crashes of an isolated plugin within `crash_window` mark it failed (not
    /// restarted until its file changes or it is enabled again). Default 5.
    pub max_crashes: usize,
    /// See `max_crashes`. Default 1 minute.
    #[serde(with = "humantime_serde")]
    pub crash_window: Duration,
    /// How long an isolated plugin's call may run past its deadline before its worker is
    /// killed and restarted (the only way to stop code that never returns). Default 1 s.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// A cgroup v2 folder the host may create cgroups in, one per worker, to enforce the
    /// plugins' resource limits (e.g. a systemd unit's delegated cgroup). Default: the host's
    /// own cgroup if it is the root of a writable hierarchy, else none (resource limits of the
    /// process instead).
    pub cgroup: Option<PathBuf>,
    /// The largest event accepted from a plugin, the program or `plughost emit` (data, topic,
    /// source and extensions together); a larger one is refused at publish. Default 1 MiB.
    pub max_event_size: ByteSize,
    /// Whether every library must have a minisign signature beside it (`libx.so.minisig`),
    /// made by one of `trusted_keys`, over exactly the bytes loaded. Default off.
    pub require_signatures: bool,
    /// The minisign public keys whose signatures the host accepts, each as `minisign -G` or
    /// `plughost keygen` prints it (`RWQ...`). Default none.
    pub trusted_keys: Vec<TrustedKey>,
    /// Whether a library, its folder and the folders above must be owned by the host's user or
    /// root and not writable by group or others, as sshd's StrictModes: `"auto"` (default:
    /// `"on"` when the host runs as root; otherwise such a file loads with one warning line
    /// naming the fix), `"on"` (refuse such a file) or `"off"` (no check, for development).
    pub check_ownership: OwnershipCheck,
    /// How isolated plugins are confined to their grants by the kernel (Landlock, seccomp):
    /// `"enforce"` (default: a plugin whose grants this kernel cannot enforce is refused,
    /// naming what is missing), `"best-effort"` (it runs with what the kernel can enforce, and
    /// a warning naming the rest) or `"off"` (workers are not confined; grants are still
    /// checked at load and enforced for what passes through the host).
    pub confinement: Confinement,
}

/// The `confinement` setting: see [`HostSettings::confinement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Confinement {
    /// Refuse a plugin whose grants the kernel cannot enforce.
    #[default]
    Enforce,
    /// Enforce what the kernel can; warn about the rest.
    BestEffort,
    /// No confinement by the kernel.
    Off,
}

/// The `check_ownership` setting: see [`HostSettings::check_ownership`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnershipCheck {
    /// `On` when the host runs as root; otherwise an unsafe file loads, with a warning.
    #[default]
    Auto,
    /// An unsafe file is refused.
    On,
    /// Nothing is checked.
    Off,
}

/// The `probe` setting: see [`HostSettings::probe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ProbeSetting {
    /// The `plughost` executable beside this program (or one folder up), or on `PATH`.
    Auto,
    /// No probing: libraries are loaded in the host process unchecked.
    Off,
    /// This program, started as `PROGRAM __probe FILE` (see [`probe_main`](crate::probe_main)).
    Program(PathBuf),
}

impl From<String> for ProbeSetting {
    fn from(text: String) -> Self {
        match text.as_str() {
            "auto" => ProbeSetting::Auto,
            "off" => ProbeSetting::Off,
            _ => ProbeSetting::Program(PathBuf::from(text)),
        }
    }
}

impl From<ProbeSetting> for String {
    fn from(setting: ProbeSetting) -> Self {
        match setting {
            ProbeSetting::Auto => "auto".into(),
            ProbeSetting::Off => "off".into(),
            ProbeSetting::Program(path) => path.display().to_string(),
        }
    }
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
            shutdown_timeout: Duration::from_secs(10),
            init_timeout: Duration::from_secs(30),
            check_timeout: Duration::from_secs(5),
            probe: ProbeSetting::Auto,
            probe_timeout: Duration::from_secs(10),
            max_pinned: 8,
            isolation: Isolation::InProcess,
            max_crashes: 5,
            crash_window: Duration::from_secs(60),
            kill_grace: Duration::from_secs(1),
            cgroup: None,
            max_event_size: ByteSize(1024 * 1024),
            require_signatures: false,
            trusted_keys: Vec::new(),
            check_ownership: OwnershipCheck::Auto,
            confinement: Confinement::Enforce,
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
    /// Where it runs, overriding `host.isolation`: `"in-process"` or `"process"`.
    pub isolation: Option<Isolation>,
    /// Isolated only: the memory its worker may use (`"256MiB"`).
    pub memory: Option<ByteSize>,
    /// Isolated only: CPU, as a share of one CPU (`"50%"`, needs a cgroup) or CPU time in all
    /// (`"10m"`).
    pub cpu: Option<CpuLimit>,
    /// Isolated only: files its worker may have open at once.
    pub max_open_files: Option<u64>,
    /// Isolated only: processes and threads its worker may have (needs a cgroup).
    pub max_processes: Option<u64>,
    /// Events only: how many events may wait for the plugin's handler. Default 1024.
    pub event_queue: usize,
    /// Events only: what a publisher meets when the queue is full: `"block"` (wait up to
    /// `event_block`, then the event is dropped and the publisher told), `"drop_oldest"` or
    /// `"drop_newest"`. Default `"block"`. Drops are counted and logged.
    pub event_policy: QueuePolicy,
    /// Events only: how long `block` waits for room. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub event_block: Duration,
    /// Events only: how long the plugin's handler may take for one event before it is counted
    /// as timed out and delivery goes on without it. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub event_timeout: Duration,
    /// The SHA-256 of the one build of this plugin that may load, as 64 hexadecimal digits;
    /// a file of this plugin with other content is refused. Default: any content.
    pub sha256: Option<Sha256Digest>,
    /// The capabilities the operator grants it (`"fs:read:/etc/ssl"`, `"call:storage"`,
    /// `"events:emit"`...): a plugin needing one not granted is refused at load. An isolated
    /// plugin's worker is confined to these by the kernel. Relative paths start at this
    /// file's folder. Default none.
    pub grant: Vec<crate::capability::Capability>,
}

/// What a publisher meets when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueuePolicy {
    /// Wait for room up to a time limit, then drop the event and tell the publisher.
    #[default]
    Block,
    /// Make room by dropping the oldest event waiting.
    DropOldest,
    /// Drop the event being published.
    DropNewest,
}

impl QueuePolicy {
    /// Its name in `plughost.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueuePolicy::Block => "block",
            QueuePolicy::DropOldest => "drop_oldest",
            QueuePolicy::DropNewest => "drop_newest",
        }
    }
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            enabled: true,
            priority: 0,
            timeout: None,
            config: serde_json::Map::new(),
            isolation: None,
            memory: None,
            cpu: None,
            max_open_files: None,
            max_processes: None,
            event_queue: 1024,
            event_policy: QueuePolicy::Block,
            event_block: Duration::from_secs(1),
            event_timeout: Duration::from_secs(5),
            sha256: None,
            grant: Vec::new(),
        }
    }
}

impl HostConfig {
    /// The default name of the file, looked for in the working folder.
    pub const DEFAULT_FILE: &'static str = "plughost.toml";

    /// The largest file read, in bytes (64 MiB): a larger one is refused
    /// ([`ConfigError::TooLarge`]) without reading more of it than that.
    pub const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;

    /// The defaults, with another plugins folder.
    pub fn with_plugins_dir(dir: impl Into<PathBuf>) -> Self {
        let mut config = HostConfig::default();
        config.host.plugins_dir = dir.into();
        config
    }

    /// Reads `path`. A file larger than [`MAX_FILE_SIZE`](Self::MAX_FILE_SIZE) is refused.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path, path, Self::MAX_FILE_SIZE)?;
        Self::parse(path, &text)
    }

    /// Like [`load`](Self::load), for a file that changed under a running host: anything but a
    /// regular file is refused without waiting on it (a named pipe put in its place must not
    /// stall the watcher, nor read as an empty file).
    pub(crate) fn reload(path: &Path) -> Result<Self, ConfigError> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NONBLOCK);
        }
        let read_error = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let file = options.open(path).map_err(read_error)?;
        if !file.metadata().map_err(read_error)?.is_file() {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        // The descriptor checked is the one read: nothing can be swapped in between.
        let text = read_open_text(file, path, Self::MAX_FILE_SIZE)?;
        Self::parse(path, &text)
    }

    /// Reads `--config FILE` if given (which must exist), else `plughost.toml` in the working
    /// folder if there is one, else the defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        match explicit {
            Some(path) => Self::load(path),
            None if Path::new(Self::DEFAULT_FILE).is_file() => {
                Self::load(Path::new(Self::DEFAULT_FILE))
            }
            None => Ok(Self::default()),
        }
    }

    /// Parses `text` as the content of `path` (named in messages; relative paths in the file
    /// are taken from its folder), substituting variables from the process environment.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        parse::read(path, text, Some(&|name| std::env::var(name).ok()))
    }

    /// Checks that `text`, as the content of `path`, is a configuration file the host could
    /// read, without reading the environment: it is valid TOML, has no unknown keys, every
    /// value that does not use a variable has the right type, and every `${` is closed.
    /// Values that use `${VAR}` (with or without a default) are not type-checked: their
    /// content depends on the environment of the host that reads the file, which need not be
    /// this process's.
    pub fn check_structure(path: &Path, text: &str) -> Result<(), ConfigError> {
        parse::read(path, text, None).map(|_| ())
    }

    /// The environment variables the value at `keys` (e.g. `["plugins", "storage", "config",
    /// "token"]`) was built from, if it used any. A message about such a value should name
    /// them rather than quote the value, which may be a secret.
    pub(crate) fn env_variables(&self, keys: &[&str]) -> Option<&[String]> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        self.from_env.get(&keys).map(Vec::as_slice)
    }

    /// Where the value of config key `key` of plugin `plugin` came from, if from the
    /// environment: `"value from ${TOKEN}"`, for [`schema::fit_with`].
    pub(crate) fn config_origin(&self, plugin: &str, key: &str) -> Option<String> {
        let variables = self.env_variables(&["plugins", plugin, "config", key])?;
        let variables: Vec<String> = variables.iter().map(|v| format!("${{{v}}}")).collect();
        Some(format!("value from {}", variables.join(", ")))
    }

    /// These settings with plugin `name`'s `config` replaced by `config`. The values it
    /// changes no longer count as from the environment (messages may quote them as any value
    /// given through the API); those it keeps still do.
    pub(crate) fn with_plugin_config(
        &self,
        name: &str,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> HostConfig {
        let mut new = self.clone();
        let old = self.plugin(name).config;
        new.from_env.retain(|keys, _| match keys.as_slice() {
            [plugins, plugin, table, key, ..]
                if plugins == "plugins" && plugin == name && table == "config" =>
            {
                old.get(key)
                    .is_some_and(|value| config.get(key) == Some(value))
            }
            _ => true,
        });
        new.plugins.entry(name.to_owned()).or_default().config = config;
        new
    }

    /// Where plugin `name` runs: its own `isolation`, else the host's.
    pub fn isolation_of(&self, name: &str) -> Isolation {
        self.plugins
            .get(name)
            .and_then(|p| p.isolation)
            .unwrap_or(self.host.isolation)
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
            Some(offset) => self.source.locate(file, offset),
            None => Location {
                file: file.clone(),
                line: 0,
                column: 0,
            },
        })
    }
}

/// The text of the file `path`, which messages call `named` (a symbolic link may be named
/// rather than its target); refused if longer than `limit` bytes, without reading more of it
/// than `limit + 1` bytes (a pipe, or a file that grows, has no size to check beforehand).
fn read_text(path: &Path, named: &Path, limit: u64) -> Result<String, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: named.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    read_open_text(file, named, limit)
}

/// [`read_text`] of a file already open.
fn read_open_text(file: std::fs::File, named: &Path, limit: u64) -> Result<String, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: named.to_owned(),
        source,
    };
    let too_large = |size| ConfigError::TooLarge {
        path: named.to_owned(),
        size,
        limit,
    };
    let known = file
        .metadata()
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|metadata| metadata.len());
    if let Some(size) = known.filter(|&size| size > limit) {
        return Err(too_large(Some(size)));
    }
    let mut bytes = Vec::new();
    if let Some(size) = known.and_then(|size| usize::try_from(size).ok()) {
        bytes.reserve_exact(size);
    }
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(None));
    }
    // The same error as `std::fs::read_to_string`'s, as the file was read with it before.
    String::from_utf8(bytes).map_err(|_| {
        read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_limit_is_refused_naming_it_its_size_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plughost.toml");
        std::fs::write(&path, "[host]\nwatch = true\n").unwrap(); // 20 bytes
        assert_eq!(
            read_text(&path, &path, 20).unwrap(),
            "[host]\nwatch = true\n"
        );
        let error = read_text(&path, &path, 19).unwrap_err();
        assert!(
            matches!(
                error,
                ConfigError::TooLarge {
                    size: Some(20),
                    limit: 19,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!(
                "{}: the file is too large: 20 bytes, more than the limit of 19 bytes",
                path.display()
            )
        );
        // A symbolic link is named, not its target.
        let named = Path::new("plughost.toml");
        assert!(read_text(&path, named, 0)
            .unwrap_err()
            .to_string()
            .starts_with("plughost.toml: the file is too large: 20 bytes"));
        // The real limit, as the message shows it.
        let error = ConfigError::TooLarge {
            path: named.to_owned(),
            size: Some(70_000_000),
            limit: HostConfig::MAX_FILE_SIZE,
        };
        assert_eq!(
            error.to_string(),
            "plughost.toml: the file is too large: 70000000 bytes, more than the limit of \
             67108864 bytes (64 MiB)"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_file_with_no_size_is_read_no_further_than_the_limit() {
        // A character device: no size beforehand, and no end.
        let error = read_text(Path::new("/dev/zero"), Path::new("zeros"), 1000).unwrap_err();
        assert_eq!(
            error.to_string(),
            "zeros: the file is too large: more than the limit of 1000 bytes"
        );
        // Within the limit, such a file is read whole.
        assert_eq!(
            read_text(Path::new("/dev/null"), Path::new("null"), 1000).unwrap(),
            ""
        );
    }

    #[test]
    fn read_errors_are_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let expected = std::fs::read_to_string(&missing).unwrap_err().to_string();
        let error = HostConfig::load(&missing).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!("{}: cannot read the file: {expected}", missing.display())
        );
        let binary = dir.path().join("binary.toml");
        std::fs::write(&binary, b"a = \"\xff\"\n").unwrap();
        let expected = std::fs::read_to_string(&binary).unwrap_err().to_string();
        assert_eq!(
            HostConfig::load(&binary).unwrap_err().to_string(),
            format!("{}: cannot read the file: {expected}", binary.display())
        );
        let folder = HostConfig::load(dir.path()).unwrap_err();
        assert!(matches!(folder, ConfigError::Read { .. }), "{folder:?}");
    }
}
