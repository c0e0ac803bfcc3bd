//! The consumer-group commit path on one shard: `GroupService::commit` for simple commits
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
