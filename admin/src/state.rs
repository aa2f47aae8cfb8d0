//! What every handler shares: the dispatcher (and through it the host), the `[admin]`
//! settings, and the recent call rates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plughost::{AdminSettings, Dispatcher, Host, Secret};
use tokio::sync::Semaphore;

use crate::guard::RateLimit;

/// How many event streams (`GET /events`) may be open at once.
pub(crate) const MAX_STREAMS: usize = 64;

pub(crate) struct State {
    pub(crate) settings: AdminSettings,
    /// Set when the server stops: event streams end.
    pub(crate) stop: Arc<tokio::sync::watch::Sender<bool>>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) token: Option<Secret>,
    pub(crate) max_body: usize,
    pub(crate) rate_limit: Option<RateLimit>,
    /// Whether `PUT /plugins/{name}/config` writes `plughost.toml` unless told otherwise.
    pub(crate) write_config: bool,
    pub(crate) streams: Arc<Semaphore>,
    pub(crate) rates: Rates,
    /// Numbers the event streams' bus subscriptions.
    pub(crate) stream_ids: std::sync::atomic::AtomicU64,
}

impl State {
    pub(crate) fn new(dispatcher: Arc<Dispatcher>, settings: &AdminSettings) -> Self {
        State {
            settings: settings.clone(),
            stop: Arc::new(tokio::sync::watch::channel(false).0),
            dispatcher,
            token: settings.token.clone(),
            max_body: usize::try_from(settings.max_body.0).unwrap_or(usize::MAX),
            rate_limit: RateLimit::per_second(settings.rate_limit),
            write_config: settings.write_config,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            rates: Rates::default(),
            stream_ids: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn host(&self) -> &Arc<Host> {
        self.dispatcher.host()
    }
}

/// Calls per second of each plugin, from two samples of its call count at least
/// [`Rates::WINDOW`] apart, so that the figure is steady whoever asks and how often.
#[derive(Default)]
pub(crate) struct Rates {
    samples: Mutex<HashMap<String, Samples>>,
}

#[derive(Clone, Copy)]
struct Samples {
    /// The older sample, the rate's base.
    base: (Instant, u64),
    /// The newest sample.
    last: (Instant, u64),
    rate: f64,
}

impl Rates {
    const WINDOW: Duration = Duration::from_secs(2);

    /// The rate of `plugin`, given its call count now.
    pub(crate) fn rate(&self, plugin: &str, calls: u64) -> f64 {
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let entry = samples.entry(plugin.to_owned()).or_insert(Samples {
            base: (now, calls),
            last: (now, calls),
            rate: 0.0,
        });
        if calls < entry.last.1 {
            // The count went back (its metrics were reset): start again.
            *entry = Samples {
                base: (now, calls),
                last: (now, calls),
                rate: 0.0,
            };
        }
        let elapsed = now.duration_since(entry.base.0);
        if elapsed >= Self::WINDOW {
            entry.rate = (calls - entry.base.1) as f64 / elapsed.as_secs_f64();
            entry.base = entry.last;
        }
        entry.last = (now, calls);
        entry.rate
    }
}
