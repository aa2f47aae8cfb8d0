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
    match written(&buf, lent, out.capacity()) {
        Written::Lent(len) => {
            // SAFETY: checked by `written`: the plugin wrote `len <= capacity` bytes into the
            // spare capacity we lent it.
            unsafe { out.set_len(len) };
            status
        }
        Written::Plugin => {
            take_plugin_buffer(out, &buf, free);
            status
        }
        Written::Broken => broken_protocol(out),
    }
}

/// What a callee left in an [`OutBuffer`] the host lent it as `lent[..cap]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// `len` bytes (at most `cap`) written into the lent memory.
    Lent(usize),
    /// The callee's own allocation, `ptr[..len]`: read it, then give it back to the callee's
    /// `free_buffer`.
    Plugin,
    /// The callee broke the protocol: moved the host's pointer, claimed more bytes than it was
    /// lent, or set an owner that does not exist. Its output is not trusted (reading it could
    /// be out of bounds), and an unknown owner's memory is left alone rather than freed.
    Broken,
}

/// Checks what a callee left in `buf`, lent as `lent[..cap]` with `owner == HOST`. Every
/// path that lends a plugin an output buffer goes through this before trusting `len`.
#[inline]
pub(crate) fn written(buf: &OutBuffer, lent: *mut u8, cap: usize) -> Written {
    match buf.owner {
        BufferOwner::PLUGIN => Written::Plugin,
        BufferOwner::HOST if buf.ptr == lent && buf.len <= cap => Written::Lent(buf.len),
        _ => Written::Broken,
    }
}

/// The error message of a call whose output broke the protocol ([`Written::Broken`]).
pub(crate) const BROKEN_PROTOCOL: &[u8] = b"the plugin broke the output buffer protocol";

#[cold]
fn broken_protocol(out: &mut Vec<u8>) -> Status {
    out.clear();
    out.extend_from_slice(BROKEN_PROTOCOL);
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
        let lent = std::ptr::NonNull::dangling().as_ptr();
        let mut buf = OutBuffer::host(lent, 0);
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
        // Not trusted, and not freed (the owner is not the plugin's), if it broke the protocol.
        let broken = written(&buf, lent, 0) == Written::Broken;
        let error = (status != Status::OK || broken).then(|| running.shared_name().clone());
        let output = PluginOutput { buf, version };
        match error {
            None => Ok(output),
            Some(name) if broken => Err(call_error(&name, Status::ERROR, BROKEN_PROTOCOL)),
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

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn never_called(_: *mut u8, _: usize, _: usize) {
        panic!("nothing was allocated by the plugin");
    }

    /// `with_output` over a fresh 16-byte `Vec`, the plugin being `entry`.
    fn call(entry: impl FnOnce(&mut OutBuffer) -> Status) -> (Status, Vec<u8>) {
        let mut out = Vec::with_capacity(16);
        // SAFETY: `never_called` stands for the library's `free_buffer`; no test entry
        // allocates.
        let status = unsafe { with_output(&mut out, never_called, entry) };
        (status, out)
    }

    #[test]
    fn output_written_into_the_lent_buffer_is_kept() {
        let (status, out) = call(|buf| {
            // SAFETY: 16 bytes were lent.
            unsafe { std::ptr::copy_nonoverlapping(b"abc".as_ptr(), buf.ptr, 3) };
            buf.len = 3;
            Status::OK
        });
        assert_eq!((status, out.as_slice()), (Status::OK, &b"abc"[..]));
    }

    #[test]
    fn output_that_breaks_the_protocol_is_an_error_not_trusted() {
        let broken = (Status::ERROR, BROKEN_PROTOCOL.to_vec());
        assert_eq!(
            call(|buf| {
                buf.len = buf.cap + 1;
                Status::OK
            }),
            broken
        );
        let mut elsewhere = [0u8; 4];
        assert_eq!(
            call(|buf| {
                buf.ptr = elsewhere.as_mut_ptr();
                buf.len = 4;
                Status::OK
            }),
            broken
        );
        assert_eq!(
            call(|buf| {
                buf.owner = BufferOwner(2);
                Status::OK
            }),
            broken
        );
    }
}
