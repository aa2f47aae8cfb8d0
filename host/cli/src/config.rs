//! `plughost config check`, `plughost enable` and `plughost disable`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use plughost::{Host, HostConfig, LoadError, PluginInfo};

use crate::inspect::{joined, refused_for_grants, source, Grants};

/// `plughost config check`: prints the effective configuration, the start order and each
/// plugin's capabilities (needed, granted, missing) on stdout, warnings, notes and problems on
/// stderr; exit 1 if `plughost run` would refuse anything (a plugin lacking a grant included).
pub(crate) fn check(config: HostConfig) -> anyhow::Result<ExitCode> {
    let host = Host::new(config)?;
    let report = host.check_config()?;
    let capabilities = capabilities(&host)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# effective configuration of {}; secrets shown as ***",
        report.source
    )?;
    writeln!(out, "# start order: {}", report.start_order.join(", "))?;
    // Comments, so that what is printed still reads as the configuration it shows.
    writeln!(out, "# capabilities (needs; grants; missing):")?;
    for line in &capabilities.lines {
        writeln!(out, "#   {line}")?;
    }
    writeln!(out, "{}", report.effective)?;
    let mut err = std::io::stderr().lock();
    for warning in &report.warnings {
        let _ = writeln!(err, "warning: {warning}");
    }
    for note in &capabilities.notes {
        let _ = writeln!(err, "note: {note}");
    }
    if report.problems.is_empty() {
        let _ = writeln!(err, "{}: ok", report.source);
        return Ok(ExitCode::SUCCESS);
    }
    // A plugin lacking a grant is among them: the host refuses to open it.
    for problem in &report.problems {
        let _ = writeln!(err, "error: {problem}");
    }
    Ok(ExitCode::FAILURE)
}

/// Each plugin's capabilities, for `config check`.
struct Capabilities {
    /// One line per plugin, by name: what it needs (and why), what it is granted, what is
    /// missing.
    lines: Vec<String>,
    /// Grants that cover nothing a plugin needs: not an error, but worth a look.
    notes: Vec<String>,
}

/// What every plugin in the folder needs against what the settings grant it. Libraries
/// refused for another reason than their grants are left to the report's problems.
fn capabilities(host: &Host) -> anyhow::Result<Capabilities> {
    let settings = host.config();
    let mut found = Vec::new();
    let mut notes = Vec::new();
    for path in host.discover()? {
        let info: PluginInfo = match host.open(&path) {
            Ok(library) => library.info().clone(),
            Err(LoadError::BadCapability {
                name,
                capability,
                reason,
                ..
            }) => {
                let line = format!("{name}: declares capability {capability:?}: {reason}");
                found.push((name, line));
                continue;
            }
            Err(error) => match refused_for_grants(&error) {
                Some(info) => info.clone(),
                None => continue,
            },
        };
        let grants = Grants::of(&info, &settings);
        let needs: Vec<String> = grants
            .needs
            .iter()
            .map(|need| format!("{} ({})", need.capability, source(need)))
            .collect();
        let mut line = format!(
            "{}: needs {}; grants {}",
            info.name,
            if needs.is_empty() {
                "nothing".to_owned()
            } else {
                needs.join(", ")
            },
            joined(&grants.granted)
        );
        if !grants.missing.is_empty() {
            line.push_str(&format!(
                "; missing {} (refused at load; fix: {})",
                joined(&grants.missing),
                grants.fix()
            ));
        }
        found.push((info.name.clone(), line));
        if !grants.unneeded.is_empty() {
            let place = settings
                .locate(&["plugins", &info.name, "grant"])
                .map(|at| format!("{at}: "))
                .unwrap_or_default();
            notes.push(format!(
                "{place}plugin {} is granted, not declared: {} (it needs nothing these grant)",
                info.name,
                joined(&grants.unneeded)
            ));
        }
    }
    found.sort();
    Ok(Capabilities {
        lines: found.into_iter().map(|(_, line)| line).collect(),
        notes,
    })
}

/// The settings `plughost enable` / `disable` go by: the file (`--config FILE`, else
/// `plughost.toml` in the working folder) read with this process's environment, else as far as
/// it can be without it (values using a variable it lacks left at their defaults: the file is
/// the host's, whose environment may differ). Their `file` is `None` if there is no file to
/// read or it cannot be read; [`set_enabled`] then says why, or the edit does.
pub(crate) fn settings_for_edit(file: Option<&Path>) -> HostConfig {
    let path = file.unwrap_or(Path::new(HostConfig::DEFAULT_FILE));
    HostConfig::load(path)
        .or_else(|_| HostConfig::load_structure(path))
        .unwrap_or_default()
}

/// `plughost enable` / `disable`: sets `plugins.NAME.enabled` in the file (`--config FILE`,
/// else `plughost.toml` in the working folder, which must exist: a host started without a
/// file would not follow one created now), keeping the rest of it as it was. A name that is
/// neither a plugin in the plugins folder nor a table of the file is refused (a typo would
/// otherwise go unnoticed), unless `force`. A running `plughost run` watching the file applies
/// the change.
pub(crate) fn set_enabled(
    file: Option<&Path>,
    name: &str,
    enabled: bool,
    force: bool,
    settings: HostConfig,
) -> anyhow::Result<ExitCode> {
    let verb = if enabled { "enable" } else { "disable" };
    let path = file.unwrap_or(Path::new(HostConfig::DEFAULT_FILE));
    if file.is_none() && std::fs::symlink_metadata(path).is_err() {
        let here = std::env::current_dir().unwrap_or_default();
        anyhow::bail!(
            "plughost {verb} {name}: no {} in the working folder {}; create one there (an \
             empty file will do, and start plughost run with it) or name the file your plughost \
             run reads with --config FILE",
            HostConfig::DEFAULT_FILE,
            here.display()
        );
    }
    // Settings that could not be read are the edit's to report.
    if !force && settings.file.is_some() && !settings.plugins.contains_key(name) {
        let folder = settings.host.plugins_dir.clone();
        let (found, unreadable) = plugins_in(settings)?;
        if !found.iter().any(|n| n == name) {
            let found = if found.is_empty() {
                "none".to_owned()
            } else {
                found.join(", ")
            };
            anyhow::bail!(
                "plughost {verb} {name}: no plugin named {name} in {} (found: {}{}) nor in {}; \
                 check the name, or pass --force to set it anyway",
                folder.join("").display(),
                found,
                unreadable,
                path.display()
            );
        }
    }
    HostConfig::set_enabled_in(path, name, enabled, false)?;
    println!(
        "{verb}d {name} in {}; a plughost run watching this file applies it now",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The names of the plugins in the settings' plugins folder (sorted, each once), and a note
/// naming the files there that would not load (whose names are not known), if any.
fn plugins_in(settings: HostConfig) -> anyhow::Result<(Vec<String>, String)> {
    let host = Host::new(settings)?;
    let files = match host.discover() {
        Ok(files) => files,
        Err(error) => return Ok((Vec::new(), format!("; cannot list it: {error}"))),
    };
    let mut names = Vec::new();
    let mut refused = Vec::new();
    for file in files {
        match host.open(&file) {
            Ok(library) => names.push(library.info().name.clone()),
            Err(_) => refused.push(crate::table::file_name(&file)),
        }
    }
    names.sort();
    names.dedup();
    let note = if refused.is_empty() {
        String::new()
    } else {
        format!("; would not load: {}", refused.join(", "))
    };
    Ok((names, note))
}
