//! One worker process, seen from the host: started ([`Process::start`]), called through its
//! lanes and its control channel, watched until it ends, and the end described in words
//! ([`Death`]).
//!
//! Four host threads serve a worker: one reads its control channel (replies, log lines, its
//! plugin's calls to other plugins), two log what it writes on stdout and stderr under the
//! plugin's span, and one waits for it to end. When it ends, every call in flight is failed at
//! once: each lane's answer word is set to [`DEAD`](super::lanes::DEAD) and its waiter woken.

use std::collections::{HashMap, VecDeque};
use std::io::BufRead as _;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use plugin_api::ffi::{log_level, CallContext, Status};
use tracing::Span;

use super::frame::{Frame, Kind};
use super::lanes::{next_seq, Answered, Region, LANES, MESSAGE_LIMIT, OP_EXECUTE, OP_QUIT};
use super::limits::{self, Plan};
use super::serve::{CONTROL_FD, LANES_FD, WORKER_ARG};
use crate::plugin_info::PluginInfo;
use crate::runtime::registry::Slot;

/// Everything needed to start a worker for one library, again and again.
#[derive(Debug)]
pub(crate) struct Spec {
    /// The worker program (`plughost`).
    pub(crate) program: PathBuf,
    /// The user's file, for messages.
    pub(crate) file: PathBuf,
    /// The private copy the worker loads.
    pub(crate) copy: PathBuf,
    /// The hash of the checked bytes.
    pub(crate) hash: u128,
    /// The resource limits.
    pub(crate) limits: limits::Limits,
    /// Where worker cgroups go, if the host may create them.
    pub(crate) cgroup_root: Option<PathBuf>,
    /// How long loading in the worker may take.
    pub(crate) load_timeout: Duration,
}

/// What a worker's threads share with the supervisor: the plugin's identity in the host.
pub(crate) struct Identity {
    /// The plugin's name (from the file's probe, or the worker's report).
    pub(crate) name: OnceLock<Arc<str>>,
    /// The span its lines are logged in.
    pub(crate) span: OnceLock<Span>,
    /// The slots of the plugins it may call, bound before Init.
    pub(crate) dependencies: OnceLock<Vec<Arc<Slot>>>,
    /// Who restarts its workers.
    pub(crate) supervisor: OnceLock<std::sync::Weak<super::supervisor::Supervisor>>,
}

/// What was running in a worker, for the words of a crash: `during init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Loading = 0,
    Idle = 1,
    Init = 2,
    Validate = 3,
    Health = 4,
    SaveState = 5,
    Shutdown = 6,
}

impl Phase {
    fn from_u8(byte: u8) -> Phase {
        match byte {
            0 => Phase::Loading,
            2 => Phase::Init,
            3 => Phase::Validate,
            4 => Phase::Health,
            5 => Phase::SaveState,
            6 => Phase::Shutdown,
            _ => Phase::Idle,
        }
    }

    fn words(self) -> &'static str {
        match self {
            Phase::Loading => "while loading",
            Phase::Idle => "while idle",
            Phase::Init => "during init",
            Phase::Validate => "during validate_config",
            Phase::Health => "during health",
            Phase::SaveState => "during save_state",
            Phase::Shutdown => "during shutdown",
        }
    }
}

/// How a worker ended.
#[derive(Debug, Clone)]
pub(crate) struct Death {
    /// The cause in words: `segmentation fault (SIGSEGV)`, `memory limit 64 MiB exceeded`.
    pub(crate) cause: String,
    /// What it was doing: `during execute`.
    pub(crate) during: &'static str,
    /// The last lines it wrote.
    pub(crate) last_lines: Vec<String>,
}

/// Why a call or request into a worker did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The worker was dead before the call began.
    NotServing,
    /// The worker died during the call.
    Died,
    /// The time ran out (the worker is killed: its code cannot be stopped otherwise).
    TimedOut,
}

/// One running worker process.
pub(crate) struct Process {
    pid: u32,
    region: Region,
    /// Bit `i` set: lane `i` is free.
    free_lanes: AtomicU64,
    lane_lock: Mutex<()>,
    lane_freed: Condvar,
    control: Mutex<UnixStream>,
    pending: Mutex<HashMap<u64, SyncSender<Frame>>>,
    next_id: AtomicU64,
    /// Lanes in use, for the words of a crash.
    executing: AtomicU64,
    /// The plugin's calls to other plugins being run for it now.
    nested: AtomicU64,
    phase: AtomicU8,
    dead: AtomicBool,
    death: OnceLock<Death>,
    /// Set before the host kills it on purpose.
    killing: Mutex<Option<String>>,
    ended: Mutex<bool>,
    ended_signal: Condvar,
    tail: Arc<Mutex<VecDeque<String>>>,
    plan: Plan,
}

/// How many lines of its output a worker's crash report shows.
const TAIL_LINES: usize = 8;

impl Process {
    /// Starts a worker for `spec`, waits until it loaded the library (at most
    /// `spec.load_timeout`), and returns it with what it said about the plugin. `on_end` runs
    /// on the thread that saw it end, once.
    pub(crate) fn start(
        spec: &Spec,
        identity: &Arc<Identity>,
        on_end: impl FnOnce(&Arc<Process>) + Send + 'static,
    ) -> Result<(Arc<Process>, PluginInfo), String> {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let region = Region::create().map_err(|e| format!("cannot create its lanes: {e}"))?;
        let (host_end, worker_end) =
            UnixStream::pair().map_err(|e| format!("cannot create its channel: {e}"))?;
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let stem = spec
            .file
            .file_stem()
            .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned());
        let plan = limits::plan(
            &spec.limits,
            spec.cgroup_root.as_deref(),
            &format!("plughost-{stem}-{}-{n}", std::process::id()),
        );
        let mut command = Command::new(&spec.program);
        command
            .arg(WORKER_ARG)
            .arg(&spec.file)
            .arg(&spec.copy)
            .arg(format!("{:032x}", spec.hash))
            .arg(std::process::id().to_string())
            .arg(max_level().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own: whatever the plugin starts is killed with it.
            .process_group(0);
        let fds = [worker_end.as_raw_fd(), region.fd().as_raw_fd()];
        let in_child = plan.in_child();
        // SAFETY: the closure runs in the child between fork and exec and makes only
        // async-signal-safe calls (`fcntl`, `dup2`, `prctl`, and `Plan::apply_in_child`'s).
        unsafe {
            command.pre_exec(move || {
                // Both descriptors move above the targets first, so that neither overwrites the
                // other on its way to 3 or 4.
                let mut high = [0; 2];
                for (i, fd) in fds.iter().enumerate() {
                    high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (fd, target) in high.iter().zip([CONTROL_FD, LANES_FD]) {
                    if libc::dup2(*fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                in_child.apply_in_child()
            });
        }
        let mut child = spawner::spawn(command).map_err(|e| {
            format!(
                "cannot start the worker program {}: {e}",
                spec.program.display()
            )
        })?;
        drop(worker_end);
        let pid = child.id();
        {
            let span = identity.span.get().cloned().unwrap_or_else(Span::none);
            let _entered = span.enter();
            if spec.limits.any() {
                tracing::info!("worker process {pid} started; limits by {}", plan.summary);
            } else {
                tracing::debug!("worker process {pid} started; no resource limits");
            }
        }
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (stdout_done, stderr_done) = (
            child
                .stdout
                .take()
                .map(|pipe| drain(pipe, identity.clone(), tail.clone(), false)),
            child
                .stderr
                .take()
                .map(|pipe| drain(pipe, identity.clone(), tail.clone(), true)),
        );
        let reader = host_end
            .try_clone()
            .map_err(|e| format!("cannot read its channel: {e}"))?;
        let process = Arc::new(Process {
            pid,
            region,
            free_lanes: AtomicU64::new((1u64 << LANES) - 1),
            lane_lock: Mutex::new(()),
            lane_freed: Condvar::new(),
            control: Mutex::new(host_end),
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            executing: AtomicU64::new(0),
            nested: AtomicU64::new(0),
            phase: AtomicU8::new(Phase::Loading as u8),
            dead: AtomicBool::new(false),
            death: OnceLock::new(),
            killing: Mutex::new(None),
            ended: Mutex::new(false),
            ended_signal: Condvar::new(),
            tail,
            plan,
        });
        let (loaded_tx, loaded) = sync_channel::<Result<Frame, String>>(1);
        {
            let process = process.clone();
            let identity = identity.clone();
            std::thread::Builder::new()
                .name("plughost-worker-channel".into())
                .spawn(move || read_channel(process, identity, reader, loaded_tx))
                .map_err(|e| format!("cannot start a thread: {e}"))?;
        }
        {
            let process = process.clone();
            std::thread::Builder::new()
                .name("plughost-worker-wait".into())
                .spawn(move || {
                    let status = child.wait();
                    // Its last lines first: they often say why (a Rust abort message).
                    for done in [stdout_done, stderr_done].into_iter().flatten() {
                        let _ = done.recv_timeout(Duration::from_millis(300));
                    }
                    process.ended(status.ok());
                    on_end(&process);
                })
                .map_err(|e| format!("cannot start a thread: {e}"))?;
        }
        let info = match loaded.recv_timeout(spec.load_timeout) {
            Ok(Ok(frame)) if frame.kind == Kind::Loaded => {
                serde_json::from_slice::<PluginInfo>(&frame.first).map_err(|e| {
                    format!("the worker described the plugin in a way not understood: {e}")
                })
            }
            Ok(Ok(frame)) => Err(String::from_utf8_lossy(&frame.first).into_owned()),
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "the worker did not load it within {}",
                humantime::format_duration(spec.load_timeout)
            )),
            Err(RecvTimeoutError::Disconnected) => Err("the worker ended".into()),
        };
        match info {
            Ok(info) => {
                process.set_phase(Phase::Idle);
                Ok((process, info))
            }
            Err(reason) => {
                process.kill("it was refused");
                let death = process.wait_ended(Duration::from_secs(2));
                Err(match death {
                    Some(_) if !reason.contains(" ended") => reason,
                    Some(death) => format!(
                        "the worker {} {}{}",
                        death.cause,
                        death.during,
                        lines(&death.last_lines)
                    ),
                    None => reason,
                })
            }
        }
    }

    /// The worker's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it ended.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// How it ended, once it has.
    pub(crate) fn death(&self) -> Option<&Death> {
        self.death.get()
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Kills the worker and everything in its process group; `why` is its cause of death.
    pub(crate) fn kill(&self, why: &str) {
        {
            let mut killing = self.killing.lock().unwrap_or_else(|e| e.into_inner());
            if killing.is_none() {
                *killing = Some(why.to_owned());
            }
        }
        if let Ok(group) = i32::try_from(self.pid) {
            // SAFETY: `kill` has no memory-safety preconditions; the group is the worker's
            // own (`process_group(0)`), and the process is not reaped before `ended`, so the
            // id cannot have been reused.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    }

    /// Waits until the worker ended, at most `limit`.
    pub(crate) fn wait_ended(&self, limit: Duration) -> Option<Death> {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        let (ended, _) = self
            .ended_signal
            .wait_timeout_while(ended, limit, |ended| !*ended)
            .unwrap_or_else(|e| e.into_inner());
        if *ended {
            self.death.get().cloned()
        } else {
            None
        }
    }

    /// Records the end: fails every call and request in flight at once.
    fn ended(&self, status: Option<std::process::ExitStatus>) {
        let killed_for = self
            .killing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let last_lines: Vec<String> = self
            .tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let during = if self.executing.load(Ordering::Relaxed) != 0 {
            "during execute"
        } else {
            Phase::from_u8(self.phase.load(Ordering::Relaxed)).words()
        };
        let cause = match &killed_for {
            Some(why) => format!("killed by the host: {why}"),
            None => cause(status, &last_lines, &self.plan),
        };
        let _ = self.death.set(Death {
            cause,
            during,
            last_lines,
        });
        self.dead.store(true, Ordering::Release);
        for i in 0..LANES {
            self.region.lane(i).mark_dead();
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        {
            let _lanes = self.lane_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.lane_freed.notify_all();
        }
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.ended_signal.notify_all();
    }

    /// One Execute: `input` in, the plugin's status and `output` out. Waits for a free lane
    /// and for the answer until `kill_at` (for ever if `None`): past it, the worker is killed.
    pub(crate) fn execute(
        &self,
        ctx: &CallContext,
        input: &[u8],
        output: &mut Vec<u8>,
        kill_at: Option<Instant>,
    ) -> Result<Status, Stop> {
        let index = self.claim_lane(kill_at)?;
        let _release = LaneRelease(self, index);
        let lane = self.region.lane(index);
        let header = lane.header;
        // SAFETY: the lane is ours until answered (claimed above), its input area has
        // `MESSAGE_LIMIT` bytes, and the caller checked `input` fits.
        unsafe { std::ptr::copy_nonoverlapping(input.as_ptr(), lane.input, input.len()) };
        header
            .input_len
            .store(input.len() as u64, Ordering::Relaxed);
        header
            .deadline
            .store(ctx.deadline_unix_nanos, Ordering::Relaxed);
        header.cancelled.store(false, Ordering::Relaxed);
        header.op.store(OP_EXECUTE, Ordering::Relaxed);
        let seq = next_seq(header.request.load(Ordering::Relaxed));
        // SAFETY: a non-null flag is kept alive by the caller for the call.
        let cancelled = unsafe { ctx.cancelled.as_ref() };
        self.executing.fetch_add(1, Ordering::Relaxed);
        lane.post(seq);
        let answered = lane.wait_answer(seq, kill_at, cancelled);
        self.executing.fetch_sub(1, Ordering::Relaxed);
        match answered {
            Answered::Yes => {
                let len = (header.output_len.load(Ordering::Relaxed) as usize).min(MESSAGE_LIMIT);
                output.clear();
                // SAFETY: the worker wrote `len` bytes before answering (ordered by the
                // acquire in `wait_answer`), and does not touch the lane until the next post.
                output.extend_from_slice(unsafe { std::slice::from_raw_parts(lane.output, len) });
                Ok(Status(header.status.load(Ordering::Relaxed) as u8))
            }
            Answered::Dead => Err(Stop::Died),
            Answered::TimedOut => {
                self.kill("execute did not return by its deadline and grace");
                Err(Stop::TimedOut)
            }
        }
    }

    fn claim_lane(&self, until: Option<Instant>) -> Result<usize, Stop> {
        loop {
            if self.is_dead() {
                return Err(Stop::NotServing);
            }
            let free = self.free_lanes.load(Ordering::Acquire);
            if free != 0 {
                let index = free.trailing_zeros() as usize;
                let bit = 1u64 << index;
                if self
                    .free_lanes
                    .compare_exchange_weak(free, free & !bit, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(index);
                }
                continue;
            }
            // Every lane busy: wait for one (the slow path of a caller beyond `LANES`).
            let lanes = self.lane_lock.lock().unwrap_or_else(|e| e.into_inner());
            let step = Duration::from_millis(5);
            let wait = until.map_or(step, |until| {
                until.saturating_duration_since(Instant::now()).min(step)
            });
            if until.is_some_and(|until| Instant::now() >= until) {
                return Err(Stop::TimedOut);
            }
            let _ = self
                .lane_freed
                .wait_timeout_while(lanes, wait, |_| {
                    self.free_lanes.load(Ordering::Acquire) == 0 && !self.is_dead()
                })
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sends a request on the control channel and waits for its answer, at most `limit`; past
    /// it, the worker is killed.
    pub(crate) fn request(
        &self,
        mut frame: Frame,
        phase: Phase,
        limit: Duration,
    ) -> Result<Frame, Stop> {
        if self.is_dead() {
            return Err(Stop::NotServing);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        frame.id = id;
        let (sender, answer) = sync_channel(1);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, sender);
        self.set_phase(phase);
        let sent = frame.write_to(&mut *self.control.lock().unwrap_or_else(|e| e.into_inner()));
        let outcome = match sent {
            Err(_) => Err(Stop::Died),
            Ok(()) => match answer.recv_timeout(limit) {
                Ok(reply) => Ok(reply),
                Err(RecvTimeoutError::Disconnected) => Err(Stop::Died),
                Err(RecvTimeoutError::Timeout) => {
                    self.kill(&format!(
                        "{} did not return within {}",
                        phase.words().trim_start_matches("during "),
                        humantime::format_duration(limit)
                    ));
                    Err(Stop::TimedOut)
                }
            },
        };
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if phase != Phase::Shutdown {
            self.set_phase(Phase::Idle);
        }
        // A worker that died while answering may look as if it answered: the answer stands.
        outcome
    }

    /// Asks the lanes' threads to end (before Shutdown, so that no call races it).
    pub(crate) fn quit_lanes(&self) {
        for i in 0..LANES {
            let lane = self.region.lane(i);
            lane.header.op.store(OP_QUIT, Ordering::Relaxed);
            lane.post(next_seq(lane.header.request.load(Ordering::Relaxed)));
        }
    }
}

struct LaneRelease<'a>(&'a Process, usize);

impl Drop for LaneRelease<'_> {
    fn drop(&mut self) {
        let process = self.0;
        process.free_lanes.fetch_or(1 << self.1, Ordering::AcqRel);
        let _lanes = process.lane_lock.lock().unwrap_or_else(|e| e.into_inner());
        process.lane_freed.notify_one();
    }
}

/// The words for how a process ended.
fn cause(status: Option<std::process::ExitStatus>, last_lines: &[String], plan: &Plan) -> String {
    let said = |needle: &str| last_lines.iter().any(|l| l.contains(needle));
    if plan.memory_exceeded() || (said("memory allocation of") && plan.limits_memory()) {
        return format!("memory limit {} exceeded", plan.memory_words());
    }
    let Some(status) = status else {
        return "ended in a way that could not be read".into();
    };
    if said("has overflowed its stack") {
        return "stack overflow".into();
    }
    if let Some(signal) = status.signal() {
        return match signal {
            libc::SIGSEGV => "segmentation fault (SIGSEGV)".into(),
            libc::SIGBUS => "bus error (SIGBUS)".into(),
            libc::SIGILL => "illegal instruction (SIGILL)".into(),
            libc::SIGFPE => "arithmetic error (SIGFPE)".into(),
            libc::SIGABRT if said("memory allocation of") => {
                "out of memory (SIGABRT after a failed allocation)".into()
            }
            libc::SIGABRT => "aborted (SIGABRT)".into(),
            libc::SIGKILL => "killed (SIGKILL), perhaps by the out-of-memory killer".into(),
            libc::SIGXCPU => "CPU time limit exceeded (SIGXCPU)".into(),
            libc::SIGTERM => "terminated (SIGTERM)".into(),
            other => format!("ended by signal {other}"),
        };
    }
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => "ended without an exit code".into(),
    }
}

/// The last lines, for a message: `; last output: "a" | "b"`.
pub(crate) fn lines(last: &[String]) -> String {
    if last.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = last.iter().map(|l| format!("{l:?}")).collect();
    format!("; last output: {}", shown.join(" | "))
}

/// Reads the worker's pipe line by line, logging each under the plugin's span and keeping the
/// last few; the receiver hears when the pipe ends.
fn drain(
    pipe: impl std::io::Read + Send + 'static,
    identity: Arc<Identity>,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr: bool,
) -> Receiver<()> {
    let (done, finished) = sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("plughost-worker-output".into())
        .spawn(move || {
            let mut reader = std::io::BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                // A line longer than 4 KiB is cut: a plugin printing without newlines must not
                // grow the host's memory.
                match std::io::Read::take(&mut reader, 4096).read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if text.is_empty() {
                    continue;
                }
                let span = identity.span.get().cloned().unwrap_or_else(Span::none);
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
            }
            let _ = done.send(());
        });
    if spawned.is_err() {
        let (done, finished) = sync_channel(1);
        let _ = done.send(());
        return finished;
    }
    finished
}

/// Reads the worker's control channel until it closes.
fn read_channel(
    process: Arc<Process>,
    identity: Arc<Identity>,
    reader: UnixStream,
    loaded: SyncSender<Result<Frame, String>>,
) {
    let mut reader = std::io::BufReader::new(reader);
    let mut loaded = Some(loaded);
    loop {
        let frame = match super::frame::Frame::read_from(&mut reader) {
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

/// Calls a worker's plugin may have running in other plugins at once; more are refused.
const MAX_NESTED: u64 = 64;

/// Answers a call of the worker's plugin that the host will not run.
fn refuse_call(process: &Process, call: &Frame) {
    let mut answer = Frame::new(Kind::CallReply);
    answer.id = call.id;
    answer.status = Status::ERROR.0;
    answer.first = format!("more than {MAX_NESTED} calls to other plugins at once").into_bytes();
    let _ = answer.write_to(&mut *process.control.lock().unwrap_or_else(|e| e.into_inner()));
}

/// A plugin's log line, in the host's log under its span.
fn log_line(identity: &Identity, level: u8, message: &[u8]) {
    let message = String::from_utf8_lossy(message);
    let span = identity.span.get().cloned().unwrap_or_else(Span::none);
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
fn max_level() -> u8 {
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

/// Runs the worker's plugin's call to another plugin, and answers it.
fn nested_call(process: &Process, identity: &Identity, call: Frame) {
    let mut answer = Frame::new(Kind::CallReply);
    answer.id = call.id;
    let name = call.first.as_slice();
    let slot = identity
        .dependencies
        .get()
        .and_then(|slots| slots.iter().find(|s| s.name().as_bytes() == name));
    let lane = usize::from(call.status);
    let ctx = CallContext {
        cancelled: if lane < LANES {
            &process.region.lane(lane).header.cancelled
        } else {
            std::ptr::null()
        },
        deadline_unix_nanos: call.number,
    };
    let mut output = Vec::new();
    let (status, bytes) = match slot {
        None => {
            let plugin = identity.name.get().map_or("the plugin", |n| &**n);
            (
                Status::ERROR,
                format!("not a declared dependency of {plugin}").into_bytes(),
            )
        }
        Some(slot) => match &*slot.load() {
            None => (Status::ERROR, b"not loaded".to_vec()),
            Some(version) => {
                let input = call.second.as_deref().unwrap_or_default();
                match version.call_into_with(&ctx, input, &mut output) {
                    Ok(()) => (Status::OK, output),
                    Err(e) => (Status::ERROR, e.to_string().into_bytes()),
                }
            }
        },
    };
    answer.status = status.0;
    answer.first = bytes;
    let _ = answer.write_to(&mut *process.control.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Starts processes from one long-lived thread. The parent-death signal is tied to the
/// thread that forked, not to the process: a worker started from a short-lived thread would
/// be killed when that thread ends.
mod spawner {
    use std::process::{Child, Command};
    use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
    use std::sync::{Mutex, OnceLock};

    type Job = (Command, SyncSender<std::io::Result<Child>>);

    pub(super) fn spawn(command: Command) -> std::io::Result<Child> {
        static JOBS: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
        let jobs = JOBS.get_or_init(|| {
            let (sender, jobs) = channel::<Job>();
            std::thread::Builder::new()
                .name("plughost-spawner".into())
                .spawn(move || {
                    for (mut command, answer) in jobs {
                        let _ = answer.send(command.spawn());
                    }
                })
                .expect("start the spawner thread");
            Mutex::new(sender)
        });
        let (answer, child) = sync_channel(1);
        jobs.lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((command, answer))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        child
            .recv()
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}
