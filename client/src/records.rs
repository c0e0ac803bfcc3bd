//! Kafka record batches (magic v2) as a client writes and reads them: a builder that
//! encodes records and compresses them (gzip, snappy, lz4, zstd), and a reader for what a
//! Fetch returns (several batches, the last perhaps cut short, control batches skipped).
//!
//! ```text
//! batch  base offset i64 | length i32 | leader epoch i32 | magic i8 = 2 | crc u32 (crc32c of
//!        what follows) | attributes i16 | last offset delta i32 | first timestamp i64
//!        | max timestamp i64 | producer id i64 | producer epoch i16 | base sequence i32
//!        | record count i32 | records (compressed as the attributes' low 3 bits say)
//! record length varint | attributes i8 | timestamp delta varint | offset delta varint
//!        | key varint-length bytes (-1 null) | value (same) | header count varint
//!        | headers (key varint-length string, value varint-length bytes)
//! ```

use std::io::{Read, Write};

use bytes::Bytes;

use crate::Error;

const HEADER_BYTES: usize = 61;
const MAGIC: u8 = 2;
/// Bytes a batch may decompress to in this client (a corrupt or hostile batch is refused).
const DECOMPRESSED_BYTES_MAX: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    pub fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Codec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Codec::None),
            "gzip" => Ok(Codec::Gzip),
            "snappy" => Ok(Codec::Snappy),
            "lz4" => Ok(Codec::Lz4),
            "zstd" => Ok(Codec::Zstd),
            other => Err(format!("unknown compression `{other}`: none, gzip, snappy, lz4 or zstd")),
        }
    }
}

/// A record header: key and (nullable) value.
pub type Header = (String, Option<Bytes>);

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// The producer identity of an idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

/// Records encoded as they are pushed; [`BatchBuilder::finish`] compresses and frames them.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    records: Vec<u8>,
    count: i32,
    first_timestamp: i64,
    max_timestamp: i64,
    scratch: Vec<u8>,
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of encoded records so far (before compression).
    pub fn size_bytes(&self) -> usize {
        HEADER_BYTES + self.records.len()
    }

    pub fn push(&mut self, timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>, headers: &[Header]) {
        if self.count == 0 {
            self.first_timestamp = timestamp;
            self.max_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let body = &mut self.scratch;
        body.clear();
        body.push(0);
        put_varint(body, timestamp - self.first_timestamp);
        put_varint(body, i64::from(self.count));
        put_nullable(body, key);
        put_nullable(body, value);
        put_varint(body, headers.len() as i64);
        for (key, value) in headers {
            put_nullable(body, Some(key.as_bytes()));
            put_nullable(body, value.as_deref());
        }
        put_varint(&mut self.records, body.len() as i64);
        self.records.extend_from_slice(body);
        self.count += 1;
    }

    /// The batch (base offset 0, for the broker to assign), compressed with `codec`.
    pub fn finish(&self, codec: Codec, producer: Option<ProducerStamp>) -> Result<Vec<u8>, Error> {
        // Uncompressed records go straight into the batch (one copy, not two).
        let compressed = match codec {
            Codec::None => std::borrow::Cow::Borrowed(&self.records[..]),
            _ => std::borrow::Cow::Owned(compress(codec, &self.records)?),
        };
        let mut out = Vec::with_capacity(HEADER_BYTES + compressed.len());
        out.extend_from_slice(&0i64.to_be_bytes());
        let length = i32::try_from(HEADER_BYTES - 12 + compressed.len())
            .map_err(|_| Error::Invalid("a batch over 2 GiB".into()))?;
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
        out.push(MAGIC);
        out.extend_from_slice(&[0; 4]); // crc, below
        out.extend_from_slice(&i16::from(codec.id()).to_be_bytes());
        out.extend_from_slice(&(self.count - 1).to_be_bytes());
        out.extend_from_slice(&self.first_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        let stamp = producer.unwrap_or(ProducerStamp { producer_id: -1, epoch: -1, base_sequence: -1 });
        out.extend_from_slice(&stamp.producer_id.to_be_bytes());
        out.extend_from_slice(&stamp.epoch.to_be_bytes());
        out.extend_from_slice(&stamp.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&compressed);
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }
}

fn compress(codec: Codec, records: &[u8]) -> Result<Vec<u8>, Error> {
    let failed = |e: std::io::Error| Error::Invalid(format!("{} compression failed: {e}", codec.name()));
    match codec {
        Codec::None => Ok(records.to_vec()),
        Codec::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(records).map_err(failed)?;
            encoder.finish().map_err(failed)
        }
        Codec::Snappy => snap::raw::Encoder::new()
            .compress_vec(records)
            .map_err(|e| Error::Invalid(format!("snappy compression failed: {e}"))),
        Codec::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(records).map_err(failed)?;
            encoder.finish().map_err(|e| Error::Invalid(format!("lz4 compression failed: {e}")))
        }
        Codec::Zstd => zstd::bulk::compress(records, 1).map_err(failed),
    }
}

fn decompress(codec: u8, payload: &[u8]) -> Result<Vec<u8>, String> {
    let bounded = |reader: &mut dyn Read| {
        let mut out = Vec::new();
        reader.take(DECOMPRESSED_BYTES_MAX as u64 + 1).read_to_end(&mut out).map_err(|e| e.to_string())?;
        if out.len() > DECOMPRESSED_BYTES_MAX { Err("decompresses to too much".to_string()) } else { Ok(out) }
    };
    match codec {
        0 => Ok(payload.to_vec()),
        1 => bounded(&mut flate2::read::MultiGzDecoder::new(payload)),
        2 => {
            let len = snap::raw::decompress_len(payload).map_err(|e| e.to_string())?;
            if len > DECOMPRESSED_BYTES_MAX {
                return Err("decompresses to too much".into());
            }
            snap::raw::Decoder::new().decompress_vec(payload).map_err(|e| e.to_string())
        }
        3 => bounded(&mut lz4_flex::frame::FrameDecoder::new(payload)),
        4 => bounded(&mut zstd::stream::read::Decoder::new(payload).map_err(|e| e.to_string())?),
        other => Err(format!("unknown compression codec {other}")),
    }
}

/// Every record of the whole batches in `bytes` (a Fetch partition's records); a batch cut
/// short at the end is left out, control batches are skipped, records before `from` (in
/// a batch that starts earlier) are dropped.
pub fn decode(bytes: &Bytes, from: i64) -> Result<Vec<Record>, Error> {
    let malformed = |reason: String| Error::Malformed { address: String::new(), api: "Fetch", reason };
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER_BYTES {
        let batch = &bytes[at..];
        let base_offset = i64::from_be_bytes(batch[0..8].try_into().unwrap_or_default());
        let length = i32::from_be_bytes(batch[8..12].try_into().unwrap_or_default());
        let size = usize::try_from(length).ok().map(|l| l + 12).filter(|s| *s >= HEADER_BYTES);
        let Some(size) = size else { return Err(malformed(format!("batch length {length}"))) };
        if size > batch.len() {
            break; // cut short by the fetch's size limit
        }
        let batch_start = at;
        at += size;
        let batch = &batch[..size];
        if batch[16] != MAGIC {
            return Err(malformed(format!("record batch magic {}", batch[16])));
        }
        let crc = u32::from_be_bytes(batch[17..21].try_into().unwrap_or_default());
        if crc32c::crc32c(&batch[21..]) != crc {
            return Err(malformed(format!("CRC mismatch in the batch at offset {base_offset}")));
        }
        let attributes = i16::from_be_bytes(batch[21..23].try_into().unwrap_or_default());
        if attributes & 0x20 != 0 {
            continue; // control batch (transaction markers)
        }
        let first_timestamp = i64::from_be_bytes(batch[27..35].try_into().unwrap_or_default());
        let max_timestamp = i64::from_be_bytes(batch[35..43].try_into().unwrap_or_default());
        let log_append_time = attributes & 0x08 != 0;
        let count = i32::from_be_bytes(batch[57..61].try_into().unwrap_or_default());
        let codec = (attributes & 0x07) as u8;
        // Uncompressed records are read in place (the keys and values share the fetch's buffer).
        let records = if codec == 0 {
            bytes.slice(batch_start + HEADER_BYTES..batch_start + size)
        } else {
            Bytes::from(decompress(codec, &batch[HEADER_BYTES..]).map_err(malformed)?)
        };
        let mut reader = Reader { bytes: &records, at: 0 };
        for index in 0..count.max(0) {
            let bad = |what: &str| malformed(format!("record {index} at offset {base_offset}: {what}"));
            let length = reader.varint().ok_or_else(|| bad("length"))?;
            let end = usize::try_from(length).ok().and_then(|l| reader.at.checked_add(l));
            let end = end.filter(|e| *e <= records.len()).ok_or_else(|| bad("length"))?;
            let mut record = Reader { bytes: &records[..end], at: reader.at };
            record.take(1).ok_or_else(|| bad("attributes"))?;
            let timestamp_delta = record.varint().ok_or_else(|| bad("timestamp"))?;
            let offset_delta = record.varint().ok_or_else(|| bad("offset"))?;
            let key = record.nullable(&records).ok_or_else(|| bad("key"))?;
            let value = record.nullable(&records).ok_or_else(|| bad("value"))?;
            let header_count = record.varint().filter(|c| *c >= 0).ok_or_else(|| bad("header count"))?;
            let mut headers = Vec::with_capacity((header_count as usize).min(64));
            for _ in 0..header_count {
                let key = record.nullable(&records).flatten().ok_or_else(|| bad("header key"))?;
                let value = record.nullable(&records).ok_or_else(|| bad("header value"))?;
                headers.push((String::from_utf8_lossy(&key).into_owned(), value));
            }
            reader.at = end;
            let offset = base_offset + offset_delta;
            if offset >= from {
                let timestamp = if log_append_time { max_timestamp } else { first_timestamp + timestamp_delta };
                out.push(Record { offset, timestamp, key, value, headers });
            }
        }
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<(usize, usize)> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len())?;
        let range = (self.at, end);
        self.at = end;
        Some(range)
    }

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

    /// Varint-length bytes (-1: null), sharing `all`'s buffer. Outer None: malformed.
    fn nullable(&mut self, all: &Bytes) -> Option<Option<Bytes>> {
        let length = self.varint()?;
        if length < 0 {
            return Some(None);
        }
        let (start, end) = self.take(usize::try_from(length).ok()?)?;
        Some(Some(all.slice(start..end)))
    }
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn put_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(bytes) => {
            put_varint(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_with_every_codec() {
        for codec in [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let mut builder = BatchBuilder::new();
            builder.push(1_000, Some(b"k1"), Some(&b"v".repeat(500)), &[("h".into(), Some(Bytes::from_static(b"x")))]);
            builder.push(1_005, None, None, &[("n".into(), None)]);
            let stamp = ProducerStamp { producer_id: 7, epoch: 1, base_sequence: 40 };
            let mut batch = builder.finish(codec, Some(stamp)).unwrap();
            // The broker would assign offsets: base 100.
            batch[0..8].copy_from_slice(&100i64.to_be_bytes());
            let records = decode(&Bytes::from(batch.clone()), 0).unwrap();
            assert_eq!(records.len(), 2, "{codec:?}");
            assert_eq!((records[0].offset, records[0].timestamp), (100, 1_000));
            assert_eq!(records[0].value.as_deref(), Some(&b"v".repeat(500)[..]));
            assert_eq!(records[0].headers, vec![("h".to_string(), Some(Bytes::from_static(b"x")))]);
            assert_eq!((records[1].offset, records[1].timestamp, records[1].key.clone()), (101, 1_005, None));
            // From offset 101, and a second batch cut short is left out.
            let mut two = batch.clone();
            two.extend_from_slice(&batch[..batch.len() - 3]);
            let from = decode(&Bytes::from(two), 101).unwrap();
            assert_eq!(from.len(), 1);
            // A flipped bit is a CRC error, not garbage.
            let mut bad = batch;
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(decode(&Bytes::from(bad), 0).is_err());
        }
    }
}
