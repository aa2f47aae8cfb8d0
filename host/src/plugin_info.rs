//! Who a plugin is, as plain owned data: copied out of the library when it is loaded
//! (the loader does the copying), so nothing the host keeps points into a
//! library that may be unloaded. No FFI here.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Who a plugin is and what it accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The topics it publishes (plugin-api 1.4).
    #[serde(default)]
    pub emits: Vec<String>,
    /// The topic patterns it receives (plugin-api 1.4).
    #[serde(default)]
    pub subscribes: Vec<String>,
    /// Whether it is an event source, started once it serves (plugin-api 1.4).
    #[serde(default)]
    pub event_source: bool,
}

impl PluginInfo {
    /// What the plugin needs to be granted: the capabilities it declares, then those its
    /// dependencies (`call:PLUGIN`) and events (`events:emit`, `events:subscribe`) imply.
    /// An error names a declared capability outside the vocabulary.
    pub fn needs(&self) -> Result<Vec<crate::Need>, crate::CapabilityError> {
        crate::capability::needs(self)
    }

    /// What of [`needs`](Self::needs) `grants` do not cover; nothing if a declaration is not
    /// of the vocabulary (which [`needs`](Self::needs) reports).
    pub fn missing(&self, grants: &[crate::Capability]) -> Vec<crate::Capability> {
        self.needs()
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.capability)
            .filter(|c| !crate::capability::granted(grants, c))
            .collect()
    }
}

/// A plugin this one requires, at a range of versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A [`ConfigKey`] as text (from a worker's description of its plugin), its type a name
/// still to be matched with the contract's.
#[derive(Deserialize)]
struct ConfigKeyText {
    key: String,
    #[serde(rename = "type")]
    ty: String,
    required: bool,
    sensitive: bool,
    default: Option<String>,
    description: String,
}

impl<'de> Deserialize<'de> for ConfigKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ConfigKeyText::deserialize(d)?
            .try_into()
            .map_err(serde::de::Error::custom)
    }
}

impl TryFrom<ConfigKeyText> for ConfigKey {
    type Error = String;
    fn try_from(text: ConfigKeyText) -> Result<Self, String> {
        use plugin_api::ConfigType;
        let ty = [
            ConfigType::String,
            ConfigType::Integer,
            ConfigType::Float,
            ConfigType::Bool,
            ConfigType::Array,
            ConfigType::Object,
            ConfigType::Any,
        ]
        .into_iter()
        .map(ConfigType::as_str)
        .find(|known| *known == text.ty)
        .ok_or_else(|| format!("unknown config type {:?}", text.ty))?;
        Ok(ConfigKey {
            key: text.key,
            ty,
            required: text.required,
            sensitive: text.sensitive,
            default: text.default,
            description: text.description,
        })
    }
}

/// Whether `c` would hide in, or reorder, the text of a message or listing that shows it:
/// spaces, control characters, zero-width and bidirectional marks (a right-to-left override
/// makes `evil\u{202e}os.gnp` display as `evilpng.so`).
pub(crate) fn hides_or_reorders(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// `text` as it may be shown in a message: characters that would hide or reorder it escaped
/// (`\u{202e}`), everything else as it is.
pub(crate) fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c != ' ' && hides_or_reorders(c)) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c != ' ' && hides_or_reorders(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
impl PluginInfo {
    /// A plugin with this name and version, built against plugin-api 1.3.0, and nothing else:
    /// for tests, which fill in what they are about.
    pub(crate) fn named(name: &str, version: &str) -> PluginInfo {
        PluginInfo {
            name: name.into(),
            version: version.parse().expect("a semver version"),
            api_version: semver::Version::new(1, 3, 0),
            description: String::new(),
            author: String::new(),
            license: String::new(),
            capabilities: vec![],
            tags: vec![],
            config_schema: vec![],
            dependencies: vec![],
            emits: vec![],
            subscribes: vec![],
            event_source: false,
        }
    }
}
