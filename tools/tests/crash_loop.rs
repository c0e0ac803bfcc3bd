//! The crash loop: the real `corelog` binary under an acks=all idempotent producer load over
//! several partitions, killed with SIGKILL at random moments and restarted, cycle after cycle.
//! After every restart the log is checked against what the producers were told:
//!
//! - every acknowledged record is present, once, at the offset it was acknowledged at;
//! - every partition holds its records in the order they were produced, each at most once;
//! - no acknowledged offset is at or beyond the high watermark, and the high watermark (the
//!   durable end offset under `flush = always`) never goes backwards across a crash.
//!
//! Segments are 64 KiB, so every cycle kills the broker around segment rolls; a second topic
//! has `retention.bytes` set and a 100 ms retention check, so segments are being deleted as it
//! dies; every third cycle kills the broker again while it recovers (indexes of the segments
//! the kill cut short are rebuilt at start-up), before its listener is up.
//!
//! Short form (in the README's test command): `CYCLES_SHORT` cycles. Long form:
//! `scripts/crash-loop.sh --cycles N [--seed S]`, which sets `CORELOG_CRASH_CYCLES` and
//! `CORELOG_CRASH_SEED`. Every run prints its seed; the kill moments derive from it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::WAIT;
use common::kafka::*;
use common::proxy::Proxy;
use futures_lite::future::block_on;
use rdkafka::Offset;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::producer::{BaseProducer, Producer};

const CYCLES_ENV: &str = "CORELOG_CRASH_CYCLES";
const SEED_ENV: &str = "CORELOG_CRASH_SEED";
const CYCLES_SHORT: usize = 6;
/// Acknowledgements (over both topics) each cycle waits for before it picks its kill moment.
const ACKS_PER_CYCLE_MIN: usize = 2_000;
const SEGMENT_BYTES: &str = "65536";
const RETENTION_BYTES: &str = "1048576";

/// splitmix64: the kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// One topic under load: a producer thread sending sequenced messages through the proxy.
struct Load {
    topic: &'static str,
    partitions: usize,
    /// Retention deletes old segments, so the log start offset moves.
    trimmed: bool,
    deliveries: Arc<Deliveries>,
    thread: Option<JoinHandle<(usize, Result<(), String>)>>,
    check: Check,
}

impl Load {
    fn start(proxy: &Proxy, topic: &'static str, partitions: usize, trimmed: bool, stop: &Arc<AtomicBool>) -> Self {
        let producer: BaseProducer<Deliveries> = producer(&proxy.address(), &IDEMPOTENT);
        let deliveries = producer.context().clone();
        let stop = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) {
                for _ in 0..50 {
                    send_sequenced(&producer, topic, partitions, sent);
                    sent += 1;
                }
                producer.poll(Duration::from_millis(5));
            }
            let flushed =
                producer.flush(WAIT).map_err(|e| format!("{e}; client errors: {:?}", producer.context().errors()));
            (sent, flushed)
        });
        Self { topic, partitions, trimmed, deliveries, thread: Some(thread), check: Check::new(partitions) }
    }

    /// Stops after the stop flag is set; returns how many messages were sent.
    fn join(&mut self) -> usize {
        let (sent, flushed) = self.thread.take().expect("joined once").join().expect("the producing thread");
        flushed.unwrap_or_else(|e| panic!("{}: flush after the last cycle: {e}", self.topic));
        sent
    }
}

/// What has been read back of one sequenced topic, kept across cycles so that each cycle reads
/// only the records appended since the last one.
struct Check {
    /// Per partition, the sequence number read at each offset (`u32::MAX`: not read, because
    /// retention deleted it first).
    sequences: Vec<Vec<u32>>,
    /// Per partition, the last sequence number read (it must increase).
    last_sequence: Vec<Option<u32>>,
    high_watermarks: Vec<i64>,
    log_start_offsets: Vec<i64>,
    /// Acknowledgements already checked (the delivery reports only grow).
    acks_checked: usize,
    lost: Vec<String>,
    duplicates_or_disorder: Vec<String>,
}

impl Check {
    fn new(partitions: usize) -> Self {
        Self {
            sequences: vec![Vec::new(); partitions],
            last_sequence: vec![None; partitions],
            high_watermarks: vec![0; partitions],
            log_start_offsets: vec![0; partitions],
            acks_checked: 0,
            lost: Vec::new(),
            duplicates_or_disorder: Vec::new(),
        }
    }
}

/// Reads what `load`'s topic gained since the last check and checks every acknowledgement
/// received so far. Panics at the first broken promise, naming it.
fn check(address: &str, load: &mut Load, cycle: usize) {
    // Acknowledgements first: each of them was durable before this check reads the watermarks.
    let acked = load.deliveries.acked();
    let (topic, partitions) = (load.topic, load.partitions);
    let check = &mut load.check;
    let mut ranges = Vec::new();
    for partition in 0..partitions {
        let (low, high) = watermarks(address, topic, partition as i32);
        let previous_high = check.high_watermarks[partition];
        assert!(
            high >= previous_high,
            "cycle {cycle}: {topic}-{partition}: the high watermark went back from {previous_high} to {high}"
        );
        assert!(low >= check.log_start_offsets[partition], "cycle {cycle}: {topic}-{partition}: log start went back");
        if !load.trimmed {
            assert_eq!(low, 0, "cycle {cycle}: {topic}-{partition}: nothing deletes from this topic");
        }
        check.high_watermarks[partition] = high;
        check.log_start_offsets[partition] = low;
        let read_to = check.sequences[partition].len() as i64;
        let from = read_to.max(low);
        check.sequences[partition].resize(from as usize, u32::MAX);
        if from < high {
            ranges.push((partition as i32, Offset::Offset(from), high));
        }
    }
    let consumed = consume_trimmed(address, topic, &ranges);
    for (&(partition, start, _), records) in ranges.iter().zip(&consumed) {
        let Offset::Offset(from) = start else { unreachable!("ranges start at offsets") };
        let partition = partition as usize;
        let mut expected_offset = from;
        for record in records {
            // Retention may delete the start of the range while it is read.
            assert!(record.offset >= expected_offset, "{topic}-{partition}: offsets went back at {}", record.offset);
            check.sequences[partition].resize(record.offset as usize, u32::MAX);
            expected_offset = record.offset + 1;
            let key = String::from_utf8(record.key.clone().expect("a key")).unwrap();
            let sequence: u32 = key.parse().unwrap();
            assert_eq!(sequence as usize % partitions, partition, "{topic}-{partition}: misplaced {record:?}");
            assert_eq!(record.value.as_deref(), Some(&sequenced_value(sequence as usize)[..]), "{topic}-{partition}");
            if check.last_sequence[partition].is_some_and(|last| last >= sequence) {
                check.duplicates_or_disorder.push(format!(
                    "cycle {cycle}: {topic}-{partition} offset {}: sequence {sequence} after {:?}",
                    record.offset, check.last_sequence[partition]
                ));
            }
            check.last_sequence[partition] = Some(sequence);
            check.sequences[partition].push(sequence);
        }
    }
    if load.trimmed {
        // Retention may have deleted records while they were read: they were below the log
        // start offset by the time they were looked for.
        for partition in 0..partitions {
            let (low, _) = watermarks(address, topic, partition as i32);
            check.log_start_offsets[partition] = check.log_start_offsets[partition].max(low);
        }
    }
    for ack in &acked[check.acks_checked..] {
        let partition = ack.partition as usize;
        assert!(
            ack.offset < check.high_watermarks[partition],
            "cycle {cycle}: {topic}: {ack:?} acknowledged at or beyond the high watermark {}",
            check.high_watermarks[partition]
        );
        let read = check.sequences[partition].get(ack.offset as usize).copied().unwrap_or(u32::MAX);
        let deleted = read == u32::MAX && ack.offset < check.log_start_offsets[partition];
        if !deleted && read as usize != ack.sequence {
            check.lost.push(format!("cycle {cycle}: {topic}: {ack:?} but the log holds sequence {read} there"));
        }
    }
    check.acks_checked = acked.len();
    assert!(check.lost.is_empty(), "acknowledged records lost: {:?}", &check.lost[..check.lost.len().min(10)]);
    assert!(
        check.duplicates_or_disorder.is_empty(),
        "duplicated or reordered records: {:?}",
        &check.duplicates_or_disorder[..check.duplicates_or_disorder.len().min(10)]
    );
}

/// Like [`consume`], for a topic still being written; a range whose start retention deletes
/// meanwhile is read from the new log start (librdkafka resets to the earliest offset).
fn consume_trimmed(address: &str, topic: &str, ranges: &[(i32, Offset, i64)]) -> Vec<Vec<Record>> {
    if ranges.is_empty() {
        return Vec::new();
    }
    consume_with(address, topic, ranges, &[("auto.offset.reset", "earliest")], true)
}

fn create_topics(address: &str) {
    let admin = admin(address);
    let topics = [
        NewTopic::new("crash-rolls", 4, TopicReplication::Fixed(1)).set("segment.bytes", SEGMENT_BYTES),
        NewTopic::new("crash-retention", 2, TopicReplication::Fixed(1))
            .set("segment.bytes", SEGMENT_BYTES)
            .set("retention.bytes", RETENTION_BYTES),
    ];
    let results = block_on(admin.create_topics(&topics, &admin_options())).unwrap();
    assert!(results.iter().all(Result::is_ok), "create topics: {results:?}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// At a random moment under load.
    UnderLoad,
    /// While Produce responses are held back: requests written (maybe synced) but unanswered.
    Unanswered,
    /// Under load, then again during the restart's recovery.
    DuringRecovery,
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn sigkill_at_random_moments_never_loses_or_duplicates_an_acknowledged_record() {
    let cycles: usize = std::env::var(CYCLES_ENV).map_or(CYCLES_SHORT, |v| v.parse().expect(CYCLES_ENV));
    let seed: u64 = std::env::var(SEED_ENV).map_or_else(
        |_| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64,
        |v| v.parse().expect(SEED_ENV),
    );
    eprintln!("crash loop: {cycles} cycles, seed {seed} (rerun with {SEED_ENV}={seed})");
    let mut rng = Rng(seed);

    let proxy = Proxy::start(Vec::new());
    let node =
        Node::new(&format!("advertised_listen = \"{}\"\n[log]\nretention_check_interval_ms = 100\n", proxy.address()));
    let spawned = Instant::now();
    let (mut broker, mut address) = node.start();
    let mut startup = spawned.elapsed();
    proxy.set_upstream(Some(&address));
    create_topics(&address);

    let stop = Arc::new(AtomicBool::new(false));
    let mut loads =
        [Load::start(&proxy, "crash-rolls", 4, false, &stop), Load::start(&proxy, "crash-retention", 2, true, &stop)];
    let acked_total = |loads: &[Load]| loads.iter().map(|l| l.deliveries.acked_count()).sum::<usize>();
    let (mut recovery_kills, mut unanswered_at_kills) = (0, 0);
    for cycle in 0..cycles {
        let kill = match cycle % 3 {
            0 => Kill::UnderLoad,
            1 => Kill::Unanswered,
            _ => Kill::DuringRecovery,
        };
        let target = acked_total(&loads) + ACKS_PER_CYCLE_MIN + rng.below(3 * ACKS_PER_CYCLE_MIN as u64) as usize;
        wait_until(&format!("cycle {cycle}: {target} acknowledgements"), || acked_total(&loads) >= target);
        let unanswered_before = proxy.produce_unanswered();
        if kill == Kill::Unanswered {
            proxy.hold_responses(true);
            wait_until("a Produce request in flight", || proxy.produce_in_flight() > 0);
        }
        std::thread::sleep(Duration::from_millis(rng.below(200)));
        broker.signal(libc::SIGKILL);
        let (code, _) = broker.wait_exit();
        assert_eq!(code, None, "cycle {cycle}: killed by a signal");
        proxy.set_upstream(None);
        proxy.close_all();
        proxy.hold_responses(false);
        unanswered_at_kills += proxy.produce_unanswered() - unanswered_before;

        if kill == Kill::DuringRecovery {
            // Somewhere between the process start and the listener coming up: recovery
            // (validating the cut segments, rebuilding their indexes) is in that window.
            let recovering = node.spawn();
            std::thread::sleep(Duration::from_micros(rng.below(startup.as_micros() as u64)));
            recovering.signal(libc::SIGKILL);
            let (code, output) = recovering.wait_exit();
            if code.is_none() && !output.contains("corelog ready") {
                recovery_kills += 1;
            }
        }
        let spawned = Instant::now();
        (broker, address) = node.start();
        startup = spawned.elapsed();
        proxy.set_upstream(Some(&address));
        for load in &mut loads {
            check(&address, load, cycle);
        }
        eprintln!("cycle {cycle}: {kill:?}; {} acknowledged so far; restart took {startup:?}", acked_total(&loads));
    }

    stop.store(true, Ordering::SeqCst);
    let sent: Vec<usize> = loads.iter_mut().map(Load::join).collect();
    for (load, sent) in loads.iter_mut().zip(&sent) {
        let failed = load.deliveries.failed();
        assert!(failed.is_empty(), "{}: messages failed: {:?}", load.topic, &failed[..failed.len().min(10)]);
        assert_eq!(load.deliveries.acked_count(), *sent, "{}: every message sent is acknowledged", load.topic);
        check(&address, load, cycles);
    }
    // A last full read of the topic without retention, from offset 0, with a fresh check.
    let mut full = Check::new(loads[0].partitions);
    std::mem::swap(&mut full, &mut loads[0].check);
    check(&address, &mut loads[0], cycles);
    let acknowledged = acked_total(&loads);
    eprintln!(
        "crash loop: {cycles} cycles ({recovery_kills} killed during recovery), {acknowledged} records \
         acknowledged, {unanswered_at_kills} Produce requests unanswered at the kills, 0 lost, 0 duplicated \
         (seed {seed})"
    );
    broker.stop();
}
