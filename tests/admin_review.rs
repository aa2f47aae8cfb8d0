//! An adversarial review of the admin API (issue 15): each test reproduces a bug found, and
//! asserts what must hold once it is fixed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use plughost::{Host, HostConfig, Secret};
use plughost_admin::{Admin, Listener};
use plughost_tests::admin::{AdminHost, TOKEN};
use plughost_tests::{plugin_table, settings, PluginDir};
use serde_json::json;

/// A host with storage whose settings come from the file `text` (so that write-back has a file
/// to write), served with [`TOKEN`]; the folder holding the file, and the file.
fn storage_from_file(text: &str) -> (AdminHost, tempfile::TempDir, PathBuf) {
    let dir = PluginDir::new();
    dir.add("fixture-storage");
    let (folder, path) = settings(text);
    let mut config = HostConfig::load(&path).expect("read the settings");
    // The test's own folders and probe program.
    let own = dir.config();
    config.host.plugins_dir = own.host.plugins_dir;
    config.host.shadow_dir = own.host.shadow_dir;
    config.host.probe = own.host.probe;
    config.admin.token = Some(Secret::new(TOKEN));
    let host = Arc::new(Host::new(config).expect("create host"));
    let report = host.load_all().expect("load the folder");
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    (AdminHost::serve(dir, host), folder, path)
}

/// The file of plugin `name`, as `GET /plugins` shows it.
fn file_of(admin: &AdminHost, name: &str) -> PathBuf {
    let list = admin.get("/plugins").json();
    let plugin = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:#}"))
        .clone();
    PathBuf::from(plugin["file"].as_str().unwrap())
}

/// Reads one response (head, and a body of its Content-Length) from `stream`.
fn read_response(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read the answer");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .find_map(|line| {
            let line = line.to_ascii_lowercase();
            line.strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read the body");
    head + &String::from_utf8_lossy(&body)
}

/// `GET /plugins/{name}` needs no token, and the docs promise sensitive values are always
/// `***`. A plugin disabled in the settings is never opened, so its schema is unknown and its
/// whole config was shown as the settings give it: the secret in clear.
#[test]
fn a_disabled_plugins_sensitive_config_is_never_shown() {
    let dir = PluginDir::new();
    dir.add("fixture-storage");
    let mut config = dir.config();
    config.admin.token = Some(Secret::new(TOKEN));
    plugin_table(
        &mut config,
        "storage",
        json!({"namespace": "ns", "token": "s3cret-value"}),
        |table| table.enabled = false,
    );
    let host = Arc::new(Host::new(config).expect("create host"));
    host.load_all().expect("load the folder");
    let admin = AdminHost::serve(dir, host);
    let reply = admin.get("/plugins/storage");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["state"], "disabled");
    assert!(
        !reply.text().contains("s3cret-value"),
        "the secret is shown to anyone: {}",
        reply.text()
    );
    assert!(!admin.get("/plugins").text().contains("s3cret-value"));
    assert!(!admin.get("/").text().contains("s3cret-value"));
}

/// An operator edits a config the way every REST client does: GET it, change one value, PUT
/// it back. The sensitive value comes back as the mask `***`, which was taken as the new
/// token: the plugin ran with the token `***`, and write-back replaced `${VAR}` in
/// plughost.toml with `"***"`, losing the secret for good.
#[test]
fn a_config_sent_back_as_shown_keeps_its_secrets() {
    std::env::set_var("ADMIN_REVIEW_STORE_TOKEN", "tok-from-env-1234");
    let original = "[plugins.storage.config]\nnamespace = \"ns\"\n\
                    token = \"${ADMIN_REVIEW_STORE_TOKEN}\" # from the vault\n";
    let (admin, _folder, path) = storage_from_file(original);
    let mut config = admin.get("/plugins/storage").json()["config"].clone();
    assert_eq!(config["token"], "***", "shown masked");
    config["namespace"] = json!("ns2");
    let reply = admin.put(
        "/plugins/storage/config?write=true",
        Some(TOKEN),
        config.to_string().as_bytes(),
    );
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(
        file.contains("${ADMIN_REVIEW_STORE_TOKEN}") && !file.contains("\"***\""),
        "the PUT answered {} {}, and plughost.toml now reads:\n{file}",
        reply.status,
        reply.text()
    );
    let in_force = admin.host().config().plugin("storage").config;
    assert_ne!(
        in_force.get("token"),
        Some(&json!("***")),
        "the plugin runs with the mask as its token"
    );
}

/// When the change is applied but writing plughost.toml fails, the answer was 409 ("the host
/// refused the change") although the new config runs: a client retries or reports a failure
/// for a change that took effect. Either the change is not applied, or the answer says it was.
#[test]
fn a_failed_write_back_does_not_answer_refused_for_a_change_it_applied() {
    let (admin, folder, _path) =
        storage_from_file("[plugins.storage.config]\nnamespace = \"ns\"\n");
    // Writing goes through a temp file named after the process: a folder in its place makes
    // the write fail.
    let blocker = folder.path().join(format!(
        ".plughost.toml.plughost-tmp-{}",
        std::process::id()
    ));
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), b"x").unwrap();
    let reply = admin.put(
        "/plugins/storage/config?write=true",
        Some(TOKEN),
        br#"{"namespace":"ns3"}"#,
    );
    let running = admin.host().config().plugin("storage").config["namespace"].clone();
    if reply.status == 200 {
        assert_eq!(reply.json()["written"], false, "{}", reply.text());
    } else {
        assert_eq!(
            running,
            json!("ns"),
            "answered {} {} yet the new config runs",
            reply.status,
            reply.text()
        );
    }
}

/// A program embedding the host in an async `main` (`#[tokio::main]`) holds the
/// `AdminServer` there and drops it at the end: that panicked ("Cannot start a runtime from
/// within a runtime"), because stopping blocks on the server's own runtime.
#[test]
fn dropping_the_admin_server_inside_an_async_runtime_does_not_panic() {
    let admin = AdminHost::start(&["transform"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = Admin::new(admin.dispatcher.clone())
        .serve(vec![Listener::Tcp("127.0.0.1:0".parse().unwrap())])
        .expect("serve");
    let url = format!("http://{}", server.local_addrs()[0]);
    assert_eq!(
        plughost_tests::admin::request(&url, "GET", "/healthz", None, b"").status,
        200
    );
    let dropped = runtime.block_on(async move { tokio::spawn(async move { drop(server) }).await });
    assert!(
        dropped.is_ok(),
        "dropping the server in a task panicked: {:?}",
        dropped.map_err(|e| e.to_string())
    );
}

/// `host.refusals()` (and `GET /plugins`'s `refused`: "refused files that no plugin runs
/// from") listed a file whose plugin keeps serving its old version, when the file was
/// refused by a second `load_all` (which refuses with no `kept` plugin).
#[test]
fn a_file_whose_plugin_keeps_serving_is_not_listed_as_refused() {
    let admin = AdminHost::start(&["transform"]);
    let file = file_of(&admin, "transform");
    std::fs::write(&file, b"not a library any more").unwrap();
    let report = admin.host().load_all().expect("load again");
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    let list = admin.get("/plugins").json();
    assert_eq!(list["plugins"][0]["state"], "running", "{list:#}");
    assert!(admin.host().plugins().iter().any(|p| p.name == "transform"));
    assert!(
        admin.host().refusals().is_empty(),
        "{:?}",
        admin.host().refusals()
    );
    assert_eq!(list["refused"], json!([]), "{list:#}");
}

/// An operator removes a plugin from the folder: the host unloads it, as asked. `/readyz`
/// then answered 503 for good (the plugin, still "enabled" by default, is `stopped`), so a
/// load balancer takes a healthy host out of service until it restarts.
#[test]
fn readiness_does_not_wait_for_a_plugin_whose_file_was_removed() {
    let admin = AdminHost::start(&["transform", "fixture-echo"]);
    assert_eq!(admin.get("/readyz").status, 200);
    let file = file_of(&admin, "echo");
    std::fs::remove_file(&file).unwrap();
    // What the watcher does when it sees the file go.
    admin.host().sync_file(&file);
    assert_eq!(
        admin.get("/plugins/echo").json()["state"],
        "stopped",
        "unloaded"
    );
    let ready = admin.get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
}

/// RFC 7235 / 6750: the auth scheme is case-insensitive; `authorization: bearer TOKEN` (as
/// some clients and proxies send it) was refused with 401.
#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let admin = AdminHost::with_token(&["transform"]);
    let mut stream = TcpStream::connect(admin.url.trim_start_matches("http://")).unwrap();
    write!(
        stream,
        "POST /plugins/transform/execute HTTP/1.1\r\nHost: x\r\nauthorization: bearer {TOKEN}\r\n\
         Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    .unwrap();
    let answer = read_response(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("HELLO"), "{answer}");
}
