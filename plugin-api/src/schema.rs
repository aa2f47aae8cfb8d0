//! A configuration checked against a plugin's schema ([`ConfigField`]s): required keys present,
//! values of the declared type, defaults filled in, unknown keys reported. The one rule both
//! sides apply: the host before every Init, and [`testing`](crate::testing) in a plugin's own
//! tests, so a test fails exactly where a host would refuse.

use serde_json::{Map, Value};

use crate::ffi::ConfigField;

/// One key of a schema, as the checks read it (from a [`ConfigField`], or from the host's copy
/// of a descriptor).
#[derive(Debug, Clone, Copy)]
pub struct SchemaKey<'a> {
    /// The key.
    pub key: &'a str,
    /// Its type's name ([`ConfigType::as_str`](crate::ConfigType::as_str)).
    pub ty: &'a str,
    /// Whether it must be given.
    pub required: bool,
    /// Whether its value is secret: never quoted in a message.
    pub sensitive: bool,
    /// Its default as JSON text; empty for none.
    pub default_json: &'a str,
}

impl<'a> From<&'a ConfigField> for SchemaKey<'a> {
    fn from(field: &'a ConfigField) -> Self {
        SchemaKey {
            key: field.key.as_str(),
            ty: field.ty.as_str(),
            required: field.required,
            sensitive: field.sensitive,
            default_json: field.default_json.as_str(),
        }
    }
}

/// A configuration that fits its schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    /// What Init gets: the given keys plus the defaults of missing ones.
    pub config: Map<String, Value>,
    /// Keys the schema does not know (passed on all the same: the plugin has the last word).
    pub unknown: Vec<String>,
}

/// A key that does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key.
    pub key: String,
    /// What is wrong: "is required (integer) but missing", "must be an integer, found a
    /// string (\"lots\")".
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config key `{}` {}", self.key, self.reason)
    }
}

/// Checks `given` against `schema` (an empty schema accepts anything). `origin(key)` says
/// where the value of `key` came from when not from the configuration itself (`"value from
/// ${TOKEN}"`): a problem with it then says so instead of quoting it, as it may be a secret.
pub fn fit(
    schema: &[SchemaKey<'_>],
    given: &Map<String, Value>,
    origin: &dyn Fn(&str) -> Option<String>,
) -> Result<Fitted, Problem> {
    let mut config = given.clone();
    for key in schema {
        match given.get(key.key) {
            Some(value) => {
                if !fits(key.ty, value) {
                    let found = match origin(key.key) {
                        Some(origin) => format!("{} ({origin})", describe(value, true)),
                        None => describe(value, key.sensitive),
                    };
                    return Err(Problem {
                        key: key.key.to_owned(),
                        reason: format!("must be {}, found {found}", with_article(key.ty)),
                    });
                }
            }
            None if key.required => {
                return Err(Problem {
                    key: key.key.to_owned(),
                    reason: format!("is required ({}) but missing", key.ty),
                });
            }
            None => {
                // A default that is not JSON was refused when the descriptor was read.
                if let Ok(value) = serde_json::from_str(key.default_json) {
                    config.insert(key.key.to_owned(), value);
                }
            }
        }
    }
    let unknown = if schema.is_empty() {
        Vec::new()
    } else {
        given
            .keys()
            .filter(|k| !schema.iter().any(|s| s.key == k.as_str()))
            .cloned()
            .collect()
    };
    Ok(Fitted { config, unknown })
}

fn fits(ty: &str, value: &Value) -> bool {
    match ty {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "float" => value.is_number(),
        "bool" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

fn with_article(ty: &str) -> String {
    match ty {
        "integer" | "array" | "object" => format!("an {ty}"),
        "float" => "a number".into(),
        "bool" => "true or false".into(),
        other => format!("a {other}"),
    }
}

fn describe(value: &Value, sensitive: bool) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    };
    if sensitive || matches!(value, Value::Array(_) | Value::Object(_)) {
        kind.to_owned()
    } else {
        format!("{kind} ({value})")
    }
}
