//! Fuzzing of the engine's decoders on stable Rust (proptest): record batch validation,
//! record decoding and decompression, and segment recovery. Each property runs
//! `FUZZ_CASES_SHORT` cases in the README's test command; `PROPTEST_CASES=N` runs N (the long
//! form: `PROPTEST_CASES=20000 cargo test --release -p corelog-engine --test fuzz`).
//!
//! - Batch validation never panics on any bytes, accepts every valid batch, and rejects every
//!   change to a batch except in the two fields the CRC does not cover (base offset, partition
//!   leader epoch), which the log overwrites anyway.
//! - Record decoding of a batch whose records (or compressed payload) are garbage, under a
//!   valid CRC, returns an error or records, never a panic.
//! - Recovery of a log whose last segment was damaged (bytes flipped, cut, zeroed, garbage
//!   appended) and lost its indexes never panics, serves only batches that were written, in
//!   order and bit for bit, and keeps every batch that lies wholly before the first damaged
//!   byte. (It found that damage to the two header fields the CRC does not cover — base offset,
//!   partition leader epoch — was served; recovery now checks them.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::Write;
use std::path::Path;

use common::*;
use corelog_engine::batch::{self, KeyValue};
use corelog_engine::log::LogConfig;
use corelog_engine::records;
use proptest::prelude::*;

const FUZZ_CASES_SHORT: u32 = 64;
const RECOVERY_CASES_SHORT: u32 = 24;

fn cases(short: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(short);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Offsets of the header fields the CRC does not cover: baseOffset and partitionLeaderEpoch.
fn outside_crc(position: usize) -> bool {
    position < 8 || (12..16).contains(&position)
}

/// A record's key and value, owned; `None` is null.
type OwnedKeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

fn records_strategy() -> impl Strategy<Value = Vec<OwnedKeyValue>> {
    let field = proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64));
    proptest::collection::vec((field.clone(), field), 1..12)
}

fn encode(records: &[OwnedKeyValue]) -> Vec<u8> {
    let borrowed: Vec<KeyValue<'_>> = records.iter().map(|(k, v)| (k.as_deref(), v.as_deref())).collect();
    batch::encode_batch(&borrowed, 1_700_000_000_000)
}

/// A change to a batch: XOR a byte, cut it short, or append bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at_permille: u16, mask: u8 },
    Truncate { keep_permille: u16 },
    Extend { bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (0u16..1000, 1u8..=255).prop_map(|(at_permille, mask)| Mutation::Flip { at_permille, mask }),
        1 => (0u16..1000).prop_map(|keep_permille| Mutation::Truncate { keep_permille }),
        1 => proptest::collection::vec(any::<u8>(), 1..32).prop_map(|bytes| Mutation::Extend { bytes }),
    ]
}

/// Applies the mutations; returns the positions flipped, and whether the length changed.
fn apply(bytes: &mut Vec<u8>, mutations: &[Mutation]) -> (Vec<usize>, bool) {
    let (mut flipped, mut resized) = (Vec::new(), false);
    for mutation in mutations {
        match mutation {
            Mutation::Flip { at_permille, mask } if !bytes.is_empty() => {
                let at = bytes.len() * usize::from(*at_permille) / 1000;
                bytes[at] ^= mask;
                flipped.push(at);
            }
            Mutation::Flip { .. } => {}
            Mutation::Truncate { keep_permille } => {
                bytes.truncate(bytes.len() * usize::from(*keep_permille) / 1000);
                resized = true;
            }
            Mutation::Extend { bytes: extra } => {
                bytes.extend_from_slice(extra);
                resized = true;
            }
        }
    }
    (flipped, resized)
}

proptest! {
    #![proptest_config(cases(FUZZ_CASES_SHORT))]

    #[test]
    fn batch_validation_never_panics_and_rejects_every_change_the_crc_covers(
        records in records_strategy(),
        mutations in proptest::collection::vec(mutation(), 1..4),
        noise in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let original = encode(&records);
        let header = batch::validate_produced(&original, 1 << 20).expect("a valid batch is accepted");
        prop_assert_eq!(header.record_count as usize, records.len());
        let decoded = records::decode_records(&original).expect("a valid batch decodes");
        prop_assert_eq!(decoded.len(), records.len());

        let mut mutated = original.clone();
        let (flipped, resized) = apply(&mut mutated, &mutations);
        let changed: Vec<usize> = flipped.into_iter().filter(|&at| mutated.get(at) != original.get(at)).collect();
        match batch::validate_produced(&mutated, 1 << 20) {
            Ok(_) => {
                prop_assert!(!resized || mutated == original, "a resized batch was accepted");
                prop_assert!(changed.iter().all(|&at| outside_crc(at)), "accepted a change at {:?}", changed);
                // What was accepted decodes to the same records.
                let again = records::decode_records(&mutated).expect("an accepted batch decodes");
                prop_assert_eq!(again.len(), decoded.len());
            }
            Err(error) => {
                prop_assert!(resized || changed.iter().any(|&at| !outside_crc(at)), "rejected an intact batch: {}", error);
                prop_assert_ne!(error.kafka_error_code(), 0);
            }
        }
        // Readers that walk segments must not panic on anything either.
        for bytes in [&mutated[..], &noise[..]] {
            let _ = batch::claimed_batch_size(bytes);
            let _ = batch::parse_stored_header(bytes);
            let _ = batch::validate_prefix(bytes);
            let _ = records::decode_records(bytes);
            let _ = records::record_stamps(bytes);
        }
    }

    #[test]
    fn record_decoding_of_garbage_under_a_valid_crc_errors_instead_of_panicking(
        codec in 0u8..5,
        compress_garbage in any::<bool>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..2048),
        record_count in 1i32..64,
    ) {
        // A valid header around records that are garbage: either raw, or garbage that
        // decompresses fine (so that the record parser sees it).
        let payload = if compress_garbage { compress(codec, &garbage) } else { garbage };
        let mut bytes = encode(&[(None, Some(b"x".to_vec()))])[..batch::BATCH_HEADER_BYTES].to_vec();
        bytes.extend_from_slice(&payload);
        let length = (bytes.len() - 12) as i32;
        bytes[8..12].copy_from_slice(&length.to_be_bytes());
        let attributes = i16::from(codec);
        bytes[21..23].copy_from_slice(&attributes.to_be_bytes());
        bytes[23..27].copy_from_slice(&(record_count - 1).to_be_bytes());
        bytes[57..61].copy_from_slice(&record_count.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        let _ = batch::validate_produced(&bytes, 1 << 20);
        if let Ok(decoded) = records::decode_records(&bytes) {
            prop_assert!(decoded.len() <= record_count as usize, "more records than the batch claims");
        }
        let _ = records::record_stamps(&bytes);
        let _ = records::decompress(codec, &payload);
    }
}

/// `data` compressed the way Kafka producers do for `codec` (0 none, 1 gzip, 2 snappy raw,
/// 3 lz4 frame, 4 zstd).
fn compress(codec: u8, data: &[u8]) -> Vec<u8> {
    match codec {
        1 => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
        2 => snap::raw::Encoder::new().compress_vec(data).unwrap(),
        3 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
        4 => zstd::encode_all(data, 1).unwrap(),
        _ => data.to_vec(),
    }
}

/// A change to the active segment file after a crash.
#[derive(Debug, Clone)]
enum Damage {
    Flip { at_permille: u16, mask: u8 },
    Cut { keep_permille: u16 },
    Garbage { bytes: Vec<u8> },
    Zero { at_permille: u16, len: u16 },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => (0u16..1000, 1u8..=255).prop_map(|(at_permille, mask)| Damage::Flip { at_permille, mask }),
        1 => (0u16..1000).prop_map(|keep_permille| Damage::Cut { keep_permille }),
        1 => proptest::collection::vec(any::<u8>(), 1..300).prop_map(|bytes| Damage::Garbage { bytes }),
        1 => (0u16..1000, 1u16..600).prop_map(|(at_permille, len)| Damage::Zero { at_permille, len }),
    ]
}

/// Damages `path` (its first `valid_len` bytes are the batches written); returns the first
/// byte position whose content changed (or `valid_len` if none did).
fn damage_file(path: &Path, valid_len: usize, damages: &[Damage]) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let original = bytes.clone();
    for damage in damages {
        let len = valid_len.max(1);
        match damage {
            Damage::Flip { at_permille, mask } => {
                let at = len * usize::from(*at_permille) / 1000;
                if at < bytes.len() {
                    bytes[at] ^= mask;
                }
            }
            Damage::Cut { keep_permille } => bytes.truncate(len * usize::from(*keep_permille) / 1000),
            Damage::Garbage { bytes: garbage } => {
                let at = valid_len.min(bytes.len());
                bytes.truncate(at);
                bytes.extend_from_slice(garbage);
            }
            Damage::Zero { at_permille, len: zeros } => {
                let at = (len * usize::from(*at_permille) / 1000).min(bytes.len());
                let end = (at + usize::from(*zeros)).min(bytes.len());
                bytes[at..end].fill(0);
            }
        }
    }
    let first_change = (0..valid_len).find(|&i| bytes.get(i) != original.get(i)).unwrap_or(valid_len);
    std::fs::write(path, &bytes).unwrap();
    first_change
}

proptest! {
    #![proptest_config(cases(RECOVERY_CASES_SHORT))]

    #[test]
    fn recovery_of_a_damaged_active_segment_keeps_the_valid_prefix_and_serves_nothing_damaged(
        batches in 1u64..24,
        damages in proptest::collection::vec(damage(), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { segment_bytes: 8 << 10, index_interval_bytes: 512, retention_ms: None, ..LogConfig::default() };
        // Write, stop, and remove the active segment's index files, so that recovery scans it as
        // after a crash. (A crash without the stop would leak the log's descriptors across
        // thousands of cases.)
        let written = run(async {
            let log = open_log(dir.path(), 1 << 20).await;
            log.open_partition(&tp(), config.clone()).await.unwrap();
            let mut written = Vec::new();
            for seed in 0..batches {
                let appended = log.append(&tp(), batch_for(seed, 3, 120), 0).unwrap();
                appended.durable.await.unwrap();
                let mut stored = batch_for(seed, 3, 120).to_vec();
                batch::stamp(&mut stored, appended.base_offset, 0);
                written.push((appended.base_offset, stored));
            }
            log.close().await.unwrap();
            written
        });
        let segments = segment_files(dir.path(), &tp(), "log");
        let active = segments.last().unwrap();
        std::fs::remove_file(active.with_extension("index")).unwrap();
        std::fs::remove_file(active.with_extension("timeindex")).unwrap();
        let active_base: i64 = active.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let in_active: Vec<&(i64, Vec<u8>)> = written.iter().filter(|(base, _)| *base >= active_base).collect();
        let valid_len: usize = in_active.iter().map(|(_, bytes)| bytes.len()).sum();
        let first_change = damage_file(active, valid_len, &damages);

        let recovered = run(async {
            let log = open_log(dir.path(), 1 << 20).await;
            log.open_partition(&tp(), config.clone()).await.expect("recovery never fails on damage");
            let recovered = read_all(&log, &tp(), 0).await;
            // The log takes appends after recovery.
            log.append(&tp(), batch_for(999, 1, 10), 0).unwrap().durable.await.unwrap();
            log.close().await.unwrap();
            recovered
        });
        prop_assert!(recovered.len() <= written.len());
        prop_assert_eq!(&recovered[..], &written[..recovered.len()], "recovery served something never written");
        // Every batch wholly before the first damaged byte is kept.
        let mut end = 0usize;
        let intact_in_active = in_active.iter().take_while(|(_, bytes)| { end += bytes.len(); end <= first_change }).count();
        let kept_at_least = written.len() - in_active.len() + intact_in_active;
        prop_assert!(recovered.len() >= kept_at_least, "lost intact batches: kept {} of {}", recovered.len(), kept_at_least);
    }
}
