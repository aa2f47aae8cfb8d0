//! plughost.toml end to end: errors that point at the line, environment substitution, plugin
//! configs checked against their schema, dependencies (order, calls through the host, missing,
//! mismatched, cycles), enable / disable, live edits, and secrets never shown.
//!
//! Longer than the project's 600 lines on purpose: one scenario per test, each with its own
//! real files, process or host, reads better whole than split across files by topic.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use plughost::{Host, HostConfig, HostEvent, LoadError, WatchOptions};
use plughost_tests::{plughost, stderr, stdout, terminate, wait_for, Setup};

const WAIT: Duration = Duration::from_secs(20);

const STORAGE: &str = r#"
[plugins.storage]
priority = 1

[plugins.storage.config]
namespace = "main"
"#;

/// notes' table: it requires storage, so the operator lets it call storage. Last in a file, so
/// that keys can be added to it (`{NOTES}enabled = false`).
const NOTES: &str = "\n[plugins.notes]\ngrant = [\"call:storage\"]\n";

#[test]
fn errors_in_the_file_point_at_line_and_column() {
    let setup = Setup::new(&[]);
    setup.write_config("[host]\nwatch = true\n\n[plugins.counter]\nenabeld = false\n");
    let out = setup.cli(&["config", "check"]);
    assert!(!out.status.success());
    let file = setup.config_path().display().to_string();
    assert!(
        stderr(&out).contains(&format!(
            "{file}:5:1: plugins.counter.enabeld: unknown field `enabeld`"
        )),
        "{}",
        stderr(&out)
    );

    setup.write_config("[host]\nmax_plugins = \"many\"\n");
    let out = setup.cli(&["list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{file}:2:15: host.max_plugins: invalid type")),
        "{}",
        stderr(&out)
    );

    setup.write_config("[plugins.counter]\npriority = 1\npriority = 2\n");
    let out = setup.cli(&["config", "check"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{file}:3:1: duplicate key")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn environment_variables_are_substituted() {
    let setup = Setup::new(&["fixture-storage"]);
    setup.write_config(
        r#"
[plugins.storage.config]
namespace = "${PLUGHOST_TEST_NS}"
token = "${PLUGHOST_TEST_UNSET:-fallback}"
"#,
    );
    let out = setup
        .dir
        .command(&["config", "check"])
        .arg("--config")
        .arg(setup.config_path())
        .env("PLUGHOST_TEST_NS", "from-env")
        .env_remove("PLUGHOST_TEST_UNSET")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(r#"namespace = "from-env""#),
        "{}",
        stdout(&out)
    );
    // The default applied, and is shown masked: the key is sensitive.
    assert!(
        stdout(&out).contains(r#"token = "***""#),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("fallback"), "{}", stdout(&out));

    let out = setup
        .dir
        .command(&["config", "check"])
        .arg("--config")
        .arg(setup.config_path())
        .env_remove("PLUGHOST_TEST_NS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let file = setup.config_path().display().to_string();
    assert!(
        stderr(&out).contains(&format!(
            "{file}:3:13: plugins.storage.config.namespace: environment variable \
             PLUGHOST_TEST_NS is not set"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn plugin_configs_are_checked_against_their_schema() {
    let setup = Setup::new(&["fixture-storage", "transform"]);
    let file = setup.config_path().display().to_string();

    // Missing required key: the host refuses before Init, pointing at the plugin's table.
    let host = setup.host("[plugins.storage]\npriority = 2\n");
    let report = host.load_all().unwrap();
    assert_eq!(report.loaded.len(), 1, "transform loads regardless");
    let message = report.refused[0].to_string();
    assert!(
        message.contains(&format!(
            "plugin storage: {file}:1:10: config key `namespace` is required (string) but \
             missing"
        )),
        "{message}"
    );
    drop(host);

    // Wrong type, at the value's line.
    setup.write_config("[plugins.storage.config]\nnamespace = \"n\"\ncapacity = \"lots\"\n");
    let out = setup.cli(&["config", "check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{file}:3:1: plugin storage: config key `capacity` must be an integer, found a \
             string (\"lots\")"
        )),
        "{err}"
    );

    // Unknown keys are a warning, with their place; the plugin itself may still refuse them.
    setup.write_config("[plugins.storage.config]\nnamespace = \"n\"\ncolour = \"red\"\n");
    let out = setup.cli(&["config", "check"]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "warning: {file}:3:1: plugin storage: unknown config key `colour`"
        )),
        "{err}"
    );
    assert!(!out.status.success());
    // The refusal says where that config is.
    assert!(
        err.contains(&format!(
            "error: {file}:1:18: plugin storage refuses its config"
        )) && err.contains("`colour`"),
        "{err}"
    );

    // Defaults are filled in and shown in the effective configuration.
    setup.write_config("[plugins.storage.config]\nnamespace = \"n\"\n");
    let out = setup.cli(&["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("capacity = 100"), "{text}");
    assert!(text.contains(r#"mode = "upper""#), "{text}");
    assert!(text.contains("# start order: storage, transform"), "{text}");
}

#[test]
fn dependencies_start_first_are_called_through_the_host_and_stop_last() {
    let setup = Setup::new(&["fixture-notes", "fixture-storage", "transform"]);
    // notes has the highest priority but requires storage, so storage still starts first.
    let host = setup.host(&format!("{STORAGE}{NOTES}priority = 10\n"));
    let events = host.subscribe();
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let order: Vec<&str> = report.loaded.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(order, ["storage", "notes", "transform"]);

    let notes = host.handle("notes").unwrap();
    assert_eq!(call(&notes, b"add hello").unwrap(), b"ok");
    assert_eq!(call(&notes, b"read").unwrap(), b"main:hello");
    // An answer larger than the buffer notes lends comes back whole.
    let big = call(&notes, b"big 5000").unwrap();
    assert_eq!(big.len(), "main:".len() + 5000);
    // The callee's errors reach the caller with the callee's name.
    let error = call(&notes, b"call storage get nothing").unwrap_err();
    assert!(
        error.to_string().contains("storage: no key nothing"),
        "{error}"
    );
    // Only declared dependencies can be called.
    let error = call(&notes, b"call transform hi").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("transform: not a declared dependency of notes"),
        "{error}"
    );

    host.shutdown();
    let unloaded: Vec<String> = std::iter::from_fn(|| events.try_recv().ok())
        .filter_map(|e| match e {
            HostEvent::Unloaded { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    let position = |name: &str| unloaded.iter().position(|n| n == name).unwrap();
    assert!(position("notes") < position("storage"), "{unloaded:?}");
}

#[test]
fn missing_dependency_is_refused_and_loads_once_it_arrives() {
    let setup = Setup::new(&["fixture-notes"]);
    let host = Arc::new(setup.host(&format!("{STORAGE}{NOTES}")));
    let events = host.subscribe();
    let _watcher = host.watch(WatchOptions::default()).unwrap();
    let report = host.load_all().unwrap();
    assert_eq!(
        report.refused[0].to_string(),
        format!(
            "{}: plugin notes requires storage ^1.2, which is not in the plugins folder",
            setup.dir.path().join("libfixture_notes.so").display()
        )
    );
    assert!(host.plugins().is_empty());

    setup.dir.add("fixture-storage");
    wait_for(
        &events,
        WAIT,
        |e| matches!(e, HostEvent::Loaded { name, .. } if name == "notes"),
    );
    assert_eq!(
        call(&host.handle("notes").unwrap(), b"add x").unwrap(),
        b"ok"
    );
}

#[test]
fn version_mismatch_and_cycles_are_refused_naming_both_sides() {
    let setup = Setup::new(&[
        "fixture-storage",
        "fixture-wants-storage-v2",
        "fixture-cycle-a",
        "fixture-cycle-b",
    ]);
    // Each is granted the calls it declares: refused for its dependencies, not its grants.
    let host = setup.host(&format!(
        "{STORAGE}\n[plugins.archive]\ngrant = [\"call:storage\"]\n\n\
         [plugins.cycle-a]\ngrant = [\"call:cycle-b\"]\n\n\
         [plugins.cycle-b]\ngrant = [\"call:cycle-a\"]\n"
    ));
    let report = host.load_all().unwrap();
    let loaded: Vec<&str> = report.loaded.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(loaded, ["storage"]);
    let messages: Vec<String> = report.refused.iter().map(LoadError::to_string).collect();
    let has = |text: &str| {
        assert!(
            messages.iter().any(|m| m.contains(text)),
            "{text:?} not in {messages:#?}"
        )
    };
    has("plugin archive requires storage ^2, but storage 1.3.0 is loaded");
    has("plugin cycle-a is in a dependency cycle: cycle-a -> cycle-b -> cycle-a");
    has("plugin cycle-b is in a dependency cycle: cycle-b -> cycle-a -> cycle-b");
}

#[test]
fn disable_and_enable_at_runtime() {
    let setup = Setup::new(&["fixture-notes", "fixture-storage"]);
    let host = setup.host(&format!("{STORAGE}{NOTES}"));
    host.load_all().unwrap();

    let error = host.disable("storage").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("cannot disable storage: notes requires it (disable it first)"),
        "{error}"
    );
    assert!(host.handle("storage").is_ok(), "still running");

    host.disable("notes").unwrap();
    assert!(host.handle("notes").is_err());
    assert!(
        setup.dir.path().join("libfixture_notes.so").exists(),
        "file left alone"
    );
    host.disable("storage").unwrap();
    assert!(host.plugins().is_empty());

    // Enabling notes first fails: what it requires is disabled.
    let error = host.enable("notes").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("plugin notes requires storage ^1.2, which is disabled in the settings"),
        "{error}"
    );
    assert!(
        !host.config().plugin("notes").enabled,
        "a failed enable leaves the setting as it was"
    );
    host.enable("storage").unwrap();
    host.enable("notes").unwrap();
    assert_eq!(
        call(&host.handle("notes").unwrap(), b"add y").unwrap(),
        b"ok"
    );

    // Disabled through the API, a plugin stays off through edits of the file that leave it
    // alone; an edit of its own `enabled` is the latest word.
    host.disable("notes").unwrap();
    let other = STORAGE.replace("\"main\"", "\"other\"");
    host.reconfigure(setup.config(&format!("{other}{NOTES}")))
        .unwrap();
    assert!(host.handle("notes").is_err(), "still disabled");
    let notes_off = format!("{STORAGE}{NOTES}enabled = false\n");
    host.reconfigure(setup.config(&notes_off)).unwrap();
    assert!(host.handle("notes").is_err());
    let changed = host
        .reconfigure(setup.config(&format!("{STORAGE}{NOTES}")))
        .unwrap();
    assert!(changed.contains(&"notes".to_owned()), "{changed:?}");
    assert!(host.handle("notes").is_ok());
}

#[test]
fn live_edits_apply_and_invalid_ones_leave_the_running_state() {
    let setup = Setup::new(&["fixture-storage", "fixture-notes"]);
    let host = Arc::new(setup.host(&format!("{STORAGE}{NOTES}")));
    let events = host.subscribe();
    let _watcher = host.watch(WatchOptions::default()).unwrap();
    host.load_all().unwrap();
    let storage = host.handle("storage").unwrap();
    call(&storage, b"put k v").unwrap();
    assert_eq!(call(&storage, b"get k").unwrap(), b"main:v");

    // A changed config re-initialises the plugin through the reload swap.
    let edited = format!("{}{NOTES}", STORAGE.replace("\"main\"", "\"edited\""));
    setup.write_config(&edited);
    let applied = wait_for(&events, WAIT, |e| {
        matches!(e, HostEvent::ConfigApplied { .. })
    });
    let HostEvent::ConfigApplied { changed, .. } = applied else {
        unreachable!()
    };
    assert_eq!(changed, ["storage"]);
    call(&storage, b"put k v").unwrap();
    assert_eq!(call(&storage, b"get k").unwrap(), b"edited:v");

    // Invalid edits are refused with the reason; the running state stays.
    let file = setup.config_path();
    for (edit, reason) in [
        (
            STORAGE.replace("namespace = \"main\"", "namespace = 7") + NOTES,
            format!(
                "{}:6:1: plugin storage: config key `namespace` must be a string, found an \
                 integer (7)",
                file.display()
            ),
        ),
        (
            // Broken before notes' table: the line of the error stays that of storage.x.
            format!("{STORAGE}\n[plugins.storage.x\n{NOTES}"),
            format!("{}:8:", file.display()),
        ),
        (
            STORAGE.replace("priority = 1", "priority = 1\nenabled = false") + NOTES,
            "plugin notes requires storage ^1.2, which would be disabled".to_owned(),
        ),
        // Refused by the plugin's Init, after the schema and validate_config passed.
        (
            STORAGE.replace("\"main\"", "\"\"") + NOTES,
            "plugin storage failed to initialise: an empty namespace would mix every store"
                .to_owned(),
        ),
    ] {
        setup.write_config(&edit);
        let refused = wait_for(&events, WAIT, |e| {
            matches!(e, HostEvent::ConfigRefused { .. })
        });
        let HostEvent::ConfigRefused { reason: why, .. } = refused else {
            unreachable!()
        };
        assert!(why.contains(&reason), "{why:?} lacks {reason:?}");
        assert_eq!(call(&storage, b"get k").unwrap(), b"edited:v");
        assert!(host.handle("notes").is_ok());
    }

    // Disabling in the file stops the plugin; enabling starts it again.
    setup.write_config(&format!("{edited}enabled = false\n"));
    wait_for(
        &events,
        WAIT,
        |e| matches!(e, HostEvent::ConfigApplied { changed, .. } if changed == &["notes"]),
    );
    assert!(host.handle("notes").is_err());
    setup.write_config(&edited);
    wait_for(
        &events,
        WAIT,
        |e| matches!(e, HostEvent::ConfigApplied { changed, .. } if changed == &["notes"]),
    );
    assert!(host.handle("notes").is_ok());
}

#[test]
fn an_edit_starts_what_it_fixes_and_checks_what_it_switches_on() {
    // storage's config lacks its required namespace: refused at start, and notes with it.
    let setup = Setup::new(&["fixture-storage", "fixture-notes"]);
    let host = setup.host(&format!("[plugins.storage.config]\ncapacity = 5\n{NOTES}"));
    let report = host.load_all().unwrap();
    assert!(report.loaded.is_empty(), "{:?}", report.loaded);
    assert_eq!(report.refused.len(), 2);

    // The edit that adds it starts storage, then notes, which was waiting for it.
    let changed = host
        .reconfigure(setup.config(&format!("{STORAGE}{NOTES}")))
        .unwrap();
    assert_eq!(changed, ["storage", "notes"]);
    assert_eq!(
        call(&host.handle("notes").unwrap(), b"add z").unwrap(),
        b"ok"
    );

    // Switching a plugin on checks its config like a running plugin's: here the plugin's own
    // check refuses the token, so nothing changes (and the token is not shown).
    let off = format!("[plugins.storage]\nenabled = false\n{NOTES}enabled = false\n");
    host.reconfigure(setup.config(&off)).unwrap();
    assert!(host.plugins().is_empty());
    let edit = format!(
        "{}{NOTES}enabled = false\n",
        STORAGE.replace(
            "namespace = \"main\"",
            "namespace = \"main\"\ntoken = \"bad-1\""
        )
    );
    let error = host
        .reconfigure(setup.config(&edit))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("plugin storage refuses its config: token *** was revoked"),
        "{error}"
    );
    assert!(!error.contains("bad-1"), "{error}");
    assert!(host.handle("storage").is_err());
    assert!(!host.config().plugin("storage").enabled);
}

#[test]
fn a_config_edit_re_initialises_the_version_that_runs_not_a_newer_file() {
    let setup = Setup::new(&["fixture-storage"]);
    let host = setup.host(STORAGE);
    host.load_all().unwrap();
    // A broken build lands (refused by a watching host; the running version stays).
    setup
        .dir
        .replace_atomically("libfixture_storage.so", b"not a library");
    let changed = host
        .reconfigure(setup.config(&STORAGE.replace("\"main\"", "\"edited\"")))
        .unwrap();
    assert_eq!(changed, ["storage"]);
    let storage = host.handle("storage").unwrap();
    call(&storage, b"put k v").unwrap();
    assert_eq!(call(&storage, b"get k").unwrap(), b"edited:v");
}

#[test]
fn exec_starts_what_the_plugin_requires_first() {
    let setup = Setup::new(&["fixture-notes", "fixture-storage"]);
    setup.write_config(&format!("{STORAGE}{NOTES}"));
    let output = setup.cli(&["exec", "notes", "add x"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "ok");

    // A disabled requirement is not started behind the operator's back.
    setup.write_config(
        &(STORAGE.replace("priority = 1\n", "priority = 1\nenabled = false\n") + NOTES),
    );
    let output = setup.cli(&["exec", "notes", "add x"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("plugin notes requires storage ^1.2, which is disabled"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn exec_names_the_requirement_that_failed_and_says_it_once() {
    let setup = Setup::new(&["fixture-notes", "fixture-storage"]);
    // storage refuses an empty namespace in its Init: notes cannot start.
    setup.write_config(&(STORAGE.replace("\"main\"", "\"\"") + NOTES));
    let output = setup.cli(&["exec", "notes", "add x"]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("plugin notes cannot start: ")
            && err.contains("plugin storage failed to initialise: an empty namespace"),
        "{err}"
    );
    // Returned to the caller, not also logged as a refusal.
    assert_eq!(err.matches("an empty namespace").count(), 1, "{err}");
}

#[test]
fn max_plugins_counts_only_plugins_that_start() {
    // Without a probe a disabled plugin's name is known only once its file is opened: it takes
    // no room, and the next file loads.
    let setup = Setup::new(&["transform", "filter"]);
    let host = setup
        .host("[host]\nmax_plugins = 1\nprobe = \"off\"\n\n[plugins.filter]\nenabled = false\n");
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let names: Vec<_> = report.loaded.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["transform"]);
    // Loading the folder again reloads nothing new and refuses nothing: a running plugin's
    // file takes no room.
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
}

#[test]
fn max_plugins_refuses_the_rest() {
    let setup = Setup::new(&["transform", "filter"]);
    let host = setup.host("[host]\nmax_plugins = 1\n");
    let report = host.load_all().unwrap();
    assert_eq!(report.loaded.len(), 1);
    // Counted before opening: the second file is refused without being read or loaded.
    let refusal = report.refused[0].to_string();
    assert!(
        matches!(
            report.refused[0],
            plughost::LoadError::NoRoom { max: 1, .. }
        ) && refusal.contains("not loaded: max_plugins (1) plugins are running already")
            && refusal.ends_with("raise host.max_plugins in plughost.toml to load more"),
        "{refusal}"
    );
}

#[test]
fn secrets_never_appear_in_logs_or_cli_output() {
    const SECRET: &str = "s3cr3t-token-value";
    let setup = Setup::new(&["fixture-storage", "fixture-notes"]);
    setup.write_config(&format!("{STORAGE}token = \"{SECRET}\"\n{NOTES}"));
    let mut seen = String::new();
    for args in [&["config", "check"][..], &["list"][..]] {
        let out = setup.cli(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        seen.push_str(&stdout(&out));
        seen.push_str(&stderr(&out));
    }
    assert!(seen.contains(r#"token = "***""#), "{seen}");

    // A plugin that quotes the secret in its error is masked too.
    let storage = setup.dir.path().join("libfixture_storage.so");
    let out = Command::new(plughost())
        .arg("inspect")
        .arg(&storage)
        .args([
            "--init",
            r#"{"namespace":"n","token":"bad-s3cr3t-token-value"}"#,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("token *** was revoked"),
        "{}",
        stderr(&out)
    );
    seen.push_str(&stderr(&out));

    // The host's own log, at its most verbose, while the plugins load, run and stop.
    let mut child = setup
        .dir
        .command(&["run", "--no-watch", "--health-interval", "0"])
        .arg("--config")
        .arg(setup.config_path())
        .env("RUST_LOG", "trace")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = read_until(&mut child, "plugin(s) running");
    terminate(&child);
    let out = child.wait_with_output().unwrap();
    seen.push_str(&log);
    seen.push_str(&stderr(&out));
    assert!(seen.contains("loaded storage"), "{seen}");
    assert!(!seen.contains("s3cr3t"), "a secret leaked:\n{seen}");

    // Init failures quoting it, through the library.
    setup.write_config(&format!("{STORAGE}token = \"bad-{SECRET}\"\n{NOTES}"));
    let mut config = HostConfig::load(&setup.config_path()).unwrap();
    let own = setup.dir.config();
    config.host.plugins_dir = own.host.plugins_dir;
    config.host.shadow_dir = own.host.shadow_dir;
    config.host.probe = own.host.probe;
    let host = Host::new(config).unwrap();
    let report = host.load_all().unwrap();
    let messages: Vec<String> = report.refused.iter().map(LoadError::to_string).collect();
    assert!(
        messages.iter().any(|m| m.contains("token *** was revoked")),
        "{messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains("s3cr3t")),
        "{messages:?}"
    );
}

#[test]
fn cli_enable_and_disable_edit_the_file_and_a_running_host_follows() {
    let setup = Setup::new(&["fixture-storage", "fixture-notes"]);
    let original = format!("# operators' notes stay\n{STORAGE}{NOTES}");
    setup.write_config(&original);
    let mut child = setup
        .dir
        .command(&["run", "--health-interval", "0"])
        .arg("--config")
        .arg(setup.config_path())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    read_until(&mut child, "plugin(s) running");

    let toggle = |verb: &str| {
        // The folder the host serves: `notes` is known there, not in the file.
        let out = setup
            .dir
            .command(&[verb, "notes"])
            .arg("--config")
            .arg(setup.config_path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    toggle("disable");
    let text = std::fs::read_to_string(setup.config_path()).unwrap();
    // Added to notes' table, the last of the file; the rest as it was.
    assert_eq!(text, format!("{original}enabled = false\n"));
    read_until(&mut child, "unloaded notes");
    toggle("enable");
    read_until(&mut child, "loaded notes");

    // JSON logs when the file asks for them (read at start).
    terminate(&child);
    child.wait_with_output().unwrap();
    setup.write_config(&format!("[host]\nlog_format = \"json\"\n{STORAGE}{NOTES}"));
    let out = setup.cli(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut child = setup
        .dir
        .command(&["run", "--no-watch", "--health-interval", "0"])
        .arg("--config")
        .arg(setup.config_path())
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = read_until(&mut child, "plugin(s) running");
    terminate(&child);
    child.wait_with_output().unwrap();
    for line in log.lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not JSON: {line}"
        );
    }
}

#[test]
fn cli_enable_and_disable_refuse_a_missing_file_and_unknown_names_and_keep_comments() {
    let setup = Setup::new(&["transform", "filter", "counter"]);
    // No plughost.toml in the working folder and none named: refused, nothing created (a
    // running host started without a file would not follow one created now).
    let elsewhere = tempfile::tempdir().unwrap();
    let out = setup
        .dir
        .command(&["disable", "counter"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = stderr(&out);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.starts_with(&format!(
            "error: plughost disable counter: no plughost.toml in the working folder {}; \
             create one there",
            elsewhere.path().display()
        )),
        "{said}"
    );
    assert!(said.contains("--config FILE"), "{said}");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);

    // A name neither in the plugins folder nor in the file: refused, the file left alone.
    let original = "[plugins.counter]\nenabled = true   # keep this\n\n[plugins.gone]\n";
    setup.write_config(original);
    let out = setup.cli(&["disable", "nosuch"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        format!(
            "error: plughost disable nosuch: no plugin named nosuch in {} (found: counter, \
             filter, transform) nor in {}; check the name, or pass --force to set it anyway\n",
            setup.dir.path().join("").display(),
            setup.config_path().display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(setup.config_path()).unwrap(),
        original
    );
    let out = setup.cli(&["enable", "nosuch"]);
    assert!(
        stderr(&out).contains("no plugin named nosuch in"),
        "{}",
        stderr(&out)
    );

    // In the folder, or in the file (its library gone), or with --force: set, and the comment
    // on the `enabled` line stays.
    for args in [
        &["disable", "counter"][..],
        &["enable", "filter"],
        &["disable", "gone"],
        &["disable", "nosuch", "--force"],
    ] {
        let out = setup.cli(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(
        std::fs::read_to_string(setup.config_path()).unwrap(),
        "[plugins.counter]\nenabled = false   # keep this\n\n[plugins.gone]\nenabled = false\n\n\
         [plugins.filter]\nenabled = true\n\n[plugins.nosuch]\nenabled = false\n"
    );
}

#[test]
fn config_check_counts_libraries_that_cannot_load_and_names_the_settings_right() {
    let setup = Setup::new(&["fixture-storage", "fixture-notes"]);
    let junk = setup.dir.write("libjunk.so", b"not a library");
    setup.write_config(&format!("{STORAGE}{NOTES}"));
    let out = setup.cli(&["config", "check"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("error: {}: ", junk.display())),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(&junk).unwrap();

    // Disabled in the file: not blamed on a "plughost.toml" the user may not have.
    setup.write_config(&(STORAGE.replace("priority = 1", "enabled = false") + NOTES));
    let out = setup.cli(&["config", "check"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("plugin notes requires storage ^1.2, which is disabled in the settings"),
        "{}",
        stderr(&out)
    );

    // No file at all: the defaults, said as such.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = setup
        .dir
        .command(&["config", "check"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("# effective configuration of the built-in defaults (no configuration file)"),
        "{text}"
    );
    assert!(!text.contains("plughost.toml"), "{text}");
}

#[cfg(unix)]
#[test]
fn cli_edits_go_through_a_symlink_keep_permissions_and_need_no_host_environment() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new(&["fixture-storage", "fixture-notes"]);
    // The real file elsewhere, private (it names a secret), reached through a link.
    let real = tempfile::tempdir().unwrap();
    let target = real.path().join("real.toml");
    let original = format!("{STORAGE}token = \"${{PLUGHOST_TEST_HOST_ONLY}}\"\n{NOTES}");
    std::fs::write(&target, &original).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = setup.config_path();
    std::os::unix::fs::symlink(&target, &link).unwrap();

    // Only the host has the variable.
    let mut child = setup
        .dir
        .command(&["run", "--health-interval", "0"])
        .arg("--config")
        .arg(&link)
        .env("PLUGHOST_TEST_HOST_ONLY", "xyz")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _stop = StopOnFailure(child.id());
    read_until(&mut child, "plugin(s) running");
    let toggle = |verb: &str| {
        let out = setup
            .dir
            .command(&[verb, "notes"])
            .arg("--config")
            .arg(&link)
            .env_remove("PLUGHOST_TEST_HOST_ONLY")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    toggle("disable");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let text = std::fs::read_to_string(&target).unwrap();
    assert_eq!(text, format!("{original}enabled = false\n"));
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let left: Vec<_> = std::fs::read_dir(real.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "no temp file left: {left:?}");
    // The running host watches the link's target too.
    read_until(&mut child, "unloaded notes");
    toggle("enable");
    read_until(&mut child, "loaded notes");
    terminate(&child);
    child.wait_with_output().unwrap();
}

/// Kills the child with this pid if the test fails before it was waited for, so that a
/// failed assertion does not leave a `plughost run` behind.
#[cfg(unix)]
struct StopOnFailure(u32);

#[cfg(unix)]
impl Drop for StopOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(pid) = i32::try_from(self.0) {
                // SAFETY: `kill` has no memory-safety preconditions; the pid is our own
                // child's, not yet waited for (the test panicked before that).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Reads the child's stderr until a line contains `needle`; returns what was read.
fn read_until(child: &mut std::process::Child, needle: &str) -> String {
    use std::io::BufRead;
    let stderr = child.stderr.as_mut().expect("piped stderr");
    let mut reader = std::io::BufReader::new(stderr);
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + WAIT;
    let mut line = String::new();
    while std::time::Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&line);
        if line.contains(needle) {
            return seen;
        }
    }
    panic!("{needle:?} never logged; saw:\n{seen}");
}

/// Calls `handle`, copying the answer out (a held output would keep the version alive).
fn call(handle: &plughost::PluginHandle, input: &[u8]) -> Result<Vec<u8>, plughost::CallError> {
    handle.call(input).map(|output| output.to_vec())
}

/// `config check` on a file with 100,000 tables for plugins that are not there: a warning
/// each, each pointing at its table. Finding a table's line once scanned the file from the
/// start, which made this quadratic (minutes); the deadline turns such a regression into a
/// failure instead of a hang.
#[test]
fn config_check_on_a_huge_file_warns_about_every_table_and_finishes() {
    const TABLES: usize = 100_000;
    const DEADLINE: Duration = Duration::from_secs(120);
    let setup = Setup::new(&[]);
    let mut text = String::with_capacity(TABLES * 32);
    for i in 0..TABLES {
        text.push_str(&format!("[plugins.p{i}]\nenabled = true\n\n"));
    }
    setup.write_config(&text);
    // Output goes to files: a pipe would fill up and stop the child before the deadline.
    let out_path = setup.config_dir.path().join("stdout.txt");
    let err_path = setup.config_dir.path().join("stderr.txt");
    let mut child = setup
        .dir
        .command(&["config", "check"])
        .arg("--config")
        .arg(setup.config_path())
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("config check on {TABLES} tables still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&err_path).unwrap();
    let last_lines = || err.lines().rev().take(10).collect::<Vec<_>>().join("\n");
    // Tables for absent plugins are warnings, not problems.
    assert!(status.success(), "{status}: {}", last_lines());
    let warnings: Vec<&str> = err
        .lines()
        .filter(|line| line.contains("no plugin named"))
        .collect();
    assert_eq!(warnings.len(), TABLES);
    let file = setup.config_path().display().to_string();
    // Each names its table's place: table i's header is on line 3i + 1, its name at column 10.
    for i in [0, 1, TABLES / 2, TABLES - 1] {
        let expected = format!(
            "warning: {file}:{}:10: no plugin named p{i} in {}",
            3 * i + 1,
            setup.dir.path().display()
        );
        assert!(
            warnings.contains(&expected.as_str()),
            "{expected} not in the warnings"
        );
    }
    assert!(err.contains(&format!("{file}: ok")), "{}", last_lines());
}
