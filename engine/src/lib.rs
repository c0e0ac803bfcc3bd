//! corelog's storage engine: the shard runtime, the partition log and the storage I/O edge.
//!
//! - [`runtime`]: one pinned glommio executor per core, cross-shard messages, placement.
//! - [`log`]: segments, indexes, recovery, retention, the batch cache and group commit.
//! - [`batch`]: RecordBatch v2 validation and offset stamping.
//! - [`records`]: the records inside a batch (decompressed when needed).
//! - [`side_ring`]: the per-shard io_uring ring for splice and socket writability.
//! - [`device`]: start-up preparation of data devices (glommio's IOPOLL probe).
//! - [`faults`]: fault injection at the storage I/O edge, for tests.
//! - [`metrics`]: histograms a shard keeps and a scrape merges.

pub mod batch;
pub mod device;
pub mod error;
pub mod faults;
pub mod log;
pub mod metrics;
pub mod nudge;
pub mod records;
pub mod runtime;
pub mod side_ring;

pub use error::{AppendError, IoFailure, StorageError};

/// Wall-clock milliseconds since the Unix epoch: the `now` that drivers pass into the log
/// (appends, retention). Logic takes `now` as an argument; only drivers read the clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
