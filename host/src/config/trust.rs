//! The settings of trust: a pinned SHA-256 (`[plugins.NAME] sha256`) and the minisign public
//! keys signatures are checked against (`[host] trusted_keys`). Both are checked when the file
//! is read, so a typo is a message with its line and column, not a refusal of every plugin.

use serde::{Deserialize, Serialize};

/// A SHA-256 digest, written as 64 hexadecimal digits (as `sha256sum` prints it; either case
/// is read, lower case is shown).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Sha256Digest(sha2::Sha256::digest(bytes).into())
    }
}

impl std::fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl std::fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl std::str::FromStr for Sha256Digest {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let rule = "must be 64 hexadecimal digits (a SHA-256 digest, as `sha256sum FILE` or \
                    `plughost inspect FILE` prints it)";
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{rule}, found {} characters", text.chars().count()));
        }
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Sha256Digest(digest))
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.trim().parse()
    }
}

impl From<Sha256Digest> for String {
    fn from(digest: Sha256Digest) -> String {
        digest.to_string()
    }
}

/// A minisign public key the host trusts, as `minisign -G` and `plughost keygen` print it: the
/// base64 line of the `.pub` file (`RWQ...`, 56 characters). Only the key itself is accepted,
/// not a path to a `.pub` file: whom the host trusts is then written in the one file an
/// operator reviews, and never depends on another file that could change under it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustedKey {
    text: String,
    id: [u8; 8],
}

impl TrustedKey {
    /// The key as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Its key id as minisign shows it: 16 upper-case hexadecimal digits
    /// (`untrusted comment: minisign public key 1D2B...`).
    pub fn id(&self) -> String {
        key_id(self.id)
    }

    /// The raw key id, as a signature names its key.
    pub(crate) fn raw_id(&self) -> [u8; 8] {
        self.id
    }

    /// The key, for verifying.
    pub(crate) fn public_key(&self) -> minisign_verify::PublicKey {
        minisign_verify::PublicKey::from_base64(&self.text)
            .expect("checked when the settings were read")
    }
}

/// A minisign key id as minisign shows it: the 8 bytes as a little-endian number, in
/// upper-case hexadecimal.
pub(crate) fn key_id(raw: [u8; 8]) -> String {
    format!("{:016X}", u64::from_le_bytes(raw))
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKey({} {})", self.id(), self.text)
    }
}

impl std::str::FromStr for TrustedKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let text = text.trim();
        let not_a_key = |why: &str| {
            format!(
                "{:?} is not a minisign public key ({why}): give the base64 line of the .pub \
                 file, `RWQ...`, as `minisign -G` or `plughost keygen` prints it",
                crate::plugin_info::shown(text)
            )
        };
        minisign_verify::PublicKey::from_base64(text).map_err(|e| not_a_key(&e.to_string()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| not_a_key(&e.to_string()))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[2..10]);
        Ok(TrustedKey {
            text: text.to_owned(),
            id,
        })
    }
}

impl TryFrom<String> for TrustedKey {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<TrustedKey> for String {
    fn from(key: TrustedKey) -> String {
        key.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_read_either_case_and_show_lower_case() {
        let text = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        let digest: Sha256Digest = text.parse().unwrap();
        assert_eq!(digest, Sha256Digest::of(b""));
        assert_eq!(digest.to_string(), text.to_lowercase());
        assert!("abc"
            .parse::<Sha256Digest>()
            .unwrap_err()
            .contains("found 3 characters"));
        let not_hex = "g".repeat(64);
        assert!(not_hex.parse::<Sha256Digest>().is_err());
    }

    #[test]
    fn keys_are_minisign_public_keys_with_their_id() {
        // minisign-verify's own example key.
        let key: TrustedKey = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"
            .parse()
            .unwrap();
        assert_eq!(key.id(), "E7620F1842B4E81F");
        let error = "RWQnotakey".parse::<TrustedKey>().unwrap_err();
        assert!(error.contains("is not a minisign public key"), "{error}");
    }
}
