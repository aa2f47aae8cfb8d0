//! `plughost inspect FILE`: validate one library and print its metadata, its integrity, and
//! what it needs against what the settings grant it. The capability report ([`Grants`]) is
//! shared with `list --verbose` and `config check`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use plughost::{
    Capability, CapabilityError, Host, HostConfig, Integrity, LoadError, Need, PluginInfo,
    SignatureStatus,
};

use crate::table;

pub(crate) fn inspect(
    file: &Path,
    json: bool,
    config: Option<&str>,
    settings: HostConfig,
) -> anyhow::Result<ExitCode> {
    // A folder, a named pipe or a device is refused by `open`, saying which.
    if std::fs::metadata(file).is_err() {
        bail!("{}: no such file", file.display());
    }
    let host = Host::new(settings)?;
    let settings = host.config();
    let examined = host.examine(file)?;
    let integrity = examined.integrity;
    // A library refused only for grants it lacks is shown all the same, with what is missing;
    // the refusal follows. Any other refusal is the whole answer.
    let (library, refused) = match examined.library {
        Ok(library) => (Some(library), None),
        Err(error) if refused_for_grants(&error).is_some() => (None, Some(error)),
        Err(error) => {
            // Why it is refused follows; what the file is, is worth knowing all the same.
            if !json {
                print_integrity(&integrity);
            }
            return Err(error.into());
        }
    };
    if let (Some(config), Some(library)) = (config, &library) {
        host.check_init_config(library, config.as_bytes())?;
    }
    let info = match (&library, &refused) {
        (Some(library), _) => library.info(),
        (None, Some(error)) => refused_for_grants(error).expect("refused for grants"),
        (None, None) => unreachable!("opened or refused"),
    };
    let grants = Grants::of(info, &settings);
    if json {
        let mut value = serde_json::to_value(info)?;
        value["sha256"] = integrity.sha256.to_string().into();
        value["signature"] = match &integrity.signature {
            SignatureStatus::Trusted { key_id } => {
                serde_json::json!({"status": "trusted", "key_id": key_id})
            }
            SignatureStatus::Unsigned => serde_json::json!({"status": "unsigned"}),
            other => serde_json::json!({"status": "refused", "reason": reason(other)}),
        };
        value["needs"] = grants
            .needs
            .iter()
            .map(|need| {
                serde_json::json!({
                    "capability": need.capability.to_string(),
                    "source": source(need),
                    "granted": grants.granted_by(&need.capability).is_some(),
                })
            })
            .collect();
        value["grants"] = texts(&grants.granted).into();
        value["missing"] = texts(&grants.missing).into();
        value["granted_not_declared"] = texts(&grants.unneeded).into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_info(info, file, &integrity, &grants, &settings);
    }
    match refused {
        Some(error) => Err(error.into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// What a plugin needs, what the settings grant it, and what of its needs is not granted.
pub(crate) struct Grants {
    /// What it needs and why; empty if a declaration is outside the vocabulary (`error`).
    pub(crate) needs: Vec<Need>,
    /// What `[plugins.NAME] grant` says.
    pub(crate) granted: Vec<Capability>,
    /// What it needs that no grant covers: it would be refused at load.
    pub(crate) missing: Vec<Capability>,
    /// Grants that cover nothing it needs: harmless, but worth a look.
    pub(crate) unneeded: Vec<Capability>,
    /// A declared capability outside the vocabulary: refused whatever is granted.
    pub(crate) error: Option<CapabilityError>,
}

impl Grants {
    /// The report for `info`'s plugin under `settings`.
    pub(crate) fn of(info: &PluginInfo, settings: &HostConfig) -> Self {
        let granted = settings.plugin(&info.name).grant;
        let (needs, error) = match info.needs() {
            Ok(needs) => (needs, None),
            Err(error) => (Vec::new(), Some(error)),
        };
        let missing = info.missing(&granted);
        let unneeded = if error.is_some() {
            Vec::new()
        } else {
            granted
                .iter()
                .filter(|grant| !needs.iter().any(|need| grant.covers(&need.capability)))
                .cloned()
                .collect()
        };
        Grants {
            needs,
            granted,
            missing,
            unneeded,
            error,
        }
    }

    /// The grant that covers `need`, if any.
    pub(crate) fn granted_by(&self, need: &Capability) -> Option<&Capability> {
        self.granted.iter().find(|grant| grant.covers(need))
    }

    /// The `grant = [...]` line that would let it load: what is granted now, then what is
    /// missing (the line replaces the one in the file, if any).
    pub(crate) fn fix(&self) -> String {
        let all: Vec<String> = self
            .granted
            .iter()
            .chain(&self.missing)
            .map(|c| format!("\"{}\"", c.as_grant()))
            .collect();
        format!("grant = [{}]", all.join(", "))
    }
}

/// Who the plugin is, if `error` refused it only for capabilities its grants lack: what the
/// library said of itself (it is never opened again with wider grants to find out: that
/// would run its code with what the operator did not grant).
pub(crate) fn refused_for_grants(error: &LoadError) -> Option<&PluginInfo> {
    match error {
        LoadError::NotGranted { info, .. } => Some(info),
        _ => None,
    }
}

/// Capabilities as text.
pub(crate) fn texts(capabilities: &[Capability]) -> Vec<String> {
    capabilities.iter().map(ToString::to_string).collect()
}

/// Capabilities joined by `, `, or `none`.
pub(crate) fn joined(capabilities: &[Capability]) -> String {
    if capabilities.is_empty() {
        "none".to_owned()
    } else {
        texts(capabilities).join(", ")
    }
}

/// Where a need comes from: `declared`, `dependency`, `emits` or `subscribes`.
pub(crate) fn source(need: &Need) -> String {
    match serde_json::to_value(need.source) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "-".to_owned(),
    }
}

/// Where the grants come from: the settings file, or none.
fn grants_from(settings: &HostConfig) -> String {
    match &settings.file {
        Some(file) => format!("from {}", file.display()),
        None => "no configuration file".to_owned(),
    }
}

/// Why a signature does not count.
fn reason(status: &SignatureStatus) -> String {
    match status {
        SignatureStatus::Refused { reason } => reason.clone(),
        other => other.to_string(),
    }
}

fn print_integrity(integrity: &Integrity) {
    println!("  sha256:       {}", integrity.sha256);
    println!("  signature:    {}", integrity.signature);
}

fn print_info(
    info: &PluginInfo,
    file: &Path,
    integrity: &Integrity,
    grants: &Grants,
    settings: &HostConfig,
) {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    println!("{} {}", info.name, info.version);
    println!("  description:  {}", or_dash(&info.description));
    println!("  file:         {}", file.display());
    print_integrity(integrity);
    println!("  plugin-api:   {}", info.api_version);
    println!("  author:       {}", or_dash(&info.author));
    println!("  license:      {}", or_dash(&info.license));
    println!("  capabilities: {}", or_dash(&info.capabilities.join(", ")));
    println!("  tags:         {}", or_dash(&info.tags.join(", ")));
    let requires: Vec<String> = info.dependencies.iter().map(ToString::to_string).collect();
    println!("  requires:     {}", or_dash(&requires.join(", ")));
    if !info.emits.is_empty() {
        println!("  emits:        {}", info.emits.join(", "));
    }
    if !info.subscribes.is_empty() {
        println!("  subscribes:   {}", info.subscribes.join(", "));
    }
    if info.event_source {
        println!("  event source: yes");
    }
    print_grants(&info.name, grants, settings);
    if info.config_schema.is_empty() {
        println!("  config:       (none)");
        return;
    }
    println!("  config:");
    let mut rows = vec![[
        "    KEY".to_owned(),
        "TYPE".to_owned(),
        "REQUIRED".to_owned(),
        "DEFAULT".to_owned(),
        "DESCRIPTION".to_owned(),
    ]];
    for key in &info.config_schema {
        let default = match (&key.default, key.sensitive) {
            (Some(_), true) => "***".to_owned(),
            (Some(d), false) => d.clone(),
            (None, _) => "-".to_owned(),
        };
        let mut description = or_dash(&key.description);
        if key.sensitive {
            description.push_str(" (sensitive)");
        }
        rows.push([
            format!("    {}", key.key),
            key.ty.to_owned(),
            if key.required { "yes" } else { "no" }.to_owned(),
            default,
            description,
        ]);
    }
    table::print(&rows);
}

/// What plugin `name` needs, each need with where it comes from and the grant that covers it;
/// what is granted; what is missing and the line that grants it.
fn print_grants(name: &str, grants: &Grants, settings: &HostConfig) {
    if let Some(error) = &grants.error {
        println!("  needs:        error: {error}");
    } else if grants.needs.is_empty() {
        println!("  needs:        nothing");
    } else {
        println!("  needs:");
        let mut rows = vec![["    CAPABILITY", "FROM", "GRANTED"].map(str::to_owned)];
        for need in &grants.needs {
            let granted = match grants.granted_by(&need.capability) {
                None => "no".to_owned(),
                Some(grant) if *grant == need.capability => "yes".to_owned(),
                Some(grant) => format!("yes ({grant})"),
            };
            rows.push([format!("    {}", need.capability), source(need), granted]);
        }
        table::print(&rows);
    }
    println!(
        "  grants:       {} ({})",
        joined(&grants.granted),
        grants_from(settings)
    );
    if !grants.missing.is_empty() {
        let file = settings.file.as_deref().map_or_else(
            || HostConfig::DEFAULT_FILE.to_owned(),
            |f| f.display().to_string(),
        );
        println!("  missing:      {}", joined(&grants.missing));
        println!(
            "  fix:          {} under [plugins.{name}] in {file}",
            grants.fix()
        );
    }
    if !grants.unneeded.is_empty() {
        println!("  granted, not declared: {}", joined(&grants.unneeded));
    }
}
