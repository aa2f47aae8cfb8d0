//! Hostile files: a damaged library, a named pipe or a folder where a file should be, a
//! library whose constructor misbehaves. The host refuses them with one line naming the file
//! and goes on; nothing crashes, hangs or stops the watch.

use std::process::Stdio;
use std::time::{Duration, Instant};

use plughost::{HostEvent, LoadError};
use plughost_tests::{
    bytes_of, exits_within, lines_of, mkfifo, settings, stderr, terminate, wait_for, wait_line,
    PluginDir,
};

/// The host goes on: a good plugin added to the folder loads.
fn still_serves(dir: &PluginDir, host: &plughost::Host) {
    dir.add("transform");
    let report = host.load_all().unwrap();
    assert!(
        report.loaded.iter().any(|p| p.name == "transform"),
        "{report:?}"
    );
}

#[test]
fn a_named_pipe_in_the_folder_is_refused_and_the_watch_goes_on() {
    let dir = PluginDir::new();
    let mut child = dir.spawn_run();
    let lines = lines_of(&mut child);
    wait_line(&lines, "watching", Duration::from_secs(30));
    mkfifo(&dir.path().join("libpipe.so"));
    let line = wait_line(&lines, "libpipe.so", Duration::from_secs(10));
    assert!(
        line.contains("libpipe.so: not a regular file: it is a named pipe (FIFO)"),
        "{line}"
    );
    // Nothing is stuck: a plugin written next still loads, and a signal still ends the host.
    dir.add("transform");
    wait_line(&lines, "loaded transform", Duration::from_secs(10));
    terminate(&child);
    assert!(exits_within(&mut child, Duration::from_secs(10)).success());
}

#[test]
fn inspect_says_what_a_path_is_that_is_not_a_file() {
    let dir = PluginDir::new();
    let pipe = dir.path().join("libpipe.so");
    mkfifo(&pipe);
    let out = dir.cli(&["inspect", pipe.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("libpipe.so: not a regular file: it is a named pipe (FIFO)"),
        "{}",
        stderr(&out)
    );
    let folder = dir.path().join("libfolder.so");
    std::fs::create_dir(&folder).unwrap();
    let out = dir.cli(&["inspect", folder.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a regular file: it is a folder"),
        "{}",
        stderr(&out)
    );
}

/// The file range of section `name` in an ELF library.
fn section(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(bytes).unwrap();
    let section = file.section_by_name(name).unwrap();
    let (start, size) = section.file_range().unwrap();
    start as usize..(start + size) as usize
}

/// A built fixture whose `.dynamic` points the loader's symbol tables at nowhere: the preflight
/// (which reads sections) passes it, `ld.so` (which trusts `.dynamic`) crashes on it.
fn damaged_dynamic() -> Vec<u8> {
    let mut bytes = bytes_of("fixture-echo");
    let dynamic = section(&bytes, ".dynamic");
    for entry in bytes[dynamic].chunks_exact_mut(16) {
        let tag = i64::from_le_bytes(entry[..8].try_into().unwrap());
        // DT_STRTAB, DT_SYMTAB, DT_GNU_HASH.
        if matches!(tag, 5 | 6 | 0x6fff_fef5) {
            entry[8..].copy_from_slice(&0x7fff_0000_0000u64.to_le_bytes());
        }
    }
    bytes
}

#[test]
fn a_library_that_crashes_the_loader_is_refused_and_the_host_lives() {
    let dir = PluginDir::new();
    let file = dir.write("libdamaged.so", &damaged_dynamic());
    // In-process: the probe takes the crash.
    let host = dir.host();
    let error = host.open(&file).unwrap_err();
    assert!(matches!(error, LoadError::ProbeRefused { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "{}: refused: the library crashed the loader (SIGSEGV) while being checked",
            file.display()
        )
    );
    // The host is fine, and the command line says the same in one line.
    still_serves(&dir, &host);
    let out = dir.cli(&["inspect", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused: the library crashed the loader (SIGSEGV)"),
        "{}",
        stderr(&out)
    );
}

/// A built fixture one of whose symbols claims a version no table defines: `ld.so` indexes its
/// version table with it unchecked, reading whatever lies past it.
fn damaged_versions() -> Vec<u8> {
    let mut bytes = bytes_of("fixture-echo");
    let versions = section(&bytes, ".gnu.version");
    // Entry 1 (entry 0 is the null symbol): a version index far past any defined one.
    bytes[versions.start + 2..versions.start + 4].copy_from_slice(&140u16.to_le_bytes());
    bytes
}

#[test]
fn a_library_whose_versions_point_past_their_table_is_refused_before_loading() {
    let dir = PluginDir::new();
    let file = dir.write("libversions.so", &damaged_versions());
    let host = dir.host();
    let error = host.open(&file).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: not a loadable shared library: damaged library: symbol 1 has version index \
             140, which no version table defines",
            file.display()
        )
    );
    still_serves(&dir, &host);
}

/// A built fixture whose header says its layout description is the header itself.
fn damaged_layout() -> Vec<u8> {
    use object::{Object, ObjectSymbol};
    let mut bytes = bytes_of("fixture-echo");
    let header = {
        let file = object::File::parse(&*bytes).unwrap();
        file.dynamic_symbols()
            .find(|s| s.name() == Ok(plugin_api::ffi::HEADER_SYMBOL))
            .unwrap()
            .address()
    };
    // The layout pointer (after magic, header version and API version) is filled in by a
    // relative relocation; point its addend at the header.
    let rela = section(&bytes, ".rela.dyn");
    let mut patched = false;
    for entry in bytes[rela].chunks_exact_mut(24) {
        let offset = u64::from_le_bytes(entry[..8].try_into().unwrap());
        if offset == header + 24 {
            entry[16..].copy_from_slice(&header.to_le_bytes());
            patched = true;
        }
    }
    assert!(patched, "no relocation fills the layout pointer");
    bytes
}

#[test]
fn a_library_with_a_damaged_layout_is_refused() {
    let dir = PluginDir::new();
    let file = dir.write("libbadlayout.so", &damaged_layout());
    let host = dir.host();
    let error = host.open(&file).unwrap_err();
    assert!(
        matches!(
            error,
            LoadError::ProbeRefused { .. }
                | LoadError::CheckPanicked { .. }
                | LoadError::LayoutMismatch { .. }
        ),
        "{error}"
    );
    assert!(error
        .to_string()
        .starts_with(&format!("{}: ", file.display())));
    still_serves(&dir, &host);
}

#[test]
fn seeded_byte_mutants_are_refused_or_accepted_never_a_crash() {
    let dir = PluginDir::new();
    let original = bytes_of("fixture-echo");
    // A small, fixed generator: the same mutants on every run.
    let mut state: u64 = 0x5eed_1234_abcd_0001;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let dynamic = section(&original, ".dynamic");
    for n in 0..40 {
        let mut bytes = original.clone();
        // Half of them where the loader is most fragile, the others anywhere.
        for _ in 0..8 {
            let at = if n % 2 == 0 {
                dynamic.start + (next() as usize) % dynamic.len()
            } else {
                (next() as usize) % bytes.len()
            };
            bytes[at] = next() as u8;
        }
        let file = dir.write(&format!("libmutant{n}.so"), &bytes);
        let mut child = dir
            .command(&["inspect", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = exits_within(&mut child, Duration::from_secs(60));
        assert!(
            matches!(status.code(), Some(0 | 1)),
            "mutant {n}: plughost inspect ended with {status}"
        );
        std::fs::remove_file(&file).unwrap();
    }
}

#[test]
fn a_named_pipe_in_place_of_the_settings_file_is_refused_and_the_watch_goes_on() {
    let dir = PluginDir::new();
    let (folder, path) = settings("[host]\nwatch = true\n");
    let mut config = plughost::HostConfig::load(&path).unwrap();
    config.host.plugins_dir = dir.path().to_owned();
    config.host.shadow_dir = Some(dir.shadow().to_owned());
    config.host.probe = dir.config().host.probe;
    let host = std::sync::Arc::new(plughost::Host::new(config).unwrap());
    let events = host.subscribe();
    let _watcher = host.watch(plughost::WatchOptions::default()).unwrap();
    std::fs::remove_file(&path).unwrap();
    mkfifo(&path);
    // (The removal may be seen first, and refused as a missing file.)
    wait_for(
        &events,
        Duration::from_secs(10),
        |e| matches!(e, HostEvent::ConfigRefused { reason, .. } if reason.contains("not a regular file")),
    );
    // Replaced by a real file again: applied as usual.
    std::fs::remove_file(&path).unwrap();
    let temp = folder.path().join(".plughost.toml.tmp");
    std::fs::write(&temp, "[plugins.transform]\nenabled = false\n").unwrap();
    std::fs::rename(&temp, &path).unwrap();
    wait_for(&events, Duration::from_secs(10), |e| {
        matches!(e, HostEvent::ConfigApplied { .. })
    });
}

#[test]
fn constructors_run_only_where_the_host_means_them_to() {
    let dir = PluginDir::new();
    dir.add("fixture-ctor");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("constructor.log");
    // Read by the constructor of the library, in whichever process opens it.
    std::env::set_var("PLUGHOST_TEST_CONSTRUCTOR_LOG", &log);
    let host = plughost::Host::new({
        let mut config = dir.config();
        config.plugins.entry("ctor".into()).or_default().enabled = false;
        config
    })
    .unwrap();
    let report = host.load_all().unwrap();
    assert!(
        report.loaded.is_empty() && report.refused.is_empty(),
        "{report:?}"
    );
    let openers = std::fs::read_to_string(&log).unwrap_or_default();
    let me = std::process::id().to_string();
    // Its probe opened it (in another process) to learn its name; this process did not.
    assert!(!openers.is_empty(), "the probe did not run");
    assert!(
        !openers.lines().any(|pid| pid == me),
        "opened in the host: {openers}"
    );
    // Enabled, it starts (and only then runs in the host).
    host.enable("ctor").unwrap();
    assert!(host.handle("ctor").is_ok());
    let openers = std::fs::read_to_string(&log).unwrap();
    assert!(openers.lines().any(|pid| pid == me));

    // What a constructor leaves running in the probe does not hold the host: with this set,
    // the library's constructor starts a `sleep 30` in the probe, holding its output open.
    // (One test for both: the constructor reads this process's environment.)
    std::env::remove_var("PLUGHOST_TEST_CONSTRUCTOR_LOG");
    std::env::set_var("PLUGHOST_TEST_CONSTRUCTOR_SPAWN", "1");
    let other = PluginDir::new();
    let file = other.add("fixture-ctor");
    let started = Instant::now();
    let opened = other.host().open(&file);
    std::env::remove_var("PLUGHOST_TEST_CONSTRUCTOR_SPAWN");
    assert!(opened.is_ok(), "{:?}", opened.err());
    // The `sleep` went with the probe's process group.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_program_that_is_not_a_probe_is_refused_and_leaves_no_verdict() {
    let dir = PluginDir::new();
    let file = dir.add("transform");
    let mut config = dir.config();
    config.host.probe = plughost::ProbeSetting::Program("/bin/true".into());
    let error = plughost::Host::new(config)
        .unwrap()
        .open(&file)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the probe program /bin/true did not answer as a plughost probe does"),
        "{error}"
    );
    // Nothing was remembered: with the real probe the file loads.
    assert!(dir.host().open(&file).is_ok());
}
