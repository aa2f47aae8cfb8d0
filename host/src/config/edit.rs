//! Changing `plughost.toml` on the operator's behalf (`plughost enable` / `disable`, a
//! plugin's config set through the API): only what changes is set, the rest of the file
//! (comments, order, formatting, `${VAR}` values) kept as it was, and the file replaced whole so
//! that a host watching it never reads half of it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{ConfigError, HostConfig};

impl HostConfig {
    /// Reads `path` as a process without the host's environment can: as [`load`](Self::load)
    /// does, except that values using a variable (`${VAR}`, with or without a default) are left
    /// at their defaults rather than substituted, as [`check_structure`](Self::check_structure)
    /// reads. For commands that edit the file for a host whose environment may differ.
    pub fn load_structure(path: &Path) -> Result<Self, ConfigError> {
        let text = super::read_text(path, path, HostConfig::MAX_FILE_SIZE)?;
        super::parse::read(path, &text, None)
    }

    /// Sets `plugins.NAME.enabled` in the configuration file `path`. A running host watching
    /// the file applies the change.
    ///
    /// If `path` does not exist and `create` is set, a new file is written (not through a
    /// dangling symbolic link: that would replace the link). A symbolic link is written
    /// through: the link stays, its target is replaced, with its permissions. The new text is
    /// checked with [`check_structure`](Self::check_structure) before it replaces the file,
    /// not by reading it as the host would: this process's environment need not have the
    /// variables the host's has.
    pub fn set_enabled_in(
        path: &Path,
        name: &str,
        enabled: bool,
        create: bool,
    ) -> Result<(), ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        // The file actually written: the link's final target, if `path` is a symbolic link.
        let (target, text) = match std::fs::canonicalize(path) {
            Ok(target) => {
                let text = super::read_text(&target, path, HostConfig::MAX_FILE_SIZE)?;
                (target, text)
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && create
                    && std::fs::symlink_metadata(path).is_err() =>
            {
                (path.to_owned(), String::new())
            }
            Err(e) => return Err(read_error(e)),
        };
        let updated = with_enabled(&text, name, enabled).map_err(|reason| ConfigError::Edit {
            path: path.to_owned(),
            reason,
        })?;
        HostConfig::check_structure(path, &updated)?;
        replace_file(&target, updated.as_bytes()).map_err(|source| ConfigError::Write {
            path: path.to_owned(),
            target: target.clone(),
            source,
        })
    }
}

/// A new text of the configuration file, checked, and what the host reads from it; not written
/// yet, so that it is written only once the change it makes has been applied.
pub(crate) struct Edit {
    /// The file, as named.
    path: PathBuf,
    /// The file actually written (the target, if `path` is a symbolic link).
    target: PathBuf,
    text: String,
    /// The settings as the host reads the new text, with its environment.
    pub(crate) config: HostConfig,
}

impl Edit {
    /// `path` with `[plugins.NAME.config]` set to `config`. Only what changes is written:
    /// a key whose value stays is left as the file writes it, so a `${VAR}` whose value is
    /// what the new config gives stays `${VAR}` (no secret lands in the file), and comments
    /// and layout stay. Refused if the file does not read as the host reads it, or cannot
    /// hold `config` exactly (TOML has no null).
    pub(crate) fn plugin_config(
        path: &Path,
        name: &str,
        config: &Map<String, Value>,
    ) -> Result<Self, ConfigError> {
        let target = std::fs::canonicalize(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = super::read_text(&target, path, HostConfig::MAX_FILE_SIZE)?;
        // The values as the host reads them now, variables substituted: what "unchanged" means.
        let before = HostConfig::parse(path, &text)?.plugin(name).config;
        let edit_error = |reason| ConfigError::Edit {
            path: path.to_owned(),
            reason,
        };
        let text = with_plugin_config(&text, name, config, &before).map_err(edit_error)?;
        let after = HostConfig::parse(path, &text)?;
        if after.plugin(name).config != *config {
            return Err(edit_error(format!(
                "plugins.{name}.config would not read back as given"
            )));
        }
        Ok(Edit {
            path: path.to_owned(),
            target,
            text,
            config: after,
        })
    }

    /// Replaces the file with the new text.
    pub(crate) fn write(&self) -> Result<(), ConfigError> {
        replace_file(&self.target, self.text.as_bytes()).map_err(|source| ConfigError::Write {
            path: self.path.clone(),
            target: self.target.clone(),
            source,
        })
    }
}

/// `text` with `plugins.NAME.config` made `config`, `before` being its values as read now:
/// keys whose value stays are not touched, others are set in place (keeping the comment on
/// their line), added or removed.
fn with_plugin_config(
    text: &str,
    name: &str,
    config: &Map<String, Value>,
    before: &Map<String, Value>,
) -> Result<String, String> {
    let mut document = parsed(text)?;
    let plugins = plugins_table(&mut document)?;
    let plugin = plugins.entry(name).or_insert_with(|| {
        let mut table = toml_edit::Table::new();
        table.set_implicit(true);
        table.into()
    });
    let inline = plugin.is_inline_table();
    let plugin = plugin
        .as_table_like_mut()
        .ok_or_else(|| format!("plugins.{name} is not a table"))?;
    if !plugin.contains_key("config") {
        if config.is_empty() {
            return Ok(document.to_string());
        }
        // A table of its own under a table of its own; inside an inline table, inline.
        let table = if inline {
            toml_edit::Item::Value(toml_edit::InlineTable::new().into())
        } else {
            toml_edit::Table::new().into()
        };
        plugin.insert("config", table);
    }
    let table = plugin
        .get_mut("config")
        .and_then(toml_edit::Item::as_table_like_mut)
        .ok_or_else(|| format!("plugins.{name}.config is not a table"))?;
    merge(table, config, before, &format!("plugins.{name}.config"))?;
    Ok(document.to_string())
}

/// Makes `table` hold `new`; `old` is what it holds now, as read.
fn merge(
    table: &mut dyn toml_edit::TableLike,
    new: &Map<String, Value>,
    old: &Map<String, Value>,
    at: &str,
) -> Result<(), String> {
    let gone: Vec<String> = table
        .iter()
        .map(|(key, _)| key.to_owned())
        .filter(|key| !new.contains_key(key))
        .collect();
    for key in gone {
        table.remove(&key);
    }
    for (key, value) in new {
        let path = format!("{at}.{key}");
        if old.get(key) == Some(value) && table.contains_key(key) {
            continue;
        }
        match (table.get_mut(key), value) {
            (Some(item), Value::Object(inner)) if item.is_table_like() => {
                let empty = Map::new();
                let old = old.get(key).and_then(Value::as_object).unwrap_or(&empty);
                let inner_table = item.as_table_like_mut().expect("checked: table-like");
                merge(inner_table, inner, old, &path)?;
            }
            (Some(toml_edit::Item::Value(existing)), _) => {
                // The new value takes the old one's place: the comment after it stays.
                let decor = existing.decor().clone();
                *existing = toml_value(value, &path)?;
                *existing.decor_mut() = decor;
            }
            _ => {
                table.insert(key, toml_edit::Item::Value(toml_value(value, &path)?));
            }
        }
    }
    Ok(())
}

/// `value` as TOML, or why TOML cannot hold it.
fn toml_value(value: &Value, at: &str) -> Result<toml_edit::Value, String> {
    Ok(match value {
        Value::Null => {
            return Err(format!(
                "{at}: TOML has no null (leave the key out instead)"
            ))
        }
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.into(),
            (None, Some(f)) if !n.is_u64() => f.into(),
            _ => return Err(format!("{at}: {n} is out of TOML's integer range")),
        },
        Value::String(s) => s.as_str().into(),
        Value::Array(items) => {
            let mut array = toml_edit::Array::new();
            for (i, item) in items.iter().enumerate() {
                array.push(toml_value(item, &format!("{at}[{i}]"))?);
            }
            array.into()
        }
        Value::Object(map) => {
            let mut table = toml_edit::InlineTable::new();
            for (key, item) in map {
                table.insert(key, toml_value(item, &format!("{at}.{key}"))?);
            }
            table.into()
        }
    })
}

/// `text` as a document to edit.
fn parsed(text: &str) -> Result<toml_edit::DocumentMut, String> {
    text.parse()
        .map_err(|e: toml_edit::TomlError| e.to_string())
}

/// The `plugins` table of `document`, made (implicit: no `[plugins]` header) if missing.
fn plugins_table(
    document: &mut toml_edit::DocumentMut,
) -> Result<&mut dyn toml_edit::TableLike, String> {
    document
        .entry("plugins")
        .or_insert_with(|| {
            let mut table = toml_edit::Table::new();
            table.set_implicit(true);
            table.into()
        })
        .as_table_like_mut()
        .ok_or_else(|| "plugins is not a table".to_owned())
}

/// `text` with `plugins.NAME.enabled` set, everything else kept; or why that cannot be done.
fn with_enabled(text: &str, name: &str, enabled: bool) -> Result<String, String> {
    let mut document = parsed(text)?;
    let plugin = plugins_table(&mut document)?
        .entry(name)
        .or_insert_with(|| toml_edit::Table::new().into())
        .as_table_like_mut()
        .ok_or_else(|| format!("plugins.{name} is not a table"))?;
    match plugin.get_mut("enabled") {
        // The new value takes the old one's place and its surroundings: the space after `=`
        // and the comment at the end of the line stay.
        Some(toml_edit::Item::Value(old)) => {
            let decor = old.decor().clone();
            *old = enabled.into();
            *old.decor_mut() = decor;
        }
        _ => {
            plugin.insert("enabled", toml_edit::value(enabled));
        }
    }
    Ok(document.to_string())
}

/// Replaces the file `path` (not a symbolic link) by `bytes` atomically: a temp file in the
/// same folder (a rename does not cross file systems), given the old file's permissions,
/// renamed over it. The temp file never has wider permissions than the old file: the config
/// may hold secrets.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy();
    let temporary = folder.join(format!(".{name}.plughost-tmp-{}", std::process::id()));
    let permissions = match std::fs::metadata(path) {
        Ok(metadata) => Some(metadata.permissions()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    // A stale temp file from a crashed run of the same pid; `create_new` below refuses to
    // follow or reuse whatever is there.
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if let Some(permissions) = &permissions {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // Created with at most the old mode (the umask may narrow it; set exactly below).
        options.mode(permissions.mode() & 0o7777);
    }
    let written = options.open(&temporary).and_then(|mut out| {
        out.write_all(bytes)?;
        if let Some(permissions) = permissions {
            out.set_permissions(permissions)?;
        }
        out.sync_all()
    });
    let outcome = written.and_then(|()| std::fs::rename(&temporary, path));
    if outcome.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_one_value_and_keeps_the_rest() {
        let text = "# my settings\n[host]\nwatch = true # keep watching\n\n[plugins.counter]\n\
                    priority = 3\n";
        let updated = with_enabled(text, "counter", false).unwrap();
        assert_eq!(
            updated,
            "# my settings\n[host]\nwatch = true # keep watching\n\n[plugins.counter]\n\
             priority = 3\nenabled = false\n"
        );
        let added = with_enabled("", "transform", true).unwrap();
        assert_eq!(added, "[plugins.transform]\nenabled = true\n");
    }

    #[test]
    fn the_comment_on_the_enabled_line_stays() {
        let text = "[plugins.counter]\nenabled = true   # keep this\npriority = 3 # and this\n";
        let updated = with_enabled(text, "counter", false).unwrap();
        assert_eq!(
            updated,
            "[plugins.counter]\nenabled = false   # keep this\npriority = 3 # and this\n"
        );
        assert_eq!(with_enabled(&updated, "counter", true).unwrap(), text);
        // Inline tables too, and a value of the wrong type is replaced all the same.
        let inline = "[plugins]\ncounter = { enabled = true, priority = 3 } # inline\n";
        assert_eq!(
            with_enabled(inline, "counter", false).unwrap(),
            "[plugins]\ncounter = { enabled = false, priority = 3 } # inline\n"
        );
        let wrong = "[plugins.counter]\nenabled = \"yes\" # typo\n";
        assert_eq!(
            with_enabled(wrong, "counter", true).unwrap(),
            "[plugins.counter]\nenabled = true # typo\n"
        );
    }

    #[test]
    fn the_structure_is_read_without_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plughost.toml");
        let text = "[host]\nplugins_dir = \"${PLUGHOST_TEST_SURELY_UNSET}\"\n[plugins.a]\n";
        std::fs::write(&path, text).unwrap();
        assert!(HostConfig::load(&path).is_err());
        let config = HostConfig::load_structure(&path).unwrap();
        assert_eq!(config.host.plugins_dir, dir.path().join("plugins"));
        assert!(config.plugins.contains_key("a"));
        assert_eq!(config.file.as_deref(), Some(path.as_path()));
    }

    fn map(value: serde_json::Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn a_plugin_config_is_written_keeping_comments_and_variables() {
        let text = "# settings\n[plugins.storage] # the store\npriority = 1\n\n\
                    [plugins.storage.config]\nnamespace = \"main\" # where\n\
                    token = \"${TOKEN}\" # never in the file\ncapacity = 5\nold = true\n\n\
                    [plugins.other]\nenabled = false # off\n";
        // As the host read it: the token expanded.
        let before = map(serde_json::json!({
            "namespace": "main", "token": "s3cret", "capacity": 5, "old": true
        }));
        let new = map(serde_json::json!({
            "namespace": "edited", "token": "s3cret", "capacity": 5, "nested": {"a": [1, 2]}
        }));
        let updated = with_plugin_config(text, "storage", &new, &before).unwrap();
        assert_eq!(
            updated,
            "# settings\n[plugins.storage] # the store\npriority = 1\n\n\
             [plugins.storage.config]\nnamespace = \"edited\" # where\n\
             token = \"${TOKEN}\" # never in the file\ncapacity = 5\n\
             nested = { a = [1, 2] }\n\n[plugins.other]\nenabled = false # off\n"
        );
        // A new token value replaces the variable: it is what was asked.
        let new = map(serde_json::json!({"namespace": "main", "token": "other"}));
        let updated = with_plugin_config(text, "storage", &new, &before).unwrap();
        assert!(
            updated.contains("token = \"other\" # never in the file"),
            "{updated}"
        );
    }

    #[test]
    fn a_plugin_config_table_is_added_where_there_is_none() {
        let new = map(serde_json::json!({"mode": "lower"}));
        let empty = Map::new();
        assert_eq!(
            with_plugin_config("[host]\nwatch = true\n", "transform", &new, &empty).unwrap(),
            "[host]\nwatch = true\n\n[plugins.transform.config]\nmode = \"lower\"\n"
        );
        // Inside an inline table, and as dotted keys, in their own style.
        assert_eq!(
            with_plugin_config(
                "[plugins]\ntransform = { priority = 2 }\n",
                "transform",
                &new,
                &empty
            )
            .unwrap(),
            "[plugins]\ntransform = { priority = 2 , config = { mode = \"lower\" } }\n"
        );
        let before = map(serde_json::json!({"mode": "upper"}));
        assert_eq!(
            with_plugin_config(
                "[plugins.transform]\nconfig.mode = \"upper\"\n",
                "transform",
                &new,
                &before
            )
            .unwrap(),
            "[plugins.transform]\nconfig.mode = \"lower\"\n"
        );
        // Nothing to write, nothing written.
        assert_eq!(
            with_plugin_config("", "transform", &Map::new(), &empty).unwrap(),
            ""
        );
    }

    #[test]
    fn a_config_toml_cannot_hold_is_refused() {
        let empty = Map::new();
        let null = map(serde_json::json!({"a": {"b": null}}));
        assert_eq!(
            with_plugin_config("", "p", &null, &empty).unwrap_err(),
            "plugins.p.config.a.b: TOML has no null (leave the key out instead)"
        );
        let huge = map(serde_json::json!({"n": u64::MAX}));
        assert!(with_plugin_config("", "p", &huge, &empty)
            .unwrap_err()
            .contains("out of TOML's integer range"));
    }

    #[test]
    fn an_edit_reads_back_as_the_host_reads_it() {
        let variable = "PLUGHOST_TEST_EDIT_TOKEN_7F3A";
        std::env::set_var(variable, "s3cret");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plughost.toml");
        let text = format!("[plugins.storage.config] # mine\ntoken = \"${{{variable}}}\"\n");
        std::fs::write(&path, &text).unwrap();
        let new = map(serde_json::json!({"token": "s3cret", "namespace": "n"}));
        let edit = Edit::plugin_config(&path, "storage", &new).unwrap();
        assert_eq!(edit.config.plugin("storage").config, new);
        edit.write().unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(!written.contains("s3cret"), "{written}");
        assert!(
            written.starts_with("[plugins.storage.config] # mine\n"),
            "{written}"
        );
        assert_eq!(
            HostConfig::load(&path).unwrap().plugin("storage").config,
            new
        );
    }

    #[test]
    fn refuses_keys_that_are_not_tables() {
        assert_eq!(
            with_enabled("plugins = 3\n", "a", true).unwrap_err(),
            "plugins is not a table"
        );
        assert_eq!(
            with_enabled("[plugins]\na = 3\n", "a", true).unwrap_err(),
            "plugins.a is not a table"
        );
    }

    #[test]
    fn a_missing_file_is_created_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plughost.toml");
        let error = HostConfig::set_enabled_in(&path, "a", false, false).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }), "{error}");
        HostConfig::set_enabled_in(&path, "a", false, true).unwrap();
        let config = HostConfig::load(&path).unwrap();
        assert!(!config.plugin("a").enabled);
    }

    #[test]
    fn an_edit_that_would_break_the_file_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plughost.toml");
        // Already broken in a way the edit does not fix: refused, file unchanged.
        std::fs::write(&path, "[plugins.a]\nenabeld = true\n").unwrap();
        let error = HostConfig::set_enabled_in(&path, "a", false, true)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `enabeld`"), "{error}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[plugins.a]\nenabeld = true\n"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_link_is_written_through_and_permissions_are_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.toml");
        std::fs::write(&target, "[host]\nwatch = true\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("plughost.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        HostConfig::set_enabled_in(&link, "a", false, false).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!HostConfig::load(&link).unwrap().plugin("a").enabled);
    }
}
