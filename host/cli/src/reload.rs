//! `plughost reload NAME`: a running host re-reads the plugin's file now (`POST
//! /plugins/{name}/reload` of its admin API). A refused file leaves the running version
//! serving; the command then exits 1 with the reason.

use std::process::ExitCode;

use crate::client::{self, Api};
use crate::table::cell;

pub(crate) fn reload(name: &str, json: bool, api: &Api) -> anyhow::Result<ExitCode> {
    let path = format!("/plugins/{}/reload", client::segment(name));
    let answer = api.post_json(&path, "application/json", Vec::new())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!(
            "reloaded {name}: {} {}",
            cell(&answer, "version"),
            cell(&answer, "state")
        );
    }
    Ok(ExitCode::SUCCESS)
}
