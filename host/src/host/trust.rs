//! What the host shows of a file's integrity ([`Host::examine`], for `plughost inspect` and
//! `plughost list --verbose`), and what a change of a signature file does
//! ([`Host::sync_signature`]).

use std::path::Path;
use std::time::Instant;

use super::Host;
use crate::error::LoadError;
use crate::loader::trust::{library_of_signature, Integrity};
use crate::runtime::PluginLibrary;

/// A library file as [`Host::examine`] found it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Examined {
    /// Its SHA-256 and what its signature says, whether or not the settings require one.
    pub integrity: Integrity,
    /// The library, opened as a load would open it (signature and pin checked as the settings
    /// say), or why it would be refused.
    pub library: Result<PluginLibrary, LoadError>,
}

impl Host {
    /// Reads `path` once, and from those bytes says what its integrity is and opens it as
    /// [`open`](Self::open) would (without starting it). `Err` only if the file cannot be read.
    pub fn examine(&self, path: &Path) -> Result<Examined, LoadError> {
        let settings = self.config();
        let started = Instant::now();
        let bytes = crate::loader::read_library(path, settings.host.check_ownership)?;
        let integrity = Integrity::of(path, &bytes, &settings.host.trusted_keys);
        let library = self.open_from(path, &bytes, &|_| true, &settings, started);
        Ok(Examined { integrity, library })
    }

    /// The signature file `signature` (`libx.so.minisig`) changed: its library is checked
    /// again, even if its content was refused before, since a missing or wrong signature may
    /// be what refused it. A library in service whose content did not change is left as it is.
    pub(crate) fn sync_signature(&self, signature: &Path) {
        let Some(library) = library_of_signature(signature) else {
            return;
        };
        self.lifecycle().refused.remove(&library);
        self.sync_file(&library);
    }
}
