//! `plughost config check`, `plughost enable` and `plughost disable`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use plughost::{Host, HostConfig};

/// `plughost config check`: prints the effective configuration and the start order on stdout,
/// warnings and problems on stderr; exit 1 if `plughost run` would refuse anything.
pub(crate) fn check(config: HostConfig) -> anyhow::Result<ExitCode> {
    let report = Host::new(config)?.check_config()?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# effective configuration of {}; secrets shown as ***",
        report.source
    )?;
    writeln!(out, "# start order: {}", report.start_order.join(", "))?;
    writeln!(out, "{}", report.effective)?;
    let mut err = std::io::stderr().lock();
    for warning in &report.warnings {
        let _ = writeln!(err, "warning: {warning}");
    }
    if report.problems.is_empty() {
        let _ = writeln!(err, "{}: ok", report.source);
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        let _ = writeln!(err, "error: {problem}");
    }
    Ok(ExitCode::FAILURE)
}

/// `plughost enable` / `disable`: sets `plugins.NAME.enabled` in the file (`plughost.toml` in
/// the working folder, created if missing, unless `--config` names one), keeping the rest of
/// it as it was. A running `plughost run` watching the file applies the change.
pub(crate) fn set_enabled(
    file: Option<&Path>,
    name: &str,
    enabled: bool,
) -> anyhow::Result<ExitCode> {
    let path = file.unwrap_or(Path::new(HostConfig::DEFAULT_FILE));
    HostConfig::set_enabled_in(path, name, enabled, file.is_none())?;
    println!(
        "{} {name} in {}; a running plughost applies it now",
        if enabled { "enabled" } else { "disabled" },
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
