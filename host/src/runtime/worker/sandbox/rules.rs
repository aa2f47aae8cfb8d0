//! The Landlock part of a [`Sandbox`]: the paths and rights the worker may use, and the TCP
//! ports it may connect to.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{Network, Sandbox};
use crate::capability::{Capability, FsTarget};

/// The system's programs and the libraries they load: readable and executable with `exec`.
pub(super) const PROGRAMS: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/etc/ld.so.cache",
];

/// Where the dynamic loader finds the libraries a plugin links to that the worker program has
/// not loaded itself: their files are readable in every confined worker (it confines itself
/// before it loads the plugin), as are those of the folders in `LD_LIBRARY_PATH`.
pub(super) const LIBRARIES: &[&str] = &[
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/libx32",
    "/usr/local/lib",
    "/etc/ld.so.cache",
];

/// What looking up a name reads: readable with a network grant.
pub(super) const RESOLVER: &[&str] = &[
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
];

/// Devices every program expects: readable, and writable if `true`.
const DEVICES: &[(&str, bool)] = &[
    ("/dev/null", true),
    ("/dev/zero", false),
    ("/dev/urandom", false),
];

/// What a file rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rights {
    Read,
    /// Read and execute (system programs, with `exec`).
    Run,
    /// Read files, not list folders (the system's libraries, for the dynamic loader).
    Library,
    /// Everything but execute.
    Write,
    /// Read, and write if `true` (a device: no folder rights).
    Device(bool),
}

/// One path the worker may use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileRule {
    path: PathBuf,
    rights: Rights,
    /// From an `fs:` grant (a missing path is worth a warning), not a system path.
    granted: bool,
}

/// The paths `sandbox` opens to the worker, and how; `loader`: the folders of
/// `LD_LIBRARY_PATH`.
fn file_rules(sandbox: &Sandbox, loader: &[PathBuf]) -> Vec<FileRule> {
    let system = |path: &str, rights| FileRule {
        path: PathBuf::from(path),
        rights,
        granted: false,
    };
    let mut rules: Vec<FileRule> = DEVICES
        .iter()
        .map(|&(path, write)| system(path, Rights::Device(write)))
        .collect();
    for grant in &sandbox.grants {
        let (target, rights) = match grant {
            Capability::FsRead(target) => (target, Rights::Read),
            Capability::FsWrite(target) => (target, Rights::Write),
            _ => continue,
        };
        let path = match target {
            FsTarget::Any => PathBuf::from("/"),
            FsTarget::Path(path) => path.clone(),
        };
        rules.push(FileRule {
            path,
            rights,
            granted: true,
        });
    }
    rules.extend(LIBRARIES.iter().map(|path| system(path, Rights::Library)));
    rules.extend(loader.iter().map(|path| FileRule {
        path: path.clone(),
        rights: Rights::Library,
        granted: false,
    }));
    if sandbox.exec() {
        rules.extend(PROGRAMS.iter().map(|path| system(path, Rights::Run)));
    }
    if sandbox.network() != Network::None {
        rules.extend(RESOLVER.iter().map(|path| system(path, Rights::Read)));
    }
    rules
}

/// The folders of `LD_LIBRARY_PATH` (absolute ones: the others name no fixed place), where
/// the dynamic loader looks first.
fn loader_path() -> Vec<PathBuf> {
    std::env::var_os("LD_LIBRARY_PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .filter(|path| path.is_absolute())
                .collect()
        })
        .unwrap_or_default()
}

/// Why a sandbox was not applied.
#[derive(Debug)]
pub(super) enum Denied {
    /// A granted path leads elsewhere through a symbolic link (`"enforce"`): the message.
    Link(String),
    /// The kernel refused a step: its error.
    Kernel(String),
}

/// `path` opened without access (`O_PATH`), following symbolic links, as Landlock's rules take
/// it.
fn open_path(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
}

/// Where `opened` (from `path`) really is: what the rule on it opens.
fn real_path(opened: &File, path: &Path) -> Option<PathBuf> {
    use std::os::fd::AsRawFd as _;
    std::fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd()))
        .or_else(|_| std::fs::canonicalize(path))
        .ok()
}

/// Applies the Landlock part of `sandbox` to the calling thread (and what it starts later).
/// With `enforce`, what [`gaps`](super::gaps) requires is a hard requirement; the rest (the
/// rights of later ABIs, up to the last one tested, 7) is best effort. Granted paths that do
/// not exist are skipped, each with a line in `warnings`; so is, in `"best-effort"`, a granted
/// path that leads elsewhere through a symbolic link (refused in `"enforce"`, naming `plugin`).
/// `copy`, the private copy of the library, stays readable.
pub(super) fn landlock(
    sandbox: &Sandbox,
    enforce: bool,
    plugin: &str,
    copy: &Path,
    warnings: &mut Vec<String>,
) -> Result<(), Denied> {
    use landlock::{
        Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
        Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
    };
    let tested = ABI::V7;
    let required = if enforce {
        CompatLevel::HardRequirement
    } else {
        CompatLevel::BestEffort
    };
    let network = sandbox.network();
    let tcp: BitFlags<AccessNet> = match &network {
        Network::Any => BitFlags::EMPTY,
        Network::Tcp(ports) if ports.is_empty() => AccessNet::BindTcp.into(),
        Network::None | Network::Tcp(_) => AccessNet::BindTcp | AccessNet::ConnectTcp,
    };
    let text = |e: landlock::RulesetError| Denied::Kernel(e.to_string());
    let mut ruleset = Ruleset::default()
        .set_compatibility(required)
        .handle_access(AccessFs::from_all(ABI::V3))
        .map_err(text)?;
    if matches!(network, Network::Tcp(_)) {
        ruleset = ruleset.handle_access(tcp).map_err(text)?;
    }
    ruleset = ruleset
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(tested))
        .map_err(text)?
        .scope(Scope::from_all(tested))
        .map_err(text)?;
    if network == Network::None {
        // An extra: seccomp keeps it from every socket already.
        ruleset = ruleset.handle_access(tcp).map_err(text)?;
    }
    let mut created = ruleset.create().map_err(text)?;
    for rule in file_rules(sandbox, &loader_path()) {
        let kind = if rule.rights == Rights::Write {
            "write"
        } else {
            "read"
        };
        let opened = match open_path(&rule.path) {
            Ok(opened) => opened,
            // A system path this system does not have (or hides) is not needed.
            Err(_) if !rule.granted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warnings.push(format!(
                    "fs:{kind}:{} is granted, but no such path exists: it stays closed to the \
                     plugin (create it before the plugin starts)",
                    rule.path.display()
                ));
                continue;
            }
            Err(e) => {
                warnings.push(format!(
                    "fs:{kind}:{} is granted, but it cannot be opened ({e}): it stays closed to \
                     the plugin",
                    rule.path.display()
                ));
                continue;
            }
        };
        if rule.granted {
            // Landlock follows links when the rule is made: a grant of a link (or of a path
            // through a linked folder) would open its target, which the grant does not name.
            let real = real_path(&opened, &rule.path);
            if real.as_deref() != Some(rule.path.as_path()) {
                let real = real.map_or_else(|| "?".into(), |r| r.display().to_string());
                let grant = format!("fs:{kind}:{}", rule.path.display());
                if enforce {
                    return Err(Denied::Link(format!(
                        "plugin {plugin} refused: its grant {grant} leads to {real} through a \
                         symbolic link, which the kernel would follow; fix: grant the real \
                         path, `fs:{kind}:{real}`, under [plugins.{plugin}] in plughost.toml"
                    )));
                }
                warnings.push(format!(
                    "{grant} is granted, but it leads to {real} through a symbolic link: it \
                     stays closed to the plugin (grant the real path, fs:{kind}:{real})"
                ));
                continue;
            }
        }
        let mut access: BitFlags<AccessFs> = match rule.rights {
            Rights::Read => AccessFs::ReadFile | AccessFs::ReadDir,
            Rights::Run => AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::Execute,
            Rights::Library => AccessFs::ReadFile.into(),
            Rights::Write => AccessFs::from_all(tested) & !AccessFs::Execute,
            Rights::Device(false) => AccessFs::ReadFile.into(),
            Rights::Device(true) => AccessFs::ReadFile | AccessFs::WriteFile,
        };
        // A rule on a file takes only the rights of files.
        if opened.metadata().is_ok_and(|m| !m.is_dir()) {
            access &= AccessFs::from_file(tested);
        }
        created = created
            .add_rule(PathBeneath::new(opened, access))
            .map_err(text)?;
    }
    // A memory file needs no rule (Landlock lets every process use files of the kernel's
    // internal mounts); a copy written to the shadow folder does.
    let in_memory = std::fs::read_link(copy).is_ok_and(|target| {
        target
            .as_os_str()
            .as_encoded_bytes()
            .starts_with(b"/memfd:")
    });
    if !in_memory {
        let opened = open_path(copy)
            .map_err(|e| Denied::Kernel(format!("cannot open {}: {e}", copy.display())))?;
        created = created
            .add_rule(PathBeneath::new(opened, AccessFs::ReadFile))
            .map_err(text)?;
    }
    if let Network::Tcp(ports) = &network {
        for &port in ports {
            created = created
                .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
                .map_err(text)?;
        }
    }
    let status = created.restrict_self().map_err(text)?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(Denied::Kernel(
            "the kernel did not enforce the ruleset".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::granted as sandbox;
    use super::*;

    #[test]
    fn file_rules_open_the_granted_paths_and_what_grants_imply() {
        let rules = |grants: &[&str]| -> Vec<(String, Rights, bool)> {
            file_rules(&sandbox(grants), &[PathBuf::from("/opt/app/lib")])
                .into_iter()
                .map(|r| (r.path.display().to_string(), r.rights, r.granted))
                .collect()
        };
        let mut always = vec![
            ("/dev/null".to_string(), Rights::Device(true), false),
            ("/dev/zero".to_string(), Rights::Device(false), false),
            ("/dev/urandom".to_string(), Rights::Device(false), false),
        ];
        let libraries: Vec<(String, Rights, bool)> = LIBRARIES
            .iter()
            .chain(&["/opt/app/lib"])
            .map(|path| (path.to_string(), Rights::Library, false))
            .collect();
        let mut expected = always.clone();
        expected.extend(libraries.clone());
        assert_eq!(rules(&[]), expected);
        always.push(("/".into(), Rights::Read, true));
        always.push(("/etc/passwd".into(), Rights::Read, true));
        always.push(("/srv/out".into(), Rights::Write, true));
        always.extend(libraries);
        assert_eq!(
            rules(&["fs:write:/srv/out", "fs:read:/etc/passwd", "fs:read:/"]),
            always
        );
        let exec = rules(&["exec"]);
        assert!(exec.contains(&("/usr".into(), Rights::Run, false)));
        assert!(exec.contains(&("/etc/ld.so.cache".into(), Rights::Run, false)));
        assert!(!exec.iter().any(|(path, ..)| path == "/etc/hosts"));
        let net = rules(&["net:connect:db:5432"]);
        assert!(net.contains(&("/etc/hosts".into(), Rights::Read, false)));
        assert!(!net.iter().any(|(_, rights, _)| *rights == Rights::Run));
    }
}
