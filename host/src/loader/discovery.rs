//! Finding plugin libraries: files with the platform's shared-library extension at the top of a
//! folder. Subfolders (where plugin sources live) and other files are ignored.

use std::path::{Path, PathBuf};

/// The platform's shared-library extension without the dot: `so`, `dylib` or `dll`.
pub(crate) const LIBRARY_EXTENSION: &str = std::env::consts::DLL_EXTENSION;

/// Whether `path` has the platform's shared-library extension.
pub(crate) fn is_library_path(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == LIBRARY_EXTENSION)
}

/// The library files directly inside `dir`, sorted by file name so that load order (and which
/// of two same-named plugins wins) does not depend on the file system.
pub(crate) fn discover(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // `metadata` follows symlinks, so a link to a library counts and a link to a folder not.
        if is_library_path(&path) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}
