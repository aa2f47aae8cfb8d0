//! Plugin log lines come out of the host's log, attributed to the plugin and its version and
//! filtered by RUST_LOG like the host's own. Logs are coloured only for a person at a terminal
//! who has not set NO_COLOR: never in pipes, files or JSON lines, whatever plugins log or print.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use plughost_tests::{
    eventually, exits_within, library, settings, stderr, stdout, terminate, PluginDir,
};
use tempfile::TempDir;

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

/// Colour codes of a plugin's own, in what it logs or prints: shown escaped, never passed on.
const COLOURED: &str = "\u{1b}[31mred\u{1b}[0m";

/// `command` without any of the variables that ask for colour or against it.
fn colour_unset(command: &mut Command) -> &mut Command {
    for variable in ["NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE", "FORCE_COLOR"] {
        command.env_remove(variable);
    }
    command
}

/// A plugins folder with chatty and crashy, and a `plughost.toml` asking for JSON logs.
fn folder_and_json_settings() -> (PluginDir, TempDir, PathBuf) {
    let dir = PluginDir::new();
    dir.add("fixture-chatty");
    dir.add("fixture-crashy");
    let (folder, json) = settings("[host]\nlog_format = \"json\"\n");
    (dir, folder, json)
}

#[test]
fn logs_in_a_pipe_or_a_file_carry_no_colour_codes() {
    let (dir, _folder, json) = folder_and_json_settings();
    let print = format!("print:{COLOURED}");
    let log = format!("log:{COLOURED}");
    // Where no plughost.toml is.
    let elsewhere = tempfile::tempdir().unwrap();
    for config in [None, Some(&json)] {
        let with_config = |command: &mut Command| {
            if let Some(file) = config {
                command.arg("--config").arg(file);
            }
        };
        // Every command; plugins in the host and in worker processes, logging and printing
        // their own colour codes.
        for args in [
            &["list"][..],
            &["config", "check"],
            &["inspect", "--init", "{}"],
            &["exec", "chatty", COLOURED],
            &["exec", "--isolated", "crashy", &print],
            &["exec", "--isolated", "crashy", &log],
            &["enable", "chatty"],
        ] {
            let mut command = dir.command(args);
            if args[0] == "inspect" {
                command.arg(library("fixture-chatty"));
            }
            with_config(&mut command);
            let out = colour_unset(&mut command)
                .current_dir(elsewhere.path())
                .env("RUST_LOG", "trace")
                .output()
                .unwrap();
            let said = stderr(&out);
            if args[0] == "exec" {
                // What the plugin logged or printed, its colour codes escaped.
                assert!(said.contains("31mred"), "{args:?} ({config:?}):\n{said}");
            }
            assert!(
                !said.contains('\u{1b}'),
                "colour codes in the log of {args:?} ({config:?}):\n{said}"
            );
        }
        // `plughost run`, logging to a file.
        let log_file = dir.shadow().join("run.log");
        let mut command = dir.command(&["run", "--no-watch", "--health-interval", "0"]);
        with_config(&mut command);
        let mut child = colour_unset(&mut command)
            .current_dir(elsewhere.path())
            .env("RUST_LOG", "debug")
            .stderr(std::fs::File::create(&log_file).unwrap())
            .spawn()
            .unwrap();
        let running = eventually(Duration::from_secs(20), || {
            std::fs::read_to_string(&log_file).is_ok_and(|log| log.contains("plugin(s) running"))
        });
        terminate(&child);
        exits_within(&mut child, Duration::from_secs(20));
        let said = std::fs::read_to_string(&log_file).unwrap();
        assert!(running, "{said}");
        assert!(said.contains("loaded chatty"), "{said}");
        assert!(!said.contains('\u{1b}'), "colour codes in the log:\n{said}");
    }
}

#[test]
fn at_a_terminal_logs_are_coloured_unless_no_color_is_set() {
    let (dir, _folder, json) = folder_and_json_settings();
    let exec = |no_color: Option<&str>, config: Option<&Path>| {
        let mut command = dir.command(&["exec", "chatty", "x"]);
        if let Some(file) = config {
            command.arg("--config").arg(file);
        }
        colour_unset(&mut command).env("RUST_LOG", "info");
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let elsewhere = tempfile::tempdir().unwrap();
        command.current_dir(elsewhere.path());
        let said = on_a_terminal(command);
        assert!(said.contains("chatty info about x"), "{said}");
        said.contains('\u{1b}')
    };
    assert!(exec(None, None), "a person at a terminal gets colour");
    assert!(!exec(Some("1"), None), "NO_COLOR=1 turns it off");
    // no-color.org: set and not empty.
    assert!(exec(Some(""), None), "an empty NO_COLOR is not set");
    assert!(!exec(None, Some(&json)), "JSON lines are never coloured");
}

/// Runs `command` with its stderr on a new pseudo-terminal (stdout piped); what it wrote there.
fn on_a_terminal(mut command: Command) -> String {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    // SAFETY: plain calls on a descriptor this function owns; `name` is a buffer of the length
    // given, and ptsname_r writes a NUL-terminated path into it.
    let (master, path) = unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(master), 0, "grantpt");
        assert_eq!(libc::unlockpt(master), 0, "unlockpt");
        let mut name = [0 as libc::c_char; 256];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_str()
            .unwrap()
            .to_owned();
        (std::fs::File::from_raw_fd(master), path)
    };
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .unwrap();
    // Read while it runs; the read fails (EIO) once every descriptor of the terminal is closed.
    let reader = std::thread::spawn(move || {
        let mut master = master;
        let mut said = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut chunk) {
            said.extend_from_slice(&chunk[..n]);
        }
        said
    });
    let out = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(terminal)
        .output()
        .unwrap();
    // The command holds the terminal's descriptor until dropped.
    drop(command);
    assert!(out.status.success(), "{}", stdout(&out));
    String::from_utf8_lossy(&reader.join().unwrap()).into_owned()
}
