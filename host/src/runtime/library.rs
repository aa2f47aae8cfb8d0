//! [`PluginLibrary`]: a library the [`loader`](crate::loader) opened and validated, with the
//! host's callbacks installed, ready to be started (or asked about a configuration).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use abi_stable::std_types::RSlice;
use plugin_api::ffi::{PluginVTable, StateVTable, Status};

use super::abi::{call_error, on_own_thread, with_output};
use super::callbacks::{PluginIdentity, EVENT_API, HOST_API, PLUGIN_CALLS};
use super::emitting::Emitting;
use super::registry::Slot;
use super::worker::Supervisor;
use crate::error::CallError;
use crate::loader::residency::UnloadStatus;
use crate::loader::{Closed, Library};
use crate::plugin_info::PluginInfo;

/// A loaded and validated plugin library that has not been started: what
/// [`Host::open`](crate::Host::open) returns. Its metadata can be read and its plugin asked
/// whether it would accept a configuration, without creating an instance. Dropping it closes
/// the library and deletes its private copy.
pub struct PluginLibrary {
    /// Set for a plugin isolated in a worker process: then `library` and `identity` are
    /// `None` (nothing of it is loaded here).
    worker: Option<Arc<Supervisor>>,
    // Declared first, so dropped first: the library is closed before the identity its
    // callbacks refer to is freed (`close` decides whether that is safe).
    library: Option<Library>,
    identity: Option<Box<PluginIdentity>>,
    /// Set when plugin code was given up on while still running.
    stuck: AtomicBool,
    /// Its right to publish, bound before Init.
    events: OnceLock<Arc<Emitting>>,
    /// How long reading, checking and loading took.
    load_time: Duration,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("name", &self.info().name)
            .field("version", &self.info().version)
            .field("file", &self.file())
            .field("shadow", &self.shadow_path())
            .finish()
    }
}

impl PluginLibrary {
    /// Gives `library`'s plugin the host's callbacks (logging, calls to its dependencies).
    /// Every export was found and checked when the library was opened, so nothing can refuse
    /// the library between installing the identity and keeping it here.
    pub(crate) fn new(library: Library) -> Self {
        let info = library.info();
        let identity = PluginIdentity::new(&info.name, &info.version);
        let pointer = (&*identity as *const PluginIdentity).cast();
        // SAFETY: the identity is kept with the library and freed only after `close` found the
        // library unmapped (forgotten otherwise), so it outlives the library's code.
        unsafe { library.install_callbacks(&HOST_API, &PLUGIN_CALLS, &EVENT_API, pointer) };
        PluginLibrary {
            worker: None,
            load_time: library.load_time(),
            library: Some(library),
            identity: Some(identity),
            stuck: AtomicBool::new(false),
            events: OnceLock::new(),
        }
    }

    /// A library loaded in the worker process `worker` supervises; `load_time`: how long
    /// checking and loading it took.
    #[cfg_attr(not(isolation), allow(dead_code))]
    pub(crate) fn isolated(worker: Arc<Supervisor>, load_time: Duration) -> Self {
        PluginLibrary {
            worker: Some(worker),
            library: None,
            identity: None,
            stuck: AtomicBool::new(false),
            events: OnceLock::new(),
            load_time,
        }
    }

    /// Records how long checking and loading it took, reading the file included.
    pub(crate) fn set_load_time(&mut self, took: Duration) {
        self.load_time = took;
    }

    /// The supervisor of its worker process, if the plugin is isolated.
    pub(crate) fn worker(&self) -> Option<&Arc<Supervisor>> {
        self.worker.as_ref()
    }

    fn library(&self) -> &Library {
        self.library
            .as_ref()
            .expect("the library is only taken when it is closed")
    }

    /// Who the plugin is.
    pub fn info(&self) -> &PluginInfo {
        match &self.worker {
            Some(worker) => worker.info(),
            None => self.library().info(),
        }
    }

    /// The file it was loaded from.
    pub fn file(&self) -> &Path {
        match &self.worker {
            Some(worker) => worker.file(),
            None => self.library().file(),
        }
    }

    /// Whether it runs in a worker process of its own (isolation `"process"`).
    pub fn is_isolated(&self) -> bool {
        self.worker.is_some()
    }

    /// The private copy actually loaded.
    pub(crate) fn shadow_path(&self) -> &Path {
        match &self.worker {
            Some(worker) => worker.copy(),
            None => self.library().shadow_path(),
        }
    }

    /// How long reading, checking, copying and loading took.
    pub(crate) fn load_time(&self) -> Duration {
        self.load_time
    }

    /// A hash of the file's content as loaded.
    pub(crate) fn content_hash(&self) -> u128 {
        match &self.worker {
            Some(worker) => worker.content_hash(),
            None => self.library().content_hash(),
        }
    }

    /// The entry points. Valid while `self` lives.
    pub(crate) fn vtable(&self) -> &PluginVTable {
        self.library().vtable()
    }

    /// The state hand-over entry points, if exported. Valid while `self` lives.
    pub(crate) fn state_vtable(&self) -> Option<&StateVTable> {
        self.library().state_vtable()
    }

    /// Lets the plugin call its dependencies, whose slots are `slots` (in service now). The
    /// host binds them once, before Init.
    pub(crate) fn bind_dependencies(&self, slots: Vec<Arc<Slot>>) {
        if let Some(worker) = &self.worker {
            worker.bind_dependencies(slots);
        } else if let Some(identity) = &self.identity {
            identity.bind_dependencies(slots);
        }
    }

    /// Lets the plugin publish as `emitting` allows; once, before Init.
    pub(crate) fn bind_events(&self, emitting: Arc<Emitting>) {
        if let Some(worker) = &self.worker {
            worker.bind_events(emitting.clone());
        } else if let Some(identity) = &self.identity {
            identity.bind_events(emitting.clone());
        }
        let _ = self.events.set(emitting);
    }

    /// Its right to publish, once bound.
    pub(crate) fn emitting(&self) -> Option<&Arc<Emitting>> {
        self.events.get()
    }

    /// The event entry points, if exported (in this process only). Valid while `self` lives.
    pub(crate) fn event_module(&self) -> Option<&plugin_api::ffi::EventModule> {
        self.library.as_ref().and_then(Library::event_module)
    }

    /// Asks the plugin whether `config` (JSON; empty means `{}`) is a configuration its Init
    /// would accept, without creating an instance. `Ok` also when the plugin cannot tell (it
    /// exports no `validate_config`).
    /// Gives up after `limit`: the library is then left loaded for good ([`mark_stuck`]).
    ///
    /// [`mark_stuck`]: Self::mark_stuck
    pub(crate) fn validate_config(&self, config: &[u8], limit: Duration) -> Result<(), CallError> {
        if let Some(worker) = &self.worker {
            // A worker that overruns the limit is killed, not left running.
            return worker.validate(config, limit);
        }
        let vtable = self.vtable();
        let Some(validate) = vtable.validate_config else {
            return Ok(());
        };
        let free = vtable.free_buffer;
        let config = config.to_vec();
        let answer = on_own_thread(limit, move || {
            let mut message = Vec::new();
            // SAFETY: the entry points belong to this library, which stays loaded while they
            // run (for ever if they never return: `mark_stuck`); `config` is owned here.
            let status = unsafe {
                with_output(&mut message, free, |out| {
                    validate(RSlice::from_slice(&config), out)
                })
            };
            (status, message)
        });
        let Some((status, message)) = answer else {
            return Err(self.stuck_in("validate_config", limit));
        };
        if status == Status::OK {
            Ok(())
        } else {
            Err(call_error(
                &self.info().name.as_str().into(),
                status,
                &message,
            ))
        }
    }

    /// Records that plugin code of this library is still running on a thread the host gave up
    /// on: from now on the library is never closed (unmapping running code would crash the
    /// process) and its instance never shut down.
    pub(crate) fn mark_stuck(&self) {
        self.stuck.store(true, Ordering::Relaxed);
    }

    /// Whether [`mark_stuck`](Self::mark_stuck) was called.
    pub(crate) fn is_stuck(&self) -> bool {
        self.stuck.load(Ordering::Relaxed)
    }

    /// Marks the library stuck in `entry` and says so: the error of a bounded call that did not
    /// return within `limit`.
    pub(crate) fn stuck_in(&self, entry: &'static str, limit: Duration) -> CallError {
        self.mark_stuck();
        CallError::Stuck {
            plugin: self.info().name.as_str().into(),
            entry,
            limit,
        }
    }

    /// Closes the library, checks whether it left the address space, then deletes the private
    /// copy (handed back instead while the library is still in memory). Nothing the plugin
    /// created may be alive any more (the instance is shut down). A stuck library is left
    /// loaded instead ([`UnloadStatus::LeftLoaded`]).
    pub(crate) fn close(mut self) -> Closed {
        self.close_now()
    }

    fn close_now(&mut self) -> Closed {
        let status = |status| Closed {
            status,
            pinned: None,
        };
        if let Some(worker) = self.worker.take() {
            // Never started here, or shut down already: its process goes.
            worker.kill();
            return status(UnloadStatus::Exited);
        }
        let Some(library) = self.library.take() else {
            return status(UnloadStatus::Unknown); // closed already
        };
        if self.is_stuck() {
            // Its code may run at any time: the library, its copy and the identity stay.
            std::mem::forget(library);
            std::mem::forget(self.identity.take());
            return status(UnloadStatus::LeftLoaded);
        }
        let closed = library.close();
        let identity = self.identity.take();
        if closed.status == UnloadStatus::Unmapped {
            drop(identity);
        } else {
            // Code still mapped (a pending thread-local destructor) may yet log through it.
            std::mem::forget(identity);
        }
        closed
    }
}

impl Drop for PluginLibrary {
    fn drop(&mut self) {
        // A copy of a library still in memory keeps itself open (`ShadowCopy`'s drop).
        let _ = self.close_now();
    }
}
