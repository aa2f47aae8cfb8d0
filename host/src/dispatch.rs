//! Calling a plugin: the cheap [`PluginHandle`] and the output-buffer protocol.
//!
//! A handle caches the `execute` function pointer and the instance pointer, so a call is one
//! indirect call plus the `catch_unwind` inside the plugin: no lookup, lock, allocation or
//! reference-count traffic. [`PluginHandle::call_into`] lends the plugin the spare capacity of
//! the caller's `Vec`; with a reused `Vec` large enough, nothing is allocated on either side.

use std::ffi::c_void;
use std::sync::Arc;

use abi_stable::std_types::RSlice;
use plugin_api::ffi::{health_level, BufferOwner, CallContext, OutBuffer, Status};

use crate::error::CallError;
use crate::instance::RunningPlugin;
use crate::metadata::PluginInfo;

type ExecuteFn =
    unsafe extern "C" fn(*const c_void, &CallContext, RSlice<'_, u8>, &mut OutBuffer) -> Status;
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
    let mut buf = OutBuffer::host(out.as_mut_ptr(), out.capacity());
    let status = entry(&mut buf);
    if buf.owner == BufferOwner::PLUGIN {
        take_plugin_buffer(out, &buf, free);
    } else {
        // SAFETY: the plugin wrote `len` bytes into our spare capacity; clamp in case a faulty
        // plugin claims more than it was lent.
        unsafe { out.set_len(buf.len.min(out.capacity())) };
    }
    status
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

/// A cheap, cloneable, thread-safe way to call one running plugin. Get it once from the
/// [`Host`](crate::Host), call it many times from any thread. It keeps the plugin's library
/// loaded while it exists.
#[derive(Clone)]
pub struct PluginHandle {
    execute: ExecuteFn,
    free_buffer: FreeFn,
    instance: *const c_void,
    plugin: Arc<RunningPlugin>,
}

// SAFETY: the raw `instance` pointer is only passed back to the plugin's `execute`, which the
// contract (and `Plugin: Send + Sync`) allows from any thread concurrently; the `Arc` keeps the
// instance and its library alive for as long as any handle exists.
unsafe impl Send for PluginHandle {}
// SAFETY: as for `Send`: calls only share the instance.
unsafe impl Sync for PluginHandle {}

impl std::fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHandle")
            .field("plugin", &self.plugin.name())
            .finish()
    }
}

impl PluginHandle {
    pub(crate) fn new(plugin: Arc<RunningPlugin>) -> Self {
        let vtable = plugin.library().vtable();
        PluginHandle {
            execute: vtable.execute,
            free_buffer: vtable.free_buffer,
            instance: plugin.instance(),
            plugin,
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        self.plugin.name()
    }

    /// Who the plugin is.
    pub fn info(&self) -> &PluginInfo {
        self.plugin.library().info()
    }

    /// Calls the plugin with `input`; its output replaces the contents of `output`.
    ///
    /// The plugin writes straight into `output`'s spare capacity; only when the answer does
    /// not fit does it allocate, and the bytes are then copied over and freed by the plugin.
    /// Reuse one `Vec` with enough capacity and a call allocates nothing.
    #[inline]
    pub fn call_into(&self, input: &[u8], output: &mut Vec<u8>) -> Result<(), CallError> {
        let ctx = CallContext::none();
        // SAFETY: `execute`, `free_buffer` and `instance` come from a library and instance that
        // `self.plugin` keeps alive.
        let status = unsafe {
            with_output(output, self.free_buffer, |buf| {
                (self.execute)(self.instance, &ctx, RSlice::from_slice(input), buf)
            })
        };
        if status == Status::OK {
            Ok(())
        } else {
            let error = call_error(self.plugin.shared_name(), status, output);
            output.clear();
            Err(error)
        }
    }

    /// Calls the plugin with `input` and lets it allocate the output, which it frees again
    /// when the returned [`PluginOutput`] is dropped. Prefer [`call_into`](Self::call_into)
    /// on hot paths.
    #[inline]
    pub fn call(&self, input: &[u8]) -> Result<PluginOutput<'_>, CallError> {
        let ctx = CallContext::none();
        let mut buf = OutBuffer::host(std::ptr::NonNull::dangling().as_ptr(), 0);
        // SAFETY: as in `call_into`; a zero-capacity host buffer makes the plugin allocate.
        let status =
            unsafe { (self.execute)(self.instance, &ctx, RSlice::from_slice(input), &mut buf) };
        let output = PluginOutput { buf, handle: self };
        if status == Status::OK {
            Ok(output)
        } else {
            Err(call_error(self.plugin.shared_name(), status, &output))
        }
    }

    /// Asks the plugin how it is doing.
    pub fn health(&self) -> Result<Health, CallError> {
        let Some(health) = self.plugin.library().vtable().health else {
            return Ok(Health::Unknown);
        };
        let mut level = health_level::HEALTHY;
        let mut message = Vec::new();
        // SAFETY: as in `call_into`.
        let status = unsafe {
            with_output(&mut message, self.free_buffer, |buf| {
                health(self.instance, &mut level, buf)
            })
        };
        if status != Status::OK {
            return Err(call_error(self.plugin.shared_name(), status, &message));
        }
        let message = String::from_utf8_lossy(&message).into_owned();
        Ok(match level {
            health_level::HEALTHY => Health::Healthy,
            health_level::DEGRADED => Health::Degraded(message),
            _ => Health::Unhealthy(message),
        })
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
pub struct PluginOutput<'h> {
    buf: OutBuffer,
    handle: &'h PluginHandle,
}

impl std::ops::Deref for PluginOutput<'_> {
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

impl Drop for PluginOutput<'_> {
    fn drop(&mut self) {
        if self.buf.owner == BufferOwner::PLUGIN {
            // SAFETY: the plugin's allocation, freed once by its own allocator; the handle
            // borrowed for `'h` keeps the library loaded.
            unsafe { (self.handle.free_buffer)(self.buf.ptr, self.buf.len, self.buf.cap) };
        }
    }
}
