//! Adversarial tests of the event bus: each tries to break one guarantee of docs/events.md
//! or docs/design.md "The event bus". A failing test here is a bug report; its message says
//! what went wrong. Every wait is bounded, so none can hang.
//!
//! Longer than 600 lines: the reproducers of one review, kept together with their shared
//! scenarios; docs/events.md lists the guarantees they hold the bus to.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use plughost::{Event, Host, HostConfig, HostEvent, PublishError, QueuePolicy, SubscribeOptions};
use plughost_tests::{
    bytes_of, counting, eventually, file_lines, grants, plugin_table, rebuilt, subscriber,
    wait_for, PluginDir,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

/// What duo needs granted: it publishes `adv.tick` and subscribes to `adv.cmd.*`.
fn duo_grants() -> Vec<plughost::Capability> {
    grants(&["events:emit", "events:subscribe"])
}

/// An event whose handler (see [`sleepy`]) sleeps `sleep_ms`, then records `n`.
fn job(topic: &str, n: u64, sleep_ms: u64) -> Event {
    Event::json(topic.to_owned(), &json!({ "n": n, "sleep": sleep_ms })).unwrap()
}

/// A handler for [`job`] events: sleeps, then records `n` into `seen`.
fn sleepy(seen: Arc<Mutex<Vec<u64>>>) -> impl Fn(&Event) -> Result<(), String> + Send + Sync {
    move |event| {
        let job: serde_json::Value = event.json_data().map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(job["sleep"].as_u64().unwrap()));
        seen.lock().unwrap().push(job["n"].as_u64().unwrap());
        Ok(())
    }
}

fn count_of(seen: &Arc<Mutex<Vec<u64>>>) -> usize {
    seen.lock().unwrap().len()
}

// ---------------------------------------------------------------------------------------------
// Handler time limit and the watchdog (host/src/bus/{mod.rs,subscriber.rs}).
// ---------------------------------------------------------------------------------------------

/// Event 1 overruns a 400 ms limit (600 ms): the watchdog starts a second taker, which takes
/// event 2 (300 ms, within its limit). Event 1's late thread returns while event 2 runs and
/// swaps `busy_until`, which is now event 2's deadline, to zero: it believes it was on time.
/// Event 2's taker then finds zero and believes the watchdog replaced it, so it ends too:
/// nobody takes from the queue any more.
fn late_handler_scenario(host: &Host) -> (plughost::Subscription, Arc<Mutex<Vec<u64>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let subscription = host
        .subscribe_events(
            "late",
            &["late.*"],
            SubscribeOptions::default().timeout(Duration::from_millis(400)),
            sleepy(seen.clone()),
        )
        .unwrap();
    host.publish(job("late.job", 1, 600)).unwrap();
    host.publish(job("late.job", 2, 300)).unwrap();
    for n in 3..=5 {
        host.publish(job("late.job", n, 0)).unwrap();
    }
    (subscription, seen)
}

#[test]
fn a_late_handler_returning_while_its_replacement_is_busy_does_not_end_delivery() {
    let dir = PluginDir::new();
    let host = dir.host();
    let (_subscription, seen) = late_handler_scenario(&host);
    let delivered = eventually(Duration::from_secs(5), || count_of(&seen) >= 5);
    let stats = host.event_stats();
    assert!(
        delivered,
        "events 3..=5 were never handled (seen {:?}): the late thread of event 1 cleared the \
         replacement taker's busy_until, so the replacement ended believing it was timed out, \
         and no thread takes from the queue any more (depth {})",
        seen.lock().unwrap(),
        subscriber(&stats, "late").queue_depth
    );
}

#[test]
fn a_late_handler_is_not_also_counted_as_delivered() {
    let dir = PluginDir::new();
    let host = dir.host();
    let (_subscription, seen) = late_handler_scenario(&host);
    // Events 1 and 2 are both handled (1 late) by the time this is true.
    eventually(Duration::from_secs(3), || count_of(&seen) >= 2);
    std::thread::sleep(Duration::from_millis(300));
    let stats = host.event_stats();
    let late = subscriber(&stats, "late");
    let topic = stats.topics.iter().find(|t| t.topic == "late.job").unwrap();
    assert_eq!(late.timed_out, 1, "event 1 timed out: {late:#?}");
    // Only handlers that returned in time are counted as delivered, with their time: none of
    // them took the 600 ms of event 1.
    assert!(
        late.handler.max < Duration::from_millis(400),
        "event 1 overran its 400 ms limit and was counted as timed out, and then also as \
         delivered in {:?} (its late thread found busy_until set by event 2's taker); event 2, \
         on time, was counted as a failure of the topic instead: {topic:#?} {late:#?}",
        late.handler.max
    );
}

#[test]
fn five_timeouts_spread_over_time_do_not_end_delivery_for_good() {
    let dir = PluginDir::new();
    let host = dir.host();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _subscription = host
        .subscribe_events(
            "sometimes-slow",
            &["slow.*"],
            SubscribeOptions::default().timeout(Duration::from_millis(50)),
            sleepy(seen.clone()),
        )
        .unwrap();
    // Five slow events, each one alone: its thread overruns the limit, then returns long
    // before the next. No thread stays stranded.
    for n in 1..=5 {
        host.publish(job("slow.job", n, 150)).unwrap();
        assert!(eventually(Duration::from_secs(3), || count_of(&seen) >= n as usize));
        std::thread::sleep(Duration::from_millis(100));
    }
    host.publish(job("slow.job", 100, 0)).unwrap();
    let delivered = eventually(Duration::from_secs(3), || {
        seen.lock().unwrap().contains(&100)
    });
    let stats = host.event_stats();
    assert!(
        delivered,
        "a subscriber whose handler overran its limit five times, every late thread long \
         returned, gets no more events: `stranded` only ever grows, so the fifth timeout \
         stops its taker for good ({:#?})",
        subscriber(&stats, "sometimes-slow")
    );
}

#[cfg(target_os = "linux")]
#[test]
fn reloading_a_subscriber_that_ran_out_of_threads_lets_it_receive_again() {
    // The log line says "no more threads are given to it ... (reload or disable it)".
    let dir = PluginDir::new();
    let moody = bytes_of("fixture-moody");
    dir.replace_atomically("libmoody.so", &moody);
    let file = dir.path().join("moody.log");
    let mut settings = dir.config();
    plugin_table(&mut settings, "moody", json!({ "file": file }), |p| {
        p.event_timeout = Duration::from_millis(80);
        p.grant = grants(&["events:subscribe"]);
    });
    let host = Arc::new(Host::new(settings).unwrap());
    let events = host.subscribe();
    let _watcher = host.watch(plughost::WatchOptions::default()).unwrap();
    host.load_all().unwrap();
    for _ in 0..5 {
        host.publish(Event::json("mood.slow", &200).unwrap())
            .unwrap();
        std::thread::sleep(Duration::from_millis(350));
    }
    dir.replace_atomically("libmoody.so", &rebuilt(&moody, 1));
    wait_for(&events, WAIT, |e| matches!(e, HostEvent::Reloaded { .. }));
    host.publish(Event::json("mood.ok", &json!({"seq": 1})).unwrap())
        .unwrap();
    let handled = eventually(Duration::from_secs(4), || file_lines(&file) == ["ok 1"]);
    let stats = host.event_stats();
    assert!(
        handled,
        "after five timeouts moody got no more threads; the host says to reload it, but a \
         reload keeps the subscriber (Bus::attach) with its taker stopped, so the new version \
         gets nothing either: {:#?}",
        subscriber(&stats, "moody")
    );
}

#[test]
fn topic_counts_add_up_while_a_handler_never_returns() {
    let dir = PluginDir::new();
    let host = dir.host();
    let (release, stuck) = mpsc::channel::<()>();
    let stuck = Mutex::new(stuck);
    let subscription = host
        .subscribe_events(
            "hangs",
            &["hang.*"],
            SubscribeOptions::default().timeout(Duration::from_millis(100)),
            move |_| {
                let _ = stuck.lock().unwrap().recv_timeout(Duration::from_secs(15));
                Ok(())
            },
        )
        .unwrap();
    host.publish(Event::json("hang.now", &1).unwrap()).unwrap();
    assert!(eventually(Duration::from_secs(3), || {
        subscriber(&host.event_stats(), "hangs").timed_out == 1
    }));
    let stats = host.event_stats();
    let topic = stats.topics.iter().find(|t| t.topic == "hang.now").unwrap();
    let accounted = topic.delivered + topic.dropped + topic.failed;
    let _ = release.send(());
    drop(subscription);
    assert_eq!(
        (topic.published, accounted),
        (1, 1),
        "the subscriber counts the timed-out event as failed, the topic does not (it is only \
         counted when the late thread returns, never if it does not): {topic:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Routing (host/src/bus/mod.rs: route cache).
// ---------------------------------------------------------------------------------------------

#[test]
fn a_subscriber_added_while_a_publisher_streams_receives_the_topic() {
    let dir = PluginDir::new();
    let host = Arc::new(dir.host());
    // Subscribers with many patterns make building a route take a while, which widens the
    // gap between reading the subscriber list and caching the route built from it.
    let patterns: Vec<String> = (0..2000).map(|i| format!("pad.p{i}.x")).collect();
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let _pads: Vec<_> = (0..4)
        .map(|i| {
            host.subscribe_events(
                &format!("pad{i}"),
                &patterns,
                SubscribeOptions::default(),
                |_| Ok(()),
            )
            .unwrap()
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (host, stop) = (host.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = host.publish(Event::new("race.t", "text/plain", Vec::new()));
            }
        })
    };
    let mut missed = None;
    for i in 0..150 {
        let got = Arc::new(AtomicBool::new(false));
        let flag = got.clone();
        let probe = host
            .subscribe_events(
                &format!("probe{i}"),
                &["race.t"],
                SubscribeOptions::default().policy(QueuePolicy::DropOldest),
                move |_| {
                    flag.store(true, Ordering::Relaxed);
                    Ok(())
                },
            )
            .unwrap();
        if !eventually(Duration::from_millis(500), || got.load(Ordering::Relaxed)) {
            missed = Some(i);
            drop(probe);
            break;
        }
        drop(probe);
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    assert_eq!(
        missed, None,
        "a subscriber added while race.t was published continuously never received it: the \
         publisher built race.t's route from the subscriber list before the add, and cached it \
         after the add had cleared the cache, so the stale route stays until the next \
         subscription change"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input.
// ---------------------------------------------------------------------------------------------

#[test]
fn max_event_size_counts_the_content_type() {
    let dir = PluginDir::new();
    let mut settings = dir.config();
    settings.host.max_event_size = plughost::ByteSize(1024);
    let host = Host::new(settings).unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    let _subscription = host
        .subscribe_events("any", &["meta.>"], SubscribeOptions::default(), move |_| {
            count.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    // 4 MiB of attributes in an event "limited" to 1 KiB.
    let event = Event::new("meta.big", "x".repeat(4 << 20), Vec::new());
    let outcome = host.publish(event);
    assert!(
        matches!(outcome, Err(PublishError::TooLarge { .. })),
        "a 4 MiB content type passes max_event_size = 1 KiB (Event::size and publish_for count \
         data, topic, source and extensions, not datacontenttype or a given id): {outcome:?}"
    );
}

#[test]
fn an_extension_cannot_override_the_core_attributes_of_the_cloudevent() {
    let event = Event::json("user.created", &1)
        .unwrap()
        .with_extension("source", "plughost")
        .with_extension("type", "plughost.plugin.loaded");
    let json: serde_json::Value = serde_json::to_value(&event).unwrap();
    assert_eq!(
        (json["source"].as_str(), json["type"].as_str()),
        (Some("app"), Some("user.created")),
        "Event's CloudEvents JSON writes extensions after the core attributes, under any name: \
         an extension named source/type replaces them (a plugin can do it with emit_with)"
    );
}

// ---------------------------------------------------------------------------------------------
// Reloads, disable, and what a subscriber version receives.
// ---------------------------------------------------------------------------------------------

#[cfg(target_os = "linux")]
#[test]
fn a_new_version_only_receives_the_topics_it_subscribes_to() {
    let dir = PluginDir::new();
    let v1 = bytes_of("fixture-adv-pattern-v1");
    let v2 = bytes_of("fixture-adv-pattern-v2");
    dir.replace_atomically("libadvpat.so", &v1);
    let file = dir.path().join("advpat.log");
    let mut settings = dir.config();
    plugin_table(
        &mut settings,
        "advpat",
        json!({ "file": file, "delay_ms": 30 }),
        |p| p.grant = grants(&["events:subscribe"]),
    );
    let host = Arc::new(Host::new(settings).unwrap());
    let events = host.subscribe();
    let _watcher = host.watch(plughost::WatchOptions::default()).unwrap();
    host.load_all().unwrap();
    // v1 takes 30 ms per event: most of these are still queued when v2 comes in.
    for seq in 1..=40 {
        assert_eq!(
            host.publish(Event::json("advpat.a", &json!({ "seq": seq })).unwrap())
                .unwrap(),
            1
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    dir.replace_atomically("libadvpat.so", &v2);
    wait_for(&events, WAIT, |e| matches!(e, HostEvent::Reloaded { .. }));
    eventually(WAIT, || {
        let stats = host.event_stats();
        let s = subscriber(&stats, "advpat");
        s.delivered + s.dropped + s.failed >= 40 && s.queue_depth == 0
    });
    let wrong: Vec<String> = file_lines(&file)
        .into_iter()
        .filter(|l| l.starts_with("2.0.0 advpat.a"))
        .collect();
    assert!(
        wrong.is_empty(),
        "version 2 subscribes to advpat.b only, yet received {} advpat.a events queued for \
         version 1 (the queue outlives versions and is not filtered by the new patterns): \
         {:?}...",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
}

#[test]
fn a_disabled_subscriber_is_no_longer_a_subscriber() {
    let dir = PluginDir::new();
    dir.add("fixture-sink");
    let file = dir.path().join("sink.log");
    let mut settings = dir.config();
    plugin_table(&mut settings, "sink", json!({ "file": file }), |p| {
        p.grant = grants(&["events:subscribe"]);
    });
    let host = Host::new(settings).unwrap();
    host.load_all().unwrap();
    let seq = || Event::json("seq.one", &json!({ "seq": 1 })).unwrap();
    assert_eq!(host.publish(seq()).unwrap(), 1);
    host.disable("sink").unwrap();
    let queued = host.publish(seq()).unwrap();
    let stats = host.event_stats();
    let still = stats.subscribers.iter().any(|s| s.name == "sink");
    assert!(
        queued == 0 && !still,
        "after Host::disable, publish still queues for sink ({queued}) and the statistics \
         still list it ({still}); its events are then dropped as `dropped` (and logged as a \
         full queue): Host::disable empties the slot without Bus::detach, unlike unload and \
         reconfigure: {:#?}",
        stats.subscribers
    );
}

#[test]
fn a_disabled_source_stops_publishing_even_while_its_handler_runs() {
    let dir = PluginDir::new();
    dir.add("fixture-adv-duo");
    let mut settings = dir.config();
    plugin_table(&mut settings, "duo", json!({ "interval_ms": 5 }), |p| {
        p.event_timeout = Duration::from_secs(10);
        p.grant = duo_grants();
    });
    let host = Arc::new(Host::new(settings).unwrap());
    host.load_all().unwrap();
    let (_ticks, ticks) = counting(&host, "ticks", &["adv.tick"]);
    assert!(eventually(WAIT, || ticks.load(Ordering::Relaxed) > 5));
    // duo's handler is busy for 3 s when it is disabled.
    host.publish(Event::json("adv.cmd.sleep", &3000).unwrap())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let disabling = {
        let host = host.clone();
        std::thread::spawn(move || host.disable("duo"))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(host.plugins().iter().all(|p| p.name != "duo"), "disabled");
    let before = ticks.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1000));
    let after = ticks.load(Ordering::Relaxed);
    disabling.join().unwrap().unwrap();
    assert_eq!(
        after - before,
        0,
        "duo was out of service (disabled) for a second, and its event source published {} \
         more ticks: stop_source runs only once in-flight calls are done, so a busy (or hung) \
         handler keeps an out-of-service source publishing",
        after - before
    );
}

// ---------------------------------------------------------------------------------------------
// Isolation: the worker's control channel.
// ---------------------------------------------------------------------------------------------

#[cfg(target_os = "linux")]
#[test]
fn a_slow_block_subscriber_does_not_get_an_isolated_publishers_worker_killed() {
    let dir = PluginDir::new();
    dir.add("fixture-adv-duo");
    // Confined to its grants, the isolated duo writes in a folder of its own.
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("duo.log");
    let mut settings = dir.config();
    settings.host.shutdown_timeout = Duration::from_secs(2);
    plugin_table(
        &mut settings,
        "duo",
        json!({ "file": file, "interval_ms": 1 }),
        |p| {
            p.isolation = Some(plughost::Isolation::Process);
            p.event_timeout = Duration::from_millis(400);
            p.grant = duo_grants();
            p.grant
                .extend(grants(&[&format!("fs:write:{}", out.path().display())]));
        },
    );
    let host = Host::new(settings).unwrap();
    host.load_all().unwrap();
    // Someone else's slow subscriber, under `block`: duo's ticks wait for room.
    let slow = host
        .subscribe_events(
            "slow",
            &["adv.tick"],
            SubscribeOptions::default()
                .capacity(1)
                .policy(QueuePolicy::Block)
                .block(Duration::from_secs(3))
                .timeout(Duration::from_secs(30)),
            |_| {
                std::thread::sleep(Duration::from_millis(1500));
                Ok(())
            },
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for seq in 1..=3 {
        host.publish(Event::json("adv.cmd.ping", &json!({ "seq": seq })).unwrap())
            .unwrap();
    }
    eventually(Duration::from_secs(12), || {
        let stats = host.event_stats();
        let duo = subscriber(&stats, "duo");
        duo.delivered + duo.failed + duo.dropped >= 3
    });
    let stats = host.event_stats();
    drop(slow);
    let duo = subscriber(&stats, "duo").clone();
    assert_eq!(
        (duo.delivered, duo.failed, duo.timed_out),
        (3, 0, 0),
        "duo's handler answers at once, yet its deliveries timed out and its worker was killed: \
         the host thread reading the worker's channel also runs its publishes, and \
         one waiting on another subscriber's full `block` queue holds up the replies to duo's \
         events behind it: {duo:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Shutdown.
// ---------------------------------------------------------------------------------------------

#[test]
fn shutdown_keeps_to_its_timeout_with_a_slow_stop_and_a_slow_shutdown() {
    let dir = PluginDir::new();
    dir.add("fixture-adv-duo");
    let mut settings = dir.config();
    settings.host.shutdown_timeout = Duration::from_secs(1);
    plugin_table(
        &mut settings,
        "duo",
        json!({ "stop_ms": 900, "shutdown_ms": 5000 }),
        |p| p.grant = duo_grants(),
    );
    let host = Host::new(settings).unwrap();
    host.load_all().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    host.shutdown();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "shutdown took {took:?} with shutdown_timeout = 1s: shutdown_instance gives stop_source \
         the whole limit, then Shutdown the whole limit again"
    );
}

#[test]
fn shutdown_keeps_to_its_timeout_with_a_source_that_ignores_stop() {
    let dir = PluginDir::new();
    dir.add("fixture-adv-duo");
    let mut settings = dir.config();
    settings.host.shutdown_timeout = Duration::from_secs(1);
    plugin_table(
        &mut settings,
        "duo",
        json!({ "ignore_stop": true, "interval_ms": 2 }),
        |p| p.grant = duo_grants(),
    );
    let host = Host::new(settings).unwrap();
    host.load_all().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    host.shutdown();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1600), "shutdown took {took:?}");
    assert!(host.publish(Event::json("x.y", &1).unwrap()).is_err());
}

#[test]
fn shutdown_keeps_to_its_timeout_with_stuck_handlers() {
    let dir = PluginDir::new();
    dir.add("fixture-adv-duo");
    let mut settings = dir.config();
    settings.host.shutdown_timeout = Duration::from_secs(1);
    plugin_table(&mut settings, "duo", json!({}), |p| {
        p.event_timeout = Duration::from_secs(60);
        p.grant = duo_grants();
    });
    let host = Host::new(settings).unwrap();
    host.load_all().unwrap();
    let _stuck = host
        .subscribe_events("stuck", &["adv.cmd.*"], SubscribeOptions::default(), |_| {
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        })
        .unwrap();
    host.publish(Event::json("adv.cmd.sleep", &30_000).unwrap())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    host.shutdown();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "shutdown took {took:?}");
}

#[test]
fn publishing_or_subscribing_after_shutdown_is_refused() {
    let dir = PluginDir::new();
    let host = dir.host();
    host.shutdown();
    let published = host.publish(Event::json("x.y", &1).unwrap());
    assert!(
        matches!(published, Err(PublishError::Closed { .. })),
        "{published:?}"
    );
    let subscribed =
        host.subscribe_events("late", &["x.>"], SubscribeOptions::default(), |_| Ok(()));
    assert!(
        subscribed.is_err(),
        "subscribe_events after shutdown succeeds (and starts a taker thread) though nothing \
         can ever be delivered: {subscribed:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Re-entrancy: handlers that call back into the host.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_handler_publishing_into_its_own_full_block_queue_does_not_deadlock() {
    let dir = PluginDir::new();
    let host = Arc::new(dir.host());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let weak = Arc::downgrade(&host);
    let record = seen.clone();
    let _subscription = host
        .subscribe_events(
            "echo",
            &["echo.*"],
            SubscribeOptions::default()
                .capacity(1)
                .block(Duration::from_millis(200)),
            move |event| {
                let n: u64 = event.json_data().map_err(|e| e.to_string())?;
                record.lock().unwrap().push(n);
                if n == 1 {
                    let host = weak.upgrade().ok_or("no host")?;
                    // The first fills the queue, the second waits for room its own thread
                    // would make: it must give up after `block`.
                    let _ = host.publish(Event::json("echo.again", &2).unwrap());
                    let second = host.publish(Event::json("echo.again", &3).unwrap());
                    if second.is_ok() {
                        return Err("the second publish should have been dropped".into());
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    host.publish(Event::json("echo.first", &1).unwrap())
        .unwrap();
    assert!(
        eventually(Duration::from_secs(3), || count_of(&seen) >= 2),
        "{:?}",
        seen.lock().unwrap()
    );
    assert_eq!(*seen.lock().unwrap(), [1, 2]);
}

#[test]
fn a_handler_that_drops_its_own_subscription_does_not_deadlock() {
    let dir = PluginDir::new();
    let host = dir.host();
    let own: Arc<Mutex<Option<plughost::Subscription>>> = Arc::default();
    let inside = own.clone();
    let handled = Arc::new(AtomicU64::new(0));
    let count = handled.clone();
    let subscription = host
        .subscribe_events(
            "quitter",
            &["quit.*"],
            SubscribeOptions::default(),
            move |_| {
                count.fetch_add(1, Ordering::SeqCst);
                drop(inside.lock().unwrap().take());
                Ok(())
            },
        )
        .unwrap();
    *own.lock().unwrap() = Some(subscription);
    host.publish(Event::json("quit.now", &1).unwrap()).unwrap();
    assert!(eventually(Duration::from_secs(3), || own
        .lock()
        .unwrap()
        .is_none()));
    assert_eq!(
        host.publish(Event::json("quit.now", &2).unwrap()).unwrap(),
        0
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    assert!(host.event_stats().subscribers.is_empty());
}

#[test]
fn events_reach_a_subscriber_in_publish_order_per_publisher() {
    let dir = PluginDir::new();
    let host = Arc::new(dir.host());
    let seen: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let record = seen.clone();
    let _subscription = host
        .subscribe_events(
            "order",
            &["order.>"],
            SubscribeOptions::default().capacity(100_000),
            move |event| {
                let v: serde_json::Value = event.json_data().map_err(|e| e.to_string())?;
                record
                    .lock()
                    .unwrap()
                    .push((v["p"].as_u64().unwrap(), v["n"].as_u64().unwrap()));
                Ok(())
            },
        )
        .unwrap();
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let host = host.clone();
            std::thread::spawn(move || {
                for n in 0..2000 {
                    let topic = format!("order.t{}", n % 7);
                    host.publish(Event::json(topic, &json!({ "p": p, "n": n })).unwrap())
                        .unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    assert!(eventually(WAIT, || seen.lock().unwrap().len() == 8000));
    let seen = seen.lock().unwrap();
    for p in 0..4 {
        let ns: Vec<u64> = seen.iter().filter(|(q, _)| *q == p).map(|e| e.1).collect();
        assert_eq!(ns, (0..2000).collect::<Vec<_>>(), "publisher {p}");
    }
}

// ---------------------------------------------------------------------------------------------
// Event sources across a refused re-initialisation.
// ---------------------------------------------------------------------------------------------

fn duo_settings(dir: &PluginDir, config: serde_json::Value, isolated: bool) -> HostConfig {
    let mut settings = dir.config();
    plugin_table(&mut settings, "duo", config, |p| {
        if isolated {
            p.isolation = Some(plughost::Isolation::Process);
        }
        p.grant = duo_grants();
    });
    settings
}

fn refused_reinit_restarts_the_running_source(isolated: bool) {
    let dir = PluginDir::new();
    dir.add("fixture-adv-duo");
    let host = Host::new(duo_settings(&dir, json!({ "interval_ms": 5 }), isolated)).unwrap();
    host.load_all().unwrap();
    let (_ticks, ticks) = counting(&host, "ticks", &["adv.tick"]);
    assert!(eventually(WAIT, || ticks.load(Ordering::Relaxed) > 5));
    let refused = host.reconfigure(duo_settings(
        &dir,
        json!({ "interval_ms": 5, "fail_init": true }),
        isolated,
    ));
    assert!(refused.is_err(), "{refused:?}");
    let before = ticks.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(3), || ticks.load(Ordering::Relaxed)
            > before + 5),
        "the running version's source was not started again after the refused re-init"
    );
}

#[test]
fn a_refused_reinit_starts_the_running_source_again() {
    refused_reinit_restarts_the_running_source(false);
}

#[cfg(target_os = "linux")]
#[test]
fn a_refused_reinit_starts_the_running_isolated_source_again() {
    refused_reinit_restarts_the_running_source(true);
}

#[cfg(target_os = "linux")]
#[test]
fn an_isolated_ticker_goes_on_across_reloads_without_repeating_or_skipping() {
    let dir = PluginDir::new();
    let ticker = bytes_of("ticker");
    dir.replace_atomically("libticker.so", &ticker);
    let mut settings = dir.config();
    plugin_table(
        &mut settings,
        "ticker",
        json!({ "interval": "10ms" }),
        |p| {
            p.isolation = Some(plughost::Isolation::Process);
            p.grant = grants(&["events:emit"]);
        },
    );
    let host = Arc::new(Host::new(settings).unwrap());
    let seqs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let record = seqs.clone();
    let _ticks = host
        .subscribe_events(
            "ticks",
            &["ticker.tick"],
            SubscribeOptions::default(),
            move |event| {
                let data: serde_json::Value = event.json_data().map_err(|e| e.to_string())?;
                record.lock().unwrap().push(data["seq"].as_u64().unwrap());
                Ok(())
            },
        )
        .unwrap();
    let events = host.subscribe();
    let _watcher = host.watch(plughost::WatchOptions::default()).unwrap();
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    for generation in 1..=3 {
        let before = count_of(&seqs);
        assert!(
            eventually(WAIT, || count_of(&seqs) >= before + 5),
            "no ticks before reload {generation}: {:?} {:#?}",
            seqs.lock().unwrap(),
            host.event_stats()
        );
        dir.replace_atomically("libticker.so", &rebuilt(&ticker, generation));
        wait_for(&events, WAIT, |e| matches!(e, HostEvent::Reloaded { .. }));
    }
    let before = count_of(&seqs);
    assert!(eventually(WAIT, || count_of(&seqs) >= before + 5));
    host.unload("ticker").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let seqs = seqs.lock().unwrap().clone();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no tick repeated or skipped over 3 reloads of an isolated source"
    );
}
