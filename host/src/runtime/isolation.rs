//! Putting a checked library in a worker process: the one door from the host's settings to
//! the [`worker`](super::worker) module, which exists on Linux only. Elsewhere an isolated
//! plugin is refused, saying why.

use std::path::PathBuf;
use std::time::Instant;

use super::library::PluginLibrary;
use crate::config::{HostConfig, PluginSettings};
use crate::error::LoadError;
use crate::loader::CheckedCopy;
use crate::plugin_info::PluginInfo;

/// What the host knows about starting workers.
#[derive(Debug, Clone)]
pub(crate) struct Workers {
    /// The worker program, if one was found.
    pub(crate) program: Option<PathBuf>,
    /// Where worker cgroups go, if the host may create them.
    #[cfg_attr(not(isolation), allow(dead_code))]
    pub(crate) cgroup_root: Option<PathBuf>,
    /// The `confinement` setting the kernel's support was last logged for.
    #[cfg(isolation)]
    announced: std::sync::Arc<std::sync::Mutex<Option<crate::config::Confinement>>>,
}

impl Workers {
    /// The worker program is the probe program (the `plughost` executable, or a program that
    /// calls `plughost::probe_main`); `program` is what the settings name, if anything.
    pub(crate) fn new(program: Option<PathBuf>, config: &HostConfig) -> Self {
        #[cfg(isolation)]
        let cgroup_root = super::worker::limits::cgroup_root(config.host.cgroup.as_deref());
        #[cfg(isolation)]
        if let Some(root) = &cgroup_root {
            super::worker::limits::remove_stale(root);
        }
        #[cfg(not(isolation))]
        let cgroup_root = {
            let _ = config;
            None
        };
        Workers {
            program,
            cgroup_root,
            #[cfg(isolation)]
            announced: Default::default(),
        }
    }

    /// Says once, when the first worker starts (and again if the setting changes), what this
    /// kernel can confine workers with, and what `confinement` makes of it.
    #[cfg(isolation)]
    fn announce(&self, confinement: crate::config::Confinement) {
        use super::worker::sandbox::Kernel;
        use crate::config::Confinement;
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        if announced.replace(confinement) == Some(confinement) {
            return;
        }
        let kernel = Kernel::detect();
        match confinement {
            Confinement::Off => tracing::warn!(
                "confinement = \"off\": isolated plugins are not confined to their grants by the \
                 kernel ({kernel}); grants are still checked at load"
            ),
            Confinement::Enforce if !kernel.is_complete() => tracing::warn!(
                "isolated plugins are confined with {kernel}: a plugin whose grants this kernel \
                 cannot enforce is refused; `[host] confinement = \"best-effort\"` runs it with \
                 what it can"
            ),
            Confinement::BestEffort if !kernel.is_complete() => tracing::warn!(
                "isolated plugins are confined with {kernel}, best effort: a plugin whose grants \
                 this kernel cannot enforce runs with a warning naming what is not enforced"
            ),
            Confinement::Enforce | Confinement::BestEffort => {
                tracing::info!("isolated plugins are confined to their grants with {kernel}")
            }
        }
    }

    /// Starts a worker for `checked` and waits until it loaded the library. `settings`: the
    /// settings in force (limits, timeouts); `started`: when reading the file began.
    ///
    /// `admit` checks the plugin the worker names (its name, pin and grants) before its library
    /// runs anywhere else. A library the probe named starts within its plugin's own limits and
    /// sandbox. One it did not (nothing probes where any plugin may be isolated) starts first
    /// within the strictest sandbox, best effort, only to tell its name; if the plugin is to be
    /// isolated, its worker is then started again within its own. If it is not, the worker
    /// returned is only its name: the caller drops it and loads the library itself.
    pub(crate) fn isolate(
        &self,
        checked: CheckedCopy,
        settings: &HostConfig,
        started: Instant,
        admit: &dyn Fn(&PluginInfo) -> Result<(), LoadError>,
    ) -> Result<PluginLibrary, LoadError> {
        let refused = |path: PathBuf, reason: String| LoadError::Worker { path, reason };
        let Some(program) = self.program.clone() else {
            return Err(refused(
                checked.file,
                "no worker program: install the plughost executable beside this program or on \
                 PATH, or set host.probe to a program that calls plughost::probe_main"
                    .into(),
            ));
        };
        #[cfg(isolation)]
        {
            use super::worker::sandbox::Sandbox;
            use super::worker::{Restarts, Spec, Supervisor};
            use crate::config::{Confinement, Isolation};
            let host = &settings.host;
            self.announce(host.confinement);
            let bounds = |name: &str| {
                let plugin = settings.plugin(name);
                let sandbox = Sandbox::new(&plugin.grant, host.confinement);
                (limits_of(&plugin), sandbox)
            };
            let (limits, sandbox) = match &checked.name {
                Some(name) => bounds(name),
                // Only to tell the name: no grants, and no refusal (its own sandbox decides).
                None => {
                    let confinement = match host.confinement {
                        Confinement::Off => Confinement::Off,
                        Confinement::Enforce | Confinement::BestEffort => Confinement::BestEffort,
                    };
                    // No resource limits: they are per plugin, and this may be any, an
                    // in-process one included. It is confined, and ends within
                    // probe_timeout (docs/design.md, "Confining a worker").
                    (Default::default(), Sandbox::strictest(confinement))
                }
            };
            let file = checked.file.clone();
            let spec = Spec {
                program,
                file: checked.file,
                plugin: checked.name,
                copy: checked.copy.path().to_owned(),
                hash: checked.hash,
                limits,
                sandbox,
                cgroup_root: self.cgroup_root.clone(),
                load_timeout: host.probe_timeout,
            };
            let restarts = Restarts {
                max_crashes: host.max_crashes,
                window: host.crash_window,
                kill_grace: host.kill_grace,
                init_timeout: host.init_timeout,
                check_timeout: host.check_timeout,
            };
            let mut starting = Supervisor::start(spec, checked.copy, restarts)
                .map_err(|reason| refused(file.clone(), reason))?;
            admit(starting.info())?;
            let name = starting.info().name.clone();
            if !starting.is_named() && settings.isolation_of(&name) == Isolation::Process {
                let (limits, sandbox) = bounds(&name);
                starting
                    .confine_to(limits, sandbox)
                    .map_err(|reason| refused(file, reason))?;
            }
            Ok(PluginLibrary::isolated(starting.serve(), started.elapsed()))
        }
        #[cfg(not(isolation))]
        {
            let _ = (program, settings, started, admit);
            Err(refused(
                checked.file,
                "isolation = \"process\" is only available on Linux; set it to \"in-process\""
                    .into(),
            ))
        }
    }
}

/// A plugin's resource limits, from its settings.
#[cfg(isolation)]
fn limits_of(settings: &PluginSettings) -> super::worker::limits::Limits {
    use crate::config::CpuLimit;
    super::worker::limits::Limits {
        memory: settings.memory.map(|m| m.0),
        cpu_share: match settings.cpu {
            Some(CpuLimit::Share(share)) => Some(share),
            _ => None,
        },
        cpu_seconds: match settings.cpu {
            Some(CpuLimit::Time(time)) => Some(time.as_secs().max(1)),
            _ => None,
        },
        open_files: settings.max_open_files,
        processes: settings.max_processes,
    }
}

/// Whether a plugin's settings ask for limits, which only an isolated plugin can have.
pub(crate) fn has_limits(settings: &PluginSettings) -> bool {
    settings.memory.is_some()
        || settings.cpu.is_some()
        || settings.max_open_files.is_some()
        || settings.max_processes.is_some()
}
