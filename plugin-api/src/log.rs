//! Logging from a plugin into the host's log.
//!
//! The macros format like `format!` and hand the line to the host, which records it in its
//! `tracing` output inside a span naming the plugin and its version, filtered by the host's
//! `RUST_LOG` like its own lines. When the host would drop the line, nothing is formatted.
//!
//! ```
//! # fn demo(count: u64) {
//! plugin_api::info!("counted {count} calls");
//! plugin_api::debug!("state: {:?}", (1, 2));
//! # }
//! ```
//!
//! Before the host installed its callbacks (or in a host older than plugin-api 1.2), lines go
//! to standard error instead.

use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

use abi_stable::std_types::RStr;

use crate::ffi::{log_level, HostApi};

/// How important a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Something failed.
    Error = log_level::ERROR,
    /// Something looks wrong.
    Warn = log_level::WARN,
    /// Something worth knowing.
    Info = log_level::INFO,
    /// Detail for debugging.
    Debug = log_level::DEBUG,
    /// Even more detail.
    Trace = log_level::TRACE,
}

// One copy of these per plugin library (each has its own copy of plugin-api), set once by the
// host before Init.
static HOST: AtomicPtr<HostApi> = AtomicPtr::new(std::ptr::null_mut());
static IDENTITY: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Stores the host's callbacks; see [`HostExport`](crate::ffi::HostExport).
///
/// # Safety
///
/// `plugin` must stay valid for the host's callbacks while this library is loaded.
pub(crate) unsafe extern "C" fn install(api: &'static HostApi, plugin: *const c_void) {
    IDENTITY.store(plugin.cast_mut(), Ordering::Release);
    HOST.store((api as *const HostApi).cast_mut(), Ordering::Release);
}

fn host() -> Option<(&'static HostApi, *const c_void)> {
    let api = HOST.load(Ordering::Acquire);
    (!api.is_null()).then(|| {
        // SAFETY: `install` stored a `&'static HostApi`, or nothing yet (checked above).
        let api = unsafe { &*api };
        (api, IDENTITY.load(Ordering::Acquire).cast_const())
    })
}

/// Whether a line at `level` would be recorded. The macros check it before formatting.
pub fn enabled(level: Level) -> bool {
    match host() {
        // SAFETY: the host's callback, with the identity it gave us.
        Some((api, plugin)) => unsafe { (api.log_enabled)(plugin, level as u8) },
        None => level <= Level::Info,
    }
}

/// Hands one line to the host. Use the macros instead.
#[doc(hidden)]
pub fn write(level: Level, args: std::fmt::Arguments<'_>) {
    let message = match args.as_str() {
        Some(text) => std::borrow::Cow::Borrowed(text),
        None => std::borrow::Cow::Owned(args.to_string()),
    };
    match host() {
        // SAFETY: the host's callback, with the identity it gave us; `message` outlives it.
        Some((api, plugin)) => unsafe { (api.log)(plugin, level as u8, RStr::from_str(&message)) },
        None => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "[plugin {level:?}] {message}");
        }
    }
}

/// Logs a line at a given [`Level`]: `plugin_api::log!(Level::Warn, "{x} is odd")`.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {{
        let level = $level;
        if $crate::log::enabled(level) {
            $crate::log::write(level, ::std::format_args!($($arg)+));
        }
    }};
}

/// Logs at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Error, $($arg)+) };
}

/// Logs at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Warn, $($arg)+) };
}

/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Info, $($arg)+) };
}

/// Logs at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Debug, $($arg)+) };
}

/// Logs at trace level.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Trace, $($arg)+) };
}
