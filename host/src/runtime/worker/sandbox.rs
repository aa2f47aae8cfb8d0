//! Confining a worker process to its plugin's grants, with the kernel's help: Landlock for
//! files and TCP ports, a seccomp filter for sockets and processes, and `no_new_privs` for
//! both. The environment is the [`spawner`](super::spawner)'s part: without `env` a worker
//! starts with an empty one ([`Sandbox::keeps_environment`]).
//!
//! The host builds a [`Sandbox`] from the plugin's grants and `[host] confinement` and passes
//! it to the worker as JSON. The worker [`confine`]s itself first, while it has one thread,
//! before it loads the library: its constructors run confined, and so does every thread and
//! process they start. What this kernel cannot enforce of a sandbox ([`gaps`]) refuses the
//! plugin (`"enforce"`) or is named in a warning (`"best-effort"`).
//!
//! | grant | the worker may |
//! |---|---|
//! | (always) | read and write `/dev/null`; read `/dev/zero`, `/dev/urandom` |
//! | (always) | read files in [`LIBRARIES`](rules::LIBRARIES) and `LD_LIBRARY_PATH`'s folders |
//! | `fs:read:P` | read files and list folders beneath `P` |
//! | `fs:write:P` | all but execute beneath `P`: write, create, remove, rename, truncate |
//! | `exec` | fork and execve; read and execute [`PROGRAMS`](rules::PROGRAMS) |
//! | `net` | any socket: the network, and local sockets (abstract ones: only its own) |
//! | `net:connect:H:P` | TCP sockets (IPv4, IPv6), connected to port `P` (`*`: any) |
//! | `net`, `net:connect` | read the resolver's files ([`RESOLVER`](rules::RESOLVER)) |
//! | `env` | see the host's environment variables (else the worker has none) |
//!
//! `net:connect` does not check `H`, and allows nothing but TCP connections made with
//! `connect()`: no UDP, so no DNS (names resolve from `/etc/hosts` only), no TCP Fast Open, no
//! `listen()`. From Landlock ABI 6 a worker cannot signal processes outside its sandbox (the
//! host's among them) nor reach their abstract Unix sockets.
//!
//! A granted path is taken as it is written: one that leads elsewhere through a symbolic link
//! refuses the plugin (`"enforce"`) or is left closed with a warning (`"best-effort"`).
//!
//! What is denied fails with an error the plugin can return, never a signal: a permission error
//! (`EACCES`, `EPERM`), `EXDEV` for a link or rename out of a granted folder; `clone3` and
//! `io_uring_setup` fail with `ENOSYS`, so that glibc falls back to `clone` for threads and
//! programs to plain system calls.

mod rules;
mod seccomp;

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::capability::{Capability, FsTarget};
use crate::config::Confinement;

/// What a worker is confined to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sandbox {
    /// `[host] confinement`.
    pub(crate) confinement: Confinement,
    /// The plugin's grants the kernel enforces (files, network, processes, environment),
    /// sorted, so that equal grants make equal sandboxes.
    pub(crate) grants: Vec<Capability>,
}

impl Sandbox {
    /// The sandbox of a plugin granted `grants`.
    pub(crate) fn new(grants: &[Capability], confinement: Confinement) -> Sandbox {
        let mut grants: Vec<Capability> =
            grants.iter().filter(|g| g.is_system()).cloned().collect();
        grants.sort();
        grants.dedup();
        Sandbox {
            confinement,
            grants,
        }
    }

    /// No grants: for a worker whose plugin is not known yet.
    pub(crate) fn strictest(confinement: Confinement) -> Sandbox {
        Sandbox::new(&[], confinement)
    }

    /// Whether the worker starts with the host's environment.
    pub(crate) fn keeps_environment(&self) -> bool {
        self.confinement == Confinement::Off || self.grants.contains(&Capability::Env)
    }

    fn exec(&self) -> bool {
        self.grants.contains(&Capability::Exec)
    }

    fn network(&self) -> Network {
        if self.grants.contains(&Capability::Net) {
            return Network::Any;
        }
        let ports: Vec<Option<u16>> = self
            .grants
            .iter()
            .filter_map(|g| match g {
                Capability::NetConnect { port, .. } => Some(*port),
                _ => None,
            })
            .collect();
        if ports.is_empty() {
            Network::None
        } else if ports.contains(&None) {
            Network::Tcp(Vec::new())
        } else {
            let mut ports: Vec<u16> = ports.into_iter().flatten().collect();
            ports.sort_unstable();
            ports.dedup();
            Network::Tcp(ports)
        }
    }

    /// The `net:connect` grants, as the operator wrote them.
    fn connects(&self) -> String {
        let connects: Vec<String> = self
            .grants
            .iter()
            .filter(|g| matches!(g, Capability::NetConnect { .. }))
            .map(Capability::to_string)
            .collect();
        connects.join(", ")
    }

    /// The `fs:` grants, as the operator wrote them.
    fn files(&self) -> Vec<String> {
        self.grants
            .iter()
            .filter(|g| matches!(g, Capability::FsRead(_) | Capability::FsWrite(_)))
            .map(Capability::to_string)
            .collect()
    }

    /// Whether some file is out of bounds (not with `fs:write:*` or `fs:write:/`).
    fn restricts_files(&self) -> bool {
        !self.grants.iter().any(|g| match g {
            Capability::FsWrite(FsTarget::Any) => true,
            Capability::FsWrite(FsTarget::Path(path)) => path == Path::new("/"),
            _ => false,
        })
    }
}

/// What a sandbox allows on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Network {
    /// Nothing: no socket at all.
    None,
    /// TCP connections to these ports (none listed: to any port).
    Tcp(Vec<u16>),
    /// Anything (`net`).
    Any,
}

/// What the running kernel offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kernel {
    pub(crate) landlock: Landlock,
    /// Whether seccomp filters that return an error are available.
    pub(crate) seccomp: bool,
}

/// Landlock on the running kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landlock {
    /// Available, at this ABI version.
    Abi(u32),
    /// Built in, not enabled at boot.
    Disabled,
    /// Not built into this kernel.
    Missing,
}

/// What one needs of Landlock: the ABI, and what it brings.
const FILES_ABI: u32 = 3; // truncation (ABI 1 and 2 cannot keep a plugin from truncating)
const TCP_ABI: u32 = 4;
const SCOPES_ABI: u32 = 6;

impl Kernel {
    /// Asks the running kernel.
    pub(crate) fn detect() -> Kernel {
        const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
        // SAFETY: the version query passes no ruleset (NULL, size 0): the kernel reads no
        // memory and returns the ABI version or an error.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<libc::c_void>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        let landlock = if abi > 0 {
            Landlock::Abi(abi as u32)
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP) {
            Landlock::Disabled
        } else {
            Landlock::Missing
        };
        let action: u32 = libc::SECCOMP_RET_ERRNO;
        // SAFETY: SECCOMP_GET_ACTION_AVAIL reads the u32 `action` on this stack and changes
        // nothing; it succeeds where filters returning an error can be installed (Linux 4.14).
        let available = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_ACTION_AVAIL,
                0,
                &action as *const u32,
            )
        };
        Kernel {
            landlock,
            seccomp: available == 0,
        }
    }

    fn landlock_abi(&self) -> u32 {
        match self.landlock {
            Landlock::Abi(abi) => abi,
            Landlock::Disabled | Landlock::Missing => 0,
        }
    }

    /// Whether nothing any sandbox needs is missing.
    pub(crate) fn is_complete(&self) -> bool {
        self.landlock_abi() >= TCP_ABI && self.seccomp
    }
}

impl fmt::Display for Landlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Landlock::Abi(abi) => write!(f, "Landlock ABI {abi}"),
            Landlock::Disabled => f.write_str(
                "no Landlock (built in, not enabled at boot: add landlock to the kernel's lsm= \
                 parameter)",
            ),
            Landlock::Missing => f.write_str("no Landlock (not built into this kernel)"),
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seccomp = if self.seccomp {
            "seccomp filters"
        } else {
            "no seccomp filters"
        };
        write!(f, "{}, {seccomp}", self.landlock)
    }
}

/// Something a sandbox needs that the kernel lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gap {
    /// What the kernel lacks.
    pub(crate) lacks: String,
    /// What of the sandbox needs it.
    pub(crate) needed_for: String,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "it lacks {}, needed {}", self.lacks, self.needed_for)
    }
}

/// What `sandbox` needs that `kernel` lacks. Landlock confines files (from ABI 3, which can
/// keep a plugin from truncating files it may only read) and TCP ports (ABI 4, for
/// `net:connect`); seccomp keeps a plugin from sockets without `net` and from processes without
/// `exec`. Landlock's scopes (ABI 6: signals, abstract sockets) are extras: never a gap.
pub(crate) fn gaps(kernel: &Kernel, sandbox: &Sandbox) -> Vec<Gap> {
    let mut gaps = Vec::new();
    let abi = kernel.landlock_abi();
    let lacks_abi = |needed: u32, brings: &str| match kernel.landlock {
        Landlock::Abi(abi) => format!("Landlock ABI {needed} ({brings}; it has ABI {abi})"),
        other => format!("Landlock ABI {needed} ({brings}; it has {other})"),
    };
    if sandbox.restricts_files() && abi < FILES_ABI {
        let files = sandbox.files();
        gaps.push(Gap {
            lacks: if abi == 0 {
                kernel.landlock.to_string().replacen("no ", "", 1)
            } else {
                lacks_abi(FILES_ABI, "truncation")
            },
            needed_for: if files.is_empty() {
                "to keep it from every file (it has no fs: grant)".into()
            } else {
                format!("to confine it to {}", files.join(", "))
            },
        });
    }
    if matches!(sandbox.network(), Network::Tcp(_)) && abi < TCP_ABI {
        gaps.push(Gap {
            lacks: lacks_abi(TCP_ABI, "TCP port rules"),
            needed_for: format!("for {}", sandbox.connects()),
        });
    }
    if !kernel.seccomp {
        let mut needed = Vec::new();
        match sandbox.network() {
            Network::None => needed.push("to keep it from opening sockets (net is not granted)"),
            Network::Tcp(_) => needed.push("to keep it to TCP (only net:connect is granted)"),
            Network::Any => {}
        }
        if !sandbox.exec() {
            needed.push("to keep it from starting processes (exec is not granted)");
        }
        if !needed.is_empty() {
            gaps.push(Gap {
                lacks: "seccomp filters".into(),
                needed_for: needed.join(" and "),
            });
        }
    }
    gaps
}

/// What a worker was confined to, for the host's log: sent with `Loaded`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Confined {
    /// What the plugin may do, in one line; `None` when confinement is off.
    pub(crate) summary: Option<String>,
    /// Granted paths that do not exist, and what is not enforced (logged in the plugin's span:
    /// they do not name it).
    pub(crate) warnings: Vec<String>,
}

impl Confined {
    /// Logs it in the current span: at INFO and WARN for a plugin's first worker, at DEBUG for
    /// a restart's (it says the same again).
    pub(crate) fn log(&self, first: bool) {
        for warning in &self.warnings {
            if first {
                tracing::warn!("{warning}");
            } else {
                tracing::debug!("{warning}");
            }
        }
        if let Some(summary) = &self.summary {
            if first {
                tracing::info!("{summary}");
            } else {
                tracing::debug!("{summary}");
            }
        }
    }
}

/// Confines this worker to `sandbox`, before it loads the library (the private copy `copy`,
/// which stays readable, as do the system's libraries): the library's constructors, and every
/// thread and process they start, run confined. The calling thread must be the process's only
/// one (Landlock confines the calling thread and the threads and processes it starts later).
/// `plugin`: its name, if the host knows it. `Err` is the refusal, one line naming the plugin,
/// what is missing and the fix.
pub(crate) fn confine(
    sandbox: &Sandbox,
    plugin: Option<&str>,
    copy: &Path,
) -> Result<Confined, String> {
    if sandbox.confinement == Confinement::Off {
        return Ok(Confined::default());
    }
    let enforce = sandbox.confinement == Confinement::Enforce;
    let plugin = plugin.unwrap_or("(not named yet)");
    let mut warnings = Vec::new();
    // A defence: the library is not loaded yet, so these would be the worker program's own
    // (an embedding program that calls `plughost::probe_main` after starting threads).
    // Unreadable (no /proc): taken as one.
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |tasks| tasks.count());
    if threads > 1 {
        let started = format!(
            "{} thread(s) the worker program started before it confined itself",
            threads - 1
        );
        if enforce {
            return Err(format!(
                "plugin {plugin} refused: Landlock cannot confine the {started}; fix: call \
                 plughost::probe_main first thing in main, before any thread starts, or \
                 `[host] confinement = \"best-effort\"` in plughost.toml to run it with those \
                 threads free to open any file"
            ));
        }
        warnings.push(format!(
            "the {started} may open any file: Landlock cannot confine them"
        ));
    }
    let kernel = Kernel::detect();
    let gaps = gaps(&kernel, sandbox);
    if !gaps.is_empty() {
        let gaps: Vec<String> = gaps.iter().map(Gap::to_string).collect();
        if enforce {
            return Err(format!(
                "plugin {plugin} refused: this kernel cannot confine it to its grants: {}; fix: \
                 a kernel that has it, or `[host] confinement = \"best-effort\"` in plughost.toml \
                 to run it with what this kernel enforces",
                gaps.join("; ")
            ));
        }
        warnings.push(format!(
            "not fully confined (confinement = \"best-effort\"): this kernel cannot enforce all \
             of its grants: {}",
            gaps.join("; ")
        ));
    }
    let failed = |what: &str, e: String| format!("plugin {plugin} refused: {what}: {e}");
    // Before the filter, which requires it (or privileges), and for good: nothing the plugin
    // starts gains privileges (set-user-ID programs run as the plugin's user).
    // SAFETY: `prctl(PR_SET_NO_NEW_PRIVS)` only sets a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        let e = std::io::Error::last_os_error().to_string();
        if enforce {
            return Err(failed("cannot set no_new_privs", e));
        }
        warnings.push(format!("cannot set no_new_privs: {e}"));
    }
    if kernel.landlock_abi() > 0 {
        match rules::landlock(sandbox, enforce, plugin, copy, &mut warnings) {
            Ok(()) => {}
            Err(rules::Denied::Link(refusal)) => return Err(refusal),
            Err(rules::Denied::Kernel(e)) if enforce => return Err(failed("Landlock", e)),
            Err(rules::Denied::Kernel(e)) => {
                warnings.push(format!("files NOT confined: Landlock: {e}"))
            }
        }
    }
    if kernel.seccomp {
        match seccomp::filters(sandbox).and_then(|filters| seccomp::install(&filters)) {
            Ok(()) => {}
            Err(e) if enforce => return Err(failed("seccomp", e)),
            Err(e) => warnings.push(format!("sockets and processes NOT confined: seccomp: {e}")),
        }
    }
    Ok(Confined {
        summary: Some(summary(sandbox, &kernel)),
        warnings,
    })
}

/// "confined: files fs:read:/etc/ssl; network none; processes no; environment cleared
/// (Landlock ABI 7, seccomp filters)".
fn summary(sandbox: &Sandbox, kernel: &Kernel) -> String {
    let files = sandbox.files();
    let files = if files.is_empty() {
        "none".into()
    } else {
        files.join(", ")
    };
    let network = match sandbox.network() {
        Network::None => "none".into(),
        Network::Tcp(ports) if ports.is_empty() => "TCP to any port".into(),
        Network::Tcp(ports) => {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            format!("TCP to port {}", ports.join(", "))
        }
        Network::Any => "any (net)".into(),
    };
    let processes = if sandbox.exec() { "yes (exec)" } else { "no" };
    let environment = if sandbox.keeps_environment() {
        "inherited (env)"
    } else {
        "cleared"
    };
    let scopes = match kernel.landlock {
        Landlock::Abi(abi) if abi < SCOPES_ABI => "; signals and abstract sockets not scoped",
        _ => "",
    };
    format!(
        "confined: files {files}; network {network}; processes {processes}; environment \
         {environment} ({kernel}{scopes})"
    )
}

/// A sandbox of `grants` (as written in plughost.toml), enforced: for the tests.
#[cfg(test)]
fn granted(grants: &[&str]) -> Sandbox {
    let grants: Vec<Capability> = grants.iter().map(|g| g.parse().unwrap()).collect();
    Sandbox::new(&grants, Confinement::Enforce)
}

#[cfg(test)]
mod tests;
