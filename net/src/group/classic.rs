//! The classic consumer-group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup and the
//! group side of OffsetCommit) as a state machine with no I/O: requests and `tick(now)` go
//! in; replies to parked requests and records to persist come out as [`Effects`]. The driver
//! (`group::GroupService`) appends the records to the group's `__consumer_offsets` partition,
//! waits until they are durable, then delivers the replies.
//!
//! A group moves Empty → PreparingRebalance (members join; the first join of an empty group
//! waits `group.initial.rebalance.delay.ms` for more) → CompletingRebalance (the leader
//! computes the assignment) → Stable (SyncGroup delivered it), and back to
//! PreparingRebalance whenever a member joins, leaves, changes its protocols or misses its
//! session timeout. Static members (`group.instance.id`, KIP-345) keep their assignment
//! across a restart without a rebalance.
//!
//! Owner: the shard owning the group's `__consumer_offsets` partition.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::store::{GroupValue, OffsetValue, StoredMember, StoredRecord};

/// Identifies a parked request (a JoinGroup or SyncGroup waiting for the rebalance).
pub type Ticket = u64;

/// Kafka error codes of the group APIs.
pub mod error_code {
    pub const NONE: i16 = 0;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const INVALID_REQUEST: i16 = 42;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
}

use error_code::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name Kafka uses in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
        }
    }
}

/// The coordinator's limits (Kafka's broker config names in brackets).
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// [`group.min.session.timeout.ms`, 6 s]
    pub session_timeout_min_ms: i32,
    /// [`group.max.session.timeout.ms`, 30 min]
    pub session_timeout_max_ms: i32,
    /// [`group.initial.rebalance.delay.ms`, 3 s]
    pub initial_rebalance_delay_ms: i64,
    /// [`group.max.size`]: members per group.
    pub group_size_max: usize,
    /// [`offset.metadata.max.bytes`, 4096]
    pub offset_metadata_bytes_max: usize,
    /// Groups of the consumer protocol (KIP-848).
    pub consumer: super::consumer::ConsumerConfig,
    /// A `__consumer_offsets` partition holding more records than this (and more than twice
    /// its live state) is rewritten as a snapshot of the live state and the records before
    /// it are dropped: the bound on its growth and on the replay at start.
    pub offsets_snapshot_records_min: i64,
    /// [`offsets.retention.minutes`, 7 days]: committed offsets of a group without members
    /// expire this long after the group became empty (or, for a group that never had members,
    /// after the commit).
    pub offsets_retention_ms: i64,
    /// [`offsets.retention.check.interval.ms`, 10 min]
    pub offsets_retention_check_interval_ms: i64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            session_timeout_min_ms: 6_000,
            session_timeout_max_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            group_size_max: 10_000,
            offset_metadata_bytes_max: 4096,
            consumer: Default::default(),
            offsets_snapshot_records_min: 100_000,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            offsets_retention_check_interval_ms: 600_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    awaiting_join: Option<(Ticket, i16)>,
    awaiting_sync: Option<Ticket>,
    heartbeat_deadline_ms: i64,
    /// Join order: the leader is the earliest member still present.
    joined_seq: u64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(name, _)| name == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
}

/// A committed offset, as OffsetFetch returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Offset of the record in `__consumer_offsets` that set it: a later record wins even
    /// if the two become durable (and are applied) in the other order.
    pub log_offset: i64,
}

#[derive(Debug)]
pub struct Group {
    pub id: String,
    /// Its `__consumer_offsets` partition.
    pub partition: i32,
    pub state: GroupState,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// instance id → member id of static members.
    statics: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED (KIP-394), awaiting their join: deadline.
    pending: HashMap<String, i64>,
    pub offsets: BTreeMap<(String, i32), Committed>,
    /// When the current rebalance phase gives up on members that have not joined or synced.
    phase_deadline_ms: i64,
    /// The first rebalance of an empty group waits out the whole initial delay.
    initial_delay: bool,
    initial_rebalance_delay_ms: i64,
    state_timestamp_ms: i64,
}

impl Group {
    fn new(id: &str, partition: i32, config: &CoordinatorConfig, now_ms: i64) -> Self {
        Self {
            id: id.to_string(),
            partition,
            state: GroupState::Empty,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            statics: HashMap::new(),
            pending: HashMap::new(),
            offsets: BTreeMap::new(),
            phase_deadline_ms: i64::MAX,
            initial_delay: false,
            initial_rebalance_delay_ms: config.initial_rebalance_delay_ms,
            state_timestamp_ms: now_ms,
        }
    }

    fn set_state(&mut self, state: GroupState, now_ms: i64) {
        self.state = state;
        self.state_timestamp_ms = now_ms;
    }

    /// Protocols every member supports, in the first member's order.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else { return Vec::new() };
        let mut candidates: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for member in members {
            candidates.retain(|c| member.protocols.iter().any(|(n, _)| n == c));
        }
        candidates
    }

    /// Each member votes for its most preferred candidate; most votes wins.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|c| (0, c)).collect();
        for member in self.members.values() {
            if let Some((name, _)) = member.protocols.iter().find(|(n, _)| candidates.contains(n))
                && let Some(vote) = votes.iter_mut().find(|(_, c)| *c == name)
            {
                vote.0 += 1;
            }
        }
        let best = votes.iter().map(|(count, _)| *count).max()?;
        votes.iter().find(|(count, _)| *count == best).map(|(_, c)| (*c).clone())
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && self.candidate_protocols().iter().any(|c| protocols.iter().any(|(n, _)| n == c))
    }

    /// Whether a member subscribes to `topic` (OffsetDelete refuses those). Consumer groups
    /// carry their subscriptions in the members' protocol metadata; for any other protocol
    /// type, or metadata that does not parse, a group with members counts as subscribed.
    pub fn is_subscribed_to(&self, topic: &str) -> bool {
        self.members.values().any(|member| {
            if member.protocol_type != "consumer" {
                return true;
            }
            member.protocols.iter().any(|(_, metadata)| {
                consumer_subscription_topics(metadata).is_none_or(|topics| topics.iter().any(|t| t == topic))
            })
        })
    }

    pub(crate) fn record(&self) -> StoredRecord {
        let members = self
            .members
            .values()
            .map(|m| StoredMember {
                member_id: m.member_id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                subscription: self.protocol.as_deref().map(|p| m.metadata_for(p)).unwrap_or_default(),
                assignment: m.assignment.clone(),
            })
            .collect();
        StoredRecord::Group {
            group: self.id.clone(),
            value: Some(GroupValue {
                protocol_type: self.protocol_type.clone().unwrap_or_default(),
                generation: self.generation,
                protocol: self.protocol.clone(),
                leader: self.leader.clone(),
                state_timestamp_ms: self.state_timestamp_ms,
                members,
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub version: i16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinOutcome {
    pub error_code: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub skip_assignment: bool,
    pub member_id: String,
    pub members: Vec<JoinedMember>,
}

impl JoinOutcome {
    fn error(error_code: i16, member_id: &str) -> Self {
        Self { error_code, generation_id: -1, member_id: member_id.to_string(), ..Self::default() }
    }
}

#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    pub error_code: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    fn error(error_code: i16) -> Self {
        Self { error_code, ..Self::default() }
    }
}

/// Who a group request comes from (Heartbeat, OffsetCommit, LeaveGroup).
#[derive(Debug, Clone)]
pub struct MemberRef {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation_id: i32,
}

#[derive(Debug)]
pub enum Reply {
    Join(Ticket, JoinOutcome),
    Sync(Ticket, SyncOutcome),
}

/// What the driver must do: persist these records (each to its group's partition), and once
/// they are durable, deliver these replies.
#[derive(Debug, Default)]
pub struct Effects {
    pub persist: Vec<(i32, StoredRecord)>,
    pub replies: Vec<Reply>,
}

impl Effects {
    fn reply_join(&mut self, ticket: Ticket, outcome: JoinOutcome) {
        self.replies.push(Reply::Join(ticket, outcome));
    }

    fn reply_sync(&mut self, ticket: Ticket, outcome: SyncOutcome) {
        self.replies.push(Reply::Sync(ticket, outcome));
    }
}

/// The groups of one shard.
pub struct Coordinator {
    config: CoordinatorConfig,
    groups: HashMap<String, Group>,
    /// Makes member ids unique across restarts (random per start) and within one (counter).
    member_id_prefix: String,
    next_member_seq: u64,
}

impl Coordinator {
    pub fn new(config: CoordinatorConfig, member_id_prefix: String) -> Self {
        Self { config, groups: HashMap::new(), member_id_prefix, next_member_seq: 0 }
    }

    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member_seq += 1;
        format!("{}-{}-{}", member_id_base(client_id), self.member_id_prefix, self.next_member_seq)
    }

    pub fn join(&mut self, ticket: Ticket, request: JoinRequest, partition: i32, now_ms: i64) -> Effects {
        let mut effects = Effects::default();
        let refuse =
            |effects: &mut Effects, code| effects.reply_join(ticket, JoinOutcome::error(code, &request.member_id));
        if request.group_id.is_empty() {
            refuse(&mut effects, INVALID_GROUP_ID);
            return effects;
        }
        if !(self.config.session_timeout_min_ms..=self.config.session_timeout_max_ms)
            .contains(&request.session_timeout_ms)
        {
            refuse(&mut effects, INVALID_SESSION_TIMEOUT);
            return effects;
        }
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            refuse(&mut effects, INCONSISTENT_GROUP_PROTOCOL);
            return effects;
        }
        let known = self.groups.contains_key(&request.group_id);
        if !known && !request.member_id.is_empty() {
            refuse(&mut effects, UNKNOWN_MEMBER_ID);
            return effects;
        }
        // A member without an id gets one: a static member at once, a dynamic one (v4+)
        // through a MEMBER_ID_REQUIRED round trip.
        let new_id = request.member_id.is_empty().then(|| self.new_member_id(&request.client_id));
        let group_size_max = self.config.group_size_max;
        let group = self
            .groups
            .entry(request.group_id.clone())
            .or_insert_with(|| Group::new(&request.group_id, partition, &self.config, now_ms));
        if !group.supports(&request.protocol_type, &request.protocols) {
            refuse(&mut effects, INCONSISTENT_GROUP_PROTOCOL);
            return effects;
        }
        let Some(new_id) = new_id else {
            join_known(group, ticket, request, now_ms, &mut effects);
            return effects;
        };
        match &request.instance_id {
            Some(instance) => match group.statics.get(instance).cloned() {
                Some(old) => rejoin_static(group, ticket, request, old, new_id, now_ms, &mut effects),
                None if group.members.len() >= group_size_max => refuse(&mut effects, GROUP_MAX_SIZE_REACHED),
                None => add_member(group, ticket, &request, new_id, now_ms, &mut effects),
            },
            None if group.members.len() + group.pending.len() >= group_size_max => {
                refuse(&mut effects, GROUP_MAX_SIZE_REACHED)
            }
            None if request.version >= 4 => {
                // KIP-394: the member learns its id first and joins again with it, so a client
                // that times out and retries is not counted twice.
                group.pending.insert(new_id.clone(), now_ms + i64::from(request.session_timeout_ms));
                effects.reply_join(ticket, JoinOutcome::error(MEMBER_ID_REQUIRED, &new_id));
            }
            None => add_member(group, ticket, &request, new_id, now_ms, &mut effects),
        }
        effects
    }

    pub fn sync(&mut self, ticket: Ticket, request: SyncRequest, now_ms: i64) -> Effects {
        let mut effects = Effects::default();
        let Some(group) = self.groups.get_mut(&request.group_id) else {
            effects.reply_sync(ticket, SyncOutcome::error(UNKNOWN_MEMBER_ID));
            return effects;
        };
        let who = MemberRef {
            member_id: request.member_id.clone(),
            instance_id: request.instance_id.clone(),
            generation_id: request.generation_id,
        };
        if let Err(code) = validate_member(group, &who) {
            effects.reply_sync(ticket, SyncOutcome::error(code));
            return effects;
        }
        let mismatched = |given: &Option<String>, have: &Option<String>| given.is_some() && given != have;
        if mismatched(&request.protocol_type, &group.protocol_type)
            || mismatched(&request.protocol_name, &group.protocol)
        {
            effects.reply_sync(ticket, SyncOutcome::error(INCONSISTENT_GROUP_PROTOCOL));
            return effects;
        }
        match group.state {
            GroupState::Empty => effects.reply_sync(ticket, SyncOutcome::error(UNKNOWN_MEMBER_ID)),
            GroupState::PreparingRebalance => effects.reply_sync(ticket, SyncOutcome::error(REBALANCE_IN_PROGRESS)),
            GroupState::Stable => {
                let outcome = sync_outcome(group, &request.member_id);
                refresh(group, &request.member_id, now_ms);
                effects.reply_sync(ticket, outcome);
            }
            GroupState::CompletingRebalance => {
                if let Some(member) = group.members.get_mut(&request.member_id)
                    && let Some(old) = member.awaiting_sync.replace(ticket)
                {
                    effects.reply_sync(old, SyncOutcome::error(REBALANCE_IN_PROGRESS));
                }
                refresh(group, &request.member_id, now_ms);
                if group.leader.as_deref() == Some(request.member_id.as_str()) {
                    let assignments: HashMap<String, Bytes> = request.assignments.into_iter().collect();
                    for member in group.members.values_mut() {
                        member.assignment = assignments.get(&member.member_id).cloned().unwrap_or_default();
                    }
                    group.set_state(GroupState::Stable, now_ms);
                    group.phase_deadline_ms = i64::MAX;
                    effects.persist.push((group.partition, group.record()));
                    let waiting: Vec<(Ticket, String)> = group
                        .members
                        .values_mut()
                        .filter_map(|m| m.awaiting_sync.take().map(|t| (t, m.member_id.clone())))
                        .collect();
                    for (ticket, member_id) in waiting {
                        effects.reply_sync(ticket, sync_outcome(group, &member_id));
                    }
                }
            }
        }
        effects
    }

    pub fn heartbeat(&mut self, group_id: &str, who: &MemberRef, now_ms: i64) -> i16 {
        let Some(group) = self.groups.get_mut(group_id) else { return UNKNOWN_MEMBER_ID };
        if let Err(code) = validate_member(group, who) {
            return code;
        }
        refresh(group, &who.member_id, now_ms);
        match group.state {
            GroupState::Empty => UNKNOWN_MEMBER_ID,
            GroupState::PreparingRebalance => REBALANCE_IN_PROGRESS,
            GroupState::CompletingRebalance | GroupState::Stable => NONE,
        }
    }

    /// Removes members (LeaveGroup); one error code per member, in order.
    pub fn leave(&mut self, group_id: &str, leaving: &[MemberRef], now_ms: i64) -> (Vec<i16>, Effects) {
        let mut effects = Effects::default();
        let Some(group) = self.groups.get_mut(group_id) else {
            return (vec![UNKNOWN_MEMBER_ID; leaving.len()], effects);
        };
        let mut codes = Vec::with_capacity(leaving.len());
        for who in leaving {
            let member_id = match &who.instance_id {
                Some(instance) => match group.statics.get(instance) {
                    Some(id) if who.member_id.is_empty() || *id == who.member_id => Some(id.clone()),
                    Some(_) => {
                        codes.push(FENCED_INSTANCE_ID);
                        continue;
                    }
                    None => None,
                },
                None => group.members.contains_key(&who.member_id).then(|| who.member_id.clone()),
            };
            match member_id {
                Some(id) => {
                    remove_member(group, &id, now_ms, &mut effects);
                    codes.push(NONE);
                }
                None if group.pending.remove(&who.member_id).is_some() => codes.push(NONE),
                None => codes.push(UNKNOWN_MEMBER_ID),
            }
        }
        (codes, effects)
    }

    /// Checks an OffsetCommit's sender (generation -1 with no member: a commit from outside
    /// the group, allowed while it has no members). Creates the group on a first such commit.
    pub fn validate_commit(&mut self, group_id: &str, partition: i32, who: &MemberRef, now_ms: i64) -> Result<(), i16> {
        if group_id.is_empty() {
            return Err(INVALID_GROUP_ID);
        }
        let group = match self.groups.get_mut(group_id) {
            Some(group) => group,
            None if who.generation_id < 0 && who.member_id.is_empty() => self
                .groups
                .entry(group_id.to_string())
                .or_insert_with(|| Group::new(group_id, partition, &self.config, now_ms)),
            None => return Err(if who.generation_id < 0 { UNKNOWN_MEMBER_ID } else { ILLEGAL_GENERATION }),
        };
        if who.generation_id < 0 && group.state == GroupState::Empty {
            return Ok(());
        }
        validate_member(group, who)?;
        if group.state == GroupState::CompletingRebalance {
            return Err(REBALANCE_IN_PROGRESS);
        }
        refresh(group, &who.member_id, now_ms);
        Ok(())
    }

    pub fn metadata_too_large(&self, metadata: Option<&str>) -> bool {
        metadata.is_some_and(|m| m.len() > self.config.offset_metadata_bytes_max)
    }

    /// Records a committed offset (or removes it: None) once its record is durable.
    pub fn apply_offset(
        &mut self,
        group_id: &str,
        partition: i32,
        key: (String, i32),
        value: Option<Committed>,
        now_ms: i64,
    ) {
        let group = self
            .groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id, partition, &self.config, now_ms));
        match value {
            Some(value) => {
                if group.offsets.get(&key).is_none_or(|old| old.log_offset < value.log_offset) {
                    group.offsets.insert(key, value);
                }
            }
            None => {
                group.offsets.remove(&key);
            }
        }
    }

    /// Removes a committed offset (OffsetDelete) unless a later record set it again.
    pub fn remove_offset(&mut self, group_id: &str, key: (String, i32), log_offset: i64) {
        if let Some(group) = self.groups.get_mut(group_id)
            && group.offsets.get(&key).is_some_and(|c| c.log_offset < log_offset)
        {
            group.offsets.remove(&key);
        }
    }

    /// DeleteGroups: an empty group and its offsets go; the tombstones to persist, or an error.
    pub fn delete_group(&mut self, group_id: &str) -> Result<Vec<StoredRecord>, i16> {
        let group = self.groups.get(group_id).ok_or(GROUP_ID_NOT_FOUND)?;
        if group.state != GroupState::Empty {
            return Err(NON_EMPTY_GROUP);
        }
        let mut tombstones: Vec<StoredRecord> = group
            .offsets
            .keys()
            .map(|(topic, partition)| StoredRecord::Offset {
                group: group_id.to_string(),
                topic: topic.clone(),
                partition: *partition,
                value: None,
            })
            .collect();
        tombstones.push(StoredRecord::Group { group: group_id.to_string(), value: None });
        self.groups.remove(group_id);
        Ok(tombstones)
    }

    /// Expires the committed offsets of groups without members (KIP-211): removed here, and
    /// the tombstones to persist are returned. `consuming` tells whether a group id has
    /// members of the consumer protocol (whose offsets never expire while they do).
    pub fn expire_offsets(&mut self, now_ms: i64, consuming: impl Fn(&str) -> bool) -> Vec<(i32, StoredRecord)> {
        let retention_ms = self.config.offsets_retention_ms;
        let mut tombstones = Vec::new();
        for group in self.groups.values_mut() {
            if group.state != GroupState::Empty || consuming(&group.id) {
                continue;
            }
            // A group that had members counts from when it became empty.
            let emptied_ms = if group.protocol_type.is_some() { group.state_timestamp_ms } else { i64::MIN };
            let expired: Vec<(String, i32)> = group
                .offsets
                .iter()
                .filter(|(_, c)| now_ms.saturating_sub(c.commit_timestamp_ms.max(emptied_ms)) >= retention_ms)
                .map(|(key, _)| key.clone())
                .collect();
            for (topic, partition) in expired {
                group.offsets.remove(&(topic.clone(), partition));
                tombstones.push((
                    group.partition,
                    StoredRecord::Offset { group: group.id.clone(), topic, partition, value: None },
                ));
            }
        }
        tombstones
    }

    /// Every timer: session timeouts, rebalance phases that ran out, the initial delay.
    pub fn tick(&mut self, now_ms: i64) -> Effects {
        let mut effects = Effects::default();
        // Groups that hold nothing (a join that never completed its KIP-394 round trip, say).
        self.groups.retain(|_, g| {
            let holds_nothing = g.members.is_empty() && g.pending.is_empty() && g.offsets.is_empty();
            !(g.state == GroupState::Empty && holds_nothing && g.generation == 0)
        });
        for group in self.groups.values_mut() {
            group.pending.retain(|_, deadline| *deadline > now_ms);
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| m.awaiting_join.is_none() && m.awaiting_sync.is_none() && m.heartbeat_deadline_ms <= now_ms)
                .map(|m| m.member_id.clone())
                .collect();
            for member_id in expired {
                remove_member(group, &member_id, now_ms, &mut effects);
            }
            match group.state {
                GroupState::PreparingRebalance => maybe_complete_join(group, now_ms, &mut effects),
                GroupState::CompletingRebalance if group.phase_deadline_ms <= now_ms => {
                    // The leader never sent its assignment: members that did not sync are gone.
                    let silent: Vec<String> = group
                        .members
                        .values()
                        .filter(|m| m.awaiting_sync.is_none())
                        .map(|m| m.member_id.clone())
                        .collect();
                    for member_id in silent {
                        remove_member(group, &member_id, now_ms, &mut effects);
                    }
                    if group.state == GroupState::CompletingRebalance {
                        prepare_rebalance(group, now_ms, &mut effects);
                    }
                }
                _ => {}
            }
        }
        effects
    }

    /// Rebuilds state from one `__consumer_offsets` record at load; members restored from
    /// a group record get a fresh session to heartbeat in.
    pub fn replay(&mut self, partition: i32, log_offset: i64, record: StoredRecord, now_ms: i64) {
        match record {
            StoredRecord::Offset { group, topic, partition: index, value } => {
                let committed = value.map(|v: OffsetValue| Committed {
                    offset: v.offset,
                    leader_epoch: v.leader_epoch,
                    metadata: v.metadata,
                    commit_timestamp_ms: v.commit_timestamp_ms,
                    log_offset,
                });
                self.apply_offset(&group, partition, (topic, index), committed, now_ms);
            }
            StoredRecord::Group { group: id, value: None } => {
                if let Some(group) = self.groups.get_mut(&id) {
                    group.members.clear();
                    group.statics.clear();
                    group.set_state(GroupState::Empty, now_ms);
                    if group.offsets.is_empty() {
                        self.groups.remove(&id);
                    }
                }
            }
            // Consumer-protocol groups are replayed by their own coordinator.
            StoredRecord::Consumer(_) => {}
            StoredRecord::Group { group: id, value: Some(value) } => {
                let config = &self.config;
                let group = self.groups.entry(id.clone()).or_insert_with(|| Group::new(&id, partition, config, now_ms));
                group.generation = value.generation;
                group.protocol_type = Some(value.protocol_type.clone()).filter(|t| !t.is_empty());
                group.protocol = value.protocol.clone();
                group.leader = value.leader.clone();
                group.members.clear();
                group.statics.clear();
                for (seq, stored) in value.members.into_iter().enumerate() {
                    if let Some(instance) = &stored.instance_id {
                        group.statics.insert(instance.clone(), stored.member_id.clone());
                    }
                    let protocols =
                        group.protocol.clone().map(|p| vec![(p, stored.subscription.clone())]).unwrap_or_default();
                    group.members.insert(
                        stored.member_id.clone(),
                        Member {
                            member_id: stored.member_id,
                            instance_id: stored.instance_id,
                            client_id: stored.client_id,
                            client_host: stored.client_host,
                            session_timeout_ms: stored.session_timeout_ms,
                            rebalance_timeout_ms: stored.rebalance_timeout_ms,
                            protocol_type: value.protocol_type.clone(),
                            protocols,
                            assignment: stored.assignment,
                            awaiting_join: None,
                            awaiting_sync: None,
                            heartbeat_deadline_ms: now_ms + i64::from(stored.session_timeout_ms),
                            joined_seq: seq as u64,
                        },
                    );
                }
                let state = if group.members.is_empty() { GroupState::Empty } else { GroupState::Stable };
                // Offsets retention counts from when the group became empty, not from the restart.
                let since = if value.state_timestamp_ms > 0 { value.state_timestamp_ms } else { now_ms };
                group.set_state(state, since);
            }
        }
    }
}

/// The topics of a consumer protocol subscription (the member metadata of a group whose
/// protocol type is `consumer`): version i16, then an array (i32 count) of STRING topics; the
/// fields after it (user data, owned partitions, ...) do not matter here.
pub fn consumer_subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let count = i32::from_be_bytes(metadata.get(2..6)?.try_into().ok()?);
    let mut at = 6;
    let mut topics = Vec::with_capacity(usize::try_from(count).ok()?.min(1024));
    for _ in 0..count {
        let len = usize::try_from(i16::from_be_bytes(metadata.get(at..at + 2)?.try_into().ok()?)).ok()?;
        let name = metadata.get(at + 2..at + 2 + len)?;
        topics.push(String::from_utf8(name.to_vec()).ok()?);
        at += 2 + len;
    }
    Some(topics)
}

/// The client id part of a generated member id, cut short (at a character boundary) so the
/// member id always fits Kafka's STRING in the group records.
pub fn member_id_base(client_id: &str) -> &str {
    const CLIENT_ID_BYTES_MAX: usize = 255;
    let mut end = client_id.len().min(CLIENT_ID_BYTES_MAX);
    while !client_id.is_char_boundary(end) {
        end -= 1;
    }
    &client_id[..end]
}

fn validate_member(group: &Group, who: &MemberRef) -> Result<(), i16> {
    if let Some(instance) = &who.instance_id {
        match group.statics.get(instance) {
            Some(id) if *id != who.member_id => return Err(FENCED_INSTANCE_ID),
            None if !group.members.contains_key(&who.member_id) => return Err(UNKNOWN_MEMBER_ID),
            _ => {}
        }
    }
    if !group.members.contains_key(&who.member_id) {
        return Err(UNKNOWN_MEMBER_ID);
    }
    if who.generation_id != group.generation {
        return Err(ILLEGAL_GENERATION);
    }
    Ok(())
}

fn refresh(group: &mut Group, member_id: &str, now_ms: i64) {
    if let Some(member) = group.members.get_mut(member_id) {
        member.heartbeat_deadline_ms = now_ms + i64::from(member.session_timeout_ms);
    }
}

fn sync_outcome(group: &Group, member_id: &str) -> SyncOutcome {
    SyncOutcome {
        error_code: NONE,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol.clone(),
        assignment: group.members.get(member_id).map(|m| m.assignment.clone()).unwrap_or_default(),
    }
}

/// The current generation, as told to a member that (re)joins without a rebalance.
fn current_generation(group: &Group, member_id: &str, version: i16, skip_assignment: bool) -> JoinOutcome {
    let is_leader = group.leader.as_deref() == Some(member_id);
    JoinOutcome {
        error_code: NONE,
        generation_id: group.generation,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol.clone(),
        leader: group.leader.clone().unwrap_or_default(),
        skip_assignment: skip_assignment && is_leader && version >= 9,
        member_id: member_id.to_string(),
        members: if is_leader { joined_members(group) } else { Vec::new() },
    }
}

fn joined_members(group: &Group) -> Vec<JoinedMember> {
    let protocol = group.protocol.clone().unwrap_or_default();
    let mut members: Vec<&Member> = group.members.values().collect();
    members.sort_by_key(|m| m.joined_seq);
    members
        .into_iter()
        .map(|m| JoinedMember {
            member_id: m.member_id.clone(),
            instance_id: m.instance_id.clone(),
            metadata: m.metadata_for(&protocol),
        })
        .collect()
}

fn add_member(
    group: &mut Group,
    ticket: Ticket,
    request: &JoinRequest,
    member_id: String,
    now_ms: i64,
    effects: &mut Effects,
) {
    let joined_seq = group.members.values().map(|m| m.joined_seq + 1).max().unwrap_or(0);
    if let Some(instance) = &request.instance_id {
        group.statics.insert(instance.clone(), member_id.clone());
    }
    if group.members.is_empty() {
        group.protocol_type = Some(request.protocol_type.clone());
    }
    group.members.insert(
        member_id.clone(),
        Member {
            member_id,
            instance_id: request.instance_id.clone(),
            client_id: request.client_id.clone(),
            client_host: request.client_host.clone(),
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms: request.rebalance_timeout_ms,
            protocol_type: request.protocol_type.clone(),
            protocols: request.protocols.clone(),
            assignment: Bytes::new(),
            awaiting_join: Some((ticket, request.version)),
            awaiting_sync: None,
            heartbeat_deadline_ms: now_ms + i64::from(request.session_timeout_ms),
            joined_seq,
        },
    );
    match group.state {
        GroupState::PreparingRebalance => maybe_complete_join(group, now_ms, effects),
        _ => prepare_rebalance(group, now_ms, effects),
    }
}

fn rejoin_static(
    group: &mut Group,
    ticket: Ticket,
    request: JoinRequest,
    old_id: String,
    new_id: String,
    now_ms: i64,
    effects: &mut Effects,
) {
    let Some(mut member) = group.members.remove(&old_id) else {
        group.statics.remove(request.instance_id.as_deref().unwrap_or_default());
        add_member(group, ticket, &request, new_id, now_ms, effects);
        return;
    };
    // The old incarnation is fenced: whatever it was waiting for is refused.
    if let Some((old, _)) = member.awaiting_join.take() {
        effects.reply_join(old, JoinOutcome::error(FENCED_INSTANCE_ID, &old_id));
    }
    if let Some(old) = member.awaiting_sync.take() {
        effects.reply_sync(old, SyncOutcome::error(FENCED_INSTANCE_ID));
    }
    let unchanged = group.protocol.as_deref().is_some_and(|p| {
        member.metadata_for(p)
            == request.protocols.iter().find(|(n, _)| n == p).map(|(_, m)| m.clone()).unwrap_or_default()
    });
    member.member_id = new_id.clone();
    member.client_id = request.client_id.clone();
    member.client_host = request.client_host.clone();
    member.session_timeout_ms = request.session_timeout_ms;
    member.rebalance_timeout_ms = request.rebalance_timeout_ms;
    member.protocols = request.protocols.clone();
    member.heartbeat_deadline_ms = now_ms + i64::from(request.session_timeout_ms);
    if group.leader.as_deref() == Some(old_id.as_str()) {
        group.leader = Some(new_id.clone());
    }
    if let Some(instance) = &request.instance_id {
        group.statics.insert(instance.clone(), new_id.clone());
    }
    group.members.insert(new_id.clone(), member);
    if group.state == GroupState::Stable && unchanged {
        // KIP-345: a static member back within its session keeps its assignment, no rebalance.
        effects.persist.push((group.partition, group.record()));
        effects.reply_join(ticket, current_generation(group, &new_id, request.version, true));
        return;
    }
    if let Some(member) = group.members.get_mut(&new_id) {
        member.awaiting_join = Some((ticket, request.version));
    }
    match group.state {
        GroupState::PreparingRebalance => maybe_complete_join(group, now_ms, effects),
        _ => prepare_rebalance(group, now_ms, effects),
    }
}

fn join_known(group: &mut Group, ticket: Ticket, request: JoinRequest, now_ms: i64, effects: &mut Effects) {
    let member_id = request.member_id.clone();
    if group.pending.remove(&member_id).is_some() {
        add_member(group, ticket, &request, member_id, now_ms, effects);
        return;
    }
    let who = MemberRef {
        member_id: member_id.clone(),
        instance_id: request.instance_id.clone(),
        generation_id: group.generation,
    };
    if let Err(code) = validate_member(group, &who) {
        effects.reply_join(ticket, JoinOutcome::error(code, &member_id));
        return;
    }
    let Some(member) = group.members.get_mut(&member_id) else { return };
    let protocols_changed = member.protocols != request.protocols;
    member.protocols = request.protocols.clone();
    member.session_timeout_ms = request.session_timeout_ms;
    member.rebalance_timeout_ms = request.rebalance_timeout_ms;
    member.heartbeat_deadline_ms = now_ms + i64::from(request.session_timeout_ms);
    let is_leader = group.leader.as_deref() == Some(member_id.as_str());
    let park = |group: &mut Group, effects: &mut Effects| {
        if let Some(member) = group.members.get_mut(&member_id)
            && let Some((old, _)) = member.awaiting_join.replace((ticket, request.version))
        {
            effects.reply_join(old, JoinOutcome::error(REBALANCE_IN_PROGRESS, &member_id));
        }
    };
    match group.state {
        GroupState::PreparingRebalance => {
            park(group, effects);
            maybe_complete_join(group, now_ms, effects);
        }
        GroupState::CompletingRebalance if !protocols_changed => {
            effects.reply_join(ticket, current_generation(group, &member_id, request.version, false));
        }
        GroupState::Stable if !protocols_changed && !is_leader => {
            effects.reply_join(ticket, current_generation(group, &member_id, request.version, false));
        }
        _ => {
            park(group, effects);
            prepare_rebalance(group, now_ms, effects);
        }
    }
}

fn prepare_rebalance(group: &mut Group, now_ms: i64, effects: &mut Effects) {
    // Members waiting for an assignment from the previous round are told to rejoin.
    for member in group.members.values_mut() {
        if let Some(ticket) = member.awaiting_sync.take() {
            effects.reply_sync(ticket, SyncOutcome::error(REBALANCE_IN_PROGRESS));
        }
    }
    let rebalance_timeout_ms = group.members.values().map(|m| i64::from(m.rebalance_timeout_ms)).max().unwrap_or(0);
    group.initial_delay = group.state == GroupState::Empty;
    group.phase_deadline_ms = now_ms
        + if group.initial_delay {
            group.initial_rebalance_delay_ms.min(rebalance_timeout_ms.max(0))
        } else {
            rebalance_timeout_ms
        };
    group.set_state(GroupState::PreparingRebalance, now_ms);
    maybe_complete_join(group, now_ms, effects);
}

fn maybe_complete_join(group: &mut Group, now_ms: i64, effects: &mut Effects) {
    if group.state != GroupState::PreparingRebalance {
        return;
    }
    let all_joined = group.members.values().all(|m| m.awaiting_join.is_some()) && group.pending.is_empty();
    let timed_out = now_ms >= group.phase_deadline_ms;
    if !(timed_out || (all_joined && !group.initial_delay)) {
        return;
    }
    // Members that did not rejoin in time are out.
    let absent: Vec<String> =
        group.members.values().filter(|m| m.awaiting_join.is_none()).map(|m| m.member_id.clone()).collect();
    for member_id in absent {
        if let Some(member) = group.members.remove(&member_id)
            && let Some(instance) = member.instance_id
        {
            group.statics.remove(&instance);
        }
    }
    group.generation += 1;
    group.initial_delay = false;
    if group.members.is_empty() {
        // The protocol type stays: tools list an empty consumer group as a consumer group.
        group.protocol = None;
        group.leader = None;
        group.phase_deadline_ms = i64::MAX;
        group.set_state(GroupState::Empty, now_ms);
        effects.persist.push((group.partition, group.record()));
        return;
    }
    group.protocol = group.select_protocol();
    if !group.leader.as_ref().is_some_and(|l| group.members.contains_key(l)) {
        group.leader = group.members.values().min_by_key(|m| m.joined_seq).map(|m| m.member_id.clone());
    }
    group.set_state(GroupState::CompletingRebalance, now_ms);
    let rebalance_timeout_ms = group.members.values().map(|m| i64::from(m.rebalance_timeout_ms)).max().unwrap_or(0);
    group.phase_deadline_ms = now_ms + rebalance_timeout_ms;
    let waiting: Vec<(Ticket, i16, String)> = group
        .members
        .values_mut()
        .filter_map(|m| {
            m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
            m.awaiting_join.take().map(|(t, v)| (t, v, m.member_id.clone()))
        })
        .collect();
    for (ticket, version, member_id) in waiting {
        effects.reply_join(ticket, current_generation(group, &member_id, version, false));
    }
}

fn remove_member(group: &mut Group, member_id: &str, now_ms: i64, effects: &mut Effects) {
    let Some(member) = group.members.remove(member_id) else { return };
    if let Some(instance) = &member.instance_id {
        group.statics.remove(instance);
    }
    if let Some((ticket, _)) = member.awaiting_join {
        effects.reply_join(ticket, JoinOutcome::error(UNKNOWN_MEMBER_ID, member_id));
    }
    if let Some(ticket) = member.awaiting_sync {
        effects.reply_sync(ticket, SyncOutcome::error(UNKNOWN_MEMBER_ID));
    }
    match group.state {
        GroupState::Stable | GroupState::CompletingRebalance => prepare_rebalance(group, now_ms, effects),
        GroupState::PreparingRebalance => maybe_complete_join(group, now_ms, effects),
        GroupState::Empty => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn coordinator(initial_delay_ms: i64) -> Coordinator {
        Coordinator::new(
            CoordinatorConfig { initial_rebalance_delay_ms: initial_delay_ms, ..Default::default() },
            "t".into(),
        )
    }

    fn join_request(member_id: &str, instance: Option<&str>, metadata: &[u8]) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            instance_id: instance.map(String::from),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::copy_from_slice(metadata))],
            version: 9,
        }
    }

    fn joins(effects: &Effects) -> Vec<(Ticket, JoinOutcome)> {
        effects
            .replies
            .iter()
            .filter_map(|r| match r {
                Reply::Join(t, o) => Some((*t, o.clone())),
                Reply::Sync(..) => None,
            })
            .collect()
    }

    fn syncs(effects: &Effects) -> Vec<(Ticket, SyncOutcome)> {
        effects
            .replies
            .iter()
            .filter_map(|r| match r {
                Reply::Sync(t, o) => Some((*t, o.clone())),
                Reply::Join(..) => None,
            })
            .collect()
    }

    /// Joins a new dynamic member through KIP-394 and returns its id (its join is parked or answered in the effects).
    fn new_member(c: &mut Coordinator, ticket: Ticket, now: i64) -> (String, Effects) {
        let first = c.join(ticket, join_request("", None, b"m"), 3, now);
        let (_, outcome) = joins(&first).pop().unwrap();
        assert_eq!(outcome.error_code, MEMBER_ID_REQUIRED);
        let id = outcome.member_id.clone();
        let effects = c.join(ticket + 1000, join_request(&id, None, b"m"), 3, now);
        (id, effects)
    }

    fn sync_request(member_id: &str, generation: i32, assignments: &[(&str, &[u8])]) -> SyncRequest {
        SyncRequest {
            group_id: "g".into(),
            generation_id: generation,
            member_id: member_id.into(),
            instance_id: None,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignments: assignments.iter().map(|(m, a)| (m.to_string(), Bytes::copy_from_slice(a))).collect(),
        }
    }

    fn who(member_id: &str, generation: i32) -> MemberRef {
        MemberRef { member_id: member_id.into(), instance_id: None, generation_id: generation }
    }

    #[test]
    fn a_group_forms_rebalances_on_a_second_member_and_distributes_the_leaders_assignment() {
        let mut c = coordinator(0);
        let (a, effects) = new_member(&mut c, 1, 0);
        let (_, joined) = joins(&effects).pop().unwrap();
        assert_eq!((joined.error_code, joined.generation_id, joined.leader.as_str()), (NONE, 1, a.as_str()));
        assert_eq!(joined.members.len(), 1, "the leader sees the members");
        let effects = c.sync(2, sync_request(&a, 1, &[(&a, b"all")]), 0);
        assert_eq!(syncs(&effects)[0].1.assignment, Bytes::from_static(b"all"));
        assert_eq!(effects.persist.len(), 1, "the assignment is persisted");
        assert_eq!(c.group("g").unwrap().state, GroupState::Stable);

        // A second member: the group rebalances; the first learns it from its heartbeat.
        let (b, effects) = new_member(&mut c, 10, 100);
        assert!(joins(&effects).is_empty(), "parked until the first member rejoins");
        assert_eq!(c.heartbeat("g", &who(&a, 1), 100), REBALANCE_IN_PROGRESS);
        let effects = c.join(11, join_request(&a, None, b"m"), 3, 150);
        let replies = joins(&effects);
        assert_eq!(replies.len(), 2);
        for (_, outcome) in &replies {
            assert_eq!((outcome.generation_id, outcome.leader.as_str()), (2, a.as_str()));
        }
        let leader_view = replies.iter().find(|(_, o)| o.member_id == a).unwrap();
        assert_eq!(leader_view.1.members.len(), 2);
        // The follower's sync waits for the leader's.
        assert!(syncs(&c.sync(12, sync_request(&b, 2, &[]), 160)).is_empty());
        let effects = c.sync(13, sync_request(&a, 2, &[(&a, b"p0"), (&b, b"p1")]), 170);
        let mut delivered: Vec<(Ticket, Bytes)> = syncs(&effects).into_iter().map(|(t, o)| (t, o.assignment)).collect();
        delivered.sort();
        assert_eq!(delivered, vec![(12, Bytes::from_static(b"p1")), (13, Bytes::from_static(b"p0"))]);
        assert_eq!(c.heartbeat("g", &who(&b, 2), 200), NONE);
        assert_eq!(c.heartbeat("g", &who(&b, 1), 200), ILLEGAL_GENERATION);
        assert_eq!(c.heartbeat("g", &who("stranger", 2), 200), UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn a_silent_member_is_removed_after_its_session_and_the_rest_rebalance() {
        let mut c = coordinator(0);
        let (a, _) = new_member(&mut c, 1, 0);
        c.sync(2, sync_request(&a, 1, &[]), 0);
        let (b, _) = new_member(&mut c, 3, 0);
        c.join(4, join_request(&a, None, b"m"), 3, 0);
        c.sync(5, sync_request(&a, 2, &[]), 0);
        c.sync(6, sync_request(&b, 2, &[]), 0);
        // a keeps heartbeating, b goes silent.
        for now in (1_000..=12_000).step_by(1_000) {
            assert_eq!(
                c.heartbeat("g", &who(&a, c.group("g").unwrap().generation), now),
                if now <= 10_000 { NONE } else { REBALANCE_IN_PROGRESS },
                "at {now}"
            );
            c.tick(now);
        }
        let group = c.group("g").unwrap();
        assert!(!group.members.contains_key(&b));
        assert_eq!(group.state, GroupState::PreparingRebalance);
        let effects = c.join(7, join_request(&a, None, b"m"), 3, 12_500);
        assert_eq!(joins(&effects)[0].1.generation_id, 3);
        assert_eq!(joins(&effects)[0].1.members.len(), 1);
    }

    #[test]
    fn the_initial_delay_collects_members_before_the_first_generation() {
        let mut c = coordinator(3_000);
        let (_, effects) = new_member(&mut c, 1, 0);
        assert!(joins(&effects).is_empty());
        let (_, effects) = new_member(&mut c, 2, 1_000);
        assert!(joins(&effects).is_empty());
        assert!(joins(&c.tick(2_999)).is_empty());
        let replies = joins(&c.tick(3_000));
        assert_eq!(replies.len(), 2);
        assert!(replies.iter().all(|(_, o)| o.generation_id == 1));
    }

    #[test]
    fn a_static_member_restarting_keeps_its_assignment_without_a_rebalance() {
        let mut c = coordinator(0);
        let effects = c.join(1, join_request("", Some("host-1"), b"m"), 3, 0);
        let (_, joined) = joins(&effects).pop().unwrap();
        assert_eq!(joined.error_code, NONE, "static members skip MEMBER_ID_REQUIRED");
        let old = joined.member_id;
        c.sync(2, sync_request(&old, 1, &[(&old, b"mine")]), 0);

        // The process restarts: a new join with the same instance id and no member id.
        let effects = c.join(3, join_request("", Some("host-1"), b"m"), 3, 5_000);
        let (_, rejoined) = joins(&effects).pop().unwrap();
        assert_eq!((rejoined.error_code, rejoined.generation_id), (NONE, 1), "same generation: no rebalance");
        assert_ne!(rejoined.member_id, old);
        assert!(rejoined.skip_assignment, "the leader need not assign again");
        assert_eq!(c.group("g").unwrap().state, GroupState::Stable);
        let mut sync = sync_request(&rejoined.member_id, 1, &[]);
        sync.instance_id = Some("host-1".into());
        assert_eq!(syncs(&c.sync(4, sync, 5_001))[0].1.assignment, Bytes::from_static(b"mine"));
        // The old incarnation is fenced.
        let fenced = MemberRef { member_id: old, instance_id: Some("host-1".into()), generation_id: 1 };
        assert_eq!(c.heartbeat("g", &fenced, 5_002), FENCED_INSTANCE_ID);
    }

    #[test]
    fn commits_are_checked_against_membership_and_generation() {
        let mut c = coordinator(0);
        // From outside the group (no members yet): allowed, and creates the group.
        assert_eq!(c.validate_commit("solo", 1, &who("", -1), 0), Ok(()));
        assert_eq!(c.group("solo").unwrap().state, GroupState::Empty);
        let (a, _) = new_member(&mut c, 1, 0);
        assert_eq!(c.validate_commit("g", 3, &who(&a, 1), 0), Err(REBALANCE_IN_PROGRESS), "awaiting sync");
        c.sync(2, sync_request(&a, 1, &[]), 0);
        assert_eq!(c.validate_commit("g", 3, &who(&a, 1), 0), Ok(()));
        assert_eq!(c.validate_commit("g", 3, &who(&a, 0), 0), Err(ILLEGAL_GENERATION));
        assert_eq!(c.validate_commit("g", 3, &who("nobody", 1), 0), Err(UNKNOWN_MEMBER_ID));
        assert_eq!(c.validate_commit("g", 3, &who("", -1), 0), Err(UNKNOWN_MEMBER_ID), "the group has members");
        assert_eq!(c.validate_commit("", 3, &who("", -1), 0), Err(INVALID_GROUP_ID));
        // A later record wins even when applied first.
        let committed = |offset, log_offset| Committed {
            offset,
            leader_epoch: 0,
            metadata: String::new(),
            commit_timestamp_ms: 0,
            log_offset,
        };
        c.apply_offset("g", 3, ("t".into(), 0), Some(committed(20, 8)), 0);
        c.apply_offset("g", 3, ("t".into(), 0), Some(committed(10, 7)), 0);
        assert_eq!(c.group("g").unwrap().offsets[&("t".to_string(), 0)].offset, 20);
    }

    #[test]
    fn leaving_rebalances_and_the_last_member_leaves_an_empty_group_that_can_be_deleted() {
        let mut c = coordinator(0);
        let (a, _) = new_member(&mut c, 1, 0);
        c.sync(2, sync_request(&a, 1, &[]), 0);
        assert_eq!(c.delete_group("g"), Err(NON_EMPTY_GROUP));
        let (codes, effects) = c.leave("g", &[who(&a, -1), who("ghost", -1)], 10);
        assert_eq!(codes, vec![NONE, UNKNOWN_MEMBER_ID]);
        assert_eq!(c.group("g").unwrap().state, GroupState::Empty);
        assert_eq!(effects.persist.len(), 1, "the emptied group is persisted");
        c.apply_offset(
            "g",
            3,
            ("t".into(), 0),
            Some(Committed {
                offset: 1,
                leader_epoch: 0,
                metadata: String::new(),
                commit_timestamp_ms: 0,
                log_offset: 1,
            }),
            0,
        );
        let tombstones = c.delete_group("g").unwrap();
        assert_eq!(tombstones.len(), 2, "the offset and the group");
        assert!(c.group("g").is_none());
        assert_eq!(c.delete_group("g"), Err(GROUP_ID_NOT_FOUND));
    }

    #[test]
    fn consumer_subscriptions_are_read_from_member_metadata() {
        let mut metadata = vec![0, 1, 0, 0, 0, 2];
        for topic in ["orders", "audit"] {
            metadata.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            metadata.extend_from_slice(topic.as_bytes());
        }
        metadata.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]); // null user data
        assert_eq!(consumer_subscription_topics(&metadata), Some(vec!["orders".into(), "audit".into()]));
        assert_eq!(consumer_subscription_topics(&metadata[..9]), None);
        assert_eq!(consumer_subscription_topics(b"m"), None);

        let mut c = coordinator(0);
        let mut request = join_request("", None, &metadata);
        request.version = 3; // no KIP-394 round trip
        c.join(1, request, 3, 0);
        let group = c.group("g").unwrap();
        assert!(group.is_subscribed_to("orders") && !group.is_subscribed_to("payments"));
    }

    #[test]
    fn groups_holding_nothing_are_pruned_and_later_commits_survive_an_offset_delete() {
        let mut c = coordinator(0);
        // A KIP-394 join that never comes back: the pending id expires, then the group goes.
        c.join(1, join_request("", None, b"m"), 3, 0);
        assert!(c.group("g").is_some());
        c.tick(20_000);
        c.tick(20_001);
        assert!(c.group("g").is_none(), "an empty group with nothing in it is dropped");
        let committed = |offset, log_offset| Committed {
            offset,
            leader_epoch: 0,
            metadata: String::new(),
            commit_timestamp_ms: 0,
            log_offset,
        };
        c.apply_offset("kept", 1, ("t".into(), 0), Some(committed(9, 20)), 0);
        c.remove_offset("kept", ("t".into(), 0), 10);
        assert_eq!(
            c.group("kept").unwrap().offsets[&("t".to_string(), 0)].offset,
            9,
            "a commit after the delete stays"
        );
        c.remove_offset("kept", ("t".into(), 0), 21);
        assert!(c.group("kept").unwrap().offsets.is_empty());
        c.tick(30_000);
        assert!(c.group("kept").is_none(), "once its last offset is deleted, it holds nothing either");
    }

    #[test]
    fn generated_member_ids_fit_a_kafka_string_whatever_the_client_id() {
        let mut c = coordinator(0);
        let mut request = join_request("", None, b"m");
        request.client_id = "é".repeat(20_000);
        let (_, outcome) = joins(&c.join(1, request, 3, 0)).pop().unwrap();
        assert_eq!(outcome.error_code, MEMBER_ID_REQUIRED);
        assert!(outcome.member_id.len() < 300, "{}", outcome.member_id.len());
        assert!(outcome.member_id.starts_with('é'));
    }

    #[test]
    fn offsets_of_empty_groups_expire_after_the_retention() {
        let mut c = Coordinator::new(
            CoordinatorConfig { initial_rebalance_delay_ms: 0, offsets_retention_ms: 1_000, ..Default::default() },
            "t".into(),
        );
        let committed = |offset, at| Committed {
            offset,
            leader_epoch: 0,
            metadata: String::new(),
            commit_timestamp_ms: at,
            log_offset: offset,
        };
        // A group that never had members: each offset from its commit.
        c.apply_offset("solo", 1, ("t".into(), 0), Some(committed(5, 0)), 0);
        c.apply_offset("solo", 1, ("t".into(), 1), Some(committed(6, 800)), 800);
        // A group with a member: nothing expires while it has one.
        let (a, _) = new_member(&mut c, 1, 0);
        c.sync(2, sync_request(&a, 1, &[]), 0);
        c.apply_offset("g", 3, ("t".into(), 0), Some(committed(7, 0)), 0);
        let expired = c.expire_offsets(1_000, |_| false);
        assert_eq!(expired.len(), 1, "only solo's first offset: {expired:?}");
        assert!(c.group("g").unwrap().offsets.contains_key(&("t".to_string(), 0)));
        // Once the group is empty, its offsets count from then.
        c.leave("g", &[who(&a, -1)], 1_500);
        assert!(c.expire_offsets(2_000, |_| false).iter().all(|(p, _)| *p == 1));
        let later = c.expire_offsets(2_600, |_| false);
        assert_eq!(later.len(), 1);
        assert!(matches!(&later[0].1, StoredRecord::Offset { group, value: None, .. } if group == "g"));
        // Groups of the consumer protocol with members keep theirs.
        c.apply_offset("kip848", 2, ("t".into(), 0), Some(committed(1, 0)), 0);
        assert!(c.expire_offsets(10_000, |group| group == "kip848").is_empty());
    }

    #[test]
    fn state_is_rebuilt_from_its_records() {
        let mut c = coordinator(0);
        let (a, _) = new_member(&mut c, 1, 0);
        let effects = c.sync(2, sync_request(&a, 1, &[(&a, b"p0")]), 0);
        let mut restarted = coordinator(0);
        for (partition, record) in effects.persist {
            restarted.replay(partition, 5, record, 1_000);
        }
        restarted.replay(
            3,
            6,
            StoredRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 2,
                value: Some(OffsetValue { offset: 42, leader_epoch: 0, metadata: "m".into(), commit_timestamp_ms: 9 }),
            },
            1_000,
        );
        let group = restarted.group("g").unwrap();
        assert_eq!((group.state, group.generation, group.leader.as_deref()), (GroupState::Stable, 1, Some(a.as_str())));
        assert_eq!(group.members[&a].assignment, Bytes::from_static(b"p0"));
        assert_eq!(group.offsets[&("t".to_string(), 2)].offset, 42);
        // The restored member keeps its generation and must heartbeat within its session.
        assert_eq!(restarted.heartbeat("g", &who(&a, 1), 2_000), NONE);
        restarted.tick(20_000);
        assert_eq!(restarted.group("g").unwrap().state, GroupState::Empty);
    }
}
