//! Putting a checked library in a worker process: the one door from the host's settings to
//! the [`worker`](super::worker) module, which exists on Linux only. Elsewhere an isolated
//! plugin is refused, saying why.

use std::path::PathBuf;
use std::time::Instant;

use super::library::PluginLibrary;
use crate::config::{HostConfig, PluginSettings};
use crate::error::LoadError;
use crate::loader::CheckedCopy;

/// What the host knows about starting workers.
#[derive(Debug, Clone)]
pub(crate) struct Workers {
    /// The worker program, if one was found.
    pub(crate) program: Option<PathBuf>,
    /// Where worker cgroups go, if the host may create them.
    #[cfg_attr(not(isolation), allow(dead_code))]
    pub(crate) cgroup_root: Option<PathBuf>,
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
        }
    }

    /// Starts a worker for `checked` and waits until it loaded the library. `settings`: the
    /// settings in force (limits, timeouts); `started`: when reading the file began.
    pub(crate) fn isolate(
        &self,
        checked: CheckedCopy,
        settings: &HostConfig,
        started: Instant,
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
            use super::worker::{Restarts, Spec, Supervisor};
            let host = &settings.host;
            let spec = Spec {
                program,
                file: checked.file.clone(),
                copy: checked.copy.path().to_owned(),
                hash: checked.hash,
                limits: Default::default(),
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
            let limits_for = |name: &str| limits_of(&settings.plugin(name));
            let file = checked.file.clone();
            let supervisor = Supervisor::start(
                spec,
                checked.copy,
                checked.name.as_deref(),
                &limits_for,
                restarts,
            )
            .map_err(|reason| refused(file, reason))?;
            Ok(PluginLibrary::isolated(supervisor, started.elapsed()))
        }
        #[cfg(not(isolation))]
        {
            let _ = (program, settings, started);
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
