//! What the host offers plugins: its log through [`HostApi`] (plugin-api 1.2), calls to the
//! plugins they depend on through [`PluginCalls`] (plugin-api 1.3), and publishing events
//! through [`EventApi`] (plugin-api 1.4).
//!
//! A plugin's log lines come out of the host's `tracing` output with target `plugin`, inside a
//! `plugin` span carrying the plugin's name and version, so `RUST_LOG` filters them like the
//! host's own lines (`RUST_LOG=plugin=debug`, or `RUST_LOG=[plugin{name=counter}]=trace`).

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use abi_stable::std_types::{RSlice, RStr};
use plugin_api::ffi::{
    log_level, BufferOwner, CallContext, EventApi, HostApi, OutBuffer, PluginCalls, RawEvent,
    Status,
};
use tracing::Span;

use super::abi::{status_of, written, FreeFn, Written};
use super::emitting::Emitting;
use super::instance::{Callee, RunningPlugin};
use super::registry::Slot;

/// Who is calling back: one per loaded plugin version, handed to the plugin as an opaque
/// pointer at install time.
pub(crate) struct PluginIdentity {
    name: String,
    span: Span,
    /// The slots of the plugins it declared as dependencies, bound by the host once they are
    /// known to be in service (before Init). A slot follows its plugin across reloads.
    dependencies: OnceLock<Vec<Arc<Slot>>>,
    /// Its right to publish, bound by the host before Init.
    events: OnceLock<Arc<Emitting>>,
}

impl PluginIdentity {
    pub(crate) fn new(name: &str, version: &semver::Version) -> Box<Self> {
        Box::new(PluginIdentity {
            name: name.to_owned(),
            span: tracing::info_span!("plugin", name = %name, version = %version),
            dependencies: OnceLock::new(),
            events: OnceLock::new(),
        })
    }

    /// Lets the plugin call the plugins in `slots`, and no others. Only the first binding
    /// counts: a library's dependencies are fixed once it runs.
    pub(crate) fn bind_dependencies(&self, slots: Vec<Arc<Slot>>) {
        let _ = self.dependencies.set(slots);
    }

    /// Lets the plugin publish, as `emitting` allows. Only the first binding counts.
    pub(crate) fn bind_events(&self, emitting: Arc<Emitting>) {
        let _ = self.events.set(emitting);
    }
}

/// The event table every plugin that takes part in events gets.
pub(crate) static EVENT_API: EventApi = EventApi {
    publish,
    free_buffer: free_host_buffer,
};

/// # Safety
///
/// `plugin` is the identity given at install; `event` and `out` are valid for the call, `out`
/// lending `ptr[..cap]` of the caller's memory.
unsafe extern "C" fn publish(
    plugin: *const c_void,
    emitter: u64,
    event: &RawEvent<'_>,
    out: &mut OutBuffer,
) -> Status {
    // SAFETY: as documented; the identity outlives every call the library can make.
    let identity = unsafe { &*plugin.cast::<PluginIdentity>() };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let Some(events) = identity.events.get() else {
            let message = format!(
                "{} publishes before the host bound its events",
                identity.name
            );
            return reply(out, Status::ERROR, message.as_bytes());
        };
        match events.publish(emitter, event) {
            Ok(()) => Status::OK,
            Err(e) => reply(out, Status::ERROR, e.to_string().as_bytes()),
        }
    }));
    outcome.unwrap_or_else(|_| reply(out, Status::ERROR, b"the host failed to publish"))
}

/// The call table every plugin that declares dependencies gets.
pub(crate) static PLUGIN_CALLS: PluginCalls = PluginCalls {
    call: call_plugin,
    free_buffer: free_host_buffer,
};

/// # Safety
///
/// `plugin` is the identity given at install; `ctx`, `name`, `input` and `out` are valid for
/// the call, `out` lending `ptr[..cap]` of the caller's memory.
unsafe extern "C" fn call_plugin(
    plugin: *const c_void,
    ctx: &CallContext,
    name: RStr<'_>,
    input: RSlice<'_, u8>,
    out: &mut OutBuffer,
) -> Status {
    // SAFETY: as documented; the identity outlives every call the library can make.
    let identity = unsafe { &*plugin.cast::<PluginIdentity>() };
    let name = name.as_rslice().as_slice();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let slot = match dependency(&identity.name, identity.dependencies.get(), name) {
            Ok(slot) => slot,
            Err(message) => return reply(out, Status::ERROR, message.as_bytes()),
        };
        let version = slot.load();
        let Some(version) = version.as_ref() else {
            return reply(out, Status::ERROR, NOT_LOADED);
        };
        let Callee::Here {
            instance,
            execute,
            free_buffer,
        } = &version.callee
        else {
            // An isolated callee answers through its worker, into a buffer of ours.
            let (status, answer) = call_for_caller(version, ctx, input.as_slice());
            return reply(out, status, &answer);
        };
        // The callee writes straight into the caller's lent buffer.
        let mut inner = OutBuffer::host(out.ptr, out.cap);
        // SAFETY: `version` is held for the call; its instance is live until it retires,
        // which waits for this guard. `input` and `inner` are valid for the call.
        let status = unsafe { execute(*instance, ctx, input, &mut inner) };
        // SAFETY: `inner` is what the callee left after being lent `out.ptr[..out.cap]`, and
        // `free_buffer` is its library's, loaded while `version` is held.
        unsafe { settle(out, &inner, status, *free_buffer, slot.name()) }
    }));
    outcome.unwrap_or_else(|_| reply(out, Status::ERROR, b"the host failed to make the call"))
}

/// What a plugin calling an unloaded dependency gets.
pub(crate) const NOT_LOADED: &[u8] = b"not loaded";

/// The slot of plugin `name` among `slots`, the dependencies `caller` declared (and the host
/// bound), or the message the caller gets if `name` is not one of them. The one rule for
/// callers in this process and in workers.
pub(crate) fn dependency<'a>(
    caller: &str,
    slots: Option<&'a Vec<Arc<Slot>>>,
    name: &[u8],
) -> Result<&'a Arc<Slot>, String> {
    slots
        .and_then(|slots| slots.iter().find(|s| s.name().as_bytes() == name))
        .ok_or_else(|| format!("not a declared dependency of {caller}"))
}

/// Calls `callee` for a plugin that depends on it, into a buffer of the host's: the status and
/// bytes the caller gets (for an error, the callee's own message where it gave one).
pub(crate) fn call_for_caller(
    callee: &RunningPlugin,
    ctx: &CallContext,
    input: &[u8],
) -> (Status, Vec<u8>) {
    let mut answer = Vec::new();
    match callee.call_into_with(ctx, input, &mut answer) {
        Ok(()) => (Status::OK, answer),
        Err(e) => {
            let (status, message) = status_of(&e);
            (status, message.into_owned().into_bytes())
        }
    }
}

/// Moves the callee's answer `inner` into the caller's `out` (which lent the callee
/// `out.ptr[..out.cap]`), checked like every other output ([`written`]): a callee that broke
/// the protocol becomes an error naming it, never a length the caller would trust.
///
/// # Safety
///
/// `inner` is what the callee left in the buffer it was lent as `out.ptr[..out.cap]`; `free`
/// is the callee's `free_buffer`, its library loaded for the duration.
unsafe fn settle(
    out: &mut OutBuffer,
    inner: &OutBuffer,
    status: Status,
    free: FreeFn,
    callee: &str,
) -> Status {
    match written(inner, out.ptr, out.cap) {
        Written::Lent(len) => {
            out.len = len;
            status
        }
        Written::Plugin => {
            // The callee spilled into its own allocation, which only it can free: copy it into
            // ours, which the caller gives back through `free_host_buffer`.
            let bytes = if inner.len == 0 {
                Vec::new()
            } else {
                // SAFETY: the callee's output protocol: `ptr[..len]` initialised, freed once
                // below.
                unsafe { std::slice::from_raw_parts(inner.ptr, inner.len) }.to_vec()
            };
            // SAFETY: exactly the triple the callee handed out, given back once, to the
            // callee's allocator (the caller's promise).
            unsafe { free(inner.ptr, inner.len, inner.cap) };
            hand_over(out, bytes);
            status
        }
        Written::Broken => {
            let message = format!("plugin {callee} broke the output buffer protocol");
            reply(out, Status::ERROR, message.as_bytes())
        }
    }
}

/// Writes `message` into the caller's buffer, or a host allocation if it does not fit.
pub(crate) fn reply(out: &mut OutBuffer, status: Status, message: &[u8]) -> Status {
    if message.len() <= out.cap {
        // SAFETY: `out` lends `ptr[..cap]` of writable memory.
        unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), out.ptr, message.len()) };
        out.len = message.len();
    } else {
        hand_over(out, message.to_vec());
    }
    status
}

/// Gives `bytes` to the caller as a host allocation ([`BufferOwner::CALLEE`]).
fn hand_over(out: &mut OutBuffer, bytes: Vec<u8>) {
    let mut bytes = std::mem::ManuallyDrop::new(bytes);
    out.ptr = bytes.as_mut_ptr();
    out.len = bytes.len();
    out.cap = bytes.capacity();
    out.owner = BufferOwner::CALLEE;
}

/// # Safety
///
/// `(ptr, len, cap)` is an output [`hand_over`] gave out, returned once.
pub(crate) unsafe extern "C" fn free_host_buffer(ptr: *mut u8, len: usize, cap: usize) {
    // SAFETY: as documented: a `Vec<u8>` of this host's allocator, leaked by `hand_over`.
    drop(unsafe { Vec::from_raw_parts(ptr, len, cap) });
}

/// The table every plugin gets.
pub(crate) static HOST_API: HostApi = HostApi { log_enabled, log };

fn level_of(level: u8) -> tracing::Level {
    match level {
        log_level::ERROR => tracing::Level::ERROR,
        log_level::WARN => tracing::Level::WARN,
        log_level::INFO => tracing::Level::INFO,
        log_level::DEBUG => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    }
}

/// # Safety
///
/// `plugin` is the identity given at install, alive while the plugin's library is loaded.
unsafe extern "C" fn log_enabled(plugin: *const c_void, level: u8) -> bool {
    // SAFETY: as documented; the identity outlives every call the library can make.
    let identity = unsafe { &*plugin.cast::<PluginIdentity>() };
    // A panic must not unwind into the plugin (it would abort the process).
    catch_unwind(AssertUnwindSafe(|| {
        let _entered = identity.span.enter();
        match level_of(level) {
            tracing::Level::ERROR => tracing::enabled!(target: "plugin", tracing::Level::ERROR),
            tracing::Level::WARN => tracing::enabled!(target: "plugin", tracing::Level::WARN),
            tracing::Level::INFO => tracing::enabled!(target: "plugin", tracing::Level::INFO),
            tracing::Level::DEBUG => tracing::enabled!(target: "plugin", tracing::Level::DEBUG),
            _ => tracing::enabled!(target: "plugin", tracing::Level::TRACE),
        }
    }))
    .unwrap_or(false)
}

/// # Safety
///
/// As for [`log_enabled`]; `message` is valid for the call.
unsafe extern "C" fn log(plugin: *const c_void, level: u8, message: RStr<'_>) {
    // SAFETY: as documented.
    let identity = unsafe { &*plugin.cast::<PluginIdentity>() };
    let message = String::from_utf8_lossy(message.as_rslice().as_slice());
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let _entered = identity.span.enter();
        match level_of(level) {
            tracing::Level::ERROR => tracing::error!(target: "plugin", "{message}"),
            tracing::Level::WARN => tracing::warn!(target: "plugin", "{message}"),
            tracing::Level::INFO => tracing::info!(target: "plugin", "{message}"),
            tracing::Level::DEBUG => tracing::debug!(target: "plugin", "{message}"),
            _ => tracing::trace!(target: "plugin", "{message}"),
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes what a nested call left for the calling plugin, freeing a host allocation.
    fn answer(out: &OutBuffer) -> String {
        // SAFETY: `out` holds `ptr[..len]` initialised bytes, either lent or handed over.
        let text = String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(out.ptr, out.len) })
            .into_owned();
        if out.owner == BufferOwner::CALLEE {
            // SAFETY: handed over by `hand_over`, given back once.
            unsafe { free_host_buffer(out.ptr, out.len, out.cap) };
        }
        text
    }

    /// Runs `settle` as if the callee had left `inner` in a 64-byte buffer the caller lent.
    fn nested(status: Status, callee: impl FnOnce(&mut OutBuffer)) -> (Status, String) {
        let mut memory = vec![0u8; 64];
        let mut out = OutBuffer::host(memory.as_mut_ptr(), memory.len());
        let mut inner = OutBuffer::host(out.ptr, out.cap);
        callee(&mut inner);
        // SAFETY: `inner` was lent `out.ptr[..out.cap]`; `free_host_buffer` frees what the
        // tests allocate as "the callee" (a `Vec` of this allocator).
        let status = unsafe { settle(&mut out, &inner, status, free_host_buffer, "storage") };
        (status, answer(&out))
    }

    #[test]
    fn a_nested_answer_in_the_lent_buffer_is_passed_on() {
        let (status, text) = nested(Status::OK, |inner| {
            // SAFETY: the test lent 64 bytes.
            unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), inner.ptr, 5) };
            inner.len = 5;
        });
        assert_eq!((status, text.as_str()), (Status::OK, "hello"));
    }

    #[test]
    fn a_nested_answer_the_callee_allocated_is_copied_and_freed() {
        let (status, text) = nested(Status::OK, |inner| {
            let mut bytes = std::mem::ManuallyDrop::new(b"x".repeat(100));
            inner.ptr = bytes.as_mut_ptr();
            inner.len = bytes.len();
            inner.cap = bytes.capacity();
            inner.owner = BufferOwner::PLUGIN;
        });
        assert_eq!((status, text), (Status::OK, "x".repeat(100)));
    }

    #[test]
    fn a_callee_that_breaks_the_buffer_protocol_is_an_error_naming_it() {
        let broken = "plugin storage broke the output buffer protocol";
        // Claims more than it was lent: the caller must not read past its buffer.
        let (status, text) = nested(Status::OK, |inner| inner.len = 65);
        assert_eq!((status, text.as_str()), (Status::ERROR, broken));
        // Moved the caller's pointer without saying it allocated.
        let mut elsewhere = [0u8; 8];
        let (status, text) = nested(Status::OK, |inner| {
            inner.ptr = elsewhere.as_mut_ptr();
            inner.len = 8;
        });
        assert_eq!((status, text.as_str()), (Status::ERROR, broken));
        // An owner that does not exist.
        let (status, text) = nested(Status::OK, |inner| {
            inner.len = 3;
            inner.owner = BufferOwner(7);
        });
        assert_eq!((status, text.as_str()), (Status::ERROR, broken));
    }
}
