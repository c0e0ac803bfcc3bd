//! The bridge between the shards and the admin API: a thread that is not a shard (the admin
//! HTTP server) asks every shard for a [`ShardSnapshot`] through the [`AdminHub`], merges
//! them, and renders Prometheus metrics or the JSON the admin API serves.
//!
//! Each shard serves its own bounded channel with a task ([`serve_shard`]); a request is a
//! message like any other, so a scrape never takes a lock a shard's data path takes. A shard
//! that does not answer within the scrape's timeout is reported down (`corelog_shard_up 0`)
//! and its series are missing from that scrape.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use corelog_engine::metrics::Histogram;
use futures_channel::mpsc as async_mpsc;
use kafka_protocol::messages::ApiKey;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use crate::metrics::{ApiStats, ShardSnapshot};

/// Requests queued for one shard at most: a scrape waits for none of them, so a stuck shard
/// makes later scrapes fail fast instead of piling up.
const QUEUE_PER_SHARD_MAX: usize = 4;

/// What a shard answers.
pub enum AdminRequest {
    Snapshot(mpsc::SyncSender<ShardSnapshot>),
    /// Only "I am serving" (health checks: nothing to copy).
    Ping(mpsc::SyncSender<()>),
}

/// Shared by the shards (each registers its channel at start) and the admin thread.
pub struct AdminHub {
    shards: Mutex<Vec<Option<async_mpsc::Sender<AdminRequest>>>>,
    /// Each shard's last snapshot: a scrape a shard misses reports its counters as they last
    /// were, so that merged counters never drop (which Prometheus would read as a reset).
    last: Mutex<Vec<Option<ShardSnapshot>>>,
    data_dir: PathBuf,
    /// Start-up done and not stopping (set by whoever composes the broker).
    ready: AtomicBool,
    started: std::time::SystemTime,
}

/// The outcome of asking every shard: a snapshot from each that answered in time (none for
/// a ping).
pub struct Collected {
    pub snapshots: Vec<ShardSnapshot>,
    /// Shards that did not answer in time (or have stopped).
    pub down: Vec<usize>,
    /// Shards still starting (recovering their partitions): not serving yet, not failing.
    pub starting: Vec<usize>,
}

impl Collected {
    pub fn all_up(&self) -> bool {
        self.down.is_empty() && self.starting.is_empty()
    }
}

impl AdminHub {
    pub fn new(shards: usize, data_dir: PathBuf) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            shards: Mutex::new(vec![None; shards]),
            last: Mutex::new(vec![None; shards]),
            data_dir,
            ready: AtomicBool::new(false),
            started: std::time::SystemTime::now(),
        })
    }

    pub fn shard_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<async_mpsc::Sender<AdminRequest>>>> {
        self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A shard's request channel; the shard serves the receiver with [`serve_shard`].
    pub fn register(&self, shard: usize) -> async_mpsc::Receiver<AdminRequest> {
        let (sender, receiver) = async_mpsc::channel(QUEUE_PER_SHARD_MAX);
        if let Some(slot) = self.lock().get_mut(shard) {
            *slot = Some(sender);
        }
        receiver
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed().unwrap_or_default()
    }

    /// Asks every shard for its snapshot and waits at most `timeout` for all of them.
    /// Blocks the calling thread: call it from the admin thread, never from a shard.
    pub fn collect(&self, timeout: Duration) -> Collected {
        let (snapshots, down, starting) = self.ask(timeout, AdminRequest::Snapshot);
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for snapshot in &snapshots {
            if let Some(slot) = last.get_mut(snapshot.shard) {
                *slot = Some(snapshot.clone());
            }
        }
        Collected { snapshots, down, starting }
    }

    /// The last snapshots of `shards` (those that had answered a scrape before).
    fn last_snapshots(&self, shards: &[usize]) -> Vec<ShardSnapshot> {
        let last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        shards.iter().filter_map(|&shard| last.get(shard).cloned().flatten()).collect()
    }

    /// Asks every shard whether it serves, waiting at most `timeout`: which are down or
    /// starting (`snapshots` stays empty).
    pub fn ping(&self, timeout: Duration) -> Collected {
        let (_, down, starting) = self.ask(timeout, AdminRequest::Ping);
        Collected { snapshots: Vec::new(), down, starting }
    }

    /// Sends `request` to every shard, then waits for the answers until the deadline:
    /// (answers, shards down, shards starting).
    fn ask<T>(
        &self,
        timeout: Duration,
        request: fn(mpsc::SyncSender<T>) -> AdminRequest,
    ) -> (Vec<T>, Vec<usize>, Vec<usize>) {
        let deadline = Instant::now() + timeout;
        let mut waiting = Vec::new();
        let (mut down, mut starting) = (Vec::new(), Vec::new());
        for (shard, sender) in self.lock().iter_mut().enumerate() {
            let (reply, answer) = mpsc::sync_channel(1);
            match sender.as_mut().map(|s| s.try_send(request(reply))) {
                Some(Ok(())) => waiting.push((shard, answer)),
                Some(Err(_)) => down.push(shard),
                None => starting.push(shard),
            }
        }
        let mut answers = Vec::new();
        for (shard, answer) in waiting {
            match answer.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(value) => answers.push(value),
                Err(_) => down.push(shard),
            }
        }
        down.sort_unstable();
        (answers, down, starting)
    }

    /// The data dir's filesystem: (free bytes for the broker, total bytes).
    pub fn disk_space(&self) -> Option<(u64, u64)> {
        disk_space(&self.data_dir)
    }
}

/// Serves a shard's admin channel until it closes: `snapshot` builds the shard's answer.
/// Runs on the shard.
pub async fn serve_shard(mut requests: async_mpsc::Receiver<AdminRequest>, snapshot: impl Fn() -> ShardSnapshot) {
    use futures_util::StreamExt;
    while let Some(request) = requests.next().await {
        match request {
            AdminRequest::Snapshot(reply) => {
                let _ = reply.try_send(snapshot());
            }
            AdminRequest::Ping(reply) => {
                let _ = reply.try_send(());
            }
        }
    }
}

fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data, filled by the call below.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statvfs we own.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((stat.f_bavail as u64 * block, stat.f_blocks as u64 * block))
}

/// This process's resident set size, from `/proc/self/statm`.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// A Kafka error code as Kafka names it (`NOT_LEADER_OR_FOLLOWER`).
pub fn error_name(code: i16) -> String {
    match kafka_protocol::error::ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(kafka_protocol::error::ResponseError::Unknown(code)) => format!("UNKNOWN_{code}"),
        Some(error) => {
            let camel = error.to_string();
            let mut name = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|()| format!("Unknown{key}"), |k| format!("{k:?}"))
}

/// The merged metrics of a scrape, ready to encode.
#[derive(Debug, Default)]
struct Merged {
    shards: usize,
    /// Down or still starting: no series of theirs in this scrape.
    absent: Vec<usize>,
    ready: bool,
    snapshots: Vec<ShardSnapshot>,
    apis: BTreeMap<String, ApiStats>,
    unknown_rejected: u64,
    partition_errors: BTreeMap<(String, String), u64>,
    /// topic → (bytes in, records in, bytes out)
    topics: BTreeMap<String, (u64, u64, u64)>,
    /// (topic, partition) → high watermark
    high_watermarks: HashMap<(String, i32), i64>,
    disk: Option<(u64, u64)>,
    resident_bytes: Option<u64>,
    start_time_seconds: f64,
}

/// Renders a scrape in the OpenMetrics text format.
pub fn render_metrics(hub: &AdminHub, collected: Collected) -> String {
    let mut merged = Merged {
        shards: hub.shard_count(),
        absent: collected.down.iter().chain(&collected.starting).copied().collect(),
        ready: hub.is_ready(),
        disk: hub.disk_space(),
        resident_bytes: resident_memory_bytes(),
        start_time_seconds: hub.started.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        ..Merged::default()
    };
    // Shards that missed this scrape count with their last counters; their gauges are left out.
    let stale = hub.last_snapshots(&collected.down);
    for (snapshot, fresh) in collected.snapshots.iter().map(|s| (s, true)).chain(stale.iter().map(|s| (s, false))) {
        for (key, stats) in &snapshot.apis {
            let entry = merged.apis.entry(api_name(*key)).or_default();
            entry.ok += stats.ok;
            entry.unanswered += stats.unanswered;
            entry.rejected += stats.rejected;
            entry.latency.merge(&stats.latency);
        }
        merged.unknown_rejected += snapshot.unknown_rejected;
        for ((key, code), count) in &snapshot.partition_errors {
            *merged.partition_errors.entry((api_name(*key), error_name(*code))).or_default() += count;
        }
        for partition in &snapshot.partitions {
            let topic = merged.topics.entry(partition.partition.topic.clone()).or_default();
            topic.0 += partition.appended_bytes;
            topic.1 += partition.appended_records;
            if !fresh {
                continue;
            }
            merged.high_watermarks.insert(
                (partition.partition.topic.clone(), partition.partition.partition),
                partition.offsets.high_watermark,
            );
        }
        for (topic, bytes) in &snapshot.topic_bytes_out {
            merged.topics.entry(topic.clone()).or_default().2 += bytes;
        }
    }
    merged.snapshots = collected.snapshots;
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(ScrapeCollector(Mutex::new(Some(merged)))));
    let mut out = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(%error, "encoding metrics failed");
    }
    out
}

/// Encodes one scrape's merged data (a collector registered for that scrape only).
struct ScrapeCollector(Mutex<Option<Merged>>);

impl std::fmt::Debug for ScrapeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrapeCollector")
    }
}

impl prometheus_client::collector::Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(merged) = guard.as_ref() else { return Ok(()) };
        encode_merged(merged, &mut encoder)
    }
}

type Labels = Vec<(Cow<'static, str>, Cow<'static, str>)>;

fn labels<const N: usize>(pairs: [(&'static str, String); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v))).collect()
}

/// A family of one metric type, written series by series.
struct Family<'a, 'e> {
    encoder: prometheus_client::encoding::MetricEncoder<'a>,
    _marker: std::marker::PhantomData<&'e ()>,
}

impl Family<'_, '_> {
    fn counter(&mut self, labels: &Labels, value: f64) -> Result<(), std::fmt::Error> {
        self.encoder
            .encode_family(labels)?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, f64>(&value, None)
    }

    fn gauge(&mut self, labels: &Labels, value: f64) -> Result<(), std::fmt::Error> {
        if labels.is_empty() {
            // An empty label set would be written as `name{}`.
            return self.encoder.encode_gauge(&value);
        }
        self.encoder.encode_family(labels)?.encode_gauge(&value)
    }

    fn histogram(&mut self, labels: &Labels, histogram: &Histogram) -> Result<(), std::fmt::Error> {
        self.encoder.encode_family(labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            histogram.sum(),
            histogram.count(),
            &histogram.buckets(),
            None,
        )
    }
}

fn family<'a, 'e>(
    encoder: &'a mut DescriptorEncoder<'e>,
    name: &'a str,
    help: &str,
    metric_type: MetricType,
) -> Result<Family<'a, 'e>, std::fmt::Error> {
    Ok(Family { encoder: encoder.encode_descriptor(name, help, None, metric_type)?, _marker: std::marker::PhantomData })
}

fn shard_label(shard: usize) -> Labels {
    labels([("shard", shard.to_string())])
}

/// Per-shard gauges and counters: name, help, type, value of a snapshot.
type ShardSeries = (&'static str, &'static str, MetricType, fn(&ShardSnapshot) -> f64);

const SHARD_SERIES: &[ShardSeries] = &[
    ("corelog_storage_appends", "Batches appended.", MetricType::Counter, |s| s.storage.appends as f64),
    ("corelog_storage_written_bytes", "Bytes written to segment files.", MetricType::Counter, |s| {
        s.storage.written_bytes as f64
    }),
    (
        "corelog_storage_fsyncs",
        "Completed fdatasyncs of segment files and of the shard journal.",
        MetricType::Counter,
        |s| s.storage.syncs as f64,
    ),
    ("corelog_storage_journal_records", "Shard journal records written and synced.", MetricType::Counter, |s| {
        s.storage.journal_records as f64
    }),
    ("corelog_storage_journal_written_bytes", "Bytes written to the shard journal.", MetricType::Counter, |s| {
        s.storage.journal_bytes as f64
    }),
    ("corelog_storage_journal_checkpoints", "Shard journal checkpoints completed.", MetricType::Counter, |s| {
        s.storage.journal_checkpoints as f64
    }),
    (
        "corelog_storage_fsync_errors",
        "Failed fdatasyncs (each takes its partition offline).",
        MetricType::Counter,
        |s| s.storage.sync_errors as f64,
    ),
    ("corelog_storage_flush_waves", "Group-commit waves.", MetricType::Counter, |s| s.storage.waves as f64),
    ("corelog_batch_cache_bytes", "Bytes held by the batch cache.", MetricType::Gauge, |s| {
        s.storage.cache.used_bytes as f64
    }),
    ("corelog_batch_cache_budget_bytes", "Memory budget of the batch cache.", MetricType::Gauge, |s| {
        s.storage.cache.budget_bytes as f64
    }),
    ("corelog_batch_cache_hits", "Reads served from the batch cache.", MetricType::Counter, |s| {
        s.storage.cache.hits as f64
    }),
    ("corelog_batch_cache_misses", "Reads that went to segment files.", MetricType::Counter, |s| {
        s.storage.cache.misses as f64
    }),
    ("corelog_batch_cache_evictions", "Batches evicted from the batch cache.", MetricType::Counter, |s| {
        s.storage.cache.evictions as f64
    }),
    (
        "corelog_fetch_file_bytes_spliced",
        "Record bytes read from segment files for Fetch and spliced to sockets.",
        MetricType::Counter,
        |s| s.file_bytes_spliced as f64,
    ),
    (
        "corelog_fetch_file_bytes_copied",
        "Record bytes read from segment files for Fetch with O_DIRECT and copied (a partial last page).",
        MetricType::Counter,
        |s| s.file_bytes_copied as f64,
    ),
    ("corelog_connections_active", "Open client connections.", MetricType::Gauge, |s| {
        s.connections.listener.active as f64
    }),
    ("corelog_connections_accepted", "Client connections accepted.", MetricType::Counter, |s| {
        s.connections.listener.accepted as f64
    }),
    ("corelog_requests_in_flight", "Requests read and not yet answered.", MetricType::Gauge, |s| {
        s.connections.requests_in_flight as f64
    }),
    (
        "corelog_request_bytes_in_flight",
        "Request bytes reserved from the shard's request memory budget.",
        MetricType::Gauge,
        |s| s.connections.budget.reserved_bytes as f64,
    ),
    ("corelog_request_budget_bytes", "The shard's request memory budget.", MetricType::Gauge, |s| {
        s.connections.budget_limit_bytes as f64
    }),
    (
        "corelog_connection_accepts_throttled",
        "Accepts delayed by max_connection_creation_rate.",
        MetricType::Counter,
        |s| s.connections.listener.throttled as f64,
    ),
    ("corelog_request_budget_waits", "Frames that waited for request memory.", MetricType::Counter, |s| {
        s.connections.budget.waits as f64
    }),
    ("corelog_request_budget_wait_seconds", "Time frames waited for request memory.", MetricType::Counter, |s| {
        s.connections.budget.wait_micros as f64 / 1e6
    }),
    ("corelog_reactor_busy_seconds", "Time the shard's executor spent running tasks.", MetricType::Counter, |s| {
        s.reactor.busy_seconds
    }),
    ("corelog_reactor_cpu_seconds", "CPU time of the shard's thread.", MetricType::Counter, |s| s.reactor.cpu_seconds),
    ("corelog_reactor_tasks", "Tasks the shard's executor ran.", MetricType::Counter, |s| s.reactor.tasks as f64),
];

fn encode_merged(merged: &Merged, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    {
        let mut f = family(encoder, "corelog_build_info", "Version of this broker.", MetricType::Gauge)?;
        f.gauge(&labels([("version", env!("CARGO_PKG_VERSION").to_string())]), 1.0)?;
    }
    {
        let mut f = family(encoder, "corelog_shard_up", "1 if the shard answered this scrape.", MetricType::Gauge)?;
        for shard in 0..merged.shards {
            f.gauge(&shard_label(shard), if merged.absent.contains(&shard) { 0.0 } else { 1.0 })?;
        }
    }
    {
        let mut f = family(encoder, "corelog_ready", "1 once start-up is done, until the stop.", MetricType::Gauge)?;
        f.gauge(&Labels::new(), if merged.ready { 1.0 } else { 0.0 })?;
    }
    if let Some(bytes) = merged.resident_bytes {
        family(encoder, "process_resident_memory_bytes", "Resident memory of the process.", MetricType::Gauge)?
            .gauge(&Labels::new(), bytes as f64)?;
    }
    family(encoder, "process_start_time_seconds", "Start time of the process (Unix time).", MetricType::Gauge)?
        .gauge(&Labels::new(), merged.start_time_seconds)?;
    if let Some((free, total)) = merged.disk {
        family(
            encoder,
            "corelog_storage_disk_free_bytes",
            "Free space of the data dir's filesystem.",
            MetricType::Gauge,
        )?
        .gauge(&Labels::new(), free as f64)?;
        family(encoder, "corelog_storage_disk_total_bytes", "Size of the data dir's filesystem.", MetricType::Gauge)?
            .gauge(&Labels::new(), total as f64)?;
    }
    encode_requests(merged, encoder)?;
    encode_topics(merged, encoder)?;
    encode_shards(merged, encoder)?;
    encode_groups(merged, encoder)
}

fn encode_requests(merged: &Merged, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    {
        let mut f =
            family(encoder, "corelog_kafka_requests", "Kafka requests by API and result.", MetricType::Counter)?;
        for (api, stats) in &merged.apis {
            for (result, count) in [("ok", stats.ok), ("unanswered", stats.unanswered), ("rejected", stats.rejected)] {
                f.counter(&labels([("api", api.clone()), ("result", result.to_string())]), count as f64)?;
            }
        }
        if merged.unknown_rejected > 0 {
            let series = labels([("api", "unknown".to_string()), ("result", "rejected".to_string())]);
            f.counter(&series, merged.unknown_rejected as f64)?;
        }
    }
    {
        let help = "Kafka request latency, from the whole request read to its response written.";
        let mut f = family(encoder, "corelog_kafka_request_duration_seconds", help, MetricType::Histogram)?;
        for (api, stats) in merged.apis.iter().filter(|(_, s)| s.latency.count() > 0) {
            f.histogram(&labels([("api", api.clone())]), &stats.latency)?;
        }
    }
    let help = "Partitions answered with an error in Produce and Fetch responses.";
    let mut f = family(encoder, "corelog_kafka_partition_errors", help, MetricType::Counter)?;
    for ((api, error), count) in &merged.partition_errors {
        f.counter(&labels([("api", api.clone()), ("error", error.clone())]), *count as f64)?;
    }
    Ok(())
}

fn encode_topics(merged: &Merged, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    type TopicValue = fn(&(u64, u64, u64)) -> u64;
    let topic_series: [(&str, &str, TopicValue); 3] = [
        ("corelog_topic_bytes_in", "Record batch bytes appended to the topic.", |t| t.0),
        ("corelog_topic_records_in", "Records appended to the topic.", |t| t.1),
        ("corelog_topic_bytes_out", "Record bytes of the topic sent in Fetch responses.", |t| t.2),
    ];
    for (name, help, value) in topic_series {
        let mut f = family(encoder, name, help, MetricType::Counter)?;
        for (topic, counts) in &merged.topics {
            f.counter(&labels([("topic", topic.clone())]), value(counts) as f64)?;
        }
    }
    type PartitionValue = fn(&corelog_engine::log::PartitionMetrics) -> f64;
    let partition_series: [(&str, &str, PartitionValue); 5] = [
        ("corelog_partition_log_start_offset", "First offset of the partition's log.", |p| {
            p.offsets.log_start_offset as f64
        }),
        ("corelog_partition_log_end_offset", "Offset the next appended record gets.", |p| {
            p.offsets.log_end_offset as f64
        }),
        ("corelog_partition_high_watermark", "Offsets below it are visible to consumers.", |p| {
            p.offsets.high_watermark as f64
        }),
        ("corelog_partition_segments", "Segment files of the partition.", |p| p.segments as f64),
        ("corelog_partition_size_bytes", "Bytes of the partition's segments.", |p| p.size_bytes as f64),
    ];
    let mut partitions: Vec<&corelog_engine::log::PartitionMetrics> =
        merged.snapshots.iter().flat_map(|s| &s.partitions).collect();
    partitions
        .sort_by(|a, b| (&a.partition.topic, a.partition.partition).cmp(&(&b.partition.topic, b.partition.partition)));
    let partition_labels: Vec<Labels> = partitions
        .iter()
        .map(|p| labels([("topic", p.partition.topic.clone()), ("partition", p.partition.partition.to_string())]))
        .collect();
    for (name, help, value) in partition_series {
        let mut f = family(encoder, name, help, MetricType::Gauge)?;
        for (p, series) in partitions.iter().zip(&partition_labels) {
            f.gauge(series, value(p))?;
        }
    }
    Ok(())
}

fn encode_shards(merged: &Merged, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    for (name, help, metric_type, value) in SHARD_SERIES {
        let mut f = family(encoder, name, help, *metric_type)?;
        for s in &merged.snapshots {
            match metric_type {
                MetricType::Counter => f.counter(&shard_label(s.shard), value(s))?,
                _ => f.gauge(&shard_label(s.shard), value(s))?,
            }
        }
    }
    {
        let help = "Partitions by state: online, stalled (no disk space, retried), offline (I/O error).";
        let mut f = family(encoder, "corelog_partitions", help, MetricType::Gauge)?;
        for s in &merged.snapshots {
            for state in ["online", "stalled", "offline"] {
                let count = s.partitions.iter().filter(|p| p.state.name() == state).count();
                f.gauge(&labels([("shard", s.shard.to_string()), ("state", state.to_string())]), count as f64)?;
            }
        }
    }
    {
        let help = "Client connections closed, by reason.";
        let mut f = family(encoder, "corelog_connections_closed", help, MetricType::Counter)?;
        for s in &merged.snapshots {
            let l = &s.connections.listener;
            for (reason, count) in [
                ("client", l.closed_by_client),
                ("idle", l.closed_idle),
                ("rejected", l.closed_rejected + l.refused_over_limit),
                ("write_stalled", l.closed_write_stalled),
                ("error", l.closed_error),
            ] {
                f.counter(&labels([("shard", s.shard.to_string()), ("reason", reason.to_string())]), count as f64)?;
            }
        }
    }
    {
        let help = "Memory the shard accounts for, by use.";
        let mut f = family(encoder, "corelog_shard_memory_bytes", help, MetricType::Gauge)?;
        for s in &merged.snapshots {
            for (used_for, bytes) in [
                ("batch_cache", s.storage.cache.used_bytes),
                ("requests", s.connections.budget.reserved_bytes),
                ("io_buffers", s.io_memory_bytes),
            ] {
                f.gauge(&labels([("shard", s.shard.to_string()), ("use", used_for.to_string())]), bytes as f64)?;
            }
        }
    }
    type HistogramOf = fn(&ShardSnapshot) -> &Histogram;
    let histograms: [(&str, &str, HistogramOf); 4] = [
        ("corelog_storage_fsync_duration_seconds", "fdatasync latency of segment files.", |s| {
            &s.storage_histograms.sync_seconds
        }),
        ("corelog_storage_flush_wave_appends", "Appends covered by one group-commit wave.", |s| {
            &s.storage_histograms.wave_appends
        }),
        ("corelog_storage_flush_wave_bytes", "Bytes written by one group-commit wave.", |s| {
            &s.storage_histograms.wave_bytes
        }),
        ("corelog_reactor_task_delay_seconds", "How late the shard's probe timer ran: task-queue delay.", |s| {
            &s.reactor.task_delay
        }),
    ];
    for (name, help, histogram) in histograms {
        let mut f = family(encoder, name, help, MetricType::Histogram)?;
        for s in &merged.snapshots {
            f.histogram(&shard_label(s.shard), histogram(s))?;
        }
    }
    Ok(())
}

fn encode_groups(merged: &Merged, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let groups = || merged.snapshots.iter().flat_map(|s| &s.groups);
    {
        let mut f = family(encoder, "corelog_consumer_group_members", "Members of the group.", MetricType::Gauge)?;
        for group in groups() {
            f.gauge(&labels([("group", group.group_id.clone())]), group.members as f64)?;
        }
    }
    let series = |group: &str, topic: &str, partition: i32| {
        labels([("group", group.to_string()), ("topic", topic.to_string()), ("partition", partition.to_string())])
    };
    {
        let help = "The group's committed offset of the partition.";
        let mut f = family(encoder, "corelog_consumer_group_committed_offset", help, MetricType::Gauge)?;
        for group in groups() {
            for (topic, partition, offset) in &group.offsets {
                f.gauge(&series(&group.group_id, topic, *partition), *offset as f64)?;
            }
        }
    }
    let help = "High watermark minus the group's committed offset (never negative).";
    let mut f = family(encoder, "corelog_consumer_group_lag", help, MetricType::Gauge)?;
    for group in groups() {
        for (topic, partition, offset) in &group.offsets {
            // A partition whose owner did not answer this scrape has no known lag.
            if let Some(hw) = merged.high_watermarks.get(&(topic.clone(), *partition)) {
                f.gauge(&series(&group.group_id, topic, *partition), (hw - offset).max(0) as f64)?;
            }
        }
    }
    Ok(())
}

/// `/v1/partitions`: every partition of the shards that answered, optionally of one topic.
pub fn partitions_json(collected: &Collected, topic: Option<&str>) -> serde_json::Value {
    let mut rows: Vec<(&str, i32, serde_json::Value)> = Vec::new();
    for snapshot in &collected.snapshots {
        for p in snapshot.partitions.iter().filter(|p| topic.is_none_or(|t| p.partition.topic == t)) {
            let row = serde_json::json!({
                "topic": p.partition.topic,
                "partition": p.partition.partition,
                "shard": snapshot.shard,
                "log_start_offset": p.offsets.log_start_offset,
                "log_end_offset": p.offsets.log_end_offset,
                "high_watermark": p.offsets.high_watermark,
                "size_bytes": p.size_bytes,
                "segments": p.segments,
                "state": p.state.name(),
            });
            rows.push((&p.partition.topic, p.partition.partition, row));
        }
    }
    rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    serde_json::Value::Array(rows.into_iter().map(|(_, _, row)| row).collect())
}

/// `/v1/health`: (live, ready, body). Live: no shard failed to answer (one still recovering
/// its partitions is starting, not dead). Ready: every shard answered, start-up is done and
/// the broker is not stopping.
pub fn health_json(hub: &AdminHub, collected: &Collected) -> (bool, bool, serde_json::Value) {
    let live = collected.down.is_empty();
    let ready = collected.all_up() && hub.is_ready();
    let shards: Vec<serde_json::Value> = (0..hub.shard_count())
        .map(|shard| {
            let state = if collected.down.contains(&shard) {
                "down"
            } else if collected.starting.contains(&shard) {
                "starting"
            } else {
                "up"
            };
            serde_json::json!({"shard": shard, "up": state == "up", "state": state})
        })
        .collect();
    (live, ready, serde_json::json!({"live": live, "ready": ready, "shards": shards}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_still_starting_are_live_but_not_ready_and_a_gone_shard_is_down() {
        let hub = AdminHub::new(2, std::env::temp_dir());
        hub.set_ready(true);
        let collected = hub.collect(Duration::from_millis(10));
        assert_eq!((collected.starting.clone(), collected.down.clone()), (vec![0, 1], vec![]));
        let (live, ready, body) = health_json(&hub, &collected);
        assert!(live && !ready, "{body}");
        assert_eq!(body["shards"][1]["state"], "starting");

        drop(hub.register(0));
        let collected = hub.collect(Duration::from_millis(10));
        assert_eq!((collected.starting.clone(), collected.down.clone()), (vec![1], vec![0]));
        let pinged = hub.ping(Duration::from_millis(10));
        assert_eq!((pinged.starting, pinged.down), (vec![1], vec![0]));
        let (live, ready, body) = health_json(&hub, &collected);
        assert!(!live && !ready, "{body}");
        let metrics = render_metrics(&hub, collected);
        assert!(metrics.contains("corelog_shard_up{shard=\"0\"} 0"), "{metrics}");
        assert!(metrics.contains("corelog_ready 1"), "{metrics}");
    }

    #[test]
    fn a_shard_that_misses_a_scrape_keeps_its_counters_in_the_sums() {
        let hub = AdminHub::new(1, std::env::temp_dir());
        let snapshot = ShardSnapshot {
            shard: 0,
            apis: vec![(0, ApiStats { ok: 5, ..ApiStats::default() })],
            unknown_rejected: 0,
            partition_errors: vec![((0, 6), 2)],
            topic_bytes_out: vec![("t".to_string(), 7)],
            file_bytes_spliced: 0,
            file_bytes_copied: 0,
            storage: Default::default(),
            storage_histograms: Default::default(),
            partitions: Vec::new(),
            connections: Default::default(),
            reactor: crate::metrics::ReactorSnapshot {
                busy_seconds: 1.0,
                cpu_seconds: 1.0,
                tasks: 1,
                task_delay: Histogram::latency(),
            },
            io_memory_bytes: 0,
            groups: Vec::new(),
        };
        hub.last.lock().unwrap()[0] = Some(snapshot);
        let missed = Collected { snapshots: Vec::new(), down: vec![0], starting: Vec::new() };
        let metrics = render_metrics(&hub, missed);
        assert!(metrics.contains("corelog_shard_up{shard=\"0\"} 0"), "{metrics}");
        assert!(metrics.contains("corelog_kafka_requests_total{api=\"Produce\",result=\"ok\"} 5"), "{metrics}");
        assert!(metrics.contains("error=\"NOT_LEADER_OR_FOLLOWER\"} 2"), "{metrics}");
        assert!(metrics.contains("corelog_topic_bytes_out_total{topic=\"t\"} 7"), "{metrics}");
        assert!(!metrics.contains("corelog_reactor_busy_seconds_total{"), "no per-shard series of a missing shard");
    }

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(56), "KAFKA_STORAGE_ERROR");
        assert_eq!(error_name(1), "OFFSET_OUT_OF_RANGE");
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(30000), "UNKNOWN_30000");
        assert_eq!(api_name(0), "Produce");
        assert_eq!(api_name(1000), "Unknown1000");
    }
}
