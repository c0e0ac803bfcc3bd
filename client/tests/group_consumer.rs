//! Consumers in a classic consumer group through the client's own membership code, against a
//! whole broker in this process: the group splits the partitions between its members, a new
//! member starts where the group committed, and a member that leaves hands its partitions
//! over with their committed positions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use corelog_client::admin::NewTopic;
use corelog_client::consumer::{ConsumerConfig, StartAt};
use corelog_client::group_consumer::GroupConsumer;
use corelog_client::membership::GroupConfig;
use corelog_client::producer::{Producer, ProducerConfig};
use corelog_client::{Client, ClientConfig};

mod common;

const TOPIC: &str = "grouped";

fn member(client: &Rc<Client>) -> GroupConsumer {
    let group = GroupConfig {
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(10),
        heartbeat_interval: Duration::from_millis(100),
        ..GroupConfig::new("readers")
    };
    let config = ConsumerConfig { max_wait: Duration::from_millis(50), ..ConsumerConfig::default() };
    GroupConsumer::new(Rc::clone(client), config, group, &[TOPIC.to_string()], StartAt::Earliest)
}

/// Produces `per_partition` records to every one of the 4 partitions.
async fn produce(client: &Rc<Client>, per_partition: usize, tag: &str) {
    let producer =
        Producer::new(Rc::clone(client), ProducerConfig::default(), Box::new(|_, d| assert!(d.error.is_none())))
            .await
            .unwrap();
    for partition in 0..4 {
        for n in 0..per_partition {
            let value = format!("{tag}-{partition}-{n}");
            producer.send(TOPIC, Some(partition), None, Some(value.as_bytes()), &[], 0, 0).await.unwrap();
        }
    }
    producer.flush().await;
}

/// Polls until `done` holds for the records read so far, for at most 20 s.
async fn poll_until(
    consumer: &GroupConsumer,
    read: &mut Vec<(i32, i64)>,
    done: impl Fn(&GroupConsumer, &[(i32, i64)]) -> bool,
) {
    let started = Instant::now();
    while !done(consumer, read) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no progress: read {read:?}, owns {:?}",
            consumer.positions()
        );
        for consumed in consumer.poll().await.unwrap() {
            read.push((consumed.partition, consumed.record.offset));
        }
    }
}

/// A broker whose groups form at once (no initial rebalance delay), and a client with
/// TOPIC created with `partitions` partitions; stops the broker after `work`.
fn with_topic(partitions: i32, work: impl AsyncFnOnce(Rc<Client>)) {
    let dir = tempfile::tempdir().unwrap();
    let coordinator =
        corelog_net::group::classic::CoordinatorConfig { initial_rebalance_delay_ms: 0, ..Default::default() };
    let broker = common::broker_with_groups(dir.path(), coordinator);
    let address = broker.address.to_string();
    common::run(async move {
        let client = Rc::new(Client::connect(ClientConfig::new(&address)).await.unwrap());
        let topic = NewTopic { name: TOPIC.into(), partitions, replication_factor: 1, configs: vec![] };
        client.create_topics(&[topic], false).await.unwrap()[0].1.clone().unwrap();
        work(client).await;
    });
    broker.stop().unwrap();
}

fn owned(consumer: &GroupConsumer) -> Vec<i32> {
    consumer.positions().iter().map(|(_, partition, _)| *partition).collect()
}

#[test]
fn a_group_splits_partitions_resumes_from_commits_and_takes_over_on_leave() {
    with_topic(4, async |client: Rc<Client>| {
        produce(&client, 10, "first").await;

        // One member owns every partition and reads all 40 records, then commits.
        let a = member(&client);
        let mut read_a = Vec::new();
        poll_until(&a, &mut read_a, |_, read| read.len() >= 40).await;
        assert_eq!(owned(&a), vec![0, 1, 2, 3]);
        a.commit().await.unwrap();

        // A second member joins: the first learns of the rebalance from its heartbeat, and
        // each ends with two partitions of its own.
        let b = member(&client);
        let mut read_b = Vec::new();
        let settled = |c: &GroupConsumer, _: &[(i32, i64)]| owned(c).len() == 2 && !c.membership().needs_rejoin();
        futures_lite::future::zip(poll_until(&a, &mut read_a, settled), poll_until(&b, &mut read_b, settled)).await;
        let (mut all, generation) = (owned(&a), a.membership().generation());
        all.extend(owned(&b));
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3], "a owns {:?}, b owns {:?}", owned(&a), owned(&b));
        assert_eq!(generation, b.membership().generation());
        // b starts where the group committed: nothing read again.
        assert!(read_b.is_empty(), "b read again: {read_b:?}");
        assert!(b.positions().iter().all(|(_, _, next)| *next == 10), "{:?}", b.positions());

        // New records reach whoever owns their partition, each exactly once.
        produce(&client, 2, "second").await;
        let before = (read_a.len(), read_b.len());
        let total = |a: &Vec<(i32, i64)>, b: &Vec<(i32, i64)>| a.len() - before.0 + b.len() - before.1;
        let started = Instant::now();
        while total(&read_a, &read_b) < 8 {
            assert!(started.elapsed() < Duration::from_secs(20), "new records missing");
            for consumed in a.poll().await.unwrap() {
                read_a.push((consumed.partition, consumed.record.offset));
            }
            for consumed in b.poll().await.unwrap() {
                read_b.push((consumed.partition, consumed.record.offset));
            }
        }
        let mut new: Vec<(i32, i64)> = read_a[before.0..].iter().chain(&read_b[before.1..]).copied().collect();
        new.sort();
        let expected: Vec<(i32, i64)> = (0..4).flat_map(|p| [(p, 10), (p, 11)]).collect();
        assert_eq!(new, expected);

        // a leaves (committing first): b takes every partition over, at a's positions.
        a.close().await.unwrap();
        poll_until(&b, &mut read_b, |c, _| owned(c).len() == 4 && !c.membership().needs_rejoin()).await;
        let positions: BTreeMap<i32, i64> = b.positions().iter().map(|(_, p, next)| (*p, *next)).collect();
        assert_eq!(positions, (0..4).map(|p| (p, 12)).collect());
        let described = client.describe_group("readers").await.unwrap();
        assert_eq!(described.members.len(), 1, "{described:?}");
        b.close().await.unwrap();
    });
}

#[test]
fn a_member_rejoining_reads_its_partitions_to_the_end_and_one_without_any_waits() {
    with_topic(2, async |client: Rc<Client>| {
        let producer =
            Producer::new(Rc::clone(&client), ProducerConfig::default(), Box::new(|_, d| assert!(d.error.is_none())))
                .await
                .unwrap();
        for partition in 0..2 {
            for _ in 0..5 {
                producer.send(TOPIC, Some(partition), None, Some(b"v"), &[], 0, 0).await.unwrap();
            }
        }
        producer.flush().await;
        let a = member(&client);
        let mut read = Vec::new();
        poll_until(&a, &mut read, |c, _| c.caught_up()).await;
        assert_eq!(read.len(), 10);
        // b joins: a keeps one partition at its committed offset, the fetch session it had
        // must not hide that partition's high watermark, so a sees it is at the end.
        let b = member(&client);
        let settled = |c: &GroupConsumer, _: &[(i32, i64)]| owned(c).len() == 1 && !c.membership().needs_rejoin();
        let mut read_b = Vec::new();
        futures_lite::future::zip(poll_until(&a, &mut read, settled), poll_until(&b, &mut read_b, settled)).await;
        poll_until(&a, &mut read, |c, _| c.caught_up()).await;
        poll_until(&b, &mut read_b, |c, _| c.caught_up()).await;
        assert_eq!((read.len(), read_b.len()), (10, 0), "nothing read twice");
        // A third member gets no partition: its poll waits instead of spinning, and the
        // group goes on (heartbeats run meanwhile).
        let c = member(&client);
        let mut read_c = Vec::new();
        let joined =
            |m: &GroupConsumer, _: &[(i32, i64)]| !m.membership().needs_rejoin() && m.membership().generation() > 2;
        futures_lite::future::zip(
            futures_lite::future::zip(poll_until(&a, &mut read, joined), poll_until(&b, &mut read_b, joined)),
            poll_until(&c, &mut read_c, joined),
        )
        .await;
        let counts = [owned(&a).len(), owned(&b).len(), owned(&c).len()];
        assert_eq!(counts.iter().sum::<usize>(), 2, "{counts:?}");
        let idle = [&a, &b, &c].into_iter().find(|m| owned(m).is_empty()).expect("one member without partitions");
        let started = Instant::now();
        assert!(idle.poll().await.unwrap().is_empty());
        assert!(started.elapsed() >= Duration::from_millis(40), "an idle poll returned at once");
        for m in [&a, &b, &c] {
            m.close().await.unwrap();
        }
    });
}
