//! What a [`Supervisor`] does when its worker dies: count the crash, and restart the worker
//! (at once the first time, then after pauses that double from 100 ms to 30 s; a healthy minute
//! starts the count again), Init-ed with the same configuration and the state the plugin was
//! last handed; or, after `max_crashes` within `crash_window`, mark the plugin failed.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::death::{lines, Death};
use super::inbox::Identity;
use super::process::Process;
use super::supervisor::{Life, State, Supervisor};
use crate::error::CallError;

/// The pause before the second restart in a row; the first is at once.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

impl Supervisor {
    /// The current worker ended: restart it unless the host meant it.
    pub(super) fn ended(self: &Arc<Self>, process: &Arc<Process>) {
        if !Arc::ptr_eq(&self.current.load(), process) {
            return;
        }
        let Some(death) = process.death().cloned() else {
            return;
        };
        let mut life = self.life();
        if !matches!(life.state, State::Serving) {
            return;
        }
        // A crash after a healthy minute of service starts the count of pauses again.
        if life.serving_since.elapsed() >= HEALTHY_AFTER {
            life.pause = Duration::ZERO;
        }
        let verdict = self.note_crash(&mut life, &death);
        let pause = life.pause;
        drop(life);
        let name = self.name();
        let span = self.span();
        let _entered = span.enter();
        let Some(failed) = verdict else {
            warn!(
                "{name} crashed: {} {}; restarting {}{}",
                death.cause,
                death.during,
                after(pause),
                lines(&death.last_lines)
            );
            let supervisor = self.clone();
            let spawned = std::thread::Builder::new()
                .name("plughost-restart".into())
                .spawn(move || supervisor.restart());
            if let Err(e) = spawned {
                let cause = format!("no thread to restart it on ({e})");
                error!("{name} failed: {cause}");
                self.life().state = State::Failed { cause, crashes: 1 };
                self.changed.notify_all();
            }
            return;
        };
        error!("{failed}{}", lines(&death.last_lines));
    }

    /// Counts a crash: `Some(message)` when it is one too many (the plugin is then failed),
    /// else the plugin is restarting.
    fn note_crash(&self, life: &mut Life, death: &Death) -> Option<String> {
        let now = Instant::now();
        life.crashes.push_back(now);
        while life
            .crashes
            .front()
            .is_some_and(|&at| now.duration_since(at) > self.restarts.window)
        {
            life.crashes.pop_front();
        }
        let cause = format!("{} {}", death.cause, death.during);
        if life.crashes.len() >= self.restarts.max_crashes {
            let failed = CallError::GaveUp {
                plugin: self.name(),
                crashes: life.crashes.len(),
                window: self.restarts.window,
                cause: cause.clone(),
            }
            .to_string();
            life.state = State::Failed {
                cause,
                crashes: life.crashes.len(),
            };
            self.changed.notify_all();
            return Some(failed);
        }
        life.state = State::Restarting { cause };
        self.changed.notify_all();
        None
    }

    /// Waits out the pause, starts a new worker and Inits it; again while that fails.
    fn restart(self: Arc<Self>) {
        let span = self.span();
        let _entered = span.enter();
        loop {
            let mut life = self.life();
            let pause = life.pause;
            life.pause = (life.pause * 2).clamp(FIRST_PAUSE, LONGEST_PAUSE);
            let until = Instant::now() + pause;
            while matches!(life.state, State::Restarting { .. }) {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                life = self
                    .changed
                    .wait_timeout(life, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if !matches!(life.state, State::Restarting { .. }) {
                return; // retired meanwhile
            }
            let (config, handed) = (life.config.clone(), life.handed.clone());
            drop(life);
            let started = match Process::start(&self.spec, &self.identity, on_end(&self.identity)) {
                Err(reason) => Err(Death {
                    cause: reason,
                    during: "while restarting",
                    last_lines: Vec::new(),
                }),
                Ok((process, _, confined)) => {
                    confined.log(false);
                    // Retired while it loaded: it goes. Else a shutdown from now on kills it.
                    let mut life = self.life();
                    if !matches!(life.state, State::Restarting { .. }) {
                        drop(life);
                        process.kill("the host closed it");
                        return;
                    }
                    life.starting = Some(process.clone());
                    drop(life);
                    let init = self.init_in(&process, &config, handed.as_deref());
                    self.life().starting = None;
                    match init {
                        Ok(()) => Ok(process),
                        Err(e) => {
                            process.kill("its init failed");
                            let last_lines = process
                                .wait_ended(Duration::from_secs(1))
                                .map(|d| d.last_lines)
                                .unwrap_or_default();
                            let cause = match e {
                                CallError::Crashed { cause, .. } => cause,
                                CallError::Failed { message, .. } => {
                                    format!("init failed: {message}")
                                }
                                CallError::Panicked { message, .. } => {
                                    format!("init panicked: {message}")
                                }
                                CallError::Timeout { timeout, .. } => format!(
                                    "init did not return within {}",
                                    humantime::format_duration(timeout)
                                ),
                                other => other.to_string(),
                            };
                            Err(Death {
                                cause,
                                during: "during init",
                                last_lines,
                            })
                        }
                    }
                }
            };
            let mut life = self.life();
            match started {
                Ok(process) => {
                    if !matches!(life.state, State::Restarting { .. }) {
                        drop(life);
                        process.kill("the host closed it");
                        return;
                    }
                    let pid = process.pid();
                    self.serve_with(life, process.clone());
                    self.restart_source(&process);
                    info!("{} restarted (worker process {pid})", self.name());
                    return;
                }
                Err(_) if !matches!(life.state, State::Restarting { .. }) => {
                    return; // retired meanwhile: its worker was killed, not crashed
                }
                Err(death) => {
                    let verdict = self.note_crash(&mut life, &death);
                    let pause = life.pause;
                    drop(life);
                    match verdict {
                        Some(failed) => {
                            error!("{failed}{}", lines(&death.last_lines));
                            return;
                        }
                        None => warn!(
                            "{} did not restart: {} {}; trying again {}{}",
                            self.name(),
                            death.cause,
                            death.during,
                            after(pause),
                            lines(&death.last_lines)
                        ),
                    }
                }
            }
        }
    }
}

/// "at once" or "in 400 ms", for the log.
fn after(pause: Duration) -> String {
    if pause.is_zero() {
        "at once".into()
    } else {
        format!("in {} ms", pause.as_millis())
    }
}

/// What a worker's end calls: its supervisor, if it still has one.
pub(super) fn on_end(identity: &Arc<Identity>) -> impl FnOnce(&Arc<Process>) + Send + 'static {
    let identity = Arc::downgrade(identity);
    move |process| {
        let supervisor = identity
            .upgrade()
            .and_then(|identity| identity.supervisor.get().and_then(Weak::upgrade));
        if let Some(supervisor) = supervisor {
            supervisor.ended(process);
        }
    }
}
