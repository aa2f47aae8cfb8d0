//! plughost: a host for native Rust plugins.
//!
//! Plugins are shared libraries built with [`plugin_api`]. The host finds them in a folder,
//! checks each one before and after loading it, and calls it through FFI-safe function
//! pointers at the cost of an indirect call.
//!
//! The data path, one module per step:
//!
//! 1. [`discovery`]: library files at the top of the plugins folder;
//! 2. [`preflight`]: the file's bytes are checked before the loader sees them;
//! 3. [`shadow`]: those bytes are written to a private, uniquely named copy;
//! 4. [`library`]: the copy is loaded and [`validate`]d (magic, plugin-api semver, abi_stable
//!    layout), its [`metadata`] copied out;
//! 5. [`config`], [`dependencies`], [`schema`]: the settings say whether and when it starts;
//!    what it requires must be in service; its configuration must fit its schema;
//! 6. [`instance`]: Init creates the plugin instance;
//! 7. [`registry`]: it is registered under its unique name;
//! 8. [`dispatch`]: callers take a [`PluginHandle`] once and call it from any thread;
//! 9. [`Host::unload`] / [`Host::shutdown`]: Shutdown, close the library, delete the copy.
//!
//! ```no_run
//! use plughost::{Host, HostOptions};
//!
//! let host = Host::new(HostOptions::with_plugins_dir("plugins"))?;
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

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod callbacks;
pub mod config;
pub mod dependencies;
pub mod discovery;
pub mod dispatch;
pub mod dispatcher;
pub mod error;
pub mod events;
mod host;
pub mod instance;
pub mod layers;
pub mod library;
pub mod mapping;
pub mod metadata;
pub mod policy;
pub mod preflight;
pub mod registry;
pub mod schema;
pub mod shadow;
pub mod validate;
pub mod watch;

pub use config::{HostConfig, HostSettings, LogFormat, PluginSettings};
pub use dispatch::{Health, PluginHandle, PluginOutput};
pub use dispatcher::{AsyncHandle, Dispatcher};
pub use error::{CallError, ConfigError, HostError, LoadError};
pub use events::HostEvent;
pub use host::{Host, HostOptions, LoadReport};
pub use layers::breaker::CircuitState;
pub use layers::metrics::MetricsSnapshot;
pub use library::PluginLibrary;
pub use mapping::UnloadStatus;
pub use metadata::{ConfigKey, PluginInfo, Requirement};
pub use policy::{Breaker, CallPolicy, Rate, WhenLimited};
pub use watch::{WatchOptions, Watcher};
