//! The shard journal: one pre-allocated ring file per shard that makes the appends of every
//! `flush = always` partition of the shard durable with one write and one `fdatasync` per
//! group-commit wave, instead of one `fdatasync` per touched segment file.
//!
//! Owner: one shard (the runtime half, [`JournalRing`], lives in its `ShardLog`). Recovery
//! ([`replay`]) is plain blocking code that runs before the shard serves anything.
//!
//! Contract: a batch is acknowledged once the journal record holding it is synced; its
//! segment file is written in the same wave but synced only at a *checkpoint*. A checkpoint
//! waits until every batch before the journal head is written to its segment, syncs every
//! segment file with unsynced bytes, then records the head as the new start of the journal
//! (two alternating header slots, each with its own CRC, so a torn header write leaves the
//! other). Start-up replays the records after the checkpoint into the segment files, so
//! nothing acknowledged is lost when the segment writes were not yet synced.
//!
//! Format (big-endian, like every corelog file; `docs/formats.md` has the byte diagrams): two 4 KiB header slots,
//! then the ring. A record is 4 KiB-aligned, never wraps (a record that would pass the end
//! of the ring starts the next lap), carries a sequence number one above the previous
//! record's, and a CRC32C over everything after its first 8 bytes; a scan stops at the first
//! record that is not whole, valid and next in sequence.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::batch;
use crate::log::partition::TopicPartition;
use crate::log::segment;

pub const HEADER_MAGIC: &[u8; 8] = b"CLJRNL01";
pub const HEADER_SLOT_BYTES: u64 = 4096;
/// Where the ring starts in the file (after the two header slots).
pub const RING_START: u64 = 2 * HEADER_SLOT_BYTES;
/// Records start on this boundary (the O_DIRECT alignment of every device we run on).
pub const RECORD_ALIGN: u64 = 4096;
pub const RECORD_MAGIC: u32 = u32::from_be_bytes(*b"CLJR");
pub const RECORD_HEADER_BYTES: usize = 32;
const HEADER_BYTES: usize = 44;
/// Smallest ring a journal is created with (a configured size is raised to it).
pub const RING_BYTES_MIN: u64 = 1 << 20;
/// Fixed part of an entry: topic length, partition, segment base offset, batch length.
const ENTRY_FIXED_BYTES: usize = 2 + 4 + 8 + 4;

/// The journal file of shard `shard` in `data_dir`.
pub fn journal_path(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join(format!("shard-{shard:03}.journal"))
}

/// One batch in a journal record: which partition, which segment it belongs to (the batch
/// may be the first of a segment whose file did not exist yet), and its stamped bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub partition: TopicPartition,
    pub segment_base: i64,
    pub batch: Bytes,
}

/// The `segment_base` of a tombstone entry (no batch): the partition was deleted, and no
/// entry of it before this one may be replayed (into a partition created later under its name).
pub const TOMBSTONE_SEGMENT_BASE: i64 = -1;

impl JournalEntry {
    /// The mark that `partition` was deleted.
    pub fn tombstone(partition: TopicPartition) -> Self {
        Self { partition, segment_base: TOMBSTONE_SEGMENT_BASE, batch: Bytes::new() }
    }

    pub fn is_tombstone(&self) -> bool {
        self.segment_base == TOMBSTONE_SEGMENT_BASE && self.batch.is_empty()
    }

    pub fn encoded_len(&self) -> usize {
        ENTRY_FIXED_BYTES + self.partition.topic.len() + self.batch.len()
    }
}

/// The start of the journal as a header slot records it: records before `position` (a
/// logical position, growing forever; the file offset is `RING_START + position % ring`)
/// are covered by synced segment files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Which write of the header this is; the valid slot with the highest counter wins.
    pub counter: u64,
    pub position: u64,
    pub sequence: u64,
    pub ring_bytes: u64,
}

impl Checkpoint {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..8].copy_from_slice(HEADER_MAGIC);
        out[8..16].copy_from_slice(&self.counter.to_be_bytes());
        out[16..24].copy_from_slice(&self.position.to_be_bytes());
        out[24..32].copy_from_slice(&self.sequence.to_be_bytes());
        out[32..40].copy_from_slice(&self.ring_bytes.to_be_bytes());
        let crc = crc32c::crc32c(&out[0..40]);
        out[40..44].copy_from_slice(&crc.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER_BYTES || &bytes[0..8] != HEADER_MAGIC {
            return None;
        }
        if crc32c::crc32c(&bytes[0..40]) != be_u32(bytes, 40) {
            return None;
        }
        let checkpoint = Self {
            counter: be_u64(bytes, 8),
            position: be_u64(bytes, 16),
            sequence: be_u64(bytes, 24),
            ring_bytes: be_u64(bytes, 32),
        };
        (checkpoint.ring_bytes >= RECORD_ALIGN && checkpoint.ring_bytes.is_multiple_of(RECORD_ALIGN))
            .then_some(checkpoint)
    }

    /// The file offset of the slot this checkpoint is written to (they alternate).
    pub fn slot_offset(&self) -> u64 {
        (self.counter % 2) * HEADER_SLOT_BYTES
    }

    /// The better of two slots: the valid one with the higher counter.
    pub fn pick(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.counter > a.counter { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// Size of a record holding `entries` (header included, before alignment padding).
pub fn record_len(entries: &[JournalEntry]) -> usize {
    RECORD_HEADER_BYTES + entries.iter().map(JournalEntry::encoded_len).sum::<usize>()
}

/// A record's size on disk: its length rounded up to the record alignment.
pub fn padded_len(record_len: usize) -> u64 {
    (record_len as u64).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Encodes a record into `out` (at least `padded_len(record_len(entries))` bytes, all of
/// which are written: padding is zeros).
pub fn encode_record(sequence: u64, entries: &[JournalEntry], out: &mut [u8]) {
    let len = record_len(entries);
    assert!(out.len() as u64 >= padded_len(len), "record buffer too small");
    assert!(u32::try_from(len).is_ok() && u32::try_from(entries.len()).is_ok(), "record too large");
    let mut at = RECORD_HEADER_BYTES;
    for entry in entries {
        let topic = entry.partition.topic.as_bytes();
        let topic_len = u16::try_from(topic.len()).unwrap_or(u16::MAX);
        assert_eq!(usize::from(topic_len), topic.len(), "topic name too long for a journal entry");
        out[at..at + 2].copy_from_slice(&topic_len.to_be_bytes());
        at += 2;
        out[at..at + topic.len()].copy_from_slice(topic);
        at += topic.len();
        out[at..at + 4].copy_from_slice(&entry.partition.partition.to_be_bytes());
        out[at + 4..at + 12].copy_from_slice(&entry.segment_base.to_be_bytes());
        out[at + 12..at + 16].copy_from_slice(&(entry.batch.len() as u32).to_be_bytes());
        at += 16;
        out[at..at + entry.batch.len()].copy_from_slice(&entry.batch);
        at += entry.batch.len();
    }
    assert_eq!(at, len);
    out[at..].fill(0);
    out[0..4].copy_from_slice(&RECORD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&sequence.to_be_bytes());
    out[16..20].copy_from_slice(&(len as u32).to_be_bytes());
    out[20..24].copy_from_slice(&(entries.len() as u32).to_be_bytes());
    out[24..32].fill(0);
    let crc = crc32c::crc32c(&out[8..len]);
    out[4..8].copy_from_slice(&crc.to_be_bytes());
}

/// The length a record header at the start of `bytes` claims, if it looks like the record
/// `sequence` (magic and sequence right, length sane). The CRC is checked by [`decode_record`].
pub fn claimed_record_len(bytes: &[u8], sequence: u64, room: u64) -> Option<usize> {
    if bytes.len() < RECORD_HEADER_BYTES || be_u32(bytes, 0) != RECORD_MAGIC || be_u64(bytes, 8) != sequence {
        return None;
    }
    let len = be_u32(bytes, 16) as usize;
    (len >= RECORD_HEADER_BYTES && padded_len(len) <= room).then_some(len)
}

/// Decodes a whole record (`bytes` holds at least its claimed length): None when the CRC,
/// the sequence or any entry is wrong.
pub fn decode_record(bytes: &[u8], sequence: u64) -> Option<Vec<JournalEntry>> {
    let len = claimed_record_len(bytes, sequence, u64::MAX)?;
    if bytes.len() < len || crc32c::crc32c(&bytes[8..len]) != be_u32(bytes, 4) {
        return None;
    }
    let count = be_u32(bytes, 20) as usize;
    let mut entries = Vec::with_capacity(count.min(len / ENTRY_FIXED_BYTES));
    let mut at = RECORD_HEADER_BYTES;
    for _ in 0..count {
        if at + 2 > len {
            return None;
        }
        let topic_len = usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        at += 2;
        if at + topic_len + 16 > len {
            return None;
        }
        let topic = std::str::from_utf8(&bytes[at..at + topic_len]).ok()?.to_string();
        at += topic_len;
        let partition = i32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let segment_base = be_u64(bytes, at + 4) as i64;
        let batch_len = be_u32(bytes, at + 12) as usize;
        at += 16;
        if at + batch_len > len {
            return None;
        }
        let batch = Bytes::copy_from_slice(&bytes[at..at + batch_len]);
        at += batch_len;
        entries.push(JournalEntry { partition: TopicPartition::new(topic, partition), segment_base, batch });
    }
    (at == len).then_some(entries)
}

/// Where a record of `padded` bytes goes when the head is at `head`: at the head, or at the
/// start of the next lap when it would pass the end of the ring.
pub fn place(head: u64, padded: u64, ring_bytes: u64) -> u64 {
    let in_lap = head % ring_bytes;
    if in_lap + padded <= ring_bytes { head } else { head - in_lap + ring_bytes }
}

/// The runtime state of a shard's journal ring: where the next record goes, which sequence
/// it carries, and the checkpoint that bounds how far the head may run ahead.
#[derive(Debug, Clone)]
pub struct JournalRing {
    pub ring_bytes: u64,
    pub head: u64,
    pub next_sequence: u64,
    pub checkpoint: Checkpoint,
}

impl JournalRing {
    /// The ring right after `checkpoint` was written with nothing after it.
    pub fn empty(checkpoint: Checkpoint) -> Self {
        Self {
            ring_bytes: checkpoint.ring_bytes,
            head: checkpoint.position,
            next_sequence: checkpoint.sequence,
            checkpoint,
        }
    }

    /// Bytes between the checkpoint and the head (what a checkpoint would release).
    pub fn used_bytes(&self) -> u64 {
        self.head - self.checkpoint.position
    }

    /// Where a record of `padded` bytes would start, if it fits without overwriting a
    /// record after the checkpoint.
    pub fn reserve(&self, padded: u64) -> Option<u64> {
        let start = place(self.head, padded, self.ring_bytes);
        (start + padded - self.checkpoint.position <= self.ring_bytes).then_some(start)
    }

    /// A record was placed at `start` with `padded` bytes.
    pub fn advance(&mut self, start: u64, padded: u64) {
        assert!(start >= self.head, "journal record placed behind the head");
        self.head = start + padded;
        self.next_sequence += 1;
    }

    /// The file offset of logical position `position`.
    pub fn file_offset(&self, position: u64) -> u64 {
        RING_START + position % self.ring_bytes
    }

    /// The header to write for a checkpoint at the current head.
    pub fn checkpoint_at_head(&self) -> Checkpoint {
        Checkpoint {
            counter: self.checkpoint.counter + 1,
            position: self.head,
            sequence: self.next_sequence,
            ring_bytes: self.ring_bytes,
        }
    }
}

/// What a scan of the journal found after its checkpoint.
#[derive(Debug, Default)]
pub struct ScannedJournal {
    /// Records in order, each with its entries.
    pub entries: Vec<JournalEntry>,
    pub records: u64,
    /// The position and sequence after the last valid record.
    pub head: u64,
    pub next_sequence: u64,
}

/// Reads the records after `checkpoint`, stopping at the first that is not whole, valid
/// and next in sequence (tried where it was written, then at the start of the next lap).
pub fn scan(
    read_at: &mut dyn FnMut(u64, usize) -> io::Result<Vec<u8>>,
    checkpoint: &Checkpoint,
) -> io::Result<ScannedJournal> {
    let ring = checkpoint.ring_bytes;
    let mut out =
        ScannedJournal { head: checkpoint.position, next_sequence: checkpoint.sequence, ..Default::default() };
    loop {
        let mut found = None;
        for candidate in [out.head, place(out.head, ring, ring)] {
            let room = (checkpoint.position + ring).saturating_sub(candidate).min(ring - candidate % ring);
            if room < RECORD_ALIGN {
                continue;
            }
            let offset = RING_START + candidate % ring;
            let header = read_at(offset, RECORD_HEADER_BYTES)?;
            let Some(len) = claimed_record_len(&header, out.next_sequence, room) else { continue };
            let bytes = read_at(offset, len)?;
            if let Some(entries) = decode_record(&bytes, out.next_sequence) {
                found = Some((candidate, len, entries));
                break;
            }
        }
        let Some((start, len, entries)) = found else { return Ok(out) };
        out.entries.extend(entries);
        out.records += 1;
        out.head = start + padded_len(len);
        out.next_sequence += 1;
    }
}

/// Replays every journal file in `data_dir` (a broker restarted with fewer cores leaves
/// journals of shards that no longer exist). Blocking: before any shard starts.
pub fn replay_all(data_dir: &Path) -> io::Result<ReplayReport> {
    let mut total = ReplayReport::default();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(data_dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .collect();
    paths.sort();
    for path in paths {
        let report = replay(data_dir, &path)?;
        total.records += report.records;
        total.entries += report.entries;
        total.batches_restored += report.batches_restored;
        total.bytes_restored += report.bytes_restored;
    }
    Ok(total)
}

/// What replaying a journal into the segment files did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub records: u64,
    pub entries: u64,
    /// Batches that were missing from their segment file and were written there.
    pub batches_restored: u64,
    pub bytes_restored: u64,
}

/// Opens a journal file, creating it (pre-allocated, header written and synced, then
/// renamed into place) if it does not exist. Returns the file and its current checkpoint.
pub fn open_or_create(path: &Path, ring_bytes: u64) -> io::Result<(File, Checkpoint)> {
    if !path.exists() {
        create(path, ring_bytes)?;
    }
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let checkpoint = read_checkpoint(&file)?.ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: no valid journal header", path.display()))
    })?;
    Ok((file, checkpoint))
}

fn create(path: &Path, ring_bytes: u64) -> io::Result<()> {
    // A journal never takes more than a sixteenth of its file system (small disks, tests).
    let dir = path.parent().unwrap_or(Path::new("."));
    let ring_bytes = ring_bytes.min(filesystem_bytes(dir)? / 16);
    let ring_bytes = ring_bytes.max(RING_BYTES_MIN).div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
    let temporary = path.with_extension("journal.new");
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&temporary)?;
    // Blocks reserved up front (size fixed, so a record write never changes the file size).
    let total = i64::try_from(RING_START + ring_bytes).map_err(io::Error::other)?;
    // SAFETY: fallocate on a descriptor we own; failure is reported below.
    let rc = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, total) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        // A file system without fallocate still works, with the file sized by hand.
        if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(error);
        }
        file.set_len(total as u64)?;
    }
    let checkpoint = Checkpoint { counter: 0, position: 0, sequence: 1, ring_bytes };
    file.write_all_at(&checkpoint.encode(), checkpoint.slot_offset())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    sync_dir_blocking(path.parent().unwrap_or(Path::new(".")))
}

/// The size of the file system holding `dir`.
fn filesystem_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs fills the struct we own; `path` is a valid C string.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stats.f_blocks.saturating_mul(stats.f_frsize))
}

fn read_checkpoint(file: &File) -> io::Result<Option<Checkpoint>> {
    let mut slots = vec![0u8; RING_START as usize];
    let read = read_up_to(file, &mut slots, 0)?;
    slots.truncate(read);
    let slot = |at: usize| slots.get(at..).and_then(Checkpoint::decode);
    Ok(Checkpoint::pick(slot(0), slot(HEADER_SLOT_BYTES as usize)))
}

/// Writes `checkpoint` into its slot and syncs the file (blocking).
pub fn write_checkpoint_blocking(file: &File, checkpoint: &Checkpoint) -> io::Result<()> {
    let mut slot = vec![0u8; HEADER_SLOT_BYTES as usize];
    slot[..HEADER_BYTES].copy_from_slice(&checkpoint.encode());
    file.write_all_at(&slot, checkpoint.slot_offset())?;
    file.sync_data()
}

fn read_up_to(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buffer.len() {
        match file.read_at(&mut buffer[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

fn sync_dir_blocking(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replays the journal at `path` (if there is one) into the segment files under `data_dir`,
/// then checkpoints it empty. Blocking: runs before the shard serves anything.
///
/// Entries of a partition before its last tombstone (a deleted incarnation) are skipped.
/// For each other entry in order: the batch is written to its segment file unless the file already
/// holds it (a valid batch ending at or past it). A batch that does not follow the valid end
/// of its segment was never acknowledged (journal coverage of a partition is only trusted
/// from where its segment was durable) and is skipped with the rest of that segment's
/// entries. Entries of a partition whose directory is gone (a deleted topic) are skipped.
pub fn replay(data_dir: &Path, path: &Path) -> io::Result<ReplayReport> {
    if !path.exists() {
        return Ok(ReplayReport::default());
    }
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let checkpoint = read_checkpoint(&file)?.ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: no valid journal header", path.display()))
    })?;
    let mut read_at = |offset: u64, len: usize| -> io::Result<Vec<u8>> {
        let mut buffer = vec![0u8; len];
        let read = read_up_to(&file, &mut buffer, offset)?;
        buffer.truncate(read);
        Ok(buffer)
    };
    let scanned = scan(&mut read_at, &checkpoint)?;
    let mut report =
        ReplayReport { records: scanned.records, entries: scanned.entries.len() as u64, ..Default::default() };
    // Entries of a partition before its last tombstone belong to a deleted incarnation.
    let last_tombstone: HashMap<&TopicPartition, usize> = scanned
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_tombstone())
        .map(|(at, e)| (&e.partition, at))
        .collect();
    let mut targets: HashMap<PathBuf, ReplayTarget> = HashMap::new();
    for (at, entry) in scanned.entries.iter().enumerate() {
        if entry.is_tombstone() || last_tombstone.get(&entry.partition).is_some_and(|&t| at < t) {
            continue;
        }
        let dir = data_dir.join(entry.partition.to_string());
        if !dir.is_dir() {
            continue;
        }
        let segment_path = segment::log_path(&dir, entry.segment_base);
        if !targets.contains_key(&segment_path) {
            let target = ReplayTarget::open(&dir, &segment_path, entry.segment_base)?;
            targets.insert(segment_path.clone(), target);
        }
        let Some(target) = targets.get_mut(&segment_path) else { continue };
        let Some(header) = batch::parse_stored_header(&entry.batch) else { continue };
        if target.skip_rest || header.next_offset() <= target.next_offset {
            continue;
        }
        if header.base_offset != target.next_offset {
            tracing::warn!(
                segment = %segment_path.display(),
                expected = target.next_offset,
                found = header.base_offset,
                "journal replay: batch does not follow the segment's valid end (never acknowledged); skipping the rest"
            );
            target.skip_rest = true;
            continue;
        }
        target.write(&segment_path, &entry.batch)?;
        target.next_offset = header.next_offset();
        report.batches_restored += 1;
        report.bytes_restored += entry.batch.len() as u64;
    }
    let mut dirs = Vec::new();
    for (segment_path, target) in &targets {
        // Every segment the journal's entries point at is synced before the journal forgets
        // them, also those that already held their batches: after a process crash those
        // bytes may be in the page cache or the device's cache only.
        if let Some(file) = &target.file
            && !target.dirty
        {
            file.sync_all()?;
            if let Some(dir) = segment_path.parent() {
                dirs.push(dir.to_path_buf());
            }
        }
        if let Some(file) = &target.file
            && target.dirty
        {
            file.set_len(target.valid_bytes)?;
            file.sync_all()?;
            // Indexes of a segment that changed are rebuilt by the partition's recovery scan.
            for index in [segment_path.with_extension("index"), segment_path.with_extension("timeindex")] {
                match std::fs::remove_file(&index) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            if let Some(dir) = segment_path.parent() {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        sync_dir_blocking(&dir)?;
    }
    let reset = Checkpoint {
        counter: checkpoint.counter + 1,
        position: scanned.head,
        sequence: scanned.next_sequence,
        ring_bytes: checkpoint.ring_bytes,
    };
    write_checkpoint_blocking(&file, &reset)?;
    Ok(report)
}

/// A segment file being restored by replay: where its valid batches end.
struct ReplayTarget {
    file: Option<File>,
    valid_bytes: u64,
    next_offset: i64,
    dirty: bool,
    skip_rest: bool,
}

impl ReplayTarget {
    /// Opens the segment file (or notes it is missing) and finds the end of its valid,
    /// contiguous batches.
    fn open(dir: &Path, path: &Path, base_offset: i64) -> io::Result<Self> {
        if !path.exists() {
            // Only the newest segment may be missing (created by a roll whose file never
            // reached the disk); an older one was removed by retention, whole and synced.
            let newer_exists = std::fs::read_dir(dir)?
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(segment::parse_log_file_name))
                .any(|base| base >= base_offset);
            return Ok(Self {
                file: None,
                valid_bytes: 0,
                next_offset: base_offset,
                dirty: false,
                skip_rest: newer_exists,
            });
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let size = file.metadata()?.len();
        let (valid_bytes, next_offset) = valid_end(&file, size, base_offset)?;
        Ok(Self { file: Some(file), valid_bytes, next_offset, dirty: false, skip_rest: false })
    }

    fn write(&mut self, path: &Path, batch: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some(OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?);
        }
        if let Some(file) = &self.file {
            file.write_all_at(batch, self.valid_bytes)?;
        }
        self.valid_bytes += batch.len() as u64;
        self.dirty = true;
        Ok(())
    }
}

/// The end of the valid, contiguous batches of a segment file: bytes and next offset.
fn valid_end(file: &File, size: u64, base_offset: i64) -> io::Result<(u64, i64)> {
    const WINDOW_BYTES: usize = 1 << 20;
    let mut position = 0u64;
    let mut next_offset = base_offset;
    let mut window: Vec<u8> = Vec::new();
    let mut window_start = 0u64;
    while position < size {
        let remaining = (size - position) as usize;
        let need = batch::BATCH_LENGTH_PREFIX_BYTES.min(remaining);
        if position + need as u64 > window_start + window.len() as u64 || position < window_start {
            window = vec![0u8; WINDOW_BYTES.min(remaining)];
            let read = read_up_to(file, &mut window, position)?;
            window.truncate(read);
            window_start = position;
        }
        let at = (position - window_start) as usize;
        let Some(claimed) = batch::claimed_batch_size(&window[at..]) else { break };
        if claimed < batch::BATCH_HEADER_BYTES || claimed > remaining {
            break;
        }
        if at + claimed > window.len() {
            window = vec![0u8; WINDOW_BYTES.max(claimed).min(remaining)];
            let read = read_up_to(file, &mut window, position)?;
            window.truncate(read);
            window_start = position;
        }
        let at = (position - window_start) as usize;
        let Ok(header) = batch::validate_prefix(&window[at..at + claimed]) else { break };
        if header.base_offset != next_offset {
            break;
        }
        next_offset = header.next_offset();
        position += claimed as u64;
    }
    Ok((position, next_offset))
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, partition: i32, segment_base: i64, batch: &[u8]) -> JournalEntry {
        JournalEntry {
            partition: TopicPartition::new(topic, partition),
            segment_base,
            batch: Bytes::copy_from_slice(batch),
        }
    }

    /// A ring in memory: `write` places records like the runtime does.
    struct MemoryJournal {
        bytes: Vec<u8>,
        ring: JournalRing,
    }

    impl MemoryJournal {
        fn new(ring_bytes: u64) -> Self {
            let checkpoint = Checkpoint { counter: 0, position: 0, sequence: 1, ring_bytes };
            Self { bytes: vec![0u8; (RING_START + ring_bytes) as usize], ring: JournalRing::empty(checkpoint) }
        }

        fn write(&mut self, entries: &[JournalEntry]) -> bool {
            let padded = padded_len(record_len(entries));
            let Some(start) = self.ring.reserve(padded) else { return false };
            let offset = self.ring.file_offset(start) as usize;
            encode_record(self.ring.next_sequence, entries, &mut self.bytes[offset..offset + padded as usize]);
            self.ring.advance(start, padded);
            true
        }

        fn scan(&self, checkpoint: &Checkpoint) -> ScannedJournal {
            let bytes = &self.bytes;
            let mut read = |offset: u64, len: usize| {
                let end = (offset as usize + len).min(bytes.len());
                Ok(bytes[offset as usize..end].to_vec())
            };
            scan(&mut read, checkpoint).unwrap()
        }
    }

    #[test]
    fn header_slots_round_trip_and_the_newer_valid_one_wins() {
        let a = Checkpoint { counter: 4, position: 8192, sequence: 9, ring_bytes: 1 << 20 };
        let b = Checkpoint { counter: 5, ..a };
        assert_eq!(Checkpoint::decode(&a.encode()), Some(a));
        assert_eq!(Checkpoint::pick(Some(a), Some(b)), Some(b));
        let mut torn = b.encode();
        torn[20] ^= 1;
        assert_eq!(Checkpoint::decode(&torn), None);
        assert_eq!(Checkpoint::pick(Some(a), Checkpoint::decode(&torn)), Some(a));
        assert_ne!(a.slot_offset(), b.slot_offset());
    }

    #[test]
    fn golden_header_and_record_bytes() {
        let checkpoint = Checkpoint { counter: 3, position: 0x2000, sequence: 7, ring_bytes: 1 << 20 };
        let header = checkpoint.encode();
        assert_eq!(&header[0..8], b"CLJRNL01");
        assert_eq!(
            &header[8..40],
            &[
                0, 0, 0, 0, 0, 0, 0, 3, // counter
                0, 0, 0, 0, 0, 0, 0x20, 0, // position
                0, 0, 0, 0, 0, 0, 0, 7, // sequence
                0, 0, 0, 0, 0, 0x10, 0, 0, // ring bytes
            ]
        );
        assert_eq!(checkpoint.slot_offset(), HEADER_SLOT_BYTES);
        let entries = vec![entry("ab", 2, 5, b"xyz")];
        let mut record = vec![0u8; 4096];
        encode_record(9, &entries, &mut record);
        let len = RECORD_HEADER_BYTES + 2 + 2 + 4 + 8 + 4 + 3;
        assert_eq!(&record[0..4], b"CLJR");
        assert_eq!(
            &record[8..32],
            &[
                0, 0, 0, 0, 0, 0, 0, 9, // sequence
                0, 0, 0, len as u8, // record length
                0, 0, 0, 1, // entries
                0, 0, 0, 0, 0, 0, 0, 0, // reserved
            ]
        );
        assert_eq!(
            &record[32..len],
            &[
                0, 2, b'a', b'b', // topic
                0, 0, 0, 2, // partition
                0, 0, 0, 0, 0, 0, 0, 5, // segment base offset
                0, 0, 0, 3, b'x', b'y', b'z', // batch
            ]
        );
        assert_eq!(u32::from_be_bytes([record[4], record[5], record[6], record[7]]), crc32c::crc32c(&record[8..len]));
    }

    #[test]
    fn records_round_trip_and_any_damage_is_refused() {
        let entries = vec![entry("orders", 3, 100, b"first batch"), entry("t", 0, 0, &[7u8; 5000])];
        let len = record_len(&entries);
        let mut buffer = vec![0xAAu8; padded_len(len) as usize];
        encode_record(42, &entries, &mut buffer);
        assert!(buffer[len..].iter().all(|&b| b == 0), "padding is zeros");
        assert_eq!(decode_record(&buffer, 42), Some(entries));
        assert_eq!(decode_record(&buffer, 43), None, "wrong sequence");
        for at in [4, 9, 40, len - 1] {
            let mut damaged = buffer.clone();
            damaged[at] ^= 0x10;
            assert_eq!(decode_record(&damaged, 42), None, "damage at byte {at} accepted");
        }
        assert_eq!(decode_record(&buffer[..len - 1], 42), None, "torn record");
    }

    #[test]
    fn a_scan_follows_records_across_laps_and_stops_at_the_first_gap() {
        let mut journal = MemoryJournal::new(64 << 10);
        let start = journal.ring.checkpoint;
        let mut written = Vec::new();
        for n in 0..5u8 {
            let batch = vec![n; 9000];
            let entries = vec![entry("t", 0, 0, &batch)];
            assert!(journal.write(&entries));
            written.extend(entries);
        }
        let scanned = journal.scan(&start);
        assert_eq!(scanned.records, 5);
        assert_eq!(scanned.entries, written);
        // A checkpoint releases the space; later records wrap to the next lap.
        journal.ring.checkpoint = journal.ring.checkpoint_at_head();
        let checkpoint = journal.ring.checkpoint;
        let mut after = Vec::new();
        for n in 10..15u8 {
            let entries = vec![entry("t", 0, 0, &vec![n; 9000])];
            assert!(journal.write(&entries), "record {n} should fit after the checkpoint");
            after.extend(entries);
        }
        assert!(journal.ring.head > journal.ring.ring_bytes, "the records wrapped");
        let scanned = journal.scan(&checkpoint);
        assert_eq!(scanned.entries, after, "stale records of the last lap are not replayed");
        assert_eq!(scanned.head, journal.ring.head);
        assert_eq!(scanned.next_sequence, journal.ring.next_sequence);
    }

    #[test]
    fn a_full_ring_refuses_a_record_rather_than_overwrite_one_after_the_checkpoint() {
        let mut journal = MemoryJournal::new(32 << 10);
        let mut fitted = 0;
        while journal.write(&[entry("t", 0, 0, &[1u8; 6000])]) {
            fitted += 1;
        }
        assert_eq!(fitted, 4, "four 8 KiB records fill a 32 KiB ring");
        assert_eq!(journal.ring.used_bytes(), 32 << 10);
    }

    #[test]
    fn a_torn_last_record_ends_the_scan_before_it() {
        let mut journal = MemoryJournal::new(64 << 10);
        let start = journal.ring.checkpoint;
        assert!(journal.write(&[entry("t", 0, 0, &[1u8; 100])]));
        let second_at = journal.ring.file_offset(journal.ring.head) as usize;
        assert!(journal.write(&[entry("t", 0, 0, &[2u8; 100])]));
        journal.bytes[second_at + 60] ^= 0xFF;
        let scanned = journal.scan(&start);
        assert_eq!(scanned.records, 1);
        assert_eq!(scanned.head, RECORD_ALIGN);
    }
}
