//! Kafka RecordBatch v2: header layout, intake validation and in-place offset stamping.
//!
//! Batches are stored and served exactly as the producer encoded them. The broker only
//! rewrites two header fields that the CRC does not cover: `baseOffset` and
//! `partitionLeaderEpoch`. Nothing here allocates or copies record bytes.
//!
//! ```text
//! offset  size  field                  covered by CRC32C
//!      0     8  baseOffset             no   (stamped by the broker)
//!      8     4  batchLength            no   (bytes after this field)
//!     12     4  partitionLeaderEpoch   no   (stamped by the broker)
//!     16     1  magic (= 2)            no
//!     17     4  crc (CRC32C)           no
//!     21     2  attributes             yes
//!     23     4  lastOffsetDelta        yes
//!     27     8  baseTimestamp          yes
//!     35     8  maxTimestamp           yes
//!     43     8  producerId             yes
//!     51     2  producerEpoch          yes
//!     53     4  baseSequence           yes
//!     57     4  recordCount            yes
//!     61     …  records                yes
//! ```
//! All integers are big-endian, as in Kafka.

/// Size of the fixed RecordBatch v2 header; the smallest possible batch.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before the `batchLength` value starts counting (baseOffset + batchLength).
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// The only record format corelog accepts.
pub const MAGIC_V2: u8 = 2;
const CRC_COVERED_FROM: usize = 21;
/// The smallest encoded record (length, attributes, timestamp/offset deltas, key, value,
/// header count, one byte each), used to reject impossible record counts early.
const RECORD_BYTES_MIN: usize = 7;

/// Kafka error codes that batch validation maps to (see the Kafka protocol guide).
pub mod kafka_error {
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_RECORD: i16 = 87;
}

/// Why a batch was refused at intake or during recovery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: {available_bytes} bytes available, header needs {needed_bytes}")]
    Truncated { available_bytes: usize, needed_bytes: usize },
    #[error("batch length field {length} is inconsistent with {available_bytes} available bytes")]
    LengthMismatch { length: i64, available_bytes: usize },
    #[error("unsupported record batch magic {magic} (only v2 is accepted)")]
    UnsupportedMagic { magic: u8 },
    #[error("CRC32C mismatch: header says {stored:#010x}, bytes give {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record batch holds no records")]
    EmptyBatch,
    #[error("record count {record_count} cannot fit in {records_bytes} bytes of records")]
    ImpossibleRecordCount { record_count: i32, records_bytes: usize },
    #[error("lastOffsetDelta {last_offset_delta} does not match record count {record_count}")]
    OffsetDeltaMismatch { last_offset_delta: i32, record_count: i32 },
    #[error("batch of {size_bytes} bytes exceeds max.message.bytes {max_bytes}")]
    TooLarge { size_bytes: usize, max_bytes: usize },
}

impl BatchError {
    /// The Kafka error code a producer receives for this failure.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            BatchError::Truncated { .. } | BatchError::LengthMismatch { .. } | BatchError::CrcMismatch { .. } => {
                kafka_error::CORRUPT_MESSAGE
            }
            BatchError::UnsupportedMagic { .. }
            | BatchError::EmptyBatch
            | BatchError::ImpossibleRecordCount { .. }
            | BatchError::OffsetDeltaMismatch { .. } => kafka_error::INVALID_RECORD,
            BatchError::TooLarge { .. } => kafka_error::MESSAGE_TOO_LARGE,
        }
    }
}

/// The header fields of a validated batch that the log needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Total encoded size, header included.
    pub size_bytes: usize,
    pub partition_leader_epoch: i32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Compression codec id from the attributes (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> u8 {
        (self.attributes & 0x07) as u8
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(raw)
}

/// The total size the batch at the start of `bytes` claims (`12 + batchLength`), read from
/// the 12-byte prefix alone. `None` if fewer than 12 bytes are available or the length is
/// negative. Used by recovery and by readers that walk a segment batch by batch.
pub fn claimed_batch_size(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < BATCH_LENGTH_PREFIX_BYTES {
        return None;
    }
    let length = be_i32(bytes, 8);
    usize::try_from(length).ok().map(|l| l + BATCH_LENGTH_PREFIX_BYTES)
}

/// Parses the header fields without checking the CRC. The caller guarantees at least
/// `BATCH_HEADER_BYTES` bytes.
fn parse_header(bytes: &[u8], size_bytes: usize) -> BatchHeader {
    BatchHeader {
        base_offset: be_i64(bytes, 0),
        size_bytes,
        partition_leader_epoch: be_i32(bytes, 12),
        attributes: be_i16(bytes, 21),
        last_offset_delta: be_i32(bytes, 23),
        base_timestamp: be_i64(bytes, 27),
        max_timestamp: be_i64(bytes, 35),
        producer_id: be_i64(bytes, 43),
        producer_epoch: be_i16(bytes, 51),
        base_sequence: be_i32(bytes, 53),
        record_count: be_i32(bytes, 57),
    }
}

/// The header of a batch already in the log (its CRC was checked at intake and at recovery,
/// so it is not checked again). `None` if `bytes` holds less than a header or the length is
/// impossible.
pub fn parse_stored_header(bytes: &[u8]) -> Option<BatchHeader> {
    let size = claimed_batch_size(bytes)?;
    (bytes.len() >= BATCH_HEADER_BYTES && size >= BATCH_HEADER_BYTES).then(|| parse_header(bytes, size))
}

/// Validates the batch at the start of `bytes`, which may be followed by more batches.
/// Checks length, magic, CRC32C of the covered bytes, record count and `lastOffsetDelta`.
/// Returns the header; its `size_bytes` says where the next batch starts.
pub fn validate_prefix(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::Truncated { available_bytes: bytes.len(), needed_bytes: BATCH_HEADER_BYTES });
    }
    let length = i64::from(be_i32(bytes, 8));
    let size_bytes = usize::try_from(length)
        .ok()
        .map(|l| l + BATCH_LENGTH_PREFIX_BYTES)
        .filter(|&s| s >= BATCH_HEADER_BYTES && s <= bytes.len())
        .ok_or(BatchError::LengthMismatch { length, available_bytes: bytes.len() })?;
    let magic = bytes[16];
    if magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic { magic });
    }
    let stored = be_u32(bytes, 17);
    let computed = crc32c::crc32c(&bytes[CRC_COVERED_FROM..size_bytes]);
    if stored != computed {
        return Err(BatchError::CrcMismatch { stored, computed });
    }
    let header = parse_header(bytes, size_bytes);
    if header.record_count <= 0 {
        return Err(BatchError::EmptyBatch);
    }
    let records_bytes = size_bytes - BATCH_HEADER_BYTES;
    // Compressed batches can hold more records than bytes; only uncompressed ones are bounded.
    let count = usize::try_from(header.record_count).unwrap_or(usize::MAX);
    if header.compression() == 0 && count > records_bytes / RECORD_BYTES_MIN {
        return Err(BatchError::ImpossibleRecordCount { record_count: header.record_count, records_bytes });
    }
    if i64::from(header.last_offset_delta) != i64::from(header.record_count) - 1 {
        return Err(BatchError::OffsetDeltaMismatch {
            last_offset_delta: header.last_offset_delta,
            record_count: header.record_count,
        });
    }
    Ok(header)
}

/// Validates a produced batch that must fill `bytes` exactly (Kafka accepts exactly one v2
/// batch per partition in a produce request) and respects the partition's `max.message.bytes`.
pub fn validate_produced(bytes: &[u8], max_message_bytes: usize) -> Result<BatchHeader, BatchError> {
    if bytes.len() > max_message_bytes {
        return Err(BatchError::TooLarge { size_bytes: bytes.len(), max_bytes: max_message_bytes });
    }
    let header = validate_prefix(bytes)?;
    if header.size_bytes != bytes.len() {
        return Err(BatchError::LengthMismatch {
            length: header.size_bytes as i64 - BATCH_LENGTH_PREFIX_BYTES as i64,
            available_bytes: bytes.len(),
        });
    }
    Ok(header)
}

/// Writes `baseOffset` and `partitionLeaderEpoch` in place. Neither field is covered by the
/// CRC, so the batch stays valid and its record bytes are untouched.
pub fn stamp(bytes: &mut [u8], base_offset: i64, partition_leader_epoch: i32) {
    assert!(bytes.len() >= BATCH_HEADER_BYTES, "stamping a batch shorter than its header");
    bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
    bytes[12..16].copy_from_slice(&partition_leader_epoch.to_be_bytes());
}

/// Builds a valid uncompressed batch of `record_count` records whose values are `value`.
/// For tests and benchmarks: the log never builds batches itself.
pub fn build_test_batch(record_count: i32, value: &[u8], timestamp_ms: i64) -> Vec<u8> {
    build_idempotent_test_batch(record_count, value, timestamp_ms, -1, -1, -1)
}

/// Like [`build_test_batch`], from an idempotent producer (id, epoch, first sequence).
pub fn build_idempotent_test_batch(
    record_count: i32,
    value: &[u8],
    timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Vec<u8> {
    build_batch(record_count, value, timestamp_ms, 0, (producer_id, producer_epoch, base_sequence))
}

/// Like [`build_test_batch`], with record `i` stamped `timestamp_ms + i * step_ms`.
pub fn build_spread_test_batch(record_count: i32, value: &[u8], timestamp_ms: i64, step_ms: i64) -> Vec<u8> {
    build_batch(record_count, value, timestamp_ms, step_ms, (-1, -1, -1))
}

fn build_batch(
    record_count: i32,
    value: &[u8],
    timestamp_ms: i64,
    step_ms: i64,
    (producer_id, producer_epoch, base_sequence): (i64, i16, i32),
) -> Vec<u8> {
    assert!(record_count > 0);
    let mut records = Vec::with_capacity(value.len() * record_count as usize + 16);
    for i in 0..record_count {
        let mut body = Vec::with_capacity(value.len() + 12);
        body.push(0); // attributes
        put_varint(&mut body, i64::from(i) * step_ms); // timestamp delta
        put_varint(&mut body, i64::from(i)); // offset delta
        put_varint(&mut body, -1); // null key
        put_varint(&mut body, value.len() as i64);
        body.extend_from_slice(value);
        put_varint(&mut body, 0); // header count
        put_varint(&mut records, body.len() as i64);
        records.extend_from_slice(&body);
    }
    let mut out = vec![0u8; BATCH_HEADER_BYTES];
    out.extend_from_slice(&records);
    let batch_length = (out.len() - BATCH_LENGTH_PREFIX_BYTES) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    out[12..16].copy_from_slice(&(-1i32).to_be_bytes());
    out[16] = MAGIC_V2;
    out[23..27].copy_from_slice(&(record_count - 1).to_be_bytes());
    out[27..35].copy_from_slice(&timestamp_ms.to_be_bytes());
    let max_timestamp_ms = timestamp_ms + i64::from(record_count - 1) * step_ms.max(0);
    out[35..43].copy_from_slice(&max_timestamp_ms.to_be_bytes());
    out[43..51].copy_from_slice(&producer_id.to_be_bytes());
    out[51..53].copy_from_slice(&producer_epoch.to_be_bytes());
    out[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    out[57..61].copy_from_slice(&record_count.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_COVERED_FROM..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A record's key and value for [`encode_batch`]; `None` is null.
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Builds one uncompressed batch holding `records` (key, value; `None` is null) in order:
/// base offset 0 and partition leader epoch -1 for the log to stamp, no producer id,
/// every record stamped `timestamp_ms`, no headers. Used by the broker to write its own
/// records (consumer-group state) into internal topics.
///
/// Panics if `records` is empty (Kafka has no empty batch) or the batch would exceed
/// `i32::MAX` bytes: both are bugs in the caller, which bounds what it writes.
pub fn encode_batch(records: &[KeyValue<'_>], timestamp_ms: i64) -> Vec<u8> {
    assert!(!records.is_empty(), "encoding a batch of no records");
    let mut out = vec![0u8; BATCH_HEADER_BYTES];
    let mut body = Vec::new();
    for (offset_delta, (key, value)) in records.iter().enumerate() {
        body.clear();
        body.push(0); // attributes
        put_varint(&mut body, 0); // timestamp delta
        put_varint(&mut body, offset_delta as i64);
        put_nullable_bytes(&mut body, *key);
        put_nullable_bytes(&mut body, *value);
        put_varint(&mut body, 0); // header count
        put_varint(&mut out, body.len() as i64);
        out.extend_from_slice(&body);
    }
    // Every record takes at least one byte, so this bound also keeps the count in an i32.
    assert!(out.len() - BATCH_LENGTH_PREFIX_BYTES <= i32::MAX as usize, "encoded batch exceeds i32::MAX bytes");
    let batch_length = (out.len() - BATCH_LENGTH_PREFIX_BYTES) as i32;
    let record_count = records.len() as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    out[12..16].copy_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    out[16] = MAGIC_V2;
    // attributes (21..23) stay 0: uncompressed, CreateTime, not transactional, not control.
    out[23..27].copy_from_slice(&(record_count - 1).to_be_bytes());
    out[27..35].copy_from_slice(&timestamp_ms.to_be_bytes());
    out[35..43].copy_from_slice(&timestamp_ms.to_be_bytes());
    out[43..51].copy_from_slice(&(-1i64).to_be_bytes()); // producer id
    out[51..53].copy_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    out[53..57].copy_from_slice(&(-1i32).to_be_bytes()); // base sequence
    out[57..61].copy_from_slice(&record_count.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_COVERED_FROM..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

/// A record key or value: varint length (-1 for null), then the bytes.
fn put_nullable_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            put_varint(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
        None => put_varint(out, -1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_batch_validates_and_reports_its_header() {
        let batch = build_test_batch(3, b"hello", 1_700_000_000_000);
        let header = validate_produced(&batch, 1 << 20).unwrap();
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.size_bytes, batch.len());
        assert_eq!(header.max_timestamp, 1_700_000_000_000);
        assert_eq!(header.compression(), 0);
    }

    #[test]
    fn stamping_keeps_the_crc_valid_and_the_records_untouched() {
        let mut batch = build_test_batch(2, b"abc", 5);
        let records_before = batch[BATCH_HEADER_BYTES..].to_vec();
        stamp(&mut batch, 4242, 7);
        let header = validate_prefix(&batch).unwrap();
        assert_eq!(header.base_offset, 4242);
        assert_eq!(header.partition_leader_epoch, 7);
        assert_eq!(header.last_offset(), 4243);
        assert_eq!(&batch[BATCH_HEADER_BYTES..], &records_before[..]);
    }

    #[test]
    fn every_flipped_covered_byte_is_a_crc_mismatch() {
        let batch = build_test_batch(2, b"payload", 5);
        for at in [21, 30, 57, batch.len() - 1] {
            let mut bad = batch.clone();
            bad[at] ^= 0x40;
            let err = validate_prefix(&bad).unwrap_err();
            assert!(matches!(err, BatchError::CrcMismatch { .. }), "byte {at}: {err}");
            assert_eq!(err.kafka_error_code(), kafka_error::CORRUPT_MESSAGE);
        }
    }

    #[test]
    fn malformed_headers_map_to_kafka_codes() {
        let batch = build_test_batch(2, b"x", 5);
        let err = validate_prefix(&batch[..40]).unwrap_err();
        assert_eq!(err.kafka_error_code(), kafka_error::CORRUPT_MESSAGE);

        let mut magic = batch.clone();
        magic[16] = 1;
        assert_eq!(validate_prefix(&magic).unwrap_err(), BatchError::UnsupportedMagic { magic: 1 });

        let mut negative = batch.clone();
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(validate_prefix(&negative), Err(BatchError::LengthMismatch { .. })));

        let mut too_long = batch.clone();
        too_long[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(validate_prefix(&too_long), Err(BatchError::LengthMismatch { .. })));

        let err = validate_produced(&batch, batch.len() - 1).unwrap_err();
        assert_eq!(err.kafka_error_code(), kafka_error::MESSAGE_TOO_LARGE);

        let mut trailing = batch.clone();
        trailing.push(0);
        assert!(matches!(validate_produced(&trailing, 1 << 20), Err(BatchError::LengthMismatch { .. })));
    }

    fn recrc(batch: &mut [u8]) {
        let crc = crc32c::crc32c(&batch[CRC_COVERED_FROM..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn inconsistent_counts_are_invalid_records() {
        let mut delta = build_test_batch(3, b"x", 5);
        delta[23..27].copy_from_slice(&5i32.to_be_bytes());
        recrc(&mut delta);
        let err = validate_prefix(&delta).unwrap_err();
        assert!(matches!(err, BatchError::OffsetDeltaMismatch { .. }));
        assert_eq!(err.kafka_error_code(), kafka_error::INVALID_RECORD);

        let mut empty = build_test_batch(1, b"x", 5);
        empty[57..61].copy_from_slice(&0i32.to_be_bytes());
        recrc(&mut empty);
        assert_eq!(validate_prefix(&empty).unwrap_err(), BatchError::EmptyBatch);

        let mut huge = build_test_batch(1, b"x", 5);
        huge[57..61].copy_from_slice(&1_000_000i32.to_be_bytes());
        huge[23..27].copy_from_slice(&999_999i32.to_be_bytes());
        recrc(&mut huge);
        assert!(matches!(validate_prefix(&huge), Err(BatchError::ImpossibleRecordCount { .. })));
    }

    #[test]
    fn claimed_size_reads_only_the_prefix() {
        let batch = build_test_batch(1, b"x", 5);
        assert_eq!(claimed_batch_size(&batch[..12]), Some(batch.len()));
        assert_eq!(claimed_batch_size(&batch[..11]), None);
        assert_eq!(claimed_batch_size(&[0xff; 12]), None);
    }

    /// A record as the tests see it: offset, timestamp, key, value.
    type Seen<'a> = (i64, i64, Option<&'a [u8]>, Option<&'a [u8]>);

    #[test]
    fn an_encoded_batch_validates_and_holds_each_record_in_order() {
        let records: [KeyValue<'_>; 3] = [(Some(b"k0"), Some(b"v0")), (None, Some(b"")), (Some(b"k2"), None)];
        let batch = encode_batch(&records, 1_700_000_000_123);
        let header = validate_produced(&batch, 1 << 20).unwrap();
        assert_eq!(header.base_offset, 0);
        assert_eq!(header.partition_leader_epoch, -1);
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.base_timestamp, 1_700_000_000_123);
        assert_eq!(header.max_timestamp, 1_700_000_000_123);
        assert_eq!((header.producer_id, header.producer_epoch, header.base_sequence), (-1, -1, -1));
        assert_eq!(header.attributes, 0);

        let decoded = crate::records::decode_records(&batch).unwrap();
        let got: Vec<Seen<'_>> =
            decoded.iter().map(|r| (r.offset, r.timestamp, r.key.as_deref(), r.value.as_deref())).collect();
        let expected: Vec<Seen<'_>> =
            records.iter().enumerate().map(|(i, (k, v))| (i as i64, 1_700_000_000_123, *k, *v)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn an_encoded_batch_has_a_stable_layout() {
        let batch = encode_batch(&[(Some(b"k"), None)], 0);
        // One record, zigzag varints: length 7 | attributes 0 | timestamp delta 0
        // | offset delta 0 | key length 1, "k" | value length -1 | header count 0.
        assert_eq!(&batch[BATCH_HEADER_BYTES..], &[14, 0, 0, 0, 2, b'k', 1, 0]);
        assert_eq!(claimed_batch_size(&batch), Some(BATCH_HEADER_BYTES + 8));
    }

    #[test]
    #[should_panic(expected = "no records")]
    fn encoding_no_records_is_a_bug() {
        encode_batch(&[], 0);
    }
}
