//! The circuit breaker: after `failures` consecutive failures (errors, panics, timeouts) a
//! plugin's circuit opens and calls fail fast with [`CallError::CircuitOpen`] for the
//! cool-down; then one call is let through (half-open): success closes the circuit, failure
//! opens it again. Every change is logged.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tracing::{info, warn};

use super::{CallFuture, CallLayer, Next, PluginCall};
use crate::dispatch::policy::Breaker;
use crate::error::CallError;

/// The state of one plugin's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through; this many consecutive failures so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Calls fail fast until `until`.
    Open {
        /// When the next call is let through.
        until: Instant,
        /// The failures that opened it.
        failures: u32,
    },
    /// One trial call is in flight; others fail fast until it has answered.
    HalfOpen,
}

/// Adds circuit breaking to a service (or nothing: a pass-through).
#[derive(Clone)]
pub struct BreakerLayer {
    circuit: Option<Circuit>,
}

impl BreakerLayer {
    /// A closed circuit for `plugin`; `None` for no circuit breaking.
    pub fn new(plugin: Arc<str>, policy: Option<Breaker>) -> Self {
        BreakerLayer {
            circuit: policy.map(|policy| Circuit {
                plugin,
                policy,
                state: Arc::new(Mutex::new(CircuitState::Closed { failures: 0 })),
            }),
        }
    }

    /// The circuit's state now, if there is a circuit.
    pub fn state(&self) -> Option<CircuitState> {
        self.circuit.as_ref().map(Circuit::state)
    }
}

/// One plugin's circuit.
#[derive(Clone)]
struct Circuit {
    plugin: Arc<str>,
    policy: Breaker,
    state: Arc<Mutex<CircuitState>>,
}

impl Circuit {
    /// The circuit's state now.
    pub fn state(&self) -> CircuitState {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitState> {
        // Every update is one assignment: a poisoned lock still holds a valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a call through (`Ok(trial)`), or says it must fail fast.
    fn admit(&self) -> Result<bool, CallError> {
        let mut state = self.lock();
        match *state {
            CircuitState::Closed { .. } => Ok(false),
            CircuitState::Open { until, failures } => {
                let now = Instant::now();
                if now < until {
                    return Err(CallError::CircuitOpen {
                        plugin: self.plugin.clone(),
                        failures,
                        retry_in: until - now,
                    });
                }
                *state = CircuitState::HalfOpen;
                info!(
                    "circuit of plugin {} half-open: letting one call through",
                    self.plugin
                );
                Ok(true)
            }
            CircuitState::HalfOpen => Err(CallError::CircuitOpen {
                plugin: self.plugin.clone(),
                failures: self.policy.failures,
                retry_in: std::time::Duration::ZERO,
            }),
        }
    }

    /// Records how a call went.
    fn record(&self, trial: bool, outcome: &Result<Vec<u8>, CallError>) {
        let failed = match outcome {
            Ok(_) => false,
            Err(
                CallError::Failed { .. }
                | CallError::Panicked { .. }
                | CallError::Timeout { .. }
                | CallError::UnknownStatus { .. }
                | CallError::Crashed { .. }
                | CallError::Restarting { .. },
            ) => true,
            // Failed for good: no call can succeed until it is loaded again.
            Err(CallError::GaveUp { .. }) => {
                let mut state = self.lock();
                if !matches!(*state, CircuitState::Open { .. }) {
                    warn!(
                        "circuit of plugin {} open: it crashed too often and is not restarted",
                        self.plugin
                    );
                }
                *state = CircuitState::Open {
                    until: Instant::now() + self.policy.cool_down,
                    failures: self.policy.failures,
                };
                return;
            }
            // Not the plugin's fault (limits, unloaded): no verdict, but a trial must end.
            Err(_) => {
                if trial {
                    *self.lock() = CircuitState::Open {
                        until: Instant::now(),
                        failures: self.policy.failures,
                    };
                }
                return;
            }
        };
        let mut state = self.lock();
        let now = Instant::now();
        *state = match (*state, failed) {
            (CircuitState::HalfOpen, false) => {
                info!(
                    "circuit of plugin {} closed: the trial call succeeded",
                    self.plugin
                );
                CircuitState::Closed { failures: 0 }
            }
            (CircuitState::HalfOpen, true) => {
                warn!(
                    "circuit of plugin {} open again: the trial call failed; next try in {} ms",
                    self.plugin,
                    self.policy.cool_down.as_millis()
                );
                CircuitState::Open {
                    until: now + self.policy.cool_down,
                    failures: self.policy.failures,
                }
            }
            (CircuitState::Closed { .. }, false) => CircuitState::Closed { failures: 0 },
            (CircuitState::Closed { failures }, true) if failures + 1 >= self.policy.failures => {
                warn!(
                    "circuit of plugin {} open after {} consecutive failures: calls fail fast \
                     for {} ms",
                    self.plugin,
                    failures + 1,
                    self.policy.cool_down.as_millis()
                );
                CircuitState::Open {
                    until: now + self.policy.cool_down,
                    failures: failures + 1,
                }
            }
            (CircuitState::Closed { failures }, true) => CircuitState::Closed {
                failures: failures + 1,
            },
            // Calls admitted before the circuit opened, answering late: no change.
            (open @ CircuitState::Open { .. }, _) => open,
        };
    }
}

impl CallLayer for BreakerLayer {
    fn call<S: Next>(&self, inner: &mut S, call: PluginCall) -> CallFuture {
        let Some(circuit) = self.circuit.clone() else {
            return inner.call(call);
        };
        let trial = match circuit.admit() {
            Ok(trial) => trial,
            Err(fail_fast) => return Box::pin(std::future::ready(Err(fail_fast))),
        };
        let answer = inner.call(call);
        // A trial whose caller gave up gives no verdict: let the next call try instead.
        let unfinished_trial = trial.then(|| TrialGuard(Some(circuit.clone())));
        Box::pin(async move {
            let outcome = answer.await;
            if let Some(mut guard) = unfinished_trial {
                guard.0 = None;
            }
            circuit.record(trial, &outcome);
            outcome
        })
    }
}

/// Re-opens a half-open circuit (ready for the next trial) if its trial call is dropped.
struct TrialGuard(Option<Circuit>);

impl Drop for TrialGuard {
    fn drop(&mut self) {
        if let Some(circuit) = &self.0 {
            let mut state = circuit.lock();
            if *state == CircuitState::HalfOpen {
                *state = CircuitState::Open {
                    until: Instant::now(),
                    failures: circuit.policy.failures,
                };
            }
        }
    }
}
