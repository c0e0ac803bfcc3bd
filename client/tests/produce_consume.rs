//! The client's producer and consumer against a whole broker in this process: every record
//! acknowledged once at its offset, read back in order with keys, values and headers, for
//! every codec and acks setting.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use corelog_client::admin::NewTopic;
use corelog_client::consumer::{Consumer, ConsumerConfig, StartAt};
use corelog_client::producer::{Producer, ProducerConfig};
use corelog_client::records::Codec;
use corelog_client::{Client, ClientConfig};

mod common;

#[test]
fn records_are_acknowledged_once_and_read_back_in_order_for_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker(dir.path());
    let address = broker.address.to_string();
    common::run(async move {
        let client = Rc::new(Client::connect(ClientConfig::new(&address)).await.unwrap());
        let cases = [
            (Codec::None, -1, true),
            (Codec::Gzip, -1, true),
            (Codec::Snappy, 1, false),
            (Codec::Lz4, -1, true),
            (Codec::Zstd, -1, true),
            (Codec::None, 0, false),
        ];
        for (codec, acks, idempotent) in cases {
            let topic = format!("t-{}-{acks}", codec.name());
            let created = client
                .create_topics(
                    &[NewTopic { name: topic.clone(), partitions: 4, replication_factor: 1, configs: vec![] }],
                    false,
                )
                .await
                .unwrap();
            created[0].1.clone().unwrap();
            let acked: Rc<RefCell<BTreeMap<u64, (i32, i64)>>> = Rc::default();
            let sink = Rc::clone(&acked);
            let config = ProducerConfig {
                acks,
                idempotent,
                codec,
                linger: Duration::from_millis(2),
                batch_bytes: 16 << 10,
                ..ProducerConfig::default()
            };
            let producer = Producer::new(
                Rc::clone(&client),
                config,
                Box::new(move |_, delivery| {
                    assert!(delivery.error.is_none(), "{:?}", delivery.error);
                    let previous = sink.borrow_mut().insert(delivery.opaque, (delivery.partition, delivery.offset));
                    assert!(previous.is_none(), "record {} acknowledged twice", delivery.opaque);
                }),
            )
            .await
            .unwrap();
            const COUNT: u64 = 5_000;
            for i in 0..COUNT {
                let key = format!("key-{}", i % 17);
                let value = format!("value-{i}");
                let headers = [("n".to_string(), Some(Bytes::from(i.to_string())))];
                producer
                    .send(&topic, None, Some(key.as_bytes()), Some(value.as_bytes()), &headers, 1_000 + i as i64, i)
                    .await
                    .unwrap();
            }
            producer.flush().await;
            assert_eq!(acked.borrow().len(), COUNT as usize, "{topic}: every record delivered once");

            let consumer = Consumer::new(
                Rc::clone(&client),
                ConsumerConfig { max_wait: Duration::from_millis(100), ..Default::default() },
            );
            consumer.assign(&topic, &[], StartAt::Earliest).await.unwrap();
            let mut read: BTreeMap<i32, Vec<(i64, u64)>> = BTreeMap::new();
            let mut total = 0;
            for _ in 0..200 {
                for consumed in consumer.poll().await.unwrap() {
                    let value = String::from_utf8(consumed.record.value.unwrap().to_vec()).unwrap();
                    let i: u64 = value.strip_prefix("value-").unwrap().parse().unwrap();
                    let key = format!("key-{}", i % 17);
                    assert_eq!(consumed.record.key.as_deref(), Some(key.as_bytes()));
                    assert_eq!(consumed.record.headers[0].1.as_deref(), Some(i.to_string().as_bytes()));
                    assert_eq!(consumed.record.timestamp, 1_000 + i as i64);
                    read.entry(consumed.partition).or_default().push((consumed.record.offset, i));
                    total += 1;
                }
                if total >= COUNT {
                    break;
                }
            }
            assert_eq!(total, COUNT, "{topic}: every record read once");
            for (partition, records) in &read {
                // Offsets dense from 0, and the records of one key in the order sent.
                let offsets: Vec<i64> = records.iter().map(|(o, _)| *o).collect();
                assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "{topic}-{partition}");
                if acks != 0 {
                    for (offset, i) in records {
                        assert_eq!(acked.borrow()[i], (*partition, *offset), "{topic}: acknowledged where it landed");
                    }
                }
            }
            // Same key, same partition (murmur2).
            let mut partition_of_key: BTreeMap<u64, i32> = BTreeMap::new();
            for (partition, records) in &read {
                for (_, i) in records {
                    let existing = *partition_of_key.entry(i % 17).or_insert(*partition);
                    assert_eq!(existing, *partition);
                }
            }
            assert!(consumer.caught_up());
        }
    });
    broker.stop().unwrap();
}

/// The consumer sends its next fetch at the end of each poll. That prefetched fetch serves
/// the next poll when the positions are where it asked; after a seek it is dropped, and the
/// poll reads from the new position, not from where the prefetch was.
#[test]
fn a_prefetched_fetch_serves_the_next_poll_and_a_seek_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker(dir.path());
    let address = broker.address.to_string();
    common::run(async move {
        let client = Rc::new(Client::connect(ClientConfig::new(&address)).await.unwrap());
        let topic = NewTopic { name: "prefetch".into(), partitions: 1, replication_factor: 1, configs: vec![] };
        client.create_topics(&[topic], false).await.unwrap()[0].1.clone().unwrap();
        let producer =
            Producer::new(Rc::clone(&client), ProducerConfig::default(), Box::new(|_, d| assert!(d.error.is_none())))
                .await
                .unwrap();
        let produce = |from: u64, to: u64| {
            let producer = &producer;
            async move {
                for i in from..to {
                    let value = i.to_string();
                    producer.send("prefetch", Some(0), None, Some(value.as_bytes()), &[], 1_000, i).await.unwrap();
                }
                producer.flush().await;
            }
        };
        let consumer = Consumer::new(
            Rc::clone(&client),
            ConsumerConfig { max_wait: Duration::from_millis(200), ..Default::default() },
        );
        let read_until = |last: i64| {
            let consumer = &consumer;
            async move {
                let mut offsets = Vec::new();
                for _ in 0..100 {
                    for consumed in consumer.poll().await.unwrap() {
                        let value = String::from_utf8(consumed.record.value.unwrap().to_vec()).unwrap();
                        assert_eq!(value, consumed.record.offset.to_string(), "the record at its offset");
                        offsets.push(consumed.record.offset);
                    }
                    if offsets.last() == Some(&last) {
                        break;
                    }
                }
                offsets
            }
        };
        produce(0, 10).await;
        consumer.assign("prefetch", &[0], StartAt::Earliest).await.unwrap();
        assert_eq!(read_until(9).await, (0..10).collect::<Vec<_>>());
        // A fetch from offset 10 is now outstanding; records arriving there are its answer.
        produce(10, 15).await;
        assert_eq!(read_until(14).await, (10..15).collect::<Vec<_>>());
        // The fetch prefetched from 15 gets records 15..20; then a seek back: it must not be used.
        produce(15, 20).await;
        glommio::timer::sleep(Duration::from_millis(100)).await;
        consumer.assign("prefetch", &[0], StartAt::Offset(3)).await.unwrap();
        assert_eq!(read_until(19).await, (3..20).collect::<Vec<_>>());
    });
}

/// With an incremental fetch session, each fetch after the first names only the partitions
/// that moved, and the broker answers only for those with new records: every record still
/// arrives once, in order, when new records reach only some partitions at a time, and after
/// a seek and a dropped prefetch put the session out of step.
#[test]
fn incremental_fetch_sessions_deliver_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::broker(dir.path());
    let address = broker.address.to_string();
    common::run(async move {
        let client = Rc::new(Client::connect(ClientConfig::new(&address)).await.unwrap());
        let topic = NewTopic { name: "sessions".into(), partitions: 8, replication_factor: 1, configs: vec![] };
        client.create_topics(&[topic], false).await.unwrap()[0].1.clone().unwrap();
        let producer =
            Producer::new(Rc::clone(&client), ProducerConfig::default(), Box::new(|_, d| assert!(d.error.is_none())))
                .await
                .unwrap();
        let produce = |partitions: Vec<i32>, count: u64| {
            let producer = &producer;
            async move {
                for partition in partitions {
                    for _ in 0..count {
                        producer.send("sessions", Some(partition), None, Some(b"v"), &[], 1_000, 0).await.unwrap();
                    }
                }
                producer.flush().await;
            }
        };
        let consumer = Consumer::new(
            Rc::clone(&client),
            ConsumerConfig { max_wait: Duration::from_millis(100), ..Default::default() },
        );
        let mut seen: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        let read_until = async |seen: &mut BTreeMap<i32, Vec<i64>>, total: usize| {
            for _ in 0..200 {
                if seen.values().map(Vec::len).sum::<usize>() >= total {
                    return;
                }
                for consumed in consumer.poll().await.unwrap() {
                    seen.entry(consumed.partition).or_default().push(consumed.record.offset);
                }
            }
            panic!("only {:?} of {total} records", seen.values().map(Vec::len).sum::<usize>());
        };
        produce((0..8).collect(), 10).await;
        consumer.assign("sessions", &[], StartAt::Earliest).await.unwrap();
        read_until(&mut seen, 80).await;
        // New records in one partition, then in two others.
        produce(vec![3], 5).await;
        read_until(&mut seen, 85).await;
        produce(vec![0, 7], 4).await;
        read_until(&mut seen, 93).await;
        let expected = |partition: i32| {
            let count = 10
                + if partition == 3 {
                    5
                } else if partition == 0 || partition == 7 {
                    4
                } else {
                    0
                };
            (0..count).collect::<Vec<i64>>()
        };
        for partition in 0..8 {
            assert_eq!(seen[&partition], expected(partition), "partition {partition}");
        }
        assert!(consumer.incremental_fetches() > 0, "the fetches went out as one session");
        // A seek drops the prefetched fetch; the session goes on (or starts again) and the
        // partition is read again from the sought offset.
        consumer.assign("sessions", &[5], StartAt::Offset(2)).await.unwrap();
        let mut again = BTreeMap::new();
        read_until(&mut again, 8).await;
        assert_eq!(again[&5], (2..10).collect::<Vec<i64>>());
        assert_eq!(again.len(), 1, "only the sought partition: {again:?}");
    });
    broker.stop().unwrap();
}
