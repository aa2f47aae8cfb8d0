//! What the host knows of each plugin, readable at any time without waiting for a load in
//! progress: [`Host::status`], [`Host::plugin_status`], [`Host::refusals`].
//!
//! A small ledger is kept beside the events: every event the host emits goes through
//! [`Ledger::note`] first, and the places that put a version in service or find a plugin in
//! a file (disabled, say) tell it too. What can be read live (whether a version serves, the
//! settings, versions still in memory) is read live when asked, never copied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

use super::Host;
use crate::capability::Capability;
use crate::config::{Isolation, TrustedKey};
use crate::events::HostEvent;
use crate::loader::trust::Integrity;
use crate::plugin_info::PluginInfo;
use crate::runtime::PluginLibrary;

/// Where a plugin stands, from [`Host::status`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PluginStatus {
    /// Its name.
    pub name: String,
    /// Whether it serves, and if not, why.
    pub state: PluginState,
    /// Who it is: the version in service, else the last one seen (`None` if its library was
    /// never opened, as for a plugin disabled before the host read it).
    pub info: Option<PluginInfo>,
    /// The file it serves from, else the file it was last seen in.
    pub file: Option<PathBuf>,
    /// Whether the settings enable it.
    pub enabled: bool,
    /// Where it runs: the version in service's place, else where the settings would put it.
    pub isolation: Isolation,
    /// When the version in service began serving (`None` when none does).
    pub loaded_at: Option<SystemTime>,
    /// How many times a new version replaced a running one (a new build, or a re-initialisation
    /// after its config changed).
    pub reloads: u64,
    /// How many times a file of it was refused.
    pub refusals: u64,
    /// The latest of those refusals.
    pub last_refusal: Option<Refusal>,
    /// Versions of it out of service but still in memory (closed but pinned, or left loaded
    /// because their code never returned): see [`Host::still_mapped`].
    pub still_mapped: usize,
    /// What code serves: the SHA-256 of the bytes the version in service was loaded from (its
    /// private copy, not whatever its file holds now) and who signed them, by the signature
    /// beside its file and the host's trusted keys. Worked out the first time it is asked for
    /// and kept for that version. `None` when no version serves (or its copy cannot be read,
    /// which is logged).
    pub integrity: Option<Integrity>,
    /// The capabilities the settings grant it (`[plugins.NAME] grant`).
    pub grants: Vec<Capability>,
}

/// Whether a plugin serves, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PluginState {
    /// A version serves calls.
    Running,
    /// The settings disable it.
    Disabled,
    /// None serves: its file was refused (see `last_refusal`).
    Refused,
    /// None serves: it was unloaded (its file deleted, or [`Host::unload`]), or found but not
    /// started.
    Stopped,
    /// Isolated, it crashed too often and is not restarted until its file changes or it is
    /// enabled again.
    Failed,
}

impl PluginState {
    /// Its name: `running`, `disabled`, `refused`, `stopped`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Running => "running",
            PluginState::Disabled => "disabled",
            PluginState::Refused => "refused",
            PluginState::Stopped => "stopped",
            PluginState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file refused, when, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// The file.
    pub file: PathBuf,
    /// Why, in one line naming the file.
    pub reason: String,
    /// When.
    pub at: SystemTime,
}

impl Host {
    /// Every plugin the host knows by name, running or not (disabled, refused, unloaded),
    /// sorted by name. Never waits, even while a plugin is being loaded.
    pub fn status(&self) -> Vec<PluginStatus> {
        let entries = self.shared.ledger.lock().plugins.clone();
        let mut names: BTreeSet<String> = entries.keys().cloned().collect();
        names.extend(self.registry.loaded().iter().map(|s| s.name().to_owned()));
        names
            .into_iter()
            .map(|name| {
                let entry = entries.get(&name).cloned().unwrap_or_default();
                self.status_from(name, entry)
            })
            .collect()
    }

    /// Where plugin `name` stands; `None` if the host does not know it. Never waits.
    pub fn plugin_status(&self, name: &str) -> Option<PluginStatus> {
        let entry = self.shared.ledger.lock().plugins.get(name).cloned();
        let serving = self.registry.is_serving(name);
        match entry {
            Some(entry) => Some(self.status_from(name.to_owned(), entry)),
            None if serving => Some(self.status_from(name.to_owned(), Entry::default())),
            None => None,
        }
    }

    /// The files whose content now is refused and that serve no plugin (a plugin that keeps
    /// serving its old version does not count), whether or not a plugin is known in them:
    /// garbage in the plugins folder counts too. Sorted by file.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.shared
            .ledger
            .lock()
            .refused
            .values()
            .cloned()
            .collect()
    }

    /// When the host was created.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Whether a [`load_all`](Self::load_all) has finished: the plugins folder has been loaded
    /// once.
    pub fn is_started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The status of `name`, from what the ledger knew (`entry`) and what is true now.
    fn status_from(&self, name: String, entry: Entry) -> PluginStatus {
        let settings = self.config();
        let running = self.registry.slot(&name).and_then(|slot| slot.current());
        let enabled = settings.plugin(&name).enabled;
        let state = match &running {
            Some(version) if version.worker_failed() => PluginState::Failed,
            Some(_) => PluginState::Running,
            None if !enabled => PluginState::Disabled,
            None if entry.last == Last::Refused => PluginState::Refused,
            None => PluginState::Stopped,
        };
        let (info, file, isolation, loaded_at) = match &running {
            Some(version) => (
                Some(version.library().info().clone()),
                Some(version.library().file().to_owned()),
                if version.worker().is_some() {
                    Isolation::Process
                } else {
                    Isolation::InProcess
                },
                entry.loaded_at,
            ),
            None => (entry.info, entry.file, settings.isolation_of(&name), None),
        };
        let integrity = running.as_ref().and_then(|version| {
            let keys = &settings.host.trusted_keys;
            self.shared.ledger.integrity(&name, version.library(), keys)
        });
        PluginStatus {
            still_mapped: self.shared.pinned(&name),
            integrity,
            grants: settings.plugin(&name).grant.clone(),
            name,
            state,
            info,
            file,
            enabled,
            isolation,
            loaded_at,
            reloads: entry.reloads,
            refusals: entry.refusals,
            last_refusal: entry.last_refusal,
        }
    }
}

/// What the host remembers of plugins and refused files between events.
#[derive(Default)]
pub(super) struct Ledger {
    inner: Mutex<Entries>,
    /// The integrity of each plugin's version in service, by the hash of its content: reading
    /// and hashing megabytes is done once per version, not on every status request. A lock of
    /// its own, never held while hashing, so that a status never waits for another's.
    integrity: Mutex<HashMap<String, (u128, Integrity)>>,
}

#[derive(Default)]
struct Entries {
    plugins: HashMap<String, Entry>,
    /// The plugin each file was last seen holding.
    files: HashMap<PathBuf, String>,
    /// Files whose content now is refused and that serve no plugin.
    refused: BTreeMap<PathBuf, Refusal>,
}

/// One plugin's record.
#[derive(Debug, Clone, Default)]
struct Entry {
    info: Option<PluginInfo>,
    file: Option<PathBuf>,
    loaded_at: Option<SystemTime>,
    reloads: u64,
    refusals: u64,
    last_refusal: Option<Refusal>,
    last: Last,
}

/// What last happened to a plugin, as far as being in service goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Last {
    /// Found in a file.
    #[default]
    Seen,
    /// A version was put in service.
    Serving,
    /// A file of it was refused, no version of it serving.
    Refused,
    /// Its version was taken out of service.
    Unloaded,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        // Every update is a few field assignments: a panic cannot leave it unusable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in what `event` says. Called for every event the host emits, before it goes out,
    /// so that a subscriber woken by it reads a status that already shows it.
    pub(super) fn note(&self, event: &HostEvent) {
        let mut entries = self.lock();
        match event {
            HostEvent::Refused { file, reason, kept } => {
                let refusal = Refusal {
                    file: file.clone(),
                    reason: reason.clone(),
                    at: SystemTime::now(),
                };
                let name = match kept {
                    Some((name, _)) => Some(name.clone()),
                    None => entries.files.get(file).cloned(),
                };
                if kept.is_some() {
                    // The file serves its old content still: not a file that serves nothing.
                    entries.refused.remove(file);
                } else {
                    entries.refused.insert(file.clone(), refusal.clone());
                }
                if let Some(name) = name {
                    let entry = entries.plugins.entry(name).or_default();
                    entry.refusals += 1;
                    entry.last_refusal = Some(refusal);
                    if kept.is_none() {
                        entry.last = Last::Refused;
                    }
                }
            }
            HostEvent::Unloaded { name, file, .. } => {
                let entry = entries.plugins.entry(name.clone()).or_default();
                entry.last = Last::Unloaded;
                entry.file.get_or_insert_with(|| file.clone());
            }
            // Counted when the version is put in service ([`serving`](Self::serving)), which
            // is when the swap happens; the Reloaded event comes once the old one is retired.
            HostEvent::Loaded { .. }
            | HostEvent::Reloaded { .. }
            | HostEvent::ConfigApplied { .. }
            | HostEvent::ConfigRefused { .. }
            | HostEvent::CircuitChanged { .. } => {}
        }
    }

    /// Records that a version of `info`'s plugin from `file` was just put in service;
    /// `replaced`: it replaced a running one.
    pub(super) fn serving(&self, info: &PluginInfo, file: &Path, replaced: bool) {
        let mut entries = self.lock();
        entries.refused.remove(file);
        entries.files.insert(file.to_owned(), info.name.clone());
        let entry = entries.plugins.entry(info.name.clone()).or_default();
        entry.info = Some(info.clone());
        entry.file = Some(file.to_owned());
        entry.loaded_at = Some(SystemTime::now());
        entry.last = Last::Serving;
        if replaced {
            entry.reloads += 1;
        }
    }

    /// Records that `file` holds plugin `name` (`info`, if its library was opened), found
    /// without being started: disabled, or looked at for another plugin.
    pub(super) fn seen(&self, name: &str, file: &Path, info: Option<&PluginInfo>) {
        let mut entries = self.lock();
        entries.files.insert(file.to_owned(), name.to_owned());
        let entry = entries.plugins.entry(name.to_owned()).or_default();
        entry.file = Some(file.to_owned());
        if let Some(info) = info {
            entry.info = Some(info.clone());
        }
    }

    /// Records that a refusal of `file` is about plugin `name` (the refusal names it), so that
    /// it counts toward that plugin.
    pub(super) fn refusing(&self, name: &str, file: &Path) {
        let mut entries = self.lock();
        entries.files.insert(file.to_owned(), name.to_owned());
        entries.plugins.entry(name.to_owned()).or_default();
    }

    /// Whether plugin `name` was ever seen (in a file, or named by a refusal).
    pub(super) fn knows(&self, name: &str) -> bool {
        self.lock().plugins.contains_key(name)
    }

    /// Records that `file` holds content that is not refused (a disabled plugin, say), or is
    /// gone.
    pub(super) fn not_refused(&self, file: &Path) {
        self.lock().refused.remove(file);
    }

    /// The integrity of `library`, plugin `name`'s version in service: from its private copy
    /// (the bytes that run), against `keys`, the first time it is asked for (when it starts to
    /// serve, if the host trusts any key); remembered for that content after. `None` if the
    /// copy cannot be read.
    pub(super) fn integrity(
        &self,
        name: &str,
        library: &PluginLibrary,
        keys: &[TrustedKey],
    ) -> Option<Integrity> {
        let content = library.content_hash();
        let cached = |ledger: &Self| {
            let known = ledger.integrity.lock().unwrap_or_else(|e| e.into_inner());
            known
                .get(name)
                .filter(|(hash, _)| *hash == content)
                .map(|(_, integrity)| integrity.clone())
        };
        if let Some(integrity) = cached(self) {
            return Some(integrity);
        }
        let bytes = match crate::loader::read(library.shadow_path()) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(
                    "{name}: cannot read the copy it runs from to show its SHA-256: {e}"
                );
                return None;
            }
        };
        let integrity = Integrity::of(library.file(), &bytes, keys);
        self.integrity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), (content, integrity.clone()));
        Some(integrity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> PluginInfo {
        PluginInfo::named(name, "1.0.0")
    }

    fn refused(file: &str, kept: Option<&str>) -> HostEvent {
        HostEvent::Refused {
            file: file.into(),
            reason: format!("{file}: the file is empty"),
            kept: kept.map(|name| (name.to_owned(), semver::Version::new(1, 0, 0))),
        }
    }

    fn entry(ledger: &Ledger, name: &str) -> Entry {
        ledger.lock().plugins.get(name).cloned().unwrap()
    }

    #[test]
    fn a_plugin_moves_through_serving_refused_and_unloaded() {
        let ledger = Ledger::default();
        ledger.serving(&info("a"), Path::new("/p/liba.so"), false);
        let a = entry(&ledger, "a");
        assert_eq!((a.last, a.reloads), (Last::Serving, 0));
        assert!(a.loaded_at.is_some());

        ledger.serving(&info("a"), Path::new("/p/liba.so"), true);
        assert_eq!(entry(&ledger, "a").reloads, 1);

        // A bad build while it serves: counted, and the plugin still serves.
        ledger.note(&refused("/p/liba.so", Some("a")));
        let a = entry(&ledger, "a");
        assert_eq!((a.last, a.refusals), (Last::Serving, 1));
        assert_eq!(
            a.last_refusal.unwrap().reason,
            "/p/liba.so: the file is empty"
        );
        assert!(
            ledger.lock().refused.is_empty(),
            "it serves its old content"
        );

        ledger.note(&HostEvent::Unloaded {
            name: "a".into(),
            version: semver::Version::new(1, 0, 0),
            file: "/p/liba.so".into(),
            status: crate::UnloadStatus::Unmapped,
        });
        assert_eq!(entry(&ledger, "a").last, Last::Unloaded);

        // Refused with nothing serving: the file is mapped back to the plugin it held.
        ledger.note(&refused("/p/liba.so", None));
        let a = entry(&ledger, "a");
        assert_eq!((a.last, a.refusals), (Last::Refused, 2));
        assert_eq!(ledger.lock().refused.len(), 1);

        // A good build again clears the file's refusal.
        ledger.serving(&info("a"), Path::new("/p/liba.so"), false);
        assert_eq!(entry(&ledger, "a").last, Last::Serving);
        assert!(ledger.lock().refused.is_empty());
    }

    #[test]
    fn refusals_of_unknown_files_count_toward_no_plugin() {
        let ledger = Ledger::default();
        ledger.note(&refused("/p/garbage.so", None));
        assert!(ledger.lock().plugins.is_empty());
        assert_eq!(ledger.lock().refused.len(), 1);
        ledger.not_refused(Path::new("/p/garbage.so"));
        assert!(ledger.lock().refused.is_empty());

        // A refusal that names its plugin counts toward it.
        ledger.refusing("b", Path::new("/p/libb.so"));
        ledger.note(&refused("/p/libb.so", None));
        assert_eq!(entry(&ledger, "b").last, Last::Refused);

        // Seen disabled: known, with its info, and its file no longer refused.
        ledger.seen("b", Path::new("/p/libb.so"), Some(&info("b")));
        ledger.not_refused(Path::new("/p/libb.so"));
        assert!(entry(&ledger, "b").info.is_some());
        assert!(ledger.lock().refused.is_empty());
    }

    #[test]
    fn states_have_their_names() {
        for (state, name) in [
            (PluginState::Running, "running"),
            (PluginState::Disabled, "disabled"),
            (PluginState::Refused, "refused"),
            (PluginState::Stopped, "stopped"),
            (PluginState::Failed, "failed"),
        ] {
            assert_eq!(state.as_str(), name);
            assert_eq!(serde_json::to_value(state).unwrap(), name);
        }
    }
}
