//! Hostile clients against the real `corelog` binary: slow-loris connections, 10,000 idle
//! connections, frames claiming 2 GiB, random bytes at full speed, a client that never reads
//! its responses, and the broker's resident memory under max-rate produce with stalled
//! consumers. Each is bounded by a configured limit (idle timeout, frame size, in-flight
//! requests, the shard's request budget, `fetch.max.bytes`), and during each a well-behaved
//! idempotent producer and a consumer round-trip their messages exactly.
//!
//! How much the hostile load slows the well-behaved client down is a benchmark figure
//! (`hostile-bench`, the same loads from `corelog_benches::hostile`), not a test assertion
//! (these machines are shared): the tests check it keeps working, within bounded waits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::kafka::*;
use common::{WAIT, rss_bytes_of};
use corelog_benches::hostile::*;
use rdkafka::producer::Producer;

const IDLE_MS: u64 = 2_000;
const MIB: u64 = 1 << 20;

/// A broker whose connections time out after [`IDLE_MS`], with `extra` config lines.
fn node(extra: &str) -> Node {
    Node::new(&format!("connections_max_idle_ms = {IDLE_MS}\n{extra}"))
}

/// The well-behaved client: an idempotent acks=all producer writes `messages` to a new
/// 2-partition topic, then a consumer reads them back and every one is checked.
fn well_behaved_round_trip(address: &str, topic: &str, messages: usize) -> Duration {
    let started = Instant::now();
    create_topic(address, topic, 2);
    let producer = producer(address, &IDEMPOTENT);
    for sequence in 0..messages {
        send_sequenced(&producer, topic, 2, sequence);
    }
    flush(&producer);
    let acked = producer.context().acked();
    assert_eq!(acked.len(), messages, "{topic}: every message acknowledged");
    assert_eq!(check_sequenced(address, topic, 2, &acked, messages), messages, "{topic}: every message read back");
    started.elapsed()
}

/// Sends an ApiVersions v0 request and reads its response: the connection is served.
fn api_versions_round_trip(stream: &mut TcpStream) {
    stream.write_all(&api_versions_frame(7)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("an ApiVersions response");
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).unwrap();
    assert_eq!(&body[..4], &7i32.to_be_bytes(), "the response's correlation id");
}

/// Runs the well-behaved round trip while `hostile` runs on other threads (it is told to stop
/// afterwards through the flag it gets).
fn alongside<T: Send + 'static>(
    address: &str,
    topic: &str,
    hostile: impl FnOnce(Arc<AtomicBool>) -> T + Send + 'static,
) -> (Duration, T) {
    let stop = Arc::new(AtomicBool::new(false));
    let attack = {
        let stop = stop.clone();
        std::thread::spawn(move || hostile(stop))
    };
    let took = well_behaved_round_trip(address, topic, 5_000);
    stop.store(true, Ordering::SeqCst);
    (took, attack.join().expect("the hostile client's thread"))
}

/// The well-behaved round trip while `streams` get a byte every 200 ms.
fn dribbled_beside(address: &str, topic: &str, streams: &[TcpStream]) -> Duration {
    let mut dribbled: Vec<TcpStream> = streams.iter().map(|s| s.try_clone().unwrap()).collect();
    alongside(address, topic, move |stop| dribble_until(&mut dribbled, &stop)).0
}

#[test]
fn slow_loris_connections_are_closed_at_the_idle_timeout_while_others_are_served() {
    const LORIS: usize = 200;
    let node = node("");
    let (broker, address) = node.start();
    // Each announces a 64-byte frame and sends its first 2 bytes; then one byte every 200 ms,
    // so a frame is never complete.
    let mut streams: Vec<TcpStream> = (0..LORIS).map(|_| slow_loris(&address, 64)).collect();
    let started = Instant::now();
    let took = dribbled_beside(&address, "beside-slow-loris", &streams);
    let closed = streams.iter_mut().map(|s| closed_within(s, WAIT)).filter(|&closed| closed).count();
    let closed_after = started.elapsed();
    eprintln!(
        "slow loris: round trip beside {LORIS} slow connections took {took:?}; all closed after {closed_after:?}"
    );
    assert_eq!(closed, LORIS, "every slow-loris connection is closed by the idle timeout");
    broker.stop();
}

#[test]
fn slow_senders_of_large_frames_give_way_when_others_need_the_request_memory() {
    const LORIS: usize = 6;
    // 16 MiB of request memory per shard; each slow sender announces 50 MiB (a reservation of
    // the whole budget) and then sends a byte every 200 ms. The idle timeout is longer than
    // the harness's waits: only giving slow frames up when others wait lets the round trip end.
    let node = Node::new("connections_max_idle_ms = 300000\nqueued_max_request_bytes_per_shard = 16777216\n");
    let (broker, address) = node.start();
    let mut streams: Vec<TcpStream> = (0..LORIS).map(|_| slow_loris(&address, 50 << 20)).collect();
    let took = dribbled_beside(&address, "beside-large-slow-frames", &streams);
    let closed = streams.iter_mut().map(|s| closed_within(s, Duration::from_secs(2))).filter(|&closed| closed).count();
    eprintln!("large slow frames: round trip beside {LORIS} of them took {took:?}; {closed} closed");
    // The last one granted on each shard may hold its reservation while nobody waits for it.
    assert!(closed >= LORIS - 2, "slow senders of large frames in the way were closed: {closed} of {LORIS}");
    broker.stop();
}

#[test]
fn ten_thousand_idle_connections_are_held_then_closed_while_others_are_served() {
    const IDLE: usize = 10_000;
    // Longer than the round trip, so the connections are all open during it.
    let node = Node::new("connections_max_idle_ms = 20000\n");
    let (broker, address) = node.start();
    let rss_before = broker.rss_bytes();
    let opened = Instant::now();
    let mut streams: Vec<TcpStream> = (0..IDLE).map(|_| connect(&address)).collect();
    // A sample of them is served: they are accepted, not left in the backlog.
    for stream in streams.iter_mut().step_by(500) {
        api_versions_round_trip(stream);
    }
    let rss_held = broker.rss_bytes();
    let took = well_behaved_round_trip(&address, "beside-idle", 5_000);
    let closed = streams.iter_mut().map(|s| closed_within(s, WAIT)).filter(|&closed| closed).count();
    eprintln!(
        "idle connections: {IDLE} opened; broker RSS {} MiB before, {} MiB holding them; round trip beside them \
         took {took:?}; all closed {:?} after opening",
        rss_before / MIB,
        rss_held / MIB,
        opened.elapsed()
    );
    assert_eq!(closed, IDLE, "every idle connection is closed by the idle timeout");
    broker.stop();
}

#[test]
fn frames_claiming_2_gib_are_refused_before_anything_is_allocated() {
    let node = node("");
    let (broker, address) = node.start();
    let rss_before = broker.rss_bytes();
    let target = address.clone();
    let (took, refused) = alongside(&address, "beside-huge-frames", move |stop| {
        let mut refused = 0;
        while !stop.load(Ordering::SeqCst) {
            for claim in HUGE_FRAME_CLAIMS {
                assert!(claim_huge_frame(&target, claim, WAIT), "a frame claiming {claim} bytes closes its connection");
                refused += 1;
            }
        }
        refused
    });
    let grown = broker.rss_bytes().saturating_sub(rss_before);
    eprintln!("huge frames: {refused} refused beside a round trip of {took:?}; broker RSS grew {} MiB", grown / MIB);
    assert!(refused >= 4);
    assert!(grown < 64 * MIB, "refusing huge frames allocated {} MiB", grown / MIB);
    broker.stop();
}

#[test]
fn random_bytes_at_full_speed_close_only_their_own_connections() {
    const SENDERS: usize = 3;
    let node = node("");
    let (broker, address) = node.start();
    let closes = Arc::new(AtomicUsize::new(0));
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let (target, counted, sent) = (address.clone(), closes.clone(), sent_bytes.clone());
    let (took, ()) = alongside(&address, "beside-random-bytes", move |stop| {
        let senders: Vec<_> = (0..SENDERS as u64)
            .map(|seed| {
                let (target, stop, closes, sent) = (target.clone(), stop.clone(), counted.clone(), sent.clone());
                std::thread::spawn(move || {
                    let noise = noise(seed);
                    let mut start = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        // Up to 8 MiB of noise, then wait for the broker to give up on it.
                        let bytes = send_noise(&target, &noise, start, 8 << 20, WAIT);
                        start += 7_919;
                        let bytes = bytes.expect("the broker closes a connection sending noise");
                        sent.fetch_add(bytes, Ordering::Relaxed);
                        closes.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.join().expect("a noise sender");
        }
    });
    let closes = closes.load(Ordering::Relaxed);
    eprintln!(
        "random bytes: {} MiB of noise on {closes} connections, all closed; round trip beside them took {took:?}",
        sent_bytes.load(Ordering::Relaxed) / MIB
    );
    assert!(closes >= SENDERS, "each sender's connection was closed at least once");
    broker.stop();
}

#[test]
fn a_client_that_never_reads_is_held_back_by_backpressure_then_closed() {
    let node = node("");
    let (broker, address) = node.start();
    // Data to fetch: a few MiB, so that responses fill the socket buffers.
    create_topic(&address, "fetched", 1);
    let producer = producer(&address, &[("acks", "all"), ("linger.ms", "5")]);
    for sequence in 0..40_000 {
        send_sequenced(&producer, "fetched", 1, sequence);
    }
    flush(&producer);
    let rss_before = broker.rss_bytes();
    let target = address.clone();
    let started = Instant::now();
    let (took, (written, outcome, mut stream)) = alongside(&address, "beside-a-client-not-reading", move |stop| {
        never_read(&target, "fetched", 0, 1 << 20, &stop)
    });
    let grown = broker.rss_bytes().saturating_sub(rss_before);
    eprintln!(
        "never reads: {written} Fetch requests written before the broker stopped reading ({outcome:?} after \
         {:?}); round trip beside it took {took:?}; broker RSS grew {} MiB",
        started.elapsed(),
        grown / MIB
    );
    match outcome {
        NeverRead::HeldBack => {}
        // The broker may already have given up on it: its idle timeout started with the first
        // response it could not write, a little before the client's writes blocked.
        NeverRead::Closed => assert!(started.elapsed() >= Duration::from_millis(IDLE_MS), "closed too early"),
        NeverRead::Stopped => panic!("the broker kept reading requests whose responses are not read"),
    }
    assert!(grown < 64 * MIB, "a client that never reads grew the broker by {} MiB", grown / MIB);
    // It is closed once no response byte has been accepted for the idle timeout.
    assert!(reset_within(&mut stream, WAIT), "a client that never reads is closed");
    broker.stop();
}

#[test]
fn resident_memory_stays_within_the_budgets_under_max_rate_produce_with_stalled_consumers() {
    const SHARDS: u64 = 2; // common::kafka::CORES
    const CACHE: u64 = 32 * MIB;
    const QUEUED: u64 = 32 * MIB;
    const FRAME: u64 = 4 * MIB;
    const FETCH: u64 = 4 * MIB;
    const STALLED: usize = 4;
    const PARTITIONS: usize = 8;
    const MESSAGES: usize = 500_000;
    // Stalled consumers stay connected for the whole flood (no idle timeout during it).
    let node = Node::new(&format!(
        "cache_budget_bytes_per_shard = {CACHE}\nqueued_max_request_bytes_per_shard = {QUEUED}\n\
         socket_request_max_bytes = {FRAME}\nfetch_max_bytes = {FETCH}\n"
    ));
    let (broker, address) = node.start();
    create_topic(&address, "flood", PARTITIONS as i32);
    let baseline = broker.rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let stalled: Vec<_> = (0..STALLED)
        .map(|i| {
            let (target, stop) = (address.clone(), stop.clone());
            std::thread::spawn(move || {
                let (written, outcome, stream) = never_read(&target, "flood", i as i32, FETCH as i32, &stop);
                assert_ne!(outcome, NeverRead::Closed, "a stalled consumer was closed during the flood");
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                (written, stream)
            })
        })
        .collect();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), broker.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(rss) = rss_bytes_of(pid) {
                    peak.fetch_max(rss, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let started = Instant::now();
    let producer = producer(
        &address,
        &[("acks", "all"), ("linger.ms", "5"), ("batch.size", "1000000"), ("queue.buffering.max.kbytes", "262144")],
    );
    let value = vec![b'x'; 1024];
    for i in 0..MESSAGES {
        let record = rdkafka::producer::BaseRecord::with_opaque_to("flood", i)
            .partition((i % PARTITIONS) as i32)
            .payload(&value[..]);
        send(&producer, record);
    }
    flush(&producer);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let held: usize = stalled.into_iter().map(|t| t.join().unwrap().0).sum();
    let peak = peak.load(Ordering::SeqCst);
    // The budgets per shard, plus one frame over the request budget (a reservation is granted
    // while anything is left) and one Fetch response per stalled connection, plus a margin for
    // everything unbudgeted (flush buffers, indexes, connection state, allocator slack).
    let margin = 96 * MIB;
    let limit = baseline + SHARDS * (CACHE + QUEUED + FRAME) + STALLED as u64 * FETCH + margin;
    eprintln!(
        "memory: {MESSAGES} × 1 KiB produced in {elapsed:?} beside {STALLED} stalled consumers ({held} Fetch \
         requests sent unread); broker RSS {} MiB at rest, peak {} MiB, limit {} MiB",
        baseline / MIB,
        peak / MIB,
        limit / MIB
    );
    assert!(peak <= limit, "peak RSS {} MiB over the budgeted {} MiB", peak / MIB, limit / MIB);
    broker.stop();
}
