//! `plughost list`: every library in the folder, and whether it would load; with `--verbose`,
//! each library's SHA-256, signer and grants too: what code a host started from this folder
//! runs, and who approved it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use plughost::{Host, HostConfig, Integrity, LoadError, PluginInfo, SignatureStatus};

use crate::inspect::{joined, refused_for_grants, Grants};
use crate::table;

/// What `--verbose` shows under a library's row.
struct Verbose {
    integrity: Integrity,
    /// Its grants against its needs, if its library could be read.
    grants: Option<Grants>,
}

pub(crate) fn list(config: HostConfig, verbose: bool) -> anyhow::Result<ExitCode> {
    let host = Host::new(config)?;
    let settings = host.config();
    let mut rows =
        vec![["NAME", "VERSION", "API", "MODE", "FILE", "EVENTS", "STATUS"].map(str::to_owned)];
    // With --verbose, each row's digest, signer and grants, shown under it.
    let mut verbose_rows: Vec<Option<Verbose>> = vec![None];
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for path in host.discover()? {
        // One read of the file gives the digest, the signature's verdict and the library.
        let (opened, integrity) = match host.examine(&path) {
            Ok(examined) => (examined.library, Some(examined.integrity)),
            Err(error) => (Err(error), None),
        };
        // A library refused only for grants it lacks is still named, with what it lacks.
        let (library, refusal) = match opened {
            Ok(library) => (Some(library), None),
            Err(error) => match refused_for_grants(&error) {
                Some(_) => (None, Some(error)),
                None => {
                    verbose_rows.push(integrity.map(|integrity| Verbose {
                        integrity,
                        grants: None,
                    }));
                    rows.push([
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        table::file_name(error.path()),
                        "-".into(),
                        refused(&error),
                    ]);
                    continue;
                }
            },
        };
        let info = match (&library, &refusal) {
            (Some(library), _) => library.info(),
            (None, Some(error)) => refused_for_grants(error).expect("refused for grants"),
            (None, None) => unreachable!("opened or refused"),
        };
        verbose_rows.push(integrity.map(|integrity| Verbose {
            integrity,
            grants: Some(Grants::of(info, &settings)),
        }));
        let status = match (&refusal, names.get(&info.name)) {
            (Some(error), _) => refused(error),
            (None, Some(first)) => format!(
                "refused: plugin {:?} is already provided by {}",
                info.name,
                table::file_name(first)
            ),
            (None, None) if !settings.plugin(&info.name).enabled => "disabled".to_owned(),
            (None, None) => "ok".to_owned(),
        };
        // Where it would run: a plugin refused for its grants was never opened to find out,
        // so its settings say.
        let (isolated, file) = match (&library, &refusal) {
            (Some(library), _) => (library.is_isolated(), library.file().to_owned()),
            (None, _) => (
                settings.isolation_of(&info.name) == plughost::Isolation::Process,
                path.clone(),
            ),
        };
        if refusal.is_none() {
            names
                .entry(info.name.clone())
                .or_insert_with(|| file.clone());
        }
        rows.push([
            info.name.clone(),
            info.version.to_string(),
            info.api_version.to_string(),
            mode(isolated),
            table::file_name(&file),
            events(info),
            status,
        ]);
    }
    if verbose {
        print_verbose(&rows, &verbose_rows);
    } else {
        table::print(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// The table, each library followed by its SHA-256, signer and grants on lines of their own
/// (a digest is too wide for a column).
fn print_verbose(rows: &[[String; 7]], verbose: &[Option<Verbose>]) {
    let widths = table::widths(rows);
    for (row, shown) in rows.iter().zip(verbose) {
        table::print_row(row, &widths);
        let Some(shown) = shown else {
            continue;
        };
        println!("    sha256:    {}", shown.integrity.sha256);
        println!("    signer:    {}", signer(&shown.integrity.signature));
        if let Some(grants) = &shown.grants {
            println!("    grants:    {}", joined(&grants.granted));
            if !grants.missing.is_empty() {
                println!("    missing:   {}", joined(&grants.missing));
            }
        }
    }
}

/// Who approved a library: the trusted key that signed it, or `unsigned`, with why a
/// signature beside it does not count.
fn signer(signature: &SignatureStatus) -> String {
    match signature {
        SignatureStatus::Trusted { key_id } => format!("{key_id} (trusted key)"),
        SignatureStatus::Unsigned => "unsigned".to_owned(),
        other => format!("unsigned ({other})"),
    }
}

/// A refusal as a status cell.
fn refused(error: &LoadError) -> String {
    // A probe's refusal says "refused" itself.
    format!(
        "refused: {}",
        error.reason().trim_start_matches("refused: ")
    )
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
