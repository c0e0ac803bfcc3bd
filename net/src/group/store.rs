//! Consumer-group state as records of the internal topic `__consumer_offsets`, in Apache
//! Kafka's own key and value schemas (`OffsetCommitKey`/`Value`, `GroupMetadataKey`/`Value`
//! in Kafka's group coordinator), so Kafka's tools can read a corelog partition.
//!
//! Pure encoding and decoding, no I/O. All integers are big-endian; `STRING` is an i16
//! length and UTF-8 bytes (length -1 is null where the field is nullable), `BYTES` an i32
//! length and the bytes, an array an i32 count and the elements. Non-flexible versions only.
//!
//! ```text
//! offset commit key     i16 version (1 written, 0 read) | group STRING | topic STRING | partition i32
//! offset commit value   i16 version (3 written, 0..=3 read)
//!                       | offset i64 | leader_epoch i32 (v3+) | metadata STRING
//!                       | commit_timestamp i64 | expire_timestamp i64 (v1 only, ignored)
//! group metadata key    i16 version (2) | group STRING
//! group metadata value  i16 version (3 written, 0..=3 read)
//!                       | protocol_type STRING | generation i32 | protocol STRING? | leader STRING?
//!                       | current_state_timestamp i64 (v2+) | member count i32 | members
//! member                member_id STRING | group_instance_id STRING? (v3+) | client_id STRING
//!                       | client_host STRING | rebalance_timeout i32 (v1+) | session_timeout i32
//!                       | subscription BYTES | assignment BYTES
//! ```
//! A record with a null value is a tombstone: the offset, or the group, was deleted.
//! Fields a version lacks decode to Kafka's defaults: leader epoch -1, state timestamp -1,
//! no instance id, and (as Kafka's v0 reader does) a rebalance timeout equal to the
//! session timeout.

use bytes::Bytes;
use corelog_engine::{batch, records};

use super::consumer_store::{self, ConsumerRecord};

/// Offset commit keys are written as version 1; version 0 has the same layout.
const OFFSET_KEY_VERSION: i16 = 1;
const OFFSET_KEY_VERSION_LEGACY: i16 = 0;
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;
/// The newest value versions read; version 4 is Kafka's first flexible one.
const OFFSET_VALUE_VERSION_MAX: i16 = 3;
const GROUP_VALUE_VERSION_MAX: i16 = 3;

/// Longest string a Kafka `STRING` (i16 length) can hold.
pub const STRING_BYTES_MAX: usize = i16::MAX as usize;
/// The smallest encoded member (empty strings and bytes, version 0): bounds how many
/// members a hostile count can make the decoder reserve room for.
const MEMBER_BYTES_MIN: usize = 2 + 2 + 2 + 4 + 4 + 4;

const OFFSET_KEY: &str = "offset commit key";
const OFFSET_VALUE: &str = "offset commit value";
const GROUP_KEY: &str = "group metadata key";
const GROUP_VALUE: &str = "group metadata value";

/// A committed offset (Kafka's `OffsetCommitValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    /// -1 when unknown.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// One member of a group as stored in its group metadata record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's chosen protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// A group's membership after a rebalance (Kafka's `GroupMetadataValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// -1 when unknown.
    pub state_timestamp_ms: i64,
    pub members: Vec<StoredMember>,
}

/// One record of `__consumer_offsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredRecord {
    /// A committed offset; `value: None` is a tombstone (the offset was deleted).
    Offset { group: String, topic: String, partition: i32, value: Option<OffsetValue> },
    /// A group's metadata; `value: None` is a tombstone (the group was deleted).
    Group { group: String, value: Option<GroupValue> },
    /// A record of a consumer-protocol (KIP-848) group ([`super::consumer_store`]).
    Consumer(ConsumerRecord),
}

/// Why a `__consumer_offsets` record cannot be decoded (or, for `TooLong`, encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{record} truncated reading {field}")]
    Truncated { record: &'static str, field: &'static str },
    #[error("{record}: {field} has invalid length {length}")]
    InvalidLength { record: &'static str, field: &'static str, length: i32 },
    #[error("{record}: {field} is not UTF-8")]
    InvalidUtf8 { record: &'static str, field: &'static str },
    #[error("{record}: {count} bytes after the last field")]
    TrailingBytes { record: &'static str, count: usize },
    #[error("unknown record key version {version}")]
    UnknownKeyVersion { version: i16 },
    #[error("{record}: unknown version {version}")]
    UnknownValueVersion { record: &'static str, version: i16 },
    #[error("{field} is {length} bytes, more than a Kafka STRING holds ({STRING_BYTES_MAX})")]
    TooLong { field: &'static str, length: usize },
}

impl StoredRecord {
    /// Checks that every string fits a Kafka `STRING`. Encoding a record that fails this is
    /// a bug (it panics), so callers check lengths that come from clients first.
    pub fn check_encodable(&self) -> Result<(), StoreError> {
        let check = |field: &'static str, s: &str| {
            if s.len() > STRING_BYTES_MAX { Err(StoreError::TooLong { field, length: s.len() }) } else { Ok(()) }
        };
        match self {
            StoredRecord::Offset { group, topic, value, .. } => {
                check("group", group)?;
                check("topic", topic)?;
                value.as_ref().map_or(Ok(()), |v| check("metadata", &v.metadata))
            }
            StoredRecord::Group { group, value } => {
                check("group", group)?;
                let Some(value) = value else {
                    return Ok(());
                };
                check("protocol_type", &value.protocol_type)?;
                check("protocol", value.protocol.as_deref().unwrap_or_default())?;
                check("leader", value.leader.as_deref().unwrap_or_default())?;
                for member in &value.members {
                    check("member_id", &member.member_id)?;
                    check("group_instance_id", member.instance_id.as_deref().unwrap_or_default())?;
                    check("client_id", &member.client_id)?;
                    check("client_host", &member.client_host)?;
                }
                Ok(())
            }
            StoredRecord::Consumer(record) => record.check_encodable(),
        }
    }

    /// The record key. Panics if a string is longer than [`STRING_BYTES_MAX`].
    pub fn encode_key(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            StoredRecord::Offset { group, topic, partition, .. } => {
                put_i16(&mut out, OFFSET_KEY_VERSION);
                put_string(&mut out, group);
                put_string(&mut out, topic);
                put_i32(&mut out, *partition);
            }
            StoredRecord::Group { group, .. } => {
                put_i16(&mut out, GROUP_KEY_VERSION);
                put_string(&mut out, group);
            }
            StoredRecord::Consumer(record) => return record.encode_key(),
        }
        out
    }

    /// The record value, `None` for a tombstone. Panics if a string is longer than
    /// [`STRING_BYTES_MAX`].
    pub fn encode_value(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            StoredRecord::Offset { value, .. } => {
                let value = value.as_ref()?;
                put_i16(&mut out, OFFSET_VALUE_VERSION);
                put_i64(&mut out, value.offset);
                put_i32(&mut out, value.leader_epoch);
                put_string(&mut out, &value.metadata);
                put_i64(&mut out, value.commit_timestamp_ms);
            }
            StoredRecord::Group { value, .. } => {
                let value = value.as_ref()?;
                put_i16(&mut out, GROUP_VALUE_VERSION);
                put_string(&mut out, &value.protocol_type);
                put_i32(&mut out, value.generation);
                put_nullable_string(&mut out, value.protocol.as_deref());
                put_nullable_string(&mut out, value.leader.as_deref());
                put_i64(&mut out, value.state_timestamp_ms);
                assert!(value.members.len() <= i32::MAX as usize, "more members than an array holds");
                put_i32(&mut out, value.members.len() as i32);
                for member in &value.members {
                    put_string(&mut out, &member.member_id);
                    put_nullable_string(&mut out, member.instance_id.as_deref());
                    put_string(&mut out, &member.client_id);
                    put_string(&mut out, &member.client_host);
                    put_i32(&mut out, member.rebalance_timeout_ms);
                    put_i32(&mut out, member.session_timeout_ms);
                    put_bytes(&mut out, &member.subscription);
                    put_bytes(&mut out, &member.assignment);
                }
            }
            StoredRecord::Consumer(record) => return record.encode_value(),
        }
        Some(out)
    }

    /// Decodes a record from its key and value (`None` for a tombstone). Accepts offset key
    /// versions 0 and 1, group key version 2, and value versions 0 to 3 of either kind; and
    /// the consumer-protocol keys 3 and 5 to 8 with value version 0.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<StoredRecord, StoreError> {
        let mut reader = Reader::new(key, "record key");
        let version = reader.i16("version")?;
        match version {
            OFFSET_KEY_VERSION_LEGACY | OFFSET_KEY_VERSION => {
                reader.record = OFFSET_KEY;
                let group = reader.string("group")?;
                let topic = reader.string("topic")?;
                let partition = reader.i32("partition")?;
                reader.finish()?;
                let value = value.map(decode_offset_value).transpose()?;
                Ok(StoredRecord::Offset { group, topic, partition, value })
            }
            GROUP_KEY_VERSION => {
                reader.record = GROUP_KEY;
                let group = reader.string("group")?;
                reader.finish()?;
                let value = value.map(decode_group_value).transpose()?;
                Ok(StoredRecord::Group { group, value })
            }
            consumer_store::GROUP_EPOCH_KEY
            | consumer_store::MEMBER_METADATA_KEY..=consumer_store::CURRENT_ASSIGNMENT_KEY => {
                ConsumerRecord::decode(version, &mut reader, value).map(StoredRecord::Consumer)
            }
            version => Err(StoreError::UnknownKeyVersion { version }),
        }
    }
}

fn decode_offset_value(bytes: &[u8]) -> Result<OffsetValue, StoreError> {
    let mut reader = Reader::new(bytes, OFFSET_VALUE);
    let version = reader.i16("version")?;
    if !(0..=OFFSET_VALUE_VERSION_MAX).contains(&version) {
        return Err(StoreError::UnknownValueVersion { record: OFFSET_VALUE, version });
    }
    let offset = reader.i64("offset")?;
    let leader_epoch = if version >= 3 { reader.i32("leader_epoch")? } else { -1 };
    let metadata = reader.string("metadata")?;
    let commit_timestamp_ms = reader.i64("commit_timestamp")?;
    if version == 1 {
        // Kafka dropped per-offset expiry; the field is read and ignored as Kafka does.
        reader.i64("expire_timestamp")?;
    }
    reader.finish()?;
    Ok(OffsetValue { offset, leader_epoch, metadata, commit_timestamp_ms })
}

fn decode_group_value(bytes: &[u8]) -> Result<GroupValue, StoreError> {
    let mut reader = Reader::new(bytes, GROUP_VALUE);
    let version = reader.i16("version")?;
    if !(0..=GROUP_VALUE_VERSION_MAX).contains(&version) {
        return Err(StoreError::UnknownValueVersion { record: GROUP_VALUE, version });
    }
    let protocol_type = reader.string("protocol_type")?;
    let generation = reader.i32("generation")?;
    let protocol = reader.nullable_string("protocol")?;
    let leader = reader.nullable_string("leader")?;
    let state_timestamp_ms = if version >= 2 { reader.i64("current_state_timestamp")? } else { -1 };
    let count = reader.i32("member count")?;
    let count = usize::try_from(count).map_err(|_| StoreError::InvalidLength {
        record: GROUP_VALUE,
        field: "members",
        length: count,
    })?;
    let mut members = Vec::with_capacity(count.min(reader.remaining() / MEMBER_BYTES_MIN));
    for _ in 0..count {
        let member_id = reader.string("member_id")?;
        let instance_id = if version >= 3 { reader.nullable_string("group_instance_id")? } else { None };
        let client_id = reader.string("client_id")?;
        let client_host = reader.string("client_host")?;
        let rebalance_timeout = if version >= 1 { Some(reader.i32("rebalance_timeout")?) } else { None };
        let session_timeout_ms = reader.i32("session_timeout")?;
        members.push(StoredMember {
            member_id,
            instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms: rebalance_timeout.unwrap_or(session_timeout_ms),
            session_timeout_ms,
            subscription: reader.bytes("subscription")?,
            assignment: reader.bytes("assignment")?,
        });
    }
    reader.finish()?;
    Ok(GroupValue { protocol_type, generation, protocol, leader, state_timestamp_ms, members })
}

/// One uncompressed RecordBatch v2 holding `records` in order (base offset 0, unstamped),
/// every record stamped `timestamp_ms`. Panics if `records` is empty or a record fails
/// [`StoredRecord::check_encodable`].
pub fn encode_batch(records: &[StoredRecord], timestamp_ms: i64) -> Vec<u8> {
    let encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> = records.iter().map(|r| (r.encode_key(), r.encode_value())).collect();
    let pairs: Vec<batch::KeyValue<'_>> =
        encoded.iter().map(|(key, value)| (Some(key.as_slice()), value.as_deref())).collect();
    batch::encode_batch(&pairs, timestamp_ms)
}

/// Every record of a run of whole stored batches, as a partition read returns them
/// (concatenated, possibly compressed, possibly ending in a partial batch, which is
/// ignored), with its log offset. Control batches are skipped silently. Records that do not
/// decode (no key, an unknown version, malformed fields, or a batch whose records cannot be
/// read) are skipped and counted: returns (records, skipped count).
pub fn decode_batches(bytes: &[u8]) -> (Vec<(i64, StoredRecord)>, usize) {
    let mut decoded = Vec::new();
    let mut skipped = 0;
    let mut rest = bytes;
    while rest.len() >= batch::BATCH_LENGTH_PREFIX_BYTES {
        let Some(size) = batch::claimed_batch_size(rest).filter(|&size| size >= batch::BATCH_HEADER_BYTES) else {
            // A corrupt length: nothing after it can be found.
            skipped += 1;
            break;
        };
        if size > rest.len() {
            break; // the read ended inside this batch
        }
        let (this, next) = rest.split_at(size);
        rest = next;
        let Some(header) = batch::parse_stored_header(this) else {
            break; // unreachable: the size was checked above
        };
        if header.is_control() {
            continue;
        }
        let unreadable = usize::try_from(header.record_count).unwrap_or(0).max(1);
        if this[16] != batch::MAGIC_V2 {
            skipped += unreadable;
            continue;
        }
        let Ok(batch_records) = records::decode_records(this) else {
            skipped += unreadable;
            continue;
        };
        for record in batch_records {
            let Some(key) = record.key else {
                skipped += 1;
                continue;
            };
            match StoredRecord::decode(&key, record.value.as_deref()) {
                Ok(stored) => decoded.push((record.offset, stored)),
                Err(_) => skipped += 1,
            }
        }
    }
    (decoded, skipped)
}

pub(super) fn put_i16(out: &mut Vec<u8>, value: i16) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub(super) fn put_i32(out: &mut Vec<u8>, value: i32) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub(super) fn put_i64(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub(super) fn put_string(out: &mut Vec<u8>, value: &str) {
    assert!(value.len() <= STRING_BYTES_MAX, "string of {} bytes does not fit a Kafka STRING", value.len());
    put_i16(out, value.len() as i16);
    out.extend_from_slice(value.as_bytes());
}

fn put_nullable_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => put_string(out, value),
        None => put_i16(out, -1),
    }
}

fn put_bytes(out: &mut Vec<u8>, value: &[u8]) {
    assert!(value.len() <= i32::MAX as usize, "bytes of {} bytes do not fit a Kafka BYTES", value.len());
    put_i32(out, value.len() as i32);
    out.extend_from_slice(value);
}

/// Reads fields in order, naming the record and field that is malformed.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    pub(super) record: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8], record: &'static str) -> Self {
        Self { bytes, at: 0, record }
    }

    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    pub(super) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], StoreError> {
        let slice = self
            .at
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or(StoreError::Truncated { record: self.record, field })?;
        self.at += n;
        Ok(slice)
    }

    pub(super) fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], StoreError> {
        let mut raw = [0u8; N];
        raw.copy_from_slice(self.take(N, field)?);
        Ok(raw)
    }

    pub(super) fn i16(&mut self, field: &'static str) -> Result<i16, StoreError> {
        self.array(field).map(i16::from_be_bytes)
    }

    pub(super) fn i32(&mut self, field: &'static str) -> Result<i32, StoreError> {
        self.array(field).map(i32::from_be_bytes)
    }

    pub(super) fn i64(&mut self, field: &'static str) -> Result<i64, StoreError> {
        self.array(field).map(i64::from_be_bytes)
    }

    fn nullable_string(&mut self, field: &'static str) -> Result<Option<String>, StoreError> {
        let length = self.i16(field)?;
        if length == -1 {
            return Ok(None);
        }
        let length = usize::try_from(length).map_err(|_| StoreError::InvalidLength {
            record: self.record,
            field,
            length: i32::from(length),
        })?;
        let raw = self.take(length, field)?;
        let text = std::str::from_utf8(raw).map_err(|_| StoreError::InvalidUtf8 { record: self.record, field })?;
        Ok(Some(text.to_string()))
    }

    pub(super) fn string(&mut self, field: &'static str) -> Result<String, StoreError> {
        self.nullable_string(field)?.ok_or(StoreError::InvalidLength { record: self.record, field, length: -1 })
    }

    fn bytes(&mut self, field: &'static str) -> Result<Bytes, StoreError> {
        let length = self.i32(field)?;
        let length =
            usize::try_from(length).map_err(|_| StoreError::InvalidLength { record: self.record, field, length })?;
        Ok(Bytes::copy_from_slice(self.take(length, field)?))
    }

    /// Every byte must belong to a field: leftovers mean the version or the encoder is wrong.
    pub(super) fn finish(&self) -> Result<(), StoreError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(StoreError::TrailingBytes { record: self.record, count }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offset(group: &str, topic: &str, partition: i32, value: Option<OffsetValue>) -> StoredRecord {
        StoredRecord::Offset { group: group.into(), topic: topic.into(), partition, value }
    }

    fn member(id: &str, instance_id: Option<&str>) -> StoredMember {
        StoredMember {
            member_id: id.into(),
            instance_id: instance_id.map(Into::into),
            client_id: "client-1".into(),
            client_host: "/10.0.0.7".into(),
            rebalance_timeout_ms: 300_000,
            session_timeout_ms: 45_000,
            subscription: Bytes::from_static(b"\x00\x01sub"),
            assignment: Bytes::from_static(b"\x00\x01\x00\x00\x00\x01assign"),
        }
    }

    fn group_value() -> GroupValue {
        GroupValue {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("m-1".into()),
            state_timestamp_ms: 1_700_000_000_000,
            members: vec![member("m-1", None), member("m-2", Some("static-2"))],
        }
    }

    fn round_trip(record: &StoredRecord) -> StoredRecord {
        StoredRecord::decode(&record.encode_key(), record.encode_value().as_deref()).unwrap()
    }

    #[test]
    fn both_kinds_round_trip_with_their_tombstones() {
        let records = [
            offset(
                "g",
                "orders",
                3,
                Some(OffsetValue { offset: 42, leader_epoch: 5, metadata: "m".into(), commit_timestamp_ms: 9 }),
            ),
            offset("g", "orders", 3, None),
            StoredRecord::Group { group: "g".into(), value: Some(group_value()) },
            StoredRecord::Group { group: "g".into(), value: None },
            StoredRecord::Group {
                group: "empty".into(),
                value: Some(GroupValue {
                    protocol_type: String::new(),
                    generation: 0,
                    protocol: None,
                    leader: None,
                    state_timestamp_ms: -1,
                    members: vec![],
                }),
            },
        ];
        for record in &records {
            assert_eq!(&round_trip(record), record);
        }
        assert_eq!(records[1].encode_value(), None);
        assert_eq!(records[3].encode_value(), None);
    }

    #[test]
    fn an_offset_record_has_kafkas_bytes() {
        let record = offset(
            "g",
            "t",
            3,
            Some(OffsetValue { offset: 42, leader_epoch: 5, metadata: "m".into(), commit_timestamp_ms: 1_000 }),
        );
        #[rustfmt::skip]
        let key: &[u8] = &[
            0, 1,             // key version 1: offset commit
            0, 1, b'g',       // group
            0, 1, b't',       // topic
            0, 0, 0, 3,       // partition
        ];
        #[rustfmt::skip]
        let value: &[u8] = &[
            0, 3,                         // value version 3
            0, 0, 0, 0, 0, 0, 0, 42,      // offset
            0, 0, 0, 5,                   // leader epoch
            0, 1, b'm',                   // metadata
            0, 0, 0, 0, 0, 0, 0x03, 0xe8, // commit timestamp
        ];
        assert_eq!(record.encode_key(), key);
        assert_eq!(record.encode_value().unwrap(), value);
    }

    #[test]
    fn a_group_record_has_kafkas_bytes() {
        let value = GroupValue {
            protocol_type: "consumer".into(),
            generation: 1,
            protocol: None,
            leader: Some("m".into()),
            state_timestamp_ms: 0,
            members: vec![StoredMember {
                member_id: "m".into(),
                instance_id: None,
                client_id: "c".into(),
                client_host: "h".into(),
                rebalance_timeout_ms: 2,
                session_timeout_ms: 1,
                subscription: Bytes::from_static(b"s"),
                assignment: Bytes::new(),
            }],
        };
        let record = StoredRecord::Group { group: "g".into(), value: Some(value) };
        assert_eq!(record.encode_key(), [0, 2, 0, 1, b'g']);
        #[rustfmt::skip]
        let fields: &[u8] = &[
            0, 3,                   // value version 3
            0, 8,                   // protocol type "consumer"
            b'c', b'o', b'n', b's', b'u', b'm', b'e', b'r',
            0, 0, 0, 1,             // generation
            0xff, 0xff,             // protocol: null
            0, 1, b'm',             // leader
            0, 0, 0, 0, 0, 0, 0, 0, // current state timestamp
            0, 0, 0, 1,             // one member
            0, 1, b'm',             // member id
            0xff, 0xff,             // group instance id: null
            0, 1, b'c',             // client id
            0, 1, b'h',             // client host
            0, 0, 0, 2,             // rebalance timeout
            0, 0, 0, 1,             // session timeout
            0, 0, 0, 1, b's',       // subscription
            0, 0, 0, 0,             // assignment
        ];
        assert_eq!(record.encode_value().unwrap(), fields);
    }

    #[test]
    fn older_value_versions_decode_with_kafkas_defaults() {
        let key = offset("g", "t", 0, None).encode_key();
        let mut legacy_key = key.clone();
        legacy_key[1] = 0; // key version 0
        // v0 and v2: offset, metadata, commit timestamp; v1 adds an expire timestamp.
        let body = |version: i16, expire: bool| {
            let mut v = version.to_be_bytes().to_vec();
            v.extend_from_slice(&11i64.to_be_bytes());
            v.extend_from_slice(&[0, 2, b'm', b'd']);
            v.extend_from_slice(&12i64.to_be_bytes());
            if expire {
                v.extend_from_slice(&13i64.to_be_bytes());
            }
            v
        };
        let expected = OffsetValue { offset: 11, leader_epoch: -1, metadata: "md".into(), commit_timestamp_ms: 12 };
        for (k, v) in [(&legacy_key, body(0, false)), (&key, body(1, true)), (&key, body(2, false))] {
            let StoredRecord::Offset { value, .. } = StoredRecord::decode(k, Some(&v)).unwrap() else {
                panic!("not an offset record");
            };
            assert_eq!(value.unwrap(), expected);
        }

        // Group value v0: no rebalance timeout, state timestamp or instance id.
        let mut v0 = vec![0, 0, 0, 1, b'c', 0, 0, 0, 4, 0, 1, b'r', 0xff, 0xff, 0, 0, 0, 1];
        v0.extend_from_slice(&[0, 2, b'm', b'1', 0, 1, b'c', 0, 1, b'h', 0, 0, 0x27, 0x10]);
        v0.extend_from_slice(&[0, 0, 0, 1, b's', 0, 0, 0, 1, b'a']);
        let group_key = StoredRecord::Group { group: "g".into(), value: None }.encode_key();
        let StoredRecord::Group { value: Some(value), .. } = StoredRecord::decode(&group_key, Some(&v0)).unwrap()
        else {
            panic!("not a group record");
        };
        assert_eq!(value.generation, 4);
        assert_eq!(value.protocol.as_deref(), Some("r"));
        assert_eq!(value.leader, None);
        assert_eq!(value.state_timestamp_ms, -1);
        let member = &value.members[0];
        assert_eq!((member.member_id.as_str(), member.instance_id.as_deref()), ("m1", None));
        assert_eq!((member.session_timeout_ms, member.rebalance_timeout_ms), (10_000, 10_000));
        assert_eq!((&member.subscription[..], &member.assignment[..]), (&b"s"[..], &b"a"[..]));
    }

    #[test]
    fn unknown_versions_and_malformed_fields_are_named_errors() {
        let good = offset(
            "g",
            "t",
            1,
            Some(OffsetValue { offset: 1, leader_epoch: 0, metadata: String::new(), commit_timestamp_ms: 0 }),
        );
        let key = good.encode_key();
        let value = good.encode_value().unwrap();

        let mut unknown_key = key.clone();
        unknown_key[1] = 4; // KIP-848 partition metadata: not written, not read
        assert_eq!(StoredRecord::decode(&unknown_key, None), Err(StoreError::UnknownKeyVersion { version: 4 }));

        let mut flexible = value.clone();
        flexible[1] = 4;
        assert_eq!(
            StoredRecord::decode(&key, Some(&flexible)),
            Err(StoreError::UnknownValueVersion { record: OFFSET_VALUE, version: 4 })
        );

        assert_eq!(
            StoredRecord::decode(&key[..key.len() - 1], None),
            Err(StoreError::Truncated { record: OFFSET_KEY, field: "partition" })
        );
        assert_eq!(
            StoredRecord::decode(&[], None),
            Err(StoreError::Truncated { record: "record key", field: "version" })
        );

        let mut trailing = value.clone();
        trailing.push(0);
        assert_eq!(
            StoredRecord::decode(&key, Some(&trailing)),
            Err(StoreError::TrailingBytes { record: OFFSET_VALUE, count: 1 })
        );

        let null_group = [0, 1, 0xff, 0xff, 0, 1, b't', 0, 0, 0, 0];
        assert_eq!(
            StoredRecord::decode(&null_group, None),
            Err(StoreError::InvalidLength { record: OFFSET_KEY, field: "group", length: -1 })
        );
        let bad_utf8 = [0, 2, 0, 1, 0xff];
        assert_eq!(
            StoredRecord::decode(&bad_utf8, None),
            Err(StoreError::InvalidUtf8 { record: GROUP_KEY, field: "group" })
        );

        let group_key = StoredRecord::Group { group: "g".into(), value: None }.encode_key();
        let mut hostile = vec![0, 3, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        hostile.extend_from_slice(&0i64.to_be_bytes());
        hostile.extend_from_slice(&i32::MAX.to_be_bytes()); // member count with no members
        assert_eq!(
            StoredRecord::decode(&group_key, Some(&hostile)),
            Err(StoreError::Truncated { record: GROUP_VALUE, field: "member_id" })
        );
    }

    #[test]
    fn every_truncation_of_a_record_is_an_error() {
        let record = StoredRecord::Group { group: "g".into(), value: Some(group_value()) };
        let key = record.encode_key();
        let value = record.encode_value().unwrap();
        for cut in 0..key.len() {
            assert!(StoredRecord::decode(&key[..cut], None).is_err(), "key cut at {cut}");
        }
        for cut in 0..value.len() {
            assert!(StoredRecord::decode(&key, Some(&value[..cut])).is_err(), "value cut at {cut}");
        }
    }

    #[test]
    fn overlong_strings_are_caught_before_encoding() {
        let record = offset("g", &"t".repeat(STRING_BYTES_MAX + 1), 0, None);
        assert_eq!(record.check_encodable(), Err(StoreError::TooLong { field: "topic", length: STRING_BYTES_MAX + 1 }));
        let mut value = group_value();
        value.members[1].instance_id = Some("i".repeat(STRING_BYTES_MAX + 1));
        let group = StoredRecord::Group { group: "g".into(), value: Some(value) };
        assert!(matches!(group.check_encodable(), Err(StoreError::TooLong { field: "group_instance_id", .. })));
        let fits = offset(&"g".repeat(STRING_BYTES_MAX), "t", 0, None);
        assert_eq!(fits.check_encodable(), Ok(()));
        assert_eq!(round_trip(&fits), fits);
    }

    fn mixed_records() -> Vec<StoredRecord> {
        vec![
            StoredRecord::Group { group: "g1".into(), value: Some(group_value()) },
            offset(
                "g1",
                "orders",
                0,
                Some(OffsetValue { offset: 10, leader_epoch: -1, metadata: String::new(), commit_timestamp_ms: 5 }),
            ),
            offset("g1", "orders", 1, None),
            StoredRecord::Group { group: "g2".into(), value: None },
        ]
    }

    #[test]
    fn a_batch_of_mixed_records_decodes_in_order_with_offsets() {
        let records = mixed_records();
        let mut first = encode_batch(&records, 1_000);
        batch::validate_produced(&first, 1 << 20).unwrap();
        batch::stamp(&mut first, 100, 0);
        let mut second = encode_batch(&records[..1], 2_000);
        batch::stamp(&mut second, 104, 0);
        let mut log = first.clone();
        log.extend_from_slice(&second);
        // A read may end inside a batch; the partial batch is ignored.
        log.extend_from_slice(&first[..first.len() / 2]);

        let (decoded, skipped) = decode_batches(&log);
        assert_eq!(skipped, 0);
        let expected: Vec<(i64, StoredRecord)> =
            (100..).zip(records.iter().cloned().chain(records[..1].iter().cloned())).collect();
        assert_eq!(decoded, expected);
    }

    /// A batch of raw (key, value) records with the given attributes, stamped at `base`.
    /// The CRC is left stale: reads of the log do not check it again.
    fn raw_batch(records: &[batch::KeyValue<'_>], base: i64, attributes: i16) -> Vec<u8> {
        let mut bytes = batch::encode_batch(records, 0);
        bytes[21..23].copy_from_slice(&attributes.to_be_bytes());
        batch::stamp(&mut bytes, base, 0);
        bytes
    }

    #[test]
    fn undecodable_records_are_skipped_and_counted_and_control_batches_ignored() {
        let good = offset("g", "t", 0, None);
        let good_key = good.encode_key();
        let mut log = raw_batch(&[(None, Some(b"no key")), (Some(&good_key), None), (Some(b"\x00\x09"), None)], 0, 0);
        // A control batch (an end-transaction marker) is not group state.
        log.extend_from_slice(&raw_batch(&[(Some(b"\x00\x00\x00\x00"), Some(b"\x00\x00\x00\x00\x00\x00"))], 3, 0x30));
        // A batch whose records section does not parse: all its records are unreadable.
        let mut broken = raw_batch(&[(Some(&good_key), None), (Some(&good_key), None)], 4, 0);
        broken[batch::BATCH_HEADER_BYTES] = 0x7f; // first record length far past the end
        log.extend_from_slice(&broken);
        log.extend_from_slice(&raw_batch(&[(Some(&good_key), None)], 6, 0));

        let (decoded, skipped) = decode_batches(&log);
        assert_eq!(decoded, vec![(1, good.clone()), (6, good)]);
        assert_eq!(skipped, 2 + 2);
    }

    #[test]
    fn a_corrupt_batch_length_stops_the_walk() {
        let mut log = encode_batch(&mixed_records(), 0);
        let mut corrupt = log.clone();
        corrupt[8..12].copy_from_slice(&(-7i32).to_be_bytes());
        log.extend_from_slice(&corrupt);
        log.extend_from_slice(&encode_batch(&mixed_records(), 0));
        let (decoded, skipped) = decode_batches(&log);
        assert_eq!(decoded.len(), 4);
        assert_eq!(skipped, 1);
        assert_eq!(decode_batches(&[]), (vec![], 0));
        assert_eq!(decode_batches(&log[..11]), (vec![], 0));
    }

    fn arbitrary_string() -> impl Strategy<Value = String> {
        prop::string::string_regex("[a-zA-Z0-9._é-]{0,12}").expect("a valid regex")
    }

    fn arbitrary_record() -> impl Strategy<Value = StoredRecord> {
        let offset_value = (any::<i64>(), any::<i32>(), arbitrary_string(), any::<i64>()).prop_map(
            |(offset, leader_epoch, metadata, commit_timestamp_ms)| OffsetValue {
                offset,
                leader_epoch,
                metadata,
                commit_timestamp_ms,
            },
        );
        let member = (
            (arbitrary_string(), prop::option::of(arbitrary_string()), arbitrary_string(), arbitrary_string()),
            (
                any::<i32>(),
                any::<i32>(),
                prop::collection::vec(any::<u8>(), 0..8),
                prop::collection::vec(any::<u8>(), 0..8),
            ),
        )
            .prop_map(
                |((member_id, instance_id, client_id, client_host), (rebalance, session, subscription, assignment))| {
                    StoredMember {
                        member_id,
                        instance_id,
                        client_id,
                        client_host,
                        rebalance_timeout_ms: rebalance,
                        session_timeout_ms: session,
                        subscription: subscription.into(),
                        assignment: assignment.into(),
                    }
                },
            );
        let group_value =
            (
                arbitrary_string(),
                any::<i32>(),
                prop::option::of(arbitrary_string()),
                prop::option::of(arbitrary_string()),
                any::<i64>(),
                prop::collection::vec(member, 0..4),
            )
                .prop_map(|(protocol_type, generation, protocol, leader, state_timestamp_ms, members)| {
                    GroupValue { protocol_type, generation, protocol, leader, state_timestamp_ms, members }
                });
        prop_oneof![
            (arbitrary_string(), arbitrary_string(), any::<i32>(), prop::option::of(offset_value))
                .prop_map(|(group, topic, partition, value)| StoredRecord::Offset { group, topic, partition, value }),
            (arbitrary_string(), prop::option::of(group_value))
                .prop_map(|(group, value)| StoredRecord::Group { group, value }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn records_round_trip_through_a_batch(records in prop::collection::vec(arbitrary_record(), 1..6)) {
            for record in &records {
                prop_assert_eq!(&round_trip(record), record);
            }
            let (decoded, skipped) = decode_batches(&encode_batch(&records, 7));
            prop_assert_eq!(skipped, 0);
            prop_assert_eq!(decoded, (0..).zip(records).collect::<Vec<_>>());
        }

        #[test]
        fn random_bytes_never_panic(key in prop::collection::vec(any::<u8>(), 0..48),
                                    value in prop::option::of(prop::collection::vec(any::<u8>(), 0..96)),
                                    log in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = StoredRecord::decode(&key, value.as_deref());
            let _ = decode_batches(&log);
        }

        #[test]
        fn corrupted_batches_never_panic(records in prop::collection::vec(arbitrary_record(), 1..4),
                                         flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
            let mut bytes = encode_batch(&records, 0);
            for (at, byte) in flips {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            let _ = decode_batches(&bytes);
        }
    }
}
