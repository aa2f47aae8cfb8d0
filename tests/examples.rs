//! The example plugins load from real built libraries, answer correctly, and shut down.

use std::sync::Arc;

use plughost::{CallError, PluginHealth};
use plughost_tests::{stderr, stdout, PluginDir};

#[test]
fn transform_upper_lower_reverse() {
    let dir = PluginDir::new();
    let file = dir.add("transform");
    let host = dir.host();
    let mut out = Vec::with_capacity(64);
    for (config, expected) in [
        (r#"{"mode":"upper"}"#, "HÉLLO WORLD"),
        (r#"{"mode":"lower"}"#, "héllo world"),
        (r#"{"mode":"reverse"}"#, "dlRoW oLléh"),
        ("", "HÉLLO WORLD"),
    ] {
        let handle = host.load_file(&file, config.as_bytes()).unwrap();
        handle
            .call_into("hélLo WoRld".as_bytes(), &mut out)
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out), expected, "config {config}");
        drop(handle);
        host.unload("transform").unwrap();
    }
}

#[test]
fn filter_keeps_numbers_matching_the_rule() {
    let dir = PluginDir::new();
    let file = dir.add("filter");
    let host = dir.host();
    let handle = host
        .load_file(&file, br#"{"rule":"ge","value":5}"#)
        .unwrap();
    let out = handle.call(b"[1, 5, 7.5, -3, 10]").unwrap();
    assert_eq!(&*out, b"[5,7.5,10]");
    drop(out);

    let error = handle.call(b"not json").map(|_| ()).unwrap_err();
    assert!(matches!(error, CallError::Failed { .. }), "{error}");
    assert!(error.to_string().contains("plugin filter"), "{error}");
    assert!(error.to_string().contains("invalid JSON input"), "{error}");
    host.unload("filter").expect("filter shuts down cleanly");
}

#[test]
fn counter_counts_across_calls_and_threads_and_reports_at_shutdown() {
    let dir = PluginDir::new();
    let file = dir.add("counter");
    let report = dir.path().join("counter-report.txt");
    let config = format!(
        r#"{{"start": 100, "step": 2, "report_file": {:?}}}"#,
        report.to_str().unwrap()
    );
    let host = Arc::new(dir.host());
    let handle = host.load_file(&file, config.as_bytes()).unwrap();

    let mut out = Vec::new();
    handle.call_into(b"", &mut out).unwrap();
    assert_eq!(out, b"102");

    // Many threads share one handle; every call counts exactly once.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                let mut out = Vec::with_capacity(32);
                for _ in 0..1000 {
                    handle.call_into(b"", &mut out).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    handle.call_into(b"", &mut out).unwrap();
    assert_eq!(out, (100 + 2 * 4002).to_string().as_bytes());
    assert_eq!(handle.health().unwrap(), PluginHealth::Healthy);

    assert!(!report.exists(), "shutdown has not run yet");
    drop(handle);
    host.shutdown();
    let report = std::fs::read_to_string(&report).expect("shutdown wrote its report");
    assert_eq!(
        report.trim(),
        format!("counter shut down at {}", 100 + 2 * 4002)
    );
}

#[test]
fn counter_rejects_invalid_config_at_init() {
    let dir = PluginDir::new();
    let file = dir.add("counter");
    let host = dir.host();
    let error = host.load_file(&file, br#"{"step": 0}"#).unwrap_err();
    let message = error.to_string();
    assert!(message.contains(file.to_str().unwrap()), "{message}");
    assert!(message.contains("step must be at least 1"), "{message}");

    let error = host.load_file(&file, br#"{"stepp": 1}"#).unwrap_err();
    assert!(
        error.to_string().contains("unknown field `stepp`"),
        "{error}"
    );
    assert!(host.plugins().is_empty());
}

#[test]
fn output_larger_than_the_host_buffer_is_allocated_by_the_plugin_and_correct() {
    let dir = PluginDir::new();
    let file = dir.add("transform");
    let host = dir.host();
    let handle = host.load_file(&file, b"").unwrap();
    let input = "abc".repeat(10_000);
    let mut out = Vec::with_capacity(8);
    handle.call_into(input.as_bytes(), &mut out).unwrap();
    assert_eq!(out, input.to_uppercase().as_bytes());
    let owned = handle.call(input.as_bytes()).unwrap();
    assert_eq!(&*owned, input.to_uppercase().as_bytes());
}

#[test]
fn load_all_loads_every_example_and_unloading_deletes_shadow_copies() {
    let dir = PluginDir::new();
    for p in ["transform", "filter", "counter"] {
        dir.add(p);
    }
    std::fs::create_dir(dir.path().join("sources")).unwrap();
    dir.write("README.txt", b"not a library, ignored");
    let host = dir.host();
    let report = host.load_all().unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let mut names: Vec<_> = report.loaded.iter().map(|i| i.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["counter", "filter", "transform"]);
    assert_eq!(dir.copies_held(), 3, "one private copy per library");
    #[cfg(target_os = "linux")]
    {
        // In sealed memory files: nothing written to disk, and nothing can change them.
        assert!(dir.shadow_files().is_empty(), "{:?}", dir.shadow_files());
        let copies: Vec<_> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| {
                let fd = fd.ok()?.path();
                let target = std::fs::read_link(&fd).ok()?;
                let ours = format!("/memfd:plughost:{}/", dir.path().display());
                target.to_string_lossy().starts_with(&ours).then_some(fd)
            })
            .collect();
        assert_eq!(copies.len(), 3);
        for copy in copies {
            use std::io::Write;
            let written = std::fs::OpenOptions::new()
                .write(true)
                .open(&copy)
                .and_then(|mut file| file.write_all(b"\x7fELF overwritten"));
            assert!(written.is_err(), "{copy:?} could be written");
        }
    }

    let info = host.handle("transform").unwrap().info().unwrap();
    assert_eq!(info.version.to_string(), "1.0.0");
    assert_eq!(info.api_version, plughost::api_version());
    assert_eq!(info.config_schema[0].key, "mode");
    assert_eq!(info.config_schema[0].default.as_deref(), Some("\"upper\""));

    host.shutdown();
    assert!(host.plugins().is_empty());
    assert_eq!(dir.copies_held(), 0, "copies deleted");
    assert!(matches!(
        host.handle("transform"),
        Err(CallError::NotFound { .. })
    ));
}

#[test]
fn cli_exec_prints_the_answer() {
    let dir = PluginDir::new();
    dir.add("transform");
    dir.add("filter");
    let out = dir.cli(&[
        "exec",
        "transform",
        "hello",
        "--init",
        r#"{"mode":"upper"}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "HELLO\n");

    let out = dir.cli(&[
        "exec",
        "filter",
        "[3, 4, 5]",
        "--init",
        r#"{"rule":"lt","value":5}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "[3,4]\n");
}

#[test]
fn cli_exec_reads_stdin_and_reports_failures() {
    use std::io::Write;
    let dir = PluginDir::new();
    dir.add("transform");
    let mut child = dir
        .command(&["exec", "transform", "-", "--init", r#"{"mode":"reverse"}"#])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"stressed").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(stdout(&out), "desserts\n");

    let out = dir.cli(&["exec", "nosuch", "x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no plugin named \"nosuch\""),
        "{}",
        stderr(&out)
    );

    let out = dir.cli(&["exec", "transform", "x", "--init", "{mode"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--init is not valid JSON"),
        "{}",
        stderr(&out)
    );

    let out = dir.cli(&["exec", "transform", "x", "--init", r#"{"mode":"shout"}"#]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("libtransform") && err.contains("unknown variant `shout`"),
        "{err}"
    );
}

#[test]
fn cli_list_and_inspect() {
    let dir = PluginDir::new();
    let transform = dir.add("transform");
    dir.add("counter");
    dir.write("broken.so", b"garbage");
    let out = dir.cli(&["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let row = |file: &str| {
        table
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("no row for {file} in\n{table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let api = plughost::api_version();
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(
        row("libtransform"),
        format!("transform 1.0.0 {api} in-process libtransform.so - ok")
    );
    assert_eq!(
        row("libcounter"),
        format!("counter 1.0.0 {api} in-process libcounter.so - ok")
    );
    assert!(
        row("broken.so").starts_with("- - - - broken.so - refused: "),
        "{table}"
    );

    let out = std::process::Command::new(plughost_tests::plughost())
        .arg("inspect")
        .arg(&transform)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("transform 1.0.0\n"), "{text}");
    assert!(
        text.contains("Upper-cases, lower-cases or reverses text"),
        "{text}"
    );
    let schema_row = text
        .lines()
        .find(|l| l.trim_start().starts_with("mode"))
        .unwrap();
    assert_eq!(
        schema_row.split_whitespace().collect::<Vec<_>>().join(" "),
        "mode string no \"upper\" upper, lower or reverse"
    );
}

#[test]
fn cli_run_loads_and_shuts_down_cleanly_on_sigterm() {
    let dir = PluginDir::new();
    dir.add("counter");
    dir.add("transform");
    dir.write("junk.so", b"junk");
    let child = dir.spawn_run();
    // Wait until both plugins are loaded: their shadow copies exist.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while dir.copies_held_by(child.id()) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "plughost run never loaded the plugins"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    plughost_tests::terminate(&child);
    let out = child.wait_with_output().unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("loaded counter 1.0.0 from"), "{log}");
    assert!(log.contains("loaded transform 1.0.0 from"), "{log}");
    assert!(log.contains("junk.so") && log.contains("refused"), "{log}");
    assert!(log.contains("unloaded counter 1.0.0"), "{log}");
    assert!(log.contains("unloaded transform 1.0.0"), "{log}");
    // Newest first: transform (loaded after counter) is unloaded before it.
    assert!(log.find("unloaded transform").unwrap() < log.find("unloaded counter").unwrap());
    assert!(dir.shadow_files().is_empty());
}

/// Each plugin loaded on Linux keeps its memory-file copy open. Past half the descriptor limit
/// the host goes on loading, with copies in the shadow folder, and says so once.
#[test]
#[cfg(target_os = "linux")]
fn more_plugins_than_half_the_descriptor_limit_still_load() {
    const PLACEHOLDER: &[u8] = b"tmpl_000000";
    let dir = PluginDir::new();
    let template = plughost_tests::bytes_of("fixture-template");
    for i in 0..40 {
        let mut bytes = template.clone();
        let name = format!("tmpl_{i:06}");
        let at: Vec<usize> = (0..bytes.len() - PLACEHOLDER.len())
            .filter(|&j| &bytes[j..j + PLACEHOLDER.len()] == PLACEHOLDER)
            .collect();
        assert!(!at.is_empty());
        for j in at {
            bytes[j..j + PLACEHOLDER.len()].copy_from_slice(name.as_bytes());
        }
        dir.write(&format!("lib{name}.so"), &bytes);
    }
    // `plughost run` with at most 64 descriptors: 32 memory files, the rest on disk.
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\""])
        .arg(plughost_tests::plughost())
        .args(dir.command(&["run"]).get_args())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let lines = plughost_tests::lines_of(&mut child);
    let (mut loaded, mut said) = (0, 0);
    while loaded < 40 {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{loaded} plugins loaded"));
        if line.contains("32 plugin libraries are held in memory files, half the descriptor limit")
        {
            said += 1;
        } else if line.contains("loaded tmpl_") {
            loaded += 1;
        } else {
            assert!(!line.contains("WARN"), "{line}");
        }
    }
    assert_eq!(said, 1, "said once");
    assert_eq!(dir.copies_held_by(child.id()), 40);
    assert_eq!(dir.shadow_files().len(), 8);
    plughost_tests::terminate(&child);
    let status = plughost_tests::exits_within(&mut child, std::time::Duration::from_secs(30));
    assert!(status.success());
    assert!(dir.shadow_files().is_empty(), "{:?}", dir.shadow_files());
}
