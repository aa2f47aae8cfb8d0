//! The shared memory a host and its worker call through: one region per worker process, cut
//! into [`LANES`] lanes. A lane carries one call at a time: the host writes the input into the
//! lane and bumps `request`; the worker's thread for that lane runs Execute with the input
//! read in place and the lane's output area lent as the output buffer, then bumps `response`.
//! No serialisation, no copy on the worker's side, no system call when the other side is
//! awake: a side that finds nothing to do spins a few microseconds, then sleeps on a futex,
//! and says so in a flag; the other side wakes it only when that flag is set
//! (docs/design.md, "Calls into a worker").

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Calls a worker serves at once; a caller beyond them waits for a lane.
pub(crate) const LANES: usize = 8;

/// The largest input, and the largest output, of one call into a worker (16 MiB). The
/// region is sparse: memory is used only as far as calls actually write.
pub(crate) const MESSAGE_LIMIT: usize = 16 << 20;

/// `response` of a lane whose worker died: its call will never be answered.
pub(crate) const DEAD: u32 = u32::MAX;

/// A lane's `status` when the plugin's output was larger than [`MESSAGE_LIMIT`]; its
/// `output_len` is then the output's size.
pub(crate) const STATUS_TOO_LARGE: u32 = 0x100;

/// What a lane's `op` asks of the worker.
pub(crate) const OP_EXECUTE: u32 = 1;
/// Asks the lane's thread to end.
pub(crate) const OP_QUIT: u32 = 2;

const HEADERS: usize = 4096;
const REGION_LEN: usize = HEADERS + LANES * 2 * MESSAGE_LIMIT;

/// A lane's control words. Everything in it is atomic: the two sides are separate processes,
/// and the data areas are ordered by `request` and `response` (release, then acquire).
///
/// The worker runs code the host does not trust, which can write anything here: the host
/// reads only integers, every value of which is valid, and clamps the lengths.
#[repr(C, align(64))]
pub(crate) struct Header {
    /// Bumped by the host to hand the lane to the worker.
    pub(crate) request: AtomicU32,
    /// Set to `request`'s value by the worker when it answered; [`DEAD`] if it never will.
    pub(crate) response: AtomicU32,
    /// Non-zero while the host sleeps on `response`.
    pub(crate) host_waiting: AtomicU32,
    /// Non-zero while the worker sleeps on `request`.
    pub(crate) worker_waiting: AtomicU32,
    /// What the request asks ([`OP_EXECUTE`], [`OP_QUIT`]).
    pub(crate) op: AtomicU32,
    /// The plugin's status byte.
    pub(crate) status: AtomicU32,
    /// The call's cancellation flag (0 or 1), which the plugin reads through its `Context`
    /// as an `AtomicBool` (in the worker: see [`Lane::cancel_flag`]).
    pub(crate) cancelled: AtomicU8,
    /// Bytes of input.
    pub(crate) input_len: AtomicU64,
    /// Bytes of output (or of the error message).
    pub(crate) output_len: AtomicU64,
    /// The call's deadline, nanoseconds since the Unix epoch; 0 for none.
    pub(crate) deadline: AtomicU64,
}

const _: () = assert!(LANES * std::mem::size_of::<Header>() <= HEADERS);
const _: () = assert!(LANES <= 64, "free lanes are tracked in a u64");

/// The mapped region, in this process.
pub(crate) struct Region {
    base: *mut u8,
    fd: OwnedFd,
}

// SAFETY: the region is plain shared memory; every access to it goes through the atomics of
// `Header` or through a lane's data areas, which only the side that owns the lane at that
// moment touches.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// A new, zeroed region in an anonymous memory file (the host's side), sealed at its
    /// size: a worker that could shrink the file would make the host's next touch of the
    /// missing pages a SIGBUS in the host.
    pub(crate) fn create() -> std::io::Result<Region> {
        use memfd::FileSeal;
        let memfd = memfd::MemfdOptions::default()
            .close_on_exec(true)
            .allow_sealing(true)
            .create("plughost-lanes")
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        memfd.as_file().set_len(REGION_LEN as u64)?;
        memfd
            .add_seals(&[FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Self::map(memfd.into_file().into())
    }

    /// Maps the region the host created, passed as `fd` (the worker's side). Refuses a file
    /// of any other size.
    pub(crate) fn map(fd: OwnedFd) -> std::io::Result<Region> {
        let file = std::fs::File::from(fd);
        if file.metadata()?.len() != REGION_LEN as u64 {
            return Err(std::io::Error::other("the lanes file has the wrong size"));
        }
        let fd = OwnedFd::from(file);
        // SAFETY: a fresh shared mapping of the whole file, which has exactly that length;
        // nothing else in this process refers to the address range the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REGION_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Region {
            base: base.cast(),
            fd,
        })
    }

    /// The memory file, to hand to the worker.
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Lane `index` (below [`LANES`]).
    pub(crate) fn lane(&self, index: usize) -> Lane<'_> {
        assert!(index < LANES);
        // SAFETY: the headers sit at the start of the mapping, each `Header`-aligned (the
        // mapping is page-aligned) and within the first page; the data areas are within
        // `REGION_LEN`. The zeroed memory is a valid `Header` (all atomics).
        unsafe {
            let header = &*self.base.cast::<Header>().add(index);
            let input = self.base.add(HEADERS + index * 2 * MESSAGE_LIMIT);
            Lane {
                header,
                input,
                output: input.add(MESSAGE_LIMIT),
            }
        }
    }

    /// Which lane a call context's cancellation flag belongs to, if it is one of this
    /// region's: how a worker tells which call a plugin's nested call comes from.
    pub(crate) fn lane_of(&self, flag: *const AtomicBool) -> Option<usize> {
        (0..LANES).find(|&i| std::ptr::eq(self.lane(i).cancel_flag(), flag))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; lanes borrow the region, so none
        // outlives it.
        unsafe { libc::munmap(self.base.cast(), REGION_LEN) };
    }
}

/// One lane of a [`Region`].
#[derive(Clone, Copy)]
pub(crate) struct Lane<'a> {
    pub(crate) header: &'a Header,
    /// `MESSAGE_LIMIT` bytes the host writes and the worker reads.
    pub(crate) input: *mut u8,
    /// `MESSAGE_LIMIT` bytes the worker writes and the host reads.
    pub(crate) output: *mut u8,
}

/// How long a side spins before it sleeps: about one round trip on an idle machine.
const SPIN: Duration = Duration::from_micros(20);
/// How long a worker's lane spins after answering, for the next call of a busy caller.
const SPIN_IDLE: Duration = Duration::from_micros(50);

/// How a wait for an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// The worker answered.
    Yes,
    /// The worker died.
    Dead,
    /// `until` passed first.
    TimedOut,
}

impl Lane<'_> {
    /// The call's cancellation flag as the plugin's `Context` reads it, for the worker.
    ///
    /// An `AtomicBool` has the size and alignment of the `AtomicU8` it points at, and the host
    /// writes only 0 and 1 there. A plugin that writes anything else harms only its own
    /// process: the host reads the byte as an integer.
    pub(crate) fn cancel_flag(&self) -> *const AtomicBool {
        (&self.header.cancelled as *const AtomicU8).cast()
    }

    /// The host hands the lane to the worker with sequence number `seq`.
    pub(crate) fn post(&self, seq: u32) {
        self.header.request.store(seq, Ordering::SeqCst);
        // Sequentially consistent with the worker's `worker_waiting` store then `request` load:
        // either it sees the new `request`, or this sees it sleeping and wakes it.
        if self.header.worker_waiting.load(Ordering::SeqCst) != 0 {
            futex_wake(&self.header.request);
        }
    }

    /// The host waits for the answer to `seq` until `until` (for ever if `None`), copying the
    /// caller's cancellation into the lane, and into `mirror` (the host's own copy, for the
    /// plugin's calls to other plugins), while it waits.
    pub(crate) fn wait_answer(
        &self,
        seq: u32,
        until: Option<Instant>,
        cancelled: Option<&AtomicBool>,
        mirror: &AtomicBool,
    ) -> Answered {
        let h = self.header;
        let check = |r: u32| match r {
            r if r == seq => Some(Answered::Yes),
            DEAD => Some(Answered::Dead),
            _ => None,
        };
        let started = Instant::now();
        while started.elapsed() < SPIN {
            for _ in 0..64 {
                if let Some(answer) = check(h.response.load(Ordering::Acquire)) {
                    return answer;
                }
                std::hint::spin_loop();
            }
        }
        loop {
            if let Some(flag) = cancelled {
                if flag.load(Ordering::Relaxed) {
                    h.cancelled.store(1, Ordering::Relaxed);
                    mirror.store(true, Ordering::Relaxed);
                }
            }
            let now = Instant::now();
            if until.is_some_and(|until| now >= until) {
                return Answered::TimedOut;
            }
            // With a flag to watch, sleep in short steps to notice the caller giving up.
            let step = match (cancelled, until) {
                (Some(_), Some(until)) => Some((until - now).min(Duration::from_millis(2))),
                (Some(_), None) => Some(Duration::from_millis(2)),
                (None, Some(until)) => Some(until - now),
                (None, None) => None,
            };
            h.host_waiting.store(1, Ordering::SeqCst);
            let r = h.response.load(Ordering::SeqCst);
            if let Some(answer) = check(r) {
                h.host_waiting.store(0, Ordering::Relaxed);
                return answer;
            }
            futex_wait(&h.response, r, step);
            h.host_waiting.store(0, Ordering::Relaxed);
            if let Some(answer) = check(h.response.load(Ordering::Acquire)) {
                return answer;
            }
        }
    }

    /// The worker waits for a request after `last`, and returns its sequence number.
    pub(crate) fn wait_request(&self, last: u32) -> u32 {
        let h = self.header;
        let started = Instant::now();
        while started.elapsed() < SPIN_IDLE {
            for _ in 0..64 {
                let r = h.request.load(Ordering::Acquire);
                if r != last {
                    return r;
                }
                std::hint::spin_loop();
            }
        }
        loop {
            h.worker_waiting.store(1, Ordering::SeqCst);
            let r = h.request.load(Ordering::SeqCst);
            if r != last {
                h.worker_waiting.store(0, Ordering::Relaxed);
                return r;
            }
            futex_wait(&h.request, r, None);
            h.worker_waiting.store(0, Ordering::Relaxed);
        }
    }

    /// The worker answers `seq`.
    pub(crate) fn answer(&self, seq: u32) {
        self.header.response.store(seq, Ordering::SeqCst);
        if self.header.host_waiting.load(Ordering::SeqCst) != 0 {
            futex_wake(&self.header.response);
        }
    }

    /// Gives back the memory of the lane's data areas beyond their first `keep` bytes (a
    /// multiple of the page size), in both processes: the file's pages are freed. The host
    /// calls it between calls, while the lane is its own.
    pub(crate) fn trim(&self, keep: usize) {
        for area in [self.input, self.output] {
            // SAFETY: `area[keep..MESSAGE_LIMIT]` is within the mapping and page-aligned (the
            // areas are, and `keep` is a multiple of the page size); MADV_REMOVE frees the
            // file's pages there, which read as zeros afterwards. Nothing refers to them.
            unsafe {
                libc::madvise(
                    area.add(keep).cast(),
                    MESSAGE_LIMIT - keep,
                    libc::MADV_REMOVE,
                )
            };
        }
    }

    /// The host marks the lane's call as never to be answered (its worker died) and wakes
    /// whoever waits for it.
    pub(crate) fn mark_dead(&self) {
        self.header.response.store(DEAD, Ordering::SeqCst);
        futex_wake(&self.header.response);
    }
}

/// The sequence number after `seq`, never 0 (a fresh lane's) nor [`DEAD`].
pub(crate) fn next_seq(seq: u32) -> u32 {
    match seq.wrapping_add(1) {
        0 | DEAD => 1,
        next => next,
    }
}

/// Sleeps while `word` holds `current`, at most `timeout`. Spurious returns are fine: every
/// caller checks again. Not private to this process: the word is in shared memory.
fn futex_wait(word: &AtomicU32, current: u32, timeout: Option<Duration>) {
    let timespec = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let timespec_ptr = timespec
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the duration; the timeout, if any, lives on
    // this stack frame. FUTEX_WAIT only reads them.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            current,
            timespec_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every sleeper on `word`, in any process.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE only uses its address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The region as a worker would map it: the same memory file, mapped a second time.
    fn worker_side(host: &Region) -> Region {
        Region::map(host.fd().try_clone().unwrap()).unwrap()
    }

    #[test]
    fn a_lane_carries_calls_both_ways_through_a_second_mapping() {
        let host = Region::create().unwrap();
        let worker = worker_side(&host);
        let serving = std::thread::spawn(move || {
            let lane = worker.lane(3);
            let mut last = 0;
            for _ in 0..1000 {
                last = lane.wait_request(last);
                let len = lane.header.input_len.load(Ordering::Relaxed) as usize;
                // SAFETY: the host wrote `len` bytes before posting; the lane is ours.
                unsafe {
                    for i in 0..len {
                        *lane.output.add(i) = (*lane.input.add(i)).to_ascii_uppercase();
                    }
                }
                lane.header.output_len.store(len as u64, Ordering::Relaxed);
                lane.answer(last);
            }
        });
        let lane = host.lane(3);
        let mut seq = 0;
        for i in 0..1000u32 {
            let input = format!("call {i}");
            // SAFETY: the lane is the host's until posted; the input area is large enough.
            unsafe { std::ptr::copy_nonoverlapping(input.as_ptr(), lane.input, input.len()) };
            lane.header
                .input_len
                .store(input.len() as u64, Ordering::Relaxed);
            seq = next_seq(seq);
            lane.post(seq);
            // Every tenth call, the worker has gone to sleep meanwhile: it must be woken.
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mirror = AtomicBool::new(false);
            assert_eq!(lane.wait_answer(seq, None, None, &mirror), Answered::Yes);
            let len = lane.header.output_len.load(Ordering::Relaxed) as usize;
            // SAFETY: the worker wrote `len` bytes before answering.
            let output = unsafe { std::slice::from_raw_parts(lane.output, len) };
            assert_eq!(output, input.to_ascii_uppercase().as_bytes());
        }
        serving.join().unwrap();
    }

    #[test]
    fn a_dead_lane_wakes_its_waiter_and_a_deadline_ends_the_wait() {
        let host = Region::create().unwrap();
        let lane = host.lane(0);
        lane.post(1);
        let started = Instant::now();
        let until = Some(started + Duration::from_millis(50));
        let mirror = AtomicBool::new(false);
        let cancelled = AtomicBool::new(true);
        let answer = lane.wait_answer(1, until, Some(&cancelled), &mirror);
        assert_eq!(answer, Answered::TimedOut);
        assert_eq!(lane.header.cancelled.load(Ordering::Relaxed), 1);
        assert!(
            mirror.load(Ordering::Relaxed),
            "the caller's cancellation is passed on"
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        let region = std::sync::Arc::new(host);
        let marking = region.clone();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            marking.lane(0).mark_dead();
        });
        assert_eq!(
            region.lane(0).wait_answer(1, None, None, &mirror),
            Answered::Dead
        );
        killer.join().unwrap();
        assert_eq!(next_seq(DEAD - 1), 1);
        assert_eq!(next_seq(u32::MAX), 1);
    }

    #[test]
    fn the_worker_cannot_resize_the_lanes_under_the_host() {
        let host = Region::create().unwrap();
        let file = std::fs::File::from(host.fd().try_clone().unwrap());
        // A SIGBUS in the host the next time it touched the cut pages, if this worked.
        assert!(file.set_len(0).is_err());
        assert!(file.set_len(REGION_LEN as u64 * 2).is_err());
        let lane = host.lane(LANES - 1);
        // SAFETY: the last byte of the last lane's output area, within the region.
        unsafe { lane.output.add(MESSAGE_LIMIT - 1).write(7) };
    }

    #[test]
    fn a_memory_file_of_another_size_is_refused() {
        let file = memfd::MemfdOptions::default()
            .create("not-lanes")
            .unwrap()
            .into_file();
        file.set_len(4096).unwrap();
        assert!(Region::map(file.into()).is_err());
    }
}
