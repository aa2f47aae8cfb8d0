//! The encoding, on samples made by hand.
use std::time::{Duration, UNIX_EPOCH};

use super::encode::*;
use super::*;

fn sample() -> Scrape {
    let mut calls = MetricsSnapshot {
        calls: 7,
        errors: 4,
        failed: 1,
        timeouts: 1,
        panics: 1,
        rejected: 1,
        latency_count: 5,
        latency_sum: Duration::from_millis(12),
        ..MetricsSnapshot::default()
    };
    // 3 calls within 1 ms, 2 more within 10 ms.
    calls.latency_buckets = MetricsSnapshot::LATENCY_BOUNDS
        .iter()
        .map(|b| {
            let n = match *b {
                b if b < Duration::from_millis(1) => 0,
                b if b < Duration::from_millis(10) => 3,
                _ => 5,
            };
            (*b, n)
        })
        .collect();
    Scrape {
        plugins: vec![
            PluginSample {
                name: "echo".into(),
                state: PluginState::Running,
                info: Some(("1.2.3".into(), "1.4.0".into(), "in-process")),
                reloads: 1,
                refusals: 0,
                still_mapped: 0,
                calls,
                circuit: Some("closed"),
            },
            PluginSample {
                name: "off".into(),
                state: PluginState::Disabled,
                info: None,
                reloads: 0,
                refusals: 2,
                still_mapped: 1,
                calls: MetricsSnapshot::default(),
                circuit: None,
            },
        ],
        refused_files: 1,
        started_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        now: UNIX_EPOCH + Duration::from_secs(1_700_000_090),
        topics: vec![TopicSample {
            topic: "say \"hi\"".into(),
            published: 3,
            unrouted: 1,
        }],
        subscribers: vec![SubscriberSample {
            name: "moody".into(),
            delivered: 2,
            ..SubscriberSample::default()
        }],
        event_streams: 1,
    }
}

/// The sample lines of `text`, each with its labels sorted (the two encoders order them
/// differently).
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(sorted_labels)
        .collect()
}

/// `name{b="x",a="y"} 1` as `name{a="y",b="x"} 1`.
fn sorted_labels(line: &str) -> String {
    let Some((name, rest)) = line.split_once('{') else {
        return line.to_owned();
    };
    let mut labels = Vec::new();
    let mut rest = rest;
    while let Some((key, after)) = rest.split_once("=\"") {
        // The value ends at the first quote not escaped.
        let mut end = 0;
        let bytes = after.as_bytes();
        while bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        labels.push(format!("{key}=\"{}\"", &after[..end]));
        rest = after[end + 1..].trim_start_matches(',');
        if let Some(value) = rest.strip_prefix('}') {
            labels.sort();
            return format!("{name}{{{}}}{value}", labels.join(","));
        }
    }
    line.to_owned()
}

#[test]
fn openmetrics_has_the_calls_by_outcome_the_histogram_and_the_info() {
    let text = sample().encode(Format::OpenMetrics).unwrap();
    let samples = lines(&text);
    for expected in [
        r#"plughost_plugin_calls_total{plugin="echo",outcome="ok"} 3"#,
        r#"plughost_plugin_calls_total{plugin="echo",outcome="error"} 1"#,
        r#"plughost_plugin_calls_total{plugin="echo",outcome="timeout"} 1"#,
        r#"plughost_plugin_calls_total{plugin="off",outcome="ok"} 0"#,
        r#"plughost_plugin_call_duration_seconds_bucket{le="0.0005",plugin="echo"} 0"#,
        r#"plughost_plugin_call_duration_seconds_bucket{le="0.001",plugin="echo"} 3"#,
        r#"plughost_plugin_call_duration_seconds_bucket{le="0.01",plugin="echo"} 5"#,
        r#"plughost_plugin_call_duration_seconds_bucket{le="+Inf",plugin="echo"} 5"#,
        r#"plughost_plugin_call_duration_seconds_count{plugin="echo"} 5"#,
        r#"plughost_plugin_call_duration_seconds_bucket{le="+Inf",plugin="off"} 0"#,
        r#"plughost_plugin_circuit_state{plugin="echo",state="closed"} 1"#,
        r#"plughost_plugin_circuit_state{plugin="echo",state="open"} 0"#,
        r#"plughost_plugin_reloads_total{plugin="echo"} 1"#,
        r#"plughost_plugin_up{plugin="echo"} 1"#,
        r#"plughost_plugin_up{plugin="off"} 0"#,
        r#"plughost_plugin_info{plugin="echo",version="1.2.3",api_version="1.4.0",isolation="in-process"} 1"#,
        r#"plughost_plugins{state="disabled"} 1"#,
        r#"plughost_plugins{state="failed"} 0"#,
        r#"plughost_refused_files 1"#,
        r#"plughost_uptime_seconds 90.0"#,
        r#"plughost_events_published_total{topic="say \"hi\""} 3"#,
        r#"plughost_events_delivered_total{subscriber="moody"} 2"#,
    ] {
        assert!(
            samples.contains(&sorted_labels(expected)),
            "no {expected} in:\n{text}"
        );
    }
    // A plugin with no info (never opened) has no info series.
    assert!(
        !text.contains(r#"plughost_plugin_info{plugin="off""#),
        "{text}"
    );
    assert!(text.contains("# UNIT plughost_plugin_call_duration_seconds seconds\n"));
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn the_classic_format_has_the_same_samples_without_eof() {
    let text = sample().encode(Format::Classic).unwrap();
    assert!(!text.contains("# EOF"), "{text}");
    assert!(
        text.contains("# TYPE plughost_plugin_calls_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE plughost_plugin_info gauge\n"),
        "{text}"
    );
    let samples = lines(&text);
    for expected in [
        r#"plughost_plugin_calls_total{plugin="echo",outcome="ok"} 3"#,
        r#"plughost_plugin_call_duration_seconds_bucket{le="+Inf",plugin="echo"} 5"#,
        r#"plughost_plugin_info{plugin="echo",version="1.2.3",api_version="1.4.0",isolation="in-process"} 1"#,
    ] {
        assert!(
            samples.contains(&sorted_labels(expected)),
            "no {expected} in:\n{text}"
        );
    }
}

#[test]
fn outcomes_add_up_to_the_calls() {
    let m = sample().plugins[0].calls.clone();
    let total: u64 = outcomes(&m).iter().map(|(_, n)| n).sum();
    assert_eq!(total, m.calls);
}

#[test]
fn the_scraper_gets_openmetrics_unless_it_prefers_plain_text() {
    for (accept, format) in [
        (None, Format::OpenMetrics),
        (Some("*/*"), Format::OpenMetrics),
        (Some("application/json"), Format::OpenMetrics),
        (
            Some(
                "application/openmetrics-text;version=1.0.0;q=0.5,\
                 application/openmetrics-text;version=0.0.1;q=0.4,\
                 text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
            ),
            Format::OpenMetrics,
        ),
        (Some("text/plain"), Format::Classic),
        (Some("text/plain;version=0.0.4"), Format::Classic),
        (
            Some("application/openmetrics-text;q=0.1, text/plain"),
            Format::Classic,
        ),
    ] {
        assert_eq!(Format::negotiate(accept), format, "{accept:?}");
    }
}

#[test]
fn topics_past_the_cap_are_added_up_under_other_topics() {
    let topic = |n: usize| TopicSample {
        topic: format!("t.{n}"),
        published: 2,
        unrouted: 1,
    };
    let mut topics: Vec<TopicSample> = (0..MAX_TOPICS + 10).map(topic).collect();
    topics.insert(
        3,
        TopicSample {
            topic: OTHER_TOPICS.into(),
            published: 5,
            unrouted: 0,
        },
    );
    let kept = capped(topics);
    assert_eq!(kept.len(), MAX_TOPICS + 1);
    assert_eq!(kept[MAX_TOPICS - 1].topic, format!("t.{}", MAX_TOPICS - 1));
    assert_eq!(
        kept[MAX_TOPICS],
        TopicSample {
            topic: OTHER_TOPICS.into(),
            published: 5 + 2 * 10,
            unrouted: 10,
        }
    );
    assert_eq!(capped(vec![topic(1)]), vec![topic(1)]);
}

#[test]
fn subscribers_sharing_a_name_are_one_series() {
    let s = |name: &str, delivered| SubscriberSample {
        name: name.into(),
        delivered,
        ..SubscriberSample::default()
    };
    let merged = by_name([s("b", 1), s("a", 2), s("b", 3)].into_iter());
    assert_eq!(merged, vec![s("a", 2), s("b", 4)]);
}
