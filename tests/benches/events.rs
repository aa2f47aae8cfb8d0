//! The event bus next to `tokio::sync::broadcast` and a `crossbeam-channel` fan-out, doing the
//! same work in one run so the ratios are comparable. The message is the same everywhere: a
//! [`plughost::Event`] with about 20 bytes of JSON data (the bus shares it as an `Arc`, the
//! others are sent an `Arc<Event>`).
//!
//! One file of more than 600 lines on purpose: the events table of docs/benchmarks.md comes from this one
//! run, and the three transports' harnesses sit side by side so they stay alike.
//!
//! 1. `publish_4_subscribers` (criterion): the cost on the publisher's thread of one publish to
//!    4 subscribers, each drained by a thread of its own. Events are built beforehand, in
//!    batches of 512, outside the timed part. Two ways each:
//!    - `continuous`: publishing without pause, whatever the consumers manage; what does not fit
//!      is dropped (bus `drop_newest` with a 65,536 queue, broadcast receivers lag, crossbeam
//!      `try_send` fails); the share dropped is printed;
//!    - `drained`: the consumers keep up: after each batch the bench waits, untimed, until they
//!      have taken everything.
//!
//!    `build_event` is what building the event costs the caller, for reference.
//! 2. `publish_guarantees` (criterion, the bus only): what each guarantee costs the publisher:
//!    0 subscribers (unrouted), 1 and 4 under `block` (drained), and 4 whose queues are always
//!    full (handlers sleep 1 ms) under `drop_newest` and `drop_oldest`.
//! 3. `latency`: publish-to-handler latency, p50 and p99, one subscriber, one event every
//!    50 µs and every 10 µs (a thread that sleeps between events pays a wake-up; the bus's
//!    taker yields up to twice the recent gap before sleeping): the bus to an app handler
//!    (stamped by the handler; also the bus's own statistics),
//!    the bus to the `tally` plugin in process (the bus's statistics: publish to handler start),
//!    broadcast and crossbeam (stamped by the receiving thread).
//! 4. `throughput`: N events (1,000,000; `EVENTS_N` to change) published as fast as possible
//!    to one subscriber, timed until it has handled all N: the bus under `block` with a 65,536
//!    queue to the `tally` plugin and to an app handler, the latter also with a queue of N
//!    (never full: what waiting for room costs shows in the difference), broadcast (1024; what
//!    the receiver lost to lagging is reported) and crossbeam (`bounded(1024)`, blocking
//!    `send`). Each row also gives the publisher's own rate and the context switches per 1000
//!    events (`getrusage`, the whole process).
//!
//! Latency and throughput run `EVENTS_REPEATS` times (3), interleaved. A summary table goes to
//! stderr at the end, minimum and median over samples or runs, with the machine's load at the
//! start and the end.
//!
//! `cargo bench -p plughost-tests --bench events`; `EVENTS_PARTS=publish,latency,throughput`
//! (default all) runs only some parts, and criterion's own filter argument selects among the
//! `publish` benches.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hdrhistogram::Histogram;
use plughost::{Event, Host, HostConfig, PluginSettings, ProbeSetting, QueuePolicy};
use plughost::{SubscribeOptions, Subscription};
use tempfile::TempDir;

const JSON: &str = "application/json";
/// The event data of the publish and throughput figures: 20 bytes.
const DATA: &[u8] = br#"{"user":7,"ok":true}"#;
const BATCH: u64 = 512;
const FANOUT: usize = 4;
const LARGE_QUEUE: usize = 1 << 16;
const CHANNEL: usize = 1024;
/// The latency figures' paces: one event every 50 µs (the subscriber's thread goes to sleep
/// between events), and every 10 µs (it stays awake: the bus's taker spins 20 µs).
const PACES: [Duration; 2] = [Duration::from_micros(50), Duration::from_micros(10)];
const WAIT: Duration = Duration::from_secs(60);
const SAMPLES: usize = 30;

type Msg = Arc<Event>;

// ----- results -------------------------------------------------------------------------------

#[derive(Default)]
struct Results {
    /// Criterion benches: ns per publish of every sample, in order.
    samples: Vec<(String, Vec<f64>)>,
    notes: HashMap<String, String>,
    /// (p50 µs, p99 µs) per run.
    latency: Vec<(String, Vec<(f64, f64)>)>,
    throughput: Vec<(String, Vec<Run>)>,
}

fn results() -> std::sync::MutexGuard<'static, Results> {
    static RESULTS: OnceLock<Mutex<Results>> = OnceLock::new();
    RESULTS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn push<T>(rows: &mut Vec<(String, Vec<T>)>, name: &str, value: T) {
    match rows.iter_mut().find(|(n, _)| n == name) {
        Some((_, values)) => values.push(value),
        None => rows.push((name.to_owned(), vec![value])),
    }
}

fn note(name: &str, text: String) {
    results().notes.insert(name.to_owned(), text);
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

// ----- the host and its tally plugin ---------------------------------------------------------

struct Fixture {
    host: Host,
    tally: PathBuf,
    _folders: [TempDir; 2],
}

/// A host with the `tally` fixture (built with the bench's optimisation level) loaded, its
/// queue large and under `block`.
fn fixture() -> Fixture {
    let release = !cfg!(debug_assertions);
    let built =
        xtask::build_libraries(&["fixture-tally".to_owned()], release).expect("build tally");
    let probe =
        xtask::build_binary("plughost-cli", "plughost", release).expect("build the probe program");
    let plugins = tempfile::tempdir().unwrap();
    let shadow = tempfile::tempdir().unwrap();
    let tally = xtask::install(&built[0].path, plugins.path()).unwrap();
    let mut config = HostConfig::with_plugins_dir(plugins.path());
    config.host.shadow_dir = Some(shadow.path().to_owned());
    config.host.probe = ProbeSetting::Program(probe);
    let settings = PluginSettings {
        event_queue: LARGE_QUEUE,
        event_policy: QueuePolicy::Block,
        event_block: WAIT,
        // tally subscribes to `bench.>`.
        grant: plughost_tests::grants(&["events:subscribe"]),
        ..PluginSettings::default()
    };
    config.plugins.insert("tally".to_owned(), settings);
    let host = Host::new(config).unwrap();
    host.load_file(&tally, b"").unwrap();
    Fixture {
        host,
        tally,
        _folders: [plugins, shadow],
    }
}

impl Fixture {
    /// What `tally` has counted.
    fn tally_count(&self) -> u64 {
        let mut out = Vec::new();
        self.host
            .handle("tally")
            .unwrap()
            .call_into(b"", &mut out)
            .unwrap();
        std::str::from_utf8(&out).unwrap().parse().unwrap()
    }

    /// A fresh `tally` subscriber: its statistics start from zero.
    fn reload_tally(&self) {
        self.host.unload("tally").unwrap();
        self.host.load_file(&self.tally, b"").unwrap();
        // Let the old version's retirement finish before anything is measured.
        std::thread::sleep(Duration::from_millis(200));
    }

    fn tally_stats(&self) -> plughost::SubscriberStats {
        let stats = self.host.event_stats();
        stats
            .subscribers
            .into_iter()
            .find(|s| s.name == "tally")
            .expect("tally subscribes")
    }
}

// ----- consumers -----------------------------------------------------------------------------

/// What each consumer has taken (or lost), to wait for them.
#[derive(Clone)]
struct Counts(Vec<Arc<AtomicU64>>);

impl Counts {
    fn new(n: usize) -> Self {
        Counts((0..n).map(|_| Arc::default()).collect())
    }

    /// Waits until every consumer has taken `target`.
    fn wait_all(&self, target: u64) {
        let deadline = Instant::now() + WAIT;
        while self.0.iter().any(|c| c.load(Ordering::Acquire) < target) {
            assert!(Instant::now() < deadline, "consumers stuck below {target}");
            std::thread::yield_now();
        }
    }
}

/// App subscriptions on `app.>`, each counting what it handles; sleeping `delay` per event if
/// set.
fn app_subscribers(
    host: &Host,
    n: usize,
    options: &SubscribeOptions,
    delay: Option<Duration>,
) -> (Vec<Subscription>, Counts) {
    let counts = Counts::new(n);
    let subscriptions = counts
        .0
        .iter()
        .enumerate()
        .map(|(i, count)| {
            let count = count.clone();
            host.subscribe_events(
                &format!("bench-{i}"),
                &["app.>"],
                options.clone(),
                move |_| {
                    if let Some(delay) = delay {
                        std::thread::sleep(delay);
                    }
                    count.fetch_add(1, Ordering::Release);
                    Ok(())
                },
            )
            .unwrap()
        })
        .collect();
    (subscriptions, counts)
}

/// A broadcast channel with `n` receivers, each drained by a thread with `blocking_recv`.
struct Broadcast {
    tx: Option<tokio::sync::broadcast::Sender<Msg>>,
    threads: Vec<JoinHandle<()>>,
    counts: Counts,
    lost: Arc<AtomicU64>,
}

impl Broadcast {
    fn new(n: usize) -> Self {
        let (tx, _) = tokio::sync::broadcast::channel::<Msg>(CHANNEL);
        let counts = Counts::new(n);
        let lost = Arc::new(AtomicU64::new(0));
        let threads = counts
            .0
            .iter()
            .map(|count| {
                let (mut rx, count, lost) = (tx.subscribe(), count.clone(), lost.clone());
                std::thread::spawn(move || {
                    use tokio::sync::broadcast::error::RecvError;
                    loop {
                        match rx.blocking_recv() {
                            Ok(message) => {
                                black_box(&message);
                                count.fetch_add(1, Ordering::Release);
                            }
                            Err(RecvError::Lagged(k)) => {
                                lost.fetch_add(k, Ordering::Relaxed);
                                count.fetch_add(k, Ordering::Release);
                            }
                            Err(RecvError::Closed) => return,
                        }
                    }
                })
            })
            .collect();
        Broadcast {
            tx: Some(tx),
            threads,
            counts,
            lost,
        }
    }

    fn send(&self, event: Event) {
        black_box(self.tx.as_ref().unwrap().send(Arc::new(event)).unwrap());
    }

    /// Closes the channel and joins the threads; returns how many messages they lost.
    fn finish(mut self) -> u64 {
        self.tx.take();
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
        self.lost.load(Ordering::Relaxed)
    }
}

/// `n` `bounded(1024)` crossbeam channels, each drained by a thread.
struct Fanout {
    txs: Vec<crossbeam_channel::Sender<Msg>>,
    threads: Vec<JoinHandle<()>>,
    counts: Counts,
}

impl Fanout {
    fn new(n: usize) -> Self {
        let counts = Counts::new(n);
        let mut txs = Vec::new();
        let threads = counts
            .0
            .iter()
            .map(|count| {
                let (tx, rx) = crossbeam_channel::bounded::<Msg>(CHANNEL);
                txs.push(tx);
                let count = count.clone();
                std::thread::spawn(move || {
                    for message in rx {
                        black_box(&message);
                        count.fetch_add(1, Ordering::Release);
                    }
                })
            })
            .collect();
        Fanout {
            txs,
            threads,
            counts,
        }
    }

    /// Sends to every channel, waiting for room.
    fn send(&self, event: Event) {
        let message = Arc::new(event);
        for tx in &self.txs {
            tx.send(message.clone()).unwrap();
        }
    }

    /// Sends to every channel that has room; returns to how many it did not.
    fn try_send(&self, event: Event) -> u64 {
        let message = Arc::new(event);
        let mut full = 0;
        for tx in &self.txs {
            full += u64::from(tx.try_send(message.clone()).is_err());
        }
        full
    }

    fn finish(self) {
        drop(self.txs);
        for thread in self.threads {
            thread.join().unwrap();
        }
    }
}

// ----- criterion: publish cost ---------------------------------------------------------------

fn app_event() -> Event {
    static TOPIC: OnceLock<Arc<str>> = OnceLock::new();
    let topic = TOPIC.get_or_init(|| Arc::from("app.tick")).clone();
    Event::new(topic, JSON, DATA.to_vec())
}

/// Times `publish` of `iters` events, built beforehand in batches of [`BATCH`] outside the
/// timed part; `between(n)` runs untimed after each batch of `n`.
fn timed_batches(
    name: &str,
    iters: u64,
    make: impl Fn() -> Event,
    mut publish: impl FnMut(Event),
    mut between: impl FnMut(u64),
) -> Duration {
    let mut events = Vec::with_capacity(BATCH as usize);
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = (iters - done).min(BATCH);
        events.extend((0..n).map(|_| make()));
        let start = Instant::now();
        for event in events.drain(..) {
            publish(event);
        }
        total += start.elapsed();
        done += n;
        between(n);
    }
    push(
        &mut results().samples,
        name,
        total.as_nanos() as f64 / iters as f64,
    );
    total
}

fn drop_share(name: &str, dropped: u64, attempted: u64) {
    note(
        name,
        format!(
            "dropped {:.0}% of deliveries",
            100.0 * dropped as f64 / attempted.max(1) as f64
        ),
    );
}

fn publish_4_subscribers(c: &mut Criterion, host: &Host) {
    let mut group = c.benchmark_group("publish_4_subscribers");
    group.bench_function("build_event", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(app_event());
            }
            let took = start.elapsed();
            push(
                &mut results().samples,
                "publish_4_subscribers/build_event",
                took.as_nanos() as f64 / iters as f64,
            );
            took
        })
    });

    let name = "publish_4_subscribers/bus/continuous_drop_newest";
    let options = SubscribeOptions::default()
        .capacity(LARGE_QUEUE)
        .policy(QueuePolicy::DropNewest);
    let (subscriptions, _) = app_subscribers(host, FANOUT, &options, None);
    let (mut queued, mut attempted) = (0, 0);
    group.bench_function("bus/continuous_drop_newest", |b| {
        b.iter_custom(|iters| {
            let publish = |e| {
                queued += host.publish(e).unwrap() as u64;
                attempted += FANOUT as u64;
            };
            timed_batches(name, iters, app_event, publish, |_| {})
        })
    });
    drop(subscriptions);
    drop_share(name, attempted - queued, attempted);

    let name = "publish_4_subscribers/bus/drained_drop_newest";
    let (subscriptions, counts) = app_subscribers(host, FANOUT, &options, None);
    let mut sent = 0;
    group.bench_function("bus/drained_drop_newest", |b| {
        b.iter_custom(|iters| {
            let publish = |e| assert_eq!(host.publish(e).unwrap(), FANOUT);
            timed_batches(name, iters, app_event, publish, |n| {
                sent += n;
                counts.wait_all(sent);
            })
        })
    });
    drop(subscriptions);

    let name = "publish_4_subscribers/broadcast/continuous";
    let broadcast = Broadcast::new(FANOUT);
    let mut attempted = 0;
    group.bench_function("broadcast/continuous", |b| {
        b.iter_custom(|iters| {
            attempted += iters * FANOUT as u64;
            timed_batches(name, iters, app_event, |e| broadcast.send(e), |_| {})
        })
    });
    let lost = broadcast.finish();
    drop_share(name, lost, attempted);

    let name = "publish_4_subscribers/broadcast/drained";
    let broadcast = Broadcast::new(FANOUT);
    let mut sent = 0;
    group.bench_function("broadcast/drained", |b| {
        b.iter_custom(|iters| {
            timed_batches(
                name,
                iters,
                app_event,
                |e| broadcast.send(e),
                |n| {
                    sent += n;
                    broadcast.counts.wait_all(sent);
                },
            )
        })
    });
    assert_eq!(broadcast.finish(), 0, "nothing lags when drained");

    let name = "publish_4_subscribers/crossbeam/continuous_try_send";
    let fanout = Fanout::new(FANOUT);
    let (mut full, mut attempted) = (0, 0);
    group.bench_function("crossbeam/continuous_try_send", |b| {
        b.iter_custom(|iters| {
            attempted += iters * FANOUT as u64;
            timed_batches(
                name,
                iters,
                app_event,
                |e| full += fanout.try_send(e),
                |_| {},
            )
        })
    });
    fanout.finish();
    drop_share(name, full, attempted);

    let name = "publish_4_subscribers/crossbeam/drained";
    let fanout = Fanout::new(FANOUT);
    let mut sent = 0;
    group.bench_function("crossbeam/drained", |b| {
        b.iter_custom(|iters| {
            timed_batches(
                name,
                iters,
                app_event,
                |e| fanout.send(e),
                |n| {
                    sent += n;
                    fanout.counts.wait_all(sent);
                },
            )
        })
    });
    fanout.finish();
    group.finish();
}

fn publish_guarantees(c: &mut Criterion, host: &Host) {
    let mut group = c.benchmark_group("publish_guarantees");

    let name = "publish_guarantees/unrouted_0";
    let nobody: Arc<str> = Arc::from("nobody.tick");
    let make = || Event::new(nobody.clone(), JSON, DATA.to_vec());
    group.bench_function("unrouted_0", |b| {
        b.iter_custom(|iters| {
            let publish = |e| assert_eq!(host.publish(e).unwrap(), 0);
            timed_batches(name, iters, make, publish, |_| {})
        })
    });

    let block = SubscribeOptions::default()
        .capacity(LARGE_QUEUE)
        .policy(QueuePolicy::Block)
        .block(WAIT);
    for n in [1, FANOUT] {
        let id = format!("block_{n}_drained");
        let name = format!("publish_guarantees/{id}");
        let (subscriptions, counts) = app_subscribers(host, n, &block, None);
        let mut sent = 0;
        group.bench_function(id.as_str(), |b| {
            b.iter_custom(|iters| {
                let publish = |e| assert_eq!(host.publish(e).unwrap(), n);
                timed_batches(&name, iters, app_event, publish, |k| {
                    sent += k;
                    counts.wait_all(sent);
                })
            })
        });
        drop(subscriptions);
    }

    // Handlers that take 1 ms: the queues stay full, and every publish meets the policy.
    for (id, policy) in [
        ("drop_newest_4_full", QueuePolicy::DropNewest),
        ("drop_oldest_4_full", QueuePolicy::DropOldest),
    ] {
        let name = format!("publish_guarantees/{id}");
        let options = SubscribeOptions::default().capacity(64).policy(policy);
        let delay = Some(Duration::from_millis(1));
        let (subscriptions, _) = app_subscribers(host, FANOUT, &options, delay);
        for _ in 0..64 {
            host.publish(app_event()).unwrap();
        }
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let publish = |e| {
                    black_box(host.publish(e).unwrap());
                };
                timed_batches(&name, iters, app_event, publish, |_| {})
            })
        });
        drop(subscriptions);
    }
    group.finish();
}

// ----- latency -------------------------------------------------------------------------------

/// When each event was sent and received (ns since [`epoch`]; 0: not yet).
struct Stamps {
    sent: Vec<AtomicU64>,
    got: Vec<AtomicU64>,
    count: AtomicU64,
}

impl Stamps {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Stamps {
            sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
            got: (0..n).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
        })
    }

    fn received(&self, data: &[u8]) {
        let now = now_ns();
        if let Some(got) = self.got.get(seq_of(data)) {
            got.store(now, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Release);
    }

    fn wait(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.count.load(Ordering::Acquire) < n as u64 {
            assert!(Instant::now() < deadline, "events lost in the latency run");
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// p50 and p99 of receive minus send, in µs.
    fn percentiles(&self) -> (f64, f64) {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for (sent, got) in self.sent.iter().zip(&self.got) {
            let (sent, got) = (sent.load(Ordering::Relaxed), got.load(Ordering::Relaxed));
            if got != 0 {
                histogram.saturating_record(got.saturating_sub(sent).max(1));
            }
        }
        (
            histogram.value_at_quantile(0.5) as f64 / 1e3,
            histogram.value_at_quantile(0.99) as f64 / 1e3,
        )
    }
}

/// The event data of the latency figures: `{"k":1,"seq":       7}`, 22 bytes.
fn latency_data(seq: usize) -> Vec<u8> {
    format!("{{\"k\":1,\"seq\":{seq:8}}}").into_bytes()
}

fn seq_of(data: &[u8]) -> usize {
    let from = data.iter().rposition(|b| *b == b':').map_or(0, |i| i + 1);
    data[from..]
        .iter()
        .filter(|b| b.is_ascii_digit())
        .fold(0, |n, b| n * 10 + usize::from(b - b'0'))
}

/// Publishes `n` events on `topic`, one every `pace` (spinning to the time; never catching
/// up in a burst), each stamped just before `publish`.
fn paced(n: usize, pace: Duration, topic: &str, stamps: &Stamps, mut publish: impl FnMut(Event)) {
    let topic: Arc<str> = Arc::from(topic);
    let mut next = Instant::now();
    for seq in 0..n {
        let event = Event::new(topic.clone(), JSON, latency_data(seq));
        next = (next + pace).max(Instant::now());
        while Instant::now() < next {
            std::hint::spin_loop();
        }
        stamps.sent[seq].store(now_ns(), Ordering::Relaxed);
        publish(event);
    }
}

fn latency(fx: &Fixture, n: usize, repeats: usize, pace: Duration) {
    let row = |name: &str| format!("@{:>2} µs  {name}", pace.as_micros());
    let micros = |d: Duration| d.as_nanos() as f64 / 1e3;
    for _ in 0..repeats {
        // The bus to an app handler, stamped by the handler, and as the bus counts it.
        let stamps = Stamps::new(n);
        let record = stamps.clone();
        let subscription = fx
            .host
            .subscribe_events(
                "latency",
                &["lat.>"],
                SubscribeOptions::default(),
                move |e| {
                    record.received(e.data());
                    Ok(())
                },
            )
            .unwrap();
        paced(n, pace, "lat.app", &stamps, |e| {
            fx.host.publish(e).unwrap();
        });
        stamps.wait(n);
        let stats = fx.host.event_stats();
        let bus = stats
            .subscribers
            .iter()
            .find(|s| s.name == "latency")
            .unwrap()
            .latency;
        drop(subscription);
        let mut all = results();
        push(
            &mut all.latency,
            &row("bus -> app handler"),
            stamps.percentiles(),
        );
        push(
            &mut all.latency,
            &row("bus -> app handler (bus stats, to handler start)"),
            (micros(bus.p50), micros(bus.p99)),
        );
        drop(all);

        // The bus to the tally plugin, as the bus counts it.
        fx.reload_tally();
        let stamps = Stamps::new(n);
        let base = fx.tally_count();
        paced(n, pace, "bench.lat", &stamps, |e| {
            fx.host.publish(e).unwrap();
        });
        let deadline = Instant::now() + WAIT;
        while fx.tally_count() < base + n as u64 {
            assert!(Instant::now() < deadline, "tally lost events");
            std::thread::sleep(Duration::from_micros(200));
        }
        let tally = fx.tally_stats().latency;
        push(
            &mut results().latency,
            &row("bus -> tally plugin (bus stats, to handler start)"),
            (micros(tally.p50), micros(tally.p99)),
        );

        // Broadcast, one receiver.
        let stamps = Stamps::new(n);
        let (tx, mut rx) = tokio::sync::broadcast::channel::<Msg>(CHANNEL);
        let record = stamps.clone();
        let receiver = std::thread::spawn(move || {
            while let Ok(message) = rx.blocking_recv() {
                record.received(message.data());
            }
        });
        paced(n, pace, "lat.tokio", &stamps, |e| {
            tx.send(Arc::new(e)).unwrap();
        });
        stamps.wait(n);
        drop(tx);
        receiver.join().unwrap();
        push(
            &mut results().latency,
            &row("tokio broadcast"),
            stamps.percentiles(),
        );

        // Crossbeam, one channel.
        let stamps = Stamps::new(n);
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(CHANNEL);
        let record = stamps.clone();
        let receiver = std::thread::spawn(move || {
            for message in rx {
                record.received(message.data());
            }
        });
        paced(n, pace, "lat.crossbeam", &stamps, |e| {
            tx.send(Arc::new(e)).unwrap();
        });
        stamps.wait(n);
        drop(tx);
        receiver.join().unwrap();
        push(
            &mut results().latency,
            &row("crossbeam channel"),
            stamps.percentiles(),
        );
    }
}

// ----- throughput ----------------------------------------------------------------------------

/// One throughput run.
#[derive(Clone, Copy)]
struct Run {
    /// Events per second, first publish to the last handled.
    rate: f64,
    /// Events per second the publisher got through (until its last publish returned).
    published: f64,
    /// Context switches in this process per 1000 events.
    switches: f64,
    /// Events the subscriber never saw (broadcast lagging; drops).
    lost: u64,
}

/// Context switches of this process so far, voluntary and not.
fn context_switches() -> u64 {
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    (usage.ru_nvcsw + usage.ru_nivcsw) as u64
}

/// Publishes `n` events with `publish` as fast as it takes them, and waits for `done()` to
/// give the moment (ns since [`epoch`]) the subscriber handled the last, polled every 50 µs
/// once publishing is over.
fn sustained(
    n: u64,
    topic: &str,
    mut publish: impl FnMut(Event),
    done: impl Fn() -> Option<u64>,
) -> Run {
    let topic: Arc<str> = Arc::from(topic);
    let switches = context_switches();
    let start = now_ns();
    for _ in 0..n {
        publish(Event::new(topic.clone(), JSON, DATA.to_vec()));
    }
    let published = now_ns();
    let deadline = Instant::now() + WAIT;
    let end = loop {
        if let Some(end) = done() {
            break end;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber did not handle all {n}"
        );
        std::thread::sleep(Duration::from_micros(50));
    };
    let per_second = |until: u64| n as f64 / ((until - start) as f64 / 1e9);
    Run {
        rate: per_second(end),
        published: per_second(published),
        switches: (context_switches() - switches) as f64 * 1000.0 / n as f64,
        lost: 0,
    }
}

/// The bus to an app handler through a queue of `capacity` under `block`.
fn bus_app_throughput(host: &Host, n: u64, capacity: usize) -> Run {
    let count = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let (c, f) = (count.clone(), finished.clone());
    let options = SubscribeOptions::default()
        .capacity(capacity)
        .policy(QueuePolicy::Block)
        .block(WAIT);
    let subscription = host
        .subscribe_events("throughput", &["tp.>"], options, move |_| {
            if c.fetch_add(1, Ordering::Relaxed) + 1 == n {
                f.store(now_ns(), Ordering::Release);
            }
            Ok(())
        })
        .unwrap();
    let mut run = sustained(
        n,
        "tp.app",
        |e| {
            host.publish(e).unwrap();
        },
        || Some(finished.load(Ordering::Acquire)).filter(|t| *t != 0),
    );
    run.lost = host
        .event_stats()
        .subscribers
        .iter()
        .find(|s| s.name == "throughput")
        .map_or(0, |s| s.dropped);
    drop(subscription);
    run
}

fn throughput(fx: &Fixture, n: u64, repeats: usize) {
    let record = |name: &str, run: Run| push(&mut results().throughput, name, run);
    for _ in 0..repeats {
        // The bus to the tally plugin.
        let base = fx.tally_count();
        let run = sustained(
            n,
            "bench.tp",
            |e| {
                fx.host.publish(e).unwrap();
            },
            || (fx.tally_count() >= base + n).then(now_ns),
        );
        record("bus -> tally plugin (queue 65536)", run);

        // The bus to an app handler, which notes when it handled the last; then with a queue
        // the publisher never fills, to tell the cost of waiting for room from the rest.
        record(
            "bus -> app handler (queue 65536)",
            bus_app_throughput(&fx.host, n, LARGE_QUEUE),
        );
        record(
            "bus -> app handler (queue >= N, never full)",
            bus_app_throughput(&fx.host, n, n as usize),
        );

        // Broadcast: what the receiver lost to lagging counts as handled, and is reported.
        let (tx, mut rx) = tokio::sync::broadcast::channel::<Msg>(CHANNEL);
        let finished = Arc::new(AtomicU64::new(0));
        let f = finished.clone();
        let receiver = std::thread::spawn(move || {
            use tokio::sync::broadcast::error::RecvError;
            let (mut seen, mut lost) = (0, 0);
            while seen < n {
                match rx.blocking_recv() {
                    Ok(message) => {
                        black_box(&message);
                        seen += 1;
                    }
                    Err(RecvError::Lagged(k)) => {
                        seen += k;
                        lost += k;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            f.store(now_ns(), Ordering::Release);
            lost
        });
        let mut run = sustained(
            n,
            "tp.tokio",
            |e| {
                tx.send(Arc::new(e)).unwrap();
            },
            || Some(finished.load(Ordering::Acquire)).filter(|t| *t != 0),
        );
        run.lost = receiver.join().unwrap();
        record("tokio broadcast (1024)", run);

        // Crossbeam, blocking send.
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(CHANNEL);
        let finished = Arc::new(AtomicU64::new(0));
        let f = finished.clone();
        let receiver = std::thread::spawn(move || {
            let mut seen = 0;
            for message in rx.iter().take(n as usize) {
                black_box(&message);
                seen += 1;
            }
            f.store(now_ns(), Ordering::Release);
            seen
        });
        let run = sustained(
            n,
            "tp.crossbeam",
            |e| tx.send(Arc::new(e)).unwrap(),
            || Some(finished.load(Ordering::Acquire)).filter(|t| *t != 0),
        );
        assert_eq!(receiver.join().unwrap(), n);
        record("crossbeam bounded (1024)", run);
    }
}

// ----- summary -------------------------------------------------------------------------------

fn min_median(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[0], values[values.len() / 2])
}

fn summary(n: u64, repeats: usize) {
    let results = results();
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(out, "\n== events: summary ==");
    if !results.samples.is_empty() {
        let _ = writeln!(
            out,
            "publish cost on the publisher's thread, ns per publish (criterion samples: min / \
             median); target <= 200 ns with 4 subscribers"
        );
        for (name, samples) in &results.samples {
            // The last SAMPLES are criterion's measurement; those before, its warm-up.
            let mut measured = samples[samples.len().saturating_sub(SAMPLES)..].to_vec();
            let (min, median) = min_median(&mut measured);
            let verdict = if name.contains("/bus/") && median > 200.0 {
                "  MISS"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {name:<52} {min:>8.1} / {median:>8.1}{verdict}  {}",
                results.notes.get(name).map_or("", String::as_str)
            );
        }
    }
    if !results.latency.is_empty() {
        let _ = writeln!(
            out,
            "latency publish -> handler, µs, one event every @ µs (min / median of {repeats} \
             runs); target p50 <= 10 µs"
        );
        for (name, runs) in &results.latency {
            let p50 = min_median(&mut runs.iter().map(|r| r.0).collect::<Vec<_>>());
            let p99 = min_median(&mut runs.iter().map(|r| r.1).collect::<Vec<_>>());
            let verdict = if name.contains("bus ->") && p50.1 > 10.0 {
                "  MISS"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {name:<52} p50 {:>7.2} / {:>7.2}   p99 {:>8.2} / {:>8.2}{verdict}",
                p50.0, p50.1, p99.0, p99.1
            );
        }
    }
    if !results.throughput.is_empty() {
        let _ = writeln!(
            out,
            "throughput to one subscriber, M events/s, N = {n} (best / median of {repeats} \
             runs); target >= 1 M/s. Medians: publisher's own rate, context switches per 1000 \
             events"
        );
        for (name, runs) in &results.throughput {
            let median =
                |f: fn(&Run) -> f64| min_median(&mut runs.iter().map(f).collect::<Vec<_>>()).1;
            let best = runs.iter().map(|r| r.rate).fold(0.0, f64::max) / 1e6;
            let rate = median(|r| r.rate) / 1e6;
            let verdict = if name.starts_with("bus") && rate < 1.0 {
                "  MISS"
            } else {
                "      "
            };
            let lost: u64 = runs.iter().map(|r| r.lost).max().unwrap_or(0);
            let _ = writeln!(
                out,
                "  {name:<52} {best:>6.2} / {rate:>6.2}{verdict}  publisher {:>5.2} M/s  {:>7.1} \
                 cs/1k  lost {lost} (most in a run)",
                median(|r| r.published) / 1e6,
                median(|r| r.switches),
            );
        }
    }
    eprint!("{out}");
}

// ----- main ----------------------------------------------------------------------------------

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    epoch();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Criterion runs each bench once when not given `--bench` (`cargo test --benches`): then
    // the measured parts are kept small too.
    let bench_mode = args.iter().any(|a| a == "--bench");
    let parts =
        std::env::var("EVENTS_PARTS").unwrap_or_else(|_| "publish,latency,throughput".into());
    let wanted = |part: &str| parts.split(',').any(|p| p.trim() == part);
    let n = env_number("EVENTS_N").unwrap_or(if bench_mode { 1_000_000 } else { 1000 });
    let repeats = env_number("EVENTS_REPEATS").unwrap_or(if bench_mode { 3 } else { 1 }) as usize;
    let latency_n = (n as usize).clamp(1, 20_000);

    let start_load = load();
    eprintln!("load at start: {start_load}");
    let fx = fixture();

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(SAMPLES)
        .configure_from_args();
    if wanted("publish") {
        publish_4_subscribers(&mut criterion, &fx.host);
        publish_guarantees(&mut criterion, &fx.host);
        criterion.final_summary();
    }

    if wanted("latency") {
        eprintln!("latency: {latency_n} events each, {repeats} runs");
        for pace in PACES {
            latency(&fx, latency_n, repeats, pace);
        }
    }
    if wanted("throughput") {
        eprintln!("throughput: {n} events each, {repeats} runs");
        throughput(&fx, n, repeats);
    }
    summary(n, repeats);
    eprintln!("load at start: {start_load}\nload at end:   {}", load());
}
