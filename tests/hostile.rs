//! Hostile files and stuck plugins: a damaged library, a named pipe, a plugin whose entry
//! points never return. The host refuses or gives up with one line, within its bounds, and
//! goes on; nothing crashes, hangs or stops the watch.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use plughost::{CallError, HostEvent, LoadError, UnloadStatus};
use plughost_tests::{bytes_of, stderr, terminate, wait_for, PluginDir};

/// The lines a child writes to stderr, as they come.
fn lines_of(child: &mut Child) -> Receiver<String> {
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
fn wait_line(lines: &Receiver<String>, needle: &str, within: Duration) -> String {
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
fn exits_within(child: &mut Child, within: Duration) -> ExitStatus {
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
fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid, NUL-terminated path; `mkfifo` has no other precondition.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// The host goes on: a good plugin added to the folder loads.
fn still_serves(dir: &PluginDir, host: &plughost::Host) {
    dir.add("transform");
    let report = host.load_all().unwrap();
    assert!(
        report.loaded.iter().any(|p| p.name == "transform"),
        "{report:?}"
    );
}

/// A `plughost.toml` in its own folder with `text`.
fn settings(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plughost.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn a_named_pipe_in_the_folder_is_refused_and_the_watch_goes_on() {
    let dir = PluginDir::new();
    let mut child = dir.spawn_run();
    let lines = lines_of(&mut child);
    wait_line(&lines, "watching", Duration::from_secs(30));
    mkfifo(&dir.path().join("libpipe.so"));
    let line = wait_line(&lines, "libpipe.so", Duration::from_secs(10));
    assert!(
        line.contains("libpipe.so: not a regular file: it is a named pipe (FIFO)"),
        "{line}"
    );
    // Nothing is stuck: a plugin written next still loads, and a signal still ends the host.
    dir.add("transform");
    wait_line(&lines, "loaded transform", Duration::from_secs(10));
    terminate(&child);
    assert!(exits_within(&mut child, Duration::from_secs(10)).success());
}

#[test]
fn inspect_says_what_a_path_is_that_is_not_a_file() {
    let dir = PluginDir::new();
    let pipe = dir.path().join("libpipe.so");
    mkfifo(&pipe);
    let out = dir.cli(&["inspect", pipe.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("libpipe.so: not a regular file: it is a named pipe (FIFO)"),
        "{}",
        stderr(&out)
    );
    let folder = dir.path().join("libfolder.so");
    std::fs::create_dir(&folder).unwrap();
    let out = dir.cli(&["inspect", folder.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a regular file: it is a folder"),
        "{}",
        stderr(&out)
    );
}

/// The file range of section `name` in an ELF library.
fn section(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(bytes).unwrap();
    let section = file.section_by_name(name).unwrap();
    let (start, size) = section.file_range().unwrap();
    start as usize..(start + size) as usize
}

/// A built fixture whose `.dynamic` points the loader's symbol tables at nowhere: the preflight
/// (which reads sections) passes it, `ld.so` (which trusts `.dynamic`) crashes on it.
fn damaged_dynamic() -> Vec<u8> {
    let mut bytes = bytes_of("fixture-echo");
    let dynamic = section(&bytes, ".dynamic");
    for entry in bytes[dynamic].chunks_exact_mut(16) {
        let tag = i64::from_le_bytes(entry[..8].try_into().unwrap());
        // DT_STRTAB, DT_SYMTAB, DT_GNU_HASH.
        if matches!(tag, 5 | 6 | 0x6fff_fef5) {
            entry[8..].copy_from_slice(&0x7fff_0000_0000u64.to_le_bytes());
        }
    }
    bytes
}

#[test]
fn a_library_that_crashes_the_loader_is_refused_and_the_host_lives() {
    let dir = PluginDir::new();
    let file = dir.write("libdamaged.so", &damaged_dynamic());
    // In-process: the probe takes the crash.
    let host = dir.host();
    let error = host.open(&file).unwrap_err();
    assert!(matches!(error, LoadError::ProbeRefused { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "{}: refused: the library crashed the loader (SIGSEGV) while being checked",
            file.display()
        )
    );
    // The host is fine, and the command line says the same in one line.
    still_serves(&dir, &host);
    let out = dir.cli(&["inspect", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused: the library crashed the loader (SIGSEGV)"),
        "{}",
        stderr(&out)
    );
}

/// A built fixture one of whose symbols claims a version no table defines: `ld.so` indexes its
/// version table with it unchecked, reading whatever lies past it.
fn damaged_versions() -> Vec<u8> {
    let mut bytes = bytes_of("fixture-echo");
    let versions = section(&bytes, ".gnu.version");
    // Entry 1 (entry 0 is the null symbol): a version index far past any defined one.
    bytes[versions.start + 2..versions.start + 4].copy_from_slice(&140u16.to_le_bytes());
    bytes
}

#[test]
fn a_library_whose_versions_point_past_their_table_is_refused_before_loading() {
    let dir = PluginDir::new();
    let file = dir.write("libversions.so", &damaged_versions());
    let host = dir.host();
    let error = host.open(&file).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: not a loadable shared library: damaged library: symbol 1 has version index \
             140, which no version table defines",
            file.display()
        )
    );
    still_serves(&dir, &host);
}

/// A built fixture whose header says its layout description is the header itself.
fn damaged_layout() -> Vec<u8> {
    use object::{Object, ObjectSymbol};
    let mut bytes = bytes_of("fixture-echo");
    let header = {
        let file = object::File::parse(&*bytes).unwrap();
        file.dynamic_symbols()
            .find(|s| s.name() == Ok(plugin_api::ffi::HEADER_SYMBOL))
            .unwrap()
            .address()
    };
    // The layout pointer (after magic, header version and API version) is filled in by a
    // relative relocation; point its addend at the header.
    let rela = section(&bytes, ".rela.dyn");
    let mut patched = false;
    for entry in bytes[rela].chunks_exact_mut(24) {
        let offset = u64::from_le_bytes(entry[..8].try_into().unwrap());
        if offset == header + 24 {
            entry[16..].copy_from_slice(&header.to_le_bytes());
            patched = true;
        }
    }
    assert!(patched, "no relocation fills the layout pointer");
    bytes
}

#[test]
fn a_library_with_a_damaged_layout_is_refused() {
    let dir = PluginDir::new();
    let file = dir.write("libbadlayout.so", &damaged_layout());
    let host = dir.host();
    let error = host.open(&file).unwrap_err();
    assert!(
        matches!(
            error,
            LoadError::ProbeRefused { .. }
                | LoadError::CheckPanicked { .. }
                | LoadError::LayoutMismatch { .. }
        ),
        "{error}"
    );
    assert!(error
        .to_string()
        .starts_with(&format!("{}: ", file.display())));
    still_serves(&dir, &host);
}

#[test]
fn seeded_byte_mutants_are_refused_or_accepted_never_a_crash() {
    let dir = PluginDir::new();
    let original = bytes_of("fixture-echo");
    // A small, fixed generator: the same mutants on every run.
    let mut state: u64 = 0x5eed_1234_abcd_0001;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let dynamic = section(&original, ".dynamic");
    for n in 0..40 {
        let mut bytes = original.clone();
        // Half of them where the loader is most fragile, the others anywhere.
        for _ in 0..8 {
            let at = if n % 2 == 0 {
                dynamic.start + (next() as usize) % dynamic.len()
            } else {
                (next() as usize) % bytes.len()
            };
            bytes[at] = next() as u8;
        }
        let file = dir.write(&format!("libmutant{n}.so"), &bytes);
        let mut child = dir
            .command(&["inspect", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = exits_within(&mut child, Duration::from_secs(60));
        assert!(
            matches!(status.code(), Some(0 | 1)),
            "mutant {n}: plughost inspect ended with {status}"
        );
        std::fs::remove_file(&file).unwrap();
    }
}

#[test]
fn a_stuck_init_is_given_up_on_and_the_host_goes_on() {
    let dir = PluginDir::new();
    let stuck = dir.add("fixture-stuck");
    let host = plughost::Host::new({
        let mut config = dir.config();
        config.host.init_timeout = Duration::from_millis(300);
        config
    })
    .unwrap();
    let started = Instant::now();
    let error = host
        .load_file(&stuck, br#"{"stuck_in": "init"}"#)
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        error.to_string().ends_with(
            "plugin stuck did not return from init within 300ms; left loaded, not serving"
        ),
        "{error}"
    );
    // The others are not held up.
    let transform = dir.add("transform");
    assert!(host.load_file(&transform, b"{}").is_ok());
}

#[test]
fn a_stuck_shutdown_is_given_up_on_and_the_library_left_loaded() {
    let dir = PluginDir::new();
    let stuck = dir.add("fixture-stuck");
    let host = plughost::Host::new({
        let mut config = dir.config();
        config.host.shutdown_timeout = Duration::from_millis(300);
        config
    })
    .unwrap();
    let events = host.subscribe();
    host.load_file(&stuck, br#"{"stuck_in": "shutdown"}"#)
        .unwrap();
    let error = host.unload("stuck").unwrap_err();
    assert!(
        matches!(
            error,
            CallError::Stuck {
                entry: "shutdown",
                ..
            }
        ),
        "{error}"
    );
    let event = wait_for(&events, Duration::from_secs(5), |e| {
        matches!(e, HostEvent::Unloaded { .. })
    });
    assert!(
        matches!(
            event,
            HostEvent::Unloaded {
                status: UnloadStatus::LeftLoaded,
                ..
            }
        ),
        "{event:?}"
    );
}

#[test]
fn a_stuck_save_state_leaves_the_old_version_loaded_and_the_reload_goes_on() {
    let dir = PluginDir::new();
    // In the folder before the watch starts, so that the only reload is the one below.
    let file = dir.add("fixture-stuck");
    let (host, _watcher, events) = {
        let mut config = dir.config();
        config.host.check_timeout = Duration::from_millis(300);
        let host = std::sync::Arc::new(plughost::Host::new(config).unwrap());
        let events = host.subscribe();
        let watcher = host.watch(plughost::WatchOptions::default()).unwrap();
        (host, watcher, events)
    };
    host.load_file(&file, br#"{"stuck_in": "save_state"}"#)
        .unwrap();
    dir.replace_atomically(
        file.file_name().unwrap().to_str().unwrap(),
        &plughost_tests::rebuilt(&bytes_of("fixture-stuck"), 1),
    );
    let event = wait_for(&events, Duration::from_secs(20), |e| {
        matches!(e, HostEvent::Reloaded { .. })
    });
    assert!(
        matches!(
            event,
            HostEvent::Reloaded {
                state_handed_over: false,
                old: UnloadStatus::LeftLoaded,
                ..
            }
        ),
        "{event:?}"
    );
    let mut out = Vec::new();
    host.handle("stuck")
        .unwrap()
        .call_into(b"x", &mut out)
        .unwrap();
    assert_eq!(out, b"ok");
}

#[test]
fn stuck_validate_config_bounds_inspect_and_config_check() {
    let dir = PluginDir::new();
    let stuck = dir.add("fixture-stuck");
    let (_folder, config) = settings(
        "[host]\ncheck_timeout = \"300ms\"\n\n[plugins.stuck.config]\nstuck_in = \"validate\"\n",
    );
    let config = config.to_str().unwrap();
    let out = dir.cli(&[
        "--config",
        config,
        "inspect",
        stuck.to_str().unwrap(),
        "--init",
        r#"{"stuck_in": "validate"}"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("validate_config did not return within 300ms"),
        "{}",
        stderr(&out)
    );
    let out = dir.cli(&["--config", config, "config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("plugin stuck refuses its config")
            && stderr(&out).contains("did not return within 300ms"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn exec_of_a_plugin_stuck_in_init_ends_with_one_line() {
    let dir = PluginDir::new();
    dir.add("fixture-stuck");
    let (_folder, config) = settings("[host]\ninit_timeout = \"300ms\"\n");
    let mut child = dir
        .command(&[
            "--config",
            config.to_str().unwrap(),
            "exec",
            "stuck",
            "x",
            "--init",
            r#"{"stuck_in": "init"}"#,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut child);
    assert_eq!(
        exits_within(&mut child, Duration::from_secs(20)).code(),
        Some(1)
    );
    let line = wait_line(&lines, "error:", Duration::from_secs(1));
    assert!(
        line.ends_with(
            "plugin stuck did not return from init within 300ms; left loaded, not serving"
        ),
        "{line}"
    );
}

#[test]
fn run_ends_on_a_signal_whatever_its_plugins_are_stuck_in() {
    let dir = PluginDir::new();
    dir.add("fixture-stuck");
    dir.add("transform");
    // Stuck in its shutdown, with its health checked every second.
    let (_folder, config) = settings(
        "[host]\nshutdown_timeout = \"300ms\"\n\n[plugins.stuck.config]\nstuck_in = \"shutdown\"\n",
    );
    let mut child = dir
        .command(&[
            "--config",
            config.to_str().unwrap(),
            "run",
            "--health-interval",
            "1",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut child);
    wait_line(&lines, "2 plugin(s) running", Duration::from_secs(30));
    terminate(&child);
    let line = wait_line(&lines, "gave up on stuck", Duration::from_secs(10));
    assert!(
        // Within what is left of the host's one shutdown deadline (300 ms).
        line.contains("shutdown did not return within")
            && line.contains("ms; left loaded, not serving"),
        "{line}"
    );
    assert!(exits_within(&mut child, Duration::from_secs(10)).success());
}

#[test]
fn a_second_signal_ends_run_at_once_while_an_init_is_stuck() {
    let dir = PluginDir::new();
    dir.add("fixture-stuck");
    let (_folder, config) =
        settings("[host]\ninit_timeout = \"60s\"\n\n[plugins.stuck.config]\nstuck_in = \"init\"\n");
    let mut child = dir
        .command(&["--config", config.to_str().unwrap(), "run"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut child);
    // Nothing is logged before the stuck Init: give it time to be in there.
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&child);
    wait_line(&lines, "stopping while loading", Duration::from_secs(5));
    terminate(&child);
    let status = exits_within(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
    wait_line(&lines, "second signal: exiting now", Duration::from_secs(1));
}

#[test]
fn a_named_pipe_in_place_of_the_settings_file_is_refused_and_the_watch_goes_on() {
    let dir = PluginDir::new();
    let (folder, path) = settings("[host]\nwatch = true\n");
    let mut config = plughost::HostConfig::load(&path).unwrap();
    config.host.plugins_dir = dir.path().to_owned();
    config.host.shadow_dir = Some(dir.shadow().to_owned());
    config.host.probe = dir.config().host.probe;
    let host = std::sync::Arc::new(plughost::Host::new(config).unwrap());
    let events = host.subscribe();
    let _watcher = host.watch(plughost::WatchOptions::default()).unwrap();
    std::fs::remove_file(&path).unwrap();
    mkfifo(&path);
    // (The removal may be seen first, and refused as a missing file.)
    wait_for(
        &events,
        Duration::from_secs(10),
        |e| matches!(e, HostEvent::ConfigRefused { reason, .. } if reason.contains("not a regular file")),
    );
    // Replaced by a real file again: applied as usual.
    std::fs::remove_file(&path).unwrap();
    let temp = folder.path().join(".plughost.toml.tmp");
    std::fs::write(&temp, "[plugins.transform]\nenabled = false\n").unwrap();
    std::fs::rename(&temp, &path).unwrap();
    wait_for(&events, Duration::from_secs(10), |e| {
        matches!(e, HostEvent::ConfigApplied { .. })
    });
}

#[test]
fn a_plugin_that_keeps_pinning_itself_is_not_loaded_again_past_the_limit() {
    let dir = PluginDir::new();
    let pinning = bytes_of("fixture-pinning");
    dir.replace_atomically("libpinning.so", &pinning);
    let host = std::sync::Arc::new(
        plughost::Host::new({
            let mut config = dir.config();
            config.host.max_pinned = 2;
            config
        })
        .unwrap(),
    );
    let events = host.subscribe();
    let _watcher = host.watch(plughost::WatchOptions::default()).unwrap();
    host.load_all().unwrap();
    let handle = host.handle("pinning").unwrap();
    let mut out = Vec::new();
    for generation in 1..=2 {
        // This long-lived test thread takes a thread-local destructor of the version serving.
        handle.call_into(b"pin", &mut out).unwrap();
        dir.replace_atomically(
            "libpinning.so",
            &plughost_tests::rebuilt(&pinning, generation),
        );
        let event = wait_for(&events, Duration::from_secs(20), |e| {
            matches!(e, HostEvent::Reloaded { .. })
        });
        assert!(
            matches!(
                event,
                HostEvent::Reloaded {
                    old: UnloadStatus::StillMapped,
                    ..
                }
            ),
            "{event:?}"
        );
    }
    dir.replace_atomically("libpinning.so", &plughost_tests::rebuilt(&pinning, 3));
    let event = wait_for(&events, Duration::from_secs(20), |e| {
        matches!(e, HostEvent::Refused { .. })
    });
    let HostEvent::Refused { reason, kept, .. } = event else {
        unreachable!()
    };
    assert!(
        reason.contains(
            "plugin pinning not loaded again: 2 of its closed versions are still in memory"
        ) && reason.contains("stop its threads in Shutdown"),
        "{reason}"
    );
    assert!(kept.is_some(), "the running version keeps serving");
    handle.call_into(b"still", &mut out).unwrap();
    assert_eq!(out, b"still");
}

#[test]
fn constructors_run_only_where_the_host_means_them_to() {
    let dir = PluginDir::new();
    dir.add("fixture-ctor");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("constructor.log");
    // Read by the constructor of the library, in whichever process opens it.
    std::env::set_var("PLUGHOST_TEST_CONSTRUCTOR_LOG", &log);
    let host = plughost::Host::new({
        let mut config = dir.config();
        config.plugins.entry("ctor".into()).or_default().enabled = false;
        config
    })
    .unwrap();
    let report = host.load_all().unwrap();
    assert!(
        report.loaded.is_empty() && report.refused.is_empty(),
        "{report:?}"
    );
    let openers = std::fs::read_to_string(&log).unwrap_or_default();
    let me = std::process::id().to_string();
    // Its probe opened it (in another process) to learn its name; this process did not.
    assert!(!openers.is_empty(), "the probe did not run");
    assert!(
        !openers.lines().any(|pid| pid == me),
        "opened in the host: {openers}"
    );
    // Enabled, it starts (and only then runs in the host).
    host.enable("ctor").unwrap();
    assert!(host.handle("ctor").is_ok());
    let openers = std::fs::read_to_string(&log).unwrap();
    assert!(openers.lines().any(|pid| pid == me));

    // What a constructor leaves running in the probe does not hold the host: with this set,
    // the library's constructor starts a `sleep 30` in the probe, holding its output open.
    // (One test for both: the constructor reads this process's environment.)
    std::env::remove_var("PLUGHOST_TEST_CONSTRUCTOR_LOG");
    std::env::set_var("PLUGHOST_TEST_CONSTRUCTOR_SPAWN", "1");
    let other = PluginDir::new();
    let file = other.add("fixture-ctor");
    let started = Instant::now();
    let opened = other.host().open(&file);
    std::env::remove_var("PLUGHOST_TEST_CONSTRUCTOR_SPAWN");
    assert!(opened.is_ok(), "{:?}", opened.err());
    // The `sleep` went with the probe's process group.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_health_check_is_reported_and_keeps_one_thread_at_most() {
    let dir = PluginDir::new();
    let stuck = dir.add("fixture-stuck");
    // Shutting down waits for the stuck check's call no longer than this.
    let mut config = dir.config();
    config.host.shutdown_timeout = Duration::from_millis(300);
    config.host.check_timeout = Duration::from_millis(200);
    let host = std::sync::Arc::new(plughost::Host::new(config).unwrap());
    host.load_file(&stuck, br#"{"stuck_in": "health"}"#)
        .unwrap();
    let dispatcher = plughost::Dispatcher::new(host, plughost::CallPolicy::default());
    let first = dispatcher.check_health("stuck").await.unwrap();
    assert_eq!(
        first,
        plughost::PluginHealth::Unhealthy("health check did not answer within 200 ms".into())
    );
    // The first check is still stuck: no second thread is spent on it.
    let second = dispatcher.check_health("stuck").await.unwrap();
    assert_eq!(
        second,
        plughost::PluginHealth::Unhealthy("its last health check has not returned yet".into())
    );
}

#[test]
fn a_program_that_is_not_a_probe_is_refused_and_leaves_no_verdict() {
    let dir = PluginDir::new();
    let file = dir.add("transform");
    let mut config = dir.config();
    config.host.probe = plughost::ProbeSetting::Program("/bin/true".into());
    let error = plughost::Host::new(config)
        .unwrap()
        .open(&file)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the probe program /bin/true did not answer as a plughost probe does"),
        "{error}"
    );
    // Nothing was remembered: with the real probe the file loads.
    assert!(dir.host().open(&file).is_ok());
}

#[test]
fn a_plugin_stuck_in_init_is_not_tried_again_until_its_file_changes() {
    let dir = PluginDir::new();
    let (_folder, path) = settings(
        "[host]\ninit_timeout = \"300ms\"\n\n[plugins.stuck.config]\nstuck_in = \"init\"\n",
    );
    let mut config = plughost::HostConfig::load(&path).unwrap();
    let defaults = dir.config();
    config.host.plugins_dir = defaults.host.plugins_dir;
    config.host.shadow_dir = defaults.host.shadow_dir;
    config.host.probe = defaults.host.probe;
    let host = std::sync::Arc::new(plughost::Host::new(config).unwrap());
    let events = host.subscribe();
    let _watcher = host.watch(plughost::WatchOptions::default()).unwrap();
    let bytes = bytes_of("fixture-stuck");
    dir.replace_atomically("libfixture_stuck.so", &bytes);
    wait_for(
        &events,
        Duration::from_secs(20),
        |e| matches!(e, HostEvent::Refused { reason, .. } if reason.contains("did not return from init")),
    );
    // The same content again: not tried (each try would leave another stuck thread behind).
    dir.replace_atomically("libfixture_stuck.so", &bytes);
    dir.replace_atomically("libfixture_stuck.so", &bytes);
    let seen = plughost_tests::events_within(&events, Duration::from_secs(2));
    assert!(
        !seen.iter().any(|e| matches!(e, HostEvent::Refused { .. })),
        "{seen:?}"
    );
}

#[test]
fn two_signals_end_run_at_once_while_the_watcher_waits_on_a_stuck_init() {
    let dir = PluginDir::new();
    let (_folder, config) =
        settings("[host]\ninit_timeout = \"60s\"\n\n[plugins.stuck.config]\nstuck_in = \"init\"\n");
    let mut child = dir
        .command(&["--config", config.to_str().unwrap(), "run"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut child);
    wait_line(&lines, "watching", Duration::from_secs(30));
    dir.add("fixture-stuck");
    // The watcher is now inside the stuck Init, holding the lifecycle lock.
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&child);
    wait_line(&lines, "shutting down", Duration::from_secs(5));
    terminate(&child);
    assert_eq!(
        exits_within(&mut child, Duration::from_secs(5)).code(),
        Some(130)
    );
}

#[test]
fn plugins_stuck_at_shutdown_share_one_deadline() {
    // One plugin stuck in its Shutdown, another busy in a call that outlives the deadline: the
    // host gives up on both within one `shutdown_timeout`, not one each.
    let dir = PluginDir::new();
    let stuck = dir.add("fixture-stuck");
    let slow = dir.add("fixture-slow");
    let host = std::sync::Arc::new(
        plughost::Host::new({
            let mut config = dir.config();
            config.host.shutdown_timeout = Duration::from_secs(2);
            config
        })
        .unwrap(),
    );
    host.load_file(&stuck, br#"{"stuck_in": "shutdown"}"#)
        .unwrap();
    host.load_file(&slow, b"{}").unwrap();
    let handle = host.handle("slow").unwrap();
    let busy = std::thread::spawn(move || handle.call_into(b"sleep 4000", &mut Vec::new()));
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    host.shutdown();
    // Two deadlines would be 4 s at least.
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "{:?}",
        started.elapsed()
    );
    let _ = busy.join();
}
