//! The cost of running a plugin in a worker process ("isolation"), in one run:
//!
//! - `isolated_echo`: an echo through [`PluginHandle::call_into`] (a reused host buffer),
//!   in process next to isolated (its worker confined to its grants by Landlock and seccomp,
//!   the default) and isolated unconfined (`confinement = "off"`), with a 16-byte and a 64 KiB
//!   input;
//! - restart: from the error of a call that crashed an isolated plugin (SIGSEGV) to the first
//!   call it answers again, polling every 1 ms (min, median, max of 10 crashes). The host
//!   restarts a crashed worker at once the first time, then after pauses that double from
//!   100 ms until the plugin has served for a minute, so every crash is measured on a freshly
//!   loaded plugin: its first restart, without a pause;
//! - an idle worker: the CPU it uses over 2 s without calls (it should be none) and its
//!   resident memory (`VmRSS`), read from `/proc` (Linux).
//!
//! `cargo bench -p plughost-tests --bench isolation` (plugins and the worker program built
//! with the bench's profile).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use plughost::{CallError, Host, HostConfig, Isolation, PluginHandle, PluginSettings};
use tempfile::TempDir;

/// Crashes measured by the restart measurement.
const CRASHES: usize = 10;

/// A host with one plugin loaded, and the folders it lives in (removed after the host).
struct Loaded {
    host: Host,
    handle: PluginHandle,
    _plugins: TempDir,
    _shadow: TempDir,
}

/// A host of its own for `library`, whose plugin `name` runs in a worker if `isolated`.
fn load(
    library: &Path,
    name: &str,
    isolated: bool,
    probe: &Path,
    tune: impl FnOnce(&mut HostConfig),
) -> Loaded {
    let plugins = tempfile::tempdir().unwrap();
    let shadow = tempfile::tempdir().unwrap();
    let file = xtask::install(library, plugins.path()).unwrap();
    let host = Host::new({
        let mut config = HostConfig::with_plugins_dir(plugins.path());
        config.host.shadow_dir = Some(shadow.path().to_owned());
        // New builds are probed first, and isolated plugins run in workers, by a plughost
        // built with the bench's own profile.
        config.host.probe = plughost::ProbeSetting::Program(probe.to_owned());
        if isolated {
            config.plugins.insert(
                name.to_owned(),
                PluginSettings {
                    isolation: Some(Isolation::Process),
                    ..Default::default()
                },
            );
        }
        tune(&mut config);
        config
    })
    .unwrap();
    let handle = host.load_file(&file, b"").unwrap();
    assert_eq!(
        handle.worker_pid().is_some(),
        isolated,
        "{name} runs where it was asked to"
    );
    Loaded {
        host,
        handle,
        _plugins: plugins,
        _shadow: shadow,
    }
}

fn isolation(c: &mut Criterion) {
    // Build the fixtures and the worker program with the bench's own optimisation level.
    let release = !cfg!(debug_assertions);
    let built = xtask::build_libraries(
        &["fixture-echo".to_owned(), "fixture-crashy".to_owned()],
        release,
    )
    .expect("build the echo and crashy fixtures");
    let library = |package: &str| -> PathBuf {
        built
            .iter()
            .find(|b| b.package == package)
            .unwrap_or_else(|| panic!("{package} was not built"))
            .path
            .clone()
    };
    let (echo, crashy) = (library("fixture-echo"), library("fixture-crashy"));
    let probe = xtask::build_binary("plughost-cli", "plughost", !cfg!(debug_assertions))
        .expect("build the probe and worker program");

    // The same plugin twice: a plugin's name is fixed by its library, and a host loads a
    // name once, so each runs in a host of its own.
    let in_process = load(&echo, "echo", false, &probe, |_| {});
    let isolated = load(&echo, "echo", true, &probe, |_| {});
    let unconfined = load(&echo, "echo", true, &probe, |config| {
        config.host.confinement = plughost::Confinement::Off;
    });
    let worker = isolated.handle.worker_pid().unwrap();
    assert_ne!(worker, std::process::id());

    echo_calls(
        c,
        &[
            ("in_process", &in_process.handle),
            ("isolated", &isolated.handle),
            ("isolated_unconfined", &unconfined.handle),
        ],
    );
    restarts(&crashy, &probe);
    idle_worker(worker);
    drop((in_process, isolated, unconfined));
}

/// The `isolated_echo` group.
fn echo_calls(c: &mut Criterion, places: &[(&str, &PluginHandle)]) {
    let small = *b"0123456789abcdef";
    let large: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::with_capacity(large.len());
    for (_, handle) in places {
        handle.call_into(&small, &mut out).unwrap();
        assert_eq!(out, small);
        handle.call_into(&large, &mut out).unwrap();
        assert_eq!(out, large);
    }

    let mut group = c.benchmark_group("isolated_echo");
    for (size, input) in [("16B", &small[..]), ("64KiB", &large[..])] {
        for (place, handle) in places {
            group.bench_function(format!("{place}_{size}"), |b| {
                b.iter(|| {
                    handle
                        .call_into(black_box(input), black_box(&mut out))
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

/// Crashes an isolated plugin [`CRASHES`] times, each time freshly loaded, and prints how long
/// it took to answer again.
fn restarts(crashy: &Path, probe: &Path) {
    let mut crash_calls = Vec::with_capacity(CRASHES);
    let mut back = Vec::with_capacity(CRASHES);
    let mut polls = 0;
    let mut out = Vec::with_capacity(64);
    for _ in 0..CRASHES {
        // A crash limit never reached: the plugin is always restarted.
        let loaded = load(crashy, "crashy", true, probe, |config| {
            config.host.max_crashes = 1000;
        });
        let crashy = loaded.host.handle("crashy").unwrap();
        crashy.call_into(b"pid", &mut out).unwrap();
        let before = String::from_utf8(out.clone()).unwrap();

        let called = Instant::now();
        let error = crashy.call_into(b"segfault", &mut out).unwrap_err();
        let crashed = Instant::now();
        assert!(matches!(error, CallError::Crashed { .. }), "{error}");
        loop {
            match crashy.call_into(b"pid", &mut out) {
                Ok(()) => break,
                Err(e) => {
                    assert!(
                        crashed.elapsed() < Duration::from_secs(10),
                        "crashy did not answer again within 10 s: {e}"
                    );
                    polls += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let answered = Instant::now();
        assert_ne!(out, before.as_bytes(), "a new worker answers");
        crash_calls.push(crashed - called);
        back.push(answered - crashed);
    }
    println!(
        "crashing call (segfault) to its error: {}",
        spread(&mut crash_calls)
    );
    println!(
        "restart after crash to first answer: {} (a first crash: no pause; {} failed polls, \
         1 ms apart)",
        spread(&mut back),
        polls
    );
}

/// `min X ms, median Y ms, max Z ms (N runs)`.
fn spread(times: &mut [Duration]) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "min {:.2} ms, median {:.2} ms, max {:.2} ms ({} runs)",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        times.len()
    )
}

/// Prints the CPU the worker `pid` uses over 2 s without calls, after 2 s without calls, and
/// its resident memory; the bench process's own CPU over the same 2 s alongside.
fn idle_worker(pid: u32) {
    std::thread::sleep(Duration::from_secs(2));
    let worker = format!("/proc/{pid}");
    let (Some(worker_before), Some(host_before)) = (cpu_ticks(&worker), cpu_ticks("/proc/self"))
    else {
        println!("idle worker: not measured (no /proc/{pid}/stat)");
        return;
    };
    std::thread::sleep(Duration::from_secs(2));
    let worker_used = cpu_ticks(&worker).unwrap() - worker_before;
    let host_used = cpu_ticks("/proc/self").unwrap() - host_before;
    let rss = std::fs::read_to_string(format!("{worker}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .map(|kb| kb.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!(
        "idle worker: cpu {worker_used} ticks over 2 s ({} ticks/s), VmRSS {rss} \
         (bench process meanwhile: {host_used} ticks)",
        ticks_per_second()
    );
}

/// utime + stime (fields 14 and 15 of `stat`) of the process whose `/proc` folder is `proc`,
/// in clock ticks.
fn cpu_ticks(proc: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("{proc}/stat")).ok()?;
    // Field 2, the command in parentheses, may hold spaces; fields from 3 on follow its `)`.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_per_second() -> i64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads a system setting.
        unsafe { libc::sysconf(libc::_SC_CLK_TCK) }
    }
    #[cfg(not(unix))]
    {
        100
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = isolation
}
criterion_main!(benches);
