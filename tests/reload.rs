//! Hot reload, end to end: real files in a watched folder, real `dlopen`, real notify events.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plughost::{CallError, HostEvent, UnloadStatus};
use plughost_tests::{bytes_of, events_within, rebuilt, wait_for, PluginDir};

const WAIT: Duration = Duration::from_secs(20);
const FILE: &str = "libversioned.so";

fn answer(handle: &plughost::PluginHandle) -> String {
    let mut out = Vec::with_capacity(64);
    handle.call_into(b"x", &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn reloaded_to(event: &HostEvent, version: &str) -> bool {
    matches!(event, HostEvent::Reloaded { to, .. } if to.to_string() == version)
}

#[test]
fn a_renamed_in_build_replaces_the_running_version() {
    let dir = PluginDir::new();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let (host, _watcher, events) = dir.watched();
    let handle = host.handle("versioned").unwrap();
    assert_eq!(answer(&handle), "1.0.0:x");

    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v2"));
    let event = wait_for(&events, WAIT, |e| reloaded_to(e, "2.0.0"));
    let HostEvent::Reloaded { from, old, .. } = event else {
        unreachable!()
    };
    assert_eq!(from.to_string(), "1.0.0");
    assert_eq!(
        old,
        UnloadStatus::Unmapped,
        "the old version left the address space"
    );
    assert_eq!(
        answer(&handle),
        "2.0.0:x",
        "the same handle now reaches the new version"
    );
    assert_eq!(dir.copies_held(), 1, "the old private copy is deleted");
}

#[test]
fn cp_over_the_file_in_place_is_safe_and_reloads() {
    let dir = PluginDir::new();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let (host, _watcher, events) = dir.watched();
    let handle = host.handle("versioned").unwrap();
    assert_eq!(answer(&handle), "1.0.0:x");

    // Overwriting a loaded library in place crashes hosts that load the user's file; this
    // host loads a private copy, so it only sees a new version.
    dir.replace_in_place(FILE, &bytes_of("fixture-versioned-v2"));
    wait_for(&events, WAIT, |e| reloaded_to(e, "2.0.0"));
    assert_eq!(answer(&handle), "2.0.0:x");
    dir.replace_in_place(FILE, &bytes_of("fixture-versioned-v1"));
    wait_for(&events, WAIT, |e| reloaded_to(e, "1.0.0"));
    assert_eq!(answer(&handle), "1.0.0:x");
}

#[test]
fn counter_hands_its_count_to_the_new_version() {
    let dir = PluginDir::new();
    let counter = bytes_of("counter");
    dir.replace_atomically("libcounter.so", &counter);
    let (host, _watcher, events) = dir.watched();
    let handle = host.handle("counter").unwrap();
    for _ in 0..3 {
        handle.call_into(b"", &mut Vec::new()).unwrap();
    }
    dir.replace_atomically("libcounter.so", &rebuilt(&counter, 1));
    let event = wait_for(&events, WAIT, |e| matches!(e, HostEvent::Reloaded { .. }));
    assert!(
        matches!(
            event,
            HostEvent::Reloaded {
                state_handed_over: true,
                ..
            }
        ),
        "{event:?}"
    );
    let mut out = Vec::new();
    handle.call_into(b"", &mut out).unwrap();
    assert_eq!(out, b"4", "the count went on from 3");
}

#[test]
fn a_plugin_without_state_hand_over_starts_fresh() {
    let dir = PluginDir::new();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let (_host, _watcher, events) = dir.watched();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v2"));
    let event = wait_for(&events, WAIT, |e| reloaded_to(e, "2.0.0"));
    assert!(matches!(
        event,
        HostEvent::Reloaded {
            state_handed_over: false,
            ..
        }
    ));
}

#[test]
fn broken_replacements_leave_the_old_version_serving() {
    let dir = PluginDir::new();
    let v2 = bytes_of("fixture-versioned-v2");
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let (host, _watcher, events) = dir.watched();
    let handle = host.handle("versioned").unwrap();

    for (bytes, expect) in [
        (v2[..v2.len() / 3].to_vec(), "damaged or truncated library"),
        (
            bytes_of("fixture-api-v2"),
            "plugin-api 2.0.0 is incompatible",
        ),
        (
            bytes_of("fixture-versioned-v3"),
            "plugin versioned panicked in init: versioned 3.0.0 cannot start",
        ),
        (b"not a library at all".to_vec(), "it is a text file"),
    ] {
        dir.replace_atomically(FILE, &bytes);
        let event = wait_for(&events, WAIT, |e| matches!(e, HostEvent::Refused { .. }));
        let HostEvent::Refused { reason, kept, .. } = event else {
            unreachable!()
        };
        assert!(reason.contains(expect), "{reason:?} should say {expect:?}");
        assert!(reason.contains(FILE), "{reason}");
        let (name, version) = kept.expect("the old version is kept");
        assert_eq!(
            (name.as_str(), version.to_string().as_str()),
            ("versioned", "1.0.0")
        );
        assert_eq!(
            answer(&handle),
            "1.0.0:x",
            "still served by the old version"
        );
    }
    // A good build after all that goes through.
    dir.replace_atomically(FILE, &v2);
    wait_for(&events, WAIT, |e| reloaded_to(e, "2.0.0"));
    assert_eq!(answer(&handle), "2.0.0:x");
}

#[test]
fn deleting_the_file_unloads_and_putting_it_back_loads() {
    let dir = PluginDir::new();
    let v1 = bytes_of("fixture-versioned-v1");
    let file = dir.replace_atomically(FILE, &v1);
    let (host, _watcher, events) = dir.watched();
    let handle = host.handle("versioned").unwrap();
    assert_eq!(answer(&handle), "1.0.0:x");

    std::fs::remove_file(&file).unwrap();
    let event = wait_for(&events, WAIT, |e| matches!(e, HostEvent::Unloaded { .. }));
    assert!(matches!(
        event,
        HostEvent::Unloaded {
            status: UnloadStatus::Unmapped,
            ..
        }
    ));
    assert!(host.plugins().is_empty());
    assert!(matches!(
        host.handle("versioned"),
        Err(CallError::NotFound { .. })
    ));
    let error = handle.call_into(b"x", &mut Vec::new()).unwrap_err();
    assert!(matches!(error, CallError::NotLoaded { .. }), "{error:?}");
    assert_eq!(dir.copies_held(), 0);

    dir.replace_atomically(FILE, &v1);
    wait_for(&events, WAIT, |e| matches!(e, HostEvent::Loaded { .. }));
    assert_eq!(answer(&handle), "1.0.0:x", "the old handle works again");
}

#[test]
fn a_new_library_in_the_folder_is_loaded() {
    let dir = PluginDir::new();
    let (host, _watcher, events) = dir.watched();
    assert!(host.plugins().is_empty());
    dir.replace_atomically("libtransform.so", &bytes_of("transform"));
    let event = wait_for(&events, WAIT, |e| matches!(e, HostEvent::Loaded { .. }));
    assert!(matches!(event, HostEvent::Loaded { name, .. } if name == "transform"));
    let mut out = Vec::new();
    host.handle("transform")
        .unwrap()
        .call_into(b"new", &mut out)
        .unwrap();
    assert_eq!(out, b"NEW");
}

#[test]
fn unchanged_content_causes_no_reload() {
    let dir = PluginDir::new();
    let v1 = bytes_of("fixture-versioned-v1");
    dir.replace_atomically(FILE, &v1);
    let (_host, _watcher, events) = dir.watched();
    wait_for(&events, WAIT, |e| matches!(e, HostEvent::Loaded { .. }));
    dir.replace_in_place(FILE, &v1);
    dir.replace_atomically(FILE, &v1);
    // Then a real change: events come in order, so if the rewrites had caused anything, it
    // would come before this reload.
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v2"));
    let first = wait_for(&events, WAIT, |_| true);
    assert!(
        matches!(&first, HostEvent::Reloaded { from, to, .. }
            if from.to_string() == "1.0.0" && to.to_string() == "2.0.0"),
        "the rewrites of the same bytes caused {first:#?}"
    );
}

#[test]
fn a_slow_chunked_write_gives_one_reload_of_the_final_content() {
    use std::io::Write;
    let dir = PluginDir::new();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let (host, _watcher, events) = dir.watched();
    let handle = host.handle("versioned").unwrap();

    let v2 = bytes_of("fixture-versioned-v2");
    let mut file = std::fs::File::create(dir.path().join(FILE)).unwrap();
    for chunk in v2.chunks(v2.len() / 8 + 1) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
        // While the write goes on, the old version serves.
        assert_eq!(answer(&handle), "1.0.0:x");
    }
    drop(file);
    // The first event after the initial load is the reload of the whole file...
    let first = wait_for(&events, WAIT, |e| !matches!(e, HostEvent::Loaded { .. }));
    assert!(reloaded_to(&first, "2.0.0"), "{first:#?}");
    // ...and nothing follows it: no second reload, no refusal of a partial file.
    let after = events_within(&events, Duration::from_millis(500));
    assert!(after.is_empty(), "{after:#?}");
    assert_eq!(answer(&handle), "2.0.0:x");
}

/// A watched folder serving `versioned` 1.0.0, ready to be flipped between builds.
struct Flipping {
    dir: PluginDir,
    builds: [Vec<u8>; 2],
    host: Arc<plughost::Host>,
    _watcher: plughost::Watcher,
    events: std::sync::mpsc::Receiver<HostEvent>,
    handle: plughost::PluginHandle,
}

impl Flipping {
    fn new() -> Self {
        let dir = PluginDir::new();
        let builds = [
            bytes_of("fixture-versioned-v1"),
            bytes_of("fixture-versioned-v2"),
        ];
        dir.replace_atomically(FILE, &builds[0]);
        let (host, _watcher, events) = dir.watched();
        let handle = host.handle("versioned").unwrap();
        Flipping {
            dir,
            builds,
            host,
            _watcher,
            events,
            handle,
        }
    }

    /// Reload number `i`: renames in build 2 when `i` is odd, build 1 when even, and waits for
    /// the reload. Returns the version now serving and the event.
    fn flip(&self, i: usize) -> (&'static str, HostEvent) {
        self.dir.replace_atomically(FILE, &self.builds[i % 2]);
        let version = if i.is_multiple_of(2) {
            "1.0.0"
        } else {
            "2.0.0"
        };
        (
            version,
            wait_for(&self.events, WAIT, |e| reloaded_to(e, version)),
        )
    }
}

#[test]
fn calls_under_load_never_fail_or_tear_across_200_reloads() {
    let flipping = Flipping::new();
    let handle = &flipping.handle;

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (handle, stop, seen) = (handle.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut out = Vec::with_capacity(64);
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    handle.call_into(b"x", &mut out).expect("no call fails");
                    match &out[..] {
                        b"1.0.0:x" => seen[0].fetch_add(1, Ordering::Relaxed),
                        b"2.0.0:x" => seen[1].fetch_add(1, Ordering::Relaxed),
                        other => panic!("torn answer: {:?}", String::from_utf8_lossy(other)),
                    };
                    calls += 1;
                }
                calls
            })
        })
        .collect();

    for i in 1..=200 {
        flipping.flip(i);
    }
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = callers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(calls > 200, "the callers kept calling: {calls}");
    assert!(seen[0].load(Ordering::Relaxed) > 0 && seen[1].load(Ordering::Relaxed) > 0);
    assert_eq!(answer(handle), "1.0.0:x");
}

#[test]
fn five_hundred_reloads_leave_no_shadow_files_or_mappings_behind() {
    let flipping = Flipping::new();
    let (dir, handle) = (&flipping.dir, &flipping.handle);
    assert_eq!(dir.copies_mapped(), 1);

    for i in 1..=500 {
        let (version, event) = flipping.flip(i);
        assert!(
            matches!(
                event,
                HostEvent::Reloaded {
                    old: UnloadStatus::Unmapped,
                    ..
                }
            ),
            "reload {i}: {event:?}"
        );
        if i % 50 == 0 {
            assert_eq!(answer(handle), format!("{version}:x"));
        }
    }
    assert_eq!(dir.copies_held(), 1);
    assert_eq!(
        dir.copies_mapped(),
        1,
        "only the version in service is mapped"
    );
    assert_eq!(flipping.host.still_mapped(), 0);
}

#[test]
fn a_plugin_that_pins_itself_is_reported_still_mapped_and_nothing_crashes() {
    let dir = PluginDir::new();
    let pinning = bytes_of("fixture-pinning");
    let file = dir.replace_atomically("libpinning.so", &pinning);
    let (host, _watcher, events) = dir.watched();
    let handle = host.handle("pinning").unwrap();
    // This (long-lived) test thread now holds a thread-local destructor of the plugin.
    let mut out = Vec::new();
    handle.call_into(b"pin", &mut out).unwrap();
    assert_eq!(out, b"pin");

    dir.replace_atomically("libpinning.so", &rebuilt(&pinning, 1));
    let event = wait_for(&events, WAIT, |e| matches!(e, HostEvent::Reloaded { .. }));
    assert!(
        matches!(
            event,
            HostEvent::Reloaded {
                old: UnloadStatus::StillMapped,
                ..
            }
        ),
        "{event:?}"
    );
    assert_eq!(host.still_mapped(), 1);
    handle.call_into(b"again", &mut out).unwrap();
    assert_eq!(out, b"again");

    std::fs::remove_file(&file).unwrap();
    let event = wait_for(&events, WAIT, |e| matches!(e, HostEvent::Unloaded { .. }));
    assert!(matches!(
        event,
        HostEvent::Unloaded {
            status: UnloadStatus::StillMapped,
            ..
        }
    ));
    assert_eq!(host.still_mapped(), 2);
    // Their copies are kept while they are mapped: a copy's name must name nothing else
    // meanwhile (docs/design.md, "Shadow copies").
    assert_eq!(dir.copies_held(), 2);

    // A thread that ends runs its destructors, after which its library can go: a pinning
    // plugin called only from short-lived threads is unloaded normally.
    dir.replace_atomically("libpinning.so", &pinning);
    wait_for(&events, WAIT, |e| matches!(e, HostEvent::Loaded { .. }));
    let h = handle.clone();
    std::thread::spawn(move || h.call_into(b"brief", &mut Vec::new()).unwrap())
        .join()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    let event = wait_for(&events, WAIT, |e| matches!(e, HostEvent::Unloaded { .. }));
    assert!(
        matches!(
            event,
            HostEvent::Unloaded {
                status: UnloadStatus::Unmapped,
                ..
            }
        ),
        "{event:?}"
    );
}

#[test]
fn cli_run_logs_each_reload() {
    use std::io::{BufRead, BufReader};
    let dir = PluginDir::new();
    let counter = bytes_of("counter");
    dir.replace_atomically("libcounter.so", &counter);
    let mut child = dir.spawn_run();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut wait_line = |needle: &str| -> String {
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains(needle) {
                return line;
            }
        }
        panic!("plughost run ended without logging {needle:?}");
    };
    wait_line("watching");
    dir.replace_atomically("libcounter.so", &rebuilt(&counter, 1));
    let line = wait_line("reloaded counter");
    assert!(
        line.contains("reloaded counter 1.0.0 -> 1.0.0 in ")
            && line.contains("state handed over")
            && line.contains("(old version unloaded)"),
        "{line}"
    );
    dir.replace_atomically("libcounter.so", b"garbage");
    let line = wait_line("kept counter");
    assert!(
        line.contains("kept counter 1.0.0: new file refused: "),
        "{line}"
    );
    assert!(line.contains("libcounter.so"), "{line}");
    plughost_tests::terminate(&child);
    let line = wait_line("unloaded counter 1.0.0");
    assert!(line.contains("(library unloaded)"), "{line}");
    assert!(child.wait().unwrap().success());
}

/// A host dropped while versions it closed are still mapped leaves their private copies open:
/// a later host in the same process must never be handed one of those libraries for a file of
/// its own.
#[test]
fn a_host_dropped_with_versions_still_mapped_leaves_later_hosts_their_own_libraries() {
    let dir = PluginDir::new();
    let pinning = dir.add("fixture-pinning");
    let echo = dir.add("fixture-echo");
    let host = dir.host();
    let handle = host.load_file(&pinning, b"").unwrap();
    // This (long-lived) test thread now holds a thread-local destructor of the plugin.
    handle.call_into(b"pin", &mut Vec::new()).unwrap();
    drop(handle);
    host.unload("pinning").unwrap();
    assert_eq!(host.still_mapped(), 1);
    drop(host);
    let host = dir.host();
    for _ in 0..3 {
        assert_eq!(host.open(&echo).unwrap().info().name, "echo");
    }
}
