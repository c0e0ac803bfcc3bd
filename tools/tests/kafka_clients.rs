//! Real-client end to end: librdkafka (the `rdkafka` crate, built from source) against the real
//! `corelog` binary, every test on its own broker, temp data dir and ephemeral port.
//!
//! What a Kafka user relies on, checked through a real client: every codec and acks level
//! round-trips keys, values and headers exactly and in order; an idempotent producer whose
//! connections are cut under it (a TCP proxy in the test) writes every message exactly once;
//! offsets for times; the admin API (create topics, delete records, delete topics); a clean
//! restart keeps topics and data; a `kill -9` under an acks=all idempotent load keeps every
//! acknowledged message exactly once and in order.
//!
//! Consumers use `assign()` with explicit offsets and never commit: nothing here depends on
//! consumer groups. Every wait is bounded and fails with what was seen so far.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::WAIT;
use common::kafka::*;
use common::proxy::Proxy;
use futures_lite::future::block_on;
use rdkafka::admin::AdminClient;
use rdkafka::admin::{AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

// ---------------------------------------------------------------------------------------------
// Every codec and acks level

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
const ROUND_TRIP_MESSAGES: usize = 100_000;
const ROUND_TRIP_PARTITIONS: usize = 3;

/// Message `i` of a round trip: partition `i % 3`, so that partition `p` holds `p, p + 3, …` at
/// offsets `0, 1, …`; values of varying length (compressible, not constant); three headers, one
/// with a null value.
fn round_trip_record(tag: &str, i: usize) -> Record {
    let mut value = format!("{tag}:{i}:").into_bytes();
    value.extend((0..i % 97).map(|j| b'a' + ((i * 7 + j) % 26) as u8));
    Record {
        offset: (i / ROUND_TRIP_PARTITIONS) as i64,
        key: Some(format!("key-{i}").into_bytes()),
        value: Some(value),
        headers: vec![
            ("sequence".to_string(), Some(i.to_string().into_bytes())),
            ("tag".to_string(), Some(tag.as_bytes().to_vec())),
            ("null".to_string(), None),
        ],
    }
}

/// Produces [`ROUND_TRIP_MESSAGES`] with `codec` and `acks` to a new 3-partition topic, then
/// consumes the topic and checks every message, its offset and the end offsets exactly.
fn round_trip(address: &str, codec: &str, acks: &str) {
    let started = Instant::now();
    let topic = format!("round-trip-{codec}-acks-{acks}");
    create_topic(address, &topic, ROUND_TRIP_PARTITIONS as i32);
    let producer = producer(address, &[("compression.codec", codec), ("acks", acks), ("linger.ms", "5")]);
    for i in 0..ROUND_TRIP_MESSAGES {
        let expected = round_trip_record(&topic, i);
        let record = BaseRecord::with_opaque_to(&topic, i)
            .partition((i % ROUND_TRIP_PARTITIONS) as i32)
            .key(expected.key.as_deref().unwrap())
            .payload(expected.value.as_deref().unwrap())
            .headers(owned_headers(&expected.headers));
        send(&producer, record);
        if i % 1000 == 999 {
            producer.poll(Duration::ZERO);
        }
    }
    flush(&producer);
    let deliveries = producer.context();
    assert_eq!(deliveries.failed(), vec![], "{topic}: failed deliveries");
    let acked = deliveries.acked();
    assert_eq!(acked.len(), ROUND_TRIP_MESSAGES, "{topic}: delivery reports");
    if acks != "0" {
        // With acks the client learns each message's offset: exactly where it was sent.
        for ack in &acked {
            let expected =
                ((ack.sequence % ROUND_TRIP_PARTITIONS) as i32, (ack.sequence / ROUND_TRIP_PARTITIONS) as i64);
            assert_eq!((ack.partition, ack.offset), expected, "{topic}: acknowledged offset of {ack:?}");
        }
    }
    // With acks=0 nothing was acknowledged: consumption is the only check (loopback, no faults,
    // so every message must still be there).
    let ends: Vec<i64> =
        (0..ROUND_TRIP_PARTITIONS).map(|p| (ROUND_TRIP_MESSAGES - p).div_ceil(ROUND_TRIP_PARTITIONS) as i64).collect();
    for (p, &end) in ends.iter().enumerate() {
        assert_eq!(watermarks(address, &topic, p as i32), (0, end), "{topic}-{p} watermarks");
    }
    let ranges: Vec<_> = ends.iter().enumerate().map(|(p, &end)| (p as i32, Offset::Beginning, end)).collect();
    let consumed = consume(address, &topic, &ranges);
    for (p, records) in consumed.iter().enumerate() {
        assert_eq!(records.len() as i64, ends[p], "{topic}-{p}: message count");
        for (j, record) in records.iter().enumerate() {
            let expected = round_trip_record(&topic, p + j * ROUND_TRIP_PARTITIONS);
            if *record != expected {
                panic!("{topic}-{p} position {j}:\n got {record:?}\nwant {expected:?}");
            }
        }
    }
    eprintln!("{topic}: {ROUND_TRIP_MESSAGES} messages produced and consumed in {:?}", started.elapsed());
}

/// Every codec with one acks level, on one broker (a topic each).
fn every_codec_round_trips(acks: &str) {
    let node = Node::new("");
    let (broker, address) = node.start();
    for codec in CODECS {
        round_trip(&address, codec, acks);
    }
    broker.stop();
}

#[test]
fn every_codec_round_trips_100k_messages_with_acks_all() {
    every_codec_round_trips("all");
}

#[test]
fn every_codec_round_trips_100k_messages_with_acks_1() {
    every_codec_round_trips("1");
}

#[test]
fn every_codec_round_trips_100k_messages_with_acks_0() {
    every_codec_round_trips("0");
}

// ---------------------------------------------------------------------------------------------
// Idempotence under cut connections

const IDEMPOTENT_PARTITIONS: usize = 3;

#[test]
fn an_idempotent_producer_writes_each_message_once_through_cut_connections() {
    const MESSAGES: usize = 30_000;
    // Connection k is cut after forwarding budgets[k % 6] bytes to the broker: every budget
    // spans several Produce requests (of up to 200 messages of about 150 bytes).
    let proxy = Proxy::start(vec![8 << 10, 40 << 10, 17 << 10, 100 << 10, 25 << 10, 61 << 10]);
    let node = Node::new(&format!("advertised_listen = \"{}\"\n", proxy.address()));
    let (broker, address) = node.start();
    proxy.set_upstream(Some(&address));
    let topic = "idempotent-cut";
    create_topic(&address, topic, IDEMPOTENT_PARTITIONS as i32);

    let producer = producer(&proxy.address(), &[&IDEMPOTENT[..], &[("batch.num.messages", "200")]].concat());
    for sequence in 0..MESSAGES {
        send_sequenced(&producer, topic, IDEMPOTENT_PARTITIONS, sequence);
        if sequence % 100 == 99 {
            producer.poll(Duration::ZERO);
        }
    }
    flush(&producer);
    let deliveries = producer.context();
    assert_eq!(deliveries.failed(), vec![], "failed deliveries; client errors: {:?}", deliveries.errors());
    let acked = deliveries.acked();
    assert_eq!(acked.len(), MESSAGES);
    let (cuts, unanswered) = (proxy.cuts(), proxy.produce_unanswered());
    eprintln!("{cuts} connections cut, {unanswered} Produce requests cut off before their response");
    assert!(cuts >= 20, "the proxy cut only {cuts} connections");
    assert!(unanswered >= 20, "only {unanswered} Produce requests lost their response: too few retries");

    // Consume directly from the broker.
    let consumed = check_sequenced(&address, topic, IDEMPOTENT_PARTITIONS, &acked, MESSAGES);
    assert_eq!(consumed, MESSAGES);
    drop(producer);
    broker.stop();
}

// ---------------------------------------------------------------------------------------------
// Offsets for times

#[test]
fn offsets_for_times_finds_the_first_message_at_or_after_a_time() {
    let node = Node::new("");
    let (broker, address) = node.start();
    let topic = "times";
    create_topic(&address, topic, 2);
    // Three batches per partition (one flush each), at base, base + 10 s, base + 20 s:
    // partition 0 gets 10 messages per batch (offsets 0, 10, 20), partition 1 five (0, 5, 10);
    // message k of a batch is k ms after the batch's time.
    // The timestamps are recent so that retention has nothing to say about them.
    let base = now_ms() / 1000 * 1000 - 3_600_000;
    let producer = producer(&address, &[("acks", "all"), ("linger.ms", "50")]);
    let mut sequence = 0;
    for batch in 0..3i64 {
        for (partition, count) in [(0, 10), (1, 5)] {
            for k in 0..count {
                let value = format!("batch {batch} message {k}");
                let record = BaseRecord::with_opaque_to(topic, sequence)
                    .partition(partition)
                    .payload(value.as_bytes())
                    .timestamp(base + batch * 10_000 + k);
                send(&producer, record);
                sequence += 1;
            }
        }
        flush(&producer);
    }
    assert_eq!(producer.context().acked_count(), 45);
    let offsets_of_batches = |partition: i32| -> Vec<i64> {
        let mut acked: Vec<_> = producer.context().acked().into_iter().filter(|a| a.partition == partition).collect();
        acked.sort_by_key(|a| a.offset);
        acked.iter().map(|a| a.offset).collect()
    };
    assert_eq!(offsets_of_batches(0), (0..30).collect::<Vec<_>>());
    assert_eq!(offsets_of_batches(1), (0..15).collect::<Vec<_>>());

    let consumer = consumer(&address);
    let offsets_for = |time: i64| -> (Offset, Offset) {
        let mut query = TopicPartitionList::new();
        query.add_partition_offset(topic, 0, Offset::Offset(time)).unwrap();
        query.add_partition_offset(topic, 1, Offset::Offset(time)).unwrap();
        let found = consumer.offsets_for_times(query, WAIT).unwrap_or_else(|e| panic!("offsets for {time}: {e}"));
        let offset = |partition| {
            let element = found.find_partition(topic, partition).expect("the partition is answered");
            element.error().unwrap_or_else(|e| panic!("partition {partition} at {time}: {e}"));
            element.offset()
        };
        (offset(0), offset(1))
    };
    let at = Offset::Offset;
    // (time, offset in partition 0, offset in partition 1): the first message whose timestamp
    // is at or after the time, inside a batch or across batches; none: -1 (Offset::End).
    let cases = [
        (base - 60_000, at(0), at(0)),                // before everything
        (base, at(0), at(0)),                         // the first timestamp
        (base + 9, at(9), at(5)),                     // partition 1's first batch ends at base + 4
        (base + 5_000, at(10), at(5)),                // between batches
        (base + 10_000, at(10), at(5)),               // exactly the second batches' first messages
        (base + 10_005, at(15), at(10)),              // inside partition 0's second batch
        (base + 15_000, at(20), at(10)),              // between batches
        (base + 20_004, at(24), at(14)),              // partition 1's newest message
        (base + 20_005, at(25), Offset::End),         // after partition 1's newest message
        (base + 20_009, at(29), Offset::End),         // partition 0's newest message
        (base + 3_600_000, Offset::End, Offset::End), // after everything
    ];
    for (time, partition_0, partition_1) in cases {
        assert_eq!(offsets_for(time), (partition_0, partition_1), "offsets for base + {} ms", time - base);
    }

    drop(producer);
    broker.stop();
}

// ---------------------------------------------------------------------------------------------
// Admin

#[test]
fn the_admin_client_creates_topics_deletes_records_and_deletes_topics() {
    let node = Node::new("");
    let (broker, address) = node.start();
    let admin = admin(&address);
    let options = admin_options();

    let created = block_on(admin.create_topics(
        &[
            NewTopic::new("admin-a", 2, TopicReplication::Fixed(1)),
            NewTopic::new("admin-b", 1, TopicReplication::Fixed(1)).set("retention.ms", "3600000"),
        ],
        &options,
    ))
    .unwrap();
    assert_eq!(created, vec![Ok("admin-a".to_string()), Ok("admin-b".to_string())]);
    let refused = block_on(admin.create_topics(
        &[
            NewTopic::new("admin-a", 2, TopicReplication::Fixed(1)),
            NewTopic::new("admin-c", 1, TopicReplication::Fixed(3)),
        ],
        &options,
    ))
    .unwrap();
    assert_eq!(
        refused,
        vec![
            Err(("admin-a".to_string(), RDKafkaErrorCode::TopicAlreadyExists)),
            Err(("admin-c".to_string(), RDKafkaErrorCode::InvalidReplicationFactor)),
        ]
    );
    assert_eq!(topic_partitions(&address, "admin-a"), Ok(2));
    assert_eq!(topic_partitions(&address, "admin-b"), Ok(1));
    assert_eq!(topic_partitions(&address, "admin-c"), Err(RDKafkaErrorCode::UnknownTopicOrPartition));

    // 100 messages in partition 0, 50 in partition 1.
    let producer = producer(&address, &[("acks", "all")]);
    for sequence in 0..150 {
        let value = format!("message {sequence}");
        send(
            &producer,
            BaseRecord::with_opaque_to("admin-a", sequence)
                .partition(i32::from(sequence >= 100))
                .payload(value.as_bytes()),
        );
    }
    flush(&producer);
    assert_eq!(producer.context().acked_count(), 150);

    // Delete records: below offset 40 in partition 0, everything (-1: the high watermark) in 1.
    let mut below = TopicPartitionList::new();
    below.add_partition_offset("admin-a", 0, Offset::Offset(40)).unwrap();
    below.add_partition_offset("admin-a", 1, Offset::End).unwrap();
    let deleted = block_on(admin.delete_records(&below, &options)).unwrap();
    let low_of = |partition| {
        let element = deleted.find_partition("admin-a", partition).unwrap();
        element.error().unwrap_or_else(|e| panic!("delete records in partition {partition}: {e}"));
        element.offset()
    };
    assert_eq!((low_of(0), low_of(1)), (Offset::Offset(40), Offset::Offset(50)));
    assert_eq!(watermarks(&address, "admin-a", 0), (40, 100));
    assert_eq!(watermarks(&address, "admin-a", 1), (50, 50));
    // Beyond the high watermark: OFFSET_OUT_OF_RANGE, and the low watermark stays.
    let mut beyond = TopicPartitionList::new();
    beyond.add_partition_offset("admin-a", 0, Offset::Offset(101)).unwrap();
    let refused = block_on(admin.delete_records(&beyond, &options)).unwrap();
    let error = refused.find_partition("admin-a", 0).unwrap().error();
    assert!(
        matches!(error, Err(KafkaError::OffsetFetch(RDKafkaErrorCode::OffsetOutOfRange))),
        "deleting beyond the high watermark: {error:?}"
    );
    assert_eq!(watermarks(&address, "admin-a", 0), (40, 100));
    // A consumer from the earliest offset starts at the new low watermark.
    let consumed = consume(&address, "admin-a", &[(0, Offset::Beginning, 100)]);
    let offsets: Vec<i64> = consumed[0].iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (40..100).collect::<Vec<_>>());
    assert_eq!(consumed[0][0].value.as_deref(), Some(&b"message 40"[..]));

    // Delete topics: gone from metadata; an unknown topic is an error.
    let deleted = block_on(admin.delete_topics(&["admin-a", "never-created"], &options)).unwrap();
    assert_eq!(
        deleted,
        vec![Ok("admin-a".to_string()), Err(("never-created".to_string(), RDKafkaErrorCode::UnknownTopicOrPartition)),]
    );
    assert_eq!(topic_partitions(&address, "admin-a"), Err(RDKafkaErrorCode::UnknownTopicOrPartition));
    assert_eq!(topic_partitions(&address, "admin-b"), Ok(1));
    // A new topic of the same name starts empty.
    create_topic(&address, "admin-a", 1);
    assert_eq!(watermarks(&address, "admin-a", 0), (0, 0));

    drop(producer);
    drop(admin);
    broker.stop();
}

/// Topic configs described and altered, and partitions added, through librdkafka's admin
/// client; both survive a restart and are enforced.
#[test]
fn the_admin_client_alters_configs_and_adds_partitions() {
    let node = Node::new("");
    let (broker, address) = node.start();
    create_topic(&address, "tuned", 2);
    let client = admin(&address);
    let options = admin_options();
    let topic = ResourceSpecifier::Topic("tuned");
    let alter = AlterConfig::new(ResourceSpecifier::Topic("tuned"))
        .set("retention.ms", "3600000")
        .set("max.message.bytes", "2000");
    let altered = block_on(client.alter_configs(&[alter], &options)).unwrap();
    assert!(altered.iter().all(Result::is_ok), "{altered:?}");
    let bad = AlterConfig::new(ResourceSpecifier::Topic("tuned")).set("segment.bytes", "lots");
    // rust-rdkafka 0.39 reports every AlterConfigs resource as Ok (it never reads the
    // per-resource error), so the refusal shows as an unchanged description below.
    block_on(client.alter_configs(&[bad], &options)).unwrap();

    let describe = |admin: &AdminClient<DefaultClientContext>| {
        let described = block_on(admin.describe_configs(std::slice::from_ref(&topic), &admin_options())).unwrap();
        let resource = described.into_iter().next().unwrap().expect("describe the topic");
        let entry = |name: &str| {
            let e = resource.get(name).unwrap_or_else(|| panic!("{name} described"));
            (e.value.clone().unwrap_or_default(), format!("{:?}", e.source))
        };
        (entry("retention.ms"), entry("max.message.bytes"), entry("segment.bytes"))
    };
    let expected = (
        ("3600000".to_string(), "DynamicTopic".to_string()),
        ("2000".to_string(), "DynamicTopic".to_string()),
        ("1073741824".to_string(), "Default".to_string()),
    );
    assert_eq!(describe(&client), expected);

    let grown = block_on(client.create_partitions(&[NewPartitions::new("tuned", 4)], &options)).unwrap();
    assert_eq!(grown, vec![Ok("tuned".to_string())]);
    let shrink = block_on(client.create_partitions(&[NewPartitions::new("tuned", 3)], &options)).unwrap();
    assert!(shrink[0].is_err(), "fewer partitions are refused: {shrink:?}");
    assert_eq!(topic_partitions(&address, "tuned"), Ok(4));
    drop(client);

    broker.stop();
    let (broker, address) = node.start();
    assert_eq!(topic_partitions(&address, "tuned"), Ok(4), "the new partition count survives a restart");
    assert_eq!(describe(&admin(&address)), expected, "the configs survive a restart");
    // The new partitions take data; the new max.message.bytes is enforced.
    let producer = producer(&address, &[("linger.ms", "0")]);
    send(&producer, BaseRecord::with_opaque_to("tuned", 0).partition(3).payload(&b"small"[..]).key(&b"k"[..]));
    flush(&producer);
    assert_eq!(watermarks(&address, "tuned", 3), (0, 1));
    broker.stop();
}

/// librdkafka 2.x encodes the null topic array of a Metadata v9+ request for all topics as four
/// zero bytes instead of one (confluentinc/librdkafka#5049), so three bytes trail the request.
/// Kafka ignores trailing bytes, and so must corelog.
#[test]
fn metadata_for_all_topics_lists_every_topic() {
    let node = Node::new("");
    let (broker, address) = node.start();
    create_topic(&address, "listed-a", 2);
    create_topic(&address, "listed-b", 1);
    let metadata =
        consumer(&address).fetch_metadata(None, WAIT).unwrap_or_else(|e| panic!("metadata for all topics: {e}"));
    let mut listed: Vec<_> = metadata.topics().iter().map(|t| (t.name().to_string(), t.partitions().len())).collect();
    listed.sort();
    let expected = [("__consumer_offsets", 50), ("listed-a", 2), ("listed-b", 1)];
    assert_eq!(listed, expected.map(|(name, count)| (name.to_string(), count)).to_vec());
    broker.stop();
}

// ---------------------------------------------------------------------------------------------
// Restarts

#[test]
fn a_clean_restart_keeps_topics_and_data() {
    let node = Node::new("");
    let (broker, address) = node.start();
    let topics = [("restart-a", 3usize, 3_000usize), ("restart-b", 1, 1_000)];
    for (topic, partitions, messages) in topics {
        create_topic(&address, topic, partitions as i32);
        let producer = producer(&address, &[("acks", "all"), ("compression.codec", "zstd")]);
        for sequence in 0..messages {
            send_sequenced(&producer, topic, partitions, sequence);
        }
        flush(&producer);
        assert_eq!(producer.context().acked_count(), messages);
    }
    broker.stop();

    let (broker, address) = node.start();
    assert_eq!(topic_partitions(&address, "restart-a"), Ok(3));
    assert_eq!(topic_partitions(&address, "restart-b"), Ok(1));
    for (topic, partitions, messages) in topics {
        for partition in 0..partitions {
            let expected = messages / partitions + usize::from(partition < messages % partitions);
            assert_eq!(watermarks(&address, topic, partition as i32), (0, expected as i64), "{topic}-{partition}");
        }
        assert_eq!(check_sequenced(&address, topic, partitions, &[], messages), messages, "{topic}");
    }
    // The log continues where it stopped.
    let producer = producer(&address, &[("acks", "all")]);
    for sequence in 1_000..1_010 {
        send_sequenced(&producer, "restart-b", 1, sequence);
    }
    flush(&producer);
    let offsets: Vec<i64> = producer.context().acked().iter().map(|a| a.offset).collect();
    assert_eq!(offsets, (1_000..1_010).collect::<Vec<_>>());
    drop(producer);
    broker.stop();
}

#[test]
fn kill_9_under_an_idempotent_load_keeps_every_acknowledged_message_once() {
    const PARTITIONS: usize = 4;
    const MESSAGES_MAX: usize = 200_000;
    // No cuts: the proxy gives the producer one address across the restart (on a new port), and
    // holds responses back so that the kill surely catches written but unacknowledged requests.
    let proxy = Proxy::start(Vec::new());
    let node = Node::new(&format!("advertised_listen = \"{}\"\n", proxy.address()));
    let (broker, address) = node.start();
    proxy.set_upstream(Some(&address));
    let topic = "kill-9";
    create_topic(&address, topic, PARTITIONS as i32);

    let producer = producer(&proxy.address(), &IDEMPOTENT);
    let deliveries = producer.context().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // About 20 000 messages a second until told to stop, then every one is reported.
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) && sent < MESSAGES_MAX {
                for _ in 0..100 {
                    send_sequenced(&producer, topic, PARTITIONS, sent);
                    sent += 1;
                }
                producer.poll(Duration::from_millis(5));
            }
            let flushed = producer.flush(WAIT);
            (sent, flushed, producer.context().errors())
        })
    };
    let wait_until = |what: &str, condition: &dyn Fn() -> bool| {
        let deadline = Instant::now() + WAIT;
        while !condition() {
            assert!(Instant::now() < deadline, "{what} within {WAIT:?} ({} acks)", deliveries.acked_count());
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_until("5000 acks before the kill", &|| deliveries.acked_count() >= 5_000);
    // Answers are held from now on; once a Produce request reached the broker, give the broker
    // time to append and sync it, then kill it: the client never learns that it was written.
    proxy.hold_responses(true);
    wait_until("a Produce request in flight", &|| proxy.produce_in_flight() > 0);
    std::thread::sleep(Duration::from_millis(200));
    broker.signal(libc::SIGKILL);
    let (code, _) = broker.wait_exit();
    assert_eq!(code, None, "killed by a signal");
    proxy.set_upstream(None);
    proxy.close_all();
    proxy.hold_responses(false);
    let unanswered = proxy.produce_unanswered();
    assert!(unanswered > 0, "no Produce request was cut off by the kill");
    let acked_before_restart = deliveries.acked_count();

    let (broker, address) = node.start();
    proxy.set_upstream(Some(&address));
    wait_until("5000 more acks after the restart", &|| deliveries.acked_count() >= acked_before_restart + 5_000);
    stop.store(true, Ordering::SeqCst);
    let (sent, flushed, errors) = load.join().expect("the producing thread");
    flushed.unwrap_or_else(|e| panic!("flush after the restart: {e}; client errors: {errors:?}"));

    let acked = deliveries.acked();
    let failed = deliveries.failed();
    assert_eq!(acked.len() + failed.len(), sent, "every message gets one delivery report");
    eprintln!(
        "kill -9: {sent} sent, {acked_before_restart} acknowledged before the kill, {} after the restart, \
         {} failed; {unanswered} Produce requests were unanswered at the kill",
        acked.len() - acked_before_restart,
        failed.len()
    );
    // Written but unacknowledged messages may or may not be there; with idempotence and
    // unlimited retries the client re-sends them to the restarted broker, which must keep one
    // copy of each (at the offset it acknowledges).
    let consumed = check_sequenced(&address, topic, PARTITIONS, &acked, sent);
    assert!(consumed >= acked.len());
    broker.stop();
}
