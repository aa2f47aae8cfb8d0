//! The contract between plughost and its plugins.
//!
//! A plugin is a `cdylib` crate that implements [`Plugin`] for one type and exports it with
//! [`export_plugin!`]. The macro writes every `extern "C"` function, catches every panic inside
//! the plugin, and stamps the library with this crate's version and abi_stable's description of
//! the FFI types, so that a host built against an incompatible plugin-api refuses the library
//! with a clear reason instead of calling into it.
//!
//! # A complete plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "greeter"
//! version = "1.0.0"
//! edition = "2021"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! plugin-api = { path = "../plugin-api" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use plugin_api::{export_plugin, ConfigField, Context, Output, Plugin, PluginError};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct Config {
//!     #[serde(default = "default_greeting")]
//!     greeting: String,
//! }
//!
//! fn default_greeting() -> String {
//!     "Hello".into()
//! }
//!
//! #[derive(Default)]
//! pub struct Greeter {
//!     greeting: String,
//! }
//!
//! impl Plugin for Greeter {
//!     type Config = Config;
//!     const NAME: &'static str = "greeter";
//!     const VERSION: &'static str = "1.0.0"; // usually env!("CARGO_PKG_VERSION")
//!     const DESCRIPTION: &'static str = "Greets whoever its input names";
//!     const CAPABILITIES: &'static [&'static str] = &["text"];
//!     const CONFIG_SCHEMA: &'static [ConfigField] = &[ConfigField::string("greeting")
//!         .default_json(r#""Hello""#)
//!         .describe("The word to greet with")];
//!
//!     fn init(&mut self, config: Config) -> Result<(), PluginError> {
//!         self.greeting = config.greeting;
//!         Ok(())
//!     }
//!
//!     fn execute(
//!         &self,
//!         _ctx: &Context<'_>,
//!         input: &[u8],
//!         output: &mut Output<'_>,
//!     ) -> Result<(), PluginError> {
//!         let name = std::str::from_utf8(input)?;
//!         output.write(format!("{}, {name}!", self.greeting).as_bytes());
//!         Ok(())
//!     }
//! }
//!
//! export_plugin!(Greeter);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build`, drop `libgreeter.so` into the host's plugins folder, and
//! `plughost exec greeter world` prints `Hello, world!`.
//!
//! # Versioning
//!
//! A host accepts a plugin built against plugin-api `X.Y.Z` when the host's own plugin-api
//! version matches the semver requirement `^X.Y.Z`: same major version (same minor while the
//! major is 0), and the host at least as new as the plugin.
//!
//! # Hot reload
//!
//! When a new build replaces a running plugin, the host Inits the new version beside the old
//! one and switches calls over only once that succeeded. Override
//! [`Plugin::save_state`] and [`Plugin::restore_state`] to carry state across (the example
//! `counter` keeps its count). Code that runs on the host's threads should avoid
//! `thread_local!` values with destructors and `std::thread::spawn` without joining in
//! `shutdown`: either keeps the old library mapped after it is closed.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod calls;
mod export;
pub mod ffi;
pub mod json;
pub mod log;
mod plugin;

pub use ffi::{ConfigField, ConfigType, Dependency, API_VERSION};
pub use plugin::{Context, Health, NoConfig, Output, Plugin, PluginError};

/// Used by [`export_plugin!`]'s expansion; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{
        dependency_export, dependency_module, header, host_export, module, rstr_array,
        state_export, state_vtable,
    };
    pub use crate::ffi::{
        DependencyExport, DependencyModule, HostExport, PluginHeader, PluginModule, StateExport,
        StateVTable,
    };
    pub use abi_stable::std_types::RStr;
}
