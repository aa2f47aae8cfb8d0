//! Unit tests of a plugin through the real FFI shims, without a host binary.
//!
//! A [`Harness`] builds the same module [`export_plugin!`](crate::export_plugin) exports and
//! calls its `extern "C"` entry points as the host does: the configuration checked against
//! [`Plugin::CONFIG_SCHEMA`] with the host's own rule ([`schema`](crate::schema)), Init with
//! that JSON, Execute with a lent output buffer (a plugin-allocated answer given back through
//! `free_buffer`), events through the handler's shim, and Shutdown. A panic comes back as an
//! error with its message, as in a host.
//!
//! ```
//! # use plugin_api::{Context, ConfigField, Output, Plugin, PluginError};
//! # #[derive(serde::Deserialize)]
//! # pub struct Config { greeting: String }
//! # #[derive(Default)]
//! # pub struct Greeter { greeting: String }
//! # impl Plugin for Greeter {
//! #     type Config = Config;
//! #     const NAME: &'static str = "greeter";
//! #     const VERSION: &'static str = "1.0.0";
//! #     const CONFIG_SCHEMA: &'static [ConfigField] = &[ConfigField::string("greeting").required()];
//! #     fn init(&mut self, config: Config) -> Result<(), PluginError> {
//! #         self.greeting = config.greeting;
//! #         Ok(())
//! #     }
//! #     fn execute(&self, _: &Context<'_>, input: &[u8], out: &mut Output<'_>) -> Result<(), PluginError> {
//! #         out.write(format!("{}, {}!", self.greeting, std::str::from_utf8(input)?).as_bytes());
//! #         Ok(())
//! #     }
//! # }
//! use plugin_api::testing::Harness;
//!
//! let plugin = Harness::<Greeter>::init(r#"{"greeting": "Hi"}"#)?;
//! assert_eq!(plugin.execute_str("world")?, "Hi, world!");
//! plugin.shutdown()?;
//!
//! // Refused as a host would refuse it, in the host's words.
//! let refused = Harness::<Greeter>::init("{}").unwrap_err();
//! assert_eq!(refused.to_string(), "plugin greeter: config key `greeting` is required (string) but missing");
//! # Ok::<(), plugin_api::testing::TestError>(())
//! ```
//!
//! Calls to other plugins ([`Context::call`](crate::Context::call)) and publishing
//! ([`Context::emit`](crate::Context::emit)) fail in a harness, as they would in a host that
//! installed no such tables: test them against a running host.

use std::ffi::c_void;
use std::marker::PhantomData;

use abi_stable::std_types::{RSlice, RStr};
use serde::Serialize;

use crate::export::{event_module, module};
use crate::ffi::{
    BufferOwner, CallContext, EventModule, OutBuffer, PluginModule, RawEvent, Status,
};
use crate::schema::{self, SchemaKey};
use crate::Plugin;

/// Why a harness call failed: a refused configuration, or what the plugin returned, in the
/// host's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestError {
    message: String,
}

impl TestError {
    fn new(message: String) -> Self {
        TestError { message }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for TestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TestError {}

/// One instance of plugin `P`, created through its exported Init.
pub struct Harness<P: Plugin> {
    module: PluginModule,
    events: EventModule,
    instance: *mut c_void,
    warnings: Vec<String>,
    _plugin: PhantomData<P>,
}

impl<P: Plugin> Harness<P> {
    /// Checks `config` (JSON; empty means `{}`) against the plugin's schema as a host would,
    /// with the defaults filled in, then runs Init with it.
    pub fn init(config: &str) -> Result<Self, TestError> {
        let given: serde_json::Value = if config.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(config)
                .map_err(|e| refused::<P>(format!("the configuration is not JSON: {e}")))?
        };
        let Some(given) = given.as_object() else {
            return Err(refused::<P>(
                "the configuration is not a JSON object".into(),
            ));
        };
        let keys: Vec<SchemaKey<'_>> = P::CONFIG_SCHEMA.iter().map(SchemaKey::from).collect();
        let fitted = schema::fit(&keys, given, &|_| None)
            .map_err(|problem| refused::<P>(problem.to_string()))?;
        let warnings = fitted
            .unknown
            .iter()
            .map(|key| format!("config key `{key}` is not in the schema of {}", P::NAME))
            .collect();
        let bytes = serde_json::to_vec(&fitted.config).expect("a JSON map serializes");
        let module = module::<P>(&[], &[]);
        let mut instance = std::ptr::null_mut();
        let (status, message) = with_output(&module, |out| {
            // SAFETY: the module's own Init shim, with a config slice and an instance slot that
            // outlive the call, and a lent buffer.
            unsafe { (module.vtable.init)(RSlice::from_slice(&bytes), &mut instance, out) }
        });
        check::<P>(status, &message)?;
        if instance.is_null() {
            return Err(refused::<P>(
                "init reported success but created no instance".into(),
            ));
        }
        Ok(Harness {
            module,
            events: event_module::<P>(&[], &[]),
            instance,
            warnings,
            _plugin: PhantomData,
        })
    }

    /// What a host would warn about: keys the schema does not know.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Runs Execute on `input`; the output, or the error or panic message as the host reports
    /// it.
    pub fn execute(&self, input: &[u8]) -> Result<Vec<u8>, TestError> {
        let ctx = CallContext::none();
        let (status, output) = with_output(&self.module, |out| {
            // SAFETY: the live instance Init created, its own Execute shim, a context, input
            // and lent buffer valid for the call.
            unsafe {
                (self.module.vtable.execute)(self.instance, &ctx, RSlice::from_slice(input), out)
            }
        });
        check::<P>(status, &output)?;
        Ok(output)
    }

    /// [`execute`](Self::execute) with text in and out.
    pub fn execute_str(&self, input: &str) -> Result<String, TestError> {
        let output = self.execute(input.as_bytes())?;
        String::from_utf8(output).map_err(|e| {
            TestError::new(format!("plugin {}: the output is not UTF-8: {e}", P::NAME))
        })
    }

    /// Delivers an event on `topic` whose data is `data` as JSON to the plugin's handler,
    /// whether or not the plugin subscribes to that topic (the host would not deliver it).
    pub fn on_event<T: Serialize + ?Sized>(&self, topic: &str, data: &T) -> Result<(), TestError> {
        let data = serde_json::to_vec(data)
            .map_err(|e| TestError::new(format!("cannot serialize the event's data: {e}")))?;
        let raw = RawEvent {
            id: RStr::from_str("test-1"),
            source: RStr::from_str("test"),
            topic: RStr::from_str(topic),
            time_unix_nanos: 0,
            datacontenttype: RStr::from_str("application/json"),
            data: RSlice::from_slice(&data),
            extensions: RSlice::from_slice(&[]),
        };
        let ctx = CallContext::none();
        let (status, message) = with_output(&self.module, |out| {
            // SAFETY: the live instance and the handler shim of the same plugin; the event and
            // context outlive the call.
            unsafe { (self.events.on_event)(self.instance, &ctx, &raw, out) }
        });
        check::<P>(status, &message)
    }

    /// Runs Shutdown (which also drops the instance).
    pub fn shutdown(mut self) -> Result<(), TestError> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<(), TestError> {
        let instance = std::mem::replace(&mut self.instance, std::ptr::null_mut());
        if instance.is_null() {
            return Ok(());
        }
        let (status, message) = with_output(&self.module, |out| {
            // SAFETY: the instance Init created, given to Shutdown once (just taken).
            unsafe { (self.module.vtable.shutdown)(instance, out) }
        });
        check::<P>(status, &message)
    }
}

impl<P: Plugin> std::fmt::Debug for Harness<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("plugin", &P::NAME)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl<P: Plugin> Drop for Harness<P> {
    fn drop(&mut self) {
        // A test that did not shut the instance down still frees it; an error then is not
        // the test's subject.
        let _ = self.shut_down();
    }
}

/// Runs an entry point with a lent buffer, as the host does: what it wrote, a
/// plugin-allocated answer copied and given back to the plugin's `free_buffer`.
fn with_output(
    module: &PluginModule,
    entry: impl FnOnce(&mut OutBuffer) -> Status,
) -> (Status, Vec<u8>) {
    let mut lent = vec![0u8; 64];
    let mut out = OutBuffer::host(lent.as_mut_ptr(), lent.len());
    let status = entry(&mut out);
    let bytes = if out.owner == BufferOwner::PLUGIN {
        let bytes = if out.len == 0 {
            Vec::new()
        } else {
            // SAFETY: the plugin handed over `ptr[..len]`, initialised.
            unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec()
        };
        // SAFETY: exactly the triple the plugin handed over, given back once.
        unsafe { (module.vtable.free_buffer)(out.ptr, out.len, out.cap) };
        bytes
    } else {
        lent.truncate(out.len.min(lent.len()));
        lent
    };
    (status, bytes)
}

/// The error a host would report for `status` and `message`.
fn check<P: Plugin>(status: Status, message: &[u8]) -> Result<(), TestError> {
    let message = String::from_utf8_lossy(message);
    match status {
        Status::OK => Ok(()),
        Status::ERROR => Err(TestError::new(format!(
            "plugin {} returned an error: {message}",
            P::NAME
        ))),
        Status::PANIC => Err(TestError::new(format!(
            "plugin {} panicked: {message}",
            P::NAME
        ))),
        other => Err(TestError::new(format!(
            "plugin {} returned an unknown status code {}",
            P::NAME,
            other.0
        ))),
    }
}

fn refused<P: Plugin>(reason: String) -> TestError {
    TestError::new(format!("plugin {}: {reason}", P::NAME))
}
