//! The shard journal: appends under `flush = always` are acknowledged once their journal
//! record is synced, while segment files are synced only at checkpoints. What must hold:
//! after a crash that loses any unsynced segment write (or the newest segment file itself),
//! replay puts every acknowledged batch back, bit for bit; the ring wraps through checkpoints
//! without losing anything; a failed journal write falls back to syncing segment files;
//! records of a deleted partition never reach a partition created later under its name; and
//! the segment writes waiting behind the journal stay within their bound.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use corelog_engine::batch;
use corelog_engine::faults::{Fault, FaultPlan, IoOperation};
use corelog_engine::log::journal;
use corelog_engine::log::{LogConfig, ShardLog, ShardLogConfig, TopicPartition, WriteShape};

type Batches = Vec<(i64, Vec<u8>)>;

fn partition(index: i32) -> TopicPartition {
    TopicPartition::new("journaled", index)
}

/// Appends `rounds` batches to each partition, all of a round in flight together (so one
/// wave carries several partitions), awaiting each round's acknowledgements. Returns the
/// acknowledged batches per partition, as stored.
async fn append_rounds(log: &ShardLog, partitions: &[TopicPartition], rounds: u64, value_bytes: usize) -> Vec<Batches> {
    let mut acked: Vec<Batches> = vec![Vec::new(); partitions.len()];
    for round in 0..rounds {
        let mut waits = Vec::new();
        for (index, name) in partitions.iter().enumerate() {
            let seed = round * 100 + index as u64;
            let appended = log.append(name, batch_for(seed, 3, value_bytes), 0).unwrap();
            let mut stored = batch_for(seed, 3, value_bytes).to_vec();
            batch::stamp(&mut stored, appended.base_offset, 0);
            acked[index].push((appended.base_offset, stored));
            waits.push(appended.durable);
        }
        for wait in waits {
            wait.await.unwrap();
        }
    }
    acked
}

/// Appends one batch of `records` records to each partition, all in flight together, and
/// returns their durability futures.
fn append_one_each(
    log: &ShardLog,
    partitions: &[TopicPartition],
    round: u64,
    records: i32,
    value_bytes: usize,
) -> Vec<corelog_engine::log::Durable> {
    let append = |(i, name): (usize, &TopicPartition)| {
        log.append(name, batch_for(round * 100 + i as u64, records, value_bytes), 0).unwrap().durable
    };
    partitions.iter().enumerate().map(append).collect()
}

/// Opens the partitions on a fresh log (journal of `journal_bytes`), appends and "crashes"
/// (the executor ends without closing the log). Also appends a few batches never awaited.
fn write_and_crash(
    dir: &Path,
    config: &LogConfig,
    journal_bytes: u64,
    rounds: u64,
    value_bytes: usize,
) -> Vec<Batches> {
    run(async {
        let log = open_log_with_journal(dir, 64 << 20, journal_bytes).await;
        let names: Vec<TopicPartition> = (0..3).map(partition).collect();
        for name in &names {
            log.open_partition(name, config.clone()).await.unwrap();
        }
        let acked = append_rounds(&log, &names, rounds, value_bytes).await;
        let stats = log.stats();
        assert!(stats.journal_records > 0, "{stats:?}");
        for name in &names {
            let _ = log.append(name, batch_for(9_999, 3, value_bytes), 0).unwrap();
        }
        acked
    })
}

/// Recovers and returns what each partition serves.
fn recover(dir: &Path, config: &LogConfig) -> Vec<Batches> {
    run(async {
        let log = open_log(dir, 64 << 20).await;
        let mut all = Vec::new();
        for index in 0..3 {
            log.open_partition(&partition(index), config.clone()).await.unwrap();
            all.push(read_all(&log, &partition(index), 0).await);
        }
        // The log keeps working after recovery.
        log.append(&partition(0), batch_for(7_777, 1, 10), 0).unwrap().durable.await.unwrap();
        log.close().await.unwrap();
        all
    })
}

fn assert_acknowledged_kept(acked: &[Batches], recovered: &[Batches]) {
    for (index, (acked, recovered)) in acked.iter().zip(recovered).enumerate() {
        assert!(
            recovered.len() >= acked.len(),
            "partition {index} lost acknowledged batches: {} of {}",
            recovered.len(),
            acked.len()
        );
        assert_eq!(&recovered[..acked.len()], &acked[..], "partition {index}: an acknowledged batch changed");
    }
}

#[test]
fn replay_restores_every_acknowledged_batch_when_unsynced_segment_writes_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments();
    let acked = write_and_crash(dir.path(), &config, 16 << 20, 40, 150);
    // The device loses the unsynced segment writes: all of partition 0's last segment, part
    // of a batch of partition 1's, and partition 2's newest segment file altogether.
    let last = |index: i32| segment_files(dir.path(), &partition(index), "log").pop().unwrap();
    std::fs::OpenOptions::new().write(true).open(last(0)).unwrap().set_len(0).unwrap();
    let cut = std::fs::metadata(last(1)).unwrap().len() / 2 + 7;
    std::fs::OpenOptions::new().write(true).open(last(1)).unwrap().set_len(cut).unwrap();
    std::fs::remove_file(last(2)).unwrap();

    let report = journal::replay(dir.path(), &journal::journal_path(dir.path(), 0)).unwrap();
    assert!(report.batches_restored > 0, "{report:?}");
    assert_acknowledged_kept(&acked, &recover(dir.path(), &config));
    // Replayed once: the journal starts empty after it.
    let again = journal::replay(dir.path(), &journal::journal_path(dir.path(), 0)).unwrap();
    assert_eq!(again.records, 0, "{again:?}");
}

#[test]
fn the_ring_wraps_through_checkpoints_and_a_crash_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 256 << 10, ..small_segments() };
    // About 6 MiB through a 1 MiB ring: checkpoints every half ring, several laps.
    let acked = run(async {
        let log = open_log_with_journal(dir.path(), 64 << 20, 1 << 20).await;
        let names: Vec<TopicPartition> = (0..3).map(partition).collect();
        for name in &names {
            log.open_partition(name, config.clone()).await.unwrap();
        }
        let acked = append_rounds(&log, &names, 250, 8 << 10).await;
        let stats = log.stats();
        assert!(stats.journal_checkpoints >= 4, "{stats:?}");
        assert!(stats.journal_bytes > 4 << 20, "{stats:?}");
        acked
    });
    let kept = recover(dir.path(), &config);
    assert_acknowledged_kept(&acked, &kept);
}

#[test]
fn a_failed_journal_write_falls_back_to_syncing_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::new();
    let config = small_segments();
    let acked = run(async {
        let log_config =
            ShardLogConfig { faults: Some(Arc::clone(&faults)), ..ShardLogConfig::new(dir.path(), 64 << 20) };
        let log = ShardLog::open(log_config).await.unwrap();
        let names: Vec<TopicPartition> = (0..3).map(partition).collect();
        for name in &names {
            log.open_partition(name, config.clone()).await.unwrap();
        }
        let mut acked = append_rounds(&log, &names, 5, 150).await;
        faults.arm(IoOperation::Journal, Fault::Errno(libc::EIO), Some(1));
        let syncs_before = log.stats().syncs;
        let more = glommio::timer::timeout(std::time::Duration::from_secs(20), async {
            Ok(append_rounds(&log, &names, 10, 150).await)
        })
        .await
        .expect("appends are acknowledged after the journal failed (segment files synced instead)");
        for (batches, extra) in acked.iter_mut().zip(more) {
            batches.extend(extra);
        }
        assert_eq!(faults.injected(IoOperation::Journal), 1);
        let stats = log.stats();
        assert_eq!(stats.sync_errors, 1, "{stats:?}");
        assert!(stats.syncs >= syncs_before + 10 * 3, "every partition syncs its own segments now: {stats:?}");
        for name in &names {
            assert_eq!(log.offsets(name).unwrap().high_watermark, 45, "the partitions stay online");
        }
        acked
    });
    assert_acknowledged_kept(&acked, &recover(dir.path(), &config));
}

#[test]
fn records_of_a_deleted_partition_never_reach_one_created_later_under_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments();
    let acked = run(async {
        let log = open_log(dir.path(), 64 << 20).await;
        let name = partition(0);
        log.open_partition(&name, config.clone()).await.unwrap();
        let _old = append_rounds(&log, std::slice::from_ref(&name), 10, 150).await;
        log.delete_partition(&name).await.unwrap();
        log.open_partition(&name, config.clone()).await.unwrap();
        // Fewer and different batches: replaying the old records would add some.
        append_rounds(&log, std::slice::from_ref(&name), 4, 40).await
    });
    // Lose the new incarnation's unsynced writes, then recover: only its own batches return.
    let segment = segment_files(dir.path(), &partition(0), "log").pop().unwrap();
    std::fs::OpenOptions::new().write(true).open(segment).unwrap().set_len(0).unwrap();
    let recovered = run(async {
        let log = open_log(dir.path(), 64 << 20).await;
        log.open_partition(&partition(0), config.clone()).await.unwrap();
        let batches = read_all(&log, &partition(0), 0).await;
        log.close().await.unwrap();
        batches
    });
    assert_eq!(recovered, acked[0]);
}

#[test]
fn a_clean_stop_leaves_the_journal_empty() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments();
    run(async {
        let log = open_log(dir.path(), 64 << 20).await;
        log.open_partition(&partition(0), config.clone()).await.unwrap();
        append_rounds(&log, &[partition(0)], 20, 150).await;
        log.close().await.unwrap();
    });
    let report = journal::replay(dir.path(), &journal::journal_path(dir.path(), 0)).unwrap();
    assert_eq!(report, journal::ReplayReport::default());
}

#[test]
fn batches_behind_the_journal_are_served_before_their_segment_write() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        // No cache budget: the cache still keeps every batch not yet written to its segment.
        let log = open_log(dir.path(), 0).await;
        log.open_partition(&partition(0), small_segments()).await.unwrap();
        let starts = [0, 10_000, 50_000, 20_000];
        let mut expected = Vec::new();
        for (k, start) in starts.iter().enumerate() {
            let stored = batch::build_spread_test_batch(10, &[k as u8; 50], *start, 100);
            let appended = log.append(&partition(0), bytes::BytesMut::from(&stored[..]), 0).unwrap();
            appended.durable.await.unwrap();
            let mut stamped = stored.clone();
            batch::stamp(&mut stamped, appended.base_offset, 0);
            expected.push((appended.base_offset, stamped));
        }
        assert_eq!(log.stats().writes, 0, "small segment writes wait behind the journal: {:?}", log.stats());
        assert_eq!(log.offsets(&partition(0)).unwrap().high_watermark, 40);
        assert_eq!(read_all(&log, &partition(0), 0).await, expected);
        let found = |stamp: Option<corelog_engine::records::RecordStamp>| stamp.map(|s| (s.offset, s.timestamp));
        assert_eq!(found(log.offset_for_timestamp(&partition(0), 10_250).await.unwrap()), Some((13, 10_300)));
        assert_eq!(found(log.max_timestamp_record(&partition(0)).await.unwrap()), Some((29, 50_900)));
        // Once written, the same batches come from the segment file.
        log.settle().await;
        assert!(log.stats().writes > 0);
        let from_file = log.read(&partition(0), 0, 1 << 20).await.unwrap();
        assert!(matches!(from_file.data, corelog_engine::log::ReadData::File(_)));
        assert_eq!(read_all(&log, &partition(0), 0).await, expected);
        assert_eq!(found(log.offset_for_timestamp(&partition(0), 10_250).await.unwrap()), Some((13, 10_300)));
        log.close().await.unwrap();
    });
}

#[test]
fn a_wave_larger_than_one_journal_record_acknowledges_every_partition() {
    // A 1 MiB ring takes records of at most 256 KiB: 40 partitions with a 10 KiB batch each,
    // appended at once, need two records; the partitions left out of the first go in the next.
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log_with_journal(dir.path(), 64 << 20, 1 << 20).await;
        let names: Vec<TopicPartition> = (0..40).map(partition).collect();
        for name in &names {
            log.open_partition(name, small_segments()).await.unwrap();
        }
        for round in 0..3u64 {
            let waits = append_one_each(&log, &names, round, 10, 1000);
            let all = async {
                for wait in waits {
                    wait.await.unwrap();
                }
                Ok(())
            };
            glommio::timer::timeout(std::time::Duration::from_secs(10), all)
                .await
                .expect("every partition's append is acknowledged");
        }
        assert!(log.stats().journal_records >= 3, "the journal took the waves: {:?}", log.stats());
        log.close().await.unwrap();
    });
}

#[test]
fn deferred_segment_writes_go_out_past_their_bound_without_another_append() {
    // Segment writes of journaled batches wait behind the journal, up to a bound of 8 write
    // chunks for the shard; past it they go out, whether or not more appends come (the
    // memory they hold and the burst a checkpoint writes stay bounded).
    let dir = tempfile::tempdir().unwrap();
    run(async {
        // Chunks of 64 KiB: a bound of 512 KiB; a partition bringing 8 KiB or more to a wave
        // would sync its own segment instead (not journaled), so each brings one 4 KiB batch.
        let write_shape = WriteShape { chunk_bytes: 64 << 10, ..WriteShape::default() };
        let config = ShardLogConfig { write_shape, ..ShardLogConfig::new(dir.path().to_path_buf(), 64 << 20) };
        let log = ShardLog::open(config).await.unwrap();
        let names: Vec<TopicPartition> = (0..40).map(partition).collect();
        let one_segment = LogConfig { segment_bytes: 64 << 20, retention_ms: None, ..LogConfig::default() };
        for name in &names {
            log.open_partition(name, one_segment.clone()).await.unwrap();
        }
        let mut written_before_bound = None;
        for round in 0..4u64 {
            // 40 × 4 KiB per round: 160 KiB deferred after each, past the bound after the 4th.
            for wait in append_one_each(&log, &names, round, 1, 4000) {
                wait.await.unwrap();
            }
            if round == 2 {
                written_before_bound = Some(log.stats().writes);
            }
        }
        assert_eq!(written_before_bound, Some(0), "below the bound, segment writes wait behind the journal");
        assert!(log.stats().journal_records >= 4, "the rounds went through the journal: {:?}", log.stats());
        // No further append: the writes past the bound go out anyway.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while log.stats().writes == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "deferred writes past their bound still wait for an append after 5 s: {:?}",
                log.stats()
            );
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        log.close().await.unwrap();
    });
}
