//! Capabilities: what a plugin may do beyond computing, in a defined vocabulary. A plugin
//! declares what it needs (`Plugin::CAPABILITIES`, plus what its dependencies and events
//! imply); the operator grants per plugin (`[plugins.NAME] grant = [...]`). A plugin that needs
//! a capability it was not granted is refused at load, naming what is missing ([`check`], the
//! one home of that rule).
//!
//! What the host mediates (calls to other plugins, publishing, subscribing) is enforced in
//! process as well as in workers. What a plugin does with system calls (files, sockets,
//! processes, the environment) is enforced by the kernel only in a worker process
//! (`isolation = "process"`), which confines itself to the plugin's *grants* before Init; code
//! in the host's process cannot be stopped from making system calls.
//!
//! | capability | means |
//! |---|---|
//! | `net` | any network access |
//! | `net:connect:HOST:PORT` | TCP connections to `PORT` (`*`: any); the kernel enforces the port, `HOST` is for the record |
//! | `fs:read:PATH` | reading `PATH` and everything beneath it |
//! | `fs:write:PATH` | reading, writing, creating and removing beneath `PATH` |
//! | `exec` | starting processes (with read access to the system's program folders) |
//! | `env` | the host's environment variables |
//! | `events:emit` | publishing events (implied by `EMITS` or an event source) |
//! | `events:subscribe` | receiving events (implied by `SUBSCRIBES`) |
//! | `call:PLUGIN` | calling plugin `PLUGIN` (implied by a dependency on it) |
//!
//! A plugin that cannot know a path or an address when it is built declares `*`
//! (`fs:write:*`, `net:connect:*:*`): the operator's grant says which.

#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::plugin_info::{hides_or_reorders, shown, PluginInfo};

/// The longest capability read, in bytes: a path of `PATH_MAX` and its prefix.
const MAX_LENGTH: usize = 4096 + 16;

/// The most capabilities a plugin may declare: every refusal lists what is missing, in one
/// line.
const MAX_DECLARED: usize = 64;

/// The vocabulary, for messages.
pub(crate) const VOCABULARY: &str = "net, net:connect:HOST:PORT, fs:read:PATH, fs:write:PATH, \
                                     exec, env, events:emit, events:subscribe, call:PLUGIN";

/// One capability, as declared by a plugin or granted by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[non_exhaustive]
pub enum Capability {
    /// Any network access.
    Net,
    /// TCP connections to `port` of `host`.
    NetConnect {
        /// A name or an address; `*` for any.
        host: String,
        /// `None` for any (`*`).
        port: Option<u16>,
    },
    /// Reading beneath a path.
    FsRead(FsTarget),
    /// Reading and writing beneath a path.
    FsWrite(FsTarget),
    /// Starting processes.
    Exec,
    /// The environment variables.
    Env,
    /// Publishing events.
    EventsEmit,
    /// Receiving events.
    EventsSubscribe,
    /// Calling a plugin (`*` for any).
    Call(String),
}

/// The path of an `fs:` capability.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FsTarget {
    /// `*`: declared by a plugin that lets the operator choose.
    Any,
    /// An absolute path, without `.` or `..` components.
    Path(PathBuf),
}

impl Capability {
    /// Whether this capability, granted, allows what `need` asks for. A `*` in a need is
    /// covered by any grant of that kind; a `*` in a grant covers any need of that kind; a
    /// path covers the paths beneath it; `net` covers every `net:connect`; `fs:write` covers
    /// `fs:read`.
    pub fn covers(&self, need: &Capability) -> bool {
        use Capability::*;
        match (self, need) {
            (Net, Net | NetConnect { .. }) => true,
            (
                NetConnect { host, port },
                NetConnect {
                    host: wanted_host,
                    port: wanted_port,
                },
            ) => {
                let host_ok =
                    host == "*" || wanted_host == "*" || host.eq_ignore_ascii_case(wanted_host);
                let port_ok = port.is_none() || wanted_port.is_none() || port == wanted_port;
                host_ok && port_ok
            }
            (FsRead(granted), FsRead(wanted))
            | (FsWrite(granted), FsRead(wanted) | FsWrite(wanted)) => granted.covers(wanted),
            (Exec, Exec) | (Env, Env) | (EventsEmit, EventsEmit) => true,
            (EventsSubscribe, EventsSubscribe) => true,
            (Call(granted), Call(wanted)) => granted == "*" || granted == wanted,
            _ => false,
        }
    }

    /// Makes a relative `fs:` path absolute from `base` (the configuration file's folder, as
    /// for every path in it).
    pub(crate) fn resolve(self, base: &Path) -> Capability {
        let resolve = |target: FsTarget| match target {
            FsTarget::Path(path) if path.is_relative() => {
                let joined = base.join(path);
                FsTarget::Path(normal(&std::path::absolute(&joined).unwrap_or(joined)))
            }
            other => other,
        };
        match self {
            Capability::FsRead(target) => Capability::FsRead(resolve(target)),
            Capability::FsWrite(target) => Capability::FsWrite(resolve(target)),
            other => other,
        }
    }

    /// This capability as the operator would grant it: a path the plugin left to the
    /// operator (`fs:write:*`) shows as `fs:write:PATH`, to be filled in (a grant of `*` is
    /// not accepted: it would be the whole file system).
    pub fn as_grant(&self) -> String {
        match self {
            Capability::FsRead(FsTarget::Any) => "fs:read:PATH".into(),
            Capability::FsWrite(FsTarget::Any) => "fs:write:PATH".into(),
            other => other.to_string(),
        }
    }

    /// Whether this is a grant the kernel can enforce only in a worker process (files,
    /// network, processes, environment), as opposed to one the host mediates.
    pub fn is_system(&self) -> bool {
        !matches!(
            self,
            Capability::EventsEmit | Capability::EventsSubscribe | Capability::Call(_)
        )
    }

    fn parse(text: &str, relative_paths: bool) -> Result<Capability, String> {
        // What a capability says ends up in one-line refusals, listings and the log: nothing
        // in it may break a line, hide or reorder text, or flood them.
        if text.len() > MAX_LENGTH {
            return Err(format!(
                "{:?}...: longer than {MAX_LENGTH} bytes",
                shown(&text.chars().take(64).collect::<String>())
            ));
        }
        if text.chars().any(|c| c != ' ' && hides_or_reorders(c)) {
            return Err(format!(
                "{:?}: control or invisible characters are not allowed",
                shown(text)
            ));
        }
        let unknown = || format!("unknown capability {text:?} (known: {VOCABULARY})");
        let (kind, rest) = match text.split_once(':') {
            Some((kind, rest)) => (kind, Some(rest)),
            None => (text, None),
        };
        match (kind, rest) {
            ("net", None) => Ok(Capability::Net),
            ("exec", None) => Ok(Capability::Exec),
            ("env", None) => Ok(Capability::Env),
            ("events", Some("emit")) => Ok(Capability::EventsEmit),
            ("events", Some("subscribe")) => Ok(Capability::EventsSubscribe),
            ("net", Some(rest)) => {
                let Some(address) = rest.strip_prefix("connect:") else {
                    return Err(unknown());
                };
                let Some((host, port)) = address.rsplit_once(':') else {
                    return Err(format!(
                        "{text:?}: net:connect needs a host and a port (net:connect:HOST:PORT, \
                         `*` for any)"
                    ));
                };
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
                    return Err(format!(
                        "{text:?}: the host must be a name, an address or `*`"
                    ));
                }
                let port = match port {
                    "*" => None,
                    port => match port.parse::<u16>() {
                        Ok(port) if port > 0 => Some(port),
                        _ => {
                            return Err(format!(
                                "{text:?}: the port must be a number from 1 to 65535, or `*`"
                            ))
                        }
                    },
                };
                Ok(Capability::NetConnect {
                    host: host.to_owned(),
                    port,
                })
            }
            ("fs", Some(rest)) => {
                let (write, path) = if let Some(path) = rest.strip_prefix("read:") {
                    (false, path)
                } else if let Some(path) = rest.strip_prefix("write:") {
                    (true, path)
                } else {
                    return Err(unknown());
                };
                let target = FsTarget::parse(text, path, relative_paths)?;
                Ok(if write {
                    Capability::FsWrite(target)
                } else {
                    Capability::FsRead(target)
                })
            }
            ("call", Some(plugin)) => {
                // The rule of plugin names (loader/metadata.rs): spaces were refused above.
                if plugin.is_empty() || plugin.contains(' ') {
                    return Err(format!("{text:?}: call: needs a plugin's name, or `*`"));
                }
                Ok(Capability::Call(plugin.to_owned()))
            }
            _ => Err(unknown()),
        }
    }

    /// A capability as a plugin declares it: paths absolute or `*`.
    pub fn declared(text: &str) -> Result<Capability, String> {
        Capability::parse(text.trim(), false)
    }
}

impl FsTarget {
    fn parse(text: &str, path: &str, relative: bool) -> Result<FsTarget, String> {
        if path == "*" {
            return Ok(FsTarget::Any);
        }
        let path = Path::new(path);
        if path.as_os_str().is_empty() {
            return Err(format!("{text:?}: needs a path (or `*`)"));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(format!(
                "{text:?}: `..` is not allowed in a path; name the folder itself"
            ));
        }
        if !relative && path.is_relative() {
            return Err(format!("{text:?}: the path must be absolute (or `*`)"));
        }
        Ok(FsTarget::Path(normal(path)))
    }

    fn covers(&self, wanted: &FsTarget) -> bool {
        match (self, wanted) {
            (_, FsTarget::Any) => true,
            (FsTarget::Any, FsTarget::Path(_)) => false,
            (FsTarget::Path(granted), FsTarget::Path(wanted)) => wanted.starts_with(granted),
        }
    }
}

/// `path` without `.` components or a trailing slash.
fn normal(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

impl fmt::Display for FsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsTarget::Any => f.write_str("*"),
            FsTarget::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capability::Net => f.write_str("net"),
            Capability::NetConnect { host, port } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                match port {
                    Some(port) => write!(f, "net:connect:{host}:{port}"),
                    None => write!(f, "net:connect:{host}:*"),
                }
            }
            Capability::FsRead(target) => write!(f, "fs:read:{target}"),
            Capability::FsWrite(target) => write!(f, "fs:write:{target}"),
            Capability::Exec => f.write_str("exec"),
            Capability::Env => f.write_str("env"),
            Capability::EventsEmit => f.write_str("events:emit"),
            Capability::EventsSubscribe => f.write_str("events:subscribe"),
            Capability::Call(plugin) => write!(f, "call:{plugin}"),
        }
    }
}

impl std::str::FromStr for Capability {
    type Err = String;

    /// A capability as the operator grants it: a relative path is allowed (and resolved from
    /// the configuration file's folder when the file is read); `*` for a path is not.
    fn from_str(text: &str) -> Result<Self, String> {
        let capability = Capability::parse(text.trim(), true)?;
        if let Capability::FsRead(FsTarget::Any) | Capability::FsWrite(FsTarget::Any) = capability {
            return Err(format!(
                "{text:?}: a grant names the path (`fs:write:/var/lib/x`; `fs:read:/` if the \
                 whole file system is meant); `*` is for a plugin's declaration"
            ));
        }
        Ok(capability)
    }
}

impl TryFrom<String> for Capability {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Capability> for String {
    fn from(capability: Capability) -> String {
        capability.to_string()
    }
}

/// The plugin-api version from which a plugin's declared capabilities must be of the
/// vocabulary. Earlier plugins used free words (`"text"`, `"json"`), kept as labels.
const VOCABULARY_SINCE: semver::Version = semver::Version::new(1, 5, 0);

/// Where a needed capability comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Source {
    /// `Plugin::CAPABILITIES`.
    Declared,
    /// A dependency (`call:PLUGIN`).
    Dependency,
    /// `EMITS`, or being an event source (`events:emit`).
    Emits,
    /// `SUBSCRIBES` (`events:subscribe`).
    Subscribes,
}

/// A capability a plugin needs, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Need {
    /// The capability.
    pub capability: Capability,
    /// Where it comes from.
    pub source: Source,
}

/// A capability a plugin declares that is not of the vocabulary.
#[derive(Debug, Clone, thiserror::Error)]
#[error("capability {capability:?}: {reason}")]
#[non_exhaustive]
pub struct CapabilityError {
    /// The capability as declared.
    pub capability: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What `info`'s plugin needs: its declared capabilities, then those its dependencies and
/// events imply. A declaration outside the vocabulary is an error (from plugin-api 1.5; before,
/// free words were labels, and are skipped).
pub(crate) fn needs(info: &PluginInfo) -> Result<Vec<Need>, CapabilityError> {
    let mut needs: Vec<Need> = Vec::new();
    let mut add = |capability: Capability, source: Source| {
        if !needs.iter().any(|n| n.capability == capability) {
            needs.push(Need { capability, source });
        }
    };
    let strict = info.api_version >= VOCABULARY_SINCE;
    if strict && info.capabilities.len() > MAX_DECLARED {
        return Err(CapabilityError {
            capability: format!("({} capabilities)", info.capabilities.len()),
            reason: format!("a plugin declares at most {MAX_DECLARED}"),
        });
    }
    for text in &info.capabilities {
        match Capability::declared(text) {
            Ok(capability) => add(capability, Source::Declared),
            Err(reason) if strict => {
                return Err(CapabilityError {
                    capability: text.clone(),
                    reason,
                })
            }
            Err(_) => {}
        }
    }
    for dependency in &info.dependencies {
        add(
            Capability::Call(dependency.name.clone()),
            Source::Dependency,
        );
    }
    if !info.emits.is_empty() || info.event_source {
        add(Capability::EventsEmit, Source::Emits);
    }
    if !info.subscribes.is_empty() {
        add(Capability::EventsSubscribe, Source::Subscribes);
    }
    Ok(needs)
}

/// Whether `grants` allow `capability`.
pub(crate) fn granted(grants: &[Capability], capability: &Capability) -> bool {
    grants.iter().any(|g| g.covers(capability))
}

/// Refuses the plugin of `info`, loaded from `path`, if it needs a capability `grants` do not
/// cover, naming every one missing and the line that would grant them. The one home of the
/// rule, for libraries loaded here and in workers, at start, on reload and on a live edit.
pub(crate) fn check(
    path: &Path,
    info: &PluginInfo,
    grants: &[Capability],
) -> Result<(), LoadError> {
    let needs = needs(info).map_err(|e| LoadError::BadCapability {
        path: path.to_owned(),
        name: info.name.clone(),
        capability: e.capability,
        reason: e.reason,
    })?;
    let missing: Vec<Capability> = needs
        .into_iter()
        .map(|n| n.capability)
        .filter(|c| !granted(grants, c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(LoadError::NotGranted {
        path: path.to_owned(),
        name: info.name.clone(),
        missing,
        granted: grants.to_vec(),
        info: Box::new(info.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(text: &str) -> Capability {
        text.parse().unwrap()
    }

    fn need(text: &str) -> Capability {
        Capability::declared(text).unwrap()
    }

    #[test]
    fn the_vocabulary_reads_and_prints_back() {
        for text in [
            "net",
            "net:connect:db.internal:5432",
            "net:connect:*:443",
            "net:connect:[::1]:80",
            "net:connect:10.0.0.1:*",
            "fs:read:/etc/passwd",
            "fs:write:/var/lib/x",
            "fs:read:*",
            "exec",
            "env",
            "events:emit",
            "events:subscribe",
            "call:storage",
            "call:plügin",
            "call:*",
        ] {
            assert_eq!(need(text).to_string(), text);
        }
    }

    #[test]
    fn bad_capabilities_say_why() {
        for (text, words) in [
            ("text", "unknown capability"),
            ("net:listen:80", "unknown capability"),
            ("net:connect:host", "needs a host and a port"),
            ("net:connect:h:0", "from 1 to 65535"),
            ("net:connect:h:99999", "from 1 to 65535"),
            ("fs:read:", "needs a path"),
            ("fs:read:/a/../etc", "`..`"),
            ("fs:exec:/bin", "unknown capability"),
            ("call:", "plugin's name"),
            ("call:a b", "plugin's name"),
            ("fs:read:/srv/a\nINFO forged", "control or invisible"),
            ("fs:read:/srv/\u{202e}txt", "control or invisible"),
            ("net:connect:a\tb:80", "control or invisible"),
        ] {
            let error = text.parse::<Capability>().unwrap_err();
            assert!(error.contains(words), "{text}: {error}");
        }
        let error = Capability::declared("fs:read:relative").unwrap_err();
        assert!(error.contains("absolute"), "{error}");
        let long = format!("fs:read:/{}", "a".repeat(5000));
        assert!(long
            .parse::<Capability>()
            .unwrap_err()
            .contains("longer than"));
        let error = "fs:write:*".parse::<Capability>().unwrap_err();
        assert!(error.contains("a grant names the path"), "{error}");
        assert_eq!(need("fs:write:*").as_grant(), "fs:write:PATH");
    }

    #[test]
    fn grants_cover_what_they_should_and_nothing_more() {
        let yes = [
            ("net", "net:connect:a:1"),
            ("net:connect:*:443", "net:connect:x.org:443"),
            ("net:connect:x.org:*", "net:connect:X.ORG:443"),
            ("net:connect:x.org:443", "net:connect:*:*"),
            ("fs:read:/etc", "fs:read:/etc/passwd"),
            ("fs:write:/srv", "fs:read:/srv/a"),
            ("fs:write:/srv", "fs:write:/srv/a/b"),
            ("fs:read:/srv", "fs:read:*"),
            ("call:*", "call:storage"),
        ];
        for (grant, wanted) in yes {
            assert!(
                cap(grant).covers(&need(wanted)),
                "{grant} should cover {wanted}"
            );
        }
        let no = [
            ("net:connect:*:443", "net"),
            ("net:connect:*:443", "net:connect:x:80"),
            ("fs:read:/etc", "fs:write:/etc/x"),
            ("fs:read:/etc", "fs:read:/etcetera"),
            ("fs:read:/srv", "fs:write:*"),
            ("call:storage", "call:notes"),
            ("events:emit", "events:subscribe"),
            ("exec", "env"),
        ];
        for (grant, wanted) in no {
            assert!(
                !cap(grant).covers(&need(wanted)),
                "{grant} should not cover {wanted}"
            );
        }
    }

    #[test]
    fn relative_grants_resolve_from_the_file_folder() {
        let resolved = cap("fs:write:./data/out").resolve(Path::new("/etc/plughost"));
        assert_eq!(resolved.to_string(), "fs:write:/etc/plughost/data/out");
    }
}
