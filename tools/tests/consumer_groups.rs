//! Consumer groups with librdkafka against the real `corelog` binary: members share a topic's
//! partitions (every partition owned by exactly one member), rebalance when one joins, leaves
//! or dies (SIGKILL: its session times out), commit after processing and resume from the
//! commits after a broker restart; a static member restarting within its session keeps its
//! partitions without a rebalance; consumer-protocol (KIP-848) members carry on through a
//! broker restart with their partitions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Broker, WAIT};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const TOPIC: &str = "shared";
const PARTITIONS: i32 = 12;
const PER_PARTITION: i64 = 50;
/// The child process that runs one consumer until it is killed (see `child_member`).
const CHILD_ENV: &str = "CORELOG_TEST_CHILD_MEMBER";
const CHILD_STRATEGY_ENV: &str = "CORELOG_TEST_CHILD_STRATEGY";

/// A broker configured like a test cluster: no initial rebalance delay.
fn start_broker(dir: &std::path::Path) -> (Broker, String) {
    start_broker_on(dir, "127.0.0.1:0")
}

fn start_broker_on(dir: &std::path::Path, listen: &str) -> (Broker, String) {
    let config = dir.join("corelog.toml");
    let settings = "group_initial_rebalance_delay_ms = 0\noffsets_topic_num_partitions = 8\n\
                    group_consumer_heartbeat_interval_ms = 300\ngroup_consumer_session_timeout_ms = 6000\n";
    std::fs::write(&config, settings).unwrap();
    let data = dir.join("data");
    let mut broker = Broker::start_on(&data, listen, &["--cores", "2", "--config", config.to_str().unwrap()]);
    let address = broker.wait_ready();
    (broker, address)
}

fn create_topic(address: &str) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", address).create().expect("admin client");
    let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1));
    let results = futures_lite::future::block_on(admin.create_topics(&[topic], &AdminOptions::new())).unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// `count` messages per partition; the value names the partition and its sequence.
fn produce(address: &str, count: i64) {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", address).set("linger.ms", "5").create().expect("producer");
    for partition in 0..PARTITIONS {
        for i in 0..count {
            let value = format!("p{partition}-{i}");
            let mut record = BaseRecord::<str, str>::to(TOPIC).partition(partition).payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, returned)) => {
                        record = returned;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
    }
    producer.flush(WAIT).expect("flush");
}

/// Counts completed rebalances (assignments received) and partitions taken away (revoked or
/// lost).
#[derive(Default)]
struct Counting {
    assigned: AtomicUsize,
    revoked: AtomicUsize,
}

impl ClientContext for Counting {}

impl ConsumerContext for Counting {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) => {
                self.assigned.fetch_add(1, Ordering::SeqCst);
            }
            Rebalance::Revoke(partitions) => {
                self.revoked.fetch_add(partitions.count(), Ordering::SeqCst);
            }
            Rebalance::Error(_) => {}
        }
    }
}

/// `strategy` is a classic assignment strategy, or `consumer` for the KIP-848 protocol
/// (the broker assigns; session and heartbeat timing come from the broker).
fn consumer_config(address: &str, group: &str, strategy: &str, instance: Option<&str>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", address)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    if strategy == "consumer" {
        config.set("group.protocol", "consumer");
    } else {
        config
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "300")
            .set("partition.assignment.strategy", strategy);
    }
    if let Some(instance) = instance {
        config.set("group.instance.id", instance);
    }
    config
}

/// What the members of a test share: who owns which partitions, what was consumed.
#[derive(Default)]
struct Shared {
    owned: Mutex<BTreeMap<usize, BTreeSet<i32>>>,
    /// (partition, offset) of every message handed to a member.
    consumed: Mutex<BTreeSet<(i32, i64)>>,
}

/// A consumer polling on its own thread, committing synchronously after each message.
struct Member {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    context: Arc<Counting>,
}

impl Member {
    fn start(index: usize, config: ClientConfig, shared: &Arc<Shared>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let consumer: BaseConsumer<Counting> = config.create_with_context(Counting::default()).expect("consumer");
        consumer.subscribe(&[TOPIC]).unwrap();
        let context = Arc::clone(consumer.context());
        let (stop_flag, shared) = (Arc::clone(&stop), Arc::clone(shared));
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::SeqCst) {
                match consumer.poll(Duration::from_millis(50)) {
                    Some(Ok(message)) => {
                        shared.consumed.lock().unwrap().insert((message.partition(), message.offset()));
                        // Commit after processing: a restart resumes after what was handled.
                        let _ = consumer.commit_message(&message, CommitMode::Sync);
                    }
                    // A commit refused during a rebalance (REBALANCE_IN_PROGRESS, an old
                    // generation) is made again once idle, from the position of what it owns now.
                    _ => {
                        let _ = consumer.commit_consumer_state(CommitMode::Sync);
                    }
                }
                let owned: BTreeSet<i32> = consumer
                    .assignment()
                    .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
                    .unwrap_or_default();
                shared.owned.lock().unwrap().insert(index, owned);
            }
            shared.owned.lock().unwrap().remove(&index);
            drop(consumer); // closes: a dynamic member leaves the group, a static one does not
        });
        Self { stop, thread: Some(thread), context }
    }

    fn rebalances(&self) -> usize {
        self.context.assigned.load(Ordering::SeqCst)
    }

    fn revoked(&self) -> usize {
        self.context.revoked.load(Ordering::SeqCst)
    }

    fn close(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Waits until the members in `members` own every partition, each exactly once, and each
/// member owns at least one.
fn wait_for_full_assignment(shared: &Shared, members: &[usize], what: &str) -> BTreeMap<usize, BTreeSet<i32>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let owned = shared.owned.lock().unwrap().clone();
        let relevant: BTreeMap<usize, BTreeSet<i32>> =
            owned.iter().filter(|(m, _)| members.contains(m)).map(|(m, p)| (*m, p.clone())).collect();
        let total: usize = relevant.values().map(BTreeSet::len).sum();
        let union: BTreeSet<i32> = relevant.values().flatten().copied().collect();
        let others_idle = owned.iter().filter(|(m, _)| !members.contains(m)).all(|(_, p)| p.is_empty());
        if relevant.len() == members.len()
            && relevant.values().all(|p| !p.is_empty())
            && union.len() == PARTITIONS as usize
            && total == PARTITIONS as usize
            && others_idle
        {
            return relevant;
        }
        assert!(Instant::now() < deadline, "{what}: partitions never settled among {members:?}: {owned:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_consumed(shared: &Shared, count: usize, what: &str) {
    let deadline = Instant::now() + WAIT;
    while shared.consumed.lock().unwrap().len() < count {
        assert!(Instant::now() < deadline, "{what}: consumed {} of {count}", shared.consumed.lock().unwrap().len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The group's committed offsets, read by a fresh member-less client of the group.
fn committed(address: &str, group: &str) -> Vec<i64> {
    let consumer: BaseConsumer = consumer_config(address, group, "range", None).create().unwrap();
    let mut wanted = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        wanted.add_partition(TOPIC, partition);
    }
    let committed = consumer.committed_offsets(wanted, WAIT).unwrap();
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(offset) => offset,
            _ => -1,
        })
        .collect()
}

fn every_message(count_per_partition: i64) -> BTreeSet<(i32, i64)> {
    (0..PARTITIONS).flat_map(|p| (0..count_per_partition).map(move |o| (p, o))).collect()
}

#[test]
fn members_share_partitions_rebalance_on_join_and_leave_and_resume_from_commits() {
    for strategy in ["range", "cooperative-sticky", "consumer"] {
        let dir = tempfile::tempdir().unwrap();
        let (broker, address) = start_broker(dir.path());
        create_topic(&address);
        produce(&address, PER_PARTITION);
        let shared = Arc::new(Shared::default());
        let config = || consumer_config(&address, "g", strategy, None);

        let first = Member::start(0, config(), &shared);
        let second = Member::start(1, config(), &shared);
        wait_for_full_assignment(&shared, &[0, 1], &format!("{strategy}: two members"));
        let third = Member::start(2, config(), &shared);
        wait_for_full_assignment(&shared, &[0, 1, 2], &format!("{strategy}: a third joins"));
        wait_consumed(&shared, (PARTITIONS as i64 * PER_PARTITION) as usize, strategy);
        assert_eq!(*shared.consumed.lock().unwrap(), every_message(PER_PARTITION), "{strategy}: nothing skipped");

        second.close();
        wait_for_full_assignment(&shared, &[0, 2], &format!("{strategy}: one leaves"));
        first.close();
        third.close();
        // Every message was committed after it was processed.
        assert_eq!(committed(&address, "g"), vec![PER_PARTITION; PARTITIONS as usize], "{strategy}");

        // After a restart the group resumes from its commits: only new messages arrive.
        broker.stop();
        let (broker, address) = start_broker(dir.path());
        produce(&address, 2);
        let resumed = Arc::new(Shared::default());
        let member = Member::start(0, consumer_config(&address, "g", strategy, None), &resumed);
        wait_consumed(&resumed, 2 * PARTITIONS as usize, &format!("{strategy}: after the restart"));
        let expected: BTreeSet<(i32, i64)> =
            (0..PARTITIONS).flat_map(|p| [(p, PER_PARTITION), (p, PER_PARTITION + 1)]).collect();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(*resumed.consumed.lock().unwrap(), expected, "{strategy}: resumed exactly after the commits");
        member.close();
        broker.stop();
    }
}

#[test]
fn a_static_member_restarting_within_its_session_keeps_its_partitions_without_a_rebalance() {
    for strategy in ["range", "consumer"] {
        static_member_restart(strategy);
    }
}

fn static_member_restart(strategy: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (broker, address) = start_broker(dir.path());
    create_topic(&address);
    let shared = Arc::new(Shared::default());
    let config = |instance| consumer_config(&address, "static", strategy, Some(instance));
    let stays = Member::start(0, config("host-a"), &shared);
    let restarts = Member::start(1, config("host-b"), &shared);
    let before = wait_for_full_assignment(&shared, &[0, 1], &format!("{strategy}: two static members"));
    // Let the generation settle: no rebalance is in flight when the restart happens.
    std::thread::sleep(Duration::from_millis(1_000));
    let rebalances_before = stays.rebalances();

    restarts.close(); // a static member does not leave the group when it closes
    let restarted = Member::start(1, config("host-b"), &shared);
    let after = wait_for_full_assignment(&shared, &[0, 1], &format!("{strategy}: the static member is back"));
    assert_eq!(after, before, "{strategy}: the same partitions, for both members");
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(stays.rebalances(), rebalances_before, "{strategy}: the member that stayed saw no rebalance");
    restarted.close();
    stays.close();
    broker.stop();
}

/// Not a test on its own: the body of the member process `a_member_that_dies_*` kills.
#[test]
fn child_member() {
    let Ok(address) = std::env::var(CHILD_ENV) else { return };
    let strategy = std::env::var(CHILD_STRATEGY_ENV).unwrap_or_else(|_| "range".into());
    let consumer: BaseConsumer = consumer_config(&address, "mortal", &strategy, None).create().unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    loop {
        consumer.poll(Duration::from_millis(50));
    }
}

fn spawn_child_member(address: &str, strategy: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_member", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, address)
        .env(CHILD_STRATEGY_ENV, strategy)
        .spawn()
        .expect("spawn the member process")
}

#[test]
fn a_member_that_dies_is_removed_after_its_session_timeout_and_the_others_take_over() {
    for strategy in ["range", "consumer"] {
        member_dies(strategy);
    }
}

fn member_dies(strategy: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (broker, address) = start_broker(dir.path());
    create_topic(&address);
    let shared = Arc::new(Shared::default());
    let survivor = Member::start(0, consumer_config(&address, "mortal", strategy, None), &shared);
    wait_for_full_assignment(&shared, &[0], &format!("{strategy}: one member"));
    let mut child = spawn_child_member(&address, strategy);
    // The survivor gives up half of the partitions to the child member.
    let deadline = Instant::now() + WAIT;
    while shared.owned.lock().unwrap().get(&0).is_none_or(|p| p.len() == PARTITIONS as usize) {
        assert!(Instant::now() < deadline, "{strategy}: the child member never got partitions");
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed_at = Instant::now();
    child.kill().unwrap(); // SIGKILL: no LeaveGroup, only the session timeout tells
    child.wait().unwrap();
    wait_for_full_assignment(&shared, &[0], &format!("{strategy}: the survivor owns everything again"));
    assert!(killed_at.elapsed() >= Duration::from_secs(4), "{strategy}: taken over before the session could expire");
    survivor.close();
    broker.stop();
}

/// What the admin side of groups shows through librdkafka: the group list with members and
/// assignments, committed offsets (and so the lag), and deleting a group only once it is empty.
#[test]
fn groups_are_listed_described_and_deleted_and_their_lag_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, address) = start_broker(dir.path());
    create_topic(&address);
    produce(&address, PER_PARTITION);
    let shared = Arc::new(Shared::default());
    let first = Member::start(0, consumer_config(&address, "watched", "range", None), &shared);
    let second = Member::start(1, consumer_config(&address, "watched", "range", None), &shared);
    wait_for_full_assignment(&shared, &[0, 1], "two members");
    wait_consumed(&shared, (PARTITIONS as i64 * PER_PARTITION) as usize, "everything");

    let observer: BaseConsumer = consumer_config(&address, "observer", "range", None).create().unwrap();
    let deadline = Instant::now() + WAIT;
    let group = loop {
        let list = observer.fetch_group_list(Some("watched"), WAIT).unwrap();
        let group = list.groups().iter().find(|g| g.name() == "watched").map(|g| {
            let assigned = g.members().iter().filter(|m| m.assignment().is_some_and(|a| !a.is_empty())).count();
            (
                g.state().to_string(),
                g.protocol_type().to_string(),
                g.protocol().to_string(),
                g.members().len(),
                assigned,
            )
        });
        if let Some(group) = group.clone().filter(|g| g.0 == "Stable") {
            break group;
        }
        assert!(Instant::now() < deadline, "the group is never listed as stable: {group:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(group, ("Stable".into(), "consumer".into(), "range".into(), 2, 2));

    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &address).create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(WAIT));
    let refused = futures_lite::future::block_on(admin.delete_groups(&["watched"], &options)).unwrap();
    assert!(refused[0].is_err(), "a group with members is not deleted: {refused:?}");

    first.close();
    second.close();
    // Lag = high watermark - committed offset: new messages nobody consumed yet.
    produce(&address, 5);
    let offsets = committed(&address, "watched");
    assert_eq!(offsets, vec![PER_PARTITION; PARTITIONS as usize]);
    let (_, high) = observer.fetch_watermarks(TOPIC, 0, WAIT).unwrap();
    assert_eq!(high - offsets[0], 5, "lag of partition 0");

    let deleted = futures_lite::future::block_on(admin.delete_groups(&["watched"], &options)).unwrap();
    assert_eq!(deleted, vec![Ok("watched".to_string())]);
    assert_eq!(committed(&address, "watched"), vec![-1; PARTITIONS as usize], "its offsets are gone");
    drop(observer);
    broker.stop();
}

/// `count` messages to `topic` (partition by partition), values `topic-i`.
fn produce_to(address: &str, topic: &str, count: usize) {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", address).set("linger.ms", "5").create().expect("producer");
    for i in 0..count {
        let value = format!("{topic}-{i}");
        let mut record = BaseRecord::<str, str>::to(topic).payload(&value);
        while let Err((_, returned)) = producer.send(record) {
            record = returned;
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(WAIT).expect("flush");
}

#[test]
fn a_regular_expression_subscription_follows_topics_created_later() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, address) = start_broker(dir.path());
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &address).create().expect("admin client");
    let create = |name: &str| {
        let topic = NewTopic::new(name, 2, TopicReplication::Fixed(1));
        let results = futures_lite::future::block_on(admin.create_topics(&[topic], &AdminOptions::new())).unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    };
    create("rx-first");
    create("other");
    produce_to(&address, "rx-first", 20);
    produce_to(&address, "other", 5);
    let consumer: BaseConsumer = consumer_config(&address, "regex-group", "consumer", None)
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .expect("consumer");
    consumer.subscribe(&["^rx-.*"]).expect("subscribe");
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let wait_for = |topic: &str, count: usize, seen: &mut BTreeSet<String>| {
        let deadline = Instant::now() + WAIT;
        while seen.iter().filter(|v| v.starts_with(&format!("{topic}-"))).count() < count {
            assert!(Instant::now() < deadline, "{topic}: {count} messages within {WAIT:?}; seen {seen:?}");
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                let value = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
                assert!(!value.starts_with("other-"), "a topic the expression does not match was consumed");
                seen.insert(value);
            }
        }
    };
    wait_for("rx-first", 20, &mut seen);
    create("rx-second");
    produce_to(&address, "rx-second", 10);
    wait_for("rx-second", 10, &mut seen);
    drop(consumer);
    broker.stop();
}

/// KIP-848 membership is durable: when the broker (the group's coordinator) restarts, the
/// members carry on with their epochs and partitions. Without it they would be told
/// UNKNOWN_MEMBER_ID, lose their partitions and join again.
#[test]
fn consumer_protocol_members_keep_their_partitions_across_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, address) = start_broker(dir.path());
    create_topic(&address);
    let shared = Arc::new(Shared::default());
    let config = || consumer_config(&address, "durable", "consumer", None);
    let members = [Member::start(0, config(), &shared), Member::start(1, config(), &shared)];
    let before = wait_for_full_assignment(&shared, &[0, 1], "two members");
    // Let the epoch settle: no reconciliation is in flight when the broker stops.
    std::thread::sleep(Duration::from_millis(1_500));
    let revoked_before: Vec<usize> = members.iter().map(Member::revoked).collect();

    broker.stop();
    let (broker, restarted_address) = start_broker_on(dir.path(), &address);
    assert_eq!(restarted_address, address);
    // The members consume what is produced after the restart (so they talk to the new
    // broker), heartbeating all the while (every 300 ms).
    produce(&address, 3);
    wait_consumed(&shared, 3 * PARTITIONS as usize, "after the restart");
    std::thread::sleep(Duration::from_millis(2_000));
    let after = wait_for_full_assignment(&shared, &[0, 1], "after the restart");
    assert_eq!(after, before, "the same partitions, for both members");
    let revoked_after: Vec<usize> = members.iter().map(Member::revoked).collect();
    assert_eq!(revoked_after, revoked_before, "no member lost or gave up a partition");
    for member in members {
        member.close();
    }
    broker.stop();
}
