//! The Fetch response (v4–v16), encoded by hand so that record bytes never pass through an
//! encoder: the response is a list of [`Chunk`]s — the fields, written into small buffers;
//! the record batches, shared with the batch cache (or the buffer a file read filled); and
//! slices of segment files — which the connection writes to the socket as they are (one
//! vectored send for a run of buffers, splice for a file slice). No record byte is copied
//! into a response buffer: the fields between record chunks are written into slices of one
//! growing field buffer.
//!
//! Layout (Kafka's `FetchResponse`; flexible versions, v12+, use compact lengths and carry an
//! empty tagged-field section after every struct; tagged fields are never emitted):
//!
//! ```text
//! throttle_time_ms i32 | error_code i16 (v7+) | session_id i32 (v7+)
//! responses [ topic string (v4–v12) | topic_id uuid (v13+)
//!             partitions [ partition_index i32 | error_code i16 | high_watermark i64
//!                          last_stable_offset i64 | log_start_offset i64 (v5+)
//!                          aborted_transactions nullable [ producer_id i64 | first_offset i64 ]
//!                          preferred_read_replica i32 (v11+) | records nullable bytes ] ]
//! ```
//!
//! The encoding is checked byte for byte against `kafka-protocol`'s for every version (tests
//! below).

use bytes::{BufMut, Bytes, BytesMut};
use corelog_engine::log::FileSlice;
use kafka_protocol::messages::ApiKey;

/// A piece of a response: bytes in memory, or a range of a segment file sent by splice.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    Memory(Bytes),
    File(FileSlice),
}

impl Chunk {
    pub fn len(&self) -> usize {
        match self {
            Chunk::Memory(bytes) => bytes.len(),
            Chunk::File(slice) => slice.len as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A Fetch response to encode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FetchOut {
    pub throttle_time_ms: i32,
    /// v7+.
    pub error_code: i16,
    /// v7+.
    pub session_id: i32,
    pub topics: Vec<TopicOut>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicOut {
    /// v4–v12.
    pub name: String,
    /// v13+.
    pub topic_id: uuid::Uuid,
    pub partitions: Vec<PartitionOut>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PartitionOut {
    pub partition_index: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    /// v5+.
    pub log_start_offset: i64,
    /// (producer id, first offset); None encodes a null array.
    pub aborted_transactions: Option<Vec<(i64, i64)>>,
    /// v11+; -1 before.
    pub preferred_read_replica: i32,
    /// Record batches, in order (the last may be cut short by a size limit); None encodes null.
    pub records: Option<Vec<Chunk>>,
}

impl Default for PartitionOut {
    /// Kafka's defaults (those of `kafka-protocol`'s `PartitionData`).
    fn default() -> Self {
        Self {
            partition_index: 0,
            error_code: 0,
            high_watermark: 0,
            last_stable_offset: -1,
            log_start_offset: -1,
            aborted_transactions: Some(Vec::new()),
            preferred_read_replica: -1,
            records: Some(Vec::new()),
        }
    }
}

impl PartitionOut {
    pub fn records_len(&self) -> usize {
        self.records.iter().flatten().map(Chunk::len).sum()
    }
}

/// Why a response cannot be encoded in the version asked: a field that version lacks is set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Fetch v{version} cannot carry {field}")]
pub struct EncodeError {
    pub version: i16,
    pub field: &'static str,
}

/// The response frame being built: owned field buffers, shared record buffers, file slices.
struct Segments {
    done: Vec<Segment>,
    head: BytesMut,
}

enum Segment {
    Own(BytesMut),
    Shared(Chunk),
}

impl Segment {
    fn len(&self) -> usize {
        match self {
            Segment::Own(b) => b.len(),
            Segment::Shared(chunk) => chunk.len(),
        }
    }
}

impl Segments {
    fn new() -> Self {
        Self { done: Vec::new(), head: BytesMut::with_capacity(1024) }
    }

    fn records(&mut self, chunk: &Chunk) {
        if chunk.is_empty() {
            return;
        }
        // The fields so far become a segment of their own; the buffer's spare capacity goes
        // on holding the next fields (one allocation for many partitions' fields).
        let fields = self.head.split();
        self.done.push(Segment::Own(fields));
        self.done.push(Segment::Shared(chunk.clone()));
    }

    /// The frame: its 4-byte size prefix patched in, every buffer frozen.
    fn finish(mut self) -> Vec<Chunk> {
        self.done.push(Segment::Own(self.head));
        let total: usize = self.done.iter().map(Segment::len).sum();
        let mut segments = self.done.into_iter();
        let mut out = Vec::with_capacity(segments.len());
        if let Some(Segment::Own(mut first)) = segments.next() {
            let size = (total - 4) as i32;
            first[0..4].copy_from_slice(&size.to_be_bytes());
            out.push(Chunk::Memory(first.freeze()));
        }
        for segment in segments {
            match segment {
                Segment::Own(b) if b.is_empty() => {}
                Segment::Own(b) => out.push(Chunk::Memory(b.freeze())),
                Segment::Shared(chunk) => out.push(chunk),
            }
        }
        out
    }
}

fn put_uvarint(buf: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// An array or bytes length: compact (unsigned varint of length + 1, 0 = null) in flexible
/// versions, else `width`-byte big-endian (-1 = null).
fn put_length(buf: &mut BytesMut, length: Option<usize>, flexible: bool, width_bytes: usize) {
    match (flexible, length) {
        (true, None) => put_uvarint(buf, 0),
        (true, Some(n)) => put_uvarint(buf, n as u32 + 1),
        (false, None) if width_bytes == 2 => buf.put_i16(-1),
        (false, None) => buf.put_i32(-1),
        (false, Some(n)) if width_bytes == 2 => buf.put_i16(n as i16),
        (false, Some(n)) => buf.put_i32(n as i32),
    }
}

/// Encodes the whole response frame — size prefix, response header with `correlation_id`, body
/// — as chunks whose concatenation is the frame.
pub fn encode(response: &FetchOut, version: i16, correlation_id: i32) -> Result<Vec<Chunk>, EncodeError> {
    assert!((4..=16).contains(&version), "Fetch v{version} is not served");
    let check = |ok: bool, field: &'static str| if ok { Ok(()) } else { Err(EncodeError { version, field }) };
    check(version >= 7 || (response.error_code == 0 && response.session_id == 0), "a top-level error or a session")?;
    let flexible = version >= 12;
    let mut out = Segments::new();
    let buf = &mut out.head;
    buf.put_i32(0); // size, patched at the end
    buf.put_i32(correlation_id);
    if ApiKey::Fetch.response_header_version(version) >= 1 {
        put_uvarint(buf, 0);
    }
    buf.put_i32(response.throttle_time_ms);
    if version >= 7 {
        buf.put_i16(response.error_code);
        buf.put_i32(response.session_id);
    }
    put_length(buf, Some(response.topics.len()), flexible, 4);
    for topic in &response.topics {
        let buf = &mut out.head;
        if version <= 12 {
            put_length(buf, Some(topic.name.len()), flexible, 2);
            buf.extend_from_slice(topic.name.as_bytes());
        } else {
            buf.extend_from_slice(topic.topic_id.as_bytes());
        }
        put_length(buf, Some(topic.partitions.len()), flexible, 4);
        for partition in &topic.partitions {
            check(version >= 11 || partition.preferred_read_replica == -1, "a preferred read replica")?;
            let buf = &mut out.head;
            buf.put_i32(partition.partition_index);
            buf.put_i16(partition.error_code);
            buf.put_i64(partition.high_watermark);
            buf.put_i64(partition.last_stable_offset);
            if version >= 5 {
                buf.put_i64(partition.log_start_offset);
            }
            put_length(buf, partition.aborted_transactions.as_ref().map(Vec::len), flexible, 4);
            for (producer_id, first_offset) in partition.aborted_transactions.iter().flatten() {
                buf.put_i64(*producer_id);
                buf.put_i64(*first_offset);
                if flexible {
                    put_uvarint(buf, 0);
                }
            }
            if version >= 11 {
                buf.put_i32(partition.preferred_read_replica);
            }
            let records_len = partition.records.as_ref().map(|_| partition.records_len());
            put_length(buf, records_len, flexible, 4);
            for chunk in partition.records.iter().flatten() {
                out.records(chunk);
            }
            if flexible {
                put_uvarint(&mut out.head, 0);
            }
        }
        if flexible {
            put_uvarint(&mut out.head, 0);
        }
    }
    if flexible {
        put_uvarint(&mut out.head, 0);
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, ProducerId, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use proptest::prelude::*;

    /// The same response as `kafka-protocol` models it (records concatenated).
    fn reference(response: &FetchOut) -> FetchResponse {
        let topics = response
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let aborted = p.aborted_transactions.as_ref().map(|list| {
                            list.iter()
                                .map(|(id, first)| {
                                    AbortedTransaction::default()
                                        .with_producer_id(ProducerId(*id))
                                        .with_first_offset(*first)
                                })
                                .collect()
                        });
                        PartitionData::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(p.error_code)
                            .with_high_watermark(p.high_watermark)
                            .with_last_stable_offset(p.last_stable_offset)
                            .with_log_start_offset(p.log_start_offset)
                            .with_aborted_transactions(aborted)
                            .with_preferred_read_replica(p.preferred_read_replica.into())
                            .with_records(p.records.as_ref().map(|chunks| Bytes::from(concat(chunks))))
                    })
                    .collect();
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(t.name.clone())))
                    .with_topic_id(t.topic_id)
                    .with_partitions(partitions)
            })
            .collect();
        FetchResponse::default()
            .with_throttle_time_ms(response.throttle_time_ms)
            .with_error_code(response.error_code)
            .with_session_id(response.session_id)
            .with_responses(topics)
    }

    /// The bytes of chunks, file slices read back.
    fn concat(chunks: &[Chunk]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks {
            match chunk {
                Chunk::Memory(bytes) => out.extend_from_slice(bytes),
                Chunk::File(slice) => out.extend_from_slice(&slice.read_blocking().unwrap()),
            }
        }
        out
    }

    /// One file shared by every test case, its bytes a known pattern.
    fn pattern_file() -> std::sync::Arc<std::fs::File> {
        static FILE: std::sync::OnceLock<std::sync::Arc<std::fs::File>> = std::sync::OnceLock::new();
        FILE.get_or_init(|| {
            let mut file = tempfile::tempfile().unwrap();
            let pattern: Vec<u8> = (0..PATTERN_FILE_BYTES).map(|i| (i % 253) as u8).collect();
            std::io::Write::write_all(&mut file, &pattern).unwrap();
            std::sync::Arc::new(file)
        })
        .clone()
    }

    const PATTERN_FILE_BYTES: u64 = 64 << 10;

    fn reference_frame(response: &FetchOut, version: i16, correlation_id: i32) -> Vec<u8> {
        let mut body = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut body, ApiKey::Fetch.response_header_version(version))
            .unwrap();
        reference(response).encode(&mut body, version).unwrap();
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    fn chunk() -> impl Strategy<Value = Chunk> {
        // Small and large batches in memory, and file slices.
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200).prop_map(|v| Chunk::Memory(Bytes::from(v))),
            (16_000..20_000usize, any::<u8>()).prop_map(|(n, b)| Chunk::Memory(Bytes::from(vec![b; n]))),
            (0..PATTERN_FILE_BYTES / 2, 0..PATTERN_FILE_BYTES / 2)
                .prop_map(|(position, len)| Chunk::File(FileSlice::new(pattern_file(), position, len))),
        ]
    }

    fn partition(version: i16) -> impl Strategy<Value = PartitionOut> {
        (
            (any::<i32>(), any::<i16>(), any::<i64>(), any::<i64>(), any::<i64>()),
            prop::option::of(prop::collection::vec((any::<i64>(), any::<i64>()), 0..3)),
            any::<i32>(),
            prop::option::of(prop::collection::vec(chunk(), 0..4)),
        )
            .prop_map(move |((index, error, hw, lso, lss), aborted, replica, records)| PartitionOut {
                partition_index: index,
                error_code: error,
                high_watermark: hw,
                last_stable_offset: lso,
                log_start_offset: if version >= 5 { lss } else { -1 },
                aborted_transactions: aborted,
                preferred_read_replica: if version >= 11 { replica } else { -1 },
                records,
            })
    }

    fn response(version: i16) -> impl Strategy<Value = FetchOut> {
        let topic = ("[a-z._-]{0,20}", any::<u128>(), prop::collection::vec(partition(version), 0..4)).prop_map(
            move |(name, id, partitions)| TopicOut {
                // A version carries either the name or the id; the other is its default.
                name: if version <= 12 { name } else { String::new() },
                topic_id: if version >= 13 { uuid::Uuid::from_u128(id) } else { uuid::Uuid::nil() },
                partitions,
            },
        );
        (any::<i32>(), any::<i16>(), any::<i32>(), prop::collection::vec(topic, 0..3)).prop_map(
            move |(throttle, error, session, topics)| FetchOut {
                throttle_time_ms: throttle,
                error_code: if version >= 7 { error } else { 0 },
                session_id: if version >= 7 { session } else { 0 },
                topics,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn the_hand_written_encoding_is_kafka_protocols_byte_for_byte(
            (version, response) in (4i16..=16).prop_flat_map(|v| (Just(v), response(v))),
            correlation_id in any::<i32>(),
        ) {
            let segments = encode(&response, version, correlation_id).unwrap();
            let ours: Vec<u8> = concat(&segments);
            prop_assert_eq!(&ours, &reference_frame(&response, version, correlation_id));
            // No record chunk is copied: each is a segment of its own, the same memory;
            // file slices stay file slices.
            let kept = response.topics.iter().flat_map(|t| &t.partitions).flat_map(|p| p.records.iter().flatten())
                .filter(|c| !c.is_empty());
            for chunk in kept {
                let found = segments.iter().any(|s| match (s, chunk) {
                    (Chunk::Memory(s), Chunk::Memory(c)) => s.as_ptr() == c.as_ptr() && s.len() == c.len(),
                    (s, c) => s == c,
                });
                prop_assert!(found);
            }
            // And it decodes as what was meant.
            let mut frame = Bytes::from(ours);
            let _size = frame.split_to(4);
            let header = ResponseHeader::decode(&mut frame, ApiKey::Fetch.response_header_version(version)).unwrap();
            prop_assert_eq!(header.correlation_id, correlation_id);
            let decoded = FetchResponse::decode(&mut frame, version).unwrap();
            prop_assert_eq!(decoded, reference(&response));
        }
    }

    #[test]
    fn fields_a_version_lacks_are_refused() {
        let with_session = FetchOut { session_id: 3, ..FetchOut::default() };
        assert_eq!(
            encode(&with_session, 6, 1),
            Err(EncodeError { version: 6, field: "a top-level error or a session" })
        );
        assert!(encode(&with_session, 7, 1).is_ok());
        let replica = PartitionOut { preferred_read_replica: 2, ..PartitionOut::default() };
        let response = FetchOut {
            topics: vec![TopicOut { partitions: vec![replica], ..TopicOut::default() }],
            ..FetchOut::default()
        };
        assert_eq!(encode(&response, 10, 1).unwrap_err().field, "a preferred read replica");
        assert!(encode(&response, 11, 1).is_ok());
    }
}
