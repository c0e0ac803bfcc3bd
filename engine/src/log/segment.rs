//! One segment of a partition log: a `.log` file of RecordBatch v2 bytes written with
//! O_DIRECT, plus its sparse indexes.
//!
//! Owner: the shard that owns the partition. Lifecycle: *active* (accepts appends) →
//! *sealed* (rolled; its remaining bytes are still being written and synced) → *finalized*
//! (file truncated to its exact size, `.index` and `.timeindex` written and synced; read-only).
//!
//! Write state, in bytes from the start of the file, always at batch boundaries:
//! `durable_bytes ≤ written_bytes ≤ index.summary().size_bytes` (the last counts every
//! appended batch, including those still pending in memory). Writes are aligned to the
//! device's O_DIRECT block: the partial last block (`tail`) is kept in memory and written
//! again, extended, by the next write.
//!
//! Up to [`WRITES_IN_FLIGHT_MAX`] writes of a segment run at once, so that the device's queue
//! does not drain between group-commit waves. Each is planned from where the one before it
//! will leave the file (`planned`), and they complete in plan order: a write's first chunk,
//! which rewrites the block the previous write ended in, is issued only once that write has
//! completed (see [`WriteOrder`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use crate::batch::{self, BatchHeader};
use crate::error::IoFailure;
use crate::faults::{Fault, FaultPlan, IoOperation, errno_error};
use crate::log::index::SegmentIndex;

pub(crate) fn log_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

pub(crate) fn offset_index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}

pub(crate) fn time_index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.timeindex"))
}

/// Parses `00000000000000000042.log` into 42.
pub(crate) fn parse_log_file_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok()).flatten()
}

/// A write the flusher is to perform, taken from the segment's pending batches.
/// How a flush wave cuts its writes: sized from the device's I/O profile when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteShape {
    /// Largest write of one segment in one wave; a larger backlog goes out over several waves.
    pub write_bytes_max: usize,
    /// Size of each O_DIRECT write the plan is cut into (the device's knee block size).
    pub chunk_bytes: usize,
    /// Chunk writes in flight at once (the device's knee queue depth).
    pub queue_depth: usize,
}

impl Default for WriteShape {
    fn default() -> Self {
        Self { write_bytes_max: 32 << 20, chunk_bytes: 1 << 20, queue_depth: 16 }
    }
}

/// The shard's spare write buffers of exactly `chunk_bytes`, reused wave after wave. A fresh
/// O_DIRECT buffer of a MiB is fresh memory: the kernel faults in and zeroes its pages on the
/// first copy, which cost about a fifth of the shard's CPU at full produce rate. At most
/// `max_buffers` wait here (the flusher's working set); shorter chunks (the last one of a
/// write) are allocated as needed, and more when many writes run at once.
pub(crate) struct ChunkPool {
    chunk_bytes: usize,
    max_buffers: usize,
    free: RefCell<Vec<DmaBuffer>>,
}

impl ChunkPool {
    pub fn new(shape: &WriteShape) -> Self {
        Self { chunk_bytes: shape.chunk_bytes, max_buffers: shape.queue_depth.max(1) * 2, free: RefCell::default() }
    }

    fn take(&self, file: &DmaFile, len: usize) -> DmaBuffer {
        let pooled = if len == self.chunk_bytes { self.free.borrow_mut().pop() } else { None };
        pooled.unwrap_or_else(|| file.alloc_dma_buffer(len))
    }

    fn give(&self, buffer: DmaBuffer) {
        let mut free = self.free.borrow_mut();
        if buffer.len() == self.chunk_bytes && free.len() < self.max_buffers {
            free.push(buffer);
        }
    }
}

pub(crate) struct WritePlan {
    pub file: Rc<DmaFile>,
    pub path: PathBuf,
    /// Tail block + pending batches + zero padding to the alignment, cut into aligned chunks
    /// (file position, buffer) written concurrently; taken by the write.
    pub chunks: Vec<(u64, DmaBuffer)>,
    pub buffer_len: usize,
    /// `written_bytes` and the partition offset covered once the write completes.
    pub written_bytes_after: u64,
    pub next_offset_after: i64,
    pub tail_after: Vec<u8>,
    /// fallocate this far first, when the write would pass the reserved extent.
    pub preallocate_to: Option<u64>,
    /// How many pending batches the plan covers: they leave `pending` only once the write
    /// completes, so a failed write is planned again from the same bytes.
    pub batches: usize,
    /// Its place among the segment's writes in flight.
    pub order: WriteOrder,
}

/// Most writes of one segment in flight at once: one being written while the next is
/// planned and issued behind it keeps the device's queue from draining between waves.
pub const WRITES_IN_FLIGHT_MAX: usize = 2;

/// How a write waits for the one planned before it on the same segment. The earlier write
/// ends in a block the later one rewrites (the tail block): two writes of one block in flight
/// at once may land in either order, so the later write's first chunk goes out only after
/// the earlier write completed, and completions are applied in plan order.
pub(crate) struct WriteOrder {
    /// Completion of the write planned before this one (true: it reached the file and was
    /// applied). None when no write was in flight at planning time.
    pub after: Option<oneshot::Receiver<bool>>,
    /// Told when this write completed and was applied, or failed.
    pub done: Option<oneshot::Sender<bool>>,
}

/// Where the writes in flight will leave the file (the plan of the next write starts here).
struct PlannedEnd {
    written_bytes: u64,
    tail: Vec<u8>,
    allocated_bytes: u64,
    /// Pending batches covered by the writes in flight (the front of `pending`).
    batches: usize,
    bytes: usize,
    /// Completion of the last write planned, for the next plan to wait on.
    done: Option<oneshot::Receiver<bool>>,
}

/// Most write marks a segment keeps (see `Segment::write_marks`).
const WRITE_MARKS_MAX: usize = 1024;

pub(crate) struct Segment {
    pub base_offset: i64,
    pub path: PathBuf,
    /// None until the flusher creates the file for the first write.
    pub file: Option<Rc<DmaFile>>,
    /// A buffered read-only descriptor of the same file, for splice: splice needs no block
    /// alignment there, while the O_DIRECT descriptor rejects unaligned offsets. O_DIRECT
    /// writes invalidate the page cache over what they write, so this never reads stale bytes.
    /// Shared (`Arc`) so that a read can hand a range of it to the shard holding the
    /// connection, which splices it; reads through it take explicit offsets (no shared seek).
    pub splice_reader: Option<Arc<std::fs::File>>,
    pub index: SegmentIndex,
    /// Batches appended but not yet written, with their next offsets: the front ones may be
    /// covered by writes in flight (`planned`).
    pending: VecDeque<(Bytes, i64)>,
    pending_bytes: usize,
    /// Set while writes are in flight.
    planned: Option<PlannedEnd>,
    /// Writes of this segment in flight.
    writes_in_flight: usize,
    /// A write in flight failed: no new plan until every write in flight has finished (the
    /// next plan starts again from `written_bytes`).
    write_failed: bool,
    pub written_bytes: u64,
    pub written_next_offset: i64,
    pub durable_bytes: u64,
    pub durable_next_offset: i64,
    /// Batch boundaries the writes since the last sync reached: (next offset, bytes). A read
    /// may go up to the last one below the high watermark, which under the shard journal can
    /// be ahead of what the segment's own syncs covered.
    write_marks: VecDeque<(i64, u64)>,
    tail: Vec<u8>,
    allocated_bytes: u64,
    pub sealed: bool,
    pub finalized: bool,
    /// An fdatasync of this file is running (at most one at a time).
    pub sync_in_flight: bool,
    /// When the first batch was appended (for `segment.ms`), None when empty.
    pub first_append_ms: Option<i64>,
}

impl Segment {
    /// A new, empty, active segment whose file does not exist yet.
    pub fn new(dir: &Path, base_offset: i64, index_interval_bytes: u64) -> Self {
        Self {
            base_offset,
            path: log_path(dir, base_offset),
            file: None,
            splice_reader: None,
            index: SegmentIndex::new(base_offset, index_interval_bytes),
            pending: VecDeque::new(),
            pending_bytes: 0,
            planned: None,
            writes_in_flight: 0,
            write_failed: false,
            written_bytes: 0,
            written_next_offset: base_offset,
            durable_bytes: 0,
            durable_next_offset: base_offset,
            write_marks: VecDeque::new(),
            tail: Vec::new(),
            allocated_bytes: 0,
            sealed: false,
            finalized: false,
            sync_in_flight: false,
            first_append_ms: None,
        }
    }

    /// A segment recovered from disk: everything in `index` is durable; `tail` holds the
    /// bytes of the partial last block.
    pub fn recovered(
        file: Rc<DmaFile>,
        splice_reader: Arc<std::fs::File>,
        path: PathBuf,
        index: SegmentIndex,
        tail: Vec<u8>,
        now_ms: i64,
    ) -> Self {
        let summary = index.summary();
        Self {
            base_offset: index.base_offset(),
            path,
            file: Some(file),
            splice_reader: Some(splice_reader),
            pending: VecDeque::new(),
            pending_bytes: 0,
            planned: None,
            writes_in_flight: 0,
            write_failed: false,
            written_bytes: summary.size_bytes,
            written_next_offset: summary.next_offset,
            durable_bytes: summary.size_bytes,
            durable_next_offset: summary.next_offset,
            write_marks: VecDeque::new(),
            tail,
            allocated_bytes: summary.size_bytes,
            sealed: false,
            finalized: false,
            sync_in_flight: false,
            first_append_ms: (summary.size_bytes > 0).then_some(now_ms),
            index,
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.index.summary().size_bytes
    }

    pub fn next_offset(&self) -> i64 {
        self.index.summary().next_offset
    }

    pub fn is_empty(&self) -> bool {
        self.size_bytes() == 0
    }

    /// Write state in one line, for `ShardLog::debug_state`.
    pub fn debug_state(&self) -> String {
        format!(
            "base {} pending {} unplanned_bytes {} planned {:?} in_flight {} failed {} written {} {} durable {} {} size {} sync_in_flight {} sealed {}",
            self.base_offset,
            self.pending.len(),
            self.pending_bytes(),
            self.planned.as_ref().map(|p| (p.batches, p.written_bytes, p.done.is_some())),
            self.writes_in_flight,
            self.write_failed,
            self.written_bytes,
            self.written_next_offset,
            self.durable_bytes,
            self.durable_next_offset,
            self.size_bytes(),
            self.sync_in_flight,
            self.sealed
        )
    }

    /// Batches appended and not yet written (planned or not).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Batches appended and not yet in any write.
    pub fn has_unplanned(&self) -> bool {
        self.pending.len() > self.planned.as_ref().map_or(0, |p| p.batches)
    }

    /// Whether a write can be planned now: unplanned batches, no write in flight failed, and
    /// either no write in flight or room for one more and at least `chunk_bytes` to write
    /// (small writes wait for the one in flight and go out together: one sync covers them).
    pub fn can_plan_write(&self, chunk_bytes: usize) -> bool {
        let room = match self.writes_in_flight {
            0 => true,
            n => n < WRITES_IN_FLIGHT_MAX && self.pending_bytes() >= chunk_bytes,
        };
        self.has_unplanned() && room && !self.write_failed
    }

    /// Bytes of the batches appended and not yet in any write.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes - self.planned.as_ref().map_or(0, |p| p.bytes)
    }

    /// Records an appended batch (already stamped) in memory.
    pub fn append(&mut self, header: &BatchHeader, bytes: Bytes, now_ms: i64) {
        assert!(!self.sealed, "append to a sealed segment");
        let position = self.size_bytes();
        self.index.on_batch(header, position);
        self.pending_bytes += bytes.len();
        self.pending.push_back((bytes, header.next_offset()));
        self.first_append_ms.get_or_insert(now_ms);
    }

    /// Plans one aligned write of unplanned batches (up to `write_bytes_max`, at least one)
    /// that also rewrites the tail block, starting where the writes in flight end. The
    /// batches stay pending until [`Segment::complete_write`]: a write that fails (see
    /// [`Segment::abandon_write`]) is planned again, from the same bytes, when retried.
    pub fn take_write_plan(
        &mut self,
        alignment: u64,
        preallocate_bytes: u64,
        shape: &WriteShape,
        pool: &ChunkPool,
    ) -> Option<WritePlan> {
        let write_bytes_max = shape.write_bytes_max;
        let file = self.file.clone()?;
        if !self.can_plan_write(shape.chunk_bytes) {
            return None;
        }
        let (start_bytes, start_tail, start_allocated, planned_batches, planned_bytes, after) = match &mut self.planned
        {
            Some(p) => {
                (p.written_bytes, std::mem::take(&mut p.tail), p.allocated_bytes, p.batches, p.bytes, p.done.take())
            }
            None => (self.written_bytes, self.tail.clone(), self.allocated_bytes, 0, 0, None),
        };
        let alignment = alignment as usize;
        let position = (start_bytes as usize / alignment * alignment) as u64;
        assert_eq!(start_tail.len() as u64, start_bytes - position, "tail block out of step");
        let mut pending_bytes = 0usize;
        let mut batches = 0usize;
        for (bytes, _) in self.pending.iter().skip(planned_batches) {
            if batches > 0 && pending_bytes + bytes.len() > write_bytes_max {
                break;
            }
            pending_bytes += bytes.len();
            batches += 1;
        }
        let data_len = start_tail.len() + pending_bytes;
        let buffer_len = data_len.div_ceil(alignment) * alignment;
        // The one copy of the write path: O_DIRECT needs aligned memory. Chunks are written
        // concurrently (the device reaches its bandwidth with several writes in flight).
        let chunk_bytes = (shape.chunk_bytes.max(alignment) / alignment) * alignment;
        let mut chunks: Vec<(u64, DmaBuffer)> = Vec::with_capacity(buffer_len.div_ceil(chunk_bytes));
        let mut chunk_start = 0usize;
        while chunk_start < buffer_len {
            let len = chunk_bytes.min(buffer_len - chunk_start);
            // Every byte of the chunk is written below (a reused buffer keeps nothing old).
            chunks.push((position + chunk_start as u64, pool.take(&file, len)));
            chunk_start += len;
        }
        let mut at = 0usize;
        let mut copy_in = |bytes: &[u8]| {
            let mut from = 0usize;
            while from < bytes.len() {
                let (chunk, inner) = (at / chunk_bytes, at % chunk_bytes);
                let target = chunks[chunk].1.as_bytes_mut();
                let n = (target.len() - inner).min(bytes.len() - from);
                target[inner..inner + n].copy_from_slice(&bytes[from..from + n]);
                from += n;
                at += n;
            }
        };
        copy_in(&start_tail);
        let mut next_offset_after = self.written_next_offset;
        for (bytes, next_offset) in self.pending.iter().skip(planned_batches).take(batches) {
            copy_in(bytes);
            next_offset_after = *next_offset;
        }
        copy_in(&vec![0u8; buffer_len - data_len]);
        let tail_start = data_len / alignment * alignment;
        let mut tail_after = Vec::with_capacity(data_len - tail_start);
        for absolute in tail_start..data_len {
            tail_after.push(chunks[absolute / chunk_bytes].1.as_bytes()[absolute % chunk_bytes]);
        }
        let end = position + buffer_len as u64;
        let preallocate_to =
            (end > start_allocated).then(|| (end + preallocate_bytes).div_ceil(alignment as u64) * alignment as u64);
        let (done, next_after) = oneshot::channel();
        self.planned = Some(PlannedEnd {
            written_bytes: position + data_len as u64,
            tail: tail_after.clone(),
            allocated_bytes: preallocate_to.unwrap_or(start_allocated),
            batches: planned_batches + batches,
            bytes: planned_bytes + pending_bytes,
            done: Some(next_after),
        });
        self.writes_in_flight += 1;
        Some(WritePlan {
            file,
            path: self.path.clone(),
            chunks,
            buffer_len,
            written_bytes_after: position + data_len as u64,
            next_offset_after,
            tail_after,
            preallocate_to,
            batches,
            order: WriteOrder { after, done: Some(done) },
        })
    }

    /// The planned write reached the file (and every write planned before it did): its
    /// batches leave `pending`. The write's `done` is told once the caller has applied it.
    pub fn complete_write(&mut self, plan: WritePlan) -> Option<oneshot::Sender<bool>> {
        let WritePlan {
            written_bytes_after, next_offset_after, tail_after, preallocate_to, batches, mut order, ..
        } = plan;
        assert!(written_bytes_after >= self.written_bytes && written_bytes_after <= self.size_bytes());
        assert!(batches >= 1 && batches <= self.pending.len(), "completing a write of batches no longer pending");
        assert!(self.writes_in_flight >= 1 && !self.write_failed, "completing a write that is not in flight");
        let mut last_next_offset = i64::MIN;
        let mut drained_bytes = 0usize;
        for (bytes, next_offset) in self.pending.drain(..batches) {
            drained_bytes += bytes.len();
            last_next_offset = next_offset;
        }
        self.pending_bytes -= drained_bytes;
        assert_eq!(last_next_offset, next_offset_after, "the write covered other batches than planned");
        self.writes_in_flight -= 1;
        if self.writes_in_flight == 0 {
            self.planned = None;
        } else if let Some(planned) = self.planned.as_mut() {
            assert!(planned.batches > batches, "a later write in flight covers no batches");
            planned.batches -= batches;
            planned.bytes -= drained_bytes;
        }
        if let Some(allocated) = preallocate_to {
            self.allocated_bytes = self.allocated_bytes.max(allocated);
        }
        self.written_bytes = written_bytes_after;
        self.written_next_offset = next_offset_after;
        self.write_marks.push_back((next_offset_after, written_bytes_after));
        // Bounded (a segment never synced, under `flush = none`, needs none of them): losing
        // the oldest only makes a read stop earlier, never read past what is visible.
        if self.write_marks.len() > WRITE_MARKS_MAX {
            self.write_marks.pop_front();
        }
        self.tail = tail_after;
        order.done.take()
    }

    /// A write in flight failed, or gave up because the one before it failed: nothing of it
    /// counts. Once no write is in flight, the next plan starts again from `written_bytes`.
    pub fn abandon_write(&mut self) {
        assert!(self.writes_in_flight >= 1, "abandoning a write that is not in flight");
        self.writes_in_flight -= 1;
        self.write_failed = self.writes_in_flight > 0;
        if self.writes_in_flight == 0 {
            self.planned = None;
        }
    }

    /// The next offset at `readable_bytes(high_watermark)`: batches below it can be read
    /// from the file.
    pub fn readable_next_offset(&self, high_watermark: i64) -> i64 {
        if high_watermark >= self.written_next_offset {
            return self.written_next_offset;
        }
        let mark = self.write_marks.iter().rev().find(|(next, _)| *next <= high_watermark);
        mark.map_or(self.durable_next_offset, |(next, _)| (*next).max(self.durable_next_offset))
    }

    /// Bytes from the start of the file that hold only batches below `high_watermark` and
    /// are written: the end of the last written batch boundary below it.
    pub fn readable_bytes(&self, high_watermark: i64) -> u64 {
        if high_watermark >= self.written_next_offset {
            return self.written_bytes;
        }
        let mark = self.write_marks.iter().rev().find(|(next, _)| *next <= high_watermark);
        mark.map_or(self.durable_bytes, |(_, bytes)| (*bytes).max(self.durable_bytes)).min(self.written_bytes)
    }

    pub fn complete_sync(&mut self, durable_bytes: u64, durable_next_offset: i64) {
        assert!(durable_bytes <= self.written_bytes, "synced past the written bytes");
        if durable_bytes > self.durable_bytes {
            self.durable_bytes = durable_bytes;
            self.durable_next_offset = durable_next_offset;
        }
        while self.write_marks.front().is_some_and(|(_, bytes)| *bytes <= self.durable_bytes) {
            self.write_marks.pop_front();
        }
    }

    pub fn needs_sync(&self) -> bool {
        self.durable_bytes < self.written_bytes
    }

    /// Sealed, all written and synced, not yet finalized.
    pub fn ready_to_finalize(&self) -> bool {
        self.sealed && !self.finalized && self.pending.is_empty() && self.durable_bytes == self.size_bytes()
    }
}

fn io<'a>(operation: &'static str, path: &'a Path) -> impl FnOnce(glommio::GlommioError<()>) -> IoFailure + 'a {
    move |e| IoFailure::new(operation, path, e)
}

/// Opens (creating if needed) a segment file for reading and writing with O_DIRECT.
pub(crate) async fn open_segment_file(path: &Path, create: bool) -> Result<Rc<DmaFile>, IoFailure> {
    OpenOptions::new().read(true).write(true).create(create).dma_open(path).await.map(Rc::new).map_err(io("open", path))
}

/// Opens the buffered read-only descriptor used for splicing (see `Segment::splice_reader`).
pub(crate) fn open_splice_reader(path: &Path) -> Result<Arc<std::fs::File>, IoFailure> {
    std::fs::File::open(path).map(Arc::new).map_err(|e| IoFailure::new("open for splice", path, e))
}

/// Why a write plan did not reach the file.
#[derive(Debug)]
pub(crate) enum WriteFailure {
    Io(IoFailure),
    /// The write planned before it failed: this one never issued its first chunk, and the
    /// earlier failure is the one that counts.
    AfterFailedWrite,
}

impl From<IoFailure> for WriteFailure {
    fn from(failure: IoFailure) -> Self {
        Self::Io(failure)
    }
}

/// Performs a write plan: fallocate if needed, then its aligned O_DIRECT chunk writes,
/// `queue_depth` at a time, the first one only after the write planned before it completed
/// (it rewrites that write's last block). The plan counts as written only when every chunk
/// is. Written buffers go back to `pool`.
pub(crate) async fn execute_write(
    plan: &mut WritePlan,
    queue_depth: usize,
    faults: Option<&FaultPlan>,
    pool: &ChunkPool,
) -> Result<(), WriteFailure> {
    let mut after = plan.order.after.take();
    if let Some(size) = plan.preallocate_to {
        let allocated = match crate::faults::hit(faults, IoOperation::Allocate).await {
            Some(Fault::Errno(errno)) => Err(IoFailure::new("fallocate", &plan.path, errno_error(errno))),
            _ => plan.file.pre_allocate(size, true).await.map_err(io("fallocate", &plan.path)),
        };
        if let Err(failure) = allocated {
            // Writes of a segment settle in plan order, failures too: the one before first.
            if let Some(after) = after.take()
                && !after.await.unwrap_or(false)
            {
                return Err(WriteFailure::AfterFailedWrite);
            }
            return Err(failure.into());
        }
    }
    let mut chunks = std::mem::take(&mut plan.chunks);
    while !chunks.is_empty() {
        let rest = chunks.split_off(queue_depth.max(1).min(chunks.len()));
        let writes = chunks.into_iter().map(|(position, buffer)| {
            let (file, path) = (&plan.file, &plan.path);
            let after = after.take();
            async move {
                if let Some(after) = after
                    && !after.await.unwrap_or(false)
                {
                    return Err(WriteFailure::AfterFailedWrite);
                }
                let expected = buffer.len();
                let buffer = match crate::faults::hit(faults, IoOperation::Write).await {
                    // `hit` serves a delay itself.
                    None | Some(Fault::Delay { .. }) => buffer,
                    Some(Fault::Errno(errno)) => return Err(IoFailure::new("write", path, errno_error(errno)).into()),
                    Some(Fault::ShortWrite) => match short_write_buffer(file, &buffer) {
                        Some(short) => short,
                        None => {
                            let message = format!("short write at {position}: 0 of {expected} bytes");
                            return Err(IoFailure::incomplete("write", path, message).into());
                        }
                    },
                };
                let buffer = Rc::new(buffer);
                let written = file.write_rc_at(Rc::clone(&buffer), position).await.map_err(io("write", path))?;
                if let Ok(buffer) = Rc::try_unwrap(buffer) {
                    pool.give(buffer);
                }
                if written != expected {
                    let message = format!("short write at {position}: {written} of {expected} bytes");
                    return Err(IoFailure::incomplete("write", path, message).into());
                }
                Ok(())
            }
        });
        for result in futures_util::future::join_all(writes).await {
            result?;
        }
        chunks = rest;
    }
    Ok(())
}

/// The first half of `buffer` (whole blocks), for an injected short write: the write then
/// reports fewer bytes than the plan's chunk, as a device running out of room would. None
/// when half is less than a block (nothing is written).
fn short_write_buffer(file: &DmaFile, buffer: &DmaBuffer) -> Option<DmaBuffer> {
    let alignment = file.alignment() as usize;
    let half = buffer.len() / 2 / alignment * alignment;
    if half == 0 {
        return None;
    }
    let mut short = file.alloc_dma_buffer(half);
    short.as_bytes_mut().copy_from_slice(&buffer.as_bytes()[..half]);
    Some(short)
}

pub(crate) async fn sync_file(file: &DmaFile, path: &Path) -> Result<(), IoFailure> {
    file.fdatasync().await.map_err(io("fdatasync", path))
}

/// Makes a sealed segment read-only for good: file cut to its exact size, both index files
/// written and synced. After this, start-up trusts the indexes instead of scanning.
pub(crate) async fn finalize(dir: &Path, file: &DmaFile, path: &Path, index: &SegmentIndex) -> Result<(), IoFailure> {
    let summary = index.summary();
    file.truncate(summary.size_bytes).await.map_err(io("truncate", path))?;
    sync_file(file, path).await?;
    write_index_files(dir, index).await
}

/// Writes and syncs the two index files of a segment.
pub(crate) async fn write_index_files(dir: &Path, index: &SegmentIndex) -> Result<(), IoFailure> {
    let base = index.base_offset();
    write_small_file(&offset_index_path(dir, base), index.encode_offset_index()).await?;
    write_small_file(&time_index_path(dir, base), index.encode_time_index()).await
}

/// Writes a small file completely and syncs it (buffered I/O: index files are tiny).
pub(crate) async fn write_small_file(path: &Path, bytes: Vec<u8>) -> Result<(), IoFailure> {
    let file = glommio::io::BufferedFile::create(path).await.map_err(io("create", path))?;
    let expected = bytes.len();
    let written = file.write_at(bytes, 0).await.map_err(io("write", path))?;
    if written != expected {
        return Err(IoFailure::incomplete("write", path, format!("short write: {written} of {expected} bytes")));
    }
    file.fdatasync().await.map_err(io("fdatasync", path))?;
    file.close().await.map_err(io("close", path))
}

/// Reads a whole small file; `None` if it does not exist.
pub(crate) async fn read_small_file(path: &Path) -> Result<Option<Vec<u8>>, IoFailure> {
    let path_owned = path.to_path_buf();
    let result = glommio::executor().spawn_blocking(move || std::fs::read(&path_owned)).await;
    match result {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IoFailure::new("read", path, e)),
    }
}

/// Why a recovery scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// Fewer bytes than a batch header, zero padding, or a length past the end: a torn or
    /// never-completed write.
    TornTail,
    /// A batch that fails validation (bad magic, CRC, counts).
    Corrupt(String),
    /// A batch whose base offset does not follow the batch before it (or, for the first batch,
    /// the segment's base offset): offsets going back, or a gap. The CRC does not cover the
    /// base offset, so this is how damage to it shows; the log never has gaps (no compaction).
    OffsetsNotContiguous,
}

/// Where a recovery scan replays idempotent-producer state: batches at or after
/// `from_offset` (what the snapshot does not cover) are recorded in `states`.
pub(crate) struct ProducerReplay<'a> {
    pub states: &'a mut crate::log::producer::ProducerStates,
    pub from_offset: i64,
}

/// What a recovery scan holds the batches of a segment to, beyond their own validity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanExpectations {
    /// Where the segment must start (the previous segment's next offset, or its own base).
    pub next_offset: i64,
    /// The highest partition leader epoch a batch may carry.
    pub leader_epoch_max: i32,
}

/// The result of validating a segment file from its start.
pub(crate) struct ScanOutcome {
    pub index: SegmentIndex,
    pub stop: Option<ScanStop>,
}

const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// Validates every batch of a segment file (length, magic, CRC32C, contiguous offsets) and
/// rebuilds its indexes, stopping at the first batch that is not whole and valid.
pub(crate) async fn scan_segment(
    file: &DmaFile,
    path: &Path,
    file_size: u64,
    base_offset: i64,
    expected: ScanExpectations,
    index_interval_bytes: u64,
    producers: &mut ProducerReplay<'_>,
) -> Result<ScanOutcome, IoFailure> {
    let ScanExpectations { next_offset: expected_next_offset, leader_epoch_max } = expected;
    let mut leader_epoch = 0;
    let mut index = SegmentIndex::new(base_offset, index_interval_bytes);
    let mut next_offset = expected_next_offset.max(base_offset);
    let mut position = 0u64;
    let mut window: Vec<u8> = Vec::new();
    let mut window_start = 0u64;
    loop {
        let remaining = file_size - position;
        if remaining == 0 {
            return Ok(ScanOutcome { index, stop: None });
        }
        let in_window =
            |w: &Vec<u8>, start: u64, need: usize| position >= start && (position - start) as usize + need <= w.len();
        if !in_window(&window, window_start, batch::BATCH_LENGTH_PREFIX_BYTES.min(remaining as usize)) {
            window = read_range(file, path, position, SCAN_CHUNK_BYTES.min(remaining as usize)).await?;
            window_start = position;
        }
        let at = (position - window_start) as usize;
        let claimed = batch::claimed_batch_size(&window[at..]);
        let Some(claimed) = claimed.filter(|&c| c >= batch::BATCH_HEADER_BYTES && c as u64 <= remaining) else {
            return Ok(ScanOutcome { index, stop: Some(ScanStop::TornTail) });
        };
        if !in_window(&window, window_start, claimed) {
            window = read_range(file, path, position, SCAN_CHUNK_BYTES.max(claimed).min(remaining as usize)).await?;
            window_start = position;
        }
        let at = (position - window_start) as usize;
        let header = match batch::validate_prefix(&window[at..at + claimed]) {
            Ok(header) => header,
            Err(e) => {
                return Ok(ScanOutcome { index, stop: Some(ScanStop::Corrupt(e.to_string())) });
            }
        };
        if header.base_offset != next_offset || header.last_offset() - base_offset > i64::from(u32::MAX >> 1) {
            return Ok(ScanOutcome { index, stop: Some(ScanStop::OffsetsNotContiguous) });
        }
        // Epochs never go back and never pass the partition's latest (the CRC does not cover them).
        let epoch = header.partition_leader_epoch;
        if !(leader_epoch..=leader_epoch_max).contains(&epoch) {
            let message = format!("partition leader epoch {epoch} outside {leader_epoch}..={leader_epoch_max}");
            return Ok(ScanOutcome { index, stop: Some(ScanStop::Corrupt(message)) });
        }
        leader_epoch = epoch;
        index.on_batch(&header, position);
        if header.base_offset >= producers.from_offset {
            producers.states.record(&header);
        }
        next_offset = header.next_offset();
        position += claimed as u64;
    }
}

/// Reads `len` bytes at `position` (copying: used by recovery and by tests, not by fetch).
pub(crate) async fn read_range(file: &DmaFile, path: &Path, position: u64, len: usize) -> Result<Vec<u8>, IoFailure> {
    let result = file.read_at(position, len).await.map_err(io("read", path))?;
    if result.len() != len {
        let message = format!("short read at {position}: {} of {len} bytes", result.len());
        return Err(IoFailure::incomplete("read", path, message));
    }
    Ok(result.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let dir = Path::new("/data/t-0");
        let path = log_path(dir, 42);
        assert_eq!(path, Path::new("/data/t-0/00000000000000000042.log"));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(parse_log_file_name(name), Some(42));
        assert_eq!(parse_log_file_name("42.log"), None);
        assert_eq!(parse_log_file_name("0000000000000000004x.log"), None);
        assert_eq!(parse_log_file_name("00000000000000000042.index"), None);
    }
}
