//! Fault injection at the storage I/O edge, for tests: a [`FaultPlan`] given to a shard log
//! (`ShardLogConfig::faults`) is asked before every segment file creation, preallocation,
//! data write, fdatasync and journal record write, and may answer with an OS error (EIO, ENOSPC, …) or a short
//! write instead of (or, for a short write, in part instead of) the real operation, or hold
//! the operation back for a while (a slow device). Without a
//! plan (production) the check is one `None` test.
//!
//! The plan is shared across threads (`Arc`, a mutex): a test thread may arm and clear
//! faults while the shard runs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The storage operations a plan can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOperation {
    /// Creating (opening with create) a segment file.
    Create,
    /// fallocate of a segment file's next extent.
    Allocate,
    /// One aligned O_DIRECT write of segment data.
    Write,
    /// fdatasync of a segment file.
    Sync,
    /// The write of a shard journal record (with its fdatasync).
    Journal,
}

impl IoOperation {
    const ALL: [IoOperation; 5] =
        [IoOperation::Create, IoOperation::Allocate, IoOperation::Write, IoOperation::Sync, IoOperation::Journal];

    fn index(self) -> usize {
        match self {
            IoOperation::Create => 0,
            IoOperation::Allocate => 1,
            IoOperation::Write => 2,
            IoOperation::Sync => 3,
            IoOperation::Journal => 4,
        }
    }
}

/// What an armed fault does to the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with this errno and does nothing.
    Errno(i32),
    /// A write puts only the first half of its bytes (rounded down to the block) on disk and
    /// reports that count.
    ShortWrite,
    /// The operation is held back this many milliseconds, then fails with `errno` or, with
    /// None, goes ahead (a slow device: lets a test hold one operation while others run).
    Delay { ms: u32, errno: Option<i32> },
}

#[derive(Debug)]
struct Armed {
    operation: IoOperation,
    fault: Fault,
    /// How many more operations it hits; None: until cleared.
    remaining: Option<u32>,
}

#[derive(Debug, Default)]
pub struct FaultPlan {
    armed: Mutex<Vec<Armed>>,
    attempts: [AtomicU64; 5],
    injected: [AtomicU64; 5],
}

impl FaultPlan {
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::default())
    }

    /// Arms `fault` for the next `times` operations of kind `operation` (None: until
    /// [`FaultPlan::clear`]). Faults armed for the same operation apply in arming order.
    pub fn arm(&self, operation: IoOperation, fault: Fault, times: Option<u32>) {
        self.lock().push(Armed { operation, fault, remaining: times });
    }

    /// Disarms every fault.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// How many operations of this kind the engine asked for (faulted or not).
    pub fn attempts(&self, operation: IoOperation) -> u64 {
        self.attempts[operation.index()].load(Ordering::SeqCst)
    }

    /// How many operations of this kind got a fault.
    pub fn injected(&self, operation: IoOperation) -> u64 {
        self.injected[operation.index()].load(Ordering::SeqCst)
    }

    pub fn injected_total(&self) -> u64 {
        IoOperation::ALL.iter().map(|&op| self.injected(op)).sum()
    }

    /// Called by the engine before an operation: the fault to apply, if one is armed.
    pub(crate) fn next(&self, operation: IoOperation) -> Option<Fault> {
        self.attempts[operation.index()].fetch_add(1, Ordering::SeqCst);
        let mut armed = self.lock();
        let position = armed.iter().position(|a| a.operation == operation)?;
        let fault = armed[position].fault;
        match &mut armed[position].remaining {
            Some(1) => {
                armed.remove(position);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        self.injected[operation.index()].fetch_add(1, Ordering::SeqCst);
        Some(fault)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Armed>> {
        // A test thread that panicked while holding the lock leaves a consistent Vec.
        self.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The fault for the next `operation` of a plan, a delay already served: a
/// [`Fault::Delay`] becomes its errno (or no fault).
pub(crate) async fn hit(plan: Option<&FaultPlan>, operation: IoOperation) -> Option<Fault> {
    match plan?.next(operation)? {
        Fault::Delay { ms, errno } => {
            glommio::timer::sleep(std::time::Duration::from_millis(ms.into())).await;
            errno.map(Fault::Errno)
        }
        fault => Some(fault),
    }
}

/// The OS error a fault stands for, as the operation would have returned it.
pub(crate) fn errno_error(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_hit_their_operation_the_armed_number_of_times_in_order() {
        let plan = FaultPlan::new();
        plan.arm(IoOperation::Write, Fault::ShortWrite, Some(1));
        plan.arm(IoOperation::Write, Fault::Errno(libc::EIO), Some(2));
        plan.arm(IoOperation::Sync, Fault::Errno(libc::ENOSPC), None);
        assert_eq!(plan.next(IoOperation::Create), None);
        assert_eq!(plan.next(IoOperation::Write), Some(Fault::ShortWrite));
        assert_eq!(plan.next(IoOperation::Write), Some(Fault::Errno(libc::EIO)));
        assert_eq!(plan.next(IoOperation::Write), Some(Fault::Errno(libc::EIO)));
        assert_eq!(plan.next(IoOperation::Write), None);
        for _ in 0..3 {
            assert_eq!(plan.next(IoOperation::Sync), Some(Fault::Errno(libc::ENOSPC)));
        }
        plan.clear();
        assert_eq!(plan.next(IoOperation::Sync), None);
        assert_eq!((plan.attempts(IoOperation::Write), plan.injected(IoOperation::Write)), (4, 3));
        assert_eq!((plan.attempts(IoOperation::Sync), plan.injected(IoOperation::Sync)), (4, 3));
        assert_eq!(plan.injected_total(), 6);
    }
}
