//! The event envelope: what is published, delivered and recorded, with the CloudEvents
//! attributes (`id`, `source`, `type`, `time`, `datacontenttype`, `data`, extensions) rather
//! than fields of our own, and the rules about topics ([`topic`]). Plain data, no FFI: the
//! runtime turns an [`Event`] into the plugin-api's `RawEvent` for a plugin's handler.

#![forbid(unsafe_code)]

pub(crate) mod topic;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde::ser::{Serialize, SerializeMap, Serializer};

/// The media type of JSON data, the convention.
pub const JSON: &str = "application/json";

/// One event: a topic, who published it, when, and its data.
///
/// ```
/// use plughost::Event;
/// let event = Event::json("user.created", &serde_json::json!({"id": 7}))?;
/// assert_eq!(event.topic(), "user.created");
/// assert_eq!(event.json_data::<serde_json::Value>()?["id"], 7);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone)]
pub struct Event {
    id: Id,
    pub(crate) source: Arc<str>,
    pub(crate) topic: Arc<str>,
    time: SystemTime,
    content_type: Cow<'static, str>,
    data: Vec<u8>,
    extensions: Vec<(String, String)>,
}

#[derive(Clone)]
enum Id {
    /// Numbered by this process: `<process start, hex>-<number>`.
    Numbered(u64),
    Given(Box<str>),
}

/// What tells this process's numbered ids from another's: when it started, in hex.
fn process_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        format!("{nanos:x}-{:x}", std::process::id())
    })
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Event {
    /// An event on `topic` with `data` of media type `content_type`, published now, with a
    /// fresh id and source `app` (see [`with_source`](Self::with_source)).
    pub fn new(
        topic: impl Into<Arc<str>>,
        content_type: impl Into<Cow<'static, str>>,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        Event {
            id: Id::Numbered(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            source: app_source(),
            topic: topic.into(),
            time: SystemTime::now(),
            content_type: content_type.into(),
            data: data.into(),
            extensions: Vec::new(),
        }
    }

    /// An event on `topic` whose data is `value` as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(
        topic: impl Into<Arc<str>>,
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(topic, JSON, serde_json::to_vec(value)?))
    }

    /// Sets who published it (CloudEvents `source`).
    pub fn with_source(mut self, source: impl Into<Arc<str>>) -> Self {
        self.source = source.into();
        self
    }

    /// Sets its id, instead of the one the host numbered it with. The pair (source, id)
    /// should be unique.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Id::Given(id.into().into_boxed_str());
        self
    }

    /// Sets when it happened.
    pub fn with_time(mut self, time: SystemTime) -> Self {
        self.time = time;
        self
    }

    /// Adds a CloudEvents extension attribute.
    pub fn with_extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.push((name.into(), value.into()));
        self
    }

    /// Its id.
    pub fn id(&self) -> Cow<'_, str> {
        match &self.id {
            Id::Given(id) => Cow::Borrowed(id),
            Id::Numbered(n) => {
                let mut id = String::with_capacity(40);
                self.write_id(&mut id, *n);
                Cow::Owned(id)
            }
        }
    }

    /// Writes its id into `buffer` (cleared first) and returns it: no allocation once the
    /// buffer has room.
    pub(crate) fn id_into<'a>(&'a self, buffer: &'a mut String) -> &'a str {
        match &self.id {
            Id::Given(id) => id,
            Id::Numbered(n) => {
                buffer.clear();
                self.write_id(buffer, *n);
                buffer
            }
        }
    }

    fn write_id(&self, out: &mut String, n: u64) {
        let _ = write!(out, "{}-{n}", process_prefix());
    }

    /// Who published it: a plugin's name, `plughost` for the host's own events, or the
    /// program's choice (`app` unless set).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Its topic (CloudEvents `type`).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// When it happened.
    pub fn time(&self) -> SystemTime {
        self.time
    }

    /// The media type of its data.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// Its data, exactly the bytes published.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Its data read as JSON.
    pub fn json_data<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }

    /// Its extension attributes, in the order added.
    pub fn extensions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.extensions
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The extension attribute `name`, if set.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Its size as the event-size limit counts it: data, topic, source, content type, a given
    /// id and extensions.
    pub fn size(&self) -> usize {
        let id = match &self.id {
            Id::Given(id) => id.len(),
            Id::Numbered(_) => 0,
        };
        self.data.len()
            + self.topic.len()
            + self.source.len()
            + self.content_type.len()
            + id
            + self
                .extensions
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }

    /// Made by the host for a plugin's publish: the plugin's name as source, numbered now.
    pub(crate) fn published_by(
        source: Arc<str>,
        topic: Arc<str>,
        content_type: &str,
        data: &[u8],
        extensions: Vec<(String, String)>,
    ) -> Self {
        Event {
            id: Id::Numbered(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            source,
            topic,
            time: SystemTime::now(),
            content_type: if content_type == JSON {
                Cow::Borrowed(JSON)
            } else {
                Cow::Owned(content_type.to_owned())
            },
            data: data.to_vec(),
            extensions,
        }
    }
}

/// The attributes CloudEvents defines, which an extension may not be named after.
const CORE_ATTRIBUTES: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "dataschema",
    "subject",
    "data",
    "data_base64",
];

/// Why `name` cannot name an extension attribute, if it cannot: CloudEvents wants lower-case
/// letters and digits, at most 20, and a core attribute's name would take its place.
pub(crate) fn check_extension_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 20
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "extension attribute {:?} must be 1 to 20 lower-case letters and digits",
            crate::plugin_info::shown(name)
        ));
    }
    if CORE_ATTRIBUTES.contains(&name) {
        return Err(format!(
            "extension attribute {name:?} is a CloudEvents core attribute"
        ));
    }
    Ok(())
}

/// The default source of events the program publishes.
fn app_source() -> Arc<str> {
    static APP: OnceLock<Arc<str>> = OnceLock::new();
    APP.get_or_init(|| Arc::from("app")).clone()
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id())
            .field("source", &self.source())
            .field("topic", &self.topic())
            .field("content_type", &self.content_type())
            .field("data", &String::from_utf8_lossy(&self.data))
            .finish()
    }
}

/// The CloudEvents JSON format (specversion 1.0): JSON data inline as `data`, anything else
/// as `data_base64`.
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("specversion", "1.0")?;
        map.serialize_entry("id", &self.id())?;
        map.serialize_entry("source", self.source())?;
        map.serialize_entry("type", self.topic())?;
        map.serialize_entry(
            "time",
            &humantime::format_rfc3339_nanos(self.time).to_string(),
        )?;
        map.serialize_entry("datacontenttype", self.content_type())?;
        let json = (self.content_type() == JSON)
            .then(|| serde_json::from_slice::<serde_json::Value>(&self.data).ok())
            .flatten();
        match json {
            Some(value) => map.serialize_entry("data", &value)?,
            None => map.serialize_entry("data_base64", &base64(&self.data))?,
        }
        // An extension named like a core attribute (refused at publish) never replaces it.
        for (name, value) in &self.extensions {
            if check_extension_name(name).is_ok() {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_serializes_as_a_cloudevent() {
        let event = Event::json("user.created", &serde_json::json!({"id": 7}))
            .unwrap()
            .with_extension("traceparent", "00-abc");
        let json: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "user.created");
        assert_eq!(json["source"], "app");
        assert_eq!(json["data"]["id"], 7);
        assert_eq!(json["traceparent"], "00-abc");
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
        let binary = Event::new("blob.put", "application/octet-stream", vec![0xff, 0, 1]);
        let json: serde_json::Value = serde_json::to_value(&binary).unwrap();
        assert_eq!(json["data_base64"], "/wAB");
    }

    #[test]
    fn numbered_ids_differ() {
        let a = Event::new("a", JSON, b"1".to_vec());
        let b = Event::new("a", JSON, b"1".to_vec());
        assert_ne!(a.id(), b.id());
        let mut buffer = String::new();
        assert_eq!(a.id_into(&mut buffer), a.id());
    }
}
