//! A consumer of assigned partitions: each poll sends one Fetch per leader (concurrently,
//! long-polling up to `max_wait`), decodes the batches and moves each partition's position
//! past what it returns. Starting points: earliest, latest, an offset, or a time
//! (ListOffsets). A position out of range (records deleted under it) starts again from the
//! earliest offset, as `auto.offset.reset=earliest` does.
//!
//! Incremental fetch sessions (KIP-227, Fetch v7+; [`crate::fetch_session`]): one session
//! per leader; after the first request, each names only the partitions whose offset moved,
//! and the broker answers only for partitions with something new. Group membership is in
//! [`crate::group_consumer`], which drives this consumer.
//!
//! Prefetch (on by default): as soon as a poll has moved the positions, the next round of
//! fetches is sent, so the broker reads and sends while the caller handles the records. A
//! prefetched response is used only if the next poll wants exactly the offsets it asked for
//! (after a seek or a new assignment it is dropped and a fresh fetch is sent).
//!
//! Owner: one glommio executor thread.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::admin::{EARLIEST, LATEST};
use crate::fetch_session::{
    FETCH_SESSION_ID_NOT_FOUND, FetchSession, INVALID_FETCH_SESSION_EPOCH, SessionRequest, Wanted,
};
use crate::records::{self, Record};
use crate::{Client, Error, TopicInfo, check};

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub max_wait: Duration,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
    /// 0 read uncommitted, 1 read committed.
    pub isolation_level: i8,
    /// Send the next round of fetches at the end of each poll (see the module docs).
    pub prefetch: bool,
    /// Incremental fetch sessions (KIP-227) with brokers that offer them.
    pub sessions: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 52_428_800,
            partition_max_bytes: 1_048_576,
            isolation_level: 0,
            prefetch: true,
            sessions: true,
        }
    }
}

/// Where an assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    Offset(i64),
    /// The first record at or after this time (ms).
    Timestamp(i64),
}

/// (next offset to fetch, high watermark last seen or -1)
type Position = (i64, i64);

/// A leader's Fetch answer, with what its request said about the fetch session.
struct Fetched {
    leader: i32,
    session: Option<SessionRequest>,
    result: Result<FetchResponse, Error>,
}

type FetchFuture = Pin<Box<dyn Future<Output = Fetched>>>;

/// A fetch sent ahead of the poll that will want it.
struct Prefetch {
    leader: i32,
    wanted: Wanted,
    response: FetchFuture,
}

/// A record with where it came from.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub topic: Rc<str>,
    pub partition: i32,
    pub record: Record,
}

pub struct Consumer {
    client: Rc<Client>,
    config: ConsumerConfig,
    topics: RefCell<BTreeMap<Rc<str>, TopicInfo>>,
    /// Next offset to fetch, and the high watermark last seen.
    positions: RefCell<BTreeMap<(Rc<str>, i32), Position>>,
    prefetched: RefCell<Vec<Prefetch>>,
    /// One fetch session per leader.
    sessions: RefCell<BTreeMap<i32, FetchSession>>,
    incremental_fetches: Cell<u64>,
}

impl Consumer {
    pub fn new(client: Rc<Client>, config: ConsumerConfig) -> Self {
        Self {
            client,
            config,
            topics: RefCell::new(BTreeMap::new()),
            positions: RefCell::new(BTreeMap::new()),
            prefetched: RefCell::default(),
            sessions: RefCell::default(),
            incremental_fetches: Cell::new(0),
        }
    }

    /// Adds partitions of `topic` (all of them if `partitions` is empty) starting at `start`.
    pub async fn assign(&self, topic: &str, partitions: &[i32], start: StartAt) -> Result<Vec<i32>, Error> {
        let info = self.client.topic(topic).await?;
        let all: Vec<i32> = info.partitions.iter().map(|p| p.partition).collect();
        let wanted: Vec<i32> = if partitions.is_empty() { all.clone() } else { partitions.to_vec() };
        if let Some(missing) = wanted.iter().find(|p| !all.contains(p)) {
            return Err(Error::Invalid(format!("{topic} has no partition {missing}")));
        }
        let starts: BTreeMap<i32, i64> = match start {
            StartAt::Offset(offset) => wanted.iter().map(|p| (*p, offset)).collect(),
            StartAt::Earliest | StartAt::Latest | StartAt::Timestamp(_) => {
                let timestamp = match start {
                    StartAt::Earliest => EARLIEST,
                    StartAt::Latest => LATEST,
                    StartAt::Timestamp(ms) => ms,
                    StartAt::Offset(_) => LATEST,
                };
                let mut starts = BTreeMap::new();
                for (partition, offset) in self.client.list_offsets(topic, &wanted, timestamp).await? {
                    let offset = offset?;
                    // No record at or after the time: start at the end.
                    let offset = if offset < 0 { self.latest(topic, partition).await? } else { offset };
                    starts.insert(partition, offset);
                }
                starts
            }
        };
        self.place(topic, info, starts);
        Ok(wanted)
    }

    /// Adds partitions of `topic`, each at its own offset (committed offsets of a group).
    pub async fn assign_offsets(&self, topic: &str, offsets: &BTreeMap<i32, i64>) -> Result<(), Error> {
        let info = self.client.topic(topic).await?;
        if let Some(missing) = offsets.keys().find(|p| !info.partitions.iter().any(|i| i.partition == **p)) {
            return Err(Error::Invalid(format!("{topic} has no partition {missing}")));
        }
        self.place(topic, info, offsets.clone());
        Ok(())
    }

    fn place(&self, topic: &str, info: TopicInfo, starts: BTreeMap<i32, i64>) {
        // The sessions' view of these partitions may be older than the new positions.
        self.sessions.borrow_mut().clear();
        let name: Rc<str> = Rc::from(topic);
        self.topics.borrow_mut().insert(Rc::clone(&name), info);
        let mut positions = self.positions.borrow_mut();
        for (partition, offset) in starts {
            positions.insert((Rc::clone(&name), partition), (offset, -1));
        }
    }

    /// Gives up every assigned partition (a prefetched response is dropped with them).
    pub fn unassign_all(&self) {
        self.positions.borrow_mut().clear();
        self.prefetched.borrow_mut().clear();
        self.sessions.borrow_mut().clear();
    }

    /// Every assigned partition and its next offset to read.
    pub fn positions(&self) -> Vec<(String, i32, i64)> {
        self.positions
            .borrow()
            .iter()
            .map(|((topic, partition), (next, _))| (topic.to_string(), *partition, *next))
            .collect()
    }

    async fn latest(&self, topic: &str, partition: i32) -> Result<i64, Error> {
        let offsets = self.client.list_offsets(topic, &[partition], LATEST).await?;
        offsets.into_values().next().unwrap_or(Ok(0))
    }

    /// The next offset of an assigned partition, and the high watermark last seen (-1:
    /// none yet).
    pub fn position(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        self.positions.borrow().get(&(Rc::from(topic), partition)).copied()
    }

    /// True when every assigned partition has been read up to the high watermark last seen.
    pub fn caught_up(&self) -> bool {
        self.positions.borrow().values().all(|(next, high)| *high >= 0 && next >= high)
    }

    /// One round of fetches (a request per leader, concurrently): the records that came.
    pub async fn poll(&self) -> Result<Vec<Consumed>, Error> {
        let mut prefetched = std::mem::take(&mut *self.prefetched.borrow_mut());
        let wanted_now = self.wanted_by_leader();
        if wanted_now.is_empty() {
            // Nothing assigned (a group member without partitions): wait as a long poll would,
            // so that a caller polling in a loop leaves the executor to its other tasks.
            glommio::timer::sleep(self.config.max_wait).await;
            return Ok(Vec::new());
        }
        // A prefetch for other offsets is let go unread. Its answer may have carried what the
        // leader's session now holds (a partition error, say) and will not repeat, so that
        // session starts again with a full request.
        prefetched.retain(|p| {
            let used = wanted_now.get(&p.leader) == Some(&p.wanted);
            if !used {
                self.sessions.borrow_mut().remove(&p.leader);
            }
            used
        });
        let mut fetches = Vec::new();
        for (leader, wanted) in wanted_now {
            let ready = prefetched.iter().position(|p| p.leader == leader);
            let response = match ready {
                Some(index) => prefetched.swap_remove(index).response,
                None => self.send_fetch(leader, &wanted).await?,
            };
            fetches.push(response);
        }
        let mut consumed = Vec::new();
        let mut first_error = None;
        for fetched in futures_util::future::join_all(fetches).await {
            match self.settle(fetched) {
                Ok(response) => match self.apply(response).await {
                    Ok(records) => consumed.extend(records),
                    Err(error) => {
                        first_error.get_or_insert(error);
                    }
                },
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        if self.config.prefetch && first_error.is_none() {
            let mut next = Vec::new();
            for (leader, wanted) in self.wanted_by_leader() {
                if let Ok(response) = self.send_fetch(leader, &wanted).await {
                    next.push(Prefetch { leader, wanted, response });
                }
            }
            *self.prefetched.borrow_mut() = next;
        }
        match first_error {
            Some(error) if consumed.is_empty() => Err(error),
            _ => Ok(consumed),
        }
    }

    /// Fetches sent as incremental requests of a fetch session (tests, statistics).
    pub fn incremental_fetches(&self) -> u64 {
        self.incremental_fetches.get()
    }

    /// Takes a fetch's answer into its session; the response to apply, if any. An answer that
    /// the session is unknown or out of step is no error for the caller: the session closes
    /// and the next poll opens a new one with a full request.
    fn settle(&self, fetched: Fetched) -> Result<FetchResponse, Error> {
        let Fetched { leader, session, result } = fetched;
        if let Some(request) = &session {
            let mut sessions = self.sessions.borrow_mut();
            let state = sessions.entry(leader).or_default();
            match &result {
                Ok(response) => state.on_response(request, response.error_code, response.session_id),
                Err(_) => state.close(),
            }
        }
        let response = result?;
        if matches!(response.error_code, FETCH_SESSION_ID_NOT_FOUND | INVALID_FETCH_SESSION_EPOCH) {
            return Ok(FetchResponse::default());
        }
        Ok(response)
    }

    /// Every assigned partition's next offset, by leader (-1: leader unknown).
    fn wanted_by_leader(&self) -> BTreeMap<i32, Wanted> {
        let mut by_leader: BTreeMap<i32, Wanted> = BTreeMap::new();
        {
            let topics = self.topics.borrow();
            for ((topic, partition), (offset, _)) in self.positions.borrow().iter() {
                let leader = topics
                    .get(topic)
                    .and_then(|t| t.partitions.iter().find(|p| p.partition == *partition))
                    .map_or(-1, |p| p.leader);
                by_leader.entry(leader).or_default().push((Rc::clone(topic), *partition, *offset));
            }
        }
        by_leader
    }

    /// Sends one leader's Fetch now; the future is its response.
    async fn send_fetch(&self, leader: i32, wanted: &Wanted) -> Result<FetchFuture, Error> {
        let connection = if leader < 0 { self.client.any_broker().await? } else { self.client.broker(leader).await? };
        let sessions = self.config.sessions && leader >= 0 && connection.version::<FetchRequest>()? >= 7;
        let session = sessions.then(|| self.sessions.borrow_mut().entry(leader).or_default().next_request(wanted));
        let named = session.as_ref().map_or(wanted, |s| &s.partitions);
        if session.as_ref().is_some_and(|s| !s.is_full()) {
            self.incremental_fetches.set(self.incremental_fetches.get() + 1);
        }
        let mut topics: BTreeMap<Rc<str>, Vec<FetchPartition>> = BTreeMap::new();
        for (topic, partition, offset) in named {
            topics.entry(Rc::clone(topic)).or_default().push(
                FetchPartition::default()
                    .with_partition(*partition)
                    .with_fetch_offset(*offset)
                    .with_current_leader_epoch(-1)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(self.config.partition_max_bytes),
            );
        }
        let ids: BTreeMap<Rc<str>, uuid::Uuid> =
            self.topics.borrow().iter().map(|(name, info)| (Rc::clone(name), info.uuid)).collect();
        let mut forgotten: BTreeMap<Rc<str>, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in session.iter().flat_map(|s| &s.forgotten) {
            forgotten.entry(Rc::clone(topic)).or_default().push(*partition);
        }
        let forgotten = forgotten
            .into_iter()
            .map(|(topic, partitions)| {
                ForgottenTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_topic_id(ids.get(&topic).copied().unwrap_or_default())
                    .with_partitions(partitions)
            })
            .collect();
        let (session_id, epoch) = session.as_ref().map_or((0, -1), |s| (s.session_id, s.epoch));
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(i32::try_from(self.config.max_wait.as_millis()).unwrap_or(i32::MAX))
            .with_min_bytes(self.config.min_bytes)
            .with_max_bytes(self.config.max_bytes)
            .with_isolation_level(self.config.isolation_level)
            .with_session_id(session_id)
            .with_session_epoch(epoch)
            .with_forgotten_topics_data(forgotten)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        FetchTopic::default()
                            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                            .with_topic_id(ids.get(&topic).copied().unwrap_or_default())
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let response = match connection.send_now(request) {
            Ok(response) => response,
            Err(error) => {
                if sessions {
                    self.sessions.borrow_mut().entry(leader).or_default().close();
                }
                return Err(error);
            }
        };
        Ok(Box::pin(async move { Fetched { leader, session, result: response.await } }))
    }

    /// Takes a Fetch response in: positions move past the records it returns.
    async fn apply(&self, response: FetchResponse) -> Result<Vec<Consumed>, Error> {
        check("Fetch", response.error_code, None)?;
        let mut consumed = Vec::new();
        let mut refresh = false;
        for topic in response.responses {
            let name: Option<Rc<str>> =
                self.topics
                    .borrow()
                    .iter()
                    .find(|(name, info)| {
                        if topic.topic.0.is_empty() { info.uuid == topic.topic_id } else { ***name == *topic.topic.0 }
                    })
                    .map(|(name, _)| Rc::clone(name));
            let Some(name) = name else { continue };
            for partition in topic.partitions {
                let key = (Rc::clone(&name), partition.partition_index);
                let Some((offset, _)) = self.positions.borrow().get(&key).copied() else { continue };
                match partition.error_code {
                    0 => {}
                    1 => {
                        // OFFSET_OUT_OF_RANGE: start again from the earliest record.
                        let earliest = self.client.list_offsets(&name, &[partition.partition_index], EARLIEST).await?;
                        if let Some(Ok(start)) = earliest.into_values().next() {
                            self.positions.borrow_mut().insert(key, (start, partition.high_watermark));
                        }
                        continue;
                    }
                    6 | 5 | 3 => {
                        refresh = true;
                        continue;
                    }
                    code => return Err(Error::kafka("Fetch", code, None)),
                }
                let records = match partition.records {
                    Some(bytes) => records::decode(&bytes, offset)?,
                    None => Vec::new(),
                };
                let next = records.last().map_or(offset, |r| r.offset + 1);
                self.positions.borrow_mut().insert(key, (next, partition.high_watermark));
                consumed.extend(records.into_iter().map(|record| Consumed {
                    topic: Rc::clone(&name),
                    partition: partition.partition_index,
                    record,
                }));
            }
        }
        if refresh {
            let names: Vec<String> = self.topics.borrow().keys().map(ToString::to_string).collect();
            let info = self.client.metadata(Some(&names)).await?;
            let mut topics = self.topics.borrow_mut();
            for (name, topic) in info.topics {
                if let Some(entry) = topics.get_mut(name.as_str()) {
                    *entry = topic;
                }
            }
        }
        Ok(consumed)
    }
}
