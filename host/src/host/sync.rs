//! What a change of a file in the plugins folder does ([`Host::sync_file`]): a new library is
//! loaded, a changed one replaces the running version (which keeps serving if the new content
//! is refused), a deleted one is unloaded. A file refused because of other plugins waits, and
//! is tried again whenever a plugin starts, changes or leaves. [`Host::reload`] does the same
//! for one plugin's file on request, and says how it went.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::debug;

use super::{Host, Lifecycle};
use crate::error::{CallError, HostError, LoadError};
use crate::loader;

/// What [`Host::sync_locked`] did with a file.
enum Synced {
    /// What serves a name changed: a plugin started, was replaced or left.
    Changed,
    /// Nothing to do: the content serves already, or the file is gone and served nothing.
    Unchanged,
    /// The content was refused before, and is not tried again.
    AlreadyRefused,
    /// The plugin in it is disabled: not started.
    Disabled,
    /// The content was refused (logged and announced).
    Refused(LoadError),
}

impl Synced {
    fn changed(&self) -> bool {
        matches!(self, Synced::Changed)
    }
}

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
        let bytes = self.read_library(path);
        let mut lifecycle = self.lifecycle();
        if lifecycle.closed {
            return;
        }
        if self
            .sync_locked(&mut lifecycle, path, bytes, noticed)
            .changed()
        {
            // A plugin started, changed or left: files waiting on it may load now.
            self.retry_waiting(&mut lifecycle, Vec::new());
        }
    }

    /// Reads plugin `name`'s file again now and acts on it as on a change of the file
    /// ([`sync_file`](Self::sync_file)), whether or not the host watches the folder, and says
    /// how it went: `Ok` once the new content serves, or when the content is what already
    /// serves (then nothing is done: the same bytes are not started again).
    ///
    /// The file is the one the plugin serves from, else the one it was last seen in. Content
    /// refused before is tried afresh. Errors: [`HostError::UnknownPlugin`] for a name the host
    /// never saw, [`HostError::PluginDisabled`], [`HostError::NoFile`], and
    /// [`HostError::ReloadRefused`] when the file is refused (or gone: a reload does not unload)
    /// — the version in service, if any, keeps serving.
    pub fn reload(&self, name: &str) -> Result<(), HostError> {
        let noticed = Instant::now();
        let status = self
            .plugin_status(name)
            .ok_or_else(|| HostError::UnknownPlugin {
                plugin: name.to_owned(),
            })?;
        if !status.enabled {
            return Err(HostError::PluginDisabled {
                plugin: name.to_owned(),
            });
        }
        let path = status.file.ok_or_else(|| HostError::NoFile {
            plugin: name.to_owned(),
        })?;
        let refused = |source: LoadError| HostError::ReloadRefused {
            plugin: name.to_owned(),
            source: Box::new(source),
        };
        if self.is_closing() {
            return Err(refused(LoadError::HostClosed {
                path,
                name: name.to_owned(),
            }));
        }
        // Read before taking the lock, as for a file change. A file gone is an error here:
        // asked to reload, the host does not unload.
        let bytes = self.read_library(&path).map_err(refused)?;
        let mut lifecycle = self.lifecycle();
        if lifecycle.closed {
            return Err(refused(LoadError::HostClosed {
                path,
                name: name.to_owned(),
            }));
        }
        // Asked for: what refused it before may have changed.
        lifecycle.refused.remove(&path);
        match self.sync_locked(&mut lifecycle, &path, Ok(bytes), noticed) {
            Synced::Changed => {
                self.retry_waiting(&mut lifecycle, Vec::new());
                Ok(())
            }
            Synced::Unchanged => Ok(()),
            Synced::Disabled => Err(HostError::PluginDisabled {
                plugin: name.to_owned(),
            }),
            Synced::Refused(error) => Err(refused(error)),
            Synced::AlreadyRefused => unreachable!("the refusal was forgotten above"),
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
                // Files known to have held a library; reading cannot block on them.
                let bytes = self.read_library(&file);
                progress |= self
                    .sync_locked(lifecycle, &file, bytes, Instant::now())
                    .changed();
            }
            if !progress || lifecycle.waiting.is_empty() {
                break;
            }
        }
    }

    /// Reads the library file `path`, its owner and mode (and its folders') first checked as
    /// `host.check_ownership` says.
    fn read_library(&self, path: &Path) -> Result<loader::Content, LoadError> {
        loader::read_library(path, self.config().host.check_ownership)
    }

    /// [`sync_file`](Self::sync_file) under the lifecycle lock. Says what it did, and whether
    /// what serves a name changed: a plugin started, was replaced or left.
    fn sync_locked(
        &self,
        lifecycle: &mut Lifecycle,
        path: &Path,
        bytes: Result<loader::Content, LoadError>,
        noticed: Instant,
    ) -> Synced {
        let existing = self.registry.find_by_file(path);
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(LoadError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                lifecycle.refused.remove(path);
                lifecycle.waiting.retain(|p| p != path);
                self.shared.ledger.not_refused(path);
                let Some(slot) = existing else {
                    return Synced::Unchanged;
                };
                let retiring = self.take_out_of_service(&slot);
                let left = retiring.is_some();
                lifecycle.retiring(retiring);
                return if left {
                    Synced::Changed
                } else {
                    Synced::Unchanged
                };
            }
            Err(error) => {
                self.refused(&error, existing.as_deref());
                return Synced::Refused(error);
            }
        };
        let hash = loader::content_hash(&bytes);
        let running = existing.as_ref().and_then(|s| s.current());
        if running
            .as_ref()
            .is_some_and(|v| v.library().content_hash() == hash)
        {
            debug!("{}: content unchanged, nothing to reload", path.display());
            return Synced::Unchanged;
        }
        if lifecycle.refused.get(path) == Some(&hash) {
            debug!("{}: content already refused", path.display());
            return Synced::AlreadyRefused;
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
                Synced::Changed
            }
            Ok(None) => Synced::Disabled,
            Err(LoadError::Unwanted { name, .. }) => {
                lifecycle.not_started(&name, path);
                Synced::Disabled
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
                Synced::Refused(error)
            }
        }
    }
}
