//! Produce, Fetch and ListOffsets through real sockets against the real shard code.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, Client, Options, create_topic, decode_response, read_frame, request_frame};
use corelog_engine::batch;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_string()))
}

fn produce_request(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    ProduceRequest::default().with_acks(acks).with_timeout_ms(10_000).with_topic_data(vec![
        TopicProduceData::default().with_name(name(topic)).with_partition_data(vec![
            PartitionProduceData::default().with_index(partition).with_records(Some(records)),
        ]),
    ])
}

/// Produces one batch; returns (error code, base offset).
fn produce(client: &mut Client, version: i16, topic: &str, partition: i32, records: Vec<u8>) -> (i16, i64) {
    let response: ProduceResponse =
        client.call(ApiKey::Produce, version, &produce_request(topic, partition, Bytes::from(records), -1));
    let partition = &response.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

fn fetch_request(
    topic: &str,
    id: uuid::Uuid,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
    version: i16,
) -> FetchRequest {
    let mut wanted = FetchTopic::default().with_partitions(vec![
        FetchPartition::default().with_partition(partition).with_fetch_offset(offset).with_partition_max_bytes(1 << 20),
    ]);
    wanted = if version >= 13 { wanted.with_topic_id(id) } else { wanted.with_topic(name(topic)) };
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_topics(vec![wanted])
}

/// Every whole batch in `records`: (base offset, record count, value of the first record's payload bytes).
fn batches(records: &[u8]) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(size) = batch::claimed_batch_size(&records[at..]).filter(|s| at + s <= records.len()) {
        let header = batch::validate_prefix(&records[at..at + size]).expect("served batches are valid");
        out.push((header.base_offset, records[at + batch::BATCH_HEADER_BYTES..at + size].to_vec()));
        at += size;
    }
    out
}

#[test]
fn produced_batches_are_fetched_back_with_their_offsets_on_every_version() {
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    let id = create_topic(&mut client, "data", 3);
    let mut expected: Vec<Vec<(i64, Vec<u8>)>> = vec![Vec::new(); 3];
    for round in 0..6i64 {
        for partition in 0..3 {
            let value = format!("round {round} partition {partition}").into_bytes();
            let records = batch::build_test_batch(4, &value, 1_700_000_000_000 + round);
            let version = [3, 7, 9, 11][(round % 4) as usize];
            let (code, base) = produce(&mut client, version, "data", partition, records.clone());
            assert_eq!(code, 0, "produce v{version}");
            assert_eq!(base, round * 4, "offsets are per partition and consecutive");
            expected[partition as usize].push((base, records[batch::BATCH_HEADER_BYTES..].to_vec()));
        }
    }
    for version in [4i16, 7, 11, 12, 13, 16] {
        for partition in 0..3 {
            let response: FetchResponse =
                client.call(ApiKey::Fetch, version, &fetch_request("data", id, partition, 0, 100, version));
            let data = &response.responses[0].partitions[0];
            assert_eq!(data.error_code, 0, "fetch v{version}");
            assert_eq!(data.high_watermark, 24);
            assert_eq!(
                batches(data.records.as_ref().unwrap()),
                expected[partition as usize],
                "fetch v{version} p{partition}"
            );
        }
    }
    // from the middle of a batch: that whole batch first
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &fetch_request("data", id, 1, 10, 100, 12));
    assert_eq!(batches(response.responses[0].partitions[0].records.as_ref().unwrap())[0].0, 8);
}

#[test]
fn bad_produce_requests_get_per_partition_errors_and_acks_0_gets_no_response() {
    let broker = Broker::start(Options { auto_create_topics: false, ..Options::default() });
    let mut client = broker.client();
    create_topic(&mut client, "t", 1);
    let good = batch::build_test_batch(2, b"ok", 5);
    assert_eq!(produce(&mut client, 9, "nope", 0, good.clone()).0, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    assert_eq!(produce(&mut client, 9, "t", 7, good.clone()).0, 3);
    let mut corrupt = good.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(produce(&mut client, 9, "t", 0, corrupt).0, 2, "CORRUPT_MESSAGE");
    let huge = batch::build_test_batch(2000, &[7u8; 1000], 5);
    assert_eq!(produce(&mut client, 9, "t", 0, huge).0, 10, "MESSAGE_TOO_LARGE");
    assert_eq!(produce(&mut client, 9, "t", 0, good.clone()), (0, 0), "nothing bad was appended");

    // acks=0: no response; the next request's response is the next frame on the wire.
    client
        .stream
        .write_all(&request_frame(ApiKey::Produce, 9, 900, &produce_request("t", 0, Bytes::from(good.clone()), 0)))
        .unwrap();
    client.stream.write_all(&request_frame(ApiKey::Metadata, 12, 901, &MetadataRequest::default())).unwrap();
    let (correlation_id, _): (i32, MetadataResponse) =
        decode_response(read_frame(&mut client.stream), ApiKey::Metadata, 12);
    assert_eq!(correlation_id, 901);
    // the acks=0 batch was appended (offset 2), visible once durable
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 7, &list_offsets("t", -1));
        if response.topics[0].partitions[0].offset == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "acks=0 batch never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn list_offsets(topic: &str, timestamp: i64) -> ListOffsetsRequest {
    ListOffsetsRequest::default().with_topics(vec![
        ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![ListOffsetsPartition::default().with_partition_index(0).with_timestamp(timestamp)]),
    ])
}

#[test]
fn list_offsets_and_fetch_bounds() {
    let broker = Broker::start(Options::default());
    let mut client = broker.client();
    let id = create_topic(&mut client, "o", 1);
    for round in 0..5i64 {
        // Records at 1000 + 100 round and 10 ms later; the newest is in the middle batch.
        let start = if round == 2 { 5000 } else { 1000 + 100 * round };
        let records = batch::build_spread_test_batch(2, b"v", start, 10);
        assert_eq!(produce(&mut client, 9, "o", 0, records).0, 0);
    }
    let offset = |client: &mut Client, version: i16, ts: i64| {
        let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, version, &list_offsets("o", ts));
        let p = &response.topics[0].partitions[0];
        (p.error_code, p.offset)
    };
    for version in 1..=8 {
        assert_eq!(offset(&mut client, version, -2), (0, 0), "earliest v{version}");
        assert_eq!(offset(&mut client, version, -1), (0, 10), "latest v{version}");
        assert_eq!(offset(&mut client, version, 1005), (0, 1), "by time, inside a batch v{version}");
        assert_eq!(offset(&mut client, version, 1305), (0, 4), "the first record at or after it v{version}");
        assert_eq!(offset(&mut client, version, 9999), (0, -1), "after the last v{version}");
        let max = if version >= 7 { (0, 5) } else { (42, -1) };
        assert_eq!(offset(&mut client, version, -3), max, "max timestamp v{version}");
        assert_eq!(offset(&mut client, version, -7).0, 42, "INVALID_REQUEST v{version}");
    }
    // beyond the log end: OFFSET_OUT_OF_RANGE
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &fetch_request("o", id, 0, 11, 0, 12));
    assert_eq!(response.responses[0].partitions[0].error_code, 1);
    // at the log end: long poll until max_wait
    let started = Instant::now();
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &fetch_request("o", id, 0, 10, 300, 12));
    assert!(started.elapsed() >= Duration::from_millis(250), "returned before max_wait with no data");
    assert_eq!(response.responses[0].partitions[0].error_code, 0);
    assert!(response.responses[0].partitions[0].records.as_ref().unwrap().is_empty());
    // unknown topic id (v13+)
    let response: FetchResponse = client.call(ApiKey::Fetch, 13, &fetch_request("o", uuid::Uuid::nil(), 0, 0, 0, 13));
    assert_eq!(response.responses[0].partitions[0].error_code, 100);
}

#[test]
fn produced_data_survives_a_restart() {
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    let id = create_topic(&mut client, "durable", 2);
    let mut expected = Vec::new();
    for round in 0..10 {
        let records = batch::build_test_batch(3, format!("r{round}").as_bytes(), 5);
        assert_eq!(produce(&mut client, 9, "durable", 1, records.clone()).0, 0);
        expected.push(records[batch::BATCH_HEADER_BYTES..].to_vec());
    }
    drop(client);
    let dir = broker.stop();
    let broker = Broker::start_in(dir, Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &fetch_request("durable", id, 1, 0, 0, 12));
    let got: Vec<Vec<u8>> =
        batches(response.responses[0].partitions[0].records.as_ref().unwrap()).into_iter().map(|b| b.1).collect();
    assert_eq!(got, expected);
    assert_eq!(produce(&mut client, 9, "durable", 1, batch::build_test_batch(1, b"x", 5)), (0, 30));
}

#[test]
fn delete_records_moves_the_log_start_durably() {
    use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
    use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
    let broker = Broker::start(Options::default());
    let mut client = broker.client();
    let id = create_topic(&mut client, "trim", 1);
    for _ in 0..5 {
        assert_eq!(produce(&mut client, 9, "trim", 0, batch::build_test_batch(2, b"v", 5)).0, 0);
    }
    let delete = |client: &mut Client, version: i16, offset: i64| {
        let request = DeleteRecordsRequest::default().with_timeout_ms(5000).with_topics(vec![
            DeleteRecordsTopic::default()
                .with_name(name("trim"))
                .with_partitions(vec![DeleteRecordsPartition::default().with_partition_index(0).with_offset(offset)]),
        ]);
        let response: DeleteRecordsResponse = client.call(ApiKey::DeleteRecords, version, &request);
        let p = &response.topics[0].partitions[0];
        (p.error_code, p.low_watermark)
    };
    assert_eq!(delete(&mut client, 2, 4), (0, 4));
    assert_eq!(delete(&mut client, 0, 99), (1, -1), "beyond the high watermark: OFFSET_OUT_OF_RANGE");
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &fetch_request("trim", id, 0, 0, 0, 12));
    assert_eq!(response.responses[0].partitions[0].error_code, 1, "below the log start: OFFSET_OUT_OF_RANGE");
    let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 7, &list_offsets("trim", -2));
    assert_eq!(response.topics[0].partitions[0].offset, 4);
    assert_eq!(delete(&mut client, 1, -1), (0, 10), "-1 trims to the high watermark");
    drop(client);
    let dir = broker.stop();
    let broker = Broker::start_in(dir, Options::default());
    let mut client = broker.client();
    let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 7, &list_offsets("trim", -2));
    assert_eq!(response.topics[0].partitions[0].offset, 10, "the log start survives a restart");
}

#[test]
fn idempotent_producers_get_ids_and_retries_are_not_duplicated() {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    create_topic(&mut client, "idem", 1);
    let first: InitProducerIdResponse =
        client.call(ApiKey::InitProducerId, 4, &InitProducerIdRequest::default().with_transaction_timeout_ms(60_000));
    let second: InitProducerIdResponse = client.call(ApiKey::InitProducerId, 0, &InitProducerIdRequest::default());
    assert_eq!(first.error_code, 0);
    assert_ne!(first.producer_id, second.producer_id, "ids are unique");
    let id = first.producer_id.0;
    let send = |client: &mut Client, epoch: i16, sequence: i32| {
        produce(client, 9, "idem", 0, batch::build_idempotent_test_batch(2, b"i", 5, id, epoch, sequence))
    };
    assert_eq!(send(&mut client, 0, 0), (0, 0));
    assert_eq!(send(&mut client, 0, 2), (0, 2));
    assert_eq!(send(&mut client, 0, 0), (0, 0), "a retry gets its original offset");
    assert_eq!(send(&mut client, 0, 9).0, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    let bumped: InitProducerIdResponse = client.call(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default().with_producer_id(ProducerId(id)).with_producer_epoch(0),
    );
    assert_eq!((bumped.producer_id.0, bumped.producer_epoch), (id, 1));
    assert_eq!(send(&mut client, 1, 0), (0, 4));
    assert_eq!(send(&mut client, 0, 4).0, 47, "INVALID_PRODUCER_EPOCH");
    let transactional: InitProducerIdResponse = client.call(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(kafka_protocol::messages::TransactionalId(StrBytes::from_static_str("tx")))),
    );
    assert_ne!(transactional.error_code, 0, "transactions are refused");
    // ids stay unique across a restart
    drop(client);
    let dir = broker.stop();
    let broker = Broker::start_in(dir, Options::default());
    let mut client = broker.client();
    let after: InitProducerIdResponse = client.call(ApiKey::InitProducerId, 4, &InitProducerIdRequest::default());
    assert!(after.producer_id.0 > second.producer_id.0.max(id));
}

#[test]
fn a_long_poll_is_woken_by_an_append_on_another_shard() {
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    let id = create_topic(&mut client, "wake", 2);
    for partition in 0..2 {
        // Waits with nothing to read: answered when an append on that partition's owner lands,
        // long before the 20 s max wait.
        let mut fetcher = broker.connect();
        let request = fetch_request("wake", id, partition, 0, 20_000, 12);
        fetcher.write_all(&request_frame(ApiKey::Fetch, 12, 7, &request)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let records = batch::build_test_batch(2, b"wake up", 1);
        assert_eq!(produce(&mut client, 9, "wake", partition, records.clone()).0, 0);
        let (correlation_id, response): (i32, FetchResponse) =
            decode_response(read_frame(&mut fetcher), ApiKey::Fetch, 12);
        assert_eq!(correlation_id, 7);
        assert!(started.elapsed() < Duration::from_secs(10), "woken by the append, not the max wait");
        let data = &response.responses[0].partitions[0];
        assert_eq!(batches(data.records.as_ref().unwrap()), vec![(0, records[batch::BATCH_HEADER_BYTES..].to_vec())]);
    }
    // More min_bytes than will come: the answer comes at max_wait with what there is.
    let started = Instant::now();
    let request = fetch_request("wake", id, 0, 0, 300, 12).with_min_bytes(1 << 20);
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(batches(response.responses[0].partitions[0].records.as_ref().unwrap()).len(), 1);
}

#[test]
fn pipelined_produces_keep_their_order_and_are_answered_in_request_order() {
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    let id = create_topic(&mut client, "piped", 2);
    // 40 produce requests and a fetch, written at once before any answer is read; the
    // partitions' owners are both shards, so appends cross shards while later requests arrive.
    let mut stream = broker.connect();
    let mut wire = Vec::new();
    for i in 0..40i32 {
        let records = Bytes::from(batch::build_test_batch(3, format!("req {i}").as_bytes(), 1));
        wire.extend(request_frame(ApiKey::Produce, 9, 1000 + i, &produce_request("piped", i % 2, records, -1)));
    }
    wire.extend(request_frame(ApiKey::Fetch, 12, 2000, &fetch_request("piped", id, 1, 0, 0, 12)));
    stream.write_all(&wire).unwrap();
    for i in 0..40i32 {
        let (correlation_id, response): (i32, ProduceResponse) =
            decode_response(read_frame(&mut stream), ApiKey::Produce, 9);
        assert_eq!(correlation_id, 1000 + i, "responses in request order");
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!((partition.error_code, partition.base_offset), (0, i64::from(i / 2) * 3), "appends in order");
    }
    let (correlation_id, response): (i32, FetchResponse) = decode_response(read_frame(&mut stream), ApiKey::Fetch, 12);
    assert_eq!(correlation_id, 2000);
    let fetched = batches(response.responses[0].partitions[0].records.as_ref().unwrap());
    let expected: Vec<Vec<u8>> = (0..20)
        .map(|k| {
            batch::build_test_batch(3, format!("req {}", 2 * k + 1).as_bytes(), 1)[batch::BATCH_HEADER_BYTES..].to_vec()
        })
        .collect();
    assert_eq!(fetched.into_iter().map(|(_, b)| b).collect::<Vec<_>>(), expected);

    // A malformed request behind valid ones: those are answered, then the connection closes.
    let mut wire = request_frame(ApiKey::Metadata, 12, 1, &MetadataRequest::default());
    wire.extend_from_slice(&[0, 0, 0, 9, 0, 3, 0, 12, 0, 0, 0, 2, 0xff]);
    stream.write_all(&wire).unwrap();
    let (correlation_id, _): (i32, MetadataResponse) = decode_response(read_frame(&mut stream), ApiKey::Metadata, 12);
    assert_eq!(correlation_id, 1);
    assert!(common::is_closed(&mut stream));
    // Everyone else is still served.
    assert_eq!(produce(&mut client, 9, "piped", 0, batch::build_test_batch(1, b"after", 1)).0, 0);
}

#[test]
fn a_produce_pipelined_behind_a_long_poll_is_appended_and_wakes_it() {
    let broker = Broker::start(Options::default());
    let mut client = broker.client();
    let id = create_topic(&mut client, "behind", 1);
    // A fetch waiting up to 20 s, then a produce on the same connection: the produce is
    // appended while the fetch waits (one request at a time would hold it for 20 s).
    let mut stream = broker.connect();
    let records = batch::build_test_batch(1, b"behind the poll", 1);
    let mut wire = request_frame(ApiKey::Fetch, 12, 1, &fetch_request("behind", id, 0, 0, 20_000, 12));
    wire.extend(request_frame(ApiKey::Produce, 9, 2, &produce_request("behind", 0, Bytes::from(records.clone()), -1)));
    let started = Instant::now();
    stream.write_all(&wire).unwrap();
    let (correlation_id, fetched): (i32, FetchResponse) = decode_response(read_frame(&mut stream), ApiKey::Fetch, 12);
    assert_eq!(correlation_id, 1);
    assert!(started.elapsed() < Duration::from_secs(10), "the fetch was woken by the produce behind it");
    let data = &fetched.responses[0].partitions[0];
    assert_eq!(batches(data.records.as_ref().unwrap()), vec![(0, records[batch::BATCH_HEADER_BYTES..].to_vec())]);
    let (correlation_id, produced): (i32, ProduceResponse) =
        decode_response(read_frame(&mut stream), ApiKey::Produce, 9);
    assert_eq!((correlation_id, produced.responses[0].partition_responses[0].error_code), (2, 0));
}

/// A fetch of topic `id`'s partitions 0 and 1 in session `session_id` at `epoch` (v13: topics
/// by id), naming only `changed` (partition, offset) and forgetting `forgotten`.
fn session_fetch(
    id: uuid::Uuid,
    session_id: i32,
    epoch: i32,
    changed: &[(i32, i64)],
    forgotten: &[i32],
) -> FetchRequest {
    use kafka_protocol::messages::fetch_request::ForgottenTopic;
    let partitions: Vec<FetchPartition> = changed
        .iter()
        .map(|&(p, offset)| {
            FetchPartition::default().with_partition(p).with_fetch_offset(offset).with_partition_max_bytes(1 << 20)
        })
        .collect();
    let mut request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(50 << 20)
        .with_session_id(session_id)
        .with_session_epoch(epoch);
    if !partitions.is_empty() {
        request.topics = vec![FetchTopic::default().with_topic_id(id).with_partitions(partitions)];
    }
    if !forgotten.is_empty() {
        request.forgotten_topics_data =
            vec![ForgottenTopic::default().with_topic_id(id).with_partitions(forgotten.to_vec())];
    }
    request
}

/// (partition, high watermark, batches) of every partition a response carries.
fn carried(response: &FetchResponse) -> Vec<(i32, i64, usize)> {
    response
        .responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, p.high_watermark, batches(p.records.as_deref().unwrap_or_default()).len()))
        .collect()
}

#[test]
fn an_incremental_fetch_session_answers_only_what_changed() {
    let broker = Broker::start(Options::default());
    let mut client = broker.client();
    let id = create_topic(&mut client, "sessions", 2);
    for partition in 0..2 {
        let (error, _) = produce(&mut client, 9, "sessions", partition, batch::build_test_batch(3, b"v", 1_000));
        assert_eq!(error, 0);
    }
    // A full fetch opens a session and carries both partitions.
    let response: FetchResponse = client.call(ApiKey::Fetch, 13, &session_fetch(id, 0, 0, &[(0, 0), (1, 0)], &[]));
    assert_eq!(response.error_code, 0);
    let session = response.session_id;
    assert_ne!(session, 0, "a session is opened");
    assert_eq!(carried(&response), [(0, 3, 1), (1, 3, 1)]);

    // The consumer moved on from both; nothing new: an empty response.
    let response: FetchResponse =
        client.call(ApiKey::Fetch, 13, &session_fetch(id, session, 1, &[(0, 3), (1, 3)], &[]));
    assert_eq!((response.error_code, response.session_id), (0, session));
    assert_eq!(carried(&response), []);

    // New records on partition 1 only: only partition 1, although the request names nothing.
    produce(&mut client, 9, "sessions", 1, batch::build_test_batch(2, b"w", 2_000));
    let response: FetchResponse = client.call(ApiKey::Fetch, 13, &session_fetch(id, session, 2, &[], &[]));
    assert_eq!(carried(&response), [(1, 5, 1)]);

    // Partition 1 forgotten: its new records no longer come.
    let response: FetchResponse = client.call(ApiKey::Fetch, 13, &session_fetch(id, session, 3, &[], &[1]));
    assert_eq!(carried(&response), []);
    produce(&mut client, 9, "sessions", 1, batch::build_test_batch(1, b"x", 3_000));
    produce(&mut client, 9, "sessions", 0, batch::build_test_batch(1, b"y", 3_000));
    let response: FetchResponse = client.call(ApiKey::Fetch, 13, &session_fetch(id, session, 4, &[], &[]));
    assert_eq!(carried(&response), [(0, 4, 1)]);

    // Out of step, unknown, ended.
    let response: FetchResponse = client.call(ApiKey::Fetch, 13, &session_fetch(id, session, 4, &[], &[]));
    assert_eq!((response.error_code, response.session_id), (71, 0), "INVALID_FETCH_SESSION_EPOCH");
    let response: FetchResponse = client.call(ApiKey::Fetch, 13, &session_fetch(id, session ^ 1, 1, &[], &[]));
    assert_eq!(response.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");
    let response: FetchResponse = client.call(ApiKey::Fetch, 13, &session_fetch(id, session, -1, &[(0, 0)], &[]));
    assert_eq!((response.error_code, response.session_id), (0, 0));
    assert_eq!(carried(&response), [(0, 4, 2)], "a sessionless fetch is a full fetch");
    let response: FetchResponse = client.call(ApiKey::Fetch, 13, &session_fetch(id, session, 5, &[], &[]));
    assert_eq!(response.error_code, 70, "the ended session is gone");
}

/// A Fetch (answered within 100 ms, up to 50 MiB) of `partitions` of `topic` from offset 0.
fn fetch_partitions(topic: &str, partitions: std::ops::Range<i32>, partition_max_bytes: i32) -> FetchRequest {
    let wanted = partitions
        .map(|p| {
            FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(0)
                .with_partition_max_bytes(partition_max_bytes)
        })
        .collect();
    FetchRequest::default()
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_topics(vec![FetchTopic::default().with_topic(name(topic)).with_partitions(wanted)])
}

/// The sum over shards of a counter in the broker's metrics.
fn counter_total(broker: &Broker, name: &str) -> f64 {
    let hub = broker.admin();
    let text = corelog_net::admin::render_metrics(hub, hub.collect(Duration::from_secs(5)));
    let prefix = format!("{name}_total{{");
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn batches_read_from_segment_files_go_out_by_splice_byte_for_byte() {
    // No batch cache and no journal (segment writes never wait behind it): every fetch reads
    // the segment files, from the other shard too.
    let options =
        Options { shards: 2, cache_budget_bytes_per_shard: 0, journal_bytes_per_shard: 0, ..Options::default() };
    let broker = Broker::start(options);
    let mut client = broker.client();
    let id = create_topic(&mut client, "files", 2);
    let mut expected: Vec<Vec<(i64, Vec<u8>)>> = vec![Vec::new(); 2];
    for round in 0..12i64 {
        for partition in 0..2 {
            // Under a page, over a page, over the size the encoder copies inline.
            let value = vec![(round * 2 + partition as i64) as u8; [100, 5000, 40_000][(round % 3) as usize]];
            let records = batch::build_test_batch(3, &value, 1_000 + round);
            let (code, base) = produce(&mut client, 9, "files", partition, records.clone());
            assert_eq!((code, base), (0, round * 3));
            expected[partition as usize].push((base, records[batch::BATCH_HEADER_BYTES..].to_vec()));
        }
    }
    // One partition at a time from each offset a consumer would use: every response holds
    // the wanted batch first; a response may end inside a batch (cut at a page boundary).
    for version in [11i16, 16] {
        for partition in 0..2 {
            let mut fetched = Vec::new();
            let mut offset = 0;
            while offset < 36 {
                let request = fetch_request("files", id, partition, offset, 100, version);
                let response: FetchResponse = client.call(ApiKey::Fetch, version, &request);
                let data = &response.responses[0].partitions[0];
                assert_eq!((data.error_code, data.high_watermark), (0, 36), "fetch v{version}");
                let got = batches(data.records.as_ref().unwrap());
                assert!(!got.is_empty() && got[0].0 == offset, "v{version} p{partition} at {offset}: {got:?}");
                offset = got.last().unwrap().0 + 3;
                fetched.extend(got);
            }
            assert!(fetched == expected[partition as usize], "v{version} p{partition}: bytes differ");
        }
    }
    // Both partitions in one response: two file slices behind the fields.
    let both = fetch_partitions("files", 0..2, 1 << 20);
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &both);
    for (partition, data) in response.responses[0].partitions.iter().enumerate() {
        let got = batches(data.records.as_ref().unwrap());
        assert!(got.len() >= 2, "p{partition}: {} batches", got.len());
        assert!(got[..] == expected[partition][..got.len()], "p{partition}: bytes differ");
    }
    // File data went out by splice; only the partial last page was read and copied.
    let spliced = counter_total(&broker, "corelog_fetch_file_bytes_spliced");
    let copied = counter_total(&broker, "corelog_fetch_file_bytes_copied");
    assert!(spliced > 0.0 && copied > 0.0, "spliced {spliced}, copied {copied}");
    assert!(spliced > 10.0 * copied, "spliced {spliced}, copied {copied}");
}

#[test]
fn a_large_response_reaches_a_slow_reader_whole_from_files_and_cache() {
    // A 16 MiB cache: the first partition's 24 MiB go out from the segment file (splice),
    // the second's 8 MiB of batches from the cache (vectored sends); the client reads the
    // 32 MiB response slowly, so the socket fills again and again.
    let broker = Broker::start(Options { cache_budget_bytes_per_shard: 16 << 20, ..Options::default() });
    let mut client = broker.client();
    create_topic(&mut client, "slow", 2);
    let mut expected: Vec<Vec<(i64, Vec<u8>)>> = vec![Vec::new(); 2];
    for (partition, batches_wanted) in [(0i32, 120i64), (1, 40)] {
        for n in 0..batches_wanted {
            let value = vec![(n % 251) as u8 ^ partition as u8; 200 << 10];
            let records = batch::build_test_batch(1, &value, 1_000 + n);
            assert_eq!(produce(&mut client, 9, "slow", partition, records.clone()), (0, n));
            expected[partition as usize].push((n, records[batch::BATCH_HEADER_BYTES..].to_vec()));
        }
    }
    let request = fetch_partitions("slow", 0..2, 32 << 20);
    let mut stream = broker.connect();
    stream.write_all(&request_frame(ApiKey::Fetch, 12, 7, &request)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut size = [0u8; 4];
    std::io::Read::read_exact(&mut stream, &mut size).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    for (n, piece) in body.chunks_mut(64 << 10).enumerate() {
        std::io::Read::read_exact(&mut stream, piece).unwrap();
        if n % 32 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let (correlation_id, response): (i32, FetchResponse) = decode_response(Bytes::from(body), ApiKey::Fetch, 12);
    assert_eq!(correlation_id, 7);
    for (partition, data) in response.responses[0].partitions.iter().enumerate() {
        assert_eq!(data.error_code, 0);
        let got = batches(data.records.as_ref().unwrap());
        // From the file, the response ends where the active segment's whole pages end: the
        // last batch may be cut (and comes whole with the next fetch).
        let whole = if partition == 0 { expected[0].len() - 1 } else { expected[1].len() };
        assert!(got.len() >= whole, "p{partition}: {} batches", got.len());
        assert!(got[..] == expected[partition][..got.len()], "p{partition}: bytes differ");
    }
    assert!(counter_total(&broker, "corelog_fetch_file_bytes_spliced") >= (20 << 20) as f64);
    // The connection is still in step: the next request is answered.
    let mut client = Client::from(stream);
    let metadata: MetadataResponse = client.call(ApiKey::Metadata, 12, &MetadataRequest::default());
    assert_eq!(metadata.brokers.len(), 1);
}

#[test]
fn partitions_of_one_fetch_share_its_max_bytes_in_request_order() {
    // Partition limits of 40 KiB, 100 KiB for the whole response; batches of ~10 KiB.
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    create_topic(&mut client, "shared", 4);
    for partition in 0..4 {
        for n in 0..6 {
            let records = batch::build_test_batch(1, &[n as u8; 10_000], 1_000);
            assert_eq!(produce(&mut client, 9, "shared", partition, records).0, 0);
        }
    }
    let fetch = |client: &mut Client, partitions: &[i32]| -> Vec<usize> {
        let request = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(100 << 10).with_topics(vec![
            FetchTopic::default().with_topic(name("shared")).with_partitions(
                partitions
                    .iter()
                    .map(|&p| FetchPartition::default().with_partition(p).with_partition_max_bytes(40 << 10))
                    .collect(),
            ),
        ]);
        let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request);
        response.responses[0]
            .partitions
            .iter()
            .map(|p| batches(p.records.as_deref().unwrap_or_default()).len())
            .collect()
    };
    // 4 batches fit in each partition's 40 KiB; the third partition gets the 21 KiB left (2
    // batches); the fourth the last 1.6 KiB, which a partition's first batch may exceed.
    assert_eq!(fetch(&mut client, &[0, 1, 2, 3]), vec![4, 4, 2, 1]);
    // A batch larger than its partition's limit comes whole when it is the first of the
    // response, and the budget is then spent for the partitions after it.
    let big = batch::build_test_batch(1, &[9u8; 150_000], 1_000);
    create_topic(&mut client, "big-first", 1);
    assert_eq!(produce(&mut client, 9, "big-first", 0, big).0, 0);
    let request = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(100 << 10).with_topics(vec![
        FetchTopic::default()
            .with_topic(name("big-first"))
            .with_partitions(vec![FetchPartition::default().with_partition(0).with_partition_max_bytes(40 << 10)]),
        FetchTopic::default().with_topic(name("shared")).with_partitions(
            (0..2).map(|p| FetchPartition::default().with_partition(p).with_partition_max_bytes(40 << 10)).collect(),
        ),
    ]);
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request);
    let carried: Vec<usize> = response
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| batches(p.records.as_deref().unwrap_or_default()).len())
        .collect();
    assert_eq!(carried, vec![1, 0, 0]);
}

#[test]
fn a_fetch_never_carries_more_than_the_brokers_fetch_max_bytes() {
    // 6 batches of about 40 KiB; the client asks for 50 MiB, the broker allows 100 KiB.
    let broker = Broker::start(Options { fetch_max_bytes: 100 << 10, ..Options::default() });
    let mut client = broker.client();
    let id = create_topic(&mut client, "capped", 1);
    for _ in 0..6 {
        assert_eq!(produce(&mut client, 9, "capped", 0, batch::build_test_batch(1, &[7u8; 40 << 10], 1_000)).0, 0);
    }
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &fetch_request("capped", id, 0, 0, 0, 12));
    let records = response.responses[0].partitions[0].records.clone().unwrap_or_default();
    let fetched = batches(&records).len();
    assert!(records.len() <= 100 << 10, "{} bytes in a response capped at 100 KiB", records.len());
    assert!((1..6).contains(&fetched), "{fetched} batches");
}
