//! Trust: file ownership and modes (`host.check_ownership`), end to end. A library, its
//! folder and the folders above must be owned by the host's user or root and not writable by
//! group or others, as sshd's StrictModes; otherwise the file is refused with one line naming
//! it, the rule and the fix.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use plughost::{Host, HostConfig, HostEvent, LoadError, OwnershipCheck};
use plughost_tests::{bytes_of, settings, stderr, stdout, wait_for, PluginDir};

const WAIT: Duration = Duration::from_secs(20);
const FILE: &str = "libversioned.so";
/// The user `nobody`: someone other than the host's user and root.
const OTHER_USER: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A host on `dir` with `host.check_ownership` set to `check`.
fn host(dir: &PluginDir, check: OwnershipCheck) -> Host {
    let mut config = dir.config();
    config.host.check_ownership = check;
    Host::new(config).unwrap()
}

/// The one refusal `load_all` reports, as its message.
fn only_refusal(host: &Host) -> String {
    let report = host.load_all().unwrap();
    assert!(report.loaded.is_empty(), "nothing loads: {report:?}");
    let [refusal] = report.refused.as_slice() else {
        panic!("one refusal expected: {report:?}");
    };
    assert!(
        matches!(refusal, LoadError::UnsafeOwnership { .. }),
        "{refusal:?}"
    );
    refusal.to_string()
}

fn answer(handle: &plughost::PluginHandle) -> String {
    let mut out = Vec::with_capacity(64);
    handle.call_into(b"x", &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn a_library_writable_by_group_or_others_is_refused_with_the_chmod_that_fixes_it() {
    let dir = PluginDir::new();
    let library = dir.add("transform");
    for (mode, who) in [
        (0o664, "group"),
        (0o646, "others"),
        (0o666, "group and others"),
    ] {
        chmod(&library, mode);
        let message = only_refusal(&host(&dir, OwnershipCheck::On));
        let shown = library.display();
        assert_eq!(
            message,
            format!(
                "{shown}: refused: the file {shown} is writable by {who} (mode 0{mode:o}), so \
                 another user could change it; fix: `chmod go-w {shown}` (host.check_ownership)"
            )
        );
    }
    // Fixed as the message says, it loads.
    chmod(&library, 0o644);
    let report = host(&dir, OwnershipCheck::On).load_all().unwrap();
    assert_eq!(report.loaded.len(), 1, "{report:?}");
}

#[test]
fn a_library_owned_by_another_user_is_refused_with_the_chown_that_fixes_it() {
    if !is_root() {
        eprintln!("skipped: giving a file to another user needs root (`id -u` is not 0)");
        return;
    }
    let dir = PluginDir::new();
    let library = dir.add("transform");
    std::os::unix::fs::chown(&library, Some(OTHER_USER), None).unwrap();
    let message = only_refusal(&host(&dir, OwnershipCheck::On));
    assert!(
        message.contains(&format!(
            "the file {} belongs to user {OTHER_USER}, not to the host's user (0) or root",
            library.display()
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!("fix: `chown 0 {}`", library.display())),
        "{message}"
    );
}

#[test]
fn a_plugins_folder_writable_by_others_is_refused_with_the_chmod_that_fixes_it() {
    let dir = PluginDir::new();
    dir.add("transform");
    chmod(dir.path(), 0o777);
    let message = only_refusal(&host(&dir, OwnershipCheck::On));
    assert!(
        message.contains(&format!(
            "the folder {} is writable by group and others (mode 0777)",
            dir.path().display()
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!("fix: `chmod go-w {}`", dir.path().display())),
        "{message}"
    );
    // The sticky bit does not make the plugins folder itself safe: others could still add.
    chmod(dir.path(), 0o1777);
    only_refusal(&host(&dir, OwnershipCheck::On));
}

#[test]
fn a_library_linked_from_an_unsafe_folder_is_refused_naming_that_folder() {
    let dir = PluginDir::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let real = elsewhere.path().join("libtransform.so");
    std::fs::copy(plughost_tests::library("transform"), &real).unwrap();
    chmod(&real, 0o755);
    std::os::unix::fs::symlink(&real, dir.path().join("libtransform.so")).unwrap();
    assert_eq!(
        host(&dir, OwnershipCheck::On)
            .load_all()
            .unwrap()
            .loaded
            .len(),
        1
    );
    chmod(elsewhere.path(), 0o777);
    let message = only_refusal(&host(&dir, OwnershipCheck::On));
    let folder = std::fs::canonicalize(elsewhere.path()).unwrap();
    assert!(
        message.contains(&format!("fix: `chmod go-w {}`", folder.display())),
        "{message}"
    );
}

#[test]
fn a_hot_reload_to_a_world_writable_file_is_refused_and_the_old_version_serves() {
    let dir = PluginDir::new();
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let mut config = dir.config();
    config.host.check_ownership = OwnershipCheck::On;
    let host = std::sync::Arc::new(Host::new(config).unwrap());
    let events = host.subscribe();
    let _watcher = host.watch(plughost::WatchOptions::default()).unwrap();
    host.load_all().unwrap();
    let handle = host.handle("versioned").unwrap();
    assert_eq!(answer(&handle), "1.0.0:x");

    // A new build, writable by everyone, renamed into place.
    let temp = dir.path().join(".staged");
    std::fs::write(&temp, bytes_of("fixture-versioned-v2")).unwrap();
    chmod(&temp, 0o666);
    let target = dir.path().join(FILE);
    std::fs::rename(&temp, &target).unwrap();
    let event = wait_for(&events, WAIT, |e| matches!(e, HostEvent::Refused { .. }));
    let HostEvent::Refused { reason, kept, .. } = event else {
        unreachable!()
    };
    assert!(
        reason.contains(&format!("fix: `chmod go-w {}`", target.display())),
        "{reason}"
    );
    let (name, version) = kept.expect("the old version is kept");
    assert_eq!(
        (name.as_str(), version.to_string()),
        ("versioned", "1.0.0".into())
    );
    assert_eq!(
        answer(&handle),
        "1.0.0:x",
        "still served by the old version"
    );

    // Fixed, a reload on request takes the new build.
    chmod(&target, 0o644);
    host.reload("versioned").unwrap();
    assert_eq!(answer(&handle), "2.0.0:x");
}

#[test]
fn off_loads_what_on_refuses() {
    let dir = PluginDir::new();
    let library = dir.add("transform");
    chmod(&library, 0o666);
    chmod(dir.path(), 0o777);
    let report = host(&dir, OwnershipCheck::Off).load_all().unwrap();
    assert_eq!(report.loaded.len(), 1, "{report:?}");
    assert!(report.refused.is_empty(), "{report:?}");
}

#[test]
fn the_default_is_auto_which_refuses_as_root_and_only_warns_otherwise() {
    assert_eq!(
        HostConfig::default().host.check_ownership,
        OwnershipCheck::Auto
    );
    let dir = PluginDir::new();
    let library = dir.add("transform");
    chmod(&library, 0o664);
    let report = dir.host().load_all().unwrap();
    if is_root() {
        assert!(report.loaded.is_empty(), "refused as root: {report:?}");
        assert!(
            matches!(report.refused[..], [LoadError::UnsafeOwnership { .. }]),
            "{report:?}"
        );
    } else {
        assert_eq!(report.loaded.len(), 1, "not root: loaded with a warning");
    }
}

#[test]
fn config_check_and_list_show_the_refusal() {
    let dir = PluginDir::new();
    let library = dir.add("transform");
    chmod(&library, 0o664);
    let (_work, config) = settings("[host]\ncheck_ownership = \"on\"\n");
    let config = config.to_str().unwrap();
    let fix = format!("chmod go-w {}", library.display());

    let check = dir.cli(&["--config", config, "config", "check"]);
    assert!(!check.status.success(), "{}", stdout(&check));
    let said = format!("{}{}", stdout(&check), stderr(&check));
    assert!(said.contains(&fix), "{said}");

    let list = dir.cli(&["--config", config, "list"]);
    let said = format!("{}{}", stdout(&list), stderr(&list));
    assert!(said.contains("refused: the file"), "{said}");
    assert!(said.contains(&fix), "{said}");
}

#[test]
fn the_shadow_folder_stays_private() {
    let dir = PluginDir::new();
    // Made readable by all beforehand: the host tightens its own folder back.
    chmod(dir.shadow(), 0o777);
    let _host = dir.host();
    let mode = std::fs::metadata(dir.shadow())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    if is_root() {
        // Someone else's folder is refused outright: they could swap a checked copy.
        std::os::unix::fs::chown(dir.shadow(), Some(OTHER_USER), None).unwrap();
        let error = Host::new(dir.config()).err().expect("refused");
        assert!(
            error.to_string().contains("must be private to this user"),
            "{error}"
        );
    }
}
