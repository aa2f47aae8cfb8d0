//! Calling a plugin: the cheap [`PluginHandle`] and the output-buffer protocol.
//!
//! A handle caches the `execute` function pointer and the instance pointer, so a call is one
//! indirect call plus the `catch_unwind` inside the plugin: no lookup, lock, allocation or
//! reference-count traffic. [`PluginHandle::call_into`] lends the plugin the spare capacity of
//! the caller's `Vec`; with a reused `Vec` large enough, nothing is allocated on either side.

use std::sync::Arc;

use abi_stable::std_types::RSlice;
use arc_swap::Guard;
use plugin_api::ffi::{health_level, BufferOwner, CallContext, OutBuffer, Status};

use crate::error::CallError;
use crate::instance::RunningPlugin;
use crate::metadata::PluginInfo;
use crate::registry::Slot;

pub(crate) type FreeFn = unsafe extern "C" fn(*mut u8, usize, usize);

/// Runs an entry point with `out` lent as its output buffer, and leaves in `out` whatever it
/// wrote (output or error message), giving a plugin-allocated buffer back to the plugin.
///
/// # Safety
///
/// `free` must be the `free_buffer` of the library `entry` calls into, and that library must
/// stay loaded for the duration.
#[inline]
pub(crate) unsafe fn with_output(
    out: &mut Vec<u8>,
    free: FreeFn,
    entry: impl FnOnce(&mut OutBuffer) -> Status,
) -> Status {
    out.clear();
    let lent = out.as_mut_ptr();
    let mut buf = OutBuffer::host(lent, out.capacity());
    let status = entry(&mut buf);
    if buf.owner == BufferOwner::PLUGIN {
        take_plugin_buffer(out, &buf, free);
        status
    } else if buf.ptr == lent && buf.len <= out.capacity() {
        // SAFETY: the plugin wrote `len` bytes into the spare capacity we lent it.
        unsafe { out.set_len(buf.len) };
        status
    } else {
        // A plugin that moved our pointer or claims more than we lent broke the protocol;
        // its output is not trusted.
        broken_protocol(out)
    }
}

#[cold]
fn broken_protocol(out: &mut Vec<u8>) -> Status {
    out.clear();
    out.extend_from_slice(b"the plugin broke the output buffer protocol");
    Status::ERROR
}

#[cold]
fn take_plugin_buffer(out: &mut Vec<u8>, buf: &OutBuffer, free: FreeFn) {
    if buf.len > 0 {
        // SAFETY: the plugin handed over its allocation `ptr[..len]` (BufferOwner::PLUGIN).
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) });
    }
    // SAFETY: giving the plugin's allocation back to the plugin's allocator, once.
    unsafe { free(buf.ptr, buf.len, buf.cap) };
}

/// Turns a non-OK status and the message the plugin wrote into an error.
#[cold]
pub(crate) fn call_error(plugin: &Arc<str>, status: Status, message: &[u8]) -> CallError {
    let plugin = plugin.clone();
    let message = String::from_utf8_lossy(message).into_owned();
    match status {
        Status::ERROR => CallError::Failed { plugin, message },
        Status::PANIC => CallError::Panicked { plugin, message },
        other => CallError::UnknownStatus {
            plugin,
            status: other.0,
        },
    }
}

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
        let mut buf = OutBuffer::host(std::ptr::NonNull::dangling().as_ptr(), 0);
        // SAFETY: the guard keeps the version, hence its library and instance, alive; a
        // zero-capacity host buffer makes the plugin allocate.
        let status = unsafe {
            (running.execute)(
                running.instance(),
                &ctx,
                RSlice::from_slice(input),
                &mut buf,
            )
        };
        let error = (status != Status::OK).then(|| running.shared_name().clone());
        let output = PluginOutput { buf, version };
        match error {
            None => Ok(output),
            Some(name) => Err(call_error(&name, status, &output)),
        }
    }

    /// Asks the plugin how it is doing.
    pub fn health(&self) -> Result<Health, CallError> {
        let version = self.slot.load();
        let Some(running) = version.as_ref() else {
            return Err(self.not_loaded());
        };
        let Some(health) = running.library().vtable().health else {
            return Ok(Health::Unknown);
        };
        let mut level = health_level::HEALTHY;
        let mut message = Vec::new();
        // SAFETY: the guard keeps the version alive; `health` is its library's.
        let status = unsafe {
            with_output(&mut message, running.free_buffer, |buf| {
                health(running.instance(), &mut level, buf)
            })
        };
        if status != Status::OK {
            return Err(call_error(running.shared_name(), status, &message));
        }
        let message = String::from_utf8_lossy(&message).into_owned();
        Ok(match level {
            health_level::HEALTHY => Health::Healthy,
            health_level::DEGRADED => Health::Degraded(message),
            _ => Health::Unhealthy(message),
        })
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

impl RunningPlugin {
    /// One call into this version; see [`PluginHandle::call_into`].
    #[inline]
    pub(crate) fn call_into(&self, input: &[u8], output: &mut Vec<u8>) -> Result<(), CallError> {
        self.call_into_with(&CallContext::none(), input, output)
    }

    /// One call with the caller's deadline and cancellation flag. Always inlined: without it
    /// the synchronous path measured 12 ns slower.
    #[inline(always)]
    pub(crate) fn call_into_with(
        &self,
        ctx: &CallContext,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<(), CallError> {
        // SAFETY: `execute`, `free_buffer` and the instance belong to this live version; the
        // caller keeps `ctx.cancelled` (if not null) alive for the call.
        let status = unsafe {
            with_output(output, self.free_buffer, |buf| {
                (self.execute)(self.instance(), ctx, RSlice::from_slice(input), buf)
            })
        };
        if status == Status::OK {
            Ok(())
        } else {
            let error = call_error(self.shared_name(), status, output);
            output.clear();
            Err(error)
        }
    }
}

/// How a plugin says it is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
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
    // Keeps the version that allocated `buf` (and so its allocator) loaded.
    version: Guard<Option<Arc<RunningPlugin>>>,
}

impl std::ops::Deref for PluginOutput {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
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
        if let (BufferOwner::PLUGIN, Some(version)) = (self.buf.owner, self.version.as_ref()) {
            // SAFETY: the plugin's allocation, freed once by its own allocator, which the
            // guard keeps loaded.
            unsafe { (version.free_buffer)(self.buf.ptr, self.buf.len, self.buf.cap) };
        }
    }
}
