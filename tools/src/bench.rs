//! `corelog bench`: a load generator modelled on the OpenMessaging Benchmark, on corelog's
//! own client, against corelog or any Kafka-compatible broker.
//!
//! Producers and consumers are spread over pinned threads (one glommio executor each).
//! With a target rate, every message has an intended send time from the schedule and its
//! publish latency is measured from that time, not from when it went out: a stalled broker
//! shows as latency, not as fewer samples (no coordinated omission). The first 8 bytes of
//! every payload carry the intended send time (µs since the Unix epoch), so consumers
//! measure end-to-end latency. At the end: a summary table, and on request a JSON result
//! and a self-contained HTML report.
//!
//! Consumers either read partitions given to them (round robin) or, with
//! `--consumer-groups N`, are members of N consumer groups subscribed to every topic (OMB's
//! subscriptions): each group reads every message once, its members share the partitions
//! the group assigns. The load starts once every consumer holds its partitions.

use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use corelog_client::admin::NewTopic;
use corelog_client::consumer::{Consumed, Consumer, ConsumerConfig, StartAt};
use corelog_client::group_consumer::GroupConsumer;
use corelog_client::membership::GroupConfig;
use corelog_client::producer::{Producer, ProducerConfig};
use corelog_client::records::Codec;
use corelog_client::{Client, ClientConfig, Error};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Brokers to bootstrap from, HOST:PORT[,HOST:PORT…].
    #[arg(long, env = "CORELOG_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// A named workload (flags given as well override its settings); see --list-workloads.
    #[arg(long)]
    pub workload: Option<String>,
    /// Print the named workloads and exit.
    #[arg(long)]
    pub list_workloads: bool,
    #[arg(long)]
    pub topics: Option<usize>,
    /// Partitions per topic.
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Bytes per message (at least 8: the send time rides in the payload).
    #[arg(long)]
    pub message_size: Option<usize>,
    #[arg(long)]
    pub producers: Option<usize>,
    #[arg(long)]
    pub consumers: Option<usize>,
    /// Consumer groups the consumers are members of, each reading every message (0: no
    /// groups, the consumers are given partitions round robin) [default: 0].
    #[arg(long)]
    pub consumer_groups: Option<usize>,
    /// Messages per second, all producers together; 0: as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of measured load.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds of load before measuring.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// all, 1 or 0.
    #[arg(long)]
    pub acks: Option<String>,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long)]
    pub compression: Option<Codec>,
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// Batch size in bytes.
    #[arg(long)]
    pub batch_bytes: Option<usize>,
    /// none (unkeyed), uniform:N or zipf:N (N distinct keys).
    #[arg(long)]
    pub keys: Option<String>,
    /// random or compressible.
    #[arg(long)]
    pub payload: Option<String>,
    /// Produce this many bytes first, then measure one drain by the consumers.
    #[arg(long)]
    pub backlog_bytes: Option<u64>,
    /// Client threads, each pinned to a core [default: as many as producers + consumers,
    /// at most the cores allowed].
    #[arg(long)]
    pub threads: Option<usize>,
    /// CPUs for the client threads, e.g. 1 or 2,3 [default: every CPU allowed].
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Keep the benchmark's topics afterwards.
    #[arg(long)]
    pub keep_topics: bool,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
}

/// A workload, resolved from a preset and the flags.
#[derive(Debug, Clone)]
pub struct Workload {
    name: String,
    topics: usize,
    partitions: i32,
    message_size: usize,
    producers: usize,
    consumers: usize,
    consumer_groups: usize,
    rate: f64,
    duration: f64,
    warmup: f64,
    acks: i16,
    compression: Codec,
    linger_ms: u64,
    batch_bytes: usize,
    keys: Keys,
    compressible: bool,
    backlog_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Keys {
    None,
    Uniform(u64),
    Zipf(u64),
}

/// (name, what it measures, topics, partitions, message size, producers, consumers, rate,
/// backlog bytes)
type Preset = (&'static str, &'static str, usize, i32, usize, usize, usize, f64, u64);

const PRESETS: &[Preset] = &[
    ("max-1kb", "max-rate produce, 1 topic x 8 partitions, 1 KiB", 1, 8, 1024, 2, 1, 0.0, 0),
    ("1-partition-1kb", "max rate, 1 topic x 1 partition, 1 KiB", 1, 1, 1024, 1, 1, 0.0, 0),
    (
        "16-partitions-4p4c",
        "max rate, 1 topic x 16 partitions, 1 KiB, 4 producers, 4 consumers",
        1,
        16,
        1024,
        4,
        4,
        0.0,
        0,
    ),
    ("max-100b", "max rate of 100-byte messages, 1 topic x 8 partitions", 1, 8, 100, 2, 1, 0.0, 0),
    (
        "fixed-50mb",
        "latency at a fixed 50 MB/s (51,200 msg/s of 1 KiB), 1 topic x 8 partitions",
        1,
        8,
        1024,
        2,
        1,
        51_200.0,
        0,
    ),
    ("backlog-4gb", "drain a 4 GiB backlog with one consumer, 1 topic x 8 partitions", 1, 8, 1024, 2, 1, 0.0, 4 << 30),
];

fn resolve(args: &BenchArgs) -> Result<Workload, String> {
    let name = args.workload.clone().unwrap_or_else(|| "max-1kb".into());
    let preset = PRESETS.iter().find(|p| p.0 == name).ok_or_else(|| {
        format!("unknown workload `{name}`: {}", PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", "))
    })?;
    let acks = match args.acks.as_deref().unwrap_or("all") {
        "all" | "-1" => -1,
        "1" => 1,
        "0" => 0,
        other => return Err(format!("--acks must be all, 1 or 0, not `{other}`")),
    };
    let keys = match args.keys.as_deref().unwrap_or("none") {
        "none" => Keys::None,
        text => {
            let (kind, count) = text.split_once(':').ok_or(format!("--keys {text}: none, uniform:N or zipf:N"))?;
            let count: u64 = count.parse().ok().filter(|n| *n > 0).ok_or(format!("--keys {text}: N must be > 0"))?;
            match kind {
                "uniform" => Keys::Uniform(count),
                "zipf" => Keys::Zipf(count.min(1_000_000)),
                _ => return Err(format!("--keys {text}: none, uniform:N or zipf:N")),
            }
        }
    };
    let compressible = match args.payload.as_deref().unwrap_or("random") {
        "random" => false,
        "compressible" => true,
        other => return Err(format!("--payload must be random or compressible, not `{other}`")),
    };
    let workload = Workload {
        name,
        topics: args.topics.unwrap_or(preset.2),
        partitions: args.partitions.unwrap_or(preset.3),
        message_size: args.message_size.unwrap_or(preset.4),
        producers: args.producers.unwrap_or(preset.5),
        consumers: args.consumers.unwrap_or(preset.6),
        consumer_groups: args.consumer_groups.unwrap_or(0),
        rate: args.rate.unwrap_or(preset.7),
        duration: args.duration.unwrap_or(30.0),
        warmup: args.warmup.unwrap_or(if args.duration.is_some_and(|d| d < 10.0) { 0.0 } else { 5.0 }),
        acks,
        compression: args.compression.unwrap_or_default(),
        linger_ms: args.linger_ms.unwrap_or(1),
        batch_bytes: args.batch_bytes.unwrap_or(128 << 10),
        keys,
        compressible,
        backlog_bytes: args.backlog_bytes.unwrap_or(preset.8),
    };
    if workload.message_size < 8 {
        return Err("--message-size must be at least 8 (the send time rides in the payload)".into());
    }
    if workload.topics == 0 || workload.partitions < 1 || workload.producers == 0 {
        return Err("a workload needs at least one topic, partition and producer".into());
    }
    if workload.backlog_bytes > 0 && workload.consumers == 0 {
        return Err("a backlog drain needs at least one consumer".into());
    }
    if workload.consumers < workload.consumer_groups {
        return Err("--consumer-groups: every group needs a consumer (--consumers at least as many)".into());
    }
    Ok(workload)
}

/// What every client thread shares with the others and the progress line.
struct Shared {
    produced: AtomicU64,
    produced_bytes: AtomicU64,
    consumed: AtomicU64,
    consumed_bytes: AtomicU64,
    errors: AtomicU64,
    /// Producers stop sending.
    stop: AtomicBool,
    /// Consumers stop reading.
    stop_consuming: AtomicBool,
    /// Backlog runs: the consumers may start.
    drain: AtomicBool,
    /// Consumers holding their partitions (assigned, or joined to their group).
    consumers_ready: AtomicU64,
    /// The load starts (every consumer is ready).
    go: AtomicBool,
    producers_done: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Latencies of the last second, for the progress line (µs).
    live_publish: Mutex<Histogram<u64>>,
    live_e2e: Mutex<Histogram<u64>>,
    /// When the load started (µs since the epoch): second 0 of the timeline.
    load_started_us: AtomicU64,
    /// Samples count from this instant (µs since the epoch): the end of the warm-up.
    measure_from_us: AtomicU64,
}

impl Shared {
    /// Stops the run after a client task failed.
    fn fail(&self, error: &Error) {
        let mut first = self.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        first.get_or_insert(error.to_string());
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What one consumer reads.
#[derive(Debug, Clone)]
enum Subscription {
    /// These partitions, from the start.
    Assigned(Vec<(String, i32)>),
    /// What this group gives it, from the group's committed offsets (none: from the start).
    Group(String),
}

/// What one thread measured.
struct ThreadResult {
    publish: Histogram<u64>,
    e2e: Histogram<u64>,
    /// Per second since the start: (produced, produced bytes, consumed, consumed bytes).
    timeline: Vec<[u64; 4]>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes, 3 significant digits: valid bounds, so this cannot fail.
    match Histogram::new_with_bounds(1, 600_000_000, 3) {
        Ok(histogram) => histogram,
        Err(error) => unreachable!("histogram bounds: {error}"),
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub fn run(args: BenchArgs) -> ExitCode {
    if args.list_workloads {
        let rows: Vec<Vec<String>> = PRESETS.iter().map(|p| vec![p.0.to_string(), p.1.to_string()]).collect();
        print!("{}", crate::topic::table(&["WORKLOAD", "WHAT IT MEASURES"], &rows));
        return ExitCode::SUCCESS;
    }
    let workload = match resolve(&args) {
        Ok(workload) => workload,
        Err(message) => {
            eprintln!("corelog: {message}");
            return ExitCode::from(2);
        }
    };
    match bench(&args, &workload) {
        Ok(result) => {
            print!("{}", summary(&result));
            let mut failed = false;
            if let Some(path) = &args.json
                && let Err(error) = std::fs::write(path, format!("{result:#}\n"))
            {
                eprintln!("corelog: cannot write {}: {error}", path.display());
                failed = true;
            }
            if let Some(path) = &args.html
                && let Err(error) = std::fs::write(path, html_report(&result))
            {
                eprintln!("corelog: cannot write {}: {error}", path.display());
                failed = true;
            }
            if result["produce"]["errors"].as_u64().unwrap_or(0) > 0 {
                eprintln!(
                    "corelog: {} messages were not acknowledged: {}",
                    result["produce"]["errors"], result["produce"]["first_error"]
                );
                failed = true;
            }
            if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
        }
        Err(error) => crate::client::report(&error),
    }
}

/// The run's own topics and groups: `corelog-bench-RUN-I` and `corelog-bench-RUN-group-I`.
fn run_names(workload: &Workload) -> (Vec<String>, Vec<String>) {
    let prefix = format!("corelog-bench-{:x}", now_us() & 0xff_ffff);
    let topics = (0..workload.topics).map(|i| format!("{prefix}-{i}")).collect();
    let groups = (0..workload.consumer_groups).map(|i| format!("{prefix}-group-{i}")).collect();
    (topics, groups)
}

fn bench(args: &BenchArgs, workload: &Workload) -> Result<Value, Error> {
    let (topics, groups) = run_names(workload);
    let brokers = args.brokers.clone();
    let (cluster, broker_count) = {
        let topics = topics.clone();
        let workload = workload.clone();
        let brokers = brokers.clone();
        crate::client::block_on(async move {
            let client = Client::connect(ClientConfig::new(&brokers)).await?;
            let specs: Vec<NewTopic> = topics
                .iter()
                .map(|name| NewTopic {
                    name: name.clone(),
                    partitions: workload.partitions,
                    replication_factor: -1,
                    configs: Vec::new(),
                })
                .collect();
            for (name, result) in client.create_topics(&specs, false).await? {
                result.map_err(|e| Error::Invalid(format!("creating {name}: {e}")))?;
            }
            let info = client.metadata(Some(&[])).await?;
            Ok((info.cluster_id.unwrap_or_default(), info.brokers.len()))
        })?
    };
    let allowed = if args.cpus.is_empty() { allowed_cpus() } else { args.cpus.clone() };
    let threads = args
        .threads
        .unwrap_or((workload.producers + workload.consumers).min(allowed.len().max(1)))
        .clamp(1, workload.producers + workload.consumers.max(1));
    let shared = Arc::new(Shared {
        produced: AtomicU64::new(0),
        produced_bytes: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        consumed_bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        stop_consuming: AtomicBool::new(false),
        drain: AtomicBool::new(workload.backlog_bytes == 0),
        consumers_ready: AtomicU64::new(0),
        go: AtomicBool::new(false),
        producers_done: AtomicU64::new(0),
        first_error: Mutex::new(None),
        live_publish: Mutex::new(histogram()),
        live_e2e: Mutex::new(histogram()),
        load_started_us: AtomicU64::new(0),
        measure_from_us: AtomicU64::new(u64::MAX),
    });
    let subscriptions = subscriptions(workload, &topics, &groups);
    let usage_before = cpu_seconds();
    let started = Instant::now();
    let mut handles = Vec::new();
    for thread in 0..threads {
        let producers: Vec<usize> = (0..workload.producers).filter(|p| p % threads == thread).collect();
        let consumers: Vec<Subscription> = (0..workload.consumers)
            .filter(|c| (workload.producers + c) % threads == thread)
            .map(|c| subscriptions[c].clone())
            .collect();
        let (shared, workload, topics, brokers) =
            (Arc::clone(&shared), workload.clone(), topics.clone(), brokers.clone());
        let cpu = allowed[thread % allowed.len().max(1)];
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
            .name(&format!("bench-{thread}"))
            .spawn(move || client_thread(shared, workload, topics, brokers, producers, consumers))
            .map_err(|e| Error::Invalid(format!("cannot start a client thread on CPU {cpu}: {e}")))?;
        handles.push(handle);
    }
    let measured = progress(args, workload, &shared);
    let mut publish = histogram();
    let mut e2e = histogram();
    let mut timeline: Vec<[u64; 4]> = Vec::new();
    for handle in handles {
        let result = handle
            .join()
            .map_err(|e| Error::Invalid(format!("a client thread failed: {e}")))?
            .map_err(|e| Error::Invalid(format!("a client thread failed: {e}")))?;
        let _ = publish.add(&result.publish);
        let _ = e2e.add(&result.e2e);
        if timeline.len() < result.timeline.len() {
            timeline.resize(result.timeline.len(), [0; 4]);
        }
        for (second, values) in result.timeline.iter().enumerate() {
            for k in 0..4 {
                timeline[second][k] += values[k];
            }
        }
    }
    let cpu_used = cpu_seconds() - usage_before;
    let elapsed = started.elapsed().as_secs_f64();
    if !args.keep_topics {
        let (topics, groups) = (topics.clone(), groups.clone());
        let brokers = brokers.clone();
        let deleted = crate::client::block_on(async move {
            let client = Client::connect(ClientConfig::new(&brokers)).await?;
            client.delete_topics(&topics).await?;
            for group in &groups {
                client.delete_group(group).await?;
            }
            Ok::<(), Error>(())
        });
        if let Err(error) = deleted {
            eprintln!("corelog: the benchmark topics and groups were not deleted: {error}");
        }
    }
    let measured = measured.map_err(Error::Invalid)?;
    Ok(result_json(ResultInputs {
        workload,
        brokers: &brokers,
        cluster: &cluster,
        broker_count,
        threads,
        cpus: &allowed,
        publish: &publish,
        e2e: &e2e,
        timeline: &timeline,
        measured,
        shared: &shared,
        cpu_used,
        elapsed,
    }))
}

/// What each consumer reads: its group (consumer i in group i mod groups), or with no
/// groups, partitions round robin over every topic's partitions.
fn subscriptions(workload: &Workload, topics: &[String], groups: &[String]) -> Vec<Subscription> {
    if !groups.is_empty() {
        return (0..workload.consumers).map(|i| Subscription::Group(groups[i % groups.len()].clone())).collect();
    }
    let mut assignments: Vec<Vec<(String, i32)>> = vec![Vec::new(); workload.consumers];
    if workload.consumers > 0 {
        let all = topics.iter().flat_map(|t| (0..workload.partitions).map(move |p| (t.clone(), p)));
        for (i, tp) in all.enumerate() {
            assignments[i % workload.consumers].push(tp);
        }
    }
    assignments.into_iter().map(Subscription::Assigned).collect()
}

/// How many times each message is read: once by every group, or once in all without groups.
fn reads_per_message(workload: &Workload) -> u64 {
    if workload.consumers == 0 { 0 } else { workload.consumer_groups.max(1) as u64 }
}

/// Seconds of measured produce and consume (backlog runs: produce, then the drain).
struct Measured {
    produce_seconds: f64,
    produced: u64,
    produced_bytes: u64,
    consume_seconds: f64,
    consumed: u64,
    consumed_bytes: u64,
}

/// Drives the run from the main thread: waits for the consumers to hold their partitions,
/// then warm-up, measure, stop; one progress line a second.
fn progress(args: &BenchArgs, workload: &Workload, shared: &Shared) -> Result<Measured, String> {
    // A new group's first join waits out the broker's group.initial.rebalance.delay.ms
    // (3 s in Kafka), and a rebalance for a member a little late takes a heartbeat more.
    let ready = || {
        shared.consumers_ready.load(Ordering::Relaxed) >= workload.consumers as u64
            || shared.stop.load(Ordering::Relaxed)
    };
    let joined = wait_until(&ready, CONSUMERS_READY_MAX);
    if !joined || shared.stop.load(Ordering::Relaxed) {
        shared.stop.store(true, Ordering::Relaxed);
        shared.stop_consuming.store(true, Ordering::Relaxed);
        let first = shared.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        return Err(match first {
            Some(error) => format!("a consumer could not start: {error}"),
            None => format!("the consumers did not get their partitions within {} s", CONSUMERS_READY_MAX.as_secs()),
        });
    }
    let started = Instant::now();
    let started_us = now_us();
    shared.load_started_us.store(started_us, Ordering::Relaxed);
    shared.measure_from_us.store(started_us + (workload.warmup * 1e6) as u64, Ordering::Relaxed);
    shared.go.store(true, Ordering::Relaxed);
    let tick = Duration::from_secs(1);
    let counts = || {
        [
            shared.produced.load(Ordering::Relaxed),
            shared.produced_bytes.load(Ordering::Relaxed),
            shared.consumed.load(Ordering::Relaxed),
            shared.consumed_bytes.load(Ordering::Relaxed),
        ]
    };
    let mut last = counts();
    // One progress line (rates since the last one); the callers pace it.
    let mut line = |phase: &str, total: f64| {
        let now = counts();
        if !args.quiet {
            let (publish, e2e) = {
                let mut p = shared.live_publish.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut e = shared.live_e2e.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let values = (quantile_ms(&p, 0.99), quantile_ms(&e, 0.99));
                p.reset();
                e.reset();
                values
            };
            let elapsed = started.elapsed().as_secs_f64();
            let filled = if total > 0.0 { ((elapsed / total) * 20.0).min(20.0) as usize } else { 0 };
            eprint!(
                "\r[{}{}] {phase} {:>5.0}s  produce {:>9} msg/s {:>8.1} MB/s p99 {:>7.2} ms | consume {:>8.1} MB/s e2e p99 {:>7.2} ms ",
                "#".repeat(filled),
                "-".repeat(20 - filled),
                elapsed,
                now[0] - last[0],
                (now[1] - last[1]) as f64 / 1e6,
                publish,
                (now[3] - last[3]) as f64 / 1e6,
                e2e
            );
        }
        last = now;
        now
    };
    let measured = if workload.backlog_bytes > 0 {
        // Fill, then drain.
        let fill_started = Instant::now();
        // Checked every 10 ms (the phase's length is the measurement), a line a second.
        let filled = || shared.producers_done.load(Ordering::Relaxed) >= workload.producers as u64;
        while !filled() {
            if wait_until(&filled, Duration::from_secs(1)) {
                break;
            }
            line("filling", 0.0);
        }
        let fill_seconds = fill_started.elapsed().as_secs_f64();
        let [produced, produced_bytes, _, _] = counts();
        shared.drain.store(true, Ordering::Relaxed);
        let drain_started = Instant::now();
        let reads = produced * reads_per_message(workload);
        let drained =
            || shared.consumed.load(Ordering::Relaxed) >= reads || drain_started.elapsed() >= Duration::from_secs(600);
        while !drained() {
            if wait_until(&drained, Duration::from_secs(1)) {
                break;
            }
            line("draining", 0.0);
        }
        let [_, _, consumed, consumed_bytes] = counts();
        Measured {
            produce_seconds: fill_seconds,
            produced,
            produced_bytes,
            consume_seconds: drain_started.elapsed().as_secs_f64(),
            consumed,
            consumed_bytes,
        }
    } else {
        let total = workload.warmup + workload.duration;
        while started.elapsed().as_secs_f64() + 0.5 < workload.warmup {
            std::thread::sleep(tick);
            line("warm-up", total);
        }
        let from = counts();
        let measure_started = Instant::now();
        while measure_started.elapsed().as_secs_f64() + 0.5 < workload.duration {
            std::thread::sleep(tick);
            line("measure", total);
        }
        let to = counts();
        let seconds = measure_started.elapsed().as_secs_f64();
        shared.stop.store(true, Ordering::Relaxed);
        // Consumers read what was produced (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(30);
        while workload.consumers > 0
            && Instant::now() < deadline
            && (shared.producers_done.load(Ordering::Relaxed) < workload.producers as u64
                || shared.consumed.load(Ordering::Relaxed)
                    < shared.produced.load(Ordering::Relaxed) * reads_per_message(workload))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        Measured {
            produce_seconds: seconds,
            produced: to[0] - from[0],
            produced_bytes: to[1] - from[1],
            consume_seconds: seconds,
            consumed: to[2] - from[2],
            consumed_bytes: to[3] - from[3],
        }
    };
    shared.stop.store(true, Ordering::Relaxed);
    shared.stop_consuming.store(true, Ordering::Relaxed);
    if !args.quiet {
        eprintln!();
    }
    Ok(measured)
}

/// How long the consumers may take to get their partitions before the load starts.
const CONSUMERS_READY_MAX: Duration = Duration::from_secs(120);

/// Waits up to `limit` for `done`, checking every 10 ms; true if it became done.
fn wait_until(done: &dyn Fn() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// One pinned thread: its producers and consumers, on its own client.
async fn client_thread(
    shared: Arc<Shared>,
    workload: Workload,
    topics: Vec<String>,
    brokers: String,
    producers: Vec<usize>,
    consumers: Vec<Subscription>,
) -> Result<ThreadResult, String> {
    let client = Rc::new(Client::connect(ClientConfig::new(&brokers)).await.map_err(|e| e.to_string())?);
    let publish = Rc::new(std::cell::RefCell::new(histogram()));
    let e2e = Rc::new(std::cell::RefCell::new(histogram()));
    let timeline: Rc<std::cell::RefCell<Vec<[u64; 4]>>> = Rc::default();
    let mut tasks = Vec::new();
    for index in producers {
        let (shared, workload, topics, client) =
            (Arc::clone(&shared), workload.clone(), topics.clone(), Rc::clone(&client));
        let (publish, timeline) = (Rc::clone(&publish), Rc::clone(&timeline));
        tasks.push((
            true,
            glommio::spawn_local(async move {
                produce_loop(index, shared, workload, topics, client, publish, timeline).await
            }),
        ));
    }
    for subscription in consumers {
        let (shared, workload, topics, client) =
            (Arc::clone(&shared), workload.clone(), topics.clone(), Rc::clone(&client));
        let (e2e, timeline) = (Rc::clone(&e2e), Rc::clone(&timeline));
        tasks.push((
            false,
            glommio::spawn_local(async move {
                let result = consume_loop(subscription, &shared, workload, &topics, client, e2e, timeline).await;
                // At once: the others may be waiting for this consumer to start.
                if let Err(error) = &result {
                    shared.fail(error);
                }
                result
            }),
        ));
    }
    for (producing, task) in tasks {
        if let Err(error) = task.await {
            shared.fail(&error);
            if producing {
                // It will not count itself done: the run must not wait for it.
                shared.producers_done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let publish = publish.borrow().clone();
    let e2e = e2e.borrow().clone();
    let timeline = timeline.borrow().clone();
    Ok(ThreadResult { publish, e2e, timeline })
}

fn record_second(timeline: &std::cell::RefCell<Vec<[u64; 4]>>, shared: &Shared, index: usize, count: u64, bytes: u64) {
    let started_us = shared.load_started_us.load(Ordering::Relaxed);
    let second = (now_us().saturating_sub(started_us) / 1_000_000) as usize;
    let mut timeline = timeline.borrow_mut();
    if timeline.len() <= second {
        timeline.resize(second + 1, [0; 4]);
    }
    timeline[second][index] += count;
    timeline[second][index + 1] += bytes;
}

/// A small fast generator for payloads and keys.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[allow(clippy::too_many_arguments)]
async fn produce_loop(
    index: usize,
    shared: Arc<Shared>,
    workload: Workload,
    topics: Vec<String>,
    client: Rc<Client>,
    publish: Rc<std::cell::RefCell<Histogram<u64>>>,
    timeline: Rc<std::cell::RefCell<Vec<[u64; 4]>>>,
) -> Result<(), Error> {
    let size = workload.message_size;
    let sink_shared = Arc::clone(&shared);
    let config = ProducerConfig {
        acks: workload.acks,
        idempotent: workload.acks == -1,
        codec: workload.compression,
        linger: Duration::from_millis(workload.linger_ms),
        batch_bytes: workload.batch_bytes,
        // Enough to keep every partition's batches flowing; more only adds queueing delay.
        buffer_bytes: (workload.batch_bytes * 8).max(16 << 20),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(
        client,
        config,
        Box::new(move |_, delivery| {
            let shared = &sink_shared;
            if let Some(error) = &delivery.error {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                let mut first = shared.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                first.get_or_insert(error.to_string());
                return;
            }
            let now = now_us();
            let latency = now.saturating_sub(delivery.opaque).max(1);
            shared.produced.fetch_add(1, Ordering::Relaxed);
            shared.produced_bytes.fetch_add(size as u64, Ordering::Relaxed);
            record_second(&timeline, shared, 0, 1, size as u64);
            if delivery.opaque >= shared.measure_from_us.load(Ordering::Relaxed) {
                let _ = publish.borrow_mut().record(latency);
            }
            if let Ok(mut live) = shared.live_publish.try_lock() {
                let _ = live.record(latency);
            }
        }),
    )
    .await?;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
    // A pool of payload bytes to slice messages from.
    let pool: Vec<u8> = if workload.compressible {
        b"corelog benchmark payload, compressible text repeated; ".iter().copied().cycle().take(size + 4096).collect()
    } else {
        (0..size + 4096).map(|_| rng.next() as u8).collect()
    };
    let zipf = match workload.keys {
        Keys::Zipf(n) => Some(zipf_cdf(n)),
        _ => None,
    };
    while !shared.go.load(Ordering::Relaxed) {
        if shared.stop.load(Ordering::Relaxed) {
            shared.producers_done.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let per_producer_rate = workload.rate / workload.producers as f64;
    let backlog_share = workload.backlog_bytes / workload.producers as u64;
    let begin = now_us();
    let mut sent: u64 = 0;
    let mut payload = vec![0u8; size];
    while !shared.stop.load(Ordering::Relaxed) {
        if workload.backlog_bytes > 0 && sent * size as u64 >= backlog_share {
            break;
        }
        let intended = if per_producer_rate > 0.0 {
            let at = begin + (sent as f64 * 1e6 / per_producer_rate) as u64;
            let now = now_us();
            if at > now {
                // Never a shorter sleep than the tick: every message due by the wake-up goes
                // out at once (its latency still counts from its own scheduled time).
                let wait_us = (at - now).max(PACING_TICK_US);
                glommio::timer::sleep(Duration::from_micros(wait_us)).await;
            }
            at
        } else {
            now_us()
        };
        let offset = (rng.next() % 4096) as usize;
        payload.copy_from_slice(&pool[offset..offset + size]);
        payload[..8].copy_from_slice(&intended.to_be_bytes());
        let key = match (workload.keys, &zipf) {
            (Keys::None, _) => None,
            (Keys::Uniform(n), _) => Some(rng.next() % n),
            (Keys::Zipf(_), Some(cdf)) => {
                let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                Some(cdf.partition_point(|c| *c < u) as u64)
            }
            (Keys::Zipf(_), None) => None,
        };
        let key_text = key.map(|k| format!("key-{k}"));
        let topic = &topics[(sent as usize) % topics.len()];
        producer
            .send(
                topic,
                None,
                key_text.as_deref().map(str::as_bytes),
                Some(&payload),
                &[],
                (intended / 1000) as i64,
                intended,
            )
            .await?;
        sent += 1;
        // Let deliveries and timers run between sends at full speed.
        if per_producer_rate <= 0.0 && sent.is_multiple_of(64) {
            glommio::yield_if_needed().await;
        }
    }
    producer.flush().await;
    shared.producers_done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The shortest sleep of a paced producer. A timer a message (tens of thousands a second)
/// cost the load generator half its core at 50 MB/s, and that queueing showed in the very
/// latencies it measures; waking at most every 200 µs and sending what is due costs a
/// message at most that much extra latency, which is counted.
const PACING_TICK_US: u64 = 200;

/// The cumulative distribution of a Zipf law (exponent 1) over `n` keys.
fn zipf_cdf(n: u64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut sum = 0.0;
    weights
        .iter()
        .map(|w| {
            sum += w / total;
            sum
        })
        .collect()
}

/// A bench consumer: of partitions given to it, or a member of a group.
enum Reader {
    Assigned(Consumer),
    Member(GroupConsumer),
}

impl Reader {
    async fn poll(&self) -> Result<Vec<Consumed>, Error> {
        match self {
            Reader::Assigned(consumer) => consumer.poll().await,
            Reader::Member(member) => member.poll().await,
        }
    }

    /// Follows a rebalance while waiting to consume (a member that does not rejoin holds
    /// the whole group up).
    async fn keep_up(&self) -> Result<(), Error> {
        match self {
            Reader::Assigned(_) => Ok(()),
            Reader::Member(member) => member.join().await,
        }
    }
}

/// A commit the group refused because it rebalanced meanwhile is no failure of the run:
/// the member rejoins at its next poll (and the group's next commits carry on).
fn moved_on(error: Error) -> Result<(), Error> {
    if error.code().is_some_and(corelog_client::membership::group_moved_on) { Ok(()) } else { Err(error) }
}

/// A member commits its positions this often (Kafka's `auto.commit.interval.ms`).
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

async fn consume_loop(
    subscription: Subscription,
    shared: &Shared,
    workload: Workload,
    topics: &[String],
    client: Rc<Client>,
    e2e: Rc<std::cell::RefCell<Histogram<u64>>>,
    timeline: Rc<std::cell::RefCell<Vec<[u64; 4]>>>,
) -> Result<(), Error> {
    // Larger fetches than Kafka's default 1 MiB per partition: a drain reads far ahead.
    let config = ConsumerConfig {
        max_wait: Duration::from_millis(100),
        partition_max_bytes: 8 << 20,
        ..ConsumerConfig::default()
    };
    // The topics are this run's own: from the start, consumers read everything it produced.
    let start = StartAt::Earliest;
    let reader = match subscription {
        Subscription::Assigned(assignment) => {
            let consumer = Consumer::new(client, config);
            let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = std::collections::BTreeMap::new();
            for (topic, partition) in &assignment {
                by_topic.entry(topic.as_str()).or_default().push(*partition);
            }
            for (topic, partitions) in by_topic {
                consumer.assign(topic, &partitions, start).await?;
            }
            Reader::Assigned(consumer)
        }
        Subscription::Group(group) => {
            // Heartbeats every second rather than Kafka's 3 s: members that join a little
            // apart settle sooner before the load starts.
            let membership = GroupConfig { heartbeat_interval: Duration::from_secs(1), ..GroupConfig::new(&group) };
            let member = GroupConsumer::new(client, config, membership, topics, start);
            member.join().await?;
            Reader::Member(member)
        }
    };
    shared.consumers_ready.fetch_add(1, Ordering::Relaxed);
    let result = read_until_stopped(&reader, shared, &workload, e2e, timeline).await;
    match &reader {
        Reader::Member(member) if result.is_ok() => member.close().await.or_else(moved_on),
        Reader::Member(member) => {
            let _ = member.leave().await;
            result
        }
        Reader::Assigned(_) => result,
    }
}

async fn read_until_stopped(
    reader: &Reader,
    shared: &Shared,
    workload: &Workload,
    e2e: Rc<std::cell::RefCell<Histogram<u64>>>,
    timeline: Rc<std::cell::RefCell<Vec<[u64; 4]>>>,
) -> Result<(), Error> {
    while !(shared.go.load(Ordering::Relaxed) && shared.drain.load(Ordering::Relaxed)) {
        if shared.stop_consuming.load(Ordering::Relaxed) {
            return Ok(());
        }
        reader.keep_up().await?;
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let mut committed_at = Instant::now();
    while !shared.stop_consuming.load(Ordering::Relaxed) {
        let records = reader.poll().await?;
        let now = now_us();
        let (mut count, mut bytes) = (0u64, 0u64);
        {
            let mut e2e = e2e.borrow_mut();
            let mut live = shared.live_e2e.try_lock().ok();
            let measure_from = shared.measure_from_us.load(Ordering::Relaxed);
            for consumed in &records {
                let Some(value) = consumed.record.value.as_ref() else { continue };
                count += 1;
                bytes += value.len() as u64;
                if value.len() >= 8 && workload.backlog_bytes == 0 {
                    let sent = u64::from_be_bytes(value[..8].try_into().unwrap_or_default());
                    let latency = now.saturating_sub(sent).max(1);
                    if sent >= measure_from {
                        let _ = e2e.record(latency);
                    }
                    if let Some(live) = live.as_mut() {
                        let _ = live.record(latency);
                    }
                }
            }
        }
        shared.consumed.fetch_add(count, Ordering::Relaxed);
        shared.consumed_bytes.fetch_add(bytes, Ordering::Relaxed);
        record_second(&timeline, shared, 2, count, bytes);
        if let Reader::Member(member) = reader
            && committed_at.elapsed() >= COMMIT_INTERVAL
        {
            member.commit().await.or_else(moved_on)?;
            committed_at = Instant::now();
        }
    }
    Ok(())
}

fn quantile_ms(histogram: &Histogram<u64>, q: f64) -> f64 {
    if histogram.is_empty() { 0.0 } else { histogram.value_at_quantile(q) as f64 / 1000.0 }
}

fn latency_json(histogram: &Histogram<u64>) -> Value {
    let q = |q: f64| (quantile_ms(histogram, q) * 1000.0).round() / 1000.0;
    json!({
        "samples": histogram.len(),
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "p9999": q(0.9999),
        "max": histogram.max() as f64 / 1000.0,
        "mean": (histogram.mean() / 1000.0 * 1000.0).round() / 1000.0,
    })
}

/// (percentile, ms) points for the latency curve of the report.
fn latency_curve(histogram: &Histogram<u64>) -> Value {
    let points: Vec<Value> = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0]
        .iter()
        .filter(|_| !histogram.is_empty())
        .map(|p| json!([p, quantile_ms(histogram, p / 100.0)]))
        .collect();
    Value::Array(points)
}

struct ResultInputs<'a> {
    workload: &'a Workload,
    brokers: &'a str,
    cluster: &'a str,
    broker_count: usize,
    threads: usize,
    cpus: &'a [usize],
    publish: &'a Histogram<u64>,
    e2e: &'a Histogram<u64>,
    timeline: &'a [[u64; 4]],
    measured: Measured,
    shared: &'a Shared,
    cpu_used: f64,
    elapsed: f64,
}

fn result_json(r: ResultInputs<'_>) -> Value {
    let w = r.workload;
    let m = &r.measured;
    let per_sec = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let round = |x: f64| (x * 100.0).round() / 100.0;
    json!({
        "workload": {
            "name": w.name, "topics": w.topics, "partitions_per_topic": w.partitions,
            "message_size": w.message_size, "producers": w.producers, "consumers": w.consumers,
            "consumer_groups": w.consumer_groups,
            "rate": w.rate, "duration_s": w.duration, "warmup_s": w.warmup,
            "acks": match w.acks { -1 => "all".to_string(), a => a.to_string() },
            "compression": w.compression.name(), "linger_ms": w.linger_ms, "batch_bytes": w.batch_bytes,
            "keys": match w.keys { Keys::None => "none".to_string(), Keys::Uniform(n) => format!("uniform:{n}"), Keys::Zipf(n) => format!("zipf:{n}") },
            "payload": if w.compressible { "compressible" } else { "random" },
            "backlog_bytes": w.backlog_bytes,
        },
        "broker": { "address": r.brokers, "cluster_id": r.cluster, "brokers": r.broker_count },
        "hardware": hardware(),
        "client": {
            "version": env!("CARGO_PKG_VERSION"), "threads": r.threads, "cpus": r.cpus,
            "cpu_seconds": round(r.cpu_used),
            "cpu_percent_of_one_core": round(if r.elapsed > 0.0 { r.cpu_used / r.elapsed * 100.0 } else { 0.0 }),
        },
        "produce": {
            "messages": m.produced, "seconds": round(m.produce_seconds),
            "messages_per_sec": round(per_sec(m.produced, m.produce_seconds)),
            "mb_per_sec": round(per_sec(m.produced_bytes, m.produce_seconds) / 1e6),
            "errors": r.shared.errors.load(Ordering::Relaxed),
            "first_error": r.shared.first_error.lock().map(|e| e.clone()).unwrap_or_default(),
            "latency_ms": latency_json(r.publish),
            "latency_curve": latency_curve(r.publish),
        },
        "consume": {
            "messages": m.consumed, "seconds": round(m.consume_seconds),
            "messages_per_sec": round(per_sec(m.consumed, m.consume_seconds)),
            "mb_per_sec": round(per_sec(m.consumed_bytes, m.consume_seconds) / 1e6),
        },
        "e2e": { "latency_ms": latency_json(r.e2e), "latency_curve": latency_curve(r.e2e) },
        "timeline": r.timeline.iter().enumerate().map(|(s, v)| json!({
            "second": s, "produced": v[0], "produced_mb": round(v[1] as f64 / 1e6),
            "consumed": v[2], "consumed_mb": round(v[3] as f64 / 1e6),
        })).collect::<Vec<_>>(),
    })
}

fn hardware() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let machine = corelog_hardware::probe::probe(std::path::Path::new("/"), &[]).ok();
    json!({
        "cpu_model": cpu,
        "online_cpus": machine.as_ref().map(|m| m.cpus.online),
        "cores": machine.as_ref().map(|m| m.cpus.cores),
        "memory_bytes": machine.as_ref().and_then(|m| m.memory_bytes),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn summary(result: &Value) -> String {
    let p = &result["produce"];
    let c = &result["consume"];
    let lp = &p["latency_ms"];
    let le = &result["e2e"]["latency_ms"];
    let row = |name: &str, rate: &Value, latency: &Value| {
        let mut row = vec![name.to_string(), rate["messages_per_sec"].to_string(), rate["mb_per_sec"].to_string()];
        row.extend(["p50", "p99", "p999", "max"].iter().map(|k| latency[*k].to_string()));
        row
    };
    let rows = vec![row("produce", p, lp), row("consume/e2e", c, le)];
    let mut out = crate::topic::table(&["", "MSG/S", "MB/S", "P50 MS", "P99 MS", "P99.9 MS", "MAX MS"], &rows);
    out.push_str(&format!(
        "workload {}; client: {} threads, {} CPU-seconds\n",
        result["workload"]["name"].as_str().unwrap_or_default(),
        result["client"]["threads"],
        result["client"]["cpu_seconds"]
    ));
    out
}

/// A self-contained page: the workload, the figures, throughput over time and the latency
/// curves as inline SVG.
pub fn html_report(result: &Value) -> String {
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let timeline = result["timeline"].as_array().cloned().unwrap_or_default();
    let series = |key: &str| -> Vec<(f64, f64)> {
        timeline.iter().map(|t| (t["second"].as_f64().unwrap_or(0.0), t[key].as_f64().unwrap_or(0.0))).collect()
    };
    let curve = |value: &Value| -> Vec<(f64, f64)> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let percentile = p[0].as_f64().unwrap_or(0.0).min(99.999);
                // x: nines (percentile 90 -> 1, 99 -> 2, 99.9 -> 3).
                (-(1.0 - percentile / 100.0).log10(), p[1].as_f64().unwrap_or(0.0))
            })
            .collect()
    };
    let throughput = svg_chart(
        "Throughput (MB/s) by second",
        &[("produce", "#1f77b4", series("produced_mb")), ("consume", "#ff7f0e", series("consumed_mb"))],
        "s",
    );
    let latency = svg_chart(
        "Latency (ms) by percentile: 1 = p90, 2 = p99, 3 = p99.9, 4 = p99.99",
        &[
            ("publish", "#1f77b4", curve(&result["produce"]["latency_curve"])),
            ("end to end", "#2ca02c", curve(&result["e2e"]["latency_curve"])),
        ],
        "nines",
    );
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>corelog bench: {name}</title>\
         <style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style>\
         </head><body><h1>corelog bench: {name}</h1><h2>Results</h2><pre>{summary}</pre>{throughput}{latency}\
         <h2>Workload, broker, hardware</h2><pre>{setup}</pre></body></html>\n",
        name = escape(result["workload"]["name"].as_str().unwrap_or_default()),
        summary = escape(&summary(result)),
        setup = escape(
            &serde_json::to_string_pretty(&json!({
                "workload": result["workload"], "broker": result["broker"],
                "hardware": result["hardware"], "client": result["client"],
            }))
            .unwrap_or_default()
        ),
    )
}

/// A chart line: name, colour, points.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn svg_chart(title: &str, lines: &[Line<'_>], x_label: &str) -> String {
    let (width, height, pad) = (900.0, 300.0, 50.0);
    let points = lines.iter().flat_map(|l| l.2.iter());
    let x_max = points.clone().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let y_max = points.map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let sx = |x: f64| pad + x / x_max * (width - 2.0 * pad);
    let sy = |y: f64| height - pad - y / y_max * (height - 2.0 * pad);
    let mut svg = format!(
        "<h3>{title}</h3><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\">\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#444\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#444\"/>\
         <text x=\"{r}\" y=\"{lx}\" text-anchor=\"end\" font-size=\"12\">{x_max:.1} {x_label}</text>\
         <text x=\"{pad}\" y=\"{ty}\" font-size=\"12\">{y_max:.2}</text>",
        b = height - pad,
        r = width - pad,
        lx = height - pad + 20.0,
        ty = pad - 8.0,
    );
    for (i, (name, color, data)) in lines.iter().enumerate() {
        let path: Vec<String> = data.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\" font-size=\"12\">{name}</text>",
            path.join(" "),
            width - pad - 120.0,
            pad + 16.0 * i as f64,
        ));
    }
    svg.push_str("</svg>");
    svg
}

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data that sched_getaffinity fills for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer and size.
    let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } == 0;
    // SAFETY: CPU_ISSET reads the set filled above.
    let cpus: Vec<usize> =
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| ok && unsafe { libc::CPU_ISSET(cpu, &set) }).collect();
    if cpus.is_empty() { vec![0] } else { cpus }
}

/// CPU seconds this process used (user and system), all threads.
fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data that getrusage fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_keys_favour_the_first() {
        let cdf = zipf_cdf(100);
        assert!((cdf[99] - 1.0).abs() < 1e-9);
        assert!(cdf[0] > 0.19 && cdf[0] < 0.2, "{}", cdf[0]);
    }

    #[test]
    fn flags_override_the_workload() {
        let mut args = BenchArgs {
            brokers: "x".into(),
            workload: Some("max-100b".into()),
            list_workloads: false,
            topics: None,
            partitions: Some(3),
            message_size: None,
            producers: None,
            consumers: None,
            consumer_groups: None,
            rate: None,
            duration: Some(2.0),
            warmup: None,
            acks: Some("1".into()),
            compression: None,
            linger_ms: None,
            batch_bytes: None,
            keys: Some("zipf:10".into()),
            payload: None,
            backlog_bytes: None,
            threads: None,
            cpus: vec![],
            json: None,
            html: None,
            keep_topics: false,
            quiet: true,
        };
        let w = resolve(&args).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((w.message_size, w.partitions, w.acks, w.warmup), (100, 3, 1, 0.0));
        assert_eq!(w.keys, Keys::Zipf(10));
        args.message_size = Some(4);
        assert!(resolve(&args).is_err());
        args.message_size = None;
        args.consumer_groups = Some(2);
        assert!(resolve(&args).unwrap_err().contains("every group needs a consumer"), "one consumer, two groups");
        args.consumers = Some(2);
        assert_eq!(resolve(&args).map(|w| w.consumer_groups), Ok(2));
        args.workload = Some("nope".into());
        assert!(resolve(&args).unwrap_err().contains("max-1kb"));
    }
}
