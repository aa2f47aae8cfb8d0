//! One subscriber's queue: bounded, owned by the host (so it outlives any version of the
//! plugin that takes from it), with the subscriber's policy for when it is full.
//!
//! A mutex over a `VecDeque`, with two condition variables that are only signalled when
//! someone waits on them: a publisher pays a lock and a push, not a system call, while the
//! subscriber's thread is busy.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::stats::TopicCounters;
use crate::config::QueuePolicy;
use crate::event::Event;

/// How many free slots wake publishers blocked on a full queue of `capacity`.
fn room(capacity: usize) -> usize {
    (capacity / 8).max(1)
}

/// How long a taker has recently waited for events: an exponential moving average.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    gap_nanos: u64,
}

impl Pace {
    const SHORTEST: Duration = Duration::from_micros(20);
    const LONGEST: Duration = Duration::from_micros(200);
    const BUSY: u64 = 100_000;

    fn spin(&self) -> Duration {
        if self.gap_nanos > Self::BUSY {
            return Self::SHORTEST;
        }
        Duration::from_nanos(self.gap_nanos * 2).clamp(Self::SHORTEST, Self::LONGEST)
    }

    fn waited(&mut self, gap: Duration) {
        let gap = u64::try_from(gap.as_nanos())
            .unwrap_or(u64::MAX)
            .min(1_000_000_000);
        self.gap_nanos = (self.gap_nanos * 7 + gap) / 8;
    }
}

/// An event waiting for its subscribers: one allocation per publish, shared by every queue it
/// is in (a copy costs one reference count).
pub(crate) type Item = Arc<Queued>;

/// What [`Item`] shares.
pub(crate) struct Queued {
    pub(crate) event: Event,
    pub(crate) topic: Arc<TopicCounters>,
    pub(crate) published: Instant,
}

pub(crate) struct Queue {
    state: Mutex<State>,
    not_empty: Condvar,
    not_full: Condvar,
    /// The number of items, readable without the lock (statistics, spinning).
    len: AtomicUsize,
}

struct State {
    items: VecDeque<Item>,
    capacity: usize,
    policy: QueuePolicy,
    block: Duration,
    /// The subscriber's thread sleeps on `not_empty`.
    taker_sleeping: bool,
    /// Publishers waiting on `not_full`.
    blocked: usize,
    closed: bool,
}

/// What became of a push.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Queued, after the oldest item was dropped to make room (returned, to count).
    DroppedOldest,
    /// Not queued: the queue was full (after waiting `waited`, under `block`).
    DroppedNewest {
        waited: Option<Duration>,
    },
    /// Not queued: the subscriber has left.
    Closed,
    /// Not queued: the queue was full and the publisher is being stopped.
    Cancelled,
}

/// How often a blocked publisher looks whether it is being stopped.
const CANCEL_CHECK: Duration = Duration::from_millis(10);

impl Queue {
    pub(crate) fn new(capacity: usize, policy: QueuePolicy, block: Duration) -> Self {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.min(1024)),
                capacity,
                policy,
                block,
                taker_sleeping: false,
                blocked: 0,
                closed: false,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            len: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a single step a panic cannot leave half done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes capacity and policy (a live edit of the settings). A smaller capacity drops
    /// nothing already queued: the queue drains down to it.
    pub(crate) fn configure(&self, capacity: usize, policy: QueuePolicy, block: Duration) {
        let mut state = self.lock();
        state.capacity = capacity;
        state.policy = policy;
        state.block = block;
        if state.blocked > 0 {
            self.not_full.notify_all();
        }
    }

    /// Adds a copy of `item` under the queue's policy; `may_block`: whether the publisher may
    /// wait (the host's own lifecycle events never do: they are dropped as by `drop_newest`).
    /// `on_drop_oldest` is given the item dropped to make room.
    /// Under `block`, the wait ends early once `cancelled()` says so (its publisher is being
    /// stopped), as [`Pushed::Cancelled`].
    pub(crate) fn push(
        &self,
        item: &Item,
        may_block: bool,
        cancelled: &dyn Fn() -> bool,
        on_drop_oldest: impl FnOnce(Item),
    ) -> Pushed {
        let mut state = self.lock();
        if state.closed {
            return Pushed::Closed;
        }
        let mut outcome = Pushed::Queued;
        if state.items.len() >= state.capacity {
            match state.policy {
                QueuePolicy::DropNewest => return Pushed::DroppedNewest { waited: None },
                QueuePolicy::Block if !may_block => return Pushed::DroppedNewest { waited: None },
                QueuePolicy::DropOldest => {
                    if let Some(oldest) = state.items.pop_front() {
                        on_drop_oldest(oldest);
                    }
                    outcome = Pushed::DroppedOldest;
                }
                QueuePolicy::Block => {
                    let started = Instant::now();
                    let deadline = started + state.block;
                    while state.items.len() >= state.capacity && !state.closed {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Pushed::DroppedNewest {
                                waited: Some(started.elapsed()),
                            };
                        }
                        if cancelled() {
                            return Pushed::Cancelled;
                        }
                        state.blocked += 1;
                        // In slices, to see a cancellation soon.
                        let (next, _) = self
                            .not_full
                            .wait_timeout(state, left.min(CANCEL_CHECK))
                            .unwrap_or_else(|e| e.into_inner());
                        state = next;
                        state.blocked -= 1;
                    }
                    if state.closed {
                        return Pushed::Closed;
                    }
                }
            }
        }
        // Cloned only once accepted: a refused push costs the lock alone.
        state.items.push_back(item.clone());
        self.len.store(state.items.len(), Ordering::Relaxed);
        if state.taker_sleeping {
            state.taker_sleeping = false;
            self.not_empty.notify_one();
        }
        outcome
    }

    /// Takes the oldest item, waiting for one while `keep_waiting()` says so; `None` once the
    /// queue is closed or `keep_waiting` says stop.
    ///
    /// Before sleeping it yields for a while: a taker that sleeps pays a wake-up (about 20 µs
    /// on a virtual machine) for the next event. The while follows the stream (`pace`): 20 µs
    /// for sparse events, up to twice the recent gap (at most 200 µs) while events come less
    /// than 100 µs apart, so a busy stream never sleeps and an idle one costs nothing.
    pub(crate) fn take(&self, keep_waiting: impl Fn() -> bool, pace: &mut Pace) -> Option<Item> {
        let waiting_since = Instant::now();
        if self.len.load(Ordering::Relaxed) == 0 {
            let spin_until = waiting_since + pace.spin();
            while self.len.load(Ordering::Relaxed) == 0 && Instant::now() < spin_until {
                std::thread::yield_now();
            }
        }
        let mut state = self.lock();
        loop {
            if state.closed || !keep_waiting() {
                return None;
            }
            if let Some(item) = state.items.pop_front() {
                let len = state.items.len();
                self.len.store(len, Ordering::Relaxed);
                // Publishers blocked on a full queue are woken once an eighth of it is free
                // (every slot, for queues of up to 8): waking them for every slot of a large
                // queue would hand events over one at a time.
                if state.blocked > 0
                    && state.capacity - len.min(state.capacity) >= room(state.capacity)
                {
                    self.not_full.notify_all();
                }
                drop(state);
                pace.waited(waiting_since.elapsed());
                return Some(item);
            }
            state.taker_sleeping = true;
            // Woken by a push, by `close`, or by `wake` (a replaced taker must look again).
            let (next, _) = self
                .not_empty
                .wait_timeout(state, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner());
            state = next;
        }
    }

    /// Drops the items `keep` says no to, and returns them (to count).
    pub(crate) fn retain(&self, keep: impl Fn(&Item) -> bool) -> Vec<Item> {
        let mut state = self.lock();
        let mut dropped = Vec::new();
        state.items.retain(|item| {
            let kept = keep(item);
            if !kept {
                dropped.push(item.clone());
            }
            kept
        });
        self.len.store(state.items.len(), Ordering::Relaxed);
        if state.blocked > 0 {
            self.not_full.notify_all();
        }
        dropped
    }

    /// Wakes a taker so it looks at `keep_waiting` again.
    pub(crate) fn wake(&self) {
        let mut state = self.lock();
        state.taker_sleeping = false;
        self.not_empty.notify_all();
    }

    /// Closes the queue and returns what was still in it.
    pub(crate) fn close(&self) -> Vec<Item> {
        let mut state = self.lock();
        state.closed = true;
        let left: Vec<Item> = state.items.drain(..).collect();
        self.len.store(0, Ordering::Relaxed);
        self.not_empty.notify_all();
        self.not_full.notify_all();
        left
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(crate) fn settings(&self) -> (usize, QueuePolicy) {
        let state = self.lock();
        (state.capacity, state.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u8) -> Item {
        Arc::new(Queued {
            event: Event::new("t", "text/plain", vec![n]),
            topic: Arc::default(),
            published: Instant::now(),
        })
    }

    fn drain(queue: &Queue) -> Vec<u8> {
        let mut out = Vec::new();
        while queue.len() > 0 {
            let item = queue.take(|| true, &mut Pace::default()).unwrap();
            out.push(item.event.data()[0]);
        }
        out
    }

    #[test]
    fn drop_newest_keeps_the_first_and_drop_oldest_the_last() {
        let queue = Queue::new(2, QueuePolicy::DropNewest, Duration::ZERO);
        let pushed: Vec<Pushed> = (1..=3)
            .map(|n| queue.push(&item(n), true, &|| false, drop))
            .collect();
        assert_eq!(pushed[2], Pushed::DroppedNewest { waited: None });
        assert_eq!(drain(&queue), [1, 2]);
        let queue = Queue::new(2, QueuePolicy::DropOldest, Duration::ZERO);
        let mut dropped = Vec::new();
        for n in 1..=3 {
            queue.push(&item(n), true, &|| false, |old| {
                dropped.push(old.event.data()[0])
            });
        }
        assert_eq!((drain(&queue), dropped), (vec![2, 3], vec![1]));
    }

    #[test]
    fn block_waits_for_room_then_gives_up() {
        let queue = Arc::new(Queue::new(1, QueuePolicy::Block, Duration::from_millis(50)));
        queue.push(&item(1), true, &|| false, drop);
        let waited = queue.push(&item(2), true, &|| false, drop);
        assert!(
            matches!(waited, Pushed::DroppedNewest { waited: Some(w) } if w >= Duration::from_millis(50))
        );
        let taker = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                queue
                    .take(|| true, &mut Pace::default())
                    .unwrap()
                    .event
                    .data()[0]
            })
        };
        let queue_long = Queue::new(1, QueuePolicy::Block, Duration::from_secs(5));
        drop(queue_long);
        queue.configure(1, QueuePolicy::Block, Duration::from_secs(5));
        assert_eq!(queue.push(&item(3), true, &|| false, drop), Pushed::Queued);
        assert_eq!(taker.join().unwrap(), 1);
        assert_eq!(drain(&queue), [3]);
        // The host's own events never wait.
        queue.push(&item(4), true, &|| false, drop);
        assert_eq!(
            queue.push(&item(5), false, &|| false, drop),
            Pushed::DroppedNewest { waited: None }
        );
    }
}
