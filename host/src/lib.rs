//! plughost: a host for native Rust plugins.
//!
//! Plugins are shared libraries built with the `plugin-api` crate: one trait, one macro. The
//! host finds them in a folder, checks each one before and after loading it, calls it through
//! `#[repr(C)]` function pointers at the cost of an indirect call, and replaces a plugin while
//! it serves calls when a new build of its file appears.
//!
//! # The nouns
//!
//! A handful of types carry the whole API, in the order a program meets them:
//!
//! - [`HostConfig`]: the settings, from `plughost.toml` ([`HostConfig::load`]) or built in code
//!   ([`HostConfig::with_plugins_dir`]): where plugins live, which are enabled, each one's
//!   configuration, priority, call timeout, and whether it runs in a worker process of its
//!   own ([`Isolation`]); and where an admin API listens ([`AdminSettings`], its token a
//!   [`Secret`] never shown).
//! - [`Host`]: owns every plugin. [`Host::load_all`] starts everything in the plugins folder
//!   in dependency order; [`Host::load`] starts one plugin of the folder by name, the plugins
//!   it requires first; [`Host::load_file`] starts one library file from anywhere;
//!   [`Host::watch`] keeps the host in line with the folder and the settings file (hot
//!   reload); [`Host::reload`] and [`Host::set_plugin_config`] do the same on request.
//!   Dropping it shuts every plugin down.
//! - [`PluginStatus`]: where a plugin stands ([`Host::status`]): its [`PluginState`], version,
//!   file, reloads and the last [`Refusal`]; never waits for a load in progress.
//! - [`PluginLibrary`]: a library checked and loaded but not started ([`Host::open`]), to
//!   read its [`PluginInfo`] or ask whether it would accept a configuration.
//! - [`PluginHandle`]: how a caller reaches one plugin: taken once ([`Host::handle`]), cloned
//!   freely, called from any thread ([`PluginHandle::call_into`]); it follows its plugin
//!   across reloads.
//! - [`LocalHandle`]: one thread's handle for a hot loop ([`PluginHandle::local`]), at about
//!   the cost of a direct call; it keeps the version it last called loaded until its next call.
//! - [`Dispatcher`]: async calls guarded by a [`CallPolicy`] per plugin (timeout with
//!   cancellation, concurrency and rate limits, circuit breaker), with metrics
//!   ([`MetricsSnapshot`], latency buckets for Prometheus) and health.
//! - [`HostEvent`]: what happened to plugins, from [`Host::subscribe`], to wait on instead of
//!   sleeping.
//! - [`Event`]: an event on the bus (CloudEvents attributes): the program publishes with
//!   [`Host::publish`], handles with [`Host::subscribe_events`] (a [`Subscription`] with
//!   [`SubscribeOptions`]), and reads [`Host::event_stats`]; plugins publish, subscribe and
//!   run as event sources through their own export; the host's lifecycle comes as
//!   `plughost.*` events.
//! - Errors name the file or plugin they are about: [`LoadError`] (a file refused),
//!   [`CallError`] (a call failed), [`ConfigError`] (the settings refused), [`HostError`] (the
//!   host could not do what was asked), [`PublishError`] (an event refused).
//!
//! ```no_run
//! use plughost::{Host, HostConfig};
//!
//! let host = Host::new(HostConfig::with_plugins_dir("plugins"))?;
//! let report = host.load_all()?;
//! for refusal in &report.refused {
//!     eprintln!("refused {refusal}");
//! }
//! let transform = host.handle("transform")?;
//! let mut out = Vec::with_capacity(64);
//! transform.call_into(b"hello", &mut out)?;
//! assert_eq!(out, b"HELLO");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Inside
//!
//! The modules are private; each is one noun of the data path, and every edge between them
//! points one way (`dispatch` uses `host` and `runtime`; `host` uses every other module;
//! `bus` uses `runtime` and `event`; `runtime` uses `loader`, `event`, and `config` for
//! isolation settings, and reaches the bus through a trait; nothing uses `dispatch`):
//!
//! 1. `loader`: a file becomes a validated library in memory: found, read once, checked
//!    before any loader sees it (preflight), `dlopen`ed from a private copy (a sealed memory
//!    file on Linux), validated (header, plugin-api version, abi_stable layouts), its metadata
//!    copied out;
//! 2. `config`: `plughost.toml`, the schema check of a plugin's config, and edits of the file;
//! 3. `dependencies`: the rules about requirements between plugins, start and stop order;
//! 4. `runtime`: the FFI call boundary after loading: running instances, the registry of
//!    names, handles, the callbacks plugins call back through, and isolation: a library run in
//!    a worker process of its own (`runtime/worker`, Linux), called through shared memory;
//! 5. `host`: the lifecycle that uses them all: admit, sync with the folder, retire,
//!    reconfigure, watch;
//! 6. `dispatch`: the guarded async path over handles;
//! 7. `event` and `bus`: the event envelope and topic rules, and the bus that routes events
//!    to each subscriber's own queue and runs its handler.
//!
//! `unsafe` code lives only in `loader` and `runtime`; every other module forbids it. The
//! facts about dynamic loading that the code relies on are in `docs/design.md`.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![warn(missing_docs)]

mod bus;
mod capability;
mod config;
mod dependencies;
mod dispatch;
mod error;
mod event;
mod events;
mod host;
mod loader;
mod plugin_info;
mod runtime;

pub use bus::{
    EventStats, Percentiles, SubscribeOptions, SubscriberStats, Subscription, TopicStats,
};
pub use capability::{Capability, CapabilityError, FsTarget, Need, Source as NeedSource};
pub use config::{
    AdminSettings, ByteSize, ConfigError, Confinement, CpuLimit, HostConfig, HostSettings,
    Isolation, Location, LogFormat, OwnershipCheck, PluginSettings, ProbeSetting, QueuePolicy,
    Secret, Sha256Digest, TrustedKey,
};
pub use dispatch::{
    AsyncHandle, Breaker, CallPolicy, CircuitState, Dispatcher, MetricsSnapshot, Rate, WhenLimited,
};
pub use error::{CallError, HostError, LoadError, PublishError};
pub use event::Event;
pub use events::HostEvent;
pub use host::{
    ConfigChange, ConfigReport, Examined, Host, LoadReport, PluginState, PluginStatus, Refusal,
    WatchOptions, Watcher,
};
pub use loader::residency::UnloadStatus;
pub use loader::trust::{Integrity, SignatureStatus};
pub use plugin_info::{ConfigKey, PluginInfo, Requirement};
pub use runtime::{LocalHandle, PluginHandle, PluginHealth, PluginLibrary, PluginOutput};

/// Serves the probe or the worker role if this process was started as one (`PROGRAM __probe
/// FILE`, `PROGRAM __worker ...`) and returns its exit code; otherwise `None`. The `plughost`
/// executable calls it first thing; a program of your own that should serve as the probe and
/// worker program (host setting `probe`) must do the same:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     if let Some(code) = plughost::probe_main() {
///         return code;
///     }
///     // ... the program itself
/// #   std::process::ExitCode::SUCCESS
/// }
/// ```
pub fn probe_main() -> Option<std::process::ExitCode> {
    let mut args = std::env::args_os().skip(1);
    let role = args.next()?;
    if role == loader::probe::PROBE_ARG {
        let copy = std::path::PathBuf::from(args.next()?);
        return Some(loader::probe::run(&copy));
    }
    #[cfg(isolation)]
    if role == runtime::WORKER_ARG {
        let rest: Vec<std::ffi::OsString> = args.collect();
        return Some(runtime::serve_worker(&rest));
    }
    None
}

/// The plugin-api version this host speaks. A plugin built against plugin-api `X.Y.Z` is
/// accepted when this version matches `^X.Y.Z`: the same major (the same minor while the
/// major is 0), and a host no older than the plugin.
pub fn api_version() -> semver::Version {
    loader::validate::host_api_version()
}
