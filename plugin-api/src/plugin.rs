//! The safe side of the contract: what a plugin author implements and uses.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::events::{Emitter, Event};
use crate::ffi::{BufferOwner, CallContext, ConfigField, Dependency, OutBuffer};

/// A plugin. Implement it for a `Default` type and export it with
/// [`export_plugin!`](crate::export_plugin).
///
/// The host creates one instance per load with `Default::default()`, hands it its typed
/// configuration through [`Plugin::init`], calls [`Plugin::execute`] from any number of threads
/// at once (hence `&self` and `Send + Sync`), and finally calls [`Plugin::shutdown`] before the
/// instance is dropped and the library unloaded. A panic in any of these becomes an error the
/// host reports; it never takes the host down.
///
/// Everything the host may inspect before running any code (name, version, schema...) is an
/// associated constant.
pub trait Plugin: Default + Send + Sync + 'static {
    /// The configuration `init` receives, deserialized from the host's JSON. Use
    /// [`NoConfig`] for none. Use `#[serde(default)]` for optional keys.
    type Config: DeserializeOwned;

    /// Unique name the plugin is registered and called by.
    const NAME: &'static str;
    /// The plugin's version, semver. `env!("CARGO_PKG_VERSION")` is the usual choice.
    const VERSION: &'static str;
    /// One line on what it does.
    const DESCRIPTION: &'static str = "";
    /// Who wrote it.
    const AUTHOR: &'static str = "";
    /// SPDX licence expression.
    const LICENSE: &'static str = "";
    /// What it needs to be granted beyond computing, in the host's vocabulary (since 1.5):
    /// `net`, `net:connect:HOST:PORT`, `fs:read:PATH`, `fs:write:PATH`, `exec`, `env`,
    /// `events:emit`, `events:subscribe`, `call:PLUGIN`. Use `*` for what the operator
    /// chooses (`fs:write:*`, `net:connect:*:443`). The host refuses to start the plugin
    /// unless `plughost.toml` grants every one (`grant = [...]` under `[plugins.NAME]`), and
    /// confines an isolated plugin to its grants. [`DEPENDENCIES`](Plugin::DEPENDENCIES),
    /// [`EMITS`](Plugin::EMITS) and [`SUBSCRIBES`](Plugin::SUBSCRIBES) imply `call:PLUGIN`,
    /// `events:emit` and `events:subscribe`: no need to list those. Descriptive words belong
    /// in [`TAGS`](Plugin::TAGS).
    const CAPABILITIES: &'static [&'static str] = &[];
    /// Labels for grouping.
    const TAGS: &'static [&'static str] = &[];
    /// The keys `Config` accepts, for the host's listings and validation.
    const CONFIG_SCHEMA: &'static [ConfigField] = &[];
    /// The plugins this one calls through [`Context::call`], each with the versions it
    /// accepts. The host starts them first and refuses this plugin while one is missing.
    const DEPENDENCIES: &'static [Dependency] = &[];
    /// The topics this plugin publishes, exact and dot-separated (`"user.created"`). The host
    /// refuses to publish any other topic for it. See [`Context::emit`] and [`Emitter`].
    const EMITS: &'static [&'static str] = &[];
    /// The topic patterns whose events the host delivers to [`on_event`](Plugin::on_event),
    /// dot-separated as NATS subjects are: `*` matches exactly one token (`user.*` matches
    /// `user.created`, not `user.created.eu`), and `>`, only as the last token, one or more
    /// (`user.>` matches both, not `user`). A lone `">"` receives everything.
    const SUBSCRIBES: &'static [&'static str] = &[];
    /// Whether the plugin is an event source: if so the host calls [`start`](Plugin::start)
    /// once the plugin serves and [`stop`](Plugin::stop) before it is retired.
    const EVENT_SOURCE: bool = false;

    /// Checks a configuration before any instance exists. Called by the host's config checks
    /// and before every `init`.
    fn validate_config(config: &Self::Config) -> Result<(), PluginError> {
        let _ = config;
        Ok(())
    }

    /// Takes the configuration. Runs once, before any `execute`.
    fn init(&mut self, config: Self::Config) -> Result<(), PluginError> {
        let _ = config;
        Ok(())
    }

    /// Does the work: reads `input`, writes the answer to `output`.
    fn execute(
        &self,
        ctx: &Context<'_>,
        input: &[u8],
        output: &mut Output<'_>,
    ) -> Result<(), PluginError>;

    /// Releases what the plugin holds. Runs once; threads the plugin started must be joined
    /// here, since the library is unloaded right after.
    fn shutdown(&mut self) -> Result<(), PluginError> {
        Ok(())
    }

    /// Reports how the plugin is doing.
    fn health(&self) -> Health {
        Health::Healthy
    }

    /// Hot reload: the state to hand to the next version of this plugin, or `None` (the
    /// default) to let it start fresh. Called on the old version while it still serves calls,
    /// just before the new version's `init`; calls served after that are not in the state.
    fn save_state(&self) -> Option<Vec<u8>> {
        None
    }

    /// Hot reload: receives what the previous version's [`save_state`](Plugin::save_state)
    /// returned, right after `init`. An error refuses the new version; the old one keeps
    /// serving. The bytes come from another build of the plugin: version them if their format
    /// may change.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), PluginError> {
        let _ = state;
        Ok(())
    }

    /// Receives one event matching [`SUBSCRIBES`](Plugin::SUBSCRIBES), in publish order per
    /// publisher, on a thread of the host's. It may run while `execute` calls run, but not
    /// twice at once, except after a call overran the host's time limit for it
    /// (`event_timeout`): delivery then goes on beside the late call. An error or a panic goes
    /// to the host, as for `execute`; it cannot hurt the host or other subscribers. The
    /// context's [`deadline`](Context::deadline) is that time limit; [`Context::emit`]
    /// publishes from here.
    fn on_event(&self, ctx: &Context<'_>, event: &Event<'_>) -> Result<(), PluginError> {
        let _ = (ctx, event);
        Ok(())
    }

    /// Starts an event source ([`EVENT_SOURCE`](Plugin::EVENT_SOURCE)); publish with
    /// `emitter`, which can be cloned and sent to other threads.
    ///
    /// Called once the plugin serves, on a thread the host owns for the source. It may return
    /// at once, after starting threads of its own (which [`stop`](Plugin::stop) must join), or
    /// run until `stop` is called: a loop waiting on a `Condvar` with a timeout, say, that
    /// `stop` notifies. An error or a panic goes to the host, as for `execute`.
    ///
    /// On a hot reload the host calls the running version's `stop`, then its
    /// [`save_state`](Plugin::save_state), then the new version's `init` and
    /// [`restore_state`](Plugin::restore_state), then the new version's `start`: a source
    /// that hands over its position in `save_state` goes on exactly where it stopped. If the
    /// new version is refused, the running one's `start` is called again (with a new emitter),
    /// so `start` must work after a `stop`.
    fn start(&self, emitter: Emitter) -> Result<(), PluginError> {
        let _ = emitter;
        Ok(())
    }

    /// Stops an event source. Called from another thread than [`start`](Plugin::start)'s, at
    /// shutdown, disable or hot reload, before [`shutdown`](Plugin::shutdown). It must make
    /// `start` return and join the threads the plugin started: the library may be unloaded
    /// soon after. Once it returns the [`Emitter`] is dead: publishing through it fails with
    /// an error, it never crashes.
    fn stop(&self) -> Result<(), PluginError> {
        Ok(())
    }
}

/// Configuration for plugins that take none: accepts only an empty object.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// What [`Plugin::health`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working normally.
    Healthy,
    /// Working, with a problem worth reporting.
    Degraded(String),
    /// Not able to do its job.
    Unhealthy(String),
}

/// An error a plugin returns. It crosses to the host as its message.
///
/// Any `std::error::Error` converts into it, so `?` works on I/O, serde and parse errors.
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself (that keeps the
/// blanket conversion coherent).
pub struct PluginError {
    message: String,
}

impl PluginError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        PluginError {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error> From<E> for PluginError {
    fn from(error: E) -> Self {
        PluginError::new(error.to_string())
    }
}

impl fmt::Debug for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.message, f)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The host's per-call information: deadline and cancellation, calls to the plugins this one
/// depends on, and publishing events.
pub struct Context<'a> {
    raw: &'a CallContext,
}

impl<'a> Context<'a> {
    /// Wraps the raw context the host passed (a non-null `cancelled` must point to a live
    /// flag, which is why this is not public).
    pub(crate) fn new(raw: &'a CallContext) -> Self {
        Context { raw }
    }

    /// Whether the caller has given up on this call. Cheap: one atomic load. Long-running
    /// plugins should poll it and return early.
    pub fn is_cancelled(&self) -> bool {
        // SAFETY: the host guarantees a non-null `cancelled` points to a flag that outlives
        // the call (it lives in the host's call frame or in an `Arc` the call holds).
        !self.raw.cancelled.is_null() && unsafe { (*self.raw.cancelled).load(Ordering::Relaxed) }
    }

    /// When the host stops waiting for this call, if it set a deadline.
    pub fn deadline(&self) -> Option<SystemTime> {
        (self.raw.deadline_unix_nanos != 0)
            .then(|| SystemTime::UNIX_EPOCH + Duration::from_nanos(self.raw.deadline_unix_nanos))
    }

    /// Calls the plugin `plugin` (one of [`Plugin::DEPENDENCIES`]) with `input` and returns its
    /// output. The host passes this call's deadline and cancellation on. Fails with the
    /// callee's message, or when `plugin` was not declared or is not loaded.
    pub fn call(&self, plugin: &str, input: &[u8]) -> Result<Vec<u8>, PluginError> {
        crate::calls::call(self.raw, plugin, input)
    }

    /// Publishes `value`, serialized as JSON (`application/json`), on `topic`, which must be
    /// one of [`Plugin::EMITS`]. The host stamps id, source (this plugin's name) and time.
    /// Fails with the host's reason when it refuses: an undeclared topic, an event too large,
    /// a full queue, or a host older than plugin-api 1.4.
    pub fn emit<T: serde::Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), PluginError> {
        crate::events::publish_json(0, topic, value)
    }

    /// Publishes `data` as is, of media type `content_type`, on `topic`.
    pub fn emit_bytes(
        &self,
        topic: &str,
        content_type: &str,
        data: &[u8],
    ) -> Result<(), PluginError> {
        crate::events::publish(0, topic, content_type, data, &[])
    }

    /// Like [`emit_bytes`](Context::emit_bytes), with CloudEvents extension attributes as
    /// `(name, value)`; names are lower-case letters and digits.
    pub fn emit_with(
        &self,
        topic: &str,
        content_type: &str,
        data: &[u8],
        extensions: &[(&str, &str)],
    ) -> Result<(), PluginError> {
        crate::events::publish(0, topic, content_type, data, extensions)
    }
}

/// Where a plugin writes its answer. Writes go straight into the host's buffer while they fit
/// and spill into a plugin-owned `Vec` when they do not; the host frees that through the
/// plugin, so nothing is allocated on one side and freed on the other.
///
/// It implements [`std::io::Write`] and [`std::fmt::Write`], so `write!` works.
pub struct Output<'a> {
    raw: &'a mut OutBuffer,
    spill: Option<Vec<u8>>,
}

impl<'a> Output<'a> {
    /// Wraps the buffer the host passed (whose `ptr[..cap]` must be writable, which is why
    /// this is not public). Its current contents are kept.
    pub(crate) fn new(raw: &'a mut OutBuffer) -> Self {
        Output { raw, spill: None }
    }

    /// Appends bytes.
    #[inline]
    pub fn write(&mut self, bytes: &[u8]) {
        if let Some(spill) = &mut self.spill {
            spill.extend_from_slice(bytes);
        } else if bytes.len() <= self.raw.cap - self.raw.len {
            // SAFETY: the host lent `ptr[..cap]` for writing and `len + bytes.len() <= cap`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.raw.ptr.add(self.raw.len),
                    bytes.len(),
                );
            }
            self.raw.len += bytes.len();
        } else {
            let mut spill = Vec::with_capacity((self.raw.len + bytes.len()).max(64));
            spill.extend_from_slice(self.as_slice());
            spill.extend_from_slice(bytes);
            self.spill = Some(spill);
        }
    }

    /// What has been written so far.
    pub fn as_slice(&self) -> &[u8] {
        match &self.spill {
            Some(spill) => spill,
            // SAFETY: `ptr[..len]` was written by us (or is empty; a zero-length slice needs a
            // non-null pointer, hence the check).
            None if self.raw.len > 0 => unsafe {
                std::slice::from_raw_parts(self.raw.ptr, self.raw.len)
            },
            None => &[],
        }
    }

    /// Number of bytes written so far.
    pub fn len(&self) -> usize {
        self.spill.as_ref().map_or(self.raw.len, Vec::len)
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything written so far.
    pub fn clear(&mut self) {
        self.spill = None;
        self.raw.len = 0;
    }

    /// Hands a spilled `Vec` over to the host (which frees it through the vtable's
    /// `free_buffer`). Called by the export shims when an entry point returns.
    pub(crate) fn finish(self) {
        if let Some(spill) = self.spill {
            let mut spill = std::mem::ManuallyDrop::new(spill);
            self.raw.ptr = spill.as_mut_ptr();
            self.raw.len = spill.len();
            self.raw.cap = spill.capacity();
            self.raw.owner = BufferOwner::PLUGIN;
        }
    }
}

impl std::io::Write for Output<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Output::write(self, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl fmt::Write for Output<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write(s.as_bytes());
        Ok(())
    }
}
