//! The storage of one shard: every partition the shard owns, its batch cache, and the
//! group-commit flusher.
//!
//! Owner: exactly one shard (glommio executor); `ShardLog` is `!Send` and lives in an `Rc`.
//!
//! Durability contract: under `flush = always` an append's `durable` future resolves only
//! after an `fdatasync` that covers its bytes completed: of the shard journal, or of its
//! segment file (and, for a new segment, after its directory entry was synced). Group
//! commit: appends from all partitions accumulate while a wave is in flight; the next wave
//! puts every `always` partition's new batches into one journal record (one write, one
//! fdatasync) and writes each touched segment once; segment files are synced at journal
//! checkpoints (see `journal`), or per wave when there is no journal or it has no room.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use glommio::io::DmaFile;

use crate::batch;
use crate::error::{AppendError, IoFailure, StorageError};
use crate::faults::{Fault, FaultPlan, IoOperation, errno_error};
use crate::log::cache::{BatchCache, CacheStats, PartitionId};
use crate::log::config::{FlushPolicy, LogConfig};
use crate::log::journal::{self, JournalEntry, JournalRing};
use crate::log::partition::{
    self, FileReadPlan, MaxTimestampPlan, Partition, PartitionOffsets, RecoveryReport, TopicPartition,
};
use crate::log::producer::Verdict;
use crate::log::segment::{self, ChunkPool, Segment, WriteFailure, WritePlan, WriteShape};
use crate::metrics::Histogram;
use crate::now_ms;
use crate::nudge::Nudger;
use crate::records::{self, RecordStamp};
use crate::side_ring::SideRing;

/// Most fdatasyncs a shard runs at once (io-wq workers of its side ring). Measured on ext4:
/// 100 files synced by 32 workers take about half the time they take with 8.
const SYNC_WORKERS_MAX: u32 = 32;

/// How often a partition whose writes are held back for lack of space retries them.
const STALL_RETRY_MS: i64 = 500;

/// Size of a shard journal's ring unless configured (a checkpoint starts at half of it).
pub const JOURNAL_BYTES_DEFAULT: u64 = 128 << 20;

/// Largest journal record one wave writes (a larger backlog goes out over several waves).
const JOURNAL_RECORD_BYTES_MAX: u64 = 32 << 20;

/// Room at the end of the ring that only tombstones may use: a partition can always be
/// deleted (to free disk space, say) even while a stalled partition holds checkpoints back.
const JOURNAL_TOMBSTONE_ROOM_BYTES: u64 = 64 << 10;

/// Latency the flusher's task queue asks of the scheduler. A latency-sensitive queue's I/O
/// goes to glommio's latency ring: submitted at once, and each completion preempts the queue
/// running then, so storage completions are handled promptly however busy the connections'
/// queue is. The latency itself is glommio's default preemption period: a shorter one (500
/// µs) made glommio lose wake-ups often on a busy host (see `crate::nudge`) and cost a
/// debug-build broker under CPU contention three quarters of its produce rate. What it bought
/// (the flusher running between appends: 1.3x for one partition, 1 MiB batches) comes instead
/// from callers yielding their task queue before they wait for durability.
const FLUSHER_LATENCY: Duration = Duration::from_millis(100);

/// The longest glommio may leave the shard asleep with work pending (see `crate::nudge`),
/// while the storage has work or a timer of its own pending ...
const NUDGE_BUSY_TICK: Duration = Duration::from_millis(1);
/// ... and otherwise (a lost wake-up of a connection task, say).
const NUDGE_IDLE_TICK: Duration = Duration::from_millis(10);

/// Settings of a shard's storage.
#[derive(Debug, Clone)]
pub struct ShardLogConfig {
    pub data_dir: PathBuf,
    /// Memory budget of the batch cache.
    pub cache_budget_bytes: usize,
    /// How flush waves cut their writes.
    pub write_shape: WriteShape,
    /// Faults to inject at the storage I/O edge (tests only; None in production).
    pub faults: Option<Arc<FaultPlan>>,
    /// The shard this log belongs to (names its journal file).
    pub shard: usize,
    /// Ring size of the shard journal; 0 runs without one (a sync per segment file per wave).
    pub journal_bytes: u64,
}

impl ShardLogConfig {
    pub fn new(data_dir: impl Into<PathBuf>, cache_budget_bytes: usize) -> Self {
        Self {
            data_dir: data_dir.into(),
            cache_budget_bytes,
            write_shape: WriteShape::default(),
            faults: None,
            shard: 0,
            journal_bytes: JOURNAL_BYTES_DEFAULT,
        }
    }
}

/// Counters of the shard's storage, for benchmarks and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardLogStats {
    pub appends: u64,
    pub appended_bytes: u64,
    pub waves: u64,
    pub writes: u64,
    pub written_bytes: u64,
    pub syncs: u64,
    /// Appends covered by the largest wave so far.
    pub wave_appends_max: u64,
    /// fdatasyncs that failed (each takes its partition offline).
    pub sync_errors: u64,
    /// Journal records written and synced, their bytes (padding included), and checkpoints.
    pub journal_records: u64,
    pub journal_bytes: u64,
    pub journal_checkpoints: u64,
    pub cache: CacheStats,
}

/// The shard's storage histograms, for metrics: fdatasync latency and the size of every
/// group-commit wave (appends it covered, bytes it wrote).
#[derive(Debug, Clone)]
pub struct ShardLogHistograms {
    pub sync_seconds: Histogram,
    pub wave_appends: Histogram,
    pub wave_bytes: Histogram,
}

impl Default for ShardLogHistograms {
    fn default() -> Self {
        Self {
            sync_seconds: Histogram::latency(),
            wave_appends: Histogram::new(crate::metrics::COUNT_BOUNDS),
            wave_bytes: Histogram::new(crate::metrics::BYTES_BOUNDS),
        }
    }
}

/// Where a partition stands, for metrics and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    Online,
    /// Writes held back for lack of space, retried by the flusher.
    Stalled,
    /// An I/O error took it offline until restart.
    Offline,
}

impl PartitionState {
    pub fn name(self) -> &'static str {
        match self {
            PartitionState::Online => "online",
            PartitionState::Stalled => "stalled",
            PartitionState::Offline => "offline",
        }
    }
}

/// One partition as metrics and the admin API show it.
#[derive(Debug, Clone)]
pub struct PartitionMetrics {
    pub partition: TopicPartition,
    pub offsets: PartitionOffsets,
    pub segments: usize,
    pub size_bytes: u64,
    pub state: PartitionState,
    /// Appended since the partition was opened.
    pub appended_bytes: u64,
    pub appended_records: u64,
}

/// A completed append: its offsets, and a future that resolves once the append is
/// acknowledged by its partition's policy: synced (`always`), or written to the device
/// (`interval`, `none`: never before the bytes left memory, which bounds what is pending).
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    pub durable: Durable,
}

/// Resolves when an append is on stable storage (or failed to get there).
pub struct Durable(Option<oneshot::Receiver<Result<(), StorageError>>>);

impl Future for Durable {
    type Output = Result<(), StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.as_mut() {
            None => Poll::Ready(Ok(())),
            Some(rx) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or(Err(StorageError::Stopping))),
        }
    }
}

/// What a read returns: batches straight from the cache, or a byte range of a segment file
/// (to be sent with splice, never copied into a buffer), or nothing yet.
pub enum ReadData {
    Empty,
    Cached(Vec<Bytes>),
    File(FileRange),
}

/// A range of a segment file holding whole batches from the requested one on (possibly
/// ending inside a batch when `max_bytes` cuts it, as Kafka does).
pub struct FileRange {
    pub file: Rc<DmaFile>,
    splice_reader: Arc<std::fs::File>,
    pub path: PathBuf,
    pub position: u64,
    pub len: u64,
    /// Where reading through the page cache must stop (see `FileReadPlan::splice_bytes`).
    splice_end: u64,
    /// Size of the first batch of the range (a read returns it whole).
    first_batch_bytes: u64,
}

impl FileRange {
    /// How the range goes out without a copy as far as possible: the part that may be read
    /// through the page cache, as a [`FileSlice`] to splice, and the rest that must be read
    /// with O_DIRECT (only ever within the partial last page of a segment still being
    /// written: the next write rewrites that page, so it must not reach a pipe). The rest
    /// is None when the slice alone holds the whole first batch: the response is cut at
    /// the page boundary instead (a response may end inside a batch, as Kafka's do).
    pub fn split_for_splice(&self) -> (Option<FileSlice>, Option<FileRange>) {
        let end = self.position + self.len;
        let slice = (self.splice_end > self.position).then(|| FileSlice {
            file: Arc::clone(&self.splice_reader),
            position: self.position,
            len: end.min(self.splice_end) - self.position,
        });
        if self.position + self.first_batch_bytes <= self.splice_end {
            return (slice, None);
        }
        let from = self.position.max(self.splice_end);
        let rest = FileRange {
            file: Rc::clone(&self.file),
            splice_reader: Arc::clone(&self.splice_reader),
            path: self.path.clone(),
            position: from,
            len: end - from,
            splice_end: self.splice_end,
            first_batch_bytes: 0,
        };
        (slice, Some(rest))
    }

    /// Copies the range into memory with O_DIRECT reads.
    pub async fn read_to_vec(&self) -> Result<Vec<u8>, IoFailure> {
        segment::read_range(&self.file, &self.path, self.position, self.len as usize).await
    }
}

/// A byte range of a segment file that may be read through the page cache, to be spliced to
/// a socket. Unlike a [`FileRange`] it may travel to another shard (a shared read-only
/// descriptor; the file stays readable while the slice lives, even if retention deletes
/// the segment meanwhile).
#[derive(Debug, Clone)]
pub struct FileSlice {
    file: Arc<std::fs::File>,
    pub position: u64,
    pub len: u64,
}

impl PartialEq for FileSlice {
    /// The same range of the same open file.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && self.position == other.position && self.len == other.len
    }
}

impl FileSlice {
    /// `len` bytes of `file` from `position` (the file must hold them while the slice lives).
    pub fn new(file: Arc<std::fs::File>, position: u64, len: u64) -> Self {
        Self { file, position, len }
    }

    /// Sends the slice to a non-blocking socket with splice on the calling shard's side
    /// ring: the bytes never enter user space. Returns the bytes sent (all, or an error).
    pub async fn splice_to_socket(
        &self,
        ring: &crate::side_ring::SideRing,
        socket_fd: std::os::fd::RawFd,
    ) -> std::io::Result<u64> {
        use std::os::fd::AsRawFd;
        ring.splice_to_socket(self.file.as_raw_fd(), self.position, self.len, socket_fd).await
    }

    /// Starts reading the slice into the page cache (`posix_fadvise(WILLNEED)`: the kernel
    /// submits the reads and returns without waiting for them), so that the device reads of
    /// every partition of a response overlap instead of each waiting for its splice.
    pub fn prefetch(&self) {
        use std::os::fd::AsRawFd;
        let (Ok(position), Ok(len)) = (i64::try_from(self.position), i64::try_from(self.len)) else { return };
        // SAFETY: an advisory call on an open descriptor; failure only loses the hint.
        unsafe { libc::posix_fadvise(self.file.as_raw_fd(), position, len, libc::POSIX_FADV_WILLNEED) };
    }

    /// Reads the slice into memory with a buffered `pread` (tests; blocking, so never on a
    /// shard's data path).
    pub fn read_blocking(&self) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buffer = vec![0u8; self.len as usize];
        self.file.read_exact_at(&mut buffer, self.position)?;
        Ok(buffer)
    }
}

pub struct ReadResult {
    pub offsets: PartitionOffsets,
    pub data: ReadData,
}

impl ReadResult {
    /// The bytes of the result, whatever their source (copying file ranges).
    pub async fn to_vec(&self) -> Result<Vec<u8>, IoFailure> {
        match &self.data {
            ReadData::Empty => Ok(Vec::new()),
            ReadData::Cached(batches) => Ok(batches.iter().flat_map(|b| b.iter().copied()).collect()),
            ReadData::File(range) => range.read_to_vec().await,
        }
    }
}

/// A single-waiter wake-up flag (the flusher waits on it).
#[derive(Default)]
struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Counts a storage task as running (`Inner::tasks_running`) while it lives.
struct Running<'a>(&'a RefCell<Inner>);

impl<'a> Running<'a> {
    fn new(inner: &'a RefCell<Inner>) -> Self {
        inner.borrow_mut().tasks_running += 1;
        Running(inner)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.borrow_mut().tasks_running -= 1;
    }
}

impl Inner {
    /// Partitions waiting for a wave, I/O in flight, or a storage task between two of its
    /// awaits.
    fn has_work(&self) -> bool {
        !self.dirty.is_empty()
            || self.syncs_in_flight > 0
            || self.writes_in_flight > 0
            || self.journal_writes_in_flight > 0
            || self.tasks_running > 0
    }

    /// Whether `name`'s segment writes go out now rather than wait behind the journal.
    fn writes_through(&self, name: &TopicPartition, stopping: bool) -> bool {
        self.write_through > 0 || stopping || self.forced_writes.contains(name)
    }
}

struct Inner {
    partitions: HashMap<TopicPartition, (PartitionId, Partition)>,
    ids: HashMap<PartitionId, TopicPartition>,
    next_id: PartitionId,
    cache: BatchCache,
    dirty: BTreeSet<TopicPartition>,
    stopping: bool,
    stats: ShardLogStats,
    histograms: ShardLogHistograms,
    appends_since_wave: u64,
    syncs_in_flight: usize,
    /// Segment writes running beside the waves (see `ShardLog::spawn_segment_write`).
    writes_in_flight: usize,
    /// Bytes of the segment writes the current wave planned (they complete after it).
    wave_planned_bytes: u64,
    journal_writes_in_flight: usize,
    /// Storage tasks between two awaits of theirs: a flush wave (which may be opening a
    /// segment file or finalizing a sealed one, with nothing else in flight) or a checkpoint.
    tasks_running: usize,
    /// Callers waiting for every pending batch to be written (settle, checkpoints): segment
    /// writes are not deferred behind the journal while it is above zero.
    write_through: usize,
    /// Partitions whose deferred segment writes go out in this wave (the shard's deferred
    /// bytes passed their bound).
    forced_writes: BTreeSet<TopicPartition>,
    /// Deleted partitions whose tombstone waits for the next journal record.
    journal_tombstones: Vec<(TopicPartition, oneshot::Sender<Result<(), StorageError>>)>,
}

/// The shard journal as a shard log uses it (see `journal`).
struct ShardJournal {
    file: Rc<DmaFile>,
    path: PathBuf,
    ring: RefCell<JournalRing>,
    checkpointing: Cell<bool>,
    /// When the last checkpoint could not complete (a stalled or offline partition), so the
    /// next is not tried at every wave; None after one completed.
    checkpoint_failed_ms: Cell<Option<i64>>,
    /// A write or sync of the journal failed: it is not used again until restart (every
    /// partition falls back to syncing its own segment files).
    broken: Cell<bool>,
}

impl ShardJournal {
    /// Waits until no checkpoint runs, then marks one running (the caller clears it).
    async fn take_checkpoint_turn(&self) {
        while self.checkpointing.replace(true) {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A journal record taken by a wave: where it goes and which partitions' offsets it claims.
struct JournalRecord {
    start: u64,
    padded: u64,
    sequence: u64,
    entries: Vec<JournalEntry>,
    /// (partition, journal run generation, next offset after its last batch in the record)
    claims: Vec<(TopicPartition, u64, i64)>,
    /// Deletions waiting for their tombstone in this record to be durable.
    tombstones: Vec<oneshot::Sender<Result<(), StorageError>>>,
}

pub struct ShardLog {
    config: ShardLogConfig,
    /// fdatasync goes through the side ring, whose io-wq may run more syncs at once than
    /// glommio's ring (bounded to 4 workers per CPU).
    side_ring: Rc<SideRing>,
    chunk_pool: ChunkPool,
    journal: Option<ShardJournal>,
    inner: RefCell<Inner>,
    flusher_wake: Notify,
    /// The flusher sleeps on a timer (an interval sync, the retry of a partition held back).
    flusher_timed: Cell<bool>,
    flusher: RefCell<Option<glommio::task::JoinHandle<()>>>,
    /// Wakes the executor every tick (see `crate::nudge`); its target task is `nudged`.
    nudger: Nudger,
    nudged: RefCell<Option<glommio::task::JoinHandle<()>>>,
    /// The task queue of the flusher and of every task it starts (writes, syncs,
    /// checkpoints): latency-sensitive, so storage completions are handled promptly. It stays
    /// (idle, out of the scheduler) until the executor ends: only the executor itself may
    /// remove a queue.
    flusher_queue: glommio::TaskQueueHandle,
}

impl ShardLog {
    /// Opens the shard's storage and starts its flusher. Must run on the owning shard.
    pub async fn open(config: ShardLogConfig) -> Result<Rc<Self>, StorageError> {
        crate::device::prepare_data_dir(&config.data_dir).await?;
        let side_ring = SideRing::with_sync_workers(256, SYNC_WORKERS_MAX)
            .map_err(|e| StorageError::Io(IoFailure::new("create io_uring side ring", &config.data_dir, e)))?;
        let journal = match config.journal_bytes {
            0 => None,
            ring_bytes => Some(open_journal(&config.data_dir, config.shard, ring_bytes).await?),
        };
        let nudger = Nudger::start(format!("corelog-nudge-{}", config.shard), NUDGE_BUSY_TICK, NUDGE_IDLE_TICK)
            .map_err(|e| StorageError::Io(IoFailure::new("start the nudge thread", &config.data_dir, e)))?;
        let log = Rc::new(Self {
            side_ring,
            chunk_pool: ChunkPool::new(&config.write_shape),
            journal,
            inner: RefCell::new(Inner {
                partitions: HashMap::new(),
                ids: HashMap::new(),
                next_id: 0,
                cache: BatchCache::new(config.cache_budget_bytes),
                dirty: BTreeSet::new(),
                stopping: false,
                stats: ShardLogStats::default(),
                histograms: ShardLogHistograms::default(),
                appends_since_wave: 0,
                syncs_in_flight: 0,
                writes_in_flight: 0,
                wave_planned_bytes: 0,
                journal_writes_in_flight: 0,
                tasks_running: 0,
                write_through: 0,
                forced_writes: BTreeSet::new(),
                journal_tombstones: Vec::new(),
            }),
            config,
            flusher_wake: Notify::default(),
            flusher_timed: Cell::new(false),
            flusher: RefCell::new(None),
            nudger,
            nudged: RefCell::new(None),
            flusher_queue: glommio::executor().create_task_queue(
                glommio::Shares::default(),
                glommio::Latency::Matters(FLUSHER_LATENCY),
                "corelog-storage",
            ),
        });
        let spawn = |task: Pin<Box<dyn Future<Output = ()>>>| {
            glommio::spawn_local_into(task, log.flusher_queue).map(|task| task.detach()).map_err(|error| {
                IoFailure::new("spawn", &log.config.data_dir, std::io::Error::other(error.to_string()))
            })
        };
        let flusher = spawn(Box::pin(Rc::clone(&log).flusher_loop()))?;
        *log.flusher.borrow_mut() = Some(flusher);
        // The nudge target runs in the default queue: a nudge of an executor that is awake
        // then costs no eventfd write (see `crate::nudge`). It holds the log weakly: the log
        // owns the thread that wakes it.
        let weak = Rc::downgrade(&log);
        let busy = move || weak.upgrade().is_some_and(|log| log.inner.borrow().has_work() || log.flusher_timed.get());
        let nudged = glommio::spawn_local_into(log.nudger.target(busy), glommio::TaskQueueHandle::default())
            .map_err(|error| IoFailure::new("spawn", &log.config.data_dir, std::io::Error::other(error.to_string())))?
            .detach();
        *log.nudged.borrow_mut() = Some(nudged);
        Ok(log)
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The shard's side io_uring ring (splice to sockets, syncs).
    pub fn side_ring(&self) -> &Rc<SideRing> {
        &self.side_ring
    }

    /// Opens (recovering) or creates a partition owned by this shard.
    pub async fn open_partition(
        &self,
        name: &TopicPartition,
        config: LogConfig,
    ) -> Result<RecoveryReport, StorageError> {
        validate_config(&config)?;
        if self.inner.borrow().partitions.contains_key(name) {
            return Ok(RecoveryReport::default());
        }
        let dir = self.config.data_dir.join(name.to_string());
        let (mut partition, report) = Partition::open(name.clone(), dir, config, now_ms()).await?;
        partition.restart_journal_run(self.journals(&partition.config));
        let mut inner = self.inner.borrow_mut();
        if inner.partitions.contains_key(name) {
            return Ok(RecoveryReport::default());
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.ids.insert(id, name.clone());
        inner.partitions.insert(name.clone(), (id, partition));
        Ok(report)
    }

    /// Replaces a partition's configuration (AlterConfigs). Retention, roll and size limits
    /// apply from the next append or retention pass; the index interval from the next segment.
    /// A partition switched to `flush = always` has whatever it holds unsynced synced in the
    /// next wave; until then its high watermark is the durable end again, as the policy says.
    pub fn update_config(&self, name: &TopicPartition, config: LogConfig) -> Result<(), StorageError> {
        validate_config(&config)?;
        let mut inner = self.inner.borrow_mut();
        let (_, partition) =
            inner.partitions.get_mut(name).ok_or_else(|| StorageError::UnknownPartition(name.to_string()))?;
        let now_syncs = config.flush == FlushPolicy::Always && partition.config.flush != FlushPolicy::Always;
        let journals = self.journals(&config);
        partition.config = config;
        let mut flush_now = false;
        if journals != partition.journal.enabled {
            partition.restart_journal_run(journals);
            // Segment writes that waited behind the journal go out under the new policy.
            flush_now = partition.segments.values().any(Segment::has_pending);
        }
        // Under a policy that acknowledges on write, what is written is acknowledged (and
        // visible) now.
        partition.complete_waiters();
        if flush_now || (now_syncs && partition.has_unsynced()) {
            inner.dirty.insert(name.clone());
            drop(inner);
            self.wake_flusher();
        }
        Ok(())
    }

    /// Removes a partition and all its files (DeleteTopics). Appends still waiting for
    /// durability fail with UNKNOWN_TOPIC_OR_PARTITION; reads in progress keep their open
    /// files. Removing a partition that is not open still removes its directory.
    pub async fn delete_partition(&self, name: &TopicPartition) -> Result<(), StorageError> {
        {
            let mut inner = self.inner.borrow_mut();
            if let Some((id, mut partition)) = inner.partitions.remove(name) {
                inner.ids.remove(&id);
                inner.cache.remove_partition(id);
                inner.dirty.remove(name);
                partition.abandon(&StorageError::UnknownPartition(name.to_string()));
            }
        }
        // Journal records of the partition must never be replayed into a partition created
        // later under the same name: a durable tombstone tells replay to skip them.
        if let Some(journal) = self.journal.as_ref() {
            if journal.broken.get() {
                let cause = "the shard journal failed; restart the broker to delete partitions".to_string();
                return Err(StorageError::Offline { partition: name.to_string(), cause });
            }
            let (tx, rx) = oneshot::channel();
            {
                let mut inner = self.inner.borrow_mut();
                if inner.stopping {
                    return Err(StorageError::Stopping);
                }
                inner.journal_tombstones.push((name.clone(), tx));
            }
            self.wake_flusher();
            rx.await.unwrap_or(Err(StorageError::Stopping))?;
        }
        let dir = self.config.data_dir.join(name.to_string());
        let owned = dir.clone();
        let removed = glommio::executor()
            .spawn_blocking(move || match std::fs::remove_dir_all(&owned) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            })
            .await;
        removed.map_err(|e| IoFailure::new("remove partition", &dir, e))?;
        partition::sync_dir(&self.config.data_dir).await?;
        Ok(())
    }

    pub fn partitions(&self) -> Vec<TopicPartition> {
        let mut names: Vec<_> = self.inner.borrow().partitions.keys().cloned().collect();
        names.sort();
        names
    }

    /// Validates a produced batch, stamps its offsets in place and appends it. The batch's
    /// bytes become the log's (no copy until the write wave puts them into an aligned buffer).
    pub fn append(&self, name: &TopicPartition, mut batch: BytesMut, now_ms: i64) -> Result<Appended, AppendError> {
        let mut inner = self.inner.borrow_mut();
        if inner.stopping {
            return Err(StorageError::Stopping.into());
        }
        let Inner { partitions, cache, stats, .. } = &mut *inner;
        let (id, partition) =
            partitions.get_mut(name).ok_or_else(|| StorageError::UnknownPartition(name.to_string()))?;
        if let Some(error) = partition.offline_error().or_else(|| partition.stalled_error()) {
            return Err(error.into());
        }
        let mut header = batch::validate_produced(&batch, partition.config.max_message_bytes)?;
        if let Verdict::Duplicate(original) = partition.producers.check(&header)? {
            // A retry of a batch already in the log: its original offsets, once they are safe.
            let waiter = partition.wait_for(original.last_offset + 1);
            return Ok(Appended {
                base_offset: original.base_offset,
                last_offset: original.last_offset,
                durable: Durable(Some(waiter)),
            });
        }
        header.base_offset = partition.log_end_offset();
        header.partition_leader_epoch = partition.leader_epoch;
        batch::stamp(&mut batch, header.base_offset, header.partition_leader_epoch);
        let bytes = batch.freeze();
        partition.producers.record(&header);
        let waiter = partition.append(&header, bytes.clone(), now_ms);
        cache.insert(*id, header.base_offset, header.last_offset(), bytes);
        stats.appends += 1;
        stats.appended_bytes += header.size_bytes as u64;
        partition.appended_bytes += header.size_bytes as u64;
        partition.appended_records += u64::try_from(header.record_count).unwrap_or(0);
        inner.appends_since_wave += 1;
        inner.dirty.insert(name.clone());
        drop(inner);
        self.wake_flusher();
        Ok(Appended {
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            durable: Durable(Some(waiter)),
        })
    }

    pub fn offsets(&self, name: &TopicPartition) -> Result<PartitionOffsets, StorageError> {
        let inner = self.inner.borrow();
        let (_, partition) =
            inner.partitions.get(name).ok_or_else(|| StorageError::UnknownPartition(name.to_string()))?;
        Ok(partition.offsets())
    }

    /// Resolves once every offset below `next_offset` is acknowledged by the partition's
    /// policy (the same wait as an append's `durable`, for a caller that appended earlier and
    /// let that future go, e.g. a pipelined produce answered in request order).
    pub fn wait_durable(&self, name: &TopicPartition, next_offset: i64) -> Result<Durable, StorageError> {
        let mut inner = self.inner.borrow_mut();
        let (_, partition) =
            inner.partitions.get_mut(name).ok_or_else(|| StorageError::UnknownPartition(name.to_string()))?;
        if let Some(error) = partition.offline_error() {
            return Err(error);
        }
        Ok(Durable(Some(partition.wait_for(next_offset))))
    }

    /// Resolves once the partition's high watermark is beyond `offset`, or it goes offline or
    /// away, or the shard stops: the wake-up of a Fetch long poll (which bounds the wait).
    pub fn wait_for_data_beyond(
        &self,
        name: &TopicPartition,
        offset: i64,
    ) -> Result<futures_channel::oneshot::Receiver<()>, StorageError> {
        let mut inner = self.inner.borrow_mut();
        if inner.stopping {
            return Err(StorageError::Stopping);
        }
        let (_, partition) =
            inner.partitions.get_mut(name).ok_or_else(|| StorageError::UnknownPartition(name.to_string()))?;
        Ok(partition.wait_for_data_beyond(offset))
    }

    /// Reads from `offset` up to the high watermark: from the cache when the batch holding
    /// `offset` is there, else a file range. At least one whole batch when any is visible.
    pub async fn read(&self, name: &TopicPartition, offset: i64, max_bytes: usize) -> Result<ReadResult, StorageError> {
        let plan = {
            let mut inner = self.inner.borrow_mut();
            let Inner { partitions, cache, .. } = &mut *inner;
            let (id, partition) =
                partitions.get(name).ok_or_else(|| StorageError::UnknownPartition(name.to_string()))?;
            let offsets = partition.offsets();
            if offset < offsets.log_start_offset || offset > offsets.log_end_offset {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start_offset: offsets.log_start_offset,
                    log_end_offset: offsets.log_end_offset,
                });
            }
            if offset >= offsets.high_watermark {
                return Ok(ReadResult { offsets, data: ReadData::Empty });
            }
            if let Some(batches) = cache.read(*id, offset, offsets.high_watermark, max_bytes) {
                return Ok(ReadResult { offsets, data: ReadData::Cached(batches) });
            }
            match partition.plan_file_read(offset, offsets.high_watermark) {
                Some(plan) => (offsets, plan),
                None => {
                    return Ok(ReadResult { offsets, data: ReadData::Empty });
                }
            }
        };
        let (offsets, plan) = plan;
        let data = match locate_batch(&plan, |h| h.last_offset() >= plan.offset).await? {
            Some((position, first_batch_bytes)) => {
                let len = (max_bytes as u64).max(first_batch_bytes).min(plan.bound_bytes - position);
                ReadData::File(FileRange {
                    file: plan.file,
                    splice_reader: plan.splice_reader,
                    path: plan.path,
                    position,
                    len,
                    splice_end: plan.splice_bytes,
                    first_batch_bytes,
                })
            }
            None => ReadData::Empty,
        };
        Ok(ReadResult { offsets, data })
    }

    /// The first visible record at or after the log start whose timestamp is ≥ `timestamp`
    /// (ListOffsets by time): the time index narrows the search to a batch, whose records are
    /// then read (decompressed if need be). None if no record is that recent.
    pub async fn offset_for_timestamp(
        &self,
        name: &TopicPartition,
        timestamp: i64,
    ) -> Result<Option<RecordStamp>, StorageError> {
        let (plan, log_start_offset) = {
            let inner = self.inner.borrow();
            let (_, partition) =
                inner.partitions.get(name).ok_or_else(|| StorageError::UnknownPartition(name.to_string()))?;
            (partition.plan_timestamp_lookup(timestamp), partition.log_start_offset)
        };
        let Some(mut plan) = plan else {
            return Ok(self.unwritten_record_for_timestamp(name, log_start_offset, timestamp, log_start_offset));
        };
        let start = plan.offset;
        // A candidate batch may hold no qualifying record (all below the log start, or a
        // producer's max timestamp that its records do not reach): go on to the next one.
        loop {
            let found = locate_batch(&plan, |h| h.last_offset() >= start && h.max_timestamp >= timestamp).await?;
            let Some((position, size)) = found else {
                return Ok(self.unwritten_record_for_timestamp(name, start, timestamp, log_start_offset));
            };
            let bytes = segment::read_range(&plan.file, &plan.path, position, size as usize).await?;
            let wanted = |r: &RecordStamp| r.offset >= log_start_offset && r.timestamp >= timestamp;
            if let Some(record) = pick_record(name, &bytes, wanted) {
                return Ok(Some(record));
            }
            plan.scan_from = position + size;
        }
    }

    /// Like the file search of `offset_for_timestamp`, over the visible batches not yet written
    /// to their segment file (writes behind the journal), which only the cache holds.
    fn unwritten_record_for_timestamp(
        &self,
        name: &TopicPartition,
        start: i64,
        timestamp: i64,
        log_start_offset: i64,
    ) -> Option<RecordStamp> {
        let inner = self.inner.borrow();
        let (id, partition) = inner.partitions.get(name)?;
        let high_watermark = partition.high_watermark();
        let from = start.max(partition.readable_end_offset());
        if from >= high_watermark {
            return None;
        }
        for bytes in inner.cache.batches_from(*id, from) {
            let header = batch::parse_stored_header(&bytes)?;
            if header.base_offset >= high_watermark {
                break;
            }
            if header.last_offset() < start || header.max_timestamp < timestamp {
                continue;
            }
            let wanted =
                |r: &RecordStamp| r.offset >= log_start_offset && r.offset >= start && r.timestamp >= timestamp;
            if let Some(record) = pick_record(name, &bytes, wanted) {
                return Some(record);
            }
        }
        None
    }

    /// The first visible record with the largest timestamp in the log (ListOffsets
    /// MAX_TIMESTAMP, KIP-734). None for an empty log.
    pub async fn max_timestamp_record(&self, name: &TopicPartition) -> Result<Option<RecordStamp>, StorageError> {
        let plan = {
            let inner = self.inner.borrow();
            let (_, partition) =
                inner.partitions.get(name).ok_or_else(|| StorageError::UnknownPartition(name.to_string()))?;
            match partition.plan_max_timestamp_lookup() {
                Some(MaxTimestampPlan::Read(plan)) => plan,
                // Not written to its segment yet: the cache has it.
                Some(MaxTimestampPlan::Batch(stamp)) => {
                    let (id, _) =
                        inner.partitions.get(name).ok_or_else(|| StorageError::UnknownPartition(name.to_string()))?;
                    let cached = inner.cache.batches_from(*id, stamp.offset).into_iter().next();
                    let log_start_offset = inner.partitions.get(name).map_or(0, |(_, p)| p.log_start_offset);
                    let wanted = |r: &RecordStamp| r.timestamp == stamp.timestamp && r.offset >= log_start_offset;
                    let exact = cached.and_then(|bytes| pick_record(name, &bytes, wanted));
                    return Ok(Some(exact.unwrap_or(stamp)));
                }
                None => return Ok(None),
            }
        };
        let offset = plan.offset;
        let Some((position, size)) = locate_batch(&plan, |h| h.last_offset() >= offset).await? else {
            return Ok(None);
        };
        let bytes = segment::read_range(&plan.file, &plan.path, position, size as usize).await?;
        let max_timestamp = batch::parse_stored_header(&bytes).map_or(-1, |h| h.max_timestamp);
        Ok(pick_record(name, &bytes, |r| r.timestamp == max_timestamp))
    }

    /// Moves the log start offset to `offset` (Kafka DeleteRecords; -1 means the high
    /// watermark), durably, and deletes the segments wholly below it. Returns the new log
    /// start offset.
    pub async fn delete_records(&self, name: &TopicPartition, offset: i64) -> Result<i64, StorageError> {
        let (dir, target, generation) = {
            let mut inner = self.inner.borrow_mut();
            let (_, partition) =
                inner.partitions.get_mut(name).ok_or_else(|| StorageError::UnknownPartition(name.to_string()))?;
            let offsets = partition.offsets();
            let target = if offset == -1 { offsets.high_watermark } else { offset };
            if target < 0 || target > offsets.high_watermark {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start_offset: offsets.log_start_offset,
                    log_end_offset: offsets.high_watermark,
                });
            }
            if target <= offsets.log_start_offset {
                return Ok(offsets.log_start_offset);
            }
            partition.checkpoint_generation += 1;
            (partition.dir.clone(), target, partition.checkpoint_generation)
        };
        partition::write_log_start_checkpoint(&dir, target, generation).await?;
        {
            let mut inner = self.inner.borrow_mut();
            let Inner { partitions, cache, .. } = &mut *inner;
            if let Some((id, partition)) = partitions.get_mut(name) {
                partition.log_start_offset = partition.log_start_offset.max(target);
                cache.remove_below(*id, target);
            }
        }
        self.enforce_retention_of(name, now_ms()).await?;
        Ok(self.offsets(name)?.log_start_offset)
    }

    /// Applies retention (time, size, log start offset) to every partition; returns the
    /// number of segments deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        let mut deleted = 0;
        for name in self.partitions() {
            deleted += self.enforce_retention_of(&name, now_ms).await?;
        }
        Ok(deleted)
    }

    async fn enforce_retention_of(&self, name: &TopicPartition, now_ms: i64) -> Result<usize, StorageError> {
        let (dir, doomed) = {
            let mut inner = self.inner.borrow_mut();
            let Inner { partitions, cache, .. } = &mut *inner;
            let Some((id, partition)) = partitions.get_mut(name) else {
                return Ok(0);
            };
            let doomed: Vec<Segment> = partition.take_expired_segments(now_ms);
            cache.remove_below(*id, partition.log_start_offset);
            (partition.dir.clone(), doomed)
        };
        for segment in &doomed {
            tracing::info!(partition = %name, segment = segment.base_offset, "deleting segment (retention)");
            partition::remove_segment_files(&dir, segment.base_offset).await?;
        }
        Ok(doomed.len())
    }

    /// Waits until the flusher has nothing outstanding: everything written, synced where the
    /// policy syncs, and every rolled segment finalized (retention only deletes those).
    /// Partitions offline, or held back for lack of space, are not waited for.
    pub async fn settle(&self) {
        self.inner.borrow_mut().write_through += 1;
        self.settle_inner().await;
        self.inner.borrow_mut().write_through -= 1;
    }

    async fn settle_inner(&self) {
        {
            let mut inner = self.inner.borrow_mut();
            let Inner { partitions, dirty, .. } = &mut *inner;
            for (name, (_, p)) in partitions.iter() {
                if p.segments.values().any(Segment::has_pending) {
                    dirty.insert(name.clone());
                }
            }
        }
        self.wake_flusher();
        loop {
            let busy = {
                let inner = self.inner.borrow();
                inner.has_work()
                    || inner.partitions.values().any(|(_, p)| {
                        p.failed.is_none()
                            && p.stalled.is_none()
                            && p.segments.values().any(|s| {
                                s.has_pending()
                                    || s.ready_to_finalize()
                                    || (s.needs_sync()
                                        && p.config.flush == FlushPolicy::Always
                                        && p.segment_needs_own_sync(s))
                            })
                    })
            };
            if !busy {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The flusher's state in text (in-flight counts; per partition its waiters, journal run
    /// and segment write state), for a benchmark or test to print when appends stop
    /// completing.
    pub fn debug_state(&self) -> String {
        let inner = self.inner.borrow();
        let mut out = format!(
            "dirty {:?} syncs {} writes {} journal_writes {} write_through {}\n",
            inner.dirty,
            inner.syncs_in_flight,
            inner.writes_in_flight,
            inner.journal_writes_in_flight,
            inner.write_through
        );
        for (name, (_, p)) in &inner.partitions {
            out += &format!(
                "{name}: waiters {} ack_end {} journal enabled {} start {} claimed {} queue {} cover {:?} stalled {:?} failed {}\n",
                p.waiters_len(),
                p.durable_end_offset(),
                p.journal.enabled,
                p.journal.start,
                p.journal.claimed_end,
                p.journal.queue.len(),
                p.journal_cover(),
                p.stalled.as_ref().map(|s| s.cause.as_str()),
                p.failed.is_some()
            );
            for s in p.segments.values() {
                out += &format!("  {}\n", s.debug_state());
            }
        }
        out
    }

    pub fn stats(&self) -> ShardLogStats {
        let inner = self.inner.borrow();
        ShardLogStats { cache: inner.cache.stats(), ..inner.stats }
    }

    pub fn histograms(&self) -> ShardLogHistograms {
        self.inner.borrow().histograms.clone()
    }

    /// Every partition of the shard: offsets, size, state and append counters.
    pub fn partition_metrics(&self) -> Vec<PartitionMetrics> {
        let inner = self.inner.borrow();
        inner
            .partitions
            .values()
            .map(|(_, p)| PartitionMetrics {
                partition: p.name.clone(),
                offsets: p.offsets(),
                segments: p.segments.len(),
                size_bytes: p.size_bytes(),
                state: if p.failed.is_some() {
                    PartitionState::Offline
                } else if p.stalled.is_some() {
                    PartitionState::Stalled
                } else {
                    PartitionState::Online
                },
                appended_bytes: p.appended_bytes,
                appended_records: p.appended_records,
            })
            .collect()
    }

    /// Graceful stop: refuse new appends, write and sync everything, finalize every segment's
    /// indexes so the next start need not scan, then stop the flusher.
    pub async fn close(&self) -> Result<(), StorageError> {
        {
            let mut inner = self.inner.borrow_mut();
            inner.stopping = true;
            for (_, partition) in inner.partitions.values_mut() {
                partition.release_readers();
            }
        }
        self.wake_flusher();
        let task = self.flusher.borrow_mut().take();
        if let Some(task) = task {
            task.await;
        }
        self.nudger.stop();
        let nudged = self.nudged.borrow_mut().take();
        if let Some(nudged) = nudged {
            nudged.await;
        }
        // Producer state first (everything is durable now), then the active segments get the
        // same treatment as sealed ones: exact size and indexes.
        let snapshots: Vec<(PathBuf, Vec<u8>)> = {
            let inner = self.inner.borrow();
            inner.partitions.values().filter(|(_, p)| p.failed.is_none()).map(|(_, p)| p.producer_snapshot()).collect()
        };
        for (path, snapshot) in snapshots {
            segment::write_small_file(&path, snapshot).await?;
        }
        let active: Vec<(PathBuf, Rc<DmaFile>, PathBuf, crate::log::index::SegmentIndex)> = {
            let inner = self.inner.borrow();
            inner
                .partitions
                .values()
                .filter(|(_, p)| p.failed.is_none())
                .filter_map(|(_, p)| {
                    let active = p.active();
                    let clean = !active.needs_sync() && !active.has_pending();
                    let file = active.file.clone().filter(|_| clean)?;
                    Some((p.dir.clone(), file, active.path.clone(), active.index.clone()))
                })
                .collect()
        };
        for (dir, file, path, index) in active {
            segment::finalize(&dir, &file, &path, &index).await?;
        }
        // Everything is in the segment files and synced: the journal starts empty next time,
        // unless a partition could not get there (its records are replayed at the next start).
        let all_synced =
            self.inner.borrow().partitions.values().all(|(_, p)| p.failed.is_none() && p.stalled.is_none());
        if all_synced {
            self.write_checkpoint_at_head().await?;
        }
        Ok(())
    }

    async fn flusher_loop(self: Rc<Self>) {
        loop {
            match self.timed_wake_ms() {
                Some(ms) => {
                    // Its wake-up can be lost like any other.
                    self.nudger.busy_now();
                    self.flusher_timed.set(true);
                    let sleep = glommio::timer::sleep(Duration::from_millis(ms));
                    futures_lite::future::or(self.flusher_wake.wait(), sleep).await;
                    self.flusher_timed.set(false);
                }
                None => self.flusher_wake.wait().await,
            }
            // From here to the next wait the wave may await I/O that no counter covers (a new
            // segment file, a sealed one's indexes): the shard has work.
            let _running = Running::new(&self.inner);
            let now = now_ms();
            let (wave, stopping, appends) = {
                let mut inner = self.inner.borrow_mut();
                let mut wave: BTreeSet<TopicPartition> = std::mem::take(&mut inner.dirty);
                let due: Vec<TopicPartition> = inner
                    .partitions
                    .iter()
                    .filter(|(name, (_, p))| {
                        let sync_due = p.has_unsynced()
                            && (inner.stopping || matches!(p.config.flush, FlushPolicy::IntervalMs(ms) if now - p.last_sync_ms >= ms as i64));
                        // Partitions held back for lack of space retry their writes now and then.
                        let retry_due = p.stalled.as_ref().is_some_and(|s| now >= s.retry_at_ms);
                        !wave.contains(name) && p.failed.is_none() && (sync_due || retry_due)
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                wave.extend(due);
                let forced = deferred_over_bound(&inner, self.config.write_shape.chunk_bytes);
                wave.extend(forced.iter().cloned());
                inner.forced_writes = forced;
                let appends = std::mem::take(&mut inner.appends_since_wave);
                inner.stats.wave_appends_max = inner.stats.wave_appends_max.max(appends);
                (wave, inner.stopping, appends)
            };
            let tombstones = !self.inner.borrow().journal_tombstones.is_empty();
            if !wave.is_empty() || tombstones {
                self.inner.borrow_mut().wave_planned_bytes = 0;
                let record = self.take_journal_record(&wave);
                let wrote_record = record.is_some();
                let this = &self;
                let flushes = wave.iter().map(|name| this.flush_partition(name, stopping));
                let journal_write = async {
                    if let Some(record) = record {
                        this.write_journal_record(record).await;
                    }
                };
                futures_util::future::join(journal_write, futures_util::future::join_all(flushes)).await;
                if wrote_record {
                    self.write_behind_after_record().await;
                }
                self.start_checkpoint_if_due();
                let mut inner = self.inner.borrow_mut();
                inner.stats.waves += 1;
                let wave_bytes = inner.wave_planned_bytes;
                inner.histograms.wave_appends.observe(appends as f64);
                inner.histograms.wave_bytes.observe(wave_bytes as f64);
                evict_cache(&mut inner);
            }
            let idle = self.inner.borrow().dirty.is_empty();
            let in_flight = {
                let inner = self.inner.borrow();
                inner.syncs_in_flight + inner.writes_in_flight
            };
            if stopping && idle && in_flight == 0 {
                for (_, tx) in self.inner.borrow_mut().journal_tombstones.drain(..) {
                    let _ = tx.send(Err(StorageError::Stopping));
                }
                return;
            }
            if !idle {
                self.wake_flusher();
            }
        }
    }

    /// Sends out the deferred segment writes past their bound (see `WRITE_BEHIND_CHUNKS_MAX`)
    /// as soon as a journal record completed, before the next wave takes its record. Forced
    /// at the start of that wave instead, they went to the device together with its record
    /// (the record is encoded first, and glommio submits both at the end of the same poll)
    /// and slowed its write and sync; sent here, they start while producers refill and
    /// while the next record is encoded. With 100 partitions of 16 KiB batches, a record
    /// of 8 MB took 4.4 ms to write and 4.4 ms to sync the first way, 3.3 and 3.2 ms this way
    /// (`docs/benchmarks.md`).
    async fn write_behind_after_record(self: &Rc<Self>) {
        let (forced, stopping) = {
            let mut inner = self.inner.borrow_mut();
            let forced = deferred_over_bound(&inner, self.config.write_shape.chunk_bytes);
            inner.forced_writes = forced.clone();
            (forced, inner.stopping)
        };
        if !forced.is_empty() {
            let flushes = forced.iter().map(|name| self.flush_partition(name, stopping));
            futures_util::future::join_all(flushes).await;
        }
    }

    fn wake_flusher(&self) {
        self.flusher_wake.notify();
        self.nudger.busy_now();
    }

    fn faults(&self) -> Option<&FaultPlan> {
        self.config.faults.as_deref()
    }

    /// When the flusher must run even if nothing wakes it: the shortest sync interval of a
    /// partition with unsynced data, or the retry of a partition held back for lack of space.
    fn timed_wake_ms(&self) -> Option<u64> {
        let inner = self.inner.borrow();
        inner
            .partitions
            .values()
            .filter_map(|(_, p)| match p.config.flush {
                _ if p.stalled.is_some() => Some(STALL_RETRY_MS as u64),
                FlushPolicy::IntervalMs(ms) if p.has_unsynced() => Some(ms.max(1)),
                _ => None,
            })
            .min()
    }

    /// Plans the writes, starts the syncs and finalizes what one partition has outstanding,
    /// segment by segment in offset order. A later segment's write may complete before an
    /// earlier one's; what counts as durable is still a prefix (`durable_end_offset` stops at
    /// the first segment not synced to its end).
    async fn flush_partition(self: &Rc<Self>, name: &TopicPartition, stopping: bool) {
        let result = self.flush_partition_inner(name, stopping).await;
        let mut inner = self.inner.borrow_mut();
        let Some((_, partition)) = inner.partitions.get_mut(name) else {
            return;
        };
        match result {
            // Offline: what it still holds in memory is never written.
            Ok(()) if partition.failed.is_some() => {}
            Ok(()) => {
                // A stall ends when a write goes through (see `complete_segment_write`), or
                // when nothing is left to write.
                if !partition.segments.values().any(Segment::has_pending) {
                    partition.resume(now_ms());
                }
                partition.complete_waiters();
                if self.has_more_to_flush(&inner, name, stopping) {
                    inner.dirty.insert(name.clone());
                }
            }
            // The bytes stay pending in memory and are written again once there is room; the
            // shard stopping gives up instead (they were never acknowledged).
            Err(failure) if failure.is_retryable_write() && !stopping => {
                partition.stall(&failure, now_ms(), STALL_RETRY_MS);
            }
            Err(failure) => partition.fail(&failure),
        }
    }

    /// Whether `name` has work for the next wave: a write it can plan now (a wave writes at
    /// most `write_bytes_max` per segment, and at most `WRITES_IN_FLIGHT_MAX` writes of a
    /// segment run at once; batches that may wait behind the journal wait), or batches a full
    /// journal record left queued. A partition held back for room waits for its retry.
    fn has_more_to_flush(&self, inner: &Inner, name: &TopicPartition, stopping: bool) -> bool {
        let Some((_, partition)) = inner.partitions.get(name) else { return false };
        if partition.failed.is_some() || partition.stalled.is_some() {
            return false;
        }
        let write_behind_bytes = self.config.write_shape.chunk_bytes;
        let write_through = inner.writes_through(name, stopping);
        (partition.journal.enabled && !partition.journal.queue.is_empty())
            || partition.segments.values().any(|s| {
                s.can_plan_write(write_behind_bytes)
                    && (write_through || !partition.segment_write_deferrable(s, write_behind_bytes))
            })
    }

    /// Runs a planned segment write in its own task, so the wave that planned it ends without
    /// waiting for the device: the next wave plans the segment's next write while this one
    /// is in flight (the device's queue stays full). Writes of one segment complete in plan
    /// order (see `segment::WriteOrder`).
    fn spawn_segment_write(self: &Rc<Self>, name: TopicPartition, id: PartitionId, base: i64, mut plan: WritePlan) {
        {
            let mut inner = self.inner.borrow_mut();
            inner.writes_in_flight += 1;
            inner.wave_planned_bytes += plan.buffer_len as u64;
        }
        let this = Rc::clone(self);
        glommio::spawn_local(async move {
            let queue_depth = this.config.write_shape.queue_depth;
            let result = segment::execute_write(&mut plan, queue_depth, this.faults(), &this.chunk_pool).await;
            this.complete_segment_write(name, id, base, plan, result);
        })
        .detach();
    }

    /// Applies a finished segment write: its batches count as written (acknowledged under
    /// `flush = none`), its sync starts when due, and the write planned after it may go on.
    /// A failed write stalls the partition (no room) or takes it offline, as a failed write
    /// in a wave did.
    fn complete_segment_write(
        self: &Rc<Self>,
        name: TopicPartition,
        id: PartitionId,
        base: i64,
        plan: WritePlan,
        result: Result<(), WriteFailure>,
    ) {
        let buffer_len = plan.buffer_len as u64;
        let stopping = self.inner.borrow().stopping;
        let succeeded = self.apply_segment_write(&name, id, base, plan, result, stopping);
        if succeeded {
            self.start_sync_if_due(&name, base, stopping);
            let mut inner = self.inner.borrow_mut();
            inner.stats.writes += 1;
            inner.stats.written_bytes += buffer_len;
            if self.has_more_to_flush(&inner, &name, stopping) {
                inner.dirty.insert(name);
            }
        }
        // Always: a stopping flusher waits for the writes in flight. A stalled partition is
        // retried by the flusher's timer, not at once (it is not marked dirty).
        self.wake_flusher();
    }

    /// The bookkeeping half of `complete_segment_write`; true when the write counts.
    fn apply_segment_write(
        &self,
        name: &TopicPartition,
        id: PartitionId,
        base: i64,
        mut plan: WritePlan,
        result: Result<(), WriteFailure>,
        stopping: bool,
    ) -> bool {
        let now = now_ms();
        let mut inner = self.inner.borrow_mut();
        inner.writes_in_flight -= 1;
        // A partition deleted (or deleted and created again) since: nothing to apply.
        let Some((_, partition)) = inner.partitions.get_mut(name).filter(|(current, _)| *current == id) else {
            return false;
        };
        let Some(segment) = partition.segments.get_mut(&base) else { return false };
        let (done, succeeded) = match result {
            Ok(()) => (segment.complete_write(plan), true),
            Err(failure) => {
                segment.abandon_write();
                match failure {
                    WriteFailure::Io(failure) if failure.is_retryable_write() && !stopping => {
                        partition.stall(&failure, now, STALL_RETRY_MS);
                    }
                    WriteFailure::Io(failure) => partition.fail(&failure),
                    // The earlier write's failure already counted.
                    WriteFailure::AfterFailedWrite => {}
                }
                (plan.order.done.take(), false)
            }
        };
        if succeeded {
            if partition.failed.is_none() {
                partition.resume(now);
            }
            partition.complete_waiters();
        }
        // Told only now that the write is applied: the next one's completion comes after.
        if let Some(done) = done {
            let _ = done.send(succeeded);
        }
        evict_cache(&mut inner);
        succeeded
    }

    /// Starts one fdatasync of a segment file when the policy (or a seal, or the stop) asks
    /// for it and none is running. It runs beside the next waves' writes: a sync covers what
    /// was written before it started, and rewriting the tail block during it leaves the
    /// synced prefix intact.
    fn start_sync_if_due(self: &Rc<Self>, name: &TopicPartition, base: i64, stopping: bool) {
        let now = now_ms();
        let started = {
            let mut inner = self.inner.borrow_mut();
            let Some((id, partition)) = inner.partitions.get_mut(name) else { return };
            if partition.failed.is_some() {
                return;
            }
            let cover = partition.journal_cover();
            let (policy, last_sync_ms, dir) = (partition.config.flush, partition.last_sync_ms, partition.dir.clone());
            let Some(segment) = partition.segments.get_mut(&base) else { return };
            let due = match policy {
                FlushPolicy::Always => cover.is_none_or(|end| segment.written_next_offset > end),
                FlushPolicy::IntervalMs(ms) => now - last_sync_ms >= ms as i64,
                FlushPolicy::None => false,
            };
            let start = segment.needs_sync() && !segment.sync_in_flight && (due || segment.sealed || stopping);
            segment.sync_in_flight |= start;
            let id = *id;
            if start {
                inner.syncs_in_flight += 1;
            }
            start.then_some((id, dir))
        };
        if let Some((id, dir)) = started {
            let (this, name) = (Rc::clone(self), name.clone());
            glommio::spawn_local(async move { this.sync_segment(name, id, base, dir).await }).detach();
        }
    }

    /// Runs `f` on a segment of the partition `name` is now, if it is still the one with `id`.
    fn with_segment_of<T>(
        &self,
        name: &TopicPartition,
        id: PartitionId,
        base: i64,
        f: impl FnOnce(&mut Partition, &mut Segment) -> T,
    ) -> Option<T> {
        if self.inner.borrow().partitions.get(name).is_none_or(|(current, _)| *current != id) {
            return None;
        }
        self.with_segment(name, base, f)
    }

    fn with_segment<T>(
        &self,
        name: &TopicPartition,
        base: i64,
        f: impl FnOnce(&mut Partition, &mut Segment) -> T,
    ) -> Option<T> {
        let mut inner = self.inner.borrow_mut();
        let (_, partition) = inner.partitions.get_mut(name)?;
        let mut segment = partition.segments.remove(&base)?;
        let out = f(partition, &mut segment);
        partition.segments.insert(base, segment);
        Some(out)
    }

    async fn flush_partition_inner(self: &Rc<Self>, name: &TopicPartition, stopping: bool) -> Result<(), IoFailure> {
        let shape = self.config.write_shape;
        let (id, dir, bases, preallocate_bytes) = {
            let inner = self.inner.borrow();
            let Some((id, partition)) = inner.partitions.get(name) else {
                return Ok(());
            };
            if partition.failed.is_some() {
                return Ok(());
            }
            let bases: Vec<i64> = partition
                .segments
                .values()
                .filter(|s| s.has_pending() || s.needs_sync() || s.ready_to_finalize())
                .map(|s| s.base_offset)
                .collect();
            (*id, partition.dir.clone(), bases, partition.config.preallocate_bytes)
        };
        for base in bases {
            // 1. The file exists and its directory entry is durable before any data counts.
            let missing = self.with_segment(name, base, |_, s| s.file.is_none().then(|| s.path.clone())).flatten();
            if let Some(path) = missing {
                if let Some(Fault::Errno(errno)) = crate::faults::hit(self.faults(), IoOperation::Create).await {
                    return Err(IoFailure::new("open", &path, errno_error(errno)));
                }
                let file = segment::open_segment_file(&path, true).await?;
                let reader = segment::open_splice_reader(&path)?;
                partition::sync_dir(&dir).await?;
                self.with_segment(name, base, |_, s| {
                    s.file = Some(file);
                    s.splice_reader = Some(reader);
                });
            }
            // 2. One aligned write of everything not yet in a write (tail block rewritten),
            //    unless it may wait behind the journal for more. It runs beside the next
            //    waves (see `spawn_segment_write`).
            let deferred = {
                let inner = self.inner.borrow();
                let write_through = inner.writes_through(name, stopping);
                let write_behind_bytes = shape.chunk_bytes;
                inner.partitions.get(name).is_some_and(|(_, p)| {
                    !write_through
                        && p.segments.get(&base).is_some_and(|s| p.segment_write_deferrable(s, write_behind_bytes))
                })
            };
            let plan = if deferred {
                None
            } else {
                self.with_segment(name, base, |_, s| {
                    let alignment = s.file.as_ref().map(|f| f.alignment())?;
                    s.take_write_plan(alignment, preallocate_bytes, &shape, &self.chunk_pool)
                })
                .flatten()
            };
            if let Some(plan) = plan {
                self.spawn_segment_write(name.clone(), id, base, plan);
            }
            // 3. One fdatasync per file, when the policy (or a seal, or the stop) asks for it.
            self.start_sync_if_due(name, base, stopping);
            // 4. A sealed segment, now complete on disk, gets its exact size and indexes.
            //    The producer-state snapshot goes first: a segment start-up trusts without
            //    scanning must be covered by it.
            let finalize = self
                .with_segment(name, base, |p, s| {
                    s.ready_to_finalize().then(|| (s.file.clone(), s.index.clone(), p.producer_snapshot()))
                })
                .flatten();
            if let Some((Some(file), index, (snapshot_path, snapshot))) = finalize {
                segment::write_small_file(&snapshot_path, snapshot).await?;
                segment::finalize(&dir, &file, &segment::log_path(&dir, base), &index).await?;
                self.with_segment(name, base, |_, s| s.finalized = true);
            }
        }
        Ok(())
    }
}

/// The shard journal: records of `flush = always` batches, checkpoints.
impl ShardLog {
    /// Whether a partition with this config puts its batches in the journal.
    fn journals(&self, config: &LogConfig) -> bool {
        config.flush == FlushPolicy::Always && self.journal.as_ref().is_some_and(|j| !j.broken.get())
    }

    /// Moves the queued batches of the wave's journaled partitions into one record (up to
    /// `JOURNAL_RECORD_BYTES_MAX`), after the tombstones of partitions deleted since the last
    /// one, and reserves its place in the ring. With no room until a checkpoint, those
    /// partitions restart their journal runs: their batches are synced in their own segment
    /// files meanwhile (tombstones have a reserved room of their own).
    fn take_journal_record(&self, wave: &BTreeSet<TopicPartition>) -> Option<JournalRecord> {
        let journal = self.journal.as_ref().filter(|j| !j.broken.get())?;
        let mut inner = self.inner.borrow_mut();
        let mut ring = journal.ring.borrow_mut();
        let budget = (ring.ring_bytes / 4).min(JOURNAL_RECORD_BYTES_MAX);
        let tombstones = std::mem::take(&mut inner.journal_tombstones);
        let mut entries: Vec<JournalEntry> =
            tombstones.iter().map(|(name, _)| JournalEntry::tombstone(name.clone())).collect();
        let tombstones_len: u64 = entries.iter().map(|e| e.encoded_len() as u64).sum();
        let mut taken: Vec<(TopicPartition, usize)> = Vec::new();
        let mut bypass: Vec<TopicPartition> = Vec::new();
        let bypass_bytes = self.config.write_shape.chunk_bytes / 8;
        let mut len = journal::RECORD_HEADER_BYTES as u64 + tombstones_len;
        'partitions: for name in wave {
            let Some((_, p)) = inner.partitions.get(name) else { continue };
            if !p.journal.enabled || p.failed.is_some() || p.journal.queue.is_empty() {
                continue;
            }
            // A partition bringing this much to one wave syncs its own segment file: one sync
            // amortised over that many bytes costs less than writing them twice.
            if p.journal.queue_bytes >= bypass_bytes {
                bypass.push(name.clone());
                continue;
            }
            let mut count = 0;
            for (batch, segment_base) in &p.journal.queue {
                let entry = JournalEntry { partition: name.clone(), segment_base: *segment_base, batch: batch.clone() };
                let entry_len = entry.encoded_len() as u64;
                if !entries.is_empty() && len + entry_len > budget {
                    if count > 0 {
                        taken.push((name.clone(), count));
                    }
                    break 'partitions;
                }
                len += entry_len;
                entries.push(entry);
                count += 1;
            }
            taken.push((name.clone(), count));
        }
        for name in bypass {
            if let Some((_, p)) = inner.partitions.get_mut(&name) {
                p.restart_journal_run(true);
            }
        }
        let data_room = |ring: &JournalRing, padded: u64| {
            ring.reserve(padded + JOURNAL_TOMBSTONE_ROOM_BYTES).map(|_| ()).and(ring.reserve(padded))
        };
        let mut padded = journal::padded_len(len as usize);
        if !taken.is_empty() && data_room(&ring, padded).is_none() {
            for (name, _) in taken.drain(..) {
                if let Some((_, p)) = inner.partitions.get_mut(&name) {
                    p.restart_journal_run(true);
                }
            }
            entries.truncate(tombstones.len());
            len = journal::RECORD_HEADER_BYTES as u64 + tombstones_len;
            padded = journal::padded_len(len as usize);
        }
        if entries.is_empty() {
            return None;
        }
        let Some(start) = ring.reserve(padded) else {
            for (name, tx) in tombstones {
                let cause = "the shard journal is full (a stalled or offline partition holds its checkpoints back)";
                let _ = tx.send(Err(StorageError::Offline { partition: name.to_string(), cause: cause.to_string() }));
            }
            return None;
        };
        let mut claims = Vec::with_capacity(taken.len());
        for (name, count) in taken {
            let Some((_, p)) = inner.partitions.get_mut(&name) else { continue };
            let mut next_offset = p.journal.claimed_end;
            for (batch, _) in p.journal.queue.drain(..count) {
                let header = batch::parse_stored_header(&batch);
                let header = header.unwrap_or_else(|| panic!("journal queue of {name} holds a batch without a header"));
                assert_eq!(header.base_offset, next_offset, "journal queue of {name} out of step");
                next_offset = header.next_offset();
                p.journal.queue_bytes -= batch.len();
            }
            p.journal.claimed_end = next_offset;
            p.journal.claimed_any = true;
            claims.push((name, p.journal.generation, next_offset));
        }
        let sequence = ring.next_sequence;
        ring.advance(start, padded);
        inner.journal_writes_in_flight += 1;
        let tombstones = tombstones.into_iter().map(|(_, tx)| tx).collect();
        Some(JournalRecord { start, padded, sequence, entries, claims, tombstones })
    }

    /// Writes and syncs a journal record, then completes the appends it made durable. A
    /// failure retires the journal until restart: every partition syncs its own segments.
    async fn write_journal_record(&self, record: JournalRecord) {
        let Some(journal) = self.journal.as_ref() else { return };
        let started = std::time::Instant::now();
        let offset = journal.ring.borrow().file_offset(record.start);
        let result = async {
            let mut buffer = journal.file.alloc_dma_buffer(record.padded as usize);
            journal::encode_record(record.sequence, &record.entries, buffer.as_bytes_mut());
            if let Some(Fault::Errno(errno)) = crate::faults::hit(self.faults(), IoOperation::Journal).await {
                return Err(IoFailure::new("write", &journal.path, errno_error(errno)));
            }
            let written =
                journal.file.write_at(buffer, offset).await.map_err(|e| IoFailure::new("write", &journal.path, e))?;
            if written as u64 != record.padded {
                let message = format!("short write at {offset}: {written} of {} bytes", record.padded);
                return Err(IoFailure::incomplete("write", &journal.path, message));
            }
            use std::os::fd::AsRawFd;
            let fd = journal.file.as_raw_fd();
            self.side_ring.fdatasync(fd).await.map_err(|e| IoFailure::new("fdatasync", &journal.path, e))
        }
        .await;
        let mut inner = self.inner.borrow_mut();
        inner.journal_writes_in_flight -= 1;
        match result {
            Ok(()) => {
                inner.stats.journal_records += 1;
                inner.stats.journal_bytes += record.padded;
                inner.stats.syncs += 1;
                inner.histograms.sync_seconds.observe_duration(started.elapsed());
                for tx in record.tombstones {
                    let _ = tx.send(Ok(()));
                }
                for (name, generation, next_offset) in record.claims {
                    if let Some((_, p)) = inner.partitions.get_mut(&name)
                        && p.journal.generation == generation
                    {
                        p.journal.durable_end = p.journal.durable_end.max(next_offset);
                        p.complete_waiters();
                    }
                }
                evict_cache(&mut inner);
            }
            Err(failure) => {
                tracing::error!(error = %failure, "shard journal failed: partitions sync their own segment files until restart");
                journal.broken.set(true);
                for tx in record.tombstones {
                    let _ = tx.send(Err(StorageError::Io(failure.clone())));
                }
                inner.stats.sync_errors += 1;
                let Inner { partitions, dirty, .. } = &mut *inner;
                for (name, (_, p)) in partitions.iter_mut() {
                    if p.journal.enabled {
                        p.restart_journal_run(false);
                        dirty.insert(name.clone());
                    }
                }
                drop(inner);
                self.wake_flusher();
            }
        }
    }

    /// Starts a checkpoint in the background once half of the ring is in use.
    fn start_checkpoint_if_due(self: &Rc<Self>) {
        let Some(journal) = self.journal.as_ref() else { return };
        let due = {
            let ring = journal.ring.borrow();
            ring.used_bytes() > ring.ring_bytes / 2
        };
        let now = now_ms();
        let backing_off = journal.checkpoint_failed_ms.get().is_some_and(|at| now - at < STALL_RETRY_MS);
        if due && !backing_off && !journal.checkpointing.get() && !journal.broken.get() {
            let this = Rc::clone(self);
            glommio::spawn_local(async move {
                let _running = Running::new(&this.inner);
                let result = this.checkpoint().await;
                let Some(journal) = this.journal.as_ref() else { return };
                match result {
                    Ok(()) => journal.checkpoint_failed_ms.set(None),
                    Err(error) => {
                        if journal.checkpoint_failed_ms.get().is_none() {
                            tracing::warn!(%error, "journal checkpoint held back; partitions sync their own segments when the journal is full");
                        }
                        journal.checkpoint_failed_ms.set(Some(now_ms()));
                    }
                }
            })
            .detach();
        }
    }

    /// Puts every journal record so far behind the journal's start: waits until each batch
    /// they hold is written to its segment file, syncs every segment file with unsynced
    /// bytes, then writes and syncs the header. One checkpoint runs at a time; a call while
    /// one runs waits for it, then runs its own (its caller needs the records up to now).
    async fn checkpoint(&self) -> Result<(), StorageError> {
        let Some(journal) = self.journal.as_ref() else { return Ok(()) };
        journal.take_checkpoint_turn().await;
        let result = self.checkpoint_inner(journal).await;
        journal.checkpointing.set(false);
        self.wake_flusher();
        result
    }

    async fn checkpoint_inner(&self, journal: &ShardJournal) -> Result<(), StorageError> {
        if journal.broken.get() {
            return Ok(());
        }
        let target = journal.ring.borrow().checkpoint_at_head();
        // Only partitions with batches in records (a partition recreated under the same name
        // since is another partition: the id tells them apart).
        let needs: Vec<(TopicPartition, PartitionId, i64)> = {
            let inner = self.inner.borrow();
            inner
                .partitions
                .iter()
                .filter(|(_, (_, p))| p.journal.claimed_any)
                .map(|(name, (id, p))| (name.clone(), *id, p.journal.claimed_end))
                .collect()
        };
        // 1. Every batch claimed by a record so far is written to its segment file (writes
        //    deferred behind the journal go out now).
        self.inner.borrow_mut().write_through += 1;
        let written = self.wait_written(&needs).await;
        self.inner.borrow_mut().write_through -= 1;
        written?;
        self.sync_segments_for_checkpoint(journal, target, &needs).await
    }

    async fn wait_written(&self, needs: &[(TopicPartition, PartitionId, i64)]) -> Result<(), StorageError> {
        loop {
            let behind: Vec<TopicPartition> = {
                let inner = self.inner.borrow();
                let mut behind = Vec::new();
                for (name, id, need) in needs {
                    let Some((_, p)) = inner.partitions.get(name).filter(|(current, _)| current == id) else {
                        continue;
                    };
                    if let Some(error) = p.offline_error().or_else(|| p.stalled_error()) {
                        return Err(error);
                    }
                    if p.written_end_offset() < *need {
                        behind.push(name.clone());
                    }
                }
                behind
            };
            if behind.is_empty() {
                return Ok(());
            }
            self.inner.borrow_mut().dirty.extend(behind);
            self.wake_flusher();
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn sync_segments_for_checkpoint(
        &self,
        journal: &ShardJournal,
        target: journal::Checkpoint,
        needs: &[(TopicPartition, PartitionId, i64)],
    ) -> Result<(), StorageError> {
        // 2. Every segment file with unsynced bytes is synced.
        type SyncTarget = (TopicPartition, PartitionId, i64, Rc<DmaFile>, PathBuf, u64, i64);
        let targets: Vec<SyncTarget> = {
            let inner = self.inner.borrow();
            needs
                .iter()
                .filter_map(|(name, id, _)| inner.partitions.get(name).filter(|(current, _)| current == id))
                .flat_map(|(id, p)| {
                    p.segments.values().filter(|s| s.needs_sync()).filter_map(|s| {
                        let file = s.file.clone()?;
                        Some((
                            p.name.clone(),
                            *id,
                            s.base_offset,
                            file,
                            s.path.clone(),
                            s.written_bytes,
                            s.written_next_offset,
                        ))
                    })
                })
                .collect()
        };
        let syncs = targets.iter().map(|(_, _, _, file, path, _, _)| async move {
            use std::os::fd::AsRawFd;
            let started = std::time::Instant::now();
            if let Some(Fault::Errno(errno)) = crate::faults::hit(self.faults(), IoOperation::Sync).await {
                return Err(IoFailure::new("fdatasync", path, errno_error(errno)));
            }
            let result = self.side_ring.fdatasync(file.as_raw_fd()).await;
            result.map(|()| started.elapsed()).map_err(|e| IoFailure::new("fdatasync", path, e))
        });
        let results = futures_util::future::join_all(syncs).await;
        let mut failed = None;
        for ((name, id, base, _, _, bytes, next), result) in targets.into_iter().zip(results) {
            let same_partition = self.inner.borrow().partitions.get(&name).is_some_and(|(current, _)| *current == id);
            if !same_partition {
                continue;
            }
            match result {
                Ok(elapsed) => {
                    self.with_segment(&name, base, |_, s| s.complete_sync(bytes, next));
                    let mut inner = self.inner.borrow_mut();
                    inner.stats.syncs += 1;
                    inner.histograms.sync_seconds.observe_duration(elapsed);
                }
                Err(failure) => {
                    if let Some((_, p)) = self.inner.borrow_mut().partitions.get_mut(&name) {
                        p.fail(&failure);
                    }
                    failed = Some(failure);
                }
            }
        }
        {
            let mut inner = self.inner.borrow_mut();
            for (_, partition) in inner.partitions.values_mut() {
                partition.complete_waiters();
            }
        }
        if let Some(failure) = failed {
            return Err(failure.into());
        }
        // 3. The header: records before the head are no longer needed.
        self.write_checkpoint(journal, target).await
    }

    /// Writes and syncs a journal header, making `target` the journal's start.
    async fn write_checkpoint(&self, journal: &ShardJournal, target: journal::Checkpoint) -> Result<(), StorageError> {
        let mut slot = journal.file.alloc_dma_buffer(journal::HEADER_SLOT_BYTES as usize);
        slot.as_bytes_mut().fill(0);
        let encoded = target.encode();
        slot.as_bytes_mut()[..encoded.len()].copy_from_slice(&encoded);
        let failed = |e| IoFailure::new("write header", &journal.path, e);
        let written = journal.file.write_at(slot, target.slot_offset()).await.map_err(failed)?;
        if written as u64 != journal::HEADER_SLOT_BYTES {
            let message = format!("short header write: {written} bytes");
            return Err(IoFailure::incomplete("write header", &journal.path, message).into());
        }
        use std::os::fd::AsRawFd;
        let fd = journal.file.as_raw_fd();
        self.side_ring.fdatasync(fd).await.map_err(|e| IoFailure::new("fdatasync", &journal.path, e))?;
        journal.ring.borrow_mut().checkpoint = target;
        self.inner.borrow_mut().stats.journal_checkpoints += 1;
        Ok(())
    }

    /// At a clean stop, with every segment synced: the journal starts empty next time.
    async fn write_checkpoint_at_head(&self) -> Result<(), StorageError> {
        let Some(journal) = self.journal.as_ref().filter(|j| !j.broken.get()) else { return Ok(()) };
        journal.take_checkpoint_turn().await;
        let target = journal.ring.borrow().checkpoint_at_head();
        let result = self.write_checkpoint(journal, target).await;
        journal.checkpointing.set(false);
        result
    }
}

/// Replays the shard's journal into the segment files (what a crash left unsynced there),
/// then opens it for writing, creating it on first start.
async fn open_journal(data_dir: &Path, shard: usize, ring_bytes: u64) -> Result<ShardJournal, StorageError> {
    let path = journal::journal_path(data_dir, shard);
    let (dir, owned) = (data_dir.to_path_buf(), path.clone());
    let opened = glommio::executor()
        .spawn_blocking(move || {
            let report = journal::replay(&dir, &owned)?;
            let (_, checkpoint) = journal::open_or_create(&owned, ring_bytes)?;
            Ok::<_, std::io::Error>((report, checkpoint))
        })
        .await;
    let (report, checkpoint) = opened.map_err(|e| IoFailure::new("replay journal", &path, e))?;
    if report.batches_restored > 0 {
        tracing::info!(
            journal = %path.display(),
            records = report.records,
            batches_restored = report.batches_restored,
            bytes_restored = report.bytes_restored,
            "journal replayed into segment files"
        );
    }
    let file = glommio::io::OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(&path)
        .await
        .map_err(|e| IoFailure::new("open", &path, e))?;
    Ok(ShardJournal {
        file: Rc::new(file),
        path,
        ring: RefCell::new(JournalRing::empty(checkpoint)),
        checkpointing: Cell::new(false),
        checkpoint_failed_ms: Cell::new(None),
        broken: Cell::new(false),
    })
}

impl ShardLog {
    /// One fdatasync of a segment file; then completes the appends it made durable and hands
    /// what is left (more written bytes, a seal to finalize) back to the flusher.
    async fn sync_segment(self: Rc<Self>, name: TopicPartition, id: PartitionId, base: i64, dir: PathBuf) {
        let captured = self
            .with_segment_of(&name, id, base, |_, s| (s.file.clone(), s.written_bytes, s.written_next_offset))
            .and_then(|(file, bytes, next)| file.map(|f| (f, bytes, next)));
        let started = std::time::Instant::now();
        let result = match &captured {
            Some((file, _, _)) => {
                use std::os::fd::AsRawFd;
                let failed = |error| IoFailure::new("fdatasync", &segment::log_path(&dir, base), error);
                match crate::faults::hit(self.faults(), IoOperation::Sync).await {
                    Some(Fault::Errno(errno)) => Err(failed(errno_error(errno))),
                    _ => self.side_ring.fdatasync(file.as_raw_fd()).await.map_err(failed),
                }
            }
            None => Ok(()),
        };
        let now = now_ms();
        let mut follow_up = false;
        self.with_segment_of(&name, id, base, |p, s| {
            s.sync_in_flight = false;
            match &result {
                Ok(()) => {
                    if let Some((_, bytes, next)) = captured {
                        s.complete_sync(bytes, next);
                        p.last_sync_ms = now;
                    }
                }
                Err(failure) => p.fail(failure),
            }
            follow_up = s.needs_sync() || s.ready_to_finalize();
        });
        let mut inner = self.inner.borrow_mut();
        inner.syncs_in_flight -= 1;
        if captured.is_some() {
            match result {
                Ok(()) => {
                    inner.stats.syncs += 1;
                    inner.histograms.sync_seconds.observe_duration(started.elapsed());
                }
                Err(_) => inner.stats.sync_errors += 1,
            }
        }
        if let Some((_, partition)) = inner.partitions.get_mut(&name) {
            partition.complete_waiters();
        }
        evict_cache(&mut inner);
        if follow_up {
            inner.dirty.insert(name);
        }
        drop(inner);
        self.wake_flusher();
    }
}

/// The shard's segment writes deferred behind the journal are bounded in total (by this many
/// write chunks): past it, the partitions with the most pending go out in the next wave, until
/// half the bound is left. It bounds the memory they hold and the burst a checkpoint writes.
const WRITE_BEHIND_CHUNKS_MAX: usize = 8;

/// The partitions whose deferred segment writes must go out now (see
/// `WRITE_BEHIND_CHUNKS_MAX`), largest first.
fn deferred_over_bound(inner: &Inner, chunk_bytes: usize) -> BTreeSet<TopicPartition> {
    let mut deferred: Vec<(usize, &TopicPartition)> = inner
        .partitions
        .iter()
        .filter(|(_, (_, p))| p.journal_cover().is_some() && p.failed.is_none())
        .map(|(name, (_, p))| (p.segments.values().map(Segment::pending_bytes).sum::<usize>(), name))
        .filter(|(bytes, _)| *bytes > 0)
        .collect();
    let mut total: usize = deferred.iter().map(|(bytes, _)| bytes).sum();
    let bound = chunk_bytes * WRITE_BEHIND_CHUNKS_MAX;
    let mut forced = BTreeSet::new();
    if total <= bound {
        return forced;
    }
    deferred.sort_unstable_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    for (bytes, name) in deferred {
        if total <= bound / 2 {
            break;
        }
        total -= bytes;
        forced.insert(name.clone());
    }
    forced
}

/// Brings the cache back within its budget, evicting only what the segment files can serve
/// (after every wave, and whenever a sync moves high watermarks).
fn evict_cache(inner: &mut Inner) {
    let Inner { partitions, ids, cache, .. } = inner;
    // Computed once per partition and pass (it walks the partition's segments).
    let mut readable_ends: HashMap<PartitionId, Option<i64>> = HashMap::new();
    cache.evict(|id, base| {
        let end = *readable_ends.entry(id).or_insert_with(|| {
            ids.get(&id).and_then(|name| partitions.get(name)).map(|(_, p)| p.readable_end_offset())
        });
        end.is_none_or(|end| base < end)
    });
}

fn validate_config(config: &LogConfig) -> Result<(), StorageError> {
    let invalid = |what: &str| Err(StorageError::InvalidConfig(what.to_string()));
    if config.segment_bytes < 14 || config.segment_bytes > i32::MAX as u64 {
        return invalid("segment.bytes must be between 14 and 2147483647");
    }
    if config.max_message_bytes as u64 > config.segment_bytes.max(1 << 20) * 2 {
        return invalid("max.message.bytes is far larger than segment.bytes");
    }
    if config.segment_ms == 0 {
        return invalid("segment.ms must be positive");
    }
    Ok(())
}

/// The first record of a stored batch matching `wanted`. A batch whose records cannot be
/// read (the broker does not decompress at produce time, so a client's bad payload is only
/// found here) answers at batch level: its base offset and max timestamp.
fn pick_record(name: &TopicPartition, bytes: &[u8], wanted: impl Fn(&RecordStamp) -> bool) -> Option<RecordStamp> {
    let header = batch::parse_stored_header(bytes)?;
    match records::record_stamps(bytes) {
        Ok(stamps) => stamps.into_iter().find(wanted),
        Err(error) => {
            tracing::warn!(partition = %name, offset = header.base_offset, %error, "records unreadable; answering per batch");
            Some(RecordStamp { offset: header.base_offset, timestamp: header.max_timestamp })
        }
    }
}

const HEADER_WINDOW_BYTES: usize = 16 << 10;

/// Walks batch headers from the plan's scan position to the first batch matching `wanted`.
/// Returns its position and size.
async fn locate_batch(
    plan: &FileReadPlan,
    wanted: impl Fn(&batch::BatchHeader) -> bool,
) -> Result<Option<(u64, u64)>, IoFailure> {
    let mut position = plan.scan_from;
    while position < plan.bound_bytes {
        let window_len = HEADER_WINDOW_BYTES.min((plan.bound_bytes - position) as usize);
        let window = segment::read_range(&plan.file, &plan.path, position, window_len).await?;
        let mut at = 0usize;
        while at + batch::BATCH_HEADER_BYTES <= window.len() {
            let Some(header) = batch::parse_stored_header(&window[at..]) else {
                let message = format!("bad batch header at {}", position + at as u64);
                return Err(IoFailure {
                    operation: "read",
                    path: plan.path.clone(),
                    message,
                    os_error: None,
                    incomplete: false,
                });
            };
            if wanted(&header) {
                return Ok(Some((position + at as u64, header.size_bytes as u64)));
            }
            at += header.size_bytes;
        }
        if at == 0 && window.len() < batch::BATCH_HEADER_BYTES {
            break;
        }
        position += at as u64;
    }
    Ok(None)
}
