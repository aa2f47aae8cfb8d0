//! The optional exports added after plugin-api 1.0: state hand-over (1.1), host callbacks
//! (1.2), dependencies (1.3). Each is its own symbol carrying abi_stable's layout of its table,
//! checked on its own, so a plugin built before the export existed still loads and one built
//! with another layout of it is refused (docs/design.md, "Layout checks and the abi_stable
//! pin"). One reader serves them all: [`read`].

use std::ffi::c_void;
use std::path::Path;

use abi_stable::type_layout::TypeLayout;
use abi_stable::StableAbi;
use plugin_api::ffi::{
    DependencyExport, DependencyModule, HostApi, HostExport, StateExport, StateVTable,
    DEPENDENCY_SYMBOL, HOST_SYMBOL, STATE_SYMBOL,
};

use super::validate;
use crate::error::LoadError;

/// How an export gives the plugin a host table and the identity to pass back with it.
pub(crate) type Install<T> = unsafe extern "C" fn(table: &'static T, plugin: *const c_void);

/// An optional export: a `#[repr(C)]` static in the plugin that starts with the layout of
/// what it carries.
pub(crate) trait OptionalExport: Sized + 'static {
    /// Its symbol.
    const SYMBOL: &'static str;
    /// What it is, for messages: "state hand-over".
    const WHAT: &'static str;
    /// The host's layout of the table it carries.
    const EXPECTED: &'static TypeLayout;
    /// What the host keeps of it once its layout is checked.
    type Payload: Copy;
    /// The plugin's layout of the table it carries.
    fn layout(&self) -> &'static TypeLayout;
    /// What the host keeps. Only called after the layout check passed.
    fn payload(&self) -> Self::Payload;
}

impl OptionalExport for StateExport {
    const SYMBOL: &'static str = STATE_SYMBOL;
    const WHAT: &'static str = "state hand-over";
    const EXPECTED: &'static TypeLayout = <StateVTable as StableAbi>::LAYOUT;
    type Payload = StateVTable;
    fn layout(&self) -> &'static TypeLayout {
        self.layout
    }
    fn payload(&self) -> StateVTable {
        *self.vtable
    }
}

impl OptionalExport for HostExport {
    const SYMBOL: &'static str = HOST_SYMBOL;
    const WHAT: &'static str = "host callbacks";
    const EXPECTED: &'static TypeLayout = <HostApi as StableAbi>::LAYOUT;
    type Payload = Install<HostApi>;
    fn layout(&self) -> &'static TypeLayout {
        self.layout
    }
    fn payload(&self) -> Install<HostApi> {
        self.install
    }
}

impl OptionalExport for DependencyExport {
    const SYMBOL: &'static str = DEPENDENCY_SYMBOL;
    const WHAT: &'static str = "dependencies";
    const EXPECTED: &'static TypeLayout = <DependencyModule as StableAbi>::LAYOUT;
    type Payload = DependencyModule;
    fn layout(&self) -> &'static TypeLayout {
        self.layout
    }
    fn payload(&self) -> DependencyModule {
        *self.module
    }
}

/// Finds export `E` in `library` and checks its layout. Absent is `Ok(None)` (a plugin built
/// before it existed); present with another layout is a refusal naming the export.
///
/// The payload may point into the library: use it only while the library stays loaded.
pub(crate) fn read<E: OptionalExport>(
    path: &Path,
    library: &libloading::Library,
) -> Result<Option<E::Payload>, LoadError> {
    // SAFETY: plugin-api declares `E::SYMBOL` as a static of type `E`; we take its address.
    let symbol = unsafe { library.get::<*const E>(format!("{}\0", E::SYMBOL).as_bytes()) };
    let Ok(symbol) = symbol else {
        return Ok(None);
    };
    // SAFETY: the symbol is a static in the loaded library, alive while `library` is. Its
    // first field, the layout reference, is read before anything else, and the rest only
    // after the layout check says it is ours.
    let export = unsafe { &**symbol };
    validate::check_export_layout(path, E::WHAT, E::EXPECTED, export.layout())?;
    Ok(Some(export.payload()))
}
