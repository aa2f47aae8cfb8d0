//! The worker role: the `plughost` executable started as
//! `plughost __worker FILE COPY HASH PARENT LEVEL SANDBOX NAME` (NAME empty if not known yet),
//! with the control socket as fd 3 and the lanes' memory file as fd 4. It confines itself to
//! the plugin's grants ([`sandbox`]), loads the private copy the host checked (checking it
//! again), says who the plugin is and what it is confined to, then serves: one thread per lane
//! runs Execute, one thread runs what the host asks on the control channel (Init,
//! validate_config, health, state, Shutdown), and the main thread reads the channel. The
//! plugin's log lines, its calls to other plugins and its publishes go to the host as frames;
//! events come as requests, and its event source runs on a thread of its own.
//!
//! Slightly longer than the project's 600 lines on purpose: this is the whole worker process,
//! and what it does with each request reads top to bottom in one `match`.
//!
//! It dies with its host: the kernel kills it when the host does (parent-death signal), and it
//! exits when the control channel closes.

use std::collections::HashMap;
use std::ffi::c_void;
use std::io::Write as _;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Mutex, OnceLock};

use abi_stable::std_types::{RSlice, RStr};
use plugin_api::ffi::{
    health_level, CallContext, EventApi, EventModule, HostApi, OutBuffer, PluginCalls,
    PluginVTable, RawEvent, StateVTable, Status,
};

use super::frame::{EventHeader, Frame, Kind};
use super::lanes::{Region, LANES, MESSAGE_LIMIT, OP_QUIT, STATUS_TOO_LARGE};
use super::sandbox::{self, Sandbox};
use crate::loader::Library;
use crate::runtime::abi::{with_output, written, Written, BROKEN_PROTOCOL};
use crate::runtime::callbacks::{free_host_buffer, reply};
use crate::runtime::instance::InstancePtr;

/// The argument that starts a program in the worker role.
pub const WORKER_ARG: &str = "__worker";

/// The fd the control socket is passed as.
pub(crate) const CONTROL_FD: i32 = 3;
/// The fd the lanes' memory file is passed as.
pub(crate) const LANES_FD: i32 = 4;
/// The descriptor the private copy of the library comes on (a memory file has no path another
/// process could open); COPY is `/proc/self/fd/5`.
pub(crate) const COPY_FD: i32 = 5;

/// What the worker shares between its threads and the callbacks it gives the plugin.
struct Side {
    writer: Mutex<UnixStream>,
    max_level: u8,
    region: Region,
    /// The plugin's calls to other plugins waiting for the host's answer, by id.
    calls: Mutex<HashMap<u64, SyncSender<Frame>>>,
    next_call: AtomicU64,
}

static SIDE: OnceLock<Side> = OnceLock::new();

impl Side {
    fn send(&self, frame: &Frame) {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if frame.write_to(&mut *writer).is_err() {
            // The host is gone: so is the point of running.
            exit_now(0);
        }
    }
}

/// The plugin this worker serves.
struct Served {
    vtable: PluginVTable,
    state: Option<StateVTable>,
    events: Option<EventModule>,
    instance: AtomicPtr<c_void>,
    /// The event source's `start`, running or returned.
    source: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Ends the process at once, without running the plugin's exit handlers or destructors (they
/// could hang, and the process's end is the unload).
fn exit_now(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    // SAFETY: `_exit` has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Runs the worker role with the arguments after [`WORKER_ARG`].
pub(crate) fn run(args: &[std::ffi::OsString]) -> ExitCode {
    let [file, copy, hash, parent, level, sandbox, name] = args else {
        eprintln!("plughost worker: expected FILE COPY HASH PARENT LEVEL SANDBOX NAME");
        return ExitCode::from(2);
    };
    let Some(sandbox) = sandbox
        .to_str()
        .and_then(|json| serde_json::from_str::<Sandbox>(json).ok())
    else {
        eprintln!("plughost worker: SANDBOX is not a sandbox");
        return ExitCode::from(2);
    };
    // Dies with its host, even if nobody closes the channel (`kill -9` of the host). The
    // check after it covers a host that died before the flag was set.
    // SAFETY: `prctl(PR_SET_PDEATHSIG)` only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    let parent: i32 = parent.to_str().and_then(|p| p.parse().ok()).unwrap_or(-1);
    // SAFETY: `getppid` has no preconditions.
    if unsafe { libc::getppid() } != parent {
        return ExitCode::from(1);
    }
    let hash = hash
        .to_str()
        .and_then(|h| u128::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    let max_level = level.to_str().and_then(|l| l.parse().ok()).unwrap_or(0);
    // Not to be inherited by whatever the plugin starts: a child holding the channel would keep
    // it open after this process dies, and could speak on it.
    for fd in [CONTROL_FD, LANES_FD, COPY_FD] {
        // SAFETY: `fcntl(F_SETFD)` on descriptors this process was given; no memory involved.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: the host passes these two descriptors, open, to this process alone; nothing
    // else in this process uses them.
    let (control, lanes) = unsafe {
        (
            UnixStream::from_raw_fd(CONTROL_FD),
            OwnedFd::from_raw_fd(LANES_FD),
        )
    };
    let region = match Region::map(lanes) {
        Ok(region) => region,
        Err(e) => {
            eprintln!("plughost worker: cannot map the lanes: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(reader) = control.try_clone() else {
        return ExitCode::from(2);
    };
    let side = SIDE.get_or_init(|| Side {
        writer: Mutex::new(control),
        max_level,
        region,
        calls: Mutex::default(),
        next_call: AtomicU64::new(1),
    });
    let refuse = |why: String| -> ! {
        let mut refused = Frame::new(Kind::Refused);
        refused.first = why.into_bytes();
        side.send(&refused);
        exit_now(0);
    };
    // First, while this thread is the only one, before any of the library's code runs: its
    // constructors, and every thread and process they start, are confined with the rest.
    let name = name.to_str().filter(|name| !name.is_empty());
    let confined =
        sandbox::confine(&sandbox, name, Path::new(copy)).unwrap_or_else(|why| refuse(why));
    let library = Library::open_copy(Path::new(file), Path::new(copy), hash)
        .unwrap_or_else(|error| refuse(error.to_string()));
    // SAFETY: the tables are statics and the identity is unused (the worker has one plugin).
    unsafe {
        library.install_callbacks(&WORKER_API, &WORKER_CALLS, &WORKER_EVENTS, std::ptr::null())
    };
    let mut loaded = Frame::new(Kind::Loaded);
    loaded.first = serde_json::to_vec(library.info()).unwrap_or_default();
    loaded.second = Some(serde_json::to_vec(&confined).unwrap_or_default());
    let served: &'static Served = Box::leak(Box::new(Served {
        vtable: *library.vtable(),
        state: library.state_vtable().copied(),
        events: library.event_module().copied(),
        instance: AtomicPtr::new(std::ptr::null_mut()),
        source: Mutex::new(None),
    }));
    // Never closed: the process's end unloads it.
    std::mem::forget(library);
    for index in 0..LANES {
        std::thread::Builder::new()
            .name(format!("plughost-lane-{index}"))
            .spawn(move || serve_lane(side, served, index))
            .expect("start a lane thread");
    }
    let (requests, inbox) = sync_channel::<Frame>(64);
    std::thread::Builder::new()
        .name("plughost-control".into())
        .spawn(move || {
            for frame in inbox {
                serve_request(side, served, frame);
            }
        })
        .expect("start the control thread");
    side.send(&loaded);
    let mut reader = std::io::BufReader::new(reader);
    loop {
        match Frame::read_from(&mut reader) {
            Ok(Some(frame)) if frame.kind == Kind::CallReply => {
                let waiting = side
                    .calls
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&frame.id);
                if let Some(waiting) = waiting {
                    let _ = waiting.send(frame);
                }
            }
            Ok(Some(frame)) => {
                if requests.send(frame).is_err() {
                    exit_now(0);
                }
            }
            // The host closed the channel, or broke it: either way it is done with us.
            Ok(None) | Err(_) => exit_now(0),
        }
    }
}

/// One lane's thread: runs Execute for each request, in place in the shared memory.
fn serve_lane(side: &'static Side, served: &'static Served, index: usize) {
    let lane = side.region.lane(index);
    let header = lane.header;
    let mut last = 0;
    loop {
        let seq = lane.wait_request(last);
        last = seq;
        if header.op.load(Ordering::Acquire) == OP_QUIT {
            return;
        }
        let len = (header.input_len.load(Ordering::Relaxed) as usize).min(MESSAGE_LIMIT);
        // SAFETY: the host wrote `len` bytes of input before posting `seq` (ordered by the
        // acquire in `wait_request`) and does not touch the lane until it is answered.
        let input = unsafe { std::slice::from_raw_parts(lane.input, len) };
        let ctx = CallContext {
            cancelled: lane.cancel_flag(),
            deadline_unix_nanos: header.deadline.load(Ordering::Relaxed),
        };
        let instance = served.instance.load(Ordering::Acquire);
        let mut out = OutBuffer::host(lane.output, MESSAGE_LIMIT);
        // SAFETY: the vtable belongs to the library this process loaded for good; `instance`
        // came from its Init (the host calls only after Init succeeded); `out` lends the
        // lane's output area, which the host does not touch until the answer.
        let status =
            unsafe { (served.vtable.execute)(instance, &ctx, RSlice::from_slice(input), &mut out) };
        let (status, len) = settle(&out, lane.output, status, served.vtable.free_buffer);
        header.status.store(status, Ordering::Relaxed);
        header.output_len.store(len as u64, Ordering::Relaxed);
        lane.answer(seq);
    }
}

/// Leaves a call's output in the lane's output area, `lane_output[..MESSAGE_LIMIT]`, which
/// the plugin was lent: its own allocation is copied in (if it fits) and given back.
/// The lane's status word and length: the plugin's, or [`STATUS_TOO_LARGE`] and the size.
fn settle(
    out: &OutBuffer,
    lane_output: *mut u8,
    status: Status,
    free: super::super::abi::FreeFn,
) -> (u32, usize) {
    let put = |bytes: &[u8]| {
        let len = bytes.len().min(MESSAGE_LIMIT);
        // SAFETY: the lane's output area has `MESSAGE_LIMIT` bytes, and `bytes` is elsewhere
        // (the plugin's allocation, or a message here).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), lane_output, len) };
        len
    };
    let word = |status: Status| u32::from(status.0);
    match written(out, lane_output, MESSAGE_LIMIT) {
        Written::Lent(len) => (word(status), len),
        Written::Plugin => {
            let answer = if out.len > MESSAGE_LIMIT {
                (STATUS_TOO_LARGE, out.len)
            } else if out.len == 0 {
                (word(status), 0)
            } else {
                // SAFETY: the plugin handed over `ptr[..len]` (BufferOwner::PLUGIN).
                let bytes = unsafe { std::slice::from_raw_parts(out.ptr, out.len) };
                (word(status), put(bytes))
            };
            // SAFETY: the plugin's own allocation, given back once to its allocator.
            unsafe { free(out.ptr, out.len, out.cap) };
            answer
        }
        Written::Broken => (word(Status::ERROR), put(BROKEN_PROTOCOL)),
    }
}

/// Runs one request from the host's control channel and answers it.
fn serve_request(side: &Side, served: &Served, request: Frame) {
    let mut answer = Frame::new(Kind::Reply);
    answer.id = request.id;
    let vtable = &served.vtable;
    let free = vtable.free_buffer;
    let mut bytes = Vec::new();
    // For each call below: the entry points belong to the library this process loaded for
    // good; the instance is the one Init stored, and Shutdown takes it once; the slices are
    // owned here for the call.
    let status = match request.kind {
        Kind::Init => {
            let mut instance = std::ptr::null_mut();
            let config = RSlice::from_slice(&request.first);
            // SAFETY: see above; `instance` is written by Init only.
            let status = unsafe {
                with_output(&mut bytes, free, |out| {
                    match (&request.second, served.state) {
                        (Some(state), Some(handover)) => (handover.init_with_state)(
                            config,
                            RSlice::from_slice(state),
                            &mut instance,
                            out,
                        ),
                        _ => (vtable.init)(config, &mut instance, out),
                    }
                })
            };
            if status == Status::OK && !instance.is_null() {
                served.instance.store(instance, Ordering::Release);
                answer.second = Some(Vec::new());
            }
            status
        }
        Kind::Validate => match vtable.validate_config {
            // SAFETY: see above.
            Some(validate) => unsafe {
                with_output(&mut bytes, free, |out| {
                    validate(RSlice::from_slice(&request.first), out)
                })
            },
            None => Status::OK,
        },
        Kind::Health => match vtable.health {
            Some(health) => {
                let mut level = health_level::HEALTHY;
                let instance = served.instance.load(Ordering::Acquire);
                // SAFETY: see above; the host asks for health only after Init.
                let status = unsafe {
                    with_output(&mut bytes, free, |out| health(instance, &mut level, out))
                };
                answer.number = u64::from(level);
                status
            }
            None => {
                answer.number = u64::MAX; // does not report health
                Status::OK
            }
        },
        Kind::SaveState => match served.state {
            Some(state) => {
                let instance = served.instance.load(Ordering::Acquire);
                // SAFETY: see above; the host asks for the state only after Init.
                unsafe { with_output(&mut bytes, free, |out| (state.save)(instance, out)) }
            }
            None => Status::OK,
        },
        Kind::Event => match served.events {
            Some(events) => {
                let instance = served.instance.load(Ordering::Acquire);
                match serde_json::from_slice::<EventHeader>(&request.first) {
                    Err(e) => {
                        bytes = format!("the host sent a damaged event: {e}").into_bytes();
                        Status::ERROR
                    }
                    Ok(header) => {
                        let extensions = header.extensions();
                        let data = request.second.as_deref().unwrap_or_default();
                        let raw = header.raw(&extensions, data);
                        let ctx = CallContext {
                            cancelled: std::ptr::null(),
                            deadline_unix_nanos: request.number,
                        };
                        // SAFETY: see above; the host delivers events only after Init.
                        unsafe {
                            with_output(&mut bytes, free, |out| {
                                (events.on_event)(instance, &ctx, &raw, out)
                            })
                        }
                    }
                }
            }
            None => Status::OK,
        },
        Kind::Start => {
            if let Some(events) = served.events {
                let instance = InstancePtr(served.instance.load(Ordering::Acquire));
                let token = request.number;
                let thread = std::thread::Builder::new()
                    .name("plughost-source".into())
                    .spawn(move || {
                        let instance = instance;
                        let mut message = Vec::new();
                        // SAFETY: see above; Shutdown comes only after Stop, which waits for
                        // this thread.
                        let status = unsafe {
                            with_output(&mut message, free, |out| {
                                (events.start)(instance.0, token, out)
                            })
                        };
                        if status != Status::OK {
                            let mut line = b"event source stopped with an error: ".to_vec();
                            line.extend_from_slice(&message);
                            let mut frame = Frame::new(Kind::Log);
                            frame.status = plugin_api::ffi::log_level::WARN;
                            frame.first = line;
                            frame.first.truncate(64 * 1024);
                            if let Some(side) = SIDE.get() {
                                side.send(&frame);
                            }
                        }
                    });
                match thread {
                    Ok(thread) => {
                        *served.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread)
                    }
                    Err(e) => bytes = format!("cannot start a thread: {e}").into_bytes(),
                }
            }
            if bytes.is_empty() {
                Status::OK
            } else {
                Status::ERROR
            }
        }
        Kind::Stop => match served.events {
            Some(events) => {
                let instance = served.instance.load(Ordering::Acquire);
                // SAFETY: see above.
                let status =
                    unsafe { with_output(&mut bytes, free, |out| (events.stop)(instance, out)) };
                let thread = served
                    .source
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                // The host's time limit covers this wait: past it, this process is killed.
                if let Some(thread) = thread {
                    let _ = thread.join();
                }
                status
            }
            None => Status::OK,
        },
        Kind::Shutdown => {
            let instance = served.instance.swap(std::ptr::null_mut(), Ordering::AcqRel);
            let status = if instance.is_null() {
                Status::OK
            } else {
                // SAFETY: see above; the instance was just taken, so Shutdown gets it once,
                // and the lanes were told to quit before the host asked.
                unsafe { with_output(&mut bytes, free, |out| (vtable.shutdown)(instance, out)) }
            };
            answer.status = status.0;
            answer.first = bytes;
            answer.first.truncate(64 * 1024);
            side.send(&answer);
            exit_now(0);
        }
        _ => return,
    };
    answer.status = status.0;
    answer.first = bytes;
    if !answer.fits() {
        let size = answer.len();
        answer.status = Status::ERROR.0;
        answer.first =
            format!("an answer of {size} bytes is more than the channel carries").into_bytes();
    }
    side.send(&answer);
}

/// The host's callbacks, as a worker offers them: through the control channel.
static WORKER_API: HostApi = HostApi {
    log_enabled: worker_log_enabled,
    log: worker_log,
};

static WORKER_CALLS: PluginCalls = PluginCalls {
    call: worker_call,
    free_buffer: free_host_buffer,
};

static WORKER_EVENTS: EventApi = EventApi {
    publish: worker_publish,
    free_buffer: free_host_buffer,
};

/// # Safety
///
/// None beyond the contract's: any identity is accepted and ignored.
unsafe extern "C" fn worker_log_enabled(_: *const c_void, level: u8) -> bool {
    SIDE.get().is_some_and(|side| level <= side.max_level)
}

/// # Safety
///
/// `message` is valid for the call.
unsafe extern "C" fn worker_log(_: *const c_void, level: u8, message: RStr<'_>) {
    let Some(side) = SIDE.get() else { return };
    if level > side.max_level {
        return;
    }
    let mut frame = Frame::new(Kind::Log);
    frame.status = level;
    let text = message.as_rslice().as_slice();
    frame.first = text[..text.len().min(64 * 1024)].to_vec();
    // Never unwinds into the plugin: `send` does not panic.
    side.send(&frame);
}

/// # Safety
///
/// `ctx`, `name`, `input` and `out` are valid for the call, `out` lending `ptr[..cap]`.
unsafe extern "C" fn worker_call(
    _: *const c_void,
    ctx: &CallContext,
    name: RStr<'_>,
    input: RSlice<'_, u8>,
    out: &mut OutBuffer,
) -> Status {
    let Some(side) = SIDE.get() else {
        return reply(out, Status::ERROR, b"the worker is not set up");
    };
    if input.len() > MESSAGE_LIMIT {
        return reply(out, Status::ERROR, b"the input is too large for a call");
    }
    let mut frame = Frame::new(Kind::Call);
    frame.number = ctx.deadline_unix_nanos;
    frame.status = side.region.lane_of(ctx.cancelled).map_or(255, |i| i as u8);
    frame.first = name.as_rslice().as_slice().to_vec();
    frame.second = Some(input.as_slice().to_vec());
    if !frame.fits() {
        return reply(out, Status::ERROR, b"the call is too large for the channel");
    }
    ask_host(side, frame, out)
}

/// Sends `frame` (a call or a publish) to the host and writes its answer into `out`.
fn ask_host(side: &Side, mut frame: Frame, out: &mut OutBuffer) -> Status {
    let id = side.next_call.fetch_add(1, Ordering::Relaxed);
    frame.id = id;
    let (sender, answer) = sync_channel(1);
    side.calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, sender);
    side.send(&frame);
    // The host answers every call, within its deadline; if it died, so does this process.
    match answer.recv() {
        Ok(answer) => reply(out, Status(answer.status), &answer.first),
        Err(_) => reply(out, Status::ERROR, b"the host did not answer"),
    }
}

/// # Safety
///
/// `event` and `out` are valid for the call, `out` lending `ptr[..cap]`.
unsafe extern "C" fn worker_publish(
    _: *const c_void,
    emitter: u64,
    event: &RawEvent<'_>,
    out: &mut OutBuffer,
) -> Status {
    let Some(side) = SIDE.get() else {
        return reply(out, Status::ERROR, b"the worker is not set up");
    };
    // As in process: text that is not UTF-8 is refused, not mended.
    let strings = [event.topic, event.datacontenttype]
        .into_iter()
        .chain(event.extensions.iter().flat_map(|e| [e.name, e.value]));
    for text in strings {
        if std::str::from_utf8(text.as_rslice().as_slice()).is_err() {
            return reply(
                out,
                Status::ERROR,
                b"an attribute of the event is not UTF-8",
            );
        }
    }
    let text = |s: RStr<'_>| String::from_utf8_lossy(s.as_rslice().as_slice()).into_owned();
    let header = EventHeader {
        topic: text(event.topic),
        datacontenttype: text(event.datacontenttype),
        extensions: event
            .extensions
            .iter()
            .map(|e| (text(e.name), text(e.value)))
            .collect(),
        ..EventHeader::default()
    };
    let mut frame = Frame::new(Kind::Emit);
    frame.number = emitter;
    frame.first = serde_json::to_vec(&header).unwrap_or_default();
    frame.second = Some(event.data.as_slice().to_vec());
    if !frame.fits() {
        let message = format!(
            "cannot publish {}: the event is too large for an isolated plugin's channel",
            header.topic
        );
        return reply(out, Status::ERROR, message.as_bytes());
    }
    ask_host(side, frame, out)
}
