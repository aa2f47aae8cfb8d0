//! The admin HTTP API against a real host: what it lists, the changes it makes, and the
//! answer to every kind of bad request (400, 401, 404, 405, 409, 413, 422) in its JSON error
//! format.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use plughost_tests::admin::{AdminHost, TOKEN};
use plughost_tests::{bytes_of, grant, plugin_table, rebuilt};
use serde_json::{json, Value};

/// transform, storage (namespace `ns`, a sensitive token) and notes (which requires storage).
fn three() -> AdminHost {
    AdminHost::start_with(
        &["transform", "fixture-storage", "fixture-notes"],
        |config| {
            config.admin.token = Some(plughost::Secret::new(TOKEN));
            plugin_table(
                config,
                "storage",
                json!({"namespace": "ns", "token": "s3cret-value"}),
                |_| {},
            );
            grant(config, "notes", &["call:storage"]);
        },
    )
}

fn plugin<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:#}"))
}

#[test]
fn every_plugin_is_listed_with_its_state_version_and_calls() {
    let admin = three();
    let out = admin.post("/plugins/transform/execute", Some(TOKEN), b"hello");
    assert_eq!((out.status, out.text().as_str()), (200, "HELLO"));
    let list = admin.get("/plugins");
    assert_eq!(list.status, 200);
    assert_eq!(list.header("content-type"), Some("application/json"));
    let list = list.json();
    assert_eq!(list["plugins"].as_array().unwrap().len(), 3, "{list:#}");
    let transform = plugin(&list, "transform");
    assert_eq!(transform["state"], "running");
    assert_eq!(transform["enabled"], true);
    assert_eq!(transform["isolation"], "in-process");
    assert_eq!(transform["reloads"], 0);
    assert!(transform["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(transform["calls"]["calls"], 1);
    assert_eq!(transform["calls"]["errors"], 0);
    assert_eq!(plugin(&list, "notes")["requires"], json!(["storage ^1.2"]));

    let storage = admin.get("/plugins/storage");
    assert_eq!(storage.status, 200);
    let storage = storage.json();
    assert_eq!(storage["version"], "1.3.0");
    assert_eq!(storage["config"]["namespace"], "ns");
    assert_eq!(
        storage["config"]["token"], "***",
        "sensitive values are masked"
    );
    assert!(!storage.to_string().contains("s3cret-value"));
    assert!(storage["config_schema"].as_array().unwrap().len() >= 3);
}

#[test]
fn an_unknown_plugin_is_404_naming_it() {
    let admin = three();
    for reply in [
        admin.get("/plugins/nope"),
        admin.post("/plugins/nope/execute", Some(TOKEN), b"x"),
        admin.post("/plugins/nope/reload", Some(TOKEN), b""),
        admin.post("/plugins/nope/disable", Some(TOKEN), b""),
        admin.put("/plugins/nope/config", Some(TOKEN), b"{}"),
    ] {
        assert_eq!(reply.status, 404, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["plugin"], "nope");
        assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");
    }
}

#[test]
fn a_call_answers_with_the_output_or_the_plugins_error() {
    let admin = three();
    let put = admin.post("/plugins/storage/execute", Some(TOKEN), b"put k v");
    assert_eq!((put.status, put.text().as_str()), (200, "ok"));
    assert_eq!(put.header("content-type"), Some("application/octet-stream"));
    let refused = admin.post("/plugins/storage/execute", Some(TOKEN), b"\xff\xfe");
    assert_eq!(refused.status, 422, "{}", refused.text());
    let body = refused.json();
    assert_eq!(body["plugin"], "storage");
    assert!(
        body["error"].as_str().unwrap().contains("not UTF-8"),
        "{body}"
    );
    let calls = admin.get("/plugins/storage").json()["calls"].clone();
    assert_eq!(
        (calls["calls"].as_u64(), calls["errors"].as_u64()),
        (Some(2), Some(1))
    );
}

#[test]
fn changes_need_the_token_and_reads_do_not() {
    let admin = three();
    let none = admin.post("/plugins/transform/execute", None, b"x");
    assert_eq!(none.status, 401);
    assert!(none
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));
    assert!(none.json()["error"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    let wrong = admin.post("/plugins/transform/execute", Some("guess"), b"x");
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "the bearer token is wrong");
    let put = admin.put("/plugins/storage/config", Some("guess"), b"{}");
    assert_eq!(put.status, 401);
    assert_eq!(admin.get("/plugins").status, 200);
    assert_eq!(admin.get("/plugins/transform").status, 200);

    // Without a token configured, no change is possible over TCP, and the answer says how.
    let open = AdminHost::start(&["transform"]);
    let refused = open.post("/plugins/transform/disable", Some("anything"), b"");
    assert_eq!(refused.status, 401);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("[admin]"),
        "{}",
        refused.text()
    );
    assert_eq!(open.get("/plugins/transform").json()["state"], "running");
}

#[test]
fn disabling_a_required_plugin_is_a_conflict_and_changes_nothing() {
    let admin = three();
    let refused = admin.post("/plugins/storage/disable", Some(TOKEN), b"");
    assert_eq!(refused.status, 409, "{}", refused.text());
    let body = refused.json();
    assert_eq!(body["plugin"], "storage");
    assert!(body["error"].as_str().unwrap().contains("notes"), "{body}");
    assert_eq!(admin.get("/plugins/storage").json()["state"], "running");

    let disabled = admin.post("/plugins/notes/disable", Some(TOKEN), b"");
    assert_eq!(disabled.status, 200, "{}", disabled.text());
    assert_eq!(disabled.json()["state"], "disabled");
    assert_eq!(
        admin
            .post("/plugins/notes/execute", Some(TOKEN), b"x")
            .status,
        404,
        "a disabled plugin takes no calls"
    );
    let enabled = admin.post("/plugins/notes/enable", Some(TOKEN), b"");
    assert_eq!(enabled.status, 200, "{}", enabled.text());
    assert_eq!(enabled.json()["state"], "running");
}

#[test]
fn a_new_config_is_checked_like_an_edit_of_the_file() {
    let admin = three();
    let path = "/plugins/storage/config";
    let missing = admin.put(path, Some(TOKEN), b"{}");
    assert_eq!(missing.status, 422, "{}", missing.text());
    assert!(
        missing.json()["error"]
            .as_str()
            .unwrap()
            .contains("namespace"),
        "{}",
        missing.text()
    );
    // The plugin's own check quotes the value; the answer must not.
    let revoked = admin.put(
        path,
        Some(TOKEN),
        br#"{"namespace":"x","token":"bad-9f2e"}"#,
    );
    assert_eq!(revoked.status, 422, "{}", revoked.text());
    assert!(!revoked.text().contains("bad-9f2e"), "{}", revoked.text());
    let malformed = admin.put(path, Some(TOKEN), b"{\"namespace\":");
    assert_eq!(malformed.status, 400, "{}", malformed.text());
    assert_eq!(malformed.json()["plugin"], "storage");
    let not_object = admin.put(path, Some(TOKEN), b"[1,2]");
    assert_eq!(not_object.status, 400, "{}", not_object.text());
    // Nothing changed so far.
    assert_eq!(
        admin.get("/plugins/storage").json()["config"]["namespace"],
        "ns"
    );
    let before = admin.post("/plugins/storage/execute", Some(TOKEN), b"put a 1");
    assert_eq!(before.status, 200);

    let applied = admin.put(path, Some(TOKEN), br#"{"namespace":"other","capacity":5}"#);
    assert_eq!(applied.status, 200, "{}", applied.text());
    let applied = applied.json();
    assert!(
        applied["changed"]
            .as_array()
            .unwrap()
            .contains(&json!("storage")),
        "{applied}"
    );
    assert_eq!(applied["written"], false);
    let shown = admin.get("/plugins/storage").json();
    assert_eq!(
        shown["config"],
        json!({"namespace": "other", "capacity": 5})
    );
    assert_eq!(shown["state"], "running");
}

#[test]
fn a_body_over_the_limit_is_413() {
    let admin = AdminHost::start_with(&["transform"], |config| {
        config.admin.token = Some(plughost::Secret::new(TOKEN));
        config.admin.max_body = plughost::ByteSize(1024);
    });
    let fits = admin.post("/plugins/transform/execute", Some(TOKEN), &[b'a'; 1024]);
    assert_eq!(fits.status, 200);
    let over = admin.post("/plugins/transform/execute", Some(TOKEN), &[b'a'; 1025]);
    assert_eq!(over.status, 413, "{}", over.text());
    assert!(over.json()["error"].as_str().unwrap().contains("max_body"));
    let over = admin.put("/plugins/transform/config", Some(TOKEN), &[b' '; 4096]);
    assert_eq!(over.status, 413, "{}", over.text());
}

#[test]
fn reload_reads_the_file_now_and_a_refused_file_leaves_the_old_version_serving() {
    let admin = three();
    let file = admin
        .dir
        .path()
        .join(plughost_tests::library("transform").file_name().unwrap());
    std::fs::write(&file, rebuilt(&bytes_of("transform"), 1)).unwrap();
    let reloaded = admin.post("/plugins/transform/reload", Some(TOKEN), b"");
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(reloaded.json()["state"], "running");
    assert_eq!(admin.get("/plugins/transform").json()["reloads"], 1);

    std::fs::write(&file, b"not a library").unwrap();
    let refused = admin.post("/plugins/transform/reload", Some(TOKEN), b"");
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.json()["plugin"], "transform");
    let shown = admin.get("/plugins/transform").json();
    assert_eq!(shown["state"], "running", "{shown:#}");
    assert!(
        shown["last_refusal"]["reason"]
            .as_str()
            .unwrap()
            .contains("transform"),
        "{shown:#}"
    );
    let out = admin.post("/plugins/transform/execute", Some(TOKEN), b"still");
    assert_eq!(out.text(), "STILL");
}

#[test]
fn unknown_routes_and_methods_answer_in_json() {
    let admin = three();
    let missing = admin.get("/nothing/here");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]
        .as_str()
        .unwrap()
        .contains("no such route"));
    let method = admin.send("DELETE", "/plugins", None, b"");
    assert_eq!(method.status, 405);
    assert!(method.json()["error"].is_string());
}

#[test]
fn health_is_the_process_and_readiness_the_plugins() {
    let dir = plughost_tests::PluginDir::new();
    dir.add("transform");
    let host = std::sync::Arc::new(dir.host());
    let admin = AdminHost::serve(dir, host.clone());
    assert_eq!(admin.get("/healthz").json()["status"], "ok");
    let before = admin.get("/readyz");
    assert_eq!(
        before.status,
        503,
        "not ready before the first load: {}",
        before.text()
    );
    assert_eq!(before.json()["ready"], false);
    host.load_all().unwrap();
    let after = admin.get("/readyz");
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(after.json(), json!({"ready": true, "waiting": []}));
}

#[test]
fn listening_beyond_loopback_without_a_token_is_refused_at_start() {
    let admin = AdminHost::start(&["transform"]);
    let error = plughost_admin::Admin::new(admin.dispatcher.clone())
        .serve(vec![plughost_admin::Listener::Tcp(
            "0.0.0.0:0".parse().unwrap(),
        )])
        .err()
        .expect("refused");
    let message = error.to_string();
    assert!(
        message.contains("0.0.0.0:0") && message.contains("token"),
        "{message}"
    );
}

#[test]
fn events_are_published_and_streamed_as_they_happen() {
    let admin = three();
    let published = admin.post("/events/user.created", Some(TOKEN), br#"{"id":7}"#);
    assert_eq!(published.status, 202, "{}", published.text());
    assert_eq!(
        published.json(),
        json!({"topic": "user.created", "queued": 0})
    );
    let reserved = admin.post("/events/plughost.fake", Some(TOKEN), b"{}");
    assert_eq!(reserved.status, 400, "{}", reserved.text());
    let not_json = admin.post("/events/user.created", Some(TOKEN), b"{oops");
    assert_eq!(not_json.status, 400);
    let stats = admin.get("/events/stats").json();
    assert!(stats["topics"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["topic"] == "user.created" && t["unrouted"] == 1));

    // A stream of plugin events sees a disable and an enable done meanwhile.
    let url = format!("{}/events?topics=plughost.plugin.*", admin.url);
    let (lines, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let response = ureq::get(&url).call().expect("stream");
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "text/event-stream"
        );
        let reader = BufReader::new(response.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    // The subscription exists once the stream's headers are out; give it a moment to start.
    let subscribed = plughost_tests::eventually(Duration::from_secs(10), || {
        admin
            .host()
            .event_stats()
            .subscribers
            .iter()
            .any(|s| s.name.starts_with("admin-stream-"))
    });
    assert!(subscribed);
    assert_eq!(
        admin
            .post("/plugins/notes/disable", Some(TOKEN), b"")
            .status,
        200
    );
    let mut seen = Vec::new();
    while let Ok(line) = receive.recv_timeout(Duration::from_secs(10)) {
        seen.push(line.clone());
        if line == "event: plughost.plugin.unloaded" {
            break;
        }
    }
    assert!(
        seen.contains(&"event: plughost.plugin.unloaded".to_owned()),
        "{seen:#?}"
    );
    let data = std::iter::from_fn(|| receive.recv_timeout(Duration::from_secs(5)).ok())
        .find_map(|line| line.strip_prefix("data: ").map(str::to_owned))
        .expect("the event's data");
    let event: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "plughost.plugin.unloaded");
    assert_eq!(event["data"]["plugin"], "notes");
}

#[test]
fn the_openapi_document_describes_every_route_served() {
    let admin = three();
    let reply = admin.get("/openapi.json");
    assert_eq!(reply.status, 200);
    let document = reply.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|method| {
                    ["get", "post", "put", "delete", "patch"].contains(&method.as_str())
                })
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut expected: Vec<(String, String)> = [
        ("GET", "/"),
        ("GET", "/events"),
        ("GET", "/events/stats"),
        ("POST", "/events/{topic}"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/plugins"),
        ("GET", "/plugins/{name}"),
        ("PUT", "/plugins/{name}/config"),
        ("POST", "/plugins/{name}/disable"),
        ("POST", "/plugins/{name}/enable"),
        ("POST", "/plugins/{name}/execute"),
        ("POST", "/plugins/{name}/reload"),
        ("GET", "/readyz"),
    ]
    .iter()
    .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
    .collect();
    expected.sort();
    assert_eq!(documented, expected);

    // Every documented operation is served: none meets the router's own 404 or 405. Changes
    // go to a plugin that can take them without stopping the rest of the test.
    for (method, path) in &documented {
        if path == "/events" {
            continue; // a stream: checked in events_are_published_and_streamed_as_they_happen
        }
        let concrete = path
            .replace("{name}", "transform")
            .replace("{topic}", "user.seen");
        let body: &[u8] = match (method.as_str(), path.as_str()) {
            ("PUT", _) => b"{}",
            ("POST", "/events/{topic}") => b"{}",
            _ => b"x",
        };
        let reply = admin.send(method, &concrete, Some(TOKEN), body);
        let text = reply.text();
        assert!(
            !text.contains("no such route") && reply.status != 405,
            "{method} {concrete} is documented but not served: {} {text}",
            reply.status
        );
        assert!(
            reply.status < 500,
            "{method} {concrete}: {} {text}",
            reply.status
        );
        // Every status it answers with is one the document lists for it.
        let listed = &paths[path.as_str()][method.to_lowercase()]["responses"];
        assert!(
            listed.get(reply.status.to_string()).is_some(),
            "{method} {concrete} answered {}, which the document does not list: {listed}",
            reply.status
        );
    }
    // Every change says it needs the token.
    for (method, path) in &documented {
        let operation = &paths[path.as_str()][method.to_lowercase()];
        let secured = operation["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty());
        assert_eq!(secured, method != "GET", "{method} {path}: {operation}");
    }
}
