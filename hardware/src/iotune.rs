//! `iotune`: measure what a data dir's device can do, with io_uring and O_DIRECT.
//!
//! The measurement runs on plain threads (no reactor) against a scratch file inside the data dir
//! (`.iotune-scratch`, removed afterwards), so it measures the filesystem and device the broker
//! will really use. Every I/O is O_DIRECT and block aligned: the page cache cannot serve or
//! absorb any of it. The scratch file is preallocated and then written in full before anything
//! is read, so reads hit real written extents (reading a hole or an unwritten extent is answered
//! by the filesystem without touching the device and would fake the read figures). What O_DIRECT
//! cannot rule out is a cache *below* the kernel: a device's DRAM, or on a VM the host's page
//! cache behind a virtio disk. The default 1 GiB file is larger than drive caches; a host cache
//! can still hold it, in which case read figures describe the virtual disk as the guest sees it
//! (which is also what the broker will see, and what fio sees with the same file).
//!
//! Phases, in order: fill (sequential write of the whole file, not part of the budget), headline
//! sequential write and read (1 MiB, queue depth 16), 4 KiB random reads (queue depth 32), write
//! and read sweeps over block sizes × queue depths (the knee), and 4 KiB write+fdatasync latency
//! (a linked write → fsync(DATASYNC) pair at queue depth 1, overwriting written blocks). The
//! headline write comes before the write sweep on purpose: devices with a write-back cache in
//! front (a VM host's page cache, an SLC cache) slow down after many seconds of writes, and the
//! headline figure should not depend on how long the sweep happened to run before it.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use io_uring::{IoUring, opcode, squeue, types};
use serde::{Deserialize, Serialize};

/// File name of the profile inside a data dir; the broker reads it at start.
pub const PROFILE_FILE_NAME: &str = "io-profile.json";
/// Name of the scratch file iotune writes inside the data dir.
pub const SCRATCH_FILE_NAME: &str = ".iotune-scratch";
/// Version of the profile file format written by [`IoProfile::save`].
pub const PROFILE_FORMAT_VERSION: u32 = 1;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// Alignment of every buffer, offset and length: covers 512 B and 4 KiB logical blocks.
const ALIGNMENT_BYTES: u64 = 4096;
/// Queue depth of the fill pass (1 MiB writes).
const FILL_QUEUE_DEPTH: u32 = 16;

/// What to measure and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct IotuneConfig {
    /// Budget for the timed phases (the fill pass comes on top, bounded by the file size).
    pub duration: Duration,
    /// Size of the scratch file; clamped to a quarter of the free space.
    pub file_size_bytes: u64,
    pub block_sizes_bytes: Vec<u64>,
    pub queue_depths: Vec<u32>,
    pub headline_block_size_bytes: u64,
    pub headline_queue_depth: u32,
    pub random_block_size_bytes: u64,
    pub random_queue_depth: u32,
    pub sync_block_size_bytes: u64,
}

impl IotuneConfig {
    /// Default total run time of the timed phases.
    pub const DEFAULT_DURATION: Duration = Duration::from_secs(40);

    /// The full measurement: 4 KiB..1 MiB × queue depth 1..32, 1 GiB scratch file.
    pub fn full(duration: Duration) -> IotuneConfig {
        IotuneConfig {
            duration,
            file_size_bytes: 1024 * MIB,
            block_sizes_bytes: vec![4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB],
            queue_depths: vec![1, 2, 4, 8, 16, 32],
            headline_block_size_bytes: MIB,
            headline_queue_depth: 16,
            random_block_size_bytes: 4 * KIB,
            random_queue_depth: 32,
            sync_block_size_bytes: 4 * KIB,
        }
    }

    /// A few-second run on a 16 MiB file, for tests and smoke checks. Figures are indicative only.
    pub fn tiny() -> IotuneConfig {
        IotuneConfig {
            duration: Duration::from_millis(1500),
            file_size_bytes: 16 * MIB,
            block_sizes_bytes: vec![4 * KIB, 64 * KIB],
            queue_depths: vec![1, 4],
            headline_block_size_bytes: 256 * KIB,
            headline_queue_depth: 4,
            random_block_size_bytes: 4 * KIB,
            random_queue_depth: 8,
            sync_block_size_bytes: 4 * KIB,
        }
    }
}

/// The measured capabilities of a data dir's device. Saved as `DATA_DIR/io-profile.json`; the
/// broker sizes its write batches and in-flight I/O from it (the knee) and reports the rest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IoProfile {
    pub format_version: u32,
    pub data_dir: PathBuf,
    /// Kernel name of the device, when the caller knows it (the CLI fills it from the probe).
    pub device: Option<String>,
    pub measured_at_unix_secs: u64,
    /// Wall time of the whole run, fill included. (Integers only in the profile: JSON floats do
    /// not round-trip exactly, and a reloaded profile must equal the saved one.)
    pub run_duration_ms: u64,
    pub file_size_bytes: u64,
    /// Sequential write bandwidth at `headline_block_size_bytes` × `headline_queue_depth`.
    pub write_bandwidth_bytes_per_sec: u64,
    /// Sequential read bandwidth at the same block size and queue depth.
    pub read_bandwidth_bytes_per_sec: u64,
    pub headline_block_size_bytes: u64,
    pub headline_queue_depth: u32,
    /// The first write of the freshly preallocated file (unwritten extents being converted).
    pub fill_write_bandwidth_bytes_per_sec: u64,
    pub random_read_iops: u64,
    pub random_read_block_size_bytes: u64,
    pub random_read_queue_depth: u32,
    /// Latency of one 4 KiB O_DIRECT write followed by fdatasync, queue depth 1.
    pub fdatasync_latency_us: LatencyPercentiles,
    /// Smallest write configuration reaching 90 % of the sweep's peak write bandwidth.
    pub write_knee: Knee,
    /// Smallest read configuration reaching 90 % of the sweep's peak read bandwidth.
    pub read_knee: Knee,
    /// The write knee's block size: the group-commit write size worth aiming for.
    pub knee_block_size_bytes: u64,
    /// The write knee's queue depth: in-flight writes worth keeping per device.
    pub knee_queue_depth: u32,
    pub sweep: Vec<SweepPoint>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencyPercentiles {
    pub samples: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// A knee of the bandwidth curve.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Knee {
    pub block_size_bytes: u64,
    pub queue_depth: u32,
    pub bandwidth_bytes_per_sec: u64,
    /// The sweep's peak, for reference.
    pub peak_bandwidth_bytes_per_sec: u64,
}

/// Direction of a sweep point.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Read,
    Write,
}

/// One cell of the block size × queue depth sweep (sequential I/O).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct SweepPoint {
    pub direction: Direction,
    pub block_size_bytes: u64,
    pub queue_depth: u32,
    pub bandwidth_bytes_per_sec: u64,
    pub iops: u64,
}

/// Errors of iotune and of profile files. Each names the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum IotuneError {
    #[error("{operation} {path}: {source}")]
    Io { operation: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{operation} {path}: {expected} bytes requested, {transferred} transferred")]
    ShortIo { operation: &'static str, path: PathBuf, expected: u64, transferred: u64 },
    #[error("not enough free space in {path}: {available_bytes} bytes free, need {needed_bytes}")]
    NoSpace { path: PathBuf, available_bytes: u64, needed_bytes: u64 },
    #[error("invalid iotune configuration: {0}")]
    Config(String),
    #[error("parse io profile {path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("io profile {path} has format version {found}, this build reads {supported}")]
    Version { path: PathBuf, found: u32, supported: u32 },
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IotuneError {
    let path = path.to_path_buf();
    move |source| IotuneError::Io { operation, path, source }
}

impl IoProfile {
    /// Where the broker looks for the profile of a data dir.
    pub fn default_path(data_dir: &Path) -> PathBuf {
        data_dir.join(PROFILE_FILE_NAME)
    }

    /// Writes the profile as pretty JSON, atomically: a temporary file is written and synced,
    /// then renamed over `path`, so a crash leaves either the old or the new profile.
    pub fn save(&self, path: &Path) -> Result<(), IotuneError> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|source| IotuneError::Parse { path: path.to_path_buf(), source })?;
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let mut file = File::create(&temporary).map_err(io_error("create", &temporary))?;
        file.write_all(json.as_bytes()).and_then(|()| file.write_all(b"\n")).map_err(io_error("write", &temporary))?;
        file.sync_all().map_err(io_error("fsync", &temporary))?;
        std::fs::rename(&temporary, path).map_err(io_error("rename", path))?;
        Ok(())
    }

    /// Reads a profile. `Ok(None)` if the file does not exist (the broker then runs with
    /// defaults); a file that exists but cannot be read or parsed is an error, not silently
    /// ignored, because a wrong profile would mis-size every shard's I/O.
    pub fn load(path: &Path) -> Result<Option<IoProfile>, IotuneError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error("read", path)(error)),
        };
        let profile: IoProfile =
            serde_json::from_str(&text).map_err(|source| IotuneError::Parse { path: path.to_path_buf(), source })?;
        if profile.format_version != PROFILE_FORMAT_VERSION {
            return Err(IotuneError::Version {
                path: path.to_path_buf(),
                found: profile.format_version,
                supported: PROFILE_FORMAT_VERSION,
            });
        }
        Ok(Some(profile))
    }
}

/// Picks the knee: among points reaching ≥ 90 % of the peak bandwidth, the one with the fewest
/// bytes in flight (block size × queue depth), then the lowest queue depth. Pure function.
pub fn find_knee(points: &[SweepPoint], direction: Direction) -> Option<Knee> {
    let points: Vec<&SweepPoint> = points.iter().filter(|point| point.direction == direction).collect();
    let peak = points.iter().map(|p| p.bandwidth_bytes_per_sec).max()?;
    let knee = points
        .iter()
        .filter(|p| p.bandwidth_bytes_per_sec as f64 >= 0.9 * peak as f64)
        .min_by_key(|p| (p.block_size_bytes * u64::from(p.queue_depth), p.queue_depth))?;
    Some(Knee {
        block_size_bytes: knee.block_size_bytes,
        queue_depth: knee.queue_depth,
        bandwidth_bytes_per_sec: knee.bandwidth_bytes_per_sec,
        peak_bandwidth_bytes_per_sec: peak,
    })
}

/// Percentiles of latency samples (microseconds), nearest-rank. Pure function.
pub fn percentiles(samples_us: &mut [u64]) -> LatencyPercentiles {
    if samples_us.is_empty() {
        return LatencyPercentiles::default();
    }
    samples_us.sort_unstable();
    let rank = |fraction: f64| {
        let index = ((fraction * samples_us.len() as f64).ceil() as usize).max(1) - 1;
        samples_us[index.min(samples_us.len() - 1)]
    };
    LatencyPercentiles {
        samples: samples_us.len() as u64,
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        p999: rank(0.999),
        max: samples_us[samples_us.len() - 1],
    }
}

/// A block-aligned heap buffer for O_DIRECT.
struct AlignedBuffer {
    pointer: *mut u8,
    layout: Layout,
}

impl AlignedBuffer {
    fn new(length: usize) -> Result<AlignedBuffer, IotuneError> {
        let layout = Layout::from_size_align(length, ALIGNMENT_BYTES as usize)
            .map_err(|error| IotuneError::Config(format!("buffer of {length} bytes: {error}")))?;
        assert!(layout.size() > 0);
        // SAFETY: the layout has a non-zero size (asserted above).
        let pointer = unsafe { alloc_zeroed(layout) };
        if pointer.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Ok(AlignedBuffer { pointer, layout })
    }

    /// Fills the buffer with non-repeating bytes so compressing or deduplicating devices
    /// cannot shortcut the writes.
    fn fill_pseudo_random(&mut self, seed: u64) {
        let mut state = seed | 1;
        // SAFETY: pointer is valid for layout.size() bytes and we hold the only reference.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.pointer, self.layout.size()) };
        for chunk in bytes.chunks_mut(8) {
            state = xorshift(state);
            let word = state.to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated with exactly this layout in `new`.
        unsafe { dealloc(self.pointer, self.layout) }
    }
}

fn xorshift(mut state: u64) -> u64 {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    state
}

/// The scratch file; removed when dropped, whatever happened.
struct Scratch {
    file: File,
    path: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a leftover scratch file is harmless and has a recognisable name.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One timed (or byte-bounded) run of same-sized I/Os at a fixed queue depth.
#[derive(Debug, Clone, Copy)]
struct Job {
    direction: Direction,
    random: bool,
    block_size_bytes: u64,
    queue_depth: u32,
    region_bytes: u64,
    duration: Duration,
    /// Stop issuing after this many bytes (the fill pass writes the file exactly once).
    bytes_max: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct JobResult {
    bytes: u64,
    operations: u64,
    elapsed: Duration,
}

impl JobResult {
    fn bandwidth(&self) -> u64 {
        (self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)) as u64
    }
    fn iops(&self) -> u64 {
        (self.operations as f64 / self.elapsed.as_secs_f64().max(1e-9)) as u64
    }
}

struct Runner {
    ring: IoUring,
    scratch: Scratch,
    seed: u64,
}

impl Runner {
    fn ring_error(&self, operation: &'static str) -> impl FnOnce(std::io::Error) -> IotuneError {
        io_error(operation, &self.scratch.path)
    }

    fn push(&mut self, entry: &squeue::Entry) -> Result<(), IotuneError> {
        // SAFETY: every buffer referenced by a submitted entry stays alive until its completion
        // is reaped: `run` and `sync_latencies` drain all in-flight I/O before returning.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| IotuneError::Config("io_uring submission queue full (queue depth > ring)".into()))
    }

    fn run(&mut self, job: Job) -> Result<JobResult, IotuneError> {
        let block_size = job.block_size_bytes;
        let blocks = job.region_bytes / block_size;
        if blocks == 0 || !block_size.is_multiple_of(ALIGNMENT_BYTES) {
            return Err(IotuneError::Config(format!(
                "block size {block_size} must be a multiple of {ALIGNMENT_BYTES} and fit the file"
            )));
        }
        let mut buffers = Vec::new();
        for slot in 0..job.queue_depth {
            let mut buffer = AlignedBuffer::new(block_size as usize)?;
            if job.direction == Direction::Write {
                buffer.fill_pseudo_random(self.seed ^ u64::from(slot));
            }
            buffers.push(buffer);
        }
        let fd = types::Fd(self.scratch.file.as_raw_fd());
        let mut free_slots: Vec<usize> = (0..buffers.len()).rev().collect();
        let mut next_block = 0u64;
        let mut random_state = self.seed;
        let mut issued_bytes = 0u64;
        let mut in_flight = 0u32;
        let mut result = JobResult { bytes: 0, operations: 0, elapsed: Duration::ZERO };
        let start = Instant::now();
        let mut first_error = None;
        loop {
            let stop = first_error.is_some()
                || start.elapsed() >= job.duration
                || job.bytes_max.is_some_and(|max| issued_bytes >= max);
            // Once stopped (deadline, byte budget or error), only drain.
            while let Some(slot) = if stop { None } else { free_slots.pop() } {
                let block = if job.random {
                    random_state = xorshift(random_state);
                    random_state % blocks
                } else {
                    let block = next_block;
                    next_block = (next_block + 1) % blocks;
                    block
                };
                let pointer = buffers[slot].pointer;
                let entry = match job.direction {
                    Direction::Write => {
                        opcode::Write::new(fd, pointer, block_size as u32).offset(block * block_size).build()
                    }
                    Direction::Read => {
                        opcode::Read::new(fd, pointer, block_size as u32).offset(block * block_size).build()
                    }
                };
                self.push(&entry.user_data(slot as u64))?;
                in_flight += 1;
                issued_bytes += block_size;
                if job.bytes_max.is_some_and(|max| issued_bytes >= max) {
                    break;
                }
            }
            if in_flight == 0 {
                break;
            }
            self.ring.submit_and_wait(1).map_err(self.ring_error("io_uring_enter"))?;
            let operation = match job.direction {
                Direction::Write => "write (O_DIRECT)",
                Direction::Read => "read (O_DIRECT)",
            };
            // Reap in place (no per-batch allocation: this loop is the measured hot path).
            for cqe in self.ring.completion() {
                let (slot, transferred) = (cqe.user_data(), cqe.result());
                in_flight -= 1;
                free_slots.push(slot as usize);
                if transferred < 0 {
                    first_error.get_or_insert(IotuneError::Io {
                        operation,
                        path: self.scratch.path.clone(),
                        source: std::io::Error::from_raw_os_error(-transferred),
                    });
                } else if transferred as u64 != block_size {
                    first_error.get_or_insert(IotuneError::ShortIo {
                        operation,
                        path: self.scratch.path.clone(),
                        expected: block_size,
                        transferred: transferred as u64,
                    });
                } else {
                    result.bytes += block_size;
                    result.operations += 1;
                }
            }
        }
        result.elapsed = start.elapsed();
        self.seed = xorshift(random_state ^ self.seed);
        match first_error {
            Some(error) => Err(error),
            None => Ok(result),
        }
    }

    /// Latencies (µs) of a 4 KiB write linked to an fdatasync, one pair at a time.
    fn sync_latencies(
        &mut self,
        block_size: u64,
        region_bytes: u64,
        duration: Duration,
    ) -> Result<Vec<u64>, IotuneError> {
        const SAMPLES_MAX: usize = 200_000;
        let mut buffer = AlignedBuffer::new(block_size as usize)?;
        buffer.fill_pseudo_random(self.seed);
        let fd = types::Fd(self.scratch.file.as_raw_fd());
        let blocks = (region_bytes / block_size).max(1);
        let mut samples = Vec::new();
        let start = Instant::now();
        let mut block = 0u64;
        while start.elapsed() < duration && samples.len() < SAMPLES_MAX {
            let write = opcode::Write::new(fd, buffer.pointer, block_size as u32)
                .offset(block * block_size)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(0);
            let sync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(1);
            block = (block + 1) % blocks;
            let issued = Instant::now();
            self.push(&write)?;
            self.push(&sync)?;
            let mut reaped = 0;
            let mut failure = None;
            while reaped < 2 {
                self.ring.submit_and_wait(2 - reaped).map_err(self.ring_error("io_uring_enter"))?;
                for cqe in self.ring.completion() {
                    reaped += 1;
                    if cqe.result() < 0 {
                        let operation = if cqe.user_data() == 0 { "write (O_DIRECT)" } else { "fdatasync" };
                        failure.get_or_insert((operation, cqe.result()));
                    }
                }
            }
            if let Some((operation, code)) = failure {
                return Err(IotuneError::Io {
                    operation,
                    path: self.scratch.path.clone(),
                    source: std::io::Error::from_raw_os_error(-code),
                });
            }
            samples.push(issued.elapsed().as_micros() as u64);
        }
        Ok(samples)
    }
}

fn available_bytes(path: &Path) -> Result<u64, IotuneError> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|error| IotuneError::Config(format!("path {}: {error}", path.display())))?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value for it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid out-pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io_error("statvfs", path)(std::io::Error::last_os_error()));
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

fn open_scratch(data_dir: &Path, size_bytes: u64) -> Result<Scratch, IotuneError> {
    let path = data_dir.join(SCRATCH_FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|source| IotuneError::Io {
            operation: "open O_DIRECT (does the filesystem support direct I/O?)",
            path: path.clone(),
            source,
        })?;
    let scratch = Scratch { file, path };
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::fallocate(scratch.file.as_raw_fd(), 0, 0, size_bytes as libc::off_t) };
    if rc != 0 {
        return Err(io_error("fallocate", &scratch.path)(std::io::Error::last_os_error()));
    }
    Ok(scratch)
}

/// Measures the device behind `data_dir` (created if missing). `progress` receives one short
/// line per phase. Runs for about `config.duration` plus the time to write the scratch file once.
pub fn run(data_dir: &Path, config: &IotuneConfig, progress: &mut dyn FnMut(&str)) -> Result<IoProfile, IotuneError> {
    validate(config)?;
    let run_start = Instant::now();
    std::fs::create_dir_all(data_dir).map_err(io_error("create data dir", data_dir))?;
    let available = available_bytes(data_dir)?;
    // Never take more than a quarter of the free space; keep a useful minimum.
    let minimum = 4 * config.headline_block_size_bytes.max(MIB);
    let file_size = (config.file_size_bytes.min(available / 4) / MIB) * MIB;
    if file_size < minimum {
        return Err(IotuneError::NoSpace {
            path: data_dir.to_path_buf(),
            available_bytes: available,
            needed_bytes: minimum * 4,
        });
    }
    let depth_max = config
        .queue_depths
        .iter()
        .copied()
        .chain([config.headline_queue_depth, config.random_queue_depth, FILL_QUEUE_DEPTH])
        .max()
        .unwrap_or(2);
    let scratch = open_scratch(data_dir, file_size)?;
    let ring = IoUring::new(depth_max.next_power_of_two()).map_err(io_error("io_uring_setup for", data_dir))?;
    let mut runner = Runner { ring, scratch, seed: 0x9e37_79b9_7f4a_7c15 };

    progress(&format!("fill: writing {} MiB scratch file", file_size / MIB));
    let fill = runner.run(Job {
        direction: Direction::Write,
        random: false,
        block_size_bytes: MIB.min(file_size),
        queue_depth: FILL_QUEUE_DEPTH,
        region_bytes: file_size,
        duration: Duration::from_secs(3600),
        bytes_max: Some(file_size),
    })?;
    runner.scratch.file.sync_all().map_err(io_error("fsync", &runner.scratch.path))?;

    let budget = config.duration.as_secs_f64();
    let cells = (config.block_sizes_bytes.len() * config.queue_depths.len()).max(1) as f64;
    // 40 % of the budget for the two sweeps, 15 % for each of the four headline phases.
    let cell = Duration::from_secs_f64(budget * 0.20 / cells);
    let phase = Duration::from_secs_f64(budget * 0.15);
    let headline = |direction| Job {
        direction,
        random: false,
        block_size_bytes: config.headline_block_size_bytes,
        queue_depth: config.headline_queue_depth,
        region_bytes: file_size,
        duration: phase,
        bytes_max: None,
    };
    progress("sequential write");
    let write = runner.run(headline(Direction::Write))?;
    progress("sequential read");
    let read = runner.run(headline(Direction::Read))?;
    progress("random read");
    let random = runner.run(Job {
        direction: Direction::Read,
        random: true,
        block_size_bytes: config.random_block_size_bytes,
        queue_depth: config.random_queue_depth,
        region_bytes: file_size,
        duration: phase,
        bytes_max: None,
    })?;
    let mut sweep = Vec::new();
    for direction in [Direction::Write, Direction::Read] {
        progress(&format!(
            "sweep {}: {} block sizes x {} queue depths",
            format!("{direction:?}").to_lowercase(),
            config.block_sizes_bytes.len(),
            config.queue_depths.len()
        ));
        for &block_size in &config.block_sizes_bytes {
            for &depth in &config.queue_depths {
                let result = runner.run(Job {
                    direction,
                    random: false,
                    block_size_bytes: block_size,
                    queue_depth: depth,
                    region_bytes: file_size,
                    duration: cell,
                    bytes_max: None,
                })?;
                sweep.push(SweepPoint {
                    direction,
                    block_size_bytes: block_size,
                    queue_depth: depth,
                    bandwidth_bytes_per_sec: result.bandwidth(),
                    iops: result.iops(),
                });
            }
        }
    }
    progress("write + fdatasync latency");
    let mut latencies = runner.sync_latencies(config.sync_block_size_bytes, file_size, phase)?;
    let fdatasync_latency_us = percentiles(&mut latencies);
    drop(runner);

    let write_knee = find_knee(&sweep, Direction::Write).unwrap_or_default();
    let read_knee = find_knee(&sweep, Direction::Read).unwrap_or_default();
    Ok(IoProfile {
        format_version: PROFILE_FORMAT_VERSION,
        data_dir: data_dir.to_path_buf(),
        device: None,
        measured_at_unix_secs: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs()),
        run_duration_ms: run_start.elapsed().as_millis() as u64,
        file_size_bytes: file_size,
        write_bandwidth_bytes_per_sec: write.bandwidth(),
        read_bandwidth_bytes_per_sec: read.bandwidth(),
        headline_block_size_bytes: config.headline_block_size_bytes,
        headline_queue_depth: config.headline_queue_depth,
        fill_write_bandwidth_bytes_per_sec: fill.bandwidth(),
        random_read_iops: random.iops(),
        random_read_block_size_bytes: config.random_block_size_bytes,
        random_read_queue_depth: config.random_queue_depth,
        fdatasync_latency_us,
        knee_block_size_bytes: write_knee.block_size_bytes,
        knee_queue_depth: write_knee.queue_depth,
        write_knee,
        read_knee,
        sweep,
    })
}

fn validate(config: &IotuneConfig) -> Result<(), IotuneError> {
    let sizes = config.block_sizes_bytes.iter().chain([
        &config.headline_block_size_bytes,
        &config.random_block_size_bytes,
        &config.sync_block_size_bytes,
    ]);
    for &size in sizes {
        if size == 0 || !size.is_multiple_of(ALIGNMENT_BYTES) || size > 64 * MIB {
            return Err(IotuneError::Config(format!(
                "block size {size} must be a non-zero multiple of {ALIGNMENT_BYTES} up to 64 MiB"
            )));
        }
    }
    let depths = config.queue_depths.iter().chain([&config.headline_queue_depth, &config.random_queue_depth]);
    for &depth in depths {
        if depth == 0 || depth > 1024 {
            return Err(IotuneError::Config(format!("queue depth {depth} must be in 1..=1024")));
        }
    }
    if config.duration.is_zero() {
        return Err(IotuneError::Config("duration must be positive".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(direction: Direction, block_size: u64, depth: u32, bandwidth: u64) -> SweepPoint {
        SweepPoint {
            direction,
            block_size_bytes: block_size,
            queue_depth: depth,
            bandwidth_bytes_per_sec: bandwidth,
            iops: bandwidth / block_size,
        }
    }

    #[test]
    fn knee_is_the_cheapest_point_near_the_peak() {
        let points = [
            point(Direction::Write, 4 * KIB, 1, 100),
            point(Direction::Write, 4 * KIB, 32, 800),
            point(Direction::Write, 64 * KIB, 4, 950),
            point(Direction::Write, MIB, 16, 1000),
            point(Direction::Read, 4 * KIB, 1, 5000),
        ];
        let knee = find_knee(&points, Direction::Write).unwrap();
        assert_eq!((knee.block_size_bytes, knee.queue_depth), (64 * KIB, 4));
        assert_eq!(knee.peak_bandwidth_bytes_per_sec, 1000);
        let read = find_knee(&points, Direction::Read).unwrap();
        assert_eq!((read.block_size_bytes, read.queue_depth), (4 * KIB, 1));
        assert_eq!(find_knee(&[], Direction::Read), None);
    }

    #[test]
    fn percentiles_nearest_rank() {
        let mut samples: Vec<u64> = (1..=1000).rev().collect();
        let p = percentiles(&mut samples);
        assert_eq!((p.samples, p.p50, p.p90, p.p99, p.p999, p.max), (1000, 500, 900, 990, 999, 1000));
        assert_eq!(percentiles(&mut []), LatencyPercentiles::default());
    }

    #[test]
    fn config_validation_rejects_unaligned_blocks_and_zero_depth() {
        let mut config = IotuneConfig::tiny();
        config.block_sizes_bytes.push(1000);
        assert!(validate(&config).is_err());
        let mut config = IotuneConfig::tiny();
        config.queue_depths.push(0);
        assert!(validate(&config).is_err());
        assert!(validate(&IotuneConfig::full(Duration::from_secs(10))).is_ok());
    }
}
