//! `plughost keygen` and `plughost sign`: minisign key pairs and detached signatures, in the
//! standard minisign file formats, so that the `minisign` tool reads what these write and
//! the other way round.
//!
//! A secret key is encrypted with a password (scrypt, as minisign does) unless `--unencrypted`
//! is given. The password comes from `PLUGHOST_SIGNING_PASSWORD` if set, else from the
//! terminal.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use minisign::{KeyPair, SecretKey, SecretKeyBox};

/// The variable a password is read from, before asking at the terminal.
pub(crate) const PASSWORD_VARIABLE: &str = "PLUGHOST_SIGNING_PASSWORD";

/// The largest secret key file read: one is two lines, under 300 bytes.
const MAX_KEY_SIZE: u64 = 16 * 1024;

/// Writes a new key pair: the secret key to `key`, the public key beside it with the extension
/// `.pub`, and prints the public key as `host.trusted_keys` takes it.
pub(crate) fn keygen(key: &Path, unencrypted: bool, force: bool) -> anyhow::Result<ExitCode> {
    let public = key.with_extension("pub");
    if public == key {
        bail!(
            "{}: name the secret key file something other than *.pub",
            key.display()
        );
    }
    for path in [key, public.as_path()] {
        if !force && std::fs::symlink_metadata(path).is_ok() {
            bail!(
                "{}: already exists; pass --force to replace it",
                path.display()
            );
        }
    }
    let KeyPair { pk, sk } = if unencrypted {
        KeyPair::generate_unencrypted_keypair()
    } else {
        // `None` has minisign ask twice at the terminal.
        KeyPair::generate_encrypted_keypair(std::env::var(PASSWORD_VARIABLE).ok())
    }
    .context("cannot generate a key pair")?;
    let comment = if unencrypted {
        "plughost secret key (unencrypted)"
    } else {
        "plughost encrypted secret key"
    };
    let secret = sk.to_box(Some(comment))?.to_string();
    let public_text = pk.to_box()?.to_string();
    // Only its owner may read the secret key, from the moment it exists.
    write_atomically(key, secret.as_bytes(), 0o600)?;
    write_atomically(&public, public_text.as_bytes(), 0o644)?;
    let id = format!("{:016X}", u64::from_le_bytes(pk.keynum().try_into()?));
    println!("secret key: {}", key.display());
    println!("public key: {} (key id {id})", public.display());
    println!();
    println!("Trust it in plughost.toml:");
    println!();
    println!("[host]");
    println!("require_signatures = true");
    println!("trusted_keys = [\"{}\"]", pk.to_base64());
    Ok(ExitCode::SUCCESS)
}

/// Signs each of `files` with the secret key `key`, writing `FILE.minisig` beside it.
pub(crate) fn sign(files: &[PathBuf], key: &Path) -> anyhow::Result<ExitCode> {
    let secret = load_secret_key(key)?;
    for file in files {
        let signature = sign_file(file, &secret)?;
        println!("signed {} -> {}", file.display(), signature.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the secret key `path`: unencrypted as it is, else decrypted with the password from
/// [`PASSWORD_VARIABLE`] or the terminal.
pub(crate) fn load_secret_key(path: &Path) -> anyhow::Result<SecretKey> {
    let text = read_small(path, MAX_KEY_SIZE)
        .with_context(|| format!("{}: cannot read the secret key", path.display()))?;
    match SecretKeyBox::from_string(&text)?.into_unencrypted_secret_key() {
        Ok(secret) => return Ok(secret),
        // Encrypted: opened below, with the password.
        Err(e) if e.to_string().contains("encrypted") => {}
        Err(e) => bail!(
            "{}: cannot open the unencrypted secret key ({e}); unencrypted keys made by \
             `minisign -G -W` cannot be read here: make one with `plughost keygen \
             --unencrypted`, or give the key a password",
            path.display()
        ),
    }
    // `None` has minisign ask at the terminal.
    let password = std::env::var(PASSWORD_VARIABLE).ok();
    SecretKeyBox::from_string(&text)?
        .into_secret_key(password)
        .with_context(|| {
            format!(
                "{}: cannot open the secret key (wrong password, or not a minisign secret key)",
                path.display()
            )
        })
}

/// Signs the content of `file` with `secret`, read once, and installs `FILE.minisig`
/// atomically. Returns the signature's path.
pub(crate) fn sign_file(file: &Path, secret: &SecretKey) -> anyhow::Result<PathBuf> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file
        .file_name()
        .with_context(|| format!("{} has no file name", file.display()))?
        .to_string_lossy();
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // What minisign -S writes, so that `minisign -V` shows the same.
    let trusted = format!("timestamp:{timestamp}\tfile:{name}\thashed");
    let signature = minisign::sign(
        None,
        secret,
        bytes.as_slice(),
        Some(&trusted),
        Some("signature from plughost secret key"),
    )
    .with_context(|| format!("cannot sign {}", file.display()))?;
    let mut path = file.as_os_str().to_owned();
    path.push(".minisig");
    let path = PathBuf::from(path);
    write_atomically(&path, signature.to_string().as_bytes(), 0o644)?;
    Ok(path)
}

/// Writes `bytes` to `path` through a temporary file in the same folder, renamed over it: a
/// reader sees the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    let folder = folder.unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let temp = folder.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// A small text file, refused if larger than `limit` bytes or not a regular file.
fn read_small(path: &Path, limit: u64) -> anyhow::Result<String> {
    use std::io::Read as _;
    let metadata = std::fs::metadata(path)?;
    if !metadata.is_file() || metadata.len() > limit {
        bail!("not a key file (not a regular file, or over {limit} bytes)");
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_string(&mut text)?;
    Ok(text)
}
