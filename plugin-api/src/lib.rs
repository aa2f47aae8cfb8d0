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
//! # Events
//!
//! Since plugin-api 1.4 plugins also talk through events: CloudEvents with a dot-separated
//! topic (`user.created`), an id, a source (the publishing plugin's name) and a payload, JSON
//! by convention. A plugin lists the patterns it receives in [`Plugin::SUBSCRIBES`] (`*` one
//! token, `>` one or more at the end, as in NATS) and gets each matching event in
//! [`Plugin::on_event`]:
//!
//! ```
//! use plugin_api::{export_plugin, Context, Event, NoConfig, Output, Plugin, PluginError};
//!
//! #[derive(Default)]
//! pub struct Welcomer;
//!
//! impl Plugin for Welcomer {
//!     type Config = NoConfig;
//!     const NAME: &'static str = "welcomer";
//!     const VERSION: &'static str = "1.0.0";
//!     const SUBSCRIBES: &'static [&'static str] = &["user.*"];
//!     const EMITS: &'static [&'static str] = &["mail.queued"];
//!
//!     fn execute(&self, _: &Context<'_>, _: &[u8], _: &mut Output<'_>) -> Result<(), PluginError> {
//!         Ok(())
//!     }
//!
//!     fn on_event(&self, ctx: &Context<'_>, event: &Event<'_>) -> Result<(), PluginError> {
//!         let user = event.json::<serde_json::Value>()?;
//!         plugin_api::info!("{} from {}: {user}", event.topic(), event.source());
//!         if event.topic() == "user.created" {
//!             ctx.emit("mail.queued", &serde_json::json!({ "to": user["email"] }))?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_plugin!(Welcomer);
//! # fn main() {}
//! ```
//!
//! Publishing goes through the host, which refuses topics missing from [`Plugin::EMITS`]:
//! from a call or a handler with [`Context::emit`] (or [`Context::emit_bytes`] for other
//! content types), and from an *event source*, a plugin with [`Plugin::EVENT_SOURCE`] set,
//! with the [`Emitter`] the host hands to [`Plugin::start`] once the plugin serves. The host
//! calls [`Plugin::stop`] before retiring it; the example `ticker` is a source and `audit`
//! a subscriber.
//!
//! # Hot reload
//!
//! When a new build replaces a running plugin, the host Inits the new version beside the old
//! one and switches calls over only once that succeeded. Override
//! [`Plugin::save_state`] and [`Plugin::restore_state`] to carry state across (the example
//! `counter` keeps its count). Code that runs on the host's threads should avoid
//! `thread_local!` values with destructors and `std::thread::spawn` without joining in
//! `shutdown` (or, for an event source's threads, in `stop`): either keeps the old library
//! mapped after it is closed.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod calls;
mod events;
mod export;
pub mod ffi;
pub mod json;
pub mod log;
mod plugin;
pub mod schema;
pub mod testing;

pub use events::{Emitter, Event};
pub use ffi::{ConfigField, ConfigType, Dependency, API_VERSION};
pub use plugin::{Context, Health, NoConfig, Output, Plugin, PluginError};

/// Used by [`export_plugin!`]'s expansion; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{
        dependency_export, dependency_module, event_export, event_module, header, host_export,
        module, rstr_array, state_export, state_vtable,
    };
    pub use crate::ffi::{
        DependencyExport, DependencyModule, EventExport, EventModule, HostExport, PluginHeader,
        PluginModule, StateExport, StateVTable,
    };
    pub use abi_stable::std_types::RStr;
}
