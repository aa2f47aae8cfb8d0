//! A plugin library: checked, copied, loaded and validated, not yet initialised.
//!
//! [`PluginLibrary::open`] is the data path from a file to something callable:
//! read the bytes once, [`preflight`] them, write them to a
//! [`shadow`](crate::shadow) copy, `dlopen` the copy, check the header and abi_stable layout in
//! memory ([`validate`]), and copy the metadata out.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plugin_api::ffi::{
    DependencyExport, DependencyModule, HostApi, HostExport, PluginCalls, PluginHeader,
    PluginVTable, StateExport, StateVTable, DEPENDENCY_SYMBOL, HEADER_SYMBOL, HOST_SYMBOL,
    STATE_SYMBOL,
};

use crate::callbacks::{PluginIdentity, HOST_API, PLUGIN_CALLS};
use crate::metadata::Requirement;
use crate::registry::Slot;

use abi_stable::std_types::RSlice;
use plugin_api::ffi::Status;

use crate::dispatch::{call_error, with_output};
use crate::error::{CallError, LoadError};
use crate::mapping::{self, UnloadStatus};
use crate::metadata::PluginInfo;
use crate::shadow::{ShadowCopy, ShadowDir};
use crate::{preflight, validate};

/// A loaded, validated plugin library. Dropping it closes the library, then deletes its
/// shadow copy.
pub struct PluginLibrary {
    info: PluginInfo,
    file: PathBuf,
    vtable: PluginVTable,
    state: Option<StateVTable>,
    content_hash: u128,
    load_time: Duration,
    // Taken by `close` (explicitly, or from `Drop`): the library is closed before its file
    // is deleted and before the identity its callbacks refer to is freed.
    library: Option<libloading::Library>,
    shadow: Option<ShadowCopy>,
    identity: Option<Box<PluginIdentity>>,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("file", &self.file)
            .field("shadow", &self.shadow_path())
            .finish()
    }
}

impl PluginLibrary {
    /// Checks, copies, loads and validates the library at `path`. Runs no plugin code except
    /// the library's own constructors, and those only after the file passed the preflight.
    pub fn open(path: &Path, shadow: &ShadowDir) -> Result<Self, LoadError> {
        let started = Instant::now();
        let bytes = read(path)?;
        let mut library = Self::open_bytes(path, &bytes, shadow)?;
        library.load_time = started.elapsed();
        Ok(library)
    }

    /// Like [`open`](Self::open), for bytes already read from `path`.
    pub fn open_bytes(path: &Path, bytes: &[u8], shadow: &ShadowDir) -> Result<Self, LoadError> {
        let started = Instant::now();
        preflight::check(path, bytes)?;
        let copy = shadow.write(path, bytes)?;

        // SAFETY: loading runs the library's initialisers. The file passed the preflight: it is
        // a shared library for this platform that exports a plughost header of a compatible
        // plugin-api version. That is as much as can be known before running it.
        let library = unsafe { dlopen(copy.path()) }.map_err(|e| LoadError::Open {
            path: path.to_owned(),
            message: e.to_string(),
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
        let mut info = PluginInfo::from_ffi(
            path,
            &module.metadata,
            validate::to_semver(header.api_version),
        )?;
        let state = read_state_export(path, &library)?;
        // Both callback exports are found and checked before either is installed: once the
        // plugin holds a pointer to the identity, the identity must outlive the library's
        // code, so no refusal may come between installing and keeping it in `Self`.
        let install_host = read_host_export(path, &library)?;
        let (install_calls, requires) = read_dependency_export(path, &library)?;
        info.dependencies = requires;
        let identity = PluginIdentity::new(&info.name, &info.version);
        let plugin = (&*identity as *const PluginIdentity).cast();
        if let Some(install) = install_host {
            // SAFETY: the export's layout matches ours; `HOST_API` is a static and the identity
            // is kept until the library is closed (longer if it stays mapped).
            unsafe { install(&HOST_API, plugin) };
        }
        if let Some(install) = install_calls {
            // SAFETY: as above, with `PLUGIN_CALLS`.
            unsafe { install(&PLUGIN_CALLS, plugin) };
        }
        Ok(PluginLibrary {
            info,
            file: path.to_owned(),
            vtable: module.vtable,
            state,
            content_hash: content_hash(bytes),
            load_time: started.elapsed(),
            library: Some(library),
            shadow: Some(copy),
            identity: Some(identity),
        })
    }

    /// Who the plugin is.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The user's file it was loaded from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The private copy actually loaded.
    pub fn shadow_path(&self) -> &Path {
        self.shadow
            .as_ref()
            .map_or(Path::new(""), |shadow| shadow.path())
    }

    /// How long reading, checking, copying and loading took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// A hash of the file's content as loaded, to tell a real change from a touched file.
    pub fn content_hash(&self) -> u128 {
        self.content_hash
    }

    /// Lets the plugin call its dependencies, whose slots are `slots` (in service now). The
    /// host binds them once, before Init.
    pub(crate) fn bind_dependencies(&self, slots: Vec<std::sync::Arc<Slot>>) {
        if let Some(identity) = &self.identity {
            identity.bind_dependencies(slots);
        }
    }

    /// Whether the plugin can hand its state to its next version (plugin-api 1.1).
    pub fn supports_state_handover(&self) -> bool {
        self.state.is_some()
    }

    /// The entry points. Valid while `self` lives.
    pub(crate) fn vtable(&self) -> &PluginVTable {
        &self.vtable
    }

    /// The state hand-over entry points, if exported. Valid while `self` lives.
    pub(crate) fn state_vtable(&self) -> Option<&StateVTable> {
        self.state.as_ref()
    }

    /// Asks the plugin whether `config` (JSON; empty means `{}`) is a configuration its Init
    /// would accept, without creating an instance. `Ok` also when the plugin cannot tell
    /// (it exports no `validate_config`).
    pub fn validate_config(&self, config: &[u8]) -> Result<(), CallError> {
        let Some(validate) = self.vtable.validate_config else {
            return Ok(());
        };
        let free = self.vtable.free_buffer;
        let (status, message) = crate::instance::on_own_thread(|| {
            let mut message = Vec::new();
            // SAFETY: the entry points belong to this loaded library; `config` outlives the
            // call.
            let status = unsafe {
                with_output(&mut message, free, |out| {
                    validate(RSlice::from_slice(config), out)
                })
            };
            (status, message)
        });
        if status == Status::OK {
            Ok(())
        } else {
            Err(call_error(
                &self.info.name.as_str().into(),
                status,
                &message,
            ))
        }
    }

    /// Closes the library, checks whether it left the address space, then deletes the shadow
    /// copy. Nothing the plugin created may be alive any more (the instance is shut down).
    pub fn close(mut self) -> UnloadStatus {
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
        let status = match mapping::is_mapped(shadow.path()) {
            Some(false) => UnloadStatus::Unmapped,
            Some(true) => UnloadStatus::StillMapped,
            None => UnloadStatus::Unknown,
        };
        drop(shadow);
        let identity = self.identity.take();
        if status == UnloadStatus::Unmapped {
            drop(identity);
        } else {
            // Code still mapped (a pending thread-local destructor) may yet log through it.
            std::mem::forget(identity);
        }
        status
    }
}

impl Drop for PluginLibrary {
    fn drop(&mut self) {
        self.close_now();
    }
}

/// Reads a whole library file.
pub fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|error| LoadError::Read {
        path: path.to_owned(),
        error,
    })
}

/// The hash [`PluginLibrary::content_hash`] reports for these bytes: XXH3-128, fast enough
/// (several GB/s) not to matter next to copying the file.
pub fn content_hash(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// How an export gives the plugin a host table and the identity to pass back with it.
type Install<T> = unsafe extern "C" fn(table: &'static T, plugin: *const c_void);

/// Finds the optional host-callbacks export (plugin-api 1.2) and checks its layout; returns
/// how to give the plugin the host's callbacks. Absent is fine (older plugins).
fn read_host_export(
    path: &Path,
    library: &libloading::Library,
) -> Result<Option<Install<HostApi>>, LoadError> {
    // SAFETY: plugin-api declares this symbol as a `HostExport` static; we take its address.
    let symbol = unsafe { library.get::<*const HostExport>(format!("{HOST_SYMBOL}\0").as_bytes()) };
    let Ok(symbol) = symbol else {
        return Ok(None);
    };
    // SAFETY: a `'static` in the loaded library; `install` is only used after the layout check.
    let export = unsafe { &**symbol };
    validate::check_export_layout(path, "host callbacks", HOST_API_LAYOUT, export.layout)?;
    Ok(Some(export.install))
}

/// Finds the optional dependency export (plugin-api 1.3), checks its layout and reads the
/// requirements; returns how to give the plugin the call table, and the requirements. Absent
/// means no dependencies.
fn read_dependency_export(
    path: &Path,
    library: &libloading::Library,
) -> Result<(Option<Install<PluginCalls>>, Vec<Requirement>), LoadError> {
    // SAFETY: plugin-api declares this symbol as a `DependencyExport` static; we take its
    // address.
    let symbol = unsafe {
        library.get::<*const DependencyExport>(format!("{DEPENDENCY_SYMBOL}\0").as_bytes())
    };
    let Ok(symbol) = symbol else {
        return Ok((None, Vec::new()));
    };
    // SAFETY: a `'static` in the loaded library; `module` is read after the layout check.
    let export = unsafe { &**symbol };
    validate::check_export_layout(
        path,
        "dependencies",
        <DependencyModule as abi_stable::StableAbi>::LAYOUT,
        export.layout,
    )?;
    let requires = export
        .module
        .requires
        .iter()
        .map(|d| Requirement::from_ffi(path, d))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((Some(export.module.install), requires))
}

const HOST_API_LAYOUT: &abi_stable::type_layout::TypeLayout =
    <plugin_api::ffi::HostApi as abi_stable::StableAbi>::LAYOUT;

/// Finds the optional state hand-over export and checks its layout on its own. Absent is fine
/// (plugins built against plugin-api 1.0); present with another layout is a refusal.
fn read_state_export(
    path: &Path,
    library: &libloading::Library,
) -> Result<Option<StateVTable>, LoadError> {
    // SAFETY: plugin-api declares this symbol as a `StateExport` static; we take its address.
    let symbol =
        unsafe { library.get::<*const StateExport>(format!("{STATE_SYMBOL}\0").as_bytes()) };
    let Ok(symbol) = symbol else {
        return Ok(None);
    };
    // SAFETY: the symbol is a `'static` in the loaded library (alive while `library` is); its
    // two fields are references whose targets we only read after the layout check.
    let export = unsafe { &**symbol };
    validate::check_export_layout(
        path,
        "state hand-over",
        <StateVTable as abi_stable::StableAbi>::LAYOUT,
        export.layout,
    )?;
    Ok(Some(*export.vtable))
}

/// Opens a library with the platform's loader.
///
/// On unix: `RTLD_NOW`, so a missing symbol fails here rather than at the first call, and
/// `RTLD_LOCAL`, so one plugin's symbols never resolve another's. On Windows: `LoadLibraryExW`
/// with default flags.
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
