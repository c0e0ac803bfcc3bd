//! A batching producer. Records go to a partition (given; else by the key's murmur2 hash, as
//! Java's default partitioner; else sticky: one partition until its batch closes), into
//! that partition's open batch. A batch closes when it reaches `batch_bytes` or is
//! `linger` old (at once with linger 0 once a request can go). Per leader, one sender task
//! packs closed batches into Produce requests, up to `max_in_flight` requests outstanding
//! on the connection (pipelined). Idempotent producers stamp each batch with their
//! producer id, epoch and a per-partition sequence, so a retried batch is never written
//! twice. Every record's outcome goes to the delivery callback with its opaque value.
//!
//! Owner: one glommio executor thread.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_channel::{mpsc, oneshot};
use futures_lite::StreamExt;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{InitProducerIdRequest, ProduceRequest, ProduceResponse, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::records::{BatchBuilder, Codec, Header, ProducerStamp};
use crate::{Client, Error, TopicInfo, check};

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// -1 (all), 0 or 1.
    pub acks: i16,
    pub linger: Duration,
    /// A batch closes once its records take this many bytes (before compression).
    pub batch_bytes: usize,
    pub codec: Codec,
    /// Producer id and sequences (needs acks=all).
    pub idempotent: bool,
    /// Produce requests outstanding per broker connection.
    pub max_in_flight: usize,
    /// Times a batch is sent again after a retriable error.
    pub retries: u32,
    /// Record bytes waiting to be acknowledged before `send` waits.
    pub buffer_bytes: usize,
    /// Bytes of batches in one Produce request.
    pub request_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: -1,
            linger: Duration::from_millis(5),
            batch_bytes: 64 << 10,
            codec: Codec::None,
            idempotent: true,
            max_in_flight: 5,
            retries: 5,
            buffer_bytes: 64 << 20,
            request_bytes: 1 << 20,
        }
    }
}

/// One record's outcome.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub partition: i32,
    /// -1 with acks=0 (the broker does not say) or on error.
    pub offset: i64,
    pub opaque: u64,
    pub error: Option<Error>,
}

pub type OnDelivery = Box<dyn Fn(&str, &Delivery)>;

struct Open {
    builder: BatchBuilder,
    opaques: Vec<u64>,
    id: u64,
    /// What its records count against `buffer_bytes`.
    bytes: usize,
}

struct Ready {
    topic: Rc<str>,
    partition: i32,
    batch: Bytes,
    opaques: Vec<u64>,
    attempts: u32,
    bytes: usize,
}

struct PartitionState {
    open: Option<Open>,
    next_sequence: i32,
}

#[derive(Default)]
struct Inner {
    topics: HashMap<String, (Rc<str>, TopicInfo, i32)>,
    partitions: HashMap<(Rc<str>, i32), PartitionState>,
    /// Closed batches per leader, oldest first.
    ready: BTreeMap<i32, VecDeque<Ready>>,
    senders: HashMap<i32, mpsc::UnboundedSender<()>>,
    in_flight: HashMap<i32, usize>,
    /// Record bytes not yet delivered, and records.
    queued_bytes: usize,
    outstanding: usize,
    /// Woken when records are delivered (flush and a full buffer wait on them).
    waiters: Vec<oneshot::Sender<()>>,
    next_batch_id: u64,
}

pub struct Producer {
    client: Rc<Client>,
    config: ProducerConfig,
    on_delivery: OnDelivery,
    producer: Cell<Option<(i64, i16)>>,
    inner: RefCell<Inner>,
    this: Weak<Producer>,
}

impl Producer {
    /// A producer; an idempotent one first gets its producer id (InitProducerId).
    pub async fn new(client: Rc<Client>, config: ProducerConfig, on_delivery: OnDelivery) -> Result<Rc<Self>, Error> {
        if config.idempotent && config.acks != -1 {
            return Err(Error::Invalid("an idempotent producer needs acks=all".into()));
        }
        let producer = Rc::new_cyclic(|this| Self {
            client,
            config,
            on_delivery,
            producer: Cell::new(None),
            inner: RefCell::new(Inner::default()),
            this: this.clone(),
        });
        if producer.config.idempotent {
            let request = InitProducerIdRequest::default()
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            let response = producer.client.any_broker().await?.send(request).await?;
            check("InitProducerId", response.error_code, None)?;
            producer.producer.set(Some((response.producer_id.0, response.producer_epoch)));
        }
        Ok(producer)
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }

    /// Queues one record (waiting while the buffer is full); its outcome goes to the
    /// delivery callback. `partition` None: by key, or sticky.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
        timestamp_ms: i64,
        opaque: u64,
    ) -> Result<(), Error> {
        while self.inner.borrow().queued_bytes >= self.config.buffer_bytes {
            self.delivered().await;
        }
        if !self.inner.borrow().topics.contains_key(topic) {
            let info = self.client.topic(topic).await?;
            if info.partitions.is_empty() {
                return Err(Error::kafka("Metadata", 5, None));
            }
            let name: Rc<str> = Rc::from(topic);
            self.inner.borrow_mut().topics.entry(topic.to_string()).or_insert((name, info, 0));
        }
        let size = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + 16;
        let (name, partition, leader, new_batch, full) = {
            let mut inner = self.inner.borrow_mut();
            let inner = &mut *inner;
            let Some((name, info, sticky)) = inner.topics.get(topic) else {
                return Err(Error::kafka("Metadata", 3, None));
            };
            let count = info.partitions.len() as i32;
            let partition = match (partition, key) {
                (Some(p), _) if (0..count).contains(&p) => p,
                (Some(p), _) => return Err(Error::Invalid(format!("{topic} has no partition {p}"))),
                (None, Some(key)) => (murmur2(key) & 0x7fff_ffff) % count,
                (None, None) => *sticky % count,
            };
            let leader = info.partitions[partition as usize].leader;
            let name = Rc::clone(name);
            let state = inner
                .partitions
                .entry((Rc::clone(&name), partition))
                .or_insert(PartitionState { open: None, next_sequence: 0 });
            let mut new_batch = None;
            let open = state.open.get_or_insert_with(|| {
                inner.next_batch_id += 1;
                new_batch = Some(inner.next_batch_id);
                Open { builder: BatchBuilder::new(), opaques: Vec::new(), id: inner.next_batch_id, bytes: 0 }
            });
            open.builder.push(timestamp_ms, key, value, headers);
            open.opaques.push(opaque);
            open.bytes += size;
            inner.queued_bytes += size;
            inner.outstanding += 1;
            let full = open.builder.size_bytes() >= self.config.batch_bytes;
            (name, partition, leader, new_batch, full)
        };
        if full {
            self.close(&name, partition)?;
        } else if let Some(id) = new_batch {
            if self.config.linger.is_zero() {
                self.wake(leader);
            } else {
                self.close_after_linger(Rc::clone(&name), partition, id);
            }
        }
        Ok(())
    }

    /// Waits until every record sent so far is delivered (or failed).
    pub async fn flush(&self) {
        let open: Vec<(Rc<str>, i32)> = self
            .inner
            .borrow()
            .partitions
            .iter()
            .filter(|(_, s)| s.open.is_some())
            .map(|((t, p), _)| (Rc::clone(t), *p))
            .collect();
        for (topic, partition) in open {
            if let Err(error) = self.close(&topic, partition) {
                tracing::warn!(%error, "closing a batch to flush it");
            }
        }
        while self.inner.borrow().outstanding > 0 {
            self.delivered().await;
        }
    }

    /// Records queued and not yet delivered.
    pub fn outstanding(&self) -> usize {
        self.inner.borrow().outstanding
    }

    async fn delivered(&self) {
        let (tx, rx) = oneshot::channel();
        self.inner.borrow_mut().waiters.push(tx);
        let _ = rx.await;
    }

    fn close_after_linger(&self, topic: Rc<str>, partition: i32, id: u64) {
        let this = self.this.clone();
        let linger = self.config.linger;
        glommio::spawn_local(async move {
            glommio::timer::sleep(linger).await;
            let Some(this) = this.upgrade() else { return };
            let same = this
                .inner
                .borrow()
                .partitions
                .get(&(Rc::clone(&topic), partition))
                .and_then(|s| s.open.as_ref())
                .is_some_and(|o| o.id == id);
            if same && let Err(error) = this.close(&topic, partition) {
                this.fail_open(&topic, partition, error);
            }
        })
        .detach();
    }

    /// Closes a partition's open batch: stamped, encoded, queued for its leader.
    fn close(&self, topic: &Rc<str>, partition: i32) -> Result<(), Error> {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let leader = match inner.topics.get(&**topic) {
            Some((_, info, sticky)) => {
                let leader = info.partitions[partition as usize].leader;
                if *sticky % info.partitions.len() as i32 == partition {
                    let next = (partition + 1) % info.partitions.len() as i32;
                    if let Some(entry) = inner.topics.get_mut(&**topic) {
                        entry.2 = next;
                    }
                }
                leader
            }
            None => return Ok(()),
        };
        let Some(state) = inner.partitions.get_mut(&(Rc::clone(topic), partition)) else { return Ok(()) };
        let Some(open) = state.open.take() else { return Ok(()) };
        let stamp = self.producer.get().map(|(producer_id, epoch)| ProducerStamp {
            producer_id,
            epoch,
            base_sequence: state.next_sequence,
        });
        state.next_sequence = state.next_sequence.wrapping_add(open.opaques.len() as i32) & i32::MAX;
        let batch = open.builder.finish(self.config.codec, stamp)?;
        inner.ready.entry(leader).or_default().push_back(Ready {
            topic: Rc::clone(topic),
            partition,
            batch: Bytes::from(batch),
            opaques: open.opaques,
            attempts: 0,
            bytes: open.bytes,
        });
        drop(guard);
        self.wake(leader);
        Ok(())
    }

    fn fail_open(&self, topic: &Rc<str>, partition: i32, error: Error) {
        let open =
            self.inner.borrow_mut().partitions.get_mut(&(Rc::clone(topic), partition)).and_then(|s| s.open.take());
        if let Some(open) = open {
            self.deliver(topic, partition, &open.opaques, -1, Some(error), open.bytes);
        }
    }

    /// Starts (once) and wakes the sender task of `leader`.
    fn wake(&self, leader: i32) {
        let mut inner = self.inner.borrow_mut();
        let sender = inner.senders.entry(leader).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded();
            glommio::spawn_local(send_loop(self.this.clone(), leader, rx)).detach();
            tx
        });
        let _ = sender.unbounded_send(());
    }

    /// The batches of the next request to `leader`, if one may go now.
    fn next_request(&self, leader: i32) -> Vec<Ready> {
        if self.config.linger.is_zero() {
            let open: Vec<(Rc<str>, i32)> = {
                let inner = self.inner.borrow();
                inner
                    .partitions
                    .iter()
                    .filter(|((topic, partition), s)| {
                        s.open.is_some()
                            && inner
                                .topics
                                .get(&**topic)
                                .is_some_and(|(_, info, _)| info.partitions[*partition as usize].leader == leader)
                    })
                    .map(|((t, p), _)| (Rc::clone(t), *p))
                    .collect()
            };
            for (topic, partition) in open {
                if let Err(error) = self.close(&topic, partition) {
                    self.fail_open(&topic, partition, error);
                }
            }
        }
        let mut inner = self.inner.borrow_mut();
        if inner.in_flight.get(&leader).copied().unwrap_or(0) >= self.config.max_in_flight {
            return Vec::new();
        }
        let Some(queue) = inner.ready.get_mut(&leader) else { return Vec::new() };
        let mut taken = Vec::new();
        let mut bytes = 0;
        while let Some(next) = queue.front() {
            // One batch per partition per request: Kafka takes no more.
            if !taken.is_empty()
                && (bytes + next.batch.len() > self.config.request_bytes
                    || taken.iter().any(|r: &Ready| r.topic == next.topic && r.partition == next.partition))
            {
                break;
            }
            bytes += next.batch.len();
            taken.extend(queue.pop_front());
        }
        if !taken.is_empty() {
            *inner.in_flight.entry(leader).or_default() += 1;
        }
        taken
    }

    fn produce_request(&self, batches: &[Ready]) -> ProduceRequest {
        let mut by_topic: BTreeMap<Rc<str>, Vec<&Ready>> = BTreeMap::new();
        for ready in batches {
            by_topic.entry(Rc::clone(&ready.topic)).or_default().push(ready);
        }
        let topic_data = by_topic
            .iter()
            .map(|(topic, batches)| {
                let id = self.inner.borrow().topics.get(&**topic).map(|(_, info, _)| info.uuid).unwrap_or_default();
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_topic_id(id)
                    .with_partition_data(
                        batches
                            .iter()
                            .map(|r| {
                                PartitionProduceData::default()
                                    .with_index(r.partition)
                                    .with_records(Some(r.batch.clone()))
                            })
                            .collect(),
                    )
            })
            .collect();
        let timeout_ms = i32::try_from(self.client.config().request_timeout.as_millis()).unwrap_or(i32::MAX);
        ProduceRequest::default().with_acks(self.config.acks).with_timeout_ms(timeout_ms).with_topic_data(topic_data)
    }

    /// Handles the response to a request carrying `batches` (already written).
    async fn complete(&self, leader: i32, batches: Vec<Ready>, response: ResponseFuture) {
        let response = response.await;
        let mut results: HashMap<(String, i32), (i16, i64, Option<String>)> = HashMap::new();
        let mut failure = None;
        match response {
            Ok(response) => {
                for topic in &response.responses {
                    let name = if topic.name.0.is_empty() {
                        self.inner
                            .borrow()
                            .topics
                            .values()
                            .find(|(_, info, _)| info.uuid == topic.topic_id)
                            .map(|(name, _, _)| name.to_string())
                            .unwrap_or_default()
                    } else {
                        topic.name.0.to_string()
                    };
                    for p in &topic.partition_responses {
                        let message = p.error_message.as_ref().map(ToString::to_string);
                        results.insert((name.clone(), p.index), (p.error_code, p.base_offset, message));
                    }
                }
            }
            Err(error) => failure = Some(error),
        }
        let mut retry = Vec::new();
        for mut ready in batches {
            let outcome = results.get(&(ready.topic.to_string(), ready.partition));
            let (error, retriable) = match (&failure, outcome) {
                (Some(error), _) => (Some(error.clone()), true),
                (None, Some((0 | 46, base_offset, _))) => {
                    // 46: DUPLICATE_SEQUENCE_NUMBER: written before.
                    let base = *base_offset;
                    self.deliver(&ready.topic, ready.partition, &ready.opaques, base, None, ready.bytes);
                    continue;
                }
                (None, Some((code, _, message))) => {
                    let error = Error::kafka(
                        "Produce",
                        *code,
                        message.as_ref().map(|m| StrBytes::from_string(m.clone())).as_ref(),
                    );
                    (Some(error), retriable_code(*code))
                }
                (None, None) => (Some(Error::Invalid("the broker did not answer for a partition".into())), true),
            };
            if retriable && ready.attempts < self.config.retries {
                ready.attempts += 1;
                retry.push(ready);
            } else {
                self.deliver(&ready.topic, ready.partition, &ready.opaques, -1, error, ready.bytes);
            }
        }
        if !retry.is_empty() {
            // Fresh metadata (a new leader?), a pause, then first in line again, in order.
            glommio::timer::sleep(Duration::from_millis(100)).await;
            let topics: Vec<String> = retry.iter().map(|r| r.topic.to_string()).collect();
            if let Ok(info) = self.client.metadata(Some(&topics)).await {
                let mut inner = self.inner.borrow_mut();
                for (name, topic) in info.topics {
                    if let Some(entry) = inner.topics.get_mut(&name)
                        && topic.partitions.len() >= entry.1.partitions.len()
                    {
                        entry.1 = topic;
                    }
                }
            }
            let mut inner = self.inner.borrow_mut();
            for ready in retry.into_iter().rev() {
                let leader = inner
                    .topics
                    .get(&*ready.topic)
                    .map_or(leader, |(_, info, _)| info.partitions[ready.partition as usize].leader);
                inner.ready.entry(leader).or_default().push_front(ready);
            }
        }
    }

    fn deliver(&self, topic: &str, partition: i32, opaques: &[u64], base: i64, error: Option<Error>, bytes: usize) {
        for (i, opaque) in opaques.iter().enumerate() {
            let offset = if base >= 0 && error.is_none() { base + i as i64 } else { -1 };
            (self.on_delivery)(topic, &Delivery { partition, offset, opaque: *opaque, error: error.clone() });
        }
        let waiters = {
            let mut inner = self.inner.borrow_mut();
            inner.outstanding = inner.outstanding.saturating_sub(opaques.len());
            inner.queued_bytes -= bytes;
            std::mem::take(&mut inner.waiters)
        };
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }
}

type ResponseFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<ProduceResponse, Error>>>>;

/// Sends requests to one leader whenever woken, while requests may go. Requests are written
/// here, one after another on the leader's one connection, so a partition's batches reach
/// the broker in sequence order; their responses are awaited by tasks of their own.
async fn send_loop(producer: Weak<Producer>, leader: i32, mut wakes: mpsc::UnboundedReceiver<()>) {
    while wakes.next().await.is_some() {
        loop {
            let Some(this) = producer.upgrade() else { return };
            let connection = this.client.broker(leader).await;
            let batches = this.next_request(leader);
            if batches.is_empty() {
                break;
            }
            let request = this.produce_request(&batches);
            let response: ResponseFuture = match connection {
                Ok(connection) if this.config.acks == 0 => {
                    let sent = connection.send_oneway(&request);
                    for ready in &batches {
                        let error = sent.clone().err();
                        this.deliver(&ready.topic, ready.partition, &ready.opaques, -1, error, ready.bytes);
                    }
                    if let Some(count) = this.inner.borrow_mut().in_flight.get_mut(&leader) {
                        *count = count.saturating_sub(1);
                    }
                    continue;
                }
                Ok(connection) => match connection.send_now(request) {
                    Ok(response) => Box::pin(response),
                    Err(error) => Box::pin(futures_lite::future::ready(Err(error))),
                },
                Err(error) => Box::pin(futures_lite::future::ready(Err(error))),
            };
            let weak = producer.clone();
            glommio::spawn_local(async move {
                let Some(this) = weak.upgrade() else { return };
                this.complete(leader, batches, response).await;
                if let Some(count) = this.inner.borrow_mut().in_flight.get_mut(&leader) {
                    *count = count.saturating_sub(1);
                }
                let leaders: Vec<i32> = this.inner.borrow().ready.keys().copied().collect();
                for leader in leaders {
                    this.wake(leader);
                }
            })
            .detach();
        }
    }
}

/// Errors worth sending the batch again for.
fn retriable_code(code: i16) -> bool {
    // NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE, REQUEST_TIMED_OUT, NETWORK_EXCEPTION,
    // NOT_ENOUGH_REPLICAS(_AFTER_APPEND), KAFKA_STORAGE_ERROR, OUT_OF_ORDER_SEQUENCE_NUMBER
    // (an earlier batch is being retried), UNKNOWN_TOPIC_OR_PARTITION (metadata lag).
    matches!(code, 6 | 5 | 7 | 13 | 19 | 20 | 56 | 45 | 3)
}

/// Kafka's murmur2 (the Java client's default partitioner hashes keys with it).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from Kafka's UtilsTest (murmur2 of these strings' UTF-8 bytes).
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971);
        assert_eq!(murmur2(b"abc"), 479470107);
    }
}
