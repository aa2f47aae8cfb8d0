//! The async call path: deadlines, cancellation, stuck plugins, panics, limits, circuit
//! breaking, metrics and health, against real fixture plugins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use plughost::{
    Breaker, CallError, CallPolicy, CircuitState, Dispatcher, PluginHealth, Rate, WhenLimited,
};
use plughost_tests::PluginDir;

/// A host with `slow` and `transform` loaded, behind a dispatcher with `policy` for `slow`.
fn dispatcher(policy: CallPolicy) -> (PluginDir, Arc<Dispatcher>) {
    let dir = PluginDir::new();
    dir.add("fixture-slow");
    dir.add("transform");
    let host = Arc::new(dir.host());
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let dispatcher = Arc::new(Dispatcher::new(host, CallPolicy::default()));
    dispatcher.set_policy("slow", policy);
    (dir, dispatcher)
}

fn policy(timeout_ms: u64) -> CallPolicy {
    CallPolicy {
        timeout: Duration::from_millis(timeout_ms),
        stuck_after: Duration::from_millis(300),
        breaker: None,
        ..CallPolicy::default()
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_plugin_times_out_at_the_deadline_and_others_keep_serving() {
    let (_dir, dispatcher) = dispatcher(policy(200));
    let started = Instant::now();
    let slow = {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move { dispatcher.execute("slow", b"sleep 1500".to_vec()).await })
    };
    // While it sleeps, another plugin answers at once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let other = dispatcher
        .execute("transform", b"still here".to_vec())
        .await;
    assert_eq!(text(other.unwrap()), "STILL HERE");
    assert!(started.elapsed() < Duration::from_millis(200));

    let error = slow.await.unwrap().unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(error, CallError::Timeout { .. }), "{error:?}");
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_millis(450),
        "the error came at the deadline, not when the plugin returned: {waited:?}"
    );
    assert_eq!(
        error.to_string(),
        "plugin slow did not answer within 200 ms"
    );

    // It ignored the cancellation: past the grace period it is reported stuck...
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(dispatcher.metrics("slow").unwrap().stuck, 1);
    // ...until it finally returns.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let metrics = dispatcher.metrics("slow").unwrap();
    assert_eq!(
        (metrics.stuck, metrics.timeouts, metrics.in_flight),
        (0, 1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_polls_the_cancel_flag_stops_early() {
    let (_dir, dispatcher) = dispatcher(policy(150));
    let error = dispatcher
        .execute("slow", b"poll 5000".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Timeout { .. }));
    // It noticed the flag within a few ms: never reported stuck, and no longer running.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let metrics = dispatcher.metrics("slow").unwrap();
    assert_eq!((metrics.stuck, metrics.in_flight), (0, 0), "{metrics:?}");
    // Given time, the same call completes normally.
    dispatcher.set_policy("slow", policy(2000));
    let answer = dispatcher
        .execute("slow", b"poll 50".to_vec())
        .await
        .unwrap();
    assert_eq!(text(answer), "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_an_error_with_its_message_counted_and_the_next_call_works() {
    let (_dir, dispatcher) = dispatcher(policy(1000));
    let error = dispatcher
        .execute("slow", b"panic".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CallError::Panicked { message, .. } if message.starts_with("panicking as asked")),
        "{error:?}"
    );
    assert_eq!(
        text(dispatcher.execute("slow", b"hi".to_vec()).await.unwrap()),
        "ok"
    );
    let metrics = dispatcher.metrics("slow").unwrap();
    assert_eq!((metrics.calls, metrics.errors, metrics.panics), (2, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_rejects_or_queues_excess_calls() {
    let (_dir, dispatcher) = dispatcher(CallPolicy {
        max_concurrent: Some(2),
        ..policy(3000)
    });
    // Two long calls take both slots...
    let running: Vec<_> = (0..2)
        .map(|_| {
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move { dispatcher.execute("slow", b"sleep 800".to_vec()).await })
        })
        .collect();
    while dispatcher.metrics("slow").map_or(0, |m| m.in_flight) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // In flight counts from the outermost layer; give them the moment to take their slots.
    tokio::time::sleep(Duration::from_millis(150)).await;
    // ...so further calls are refused at once, with a clear error.
    for _ in 0..3 {
        let started = Instant::now();
        let error = dispatcher
            .execute("slow", b"hi".to_vec())
            .await
            .unwrap_err();
        assert!(
            matches!(error, CallError::Busy { limit: 2, .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "plugin slow is busy: 2 calls already in flight"
        );
        assert!(started.elapsed() < Duration::from_millis(100));
    }
    for call in running {
        assert_eq!(text(call.await.unwrap().unwrap()), "slept");
    }
    assert_eq!(dispatcher.metrics("slow").unwrap().rejected, 3);

    // Waiting instead: all five get through, two at a time.
    dispatcher.set_policy(
        "slow",
        CallPolicy {
            max_concurrent: Some(2),
            when_limited: WhenLimited::Wait,
            ..policy(3000)
        },
    );
    let started = Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move { dispatcher.execute("slow", b"sleep 200".to_vec()).await })
        })
        .collect();
    for call in calls {
        assert_eq!(text(call.await.unwrap().unwrap()), "slept");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "three rounds of two"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_lets_through_only_its_allowance() {
    let (_dir, dispatcher) = dispatcher(CallPolicy {
        rate: Some(Rate {
            calls: 5,
            per: Duration::from_secs(10),
        }),
        ..policy(1000)
    });
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        outcomes.push(dispatcher.execute("slow", b"hi".to_vec()).await);
    }
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(ok, 5, "{outcomes:?}");
    let error = outcomes.last().unwrap().as_ref().unwrap_err();
    assert!(
        matches!(error, CallError::RateLimited { calls: 5, .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "plugin slow is rate limited to 5 calls per 10000 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_after_repeated_failures_fails_fast_and_recovers() {
    let (_dir, dispatcher) = dispatcher(CallPolicy {
        breaker: Some(Breaker {
            failures: 3,
            cool_down: Duration::from_millis(300),
        }),
        ..policy(1000)
    });
    for _ in 0..3 {
        let error = dispatcher
            .execute("slow", b"fail".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(error, CallError::Failed { .. }), "{error:?}");
    }
    assert!(matches!(
        dispatcher.circuit("slow"),
        Some(CircuitState::Open { failures: 3, .. })
    ));
    // Open: even a good call fails fast, without reaching the plugin.
    let started = Instant::now();
    let error = dispatcher
        .execute("slow", b"sleep 100".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(error, CallError::CircuitOpen { failures: 3, .. }),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(dispatcher.metrics("slow").unwrap().rejected, 1);

    // After the cool-down a trial call goes through and closes it.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        text(dispatcher.execute("slow", b"hi".to_vec()).await.unwrap()),
        "ok"
    );
    assert_eq!(
        dispatcher.circuit("slow"),
        Some(CircuitState::Closed { failures: 0 })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_calls_made() {
    let (_dir, dispatcher) = dispatcher(policy(1000));
    let slow = dispatcher.plugin("slow").unwrap();
    for _ in 0..20 {
        slow.call(b"hi".to_vec()).await.unwrap();
    }
    for _ in 0..3 {
        slow.call(b"fail".to_vec()).await.unwrap_err();
    }
    slow.call(b"sleep 20".to_vec()).await.unwrap();
    let metrics = dispatcher.metrics("slow").unwrap();
    assert_eq!(metrics.calls, 24);
    assert_eq!(metrics.errors, 3);
    assert_eq!(
        (metrics.timeouts, metrics.panics, metrics.rejected),
        (0, 0, 0)
    );
    assert_eq!(metrics.in_flight, 0);
    assert!(metrics.p50 < Duration::from_millis(20), "{metrics:?}");
    assert!(metrics.p99 >= Duration::from_millis(20), "{metrics:?}");
    assert!(
        dispatcher.metrics("transform").is_none(),
        "not called through the dispatcher"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_checked_on_demand_and_on_an_interval() {
    let (_dir, dispatcher) = dispatcher(policy(1000));
    assert_eq!(
        dispatcher.check_health("transform").await.unwrap(),
        PluginHealth::Healthy
    );
    let poller = dispatcher.poll_health(Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(200)).await;
    poller.abort();
    assert_eq!(dispatcher.last_health("slow"), Some(PluginHealth::Healthy));
    assert!(matches!(
        dispatcher.check_health("nosuch").await,
        Err(CallError::NotFound { .. })
    ));
}

#[test]
fn cli_exec_honours_the_timeout_and_reports_timing() {
    let dir = PluginDir::new();
    dir.add("fixture-slow");
    // Build the binary first: on a fresh clone that takes far longer than the call.
    plughost_tests::plughost();
    let started = Instant::now();
    let out = dir
        .command(&[
            "exec",
            "slow",
            "sleep 10000",
            "--timeout",
            "300",
            "--verbose",
        ])
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not wait for the plugin"
    );
    assert_eq!(out.status.code(), Some(1));
    let err = plughost_tests::stderr(&out);
    assert!(
        err.contains("error: plugin slow did not answer within 300 ms"),
        "{err}"
    );
    let timing = err
        .lines()
        .find(|l| l.starts_with("slow: load "))
        .expect(&err);
    assert!(timing.contains("execute timed out after"), "{timing}");

    let out = dir
        .command(&["exec", "slow", "hi", "--verbose"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = plughost_tests::stderr(&out);
    let timing = err
        .lines()
        .find(|l| l.starts_with("slow: load "))
        .expect(&err);
    for part in ["init", "execute", "shutdown"] {
        assert!(timing.contains(part), "{timing}");
    }
}

#[test]
fn shutdown_does_not_hang_on_a_plugin_stuck_in_a_call() {
    let dir = PluginDir::new();
    dir.add("fixture-slow");
    let host = Arc::new(
        plughost::Host::new({
            let mut config = dir.config();
            config.host.shutdown_timeout = Duration::from_millis(300);
            config
        })
        .unwrap(),
    );
    host.load_all().unwrap();
    let handle = host.handle("slow").unwrap();
    let stuck = std::thread::spawn(move || handle.call_into(b"sleep 2000", &mut Vec::new()));
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    host.shutdown();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "gave up waiting after the shutdown timeout: {:?}",
        started.elapsed()
    );
    assert!(host.plugins().is_empty());
    // The call itself is unharmed: its library was left loaded.
    assert!(stuck.join().unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_leaves_the_slot_taken_until_the_plugin_returns() {
    let (_dir, dispatcher) = dispatcher(CallPolicy {
        max_concurrent: Some(1),
        ..policy(5000)
    });
    // The caller stops waiting (as a select! or a disconnected client would)...
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        dispatcher.execute("slow", b"sleep 600".to_vec()),
    )
    .await;
    assert!(gave_up.is_err());
    // ...but the plugin still runs, so its slot is still taken...
    let error = dispatcher
        .execute("slow", b"hi".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Busy { .. }), "{error:?}");
    // ...until it returns.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        text(dispatcher.execute("slow", b"hi".to_vec()).await.unwrap()),
        "ok"
    );
    assert_eq!(dispatcher.metrics("slow").unwrap().in_flight, 0);
}
