//! The event bus, end to end: real plugins that subscribe, publish and run as event sources,
//! the program's own publishes and handlers, the host's lifecycle hooks, and each delivery
//! guarantee docs/events.md states.
//!
//! Just over 600 lines on purpose: one test per guarantee of docs/events.md, each with the
//! grants its plugins need, read best side by side.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plughost::{
    Event, HostConfig, HostEvent, Isolation, PluginSettings, PublishError, QueuePolicy,
    SubscribeOptions,
};
use plughost_tests::{
    bytes_of, eventually, file_lines, grant, grants, plugin_table, rebuilt, subscriber, wait_for,
    PluginDir,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// The settings of `dir` with `plugin`'s table set by `edit`, its config `config`.
fn with_plugin(
    dir: &PluginDir,
    plugin: &str,
    config: serde_json::Value,
    edit: impl FnOnce(&mut PluginSettings),
) -> HostConfig {
    let mut settings = dir.config();
    plugin_table(&mut settings, plugin, config, edit);
    settings
}

/// The lines of `file`, waiting up to `WAIT` for at least `n`.
fn lines(file: &Path, n: usize) -> Vec<String> {
    eventually(WAIT, || file_lines(file).len() >= n);
    file_lines(file)
}

fn seq(n: u64) -> Event {
    Event::json("seq.one", &json!({ "seq": n })).unwrap()
}

fn call(host: &plughost::Host, plugin: &str, input: &str) -> Result<String, String> {
    let mut out = Vec::new();
    host.handle(plugin)
        .unwrap()
        .call_into(input.as_bytes(), &mut out)
        .map(|()| String::from_utf8(out).unwrap())
        .map_err(|e| e.to_string())
}

/// The grant to write beneath `folder`.
fn write_in(folder: &Path) -> String {
    format!("fs:write:{}", folder.display())
}

fn sink_file(dir: &PluginDir) -> PathBuf {
    dir.path().join("sink.log")
}

/// Waits until `stats` of the host say `done`.
fn until(
    host: &plughost::Host,
    done: impl Fn(&plughost::EventStats) -> bool,
) -> plughost::EventStats {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = host.event_stats();
        if done(&stats) || Instant::now() >= deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_plugin_receives_what_the_program_publishes_in_order() {
    let dir = PluginDir::new();
    dir.add("fixture-sink");
    let file = sink_file(&dir);
    let settings = with_plugin(&dir, "sink", json!({"file": file}), |p| {
        p.grant = grants(&["events:subscribe"]);
    });
    let host = plughost::Host::new(settings).unwrap();
    host.load_all().unwrap();
    for n in 1..=1000 {
        assert_eq!(
            host.publish(seq(n)).unwrap(),
            1,
            "queued for the one subscriber"
        );
    }
    let lines = lines(&file, 1000);
    let expected: Vec<String> = (1..=1000).map(|n| format!("app {n}")).collect();
    assert_eq!(lines, expected, "every event once, in publish order");
    let stats = until(&host, |s| subscriber(s, "sink").delivered == 1000);
    let topic = stats.topics.iter().find(|t| t.topic == "seq.one").unwrap();
    assert_eq!(
        (topic.published, topic.delivered, topic.dropped),
        (1000, 1000, 0)
    );
    let sink = subscriber(&stats, "sink");
    assert!(sink.plugin);
    assert_eq!(sink.patterns, ["seq.>"]);
    assert_eq!(sink.latency.count, 1000);
    assert!(sink.latency.p50 <= sink.latency.p99);
}

#[test]
fn handlers_run_on_the_hosts_threads_never_the_publishers() {
    let dir = PluginDir::new();
    let host = dir.host();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let _subscription = host
        .subscribe_events(
            "watcher",
            &["seq.*"],
            SubscribeOptions::default(),
            move |e| {
                record
                    .lock()
                    .unwrap()
                    .push((std::thread::current().id(), e.data().to_vec()));
                Ok(())
            },
        )
        .unwrap();
    host.publish(Event::new(
        "seq.raw",
        "text/plain",
        b"not json \xff".to_vec(),
    ))
    .unwrap();
    let stats = until(&host, |s| subscriber(s, "watcher").delivered == 1);
    assert_eq!(subscriber(&stats, "watcher").delivered, 1);
    let seen = seen.lock().unwrap();
    assert_ne!(seen[0].0, std::thread::current().id());
    assert_eq!(seen[0].1, b"not json \xff", "exactly the bytes published");
}

#[test]
fn an_event_published_to_nobody_is_counted_not_an_error() {
    let dir = PluginDir::new();
    let host = dir.host();
    assert_eq!(host.publish(seq(1)).unwrap(), 0);
    let stats = host.event_stats();
    let topic = stats.topics.iter().find(|t| t.topic == "seq.one").unwrap();
    assert_eq!((topic.published, topic.unrouted), (1, 1));
}

#[test]
fn bad_topics_reserved_topics_and_large_events_are_refused_at_publish() {
    let dir = PluginDir::new();
    let mut settings = dir.config();
    settings.host.max_event_size = plughost::ByteSize(1024);
    let host = plughost::Host::new(settings).unwrap();
    let error = host
        .publish(Event::json("user..created", &1).unwrap())
        .unwrap_err();
    assert!(matches!(error, PublishError::BadTopic { .. }), "{error}");
    assert!(error.to_string().contains("user..created"), "{error}");
    let error = host
        .publish(Event::json("plughost.plugin.loaded", &1).unwrap())
        .unwrap_err();
    assert!(error.to_string().contains("the host's own"), "{error}");
    let error = host
        .publish(Event::new(
            "seq.big",
            "application/octet-stream",
            vec![0; 2000],
        ))
        .unwrap_err();
    assert!(error.to_string().contains("max_event_size"), "{error}");
    let bad = host.subscribe_events("x", &["seq.>.x"], SubscribeOptions::default(), |_| Ok(()));
    assert!(bad.unwrap_err().to_string().contains("`>`"));
}

#[test]
fn a_plugin_publishes_only_the_topics_it_declares_and_within_the_size_limit() {
    let dir = PluginDir::new();
    dir.add("fixture-emitter");
    let mut settings = dir.config();
    settings.host.max_event_size = plughost::ByteSize(1024);
    grant(&mut settings, "emitter", &["events:emit"]);
    let host = plughost::Host::new(settings).unwrap();
    host.load_all().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let record = received.clone();
    let _subscription = host
        .subscribe_events("app", &["seq.>"], SubscribeOptions::default(), move |e| {
            record
                .lock()
                .unwrap()
                .push((e.source().to_owned(), e.topic().to_owned()));
            Ok(())
        })
        .unwrap();
    assert_eq!(call(&host, "emitter", "seq.two").unwrap(), "ok");
    let error = call(&host, "emitter", "seq.three").unwrap_err();
    assert!(
        error.contains("may not publish seq.three") && error.contains("seq.one, seq.two"),
        "{error}"
    );
    let error = call(&host, "emitter", "big:4000").unwrap_err();
    assert!(error.contains("max_event_size"), "{error}");
    until(&host, |s| subscriber(s, "app").delivered >= 1);
    let received = received.lock().unwrap();
    assert!(received.contains(&("emitter".to_owned(), "seq.two".to_owned())));
}

#[test]
fn a_malformed_topic_or_pattern_in_a_descriptor_refuses_the_plugin() {
    let dir = PluginDir::new();
    dir.add("fixture-badtopic");
    let host = dir.host();
    let report = host.load_all().unwrap();
    assert!(report.loaded.is_empty());
    let reason = report.refused[0].to_string();
    assert!(reason.contains("bad..topic"), "{reason}");
}

#[test]
fn a_source_emits_from_its_own_thread_until_it_is_unloaded() {
    let dir = PluginDir::new();
    dir.add("fixture-sink");
    dir.add("fixture-emitter");
    let file = sink_file(&dir);
    // The subscriber starts first: an event published before it subscribes reaches nobody.
    let mut settings = with_plugin(&dir, "sink", json!({"file": file}), |p| {
        p.priority = 10;
        p.grant = grants(&["events:subscribe"]);
    });
    plugin_table(&mut settings, "emitter", json!({"interval_ms": 1}), |p| {
        p.grant = grants(&["events:emit"]);
    });
    let host = plughost::Host::new(settings).unwrap();
    host.load_all().unwrap();
    let seen = lines(&file, 20);
    assert!(seen.len() >= 20, "{seen:?}");
    assert!(seen.iter().all(|l| l.starts_with("emitter ")));
    host.unload("emitter").unwrap();
    let stopped_at = lines(&file, 0).len();
    std::thread::sleep(Duration::from_millis(100));
    let after = lines(&file, 0);
    assert_eq!(
        after.len(),
        stopped_at,
        "nothing is published once the source stopped"
    );
    let numbers: Vec<u64> = after
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
}

#[test]
fn no_event_is_lost_or_duplicated_across_100_reloads_of_a_subscriber() {
    let dir = PluginDir::new();
    let sink = bytes_of("fixture-sink");
    dir.replace_atomically("libsink.so", &sink);
    let file = sink_file(&dir);
    let host = Arc::new(
        plughost::Host::new(with_plugin(&dir, "sink", json!({"file": file}), |p| {
            p.event_queue = 100_000;
            p.grant = grants(&["events:subscribe"]);
        }))
        .unwrap(),
    );
    let events = host.subscribe();
    let _watcher = host.watch(plughost::WatchOptions::default()).unwrap();
    host.load_all().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (host, stop) = (host.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                host.publish(seq(n)).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
            n
        })
    };
    for generation in 1..=100 {
        dir.replace_atomically("libsink.so", &rebuilt(&sink, generation));
        wait_for(&events, WAIT, |e| matches!(e, HostEvent::Reloaded { .. }));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.join().unwrap();
    let lines = lines(&file, published as usize);
    let numbers: Vec<u64> = lines
        .iter()
        .map(|l| l.strip_prefix("app ").unwrap().parse().unwrap())
        .collect();
    assert!(published > 100, "a steady stream: {published} events");
    assert_eq!(
        numbers,
        (1..=published).collect::<Vec<_>>(),
        "each of {published} events exactly once, in order, over 100 reloads"
    );
    let stats = host.event_stats();
    assert_eq!(subscriber(&stats, "sink").delivered, published);
    assert_eq!(subscriber(&stats, "sink").dropped, 0);
}

#[test]
fn a_handler_that_errors_panics_or_hangs_is_counted_and_delivery_goes_on() {
    let dir = PluginDir::new();
    dir.add("fixture-moody");
    dir.add("fixture-sink");
    let moody_file = dir.path().join("moody.log");
    let mut settings = with_plugin(&dir, "moody", json!({"file": moody_file}), |p| {
        p.event_timeout = Duration::from_millis(300);
        p.grant = grants(&["events:subscribe"]);
    });
    let file = sink_file(&dir);
    plugin_table(&mut settings, "sink", json!({"file": file}), |p| {
        p.grant = grants(&["events:subscribe"]);
    });
    let host = plughost::Host::new(settings).unwrap();
    host.load_all().unwrap();
    host.publish(Event::json("mood.error", &json!({"seq": 1})).unwrap())
        .unwrap();
    host.publish(Event::json("mood.panic", &json!({"seq": 2})).unwrap())
        .unwrap();
    host.publish(Event::json("mood.slow", &5000).unwrap())
        .unwrap();
    host.publish(seq(1)).unwrap();
    host.publish(Event::json("mood.ok", &json!({"seq": 3})).unwrap())
        .unwrap();
    assert_eq!(
        lines(&file, 1),
        ["app 1"],
        "another subscriber is not held up"
    );
    let started = Instant::now();
    assert_eq!(
        lines(&moody_file, 1),
        ["ok 3"],
        "moody goes on after its failures"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the slow handler was timed out"
    );
    let stats = until(&host, |s| subscriber(s, "moody").delivered == 1);
    let moody = subscriber(&stats, "moody");
    assert_eq!(
        (moody.failed, moody.timed_out, moody.delivered),
        (3, 1, 1),
        "{moody:#?}"
    );
    let failed: u64 = stats
        .topics
        .iter()
        .filter(|t| t.topic == "mood.error" || t.topic == "mood.panic")
        .map(|t| t.failed)
        .sum();
    assert_eq!(failed, 2);
    assert_eq!(
        call(&host, "moody", "").unwrap(),
        "moody",
        "calls still work"
    );
}

/// Publishes seq 1..=20 to a sink that takes 50 ms per event through a queue of 4 under
/// `policy`, and returns the seqs it handled and what publish returned.
fn overflow(policy: QueuePolicy) -> (Vec<u64>, Vec<Result<usize, PublishError>>, u64) {
    let dir = PluginDir::new();
    dir.add("fixture-sink");
    let file = sink_file(&dir);
    let host = plughost::Host::new(with_plugin(
        &dir,
        "sink",
        json!({"file": file, "delay_ms": 50}),
        |p| {
            p.event_queue = 4;
            p.event_policy = policy;
            p.event_block = Duration::from_millis(20);
            p.grant = grants(&["events:subscribe"]);
        },
    ))
    .unwrap();
    host.load_all().unwrap();
    let results: Vec<_> = (1..=20).map(|n| host.publish(seq(n))).collect();
    let stats = until(&host, |s| {
        let sink = subscriber(s, "sink");
        sink.delivered + sink.dropped == 20
    });
    let sink = subscriber(&stats, "sink");
    let handled = lines(&file, sink.delivered as usize);
    assert_eq!(sink.delivered + sink.dropped, 20, "{sink:#?}");
    let seqs = handled
        .iter()
        .map(|l| l.strip_prefix("app ").unwrap().parse().unwrap())
        .collect();
    (seqs, results, sink.dropped)
}

#[test]
fn a_full_queue_drops_the_newest_under_drop_newest() {
    let (seqs, results, dropped) = overflow(QueuePolicy::DropNewest);
    assert!(dropped >= 10, "{dropped}");
    assert_eq!(seqs[..3], [1, 2, 3], "the first ones are kept");
    assert!(!seqs.contains(&20), "the last ones are dropped: {seqs:?}");
    assert!(
        results.iter().all(Result::is_ok),
        "the publisher is not told"
    );
}

#[test]
fn a_full_queue_drops_the_oldest_under_drop_oldest() {
    let (seqs, _, dropped) = overflow(QueuePolicy::DropOldest);
    assert!(dropped >= 10, "{dropped}");
    assert_eq!(seqs.last(), Some(&20), "the newest is kept: {seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "still in order: {seqs:?}"
    );
}

#[test]
fn a_full_queue_blocks_the_publisher_then_tells_it_under_block() {
    let (seqs, results, dropped) = overflow(QueuePolicy::Block);
    assert!(dropped > 0);
    let refused: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(ToString::to_string)
        .collect();
    assert_eq!(refused.len() as u64, dropped);
    assert!(refused[0].contains("dropped for sink") && refused[0].contains("policy block"));
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn the_hosts_lifecycle_reaches_subscribers_as_plughost_events() {
    let dir = PluginDir::new();
    let host = Arc::new(
        plughost::Host::new(with_plugin(
            &dir,
            "panicky",
            json!({"panic_in": "execute"}),
            |_| {},
        ))
        .unwrap(),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let _subscription = host
        .subscribe_events(
            "hooks",
            &["plughost.>"],
            SubscribeOptions::default(),
            move |e| {
                let data: serde_json::Value = e.json_data().unwrap();
                record
                    .lock()
                    .unwrap()
                    .push((e.topic().to_owned(), e.source().to_owned(), data));
                Ok(())
            },
        )
        .unwrap();
    dir.add("fixture-panicky");
    host.load_all().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dispatcher = plughost::Dispatcher::new(host.clone(), plughost::CallPolicy::default());
    let failed = runtime.block_on(dispatcher.execute("panicky", b"panic".to_vec()));
    assert!(failed.is_err());
    host.unload("panicky").unwrap();
    until(&host, |s| subscriber(s, "hooks").delivered >= 3);
    let seen = seen.lock().unwrap();
    let topics: Vec<&str> = seen.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "plughost.plugin.loaded",
            "plughost.call.failed",
            "plughost.plugin.unloaded"
        ],
        "{seen:#?}"
    );
    assert!(seen
        .iter()
        .all(|(_, source, data)| source == "plughost" && data["plugin"] == "panicky"));
    assert!(seen[1].2["error"].as_str().unwrap().contains("panicked"));
    assert!(seen[1].2["took_ms"].as_f64().is_some());
}

#[cfg(target_os = "linux")]
#[test]
fn isolated_plugins_subscribe_and_publish_through_their_workers() {
    let dir = PluginDir::new();
    dir.add("fixture-sink");
    dir.add("fixture-emitter");
    // Confined to its grants, the isolated sink writes in a folder of its own.
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("sink.log");
    let mut settings = with_plugin(&dir, "sink", json!({"file": file}), |p| {
        p.isolation = Some(Isolation::Process);
        p.priority = 10;
        p.grant = grants(&["events:subscribe", &write_in(out.path())]);
    });
    plugin_table(
        &mut settings,
        "emitter",
        json!({"count": 50, "interval_ms": 1}),
        |p| {
            p.isolation = Some(Isolation::Process);
            p.grant = grants(&["events:emit"]);
        },
    );
    let host = plughost::Host::new(settings).unwrap();
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let seen = lines(&file, 50);
    let expected: Vec<String> = (1..=50).map(|n| format!("emitter {n}")).collect();
    assert_eq!(seen, expected);
    let error = call(&host, "emitter", "seq.three").unwrap_err();
    assert!(error.contains("may not publish seq.three"), "{error}");
    host.unload("emitter").unwrap();
    host.unload("sink").unwrap();
}

#[test]
fn the_example_ticker_goes_on_across_reloads_and_audit_records_every_tick() {
    let dir = PluginDir::new();
    let ticker = bytes_of("ticker");
    dir.replace_atomically("libticker.so", &ticker);
    dir.add("audit");
    let audit = dir.path().join("audit.jsonl");
    let mut settings = with_plugin(&dir, "audit", json!({"file": audit}), |p| {
        p.priority = 10;
        // audit declares `fs:write:*`: the operator's grant says which file.
        p.grant = grants(&["events:subscribe", &write_in(&audit)]);
    });
    plugin_table(&mut settings, "ticker", json!({"interval": "10ms"}), |p| {
        p.grant = grants(&["events:emit"]);
    });
    let host = Arc::new(plughost::Host::new(settings).unwrap());
    let events = host.subscribe();
    let _watcher = host.watch(plughost::WatchOptions::default()).unwrap();
    host.load_all().unwrap();
    let ticks = |lines: &[String]| -> Vec<u64> {
        lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["type"] == "ticker.tick")
            .map(|e| {
                assert_eq!(e["source"], "ticker");
                e["data"]["seq"].as_u64().unwrap()
            })
            .collect()
    };
    // Five more ticks recorded, within `WAIT`.
    let five_more = || {
        let before = ticks(&lines(&audit, 0)).len();
        assert!(
            eventually(WAIT, || ticks(&lines(&audit, 0)).len() >= before + 5),
            "ticker stopped ticking: {:?}",
            host.plugins()
        );
    };
    for generation in 1..=3 {
        five_more();
        dir.replace_atomically("libticker.so", &rebuilt(&ticker, generation));
        wait_for(&events, WAIT, |e| matches!(e, HostEvent::Reloaded { .. }));
    }
    five_more();
    host.unload("ticker").unwrap();
    let recorded = lines(&audit, 0);
    let seqs = ticks(&recorded);
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no tick repeated or skipped over 3 reloads"
    );
    let reloads = recorded
        .iter()
        .filter(|l| l.contains("\"type\":\"plughost.plugin.reloaded\""))
        .count();
    assert_eq!(reloads, 3, "the host's own events are recorded too");
}

#[cfg(target_os = "linux")]
#[test]
fn an_isolated_handler_that_hangs_costs_its_worker_and_delivery_goes_on() {
    let dir = PluginDir::new();
    dir.add("fixture-moody");
    // Confined to its grants, the isolated moody writes in a folder of its own.
    let out = tempfile::tempdir().unwrap();
    let moody_file = out.path().join("moody.log");
    let host = plughost::Host::new(with_plugin(
        &dir,
        "moody",
        json!({"file": moody_file}),
        |p| {
            p.isolation = Some(Isolation::Process);
            p.event_timeout = Duration::from_millis(300);
            p.grant = grants(&["events:subscribe", &write_in(out.path())]);
        },
    ))
    .unwrap();
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    host.publish(Event::json("mood.slow", &60_000).unwrap())
        .unwrap();
    host.publish(Event::json("mood.panic", &json!({"seq": 1})).unwrap())
        .unwrap();
    host.publish(Event::json("mood.ok", &json!({"seq": 2})).unwrap())
        .unwrap();
    assert_eq!(lines(&moody_file, 1), ["ok 2"]);
    let stats = until(&host, |s| subscriber(s, "moody").delivered == 1);
    let moody = subscriber(&stats, "moody");
    assert_eq!((moody.failed, moody.timed_out), (2, 1), "{moody:#?}");
    assert_eq!(
        call(&host, "moody", "").unwrap(),
        "moody",
        "its restarted worker serves"
    );
}
