//! The threads plugin calls run on, off the async runtime's workers.
//!
//! tokio's `spawn_blocking` costs two thread wake-ups per call (one to start the job, one to
//! wake the waiting task), about 13 us here, far more than a plugin call. This pool avoids
//! both on the fast path: one idle worker spins briefly waiting for work, so a job starts
//! without a wake-up, and the caller polls the answer for a few microseconds before yielding,
//! so a fast plugin's answer is taken without one. Only one worker spins at a time; the others
//! sleep until needed. The pool grows when every worker is busy (a stuck plugin holds its
//! thread) up to a cap, and idle threads beyond the first exit after a while.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// How long an idle worker spins for the next job before sleeping.
const WORKER_SPIN: Duration = Duration::from_micros(50);
/// How long a caller polls for a fast answer before yielding to the runtime.
const CALLER_SPIN: Duration = Duration::from_micros(5);
/// How long an idle thread (beyond the first) lives.
const IDLE_EXIT: Duration = Duration::from_secs(30);
/// At most this many threads; further jobs queue.
const MAX_THREADS: usize = 512;

/// A pool of threads for plugin calls.
pub struct CallPool {
    queue: Mutex<VecDeque<Job>>,
    queued: AtomicUsize,
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
            queue: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
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
        self.submit(Box::new(move || {
            let _ = answer.send(job());
        }));
        let until = Instant::now() + CALLER_SPIN;
        while Instant::now() < until {
            match receiver.try_recv() {
                Ok(value) => return Ok(value),
                Err(oneshot::error::TryRecvError::Empty) => std::hint::spin_loop(),
                // The job ended without an answer; awaiting a closed receiver would panic.
                Err(oneshot::error::TryRecvError::Closed) => return Err(Abandoned),
            }
        }
        receiver.await.map_err(|_| Abandoned)
    }

    fn submit(&'static self, job: Job) {
        let waiting = {
            let mut queue = self.lock();
            queue.push_back(job);
            self.queued.fetch_add(1, Ordering::SeqCst);
            queue.len()
        };
        let spinning = usize::from(self.spinner.load(Ordering::SeqCst));
        if waiting <= spinning {
            return; // the spinning worker takes it without a wake-up
        }
        let sleeping = self.idle.load(Ordering::SeqCst);
        if sleeping > 0 {
            self.wake.notify_one();
        }
        // More jobs waiting than workers free to take them (the others may be busy with a
        // plugin that is slow or stuck): add a thread, so one plugin cannot hold up another.
        // A thread too many is harmless; it exits when idle.
        if waiting > spinning + sleeping {
            if self.threads.fetch_add(1, Ordering::SeqCst) < MAX_THREADS {
                std::thread::Builder::new()
                    .name("plughost-call".into())
                    .spawn(move || self.work())
                    .expect("spawn a plugin call thread");
            } else {
                self.threads.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        // Jobs run outside the lock, so it cannot be poisoned mid-update.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Option<Job> {
        if self.queued.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let job = self.lock().pop_front();
        if job.is_some() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
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
                let until = Instant::now() + WORKER_SPIN;
                let mut job = None;
                while job.is_none() && Instant::now() < until {
                    std::hint::spin_loop();
                    job = self.take();
                }
                self.spinner.store(false, Ordering::SeqCst);
                if let Some(job) = job {
                    run(job);
                    continue;
                }
            }
            // Sleep. `idle` is raised under the queue lock, and `submit` pushes under the same
            // lock before reading it, so a job is either seen here or its submitter wakes us.
            let queue = self.lock();
            if queue.is_empty() {
                self.idle.fetch_add(1, Ordering::SeqCst);
                let (queue, waited) = self
                    .wake
                    .wait_timeout(queue, IDLE_EXIT)
                    .unwrap_or_else(|e| e.into_inner());
                self.idle.fetch_sub(1, Ordering::SeqCst);
                if waited.timed_out() && queue.is_empty() && self.threads.load(Ordering::SeqCst) > 1
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
