//! Storage benchmark scenarios shared by the criterion benches, the `storage-bench` report
//! binary and the tiny-mode tests that keep them from rotting.
//!
//! Every scenario runs on one glommio executor (one shard) against a real data dir, and the
//! device limit it is compared with is measured in the same run by [`device_write_bandwidth`].

// A benchmark harness: any failure aborts the measurement, which is what `expect` does.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod groups;
pub mod hostile;

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use corelog_engine::batch;
use corelog_engine::log::{FlushPolicy, LogConfig, ShardLog, ShardLogConfig, TopicPartition};
use hdrhistogram::Histogram;

/// Runs a future on a fresh, unpinned executor (one shard).
pub fn on_shard<T>(f: impl std::future::Future<Output = T>) -> T {
    match glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(32 << 20).make() {
        Ok(executor) => executor.run(f),
        Err(error) => panic!("cannot start an executor: {error}"),
    }
}

/// The command line of the report binaries: `[--quick] [--repeat N] [DIR]` (and options of
/// their own, each `--name VALUE` or one of `SWITCHES`).
pub struct BenchArgs {
    pub quick: bool,
    pub repeat: usize,
    /// Where the scratch data dirs go (default: the temp dir).
    pub base: std::path::PathBuf,
    /// `--only TEXT`: run only the scenarios whose label contains it.
    pub only: Option<String>,
}

impl BenchArgs {
    pub fn parse() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let repeat = args
            .iter()
            .position(|a| a == "--repeat")
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(3);
        // DIR is the argument that is neither a flag nor a flag's value.
        const SWITCHES: [&str; 2] = ["--quick", "--unbound"];
        let base = args
            .iter()
            .enumerate()
            .find(|&(i, a)| {
                let after_option = i > 0 && args[i - 1].starts_with("--") && !SWITCHES.contains(&args[i - 1].as_str());
                !a.starts_with("--") && !after_option
            })
            .map(|(_, a)| std::path::PathBuf::from(a))
            .unwrap_or_else(std::env::temp_dir);
        let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
        Self { quick: args.iter().any(|a| a == "--quick"), repeat, base, only }
    }
}

/// The median of some runs' figures.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// A fresh DMA scratch file of `bytes` (pre-allocated) in a prepared data dir.
pub async fn scratch_file(dir: &Path, name: &str, bytes: u64) -> (glommio::io::DmaFile, std::path::PathBuf) {
    corelog_engine::device::prepare_data_dir(dir).await.expect("prepare data dir");
    let path = dir.join(name);
    let file = glommio::io::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .expect("open a scratch file");
    file.pre_allocate(bytes, false).await.expect("fallocate");
    (file, path)
}

/// Sequential O_DIRECT write bandwidth of the device holding `dir`, in bytes per second:
/// `total_bytes` written in `block_bytes` blocks with `queue_depth` writes in flight, then one
/// fdatasync (included in the time). Runs inside a shard.
pub async fn device_write_bandwidth(dir: &Path, total_bytes: u64, block_bytes: usize, queue_depth: usize) -> f64 {
    let (file, path) = scratch_file(dir, "device-bandwidth.tmp", total_bytes).await;
    let file = Rc::new(file);
    let blocks = total_bytes / block_bytes as u64;
    let started = Instant::now();
    let mut next = 0u64;
    let mut in_flight = Vec::new();
    while next < blocks || !in_flight.is_empty() {
        while next < blocks && in_flight.len() < queue_depth {
            let file = Rc::clone(&file);
            let mut buffer = file.alloc_dma_buffer(block_bytes);
            buffer.as_bytes_mut().fill(0x5a);
            let position = next * block_bytes as u64;
            in_flight.push(glommio::spawn_local(async move { file.write_at(buffer, position).await }));
            next += 1;
        }
        let first = in_flight.remove(0);
        first.await.expect("write");
    }
    file.fdatasync().await.expect("fdatasync");
    let elapsed = started.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    (blocks * block_bytes as u64) as f64 / elapsed.as_secs_f64()
}

/// A valid batch of ~`batch_bytes` made of 1 KiB records.
pub fn template_batch(batch_bytes: usize) -> Vec<u8> {
    let records = (batch_bytes / 1024).max(1) as i32;
    batch::build_test_batch(records, &[0x42; 1000], 1_700_000_000_000)
}

#[derive(Debug, Clone)]
pub struct AppendReport {
    pub partitions: usize,
    pub batch_bytes: usize,
    pub policy: FlushPolicy,
    pub bytes: u64,
    pub elapsed: Duration,
    pub appends: u64,
    pub syncs: u64,
    pub waves: u64,
    /// Append call → durable, microseconds (for paced runs, from the scheduled send time).
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_max: u64,
}

impl AppendReport {
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64()
    }
}

pub struct AppendScenario {
    pub partitions: usize,
    pub batch_bytes: usize,
    pub policy: FlushPolicy,
    pub total_bytes: u64,
    /// Appends in flight per partition (a producer's `max.in.flight`).
    pub in_flight_per_partition: usize,
    /// None = as fast as possible; Some(rate) = paced sends at this many bytes/s in total.
    pub rate_bytes_per_sec: Option<f64>,
    /// Ring size of the shard journal; 0 = none (a sync per segment file per wave).
    pub journal_bytes: u64,
}

/// Longest an append scenario may go without an append completing before it fails.
const STALL_MAX: Duration = Duration::from_secs(20);

/// Appends `total_bytes` across partitions on one shard; every append is awaited to
/// durability (whatever the policy promises). Runs inside a shard.
pub async fn append_scenario(dir: &Path, scenario: &AppendScenario) -> AppendReport {
    let log_config =
        ShardLogConfig { journal_bytes: scenario.journal_bytes, ..ShardLogConfig::new(dir.to_path_buf(), 64 << 20) };
    let log = ShardLog::open(log_config).await.expect("open shard log");
    let config = LogConfig { flush: scenario.policy, retention_ms: None, ..LogConfig::default() };
    let names: Vec<TopicPartition> = (0..scenario.partitions).map(|p| TopicPartition::new("bench", p as i32)).collect();
    for name in &names {
        log.open_partition(name, config.clone()).await.expect("open partition");
    }
    let template = template_batch(scenario.batch_bytes);
    let batches = (scenario.total_bytes / template.len() as u64).max(names.len() as u64);
    let histogram = Rc::new(std::cell::RefCell::new(Histogram::<u64>::new(3).expect("histogram")));
    let interval = scenario.rate_bytes_per_sec.map(|rate| Duration::from_secs_f64(template.len() as f64 / rate));
    let window = scenario.in_flight_per_partition * names.len();
    let started = Instant::now();
    // A run that stops making progress fails with the flusher's state instead of hanging.
    let watchdog = {
        let (log, completed) = (Rc::clone(&log), Rc::clone(&histogram));
        glommio::spawn_local(async move {
            let (mut last, mut still_since) = (u64::MAX, Instant::now());
            loop {
                glommio::timer::sleep(Duration::from_secs(1)).await;
                let now_completed = completed.borrow().len();
                if now_completed != last {
                    (last, still_since) = (now_completed, Instant::now());
                } else if still_since.elapsed() > STALL_MAX {
                    eprintln!("no append completed for {STALL_MAX:?}; shard log state:\n{}", log.debug_state());
                    std::process::exit(1);
                }
            }
        })
        .detach()
    };
    let mut in_flight = std::collections::VecDeque::new();
    for i in 0..batches {
        let scheduled = interval.map(|every| started + every.mul_f64(i as f64));
        if let Some(at) = scheduled {
            let now = Instant::now();
            if at > now {
                glommio::timer::sleep(at - now).await;
            }
        }
        let name = &names[i as usize % names.len()];
        let sent_at = scheduled.unwrap_or_else(Instant::now);
        let appended = log.append(name, BytesMut::from(&template[..]), 0).expect("append");
        let histogram = Rc::clone(&histogram);
        in_flight.push_back(glommio::spawn_local(async move {
            appended.durable.await.expect("durable");
            let micros = sent_at.elapsed().as_micros() as u64;
            let _ = histogram.borrow_mut().record(micros.max(1));
        }));
        // A producer on the network yields between requests, and the broker lets the storage
        // queue run before it waits for durability (`wait_durable_local`): so does this one,
        // and the flusher starts each write at once.
        glommio::executor().yield_task_queue_now().await;
        while in_flight.len() >= window {
            if let Some(task) = in_flight.pop_front() {
                task.await;
            }
        }
    }
    for task in in_flight {
        task.await;
    }
    // Throughput counts up to the last acknowledgement: what the clean stop does after it
    // (finalizing every partition's indexes, producer snapshots, the final checkpoint) is not
    // append work, and it grows with the partition count, not with the bytes appended.
    let elapsed = started.elapsed();
    watchdog.cancel();
    let stats = log.stats();
    log.close().await.expect("close");
    let histogram = histogram.borrow();
    AppendReport {
        partitions: scenario.partitions,
        batch_bytes: template.len(),
        policy: scenario.policy,
        bytes: batches * template.len() as u64,
        elapsed,
        appends: stats.appends,
        syncs: stats.syncs,
        waves: stats.waves,
        latency_us_p50: histogram.value_at_quantile(0.50),
        latency_us_p99: histogram.value_at_quantile(0.99),
        latency_us_max: histogram.max(),
    }
}

/// Reads a partition of `total_bytes` from its start, from the batch cache (`from_cache`) or
/// from the segment files (cache disabled), returning bytes per second. Runs inside a shard.
pub async fn read_scenario(dir: &Path, total_bytes: u64, batch_bytes: usize, from_cache: bool) -> f64 {
    let cache_budget_bytes = if from_cache { (total_bytes as usize) * 2 } else { 0 };
    let log = ShardLog::open(ShardLogConfig::new(dir.to_path_buf(), cache_budget_bytes)).await.expect("open shard log");
    let name = TopicPartition::new("read", 0);
    log.open_partition(&name, LogConfig { retention_ms: None, ..LogConfig::default() }).await.expect("open partition");
    let template = template_batch(batch_bytes);
    let mut last = None;
    for _ in 0..(total_bytes / template.len() as u64).max(1) {
        last = Some(log.append(&name, BytesMut::from(&template[..]), 0).expect("append").durable);
    }
    if let Some(last) = last {
        last.await.expect("durable");
    }
    let end = log.offsets(&name).expect("offsets").high_watermark;
    let started = Instant::now();
    let mut offset = 0;
    let mut bytes = 0u64;
    while offset < end {
        let result = log.read(&name, offset, 1 << 20).await.expect("read");
        let data = match &result.data {
            corelog_engine::log::ReadData::Cached(batches) => {
                let size: usize = batches.iter().map(|b| b.len()).sum();
                let last_batch = batches.last().map(|b| batch::validate_prefix(b).expect("batch").next_offset());
                (size as u64, last_batch)
            }
            corelog_engine::log::ReadData::File(range) => {
                // Fetch will splice this range; here it is read into memory once, so the
                // figure is the device-read path with one copy.
                let bytes = range.read_to_vec().await.expect("read range");
                let mut at = 0;
                let mut next = None;
                while let Some(size) = batch::claimed_batch_size(&bytes[at..]).filter(|s| at + s <= bytes.len()) {
                    next = Some(batch::validate_prefix(&bytes[at..at + size]).expect("batch").next_offset());
                    at += size;
                }
                (at as u64, next)
            }
            corelog_engine::log::ReadData::Empty => break,
        };
        bytes += data.0;
        offset = data.1.expect("at least one whole batch per read");
    }
    let elapsed = started.elapsed();
    log.close().await.expect("close");
    bytes as f64 / elapsed.as_secs_f64()
}

/// What the report says about the machine.
pub fn hardware_report(dir: &Path) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib >> 20);
    format!("CPU: {cpu} × {cores} cores; memory {memory} GiB; kernel {}; data dir {}", kernel.trim(), dir.display())
}
