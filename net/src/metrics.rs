//! What one shard counts, and the snapshot of it a scrape takes.
//!
//! Owner: one [`ShardMetrics`] per shard, inside its `ShardBroker`; only that shard writes it
//! (plain `Cell`s and `RefCell`s: no atomics, no locks on the data path). A scrape sends each
//! shard a message ([`crate::admin`]); the shard answers with a [`ShardSnapshot`] — plain,
//! `Send` data — and the admin thread merges the snapshots of every shard.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use corelog_engine::log::{PartitionMetrics, ShardLogHistograms, ShardLogStats};
use corelog_engine::metrics::Histogram;

use crate::listener::ListenerStats;
use crate::request_budget::RequestBudgetStats;

/// API keys are small non-negative numbers (the highest Kafka 4.1 defines is below 100).
const API_KEYS_MAX: usize = 128;

/// How a request ended, as `corelog_kafka_requests_total{result}` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    /// Its response was written.
    Ok,
    /// No response by design (`acks=0` produce).
    Unanswered,
    /// Malformed, unsupported or unknown: the connection was closed.
    Rejected,
}

/// Counters of one API key on one shard.
#[derive(Debug, Clone)]
pub struct ApiStats {
    pub ok: u64,
    pub unanswered: u64,
    pub rejected: u64,
    /// From the request frame read to its response written.
    pub latency: Histogram,
}

impl Default for ApiStats {
    fn default() -> Self {
        Self { ok: 0, unanswered: 0, rejected: 0, latency: Histogram::latency() }
    }
}

/// The shard's counters. Everything here is touched only on the owning shard.
pub struct ShardMetrics {
    /// Indexed by API key; a key outside the table counts as `unknown_rejected`.
    apis: RefCell<Vec<Option<ApiStats>>>,
    unknown_rejected: Cell<u64>,
    /// (API key, error code) → partitions answered with that error.
    partition_errors: RefCell<HashMap<(i16, i16), u64>>,
    /// Record bytes sent in Fetch responses, per topic.
    topic_bytes_out: RefCell<HashMap<String, u64>>,
    /// Record bytes read from segment files for Fetch on this shard (the owner): handed out
    /// as slices to splice, or read with O_DIRECT and copied (a range in the partial last
    /// page of an active segment).
    file_bytes_spliced: Cell<u64>,
    file_bytes_copied: Cell<u64>,
    /// Requests read and not yet answered, over every connection of the shard.
    requests_in_flight: Cell<usize>,
    /// How late the reactor's probe timer fired: the shard's task-queue delay.
    task_delay: RefCell<Histogram>,
    /// Totals of glommio's executor stats (which reset when read).
    busy: Cell<Duration>,
    tasks: Cell<u64>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        Self {
            apis: RefCell::new(vec![None; API_KEYS_MAX]),
            unknown_rejected: Cell::new(0),
            partition_errors: RefCell::new(HashMap::new()),
            topic_bytes_out: RefCell::new(HashMap::new()),
            file_bytes_spliced: Cell::new(0),
            file_bytes_copied: Cell::new(0),
            requests_in_flight: Cell::new(0),
            task_delay: RefCell::new(Histogram::latency()),
            busy: Cell::new(Duration::ZERO),
            tasks: Cell::new(0),
        }
    }
}

impl ShardMetrics {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Counts one request of API `key` and, unless it was rejected, its latency.
    pub fn request_done(&self, key: i16, result: RequestResult, started: Instant) {
        let known = result != RequestResult::Rejected || kafka_protocol::messages::ApiKey::try_from(key).is_ok();
        let mut apis = self.apis.borrow_mut();
        let Some(slot) = usize::try_from(key).ok().and_then(|k| apis.get_mut(k)).filter(|_| known) else {
            self.unknown_rejected.set(self.unknown_rejected.get() + 1);
            return;
        };
        let stats = slot.get_or_insert_with(ApiStats::default);
        match result {
            RequestResult::Ok => stats.ok += 1,
            RequestResult::Unanswered => stats.unanswered += 1,
            RequestResult::Rejected => {
                stats.rejected += 1;
                return;
            }
        }
        stats.latency.observe_duration(started.elapsed());
    }

    /// Counts a partition answered with a non-zero error code in a Produce or Fetch.
    pub fn partition_error(&self, key: i16, error_code: i16) {
        *self.partition_errors.borrow_mut().entry((key, error_code)).or_default() += 1;
    }

    pub fn bytes_out(&self, topic: &str, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut topics = self.topic_bytes_out.borrow_mut();
        match topics.get_mut(topic) {
            Some(total) => *total += bytes as u64,
            None => {
                topics.insert(topic.to_string(), bytes as u64);
            }
        }
    }

    /// Counts record bytes a read took from segment files, spliced or copied.
    pub fn file_read(&self, spliced: bool, bytes: u64) {
        let counter = if spliced { &self.file_bytes_spliced } else { &self.file_bytes_copied };
        counter.set(counter.get() + bytes);
    }

    /// A request entered a connection's queue; the guard counts it until dropped (answered,
    /// or the connection closed).
    pub fn in_flight(self: &Rc<Self>) -> InFlight {
        self.requests_in_flight.set(self.requests_in_flight.get() + 1);
        InFlight(Rc::clone(self))
    }

    pub fn task_delay(&self, late: Duration) {
        self.task_delay.borrow_mut().observe_duration(late);
    }

    /// Adds what glommio counted since the last call (its stats reset when read). Runs on
    /// the shard (glommio's executor is the calling thread's).
    fn take_executor_stats(&self) {
        let stats = glommio::executor().executor_stats();
        self.busy.set(self.busy.get() + stats.executor_runtime());
        self.tasks.set(self.tasks.get() + stats.tasks_executed());
    }

    /// Drops the bytes-out counters of topics that no longer exist.
    pub fn forget_topics(&self, exists: impl Fn(&str) -> bool) {
        self.topic_bytes_out.borrow_mut().retain(|topic, _| exists(topic));
    }
}

/// One request counted in `requests_in_flight` until dropped.
pub struct InFlight(Rc<ShardMetrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests_in_flight.set(self.0.requests_in_flight.get() - 1);
    }
}

/// A consumer group coordinated by the shard: members and committed offsets.
#[derive(Debug, Clone)]
pub struct GroupMetrics {
    pub group_id: String,
    pub members: usize,
    /// (topic, partition, committed offset).
    pub offsets: Vec<(String, i32, i64)>,
}

/// The connection side of a shard.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionSnapshot {
    pub listener: ListenerStats,
    pub budget: RequestBudgetStats,
    pub budget_limit_bytes: usize,
    pub requests_in_flight: usize,
}

/// The reactor of a shard.
#[derive(Debug, Clone)]
pub struct ReactorSnapshot {
    /// Time spent running tasks.
    pub busy_seconds: f64,
    /// CPU time of the shard's thread.
    pub cpu_seconds: f64,
    pub tasks: u64,
    pub task_delay: Histogram,
}

/// Everything one shard reports to a scrape. Plain data: it crosses to the admin thread.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub shard: usize,
    /// (API key, its counters), keys with any request only.
    pub apis: Vec<(i16, ApiStats)>,
    pub unknown_rejected: u64,
    pub partition_errors: Vec<((i16, i16), u64)>,
    pub topic_bytes_out: Vec<(String, u64)>,
    pub file_bytes_spliced: u64,
    pub file_bytes_copied: u64,
    pub storage: ShardLogStats,
    pub storage_histograms: ShardLogHistograms,
    pub partitions: Vec<PartitionMetrics>,
    pub connections: ConnectionSnapshot,
    pub reactor: ReactorSnapshot,
    /// DMA memory glommio registered for the shard's I/O buffers.
    pub io_memory_bytes: usize,
    pub groups: Vec<GroupMetrics>,
}

impl ShardMetrics {
    /// The request-side part of a snapshot; the rest is filled by the caller that owns the
    /// storage and the listener. Runs on the shard.
    pub fn snapshot(&self, shard: usize) -> ShardSnapshot {
        self.take_executor_stats();
        let apis = self
            .apis
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(key, stats)| stats.as_ref().map(|s| (key as i16, s.clone())))
            .collect();
        ShardSnapshot {
            shard,
            apis,
            unknown_rejected: self.unknown_rejected.get(),
            partition_errors: self.partition_errors.borrow().iter().map(|(k, v)| (*k, *v)).collect(),
            topic_bytes_out: self.topic_bytes_out.borrow().iter().map(|(k, v)| (k.clone(), *v)).collect(),
            file_bytes_spliced: self.file_bytes_spliced.get(),
            file_bytes_copied: self.file_bytes_copied.get(),
            storage: ShardLogStats::default(),
            storage_histograms: ShardLogHistograms::default(),
            partitions: Vec::new(),
            connections: ConnectionSnapshot { requests_in_flight: self.requests_in_flight.get(), ..Default::default() },
            reactor: ReactorSnapshot {
                busy_seconds: self.busy.get().as_secs_f64(),
                cpu_seconds: thread_cpu_seconds(),
                tasks: self.tasks.get(),
                task_delay: self.task_delay.borrow().clone(),
            },
            io_memory_bytes: 0,
            groups: Vec::new(),
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu_seconds() -> f64 {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) } != 0 {
        return 0.0;
    }
    time.tv_sec as f64 + time.tv_nsec as f64 / 1e9
}

/// Wakes every `interval` and records how late it woke: while the shard's tasks hog the CPU,
/// timers (and every task waiting behind them) run late. Runs on the shard until dropped.
pub async fn probe_task_delay(metrics: Rc<ShardMetrics>, interval: Duration) {
    loop {
        let due = Instant::now() + interval;
        glommio::timer::sleep(interval).await;
        metrics.task_delay(Instant::now().saturating_duration_since(due));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_count_by_key_and_result_and_in_flight_guards_undo_themselves() {
        let metrics = ShardMetrics::new();
        let started = Instant::now();
        metrics.request_done(0, RequestResult::Ok, started);
        metrics.request_done(0, RequestResult::Unanswered, started);
        metrics.request_done(1, RequestResult::Rejected, started);
        metrics.request_done(-3, RequestResult::Rejected, started);
        metrics.request_done(500, RequestResult::Rejected, started);
        metrics.request_done(99, RequestResult::Rejected, started);
        {
            let _a = metrics.in_flight();
            let _b = metrics.in_flight();
            assert_eq!(metrics.requests_in_flight.get(), 2);
        }
        assert_eq!(metrics.requests_in_flight.get(), 0);
        let apis = metrics.apis.borrow();
        let produce = apis[0].as_ref().unwrap();
        assert_eq!((produce.ok, produce.unanswered, produce.rejected, produce.latency.count()), (1, 1, 0, 2));
        let fetch = apis[1].as_ref().unwrap();
        assert_eq!((fetch.ok, fetch.rejected, fetch.latency.count()), (0, 1, 0));
        assert_eq!(metrics.unknown_rejected.get(), 3);
    }

    #[test]
    fn bytes_out_per_topic_forget_deleted_topics() {
        let metrics = ShardMetrics::new();
        metrics.bytes_out("a", 10);
        metrics.bytes_out("a", 5);
        metrics.bytes_out("b", 7);
        metrics.bytes_out("c", 0);
        metrics.forget_topics(|t| t != "b");
        let mut topics: Vec<_> = metrics.topic_bytes_out.borrow().clone().into_iter().collect();
        topics.sort();
        assert_eq!(topics, vec![("a".to_string(), 15)]);
    }
}
