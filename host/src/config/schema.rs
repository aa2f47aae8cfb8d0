//! A plugin's configuration checked against the schema in its descriptor, before Init:
//! required keys present, values of the declared type, defaults filled in, unknown keys
//! reported (and still passed on: the plugin has the last word). Sensitive values are masked
//! wherever the host shows a configuration.

use plugin_api::schema::SchemaKey;
use serde_json::{Map, Value};

use crate::plugin_info::PluginInfo;

/// What a sensitive value is shown as.
pub(crate) const MASK: &str = "***";

pub(crate) use plugin_api::schema::{Fitted, Problem};

/// Checks `given` against `plugin`'s schema (a plugin without one accepts anything), for a
/// configuration some of whose values may have come from elsewhere:
/// `origin(key)` says where the value of `key` came from (`"value from ${TOKEN}"`), and a
/// problem with that value says so instead of quoting it, since it may be a secret. For
/// values read from the environment, [`HostConfig::config_origin`](super::HostConfig::config_origin)
/// tells.
pub(crate) fn fit_with(
    plugin: &PluginInfo,
    given: &Map<String, Value>,
    origin: &dyn Fn(&str) -> Option<String>,
) -> Result<Fitted, Problem> {
    // The rule itself lives with the contract, which a plugin's own tests use too.
    let schema: Vec<SchemaKey<'_>> = plugin
        .config_schema
        .iter()
        .map(|key| SchemaKey {
            key: &key.key,
            ty: key.ty,
            required: key.required,
            sensitive: key.sensitive,
            default_json: key.default.as_deref().unwrap_or(""),
        })
        .collect();
    plugin_api::schema::fit(&schema, given, origin)
}

/// `config` with every sensitive value of `plugin`'s schema replaced by [`MASK`], whatever
/// its type: a number, array or table is shown as `"***"` too.
pub(crate) fn masked(plugin: &PluginInfo, config: &Map<String, Value>) -> Map<String, Value> {
    let mut shown = config.clone();
    for key in plugin.config_schema.iter().filter(|k| k.sensitive) {
        if let Some(value) = shown.get_mut(&key.key) {
            *value = Value::String(MASK.into());
        }
    }
    shown
}

/// Every string and number inside the sensitive values of `config` (a sensitive array or
/// table is secret all through), to scrub from messages. Longest first, so that a secret
/// containing another is masked whole.
pub(crate) fn secrets(plugin: &PluginInfo, config: &Map<String, Value>) -> Vec<String> {
    let mut found = Vec::new();
    for key in plugin.config_schema.iter().filter(|k| k.sensitive) {
        if let Some(value) = config.get(&key.key) {
            collect_secrets(value, &mut found);
        }
    }
    found.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    found.dedup();
    found
}

fn collect_secrets(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::String(s) if !s.is_empty() => found.push(s.clone()),
        Value::Number(n) => found.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| collect_secrets(v, found)),
        Value::Object(map) => map.values().for_each(|v| collect_secrets(v, found)),
        _ => {}
    }
}

/// `message` with every secret replaced by [`MASK`]: a plugin's own error message may quote
/// the value it was given.
pub(crate) fn scrub(message: &str, secrets: &[String]) -> String {
    secrets.iter().fold(message.to_owned(), |text, secret| {
        text.replace(secret.as_str(), MASK)
    })
}

impl super::HostConfig {
    /// Plugin `name`'s `config` as the settings give it, safe to show: the values of keys its
    /// schema marks sensitive (`info`, when its library was opened) and every value that came
    /// from the environment (`${VAR}`) shown as `"***"`.
    pub fn masked_config(
        &self,
        name: &str,
        info: Option<&crate::PluginInfo>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let config = self.plugin(name).config;
        let mut shown = match info {
            Some(info) => masked(info, &config),
            // Without its schema (its library not opened: disabled, refused), any key may be
            // a secret.
            None => config
                .into_iter()
                .map(|(key, _)| (key, serde_json::Value::String(MASK.into())))
                .collect(),
        };
        for keys in self.from_env.keys() {
            if let [plugins, plugin, table, key, ..] = keys.as_slice() {
                if plugins == "plugins" && plugin == name && table == "config" {
                    if let Some(value) = shown.get_mut(key) {
                        *value = serde_json::Value::String(MASK.into());
                    }
                }
            }
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin_info::ConfigKey;
    use serde_json::json;

    fn fit(plugin: &PluginInfo, given: &Map<String, Value>) -> Result<Fitted, Problem> {
        fit_with(plugin, given, &|_| None)
    }

    fn plugin() -> PluginInfo {
        let key =
            |key: &str, ty: &'static str, required, sensitive, default: Option<&str>| ConfigKey {
                key: key.into(),
                ty,
                required,
                sensitive,
                default: default.map(Into::into),
                description: String::new(),
            };
        PluginInfo {
            config_schema: vec![
                key("path", "string", true, false, None),
                key("capacity", "integer", false, false, Some("100")),
                key("token", "string", false, true, None),
            ],
            ..PluginInfo::named("storage", "1.3.0")
        }
    }

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn fills_defaults_and_reports_unknown_keys() {
        let checked = fit(&plugin(), &map(json!({"path": "/d", "colour": "red"}))).unwrap();
        assert_eq!(
            Value::Object(checked.config),
            json!({"path": "/d", "capacity": 100, "colour": "red"})
        );
        assert_eq!(checked.unknown, ["colour"]);
    }

    #[test]
    fn refuses_missing_required_and_wrong_types() {
        let missing = fit(&plugin(), &Map::new()).unwrap_err();
        assert_eq!(missing.key, "path");
        assert_eq!(missing.reason, "is required (string) but missing");
        let wrong = fit(&plugin(), &map(json!({"path": "/d", "capacity": "lots"}))).unwrap_err();
        assert_eq!(wrong.key, "capacity");
        assert_eq!(
            wrong.reason,
            r#"must be an integer, found a string ("lots")"#
        );
    }

    #[test]
    fn values_from_elsewhere_are_named_not_quoted() {
        let given = map(json!({"path": "/d", "capacity": "s3cret"}));
        let origin = |key: &str| (key == "capacity").then(|| "value from ${CAP}".to_owned());
        let wrong = fit_with(&plugin(), &given, &origin).unwrap_err();
        assert_eq!(
            wrong.reason,
            "must be an integer, found a string (value from ${CAP})"
        );
    }

    #[test]
    fn sensitive_numbers_arrays_and_tables_are_masked_and_scrubbed() {
        let config = map(json!({
            "path": "/d",
            "token": {"user": "admin-name", "pin": 4242, "keys": ["key-one", "key-one-two"]},
        }));
        assert_eq!(masked(&plugin(), &config)["token"], "***");
        assert_eq!(masked(&plugin(), &config)["path"], "/d");
        let found = secrets(&plugin(), &config);
        assert_eq!(found, ["key-one-two", "admin-name", "key-one", "4242"]);
        assert_eq!(
            scrub("admin-name used key-one-two, then key-one and 4242", &found),
            "*** used ***, then *** and ***"
        );
        let number = map(json!({"path": "/d", "token": 987654}));
        assert_eq!(masked(&plugin(), &number)["token"], "***");
        assert_eq!(scrub("pin 987654", &secrets(&plugin(), &number)), "pin ***");
    }

    #[test]
    fn never_quotes_a_sensitive_value() {
        let wrong = fit(&plugin(), &map(json!({"path": "/d", "token": 12345}))).unwrap_err();
        assert!(!wrong.reason.contains("12345"), "{}", wrong.reason);
        let config = map(json!({"path": "/d", "token": "hunter2"}));
        assert_eq!(masked(&plugin(), &config)["token"], "***");
        let secrets = secrets(&plugin(), &config);
        assert_eq!(scrub("bad token hunter2", &secrets), "bad token ***");
    }
}
