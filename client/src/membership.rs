//! Classic consumer-group membership, as Kafka's Java consumer does it with the eager
//! `range` assignor: find the coordinator, JoinGroup (the first join of a new member gets
//! its member id with MEMBER_ID_REQUIRED and joins again with it), the leader computes every
//! member's partitions from their subscriptions, SyncGroup hands each member its share, then
//! heartbeats keep the membership while the caller consumes. A heartbeat answered with
//! REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID marks the member for a
//! rejoin, which the caller performs at its next poll (giving up its partitions first, after
//! committing their positions). Offsets are committed and fetched under the member's
//! generation.
//!
//! The coordinator gets a connection of its own: a JoinGroup waits at the coordinator until
//! the rebalance completes, and the broker answers a connection's group requests one at a
//! time, so fetches on a shared connection would wait behind it (Kafka's Java client keeps a
//! separate coordinator connection for the same reason).
//!
//! Owner: one glommio executor thread.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, GroupId, HeartbeatRequest, JoinGroupRequest,
    LeaveGroupRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::connection::Connection;
use crate::groups::commit_request;
use crate::{Client, Error, check};

/// The assignor this member offers (Kafka's `RangeAssignor`).
pub const RANGE: &str = "range";

/// Kafka error codes a member acts on.
mod code {
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
}

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub group_id: String,
    /// The coordinator removes a member it has not heard from for this long.
    pub session_timeout: Duration,
    /// How long the coordinator waits for every member to rejoin in a rebalance (Kafka's
    /// `max.poll.interval.ms` plays this part).
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Joins that fail for a passing reason (coordinator moving or loading) are retried for
    /// this long.
    pub join_retry_max: Duration,
}

impl GroupConfig {
    /// Kafka's consumer defaults, except a rebalance timeout of one minute.
    pub fn new(group_id: &str) -> Self {
        Self {
            group_id: group_id.to_string(),
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(3),
            join_retry_max: Duration::from_secs(60),
        }
    }
}

/// The partitions a generation gave this member, by topic.
pub type Assignment = BTreeMap<String, Vec<i32>>;

/// What the member holds between rebalances.
#[derive(Default)]
struct MemberState {
    member_id: String,
    generation: i32,
    coordinator: Option<Rc<Connection>>,
}

struct Shared {
    rejoin: Cell<bool>,
    /// Bumped at every join: a heartbeat loop of an older generation stops.
    epoch: Cell<u64>,
}

/// One member of a classic consumer group.
pub struct Membership {
    client: Rc<Client>,
    config: GroupConfig,
    topics: Vec<String>,
    state: RefCell<MemberState>,
    shared: Rc<Shared>,
}

impl Membership {
    pub fn new(client: Rc<Client>, config: GroupConfig, topics: &[String]) -> Self {
        Self {
            client,
            config,
            topics: topics.to_vec(),
            state: RefCell::new(MemberState::default()),
            shared: Rc::new(Shared { rejoin: Cell::new(true), epoch: Cell::new(0) }),
        }
    }

    pub fn group_id(&self) -> &str {
        &self.config.group_id
    }

    pub fn member_id(&self) -> String {
        self.state.borrow().member_id.clone()
    }

    pub fn generation(&self) -> i32 {
        self.state.borrow().generation
    }

    /// True when the member must (re)join before it consumes: never joined, or the
    /// coordinator started a rebalance or forgot it.
    pub fn needs_rejoin(&self) -> bool {
        self.shared.rejoin.get()
    }

    /// Makes the next poll join again (the member could not start on its assignment).
    pub fn mark_for_rejoin(&self) {
        self.shared.rejoin.set(true);
    }

    /// Joins the group (again) and returns this member's partitions. Heartbeats run from
    /// here on until the next rejoin or [`Membership::leave`].
    pub async fn join(&self) -> Result<Assignment, Error> {
        let started = std::time::Instant::now();
        loop {
            match self.join_once().await {
                Ok(assignment) => return Ok(assignment),
                Err(error) if started.elapsed() < self.config.join_retry_max && retriable(&error) => {
                    tracing::debug!(group = %self.config.group_id, %error, "joining again");
                    if matches!(error.code(), Some(c) if coordinator_moved(c)) {
                        self.state.borrow_mut().coordinator = None;
                    }
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn join_once(&self) -> Result<Assignment, Error> {
        self.shared.epoch.set(self.shared.epoch.get() + 1);
        let coordinator = self.coordinator().await?;
        let group_id = GroupId(StrBytes::from_string(self.config.group_id.clone()));
        let subscription = encode_subscription(&self.topics)?;
        let join_timeout = self.config.rebalance_timeout + Duration::from_secs(5);
        let mut member_id = self.state.borrow().member_id.clone();
        let joined = loop {
            let request = JoinGroupRequest::default()
                .with_group_id(group_id.clone())
                .with_session_timeout_ms(millis(self.config.session_timeout))
                .with_rebalance_timeout_ms(millis(self.config.rebalance_timeout))
                .with_member_id(StrBytes::from_string(member_id.clone()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str(RANGE))
                        .with_metadata(subscription.clone()),
                ]);
            let response = coordinator.send_within(request, join_timeout).await?;
            match response.error_code {
                code::MEMBER_ID_REQUIRED => member_id = response.member_id.to_string(),
                code::UNKNOWN_MEMBER_ID => {
                    member_id.clear();
                    self.state.borrow_mut().member_id.clear();
                    return Err(Error::kafka("JoinGroup", code::UNKNOWN_MEMBER_ID, None));
                }
                error => {
                    check("JoinGroup", error, None)?;
                    break response;
                }
            }
        };
        let member_id = joined.member_id.to_string();
        let generation = joined.generation_id;
        {
            let mut state = self.state.borrow_mut();
            state.member_id = member_id.clone();
            state.generation = generation;
        }
        let assignments = if joined.leader == joined.member_id {
            let mut subscriptions = BTreeMap::new();
            for member in &joined.members {
                subscriptions.insert(member.member_id.to_string(), decode_subscription(&member.metadata)?);
            }
            let mut wanted: Vec<String> = subscriptions.values().flatten().cloned().collect();
            wanted.sort();
            wanted.dedup();
            let metadata = self.client.metadata(Some(wanted.as_slice())).await?;
            let counts: BTreeMap<String, i32> =
                metadata.topics.iter().map(|(name, info)| (name.clone(), info.partitions.len() as i32)).collect();
            range_assign(&subscriptions, &counts)
                .into_iter()
                .map(|(member, assignment)| {
                    Ok(SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(member))
                        .with_assignment(encode_assignment(&assignment)?))
                })
                .collect::<Result<Vec<_>, Error>>()?
        } else {
            Vec::new()
        };
        let request = SyncGroupRequest::default()
            .with_group_id(group_id)
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member_id))
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_static_str(RANGE)))
            .with_assignments(assignments);
        let synced = coordinator.send_within(request, join_timeout).await?;
        check("SyncGroup", synced.error_code, None)?;
        let assignment = decode_assignment(&synced.assignment)?;
        self.shared.rejoin.set(false);
        self.start_heartbeats(coordinator, generation);
        Ok(assignment)
    }

    /// A connection of the member's own to the group's coordinator (see the module docs).
    async fn coordinator(&self) -> Result<Rc<Connection>, Error> {
        if let Some(connection) = self.state.borrow().coordinator.clone() {
            return Ok(connection);
        }
        let (_, address) = self.client.find_coordinator(&self.config.group_id).await?;
        let config = self.client.config();
        let connection = Connection::connect(&address, &config.client_id, config.request_timeout).await?;
        self.state.borrow_mut().coordinator = Some(Rc::clone(&connection));
        Ok(connection)
    }

    fn start_heartbeats(&self, coordinator: Rc<Connection>, generation: i32) {
        let shared = Rc::downgrade(&self.shared);
        let epoch = self.shared.epoch.get();
        let request = HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.config.group_id.clone())))
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(self.member_id()));
        let interval = self.config.heartbeat_interval;
        glommio::spawn_local(heartbeat_loop(shared, epoch, coordinator, request, interval)).detach();
    }

    /// The group's committed offsets of `partitions` (absent: none committed).
    pub async fn committed(&self, partitions: &Assignment) -> Result<BTreeMap<(String, i32), i64>, Error> {
        let coordinator = self.coordinator().await?;
        self.client.committed_offsets(&coordinator, &self.config.group_id, Some(partitions)).await
    }

    /// Commits `offsets` (topic, partition, next offset to read) under this generation. An
    /// answer that the group moved on (a rebalance, an unknown member) marks the member for a
    /// rejoin and is returned as the error.
    pub async fn commit(&self, offsets: &[(String, i32, i64)]) -> Result<(), Error> {
        if offsets.is_empty() {
            return Ok(());
        }
        let coordinator = self.coordinator().await?;
        let request = commit_request(&self.config.group_id, self.generation(), &self.member_id(), offsets);
        let response = coordinator.send(request).await?;
        for topic in &response.topics {
            for partition in &topic.partitions {
                if group_moved_on(partition.error_code) {
                    self.shared.rejoin.set(true);
                }
                check("OffsetCommit", partition.error_code, None)?;
            }
        }
        Ok(())
    }

    /// Leaves the group (its partitions go to the others at once) and stops heartbeating.
    pub async fn leave(&self) -> Result<(), Error> {
        self.shared.epoch.set(self.shared.epoch.get() + 1);
        self.shared.rejoin.set(true);
        let member_id = self.member_id();
        let Some(coordinator) = self.state.borrow().coordinator.clone() else { return Ok(()) };
        if member_id.is_empty() {
            return Ok(());
        }
        let version = coordinator.version::<LeaveGroupRequest>()?;
        let group_id = GroupId(StrBytes::from_string(self.config.group_id.clone()));
        let request = if version >= 3 {
            LeaveGroupRequest::default()
                .with_group_id(group_id)
                .with_members(vec![MemberIdentity::default().with_member_id(StrBytes::from_string(member_id))])
        } else {
            LeaveGroupRequest::default().with_group_id(group_id).with_member_id(StrBytes::from_string(member_id))
        };
        let response = coordinator.send_at(request, version).await?;
        check("LeaveGroup", response.error_code, None)?;
        for member in &response.members {
            check("LeaveGroup", member.error_code, None)?;
        }
        self.state.borrow_mut().member_id.clear();
        Ok(())
    }
}

/// Heartbeats every `interval` until the member rejoins or leaves (its epoch moves) or the
/// coordinator answers that the group moved on, which marks the member for a rejoin.
async fn heartbeat_loop(
    shared: Weak<Shared>,
    epoch: u64,
    coordinator: Rc<Connection>,
    request: HeartbeatRequest,
    interval: Duration,
) {
    loop {
        glommio::timer::sleep(interval).await;
        let current = |shared: &Weak<Shared>| shared.upgrade().filter(|s| s.epoch.get() == epoch);
        if current(&shared).is_none() {
            return;
        }
        let answer = coordinator.send(request.clone()).await;
        let Some(shared) = current(&shared) else { return };
        match answer {
            Ok(response) if group_moved_on(response.error_code) || coordinator_moved(response.error_code) => {
                shared.rejoin.set(true);
                return;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "heartbeat failed: rejoining");
                shared.rejoin.set(true);
                return;
            }
        }
    }
}

/// The answer of a group that rebalanced or no longer knows the member: join again.
pub fn group_moved_on(code: i16) -> bool {
    matches!(code, code::REBALANCE_IN_PROGRESS | code::ILLEGAL_GENERATION | code::UNKNOWN_MEMBER_ID)
}

fn coordinator_moved(code: i16) -> bool {
    matches!(code, code::COORDINATOR_LOAD_IN_PROGRESS | code::COORDINATOR_NOT_AVAILABLE | code::NOT_COORDINATOR)
}

/// Worth joining again: the coordinator moved or is loading, a rebalance started between
/// join and sync, or a connection failed.
fn retriable(error: &Error) -> bool {
    match error.code() {
        Some(code) => coordinator_moved(code) || group_moved_on(code),
        None => matches!(error, Error::Closed | Error::Timeout { .. } | Error::Io { .. }),
    }
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

/// Kafka's range assignment: for each topic, its partitions in order, cut into consecutive
/// ranges over the members subscribed to it in member id order; the first members get one
/// more when the count does not divide.
pub fn range_assign(
    subscriptions: &BTreeMap<String, Vec<String>>,
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Assignment> {
    let mut assignments: BTreeMap<String, Assignment> =
        subscriptions.keys().map(|member| (member.clone(), Assignment::new())).collect();
    for (topic, count) in partition_counts {
        let members: Vec<&String> = subscriptions.iter().filter(|(_, t)| t.contains(topic)).map(|(m, _)| m).collect();
        if members.is_empty() {
            continue;
        }
        let (each, extra) = (*count / members.len() as i32, *count % members.len() as i32);
        let mut next = 0;
        for (index, member) in members.into_iter().enumerate() {
            let share = each + i32::from((index as i32) < extra);
            if share > 0 {
                let partitions: Vec<i32> = (next..next + share).collect();
                assignments.entry(member.clone()).or_default().insert(topic.clone(), partitions);
            }
            next += share;
        }
    }
    assignments
}

/// The consumer protocol's data formats: an i16 version, then the body at that version.
fn encode_versioned<T: Encodable>(value: &T, version: i16, what: &'static str) -> Result<Bytes, Error> {
    let mut out = BytesMut::new();
    out.put_i16(version);
    value.encode(&mut out, version).map_err(|e| Error::Encode { api: what, reason: e.to_string() })?;
    Ok(out.freeze())
}

fn decode_versioned<T: Decodable>(bytes: &Bytes, max_version: i16, what: &'static str) -> Result<T, Error> {
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return Err(Error::Invalid(format!("{what}: {} bytes", buf.remaining())));
    }
    let version = buf.get_i16();
    // A newer version starts with the fields of the ones before it.
    T::decode(&mut buf, version.clamp(0, max_version)).map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

fn encode_subscription(topics: &[String]) -> Result<Bytes, Error> {
    let subscription = ConsumerProtocolSubscription::default()
        .with_topics(topics.iter().map(|t| StrBytes::from_string(t.clone())).collect());
    encode_versioned(&subscription, 0, "ConsumerProtocolSubscription")
}

fn decode_subscription(bytes: &Bytes) -> Result<Vec<String>, Error> {
    let subscription: ConsumerProtocolSubscription = decode_versioned(bytes, 3, "ConsumerProtocolSubscription")?;
    Ok(subscription.topics.iter().map(ToString::to_string).collect())
}

fn encode_assignment(assignment: &Assignment) -> Result<Bytes, Error> {
    let assigned = assignment
        .iter()
        .map(|(topic, partitions)| {
            AssignedTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                .with_partitions(partitions.clone())
        })
        .collect();
    encode_versioned(
        &ConsumerProtocolAssignment::default().with_assigned_partitions(assigned),
        0,
        "ConsumerProtocolAssignment",
    )
}

fn decode_assignment(bytes: &Bytes) -> Result<Assignment, Error> {
    if bytes.is_empty() {
        // No partitions for this member (more members than partitions).
        return Ok(Assignment::new());
    }
    let assignment: ConsumerProtocolAssignment = decode_versioned(bytes, 3, "ConsumerProtocolAssignment")?;
    Ok(assignment.assigned_partitions.iter().map(|t| (t.topic.0.to_string(), t.partitions.clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriptions(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        entries.iter().map(|(m, t)| (m.to_string(), t.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn range_gives_each_member_consecutive_partitions_the_first_ones_one_more() {
        let subs = subscriptions(&[("b", &["t", "u"]), ("a", &["t"]), ("c", &["t", "u"])]);
        let counts: BTreeMap<String, i32> = [("t".to_string(), 8), ("u".to_string(), 3)].into();
        let out = range_assign(&subs, &counts);
        assert_eq!(out["a"], Assignment::from([("t".into(), vec![0, 1, 2])]));
        assert_eq!(out["b"], Assignment::from([("t".into(), vec![3, 4, 5]), ("u".into(), vec![0, 1])]));
        assert_eq!(out["c"], Assignment::from([("t".into(), vec![6, 7]), ("u".into(), vec![2])]));
        // More members than partitions: the last get nothing, but are named.
        let out = range_assign(&subs, &[("u".to_string(), 1)].into());
        assert_eq!(out["b"], Assignment::from([("u".into(), vec![0])]));
        assert!(out["a"].is_empty() && out["c"].is_empty());
    }

    #[test]
    fn subscriptions_and_assignments_round_trip_through_their_wire_form() {
        let topics = vec!["orders".to_string(), "payments".to_string()];
        assert_eq!(decode_subscription(&encode_subscription(&topics).unwrap()).unwrap(), topics);
        let assignment = Assignment::from([("orders".into(), vec![0, 2]), ("payments".into(), vec![1])]);
        assert_eq!(decode_assignment(&encode_assignment(&assignment).unwrap()).unwrap(), assignment);
        assert!(decode_assignment(&Bytes::new()).unwrap().is_empty());
        assert!(decode_subscription(&Bytes::from_static(&[0])).is_err());
    }
}
