//! `plughost emit TOPIC JSON`: publish one event through the `plughost run` serving the
//! plugins folder, over its control socket.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::control::{self, Socket, MAX_LINE};

pub(crate) fn emit(topic: &str, data: &str, socket: &Socket) -> anyhow::Result<ExitCode> {
    let text = if data == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(MAX_LINE as u64 + 1)
            .read_to_end(&mut bytes)
            .context("cannot read the event's data from standard input")?;
        if bytes.len() > MAX_LINE {
            bail!("the event's data on standard input is larger than {MAX_LINE} bytes");
        }
        bytes
    } else {
        data.as_bytes().to_vec()
    };
    let data: Value = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("the event's data is not valid JSON: {e}"))?;
    let answer = control::request(
        socket,
        &json!({ "op": "emit", "topic": topic, "data": data }),
    )?;
    match answer.get("queued").and_then(Value::as_u64) {
        Some(0) => println!("published; nobody subscribes to {topic}"),
        Some(1) => println!("queued for 1 subscriber"),
        Some(n) => println!("queued for {n} subscribers"),
        None => bail!("the host's answer does not say how many subscribers: {answer}"),
    }
    Ok(ExitCode::SUCCESS)
}
