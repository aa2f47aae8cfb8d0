//! `plughost events`: the event bus's counts of the `plughost run` serving the plugins
//! folder, per topic and per subscriber, asked over its control socket.

use std::process::ExitCode;

use serde_json::{json, Value};

use crate::control::{self, Socket};
use crate::table;

pub(crate) fn events(json: bool, socket: &Socket) -> anyhow::Result<ExitCode> {
    let answer = control::request(socket, &json!({ "op": "stats" }))?;
    let stats = answer.get("stats").unwrap_or(&Value::Null);
    if json {
        println!("{}", serde_json::to_string_pretty(stats)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = |key: &str| {
        stats
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };

    let mut rows = vec![[
        "TOPIC",
        "PUBLISHED",
        "UNROUTED",
        "DELIVERED",
        "DROPPED",
        "FAILED",
    ]
    .map(str::to_owned)];
    for topic in list("topics") {
        rows.push([
            text(&topic, "topic"),
            text(&topic, "published"),
            text(&topic, "unrouted"),
            text(&topic, "delivered"),
            text(&topic, "dropped"),
            text(&topic, "failed"),
        ]);
    }
    table::print(&rows);
    println!();

    let mut rows = vec![[
        "NAME",
        "KIND",
        "PATTERNS",
        "DELIVERED",
        "DROPPED",
        "FAILED",
        "TIMED OUT",
        "QUEUE",
        "POLICY",
        "P50",
        "P99",
    ]
    .map(str::to_owned)];
    for subscriber in list("subscribers") {
        let patterns: Vec<String> = subscriber
            .get("patterns")
            .and_then(Value::as_array)
            .map(|p| {
                p.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let latency = subscriber.get("latency").unwrap_or(&Value::Null);
        let measured = latency.get("count").and_then(Value::as_u64).unwrap_or(0) > 0;
        let percentile = |key: &str| match latency.get(key).and_then(Value::as_f64) {
            Some(us) if measured => micros(us),
            _ => "-".to_owned(),
        };
        rows.push([
            text(&subscriber, "name"),
            text(&subscriber, "kind"),
            patterns.join(", "),
            text(&subscriber, "delivered"),
            text(&subscriber, "dropped"),
            text(&subscriber, "failed"),
            text(&subscriber, "timed_out"),
            format!(
                "{}/{}",
                text(&subscriber, "queue_depth"),
                text(&subscriber, "capacity")
            ),
            text(&subscriber, "policy"),
            percentile("p50_us"),
            percentile("p99_us"),
        ]);
    }
    table::print(&rows);
    Ok(ExitCode::SUCCESS)
}

/// `value[key]` for a table cell: a string as it is, anything else as JSON, `-` if missing.
fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// A duration in microseconds, in the unit that reads best: `850µs`, `1.2ms`, `3.40s`.
fn micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.1}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}
