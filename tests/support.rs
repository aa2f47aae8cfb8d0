//! Helpers for the end-to-end tests: build the real plugin libraries (examples and fixtures)
//! and the `plughost` binary once per test process, and give each test its own plugins and
//! shadow folders.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use plughost::{Host, HostOptions};
use tempfile::TempDir;

/// The built library of a workspace package (an example under `plugins/` or a fixture under
/// `tests/fixtures/`), e.g. `"transform"` or `"fixture-panicky"`.
pub fn library(package: &str) -> &'static Path {
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let mut packages = xtask::packages_under("plugins").expect("list example plugins");
        packages.extend(xtask::packages_under("tests/fixtures").expect("list fixtures"));
        xtask::build_libraries(&packages, false)
            .expect("build the plugin libraries")
            .into_iter()
            .map(|b| (b.package, b.path))
            .collect()
    });
    built
        .get(package)
        .unwrap_or_else(|| panic!("no plugin package {package:?} was built"))
}

/// The `plughost` executable.
pub fn plughost() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| xtask::build_binary("host", "plughost", false).expect("build plughost"))
}

/// A system shared library that is certainly not a plugin: the C library this process runs
/// with, found through `/proc/self/maps`.
pub fn system_library() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains("/libc.so") || path.contains("/libc-"))
        .map(PathBuf::from)
        .expect("libc is mapped")
}

/// A throwaway plugins folder with its own shadow folder.
pub struct PluginDir {
    plugins: TempDir,
    shadow: TempDir,
}

impl Default for PluginDir {
    fn default() -> Self {
        Self::new()
    }
}

impl PluginDir {
    /// An empty folder.
    pub fn new() -> Self {
        PluginDir {
            plugins: tempfile::tempdir().expect("temp plugins folder"),
            shadow: tempfile::tempdir().expect("temp shadow folder"),
        }
    }

    /// The plugins folder.
    pub fn path(&self) -> &Path {
        self.plugins.path()
    }

    /// The shadow folder.
    pub fn shadow(&self) -> &Path {
        self.shadow.path()
    }

    /// Copies the built library of `package` in under its usual file name.
    pub fn add(&self, package: &str) -> PathBuf {
        let source = library(package);
        self.add_as(package, source.file_name().unwrap().to_str().unwrap())
    }

    /// Copies the built library of `package` in as `file_name`.
    pub fn add_as(&self, package: &str, file_name: &str) -> PathBuf {
        let target = self.path().join(file_name);
        std::fs::copy(library(package), &target).expect("copy plugin library");
        target
    }

    /// Writes a file with these bytes.
    pub fn write(&self, file_name: &str, bytes: &[u8]) -> PathBuf {
        let target = self.path().join(file_name);
        std::fs::write(&target, bytes).expect("write file");
        target
    }

    /// A host on this folder.
    pub fn host(&self) -> Host {
        Host::new(HostOptions {
            plugins_dir: self.path().to_owned(),
            shadow_dir: self.shadow().to_owned(),
        })
        .expect("create host")
    }

    /// Runs `plughost <args> --plugins-dir <this> --shadow-dir <its shadow>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(plughost())
            .args(args)
            .arg("--plugins-dir")
            .arg(self.path())
            .arg("--shadow-dir")
            .arg(self.shadow())
            .output()
            .expect("run plughost")
    }

    /// The files in the shadow folder.
    pub fn shadow_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.shadow())
            .expect("read shadow folder")
            .map(|e| e.unwrap().path())
            .collect()
    }
}

/// Standard output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
