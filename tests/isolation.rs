//! Isolated plugins: the same library in a worker process. A crash, an abort, an exit, a
//! stack overflow, a memory bomb or a call that never returns costs the plugin (which is
//! restarted), never the host or the other plugins.

use std::time::{Duration, Instant};

use plughost::{CallError, PluginSettings};
use plughost_tests::isolated::{answers_again, call, guarded, host_with, workers_of};
use plughost_tests::PluginDir;

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
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let error = guarded(&host, "crashy", b"loop", timeout).unwrap_err();
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
    let answer = guarded(&host, "crashy", b"deadline", timeout).unwrap();
    assert_eq!(answer, b"some", "the deadline crosses the boundary");
}

#[test]
fn a_cancelled_call_sees_its_cancellation_in_the_worker() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let host = std::sync::Arc::new(host_with(&dir, &["crashy"], |_| {}));
    host.load_file(&crashy, b"{}").unwrap();
    let pid = call(&host, "crashy", b"pid").unwrap();
    let timeout = Duration::from_millis(100);
    // The plugin stops its 5 s sleep as soon as it sees the cancellation: no kill needed.
    let error = guarded(&host, "crashy", b"sleep:5000", timeout).unwrap_err();
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
        workers_of(std::process::id(), dir.path()),
        Vec::<u32>::new()
    );
    // The same file, well configured, loads.
    host.load_file(&crashy, b"{}").unwrap();
    assert_eq!(workers_of(std::process::id(), dir.path()).len(), 1);
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
fn calls_arriving_during_a_restart_wait_within_their_deadline() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let host = std::sync::Arc::new(host_with(&dir, &["crashy"], |_| {}));
    host.load_file(&crashy, b"{}").unwrap();
    let timeout = Duration::from_secs(10);
    for _ in 0..3 {
        let error = guarded(&host, "crashy", b"abort", timeout).unwrap_err();
        assert!(matches!(error, CallError::Crashed { .. }), "{error}");
        // At once, while the worker is replaced (the second and third after a pause).
        let answer = guarded(&host, "crashy", b"ok?", timeout).unwrap();
        assert_eq!(answer, b"ok?");
    }
}

#[test]
fn what_a_worker_can_reach_cannot_hurt_the_host() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    // It starts a process below (`spawn`): the kernel lets its worker do that only with `exec`.
    let host = host_with(&dir, &["crashy"], |config| {
        plughost_tests::grant(config, "crashy", &["exec"]);
    });
    host.load_file(&crashy, b"{}").unwrap();
    // The lanes cannot be cut under the host (that would be a SIGBUS here).
    let error = call(&host, "crashy", b"shrink:4").unwrap_err();
    assert!(
        error.to_string().contains("Operation not permitted"),
        "{error}"
    );
    assert_eq!(call(&host, "crashy", b"after").unwrap(), "after");
    // Too large either way: a clear error, and the plugin serves on.
    let error = call(&host, "crashy", b"big:17000000").unwrap_err();
    assert_eq!(
        error.to_string(),
        "plugin crashy: an output of 17000000 bytes is more than the 16 MiB that may cross an \
         isolated plugin's boundary"
    );
    let huge = vec![b'x'; 17 << 20];
    let error = host
        .handle("crashy")
        .unwrap()
        .call_into(&huge, &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(
            error,
            CallError::TooLarge {
                what: "an input",
                ..
            }
        ),
        "{error}"
    );
    // The largest answer there may be comes through whole.
    assert_eq!(
        call(&host, "crashy", b"big:16777216").unwrap().len(),
        16 << 20
    );
    // A process the plugin started goes with its worker when that crashes.
    let child: u32 = call(&host, "crashy", b"spawn").unwrap().parse().unwrap();
    assert!(plughost_tests::isolated::alive(child));
    assert!(call(&host, "crashy", b"segfault").is_err());
    let started = Instant::now();
    while plughost_tests::isolated::alive(child) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{child} outlived its worker"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    answers_again(&host, "crashy", Duration::from_secs(10));
}

#[test]
fn a_plugin_unloaded_while_its_worker_restarts_is_not_restarted_again() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let marker = dir.shadow().join("stall");
    let host = host_with(&dir, &["crashy"], |config| {
        config.host.init_timeout = Duration::from_millis(300);
    });
    let config = format!(r#"{{"stall_if": {:?}}}"#, marker.display().to_string());
    host.load_file(&crashy, config.as_bytes()).unwrap();
    // From now on every restart's Init hangs (and is killed after 300 ms, then tried again).
    std::fs::write(&marker, b"").unwrap();
    assert!(call(&host, "crashy", b"abort").is_err());
    std::thread::sleep(Duration::from_millis(500));
    host.unload("crashy").unwrap();
    let started = Instant::now();
    while !workers_of(std::process::id(), dir.path()).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a worker outlived unload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And none comes back.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        workers_of(std::process::id(), dir.path()),
        Vec::<u32>::new()
    );
}

#[test]
fn shutting_down_ends_an_isolated_call_that_never_returns() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let host = host_with(&dir, &["crashy"], |config| {
        config.host.shutdown_timeout = Duration::from_millis(500);
    });
    let handle = host.load_file(&crashy, b"{}").unwrap();
    // No deadline: in process, this call could only be left running.
    let caller = std::thread::spawn(move || handle.call_into(b"loop", &mut Vec::new()));
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    host.shutdown();
    assert!(started.elapsed() < Duration::from_secs(5));
    let error = caller.join().unwrap().unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("crashy crashed: killed by the host"),
        "{error}"
    );
    assert_eq!(
        workers_of(std::process::id(), dir.path()),
        Vec::<u32>::new()
    );
}
