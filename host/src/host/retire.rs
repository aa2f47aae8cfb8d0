//! Taking versions out of service: wait for their calls in flight, Shutdown, close the library,
//! check it left memory, and report how it went, in one line and one event. Shutting the host
//! down is the same for every plugin, each before the plugins it requires.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{Host, Shared};
use crate::dependencies;
use crate::error::CallError;
use crate::events::HostEvent;
use crate::loader::residency::{self, UnloadStatus};
use crate::loader::ShadowCopy;
use crate::plugin_info::PluginInfo;
use crate::runtime::{Retired, RunningPlugin, Slot};

impl Host {
    /// Takes a plugin out of service: waits for its calls in flight, calls Shutdown, unloads
    /// the library. Returns what Shutdown reported.
    pub fn unload(&self, name: &str) -> Result<(), CallError> {
        let version = {
            let mut lifecycle = self.lifecycle();
            let version = self.take_from_slot(name, "it was unloaded");
            if version.is_some() {
                // A plugin refused because it would have broken this one may start now.
                self.retry_waiting(&mut lifecycle, Vec::new());
            }
            version
        }
        .ok_or_else(|| CallError::NotFound {
            plugin: name.to_owned(),
        })?;
        self.retire_and_report(version)
    }

    /// Retires a version already out of service, here and now (waiting for its calls in
    /// flight, so never under the lifecycle lock), and reports it. Returns what Shutdown
    /// reported.
    pub(super) fn retire_and_report(&self, version: Arc<RunningPlugin>) -> Result<(), CallError> {
        let (old, mut retired) = retire_now(version);
        report_unload(old, &mut retired, &self.shared);
        retired.shutdown
    }

    /// Empties `slot` and retires its version in the background once in-flight calls are done.
    pub(super) fn take_out_of_service(&self, slot: &Slot) -> Option<JoinHandle<()>> {
        let version = self.take_from_slot(slot.name(), "it went out of service")?;
        let dependents = self.dependents_of(slot.name());
        if !dependents.is_empty() {
            warn!(
                "{} is out of service; {} require it, and their calls to it fail until it is back",
                slot.name(),
                dependents.join(", ")
            );
        }
        Some(retire_in_background(
            version,
            self.shared.clone(),
            |old, mut retired, shared| report_unload(old, &mut retired, shared),
        ))
    }

    /// Empties plugin `name`'s slot: from now on no call reaches it, its subscription ends
    /// (what was queued for it is dropped, said with `why`), and its event source is stopped
    /// (it must not publish for a plugin out of service, nor wait for its calls to end).
    /// Returns the version, to retire.
    pub(super) fn take_from_slot(&self, name: &str, why: &str) -> Option<Arc<RunningPlugin>> {
        let version = self.registry.slot(name)?.swap(None)?;
        self.shared.events.bus().detach(name, why);
        stop_source(&version, self.config().host.shutdown_timeout);
        Some(version)
    }

    /// The plugins in service that require `name`.
    pub(super) fn dependents_of(&self, name: &str) -> Vec<String> {
        self.registry
            .requirers_of(name)
            .iter()
            .map(|v| v.library().info().name.clone())
            .collect()
    }

    /// How many closed plugin versions are still mapped into the process (see
    /// [`UnloadStatus::StillMapped`]). Checked afresh on every call: a pinned library leaves
    /// once the thread pinning it ends.
    pub fn still_mapped(&self) -> usize {
        self.shared.still_mapped(None)
    }

    /// Shuts every plugin down, each before the plugins it requires, otherwise newest first,
    /// and unloads them; waits for versions still being retired after reloads. Waits for calls
    /// in flight and Shutdowns up to `host.shutdown_timeout` (10 s by default) for all plugins
    /// together (each Shutdown gets a moment even past it); a plugin still running after that
    /// is logged and left loaded, since unloading code that runs would crash the process.
    pub fn shutdown(&self) {
        self.shared
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
        let timeout = self.config().host.shutdown_timeout;
        let (versions, threads) = {
            let mut lifecycle = self.lifecycle();
            lifecycle.closed = true;
            let mut slots = self.registry.loaded();
            slots.reverse();
            let infos: Vec<PluginInfo> = slots
                .iter()
                .map(|slot| {
                    slot.current()
                        .map(|v| v.library().info().clone())
                        .expect("loaded slots hold a version")
                })
                .collect();
            let versions: Vec<Arc<RunningPlugin>> = dependencies::stop_order(&infos)
                .into_iter()
                .filter_map(|i| slots[i].swap(None))
                .collect();
            // No more deliveries: what is still queued is dropped, counted and said.
            self.shared.events.bus().close();
            (versions, std::mem::take(&mut lifecycle.retiring))
        };
        // One at a time: a later plugin may still be using an earlier one. One deadline for
        // them all, so that many stuck plugins do not add up; each still gets a moment for its
        // Shutdown, past it.
        let deadline = Instant::now() + timeout;
        // No more publishes either: every source stops before any plugin shuts down.
        for version in &versions {
            let left = deadline.saturating_duration_since(Instant::now());
            stop_source(version, left.max(Duration::from_millis(100)));
        }
        for version in versions {
            match retire_by(version, deadline) {
                Ok((old, mut retired)) => report_unload(old, &mut retired, &self.shared),
                Err((old, version)) => {
                    error!(
                        "{} {} still has calls running {} after shutdown began; left loaded \
                         without Shutdown (unloading code that runs would crash)",
                        old.name,
                        old.version,
                        humantime::format_duration(timeout)
                    );
                    // Never dropped: dropping would shut it down under the running calls.
                    std::mem::forget(version);
                }
            }
        }
        // Old versions still retiring after reloads: wait for them within the same deadline; a
        // thread still waiting on a stuck call is left to finish on its own.
        for thread in threads {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

impl Shared {
    /// Records `closed` (a version found still in memory after closing, with its private copy
    /// if it was closed, `None` if it was left loaded for good), forgets those that have left
    /// memory since, and says how many remain.
    fn still_mapped(&self, closed: Option<(String, Option<ShadowCopy>)>) -> usize {
        let mut pinned = self.pinned_versions();
        pinned.extend(closed);
        pinned.len()
    }

    /// How many versions of plugin `name` are still in memory though out of service: closed
    /// but still mapped, or left loaded because their code never returned.
    pub(super) fn pinned(&self, name: &str) -> usize {
        let mapped = self
            .pinned_versions()
            .iter()
            .filter(|(plugin, _)| plugin == name)
            .count();
        let stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        mapped + stuck.get(name).copied().unwrap_or(0)
    }

    /// The versions still in memory, those that left since the last look forgotten (their
    /// copies deleted).
    fn pinned_versions(&self) -> std::sync::MutexGuard<'_, Vec<(String, Option<ShadowCopy>)>> {
        let mut pinned = self.still_mapped.lock().unwrap_or_else(|e| e.into_inner());
        pinned.retain(|(_, copy)| match copy {
            Some(copy) => residency::is_loaded(copy.path()).unwrap_or(false),
            None => true, // left loaded for good
        });
        pinned
    }

    /// Records that a version of plugin `name` was left loaded because its Init never
    /// returned.
    pub(super) fn stuck_in_init(&self, name: &str) {
        let mut stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        *stuck.entry(name.to_owned()).or_default() += 1;
    }
}

/// Who a retired version was, kept for the log line once it is gone.
pub(super) struct OldVersion {
    pub(super) name: String,
    pub(super) version: semver::Version,
    file: PathBuf,
}

/// Logs and announces that a plugin was taken out of service.
fn report_unload(old: OldVersion, retired: &mut Retired, shared: &Shared) {
    let status = describe_unload(&old.name, retired, shared, "library");
    match &retired.shutdown {
        Ok(()) if retired.unload == UnloadStatus::LeftLoaded => warn!(
            "took {} {} out of service, but its code is still running ({status})",
            old.name, old.version
        ),
        Ok(()) => info!("unloaded {} {} ({status})", old.name, old.version),
        Err(e) if retired.unload == UnloadStatus::LeftLoaded => {
            warn!("gave up on {} {}: {e}", old.name, old.version)
        }
        Err(e) => warn!(
            "unloaded {} {} after a failed shutdown: {e} ({status})",
            old.name, old.version
        ),
    }
    shared.emit(HostEvent::Unloaded {
        name: old.name,
        version: old.version,
        file: old.file,
        status: retired.unload,
    });
}

/// Records a still-mapped library and says what became of it, for log lines.
pub(super) fn describe_unload(
    name: &str,
    retired: &mut Retired,
    shared: &Shared,
    subject: &str,
) -> String {
    match retired.unload {
        // Either way its copy stays in memory, and counts toward `max_pinned`.
        UnloadStatus::StillMapped | UnloadStatus::LeftLoaded => format!(
            "{}; {} closed version(s) still mapped in all",
            retired.unload.describe(subject),
            shared.still_mapped(Some((name.to_owned(), retired.pinned.take())))
        ),
        other => other.describe(subject),
    }
}

/// Waits until no call holds `version` any more, then shuts it down and unloads it.
fn retire_now(version: Arc<RunningPlugin>) -> (OldVersion, Retired) {
    match retire_within(version, None) {
        Ok(retired) => retired,
        Err(_) => unreachable!("no time limit"),
    }
}

/// Like [`retire_now`], giving up after `limit`: then the version is left loaded, without
/// Shutdown (its code is still running, so unloading it would crash the calls), and handed
/// back.
fn retire_within(
    version: Arc<RunningPlugin>,
    limit: Option<Duration>,
) -> Result<(OldVersion, Retired), (OldVersion, Arc<RunningPlugin>)> {
    let shutdown = version.shutdown_limit();
    retire_within_limits(version, limit, Shutdown::Within(shutdown))
}

/// [`retire_within`] by `deadline`: for the calls in flight, then for Shutdown (which gets a
/// moment even past it).
fn retire_by(
    version: Arc<RunningPlugin>,
    deadline: Instant,
) -> Result<(OldVersion, Retired), (OldVersion, Arc<RunningPlugin>)> {
    let left = deadline.saturating_duration_since(Instant::now());
    retire_within_limits(version, Some(left), Shutdown::By(deadline))
}

/// How long Shutdown may take.
#[derive(Clone, Copy)]
enum Shutdown {
    /// This long.
    Within(Duration),
    /// Until then, and a moment at least.
    By(Instant),
}

/// [`retire_within`], giving Shutdown `shutdown`.
fn retire_within_limits(
    version: Arc<RunningPlugin>,
    limit: Option<Duration>,
    shutdown: Shutdown,
) -> Result<(OldVersion, Retired), (OldVersion, Arc<RunningPlugin>)> {
    let info = version.library().info();
    let old = OldVersion {
        name: info.name.clone(),
        version: info.version.clone(),
        file: version.library().file().to_owned(),
    };
    let mut version = version;
    let mut pause = Duration::from_micros(20);
    let waiting_since = Instant::now();
    let mut next_warning = Duration::from_secs(5);
    // Past the limit, an isolated version's calls can still be ended: its worker is killed,
    // and they fail at once. (Without a limit, as after a reload, they run to their end.)
    let mut killed = false;
    let running = loop {
        match Arc::try_unwrap(version) {
            Ok(running) => break running,
            Err(shared) => {
                let past_limit = limit.is_some_and(|limit| waiting_since.elapsed() >= limit);
                if past_limit && !killed && shared.stop_calls() {
                    warn!(
                        "{} {}: calls still running {} ms after it went out of service; its \
                         worker process was killed",
                        old.name,
                        old.version,
                        waiting_since.elapsed().as_millis()
                    );
                    killed = true;
                }
                // Calls in flight (or `PluginOutput`s still held) keep this version alive.
                let grace = if killed {
                    Duration::from_secs(5)
                } else {
                    Duration::ZERO
                };
                if limit.is_some_and(|limit| waiting_since.elapsed() >= limit + grace) {
                    return Err((old, shared));
                }
                if waiting_since.elapsed() >= next_warning {
                    warn!(
                        "{} {} is out of service but still in use ({} calls, outputs or local \
                         handles held) after {} s; it shuts down when they are done (a \
                         LocalHandle lets go on its next call or when dropped)",
                        old.name,
                        old.version,
                        Arc::strong_count(&shared) - 1,
                        next_warning.as_secs()
                    );
                    next_warning *= 2;
                }
                version = shared;
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
        }
    };
    let shutdown = match shutdown {
        Shutdown::Within(limit) => limit,
        Shutdown::By(deadline) => {
            // Whole milliseconds (rounded up), for the messages that name it.
            let left = deadline.saturating_duration_since(Instant::now());
            Duration::from_millis(left.as_nanos().div_ceil(1_000_000) as u64)
                .max(Duration::from_millis(100))
        }
    };
    Ok((old, running.retire_within(shutdown)))
}

/// Stops `version`'s event source within `limit`, logging a failure (the version is on its way
/// out regardless).
fn stop_source(version: &RunningPlugin, limit: Duration) {
    if let Err(e) = version.stop_source(limit) {
        warn!("{}: event source: {e}", version.name());
    }
}

/// [`retire_now`] on a thread of its own, then `report`.
pub(super) fn retire_in_background(
    version: Arc<RunningPlugin>,
    shared: Arc<Shared>,
    report: impl FnOnce(OldVersion, Retired, &Shared) + Send + 'static,
) -> JoinHandle<()> {
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("plughost-retire".into())
        .spawn(move || {
            let _span = span.entered();
            let (old, retired) = retire_now(version);
            report(old, retired, &shared);
        })
        .expect("spawn a retiring thread")
}
