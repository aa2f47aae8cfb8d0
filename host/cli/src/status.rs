//! `plughost status`: what a running host serves, in what state, and how its calls go (`GET
//! /plugins` of its admin API).

use std::process::ExitCode;

use serde_json::Value;

use crate::client::Api;
use crate::table::{self, cell, micros};

pub(crate) fn status(json: bool, api: &Api) -> anyhow::Result<ExitCode> {
    let answer = api.get_json("/plugins")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = |key: &str| {
        answer
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };

    let mut rows = vec![[
        "NAME",
        "VERSION",
        "STATE",
        "CALLS/S",
        "ERRORS",
        "P99",
        "RELOADS",
        "LAST REFUSAL",
    ]
    .map(str::to_owned)];
    for plugin in list("plugins") {
        // Calls through the guarded path: none yet shows as `-`, not as zeros.
        let calls = plugin
            .get("calls")
            .filter(|c| c.get("calls").and_then(Value::as_u64).unwrap_or(0) > 0);
        let of_calls = |show: &dyn Fn(&Value) -> Option<String>| {
            calls.and_then(show).unwrap_or_else(|| "-".to_owned())
        };
        rows.push([
            cell(&plugin, "name"),
            cell(&plugin, "version"),
            state(&plugin),
            of_calls(&|c| c.get("per_second")?.as_f64().map(per_second)),
            of_calls(&|c| c.get("errors")?.as_u64().map(|n| n.to_string())),
            of_calls(&|c| c.get("p99_ms")?.as_f64().map(|ms| micros(ms * 1e3))),
            cell(&plugin, "reloads"),
            plugin
                .get("last_refusal")
                .map_or_else(|| "-".to_owned(), |r| cell(r, "reason")),
        ]);
    }
    table::print(&rows);

    let refused = list("refused");
    if !refused.is_empty() {
        println!();
        let mut rows = vec![["REFUSED FILE", "REASON"].map(str::to_owned)];
        for file in refused {
            let path = cell(&file, "file");
            rows.push([
                table::file_name(std::path::Path::new(&path)),
                cell(&file, "reason"),
            ]);
        }
        table::print(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// The plugin's state, with what an operator must not miss while it runs: a health check
/// that failed, a circuit that is not closed.
fn state(plugin: &Value) -> String {
    let mut state = cell(plugin, "state");
    let health = plugin
        .get("health")
        .and_then(|h| h.get("status"))
        .and_then(Value::as_str);
    if let Some(health @ ("degraded" | "unhealthy")) = health {
        state.push_str(&format!(" ({health})"));
    }
    match plugin.get("circuit").and_then(Value::as_str) {
        Some("open") => state.push_str(" (circuit open)"),
        Some("half_open") => state.push_str(" (circuit half-open)"),
        _ => {}
    }
    state
}

/// Calls per second: one decimal while small.
fn per_second(rate: f64) -> String {
    if rate < 100.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.0}")
    }
}
