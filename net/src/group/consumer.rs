//! The consumer group protocol of KIP-848 (ConsumerGroupHeartbeat) as a state machine with
//! no I/O. The coordinator computes the assignment (`uniform`, sticky and balanced, or
//! `range`); each member converges to its target through heartbeats: partitions it must give
//! up are revoked first, and a partition is handed to its new owner only once the previous
//! owner has confirmed it let go (it no longer lists it as owned). A member's epoch reaches
//! the group's assignment epoch when it owns nothing outside its target.
//!
//! A member subscribes to topic names, to a regular expression (RE2 syntax, matching whole
//! names, as Kafka's RE2/J), or both; a regular expression is resolved against the topics the
//! coordinator was last told of ([`ConsumerCoordinator::set_topic_names`]), so topics created
//! or deleted later join or leave the subscription with the next group epoch.
//!
//! What survives a coordinator restart is written as records in Kafka's schemas
//! ([`super::consumer_store`]): the group epoch, every member's subscription, target and
//! current assignment with its epochs, and the assignment epoch. Each operation marks the
//! members it touched; [`ConsumerCoordinator::take_records`] compares them with what was
//! last written and returns only the records that changed (tombstones for members that are
//! gone), which the driver makes durable before it answers. At load the records are
//! replayed and every member gets a fresh session: members carry on with their epochs and
//! partitions, with no rebalance. Deadlines, and the last assignment sent, are not written.
//!
//! Owner: the shard owning the group's `__consumer_offsets` partition.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::consumer_store::{
    ConsumerRecord, CurrentAssignment, MemberMetadata, TopicId, TopicPartitions, member_state,
};

/// Kafka error codes specific to the consumer protocol.
pub mod error_code {
    pub const FENCED_MEMBER_EPOCH: i16 = 110;
    pub const UNRELEASED_INSTANCE_ID: i16 = 111;
    pub const UNSUPPORTED_ASSIGNOR: i16 = 112;
    pub const STALE_MEMBER_EPOCH: i16 = 113;
    pub const INVALID_REGULAR_EXPRESSION: i16 = 128;
}

use super::classic::error_code::{GROUP_MAX_SIZE_REACHED, INVALID_GROUP_ID, INVALID_REQUEST, NONE, UNKNOWN_MEMBER_ID};
use error_code::*;

/// Partitions by topic name.
pub type Assignment = BTreeMap<String, BTreeSet<i32>>;

pub const ASSIGNORS: &[&str] = &["uniform", "range"];

/// Member epoch -1: leave; -2: a static member leaving for a while (keeps its partitions for
/// its session timeout).
const LEAVE: i32 = -1;
const STATIC_LEAVE: i32 = -2;

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// [`group.consumer.session.timeout.ms`, 45 s]
    pub session_timeout_ms: i64,
    /// [`group.consumer.heartbeat.interval.ms`, 5 s]
    pub heartbeat_interval_ms: i32,
    pub group_size_max: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self { session_timeout_ms: 45_000, heartbeat_interval_ms: 5_000, group_size_max: 10_000 }
    }
}

#[derive(Debug, Clone)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    /// None: unchanged since the last heartbeat.
    pub subscribed_topics: Option<Vec<String>>,
    /// None: unchanged; empty: none any more.
    pub subscribed_regex: Option<String>,
    pub server_assignor: Option<String>,
    /// None: unchanged.
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    pub error_code: i16,
    pub error_message: Option<String>,
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// Sent when it changed (or on a join): the full set of partitions the member owns now.
    pub assignment: Option<Assignment>,
}

impl HeartbeatOutcome {
    fn error(error_code: i16, message: &str, member_id: &str) -> Self {
        Self {
            error_code,
            error_message: Some(message.to_string()),
            member_id: member_id.to_string(),
            member_epoch: -1,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub epoch: i32,
    previous_epoch: i32,
    /// Every topic subscribed to: the names, and the topics the regular expression matches.
    pub subscribed: Vec<String>,
    subscribed_names: Vec<String>,
    pub subscribed_regex: Option<SubscriptionRegex>,
    pub rebalance_timeout_ms: i32,
    /// The server assignor it asked for last.
    pub server_assignor: Option<String>,
    /// What the member owns (as the coordinator handed it out).
    pub assigned: Assignment,
    /// Partitions it was told to give up and has not yet confirmed.
    pending_revocation: Assignment,
    session_deadline_ms: i64,
    revocation_deadline_ms: Option<i64>,
    /// A static member that left for a while: its partitions wait for it until the deadline.
    away: bool,
    /// The assignment last sent, to send it again only when it changes.
    last_sent: Option<Assignment>,
}

#[derive(Debug)]
pub struct ConsumerGroup {
    pub id: String,
    pub partition: i32,
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: BTreeMap<String, Member>,
    statics: HashMap<String, String>,
    pub target: BTreeMap<String, Assignment>,
    /// Hash of the subscribed topics and their partition counts the target was computed with.
    metadata_hash: i64,
    /// What the records written so far say (at load: what they said).
    written: Written,
    /// Members changed (or removed) since records were last taken.
    touched: BTreeSet<String>,
    /// After a failed write: no records are taken for the group before this time.
    held_until_ms: i64,
}

/// A group as its records describe it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Written {
    /// (group epoch, metadata hash)
    epoch: Option<(i32, i64)>,
    assignment_epoch: Option<i32>,
    members: BTreeMap<String, DurableMember>,
}

/// A member as its three records describe it.
#[derive(Debug, Clone, Default, PartialEq)]
struct DurableMember {
    /// None only while loading, until its metadata record is read.
    metadata: Option<MemberMetadata>,
    target: Assignment,
    current: DurableCurrent,
}

impl DurableMember {
    fn metadata_record(&self, group: &str, member_id: &str) -> ConsumerRecord {
        let (group, member_id) = (group.to_string(), member_id.to_string());
        ConsumerRecord::MemberMetadata { group, member_id, value: self.metadata.clone() }
    }

    fn target_record(
        &self,
        group: &str,
        member_id: &str,
        topic_id: &dyn Fn(&str) -> Option<TopicId>,
    ) -> ConsumerRecord {
        let (group, member_id) = (group.to_string(), member_id.to_string());
        ConsumerRecord::TargetMember { group, member_id, value: Some(by_id(&self.target, topic_id)) }
    }

    /// A static member away is Kafka's member epoch -2, its epoch kept as the previous one.
    fn current_record(
        &self,
        group: &str,
        member_id: &str,
        topic_id: &dyn Fn(&str) -> Option<TopicId>,
    ) -> ConsumerRecord {
        let c = &self.current;
        let value = CurrentAssignment {
            member_epoch: if c.away { STATIC_LEAVE } else { c.epoch },
            previous_member_epoch: if c.away { c.epoch } else { c.previous_epoch },
            state: c.state,
            assigned: by_id(&c.assigned, topic_id),
            pending_revocation: by_id(&c.pending_revocation, topic_id),
        };
        let (group, member_id) = (group.to_string(), member_id.to_string());
        ConsumerRecord::CurrentAssignment { group, member_id, value: Some(value) }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
struct DurableCurrent {
    epoch: i32,
    previous_epoch: i32,
    away: bool,
    state: i8,
    assigned: Assignment,
    pending_revocation: Assignment,
}

impl ConsumerGroup {
    fn new(id: &str, partition: i32) -> Self {
        Self {
            id: id.to_string(),
            partition,
            epoch: 0,
            assignment_epoch: 0,
            assignor: ASSIGNORS[0].to_string(),
            members: BTreeMap::new(),
            statics: HashMap::new(),
            target: BTreeMap::new(),
            metadata_hash: 0,
            written: Written::default(),
            touched: BTreeSet::new(),
            held_until_ms: i64::MIN,
        }
    }

    /// Kafka's names: empty, assigning (target behind the group epoch), reconciling (members
    /// converging), stable.
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "empty"
        } else if self.assignment_epoch < self.epoch {
            "assigning"
        } else if self.members.values().any(|m| m.epoch != self.assignment_epoch) {
            "reconciling"
        } else {
            "stable"
        }
    }

    fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members.values().flat_map(|m| m.subscribed.iter().cloned()).collect()
    }

    fn current_metadata_hash(&self, partitions_of: &dyn Fn(&str) -> Option<i32>) -> i64 {
        let topics: BTreeMap<String, i32> =
            self.subscribed_topics().into_iter().filter_map(|t| partitions_of(&t).map(|count| (t, count))).collect();
        metadata_hash(&topics)
    }

    /// Recomputes the target assignment for the current members and topics, with the server
    /// assignor most members ask for (Kafka's rule; `uniform` when none asks).
    fn compute_target(&mut self, partitions_of: &dyn Fn(&str) -> Option<i32>) {
        let topics: BTreeMap<String, i32> =
            self.subscribed_topics().into_iter().filter_map(|t| partitions_of(&t).map(|count| (t, count))).collect();
        self.assignor = preferred_assignor(self.members.values());
        let subscriptions: BTreeMap<String, BTreeSet<String>> =
            self.members.values().map(|m| (m.member_id.clone(), m.subscribed.iter().cloned().collect())).collect();
        self.target = if self.assignor == "range" {
            assign_range(&topics, &subscriptions)
        } else {
            assign_uniform(&topics, &subscriptions, &self.target)
        };
        self.metadata_hash = metadata_hash(&topics);
        self.assignment_epoch = self.epoch;
        self.touched.extend(self.members.keys().cloned());
    }

    /// The member as its records would describe it now.
    fn durable(&self, member: &Member) -> DurableMember {
        let target = self.target.get(&member.member_id).cloned().unwrap_or_default();
        let state = if !member.pending_revocation.is_empty() {
            member_state::UNREVOKED_PARTITIONS
        } else if member.epoch < self.assignment_epoch || member.assigned != target {
            member_state::UNRELEASED_PARTITIONS
        } else {
            member_state::STABLE
        };
        DurableMember {
            metadata: Some(MemberMetadata {
                instance_id: member.instance_id.clone(),
                rack_id: member.rack_id.clone(),
                client_id: member.client_id.clone(),
                client_host: member.client_host.clone(),
                subscribed_topic_names: member.subscribed_names.clone(),
                subscribed_topic_regex: member.subscribed_regex.as_ref().map(|r| r.text.clone()),
                rebalance_timeout_ms: member.rebalance_timeout_ms,
                server_assignor: member.server_assignor.clone(),
            }),
            target,
            current: DurableCurrent {
                epoch: member.epoch,
                previous_epoch: member.previous_epoch,
                away: member.away,
                state,
                assigned: member.assigned.clone(),
                pending_revocation: member.pending_revocation.clone(),
            },
        }
    }

    /// The records that bring what was written up to date with the touched members and the
    /// group's epochs, in Kafka's order (member metadata, group epoch, targets, assignment
    /// epoch, current assignments; a member's tombstones current first).
    fn take_records(&mut self, topic_id: &dyn Fn(&str) -> Option<TopicId>, out: &mut Vec<ConsumerRecord>) {
        if self.members.is_empty() && self.written == Written::default() {
            // Nothing to write for a group that never had a member (a refused join).
            self.touched.clear();
            return;
        }
        let group = self.id.clone();
        let (mut metadata, mut targets, mut currents) = (Vec::new(), Vec::new(), Vec::new());
        for member_id in std::mem::take(&mut self.touched) {
            let live = self.members.get(&member_id).map(|m| self.durable(m));
            let written = self.written.members.get(&member_id);
            match (live, written) {
                (Some(live), written) => {
                    if written.and_then(|w| w.metadata.as_ref()) != live.metadata.as_ref() {
                        metadata.push(live.metadata_record(&group, &member_id));
                    }
                    if written.map(|w| &w.target) != Some(&live.target) {
                        targets.push(live.target_record(&group, &member_id, topic_id));
                    }
                    if written.map(|w| &w.current) != Some(&live.current) {
                        currents.push(live.current_record(&group, &member_id, topic_id));
                    }
                    self.written.members.insert(member_id.clone(), live);
                }
                (None, Some(_)) => {
                    self.written.members.remove(&member_id);
                    member_tombstones(&group, &member_id, out);
                }
                (None, None) => {}
            }
        }
        out.extend(metadata);
        if self.written.epoch != Some((self.epoch, self.metadata_hash)) {
            self.written.epoch = Some((self.epoch, self.metadata_hash));
            out.push(ConsumerRecord::GroupEpoch { group: group.clone(), value: self.written.epoch });
        }
        out.extend(targets);
        if self.written.assignment_epoch != Some(self.assignment_epoch) {
            self.written.assignment_epoch = Some(self.assignment_epoch);
            out.push(ConsumerRecord::TargetEpoch { group: group.clone(), value: Some(self.assignment_epoch) });
        }
        out.extend(currents);
    }

    /// Every record of what was written: a snapshot of the group.
    fn written_records(&self, topic_id: &dyn Fn(&str) -> Option<TopicId>, out: &mut Vec<ConsumerRecord>) {
        let group = &self.id;
        for (member_id, member) in &self.written.members {
            out.push(member.metadata_record(group, member_id));
            out.push(member.target_record(group, member_id, topic_id));
            out.push(member.current_record(group, member_id, topic_id));
        }
        if let Some(epoch) = self.written.epoch {
            out.push(ConsumerRecord::GroupEpoch { group: group.clone(), value: Some(epoch) });
        }
        if let Some(epoch) = self.written.assignment_epoch {
            out.push(ConsumerRecord::TargetEpoch { group: group.clone(), value: Some(epoch) });
        }
    }

    fn owned_elsewhere(&self, member_id: &str, topic: &str, partition: i32) -> bool {
        self.members.iter().any(|(id, m)| {
            id != member_id
                && (m.assigned.get(topic).is_some_and(|p| p.contains(&partition))
                    || m.pending_revocation.get(topic).is_some_and(|p| p.contains(&partition)))
        })
    }

    /// Moves one member toward its target (see the module doc).
    fn reconcile(&mut self, member_id: &str, now_ms: i64) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let assignment_epoch = self.assignment_epoch;
        let Some(member) = self.members.get(member_id) else { return };
        if !member.pending_revocation.is_empty() {
            return;
        }
        let revoke = difference(&member.assigned, &target);
        if !revoke.is_empty() {
            let rebalance_timeout = i64::from(member.rebalance_timeout_ms.max(0));
            if let Some(member) = self.members.get_mut(member_id) {
                member.assigned = intersection(&member.assigned, &target);
                member.pending_revocation = revoke;
                member.revocation_deadline_ms = Some(now_ms + rebalance_timeout);
            }
            return;
        }
        let missing = difference(&target, &member.assigned);
        let mut free = Assignment::new();
        for (topic, partitions) in &missing {
            for partition in partitions {
                if !self.owned_elsewhere(member_id, topic, *partition) {
                    free.entry(topic.clone()).or_default().insert(*partition);
                }
            }
        }
        if let Some(member) = self.members.get_mut(member_id) {
            if member.epoch != assignment_epoch {
                member.previous_epoch = member.epoch;
                member.epoch = assignment_epoch;
            }
            for (topic, partitions) in free {
                member.assigned.entry(topic).or_default().extend(partitions);
            }
        }
    }
}

/// A member being replayed: created by a record with a value, only looked up by a tombstone.
fn member_entry(written: &mut Written, member_id: String, create: bool) -> Option<&mut DurableMember> {
    if create { Some(written.members.entry(member_id).or_default()) } else { written.members.get_mut(&member_id) }
}

fn member_tombstones(group: &str, member_id: &str, out: &mut Vec<ConsumerRecord>) {
    let (group, member_id) = (group.to_string(), member_id.to_string());
    out.push(ConsumerRecord::CurrentAssignment { group: group.clone(), member_id: member_id.clone(), value: None });
    out.push(ConsumerRecord::TargetMember { group: group.clone(), member_id: member_id.clone(), value: None });
    out.push(ConsumerRecord::MemberMetadata { group, member_id, value: None });
}

/// Tombstones for every record of a group that is gone.
fn group_tombstones(group: &str, written: &Written, out: &mut Vec<ConsumerRecord>) {
    for member_id in written.members.keys() {
        member_tombstones(group, member_id, out);
    }
    out.push(ConsumerRecord::TargetEpoch { group: group.to_string(), value: None });
    out.push(ConsumerRecord::GroupEpoch { group: group.to_string(), value: None });
}

/// Partitions by topic id (topics that no longer exist are left out).
fn by_id(assignment: &Assignment, topic_id: &dyn Fn(&str) -> Option<TopicId>) -> TopicPartitions {
    assignment
        .iter()
        .filter_map(|(topic, partitions)| topic_id(topic).map(|id| (id, partitions.iter().copied().collect())))
        .collect()
}

/// Partitions by topic name (topics that no longer exist are left out).
fn by_name(partitions: &TopicPartitions, topic_name: &dyn Fn(&TopicId) -> Option<String>) -> Assignment {
    let mut assignment = Assignment::new();
    for (id, indexes) in partitions {
        if let Some(name) = topic_name(id)
            && !indexes.is_empty()
        {
            assignment.entry(name).or_default().extend(indexes.iter().copied());
        }
    }
    assignment
}

/// FNV-1a over the sorted (topic, partition count) pairs: stable across builds, since it is
/// written to disk.
fn metadata_hash(topics: &BTreeMap<String, i32>) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (topic, count) in topics {
        for byte in topic.bytes().chain([0]).chain(count.to_be_bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash as i64
}

/// The server assignor most members ask for (ties: the first by name), `uniform` if none.
fn preferred_assignor<'a>(members: impl Iterator<Item = &'a Member>) -> String {
    let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
    for assignor in members.filter_map(|m| m.server_assignor.as_deref()) {
        *votes.entry(assignor).or_default() += 1;
    }
    let mut best: Option<(&str, usize)> = None;
    for (assignor, count) in votes {
        if best.is_none_or(|(_, most)| count > most) {
            best = Some((assignor, count));
        }
    }
    best.map_or(ASSIGNORS[0], |(assignor, _)| assignor).to_string()
}

fn difference(a: &Assignment, b: &Assignment) -> Assignment {
    a.iter()
        .filter_map(|(topic, partitions)| {
            let rest: BTreeSet<i32> =
                partitions.iter().filter(|p| !b.get(topic).is_some_and(|s| s.contains(p))).copied().collect();
            (!rest.is_empty()).then(|| (topic.clone(), rest))
        })
        .collect()
}

fn intersection(a: &Assignment, b: &Assignment) -> Assignment {
    a.iter()
        .filter_map(|(topic, partitions)| {
            let both: BTreeSet<i32> =
                partitions.iter().filter(|p| b.get(topic).is_some_and(|s| s.contains(p))).copied().collect();
            (!both.is_empty()).then(|| (topic.clone(), both))
        })
        .collect()
}

/// Every partition to the subscribed member with the fewest, keeping previous owners where
/// that stays balanced (at most `ceil(partitions / members)` each).
pub fn assign_uniform(
    topics: &BTreeMap<String, i32>,
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut target: BTreeMap<String, Assignment> =
        subscriptions.keys().map(|m| (m.clone(), Assignment::new())).collect();
    if subscriptions.is_empty() {
        return target;
    }
    let all: Vec<(String, i32)> =
        topics.iter().flat_map(|(t, count)| (0..*count).map(move |p| (t.clone(), p))).collect();
    let quota = all.len().div_ceil(subscriptions.len());
    let mut counts: BTreeMap<String, usize> = subscriptions.keys().map(|m| (m.clone(), 0)).collect();
    let mut left = Vec::new();
    for (topic, partition) in all {
        let keeper = previous.iter().find(|(member, owned)| {
            owned.get(&topic).is_some_and(|p| p.contains(&partition))
                && subscriptions.get(*member).is_some_and(|s| s.contains(&topic))
                && counts.get(*member).is_some_and(|c| *c < quota)
        });
        match keeper {
            Some((member, _)) => {
                let member = member.clone();
                target.entry(member.clone()).or_default().entry(topic).or_default().insert(partition);
                *counts.entry(member).or_default() += 1;
            }
            None => left.push((topic, partition)),
        }
    }
    for (topic, partition) in left {
        let least = counts
            .iter()
            .filter(|(member, _)| subscriptions.get(*member).is_some_and(|s| s.contains(&topic)))
            .min_by_key(|(member, count)| (**count, (*member).clone()))
            .map(|(member, _)| member.clone());
        if let Some(member) = least {
            target.entry(member.clone()).or_default().entry(topic).or_default().insert(partition);
            *counts.entry(member).or_default() += 1;
        }
    }
    target
}

/// Per topic, contiguous ranges of partitions to the subscribed members in member-id order;
/// the first `partitions % members` get one more.
pub fn assign_range(
    topics: &BTreeMap<String, i32>,
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, Assignment> {
    let mut target: BTreeMap<String, Assignment> =
        subscriptions.keys().map(|m| (m.clone(), Assignment::new())).collect();
    for (topic, count) in topics {
        let members: Vec<&String> = subscriptions.iter().filter(|(_, s)| s.contains(topic)).map(|(m, _)| m).collect();
        if members.is_empty() {
            continue;
        }
        let (base, extra) = (*count as usize / members.len(), *count as usize % members.len());
        let mut next = 0i32;
        for (i, member) in members.into_iter().enumerate() {
            let size = (base + usize::from(i < extra)) as i32;
            if size > 0 {
                target.entry(member.clone()).or_default().insert(topic.clone(), (next..next + size).collect());
            }
            next += size;
        }
    }
    target
}

/// A subscription's regular expression, as sent and compiled (anchored: whole names).
#[derive(Debug, Clone)]
pub struct SubscriptionRegex {
    pub text: String,
    compiled: regex::Regex,
}

impl SubscriptionRegex {
    /// None when `text` is not a valid regular expression.
    pub fn new(text: &str) -> Option<Self> {
        let compiled = regex::Regex::new(&format!("^(?:{text})$")).ok()?;
        Some(Self { text: text.to_string(), compiled })
    }
}

/// Names ∪ the topics `regex` matches, sorted, without repeats.
fn resolve_subscription(names: &[String], regex: Option<&SubscriptionRegex>, topics: &[String]) -> Vec<String> {
    let mut subscribed: Vec<String> = names.to_vec();
    if let Some(regex) = regex {
        subscribed.extend(topics.iter().filter(|t| regex.compiled.is_match(t)).cloned());
    }
    subscribed.sort();
    subscribed.dedup();
    subscribed
}

/// The consumer groups of one shard.
pub struct ConsumerCoordinator {
    config: ConsumerConfig,
    groups: HashMap<String, ConsumerGroup>,
    /// The topics regular expressions are matched against (internal topics excluded).
    topic_names: Vec<String>,
    /// Makes generated member ids unique across restarts (random per start) and within one.
    member_id_prefix: String,
    next_member_seq: u64,
    /// Groups changed since records were last taken.
    dirty: BTreeSet<String>,
    /// Groups removed since records were last taken, with their `__consumer_offsets`
    /// partition and what their records say (they become tombstones).
    removed: Vec<(String, i32, Written)>,
    /// Tombstones whose write failed: taken again (unless their member or group is back).
    failed_tombstones: Vec<(i32, ConsumerRecord)>,
    /// The id of every topic, to notice one deleted and created again under its name.
    topic_ids: BTreeMap<String, TopicId>,
}

/// How long a group whose records failed to be written waits before they are tried again.
const REWRITE_BACKOFF_MS: i64 = 1_000;

/// What [`ConsumerCoordinator::take_records_at`] returns.
#[derive(Debug, Default)]
pub struct Taken {
    pub records: Vec<(i32, ConsumerRecord)>,
    /// Groups with changes not taken because an earlier write failed (their state is not
    /// durable: their heartbeats must not be answered as if it were).
    pub held: BTreeSet<String>,
}

impl ConsumerCoordinator {
    pub fn new(config: ConsumerConfig, member_id_prefix: String) -> Self {
        Self {
            config,
            groups: HashMap::new(),
            topic_names: Vec::new(),
            member_id_prefix,
            next_member_seq: 0,
            dirty: BTreeSet::new(),
            removed: Vec::new(),
            failed_tombstones: Vec::new(),
            topic_ids: BTreeMap::new(),
        }
    }

    /// The topics' ids. A topic whose id changed (deleted and created again under the same
    /// name, perhaps with the same partition count) is another topic: groups subscribed to
    /// it get a new epoch, and their records are written again (they name topics by id).
    pub fn set_topic_ids(&mut self, ids: BTreeMap<String, TopicId>) {
        let replaced: BTreeSet<String> = ids
            .iter()
            .filter(|(name, id)| self.topic_ids.get(*name).is_some_and(|old| old != *id))
            .map(|(name, _)| name.clone())
            .collect();
        self.topic_ids = ids;
        if replaced.is_empty() {
            return;
        }
        let affected: Vec<String> = self
            .groups
            .values()
            .filter(|g| g.members.values().any(|m| m.subscribed.iter().any(|t| replaced.contains(t))))
            .map(|g| g.id.clone())
            .collect();
        for group_id in affected {
            self.rewrite(&group_id);
            if let Some(group) = self.groups.get_mut(&group_id) {
                group.epoch += 1;
                // The old topic's partitions are gone: nobody owns, or must give up, them.
                for member in group.members.values_mut() {
                    for topic in &replaced {
                        member.assigned.remove(topic);
                        member.pending_revocation.remove(topic);
                    }
                }
                for target in group.target.values_mut() {
                    for topic in &replaced {
                        target.remove(topic);
                    }
                }
            }
        }
    }

    /// The records (with their `__consumer_offsets` partition) that bring what is written up
    /// to date with what changed since the last call. They must be appended in this order,
    /// before anything taken later.
    pub fn take_records(&mut self, topic_id: &dyn Fn(&str) -> Option<TopicId>) -> Vec<(i32, ConsumerRecord)> {
        self.take_records_at(topic_id, i64::MAX).records
    }

    /// Whether [`Self::take_records`] has anything to give (or to hold back).
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty() || !self.removed.is_empty() || !self.failed_tombstones.is_empty()
    }

    /// Like [`Self::take_records`], but groups held back after a failed write (until a time
    /// after `now_ms`) stay pending.
    pub fn take_records_at(&mut self, topic_id: &dyn Fn(&str) -> Option<TopicId>, now_ms: i64) -> Taken {
        let mut taken = Taken::default();
        let mut records = Vec::new();
        for (partition, tombstone) in std::mem::take(&mut self.failed_tombstones) {
            let group = self.groups.get(tombstone.group());
            let back = match &tombstone {
                ConsumerRecord::GroupEpoch { .. } | ConsumerRecord::TargetEpoch { .. } => group.is_some(),
                ConsumerRecord::MemberMetadata { member_id, .. }
                | ConsumerRecord::TargetMember { member_id, .. }
                | ConsumerRecord::CurrentAssignment { member_id, .. } => {
                    group.is_some_and(|g| g.members.contains_key(member_id))
                }
            };
            if !back {
                taken.records.push((partition, tombstone));
            }
        }
        for (group, partition, written) in std::mem::take(&mut self.removed) {
            group_tombstones(&group, &written, &mut records);
            taken.records.extend(records.drain(..).map(|r| (partition, r)));
        }
        for group_id in std::mem::take(&mut self.dirty) {
            let Some(group) = self.groups.get_mut(&group_id) else { continue };
            if group.held_until_ms > now_ms {
                taken.held.insert(group_id);
                continue;
            }
            group.take_records(topic_id, &mut records);
            taken.records.extend(records.drain(..).map(|r| (group.partition, r)));
        }
        self.dirty.extend(taken.held.iter().cloned());
        taken
    }

    /// Records that could not be made durable: their groups are written whole again after a
    /// pause, and their tombstones are taken again.
    pub fn write_failed(&mut self, records: Vec<(i32, ConsumerRecord)>, now_ms: i64) {
        let groups: BTreeSet<String> = records.iter().map(|(_, r)| r.group().to_string()).collect();
        for group in groups {
            self.rewrite(&group);
            if let Some(group) = self.groups.get_mut(&group) {
                group.held_until_ms = now_ms + REWRITE_BACKOFF_MS;
            }
        }
        self.failed_tombstones.extend(records.into_iter().filter(|(_, r)| r.is_tombstone()));
    }

    /// What the records taken so far say about the groups of one `__consumer_offsets`
    /// partition, as a whole (for a snapshot of that partition).
    pub fn written_records(&self, partition: i32, topic_id: &dyn Fn(&str) -> Option<TopicId>) -> Vec<ConsumerRecord> {
        let mut records = Vec::new();
        for group in self.groups.values().filter(|g| g.partition == partition) {
            group.written_records(topic_id, &mut records);
        }
        records
    }

    /// Forgets what was written of a group whose records could not be made durable: the next
    /// records taken for it describe it whole.
    pub fn rewrite(&mut self, group_id: &str) {
        if let Some(group) = self.groups.get_mut(group_id) {
            group.written = Written::default();
            group.touched.extend(group.members.keys().cloned());
            self.dirty.insert(group_id.to_string());
        }
    }

    /// Rebuilds what was written from one record at load (in log order).
    pub fn replay(&mut self, partition: i32, record: ConsumerRecord, topic_name: &dyn Fn(&TopicId) -> Option<String>) {
        let group_id = record.group().to_string();
        if let ConsumerRecord::GroupEpoch { value: None, .. } = record {
            self.groups.remove(&group_id);
            return;
        }
        let group = self.groups.entry(group_id.clone()).or_insert_with(|| ConsumerGroup::new(&group_id, partition));
        let written = &mut group.written;
        match record {
            ConsumerRecord::GroupEpoch { value, .. } => written.epoch = value,
            ConsumerRecord::TargetEpoch { value, .. } => written.assignment_epoch = value,
            ConsumerRecord::MemberMetadata { member_id, value: None, .. } => {
                written.members.remove(&member_id);
            }
            ConsumerRecord::MemberMetadata { member_id, value, .. } => {
                written.members.entry(member_id).or_default().metadata = value;
            }
            ConsumerRecord::TargetMember { member_id, value, .. } => {
                if let Some(member) = member_entry(written, member_id, value.is_some()) {
                    member.target = value.map(|v| by_name(&v, topic_name)).unwrap_or_default();
                }
            }
            ConsumerRecord::CurrentAssignment { member_id, value, .. } => {
                if let Some(member) = member_entry(written, member_id, value.is_some()) {
                    member.current = value.map_or_else(DurableCurrent::default, |c| DurableCurrent {
                        away: c.member_epoch == STATIC_LEAVE,
                        epoch: if c.member_epoch == STATIC_LEAVE { c.previous_member_epoch } else { c.member_epoch },
                        previous_epoch: c.previous_member_epoch,
                        state: c.state,
                        assigned: by_name(&c.assigned, topic_name),
                        pending_revocation: by_name(&c.pending_revocation, topic_name),
                    });
                }
            }
        }
    }

    /// After the records of `partition` were replayed: the groups come back to life from
    /// them. Every member gets a fresh session (and a fresh rebalance timeout for what it
    /// has still to revoke); a group whose subscribed topics changed meanwhile gets a new
    /// epoch; members whose records are incomplete are dropped (and tombstoned).
    pub fn finish_load(&mut self, partition: i32, now_ms: i64, partitions_of: &dyn Fn(&str) -> Option<i32>) {
        let ids: Vec<String> = self
            .groups
            .values()
            .filter(|g| g.partition == partition && g.members.is_empty())
            .map(|g| g.id.clone())
            .collect();
        for id in ids {
            let Some(group) = self.groups.get_mut(&id) else { continue };
            let written = group.written.clone();
            for (member_id, durable) in &written.members {
                let Some(metadata) = &durable.metadata else {
                    group.touched.insert(member_id.clone());
                    continue;
                };
                let regex = metadata.subscribed_topic_regex.as_deref().and_then(SubscriptionRegex::new);
                let subscribed =
                    resolve_subscription(&metadata.subscribed_topic_names, regex.as_ref(), &self.topic_names);
                let current = &durable.current;
                let pending = !current.pending_revocation.is_empty();
                group.members.insert(
                    member_id.clone(),
                    Member {
                        member_id: member_id.clone(),
                        instance_id: metadata.instance_id.clone(),
                        rack_id: metadata.rack_id.clone(),
                        client_id: metadata.client_id.clone(),
                        client_host: metadata.client_host.clone(),
                        epoch: current.epoch,
                        previous_epoch: current.previous_epoch,
                        subscribed,
                        subscribed_names: metadata.subscribed_topic_names.clone(),
                        subscribed_regex: regex,
                        rebalance_timeout_ms: metadata.rebalance_timeout_ms,
                        server_assignor: metadata.server_assignor.clone(),
                        assigned: current.assigned.clone(),
                        pending_revocation: current.pending_revocation.clone(),
                        session_deadline_ms: now_ms + self.config.session_timeout_ms,
                        revocation_deadline_ms: pending
                            .then(|| now_ms + i64::from(metadata.rebalance_timeout_ms.max(0))),
                        away: current.away,
                        last_sent: None,
                    },
                );
                if let Some(instance) = &metadata.instance_id {
                    group.statics.insert(instance.clone(), member_id.clone());
                }
                if !durable.target.is_empty() {
                    group.target.insert(member_id.clone(), durable.target.clone());
                }
            }
            (group.epoch, group.metadata_hash) = written.epoch.unwrap_or((0, 0));
            group.assignment_epoch = written.assignment_epoch.unwrap_or(0).min(group.epoch);
            group.assignor = preferred_assignor(group.members.values());
            // Topics that changed while nobody watched: a new epoch, unless one is already due.
            if group.assignment_epoch == group.epoch
                && group.current_metadata_hash(partitions_of) != group.metadata_hash
            {
                group.epoch += 1;
            }
            self.dirty.insert(id.clone());
            if group.members.is_empty() {
                self.remove_group(&id);
            }
        }
    }

    /// The topics that exist now (without internal ones): subscriptions by regular expression
    /// are resolved again, and a group whose subscriptions changed gets a new epoch (its
    /// target assignment is computed again at the next heartbeat or tick).
    pub fn set_topic_names(&mut self, mut names: Vec<String>) {
        names.sort();
        if names == self.topic_names {
            return;
        }
        self.topic_names = names;
        for group in self.groups.values_mut() {
            let mut changed = false;
            for member in group.members.values_mut() {
                if member.subscribed_regex.is_none() {
                    continue;
                }
                let subscribed =
                    resolve_subscription(&member.subscribed_names, member.subscribed_regex.as_ref(), &self.topic_names);
                if subscribed != member.subscribed {
                    member.subscribed = subscribed;
                    changed = true;
                }
            }
            if changed {
                group.epoch += 1;
                self.dirty.insert(group.id.clone());
            }
        }
    }

    pub fn group(&self, id: &str) -> Option<&ConsumerGroup> {
        self.groups.get(id)
    }

    pub fn groups(&self) -> impl Iterator<Item = &ConsumerGroup> {
        self.groups.values()
    }

    /// A member's current epoch, for OffsetCommit/OffsetFetch checks: Err(UNKNOWN_MEMBER_ID)
    /// if the group has no such member.
    pub fn member_epoch(&self, group_id: &str, member_id: &str) -> Result<i32, i16> {
        self.groups.get(group_id).and_then(|g| g.members.get(member_id)).map(|m| m.epoch).ok_or(UNKNOWN_MEMBER_ID)
    }

    pub fn is_empty_group(&self, group_id: &str) -> bool {
        self.groups.get(group_id).is_none_or(|g| g.members.is_empty())
    }

    /// Forgets a group; tombstones for what was written of it come with the next records.
    pub fn remove_group(&mut self, group_id: &str) {
        self.dirty.remove(group_id);
        if let Some(group) = self.groups.remove(group_id)
            && group.written != Written::default()
        {
            self.removed.push((group.id, group.partition, group.written));
        }
    }

    pub fn heartbeat(
        &mut self,
        request: HeartbeatRequest,
        partition: i32,
        partitions_of: &dyn Fn(&str) -> Option<i32>,
        now_ms: i64,
    ) -> HeartbeatOutcome {
        let refuse = |code, message: &str| {
            tracing::debug!(group = %request.group_id, member = %request.member_id, code, message, "heartbeat refused");
            HeartbeatOutcome::error(code, message, &request.member_id)
        };
        if request.group_id.is_empty() {
            return refuse(INVALID_GROUP_ID, "the group id is empty");
        }
        if let Some(assignor) = &request.server_assignor
            && !ASSIGNORS.contains(&assignor.as_str())
        {
            return refuse(UNSUPPORTED_ASSIGNOR, "supported assignors: uniform, range");
        }
        let joining_without_subscription =
            request.subscribed_topics.is_none() && request.subscribed_regex.as_deref().is_none_or(str::is_empty);
        if request.member_epoch == 0 && joining_without_subscription {
            return refuse(INVALID_REQUEST, "a joining member must send its subscription");
        }
        // None: unchanged; Some(None): no regular expression any more.
        let regex = match request.subscribed_regex.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(text) => match SubscriptionRegex::new(text) {
                Some(regex) => Some(Some(regex)),
                None => return refuse(INVALID_REGULAR_EXPRESSION, "the subscribed regular expression is not valid"),
            },
        };
        if request.member_epoch == 0 && request.rebalance_timeout_ms < 0 {
            return refuse(INVALID_REQUEST, "the rebalance timeout must not be negative");
        }
        if request.member_epoch < STATIC_LEAVE {
            return refuse(INVALID_REQUEST, "invalid member epoch");
        }
        // Only a join creates a group: a heartbeat for an unknown group is an unknown member.
        if request.member_epoch != 0 && !self.groups.contains_key(&request.group_id) {
            return refuse(UNKNOWN_MEMBER_ID, "unknown group: rejoin with epoch 0");
        }
        let group = self
            .groups
            .entry(request.group_id.clone())
            .or_insert_with(|| ConsumerGroup::new(&request.group_id, partition));
        self.dirty.insert(request.group_id.clone());
        group.touched.insert(request.member_id.clone());
        let member_id = match request.member_epoch {
            LEAVE | STATIC_LEAVE => return leave(group, &request, now_ms, &self.config, partitions_of),
            0 => {
                let member_id = if request.member_id.is_empty() {
                    self.next_member_seq += 1;
                    let base = super::classic::member_id_base(&request.client_id);
                    format!("{base}-{}-{}", self.member_id_prefix, self.next_member_seq)
                } else {
                    request.member_id.clone()
                };
                if let Err(outcome) = join(group, &request, &member_id, &self.config, now_ms) {
                    return outcome;
                }
                group.touched.insert(member_id.clone());
                member_id
            }
            epoch => {
                let Some(member) = group.members.get(&request.member_id) else {
                    return refuse(UNKNOWN_MEMBER_ID, "unknown member: rejoin with epoch 0");
                };
                if member.away {
                    return refuse(FENCED_MEMBER_EPOCH, "the static member left: rejoin with epoch 0");
                }
                let confirms_previous = epoch == member.previous_epoch
                    && request.owned.as_ref().is_some_and(|owned| difference(owned, &member.assigned).is_empty());
                if epoch != member.epoch && !confirms_previous {
                    return refuse(FENCED_MEMBER_EPOCH, "the member epoch is not the current one: rejoin");
                }
                request.member_id.clone()
            }
        };
        let Some(group) = self.groups.get_mut(&request.group_id) else {
            return refuse(UNKNOWN_MEMBER_ID, "unknown group");
        };
        let Some(member) = group.members.get_mut(&member_id) else {
            return refuse(UNKNOWN_MEMBER_ID, "unknown member");
        };
        member.session_deadline_ms = now_ms + self.config.session_timeout_ms;
        member.client_id = request.client_id.clone();
        member.client_host = request.client_host.clone();
        if request.rebalance_timeout_ms > 0 {
            member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        }
        // A member asking for another assignor may change the group's: a new epoch.
        let mut bump = request.member_epoch == 0;
        if request.server_assignor.is_some() && request.server_assignor != member.server_assignor {
            member.server_assignor = request.server_assignor.clone();
            bump = true;
        }
        // Topics created or deleted since are handled by `set_topic_names`: the subscription is
        // resolved here only when the request changes it.
        let resubscribed = request.subscribed_topics.is_some() || regex.is_some();
        if let Some(topics) = &request.subscribed_topics {
            let mut topics = topics.clone();
            topics.sort();
            topics.dedup();
            member.subscribed_names = topics;
        }
        if let Some(regex) = regex {
            tracing::debug!(group = %request.group_id, member = %member_id, regex = ?regex.as_ref().map(|r| &r.text), "subscription regex");
            member.subscribed_regex = regex;
        }
        if resubscribed {
            let subscribed =
                resolve_subscription(&member.subscribed_names, member.subscribed_regex.as_ref(), &self.topic_names);
            if subscribed != member.subscribed {
                member.subscribed = subscribed;
                bump = true;
            }
        }
        if let Some(owned) = &request.owned {
            // Revocations are confirmed by no longer owning the partitions.
            member.pending_revocation = intersection(&member.pending_revocation, owned);
            if member.pending_revocation.is_empty() {
                member.revocation_deadline_ms = None;
            }
        }
        let metadata_changed = group.current_metadata_hash(partitions_of) != group.metadata_hash;
        if bump || metadata_changed {
            group.epoch += 1;
        }
        if group.assignment_epoch < group.epoch {
            group.compute_target(partitions_of);
        }
        group.reconcile(&member_id, now_ms);
        let Some(member) = group.members.get_mut(&member_id) else {
            return refuse(UNKNOWN_MEMBER_ID, "unknown member");
        };
        let send =
            request.member_epoch == 0 || request.owned.is_some() || member.last_sent.as_ref() != Some(&member.assigned);
        let assignment = send.then(|| member.assigned.clone());
        member.last_sent = Some(member.assigned.clone());
        HeartbeatOutcome {
            error_code: NONE,
            error_message: None,
            member_id,
            member_epoch: member.epoch,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            assignment,
        }
    }

    /// Session timeouts, revocations not confirmed within the rebalance timeout, static
    /// members that did not come back.
    pub fn tick(&mut self, now_ms: i64, partitions_of: &dyn Fn(&str) -> Option<i32>) {
        for group in self.groups.values_mut() {
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| m.session_deadline_ms <= now_ms || m.revocation_deadline_ms.is_some_and(|d| d <= now_ms))
                .map(|m| m.member_id.clone())
                .collect();
            if expired.is_empty() {
                continue;
            }
            for member_id in expired {
                remove_member(group, &member_id);
            }
            group.epoch += 1;
            group.compute_target(partitions_of);
            self.dirty.insert(group.id.clone());
        }
        // Membership is all a consumer group keeps here (offsets live with the classic state).
        let empty: Vec<String> = self.groups.values().filter(|g| g.members.is_empty()).map(|g| g.id.clone()).collect();
        for group_id in empty {
            self.remove_group(&group_id);
        }
    }
}

fn remove_member(group: &mut ConsumerGroup, member_id: &str) {
    group.touched.insert(member_id.to_string());
    if let Some(member) = group.members.remove(member_id)
        && let Some(instance) = member.instance_id
    {
        group.statics.remove(&instance);
    }
    group.target.remove(member_id);
}

fn join(
    group: &mut ConsumerGroup,
    request: &HeartbeatRequest,
    member_id: &str,
    config: &ConsumerConfig,
    now_ms: i64,
) -> Result<(), HeartbeatOutcome> {
    let refuse = |code, message: &str| HeartbeatOutcome::error(code, message, member_id);
    let mut inherited = None;
    if let Some(instance) = &request.instance_id
        && let Some(previous_id) = group.statics.get(instance).cloned()
        && previous_id != member_id
    {
        let away = group.members.get(&previous_id).is_none_or(|m| m.away);
        if !away {
            return Err(refuse(UNRELEASED_INSTANCE_ID, "another member holds this instance id"));
        }
        // The static member is back: it takes over its previous self's partitions and epoch.
        group.touched.insert(previous_id.clone());
        inherited = group.members.remove(&previous_id);
        if let Some(target) = group.target.remove(&previous_id) {
            group.target.insert(member_id.to_string(), target);
        }
    }
    if inherited.is_none() && !group.members.contains_key(member_id) && group.members.len() >= config.group_size_max {
        return Err(refuse(GROUP_MAX_SIZE_REACHED, "the group is full"));
    }
    let previous = inherited.or_else(|| group.members.remove(member_id));
    // A member that rejoins without its instance id (or with another) is no longer static
    // under the old one.
    if let Some(old) = previous.as_ref().and_then(|m| m.instance_id.as_ref())
        && request.instance_id.as_ref() != Some(old)
        && group.statics.get(old).is_some_and(|id| id == member_id)
    {
        group.statics.remove(old);
    }
    let (epoch, assigned) = match previous {
        // A rejoin of a known member (epoch 0) starts again from nothing; a returning static
        // member keeps what it had.
        Some(member) if member.away => (member.epoch, member.assigned),
        _ => (0, Assignment::new()),
    };
    if let Some(instance) = &request.instance_id {
        group.statics.insert(instance.clone(), member_id.to_string());
    }
    group.members.insert(
        member_id.to_string(),
        Member {
            member_id: member_id.to_string(),
            instance_id: request.instance_id.clone(),
            rack_id: request.rack_id.clone(),
            client_id: request.client_id.clone(),
            client_host: request.client_host.clone(),
            epoch,
            previous_epoch: epoch,
            subscribed: Vec::new(),
            subscribed_names: Vec::new(),
            subscribed_regex: None,
            rebalance_timeout_ms: request.rebalance_timeout_ms,
            server_assignor: request.server_assignor.clone(),
            assigned,
            pending_revocation: Assignment::new(),
            session_deadline_ms: now_ms + config.session_timeout_ms,
            revocation_deadline_ms: None,
            away: false,
            last_sent: None,
        },
    );
    Ok(())
}

fn leave(
    group: &mut ConsumerGroup,
    request: &HeartbeatRequest,
    now_ms: i64,
    config: &ConsumerConfig,
    partitions_of: &dyn Fn(&str) -> Option<i32>,
) -> HeartbeatOutcome {
    let member_id = request.member_id.clone();
    if !group.members.contains_key(&member_id) {
        return HeartbeatOutcome::error(UNKNOWN_MEMBER_ID, "unknown member", &member_id);
    }
    if request.member_epoch == STATIC_LEAVE && request.instance_id.is_some() {
        // Its partitions wait for it (nobody else gets them) until its session runs out.
        if let Some(member) = group.members.get_mut(&member_id) {
            member.away = true;
            // Its records keep one epoch while it is away (Kafka's member epoch -2).
            member.previous_epoch = member.epoch;
            member.session_deadline_ms = now_ms + config.session_timeout_ms;
        }
    } else {
        remove_member(group, &member_id);
        group.epoch += 1;
        group.compute_target(partitions_of);
    }
    HeartbeatOutcome { member_id, member_epoch: request.member_epoch, ..HeartbeatOutcome::default() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn topics(count: i32) -> impl Fn(&str) -> Option<i32> {
        move |topic: &str| (topic == "t").then_some(count)
    }

    fn heartbeat(member: &str, epoch: i32, owned: Option<&Assignment>) -> HeartbeatRequest {
        HeartbeatRequest {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            instance_id: None,
            rack_id: None,
            rebalance_timeout_ms: 10_000,
            subscribed_topics: (epoch == 0).then(|| vec!["t".to_string()]),
            subscribed_regex: None,
            server_assignor: None,
            owned: owned.cloned(),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
        }
    }

    fn count(assignment: &Assignment) -> usize {
        assignment.values().map(BTreeSet::len).sum()
    }

    #[test]
    fn partitions_move_only_after_their_previous_owner_revokes_them() {
        let mut c = ConsumerCoordinator::new(ConsumerConfig::default(), "t".into());
        let parts = topics(6);
        let a = c.heartbeat(heartbeat("a", 0, None), 0, &parts, 0);
        assert_eq!((a.error_code, a.member_epoch), (NONE, 1));
        let a_owned = a.assignment.unwrap();
        assert_eq!(count(&a_owned), 6);

        // b joins: epoch 2; b gets nothing yet, a must give up three first.
        let b = c.heartbeat(heartbeat("b", 0, None), 0, &parts, 10);
        assert_eq!(b.member_epoch, 2);
        assert_eq!(count(b.assignment.as_ref().unwrap()), 0, "a still owns everything");
        let a2 = c.heartbeat(heartbeat("a", 1, Some(&a_owned)), 0, &parts, 20);
        assert_eq!(a2.member_epoch, 1, "a stays in its epoch until it has revoked");
        let a_kept = a2.assignment.unwrap();
        assert_eq!(count(&a_kept), 3);
        assert_eq!(c.group("g").unwrap().state(), "reconciling");
        // Nothing for b until a confirms.
        let b2 = c.heartbeat(heartbeat("b", 2, Some(&Assignment::new())), 0, &parts, 30);
        assert_eq!(count(b2.assignment.as_ref().unwrap()), 0);
        let a3 = c.heartbeat(heartbeat("a", 1, Some(&a_kept)), 0, &parts, 40);
        assert_eq!(a3.member_epoch, 2);
        let b3 = c.heartbeat(heartbeat("b", 2, Some(&Assignment::new())), 0, &parts, 50);
        let b_owned = b3.assignment.unwrap();
        assert_eq!(count(&b_owned), 3);
        assert!(intersection(&a_kept, &b_owned).is_empty());
        assert_eq!(c.group("g").unwrap().state(), "stable");
        // Unchanged assignments are not sent again.
        let quiet = c.heartbeat(HeartbeatRequest { owned: None, ..heartbeat("b", 2, None) }, 0, &parts, 60);
        assert_eq!(quiet.assignment, None);
    }

    #[test]
    fn stale_epochs_are_fenced_unknown_members_rejoin_and_leaving_rebalances() {
        let mut c = ConsumerCoordinator::new(ConsumerConfig::default(), "t".into());
        let parts = topics(4);
        c.heartbeat(heartbeat("a", 0, None), 0, &parts, 0);
        assert_eq!(c.heartbeat(heartbeat("a", 7, None), 0, &parts, 1).error_code, FENCED_MEMBER_EPOCH);
        assert_eq!(c.heartbeat(heartbeat("zz", 3, None), 0, &parts, 1).error_code, UNKNOWN_MEMBER_ID);
        let mut bad = heartbeat("b", 0, None);
        bad.server_assignor = Some("sticky".into());
        assert_eq!(c.heartbeat(bad, 0, &parts, 1).error_code, UNSUPPORTED_ASSIGNOR);
        let b = c.heartbeat(heartbeat("b", 0, None), 0, &parts, 2);
        let left = c.heartbeat(heartbeat("b", LEAVE, None), 0, &parts, 3);
        assert_eq!((left.error_code, left.member_epoch), (NONE, LEAVE));
        assert!(b.member_epoch < c.group("g").unwrap().epoch, "leaving bumps the group epoch");
        assert_eq!(c.group("g").unwrap().members.len(), 1);
    }

    #[test]
    fn a_silent_member_expires_and_its_partitions_go_to_the_others() {
        let mut c =
            ConsumerCoordinator::new(ConsumerConfig { session_timeout_ms: 1_000, ..Default::default() }, "t".into());
        let parts = topics(4);
        let a = c.heartbeat(heartbeat("a", 0, None), 0, &parts, 0).assignment.unwrap();
        c.heartbeat(heartbeat("b", 0, None), 0, &parts, 0);
        let kept = c.heartbeat(heartbeat("a", 1, Some(&a)), 0, &parts, 100).assignment.unwrap();
        c.heartbeat(heartbeat("a", 1, Some(&kept)), 0, &parts, 200);
        // b never heartbeats again; a does.
        for now in [600, 1_100] {
            c.heartbeat(HeartbeatRequest { owned: None, ..heartbeat("a", 2, None) }, 0, &parts, now);
            c.tick(now, &parts);
        }
        assert_eq!(c.group("g").unwrap().members.len(), 1);
        let all = c.heartbeat(heartbeat("a", 2, Some(&kept)), 0, &parts, 1_200);
        assert_eq!(count(all.assignment.as_ref().unwrap()), 4);
    }

    #[test]
    fn assignors_balance_and_uniform_keeps_previous_owners() {
        let topics = BTreeMap::from([("t".to_string(), 12), ("u".to_string(), 3)]);
        let subs: BTreeMap<String, BTreeSet<String>> = ["a", "b", "c"]
            .iter()
            .map(|m| (m.to_string(), ["t".to_string(), "u".to_string()].into_iter().collect()))
            .collect();
        let first = assign_uniform(&topics, &subs, &BTreeMap::new());
        let sizes: Vec<usize> = first.values().map(count).collect();
        assert_eq!(sizes, vec![5, 5, 5]);
        let mut four = subs.clone();
        four.insert("d".into(), subs["a"].clone());
        let second = assign_uniform(&topics, &four, &first);
        for member in ["a", "b", "c"] {
            let kept = intersection(&first[member], &second[member]);
            assert!(count(&kept) >= 3, "{member} keeps most of its partitions: {second:?}");
        }
        assert!(second.values().all(|a| (3..=4).contains(&count(a))));
        let range = assign_range(&topics, &subs);
        assert_eq!(range["a"]["t"], (0..4).collect());
        assert_eq!(range["c"]["u"], [2].into_iter().collect());
    }

    #[test]
    fn a_static_member_that_steps_away_gets_its_partitions_back() {
        let mut c = ConsumerCoordinator::new(ConsumerConfig::default(), "t".into());
        let parts = topics(4);
        let mut join = heartbeat("a1", 0, None);
        join.instance_id = Some("host-a".into());
        let owned = c.heartbeat(join, 0, &parts, 0).assignment.unwrap();
        let mut away = heartbeat("a1", STATIC_LEAVE, None);
        away.instance_id = Some("host-a".into());
        assert_eq!(c.heartbeat(away, 0, &parts, 10).error_code, NONE);
        let epoch = c.group("g").unwrap().epoch;
        // A different process with the same instance id while it is away: takes over.
        let mut back = heartbeat("a2", 0, None);
        back.instance_id = Some("host-a".into());
        let outcome = c.heartbeat(back.clone(), 0, &parts, 20);
        assert_eq!(outcome.assignment.unwrap(), owned);
        assert_eq!(c.group("g").unwrap().members.len(), 1);
        // While it is present, another process with its instance id is refused.
        back.member_id = "a3".into();
        assert_eq!(c.heartbeat(back, 0, &parts, 30).error_code, UNRELEASED_INSTANCE_ID);
        assert!(c.group("g").unwrap().epoch <= epoch + 1);
    }

    #[test]
    fn a_regular_expression_subscribes_to_the_topics_it_matches_now_and_later() {
        let mut c = ConsumerCoordinator::new(ConsumerConfig::default(), "t".into());
        c.set_topic_names(vec!["orders-eu".into(), "orders-us".into(), "payments".into()]);
        let parts = |topic: &str| topic.starts_with("orders-").then_some(2).or((topic == "payments").then_some(2));
        let join = HeartbeatRequest {
            subscribed_topics: None,
            subscribed_regex: Some("orders-.*".into()),
            ..heartbeat("a", 0, None)
        };
        let a = c.heartbeat(join, 0, &parts, 0);
        assert_eq!(a.error_code, NONE);
        let owned = a.assignment.unwrap();
        assert_eq!(owned.keys().collect::<Vec<_>>(), ["orders-eu", "orders-us"], "whole names only");
        let epoch = c.group("g").unwrap().epoch;

        // A new matching topic joins the subscription: a new group epoch and its partitions.
        c.set_topic_names(vec!["orders-eu".into(), "orders-us".into(), "orders-asia".into(), "payments".into()]);
        assert_eq!(c.group("g").unwrap().epoch, epoch + 1);
        let again = c.heartbeat(heartbeat("a", a.member_epoch, Some(&owned)), 0, &parts, 10);
        assert!(again.assignment.unwrap().contains_key("orders-asia"));
        assert_eq!(c.group("g").unwrap().members["a"].subscribed_regex.as_ref().unwrap().text, "orders-.*");
        // A topic that does not match changes nothing.
        let epoch = c.group("g").unwrap().epoch;
        c.set_topic_names(vec!["orders-eu".into(), "orders-us".into(), "orders-asia".into(), "payroll".into()]);
        assert_eq!(c.group("g").unwrap().epoch, epoch);

        // Names and an expression together; an empty expression drops it; a bad one is refused.
        let both = HeartbeatRequest {
            subscribed_topics: Some(vec!["payments".into()]),
            subscribed_regex: Some("orders-eu".into()),
            ..heartbeat("b", 0, None)
        };
        assert_eq!(c.heartbeat(both, 0, &parts, 20).error_code, NONE);
        assert_eq!(c.group("g").unwrap().members["b"].subscribed, ["orders-eu", "payments"]);
        let b_epoch = c.group("g").unwrap().members["b"].epoch;
        let cleared = HeartbeatRequest { subscribed_regex: Some(String::new()), ..heartbeat("b", b_epoch, None) };
        assert_eq!(c.heartbeat(cleared, 0, &parts, 30).error_code, NONE);
        assert_eq!(c.group("g").unwrap().members["b"].subscribed, ["payments"]);
        let bad = HeartbeatRequest {
            subscribed_topics: None,
            subscribed_regex: Some("orders-(".into()),
            ..heartbeat("c", 0, None)
        };
        assert_eq!(c.heartbeat(bad, 0, &parts, 40).error_code, INVALID_REGULAR_EXPRESSION);
        assert!(!c.group("g").unwrap().members.contains_key("c"));
    }

    fn topic_id(name: &str) -> Option<TopicId> {
        let mut id = [0u8; 16];
        id[..name.len().min(16)].copy_from_slice(&name.as_bytes()[..name.len().min(16)]);
        Some(id)
    }

    fn topic_name(id: &TopicId) -> Option<String> {
        Some(String::from_utf8_lossy(id).trim_end_matches('\0').to_string())
    }

    /// After records were taken, they describe every member exactly as it is.
    fn assert_written_is_live(c: &ConsumerCoordinator, step: usize) {
        for group in c.groups.values() {
            let live: BTreeMap<String, DurableMember> =
                group.members.values().map(|m| (m.member_id.clone(), group.durable(m))).collect();
            assert_eq!(group.written.members, live, "step {step}: members of {}", group.id);
            assert_eq!(group.written.epoch, Some((group.epoch, group.metadata_hash)), "step {step}");
            assert_eq!(group.written.assignment_epoch, Some(group.assignment_epoch), "step {step}");
        }
    }

    /// What a restarted coordinator rebuilds from `records`.
    fn restarted(
        records: &[(i32, ConsumerRecord)],
        parts: &dyn Fn(&str) -> Option<i32>,
        names: &[String],
    ) -> ConsumerCoordinator {
        let mut c = ConsumerCoordinator::new(ConsumerConfig::default(), "r".into());
        c.set_topic_names(names.to_vec());
        for (partition, record) in records {
            let stored = super::super::store::StoredRecord::Consumer(record.clone());
            let decoded =
                super::super::store::StoredRecord::decode(&stored.encode_key(), stored.encode_value().as_deref());
            let Ok(super::super::store::StoredRecord::Consumer(record)) = decoded else { panic!("{decoded:?}") };
            c.replay(*partition, record, &topic_name);
        }
        c.finish_load(0, 1_000_000, parts);
        c
    }

    /// Partition counts of the random test's topics: `v` only once it exists.
    fn partitions_with(names: Vec<String>) -> impl Fn(&str) -> Option<i32> {
        move |topic: &str| match topic {
            "t" => Some(4),
            "u" => Some(3),
            "v" if names.iter().any(|n| n == "v") => Some(2),
            _ => None,
        }
    }

    /// Random operations (joins, heartbeats that follow or ignore their assignment, leaves,
    /// static leaves, expiries, topics appearing): after each, the records taken leave what
    /// is written equal to the live state, and a coordinator rebuilt from every record so
    /// far has the same members, epochs and partitions.
    #[test]
    fn records_taken_after_every_operation_rebuild_the_same_groups() {
        for seed in 1..=12u64 {
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let mut names = vec!["t".to_string(), "u".to_string()];
            let mut c = ConsumerCoordinator::new(
                ConsumerConfig { session_timeout_ms: 5_000, ..Default::default() },
                "s".into(),
            );
            c.set_topic_names(names.clone());
            let mut log: Vec<(i32, ConsumerRecord)> = Vec::new();
            let mut now = 0i64;
            for step in 0..150 {
                let parts = partitions_with(names.clone());
                let member = format!("m{}", next(5));
                let group = if next(4) == 0 { "h" } else { "g" };
                let known = c.groups.get(group).and_then(|g| g.members.get(&member)).cloned();
                let mut request = HeartbeatRequest { group_id: group.into(), ..heartbeat(&member, 0, None) };
                match next(10) {
                    0..=1 => {
                        request.subscribed_topics =
                            Some(if next(2) == 0 { vec!["t".into()] } else { vec!["t".into(), "u".into()] });
                        request.subscribed_regex = (next(3) == 0).then(|| "v|w".to_string());
                        request.instance_id = (next(3) == 0).then(|| format!("host-{member}"));
                        request.server_assignor = (next(3) == 0).then(|| ASSIGNORS[next(2) as usize].to_string());
                        request.rack_id = (next(2) == 0).then(|| "rack-1".to_string());
                        c.heartbeat(request, 0, &parts, now);
                    }
                    2..=6 => {
                        if let Some(m) = known {
                            // A client that does as told (or, sometimes, has not revoked yet).
                            let owned =
                                if next(4) == 0 { m.assigned.clone() } else { m.last_sent.clone().unwrap_or_default() };
                            request.member_epoch = m.epoch;
                            request.owned = Some(owned);
                            request.subscribed_topics = None;
                            c.heartbeat(request, 0, &parts, now);
                        }
                    }
                    7 => {
                        request.member_epoch = if next(2) == 0 { LEAVE } else { STATIC_LEAVE };
                        request.instance_id = known.and_then(|m| m.instance_id);
                        request.subscribed_topics = None;
                        c.heartbeat(request, 0, &parts, now);
                    }
                    8 => {
                        now += 1_000 * next(4) as i64;
                        c.tick(now, &parts);
                    }
                    _ => {
                        if !names.iter().any(|n| n == "v") {
                            names.push("v".into());
                            c.set_topic_names(names.clone());
                        }
                    }
                }
                now += 10;
                log.extend(c.take_records(&topic_id));
                assert_written_is_live(&c, step);
                if step % 10 == 9 {
                    let parts = partitions_with(names.clone());
                    let r = restarted(&log, &parts, &names);
                    let with_members = |c: &ConsumerCoordinator| -> BTreeSet<String> {
                        c.groups.values().filter(|g| !g.members.is_empty()).map(|g| g.id.clone()).collect()
                    };
                    assert_eq!(with_members(&r), with_members(&c), "seed {seed} step {step}");
                    for (id, group) in c.groups.iter().filter(|(_, g)| !g.members.is_empty()) {
                        let back = &r.groups[id];
                        assert_eq!(
                            (back.epoch, back.assignment_epoch),
                            (group.epoch, group.assignment_epoch),
                            "seed {seed} step {step}"
                        );
                        assert_eq!(
                            back.target,
                            group
                                .target
                                .iter()
                                .filter(|(_, a)| !a.is_empty())
                                .map(|(m, a)| (m.clone(), a.clone()))
                                .collect(),
                            "seed {seed} step {step}"
                        );
                        assert_eq!(back.assignor, group.assignor);
                        assert_eq!(back.statics, group.statics, "seed {seed} step {step}");
                        let live: Vec<DurableMember> = group.members.values().map(|m| group.durable(m)).collect();
                        let rebuilt: Vec<DurableMember> = back.members.values().map(|m| back.durable(m)).collect();
                        assert_eq!(rebuilt, live, "seed {seed} step {step}");
                        for (member_id, m) in &group.members {
                            assert_eq!(back.members[member_id].subscribed, m.subscribed);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_restarted_coordinator_keeps_members_epochs_and_partitions_without_a_rebalance() {
        let mut c = ConsumerCoordinator::new(ConsumerConfig::default(), "t".into());
        let parts = topics(6);
        let mut log = Vec::new();
        let a = c.heartbeat(heartbeat("a", 0, None), 0, &parts, 0);
        let b = c.heartbeat(heartbeat("b", 0, None), 0, &parts, 0);
        let a_owned =
            c.heartbeat(heartbeat("a", a.member_epoch, a.assignment.as_ref()), 0, &parts, 10).assignment.unwrap();
        c.heartbeat(heartbeat("a", a.member_epoch, Some(&a_owned)), 0, &parts, 20);
        let b_owned =
            c.heartbeat(heartbeat("b", b.member_epoch, Some(&Assignment::new())), 0, &parts, 30).assignment.unwrap();
        log.extend(c.take_records(&topic_id));
        assert_eq!(c.group("g").unwrap().state(), "stable");
        let epoch = c.group("g").unwrap().epoch;

        let mut r = restarted(&log, &parts, &[]);
        assert_eq!(r.group("g").unwrap().state(), "stable");
        assert_eq!(r.group("g").unwrap().epoch, epoch, "no new epoch: nothing changed");
        // Both carry on with their epochs; the assignment is sent again (once), unchanged.
        let again = r.heartbeat(heartbeat("a", epoch, None), 0, &parts, 1_000_010);
        assert_eq!((again.error_code, again.member_epoch), (NONE, epoch));
        assert_eq!(again.assignment.unwrap(), a_owned);
        let b_again = r.heartbeat(heartbeat("b", epoch, Some(&b_owned)), 0, &parts, 1_000_020);
        assert_eq!((b_again.error_code, b_again.assignment.unwrap()), (NONE, b_owned));
        let written = r.take_records(&topic_id);
        assert!(written.is_empty(), "carrying on writes nothing: {written:?}");
        // Sessions start again at load: a member that never comes back expires.
        r.tick(1_100_000, &parts);
        assert!(r.group("g").is_none(), "both stopped heartbeating");
        let tombstones = r.take_records(&topic_id);
        assert!(!tombstones.is_empty() && tombstones.iter().all(|(_, record)| record.is_tombstone()));
        log.extend(tombstones);
        assert!(restarted(&log, &parts, &[]).groups.is_empty(), "the tombstones delete the group");

        // A topic that grew while the coordinator was down: a new epoch at load.
        let grown = topics(8);
        let log_before_expiry: Vec<_> = log
            .iter()
            .take_while(|(_, r)| !matches!(r, ConsumerRecord::CurrentAssignment { value: None, .. }))
            .cloned()
            .collect();
        let r = restarted(&log_before_expiry, &grown, &[]);
        assert_eq!(r.group("g").unwrap().epoch, epoch + 1);
    }

    #[test]
    fn a_topic_created_again_under_its_name_is_a_new_topic_for_the_group() {
        let mut c = ConsumerCoordinator::new(ConsumerConfig::default(), "t".into());
        let parts = topics(2);
        c.set_topic_ids(BTreeMap::from([("t".to_string(), [1; 16])]));
        let a = c.heartbeat(heartbeat("a", 0, None), 0, &parts, 0);
        c.heartbeat(heartbeat("a", a.member_epoch, a.assignment.as_ref()), 0, &parts, 10);
        let old_ids = |id| move |_: &str| Some(id);
        c.take_records(&old_ids([1; 16]));
        let epoch = c.group("g").unwrap().epoch;

        c.set_topic_ids(BTreeMap::from([("t".to_string(), [2; 16])]));
        assert_eq!(c.group("g").unwrap().epoch, epoch + 1);
        assert!(c.group("g").unwrap().members["a"].assigned.is_empty(), "the old topic's partitions are gone");
        // Every record is written again, naming the new topic.
        let records = c.take_records(&old_ids([2; 16]));
        assert!(records.iter().any(|(_, r)| matches!(r, ConsumerRecord::MemberMetadata { value: Some(_), .. })));
        // The member gets the new topic's partitions at its next heartbeat.
        let again = c.heartbeat(heartbeat("a", a.member_epoch, Some(&Assignment::new())), 0, &parts, 20);
        assert_eq!(count(again.assignment.as_ref().unwrap()), 2);
        let records = c.take_records(&old_ids([2; 16]));
        let current = records.iter().find_map(|(_, r)| match r {
            ConsumerRecord::CurrentAssignment { value: Some(v), .. } => Some(v.assigned.clone()),
            _ => None,
        });
        assert_eq!(current.unwrap(), vec![([2; 16], vec![0, 1])]);
    }

    #[test]
    fn a_group_whose_records_failed_is_held_then_written_whole() {
        let mut c = ConsumerCoordinator::new(ConsumerConfig::default(), "t".into());
        let parts = topics(2);
        c.heartbeat(heartbeat("a", 0, None), 0, &parts, 0);
        c.heartbeat(heartbeat("b", 0, None), 0, &parts, 0);
        let first = c.take_records_at(&topic_id, 0);
        assert!(first.held.is_empty());
        // The write failed; b leaves meanwhile (its tombstones must not be lost either).
        c.write_failed(first.records, 0);
        c.heartbeat(heartbeat("b", LEAVE, None), 0, &parts, 10);
        let held = c.take_records_at(&topic_id, 500);
        assert!(held.records.is_empty() && held.held.contains("g"), "{held:?}");
        let again = c.take_records_at(&topic_id, 1_000);
        assert!(again.held.is_empty());
        let members: BTreeSet<&str> = again
            .records
            .iter()
            .filter_map(|(_, r)| match r {
                ConsumerRecord::MemberMetadata { member_id, value: Some(_), .. } => Some(member_id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(members, BTreeSet::from(["a"]), "the group is written whole, without b");
        assert!(c.group("g").unwrap().written.members.contains_key("a"));
    }
}
