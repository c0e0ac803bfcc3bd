//! Idempotent appends: retries of any of a producer's last five batches get their original
//! offsets and append nothing; gaps and stale epochs are refused; the state survives clean
//! and crash restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use bytes::BytesMut;
use common::*;
use corelog_engine::batch;
use corelog_engine::log::producer::kafka_error;

fn idempotent(producer_id: i64, epoch: i16, sequence: i32, records: i32) -> BytesMut {
    BytesMut::from(&batch::build_idempotent_test_batch(records, b"value", 5, producer_id, epoch, sequence)[..])
}

#[test]
fn retries_get_their_original_offsets_and_the_state_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        log.open_partition(&tp(), small_segments()).await.unwrap();
        let first = log.append(&tp(), idempotent(42, 0, 0, 3), 0).unwrap();
        first.durable.await.unwrap();
        let second = log.append(&tp(), idempotent(42, 0, 3, 2), 0).unwrap();
        second.durable.await.unwrap();
        let retry = log.append(&tp(), idempotent(42, 0, 0, 3), 0).unwrap();
        assert_eq!((retry.base_offset, retry.last_offset), (0, 2));
        retry.durable.await.unwrap();
        assert_eq!(log.offsets(&tp()).unwrap().log_end_offset, 5, "a retry appends nothing");
        let gap = log.append(&tp(), idempotent(42, 0, 9, 1), 0).err().unwrap();
        assert_eq!(gap.kafka_error_code(), kafka_error::OUT_OF_ORDER_SEQUENCE_NUMBER);
        // a producer mixing with non-idempotent ones
        log.append(&tp(), batch_for(1, 1, 10), 0).unwrap().durable.await.unwrap();
        log.close().await.unwrap();
    });
    // clean restart: the snapshot carries the state
    run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        log.open_partition(&tp(), small_segments()).await.unwrap();
        let retry = log.append(&tp(), idempotent(42, 0, 3, 2), 0).unwrap();
        assert_eq!((retry.base_offset, retry.last_offset), (3, 4));
        let next = log.append(&tp(), idempotent(42, 0, 5, 1), 0).unwrap();
        assert_eq!(next.base_offset, 6);
        next.durable.await.unwrap();
        let stale = log.append(&tp(), idempotent(42, -1, 6, 1), 0).err().unwrap();
        assert_eq!(stale.kafka_error_code(), kafka_error::INVALID_PRODUCER_EPOCH);
        // "crash": no close; the batch at offset 6 is only in the scanned active segment
    });
    run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        log.open_partition(&tp(), small_segments()).await.unwrap();
        let retry = log.append(&tp(), idempotent(42, 0, 5, 1), 0).unwrap();
        assert_eq!(retry.base_offset, 6, "replayed from the scanned segment");
        let unknown = log.append(&tp(), idempotent(7, 0, 4, 1), 0).err().unwrap();
        assert_eq!(unknown.kafka_error_code(), kafka_error::UNKNOWN_PRODUCER_ID);
        assert_eq!(log.offsets(&tp()).unwrap().log_end_offset, 7);
        log.close().await.unwrap();
    });
}

#[test]
fn a_snapshot_ahead_of_a_damaged_log_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        log.open_partition(&tp(), small_segments()).await.unwrap();
        for sequence in 0..3 {
            log.append(&tp(), idempotent(9, 0, sequence, 1), 0).unwrap().durable.await.unwrap();
        }
        log.close().await.unwrap();
    });
    // The last batch is lost (say, a damaged tail cut at recovery): its retry must be appended
    // again, not answered as a duplicate of a batch that is gone.
    let segment = segment_files(dir.path(), &tp(), "log").pop().unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    let last = batch::build_idempotent_test_batch(1, b"value", 5, 9, 0, 2).len() as u64;
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(len - last).unwrap();
    std::fs::remove_file(segment.with_extension("index")).unwrap();
    run(async {
        let log = open_log(dir.path(), 1 << 20).await;
        log.open_partition(&tp(), small_segments()).await.unwrap();
        assert_eq!(log.offsets(&tp()).unwrap().log_end_offset, 2);
        let error = log.append(&tp(), idempotent(9, 0, 2, 1), 0).err().unwrap();
        assert_eq!(error.kafka_error_code(), kafka_error::UNKNOWN_PRODUCER_ID, "state dropped, producer resets");
        log.close().await.unwrap();
    });
}
