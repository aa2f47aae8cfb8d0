//! Putting a library in service: [`Host::install`] is [`Host::prepare`] (requirements,
//! config, Init beside the running version) then [`Host::commit`] (the swap, and the old
//! version retired in the background). [`Host::start_in_order`] installs several in
//! dependency order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, info_span, warn};

use super::init_config::{checked_config, scrub_init_error};
use super::retire::{describe_unload, retire_in_background};
use super::{Host, Lifecycle, LoadReport};
use crate::capability::{granted, Capability};
use crate::dependencies::{self, DISABLED, NOT_LOADED};
use crate::error::{CallError, LoadError};
use crate::events::HostEvent;
use crate::plugin_info::PluginInfo;
use crate::runtime::{has_limits, Emitting, Limits, PluginLibrary, RunningPlugin, Slot};

/// A version whose Init succeeded, waiting to be put in service by [`Host::commit`].
pub(super) struct Prepared {
    slot: Arc<Slot>,
    running: RunningPlugin,
    /// The configuration given through the API, if any, remembered once in service.
    given: Option<Vec<u8>>,
    handed_over: bool,
    load_time: Duration,
    /// The running version's event source, stopped for the hand-over: started again if this
    /// is abandoned.
    paused_source: Option<Arc<RunningPlugin>>,
}

impl Prepared {
    /// Gives the new version up (shutting it down) and lets the running one go on, its event
    /// source started again.
    pub(super) fn abandon(self) {
        let paused = self.paused_source.clone();
        drop(self);
        if let Some(old) = paused {
            old.start_source();
        }
    }
}

impl Host {
    /// Starts `libraries` in dependency order (then by priority), each with `config_for(its
    /// plugin)` as its Init configuration, or its settings' if that is `None`. Refusals are
    /// added to `report`, and with `announce` also logged, sent as events and, if other
    /// plugins caused them, tried again when those change; the others start regardless.
    pub(super) fn start_in_order(
        &self,
        lifecycle: &mut Lifecycle,
        libraries: Vec<PluginLibrary>,
        mut config_for: impl FnMut(&PluginInfo) -> Option<Vec<u8>>,
        announce: bool,
        report: &mut LoadReport,
    ) {
        let candidates = lifecycle.candidates(&libraries);
        let running: Vec<PluginInfo> = self
            .plugins()
            .into_iter()
            .filter(|p| !candidates.iter().any(|c| c.info.name == p.name))
            .collect();
        let config = &lifecycle.config;
        let plan =
            dependencies::start_order(&candidates, &running, &|name| !config.plugin(name).enabled);
        let mut libraries: Vec<Option<PluginLibrary>> = libraries.into_iter().map(Some).collect();
        let mut refuse = |lifecycle: &mut Lifecycle, error: LoadError| {
            if announce {
                lifecycle.wait_if_passing(&error);
                self.refused(&error, None);
            }
            report.refused.push(error);
        };
        for (i, error) in plan.refused {
            drop(libraries[i].take());
            refuse(lifecycle, error);
        }
        for i in plan.order {
            if self
                .shared
                .closing
                .load(std::sync::atomic::Ordering::Acquire)
            {
                // Shutting down: the rest is not started, and not worth a refusal each.
                break;
            }
            let Some(library) = libraries[i].take() else {
                continue;
            };
            let config = config_for(library.info());
            let (file, hash) = (library.file().to_owned(), library.content_hash());
            match self.install(lifecycle, library, config.as_deref(), Instant::now()) {
                Ok(slot) => report
                    .loaded
                    .extend(slot.current().map(|v| v.library().info().clone())),
                Err(error) => {
                    if let LoadError::Init {
                        cause: CallError::Stuck { .. },
                        ..
                    } = &error
                    {
                        // Left loaded: the same content is not tried again on its next event.
                        lifecycle.refused.insert(file, hash);
                    }
                    refuse(lifecycle, error)
                }
            }
        }
    }

    /// Puts `library` in service: [`prepare`](Self::prepare) then [`commit`](Self::commit).
    pub(super) fn install(
        &self,
        lifecycle: &mut Lifecycle,
        library: PluginLibrary,
        config: Option<&[u8]>,
        noticed: Instant,
    ) -> Result<Arc<Slot>, LoadError> {
        let prepared = self.prepare(lifecycle, library, config)?;
        Ok(self.commit(lifecycle, prepared, noticed))
    }

    /// Makes `library` ready to serve, without putting it in service: checks the plugins it
    /// requires are in service (and that those requiring it accept this version), checks its
    /// configuration against its schema and calls Init. `config`: the Init configuration
    /// (JSON), or `None` for the one last given through the API, else the settings'. Dropping
    /// the result shuts the new instance down; the version in service, if any, never noticed.
    pub(super) fn prepare(
        &self,
        lifecycle: &mut Lifecycle,
        library: PluginLibrary,
        config: Option<&[u8]>,
    ) -> Result<Prepared, LoadError> {
        let info = library.info().clone();
        let _span = info_span!("plugin", name = %info.name, version = %info.version).entered();
        if lifecycle.closed
            || self
                .shared
                .closing
                .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(LoadError::HostClosed {
                path: library.file().to_owned(),
                name: info.name.clone(),
            });
        }
        let slot = self.registry.slot_or_insert(&info.name);
        let old = slot.current();
        if let Some(old) = &old {
            if old.library().file() != library.file() {
                return Err(LoadError::DuplicateName {
                    path: library.file().to_owned(),
                    name: info.name.clone(),
                    existing: old.library().file().to_owned(),
                });
            }
        }
        let max = lifecycle.config.host.max_plugins;
        if old.is_none() && self.registry.serving_count() >= max {
            return Err(LoadError::TooMany {
                path: library.file().to_owned(),
                name: info.name.clone(),
                max,
            });
        }
        let max_pinned = lifecycle.config.host.max_pinned;
        let pinned = self.shared.pinned(&info.name);
        if pinned >= max_pinned {
            return Err(LoadError::TooManyPinned {
                path: library.file().to_owned(),
                name: info.name.clone(),
                pinned,
            });
        }
        let required = self.required_slots(lifecycle, &library)?;
        let given = config
            .map(<[u8]>::to_vec)
            .or_else(|| lifecycle.configs.get(&info.name).cloned());
        let (given_bytes, from_settings) = match &given {
            Some(given) => (given.clone(), false),
            None => {
                let settings = lifecycle.config.plugin(&info.name).config;
                (serde_json::to_vec(&settings).unwrap_or_default(), true)
            }
        };
        let init_config = checked_config(
            &lifecycle.config,
            &info,
            library.file(),
            &given_bytes,
            from_settings,
        )?;
        init_config.warn_unknown();
        // An event source stops before its state is saved, so that the state is its last
        // word and the new version goes on from there; it starts again if this one fails.
        let paused_source = old
            .as_ref()
            .filter(|v| v.library().info().event_source)
            .cloned();
        if let Some(old) = &paused_source {
            if let Err(e) = old.stop_source(lifecycle.config.host.shutdown_timeout) {
                warn!("event source of the running version: {e}");
            }
        }
        let restart_source = || {
            if let Some(old) = &paused_source {
                old.start_source();
            }
        };
        let state = match old.as_ref().map(|v| v.save_state()) {
            Some(Err(e)) => {
                warn!("{e}; the new version starts without the old one's state");
                None
            }
            Some(Ok(state)) => state,
            None => None,
        };
        if !library.is_isolated() && has_limits(&lifecycle.config.plugin(&info.name)) {
            warn!(
                "the resource limits in plugins.{} (memory, cpu, max_open_files, \
                 max_processes) apply to isolated plugins only: not enforced; set isolation = \
                 \"process\" to enforce them",
                info.name
            );
        }
        let load_time = library.load_time();
        // What passes through the host is bound as granted, whatever the descriptor says:
        // the load was refused if it needs more (`capability::check`), so this only ever
        // narrows what a library that misdescribes itself can reach.
        let plugin_settings = lifecycle.config.plugin(&info.name);
        let grants = &plugin_settings.grant;
        if library.is_isolated()
            && grants.iter().any(Capability::is_system)
            && plugin_settings.sha256.is_none()
            && !lifecycle.config.host.require_signatures
        {
            // Grants go to a name, and a library names itself: without a pin or a signature,
            // any library that says it is this plugin gets them. (In process they confine
            // nothing, so there is nothing to take.)
            warn!(
                "plugin {} is granted {} but neither pinned (plugins.{}.sha256) nor signed \
                 (host.require_signatures): any library naming itself {} gets those grants",
                info.name,
                grants
                    .iter()
                    .filter(|g| g.is_system())
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                info.name,
                info.name
            );
        }
        let required = required
            .into_iter()
            .filter(|slot| granted(grants, &Capability::Call(slot.name().into())))
            .collect();
        let emits = if granted(grants, &Capability::EventsEmit) {
            info.emits.clone()
        } else {
            Vec::new()
        };
        library.bind_dependencies(required);
        library.bind_events(Arc::new(Emitting::new(
            info.name.as_str().into(),
            emits,
            self.shared.events.bus().publisher(),
        )));
        let settings = &lifecycle.config.host;
        let limits = Limits {
            init: settings.init_timeout,
            shutdown: settings.shutdown_timeout,
            check: settings.check_timeout,
        };
        let running = RunningPlugin::start(library, &init_config.bytes, state.as_deref(), limits)
            .map_err(|e| {
            restart_source();
            if let LoadError::Init {
                cause: CallError::Stuck { .. },
                ..
            } = &e
            {
                self.shared.stuck_in_init(&info.name);
            }
            scrub_init_error(e, &init_config.secrets)
        })?;
        Ok(Prepared {
            slot,
            running,
            given,
            handed_over: state.is_some(),
            load_time,
            paused_source,
        })
    }

    /// Puts a prepared version in service: swaps it into its slot and retires the version it
    /// replaces in the background.
    pub(super) fn commit(
        &self,
        lifecycle: &mut Lifecycle,
        prepared: Prepared,
        noticed: Instant,
    ) -> Arc<Slot> {
        let Prepared {
            slot,
            running,
            given,
            handed_over,
            load_time,
            paused_source: _,
        } = prepared;
        let info = running.library().info().clone();
        let _span = info_span!("plugin", name = %info.name, version = %info.version).entered();
        if let Some(given) = given {
            lifecycle.configs.insert(info.name.clone(), given);
        }
        let file = running.library().file().to_owned();
        lifecycle.known.insert(info.name.clone(), file.clone());
        let running = Arc::new(running);
        let keys = &lifecycle.config.host.trusted_keys;
        if !keys.is_empty() {
            // Who signed it, as it starts to serve: the signature beside the file may be the
            // next build's by the time anyone asks (the digest of these bytes cannot change).
            let _ = self
                .shared
                .ledger
                .integrity(&info.name, running.library(), keys);
        }
        let previous = slot.swap(Some(running.clone()));
        self.shared.ledger.serving(&info, &file, previous.is_some());
        let settings = lifecycle.config.plugin(&info.name);
        let subscribes: &[String] = if granted(&settings.grant, &Capability::EventsSubscribe) {
            &info.subscribes
        } else {
            &[]
        };
        self.shared
            .events
            .bus()
            .attach(&slot, subscribes, &settings);
        running.start_source();
        drop(running);
        let took = noticed.elapsed();
        match previous {
            None => {
                self.registry.mark_loaded(&slot);
                info!(
                    "loaded {} {} from {} in {:.1} ms (plugin-api {}){}",
                    info.name,
                    info.version,
                    file.display(),
                    (load_time + took).as_secs_f64() * 1e3,
                    info.api_version,
                    isolation(&slot),
                );
                self.shared.emit(HostEvent::Loaded {
                    name: info.name,
                    version: info.version,
                    file,
                });
            }
            Some(previous) => {
                let worker = isolation(&slot);
                let thread = retire_in_background(
                    previous,
                    self.shared.clone(),
                    move |old, mut retired, shared| {
                        let status =
                            describe_unload(&old.name, &mut retired, shared, "old version");
                        if let Err(e) = &retired.shutdown {
                            warn!("old version {}: {e}", old.version);
                        }
                        info!(
                            "reloaded {} {} -> {} in {:.1} ms{}{} ({status})",
                            info.name,
                            old.version,
                            info.version,
                            took.as_secs_f64() * 1e3,
                            worker,
                            if handed_over {
                                ", state handed over"
                            } else {
                                ""
                            },
                        );
                        shared.emit(HostEvent::Reloaded {
                            name: info.name,
                            from: old.version,
                            to: info.version,
                            file,
                            took,
                            state_handed_over: handed_over,
                            old: retired.unload,
                        });
                    },
                );
                lifecycle.retiring(Some(thread));
            }
        }
        slot
    }

    /// The slots of the plugins `library` requires, each in service at a version in range;
    /// and no plugin in service that requires `library`'s plugin may be left out of range,
    /// nor may the requirements form a cycle.
    fn required_slots(
        &self,
        lifecycle: &Lifecycle,
        library: &PluginLibrary,
    ) -> Result<Vec<Arc<Slot>>, LoadError> {
        let info = library.info();
        let path = library.file();
        // Only the plugins it requires (directly or not) can close a cycle through it, and
        // only those that require it can be broken by it: a load looks at those, not at every
        // plugin running.
        let required = self.serving_requirements(info);
        let required = required.iter().map(|v| v.library().info());
        if let Some(cycle) = dependencies::cycle_through(info, required) {
            return Err(LoadError::DependencyCycle {
                path: path.to_owned(),
                name: info.name.clone(),
                cycle,
            });
        }
        let version_of = |name: &str| {
            let version = self.registry.slot(name)?.current()?;
            Some(version.library().info().version.clone())
        };
        if let Some(unmet) = dependencies::unmet(info, version_of) {
            return Err(unmet.refusal(path, &info.name, |name| {
                if lifecycle.config.plugin(name).enabled {
                    NOT_LOADED.into()
                } else {
                    DISABLED.into()
                }
            }));
        }
        let dependents = self.registry.requirers_of(&info.name);
        let dependents = dependents.iter().map(|v| v.library().info());
        if let Some(broken) = dependencies::broken_dependent(info, dependents) {
            return Err(LoadError::BreaksDependent {
                path: path.to_owned(),
                name: info.name.clone(),
                version: Box::new(info.version.clone()),
                dependent: broken.dependent,
                requirement: Box::new(broken.requirement),
            });
        }
        Ok(info
            .dependencies
            .iter()
            .filter_map(|requirement| self.registry.slot(&requirement.name))
            .collect())
    }

    /// The versions in service of the plugins `info` requires, and of those they require, and
    /// so on (not of `info`'s own name: the version it replaces does not count).
    fn serving_requirements(&self, info: &PluginInfo) -> Vec<Arc<RunningPlugin>> {
        let mut found = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut next: Vec<String> = info.dependencies.iter().map(|r| r.name.clone()).collect();
        while let Some(name) = next.pop() {
            if name == info.name || !seen.insert(name.clone()) {
                continue;
            }
            if let Some(version) = self.registry.slot(&name).and_then(|slot| slot.current()) {
                let requires = &version.library().info().dependencies;
                next.extend(requires.iter().map(|r| r.name.clone()));
                found.push(version);
            }
        }
        found
    }
}

/// `, in worker process 1234` for an isolated plugin, for the log.
fn isolation(slot: &Slot) -> String {
    match slot.current().and_then(|v| v.worker_pid()) {
        Some(pid) => format!(", in worker process {pid}"),
        None => String::new(),
    }
}
