//! What the host offers plugins through [`HostApi`]: for now, its log.
//!
//! A plugin's log lines come out of the host's `tracing` output with target `plugin`, inside a
//! `plugin` span carrying the plugin's name and version, so `RUST_LOG` filters them like the
//! host's own lines (`RUST_LOG=plugin=debug`, or `RUST_LOG=[plugin{name=counter}]=trace`).

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::RStr;
use plugin_api::ffi::{log_level, HostApi};
use tracing::Span;

/// Who is calling back: one per loaded plugin version, handed to the plugin as an opaque
/// pointer at install time.
pub(crate) struct PluginIdentity {
    span: Span,
}

impl PluginIdentity {
    pub(crate) fn new(name: &str, version: &semver::Version) -> Box<Self> {
        Box::new(PluginIdentity {
            span: tracing::info_span!("plugin", name = %name, version = %version),
        })
    }
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
