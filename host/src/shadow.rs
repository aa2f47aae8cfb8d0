//! Private shadow copies: every load opens a fresh copy with a unique name, never the user's
//! file.
//!
//! Two facts force this (FACTS.md): `dlopen` caches by path, so reopening a path returns the old
//! code; and overwriting a loaded library in place (`cp new.so loaded.so`) crashes the process.
//! A copy with a unique name makes the host immune to how users replace their files. The bytes
//! copied are the very bytes [`preflight`](crate::preflight) checked, so nothing can change
//! between the check and the load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::LoadError;

/// The folder shadow copies live in.
#[derive(Debug)]
pub struct ShadowDir {
    dir: PathBuf,
    counter: AtomicU64,
}

/// The default shadow folder: `plughost-shadow` in the system's temporary folder.
pub fn default_shadow_dir() -> PathBuf {
    std::env::temp_dir().join("plughost-shadow")
}

impl ShadowDir {
    /// Creates (if needed) the folder and removes copies left by host processes that no longer
    /// run (a crash skips the clean-up copies normally get).
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        remove_stale_copies(&dir);
        Ok(ShadowDir {
            dir,
            counter: AtomicU64::new(0),
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `bytes` (the content of `original`) to a new unique shadow path:
    /// `<dir>/<stem>-<pid>-<counter>.<ext>`.
    pub fn write(&self, original: &Path, bytes: &[u8]) -> Result<ShadowCopy, LoadError> {
        let stem = original
            .file_stem()
            .map_or_else(|| "plugin".into(), |s| s.to_string_lossy());
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!(
            "{stem}-{}-{n}.{}",
            std::process::id(),
            crate::discovery::LIBRARY_EXTENSION
        ));
        std::fs::write(&path, bytes).map_err(|error| LoadError::Shadow {
            path: original.to_owned(),
            shadow: path.clone(),
            error,
        })?;
        Ok(ShadowCopy { path })
    }
}

/// One shadow copy; the file is deleted when this is dropped (after its library is closed).
#[derive(Debug)]
pub struct ShadowCopy {
    path: PathBuf,
}

impl ShadowCopy {
    /// Where the copy is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ShadowCopy {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("could not delete shadow copy {}: {e}", self.path.display());
        }
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
