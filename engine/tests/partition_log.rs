//! The partition log through its public API: append, read, roll, retention, restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use bytes::BytesMut;
use common::*;
use corelog_engine::batch;
use corelog_engine::batch::BatchError;
use corelog_engine::error::kafka_error;
use corelog_engine::log::{FlushPolicy, LogConfig, ReadData, ShardLog, ShardLogConfig, TopicPartition, WriteShape};
use corelog_engine::records::RecordStamp;
use corelog_engine::{AppendError, StorageError};

#[test]
fn appends_get_consecutive_offsets_and_read_back_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 64 << 20).await;
        log.open_partition(&tp(), default_config()).await.unwrap();
        let mut expected = Vec::new();
        for seed in 0..20 {
            let appended = log.append(&tp(), batch_for(seed, 5, 100), 1_000).unwrap();
            assert_eq!(appended.base_offset, seed as i64 * 5);
            assert_eq!(appended.last_offset, seed as i64 * 5 + 4);
            appended.durable.await.unwrap();
            let mut stamped = batch_for(seed, 5, 100).to_vec();
            corelog_engine::batch::stamp(&mut stamped, appended.base_offset, 0);
            expected.push((appended.base_offset, stamped));
        }
        let offsets = log.offsets(&tp()).unwrap();
        assert_eq!((offsets.log_start_offset, offsets.high_watermark, offsets.log_end_offset), (0, 100, 100));
        assert_eq!(read_all(&log, &tp(), 0).await, expected);
        assert_eq!(read_all(&log, &tp(), 52).await, expected[10..].to_vec());
        let stats = log.stats();
        assert!(stats.syncs >= 1 && stats.syncs <= 20, "{stats:?}");
        log.close().await.unwrap();
    });
}

#[test]
fn durable_resolves_only_after_an_fdatasync_covers_the_append() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 64 << 20).await;
        log.open_partition(&tp(), default_config()).await.unwrap();
        let syncs_before = log.stats().syncs;
        let appended = log.append(&tp(), batch_for(1, 1, 10), 0).unwrap();
        // Not yet visible: nothing is synced until the flusher's wave runs.
        assert_eq!(log.offsets(&tp()).unwrap().high_watermark, 0);
        appended.durable.await.unwrap();
        assert!(log.stats().syncs > syncs_before);
        assert_eq!(log.offsets(&tp()).unwrap().high_watermark, 1);
        log.close().await.unwrap();
    });
}

#[test]
fn group_commit_covers_many_partitions_with_few_waves() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 64 << 20).await;
        let names: Vec<TopicPartition> = (0..20).map(|p| TopicPartition::new("many", p)).collect();
        for name in &names {
            log.open_partition(name, default_config()).await.unwrap();
        }
        let mut waits = Vec::new();
        for round in 0..5 {
            for name in &names {
                waits.push(log.append(name, batch_for(round, 2, 64), 0).unwrap().durable);
            }
        }
        for wait in waits {
            wait.await.unwrap();
        }
        let stats = log.stats();
        assert_eq!(stats.appends, 100);
        assert!(stats.waves < 10, "100 appends queued at once took {} waves", stats.waves);
        assert!(stats.wave_appends_max >= 50, "{stats:?}");
        log.close().await.unwrap();
    });
}

#[test]
fn bad_batches_are_refused_with_kafka_codes_and_leave_the_log_untouched() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        let config = LogConfig { max_message_bytes: 2000, ..default_config() };
        log.open_partition(&tp(), config).await.unwrap();
        let mut corrupt = batch_for(1, 2, 50);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let err = log.append(&tp(), corrupt, 0).err().unwrap();
        assert!(matches!(err, AppendError::Batch(BatchError::CrcMismatch { .. })));
        assert_eq!(err.kafka_error_code(), 2);
        let err = log.append(&tp(), batch_for(1, 10, 500), 0).err().unwrap();
        assert_eq!(err.kafka_error_code(), 10);
        let err = log.append(&TopicPartition::new("nope", 0), batch_for(1, 1, 1), 0).err().unwrap();
        assert_eq!(err.kafka_error_code(), kafka_error::UNKNOWN_TOPIC_OR_PARTITION);
        assert_eq!(log.offsets(&tp()).unwrap().log_end_offset, 0);
        let appended = log.append(&tp(), batch_for(2, 1, 10), 0).unwrap();
        assert_eq!(appended.base_offset, 0);
        appended.durable.await.unwrap();
        log.close().await.unwrap();
    });
}

#[test]
fn reads_come_from_files_when_the_cache_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 0).await;
        log.open_partition(&tp(), small_segments()).await.unwrap();
        let mut last = None;
        for seed in 0..60 {
            last = Some(log.append(&tp(), batch_for(seed, 3, 200), 0).unwrap().durable);
        }
        last.unwrap().await.unwrap();
        // Written to the segment files (the journal lets segment writes wait for more).
        log.settle().await;
        let result = log.read(&tp(), 100, 4096).await.unwrap();
        assert!(matches!(result.data, ReadData::File(_)), "expected a file range");
        let batches = read_all(&log, &tp(), 0).await;
        assert_eq!(batches.len(), 60);
        assert!(segment_files(dir.path(), &tp(), "log").len() > 3, "small segments must roll");
        let out_of_range = log.read(&tp(), 181, 100).await.err().unwrap();
        assert!(matches!(out_of_range, StorageError::OffsetOutOfRange { .. }));
        assert_eq!(out_of_range.kafka_error_code(), 1);
        log.close().await.unwrap();
    });
}

#[test]
fn first_batch_is_returned_whole_even_when_larger_than_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 0).await;
        log.open_partition(&tp(), default_config()).await.unwrap();
        let size = batch_for(0, 10, 500).len();
        log.append(&tp(), batch_for(0, 10, 500), 0).unwrap().durable.await.unwrap();
        let result = log.read(&tp(), 3, 10).await.unwrap();
        assert_eq!(result.to_vec().await.unwrap().len(), size);
        log.close().await.unwrap();
    });
}

#[test]
fn data_topics_and_log_start_survive_a_clean_restart_without_rescanning() {
    let dir = tempfile::tempdir().unwrap();
    let written = run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        log.open_partition(&tp(), small_segments()).await.unwrap();
        let mut last = None;
        for seed in 0..40 {
            last = Some(log.append(&tp(), batch_for(seed, 2, 300), 0).unwrap().durable);
        }
        last.unwrap().await.unwrap();
        assert_eq!(log.delete_records(&tp(), 31).await.unwrap(), 31);
        let all = read_all(&log, &tp(), 31).await;
        log.close().await.unwrap();
        all
    });
    run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        let report = log.open_partition(&tp(), small_segments()).await.unwrap();
        assert_eq!(report.segments_scanned, 0, "clean stop leaves valid indexes: {report:?}");
        assert!(report.segments_trusted > 0);
        let offsets = log.offsets(&tp()).unwrap();
        assert_eq!((offsets.log_start_offset, offsets.log_end_offset), (31, 80));
        assert_eq!(read_all(&log, &tp(), 31).await, written);
        assert!(matches!(log.read(&tp(), 10, 100).await, Err(StorageError::OffsetOutOfRange { .. })));
        // and appends continue where the log ended
        let appended = log.append(&tp(), batch_for(99, 1, 10), 0).unwrap();
        assert_eq!(appended.base_offset, 80);
        appended.durable.await.unwrap();
        log.close().await.unwrap();
    });
}

#[test]
fn retention_by_bytes_and_time_deletes_whole_closed_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        let config = LogConfig { retention_bytes: Some(20 << 10), retention_ms: None, ..small_segments() };
        log.open_partition(&tp(), config).await.unwrap();
        let by_time = TopicPartition::new("old", 0);
        let config = LogConfig { retention_ms: Some(60_000), ..small_segments() };
        log.open_partition(&by_time, config).await.unwrap();
        let mut waits = Vec::new();
        for seed in 0..100 {
            waits.push(log.append(&tp(), batch_for(seed, 2, 400), 0).unwrap().durable);
            // timestamps are 1000 + seed ms: all far older than a minute before "now" below
            waits.push(log.append(&by_time, batch_for(seed, 2, 400), 0).unwrap().durable);
        }
        for wait in waits {
            wait.await.unwrap();
        }
        log.settle().await;
        let segments_before = segment_files(dir.path(), &tp(), "log").len();
        let deleted = log.enforce_retention(10_000_000).await.unwrap();
        assert!(deleted > 0);
        let kept = segment_files(dir.path(), &tp(), "log");
        assert!(kept.len() < segments_before);
        let size: u64 = kept.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
        assert!(size >= 20 << 10, "retention.bytes keeps at least the limit: {size}");
        let offsets = log.offsets(&tp()).unwrap();
        assert!(offsets.log_start_offset > 0);
        assert_eq!(offsets.log_end_offset, 200);
        let visible = read_all(&log, &tp(), offsets.log_start_offset).await;
        assert_eq!(visible.first().map(|b| b.0), Some(offsets.log_start_offset));
        // time retention keeps only the active segment
        assert_eq!(segment_files(dir.path(), &by_time, "log").len(), 1);
        log.close().await.unwrap();
    });
}

#[test]
fn none_and_interval_policies_acknowledge_once_written_and_still_persist() {
    let dir = tempfile::tempdir().unwrap();
    let names = [TopicPartition::new("none", 0), TopicPartition::new("interval", 0)];
    run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        log.open_partition(&names[0], LogConfig { flush: FlushPolicy::None, ..default_config() }).await.unwrap();
        log.open_partition(&names[1], LogConfig { flush: FlushPolicy::IntervalMs(200), ..default_config() })
            .await
            .unwrap();
        for name in &names {
            let mut last = None;
            for seed in 0..10 {
                last = Some(log.append(name, batch_for(seed, 1, 10), 0).unwrap().durable);
            }
            // Visible at once (from the cache), acknowledged once written, not yet synced.
            assert_eq!(log.offsets(name).unwrap().high_watermark, 10);
            last.unwrap().await.unwrap();
            assert!(log.offsets(name).unwrap().durable_end_offset < 10, "{name}: synced before its interval");
        }
        assert_eq!(log.stats().syncs, 0, "nothing asked for a sync yet");
        glommio::timer::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(log.offsets(&names[1]).unwrap().durable_end_offset, 10, "interval policy syncs by itself");
        assert!(log.offsets(&names[0]).unwrap().durable_end_offset < 10, "none never syncs by itself");
        log.close().await.unwrap();
    });
    run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        for name in &names {
            log.open_partition(name, default_config()).await.unwrap();
            assert_eq!(read_all(&log, name, 0).await.len(), 10);
        }
        log.close().await.unwrap();
    });
}

#[test]
fn offset_for_timestamp_finds_the_first_batch_at_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 0).await;
        log.open_partition(&tp(), small_segments()).await.unwrap();
        let mut last = None;
        for seed in 0..50 {
            // batch_for stamps timestamp 1000 + seed; 3 records per batch
            last = Some(log.append(&tp(), batch_for(seed, 3, 200), 0).unwrap().durable);
        }
        last.unwrap().await.unwrap();
        let found = |stamp: Option<RecordStamp>| stamp.map(|s| (s.offset, s.timestamp));
        assert_eq!(found(log.offset_for_timestamp(&tp(), 0).await.unwrap()), Some((0, 1000)));
        assert_eq!(found(log.offset_for_timestamp(&tp(), 1000).await.unwrap()), Some((0, 1000)));
        assert_eq!(found(log.offset_for_timestamp(&tp(), 1017).await.unwrap()), Some((51, 1017)));
        assert_eq!(found(log.offset_for_timestamp(&tp(), 1049).await.unwrap()), Some((147, 1049)));
        assert_eq!(log.offset_for_timestamp(&tp(), 1050).await.unwrap(), None);
        assert_eq!(found(log.max_timestamp_record(&tp()).await.unwrap()), Some((147, 1049)));
        log.close().await.unwrap();
    });
}

#[test]
fn timestamp_lookups_find_the_exact_record_inside_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 0).await;
        log.open_partition(&tp(), small_segments()).await.unwrap();
        assert_eq!(log.max_timestamp_record(&tp()).await.unwrap(), None, "empty log");
        // Batch k: 10 records at 10_000 k + 0, 100, ..., 900; the third batch holds the maximum.
        let starts = [0, 10_000, 50_000, 20_000];
        for (k, start) in starts.iter().enumerate() {
            let batch = batch::build_spread_test_batch(10, &[k as u8; 50], *start, 100);
            log.append(&tp(), BytesMut::from(&batch[..]), 0).unwrap().durable.await.unwrap();
        }
        let found = |stamp: Option<RecordStamp>| stamp.map(|s| (s.offset, s.timestamp));
        assert_eq!(found(log.offset_for_timestamp(&tp(), 10_250).await.unwrap()), Some((13, 10_300)));
        assert_eq!(found(log.offset_for_timestamp(&tp(), 10_900).await.unwrap()), Some((19, 10_900)));
        assert_eq!(found(log.offset_for_timestamp(&tp(), 10_901).await.unwrap()), Some((20, 50_000)));
        assert_eq!(found(log.max_timestamp_record(&tp()).await.unwrap()), Some((29, 50_900)));
        // Below the log start nothing is found, even inside the batch that straddles it.
        log.delete_records(&tp(), 15).await.unwrap();
        assert_eq!(found(log.offset_for_timestamp(&tp(), 10_000).await.unwrap()), Some((15, 10_500)));
        log.close().await.unwrap();
    });
}

#[test]
fn segments_roll_by_age_as_well_as_by_size() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        let config = LogConfig { segment_ms: 1000, ..default_config() };
        log.open_partition(&tp(), config).await.unwrap();
        // append times (ms): 0, 500 → one segment; 1000 → the segment is a second old: roll
        for (seed, now) in [(0, 0), (1, 500), (2, 1000), (3, 1500), (4, 2100)] {
            log.append(&tp(), batch_for(seed, 1, 10), now).unwrap().durable.await.unwrap();
        }
        log.settle().await;
        let bases: Vec<String> = segment_files(dir.path(), &tp(), "log")
            .iter()
            .map(|p| p.file_stem().unwrap().to_str().unwrap().trim_start_matches('0').to_string())
            .collect();
        assert_eq!(bases, vec!["", "2", "4"], "segments start at offsets 0, 2 and 4");
        assert_eq!(read_all(&log, &tp(), 0).await.len(), 5);
        log.close().await.unwrap();
    });
}

#[test]
fn file_ranges_splice_to_a_socket_byte_for_byte() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    corelog_engine::side_ring::set_nonblocking(server.as_raw_fd()).unwrap();
    let (expected, sent) = run(async {
        let log = open_log(dir.path(), 0).await;
        log.open_partition(&tp(), small_segments()).await.unwrap();
        let mut last = None;
        for seed in 0..10 {
            last = Some(log.append(&tp(), batch_for(seed, 4, 300), 0).unwrap().durable);
        }
        last.unwrap().await.unwrap();
        log.settle().await;
        // The first segment (8 KiB segments) is finalized: all of the range may be spliced.
        let result = log.read(&tp(), 0, 1 << 20).await.unwrap();
        let ReadData::File(range) = &result.data else { panic!("expected a file range") };
        let expected = range.read_to_vec().await.unwrap();
        let (slice, rest) = range.split_for_splice();
        let slice = slice.expect("a finalized segment is spliced");
        assert!(rest.is_none(), "nothing is left to copy");
        assert_eq!(slice.len, range.len);
        let ring = corelog_engine::side_ring::SideRing::new(32).unwrap();
        let sent = slice.splice_to_socket(&ring, server.as_raw_fd()).await.unwrap();
        log.close().await.unwrap();
        (expected, sent)
    });
    assert_eq!(sent as usize, expected.len());
    client.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut received = vec![0u8; expected.len()];
    client.read_exact(&mut received).unwrap();
    assert_eq!(received, expected);
    corelog_engine::batch::validate_prefix(&received).expect("a whole valid batch arrives first");
}

#[test]
fn the_partial_last_page_of_an_active_segment_is_never_spliced() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 0).await;
        log.open_partition(&tp(), default_config()).await.unwrap();
        // ~1.3 KiB: the whole segment is inside its first, partial page.
        log.append(&tp(), batch_for(0, 4, 300), 0).unwrap().durable.await.unwrap();
        log.settle().await;
        let result = log.read(&tp(), 0, 1 << 20).await.unwrap();
        let ReadData::File(range) = &result.data else { panic!("expected a file range") };
        let (slice, rest) = range.split_for_splice();
        assert!(slice.is_none(), "the next write rewrites this page");
        let only = rest.expect("read with O_DIRECT instead").read_to_vec().await.unwrap();
        assert_eq!(only, range.read_to_vec().await.unwrap());
        corelog_engine::batch::validate_prefix(&only).expect("a whole batch");
        // Four batches span two pages: the first page is spliced, and the response is cut
        // there, since it holds the whole first batch.
        let mut last = None;
        for seed in 1..4 {
            last = Some(log.append(&tp(), batch_for(seed, 4, 300), 0).unwrap().durable);
        }
        last.unwrap().await.unwrap();
        log.settle().await;
        let whole = log.read(&tp(), 0, 1 << 20).await.unwrap();
        let ReadData::File(range) = &whole.data else { panic!("expected a file range") };
        assert!(range.len > 4096 && range.len < 8192, "four batches span two pages: {}", range.len);
        let everything = range.read_to_vec().await.unwrap();
        let (slice, rest) = range.split_for_splice();
        let slice = slice.expect("whole pages may be spliced");
        assert_eq!((slice.position, slice.len), (0, 4096));
        assert!(rest.is_none());
        assert_eq!(slice.read_blocking().unwrap()[..], everything[..4096]);
        // A batch across the page boundary: its part in the whole page is spliced, the rest
        // read with O_DIRECT.
        let fourth = log.read(&tp(), 12, 1 << 20).await.unwrap();
        let ReadData::File(range) = &fourth.data else { panic!("expected a file range") };
        assert!(range.position < 4096 && range.position + range.len > 4096, "{}+{}", range.position, range.len);
        let (slice, rest) = range.split_for_splice();
        let (slice, rest) = (slice.expect("the whole-page part"), rest.expect("the partial page"));
        assert_eq!((slice.position + slice.len, rest.position), (4096, 4096));
        let mut joined = slice.read_blocking().unwrap();
        joined.extend(rest.read_to_vec().await.unwrap());
        assert_eq!(joined[..], everything[range.position as usize..]);
        corelog_engine::batch::validate_prefix(&joined).expect("a whole batch");
        log.close().await.unwrap();
    });
}

#[test]
fn deleting_a_partition_removes_its_files_and_fails_its_waiters() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        log.open_partition(&tp(), default_config()).await.unwrap();
        log.append(&tp(), batch_for(1, 1, 10), 0).unwrap().durable.await.unwrap();
        let pending = log.append(&tp(), batch_for(2, 1, 10), 0).unwrap();
        log.delete_partition(&tp()).await.unwrap();
        // The append either became durable before the delete or fails: it never hangs.
        let _ = pending.durable.await;
        assert!(!dir.path().join(tp().to_string()).exists());
        assert!(matches!(log.offsets(&tp()), Err(StorageError::UnknownPartition(_))));
        // a new partition of the same name starts empty
        log.open_partition(&tp(), default_config()).await.unwrap();
        assert_eq!(log.offsets(&tp()).unwrap().log_end_offset, 0);
        log.close().await.unwrap();
    });
}

#[test]
fn a_backlog_larger_than_one_write_is_written_in_several() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 0).await;
        let config = LogConfig { max_message_bytes: 20 << 20, ..default_config() };
        log.open_partition(&tp(), config).await.unwrap();
        // Three ~15 MiB batches queued at once exceed the 32 MiB write cap.
        let waits: Vec<_> =
            (0..3).map(|seed| log.append(&tp(), batch_for(seed, 15_000, 1000), 0).unwrap().durable).collect();
        for wait in waits {
            wait.await.unwrap();
        }
        log.settle().await;
        assert!(log.stats().writes >= 2, "{:?}", log.stats());
        assert_eq!(read_all(&log, &tp(), 0).await.len(), 3);
        log.close().await.unwrap();
    });
}

#[test]
fn config_updates_apply_to_a_live_partition() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 64 << 20).await;
        let never_synced = LogConfig { flush: FlushPolicy::None, ..small_segments() };
        log.open_partition(&tp(), never_synced.clone()).await.unwrap();
        for seed in 0..40 {
            log.append(&tp(), batch_for(seed, 2, 500), 1_000).unwrap().durable.await.unwrap();
        }
        log.settle().await;
        let offsets = log.offsets(&tp()).unwrap();
        assert_eq!(offsets.high_watermark, 80, "flush=none: visible once written");
        assert!(offsets.durable_end_offset < 80, "flush=none never syncs the active segment: {offsets:?}");

        // Switched to `always`: the unsynced tail is synced without a new append.
        log.update_config(&tp(), LogConfig { flush: FlushPolicy::Always, ..never_synced.clone() }).unwrap();
        log.settle().await;
        assert_eq!(log.offsets(&tp()).unwrap().durable_end_offset, 80);

        // A smaller retention.bytes takes effect at the next retention pass.
        let segments_before = segment_files(dir.path(), &tp(), "log").len();
        log.update_config(&tp(), LogConfig { retention_bytes: Some(8 << 10), ..small_segments() }).unwrap();
        assert!(log.enforce_retention(2_000).await.unwrap() > 0);
        assert!(segment_files(dir.path(), &tp(), "log").len() < segments_before);
        assert!(log.offsets(&tp()).unwrap().log_start_offset > 0);

        // Invalid configs and unknown partitions are refused; the old config stays.
        let bad = LogConfig { segment_bytes: 3, ..small_segments() };
        assert!(log.update_config(&tp(), bad).is_err());
        let unknown = TopicPartition::new("nope", 0);
        assert!(matches!(log.update_config(&unknown, small_segments()), Err(StorageError::UnknownPartition(_))));
        log.append(&tp(), batch_for(99, 1, 10), 1_000).unwrap().durable.await.unwrap();
        log.close().await.unwrap();
    });
}

#[test]
fn long_polls_wake_when_the_high_watermark_passes_their_offset() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 64 << 20).await;
        log.open_partition(&tp(), default_config()).await.unwrap();
        let mut waiting = log.wait_for_data_beyond(&tp(), 0).unwrap();
        assert_eq!(waiting.try_recv(), Ok(None), "nothing to read yet");
        let appended = log.append(&tp(), batch_for(1, 3, 10), 0).unwrap();
        // flush=always: visible (and the poll woken) only once synced.
        appended.durable.await.unwrap();
        assert_eq!(waiting.await, Ok(()));
        let mut ahead = log.wait_for_data_beyond(&tp(), 3).unwrap();
        assert!(log.wait_for_data_beyond(&tp(), 2).unwrap().await.is_ok(), "already beyond: at once");
        log.close().await.unwrap();
        assert_eq!(ahead.try_recv(), Ok(Some(())), "a stopping shard releases its long polls");
        assert!(log.wait_for_data_beyond(&tp(), 3).is_err());
    });
}

#[test]
fn a_time_lookup_goes_past_a_batch_whose_max_timestamp_its_records_do_not_reach() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 0).await;
        log.open_partition(&tp(), small_segments()).await.unwrap();
        // A producer's header claims a max timestamp of 5000; its records reach 1900 only.
        let mut claims_more = batch::build_spread_test_batch(10, b"a", 1_000, 100);
        claims_more[35..43].copy_from_slice(&5_000i64.to_be_bytes());
        let crc = crc32c::crc32c(&claims_more[21..]);
        claims_more[17..21].copy_from_slice(&crc.to_be_bytes());
        let honest = batch::build_spread_test_batch(10, b"b", 3_000, 100);
        for bytes in [claims_more, honest] {
            log.append(&tp(), BytesMut::from(&bytes[..]), 0).unwrap().durable.await.unwrap();
        }
        let found = log.offset_for_timestamp(&tp(), 2_500).await.unwrap().map(|s| (s.offset, s.timestamp));
        assert_eq!(found, Some((10, 3_000)), "the first record at or after the time, in the next batch");
        log.close().await.unwrap();
    });
}

/// Write buffers are reused from wave to wave (the shard's chunk pool): with 4 KiB chunks
/// nearly every write goes out in reused buffers, and every byte read back from the files
/// must be the batch's own, never a leftover of an earlier write.
#[test]
fn reused_write_buffers_never_leak_old_bytes_into_the_files() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let shape = WriteShape { write_bytes_max: 1 << 20, chunk_bytes: 4096, queue_depth: 2 };
        let config = ShardLogConfig { write_shape: shape, ..ShardLogConfig::new(dir.path(), 0) };
        let log = ShardLog::open(config).await.unwrap();
        log.open_partition(&tp(), default_config()).await.unwrap();
        let mut expected = Vec::new();
        for wave in 0..30u64 {
            // Several appends per wave, of sizes that end at every place within a chunk.
            let mut durable = Vec::new();
            for i in 0..4u64 {
                let seed = wave * 4 + i;
                let batch = batch_for(seed, 1 + (seed % 7) as i32, 300 + (seed as usize * 997) % 5000);
                let appended = log.append(&tp(), batch.clone(), 0).unwrap();
                let mut stamped = batch.to_vec();
                batch::stamp(&mut stamped, appended.base_offset, 0);
                expected.push((appended.base_offset, stamped));
                durable.push(appended.durable);
            }
            for d in durable {
                d.await.unwrap();
            }
        }
        assert_eq!(read_all(&log, &tp(), 0).await, expected, "files hold exactly the appended batches");
        log.close().await.unwrap();
        // And after a restart (recovery scans the files).
        let log = open_log(dir.path(), 0).await;
        log.open_partition(&tp(), default_config()).await.unwrap();
        assert_eq!(read_all(&log, &tp(), 0).await, expected);
        log.close().await.unwrap();
    });
}
