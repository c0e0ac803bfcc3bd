//! Consumer groups: the rebalance time of a group of librdkafka consumers against an
//! in-process broker ([`rebalance_scenario`]), and the commit path on one shard: `GroupService::commit` for simple commits
//! (one partition each) from many concurrent committers, each acknowledged once its record is
//! durable in `__consumer_offsets` (group commit: one fdatasync covers every commit of a wave).
//! The device limit it is compared with is the serial 4 KiB write + fdatasync rate measured in
//! the same run ([`device_sync_rate`]).

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use corelog_engine::log::{LogConfig, ShardLog, ShardLogConfig, TopicPartition};
use corelog_net::group::classic::{CoordinatorConfig, MemberRef};
use corelog_net::group::{GroupService, OFFSETS_TOPIC, OffsetCommit};
use hdrhistogram::Histogram;

pub struct CommitReport {
    pub commits: u64,
    pub elapsed: Duration,
    pub syncs: u64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
}

impl CommitReport {
    pub fn commits_per_sec(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64()
    }
}

/// `committers` tasks each commit `commits_each` offsets, one at a time (a consumer commits,
/// waits for the answer, commits again), to their own group on one `__consumer_offsets`
/// partition. Runs inside a shard.
pub async fn commit_scenario(dir: &Path, committers: usize, commits_each: u64) -> CommitReport {
    let log = ShardLog::open(ShardLogConfig::new(dir.to_path_buf(), 64 << 20)).await.expect("open the shard log");
    let partition = TopicPartition::new(OFFSETS_TOPIC, 0);
    log.open_partition(&partition, LogConfig::default()).await.expect("open __consumer_offsets-0");
    let registry = corelog_net::registry::Registry::open(dir).expect("registry");
    let service = GroupService::new(Rc::clone(&log), registry, CoordinatorConfig::default(), "bench".into());
    let syncs_before = log.stats().syncs;
    let started = Instant::now();
    let tasks: Vec<_> = (0..committers)
        .map(|committer| {
            let service = Rc::clone(&service);
            glommio::spawn_local(async move {
                let mut latencies = Histogram::<u64>::new(3).expect("histogram");
                let group = format!("bench-{committer}");
                let who = MemberRef { member_id: String::new(), instance_id: None, generation_id: -1 };
                for offset in 0..commits_each as i64 {
                    let commit = OffsetCommit {
                        topic: "events".into(),
                        partition: (committer % 64) as i32,
                        offset,
                        leader_epoch: 0,
                        metadata: None,
                    };
                    let sent = Instant::now();
                    let codes = service.commit(&group, 0, &who, &[commit]).await.expect("commit accepted");
                    assert_eq!(codes, vec![0], "commit refused");
                    latencies.record(sent.elapsed().as_micros() as u64).expect("record latency");
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Histogram::<u64>::new(3).expect("histogram");
    for task in tasks {
        latencies.add(task.await).expect("merge histograms");
    }
    let elapsed = started.elapsed();
    let syncs = log.stats().syncs - syncs_before;
    log.close().await.expect("close");
    CommitReport {
        commits: committers as u64 * commits_each,
        elapsed,
        syncs,
        latency_us_p50: latencies.value_at_quantile(0.5),
        latency_us_p99: latencies.value_at_quantile(0.99),
    }
}

/// Serial 4 KiB O_DIRECT write + fdatasync operations per second on the device holding `dir`:
/// the rate at which one-commit-per-fsync would run. Runs inside a shard.
pub async fn device_sync_rate(dir: &Path, operations: u64) -> f64 {
    let (file, path) = crate::scratch_file(dir, "device-sync.tmp", operations * 4096).await;
    let started = Instant::now();
    for i in 0..operations {
        let mut buffer = file.alloc_dma_buffer(4096);
        buffer.as_bytes_mut().fill(0x3c);
        file.write_at(buffer, i * 4096).await.expect("write");
        file.fdatasync().await.expect("fdatasync");
    }
    let rate = operations as f64 / started.elapsed().as_secs_f64();
    file.close().await.expect("close");
    let _ = std::fs::remove_file(&path);
    rate
}

/// A whole broker in this process on a fresh port, with the given group settings.
pub fn local_broker(dir: &Path, group: CoordinatorConfig) -> corelog_net::server::LocalBroker {
    corelog_net::server::LocalBroker::start(server_config(dir, group), 1).expect("start the broker")
}

/// The benches' broker settings: defaults, a fresh port on 127.0.0.1, data in `dir`.
pub fn server_config(dir: &Path, group: CoordinatorConfig) -> corelog_net::server::ServerConfig {
    corelog_net::server::ServerConfig {
        node_id: 0,
        data_dir: dir.to_path_buf(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        advertised: None,
        cache_budget_bytes_per_shard: 64 << 20,
        journal_bytes_per_shard: corelog_engine::log::shard_log::JOURNAL_BYTES_DEFAULT,
        write_shape: Default::default(),
        limits: Default::default(),
        max_connections_per_shard: 1000,
        fetch_max_bytes: 55 << 20,
        queued_max_request_bytes_per_shard: 256 << 20,
        connections_per_sec_max_per_shard: None,
        default_log: LogConfig::default(),
        num_partitions: 1,
        auto_create_topics: true,
        retention_check_interval: Duration::from_secs(300),
        group,
        offsets_topic_partitions: 8,
    }
}

pub struct RebalanceReport {
    /// From the members subscribing to an empty group until each owns its share.
    pub first_generation: Duration,
    /// From one member closing (LeaveGroup) until the others own every partition.
    pub after_leave: Duration,
}

/// `members` librdkafka consumers (classic protocol, range) with `heartbeat_interval_ms`
/// share a topic of `partitions`; one then leaves. Each wait is bounded by `limit`.
pub fn rebalance_scenario(
    address: &str,
    topic: &str,
    partitions: i32,
    members: usize,
    heartbeat_interval_ms: u32,
    limit: Duration,
) -> RebalanceReport {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", address).create().expect("admin client");
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let created = futures_lite::future::block_on(admin.create_topics(&[new_topic], &AdminOptions::new()));
    assert!(created.expect("create the topic").iter().all(Result::is_ok));

    let owned: Arc<Mutex<BTreeMap<usize, BTreeSet<i32>>>> = Arc::default();
    let stops: Vec<Arc<AtomicBool>> = (0..members).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let started = Instant::now();
    let threads: Vec<_> = (0..members)
        .map(|index| {
            let (owned, stop) = (Arc::clone(&owned), Arc::clone(&stops[index]));
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", address)
                .set("group.id", format!("{topic}-group"))
                .set("heartbeat.interval.ms", heartbeat_interval_ms.to_string())
                .set("partition.assignment.strategy", "range")
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer");
            consumer.subscribe(&[topic]).expect("subscribe");
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    consumer.poll(Duration::from_millis(10));
                    let mine: BTreeSet<i32> = consumer
                        .assignment()
                        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
                        .unwrap_or_default();
                    owned.lock().expect("lock").insert(index, mine);
                }
                owned.lock().expect("lock").remove(&index);
            })
        })
        .collect();
    let settled = |among: &[usize]| {
        let owned = owned.lock().expect("lock");
        let shares: Vec<&BTreeSet<i32>> = among.iter().filter_map(|m| owned.get(m)).collect();
        let total: usize = shares.iter().map(|s| s.len()).sum();
        let union: BTreeSet<i32> = shares.iter().flat_map(|s| s.iter().copied()).collect();
        let others_idle = owned.iter().filter(|(m, _)| !among.contains(m)).all(|(_, s)| s.is_empty());
        shares.len() == among.len()
            && shares.iter().all(|s| !s.is_empty())
            && total == partitions as usize
            && union.len() == partitions as usize
            && others_idle
    };
    let wait = |among: &[usize], from: Instant| {
        while !settled(among) {
            assert!(from.elapsed() < limit, "the group did not settle within {limit:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        from.elapsed()
    };
    let all: Vec<usize> = (0..members).collect();
    let first_generation = wait(&all, started);
    // Let the generation settle before the leave.
    std::thread::sleep(Duration::from_millis(200));
    let left_at = Instant::now();
    stops[0].store(true, Ordering::SeqCst);
    let after_leave = wait(&all[1..], left_at);
    for stop in &stops {
        stop.store(true, Ordering::SeqCst);
    }
    for thread in threads {
        thread.join().expect("member thread");
    }
    RebalanceReport { first_generation, after_leave }
}
