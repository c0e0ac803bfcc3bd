//! The partition log: per-shard storage of every partition the shard owns.

pub mod cache;
pub mod config;
pub mod index;
pub mod journal;
pub mod partition;
pub mod producer;
pub mod segment;
pub mod shard_log;

pub use config::{FlushPolicy, LogConfig};
pub use partition::{PartitionOffsets, RecoveryReport, TopicPartition};
pub use segment::{ScanStop, WriteShape};
pub use shard_log::{
    Appended, Durable, FileRange, FileSlice, PartitionMetrics, PartitionState, ReadData, ReadResult, ShardLog,
    ShardLogConfig, ShardLogHistograms, ShardLogStats,
};
