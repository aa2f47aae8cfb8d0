//! Who could have changed a library before the host read it: the rule sshd applies to key
//! files (StrictModes), applied to plugins (`host.check_ownership`).
//!
//! A library, and every folder above it, must be owned by the host's effective user or root and
//! not writable by group or others; otherwise another user could have put their own code in
//! it, and the host would run that code with all of its rights. Above the library's own folder,
//! a folder writable by others is accepted when it has the sticky bit (`/tmp`): there, others
//! cannot rename or delete what is not theirs. The library's own folder gets no such
//! exception: others could still add files to it.
//!
//! The file's owner and mode come from the descriptor the host reads it through
//! ([`Stat`], recorded by [`read`](super::read)), so the file cannot be swapped between this
//! check and the read. The folders are looked up by path, after resolving symbolic links:
//! both the folder the file is named in and the folder the descriptor's file really is in.

use std::path::{Path, PathBuf};

use crate::config::OwnershipCheck;
use crate::error::LoadError;

/// A library file's owner, mode and real location, read from its open descriptor.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stat {
    /// The owner's user id (`None` where the platform has none).
    uid: Option<u32>,
    /// The permission bits (`None` where the platform has none).
    mode: Option<u32>,
    /// Where the file the descriptor reads really is, symbolic links resolved.
    real: Option<PathBuf>,
}

impl Stat {
    /// The facts of `file`, the open `path`, whose metadata is `metadata`.
    pub(crate) fn of(path: &Path, file: &std::fs::File, metadata: &std::fs::Metadata) -> Stat {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Stat {
                uid: Some(metadata.uid()),
                mode: Some(metadata.mode() & 0o7777),
                real: real_path(path, file),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (path, file, metadata);
            Stat::default()
        }
    }
}

/// Where the file open as `file` really is: on Linux what the kernel says of the descriptor
/// (no second lookup of the path), elsewhere the path with its links resolved.
#[cfg(unix)]
fn real_path(path: &Path, file: &std::fs::File) -> Option<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            if real.is_absolute() {
                return Some(real);
            }
        }
    }
    let _ = file;
    std::fs::canonicalize(path).ok()
}

/// What [`OwnershipCheck`] means for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// An unsafe file is refused.
    Refuse,
    /// An unsafe file is loaded, with one warning line naming the fix.
    Warn,
    /// Nothing is checked.
    Off,
}

fn strictness(setting: OwnershipCheck, euid: u32) -> Strictness {
    match setting {
        OwnershipCheck::On => Strictness::Refuse,
        OwnershipCheck::Off => Strictness::Off,
        OwnershipCheck::Auto if euid == 0 => Strictness::Refuse,
        OwnershipCheck::Auto => Strictness::Warn,
    }
}

/// The effective user id of this process.
#[cfg(unix)]
pub(super) fn effective_uid() -> u32 {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks the library `path`, read with `stat`, and the folders above it, as `setting` says:
/// an error naming what is unsafe and the fix when it is refused; a warning line, and `Ok`,
/// when the setting only warns.
pub(crate) fn check(path: &Path, stat: &Stat, setting: OwnershipCheck) -> Result<(), LoadError> {
    #[cfg(unix)]
    {
        let euid = effective_uid();
        let strictness = strictness(setting, euid);
        if strictness == Strictness::Off {
            return Ok(());
        }
        let Some(error) = find_problem(path, stat, euid) else {
            return Ok(());
        };
        if strictness == Strictness::Refuse {
            return Err(error);
        }
        tracing::warn!(
            "{error}; loaded anyway: host.check_ownership is \"auto\" and the host does not run \
             as root (set it to \"on\" to refuse such files)"
        );
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = (path, stat, setting);
        Ok(())
    }
}

/// The first thing that makes `path` unsafe for a host running as `euid`, as a refusal.
#[cfg(unix)]
fn find_problem(path: &Path, stat: &Stat, euid: u32) -> Option<LoadError> {
    let refusal =
        |at: &Path, is_folder: bool, (problem, fix): (String, String)| LoadError::UnsafeOwnership {
            path: path.to_owned(),
            at: at.to_owned(),
            what: if is_folder { "folder" } else { "file" },
            problem,
            fix,
        };
    if let (Some(uid), Some(mode)) = (stat.uid, stat.mode) {
        if let Some(found) = entry_problem(path, uid, mode, euid, false) {
            return Some(refusal(path, false, found));
        }
    }
    // The folder the file is named in, as the operator wrote it (for the fix they run).
    let named = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut folders = vec![(named.to_owned(), std::fs::canonicalize(named).ok())];
    // The folder of the file the link, if any, led to.
    if let Some(real_folder) = stat.real.as_deref().and_then(Path::parent) {
        if folders[0].1.as_deref() != Some(real_folder) {
            folders.push((real_folder.to_owned(), Some(real_folder.to_owned())));
        }
    }
    for (shown, resolved) in folders {
        // A folder that cannot be resolved was read from all the same; nothing to judge.
        let Some(resolved) = resolved else { continue };
        let mut own_folder = true;
        for folder in resolved.ancestors() {
            let Ok(metadata) = std::fs::metadata(folder) else {
                continue;
            };
            use std::os::unix::fs::MetadataExt;
            let mode = metadata.mode() & 0o7777;
            let at = if own_folder { shown.as_path() } else { folder };
            if let Some(found) = entry_problem(at, metadata.uid(), mode, euid, !own_folder) {
                return Some(refusal(at, true, found));
            }
            own_folder = false;
        }
    }
    None
}

/// What is wrong with the file or folder `at`, owned by `uid` with permission bits `mode`, for
/// a host running as `euid`, and the command that fixes it. `sticky_ok`: group or others may
/// write to it if it has the sticky bit (a folder above the library's own).
#[cfg(unix)]
fn entry_problem(
    at: &Path,
    uid: u32,
    mode: u32,
    euid: u32,
    sticky_ok: bool,
) -> Option<(String, String)> {
    let shown = crate::plugin_info::shown(&at.display().to_string()).into_owned();
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if uid != euid && uid != 0 {
        problems.push(format!(
            "belongs to user {uid}, not to the host's user ({euid}) or root"
        ));
        fixes.push(format!("chown {euid} {shown}"));
    }
    let writable = mode & 0o022;
    let sticky = mode & 0o1000 != 0;
    if writable != 0 && !(sticky_ok && sticky) {
        let who = match writable {
            0o020 => "group",
            0o002 => "others",
            _ => "group and others",
        };
        problems.push(format!("is writable by {who} (mode {mode:04o})"));
        fixes.push(format!("chmod go-w {shown}"));
    }
    if problems.is_empty() {
        return None;
    }
    Some((problems.join(" and "), fixes.join(" && ")))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn auto_refuses_as_root_and_warns_otherwise() {
        assert_eq!(strictness(OwnershipCheck::Auto, 0), Strictness::Refuse);
        assert_eq!(strictness(OwnershipCheck::Auto, 1000), Strictness::Warn);
        assert_eq!(strictness(OwnershipCheck::On, 1000), Strictness::Refuse);
        assert_eq!(strictness(OwnershipCheck::Off, 0), Strictness::Off);
    }

    #[test]
    fn owner_and_write_bits_are_judged_with_their_fix() {
        let at = Path::new("plugins/libx.so");
        assert_eq!(entry_problem(at, 1000, 0o755, 1000, false), None);
        assert_eq!(entry_problem(at, 0, 0o644, 1000, false), None);
        assert_eq!(
            entry_problem(at, 1000, 0o664, 1000, false),
            Some((
                "is writable by group (mode 0664)".to_owned(),
                "chmod go-w plugins/libx.so".to_owned()
            ))
        );
        assert_eq!(
            entry_problem(at, 65534, 0o646, 0, false),
            Some((
                "belongs to user 65534, not to the host's user (0) or root and is writable \
                 by others (mode 0646)"
                    .to_owned(),
                "chown 0 plugins/libx.so && chmod go-w plugins/libx.so".to_owned()
            ))
        );
        // The sticky bit protects a folder above the library's own (`/tmp`), not its own.
        assert_eq!(entry_problem(Path::new("/tmp"), 0, 0o1777, 0, true), None);
        assert!(entry_problem(Path::new("plugins"), 0, 0o1777, 0, false).is_some());
    }

    #[test]
    fn a_world_writable_folder_above_without_the_sticky_bit_is_named() {
        let root = tempfile::tempdir().unwrap();
        let above = root.path().join("shared");
        let plugins = above.join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        set_mode(&plugins, 0o755);
        let library = plugins.join("libx.so");
        std::fs::write(&library, b"x").unwrap();
        set_mode(&library, 0o644);
        let file = std::fs::File::open(&library).unwrap();
        let stat = Stat::of(&library, &file, &file.metadata().unwrap());
        let euid = effective_uid();
        assert!(find_problem(&library, &stat, euid).is_none());
        set_mode(&above, 0o777);
        let error = find_problem(&library, &stat, euid).unwrap().to_string();
        let resolved = std::fs::canonicalize(&above).unwrap();
        assert!(
            error.contains(&format!("chmod go-w {}", resolved.display())),
            "{error}"
        );
        // With the sticky bit, others cannot move the plugins folder: accepted.
        set_mode(&above, 0o1777);
        assert!(find_problem(&library, &stat, euid).is_none());
    }
}
