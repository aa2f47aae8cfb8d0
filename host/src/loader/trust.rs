//! Integrity: whether a library's content is a build the operator approved, by a pinned
//! SHA-256 (`[plugins.NAME] sha256`) and by a minisign signature beside the file
//! (`libx.so.minisig`, when `[host] require_signatures` is on).
//!
//! Both are checked over the [`Content`](super::Content) already read, the very bytes that are
//! then copied and loaded: the library's path is never read again. The signature needs no
//! name, so it is checked before anything else looks at the bytes. A pin is per plugin: it is
//! checked as soon as the name is known, from the probe, before this process loads the file;
//! without a probe the name is only known once the library is loaded (its constructors have
//! run), and the pin is checked then, before any of its entry points is called.
//!
//! The signature file is read as carefully as a library: looked at before it is opened (a
//! named pipe or a device is never opened), opened without blocking, checked again on the open
//! descriptor, and read no further than [`MAX_SIGNATURE_SIZE`].

use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::config::{HostConfig, Sha256Digest, TrustedKey};
use crate::error::LoadError;

/// The extension of a signature file, added to the library's file name.
pub(crate) const SIGNATURE_EXTENSION: &str = "minisig";

/// The largest signature file read. A minisign signature is four lines, about 300 bytes with a
/// long trusted comment; anything near this is not one.
pub(crate) const MAX_SIGNATURE_SIZE: u64 = 16 * 1024;

/// The signature file of `library`: `libx.so.minisig` beside `libx.so`.
pub(crate) fn signature_path(library: &Path) -> PathBuf {
    let mut name = OsString::from(library.as_os_str());
    name.push(".");
    name.push(SIGNATURE_EXTENSION);
    PathBuf::from(name)
}

/// The library a signature file `path` is for, if it is one: `libx.so` for `libx.so.minisig`.
pub(crate) fn library_of_signature(path: &Path) -> Option<PathBuf> {
    if path.extension()? != SIGNATURE_EXTENSION {
        return None;
    }
    let library = path.with_extension("");
    super::discovery::is_library_path(&library).then_some(library)
}

/// What the checks that need no plugin name found, kept for the pin once the name is known.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked {
    /// The content's SHA-256, if any plugin is pinned (else it is not computed).
    digest: Option<Sha256Digest>,
}

impl Checked {
    /// Checks `bytes`, the content of `path`, against the signature beside it if `settings`
    /// require signatures, and computes its digest if any plugin is pinned.
    pub(crate) fn new(path: &Path, bytes: &[u8], settings: &HostConfig) -> Result<Self, LoadError> {
        if settings.host.require_signatures {
            let key_id = verify(path, bytes, &settings.host.trusted_keys)?;
            tracing::debug!("{}: signed by trusted key {key_id}", path.display());
        }
        let pinned = settings.plugins.values().any(|p| p.sha256.is_some());
        Ok(Checked {
            digest: pinned.then(|| Sha256Digest::of(bytes)),
        })
    }

    /// Refuses the content if plugin `name`'s settings pin another digest.
    pub(crate) fn pin(
        &self,
        path: &Path,
        name: &str,
        settings: &HostConfig,
    ) -> Result<(), LoadError> {
        let Some(expected) = settings.plugins.get(name).and_then(|p| p.sha256) else {
            return Ok(());
        };
        // Computed whenever any plugin is pinned, so present here.
        let found = self.digest.expect("computed when a plugin is pinned");
        if found == expected {
            return Ok(());
        }
        Err(LoadError::DigestMismatch {
            path: path.to_owned(),
            name: name.to_owned(),
            expected: expected.to_string(),
            found: found.to_string(),
        })
    }
}

/// What the signature beside a file says about its content, for `inspect` and `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureStatus {
    /// Signed by this trusted key, over exactly this content.
    Trusted {
        /// The key's id, as minisign shows it.
        key_id: String,
    },
    /// No signature file beside it.
    Unsigned,
    /// A signature that does not count: the reason (untrusted key, content changed, not a
    /// minisign signature, not a regular file...).
    Refused {
        /// Why, as the refusal of a load would say it, without the library's path.
        reason: String,
    },
}

impl std::fmt::Display for SignatureStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureStatus::Trusted { key_id } => write!(f, "signed by trusted key {key_id}"),
            SignatureStatus::Unsigned => f.write_str("unsigned"),
            SignatureStatus::Refused { reason } => write!(f, "not trusted: {reason}"),
        }
    }
}

/// A file's integrity as the host sees it: its digest and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Integrity {
    /// The SHA-256 of the content read.
    pub sha256: Sha256Digest,
    /// What its signature says, checked against the host's trusted keys (whether or not
    /// signatures are required).
    pub signature: SignatureStatus,
}

impl Integrity {
    /// The integrity of `bytes`, the content of `path`, against `keys`.
    pub(crate) fn of(path: &Path, bytes: &[u8], keys: &[TrustedKey]) -> Self {
        let signature = match verify(path, bytes, keys) {
            Ok(key_id) => SignatureStatus::Trusted { key_id },
            Err(LoadError::Unsigned { .. }) => SignatureStatus::Unsigned,
            Err(error) => SignatureStatus::Refused {
                reason: error
                    .reason()
                    .trim_start_matches("refused: ")
                    .trim_end_matches(" (host.require_signatures)")
                    .to_owned(),
            },
        };
        Integrity {
            sha256: Sha256Digest::of(bytes),
            signature,
        }
    }
}

/// Verifies `bytes`, the content of `path`, against the minisign signature beside it and
/// `keys`; the signing key's id if it is one of them and the signature matches.
pub(crate) fn verify(path: &Path, bytes: &[u8], keys: &[TrustedKey]) -> Result<String, LoadError> {
    let signature_file = signature_path(path);
    let bad =
        |reason: String, source: Option<crate::error::BoxedCause>| LoadError::BadSignatureFile {
            path: path.to_owned(),
            signature: signature_file.clone(),
            reason,
            source,
        };
    let text = read_signature(path, &signature_file)?;
    let not_minisign = "is not a minisign signature".to_owned();
    let signature = minisign_verify::Signature::decode(&text)
        .map_err(|e| bad(not_minisign.clone(), Some(Box::new(e))))?;
    let raw_id = signing_key_id(&text).ok_or_else(|| bad(not_minisign, None))?;
    let Some(key) = keys.iter().find(|key| key.raw_id() == raw_id) else {
        return Err(LoadError::UntrustedSigner {
            path: path.to_owned(),
            signature: signature_file,
            key_id: crate::config::trust_key_id(raw_id),
        });
    };
    // Legacy (not prehashed) signatures are as sound, and older minisign tools make them.
    key.public_key()
        .verify(bytes, &signature, true)
        .map_err(|e| LoadError::SignatureMismatch {
            path: path.to_owned(),
            signature: signature_file.clone(),
            key_id: key.id(),
            source: Box::new(e),
        })?;
    Ok(key.id())
}

/// The id of the key that made a minisign signature: bytes 2 to 10 of its second line.
fn signing_key_id(text: &str) -> Option<[u8; 8]> {
    use base64::Engine as _;
    let line = text.lines().nth(1)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line.trim())
        .ok()?;
    bytes.get(2..10)?.try_into().ok()
}

/// The text of the signature file `signature` of `library`, read as carefully as the library:
/// anything but a small regular file is refused without blocking or reading it.
fn read_signature(library: &Path, signature: &Path) -> Result<String, LoadError> {
    let bad =
        |reason: String, source: Option<crate::error::BoxedCause>| LoadError::BadSignatureFile {
            path: library.to_owned(),
            signature: signature.to_owned(),
            reason,
            source,
        };
    let unreadable = |e: std::io::Error| bad("cannot be read".into(), Some(Box::new(e)));
    let not_a_file = |metadata: &std::fs::Metadata| {
        bad(
            format!(
                "is not a regular file: it is {}",
                super::content::file_kind(metadata)
            ),
            None,
        )
    };
    let too_large = |size: u64| {
        bad(
            format!(
                "is too large for a minisign signature ({size} bytes; the limit is \
                 {MAX_SIGNATURE_SIZE})"
            ),
            None,
        )
    };
    // Looked at before opening: opening a named pipe or a device can block or act.
    let metadata = match std::fs::metadata(signature) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoadError::Unsigned {
                path: library.to_owned(),
                signature: signature.to_owned(),
            })
        }
        Err(e) => return Err(unreadable(e)),
    };
    if !metadata.is_file() {
        return Err(not_a_file(&metadata));
    }
    if metadata.len() > MAX_SIGNATURE_SIZE {
        return Err(too_large(metadata.len()));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Swapped for a pipe between the look and the open, it still cannot block.
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(signature).map_err(unreadable)?;
    let metadata = file.metadata().map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(not_a_file(&metadata));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SIGNATURE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SIGNATURE_SIZE {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| bad("is not a minisign signature (not text)".into(), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_files_sit_beside_their_library() {
        let library = Path::new("plugins").join(format!(
            "libx.{}",
            super::super::discovery::LIBRARY_EXTENSION
        ));
        let signature = signature_path(&library);
        assert_eq!(
            signature.file_name().unwrap().to_string_lossy(),
            format!(
                "libx.{}.minisig",
                super::super::discovery::LIBRARY_EXTENSION
            )
        );
        assert_eq!(library_of_signature(&signature), Some(library.clone()));
        assert_eq!(library_of_signature(Path::new("notes.txt.minisig")), None);
        assert_eq!(library_of_signature(&library), None);
        assert!(!super::super::discovery::is_library_path(&signature));
    }
}
