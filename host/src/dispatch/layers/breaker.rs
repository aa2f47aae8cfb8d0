//! The circuit breaker: after `failures` consecutive failures (errors, panics, timeouts) a
//! plugin's circuit opens and calls fail fast with [`CallError::CircuitOpen`] for the
//! cool-down; then one call is let through (half-open): success closes the circuit, failure
//! opens it again. Every change is logged, and told to the host (`on_change`), which announces
//! it as [`HostEvent::CircuitChanged`](crate::HostEvent::CircuitChanged).

use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tracing::{info, warn};

use super::{CallFuture, CallLayer, Next, PluginCall};
use crate::dispatch::policy::Breaker;
use crate::error::CallError;

// Defined beside the event that carries it (events are below dispatch: nothing uses dispatch).
pub use crate::events::CircuitState;

/// What is told of each change of a circuit's state: from, to.
pub(crate) type OnChange = Arc<dyn Fn(CircuitState, CircuitState) + Send + Sync>;

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
                on_change: None,
            }),
        }
    }

    /// Also tells `on_change` of every change of state (not of a closed circuit's count).
    pub(crate) fn on_change(mut self, on_change: OnChange) -> Self {
        if let Some(circuit) = &mut self.circuit {
            circuit.on_change = Some(on_change);
        }
        self
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
    on_change: Option<OnChange>,
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

    /// Sets the state to `next` and, once the lock is let go, tells `on_change` if that is a
    /// change of state (a closed circuit counting failures is not).
    fn set(&self, mut state: std::sync::MutexGuard<'_, CircuitState>, next: CircuitState) {
        let before = std::mem::replace(&mut *state, next);
        drop(state);
        if std::mem::discriminant(&before) != std::mem::discriminant(&next) {
            if let Some(on_change) = &self.on_change {
                on_change(before, next);
            }
        }
    }

    /// Lets a call through (`Ok(trial)`), or says it must fail fast.
    fn admit(&self) -> Result<bool, CallError> {
        let state = self.lock();
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
                self.set(state, CircuitState::HalfOpen);
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
                let state = self.lock();
                if !matches!(*state, CircuitState::Open { .. }) {
                    warn!(
                        "circuit of plugin {} open: it crashed too often and is not restarted",
                        self.plugin
                    );
                }
                let open = CircuitState::Open {
                    until: Instant::now() + self.policy.cool_down,
                    failures: self.policy.failures,
                };
                self.set(state, open);
                return;
            }
            // Not the plugin's fault (limits, unloaded): no verdict, but a trial must end.
            Err(_) => {
                if trial {
                    let open = CircuitState::Open {
                        until: Instant::now(),
                        failures: self.policy.failures,
                    };
                    self.set(self.lock(), open);
                }
                return;
            }
        };
        let state = self.lock();
        let now = Instant::now();
        let next = match (*state, failed) {
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
        self.set(state, next);
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
            let state = circuit.lock();
            if *state == CircuitState::HalfOpen {
                let open = CircuitState::Open {
                    until: Instant::now(),
                    failures: circuit.policy.failures,
                };
                circuit.set(state, open);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_of_state_is_told_once_and_counting_is_not() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let told = seen.clone();
        let layer = BreakerLayer::new(
            "p".into(),
            Some(Breaker {
                failures: 2,
                cool_down: std::time::Duration::ZERO,
            }),
        )
        .on_change(Arc::new(move |from, to| {
            told.lock().unwrap().push((from.as_str(), to.as_str()));
        }));
        let circuit = layer.circuit.clone().unwrap();
        let failed: Result<Vec<u8>, CallError> = Err(CallError::Failed {
            plugin: "p".into(),
            message: "no".into(),
        });
        circuit.record(false, &failed); // closed, 1 failure: not a change
        circuit.record(false, &failed); // opens
        assert!(circuit.admit().unwrap(), "past the cool-down: a trial");
        circuit.record(true, &Ok(Vec::new())); // closes
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("closed", "open"),
                ("open", "half_open"),
                ("half_open", "closed")
            ]
        );
        assert_eq!(
            serde_json::to_value(CircuitState::HalfOpen).unwrap(),
            "half_open"
        );
    }
}
