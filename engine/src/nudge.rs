//! A thread that wakes a shard's executor now and then, so glommio 0.9 cannot sleep for
//! good with work pending.
//!
//! The trap: glommio's executor loop arms its preemption timer, then starts the task queues;
//! if the timer has already fired when the first queue would start (the thread was
//! descheduled in between: likely on a busy host when a latency-sensitive queue makes the
//! timer 500 µs), it runs nothing and reports that nothing ran, and the loop parks. The park
//! consumes the timer's completion, finds no other event and sleeps on the main ring, with
//! tasks still runnable and maybe nothing in flight to wake it. Seen here: a test that
//! awaited its append's durability slept for good once the last wave had completed it.
//!
//! The only wake-up that needs no task to run first is the executor's own eventfd, which
//! glommio arms itself on every loop and signals when a task of that executor is woken from
//! another thread. So a `Nudger` owns a thread that wakes a local target task every tick:
//! `fast` while the shard reports work, `slow` otherwise. The target lives in the default
//! (not latency-sensitive) queue, so a wake of an executor that is awake costs one channel
//! message and one poll, and only a sleeping executor gets its eventfd written. Each poll of
//! the target reports whether the shard is busy (which tick to use).
//!
//! An executor that ends without stopping its nudger (a simulated crash in tests) leaves the
//! thread waking a task nobody runs; each such wake holds a reference to the task, so once
//! the target has gone unpolled for `STALE_AFTER` the thread slows to `STALE_TICK`, and after
//! `GONE_AFTER` it ends.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A target unpolled this long: its executor is stalled or gone; wake it less often.
const STALE_AFTER: Duration = Duration::from_secs(5);
const STALE_TICK: Duration = Duration::from_secs(1);
/// A target unpolled this long: its executor is gone; the thread ends.
const GONE_AFTER: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    fast: AtomicBool,
    polls: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

impl Shared {
    fn waker(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        // The lock guards a plain slot: a panic while holding it leaves nothing half-done.
        self.waker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Owner side: lives on the shard (not `Send` by use, though nothing stops moving it).
pub struct Nudger {
    shared: Arc<Shared>,
    thread: RefCell<Option<JoinHandle<()>>>,
}

impl Nudger {
    /// Starts the thread. It wakes nothing until the target (see `target`) runs.
    pub fn start(name: String, fast: Duration, slow: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name(name).spawn(move || nudge_loop(&for_thread, fast, slow))?;
        Ok(Self { shared, thread: RefCell::new(Some(thread)) })
    }

    /// The task the thread wakes; spawn it on the executor to guard, in a queue that is not
    /// latency-sensitive. Each poll calls `busy` to pick the next tick. Ends at `stop`.
    pub fn target<F: Fn() -> bool>(&self, busy: F) -> impl Future<Output = ()> + use<F> {
        let shared = Arc::clone(&self.shared);
        std::future::poll_fn(move |cx| {
            if shared.stop.load(Ordering::Acquire) {
                *shared.waker() = None;
                return Poll::Ready(());
            }
            shared.polls.fetch_add(1, Ordering::Relaxed);
            shared.fast.store(busy(), Ordering::Relaxed);
            let mut slot = shared.waker();
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }

    /// Ticks fast from now until the target's next poll says otherwise.
    pub fn busy_now(&self) {
        self.shared.fast.store(true, Ordering::Relaxed);
    }

    /// Ends the thread (joined here) and the target (it completes when next polled: this
    /// wakes it).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let thread = self.thread.borrow_mut().take();
        if let Some(thread) = thread {
            thread.thread().unpark();
            if thread.join().is_err() {
                tracing::error!("the executor nudger thread panicked");
            }
        }
        let waker = self.shared.waker().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for Nudger {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.borrow().as_ref() {
            thread.thread().unpark();
        }
    }
}

fn nudge_loop(shared: &Shared, fast: Duration, slow: Duration) {
    let mut seen = shared.polls.load(Ordering::Relaxed);
    let mut seen_at = Instant::now();
    loop {
        let unpolled = seen_at.elapsed();
        let tick = if unpolled >= STALE_AFTER {
            STALE_TICK
        } else if shared.fast.load(Ordering::Relaxed) {
            fast
        } else {
            slow
        };
        std::thread::park_timeout(tick);
        if shared.stop.load(Ordering::Acquire) || unpolled >= GONE_AFTER {
            return;
        }
        let polls = shared.polls.load(Ordering::Relaxed);
        if polls != seen {
            seen = polls;
            seen_at = Instant::now();
        }
        if let Some(waker) = shared.waker().as_ref() {
            waker.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn the_target_is_polled_every_tick_and_stop_ends_thread_and_target() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor").run(async {
            let nudger =
                Nudger::start("nudge-test".into(), Duration::from_millis(1), Duration::from_millis(5)).expect("thread");
            let polls = Rc::new(Cell::new(0u32));
            let counted = Rc::clone(&polls);
            let target = glommio::spawn_local(nudger.target(move || {
                counted.set(counted.get() + 1);
                true
            }));
            glommio::timer::sleep(Duration::from_millis(200)).await;
            // 1 ms ticks for 200 ms: far more polls than the one at spawn, even on a
            // loaded machine.
            assert!(polls.get() >= 10, "target polled {} times in 200 ms", polls.get());
            nudger.stop();
            target.await;
            assert!(nudger.thread.borrow().is_none());
        });
    }
}
