//! Adversarial review of capabilities (issue 16): a hostile plugin, `sneaky` (which declares
//! nothing), tries to get out of an isolated worker's sandbox, and a careless operator writes
//! grants. Each test here that fails reproduces a finding; the others record what held.
//!
//! These tests need Landlock (with TCP rules) and seccomp; on a kernel without them they fail,
//! saying so.

#![cfg(target_os = "linux")]

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use plughost::{Capability, Confinement, Host, HostConfig, HostEvent};
use plughost_tests::isolated::{answers_again, host_with};
use plughost_tests::{eventually, finish, settings, stderr, stdout, wait_for, PluginDir};

const WAIT: Duration = Duration::from_secs(20);

/// A folder with `sneaky` in it as `file_name`.
fn sneaky_as(file_name: &str) -> PluginDir {
    let dir = PluginDir::new();
    dir.add_as("fixture-sneaky", file_name);
    dir
}

/// A host serving `sneaky` of `dir` in a worker, granted `grants`.
fn isolated(dir: &PluginDir, grants: &[String]) -> Host {
    let host = host_with(dir, &["sneaky"], |config| {
        config.plugins.get_mut("sneaky").unwrap().grant = grants
            .iter()
            .map(|g| {
                g.parse::<Capability>()
                    .unwrap_or_else(|e| panic!("{g}: {e}"))
            })
            .collect();
    });
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert!(host.handle("sneaky").unwrap().is_isolated());
    host
}

/// Sends `command` to sneaky: its answer, or the error it returned.
fn attempt(host: &Host, command: &str) -> Result<String, String> {
    plughost_tests::isolated::attempt(host, "sneaky", command)
}

/// Whether `outcome` is `command` refused by the kernel, as the plugin reported it.
fn denied(command: &str, outcome: &Result<String, String>) -> bool {
    let Err(message) = outcome else { return false };
    message.starts_with(&format!("{command}: "))
        && [
            "Permission denied (os error 13)",
            "Operation not permitted (os error 1)",
            "Function not implemented (os error 38)",
        ]
        .iter()
        .any(|e| message.ends_with(e))
}

fn listener() -> (TcpListener, u16) {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

// --- Findings: these fail until fixed ---

/// A library's constructor runs in the worker before it confines itself (serve.rs: `open_copy`,
/// then `sandbox::confine`). The thread count check sees threads, not processes: a constructor
/// that forks keeps an unconfined helper for the plugin's whole life, reachable through a
/// socket pair, so a plugin granted nothing reads `/etc/passwd` anyway.
///
/// (Corrected after the fix: the worker now confines itself before it loads the library, so
/// without `exec` the constructor's `fork` fails and there is no helper to test, and without
/// `fs:read:/proc` it cannot read its command line to know it is in a worker. Granted both,
/// the helper starts, confined with the rest, and `/etc/passwd` stays closed. The
/// check that the helper started compared with "no helper", which the plugin never answers: it
/// prefixes its errors with the command.)
#[test]
fn a_constructor_cannot_leave_an_unconfined_helper_behind() {
    plughost_tests::kernel_confines();
    // `ctor` in the file name makes sneaky's constructor fork its helper in the worker.
    let dir = sneaky_as("libsneaky_ctor.so");
    // The constructor reads /proc/self/cmdline to know it runs in a worker.
    let without_exec = isolated(&dir, &["fs:read:/proc".into()]);
    assert_eq!(
        attempt(&without_exec, "helper /etc/passwd"),
        Err("helper /etc/passwd: no helper".into())
    );
    drop(without_exec);
    let host = host_with(&dir, &["sneaky"], |config| {
        config.plugins.get_mut("sneaky").unwrap().grant =
            vec![Capability::Exec, "fs:read:/proc".parse().unwrap()];
    });
    let report = host.load_all().unwrap();
    if !report.refused.is_empty() {
        return; // Refusing such a library is a fix too.
    }
    let command = "helper /etc/passwd";
    let outcome = attempt(&host, command);
    assert!(
        outcome != Err("helper /etc/passwd: no helper".into()),
        "the fixture's helper did not start: {outcome:?}"
    );
    assert!(
        outcome
            .as_ref()
            .is_err_and(|e| e.contains("Permission denied")),
        "an isolated plugin granted only exec read /etc/passwd through a process its \
         constructor forked before the worker confined itself: {outcome:?}"
    );
}

/// Every new library is loaded first by the probe (`plughost __probe`), with the host's whole
/// environment and no sandbox at all, whether or not the plugin is isolated: its constructors
/// read the host's secrets and write where the host's user may. `env` and `fs:` grants mean
/// nothing if the probe gives all of it away first.
#[test]
fn the_probe_does_not_run_a_library_unconfined_with_the_hosts_environment() {
    let dir = sneaky_as("libsneaky.so");
    let folder = tempfile::tempdir().unwrap();
    let dropped = folder.path().join("dropped-by-probe");
    let (_settings_dir, config) = settings("[plugins.sneaky]\nisolation = \"process\"\n");
    let mut run = dir.command(&["exec", "sneaky", "ping"]);
    run.arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .env("PLUGHOST_SNEAKY_DROP", &dropped)
        .env("PLUGHOST_SNEAKY_SECRET", "hunter2");
    let out = finish(run, b"", Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok pong\n");
    assert!(
        !dropped.exists(),
        "the library of an isolated plugin granted nothing ran unconfined in the probe, with \
         the host's environment: it wrote {} saying {:?}",
        dropped.display(),
        std::fs::read_to_string(&dropped).unwrap_or_default()
    );
}

/// `net:connect:H:P` lets a plugin make TCP sockets, and Landlock checks `connect()`. A TCP Fast
/// Open `sendto(MSG_FASTOPEN)` connects without `connect()`, to any port.
#[test]
fn tcp_fast_open_reaches_only_the_granted_port() {
    plughost_tests::kernel_confines();
    let dir = sneaky_as("libsneaky.so");
    let (_granted, port) = listener();
    let (other, other_port) = listener();
    let host = isolated(&dir, &[format!("net:connect:127.0.0.1:{port}")]);
    let command = format!("fastopen {other_port}");
    let outcome = attempt(&host, &command);
    let arrived = eventually(Duration::from_secs(2), || other.accept().is_ok());
    assert!(
        denied(&command, &outcome) && !arrived,
        "granted net:connect to port {port} only, the plugin reached port {other_port} with TCP \
         Fast Open: {outcome:?}, connection arrived: {arrived}"
    );
}

/// The docs: with `net:connect` only, TCP sockets "connect only to the granted ports and bind
/// none". `listen()` on a socket never bound binds it to a port the kernel picks (no `bind()`
/// for Landlock to check), and the plugin then takes connections from anyone.
#[test]
fn net_connect_does_not_let_a_plugin_listen() {
    plughost_tests::kernel_confines();
    let dir = sneaky_as("libsneaky.so");
    let (_granted, port) = listener();
    let host = isolated(&dir, &[format!("net:connect:127.0.0.1:{port}")]);
    let outcome = attempt(&host, "listen");
    let reachable = outcome
        .as_ref()
        .ok()
        .and_then(|answer| answer.rsplit(' ').next()?.parse::<u16>().ok())
        .is_some_and(|listening| TcpStream::connect(("127.0.0.1", listening)).is_ok());
    assert!(
        denied("listen", &outcome),
        "granted net:connect only, the plugin listens for connections: {outcome:?}; a \
         connection from outside to it was accepted: {reachable}"
    );
}

/// `fs:read:PATH` covers what is beneath PATH, by name, for the host (`Capability::covers`)
/// and in the log (`confined: files fs:read:PATH`); Landlock follows a symlink in PATH when the
/// worker starts, so a grant of a link opens its target: here all of `/etc`.
///
/// (Corrected after the fix, which refuses such a grant in `"enforce"`, naming it and where it
/// leads, and leaves it closed in `"best-effort"`: both are checked.)
#[test]
fn a_grant_through_a_symlink_opens_only_what_it_names() {
    plughost_tests::kernel_confines();
    let dir = sneaky_as("libsneaky.so");
    let folder = tempfile::tempdir().unwrap();
    let link = folder.path().join("settings");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let grant = format!("fs:read:{}", link.display());
    let granting = |confinement| {
        let grant = grant.parse::<Capability>().unwrap();
        host_with(&dir, &["sneaky"], move |config| {
            config.host.confinement = confinement;
            config.plugins.get_mut("sneaky").unwrap().grant = vec![grant];
        })
    };
    let report = granting(Confinement::Enforce).load_all().unwrap();
    assert!(
        matches!(report.refused.as_slice(), [refusal] if refusal.to_string().contains(&format!(
            "plugin sneaky refused: its grant {grant} leads to /etc through a symbolic link"
        ))),
        "{:?}",
        report.refused
    );
    let host = granting(Confinement::BestEffort);
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let command = "read /etc/passwd";
    let outcome = attempt(&host, command);
    assert!(
        denied(command, &outcome),
        "granted fs:read:{} (a link to /etc), the plugin read /etc/passwd: {outcome:?}",
        link.display()
    );
}

/// A path in a capability may hold any character: a plugin that declares
/// `fs:read:/x\nINFO ...` (or an operator's grant) puts a line of its choosing into the host's
/// log through the refusal, which is meant to be one line, and into `inspect`, `config check`
/// and `list --verbose`.
#[test]
fn a_capability_path_with_a_control_character_is_refused() {
    let forged = "fs:read:/srv/a\nINFO plugin{name=storage}: confined: files none";
    let declared = Capability::declared(forged);
    assert!(
        declared.is_err(),
        "declared {forged:?} was accepted, and prints back as {:?}",
        declared.map(|c| c.to_string())
    );
    let text = format!("[plugins.x]\ngrant = [{forged:?}]\n");
    let (_dir, path) = settings(&text);
    assert!(
        HostConfig::load(&path).is_err(),
        "a grant with a newline in its path was accepted"
    );
}

/// A bad grant in a list over several lines is reported at the list's `grant = [` (line 2),
/// not at the entry (line 4).
#[test]
fn a_bad_grant_is_reported_at_its_own_line() {
    let (_dir, path) =
        settings("[plugins.x]\ngrant = [\n  \"net\",\n  \"fs:read:/a/../etc\",\n  \"exec\",\n]\n");
    let error = HostConfig::load(&path).unwrap_err().to_string();
    assert!(
        error.contains("plughost.toml:4:"),
        "the error does not point at line 4: {error}"
    );
}

// --- What held ---

/// Without grants: signals and ptrace to the host, the private copy, io_uring, clone3, x32
/// system calls, /proc, the environment and calls through the host are all refused.
/// With `net:connect` and `fs:write`: UDP, and symlinks, hard links and renames out of the
/// granted folder. With `net`: the test's abstract Unix socket.
#[test]
fn the_other_ways_out_are_closed() {
    plughost_tests::kernel_confines();
    let dir = sneaky_as("libsneaky.so");
    dir.add("fixture-echo");
    let folder = tempfile::tempdir().unwrap();
    let granted = folder.path().join("granted");
    std::fs::create_dir(&granted).unwrap();
    let outside = folder.path().join("outside.txt");
    std::fs::write(&outside, "outside\n").unwrap();
    let (_socket, port) = listener();
    let mut problems = Vec::new();
    let mut expect_denied = |host: &Host, command: &str| {
        let outcome = attempt(host, command);
        // A link across Landlock rules fails with EXDEV (documented as EACCES/EPERM only).
        let exdev = matches!(&outcome, Err(m) if m.ends_with("(os error 18)"));
        if !denied(command, &outcome) && !exdev {
            problems.push(format!("{command}: {outcome:?}"));
        }
    };

    let host = isolated(&dir, &[]);
    for command in [
        "kill-parent 0",
        "peek-parent",
        "io-uring",
        "clone3",
        "x32-socket",
        "read /proc/self/status",
        &format!("udp {port}"),
    ] {
        expect_denied(&host, command);
    }
    // The copy is read-only; the environment is gone but for the loader's path.
    let copy = attempt(&host, "write-copy");
    assert!(copy.is_err(), "wrote its library's copy: {copy:?}");
    let env = attempt(&host, "envall").unwrap();
    assert!(
        env == "ok " || env == "ok LD_LIBRARY_PATH",
        "environment: {env}"
    );
    let called = attempt(&host, "call echo");
    assert!(
        matches!(&called, Err(m) if m.contains("not a declared dependency")),
        "{called:?}"
    );
    drop(host);

    let write = format!("fs:write:{}", granted.display());
    let host = isolated(&dir, &[format!("net:connect:127.0.0.1:{port}"), write]);
    let (g, o) = (granted.display(), outside.display());
    for command in [
        format!("udp {port}"),
        format!("symlink {g} {o}"),
        format!("hardlink {g} {o}"),
        format!("rename {g} {}/moved-out", folder.path().display()),
    ] {
        expect_denied(&host, &command);
    }
    drop(host);

    let name = format!("plughost-grants-review-{}", std::process::id());
    use std::os::linux::net::SocketAddrExt as _;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let _abstract = std::os::unix::net::UnixListener::bind_addr(&address).unwrap();
    let host = isolated(&dir, &["net".into()]);
    expect_denied(&host, &format!("abstract {name}"));

    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "outside\n");
    assert!(!folder.path().join("moved-out").exists());
}

/// The worker's control socket made to signal its owner, the host, on input (F_SETOWN +
/// F_SETSIG SIGTERM + O_ASYNC): Landlock's signal scope covers it, and the host lives. Run
/// through `plughost exec`, so that a failure kills that process, not the tests.
#[test]
fn sigio_on_the_control_socket_does_not_signal_the_host() {
    plughost_tests::kernel_confines();
    let dir = sneaky_as("libsneaky.so");
    let (_settings_dir, config) = settings("[plugins.sneaky]\nisolation = \"process\"\n");
    let mut run = dir.command(&["exec", "sneaky", "sigio 15"]);
    run.arg("--config").arg(&config).env("NO_COLOR", "1");
    let out = finish(run, b"", Duration::from_secs(60));
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
    assert!(stdout(&out).starts_with("ok armed"), "{}", stdout(&out));
}

/// A worker restarted after a crash is confined as the first was; a live edit of the grants
/// starts a worker confined to the new ones.
#[test]
fn a_restarted_worker_and_a_live_edit_are_confined_anew() {
    plughost_tests::kernel_confines();
    let dir = sneaky_as("libsneaky.so");
    let config_dir = tempfile::tempdir().unwrap();
    let path = config_dir.path().join("plughost.toml");
    let write = |grant: &str| {
        let temp = config_dir.path().join(".plughost.toml.swp");
        let text = format!("[plugins.sneaky]\nisolation = \"process\"\ngrant = [\"{grant}\"]\n");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, &path).unwrap();
    };
    write("fs:read:/etc/passwd");
    let mut config = HostConfig::load(&path).unwrap();
    let own = dir.config();
    config.host.plugins_dir = own.host.plugins_dir;
    config.host.shadow_dir = own.host.shadow_dir;
    config.host.probe = own.host.probe;
    let host = Arc::new(Host::new(config).unwrap());
    assert!(host.load_all().unwrap().refused.is_empty());
    let reads = |host: &Host, file: &str| attempt(host, &format!("read {file}")).is_ok();
    assert!(reads(&host, "/etc/passwd") && !reads(&host, "/etc/group"));

    let first = host.handle("sneaky").unwrap().worker_pid();
    let _ = attempt(&host, "crash");
    answers_again(&host, "sneaky", WAIT);
    assert_ne!(host.handle("sneaky").unwrap().worker_pid(), first);
    assert!(reads(&host, "/etc/passwd") && !reads(&host, "/etc/group"));

    let events = host.subscribe();
    write("fs:read:/etc/group");
    host.reload_config();
    let event = wait_for(&events, WAIT, |e| {
        matches!(
            e,
            HostEvent::ConfigApplied { .. } | HostEvent::ConfigRefused { .. }
        )
    });
    assert!(
        matches!(event, HostEvent::ConfigApplied { .. }),
        "{event:?}"
    );
    assert!(!reads(&host, "/etc/passwd") && reads(&host, "/etc/group"));
}
