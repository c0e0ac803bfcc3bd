//! Crash consistency: after torn writes, lost unsynced writes, garbage tails and missing or
//! corrupt indexes, recovery keeps every batch whose append completed under `flush = always`,
//! bit for bit and in order, and never serves anything after a corrupt batch.
//!
//! A "crash" ends the executor without closing the log (no final flush, no index files for
//! the active segment); the test then damages the files the way a power loss could.
//!
//! These tests hold the segment files' own recovery to account, so the shard journal is off
//! (with it, replay would repair a damaged batch from its journal copy; `journal.rs` tests
//! that).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::*;
use corelog_engine::batch;
use corelog_engine::log::{LogConfig, ScanStop};

type Batches = Vec<(i64, Vec<u8>)>;

/// Appends `count` batches, each awaited to durability, then "crashes". Returns the acked
/// batches as stored (offsets stamped).
fn write_and_crash(dir: &Path, config: &LogConfig, count: u64, unacked_extra: u64) -> Batches {
    run(async {
        let log = open_log_with_journal(dir, 1 << 20, 0).await;
        log.open_partition(&tp(), config.clone()).await.unwrap();
        let mut acked = Vec::new();
        for seed in 0..count {
            let bytes = batch_for(seed, 3, 150);
            let appended = log.append(&tp(), bytes.clone(), 0).unwrap();
            appended.durable.await.unwrap();
            let mut stored = bytes.to_vec();
            batch::stamp(&mut stored, appended.base_offset, 0);
            acked.push((appended.base_offset, stored));
        }
        for seed in 0..unacked_extra {
            // appended but never awaited: may or may not survive
            let _ = log.append(&tp(), batch_for(1000 + seed, 3, 150), 0).unwrap();
        }
        acked
    })
}

/// Recovers and returns everything visible plus the recovery report.
fn recover(dir: &Path, config: &LogConfig) -> (Batches, corelog_engine::log::RecoveryReport, i64) {
    run(async {
        let log = open_log_with_journal(dir, 1 << 20, 0).await;
        let report = log.open_partition(&tp(), config.clone()).await.unwrap();
        let all = read_all(&log, &tp(), 0).await;
        // the log keeps working after recovery
        let appended = log.append(&tp(), batch_for(7777, 1, 10), 0).unwrap();
        appended.durable.await.unwrap();
        let end = appended.base_offset;
        log.close().await.unwrap();
        (all, report, end)
    })
}

/// Byte length of the valid batches at the start of a segment file.
fn valid_data_len(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    let mut at = 0;
    while let Ok(header) = batch::validate_prefix(&bytes[at..]) {
        at += header.size_bytes;
    }
    at
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir, &tp(), "log").pop().unwrap()
}

fn overwrite_at(path: &Path, position: u64, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(position)).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

fn assert_prefix_kept(acked: &Batches, recovered: &Batches) {
    assert!(
        recovered.len() >= acked.len(),
        "lost acknowledged batches: {} of {}",
        acked.len() - recovered.len().min(acked.len()),
        acked.len()
    );
    assert_eq!(&recovered[..acked.len()], &acked[..], "acknowledged batches differ after recovery");
    for pair in recovered.windows(2) {
        assert_eq!(pair[1].0, batch::validate_prefix(&pair[0].1).unwrap().next_offset(), "offsets not contiguous");
    }
}

#[test]
fn a_torn_last_write_is_truncated_and_everything_acknowledged_stays() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments();
    let acked = write_and_crash(dir.path(), &config, 30, 0);
    let segment = last_segment(dir.path());
    let end = valid_data_len(&segment);
    let torn = batch_for(99, 3, 150);
    overwrite_at(&segment, end as u64, &torn[..torn.len() / 2]);
    let (recovered, report, next) = recover(dir.path(), &config);
    assert_eq!(recovered, acked);
    assert_eq!(report.stop, Some(ScanStop::TornTail));
    assert_eq!(next, 90, "appends continue right after the last good batch");
}

#[test]
fn a_garbage_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments();
    let acked = write_and_crash(dir.path(), &config, 25, 0);
    let segment = last_segment(dir.path());
    let end = valid_data_len(&segment);
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    overwrite_at(&segment, end as u64, &garbage);
    let (recovered, report, _) = recover(dir.path(), &config);
    assert_eq!(recovered, acked);
    assert!(report.bytes_truncated > 0);
}

#[test]
fn lost_unsynced_writes_never_take_acknowledged_batches_with_them() {
    for cut in [0usize, 1, 61, 200, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let config = small_segments();
        let acked = write_and_crash(dir.path(), &config, 20, 5);
        // The device loses whatever came after the acknowledged data, except `cut` bytes
        // of a partial write (the unacknowledged batches may have reached the file).
        let acked_in_last: usize = {
            let segment = last_segment(dir.path());
            let base: i64 = segment.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            acked.iter().filter(|(o, _)| *o >= base).map(|(_, b)| b.len()).sum()
        };
        let segment = last_segment(dir.path());
        let len = std::fs::metadata(&segment).unwrap().len() as usize;
        let keep = (acked_in_last + cut).min(len);
        let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
        file.set_len(keep as u64).unwrap();
        let (recovered, _, _) = recover(dir.path(), &config);
        assert_prefix_kept(&acked, &recovered);
    }
}

#[test]
fn missing_or_corrupt_indexes_are_rebuilt_by_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments();
    let acked = run(async {
        let log = open_log_with_journal(dir.path(), 1 << 20, 0).await;
        log.open_partition(&tp(), config.clone()).await.unwrap();
        let mut last = None;
        for seed in 0..60 {
            last = Some(log.append(&tp(), batch_for(seed, 3, 150), 0).unwrap().durable);
        }
        last.unwrap().await.unwrap();
        let all = read_all(&log, &tp(), 0).await;
        log.close().await.unwrap();
        all
    });
    let indexes = segment_files(dir.path(), &tp(), "index");
    assert!(indexes.len() >= 4);
    std::fs::remove_file(&indexes[0]).unwrap();
    overwrite_at(&indexes[1], 20, &[0xee; 4]);
    let timeindexes = segment_files(dir.path(), &tp(), "timeindex");
    overwrite_at(&timeindexes[2], 10, &[0x01]);
    let (recovered, report, _) = recover(dir.path(), &config);
    assert_eq!(recovered, acked);
    assert_eq!(report.segments_scanned, 3, "{report:?}");
    assert_eq!(report.stop, None);
    // and the rebuilt indexes are trusted on the next start
    let (_, report, _) = recover(dir.path(), &config);
    assert_eq!(report.segments_scanned, 0, "{report:?}");
}

#[test]
fn nothing_after_a_corrupt_batch_is_ever_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments();
    let acked = write_and_crash(dir.path(), &config, 60, 0);
    let segments = segment_files(dir.path(), &tp(), "log");
    assert!(segments.len() >= 4);
    // Corrupt the second batch of the second segment, and make start-up scan that segment.
    let victim = &segments[1];
    let victim_base: i64 = victim.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let first = std::fs::read(victim).unwrap();
    let first_len = batch::validate_prefix(&first).unwrap().size_bytes;
    overwrite_at(victim, (first_len + 100) as u64, &[0xab, 0xcd]);
    let _ = std::fs::remove_file(victim.with_extension("index"));
    let (recovered, report, next) = recover(dir.path(), &config);
    assert!(matches!(report.stop, Some(ScanStop::Corrupt(_))), "{report:?}");
    let kept: Batches = acked.iter().filter(|(o, _)| *o <= victim_base).cloned().collect();
    assert_eq!(recovered, kept, "only the batches before the corrupt one remain");
    assert!(report.segments_dropped >= 2);
    assert_eq!(next, victim_base + 3);
    assert_eq!(segment_files(dir.path(), &tp(), "log").len(), 2);
}

#[test]
fn a_damaged_base_offset_is_caught_although_the_crc_does_not_cover_it() {
    // Found by the recovery fuzzer: a base offset changed on disk (a gap) was accepted.
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 64 << 10, ..small_segments() };
    let acked = write_and_crash(dir.path(), &config, 6, 0);
    let segment = last_segment(dir.path());
    let bytes = std::fs::read(&segment).unwrap();
    let mut at = 0;
    for _ in 0..4 {
        at += batch::validate_prefix(&bytes[at..]).unwrap().size_bytes;
    }
    // The fifth batch claims offset 28 instead of 12; its CRC still matches.
    overwrite_at(&segment, at as u64 + 7, &[28]);
    let (recovered, report, next) = recover(dir.path(), &config);
    assert_eq!(report.stop, Some(ScanStop::OffsetsNotContiguous), "{report:?}");
    assert_eq!(recovered, acked[..4].to_vec(), "only the batches before the damaged one remain");
    assert_eq!(next, 12);
}

#[test]
fn a_damaged_leader_epoch_is_caught_although_the_crc_does_not_cover_it() {
    // Found by the recovery fuzzer: a partition leader epoch changed on disk was served.
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 64 << 10, ..small_segments() };
    let acked = write_and_crash(dir.path(), &config, 6, 0);
    let segment = last_segment(dir.path());
    let bytes = std::fs::read(&segment).unwrap();
    let first = batch::validate_prefix(&bytes).unwrap().size_bytes;
    let second = batch::validate_prefix(&bytes[first..]).unwrap().size_bytes;
    // The third batch's epoch (bytes 12..16) becomes 1; its CRC still matches.
    overwrite_at(&segment, (first + second + 15) as u64, &[1]);
    let (recovered, report, next) = recover(dir.path(), &config);
    assert!(matches!(report.stop, Some(ScanStop::Corrupt(ref m)) if m.contains("epoch")), "{report:?}");
    assert_eq!(recovered, acked[..2].to_vec(), "only the batches before the damaged one remain");
    assert_eq!(next, 6);
}

#[test]
fn a_crash_right_after_a_roll_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Batches are ~0.5 KiB: 2 KiB segments roll every few batches.
    let config = LogConfig { segment_bytes: 2048, ..small_segments() };
    let acked = write_and_crash(dir.path(), &config, 12, 3);
    let (recovered, report, _) = recover(dir.path(), &config);
    assert_prefix_kept(&acked, &recovered);
    // The active segment may end in a torn write or the zero padding of its last block;
    // nothing may look corrupt.
    assert!(matches!(report.stop, None | Some(ScanStop::TornTail)), "{report:?}");
}
