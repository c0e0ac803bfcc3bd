//! The records inside a RecordBatch v2: decompression (gzip, snappy raw or xerial-framed,
//! lz4 frame, zstd) and the record framing. The log never needs this to store or serve
//! batches; it looks inside one only to answer questions about single records (ListOffsets
//! by time and max timestamp).
//!
//! Record layout (all lengths and deltas zigzag varints):
//!
//! ```text
//! length | attributes i8 | timestampDelta varlong | offsetDelta varint
//!        | keyLength | key | valueLength | value | headerCount | (keyLength key valueLength value)*
//! ```

use std::io::Read;

use crate::batch::{self, BatchHeader};

/// Most bytes one batch may decompress to: a bound on what a hostile batch can make the
/// shard allocate.
pub const DECOMPRESSED_BYTES_MAX: usize = 128 << 20;

/// The batch attribute bit for `LogAppendTime` (every record's timestamp is the batch max).
const LOG_APPEND_TIME: i16 = 0x08;

/// Why the records of a batch cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("batch is shorter than its header")]
    Truncated,
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    #[error("{codec} payload does not decompress: {message}")]
    Decompress { codec: &'static str, message: String },
    #[error("batch decompresses to more than {DECOMPRESSED_BYTES_MAX} bytes")]
    TooLarge,
    #[error("malformed record {index}: {message}")]
    Malformed { index: usize, message: &'static str },
}

/// One record's position and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordStamp {
    pub offset: i64,
    pub timestamp: i64,
}

/// The offset and timestamp of every record in a whole stored batch.
pub fn record_stamps(bytes: &[u8]) -> Result<Vec<RecordStamp>, RecordError> {
    let header = batch::parse_stored_header(bytes).ok_or(RecordError::Truncated)?;
    if bytes.len() < header.size_bytes || header.size_bytes < batch::BATCH_HEADER_BYTES {
        return Err(RecordError::Truncated);
    }
    let payload = &bytes[batch::BATCH_HEADER_BYTES..header.size_bytes];
    let records = decompress(header.compression(), payload)?;
    let mut stamps = Vec::with_capacity(usize::try_from(header.record_count).unwrap_or(0).min(1 << 16));
    let mut reader = Cursor { bytes: &records, at: 0 };
    for index in 0..usize::try_from(header.record_count).unwrap_or(0) {
        let malformed = |message| RecordError::Malformed { index, message };
        let length = reader.varint().ok_or(malformed("length"))?;
        let length = usize::try_from(length).map_err(|_| malformed("negative length"))?;
        let end = reader.at.checked_add(length).filter(|&end| end <= records.len()).ok_or(malformed("length"))?;
        let mut record = Cursor { bytes: &records[..end], at: reader.at };
        record.take(1).ok_or(malformed("attributes"))?;
        let timestamp_delta = record.varint().ok_or(malformed("timestamp delta"))?;
        let offset_delta = record.varint().ok_or(malformed("offset delta"))?;
        stamps.push(RecordStamp {
            offset: header.base_offset + offset_delta,
            timestamp: timestamp(&header, timestamp_delta),
        });
        reader.at = end;
    }
    Ok(stamps)
}

fn timestamp(header: &BatchHeader, delta: i64) -> i64 {
    if header.attributes & LOG_APPEND_TIME != 0 { header.max_timestamp } else { header.base_timestamp + delta }
}

/// The uncompressed records section of a batch.
pub fn decompress(codec: u8, payload: &[u8]) -> Result<Vec<u8>, RecordError> {
    let failed =
        |codec: &'static str| move |e: std::io::Error| RecordError::Decompress { codec, message: e.to_string() };
    match codec {
        0 => Ok(payload.to_vec()),
        1 => read_bounded(flate2::read::MultiGzDecoder::new(payload)).map_err(failed("gzip"))?,
        2 => snappy(payload),
        3 => read_bounded(lz4_flex::frame::FrameDecoder::new(payload)).map_err(failed("lz4"))?,
        4 => {
            read_bounded(zstd::stream::read::Decoder::new(payload).map_err(failed("zstd"))?).map_err(failed("zstd"))?
        }
        other => Err(RecordError::UnknownCodec(other)),
    }
}

/// Reads a decoder to its end, refusing more than the bound.
fn read_bounded(decoder: impl Read) -> std::io::Result<Result<Vec<u8>, RecordError>> {
    let mut out = Vec::new();
    decoder.take(DECOMPRESSED_BYTES_MAX as u64 + 1).read_to_end(&mut out)?;
    Ok(if out.len() > DECOMPRESSED_BYTES_MAX { Err(RecordError::TooLarge) } else { Ok(out) })
}

/// The framing the Java client's snappy stream writes: a magic header, then blocks of
/// (big-endian u32 length, raw snappy block).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

fn snappy(payload: &[u8]) -> Result<Vec<u8>, RecordError> {
    let mut out = Vec::new();
    if payload.starts_with(XERIAL_MAGIC) {
        let mut at = XERIAL_HEADER_BYTES.min(payload.len());
        while at < payload.len() {
            let len = payload.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
            let block = len.and_then(|len| payload.get(at + 4..at + 4 + len)).ok_or_else(|| {
                RecordError::Decompress { codec: "snappy", message: format!("truncated xerial block at {at}") }
            })?;
            snappy_block(block, &mut out)?;
            at += 4 + block.len();
        }
    } else {
        snappy_block(payload, &mut out)?;
    }
    Ok(out)
}

fn snappy_block(block: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
    let failed = |e: snap::Error| RecordError::Decompress { codec: "snappy", message: e.to_string() };
    let len = snap::raw::decompress_len(block).map_err(failed)?;
    if out.len() + len > DECOMPRESSED_BYTES_MAX {
        return Err(RecordError::TooLarge);
    }
    let start = out.len();
    out.resize(start + len, 0);
    let written = snap::raw::Decoder::new().decompress(block, &mut out[start..]).map_err(failed)?;
    out.truncate(start + written);
    Ok(())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let slice = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(slice)
    }

    /// A zigzag varint of up to 64 bits.
    fn varint(&mut self) -> Option<i64> {
        let mut raw: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at)?;
            self.at += 1;
            raw |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        None
    }
}

/// One record of a batch, its key and value sharing the batch's (decompressed) buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<bytes::Bytes>,
    pub value: Option<bytes::Bytes>,
}

/// Every record of a whole stored batch, decompressed when needed; headers are skipped.
/// The CRC is not checked again: the log checked it at intake and at recovery.
pub fn decode_records(batch: &[u8]) -> Result<Vec<OwnedRecord>, RecordError> {
    let header = batch::parse_stored_header(batch).ok_or(RecordError::Truncated)?;
    if batch.len() < header.size_bytes || header.size_bytes < batch::BATCH_HEADER_BYTES {
        return Err(RecordError::Truncated);
    }
    let payload = &batch[batch::BATCH_HEADER_BYTES..header.size_bytes];
    let records = bytes::Bytes::from(decompress(header.compression(), payload)?);
    let record_count = usize::try_from(header.record_count).unwrap_or(0);
    let mut out = Vec::with_capacity(record_count.min(1 << 16));
    let mut reader = Cursor { bytes: &records, at: 0 };
    for index in 0..record_count {
        let malformed = |message| RecordError::Malformed { index, message };
        let length = reader.varint().ok_or(malformed("length"))?;
        let length = usize::try_from(length).map_err(|_| malformed("negative length"))?;
        let end = reader.at.checked_add(length).filter(|&end| end <= records.len()).ok_or(malformed("length"))?;
        let mut record = Cursor { bytes: &records[..end], at: reader.at };
        record.take(1).ok_or(malformed("attributes"))?;
        let timestamp_delta = record.varint().ok_or(malformed("timestamp delta"))?;
        let offset_delta = record.varint().ok_or(malformed("offset delta"))?;
        let key = record.nullable_bytes().ok_or(malformed("key"))?;
        let value = record.nullable_bytes().ok_or(malformed("value"))?;
        let header_count = record.varint().ok_or(malformed("header count"))?;
        let header_count = usize::try_from(header_count).map_err(|_| malformed("negative header count"))?;
        for _ in 0..header_count {
            // A header key is never null; its value may be.
            record.nullable_bytes().flatten().ok_or(malformed("header key"))?;
            record.nullable_bytes().ok_or(malformed("header value"))?;
        }
        // Like Kafka, a record whose fields do not fill its length exactly is corrupt.
        if record.at != end {
            return Err(malformed("fields do not match the record length"));
        }
        out.push(OwnedRecord {
            offset: header.base_offset + offset_delta,
            timestamp: timestamp(&header, timestamp_delta),
            key: key.map(|range| records.slice(range)),
            value: value.map(|range| records.slice(range)),
        });
        reader.at = end;
    }
    Ok(out)
}

impl Cursor<'_> {
    /// A varint length (-1 for null) and that many bytes, as a range of the buffer.
    /// `None` if malformed; `Some(None)` for null.
    fn nullable_bytes(&mut self) -> Option<Option<std::ops::Range<usize>>> {
        let length = self.varint()?;
        if length == -1 {
            return Some(None);
        }
        let length = usize::try_from(length).ok()?;
        let start = self.at;
        self.take(length)?;
        Some(Some(start..self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zigzag(out: &mut Vec<u8>, value: i64) {
        let mut raw = ((value << 1) ^ (value >> 63)) as u64;
        loop {
            let byte = (raw & 0x7f) as u8;
            raw >>= 7;
            if raw == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    /// Records with the given timestamp deltas (values of 100 bytes, so codecs have work).
    fn records(deltas: &[i64]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, delta) in deltas.iter().enumerate() {
            let mut record = vec![0u8];
            zigzag(&mut record, *delta);
            zigzag(&mut record, i as i64);
            zigzag(&mut record, -1); // null key
            zigzag(&mut record, 100);
            record.extend_from_slice(&[b'v'; 100]);
            zigzag(&mut record, 0); // no headers
            zigzag(&mut out, record.len() as i64);
            out.extend_from_slice(&record);
        }
        out
    }

    fn batch(codec: u8, payload: &[u8], count: i32, base_timestamp: i64, attributes_extra: i16) -> Vec<u8> {
        let template = batch::build_test_batch(count, b"x", base_timestamp);
        let mut out = template[..batch::BATCH_HEADER_BYTES].to_vec();
        out.extend_from_slice(payload);
        let length = (out.len() - 12) as i32;
        out[8..12].copy_from_slice(&length.to_be_bytes());
        out[21..23].copy_from_slice(&(i16::from(codec) | attributes_extra).to_be_bytes());
        out[0..8].copy_from_slice(&500i64.to_be_bytes());
        out
    }

    fn compress(codec: u8, raw: &[u8]) -> Vec<u8> {
        match codec {
            0 => raw.to_vec(),
            1 => {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(raw).unwrap();
                encoder.finish().unwrap()
            }
            2 => snap::raw::Encoder::new().compress_vec(raw).unwrap(),
            3 => {
                let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
                encoder.write_all(raw).unwrap();
                encoder.finish().unwrap()
            }
            4 => zstd::stream::encode_all(raw, 3).unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_codec_yields_each_records_offset_and_timestamp() {
        let deltas = [0, 7, 3, 20];
        let raw = records(&deltas);
        for codec in 0..=4u8 {
            let stamps = record_stamps(&batch(codec, &compress(codec, &raw), 4, 1_000, 0)).unwrap();
            let expected: Vec<RecordStamp> = deltas
                .iter()
                .enumerate()
                .map(|(i, d)| RecordStamp { offset: 500 + i as i64, timestamp: 1_000 + d })
                .collect();
            assert_eq!(stamps, expected, "codec {codec}");
        }
    }

    #[test]
    fn xerial_framed_snappy_is_read_block_by_block() {
        let raw = records(&[1, 2, 3]);
        let (first, second) = raw.split_at(raw.len() / 2);
        let mut payload = XERIAL_MAGIC.to_vec();
        payload.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        for part in [first, second] {
            let block = snap::raw::Encoder::new().compress_vec(part).unwrap();
            payload.extend_from_slice(&(block.len() as u32).to_be_bytes());
            payload.extend_from_slice(&block);
        }
        let stamps = record_stamps(&batch(2, &payload, 3, 10, 0)).unwrap();
        assert_eq!(stamps.iter().map(|s| s.timestamp).collect::<Vec<_>>(), vec![11, 12, 13]);
    }

    #[test]
    fn log_append_time_gives_every_record_the_batch_time() {
        let mut bytes = batch(0, &records(&[0, 5]), 2, 1_000, LOG_APPEND_TIME);
        bytes[35..43].copy_from_slice(&9_999i64.to_be_bytes()); // max timestamp
        let stamps = record_stamps(&bytes).unwrap();
        assert!(stamps.iter().all(|s| s.timestamp == 9_999), "{stamps:?}");
    }

    #[test]
    fn garbage_gives_errors_not_panics() {
        let raw = records(&[0, 1]);
        assert!(record_stamps(&batch(0, &raw[..raw.len() - 3], 2, 0, 0)).is_err());
        assert!(record_stamps(&batch(1, b"not gzip", 2, 0, 0)).is_err());
        assert!(record_stamps(&batch(2, b"\xff\xff\xff\xff\x0f", 2, 0, 0)).is_err());
        assert!(record_stamps(&batch(6, &raw, 2, 0, 0)).is_err());
        assert!(record_stamps(&batch(0, &raw, 1_000_000, 0, 0)).is_err(), "more records claimed than present");
        // A zstd bomb: 200 MiB of zeros in a few kilobytes.
        let bomb = zstd::stream::encode_all(std::io::repeat(0).take(200 << 20), 3).unwrap();
        assert_eq!(record_stamps(&batch(4, &bomb, 1, 0, 0)), Err(RecordError::TooLarge));
    }

    /// A record as the tests see it: offset, timestamp, key, value.
    type Seen<'a> = (i64, i64, Option<&'a [u8]>, Option<&'a [u8]>);
    /// A header: key, value.
    type Header<'a> = (&'a [u8], Option<&'a [u8]>);
    /// A record to write: timestamp delta, key, value, headers.
    type Fields<'a> = (i64, Option<&'a [u8]>, Option<&'a [u8]>, &'a [Header<'a>]);

    /// Records with keys, values and headers, written field by field.
    fn full_records() -> Vec<u8> {
        let mut out = Vec::new();
        let fields: [Fields<'_>; 3] = [
            (4, Some(b"key-0"), Some(b"value-0"), &[]),
            (9, None, Some(b""), &[(b"h", Some(b"hv")), (b"n", None)]),
            (2, Some(b""), None, &[(b"only", Some(b"x"))]),
        ];
        for (i, (delta, key, value, headers)) in fields.iter().enumerate() {
            let mut record = vec![0u8];
            zigzag(&mut record, *delta);
            zigzag(&mut record, i as i64);
            for field in [key, value] {
                match field {
                    Some(bytes) => {
                        zigzag(&mut record, bytes.len() as i64);
                        record.extend_from_slice(bytes);
                    }
                    None => zigzag(&mut record, -1),
                }
            }
            zigzag(&mut record, headers.len() as i64);
            for (name, header_value) in headers.iter() {
                zigzag(&mut record, name.len() as i64);
                record.extend_from_slice(name);
                match header_value {
                    Some(bytes) => {
                        zigzag(&mut record, bytes.len() as i64);
                        record.extend_from_slice(bytes);
                    }
                    None => zigzag(&mut record, -1),
                }
            }
            zigzag(&mut out, record.len() as i64);
            out.extend_from_slice(&record);
        }
        out
    }

    #[test]
    fn every_codec_yields_each_records_key_and_value() {
        let raw = full_records();
        for codec in 0..=4u8 {
            let records = decode_records(&batch(codec, &compress(codec, &raw), 3, 1_000, 0)).unwrap();
            let got: Vec<Seen<'_>> =
                records.iter().map(|r| (r.offset, r.timestamp, r.key.as_deref(), r.value.as_deref())).collect();
            let expected: Vec<Seen<'_>> = vec![
                (500, 1_004, Some(b"key-0"), Some(b"value-0")),
                (501, 1_009, None, Some(b"")),
                (502, 1_002, Some(b""), None),
            ];
            assert_eq!(got, expected, "codec {codec}");
        }
    }

    #[test]
    fn decoded_records_agree_with_their_stamps() {
        let bytes = batch(0, &records(&[3, 1, 4]), 3, 77, 0);
        let stamps = record_stamps(&bytes).unwrap();
        let decoded: Vec<RecordStamp> = decode_records(&bytes)
            .unwrap()
            .iter()
            .map(|r| RecordStamp { offset: r.offset, timestamp: r.timestamp })
            .collect();
        assert_eq!(decoded, stamps);
    }

    #[test]
    fn malformed_records_give_errors_not_panics() {
        let raw = full_records();
        assert!(decode_records(&batch(0, &raw[..raw.len() - 1], 3, 0, 0)).is_err());
        assert!(decode_records(&batch(0, &raw, 4, 0, 0)).is_err(), "more records claimed than present");
        assert!(decode_records(&batch(1, b"not gzip", 3, 0, 0)).is_err());
        assert!(decode_records(&batch(0, &raw, 3, 0, 0)[..40]).is_err());
        // A record whose length claims one byte more than its fields use.
        let mut padded = raw.clone();
        padded[0] += 2; // zigzag length + 1
        padded.insert(usize::from(padded[0] / 2), 0);
        assert_eq!(
            decode_records(&batch(0, &padded, 3, 0, 0)),
            Err(RecordError::Malformed { index: 0, message: "fields do not match the record length" })
        );
        // Every truncation and every single-byte corruption of the records section.
        for cut in 0..raw.len() {
            let _ = decode_records(&batch(0, &raw[..cut], 3, 0, 0));
        }
        for at in 0..raw.len() {
            for byte in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bad = raw.clone();
                bad[at] = byte;
                let _ = decode_records(&batch(0, &bad, 3, 0, 0));
            }
        }
    }
}
