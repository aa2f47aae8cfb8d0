//! Plugins at work: running instances, the table that names them, the handles that call
//! them, and the callbacks plugins call back through. Everything that crosses the FFI call
//! boundary after loading lives here, and its rules live in one module, [`abi`].
//!
//! - [`library`]: [`PluginLibrary`], a validated library with the host's callbacks installed;
//! - [`instance`]: `RunningPlugin`, a library plus the instance its Init created, and
//!   [`delivery`]: what it does with events (its handler, its event source);
//! - [`registry`]: one `Slot` per plugin name, holding the version that serves it;
//! - [`handle`]: [`PluginHandle`], the cheap way callers reach a slot's version;
//! - [`local`]: [`LocalHandle`], a thread's own handle that keeps the version between calls;
//! - [`callbacks`]: what the host offers plugins (logging, calls to their dependencies,
//!   publishing events), and [`emitting`]: a version's right to publish;
//! - [`worker`]: isolation: the same library run in a worker process of its own (Linux).

mod abi;
mod callbacks;
pub(crate) mod delivery;
pub(crate) mod emitting;
mod handle;
pub(crate) mod instance;
mod isolation;
mod library;
mod local;
mod registry;
#[cfg(isolation)]
pub(crate) mod worker;
#[cfg(not(isolation))]
#[path = "no_worker.rs"]
pub(crate) mod worker;

pub(crate) use emitting::{Emitting, Publisher};
pub use handle::{PluginHandle, PluginHealth, PluginOutput};
pub(crate) use instance::{Limits, Retired, RunningPlugin};
pub(crate) use isolation::{has_limits, Workers};
pub use library::PluginLibrary;
pub use local::LocalHandle;
pub(crate) use registry::{Registry, Slot};
#[cfg(isolation)]
pub(crate) use worker::serve::{run as serve_worker, WORKER_ARG};
