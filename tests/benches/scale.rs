//! Scale and steady cost (issue 13), measured in one run on the bench (release) profile:
//!
//! 1. cold start: `Host::load_all` of N distinct plugins (N = 10, 100, 1000), each N in a fresh
//!    plugins folder and shadow folder, `max_plugins` raised to fit: wall time, CPU time of
//!    this process (`getrusage(RUSAGE_SELF)`) and of the probe processes it waited for
//!    (`RUSAGE_CHILDREN`), ms per plugin. Three rows per N: probing as a user gets it by
//!    default, first run (every content new: one probe process each); the same again with
//!    a new host on the same shadow folder (verdicts cached by content hash: no probe runs);
//!    and `probe = "off"` on a fresh shadow folder;
//! 2. shutdown: `drop(host)` after each of those cold starts;
//! 3. `plughost list` on a folder of the largest N files, as a subprocess (first run, then
//!    cached verdicts): wall time and the user and system time of the child and its probes
//!    (`wait4`);
//! 4. the default `max_plugins` (256) with the largest N files: `load_all` wall time (the
//!    files over the limit are refused);
//! 5. disk written by each cold start: `write_bytes` and `wchar` from `/proc/self/io`, and the
//!    bytes in the shadow folder at its peak (right after `load_all`);
//! 6. memory: RSS (and VmSize) after the first load of one plugin, after 10 and after 1000
//!    reloads on alternating contents of its file (each reload a content change), driven once
//!    through `Host::load_file` and once through `Host::sync_file` (what the watcher calls),
//!    each in a fresh process (this program again, run first).
//!
//! The N distinct plugins come from one template fixture (`tests/fixtures/template`, plugin
//! name `tmpl_000000`), built once; copy i has every occurrence of the placeholder replaced by
//! `tmpl_{i:06}` (same length) and is named `libtmpl_{i:06}.so`. The bench asserts that the
//! host reports N distinct names loaded, and calls the last one.
//!
//! Run: `cargo bench -p plughost-tests --bench scale`. Shorter: `SCALE_N=10,100` (the list
//! and `max_plugins` figures use the largest N), `SCALE_RELOADS=200`, and
//! `SCALE_PARTS=memory,cold,list,limit` (figures 6, 1+2+5, 3, 4; default all). Linux only (it reads
//! `/proc`); the load average of the machine is printed at the start and at the end.
//!
//! Longer than the project's 500 lines on purpose: one program, so that every figure of the
//! docs/benchmarks.md's scale table comes from the same template, folders and run, and reads in one place.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plughost::{Host, HostConfig, HostEvent, ProbeSetting};
use tempfile::TempDir;

const PLACEHOLDER: &[u8] = b"tmpl_000000";

/// One line of the result table.
struct Row {
    figure: String,
    n: usize,
    value: String,
}

/// CPU time used so far, user + system, in ms: `who` is `RUSAGE_SELF` or `RUSAGE_CHILDREN`.
fn cpu_ms(who: libc::c_int) -> (f64, f64) {
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage`.
    let rc = unsafe { libc::getrusage(who, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    (ms(usage.ru_utime), ms(usage.ru_stime))
}

/// `write_bytes` and `wchar` of this process from `/proc/self/io`, if readable.
fn io_written() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((field("write_bytes:")?, field("wchar:")?))
}

/// Resident set size and virtual size of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: Vec<u64> = statm
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    // SAFETY: `sysconf` has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    (pages[1] * page / 1024, pages[0] * page / 1024)
}

/// Bytes in regular files under `dir`, at any depth.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => bytes_under(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The machine's load average, as `uptime` says it.
fn uptime() -> String {
    Command::new("uptime")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/loadavg").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// `template` with every occurrence of the placeholder replaced by `tmpl_{i:06}`.
fn variant(template: &[u8], at: &[usize], i: usize) -> Vec<u8> {
    let name = format!("tmpl_{i:06}");
    assert_eq!(name.len(), PLACEHOLDER.len(), "index {i} too large");
    let mut bytes = template.to_vec();
    for &offset in at {
        bytes[offset..offset + PLACEHOLDER.len()].copy_from_slice(name.as_bytes());
    }
    bytes
}

/// A fresh folder of `n` distinct plugins made from the template.
fn plugins_folder(template: &[u8], at: &[usize], n: usize) -> TempDir {
    let dir = tempfile::tempdir().expect("temp plugins folder");
    for i in 0..n {
        let path = dir.path().join(format!("libtmpl_{i:06}.so"));
        std::fs::write(path, variant(template, at, i)).expect("write plugin copy");
    }
    // Written back now, not while the next measurement runs.
    // SAFETY: `sync` has no preconditions.
    unsafe { libc::sync() };
    dir
}

fn config(plugins: &Path, shadow: &Path, probe: &ProbeSetting, max_plugins: usize) -> HostConfig {
    let mut config = HostConfig::with_plugins_dir(plugins);
    config.host.shadow_dir = Some(shadow.to_owned());
    config.host.probe = probe.clone();
    config.host.max_plugins = max_plugins;
    config
}

/// What one measured `load_all` cost.
struct Cost {
    wall: Duration,
    cpu_self_ms: f64,
    cpu_children_ms: f64,
    write_bytes: Option<u64>,
    wchar: Option<u64>,
}

impl Cost {
    fn measure<T>(run: impl FnOnce() -> T) -> (T, Cost) {
        let io = io_written();
        let (su, ss) = cpu_ms(libc::RUSAGE_SELF);
        let (cu, cs) = cpu_ms(libc::RUSAGE_CHILDREN);
        let start = Instant::now();
        let out = run();
        let wall = start.elapsed();
        let (su2, ss2) = cpu_ms(libc::RUSAGE_SELF);
        let (cu2, cs2) = cpu_ms(libc::RUSAGE_CHILDREN);
        let io2 = io_written();
        let (write_bytes, wchar) = match (io, io2) {
            (Some((w, c)), Some((w2, c2))) => (Some(w2 - w), Some(c2 - c)),
            _ => (None, None),
        };
        let cost = Cost {
            wall,
            cpu_self_ms: (su2 - su) + (ss2 - ss),
            cpu_children_ms: (cu2 - cu) + (cs2 - cs),
            write_bytes,
            wchar,
        };
        (out, cost)
    }
}

fn mb(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".into(), |b| format!("{:.1} MB", b as f64 / 1e6))
}

/// One cold start of the `n` plugins in `plugins` with `shadow`, checked, then its shutdown.
fn cold_start(
    rows: &mut Vec<Row>,
    label: &str,
    plugins: &Path,
    shadow: &Path,
    probe: &ProbeSetting,
    n: usize,
) {
    let host = Host::new(config(plugins, shadow, probe, n.max(256))).expect("create host");
    let (report, cost) = Cost::measure(|| host.load_all().expect("load_all"));
    let shadow_peak = bytes_under(shadow);
    assert!(report.refused.is_empty(), "refused: {}", report.refused[0]);
    let names: HashSet<String> = host.plugins().into_iter().map(|p| p.name).collect();
    assert_eq!(names.len(), n, "{n} distinct plugins loaded");
    let last = format!("tmpl_{:06}", n - 1);
    assert!(names.contains(&last));
    let mut out = Vec::with_capacity(64);
    host.handle(&last)
        .expect("handle")
        .call_into(b"x", &mut out)
        .expect("call");
    assert_eq!(out, format!("{last}:x").as_bytes());

    let ms = cost.wall.as_secs_f64() * 1e3;
    rows.push(Row {
        figure: format!("load_all, {label}"),
        n,
        value: format!(
            "{ms:.0} ms wall, {:.3} ms/plugin; CPU {:.0} ms self + {:.0} ms probes",
            ms / n as f64,
            cost.cpu_self_ms,
            cost.cpu_children_ms
        ),
    });
    rows.push(Row {
        figure: format!("disk, {label}"),
        n,
        value: format!(
            "write_bytes {}, wchar {}, shadow folder at peak {}",
            mb(cost.write_bytes),
            mb(cost.wchar),
            mb(Some(shadow_peak))
        ),
    });
    let start = Instant::now();
    drop(host);
    let shutdown = start.elapsed();
    rows.push(Row {
        figure: format!("drop(host), after {label}"),
        n,
        value: format!("{:.0} ms wall", shutdown.as_secs_f64() * 1e3),
    });
}

/// `plughost list` on `plugins` with `shadow`, its rows checked: wall time, and the child's
/// user and system time from `wait4` (which include the probes it waited for).
fn list(
    rows: &mut Vec<Row>,
    label: &str,
    plughost: &Path,
    plugins: &Path,
    shadow: &Path,
    n: usize,
) {
    let cwd = tempfile::tempdir().unwrap();
    let stdout = tempfile::tempfile().unwrap();
    let start = Instant::now();
    let child = Command::new(plughost)
        .current_dir(cwd.path())
        .arg("list")
        .arg("--plugins-dir")
        .arg(plugins)
        .arg("--shadow-dir")
        .arg(shadow)
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().unwrap())
        .spawn()
        .expect("run plughost list");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for (`child` is never waited on through std);
    // `status` and `usage` are valid and writable.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(waited, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "plughost list failed: status {status}"
    );
    drop(child);
    let text = {
        use std::io::{Read, Seek};
        let mut stdout = stdout;
        stdout.rewind().unwrap();
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    };
    let ok = text
        .lines()
        .filter(|l| l.trim_end().ends_with(" ok"))
        .count();
    assert_eq!(ok, n, "plughost list: {n} rows ok");
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    rows.push(Row {
        figure: format!("plughost list, {label}"),
        n,
        value: format!(
            "{:.0} ms wall; child (with its probes) {:.0} ms user + {:.0} ms system",
            wall.as_secs_f64() * 1e3,
            ms(usage.ru_utime),
            ms(usage.ru_stime)
        ),
    });
}

/// `load_all` of `n` files with the default `max_plugins`.
fn over_the_limit(
    rows: &mut Vec<Row>,
    label: &str,
    plugins: &Path,
    shadow: &Path,
    probe: &ProbeSetting,
    n: usize,
) {
    let limit = HostConfig::default().host.max_plugins;
    let host = Host::new(config(plugins, shadow, probe, limit)).expect("create host");
    let (report, cost) = Cost::measure(|| host.load_all().expect("load_all"));
    assert_eq!(report.loaded.len(), n.min(limit));
    assert_eq!(report.refused.len(), n.saturating_sub(limit));
    rows.push(Row {
        figure: format!("load_all, max_plugins {limit}, {label}"),
        n,
        value: format!(
            "{:.0} ms wall ({} loaded, {} refused); CPU {:.0} ms self + {:.0} ms probes",
            cost.wall.as_secs_f64() * 1e3,
            report.loaded.len(),
            report.refused.len(),
            cost.cpu_self_ms,
            cost.cpu_children_ms
        ),
    });
    let start = Instant::now();
    drop(host);
    rows.push(Row {
        figure: format!("drop(host), max_plugins {limit}, {label}"),
        n,
        value: format!("{:.0} ms wall", start.elapsed().as_secs_f64() * 1e3),
    });
}

/// How a reload is driven in [`memory`].
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// `Host::load_file(path, b"")` on the changed file.
    LoadFile,
    /// `Host::sync_file(path)`, what the watcher calls when the file in the folder changes.
    SyncFile,
}

/// RSS (and virtual size) over `reloads` reloads of one plugin, alternating two contents of
/// its file (each reload a content change).
fn memory(
    rows: &mut Vec<Row>,
    template: &[u8],
    at: &[usize],
    probe: &ProbeSetting,
    reloads: usize,
    via: Via,
) {
    let label = match via {
        Via::LoadFile => "load_file",
        Via::SyncFile => "sync_file",
    };
    let folder = tempfile::tempdir().unwrap();
    let shadow = tempfile::tempdir().unwrap();
    let contents = [variant(template, at, 0), {
        // The same plugin, another build: bytes after the end of the ELF file.
        let mut bytes = variant(template, at, 0);
        bytes.extend_from_slice(b"rebuild 1");
        bytes
    }];
    let host = Host::new(config(folder.path(), shadow.path(), probe, 256)).expect("create host");
    let events = host.subscribe();
    let path = folder.path().join("libtmpl_000000.so");
    let temp = folder.path().join(".incoming.tmp");
    let install = |bytes: &[u8]| {
        std::fs::write(&temp, bytes).unwrap();
        std::fs::rename(&temp, &path).unwrap();
    };
    let mut reloaded = 0;
    let mut reload = || {
        match via {
            Via::LoadFile => drop(host.load_file(&path, b"").expect("load_file")),
            Via::SyncFile => host.sync_file(&path),
        }
        reloaded += events
            .try_iter()
            .filter(|e| matches!(e, HostEvent::Reloaded { .. }))
            .count();
    };
    // Background retirements of the old versions settle before each sample.
    let settle = || std::thread::sleep(Duration::from_millis(300));
    install(&contents[0]);
    reload();
    let handle = host.handle("tmpl_000000").expect("first load");
    settle();
    let first = memory_kib();
    let mut after_10 = first;
    let start = Instant::now();
    for i in 1..=reloads {
        install(&contents[i % 2]);
        reload();
        if i == 10 {
            settle();
            after_10 = memory_kib();
        }
    }
    let took = start.elapsed();
    settle();
    let last = memory_kib();
    // The last one is announced once its old version is retired, in the background.
    reloaded += events
        .try_iter()
        .filter(|e| matches!(e, HostEvent::Reloaded { .. }))
        .count();
    assert_eq!(reloaded, reloads, "every change reloaded ({label})");
    let mut out = Vec::with_capacity(64);
    handle
        .call_into(b"x", &mut out)
        .expect("call after reloads");
    assert_eq!(out, b"tmpl_000000:x");
    // Whether old versions left: files of the shadow folder still mapped (the one serving
    // counts), and the closed versions the host knows to be still mapped.
    let mapped = plughost_tests::mapped_under(shadow.path());
    let still_mapped = host.still_mapped();
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count);
    let growth = |a: (u64, u64), b: (u64, u64)| (b.0 as i64 - a.0 as i64, b.1 as i64 - a.1 as i64);
    let (rss_10, vm_10) = growth(first, after_10);
    let (rss_rest, vm_rest) = growth(after_10, last);
    let (rss_all, vm_all) = growth(first, last);
    rows.push(Row {
        figure: format!("RSS after first load ({label})"),
        n: 1,
        value: format!("{} KiB (VmSize {} KiB)", first.0, first.1),
    });
    rows.push(Row {
        figure: format!("RSS growth, first 10 reloads ({label})"),
        n: 10,
        value: format!("{rss_10:+} KiB (VmSize {vm_10:+} KiB)"),
    });
    rows.push(Row {
        figure: format!("RSS growth, reloads 10..{reloads} ({label})"),
        n: reloads,
        value: format!(
            "{rss_rest:+} KiB ({:+.2} KiB/reload; VmSize {vm_rest:+} KiB); total {rss_all:+} KiB \
             (VmSize {vm_all:+} KiB); {:.2} ms/reload; {mapped} shadow file(s) mapped, \
             still_mapped() {still_mapped}, {threads} threads",
            rss_rest as f64 / (reloads - 10) as f64,
            took.as_secs_f64() * 1e3 / reloads as f64
        ),
    });
}

/// Set in the environment of a child that only measures memory, reloading this way.
const MEMORY_CHILD: &str = "SCALE_MEMORY_CHILD";

/// Runs [`memory`] in a child process (this bench again) and returns its rows.
fn memory_in_child(via: &str) -> Vec<Row> {
    let output = Command::new(std::env::current_exe().expect("this program"))
        .arg("--bench")
        .env(MEMORY_CHILD, via)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("start the memory child");
    assert!(output.status.success(), "memory child ({via}) failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.strip_prefix("ROW\t")?.splitn(3, '\t');
            Some(Row {
                figure: fields.next()?.to_owned(),
                n: fields.next()?.parse().ok()?,
                value: fields.next()?.to_owned(),
            })
        })
        .collect()
}

/// The memory child: builds nothing (the parent did), measures, prints its rows.
fn memory_child(via: &str) {
    let via = match via {
        "load_file" => Via::LoadFile,
        "sync_file" => Via::SyncFile,
        other => panic!("{MEMORY_CHILD}={other:?}"),
    };
    let reloads = env_list("SCALE_RELOADS", &[1000])[0].max(11);
    let template = std::fs::read(std::env::var("SCALE_TEMPLATE").unwrap()).unwrap();
    let probe = ProbeSetting::Program(std::env::var("SCALE_PROBE").unwrap().into());
    let at = placeholders(&template);
    let mut rows = Vec::new();
    memory(&mut rows, &template, &at, &probe, reloads, via);
    for row in rows {
        println!("ROW\t{}\t{}\t{}", row.figure, row.n, row.value);
    }
}

/// Where the placeholder occurs in the template.
fn placeholders(template: &[u8]) -> Vec<usize> {
    let at: Vec<usize> = template
        .windows(PLACEHOLDER.len())
        .enumerate()
        .filter(|(_, w)| *w == PLACEHOLDER)
        .map(|(i, _)| i)
        .collect();
    assert!(!at.is_empty(), "placeholder not found in the template");
    at
}

fn print(rows: &[Row]) {
    let w = rows
        .iter()
        .map(|r| r.figure.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!("{:<w$} | {:>5} | value", "figure", "N");
    println!("{:-<w$}-|-------|------", "");
    for row in rows {
        println!("{:<w$} | {:>5} | {}", row.figure, row.n, row.value);
    }
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .split(',')
            .map(|s| s.trim().parse().unwrap_or_else(|_| panic!("{name}: {s:?}")))
            .collect(),
        _ => default.to_vec(),
    }
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: skip the long measurement then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale bench: run with `cargo bench -p plughost-tests --bench scale`");
        return;
    }
    if let Ok(via) = std::env::var(MEMORY_CHILD) {
        memory_child(&via);
        return;
    }
    let sizes = env_list("SCALE_N", &[10, 100, 1000]);
    let largest = *sizes.iter().max().expect("SCALE_N names at least one N");
    println!("load at start: {}", uptime());

    let release = !cfg!(debug_assertions);
    let built = xtask::build_libraries(&["fixture-template".into()], release)
        .expect("build the template fixture");
    let template = std::fs::read(&built[0].path).expect("read the template");
    let at = placeholders(&template);
    let plughost = xtask::build_binary("plughost-cli", "plughost", release)
        .expect("build the plughost executable");
    println!(
        "template: {:.0} KiB, placeholder at {} places; {} build; probe program {}",
        template.len() as f64 / 1024.0,
        at.len(),
        if release { "release" } else { "debug" },
        plughost.display()
    );
    let probe = ProbeSetting::Program(plughost.clone());
    // For the memory children.
    std::env::set_var("SCALE_TEMPLATE", &built[0].path);
    std::env::set_var("SCALE_PROBE", &plughost);

    let parts = std::env::var("SCALE_PARTS").unwrap_or_default();
    let part = |name: &str| parts.is_empty() || parts.split(',').any(|p| p.trim() == name);
    let mut rows = Vec::new();
    // Memory first, each way in a fresh process of its own (this program again), so that
    // neither starts with a heap grown by the other or by the large cold starts.
    if part("memory") {
        for via in ["load_file", "sync_file"] {
            rows.extend(memory_in_child(via));
        }
    }

    let (first, cached, off) = ("probe, first run", "probe, cached", "probe off");
    let no_probe = ProbeSetting::Off;
    let mut kept = None;
    for &n in sizes.iter().filter(|_| part("cold")) {
        let plugins = plugins_folder(&template, &at, n);
        let dir = plugins.path();
        let shadow = tempfile::tempdir().unwrap();
        cold_start(&mut rows, first, dir, shadow.path(), &probe, n);
        cold_start(&mut rows, cached, dir, shadow.path(), &probe, n);
        let shadow = tempfile::tempdir().unwrap();
        cold_start(&mut rows, off, dir, shadow.path(), &no_probe, n);
        if n == largest {
            kept = Some(plugins);
        }
    }

    // The folder of the largest N again, each time with a fresh shadow folder.
    if part("list") || part("limit") {
        let plugins = kept.unwrap_or_else(|| plugins_folder(&template, &at, largest));
        let dir = plugins.path();
        if part("list") {
            let shadow = tempfile::tempdir().unwrap();
            let (first, cached) = ("first run", "cached");
            list(&mut rows, first, &plughost, dir, shadow.path(), largest);
            list(&mut rows, cached, &plughost, dir, shadow.path(), largest);
        }
        if part("limit") {
            let shadow = tempfile::tempdir().unwrap();
            over_the_limit(&mut rows, first, dir, shadow.path(), &probe, largest);
            over_the_limit(&mut rows, cached, dir, shadow.path(), &probe, largest);
            let shadow = tempfile::tempdir().unwrap();
            over_the_limit(&mut rows, off, dir, shadow.path(), &no_probe, largest);
        }
    }

    println!();
    print(&rows);
    println!("\nload at end: {}", uptime());
}
