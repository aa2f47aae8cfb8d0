//! Which libraries to start: every one in the plugins folder ([`Host::load_all`], opened only
//! as far as `max_plugins` leaves room), one plugin by name after the plugins it requires
//! ([`Host::load`]), one file from anywhere ([`Host::load_file`]). Each is then put in service
//! by [`admit`](super::admit).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{Host, LoadReport};
use crate::config::HostConfig;
use crate::error::{HostError, LoadError};
use crate::events::HostEvent;
use crate::plugin_info::PluginInfo;
use crate::runtime::{PluginHandle, PluginLibrary};

impl Host {
    /// Loads every enabled library in the plugins folder, in dependency order (then by
    /// priority), each with its configuration from the settings. Refusals are logged and
    /// reported; the others load regardless.
    ///
    /// No more files are opened than `max_plugins` leaves room for: the first ones (by file
    /// name) are started, and more opened only if some of those did not start. Files beyond
    /// the limit are refused ([`LoadError::NoRoom`]) without being read.
    pub fn load_all(&self) -> Result<LoadReport, HostError> {
        let mut report = LoadReport::default();
        let settings = self.config();
        let max = settings.host.max_plugins;
        // Files of plugins running now: opening them again (a reload) takes no room.
        let running: HashSet<PathBuf> = self
            .registry
            .loaded()
            .iter()
            .filter_map(|slot| slot.current())
            .map(|version| version.library().file().to_owned())
            .collect();
        let mut files = self.discover()?.into_iter().peekable();
        let mut no_room = Vec::new();
        let mut first = true;
        while files.peek().is_some() && !self.is_closing() {
            let room = max.saturating_sub(self.registry.serving_count());
            if room == 0 {
                // Full: only files of running plugins are still opened. Files known to hold a
                // disabled plugin are passed over as ever; only the others are refused.
                let (again, rest): (Vec<_>, Vec<_>) =
                    files.partition(|path| running.contains(path));
                let mut lifecycle = self.lifecycle();
                let disabled: HashMap<PathBuf, String> = lifecycle
                    .known
                    .iter()
                    .filter(|(name, _)| !settings.plugin(name).enabled)
                    .map(|(name, file)| (file.clone(), name.clone()))
                    .collect();
                for path in rest {
                    match disabled.get(&path) {
                        Some(name) => lifecycle.not_started(name, &path),
                        None => no_room.push(path),
                    }
                }
                drop(lifecycle);
                files = Vec::into_iter(again).peekable();
                if files.peek().is_none() {
                    break;
                }
            }
            self.start_batch(&mut files, room, &running, &settings, &mut report);
            if !std::mem::take(&mut first) {
                // A plugin refused in an earlier batch for want of one started in this one.
                let mut lifecycle = self.lifecycle();
                self.retry_waiting(&mut lifecycle, Vec::new());
            }
        }
        if let Some(first) = no_room.first() {
            // One line for them all; an event each.
            tracing::warn!(
                "{} file(s) not loaded, from {} on: max_plugins ({max}) plugins are running \
                 already; raise host.max_plugins in plughost.toml to load more",
                no_room.len(),
                first.display()
            );
        }
        for path in no_room {
            let error = LoadError::NoRoom { path, max };
            self.shared.emit(HostEvent::Refused {
                file: error.path().to_owned(),
                reason: error.to_string(),
                kept: None,
            });
            report.refused.push(error);
        }
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(report)
    }

    /// Opens files from `files` until `room` enabled plugins not running yet are among them
    /// (files of `running` plugins take no room, and are opened even with none left), then
    /// starts them in dependency order. What it cannot open or start goes to `report`.
    fn start_batch(
        &self,
        files: &mut std::iter::Peekable<std::vec::IntoIter<PathBuf>>,
        mut room: usize,
        running: &HashSet<PathBuf>,
        settings: &HostConfig,
        report: &mut LoadReport,
    ) {
        // A disabled plugin's library is not opened here, when its probe told its name.
        let enabled = |name: &str| settings.plugin(name).enabled;
        let mut libraries: Vec<PluginLibrary> = Vec::new();
        let mut names = HashSet::new();
        let mut unwanted = Vec::new();
        while let Some(path) = files.next_if(|path| room > 0 || running.contains(path)) {
            match self.open_wanted(&path, &enabled, settings) {
                Ok(library) => {
                    let name = library.info().name.clone();
                    if enabled(&name) && !self.registry.is_serving(&name) && names.insert(name) {
                        room = room.saturating_sub(1);
                    }
                    libraries.push(library)
                }
                Err(LoadError::Unwanted { name, path }) => unwanted.push((name, path)),
                Err(error) => {
                    self.refused(&error, None);
                    report.refused.push(error);
                }
            }
        }
        let mut lifecycle = self.lifecycle();
        for (name, path) in unwanted {
            lifecycle.not_started(&name, &path);
        }
        // A file the watcher loaded while this batch was being opened, with this very
        // content, is not started again: that would be a reload of a version to itself.
        // (Files running before `load_all` began are reloaded, as asked.)
        libraries.retain(|library| {
            let loaded_meanwhile = !running.contains(library.file())
                && self
                    .registry
                    .find_by_file(library.file())
                    .and_then(|slot| slot.current())
                    .is_some_and(|v| v.library().content_hash() == library.content_hash());
            !loaded_meanwhile
        });
        libraries.retain(|library| lifecycle.admit(library));
        self.start_in_order(&mut lifecycle, libraries, |_| None, true, report);
    }

    /// Starts the plugin `name` from the plugins folder, after the plugins it requires (each
    /// with its settings, unless running already), as `plughost run` would start them.
    /// `config`: its Init configuration (JSON), or `None` for the one from the settings.
    ///
    /// This is an explicit request: the plugin starts even if the settings disable it (a
    /// requirement they disable does not). If several files hold a plugin of that name, the
    /// first by file name is the one, as for `load_all`; if it already runs from that file, it
    /// is initialised anew with `config` and swapped in like a reload. A refusal is returned,
    /// not logged or retried: the root cause, which names the requirement that failed if it
    /// was one.
    pub fn load(&self, name: &str, config: Option<&[u8]>) -> Result<PluginHandle, HostError> {
        let mut refused = Vec::new();
        let mut libraries = Vec::new();
        let files = self.discover()?;
        let mut files = files.iter();
        // A name is only known once its file is opened: open in order, up to the first that
        // is `name`; the others only if it requires any.
        for path in files.by_ref() {
            match self.open(path) {
                Ok(library) if library.info().name == name => {
                    libraries.insert(0, library);
                    break;
                }
                Ok(library) => libraries.push(library),
                Err(error) => refused.push(error),
            }
        }
        let no_such_plugin = |refused| HostError::NoSuchPlugin {
            dir: self.plugins_dir.clone(),
            name: name.to_owned(),
            refused,
        };
        let Some(target) = libraries.first().filter(|l| l.info().name == name) else {
            return Err(no_such_plugin(refused));
        };
        let file = target.file().to_owned();
        if !target.info().dependencies.is_empty() {
            libraries.extend(files.filter_map(|path| self.open(path).ok()));
        }
        let mut lifecycle = self.lifecycle();
        let candidates = lifecycle.candidates(&libraries);
        let needed = crate::dependencies::needed_by(name, &candidates, |required| {
            self.registry.is_serving(required) || !lifecycle.config.plugin(required).enabled
        });
        let mut libraries: Vec<Option<PluginLibrary>> = libraries.into_iter().map(Some).collect();
        let needed: Vec<PluginLibrary> = needed
            .into_iter()
            .filter_map(|i| libraries[i].take())
            .collect();
        let mut report = LoadReport::default();
        let config_for = |info: &PluginInfo| {
            (info.name == name)
                .then(|| config.map(<[u8]>::to_vec))
                .flatten()
        };
        // The caller gets the refusal; nothing is retried behind its back.
        self.start_in_order(&mut lifecycle, needed, config_for, false, &mut report);
        drop(lifecycle);
        // Refusals that only pass on another's ("requires storage, which was refused") are
        // not the cause.
        let cause = report
            .refused
            .iter()
            .position(|e| !e.passes_on_another())
            .unwrap_or(0);
        match report.refused.into_iter().nth(cause) {
            Some(error) if error.path() == file => Err(error.into()),
            Some(error) => Err(HostError::Requirement {
                name: name.to_owned(),
                source: Box::new(error),
            }),
            None => self.handle(name).map_err(|_| no_such_plugin(Vec::new())),
        }
    }

    /// Opens and starts one library, from any folder, with `config` (JSON; empty means `{}`)
    /// as its Init configuration. If the same file already serves the name, this replaces it
    /// like a reload; another file serving the name is a refusal.
    pub fn load_file(&self, path: &Path, config: &[u8]) -> Result<PluginHandle, LoadError> {
        let library = self.open(path)?;
        let mut lifecycle = self.lifecycle();
        self.install(&mut lifecycle, library, Some(config), Instant::now())
            .map(PluginHandle::new)
    }
}
