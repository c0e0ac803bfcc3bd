//! Consumer-group administration: list (every broker), describe (members, assignments, and
//! per partition the committed offset, the log end offset and the lag), seek (commit new
//! offsets for a group without members), delete. Group requests go to the group's
//! coordinator (FindCoordinator); classic groups are described with DescribeGroups,
//! consumer-protocol (KIP-848) groups with ConsumerGroupDescribe.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest,
    FindCoordinatorRequest, GroupId, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::admin::LATEST;
use crate::{Client, Connection, Error, check};

/// A group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    pub state: String,
    /// "classic" or "consumer" (empty from brokers before KIP-848).
    pub group_type: String,
}

#[derive(Debug, Clone, Default)]
pub struct GroupMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Partitions by topic.
    pub assignment: BTreeMap<String, Vec<i32>>,
}

/// One partition's position for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// -1: nothing committed.
    pub committed: i64,
    pub log_end: Option<i64>,
    /// Log end minus committed (the whole log end when nothing is committed).
    pub lag: Option<i64>,
    /// The member owning the partition now, if any.
    pub member: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: String,
    pub group_type: String,
    pub protocol: String,
    pub members: Vec<GroupMember>,
    pub partitions: Vec<PartitionLag>,
}

fn group_id(id: &str) -> GroupId {
    GroupId(StrBytes::from_string(id.to_string()))
}

impl Client {
    /// The group's coordinator.
    pub async fn coordinator(&self, group: &str) -> Result<Rc<Connection>, Error> {
        let (node, _) = self.find_coordinator(group).await?;
        self.broker(node).await
    }

    /// FindCoordinator: the coordinator's node id and HOST:PORT.
    pub(crate) async fn find_coordinator(&self, group: &str) -> Result<(i32, String), Error> {
        let any = self.any_broker().await?;
        let version = any.version::<FindCoordinatorRequest>()?;
        let mut request = FindCoordinatorRequest::default().with_key_type(0);
        if version >= 4 {
            request = request.with_coordinator_keys(vec![StrBytes::from_string(group.to_string())]);
        } else {
            request = request.with_key(StrBytes::from_string(group.to_string()));
        }
        let response = any.send_at(request, version).await?;
        if version >= 4 {
            let coordinator = response
                .coordinators
                .first()
                .ok_or_else(|| Error::Invalid("FindCoordinator: no coordinator in the answer".into()))?;
            check("FindCoordinator", coordinator.error_code, coordinator.error_message.as_ref())?;
            Ok((coordinator.node_id.0, format!("{}:{}", coordinator.host, coordinator.port)))
        } else {
            check("FindCoordinator", response.error_code, response.error_message.as_ref())?;
            Ok((response.node_id.0, format!("{}:{}", response.host, response.port)))
        }
    }

    /// Every group of every broker.
    pub async fn list_groups(&self) -> Result<Vec<ListedGroup>, Error> {
        let brokers: Vec<i32> = self.metadata(Some(&[])).await?.brokers.keys().copied().collect();
        let mut groups = Vec::new();
        for node in brokers {
            let response = self.broker(node).await?.send(ListGroupsRequest::default()).await?;
            check("ListGroups", response.error_code, None)?;
            groups.extend(response.groups.iter().map(|g| ListedGroup {
                group_id: g.group_id.0.to_string(),
                protocol_type: g.protocol_type.to_string(),
                state: g.group_state.to_string(),
                group_type: g.group_type.to_string(),
            }));
        }
        groups.sort();
        groups.dedup();
        Ok(groups)
    }

    /// Members, assignments, and each committed partition's offset, log end and lag.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, Error> {
        let coordinator = self.coordinator(group).await?;
        let mut description = GroupDescription { group_id: group.to_string(), ..Default::default() };
        let described = coordinator.send(DescribeGroupsRequest::default().with_groups(vec![group_id(group)])).await?;
        let classic = described
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| Error::Invalid("DescribeGroups: no group in the answer".into()))?;
        // A consumer-protocol group answers DescribeGroups with GROUP_ID_NOT_FOUND (Kafka) or
        // as "Dead"/empty; ask ConsumerGroupDescribe then.
        let consumer = if coordinator.version::<ConsumerGroupDescribeRequest>().is_ok()
            && (classic.error_code != 0 || classic.group_state.as_str() == "Dead" || classic.protocol_type.is_empty())
        {
            let response =
                coordinator.send(ConsumerGroupDescribeRequest::default().with_group_ids(vec![group_id(group)])).await?;
            response.groups.into_iter().next().filter(|g| g.error_code == 0 && !g.members.is_empty())
        } else {
            None
        };
        if let Some(consumer) = consumer {
            description.state = consumer.group_state.to_string();
            description.group_type = "consumer".into();
            description.protocol = consumer.assignor_name.to_string();
            description.members = consumer
                .members
                .iter()
                .map(|m| GroupMember {
                    member_id: m.member_id.to_string(),
                    instance_id: m.instance_id.as_ref().map(ToString::to_string),
                    client_id: m.client_id.to_string(),
                    client_host: m.client_host.to_string(),
                    assignment: m
                        .assignment
                        .topic_partitions
                        .iter()
                        .map(|t| (t.topic_name.0.to_string(), t.partitions.clone()))
                        .collect(),
                })
                .collect();
        } else {
            check("DescribeGroups", classic.error_code, classic.error_message.as_ref())?;
            description.state = classic.group_state.to_string();
            description.group_type = "classic".into();
            description.protocol = classic.protocol_data.to_string();
            let consumer_protocol = classic.protocol_type.as_str() == "consumer";
            description.members = classic
                .members
                .iter()
                .map(|m| GroupMember {
                    member_id: m.member_id.to_string(),
                    instance_id: m.group_instance_id.as_ref().map(ToString::to_string),
                    client_id: m.client_id.to_string(),
                    client_host: m.client_host.to_string(),
                    assignment: if consumer_protocol {
                        decode_assignment(&m.member_assignment)
                    } else {
                        BTreeMap::new()
                    },
                })
                .collect();
        }
        let committed = self.committed_offsets(&coordinator, group, None).await?;
        let owners: BTreeMap<(String, i32), String> = description
            .members
            .iter()
            .flat_map(|m| {
                m.assignment
                    .iter()
                    .flat_map(move |(t, ps)| ps.iter().map(move |p| ((t.clone(), *p), m.member_id.clone())))
            })
            .collect();
        let mut keys: Vec<(String, i32)> = committed.keys().cloned().chain(owners.keys().cloned()).collect();
        keys.sort();
        keys.dedup();
        let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in &keys {
            by_topic.entry(topic.clone()).or_default().push(*partition);
        }
        let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (topic, partitions) in &by_topic {
            if let Ok(offsets) = self.list_offsets(topic, partitions, LATEST).await {
                for (partition, offset) in offsets {
                    if let Ok(offset) = offset {
                        ends.insert((topic.clone(), partition), offset);
                    }
                }
            }
        }
        description.partitions = keys
            .into_iter()
            .map(|key| {
                let committed = committed.get(&key).copied().unwrap_or(-1);
                let log_end = ends.get(&key).copied();
                PartitionLag {
                    lag: log_end.map(|end| (end - committed.max(0)).max(0)),
                    member: owners.get(&key).cloned(),
                    topic: key.0,
                    partition: key.1,
                    committed,
                    log_end,
                }
            })
            .collect();
        Ok(description)
    }

    /// The committed offsets of a group: of `wanted` partitions, or of every partition.
    pub(crate) async fn committed_offsets(
        &self,
        coordinator: &Connection,
        group: &str,
        wanted: Option<&BTreeMap<String, Vec<i32>>>,
    ) -> Result<BTreeMap<(String, i32), i64>, Error> {
        let version = coordinator.version::<OffsetFetchRequest>()?;
        let name = |topic: &String| TopicName(StrBytes::from_string(topic.clone()));
        let request = if version >= 8 {
            let topics = wanted.map(|w| {
                w.iter()
                    .map(|(t, p)| {
                        OffsetFetchRequestTopics::default().with_name(name(t)).with_partition_indexes(p.clone())
                    })
                    .collect()
            });
            OffsetFetchRequest::default().with_groups(vec![
                OffsetFetchRequestGroup::default().with_group_id(group_id(group)).with_topics(topics),
            ])
        } else {
            let topics = wanted.map(|w| {
                w.iter()
                    .map(|(t, p)| {
                        OffsetFetchRequestTopic::default().with_name(name(t)).with_partition_indexes(p.clone())
                    })
                    .collect()
            });
            OffsetFetchRequest::default().with_group_id(group_id(group)).with_topics(topics)
        };
        let response = coordinator.send_at(request, version).await?;
        let mut committed = BTreeMap::new();
        let mut take = |topic: &TopicName, partition: i32, offset: i64, error_code: i16| {
            check("OffsetFetch", error_code, None)?;
            if offset >= 0 {
                committed.insert((topic.0.to_string(), partition), offset);
            }
            Ok::<(), Error>(())
        };
        if version >= 8 {
            for g in &response.groups {
                check("OffsetFetch", g.error_code, None)?;
                for t in &g.topics {
                    for p in &t.partitions {
                        take(&t.name, p.partition_index, p.committed_offset, p.error_code)?;
                    }
                }
            }
        } else {
            check("OffsetFetch", response.error_code, None)?;
            for t in &response.topics {
                for p in &t.partitions {
                    take(&t.name, p.partition_index, p.committed_offset, p.error_code)?;
                }
            }
        }
        Ok(committed)
    }

    /// Commits `offsets` for a group that has no members (as `kafka-consumer-groups
    /// --reset-offsets` does); a group with members refuses (UNKNOWN_MEMBER_ID or
    /// REBALANCE_IN_PROGRESS, by the broker's rules).
    pub async fn seek_group(&self, group: &str, offsets: &[(String, i32, i64)]) -> Result<(), Error> {
        let coordinator = self.coordinator(group).await?;
        let request = commit_request(group, -1, "", offsets);
        let response = coordinator.send(request).await?;
        for topic in &response.topics {
            for partition in &topic.partitions {
                check("OffsetCommit", partition.error_code, None)?;
            }
        }
        Ok(())
    }

    /// Deletes a group (it must have no members).
    pub async fn delete_group(&self, group: &str) -> Result<(), Error> {
        let coordinator = self.coordinator(group).await?;
        let response =
            coordinator.send(DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)])).await?;
        for result in &response.results {
            check("DeleteGroups", result.error_code, None)?;
        }
        Ok(())
    }
}

/// An OffsetCommit of `offsets` (topic, partition, next offset) for `group`, as member
/// `member_id` of `generation` (-1 and "" for a group without members).
pub(crate) fn commit_request(
    group: &str,
    generation: i32,
    member_id: &str,
    offsets: &[(String, i32, i64)],
) -> OffsetCommitRequest {
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for (topic, partition, offset) in offsets {
        by_topic.entry(topic).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1),
        );
    }
    OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(StrBytes::from_string(member_id.to_string()))
        .with_retention_time_ms(-1)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_partitions(partitions)
                })
                .collect(),
        )
}

/// A classic consumer's assignment (ConsumerProtocolAssignment: i16 version, then the body).
fn decode_assignment(bytes: &Bytes) -> BTreeMap<String, Vec<i32>> {
    let mut buf = bytes.clone();
    if buf.len() < 2 {
        return BTreeMap::new();
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = bytes::Buf::get_i16(&mut buf);
    match ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3)) {
        Ok(assignment) => {
            assignment.assigned_partitions.iter().map(|t| (t.topic.0.to_string(), t.partitions.clone())).collect()
        }
        Err(_) => BTreeMap::new(),
    }
}
