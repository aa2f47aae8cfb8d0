//! From a file on disk to a validated library in memory. No plugin entry point is called here:
//! the only plugin code that runs is the library's own constructors, inside `dlopen`, and only
//! once the bytes passed the preflight.
//!
//! The steps, in order, one module each:
//!
//! 1. [`discovery`]: which files in the plugins folder are candidates;
//! 2. read the file once ([`read`]); everything after works on those bytes;
//! 3. [`preflight`]: the bytes are parsed before any loader sees them;
//! 4. [`shadow`]: the same bytes are written to a private copy with a unique name;
//! 5. `dlopen` of the copy ([`Library::open_bytes`]);
//! 6. [`validate`]: the header again in memory, then abi_stable's layout comparison;
//! 7. [`metadata`] and the optional [`exports`] are read out of the library.
//!
//! Closing ([`Library::close`]) checks whether the library really left memory ([`residency`]).

pub(crate) mod discovery;
pub(crate) mod exports;
mod metadata;
pub(crate) mod preflight;
pub(crate) mod residency;
pub(crate) mod shadow;
pub(crate) mod validate;

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plugin_api::ffi::{
    DependencyExport, HostApi, HostExport, PluginCalls, PluginHeader, PluginVTable, StateExport,
    StateVTable, HEADER_SYMBOL,
};

use crate::error::LoadError;
use crate::plugin_info::PluginInfo;
use exports::Install;
use residency::UnloadStatus;
use shadow::{ShadowCopy, ShadowDir};

/// A loaded, validated plugin library whose entry points have not been called. Dropping it
/// closes the library, then deletes its shadow copy.
pub(crate) struct Library {
    info: PluginInfo,
    file: PathBuf,
    vtable: PluginVTable,
    state: Option<StateVTable>,
    install_host: Option<Install<HostApi>>,
    install_calls: Option<Install<PluginCalls>>,
    content_hash: u128,
    load_time: Duration,
    // Taken by `close` (explicitly, or from `Drop`): the library is closed before its file
    // is deleted.
    library: Option<libloading::Library>,
    shadow: Option<ShadowCopy>,
}

impl Library {
    /// Reads the file at `path` and opens it ([`open_bytes`](Self::open_bytes)).
    pub(crate) fn open(path: &Path, shadow: &ShadowDir) -> Result<Self, LoadError> {
        let started = Instant::now();
        let bytes = read(path)?;
        let mut library = Self::open_bytes(path, &bytes, shadow)?;
        library.load_time = started.elapsed();
        Ok(library)
    }

    /// Checks, copies, loads and validates `bytes`, the content of `path`.
    pub(crate) fn open_bytes(
        path: &Path,
        bytes: &[u8],
        shadow: &ShadowDir,
    ) -> Result<Self, LoadError> {
        let started = Instant::now();
        preflight::check_bytes(path, bytes)?;
        let copy = shadow.write(path, bytes)?;

        // SAFETY: loading runs the library's initialisers. The file passed the preflight: it is
        // a shared library for this platform that exports a plughost header of a compatible
        // plugin-api version. That is as much as can be known before running it.
        let library = unsafe { dlopen(copy.path()) }.map_err(|e| LoadError::Open {
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
        if let Some(module) = &dependencies {
            info.dependencies = module
                .requires
                .iter()
                .map(|d| metadata::requirement(path, d))
                .collect::<Result<_, _>>()?;
        }
        Ok(Library {
            info,
            file: path.to_owned(),
            vtable: module.vtable,
            state,
            install_host,
            install_calls: dependencies.map(|module| module.install),
            content_hash: content_hash(bytes),
            load_time: started.elapsed(),
            library: Some(library),
            shadow: Some(copy),
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

    /// Gives the plugin the host's tables, each only if the plugin exported a way to take it
    /// (plugin-api 1.2 and 1.3), with `identity` to pass back on every callback.
    ///
    /// # Safety
    ///
    /// `identity` must stay valid for as long as the library's code may run: until
    /// [`close`](Self::close) reports the library unmapped, or for ever if it stays mapped.
    pub(crate) unsafe fn install_callbacks(
        &self,
        host: &'static HostApi,
        calls: &'static PluginCalls,
        identity: *const c_void,
    ) {
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

    /// Closes the library, checks whether it left the address space, then deletes the shadow
    /// copy. Nothing the plugin created may be alive any more.
    pub(crate) fn close(mut self) -> UnloadStatus {
        self.close_now()
    }

    fn close_now(&mut self) -> UnloadStatus {
        let (Some(library), Some(shadow)) = (self.library.take(), self.shadow.take()) else {
            return UnloadStatus::Unknown; // closed already
        };
        if let Err(e) = library.close() {
            tracing::warn!("closing {} failed: {e}", shadow.path().display());
        }
        // Check before deleting the copy, while its path still names only this library.
        let status = match residency::is_mapped(shadow.path()) {
            Some(false) => UnloadStatus::Unmapped,
            Some(true) => UnloadStatus::StillMapped,
            None => UnloadStatus::Unknown,
        };
        drop(shadow);
        status
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        self.close_now();
    }
}

/// Reads a whole library file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
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
