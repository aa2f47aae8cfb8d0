//! The rules of the FFI call boundary, in one place: how an entry point's output comes back
//! through an [`OutBuffer`] (the host lends memory; a plugin that needs more hands back its own
//! allocation, which goes back to the plugin's `free_buffer`), how a status becomes a
//! [`CallError`], and where the plugin code the host itself runs is run ([`on_own_thread`]).
//! See docs/design.md, "Buffers across the boundary".

use std::sync::Arc;
use std::time::{Duration, Instant};

use plugin_api::ffi::{BufferOwner, OutBuffer, Status};

use crate::error::CallError;

/// A library's `free_buffer`.
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

/// What a plugin that called another gets for `error`, the inverse of [`call_error`]: the
/// callee's status and own message when it returned an error or panicked (as an in-process
/// callee's come through), the host's words otherwise (the callee crashed, timed out...).
pub(crate) fn status_of(error: &CallError) -> (Status, std::borrow::Cow<'_, str>) {
    match error {
        CallError::Failed { message, .. } => (Status::ERROR, message.into()),
        CallError::Panicked { message, .. } => (Status::PANIC, message.into()),
        other => (Status::ERROR, other.to_string().into()),
    }
}

/// Runs plugin code on a short-lived thread of its own, and waits for it at most `limit`.
///
/// Its own thread, because whatever thread-local destructors the plugin registers there run
/// when that thread ends, instead of pinning the library to a long-lived host thread
/// (docs/design.md, "Unloading and thread-local destructors"); everything the host itself runs
/// in a plugin goes through here (Init, Shutdown, validate_config, state hand-over). Calls from
/// users' threads (Execute) cannot be moved like this.
///
/// `None` when the code has not returned (with its thread ended) within `limit`. Nothing can
/// stop it: the thread is left running, and the caller must keep everything it uses, the
/// library above all, alive for ever ([`PluginLibrary::mark_stuck`](super::PluginLibrary)).
pub(crate) fn on_own_thread<R: Send + 'static>(
    limit: Duration,
    plugin_code: impl FnOnce() -> R + Send + 'static,
) -> Option<R> {
    let deadline = Instant::now() + limit;
    PluginThread::spawn("plughost-plugin", plugin_code).wait_until(deadline)
}

/// Plugin code running on a thread of its own, as [`on_own_thread`] runs it, to wait for
/// later: an event source's `start`, which runs until its `stop`.
pub(crate) struct PluginThread<R> {
    answer: std::sync::mpsc::Receiver<R>,
    ended: std::sync::mpsc::Receiver<()>,
}

impl<R: Send + 'static> PluginThread<R> {
    pub(crate) fn spawn(name: &str, plugin_code: impl FnOnce() -> R + Send + 'static) -> Self {
        let (sender, answer) = std::sync::mpsc::sync_channel(1);
        let (ended, thread_end) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Registered before any plugin code runs, so destroyed after every
                // thread-local the plugin registers: its message says the plugin's
                // destructors have all run.
                THREAD_END.with(|end| *end.borrow_mut() = Some(ThreadEnd(ended)));
                let _ = sender.send(plugin_code());
            })
            .expect("spawn a thread for plugin code");
        PluginThread {
            answer,
            ended: thread_end,
        }
    }

    /// The code's result once it returned and its thread ended (thread-local destructors
    /// included), or `None` if that did not happen by `deadline`.
    pub(crate) fn wait_until(self, deadline: Instant) -> Option<R> {
        let left = || deadline.saturating_duration_since(Instant::now());
        let result = self.answer.recv_timeout(left()).ok()?;
        // The thread-local destructors run as the thread ends: wait for them too, within the
        // same bound, before anyone may close the library. (A destructor that never returns
        // leaves the thread running; the caller then treats the library as stuck.)
        match self.ended.recv_timeout(left()) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Some(result),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
        }
    }
}

/// Says, when dropped as its thread ends, that the thread's other thread-locals are gone.
struct ThreadEnd(std::sync::mpsc::SyncSender<()>);

impl Drop for ThreadEnd {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

thread_local! {
    static THREAD_END: std::cell::RefCell<Option<ThreadEnd>> = const { std::cell::RefCell::new(None) };
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
