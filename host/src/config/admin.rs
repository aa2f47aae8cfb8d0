//! The `[admin]` table: where an admin HTTP API listens and what guards it. The library does
//! not serve it; it reads the settings and keeps the one rule about exposing it
//! ([`AdminSettings::check_exposure`]), so the file and a command-line flag are held to the same.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::isolation::ByteSize;

/// The `[admin]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Where the admin API listens (`"127.0.0.1:9477"`). Default: absent, the API is off.
    pub listen: Option<SocketAddr>,
    /// The bearer token the mutating endpoints require. Write it as `"${VAR}"` so that it stays
    /// out of the file. Required to listen on anything but a loopback address.
    pub token: Option<Secret>,
    /// The largest request body accepted. Default 1 MiB.
    pub max_body: ByteSize,
    /// Requests per second per client address; 0 turns the limit off. Default 1000.
    pub rate_limit: u32,
    /// Whether setting a plugin's config through the API also writes it into `plughost.toml`.
    /// Default false.
    pub write_config: bool,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: None,
            token: None,
            max_body: ByteSize(1024 * 1024),
            rate_limit: 1000,
            write_config: false,
        }
    }
}

/// The refusal of an empty token, wherever it comes from.
pub(super) const EMPTY_TOKEN: &str =
    "must not be empty: an empty bearer token is no protection (set it, or leave the key out)";

impl AdminSettings {
    /// Whether the admin API may listen on `listen` with these settings: refused on an address
    /// other than loopback without a token (anyone who can reach it could change plugins), and
    /// with an empty token anywhere. The reason names the fix. `plughost.toml` is checked with
    /// this when read; check an address given another way (a `--admin ADDR` flag) with it too.
    pub fn check_exposure(&self, listen: SocketAddr) -> Result<(), String> {
        match &self.token {
            Some(token) if token.expose().is_empty() => Err(format!("admin.token {EMPTY_TOKEN}")),
            Some(_) => Ok(()),
            None if listen.ip().is_loopback() => Ok(()),
            None => Err(format!(
                "the admin API would listen on {listen}, which is not a loopback address, without \
                 a token: anyone who can reach it could change plugins; set [admin] token = \
                 \"${{PLUGHOST_ADMIN_TOKEN}}\" or listen on 127.0.0.1"
            )),
        }
    }
}

/// A secret string: shown as `***` by `Debug`, `Display` and `Serialize`, so that it never
/// reaches a log line, a message or the effective configuration. [`expose`](Self::expose) is
/// the one way to read it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: to hand on where it is needed, never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` (what a client sent) is the secret, compared in a time that does not
    /// depend on where they differ (only on their lengths): a token is not guessed byte by
    /// byte from response times.
    pub fn matches(&self, given: &str) -> bool {
        let (secret, given) = (self.0.as_bytes(), given.as_bytes());
        if secret.len() != given.len() {
            return false;
        }
        let differ = secret
            .iter()
            .zip(given)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b));
        // Read through `black_box` so the loop is not cut short by the optimiser.
        std::hint::black_box(differ) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl TryFrom<toml::Value> for Secret {
    type Error = String;
    fn try_from(value: toml::Value) -> Result<Self, String> {
        // serde's own message would quote a value of the wrong type: this one never does.
        match value {
            toml::Value::String(text) => Ok(Secret(text)),
            other => Err(format!(
                "must be a string, such as \"${{PLUGHOST_ADMIN_TOKEN}}\" (found a value of type {}, not shown)",
                other.type_str()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn a_secret_is_never_shown() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        let settings = AdminSettings {
            token: Some(secret.clone()),
            ..AdminSettings::default()
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert!(!toml::to_string(&settings).unwrap().contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
        assert!(secret.matches("hunter2"));
        assert!(!secret.matches("hunter3") && !secret.matches("hunter") && !secret.matches(""));
    }

    #[test]
    fn only_loopback_goes_without_a_token() {
        let open = AdminSettings::default();
        assert!(open.check_exposure(on("127.0.0.1:9477")).is_ok());
        assert!(open.check_exposure(on("[::1]:9477")).is_ok());
        let refused = open.check_exposure(on("0.0.0.0:9477")).unwrap_err();
        assert!(refused.contains("0.0.0.0:9477"), "{refused}");
        assert!(
            refused
                .contains("set [admin] token = \"${PLUGHOST_ADMIN_TOKEN}\" or listen on 127.0.0.1"),
            "{refused}"
        );
        let guarded = AdminSettings {
            token: Some(Secret::new("t")),
            ..AdminSettings::default()
        };
        assert!(guarded.check_exposure(on("0.0.0.0:9477")).is_ok());
        let empty = AdminSettings {
            token: Some(Secret::new("")),
            ..AdminSettings::default()
        };
        let refused = empty.check_exposure(on("127.0.0.1:9477")).unwrap_err();
        assert!(
            refused.starts_with("admin.token must not be empty"),
            "{refused}"
        );
    }
}
