//! The threads plugin calls run on, off the async runtime's workers.
//!
//! tokio's `spawn_blocking` costs two thread wake-ups per call (one to start the job, one to
//! wake the waiting task), about 13 us here, far more than a plugin call. This pool avoids
//! both on the fast path: one idle worker spins briefly waiting for work, so a job starts
//! without a wake-up, and the caller polls the answer for a few microseconds before yielding,
//! so a fast plugin's answer is taken without one. Only one worker spins at a time; the others
//! sleep until needed. The pool grows when every worker is busy (a stuck plugin holds its
//! thread) up to a cap, and idle threads beyond the first exit after a while.
//!
//! Spinning pays only while the spinner and the caller each have a core. On a busy machine
//! they often share one (Linux shares CPU time between programs before threads, so another
//! busy program can leave this one a single core), and a thread that spins on the core the
//! other one needs makes it wait until the spin ends or a time slice does: 55 us to
//! milliseconds a call. So both spin politely:
//!
//! - after its first microsecond, the idle worker polls with `yield_now`, which returns at
//!   once on a core with nothing else to run and otherwise runs what waits (the caller it
//!   has just answered, say);
//! - a caller whose job the spinner has not taken within `PICKUP` polls with `yield_now`
//!   too (the spinner may be waiting for its core), and if the job is still queued when it
//!   stops polling, it wakes (or adds) another thread for it: the spinner has been set aside
//!   for a while, and the scheduler runs a thread it wakes sooner.
//!
//! On a quiet machine neither yield comes soon enough to matter.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// How long an idle worker spins for the next job before sleeping.
const WORKER_SPIN: Duration = Duration::from_micros(50);
/// How long the idle worker spins before it lets others have its core between polls: long
/// enough for the next of a caller's back-to-back calls.
const WORKER_SPIN_ALONE: Duration = Duration::from_micros(1);
/// How long a caller polls for a fast answer before yielding to the runtime.
const CALLER_SPIN: Duration = Duration::from_micros(5);
/// How long the spinner may leave a job queued before its caller takes it as off its core (a
/// spinner with a core of its own takes a job within a fraction of this).
const PICKUP: Duration = Duration::from_micros(1);
/// How long an idle thread (beyond the first) lives.
const IDLE_EXIT: Duration = Duration::from_secs(30);
/// At most this many threads; further jobs queue.
const MAX_THREADS: usize = 512;

/// The jobs not yet taken, and how many were ever queued (the last one's ticket).
struct Queue {
    jobs: VecDeque<Job>,
    pushed: u64,
}

/// A pool of threads for plugin calls.
pub struct CallPool {
    queue: Mutex<Queue>,
    queued: AtomicUsize,
    /// Jobs ever taken. Jobs leave in order, so the one with ticket `n` is taken once this
    /// reaches `n`.
    taken: AtomicU64,
    wake: Condvar,
    threads: AtomicUsize,
    idle: AtomicUsize,
    spinner: AtomicBool,
}

impl CallPool {
    /// The process-wide pool.
    pub fn global() -> &'static CallPool {
        static POOL: OnceLock<CallPool> = OnceLock::new();
        POOL.get_or_init(|| CallPool {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                pushed: 0,
            }),
            queued: AtomicUsize::new(0),
            taken: AtomicU64::new(0),
            wake: Condvar::new(),
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            spinner: AtomicBool::new(false),
        })
    }

    /// Runs `job` on a pool thread and waits for its result without blocking the async
    /// runtime (beyond a few microseconds of polling).
    pub async fn run<T: Send + 'static>(
        &'static self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Abandoned> {
        let (answer, mut receiver) = oneshot::channel();
        let left_to_spinner = self.submit(Box::new(move || {
            let _ = answer.send(job());
        }));
        let start = Instant::now();
        let mut polite = false;
        loop {
            match receiver.try_recv() {
                Ok(value) => return Ok(value),
                Err(oneshot::error::TryRecvError::Empty) => {}
                // The job ended without an answer; awaiting a closed receiver would panic.
                Err(oneshot::error::TryRecvError::Closed) => return Err(Abandoned),
            }
            let waited = start.elapsed();
            if waited >= CALLER_SPIN {
                break;
            }
            if !polite && waited >= PICKUP {
                // Not taken yet: the spinner is off its core, perhaps waiting for this one.
                polite = left_to_spinner.is_some_and(|ticket| !self.was_taken(ticket));
            }
            if polite {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if left_to_spinner.is_some_and(|ticket| !self.was_taken(ticket)) {
            // Still not taken: the spinner has been set aside for longer than a shared core
            // explains.
            self.rescue();
        }
        receiver.await.map_err(|_| Abandoned)
    }

    fn was_taken(&self, ticket: u64) -> bool {
        self.taken.load(Ordering::SeqCst) >= ticket
    }

    /// Queues `job`; returns its ticket if it is left to the spinning worker.
    fn submit(&'static self, job: Job) -> Option<u64> {
        let (waiting, ticket) = {
            let mut queue = self.lock();
            queue.jobs.push_back(job);
            queue.pushed += 1;
            self.queued.fetch_add(1, Ordering::SeqCst);
            (queue.jobs.len(), queue.pushed)
        };
        let spinning = usize::from(self.spinner.load(Ordering::SeqCst));
        if waiting <= spinning {
            return Some(ticket); // the spinning worker takes it without a wake-up
        }
        let sleeping = self.idle.load(Ordering::SeqCst);
        if sleeping > 0 {
            self.wake.notify_one();
        }
        // More jobs waiting than workers free to take them (the others may be busy with a
        // plugin that is slow or stuck): add a thread, so one plugin cannot hold up another.
        // A thread too many is harmless; it exits when idle.
        if waiting > spinning + sleeping {
            self.add_thread();
        }
        None
    }

    /// The spinner has not taken a job in time: wake (or add) another thread for it. Whichever
    /// comes first takes the job; the other finds none.
    #[cold]
    fn rescue(&'static self) {
        // Read without the lock: a thread about to sleep looks at the queue under it first,
        // so it takes the job anyway.
        if self.idle.load(Ordering::SeqCst) > 0 {
            self.wake.notify_one();
        } else {
            self.add_thread();
        }
    }

    fn add_thread(&'static self) {
        if self.threads.fetch_add(1, Ordering::SeqCst) < MAX_THREADS {
            std::thread::Builder::new()
                .name("plughost-call".into())
                .spawn(move || self.work())
                .expect("spawn a plugin call thread");
        } else {
            self.threads.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Jobs run outside the lock, so it cannot be poisoned mid-update.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Option<Job> {
        if self.queued.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let job = self.lock().jobs.pop_front();
        if job.is_some() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.taken.fetch_add(1, Ordering::SeqCst);
        }
        job
    }

    fn work(&'static self) {
        loop {
            while let Some(job) = self.take() {
                run(job);
            }
            // Idle: spin for the next job if no other worker does, then sleep.
            if !self.spinner.swap(true, Ordering::SeqCst) {
                let start = Instant::now();
                let job = loop {
                    let job = self.take();
                    let spun = start.elapsed();
                    if job.is_some() || spun >= WORKER_SPIN {
                        break job;
                    }
                    if spun >= WORKER_SPIN_ALONE {
                        // Lets whatever waits for this core run (the caller just answered may
                        // share it); returns at once if nothing does.
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                };
                self.spinner.store(false, Ordering::SeqCst);
                if let Some(job) = job {
                    run(job);
                    continue;
                }
            }
            // Sleep. `idle` is raised under the queue lock, and `submit` pushes under the same
            // lock before reading it, so a job is either seen here or its submitter wakes us.
            let queue = self.lock();
            if queue.jobs.is_empty() {
                self.idle.fetch_add(1, Ordering::SeqCst);
                let (queue, waited) = self
                    .wake
                    .wait_timeout(queue, IDLE_EXIT)
                    .unwrap_or_else(|e| e.into_inner());
                self.idle.fetch_sub(1, Ordering::SeqCst);
                if waited.timed_out()
                    && queue.jobs.is_empty()
                    && self.threads.load(Ordering::SeqCst) > 1
                {
                    self.threads.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

/// A pool job that ended without an answer (it panicked, which the plugin's own guards
/// normally prevent).
#[derive(Debug)]
pub struct Abandoned;

/// Runs a job; a panic ends the job, not the worker (plugin entry points catch their own
/// panics, so this guards the host's code around them).
fn run(job: Job) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
}
