//! `plughost events`: the event bus's counts of a running host, per topic and per subscriber
//! (`GET /events/stats` of its admin API).

use std::process::ExitCode;

use serde_json::Value;

use crate::client::Api;
use crate::table::{self, cell as text, micros};

pub(crate) fn events(json: bool, api: &Api) -> anyhow::Result<ExitCode> {
    let stats = &api.get_json("/events/stats")?;
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
