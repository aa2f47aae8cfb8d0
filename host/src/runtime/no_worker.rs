//! Where plugins cannot run in worker processes (anywhere but Linux, or built with
//! `PLUGHOST_NO_ISOLATION`): the worker's host-side type exists so that the rest of the crate
//! reads the same everywhere, but it has no values. An isolated plugin is refused before one
//! would be needed ([`Workers::isolate`](super::Workers::isolate)).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use plugin_api::ffi::CallContext;

use crate::error::CallError;
use crate::plugin_info::PluginInfo;
use crate::runtime::handle::PluginHealth;
use crate::runtime::registry::Slot;

/// No worker can exist here: the type has no values, so every method is unreachable.
pub(crate) enum Supervisor {}

/// See the Linux one: what `list` shows of an isolated plugin.
pub(crate) struct WorkerStatus {
    pub(crate) pid: Option<u32>,
    pub(crate) state: &'static str,
}

impl Supervisor {
    pub(crate) fn info(&self) -> &PluginInfo {
        match *self {}
    }
    pub(crate) fn file(&self) -> &Path {
        match *self {}
    }
    pub(crate) fn copy(&self) -> &Path {
        match *self {}
    }
    pub(crate) fn content_hash(&self) -> u128 {
        match *self {}
    }
    pub(crate) fn bind_dependencies(&self, _: Vec<Arc<Slot>>) {
        match *self {}
    }
    pub(crate) fn validate(&self, _: &[u8], _: Duration) -> Result<(), CallError> {
        match *self {}
    }
    pub(crate) fn init(self: &Arc<Self>, _: &[u8], _: Option<&[u8]>) -> Result<(), CallError> {
        match **self {}
    }
    pub(crate) fn call(&self, _: &CallContext, _: &[u8], _: &mut Vec<u8>) -> Result<(), CallError> {
        match *self {}
    }
    pub(crate) fn health(&self) -> Result<PluginHealth, CallError> {
        match *self {}
    }
    pub(crate) fn save_state(&self) -> Result<Option<Vec<u8>>, CallError> {
        match *self {}
    }
    pub(crate) fn shutdown(&self, _: Duration) -> Result<(), CallError> {
        match *self {}
    }
    pub(crate) fn kill(&self) {
        match *self {}
    }
    pub(crate) fn status(&self) -> WorkerStatus {
        match *self {}
    }
    pub(crate) fn bind_events(&self, _: Arc<crate::runtime::emitting::Emitting>) {
        match *self {}
    }
    pub(crate) fn on_event(&self, _: &crate::event::Event, _: Duration) -> Result<(), CallError> {
        match *self {}
    }
    pub(crate) fn start_source(&self, _: u64) -> Result<(), CallError> {
        match *self {}
    }
    pub(crate) fn stop_source(&self, _: Duration) -> Result<(), CallError> {
        match *self {}
    }
}
