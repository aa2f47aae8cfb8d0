//! The optional exports added after plugin-api 1.0: state hand-over (1.1), host callbacks
//! (1.2), dependencies (1.3), events (1.4). Each is its own symbol carrying abi_stable's layout of its table,
//! checked on its own, so a plugin built before the export existed still loads and one built
//! with another layout of it is refused (docs/design.md, "Layout checks and the abi_stable
//! pin"). One reader serves them all: [`read`].

use std::ffi::c_void;
use std::path::Path;

use abi_stable::type_layout::TypeLayout;
use abi_stable::StableAbi;
use plugin_api::ffi::{
    DependencyExport, DependencyModule, EventExport, EventModule, HostApi, HostExport, StateExport,
    StateVTable, DEPENDENCY_SYMBOL, EVENT_SYMBOL, HOST_SYMBOL, STATE_SYMBOL,
};

use super::validate;
use crate::error::LoadError;

/// How an export gives the plugin a host table and the identity to pass back with it.
pub(crate) type Install<T> = unsafe extern "C" fn(table: &'static T, plugin: *const c_void);

/// An optional export: a `#[repr(C)]` static in the plugin that starts with the layout of
/// what it carries.
///
/// # Safety
///
/// Implemented only for the export types plugin-api declares: `SYMBOL` names a static of type
/// `Self` in every plugin that has the export, `layout_of` reads nothing but its `layout`
/// field, and `EXPECTED` is the host's layout of the table that field describes.
pub(crate) unsafe trait OptionalExport: Sized + 'static {
    /// Its symbol.
    const SYMBOL: &'static str;
    /// What it is, for messages: "state hand-over".
    const WHAT: &'static str;
    /// The host's layout of the table it carries.
    const EXPECTED: &'static TypeLayout;
    /// What the host keeps of it once its layout is checked.
    type Payload: Copy;
    /// The plugin's layout of the table, read through the raw pointer: nothing else of the
    /// export is trusted before the check.
    ///
    /// # Safety
    ///
    /// `this` points to a live export of this type.
    unsafe fn layout_of(this: *const Self) -> &'static TypeLayout;
    /// What the host keeps. Only called after the layout check passed.
    fn payload(&self) -> Self::Payload;
}

/// Implements [`OptionalExport`] for one of plugin-api's export types.
macro_rules! optional_export {
    ($export:ty, $symbol:expr, $what:literal, $table:ty, $payload:ty, |$e:ident| $get:expr) => {
        // SAFETY: plugin-api declares `$symbol` as a `#[repr(C)]` static of this type, whose
        // `layout` field is abi_stable's layout of `$table` as the plugin was built with it.
        unsafe impl OptionalExport for $export {
            const SYMBOL: &'static str = $symbol;
            const WHAT: &'static str = $what;
            const EXPECTED: &'static TypeLayout = <$table as StableAbi>::LAYOUT;
            type Payload = $payload;
            unsafe fn layout_of(this: *const Self) -> &'static TypeLayout {
                // SAFETY: `this` points to a live export (the caller's promise); only the
                // `layout` field is read, without a reference to the rest.
                unsafe { std::ptr::addr_of!((*this).layout).read() }
            }
            fn payload(&self) -> $payload {
                let $e = self;
                $get
            }
        }
    };
}

optional_export!(
    StateExport,
    STATE_SYMBOL,
    "state hand-over",
    StateVTable,
    StateVTable,
    |e| *e.vtable
);
optional_export!(
    HostExport,
    HOST_SYMBOL,
    "host callbacks",
    HostApi,
    Install<HostApi>,
    |e| e.install
);
optional_export!(
    DependencyExport,
    DEPENDENCY_SYMBOL,
    "dependencies",
    DependencyModule,
    DependencyModule,
    |e| *e.module
);

optional_export!(
    EventExport,
    EVENT_SYMBOL,
    "events",
    EventModule,
    EventModule,
    |e| *e.module
);

/// Finds export `E` in `library` and checks its layout. Absent is `Ok(None)` (a plugin built
/// before it existed); present with another layout is a refusal naming the export.
///
/// The payload may point into the library: use it only while the library stays loaded.
pub(crate) fn read<E: OptionalExport>(
    path: &Path,
    library: &libloading::Library,
) -> Result<Option<E::Payload>, LoadError> {
    // SAFETY: `E::SYMBOL` names a static of type `E` (the trait's contract); we take its
    // address, not its value.
    let symbol = unsafe { library.get::<*const E>(format!("{}\0", E::SYMBOL).as_bytes()) };
    let Ok(symbol) = symbol else {
        return Ok(None);
    };
    let export: *const E = *symbol;
    // SAFETY: the static lives while `library` is loaded; only its layout field is read.
    let found = unsafe { E::layout_of(export) };
    validate::check_export_layout(path, E::WHAT, E::EXPECTED, found)?;
    // SAFETY: as above, and the layout check says the rest of it is laid out as ours.
    Ok(Some(unsafe { &*export }.payload()))
}
