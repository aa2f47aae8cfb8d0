//! The errors of the host library: why a file was refused, why a call failed, why a host
//! could not be set up. Every variant names the file or plugin it is about; the cause, where
//! there is one, is kept as the error's `source`. (Errors about `plughost.toml` are
//! [`ConfigError`](crate::ConfigError), next to the file's parser.)
//!
//! Longer than the project's 600 lines on purpose: every error a caller can get from the
//! library is in this one file, each variant's message and fields its documentation, so that a
//! caller matching errors finds them all, and their wording is reviewed and kept alike, in one
//! place.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Location;
use crate::plugin_info::{shown, Requirement};

/// A cause from another crate, kept without making that crate's types part of this API.
pub(crate) type BoxedCause = Box<dyn std::error::Error + Send + Sync>;

/// Why a plugin file was refused. Every variant names the file; the host goes on without it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: cannot read the file: {source}", shown_path(path))]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is not a regular file: a folder, a named pipe, a device...
    #[error("{}: not a regular file: it is {kind}", shown_path(path))]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file is larger than any plugin the host will read.
    #[error(
        "{}: the file is too large ({size} bytes; the limit is {limit})",
        shown_path(path)
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size, or as much of it as was read.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file, or a folder above it, could have been changed by a user other than the
    /// host's and root: it is owned by another user, or writable by group or others
    /// (`host.check_ownership`, as sshd's StrictModes).
    #[error(
        "{}: refused: the {what} {} {problem}, so another user could change it; fix: `{fix}` \
         (host.check_ownership)",
        shown_path(path),
        shown_path(at)
    )]
    UnsafeOwnership {
        /// The library file.
        path: PathBuf,
        /// The file or folder at fault: the library itself, its folder, or one above.
        at: PathBuf,
        /// `"file"` or `"folder"`.
        what: &'static str,
        /// What is wrong: "is writable by group (mode 0664)".
        problem: String,
        /// The command that fixes it: "chmod go-w plugins/libx.so".
        fix: String,
    },
    /// Loading the library in a probe process crashed it, or did not finish: loading it here
    /// would have taken the host down.
    #[error("{}: refused: {reason}", shown_path(path))]
    ProbeRefused {
        /// The file.
        path: PathBuf,
        /// What happened to the probe: the signal, the loader's message, or the time limit.
        reason: String,
    },
    /// Not an error: the plugin, known by name from its probe, is not wanted now (it is
    /// disabled in the settings), so its library was not opened in the host.
    #[error(
        "{}: plugin {name} is disabled in the settings: not started",
        shown_path(path)
    )]
    Unwanted {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
    },
    /// Checking the library panicked, which only damaged data makes happen.
    #[error(
        "{}: refused: checking it panicked ({message}); the file is probably damaged",
        shown_path(path)
    )]
    CheckPanicked {
        /// The file.
        path: PathBuf,
        /// The panic's message.
        message: String,
    },
    /// The file is empty (often a build or copy still in progress).
    #[error("{}: the file is empty", shown_path(path))]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a shared library this host could load.
    #[error("{}: not a loadable shared library: {reason}", shown_path(path))]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A shared library, but not a plughost plugin.
    #[error("{}: not a plughost plugin: {reason}", shown_path(path))]
    NotAPlugin {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// Built against a plugin-api this host cannot talk to.
    #[error(
        "{}: plugin-api {found} is incompatible with this host's plugin-api {expected} \
         (rebuild the plugin against plugin-api {}.{})",
        shown_path(path), expected.major, expected.minor
    )]
    IncompatibleApi {
        /// The file.
        path: PathBuf,
        /// The plugin's plugin-api version.
        found: semver::Version,
        /// The host's plugin-api version.
        expected: semver::Version,
    },
    /// The FFI types the plugin was built with differ from the host's.
    #[error(
        "{}: FFI layout differs from this host's plugin-api {expected}: {summary}",
        shown_path(path)
    )]
    LayoutMismatch {
        /// The file.
        path: PathBuf,
        /// The host's plugin-api version.
        expected: semver::Version,
        /// The differences abi_stable found, in a few lines.
        summary: String,
    },
    /// The descriptor's metadata is unusable (empty name, version not semver...).
    #[error("{}: invalid plugin metadata: {reason}", shown_path(path))]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The private shadow copy could not be written.
    #[error(
        "{}: cannot write its shadow copy {}: {source}",
        shown_path(path),
        shown_path(shadow)
    )]
    Shadow {
        /// The file.
        path: PathBuf,
        /// The shadow path.
        shadow: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The dynamic loader refused the library.
    #[error(
        "{}: the dynamic loader refused it: {}",
        shown_path(path),
        shown(&source.to_string())
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// The loader's error (a `libloading::Error`).
        source: BoxedCause,
    },
    /// Another loaded library already has this plugin's name.
    #[error(
        "{}: plugin {name:?} is already loaded from {}",
        shown_path(path),
        shown_path(existing)
    )]
    DuplicateName {
        /// The file refused.
        path: PathBuf,
        /// The name both claim.
        name: String,
        /// The file that has the name.
        existing: PathBuf,
    },
    /// The plugin's Init returned an error or panicked.
    #[error("{}: plugin {name} {}", shown_path(path), init_failure(cause))]
    Init {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// What Init reported.
        #[source]
        cause: CallError,
    },
    /// The plugin is to run in a worker process, and the worker could not load it, or no
    /// worker could be started.
    #[error("{}: cannot run it in a worker process: {reason}", shown_path(path))]
    Worker {
        /// The file.
        path: PathBuf,
        /// Why, in the worker's words where it gave any (they may name the file again).
        reason: String,
    },
    /// The host has shut down: nothing starts any more.
    #[error(
        "{}: plugin {name} not started: the host has shut down",
        shown_path(path)
    )]
    HostClosed {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
    },
    /// The plugin's configuration does not fit its schema (checked before Init).
    #[error("{}: plugin {name}: {}config key `{key}` {reason}", shown_path(path), at.as_ref().map(|a| format!("{a}: ")).unwrap_or_default())]
    Config {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The key at fault.
        key: String,
        /// What is wrong with it.
        reason: String,
        /// Where the key is (or should be) in `plughost.toml`, if the config came from there.
        at: Option<Box<Location>>,
    },
    /// The plugin does not accept the configuration it was offered (its `validate_config`).
    #[error(
        "{}: plugin {name} does not accept the configuration: {reason}",
        shown_path(path)
    )]
    ConfigRefused {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The plugin's reason, secrets masked.
        reason: String,
    },
    /// A plugin it requires is not in service.
    #[error(
        "{}: plugin {name} requires {requirement}, which {why}",
        shown_path(path)
    )]
    MissingDependency {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// What it requires.
        requirement: Box<Requirement>,
        /// Why that is not there: "is not loaded", "is disabled in the settings"...
        why: String,
    },
    /// A plugin it requires is in service at a version outside the range.
    #[error("{}: plugin {name} requires {requirement}, but {} {found} is loaded", shown_path(path), requirement.name)]
    DependencyVersion {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// What it requires.
        requirement: Box<Requirement>,
        /// The version in service.
        found: Box<semver::Version>,
    },
    /// This version would break a plugin in service that requires another range of it.
    #[error(
        "{}: {name} {version} would break {dependent}, which requires {requirement}",
        shown_path(path)
    )]
    BreaksDependent {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The version refused.
        version: Box<semver::Version>,
        /// The plugin that requires it.
        dependent: String,
        /// What that plugin requires.
        requirement: Box<Requirement>,
    },
    /// The plugin is part of a dependency cycle.
    #[error("{}: plugin {name} is in a dependency cycle: {}", shown_path(path), cycle.join(" -> "))]
    DependencyCycle {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The cycle, first name repeated at the end.
        cycle: Vec<String>,
    },
    /// So many closed versions of the plugin are still in memory that loading another is
    /// refused: the plugin pins its library (a thread it started, a thread-local destructor).
    #[error(
        "{}: plugin {name} not loaded again: {pinned} of its closed versions are still in memory \
         (host.max_pinned); it leaves a thread, or a thread-local with a destructor on a host \
         thread, behind: stop its threads in Shutdown. Restart the host to free them",
        shown_path(path)
    )]
    TooManyPinned {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// How many of its closed versions are still mapped.
        pinned: usize,
    },
    /// As many plugins as `max_plugins` allows are running already.
    #[error(
        "{}: plugin {name} not started: max_plugins ({max}) are running",
        shown_path(path)
    )]
    TooMany {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The limit.
        max: usize,
    },
    /// Not even opened: as many plugins as `max_plugins` allows were started from the files
    /// before it (by file name).
    #[error(
        "{}: not loaded: max_plugins ({max}) plugins are running already; raise \
         host.max_plugins in plughost.toml to load more",
        shown_path(path)
    )]
    NoRoom {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// `plughost.toml` pins the plugin's SHA-256 (`plugins.NAME.sha256`) and this file's
    /// content has another.
    #[error(
        "{}: plugin {name} refused: its SHA-256 is {found}, but plugins.{name}.sha256 pins \
         {expected}; fix: update plugins.{name}.sha256 in plughost.toml to the new build's \
         digest, or remove it",
        shown_path(path)
    )]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The digest pinned, as 64 hexadecimal digits.
        expected: String,
        /// The digest of the content read, as 64 hexadecimal digits.
        found: String,
    },
    /// The probe (or the worker that named it) was told one plugin name and the library
    /// loaded as another: code in it answered for the probe (to escape a pin, say).
    #[error(
        "{}: refused: it said it is plugin {} when first loaded, then loaded as plugin {}: a \
         library that misreports its name is not started",
        shown_path(path),
        shown(told),
        shown(loaded)
    )]
    NameMismatch {
        /// The file.
        path: PathBuf,
        /// The name the probe heard.
        told: String,
        /// The name the library gave once loaded.
        loaded: String,
    },
    /// `host.require_signatures` is on and the file has no signature beside it.
    #[error(
        "{}: refused: unsigned: host.require_signatures is on and there is no signature {}; \
         fix: sign it with a trusted key (`plughost sign FILE --key KEY`, or `minisign -S -m \
         FILE`)",
        shown_path(path),
        shown_path(signature)
    )]
    Unsigned {
        /// The file.
        path: PathBuf,
        /// Where its signature was looked for: `FILE.minisig`.
        signature: PathBuf,
    },
    /// The signature file beside the library cannot be used: not a regular file, too large,
    /// unreadable, or not in the minisign format.
    #[error(
        "{}: refused: its signature {} {reason} (host.require_signatures)",
        shown_path(path),
        shown_path(signature)
    )]
    BadSignatureFile {
        /// The file.
        path: PathBuf,
        /// The signature file.
        signature: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// The cause, if another crate or the OS gave one.
        #[source]
        source: Option<BoxedCause>,
    },
    /// The signature is by a trusted key but does not match the content: the library was
    /// changed after it was signed, or the signature is another build's.
    #[error(
        "{}: refused: its signature {} by trusted key {key_id} does not match the file's \
         content (changed after signing, or the signature of another build); fix: sign this \
         build again",
        shown_path(path),
        shown_path(signature)
    )]
    SignatureMismatch {
        /// The file.
        path: PathBuf,
        /// The signature file.
        signature: PathBuf,
        /// The signing key's id, as minisign shows it (16 hexadecimal digits).
        key_id: String,
        /// What the verifier said.
        #[source]
        source: BoxedCause,
    },
    /// The signature is by a key that is not among `host.trusted_keys`.
    #[error(
        "{}: refused: signed by key {key_id}, which is not in host.trusted_keys; fix: sign it \
         with a trusted key, or add that key's public key to host.trusted_keys if you trust it",
        shown_path(path)
    )]
    UntrustedSigner {
        /// The file.
        path: PathBuf,
        /// The signature file.
        signature: PathBuf,
        /// The signing key's id, as minisign shows it (16 hexadecimal digits).
        key_id: String,
    },
    /// The plugin declares a capability outside the vocabulary (plugin-api 1.5 and later).
    #[error(
        "{}: plugin {name} refused: it declares capability {}: {reason}",
        shown_path(path),
        shown(capability)
    )]
    BadCapability {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The capability as declared.
        capability: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The plugin needs capabilities `plughost.toml` does not grant it.
    #[error(
        "{}: plugin {name} refused: it needs {}, not granted; fix: `grant = [{}]` under \
         [plugins.{name}], if you trust it with that",
        shown_path(path),
        missing.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "),
        granted.iter().chain(missing).map(|c| format!("\"{}\"", c.as_grant())).collect::<Vec<_>>().join(", ")
    )]
    NotGranted {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// What it needs and was not granted.
        missing: Vec<crate::capability::Capability>,
        /// What it is granted now (the fix keeps these).
        granted: Vec<crate::capability::Capability>,
        /// Who the plugin is, as its library says: what a listing shows of a plugin it would
        /// not start (never opened again with wider grants to find out).
        info: Box<crate::plugin_info::PluginInfo>,
    },
}

impl LoadError {
    /// The file this error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            LoadError::Read { path, .. }
            | LoadError::NotAFile { path, .. }
            | LoadError::TooLarge { path, .. }
            | LoadError::UnsafeOwnership { path, .. }
            | LoadError::CheckPanicked { path, .. }
            | LoadError::ProbeRefused { path, .. }
            | LoadError::Unwanted { path, .. }
            | LoadError::Empty { path }
            | LoadError::NotALibrary { path, .. }
            | LoadError::NotAPlugin { path, .. }
            | LoadError::IncompatibleApi { path, .. }
            | LoadError::LayoutMismatch { path, .. }
            | LoadError::Metadata { path, .. }
            | LoadError::Shadow { path, .. }
            | LoadError::Open { path, .. }
            | LoadError::DuplicateName { path, .. }
            | LoadError::Init { path, .. }
            | LoadError::HostClosed { path, .. }
            | LoadError::Worker { path, .. }
            | LoadError::Config { path, .. }
            | LoadError::ConfigRefused { path, .. }
            | LoadError::MissingDependency { path, .. }
            | LoadError::DependencyVersion { path, .. }
            | LoadError::BreaksDependent { path, .. }
            | LoadError::DependencyCycle { path, .. }
            | LoadError::TooMany { path, .. }
            | LoadError::NoRoom { path, .. }
            | LoadError::DigestMismatch { path, .. }
            | LoadError::NameMismatch { path, .. }
            | LoadError::Unsigned { path, .. }
            | LoadError::BadSignatureFile { path, .. }
            | LoadError::SignatureMismatch { path, .. }
            | LoadError::UntrustedSigner { path, .. }
            | LoadError::BadCapability { path, .. }
            | LoadError::NotGranted { path, .. }
            | LoadError::TooManyPinned { path, .. } => path,
        }
    }

    /// The plugin it is about, when the file was read far enough to know.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            LoadError::DuplicateName { name, .. }
            | LoadError::Init { name, .. }
            | LoadError::HostClosed { name, .. }
            | LoadError::Config { name, .. }
            | LoadError::ConfigRefused { name, .. }
            | LoadError::MissingDependency { name, .. }
            | LoadError::DependencyVersion { name, .. }
            | LoadError::BreaksDependent { name, .. }
            | LoadError::DependencyCycle { name, .. }
            | LoadError::Unwanted { name, .. }
            | LoadError::TooMany { name, .. }
            | LoadError::DigestMismatch { name, .. }
            | LoadError::BadCapability { name, .. }
            | LoadError::NotGranted { name, .. }
            | LoadError::TooManyPinned { name, .. } => Some(name),
            LoadError::NameMismatch { loaded, .. } => Some(loaded),
            _ => None,
        }
    }

    /// The reason alone, without the file name in front: for a table with a file column,
    /// or a message that names the file another way.
    pub fn reason(&self) -> String {
        let text = self.to_string();
        let prefix = format!("{}: ", shown_path(self.path()));
        match text.strip_prefix(&prefix) {
            Some(reason) => reason.to_owned(),
            None => text,
        }
    }

    /// Whether the refusal only passes on another's: a requirement that was refused, or is
    /// not in service because its own start failed. Not the cause, then.
    pub(crate) fn passes_on_another(&self) -> bool {
        matches!(
            self,
            LoadError::MissingDependency { why, .. }
                if why == crate::dependencies::REFUSED || why == crate::dependencies::NOT_LOADED
        )
    }

    /// Whether the refusal is about other plugins (a requirement missing or out of range, a
    /// dependent it would break, a cycle) rather than the file: it may pass when they change.
    pub fn depends_on_others(&self) -> bool {
        matches!(
            self,
            LoadError::MissingDependency { .. }
                | LoadError::DependencyVersion { .. }
                | LoadError::BreaksDependent { .. }
                | LoadError::DependencyCycle { .. }
        )
    }
}

impl From<LoadError> for HostError {
    fn from(error: LoadError) -> Self {
        HostError::Load(Box::new(error))
    }
}

/// A path as messages show it: characters that would hide in or reorder the line escaped.
fn shown_path(path: &std::path::Path) -> String {
    shown(&path.display().to_string()).into_owned()
}

/// "(2 file(s) refused, e.g. ...)" when files were refused.
fn refused_hint(refused: &[LoadError]) -> String {
    match refused.first() {
        None => String::new(),
        Some(first) => format!(" ({} file(s) refused, e.g. {first})", refused.len()),
    }
}

fn init_failure(cause: &CallError) -> String {
    match cause {
        CallError::Panicked { message, .. } => format!("panicked in init: {message}"),
        CallError::Failed { message, .. } => format!("failed to initialise: {message}"),
        CallError::Stuck { entry, limit, .. } => format!(
            "did not return from {entry} within {}; left loaded, not serving",
            humantime::format_duration(*limit)
        ),
        CallError::Crashed { cause, during, .. } => {
            format!("its worker process crashed {during}: {cause}")
        }
        other => format!("failed to initialise: {other}"),
    }
}

/// Why a call into a plugin failed. Every variant names the plugin.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The plugin returned an error.
    #[error("plugin {plugin} returned an error: {message}")]
    Failed {
        /// The plugin.
        plugin: Arc<str>,
        /// Its message.
        message: String,
    },
    /// The plugin panicked; the panic was caught inside the plugin.
    #[error("plugin {plugin} panicked: {message}")]
    Panicked {
        /// The plugin.
        plugin: Arc<str>,
        /// The panic message.
        message: String,
    },
    /// The plugin returned a status this host does not know.
    #[error("plugin {plugin} returned an unknown status code {status}")]
    UnknownStatus {
        /// The plugin.
        plugin: Arc<str>,
        /// The code.
        status: u8,
    },
    /// The call did not finish by its deadline; the plugin was asked to stop (its
    /// `ctx.is_cancelled()` turned true).
    #[error("plugin {plugin} did not answer within {} ms", timeout.as_millis())]
    Timeout {
        /// The plugin.
        plugin: Arc<str>,
        /// The time it had.
        timeout: std::time::Duration,
    },
    /// An entry point the host runs itself (Init, Shutdown, validate_config, state hand-over,
    /// health) did not return in time. Its code may still be running, so the plugin's library
    /// is left loaded for good, and the plugin is not served.
    #[error(
        "plugin {plugin}: {entry} did not return within {}; left loaded, not serving",
        humantime::format_duration(*limit)
    )]
    Stuck {
        /// The plugin.
        plugin: Arc<str>,
        /// The entry point: "init", "shutdown", "validate_config", "save_state", "health".
        entry: &'static str,
        /// How long it had.
        limit: std::time::Duration,
    },
    /// The plugin already runs as many calls as it may at once.
    #[error("plugin {plugin} is busy: {limit} calls already in flight")]
    Busy {
        /// The plugin.
        plugin: Arc<str>,
        /// Its concurrency limit.
        limit: usize,
    },
    /// The plugin's rate limit is used up for now.
    #[error("plugin {plugin} is rate limited to {calls} calls per {} ms", per.as_millis())]
    RateLimited {
        /// The plugin.
        plugin: Arc<str>,
        /// Calls allowed...
        calls: u32,
        /// ...per this long.
        per: std::time::Duration,
    },
    /// The plugin failed too often in a row; calls fail fast until its cool-down ends.
    #[error(
        "plugin {plugin} is failing: circuit open after {failures} consecutive failures, \
         retried in {} ms",
        retry_in.as_millis()
    )]
    CircuitOpen {
        /// The plugin.
        plugin: Arc<str>,
        /// The failures that opened it.
        failures: u32,
        /// When a call will be let through again.
        retry_in: std::time::Duration,
    },
    /// No plugin of that name is loaded.
    #[error("no plugin named {plugin:?} is loaded")]
    NotFound {
        /// The name asked for.
        plugin: String,
    },
    /// The worker process of an isolated plugin died before the call was answered: a crash,
    /// an abort, an exit, a limit hit, or the host killing it for a call it gave up on. The
    /// worker is restarted.
    #[error("{plugin} crashed: {cause}{}{during}", if during.is_empty() { "" } else { " " })]
    Crashed {
        /// The plugin.
        plugin: Arc<str>,
        /// The cause in words: "segmentation fault (SIGSEGV)", "memory limit 64 MiB exceeded".
        cause: String,
        /// What it was doing: "during execute", "during init".
        during: &'static str,
    },
    /// The isolated plugin's worker is being restarted after a crash, and the call had no
    /// deadline to wait within (or it passed).
    #[error("plugin {plugin} is restarting after a crash ({cause}); try again shortly")]
    Restarting {
        /// The plugin.
        plugin: Arc<str>,
        /// The crash.
        cause: String,
    },
    /// The isolated plugin crashed too often and is not restarted until its file changes or
    /// it is enabled again.
    #[error(
        "plugin {plugin} failed: it crashed {crashes} times within {}, last: {cause}; not \
         restarted until its file changes or it is enabled again",
        humantime::format_duration(*window)
    )]
    GaveUp {
        /// The plugin.
        plugin: Arc<str>,
        /// Crashes counted.
        crashes: usize,
        /// Within this long.
        window: std::time::Duration,
        /// The last crash.
        cause: String,
    },
    /// An input, output or message is larger than may cross an isolated plugin's boundary.
    #[error(
        "plugin {plugin}: {what} of {size} bytes is more than the {} MiB that may cross an \
         isolated plugin's boundary",
        limit >> 20
    )]
    TooLarge {
        /// The plugin.
        plugin: Arc<str>,
        /// What was too large: "an input", "an output", "a message".
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The plugin this handle calls was unloaded (its file was deleted, or the host shut
    /// down); calls work again if a plugin of that name is loaded again.
    #[error("plugin {plugin} is not loaded any more")]
    NotLoaded {
        /// The plugin.
        plugin: Arc<str>,
    },
}

/// Why a host could not be set up, read its folder, or start what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// A plugin asked for by name is in no file of the plugins folder.
    #[error(
        "no plugin named {name:?} in {}{}",
        shown_path(dir),
        refused_hint(refused)
    )]
    NoSuchPlugin {
        /// The plugins folder.
        dir: PathBuf,
        /// The name asked for.
        name: String,
        /// The files in the folder that were refused (one may have been it).
        refused: Vec<LoadError>,
    },
    /// A plugin was refused.
    #[error(transparent)]
    Load(Box<LoadError>),
    /// A plugin could not start because one it requires was refused.
    #[error("plugin {name} cannot start: {source}")]
    Requirement {
        /// The plugin asked for.
        name: String,
        /// Why the plugin it requires was refused.
        source: Box<LoadError>,
    },
    /// The plugins folder could not be read.
    #[error("cannot read the plugins folder {}: {source}", shown_path(path))]
    PluginsDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The plugins folder (or the configuration file's folder) could not be watched.
    #[error("cannot watch {}: {source}", shown_path(path))]
    Watch {
        /// The folder.
        path: PathBuf,
        /// What the watcher said (a `notify::Error`, or the OS error starting its thread).
        source: BoxedCause,
    },
    /// The shadow folder could not be created.
    #[error("cannot create the shadow folder {}: {source}", shown_path(path))]
    ShadowDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A plugin asked for by name is not known to the host: never seen in a file, running or
    /// not.
    #[error("no plugin named {plugin:?} is known to this host")]
    UnknownPlugin {
        /// The name asked for.
        plugin: String,
    },
    /// The plugin is disabled in the settings: enable it to start it.
    #[error("plugin {plugin} is disabled: enable it first")]
    PluginDisabled {
        /// The plugin.
        plugin: String,
    },
    /// The plugin is known, but no file is known to hold it.
    #[error("plugin {plugin}: no file is known to hold it")]
    NoFile {
        /// The plugin.
        plugin: String,
    },
    /// The plugin's file was read again and refused ([`Host::reload`](crate::Host::reload)):
    /// the version in service, if any, keeps serving.
    #[error("plugin {plugin} not reloaded: {source}")]
    ReloadRefused {
        /// The plugin.
        plugin: String,
        /// Why its file was refused.
        #[source]
        source: Box<LoadError>,
    },
}

impl HostError {
    /// The plugin the error is about, if it is about one: for telling "no such plugin"
    /// ([`UnknownPlugin`](Self::UnknownPlugin), [`NoSuchPlugin`](Self::NoSuchPlugin)) from a
    /// plugin that is there but refused.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            HostError::NoSuchPlugin { name, .. } | HostError::Requirement { name, .. } => {
                Some(name)
            }
            HostError::UnknownPlugin { plugin }
            | HostError::PluginDisabled { plugin }
            | HostError::NoFile { plugin }
            | HostError::ReloadRefused { plugin, .. } => Some(plugin),
            HostError::Load(error) => error.plugin(),
            HostError::PluginsDir { .. }
            | HostError::Watch { .. }
            | HostError::ShadowDir { .. } => None,
        }
    }

    /// Whether the error says the plugin asked for does not exist (an HTTP API's 404), as
    /// opposed to one that exists and could not do what was asked.
    pub fn is_unknown_plugin(&self) -> bool {
        matches!(
            self,
            HostError::UnknownPlugin { .. } | HostError::NoSuchPlugin { .. }
        )
    }
}

/// Why an event was not published (or, for [`Dropped`](PublishError::Dropped), not queued for
/// every subscriber). Every variant names the topic; the host and the other events go on.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic is malformed.
    #[error("cannot publish {}: {reason}", shown(topic))]
    BadTopic {
        /// The topic.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The event is larger than `host.max_event_size`.
    #[error(
        "cannot publish {}: the event is {size} bytes, more than the {max} bytes \
         host.max_event_size allows",
        shown(topic)
    )]
    TooLarge {
        /// The topic.
        topic: String,
        /// Its size (data, topic, source and extensions).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A plugin published a topic it did not declare in `Plugin::EMITS`.
    #[error(
        "plugin {plugin} may not publish {}: not among the topics it declares ({}); add it \
         to Plugin::EMITS",
        shown(topic),
        if declared.is_empty() { "none".to_owned() } else { declared.join(", ") }
    )]
    NotDeclared {
        /// The plugin.
        plugin: String,
        /// The topic.
        topic: String,
        /// What it declares.
        declared: Vec<String>,
    },
    /// Only the host publishes under `plughost.`.
    #[error(
        "cannot publish {}: topics under plughost. are the host's own",
        shown(topic)
    )]
    Reserved {
        /// The topic.
        topic: String,
    },
    /// A subscriber's queue stayed full for its whole `event_block` (policy `block`): the
    /// event was dropped for it (and queued for the others).
    #[error(
        "{}: dropped for {subscriber}: its queue stayed full for {} (policy block; raise \
         plugins.{subscriber}.event_queue or event_block)",
        shown(topic),
        humantime::format_duration(*waited)
    )]
    Dropped {
        /// The topic.
        topic: String,
        /// The subscriber whose queue was full.
        subscriber: String,
        /// How long the publisher waited.
        waited: std::time::Duration,
    },
    /// A subscriber's queue was full and the publisher, a plugin, is being stopped: it stops
    /// waiting for room (policy `block`), and the event is dropped for that subscriber.
    #[error(
        "{}: dropped for {subscriber}: its queue was full and the publisher is being stopped",
        shown(topic)
    )]
    Stopping {
        /// The topic.
        topic: String,
        /// The subscriber whose queue was full.
        subscriber: String,
    },
    /// The emitter of an event source was used after its source was stopped or replaced.
    #[error(
        "cannot publish {} for {plugin}: its emitter is dead (the source was stopped or \
             replaced)",
        shown(topic)
    )]
    DeadEmitter {
        /// The plugin.
        plugin: String,
        /// The topic.
        topic: String,
    },
    /// The host is shutting down.
    #[error("cannot publish {}: the host is shutting down", shown(topic))]
    Closed {
        /// The topic.
        topic: String,
    },
}
