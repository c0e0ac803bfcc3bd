//! The memory budget of one shard for request frames read and not yet answered (Kafka's
//! `queued.max.request.bytes`, kept per shard). A connection reserves a frame's size after
//! reading its 4-byte size prefix and before allocating the frame; the reservation is released
//! when the request's response has been written (or the connection closes). While the budget is
//! spent, connections stop reading (TCP backpressure) instead of allocating.
//!
//! Grants are first come, first served, and a reservation is granted while anything is left,
//! even if it is larger than what is left (as Kafka's memory pool does): so a frame of any
//! allowed size is eventually read, and the bytes reserved stay below the budget plus one
//! frame (`socket.request.max.bytes`).
//!
//! Owned by one shard (shared by its connections through an `Rc`); never crosses cores.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// What the budget has seen, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestBudgetStats {
    pub reserved_bytes: usize,
    pub reserved_bytes_peak: usize,
    /// Reservations that had to wait for others to be released, and how long they waited.
    pub waits: u64,
    pub wait_micros: u64,
}

pub struct RequestBudget {
    limit_bytes: usize,
    stats: Cell<RequestBudgetStats>,
    /// Tickets waiting, oldest first, with the waker of their task (None until first polled).
    queue: RefCell<VecDeque<(u64, Option<Waker>)>>,
    next_ticket: Cell<u64>,
}

impl RequestBudget {
    pub fn new(limit_bytes: usize) -> Rc<Self> {
        assert!(limit_bytes > 0, "a request budget of zero bytes could never grant anything");
        Rc::new(Self {
            limit_bytes,
            stats: Cell::new(RequestBudgetStats::default()),
            queue: RefCell::new(VecDeque::new()),
            next_ticket: Cell::new(0),
        })
    }

    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    pub fn stats(&self) -> RequestBudgetStats {
        self.stats.get()
    }

    /// Whether some connection is waiting for room: the budget is contended.
    pub fn has_waiters(&self) -> bool {
        !self.queue.borrow().is_empty()
    }

    /// Waits for its turn and for room, then reserves `bytes`.
    pub fn reserve(self: &Rc<Self>, bytes: usize) -> Reserve {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        self.queue.borrow_mut().push_back((ticket, None));
        Reserve { budget: Some(Rc::clone(self)), ticket, bytes, waiting_since: None }
    }

    fn update(&self, f: impl FnOnce(&mut RequestBudgetStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    /// Wakes the oldest waiter, which may now be granted.
    fn wake_first(&self) {
        if let Some((_, waker)) = self.queue.borrow_mut().front_mut()
            && let Some(waker) = waker.take()
        {
            waker.wake();
        }
    }

    fn release(&self, bytes: usize) {
        self.update(|s| s.reserved_bytes -= bytes);
        self.wake_first();
    }
}

/// A future granting a [`Reservation`]; dropping it before the grant gives up its turn.
pub struct Reserve {
    /// None once granted.
    budget: Option<Rc<RequestBudget>>,
    ticket: u64,
    bytes: usize,
    /// When it first had to wait.
    waiting_since: Option<std::time::Instant>,
}

impl Future for Reserve {
    type Output = Reservation;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reservation> {
        let this = &mut *self;
        let Some(budget) = this.budget.as_ref().map(Rc::clone) else {
            unreachable!("a Reserve is not polled after its grant");
        };
        {
            let mut queue = budget.queue.borrow_mut();
            let first = queue.front().map(|(ticket, _)| *ticket) == Some(this.ticket);
            if !first || budget.stats.get().reserved_bytes >= budget.limit_bytes {
                if let Some(entry) = queue.iter_mut().find(|(ticket, _)| *ticket == this.ticket) {
                    entry.1 = Some(cx.waker().clone());
                }
                this.waiting_since.get_or_insert_with(std::time::Instant::now);
                return Poll::Pending;
            }
            queue.pop_front();
        }
        let (bytes, waited) = (this.bytes, this.waiting_since.map(|since| since.elapsed()));
        budget.update(|s| {
            s.reserved_bytes += bytes;
            s.reserved_bytes_peak = s.reserved_bytes_peak.max(s.reserved_bytes);
            if let Some(waited) = waited {
                s.waits += 1;
                s.wait_micros += waited.as_micros() as u64;
            }
        });
        // The next in line may fit too.
        budget.wake_first();
        this.budget = None;
        Poll::Ready(Reservation { budget, bytes })
    }
}

impl Drop for Reserve {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            let mut queue = budget.queue.borrow_mut();
            let was_first = queue.front().map(|(ticket, _)| *ticket) == Some(self.ticket);
            queue.retain(|(ticket, _)| *ticket != self.ticket);
            drop(queue);
            if was_first {
                budget.wake_first();
            }
        }
    }
}

/// Bytes reserved in a shard's [`RequestBudget`] until dropped.
pub struct Reservation {
    budget: Rc<RequestBudget>,
    bytes: usize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(future: &mut Reserve) -> Option<Reservation> {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(future).poll(&mut cx) {
            Poll::Ready(reservation) => Some(reservation),
            Poll::Pending => None,
        }
    }

    #[test]
    fn grants_while_anything_is_left_then_waits_for_releases_in_order() {
        let budget = RequestBudget::new(100);
        let a = poll(&mut budget.reserve(60)).expect("room");
        // Larger than what is left, still granted: something is left.
        let b = poll(&mut budget.reserve(70)).expect("anything left is enough");
        assert_eq!(budget.stats().reserved_bytes, 130);
        let mut c = budget.reserve(1);
        let mut d = budget.reserve(1);
        assert!(poll(&mut c).is_none(), "spent: waits");
        assert!(poll(&mut d).is_none());
        drop(a);
        // 70 reserved < 100: the first in line goes first, and the second is not overtaken.
        assert!(poll(&mut d).is_none(), "d is behind c");
        let c = poll(&mut c).expect("c's turn");
        let d = poll(&mut d).expect("then d");
        assert_eq!(budget.stats().reserved_bytes, 72);
        drop((b, c, d));
        assert_eq!(budget.stats().reserved_bytes, 0);
        assert_eq!(budget.stats().reserved_bytes_peak, 130);
        assert_eq!(budget.stats().waits, 2);
    }

    #[test]
    fn a_reservation_given_up_while_waiting_lets_the_next_one_through() {
        let budget = RequestBudget::new(10);
        let held = poll(&mut budget.reserve(10)).expect("room");
        let mut first = budget.reserve(5);
        let mut second = budget.reserve(5);
        assert!(poll(&mut first).is_none());
        assert!(poll(&mut second).is_none());
        drop(first);
        drop(held);
        assert!(poll(&mut second).is_some(), "the abandoned ticket does not block the queue");
        assert!(budget.queue.borrow().is_empty());
    }
}
