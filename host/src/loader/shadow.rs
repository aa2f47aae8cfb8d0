//! Private copies: every load opens a fresh private copy of the bytes it checked, never the
//! user's file.
//!
//! Two facts force this (docs/design.md, "Shadow copies"): `dlopen` caches by path, so
//! reopening a path returns the old code; and overwriting a loaded library in place
//! (`cp new.so loaded.so`) crashes the process. A copy with a name of its own makes the host
//! immune to how users replace their files.
//!
//! On Linux the copy is an anonymous memory file ([`Content`](super::content::Content) reads
//! the user's file straight into it and seals it against writes), loaded as
//! `/proc/self/fd/N`: nothing is written to disk, and nothing can change the bytes between the
//! check and the load. Elsewhere, or where memory files are refused, the copy is a file in the
//! shadow folder, private to the user running the host (on unix: owned by them, mode `0700`,
//! checked), with a unique name.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::LoadError;

/// The folder shadow copies live in.
#[derive(Debug)]
pub(crate) struct ShadowDir {
    dir: PathBuf,
}

/// Numbers the copies of this process: one counter for every host in it, since hosts may share
/// a shadow folder.
static COPIES: AtomicU64 = AtomicU64::new(0);

/// The default shadow folder: `plughost-shadow-<uid>` in the system's temporary folder (one
/// per user, since it must be private).
pub(crate) fn default_shadow_dir() -> PathBuf {
    #[cfg(unix)]
    let name = format!("plughost-shadow-{}", super::ownership::effective_uid());
    #[cfg(not(unix))]
    let name = "plughost-shadow".to_owned();
    std::env::temp_dir().join(name)
}

impl ShadowDir {
    /// Creates (if needed) the folder, checks that it is private, and removes copies left by
    /// host processes that no longer run (a crash skips the clean-up copies normally get).
    pub(crate) fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        create_private_dir(&dir)?;
        // Canonical, so that its copies' paths read as `/proc/self/maps` shows them.
        let dir = dir.canonicalize()?;
        remove_stale_copies(&dir);
        Ok(ShadowDir { dir })
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// The private copy of `content` (the content of `original`): its memory file if it has
    /// one, else a new file with a unique name, `<dir>/<stem>-<pid>-<counter>.<ext>`.
    pub(crate) fn copy(
        &self,
        original: &Path,
        content: &super::content::Content,
    ) -> Result<ShadowCopy, LoadError> {
        match content.memory_copy() {
            Some(copy) => Ok(copy),
            None => self.write(original, content),
        }
    }

    /// Writes `bytes` (the content of `original`) to a new unique shadow path.
    fn write(&self, original: &Path, bytes: &[u8]) -> Result<ShadowCopy, LoadError> {
        let stem = original
            .file_stem()
            .map_or_else(|| "plugin".into(), |s| s.to_string_lossy());
        let n = COPIES.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!(
            "{stem}-{}-{n}.{}",
            std::process::id(),
            super::discovery::LIBRARY_EXTENSION
        ));
        // `create_new`: never reuse or follow whatever may already sit at that name.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut file| file.write_all(bytes));
        let copy = ShadowCopy {
            path,
            kind: Kind::Disk,
        };
        written.map_err(|source| LoadError::Shadow {
            path: original.to_owned(),
            shadow: copy.path.clone(),
            source,
        })?;
        Ok(copy)
    }
}

/// One private copy. A file in the shadow folder is deleted when this is dropped (after its
/// library is closed); a memory file is freed once nothing maps it any more.
///
/// While a copy lives, its path names it alone: `dlopen` recognises a library by the path it
/// was opened with, so a memory file's `/proc/self/fd/N` must not be reused (by closing the
/// descriptor) while a library loaded from it may still be in memory.
#[derive(Debug)]
pub(crate) struct ShadowCopy {
    path: PathBuf,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Disk,
    /// A sealed memory file, shared with the [`Content`](super::content::Content) it was read
    /// into.
    #[cfg(target_os = "linux")]
    Memory(std::sync::Arc<super::content::MemoryFile>),
}

impl ShadowCopy {
    /// The copy of a memory file, `/proc/self/fd/N` in this process.
    #[cfg(target_os = "linux")]
    pub(crate) fn memory(file: std::sync::Arc<super::content::MemoryFile>) -> Self {
        use std::os::fd::AsRawFd;
        ShadowCopy {
            path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
            kind: Kind::Memory(file),
        }
    }

    /// Where the copy is, for this process.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A new descriptor of the copy (read-only, closed on exec), for a child process: the
    /// child reads it as `/proc/self/fd/<where it put it>`. A memory file has no path any
    /// other process could open.
    #[cfg(target_os = "linux")]
    pub(crate) fn descriptor(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        match &self.kind {
            Kind::Disk => std::fs::File::open(&self.path).map(Into::into),
            #[cfg(target_os = "linux")]
            Kind::Memory(file) => {
                use std::os::fd::AsFd;
                file.as_fd().try_clone_to_owned()
            }
        }
    }
}

impl Drop for ShadowCopy {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Kind::Memory(file) = &self.kind {
            // Whatever path led here (a refusal after `dlopen`, a host dropped with versions
            // still mapped): while a library opened from this path is in memory, closing the
            // descriptor would let the next memory file take its number, and `dlopen` would
            // hand back the old library for it. Kept open for good instead.
            if super::residency::is_loaded(&self.path) == Some(true) {
                std::mem::forget(file.clone());
            }
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("could not delete shadow copy {}: {e}", self.path.display());
        }
    }
}

/// Creates `dir` private to this user, or checks that an existing one is: on unix, a real
/// folder (not a link) owned by the effective user with no access for group or others. Anyone
/// else able to write there could swap a checked copy for their own code before it is loaded.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = std::fs::symlink_metadata(dir)?;
        let me = super::ownership::effective_uid();
        let problem = if !meta.is_dir() {
            Some("it is not a folder".to_owned())
        } else if meta.uid() != me {
            Some(format!("it belongs to user {}, not to {me}", meta.uid()))
        } else if meta.mode() & 0o077 != 0 {
            // Ours: tighten it rather than refuse.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            None
        } else {
            None
        };
        match problem {
            Some(problem) => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("the shadow folder must be private to this user: {problem}"),
            )),
            None => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        // Windows: the per-user temporary folder is already private to the user.
        std::fs::create_dir_all(dir)
    }
}

/// Deletes shadow copies whose process id (the second-to-last `-` part of the name) is not a
/// running process. Only on Linux, where `/proc` says which processes run; elsewhere stale
/// copies stay until someone clears the folder.
fn remove_stale_copies(dir: &Path) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let pid = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit('-').nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}
