//! Hot reload, measured in one run with the default watch settings:
//!
//! - reload latency: from the rename of a new build into the plugins folder to the first call
//!   answered by the new version (p50, p95);
//! - the cost of a call, steady and while reloads happen;
//! - the longest any call took, steady and while reloads happen, and how many took over 100 us.
//!
//! A caller thread calls the plugin without pause the whole time, timing every call. On Linux
//! it runs alone on the second CPU and everything else (the host's watcher, init and retire
//! threads, this driver) on the first, so that a call delayed by the reload itself (a lock, a
//! wait) is told apart from the scheduler giving the reload's threads the caller's CPU.
//!
//! `cargo bench -p plughost-tests --bench reload` (plugins built with the bench's profile).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plughost::{Host, HostConfig, HostEvent, WatchOptions};

const RELOADS: usize = 200;
const FILE: &str = "libversioned.so";

/// Call times of one phase: exact to the nanosecond below 4 us, counted above.
struct Calls {
    under_4us: Vec<u64>,
    count: u64,
    total_ns: u64,
    max_ns: u64,
    over_100us: u64,
}

impl Calls {
    fn new() -> Self {
        Calls {
            under_4us: vec![0; 4096],
            count: 0,
            total_ns: 0,
            max_ns: 0,
            over_100us: 0,
        }
    }

    fn record(&mut self, ns: u64) {
        if let Some(bucket) = self.under_4us.get_mut(ns as usize) {
            *bucket += 1;
        }
        self.count += 1;
        self.total_ns += ns;
        self.max_ns = self.max_ns.max(ns);
        self.over_100us += u64::from(ns > 100_000);
    }

    /// The call time below which a fraction `p` of calls fall.
    fn percentile(&self, p: f64) -> String {
        let wanted = (self.count as f64 * p) as u64;
        let mut seen = 0;
        for (ns, n) in self.under_4us.iter().enumerate() {
            seen += n;
            if seen > wanted {
                return format!("{ns} ns");
            }
        }
        ">4 us".into()
    }

    fn mean_ns(&self) -> f64 {
        self.total_ns as f64 / self.count as f64
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
    // Every reload installs content the host has not seen (as every new build is), so each one
    // is probed first; the last round, without probing, shows what the probe adds.
    println!("\n## round 1: threads where the scheduler puts them");
    round(&builds, false, true);
    println!("\n## round 2: as round 1, new files loaded unprobed (probe = \"off\")");
    round(&builds, false, false);
    // The host's threads inherit the CPU of the thread that creates the host.
    if pin_to_cpu(0) {
        println!("\n## round 3: caller thread alone on CPU 1, everything else on CPU 0");
        round(&builds, true, true);
    }
}

/// One host, a steady phase, then the reloads; `probe`: new files are probed first.
fn round(builds: &[Vec<u8>], pinned: bool, probe: bool) {
    let plugins = tempfile::tempdir().unwrap();
    let shadow = tempfile::tempdir().unwrap();
    let install = |bytes: &[u8]| {
        let temp = plugins.path().join(".incoming.tmp");
        std::fs::write(&temp, bytes).unwrap();
        std::fs::rename(&temp, plugins.path().join(FILE)).unwrap();
    };
    install(&builds[0]);
    let host = Arc::new(
        Host::new({
            let mut config = HostConfig::with_plugins_dir(plugins.path());
            config.host.shadow_dir = Some(shadow.path().to_owned());
            // New builds are probed first, by a plughost built with the bench's own profile.
            config.host.probe = if probe {
                let program =
                    xtask::build_binary("plughost-cli", "plughost", !cfg!(debug_assertions))
                        .expect("build the probe program");
                plughost::ProbeSetting::Program(program)
            } else {
                plughost::ProbeSetting::Off
            };
            config
        })
        .unwrap(),
    );
    let events = host.subscribe();
    let _watcher = host.watch(WatchOptions::default()).unwrap();
    host.load_all().unwrap();
    let handle = host.handle("versioned").unwrap();

    let start = Instant::now();
    let in_reload_phase = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Nanoseconds since `start` at which the caller first saw each answer (index 0: v1, 1: v2),
    // re-armed by the main thread before each reload.
    let first_seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let failures = Arc::new(AtomicUsize::new(0));

    let caller = {
        let (handle, in_reload_phase, stop, first_seen, failures) = (
            handle.clone(),
            in_reload_phase.clone(),
            stop.clone(),
            first_seen.clone(),
            failures.clone(),
        );
        std::thread::spawn(move || {
            if pinned {
                pin_to_cpu(1);
            }
            let mut out = Vec::with_capacity(64);
            let (mut steady, mut reloading) = (Calls::new(), Calls::new());
            let mut phase_usage = None;
            let mut steady_usage = thread_usage();
            while !stop.load(Ordering::Relaxed) {
                if phase_usage.is_none() && in_reload_phase.load(Ordering::Relaxed) {
                    let now = thread_usage();
                    println!("caller, steady phase: {}", now.since(&steady_usage));
                    steady_usage = now;
                    phase_usage = Some(());
                }
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
            println!(
                "caller, reload phase: {}",
                thread_usage().since(&steady_usage)
            );
            (steady, reloading)
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
        install(&plughost_tests::rebuilt(&builds[next], i as u32));
        loop {
            match events
                .recv_timeout(Duration::from_secs(10))
                .expect("reload event")
            {
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
    let (steady, reloading) = caller.join().unwrap();

    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "reloads: {RELOADS} in {:.1} s, failed or unexpected answers: {}",
        phase.as_secs_f64(),
        failures.load(Ordering::Relaxed)
    );
    println!(
        "reload latency (rename -> first call answered by the new version): p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        ms(pct(0.50)),
        ms(pct(0.95)),
        ms(*latencies.last().unwrap())
    );
    for (name, calls) in [("steady", &steady), ("during reloads", &reloading)] {
        println!(
            "calls {name:>15}: {:>10} calls, median {}, p99 {}, mean {:.1} ns, max {:.1} us, {} over 100 us",
            calls.count,
            calls.percentile(0.50),
            calls.percentile(0.99),
            calls.mean_ns(),
            calls.max_ns as f64 / 1e3,
            calls.over_100us,
        );
    }
    println!(
        "mean call time during reloads / steady: {:.2}x (includes calls preempted by the kernel)",
        reloading.mean_ns() / steady.mean_ns()
    );
}

/// Binds the calling thread to one CPU; false where that cannot be done.
fn pin_to_cpu(cpu: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            return false;
        }
        // SAFETY: `set` is a plain bit set owned by this frame; 0 means the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        false
    }
}

/// Page faults and context switches of the calling thread so far.
struct Usage {
    minor_faults: i64,
    major_faults: i64,
    voluntary_switches: i64,
    involuntary_switches: i64,
}

impl Usage {
    fn since(&self, earlier: &Usage) -> String {
        format!(
            "{} minor + {} major page faults, {} voluntary + {} involuntary context switches",
            self.minor_faults - earlier.minor_faults,
            self.major_faults - earlier.major_faults,
            self.voluntary_switches - earlier.voluntary_switches,
            self.involuntary_switches - earlier.involuntary_switches,
        )
    }
}

fn thread_usage() -> Usage {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `usage` is a plain struct `getrusage` fills in.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
            usage
        };
        Usage {
            minor_faults: usage.ru_minflt,
            major_faults: usage.ru_majflt,
            voluntary_switches: usage.ru_nvcsw,
            involuntary_switches: usage.ru_nivcsw,
        }
    }
    #[cfg(not(target_os = "linux"))]
    Usage {
        minor_faults: 0,
        major_faults: 0,
        voluntary_switches: 0,
        involuntary_switches: 0,
    }
}
