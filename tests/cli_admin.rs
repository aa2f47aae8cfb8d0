//! The commands that operate a running host through its admin API, end to end with the real
//! binary and real plugins: `plughost run --admin ADDR` (and `[admin] listen`), `status`,
//! `call`, `reload`, the token over TCP, the exposure rule, and the message when no host
//! listens.

#![cfg(unix)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use plughost_tests::{
    bytes_of, lines_of, settings, stderr, stdout, terminate, wait_line, PluginDir,
};
use serde_json::Value;

/// The token the hosts of these tests are given.
const TOKEN: &str = "s3cret-token-value";

/// How long any one `plughost` command may take before the test fails.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// A `plughost run` in the background, stopped with SIGTERM (and waited for) when dropped.
struct Running {
    child: Option<Child>,
    lines: Receiver<String>,
}

impl Running {
    /// Starts `plughost run <extra>` on `dir` with the admin token in its environment, and
    /// waits until its plugins are loaded.
    fn start(dir: &PluginDir, extra: &[&str]) -> Running {
        let mut child = dir
            .command(&["run", "--health-interval", "0", "--no-watch"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("PLUGHOST_ADMIN_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start plughost run");
        let lines = lines_of(&mut child);
        Running {
            child: Some(child),
            lines,
        }
    }

    /// Waits for a log line containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        wait_line(&self.lines, needle, Duration::from_secs(60))
    }

    /// The TCP address its log says the API listens on; then waits for its plugins to load.
    fn admin_addr(&self) -> String {
        let line = self.wait_line("admin API on http://");
        let addr = line
            .split("admin API on http://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        self.wait_line("plugin(s) running");
        addr
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

/// Runs `plughost <args>` on `dir` to completion with `input` on its stdin, with the admin
/// token in its environment if `token`, else without it.
fn cli_with(dir: &PluginDir, args: &[impl AsRef<str>], token: bool, input: &[u8]) -> Output {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut command = dir.command(&args);
    command.env_remove("PLUGHOST_ADMIN_TOKEN");
    if token {
        command.env("PLUGHOST_ADMIN_TOKEN", TOKEN);
    }
    finish(command, input)
}

/// `plughost <args>` on `dir` without a token.
fn cli(dir: &PluginDir, args: &[impl AsRef<str>]) -> Output {
    cli_with(dir, args, false, b"")
}

/// `plughost <args>` on `dir` with the token in `PLUGHOST_ADMIN_TOKEN`.
fn cli_token(dir: &PluginDir, args: &[impl AsRef<str>]) -> Output {
    cli_with(dir, args, true, b"")
}

/// Runs `command` to completion with `input` on its stdin, failing the test if it takes longer
/// than [`COMMAND_LIMIT`].
fn finish(command: Command, input: &[u8]) -> Output {
    plughost_tests::finish(command, input, COMMAND_LIMIT)
}

/// Asserts that `out` succeeded, and returns its stdout.
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        stderr(out)
    );
    stdout(out)
}

/// Asserts that `out` failed with exit code 1 and one line on stderr, and returns that line.
fn failed(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(out), stderr(out));
    let err = stderr(out);
    assert_eq!(err.lines().count(), 1, "{err}");
    err.trim_end().to_owned()
}

/// The row of a whitespace-aligned table whose first cell is `first`, split into cells.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first} in\n{table}"))
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `[admin] token` from the environment, as a `plughost.toml` would say it.
fn token_settings(extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    settings(&format!(
        "[admin]\ntoken = \"${{PLUGHOST_ADMIN_TOKEN}}\"\n{extra}"
    ))
}

#[test]
fn status_call_and_reload_through_the_api() {
    let dir = PluginDir::new();
    dir.add("transform");
    dir.add_as("fixture-versioned-v1", "libversioned.so");
    dir.write("libjunk.so", b"not a library");
    let (_work, config) = token_settings("");
    let config = config.to_str().unwrap();
    let host = Running::start(&dir, &["--config", config, "--admin", "127.0.0.1:0"]);
    let addr = host.admin_addr();
    let admin = ["--admin", addr.as_str()];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter().chain(&admin).map(|a| a.to_string()).collect()
    };

    // Reading needs no token.
    let table = ok(&cli(&dir, &with(&["status"])));
    assert!(
        table.starts_with("NAME     ")
            && table
                .lines()
                .next()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                == [
                    "NAME", "VERSION", "STATE", "CALLS/S", "ERRORS", "P99", "RELOADS", "LAST",
                    "REFUSAL"
                ],
        "{table}"
    );
    // NAME VERSION STATE CALLS/S ERRORS P99 RELOADS LAST REFUSAL: not called yet.
    assert_eq!(
        row(&table, "transform")[1..],
        ["1.0.0", "running", "-", "-", "-", "0", "-"],
        "{table}"
    );
    assert_eq!(
        row(&table, "versioned")[1..3],
        ["1.0.0", "running"],
        "{table}"
    );
    let junk = row(&table, "libjunk.so");
    assert!(junk.len() > 1, "{table}");
    let json: Value = serde_json::from_str(&ok(&cli(&dir, &with(&["status", "--json"])))).unwrap();
    let names: Vec<&str> = json["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["transform", "versioned"], "{json:#}");
    assert!(
        json["refused"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("libjunk.so"),
        "{json:#}"
    );

    // A change over TCP without the token is refused, saying how to give it.
    let err = failed(&cli(&dir, &with(&["call", "transform", "hello"])));
    assert!(
        err.contains("send the admin token as `Authorization: Bearer TOKEN`")
            && err.contains("PLUGHOST_ADMIN_TOKEN or --token"),
        "{err}"
    );
    // The settings file's `${PLUGHOST_ADMIN_TOKEN}` without the variable: the same, and the
    // file is still read.
    let err = failed(&cli(
        &dir,
        &with(&["reload", "versioned", "--config", config]),
    ));
    assert!(err.contains("Bearer"), "{err}");
    // A wrong token is refused, and not shown.
    let err = failed(&cli(
        &dir,
        &with(&["call", "transform", "x", "--token", "wrong-guess-123"]),
    ));
    assert!(err.contains("the bearer token is wrong"), "{err}");
    assert!(!err.contains("wrong-guess-123"), "{err}");

    // With the token: calls, with input from stdin too, output as it is.
    assert_eq!(
        ok(&cli_token(&dir, &with(&["call", "transform", "hello"]))),
        "HELLO"
    );
    let out = cli_with(&dir, &with(&["call", "versioned", "-"]), true, b"x\n");
    assert_eq!(ok(&out), "1.0.0:x\n");
    // The control socket needs no token.
    assert_eq!(ok(&cli(&dir, &["call", "versioned", "y"])), "1.0.0:y");
    let err = failed(&cli_token(&dir, &with(&["call", "nosuch", "x"])));
    assert!(
        err.contains("no plugin named nosuch") || err.contains("nosuch"),
        "{err}"
    );

    // A new build, reloaded on request (the host does not watch the folder here).
    dir.replace_atomically("libversioned.so", &bytes_of("fixture-versioned-v2"));
    assert_eq!(ok(&cli(&dir, &["call", "versioned", "y"])), "1.0.0:y");
    let out = ok(&cli_token(&dir, &with(&["reload", "versioned"])));
    assert_eq!(out, "reloaded versioned: 2.0.0 running\n");
    assert_eq!(
        ok(&cli_token(&dir, &with(&["call", "versioned", "y"]))),
        "2.0.0:y"
    );
    let table = ok(&cli(&dir, &with(&["status"])));
    let versioned = row(&table, "versioned");
    // NAME VERSION STATE CALLS/S ERRORS P99 RELOADS LAST REFUSAL
    assert_eq!(versioned[1..3], ["2.0.0", "running"], "{table}");
    assert_eq!(versioned[4], "0", "{table}");
    assert_ne!(versioned[5], "-", "a p99 once called: {table}");
    assert_eq!(versioned[6], "1", "{table}");
    assert_eq!(versioned[7], "-", "{table}");

    // A build that is refused (its Init panics): the old version keeps serving, and status
    // says why.
    dir.replace_atomically("libversioned.so", &bytes_of("fixture-versioned-v3"));
    let err = failed(&cli(&dir, &["reload", "versioned"]));
    assert!(err.contains("versioned"), "{err}");
    assert_eq!(ok(&cli(&dir, &["call", "versioned", "z"])), "2.0.0:z");
    let table = ok(&cli(&dir, &["status"]));
    let versioned = row(&table, "versioned");
    assert_eq!(versioned[1..3], ["2.0.0", "running"], "{table}");
    let refusal = versioned[7..].join(" ");
    assert!(
        refusal.contains("cannot start") || refusal.contains("panic"),
        "{table}"
    );

    host.stop();
    // Gone with the host.
    let err = failed(&cli(&dir, &with(&["status"])));
    assert!(
        err.contains("no plughost host is listening on http://"),
        "{err}"
    );
}

#[test]
fn the_settings_file_gives_the_address_and_the_token() {
    let dir = PluginDir::new();
    dir.add("transform");
    let port = free_port();
    let (work, config) = token_settings(&format!("listen = \"127.0.0.1:{port}\"\n"));
    let config = config.to_str().unwrap();
    // Its control socket elsewhere than the plugins folder, so that clients there find none.
    let socket = work.path().join("host.sock");
    let socket = socket.to_str().unwrap();
    let host = Running::start(&dir, &["--config", config, "--control", socket]);
    assert_eq!(host.admin_addr(), format!("127.0.0.1:{port}"));

    // No socket in the plugins folder: over TCP, as the file says, with its token.
    let err = failed(&cli(&dir, &["call", "transform", "a", "--config", config]));
    assert!(err.contains("Bearer"), "{err}");
    assert_eq!(
        ok(&cli_token(
            &dir,
            &["call", "transform", "a", "--config", config]
        )),
        "A"
    );
    // --control wins over the file, and takes no token.
    let control = ["--config", config, "--control", socket];
    assert_eq!(
        ok(&cli(
            &dir,
            &[&["call", "transform", "b"][..], &control].concat()
        )),
        "B"
    );
    let table = ok(&cli(&dir, &["status", "--config", config]));
    let transform = row(&table, "transform");
    assert_eq!(transform[2], "running", "{table}");
    assert_eq!(transform[4], "0", "{table}");
    host.stop();
}

#[test]
fn a_host_on_this_machine_is_reached_through_its_socket_before_the_files_address() {
    let dir = PluginDir::new();
    dir.add("transform");
    let port = free_port();
    let (_work, config) = token_settings(&format!("listen = \"127.0.0.1:{port}\"\n"));
    let config = config.to_str().unwrap();
    let host = Running::start(&dir, &["--config", config]);
    assert_eq!(host.admin_addr(), format!("127.0.0.1:{port}"));
    // The socket in the plugins folder is its owner's alone: no token needed.
    assert_eq!(
        ok(&cli(&dir, &["call", "transform", "a", "--config", config])),
        "A"
    );
    host.stop();
}

#[test]
fn exposing_the_api_without_a_token_is_refused_at_start() {
    let dir = PluginDir::new();
    dir.add("transform");
    let started = Instant::now();
    let mut command = dir.command(&["run", "--admin", "0.0.0.0:0"]);
    command.env_remove("PLUGHOST_ADMIN_TOKEN");
    let err = failed(&finish(command, b""));
    assert!(
        err.contains("0.0.0.0:0")
            && err.contains("not a loopback address")
            && err.contains("set [admin] token"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!dir.path().join(".plughost.sock").exists());

    // On loopback it starts without one, and reads work; changes over TCP are refused, saying
    // how to configure a token (the control socket needs none).
    let host = Running::start(&dir, &["--admin", "127.0.0.1:0"]);
    let addr = host.admin_addr();
    let table = ok(&cli(&dir, &["status", "--admin", &addr]));
    assert_eq!(row(&table, "transform")[2], "running", "{table}");
    let err = failed(&cli_token(
        &dir,
        &["call", "transform", "d", "--admin", &addr],
    ));
    assert!(
        err.contains("needs a token, and none is configured") && !err.contains("--token"),
        "{err}"
    );
    assert_eq!(ok(&cli(&dir, &["call", "transform", "d"])), "D");
    host.stop();

    // With a token it starts.
    let (_work, config) = token_settings("");
    let host = Running::start(
        &dir,
        &["--config", config.to_str().unwrap(), "--admin", "0.0.0.0:0"],
    );
    let addr = host.admin_addr();
    let port = addr.rsplit_once(':').unwrap().1;
    let local = format!("127.0.0.1:{port}");
    assert_eq!(
        ok(&cli_token(
            &dir,
            &["call", "transform", "c", "--admin", &local]
        )),
        "C"
    );
    host.stop();
}

#[test]
fn no_host_listening_says_so_in_one_line() {
    let dir = PluginDir::new();
    let socket = Path::new(dir.path()).join(".plughost.sock");
    for args in [
        &["status"][..],
        &["reload", "x"][..],
        &["call", "x", "y"][..],
    ] {
        let err = failed(&cli(&dir, args));
        assert_eq!(
            err,
            format!(
                "error: no plughost host is listening on {} (start one with `plughost run`, or \
                 pass --admin ADDR)",
                socket.display()
            ),
            "{args:?}"
        );
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let err = failed(&cli(&dir, &["status", "--admin", &addr]));
    assert_eq!(
        err,
        format!(
            "error: no plughost host is listening on http://{addr} (start one with `plughost \
             run --admin {addr}`)"
        )
    );
    let err = failed(&cli(
        &dir,
        &["status", "--admin", "https://example.com:443"],
    ));
    assert!(err.contains("https is not supported"), "{err}");
}
