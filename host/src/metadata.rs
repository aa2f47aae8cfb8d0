//! The plugin's self-description, copied out of the library into owned Rust values, so that
//! nothing the host keeps points into a library that may be unloaded.

use std::path::Path;

use abi_stable::std_types::RStr;
use plugin_api::ffi::{ConfigField, ConfigType, Dependency, PluginMetadata};
use serde::Serialize;

use crate::error::LoadError;

/// Who a plugin is and what it accepts.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// Unique name.
    pub name: String,
    /// The plugin's version.
    pub version: semver::Version,
    /// The plugin-api version it was built against.
    pub api_version: semver::Version,
    /// One line on what it does.
    pub description: String,
    /// Who wrote it.
    pub author: String,
    /// SPDX licence expression.
    pub license: String,
    /// What it can do.
    pub capabilities: Vec<String>,
    /// Labels.
    pub tags: Vec<String>,
    /// The keys its configuration accepts.
    pub config_schema: Vec<ConfigKey>,
    /// The plugins it calls, which must be in service before it starts (plugin-api 1.3).
    pub dependencies: Vec<Requirement>,
}

/// A plugin this one requires, at a range of versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirement {
    /// The required plugin's name.
    pub name: String,
    /// The versions accepted.
    pub range: semver::VersionReq,
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.range)
    }
}

impl Requirement {
    pub(crate) fn from_ffi(path: &Path, dependency: &Dependency) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::Metadata {
            path: path.to_owned(),
            reason,
        };
        let text = |s: &RStr<'_>| {
            std::str::from_utf8(s.as_rslice().as_slice())
                .map(str::to_owned)
                .map_err(|e| bad(format!("dependency is not UTF-8: {e}")))
        };
        let name = text(&dependency.name)?;
        let range_text = text(&dependency.version_req)?;
        let range = semver::VersionReq::parse(&range_text).map_err(|e| {
            bad(format!(
                "dependency {name} {range_text:?} is not a semver range: {e}"
            ))
        })?;
        Ok(Requirement { name, range })
    }
}

/// One key of a configuration schema.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigKey {
    /// The key.
    pub key: String,
    /// The value's type.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Whether Init fails without it.
    pub required: bool,
    /// Whether its value is secret (shown as `***`).
    pub sensitive: bool,
    /// The default, as JSON text.
    pub default: Option<String>,
    /// What it means.
    pub description: String,
}

impl PluginInfo {
    /// Copies and checks the metadata of the library at `path`.
    pub(crate) fn from_ffi(
        path: &Path,
        meta: &PluginMetadata,
        api_version: semver::Version,
    ) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::Metadata {
            path: path.to_owned(),
            reason,
        };
        let text = |field: &str, s: &RStr<'_>| -> Result<String, LoadError> {
            // Check UTF-8 on the raw bytes: the plugin's `RStr` is only as valid as the plugin,
            // and `RStr::as_str` would assume it.
            std::str::from_utf8(s.as_rslice().as_slice())
                .map(str::to_owned)
                .map_err(|e| bad(format!("{field} is not UTF-8: {e}")))
        };
        let name = text("name", &meta.name)?;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!(
                "plugin name {name:?} must be non-empty and without spaces"
            )));
        }
        let version_text = text("version", &meta.version)?;
        let version = semver::Version::parse(&version_text)
            .map_err(|e| bad(format!("version {version_text:?} is not semver: {e}")))?;
        let list = |field: &str, items: &[RStr<'_>]| -> Result<Vec<String>, LoadError> {
            items.iter().map(|s| text(field, s)).collect()
        };
        let config_schema = meta
            .config_schema
            .iter()
            .map(|f| ConfigKey::from_ffi(path, f, &text))
            .collect::<Result<_, _>>()?;
        Ok(PluginInfo {
            name,
            version,
            api_version,
            description: text("description", &meta.description)?,
            author: text("author", &meta.author)?,
            license: text("license", &meta.license)?,
            capabilities: list("capabilities", meta.capabilities.as_slice())?,
            tags: list("tags", meta.tags.as_slice())?,
            config_schema,
            dependencies: Vec::new(),
        })
    }
}

impl ConfigKey {
    fn from_ffi(
        path: &Path,
        field: &ConfigField,
        text: &dyn Fn(&str, &RStr<'_>) -> Result<String, LoadError>,
    ) -> Result<Self, LoadError> {
        let default = text("config default", &field.default_json)?;
        if !default.is_empty() && serde_json::from_str::<serde_json::Value>(&default).is_err() {
            return Err(text("config key", &field.key).and_then(|key| {
                Err(LoadError::Metadata {
                    path: path.to_owned(),
                    reason: format!("the default of config key {key} is not JSON: {default}"),
                })
            })?);
        }
        Ok(ConfigKey {
            key: text("config key", &field.key)?,
            ty: type_name(field.ty),
            required: field.required,
            sensitive: field.sensitive,
            default: (!default.is_empty()).then_some(default),
            description: text("config description", &field.description)?,
        })
    }
}

fn type_name(ty: ConfigType) -> &'static str {
    ty.as_str()
}
