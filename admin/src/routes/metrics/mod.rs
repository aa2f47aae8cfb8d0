//! `GET /metrics`: the host's state for Prometheus, encoded afresh on every scrape by the
//! official client crate (`prometheus-client`).
//!
//! A scrape first copies what it reports out of the host ([`Scrape::of`]): plugin statuses,
//! call metrics, the bus's counts. Each of those is a snapshot the host hands out without
//! waiting for a load, a reload or a call in progress, so scraping never slows plugin calls.
//! The copy is then encoded by a [`Collector`] in a registry of its own, in OpenMetrics text
//! (the default) or, for a scraper that asks only for `text/plain`, the classic Prometheus
//! text format 0.0.4.
//!
//! Topics are user data: at most [`MAX_TOPICS`] of them get series of their own (the first
//! seen, so the set is stable from scrape to scrape); the others are added up under
//! `topic="(other topics)"`, the name the bus itself gives those past its own limit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use plughost::{MetricsSnapshot, PluginState};

use crate::error::ApiError;
use crate::state;

mod encode;

use encode::{by_name, capped, isolation};

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How many topics get series of their own.
pub(crate) const MAX_TOPICS: usize = 256;

/// The label of the topics past [`MAX_TOPICS`] (and past the bus's own limit).
const OTHER_TOPICS: &str = "(other topics)";

/// The host's metrics for Prometheus.
///
/// Per plugin: its calls by outcome, latency histogram, calls in flight and stuck, circuit
/// state, reloads, refusals and versions still in memory. Per host: the plugins by state,
/// refused files, start time and uptime, and the event bus's counts per topic and per
/// subscriber. OpenMetrics text, or the classic text format 0.0.4 when the `Accept` header
/// prefers `text/plain`.
#[utoipa::path(get, path = "/metrics", tag = "host",
    responses((status = 200, description = "The metrics, in the format the Accept header prefers",
        content(
            (String = "application/openmetrics-text"),
            (String = "text/plain"),
        ))))]
pub(crate) async fn metrics(
    State(state): State<Arc<state::State>>,
    headers: HeaderMap,
) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Format::negotiate(accept);
    match Scrape::of(&state).encode(format) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(_) => {
            tracing::error!("the metrics could not be encoded");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the metrics could not be encoded (see the host's log)",
            )
            .into_response()
        }
    }
}

/// The two text formats `prometheus-client` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenMetrics 1.0.0 text: typed, with units, ending in `# EOF`.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4.
    Classic,
}

impl Format {
    /// OpenMetrics, unless `accept` ranks `text/plain` above it (a scraper that asks only
    /// for `text/plain`, say). Prometheus itself ranks OpenMetrics first.
    pub(crate) fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::OpenMetrics;
        };
        let (mut openmetrics, mut classic) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let (for_openmetrics, for_classic) = match media.as_str() {
                "application/openmetrics-text" | "application/*" => (true, false),
                "text/plain" | "text/*" => (false, true),
                "*/*" => (true, true),
                _ => (false, false),
            };
            if for_openmetrics {
                openmetrics = openmetrics.max(quality);
            }
            if for_classic {
                classic = classic.max(quality);
            }
        }
        if classic > openmetrics {
            Format::Classic
        } else {
            Format::OpenMetrics
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::Classic => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// What one scrape reports, copied out of the host before anything is encoded.
#[derive(Debug, Clone)]
pub(crate) struct Scrape {
    pub(crate) plugins: Vec<PluginSample>,
    /// Refused files that serve no plugin.
    pub(crate) refused_files: usize,
    pub(crate) started_at: SystemTime,
    pub(crate) now: SystemTime,
    /// At most [`MAX_TOPICS`] and `(other topics)`.
    pub(crate) topics: Vec<TopicSample>,
    /// One per subscriber name.
    pub(crate) subscribers: Vec<SubscriberSample>,
    /// `GET /events` streams open now.
    pub(crate) event_streams: usize,
}

/// One plugin.
#[derive(Debug, Clone)]
pub(crate) struct PluginSample {
    pub(crate) name: String,
    pub(crate) state: PluginState,
    /// Version, plugin-api version and isolation, once its library was opened.
    pub(crate) info: Option<(String, String, &'static str)>,
    pub(crate) reloads: u64,
    pub(crate) refusals: u64,
    pub(crate) still_mapped: usize,
    /// Zeros for a plugin never called through the dispatcher.
    pub(crate) calls: MetricsSnapshot,
    /// `closed`, `open` or `half_open`, for a running plugin called with a circuit breaker.
    pub(crate) circuit: Option<&'static str>,
}

/// One topic's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TopicSample {
    pub(crate) topic: String,
    pub(crate) published: u64,
    pub(crate) unrouted: u64,
}

/// One subscriber's counts (those of subscribers sharing a name added up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SubscriberSample {
    pub(crate) name: String,
    pub(crate) delivered: u64,
    pub(crate) dropped: u64,
    pub(crate) failed: u64,
    pub(crate) timed_out: u64,
    pub(crate) queue_depth: u64,
}

/// The states of a circuit, as `plughost_plugin_circuit_state` labels them.
const CIRCUIT_STATES: [&str; 3] = ["closed", "open", "half_open"];

/// The states `plughost_plugins` always reports, zero or not.
const PLUGIN_STATES: [PluginState; 5] = [
    PluginState::Running,
    PluginState::Disabled,
    PluginState::Refused,
    PluginState::Stopped,
    PluginState::Failed,
];

impl Scrape {
    /// Copies what the scrape reports out of the host and the dispatcher.
    pub(crate) fn of(state: &state::State) -> Scrape {
        let host = state.host();
        let dispatcher = &state.dispatcher;
        let mut calls: BTreeMap<String, MetricsSnapshot> =
            dispatcher.plugins_with_metrics().into_iter().collect();
        let plugins = host
            .status()
            .into_iter()
            .map(|status| {
                let calls = calls.remove(&status.name);
                let circuit = (status.state == PluginState::Running)
                    .then(|| dispatcher.circuit(&status.name))
                    .flatten()
                    .map(|c| c.as_str());
                PluginSample {
                    info: status.info.as_ref().map(|info| {
                        (
                            info.version.to_string(),
                            info.api_version.to_string(),
                            isolation(status.isolation),
                        )
                    }),
                    name: status.name,
                    state: status.state,
                    reloads: status.reloads,
                    refusals: status.refusals,
                    still_mapped: status.still_mapped,
                    calls: calls.unwrap_or_default(),
                    circuit,
                }
            })
            .collect();
        let events = host.event_stats();
        let topics = capped(
            events
                .topics
                .iter()
                .map(|t| TopicSample {
                    topic: t.topic.clone(),
                    published: t.published,
                    unrouted: t.unrouted,
                })
                .collect(),
        );
        // The API's own event streams come and go with browser tabs: counted as one gauge,
        // not a series each.
        let subscribers = events
            .subscribers
            .iter()
            .filter(|s| !s.name.starts_with(super::events::STREAM_PREFIX));
        let subscribers = by_name(subscribers.map(|s| SubscriberSample {
            name: s.name.clone(),
            delivered: s.delivered,
            dropped: s.dropped,
            failed: s.failed,
            timed_out: s.timed_out,
            queue_depth: s.queue_depth as u64,
        }));
        Scrape {
            plugins,
            refused_files: host.refusals().len(),
            started_at: host.started_at(),
            now: SystemTime::now(),
            topics,
            subscribers,
            event_streams: state::MAX_STREAMS - state.streams.available_permits(),
        }
    }
}

#[cfg(test)]
mod tests;
