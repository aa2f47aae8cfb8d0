//! A [`Scrape`] written out by `prometheus-client`: one metric family per function, each
//! with its help text.

use std::fmt;
use std::time::UNIX_EPOCH;

use plughost::{Isolation, MetricsSnapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::*;

impl Scrape {
    /// The exposition in `format`.
    pub(crate) fn encode(self, format: Format) -> Result<String, fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry)?,
            Format::Classic => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?
            }
        }
        Ok(text)
    }

    fn encode_plugins(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let plugins = &self.plugins;
        let plugin = |p: &PluginSample| [("plugin", p.name.clone())];
        counter(
            encoder,
            "plughost_plugin_calls",
            "Calls through the guarded path, by outcome: ok; error (the plugin returned an \
             error, or the call failed otherwise); timeout; panic; rejected (by a limit or an \
             open circuit, without reaching the plugin); crashed (its worker process died)",
            plugins.iter().flat_map(|p| {
                outcomes(&p.calls).map(|(outcome, calls)| {
                    (
                        [("plugin", p.name.clone()), ("outcome", outcome.to_owned())],
                        calls,
                    )
                })
            }),
        )?;
        gauge(
            encoder,
            "plughost_plugin_in_flight",
            "Calls running now",
            None,
            plugins.iter().map(|p| (plugin(p), p.calls.in_flight)),
        )?;
        gauge(
            encoder,
            "plughost_plugin_stuck_calls",
            "Calls running past their deadline now",
            None,
            plugins.iter().map(|p| (plugin(p), p.calls.stuck)),
        )?;
        let mut histogram = encoder.encode_descriptor(
            "plughost_plugin_call_duration",
            "Time of the calls that reached the plugin (not those rejected or timed out)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for p in plugins {
            let labels = plugin(p);
            histogram
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    p.calls.latency_sum.as_secs_f64(),
                    p.calls.latency_count,
                    &buckets(&p.calls),
                    None,
                )?;
        }
        gauge(
            encoder,
            "plughost_plugin_circuit_state",
            "1 for the state its circuit breaker is in, 0 for the others (running plugins \
             called with a breaker)",
            None,
            plugins.iter().flat_map(|p| {
                p.circuit.into_iter().flat_map(move |current| {
                    CIRCUIT_STATES.map(|state| {
                        (
                            [("plugin", p.name.clone()), ("state", state.to_owned())],
                            i64::from(state == current),
                        )
                    })
                })
            }),
        )?;
        counter(
            encoder,
            "plughost_plugin_reloads",
            "Times a new version replaced a running one (a new build, or a new config)",
            plugins.iter().map(|p| (plugin(p), p.reloads)),
        )?;
        counter(
            encoder,
            "plughost_plugin_refusals",
            "Times a file of it was refused",
            plugins.iter().map(|p| (plugin(p), p.refusals)),
        )?;
        gauge(
            encoder,
            "plughost_plugin_still_mapped_versions",
            "Versions out of service but still in memory",
            None,
            plugins.iter().map(|p| (plugin(p), p.still_mapped as u64)),
        )?;
        gauge(
            encoder,
            "plughost_plugin_up",
            "1 if a version of it serves calls, else 0",
            None,
            plugins
                .iter()
                .map(|p| (plugin(p), i64::from(p.state == PluginState::Running))),
        )?;
        let mut info = encoder.encode_descriptor(
            "plughost_plugin",
            "Who it is: its version in service (else the last seen), the plugin-api version it \
             was built against, where it runs",
            None,
            MetricType::Info,
        )?;
        for p in plugins {
            if let Some((version, api_version, isolation)) = &p.info {
                let labels = plugin(p);
                info.encode_family(&labels)?.encode_info(&[
                    ("version", version.as_str()),
                    ("api_version", api_version.as_str()),
                    ("isolation", isolation),
                ])?;
            }
        }
        Ok(())
    }

    fn encode_host(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut by_state: BTreeMap<&str, u64> =
            PLUGIN_STATES.iter().map(|s| (s.as_str(), 0)).collect();
        for p in &self.plugins {
            *by_state.entry(p.state.as_str()).or_default() += 1;
        }
        gauge(
            encoder,
            "plughost_plugins",
            "Plugins the host knows, by state",
            None,
            by_state
                .into_iter()
                .map(|(state, n)| ([("state", state)], n)),
        )?;
        single_gauge(
            encoder,
            "plughost_refused_files",
            "Files in the plugins folder refused and serving no plugin",
            None,
            self.refused_files as u64,
        )?;
        let since_epoch = self
            .started_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        single_gauge(
            encoder,
            "plughost_start_time",
            "When the host was created, in seconds since the Unix epoch",
            Some(&Unit::Seconds),
            since_epoch.as_secs_f64(),
        )?;
        let uptime = self.now.duration_since(self.started_at).unwrap_or_default();
        single_gauge(
            encoder,
            "plughost_uptime",
            "Seconds since the host was created",
            Some(&Unit::Seconds),
            uptime.as_secs_f64(),
        )
    }

    fn encode_events(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let topic = |t: &TopicSample| [("topic", t.topic.clone())];
        counter(
            encoder,
            "plughost_events_published",
            "Events published, by topic",
            self.topics.iter().map(|t| (topic(t), t.published)),
        )?;
        counter(
            encoder,
            "plughost_events_unrouted",
            "Events published while nobody subscribed to their topic",
            self.topics.iter().map(|t| (topic(t), t.unrouted)),
        )?;
        let subscribers = &self.subscribers;
        let subscriber = |s: &SubscriberSample| [("subscriber", s.name.clone())];
        counter(
            encoder,
            "plughost_events_delivered",
            "Events a subscriber's handler took without error",
            subscribers.iter().map(|s| (subscriber(s), s.delivered)),
        )?;
        counter(
            encoder,
            "plughost_events_dropped",
            "Events dropped for a subscriber: its queue full, or it left service",
            subscribers.iter().map(|s| (subscriber(s), s.dropped)),
        )?;
        counter(
            encoder,
            "plughost_events_failed",
            "Events a subscriber's handler failed on (errors, panics, timeouts)",
            subscribers.iter().map(|s| (subscriber(s), s.failed)),
        )?;
        counter(
            encoder,
            "plughost_events_timed_out",
            "Of the failed events, those the handler did not finish in time",
            subscribers.iter().map(|s| (subscriber(s), s.timed_out)),
        )?;
        gauge(
            encoder,
            "plughost_event_queue_depth",
            "Events waiting in a subscriber's queue now",
            None,
            subscribers.iter().map(|s| (subscriber(s), s.queue_depth)),
        )?;
        single_gauge(
            encoder,
            "plughost_admin_event_streams",
            "Event streams (GET /events) of the admin API open now",
            None,
            self.event_streams as u64,
        )
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_plugins(&mut encoder)?;
        self.encode_host(&mut encoder)?;
        self.encode_events(&mut encoder)
    }
}

/// A counter family (`name` gets its `_total` from the encoder).
fn counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

/// A gauge family (`name` gets `_UNIT` from the encoder).
fn gauge<L: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in samples {
        metric.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// A gauge without labels.
fn single_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, unit, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// A plugin's calls by outcome. The outcomes add up to its calls: `error` is every failure
/// not counted under another outcome.
pub(super) fn outcomes(m: &MetricsSnapshot) -> [(&'static str, u64); 6] {
    // The counters are read one by one while calls go on: saturate rather than wrap.
    let classified = m.timeouts + m.panics + m.rejected + m.crashed;
    [
        ("ok", m.calls.saturating_sub(m.errors)),
        ("error", m.errors.saturating_sub(classified)),
        ("timeout", m.timeouts),
        ("panic", m.panics),
        ("rejected", m.rejected),
        ("crashed", m.crashed),
    ]
}

/// The histogram's buckets as the encoder takes them: each bucket's own count (it adds them
/// up), in seconds, ending with `+Inf`.
fn buckets(m: &MetricsSnapshot) -> Vec<(f64, u64)> {
    let mut below = 0;
    let mut buckets: Vec<(f64, u64)> = MetricsSnapshot::LATENCY_BOUNDS
        .iter()
        .map(|bound| {
            // A plugin never called has no buckets yet: zeros.
            let cumulative = m
                .latency_buckets
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(below, |(_, n)| (*n).max(below));
            let own = cumulative - below;
            below = cumulative;
            (bound.as_secs_f64(), own)
        })
        .collect();
    buckets.push((f64::INFINITY, m.latency_count.saturating_sub(below)));
    buckets
}

/// The label value of where a plugin runs.
pub(super) fn isolation(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::InProcess => "in-process",
        Isolation::Process => "process",
    }
}

/// The first [`MAX_TOPICS`] topics, the others (and the bus's own `(other topics)`) added up
/// under `(other topics)`, last.
pub(super) fn capped(topics: Vec<TopicSample>) -> Vec<TopicSample> {
    let mut kept = Vec::new();
    let mut other = TopicSample {
        topic: OTHER_TOPICS.to_owned(),
        ..TopicSample::default()
    };
    let mut others = false;
    for topic in topics {
        if topic.topic != OTHER_TOPICS && kept.len() < MAX_TOPICS {
            kept.push(topic);
        } else {
            other.published += topic.published;
            other.unrouted += topic.unrouted;
            others = true;
        }
    }
    if others {
        kept.push(other);
    }
    kept
}

/// One sample per subscriber name, sorted: the program may subscribe several handlers under
/// one name, and a series must be unique.
pub(super) fn by_name(
    subscribers: impl Iterator<Item = SubscriberSample>,
) -> Vec<SubscriberSample> {
    let mut merged: BTreeMap<String, SubscriberSample> = BTreeMap::new();
    for s in subscribers {
        let entry = merged
            .entry(s.name.clone())
            .or_insert_with(|| SubscriberSample {
                name: s.name.clone(),
                ..SubscriberSample::default()
            });
        entry.delivered += s.delivered;
        entry.dropped += s.dropped;
        entry.failed += s.failed;
        entry.timed_out += s.timed_out;
        entry.queue_depth += s.queue_depth;
    }
    merged.into_values().collect()
}
