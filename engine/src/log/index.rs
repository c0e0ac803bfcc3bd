//! Sparse offset and time indexes of one segment, with Kafka's `index.interval.bytes`
//! semantics, and their on-disk encoding (written when a segment is sealed or on clean stop).
//!
//! Pure data structures: no I/O here. The partition log decides when to persist them.
//!
//! Offset index entries map the base offset of a batch to its byte position in the segment;
//! time index entries map the largest timestamp seen so far to the base offset of the batch
//! that carried it. An entry is added once at least `index.interval.bytes` bytes were
//! appended since the previous entry (the first batch of a segment always gets one).
//!
//! File layout (integers big-endian; see docs/formats.md):
//! ```text
//! .index                                   .timeindex
//!  0  4 magic "CLOI"                        0  4 magic "CLTI"
//!  4  2 version (1)                         4  2 version (1)
//!  6  2 entry size (8)                      6  2 entry size (12)
//!  8  4 entry count                         8  4 entry count
//! 12  4 CRC32C of [0..12) ++ [16..end)     12  4 CRC32C of [0..12) ++ [16..end)
//! 16  8 segment data bytes                 16  … entries: timestamp i64, relative offset u32
//! 24  8 next offset
//! 32  8 max timestamp
//! 40  8 offset of max timestamp
//! 48  … entries: relative offset u32, position u32
//! ```

use crate::batch::BatchHeader;

const OFFSET_MAGIC: &[u8; 4] = b"CLOI";
const TIME_MAGIC: &[u8; 4] = b"CLTI";
const FORMAT_VERSION: u16 = 1;
const OFFSET_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 12;
const OFFSET_HEADER_BYTES: usize = 48;
const TIME_HEADER_BYTES: usize = 16;

/// What a segment holds, summarised; persisted in the offset index header so that a cleanly
/// sealed segment need not be scanned at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Bytes of batch data in the segment file.
    pub size_bytes: u64,
    /// One past the last offset in the segment (= base offset when empty).
    pub next_offset: i64,
    /// Largest batch `maxTimestamp` in the segment, -1 when empty.
    pub max_timestamp: i64,
    pub offset_of_max_timestamp: i64,
}

/// Why an index file was not trusted (it is then rebuilt by scanning the segment).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexDecodeError {
    #[error("index file too short ({0} bytes)")]
    TooShort(usize),
    #[error("bad magic or version")]
    BadMagic,
    #[error("entry count disagrees with file size")]
    BadCount,
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("entries are not increasing")]
    NotMonotonic,
}

/// The sparse indexes of one segment plus its running summary.
#[derive(Debug, Clone)]
pub struct SegmentIndex {
    base_offset: i64,
    index_interval_bytes: u64,
    bytes_since_entry: u64,
    /// (offset - base_offset, position)
    offsets: Vec<(u32, u32)>,
    /// (max timestamp so far, offset - base_offset)
    times: Vec<(i64, u32)>,
    summary: SegmentSummary,
}

impl SegmentIndex {
    pub fn new(base_offset: i64, index_interval_bytes: u64) -> Self {
        Self {
            base_offset,
            index_interval_bytes,
            bytes_since_entry: u64::MAX, // the first batch always gets an entry
            offsets: Vec::new(),
            times: Vec::new(),
            summary: SegmentSummary {
                size_bytes: 0,
                next_offset: base_offset,
                max_timestamp: -1,
                offset_of_max_timestamp: -1,
            },
        }
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    pub fn summary(&self) -> SegmentSummary {
        self.summary
    }

    pub fn entry_count(&self) -> usize {
        self.offsets.len()
    }

    /// Records a batch appended at `position`. Positions and offsets must increase.
    pub fn on_batch(&mut self, header: &BatchHeader, position: u64) {
        assert_eq!(position, self.summary.size_bytes, "batches are appended contiguously");
        assert!(header.base_offset >= self.summary.next_offset, "offsets must increase");
        let relative = u32::try_from(header.base_offset - self.base_offset)
            .unwrap_or_else(|_| panic!("relative offset overflow: segment must have rolled"));
        let position32 = u32::try_from(position).unwrap_or_else(|_| panic!("segment position {position} beyond 4 GiB"));
        if header.max_timestamp > self.summary.max_timestamp {
            self.summary.max_timestamp = header.max_timestamp;
            self.summary.offset_of_max_timestamp = header.base_offset;
        }
        if self.bytes_since_entry >= self.index_interval_bytes {
            self.offsets.push((relative, position32));
            let max_relative = (self.summary.offset_of_max_timestamp - self.base_offset).max(0) as u32;
            if self.times.last().is_none_or(|&(ts, _)| self.summary.max_timestamp > ts) {
                self.times.push((self.summary.max_timestamp, max_relative));
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry = self.bytes_since_entry.saturating_add(header.size_bytes as u64);
        self.summary.size_bytes = position + header.size_bytes as u64;
        self.summary.next_offset = header.next_offset();
    }

    /// The greatest indexed (offset, position) with offset ≤ `target`: where a scan for
    /// `target` starts. The segment start when nothing smaller is indexed.
    pub fn lookup_offset(&self, target: i64) -> (i64, u64) {
        let relative = target - self.base_offset;
        let at = self.offsets.partition_point(|&(rel, _)| i64::from(rel) <= relative);
        match at.checked_sub(1).map(|i| self.offsets[i]) {
            Some((rel, pos)) => (self.base_offset + i64::from(rel), u64::from(pos)),
            None => (self.base_offset, 0),
        }
    }

    /// An offset from which a forward scan finds the first batch whose max timestamp is
    /// ≥ `target_timestamp`: every batch up to and including the returned offset's batch
    /// has a smaller max timestamp... so the scan may start at its index position.
    pub fn lookup_timestamp(&self, target_timestamp: i64) -> i64 {
        let at = self.times.partition_point(|&(ts, _)| ts < target_timestamp);
        match at.checked_sub(1).map(|i| self.times[i]) {
            Some((_, rel)) => self.base_offset + i64::from(rel),
            None => self.base_offset,
        }
    }

    /// Encodes the offset index file (summary + entries).
    pub fn encode_offset_index(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(OFFSET_HEADER_BYTES + self.offsets.len() * OFFSET_ENTRY_BYTES);
        out.extend_from_slice(OFFSET_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&(OFFSET_ENTRY_BYTES as u16).to_be_bytes());
        out.extend_from_slice(&(self.offsets.len() as u32).to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.summary.size_bytes.to_be_bytes());
        out.extend_from_slice(&self.summary.next_offset.to_be_bytes());
        out.extend_from_slice(&self.summary.max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.summary.offset_of_max_timestamp.to_be_bytes());
        for &(rel, pos) in &self.offsets {
            out.extend_from_slice(&rel.to_be_bytes());
            out.extend_from_slice(&pos.to_be_bytes());
        }
        seal_checksum(&mut out);
        out
    }

    /// Encodes the time index file.
    pub fn encode_time_index(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TIME_HEADER_BYTES + self.times.len() * TIME_ENTRY_BYTES);
        out.extend_from_slice(TIME_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&(TIME_ENTRY_BYTES as u16).to_be_bytes());
        out.extend_from_slice(&(self.times.len() as u32).to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        for &(ts, rel) in &self.times {
            out.extend_from_slice(&ts.to_be_bytes());
            out.extend_from_slice(&rel.to_be_bytes());
        }
        seal_checksum(&mut out);
        out
    }

    /// Decodes both index files of a sealed segment. Any inconsistency is an error, and the
    /// caller rebuilds the index by scanning the segment instead.
    pub fn decode(
        base_offset: i64,
        index_interval_bytes: u64,
        offset_file: &[u8],
        time_file: &[u8],
    ) -> Result<Self, IndexDecodeError> {
        let offset_count = check_file(offset_file, OFFSET_MAGIC, OFFSET_ENTRY_BYTES, OFFSET_HEADER_BYTES)?;
        let time_count = check_file(time_file, TIME_MAGIC, TIME_ENTRY_BYTES, TIME_HEADER_BYTES)?;
        let u64_at = |b: &[u8], at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&b[at..at + 8]);
            u64::from_be_bytes(raw)
        };
        let u32_at = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let summary = SegmentSummary {
            size_bytes: u64_at(offset_file, 16),
            next_offset: u64_at(offset_file, 24) as i64,
            max_timestamp: u64_at(offset_file, 32) as i64,
            offset_of_max_timestamp: u64_at(offset_file, 40) as i64,
        };
        let offsets: Vec<(u32, u32)> = (0..offset_count)
            .map(|i| OFFSET_HEADER_BYTES + i * OFFSET_ENTRY_BYTES)
            .map(|at| (u32_at(offset_file, at), u32_at(offset_file, at + 4)))
            .collect();
        let times: Vec<(i64, u32)> = (0..time_count)
            .map(|i| TIME_HEADER_BYTES + i * TIME_ENTRY_BYTES)
            .map(|at| (u64_at(time_file, at) as i64, u32_at(time_file, at + 8)))
            .collect();
        let increasing_offsets = offsets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        let increasing_times = times.windows(2).all(|w| w[0].0 < w[1].0);
        let within = offsets.iter().all(|&(rel, pos)| {
            base_offset + i64::from(rel) < summary.next_offset && u64::from(pos) < summary.size_bytes
        });
        if !increasing_offsets || !increasing_times || !within || summary.next_offset < base_offset {
            return Err(IndexDecodeError::NotMonotonic);
        }
        Ok(Self { base_offset, index_interval_bytes, bytes_since_entry: 0, offsets, times, summary })
    }
}

fn seal_checksum(out: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[0..12]), &out[16..]);
    out[12..16].copy_from_slice(&crc.to_be_bytes());
}

fn check_file(
    file: &[u8],
    magic: &[u8; 4],
    entry_bytes: usize,
    header_bytes: usize,
) -> Result<usize, IndexDecodeError> {
    if file.len() < header_bytes {
        return Err(IndexDecodeError::TooShort(file.len()));
    }
    let version = u16::from_be_bytes([file[4], file[5]]);
    let entry_size = u16::from_be_bytes([file[6], file[7]]);
    if &file[0..4] != magic || version != FORMAT_VERSION || usize::from(entry_size) != entry_bytes {
        return Err(IndexDecodeError::BadMagic);
    }
    let count = u32::from_be_bytes([file[8], file[9], file[10], file[11]]) as usize;
    if header_bytes + count * entry_bytes != file.len() {
        return Err(IndexDecodeError::BadCount);
    }
    let stored = u32::from_be_bytes([file[12], file[13], file[14], file[15]]);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&file[0..12]), &file[16..]);
    if stored != computed {
        return Err(IndexDecodeError::BadChecksum);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(base_offset: i64, records: i32, size_bytes: usize, max_timestamp: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            size_bytes,
            partition_leader_epoch: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: max_timestamp,
            max_timestamp,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            record_count: records,
        }
    }

    /// 10 batches of 10 records, 100 bytes each, timestamps 1000, 1010, ... at base 500.
    fn sample(interval: u64) -> SegmentIndex {
        let mut index = SegmentIndex::new(500, interval);
        for i in 0..10i64 {
            index.on_batch(&header(500 + i * 10, 10, 100, 1000 + i * 10), (i * 100) as u64);
        }
        index
    }

    #[test]
    fn entries_follow_index_interval_bytes() {
        assert_eq!(sample(0).entry_count(), 10);
        assert_eq!(sample(250).entry_count(), 4); // positions 0, 300, 600, 900
        assert_eq!(sample(1 << 20).entry_count(), 1);
    }

    #[test]
    fn offset_lookup_returns_the_floor_entry() {
        let index = sample(250);
        assert_eq!(index.lookup_offset(0), (500, 0));
        assert_eq!(index.lookup_offset(500), (500, 0));
        assert_eq!(index.lookup_offset(529), (500, 0));
        assert_eq!(index.lookup_offset(530), (530, 300));
        assert_eq!(index.lookup_offset(575), (560, 600));
        assert_eq!(index.lookup_offset(10_000), (590, 900));
        let s = index.summary();
        assert_eq!((s.size_bytes, s.next_offset, s.max_timestamp), (1000, 600, 1090));
    }

    #[test]
    fn time_lookup_never_skips_the_first_batch_at_or_after_the_target() {
        let index = sample(250);
        // Batch i holds timestamps 1000 + 10 i; the first batch with max ≥ T is the answer.
        for target in [0, 1000, 1001, 1030, 1031, 1089, 1090, 5000] {
            let start = index.lookup_timestamp(target);
            let answer = (0..10).map(|i| 500 + i * 10).find(|o| 1000 + (o - 500) >= target);
            if let Some(answer) = answer {
                assert!(start <= answer, "target {target}: start {start} after answer {answer}");
            }
        }
        assert_eq!(index.lookup_timestamp(1031), 530);
    }

    #[test]
    fn a_decreasing_timestamp_adds_no_time_entry() {
        let mut index = SegmentIndex::new(0, 0);
        index.on_batch(&header(0, 1, 100, 50), 0);
        index.on_batch(&header(1, 1, 100, 40), 100);
        index.on_batch(&header(2, 1, 100, 60), 200);
        assert_eq!(index.times, vec![(50, 0), (60, 2)]);
        assert_eq!(index.summary().offset_of_max_timestamp, 2);
    }

    #[test]
    fn files_round_trip_and_corruption_is_detected() {
        let index = sample(250);
        let offsets = index.encode_offset_index();
        let times = index.encode_time_index();
        let back = SegmentIndex::decode(500, 250, &offsets, &times).unwrap();
        assert_eq!(back.offsets, index.offsets);
        assert_eq!(back.times, index.times);
        assert_eq!(back.summary(), index.summary());

        let mut flipped = offsets.clone();
        flipped[50] ^= 1;
        assert_eq!(SegmentIndex::decode(500, 250, &flipped, &times).unwrap_err(), IndexDecodeError::BadChecksum);
        assert!(SegmentIndex::decode(500, 250, &offsets[..offsets.len() - 3], &times).is_err());
        assert!(SegmentIndex::decode(500, 250, &[], &times).is_err());
        assert!(SegmentIndex::decode(500, 250, &times, &offsets).is_err());
    }

    #[test]
    fn golden_offset_index_bytes() {
        let mut index = SegmentIndex::new(100, 0);
        index.on_batch(&header(100, 2, 80, 7), 0);
        let file = index.encode_offset_index();
        assert_eq!(&file[0..12], b"CLOI\x00\x01\x00\x08\x00\x00\x00\x01");
        assert_eq!(&file[16..24], &80u64.to_be_bytes());
        assert_eq!(&file[24..32], &102u64.to_be_bytes());
        assert_eq!(&file[48..56], &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(file.len(), 56);
    }
}
