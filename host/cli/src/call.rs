//! `plughost call NAME INPUT`: call a plugin of a running host once (`POST
//! /plugins/{name}/execute` of its admin API: through its guarded path, with its timeout,
//! limits and circuit breaker) and print its output as it is.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::client::{self, Api};

pub(crate) fn call(name: &str, input: &str, api: &Api) -> anyhow::Result<ExitCode> {
    let input = client::input(input, "the input")?;
    let path = format!("/plugins/{}/execute", client::segment(name));
    let output = api.post(&path, "application/octet-stream", input)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&output)
        .and_then(|()| out.flush())
        .context("cannot write the output")?;
    Ok(ExitCode::SUCCESS)
}
