//! A running version of a plugin: a validated library plus the instance its Init created.
//! Shutdown runs exactly once: when the version is retired, or when it is dropped.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi_stable::std_types::RSlice;
use plugin_api::ffi::{health_level, CallContext, OutBuffer, Status};

use super::abi::{call_error, on_own_thread, with_output, FreeFn, PluginThread};
use super::handle::PluginHealth;
use super::library::PluginLibrary;
use super::worker::Supervisor;
use crate::error::{CallError, LoadError};
use crate::loader::residency::UnloadStatus;

pub(crate) type ExecuteFn =
    unsafe extern "C" fn(*const c_void, &CallContext, RSlice<'_, u8>, &mut OutBuffer) -> Status;

/// An initialised plugin version. Dropping it shuts the instance down, then unloads the
/// library; [`RunningPlugin::retire`] does the same and reports how it went.
pub(crate) struct RunningPlugin {
    pub(super) name: Arc<str>,
    pub(crate) callee: Callee,
    config: Vec<u8>,
    pub(super) library: Option<PluginLibrary>,
    limits: Limits,
    /// Its event source's `start`, running or returned, until the source is stopped.
    pub(super) source: Mutex<Option<SourceRun>>,
}

/// An event source's `start` on its thread: its status and message once it returns.
pub(super) type SourceRun = PluginThread<(Status, Vec<u8>)>;

/// Where a version's calls go.
pub(crate) enum Callee {
    /// Into the library loaded in this process. Copied out of the vtable so a call reads
    /// them from the version it already holds.
    Here {
        instance: *mut c_void,
        execute: ExecuteFn,
        free_buffer: FreeFn,
    },
    /// Into the library loaded in a worker process.
    Worker(Arc<Supervisor>),
}

/// How long the host waits for the entry points it runs itself before giving up on them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Init (and Init with a previous version's state).
    pub(crate) init: Duration,
    /// Shutdown.
    pub(crate) shutdown: Duration,
    /// validate_config and save_state.
    pub(crate) check: Duration,
}

// SAFETY: `instance` belongs to the plugin, which by contract (`Plugin: Send + Sync`) may be
// called from any thread and shut down from any thread once no call is in flight. Shutdown
// needs `&mut self` or ownership, which excludes concurrent calls.
unsafe impl Send for RunningPlugin {}
// SAFETY: shared access only ever reaches `execute`/`health`/`save_state`, which may run
// concurrently.
unsafe impl Sync for RunningPlugin {}

/// What retiring a version did.
#[derive(Debug)]
pub(crate) struct Retired {
    /// What Shutdown reported.
    pub(crate) shutdown: Result<(), CallError>,
    /// Whether the library left the address space.
    pub(crate) unload: UnloadStatus,
    /// The private copy of a library still in memory, to keep while it is
    /// ([`Closed::pinned`](crate::loader::Closed::pinned)).
    pub(crate) pinned: Option<crate::loader::ShadowCopy>,
}

impl RunningPlugin {
    /// Calls the plugin's Init with JSON configuration bytes and, if `state` is given and the
    /// plugin supports it, the state its previous version handed over.
    ///
    /// Init is given up on after `limits.init`: its library is then left loaded for good.
    pub(crate) fn start(
        library: PluginLibrary,
        config: &[u8],
        state: Option<&[u8]>,
        limits: Limits,
    ) -> Result<Self, LoadError> {
        let name: Arc<str> = library.info().name.as_str().into();
        if let Some(worker) = library.worker() {
            let worker = worker.clone();
            worker
                .init(config, state)
                .map_err(|cause| LoadError::Init {
                    path: library.file().to_owned(),
                    name: name.to_string(),
                    cause,
                })?;
            return Ok(RunningPlugin {
                name,
                callee: Callee::Worker(worker),
                config: config.to_vec(),
                library: Some(library),
                limits,
                source: Mutex::new(None),
            });
        }
        let init = init_call(&library, config, state);
        let Some((instance, status, message)) = on_own_thread(limits.init, init) else {
            return Err(LoadError::Init {
                path: library.file().to_owned(),
                name: name.to_string(),
                cause: library.stuck_in("init", limits.init),
            });
        };
        let failure = if status != Status::OK {
            Some(call_error(&name, status, &message))
        } else if instance.0.is_null() {
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
        let vtable = *library.vtable();
        Ok(RunningPlugin {
            name,
            callee: Callee::Here {
                instance: instance.0,
                execute: vtable.execute,
                free_buffer: vtable.free_buffer,
            },
            config: config.to_vec(),
            library: Some(library),
            limits,
            source: Mutex::new(None),
        })
    }

    /// The plugin's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// The process id of its worker, if it is isolated and a worker runs.
    pub(crate) fn worker_pid(&self) -> Option<u32> {
        self.worker().and_then(|worker| worker.status().pid)
    }

    /// Whether it is isolated and failed: it crashed too often and is not restarted.
    pub(crate) fn worker_failed(&self) -> bool {
        self.worker()
            .is_some_and(|worker| worker.status().state == "failed")
    }

    /// The supervisor of its worker process, if it is isolated.
    pub(crate) fn worker(&self) -> Option<&Arc<Supervisor>> {
        match &self.callee {
            Callee::Worker(worker) => Some(worker),
            Callee::Here { .. } => None,
        }
    }

    /// The configuration its Init received (JSON); a reload Inits the next version with it.
    pub(crate) fn config(&self) -> &[u8] {
        &self.config
    }

    /// The library it runs from.
    pub(crate) fn library(&self) -> &PluginLibrary {
        self.library
            .as_ref()
            .expect("the library is only taken when the version is retired")
    }

    /// The state to hand to the next version: `None` if the plugin does not take part in state
    /// hand-over or has nothing to hand over.
    pub(crate) fn save_state(&self) -> Result<Option<Vec<u8>>, CallError> {
        let (instance, free) = match &self.callee {
            Callee::Worker(worker) => return worker.save_state(),
            Callee::Here {
                instance,
                free_buffer,
                ..
            } => (*instance, *free_buffer),
        };
        let Some(state) = self.library().state_vtable() else {
            return Ok(None);
        };
        let save = state.save;
        let instance = InstancePtr(instance);
        // On a thread of its own, like Init and Shutdown: the watcher thread that reloads is
        // long-lived, and a thread-local destructor registered on it would pin the old library.
        let answer = on_own_thread(self.limits.check, move || {
            let instance = instance;
            let mut bytes = Vec::new();
            // SAFETY: the state vtable belongs to this version's library and `instance` is
            // live: `&self` keeps the version, and if the call never returns the version is
            // marked stuck, so it is never shut down or closed.
            let status = unsafe { with_output(&mut bytes, free, |out| save(instance.0, out)) };
            (status, bytes)
        });
        let Some((status, bytes)) = answer else {
            return Err(self.library().stuck_in("save_state", self.limits.check));
        };
        if status != Status::OK {
            return Err(call_error(&self.name, status, &bytes));
        }
        Ok((!bytes.is_empty()).then_some(bytes))
    }

    /// Ends the calls in flight, if it can: an isolated version's worker is killed (they fail
    /// at once with [`CallError::Crashed`]); code running in this process cannot be stopped.
    /// Whether it could.
    pub(crate) fn stop_calls(&self) -> bool {
        match &self.callee {
            Callee::Worker(worker) => {
                worker.kill();
                true
            }
            Callee::Here { .. } => false,
        }
    }

    /// How long its Shutdown may take.
    pub(crate) fn shutdown_limit(&self) -> Duration {
        self.limits.shutdown
    }

    /// Shuts the instance down, closes the library, deletes its shadow copy and checks whether
    /// it left the address space. The instance is freed whatever Shutdown says. A version with
    /// plugin code still running ([`PluginLibrary::mark_stuck`]), or whose Shutdown does not
    /// return within `limit`, is left loaded instead.
    pub(crate) fn retire_within(mut self, limit: Duration) -> Retired {
        self.limits.shutdown = limit;
        let shutdown = self.shutdown_instance();
        let closed = self.library.take().expect("retired once").close();
        Retired {
            shutdown,
            unload: closed.status,
            pinned: closed.pinned,
        }
    }

    fn shutdown_instance(&mut self) -> Result<(), CallError> {
        // A source's `start` may still use the instance: it ends first, within the same
        // time as Shutdown (which gets what is left, and a moment at least).
        let deadline = Instant::now() + self.limits.shutdown;
        if let Err(e) = self.stop_source(self.limits.shutdown) {
            tracing::warn!(plugin = %self.name, "event source: {e}");
        }
        // Whole milliseconds (rounded up), for the messages that name it.
        let left = deadline.saturating_duration_since(Instant::now());
        self.limits.shutdown = Duration::from_millis(left.as_nanos().div_ceil(1_000_000) as u64)
            .max(Duration::from_millis(100));
        let instance = match &mut self.callee {
            Callee::Worker(worker) => return worker.shutdown(self.limits.shutdown),
            Callee::Here { instance, .. } => instance,
        };
        if self.library.as_ref().is_some_and(PluginLibrary::is_stuck) {
            // A thread is still inside the instance: freeing it would pull the floor from
            // under that code.
            return Ok(());
        }
        let instance = std::mem::replace(instance, std::ptr::null_mut());
        if instance.is_null() {
            return Ok(());
        }
        let vtable = *self.library().vtable();
        let instance = InstancePtr(instance);
        let limit = self.limits.shutdown;
        let answer = on_own_thread(limit, move || {
            let instance = instance;
            let mut message = Vec::new();
            // SAFETY: `instance` came from this library's Init and is passed to Shutdown once
            // (it was just replaced by null); `&mut self` means no call is in flight.
            let status = unsafe {
                with_output(&mut message, vtable.free_buffer, |out| {
                    (vtable.shutdown)(instance.0, out)
                })
            };
            (status, message)
        });
        let Some((status, message)) = answer else {
            return Err(self.library().stuck_in("shutdown", limit));
        };
        if status == Status::OK {
            Ok(())
        } else {
            Err(call_error(&self.name, status, &message))
        }
    }
}

impl RunningPlugin {
    /// Asks the instance how it is doing; [`PluginHealth::Unknown`] if the plugin does not
    /// report health.
    pub(crate) fn health(&self) -> Result<PluginHealth, CallError> {
        let (instance, free_buffer) = match &self.callee {
            Callee::Worker(worker) => return worker.health(),
            Callee::Here {
                instance,
                free_buffer,
                ..
            } => (*instance, *free_buffer),
        };
        let Some(health) = self.library().vtable().health else {
            return Ok(PluginHealth::Unknown);
        };
        let mut level = health_level::HEALTHY;
        let mut message = Vec::new();
        // SAFETY: `health` and the instance belong to this live version.
        let status = unsafe {
            with_output(&mut message, free_buffer, |buf| {
                health(instance, &mut level, buf)
            })
        };
        if status != Status::OK {
            return Err(call_error(&self.name, status, &message));
        }
        let message = String::from_utf8_lossy(&message).into_owned();
        Ok(match level {
            health_level::HEALTHY => PluginHealth::Healthy,
            health_level::DEGRADED => PluginHealth::Degraded(message),
            _ => PluginHealth::Unhealthy(message),
        })
    }

    /// One call into this version; see [`PluginHandle::call_into`](super::PluginHandle::call_into).
    #[inline]
    pub(crate) fn call_into(&self, input: &[u8], output: &mut Vec<u8>) -> Result<(), CallError> {
        self.call_into_with(&CallContext::none(), input, output)
    }

    /// One call with the caller's deadline and cancellation flag. Always inlined: without it
    /// the synchronous path measured 12 ns slower.
    #[inline(always)]
    pub(crate) fn call_into_with(
        &self,
        ctx: &CallContext,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<(), CallError> {
        let (instance, execute, free_buffer) = match &self.callee {
            Callee::Here {
                instance,
                execute,
                free_buffer,
            } => (*instance, *execute, *free_buffer),
            Callee::Worker(worker) => return worker.call(ctx, input, output),
        };
        // SAFETY: `execute`, `free_buffer` and the instance belong to this live version; the
        // caller keeps `ctx.cancelled` (if not null) alive for the call.
        let status = unsafe {
            with_output(output, free_buffer, |buf| {
                execute(instance, ctx, RSlice::from_slice(input), buf)
            })
        };
        if status == Status::OK {
            Ok(())
        } else {
            let error = call_error(self.shared_name(), status, output);
            output.clear();
            Err(error)
        }
    }
}

impl Drop for RunningPlugin {
    fn drop(&mut self) {
        if self.library.is_none() {
            return; // retired
        }
        if let Err(e) = self.shutdown_instance() {
            tracing::warn!(plugin = %self.name, "shutdown failed: {e}");
        }
        // The library field drops next: closed, then its shadow copy deleted.
    }
}

/// A raw instance pointer, carried to and from the thread that runs plugin code the host runs
/// itself: Init, Shutdown, an event source's `start` and `stop` (here and in a worker).
pub(crate) struct InstancePtr(pub(crate) *mut c_void);
// SAFETY: the instance may be created, used and shut down on any thread (`Plugin: Send +
// Sync`); the pointer is only moved to that thread, and whoever frees the instance first
// waits for the thread or leaves the library stuck (never freed).
unsafe impl Send for InstancePtr {}

/// The Init call for `library`, as code that owns what it uses, to run on a thread of its
/// own: with the previous version's `state` through `init_with_state` if both sides take part
/// in state hand-over.
fn init_call(
    library: &PluginLibrary,
    config: &[u8],
    state: Option<&[u8]>,
) -> impl FnOnce() -> (InstancePtr, Status, Vec<u8>) + Send + 'static {
    let vtable = *library.vtable();
    let handover = library.state_vtable().copied();
    let config = config.to_vec();
    let state = state.map(<[u8]>::to_vec);
    move || {
        let mut instance = std::ptr::null_mut();
        let mut message = Vec::new();
        // SAFETY: the vtables belong to a loaded, validated library that stays loaded while
        // this runs (for ever if it never returns: the caller marks it stuck); the slices are
        // owned here.
        let status = unsafe {
            with_output(&mut message, vtable.free_buffer, |out| {
                match (&state, handover) {
                    (Some(state), Some(handover)) => (handover.init_with_state)(
                        RSlice::from_slice(&config),
                        RSlice::from_slice(state),
                        &mut instance,
                        out,
                    ),
                    _ => (vtable.init)(RSlice::from_slice(&config), &mut instance, out),
                }
            })
        };
        (InstancePtr(instance), status, message)
    }
}
