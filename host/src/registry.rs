//! The thread-safe table of running plugins, keyed by name, remembering load order so that
//! shutdown can go newest first.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::LoadError;
use crate::instance::RunningPlugin;

/// Running plugins by name. Calls do not touch it: they go through a
/// [`PluginHandle`](crate::PluginHandle) taken once.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, Entry>,
    next_seq: u64,
}

struct Entry {
    plugin: Arc<RunningPlugin>,
    seq: u64,
}

impl Registry {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated (every update is
        // one insert or remove), so a poisoned lock is safe to keep using.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a plugin, unless one of that name is registered; then the error names both files
    /// and the refused plugin is handed back so the caller can shut it down.
    #[allow(clippy::result_large_err)]
    pub fn insert(
        &self,
        plugin: RunningPlugin,
    ) -> Result<Arc<RunningPlugin>, (RunningPlugin, LoadError)> {
        let mut inner = self.write();
        if let Some(existing) = inner.by_name.get(plugin.name()) {
            let error = LoadError::DuplicateName {
                path: plugin.library().file().to_owned(),
                name: plugin.name().to_owned(),
                existing: existing.plugin.library().file().to_owned(),
            };
            return Err((plugin, error));
        }
        let plugin = Arc::new(plugin);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.by_name.insert(
            plugin.name().to_owned(),
            Entry {
                plugin: plugin.clone(),
                seq,
            },
        );
        Ok(plugin)
    }

    /// The running plugin of that name.
    pub fn get(&self, name: &str) -> Option<Arc<RunningPlugin>> {
        self.read().by_name.get(name).map(|e| e.plugin.clone())
    }

    /// The file the plugin of that name was loaded from.
    pub fn file_of(&self, name: &str) -> Option<PathBuf> {
        self.read()
            .by_name
            .get(name)
            .map(|e| e.plugin.library().file().to_owned())
    }

    /// Takes the plugin of that name out of the registry.
    pub fn remove(&self, name: &str) -> Option<Arc<RunningPlugin>> {
        self.write().by_name.remove(name).map(|e| e.plugin)
    }

    /// Every running plugin, oldest first.
    pub fn list(&self) -> Vec<Arc<RunningPlugin>> {
        let inner = self.read();
        let mut entries: Vec<&Entry> = inner.by_name.values().collect();
        entries.sort_by_key(|e| e.seq);
        entries.iter().map(|e| e.plugin.clone()).collect()
    }

    /// Empties the registry, returning the plugins newest first (the order to shut down in).
    pub fn drain_newest_first(&self) -> Vec<Arc<RunningPlugin>> {
        let mut entries: Vec<Entry> = self.write().by_name.drain().map(|(_, e)| e).collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
        entries.into_iter().map(|e| e.plugin).collect()
    }

    /// How many plugins run.
    pub fn len(&self) -> usize {
        self.read().by_name.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
