//! Property test of the request path with hostile input: random frames for every API key and
//! version, and valid requests with random bytes flipped or cut. Each must get a response or
//! a clean close of that connection, never a hang or a crash, and the broker must keep
//! serving a well-behaved client throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

// The broker's allocator, as in `corelog start`. kafka-protocol 0.18 sizes a decoded array's
// `Vec` from the count on the wire before reading its elements (upstream issue, fix pending):
// a tiny request can ask for a 100+ GB allocation. mimalloc reserves such a block lazily
// (MAP_NORESERVE), decoding then fails on the missing elements and the connection is closed;
// the system allocator aborts the process instead. This test keeps that property checked.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Broker, Options, request_frame};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, MetadataRequest};
use kafka_protocol::protocol::StrBytes;
use proptest::prelude::*;

fn valid_requests() -> Vec<Vec<u8>> {
    let topic = kafka_protocol::messages::create_topics_request::CreatableTopic::default()
        .with_name(kafka_protocol::messages::TopicName(StrBytes::from_static_str("fuzz")))
        .with_num_partitions(1)
        .with_replication_factor(1);
    vec![
        request_frame(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default()),
        request_frame(ApiKey::Metadata, 12, 2, &MetadataRequest::default()),
        request_frame(ApiKey::Metadata, 1, 3, &MetadataRequest::default()),
        request_frame(ApiKey::CreateTopics, 7, 4, &CreateTopicsRequest::default().with_topics(vec![topic])),
        // The group paths: each decodes into the coordinator on the group's shard.
        request_frame(ApiKey::JoinGroup, 9, 5, &group_requests::join()),
        request_frame(ApiKey::SyncGroup, 5, 6, &group_requests::sync()),
        request_frame(ApiKey::OffsetCommit, 8, 7, &group_requests::commit()),
        request_frame(ApiKey::ConsumerGroupHeartbeat, 1, 8, &group_requests::consumer_heartbeat()),
    ]
}

mod group_requests {
    use bytes::Bytes;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
    use kafka_protocol::messages::{
        ConsumerGroupHeartbeatRequest, GroupId, JoinGroupRequest, OffsetCommitRequest, SyncGroupRequest, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;

    fn group() -> GroupId {
        GroupId(StrBytes::from_static_str("fuzz-group"))
    }

    pub fn join() -> JoinGroupRequest {
        JoinGroupRequest::default()
            .with_group_id(group())
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(Bytes::from_static(b"subscription")),
            ])
    }

    pub fn sync() -> SyncGroupRequest {
        SyncGroupRequest::default()
            .with_group_id(group())
            .with_generation_id(1)
            .with_member_id(StrBytes::from_static_str("m"))
    }

    pub fn commit() -> OffsetCommitRequest {
        OffsetCommitRequest::default().with_group_id(group()).with_generation_id_or_member_epoch(-1).with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("fuzz")))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(5),
                ]),
        ])
    }

    pub fn consumer_heartbeat() -> ConsumerGroupHeartbeatRequest {
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("fuzz-consumer-group")))
            .with_member_id(StrBytes::from_static_str("member"))
            .with_rebalance_timeout_ms(5_000)
            .with_subscribed_topic_names(Some(vec![TopicName(StrBytes::from_static_str("fuzz"))]))
            .with_topic_partitions(Some(Vec::new()))
    }
}

#[derive(Debug, Clone)]
enum Input {
    /// A frame with a plausible header and random body.
    Random { api_key: i16, version: i16, body: Vec<u8> },
    /// A valid request with bytes flipped and possibly cut short.
    Mutated { which: usize, flips: Vec<(usize, u8)>, cut: Option<usize> },
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (prop_oneof![0i16..=75, any::<i16>()], -2i16..20, proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(api_key, version, body)| Input::Random { api_key, version, body }),
        (0usize..8, proptest::collection::vec((any::<usize>(), 1u8..=255), 1..6), proptest::option::of(any::<usize>()))
            .prop_map(|(which, flips, cut)| Input::Mutated { which, flips, cut }),
    ]
}

fn encode(input: &Input) -> Vec<u8> {
    match input {
        Input::Random { api_key, version, body } => {
            let mut frame = ((body.len() + 8) as i32).to_be_bytes().to_vec();
            frame.extend_from_slice(&api_key.to_be_bytes());
            frame.extend_from_slice(&version.to_be_bytes());
            frame.extend_from_slice(&7i32.to_be_bytes());
            frame.extend_from_slice(body);
            frame
        }
        Input::Mutated { which, flips, cut } => {
            let mut frame = valid_requests()[*which].clone();
            // Keep the size prefix honest so the body, not the framing, is what is hostile.
            for (at, mask) in flips {
                let at = 4 + at % (frame.len() - 4);
                frame[at] ^= mask;
            }
            if let Some(cut) = cut {
                let body_len = 1 + cut % (frame.len() - 4);
                frame.truncate(4 + body_len);
                frame[0..4].copy_from_slice(&(body_len as i32).to_be_bytes());
            }
            frame
        }
    }
}

/// Sends the input; returns once the broker answered or closed the connection. A request that
/// legitimately gets no answer yet (Produce with acks=0, a long-polling Fetch) must not stop
/// the connection from serving the next one: after a short wait an ApiVersions request is
/// sent behind it and must be answered.
fn exchange(broker: &Broker, frame: &[u8]) -> Result<(), String> {
    let mut stream = broker.connect();
    let _ = stream.write_all(frame);
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut pinged = false;
    loop {
        let mut size = [0u8; 4];
        match stream.read_exact(&mut size) {
            Ok(()) => {
                let size = i32::from_be_bytes(size);
                if size < 4 {
                    return Err(format!("response frame of {size} bytes"));
                }
                let mut body = vec![0u8; size as usize];
                stream.read_exact(&mut body).map_err(|e| format!("truncated response: {e}"))?;
                let correlation_id = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                if !pinged || correlation_id == PING_ID {
                    return Ok(());
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::UnexpectedEof || e.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                return Ok(());
            }
            Err(e) if !pinged && matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                pinged = true;
                stream.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
                let ping = request_frame(ApiKey::ApiVersions, 3, PING_ID, &ApiVersionsRequest::default());
                stream.write_all(&ping).map_err(|e| format!("connection unusable: {e}"))?;
            }
            Err(e) => return Err(format!("neither a response nor a close: {e}")),
        }
    }
}

const PING_ID: i32 = 4242;

proptest! {
    // A fixed seed keeps CI deterministic; PROPTEST_CASES / a changed seed explore further.
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x00c0_4e10_6000_0001),
        ..ProptestConfig::default()
    })]

    #[test]
    fn hostile_requests_get_an_answer_or_a_close_and_the_broker_keeps_serving(inputs in proptest::collection::vec(input(), 1..8)) {
        thread_local! {
            static BROKER: Broker = Broker::start(Options { shards: 2, ..Options::default() });
        }
        BROKER.with(|broker| -> Result<(), TestCaseError> {
            for input in &inputs {
                let frame = encode(input);
                exchange(broker, &frame).map_err(|e| TestCaseError::fail(format!("{input:?}: {e}")))?;
            }
            let mut client = broker.client();
            let response: ApiVersionsResponse = client.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
            prop_assert_eq!(response.error_code, 0);
            Ok(())
        })?;
    }
}
