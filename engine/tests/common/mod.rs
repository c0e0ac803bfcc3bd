//! Helpers shared by the engine's integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::BytesMut;
use corelog_engine::batch;
use corelog_engine::log::{LogConfig, ShardLog, ShardLogConfig, TopicPartition};

pub fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor").run(f)
}

pub fn tp() -> TopicPartition {
    TopicPartition::new("events", 0)
}

pub async fn open_log(dir: &Path, cache_budget_bytes: usize) -> Rc<ShardLog> {
    ShardLog::open(ShardLogConfig::new(dir.to_path_buf(), cache_budget_bytes)).await.expect("open shard log")
}

/// A shard log with a journal ring of `journal_bytes` (0: none, every segment file synced
/// by itself).
pub async fn open_log_with_journal(dir: &Path, cache_budget_bytes: usize, journal_bytes: u64) -> Rc<ShardLog> {
    let config = ShardLogConfig { journal_bytes, ..ShardLogConfig::new(dir.to_path_buf(), cache_budget_bytes) };
    ShardLog::open(config).await.expect("open shard log")
}

pub fn small_segments() -> LogConfig {
    // Test timestamps are from 1970: time retention is off unless a test sets it.
    LogConfig { segment_bytes: 8 << 10, index_interval_bytes: 1024, retention_ms: None, ..LogConfig::default() }
}

/// A batch of `records` records whose values encode `seed`, so each batch is distinct.
pub fn batch_for(seed: u64, records: i32, value_bytes: usize) -> BytesMut {
    let value: Vec<u8> = (0..value_bytes).map(|i| (seed as usize * 31 + i) as u8).collect();
    BytesMut::from(&batch::build_test_batch(records, &value, 1_000 + seed as i64)[..])
}

/// Reads every visible batch from `from` to the high watermark, checking each one's CRC.
/// Returns (base offset, batch bytes).
pub async fn read_all(log: &ShardLog, name: &TopicPartition, from: i64) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let result = log.read(name, offset, 1 << 20).await.expect("read");
        let bytes = result.to_vec().await.expect("read bytes");
        if bytes.is_empty() {
            assert_eq!(offset, result.offsets.high_watermark, "empty read before the high watermark");
            return out;
        }
        // A read that hands back no batch at or after `offset` would have a consumer ask
        // again for ever: fail instead of spinning.
        let asked = offset;
        let mut at = 0;
        while at < bytes.len() {
            let Some(size) = batch::claimed_batch_size(&bytes[at..]).filter(|&s| at + s <= bytes.len()) else {
                break;
            };
            let header = batch::validate_prefix(&bytes[at..at + size]).expect("served batch must be valid");
            if header.last_offset() >= offset {
                out.push((header.base_offset, bytes[at..at + size].to_vec()));
                offset = header.next_offset();
            }
            at += size;
        }
        assert!(
            offset > asked,
            "a read at {asked} returned {} bytes without a whole batch at or after it",
            bytes.len()
        );
    }
}

pub fn segment_files(dir: &Path, name: &TopicPartition, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(name.to_string()))
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

pub fn default_config() -> LogConfig {
    LogConfig::default()
}
