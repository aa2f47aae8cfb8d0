//! The admin API fuzzed from its own OpenAPI document by schemathesis, against a real host
//! with real plugins: no answer is a server error, every answer is one the document
//! describes, and the host still serves afterwards.
//!
//! Needs schemathesis: `python3 -m pip install -r tests/tools/requirements.txt` (`.ci/run`
//! does it). The run's settings are in `tests/tools/schemathesis.toml`, its hooks in
//! `tests/tools/schemathesis_hooks.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plughost::{Host, HostConfig, Secret, WatchOptions, Watcher};
use plughost_tests::admin::{AdminHost, TOKEN};
use plughost_tests::{eventually, settings, PluginDir};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The same seed, the same requests (one worker: in the same order): a failure can be
/// replayed.
const SEED: &str = "15015";

/// Test cases per operation and phase: enough to reach every handler with bad input, few
/// enough for the run to take about a minute on two cores.
const MAX_EXAMPLES: &str = "100";

/// When a run that has not finished is a hang.
const LIMIT: Duration = Duration::from_secs(300);

/// `python3 -m schemathesis.cli`, or a failure saying how to install it.
fn schemathesis() -> Command {
    let version = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--version"])
        .output();
    match version {
        Ok(output) if output.status.success() => {
            println!("{}", String::from_utf8_lossy(&output.stdout).trim());
        }
        _ => panic!(
            "schemathesis is not installed; install the test tools with \
             `python3 -m pip install -r tests/tools/requirements.txt`"
        ),
    }
    let mut command = Command::new("python3");
    command.args(["-m", "schemathesis.cli"]);
    command
}

/// transform, filter, counter, storage and notes, served with [`TOKEN`], with their settings
/// in a `plughost.toml` that the host watches (so that `PUT .../config?write=true` writes a
/// real file, and the host reads back what it wrote); the folder holding the file, the file,
/// and the watcher.
fn fuzzed_host() -> (AdminHost, TempDir, PathBuf, Watcher) {
    let dir = PluginDir::new();
    for package in [
        "transform",
        "filter",
        "counter",
        "fixture-storage",
        "fixture-notes",
    ] {
        dir.add(package);
    }
    let (folder, path) = settings(
        "[plugins.storage.config]\nnamespace = \"ns\"\n\n\
         [plugins.notes]\ngrant = [\"call:storage\"]\n",
    );
    let mut config = HostConfig::load(&path).expect("read the settings");
    // The test's own folders and probe program.
    let own = dir.config();
    config.host.plugins_dir = own.host.plugins_dir;
    config.host.shadow_dir = own.host.shadow_dir;
    config.host.probe = own.host.probe;
    config.admin.token = Some(Secret::new(TOKEN));
    let host = Arc::new(Host::new(config).expect("create host"));
    let watcher = host
        .watch(WatchOptions::default())
        .expect("watch the folder and the settings");
    let report = host.load_all().expect("load the folder");
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    (AdminHost::serve(dir, host), folder, path, watcher)
}

#[test]
fn fuzzing_the_documented_api_finds_no_server_error() {
    let started = Instant::now();
    let mut st = schemathesis();
    let (admin, _settings, settings, _watcher) = fuzzed_host();
    // Run from a folder of its own: schemathesis writes its reports there, and nothing in
    // the checkout.
    let work = tempfile::tempdir().unwrap();
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools");
    let har = work.path().join("requests.har");
    st.current_dir(work.path())
        .arg("--config-file")
        .arg(tools.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", admin.url))
        .args(["--checks", "all"])
        .args(["--seed", SEED])
        .args(["--max-examples", MAX_EXAMPLES])
        // One worker: the run is the same each time, and schemathesis' generator is not
        // safe to run on several threads under Python 3.11 ("AST constructor recursion
        // depth mismatch").
        .args(["--workers", "1"])
        .arg("--continue-on-failure")
        .args(["--request-timeout", "30"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--report", "har", "--report-har-path"])
        .arg(&har)
        .arg("--no-color")
        .env("SCHEMATHESIS_HOOKS", tools.join("schemathesis_hooks.py"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(work.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(work.path().join("stderr")).unwrap());
    println!("schemathesis seed {SEED}, {MAX_EXAMPLES} examples per operation and phase");
    let mut run = st.spawn().expect("start schemathesis");
    let status = finishes(&mut run, LIMIT);
    let output = std::fs::read_to_string(work.path().join("stdout")).unwrap_or_default()
        + &std::fs::read_to_string(work.path().join("stderr")).unwrap_or_default();
    let Some(status) = status else {
        panic!("schemathesis still ran after {LIMIT:?} (seed {SEED}):\n{output}");
    };
    let statuses = statuses(&har);
    println!(
        "schemathesis: {status} after {:.1?}; answers by route and status:",
        started.elapsed()
    );
    for (route, by_status) in &statuses {
        println!("  {route}: {by_status:?}");
    }

    let server_errors: Vec<_> = statuses
        .iter()
        .filter(|(_, by_status)| by_status.keys().any(|s| *s >= 500 && *s != 503))
        .collect();
    assert!(
        server_errors.is_empty(),
        "server errors: {server_errors:#?}\n{output}"
    );
    assert!(
        status.success(),
        "schemathesis found problems (seed {SEED}):\n{output}"
    );
    assert!(!statuses.is_empty(), "no request was made:\n{output}");

    // What the run wrote into plughost.toml still reads.
    if let Err(error) = HostConfig::load(&settings) {
        let text = std::fs::read_to_string(&settings).unwrap_or_default();
        panic!("the settings written by the API no longer read: {error}\n{text}");
    }

    // The host still serves. The run disabled and reconfigured storage, notes and counter
    // at random; given back their settings (in the file too) and enabled, each runs again.
    for (name, config) in [
        ("storage", json!({"namespace": "ns"})),
        ("notes", json!({})),
        ("counter", json!({})),
    ] {
        let path = format!("/plugins/{name}/config?write=true");
        let configured = admin.put(&path, Some(TOKEN), config.to_string().as_bytes());
        assert_eq!(configured.status, 200, "{name}: {}", configured.text());
        let enabled = admin.post(&format!("/plugins/{name}/enable"), Some(TOKEN), b"");
        assert_eq!(enabled.status, 200, "{name}: {}", enabled.text());
    }
    let list = admin.get("/plugins");
    assert_eq!(list.status, 200, "{}", list.text());
    let list = list.json();
    let running: Vec<&str> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "running")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        running,
        ["counter", "filter", "notes", "storage", "transform"],
        "{list:#}"
    );
    // A call answers; if the fuzzed input opened transform's circuit, once the answer's
    // Retry-After has passed as often as the cool-down needs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let reply = admin.post("/plugins/transform/execute", Some(TOKEN), b"still here");
        if reply.status != 503 || Instant::now() > deadline {
            break reply;
        }
        let wait = reply.header("retry-after").and_then(|s| s.parse().ok());
        std::thread::sleep(Duration::from_secs(wait.unwrap_or(1)));
    };
    assert_eq!((out.status, out.text().as_str()), (200, "STILL HERE"));
    println!("test took {:.1?}", started.elapsed());
}

/// Waits up to `limit` for `child` to end; kills it and gives `None` if it does not.
fn finishes(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut status = None;
    eventually(limit, || {
        status = child.try_wait().expect("wait for schemathesis");
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// How many answers of each status each route gave, from the run's HAR report: route
/// (`METHOD path`, the plugin name as `{name}`) to status to count.
fn statuses(har: &Path) -> BTreeMap<String, BTreeMap<u16, usize>> {
    let Ok(text) = std::fs::read_to_string(har) else {
        return BTreeMap::new();
    };
    let har: Value = serde_json::from_str(&text).expect("the HAR report is JSON");
    let mut counts: BTreeMap<String, BTreeMap<u16, usize>> = BTreeMap::new();
    for entry in har["log"]["entries"].as_array().into_iter().flatten() {
        let method = entry["request"]["method"].as_str().unwrap_or("?");
        let url = entry["request"]["url"].as_str().unwrap_or("?");
        let status = entry["response"]["status"].as_u64().unwrap_or(0);
        let route = route(url);
        *counts
            .entry(format!("{method} {route}"))
            .or_default()
            .entry(u16::try_from(status).unwrap_or(0))
            .or_default() += 1;
    }
    counts
}

/// The route of a request URL: its path without the query, with the plugin name or event
/// topic replaced by a placeholder.
fn route(url: &str) -> String {
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map_or("", |(_, path)| path);
    let path = path.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["plugins", _] => "/plugins/{name}".to_owned(),
        ["plugins", _, action] => format!("/plugins/{{name}}/{action}"),
        ["events", topic] if *topic != "stats" => "/events/{topic}".to_owned(),
        _ => format!("/{path}"),
    }
}
