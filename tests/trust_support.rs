//! Helpers for the tests of trust: grants as an operator writes them, whether this kernel can
//! confine workers, a plugins folder with a `plughost.toml` beside it, keys and signatures
//! made by the real `plughost keygen` and `plughost sign`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use plughost::{Host, HostConfig};
use tempfile::TempDir;

use crate::{library, plughost, stderr, stdout, PluginDir};

/// Capabilities as an operator writes them in `grant = [...]`. Panics on one outside the
/// vocabulary, naming it.
pub fn grants(capabilities: &[&str]) -> Vec<plughost::Capability> {
    capabilities
        .iter()
        .map(|text| {
            text.parse()
                .unwrap_or_else(|e| panic!("grant {text:?}: {e}"))
        })
        .collect()
}

/// Grants `plugin` `capabilities` in `settings`, as `grant = [...]` under `[plugins.NAME]` in
/// plughost.toml does, keeping the rest of its table (a default one if it has none). Call it
/// after [`plugin_table`], which replaces the whole table.
pub fn grant(settings: &mut HostConfig, plugin: &str, capabilities: &[&str]) {
    settings
        .plugins
        .entry(plugin.to_owned())
        .or_default()
        .grant
        .extend(grants(capabilities));
}

/// Fails the test, saying why, unless this kernel has what the workers confine themselves
/// with: Landlock with TCP rules (ABI 4, Linux 6.7) and seccomp filters.
#[cfg(target_os = "linux")]
pub fn kernel_confines() {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute, size 0 and only the VERSION flag,
    // landlock_create_ruleset reads no memory and creates nothing: it answers the ABI version.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    let why = std::io::Error::last_os_error();
    assert!(
        abi >= 4,
        "this kernel lacks Landlock with TCP rules (ABI {abi}, needs 4, Linux 6.7 or later: \
         {why}); isolated plugins cannot be confined to their grants here, so these tests cannot \
         run (boot with `lsm=...,landlock` or use a newer kernel)"
    );
    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    assert!(
        actions.split_whitespace().any(|a| a == "errno"),
        "this kernel lacks seccomp filters (/proc/sys/kernel/seccomp/actions_avail: \
         {actions:?}); isolated plugins cannot be confined to their grants here, so these tests \
         cannot run"
    );
}

/// A plugins folder with a `plughost.toml` beside it, for tests of the settings file: live
/// edits, `plughost --config` and what the file grants.
pub struct Setup {
    /// The plugins folder (and its shadow folder).
    pub dir: PluginDir,
    /// The folder `plughost.toml` is written in; tests may keep other files there.
    pub config_dir: TempDir,
}

impl Setup {
    /// A plugins folder holding the built library of each of `packages`, and an empty folder
    /// for `plughost.toml`.
    pub fn new(packages: &[&str]) -> Self {
        let dir = PluginDir::new();
        for package in packages {
            dir.add(package);
        }
        Setup {
            dir,
            config_dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Where `plughost.toml` is (written or not).
    pub fn config_path(&self) -> PathBuf {
        self.config_dir.path().join("plughost.toml")
    }

    /// Writes `plughost.toml` (replacing it by rename, as editors do); its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.config_path();
        let temp = self.config_dir.path().join(".plughost.toml.swp");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, &path).unwrap();
        path
    }

    /// Writes `text` as `plughost.toml` and loads it, pointed at this folder: its plugins and
    /// shadow folders and probe program are the test's own.
    pub fn config(&self, text: &str) -> HostConfig {
        let path = self.write_config(text);
        let mut config = HostConfig::load(&path).unwrap();
        let own = self.dir.config();
        config.host.plugins_dir = own.host.plugins_dir;
        config.host.shadow_dir = own.host.shadow_dir;
        config.host.probe = own.host.probe;
        config
    }

    /// A host on this folder with the settings of `text` (see [`Setup::config`]).
    pub fn host(&self, text: &str) -> Host {
        Host::new(self.config(text)).unwrap()
    }

    /// `plughost <args> --config <file>` on this folder, without colours.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.dir
            .command(args)
            .arg("--config")
            .arg(self.config_path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    /// Where the library of `package` is in this folder.
    pub fn file(&self, package: &str) -> PathBuf {
        let name = library(package).file_name().unwrap();
        self.dir.path().join(name)
    }
}

/// A key pair made by `plughost keygen --unencrypted`.
pub struct KeyPair {
    /// The secret key's file (the public key is beside it, as `.pub`).
    pub key: PathBuf,
    /// The public key as `host.trusted_keys` takes it.
    pub public: String,
    /// The key's id, as `plughost inspect` and the admin API show a signer.
    pub id: String,
}

/// Makes a key pair with `plughost keygen --unencrypted`, its secret key `dir/NAME.key`.
pub fn keygen(dir: &Path, name: &str) -> KeyPair {
    let key = dir.join(format!("{name}.key"));
    let output = Command::new(plughost())
        .args(["keygen", "--unencrypted", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    let public = printed
        .lines()
        .find_map(|line| line.strip_prefix("trusted_keys = [\""))
        .and_then(|rest| rest.strip_suffix("\"]"))
        .unwrap_or_else(|| panic!("no trusted_keys line in {printed}"))
        .to_owned();
    // The public key file's first line is minisign's comment, ending with the key's id.
    let comment = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let id = comment
        .lines()
        .next()
        .and_then(|line| line.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no key id in {comment}"))
        .to_owned();
    KeyPair { key, public, id }
}

/// Signs `file` with `plughost sign FILE --key KEY` (the signature beside it, `.minisig`).
pub fn sign(file: &Path, key: &Path) {
    let output = Command::new(plughost())
        .arg("sign")
        .arg(file)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
}
