//! Disk faults injected at the storage I/O edge (`corelog_engine::faults`): EIO on a write,
//! EIO on an fdatasync, ENOSPC on segment creation, preallocation and writes, short writes.
//!
//! What must hold: nothing is acknowledged that no fdatasync covered; a failed write (other
//! than for lack of space) or any failed sync takes the partition offline, and a failed sync
//! is never retried; reads of what was durable keep working; lack of space holds writes back
//! (appends refused with KAFKA_STORAGE_ERROR, appends already made wait) and they resume, with
//! no restart, once there is room; short writes are completed by a retry; and whatever
//! happened, the log recovered at the next start holds every acknowledged batch, bit for bit.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use corelog_engine::StorageError;
use corelog_engine::faults::{Fault, FaultPlan, IoOperation};
use corelog_engine::log::{Durable, LogConfig, ShardLog, ShardLogConfig};

const WAIT: Duration = Duration::from_secs(10);

/// Small preallocation extents, so that writes keep asking for more.
fn small_extents() -> LogConfig {
    LogConfig { preallocate_bytes: 64 << 10, ..default_config() }
}

async fn open_with_faults(dir: &Path, faults: &Arc<FaultPlan>) -> Rc<ShardLog> {
    // The segment files' own write and sync path (the journal would acknowledge appends whose
    // segment writes are held back: `journal.rs` tests faults with it).
    let config =
        ShardLogConfig { faults: Some(Arc::clone(faults)), journal_bytes: 0, ..ShardLogConfig::new(dir, 64 << 20) };
    let log = ShardLog::open(config).await.expect("open shard log");
    log.open_partition(&tp(), small_extents()).await.unwrap();
    log
}

/// Appends batch `seed` and returns (base offset, stamped bytes, durable).
fn append(log: &ShardLog, seed: u64, value_bytes: usize) -> (i64, Vec<u8>, Durable) {
    let appended = log.append(&tp(), batch_for(seed, 4, value_bytes), 1_000 + seed as i64).expect("append");
    let mut stamped = batch_for(seed, 4, value_bytes).to_vec();
    corelog_engine::batch::stamp(&mut stamped, appended.base_offset, 0);
    (appended.base_offset, stamped, appended.durable)
}

/// `durable`'s outcome, or None if it is still waiting after `within`.
async fn outcome_within(durable: &mut Durable, within: Duration) -> Option<Result<(), StorageError>> {
    let result = glommio::timer::timeout(within, async { Ok(durable.await) }).await;
    result.ok()
}

/// Appends `count` batches and waits for each to be durable: the acknowledged prefix.
async fn acknowledged(log: &ShardLog, seeds: std::ops::Range<u64>) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    for seed in seeds {
        let (base, bytes, durable) = append(log, seed, 200);
        durable.await.expect("durable");
        out.push((base, bytes));
    }
    out
}

/// Restarts on `dir` without faults and returns what the recovered log serves.
async fn recovered(dir: &Path) -> Vec<(i64, Vec<u8>)> {
    let log = open_log(dir, 64 << 20).await;
    log.open_partition(&tp(), small_extents()).await.unwrap();
    let batches = read_all(&log, &tp(), 0).await;
    log.close().await.unwrap();
    batches
}

fn assert_acknowledged_kept(acked: &[(i64, Vec<u8>)], recovered: &[(i64, Vec<u8>)], unacked: &[(i64, Vec<u8>)]) {
    assert!(recovered.len() >= acked.len(), "lost acknowledged batches: {} of {}", recovered.len(), acked.len());
    assert_eq!(&recovered[..acked.len()], acked, "an acknowledged batch changed");
    // Beyond them, only batches appended (never acknowledged) may have survived, in order.
    for (got, appended) in recovered[acked.len()..].iter().zip(unacked) {
        assert_eq!(got, appended, "only appended batches may follow the acknowledged ones");
    }
    assert!(recovered.len() <= acked.len() + unacked.len(), "batches nobody appended");
}

fn offline(error: &StorageError) -> bool {
    matches!(error, StorageError::Offline { .. })
}

#[test]
fn eio_on_a_write_takes_the_partition_offline_while_reads_of_durable_data_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::new();
    run(async {
        let log = open_with_faults(dir.path(), &faults).await;
        let acked = acknowledged(&log, 0..5).await;
        faults.arm(IoOperation::Write, Fault::Errno(libc::EIO), Some(1));
        let (base, bytes, mut durable) = append(&log, 5, 200);
        let failed = outcome_within(&mut durable, WAIT).await.expect("the failed write is reported");
        assert!(failed.as_ref().is_err_and(offline), "{failed:?}");
        let refused = log.append(&tp(), batch_for(6, 4, 200), 2_000).err().expect("appends are refused");
        assert_eq!(refused.kafka_error_code(), 56, "KAFKA_STORAGE_ERROR: {refused}");
        // What was durable is still served.
        assert_eq!(read_all(&log, &tp(), 0).await, acked);
        log.close().await.unwrap();
        assert_acknowledged_kept(&acked, &recovered(dir.path()).await, &[(base, bytes)]);
    });
}

#[test]
fn a_failed_fdatasync_is_never_retried_and_the_partition_waits_for_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::new();
    run(async {
        let log = open_with_faults(dir.path(), &faults).await;
        let acked = acknowledged(&log, 0..3).await;
        faults.arm(IoOperation::Sync, Fault::Errno(libc::EIO), Some(1));
        let syncs_before = faults.attempts(IoOperation::Sync);
        let (base, bytes, mut durable) = append(&log, 3, 200);
        let failed = outcome_within(&mut durable, WAIT).await.expect("the failed sync is reported");
        assert!(failed.as_ref().is_err_and(offline), "{failed:?}");
        // The written bytes are not synced again and carried on with: the partition is offline.
        glommio::timer::sleep(Duration::from_millis(1_200)).await;
        assert_eq!(faults.attempts(IoOperation::Sync), syncs_before + 1, "the failed fdatasync was retried");
        let refused = log.append(&tp(), batch_for(4, 4, 200), 2_000).err().expect("appends are refused");
        assert_eq!(refused.kafka_error_code(), 56);
        assert_eq!(log.offsets(&tp()).unwrap().high_watermark, acked.len() as i64 * 4, "nothing unsynced is visible");
        assert_eq!(read_all(&log, &tp(), 0).await, acked);
        log.close().await.unwrap();
        // Recovery (the restart) validates what is on disk; the log takes appends again.
        assert_acknowledged_kept(&acked, &recovered(dir.path()).await, &[(base, bytes)]);
        let log = open_log(dir.path(), 64 << 20).await;
        log.open_partition(&tp(), small_extents()).await.unwrap();
        log.append(&tp(), batch_for(9, 4, 200), 3_000).unwrap().durable.await.unwrap();
        log.close().await.unwrap();
    });
}

/// ENOSPC on `operation` until cleared: appends already made wait (not acknowledged, not
/// failed), new ones are refused with KAFKA_STORAGE_ERROR, durable data stays readable; once
/// the fault is cleared (room again) the waiting appends become durable and new ones are taken,
/// with no restart.
fn out_of_space_holds_writes_back_until_room_returns(operation: IoOperation, acked_first: u64) {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::new();
    run(async {
        let log = open_with_faults(dir.path(), &faults).await;
        let mut acked = acknowledged(&log, 0..acked_first).await;
        faults.arm(operation, Fault::Errno(libc::ENOSPC), None);
        // Large enough to pass the preallocated extent when the fault is on fallocate.
        let value_bytes = if operation == IoOperation::Allocate { 30 << 10 } else { 200 };
        let (base, bytes, mut durable) = append(&log, 100, value_bytes);
        assert!(
            outcome_within(&mut durable, Duration::from_millis(1_500)).await.is_none(),
            "acknowledged without room"
        );
        assert!(faults.injected(operation) >= 2, "the write is retried while there is no room");
        let refused = log.append(&tp(), batch_for(101, 4, 200), 2_000).err().expect("appends are refused");
        assert_eq!(refused.kafka_error_code(), 56, "KAFKA_STORAGE_ERROR: {refused}");
        assert!(refused.to_string().contains("room"), "{refused}");
        assert_eq!(read_all(&log, &tp(), 0).await, acked, "durable data stays readable");

        faults.clear();
        outcome_within(&mut durable, WAIT).await.expect("written once there is room").expect("durable");
        acked.push((base, bytes));
        acked.extend(acknowledged(&log, 102..105).await);
        assert_eq!(read_all(&log, &tp(), 0).await, acked);
        log.close().await.unwrap();
        assert_eq!(recovered(dir.path()).await, acked);
    });
}

#[test]
fn enospc_on_writes_holds_them_back_until_room_returns() {
    out_of_space_holds_writes_back_until_room_returns(IoOperation::Write, 5);
}

#[test]
fn enospc_on_preallocation_holds_writes_back_until_room_returns() {
    out_of_space_holds_writes_back_until_room_returns(IoOperation::Allocate, 5);
}

#[test]
fn enospc_creating_the_first_segment_file_holds_writes_back_until_room_returns() {
    out_of_space_holds_writes_back_until_room_returns(IoOperation::Create, 0);
}

#[test]
fn short_writes_are_completed_by_a_retry_and_never_corrupt_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::new();
    run(async {
        let log = open_with_faults(dir.path(), &faults).await;
        let mut acked = acknowledged(&log, 0..3).await;
        faults.arm(IoOperation::Write, Fault::ShortWrite, Some(3));
        // Batches of several blocks, so that half a write is a real partial write.
        let appended: Vec<_> = (10..14).map(|seed| append(&log, seed, 9_000)).collect();
        for (base, bytes, mut durable) in appended {
            outcome_within(&mut durable, WAIT).await.expect("completed by a retry").expect("durable");
            acked.push((base, bytes));
        }
        assert_eq!(faults.injected(IoOperation::Write), 3);
        assert_eq!(read_all(&log, &tp(), 0).await, acked);
        log.close().await.unwrap();
        assert_eq!(recovered(dir.path()).await, acked);
    });
}

#[test]
fn a_shard_stopping_while_out_of_space_keeps_everything_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::new();
    run(async {
        let log = open_with_faults(dir.path(), &faults).await;
        let acked = acknowledged(&log, 0..4).await;
        faults.arm(IoOperation::Write, Fault::Errno(libc::ENOSPC), None);
        let (base, bytes, mut durable) = append(&log, 50, 200);
        assert!(outcome_within(&mut durable, Duration::from_millis(700)).await.is_none());
        // Stopping gives up on the unwritten batch (never acknowledged) instead of waiting for room.
        glommio::timer::timeout(WAIT, async { Ok(log.close().await) }).await.expect("close within the wait").ok();
        let outcome = outcome_within(&mut durable, WAIT).await.expect("the waiting append is answered");
        assert!(outcome.is_err(), "acknowledged without a write: {outcome:?}");
        assert_acknowledged_kept(&acked, &recovered(dir.path()).await, &[(base, bytes)]);
    });
}

#[test]
fn another_partition_keeps_writing_while_one_is_held_back_for_room() {
    // A second partition on the same shard keeps taking appends while the first is held back:
    // lack of space is per partition write, and the other may have room (its extent).
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::new();
    run(async {
        let log = open_with_faults(dir.path(), &faults).await;
        let other = corelog_engine::log::TopicPartition::new("other", 0);
        log.open_partition(&other, LogConfig::default()).await.unwrap();
        acknowledged(&log, 0..2).await;
        faults.arm(IoOperation::Write, Fault::Errno(libc::ENOSPC), Some(1));
        let (_, _, mut held) = append(&log, 7, 200);
        assert!(outcome_within(&mut held, Duration::from_millis(100)).await.is_none());
        // The fault was used up by the first partition: the other one writes.
        let mut durable = log.append(&other, batch_for(1, 4, 200), 1_000).unwrap().durable;
        outcome_within(&mut durable, WAIT).await.expect("the other partition writes").unwrap();
        outcome_within(&mut held, WAIT).await.expect("retried").expect("durable");
        log.close().await.unwrap();
    });
}

#[test]
fn a_write_behind_a_failed_write_gives_up_and_both_are_retried_in_order() {
    // Two writes of one segment in flight: the first fails for lack of room. The second, which
    // rewrites the block the first ends in, must never land without it: it gives up, nothing
    // is acknowledged, and once there is room both go out again, in order.
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::new();
    run(async {
        let log = open_with_faults(dir.path(), &faults).await;
        let mut acked = acknowledged(&log, 0..3).await;
        // The first write's first chunk is held 200 ms (a slow device), then fails.
        faults.arm(IoOperation::Write, Fault::Delay { ms: 200, errno: Some(libc::ENOSPC) }, Some(1));
        // Batches of ~1 MiB (the size limit): the flusher plans the first write before the
        // next two are appended, and those, a write chunk's worth or more (1 MiB at the default
        // shape), make a second write planned while the first is in flight.
        let first = append(&log, 20, 255 << 10);
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let mut appended = vec![first, append(&log, 21, 255 << 10), append(&log, 22, 255 << 10)];
        glommio::timer::sleep(Duration::from_millis(20)).await;
        assert!(log.debug_state().contains("in_flight 2"), "two writes in flight:\n{}", log.debug_state());
        // The first write fails at 200 ms; the retry comes 500 ms after that.
        glommio::timer::sleep(Duration::from_millis(400)).await;
        for (_, _, durable) in appended.iter_mut() {
            assert!(outcome_within(durable, Duration::from_millis(1)).await.is_none(), "acknowledged without a write");
        }
        assert_eq!(faults.injected(IoOperation::Write), 1, "only the first write's first chunk failed");
        assert!(log.append(&tp(), batch_for(23, 4, 200), 2_000).is_err(), "appends are refused while held back");
        for (base, bytes, mut durable) in appended {
            outcome_within(&mut durable, WAIT).await.expect("written once there is room").expect("durable");
            acked.push((base, bytes));
        }
        acked.extend(acknowledged(&log, 24..26).await);
        assert_eq!(read_all(&log, &tp(), 0).await, acked);
        log.close().await.unwrap();
        assert_eq!(recovered(dir.path()).await, acked);
    });
}

/// A partition deleted and created again under the same name while a sync of its old segment
/// file is held up (a slow device): when that sync finally completes, it must not count for
/// the new partition's segment of the same base offset. Otherwise the new partition's append
/// is acknowledged on the strength of a sync of another (deleted) file — or, as here, where
/// the old file had more bytes than the new one, the shard stops on "synced past the written
/// bytes".
#[test]
fn a_sync_of_a_deleted_partition_never_counts_for_one_created_again_under_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::new();
    run(async {
        let log = open_with_faults(dir.path(), &faults).await;
        acknowledged(&log, 0..3).await;
        // The old partition's next sync is held 600 ms, over more bytes than the new
        // partition will have written.
        faults.arm(IoOperation::Sync, Fault::Delay { ms: 600, errno: None }, Some(1));
        let (_, _, old) = append(&log, 3, 2_000);
        glommio::timer::sleep(Duration::from_millis(50)).await;
        assert_eq!(faults.injected(IoOperation::Sync), 1, "the old partition's sync is held");
        log.delete_partition(&tp()).await.unwrap();
        assert!(old.await.is_err(), "an append of a deleted partition is not acknowledged");
        log.open_partition(&tp(), small_extents()).await.unwrap();
        // The new partition's own sync is held longer than the old one.
        faults.arm(IoOperation::Sync, Fault::Delay { ms: 1_500, errno: None }, Some(1));
        let (base, bytes, mut durable) = append(&log, 10, 100);
        assert_eq!(base, 0, "a new partition starts at offset 0");
        let early = outcome_within(&mut durable, Duration::from_millis(900)).await;
        assert!(early.is_none(), "acknowledged by the deleted partition's sync: {early:?}");
        let done = outcome_within(&mut durable, WAIT).await.expect("acknowledged after its own sync");
        assert!(done.is_ok(), "{done:?}");
        assert_eq!(faults.injected(IoOperation::Sync), 2);
        log.close().await.unwrap();
        assert_eq!(recovered(dir.path()).await, vec![(base, bytes)]);
    });
}
