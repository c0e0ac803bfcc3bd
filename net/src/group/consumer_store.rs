//! The records of consumer-protocol (KIP-848) groups in `__consumer_offsets`, in Apache
//! Kafka's own schemas, so that a coordinator restart keeps every member, its epoch and its
//! partitions. A group is several records, each replaced (or deleted by a tombstone) on its
//! own when it changes:
//!
//! ```text
//! key (i16 version = record type, then non-flexible STRINGs: i16 length + UTF-8)
//!   3 group epoch          group
//!   5 member metadata      group | member_id
//!   6 target epoch         group
//!   7 target of a member   group | member_id
//!   8 member's assignment  group | member_id
//!
//! value (i16 version 0, flexible: COMPACT_STRING = uvarint length+1 then UTF-8, 0 = null;
//!        COMPACT_ARRAY = uvarint count+1; every struct ends with tagged fields)
//!   3 epoch i32 | tags { 0: metadata_hash i64 }
//!   5 instance_id? | rack_id? | client_id | client_host | subscribed_topic_names [STRING]
//!     | subscribed_topic_regex? | rebalance_timeout_ms i32 | server_assignor? | tags {}
//!   6 assignment_epoch i32 | tags {}
//!   7 topic_partitions [topic_id UUID(16) | partitions [i32] | tags {}] | tags {}
//!   8 member_epoch i32 | previous_member_epoch i32 | state i8
//!     | assigned [topic partitions] | pending_revocation [topic partitions] | tags {}
//! ```
//! Topics are named by id, so a topic deleted and created again under the same name is not
//! mistaken for the old one. Key type 4 (partition metadata) is not written: the metadata
//! hash replaces it, as in Kafka 4.1. Unknown tagged fields are skipped when read.

use super::store::{Reader, STRING_BYTES_MAX, StoreError, put_i16, put_i32, put_i64, put_string};

pub type TopicId = [u8; 16];
/// Partitions by topic id.
pub type TopicPartitions = Vec<(TopicId, Vec<i32>)>;

pub const GROUP_EPOCH_KEY: i16 = 3;
pub const MEMBER_METADATA_KEY: i16 = 5;
pub const TARGET_EPOCH_KEY: i16 = 6;
pub const TARGET_MEMBER_KEY: i16 = 7;
pub const CURRENT_ASSIGNMENT_KEY: i16 = 8;
const VALUE_VERSION: i16 = 0;
const METADATA_HASH_TAG: u64 = 0;

/// Kafka's `MemberState`.
pub mod member_state {
    pub const STABLE: i8 = 0;
    pub const UNREVOKED_PARTITIONS: i8 = 1;
    pub const UNRELEASED_PARTITIONS: i8 = 2;
}

/// A member's subscription and identity (Kafka's `ConsumerGroupMemberMetadataValue`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberMetadata {
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub server_assignor: Option<String>,
}

/// What a member owns now (Kafka's `ConsumerGroupCurrentMemberAssignmentValue`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CurrentAssignment {
    /// -2 for a static member that left for a while.
    pub member_epoch: i32,
    pub previous_member_epoch: i32,
    pub state: i8,
    pub assigned: TopicPartitions,
    pub pending_revocation: TopicPartitions,
}

/// One record of a consumer-protocol group; `value: None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerRecord {
    /// (group epoch, hash of the subscribed topics' metadata the target was computed with)
    GroupEpoch {
        group: String,
        value: Option<(i32, i64)>,
    },
    MemberMetadata {
        group: String,
        member_id: String,
        value: Option<MemberMetadata>,
    },
    TargetEpoch {
        group: String,
        value: Option<i32>,
    },
    TargetMember {
        group: String,
        member_id: String,
        value: Option<TopicPartitions>,
    },
    CurrentAssignment {
        group: String,
        member_id: String,
        value: Option<CurrentAssignment>,
    },
}

const KEY: &str = "consumer group record key";
const VALUE: &str = "consumer group record value";

impl ConsumerRecord {
    pub fn group(&self) -> &str {
        match self {
            ConsumerRecord::GroupEpoch { group, .. }
            | ConsumerRecord::MemberMetadata { group, .. }
            | ConsumerRecord::TargetEpoch { group, .. }
            | ConsumerRecord::TargetMember { group, .. }
            | ConsumerRecord::CurrentAssignment { group, .. } => group,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        match self {
            ConsumerRecord::GroupEpoch { value, .. } => value.is_none(),
            ConsumerRecord::MemberMetadata { value, .. } => value.is_none(),
            ConsumerRecord::TargetEpoch { value, .. } => value.is_none(),
            ConsumerRecord::TargetMember { value, .. } => value.is_none(),
            ConsumerRecord::CurrentAssignment { value, .. } => value.is_none(),
        }
    }

    fn member_id(&self) -> Option<&str> {
        match self {
            ConsumerRecord::MemberMetadata { member_id, .. }
            | ConsumerRecord::TargetMember { member_id, .. }
            | ConsumerRecord::CurrentAssignment { member_id, .. } => Some(member_id),
            ConsumerRecord::GroupEpoch { .. } | ConsumerRecord::TargetEpoch { .. } => None,
        }
    }

    fn key_version(&self) -> i16 {
        match self {
            ConsumerRecord::GroupEpoch { .. } => GROUP_EPOCH_KEY,
            ConsumerRecord::MemberMetadata { .. } => MEMBER_METADATA_KEY,
            ConsumerRecord::TargetEpoch { .. } => TARGET_EPOCH_KEY,
            ConsumerRecord::TargetMember { .. } => TARGET_MEMBER_KEY,
            ConsumerRecord::CurrentAssignment { .. } => CURRENT_ASSIGNMENT_KEY,
        }
    }

    /// Checks that every string fits a Kafka `STRING`.
    pub fn check_encodable(&self) -> Result<(), StoreError> {
        let check = |field: &'static str, s: &str| {
            if s.len() > STRING_BYTES_MAX { Err(StoreError::TooLong { field, length: s.len() }) } else { Ok(()) }
        };
        check("group", self.group())?;
        check("member_id", self.member_id().unwrap_or_default())?;
        if let ConsumerRecord::MemberMetadata { value: Some(m), .. } = self {
            check("instance_id", m.instance_id.as_deref().unwrap_or_default())?;
            check("rack_id", m.rack_id.as_deref().unwrap_or_default())?;
            check("client_id", &m.client_id)?;
            check("client_host", &m.client_host)?;
            check("subscribed_topic_regex", m.subscribed_topic_regex.as_deref().unwrap_or_default())?;
            check("server_assignor", m.server_assignor.as_deref().unwrap_or_default())?;
            for topic in &m.subscribed_topic_names {
                check("subscribed_topic_names", topic)?;
            }
        }
        Ok(())
    }

    /// Panics if a string is longer than [`STRING_BYTES_MAX`].
    pub fn encode_key(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_i16(&mut out, self.key_version());
        put_string(&mut out, self.group());
        if let Some(member_id) = self.member_id() {
            put_string(&mut out, member_id);
        }
        out
    }

    /// `None` for a tombstone. Panics if a string is longer than [`STRING_BYTES_MAX`].
    pub fn encode_value(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        put_i16(&mut out, VALUE_VERSION);
        match self {
            ConsumerRecord::GroupEpoch { value, .. } => {
                let (epoch, metadata_hash) = (*value)?;
                put_i32(&mut out, epoch);
                // One tagged field: tag, size, then the i64.
                put_uvarint(&mut out, 1);
                put_uvarint(&mut out, METADATA_HASH_TAG);
                put_uvarint(&mut out, 8);
                put_i64(&mut out, metadata_hash);
                return Some(out);
            }
            ConsumerRecord::MemberMetadata { value, .. } => {
                let m = value.as_ref()?;
                put_compact_string(&mut out, m.instance_id.as_deref());
                put_compact_string(&mut out, m.rack_id.as_deref());
                put_compact_string(&mut out, Some(&m.client_id));
                put_compact_string(&mut out, Some(&m.client_host));
                put_uvarint(&mut out, m.subscribed_topic_names.len() as u64 + 1);
                for topic in &m.subscribed_topic_names {
                    put_compact_string(&mut out, Some(topic));
                }
                put_compact_string(&mut out, m.subscribed_topic_regex.as_deref());
                put_i32(&mut out, m.rebalance_timeout_ms);
                put_compact_string(&mut out, m.server_assignor.as_deref());
            }
            ConsumerRecord::TargetEpoch { value, .. } => put_i32(&mut out, (*value)?),
            ConsumerRecord::TargetMember { value, .. } => put_topic_partitions(&mut out, value.as_ref()?),
            ConsumerRecord::CurrentAssignment { value, .. } => {
                let c = value.as_ref()?;
                put_i32(&mut out, c.member_epoch);
                put_i32(&mut out, c.previous_member_epoch);
                out.push(c.state as u8);
                put_topic_partitions(&mut out, &c.assigned);
                put_topic_partitions(&mut out, &c.pending_revocation);
            }
        }
        put_uvarint(&mut out, 0); // no tagged fields
        Some(out)
    }

    /// Decodes the rest of a key whose version (`key_version`, 3 or 5 to 8) was read, and
    /// its value.
    pub(super) fn decode(key_version: i16, key: &mut Reader<'_>, value: Option<&[u8]>) -> Result<Self, StoreError> {
        key.record = KEY;
        let group = key.string("group")?;
        let member_id = match key_version {
            MEMBER_METADATA_KEY | TARGET_MEMBER_KEY | CURRENT_ASSIGNMENT_KEY => Some(key.string("member_id")?),
            _ => None,
        };
        key.finish()?;
        let mut reader = value.map(|v| Reader::new(v, VALUE));
        if let Some(reader) = reader.as_mut() {
            let version = reader.i16("version")?;
            if version != VALUE_VERSION {
                return Err(StoreError::UnknownValueVersion { record: VALUE, version });
            }
        }
        let member_id = member_id.unwrap_or_default();
        let record = match (key_version, reader.as_mut()) {
            (GROUP_EPOCH_KEY, None) => ConsumerRecord::GroupEpoch { group, value: None },
            (GROUP_EPOCH_KEY, Some(r)) => {
                let epoch = r.i32("epoch")?;
                let mut metadata_hash = 0;
                for _ in 0..uvarint(r, "tagged fields")? {
                    let tag = uvarint(r, "tag")?;
                    let size = usize::try_from(uvarint(r, "tag size")?).unwrap_or(usize::MAX);
                    if tag == METADATA_HASH_TAG && size == 8 {
                        metadata_hash = r.i64("metadata_hash")?;
                    } else {
                        r.take(size, "tagged field")?;
                    }
                }
                r.finish()?;
                return Ok(ConsumerRecord::GroupEpoch { group, value: Some((epoch, metadata_hash)) });
            }
            (MEMBER_METADATA_KEY, None) => ConsumerRecord::MemberMetadata { group, member_id, value: None },
            (MEMBER_METADATA_KEY, Some(r)) => {
                let instance_id = compact_string(r, "instance_id")?;
                let rack_id = compact_string(r, "rack_id")?;
                let client_id = compact_string(r, "client_id")?.unwrap_or_default();
                let client_host = compact_string(r, "client_host")?.unwrap_or_default();
                let count = array_length(r, "subscribed_topic_names", 1)?;
                let mut subscribed_topic_names = Vec::with_capacity(count);
                for _ in 0..count {
                    subscribed_topic_names.push(compact_string(r, "subscribed_topic_names")?.unwrap_or_default());
                }
                let value = MemberMetadata {
                    instance_id,
                    rack_id,
                    client_id,
                    client_host,
                    subscribed_topic_names,
                    subscribed_topic_regex: compact_string(r, "subscribed_topic_regex")?,
                    rebalance_timeout_ms: r.i32("rebalance_timeout_ms")?,
                    server_assignor: compact_string(r, "server_assignor")?,
                };
                ConsumerRecord::MemberMetadata { group, member_id, value: Some(value) }
            }
            (TARGET_EPOCH_KEY, None) => ConsumerRecord::TargetEpoch { group, value: None },
            (TARGET_EPOCH_KEY, Some(r)) => {
                ConsumerRecord::TargetEpoch { group, value: Some(r.i32("assignment_epoch")?) }
            }
            (TARGET_MEMBER_KEY, None) => ConsumerRecord::TargetMember { group, member_id, value: None },
            (TARGET_MEMBER_KEY, Some(r)) => {
                ConsumerRecord::TargetMember { group, member_id, value: Some(topic_partitions(r)?) }
            }
            (CURRENT_ASSIGNMENT_KEY, None) => ConsumerRecord::CurrentAssignment { group, member_id, value: None },
            (CURRENT_ASSIGNMENT_KEY, Some(r)) => {
                let value = CurrentAssignment {
                    member_epoch: r.i32("member_epoch")?,
                    previous_member_epoch: r.i32("previous_member_epoch")?,
                    state: i8::from_be_bytes(r.array("state")?),
                    assigned: topic_partitions(r)?,
                    pending_revocation: topic_partitions(r)?,
                };
                ConsumerRecord::CurrentAssignment { group, member_id, value: Some(value) }
            }
            (version, _) => return Err(StoreError::UnknownKeyVersion { version }),
        };
        if let Some(r) = reader.as_mut() {
            skip_tagged_fields(r)?;
            r.finish()?;
        }
        Ok(record)
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_compact_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => put_uvarint(out, 0),
        Some(value) => {
            assert!(value.len() <= STRING_BYTES_MAX, "string of {} bytes does not fit a Kafka STRING", value.len());
            put_uvarint(out, value.len() as u64 + 1);
            out.extend_from_slice(value.as_bytes());
        }
    }
}

fn put_topic_partitions(out: &mut Vec<u8>, topics: &TopicPartitions) {
    put_uvarint(out, topics.len() as u64 + 1);
    for (id, partitions) in topics {
        out.extend_from_slice(id);
        put_uvarint(out, partitions.len() as u64 + 1);
        for partition in partitions {
            put_i32(out, *partition);
        }
        put_uvarint(out, 0);
    }
}

fn uvarint(r: &mut Reader<'_>, field: &'static str) -> Result<u64, StoreError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let [byte] = r.array::<1>(field)?;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(StoreError::InvalidLength { record: r.record, field, length: -1 })
}

/// A compact array's element count; `element_bytes_min` bounds it by what is left, so a
/// hostile count cannot make the reader reserve memory it does not hold.
fn array_length(r: &mut Reader<'_>, field: &'static str, element_bytes_min: usize) -> Result<usize, StoreError> {
    let raw = uvarint(r, field)?;
    let count = usize::try_from(raw.saturating_sub(1)).unwrap_or(usize::MAX);
    if raw == 0 || count > r.remaining() / element_bytes_min {
        let length = i32::try_from(raw).unwrap_or(i32::MAX);
        return Err(StoreError::InvalidLength { record: r.record, field, length });
    }
    Ok(count)
}

fn compact_string(r: &mut Reader<'_>, field: &'static str) -> Result<Option<String>, StoreError> {
    let raw = uvarint(r, field)?;
    if raw == 0 {
        return Ok(None);
    }
    let length = usize::try_from(raw - 1).unwrap_or(usize::MAX);
    let bytes = r.take(length, field)?;
    let text = std::str::from_utf8(bytes).map_err(|_| StoreError::InvalidUtf8 { record: r.record, field })?;
    Ok(Some(text.to_string()))
}

fn topic_partitions(r: &mut Reader<'_>) -> Result<TopicPartitions, StoreError> {
    let count = array_length(r, "topic_partitions", 16 + 2)?;
    let mut topics = Vec::with_capacity(count);
    for _ in 0..count {
        let id: TopicId = r.array("topic_id")?;
        let partitions = array_length(r, "partitions", 4)?;
        let partitions = (0..partitions).map(|_| r.i32("partition")).collect::<Result<Vec<i32>, _>>()?;
        skip_tagged_fields(r)?;
        topics.push((id, partitions));
    }
    Ok(topics)
}

fn skip_tagged_fields(r: &mut Reader<'_>) -> Result<(), StoreError> {
    for _ in 0..uvarint(r, "tagged fields")? {
        uvarint(r, "tag")?;
        let size = usize::try_from(uvarint(r, "tag size")?).unwrap_or(usize::MAX);
        r.take(size, "tagged field")?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::store::StoredRecord;
    use super::*;

    fn round_trip(record: ConsumerRecord) {
        let stored = StoredRecord::Consumer(record);
        let decoded = StoredRecord::decode(&stored.encode_key(), stored.encode_value().as_deref()).unwrap();
        assert_eq!(decoded, stored);
    }

    fn all_kinds() -> Vec<ConsumerRecord> {
        let g = || "orders-app".to_string();
        let m = || "rdkafka-1b2c".to_string();
        let partitions: TopicPartitions = vec![([7; 16], vec![0, 3, 11]), ([9; 16], vec![])];
        vec![
            ConsumerRecord::GroupEpoch { group: g(), value: Some((42, -0x1234_5678_9abc)) },
            ConsumerRecord::MemberMetadata {
                group: g(),
                member_id: m(),
                value: Some(MemberMetadata {
                    instance_id: Some("host-a".into()),
                    rack_id: None,
                    client_id: "rdkafka".into(),
                    client_host: "/127.0.0.1".into(),
                    subscribed_topic_names: vec!["a".into(), "ü".repeat(100)],
                    subscribed_topic_regex: Some("orders-.*".into()),
                    rebalance_timeout_ms: 300_000,
                    server_assignor: Some("uniform".into()),
                }),
            },
            ConsumerRecord::TargetEpoch { group: g(), value: Some(41) },
            ConsumerRecord::TargetMember { group: g(), member_id: m(), value: Some(partitions.clone()) },
            ConsumerRecord::CurrentAssignment {
                group: g(),
                member_id: m(),
                value: Some(CurrentAssignment {
                    member_epoch: -2,
                    previous_member_epoch: 40,
                    state: member_state::UNREVOKED_PARTITIONS,
                    assigned: partitions,
                    pending_revocation: vec![([1; 16], vec![5])],
                }),
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_with_its_tombstone() {
        for record in all_kinds() {
            round_trip(record.clone());
            let tombstone = match record {
                ConsumerRecord::GroupEpoch { group, .. } => ConsumerRecord::GroupEpoch { group, value: None },
                ConsumerRecord::MemberMetadata { group, member_id, .. } => {
                    ConsumerRecord::MemberMetadata { group, member_id, value: None }
                }
                ConsumerRecord::TargetEpoch { group, .. } => ConsumerRecord::TargetEpoch { group, value: None },
                ConsumerRecord::TargetMember { group, member_id, .. } => {
                    ConsumerRecord::TargetMember { group, member_id, value: None }
                }
                ConsumerRecord::CurrentAssignment { group, member_id, .. } => {
                    ConsumerRecord::CurrentAssignment { group, member_id, value: None }
                }
            };
            round_trip(tombstone);
        }
    }

    #[test]
    fn the_bytes_are_kafkas_layout() {
        // ConsumerGroupMetadataKey v3 "g"; value v0: epoch 5, one tagged field (tag 0, 8 bytes).
        let record = StoredRecord::Consumer(ConsumerRecord::GroupEpoch { group: "g".into(), value: Some((5, 1)) });
        assert_eq!(record.encode_key(), [0, 3, 0, 1, b'g']);
        assert_eq!(record.encode_value().unwrap(), [0, 0, 0, 0, 0, 5, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
        // ConsumerGroupTargetAssignmentMemberValue: one topic, partitions [2].
        let target = StoredRecord::Consumer(ConsumerRecord::TargetMember {
            group: "g".into(),
            member_id: "m".into(),
            value: Some(vec![([0xab; 16], vec![2])]),
        });
        assert_eq!(target.encode_key(), [0, 7, 0, 1, b'g', 0, 1, b'm']);
        let mut expected = vec![0, 0, 2];
        expected.extend([0xab; 16]);
        expected.extend([2, 0, 0, 0, 2, 0, 0]);
        assert_eq!(target.encode_value().unwrap(), expected);
    }

    #[test]
    fn unknown_tagged_fields_are_skipped_and_damage_is_an_error() {
        // A future writer's extra tagged field (tag 9, 2 bytes) on a target epoch record.
        let key = [0, 6, 0, 1, b'g'];
        let value = [0, 0, 0, 0, 0, 3, 1, 9, 2, 0xff, 0xff];
        let decoded = StoredRecord::decode(&key, Some(&value)).unwrap();
        assert_eq!(decoded, StoredRecord::Consumer(ConsumerRecord::TargetEpoch { group: "g".into(), value: Some(3) }));
        for record in all_kinds() {
            let stored = StoredRecord::Consumer(record);
            let (key, value) = (stored.encode_key(), stored.encode_value().unwrap());
            for cut in 0..value.len() {
                assert!(StoredRecord::decode(&key, Some(&value[..cut])).is_err(), "{stored:?} cut at {cut}");
            }
            let mut longer = value.clone();
            longer.push(0);
            assert!(StoredRecord::decode(&key, Some(&longer)).is_err());
        }
        // A count far beyond the bytes left is refused before anything is reserved.
        let huge = [0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(StoredRecord::decode(&[0, 7, 0, 1, b'g', 0, 1, b'm'], Some(&huge)).is_err());
    }
}
