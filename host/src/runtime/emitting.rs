//! A plugin version's right to publish: its name, the topics it declared, and, for an event
//! source, which emitter is alive. Both the in-process callback and a worker's publish frames
//! come through [`Emitting::publish`]; the bus behind it ([`Publisher`]) checks the rest.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use plugin_api::ffi::RawEvent;

use crate::error::PublishError;

/// What publishes for plugins: the bus. A trait, so that the runtime does not depend on the
/// bus that depends on it.
pub(crate) trait Publisher: Send + Sync {
    /// Publishes `raw` for `plugin`, which declared `emits`; a wait for room in a full
    /// queue ends early once `cancelled()` (the plugin is being stopped).
    fn publish_for(
        &self,
        plugin: &Arc<str>,
        emits: &[String],
        raw: &RawEvent<'_>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), PublishError>;
}

/// Numbers emitters across the process, so a token is never reused.
static NEXT_EMITTER: AtomicU64 = AtomicU64::new(1);

/// One version's publishing rights.
pub(crate) struct Emitting {
    name: Arc<str>,
    emits: Vec<String>,
    publisher: Weak<dyn Publisher>,
    /// The token of the emitter its running source holds; 0 when no source runs.
    live: AtomicU64,
    /// Set while its source is being stopped: a publish waiting for room gives up, so that
    /// the source's threads can end.
    stopping: AtomicBool,
}

impl Emitting {
    pub(crate) fn new(name: Arc<str>, emits: Vec<String>, publisher: Weak<dyn Publisher>) -> Self {
        Emitting {
            name,
            emits,
            publisher,
            live: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    /// Publishes for the plugin: `emitter` 0 from a call or a handler, else a source's token,
    /// which must be the live one.
    pub(crate) fn publish(&self, emitter: u64, raw: &RawEvent<'_>) -> Result<(), PublishError> {
        // The strings come from plugin code: read as text only once known to be UTF-8.
        let texts = [raw.topic, raw.datacontenttype, raw.id, raw.source]
            .into_iter()
            .chain(raw.extensions.iter().flat_map(|e| [e.name, e.value]));
        for text in texts {
            if std::str::from_utf8(text.as_rslice().as_slice()).is_err() {
                return Err(PublishError::BadTopic {
                    topic: String::from_utf8_lossy(raw.topic.as_rslice().as_slice()).into_owned(),
                    reason: "an attribute of the event is not UTF-8".into(),
                });
            }
        }
        if emitter != 0 && emitter != self.live.load(Ordering::Acquire) {
            return Err(PublishError::DeadEmitter {
                plugin: self.name.to_string(),
                topic: raw.topic.as_str().to_owned(),
            });
        }
        let Some(publisher) = self.publisher.upgrade() else {
            return Err(PublishError::Closed {
                topic: raw.topic.as_str().to_owned(),
            });
        };
        let stopping = || self.stopping.load(Ordering::Acquire);
        publisher.publish_for(&self.name, &self.emits, raw, &stopping)
    }

    /// A new live emitter for a source starting; any earlier one is dead.
    pub(crate) fn open(&self) -> u64 {
        self.stopping.store(false, Ordering::Release);
        let token = NEXT_EMITTER.fetch_add(1, Ordering::Relaxed);
        self.live.store(token, Ordering::Release);
        token
    }

    /// The source is being stopped: publishes waiting for room give up.
    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// The source stopped: its emitter is dead.
    pub(crate) fn close(&self) {
        self.live.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::std_types::{RSlice, RStr};

    /// Accepts everything, counting.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl Publisher for Counting {
        fn publish_for(
            &self,
            _: &Arc<str>,
            _: &[String],
            _: &RawEvent<'_>,
            _: &dyn Fn() -> bool,
        ) -> Result<(), PublishError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn event(topic: &str) -> RawEvent<'_> {
        RawEvent {
            id: RStr::from_str(""),
            source: RStr::from_str(""),
            topic: RStr::from_str(topic),
            time_unix_nanos: 0,
            datacontenttype: RStr::from_str("application/json"),
            data: RSlice::from_slice(b"{}"),
            extensions: RSlice::from_slice(&[]),
        }
    }

    #[test]
    fn an_emitter_dies_when_its_source_stops_or_is_replaced() {
        let bus: Arc<dyn Publisher> = Arc::new(Counting::default());
        let emitting = Emitting::new("ticker".into(), vec!["t".into()], Arc::downgrade(&bus));
        let first = emitting.open();
        assert!(emitting.publish(first, &event("t")).is_ok());
        assert!(
            emitting.publish(0, &event("t")).is_ok(),
            "from a call or a handler"
        );
        let second = emitting.open();
        let error = emitting.publish(first, &event("t")).unwrap_err();
        assert!(error.to_string().contains("emitter is dead"), "{error}");
        assert!(emitting.publish(second, &event("t")).is_ok());
        emitting.close();
        assert!(emitting.publish(second, &event("t")).is_err());
        drop(bus);
        let error = emitting.publish(0, &event("t")).unwrap_err();
        assert!(error.to_string().contains("shutting down"), "{error}");
    }
}
