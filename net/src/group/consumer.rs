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
//! Membership is kept in memory only: after a coordinator restart members are told
//! UNKNOWN_MEMBER_ID and rejoin (epoch 0), as after a fencing. Committed offsets are durable
//! like those of classic groups.
//!
//! Owner: the shard owning the group's `__consumer_offsets` partition.

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
    /// Partition counts of the subscribed topics the target was computed with.
    topics_seen: BTreeMap<String, i32>,
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
            topics_seen: BTreeMap::new(),
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

    /// Recomputes the target assignment for the current members and topics.
    fn compute_target(&mut self, partitions_of: &dyn Fn(&str) -> Option<i32>) {
        let topics: BTreeMap<String, i32> =
            self.subscribed_topics().into_iter().filter_map(|t| partitions_of(&t).map(|count| (t, count))).collect();
        let subscriptions: BTreeMap<String, BTreeSet<String>> =
            self.members.values().map(|m| (m.member_id.clone(), m.subscribed.iter().cloned().collect())).collect();
        self.target = if self.assignor == "range" {
            assign_range(&topics, &subscriptions)
        } else {
            assign_uniform(&topics, &subscriptions, &self.target)
        };
        self.topics_seen = topics;
        self.assignment_epoch = self.epoch;
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
            member.previous_epoch = member.epoch;
            member.epoch = assignment_epoch;
            for (topic, partitions) in free {
                member.assigned.entry(topic).or_default().extend(partitions);
            }
        }
    }
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
}

impl ConsumerCoordinator {
    pub fn new(config: ConsumerConfig, member_id_prefix: String) -> Self {
        Self { config, groups: HashMap::new(), topic_names: Vec::new(), member_id_prefix, next_member_seq: 0 }
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

    pub fn remove_group(&mut self, group_id: &str) {
        self.groups.remove(group_id);
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
        if let Some(assignor) = &request.server_assignor
            && group.members.is_empty()
        {
            group.assignor = assignor.clone();
        }
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
                member_id
            }
            epoch => {
                let Some(member) = group.members.get(&request.member_id) else {
                    return refuse(UNKNOWN_MEMBER_ID, "unknown member: rejoin with epoch 0");
                };
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
        let mut bump = request.member_epoch == 0;
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
        let metadata_changed =
            group.subscribed_topics().iter().any(|topic| partitions_of(topic) != group.topics_seen.get(topic).copied());
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
        }
        // Membership is all a consumer group keeps here (offsets live with the classic state).
        self.groups.retain(|_, g| !g.members.is_empty());
    }
}

fn remove_member(group: &mut ConsumerGroup, member_id: &str) {
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
        inherited = group.members.remove(&previous_id);
        if let Some(target) = group.target.remove(&previous_id) {
            group.target.insert(member_id.to_string(), target);
        }
    }
    if inherited.is_none() && !group.members.contains_key(member_id) && group.members.len() >= config.group_size_max {
        return Err(refuse(GROUP_MAX_SIZE_REACHED, "the group is full"));
    }
    let previous = inherited.or_else(|| group.members.remove(member_id));
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
}
