//! The latency of an async call with every layer on (metrics, breaker, deadline, rate and
//! concurrency limits, the call on the pool's threads): a 16-byte echo through an
//! [`AsyncHandle`](plughost::AsyncHandle), one call at a time, each timed on its own. Printed
//! as p50, p90, p99 and max, in one run, on a tokio `multi_thread` runtime with its default
//! workers (the calls made from a spawned task, as a server would) and on a `current_thread`
//! one, in three phases:
//!
//! - `quiet`: nothing else from this bench runs;
//! - `thread`: `nproc - 1` threads of this process spin on arithmetic;
//! - `program`: `nproc - 1` other programs (`yes > /dev/null`, each in a session of its own)
//!   spin. This is the busy machine that hurts: Linux shares CPU time between sessions
//!   (autogroups) before threads, so a busy program takes CPU from the pool's spinning threads
//!   where a busy thread of the same process barely does.
//!
//! Percentiles rather than a mean: the pool trades spinning for latency, and what a busy
//! machine costs shows in the tail.
//!
//! `cargo bench -p plughost-tests --bench dispatch` (`DISPATCH_CALLS=N` to change the 200k
//! calls per row).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plughost::AsyncHandle;

const INPUT: [u8; 16] = *b"0123456789abcdef";

fn main() {
    let calls: usize = std::env::var("DISPATCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);

    let plughost_tests::BenchEcho {
        host,
        folders: _folders,
    } = plughost_tests::bench_echo();

    // Every layer on; the limits are never reached.
    let dispatcher = plughost::Dispatcher::new(
        Arc::new(host),
        plughost::CallPolicy {
            timeout: Duration::from_secs(5),
            max_concurrent: Some(64),
            rate: Some(plughost::Rate {
                calls: u32::MAX,
                per: Duration::from_secs(1),
            }),
            breaker: Some(plughost::Breaker::default()),
            ..plughost::CallPolicy::default()
        },
    );
    let echo = dispatcher.plugin("echo").unwrap();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("async echo16, all layers, {calls} calls per row, {cores} cores");
    println!(
        "{:<8} {:<15} {:>8} {:>8} {:>8} {:>9}",
        "machine", "runtime", "p50", "p90", "p99", "max"
    );
    for phase in ["quiet", "thread", "program"] {
        let load = Load::start(phase, cores.saturating_sub(1));
        for flavour in ["multi_thread", "current_thread"] {
            let runtime = match flavour {
                "multi_thread" => tokio::runtime::Builder::new_multi_thread(),
                _ => tokio::runtime::Builder::new_current_thread(),
            }
            .enable_all()
            .build()
            .unwrap();
            let mut times = measure(&runtime, &echo, calls);
            times.sort_unstable();
            let at = |p: usize| micros(times[(times.len() * p / 100).min(times.len() - 1)]);
            println!(
                "{phase:<8} {flavour:<15} {:>8} {:>8} {:>8} {:>9}",
                at(50),
                at(90),
                at(99),
                micros(*times.last().unwrap()),
            );
        }
        println!("{phase:<8} {}", load_average());
        drop(load);
    }
}

/// Times `calls` calls, one at a time, after a warm-up, from a task on `runtime`.
fn measure(runtime: &tokio::runtime::Runtime, echo: &AsyncHandle, calls: usize) -> Vec<Duration> {
    let echo = echo.clone();
    let task = async move {
        let warm_up = (calls / 10).max(1_000);
        for _ in 0..warm_up {
            black_box(echo.call(INPUT.to_vec()).await.unwrap());
        }
        let mut times = Vec::with_capacity(calls);
        for _ in 0..calls {
            let input = INPUT.to_vec();
            let start = Instant::now();
            let output = echo.call(black_box(input)).await.unwrap();
            times.push(start.elapsed());
            black_box(output);
        }
        times
    };
    // Spawned, as a server's calls are: on a multi-thread runtime, `block_on`'s own future runs
    // on the calling thread, not on a worker.
    runtime.block_on(runtime.spawn(task)).unwrap()
}

fn micros(d: Duration) -> String {
    format!("{:.1}us", d.as_secs_f64() * 1e6)
}

/// The machine's load, as `uptime` gives it.
fn load_average() -> String {
    std::process::Command::new("uptime")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.find("load").map(|i| s[i..].trim().to_owned()))
        .or_else(|| std::fs::read_to_string("/proc/loadavg").ok())
        .unwrap_or_default()
}

/// What keeps the other cores busy during a phase, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    programs: Vec<std::process::Child>,
}

impl Load {
    fn start(phase: &str, count: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Load {
            stop: Arc::clone(&stop),
            threads: Vec::new(),
            programs: Vec::new(),
        };
        for _ in 0..count {
            match phase {
                "thread" => {
                    let stop = Arc::clone(&stop);
                    load.threads.push(std::thread::spawn(move || {
                        let mut x = 1u64;
                        while !stop.load(Ordering::Relaxed) {
                            for _ in 0..1_000 {
                                x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                            }
                        }
                    }))
                }
                "program" => load.programs.push(
                    // `setsid`: a session of its own, as a program started elsewhere has.
                    std::process::Command::new("setsid")
                        .arg("yes")
                        .stdout(std::process::Stdio::null())
                        .spawn()
                        .expect("start `setsid yes`"),
                ),
                _ => {}
            }
        }
        // Let the scheduler settle them on their cores before measuring.
        if count > 0 && phase != "quiet" {
            std::thread::sleep(Duration::from_millis(200));
        }
        load
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        for mut program in self.programs.drain(..) {
            let _ = program.kill();
            let _ = program.wait();
        }
    }
}
