//! Hot reload, measured in one run with the default watch settings:
//!
//! - reload latency: from the rename of a new build into the plugins folder to the first call
//!   answered by the new version (p50, p95);
//! - the cost of a call, steady and while reloads happen;
//! - the longest any call took, steady and while reloads happen, and how many took over 100 us.
//!
//! A caller thread calls the plugin without pause the whole time, timing every call.
//!
//! `cargo bench -p plughost-tests --bench reload` (plugins built with the bench's profile).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plughost::{Host, HostEvent, HostOptions, WatchOptions};

const RELOADS: usize = 200;
const FILE: &str = "libversioned.so";

/// Per-phase call statistics, written by the caller thread.
#[derive(Default)]
struct Calls {
    count: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
    over_100us: AtomicU64,
}

impl Calls {
    fn record(&self, ns: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        if ns > 100_000 {
            self.over_100us.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn mean_ns(&self) -> f64 {
        self.total_ns.load(Ordering::Relaxed) as f64 / self.count.load(Ordering::Relaxed) as f64
    }
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: skip the long measurement then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("reload bench: run with `cargo bench -p plughost-tests --bench reload`");
        return;
    }
    let release = !cfg!(debug_assertions);
    let packages = ["fixture-versioned-v1", "fixture-versioned-v2"].map(str::to_owned);
    let built = xtask::build_libraries(&packages, release).expect("build fixtures");
    let builds: Vec<Vec<u8>> = packages
        .iter()
        .map(|p| {
            let lib = built.iter().find(|b| &b.package == p).expect("built");
            std::fs::read(&lib.path).unwrap()
        })
        .collect();
    println!(
        "plugin library size: {:.0} KiB ({} build)",
        builds[0].len() as f64 / 1024.0,
        if release { "release" } else { "debug" }
    );

    let plugins = tempfile::tempdir().unwrap();
    let shadow = tempfile::tempdir().unwrap();
    let install = |bytes: &[u8]| {
        let temp = plugins.path().join(".incoming.tmp");
        std::fs::write(&temp, bytes).unwrap();
        std::fs::rename(&temp, plugins.path().join(FILE)).unwrap();
    };
    install(&builds[0]);
    let host = Arc::new(
        Host::new(HostOptions {
            plugins_dir: plugins.path().to_owned(),
            shadow_dir: shadow.path().to_owned(),
        })
        .unwrap(),
    );
    let events = host.subscribe();
    let _watcher = host.watch(WatchOptions::default()).unwrap();
    host.load_all().unwrap();
    let handle = host.handle("versioned").unwrap();

    let start = Instant::now();
    let steady = Arc::new(Calls::default());
    let reloading = Arc::new(Calls::default());
    let in_reload_phase = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Nanoseconds since `start` at which the caller first saw each answer (index 0: v1, 1: v2),
    // re-armed by the main thread before each reload.
    let first_seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let failures = Arc::new(AtomicUsize::new(0));

    let caller = {
        let (handle, steady, reloading, in_reload_phase, stop, first_seen, failures) = (
            handle.clone(),
            steady.clone(),
            reloading.clone(),
            in_reload_phase.clone(),
            stop.clone(),
            first_seen.clone(),
            failures.clone(),
        );
        std::thread::spawn(move || {
            let mut out = Vec::with_capacity(64);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let ok = handle.call_into(b"x", &mut out).is_ok();
                let t1 = Instant::now();
                let ns = (t1 - t0).as_nanos() as u64;
                if in_reload_phase.load(Ordering::Relaxed) {
                    reloading.record(ns);
                } else {
                    steady.record(ns);
                }
                let which = match &out[..] {
                    b"1.0.0:x" if ok => 0,
                    b"2.0.0:x" if ok => 1,
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                if first_seen[which].load(Ordering::Relaxed) == 0 {
                    first_seen[which].store((t1 - start).as_nanos() as u64, Ordering::Relaxed);
                }
            }
        })
    };

    // Steady state first, then reloads.
    std::thread::sleep(Duration::from_secs(2));
    in_reload_phase.store(true, Ordering::Relaxed);
    let mut latencies = Vec::with_capacity(RELOADS);
    let phase_start = Instant::now();
    for i in 1..=RELOADS {
        let next = i % 2;
        first_seen[next].store(0, Ordering::Relaxed);
        let renamed = (Instant::now() - start).as_nanos() as u64;
        install(&builds[next]);
        loop {
            match events.recv_timeout(Duration::from_secs(10)).expect("reload event") {
                HostEvent::Reloaded { .. } => break,
                HostEvent::Refused { reason, .. } => panic!("refused: {reason}"),
                _ => {}
            }
        }
        let seen = loop {
            let seen = first_seen[next].load(Ordering::Relaxed);
            if seen != 0 {
                break seen;
            }
            std::thread::sleep(Duration::from_micros(50));
        };
        latencies.push(Duration::from_nanos(seen.saturating_sub(renamed)));
    }
    let phase = phase_start.elapsed();
    in_reload_phase.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    caller.join().unwrap();

    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("reloads: {RELOADS} in {:.1} s, failed or unexpected answers: {}", phase.as_secs_f64(), failures.load(Ordering::Relaxed));
    println!(
        "reload latency (rename -> first call answered by the new version): p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        ms(pct(0.50)),
        ms(pct(0.95)),
        ms(*latencies.last().unwrap())
    );
    for (name, calls) in [("steady", &steady), ("during reloads", &reloading)] {
        println!(
            "calls {name:>15}: {:>10} calls, mean {:.1} ns, max {:.1} us, {} over 100 us",
            calls.count.load(Ordering::Relaxed),
            calls.mean_ns(),
            calls.max_ns.load(Ordering::Relaxed) as f64 / 1e3,
            calls.over_100us.load(Ordering::Relaxed),
        );
    }
    println!(
        "call cost during reloads / steady: {:.2}x",
        reloading.mean_ns() / steady.mean_ns()
    );
}
