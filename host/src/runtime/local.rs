//! Calling a plugin from one thread's hot loop: the [`LocalHandle`], which keeps the version
//! in service between calls instead of loading it from the slot each time.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::Arc;

use super::instance::RunningPlugin;
use super::registry::Slot;
use crate::error::CallError;

/// A handle for one thread's hot loop: [`PluginHandle::call_into`](super::PluginHandle::call_into)
/// at about the cost of a direct Rust call. Take one per thread with
/// [`PluginHandle::local`](super::PluginHandle::local).
///
/// It keeps the version it last called (an `Arc` of it), so a call skips the load a
/// [`PluginHandle`](super::PluginHandle) does and only checks one counter that every reload and
/// unload changes. It still follows the plugin: the first call after a reload goes to the new
/// version, and after an unload calls fail with [`CallError::NotLoaded`] (until a plugin of that
/// name is loaded again). Calls and errors are otherwise those of `PluginHandle::call_into`,
/// isolated plugins included. It is [`Send`] but not [`Sync`]: move it to the thread that uses
/// it; calls take `&mut self`.
///
/// # It keeps its version loaded
///
/// Like a [`PluginOutput`](super::PluginOutput), a local handle keeps the version it holds
/// loaded. An old version is shut down and unloaded only once every local handle that held it
/// has made its next call (which lets go of it) or has been dropped; until then the reload's
/// [`HostEvent::Reloaded`](crate::HostEvent::Reloaded) does not arrive, and the old library
/// stays in memory. [`Host::unload`](crate::Host::unload) and
/// [`Host::disable`](crate::Host::disable) wait for it too, so never call them on the
/// plugin from a thread that holds one of its local handles, and drop local handles before
/// shutting the host down (or dropping it): shutdown waits for them only up to
/// `host.shutdown_timeout`, then leaves the plugin loaded without its Shutdown.
///
/// Which to use: a `LocalHandle`, one per thread, in a loop that calls the plugin often and
/// keeps calling it; a [`PluginHandle`](super::PluginHandle) everywhere else (calls now and
/// then, handles shared between threads or stored in long-lived structures that go idle).
///
/// ```no_run
/// # let host = plughost::Host::new(plughost::HostConfig::with_plugins_dir("plugins"))?;
/// let handle = host.handle("transform")?;
/// let worker = std::thread::spawn(move || -> Result<(), plughost::CallError> {
///     let mut transform = handle.local();
///     let mut out = Vec::with_capacity(64);
///     for _ in 0..1_000_000 {
///         transform.call_into(b"hello", &mut out)?;
///     }
///     Ok(())
/// });
/// worker.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LocalHandle {
    slot: Arc<Slot>,
    /// The slot's generation when `version` was loaded; `NEVER` before the first call.
    generation: u64,
    /// The version the next call goes to if the generation has not moved.
    version: Option<Arc<RunningPlugin>>,
    /// Send, not Sync: the cache is for one thread at a time.
    _not_sync: PhantomData<Cell<()>>,
}

/// A generation no slot reaches (one swap per nanosecond would take 584 years).
const NEVER: u64 = u64::MAX;

impl std::fmt::Debug for LocalHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHandle")
            .field("plugin", &self.slot.name())
            .field("holds_version", &self.version.is_some())
            .finish()
    }
}

impl LocalHandle {
    /// Holds nothing until its first call.
    pub(crate) fn new(slot: Arc<Slot>) -> Self {
        LocalHandle {
            slot,
            generation: NEVER,
            version: None,
            _not_sync: PhantomData,
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        self.slot.name()
    }

    /// Calls the plugin with `input`; its output replaces the contents of `output`. The same
    /// as [`PluginHandle::call_into`](super::PluginHandle::call_into): reuse one `Vec` with
    /// enough capacity and a call allocates nothing.
    #[inline]
    pub fn call_into(&mut self, input: &[u8], output: &mut Vec<u8>) -> Result<(), CallError> {
        let now = self.slot.generation();
        if now != self.generation {
            self.refresh(now);
        }
        match &self.version {
            Some(version) => version.call_into(input, output),
            None => Err(self.not_loaded()),
        }
    }

    /// Lets go of the version held (it may be retired now) and takes the one in service.
    /// `now` was read before the load: a swap after that read makes the next call come here
    /// again.
    #[cold]
    #[inline(never)]
    fn refresh(&mut self, now: u64) {
        self.version = None;
        self.version = self.slot.current();
        self.generation = now;
    }

    #[cold]
    fn not_loaded(&self) -> CallError {
        CallError::NotLoaded {
            plugin: self.slot.shared_name().clone(),
        }
    }
}
