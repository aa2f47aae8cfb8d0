//! A running plugin: a validated library plus the instance its Init created. Shutdown runs
//! exactly once, explicitly or when the last reference goes.

use std::ffi::c_void;
use std::sync::Arc;

use abi_stable::std_types::RSlice;
use plugin_api::ffi::Status;

use crate::dispatch::{call_error, with_output};
use crate::error::{CallError, LoadError};
use crate::library::PluginLibrary;

/// An initialised plugin. Dropping it shuts the instance down, then unloads the library.
pub struct RunningPlugin {
    name: Arc<str>,
    instance: *mut c_void,
    library: PluginLibrary,
}

// SAFETY: `instance` belongs to the plugin, which by contract (`Plugin: Send + Sync`) may be
// called from any thread and shut down from any thread once no call is in flight. Shutdown
// needs `&mut self` or ownership, which excludes concurrent calls.
unsafe impl Send for RunningPlugin {}
// SAFETY: shared access only ever reaches `execute`/`health`, which may run concurrently.
unsafe impl Sync for RunningPlugin {}

impl RunningPlugin {
    /// Calls the plugin's Init with JSON configuration bytes.
    pub fn start(library: PluginLibrary, config: &[u8]) -> Result<Self, LoadError> {
        let name: Arc<str> = library.info().name.as_str().into();
        let vtable = *library.vtable();
        let mut instance = std::ptr::null_mut();
        let mut message = Vec::new();
        // SAFETY: the vtable belongs to `library`, loaded and validated; `config` outlives the
        // call.
        let status = unsafe {
            with_output(&mut message, vtable.free_buffer, |out| {
                (vtable.init)(RSlice::from_slice(config), &mut instance, out)
            })
        };
        let failure = if status != Status::OK {
            Some(call_error(&name, status, &message))
        } else if instance.is_null() {
            Some(CallError::Failed {
                plugin: name.clone(),
                message: "init reported success but created no instance".into(),
            })
        } else {
            None
        };
        if let Some(cause) = failure {
            return Err(LoadError::Init {
                path: library.file().to_owned(),
                name: name.to_string(),
                cause,
            });
        }
        Ok(RunningPlugin {
            name,
            instance,
            library,
        })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn instance(&self) -> *const c_void {
        self.instance
    }

    /// The library it runs from.
    pub fn library(&self) -> &PluginLibrary {
        &self.library
    }

    /// Calls Shutdown and unloads the library. The instance is freed whatever Shutdown says.
    pub fn shutdown(mut self) -> Result<(), CallError> {
        self.shutdown_instance()
        // `self` drops here: the library is closed and its shadow copy deleted.
    }

    fn shutdown_instance(&mut self) -> Result<(), CallError> {
        let instance = std::mem::replace(&mut self.instance, std::ptr::null_mut());
        if instance.is_null() {
            return Ok(());
        }
        let vtable = *self.library.vtable();
        let mut message = Vec::new();
        // SAFETY: `instance` came from this library's Init and is passed to Shutdown once
        // (it was just replaced by null); `&mut self` means no call is in flight.
        let status = unsafe {
            with_output(&mut message, vtable.free_buffer, |out| {
                (vtable.shutdown)(instance, out)
            })
        };
        if status == Status::OK {
            Ok(())
        } else {
            Err(call_error(&self.name, status, &message))
        }
    }
}

impl Drop for RunningPlugin {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown_instance() {
            tracing::warn!(plugin = %self.name, "shutdown failed: {e}");
        }
    }
}
