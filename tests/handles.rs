//! A thread's own handle ([`LocalHandle`]): answers like a [`PluginHandle`], follows reloads
//! and unloads, and keeps the version it last called loaded only until its next call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use plughost::{CallError, HostEvent, LocalHandle, PluginHandle, UnloadStatus};
use plughost_tests::{bytes_of, events_within, wait_for, PluginDir};

const WAIT: Duration = Duration::from_secs(20);
const FILE: &str = "libversioned.so";

fn answer(local: &mut LocalHandle, input: &[u8]) -> Result<String, CallError> {
    let mut out = Vec::with_capacity(64);
    local.call_into(input, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn shared_answer(handle: &PluginHandle, input: &[u8]) -> Result<String, CallError> {
    let mut out = Vec::with_capacity(64);
    handle.call_into(input, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

/// Waits until the slot serves `version` (the swap is done; the old version may still be
/// retiring).
fn serving(handle: &PluginHandle, version: &str) {
    let deadline = Instant::now() + WAIT;
    while handle.info().map(|i| i.version.to_string()).as_deref() != Some(version) {
        assert!(
            Instant::now() < deadline,
            "{version} never came into service"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_local_handle_answers_like_the_shared_one() {
    let dir = PluginDir::new();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let host = dir.host();
    host.load_all().unwrap();
    let handle = host.handle("versioned").unwrap();
    let mut local = handle.local();
    assert_eq!(local.name(), "versioned");
    assert_eq!(answer(&mut local, b"x").unwrap(), "1.0.0:x");
    assert_eq!(answer(&mut local, b"yz").unwrap(), "1.0.0:yz");
    assert_eq!(shared_answer(&handle, b"x").unwrap(), "1.0.0:x");
    // An answer larger than the lent buffer comes back whole, as through the shared handle.
    let big = vec![b'a'; 10_000];
    assert_eq!(answer(&mut local, &big).unwrap().len(), 6 + 10_000);
    drop(local);
}

#[test]
fn a_local_handle_follows_a_reload_and_lets_the_old_version_go_on_its_next_call() {
    let dir = PluginDir::new();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let (host, _watcher, events) = dir.watched();
    let handle = host.handle("versioned").unwrap();
    let mut local = handle.local();
    assert_eq!(answer(&mut local, b"x").unwrap(), "1.0.0:x");

    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v2"));
    serving(&handle, "2.0.0");
    // The local handle still holds 1.0.0: it cannot be retired yet.
    let early = events_within(&events, Duration::from_millis(300));
    assert!(
        !early
            .iter()
            .any(|e| matches!(e, HostEvent::Reloaded { .. })),
        "the old version was retired while a local handle held it: {early:?}"
    );

    // Its next call goes to the new version and lets the old one go.
    assert_eq!(answer(&mut local, b"x").unwrap(), "2.0.0:x");
    let event = wait_for(&events, WAIT, |e| matches!(e, HostEvent::Reloaded { .. }));
    let HostEvent::Reloaded { from, to, old, .. } = event else {
        unreachable!()
    };
    assert_eq!(
        (from.to_string(), to.to_string()),
        ("1.0.0".into(), "2.0.0".into())
    );
    assert_eq!(old, UnloadStatus::Unmapped, "the old version left memory");
    assert_eq!(answer(&mut local, b"y").unwrap(), "2.0.0:y");
}

#[test]
fn dropping_a_local_handle_lets_the_old_version_go() {
    let dir = PluginDir::new();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let (host, _watcher, events) = dir.watched();
    let handle = host.handle("versioned").unwrap();
    let mut local = handle.local();
    assert_eq!(answer(&mut local, b"x").unwrap(), "1.0.0:x");

    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v2"));
    serving(&handle, "2.0.0");
    assert_eq!(shared_answer(&handle, b"x").unwrap(), "2.0.0:x");
    drop(local);
    let event = wait_for(&events, WAIT, |e| matches!(e, HostEvent::Reloaded { .. }));
    assert!(
        matches!(
            event,
            HostEvent::Reloaded {
                old: UnloadStatus::Unmapped,
                ..
            }
        ),
        "{event:?}"
    );
}

#[test]
fn after_an_unload_a_local_handle_fails_with_not_loaded_and_lets_go() {
    let dir = PluginDir::new();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let host = Arc::new(dir.host());
    let events = host.subscribe();
    host.load_all().unwrap();
    let handle = host.handle("versioned").unwrap();
    let mut local = handle.local();
    assert_eq!(answer(&mut local, b"x").unwrap(), "1.0.0:x");

    // `unload` waits for the version's users, this local handle among them: from another
    // thread, then.
    let unloading = {
        let host = host.clone();
        std::thread::spawn(move || host.unload("versioned"))
    };
    let deadline = Instant::now() + WAIT;
    while handle.info().is_some() {
        assert!(Instant::now() < deadline, "never taken out of service");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !unloading.is_finished(),
        "the unload waits for the local handle"
    );
    let error = answer(&mut local, b"x").unwrap_err();
    assert!(
        matches!(&error, CallError::NotLoaded { plugin } if &**plugin == "versioned"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        shared_answer(&handle, b"x").unwrap_err().to_string()
    );
    unloading.join().unwrap().expect("shutdown went well");
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
    assert!(matches!(
        answer(&mut local, b"x"),
        Err(CallError::NotLoaded { .. })
    ));

    // Loaded again, the same local handle reaches it.
    host.load("versioned", None).unwrap();
    assert_eq!(answer(&mut local, b"x").unwrap(), "1.0.0:x");
}

#[test]
fn a_local_handle_works_from_the_thread_it_was_moved_to() {
    let dir = PluginDir::new();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let host = dir.host();
    host.load_all().unwrap();
    let handle = host.handle("versioned").unwrap();
    let mut local = handle.local();
    assert_eq!(answer(&mut local, b"here").unwrap(), "1.0.0:here");
    let answers = std::thread::spawn(move || {
        let answers: Vec<String> = (0..1000)
            .map(|i| answer(&mut local, format!("{i}").as_bytes()).unwrap())
            .collect();
        drop(local);
        answers
    })
    .join()
    .unwrap();
    assert_eq!(answers.len(), 1000);
    assert_eq!(answers[999], "1.0.0:999");
    // One per thread, taken on the threads themselves.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                let mut local = handle.local();
                answer(&mut local, format!("t{t}").as_bytes()).unwrap()
            })
        })
        .collect();
    for (t, thread) in threads.into_iter().enumerate() {
        assert_eq!(thread.join().unwrap(), format!("1.0.0:t{t}"));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_local_handle_calls_an_isolated_plugin_like_the_shared_one() {
    let dir = PluginDir::new();
    let crashy = dir.add("fixture-crashy");
    let host = plughost_tests::isolated::host_with(&dir, &["crashy"], |_| {});
    host.load_file(&crashy, b"{}").unwrap();
    let handle = host.handle("crashy").unwrap();
    assert!(handle.is_isolated());
    let mut local = handle.local();
    let pid: u32 = answer(&mut local, b"pid").unwrap().parse().unwrap();
    assert_ne!(pid, std::process::id(), "the call ran in the worker");
    assert_eq!(answer(&mut local, b"hello").unwrap(), "hello");
    assert_eq!(answer(&mut local, b"big:100000").unwrap().len(), 100_000);
    for input in [&b"fail"[..], b"panic"] {
        let (local_error, shared_error) = (
            answer(&mut local, input).unwrap_err(),
            shared_answer(&handle, input).unwrap_err(),
        );
        assert_eq!(local_error.to_string(), shared_error.to_string());
    }
    drop(local);
}
