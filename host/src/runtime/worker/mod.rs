//! Isolation: a plugin's library loaded and run in a worker process of its own, so that a
//! crash, a hang or a memory bomb costs that plugin, not the host (Linux only).
//!
//! The worker is the `plughost` executable started in the worker role ([`serve`]). The host
//! side of one isolated plugin is its [`Supervisor`], which restarts crashed workers
//! ([`restart`]); its first worker is [`Starting`](starting::Starting) until the host has
//! checked the plugin it names. Each worker process is a [`process::Process`], started by the
//! [`spawner`] thread, and its end is told in words by [`death`]. Calls go through shared
//! memory ([`lanes`]); everything else through a control channel of [`frame`]s, and what the
//! worker sends is handled by the [`inbox`]. Resource limits are applied when a
//! worker starts ([`limits`]); the worker confines itself to the plugin's grants before it
//! loads the library ([`sandbox`]).
//!
//! The facts this relies on are in docs/design.md, "Calls into a worker" and "Workers die
//! with their host".

mod death;
mod delivery;
mod frame;
mod inbox;
mod lanes;
pub(crate) mod limits;
mod process;
mod restart;
pub(crate) mod sandbox;
pub(crate) mod serve;
mod spawner;
mod starting;
mod supervisor;

pub(crate) use process::Spec;
pub(crate) use supervisor::{Restarts, Supervisor};
