//! The thread-safe table of plugins, keyed by name.
//!
//! Each name has a [`Slot`] that holds the version currently serving it, swapped atomically on
//! reload (arc-swap): new calls see the new version at once, calls in flight keep the version
//! they started on alive until they return. A slot outlives its versions: when a plugin is
//! unloaded the slot is left empty, and handles taken earlier work again once a plugin of that
//! name is loaded again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use arc_swap::{ArcSwapOption, Guard};

use super::instance::RunningPlugin;

/// The place a plugin name's current version lives.
pub(crate) struct Slot {
    name: Arc<str>,
    current: ArcSwapOption<RunningPlugin>,
    /// When the slot was last filled from empty, for load-order listings and shutdown order.
    loaded_seq: AtomicU64,
    /// The registry's counts, which [`swap`](Slot::swap) keeps up to date.
    tally: Arc<Tally>,
    /// Whether this slot is in `tally.requirers`.
    requirer: AtomicBool,
    /// Bumped after every [`swap`](Slot::swap): a [`LocalHandle`](super::LocalHandle) that saw
    /// the same number on its last call still holds the version in service.
    generation: AtomicU64,
}

impl Slot {
    /// The plugin name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// The version serving now, held for as long as the guard lives. Cheap: no reference
    /// count is touched unless a swap happens meanwhile.
    #[inline]
    pub(crate) fn load(&self) -> Guard<Option<Arc<RunningPlugin>>> {
        self.current.load()
    }

    /// The version serving now, as an owned reference.
    pub(crate) fn current(&self) -> Option<Arc<RunningPlugin>> {
        self.current.load_full()
    }

    /// Puts `next` in service and returns the version it replaced. Calls in flight on the old
    /// version still hold it; the caller waits for them before retiring it.
    pub(crate) fn swap(&self, next: Option<Arc<RunningPlugin>>) -> Option<Arc<RunningPlugin>> {
        let filled = next.is_some();
        let requires_others = next
            .as_ref()
            .is_some_and(|v| !v.library().info().dependencies.is_empty());
        if requires_others && !self.requirer.swap(true, Ordering::Relaxed) {
            self.tally.requirers().push(self.name.clone());
        }
        let previous = self.current.swap(next);
        match (previous.is_some(), filled) {
            (false, true) => self.tally.serving.fetch_add(1, Ordering::Relaxed),
            (true, false) => self.tally.serving.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
        // After the store: whoever reads the new number (Acquire) then loads the new version.
        self.generation.fetch_add(1, Ordering::Release);
        previous
    }

    /// How many times a version was swapped in or out. Read it (Acquire) before loading the
    /// version it stands for: a swap after the read changes it again, so a cache keyed on it is
    /// never stale for longer than one call.
    #[inline(always)]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn is_loaded_from(&self, file: &Path) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|v| v.library().file() == file)
    }
}

/// Plugin slots by name. Calls do not touch it: they go through a
/// [`PluginHandle`](super::PluginHandle) taken once.
#[derive(Default)]
pub(crate) struct Registry {
    inner: RwLock<Inner>,
    tally: Arc<Tally>,
}

/// What the checks of each load need, kept as slots change, so that a load costs the same
/// with 10 plugins running or 1,000.
#[derive(Default)]
struct Tally {
    /// Slots with a version in service.
    serving: AtomicUsize,
    /// The slots that have held a version requiring other plugins (kept when it leaves: they
    /// are few, and checking a slot's current version is cheap).
    requirers: Mutex<Vec<Arc<str>>>,
}

impl Tally {
    fn requirers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<str>>> {
        // Each update is one push, which a panic cannot leave half done.
        self.requirers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Inner {
    slots: HashMap<String, Arc<Slot>>,
    next_seq: u64,
}

impl Registry {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Every update is one insert into the map, which a panic cannot leave half done, so a
        // poisoned lock is safe to keep using.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot of `name`, empty or not.
    pub(crate) fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.read().slots.get(name).cloned()
    }

    /// The slot of `name`, created empty if there is none.
    pub(crate) fn slot_or_insert(&self, name: &str) -> Arc<Slot> {
        if let Some(slot) = self.slot(name) {
            return slot;
        }
        self.write()
            .slots
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Slot {
                    name: name.into(),
                    current: ArcSwapOption::empty(),
                    loaded_seq: AtomicU64::new(0),
                    tally: self.tally.clone(),
                    requirer: AtomicBool::new(false),
                    generation: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Records that `slot` was just filled from empty (it now counts as the newest plugin).
    pub(crate) fn mark_loaded(&self, slot: &Slot) {
        let mut inner = self.write();
        slot.loaded_seq.store(inner.next_seq, Ordering::Relaxed);
        inner.next_seq += 1;
    }

    /// How many slots have a version in service.
    pub(crate) fn serving_count(&self) -> usize {
        self.tally.serving.load(Ordering::Relaxed)
    }

    /// The versions in service that require `name`.
    pub(crate) fn requirers_of(&self, name: &str) -> Vec<Arc<RunningPlugin>> {
        let requirers = self.tally.requirers().clone();
        requirers
            .iter()
            .filter_map(|requirer| self.slot(requirer)?.current())
            .filter(|v| {
                v.library()
                    .info()
                    .dependencies
                    .iter()
                    .any(|r| r.name == name)
            })
            .collect()
    }

    /// Whether a version serves `name` now.
    pub(crate) fn is_serving(&self, name: &str) -> bool {
        self.slot(name).is_some_and(|s| s.current.load().is_some())
    }

    /// The slot whose current version was loaded from `file`.
    pub(crate) fn find_by_file(&self, file: &Path) -> Option<Arc<Slot>> {
        self.read()
            .slots
            .values()
            .find(|s| s.is_loaded_from(file))
            .cloned()
    }

    /// The slots with a version in service, oldest first.
    pub(crate) fn loaded(&self) -> Vec<Arc<Slot>> {
        let mut slots: Vec<Arc<Slot>> = self
            .read()
            .slots
            .values()
            .filter(|s| s.current.load().is_some())
            .cloned()
            .collect();
        slots.sort_by_key(|s| s.loaded_seq.load(Ordering::Relaxed));
        slots
    }
}
