//! Trust, end to end: pinned digests (`[plugins.NAME] sha256`) and minisign signatures
//! (`[host] require_signatures`, `trusted_keys`) with real plugins, real keys made by
//! `plughost keygen`, signatures made by `plughost sign`, `cargo xtask build-plugins --sign`
//! and the `minisign` tool itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use plughost::{
    Host, HostConfig, HostEvent, LoadError, ProbeSetting, Sha256Digest, SignatureStatus,
};
use plughost_tests::{
    bytes_of, keygen, mkfifo, plugin_table, rebuilt, sign, stderr, stdout, wait_for, KeyPair,
    PluginDir,
};

const WAIT: Duration = Duration::from_secs(20);
const FILE: &str = "libversioned.so";

fn answer(handle: &plughost::PluginHandle) -> String {
    let mut out = Vec::with_capacity(64);
    handle.call_into(b"x", &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn signature_of(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".minisig");
    name.into()
}

/// Settings that require signatures by `keys`.
fn requiring(dir: &PluginDir, keys: &[&str]) -> HostConfig {
    let mut config = dir.config();
    config.host.require_signatures = true;
    config.host.trusted_keys = keys.iter().map(|k| k.parse().unwrap()).collect();
    config
}

fn refusal(host: &Host) -> LoadError {
    let mut report = host.load_all().unwrap();
    assert!(report.loaded.is_empty(), "loaded {:?}", report.loaded);
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    report.refused.remove(0)
}

// --- Pinning ---

#[test]
fn a_pinned_build_loads_and_any_other_is_refused_naming_both_digests() {
    let dir = PluginDir::new();
    let file = dir.add_as("fixture-versioned-v1", FILE);
    let digest = Sha256Digest::of(&std::fs::read(&file).unwrap());

    let mut config = dir.config();
    plugin_table(&mut config, "versioned", serde_json::json!({}), |p| {
        p.sha256 = Some(digest)
    });
    let host = Host::new(config).unwrap();
    let report = host.load_all().unwrap();
    assert_eq!(report.loaded.len(), 1, "{:?}", report.refused);
    drop(host);

    let wrong: Sha256Digest = "ab".repeat(32).parse().unwrap();
    let mut config = dir.config();
    plugin_table(&mut config, "versioned", serde_json::json!({}), |p| {
        p.sha256 = Some(wrong)
    });
    let error = refusal(&Host::new(config).unwrap());
    assert!(
        matches!(&error, LoadError::DigestMismatch { name, .. } if name == "versioned"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with(&file.display().to_string()),
        "{message}"
    );
    assert!(message.contains(&digest.to_string()), "{message}");
    assert!(message.contains(&wrong.to_string()), "{message}");
    assert!(
        message.contains("update plugins.versioned.sha256 in plughost.toml"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1);
}

#[test]
fn without_a_probe_the_pin_is_checked_after_loading_and_before_init() {
    let dir = PluginDir::new();
    dir.add_as("fixture-versioned-v1", FILE);
    let mut config = dir.config();
    config.host.probe = ProbeSetting::Off;
    plugin_table(&mut config, "versioned", serde_json::json!({}), |p| {
        p.sha256 = Some("00".repeat(32).parse().unwrap())
    });
    let host = Host::new(config).unwrap();
    let events = host.subscribe();
    let error = refusal(&host);
    assert!(
        matches!(error, LoadError::DigestMismatch { .. }),
        "{error:?}"
    );
    // Never started: no Loaded event, only the refusal.
    let seen: Vec<HostEvent> = events.try_iter().collect();
    assert!(
        !seen.iter().any(|e| matches!(e, HostEvent::Loaded { .. })),
        "{seen:?}"
    );
}

#[test]
fn a_hot_reload_of_another_build_is_refused_while_the_pinned_one_serves() {
    let dir = PluginDir::new();
    let file = dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    let digest = Sha256Digest::of(&std::fs::read(&file).unwrap());
    let mut config = dir.config();
    plugin_table(&mut config, "versioned", serde_json::json!({}), |p| {
        p.sha256 = Some(digest)
    });
    let host = std::sync::Arc::new(Host::new(config).unwrap());
    let events = host.subscribe();
    let _watcher = host.watch(Default::default()).unwrap();
    host.load_all().unwrap();
    let handle = host.handle("versioned").unwrap();
    assert_eq!(answer(&handle), "1.0.0:x");

    let v2 = bytes_of("fixture-versioned-v2");
    dir.replace_atomically(FILE, &v2);
    let event = wait_for(&events, WAIT, |e| matches!(e, HostEvent::Refused { .. }));
    let HostEvent::Refused { reason, kept, .. } = event else {
        unreachable!()
    };
    assert!(reason.contains(&digest.to_string()), "{reason}");
    assert!(
        reason.contains(&Sha256Digest::of(&v2).to_string()),
        "{reason}"
    );
    assert_eq!(kept.map(|(name, _)| name).as_deref(), Some("versioned"));
    assert_eq!(answer(&handle), "1.0.0:x", "the pinned build keeps serving");
}

// --- Signatures ---

#[test]
fn an_unsigned_library_is_refused_and_a_signed_one_loads() {
    let dir = PluginDir::new();
    let keys = tempfile::tempdir().unwrap();
    let KeyPair { key, public, .. } = keygen(keys.path(), "release");
    let file = dir.add("fixture-echo");

    let error = refusal(&Host::new(requiring(&dir, &[&public])).unwrap());
    assert!(matches!(error, LoadError::Unsigned { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("unsigned"), "{message}");
    assert!(message.contains("plughost sign"), "{message}");

    sign(&file, &key);
    let host = Host::new(requiring(&dir, &[&public])).unwrap();
    let report = host.load_all().unwrap();
    assert_eq!(report.loaded.len(), 1, "{:?}", report.refused);
    // The signature is not itself a candidate.
    assert_eq!(host.discover().unwrap(), vec![file]);
}

#[test]
fn a_signature_by_an_untrusted_key_is_refused_naming_the_key() {
    let dir = PluginDir::new();
    let keys = tempfile::tempdir().unwrap();
    let trusted = keygen(keys.path(), "trusted").public;
    let other = keygen(keys.path(), "other").key;
    let file = dir.add("fixture-echo");
    sign(&file, &other);
    let other_id = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_id = other_id.lines().next().unwrap().rsplit(' ').next().unwrap();

    let error = refusal(&Host::new(requiring(&dir, &[&trusted])).unwrap());
    assert!(
        matches!(&error, LoadError::UntrustedSigner { key_id, .. } if key_id == other_id),
        "{error:?}"
    );
    assert!(error.to_string().contains("not in host.trusted_keys"));
}

#[test]
fn bytes_changed_after_signing_are_refused() {
    let dir = PluginDir::new();
    let keys = tempfile::tempdir().unwrap();
    let KeyPair { key, public, .. } = keygen(keys.path(), "release");
    let file = dir.add("fixture-echo");
    sign(&file, &key);
    // Still a valid plugin, but not the bytes signed.
    let tampered = rebuilt(&std::fs::read(&file).unwrap(), 1);
    dir.replace_atomically(file.file_name().unwrap().to_str().unwrap(), &tampered);

    let error = refusal(&Host::new(requiring(&dir, &[&public])).unwrap());
    assert!(
        matches!(error, LoadError::SignatureMismatch { .. }),
        "{error:?}"
    );
    assert!(error
        .to_string()
        .contains("does not match the file's content"));
}

#[test]
fn a_signature_installed_after_its_library_makes_it_load() {
    let dir = PluginDir::new();
    let keys = tempfile::tempdir().unwrap();
    let KeyPair { key, public, .. } = keygen(keys.path(), "release");
    let host = std::sync::Arc::new(Host::new(requiring(&dir, &[&public])).unwrap());
    let events = host.subscribe();
    let _watcher = host.watch(Default::default()).unwrap();
    host.load_all().unwrap();

    let file = dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v1"));
    wait_for(
        &events,
        WAIT,
        |e| matches!(e, HostEvent::Refused { reason, .. } if reason.contains("unsigned")),
    );
    sign(&file, &key);
    wait_for(&events, WAIT, |e| matches!(e, HostEvent::Loaded { .. }));
    assert_eq!(answer(&host.handle("versioned").unwrap()), "1.0.0:x");

    // A new build without a new signature is refused; the signed one keeps serving.
    dir.replace_atomically(FILE, &bytes_of("fixture-versioned-v2"));
    let event = wait_for(&events, WAIT, |e| matches!(e, HostEvent::Refused { .. }));
    let HostEvent::Refused { reason, kept, .. } = event else {
        unreachable!()
    };
    assert!(reason.contains("does not match"), "{reason}");
    assert!(kept.is_some());
    assert_eq!(answer(&host.handle("versioned").unwrap()), "1.0.0:x");
    // Signing it lets it in.
    sign(&file, &key);
    wait_for(&events, WAIT, |e| matches!(e, HostEvent::Reloaded { .. }));
    assert_eq!(answer(&host.handle("versioned").unwrap()), "2.0.0:x");
}

#[test]
fn a_signature_that_is_a_fifo_or_huge_is_refused_without_hanging() {
    let dir = PluginDir::new();
    let keys = tempfile::tempdir().unwrap();
    let public = keygen(keys.path(), "release").public;
    let file = dir.add("fixture-echo");
    mkfifo(&signature_of(&file));
    let started = std::time::Instant::now();
    let error = refusal(&Host::new(requiring(&dir, &[&public])).unwrap());
    assert!(started.elapsed() < WAIT);
    assert!(
        error
            .to_string()
            .contains("is not a regular file: it is a named pipe"),
        "{error}"
    );

    std::fs::remove_file(signature_of(&file)).unwrap();
    std::fs::write(signature_of(&file), vec![b'A'; 1024 * 1024]).unwrap();
    let error = refusal(&Host::new(requiring(&dir, &[&public])).unwrap());
    assert!(
        matches!(error, LoadError::BadSignatureFile { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("too large"), "{error}");
}

// --- The command line ---

#[test]
fn keygen_sign_inspect_and_list_verbose_round_trip() {
    let dir = PluginDir::new();
    let keys = tempfile::tempdir().unwrap();
    let KeyPair { key, public, .. } = keygen(keys.path(), "release");
    let key_id = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let key_id = key_id
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    let file = dir.add("fixture-echo");
    let digest = Sha256Digest::of(&std::fs::read(&file).unwrap()).to_string();
    let (_settings, toml) = plughost_tests::settings(&format!(
        "[host]\nrequire_signatures = true\ntrusted_keys = [\"{public}\"]\n"
    ));
    let toml = toml.to_str().unwrap();

    let unsigned = dir.cli(&["--config", toml, "inspect", file.to_str().unwrap()]);
    assert!(!unsigned.status.success());
    assert!(stdout(&unsigned).contains(&digest), "{}", stdout(&unsigned));
    assert!(stdout(&unsigned).contains("signature:    unsigned"));
    assert!(
        stderr(&unsigned).contains("unsigned"),
        "{}",
        stderr(&unsigned)
    );

    sign(&file, &key);
    let inspected = dir.cli(&["--config", toml, "inspect", file.to_str().unwrap()]);
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    let shown = stdout(&inspected);
    assert!(
        shown.contains(&format!("sha256:       {digest}")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("signed by trusted key {key_id}")),
        "{shown}"
    );

    let listed = dir.cli(&["--config", toml, "list", "--verbose"]);
    let shown = stdout(&listed);
    assert!(shown.contains(&format!("sha256:    {digest}")), "{shown}");
    assert!(shown.contains(&key_id), "{shown}");
    assert!(!shown.contains(".minisig"), "{shown}");
}

#[test]
fn encrypted_keys_take_the_password_from_the_environment() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("enc.key");
    let run = |args: &[&str], password: &str| {
        Command::new(plughost_tests::plughost())
            .args(args)
            .env("PLUGHOST_SIGNING_PASSWORD", password)
            .output()
            .unwrap()
    };
    let made = run(&["keygen", "--key", key.to_str().unwrap()], "correct horse");
    assert!(made.status.success(), "{}", stderr(&made));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only its owner may read the secret key");
    }
    let file = keys.path().join("data.bin");
    std::fs::write(&file, b"data").unwrap();
    let wrong = run(
        &[
            "sign",
            file.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        "nope",
    );
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("wrong password"),
        "{}",
        stderr(&wrong)
    );
    assert!(!signature_of(&file).exists());
    let signed = run(
        &[
            "sign",
            file.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        "correct horse",
    );
    assert!(signed.status.success(), "{}", stderr(&signed));
    assert!(signature_of(&file).exists());
}

/// The `minisign` tool (Debian: `apt-get install minisign`; .ci/run installs it).
fn minisign_tool() -> &'static str {
    let found = Command::new("minisign").arg("-v").output().is_ok();
    assert!(
        found,
        "the minisign tool is not installed: `apt-get install -y minisign` (.ci/run does)"
    );
    "minisign"
}

#[test]
fn signatures_interoperate_with_the_minisign_tool() {
    let minisign = minisign_tool();
    let dir = PluginDir::new();
    let keys = tempfile::tempdir().unwrap();
    // A key pair and a signature made by minisign: the host accepts them.
    let (public, secret) = (keys.path().join("m.pub"), keys.path().join("m.key"));
    let made = Command::new(minisign)
        .args(["-G", "-W", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let file = dir.add("fixture-echo");
    let signed = Command::new(minisign)
        .args(["-S", "-s"])
        .arg(&secret)
        .arg("-m")
        .arg(&file)
        .output()
        .unwrap();
    assert!(signed.status.success(), "{}", stderr(&signed));
    let key_line = std::fs::read_to_string(&public).unwrap();
    let key_line = key_line.lines().nth(1).unwrap().to_owned();
    let host = Host::new(requiring(&dir, &[&key_line])).unwrap();
    let report = host.load_all().unwrap();
    assert_eq!(report.loaded.len(), 1, "{:?}", report.refused);
    let examined = host.examine(&file).unwrap();
    assert!(
        matches!(
            examined.integrity.signature,
            SignatureStatus::Trusted { .. }
        ),
        "{:?}",
        examined.integrity
    );

    // `plughost sign` with minisign's (encrypted) key, and with its own: `minisign -V`
    // accepts both. (Unencrypted keys of `minisign -G -W` carry no checksum, which the
    // minisign crate refuses: `plughost sign` says so.)
    let refused = Command::new(plughost_tests::plughost())
        .args([
            "sign",
            file.to_str().unwrap(),
            "--key",
            secret.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        stderr(&refused).contains("plughost keygen --unencrypted"),
        "{}",
        stderr(&refused)
    );
    let (public, secret) = (keys.path().join("e.pub"), keys.path().join("e.key"));
    let mut made = Command::new(minisign)
        .args(["-G", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Not a terminal: minisign reads the password (twice) from standard input.
    std::io::Write::write_all(made.stdin.as_mut().unwrap(), b"pw\npw\n").unwrap();
    assert!(made.wait().unwrap().success());
    let signed = Command::new(plughost_tests::plughost())
        .args([
            "sign",
            file.to_str().unwrap(),
            "--key",
            secret.to_str().unwrap(),
        ])
        .env("PLUGHOST_SIGNING_PASSWORD", "pw")
        .output()
        .unwrap();
    assert!(signed.status.success(), "{}", stderr(&signed));
    let verified = Command::new(minisign)
        .args(["-V", "-p"])
        .arg(&public)
        .arg("-m")
        .arg(&file)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", stderr(&verified));
    let own = keygen(keys.path(), "own").key;
    sign(&file, &own);
    let verified = Command::new(minisign)
        .args(["-V", "-p"])
        .arg(own.with_extension("pub"))
        .arg("-m")
        .arg(&file)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", stderr(&verified));
}

#[test]
fn xtask_build_plugins_signs_what_it_installs() {
    let dest = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let KeyPair { key, public, .. } = keygen(keys.path(), "ci");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(xtask::workspace_root())
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "build-plugins",
        ])
        .arg("--dest")
        .arg(dest.path())
        .arg("--sign")
        .arg(&key)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let libraries: Vec<PathBuf> = std::fs::read_dir(dest.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "so"))
        .collect();
    assert!(!libraries.is_empty());
    for library in &libraries {
        assert!(signature_of(library).is_file(), "{}", library.display());
    }
    let mut config = HostConfig::with_plugins_dir(dest.path());
    config.host.probe = ProbeSetting::Program(plughost_tests::plughost().to_owned());
    let shadow = tempfile::tempdir().unwrap();
    config.host.shadow_dir = Some(shadow.path().to_owned());
    config.host.require_signatures = true;
    config.host.trusted_keys = vec![public.parse().unwrap()];
    // What the example event plugins need, so that each opens.
    let audit_file = format!("fs:write:{}", shadow.path().join("audit.jsonl").display());
    plughost_tests::grant(&mut config, "audit", &["events:subscribe", &audit_file]);
    plughost_tests::grant(&mut config, "ticker", &["events:emit"]);
    let host = Host::new(config).unwrap();
    for library in &libraries {
        let examined = host.examine(library).unwrap();
        assert!(
            matches!(
                examined.integrity.signature,
                SignatureStatus::Trusted { .. }
            ),
            "{}: {:?}",
            library.display(),
            examined.integrity
        );
        // Opened with signatures required: accepted.
        examined.library.unwrap();
    }
}

// --- Settings ---

#[test]
fn trust_settings_are_checked_when_read_with_their_place() {
    let (_dir, path) =
        plughost_tests::settings("[plugins.echo]\nenabled = true\nsha256 = \"abc\"\n");
    let error = HostConfig::load(&path).unwrap_err().to_string();
    assert!(error.contains(":3:"), "{error}");
    assert!(error.contains("plugins.echo.sha256"), "{error}");
    assert!(error.contains("64 hexadecimal digits"), "{error}");

    let (_dir, path) = plughost_tests::settings("[host]\ntrusted_keys = [\"RWQnope\"]\n");
    let error = HostConfig::load(&path).unwrap_err().to_string();
    assert!(error.contains(":2:"), "{error}");
    assert!(error.contains("is not a minisign public key"), "{error}");

    let (_dir, path) = plughost_tests::settings("[host]\nrequire_signatures = true\n");
    let error = HostConfig::load(&path).unwrap_err().to_string();
    assert!(error.contains(":2:"), "{error}");
    assert!(error.contains("host.trusted_keys"), "{error}");
}
