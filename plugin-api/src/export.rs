//! What [`export_plugin!`](crate::export_plugin) expands to: the `extern "C"` shims around a
//! [`Plugin`] and the constant tables of the header. Not for direct use.
//!
//! Every shim runs the plugin inside `catch_unwind`: a panic must be caught in the plugin,
//! because the plugin has its own copy of std and a panic escaping `extern "C"` aborts the
//! whole process (docs/design.md, "Panics across the boundary"). The caught payload is plugin
//! data too, whose `Drop` may panic again: it is disposed of under a guard, in `panic_message`.

use std::any::Any;
use std::cell::Cell;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use abi_stable::std_types::{RSlice, RStr};
use abi_stable::StableAbi;

use crate::events::{Emitter, Event};
use crate::ffi::{
    health_level, CallContext, DependencyExport, DependencyModule, EventExport, EventModule,
    HostApi, HostExport, OutBuffer, PluginHeader, PluginMetadata, PluginModule, PluginVTable,
    RawEvent, StateExport, StateVTable, Status, API_VERSION, HEADER_VERSION, MAGIC,
};
use crate::plugin::{Context, Health, Output, Plugin, PluginError};

/// Converts `&str`s to `RStr`s in a constant (the macro sizes the array).
pub const fn rstr_array<const N: usize>(strs: &'static [&'static str]) -> [RStr<'static>; N] {
    let mut out = [RStr::from_str(""); N];
    let mut i = 0;
    while i < N {
        out[i] = RStr::from_str(strs[i]);
        i += 1;
    }
    out
}

/// The module of plugin `P`, with its capability and tag tables already converted.
pub const fn module<P: Plugin>(
    capabilities: &'static [RStr<'static>],
    tags: &'static [RStr<'static>],
) -> PluginModule {
    PluginModule {
        metadata: PluginMetadata {
            name: RStr::from_str(P::NAME),
            version: RStr::from_str(P::VERSION),
            description: RStr::from_str(P::DESCRIPTION),
            author: RStr::from_str(P::AUTHOR),
            license: RStr::from_str(P::LICENSE),
            capabilities: RSlice::from_slice(capabilities),
            tags: RSlice::from_slice(tags),
            config_schema: RSlice::from_slice(P::CONFIG_SCHEMA),
        },
        vtable: PluginVTable {
            init: init::<P>,
            execute: execute::<P>,
            shutdown: shutdown::<P>,
            health: Some(health::<P>),
            validate_config: Some(validate_config::<P>),
            free_buffer,
        },
    }
}

/// The header pointing at `module`, stamped with this crate's API version and layout.
pub const fn header(module: &'static PluginModule) -> PluginHeader {
    PluginHeader {
        magic: MAGIC,
        header_version: HEADER_VERSION,
        api_version: API_VERSION,
        module_layout: <PluginModule as StableAbi>::LAYOUT,
        module,
    }
}

/// The state hand-over functions of plugin `P`.
pub const fn state_vtable<P: Plugin>() -> StateVTable {
    StateVTable {
        save: save_state::<P>,
        init_with_state: init_with_state::<P>,
    }
}

/// The optional state export pointing at `vtable`.
pub const fn state_export(vtable: &'static StateVTable) -> StateExport {
    StateExport {
        layout: <StateVTable as StableAbi>::LAYOUT,
        vtable,
    }
}

/// The optional host-callbacks export, the same for every plugin.
pub const fn host_export() -> HostExport {
    HostExport {
        layout: <HostApi as StableAbi>::LAYOUT,
        install: crate::log::install,
    }
}

/// The requirements table of plugin `P`.
pub const fn dependency_module<P: Plugin>() -> DependencyModule {
    DependencyModule {
        requires: RSlice::from_slice(P::DEPENDENCIES),
        install: crate::calls::install,
    }
}

/// The dependency export around `module`.
pub const fn dependency_export(module: &'static DependencyModule) -> DependencyExport {
    DependencyExport {
        layout: <DependencyModule as StableAbi>::LAYOUT,
        module,
    }
}

/// The event declarations and entry points of plugin `P`, with its topic and pattern tables
/// already converted.
pub const fn event_module<P: Plugin>(
    emits: &'static [RStr<'static>],
    subscribes: &'static [RStr<'static>],
) -> EventModule {
    EventModule {
        emits: RSlice::from_slice(emits),
        subscribes: RSlice::from_slice(subscribes),
        source: P::EVENT_SOURCE,
        install: crate::events::install,
        on_event: on_event::<P>,
        start: start::<P>,
        stop: stop::<P>,
    }
}

/// The event export around `module`.
pub const fn event_export(module: &'static EventModule) -> EventExport {
    EventExport {
        layout: <EventModule as StableAbi>::LAYOUT,
        module,
    }
}

/// Runs `body` with panics caught. On success the output is handed over; on error or panic
/// the output is replaced by the message.
fn guarded(
    out: &mut OutBuffer,
    body: impl FnOnce(&mut Output<'_>) -> Result<(), PluginError>,
) -> Status {
    let mut output = Output::new(out);
    let outcome = catch_unwind(AssertUnwindSafe(|| body(&mut output)));
    let status = match outcome {
        Ok(Ok(())) => Status::OK,
        Ok(Err(error)) => {
            output.clear();
            output.write(error.message().as_bytes());
            Status::ERROR
        }
        Err(payload) => {
            output.clear();
            output.write(panic_message(payload).as_bytes());
            Status::PANIC
        }
    };
    output.finish();
    status
}

/// The message of a caught panic, with the location the panic hook saw; consumes the payload.
///
/// The one place a caught payload goes: dropping it runs plugin code (its `Drop`), which may
/// panic again, and that second panic, outside `catch_unwind`, would unwind out of the
/// `extern "C"` shim and abort the host. So the payload is dropped under a guard, and the
/// payload of a panicking drop is forgotten, never dropped: its `Drop` could panic as well.
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let message = panic_message_of(&*payload);
    let message = match PANIC_LOCATION.take() {
        Some(location) => format!("{message} (at {})", location.as_str()),
        None => message.to_owned(),
    };
    if let Err(second) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(second);
        // The hook recorded where the drop panicked; that belongs to no report.
        PANIC_LOCATION.take();
    }
    message
}

/// Where the last panic on this thread happened, as `file:line:column` text.
#[derive(Clone, Copy)]
struct LocationText {
    bytes: [u8; 192],
    len: usize,
}

impl LocationText {
    fn new(location: &std::panic::Location<'_>) -> Self {
        use std::io::Write;
        let mut bytes = [0u8; 192];
        let mut cursor = std::io::Cursor::new(&mut bytes[..]);
        // A location longer than the buffer is cut short, which is fine for a message.
        let _ = write!(cursor, "{location}");
        let len = cursor.position() as usize;
        LocationText { bytes, len }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}

thread_local! {
    // Plain `Copy` data on purpose: a thread-local with a destructor would keep this library
    // mapped after the host closes it (docs/design.md, "Unloading and thread-local
    // destructors").
    static PANIC_LOCATION: Cell<Option<LocationText>> = const { Cell::new(None) };
}

/// Replaces the plugin's panic hook (the plugin has its own std, so this touches nothing in
/// the host): instead of std's report, with a backtrace when `RUST_BACKTRACE` is set, print one
/// line naming the plugin, and remember the location so the error the host gets includes it.
///
/// The hook captures nothing (the name is `P::NAME`, a constant), so its `Box` allocates
/// nothing: std never frees a hook, and an allocated one would leak with every load of the
/// library.
fn install_panic_hook<P: Plugin>() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            use std::io::Write;
            let plugin = P::NAME;
            let message = panic_message_of(info.payload());
            // Not `eprintln!`: it panics when stderr cannot be written, and a panic inside the
            // panic hook aborts the whole process.
            let mut stderr = std::io::stderr().lock();
            if let Some(location) = info.location() {
                PANIC_LOCATION.set(Some(LocationText::new(location)));
                let _ = writeln!(stderr, "plugin {plugin} panicked at {location}: {message}");
            } else {
                let _ = writeln!(stderr, "plugin {plugin} panicked: {message}");
            }
        }));
    });
}

fn panic_message_of(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "panic with a non-string payload"
    }
}

fn parse_config<P: Plugin>(bytes: &[u8]) -> Result<P::Config, PluginError> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    let config: P::Config = serde_json::from_slice(bytes)
        .map_err(|e| PluginError::new(format!("invalid config: {e}")))?;
    P::validate_config(&config)?;
    Ok(config)
}

/// # Safety
///
/// The contract of [`PluginVTable`]: `instance` and `out` are valid for writing.
unsafe extern "C" fn init<P: Plugin>(
    config: RSlice<'_, u8>,
    instance: &mut *mut c_void,
    out: &mut OutBuffer,
) -> Status {
    create::<P>(config.as_slice(), None, instance, out)
}

/// # Safety
///
/// The contract of [`StateVTable`]: `instance` and `out` are valid for writing.
unsafe extern "C" fn init_with_state<P: Plugin>(
    config: RSlice<'_, u8>,
    state: RSlice<'_, u8>,
    instance: &mut *mut c_void,
    out: &mut OutBuffer,
) -> Status {
    create::<P>(config.as_slice(), Some(state.as_slice()), instance, out)
}

/// Init, and restore state if there is some; `*instance` is set only if all of it succeeded.
fn create<P: Plugin>(
    config: &[u8],
    state: Option<&[u8]>,
    instance: &mut *mut c_void,
    out: &mut OutBuffer,
) -> Status {
    install_panic_hook::<P>();
    guarded(out, |_| {
        let config = parse_config::<P>(config)?;
        let mut plugin = P::default();
        plugin.init(config)?;
        if let Some(state) = state {
            plugin
                .restore_state(state)
                .map_err(|e| PluginError::new(format!("cannot restore state: {e}")))?;
        }
        *instance = Box::into_raw(Box::new(plugin)).cast();
        Ok(())
    })
}

/// # Safety
///
/// The contract of [`StateVTable`]: `instance` is a live instance of `P` made by `init`.
unsafe extern "C" fn save_state<P: Plugin>(instance: *const c_void, out: &mut OutBuffer) -> Status {
    // SAFETY: as in `execute`.
    let plugin = unsafe { &*instance.cast::<P>() };
    guarded(out, |output| {
        if let Some(state) = plugin.save_state() {
            output.write(&state);
        }
        Ok(())
    })
}

/// # Safety
///
/// The contract of [`PluginVTable`]: `instance` is a live instance of `P` made by `init`.
unsafe extern "C" fn execute<P: Plugin>(
    instance: *const c_void,
    ctx: &CallContext,
    input: RSlice<'_, u8>,
    out: &mut OutBuffer,
) -> Status {
    // SAFETY: the host passes back the pointer `init` produced, which stays valid until
    // `shutdown`, and only shares it (`&P`), which `P: Sync` allows.
    let plugin = unsafe { &*instance.cast::<P>() };
    guarded(out, |output| {
        plugin.execute(&Context::new(ctx), input.as_slice(), output)
    })
}

/// # Safety
///
/// The contract of [`PluginVTable`]: `instance` is a live instance of `P` made by `init`, given
/// here once, with no other call on it in flight.
unsafe extern "C" fn shutdown<P: Plugin>(instance: *mut c_void, out: &mut OutBuffer) -> Status {
    // SAFETY: the host passes the pointer `init` produced, exactly once, after every
    // `execute` on it has returned, so we own it again.
    let mut plugin = unsafe { Box::from_raw(instance.cast::<P>()) };
    let status = guarded(out, |_| plugin.shutdown());
    // Dropping runs plugin code too: a panicking Drop must not abort the host. If Shutdown
    // already failed, its message is the one to keep (the payload is still disposed of
    // through `panic_message`).
    match catch_unwind(AssertUnwindSafe(move || drop(plugin))) {
        Ok(()) => status,
        Err(payload) => {
            let message = panic_message(payload);
            if status != Status::OK {
                return status;
            }
            let mut output = Output::new(out);
            output.write(b"while dropping the plugin: ");
            output.write(message.as_bytes());
            output.finish();
            Status::PANIC
        }
    }
}

/// # Safety
///
/// The contract of [`PluginVTable`]: `instance` is a live instance of `P` made by `init`.
unsafe extern "C" fn health<P: Plugin>(
    instance: *const c_void,
    level: &mut u8,
    out: &mut OutBuffer,
) -> Status {
    // SAFETY: as in `execute`.
    let plugin = unsafe { &*instance.cast::<P>() };
    guarded(out, |output| {
        let (value, message) = match plugin.health() {
            Health::Healthy => (health_level::HEALTHY, String::new()),
            Health::Degraded(m) => (health_level::DEGRADED, m),
            Health::Unhealthy(m) => (health_level::UNHEALTHY, m),
        };
        *level = value;
        output.write(message.as_bytes());
        Ok(())
    })
}

/// # Safety
///
/// The contract of [`EventModule`]: `instance` is a live instance of `P` made by `init`.
unsafe extern "C" fn on_event<P: Plugin>(
    instance: *const c_void,
    ctx: &CallContext,
    event: &RawEvent<'_>,
    out: &mut OutBuffer,
) -> Status {
    // SAFETY: as in `execute`.
    let plugin = unsafe { &*instance.cast::<P>() };
    guarded(out, |_| {
        plugin.on_event(&Context::new(ctx), &Event::new(event))
    })
}

/// # Safety
///
/// The contract of [`EventModule`]: `instance` is a live instance of `P` made by `init`.
unsafe extern "C" fn start<P: Plugin>(
    instance: *const c_void,
    emitter: u64,
    out: &mut OutBuffer,
) -> Status {
    // SAFETY: as in `execute`.
    let plugin = unsafe { &*instance.cast::<P>() };
    guarded(out, |_| plugin.start(Emitter::new(emitter)))
}

/// # Safety
///
/// The contract of [`EventModule`]: `instance` is a live instance of `P` made by `init`.
unsafe extern "C" fn stop<P: Plugin>(instance: *const c_void, out: &mut OutBuffer) -> Status {
    // SAFETY: as in `execute`.
    let plugin = unsafe { &*instance.cast::<P>() };
    guarded(out, |_| plugin.stop())
}

/// # Safety
///
/// The contract of [`PluginVTable`]: `out` is a valid buffer.
unsafe extern "C" fn validate_config<P: Plugin>(
    config: RSlice<'_, u8>,
    out: &mut OutBuffer,
) -> Status {
    guarded(out, |_| parse_config::<P>(config.as_slice()).map(drop))
}

/// # Safety
///
/// `(ptr, len, cap)` are exactly those of an output this library handed over as
/// `BufferOwner::PLUGIN`, given back once.
unsafe extern "C" fn free_buffer(ptr: *mut u8, len: usize, cap: usize) {
    // SAFETY: the host returns exactly the (ptr, len, cap) of a `Vec<u8>` that `Output::finish`
    // leaked from this library's allocator, once.
    drop(unsafe { Vec::from_raw_parts(ptr, len, cap) });
}

/// Exports a [`Plugin`](crate::Plugin) type from a `cdylib`: writes the
/// `PLUGHOST_PLUGIN_HEADER` symbol and every `extern "C"` entry point, each wrapped in
/// `catch_unwind`, along with the optional exports (state hand-over, host callbacks,
/// dependencies, events), which every plugin gets whether or not it uses them.
///
/// Use it once per library, at the crate root:
///
/// ```ignore
/// plugin_api::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            use $crate::__private as __p;
            const CAPABILITIES: &[&str] = <$plugin as $crate::Plugin>::CAPABILITIES;
            const TAGS: &[&str] = <$plugin as $crate::Plugin>::TAGS;
            static CAPABILITIES_FFI: [__p::RStr<'static>; CAPABILITIES.len()] =
                __p::rstr_array(CAPABILITIES);
            static TAGS_FFI: [__p::RStr<'static>; TAGS.len()] = __p::rstr_array(TAGS);
            static MODULE: __p::PluginModule = __p::module::<$plugin>(&CAPABILITIES_FFI, &TAGS_FFI);

            #[unsafe(no_mangle)]
            pub static PLUGHOST_PLUGIN_HEADER: __p::PluginHeader = __p::header(&MODULE);

            #[unsafe(no_mangle)]
            pub static PLUGHOST_PLUGIN_HOST: __p::HostExport = __p::host_export();

            static STATE_VTABLE: __p::StateVTable = __p::state_vtable::<$plugin>();
            #[unsafe(no_mangle)]
            pub static PLUGHOST_PLUGIN_STATE: __p::StateExport = __p::state_export(&STATE_VTABLE);

            static DEPENDENCY_MODULE: __p::DependencyModule = __p::dependency_module::<$plugin>();
            #[unsafe(no_mangle)]
            pub static PLUGHOST_PLUGIN_DEPENDENCIES: __p::DependencyExport =
                __p::dependency_export(&DEPENDENCY_MODULE);

            const EMITS: &[&str] = <$plugin as $crate::Plugin>::EMITS;
            const SUBSCRIBES: &[&str] = <$plugin as $crate::Plugin>::SUBSCRIBES;
            static EMITS_FFI: [__p::RStr<'static>; EMITS.len()] = __p::rstr_array(EMITS);
            static SUBSCRIBES_FFI: [__p::RStr<'static>; SUBSCRIBES.len()] =
                __p::rstr_array(SUBSCRIBES);
            static EVENT_MODULE: __p::EventModule =
                __p::event_module::<$plugin>(&EMITS_FFI, &SUBSCRIBES_FFI);
            #[unsafe(no_mangle)]
            pub static PLUGHOST_PLUGIN_EVENTS: __p::EventExport = __p::event_export(&EVENT_MODULE);
        };
    };
}
