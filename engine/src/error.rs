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
    /// The operation did less than asked (a short write or read) without an OS error.
    pub incomplete: bool,
}

/// Operations that only put bytes the log still holds in memory onto the disk (or reserve
/// room for them): when one fails for lack of space, retrying it later rewrites the same bytes.
const REWRITABLE_OPERATIONS: [&str; 4] = ["write", "fallocate", "open", "create"];

impl IoFailure {
    pub fn new(operation: &'static str, path: &Path, error: impl Into<std::io::Error>) -> Self {
        let error: std::io::Error = error.into();
        // glommio's errors with context keep the kind but not the errno.
        let os_error = error.raw_os_error().or(match error.kind() {
            std::io::ErrorKind::StorageFull => Some(libc::ENOSPC),
            std::io::ErrorKind::QuotaExceeded => Some(libc::EDQUOT),
            _ => None,
        });
        Self { operation, path: path.to_path_buf(), message: error.to_string(), os_error, incomplete: false }
    }

    /// A short write or read.
    pub fn incomplete(operation: &'static str, path: &Path, message: String) -> Self {
        Self { operation, path: path.to_path_buf(), message, os_error: None, incomplete: true }
    }

    /// Out of space (ENOSPC, EDQUOT), or a short write, while writing bytes the log still
    /// holds: nothing they cover was acknowledged, the bytes already on disk stay valid, and the
    /// write is retried once there is room. A failed sync is never retryable: after it the
    /// kernel may have dropped the dirty pages, so the file is not trusted until recovered.
    pub fn is_retryable_write(&self) -> bool {
        let out_of_space = matches!(self.os_error, Some(libc::ENOSPC) | Some(libc::EDQUOT));
        REWRITABLE_OPERATIONS.contains(&self.operation) && (out_of_space || self.incomplete)
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
    /// Writes are held back until there is room on the disk again: appends are refused, and
    /// those already appended wait (their write is retried, nothing unsynced is acknowledged).
    #[error("partition {partition} cannot write: {cause}; appends are refused until there is room again")]
    NoSpace { partition: String, cause: String },
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
            StorageError::Io(_)
            | StorageError::Offline { .. }
            | StorageError::NoSpace { .. }
            | StorageError::Stopping => kafka_error::KAFKA_STORAGE_ERROR,
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
