//! The admin API under load, against a real host: a thousand clients reading the plugin list
//! while plugins reload, a stream of calls while a plugin's file is replaced, the rate limit
//! turning a burst away politely, and idle connections that do not lock clients out for good.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use plughost::{HostEvent, WatchOptions};
use plughost_tests::admin::{request, AdminHost, TOKEN};
use plughost_tests::{bytes_of, eventually, grant, library, plugin_table, rebuilt, wait_for};
use serde_json::{json, Value};

/// What `GET /plugins` must list throughout.
const PLUGINS: [&str; 5] = ["counter", "filter", "notes", "storage", "transform"];

/// Mirrors `MAX_CONNECTIONS` and `HEAD_TIMEOUT` in admin/src/serve.rs (not exported).
const MAX_CONNECTIONS: usize = 512;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The example plugins and the storage + notes fixtures, with the token set.
fn five() -> AdminHost {
    AdminHost::start_with(
        &[
            "transform",
            "filter",
            "counter",
            "fixture-storage",
            "fixture-notes",
        ],
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

/// The file name a package's library is installed under.
fn file_of(package: &str) -> String {
    let name = library(package).file_name().unwrap();
    name.to_str().unwrap().to_owned()
}

/// The test opens many sockets at once; say so plainly if the process may not.
fn needs_descriptors(wanted: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<u64>().ok());
    if let Some(soft) = soft {
        assert!(
            soft >= wanted,
            "this test needs {wanted} open files; raise the limit (ulimit -n {wanted}), it is {soft}"
        );
    }
}

/// A plugin entry with what may change while it serves (a reload, calls, health) left out.
/// `sha256` is the digest of the version in service: each reload here is a new build.
fn steady(entry: &Value) -> Value {
    let mut entry = entry.clone();
    let object = entry.as_object_mut().expect("each plugin is an object");
    for changing in [
        "loaded_at",
        "reloads",
        "sha256",
        "still_mapped",
        "calls",
        "health",
        "circuit",
    ] {
        object.remove(changing);
    }
    entry
}

/// Why a `GET /plugins` answer is not whole and consistent with `first`, if it is not.
fn torn(body: &[u8], first: &BTreeMap<String, Value>, reloads_so_far: u64) -> Option<String> {
    let list: Value = match serde_json::from_slice(body) {
        Ok(list) => list,
        Err(e) => return Some(format!("not JSON ({e})")),
    };
    let Some(plugins) = list["plugins"].as_array() else {
        return Some(format!("no plugins array in {list}"));
    };
    let names: Vec<&str> = plugins.iter().filter_map(|p| p["name"].as_str()).collect();
    if names != PLUGINS {
        return Some(format!("listed {names:?}"));
    }
    if list["refused"] != json!([]) {
        return Some(format!("refusals listed: {}", list["refused"]));
    }
    for plugin in plugins {
        let name = plugin["name"].as_str().unwrap_or_default();
        if steady(plugin) != first[name] {
            return Some(format!("{name} changed: {plugin} (was {})", first[name]));
        }
        if plugin["state"] != "running" || !plugin["loaded_at"].is_string() {
            return Some(format!("{name} not running with a load time: {plugin}"));
        }
        match plugin["reloads"].as_u64() {
            Some(reloads) if reloads <= reloads_so_far => {}
            _ => return Some(format!("{name} reloads beyond {reloads_so_far}: {plugin}")),
        }
    }
    None
}

#[test]
fn a_thousand_concurrent_lists_during_reloads_are_all_whole() {
    const CLIENTS: usize = 1000;
    needs_descriptors(4 * CLIENTS as u64);
    let started = Instant::now();
    let admin = five();
    let first = admin.get("/plugins");
    assert_eq!(first.status, 200, "{}", first.text());
    let first: BTreeMap<String, Value> = first.json()["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), steady(p)))
        .collect();

    // Reloads of three plugins, one after another, each with a new build of its file, for as
    // long as the clients read. Through the library, not the API: every request the API
    // serves from this address is one of the thousand, under the default rate limit.
    let reloads = Arc::new(AtomicU64::new(0));
    let reading = Arc::new(AtomicBool::new(true));
    let reloader = {
        let host = admin.host().clone();
        let dir = admin.dir.path().to_owned();
        let (reloads, reading) = (reloads.clone(), reading.clone());
        std::thread::spawn(move || {
            let builds: Vec<(&str, String, Vec<u8>)> = ["transform", "filter", "counter"]
                .into_iter()
                .map(|name| (name, file_of(name), bytes_of(name)))
                .collect();
            let mut generation = 0;
            while reading.load(Ordering::SeqCst) {
                let (name, file, bytes) = &builds[generation as usize % builds.len()];
                generation += 1;
                let temp = dir.join(format!(".{file}.tmp"));
                std::fs::write(&temp, rebuilt(bytes, generation)).unwrap();
                std::fs::rename(&temp, dir.join(file)).unwrap();
                host.reload(name)
                    .unwrap_or_else(|e| panic!("reloading {name}: {e}"));
                reloads.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(30), || reloads.load(Ordering::SeqCst)
            > 0),
        "the first reload did not finish"
    );

    let go = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let go = go.clone();
            let url = admin.url.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    go.wait();
                    get_plugins(&url)
                })
                .expect("start a client thread")
        })
        .collect();
    let before = reloads.load(Ordering::SeqCst);
    let window = Instant::now();
    go.wait();
    let answers: Vec<Result<Answer, String>> = clients
        .into_iter()
        .map(|client| client.join().expect("a client thread panicked"))
        .collect();
    let window = window.elapsed();
    let during = reloads.load(Ordering::SeqCst) - before;
    reading.store(false, Ordering::SeqCst);
    reloader.join().expect("the reloader failed");
    let reloads_done = reloads.load(Ordering::SeqCst);

    let mut statuses = BTreeMap::new();
    let mut failures = Vec::new();
    for answer in &answers {
        match answer {
            Err(error) => failures.push(error.clone()),
            Ok(answer) => {
                *statuses.entry(answer.status).or_insert(0) += 1;
                if answer.status != 200 {
                    let body = String::from_utf8_lossy(&answer.body);
                    failures.push(format!("{}: {body}", answer.status));
                } else if answer.content_type.as_deref() != Some("application/json") {
                    failures.push(format!("content type {:?}", answer.content_type));
                } else if let Some(why) = torn(&answer.body, &first, reloads_done) {
                    failures.push(why);
                }
            }
        }
    }
    println!(
        "{CLIENTS} concurrent GET /plugins in {window:.2?}, {during} reloads meanwhile \
         ({reloads_done} in all); statuses {statuses:?}; test took {:.1?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} answers failed, e.g. {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(during >= 1, "no reload happened while the clients read");

    // Every reload counted, and every plugin still serves.
    let list = admin.get("/plugins").json();
    let counted: u64 = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reloads"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, reloads_done, "{list:#}");
    let out = admin.post("/plugins/transform/execute", Some(TOKEN), b"after");
    assert_eq!((out.status, out.text().as_str()), (200, "AFTER"));
}

/// One answer to `GET /plugins`.
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// `GET url/plugins` on a connection of its own, or why there was no answer.
fn get_plugins(url: &str) -> Result<Answer, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut response = agent
        .get(format!("{url}/plugins"))
        .call()
        .map_err(|e| format!("no answer: {e}"))?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .body_mut()
        .read_to_vec()
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(Answer {
        status: response.status().as_u16(),
        content_type,
        body,
    })
}

#[test]
fn calls_keep_answering_while_the_plugins_file_is_replaced() {
    const THREADS: usize = 4;
    const RELOADS: u32 = 5;
    // Calls between two reloads, at the least, so that calls surround every reload.
    const CALLS_BETWEEN: u64 = 300;
    let started = Instant::now();
    // These clients call as fast as they can, beyond the default 1,000 requests a second
    // from one address: the rate limit has its own test below, this one is about reloads.
    let admin = AdminHost::start_with(&["transform"], |config| {
        config.admin.token = Some(plughost::Secret::new(TOKEN));
        config.admin.rate_limit = 0;
    });
    let events = admin.host().subscribe();
    let _watcher = admin
        .host()
        .watch(WatchOptions::default())
        .expect("watch the folder");

    let calls = Arc::new(AtomicU64::new(0));
    let calling = Arc::new(AtomicBool::new(true));
    let wrong = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..THREADS)
        .map(|thread| {
            let url = admin.url.clone();
            let (calls, calling, wrong) = (calls.clone(), calling.clone(), wrong.clone());
            std::thread::spawn(move || {
                // One keep-alive connection per client, as a real client keeps.
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(60)))
                    .build()
                    .into();
                let mut i = 0u64;
                while calling.load(Ordering::SeqCst) {
                    i += 1;
                    let input = format!("call {thread}-{i}");
                    let answer = agent
                        .post(format!("{url}/plugins/transform/execute"))
                        .header("Authorization", format!("Bearer {TOKEN}"))
                        .send(input.as_bytes())
                        .map_err(|e| e.to_string())
                        .and_then(|mut r| {
                            let status = r.status().as_u16();
                            let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
                            Ok((status, body))
                        });
                    match answer {
                        Ok((200, body)) if body == input.to_uppercase() => {}
                        other => wrong.lock().unwrap().push(format!("{input}: {other:?}")),
                    }
                    calls.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    let file = file_of("transform");
    let bytes = bytes_of("transform");
    let mut during = Vec::new();
    for generation in 1..=RELOADS {
        let target = calls.load(Ordering::SeqCst) + CALLS_BETWEEN;
        assert!(
            eventually(Duration::from_secs(60), || calls.load(Ordering::SeqCst)
                >= target),
            "the calls stalled at {}",
            calls.load(Ordering::SeqCst)
        );
        let at = calls.load(Ordering::SeqCst);
        admin
            .dir
            .replace_atomically(&file, &rebuilt(&bytes, generation));
        wait_for(
            &events,
            Duration::from_secs(30),
            |e| matches!(e, HostEvent::Reloaded { name, .. } if name == "transform"),
        );
        during.push(calls.load(Ordering::SeqCst) - at);
    }
    let target = calls.load(Ordering::SeqCst) + CALLS_BETWEEN;
    assert!(eventually(Duration::from_secs(60), || calls
        .load(Ordering::SeqCst)
        >= target));
    calling.store(false, Ordering::SeqCst);
    for client in clients {
        client.join().expect("a client thread panicked");
    }

    let total = calls.load(Ordering::SeqCst);
    let wrong = wrong.lock().unwrap();
    println!(
        "{total} calls from {THREADS} clients across {RELOADS} reloads (calls answered during \
         each reload: {during:?}); test took {:.1?}",
        started.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "{} of {total} calls went wrong, e.g. {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let shown = admin.get("/plugins/transform").json();
    assert_eq!(shown["reloads"], RELOADS, "{shown:#}");
    assert_eq!(shown["calls"]["calls"], total, "{shown:#}");
    assert_eq!(shown["calls"]["errors"], 0, "{shown:#}");
}

#[test]
fn a_burst_over_the_rate_limit_is_told_when_to_come_back() {
    let admin = AdminHost::start_with(&["transform"], |config| {
        config.admin.rate_limit = 5;
    });
    // All at once, so that however slow the machine the limiter earns little meanwhile.
    let go = Arc::new(Barrier::new(50));
    let burst: Vec<_> = (0..50)
        .map(|_| {
            let (url, go) = (admin.url.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                request(&url, "GET", "/plugins", None, b"")
            })
        })
        .collect();
    let replies: Vec<_> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    let served = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        served + limited.len(),
        50,
        "only 200 and 429: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    // The burst allowance is the rate, 5; the limiter earns one more each 200 ms.
    assert!(served >= 5, "{served} served");
    assert!(limited.len() >= 25, "{} limited", limited.len());
    let mut wait = 0;
    for reply in &limited {
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains("rate_limit"), "{error}");
        let retry_after: u64 = reply
            .header("retry-after")
            .expect("a 429 says when to retry")
            .parse()
            .expect("Retry-After in seconds");
        assert!(retry_after >= 1, "{retry_after}");
        wait = wait.max(retry_after);
    }
    // Waiting as long as told is enough.
    std::thread::sleep(Duration::from_secs(wait));
    let again = admin.get("/plugins");
    assert_eq!(again.status, 200, "{}", again.text());
}

#[test]
fn idle_connections_beyond_the_limit_do_not_lock_clients_out() {
    const IDLE: usize = 600;
    needs_descriptors(4 * IDLE as u64);
    let started = Instant::now();
    let admin = AdminHost::start(&["transform"]);
    let addr = admin.url.trim_start_matches("http://").to_owned();
    // Connections that never send a byte: the server takes MAX_CONNECTIONS of them, the rest
    // (IDLE is more) wait in the listen backlog.
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();

    let asked = Instant::now();
    let reply = request(&admin.url, "GET", "/healthz", None, b"");
    let waited = asked.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "ok");

    // The client waited in the backlog behind the idle connections the server had not taken:
    // as many had to be cut first, for their head did not come in time.
    let cut = idle
        .iter()
        .filter(|stream| {
            stream
                .set_read_timeout(Some(Duration::from_millis(1)))
                .unwrap();
            matches!((&**stream).read(&mut [0u8; 1]), Ok(0))
        })
        .count();
    println!(
        "with {IDLE} idle connections open, a client waited {waited:.2?} to be served; \
         {cut} idle ones were cut by then; test took {:.1?}",
        started.elapsed()
    );
    assert!(
        cut > IDLE - MAX_CONNECTIONS,
        "only {cut} idle connections were cut"
    );
    // Served as soon as the head timeout freed the server's connections, not after every
    // idle connection in the backlog had timed out in turn.
    assert!(
        waited < 2 * HEAD_TIMEOUT,
        "a client waited {waited:.2?} behind idle connections"
    );
    drop(idle);
}
