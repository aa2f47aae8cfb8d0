//! Isolated plugins: the same library in a worker process. A crash, an abort, an exit, a
//! stack overflow, a memory bomb or a call that never returns costs the plugin (which is
//! restarted), never the host or the other plugins.

use std::time::{Duration, Instant};

use plughost::{CallError, Host, HostConfig, Isolation, PluginSettings};
use plughost_tests::PluginDir;

/// A host whose `crashy` plugin (and any other named in `isolated`) runs in a worker.
fn host_with(dir: &PluginDir, isolated: &[&str], tune: impl FnOnce(&mut HostConfig)) -> Host {
    let mut config = dir.config();
    for name in isolated {
        config.plugins.insert(
            (*name).to_owned(),
            PluginSettings {
                isolation: Some(Isolation::Process),
                ..PluginSettings::default()
            },
        );
    }
    tune(&mut config);
    Host::new(config).unwrap()
}

fn call(host: &Host, name: &str, input: &[u8]) -> Result<String, CallError> {
    let mut out = Vec::with_capacity(64);
    host.handle(name)?.call_into(input, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Calls until the plugin answers again (after its restart), at most `within`.
fn answers_again(host: &Host, name: &str, within: Duration) -> String {
    let started = Instant::now();
    loop {
        match call(host, name, b"pid") {
            Ok(answer) => return answer,
            Err(e) if started.elapsed() < within => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{name} did not answer again within {within:?}: {e}"),
        }
    }
}

#[test]
fn an_isolated_plugin_runs_in_another_process_and_answers_like_an_in_process_one() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let host = host_with(&dir, &["crashy"], |_| {});
    host.load_file(&crashy, b"{}").unwrap();
    let pid: u32 = call(&host, "crashy", b"pid").unwrap().parse().unwrap();
    assert_ne!(pid, std::process::id());
    assert_eq!(call(&host, "crashy", b"hello").unwrap(), "hello");
    assert_eq!(call(&host, "crashy", b"count").unwrap(), "1");
    assert_eq!(call(&host, "crashy", b"big:100000").unwrap().len(), 100_000);
    let error = call(&host, "crashy", b"fail").unwrap_err();
    assert_eq!(
        error.to_string(),
        "plugin crashy returned an error: failed on request"
    );
    let error = call(&host, "crashy", b"panic").unwrap_err();
    assert!(matches!(error, CallError::Panicked { .. }), "{error}");
    let output = host.handle("crashy").unwrap().call(b"echo me").unwrap();
    assert_eq!(&*output, b"echo me");
}

#[test]
fn a_segfault_costs_one_call_and_the_plugin_answers_again_after_its_restart() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let transform = dir.add("transform");
    let host = host_with(&dir, &["crashy"], |_| {});
    host.load_file(&crashy, b"{}").unwrap();
    host.load_file(&transform, b"{}").unwrap();
    let first = call(&host, "crashy", b"pid").unwrap();
    let error = call(&host, "crashy", b"segfault").unwrap_err();
    assert_eq!(
        error.to_string(),
        "crashy crashed: segmentation fault (SIGSEGV) during execute"
    );
    assert_eq!(
        call(&host, "transform", b"still here").unwrap(),
        "STILL HERE"
    );
    let second = answers_again(&host, "crashy", Duration::from_secs(10));
    assert_ne!(first, second, "a new worker");
}

/// Loads crashy isolated (with `settings` added to its table), crashes it with `input`, and
/// returns the error; checks a second, in-process plugin and a second isolated one never
/// noticed, and that crashy answers again from a new worker.
fn crash_with(input: &str, settings: impl FnOnce(&mut PluginSettings)) -> CallError {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let transform = dir.add("transform");
    let echo = dir.add("fixture-echo");
    let host = host_with(&dir, &["crashy", "echo"], |config| {
        settings(config.plugins.get_mut("crashy").unwrap());
    });
    host.load_file(&crashy, b"{}").unwrap();
    host.load_file(&transform, b"{}").unwrap();
    host.load_file(&echo, b"").unwrap();
    let first = call(&host, "crashy", b"pid").unwrap();
    let error = call(&host, "crashy", input.as_bytes()).unwrap_err();
    assert_eq!(call(&host, "transform", b"fine").unwrap(), "FINE");
    assert_eq!(call(&host, "echo", b"fine").unwrap(), "fine");
    let second = answers_again(&host, "crashy", Duration::from_secs(10));
    assert_ne!(first, second, "a new worker");
    error
}

#[test]
fn an_abort_an_exit_and_a_stack_overflow_are_named_and_survived() {
    assert_eq!(
        crash_with("abort", |_| {}).to_string(),
        "crashy crashed: aborted (SIGABRT) during execute"
    );
    assert_eq!(
        crash_with("exit", |_| {}).to_string(),
        "crashy crashed: exited with code 3 during execute"
    );
    assert_eq!(
        crash_with("overflow", |_| {}).to_string(),
        "crashy crashed: stack overflow during execute"
    );
}

#[test]
fn a_memory_bomb_reports_the_limit_it_hit() {
    let error = crash_with("bomb", |settings| {
        settings.memory = Some("64MiB".parse().unwrap());
    });
    assert_eq!(
        error.to_string(),
        "crashy crashed: memory limit 64 MiB exceeded during execute"
    );
}

#[test]
fn a_call_that_never_returns_times_out_and_its_worker_is_replaced() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let host = std::sync::Arc::new(host_with(&dir, &["crashy"], |config| {
        config.host.kill_grace = Duration::from_millis(200);
    }));
    host.load_file(&crashy, b"{}").unwrap();
    let first = call(&host, "crashy", b"pid").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dispatcher = plughost::Dispatcher::new(
        host.clone(),
        plughost::CallPolicy {
            timeout: Duration::from_millis(300),
            breaker: None,
            ..plughost::CallPolicy::default()
        },
    );
    let started = Instant::now();
    let error = runtime
        .block_on(dispatcher.execute("crashy", b"loop".to_vec()))
        .unwrap_err();
    assert!(matches!(error, CallError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Past its deadline and grace, the worker is killed, and a new one serves.
    let started = Instant::now();
    while answers_again(&host, "crashy", Duration::from_secs(10)) == first {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never replaced"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer = runtime
        .block_on(dispatcher.execute("crashy", b"deadline".to_vec()))
        .unwrap();
    assert_eq!(answer, b"some", "the deadline crosses the boundary");
}

#[test]
fn a_cancelled_call_sees_its_cancellation_in_the_worker() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let host = std::sync::Arc::new(host_with(&dir, &["crashy"], |_| {}));
    host.load_file(&crashy, b"{}").unwrap();
    let pid = call(&host, "crashy", b"pid").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dispatcher = plughost::Dispatcher::new(
        host.clone(),
        plughost::CallPolicy {
            timeout: Duration::from_millis(100),
            breaker: None,
            ..plughost::CallPolicy::default()
        },
    );
    // The plugin stops its 5 s sleep as soon as it sees the cancellation: no kill needed.
    let error = runtime
        .block_on(dispatcher.execute("crashy", b"sleep:5000".to_vec()))
        .unwrap_err();
    assert!(matches!(error, CallError::Timeout { .. }), "{error}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        call(&host, "crashy", b"pid").unwrap(),
        pid,
        "the same worker"
    );
}

#[test]
fn an_init_that_never_returns_is_bounded_and_leaves_no_worker() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let host = host_with(&dir, &["crashy"], |config| {
        config.host.init_timeout = Duration::from_millis(300);
    });
    let started = Instant::now();
    let error = host.load_file(&crashy, br#"{"init": "loop"}"#).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        error
            .to_string()
            .ends_with("plugin crashy did not answer within 300 ms"),
        "{error}"
    );
    // A crash in Init is named too; neither leaves a worker behind.
    let error = host
        .load_file(&crashy, br#"{"init": "segfault"}"#)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("its worker process crashed during init: segmentation fault (SIGSEGV)"),
        "{error}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        workers_of(std::process::id(), dir.shadow()),
        Vec::<u32>::new()
    );
    // The same file, well configured, loads.
    host.load_file(&crashy, b"{}").unwrap();
    assert_eq!(workers_of(std::process::id(), dir.shadow()).len(), 1);
}

/// The worker processes (`plughost __worker ...`) whose parent is `parent`, loading copies in
/// `shadow` (tests run in parallel in one process: each has its own shadow folder).
fn workers_of(parent: u32, shadow: &std::path::Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        // Fields after the command name in parentheses: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let shadow = shadow.as_os_str().as_encoded_bytes();
        let is_worker = args.get(1) == Some(&&b"__worker"[..])
            && args.get(3).is_some_and(|copy| copy.starts_with(shadow));
        if is_worker && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// Whether process `pid` exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        })
        .unwrap_or(false)
}

#[test]
fn a_plugin_that_keeps_crashing_is_marked_failed_and_says_so() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let host = host_with(&dir, &["crashy"], |config| {
        config.host.max_crashes = 2;
    });
    let handle = host.load_file(&crashy, b"{}").unwrap();
    assert!(call(&host, "crashy", b"segfault").is_err());
    answers_again(&host, "crashy", Duration::from_secs(10));
    assert!(call(&host, "crashy", b"segfault").is_err());
    std::thread::sleep(Duration::from_millis(300));
    let error = call(&host, "crashy", b"pid").unwrap_err();
    assert!(
        matches!(error, CallError::GaveUp { crashes: 2, .. }),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "plugin crashy failed: it crashed 2 times within 1m, last: segmentation fault \
         (SIGSEGV) during execute; not restarted until its file changes or it is enabled again"
    );
    assert_eq!(
        handle.health().unwrap(),
        plughost::PluginHealth::Unhealthy(
            "failed: crashed 2 times within 1m, last: segmentation fault (SIGSEGV) during \
             execute"
                .into()
        )
    );
    assert_eq!(handle.worker_pid(), None);
    // Loading it again (a new build, or the same file) starts afresh.
    host.load_file(&crashy, b"{}").unwrap();
    assert!(call(&host, "crashy", b"pid").is_ok());
}

#[test]
fn a_restarted_worker_gets_the_same_config_and_the_state_it_was_handed() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let host = host_with(&dir, &["crashy"], |_| {});
    host.load_file(&crashy, br#"{"start": 10}"#).unwrap();
    assert_eq!(call(&host, "crashy", b"count").unwrap(), "11");
    // Loading the same file again hands the count over, like a reload.
    host.load_file(&crashy, br#"{"start": 10}"#).unwrap();
    assert_eq!(call(&host, "crashy", b"count").unwrap(), "12");
    assert!(call(&host, "crashy", b"abort").is_err());
    answers_again(&host, "crashy", Duration::from_secs(10));
    // Restarted with `start` 10 and the state "count=11" handed over at its last Init.
    assert_eq!(call(&host, "crashy", b"count").unwrap(), "12");
}

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
    assert_eq!(workers_of(run.id(), dir.shadow()), vec![worker]);
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
    assert_eq!(workers_of(std::process::id(), dir.shadow()).len(), 1);
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
