//! Step 1 and 3 of reading `plughost.toml`: TOML with the place of every key kept, and the
//! settings read from it with serde, each error mapped back to its line and column.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::env::{ExpandError, Lookup, Substitution};
use super::{AdminSettings, ConfigError, HostConfig, HostSettings, Location, PluginSettings};
use crate::plugin_info::shown;

#[derive(Debug, Clone)]
pub(super) struct Spans {
    pub(super) key: Range<usize>,
    value: Range<usize>,
}

/// The file as serde reads it, after substitution.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawFile {
    host: HostSettings,
    plugins: BTreeMap<String, PluginSettings>,
    admin: AdminSettings,
}

/// Reads `text`, the content of `path`, with `lookup` as the environment; `None` leaves out
/// the values that use it ([`HostConfig::check_structure`]).
pub(super) fn read(
    path: &Path,
    text: &str,
    lookup: Option<&Lookup<'_>>,
) -> Result<HostConfig, ConfigError> {
    let source = Source::new(text);
    let located = |span: Option<Range<usize>>, message: String| ConfigError::Invalid {
        at: source.locate(path, span.map_or(0, |s| s.start)),
        message,
    };
    let document = DeTable::parse(text).map_err(|e| located(e.span(), e.message().into()))?;
    let mut spans = HashMap::new();
    index(document.get_ref(), &mut Vec::new(), &mut spans);

    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| located(e.span(), e.message().into()))?;
    let mut substitution = Substitution::new(lookup);
    substitution
        .table(&mut table, &mut Vec::new())
        .map_err(|(keys, error)| {
            let at = source.locate(path, value_offset(&spans, &keys));
            let key = shown(&keys.join(".")).into_owned();
            match error {
                ExpandError::Unset(variable) => ConfigError::Env { at, key, variable },
                ExpandError::Unclosed { .. } => ConfigError::UnclosedVariable { at, key },
            }
        })?;
    let from_env = substitution.from_env;

    let raw: RawFile =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            // Keys with the positions in arrays (to find the item's place), and without (to
            // name the key).
            let placed: Vec<String> = e
                .path()
                .iter()
                .filter_map(|segment| match segment {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                    _ => None,
                })
                .collect();
            let keys: Vec<String> = e
                .path()
                .iter()
                .filter_map(|segment| match segment {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    _ => None,
                })
                .collect();
            let error = e.into_inner();
            let unknown_key = error.message().starts_with("unknown field");
            // The deepest key the file has; for a wrong type, its value.
            let span = (0..=placed.len()).rev().find_map(|n| {
                spans.get(&placed[..n]).map(|s| {
                    if n == placed.len() && !unknown_key {
                        s.value.clone()
                    } else {
                        s.key.clone()
                    }
                })
            });
            let mut message = error.message().to_owned();
            if !unknown_key {
                // serde quotes the value it refused, which may be a secret from the
                // environment: such a message names the variables instead.
                let variables = from_env.get(&keys).or_else(|| {
                    from_env
                        .iter()
                        .find(|(at, _)| !keys.is_empty() && at.starts_with(&keys))
                        .map(|(_, variables)| variables)
                });
                if let Some(variables) = variables {
                    message = without_value(&message, variables);
                }
            }
            if !keys.is_empty() {
                message = format!("{}: {message}", shown(&keys.join(".")));
            }
            located(span, message)
        })?;
    let mut host = raw.host;
    // Values that parse but cannot work: every call would be "stuck", every load refused.
    let unworkable = [
        (
            "init_timeout",
            host.init_timeout.is_zero(),
            "must be longer than 0",
        ),
        (
            "check_timeout",
            host.check_timeout.is_zero(),
            "must be longer than 0",
        ),
        (
            "probe_timeout",
            host.probe_timeout.is_zero(),
            "must be longer than 0",
        ),
        ("max_pinned", host.max_pinned == 0, "must be at least 1"),
        ("max_crashes", host.max_crashes == 0, "must be at least 1"),
        (
            "crash_window",
            host.crash_window.is_zero(),
            "must be longer than 0",
        ),
    ];
    if let Some((key, _, rule)) = unworkable.iter().find(|(_, bad, _)| *bad) {
        let keys = ["host".to_owned(), (*key).to_owned()];
        let span = spans.get(&keys[..]).map(|s| s.value.clone());
        return Err(located(span, format!("host.{key}: {rule}")));
    }
    // The same for each plugin's event settings: a queue of none, a handler with no time.
    for (name, plugin) in &raw.plugins {
        let unworkable = [
            ("event_queue", plugin.event_queue == 0, "must be at least 1"),
            (
                "event_queue",
                plugin.event_queue > MAX_EVENT_QUEUE,
                "must be at most 1000000",
            ),
            (
                "event_timeout",
                plugin.event_timeout.is_zero(),
                "must be longer than 0",
            ),
        ];
        if let Some((key, _, rule)) = unworkable.iter().find(|(_, bad, _)| *bad) {
            let keys = ["plugins".to_owned(), name.clone(), (*key).to_owned()];
            let span = spans.get(&keys[..]).map(|s| s.value.clone());
            return Err(located(span, format!("plugins.{name}.{key}: {rule}")));
        }
    }
    if host.max_event_size.0 > MAX_EVENT_SIZE {
        let keys = ["host".to_owned(), "max_event_size".to_owned()];
        let span = spans.get(&keys[..]).map(|s| s.value.clone());
        return Err(located(
            span,
            "host.max_event_size: must be at most 64MiB".to_owned(),
        ));
    }
    if host.require_signatures && host.trusted_keys.is_empty() {
        // Every library would be refused: surely a key was forgotten.
        let keys = ["host".to_owned(), "require_signatures".to_owned()];
        let span = spans.get(&keys[..]).map(|s| s.value.clone());
        return Err(located(
            span,
            "host.require_signatures: needs at least one key in host.trusted_keys (the \
             `RWQ...` line that `plughost keygen` or `minisign -G` prints)"
                .to_owned(),
        ));
    }
    check_admin(&raw.admin, &spans, &from_env, &located)?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut plugins = raw.plugins;
    for plugin in plugins.values_mut() {
        let grants = std::mem::take(&mut plugin.grant);
        plugin.grant = grants.into_iter().map(|g| g.resolve(base)).collect();
    }
    host.plugins_dir = base.join(&host.plugins_dir);
    host.shadow_dir = host.shadow_dir.map(|dir| base.join(dir));
    host.cgroup = host.cgroup.map(|dir| base.join(dir));
    if let super::ProbeSetting::Program(program) = &mut host.probe {
        // A path with a folder in it is taken from the file's folder; a bare name is looked up
        // on PATH, as a shell would.
        if program.components().count() > 1 {
            *program = base.join(&*program);
        }
    }
    Ok(HostConfig {
        file: Some(path.to_owned()),
        file_host: host.clone(),
        host,
        plugins,
        file_admin: raw.admin.clone(),
        admin: raw.admin,
        spans,
        from_env,
        source,
    })
}

/// The `[admin]` rules: no empty token, and no address beyond loopback without a token
/// ([`AdminSettings::check_exposure`], the one home of that rule), each pointing at its value.
fn check_admin(
    admin: &AdminSettings,
    spans: &HashMap<Vec<String>, Spans>,
    from_env: &HashMap<Vec<String>, Vec<String>>,
    located: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let at = |key: &str| {
        let keys = ["admin".to_owned(), key.to_owned()];
        spans.get(&keys[..]).map(|s| s.value.clone())
    };
    if admin.token.as_ref().is_some_and(|t| t.expose().is_empty()) {
        // Named by its variables if it came from the environment: an unset-but-empty
        // variable is the usual cause.
        let keys = ["admin".to_owned(), "token".to_owned()];
        let origin = from_env
            .get(&keys[..])
            .map_or_else(String::new, |variables| {
                let variables: Vec<String> =
                    variables.iter().map(|v| format!("${{{v}}}")).collect();
                format!(" (value from {})", variables.join(", "))
            });
        return Err(located(
            at("token"),
            format!("admin.token{origin}: {}", super::admin::EMPTY_TOKEN),
        ));
    }
    if let Some(listen) = admin.listen {
        admin
            .check_exposure(listen)
            .map_err(|reason| located(at("listen"), format!("admin.listen: {reason}")))?;
    }
    Ok(())
}

/// The longest event queue a plugin may ask for: queues hold events in memory.
const MAX_EVENT_QUEUE: usize = 1_000_000;
/// The largest `max_event_size`: an event is copied once per isolated subscriber.
const MAX_EVENT_SIZE: u64 = 64 * 1024 * 1024;

/// Records the spans of every key under `table`, by key path.
fn index(table: &DeTable<'_>, path: &mut Vec<String>, out: &mut HashMap<Vec<String>, Spans>) {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        out.insert(
            path.clone(),
            Spans {
                key: key.span(),
                value: value.span(),
            },
        );
        match value.get_ref() {
            DeValue::Table(inner) => index(inner, path, out),
            DeValue::Array(items) => {
                // Items by position: a bad one is pointed at, and arrays of tables (`[[x]]`)
                // hold keys too.
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    out.insert(
                        path.clone(),
                        Spans {
                            key: item.span(),
                            value: item.span(),
                        },
                    );
                    if let DeValue::Table(inner) = item.get_ref() {
                        index(inner, path, out);
                    }
                    path.pop();
                }
            }
            _ => {}
        }
        path.pop();
    }
}

/// Where the value at `keys` starts, or else the nearest enclosing key that has a place (array
/// items have none of their own); the start of the file if none has.
fn value_offset(spans: &HashMap<Vec<String>, Spans>, keys: &[String]) -> usize {
    (0..=keys.len())
        .rev()
        .find_map(|n| {
            spans.get(&keys[..n]).map(|s| {
                if n == keys.len() {
                    s.value.start
                } else {
                    s.key.start
                }
            })
        })
        .unwrap_or(0)
}

/// A refused message about a value built from `variables`, rewritten so as not to quote it:
/// `invalid type: string (value from ${PORT}), expected usize`.
fn without_value(message: &str, variables: &[String]) -> String {
    let kind = if message.starts_with("invalid type") {
        "invalid type"
    } else {
        "invalid value"
    };
    let from: Vec<String> = variables.iter().map(|v| format!("${{{v}}}")).collect();
    // serde's own messages end in ", expected WHAT", which names the type, not the value;
    // other (custom) messages may quote the value anywhere, so nothing of them is kept.
    let standard = ["invalid type: ", "invalid value: ", "unknown variant "]
        .iter()
        .any(|prefix| message.starts_with(prefix));
    let expected = message
        .rsplit_once(", expected ")
        .filter(|_| standard)
        .map(|(_, expected)| format!(", expected {expected}"))
        .unwrap_or_default();
    format!("{kind}: string (value from {}){expected}", from.join(", "))
}

/// The text of a file, with where each of its lines starts: found once, so that turning a
/// byte offset into a line and column costs a binary search over the lines and a count of the
/// characters before it on its own line, not a scan of the file. `config check` asks for a
/// place per warning, and a file may have hundreds of thousands of tables.
#[derive(Debug, Clone, Default)]
pub(super) struct Source {
    text: String,
    /// The byte offset at which each line starts: 0, then one past each `\n`.
    line_starts: Vec<usize>,
}

impl Source {
    pub(super) fn new(text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|&(_, byte)| byte == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Source {
            text: text.to_owned(),
            line_starts,
        }
    }

    /// Line and column (1-based, the column in characters) of byte `offset` in the text, in
    /// `file`; an offset past the end is the end.
    pub(super) fn locate(&self, file: &Path, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        // The lines that start at or before `offset`: the last of them is the one it is on.
        let line = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        // The characters that start before `offset` on its line (all of them, for an offset
        // on a character boundary, which a parser's span is).
        let column = self.text[start..]
            .char_indices()
            .take_while(|&(i, _)| start + i < offset)
            .count();
        Location {
            file: file.to_owned(),
            line,
            column: column + 1,
        }
    }
}

#[cfg(test)]
mod tests;
