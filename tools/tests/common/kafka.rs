//! librdkafka helpers shared by the real-client test binaries: a broker node that restarts on
//! the same data dir, admin/consumer/producer clients, bounded consume, and the sequenced load
//! (every message numbered, so that loss, duplicates and reordering can be checked exactly).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::future::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{Broker, WAIT};

/// Shards per broker: two, so that partitions of one topic live on different shards and requests
/// are routed between them.
pub const CORES: &str = "2";

// ---------------------------------------------------------------------------------------------
// Brokers

/// A broker's temp dir: `data/` is its data dir, `corelog.toml` its config. Restarts reuse both.
pub struct Node {
    root: tempfile::TempDir,
}

impl Node {
    pub fn new(config: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("corelog.toml"), config).unwrap();
        Self { root }
    }

    /// Starts `corelog` and returns it with its resolved listener address.
    pub fn start(&self) -> (Broker, String) {
        let mut broker = self.spawn();
        let address = broker.wait_ready();
        (broker, address)
    }

    /// Starts `corelog` without waiting for it to be ready.
    pub fn spawn(&self) -> Broker {
        let config: PathBuf = self.root.path().join("corelog.toml");
        Broker::start(&self.data_dir(), &["--config", config.to_str().unwrap(), "--cores", CORES])
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

pub fn admin(address: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", address).create().expect("admin client")
}

pub fn admin_options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(WAIT)).operation_timeout(Some(WAIT))
}

pub fn create_topic(address: &str, topic: &str, partitions: i32) {
    let results = block_on(
        admin(address).create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &admin_options()),
    )
    .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
    assert_eq!(results, vec![Ok(topic.to_string())], "create topic {topic}");
}

pub fn consumer(address: &str) -> BaseConsumer {
    consumer_with(address, &[])
}

/// [`consumer`] with more (or overriding) settings.
pub fn consumer_with(address: &str, settings: &[(&str, &str)]) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", address)
        // librdkafka's assign() needs a group id; the consumer never joins the group or commits.
        .set("group.id", "corelog-e2e")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100");
    for &(key, value) in settings {
        config.set(key, value);
    }
    config.create().expect("consumer")
}

/// One consumed message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    pub fn of(message: &impl Message) -> Self {
        let headers = message
            .headers()
            .map(|headers| headers.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default();
        Self {
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }
}

/// Consumes `(partition, start, end)` ranges of `topic` with `assign()` until every partition
/// delivered the message before its `end` offset; returns the records in the order of `ranges`.
pub fn consume(address: &str, topic: &str, ranges: &[(i32, Offset, i64)]) -> Vec<Vec<Record>> {
    consume_with(address, topic, ranges, &[], false)
}

/// [`consume`] by a consumer with more settings. A `live` topic is still being written:
/// records at or beyond a range's end are skipped instead of failing the test, and one of them
/// ends its range (the consumer may have been reset past the whole range by retention).
pub fn consume_with(
    address: &str,
    topic: &str,
    ranges: &[(i32, Offset, i64)],
    settings: &[(&str, &str)],
    live: bool,
) -> Vec<Vec<Record>> {
    let consumer = consumer_with(address, settings);
    let mut assignment = TopicPartitionList::new();
    for &(partition, start, _) in ranges {
        assignment.add_partition_offset(topic, partition, start).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records: Vec<Vec<Record>> = vec![Vec::new(); ranges.len()];
    let mut passed = vec![false; ranges.len()];
    let done = |records: &[Vec<Record>], passed: &[bool]| {
        ranges
            .iter()
            .zip(records)
            .zip(passed)
            .all(|((&(_, _, end), got), &passed)| passed || got.last().is_some_and(|r| r.offset + 1 >= end))
    };
    let deadline = Instant::now() + WAIT;
    while !done(&records, &passed) {
        let progress = || {
            let counts: Vec<_> = records.iter().map(|r| (r.len(), r.last().map(|r| r.offset))).collect();
            format!("(count, last offset) per partition {counts:?}, wanted {ranges:?}")
        };
        assert!(Instant::now() < deadline, "consuming {topic} took over {WAIT:?}: {}", progress());
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let index = ranges.iter().position(|r| r.0 == message.partition()).expect("an assigned partition");
                let record = Record::of(&message);
                if live && record.offset >= ranges[index].2 {
                    passed[index] = true;
                    continue;
                }
                assert!(record.offset < ranges[index].2, "{topic}-{} beyond the end: {record:?}", message.partition());
                records[index].push(record);
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}; {}", progress()),
        }
    }
    records
}

/// `topic`'s partition count from a Metadata request naming it, or the topic's error. Asked by a
/// consumer, which does not allow auto-creation.
pub fn topic_partitions(address: &str, topic: &str) -> Result<usize, RDKafkaErrorCode> {
    let metadata = consumer(address).fetch_metadata(Some(topic), WAIT).unwrap_or_else(|e| panic!("metadata: {e}"));
    assert_eq!(metadata.topics().len(), 1, "metadata for {topic}");
    let found = &metadata.topics()[0];
    assert_eq!(found.name(), topic);
    match found.error() {
        Some(error) => Err(error.into()),
        None => Ok(found.partitions().len()),
    }
}

pub fn watermarks(address: &str, topic: &str, partition: i32) -> (i64, i64) {
    consumer(address).fetch_watermarks(topic, partition, WAIT).unwrap_or_else(|e| panic!("watermarks {topic}: {e}"))
}

/// A delivery report: the message's sequence number (its delivery opaque) and where it landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub sequence: usize,
    pub partition: i32,
    pub offset: i64,
}

/// A producer context that records every delivery report and the client's errors.
#[derive(Default)]
pub struct Deliveries {
    acked: Mutex<Vec<Ack>>,
    failed: Mutex<Vec<(usize, String)>>,
    errors: Mutex<Vec<String>>,
}

impl Deliveries {
    pub fn acked(&self) -> Vec<Ack> {
        self.acked.lock().unwrap().clone()
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub fn failed(&self) -> Vec<(usize, String)> {
        self.failed.lock().unwrap().clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

impl ClientContext for Deliveries {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.lock().unwrap().push(format!("{error}: {reason}"));
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sequence: usize) {
        match result {
            Ok(message) => {
                let ack = Ack { sequence, partition: message.partition(), offset: message.offset() };
                self.acked.lock().unwrap().push(ack);
            }
            Err((error, _)) => self.failed.lock().unwrap().push((sequence, error.to_string())),
        }
    }
}

pub fn producer(address: &str, settings: &[(&str, &str)]) -> BaseProducer<Deliveries> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", address).set("message.timeout.ms", "120000");
    for &(key, value) in settings {
        config.set(key, value);
    }
    config.create_with_context(Deliveries::default()).expect("producer")
}

/// Sends one message, waiting (bounded) while the client's queue is full.
pub fn send(producer: &BaseProducer<Deliveries>, mut record: BaseRecord<'_, [u8], [u8], usize>) {
    let deadline = Instant::now() + WAIT;
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                assert!(Instant::now() < deadline, "the producer's queue stayed full for {WAIT:?}");
                record = returned;
                producer.poll(Duration::from_millis(10));
            }
            Err((error, _)) => panic!("send: {error}"),
        }
    }
}

pub fn flush(producer: &BaseProducer<Deliveries>) {
    if let Err(error) = producer.flush(WAIT) {
        let errors = producer.context().errors();
        panic!("flush within {WAIT:?}: {error}; client errors: {errors:?}");
    }
}

pub fn owned_headers(headers: &[(String, Option<Vec<u8>>)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new_with_capacity(headers.len()), |owned, (key, value)| {
        owned.insert(Header { key, value: value.as_deref() })
    })
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

// ---------------------------------------------------------------------------------------------
// Sequenced load

pub fn sequenced_value(sequence: usize) -> Vec<u8> {
    let mut value = format!("sequence={sequence};").into_bytes();
    value.resize(120, b'.');
    value
}

/// Checks a topic produced with sequence numbers (`key` = the number, value `sequenced_value`,
/// partition = sequence % partitions): every acknowledged message is present exactly once at
/// its acknowledged offset, nothing appears twice, and every partition is in sequence order.
/// Returns how many messages were consumed.
pub fn check_sequenced(address: &str, topic: &str, partitions: usize, acked: &[Ack], sent: usize) -> usize {
    let ranges: Vec<_> = (0..partitions as i32)
        .map(|p| (p, watermarks(address, topic, p)))
        .inspect(|(p, (low, _))| assert_eq!(*low, 0, "{topic}-{p} low watermark"))
        .filter(|(_, (_, high))| *high > 0)
        .map(|(p, (_, high))| (p, Offset::Beginning, high))
        .collect();
    let consumed = consume(address, topic, &ranges);
    let mut found: HashMap<usize, (i32, i64)> = HashMap::new();
    for (&(partition, _, _), records) in ranges.iter().zip(&consumed) {
        let mut previous: Option<usize> = None;
        for record in records {
            let key = String::from_utf8(record.key.clone().expect("a key")).unwrap();
            let sequence: usize = key.parse().unwrap();
            assert!(sequence < sent, "{topic}-{partition}: a message never sent: {record:?}");
            assert_eq!(sequence % partitions, partition as usize, "{topic}-{partition}: misplaced {record:?}");
            assert_eq!(record.value.as_deref(), Some(&sequenced_value(sequence)[..]), "{topic}-{partition}");
            if let Some(previous_sequence) = found.insert(sequence, (partition, record.offset)) {
                panic!("{topic}: sequence {sequence} twice: at {previous_sequence:?} and offset {}", record.offset);
            }
            assert!(
                previous.is_none_or(|previous| previous < sequence),
                "{topic}-{partition}: out of order at offset {}: {sequence} after {previous:?}",
                record.offset
            );
            previous = Some(sequence);
        }
    }
    for ack in acked {
        assert_eq!(
            found.get(&ack.sequence),
            Some(&(ack.partition, ack.offset)),
            "{topic}: the acknowledged message {ack:?} is not where it was acknowledged"
        );
    }
    found.len()
}

pub fn send_sequenced(producer: &BaseProducer<Deliveries>, topic: &str, partitions: usize, sequence: usize) {
    let key = sequence.to_string();
    let value = sequenced_value(sequence);
    let record = BaseRecord::with_opaque_to(topic, sequence)
        .partition((sequence % partitions) as i32)
        .key(key.as_bytes())
        .payload(&value[..]);
    send(producer, record);
}

/// Settings of an idempotent producer that reconnects quickly and never gives up on a message
/// within a test.
pub const IDEMPOTENT: [(&str, &str); 5] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "2"),
    ("reconnect.backoff.ms", "10"),
    ("reconnect.backoff.max.ms", "100"),
];
