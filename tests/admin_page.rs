//! The admin API's status page (`GET /`) in a real headless browser (Debian's chromium, driven
//! through chromedriver by the `fantoccini` WebDriver client): it lists the plugins that run,
//! follows a reload live without navigating, and shows untrusted text as text; and, fetched by
//! a plain HTTP client, it has the same rows without JavaScript.
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver` the browser tests fail, saying how
//! to install them: CI installs them, and a test that cannot run must not pass.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plughost::{CallPolicy, Dispatcher, Host, HostEvent, Watcher};
use plughost_admin::{Admin, AdminServer, Listener};
use plughost_tests::{bytes_of, wait_for, PluginDir};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Upper bound of every wait: the machine is small and busy, and a browser is slow to start.
const WAIT: Duration = Duration::from_secs(30);

/// The file the `versioned` plugin serves from.
const VERSIONED: &str = "libversioned.so";

/// Files that are refused, whose names (and so refusal reasons) are markup.
const SCRIPT_FILE: &str = "<script>window.pwned=1<.so";
const IMG_FILE: &str = "<img src=x onerror=window.pwned=1>.so";

#[test]
fn the_page_lists_the_plugins_and_follows_a_reload_without_a_refresh() {
    let served = Served::start();
    served.call("versioned", 20);
    let browser = Browser::open(1200, 700);
    // The periodic refresh every second rather than 5, to keep the test short.
    browser.goto(&format!("{}?refresh=1", served.url));
    browser.until("the page says it is live", "return liveText()", |v| {
        v == "live"
    });

    let rows = browser.eval(ROWS);
    assert_eq!(
        rows,
        json!([
            ["echo", "1.0.0", "running", "–"],
            ["versioned", "1.0.0", "running", "–"]
        ]),
        "the plugins that run, by name, with their version, state and last refusal"
    );
    // Markup in refusal reasons is text on the page, and nothing of it ran.
    let refused = browser.eval("return document.getElementById('refused').textContent");
    let refused = refused.as_str().unwrap();
    assert!(refused.contains(SCRIPT_FILE), "{refused}");
    assert!(refused.contains(IMG_FILE), "{refused}");
    assert_eq!(
        browser.eval(INJECTED),
        json!([0, false]),
        "no element came from a refusal reason, no script of one ran"
    );

    // Calls raise no event the page listens to: the periodic refresh shows them. Once the
    // script has redrawn the table (the redraw on connecting may still be due), a redraw that
    // shows calls made after it can only come from the periodic refresh.
    browser.eval(
        "document.querySelectorAll('#plugins tbody tr').forEach(r => r.old = true); return true",
    );
    browser.until(
        "the script redraws the table",
        "return [...document.querySelectorAll('#plugins tbody tr')].some(r => r.old)",
        |v| v == false,
    );
    assert_eq!(browser.eval("return cellText('echo', 'p99')"), "–");
    served.call("echo", 10);
    browser.until(
        "the periodic refresh shows echo's p99",
        "return cellText('echo', 'p99')",
        |v| v.as_str().is_some_and(|v| v.ends_with(" ms")),
    );

    // Now with events alone (no periodic refresh) keeping the page current.
    browser.goto(&format!("{}?refresh=0", served.url));
    browser.until("the page says it is live", "return liveText()", |v| {
        v == "live"
    });
    // A marker that a navigation (a page reload) would lose.
    browser.eval("window.marker = 'set before the reload'; return true");
    served
        .dir
        .replace_atomically(VERSIONED, &bytes_of("fixture-versioned-v2"));
    wait_for(
        &served.events,
        WAIT,
        |e| matches!(e, HostEvent::Reloaded { name, .. } if name == "versioned"),
    );
    browser.until(
        "the page shows version 2.0.0",
        "return cellText('versioned', 'version')",
        |v| v == "2.0.0",
    );
    let after = browser.eval(
        "return [window.marker, cellText('versioned', 'reload'), cellText('versioned', 'p99'), \
         liveText()]",
    );
    assert_eq!(
        after[0], "set before the reload",
        "the page was not reloaded"
    );
    assert!(
        after[1].as_str().unwrap().ends_with("1 reload"),
        "last reload: {after}"
    );
    assert!(
        after[2].as_str().unwrap().ends_with(" ms"),
        "the calls made show a p99: {after}"
    );
    assert_eq!(after[3], "live");
    // The redrawn page is as safe as the served one.
    assert_eq!(browser.eval(INJECTED), json!([0, false]));
}

#[test]
fn the_page_reads_without_javascript() {
    let served = Served::start();
    let (head, body) = http_get(served.addr, "/");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    // Only the page's own inline script and style may run, and it may only call this server.
    let policy = head
        .lines()
        .find_map(|l| l.strip_prefix("content-security-policy: "))
        .unwrap_or_else(|| panic!("no Content-Security-Policy in {head}"));
    let nonce = policy
        .split("'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("no nonce in {policy}"));
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert!(
        body.contains(&format!("<script nonce=\"{nonce}\">")),
        "{body}"
    );
    assert_eq!(body.matches("<script").count(), 1, "{body}");

    for row in [
        "<tr data-plugin=\"echo\"><td data-field=\"name\"><b>echo</b>",
        "<tr data-plugin=\"versioned\"><td data-field=\"name\"><b>versioned</b>",
    ] {
        assert!(body.contains(row), "no {row:?} in\n{body}");
    }
    assert!(
        body.contains("<td data-field=\"version\">1.0.0</td>"),
        "{body}"
    );
    assert!(body.contains("<span class=\"state running\">running</span>"));
    assert!(
        body.contains("&lt;script&gt;window.pwned=1&lt;.so"),
        "{body}"
    );
    assert!(!body.contains("<img"), "{body}");

    // A second page gets a nonce of its own.
    let (second, _) = http_get(served.addr, "/");
    assert!(!second.contains(nonce), "{second}");
}

/// Not a test: takes the screenshot of the status page in docs/img/status-page.png, with the
/// example plugins running under the repository's `plughost.toml` and some calls made.
/// `cargo test -p plughost-tests --test admin_page -- --ignored`.
#[test]
#[ignore = "writes docs/img/status-page.png"]
fn screenshot_for_the_docs() {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = PluginDir::new();
    for example in ["audit", "counter", "filter", "ticker", "transform"] {
        dir.add(example);
    }
    let mut config = plughost::HostConfig::load(&repository.join("plughost.toml")).unwrap();
    let folders = dir.config();
    config.host.plugins_dir = folders.host.plugins_dir;
    config.host.shadow_dir = folders.host.shadow_dir;
    config.host.probe = folders.host.probe;
    // Keep the audit log out of the repository, and grant audit that file instead.
    if let Some(audit) = config.plugins.get_mut("audit") {
        let log = dir.shadow().join("audit.jsonl");
        audit.config.insert("file".into(), json!(log));
        audit
            .grant
            .retain(|g| !matches!(g, plughost::Capability::FsWrite(_)));
        audit.grant.extend(plughost_tests::grants(&[&format!(
            "fs:write:{}",
            log.display()
        )]));
    }
    let host = Arc::new(Host::new(config).unwrap());
    let events = host.subscribe();
    dir.write("libscratch.so", b"#!/bin/sh\n");
    host.load_all().unwrap();
    // Some history: a stray file, a new config for transform (a reload), a broken build of
    // counter (refused; 1.0.0 keeps serving).
    let mode = json!({"mode": "reverse"}).as_object().cloned().unwrap();
    host.set_plugin_config("transform", mode, false).unwrap();
    let counter = plughost_tests::library("counter").file_name().unwrap();
    dir.write(counter.to_str().unwrap(), b"");
    assert!(host.reload("counter").is_err());
    let served = Served::over(dir, host, None, events);

    // The browser first: its start takes the machine's CPUs, and the calls' times with them.
    let browser = Browser::open(1200, 700);
    // Calls while the page is open, one in 50 to filter malformed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calling = {
        let (dispatcher, stop) = (served.dispatcher.clone(), stop.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let numbers = if n.is_multiple_of(50) {
                    "oops"
                } else {
                    "[1, 5, 10, 20]"
                };
                runtime.block_on(async {
                    let _ = dispatcher.execute("transform", b"hello".to_vec()).await;
                    let _ = dispatcher.execute("filter", numbers.into()).await;
                    if n.is_multiple_of(3) {
                        let _ = dispatcher.execute("counter", Vec::new()).await;
                    }
                });
                std::thread::sleep(Duration::from_millis(4));
            }
        })
    };
    browser.goto(&format!("{}?refresh=1", served.url));
    browser.until(
        "counter's calls/s shows",
        "return cellText('counter', 'calls')",
        |v| v.as_str().is_some_and(|v| v != "0.0" && v != "–"),
    );
    let png = browser.screenshot();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    calling.join().unwrap();
    std::fs::write(repository.join("docs/img/status-page.png"), png).unwrap();
}

/// `[[name, version, state, last refusal], ...]` of the table's rows.
const ROWS: &str = "return [...document.querySelectorAll('#plugins tbody tr')].map(r => \
    ['version', 'state', 'refusal'].reduce((row, f) => [...row, cellText(r.dataset.plugin, f)], \
    [r.dataset.plugin]))";

/// How many elements the refused list holds besides text, and whether an injected script ran.
const INJECTED: &str = "return [document.querySelectorAll('#refused script, #refused img, \
    #plugins script, #plugins img').length, window.pwned !== undefined]";

/// Defines `cellText(plugin, field)` in the page, the text of one cell, for the scripts above.
const HELPERS: &str = "window.cellText = (plugin, field) => { \
    const row = [...document.querySelectorAll('#plugins tbody tr')] \
        .find(r => r.dataset.plugin === plugin); \
    return row ? row.querySelector(`[data-field=${field}]`).textContent : null; }; \
    window.liveText = () => document.getElementById('live').textContent; return true";

/// A host on a folder of fixtures (`versioned` 1.0.0, `echo`, two refused files), watched,
/// with the admin API on a port of its own.
struct Served {
    url: String,
    addr: SocketAddr,
    dispatcher: Arc<Dispatcher>,
    events: Receiver<HostEvent>,
    // Dropped in this order: the server, then the watcher, then the folder.
    _server: AdminServer,
    _watcher: Option<Watcher>,
    dir: PluginDir,
}

impl Served {
    fn start() -> Self {
        let dir = PluginDir::new();
        dir.replace_atomically(VERSIONED, &bytes_of("fixture-versioned-v1"));
        dir.add("fixture-echo");
        dir.write(SCRIPT_FILE, b"not a library");
        dir.write(IMG_FILE, b"not a library either");
        let (host, watcher, events) = dir.watched();
        Self::over(dir, host, Some(watcher), events)
    }

    /// The admin API over `host`, which serves from `dir`.
    fn over(
        dir: PluginDir,
        host: Arc<Host>,
        watcher: Option<Watcher>,
        events: Receiver<HostEvent>,
    ) -> Self {
        let dispatcher = Arc::new(Dispatcher::new(host, CallPolicy::default()));
        let server = Admin::new(dispatcher.clone())
            .serve(vec![Listener::Tcp("127.0.0.1:0".parse().unwrap())])
            .expect("serve the admin API");
        let addr = server.local_addrs()[0];
        Served {
            url: format!("http://{addr}/"),
            addr,
            dispatcher,
            events,
            _server: server,
            _watcher: watcher,
            dir,
        }
    }

    /// Calls `plugin` `n` times through the guarded path, so that it has call metrics.
    fn call(&self, plugin: &str, n: usize) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        for _ in 0..n {
            runtime
                .block_on(self.dispatcher.execute(plugin, b"hi".to_vec()))
                .unwrap();
        }
    }
}

/// `GET path` over a plain TCP connection: the response's head and body.
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    (head.to_owned(), body.to_owned())
}

/// A headless chromium driven through a chromedriver of its own, showing pages at a given size.
struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<fantoccini::Client>,
    // Dropped after the session is closed (see `Drop`).
    _driver: Chromedriver,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(width: u32, height: u32) -> Self {
        let driver = Chromedriver::start();
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = runtime
            .block_on(
                fantoccini::ClientBuilder::new(connector)
                    .capabilities(capabilities)
                    .connect(&format!("http://127.0.0.1:{}", driver.port)),
            )
            .expect("start a chromium session through chromedriver");
        let browser = Browser {
            runtime,
            client: Some(client),
            _driver: driver,
            _profile: profile,
        };
        // The window's size includes what the browser draws around the page: grow it so that
        // the page itself is width x height.
        let inner = browser.eval("return [window.innerWidth, window.innerHeight]");
        let grow =
            |asked: u32, got: &Value| asked + asked.saturating_sub(got.as_u64().unwrap() as u32);
        let (outer_width, outer_height) = (grow(width, &inner[0]), grow(height, &inner[1]));
        browser
            .runtime
            .block_on(browser.client().set_window_size(outer_width, outer_height))
            .expect("size the window");
        browser
    }

    fn client(&self) -> &fantoccini::Client {
        self.client.as_ref().unwrap()
    }

    /// Opens `url`, and defines the helpers the checks use.
    fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
        self.eval(HELPERS);
    }

    /// Runs `script` (a function body) in the page; what it returns.
    fn eval(&self, script: &str) -> Value {
        self.runtime
            .block_on(self.client().execute(script, vec![]))
            .unwrap_or_else(|e| panic!("run {script:?}: {e}"))
    }

    /// Runs `script` until `done` accepts what it returns, for up to `WAIT`.
    fn until(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.eval(script);
            if done(&value) {
                return value;
            }
            if Instant::now() >= deadline {
                let page = self.eval("return document.body.innerText");
                let e = self.eval("return window.refreshError");
                panic!("not within {WAIT:?}: {what} (last {value}); {e} the page:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn screenshot(&self) -> Vec<u8> {
        self.runtime
            .block_on(self.client().screenshot())
            .expect("screenshot")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Ends the browser; the driver is killed after.
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
    }
}

/// `chromedriver --port=N`, killed when dropped.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    fn start() -> Self {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: the status page is tested in a real browser; install \
                 one with `apt-get install -y chromium chromium-driver` (CI's .ci/run does)"
            );
        }
        let port = free_port();
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        // It says when it listens; the rest of its output is read and dropped, so that it
        // never blocks on a full pipe.
        let (ready, started) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    let _ = ready.send(());
                }
            }
        });
        let driver = Chromedriver { child, port };
        started
            .recv_timeout(WAIT)
            .expect("chromedriver did not say it started");
        driver
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
