//! Adversarial review of issue 16's trust checks: each test reproduces a way around them, or a
//! promise they broke, found in review and fixed since.

use std::path::Path;
use std::time::Duration;

use plughost::{Host, HostConfig, LoadError, Sha256Digest};
use plughost_tests::{bytes_of, plugin_table, stderr, stdout, PluginDir};

const FILE: &str = "libversioned.so";

fn answer(handle: &plughost::PluginHandle) -> String {
    let mut out = Vec::with_capacity(64);
    handle.call_into(b"x", &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Settings that pin plugin `name` to `digest`, on top of `config`.
fn pinned(mut config: HostConfig, name: &str, digest: Sha256Digest) -> HostConfig {
    plugin_table(&mut config, name, serde_json::json!({}), |p| {
        p.sha256 = Some(digest)
    });
    config
}

/// Overwrites every probe verdict remembered in `shadow` with `answer`.
fn rewrite_verdicts(shadow: &Path, answer: &str) -> usize {
    let verdicts = shadow.join("verdicts");
    let mut rewritten = 0;
    for entry in std::fs::read_dir(&verdicts).unwrap() {
        let path = entry.unwrap().path();
        std::fs::write(&path, answer).unwrap();
        rewritten += 1;
    }
    rewritten
}

/// The name the probe reports comes from the library's own process: whatever the probe's
/// stdout ends with. A library can write `ok decoy` there itself (from a destructor, a thread,
/// or a child that leaves the probe's process group), to escape the pin of its real name. The
/// name it gives once loaded is compared with the probe's: the lie is refused, its verdict
/// forgotten, and the next try is held to the real name's pin.
///
/// Reproduced deterministically by writing that verdict where the lying probe leaves it.
#[test]
fn a_library_that_lies_to_the_probe_about_its_name_is_refused_then_held_to_its_pin() {
    let dir = PluginDir::new();
    let file = dir.add("fixture-ctor");
    // A first look: the probe runs, and its verdict (`ok ctor`) is kept.
    let listed = dir.cli(&["list"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    // What the probe's output says once the library has appended its own last line.
    assert_eq!(rewrite_verdicts(dir.shadow(), "ok decoy"), 1);

    let wrong: Sha256Digest = "00".repeat(32).parse().unwrap();
    let host = Host::new(pinned(dir.config(), "ctor", wrong)).unwrap();
    let report = host.load_all().unwrap();
    assert!(
        report.loaded.is_empty(),
        "{} was loaded and started as {:?} although plugins.ctor.sha256 pins another \
         digest",
        file.display(),
        report.loaded.iter().map(|p| &p.name).collect::<Vec<_>>()
    );
    // The lie itself is caught: the library loaded as another plugin than the probe was told.
    assert!(
        matches!(
            report.refused.as_slice(),
            [LoadError::NameMismatch { told, loaded, .. }] if told == "decoy" && loaded == "ctor"
        ),
        "{:?}",
        report.refused
    );
    // And the lying verdict is forgotten: the next try probes again, and the pin refuses it.
    let report = host.load_all().unwrap();
    assert!(
        matches!(report.refused.as_slice(), [LoadError::DigestMismatch { name, .. }] if name == "ctor"),
        "{:?}",
        report.refused
    );
}

/// The same through `plughost list`: the lie shows as the file's refusal, not as `ok`.
#[test]
fn list_shows_a_lie_about_a_name_as_a_refusal() {
    let dir = PluginDir::new();
    dir.add("fixture-ctor");
    assert!(dir.cli(&["list"]).status.success());
    rewrite_verdicts(dir.shadow(), "ok decoy");
    let (_settings, toml) = plughost_tests::settings(&format!(
        "[plugins.ctor]\nsha256 = \"{}\"\n",
        "00".repeat(32)
    ));
    let output = dir.cli(&["--config", toml.to_str().unwrap(), "list"]);
    let shown = stdout(&output);
    assert!(
        shown.contains("misreports its name") && !shown.contains(" ok"),
        "the lie was not caught:\n{shown}{}",
        stderr(&output)
    );
}

/// An operator who pins a plugin (after an incident, say) while another build of it runs must
/// not get "applied" while the unapproved build keeps running: the edit is refused, saying
/// which build runs. (Turning `require_signatures` on, or removing a trusted key, applies at
/// the next load of each file: docs/operations.md says so.)
#[test]
fn pinning_a_running_plugin_to_another_build_is_refused() {
    let dir = PluginDir::new();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let host = Host::new(dir.config()).unwrap();
    host.load_all().unwrap();
    let handle = host.handle("versioned").unwrap();
    assert_eq!(answer(&handle), "1.0.0:x");

    let other = Sha256Digest::of(&bytes_of("fixture-versioned-v2"));
    let config = pinned(dir.config(), "versioned", other);
    let applied = host.reconfigure(config);
    let still_running = host.plugins().iter().any(|p| p.name == "versioned");
    assert!(
        applied.is_err() || !still_running,
        "the edit pinning versioned to {other} was applied ({applied:?}) and the build it \
         refuses still runs"
    );
}

/// A file refused for its pin loads once the operator fixes the pin in plughost.toml, as the
/// refusal's fix ("update plugins.versioned.sha256") says, without touching the file.
#[test]
fn fixing_the_pin_in_the_settings_lets_the_refused_file_load() {
    let dir = PluginDir::new();
    let file = dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let digest = Sha256Digest::of(&std::fs::read(&file).unwrap());
    let wrong: Sha256Digest = "ab".repeat(32).parse().unwrap();
    let host = Host::new(pinned(dir.config(), "versioned", wrong)).unwrap();
    let report = host.load_all().unwrap();
    assert_eq!(report.refused.len(), 1, "{:?}", report.loaded);

    let applied = host.reconfigure(pinned(dir.config(), "versioned", digest));
    assert!(applied.is_ok(), "{applied:?}");
    assert!(
        plughost_tests::eventually(Duration::from_secs(5), || host.handle("versioned").is_ok()),
        "after the pin was fixed to {digest}, versioned still does not run ({applied:?})"
    );
}
