//! The status of plugins and the operations an admin API builds on, end to end with real
//! fixture plugins: the status ledger through a plugin's life, reloading one plugin on
//! request, setting one plugin's config at run time (and writing it back into the file), and
//! circuit changes as events.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use plughost::{
    Breaker, CallPolicy, CircuitState, ConfigError, Dispatcher, Host, HostConfig, HostError,
    HostEvent, LoadError, MetricsSnapshot, PluginState, WatchOptions,
};
use plughost_tests::{bytes_of, events_within, plugin_table, wait_for, PluginDir};

const WAIT: Duration = Duration::from_secs(20);
const FILE: &str = "libversioned.so";

fn call(host: &Host, name: &str, input: &[u8]) -> Result<String, plughost::CallError> {
    let mut out = Vec::with_capacity(64);
    host.handle(name)?.call_into(input, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn status(host: &Host, name: &str) -> plughost::PluginStatus {
    host.plugin_status(name)
        .unwrap_or_else(|| panic!("no status of {name}: {:#?}", host.status()))
}

fn reloaded(event: &HostEvent) -> bool {
    matches!(event, HostEvent::Reloaded { .. })
}

fn refused(event: &HostEvent) -> bool {
    matches!(event, HostEvent::Refused { .. })
}

#[test]
fn the_status_follows_a_plugin_through_its_life() {
    let dir = PluginDir::new();
    let file = dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    dir.add("transform");
    let host = Arc::new(dir.host());
    let events = host.subscribe();
    let _watcher = host.watch(WatchOptions::default()).unwrap();
    assert!(!host.is_started());
    host.load_all().unwrap();
    assert!(host.is_started());
    assert!(host.started_at() <= std::time::SystemTime::now());

    let names: Vec<String> = host.status().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["transform", "versioned"], "sorted by name");
    let versioned = status(&host, "versioned");
    assert_eq!(versioned.state, PluginState::Running);
    assert_eq!(versioned.state.as_str(), "running");
    assert_eq!(
        versioned.info.as_ref().unwrap().version.to_string(),
        "1.0.0"
    );
    assert_eq!(versioned.file.as_deref(), Some(file.as_path()));
    assert!(versioned.enabled && versioned.loaded_at.is_some());
    assert_eq!((versioned.reloads, versioned.refusals), (0, 0));
    assert_eq!(versioned.isolation, plughost::Isolation::InProcess);
    let first_loaded = versioned.loaded_at.unwrap();

    // A new build: counted, and the version in service began serving later.
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v2"));
    wait_for(&events, WAIT, reloaded);
    let versioned = status(&host, "versioned");
    assert_eq!(versioned.reloads, 1);
    assert_eq!(
        versioned.info.as_ref().unwrap().version.to_string(),
        "2.0.0"
    );
    assert!(versioned.loaded_at.unwrap() >= first_loaded);

    // A refused build: the old version keeps running, the refusal is on record.
    dir.replace_atomically(FILE, b"not a library");
    wait_for(&events, WAIT, refused);
    let versioned = status(&host, "versioned");
    assert_eq!(versioned.state, PluginState::Running);
    assert_eq!(versioned.refusals, 1);
    let last = versioned.last_refusal.unwrap();
    assert_eq!(last.file, file);
    assert!(last.reason.contains("libversioned.so"), "{}", last.reason);
    assert!(
        host.refusals().is_empty(),
        "the file still serves its old content"
    );
    assert_eq!(call(&host, "versioned", b"x").unwrap(), "2.0.0:x");

    // A file that holds nothing usable counts among the refused files, toward no plugin.
    let junk = dir.replace_atomically("libjunk.so", b"junk");
    wait_for(
        &events,
        WAIT,
        |e| matches!(e, HostEvent::Refused { file, .. } if file == &junk),
    );
    let refusals = host.refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].file, junk);
    assert_eq!(host.status().len(), 2);
    std::fs::remove_file(&junk).unwrap();
    assert!(plughost_tests::eventually(WAIT, || host
        .refusals()
        .is_empty()));

    // Disabled, then enabled again.
    host.disable("transform").unwrap();
    let transform = status(&host, "transform");
    assert_eq!(
        (transform.state, transform.enabled),
        (PluginState::Disabled, false)
    );
    assert!(transform.loaded_at.is_none() && transform.info.is_some());
    host.enable("transform").unwrap();
    assert_eq!(status(&host, "transform").state, PluginState::Running);

    // The file deleted: stopped, its file and version still known.
    std::fs::remove_file(&file).unwrap();
    wait_for(
        &events,
        WAIT,
        |e| matches!(e, HostEvent::Unloaded { name, .. } if name == "versioned"),
    );
    let versioned = status(&host, "versioned");
    assert_eq!(versioned.state, PluginState::Stopped);
    assert_eq!(versioned.file.as_deref(), Some(file.as_path()));
    assert_eq!(versioned.info.unwrap().version.to_string(), "2.0.0");
    assert!(versioned.loaded_at.is_none());
    assert!(host.plugin_status("nothing").is_none());
}

#[test]
fn reload_acts_now_and_says_how_it_went() {
    let dir = PluginDir::new();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    dir.add("transform");
    // No watcher: nothing happens to a new file until asked.
    let host = dir.host();
    let events = host.subscribe();
    host.load_all().unwrap();

    // The same content: nothing to do, nothing done.
    host.reload("versioned").unwrap();
    assert!(!events_within(&events, Duration::from_millis(200))
        .iter()
        .any(reloaded));
    assert_eq!(status(&host, "versioned").reloads, 0);

    // A new build serves once `reload` returns.
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v2"));
    host.reload("versioned").unwrap();
    assert_eq!(call(&host, "versioned", b"x").unwrap(), "2.0.0:x");
    assert_eq!(status(&host, "versioned").reloads, 1);

    // A refused build: the error says why, names the plugin, and the old version serves.
    dir.replace_atomically(FILE, b"not a library");
    let error = host.reload("versioned").unwrap_err();
    assert!(
        matches!(&error, HostError::ReloadRefused { plugin, .. } if plugin == "versioned"),
        "{error:?}"
    );
    assert_eq!(error.plugin(), Some("versioned"));
    assert!(!error.is_unknown_plugin());
    assert!(
        std::error::Error::source(&error).is_some(),
        "the refusal is its source"
    );
    let HostError::ReloadRefused { source, .. } = &error else {
        unreachable!()
    };
    assert!(
        matches!(**source, LoadError::NotALibrary { .. }),
        "{source}"
    );
    assert!(source.path().ends_with(FILE), "{source}");
    assert!(error
        .to_string()
        .starts_with("plugin versioned not reloaded: "));
    assert_eq!(call(&host, "versioned", b"x").unwrap(), "2.0.0:x");
    // Asked again, it is tried again (and refused again).
    assert!(matches!(
        host.reload("versioned"),
        Err(HostError::ReloadRefused { .. })
    ));
    assert_eq!(status(&host, "versioned").refusals, 2);

    // A gone file is refused too: a reload does not unload.
    std::fs::remove_file(dir.path().join(FILE)).unwrap();
    assert!(matches!(
        host.reload("versioned"),
        Err(HostError::ReloadRefused { .. })
    ));
    assert_eq!(status(&host, "versioned").state, PluginState::Running);

    // Unknown, and disabled.
    let error = host.reload("nope").unwrap_err();
    assert!(matches!(&error, HostError::UnknownPlugin { plugin } if plugin == "nope"));
    assert!(error.is_unknown_plugin());
    assert_eq!(error.plugin(), Some("nope"));
    host.disable("transform").unwrap();
    assert!(matches!(
        host.reload("transform"),
        Err(HostError::PluginDisabled { .. })
    ));
}

/// storage's table, its token from a variable that is never set (the default applies).
const STORAGE: &str = r#"# the store
[plugins.storage]
priority = 1 # first

[plugins.storage.config]
namespace = "main" # where keys live
token = "${PLUGHOST_STATUS_TEST_UNSET:-s3cret}" # from the environment
"#;

/// A host on `dir` with settings from `text` in a `plughost.toml` of their own.
fn host_with_file(dir: &PluginDir, text: &str) -> (tempfile::TempDir, PathBuf, Arc<Host>) {
    let (config_dir, path) = plughost_tests::settings(text);
    let mut config = HostConfig::load(&path).unwrap();
    let own = dir.config();
    config.host.plugins_dir = own.host.plugins_dir;
    config.host.shadow_dir = own.host.shadow_dir;
    config.host.probe = own.host.probe;
    (config_dir, path, Arc::new(Host::new(config).unwrap()))
}

#[test]
fn set_plugin_config_applies_like_an_edit_of_the_file() {
    let dir = PluginDir::new();
    dir.add("fixture-storage");
    let (_config_dir, path, host) = host_with_file(&dir, STORAGE);
    let events = host.subscribe();
    let _watcher = host.watch(WatchOptions::default()).unwrap();
    host.load_all().unwrap();
    call(&host, "storage", b"put k v").unwrap();
    assert_eq!(call(&host, "storage", b"get k").unwrap(), "main:v");

    // Applied to the running plugin; the file stays as it is.
    let config = |value: serde_json::Value| value.as_object().cloned().unwrap();
    let changed = host
        .set_plugin_config(
            "storage",
            config(serde_json::json!({"namespace": "api", "token": "s3cret"})),
            false,
        )
        .unwrap()
        .changed;
    assert_eq!(changed, ["storage"]);
    call(&host, "storage", b"put k v").unwrap();
    assert_eq!(call(&host, "storage", b"get k").unwrap(), "api:v");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), STORAGE);
    assert_eq!(host.config().plugin("storage").config["namespace"], "api");

    // Refused whole, with the messages of an edit: the schema, then the plugin itself.
    let error = host
        .set_plugin_config(
            "storage",
            config(serde_json::json!({"namespace": 7})),
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "plugin storage: config key `namespace` must be a string, found an integer (7)"
        ),
        "{error}"
    );
    let error = host
        .set_plugin_config(
            "storage",
            config(serde_json::json!({"namespace": "x", "token": "bad-1"})),
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("plugin storage refuses its new config: token *** was revoked"),
        "{error}"
    );
    assert!(!error.contains("bad-1"), "{error}");
    assert_eq!(call(&host, "storage", b"get k").unwrap(), "api:v");

    // An unknown plugin is told apart.
    let error = host
        .set_plugin_config("nope", serde_json::Map::new(), false)
        .unwrap_err();
    assert!(
        matches!(&error, ConfigError::UnknownPlugin { plugin, .. } if plugin == "nope"),
        "{error:?}"
    );

    // Written back: the file keeps its comments and the variable (whose value is unchanged),
    // and the watcher, reading it, finds nothing more to change.
    let reloads = status(&host, "storage").reloads;
    let changed = host
        .set_plugin_config(
            "storage",
            config(serde_json::json!({"namespace": "written", "token": "s3cret"})),
            true,
        )
        .unwrap()
        .changed;
    assert_eq!(changed, ["storage"]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        STORAGE.replace("namespace = \"main\"", "namespace = \"written\""),
        "only the value changed"
    );
    call(&host, "storage", b"put k v").unwrap();
    assert_eq!(call(&host, "storage", b"get k").unwrap(), "written:v");
    wait_for(
        &events,
        WAIT,
        |e| matches!(e, HostEvent::ConfigApplied { file: Some(_), changed } if changed.is_empty()),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        status(&host, "storage").reloads,
        reloads + 1,
        "re-initialised once, not again when the watcher read the file"
    );
    assert_eq!(call(&host, "storage", b"get k").unwrap(), "written:v");
}

#[test]
fn set_plugin_config_starts_a_plugin_its_config_kept_from_starting() {
    let dir = PluginDir::new();
    dir.add("fixture-storage");
    let mut config = dir.config();
    plugin_table(
        &mut config,
        "storage",
        serde_json::json!({"capacity": 5}),
        |_| {},
    );
    let host = Host::new(config).unwrap();
    let report = host.load_all().unwrap();
    assert_eq!(report.refused.len(), 1);
    let storage = status(&host, "storage");
    assert_eq!(storage.state, PluginState::Refused);
    assert_eq!(storage.state.as_str(), "refused");
    let reason = storage.last_refusal.unwrap().reason;
    assert!(reason.contains("`namespace` is required"), "{reason}");

    let fixed = serde_json::json!({"namespace": "n", "capacity": 5});
    let changed = host
        .set_plugin_config("storage", fixed.as_object().cloned().unwrap(), false)
        .unwrap()
        .changed;
    assert_eq!(changed, ["storage"]);
    assert_eq!(status(&host, "storage").state, PluginState::Running);

    // No file to write into.
    let error = host
        .set_plugin_config("storage", fixed.as_object().cloned().unwrap(), true)
        .unwrap_err();
    assert!(matches!(error, ConfigError::NoFile { .. }), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_changes_are_events_and_metrics_list_every_plugin() {
    let dir = PluginDir::new();
    dir.add("fixture-slow");
    let host = Arc::new(dir.host());
    host.load_all().unwrap();
    let events = host.subscribe();
    let (sender, on_bus) = std::sync::mpsc::channel();
    let _subscription = host
        .subscribe_events(
            "circuit-watch",
            &["plughost.circuit.changed"],
            plughost::SubscribeOptions::default(),
            move |event| {
                let data: serde_json::Value = event.json_data().map_err(|e| e.to_string())?;
                sender.send(data).map_err(|e| e.to_string())
            },
        )
        .unwrap();
    let dispatcher = Dispatcher::new(host.clone(), CallPolicy::default());
    dispatcher.set_policy(
        "slow",
        CallPolicy {
            breaker: Some(Breaker {
                failures: 2,
                cool_down: Duration::from_millis(100),
            }),
            ..CallPolicy::default()
        },
    );
    for _ in 0..2 {
        dispatcher
            .execute("slow", b"fail".to_vec())
            .await
            .unwrap_err();
    }
    let opened = wait_for(&events, WAIT, |e| {
        matches!(e, HostEvent::CircuitChanged { .. })
    });
    let HostEvent::CircuitChanged { plugin, from, to } = opened else {
        unreachable!()
    };
    assert_eq!(plugin, "slow");
    assert!(matches!(from, CircuitState::Closed { .. }), "{from:?}");
    assert!(
        matches!(to, CircuitState::Open { failures: 2, .. }),
        "{to:?}"
    );
    assert_eq!(
        on_bus.recv_timeout(WAIT).unwrap(),
        serde_json::json!({"plugin": "slow", "from": "closed", "to": "open"})
    );

    // After the cool-down a trial closes it: half-open, then closed.
    tokio::time::sleep(Duration::from_millis(150)).await;
    dispatcher.execute("slow", b"hi".to_vec()).await.unwrap();
    for expected in [("open", "half_open"), ("half_open", "closed")] {
        let event = wait_for(&events, WAIT, |e| {
            matches!(e, HostEvent::CircuitChanged { .. })
        });
        let HostEvent::CircuitChanged { from, to, .. } = event else {
            unreachable!()
        };
        assert_eq!((from.as_str(), to.as_str()), expected);
    }

    let all = dispatcher.plugins_with_metrics();
    assert_eq!(all.len(), 1);
    let (name, metrics) = &all[0];
    assert_eq!(name, "slow");
    assert_eq!((metrics.calls, metrics.failed, metrics.errors), (3, 2, 2));
    assert_eq!(metrics.latency_count, 3);
    assert_eq!(
        metrics.latency_buckets.len(),
        MetricsSnapshot::LATENCY_BOUNDS.len()
    );
    assert_eq!(metrics.latency_buckets.last().unwrap().1, 3);
}

#[cfg(target_os = "linux")]
#[test]
fn an_isolated_plugin_that_keeps_crashing_shows_failed() {
    use plughost_tests::isolated::{answers_again, host_with};
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let host = host_with(&dir, &["crashy"], |config| {
        config.host.max_crashes = 2;
    });
    host.load_file(&crashy, b"{}").unwrap();
    let running = status(&host, "crashy");
    assert_eq!(
        (running.state, running.isolation),
        (PluginState::Running, plughost::Isolation::Process)
    );
    assert!(call(&host, "crashy", b"segfault").is_err());
    answers_again(&host, "crashy", Duration::from_secs(10));
    assert!(call(&host, "crashy", b"segfault").is_err());
    assert!(plughost_tests::eventually(WAIT, || {
        status(&host, "crashy").state == PluginState::Failed
    }));
    assert_eq!(PluginState::Failed.as_str(), "failed");
}
