//! Worker processes around the host: isolated and in-process plugins calling each other,
//! hot reloads under load, a killed host, the command line, and a host that does not probe.

use std::time::{Duration, Instant};

use plughost::PluginSettings;
use plughost_tests::isolated::{alive, call, host_with, workers_of};
use plughost_tests::{grant, PluginDir};

#[test]
fn isolated_and_in_process_plugins_call_each_other_through_the_host() {
    let dir = PluginDir::new();
    dir.add("fixture-storage");
    dir.add("fixture-notes");
    let mut storage = serde_json::Map::new();
    storage.insert("namespace".into(), "main".into());
    storage.insert("capacity".into(), 10.into());
    for isolated in [&["notes"][..], &["storage"][..], &["notes", "storage"][..]] {
        let host = host_with(&dir, isolated, |config| {
            let table = PluginSettings {
                isolation: config.plugins.get("storage").and_then(|s| s.isolation),
                config: storage.clone(),
                ..PluginSettings::default()
            };
            config.plugins.insert("storage".into(), table);
            grant(config, "notes", &["call:storage"]);
        });
        let report = host.load_all().unwrap();
        assert!(report.refused.is_empty(), "{:?}", report.refused);
        assert_eq!(call(&host, "notes", b"add hello").unwrap(), "ok");
        assert_eq!(call(&host, "notes", b"read").unwrap(), "main:hello");
        let big = call(&host, "notes", b"big 100000").unwrap();
        assert_eq!(big.len(), "main:".len() + 100_000, "{isolated:?}");
        let error = call(&host, "notes", b"call transform hi").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("not a declared dependency of notes"),
            "{isolated:?}: {error}"
        );
    }
}

#[test]
fn no_worker_outlives_a_killed_host() {
    let dir = PluginDir::new();
    dir.add("fixture-crashy");
    let config = dir.path().join("plughost.toml");
    std::fs::write(&config, "[plugins.crashy]\nisolation = \"process\"\n").unwrap();
    let mut run = dir
        .command(&["run"])
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = plughost_tests::lines_of(&mut run);
    let line = plughost_tests::wait_line(&lines, "loaded crashy", Duration::from_secs(30));
    let worker: u32 = line
        .rsplit_once("in worker process ")
        .and_then(|(_, pid)| pid.trim_end_matches(')').trim().parse().ok())
        .unwrap_or_else(|| panic!("no worker pid in {line:?}"));
    assert!(alive(worker));
    assert_eq!(workers_of(run.id(), dir.path()), vec![worker]);
    run.kill().unwrap(); // SIGKILL: no clean-up runs in the host
    run.wait().unwrap();
    let started = Instant::now();
    while alive(worker) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "worker {worker} outlived its host"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_hundred_reloads_of_an_isolated_plugin_under_load_fail_no_call() {
    let dir = PluginDir::new();
    let crashy = plughost_tests::bytes_of("fixture-crashy");
    dir.replace_atomically("libcrashy.so", &crashy);
    let host = std::sync::Arc::new(host_with(&dir, &["crashy"], |_| {}));
    let events = host.subscribe();
    let _watcher = host.watch(plughost::WatchOptions::default()).unwrap();
    host.load_all().unwrap();
    let handle = host.handle("crashy").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (handle, stop) = (handle.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut calls, mut failures) = (0u64, Vec::new());
                let mut out = Vec::with_capacity(64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match handle.call_into(b"count", &mut out) {
                        Ok(()) => calls += 1,
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (calls, failures)
            })
        })
        .collect();
    let mut workers = std::collections::HashSet::new();
    for generation in 1..=200 {
        dir.replace_atomically(
            "libcrashy.so",
            &plughost_tests::rebuilt(&crashy, generation),
        );
        plughost_tests::wait_for(&events, Duration::from_secs(30), |e| {
            matches!(e, plughost::HostEvent::Reloaded { .. })
        });
        workers.insert(handle.worker_pid().unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for caller in callers {
        let (calls, failures) = caller.join().unwrap();
        assert!(
            failures.is_empty(),
            "{} failed calls: {:?}",
            failures.len(),
            &failures[..1]
        );
        total += calls;
    }
    assert!(total > 200, "{total} calls");
    assert_eq!(workers.len(), 200, "each version in a worker of its own");
    // The count went on across all of them: each reload handed it over (calls the old
    // version answered after it saved its state are not in it, as in process).
    let count: u64 = call(&host, "crashy", b"count").unwrap().parse().unwrap();
    assert!(
        count > total / 2 && count <= total + 1,
        "{count} of {total}"
    );
    // Every old worker exited.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(workers_of(std::process::id(), dir.path()).len(), 1);
}

#[test]
fn exec_isolated_reports_a_crash_and_logs_what_the_plugin_wrote() {
    let dir = PluginDir::new();
    dir.add("fixture-crashy");
    let exec = |input: &str| {
        dir.command(&["exec", "--isolated", "crashy", input])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let out = exec("segfault");
    assert_eq!(out.status.code(), Some(1));
    let stderr = plughost_tests::stderr(&out);
    assert!(
        stderr.contains("error: crashy crashed: segmentation fault (SIGSEGV) during execute"),
        "{stderr}"
    );
    let out = exec("log:a line through the host");
    assert!(out.status.success(), "{}", plughost_tests::stderr(&out));
    assert_eq!(plughost_tests::stdout(&out), "logged\n");
    let stderr = plughost_tests::stderr(&out);
    let line = stderr
        .lines()
        .find(|l| l.contains("a line through the host"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("plugin{name=crashy"), "{line}");
    // What the plugin prints goes to the host's log, under its span, not to stdout.
    let out = exec("print:said aloud");
    assert_eq!(plughost_tests::stdout(&out), "printed\n");
    let stderr = plughost_tests::stderr(&out);
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("said aloud"))
        .collect();
    assert_eq!(said.len(), 2, "stdout and stderr: {stderr}");
    assert!(
        said.iter().all(|l| l.contains("plugin{name=crashy")),
        "{said:?}"
    );
    assert!(
        said.iter().any(|l| l.contains("stream=\"stderr\"")),
        "{said:?}"
    );
}

#[test]
fn list_shows_where_each_plugin_runs() {
    let dir = PluginDir::new();
    dir.add("fixture-crashy");
    dir.add("transform");
    let config = dir.path().join("plughost.toml");
    std::fs::write(&config, "[plugins.crashy]\nisolation = \"process\"\n").unwrap();
    let out = dir
        .command(&["list"])
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", plughost_tests::stderr(&out));
    let table = plughost_tests::stdout(&out);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in\n{table}"))
            .split_whitespace()
            .nth(3)
            .unwrap()
            .to_owned()
    };
    assert_eq!(row("crashy"), "process");
    assert_eq!(row("transform"), "in-process");
}

#[test]
fn without_a_probe_each_plugin_still_runs_where_its_settings_say() {
    let dir = PluginDir::new();
    dir.add("fixture-crashy");
    dir.add("transform");
    // With nothing probing, the worker program is the plughost found beside the tests'
    // binaries: built first.
    plughost_tests::plughost();
    let host = host_with(&dir, &["crashy"], |config| {
        config.host.probe = plughost::ProbeSetting::Off;
    });
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert!(host.handle("crashy").unwrap().is_isolated());
    assert!(!host.handle("transform").unwrap().is_isolated());
    let pid: u32 = call(&host, "crashy", b"pid").unwrap().parse().unwrap();
    assert_ne!(pid, std::process::id());
    // The isolated plugin's library was never mapped into this process.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let shadow = dir.shadow().canonicalize().unwrap();
    let mapped: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains(&*shadow.to_string_lossy()) && l.contains("crashy"))
        .collect();
    assert!(mapped.is_empty(), "{mapped:?}");
}
