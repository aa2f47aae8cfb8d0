//! Calls from a plugin to the plugins it depends on, through the host (plugin-api 1.3).
//!
//! A plugin lists what it needs in [`Plugin::DEPENDENCIES`](crate::Plugin::DEPENDENCIES); the
//! host starts those first, refuses this plugin while one is missing or at a version outside
//! the range, and installs a call table before Init. Plugins never see each other's symbols:
//! every call goes through the host, which checks the target was declared.

use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

use abi_stable::std_types::{RSlice, RStr};

use crate::ffi::{BufferOwner, CallContext, OutBuffer, PluginCalls, Status};
use crate::PluginError;

// One copy per plugin library, set once by the host before Init.
static CALLS: AtomicPtr<PluginCalls> = AtomicPtr::new(std::ptr::null_mut());
static IDENTITY: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Stores the host's call table; see [`DependencyModule`](crate::ffi::DependencyModule).
///
/// # Safety
///
/// `plugin` must stay valid for the host's callbacks while this library is loaded.
pub(crate) unsafe extern "C" fn install(calls: &'static PluginCalls, plugin: *const c_void) {
    IDENTITY.store(plugin.cast_mut(), Ordering::Release);
    CALLS.store((calls as *const PluginCalls).cast_mut(), Ordering::Release);
}

/// Output up to this size needs no allocation on the host's side.
const LENT: usize = 256;

/// Calls `target` with `input` on behalf of the call `ctx` belongs to.
pub(crate) fn call(ctx: &CallContext, target: &str, input: &[u8]) -> Result<Vec<u8>, PluginError> {
    let calls = CALLS.load(Ordering::Acquire);
    if calls.is_null() {
        return Err(PluginError::new(format!(
            "cannot call {target}: the host installed no plugin calls (list {target} in \
             Plugin::DEPENDENCIES)"
        )));
    }
    // SAFETY: `install` stored a `&'static PluginCalls`.
    let calls = unsafe { &*calls };
    let identity = IDENTITY.load(Ordering::Acquire).cast_const();
    let mut bytes: Vec<u8> = Vec::with_capacity(LENT);
    let mut out = OutBuffer::host(bytes.as_mut_ptr(), bytes.capacity());
    // SAFETY: the host's callback with the identity it gave us; `ctx` is the context of the
    // call we are in, and `out` lends `bytes`' spare capacity.
    let status = unsafe {
        (calls.call)(
            identity,
            ctx,
            RStr::from_str(target),
            RSlice::from_slice(input),
            &mut out,
        )
    };
    if out.owner == BufferOwner::CALLEE {
        // SAFETY: the host allocated `ptr[..len]` for us and keeps it until `free_buffer`.
        bytes.extend_from_slice(unsafe { std::slice::from_raw_parts(out.ptr, out.len) });
        // SAFETY: exactly the triple the host handed out, given back once.
        unsafe { (calls.free_buffer)(out.ptr, out.len, out.cap) };
    } else {
        // SAFETY: the host wrote `len <= cap` initialised bytes into our buffer.
        unsafe { bytes.set_len(out.len.min(bytes.capacity())) };
    }
    if status == Status::OK {
        Ok(bytes)
    } else {
        Err(PluginError::new(format!(
            "{target}: {}",
            String::from_utf8_lossy(&bytes)
        )))
    }
}
