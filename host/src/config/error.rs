//! Why a `plughost.toml`, or a change to the settings, was refused; and where in the file.

use std::path::{Path, PathBuf};

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

/// Why a `plughost.toml` (or an edit of it) was refused. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is larger than the host reads
    /// ([`HostConfig::MAX_FILE_SIZE`](crate::HostConfig::MAX_FILE_SIZE)).
    #[error("{}: the file is too large: {}", path.display(), too_large(*size, *limit))]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes; `None` when it has none to ask for beforehand (a pipe) or grew
        /// while it was read, and is known only to be larger than the limit.
        size: Option<u64>,
        /// The largest file read, in bytes.
        limit: u64,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{at}: {message}")]
    Invalid {
        /// Where.
        at: Location,
        /// What the parser said.
        message: String,
    },
    /// A `${VAR}` without a default names a variable that is not set.
    #[error("{at}: {key}: environment variable {variable} is not set (write ${{{variable}:-default}} to give a default)")]
    Env {
        /// Where the value is.
        at: Location,
        /// The key whose value names it, dotted (`plugins.storage.config.path`).
        key: String,
        /// The variable.
        variable: String,
    },
    /// A `${` in a value has no closing `}`.
    #[error(
        "{at}: {key}: a `${{` is not closed (write ${{VAR}} or ${{VAR:-default}}, or $${{ for a \
         literal `${{`)"
    )]
    UnclosedVariable {
        /// Where the value is.
        at: Location,
        /// The key whose value has it, dotted (`plugins.storage.config.path`).
        key: String,
    },
    /// A plugin's settings cannot be applied: its config does not fit its schema, or its
    /// dependencies would not be met.
    #[error("{}: {reason}", settings_place(path.as_deref(), at.as_deref()))]
    Plugin {
        /// The configuration file; `None` when the settings come from no file (defaults and
        /// the API).
        path: Option<PathBuf>,
        /// Where in it, if the reason is one place.
        at: Option<Box<Location>>,
        /// The plugin.
        plugin: String,
        /// Why, naming the plugin (and the key or dependency).
        reason: String,
        /// The plugin's refusal behind it, if one was (a `LoadError`).
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A change names a plugin the host does not know: never seen in a file of the plugins
    /// folder, and without a table in the settings.
    #[error(
        "{}: no plugin named {plugin:?} is known to this host",
        settings_place(path.as_deref(), None)
    )]
    UnknownPlugin {
        /// The configuration file; `None` when the settings come from no file.
        path: Option<PathBuf>,
        /// The name asked for.
        plugin: String,
    },
    /// A change was to be written into the configuration file, and the settings come from no
    /// file.
    #[error(
        "cannot write plugins.{plugin}.config into the configuration file: the settings come \
         from no file (start the host with one, or apply the change without writing it)"
    )]
    NoFile {
        /// The plugin whose change was to be written.
        plugin: String,
    },
    /// The file cannot be changed as asked (`plughost enable`/`disable`, a plugin's config
    /// written back): a key that must be a table is not one, or a value TOML cannot hold.
    #[error("{}: cannot update the file: {reason}", path.display())]
    Edit {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The changed file could not be written.
    #[error("{}: cannot update the file: cannot write {}: {source}", path.display(), target.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The file actually written (the target, if `path` is a symbolic link).
        target: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where a refused setting is: its place in the file, else the file, else "the settings".
fn settings_place(path: Option<&Path>, at: Option<&Location>) -> String {
    match (at, path) {
        (Some(at), _) => at.to_string(),
        (None, Some(path)) => path.display().to_string(),
        (None, None) => "the settings".into(),
    }
}

/// `70000000 bytes, more than the limit of 67108864 bytes (64 MiB)`.
fn too_large(size: Option<u64>, limit: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    let limit = match (limit / MIB, limit % MIB) {
        (mib @ 1.., 0) => format!("{limit} bytes ({mib} MiB)"),
        _ => format!("{limit} bytes"),
    };
    match size {
        Some(size) => format!("{size} bytes, more than the limit of {limit}"),
        None => format!("more than the limit of {limit}"),
    }
}
