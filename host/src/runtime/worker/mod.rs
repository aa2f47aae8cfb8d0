//! Isolation: a plugin's library loaded and run in a worker process of its own, so that a
//! crash, a hang or a memory bomb costs that plugin, not the host (Linux only).
//!
//! The worker is the `plughost` executable started in the worker role ([`serve`]). The host
//! side of one isolated plugin is its [`Supervisor`], which restarts crashed workers; each
//! worker process is a [`process::Process`]. Calls go through shared memory ([`lanes`]);
//! everything else through a control channel of [`frame`]s. Resource limits are applied when a
//! worker starts ([`limits`]).
//!
//! The facts this relies on are in docs/design.md, "Calls into a worker" and "Workers die
//! with their host".

mod frame;
mod lanes;
pub(crate) mod limits;
mod process;
pub(crate) mod serve;
mod supervisor;

pub(crate) use process::Spec;
pub(crate) use supervisor::{Restarts, Supervisor};
