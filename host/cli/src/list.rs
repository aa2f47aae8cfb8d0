//! `plughost list`: every library in the folder, and whether it would load; with `--verbose`,
//! each library's SHA-256 and signer too.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use plughost::{Host, HostConfig, Integrity, PluginInfo};

use crate::table;

pub(crate) fn list(config: HostConfig, verbose: bool) -> anyhow::Result<ExitCode> {
    let host = Host::new(config)?;
    let settings = host.config();
    let mut rows =
        vec![["NAME", "VERSION", "API", "MODE", "FILE", "EVENTS", "STATUS"].map(str::to_owned)];
    // With --verbose, each row's digest and signature, shown under it.
    let mut integrity: Vec<Option<Integrity>> = vec![None];
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for path in host.discover()? {
        // One read of the file gives the digest, the signature's verdict and the library.
        let (opened, shown) = match host.examine(&path) {
            Ok(examined) => (examined.library, Some(examined.integrity)),
            Err(error) => (Err(error), None),
        };
        integrity.push(shown);
        rows.push(match opened {
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
    if verbose {
        print_verbose(&rows, &integrity);
    } else {
        table::print(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// The table, each library followed by its SHA-256 and signature on lines of their own (a
/// digest is too wide for a column).
fn print_verbose(rows: &[[String; 7]], integrity: &[Option<Integrity>]) {
    let widths = table::widths(rows);
    for (row, integrity) in rows.iter().zip(integrity) {
        table::print_row(row, &widths);
        if let Some(integrity) = integrity {
            println!("    sha256:    {}", integrity.sha256);
            println!("    signature: {}", integrity.signature);
        }
    }
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
