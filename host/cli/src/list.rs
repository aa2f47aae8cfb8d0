//! `plughost list`: every library in the folder, and whether it would load.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use plughost::{Host, HostConfig, PluginInfo};

use crate::table;

pub(crate) fn list(config: HostConfig) -> anyhow::Result<ExitCode> {
    let host = Host::new(config)?;
    let settings = host.config();
    let mut rows =
        vec![["NAME", "VERSION", "API", "MODE", "FILE", "EVENTS", "STATUS"].map(str::to_owned)];
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for path in host.discover()? {
        rows.push(match host.open(&path) {
            Ok(library) => {
                let info = library.info();
                let status = match names.get(&info.name) {
                    Some(first) => format!(
                        "refused: plugin {:?} is already provided by {}",
                        info.name,
                        table::file_name(first)
                    ),
                    None if !settings.plugin(&info.name).enabled => "disabled".to_owned(),
                    None => "ok".to_owned(),
                };
                names
                    .entry(info.name.clone())
                    .or_insert_with(|| library.file().to_owned());
                [
                    info.name.clone(),
                    info.version.to_string(),
                    info.api_version.to_string(),
                    mode(library.is_isolated()),
                    table::file_name(library.file()),
                    events(info),
                    status,
                ]
            }
            Err(error) => [
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                table::file_name(error.path()),
                "-".into(),
                // A probe's refusal says "refused" itself.
                format!(
                    "refused: {}",
                    error.reason().trim_start_matches("refused: ")
                ),
            ],
        });
    }
    table::print(&rows);
    Ok(ExitCode::SUCCESS)
}

/// Where a plugin runs, as the settings' `isolation` says it.
fn mode(isolated: bool) -> String {
    if isolated { "process" } else { "in-process" }.to_owned()
}

/// What a plugin declares about events, short: `emits ticker.tick (source)`, `subscribes
/// ticker.>, user.>`, both joined by `; `, or `-`.
fn events(info: &PluginInfo) -> String {
    /// The first three, then how many more.
    fn few(items: &[String]) -> String {
        let mut shown = items.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        if items.len() > 3 {
            shown.push_str(&format!(" +{} more", items.len() - 3));
        }
        shown
    }
    let mut parts = Vec::new();
    match (info.emits.is_empty(), info.event_source) {
        (false, source) => parts.push(format!(
            "emits {}{}",
            few(&info.emits),
            if source { " (source)" } else { "" }
        )),
        (true, true) => parts.push("source".to_owned()),
        (true, false) => {}
    }
    if !info.subscribes.is_empty() {
        parts.push(format!("subscribes {}", few(&info.subscribes)));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join("; ")
    }
}
