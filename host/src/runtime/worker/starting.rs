//! An isolated plugin's first worker, from its start to its service: the host checks the
//! plugin it names before anything else runs its library, and a worker started only to tell
//! the name is started again within the plugin's own limits and sandbox.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::inbox::Identity;
use super::limits::Limits;
use super::process::{Process, Spec};
use super::restart::on_end;
use super::sandbox::{Confined, Sandbox};
use super::supervisor::{Life, Restarts, State, Supervisor};
use crate::loader::shadow::ShadowCopy;
use crate::plugin_info::PluginInfo;

/// An isolated plugin's first worker, started and named, not serving yet: the host checks the
/// plugin it names (its pin, its grants) before [`serve`](Self::serve) makes a supervisor of
/// it, and before [`confine_to`](Self::confine_to) starts it again within the plugin's own
/// limits and sandbox when it was started only to tell the name. Dropped, its worker is killed.
pub(crate) struct Starting {
    identity: Arc<Identity>,
    spec: Spec,
    restarts: Restarts,
    worker: Unserved,
    info: PluginInfo,
    confined: Confined,
    copy: ShadowCopy,
}

/// A worker killed when it goes, unless it was put in service.
struct Unserved {
    process: Arc<Process>,
    served: bool,
}

impl Drop for Unserved {
    fn drop(&mut self) {
        if !self.served {
            self.process.kill("the host did not start it");
        }
    }
}

impl Supervisor {
    /// Starts a worker for the checked copy `copy` within `spec`'s limits and sandbox, and
    /// waits until it has loaded the library. `spec.plugin` is the name the probe read, if any
    /// (a worker that reports another is refused); else the worker tells it.
    pub(crate) fn start(
        spec: Spec,
        copy: ShadowCopy,
        restarts: Restarts,
    ) -> Result<Starting, String> {
        let identity = Arc::new(Identity::new());
        if let Some(name) = &spec.plugin {
            let _ = identity.name.set(name.as_str().into());
            identity.set_span(tracing::info_span!(parent: None, "plugin", name = %name));
        }
        let (process, info, confined) = Process::start(&spec, &identity, on_end(&identity))?;
        let worker = Unserved {
            process,
            served: false,
        };
        if let Some(expected) = &spec.plugin {
            if info.name != *expected {
                return Err(format!(
                    "the worker loaded plugin {:?}, but the probe read {expected:?}",
                    info.name
                ));
            }
        }
        Ok(Starting {
            identity,
            spec,
            restarts,
            worker,
            info,
            confined,
            copy,
        })
    }
}

impl Starting {
    /// Who the plugin is, as its worker said.
    pub(crate) fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Whether the host told the worker the plugin's name (from its probe, or because it
    /// started it again within the plugin's own bounds); else it was started only to tell it.
    pub(crate) fn is_named(&self) -> bool {
        self.spec.plugin.is_some()
    }

    /// Starts the worker again within `limits` and `sandbox`, the plugin's own, now that its
    /// name is known: the first was started within the strictest sandbox only to tell it. The
    /// library must name the same plugin again: it would run within another's grants.
    pub(crate) fn confine_to(&mut self, limits: Limits, sandbox: Sandbox) -> Result<(), String> {
        let name = self.info.name.clone();
        self.worker
            .process
            .kill("restarted within its limits and sandbox");
        self.spec.limits = limits;
        self.spec.sandbox = sandbox;
        self.spec.plugin = Some(name.clone());
        let _ = self.identity.name.set(name.as_str().into());
        self.identity
            .set_span(tracing::info_span!(parent: None, "plugin", name = %name));
        let (process, info, confined) =
            Process::start(&self.spec, &self.identity, on_end(&self.identity))?;
        self.worker = Unserved {
            process,
            served: false,
        };
        if info.name != name {
            return Err(format!(
                "the worker loaded plugin {name:?}, then plugin {:?} from the same bytes: a \
                 library that misreports its name is not started",
                info.name
            ));
        }
        (self.info, self.confined) = (info, confined);
        Ok(())
    }

    /// The supervisor of this worker, which serves from now on. What it is confined to is
    /// logged in the plugin's span (at DEBUG for a worker only started to tell the name).
    pub(crate) fn serve(mut self) -> Arc<Supervisor> {
        let identity = self.identity;
        let info = self.info;
        let _ = identity.name.set(info.name.as_str().into());
        identity.set_span(tracing::info_span!(
            parent: None,
            "plugin",
            name = %info.name,
            version = %info.version
        ));
        {
            let span = identity.span();
            let _entered = span.enter();
            self.confined.log(self.spec.plugin.is_some());
        }
        self.worker.served = true;
        let supervisor = Arc::new(Supervisor {
            identity: identity.clone(),
            info,
            spec: self.spec,
            restarts: self.restarts,
            current: ArcSwap::new(self.worker.process.clone()),
            life: Mutex::new(Life {
                state: State::Loaded,
                config: Vec::new(),
                handed: None,
                crashes: VecDeque::new(),
                pause: Duration::ZERO,
                starting: None,
                serving_since: Instant::now(),
                source: false,
            }),
            changed: Condvar::new(),
            _copy: self.copy,
        });
        let _ = identity.supervisor.set(Arc::downgrade(&supervisor));
        supervisor
    }
}
