//! The innermost service: the plugin call itself, on the [`CallPool`] so that a plugin that
//! blocks never blocks an async worker thread.

use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use plugin_api::ffi::CallContext;
use tower::Service;

use super::{CallFuture, PluginCall};
use crate::dispatch::pool::CallPool;
use crate::error::CallError;
use crate::runtime::PluginHandle;

/// Runs calls through a [`PluginHandle`] on the blocking pool.
#[derive(Clone)]
pub struct Blocking {
    handle: PluginHandle,
}

impl Blocking {
    /// Calls through `handle`.
    pub fn new(handle: PluginHandle) -> Self {
        Blocking { handle }
    }
}

impl Service<PluginCall> for Blocking {
    type Response = Vec<u8>;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut call: PluginCall) -> CallFuture {
        let handle = self.handle.clone();
        // The plugin sees the deadline as wall-clock time.
        let left = call
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let deadline_unix_nanos = (SystemTime::now() + left)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos() as u64;
        let plugin = self.handle.shared_name().clone();
        // Named explicitly: closures capture only the fields they use, and the slot must live
        // until the plugin returns.
        let permit = call.permit.take();
        let task = CallPool::global().run(move || {
            let _permit = permit;
            // A call whose deadline passed while it waited for a thread does not start. The
            // deadline layer sets `cancel` then reads `started`; this sets `started` then reads
            // `cancel`: with SeqCst, at least one of the two sees the other.
            call.started.store(true, Ordering::SeqCst);
            if call.cancel.load(Ordering::SeqCst) {
                return Err(CallError::Timeout {
                    plugin: handle.shared_name().clone(),
                    timeout: Duration::ZERO,
                });
            }
            let ctx = CallContext {
                // `call` (and so the flag) lives until this closure returns.
                cancelled: std::sync::Arc::as_ptr(&call.cancel),
                deadline_unix_nanos,
            };
            let mut output = Vec::new();
            handle
                .call_into_with(&ctx, &call.input, &mut output)
                .map(|()| output)
        });
        Box::pin(async move {
            task.await.unwrap_or_else(|_| {
                Err(CallError::Failed {
                    plugin,
                    message: "the call's thread ended without an answer".into(),
                })
            })
        })
    }
}
