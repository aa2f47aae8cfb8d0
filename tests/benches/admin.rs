//! Whether serving the admin API slows plugin calls: a 16-byte echo through
//! [`PluginHandle::call_into`](plughost::PluginHandle::call_into) and through the guarded async
//! path (`Dispatcher::execute`, every layer on), with the admin API of the same dispatcher
//! serving on `127.0.0.1`, in one run, under eight conditions in turn:
//!
//! - `alone`: the server is up and idle;
//! - `scraper`: a client of this process gets `/metrics` every 10 ms, as a busy Prometheus would;
//! - `wrk`: the scraper, and `wrk -t1 -c32` getting `/plugins` and `/metrics` without pause;
//! - `wrk-healthz`: wrk getting `/healthz` only, no scraper: the same HTTP load on the same
//!   threads, without reading the host's state or call metrics;
//! - `wrk-pinned`: as `wrk`, with wrk and the admin server's threads held on the last core
//!   (`taskset`), so that the calls have the other core to themselves;
//! - `hog`: no requests; instead, busy loops that take as much CPU as wrk and the admin threads
//!   took in `wrk` (a child process for wrk, two threads of this process for the server): what
//!   the same CPU contention costs without the admin API;
//! - `snapshots`: no requests; a thread of this process takes echo's metrics snapshot (as each
//!   `/plugins` and `/metrics` request does) as many times a second as wrk made requests in
//!   `wrk`: what that costs without HTTP;
//! - `alone-again`: as `alone`, to show how far the machine drifted during the run.
//!
//! On a 2-core machine the admin runtime's two threads and wrk compete with the calls for CPU,
//! so some slowdown is contention, whatever the server's design. What tells the two apart: the
//! `wrk-healthz`, `wrk-pinned`, `hog` and `snapshots` rows, and the share of the measured time
//! the calling thread spent runnable but waiting for a CPU (its run-queue delay, from
//! `/proc/thread-self/schedstat`).
//!
//! Printed at the end: per condition and path the minimum and median time per call over
//! criterion's samples and their ratio to `alone`; what the scraper and wrk got (requests/s,
//! latency, failures); the CPU each party used; the load average; and the resident memory the
//! idle server adds. wrk is the Debian package `wrk`; without it the `wrk` conditions are
//! skipped, saying so.
//!
//! Also printed, after each condition: how long taking the echo plugin's metrics snapshot
//! takes. Every `/metrics` and `/plugins` request takes one: a lock-free pass over the latency
//! counters, which calls keep adding to meanwhile.
//!
//! `cargo bench -p plughost-tests --bench admin` (about 1.5 minutes;
//! `ADMIN_BENCH_CONDITIONS=alone,scraper` runs only those).
//!
//! Longer than 600 lines: each condition brings its load generator (scraper, wrk, CPU hog,
//! snapshot thread) and its measurements, and they stay in one bench so that one run compares
//! them all on the same machine state.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::Criterion;
use plughost::{AdminSettings, CallPolicy, Dispatcher, PluginHandle};
use plughost_admin::{Admin, AdminServer, Listener};

const INPUT: [u8; 16] = *b"0123456789abcdef";

/// How often the scraper gets `/metrics` (Prometheus' default is 15 s; this is 1,500 times that).
const SCRAPE_EVERY: Duration = Duration::from_millis(10);

/// Set in the environment of the child process that plays wrk's part in the `hog` condition:
/// the share of one core it takes.
const HOG_ENV: &str = "PLUGHOST_ADMIN_BENCH_HOG";

/// What wrk asks for: the two read endpoints, alternately.
const WRK_READS: &str = r#"
local paths = { "/plugins", "/metrics" }
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[n % 2 + 1])
end
"#;

/// What wrk asks for in `wrk-healthz`: the one endpoint that reads nothing of the host's.
const WRK_HEALTHZ: &str = r#"
request = function()
  return wrk.format("GET", "/healthz")
end
"#;

/// The name tokio gives the admin server's threads (`Admin::serve`).
const ADMIN_THREAD: &str = "plughost-admin";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Condition {
    Alone,
    Scraper,
    Wrk,
    WrkHealthz,
    WrkPinned,
    Hog,
    Snapshots,
    AloneAgain,
}

impl Condition {
    const ALL: [Condition; 8] = [
        Condition::Alone,
        Condition::Scraper,
        Condition::Wrk,
        Condition::WrkHealthz,
        Condition::WrkPinned,
        Condition::Hog,
        Condition::Snapshots,
        Condition::AloneAgain,
    ];

    fn name(self) -> &'static str {
        match self {
            Condition::Alone => "alone",
            Condition::Scraper => "scraper",
            Condition::Wrk => "wrk",
            Condition::WrkHealthz => "wrk-healthz",
            Condition::WrkPinned => "wrk-pinned",
            Condition::Hog => "hog",
            Condition::Snapshots => "snapshots",
            Condition::AloneAgain => "alone-again",
        }
    }
}

fn main() {
    if let Ok(share) = std::env::var(HOG_ENV) {
        duty_cycle(
            share.parse().expect("a share of one core"),
            &AtomicBool::new(false),
        );
        return;
    }

    let fixture = Fixture::start();
    let wrk = tool_exists("wrk");
    let taskset = tool_exists("taskset");
    if !wrk {
        eprintln!(
            "\n*** wrk is not installed (Debian: apt-get install wrk): the three `wrk` \
             conditions are SKIPPED, and the hog and snapshots conditions are sized by guess \
             ***\n"
        );
    }
    if wrk && !taskset {
        eprintln!("\n*** taskset is not installed: the `wrk-pinned` condition is SKIPPED ***\n");
    }

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let results = Mutex::new(Results::default());
    let mut reports = BTreeMap::new();
    let mut sizes = Sizes::default();
    let chosen = std::env::var("ADMIN_BENCH_CONDITIONS").ok();
    for condition in Condition::ALL {
        if chosen
            .as_deref()
            .is_some_and(|chosen| !chosen.split(',').any(|c| c.trim() == condition.name()))
        {
            continue;
        }
        let skip = match condition {
            Condition::Wrk | Condition::WrkHealthz => !wrk,
            Condition::WrkPinned => !wrk || !taskset,
            _ => false,
        };
        if skip {
            continue;
        }
        let load = Load::start(condition, &fixture, &sizes);
        let cpu_before = load.cpu();
        let load_before = load_average();

        let mut group = criterion.benchmark_group(condition.name());
        group.bench_function("call_into", |b| {
            let mut out = Vec::with_capacity(64);
            b.iter_custom(|iters| {
                let caller = Caller::now();
                let start = Instant::now();
                for _ in 0..iters {
                    fixture
                        .handle
                        .call_into(black_box(&INPUT), black_box(&mut out))
                        .unwrap();
                }
                let took = start.elapsed();
                lock(&results).record(condition, "call_into", iters, took, caller);
                took
            })
        });
        group.bench_function("execute", |b| {
            b.to_async(&fixture.runtime).iter_custom(|iters| {
                let dispatcher = &fixture.dispatcher;
                let results = &results;
                async move {
                    let caller = Caller::now();
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(
                            dispatcher
                                .execute("echo", black_box(INPUT.to_vec()))
                                .await
                                .unwrap(),
                        );
                    }
                    let took = start.elapsed();
                    lock(results).record(condition, "execute", iters, took, caller);
                    took
                }
            })
        });
        group.finish();

        let cpu = load.cpu().since(&cpu_before);
        if condition == Condition::Wrk {
            sizes.wrk_share = cpu.wrk;
            sizes.admin_share = cpu.admin;
        }
        let (scrapes, wrk) = load.stop();
        if let Some(rate) = wrk
            .as_ref()
            .filter(|_| condition == Condition::Wrk)
            .and_then(|wrk| wrk.requests_per_second.parse().ok())
        {
            sizes.requests_per_second = rate;
        }
        let snapshot = snapshot_time(&fixture.dispatcher);
        reports.insert(
            condition,
            Report {
                cpu,
                scrapes,
                wrk,
                snapshot,
                load: (load_before, load_average()),
            },
        );
    }
    criterion.final_summary();

    let rss_after = rss_kib();
    print_summary(&fixture, &lock(&results), &reports, rss_after);
    if !wrk {
        println!("\n*** wrk is not installed: the `wrk` conditions were SKIPPED ***");
    }
}

/// The echo plugin, its dispatcher, and the admin API serving them.
struct Fixture {
    handle: PluginHandle,
    dispatcher: Arc<Dispatcher>,
    /// Runs the async calls (criterion's `to_async`); the admin server has its own.
    runtime: tokio::runtime::Runtime,
    url: String,
    /// Resident memory (KiB): before the server started, once it was up, after two requests.
    rss: [u64; 3],
    _server: AdminServer,
    _folders: [tempfile::TempDir; 2],
}

impl Fixture {
    fn start() -> Self {
        let plughost_tests::BenchEcho { host, folders } = plughost_tests::bench_echo();
        let handle = host.handle("echo").unwrap();
        // As in the `call` bench: one worker, with the I/O driver, as servers have.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dispatcher = {
            let _entered = runtime.enter();
            Arc::new(Dispatcher::new(
                Arc::new(host),
                // Every layer on; the limits are never reached.
                CallPolicy {
                    timeout: Duration::from_secs(5),
                    max_concurrent: Some(64),
                    rate: Some(plughost::Rate {
                        calls: u32::MAX,
                        per: Duration::from_secs(1),
                    }),
                    breaker: Some(plughost::Breaker::default()),
                    ..CallPolicy::default()
                },
            ))
        };
        // One call each way first, so that the metrics and the stack exist before the server.
        let mut out = Vec::new();
        handle.call_into(&INPUT, &mut out).unwrap();
        runtime
            .block_on(dispatcher.execute("echo", INPUT.to_vec()))
            .unwrap();

        let rss_before = settled_rss_kib();
        // wrk's 32 connections all come from 127.0.0.1: the per-client rate limit would answer
        // most of them 429, which measures the limiter, not the server.
        let settings = AdminSettings {
            rate_limit: 0,
            ..AdminSettings::default()
        };
        let server = Admin::with_settings(dispatcher.clone(), &settings)
            .serve(vec![Listener::Tcp("127.0.0.1:0".parse().unwrap())])
            .expect("serve the admin API");
        let url = format!("http://{}", server.local_addrs()[0]);
        let rss_up = settled_rss_kib();

        let agent = agent();
        for path in ["/plugins", "/metrics"] {
            let (status, body) =
                get(&agent, &format!("{url}{path}")).unwrap_or_else(|e| panic!("GET {path}: {e}"));
            if status != 200 {
                eprintln!(
                    "\n*** GET {path} answered {status}, not 200: the load below is of that \
                     answer ***\n{}\n",
                    String::from_utf8_lossy(&body)
                );
            } else if path == "/plugins" {
                assert!(
                    String::from_utf8_lossy(&body).contains("echo"),
                    "GET /plugins does not list echo"
                );
            }
        }
        let rss_used = settled_rss_kib();

        Fixture {
            handle,
            dispatcher,
            runtime,
            url,
            rss: [rss_before, rss_up, rss_used],
            _server: server,
            _folders: folders,
        }
    }
}

/// What the `wrk` condition measured, for the conditions that copy a part of it (a guess
/// until then).
struct Sizes {
    /// The shares of one core that wrk and the admin threads took.
    wrk_share: f64,
    admin_share: f64,
    requests_per_second: f64,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            wrk_share: 0.25,
            admin_share: 0.9,
            requests_per_second: 15_000.0,
        }
    }
}

/// What runs beside the calls during one condition; stopped by [`Load::stop`].
struct Load {
    scraper: Option<Scraper>,
    wrk: Option<Wrk>,
    hog_process: Option<Child>,
    hog_threads: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// The admin threads moved to the last core, to give back every core when done.
    pinned: Vec<u32>,
}

impl Load {
    fn start(condition: Condition, fixture: &Fixture, sizes: &Sizes) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Load {
            scraper: None,
            wrk: None,
            hog_process: None,
            hog_threads: Vec::new(),
            stop: stop.clone(),
            pinned: Vec::new(),
        };
        let last_core = cores() - 1;
        match condition {
            Condition::Alone | Condition::AloneAgain => {}
            Condition::Scraper => load.scraper = Some(Scraper::start(&fixture.url)),
            Condition::Wrk => {
                load.scraper = Some(Scraper::start(&fixture.url));
                load.wrk = Some(Wrk::start(&fixture.url, WRK_READS, None));
            }
            Condition::WrkHealthz => {
                load.wrk = Some(Wrk::start(&fixture.url, WRK_HEALTHZ, None));
            }
            Condition::WrkPinned => {
                for tid in own_threads(ADMIN_THREAD) {
                    taskset(&last_core.to_string(), tid);
                    load.pinned.push(tid);
                }
                load.scraper = Some(Scraper::start(&fixture.url));
                load.wrk = Some(Wrk::start(&fixture.url, WRK_READS, Some(last_core)));
            }
            Condition::Hog => {
                load.hog_process = Some(
                    Command::new(std::env::current_exe().unwrap())
                        .env(HOG_ENV, sizes.wrk_share.to_string())
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("start the hog process"),
                );
                // Two threads, as the admin runtime has.
                let share = sizes.admin_share / 2.0;
                for _ in 0..2 {
                    let stop = stop.clone();
                    load.hog_threads.push(
                        std::thread::Builder::new()
                            .name("hog".into())
                            .spawn(move || duty_cycle(share, &stop))
                            .unwrap(),
                    );
                }
            }
            Condition::Snapshots => {
                let stop = stop.clone();
                let dispatcher = fixture.dispatcher.clone();
                let rate = sizes.requests_per_second;
                load.hog_threads.push(
                    std::thread::Builder::new()
                        .name("snapshots".into())
                        .spawn(move || {
                            let start = Instant::now();
                            let mut taken = 0u64;
                            while !stop.load(Ordering::Relaxed) {
                                if (taken as f64) < rate * start.elapsed().as_secs_f64() {
                                    black_box(dispatcher.metrics("echo"));
                                    taken += 1;
                                } else {
                                    std::thread::sleep(Duration::from_micros(100));
                                }
                            }
                        })
                        .unwrap(),
                );
            }
        }
        // Let the load reach its pace before criterion's warm-up starts.
        if condition != Condition::Alone && condition != Condition::AloneAgain {
            std::thread::sleep(Duration::from_millis(300));
        }
        load
    }

    /// The CPU time used so far by each party.
    fn cpu(&self) -> CpuTimes {
        CpuTimes {
            at: Instant::now(),
            admin: own_threads_cpu(ADMIN_THREAD),
            calls: own_threads_cpu("plughost-call"),
            hog_threads: own_threads_cpu("hog").add(own_threads_cpu("snapshots")),
            wrk: self
                .wrk
                .as_ref()
                .map_or(Cpu::default(), |wrk| process_cpu(wrk.child.id())),
            hog_process: self
                .hog_process
                .as_ref()
                .map_or(Cpu::default(), |child| process_cpu(child.id())),
        }
    }

    /// Stops everything; what the scraper and wrk got.
    fn stop(mut self) -> (Option<ScrapeReport>, Option<WrkReport>) {
        let wrk = self.wrk.take().map(Wrk::stop);
        let scrapes = self.scraper.take().map(Scraper::stop);
        (scrapes, wrk)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.hog_threads.drain(..) {
            let _ = thread.join();
        }
        if let Some(mut child) = self.hog_process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let every_core = format!("0-{}", cores() - 1);
        for tid in self.pinned.drain(..) {
            taskset(&every_core, tid);
        }
    }
}

/// A thread of this process that gets `/metrics` every [`SCRAPE_EVERY`], on one kept-alive
/// connection, as Prometheus does.
struct Scraper {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<ScrapeReport>,
}

#[derive(Default)]
struct ScrapeReport {
    latencies: Vec<Duration>,
    failed: usize,
}

impl Scraper {
    fn start(url: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{url}/metrics");
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("scraper".into())
                .spawn(move || {
                    let agent = agent();
                    let mut report = ScrapeReport::default();
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        match get(&agent, &url) {
                            Ok((200, _)) => report.latencies.push(start.elapsed()),
                            _ => report.failed += 1,
                        }
                        // On a fixed schedule, not 10 ms after each answer.
                        next += SCRAPE_EVERY;
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    report
                })
                .unwrap()
        };
        Scraper { stop, thread }
    }

    fn stop(self) -> ScrapeReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// `wrk` getting `/plugins` and `/metrics` alternately until stopped.
struct Wrk {
    child: Child,
    _script: tempfile::NamedTempFile,
}

/// What wrk printed, and the figures read from it.
struct WrkReport {
    requests_per_second: String,
    /// Mean, p50, p99 and max.
    latency: [String; 4],
    /// Responses other than 2xx or 3xx, and socket errors, as wrk words them ("" when none).
    failures: String,
    output: String,
}

impl Wrk {
    /// `script`: wrk's Lua script; `core`: the one core wrk may run on.
    fn start(url: &str, script: &str, core: Option<usize>) -> Self {
        let script = {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            file.write_all(script.as_bytes()).unwrap();
            file
        };
        let mut command = match core {
            Some(core) => {
                let mut command = Command::new("taskset");
                command.args(["-c", &core.to_string(), "wrk"]);
                command
            }
            None => Command::new("wrk"),
        };
        // Long enough for any condition: stopped by SIGINT, on which wrk prints its figures.
        command
            .args(["-t1", "-c32", "-d10m", "--latency", "-s"])
            .arg(script.path())
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command.spawn().expect("start wrk");
        Wrk {
            child,
            _script: script,
        }
    }

    fn stop(self) -> WrkReport {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "could not stop wrk");
        let output = self.child.wait_with_output().expect("wait for wrk");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let field = |label: &str, index: usize| -> String {
            text.lines()
                .find(|line| line.trim_start().starts_with(label))
                .and_then(|line| line.split_whitespace().nth(index))
                .unwrap_or("?")
                .to_owned()
        };
        let failures = text
            .lines()
            .filter(|line| line.contains("Non-2xx") || line.contains("Socket errors"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        WrkReport {
            requests_per_second: field("Requests/sec:", 1),
            latency: [
                field("Latency ", 1),
                field("50%", 1),
                field("99%", 1),
                field("Latency ", 3),
            ],
            failures,
            output: text,
        }
    }
}

/// Keeps the calling thread on a CPU for `share` of the time (all of it from 1 on), in bursts
/// of 100 us, until `stop`: CPU contention without HTTP. Counted in CPU time, not wall time, so
/// that a preempted burst is made up for.
fn duty_cycle(share: f64, stop: &AtomicBool) {
    let own = || Cpu::read(Path::new("/proc/thread-self/schedstat")).unwrap_or_default();
    let start = Instant::now();
    let cpu_at_start = own().run;
    let mut x = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let busy = own().run.saturating_sub(cpu_at_start) as f64;
        if busy < share * start.elapsed().as_nanos() as f64 {
            let burst = Instant::now();
            while burst.elapsed() < Duration::from_micros(100) {
                for _ in 0..100 {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// Time on a CPU and time runnable but waiting for one, in ns (a task's `schedstat`).
#[derive(Default, Clone, Copy)]
struct Cpu {
    run: u64,
    wait: u64,
}

impl Cpu {
    fn read(path: &Path) -> Option<Cpu> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
        Some(Cpu {
            run: fields.next()??,
            wait: fields.next()??,
        })
    }

    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            run: self.run + other.run,
            wait: self.wait + other.wait,
        }
    }
}

/// The CPU time of each party at one moment.
struct CpuTimes {
    at: Instant,
    admin: Cpu,
    calls: Cpu,
    hog_threads: Cpu,
    wrk: Cpu,
    hog_process: Cpu,
}

/// Shares of one core each party used over a condition.
struct CpuShares {
    admin: f64,
    calls: f64,
    wrk: f64,
    hog_threads: f64,
    hog_process: f64,
}

impl CpuTimes {
    fn since(&self, before: &CpuTimes) -> CpuShares {
        let wall = (self.at - before.at).as_nanos() as f64;
        // Threads that ended in between (idle pool threads do) make a sum go back: count 0.
        let share = |now: Cpu, then: Cpu| now.run.saturating_sub(then.run) as f64 / wall;
        CpuShares {
            admin: share(self.admin, before.admin),
            calls: share(self.calls, before.calls),
            wrk: share(self.wrk, before.wrk),
            hog_threads: share(self.hog_threads, before.hog_threads),
            hog_process: share(self.hog_process, before.hog_process),
        }
    }
}

/// The calling thread's CPU time at the start of a sample.
#[derive(Clone, Copy)]
struct Caller {
    at: Instant,
    cpu: Cpu,
}

impl Caller {
    fn now() -> Self {
        Caller {
            at: Instant::now(),
            cpu: Cpu::read(Path::new("/proc/thread-self/schedstat")).unwrap_or_default(),
        }
    }
}

/// Every sample of every condition and path.
#[derive(Default)]
struct Results {
    paths: BTreeMap<(Condition, &'static str), PathResult>,
}

#[derive(Default)]
struct PathResult {
    /// ns per call of each sample long enough to time well.
    per_call: Vec<f64>,
    /// The calling thread's time in the samples: wall, on a CPU, waiting for one (ns).
    wall: f64,
    run: f64,
    wait: f64,
}

impl Results {
    fn record(
        &mut self,
        condition: Condition,
        path: &'static str,
        iters: u64,
        took: Duration,
        caller: Caller,
    ) {
        let end = Caller::now();
        let result = self.paths.entry((condition, path)).or_default();
        // Shorter samples (criterion's first warm-up rounds) are mostly the clock's overhead.
        if took >= Duration::from_micros(100) {
            result.per_call.push(took.as_nanos() as f64 / iters as f64);
        }
        result.wall += (end.at - caller.at).as_nanos() as f64;
        result.run += end.cpu.run.saturating_sub(caller.cpu.run) as f64;
        result.wait += end.cpu.wait.saturating_sub(caller.cpu.wait) as f64;
    }
}

/// What one condition's load got, and the machine's state.
struct Report {
    cpu: CpuShares,
    scrapes: Option<ScrapeReport>,
    wrk: Option<WrkReport>,
    /// What `Dispatcher::metrics` took for echo at the end (median, ns), and the slowest call
    /// recorded by then.
    snapshot: (f64, Duration),
    /// `/proc/loadavg` at the start and the end.
    load: (String, String),
}

fn print_summary(
    fixture: &Fixture,
    results: &Results,
    reports: &BTreeMap<Condition, Report>,
    rss_after: u64,
) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let [before, up, used] = fixture.rss;
    println!();
    println!(
        "== admin bench: echo16, {} cores, admin server {} threads, scraper every {:?}",
        cores(),
        own_threads(ADMIN_THREAD).len(),
        SCRAPE_EVERY
    );
    println!(
        "RSS: {:.1} MiB before the server; +{:.2} MiB idle server; +{:.2} MiB after its first \
         requests; +{:.2} MiB at the end",
        mib(before),
        mib(up.saturating_sub(before)),
        mib(used.saturating_sub(before)),
        mib(rss_after.saturating_sub(before)),
    );
    println!();
    println!(
        "{:<12} {:<10} {:>10} {:>10} {:>16} {:>10} {:>10}",
        "condition", "path", "min", "median", "vs alone min/med", "caller run", "caller wait"
    );
    for ((condition, path), result) in &results.paths {
        let (min, median) = min_median(&result.per_call);
        let (alone_min, alone_median) = results
            .paths
            .get(&(Condition::Alone, *path))
            .map_or((f64::NAN, f64::NAN), |alone| min_median(&alone.per_call));
        println!(
            "{:<12} {:<10} {:>10} {:>10} {:>16} {:>9.1}% {:>9.2}%",
            condition.name(),
            path,
            nanos(min),
            nanos(median),
            format!("{:.2}x / {:.2}x", min / alone_min, median / alone_median),
            100.0 * result.run / result.wall,
            100.0 * result.wait / result.wall,
        );
    }
    println!(
        "(caller run / wait: the share of the timed samples the calling thread spent on a CPU, \
         and runnable but waiting for one; for `execute` the wait includes the caller's polls \
         with yield_now)"
    );
    println!();
    println!(
        "{:<12} {:>8} {:>8} {:>8} {:>10} {:>10}   load average start / end",
        "CPU, cores", "admin", "wrk", "calls", "hog proc", "load thr"
    );
    for (condition, report) in reports {
        let cpu = &report.cpu;
        println!(
            "{:<12} {:>8.2} {:>8.2} {:>8.2} {:>10.2} {:>10.2}   {} / {}",
            condition.name(),
            cpu.admin,
            cpu.wrk,
            cpu.calls,
            cpu.hog_process,
            cpu.hog_threads,
            report.load.0,
            report.load.1,
        );
    }
    println!(
        "(calls: the dispatcher's `plughost-call` pool threads, the calling thread is above; \
         load thr: the hog's or the snapshot taker's threads)"
    );
    println!();
    for (condition, report) in reports {
        let (took, slowest) = report.snapshot;
        println!(
            "{:<12} echo's metrics snapshot afterwards: {} (slowest call recorded: under {:?})",
            condition.name(),
            nanos(took),
            slowest
        );
    }
    println!();
    for (condition, report) in reports {
        if let Some(scrapes) = &report.scrapes {
            let mut latencies = scrapes.latencies.clone();
            latencies.sort_unstable();
            let at = |p: usize| {
                latencies
                    .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
                    .map_or("-".to_owned(), |d| {
                        format!("{:.2} ms", d.as_secs_f64() * 1e3)
                    })
            };
            println!(
                "{:<12} scraper: {} scrapes answered 200, {} failed; latency p50 {}, p99 {}, \
                 max {}",
                condition.name(),
                latencies.len(),
                scrapes.failed,
                at(50),
                at(99),
                at(100),
            );
        }
        if let Some(wrk) = &report.wrk {
            let [mean, p50, p99, max] = &wrk.latency;
            println!(
                "{:<12} wrk: {} requests/s; latency mean {mean}, p50 {p50}, p99 {p99}, max \
                 {max}; {}",
                condition.name(),
                wrk.requests_per_second,
                if wrk.failures.is_empty() {
                    "no failures"
                } else {
                    &wrk.failures
                }
            );
            if wrk.requests_per_second == "?" {
                println!("wrk's output:\n{}", wrk.output);
            }
        }
    }
}

/// The median time `Dispatcher::metrics` takes for the echo plugin (ns), and the slowest
/// call recorded.
fn snapshot_time(dispatcher: &Dispatcher) -> (f64, Duration) {
    let times: Vec<f64> = (0..200)
        .map(|_| {
            let start = Instant::now();
            black_box(dispatcher.metrics("echo"));
            start.elapsed().as_nanos() as f64
        })
        .collect();
    let slowest = dispatcher
        .metrics("echo")
        .and_then(|m| {
            m.latency_buckets
                .iter()
                .find(|(_, below)| *below == m.latency_count)
                .map(|(bound, _)| *bound)
        })
        .unwrap_or_default();
    (min_median(&times).1, slowest)
}

fn min_median(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => (f64::NAN, f64::NAN),
        n => (sorted[0], sorted[n / 2]),
    }
}

fn nanos(ns: f64) -> String {
    if ns >= 1000.0 {
        format!("{:.2} us", ns / 1000.0)
    } else {
        format!("{ns:.1} ns")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, Vec<u8>), ureq::Error> {
    let mut response = agent.get(url).call()?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()?;
    Ok((status, body))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn tool_exists(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Sets the cores thread `tid` may run on (`cores` as `taskset -c` takes them).
fn taskset(cores: &str, tid: u32) {
    let status = Command::new("taskset")
        .args(["-p", "-c", cores, &tid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("run taskset");
    assert!(status.success(), "taskset -p -c {cores} {tid} failed");
}

/// The ids of this process's threads named `name`.
fn own_threads(name: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .collect()
}

fn own_threads_cpu(name: &str) -> Cpu {
    own_threads(name)
        .into_iter()
        .filter_map(|tid| Cpu::read(&Path::new("/proc/self/task").join(format!("{tid}/schedstat"))))
        .fold(Cpu::default(), Cpu::add)
}

/// The CPU time of every thread of process `pid`.
fn process_cpu(pid: u32) -> Cpu {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Cpu::default();
    };
    tasks
        .flatten()
        .filter_map(|task| Cpu::read(&task.path().join("schedstat")))
        .fold(Cpu::default(), Cpu::add)
}

/// Resident memory in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory once threads just started have touched their stacks.
fn settled_rss_kib() -> u64 {
    std::thread::sleep(Duration::from_millis(200));
    rss_kib()
}

/// The machine's load, as `/proc/loadavg` gives it (1, 5 and 15 minutes).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
