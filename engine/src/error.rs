//! Operating errors of the storage engine, one enum per operation family. Each maps to the
//! Kafka error code a client receives.

use std::path::{Path, PathBuf};

use crate::batch::BatchError;

/// Kafka error codes the engine's errors map to.
pub mod kafka_error {
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
}

/// An I/O failure, naming the operation and the path it concerned.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} {path}: {message}", path = path.display())]
pub struct IoFailure {
    pub operation: &'static str,
    pub path: PathBuf,
    pub message: String,
    pub os_error: Option<i32>,
}

impl IoFailure {
    pub fn new(operation: &'static str, path: &Path, error: impl Into<std::io::Error>) -> Self {
        let error: std::io::Error = error.into();
        Self { operation, path: path.to_path_buf(), message: error.to_string(), os_error: error.raw_os_error() }
    }
}

/// Failures of storage operations on a partition (open, flush, retention, delete records).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Io(#[from] IoFailure),
    /// A write or sync failed earlier; the log is not trusted again until it is recovered
    /// by a restart (no retrying fsync and carrying on).
    #[error("partition {partition} is offline after a storage failure: {cause}")]
    Offline { partition: String, cause: String },
    #[error("partition {0} is not hosted on this shard")]
    UnknownPartition(String),
    #[error("offset {offset} is outside [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange { offset: i64, log_start_offset: i64, log_end_offset: i64 },
    #[error("invalid log config: {0}")]
    InvalidConfig(String),
    #[error("the shard is stopping")]
    Stopping,
}

impl StorageError {
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            StorageError::Io(_) | StorageError::Offline { .. } | StorageError::Stopping => {
                kafka_error::KAFKA_STORAGE_ERROR
            }
            StorageError::UnknownPartition(_) => kafka_error::UNKNOWN_TOPIC_OR_PARTITION,
            StorageError::OffsetOutOfRange { .. } => kafka_error::OFFSET_OUT_OF_RANGE,
            StorageError::InvalidConfig(_) => 40, // INVALID_CONFIG
        }
    }
}

/// Failures of an append.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Sequence(#[from] crate::log::producer::SequenceError),
}

impl AppendError {
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            AppendError::Batch(e) => e.kafka_error_code(),
            AppendError::Storage(e) => e.kafka_error_code(),
            AppendError::Sequence(e) => e.kafka_error_code(),
        }
    }
}
