//! The plugin's descriptor, copied out of the loaded library into [`PluginInfo`] and checked
//! on the way: every string must be UTF-8, the name usable, versions and ranges semver, and
//! config defaults JSON. The library's `RStr`s are only as valid as the plugin, so nothing here
//! trusts them.

use std::path::Path;

use abi_stable::std_types::RStr;
use plugin_api::ffi::{ConfigField, Dependency, PluginMetadata};

use crate::error::LoadError;
use crate::plugin_info::{hides_or_reorders, shown, ConfigKey, PluginInfo, Requirement};

/// Copies and checks the metadata of the library at `path`. Its requirements come from
/// another export ([`requirement`]) and are left empty here.
pub(crate) fn plugin_info(
    path: &Path,
    meta: &PluginMetadata,
    api_version: semver::Version,
) -> Result<PluginInfo, LoadError> {
    let name = text(path, "name", &meta.name)?;
    if name.is_empty() || name.chars().any(hides_or_reorders) {
        return Err(bad(
            path,
            format!(
                "plugin name {:?} must be non-empty, without spaces, control or invisible \
                 characters",
                shown(&name)
            ),
        ));
    }
    let version_text = text(path, "version", &meta.version)?;
    let version = semver::Version::parse(&version_text)
        .map_err(|e| bad(path, format!("version {version_text:?} is not semver: {e}")))?;
    let list = |field: &str, items: &[RStr<'_>]| -> Result<Vec<String>, LoadError> {
        items.iter().map(|s| text(path, field, s)).collect()
    };
    let config_schema = meta
        .config_schema
        .iter()
        .map(|field| config_key(path, field))
        .collect::<Result<_, _>>()?;
    Ok(PluginInfo {
        name,
        version,
        api_version,
        description: text(path, "description", &meta.description)?,
        author: text(path, "author", &meta.author)?,
        license: text(path, "license", &meta.license)?,
        capabilities: list("capabilities", meta.capabilities.as_slice())?,
        tags: list("tags", meta.tags.as_slice())?,
        config_schema,
        dependencies: Vec::new(),
        emits: Vec::new(),
        subscribes: Vec::new(),
        event_source: false,
    })
}

/// The event declarations from the plugin's event export, into `info`: every topic and
/// pattern checked, and no topic under the host's own prefix.
pub(crate) fn events(
    path: &Path,
    module: &plugin_api::ffi::EventModule,
    info: &mut PluginInfo,
) -> Result<(), LoadError> {
    use crate::event::topic;
    for raw in module.emits.iter() {
        let emitted = text(path, "emitted topic", raw)?;
        topic::check_topic(&emitted).map_err(|reason| {
            bad(
                path,
                format!("declares a malformed emitted topic: {reason}"),
            )
        })?;
        if emitted.starts_with(topic::HOST_PREFIX) {
            return Err(bad(
                path,
                format!(
                    "declares it emits {emitted:?}: topics under {} are the host's own",
                    topic::HOST_PREFIX
                ),
            ));
        }
        info.emits.push(emitted);
    }
    for raw in module.subscribes.iter() {
        let pattern = text(path, "subscription", raw)?;
        topic::check_pattern(&pattern)
            .map_err(|reason| bad(path, format!("declares a malformed subscription: {reason}")))?;
        info.subscribes.push(pattern);
    }
    info.event_source = module.source;
    Ok(())
}

/// One requirement from the plugin's dependency export.
pub(crate) fn requirement(path: &Path, dependency: &Dependency) -> Result<Requirement, LoadError> {
    let name = text(path, "dependency", &dependency.name)?;
    let range_text = text(path, "dependency", &dependency.version_req)?;
    let range = semver::VersionReq::parse(&range_text).map_err(|e| {
        bad(
            path,
            format!("dependency {name} {range_text:?} is not a semver range: {e}"),
        )
    })?;
    Ok(Requirement { name, range })
}

fn config_key(path: &Path, field: &ConfigField) -> Result<ConfigKey, LoadError> {
    let key = text(path, "config key", &field.key)?;
    let default = text(path, "config default", &field.default_json)?;
    if !default.is_empty() && serde_json::from_str::<serde_json::Value>(&default).is_err() {
        return Err(bad(
            path,
            format!("the default of config key {key} is not JSON: {default}"),
        ));
    }
    Ok(ConfigKey {
        key,
        ty: field.ty.as_str(),
        required: field.required,
        sensitive: field.sensitive,
        default: (!default.is_empty()).then_some(default),
        description: text(path, "config description", &field.description)?,
    })
}

/// A string from the library, checked as UTF-8 on its raw bytes: `RStr::as_str` would assume it.
fn text(path: &Path, field: &str, s: &RStr<'_>) -> Result<String, LoadError> {
    std::str::from_utf8(s.as_rslice().as_slice())
        .map(str::to_owned)
        .map_err(|e| bad(path, format!("{field} is not UTF-8: {e}")))
}

fn bad(path: &Path, reason: String) -> LoadError {
    LoadError::Metadata {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_hide_or_reorder_text_are_refused_and_shown_escaped() {
        for name in [
            "",
            "a b",
            "evil\u{202e}gnp.so",
            "tab\there",
            "zero\u{200b}width",
        ] {
            assert!(
                name.is_empty() || name.chars().any(hides_or_reorders),
                "{name:?}"
            );
        }
        assert!(!"storage-v2_ok.1".chars().any(hides_or_reorders));
        // Shown escaped, so that a message cannot be made to read otherwise.
        assert_eq!(shown("evil\u{202e}gnp.so"), "evil\\u{202e}gnp.so");
        assert_eq!(shown("plain name"), "plain name");
    }
}
