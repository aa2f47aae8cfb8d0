//! Step 1 and 3 of reading `plughost.toml`: TOML with the place of every key kept, and the
//! settings read from it with serde, each error mapped back to its line and column.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::env::{ExpandError, Lookup, Substitution};
use super::{ConfigError, HostConfig, HostSettings, Location, PluginSettings};
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
            let span = (0..=keys.len()).rev().find_map(|n| {
                spans.get(&keys[..n]).map(|s| {
                    if n == keys.len() && !unknown_key {
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
    ];
    if let Some((key, _, rule)) = unworkable.iter().find(|(_, bad, _)| *bad) {
        let keys = ["host".to_owned(), (*key).to_owned()];
        let span = spans.get(&keys[..]).map(|s| s.value.clone());
        return Err(located(span, format!("host.{key}: {rule}")));
    }
    let base = path.parent().unwrap_or(Path::new(""));
    host.plugins_dir = base.join(&host.plugins_dir);
    host.shadow_dir = host.shadow_dir.map(|dir| base.join(dir));
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
        plugins: raw.plugins,
        spans,
        from_env,
        source,
    })
}

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
                // Arrays of tables (`[[x]]`) hold keys too; index them by position.
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        path.push(i.to_string());
                        index(inner, path, out);
                        path.pop();
                    }
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
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::config::LogFormat;

    fn parse(text: &str) -> Result<HostConfig, String> {
        HostConfig::parse(Path::new("plughost.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_need_no_file() {
        let config = parse("").unwrap();
        assert_eq!(config.host, HostSettings::default());
        assert!(config.plugin("anything").enabled);
    }

    #[test]
    fn reads_every_setting() {
        let config = parse(
            r#"
[host]
plugins_dir = "libs"
watch = false
debounce = "250ms"
call_timeout = "2s"
max_plugins = 3
log_format = "json"

[plugins.transform]
enabled = false
priority = 7
timeout = "150ms"
config = { mode = "lower", nested = { list = [1, 2] } }
"#,
        )
        .unwrap();
        assert_eq!(config.host.plugins_dir, PathBuf::from("libs"));
        assert!(!config.host.watch);
        assert_eq!(config.host.debounce, Duration::from_millis(250));
        assert_eq!(config.host.call_timeout, Some(Duration::from_secs(2)));
        assert_eq!(config.host.log_format, LogFormat::Json);
        let transform = config.plugin("transform");
        assert!(!transform.enabled);
        assert_eq!(transform.priority, 7);
        assert_eq!(transform.timeout, Some(Duration::from_millis(150)));
        assert_eq!(
            serde_json::Value::Object(transform.config),
            serde_json::json!({"mode": "lower", "nested": {"list": [1, 2]}})
        );
    }

    #[test]
    fn unknown_key_points_at_it() {
        let error =
            parse("[host]\nwatch = true\n\n[plugins.counter]\nenabeld = false\n").unwrap_err();
        assert!(error.starts_with("plughost.toml:5:1: "), "{error}");
        assert!(error.contains("unknown field `enabeld`"), "{error}");
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        let error = parse("[host]\nmax_plugins = \"many\"\n").unwrap_err();
        assert!(
            error.starts_with("plughost.toml:2:15: host.max_plugins: "),
            "{error}"
        );
        assert!(error.contains("invalid type"), "{error}");
    }

    #[test]
    fn syntax_error_points_at_it() {
        let error = parse("[host]\nwatch = \n").unwrap_err();
        assert!(error.starts_with("plughost.toml:2:"), "{error}");
    }

    /// Parses `text` with `vars` as the whole environment.
    fn parse_with_env(text: &str, vars: &[(&str, &str)]) -> Result<HostConfig, String> {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        };
        read(Path::new("plughost.toml"), text, Some(&lookup)).map_err(|e| e.to_string())
    }

    #[test]
    fn a_wrong_value_from_the_environment_is_named_not_quoted() {
        let secret = [
            ("N", "s3cret"),
            ("FMT", "s3cret"),
            ("D", "s3cret"),
            ("T", "s3cret"),
        ];
        for (text, expected) in [
            (
                "[host]\nmax_plugins = \"${N}\"\n",
                "plughost.toml:2:15: host.max_plugins: invalid type: string (value from ${N}), \
                 expected usize",
            ),
            (
                "[host]\nlog_format = \"${FMT}\"\n",
                "plughost.toml:2:14: host.log_format: invalid value: string (value from \
                 ${FMT}), expected `human` or `json`",
            ),
            (
                "[host]\ndebounce = \"${D}\"\n",
                "plughost.toml:2:12: host.debounce: invalid value: string (value from ${D}), \
                 expected a duration",
            ),
            (
                "[plugins.a]\ntimeout = \"${T:-1s}${D}\"\n",
                "plughost.toml:2:11: plugins.a.timeout: invalid value: string (value from \
                 ${T}, ${D}), expected a duration",
            ),
        ] {
            let error = parse_with_env(text, &secret).unwrap_err();
            assert_eq!(error, expected);
        }
        // A message in no standard shape may quote the value anywhere: none of it is kept.
        assert_eq!(
            without_value(r#"unknown unit "s3cret", expected ms"#, &["D".into()]),
            "invalid value: string (value from ${D})"
        );
        // The value from the environment reaches the settings; it is known to be from there.
        let config =
            parse_with_env("[plugins.a.config]\ntoken = \"${T}\"\n", &[("T", "s3cret")]).unwrap();
        assert_eq!(config.plugin("a").config["token"], "s3cret");
        assert_eq!(
            config.env_variables(&["plugins", "a", "config", "token"]),
            Some(&["T".to_owned()][..])
        );
        assert_eq!(config.env_variables(&["plugins", "a"]), None);
    }

    #[test]
    fn an_unclosed_variable_names_the_key_and_place() {
        let error = parse_with_env("[plugins.s.config]\npath = \"${HOME/x\"\n", &[]).unwrap_err();
        assert_eq!(
            error,
            "plughost.toml:2:8: plugins.s.config.path: a `${` is not closed (write ${VAR} or \
             ${VAR:-default}, or $${ for a literal `${`)"
        );
        // Also when the environment is not read.
        let error = HostConfig::check_structure(
            Path::new("plughost.toml"),
            "[host]\nplugins_dir = \"${X\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("plughost.toml:2:15: host.plugins_dir: a `${` is not closed"),
            "{error}"
        );
    }

    #[test]
    fn structure_is_checked_without_the_environment() {
        let check = |text: &str| {
            HostConfig::check_structure(Path::new("plughost.toml"), text).map_err(|e| e.to_string())
        };
        // Values using variables are the host's business, set or not here.
        check(
            "[host]\ndebounce = \"${PLUGHOST_UNIT_TEST_UNSET}\"\nmax_plugins = 3\n\
             [plugins.a]\nenabled = false\ntimeout = \"${PLUGHOST_UNIT_TEST_UNSET:-1s}\"\n\
             [plugins.a.config]\nlist = [\"${PLUGHOST_UNIT_TEST_UNSET}\"]\n",
        )
        .unwrap();
        // Everything else is checked as usual.
        let error = check("[host]\nmax_plugins = \"many\"\n").unwrap_err();
        assert!(
            error.starts_with("plughost.toml:2:15: host.max_plugins: invalid type"),
            "{error}"
        );
        let error = check("[plugins.a]\nenabeld = false\n").unwrap_err();
        assert!(error.contains("unknown field `enabeld`"), "{error}");
        let error = check("[plugins.a]\nenabled = \"$${literal}\"\n").unwrap_err();
        assert!(
            error.contains(r#"invalid type: string "${literal}""#),
            "{error}"
        );
    }

    /// Where `offset` is in `text`, as `line:column`.
    fn place(text: &str, offset: usize) -> String {
        let at = Source::new(text).locate(Path::new("f"), offset);
        format!("{}:{}", at.line, at.column)
    }

    #[test]
    fn locate_finds_line_and_column() {
        let text = "[host]\nwatch = true\n\n[plugins.a]\nenabled = false";
        // The first line.
        assert_eq!(place(text, 0), "1:1");
        assert_eq!(place(text, 3), "1:4");
        // Its newline is still on it; the next line starts after it.
        assert_eq!(place(text, 6), "1:7");
        assert_eq!(place(text, 7), "2:1");
        // A later line, after an empty one.
        assert_eq!(place(text, 20), "3:1");
        assert_eq!(place(text, 21), "4:1");
        assert_eq!(place(text, 30), "4:10");
        assert_eq!(place(text, 36), "5:4");
    }

    #[test]
    fn locate_counts_characters_not_bytes() {
        // `é` is 2 bytes, `€` 3, `🦀` 4: the value starts at byte 14 of the second line.
        let text = "# x\n\"é€🦀\" = \"v\"\n";
        let value = text.find("\"v").unwrap();
        assert_eq!(value, 4 + 14);
        assert_eq!(place(text, value), "2:9");
        // Each character is one column, wherever it starts.
        assert_eq!(place(text, 5), "2:2");
        assert_eq!(place(text, 7), "2:3");
        assert_eq!(place(text, 10), "2:4");
    }

    #[test]
    fn locate_at_and_past_the_end() {
        // After a final newline: the empty line that follows it.
        assert_eq!(place("a = 1\n", 6), "2:1");
        assert_eq!(place("a = 1\né", 8), "2:2");
        // Past the end is the end.
        assert_eq!(place("a = 1\né", 100), "2:2");
        assert_eq!(place("", 0), "1:1");
        assert_eq!(place("", 5), "1:1");
    }

    #[test]
    fn locate_agrees_with_a_scan_from_the_start() {
        // What every message said before lines were indexed: counted from the start each time.
        fn scanned(text: &str, offset: usize) -> String {
            let before = &text[..offset.min(text.len())];
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let line = before.matches('\n').count() + 1;
            format!("{line}:{}", before[line_start..].chars().count() + 1)
        }
        let text = "\n[host]\r\nwatch = true\n\n\n[plugins.\"ü\"]\n  x = \"日本\" # ✓\n\n";
        for offset in (0..=text.len() + 2).filter(|&o| o > text.len() || text.is_char_boundary(o)) {
            assert_eq!(
                place(text, offset),
                scanned(text, offset),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn a_config_locates_its_keys() {
        let config =
            parse("[host]\nwatch = true\n\n[plugins.\"é\"]\n[plugins.\"é\".config]\nk = 1\n")
                .unwrap();
        let at = |keys: &[&str]| config.locate(keys).unwrap().to_string();
        assert_eq!(at(&["host", "watch"]), "plughost.toml:2:1");
        assert_eq!(at(&["plugins", "é"]), "plughost.toml:4:10");
        // After the 2-byte `é`: column 14, byte 15 of the line.
        assert_eq!(at(&["plugins", "é", "config"]), "plughost.toml:5:14");
        assert_eq!(at(&["plugins", "é", "config", "k"]), "plughost.toml:6:1");
        // Not in the file: the nearest enclosing key that is; else the file.
        assert_eq!(
            at(&["plugins", "é", "config", "absent"]),
            "plughost.toml:5:14"
        );
        assert_eq!(at(&["nothing"]), "plughost.toml");
        assert_eq!(HostConfig::default().locate(&["host"]), None);
    }

    /// Whatever the text, reading it gives settings or a located error, never a panic.
    #[test]
    fn damaged_settings_never_make_the_parser_panic() {
        let original = "# settings\n[host]\nplugins_dir = \"plugins\"\ndebounce = \"100ms\"\n\
                        max_plugins = 3\n\n[plugins.storage]\npriority = 1\n\n\
                        [plugins.storage.config]\nnamespace = \"${NS:-main}\"\nlist = [1, 2, 3]\n\
                        nested = { a = { b = \"é\" } }\n";
        let mut state: u64 = 0x0dd0_5eed_0000_0001;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"[]{}=\".,$:-#\\\n ab1_\xc3\xa9";
        for round in 0..2000 {
            let mut bytes = original.as_bytes().to_vec();
            for _ in 0..1 + round % 8 {
                let at = (next() as usize) % bytes.len();
                bytes[at] = alphabet[(next() as usize) % alphabet.len()];
            }
            let text = String::from_utf8_lossy(&bytes);
            let outcome = std::panic::catch_unwind(|| {
                let _ = HostConfig::parse(Path::new("plughost.toml"), &text);
                let _ = HostConfig::check_structure(Path::new("plughost.toml"), &text);
            });
            assert!(outcome.is_ok(), "round {round}: reading {text:?} panicked");
        }
    }

    #[test]
    fn a_probe_program_path_is_taken_from_the_files_folder() {
        let read = |text: &str| {
            HostConfig::parse(Path::new("/etc/plughost/plughost.toml"), text)
                .unwrap()
                .host
                .probe
        };
        use crate::config::ProbeSetting;
        assert_eq!(read(""), ProbeSetting::Auto);
        assert_eq!(read("[host]\nprobe = \"off\"\n"), ProbeSetting::Off);
        assert_eq!(
            read("[host]\nprobe = \"bin/plughost\"\n"),
            ProbeSetting::Program(PathBuf::from("/etc/plughost/bin/plughost"))
        );
        assert_eq!(
            read("[host]\nprobe = \"/usr/bin/plughost\"\n"),
            ProbeSetting::Program(PathBuf::from("/usr/bin/plughost"))
        );
        assert_eq!(
            read("[host]\nprobe = \"plughost\"\n"),
            ProbeSetting::Program(PathBuf::from("plughost"))
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused_at_their_place() {
        for (text, expected) in [
            (
                "[host]\ninit_timeout = \"0s\"\n",
                "plughost.toml:2:16: host.init_timeout: must be longer than 0",
            ),
            (
                "[host]\nmax_pinned = 0\n",
                "plughost.toml:2:14: host.max_pinned: must be at least 1",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err(), expected);
        }
    }
}
