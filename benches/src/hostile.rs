//! Hostile clients, and a well-behaved client's figures beside them: the loads of
//! `tools/tests/hostile_clients.rs` (which checks the broker survives them) and of the
//! `hostile-bench` report (which measures what they cost a well-behaved producer, as ratios
//! to the quiet baseline).
//!
//! Every load runs on its own threads until stopped; none of them ever reads what the broker
//! sends unless it says so.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, BrokerId, FetchRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};

pub fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// One request frame (size prefix, header, body).
pub fn request_frame<T: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Vec<u8> {
    let mut out = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("hostile")))
        .encode(&mut out, key.request_header_version(version))
        .expect("encode a request header");
    body.encode(&mut out, version).expect("encode a request");
    let mut frame = (out.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&out);
    frame
}

pub fn api_versions_frame(correlation_id: i32) -> Vec<u8> {
    request_frame(ApiKey::ApiVersions, 0, correlation_id, &ApiVersionsRequest::default())
}

/// A Fetch v4 request for `topic`-`partition` from `offset` that is answered at once.
pub fn fetch_frame(topic: &str, partition: i32, offset: i64, max_bytes: i32, correlation_id: i32) -> Vec<u8> {
    let wanted = FetchPartition::default()
        .with_partition(partition)
        .with_fetch_offset(offset)
        .with_partition_max_bytes(max_bytes);
    let topic = FetchTopic::default()
        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partitions(vec![wanted]);
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_topics(vec![topic]);
    request_frame(ApiKey::Fetch, 4, correlation_id, &request)
}

/// Reads (and drops) whatever the broker still sends until it closes the connection; false if
/// it is still open after `within`.
pub fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true, // reset: closed with our bytes unread
        }
    }
}

/// A slow-loris connection: announces a frame of `announced_bytes` and sends its first 2
/// bytes; [`dribble_until`] then sends one more byte at a time, so the frame never completes.
pub fn slow_loris(address: &str, announced_bytes: i32) -> TcpStream {
    let mut stream = connect(address);
    stream.write_all(&announced_bytes.to_be_bytes()).expect("announce a frame");
    stream.write_all(&[0, 18]).expect("start a frame");
    stream
}

/// One byte on each stream every 200 ms until `stop`.
pub fn dribble_until(streams: &mut [TcpStream], stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        for stream in streams.iter_mut() {
            let _ = stream.write_all(&[0]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Frame sizes that must be refused before anything is allocated: 2 GiB − 1, 100 MiB + 1, −1, 0.
pub const HUGE_FRAME_CLAIMS: [i32; 4] = [i32::MAX, (100 << 20) + 1, -1, 0];

/// One connection claiming a huge (or negative) frame; true once the broker closed it.
pub fn claim_huge_frame(address: &str, claim: i32, within: Duration) -> bool {
    let mut stream = connect(address);
    stream.write_all(&claim.to_be_bytes()).expect("send a frame size");
    closed_within(&mut stream, within)
}

/// 1 MiB of random bytes (xorshift from `seed`), made once so that sending noise costs the
/// sender no more than its writes.
pub fn noise(seed: u64) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1D ^ (seed + 1);
    (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// One connection of random bytes: up to `max_bytes` of `noise`, starting at `start` (each
/// connection starts elsewhere, so each announces another frame size). Returns the bytes sent
/// once the broker closed it (or `None` if it stayed open for `within`).
pub fn send_noise(address: &str, noise: &[u8], start: usize, max_bytes: usize, within: Duration) -> Option<u64> {
    let mut stream = connect(address);
    let mut sent = 0u64;
    let mut at = start % noise.len();
    while (sent as usize) < max_bytes {
        let chunk = &noise[at..noise.len().min(at + (64 << 10))];
        if stream.write_all(chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
        at = (at + chunk.len()) % noise.len();
    }
    closed_within(&mut stream, within).then_some(sent)
}

/// How a client that never reads ended its writing.
#[derive(Debug, PartialEq, Eq)]
pub enum NeverRead {
    /// A write blocked for 200 ms: the broker stopped reading (backpressure).
    HeldBack,
    /// The broker closed the connection.
    Closed,
    Stopped,
}

/// Writes Fetch requests for `topic`-`partition` from offset 0 without ever reading a
/// response, until the broker stops reading them (a write blocks for 200 ms), closes the
/// connection, or `stop`; returns how many were written, why it ended, and the stream.
pub fn never_read(
    address: &str,
    topic: &str,
    partition: i32,
    max_bytes: i32,
    stop: &AtomicBool,
) -> (usize, NeverRead, TcpStream) {
    let mut stream = connect(address);
    stream.set_write_timeout(Some(Duration::from_millis(200))).expect("write timeout");
    let mut written = 0;
    while !stop.load(Ordering::SeqCst) {
        let frame = fetch_frame(topic, partition, 0, max_bytes, written as i32);
        match stream.write_all(&frame) {
            Ok(()) => written += 1,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return (written, NeverRead::HeldBack, stream);
            }
            Err(_) => return (written, NeverRead::Closed, stream),
        }
    }
    (written, NeverRead::Stopped, stream)
}

/// Waits, without reading, until the broker closes (resets) a connection it stopped reading
/// from: a blocked write then fails. False if it is still open after `within`.
pub fn reset_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    stream.set_write_timeout(Some(Duration::from_millis(200))).expect("write timeout");
    while Instant::now() < deadline {
        match stream.write_all(&[0u8; 1024]) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// A hostile load of the benchmark.
#[derive(Debug, Clone, Copy)]
pub enum Attack {
    Quiet,
    SlowLoris {
        connections: usize,
    },
    IdleConnections {
        connections: usize,
    },
    HugeFrames,
    RandomBytes {
        senders: usize,
    },
    /// Clients sending Fetch requests for `topic` and never reading.
    NeverReads {
        clients: usize,
    },
}

impl Attack {
    pub fn describe(&self) -> String {
        match self {
            Attack::Quiet => "quiet (baseline)".into(),
            Attack::SlowLoris { connections } => format!("{connections} slow-loris connections"),
            Attack::IdleConnections { connections } => format!("{connections} idle connections"),
            Attack::HugeFrames => "a loop of connections claiming 2 GiB frames".into(),
            Attack::RandomBytes { senders } => format!("{senders} senders of random bytes"),
            Attack::NeverReads { clients } => format!("{clients} clients that never read"),
        }
    }
}

/// A running attack: its threads, stopped and joined by [`RunningAttack::stop`].
pub struct RunningAttack {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl RunningAttack {
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            let _ = thread.join();
        }
        drop(self.held);
    }
}

/// Starts `attack` against `address`; `fetch_topic` (1 partition, with data) is what clients
/// that never read ask for.
pub fn start_attack(attack: Attack, address: &str, fetch_topic: &str) -> RunningAttack {
    let stop = Arc::new(AtomicBool::new(false));
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let mut threads = Vec::new();
    let spawn = |f: Box<dyn FnOnce() + Send>| std::thread::spawn(f);
    match attack {
        Attack::Quiet => {}
        Attack::SlowLoris { connections } => {
            let mut streams: Vec<TcpStream> = (0..connections).map(|_| slow_loris(address, 64)).collect();
            let stop = Arc::clone(&stop);
            threads.push(spawn(Box::new(move || dribble_until(&mut streams, &stop))));
        }
        Attack::IdleConnections { connections } => {
            let streams: Vec<TcpStream> = (0..connections).map(|_| connect(address)).collect();
            held.lock().expect("lock").extend(streams);
        }
        Attack::HugeFrames => {
            let (address, stop) = (address.to_string(), Arc::clone(&stop));
            threads.push(spawn(Box::new(move || {
                while !stop.load(Ordering::SeqCst) {
                    for claim in HUGE_FRAME_CLAIMS {
                        claim_huge_frame(&address, claim, Duration::from_secs(10));
                    }
                }
            })));
        }
        Attack::RandomBytes { senders } => {
            for seed in 0..senders as u64 {
                let (address, stop) = (address.to_string(), Arc::clone(&stop));
                threads.push(spawn(Box::new(move || {
                    let noise = noise(seed);
                    let mut start = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        // Noise that happens to announce a plausible frame size leaves the broker
                        // waiting for the rest: give up on it soon and start over.
                        send_noise(&address, &noise, start, 8 << 20, Duration::from_secs(1));
                        start += 7_919;
                    }
                })));
            }
        }
        Attack::NeverReads { clients } => {
            for _ in 0..clients {
                let (address, topic, stop) = (address.to_string(), fetch_topic.to_string(), Arc::clone(&stop));
                let held = Arc::clone(&held);
                threads.push(spawn(Box::new(move || {
                    let (_, _, stream) = never_read(&address, &topic, 0, 1 << 20, &stop);
                    held.lock().expect("lock").push(stream);
                })));
            }
        }
    }
    RunningAttack { stop, threads, held }
}

/// What the well-behaved producer got.
#[derive(Debug, Clone, Copy)]
pub struct CalmFigures {
    /// Acknowledged messages per second, producing as fast as it can.
    pub max_rate_messages_per_sec: f64,
    /// Publish latency at a fixed rate (from each message's scheduled send time to its
    /// acknowledgement: no coordinated omission).
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

/// Records delivery latencies from scheduled send times (the message's opaque).
struct Latencies {
    started: Instant,
    histogram: Mutex<Histogram<u64>>,
    acked: AtomicU64,
}

impl rdkafka::ClientContext for Latencies {}

impl rdkafka::producer::ProducerContext for Latencies {
    type DeliveryOpaque = Box<Duration>;

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, scheduled: Box<Duration>) {
        if result.is_ok() {
            self.acked.fetch_add(1, Ordering::Relaxed);
            let micros = self.started.elapsed().saturating_sub(*scheduled).as_micros() as u64;
            let _ = self.histogram.lock().expect("lock").record(micros.max(1));
        }
    }
}

fn calm_producer(address: &str) -> rdkafka::producer::BaseProducer<Latencies> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("enable.idempotence", "true")
        .create_with_context(Latencies {
            started: Instant::now(),
            histogram: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")),
            acked: AtomicU64::new(0),
        })
        .expect("producer")
}

/// A well-behaved idempotent `acks=all` producer of 1 KiB messages to `topic`: first at
/// `rate` messages per second for `duration` (latency), then as fast as it can for `duration`
/// (throughput).
pub fn calm_client(address: &str, topic: &str, rate: u32, duration: Duration) -> CalmFigures {
    use rdkafka::producer::{BaseRecord, Producer};
    let payload = vec![b'c'; 1024];
    let send = |producer: &rdkafka::producer::BaseProducer<Latencies>, scheduled: Duration| {
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(scheduled)).payload(&payload[..]).key("k");
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((_, returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
    };
    // Connected, topic known, producer id granted: then the clock starts.
    let warm_up = |producer: &rdkafka::producer::BaseProducer<Latencies>| {
        send(producer, producer.context().started.elapsed());
        producer.flush(Duration::from_secs(60)).expect("flush the warm-up message");
        producer.context().acked.store(0, Ordering::Relaxed);
        producer.context().histogram.lock().expect("lock").reset();
    };
    let producer = calm_producer(address);
    warm_up(&producer);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = producer.context().started.elapsed();
    let mut next = start;
    while next - start < duration {
        let now = producer.context().started.elapsed();
        if now < next {
            producer.poll(next - now);
            continue;
        }
        send(&producer, next);
        next += interval;
    }
    producer.flush(Duration::from_secs(60)).expect("flush the fixed-rate phase");
    let histogram = producer.context().histogram.lock().expect("lock").clone();

    let throughput = calm_producer(address);
    warm_up(&throughput);
    let begun = Instant::now();
    while begun.elapsed() < duration {
        send(&throughput, throughput.context().started.elapsed());
        throughput.poll(Duration::ZERO);
    }
    let acked_in_time = throughput.context().acked.load(Ordering::Relaxed);
    throughput.flush(Duration::from_secs(60)).expect("flush the max-rate phase");
    CalmFigures {
        max_rate_messages_per_sec: acked_in_time as f64 / duration.as_secs_f64(),
        latency_ms_p50: histogram.value_at_quantile(0.5) as f64 / 1e3,
        latency_ms_p99: histogram.value_at_quantile(0.99) as f64 / 1e3,
        latency_ms_max: histogram.max() as f64 / 1e3,
    }
}

/// A whole broker in this process, one shard, room for the idle connections of the bench,
/// accepting at most `connections_per_sec` new connections a second.
pub fn bench_broker(dir: &std::path::Path, connections_per_sec: Option<f64>) -> corelog_net::server::LocalBroker {
    let config = corelog_net::server::ServerConfig {
        max_connections_per_shard: 20_000,
        connections_per_sec_max_per_shard: connections_per_sec,
        offsets_topic_partitions: 1,
        ..crate::groups::server_config(dir, Default::default())
    };
    corelog_net::server::LocalBroker::start(config, 1).expect("start the broker")
}

/// Writes a few MiB to `topic` (auto-created, one partition), for clients that fetch it.
pub fn fill_fetch_topic(address: &str, topic: &str) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let payload = vec![b'f'; 1024];
    for _ in 0..4_000 {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(&payload[..]);
        while let Err((_, returned)) = producer.send(record) {
            record = returned;
            producer.poll(Duration::from_millis(1));
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush the fetched topic");
}
