//! One worker process, seen from the host: started ([`Process::start`]), called through its
//! lanes and its control channel, watched until it ends, and the end described in words
//! ([`Death`](super::death::Death)).
//!
//! Four host threads serve a worker: one reads its control channel and two its stdout and
//! stderr ([`inbox`](super::inbox)), and one waits for it to end. When it ends, every call in
//! flight is failed at once: each lane's answer word is set to [`DEAD`](super::lanes::DEAD)
//! and its waiter woken.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use plugin_api::ffi::{CallContext, Status};

use super::death::{cause, lines, Death, Phase};
use super::frame::{Frame, Kind};
use super::inbox::{self, max_level, Identity};
use super::lanes::{
    next_seq, Answered, Region, LANES, MESSAGE_LIMIT, OP_EXECUTE, OP_QUIT, STATUS_TOO_LARGE,
};
use super::limits::{self, Plan};
use super::sandbox::{Confined, Sandbox};
use super::spawner;
use crate::plugin_info::PluginInfo;

/// Everything needed to start a worker for one library, again and again.
#[derive(Debug)]
pub(crate) struct Spec {
    /// The worker program (`plughost`).
    pub(crate) program: PathBuf,
    /// The user's file, for messages.
    pub(crate) file: PathBuf,
    /// The plugin's name, once the host knows it: for the worker's messages.
    pub(crate) plugin: Option<String>,
    /// The private copy the worker loads.
    pub(crate) copy: PathBuf,
    /// The hash of the checked bytes.
    pub(crate) hash: u128,
    /// The resource limits.
    pub(crate) limits: limits::Limits,
    /// What the worker confines itself to.
    pub(crate) sandbox: Sandbox,
    /// Where worker cgroups go, if the host may create them.
    pub(crate) cgroup_root: Option<PathBuf>,
    /// How long loading in the worker may take.
    pub(crate) load_timeout: Duration,
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
    /// The request (a configuration, a state) is larger than a frame may be; nothing was sent.
    TooLarge(usize),
}

/// One running worker process.
pub(crate) struct Process {
    pid: u32,
    region: Region,
    /// Bit `i` set: lane `i` is free.
    free_lanes: AtomicU64,
    lane_lock: Mutex<()>,
    lane_freed: Condvar,
    pub(super) control: Mutex<UnixStream>,
    pub(super) pending: Mutex<HashMap<u64, SyncSender<Frame>>>,
    next_id: AtomicU64,
    /// Held for the whole of a request: the worker serves them one at a time, so a request
    /// must not start its clock while it waits behind another.
    requests: Mutex<()>,
    /// Lanes in use, for the words of a crash.
    executing: AtomicU64,
    /// The plugin's calls to other plugins being run for it now.
    pub(super) nested: AtomicU64,
    /// Each lane's cancellation flag, the host's own copy: what the plugin's calls to other
    /// plugins are given (the lane's is in memory the worker can write).
    pub(super) cancel: [AtomicBool; LANES],
    phase: AtomicU8,
    dead: AtomicBool,
    death: OnceLock<Death>,
    /// Why the host kills it, once it does; and whether it exited, after which its process
    /// id may be reused and must not be signalled.
    killing: Mutex<Killing>,
    ended: Mutex<bool>,
    ended_signal: Condvar,
    tail: Arc<Mutex<VecDeque<String>>>,
    plan: Plan,
}

#[derive(Default)]
struct Killing {
    why: Option<String>,
    exited: bool,
}

/// Bytes of each lane's data areas kept in memory after a call larger than that; the rest is
/// given back.
const KEEP_RESIDENT: usize = 1 << 20;

/// How many lines of its output a worker's crash report shows.
pub(super) const TAIL_LINES: usize = 8;

impl Process {
    /// Starts a worker for `spec`, waits until it loaded the library (at most
    /// `spec.load_timeout`), and returns it with what it said about the plugin and what it is
    /// confined to. `on_end` runs on the thread that saw it end, once.
    pub(crate) fn start(
        spec: &Spec,
        identity: &Arc<Identity>,
        on_end: impl FnOnce(&Arc<Process>) + Send + 'static,
    ) -> Result<(Arc<Process>, PluginInfo, Confined), String> {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let region = Region::create().map_err(|e| format!("cannot create its lanes: {e}"))?;
        let (host_end, worker_end) =
            UnixStream::pair().map_err(|e| format!("cannot create its channel: {e}"))?;
        // Above the standard streams: if the host runs with one of them closed, a descriptor
        // there would be overwritten by the child's stdio before it could be moved to 3 or 4.
        // The original is closed here: only the copy may stay open in this process, so that
        // the channel ends when the worker does.
        let worker_end = spawner::above_stdio(worker_end)?;
        let lanes_fd = spawner::above_stdio(region.fd().try_clone().map_err(|e| e.to_string())?)?;
        let copy_fd = std::fs::File::open(&spec.copy)
            .map_err(|e| format!("cannot open its private copy {}: {e}", spec.copy.display()))
            .and_then(spawner::above_stdio)?;
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
        let command = spawner::command(
            spec,
            max_level(),
            [&worker_end, &lanes_fd, &copy_fd],
            plan.in_child(),
        );
        let mut child = spawner::spawn(command).map_err(|e| {
            format!(
                "cannot start the worker program {}: {e}",
                spec.program.display()
            )
        })?;
        drop((worker_end, lanes_fd, copy_fd));
        let pid = child.id();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let reader = match host_end.try_clone() {
            Ok(reader) => reader,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("cannot read its channel: {e}"));
            }
        };
        {
            let span = identity.span();
            let _entered = span.enter();
            if spec.limits.any() {
                tracing::info!("worker process {pid} started; limits by {}", plan.summary);
            } else {
                tracing::debug!("worker process {pid} started; no resource limits");
            }
        }
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let output_stop = Arc::new(AtomicBool::new(false));
        let drain = |pipe, stderr| {
            inbox::drain(
                pipe,
                identity.clone(),
                tail.clone(),
                stderr,
                output_stop.clone(),
            )
        };
        let output_done = [
            stdout.map(|pipe| drain(std::fs::File::from(OwnedFd::from(pipe)), false)),
            stderr.map(|pipe| drain(std::fs::File::from(OwnedFd::from(pipe)), true)),
        ];
        let process = Arc::new(Process {
            pid,
            region,
            free_lanes: AtomicU64::new((1u64 << LANES) - 1),
            lane_lock: Mutex::new(()),
            lane_freed: Condvar::new(),
            control: Mutex::new(host_end),
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            requests: Mutex::new(()),
            executing: AtomicU64::new(0),
            nested: AtomicU64::new(0),
            cancel: std::array::from_fn(|_| AtomicBool::new(false)),
            phase: AtomicU8::new(Phase::Loading as u8),
            dead: AtomicBool::new(false),
            death: OnceLock::new(),
            killing: Mutex::default(),
            ended: Mutex::new(false),
            ended_signal: Condvar::new(),
            tail,
            plan,
        });
        // Dropped when the channel's reader is done.
        let (channel_open, channel_read) = sync_channel::<()>(1);
        // From here the waiting thread owns the child: it reaps it whatever happens next.
        {
            let process = process.clone();
            let waiting = std::thread::Builder::new()
                .name("plughost-worker-wait".into())
                .spawn(move || {
                    let status = process.reap(child);
                    // Its last lines first: they often say why (a Rust abort message).
                    for done in output_done.into_iter().flatten() {
                        let _ = done.recv_timeout(Duration::from_millis(300));
                    }
                    // And what it sent last: an answer written just before it exited
                    // (Shutdown's) reaches its caller rather than being failed as a death.
                    let _ = channel_read.recv_timeout(Duration::from_millis(300));
                    output_stop.store(true, Ordering::Release);
                    process.ended(status);
                    on_end(&process);
                });
            if let Err(e) = waiting {
                return Err(format!("cannot start a thread: {e}"));
            }
        }
        let (loaded_tx, loaded) = sync_channel::<Result<Frame, String>>(1);
        let reading = {
            let process = process.clone();
            let identity = identity.clone();
            std::thread::Builder::new()
                .name("plughost-worker-channel".into())
                .spawn(move || {
                    inbox::read_channel(process, identity, reader, loaded_tx);
                    drop(channel_open);
                })
        };
        if let Err(e) = reading {
            process.kill("no thread to read its channel");
            return Err(format!("cannot start a thread: {e}"));
        }
        let info = match loaded.recv_timeout(spec.load_timeout) {
            Ok(Ok(frame)) if frame.kind == Kind::Loaded => {
                let confined = frame
                    .second
                    .and_then(|second| serde_json::from_slice(&second).ok())
                    .unwrap_or_default();
                serde_json::from_slice::<PluginInfo>(&frame.first)
                    .map(|info| (info, confined))
                    .map_err(|e| {
                        format!("the worker described the plugin in a way not understood: {e}")
                    })
            }
            Ok(Ok(frame)) => Err(String::from_utf8_lossy(&frame.first).into_owned()),
            Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => Err(String::new()),
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "the worker did not load it within {}",
                humantime::format_duration(spec.load_timeout)
            )),
        };
        match info {
            Ok((info, confined)) => {
                process.set_phase(Phase::Idle);
                Ok((process, info, confined))
            }
            Err(reason) => {
                process.kill("it was refused");
                let death = process.wait_ended(Duration::from_secs(2));
                Err(match death {
                    // It ended on its own before saying anything: that is the reason.
                    Some(death) if reason.is_empty() => format!(
                        "its worker ended {}: {}{}",
                        death.during,
                        death.cause,
                        lines(&death.last_lines)
                    ),
                    _ if reason.is_empty() => {
                        "its worker ended before it loaded the library".into()
                    }
                    _ => reason,
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

    /// Kills the worker and everything in its process group, unless it exited already; `why`
    /// is its cause of death.
    pub(crate) fn kill(&self, why: &str) {
        let mut killing = self.killing.lock().unwrap_or_else(|e| e.into_inner());
        if killing.exited {
            return;
        }
        if killing.why.is_none() {
            killing.why = Some(why.to_owned());
        }
        self.kill_group();
    }

    fn kill_group(&self) {
        if let Ok(group) = i32::try_from(self.pid) {
            // SAFETY: `kill` has no memory-safety preconditions. The group is the worker's own
            // (`process_group(0)`), and its leader is not reaped before `reap` marks it exited
            // under the `killing` lock, which every caller holds: its id cannot have been
            // reused.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    }

    /// Waits until the worker exits, kills whatever it left in its group (the plugin's own
    /// children, which would keep its pipes and channel open), and only then reaps it.
    fn reap(&self, mut child: std::process::Child) -> Option<std::process::ExitStatus> {
        // SAFETY: `waitid` writes into the `siginfo_t` on this stack; WNOWAIT leaves the child
        // unreaped, so its id stays reserved for the group kill below.
        let exited = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                child.id(),
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            ) == 0
        };
        let mut killing = self.killing.lock().unwrap_or_else(|e| e.into_inner());
        if exited {
            self.kill_group();
        }
        let status = child.wait().ok();
        killing.exited = true;
        status
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
            .why
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
        // The channel's reader ends now, even if a process the plugin started (and that
        // escaped the group kill) still holds the worker's end.
        let _ = self
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown(std::net::Shutdown::Both);
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
        header.cancelled.store(0, Ordering::Relaxed);
        let mirror = &self.cancel[index];
        mirror.store(false, Ordering::Relaxed);
        header.op.store(OP_EXECUTE, Ordering::Relaxed);
        let seq = next_seq(header.request.load(Ordering::Relaxed));
        // SAFETY: a non-null flag is kept alive by the caller for the call.
        let cancelled = unsafe { ctx.cancelled.as_ref() };
        self.executing.fetch_add(1, Ordering::Relaxed);
        lane.post(seq);
        let answered = lane.wait_answer(seq, kill_at, cancelled, mirror);
        if answered == Answered::TimedOut {
            // Killed while still counted as executing, so its death says "during execute".
            self.kill("execute did not return by its deadline and grace");
        }
        self.executing.fetch_sub(1, Ordering::Relaxed);
        match answered {
            Answered::Yes => {
                let status = header.status.load(Ordering::Relaxed);
                let len = header.output_len.load(Ordering::Relaxed) as usize;
                if status == STATUS_TOO_LARGE {
                    return Err(Stop::TooLarge(len));
                }
                // The worker's word, clamped: it may write anything there.
                let len = len.min(MESSAGE_LIMIT);
                output.clear();
                // SAFETY: `len` is within the output area; the worker wrote it before
                // answering (ordered by the acquire in `wait_answer`). A worker that breaks the
                // protocol can only make these bytes wrong, not out of bounds.
                output.extend_from_slice(unsafe { std::slice::from_raw_parts(lane.output, len) });
                if len > KEEP_RESIDENT || input.len() > KEEP_RESIDENT {
                    // A large call's pages go back, rather than stay with the lane for ever.
                    lane.trim(KEEP_RESIDENT);
                }
                Ok(Status(status as u8))
            }
            Answered::Dead => Err(Stop::Died),
            Answered::TimedOut => Err(Stop::TimedOut),
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

    /// Sends a request on the control channel and waits for its answer, at most `limit`
    /// (waiting for an earlier request to finish included); past it, the worker is killed.
    pub(crate) fn request(
        &self,
        mut frame: Frame,
        phase: Phase,
        limit: Duration,
    ) -> Result<Frame, Stop> {
        if !frame.fits() {
            return Err(Stop::TooLarge(frame.len()));
        }
        let started = Instant::now();
        let _one_at_a_time = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        frame.id = id;
        let (sender, answer) = sync_channel(1);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, sender);
        // Checked after the insert: `ended` empties `pending` after setting `dead`, so a death
        // is seen here or fails the wait below at once, never left to time out.
        if self.is_dead() {
            return Err(Stop::NotServing);
        }
        self.set_phase(phase);
        let sent = frame.write_to(&mut *self.control.lock().unwrap_or_else(|e| e.into_inner()));
        let left = limit.saturating_sub(started.elapsed());
        let outcome = match sent {
            Err(_) => Err(Stop::Died),
            Ok(()) => match answer.recv_timeout(left) {
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
        // Only an answered request is over; after a kill, the phase says what it died in.
        if outcome.is_ok() && phase != Phase::Shutdown {
            self.set_phase(Phase::Idle);
        }
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
