//! The kernel confines an isolated plugin's worker to the plugin's grants: the prober fixture
//! (which declares nothing) tries a TCP connection, reading `/etc/passwd`, writing outside its
//! granted folder and spawning `/bin/sh`. Without the grant each attempt fails inside the
//! plugin, which returns the permission error and keeps serving; with the grant the same
//! attempt succeeds, and only what the grant names. In process, nothing stops it: the
//! documented limit.
//!
//! These tests need Landlock (with TCP rules) and seccomp; on a kernel without them they fail,
//! saying so, rather than pass without testing anything.

#![cfg(target_os = "linux")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use plughost::{Capability, Host, PluginState};
use plughost_tests::isolated::{call, host_with};
use plughost_tests::{eventually, PluginDir};

/// The text of a file written by the prober's `write`.
const WRITTEN: &str = "written by prober\n";

/// A TCP listener on 127.0.0.1 that tells whether someone connected.
struct Listener {
    socket: TcpListener,
    port: u16,
}

impl Listener {
    fn new() -> Listener {
        let socket = TcpListener::bind("127.0.0.1:0").expect("bind a listener on 127.0.0.1");
        socket.set_nonblocking(true).unwrap();
        let port = socket.local_addr().unwrap().port();
        Listener { socket, port }
    }

    /// The prober's command connecting to it.
    fn connect(&self) -> String {
        format!("connect 127.0.0.1:{}", self.port)
    }

    /// Whether a connection arrives within `within` (taking it).
    fn connected_within(&self, within: Duration) -> bool {
        eventually(within, || self.socket.accept().is_ok())
    }
}

/// What the cases share: the plugins folder (the prober and, in process, the echo fixture),
/// two listeners, and a folder with a `granted` folder in it and a place outside that one.
struct Fixture {
    dir: PluginDir,
    listener: Listener,
    other_listener: Listener,
    /// Deleted at the end of the test.
    folder: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = PluginDir::new();
        dir.add("fixture-prober");
        dir.add("fixture-echo");
        let folder = tempfile::tempdir().unwrap();
        // Created before the host starts: a path the kernel confines to must exist.
        std::fs::create_dir(folder.path().join("granted")).unwrap();
        Fixture {
            dir,
            listener: Listener::new(),
            other_listener: Listener::new(),
            folder,
        }
    }

    fn granted(&self) -> PathBuf {
        self.folder.path().join("granted")
    }

    /// A file outside the granted folder.
    fn outside(&self) -> PathBuf {
        self.folder.path().join("outside.txt")
    }

    /// A file inside the granted folder.
    fn inside(&self) -> PathBuf {
        self.granted().join("inside.txt")
    }

    /// A host serving the prober in a worker with `grants`, and echo in process.
    fn host(&self, grants: &[String]) -> Host {
        let host = host_with(&self.dir, &["prober"], |config| {
            let prober = config.plugins.get_mut("prober").unwrap();
            prober.grant = grants
                .iter()
                .map(|g| {
                    g.parse::<Capability>()
                        .unwrap_or_else(|e| panic!("{g}: {e}"))
                })
                .collect();
        });
        let report = host.load_all().unwrap();
        assert!(
            report.refused.is_empty(),
            "with grant = {grants:?}: {:?}",
            report.refused
        );
        assert!(
            host.handle("prober").unwrap().is_isolated(),
            "prober must run in a worker"
        );
        host
    }
}

/// Sends `command` to prober: its answer, or the error it returned.
fn attempt(host: &Host, command: &str) -> Result<String, String> {
    plughost_tests::isolated::attempt(host, "prober", command)
}

/// Whether `message` is the plugin's own report of `command` refused by the kernel: the
/// command, then EACCES (Landlock) or EPERM (seccomp).
fn is_permission_error(command: &str, message: &str) -> bool {
    message.starts_with(&format!("{command}: "))
        && (message.ends_with("Permission denied (os error 13)")
            || message.ends_with("Operation not permitted (os error 1)"))
}

/// Sends `command`, which the grants do not allow, and checks that the plugin returned the
/// kernel's permission error and still serves from the same worker; what went wrong, if
/// anything.
fn check_denied(host: &Host, command: &str) -> Option<String> {
    let worker = host.handle("prober").unwrap().worker_pid();
    let wrong = match attempt(host, command) {
        Ok(answer) => Some(format!("{command:?} was allowed: {answer:?}")),
        Err(message) if is_permission_error(command, &message) => None,
        Err(message) => Some(format!(
            "{command:?} failed, but not with a permission error returned by the plugin: \
             {message}"
        )),
    };
    if let Err(e) = call(host, "prober", b"ping") {
        return Some(format!(
            "after {command:?} the plugin no longer serves: {e}"
        ));
    }
    let now = host.handle("prober").unwrap().worker_pid();
    if now != worker {
        return Some(format!(
            "after {command:?} the worker changed from {worker:?} to {now:?}: it was restarted"
        ));
    }
    wrong
}

/// Sends `command` and checks the answer is `expected`; what went wrong, if anything.
fn check_allowed(host: &Host, command: &str, expected: &str) -> Option<String> {
    match attempt(host, command) {
        Ok(answer) if answer == expected => None,
        Ok(answer) => Some(format!("{command:?} answered {answer:?}, not {expected:?}")),
        Err(message) => Some(format!("{command:?} was refused: {message}")),
    }
}

/// Fails listing `problems`, if there are any.
fn none_of(problems: Vec<String>) {
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

fn read_passwd() -> (String, String) {
    let length = std::fs::metadata("/etc/passwd")
        .expect("this test reads /etc/passwd")
        .len();
    ("read /etc/passwd".to_owned(), format!("ok {length} bytes"))
}

#[test]
fn without_grants_each_attempt_fails_inside_the_plugin_and_everything_keeps_serving() {
    plughost_tests::kernel_confines();
    let fixture = Fixture::new();
    let host = fixture.host(&[]);
    let worker = host.handle("prober").unwrap().worker_pid();
    let attempts = [
        fixture.listener.connect(),
        "read /etc/passwd".to_owned(),
        format!("write {}", fixture.outside().display()),
        "spawn /bin/sh".to_owned(),
    ];
    let mut problems = Vec::new();
    for command in &attempts {
        problems.extend(check_denied(&host, command));
        // The host still serves its other plugins.
        if let Err(e) = call(&host, "echo", b"still here") {
            problems.push(format!("after {command:?} echo no longer serves: {e}"));
        }
    }
    none_of(problems);
    assert!(
        !fixture.listener.connected_within(Duration::ZERO),
        "a connection arrived"
    );
    assert!(!fixture.outside().exists(), "the file was written");
    let status = host.plugin_status("prober").unwrap();
    assert_eq!(status.state, PluginState::Running);
    assert_eq!(status.reloads, 0);
    assert_eq!(host.handle("prober").unwrap().worker_pid(), worker);
}

/// One grant: the attempts it allows, with their answers, and those it still refuses.
struct Case {
    grant: Vec<String>,
    allows: Vec<(String, String)>,
    denies: Vec<String>,
}

fn cases(fixture: &Fixture) -> Vec<Case> {
    let (port, other_port) = (fixture.listener.port, fixture.other_listener.port);
    let connected = |port: u16| format!("ok connected to 127.0.0.1:{port}");
    let written = format!("ok wrote {} bytes", WRITTEN.len());
    vec![
        Case {
            grant: vec![format!("net:connect:127.0.0.1:{port}")],
            allows: vec![(fixture.listener.connect(), connected(port))],
            denies: vec![
                fixture.other_listener.connect(),
                "read /etc/passwd".into(),
                "spawn /bin/sh".into(),
            ],
        },
        Case {
            grant: vec!["net".into()],
            allows: vec![
                (fixture.listener.connect(), connected(port)),
                (fixture.other_listener.connect(), connected(other_port)),
            ],
            denies: vec!["read /etc/passwd".into(), "spawn /bin/sh".into()],
        },
        Case {
            grant: vec!["fs:read:/etc/passwd".into()],
            allows: vec![read_passwd()],
            denies: vec![
                "read /etc/group".into(),
                format!("write {}", fixture.outside().display()),
                fixture.listener.connect(),
            ],
        },
        Case {
            grant: vec![format!("fs:write:{}", fixture.granted().display())],
            allows: vec![
                (format!("write {}", fixture.inside().display()), written),
                // Writing covers reading.
                (
                    format!("read {}", fixture.inside().display()),
                    format!("ok {} bytes", WRITTEN.len()),
                ),
            ],
            denies: vec![
                format!("write {}", fixture.outside().display()),
                "read /etc/passwd".into(),
                fixture.listener.connect(),
            ],
        },
        Case {
            grant: vec!["exec".into()],
            allows: vec![("spawn /bin/sh".into(), "ok hi".into())],
            denies: vec![
                fixture.listener.connect(),
                format!("write {}", fixture.outside().display()),
            ],
        },
    ]
}

#[test]
fn with_the_grant_the_same_attempt_succeeds() {
    plughost_tests::kernel_confines();
    let fixture = Fixture::new();
    let mut problems = Vec::new();
    for case in cases(&fixture) {
        let host = fixture.host(&case.grant);
        for (command, expected) in &case.allows {
            let wrong = check_allowed(&host, command, expected);
            problems.extend(wrong.map(|w| format!("grant = {:?}: {w}", case.grant)));
        }
    }
    none_of(problems);
    // Each allowed connection arrived (two to the first listener, one to the other), and the
    // file inside the granted folder was written.
    for _ in 0..2 {
        assert!(fixture.listener.connected_within(Duration::from_secs(5)));
    }
    assert!(fixture
        .other_listener
        .connected_within(Duration::from_secs(5)));
    assert_eq!(std::fs::read_to_string(fixture.inside()).unwrap(), WRITTEN);
}

#[test]
fn a_grant_allows_only_what_it_names() {
    plughost_tests::kernel_confines();
    let fixture = Fixture::new();
    let mut problems = Vec::new();
    for case in cases(&fixture) {
        let host = fixture.host(&case.grant);
        for command in &case.denies {
            let wrong = check_denied(&host, command);
            problems.extend(wrong.map(|w| format!("grant = {:?}: {w}", case.grant)));
        }
    }
    none_of(problems);
    assert!(!fixture.outside().exists(), "the file was written");
    assert!(
        !fixture.other_listener.connected_within(Duration::ZERO),
        "a connection to a port not granted arrived"
    );
}

#[test]
fn the_environment_is_hidden_without_the_env_grant() {
    plughost_tests::kernel_confines();
    let fixture = Fixture::new();
    // Set on the `plughost` command only: changing this process's environment would race the
    // other tests' threads.
    let name = format!("PLUGHOST_CONFINEMENT_TEST_{}", std::process::id());
    let command = format!("env {name}");
    let exec = |grant: &str| {
        let (_folder, settings) = plughost_tests::settings(&format!(
            "[plugins.prober]\nisolation = \"process\"\ngrant = [{grant}]\n"
        ));
        let mut run = fixture.dir.command(&["exec", "prober", &command]);
        run.arg("--config").arg(&settings).env(&name, "a secret");
        let out = plughost_tests::finish(run, b"", Duration::from_secs(60));
        assert!(
            out.status.success(),
            "grant = [{grant}]: {}",
            plughost_tests::stderr(&out)
        );
        plughost_tests::stdout(&out)
    };
    assert_eq!(exec("\"env\""), format!("ok {name}=a secret\n"));
    assert_eq!(exec(""), format!("ok {name} unset\n"));
}

/// The documented limit: code in the host's process cannot be stopped from making system
/// calls, so grants there only govern what passes through the host.
#[test]
fn in_process_nothing_stops_a_plugin_reading_what_it_was_not_granted() {
    let fixture = Fixture::new();
    let host = fixture.dir.host();
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert!(!host.handle("prober").unwrap().is_isolated());
    assert_eq!(
        call(&host, "prober", b"pid").unwrap(),
        format!("ok {}", std::process::id())
    );
    let (command, expected) = read_passwd();
    assert_eq!(attempt(&host, &command), Ok(expected));
}

/// Grants go to a name, and a library names itself: an isolated plugin granted what the kernel
/// guards, but neither pinned nor signed, loads with a warning saying so; pinned, it does not.
#[test]
fn grants_to_an_unpinned_isolated_plugin_are_warned_about() {
    plughost_tests::kernel_confines();
    let fixture = Fixture::new();
    let digest = plughost::Sha256Digest::of(&plughost_tests::bytes_of("fixture-prober"));
    let exec = |pin: &str| {
        let (_folder, settings) = plughost_tests::settings(&format!(
            "[plugins.prober]\nisolation = \"process\"\ngrant = [\"fs:read:/etc/passwd\"]\n{pin}"
        ));
        let mut run = fixture.dir.command(&["exec", "prober", "ping"]);
        run.arg("--config").arg(&settings).env("NO_COLOR", "1");
        let out = plughost_tests::finish(run, b"", Duration::from_secs(60));
        assert!(out.status.success(), "{}", plughost_tests::stderr(&out));
        plughost_tests::stderr(&out)
    };
    let warned = exec("");
    assert!(
        warned.contains(
            "plugin prober is granted fs:read:/etc/passwd but neither pinned \
             (plugins.prober.sha256) nor signed"
        ),
        "{warned}"
    );
    let pinned = exec(&format!("sha256 = \"{digest}\"\n"));
    assert!(!pinned.contains("neither pinned"), "{pinned}");
}
