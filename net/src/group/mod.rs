//! Consumer groups: the coordinator of a group is the shard owning the group's partition of
//! the internal topic `__consumer_offsets` (Java `String.hashCode` of the group id modulo the
//! partition count, as Kafka places it). That partition holds the group's state as records in
//! Kafka's own schemas ([`store`]); the shard keeps the state in memory ([`classic`]) and
//! rebuilds it from the partition at start.
//!
//! [`GroupService`] is the driver: it runs the state machine, appends the records it asks
//! for, waits until they are durable, then answers the requests that waited on them. A
//! committed offset is visible to OffsetFetch only once its record is durable.
//!
//! Owner: one `GroupService` per shard, serving the groups of the partitions it owns.

pub mod classic;
pub mod consumer;
pub mod consumer_store;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use corelog_engine::log::{ShardLog, TopicPartition};
use futures_channel::oneshot;

use classic::{Committed, Coordinator, CoordinatorConfig, Effects, JoinOutcome, JoinRequest, MemberRef, Reply};
use classic::{SyncOutcome, SyncRequest, Ticket, error_code};
use consumer::{ConsumerCoordinator, HeartbeatOutcome, HeartbeatRequest};
use consumer_store::ConsumerRecord;
use store::{OffsetValue, StoredRecord};

use crate::registry::Registry;

/// The internal topic holding group state and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Records per batch of a group state snapshot (offset records are ~100 bytes: batches stay
/// far below `max.message.bytes`).
const SNAPSHOT_BATCH_RECORDS: usize = 2_000;

/// Bytes per batch of group records written together (far below `max.message.bytes`).
const CONSUMER_BATCH_BYTES: usize = 256 << 10;
/// A record's framing in a batch, at most (length, attributes, deltas, key and value lengths).
const RECORD_OVERHEAD_BYTES: usize = 32;
/// The most bytes of topic names (and expression) one member may subscribe with: its
/// metadata record must fit a batch.
const SUBSCRIPTION_BYTES_MAX: usize = 64 << 10;

/// How often the coordinator checks session timeouts and rebalance deadlines.
const TICK: Duration = Duration::from_millis(20);

/// The `__consumer_offsets` partition of a group: Java's `String.hashCode`, made
/// non-negative as Kafka's `Utils.abs` does, modulo the partition count.
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    let mut hash: i32 = 0;
    for unit in group_id.encode_utf16() {
        hash = hash.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions.max(1)
}

/// A group as ListGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
    /// "classic" or "consumer".
    pub group_type: &'static str,
}

/// A consumer-protocol group as ConsumerGroupDescribe shows it (partitions by topic name).
#[derive(Debug, Clone)]
pub struct ConsumerGroupView {
    pub group_id: String,
    pub state: &'static str,
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<ConsumerMemberView>,
}

#[derive(Debug, Clone)]
pub struct ConsumerMemberView {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed: Vec<String>,
    /// The subscription's regular expression, if any (`subscribed` holds what it matches).
    pub subscribed_regex: Option<String>,
    pub assigned: consumer::Assignment,
    pub target: consumer::Assignment,
}

/// One partition's commit in an OffsetCommit.
#[derive(Debug, Clone)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// A group as DescribeGroups and ListGroups show it.
#[derive(Debug, Clone, Default)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<DescribedMember>,
}

#[derive(Debug, Clone, Default)]
pub struct DescribedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: bytes::Bytes,
    pub assignment: bytes::Bytes,
}

enum Waiter {
    Join(oneshot::Sender<JoinOutcome>),
    Sync(oneshot::Sender<SyncOutcome>),
}

pub struct GroupService {
    this: std::rc::Weak<GroupService>,
    coordinator: RefCell<Coordinator>,
    /// Per `__consumer_offsets` partition: commits (and offset deletions) appended but not yet
    /// applied to memory. A snapshot is taken only when there are none.
    unapplied: RefCell<HashMap<i32, usize>>,
    /// Partitions whose snapshot is being written.
    snapshotting: RefCell<std::collections::HashSet<i32>>,
    /// Each group's last group record made durable: what a snapshot writes again (the live
    /// state may be mid-rebalance, which no record describes).
    written_groups: RefCell<HashMap<String, StoredRecord>>,
    consumers: RefCell<ConsumerCoordinator>,
    /// The registry version the consumer coordinator last got the topic names of.
    consumer_topics_version: Cell<u64>,
    registry: std::sync::Arc<Registry>,
    log: Rc<ShardLog>,
    waiters: RefCell<HashMap<Ticket, Waiter>>,
    next_ticket: Cell<Ticket>,
}

impl GroupService {
    pub fn new(
        log: Rc<ShardLog>,
        registry: std::sync::Arc<Registry>,
        config: CoordinatorConfig,
        member_id_prefix: String,
    ) -> Rc<Self> {
        Rc::new_cyclic(|this| Self {
            this: this.clone(),
            unapplied: RefCell::new(HashMap::new()),
            snapshotting: RefCell::new(std::collections::HashSet::new()),
            written_groups: RefCell::new(HashMap::new()),
            consumers: RefCell::new(ConsumerCoordinator::new(config.consumer.clone(), member_id_prefix.clone())),
            consumer_topics_version: Cell::new(0),
            registry,
            coordinator: RefCell::new(Coordinator::new(config, member_id_prefix)),
            log,
            waiters: RefCell::new(HashMap::new()),
            next_ticket: Cell::new(0),
        })
    }

    /// Rebuilds the groups of one owned `__consumer_offsets` partition from its records.
    /// Returns (records replayed, records skipped as unreadable).
    pub async fn load(&self, partition: i32) -> Result<(usize, usize), String> {
        let name = TopicPartition::new(OFFSETS_TOPIC, partition);
        let mut offset = self.log.offsets(&name).map_err(|e| e.to_string())?.log_start_offset;
        let (mut replayed, mut skipped) = (0, 0);
        let now_ms = corelog_engine::now_ms();
        let topic_names: HashMap<consumer_store::TopicId, String> = self
            .registry
            .snapshot()
            .values()
            .filter_map(|t| Some((crate::registry::parse_hex_id(&t.id)?, t.name.clone())))
            .collect();
        loop {
            let result = self.log.read(&name, offset, 1 << 20).await.map_err(|e| e.to_string())?;
            let bytes = result.to_vec().await.map_err(|e| e.to_string())?;
            let Some(next) = next_offset_after_batches(&bytes) else {
                break;
            };
            let (records, unreadable) = store::decode_batches(&bytes);
            skipped += unreadable;
            let mut coordinator = self.coordinator.borrow_mut();
            let mut consumers = self.consumers.borrow_mut();
            for (log_offset, record) in records {
                if log_offset < offset {
                    continue;
                }
                replayed += 1;
                match record {
                    StoredRecord::Consumer(record) => {
                        consumers.replay(partition, record, &|id| topic_names.get(id).cloned());
                    }
                    record => {
                        self.remember_group_record(&record);
                        coordinator.replay(partition, log_offset, record, now_ms);
                    }
                }
            }
            offset = next.max(offset + 1);
        }
        self.refresh_consumer_topics();
        let topics = self.registry.snapshot();
        let partitions_of = |topic: &str| topics.get(topic).map(|t| t.partitions);
        self.consumers.borrow_mut().finish_load(partition, now_ms, &partitions_of);
        Ok((replayed, skipped))
    }

    fn ticket(&self) -> Ticket {
        let ticket = self.next_ticket.get() + 1;
        self.next_ticket.set(ticket);
        ticket
    }

    pub async fn join(&self, request: JoinRequest, partition: i32) -> JoinOutcome {
        let member_id = request.member_id.clone();
        let mut strings = vec![
            request.group_id.as_str(),
            &request.member_id,
            &request.client_id,
            &request.client_host,
            &request.protocol_type,
        ];
        strings.extend(request.instance_id.as_deref());
        strings.extend(request.protocols.iter().map(|(name, _)| name.as_str()));
        if !strings_fit(&strings) {
            return JoinOutcome {
                error_code: error_code::INVALID_REQUEST,
                member_id,
                generation_id: -1,
                ..JoinOutcome::default()
            };
        }
        if !self.consumers.borrow().is_empty_group(&request.group_id) {
            let error_code = error_code::INCONSISTENT_GROUP_PROTOCOL;
            return JoinOutcome { error_code, member_id, generation_id: -1, ..JoinOutcome::default() };
        }
        let ticket = self.ticket();
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(ticket, Waiter::Join(tx));
        let effects = self.coordinator.borrow_mut().join(ticket, request, partition, corelog_engine::now_ms());
        self.apply(effects).await;
        rx.await.unwrap_or_else(|_| JoinOutcome {
            error_code: error_code::COORDINATOR_NOT_AVAILABLE,
            member_id,
            ..JoinOutcome::default()
        })
    }

    pub async fn sync(&self, request: SyncRequest) -> SyncOutcome {
        let ticket = self.ticket();
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(ticket, Waiter::Sync(tx));
        let effects = self.coordinator.borrow_mut().sync(ticket, request, corelog_engine::now_ms());
        self.apply(effects).await;
        rx.await.unwrap_or_else(|_| SyncOutcome {
            error_code: error_code::COORDINATOR_NOT_AVAILABLE,
            ..SyncOutcome::default()
        })
    }

    pub fn heartbeat(&self, group_id: &str, who: &MemberRef) -> i16 {
        self.coordinator.borrow_mut().heartbeat(group_id, who, corelog_engine::now_ms())
    }

    pub async fn leave(&self, group_id: &str, leaving: &[MemberRef]) -> Vec<i16> {
        let (codes, effects) = self.coordinator.borrow_mut().leave(group_id, leaving, corelog_engine::now_ms());
        self.apply(effects).await;
        codes
    }

    /// OffsetCommit for one group: the group-level error, or one code per partition (in order).
    /// Partitions of unknown topics must be filtered out by the caller.
    pub async fn commit(
        &self,
        group_id: &str,
        partition: i32,
        who: &MemberRef,
        commits: &[OffsetCommit],
    ) -> Result<Vec<i16>, i16> {
        let now_ms = corelog_engine::now_ms();
        if !strings_fit(&[group_id, &who.member_id]) {
            return Err(error_code::INVALID_REQUEST);
        }
        let (records, codes) = {
            let mut coordinator = self.coordinator.borrow_mut();
            if self.consumers.borrow().is_empty_group(group_id) {
                coordinator.validate_commit(group_id, partition, who, now_ms)?;
            } else {
                // A consumer-protocol group: the member's current epoch (KIP-848).
                let epoch = self.consumers.borrow().member_epoch(group_id, &who.member_id)?;
                if who.generation_id > epoch {
                    return Err(consumer::error_code::FENCED_MEMBER_EPOCH);
                }
                if who.generation_id < epoch {
                    return Err(consumer::error_code::STALE_MEMBER_EPOCH);
                }
            }
            let mut records = Vec::new();
            let mut codes = Vec::with_capacity(commits.len());
            for commit in commits {
                if coordinator.metadata_too_large(commit.metadata.as_deref()) {
                    codes.push(error_code::OFFSET_METADATA_TOO_LARGE);
                    continue;
                }
                codes.push(error_code::NONE);
                records.push(StoredRecord::Offset {
                    group: group_id.to_string(),
                    topic: commit.topic.clone(),
                    partition: commit.partition,
                    value: Some(OffsetValue {
                        offset: commit.offset,
                        leader_epoch: commit.leader_epoch,
                        metadata: commit.metadata.clone().unwrap_or_default(),
                        commit_timestamp_ms: now_ms,
                    }),
                });
            }
            (records, codes)
        };
        if records.is_empty() {
            return Ok(codes);
        }
        self.unapplied_change(partition, 1);
        let persisted = self.persist(partition, &records).await;
        let base_offset = match persisted {
            Ok(base_offset) => base_offset,
            Err(_) => {
                self.unapplied_change(partition, -1);
                return Err(error_code::COORDINATOR_NOT_AVAILABLE);
            }
        };
        let mut coordinator = self.coordinator.borrow_mut();
        for (index, record) in records.into_iter().enumerate() {
            if let StoredRecord::Offset { topic, partition: topic_partition, value: Some(value), .. } = record {
                let committed = Committed {
                    offset: value.offset,
                    leader_epoch: value.leader_epoch,
                    metadata: value.metadata,
                    commit_timestamp_ms: value.commit_timestamp_ms,
                    log_offset: base_offset + index as i64,
                };
                coordinator.apply_offset(group_id, partition, (topic, topic_partition), Some(committed), now_ms);
            }
        }
        drop(coordinator);
        self.unapplied_change(partition, -1);
        self.maybe_snapshot(partition);
        Ok(codes)
    }

    /// Offsets retention: tombstones for expired offsets, persisted in the background (if one
    /// is lost to a crash, the offset expires again after the restart).
    fn expire_offsets(&self, now_ms: i64) {
        let tombstones = {
            let consumers = self.consumers.borrow();
            self.coordinator.borrow_mut().expire_offsets(now_ms, |group| !consumers.is_empty_group(group))
        };
        if tombstones.is_empty() {
            return;
        }
        let mut by_partition: HashMap<i32, Vec<StoredRecord>> = HashMap::new();
        for (partition, record) in tombstones {
            by_partition.entry(partition).or_default().push(record);
        }
        let Some(this) = self.this.upgrade() else { return };
        glommio::spawn_local(async move {
            for (partition, records) in by_partition {
                let count = records.len();
                match this.persist(partition, &records).await {
                    Ok(_) => tracing::info!(partition, expired = count, "committed offsets expired"),
                    Err(error) => tracing::warn!(partition, %error, "offset expiry not persisted"),
                }
            }
        })
        .detach();
    }

    fn unapplied_change(&self, partition: i32, delta: isize) {
        let mut unapplied = self.unapplied.borrow_mut();
        let count = unapplied.entry(partition).or_default();
        *count = count.saturating_add_signed(delta);
    }

    /// Rewrites a `__consumer_offsets` partition's live state (group records and committed
    /// offsets) at its end and moves its log start there once that is durable, when it has
    /// grown well past that state. Everything is appended without yielding, so no other
    /// record of the partition lands in between.
    fn maybe_snapshot(&self, partition: i32) {
        if self.snapshotting.borrow().contains(&partition)
            || self.unapplied.borrow().get(&partition).is_some_and(|n| *n > 0)
        {
            return;
        }
        let name = TopicPartition::new(OFFSETS_TOPIC, partition);
        let Ok(offsets) = self.log.offsets(&name) else { return };
        let records_held = offsets.log_end_offset - offsets.log_start_offset;
        let (snapshot, live) = {
            let coordinator = self.coordinator.borrow();
            if records_held < coordinator.config().offsets_snapshot_records_min {
                return;
            }
            let groups: Vec<&classic::Group> = coordinator.groups().filter(|g| g.partition == partition).collect();
            let consumer_records: Vec<StoredRecord> = {
                let topics = self.registry.snapshot();
                let topic_id = |name: &str| topics.get(name).and_then(|t| crate::registry::parse_hex_id(&t.id));
                let records = self.consumers.borrow().written_records(partition, &topic_id);
                records.into_iter().map(StoredRecord::Consumer).collect()
            };
            let live: i64 =
                groups.iter().map(|g| g.offsets.len() as i64 + 1).sum::<i64>() + consumer_records.len() as i64;
            if records_held < 2 * live {
                return;
            }
            let mut all = consumer_records;
            let written = self.written_groups.borrow();
            for group in groups {
                if let Some(record) = written.get(&group.id) {
                    all.push(record.clone());
                }
                all.extend(group.offsets.iter().map(|((topic, index), c)| StoredRecord::Offset {
                    group: group.id.clone(),
                    topic: topic.clone(),
                    partition: *index,
                    value: Some(OffsetValue {
                        offset: c.offset,
                        leader_epoch: c.leader_epoch,
                        metadata: c.metadata.clone(),
                        commit_timestamp_ms: c.commit_timestamp_ms,
                    }),
                }));
            }
            (encode_batches(&all, corelog_engine::now_ms()), live)
        };
        let now_ms = corelog_engine::now_ms();
        let mut start = None;
        let mut durables = Vec::with_capacity(snapshot.len());
        for batch in snapshot {
            let batch = BytesMut::from(&batch[..]);
            match self.log.append(&name, batch, now_ms) {
                Ok(appended) => {
                    start.get_or_insert(appended.base_offset);
                    durables.push(appended.durable);
                }
                Err(error) => {
                    tracing::warn!(%name, %error, "group state snapshot not written");
                    return;
                }
            }
        }
        let start = start.unwrap_or(offsets.log_end_offset);
        let (Some(this), log) = (self.this.upgrade(), Rc::clone(&self.log)) else { return };
        self.snapshotting.borrow_mut().insert(partition);
        glommio::spawn_local(async move {
            let durable = futures_util::future::join_all(durables).await.into_iter().all(|r| r.is_ok());
            if durable {
                match log.delete_records(&name, start).await {
                    Ok(log_start) => {
                        tracing::info!(%name, log_start, live_records = live, dropped = records_held, "group state snapshot")
                    }
                    Err(error) => tracing::warn!(%name, %error, "log start not moved after the group state snapshot"),
                }
            }
            this.snapshotting.borrow_mut().remove(&partition);
        })
        .detach();
    }

    /// Committed offsets of a group: all of them (`None`), or the requested partitions (those
    /// without a commit answer offset -1).
    /// OffsetFetch v9 of a consumer-protocol group member: the member must exist and send its
    /// current epoch (KIP-848). Requests without a member, and classic groups, pass.
    pub fn check_member_epoch(&self, group_id: &str, member: Option<(String, i32)>) -> Result<(), i16> {
        let Some((member_id, epoch)) = member else { return Ok(()) };
        let consumers = self.consumers.borrow();
        if consumers.is_empty_group(group_id) {
            return Ok(());
        }
        let current = consumers.member_epoch(group_id, &member_id)?;
        match epoch.cmp(&current) {
            std::cmp::Ordering::Greater => Err(consumer::error_code::FENCED_MEMBER_EPOCH),
            std::cmp::Ordering::Less => Err(consumer::error_code::STALE_MEMBER_EPOCH),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<&[(String, Vec<i32>)]>,
    ) -> Vec<(String, i32, Option<Committed>)> {
        let coordinator = self.coordinator.borrow();
        let group = coordinator.group(group_id);
        match wanted {
            None => group
                .map(|g| g.offsets.iter().map(|((t, p), c)| (t.clone(), *p, Some(c.clone()))).collect())
                .unwrap_or_default(),
            Some(topics) => topics
                .iter()
                .flat_map(|(topic, partitions)| {
                    partitions.iter().map(move |p| {
                        let committed = group.and_then(|g| g.offsets.get(&(topic.clone(), *p)).cloned());
                        (topic.clone(), *p, committed)
                    })
                })
                .collect(),
        }
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let coordinator = self.coordinator.borrow();
        let group = coordinator.group(group_id)?;
        let protocol = group.protocol.clone().unwrap_or_default();
        Some(GroupDescription {
            group_id: group.id.clone(),
            state: group.state.name(),
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: group
                .members
                .values()
                .map(|m| DescribedMember {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Every group of this shard with its member count and committed offsets, for metrics.
    pub fn metrics(&self) -> Vec<crate::metrics::GroupMetrics> {
        let consumers = self.consumers.borrow();
        let coordinator = self.coordinator.borrow();
        let mut groups: Vec<crate::metrics::GroupMetrics> = coordinator
            .groups()
            .map(|g| crate::metrics::GroupMetrics {
                group_id: g.id.clone(),
                members: consumers.group(&g.id).map_or(g.members.len(), |c| c.members.len()),
                offsets: g
                    .offsets
                    .iter()
                    .map(|((topic, partition), c)| (topic.clone(), *partition, c.offset))
                    .collect(),
            })
            .collect();
        for group in consumers.groups().filter(|c| coordinator.group(&c.id).is_none()) {
            groups.push(crate::metrics::GroupMetrics {
                group_id: group.id.clone(),
                members: group.members.len(),
                offsets: Vec::new(),
            });
        }
        groups
    }

    /// Every group of this shard.
    pub fn list(&self) -> Vec<ListedGroup> {
        let consumers = self.consumers.borrow();
        let mut listed: Vec<ListedGroup> = consumers
            .groups()
            .map(|g| ListedGroup {
                group_id: g.id.clone(),
                protocol_type: "consumer".into(),
                state: g.state(),
                group_type: "consumer",
            })
            .collect();
        for group in self.coordinator.borrow().groups() {
            if consumers.group(&group.id).is_none() {
                listed.push(ListedGroup {
                    group_id: group.id.clone(),
                    protocol_type: group.protocol_type.clone().unwrap_or_default(),
                    state: group.state.name(),
                    group_type: "classic",
                });
            }
        }
        listed
    }

    /// ConsumerGroupHeartbeat (KIP-848). Answers once what changed is durable.
    pub async fn consumer_heartbeat(&self, request: HeartbeatRequest, partition: i32) -> HeartbeatOutcome {
        let group_id = request.group_id.clone();
        let mut outcome = self.consumer_heartbeat_in_memory(request, partition);
        let not_durable = self.persist_consumer_changes().await;
        if not_durable.contains(&group_id) && outcome.error_code == error_code::NONE {
            outcome = HeartbeatOutcome {
                error_code: error_code::COORDINATOR_NOT_AVAILABLE,
                error_message: Some("the group state could not be written".into()),
                member_id: outcome.member_id,
                member_epoch: -1,
                ..Default::default()
            };
        }
        outcome
    }

    fn consumer_heartbeat_in_memory(&self, request: HeartbeatRequest, partition: i32) -> HeartbeatOutcome {
        let optional = [&request.instance_id, &request.rack_id, &request.subscribed_regex, &request.server_assignor];
        let strings_ok = strings_fit(&[&request.group_id, &request.member_id, &request.client_id])
            && optional.iter().all(|s| s.as_deref().is_none_or(|s| strings_fit(&[s])))
            && request.subscribed_topics.iter().flatten().all(|t| strings_fit(&[t]));
        let subscription_bytes = request.subscribed_topics.iter().flatten().map(String::len).sum::<usize>()
            + request.subscribed_regex.as_deref().map_or(0, str::len);
        if subscription_bytes > SUBSCRIPTION_BYTES_MAX {
            return HeartbeatOutcome {
                error_code: error_code::INVALID_REQUEST,
                error_message: Some(format!("the subscription is over {SUBSCRIPTION_BYTES_MAX} bytes of topic names")),
                member_id: request.member_id,
                member_epoch: -1,
                ..Default::default()
            };
        }
        if !strings_ok {
            return HeartbeatOutcome {
                error_code: error_code::INVALID_REQUEST,
                member_epoch: -1,
                ..Default::default()
            };
        }
        if self.coordinator.borrow().group(&request.group_id).is_some_and(|g| !g.members.is_empty()) {
            return HeartbeatOutcome {
                error_code: error_code::INCONSISTENT_GROUP_PROTOCOL,
                error_message: Some("the group is a classic group with members".into()),
                member_id: request.member_id,
                member_epoch: -1,
                ..Default::default()
            };
        }
        self.refresh_consumer_topics();
        let topics = self.registry.snapshot();
        let partitions_of = |topic: &str| topics.get(topic).map(|t| t.partitions);
        self.consumers.borrow_mut().heartbeat(request, partition, &partitions_of, corelog_engine::now_ms())
    }

    /// Tells the consumer coordinator the topics that exist, when they changed (subscriptions
    /// by regular expression are resolved against them; internal topics never match).
    fn refresh_consumer_topics(&self) {
        let version = self.registry.version();
        if self.consumer_topics_version.replace(version) == version {
            return;
        }
        let topics = self.registry.snapshot();
        let names = topics.keys().filter(|name| *name != OFFSETS_TOPIC).cloned().collect();
        let ids =
            topics.values().filter_map(|t| Some((t.name.clone(), crate::registry::parse_hex_id(&t.id)?))).collect();
        let mut consumers = self.consumers.borrow_mut();
        consumers.set_topic_names(names);
        consumers.set_topic_ids(ids);
    }

    /// A consumer-protocol group as ConsumerGroupDescribe shows it.
    pub fn describe_consumer_group(&self, group_id: &str) -> Option<ConsumerGroupView> {
        let consumers = self.consumers.borrow();
        let group = consumers.group(group_id)?;
        Some(ConsumerGroupView {
            group_id: group.id.clone(),
            state: group.state(),
            epoch: group.epoch,
            assignment_epoch: group.assignment_epoch,
            assignor: group.assignor.clone(),
            members: group
                .members
                .values()
                .map(|m| ConsumerMemberView {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    epoch: m.epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed: m.subscribed.clone(),
                    subscribed_regex: m.subscribed_regex.as_ref().map(|r| r.text.clone()),
                    assigned: m.assigned.clone(),
                    target: group.target.get(&m.member_id).cloned().unwrap_or_default(),
                })
                .collect(),
        })
    }

    pub async fn delete_group(&self, group_id: &str, partition: i32) -> i16 {
        if !self.consumers.borrow().is_empty_group(group_id) {
            return error_code::NON_EMPTY_GROUP;
        }
        self.consumers.borrow_mut().remove_group(group_id);
        if self.persist_consumer_changes().await.contains(group_id) {
            return error_code::COORDINATOR_NOT_AVAILABLE;
        }
        let tombstones = match self.coordinator.borrow_mut().delete_group(group_id) {
            Ok(tombstones) => tombstones,
            Err(code) => return code,
        };
        match self.persist(partition, &tombstones).await {
            Ok(_) => error_code::NONE,
            Err(_) => error_code::COORDINATOR_NOT_AVAILABLE,
        }
    }

    /// OffsetDelete: removes committed offsets of a group with no members consuming.
    pub async fn delete_offsets(&self, group_id: &str, partition: i32, targets: &[(String, i32)]) -> Result<(), i16> {
        let tombstones: Vec<StoredRecord> = {
            let coordinator = self.coordinator.borrow();
            let group = coordinator.group(group_id).ok_or(error_code::GROUP_ID_NOT_FOUND)?;
            let consumers = self.consumers.borrow();
            let consumer_subscribed = |topic: &str| {
                consumers
                    .group(group_id)
                    .is_some_and(|g| g.members.values().any(|m| m.subscribed.iter().any(|t| t == topic)))
            };
            if targets.iter().any(|(topic, _)| group.is_subscribed_to(topic) || consumer_subscribed(topic)) {
                return Err(error_code::GROUP_SUBSCRIBED_TO_TOPIC);
            }
            targets
                .iter()
                .filter(|key| group.offsets.contains_key(key))
                .map(|(topic, index)| StoredRecord::Offset {
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *index,
                    value: None,
                })
                .collect()
        };
        if tombstones.is_empty() {
            return Ok(());
        }
        self.unapplied_change(partition, 1);
        let persisted = self.persist(partition, &tombstones).await;
        if let Ok(base_offset) = persisted {
            let mut coordinator = self.coordinator.borrow_mut();
            for (index, record) in tombstones.into_iter().enumerate() {
                if let StoredRecord::Offset { topic, partition: topic_partition, .. } = record {
                    // A commit recorded after this tombstone stays.
                    coordinator.remove_offset(group_id, (topic, topic_partition), base_offset + index as i64);
                }
            }
        }
        self.unapplied_change(partition, -1);
        persisted.map(|_| ()).map_err(|_| error_code::COORDINATOR_NOT_AVAILABLE)
    }

    /// Appends records to a `__consumer_offsets` partition and waits until they are durable.
    /// Returns the offset of the first.
    async fn persist(&self, partition: i32, records: &[StoredRecord]) -> Result<i64, String> {
        for record in records {
            record.check_encodable().map_err(|e| e.to_string())?;
        }
        let name = TopicPartition::new(OFFSETS_TOPIC, partition);
        let now_ms = corelog_engine::now_ms();
        let batch = BytesMut::from(&store::encode_batch(records, now_ms)[..]);
        let appended = self.log.append(&name, batch, now_ms).map_err(|e| e.to_string())?;
        appended.durable.await.map_err(|e| e.to_string())?;
        for record in records {
            self.remember_group_record(record);
        }
        Ok(appended.base_offset)
    }

    /// Takes the consumer-protocol records of what changed and appends them at once (in the
    /// order taken: nothing taken later can land before them), a batch per group cut at
    /// [`CONSUMER_BATCH_BYTES`]. The future resolves, once they are durable, to the groups
    /// whose changes are not (their write failed: they are written whole again after a
    /// pause; or they are held back by an earlier failure).
    fn persist_consumer_changes(&self) -> impl std::future::Future<Output = BTreeSet<String>> + 'static {
        let now_ms = corelog_engine::now_ms();
        let taken = {
            let topics = self.registry.snapshot();
            let topic_id = |name: &str| topics.get(name).and_then(|t| crate::registry::parse_hex_id(&t.id));
            self.consumers.borrow_mut().take_records_at(&topic_id, now_ms)
        };
        let mut not_durable = taken.held;
        // Runs of records of one group (in one partition), in the order taken.
        let mut runs: Vec<(i32, Vec<ConsumerRecord>)> = Vec::new();
        for (partition, record) in taken.records {
            match runs.last_mut() {
                Some((p, records)) if *p == partition && records[0].group() == record.group() => records.push(record),
                _ => runs.push((partition, vec![record])),
            }
        }
        let mut pending = Vec::new();
        for (partition, records) in runs {
            let name = TopicPartition::new(OFFSETS_TOPIC, partition);
            let group = records[0].group().to_string();
            let stored: Vec<StoredRecord> = records.iter().cloned().map(StoredRecord::Consumer).collect();
            let mut durables = Vec::new();
            for batch in encode_batches(&stored, now_ms) {
                match self.log.append(&name, BytesMut::from(&batch[..]), now_ms) {
                    Ok(appended) => durables.push(Some(appended.durable)),
                    Err(error) => {
                        tracing::warn!(%name, %group, %error, "consumer group records not written: tried again in a second");
                        durables.push(None);
                    }
                }
            }
            let records: Vec<(i32, ConsumerRecord)> = records.into_iter().map(|r| (partition, r)).collect();
            pending.push((group, records, durables));
        }
        let this = self.this.clone();
        async move {
            for (group, records, durables) in pending {
                let mut written = true;
                for durable in durables {
                    written &= match durable {
                        Some(durable) => durable.await.is_ok(),
                        None => false,
                    };
                }
                if !written {
                    not_durable.insert(group);
                    if let Some(this) = this.upgrade() {
                        this.consumers.borrow_mut().write_failed(records, corelog_engine::now_ms());
                    }
                }
            }
            not_durable
        }
    }

    fn remember_group_record(&self, record: &StoredRecord) {
        if let StoredRecord::Group { group, value } = record {
            let mut written = self.written_groups.borrow_mut();
            match value {
                Some(_) => written.insert(group.clone(), record.clone()),
                None => written.remove(group),
            };
        }
    }

    /// Persists what the state machine asked for, then delivers its replies (with
    /// COORDINATOR_NOT_AVAILABLE if the records could not be made durable).
    async fn apply(&self, effects: Effects) {
        let mut by_partition: Vec<(i32, Vec<StoredRecord>)> = Vec::new();
        for (partition, record) in effects.persist {
            match by_partition.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, records)) => records.push(record),
                None => by_partition.push((partition, vec![record])),
            }
        }
        let mut failed = false;
        for (partition, records) in &by_partition {
            if let Err(error) = self.persist(*partition, records).await {
                tracing::error!(partition, %error, "cannot persist group state");
                failed = true;
            }
        }
        let mut waiters = self.waiters.borrow_mut();
        for reply in effects.replies {
            match reply {
                Reply::Join(ticket, mut outcome) => {
                    if let Some(Waiter::Join(tx)) = waiters.remove(&ticket) {
                        if failed {
                            outcome.error_code = error_code::COORDINATOR_NOT_AVAILABLE;
                        }
                        let _ = tx.send(outcome);
                    }
                }
                Reply::Sync(ticket, mut outcome) => {
                    if let Some(Waiter::Sync(tx)) = waiters.remove(&ticket) {
                        if failed {
                            outcome.error_code = error_code::COORDINATOR_NOT_AVAILABLE;
                        }
                        let _ = tx.send(outcome);
                    }
                }
            }
        }
    }

    /// Runs the coordinator's timers until the shard stops.
    pub async fn run_timers(self: Rc<Self>) {
        let mut retention_checked_ms = corelog_engine::now_ms();
        loop {
            glommio::timer::sleep(TICK).await;
            let now_ms = corelog_engine::now_ms();
            let check_interval_ms = self.coordinator.borrow().config().offsets_retention_check_interval_ms;
            if now_ms - retention_checked_ms >= check_interval_ms {
                retention_checked_ms = now_ms;
                self.expire_offsets(now_ms);
            }
            {
                self.refresh_consumer_topics();
                let topics = self.registry.snapshot();
                let partitions_of = |topic: &str| topics.get(topic).map(|t| t.partitions);
                self.consumers.borrow_mut().tick(now_ms, &partitions_of);
                if self.consumers.borrow().has_changes() {
                    // Appended now, in order; nobody waits on them.
                    let written = self.persist_consumer_changes();
                    glommio::spawn_local(async move {
                        written.await;
                    })
                    .detach();
                }
            }
            let effects = self.coordinator.borrow_mut().tick(now_ms);
            if !effects.persist.is_empty() || !effects.replies.is_empty() {
                let this = Rc::clone(&self);
                glommio::spawn_local(async move { this.apply(effects).await }).detach();
            }
        }
    }
}

/// `records` in order, each encoded once, as batches of at most [`SNAPSHOT_BATCH_RECORDS`]
/// records and about [`CONSUMER_BATCH_BYTES`] bytes (a record larger than that is a batch of
/// its own). Records that do not fit a Kafka `STRING` are left out, with a warning.
fn encode_batches(records: &[StoredRecord], now_ms: i64) -> Vec<Vec<u8>> {
    // Encoded records: key and value (None: a tombstone).
    type Encoded = (Vec<u8>, Option<Vec<u8>>);
    let mut chunks: Vec<Vec<Encoded>> = Vec::new();
    let mut chunk_bytes = 0;
    for record in records {
        if let Err(error) = record.check_encodable() {
            tracing::warn!(%error, "group record not written");
            continue;
        }
        let (key, value) = (record.encode_key(), record.encode_value());
        let size = key.len() + value.as_ref().map_or(0, Vec::len) + RECORD_OVERHEAD_BYTES;
        match chunks.last_mut() {
            Some(chunk) if chunk_bytes + size <= CONSUMER_BATCH_BYTES && chunk.len() < SNAPSHOT_BATCH_RECORDS => {
                chunk_bytes += size;
                chunk.push((key, value));
            }
            _ => {
                chunk_bytes = size;
                chunks.push(vec![(key, value)]);
            }
        }
    }
    chunks
        .iter()
        .map(|chunk| {
            let pairs: Vec<corelog_engine::batch::KeyValue<'_>> =
                chunk.iter().map(|(key, value)| (Some(key.as_slice()), value.as_deref())).collect();
            corelog_engine::batch::encode_batch(&pairs, now_ms)
        })
        .collect()
}

/// The offset after the last whole batch in a read (None: no whole batch in it).
fn next_offset_after_batches(bytes: &[u8]) -> Option<i64> {
    let mut at = 0;
    let mut next = None;
    while let Some(size) = corelog_engine::batch::claimed_batch_size(&bytes[at..]).filter(|s| at + s <= bytes.len()) {
        next = corelog_engine::batch::parse_stored_header(&bytes[at..]).map(|h| h.next_offset());
        at += size;
    }
    next
}

/// Strings of a group request that must fit Kafka's STRING encoding to be persisted.
fn strings_fit(strings: &[&str]) -> bool {
    strings.iter().all(|s| s.len() <= store::STRING_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_records_are_encoded_in_batches_a_log_accepts() {
        // 2,000 commits with 4 KiB of metadata each: far over `max.message.bytes` in one batch.
        let records: Vec<StoredRecord> = (0..2_000)
            .map(|i| StoredRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: i,
                value: Some(OffsetValue {
                    offset: 1,
                    leader_epoch: -1,
                    metadata: "m".repeat(4096),
                    commit_timestamp_ms: 0,
                }),
            })
            .collect();
        let batches = encode_batches(&records, 0);
        assert!(batches.len() > 1);
        assert!(
            batches.iter().all(|b| b.len() <= CONSUMER_BATCH_BYTES + 4096),
            "{:?}",
            batches.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let decoded: usize = batches.iter().map(|b| store::decode_batches(b).0.len()).sum();
        assert_eq!(decoded, 2_000, "every record, once, in order");
    }

    #[test]
    fn groups_are_placed_like_kafka_places_them() {
        // Java: "my-group".hashCode() = -1906497762, so partition 1906497762 % 50 = 12.
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(partition_for("", 50), 0);
        // "polygenelubricants".hashCode() is Integer.MIN_VALUE; Kafka's Utils.abs maps it to 0.
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        assert!((0..50).contains(&partition_for("zzzzzzzzzzzzzzzzzzzzzz", 50)));
    }
}
