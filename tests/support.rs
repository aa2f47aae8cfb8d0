//! Helpers for the end-to-end tests: build the real plugin libraries (examples and fixtures)
//! and the `plughost` binary once per test process, and give each test its own plugins and
//! shadow folders.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use plughost::{Host, HostConfig, HostEvent, ProbeSetting, WatchOptions, Watcher};
use tempfile::TempDir;

#[path = "isolated.rs"]
pub mod isolated;

#[path = "admin_support.rs"]
pub mod admin;

/// Grants, keys and signatures, and a plugins folder with a `plughost.toml` beside it.
#[path = "trust_support.rs"]
mod trust;
pub use trust::*;

/// The documentation's Rust snippets and links, checked.
#[cfg(any(test, doctest))]
#[path = "doctests.rs"]
mod doctests;

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
    BIN.get_or_init(|| {
        xtask::build_binary("plughost-cli", "plughost", false).expect("build plughost")
    })
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
        not_writable_by_others(&target);
        target
    }

    /// Writes a file with these bytes.
    pub fn write(&self, file_name: &str, bytes: &[u8]) -> PathBuf {
        let target = self.path().join(file_name);
        std::fs::write(&target, bytes).expect("write file");
        not_writable_by_others(&target);
        target
    }

    /// Default settings for this folder and its shadow folder, probing new files with the
    /// `plughost` executable built for the tests.
    pub fn config(&self) -> HostConfig {
        let mut config = HostConfig::with_plugins_dir(self.path());
        config.host.shadow_dir = Some(self.shadow().to_owned());
        config.host.probe = ProbeSetting::Program(plughost().to_owned());
        config
    }

    /// A host on this folder.
    pub fn host(&self) -> Host {
        Host::new(self.config()).expect("create host")
    }

    /// A host on this folder that watches it, with events subscribed before anything loads.
    /// Loads what the folder holds.
    pub fn watched(&self) -> (Arc<Host>, Watcher, Receiver<HostEvent>) {
        let host = Arc::new(self.host());
        let events = host.subscribe();
        let watcher = host
            .watch(WatchOptions::default())
            .expect("watch the folder");
        host.load_all().expect("load the folder");
        (host, watcher, events)
    }

    /// Replaces (or creates) `file_name` with `bytes` the safe way: a temporary file in the
    /// folder renamed over it.
    pub fn replace_atomically(&self, file_name: &str, bytes: &[u8]) -> PathBuf {
        let temp = self.path().join(format!(".{file_name}.tmp"));
        std::fs::write(&temp, bytes).expect("write temp file");
        not_writable_by_others(&temp);
        let target = self.path().join(file_name);
        std::fs::rename(&temp, &target).expect("rename into place");
        target
    }

    /// Overwrites `file_name` in place, as `cp new.so old.so` does (truncate, write, close).
    pub fn replace_in_place(&self, file_name: &str, bytes: &[u8]) -> PathBuf {
        let target = self.path().join(file_name);
        std::fs::write(&target, bytes).expect("overwrite in place");
        not_writable_by_others(&target);
        target
    }

    /// `plughost <args> --plugins-dir <this> --shadow-dir <its shadow>`, not started yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(plughost());
        command
            .args(args)
            .arg("--plugins-dir")
            .arg(self.path())
            .arg("--shadow-dir")
            .arg(self.shadow());
        command
    }

    /// Runs `plughost <args>` on this folder to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run plughost")
    }

    /// Starts `plughost run` on this folder with INFO logs, uncoloured, on a piped stderr.
    pub fn spawn_run(&self) -> Child {
        self.command(&["run"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start plughost run")
    }

    /// The files in the shadow folder: private copies written to disk (the probe's verdicts
    /// live in a folder of their own there, and are not copies). On Linux copies are memory
    /// files instead, and this stays empty: see [`copies_held`](Self::copies_held).
    pub fn shadow_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.shadow())
            .expect("read shadow folder")
            .map(|e| e.unwrap().path())
            .filter(|p| !p.is_dir())
            .collect()
    }

    /// How many private copies of this folder's libraries process `pid` holds: memory files
    /// open in it (named `plughost:<file>`), and files in the shadow folder.
    pub fn copies_held_by(&self, pid: u32) -> usize {
        let prefix = format!("/memfd:plughost:{}/", self.path().display());
        let memory = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                    .filter(|target| target.to_string_lossy().starts_with(&prefix))
                    .count()
            })
            .unwrap_or(0);
        memory + self.shadow_files().len()
    }

    /// [`copies_held_by`](Self::copies_held_by) this process.
    pub fn copies_held(&self) -> usize {
        self.copies_held_by(std::process::id())
    }

    /// How many private copies of this folder's libraries are mapped into this process (as
    /// memory files, or files in the shadow folder).
    pub fn copies_mapped(&self) -> usize {
        let prefix = format!("/memfd:plughost:{}/", self.path().display());
        let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
        // Fields: address perms offset dev inode path. One library, one inode.
        let mut inodes: Vec<&str> = maps
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.splitn(6, char::is_whitespace).collect();
                let path = fields.get(5)?.trim();
                path.starts_with(&prefix).then_some(fields[4])
            })
            .collect();
        inodes.sort();
        inodes.dedup();
        inodes.len() + mapped_under(self.shadow())
    }
}

/// Takes group and others' write permission off `path`, whatever the umask made it: as root the
/// host refuses libraries others could change (`host.check_ownership`), and the tests' files
/// must not depend on the umask of the machine that runs them.
pub fn not_writable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = std::fs::metadata(path).expect("stat file").permissions();
    if permissions.mode() & 0o022 != 0 {
        permissions.set_mode(permissions.mode() & !0o022);
        std::fs::set_permissions(path, permissions).expect("chmod go-w");
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

/// The bytes of a built library.
pub fn bytes_of(package: &str) -> Vec<u8> {
    std::fs::read(library(package)).expect("read built library")
}

/// The same library with different bytes, as a rebuild without code changes would give:
/// data appended after the end of the ELF file changes its hash, not its meaning.
pub fn rebuilt(bytes: &[u8], generation: u32) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes.extend_from_slice(format!("rebuild {generation}").as_bytes());
    bytes
}

/// Waits up to `timeout` for an event `wanted` accepts, skipping others. Panics with the
/// events seen if none comes.
pub fn wait_for(
    events: &Receiver<HostEvent>,
    timeout: Duration,
    mut wanted: impl FnMut(&HostEvent) -> bool,
) -> HostEvent {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) if wanted(&event) => return event,
            Ok(event) => seen.push(event),
            Err(RecvTimeoutError::Timeout) => {
                panic!("no expected event within {timeout:?}; saw {seen:#?}")
            }
            Err(RecvTimeoutError::Disconnected) => panic!("event channel closed; saw {seen:#?}"),
        }
    }
}

/// Every event that arrives within `window`.
pub fn events_within(events: &Receiver<HostEvent>, window: Duration) -> Vec<HostEvent> {
    let deadline = Instant::now() + window;
    let mut seen = Vec::new();
    while let Ok(event) = events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        seen.push(event);
    }
    seen
}

/// How many files under `dir` are mapped into this process.
pub fn mapped_under(dir: &Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let mut paths: Vec<&str> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    paths.sort();
    paths.dedup();
    paths.len()
}

/// Sends SIGTERM to a child process, as a service manager stopping it would.
#[cfg(unix)]
pub fn terminate(child: &Child) {
    let pid = i32::try_from(child.id()).expect("pid fits in i32");
    // SAFETY: `kill` has no memory-safety preconditions; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill failed");
}

/// Stops a `plughost run` child with SIGTERM and waits for it, killing it after 30 s. Never
/// panics on a slow exit: for `Drop`, which may run while a test is already panicking.
#[cfg(unix)]
pub fn stop_quietly(mut child: Child) {
    terminate(&child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `command` to completion with `input` on its stdin, failing the test if it takes longer
/// than `limit`.
pub fn finish(mut command: Command, input: &[u8], limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start plughost");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let status = exits_within(&mut child, limit);
    let _ = writer.join();
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

// Helpers for tests that watch `plughost` run: its log lines as they come, its exit within a
// bound, and the files it is given.

/// The lines a child writes to stderr, as they come.
pub fn lines_of(child: &mut Child) -> Receiver<String> {
    let (sender, lines) = channel();
    let stderr = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Waits up to `within` for a line containing `needle`; panics with what was seen.
pub fn wait_line(lines: &Receiver<String>, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains(needle) {
            return line;
        }
        seen.push(line);
    }
    panic!(
        "no line with {needle:?} within {within:?}; saw:\n{}",
        seen.join("\n")
    );
}

/// Waits up to `within` for the child to end (killing it if it does not, and failing).
pub fn exits_within(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("still running {within:?} later");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes a named pipe at `path`.
pub fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid, NUL-terminated path; `mkfifo` has no other precondition.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// A `plughost.toml` in its own folder with `text`.
pub fn settings(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plughost.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A benchmark's host: the echo fixture built with the bench's own optimisation level, installed
/// in a fresh plugins folder and started, new builds probed by a `plughost` built the same way.
/// Keep the [`BenchEcho`] alive while the host is used: it owns the folders.
pub fn bench_echo() -> BenchEcho {
    let release = !cfg!(debug_assertions);
    let built = xtask::build_libraries(&["fixture-echo".to_owned()], release).expect("build echo");
    let probe =
        xtask::build_binary("plughost-cli", "plughost", release).expect("build the probe program");
    let plugins = tempfile::tempdir().unwrap();
    let shadow = tempfile::tempdir().unwrap();
    let file = xtask::install(&built[0].path, plugins.path()).unwrap();
    let host = Host::new({
        let mut config = HostConfig::with_plugins_dir(plugins.path());
        config.host.shadow_dir = Some(shadow.path().to_owned());
        config.host.probe = ProbeSetting::Program(probe);
        config
    })
    .unwrap();
    host.load_file(&file, b"").unwrap();
    BenchEcho {
        host,
        folders: [plugins, shadow],
    }
}

/// What [`bench_echo`] made.
pub struct BenchEcho {
    /// The host, with the echo plugin running.
    pub host: Host,
    /// The plugins and shadow folders, deleted when this is dropped.
    pub folders: [TempDir; 2],
}

/// Sets `plugin`'s table in `settings`: `config` (a JSON object) as its Init configuration,
/// then `edit` for the rest.
pub fn plugin_table(
    settings: &mut HostConfig,
    plugin: &str,
    config: serde_json::Value,
    edit: impl FnOnce(&mut plughost::PluginSettings),
) {
    let mut table = plughost::PluginSettings {
        config: config.as_object().cloned().unwrap_or_default(),
        ..plughost::PluginSettings::default()
    };
    edit(&mut table);
    settings.plugins.insert(plugin.to_owned(), table);
}

/// Polls `done` every 5 ms for up to `within`; whether it became true.
pub fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The counts of subscriber `name` in `stats`; panics, showing them, if it is not there.
pub fn subscriber<'a>(
    stats: &'a plughost::EventStats,
    name: &str,
) -> &'a plughost::SubscriberStats {
    stats
        .subscribers
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no subscriber {name} in {stats:#?}"))
}

/// The lines of `file` now (none if it does not exist yet).
pub fn file_lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A handler of the program's, named `name`, counting the events matching `patterns`.
pub fn counting(
    host: &Host,
    name: &str,
    patterns: &[&str],
) -> (plughost::Subscription, Arc<std::sync::atomic::AtomicU64>) {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = count.clone();
    let subscription = host
        .subscribe_events(
            name,
            patterns,
            plughost::SubscribeOptions::default(),
            move |_| {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            },
        )
        .expect("subscribe");
    (subscription, count)
}
