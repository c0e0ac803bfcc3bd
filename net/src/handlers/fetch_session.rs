//! Incremental fetch sessions (KIP-227), Fetch v7+. A consumer that opens a session sends the
//! whole partition list once; later requests carry only the partitions whose fetch position
//! changed (and the ones to forget), and responses only the partitions with something new:
//! records, a moved high watermark, last stable offset or log start offset, or an error.
//!
//! The sessions live on the shard that accepted the connection (a client that reconnects to
//! another shard gets FETCH_SESSION_ID_NOT_FOUND and starts a new session with a full fetch,
//! as after any broker's eviction). At most `SESSIONS_MAX` per shard; when full, the least
//! recently used one idle for `EVICTABLE_AFTER` makes room, or the new fetch runs without a
//! session (session id 0, which clients handle by sending full requests).
//!
//! Pure bookkeeping: the fetch handler asks [`FetchSessions::begin`] which partitions to read,
//! reads them, and filters its response through [`FetchSessions::finish`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{FetchRequest, TopicName};

use crate::broker::error_code;

/// `max.incremental.fetch.session.cache.slots`, per shard.
pub const SESSIONS_MAX: usize = 1000;
/// `min.incremental.fetch.session.eviction.ms`.
const EVICTABLE_AFTER: Duration = Duration::from_secs(120);
/// Session epochs: -1 ends a session (and fetches without one), 0 starts one.
const FINAL_EPOCH: i32 = -1;
const INITIAL_EPOCH: i32 = 0;

/// One partition of a fetch: as requested, or as a session remembers it.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchTarget {
    pub topic: TopicName,
    pub topic_id: uuid::Uuid,
    pub partition: i32,
    pub fetch_offset: i64,
    pub max_bytes: i32,
}

impl FetchTarget {
    fn same_partition(&self, other: &FetchTarget, by_id: bool) -> bool {
        self.partition == other.partition
            && if by_id { self.topic_id == other.topic_id } else { self.topic == other.topic }
    }
}

/// What a partition's last response in a session said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub error_code: i16,
}

struct Session {
    /// The epoch the next request must carry.
    next_epoch: i32,
    partitions: Vec<(FetchTarget, Option<PartitionState>)>,
    /// Topics named by id (v13+) or by name.
    by_id: bool,
    last_used: Instant,
}

/// How a fetch request relates to sessions.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Full request and response, no session (v6 and below, epoch -1, or no room).
    Sessionless,
    /// Full request and response; the session `id` now holds the request's partitions.
    Opened { id: i32 },
    /// The session's partitions are fetched; the response holds only what changed.
    Incremental { id: i32 },
    /// The request is refused with this top-level error (no partitions, session id 0).
    Refused { error_code: i16 },
}

impl Plan {
    /// The session id the response carries.
    pub fn response_session_id(&self) -> i32 {
        match self {
            Plan::Opened { id } | Plan::Incremental { id } => *id,
            Plan::Sessionless | Plan::Refused { .. } => 0,
        }
    }
}

/// The fetch sessions of one shard.
#[derive(Default)]
pub struct FetchSessions {
    sessions: HashMap<i32, Session>,
    next_id: u32,
}

/// The partitions a request names, in request order.
pub fn requested(request: &FetchRequest) -> Vec<FetchTarget> {
    request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|p| FetchTarget {
                topic: topic.topic.clone(),
                topic_id: topic.topic_id,
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
            })
        })
        .collect()
}

impl FetchSessions {
    /// Decides how `request` uses sessions and returns the partitions to read, in order.
    pub fn begin(&mut self, request: &FetchRequest, version: i16, now: Instant) -> (Plan, Vec<FetchTarget>) {
        let targets = requested(request);
        if version < 7 {
            return (Plan::Sessionless, targets);
        }
        let by_id = version >= 13;
        let (id, epoch) = (request.session_id, request.session_epoch);
        match epoch {
            FINAL_EPOCH => {
                self.sessions.remove(&id);
                (Plan::Sessionless, targets)
            }
            INITIAL_EPOCH => {
                self.sessions.remove(&id);
                match self.open(by_id, &targets, now) {
                    Some(id) => (Plan::Opened { id }, targets),
                    None => (Plan::Sessionless, targets),
                }
            }
            _ => {
                let Some(session) = self.sessions.get_mut(&id) else {
                    return (Plan::Refused { error_code: error_code::FETCH_SESSION_ID_NOT_FOUND }, Vec::new());
                };
                if session.next_epoch != epoch || session.by_id != by_id {
                    return (Plan::Refused { error_code: error_code::INVALID_FETCH_SESSION_EPOCH }, Vec::new());
                }
                session.next_epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
                session.last_used = now;
                for target in targets {
                    match session.partitions.iter_mut().find(|(known, _)| known.same_partition(&target, by_id)) {
                        Some((known, _)) => *known = target,
                        None => session.partitions.push((target, None)),
                    }
                }
                for forgotten in &request.forgotten_topics_data {
                    session.partitions.retain(|(known, _)| {
                        let topic =
                            if by_id { known.topic_id == forgotten.topic_id } else { known.topic == forgotten.topic };
                        !(topic && forgotten.partitions.contains(&known.partition))
                    });
                }
                let targets = session.partitions.iter().map(|(target, _)| target.clone()).collect();
                (Plan::Incremental { id }, targets)
            }
        }
    }

    /// Records what the response says of each partition read (`states`, in the order `begin`
    /// returned them; None for a partition not read this time) and returns which of them the
    /// response carries: all of them unless the fetch is incremental, where only those with
    /// records or a changed state.
    pub fn finish(&mut self, plan: &Plan, states: &[(Option<PartitionState>, bool)]) -> Vec<bool> {
        let session = match plan {
            Plan::Opened { id } | Plan::Incremental { id } => self.sessions.get_mut(id),
            Plan::Sessionless | Plan::Refused { .. } => None,
        };
        let Some(session) = session else {
            return vec![true; states.len()];
        };
        let incremental = matches!(plan, Plan::Incremental { .. });
        let mut included = Vec::with_capacity(states.len());
        for ((_, last), &(state, has_records)) in session.partitions.iter_mut().zip(states) {
            let changed = state.is_some() && state != *last;
            included.push(!incremental || has_records || changed);
            if state.is_some() {
                *last = state;
            }
        }
        included
    }

    fn open(&mut self, by_id: bool, targets: &[FetchTarget], now: Instant) -> Option<i32> {
        if self.sessions.len() >= SESSIONS_MAX {
            let (&oldest, session) = self.sessions.iter().min_by_key(|(_, s)| s.last_used)?;
            if now.duration_since(session.last_used) < EVICTABLE_AFTER {
                return None;
            }
            self.sessions.remove(&oldest);
        }
        let id = self.new_id();
        tracing::debug!(
            session_id = id,
            partitions = targets.len(),
            sessions = self.sessions.len() + 1,
            "fetch session opened"
        );
        let partitions = targets.iter().map(|t| (t.clone(), None)).collect();
        self.sessions.insert(id, Session { next_epoch: 1, partitions, by_id, last_used: now });
        Some(id)
    }

    /// A positive id no session has: a counter scrambled so ids are not guessable in order.
    fn new_id(&mut self) -> i32 {
        loop {
            self.next_id = self.next_id.wrapping_add(0x9E37_79B9);
            let id = (self.next_id.rotate_left(13) & 0x7FFF_FFFF) as i32;
            if id != 0 && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
    use kafka_protocol::protocol::StrBytes;

    fn request(id: i32, epoch: i32, partitions: &[(i32, i64)], forgotten: &[i32]) -> FetchRequest {
        let topic = TopicName(StrBytes::from_static_str("t"));
        let wanted = partitions
            .iter()
            .map(|&(p, offset)| FetchPartition::default().with_partition(p).with_fetch_offset(offset))
            .collect();
        let mut request = FetchRequest::default().with_session_id(id).with_session_epoch(epoch);
        if !partitions.is_empty() {
            request.topics = vec![FetchTopic::default().with_topic(topic.clone()).with_partitions(wanted)];
        }
        if !forgotten.is_empty() {
            request.forgotten_topics_data =
                vec![ForgottenTopic::default().with_topic(topic).with_partitions(forgotten.to_vec())];
        }
        request
    }

    fn state(high_watermark: i64) -> PartitionState {
        PartitionState { high_watermark, last_stable_offset: high_watermark, log_start_offset: 0, error_code: 0 }
    }

    #[test]
    fn a_session_keeps_partitions_and_answers_only_what_changed() {
        let mut sessions = FetchSessions::default();
        let now = Instant::now();
        let (plan, targets) = sessions.begin(&request(0, 0, &[(0, 0), (1, 0)], &[]), 12, now);
        let Plan::Opened { id } = plan else { panic!("{plan:?}") };
        assert_eq!(targets.len(), 2);
        assert_eq!(sessions.finish(&plan, &[(Some(state(5)), true), (Some(state(0)), false)]), [true, true]);

        // Partition 0 moved on; nothing new anywhere: an empty incremental response.
        let (plan, targets) = sessions.begin(&request(id, 1, &[(0, 5)], &[]), 12, now);
        assert_eq!(plan, Plan::Incremental { id });
        assert_eq!(targets.iter().map(|t| (t.partition, t.fetch_offset)).collect::<Vec<_>>(), [(0, 5), (1, 0)]);
        assert_eq!(sessions.finish(&plan, &[(Some(state(5)), false), (Some(state(0)), false)]), [false, false]);

        // New records on partition 1 only.
        let (plan, _) = sessions.begin(&request(id, 2, &[], &[]), 12, now);
        assert_eq!(sessions.finish(&plan, &[(Some(state(5)), false), (Some(state(3)), true)]), [false, true]);

        // Forgetting partition 1 leaves partition 0 alone in the session.
        let (plan, targets) = sessions.begin(&request(id, 3, &[], &[1]), 12, now);
        assert_eq!(plan, Plan::Incremental { id });
        assert_eq!(targets.len(), 1);

        // Out of step, unknown, then ended.
        let refused = sessions.begin(&request(id, 3, &[], &[]), 12, now).0;
        assert_eq!(refused, Plan::Refused { error_code: error_code::INVALID_FETCH_SESSION_EPOCH });
        let refused = sessions.begin(&request(id + 1, 1, &[], &[]), 12, now).0;
        assert_eq!(refused, Plan::Refused { error_code: error_code::FETCH_SESSION_ID_NOT_FOUND });
        assert_eq!(sessions.begin(&request(id, -1, &[(0, 5)], &[]), 12, now).0, Plan::Sessionless);
        assert!(sessions.is_empty());
    }

    #[test]
    fn old_versions_never_get_a_session_and_a_full_cache_evicts_only_idle_sessions() {
        let mut sessions = FetchSessions::default();
        let now = Instant::now();
        assert_eq!(sessions.begin(&request(0, 0, &[(0, 0)], &[]), 6, now).0, Plan::Sessionless);
        for _ in 0..SESSIONS_MAX {
            assert!(matches!(sessions.begin(&request(0, 0, &[(0, 0)], &[]), 12, now).0, Plan::Opened { .. }));
        }
        assert_eq!(sessions.begin(&request(0, 0, &[(0, 0)], &[]), 12, now).0, Plan::Sessionless, "no room");
        let later = now + EVICTABLE_AFTER;
        assert!(matches!(sessions.begin(&request(0, 0, &[(0, 0)], &[]), 12, later).0, Plan::Opened { .. }));
        assert_eq!(sessions.len(), SESSIONS_MAX);
    }
}
