//! Panics in a plugin's Init, Execute and Shutdown become errors with the panic message; the
//! host survives and a plugin whose Execute panicked serves the next call. That holds even for
//! a panic whose payload panics again when dropped (the fixture's `"bomb": true`): before the
//! payload was disposed of inside a guard, such a panic aborted the whole test process.

use plughost::{CallError, LoadError};
use plughost_tests::PluginDir;

#[test]
fn panic_in_init_is_a_load_error() {
    let dir = PluginDir::new();
    let file = dir.add("fixture-panicky");
    let host = dir.host();
    let error = host
        .load_file(&file, br#"{"panic_in":"init"}"#)
        .unwrap_err();
    let LoadError::Init { cause, .. } = &error else {
        panic!("{error:?}")
    };
    assert!(matches!(cause, CallError::Panicked { .. }), "{cause:?}");
    let message = error.to_string();
    assert!(
        message.contains("plugin panicky panicked in init: panicky: boom in init"),
        "{message}"
    );
    assert!(
        message.contains("lib.rs:"),
        "the location is reported: {message}"
    );
    assert!(host.plugins().is_empty());
    // The same library loads fine with another config: nothing was left half-registered.
    host.load_file(&file, b"{}").unwrap();
}

#[test]
fn panic_in_execute_is_an_error_and_the_plugin_stays_usable() {
    let dir = PluginDir::new();
    let file = dir.add("fixture-panicky");
    let host = dir.host();
    let handle = host.load_file(&file, br#"{"panic_in":"execute"}"#).unwrap();
    let mut out = Vec::with_capacity(8);
    for _ in 0..3 {
        let error = handle.call_into(b"panic", &mut out).unwrap_err();
        assert!(
            matches!(&error, CallError::Panicked { message, .. } if message.starts_with("panicky: boom in execute")),
            "{error:?}"
        );
        assert!(out.is_empty(), "partial output must not reach the caller");
        handle.call_into(b"fine", &mut out).unwrap();
        assert_eq!(out, b"ok");
    }
    // The plugin-allocated path reports it the same way.
    let error = handle.call(b"panic").map(|_| ()).unwrap_err();
    assert!(error
        .to_string()
        .contains("plugin panicky panicked: panicky: boom in execute"));
}

#[test]
fn panic_in_shutdown_is_an_error_and_the_library_is_still_unloaded() {
    let dir = PluginDir::new();
    let file = dir.add("fixture-panicky");
    let host = dir.host();
    host.load_file(&file, br#"{"panic_in":"shutdown"}"#)
        .unwrap();
    let error = host.unload("panicky").unwrap_err();
    assert!(
        matches!(&error, CallError::Panicked { message, .. } if message.starts_with("panicky: boom in shutdown")),
        "{error:?}"
    );
    assert!(host.plugins().is_empty());
    assert_eq!(
        dir.copies_held(),
        0,
        "the library was closed and its copy deleted"
    );
    // The host goes on: the plugin can be loaded again.
    host.load_file(&file, b"{}").unwrap();
}

#[test]
fn panic_in_drop_is_reported_by_shutdown() {
    let dir = PluginDir::new();
    let file = dir.add("fixture-panicky");
    let host = dir.host();
    host.load_file(&file, br#"{"panic_in":"drop"}"#).unwrap();
    let error = host.unload("panicky").unwrap_err();
    assert!(
        matches!(&error, CallError::Panicked { message, .. }
            if message.starts_with("while dropping the plugin: panicky: boom in drop")),
        "{error:?}"
    );
    assert_eq!(dir.copies_held(), 0);
}

#[test]
fn cli_reports_each_panic_in_one_line_and_exits_non_zero() {
    let dir = PluginDir::new();
    dir.add("fixture-panicky");
    for (config, input, expect) in [
        (
            r#"{"panic_in":"init"}"#,
            "x",
            "panicked in init: panicky: boom in init",
        ),
        (
            r#"{"panic_in":"execute"}"#,
            "panic",
            "panicked: panicky: boom in execute",
        ),
        (
            r#"{"panic_in":"shutdown"}"#,
            "x",
            "panicked: panicky: boom in shutdown",
        ),
    ] {
        let out = dir
            .command(&["exec", "panicky", input, "--init", config])
            // std's own report would print a backtrace with this set; the plugin's hook does not.
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{config}");
        let err = plughost_tests::stderr(&out);
        assert!(err.contains(expect), "{config}: {err}");
        assert!(!err.contains("stack backtrace"), "no backtrace: {err}");
        assert_eq!(
            err.matches("panicked at").count(),
            1,
            "one report line: {err}"
        );
    }
}

#[test]
fn a_panic_with_stderr_unwritable_is_still_just_an_error() {
    // Writing the panic report fails (ENOSPC); that must not turn into a second panic, which
    // would abort the host.
    let dir = PluginDir::new();
    dir.add("fixture-panicky");
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        return; // no /dev/full on this system
    };
    let status = dir
        .command(&[
            "exec",
            "panicky",
            "panic",
            "--init",
            r#"{"panic_in":"execute"}"#,
        ])
        .stderr(full)
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "an error exit, not an abort: {status:?}"
    );
}

/// What a panic with the fixture's bomb payload reports: not a string, so no message of its own.
const BOMB_MESSAGE: &str = "panic with a non-string payload";

/// `lib.rs:LINE:` of the first fixture line containing `call` (its `boom(...)` in init or
/// execute): the location reported must be that of the panic, not that of the second panic in
/// the bomb's `Drop`.
fn location_of(call: &str) -> String {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/panicky/src/lib.rs"
    ))
    .unwrap();
    let line = source
        .lines()
        .position(|line| line.contains(call))
        .unwrap_or_else(|| panic!("the fixture has {call:?}"));
    format!("lib.rs:{}:", line + 1)
}

#[test]
fn bomb_payload_in_execute_is_an_error_and_the_plugin_stays_usable() {
    let dir = PluginDir::new();
    let file = dir.add("fixture-panicky");
    let host = dir.host();
    let handle = host
        .load_file(&file, br#"{"panic_in":"execute","bomb":true}"#)
        .unwrap();
    let location = location_of("boom in execute");
    let mut out = Vec::with_capacity(8);
    for _ in 0..3 {
        // Before the fix the payload's Drop panicked outside catch_unwind: the process aborted.
        let error = handle.call_into(b"panic", &mut out).unwrap_err();
        let CallError::Panicked { message, .. } = &error else {
            panic!("{error:?}")
        };
        assert!(message.starts_with(BOMB_MESSAGE), "{message}");
        assert!(message.contains(&location), "{location} in {message}");
        assert!(out.is_empty(), "partial output must not reach the caller");
        // Still alive, and the plugin serves the next call.
        handle.call_into(b"fine", &mut out).unwrap();
        assert_eq!(out, b"ok");
    }
    // The plugin-allocated path reports it the same way.
    let error = handle.call(b"panic").map(|_| ()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("plugin panicky panicked: {BOMB_MESSAGE}")),
        "{error}"
    );
    assert_eq!(&*handle.call(b"fine").unwrap(), b"ok");
}

#[test]
fn bomb_payload_in_init_is_a_load_error() {
    let dir = PluginDir::new();
    let file = dir.add("fixture-panicky");
    let host = dir.host();
    let error = host
        .load_file(&file, br#"{"panic_in":"init","bomb":true}"#)
        .unwrap_err();
    let LoadError::Init { cause, .. } = &error else {
        panic!("{error:?}")
    };
    assert!(
        matches!(cause, CallError::Panicked { message, .. } if message.starts_with(BOMB_MESSAGE)),
        "{cause:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&location_of("boom in init")), "{message}");
    assert!(host.plugins().is_empty());
    let handle = host.load_file(&file, b"{}").unwrap();
    assert_eq!(&*handle.call(b"x").unwrap(), b"ok");
}

#[test]
fn bomb_payload_in_shutdown_or_drop_is_an_error() {
    for (panic_in, prefix) in [
        ("shutdown", String::new()),
        ("drop", "while dropping the plugin: ".to_owned()),
    ] {
        let dir = PluginDir::new();
        let file = dir.add("fixture-panicky");
        let host = dir.host();
        let config = format!(r#"{{"panic_in":"{panic_in}","bomb":true}}"#);
        host.load_file(&file, config.as_bytes()).unwrap();
        let error = host.unload("panicky").unwrap_err();
        assert!(
            matches!(&error, CallError::Panicked { message, .. }
                if message.starts_with(&format!("{prefix}{BOMB_MESSAGE}"))),
            "{panic_in}: {error:?}"
        );
        assert!(host.plugins().is_empty());
        assert_eq!(dir.copies_held(), 0, "{panic_in}: library closed");
        host.load_file(&file, b"{}").unwrap();
    }
}

#[test]
fn cli_exits_with_an_error_not_an_abort_on_a_bomb_payload() {
    let dir = PluginDir::new();
    dir.add("fixture-panicky");
    let out = dir
        .command(&[
            "exec",
            "panicky",
            "panic",
            "--init",
            r#"{"panic_in":"execute","bomb":true}"#,
        ])
        .output()
        .unwrap();
    let err = plughost_tests::stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error exit, not an abort: {:?}\n{err}",
        out.status
    );
    assert!(err.contains(&format!("panicked: {BOMB_MESSAGE}")), "{err}");
}
