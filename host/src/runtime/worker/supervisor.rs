//! An isolated plugin, seen from the host: the [`Supervisor`] of its worker processes. Its
//! first worker is started and checked ([`starting`](super::starting)); then it Inits it,
//! serves calls, health checks and state hand-over through it, shuts it down, and when it dies
//! replaces it ([`restart`](super::restart)).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use plugin_api::ffi::{health_level, CallContext, Status};

use super::death::{Death, Phase};
use super::frame::{Frame, Kind};
use super::inbox::Identity;
use super::lanes::MESSAGE_LIMIT;
use super::process::{Process, Spec, Stop};
use crate::error::CallError;
use crate::loader::shadow::ShadowCopy;
use crate::plugin_info::PluginInfo;
use crate::runtime::abi::call_error;
use crate::runtime::handle::PluginHealth;
use crate::runtime::registry::Slot;

/// How a supervisor restarts its worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Restarts {
    /// Crashes within `window` after which the plugin is marked failed.
    pub(crate) max_crashes: usize,
    /// See `max_crashes`.
    pub(crate) window: Duration,
    /// How long past its deadline a call may run before its worker is killed.
    pub(crate) kill_grace: Duration,
    /// How long Init may take (also on restart).
    pub(crate) init_timeout: Duration,
    /// How long health, validate_config and save_state may take.
    pub(crate) check_timeout: Duration,
}

/// One isolated plugin version and its worker processes.
pub(crate) struct Supervisor {
    pub(super) identity: Arc<Identity>,
    pub(super) info: PluginInfo,
    pub(super) spec: Spec,
    pub(super) restarts: Restarts,
    pub(super) current: ArcSwap<Process>,
    pub(super) life: Mutex<Life>,
    pub(super) changed: Condvar,
    // Last: the copy is deleted once nothing can start a worker from it any more.
    pub(super) _copy: ShadowCopy,
}

pub(super) struct Life {
    pub(super) state: State,
    /// Init's configuration, again on restart.
    pub(super) config: Vec<u8>,
    /// The state handed over at Init, again on restart.
    pub(super) handed: Option<Vec<u8>>,
    /// When it crashed, within the window.
    pub(super) crashes: VecDeque<Instant>,
    /// The pause before the next restart.
    pub(super) pause: Duration,
    /// A worker being Init-ed by a restart, not serving yet.
    pub(super) starting: Option<Arc<Process>>,
    pub(super) serving_since: Instant,
    /// Whether its event source was started (and not stopped): a restart starts it again.
    pub(super) source: bool,
}

#[derive(Debug, Clone)]
pub(super) enum State {
    /// Loaded, not initialised.
    Loaded,
    Serving,
    Restarting {
        cause: String,
    },
    Failed {
        cause: String,
        crashes: usize,
    },
    Retired,
}

/// What `plughost list` shows of an isolated plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerStatus {
    /// The worker's process id, while one runs.
    pub(crate) pid: Option<u32>,
    /// `serving`, `restarting`, `failed`.
    pub(crate) state: &'static str,
}

impl Supervisor {
    /// Who the plugin is, as its worker said.
    pub(crate) fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The user's file.
    pub(crate) fn file(&self) -> &std::path::Path {
        &self.spec.file
    }

    /// The private copy workers load.
    pub(crate) fn copy(&self) -> &std::path::Path {
        &self.spec.copy
    }

    /// The hash of the checked bytes.
    pub(crate) fn content_hash(&self) -> u128 {
        self.spec.hash
    }

    /// Lets the plugin call the plugins in `slots`, and no others (first binding counts).
    pub(crate) fn bind_dependencies(&self, slots: Vec<Arc<Slot>>) {
        let _ = self.identity.dependencies.set(slots);
    }

    pub(super) fn name(&self) -> Arc<str> {
        self.identity
            .name
            .get()
            .cloned()
            .unwrap_or_else(|| self.info.name.as_str().into())
    }

    pub(super) fn life(&self) -> MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `list` shows.
    pub(crate) fn status(&self) -> WorkerStatus {
        let process = self.current.load();
        let state = match self.life().state {
            State::Loaded => "loaded",
            State::Serving if !process.is_dead() => "serving",
            State::Serving | State::Restarting { .. } => "restarting",
            State::Failed { .. } => "failed",
            State::Retired => "retired",
        };
        WorkerStatus {
            pid: (!process.is_dead()).then(|| process.pid()),
            state,
        }
    }

    /// Sends a request to the current worker.
    pub(super) fn request(
        &self,
        frame: Frame,
        phase: Phase,
        limit: Duration,
    ) -> Result<Frame, CallError> {
        let process = self.current.load_full();
        process
            .request(frame, phase, limit)
            .map_err(|stop| self.stopped(&process, stop, limit))
    }

    /// The error of a request or call that got no answer.
    pub(super) fn stopped(&self, process: &Process, stop: Stop, limit: Duration) -> CallError {
        let plugin = self.name();
        match stop {
            Stop::TimedOut => CallError::Timeout {
                plugin,
                timeout: limit,
            },
            Stop::Died | Stop::NotServing => {
                let death = process.wait_ended(Duration::from_secs(1));
                self.crashed(plugin, death.as_ref())
            }
            Stop::TooLarge(size) => CallError::TooLarge {
                plugin,
                what: "a message",
                size,
                limit: 2 * MESSAGE_LIMIT,
            },
        }
    }

    fn crashed(&self, plugin: Arc<str>, death: Option<&Death>) -> CallError {
        match death {
            Some(death) => CallError::Crashed {
                plugin,
                cause: death.cause.clone(),
                during: death.during,
            },
            None => CallError::Crashed {
                plugin,
                cause: "its worker stopped answering".into(),
                during: "",
            },
        }
    }

    /// validate_config in the worker, within `limit` (past it, the worker is killed).
    pub(crate) fn validate(&self, config: &[u8], limit: Duration) -> Result<(), CallError> {
        let mut frame = Frame::new(Kind::Validate);
        frame.first = config.to_vec();
        let reply = self.request(frame, Phase::Validate, limit)?;
        self.status_of(&reply).map(|_| ())
    }

    pub(super) fn status_of<'a>(&self, reply: &'a Frame) -> Result<&'a [u8], CallError> {
        match Status(reply.status) {
            Status::OK => Ok(&reply.first),
            status => Err(call_error(&self.name(), status, &reply.first)),
        }
    }

    /// Init in the worker, with `state` from the previous version if there is one.
    pub(crate) fn init(
        self: &Arc<Self>,
        config: &[u8],
        state: Option<&[u8]>,
    ) -> Result<(), CallError> {
        let process = self.current.load_full();
        self.init_in(&process, config, state)?;
        let mut life = self.life();
        life.config = config.to_vec();
        life.handed = state.map(<[u8]>::to_vec);
        self.serve_with(life, process);
        Ok(())
    }

    /// Puts `process`, just Init-ed, in service. A worker that died between its Init's answer
    /// and now went unnoticed by [`ended`](Self::ended) (it was not serving yet): its crash is
    /// handled here instead.
    pub(super) fn serve_with(
        self: &Arc<Self>,
        mut life: MutexGuard<'_, Life>,
        process: Arc<Process>,
    ) {
        self.current.store(process.clone());
        life.state = State::Serving;
        life.serving_since = Instant::now();
        self.changed.notify_all();
        drop(life);
        if process.is_dead() {
            self.ended(&process);
        }
    }

    pub(super) fn init_in(
        &self,
        process: &Process,
        config: &[u8],
        state: Option<&[u8]>,
    ) -> Result<(), CallError> {
        let mut frame = Frame::new(Kind::Init);
        frame.first = config.to_vec();
        frame.second = state.map(<[u8]>::to_vec);
        let limit = self.restarts.init_timeout;
        let reply = process
            .request(frame, Phase::Init, limit)
            .map_err(|stop| self.stopped(process, stop, limit))?;
        self.status_of(&reply)?;
        if reply.second.is_none() {
            return Err(CallError::Failed {
                plugin: self.name(),
                message: "init reported success but created no instance".into(),
            });
        }
        Ok(())
    }

    /// One Execute: see [`PluginHandle::call_into`](crate::PluginHandle::call_into).
    pub(crate) fn call(
        &self,
        ctx: &CallContext,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> Result<(), CallError> {
        if input.len() > MESSAGE_LIMIT {
            return Err(CallError::TooLarge {
                plugin: self.name(),
                what: "an input",
                size: input.len(),
                limit: MESSAGE_LIMIT,
            });
        }
        let started = Instant::now();
        let until = instant_of(ctx.deadline_unix_nanos);
        let kill_at = until.map(|until| until + self.restarts.kill_grace);
        loop {
            let process = self.current.load();
            match process.execute(ctx, input, output, kill_at) {
                Ok(Status::OK) => return Ok(()),
                Ok(status) => {
                    let error = call_error(&self.name(), status, output);
                    output.clear();
                    return Err(error);
                }
                Err(Stop::TimedOut) => {
                    return Err(CallError::Timeout {
                        plugin: self.name(),
                        timeout: until.map_or(Duration::ZERO, |until| until - started),
                    })
                }
                Err(Stop::TooLarge(size)) => {
                    return Err(CallError::TooLarge {
                        plugin: self.name(),
                        what: "an output",
                        size,
                        limit: MESSAGE_LIMIT,
                    })
                }
                Err(Stop::Died) => {
                    let death = process.wait_ended(Duration::from_secs(1));
                    return Err(self.crashed(self.name(), death.as_ref()));
                }
                Err(Stop::NotServing) => self.wait_for_worker(&process, until)?,
            }
        }
    }

    /// Waits for a worker to replace `dead`, until `until`; without a deadline, or past it,
    /// fails with what is going on.
    pub(super) fn wait_for_worker(
        &self,
        dead: &Arc<Process>,
        until: Option<Instant>,
    ) -> Result<(), CallError> {
        let mut life = self.life();
        loop {
            if !Arc::ptr_eq(&self.current.load(), dead) {
                return Ok(());
            }
            let cause = match &life.state {
                State::Failed { cause, crashes } => {
                    return Err(CallError::GaveUp {
                        plugin: self.name(),
                        crashes: *crashes,
                        window: self.restarts.window,
                        cause: cause.clone(),
                    })
                }
                State::Retired | State::Loaded => {
                    return Err(CallError::NotLoaded {
                        plugin: self.name(),
                    })
                }
                State::Restarting { cause } => cause.clone(),
                State::Serving => dead
                    .death()
                    .map_or_else(|| "its worker ended".into(), |d| d.cause.clone()),
            };
            let left = until.map(|until| until.saturating_duration_since(Instant::now()));
            match left {
                Some(left) if !left.is_zero() => {
                    life = self
                        .changed
                        .wait_timeout(life, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                _ => {
                    return Err(CallError::Restarting {
                        plugin: self.name(),
                        cause,
                    })
                }
            }
        }
    }

    /// Health, from the worker; a failed or restarting plugin is unhealthy, saying why.
    pub(crate) fn health(&self) -> Result<PluginHealth, CallError> {
        match &self.life().state {
            State::Failed { cause, crashes } => {
                return Ok(PluginHealth::Unhealthy(format!(
                    "failed: crashed {crashes} times within {}, last: {cause}",
                    humantime::format_duration(self.restarts.window)
                )))
            }
            State::Restarting { cause } => {
                return Ok(PluginHealth::Unhealthy(format!(
                    "restarting after a crash: {cause}"
                )))
            }
            _ => {}
        }
        let limit = self.restarts.check_timeout;
        let reply = self.request(Frame::new(Kind::Health), Phase::Health, limit)?;
        let message = String::from_utf8_lossy(self.status_of(&reply)?).into_owned();
        Ok(match reply.number {
            u64::MAX => PluginHealth::Unknown,
            level if level == u64::from(health_level::HEALTHY) => PluginHealth::Healthy,
            level if level == u64::from(health_level::DEGRADED) => PluginHealth::Degraded(message),
            _ => PluginHealth::Unhealthy(message),
        })
    }

    /// The state to hand to the next version, from the worker.
    pub(crate) fn save_state(&self) -> Result<Option<Vec<u8>>, CallError> {
        let limit = self.restarts.check_timeout;
        let reply = self.request(Frame::new(Kind::SaveState), Phase::SaveState, limit)?;
        let state = self.status_of(&reply)?;
        Ok((!state.is_empty()).then(|| state.to_vec()))
    }

    /// Stops restarting, runs Shutdown in the worker within `limit` and waits for it to exit;
    /// kills it if it does not. No call may be in flight.
    pub(crate) fn shutdown(&self, limit: Duration) -> Result<(), CallError> {
        let was = self.retire();
        let process = self.current.load_full();
        let deadline = Instant::now() + limit;
        let answer = if matches!(was, State::Serving) && !process.is_dead() {
            process.quit_lanes();
            Some(
                process
                    .request(Frame::new(Kind::Shutdown), Phase::Shutdown, limit)
                    .map_err(|stop| self.stopped(&process, stop, limit)),
            )
        } else {
            None
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if process
            .wait_ended(left.max(Duration::from_millis(100)))
            .is_none()
        {
            process.kill("it did not exit after shutdown");
            process.wait_ended(Duration::from_secs(5));
        }
        match answer {
            Some(Ok(reply)) => self.status_of(&reply).map(|_| ()),
            Some(Err(e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Kills the worker now, without Shutdown (a library never started, or given up on).
    pub(crate) fn kill(&self) {
        self.retire();
        let process = self.current.load_full();
        if !process.is_dead() {
            process.kill("the host closed it");
            process.wait_ended(Duration::from_secs(5));
        }
    }

    /// Stops restarts for good, killing a worker a restart is starting, and says what the
    /// state was.
    fn retire(&self) -> State {
        let mut life = self.life();
        let was = std::mem::replace(&mut life.state, State::Retired);
        if let Some(starting) = life.starting.take() {
            starting.kill("the host closed it");
        }
        self.changed.notify_all();
        was
    }

    pub(super) fn span(&self) -> tracing::Span {
        self.identity.span()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let process = self.current.load_full();
        if !process.is_dead() {
            process.kill("the host closed it");
        }
    }
}

/// The `Instant` of a deadline in nanoseconds since the Unix epoch (0: none).
fn instant_of(deadline_unix_nanos: u64) -> Option<Instant> {
    if deadline_unix_nanos == 0 {
        return None;
    }
    let deadline = SystemTime::UNIX_EPOCH + Duration::from_nanos(deadline_unix_nanos);
    let now = (Instant::now(), SystemTime::now());
    Some(match deadline.duration_since(now.1) {
        Ok(left) => now.0 + left,
        Err(_) => now.0,
    })
}
