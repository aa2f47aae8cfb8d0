//! `GET /metrics` against a real host with fixture plugins: calls of every outcome made
//! through the dispatcher, a reload, events published; the exposition parsed by Prometheus'
//! own Python client (`tests/tools/check_metrics.py`: its strict OpenMetrics parser, or its
//! classic text parser), which also checks the naming conventions; then the values a user
//! would look at.
//!
//! Needs Python 3 with `prometheus-client` (`pip install -r tests/tools/requirements.txt`,
//! which `.ci/run` does): without it the tests fail saying so.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plughost::{Breaker, CallError, CallPolicy, Event};
use plughost_tests::admin::AdminHost;
use plughost_tests::{bytes_of, counting, eventually, library, rebuilt};
use serde_json::{json, Value};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";
/// What Prometheus 3 sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;\
     q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;\
     escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

/// Every metric family, as the OpenMetrics parser names them (counters without `_total`).
const FAMILIES: &[&str] = &[
    "plughost_plugin_calls",
    "plughost_plugin_in_flight",
    "plughost_plugin_stuck_calls",
    "plughost_plugin_call_duration_seconds",
    "plughost_plugin_circuit_state",
    "plughost_plugin_reloads",
    "plughost_plugin_refusals",
    "plughost_plugin_still_mapped_versions",
    "plughost_plugin_up",
    "plughost_plugin",
    "plughost_plugins",
    "plughost_refused_files",
    "plughost_start_time_seconds",
    "plughost_uptime_seconds",
    "plughost_events_published",
    "plughost_events_unrouted",
    "plughost_events_delivered",
    "plughost_events_dropped",
    "plughost_events_failed",
    "plughost_events_timed_out",
    "plughost_event_queue_depth",
    "plughost_admin_event_streams",
];

const OUTCOMES: [&str; 6] = ["ok", "error", "timeout", "panic", "rejected", "crashed"];

/// `GET /metrics` with `accept`: the content type and the body.
fn scrape(admin: &AdminHost, accept: &str) -> (String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut response = agent
        .get(format!("{}/metrics", admin.url))
        .header("Accept", accept)
        .call()
        .expect("GET /metrics");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.body_mut().read_to_string().expect("the body");
    assert_eq!(status, 200, "{body}");
    (content_type, body)
}

/// The exposition as Prometheus' parser read it.
struct Parsed {
    families: Vec<Value>,
    samples: Vec<Value>,
}

/// Parses `exposition` (`format`: `openmetrics` or `text`) with `check_metrics.py`; panics
/// with the parser's or the conventions' complaint.
fn parse(format: &str, exposition: &str) -> Parsed {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/check_metrics.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(format)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install Python 3 and pip install prometheus-client")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        // The module is missing: fail, never pass without the real parser.
        Some(3) => panic!("{stderr}"),
        _ => panic!("not a valid {format} exposition:\n{stderr}--- it was:\n{exposition}"),
    }
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
    Parsed {
        families: parsed["families"].as_array().unwrap().clone(),
        samples: parsed["samples"].as_array().unwrap().clone(),
    }
}

impl Parsed {
    /// The value of the sample `name` with exactly `labels`; panics if there is none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        self.samples
            .iter()
            .find(|s| s["name"] == name && s["labels"] == Value::Object(wanted.clone()))
            .unwrap_or_else(|| panic!("no {name}{wanted:?} among:\n{:#?}", self.samples))["value"]
            .as_f64()
            .unwrap()
    }

    /// The samples named `name` with `label` = `value`.
    fn with(&self, name: &str, label: &str, value: &str) -> Vec<&Value> {
        self.samples
            .iter()
            .filter(|s| s["name"] == name && s["labels"][label] == value)
            .collect()
    }

    fn family_type(&self, name: &str) -> &str {
        self.families
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no family {name}"))["type"]
            .as_str()
            .unwrap()
    }
}

/// `slow`, with a 300 ms timeout and a circuit that opens after 3 failures in a row, and
/// `echo`.
fn host() -> AdminHost {
    let admin = AdminHost::start(&["fixture-slow", "fixture-echo"]);
    admin.dispatcher.set_policy(
        "slow",
        CallPolicy {
            timeout: Duration::from_millis(300),
            breaker: Some(Breaker {
                failures: 3,
                cool_down: Duration::from_secs(600),
            }),
            ..CallPolicy::default()
        },
    );
    admin
}

#[test]
fn calls_by_outcome_latencies_reloads_and_events_are_exported_as_valid_openmetrics() {
    let admin = host();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let call = |plugin: &str, input: &str| {
        runtime.block_on(admin.dispatcher.execute(plugin, input.as_bytes().to_vec()))
    };
    for input in ["a", "b", "c"] {
        assert_eq!(call("slow", input).unwrap(), b"ok");
    }
    assert!(matches!(
        call("slow", "fail"),
        Err(CallError::Failed { .. })
    ));
    assert!(matches!(
        call("slow", "panic"),
        Err(CallError::Panicked { .. })
    ));
    // It stops at once when told to: no call is left running.
    assert!(matches!(
        call("slow", "poll 5000"),
        Err(CallError::Timeout { .. })
    ));
    // Three failures in a row: the circuit is open, the next call does not reach the plugin.
    let rejected = call("slow", "d");
    assert!(
        matches!(rejected, Err(CallError::CircuitOpen { .. })),
        "{rejected:?}"
    );
    for _ in 0..2 {
        assert_eq!(call("echo", "hi").unwrap(), b"hi");
    }

    // A new build of echo, taken in by a reload.
    let echo_file = library("fixture-echo")
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    admin
        .dir
        .replace_atomically(echo_file, &rebuilt(&bytes_of("fixture-echo"), 1));
    admin.host().reload("echo").expect("reload echo");

    // Events: three to a handler of the program's, one that nobody receives.
    let (_subscription, _) = counting(admin.host(), "metrics-test", &["demo.*"]);
    for n in 0..3 {
        admin
            .host()
            .publish(Event::json("demo.hello", &json!({ "n": n })).unwrap())
            .unwrap();
    }
    admin
        .host()
        .publish(Event::json("nobody.listens", &json!({})).unwrap())
        .unwrap();
    let delivered = || {
        let stats = admin.host().event_stats();
        plughost_tests::subscriber(&stats, "metrics-test").delivered
    };
    assert!(eventually(Duration::from_secs(10), || delivered() == 3));

    // OpenMetrics by default, and for Prometheus' own Accept header.
    let (content_type, exposition) = scrape(&admin, "*/*");
    assert_eq!(content_type, OPENMETRICS);
    let (content_type, _) = scrape(&admin, PROMETHEUS_ACCEPT);
    assert_eq!(content_type, OPENMETRICS);
    let m = parse("openmetrics", &exposition);

    let names: Vec<&str> = m
        .families
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, FAMILIES, "the metric families, in order");
    assert_eq!(m.family_type("plughost_plugin_calls"), "counter");
    assert_eq!(
        m.family_type("plughost_plugin_call_duration_seconds"),
        "histogram"
    );
    assert_eq!(m.family_type("plughost_plugin"), "info");

    // Calls by outcome: exactly the calls made, every outcome present.
    let calls = |plugin: &str, outcome: &str| {
        m.value(
            "plughost_plugin_calls_total",
            &[("plugin", plugin), ("outcome", outcome)],
        )
    };
    let slow: Vec<f64> = OUTCOMES.iter().map(|o| calls("slow", o)).collect();
    assert_eq!(slow, [3.0, 1.0, 1.0, 1.0, 1.0, 0.0], "slow by {OUTCOMES:?}");
    let echo: Vec<f64> = OUTCOMES.iter().map(|o| calls("echo", o)).collect();
    assert_eq!(echo, [2.0, 0.0, 0.0, 0.0, 0.0, 0.0], "echo by {OUTCOMES:?}");

    // The histogram counts the calls that reached the plugin: 3 ok, the error, the panic.
    let duration = "plughost_plugin_call_duration_seconds";
    assert_eq!(
        m.value(&format!("{duration}_count"), &[("plugin", "slow")]),
        5.0
    );
    assert_eq!(
        m.value(&format!("{duration}_count"), &[("plugin", "echo")]),
        2.0
    );
    let sum = m.value(&format!("{duration}_sum"), &[("plugin", "slow")]);
    assert!(sum > 0.0 && sum < 5.0, "{sum}");
    let mut buckets: Vec<(f64, f64)> = m
        .with(&format!("{duration}_bucket"), "plugin", "slow")
        .iter()
        .map(|s| {
            let le = s["labels"]["le"].as_str().unwrap();
            (le.parse::<f64>().unwrap(), s["value"].as_f64().unwrap())
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 10, "{buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 5.0));
    // Fixture calls take well under 10 s: all are in the last finite bucket.
    assert_eq!(buckets[buckets.len() - 2], (10.0, 5.0));

    // Gauges and counters of the plugins.
    let slow = [("plugin", "slow")];
    let echo = [("plugin", "echo")];
    assert_eq!(m.value("plughost_plugin_in_flight", &slow), 0.0);
    assert_eq!(m.value("plughost_plugin_stuck_calls", &slow), 0.0);
    let circuit = |state| {
        m.value(
            "plughost_plugin_circuit_state",
            &[("plugin", "slow"), ("state", state)],
        )
    };
    assert_eq!(
        [circuit("closed"), circuit("open"), circuit("half_open")],
        [0.0, 1.0, 0.0]
    );
    assert_eq!(m.value("plughost_plugin_reloads_total", &echo), 1.0);
    assert_eq!(m.value("plughost_plugin_reloads_total", &slow), 0.0);
    assert_eq!(m.value("plughost_plugin_refusals_total", &echo), 0.0);
    let still_mapped = m.value("plughost_plugin_still_mapped_versions", &echo);
    assert!(still_mapped <= 1.0, "{still_mapped}");
    assert_eq!(m.value("plughost_plugin_up", &slow), 1.0);
    assert_eq!(m.value("plughost_plugin_up", &echo), 1.0);
    let info = admin.host().plugin_status("echo").unwrap().info.unwrap();
    let (version, api_version) = (info.version.to_string(), info.api_version.to_string());
    assert_eq!(
        m.value(
            "plughost_plugin_info",
            &[
                ("plugin", "echo"),
                ("version", &version),
                ("api_version", &api_version),
                ("isolation", "in-process"),
            ],
        ),
        1.0
    );

    // The host.
    assert_eq!(m.value("plughost_plugins", &[("state", "running")]), 2.0);
    for state in ["disabled", "refused", "stopped", "failed"] {
        assert_eq!(m.value("plughost_plugins", &[("state", state)]), 0.0);
    }
    assert_eq!(m.value("plughost_refused_files", &[]), 0.0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = m.value("plughost_start_time_seconds", &[]);
    let uptime = m.value("plughost_uptime_seconds", &[]);
    assert!(
        started <= now && now - started < 600.0,
        "{started} vs {now}"
    );
    assert!((0.0..600.0).contains(&uptime), "{uptime}");

    // The bus.
    let topic = |topic| [("topic", topic)];
    assert_eq!(
        m.value("plughost_events_published_total", &topic("demo.hello")),
        3.0
    );
    assert_eq!(
        m.value("plughost_events_unrouted_total", &topic("demo.hello")),
        0.0
    );
    assert_eq!(
        m.value("plughost_events_unrouted_total", &topic("nobody.listens")),
        1.0
    );
    let subscriber = [("subscriber", "metrics-test")];
    assert_eq!(m.value("plughost_events_delivered_total", &subscriber), 3.0);
    assert_eq!(m.value("plughost_events_dropped_total", &subscriber), 0.0);
    assert_eq!(m.value("plughost_events_failed_total", &subscriber), 0.0);
    assert_eq!(m.value("plughost_events_timed_out_total", &subscriber), 0.0);
    assert_eq!(m.value("plughost_event_queue_depth", &subscriber), 0.0);
}

#[test]
fn a_scraper_asking_for_plain_text_gets_the_classic_format() {
    let admin = host();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(admin.dispatcher.execute("echo", b"hi".to_vec()))
        .unwrap();

    let (content_type, exposition) = scrape(&admin, "text/plain;version=0.0.4");
    assert_eq!(content_type, CLASSIC);
    assert!(!exposition.contains("# EOF"), "{exposition}");
    let m = parse("text", &exposition);
    // Counters as the classic parser names them; the info metric is a gauge there.
    assert_eq!(m.family_type("plughost_plugin_calls"), "counter");
    assert_eq!(m.family_type("plughost_plugin_info"), "gauge");
    let calls = |plugin, outcome| {
        m.value(
            "plughost_plugin_calls_total",
            &[("plugin", plugin), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("echo", "ok"), 1.0);
    assert_eq!(calls("echo", "error"), 0.0);
    // A plugin never called has its series, at zero, from the start.
    assert_eq!(calls("slow", "ok"), 0.0);
    let duration = "plughost_plugin_call_duration_seconds";
    assert_eq!(
        m.value(&format!("{duration}_count"), &[("plugin", "echo")]),
        1.0
    );
    assert_eq!(
        m.value(
            &format!("{duration}_bucket"),
            &[("plugin", "echo"), ("le", "+Inf")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            &format!("{duration}_bucket"),
            &[("plugin", "slow"), ("le", "+Inf")]
        ),
        0.0
    );
    assert_eq!(m.value("plughost_plugin_up", &[("plugin", "slow")]), 1.0);
    assert_eq!(m.value("plughost_plugins", &[("state", "running")]), 2.0);
}
