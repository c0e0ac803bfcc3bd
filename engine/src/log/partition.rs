//! The log of one partition: its segments, offsets, durability waiters and recovery.
//!
//! Owner: the shard that owns the partition; every method runs on that shard. Appends and
//! read planning are synchronous state changes; the shard's flusher does the writes and syncs
//! (see `shard_log`), so no `RefCell` borrow is ever held across an await.
//!
//! Offsets: `log_start_offset ≤ durable_end_offset ≤ log_end_offset`. Under `flush = always`
//! the durable end is what consumers may see (the high watermark of a single replica); under
//! the other policies the log end is.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::io::DmaFile;

use crate::batch::BatchHeader;
use crate::error::{IoFailure, StorageError};
use crate::log::config::{FlushPolicy, LogConfig};
use crate::log::index::SegmentIndex;
use crate::log::producer::ProducerStates;
use crate::log::segment::{self, ProducerReplay, ScanExpectations, ScanStop, Segment};
use crate::records::RecordStamp;

/// The highest partition leader epoch a batch in the log may carry. Every batch is stamped with
/// epoch 0 until replication brings leader changes (it will keep an epoch checkpoint and pass
/// its latest epoch here); recovery refuses anything else, because the CRC does not cover the
/// epoch and a damaged one would reach consumers (KIP-320 truncation checks).
const LEADER_EPOCH_MAX: i32 = 0;

/// A topic partition; its directory under the data dir is `{topic}-{partition}`, as in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self { topic: topic.into(), partition }
    }

    /// Parses a partition directory name (`my-topic-3` → topic `my-topic`, partition 3).
    pub fn from_dir_name(name: &str) -> Option<Self> {
        let (topic, partition) = name.rsplit_once('-')?;
        let partition: i32 = partition.parse().ok()?;
        (!topic.is_empty() && partition >= 0 && !partition_is_padded(name)).then(|| Self::new(topic, partition))
    }
}

fn partition_is_padded(name: &str) -> bool {
    name.rsplit_once('-').is_some_and(|(_, p)| p.len() > 1 && p.starts_with('0'))
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// The offsets of a partition, as Kafka reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start_offset: i64,
    /// Offsets below this are visible to consumers (durable under `flush = always`).
    pub high_watermark: i64,
    pub log_end_offset: i64,
    pub durable_end_offset: i64,
}

const LOG_START_CHECKPOINT: &str = "log-start-offset";
/// The idempotent-producer state snapshot (format in `producer.rs`).
pub(crate) const PRODUCER_STATE: &str = "producer-state";

/// What start-up recovery found and did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments_trusted: usize,
    pub segments_scanned: usize,
    pub bytes_truncated: u64,
    pub segments_dropped: usize,
    pub stop: Option<ScanStop>,
}

pub(crate) struct Partition {
    pub name: TopicPartition,
    pub dir: PathBuf,
    pub config: LogConfig,
    pub segments: BTreeMap<i64, Segment>,
    /// Idempotent-producer state (sequences and offsets of recent batches per producer).
    pub producers: ProducerStates,
    pub log_start_offset: i64,
    pub leader_epoch: i32,
    /// Appends waiting for durability: (offset that must become durable, completion).
    waiters: VecDeque<(i64, oneshot::Sender<Result<(), StorageError>>)>,
    /// Long-poll fetches waiting for the high watermark to pass an offset. Woken whenever it
    /// moves; abandoned ones are dropped then and at each new registration.
    readers: Vec<(i64, oneshot::Sender<()>)>,
    pub failed: Option<String>,
    /// Writes held back for lack of space (retried by the flusher; appends refused meanwhile).
    pub stalled: Option<Stalled>,
    pub last_sync_ms: i64,
    pub checkpoint_generation: u64,
    /// Batches appended since this partition was opened (not those recovered): bytes and
    /// records, for the per-topic throughput metrics.
    pub appended_bytes: u64,
    pub appended_records: u64,
    /// The partition's part in the shard journal (`flush = always` with a journal only).
    pub journal: JournalRun,
}

/// Which offsets of a partition the shard journal covers. Batches join `queue` as they are
/// appended; a wave moves them into a journal record (`claimed_end`), and the record's sync
/// makes them durable (`durable_end`). The run covers `[start, durable_end)` and counts only
/// once everything before `start` is durable in the segment files: a run restarts (after a
/// policy change, or when the journal has no room) at the log end, leaving what came before
/// to the segment files' own syncs.
#[derive(Debug, Default)]
pub(crate) struct JournalRun {
    pub enabled: bool,
    pub queue: VecDeque<(Bytes, i64)>,
    pub queue_bytes: usize,
    pub start: i64,
    pub claimed_end: i64,
    pub durable_end: i64,
    /// Bumped at every restart, so that a record synced after one does not count.
    pub generation: u64,
    /// The durable end before the last restart (durability never goes back).
    pub floor: i64,
    /// Some record claimed batches of this partition (so checkpoints must cover it).
    pub claimed_any: bool,
}

impl JournalRun {
    /// A fresh run from `log_end` (nothing queued).
    pub fn restart(&mut self, log_end: i64, durable_end: i64, enabled: bool) {
        self.enabled = enabled;
        self.queue.clear();
        self.queue_bytes = 0;
        self.start = log_end;
        self.claimed_end = log_end;
        self.durable_end = log_end;
        self.generation += 1;
        self.floor = self.floor.max(durable_end);
    }
}

/// Why and since when a partition's writes are held back, and when the flusher retries them.
#[derive(Debug, Clone)]
pub struct Stalled {
    pub cause: String,
    pub since_ms: i64,
    pub retry_at_ms: i64,
}

impl Partition {
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset()
    }

    pub fn active(&self) -> &Segment {
        match self.segments.values().next_back() {
            Some(segment) => segment,
            None => unreachable_no_segment(&self.name),
        }
    }

    fn active_mut(&mut self) -> &mut Segment {
        let name = self.name.clone();
        match self.segments.values_mut().next_back() {
            Some(segment) => segment,
            None => unreachable_no_segment(&name),
        }
    }

    /// One past the last offset covered by a completed `fdatasync`: of the segment files, or
    /// of the shard journal where its run is anchored on durable segment bytes.
    pub fn durable_end_offset(&self) -> i64 {
        let segments = self.segment_durable_end_offset();
        let journal = if self.journal.start <= segments { self.journal.durable_end } else { i64::MIN };
        segments.max(journal).max(self.journal.floor)
    }

    /// One past the last offset covered by a completed `fdatasync` of a segment file.
    pub fn segment_durable_end_offset(&self) -> i64 {
        self.segments
            .values()
            .find(|s| s.durable_next_offset < s.next_offset())
            .map_or_else(|| self.log_end_offset(), |s| s.durable_next_offset)
    }

    /// Starts a new journal run at the log end (see `JournalRun`): what came before is left to
    /// the segment files' own syncs.
    pub fn restart_journal_run(&mut self, enabled: bool) {
        let (log_end, durable_end) = (self.log_end_offset(), self.durable_end_offset());
        self.journal.restart(log_end, durable_end, enabled);
    }

    /// How far the journal covers this partition's batches (claimed by a record written or
    /// being written), when its run is anchored on durable segment bytes; None otherwise.
    /// A segment whose written bytes go past it needs its own fdatasync.
    pub fn journal_cover(&self) -> Option<i64> {
        (self.journal.enabled && self.journal.start <= self.segment_durable_end_offset())
            .then_some(self.journal.claimed_end)
    }

    /// Whether a segment write can wait: the journal covers the partition, and what is
    /// pending is less than `write_behind_bytes` (a deferred write goes out once it fills a
    /// chunk of the device's preferred size, at a roll, a checkpoint, a settle or the stop).
    pub fn segment_write_deferrable(&self, segment: &Segment, write_behind_bytes: usize) -> bool {
        self.journal_cover().is_some() && !segment.sealed && segment.pending_bytes() < write_behind_bytes
    }

    /// Whether the segment's written bytes are left to its own fdatasync (see `journal_cover`).
    pub fn segment_needs_own_sync(&self, segment: &Segment) -> bool {
        self.journal_cover().is_none_or(|end| segment.written_next_offset > end)
    }

    /// One past the last offset a read can take from the segment files now (written, and at a
    /// write boundary below the high watermark); the cache must keep the batches after it.
    pub fn readable_end_offset(&self) -> i64 {
        let high_watermark = self.high_watermark();
        self.segments
            .values()
            .map(|s| (s.readable_next_offset(high_watermark), s.next_offset()))
            .find(|(readable, next)| readable < next)
            .map_or_else(|| self.log_end_offset(), |(readable, _)| readable)
    }

    /// One past the last offset whose bytes reached the segment file.
    pub fn written_end_offset(&self) -> i64 {
        self.segments
            .values()
            .find(|s| s.written_next_offset < s.next_offset())
            .map_or_else(|| self.log_end_offset(), |s| s.written_next_offset)
    }

    /// Under `flush = always` the durable end: a batch the journal made durable may not be
    /// written to its segment yet (writes behind the journal), and is read from the cache,
    /// which keeps every unwritten batch.
    pub fn high_watermark(&self) -> i64 {
        match self.config.flush {
            FlushPolicy::Always => self.durable_end_offset(),
            FlushPolicy::IntervalMs(_) | FlushPolicy::None => self.log_end_offset(),
        }
    }

    pub fn offsets(&self) -> PartitionOffsets {
        PartitionOffsets {
            log_start_offset: self.log_start_offset,
            high_watermark: self.high_watermark(),
            log_end_offset: self.log_end_offset(),
            durable_end_offset: self.durable_end_offset(),
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(Segment::size_bytes).sum()
    }

    /// Seals the active segment and starts a new one when the batch would not fit, the
    /// segment is older than `segment.ms`, or relative offsets would overflow.
    pub fn roll_if_needed(&mut self, header: &BatchHeader, now_ms: i64) {
        let config = self.config.clone();
        let dir = self.dir.clone();
        let active = self.active_mut();
        if active.is_empty() {
            return;
        }
        let too_big = active.size_bytes() + header.size_bytes as u64 > config.segment_bytes;
        let too_old =
            active.first_append_ms.is_some_and(|first| now_ms.saturating_sub(first) >= config.segment_ms as i64);
        let overflow = header.last_offset() - active.base_offset > i64::from(i32::MAX);
        if too_big || too_old || overflow {
            active.sealed = true;
            let base = active.next_offset();
            self.segments.insert(base, Segment::new(&dir, base, config.index_interval_bytes));
        }
    }

    /// Records a stamped batch. Returns the waiter of its acknowledgement: after the covering
    /// fdatasync under `flush = always`, after the covering write otherwise.
    pub fn append(
        &mut self,
        header: &BatchHeader,
        bytes: Bytes,
        now_ms: i64,
    ) -> oneshot::Receiver<Result<(), StorageError>> {
        assert_eq!(header.base_offset, self.log_end_offset(), "batch not stamped at the log end");
        self.roll_if_needed(header, now_ms);
        if self.journal.enabled {
            self.journal.queue_bytes += bytes.len();
            self.journal.queue.push_back((bytes.clone(), self.active().base_offset));
        }
        self.active_mut().append(header, bytes, now_ms);
        let (tx, rx) = oneshot::channel();
        self.waiters.push_back((header.next_offset(), tx));
        if !self.config.flush.acknowledges_after_sync() {
            self.wake_readers();
        }
        rx
    }

    /// Resolves once the high watermark is beyond `offset` (at once if it already is), or the
    /// partition goes offline or away. The long poll of Fetch.
    pub fn wait_for_data_beyond(&mut self, offset: i64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if self.high_watermark() > offset || self.failed.is_some() {
            let _ = tx.send(());
        } else {
            self.readers.retain(|(_, reader)| !reader.is_canceled());
            self.readers.push((offset, tx));
        }
        rx
    }

    fn wake_readers(&mut self) {
        if self.readers.is_empty() {
            return;
        }
        let high_watermark = self.high_watermark();
        for (_, reader) in
            self.readers.extract_if(.., |(offset, reader)| *offset < high_watermark || reader.is_canceled())
        {
            let _ = reader.send(());
        }
    }

    /// A waiter that resolves once offsets below `next_offset` are acknowledged by the policy
    /// (for a duplicate batch, answered with its original offsets only when those are safe).
    pub fn wait_for(&mut self, next_offset: i64) -> oneshot::Receiver<Result<(), StorageError>> {
        let (tx, rx) = oneshot::channel();
        if next_offset <= self.acknowledged_end_offset() {
            let _ = tx.send(Ok(()));
            return rx;
        }
        // Waiters stay sorted by offset: completion stops at the first one not yet done.
        let at = self.waiters.partition_point(|(needed, _)| *needed <= next_offset);
        self.waiters.insert(at, (next_offset, tx));
        rx
    }

    /// One past the last offset the policy acknowledges (synced, or written).
    fn acknowledged_end_offset(&self) -> i64 {
        if self.config.flush.acknowledges_after_sync() { self.durable_end_offset() } else { self.written_end_offset() }
    }

    /// Writes the producer-state snapshot of everything durable now. Called before a segment
    /// gets its index files and at a clean stop, so a segment start-up trusts without scanning
    /// is always covered by the snapshot.
    pub fn producer_snapshot(&self) -> (PathBuf, Vec<u8>) {
        (self.dir.join(PRODUCER_STATE), self.producers.encode(self.durable_end_offset()))
    }

    pub fn waiters_len(&self) -> usize {
        self.waiters.len()
    }

    /// Completes every append now acknowledged by the policy (synced, or written).
    pub fn complete_waiters(&mut self) {
        let done = self.acknowledged_end_offset();
        while self.waiters.front().is_some_and(|(needed, _)| *needed <= done) {
            if let Some((_, tx)) = self.waiters.pop_front() {
                let _ = tx.send(Ok(()));
            }
        }
        self.wake_readers();
    }

    /// Holds writes back after a write failed for lack of space (see
    /// [`IoFailure::is_retryable_write`]): appends are refused, appends already made keep
    /// waiting (bounded by their callers' timeouts), and the flusher retries at `retry_at_ms`.
    pub fn stall(&mut self, cause: &IoFailure, now_ms: i64, retry_after_ms: i64) {
        let since_ms = match &self.stalled {
            Some(stalled) => stalled.since_ms,
            None => {
                tracing::warn!(partition = %self.name, error = %cause, "no room to write: appends refused until there is");
                now_ms
            }
        };
        self.stalled = Some(Stalled { cause: cause.to_string(), since_ms, retry_at_ms: now_ms + retry_after_ms });
    }

    /// A write went through: a stall, if any, is over.
    pub fn resume(&mut self, now_ms: i64) {
        if let Some(stalled) = self.stalled.take() {
            let stalled_ms = now_ms - stalled.since_ms;
            tracing::info!(partition = %self.name, stalled_ms, "writes resumed");
        }
    }

    pub fn stalled_error(&self) -> Option<StorageError> {
        self.stalled
            .as_ref()
            .map(|stalled| StorageError::NoSpace { partition: self.name.to_string(), cause: stalled.cause.clone() })
    }

    /// Takes the partition offline after a failed write or sync: waiting appends fail,
    /// later appends are refused, until a restart recovers the log from what is on disk.
    pub fn fail(&mut self, cause: &IoFailure) {
        tracing::error!(partition = %self.name, error = %cause, "storage failure: partition offline until restart");
        self.failed = Some(cause.to_string());
        for (_, tx) in self.waiters.drain(..) {
            let _ = tx.send(Err(StorageError::Offline { partition: self.name.to_string(), cause: cause.to_string() }));
        }
        self.release_readers();
    }

    /// Wakes every long poll (the partition is going offline or away, or the shard stops):
    /// each re-reads and gets the error or what there is.
    pub fn release_readers(&mut self) {
        for (_, reader) in self.readers.drain(..) {
            let _ = reader.send(());
        }
    }

    /// Fails every waiting append with `error` (the partition is being deleted).
    pub fn abandon(&mut self, error: &StorageError) {
        for (_, tx) in self.waiters.drain(..) {
            let _ = tx.send(Err(error.clone()));
        }
        self.release_readers();
    }

    pub fn offline_error(&self) -> Option<StorageError> {
        self.failed
            .as_ref()
            .map(|cause| StorageError::Offline { partition: self.name.to_string(), cause: cause.clone() })
    }

    pub fn has_unsynced(&self) -> bool {
        self.segments.values().any(|s| s.has_pending() || s.needs_sync() || s.ready_to_finalize())
    }

    /// Removes the segments retention lets go: whole finalized segments only, oldest first,
    /// never the active one. Moves the log start offset forward past them.
    pub fn take_expired_segments(&mut self, now_ms: i64) -> Vec<Segment> {
        let mut doomed = Vec::new();
        let mut total = self.size_bytes();
        while let Some(oldest) = self.segments.values().next() {
            if !oldest.finalized || self.segments.len() == 1 {
                break;
            }
            let summary = oldest.index.summary();
            let below_start = summary.next_offset <= self.log_start_offset;
            let too_old = self.config.retention_ms.is_some_and(|ms| {
                summary.max_timestamp >= 0 && now_ms.saturating_sub(summary.max_timestamp) > ms as i64
            });
            let too_big =
                self.config.retention_bytes.is_some_and(|limit| total.saturating_sub(summary.size_bytes) >= limit);
            if !(below_start || too_old || too_big) {
                break;
            }
            total -= summary.size_bytes;
            let base = oldest.base_offset;
            if let Some(segment) = self.segments.remove(&base) {
                doomed.push(segment);
            }
        }
        if let Some(first) = self.segments.values().next() {
            self.log_start_offset = self.log_start_offset.max(first.base_offset);
        }
        doomed
    }

    /// Where a read of `offset` must look in the files, when the cache could not serve it.
    pub fn plan_file_read(&self, offset: i64, high_watermark: i64) -> Option<FileReadPlan> {
        let (_, segment) = self.segments.range(..=offset).next_back()?;
        let file = segment.file.clone()?;
        let splice_reader = segment.splice_reader.clone()?;
        let bound_bytes = segment.readable_bytes(high_watermark);
        // The next write of an active segment rewrites its partial last block; the page cache
        // pages over that block must never reach a pipe (see `FileReadPlan::splice_bytes`).
        let splice_bytes = if segment.finalized {
            bound_bytes
        } else {
            bound_bytes.min(segment.written_bytes / page_bytes() * page_bytes())
        };
        let (_, position) = segment.index.lookup_offset(offset);
        (position < bound_bytes).then(|| FileReadPlan {
            file,
            splice_reader,
            path: segment.path.clone(),
            scan_from: position,
            bound_bytes,
            splice_bytes,
            offset,
        })
    }

    /// Where the record with the largest timestamp is: the segment summaries give the batch
    /// (the first segment holding the maximum, as Kafka picks); a batch not readable from its
    /// file yet is answered at batch level.
    pub fn plan_max_timestamp_lookup(&self) -> Option<MaxTimestampPlan> {
        let high_watermark = self.high_watermark();
        let mut best: Option<&Segment> = None;
        for segment in self.segments.values().filter(|s| s.base_offset < high_watermark && s.size_bytes() > 0) {
            if best.is_none_or(|b| segment.index.summary().max_timestamp > b.index.summary().max_timestamp) {
                best = Some(segment);
            }
        }
        let summary = best?.index.summary();
        let offset = summary.offset_of_max_timestamp.max(self.log_start_offset);
        let batch_level = RecordStamp { offset, timestamp: summary.max_timestamp };
        if offset >= high_watermark {
            // Not visible yet (written, not acknowledged): nothing to answer with.
            return None;
        }
        Some(match self.plan_file_read(offset, high_watermark) {
            Some(plan) => MaxTimestampPlan::Read(plan),
            None => MaxTimestampPlan::Batch(batch_level),
        })
    }

    /// Where a search for the first batch with max timestamp ≥ `timestamp` starts.
    pub fn plan_timestamp_lookup(&self, timestamp: i64) -> Option<FileReadPlan> {
        let high_watermark = self.high_watermark();
        let segment = self
            .segments
            .values()
            .find(|s| s.index.summary().max_timestamp >= timestamp && s.base_offset < high_watermark)?;
        let start_offset = segment.index.lookup_timestamp(timestamp).max(self.log_start_offset);
        let mut plan = self.plan_file_read(start_offset.max(segment.base_offset), high_watermark)?;
        plan.offset = start_offset;
        Some(plan)
    }

    /// Opens the partition in `dir`, recovering it from whatever a crash left there: trusted
    /// indexes for cleanly sealed segments, a validating scan for the rest, a torn or corrupt
    /// tail truncated, and nothing after a bad batch kept.
    pub async fn open(
        name: TopicPartition,
        dir: PathBuf,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<(Self, RecoveryReport), StorageError> {
        let listing = list_partition_dir(&dir).await?;
        let checkpoint = read_log_start_checkpoint(&dir).await?;
        let snapshot = segment::read_small_file(&dir.join(PRODUCER_STATE)).await?;
        let (snapshot_offset, mut producers) =
            snapshot.as_deref().and_then(ProducerStates::decode).unwrap_or((0, ProducerStates::default()));
        let mut report = RecoveryReport::default();
        let mut segments = BTreeMap::new();
        let mut expected_next: Option<i64> = None;
        let mut stopped = false;
        let last_base = listing.last().copied();
        for &base in &listing {
            let path = segment::log_path(&dir, base);
            // A segment must start where the one before it ended: offsets never skip.
            if stopped || expected_next.is_some_and(|next| base != next) {
                remove_segment_files(&dir, base).await?;
                report.segments_dropped += 1;
                stopped = true;
                continue;
            }
            let file = segment::open_segment_file(&path, false).await?;
            let file_size = file.file_size().await.map_err(|e| IoFailure::new("stat", &path, e))?;
            let is_last = Some(base) == last_base;
            let (index, stop) = match trusted_index(&dir, base, &config, file_size).await? {
                Some(index) => {
                    report.segments_trusted += 1;
                    (index, None)
                }
                None => {
                    report.segments_scanned += 1;
                    let outcome = segment::scan_segment(
                        &file,
                        &path,
                        file_size,
                        base,
                        ScanExpectations {
                            next_offset: expected_next.unwrap_or(base),
                            leader_epoch_max: LEADER_EPOCH_MAX,
                        },
                        config.index_interval_bytes,
                        &mut ProducerReplay { states: &mut producers, from_offset: snapshot_offset },
                    )
                    .await?;
                    (outcome.index, outcome.stop)
                }
            };
            let valid_bytes = index.summary().size_bytes;
            let next_base = listing.iter().copied().find(|&b| b > base);
            // A rolled segment that was written and synced but not yet finalized ends in the
            // zero padding of its last block; the next segment starting right after its last
            // batch shows that nothing is missing.
            let stop = stop.filter(|stop| {
                !(*stop == ScanStop::TornTail
                    && file_size - valid_bytes < file.alignment()
                    && next_base == Some(index.summary().next_offset))
            });
            if valid_bytes < file_size {
                if stop.is_some() {
                    tracing::warn!(partition = %name, segment = base, valid_bytes, file_size, reason = ?stop, "truncating log tail");
                }
                report.bytes_truncated += file_size - valid_bytes;
                file.truncate(valid_bytes).await.map_err(|e| IoFailure::new("truncate", &path, e))?;
                file.fdatasync().await.map_err(|e| IoFailure::new("fdatasync", &path, e))?;
            }
            if stop.is_some() {
                report.stop = stop;
                stopped = true;
            }
            if valid_bytes == 0 && !(is_last || stopped) {
                // An empty segment in the middle carries nothing: drop it.
                drop(file);
                remove_segment_files(&dir, base).await?;
                report.segments_dropped += 1;
                continue;
            }
            expected_next = Some(index.summary().next_offset);
            let tail = read_tail(&file, &path, valid_bytes).await?;
            let reader = segment::open_splice_reader(&path)?;
            let mut segment = Segment::recovered(file, reader, path, index, tail, now_ms);
            segment.sealed = !(is_last || stopped);
            if segment.sealed {
                segment.finalized = true;
                segment::write_index_files(&dir, &segment.index).await?;
            }
            segments.insert(base, segment);
        }
        // The last segment becomes the active one; its index files go stale with the next
        // append, so they are removed now (start-up then scans it after a crash).
        if let Some(active) = segments.values_mut().next_back() {
            active.sealed = false;
            active.finalized = false;
            remove_if_exists(&segment::offset_index_path(&dir, active.base_offset)).await?;
            remove_if_exists(&segment::time_index_path(&dir, active.base_offset)).await?;
        }
        let first_base = segments.keys().next().copied();
        let log_end = segments.values().next_back().map(Segment::next_offset);
        let log_start_offset = checkpoint.unwrap_or(0).max(first_base.unwrap_or(0)).min(log_end.unwrap_or(i64::MAX));
        if segments.is_empty() {
            let base = checkpoint.unwrap_or(0);
            segments.insert(base, Segment::new(&dir, base, config.index_interval_bytes));
        }
        // A snapshot covering more than survived (a damaged tail was cut) could report a lost
        // batch as a duplicate: start from nothing instead (producers then reset, KIP-360).
        if snapshot_offset > log_end.unwrap_or(0) {
            tracing::warn!(partition = %name, snapshot_offset, "producer state snapshot is ahead of the log: dropped");
            producers = ProducerStates::default();
        }
        let partition = Self {
            name,
            dir,
            config,
            segments,
            producers,
            log_start_offset,
            leader_epoch: 0,
            waiters: VecDeque::new(),
            readers: Vec::new(),
            failed: None,
            stalled: None,
            last_sync_ms: now_ms,
            checkpoint_generation: 0,
            appended_bytes: 0,
            appended_records: 0,
            journal: JournalRun::default(),
        };
        let mut partition = partition;
        partition.restart_journal_run(false);
        Ok((partition, report))
    }
}

fn unreachable_no_segment(name: &TopicPartition) -> ! {
    panic!("partition {name} has no segment: a log always keeps its active segment")
}

/// A file read to resolve: scan batch headers from `scan_from` for the batch holding `offset`.
pub(crate) enum MaxTimestampPlan {
    /// Read the batch at the plan's offset and pick its record with the max timestamp.
    Read(FileReadPlan),
    /// Answer with this (batch base offset, max timestamp).
    Batch(RecordStamp),
}

/// The page cache's page size (4 KiB on x86-64; queried once).
fn page_bytes() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // SAFETY: sysconf only reads a system constant.
    *PAGE.get_or_init(|| u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(512))
}

pub(crate) struct FileReadPlan {
    pub file: Rc<DmaFile>,
    pub splice_reader: Arc<std::fs::File>,
    pub path: PathBuf,
    pub scan_from: u64,
    pub bound_bytes: u64,
    /// How far the file may be read through the page cache (`splice_reader`): bytes in whole
    /// pages that no later write touches. Below `bound_bytes` only in an active segment, by
    /// its partial last page: a splice holds page cache pages in a pipe, and a page held
    /// there while an O_DIRECT write rewrites its block could outlive the write's
    /// invalidation with the old (shorter) content.
    pub splice_bytes: u64,
    pub offset: i64,
}

async fn trusted_index(
    dir: &Path,
    base: i64,
    config: &LogConfig,
    file_size: u64,
) -> Result<Option<SegmentIndex>, IoFailure> {
    let Some(offsets) = segment::read_small_file(&segment::offset_index_path(dir, base)).await? else {
        return Ok(None);
    };
    let Some(times) = segment::read_small_file(&segment::time_index_path(dir, base)).await? else {
        return Ok(None);
    };
    Ok(SegmentIndex::decode(base, config.index_interval_bytes, &offsets, &times)
        .ok()
        .filter(|index| index.summary().size_bytes == file_size))
}

async fn read_tail(file: &DmaFile, path: &Path, size: u64) -> Result<Vec<u8>, IoFailure> {
    let alignment = file.alignment();
    let start = size / alignment * alignment;
    if start == size {
        return Ok(Vec::new());
    }
    segment::read_range(file, path, start, (size - start) as usize).await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    glommio::executor().spawn_blocking(f).await
}

/// Sorted base offsets of the `.log` files in a partition directory (created if missing).
async fn list_partition_dir(dir: &Path) -> Result<Vec<i64>, IoFailure> {
    let owned = dir.to_path_buf();
    let listed = blocking(move || -> std::io::Result<Vec<i64>> {
        let created = !owned.exists();
        std::fs::create_dir_all(&owned)?;
        if created && let Some(parent) = owned.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(&owned)? {
            let entry = entry?;
            if let Some(base) = entry.file_name().to_str().and_then(segment::parse_log_file_name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        Ok(bases)
    })
    .await;
    listed.map_err(|e| IoFailure::new("list", dir, e))
}

/// Makes a new directory entry durable.
pub(crate) async fn sync_dir(dir: &Path) -> Result<(), IoFailure> {
    let owned = dir.to_path_buf();
    blocking(move || std::fs::File::open(&owned)?.sync_all()).await.map_err(|e| IoFailure::new("fsync dir", dir, e))
}

async fn remove_if_exists(path: &Path) -> Result<(), IoFailure> {
    let owned = path.to_path_buf();
    match blocking(move || std::fs::remove_file(owned)).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoFailure::new("remove", path, e)),
    }
}

/// Deletes a segment's three files, then syncs the directory.
pub(crate) async fn remove_segment_files(dir: &Path, base: i64) -> Result<(), IoFailure> {
    remove_if_exists(&segment::log_path(dir, base)).await?;
    remove_if_exists(&segment::offset_index_path(dir, base)).await?;
    remove_if_exists(&segment::time_index_path(dir, base)).await?;
    sync_dir(dir).await
}

/// The log start offset checkpoint: 8 bytes big-endian offset + CRC32C of them.
pub(crate) fn encode_log_start(offset: i64) -> Vec<u8> {
    let mut out = offset.to_be_bytes().to_vec();
    out.extend_from_slice(&crc32c::crc32c(&offset.to_be_bytes()).to_be_bytes());
    out
}

fn decode_log_start(bytes: &[u8]) -> Option<i64> {
    let raw: [u8; 8] = bytes.get(0..8)?.try_into().ok()?;
    let crc: [u8; 4] = bytes.get(8..12)?.try_into().ok()?;
    (bytes.len() == 12 && crc32c::crc32c(&raw) == u32::from_be_bytes(crc)).then(|| i64::from_be_bytes(raw))
}

async fn read_log_start_checkpoint(dir: &Path) -> Result<Option<i64>, IoFailure> {
    let path = dir.join(LOG_START_CHECKPOINT);
    let bytes = segment::read_small_file(&path).await?;
    let decoded = bytes.as_deref().map(decode_log_start);
    if let Some(None) = decoded {
        // A torn checkpoint: the rename never happened, so this cannot be the only copy of
        // an acknowledged DeleteRecords; fall back to the first segment.
        tracing::warn!(path = %path.display(), "ignoring unreadable log start checkpoint");
    }
    Ok(decoded.flatten())
}

/// Writes the checkpoint durably: temp file, sync, rename, sync the directory.
pub(crate) async fn write_log_start_checkpoint(dir: &Path, offset: i64, generation: u64) -> Result<(), IoFailure> {
    let tmp = dir.join(format!("{LOG_START_CHECKPOINT}.{generation}.tmp"));
    segment::write_small_file(&tmp, encode_log_start(offset)).await?;
    let target = dir.join(LOG_START_CHECKPOINT);
    let (from, to) = (tmp.clone(), target.clone());
    blocking(move || std::fs::rename(from, to)).await.map_err(|e| IoFailure::new("rename", &target, e))?;
    sync_dir(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_wait_completes_with_its_own_offset_not_behind_later_appends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor");
        run.run(async move {
            let name = TopicPartition::new("waits", 0);
            let (mut partition, _) =
                Partition::open(name, dir.path().join("waits-0"), LogConfig::default(), 0).await.expect("open");
            let mut next = 0;
            for _ in 0..2 {
                let mut bytes = crate::batch::build_test_batch(5, b"v", 1_000);
                crate::batch::stamp(&mut bytes, next, 0);
                let header = crate::batch::parse_stored_header(&bytes).expect("header");
                drop(partition.append(&header, Bytes::from(bytes), 0));
                next = header.next_offset();
            }
            // A produce's acknowledgement wait registered after a later batch's append.
            let mut first = partition.wait_for(5);
            assert!(matches!(first.try_recv(), Ok(None)));
            // The first batch becomes durable, the second not yet.
            partition.active_mut().written_next_offset = 5;
            partition.active_mut().durable_next_offset = 5;
            partition.complete_waiters();
            assert!(matches!(first.try_recv(), Ok(Some(Ok(())))), "answered without waiting for the later batch");
            assert!(matches!(partition.wait_for(3).try_recv(), Ok(Some(Ok(())))), "already durable: at once");
        });
    }

    #[test]
    fn partition_dir_names_parse_like_kafka() {
        assert_eq!(TopicPartition::from_dir_name("orders-3"), Some(TopicPartition::new("orders", 3)));
        assert_eq!(TopicPartition::from_dir_name("my-topic-12"), Some(TopicPartition::new("my-topic", 12)));
        assert_eq!(TopicPartition::from_dir_name("orders"), None);
        assert_eq!(TopicPartition::from_dir_name("-3"), None);
        assert_eq!(TopicPartition::from_dir_name("orders-03"), None);
        assert_eq!(TopicPartition::new("a-b", 0).to_string(), "a-b-0");
    }

    #[test]
    fn log_start_checkpoint_detects_corruption() {
        let encoded = encode_log_start(1234);
        assert_eq!(decode_log_start(&encoded), Some(1234));
        let mut bad = encoded.clone();
        bad[3] ^= 1;
        assert_eq!(decode_log_start(&bad), None);
        assert_eq!(decode_log_start(&encoded[..11]), None);
    }
}
