//! Step 2 of reading `plughost.toml`: `${VAR}` and `${VAR:-default}` in string values,
//! replaced from the environment; `$${` is a literal `${`.

use std::collections::HashMap;

/// An environment: the value of a variable, if set.
pub(super) type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// Step 2: `${VAR}` substitution over the whole file.
pub(super) struct Substitution<'a> {
    /// The environment; `None` when it is not read, and values that use it are left out.
    lookup: Option<&'a Lookup<'a>>,
    /// The values that used it, by key path: their variables.
    pub(super) from_env: HashMap<Vec<String>, Vec<String>>,
}

/// A failed substitution: where (key path) and why.
type Failed = (Vec<String>, ExpandError);

impl<'a> Substitution<'a> {
    /// Substitutes from `lookup`; `None` leaves out the values that use it.
    pub(super) fn new(lookup: Option<&'a Lookup<'a>>) -> Self {
        Substitution {
            lookup,
            from_env: HashMap::new(),
        }
    }

    pub(super) fn table(
        &mut self,
        table: &mut toml::Table,
        path: &mut Vec<String>,
    ) -> Result<(), Failed> {
        let mut left_out = Vec::new();
        for (key, value) in table.iter_mut() {
            path.push(key.clone());
            if self.value(value, path)? {
                left_out.push(key.clone());
            }
            path.pop();
        }
        for key in left_out {
            table.remove(&key);
        }
        Ok(())
    }

    /// Substitutes inside `value`; `true` when the value is to be left out because it uses
    /// the environment, which is not read (its key then reads as absent: nothing to check).
    fn value(&mut self, value: &mut toml::Value, path: &mut Vec<String>) -> Result<bool, Failed> {
        match value {
            toml::Value::String(text) => {
                // Without an environment every variable reads as empty: this still finds an
                // unclosed `${`, and which variables the value uses.
                let empty: &Lookup<'_> = &|_| Some(String::new());
                let expanded = expand_string(text, self.lookup.unwrap_or(empty))
                    .map_err(|e| (path.clone(), e))?;
                if expanded.variables.is_empty() {
                    *text = expanded.text;
                    return Ok(false);
                }
                if self.lookup.is_none() {
                    return Ok(true);
                }
                *text = expanded.text;
                self.from_env.insert(path.clone(), expanded.variables);
                Ok(false)
            }
            toml::Value::Array(items) => {
                // One item left out would shift the others: the whole array goes.
                let mut left_out = false;
                for (i, item) in items.iter_mut().enumerate() {
                    path.push(i.to_string());
                    left_out |= self.value(item, path)?;
                    path.pop();
                }
                Ok(left_out)
            }
            toml::Value::Table(table) => self.table(table, path).map(|()| false),
            _ => Ok(false),
        }
    }
}

/// Why [`expand_string`] could not substitute a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(super) enum ExpandError {
    /// `${VAR}` without a default names a variable that is not set.
    #[error("environment variable {0} is not set")]
    Unset(String),
    /// A `${` is not closed by a `}`.
    #[error("`${{` at byte {at} is not closed")]
    Unclosed {
        /// The byte offset of the `${` in the string.
        at: usize,
    },
}

/// A string after substitution, and the variables it used.
struct Expanded {
    text: String,
    variables: Vec<String>,
}

/// Replaces `${VAR}` and `${VAR:-default}` in `text` with `lookup(VAR)`; the default applies
/// when the variable is unset or empty, as in the shell. `$${` is a literal `${`. An unset
/// variable without a default is an [`ExpandError::Unset`]; an unclosed `${` an
/// [`ExpandError::Unclosed`].
fn expand_string(text: &str, lookup: &Lookup<'_>) -> Result<Expanded, ExpandError> {
    let mut variables = Vec::new();
    if !text.contains("${") {
        return Ok(Expanded {
            text: text.to_owned(),
            variables,
        });
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body.find('}').ok_or(ExpandError::Unclosed {
                at: text.len() - after.len(),
            })?;
            let (name, default) = match body[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&body[..end], None),
            };
            match (
                lookup(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => return Err(ExpandError::Unset(name.to_owned())),
            }
            if !variables.iter().any(|v| v == name) {
                variables.push(name.to_owned());
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(Expanded {
        text: out,
        variables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
        expand_string(text, &lookup).map(|expanded| expanded.text)
    }

    #[test]
    fn expands_variables_with_and_without_defaults() {
        let lookup = |name: &str| match name {
            "HOME" => Some("/home/me".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(expand("${HOME}/x", lookup).unwrap(), "/home/me/x");
        assert_eq!(expand("${NOPE:-fallback}", lookup).unwrap(), "fallback");
        assert_eq!(expand("${EMPTY:-fallback}", lookup).unwrap(), "fallback");
        assert_eq!(expand("${EMPTY}", lookup).unwrap(), "");
        assert_eq!(
            expand("$${HOME} costs $5", lookup).unwrap(),
            "${HOME} costs $5"
        );
        assert_eq!(
            expand("${NOPE}", lookup).unwrap_err(),
            ExpandError::Unset("NOPE".into())
        );
        assert_eq!(
            expand("ab${HOME", lookup).unwrap_err(),
            ExpandError::Unclosed { at: 2 }
        );
    }
}
