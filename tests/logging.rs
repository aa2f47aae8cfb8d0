//! Plugin log lines come out of the host's log, attributed to the plugin and its version and
//! filtered by RUST_LOG like the host's own.

use plughost_tests::{stderr, PluginDir};

fn exec_chatty(rust_log: &str) -> String {
    let dir = PluginDir::new();
    dir.add("fixture-chatty");
    let out = dir
        .command(&["exec", "chatty", "the weather"])
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(plughost_tests::stdout(&out), "logged\n");
    stderr(&out)
}

fn line_with<'a>(log: &'a str, needle: &str) -> Option<&'a str> {
    log.lines().find(|l| l.contains(needle))
}

#[test]
fn plugin_lines_carry_the_plugin_name_and_version() {
    let log = exec_chatty("debug");
    for (level, text) in [
        ("ERROR", "chatty error about the weather"),
        ("WARN", "chatty warning about the weather"),
        ("INFO", "chatty info about the weather"),
        ("DEBUG", "chatty debug about the weather"),
        ("INFO", "chatty is starting"),
    ] {
        let line = line_with(&log, text).unwrap_or_else(|| panic!("no {text:?} in\n{log}"));
        assert!(line.contains(level), "{line}");
        assert!(line.contains("plugin{name=chatty version=1.0.0}"), "{line}");
    }
    assert!(
        line_with(&log, "chatty trace").is_none(),
        "trace is filtered out:\n{log}"
    );
}

#[test]
fn rust_log_filters_plugin_lines_like_the_hosts() {
    let log = exec_chatty("warn");
    assert!(line_with(&log, "chatty warning about").is_some(), "{log}");
    assert!(line_with(&log, "chatty error about").is_some(), "{log}");
    assert!(line_with(&log, "chatty info about").is_none(), "{log}");

    let log = exec_chatty("info,plugin=off");
    assert!(
        line_with(&log, "about the weather").is_none(),
        "plugin lines switched off:\n{log}"
    );
    assert!(line_with(&log, "chatty is starting").is_none(), "{log}");
    assert!(
        line_with(&log, "loaded chatty 1.0.0").is_some(),
        "host lines stay:\n{log}"
    );

    let log = exec_chatty("warn,[plugin{name=chatty}]=trace");
    assert!(line_with(&log, "chatty trace about").is_some(), "{log}");
}
