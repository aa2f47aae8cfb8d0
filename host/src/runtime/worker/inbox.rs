//! What a worker sends the host, and what the host does with it: replies to its requests,
//! the plugin's log lines and its calls to other plugins (from the control channel), and what
//! the worker writes on stdout and stderr. All of it is logged under the plugin's span.
//!
//! The worker runs code the host does not trust, so nothing it sends can cost the host more
//! than bounded memory and threads: a line longer than 4 KiB is cut, at most [`MAX_NESTED`]
//! calls to other plugins run for it at once, and a garbled channel gets the worker killed.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use plugin_api::ffi::{log_level, CallContext, Status};
use tracing::Span;

use super::frame::{EventHeader, Frame, Kind};
use super::lanes::LANES;
use super::process::{Process, TAIL_LINES};
use crate::runtime::callbacks::{call_for_caller, dependency, NOT_LOADED};
use crate::runtime::emitting::Emitting;
use crate::runtime::registry::Slot;

/// What a worker's threads share with the supervisor: the plugin's identity in the host.
pub(crate) struct Identity {
    /// The plugin's name (from the file's probe, or the worker's report).
    pub(crate) name: OnceLock<Arc<str>>,
    /// The span its lines are logged in.
    pub(crate) span: std::sync::RwLock<Span>,
    /// The slots of the plugins it may call, bound before Init.
    pub(crate) dependencies: OnceLock<Vec<Arc<Slot>>>,
    /// Who restarts its workers.
    pub(crate) supervisor: OnceLock<std::sync::Weak<super::supervisor::Supervisor>>,
    /// Its right to publish, bound before Init.
    pub(crate) events: OnceLock<Arc<Emitting>>,
}

/// Reads the worker's pipe line by line, logging each under the plugin's span and keeping the
/// last few; the receiver hears when the pipe ends. Once `stop` is set (the worker is gone),
/// it reads what is there and ends, even if a process the plugin started still holds the
/// pipe's other end.
pub(super) fn drain(
    pipe: impl std::io::Read + AsRawFd + Send + 'static,
    identity: Arc<Identity>,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr: bool,
    stop: Arc<AtomicBool>,
) -> Receiver<()> {
    let (done, finished) = sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("plughost-worker-output".into())
        .spawn(move || {
            let mut pipe = pipe;
            let mut pending: Vec<u8> = Vec::new();
            let mut chunk = [0u8; 4096];
            let log = |line: &[u8]| {
                let text = String::from_utf8_lossy(line).trim_end().to_owned();
                if text.is_empty() {
                    return;
                }
                let span = identity.span();
                let _entered = span.enter();
                if stderr {
                    tracing::warn!(target: "plugin", stream = "stderr", "{text}");
                } else {
                    tracing::info!(target: "plugin", stream = "stdout", "{text}");
                }
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(text);
            };
            loop {
                if !readable(&pipe, &stop) {
                    break;
                }
                let n = match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&chunk[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    log(&pending[..end]);
                    pending.drain(..=end);
                }
                // A line longer than 4 KiB is cut: a plugin printing without newlines must not
                // grow the host's memory.
                if pending.len() >= 4096 {
                    log(&pending);
                    pending.clear();
                }
            }
            log(&pending);
            let _ = done.send(());
        });
    if spawned.is_err() {
        let (done, finished) = sync_channel(1);
        let _ = done.send(());
        return finished;
    }
    finished
}

/// Waits until `pipe` has something to read (or its end); `false` once `stop` is set and it
/// has nothing.
fn readable(pipe: &impl AsRawFd, stop: &AtomicBool) -> bool {
    loop {
        let mut poll = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid `pollfd` on this stack, for a descriptor this thread owns.
        let ready = unsafe { libc::poll(&mut poll, 1, 250) };
        if ready > 0 {
            return true;
        }
        if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
        if stop.load(Ordering::Acquire) {
            return false;
        }
    }
}

/// Reads the worker's control channel until it closes.
pub(super) fn read_channel(
    process: Arc<Process>,
    identity: Arc<Identity>,
    reader: UnixStream,
    loaded: SyncSender<Result<Frame, String>>,
) {
    let mut reader = std::io::BufReader::new(reader);
    let mut loaded = Some(loaded);
    let mut publisher: Option<SyncSender<Frame>> = None;
    loop {
        let frame = match Frame::read_from(&mut reader) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                // A worker that garbles its channel cannot be trusted with calls.
                process.kill(&format!("it broke the control channel ({e})"));
                break;
            }
        };
        match frame.kind {
            Kind::Loaded | Kind::Refused => {
                if let Some(loaded) = loaded.take() {
                    let _ = loaded.send(Ok(frame));
                }
            }
            Kind::Reply => {
                let waiting = process
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&frame.id);
                if let Some(waiting) = waiting {
                    let _ = waiting.send(frame);
                }
            }
            Kind::Log => log_line(&identity, frame.status, &frame.first),
            // On a thread of their own, in order (the plugin's events stay in publish order):
            // a publish may wait for room in a full `block` queue, and replies to the host's
            // requests must not wait behind it.
            Kind::Emit => {
                let publisher = publisher
                    .get_or_insert_with(|| start_publisher(process.clone(), identity.clone()));
                if let Err(TrySendError::Full(frame) | TrySendError::Disconnected(frame)) =
                    publisher.try_send(frame)
                {
                    refuse_publish(&process, &frame);
                }
            }
            Kind::Call => {
                // Each runs on a thread of its own (it may wait on a slow plugin), so a worker
                // that floods the channel with calls must not get a thread for each.
                if process.nested.fetch_add(1, Ordering::AcqRel) >= MAX_NESTED {
                    process.nested.fetch_sub(1, Ordering::AcqRel);
                    refuse_call(&process, &frame);
                    continue;
                }
                let process = process.clone();
                let identity = identity.clone();
                let spawned = std::thread::Builder::new()
                    .name("plughost-worker-call".into())
                    .spawn({
                        let (process, frame) = (process.clone(), frame.clone());
                        move || {
                            nested_call(&process, &identity, frame);
                            process.nested.fetch_sub(1, Ordering::AcqRel);
                        }
                    });
                if spawned.is_err() {
                    process.nested.fetch_sub(1, Ordering::AcqRel);
                    refuse_call(&process, &frame);
                }
            }
            _ => {}
        }
    }
    if let Some(loaded) = loaded.take() {
        let _ = loaded.send(Err("the worker ended before it loaded the library".into()));
    }
}

impl Identity {
    /// A new identity; the name and span are set once known.
    pub(crate) fn new() -> Self {
        Identity {
            name: OnceLock::new(),
            span: std::sync::RwLock::new(Span::none()),
            dependencies: OnceLock::new(),
            supervisor: OnceLock::new(),
            events: OnceLock::new(),
        }
    }

    /// The span the plugin's lines are logged in.
    pub(crate) fn span(&self) -> Span {
        self.span.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the span (the name alone first, then with the version once the worker said it).
    pub(crate) fn set_span(&self, span: Span) {
        *self.span.write().unwrap_or_else(|e| e.into_inner()) = span;
    }
}

/// Calls a worker's plugin may have running in other plugins at once; more are refused.
const MAX_NESTED: u64 = 64;

/// Answers a call of the worker's plugin that the host will not run.
fn refuse_call(process: &Process, call: &Frame) {
    let mut answer = Frame::new(Kind::CallReply);
    answer.id = call.id;
    answer.status = Status::ERROR.0;
    answer.first = format!(
        "refused by the host: more than {MAX_NESTED} calls to other plugins at once from one \
         isolated plugin"
    )
    .into_bytes();
    let _ = answer.write_to(&mut *process.control.lock().unwrap_or_else(|e| e.into_inner()));
}

/// A plugin's log line, in the host's log under its span.
fn log_line(identity: &Identity, level: u8, message: &[u8]) {
    let message = String::from_utf8_lossy(message);
    let span = identity.span();
    let _entered = span.enter();
    match level {
        log_level::ERROR => tracing::error!(target: "plugin", "{message}"),
        log_level::WARN => tracing::warn!(target: "plugin", "{message}"),
        log_level::INFO => tracing::info!(target: "plugin", "{message}"),
        log_level::DEBUG => tracing::debug!(target: "plugin", "{message}"),
        _ => tracing::trace!(target: "plugin", "{message}"),
    }
}

/// The most detailed plugin log level the host records, for the worker to skip the rest.
pub(super) fn max_level() -> u8 {
    if tracing::enabled!(target: "plugin", tracing::Level::TRACE) {
        log_level::TRACE
    } else if tracing::enabled!(target: "plugin", tracing::Level::DEBUG) {
        log_level::DEBUG
    } else if tracing::enabled!(target: "plugin", tracing::Level::INFO) {
        log_level::INFO
    } else if tracing::enabled!(target: "plugin", tracing::Level::WARN) {
        log_level::WARN
    } else {
        log_level::ERROR
    }
}

/// Publishes a worker's plugin may have waiting at once; more are refused.
const MAX_PUBLISHES: usize = 256;

/// The thread that publishes, in order, what a worker's plugin publishes.
fn start_publisher(process: Arc<Process>, identity: Arc<Identity>) -> SyncSender<Frame> {
    let (sender, frames) = sync_channel::<Frame>(MAX_PUBLISHES);
    let spawned = std::thread::Builder::new()
        .name("plughost-worker-publish".into())
        .spawn(move || {
            for frame in frames {
                publish(&process, &identity, frame);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a thread for a worker's events: {e}");
    }
    sender
}

/// Answers a publish of the worker's plugin that the host will not make.
fn refuse_publish(process: &Process, emit: &Frame) {
    let mut answer = Frame::new(Kind::CallReply);
    answer.id = emit.id;
    answer.status = Status::ERROR.0;
    answer.first = format!(
        "refused by the host: more than {MAX_PUBLISHES} publishes waiting from one isolated \
         plugin"
    )
    .into_bytes();
    let _ = answer.write_to(&mut *process.control.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Publishes an event of the worker's plugin, and answers it.
fn publish(process: &Process, identity: &Identity, emit: Frame) {
    let mut answer = Frame::new(Kind::CallReply);
    answer.id = emit.id;
    let outcome = match (
        identity.events.get(),
        serde_json::from_slice::<EventHeader>(&emit.first),
    ) {
        (None, _) => Err("the host has not bound this plugin's events".to_owned()),
        (_, Err(e)) => Err(format!("the worker sent a damaged event: {e}")),
        (Some(events), Ok(header)) => {
            // The host sets id, source and time: whatever the worker put there is ignored.
            let header = EventHeader {
                id: String::new(),
                source: String::new(),
                time_unix_nanos: 0,
                ..header
            };
            let extensions = header.extensions();
            let raw = header.raw(&extensions, emit.second.as_deref().unwrap_or_default());
            events.publish(emit.number, &raw).map_err(|e| e.to_string())
        }
    };
    if let Err(message) = outcome {
        answer.status = Status::ERROR.0;
        answer.first = message.into_bytes();
    }
    let _ = answer.write_to(&mut *process.control.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Runs the worker's plugin's call to another plugin, and answers it.
fn nested_call(process: &Process, identity: &Identity, call: Frame) {
    let mut answer = Frame::new(Kind::CallReply);
    answer.id = call.id;
    let caller = identity.name.get().map_or("the plugin", |n| &**n);
    let slot = dependency(caller, identity.dependencies.get(), &call.first);
    let lane = usize::from(call.status);
    let ctx = CallContext {
        cancelled: if lane < LANES {
            &process.cancel[lane]
        } else {
            std::ptr::null()
        },
        deadline_unix_nanos: call.number,
    };
    let (status, bytes) = match slot {
        Err(message) => (Status::ERROR, message.into_bytes()),
        Ok(slot) => match &*slot.load() {
            None => (Status::ERROR, NOT_LOADED.to_vec()),
            Some(version) => {
                call_for_caller(version, &ctx, call.second.as_deref().unwrap_or_default())
            }
        },
    };
    answer.status = status.0;
    answer.first = bytes;
    if !answer.fits() {
        let size = answer.first.len();
        answer.status = Status::ERROR.0;
        answer.first = format!(
            "refused by the host: an answer of {size} bytes is more than an isolated plugin may \
             receive"
        )
        .into_bytes();
    }
    let _ = answer.write_to(&mut *process.control.lock().unwrap_or_else(|e| e.into_inner()));
}
