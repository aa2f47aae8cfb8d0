//! `plughost emit TOPIC JSON`: publish one event through a running host (`POST
//! /events/{topic}` of its admin API).

use std::process::ExitCode;

use anyhow::bail;
use serde_json::Value;

use crate::client::{self, Api};

pub(crate) fn emit(topic: &str, data: &str, api: &Api) -> anyhow::Result<ExitCode> {
    let data = client::input(data, "the event's data")?;
    // Checked here first: a typo is told as such, host or no host.
    if let Err(e) = serde_json::from_slice::<Value>(&data) {
        bail!("the event's data is not valid JSON: {e}");
    }
    let path = format!("/events/{}", client::segment(topic));
    let answer = api.post_json(&path, "application/json", data)?;
    match answer.get("queued").and_then(Value::as_u64) {
        Some(0) => println!("published; nobody subscribes to {topic}"),
        Some(1) => println!("queued for 1 subscriber"),
        Some(n) => println!("queued for {n} subscribers"),
        None => bail!("the host's answer does not say how many subscribers: {answer}"),
    }
    Ok(ExitCode::SUCCESS)
}
