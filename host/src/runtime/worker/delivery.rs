//! An isolated plugin's events, from the host's side: each event its handler takes crosses
//! the control channel as a request (a worker restarting after a crash is waited for), and its
//! event source is started and stopped in the worker, started again with a new emitter when a
//! crashed worker is replaced. What the worker publishes comes back through the inbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::death::Phase;
use super::frame::{EventHeader, Frame, Kind};
use super::process::{Process, Stop};
use super::supervisor::Supervisor;
use crate::error::CallError;
use crate::runtime::delivery::unix_nanos;
use crate::runtime::emitting::Emitting;

/// How long an event waits for a worker restarting after a crash.
const RESTART_WAIT: Duration = Duration::from_secs(10);

impl Supervisor {
    /// Lets the plugin publish as `emitting` allows (first binding counts).
    pub(crate) fn bind_events(&self, emitting: Arc<Emitting>) {
        let _ = self.identity.events.set(emitting);
    }

    /// Delivers `event` to the handler in the worker; past `timeout` the worker is killed
    /// (and restarted).
    pub(crate) fn on_event(
        &self,
        event: &crate::event::Event,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let header = EventHeader::of(event);
        let mut frame = Frame::new(Kind::Event);
        frame.number = unix_nanos(std::time::SystemTime::now() + timeout);
        frame.first = serde_json::to_vec(&header).unwrap_or_default();
        frame.second = Some(event.data().to_vec());
        // A worker restarting after a crash is waited for, as a call waits for it: the event
        // is for the plugin, whichever worker runs it.
        let restarted_by = Instant::now() + RESTART_WAIT;
        loop {
            let process = self.current.load_full();
            match process.request(frame.clone(), Phase::Event, timeout) {
                Ok(reply) => return self.status_of(&reply).map(drop),
                Err(Stop::NotServing) => self.wait_for_worker(&process, Some(restarted_by))?,
                Err(stop) => return Err(self.stopped(&process, stop, timeout)),
            }
        }
    }

    /// Starts the event source in the worker with emitter `token`; a worker restarted after
    /// a crash starts it again, with a new one.
    pub(crate) fn start_source(&self, token: u64) -> Result<(), CallError> {
        self.life().source = true;
        self.send_start(&self.current.load_full(), token)
    }

    pub(super) fn send_start(&self, process: &Process, token: u64) -> Result<(), CallError> {
        let mut frame = Frame::new(Kind::Start);
        frame.number = token;
        let limit = self.restarts.check_timeout;
        let reply = process
            .request(frame, Phase::Source, limit)
            .map_err(|stop| self.stopped(process, stop, limit))?;
        self.status_of(&reply).map(drop)
    }

    /// Stops the event source in the worker and waits for its start to return, within
    /// `limit` (past it, the worker is killed).
    pub(crate) fn stop_source(&self, limit: Duration) -> Result<(), CallError> {
        if !std::mem::take(&mut self.life().source) {
            return Ok(());
        }
        let reply = self.request(Frame::new(Kind::Stop), Phase::Source, limit)?;
        self.status_of(&reply).map(drop)
    }

    /// Starts the source again in `process`, a worker restarted after a crash, if it ran.
    pub(super) fn restart_source(&self, process: &Process) {
        if !self.life().source {
            return;
        }
        let Some(events) = self.identity.events.get() else {
            return;
        };
        if let Err(e) = self.send_start(process, events.open()) {
            tracing::warn!("{}: event source did not start again: {e}", self.name());
        }
    }
}
