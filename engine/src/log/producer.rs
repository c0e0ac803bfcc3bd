//! Idempotent-producer state of one partition: for each producer id, its epoch and the
//! sequence ranges and offsets of its last five batches (Kafka's
//! `max.in.flight.requests.per.connection` bound for idempotence).
//!
//! Rules (Kafka's): a batch whose sequence range equals one of the last five is a duplicate
//! and is answered with its original offsets, nothing appended; otherwise its first sequence
//! must follow the last one (wrapping after `i32::MAX`), else OUT_OF_ORDER_SEQUENCE_NUMBER; an
//! older epoch is INVALID_PRODUCER_EPOCH; a newer epoch starts again at sequence 0; a producer
//! the partition does not know must start at sequence 0, else UNKNOWN_PRODUCER_ID (clients
//! then reset their sequences, KIP-360).
//!
//! Pure state, no I/O. Persistence: [`ProducerStates::encode`] snapshots only batches below
//! the durable end (so a batch lost in a crash is never reported as a duplicate), and
//! recovery replays the batches it scans from the snapshot's offset on.
//!
//! Snapshot file `producer-state` (big-endian):
//! ```text
//! 0  4 magic "CLPS"   4 2 version (1)   6 8 covered offset (batches below it are included)
//! 14 4 producer count, then per producer: id i64, epoch i16, batch count u8, and per batch:
//!      first sequence i32, last sequence i32, base offset i64, last offset i64
//! end: CRC32C of everything before it (u32)
//! ```

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;

/// Batches remembered per producer.
pub const BATCHES_KEPT: usize = 5;
const MAGIC: &[u8; 4] = b"CLPS";
const VERSION: u16 = 1;

/// Kafka error codes of sequence failures.
pub mod kafka_error {
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencedBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<SequencedBatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not idempotent, or the next batch of its producer: append it.
    Append,
    /// Already in the log: answer with these offsets.
    Duplicate(SequencedBatch),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer {producer_id}: epoch {epoch} is older than the current {current}")]
    InvalidEpoch { producer_id: i64, epoch: i16, current: i16 },
    #[error("producer {producer_id}: sequence {got} where {expected} was expected")]
    OutOfOrder { producer_id: i64, expected: i32, got: i32 },
    #[error("producer {producer_id} is unknown and its batch starts at sequence {got}, not 0")]
    UnknownProducer { producer_id: i64, got: i32 },
}

impl SequenceError {
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            SequenceError::InvalidEpoch { .. } => kafka_error::INVALID_PRODUCER_EPOCH,
            SequenceError::OutOfOrder { .. } => kafka_error::OUT_OF_ORDER_SEQUENCE_NUMBER,
            SequenceError::UnknownProducer { .. } => kafka_error::UNKNOWN_PRODUCER_ID,
        }
    }
}

fn last_sequence(header: &BatchHeader) -> i32 {
    ((i64::from(header.base_sequence) + i64::from(header.last_offset_delta)) % (i64::from(i32::MAX) + 1)) as i32
}

fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX { 0 } else { sequence + 1 }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    entries: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decides what to do with a validated batch (its `base_offset` not yet assigned).
    pub fn check(&self, header: &BatchHeader) -> Result<Verdict, SequenceError> {
        if header.producer_id < 0 {
            return Ok(Verdict::Append);
        }
        let producer_id = header.producer_id;
        let got = header.base_sequence;
        let Some(entry) = self.entries.get(&producer_id) else {
            return if got == 0 {
                Ok(Verdict::Append)
            } else {
                Err(SequenceError::UnknownProducer { producer_id, got })
            };
        };
        if header.producer_epoch < entry.epoch {
            return Err(SequenceError::InvalidEpoch {
                producer_id,
                epoch: header.producer_epoch,
                current: entry.epoch,
            });
        }
        if header.producer_epoch > entry.epoch {
            return if got == 0 {
                Ok(Verdict::Append)
            } else {
                Err(SequenceError::OutOfOrder { producer_id, expected: 0, got })
            };
        }
        let last = last_sequence(header);
        if let Some(duplicate) = entry.batches.iter().find(|b| b.first_sequence == got && b.last_sequence == last) {
            return Ok(Verdict::Duplicate(*duplicate));
        }
        let expected = entry.batches.back().map_or(0, |b| next_sequence(b.last_sequence));
        if got == expected {
            Ok(Verdict::Append)
        } else {
            Err(SequenceError::OutOfOrder { producer_id, expected, got })
        }
    }

    /// Records an appended batch (its `base_offset` assigned).
    pub fn record(&mut self, header: &BatchHeader) {
        if header.producer_id < 0 {
            return;
        }
        let entry = self.entries.entry(header.producer_id).or_default();
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(SequencedBatch {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
        });
        while entry.batches.len() > BATCHES_KEPT {
            entry.batches.pop_front();
        }
    }

    /// The snapshot of every batch below `covered_offset` (the durable end).
    pub fn encode(&self, covered_offset: i64) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&covered_offset.to_be_bytes());
        let mut producers: Vec<(&i64, &ProducerEntry)> = self.entries.iter().collect();
        producers.sort_by_key(|(id, _)| **id);
        let count_at = out.len();
        out.extend_from_slice(&0u32.to_be_bytes());
        let mut count = 0u32;
        for (id, entry) in producers {
            let kept: Vec<&SequencedBatch> = entry.batches.iter().filter(|b| b.last_offset < covered_offset).collect();
            if kept.is_empty() {
                continue;
            }
            count += 1;
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&entry.epoch.to_be_bytes());
            out.push(kept.len() as u8);
            for batch in kept {
                out.extend_from_slice(&batch.first_sequence.to_be_bytes());
                out.extend_from_slice(&batch.last_sequence.to_be_bytes());
                out.extend_from_slice(&batch.base_offset.to_be_bytes());
                out.extend_from_slice(&batch.last_offset.to_be_bytes());
            }
        }
        out[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Reads a snapshot: the offset it covers and the states. `None` if it is damaged.
    pub fn decode(bytes: &[u8]) -> Option<(i64, Self)> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut reader = Reader { bytes: body, at: 0 };
        if reader.take(4)? != MAGIC || u16::from_be_bytes(reader.take(2)?.try_into().ok()?) != VERSION {
            return None;
        }
        let covered = reader.i64()?;
        let count = reader.u32()?;
        let mut states = Self::default();
        for _ in 0..count {
            let id = reader.i64()?;
            let epoch = i16::from_be_bytes(reader.take(2)?.try_into().ok()?);
            let batches = reader.take(1)?[0];
            let mut entry = ProducerEntry { epoch, batches: VecDeque::new() };
            for _ in 0..batches {
                entry.batches.push_back(SequencedBatch {
                    first_sequence: reader.u32()? as i32,
                    last_sequence: reader.u32()? as i32,
                    base_offset: reader.i64()?,
                    last_offset: reader.i64()?,
                });
            }
            states.entries.insert(id, entry);
        }
        (reader.at == body.len()).then_some((covered, states))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.at..self.at + n)?;
        self.at += n;
        Some(out)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: i64, epoch: i16, first: i32, records: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            size_bytes: 100,
            partition_leader_epoch: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence: first,
            record_count: records,
        }
    }

    fn append(states: &mut ProducerStates, header: BatchHeader) -> Result<Verdict, SequenceError> {
        let verdict = states.check(&header)?;
        if verdict == Verdict::Append {
            states.record(&header);
        }
        Ok(verdict)
    }

    #[test]
    fn sequences_duplicates_gaps_and_epochs() {
        let mut states = ProducerStates::default();
        assert_eq!(append(&mut states, batch(-1, -1, -1, 3, 0)), Ok(Verdict::Append), "not idempotent");
        assert_eq!(append(&mut states, batch(7, 0, 0, 3, 3)), Ok(Verdict::Append));
        assert_eq!(append(&mut states, batch(7, 0, 3, 2, 6)), Ok(Verdict::Append));
        let duplicate = append(&mut states, batch(7, 0, 0, 3, 99)).unwrap();
        assert_eq!(
            duplicate,
            Verdict::Duplicate(SequencedBatch { first_sequence: 0, last_sequence: 2, base_offset: 3, last_offset: 5 })
        );
        let gap = append(&mut states, batch(7, 0, 9, 1, 8)).unwrap_err();
        assert_eq!(gap.kafka_error_code(), kafka_error::OUT_OF_ORDER_SEQUENCE_NUMBER);
        assert_eq!(
            append(&mut states, batch(8, 0, 4, 1, 8)).unwrap_err().kafka_error_code(),
            kafka_error::UNKNOWN_PRODUCER_ID
        );
        // a bumped epoch restarts at 0; the old epoch is then fenced
        assert_eq!(append(&mut states, batch(7, 1, 0, 1, 8)), Ok(Verdict::Append));
        assert_eq!(
            append(&mut states, batch(7, 0, 5, 1, 9)).unwrap_err().kafka_error_code(),
            kafka_error::INVALID_PRODUCER_EPOCH
        );
        assert_eq!(
            append(&mut states, batch(7, 2, 3, 1, 9)).unwrap_err().kafka_error_code(),
            kafka_error::OUT_OF_ORDER_SEQUENCE_NUMBER
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut states = ProducerStates::default();
        for i in 0..7 {
            append(&mut states, batch(1, 0, i, 1, i64::from(i))).unwrap();
        }
        assert!(matches!(append(&mut states, batch(1, 0, 2, 1, 50)), Ok(Verdict::Duplicate(_))));
        assert!(append(&mut states, batch(1, 0, 1, 1, 50)).is_err(), "older than the last five");
        let mut states = ProducerStates::default();
        append(&mut states, batch(2, 0, 0, 1, 0)).unwrap();
        states.entries.get_mut(&2).unwrap().batches.back_mut().unwrap().last_sequence = i32::MAX - 1;
        assert_eq!(append(&mut states, batch(2, 0, i32::MAX, 3, 1)), Ok(Verdict::Append));
        assert_eq!(states.entries[&2].batches.back().unwrap().last_sequence, 1, "wrapped");
        assert_eq!(append(&mut states, batch(2, 0, 2, 1, 4)), Ok(Verdict::Append));
    }

    #[test]
    fn snapshots_keep_only_covered_batches_and_detect_damage() {
        let mut states = ProducerStates::default();
        append(&mut states, batch(5, 3, 0, 2, 0)).unwrap();
        append(&mut states, batch(5, 3, 2, 2, 2)).unwrap();
        append(&mut states, batch(6, 0, 0, 1, 4)).unwrap();
        let encoded = states.encode(4);
        let (covered, decoded) = ProducerStates::decode(&encoded).unwrap();
        assert_eq!(covered, 4);
        assert_eq!(decoded.entries[&5].batches.len(), 2);
        assert!(!decoded.entries.contains_key(&6), "batch at offset 4 is not covered");
        let mut damaged = encoded.clone();
        damaged[10] ^= 1;
        assert!(ProducerStates::decode(&damaged).is_none());
        assert!(ProducerStates::decode(&encoded[..encoded.len() - 1]).is_none());
        assert_eq!(ProducerStates::decode(&states.encode(100)).unwrap().1, states);
    }
}
