//! `ticker`: an event source. While it serves it publishes `ticker.tick` every `interval`
//! (`"1s"` by default; a whole number of `ms` or `s`, at least `10ms`), with the data
//! `{"seq": n, "at_unix_ms": t}`. `seq` starts at 1 and carries on across a hot reload: the
//! next version neither repeats nor skips a number. Execute answers with the last `seq`
//! published (0 before the first).
//!
//! Try it with the `audit` example, which writes every event it receives to a file:
//!
//! ```text
//! cargo xtask build-plugins && cargo run --bin plughost -- run
//! tail -f audit.jsonl        # a ticker.tick line a second
//! ```
//!
//! Change `interval` in `plughost.toml`, or rebuild the plugin, while it runs: the ticks follow
//! the new setting and `seq` goes on where it was.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use plugin_api::{export_plugin, ConfigField, Context, Emitter, Output, Plugin, PluginError};
use serde::Deserialize;

/// The one topic it publishes.
const TICK: &str = "ticker.tick";

/// The shortest interval accepted.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// After `save_state`, how long the old version holds its ticks back while the host switches
/// to the new one (which continues from the saved `seq`). If the reload fails, the old version
/// is not stopped and resumes once this has passed.
const HAND_OVER: Duration = Duration::from_secs(10);

/// The configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "one_second")]
    interval: String,
}

fn one_second() -> String {
    "1s".into()
}

/// Parses `"250ms"` or `"2s"`: a whole number, then `ms` or `s`.
fn parse_interval(text: &str) -> Result<Duration, PluginError> {
    let invalid = || {
        PluginError::new(format!(
            "interval {text:?} is not a whole number followed by ms or s (e.g. \"250ms\", \"1s\")"
        ))
    };
    let text = text.trim();
    let (number, unit) = if let Some(number) = text.strip_suffix("ms") {
        (number, Duration::from_millis(1))
    } else if let Some(number) = text.strip_suffix('s') {
        (number, Duration::from_secs(1))
    } else {
        return Err(invalid());
    };
    let number: u32 = number.trim().parse().map_err(|_| invalid())?;
    let interval = unit * number;
    if interval < MIN_INTERVAL {
        return Err(PluginError::new(format!(
            "interval {text:?} is too short: it must be at least 10ms"
        )));
    }
    Ok(interval)
}

/// What the ticking thread and the calls share.
#[derive(Debug)]
struct State {
    /// Set by `stop`, for good.
    stopped: bool,
    /// The `seq` of the next tick.
    next_seq: u64,
    /// Set by `save_state`: no tick until then (see [`HAND_OVER`]).
    handed_over_until: Option<Instant>,
}

/// The plugin.
#[derive(Debug)]
pub struct Ticker {
    interval: Duration,
    state: Mutex<State>,
    wake: Condvar,
}

impl Default for Ticker {
    fn default() -> Self {
        Ticker {
            interval: Duration::from_secs(1),
            state: Mutex::new(State {
                stopped: false,
                next_seq: 1,
                handed_over_until: None,
            }),
            wake: Condvar::new(),
        }
    }
}

impl Ticker {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the next tick. Called with the lock held, so that `save_state` sees either
    /// the tick published and counted, or neither; a refused tick is retried with the same
    /// `seq` at the next interval.
    fn tick(&self, state: &mut State, emitter: &Emitter) {
        if let Some(until) = state.handed_over_until {
            if Instant::now() < until {
                return;
            }
            plugin_api::warn!("still running {HAND_OVER:?} after handing over: resuming");
            state.handed_over_until = None;
        }
        let at_unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let data = serde_json::json!({ "seq": state.next_seq, "at_unix_ms": at_unix_ms });
        match emitter.emit(TICK, &data) {
            Ok(()) => state.next_seq += 1,
            Err(e) => plugin_api::warn!("tick {} not published: {e}", state.next_seq),
        }
    }
}

impl Plugin for Ticker {
    type Config = Config;
    const NAME: &'static str = "ticker";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Publishes ticker.tick every interval";
    const AUTHOR: &'static str = "plughost developers";
    const LICENSE: &'static str = "MIT OR Apache-2.0";
    const TAGS: &'static [&'static str] = &["example", "events"];
    const CONFIG_SCHEMA: &'static [ConfigField] = &[ConfigField::string("interval")
        .default_json(r#""1s""#)
        .describe("Time between ticks: a whole number of ms or s, at least 10ms")];
    const EMITS: &'static [&'static str] = &[TICK];
    const EVENT_SOURCE: bool = true;

    fn validate_config(config: &Config) -> Result<(), PluginError> {
        parse_interval(&config.interval).map(drop)
    }

    fn init(&mut self, config: Config) -> Result<(), PluginError> {
        self.interval = parse_interval(&config.interval)?;
        Ok(())
    }

    fn execute(
        &self,
        _ctx: &Context<'_>,
        _input: &[u8],
        output: &mut Output<'_>,
    ) -> Result<(), PluginError> {
        let last = self.lock().next_seq - 1;
        output.write(last.to_string().as_bytes());
        Ok(())
    }

    /// Ticks on the host's thread until `stop`. Ticks are due at fixed times, `interval`
    /// apart; after a stall (a suspended machine) it starts again from now rather than
    /// catching up with a burst.
    fn start(&self, emitter: Emitter) -> Result<(), PluginError> {
        let mut due = Instant::now() + self.interval;
        let mut state = self.lock();
        // Started again after a stop: a reload that failed, and this version goes on.
        state.stopped = false;
        state.handed_over_until = None;
        while !state.stopped {
            let now = Instant::now();
            if now < due {
                state = self
                    .wake
                    .wait_timeout(state, due - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            self.tick(&mut state, &emitter);
            due += self.interval;
            if due <= now {
                due = now + self.interval;
            }
        }
        Ok(())
    }

    fn stop(&self) -> Result<(), PluginError> {
        self.lock().stopped = true;
        self.wake.notify_all();
        Ok(())
    }

    /// Hot reload hands over the next `seq`: `next_seq=<n>`. From here on this version holds
    /// its ticks back (for at most [`HAND_OVER`]), so the new one does not repeat a number.
    fn save_state(&self) -> Option<Vec<u8>> {
        let mut state = self.lock();
        state.handed_over_until = Some(Instant::now() + HAND_OVER);
        Some(format!("next_seq={}", state.next_seq).into_bytes())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), PluginError> {
        let next_seq = std::str::from_utf8(state)
            .ok()
            .and_then(|s| s.strip_prefix("next_seq="))
            .and_then(|n| n.parse().ok())
            .filter(|&n| n >= 1)
            .ok_or_else(|| PluginError::new("unrecognised state from the previous version"))?;
        self.lock().next_seq = next_seq;
        Ok(())
    }
}

export_plugin!(Ticker);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval(" 10ms ").unwrap(), Duration::from_millis(10));
        for bad in ["", "s", "1", "1m", "-1s", "1.5s", "ms"] {
            let error = parse_interval(bad).unwrap_err();
            assert!(error.message().contains("whole number"), "{bad}: {error}");
        }
        for short in ["0s", "0ms", "9ms"] {
            let error = parse_interval(short).unwrap_err();
            assert!(
                error.message().contains("at least 10ms"),
                "{short}: {error}"
            );
        }
    }

    #[test]
    fn state_round_trip() {
        let old = Ticker::default();
        old.lock().next_seq = 42;
        let state = old.save_state().unwrap();
        assert!(old.lock().handed_over_until.is_some());
        let mut new = Ticker::default();
        new.restore_state(&state).unwrap();
        assert_eq!(new.lock().next_seq, 42);
        assert!(new.restore_state(b"next_seq=0").is_err());
        assert!(new.restore_state(b"count=3").is_err());
    }
}
