//! The CLI side of events, end to end with the real binary and real plugins: `plughost run`'s
//! control socket (the admin API over HTTP), `plughost emit`, `plughost events`, and the event
//! declarations `list` and `inspect` show.

#![cfg(unix)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use plughost_tests::{lines_of, stderr, stdout, terminate, wait_line, PluginDir};
use serde_json::Value;

/// How long any one `plughost` command may take before the test fails.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// A `plughost run` in the background, stopped with SIGTERM (and waited for) when dropped,
/// whatever the test's outcome.
struct Running {
    child: Option<Child>,
    lines: Receiver<String>,
}

impl Running {
    /// Starts `plughost run <extra>` on `dir` and waits until its plugins are loaded; the log
    /// line that says how many.
    fn start(dir: &PluginDir, extra: &[&str]) -> (Running, String) {
        let mut child = dir
            .command(&["run", "--health-interval", "0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start plughost run");
        let lines = lines_of(&mut child);
        let running = Running {
            child: Some(child),
            lines,
        };
        let line = running.wait_line("plugin(s) running");
        (running, line)
    }

    /// Waits for a log line containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        wait_line(&self.lines, needle, Duration::from_secs(60))
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        terminate(&child);
        let status = plughost_tests::exits_within(&mut child, Duration::from_secs(30));
        assert!(status.success(), "plughost run exited with {status}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            plughost_tests::stop_quietly(child);
        }
    }
}

/// Runs `command` to completion with `input` on its stdin, failing the test if it takes longer
/// than [`COMMAND_LIMIT`].
fn finish(command: Command, input: &[u8]) -> Output {
    plughost_tests::finish(command, input, COMMAND_LIMIT)
}

/// `plughost <args>` on `dir` with `--config config`, to completion.
fn cli(dir: &PluginDir, config: Option<&Path>, args: &[&str]) -> Output {
    let mut command = dir.command(args);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    finish(command, b"")
}

/// What the example plugins need granted, as `plughost.toml` says it: audit may write
/// `audit_file` and receive events, ticker may publish.
fn grants(audit_file: &Path) -> String {
    format!(
        "[plugins.audit]\ngrant = [\"events:subscribe\", {:?}]\n\n\
         [plugins.ticker]\ngrant = [\"events:emit\"]\n",
        format!("fs:write:{}", audit_file.display())
    )
}

/// A folder with a `plughost.toml` configuring `audit` to write to `audit.jsonl` beside it.
fn audit_settings() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let config = work.path().join("plughost.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[plugins.audit.config]\nfile = {:?}\n",
            grants(&audit),
            audit.to_str().unwrap()
        ),
    )
    .unwrap();
    (work, config, audit)
}

/// Waits up to 10 s for a line of the JSON-lines file `path` that `wanted` accepts.
fn wait_for_record(path: &Path, mut wanted: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Only whole lines: the last one may be half written.
        let found = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| wanted(v));
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no such record in {} within 10 s; it holds:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The row of a whitespace-aligned table whose first cell is `first`, split into cells.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first} in\n{table}"))
}

/// Sends `request` (an HTTP/1.1 request, whole) over the socket at `path` and reads the answer
/// until the host closes the connection.
fn http(path: &Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The JSON body of an HTTP answer.
fn body(answer: &str) -> Value {
    let (_, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body in {answer:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

#[test]
fn emit_reaches_a_subscribing_plugin_and_events_counts_it() {
    let dir = PluginDir::new();
    dir.add("audit");
    let (_work, config, audit) = audit_settings();
    let (host, running) = Running::start(&dir, &["--config", config.to_str().unwrap()]);
    assert!(running.contains(" 1 plugin(s) running"), "{running}");
    let socket = dir.path().join(".plughost.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let out = cli(
        &dir,
        Some(&config),
        &["emit", "user.created", r#"{"id":7}"#],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "queued for 1 subscriber\n");
    let record = wait_for_record(&audit, |v| v["type"] == "user.created");
    assert_eq!(record["data"]["id"], 7, "{record}");
    assert_eq!(record["source"], "plughost-admin", "{record}");

    // Data from standard input; a topic nobody subscribes to.
    let out = finish(dir.command(&["emit", "user.deleted", "-"]), br#"{"id":8}"#);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "queued for 1 subscriber\n");
    wait_for_record(&audit, |v| {
        v["type"] == "user.deleted" && v["data"]["id"] == 8
    });
    let out = cli(&dir, None, &["emit", "nobody.listens", "[1,2]"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "published; nobody subscribes to nobody.listens\n"
    );

    let out = cli(&dir, None, &["events"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("TOPIC"), "{table}");
    // TOPIC PUBLISHED UNROUTED DELIVERED DROPPED FAILED
    assert_eq!(row(&table, "user.created")[1..3], ["1", "0"], "{table}");
    assert_eq!(row(&table, "nobody.listens")[1..3], ["1", "1"], "{table}");
    let audit_row = row(&table, "audit");
    assert_eq!(audit_row[1], "plugin", "{table}");
    assert!(table.contains("ticker.>, user.>, plughost.>"), "{table}");

    let out = cli(&dir, None, &["events", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    let topic = stats["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "user.created")
        .unwrap_or_else(|| panic!("{stats:#}"));
    assert_eq!(topic["published"], 1, "{stats:#}");
    let subscriber = &stats["subscribers"][0];
    assert_eq!(subscriber["name"], "audit", "{stats:#}");
    assert_eq!(subscriber["kind"], "plugin", "{stats:#}");
    assert_eq!(subscriber["policy"], "block", "{stats:#}");
    assert!(subscriber["latency"]["p99_us"].is_f64(), "{stats:#}");

    // A second host on the same folder is refused at once, and leaves the socket alone.
    let out = cli(&dir, Some(&config), &["run", "--no-watch"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("another plughost already serves") && err.contains(".plughost.sock"),
        "{err}"
    );
    assert!(!err.contains("loaded audit"), "{err}");
    let out = cli(&dir, None, &["emit", "user.updated", "{}"]);
    assert!(out.status.success(), "{}", stderr(&out));

    host.stop();
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[test]
fn emitting_a_reserved_topic_is_refused_and_a_stale_socket_is_replaced() {
    let dir = PluginDir::new();
    let socket = dir.path().join(".plughost.sock");
    // What a host killed with SIGKILL leaves: a socket nobody listens on.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let (host, _) = Running::start(&dir, &[]);

    let out = cli(&dir, None, &["emit", "plughost.plugin.loaded", "{}"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot publish plughost.plugin.loaded")
            && err.contains("topics under plughost. are the host's own"),
        "{err}"
    );
    let out = cli(&dir, None, &["emit", "bad topic", "{}"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot publish bad topic"),
        "{}",
        stderr(&out)
    );

    host.stop();
    assert!(!socket.exists());
}

#[test]
fn emit_and_events_without_a_running_host_say_so() {
    let dir = PluginDir::new();
    for args in [&["emit", "user.created", "{}"][..], &["events"][..]] {
        let out = cli(&dir, None, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        let expected = format!(
            "error: no plughost host is listening on {}/.plughost.sock (start one with \
             `plughost run`, or pass --admin ADDR)",
            dir.path().display()
        );
        assert_eq!(err.trim_end(), expected);
    }
    // A socket left by a host that died is not a host.
    drop(UnixListener::bind(dir.path().join(".plughost.sock")).unwrap());
    let out = cli(&dir, None, &["emit", "user.created", "{}"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("no plughost host is listening on") && err.contains("stale"),
        "{err}"
    );
}

#[test]
fn emit_checks_the_json_before_anything_else() {
    let dir = PluginDir::new();
    let out = cli(&dir, None, &["emit", "user.x", "not json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("the event's data is not valid JSON: expected ident at line 1 column 2"),
        "{err}"
    );
    assert!(!err.contains("no plughost host"), "{err}");

    let out = finish(dir.command(&["emit", "user.x", "-"]), b"{\"id\": ");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not valid JSON: EOF while parsing"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_control_socket_survives_hostile_clients_and_never_delays_shutdown() {
    let dir = PluginDir::new();
    let work = tempfile::tempdir().unwrap();
    let socket = work.path().join("control.sock");
    let control = socket.to_str().unwrap();
    let (host, _) = Running::start(&dir, &["--control", control]);

    // Only with --control: the folder's default place is empty.
    let out = cli(&dir, None, &["events"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no plughost host is listening"),
        "{}",
        stderr(&out)
    );
    let out = cli(&dir, None, &["emit", "a.b", "-5", "--control", control]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "published; nobody subscribes to a.b\n");

    // What is not HTTP is answered 400 and the connection closed; an unknown route gets the
    // API's JSON error.
    let answer = http(&socket, b"{not json\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let answer = http(
        &socket,
        b"GET /reboot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:?}");
    assert!(
        body(&answer)["error"]
            .as_str()
            .unwrap()
            .contains("no such route"),
        "{answer}"
    );
    let answer = http(
        &socket,
        b"POST /events/a.b HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\n\r\n1",
    );
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer:?}");
    assert_eq!(body(&answer)["queued"], 0, "{answer}");
    let out = cli(&dir, None, &["events", "--json", "--control", control]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    let topic = stats["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "a.b")
        .unwrap_or_else(|| panic!("{stats:#}"));
    assert_eq!(topic["published"], 2, "{stats:#}");

    // An event past the body limit (1 MiB by default) is refused whole.
    let mut huge = b"\"".to_vec();
    huge.resize(3 << 20, b'x');
    huge.push(b'"');
    let out = finish(
        dir.command(&["emit", "a.b", "-", "--control", control]),
        &huge,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the request body is larger than [admin] max_body allows"),
        "{}",
        stderr(&out)
    );

    // A client that sends half a request head and stalls, and others that connect and say
    // nothing, hold no one up: commands keep working meanwhile.
    let mut stalled = UnixStream::connect(&socket).unwrap();
    stalled
        .write_all(b"GET /plugins HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let stalled_at = Instant::now();
    let idle: Vec<_> = (0..32)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    for _ in 0..3 {
        let out = cli(&dir, None, &["events", "--control", control]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // It is dropped once the head timeout (10 s) is up, without an answer to its request.
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    let waited = stalled_at.elapsed();
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(25),
        "closed after {waited:?}"
    );
    assert!(
        !String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    drop(idle);

    // A client holding a connection open does not hold up SIGTERM.
    let client = UnixStream::connect(&socket).unwrap();
    (&client)
        .write_all(b"GET /plugins HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    host.stop();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(!socket.exists());
    drop(client);
}

#[test]
fn list_and_inspect_show_what_plugins_declare_about_events() {
    let dir = PluginDir::new();
    dir.add("audit");
    let ticker = dir.add("ticker");
    dir.add("transform");
    let (_work, config, _) = audit_settings();
    let out = cli(&dir, Some(&config), &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in\n{table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        line("audit").ends_with("libaudit.so subscribes ticker.>, user.>, plughost.> ok"),
        "{table}"
    );
    assert!(
        line("ticker").ends_with("libticker.so emits ticker.tick (source) ok"),
        "{table}"
    );
    assert!(
        line("transform").ends_with("libtransform.so - ok"),
        "{table}"
    );

    let out = cli(&dir, Some(&config), &["inspect", ticker.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("\n  emits:        ticker.tick\n"), "{text}");
    assert!(text.contains("\n  event source: yes\n"), "{text}");
    assert!(!text.contains("subscribes:"), "{text}");

    let audit = dir
        .path()
        .join(plughost_tests::library("audit").file_name().unwrap());
    let out = cli(
        &dir,
        Some(&config),
        &["inspect", audit.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        info["subscribes"],
        serde_json::json!(["ticker.>", "user.>", "plughost.>"])
    );
    assert_eq!(info["event_source"], false);
}
