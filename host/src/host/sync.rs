//! What a change of a file in the plugins folder does ([`Host::sync_file`]): a new library is
//! loaded, a changed one replaces the running version (which keeps serving if the new content
//! is refused), a deleted one is unloaded. A file refused because of other plugins waits, and
//! is tried again whenever a plugin starts, changes or leaves.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::debug;

use super::{Host, Lifecycle};
use crate::error::{CallError, LoadError};
use crate::loader;

impl Host {
    /// Brings the host in line with what `path` now holds: loads a new library, replaces the
    /// running version if the content changed, keeps the running version if the new content is
    /// refused, unloads the plugin if the file is gone. This is what the watcher calls.
    pub fn sync_file(&self, path: &Path) {
        let noticed = Instant::now();
        if self
            .shared
            .closing
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        // Read before taking the lock: loads, unloads and edits never wait on a slow disk, and
        // whatever the path holds (a named pipe, a device) is refused without blocking.
        let bytes = loader::read(path);
        let mut lifecycle = self.lifecycle();
        if lifecycle.closed {
            return;
        }
        if self.sync_locked(&mut lifecycle, path, bytes, noticed) {
            // A plugin started, changed or left: files waiting on it may load now.
            self.retry_waiting(&mut lifecycle, Vec::new());
        }
    }

    /// Tries again the files refused for what other plugins were at the time (a requirement
    /// missing or out of range, a dependent it would break, a cycle), and `also`, until no
    /// more start.
    pub(super) fn retry_waiting(&self, lifecycle: &mut Lifecycle, also: Vec<PathBuf>) {
        for file in also {
            // Tried afresh even if its content was refused: what refused it may have changed.
            lifecycle.refused.remove(&file);
            if !lifecycle.waiting.contains(&file) {
                lifecycle.waiting.push(file);
            }
        }
        loop {
            let waiting = std::mem::take(&mut lifecycle.waiting);
            let mut progress = false;
            for file in waiting {
                // Files known to have held a library; `loader::read` cannot block on them.
                let bytes = loader::read(&file);
                progress |= self.sync_locked(lifecycle, &file, bytes, Instant::now());
            }
            if !progress || lifecycle.waiting.is_empty() {
                break;
            }
        }
    }

    /// [`sync_file`](Self::sync_file) under the lifecycle lock. Says whether what serves a
    /// name changed: a plugin started, was replaced or left.
    fn sync_locked(
        &self,
        lifecycle: &mut Lifecycle,
        path: &Path,
        bytes: Result<loader::Content, LoadError>,
        noticed: Instant,
    ) -> bool {
        let existing = self.registry.find_by_file(path);
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(LoadError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                lifecycle.refused.remove(path);
                lifecycle.waiting.retain(|p| p != path);
                let Some(slot) = existing else {
                    return false;
                };
                let retiring = self.take_out_of_service(&slot);
                let left = retiring.is_some();
                lifecycle.retiring(retiring);
                return left;
            }
            Err(error) => {
                self.refused(&error, existing.as_deref());
                return false;
            }
        };
        let hash = loader::content_hash(&bytes);
        let running = existing.as_ref().and_then(|s| s.current());
        if running
            .as_ref()
            .is_some_and(|v| v.library().content_hash() == hash)
        {
            debug!("{}: content unchanged, nothing to reload", path.display());
            return false;
        }
        if lifecycle.refused.get(path) == Some(&hash) {
            debug!("{}: content already refused", path.display());
            return false;
        }
        // A plugin disabled in the settings is not opened here, if the probe told its name.
        let enabled = |name: &str| lifecycle.config.plugin(name).enabled;
        let settings = lifecycle.config.clone();
        let opened = self.open_bytes(path, &bytes, &enabled, &settings);
        let outcome = opened.and_then(|library| {
            if !lifecycle.admit(&library) {
                return Ok(None);
            }
            self.install(lifecycle, library, None, noticed).map(Some)
        });
        drop(bytes);
        match outcome {
            Ok(Some(slot)) => {
                lifecycle.refused.remove(path);
                lifecycle.waiting.retain(|p| p != path);
                // The file now holds another plugin: the one it held before goes.
                if let Some(previous) = existing.filter(|s| s.name() != slot.name()) {
                    let retiring = self.take_out_of_service(&previous);
                    lifecycle.retiring(retiring);
                }
                true
            }
            Ok(None) => false,
            Err(LoadError::Unwanted { name, .. }) => {
                lifecycle.not_started(&name, path);
                false
            }
            Err(error) => {
                if let LoadError::Init {
                    cause: CallError::Stuck { .. },
                    ..
                } = &error
                {
                    // Its Init never returned, and its library stays loaded: the same content
                    // is not tried again (each try would leave another), a new build is.
                    lifecycle.refused.insert(path.to_owned(), hash);
                } else if error.depends_on_others() {
                    // Tried again when the other plugins change.
                    lifecycle.wait_if_passing(&error);
                } else if !matches!(
                    error,
                    LoadError::Init { .. }
                        | LoadError::TooMany { .. }
                        | LoadError::TooManyPinned { .. }
                ) {
                    // Only a file refused for what it is stays refused until its content
                    // changes. An Init failure (say, a port the old version still holds) is
                    // tried again on the next event.
                    lifecycle.refused.insert(path.to_owned(), hash);
                }
                self.refused(&error, existing.as_deref());
                false
            }
        }
    }
}
