//! The raw, FFI-safe contract: what a plugin library exports and what the host reads.
//!
//! Longer than the project's 600 lines on purpose: every type that crosses the boundary is in
//! this one file, so an ABI change is reviewed in one place.
//!
//! Plugin authors never touch this module: [`export_plugin!`](crate::export_plugin) writes it
//! all. It is public so that the host (and tests that build deliberately broken plugins) can
//! speak it.
//!
//! A plugin library exports one symbol, [`HEADER_SYMBOL`], a [`PluginHeader`]. The header is
//! deliberately tiny and frozen: a magic value, the header's own version, the plugin-api
//! version the plugin was built against and two pointers. The host checks the first three
//! *before* looking at anything else (it can even read them from the file without loading it),
//! then compares [`PluginModule`]'s layout, as abi_stable computed it when the plugin was
//! built, with its own. Only after both checks pass does it touch the metadata or the vtable.
//!
//! Memory rule across the boundary: **whoever allocates frees**. The host lends the plugin an
//! [`OutBuffer`]; a plugin that needs more room hands back its own allocation, marked
//! [`BufferOwner::PLUGIN`], and the host returns it through [`PluginVTable::free_buffer`].

use std::ffi::c_void;
use std::sync::atomic::AtomicBool;

use abi_stable::std_types::{RSlice, RStr};
use abi_stable::type_layout::TypeLayout;
use abi_stable::StableAbi;

/// The name of the optional [`StateExport`] static (plugin-api 1.1): plugins that export it
/// can hand their state to the next version of themselves on hot reload.
pub const STATE_SYMBOL: &str = "PLUGHOST_PLUGIN_STATE";

/// The name of the optional [`HostExport`] static (plugin-api 1.2): plugins that export it
/// receive the host's callbacks (logging) before Init.
pub const HOST_SYMBOL: &str = "PLUGHOST_PLUGIN_HOST";

/// The name of the optional [`DependencyExport`] static (plugin-api 1.3): the plugins this one
/// requires, and how it receives the callback that calls them.
pub const DEPENDENCY_SYMBOL: &str = "PLUGHOST_PLUGIN_DEPENDENCIES";

/// The name of the optional [`EventExport`] static (plugin-api 1.4): the topics a plugin
/// publishes and subscribes to, its event handler, and, for an event source, start and stop.
pub const EVENT_SYMBOL: &str = "PLUGHOST_PLUGIN_EVENTS";

/// The name of the exported [`PluginHeader`] static, as written in the library's symbol table
/// (Mach-O adds its usual leading underscore).
pub const HEADER_SYMBOL: &str = "PLUGHOST_PLUGIN_HEADER";

/// First eight bytes of every [`PluginHeader`].
pub const MAGIC: [u8; 8] = *b"PLUGHOST";

/// Version of the [`PluginHeader`] layout itself. It changes only if the header ever must,
/// which the design avoids: later additions go behind the layout-checked module.
pub const HEADER_VERSION: u32 = 1;

/// The plugin-api version this crate is, i.e. the version a plugin built against it reports.
pub const API_VERSION: ApiVersion = ApiVersion {
    major: parse_u32(env!("CARGO_PKG_VERSION_MAJOR")),
    minor: parse_u32(env!("CARGO_PKG_VERSION_MINOR")),
    patch: parse_u32(env!("CARGO_PKG_VERSION_PATCH")),
};

const fn parse_u32(s: &str) -> u32 {
    let bytes = s.as_bytes();
    let mut value = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        value = value * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    value
}

/// A semantic version as three integers, FFI-safe.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    /// Incompatible changes.
    pub major: u32,
    /// Backwards-compatible additions.
    pub minor: u32,
    /// Fixes.
    pub patch: u32,
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The one symbol a plugin exports. Frozen: see the module docs.
///
/// The first 24 bytes (magic, header version, API version) are plain integers so that the host
/// can read them straight from the file before it runs any of the library's code.
#[repr(C)]
pub struct PluginHeader {
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// Always [`HEADER_VERSION`] for this layout.
    pub header_version: u32,
    /// The plugin-api version the plugin was built against.
    pub api_version: ApiVersion,
    /// abi_stable's description of [`PluginModule`] as the plugin saw it at build time.
    pub module_layout: &'static TypeLayout,
    /// The module itself. Read it only after `module_layout` has been checked.
    pub module: &'static PluginModule,
}

// SAFETY: every field is immutable `'static` data (integers, and references to a `TypeLayout`
// and a `PluginModule` that are only ever read). `TypeLayout` is not `Sync` only because it
// holds raw pointers to other constant tables.
unsafe impl Sync for PluginHeader {}

/// Everything behind the header: metadata and entry points. Its layout is checked by
/// abi_stable before the host reads a field.
#[repr(C)]
#[derive(StableAbi)]
pub struct PluginModule {
    /// Who the plugin is.
    pub metadata: PluginMetadata,
    /// What the host can call.
    pub vtable: PluginVTable,
}

/// A plugin's self-description: static data inside the library.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct PluginMetadata {
    /// Unique name the host registers the plugin under.
    pub name: RStr<'static>,
    /// The plugin's own version (semver).
    pub version: RStr<'static>,
    /// One line on what it does.
    pub description: RStr<'static>,
    /// Who wrote it.
    pub author: RStr<'static>,
    /// SPDX licence expression.
    pub license: RStr<'static>,
    /// What it can do, as free-form strings (e.g. `"text"`, `"stateful"`).
    pub capabilities: RSlice<'static, RStr<'static>>,
    /// Labels for grouping and search.
    pub tags: RSlice<'static, RStr<'static>>,
    /// The keys its configuration accepts.
    pub config_schema: RSlice<'static, ConfigField>,
}

/// The type of a configuration value, as JSON sees it.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    /// A JSON string.
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Float,
    /// `true` or `false`.
    Bool,
    /// A JSON array.
    Array,
    /// A JSON object.
    Object,
    /// Anything.
    Any,
}

impl ConfigType {
    /// The lower-case name used in messages and tables.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConfigType::String => "string",
            ConfigType::Integer => "integer",
            ConfigType::Float => "float",
            ConfigType::Bool => "bool",
            ConfigType::Array => "array",
            ConfigType::Object => "object",
            ConfigType::Any => "any",
        }
    }
}

/// One key of a plugin's configuration schema. Build it in a `const` with the builder methods:
///
/// ```
/// use plugin_api::ConfigField;
/// const SCHEMA: &[ConfigField] = &[
///     ConfigField::string("mode")
///         .default_json(r#""upper""#)
///         .describe("upper, lower or reverse"),
///     ConfigField::string("api_key").required().sensitive(),
/// ];
/// assert_eq!(SCHEMA[0].key.as_str(), "mode");
/// ```
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct ConfigField {
    /// The key.
    pub key: RStr<'static>,
    /// The type its value must have.
    pub ty: ConfigType,
    /// Whether Init fails without it.
    pub required: bool,
    /// Whether its value must be masked in logs and listings.
    pub sensitive: bool,
    /// The default as JSON text; empty for none.
    pub default_json: RStr<'static>,
    /// What it means.
    pub description: RStr<'static>,
}

impl ConfigField {
    /// A key of the given type: optional, not sensitive, no default, no description.
    pub const fn new(key: &'static str, ty: ConfigType) -> Self {
        ConfigField {
            key: RStr::from_str(key),
            ty,
            required: false,
            sensitive: false,
            default_json: RStr::from_str(""),
            description: RStr::from_str(""),
        }
    }
    /// A string key.
    pub const fn string(key: &'static str) -> Self {
        Self::new(key, ConfigType::String)
    }
    /// An integer key.
    pub const fn integer(key: &'static str) -> Self {
        Self::new(key, ConfigType::Integer)
    }
    /// A number key.
    pub const fn float(key: &'static str) -> Self {
        Self::new(key, ConfigType::Float)
    }
    /// A boolean key.
    pub const fn bool(key: &'static str) -> Self {
        Self::new(key, ConfigType::Bool)
    }
    /// Marks the key required.
    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    /// Marks the key's value secret: shown as `***`.
    pub const fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }
    /// Sets the default, written as JSON text (`"\"upper\""`, `"10"`, `"true"`).
    pub const fn default_json(mut self, json: &'static str) -> Self {
        self.default_json = RStr::from_str(json);
        self
    }
    /// Sets the description.
    pub const fn describe(mut self, text: &'static str) -> Self {
        self.description = RStr::from_str(text);
        self
    }
}

/// The outcome of an entry point. A newtype over `u8` rather than an enum so that an
/// unexpected value from a foreign library is just an unknown code, never undefined behaviour.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u8);

impl Status {
    /// Success; the output buffer holds the result.
    pub const OK: Status = Status(0);
    /// The plugin returned an error; the output buffer holds its message (UTF-8).
    pub const ERROR: Status = Status(1);
    /// The plugin panicked and caught it; the output buffer holds the panic message.
    pub const PANIC: Status = Status(2);
}

/// Who owns the bytes an [`OutBuffer`] points at.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferOwner(pub u8);

impl BufferOwner {
    /// The host lent this memory; the plugin wrote at most `cap` bytes into it.
    pub const HOST: BufferOwner = BufferOwner(0);
    /// The plugin replaced the pointer with its own allocation; the host must give it back
    /// with [`PluginVTable::free_buffer`]`(ptr, len, cap)` once it has read it.
    pub const PLUGIN: BufferOwner = BufferOwner(1);
    /// The same value seen from a plugin that calls the host ([`PluginCalls::call`]): the
    /// callee (the host) allocated the bytes; give them back with
    /// [`PluginCalls::free_buffer`].
    pub const CALLEE: BufferOwner = BufferOwner(1);
}

/// Where an entry point writes its output (or its error message).
///
/// The host fills `ptr`/`cap` with memory it owns (possibly `cap == 0`), `len = 0`,
/// `owner = HOST`. On return, `ptr[..len]` is the output; if `owner == PLUGIN` the plugin
/// allocated it and the host must free it through the plugin's vtable.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct OutBuffer {
    /// Start of the bytes.
    pub ptr: *mut u8,
    /// Number of bytes written.
    pub len: usize,
    /// Room at `ptr`.
    pub cap: usize,
    /// Who must free `ptr`.
    pub owner: BufferOwner,
}

impl OutBuffer {
    /// A buffer over host memory `ptr[..cap]`, empty.
    pub fn host(ptr: *mut u8, cap: usize) -> Self {
        OutBuffer {
            ptr,
            len: 0,
            cap,
            owner: BufferOwner::HOST,
        }
    }
}

/// Per-call information from the host.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct CallContext {
    /// Set by the host when the caller gave up; null when the call cannot be cancelled.
    pub cancelled: *const AtomicBool,
    /// Deadline in nanoseconds since the Unix epoch; 0 for none.
    pub deadline_unix_nanos: u64,
}

impl CallContext {
    /// A context with no deadline that is never cancelled.
    pub const fn none() -> Self {
        CallContext {
            cancelled: std::ptr::null(),
            deadline_unix_nanos: 0,
        }
    }
}

/// Health levels written by [`PluginVTable::health`].
pub mod health_level {
    /// Working normally.
    pub const HEALTHY: u8 = 0;
    /// Working, with a problem worth reporting.
    pub const DEGRADED: u8 = 1;
    /// Not able to do its job.
    pub const UNHEALTHY: u8 = 2;
}

/// The entry points. Every function catches panics inside the plugin (a panic cannot cross
/// `extern "C"`; docs/design.md, "Panics across the boundary") and reports them as
/// [`Status::PANIC`].
///
/// # Safety
///
/// What the host promises when it calls them:
/// - `instance` is a pointer `init` (or `init_with_state`) stored and `shutdown` has not been
///   given yet; `shutdown` gets it once, when no other call on it is in flight;
/// - every `OutBuffer` is as [`OutBuffer`] describes: `ptr[..cap]` writable host memory (or
///   `cap == 0`), `len == 0`, `owner == HOST`;
/// - slices and references are valid for the duration of the call;
/// - `free_buffer` gets back exactly the `(ptr, len, cap)` of a `BufferOwner::PLUGIN` output,
///   once, while the library is loaded.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct PluginVTable {
    /// Creates an instance from JSON configuration bytes (empty means `{}`), storing it in
    /// `*instance`. On failure `*instance` stays null and `out` holds the message.
    pub init: unsafe extern "C" fn(
        config: RSlice<'_, u8>,
        instance: &mut *mut c_void,
        out: &mut OutBuffer,
    ) -> Status,
    /// Runs the plugin on `input`, writing the result to `out`. May run on many threads at once.
    pub execute: unsafe extern "C" fn(
        instance: *const c_void,
        ctx: &CallContext,
        input: RSlice<'_, u8>,
        out: &mut OutBuffer,
    ) -> Status,
    /// Shuts the instance down and frees it, whatever the outcome. Never call it twice.
    pub shutdown: unsafe extern "C" fn(instance: *mut c_void, out: &mut OutBuffer) -> Status,
    /// Optional: writes a [`health_level`] to `level` and an optional message to `out`.
    pub health: Option<
        unsafe extern "C" fn(
            instance: *const c_void,
            level: &mut u8,
            out: &mut OutBuffer,
        ) -> Status,
    >,
    /// Optional: checks configuration bytes without creating an instance.
    pub validate_config:
        Option<unsafe extern "C" fn(config: RSlice<'_, u8>, out: &mut OutBuffer) -> Status>,
    /// Frees an output the plugin allocated ([`BufferOwner::PLUGIN`]).
    pub free_buffer: unsafe extern "C" fn(ptr: *mut u8, len: usize, cap: usize),
}

/// Optional export (plugin-api 1.1), behind [`STATE_SYMBOL`]: state hand-over across a hot
/// reload. Kept out of [`PluginModule`] so that plugins built against plugin-api 1.0, which
/// lack it, still pass the module's layout check; the host checks `layout` separately.
#[repr(C)]
pub struct StateExport {
    /// abi_stable's description of [`StateVTable`] as the plugin saw it.
    pub layout: &'static TypeLayout,
    /// The functions.
    pub vtable: &'static StateVTable,
}

// SAFETY: as for `PluginHeader`: immutable `'static` data, only read.
unsafe impl Sync for StateExport {}

/// State hand-over: the old version's `save` output goes to the new version's
/// `init_with_state`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct StateVTable {
    /// Writes the instance's state to `out`; an empty output means "nothing to hand over".
    pub save: unsafe extern "C" fn(instance: *const c_void, out: &mut OutBuffer) -> Status,
    /// Like [`PluginVTable::init`], then hands the new instance `state`.
    pub init_with_state: unsafe extern "C" fn(
        config: RSlice<'_, u8>,
        state: RSlice<'_, u8>,
        instance: &mut *mut c_void,
        out: &mut OutBuffer,
    ) -> Status,
}

/// Optional export (plugin-api 1.2), behind [`HOST_SYMBOL`]: how the host hands the plugin its
/// callbacks. The host checks `layout` against its own [`HostApi`] and calls `install` once,
/// after loading and before Init.
#[repr(C)]
pub struct HostExport {
    /// abi_stable's description of [`HostApi`] as the plugin saw it.
    pub layout: &'static TypeLayout,
    /// Stores the host's table and the opaque identity to pass back with every callback.
    pub install: unsafe extern "C" fn(api: &'static HostApi, plugin: *const c_void),
}

// SAFETY: as for `PluginHeader`: immutable `'static` data, only read.
unsafe impl Sync for HostExport {}

/// Log levels crossing the boundary, as in `tracing` and `log`.
pub mod log_level {
    /// Something failed.
    pub const ERROR: u8 = 1;
    /// Something looks wrong.
    pub const WARN: u8 = 2;
    /// Something worth knowing.
    pub const INFO: u8 = 3;
    /// Detail for debugging.
    pub const DEBUG: u8 = 4;
    /// Even more detail.
    pub const TRACE: u8 = 5;
}

/// The host's callbacks. `plugin` is always the identity the host passed to
/// [`HostExport::install`].
///
/// # Safety
///
/// The plugin calls these only with that identity, from any thread, while its library is
/// loaded; `message` is valid UTF-8 for the duration of the call.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostApi {
    /// Whether a message at `level` would be recorded (so the plugin can skip formatting it).
    pub log_enabled: unsafe extern "C" fn(plugin: *const c_void, level: u8) -> bool,
    /// Records a message at `level`, in the host's log, attributed to the plugin.
    pub log: unsafe extern "C" fn(plugin: *const c_void, level: u8, message: RStr<'_>),
}

/// Optional export (plugin-api 1.3), behind [`DEPENDENCY_SYMBOL`]: the plugins this one needs,
/// and how it receives the callback to call them. The host checks `layout` against its own
/// [`DependencyModule`], refuses the plugin while a requirement is not met, and calls
/// `install` once, after loading and before Init.
#[repr(C)]
pub struct DependencyExport {
    /// abi_stable's description of [`DependencyModule`] as the plugin saw it.
    pub layout: &'static TypeLayout,
    /// The requirements and the install function.
    pub module: &'static DependencyModule,
}

// SAFETY: as for `PluginHeader`: immutable `'static` data, only read.
unsafe impl Sync for DependencyExport {}

/// See [`DependencyExport`].
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct DependencyModule {
    /// The plugins this one calls, each with the versions it accepts.
    pub requires: RSlice<'static, Dependency>,
    /// Stores the host's call table and the opaque identity to pass back with every call.
    pub install: unsafe extern "C" fn(calls: &'static PluginCalls, plugin: *const c_void),
}

/// One requirement: a plugin name and a semver range (`"^1.2"`, `">=1, <3"`, `"*"`), as
/// Cargo writes them.
///
/// ```
/// use plugin_api::Dependency;
/// const DEPENDENCIES: &[Dependency] = &[Dependency::new("storage", "^1.2")];
/// assert_eq!(DEPENDENCIES[0].name.as_str(), "storage");
/// ```
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Dependency {
    /// The required plugin's name.
    pub name: RStr<'static>,
    /// The versions accepted, as a semver requirement.
    pub version_req: RStr<'static>,
}

impl Dependency {
    /// Requires plugin `name` at a version matching `version_req`.
    pub const fn new(name: &'static str, version_req: &'static str) -> Self {
        Dependency {
            name: RStr::from_str(name),
            version_req: RStr::from_str(version_req),
        }
    }
}

/// How a plugin calls the plugins it declared as dependencies, through the host. `plugin` is
/// always the identity the host passed to [`DependencyModule::install`].
///
/// # Safety
///
/// The plugin calls these only with that identity, from inside one of its own calls (the
/// host's `ctx` is passed on, so deadline and cancellation follow), while its library is
/// loaded. `out` follows the [`OutBuffer`] protocol with the plugin as the lender: an output
/// marked [`BufferOwner::CALLEE`] was allocated by the host and goes back through
/// `free_buffer`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct PluginCalls {
    /// Runs the plugin `name`'s Execute on `input`. `Status::ERROR` with a message when `name`
    /// is not a declared dependency or is not loaded.
    pub call: unsafe extern "C" fn(
        plugin: *const c_void,
        ctx: &CallContext,
        name: RStr<'_>,
        input: RSlice<'_, u8>,
        out: &mut OutBuffer,
    ) -> Status,
    /// Frees an output the host allocated ([`BufferOwner::CALLEE`]).
    pub free_buffer: unsafe extern "C" fn(ptr: *mut u8, len: usize, cap: usize),
}

/// Optional export (plugin-api 1.4), behind [`EVENT_SYMBOL`]: events. The host checks `layout`
/// against its own [`EventModule`], checks every topic and pattern, and calls `install` once,
/// after loading and before Init.
#[repr(C)]
pub struct EventExport {
    /// abi_stable's description of [`EventModule`] as the plugin saw it.
    pub layout: &'static TypeLayout,
    /// The declarations and entry points.
    pub module: &'static EventModule,
}

// SAFETY: as for `PluginHeader`: immutable `'static` data, only read.
unsafe impl Sync for EventExport {}

/// See [`EventExport`]. The entry points follow [`PluginVTable`]'s contract: `instance` is a
/// live instance made by Init, `out` a host-lent buffer, and every one catches panics.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct EventModule {
    /// The topics the plugin publishes (`user.created`): publishing any other is refused.
    pub emits: RSlice<'static, RStr<'static>>,
    /// The topic patterns it receives (`user.*` one level, `user.>` any depth below).
    pub subscribes: RSlice<'static, RStr<'static>>,
    /// Whether it is an event source: the host calls `start` once it serves, `stop` before
    /// it is retired.
    pub source: bool,
    /// Stores the host's event table and the opaque identity to pass back with it.
    pub install: unsafe extern "C" fn(api: &'static EventApi, plugin: *const c_void),
    /// Delivers one event to the instance. May run while calls run; never twice at once.
    pub on_event: unsafe extern "C" fn(
        instance: *const c_void,
        ctx: &CallContext,
        event: &RawEvent<'_>,
        out: &mut OutBuffer,
    ) -> Status,
    /// Starts the source, on a thread the host owns for it: it may return at once (having
    /// started threads of its own) or run until `stop`. `emitter` is the token to publish
    /// with ([`EventApi::publish`]); it dies when the source is stopped.
    pub start:
        unsafe extern "C" fn(instance: *const c_void, emitter: u64, out: &mut OutBuffer) -> Status,
    /// Stops the source, from another thread than `start`'s: once it returns, `start` must
    /// return soon and the plugin's own threads that publish must be joined.
    pub stop: unsafe extern "C" fn(instance: *const c_void, out: &mut OutBuffer) -> Status,
}

/// One event, as it crosses the boundary: the CloudEvents attributes. Borrowed for the
/// duration of the call it is passed to.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct RawEvent<'a> {
    /// Unique per source (the host fills it in when a plugin publishes).
    pub id: RStr<'a>,
    /// Who published it: a plugin's name, `plughost` for the host's own events, or what the
    /// embedding program chose (filled in by the host when a plugin publishes).
    pub source: RStr<'a>,
    /// The topic, dot-separated (`user.created`): CloudEvents' `type`.
    pub topic: RStr<'a>,
    /// When it happened, in nanoseconds since the Unix epoch (0 when a plugin publishes: the
    /// host fills it in).
    pub time_unix_nanos: u64,
    /// The media type of `data` (`application/json` by convention).
    pub datacontenttype: RStr<'a>,
    /// The payload.
    pub data: RSlice<'a, u8>,
    /// CloudEvents extension attributes, as name and value.
    pub extensions: RSlice<'a, Extension<'a>>,
}

/// A CloudEvents extension attribute.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct Extension<'a> {
    /// Its name (lower-case letters and digits, as CloudEvents says).
    pub name: RStr<'a>,
    /// Its value, as text.
    pub value: RStr<'a>,
}

/// How a plugin publishes, through the host. `plugin` is always the identity the host passed
/// to [`EventModule::install`].
///
/// # Safety
///
/// The plugin calls these only with that identity, while its library is loaded; `event` and
/// `out` are valid for the call, `out` following the [`OutBuffer`] protocol with the plugin as
/// the lender (an answer marked [`BufferOwner::CALLEE`] goes back through `free_buffer`).
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct EventApi {
    /// Publishes `event` on behalf of the plugin: `emitter` is 0 from inside a call or an
    /// event handler, else the token its source's `start` got. The host sets `id`, `source`
    /// and `time`. [`Status::ERROR`] with the reason in `out` when refused: a topic not
    /// declared in `emits`, an event too large, a dead emitter, a full queue.
    pub publish: unsafe extern "C" fn(
        plugin: *const c_void,
        emitter: u64,
        event: &RawEvent<'_>,
        out: &mut OutBuffer,
    ) -> Status,
    /// Frees an answer the host allocated ([`BufferOwner::CALLEE`]).
    pub free_buffer: unsafe extern "C" fn(ptr: *mut u8, len: usize, cap: usize),
}
