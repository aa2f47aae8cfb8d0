//! Whether a closed library really left the address space.
//!
//! `dlclose` reports success even when nothing was unmapped: glibc keeps a library mapped while
//! a thread-local destructor it registered is pending on a live thread, e.g. after plugin code
//! touched a `thread_local!` with a destructor, or called `std::thread::spawn`, on a host
//! thread. So the host checks instead of trusting it (docs/design.md, "Unloading and
//! thread-local destructors").

use std::path::Path;

/// What became of a closed library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnloadStatus {
    /// Gone from the address space.
    Unmapped,
    /// Still mapped: something the plugin left on a live thread (a thread-local destructor, a
    /// thread it started) pins it. Harmless, but its memory stays in use until that thread ends.
    StillMapped,
    /// Not closed at all: plugin code the host gave up on (a stuck Init, Shutdown or check)
    /// may still be running in it, and unmapping running code would crash the process.
    LeftLoaded,
    /// It ran in a worker process, which exited: nothing of it was ever in the host.
    Exited,
    /// This platform gives no way to tell (only Linux is checked; macOS never unloads Rust
    /// libraries with thread-locals, and musl never unloads at all).
    Unknown,
}

impl UnloadStatus {
    /// The words used in log lines, about `subject` ("old version", "library").
    pub(crate) fn describe(self, subject: &str) -> String {
        match self {
            UnloadStatus::Unmapped => format!("{subject} unloaded"),
            UnloadStatus::StillMapped => format!(
                "{subject} still mapped: a thread-local destructor or a thread the plugin left on \
                 a live thread keeps it in memory until that thread ends"
            ),
            UnloadStatus::LeftLoaded => format!(
                "{subject} left loaded: code of it the host gave up on may still be running"
            ),
            UnloadStatus::Exited => format!("{subject}'s worker process exited"),
            UnloadStatus::Unknown => {
                format!("{subject} closed; this platform cannot tell whether it left memory")
            }
        }
    }
}

/// Whether the file at `path` is mapped into this process, if the platform can tell.
pub(crate) fn is_mapped(path: &Path) -> Option<bool> {
    mapped_paths().map(|maps| maps.iter().any(|p| p == path))
}

/// The files mapped into this process, from `/proc/self/maps` (Linux only). A mapping whose
/// file was deleted shows as `<path> (deleted)`; the suffix is removed.
#[cfg(target_os = "linux")]
fn mapped_paths() -> Option<Vec<std::path::PathBuf>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    Some(
        maps.lines()
            // Fields: address perms offset dev inode path; the path may contain spaces.
            .filter_map(|line| line.splitn(6, char::is_whitespace).nth(5))
            .map(str::trim)
            .filter(|p| p.starts_with('/'))
            .map(|p| std::path::PathBuf::from(p.strip_suffix(" (deleted)").unwrap_or(p)))
            .collect(),
    )
}

#[cfg(not(target_os = "linux"))]
fn mapped_paths() -> Option<Vec<std::path::PathBuf>> {
    None
}
