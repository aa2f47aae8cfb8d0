//! `plughost inspect FILE`: validate one library and print its metadata.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use plughost::{Host, HostConfig, Integrity, PluginInfo, SignatureStatus};

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
    let examined = host.examine(file)?;
    let integrity = examined.integrity;
    let library = match examined.library {
        Ok(library) => library,
        Err(error) => {
            // Why it is refused follows; what the file is, is worth knowing all the same.
            if !json {
                print_integrity(&integrity);
            }
            return Err(error.into());
        }
    };
    if let Some(config) = config {
        host.check_init_config(&library, config.as_bytes())?;
    }
    let info = library.info();
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
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_info(info, file, &integrity);
    }
    Ok(ExitCode::SUCCESS)
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

fn print_info(info: &PluginInfo, file: &Path, integrity: &Integrity) {
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
