//! What a running version does with events (plugin-api 1.4): its handler, given each event
//! the bus takes from its queue, and its event source's `start`, on a thread of its own, and
//! `stop`. Shutdown stops the source first (`instance.rs`).

use std::time::{Duration, Instant, SystemTime};

use abi_stable::std_types::{RSlice, RStr};
use plugin_api::ffi::{CallContext, Extension, RawEvent, Status};

use super::abi::{call_error, on_own_thread, with_output, PluginThread};
use super::instance::{Callee, InstancePtr, RunningPlugin};
use crate::error::CallError;
use crate::event::Event;

impl RunningPlugin {
    /// Delivers `event` to the plugin's handler, which has `timeout` (passed on as the
    /// context's deadline; an isolated plugin's worker is killed past it). `None` if this
    /// version does not take events of its topic. `scratch`: a buffer for the event's id, reused across calls.
    pub(crate) fn on_event(
        &self,
        event: &Event,
        timeout: Duration,
        scratch: &mut String,
    ) -> Option<Result<(), CallError>> {
        // Only topics this version subscribes to: the queue it is delivered from may hold
        // events its previous version subscribed to.
        let subscribed = self
            .library()
            .info()
            .subscribes
            .iter()
            .any(|pattern| crate::event::topic::matches(pattern, event.topic()));
        if !subscribed {
            return None;
        }
        let (instance, free_buffer) = match &self.callee {
            Callee::Worker(worker) => return Some(worker.on_event(event, timeout)),
            Callee::Here {
                instance,
                free_buffer,
                ..
            } => (*instance, *free_buffer),
        };
        let on_event = self.library().event_module()?.on_event;
        let extensions: Vec<Extension<'_>> = event
            .extensions()
            .map(|(name, value)| Extension {
                name: RStr::from_str(name),
                value: RStr::from_str(value),
            })
            .collect();
        let raw = RawEvent {
            id: RStr::from_str(event.id_into(scratch)),
            source: RStr::from_str(event.source()),
            topic: RStr::from_str(event.topic()),
            time_unix_nanos: unix_nanos(event.time()),
            datacontenttype: RStr::from_str(event.content_type()),
            data: RSlice::from_slice(event.data()),
            extensions: RSlice::from_slice(&extensions),
        };
        let ctx = CallContext {
            cancelled: std::ptr::null(),
            deadline_unix_nanos: unix_nanos(SystemTime::now() + timeout),
        };
        let mut message = Vec::new();
        // SAFETY: the handler and instance belong to this live version (the caller holds it
        // for the call); `raw`, `ctx` and the buffer are valid for the call.
        let status = unsafe {
            with_output(&mut message, free_buffer, |out| {
                on_event(instance, &ctx, &raw, out)
            })
        };
        Some(if status == Status::OK {
            Ok(())
        } else {
            Err(call_error(&self.name, status, &message))
        })
    }

    /// Starts the plugin's event source, if it is one, with a fresh emitter: on a thread of
    /// its own here, or in its worker. Its failure to start is logged, not returned: the
    /// plugin still serves calls.
    pub(crate) fn start_source(&self) {
        let library = self.library();
        if !library.info().event_source || library.is_stuck() {
            // A stuck library's code may still run in its `start`: never a second one.
            return;
        }
        let Some(emitting) = library.emitting() else {
            return;
        };
        let token = emitting.open();
        let (instance, free_buffer) = match &self.callee {
            Callee::Worker(worker) => {
                if let Err(e) = worker.start_source(token) {
                    tracing::warn!(plugin = %self.name, "event source did not start: {e}");
                }
                return;
            }
            Callee::Here {
                instance,
                free_buffer,
                ..
            } => (*instance, *free_buffer),
        };
        let Some(module) = library.event_module() else {
            return;
        };
        let start = module.start;
        let instance = InstancePtr(instance);
        let name = self.name.clone();
        let span = tracing::Span::current();
        let thread = PluginThread::spawn("plughost-source", move || {
            let instance = instance;
            let mut message = Vec::new();
            // SAFETY: the instance stays live while this runs: Shutdown stops the source and
            // waits for this thread first, and marks the library stuck (never shut down or
            // closed) if it does not end.
            let status = unsafe {
                with_output(&mut message, free_buffer, |out| {
                    start(instance.0, token, out)
                })
            };
            if status != Status::OK {
                let _entered = span.enter();
                tracing::warn!(
                    plugin = %name,
                    "event source stopped with an error: {}",
                    call_error(&name, status, &message)
                );
            }
            (status, message)
        });
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    }

    /// Stops the plugin's event source if it runs: calls its `stop` and waits for its `start`
    /// to end, within `limit` for both; then its emitter is dead. A source that does not end
    /// leaves the library stuck (never closed). Does nothing the second time.
    pub(crate) fn stop_source(&self, limit: Duration) -> Result<(), CallError> {
        let deadline = Instant::now() + limit;
        let Some(emitting) = self.library.as_ref().and_then(|l| l.emitting()) else {
            return Ok(());
        };
        if self.library().info().event_source {
            // A publish of its waiting for room would hold `stop` up: it gives up now.
            emitting.stopping();
        }
        let (instance, free_buffer) = match &self.callee {
            Callee::Worker(worker) => {
                if !self.library().info().event_source {
                    return Ok(());
                }
                let stopped = worker.stop_source(limit);
                emitting.close();
                return stopped;
            }
            Callee::Here {
                instance,
                free_buffer,
                ..
            } => (*instance, *free_buffer),
        };
        let Some(thread) = self.source.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(());
        };
        let Some(stop) = self.library().event_module().map(|m| m.stop) else {
            return Ok(());
        };
        let instance = InstancePtr(instance);
        let answer = on_own_thread(limit, move || {
            let instance = instance;
            let mut message = Vec::new();
            // SAFETY: the instance is live (Shutdown has not run: it calls this first).
            let status =
                unsafe { with_output(&mut message, free_buffer, |out| stop(instance.0, out)) };
            (status, message)
        });
        let stopped = match answer {
            None => {
                emitting.close();
                return Err(self.library().stuck_in("stop", limit));
            }
            Some((Status::OK, _)) => Ok(()),
            Some((status, message)) => Err(call_error(&self.name, status, &message)),
        };
        if thread.wait_until(deadline).is_none() {
            emitting.close();
            return Err(self.library().stuck_in("start (after stop)", limit));
        }
        emitting.close();
        stopped
    }
}

/// `time` in nanoseconds since the Unix epoch, as events and deadlines cross the boundary.
pub(crate) fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
