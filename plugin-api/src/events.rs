//! Events (plugin-api 1.4): what a plugin receives in [`Plugin::on_event`] and how it
//! publishes.
//!
//! A plugin declares the topics it publishes in [`Plugin::EMITS`] and the patterns it receives
//! in [`Plugin::SUBSCRIBES`]; the host checks both when it loads the library and installs its
//! event table before Init. Publishing goes through the host, which stamps the event's id,
//! source and time and refuses a topic the plugin did not declare: from inside a call or an
//! event handler with [`Context::emit`], from an event source's own threads with the
//! [`Emitter`] that [`Plugin::start`] received.
//!
//! [`Plugin::EMITS`]: crate::Plugin::EMITS
//! [`Plugin::SUBSCRIBES`]: crate::Plugin::SUBSCRIBES
//! [`Plugin::on_event`]: crate::Plugin::on_event
//! [`Plugin::start`]: crate::Plugin::start
//! [`Context::emit`]: crate::Context::emit

use std::ffi::c_void;
use std::fmt;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::{Duration, SystemTime};

use abi_stable::std_types::{RSlice, RStr};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ffi::{BufferOwner, EventApi, Extension, OutBuffer, RawEvent, Status};
use crate::PluginError;

/// The content type [`Emitter::emit`] and [`Context::emit`](crate::Context::emit) publish.
pub(crate) const JSON: &str = "application/json";

// One copy per plugin library, set once by the host before Init.
static EVENTS: AtomicPtr<EventApi> = AtomicPtr::new(std::ptr::null_mut());
static IDENTITY: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Stores the host's event table; see [`EventModule`](crate::ffi::EventModule).
///
/// # Safety
///
/// `plugin` must stay valid for the host's callbacks while this library is loaded.
pub(crate) unsafe extern "C" fn install(api: &'static EventApi, plugin: *const c_void) {
    IDENTITY.store(plugin.cast_mut(), Ordering::Release);
    EVENTS.store((api as *const EventApi).cast_mut(), Ordering::Release);
}

/// The room lent to the host for a refusal's message; a longer one comes back host-allocated.
const LENT: usize = 128;

/// Publishes one event through the host with emitter token `emitter` (0: from a call or a
/// handler).
pub(crate) fn publish(
    emitter: u64,
    topic: &str,
    content_type: &str,
    data: &[u8],
    extensions: &[(&str, &str)],
) -> Result<(), PluginError> {
    let api = EVENTS.load(Ordering::Acquire);
    if api.is_null() {
        return Err(PluginError::new(
            "the host does not take events (it predates plugin-api 1.4)",
        ));
    }
    // SAFETY: `install` stored a `&'static EventApi`.
    let api = unsafe { &*api };
    let identity = IDENTITY.load(Ordering::Acquire).cast_const();
    // Empty unless there are some: `collect` into an empty `Vec` does not allocate.
    let extensions: Vec<Extension<'_>> = extensions
        .iter()
        .map(|&(name, value)| Extension {
            name: RStr::from_str(name),
            value: RStr::from_str(value),
        })
        .collect();
    let event = RawEvent {
        id: RStr::from_str(""),
        source: RStr::from_str(""),
        topic: RStr::from_str(topic),
        time_unix_nanos: 0,
        datacontenttype: RStr::from_str(content_type),
        data: RSlice::from_slice(data),
        extensions: RSlice::from_slice(&extensions),
    };
    // On the stack: a successful publish, the common case, allocates nothing here.
    let mut lent = [0u8; LENT];
    let mut out = OutBuffer::host(lent.as_mut_ptr(), LENT);
    // SAFETY: the host's callback with the identity it gave us; `event` borrows data that
    // outlives the call, and `out` lends `lent`.
    let status = unsafe { (api.publish)(identity, emitter, &event, &mut out) };
    if status == Status::OK && out.owner != BufferOwner::CALLEE {
        return Ok(());
    }
    let message = if out.owner == BufferOwner::CALLEE {
        // A zero-length answer may come with any pointer, hence the check.
        let bytes: &[u8] = if out.len == 0 {
            &[]
        } else {
            // SAFETY: the host allocated `ptr[..len]` for us and keeps it until `free_buffer`.
            unsafe { std::slice::from_raw_parts(out.ptr, out.len) }
        };
        let message = String::from_utf8_lossy(bytes).into_owned();
        // SAFETY: exactly the triple the host handed out, given back once.
        unsafe { (api.free_buffer)(out.ptr, out.len, out.cap) };
        message
    } else {
        String::from_utf8_lossy(&lent[..out.len.min(LENT)]).into_owned()
    };
    if status == Status::OK {
        return Ok(());
    }
    Err(PluginError::new(if message.is_empty() {
        format!("the host refused the event on {topic} without a reason")
    } else {
        message
    }))
}

/// Publishes `value` as JSON.
pub(crate) fn publish_json<T: Serialize + ?Sized>(
    emitter: u64,
    topic: &str,
    value: &T,
) -> Result<(), PluginError> {
    let data = serde_json::to_vec(value)
        .map_err(|e| PluginError::new(format!("cannot serialize the event on {topic}: {e}")))?;
    publish(emitter, topic, JSON, &data, &[])
}

/// How an event source publishes from its own threads: the handle [`Plugin::start`] receives.
/// Clone it freely and send it to any thread.
///
/// It is only valid while the source runs: once the host has called [`Plugin::stop`], every
/// publish fails with the host's reason (it never crashes), so a thread that outlives `stop`
/// by a moment is harmless. Topics must be among [`Plugin::EMITS`].
///
/// [`Plugin::start`]: crate::Plugin::start
/// [`Plugin::stop`]: crate::Plugin::stop
/// [`Plugin::EMITS`]: crate::Plugin::EMITS
#[derive(Debug, Clone)]
pub struct Emitter {
    token: u64,
}

impl Emitter {
    /// Wraps the token the host passed to `start`.
    pub(crate) fn new(token: u64) -> Self {
        Emitter { token }
    }

    /// Publishes `value`, serialized as JSON (`application/json`), on `topic`. Fails with the
    /// host's reason when it refuses: an undeclared topic, an event too large, a full queue, a
    /// stopped source.
    pub fn emit<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<(), PluginError> {
        publish_json(self.token, topic, value)
    }

    /// Publishes `data` as is, of media type `content_type`, on `topic`.
    pub fn emit_bytes(
        &self,
        topic: &str,
        content_type: &str,
        data: &[u8],
    ) -> Result<(), PluginError> {
        publish(self.token, topic, content_type, data, &[])
    }

    /// Like [`emit_bytes`](Emitter::emit_bytes), with CloudEvents extension attributes as
    /// `(name, value)`; names are lower-case letters and digits.
    pub fn emit_with(
        &self,
        topic: &str,
        content_type: &str,
        data: &[u8],
        extensions: &[(&str, &str)],
    ) -> Result<(), PluginError> {
        publish(self.token, topic, content_type, data, extensions)
    }
}

/// One event delivered to [`Plugin::on_event`](crate::Plugin::on_event): its CloudEvents
/// attributes and data, borrowed from the host for the duration of the call.
#[derive(Clone, Copy)]
pub struct Event<'a> {
    raw: &'a RawEvent<'a>,
}

impl<'a> Event<'a> {
    /// Views a raw event. The export shims do it for you; this is public for a plugin's own
    /// unit tests, which can build a [`RawEvent`] and call `on_event` directly.
    pub fn new(raw: &'a RawEvent<'a>) -> Self {
        Event { raw }
    }

    /// Unique per source.
    pub fn id(&self) -> &'a str {
        self.raw.id.as_str()
    }

    /// Who published it: a plugin's name, `plughost` for the host's own events, or what the
    /// program embedding the host chose.
    pub fn source(&self) -> &'a str {
        self.raw.source.as_str()
    }

    /// The topic it was published on (`user.created`), CloudEvents' `type`.
    pub fn topic(&self) -> &'a str {
        self.raw.topic.as_str()
    }

    /// When it was published.
    pub fn time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.raw.time_unix_nanos)
    }

    /// The media type of [`data`](Event::data), `application/json` by convention.
    pub fn content_type(&self) -> &'a str {
        self.raw.datacontenttype.as_str()
    }

    /// The payload.
    pub fn data(&self) -> &'a [u8] {
        self.raw.data.as_slice()
    }

    /// Parses the payload as JSON into `T`; the error names the topic and what was wrong.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_slice(self.data()).map_err(|e| {
            PluginError::new(format!(
                "invalid JSON in the event on {}: {e}",
                self.topic()
            ))
        })
    }

    /// The value of the extension attribute `name`, if the event has it.
    pub fn extension(&self, name: &str) -> Option<&'a str> {
        self.extensions()
            .find(|&(n, _)| n == name)
            .map(|(_, value)| value)
    }

    /// Every extension attribute, as name and value, in the publisher's order.
    pub fn extensions(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.raw
            .extensions
            .as_slice()
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
    }
}

impl fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id())
            .field("source", &self.source())
            .field("topic", &self.topic())
            .field("time", &self.time())
            .field("content_type", &self.content_type())
            .field("data_len", &self.data().len())
            .field("extensions", &self.extensions().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use super::*;

    fn raw<'a>(data: &'a [u8], extensions: &'a [Extension<'a>]) -> RawEvent<'a> {
        RawEvent {
            id: RStr::from_str("42"),
            source: RStr::from_str("ticker"),
            topic: RStr::from_str("user.created"),
            time_unix_nanos: 1_500_000_000,
            datacontenttype: RStr::from_str(JSON),
            data: RSlice::from_slice(data),
            extensions: RSlice::from_slice(extensions),
        }
    }

    #[test]
    fn event_accessors() {
        let extensions = [
            Extension {
                name: RStr::from_str("traceparent"),
                value: RStr::from_str("00-abc-def-01"),
            },
            Extension {
                name: RStr::from_str("tenant"),
                value: RStr::from_str("acme"),
            },
        ];
        let raw = raw(br#"{"name":"ada","id":7}"#, &extensions);
        let event = Event::new(&raw);
        assert_eq!(event.id(), "42");
        assert_eq!(event.source(), "ticker");
        assert_eq!(event.topic(), "user.created");
        assert_eq!(
            event.time(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1500)
        );
        assert_eq!(event.content_type(), "application/json");
        assert_eq!(event.data(), br#"{"name":"ada","id":7}"#);
        let value: serde_json::Value = event.json().unwrap();
        assert_eq!(value["name"], "ada");
        assert_eq!(event.extension("tenant"), Some("acme"));
        assert_eq!(event.extension("missing"), None);
        assert_eq!(
            event.extensions().collect::<Vec<_>>(),
            [("traceparent", "00-abc-def-01"), ("tenant", "acme")]
        );
        assert!(format!("{event:?}").contains("user.created"));
    }

    #[test]
    fn event_json_error_names_the_topic() {
        let raw = raw(b"not json", &[]);
        let error = Event::new(&raw).json::<serde_json::Value>().unwrap_err();
        assert!(error.message().contains("user.created"), "{error}");
        assert_eq!(Event::new(&raw).extensions().count(), 0);
    }

    /// What the fake host saw of one publish.
    #[derive(Debug)]
    struct Seen {
        plugin: usize,
        emitter: u64,
        id: String,
        time: u64,
        topic: String,
        content_type: String,
        data: Vec<u8>,
        extensions: Vec<(String, String)>,
    }

    static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
    static FREED: AtomicUsize = AtomicUsize::new(0);

    // No asserts in here: a panic cannot leave an `extern "C"` function.
    unsafe extern "C" fn fake_publish(
        plugin: *const c_void,
        emitter: u64,
        event: &RawEvent<'_>,
        out: &mut OutBuffer,
    ) -> Status {
        if let Ok(mut seen) = SEEN.lock() {
            seen.push(Seen {
                plugin: plugin as usize,
                emitter,
                id: event.id.as_str().to_owned(),
                time: event.time_unix_nanos,
                topic: event.topic.as_str().to_owned(),
                content_type: event.datacontenttype.as_str().to_owned(),
                data: event.data.as_slice().to_vec(),
                extensions: event
                    .extensions
                    .as_slice()
                    .iter()
                    .map(|e| (e.name.as_str().to_owned(), e.value.as_str().to_owned()))
                    .collect(),
            });
        }
        match event.topic.as_str() {
            "refused.short" => {
                let message = b"topic refused.short is not declared";
                let len = message.len().min(out.cap);
                // SAFETY: the plugin lent `ptr[..cap]` and `len <= cap`.
                unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), out.ptr, len) };
                out.len = len;
                Status::ERROR
            }
            "refused.long" => {
                let mut message = std::mem::ManuallyDrop::new("x".repeat(1000).into_bytes());
                out.ptr = message.as_mut_ptr();
                out.len = message.len();
                out.cap = message.capacity();
                out.owner = BufferOwner::CALLEE;
                Status::ERROR
            }
            _ => Status::OK,
        }
    }

    unsafe extern "C" fn fake_free(ptr: *mut u8, len: usize, cap: usize) {
        FREED.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the triple `fake_publish` leaked.
        drop(unsafe { Vec::from_raw_parts(ptr, len, cap) });
    }

    static FAKE: EventApi = EventApi {
        publish: fake_publish,
        free_buffer: fake_free,
    };

    // One test, in this order, because the table is global to the test binary.
    #[test]
    fn publish_without_then_with_a_host() {
        let emitter = Emitter::new(7);
        let error = emitter.emit("user.created", &1).unwrap_err();
        assert_eq!(
            error.message(),
            "the host does not take events (it predates plugin-api 1.4)"
        );
        let error = publish(0, "user.created", "text/plain", b"x", &[]).unwrap_err();
        assert!(error.message().contains("predates"), "{error}");

        // SAFETY: a `'static` table and an identity the fake only records.
        unsafe { install(&FAKE, 0x1234 as *const c_void) };
        emitter
            .emit("user.created", &serde_json::json!({"seq": 1}))
            .unwrap();
        emitter
            .emit_with("user.deleted", "text/plain", b"bye", &[("tenant", "acme")])
            .unwrap();
        publish_json(0, "user.renamed", "ada").unwrap();
        let error = emitter
            .emit_bytes("refused.short", "text/plain", b"")
            .unwrap_err();
        assert_eq!(error.message(), "topic refused.short is not declared");
        let error = emitter.emit("refused.long", &()).unwrap_err();
        assert_eq!(error.message(), "x".repeat(1000));
        assert_eq!(FREED.load(Ordering::SeqCst), 1);

        let seen = SEEN.lock().unwrap();
        assert_eq!(seen.len(), 5);
        assert!(
            seen.iter()
                .all(|s| s.plugin == 0x1234 && s.id.is_empty() && s.time == 0),
            "{seen:?}"
        );
        let first = &seen[0];
        assert_eq!(
            (
                first.emitter,
                first.topic.as_str(),
                first.content_type.as_str(),
                first.data.as_slice()
            ),
            (7, "user.created", JSON, &br#"{"seq":1}"#[..])
        );
        assert_eq!(seen[1].content_type, "text/plain");
        assert_eq!(
            seen[1].extensions,
            [("tenant".to_owned(), "acme".to_owned())]
        );
        assert_eq!(
            (seen[2].emitter, seen[2].data.as_slice()),
            (0, &br#""ada""#[..])
        );
    }
}
