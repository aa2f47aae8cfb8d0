//! From a file on disk to a validated library in memory. No plugin entry point is called here:
//! the only plugin code that runs is the library's own constructors, inside `dlopen`, and only
//! once the bytes passed the preflight.
//!
//! The steps, in order, one module each:
//!
//! 1. [`discovery`]: which files in the plugins folder are candidates;
//! 2. [`content`]: the file is read once, on Linux straight into a sealed memory file, its
//!    owner and mode (and its folders') first checked on the open descriptor ([`ownership`]);
//!    everything after works on those bytes;
//! 3. [`trust`]: the signature beside the file, if signatures are required; the pinned
//!    SHA-256 once the plugin's name is known (from the probe, else after step 6);
//! 4. [`preflight`]: the bytes are parsed before any loader sees them;
//! 5. [`shadow`]: the private copy of the same bytes (that memory file, or a file with a unique
//!    name);
//! 6. `dlopen` of the copy ([`Library::open_bytes`]);
//! 7. [`validate`]: the header again in memory, then abi_stable's layout comparison;
//! 8. [`metadata`] and the optional [`exports`] are read out of the library.
//!
//! Closing ([`Library::close`]) checks whether the library really left memory ([`residency`]).

mod content;
pub(crate) mod discovery;
pub(crate) mod exports;
mod metadata;
mod ownership;
pub(crate) mod preflight;
pub(crate) mod probe;
pub(crate) mod residency;
pub(crate) mod shadow;
pub(crate) mod trust;
pub(crate) mod validate;

use std::ffi::c_void;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plugin_api::ffi::{
    DependencyExport, EventApi, EventExport, EventModule, HostApi, HostExport, PluginCalls,
    PluginHeader, PluginVTable, StateExport, StateVTable, HEADER_SYMBOL,
};

use crate::config::HostConfig;
use crate::error::LoadError;
use crate::plugin_info::PluginInfo;
pub(crate) use content::{read, read_library, Content};
use exports::Install;
use probe::Probe;
use residency::UnloadStatus;
pub(crate) use shadow::ShadowCopy;
use shadow::ShadowDir;

/// Where a library is to be loaded, decided once its plugin's name is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Not at all: the settings disable it ([`LoadError::Unwanted`]; only when the name is
    /// known).
    Unwanted,
    /// In this process.
    Here,
    /// In a worker process: the bytes are checked and copied, not loaded here.
    Worker,
}

/// How [`Library::open_bytes`] learns a plugin's name before anything loads the library in
/// this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Naming<'a> {
    /// The probe loads it first, in a process of its own (unless probing is off).
    Probe,
    /// Nothing loads it unconfined (a host where any plugin may be isolated): the name the
    /// probe remembers for these bytes, if any; else a worker, confined, will tell.
    Worker,
    /// A worker loaded these bytes, confined, and named this plugin.
    Told(&'a str),
}

/// What opening a file gave.
pub(crate) enum Opened {
    /// The library, loaded and validated in this process.
    Here(Box<Library>),
    /// The bytes, checked and copied, for a worker process to load.
    Checked(CheckedCopy),
}

/// A library file read once, checked, and written to a private copy that a worker process
/// loads ([`Library::open_copy`]). Dropping it deletes the copy.
#[derive(Debug)]
#[cfg_attr(not(isolation), allow(dead_code))]
pub(crate) struct CheckedCopy {
    /// The user's file.
    pub(crate) file: PathBuf,
    /// The private copy.
    pub(crate) copy: ShadowCopy,
    /// The content's hash.
    pub(crate) hash: u128,
    /// The plugin's name, if the probe read it.
    pub(crate) name: Option<String>,
    /// The integrity checks passed so far: without a name, the pin is still to check.
    pub(crate) trust: trust::Checked,
}

/// A loaded, validated plugin library whose entry points have not been called. Dropping it
/// closes the library, then deletes its shadow copy.
pub(crate) struct Library {
    info: PluginInfo,
    file: PathBuf,
    vtable: PluginVTable,
    state: Option<StateVTable>,
    install_host: Option<Install<HostApi>>,
    install_calls: Option<Install<PluginCalls>>,
    events: Option<EventModule>,
    content_hash: u128,
    load_time: Duration,
    // Taken by `close` (explicitly, or from `Drop`): the library is closed before its file
    // is deleted.
    library: Option<libloading::Library>,
    shadow: Option<ShadowCopy>,
}

impl Library {
    /// Checks, copies, probes, loads and validates `bytes`, the content of `path`. A panic in
    /// any of it (abi_stable's layout checker indexes damaged tables without bounds checks) is
    /// a refusal of the file, not the host's end.
    ///
    /// `place(name)` is asked once the plugin's name is known as `naming` says (with `None`
    /// when it is not), before the host loads anything: it may leave the library unopened
    /// ([`LoadError::Unwanted`]), or checked and copied for a worker process to load
    /// ([`Opened::Checked`]).
    ///
    /// The integrity `settings` ask for ([`trust`]) is checked first: the signature before
    /// anything looks at the bytes, the pinned digest as soon as the name is known (from the
    /// probe or a worker, before this process loads the file; else right after loading, before
    /// any entry point is called; for a worker, by the caller once the worker names it).
    pub(crate) fn open_bytes(
        path: &Path,
        bytes: &Content,
        shadow: &ShadowDir,
        probe: &Probe,
        naming: Naming<'_>,
        place: &dyn Fn(Option<&str>) -> Placement,
        settings: &HostConfig,
    ) -> Result<Opened, LoadError> {
        guarded(path, || {
            let started = Instant::now();
            let trust = trust::Checked::new(path, bytes, settings)?;
            preflight::check_bytes(path, bytes)?;
            let content_hash = content_hash(bytes);
            let copy = shadow.copy(path, bytes)?;
            let name = match naming {
                Naming::Probe => probe.check(path, &copy, content_hash)?,
                Naming::Worker => probe.remembered(content_hash),
                Naming::Told(name) => Some(name.to_owned()),
            };
            if let Some(name) = &name {
                trust.pin(path, name, settings)?;
            }
            let told = name.clone();
            match (place(name.as_deref()), name) {
                (Placement::Unwanted, Some(name)) => {
                    return Err(LoadError::Unwanted {
                        path: path.to_owned(),
                        name,
                    })
                }
                (Placement::Worker, name) => {
                    return Ok(Opened::Checked(CheckedCopy {
                        file: path.to_owned(),
                        copy,
                        hash: content_hash,
                        name,
                        trust,
                    }))
                }
                _ => {}
            }
            let loaded = Loaded::load(path, copy.path())?;
            // The name the library gives now, not the one the probe or a worker heard
            // (whatever a library's code prints there could have told it), decides its pin.
            // Its constructors ran; nothing else has.
            if let Some(told) = told {
                probe.same_name(path, content_hash, &told, &loaded.info.name)?;
            }
            trust.pin(path, &loaded.info.name, settings)?;
            let grants = &settings.plugin(&loaded.info.name).grant;
            crate::capability::check(path, &loaded.info, grants)?;
            let library = loaded.into_library(path, content_hash, started, Some(copy));
            Ok(Opened::Here(Box::new(library)))
        })
    }

    /// What a worker process does with the private copy `copy` of `path` (named in messages),
    /// which the host wrote from bytes it had checked and hashed to `hash`: the copy is read
    /// once, its hash compared, the bytes checked again ([`preflight`]), then loaded and
    /// validated as [`open_bytes`](Self::open_bytes) would. The copy belongs to the host: this
    /// library never deletes it, and is never closed (the worker's exit unloads it).
    #[cfg_attr(not(isolation), allow(dead_code))]
    pub(crate) fn open_copy(path: &Path, copy: &Path, hash: u128) -> Result<Self, LoadError> {
        guarded(path, || {
            let started = Instant::now();
            let bytes = read(copy)?;
            if content_hash(&bytes) != hash {
                return Err(LoadError::NotAPlugin {
                    path: path.to_owned(),
                    reason: format!(
                        "its private copy {} changed after the host checked it",
                        copy.display()
                    ),
                });
            }
            preflight::check_bytes(path, &bytes)?;
            let loaded = Loaded::load(path, copy)?;
            Ok(loaded.into_library(path, hash, started, None))
        })
    }

    /// What a probe process does with the copy `copy`: load and validate it as
    /// [`open_bytes`](Self::open_bytes) would, then close it. The file is left in place: it
    /// belongs to the host that asked.
    pub(crate) fn probe_copy(copy: &Path) -> Result<String, LoadError> {
        guarded(copy, || {
            Loaded::load(copy, copy).map(|loaded| loaded.info.name.clone())
        })
    }

    /// Who the plugin is.
    pub(crate) fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The user's file it was loaded from.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// The private copy actually loaded.
    pub(crate) fn shadow_path(&self) -> &Path {
        self.shadow
            .as_ref()
            .map_or(Path::new(""), |shadow| shadow.path())
    }

    /// How long reading, checking, copying and loading took.
    pub(crate) fn load_time(&self) -> Duration {
        self.load_time
    }

    /// A hash of the file's content as loaded, to tell a real change from a touched file.
    pub(crate) fn content_hash(&self) -> u128 {
        self.content_hash
    }

    /// The entry points. Valid while `self` lives.
    pub(crate) fn vtable(&self) -> &PluginVTable {
        &self.vtable
    }

    /// The state hand-over entry points, if exported. Valid while `self` lives.
    pub(crate) fn state_vtable(&self) -> Option<&StateVTable> {
        self.state.as_ref()
    }

    /// The event declarations and entry points, if exported (plugin-api 1.4). Valid while
    /// `self` lives.
    pub(crate) fn event_module(&self) -> Option<&EventModule> {
        self.events.as_ref()
    }

    /// Gives the plugin the host's tables, each only if the plugin exported a way to take it
    /// (plugin-api 1.2, 1.3 and 1.4), with `identity` to pass back on every callback.
    ///
    /// # Safety
    ///
    /// `identity` must stay valid for as long as the library's code may run: until
    /// [`close`](Self::close) reports the library unmapped, or for ever if it stays mapped.
    pub(crate) unsafe fn install_callbacks(
        &self,
        host: &'static HostApi,
        calls: &'static PluginCalls,
        events: &'static EventApi,
        identity: *const c_void,
    ) {
        if let Some(module) = &self.events {
            // SAFETY: the export passed its layout check; the table is a static and the
            // identity outlives the library's code (the caller's promise).
            unsafe { (module.install)(events, identity) };
        }
        if let Some(install) = self.install_host {
            // SAFETY: the export passed its layout check; the table is a static and the
            // identity outlives the library's code (the caller's promise).
            unsafe { install(host, identity) };
        }
        if let Some(install) = self.install_calls {
            // SAFETY: as above.
            unsafe { install(calls, identity) };
        }
    }

    /// Closes the library, checks whether it left the address space, then deletes the private
    /// copy, unless the library is still in memory: then the copy is handed back, to keep while
    /// it is. Nothing the plugin created may be alive any more.
    pub(crate) fn close(mut self) -> Closed {
        self.close_now()
    }

    fn close_now(&mut self) -> Closed {
        let (Some(library), Some(shadow)) = (self.library.take(), self.shadow.take()) else {
            return Closed {
                status: UnloadStatus::Unknown, // closed already
                pinned: None,
            };
        };
        if let Err(e) = library.close() {
            tracing::warn!("closing {} failed: {e}", self.file.display());
        }
        // Checked while the copy still lives, so that its path names only this library.
        let status = match residency::is_loaded(shadow.path()) {
            Some(false) => UnloadStatus::Unmapped,
            Some(true) => UnloadStatus::StillMapped,
            None => UnloadStatus::Unknown,
        };
        let pinned = (status == UnloadStatus::StillMapped).then_some(shadow);
        Closed { status, pinned }
    }
}

/// What closing a library left.
#[must_use]
pub(crate) struct Closed {
    /// Whether it left memory.
    pub(crate) status: UnloadStatus,
    /// The private copy of a library still in memory ([`UnloadStatus::StillMapped`]), to drop
    /// once [`residency::is_loaded`] says the library left, which frees it. (Dropped earlier, a
    /// memory file keeps itself open for good: its path must name no other library while this
    /// one is in memory.)
    pub(crate) pinned: Option<ShadowCopy>,
}

/// A library just loaded and validated: what [`Library`] keeps of it.
struct Loaded {
    library: libloading::Library,
    info: PluginInfo,
    vtable: PluginVTable,
    state: Option<StateVTable>,
    install_host: Option<Install<HostApi>>,
    install_calls: Option<Install<PluginCalls>>,
    events: Option<EventModule>,
}

impl Loaded {
    /// `dlopen`s `copy`, the private copy of `path` (named in errors), checks its header and
    /// layouts, and reads its metadata and optional exports. The file passed the preflight.
    fn load(path: &Path, copy: &Path) -> Result<Self, LoadError> {
        // SAFETY: loading runs the library's initialisers. The file passed the preflight: it is
        // a shared library for this platform that exports a plughost header of a compatible
        // plugin-api version. That is as much as can be known before running it.
        let library = unsafe { dlopen(copy) }.map_err(|e| LoadError::Open {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        // SAFETY: the preflight found the symbol in the file, and plugin-api declares it as a
        // `PluginHeader` static; we take its address, not its value.
        let header: *const PluginHeader =
            unsafe { library.get::<*const PluginHeader>(format!("{HEADER_SYMBOL}\0").as_bytes()) }
                .map(|symbol| *symbol)
                .map_err(|e| LoadError::NotAPlugin {
                    path: path.to_owned(),
                    reason: format!("cannot find {HEADER_SYMBOL} after loading: {e}"),
                })?;
        // SAFETY: the symbol is a static in the loaded library, alive while `library` is. Only
        // its first three fields, plain integers in the frozen header layout, are read before
        // they are checked; no reference to the header exists until then.
        let (magic, header_version, api_version) = unsafe {
            (
                std::ptr::addr_of!((*header).magic).read(),
                std::ptr::addr_of!((*header).header_version).read(),
                std::ptr::addr_of!((*header).api_version).read(),
            )
        };
        validate::check_header_fields(path, magic, header_version, api_version)?;
        // SAFETY: as above; the header version says the rest of the layout is ours.
        let header = unsafe { &*header };
        validate::check_layout(path, header.module_layout)?;
        // From here on the module's layout is known to equal ours.
        let module = header.module;
        let mut info = metadata::plugin_info(
            path,
            &module.metadata,
            validate::to_semver(header.api_version),
        )?;
        let state = exports::read::<StateExport>(path, &library)?;
        let install_host = exports::read::<HostExport>(path, &library)?;
        let dependencies = exports::read::<DependencyExport>(path, &library)?;
        let events = exports::read::<EventExport>(path, &library)?;
        if let Some(module) = &events {
            metadata::events(path, module, &mut info)?;
        }
        if let Some(module) = &dependencies {
            info.dependencies = module
                .requires
                .iter()
                .map(|d| metadata::requirement(path, d))
                .collect::<Result<_, _>>()?;
        }
        Ok(Loaded {
            library,
            info,
            vtable: module.vtable,
            state,
            install_host,
            install_calls: dependencies.map(|module| module.install),
            events,
        })
    }

    /// The [`Library`] of `path` this is, its content hashed to `content_hash`, checked and
    /// loaded since `started`, from `shadow` (its owner, if this process owns the copy).
    fn into_library(
        self,
        path: &Path,
        content_hash: u128,
        started: Instant,
        shadow: Option<ShadowCopy>,
    ) -> Library {
        Library {
            info: self.info,
            file: path.to_owned(),
            vtable: self.vtable,
            state: self.state,
            install_host: self.install_host,
            install_calls: self.install_calls,
            events: self.events,
            content_hash,
            load_time: started.elapsed(),
            library: Some(self.library),
            shadow,
        }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // A copy of a library still in memory keeps itself open (`ShadowCopy`'s drop).
        let _ = self.close_now();
    }
}

/// Runs `check` (the checks of the file `path`), turning a panic into a refusal.
fn guarded<T>(path: &Path, check: impl FnOnce() -> Result<T, LoadError>) -> Result<T, LoadError> {
    std::panic::catch_unwind(AssertUnwindSafe(check)).unwrap_or_else(|payload| {
        let message = panic_message(payload.as_ref());
        // The payload came from the host's own code or a crate's (plugin code catches its
        // own), so dropping it is safe.
        drop(payload);
        Err(LoadError::CheckPanicked {
            path: path.to_owned(),
            message,
        })
    })
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// The hash [`Library::content_hash`] reports for these bytes: XXH3-128, fast enough (several
/// GB/s) not to matter next to copying the file.
pub(crate) fn content_hash(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// Opens a library with the platform's loader.
///
/// On unix: `RTLD_NOW`, so a missing symbol fails here rather than at the first call, and
/// `RTLD_LOCAL`, so one plugin's symbols never resolve another's (docs/design.md, "Loader
/// flags"). On Windows: `LoadLibraryExW` with default flags.
///
/// # Safety
///
/// Loading runs the library's initialisers, which can do anything.
unsafe fn dlopen(path: &Path) -> Result<libloading::Library, libloading::Error> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        // SAFETY: forwarded to the caller.
        unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map(Into::into)
    }
    #[cfg(not(unix))]
    {
        // SAFETY: forwarded to the caller.
        unsafe { libloading::Library::new(path) }
    }
}
