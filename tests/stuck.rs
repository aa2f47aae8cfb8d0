//! Plugins that misbehave once loaded: entry points that never return (Init, Shutdown,
//! validate_config, the state hand-over, health) and libraries that pin themselves in memory.
//! The host gives up within its bounds with one line naming the plugin, leaves what still runs
//! loaded, and goes on; signals always end `plughost run`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use plughost::{CallError, HostEvent, UnloadStatus};
use plughost_tests::{
    bytes_of, exits_within, lines_of, settings, stderr, terminate, wait_for, wait_line, PluginDir,
};

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
