//! Calling a plugin: the cheap [`PluginHandle`].
//!
//! A handle caches the `execute` function pointer and the instance pointer, so a call is one
//! indirect call plus the `catch_unwind` inside the plugin: no lookup, lock, allocation or
//! reference-count traffic. [`PluginHandle::call_into`] lends the plugin the spare capacity of
//! the caller's `Vec`; with a reused `Vec` large enough, nothing is allocated on either side.

use std::sync::Arc;

use abi_stable::std_types::RSlice;
use arc_swap::Guard;
use plugin_api::ffi::{BufferOwner, CallContext, OutBuffer, Status};

use super::abi::{call_error, written, Written, BROKEN_PROTOCOL};
use super::instance::{Callee, RunningPlugin};
use super::local::LocalHandle;
use super::registry::Slot;
use crate::error::CallError;
use crate::plugin_info::PluginInfo;

/// A cheap, cloneable, thread-safe way to call a plugin by name. Get it once from the
/// [`Host`](crate::Host), call it many times from any thread.
///
/// A handle follows the plugin across hot reloads: each call goes to the version in service
/// when it starts, and finishes on that version even if a reload happens meanwhile. If the
/// plugin is unloaded, calls fail with [`CallError::NotLoaded`] until a plugin of that name is
/// loaded again.
#[derive(Clone)]
pub struct PluginHandle {
    slot: Arc<Slot>,
}

impl std::fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHandle")
            .field("plugin", &self.slot.name())
            .finish()
    }
}

impl PluginHandle {
    pub(crate) fn new(slot: Arc<Slot>) -> Self {
        PluginHandle { slot }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        self.slot.name()
    }

    /// Who the plugin in service is, if one is.
    pub fn info(&self) -> Option<PluginInfo> {
        self.slot
            .load()
            .as_ref()
            .map(|v| v.library().info().clone())
    }

    /// A handle for the calling thread's hot loop, at about the cost of a direct call, that
    /// keeps the version it last called loaded: see [`LocalHandle`] for when to use which.
    pub fn local(&self) -> LocalHandle {
        LocalHandle::new(self.slot.clone())
    }

    /// Calls the plugin with `input`; its output replaces the contents of `output`.
    ///
    /// The plugin writes straight into `output`'s spare capacity; only when the answer does
    /// not fit does it allocate, and the bytes are then copied over and freed by the plugin.
    /// Reuse one `Vec` with enough capacity and a call allocates nothing.
    #[inline]
    pub fn call_into(&self, input: &[u8], output: &mut Vec<u8>) -> Result<(), CallError> {
        match &*self.slot.load() {
            Some(version) => version.call_into(input, output),
            None => Err(self.not_loaded()),
        }
    }

    /// Like [`call_into`](Self::call_into), with a deadline and cancellation flag the plugin
    /// can see through its `Context`. The async path's core.
    pub(crate) fn call_into_with(
        &self,
        ctx: &CallContext,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<(), CallError> {
        match &*self.slot.load() {
            Some(version) => version.call_into_with(ctx, input, output),
            None => Err(self.not_loaded()),
        }
    }

    /// Calls the plugin with `input` and lets it allocate the output, which it frees again
    /// when the returned [`PluginOutput`] is dropped. The output keeps its plugin version
    /// loaded, so drop it soon. Prefer [`call_into`](Self::call_into) on hot paths.
    #[inline]
    pub fn call(&self, input: &[u8]) -> Result<PluginOutput, CallError> {
        let version = self.slot.load();
        let Some(running) = version.as_ref() else {
            return Err(self.not_loaded());
        };
        let ctx = CallContext::none();
        let (instance, execute) = match &running.callee {
            Callee::Here {
                instance, execute, ..
            } => (*instance, *execute),
            Callee::Worker(worker) => {
                // The answer comes out of shared memory into the host's own allocation.
                let mut owned = Vec::new();
                worker.call(&ctx, input, &mut owned)?;
                let buf = OutBuffer::host(std::ptr::NonNull::dangling().as_ptr(), 0);
                let owned = Some(owned);
                return Ok(PluginOutput {
                    buf,
                    owned,
                    version,
                });
            }
        };
        let lent = std::ptr::NonNull::dangling().as_ptr();
        let mut buf = OutBuffer::host(lent, 0);
        // SAFETY: the guard keeps the version, hence its library and instance, alive; a
        // zero-capacity host buffer makes the plugin allocate.
        let status = unsafe { execute(instance, &ctx, RSlice::from_slice(input), &mut buf) };
        // Not trusted, and not freed (the owner is not the plugin's), if it broke the protocol.
        let broken = written(&buf, lent, 0) == Written::Broken;
        let error = (status != Status::OK || broken).then(|| running.shared_name().clone());
        let output = PluginOutput {
            buf,
            owned: None,
            version,
        };
        match error {
            None => Ok(output),
            Some(name) if broken => Err(call_error(&name, Status::ERROR, BROKEN_PROTOCOL)),
            Some(name) => Err(call_error(&name, status, &output)),
        }
    }

    /// Whether the version in service runs in a worker process of its own (isolation
    /// `"process"`).
    pub fn is_isolated(&self) -> bool {
        self.slot
            .load()
            .as_ref()
            .is_some_and(|version| version.worker().is_some())
    }

    /// The process id of the isolated plugin's worker, while one runs (not while it is being
    /// restarted after a crash, nor once the plugin failed).
    pub fn worker_pid(&self) -> Option<u32> {
        self.slot
            .load()
            .as_ref()
            .and_then(|version| version.worker_pid())
    }

    /// Asks the plugin how it is doing.
    pub fn health(&self) -> Result<PluginHealth, CallError> {
        match &*self.slot.load() {
            Some(version) => version.health(),
            None => Err(self.not_loaded()),
        }
    }

    /// Which version serves now, as a number that differs between versions in service at the
    /// same time (0: none).
    pub(crate) fn version_id(&self) -> usize {
        self.slot
            .load()
            .as_ref()
            .map_or(0, |version| Arc::as_ptr(version) as usize)
    }

    /// The name, shared.
    pub(crate) fn shared_name(&self) -> &Arc<str> {
        self.slot.shared_name()
    }

    #[cold]
    fn not_loaded(&self) -> CallError {
        CallError::NotLoaded {
            plugin: self.slot.shared_name().clone(),
        }
    }
}

/// How a plugin says it is doing: its answer to a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginHealth {
    /// Working normally.
    Healthy,
    /// Working, with a problem.
    Degraded(String),
    /// Not able to do its job.
    Unhealthy(String),
    /// The plugin does not report health.
    Unknown,
}

/// An output the plugin allocated; handed back to the plugin's allocator on drop.
pub struct PluginOutput {
    buf: OutBuffer,
    /// An isolated plugin's answer, copied out of the worker's shared memory; `buf` is then
    /// empty.
    owned: Option<Vec<u8>>,
    // Keeps the version that allocated `buf` (and so its allocator) loaded.
    version: Guard<Option<Arc<RunningPlugin>>>,
}

impl std::ops::Deref for PluginOutput {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if let Some(owned) = &self.owned {
            return owned;
        }
        if self.buf.len == 0 {
            return &[];
        }
        let len = if self.buf.owner == BufferOwner::PLUGIN {
            self.buf.len
        } else {
            // Lent zero bytes: a plugin claiming to have written into them wrote nothing.
            0
        };
        // SAFETY: `ptr[..len]` is the plugin's allocation, alive until `drop` frees it.
        unsafe { std::slice::from_raw_parts(self.buf.ptr, len) }
    }
}

impl Drop for PluginOutput {
    fn drop(&mut self) {
        let Some(version) = self.version.as_ref() else {
            return;
        };
        if let (BufferOwner::PLUGIN, Callee::Here { free_buffer, .. }) =
            (self.buf.owner, &version.callee)
        {
            // SAFETY: the plugin's allocation, freed once by its own allocator, which the
            // guard keeps loaded.
            unsafe { free_buffer(self.buf.ptr, self.buf.len, self.buf.cap) };
        }
    }
}
