//! Capabilities, end to end: what a plugin needs (declared, or implied by its dependencies and
//! events) against what `plughost.toml` grants it, at load and on live edits, and what
//! `plughost inspect`, `config check`, `list --verbose` and the admin API show of it, with real
//! plugins: `needy` (declares `fs:read:*`, `net:connect:*:443`, `exec`), `badcap` (declares
//! `text`, outside the vocabulary), `emitter` (publishes) and `notes` (requires `storage`).

use std::sync::Arc;
use std::time::Duration;

use plughost::{Capability, Host, HostEvent, LoadError, NeedSource, Sha256Digest};
use plughost_tests::admin::AdminHost;
use plughost_tests::{
    keygen, plugin_table, rebuilt, sign, stderr, stdout, wait_for, KeyPair, PluginDir, Setup,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// What `needy` declares, in its order.
const NEEDY: [&str; 3] = ["fs:read:*", "net:connect:*:443", "exec"];

/// The line that grants `needy` everything: the operator names the path it leaves open.
const NEEDY_GRANT: &str = r#"grant = ["fs:read:/etc/ssl", "net:connect:*:443", "exec"]"#;

/// What a refusal of `needy` without grants says to write: the path to be filled in.
const NEEDY_FIX: &str = r#"grant = ["fs:read:PATH", "net:connect:*:443", "exec"]"#;

/// Capabilities as declared (a path may be `*`).
fn caps(texts: &[&str]) -> Vec<Capability> {
    texts
        .iter()
        .map(|t| Capability::declared(t).unwrap())
        .collect()
}

/// Capabilities as granted.
fn grants(texts: &[&str]) -> Vec<Capability> {
    texts.iter().map(|t| t.parse().unwrap()).collect()
}

fn answer(host: &Host, plugin: &str) -> String {
    let mut out = Vec::with_capacity(64);
    host.handle(plugin)
        .unwrap_or_else(|e| panic!("{plugin}: {e}"))
        .call_into(b"hi", &mut out)
        .unwrap_or_else(|e| panic!("{plugin}: {e}"));
    String::from_utf8(out).unwrap()
}

/// The one refusal of `report`.
fn only_refusal(report: &plughost::LoadReport) -> &LoadError {
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    &report.refused[0]
}

// --- At load ---

#[test]
fn needy_without_grants_is_refused_in_one_line_and_the_host_serves_the_rest() {
    let setup = Setup::new(&["fixture-needy", "fixture-echo"]);
    let host = setup.host("");
    let report = host.load_all().unwrap();
    let names: Vec<&str> = report.loaded.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["echo"]);
    let error = only_refusal(&report);
    let LoadError::NotGranted { name, missing, .. } = error else {
        panic!("{error:?}");
    };
    assert_eq!(name, "needy");
    assert_eq!(*missing, caps(&NEEDY));
    let message = error.to_string();
    assert_eq!(message.lines().count(), 1, "{message}");
    let file = setup.file("fixture-needy").display().to_string();
    assert!(message.starts_with(&format!("{file}: ")), "{message}");
    for capability in NEEDY {
        assert!(message.contains(capability), "{capability}: {message}");
    }
    assert!(message.contains(NEEDY_FIX), "{message}");
    assert!(message.contains("[plugins.needy]"), "{message}");

    assert_eq!(answer(&host, "echo"), "hi", "the others serve");
    assert!(host.handle("needy").is_err());
    let status = host.plugin_status("needy").expect("known by its refusal");
    assert_eq!(status.state, plughost::PluginState::Refused);
    assert!(
        status.last_refusal.unwrap().reason.contains("not granted"),
        "the status says why"
    );
}

#[test]
fn needy_loads_with_its_grants_even_narrower_ones() {
    let setup = Setup::new(&["fixture-needy"]);
    let host = setup.host(&format!("[plugins.needy]\n{NEEDY_GRANT}\n"));
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(answer(&host, "needy"), "hi");
    drop(host);

    // A `*` in a declaration is the operator's to choose: a path, a host.
    let host = setup.host(
        "[plugins.needy]\ngrant = [\"fs:read:/etc/ssl\", \"net:connect:api.example.org:443\", \
         \"exec\"]\n",
    );
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    // But not the wrong port, or reading granted as something else.
    let host =
        setup.host("[plugins.needy]\ngrant = [\"fs:read:/etc\", \"net:connect:*:80\", \"env\"]\n");
    let report = host.load_all().unwrap();
    let LoadError::NotGranted { missing, .. } = only_refusal(&report) else {
        panic!("{:?}", report.refused);
    };
    assert_eq!(*missing, caps(&["net:connect:*:443", "exec"]));
}

#[test]
fn badcap_is_refused_naming_the_capability_and_the_vocabulary() {
    let setup = Setup::new(&["fixture-badcap", "fixture-echo"]);
    // Whatever is granted: a word outside the vocabulary cannot be granted.
    let host = setup.host("[plugins.badcap]\ngrant = [\"net\", \"exec\", \"env\", \"call:*\"]\n");
    let report = host.load_all().unwrap();
    assert_eq!(report.loaded.len(), 1, "echo loads");
    let error = only_refusal(&report);
    assert!(
        matches!(error, LoadError::BadCapability { name, capability, .. }
            if name == "badcap" && capability == "text"),
        "{error:?}"
    );
    let message = error.to_string();
    assert_eq!(message.lines().count(), 1, "{message}");
    let file = setup.file("fixture-badcap").display().to_string();
    assert!(message.starts_with(&format!("{file}: ")), "{message}");
    assert!(message.contains("\"text\""), "{message}");
    assert!(
        message.contains(
            "net, net:connect:HOST:PORT, fs:read:PATH, fs:write:PATH, exec, env, events:emit, \
             events:subscribe, call:PLUGIN"
        ),
        "the vocabulary: {message}"
    );
}

#[test]
fn publishing_needs_events_emit_and_a_dependency_needs_call() {
    let dir = PluginDir::new();
    dir.add("fixture-emitter");
    dir.add("fixture-storage");
    dir.add("fixture-notes");
    let settings = |grant_emitter: bool, grant_notes: bool| {
        let mut config = dir.config();
        plugin_table(&mut config, "emitter", json!({"count": 1}), |p| {
            if grant_emitter {
                p.grant = grants(&["events:emit"]);
            }
        });
        plugin_table(&mut config, "storage", json!({"namespace": "n"}), |_| {});
        plugin_table(&mut config, "notes", json!({}), |p| {
            if grant_notes {
                p.grant = grants(&["call:storage"]);
            }
        });
        config
    };

    let host = Host::new(settings(false, false)).unwrap();
    let report = host.load_all().unwrap();
    let loaded: Vec<&str> = report.loaded.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(loaded, ["storage"]);
    let mut missing: Vec<(String, Vec<Capability>)> = report
        .refused
        .iter()
        .map(|e| match e {
            LoadError::NotGranted { name, missing, .. } => (name.clone(), missing.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    missing.sort();
    assert_eq!(
        missing,
        [
            ("emitter".to_owned(), caps(&["events:emit"])),
            ("notes".to_owned(), caps(&["call:storage"])),
        ]
    );
    // Where each need comes from.
    let storage = host.plugins().into_iter().find(|p| p.name == "storage");
    assert_eq!(
        storage.unwrap().needs().unwrap(),
        vec![],
        "storage needs nothing"
    );
    drop(host);

    let host = Host::new(settings(true, true)).unwrap();
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let needs = |name: &str| {
        let info = host.plugins().into_iter().find(|p| p.name == name).unwrap();
        info.needs()
            .unwrap()
            .into_iter()
            .map(|n| (n.capability.to_string(), n.source))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        needs("emitter"),
        [("events:emit".to_owned(), NeedSource::Emits)]
    );
    assert_eq!(
        needs("notes"),
        [("call:storage".to_owned(), NeedSource::Dependency)]
    );
    let mut out = Vec::new();
    host.handle("notes")
        .unwrap()
        .call_into(b"add granted", &mut out)
        .unwrap();
}

// --- Live edits ---

#[test]
fn a_live_edit_granting_what_is_missing_brings_the_plugin_up() {
    let setup = Setup::new(&["fixture-needy", "fixture-echo"]);
    // Part of it granted: still refused.
    let host = setup.host("[plugins.needy]\ngrant = [\"exec\"]\n");
    assert_eq!(host.load_all().unwrap().refused.len(), 1);
    let events = host.subscribe();

    setup.write_config(&format!("[plugins.needy]\n{NEEDY_GRANT}\n"));
    host.reload_config();
    wait_for(
        &events,
        WAIT,
        |e| matches!(e, HostEvent::ConfigApplied { changed, .. } if changed.iter().any(|n| n == "needy")),
    );
    assert_eq!(answer(&host, "needy"), "hi");
    assert_eq!(answer(&host, "echo"), "hi");
}

#[test]
fn a_live_edit_revoking_a_grant_from_a_running_plugin_is_refused_and_it_keeps_serving() {
    let setup = Setup::new(&["fixture-needy"]);
    let host = setup.host(&format!("[plugins.needy]\n{NEEDY_GRANT}\n"));
    assert!(host.load_all().unwrap().refused.is_empty());
    let events = host.subscribe();

    setup.write_config("[plugins.needy]\ngrant = [\"fs:read:/etc/ssl\", \"net:connect:*:443\"]\n");
    host.reload_config();
    let event = wait_for(&events, WAIT, |e| {
        matches!(
            e,
            HostEvent::ConfigRefused { .. } | HostEvent::ConfigApplied { .. }
        )
    });
    let HostEvent::ConfigRefused { reason, .. } = event else {
        panic!("the edit was applied: {event:?}");
    };
    assert!(reason.contains("needy"), "{reason}");
    assert!(
        reason.contains("exec"),
        "names what it would lose: {reason}"
    );
    let lost = reason.split("; fix:").next().unwrap();
    assert!(!lost.contains("fs:read"), "and only that: {reason}");
    assert_eq!(answer(&host, "needy"), "hi", "it keeps serving");
    assert_eq!(
        host.config().plugin("needy").grant,
        grants(&["fs:read:/etc/ssl", "net:connect:*:443", "exec"])
    );

    // Revoked together with switching it off: accepted.
    setup.write_config("[plugins.needy]\nenabled = false\n");
    host.reload_config();
    let event = wait_for(&events, WAIT, |e| {
        matches!(
            e,
            HostEvent::ConfigRefused { .. } | HostEvent::ConfigApplied { .. }
        )
    });
    assert!(
        matches!(&event, HostEvent::ConfigApplied { changed, .. } if changed == &["needy"]),
        "{event:?}"
    );
    assert!(host.handle("needy").is_err(), "disabled");
    assert_eq!(
        host.plugin_status("needy").unwrap().state,
        plughost::PluginState::Disabled
    );
}

// --- The command line ---

#[test]
fn inspect_shows_needs_grants_what_is_missing_and_the_fix() {
    let setup = Setup::new(&["fixture-needy", "fixture-badcap", "fixture-notes"]);
    let needy = setup.file("fixture-needy");
    setup.write_config("[plugins.needy]\ngrant = [\"exec\", \"env\"]\n");
    let out = setup.cli(&["inspect", needy.to_str().unwrap()]);
    let shown = stdout(&out);
    assert!(!out.status.success(), "it would be refused: {shown}");
    let rows: Vec<Vec<&str>> = shown
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (capability, granted) in [
        ("fs:read:*", "no"),
        ("net:connect:*:443", "no"),
        ("exec", "yes"),
    ] {
        assert!(
            rows.contains(&vec![capability, "declared", granted]),
            "{capability} {granted}: {shown}"
        );
    }
    let config = setup.config_path().display().to_string();
    assert!(
        shown.contains(&format!("  grants:       exec, env (from {config})")),
        "{shown}"
    );
    assert!(
        shown.contains("  missing:      fs:read:*, net:connect:*:443\n"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "  fix:          grant = [\"exec\", \"env\", \"fs:read:PATH\", \"net:connect:*:443\"] \
             under [plugins.needy] in {config}"
        )),
        "{shown}"
    );
    assert!(shown.contains("  granted, not declared: env\n"), "{shown}");
    let error = stderr(&out);
    assert!(
        error.contains(&format!("{}: plugin needy refused", needy.display())),
        "{error}"
    );

    // As JSON, the same.
    let out = setup.cli(&["inspect", "--json", needy.to_str().unwrap()]);
    assert!(!out.status.success());
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        value["needs"][0],
        json!({"capability": "fs:read:*", "source": "declared", "granted": false})
    );
    assert_eq!(value["missing"], json!(["fs:read:*", "net:connect:*:443"]));
    assert_eq!(value["granted_not_declared"], json!(["env"]));

    // Granted all it needs: it would load.
    setup.write_config(&format!("[plugins.needy]\n{NEEDY_GRANT}\n"));
    let out = setup.cli(&["inspect", needy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("missing:"), "{}", stdout(&out));

    // A dependency's need, and where it comes from.
    let out = setup.cli(&["inspect", setup.file("fixture-notes").to_str().unwrap()]);
    let shown = stdout(&out);
    assert!(
        shown
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["call:storage", "dependency", "no"]),
        "{shown}"
    );
    assert!(
        shown.contains("fix:          grant = [\"call:storage\"]"),
        "{shown}"
    );

    // A word outside the vocabulary: an error line naming it and the vocabulary.
    let out = setup.cli(&["inspect", setup.file("fixture-badcap").to_str().unwrap()]);
    assert!(!out.status.success());
    let error = stderr(&out);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.starts_with("error: "), "{error}");
    assert!(
        error.contains("\"text\"") && error.contains("known: net, "),
        "{error}"
    );
}

#[test]
fn config_check_reports_needs_grants_and_a_plugin_that_would_be_refused() {
    let setup = Setup::new(&["fixture-needy", "fixture-echo"]);
    setup.write_config("[plugins.needy]\ngrant = [\"exec\"]\n");
    let out = setup.cli(&["config", "check"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains(
            "#   needy: needs fs:read:* (declared), net:connect:*:443 (declared), exec \
             (declared); grants exec; missing fs:read:*, net:connect:*:443 (refused at load; \
             fix: grant = [\"exec\", \"fs:read:PATH\", \"net:connect:*:443\"])"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("#   echo: needs nothing; grants none\n"),
        "{shown}"
    );
    let error = stderr(&out);
    assert!(
        error.contains(&format!(
            "error: {}: plugin needy refused: it needs fs:read:*, net:connect:*:443, not granted",
            setup.file("fixture-needy").display()
        )),
        "{error}"
    );

    // All granted, and one more: fine, with a note.
    setup.write_config(
        "[plugins.needy]\ngrant = [\"fs:read:/etc/ssl\", \"net:connect:*:443\", \"exec\", \"env\"]\n",
    );
    let out = setup.cli(&["config", "check"]);
    let error = stderr(&out);
    assert!(out.status.success(), "{error}");
    assert!(
        error.contains("plugin needy is granted, not declared: env"),
        "{error}"
    );
    assert!(
        error
            .lines()
            .any(|l| l.starts_with("note: ") && l.contains(":2:1: plugin needy")),
        "the note points at the grant: {error}"
    );
    assert!(!error.contains("error:"), "{error}");
}

#[test]
fn list_verbose_shows_digest_signer_and_grants() {
    let setup = Setup::new(&["fixture-needy", "fixture-echo"]);
    setup.write_config(&format!("[plugins.needy]\n{NEEDY_GRANT}\n"));
    let out = setup.cli(&["list", "--verbose"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    let lines: Vec<&str> = shown.lines().collect();
    let needy = lines
        .iter()
        .position(|l| l.starts_with("needy "))
        .unwrap_or_else(|| panic!("{shown}"));
    let digest = Sha256Digest::of(&std::fs::read(setup.file("fixture-needy")).unwrap());
    assert_eq!(
        &lines[needy + 1..needy + 4],
        [
            format!("    sha256:    {digest}").as_str(),
            "    signer:    unsigned",
            "    grants:    fs:read:/etc/ssl, net:connect:*:443, exec",
        ],
        "{shown}"
    );
    let echo = lines.iter().position(|l| l.starts_with("echo ")).unwrap();
    assert_eq!(lines[echo + 3], "    grants:    none", "{shown}");

    // Not granted: the row still names it, says why, and what is missing.
    setup.write_config("");
    let shown = stdout(&setup.cli(&["list", "--verbose"]));
    let row = shown
        .lines()
        .find(|l| l.starts_with("needy "))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        row.contains("refused: plugin needy refused: it needs"),
        "{row}"
    );
    assert!(
        shown.contains("    missing:   fs:read:*, net:connect:*:443, exec\n"),
        "{shown}"
    );
}

// --- The admin API ---

#[test]
fn the_admin_api_shows_what_runs_who_signed_it_and_what_it_is_granted() {
    let dir = PluginDir::new();
    let needy = dir.add("fixture-needy");
    let echo = dir.add("fixture-echo");
    let keys = tempfile::tempdir().unwrap();
    let KeyPair {
        key,
        public,
        id: key_id,
    } = keygen(keys.path(), "release");
    sign(&needy, &key);
    let mut config = dir.config();
    // Trusted, not required: echo runs unsigned.
    config.host.trusted_keys = vec![public.parse().unwrap()];
    plugin_table(&mut config, "needy", json!({}), |p| {
        p.grant = grants(&["fs:read:/etc/ssl", "net:connect:*:443", "exec"])
    });
    // In a worker, the digest is of the copy the worker runs, as in process. (Confinement is
    // not what this test is about, and depends on the kernel.)
    config.host.confinement = plughost::Confinement::Off;
    plugin_table(&mut config, "echo", json!({}), |p| {
        p.isolation = Some(plughost::Isolation::Process)
    });
    let host = Arc::new(Host::new(config).unwrap());
    assert!(host.load_all().unwrap().refused.is_empty());
    let running = Sha256Digest::of(&std::fs::read(&needy).unwrap()).to_string();
    let echo_digest = Sha256Digest::of(&std::fs::read(&echo).unwrap()).to_string();
    // Another build at the path, not (yet) loaded: the API shows what runs.
    dir.replace_atomically(
        needy.file_name().unwrap().to_str().unwrap(),
        &rebuilt(&std::fs::read(&needy).unwrap(), 1),
    );
    let admin = AdminHost::serve(dir, host);

    let list = admin.get("/plugins").json();
    let plugin = |name: &str| {
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list}"))
            .clone()
    };
    let shown = plugin("needy");
    assert_eq!(shown["sha256"], running.as_str(), "{shown}");
    assert_eq!(shown["signer"], key_id.as_str(), "{shown}");
    assert_eq!(
        shown["signature"],
        format!("signed by trusted key {key_id}").as_str()
    );
    assert_eq!(
        shown["grants"],
        json!(["fs:read:/etc/ssl", "net:connect:*:443", "exec"])
    );
    assert_eq!(
        shown["needs"],
        json!([
            {"capability": "fs:read:*", "source": "declared"},
            {"capability": "net:connect:*:443", "source": "declared"},
            {"capability": "exec", "source": "declared"},
        ])
    );
    let echo = plugin("echo");
    assert_eq!(echo["signer"], "unsigned", "{echo}");
    assert_eq!(echo["grants"], json!([]));
    assert_eq!(echo["needs"], json!([]));
    assert_eq!(echo["isolation"], "process", "{echo}");
    assert_eq!(echo["sha256"], echo_digest.as_str(), "{echo}");

    let detail = admin.get("/plugins/needy").json();
    for field in ["sha256", "signer", "signature", "grants", "needs"] {
        assert_eq!(detail[field], shown[field], "{field}");
    }

    // The document describes them.
    let document = admin.get("/openapi.json").json();
    let properties = &document["components"]["schemas"]["PluginView"]["properties"];
    for field in ["sha256", "signer", "signature", "grants", "needs"] {
        assert!(properties.get(field).is_some(), "{field}: {properties}");
    }
}
