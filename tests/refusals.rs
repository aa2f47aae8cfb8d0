//! Every kind of bad library is refused with a reason that names the file, and the host goes
//! on serving the good ones.

use plughost::LoadError;
use plughost_tests::{library, stderr, system_library, PluginDir};

/// Puts one bad file next to a good plugin, checks the library API's refusal, the CLI's
/// one-line reason and exit code, and that the good plugin still serves.
fn assert_refused(
    dir: &PluginDir,
    file: &std::path::Path,
    expect: &str,
    check: fn(&LoadError) -> bool,
) {
    dir.add("transform");
    let host = dir.host();
    let report = host.load_all().unwrap();
    let refusal = report
        .refused
        .iter()
        .find(|e| e.path() == file)
        .unwrap_or_else(|| panic!("{} was not refused: {report:?}", file.display()));
    assert!(check(refusal), "unexpected kind of refusal: {refusal:?}");
    let message = refusal.to_string();
    assert!(
        message.starts_with(&file.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(expect),
        "{message:?} should say {expect:?}"
    );
    assert!(!message.contains('\n'), "one line: {message:?}");

    // The good plugin is unharmed.
    let mut out = Vec::with_capacity(16);
    host.handle("transform")
        .unwrap()
        .call_into(b"ok", &mut out)
        .unwrap();
    assert_eq!(out, b"OK");

    let out = std::process::Command::new(plughost_tests::plughost())
        .arg("inspect")
        .arg(file)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "inspect must fail for {}",
        file.display()
    );
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&file.display().to_string()) && err.contains(expect),
        "{err}"
    );
}

#[test]
fn empty_file() {
    let dir = PluginDir::new();
    let file = dir.write("empty.so", b"");
    assert_refused(&dir, &file, "the file is empty", |e| {
        matches!(e, LoadError::Empty { .. })
    });
}

#[test]
fn random_bytes() {
    let dir = PluginDir::new();
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let file = dir.write("random.so", &bytes);
    assert_refused(&dir, &file, "unknown file format", |e| {
        matches!(e, LoadError::NotALibrary { .. })
    });
}

#[test]
fn text_file_named_like_a_library() {
    let dir = PluginDir::new();
    let file = dir.write("notes.so", b"# just some notes\nnot a library\n");
    assert_refused(&dir, &file, "it is a text file", |e| {
        matches!(e, LoadError::NotALibrary { .. })
    });
}

#[test]
fn real_shared_library_that_is_not_a_plugin() {
    let dir = PluginDir::new();
    let file = dir.path().join("libc-copy.so");
    std::fs::copy(system_library(), &file).unwrap();
    assert_refused(&dir, &file, "does not export PLUGHOST_PLUGIN_HEADER", |e| {
        matches!(e, LoadError::NotAPlugin { .. })
    });
}

#[test]
fn truncated_plugin() {
    let dir = PluginDir::new();
    let bytes = std::fs::read(library("counter")).unwrap();
    let file = dir.write("libtruncated.so", &bytes[..bytes.len() / 2]);
    assert_refused(&dir, &file, "damaged or truncated", |e| {
        matches!(e, LoadError::NotALibrary { .. })
    });
}

#[test]
fn executable_renamed_to_a_library() {
    let dir = PluginDir::new();
    let file = dir.path().join("plughost.so");
    std::fs::copy(plughost_tests::plughost(), &file).unwrap();
    assert_refused(
        &dir,
        &file,
        "an executable program, not a shared library",
        |e| matches!(e, LoadError::NotALibrary { .. }),
    );
}

#[test]
fn incompatible_plugin_api_major_version() {
    let dir = PluginDir::new();
    let file = dir.add("fixture-api-v2");
    assert_refused(
        &dir,
        &file,
        "plugin-api 2.0.0 is incompatible with this host's plugin-api 1.",
        |e| matches!(e, LoadError::IncompatibleApi { found, .. } if found.major == 2),
    );
}

#[test]
fn vtable_layout_differs() {
    let dir = PluginDir::new();
    let file = dir.add("fixture-layout-drift");
    assert_refused(&dir, &file, "FFI layout differs", |e| {
        matches!(e, LoadError::LayoutMismatch { summary, .. }
            if summary.contains("vtable.execute()") && summary.contains("u64 found"))
    });
}

#[test]
fn two_libraries_with_the_same_plugin_name() {
    let dir = PluginDir::new();
    dir.add_as("counter", "libcounter-a.so");
    dir.add_as("counter", "libcounter-b.so");
    let host = dir.host();
    let report = host.load_all().unwrap();
    assert_eq!(report.loaded.len(), 1);
    let [refusal] = &report.refused[..] else {
        panic!("{report:?}")
    };
    assert!(matches!(refusal, LoadError::DuplicateName { .. }));
    let message = refusal.to_string();
    assert!(message.contains("libcounter-b.so"), "{message}");
    assert!(message.contains("libcounter-a.so"), "{message}");
    assert!(
        message.contains("\"counter\" is already loaded"),
        "{message}"
    );
    // The refused duplicate left no shadow copy behind; the first one serves.
    assert_eq!(dir.copies_held(), 1);
    let mut out = Vec::new();
    host.handle("counter")
        .unwrap()
        .call_into(b"", &mut out)
        .unwrap();
    assert_eq!(out, b"1");

    let out = dir.cli(&["list"]);
    let table = plughost_tests::stdout(&out);
    assert!(
        table.contains("refused: plugin \"counter\" is already provided by libcounter-a.so"),
        "{table}"
    );
}

#[test]
fn missing_plugins_folder_is_a_clear_error() {
    let dir = PluginDir::new();
    let out = std::process::Command::new(plughost_tests::plughost())
        .args(["list", "--plugins-dir", "/nonexistent/plughost-plugins"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot read the plugins folder /nonexistent/plughost-plugins"));
    drop(dir);
}

#[test]
fn refused_files_leave_no_shadow_copies() {
    let dir = PluginDir::new();
    dir.add("fixture-api-v2");
    dir.add("fixture-layout-drift");
    dir.write("junk.so", b"junk");
    let host = dir.host();
    let report = host.load_all().unwrap();
    assert_eq!(report.refused.len(), 3);
    assert_eq!(dir.copies_held(), 0);
}

#[test]
fn corrupted_section_headers_are_refused_without_harm() {
    // Section headers are what the preflight parses (the loader never reads them), so damage
    // there must give a refusal or a normal load, never a crash or a panic.
    let dir = PluginDir::new();
    let good = std::fs::read(library("transform")).unwrap();
    let section_headers = u64::from_le_bytes(good[0x28..0x30].try_into().unwrap()) as usize;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..40 {
        let mut bytes = good.clone();
        for _ in 0..8 {
            let at = section_headers + (next() as usize) % (bytes.len() - section_headers);
            bytes[at] = next() as u8;
        }
        // Some corruptions put huge values in address and size fields.
        let at = section_headers + 64 * (1 + (next() as usize) % 20) + 16;
        if at + 8 <= bytes.len() {
            bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        }
        dir.write(&format!("libdamaged{i}.so"), &bytes);
    }
    let host = dir.host();
    let report = host.load_all().unwrap();
    assert_eq!(report.loaded.len() + report.refused.len(), 40);
    for error in &report.refused {
        assert!(error.to_string().contains("libdamaged"), "{error}");
    }
}

#[test]
fn inspect_checks_a_configuration_without_starting_the_plugin() {
    let dir = PluginDir::new();
    let counter = dir.add("counter");
    let inspect = |config: &str| {
        std::process::Command::new(plughost_tests::plughost())
            .arg("inspect")
            .arg(&counter)
            .args(["--init", config])
            .output()
            .unwrap()
    };
    assert!(inspect(r#"{"start": 5}"#).status.success());
    let out = inspect(r#"{"step": 0}"#);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("plugin counter does not accept the configuration"),
        "{err}"
    );
    assert!(err.contains("step must be at least 1"), "{err}");
    assert!(err.contains("libcounter.so"), "{err}");
}

/// A library refused after `dlopen` that cannot leave memory (linked `-z nodelete`) keeps its
/// private copy's path for good: the loader knows a library by that path, and would hand the
/// refused one back for whatever memory file took the number next.
#[test]
#[cfg(target_os = "linux")]
fn a_refused_library_that_stays_in_memory_never_stands_in_for_another() {
    let dir = PluginDir::new();
    let drift = dir.add("fixture-drift-nodelete");
    let echo = dir.add("fixture-echo");
    let host = dir.host();
    for _ in 0..3 {
        let error = host.open(&drift).unwrap_err();
        assert!(matches!(error, LoadError::LayoutMismatch { .. }), "{error}");
        let library = host.open(&echo).unwrap();
        assert_eq!(library.info().name, "echo");
    }
    // The same across hosts in one process: the loader is the process's.
    drop(host);
    let host = dir.host();
    assert_eq!(host.open(&echo).unwrap().info().name, "echo");
}
