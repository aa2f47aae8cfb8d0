//! Changing `plughost.toml` on the operator's behalf (`plughost enable` / `disable`): one value
//! set, the rest of the file (comments, order, formatting) kept as it was, and the file
//! replaced whole so that a host watching it never reads half of it.

use std::io::Write;
use std::path::Path;

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

/// `text` with `plugins.NAME.enabled` set, everything else kept; or why that cannot be done.
fn with_enabled(text: &str, name: &str, enabled: bool) -> Result<String, String> {
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| e.to_string())?;
    let plugins = document
        .entry("plugins")
        .or_insert_with(|| {
            let mut table = toml_edit::Table::new();
            table.set_implicit(true);
            table.into()
        })
        .as_table_mut()
        .ok_or("plugins is not a table")?;
    let plugin = plugins
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
