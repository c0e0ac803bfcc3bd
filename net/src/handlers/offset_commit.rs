//! OffsetCommit (key 8), v2–v9: checked against the group (member, generation; a commit from
//! outside the group only while it has no members), then made durable in the group's
//! `__consumer_offsets` partition before it is acknowledged. Partitions of unknown topics get
//! UNKNOWN_TOPIC_OR_PARTITION, oversized metadata OFFSET_METADATA_TOO_LARGE.

use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use crate::broker::{GroupAnswer, GroupCall, ShardBroker, error_code as broker_code};
use crate::group::OffsetCommit;
use crate::group::classic::{MemberRef, error_code};

pub async fn handle(broker: &ShardBroker, request: OffsetCommitRequest, _version: i16) -> OffsetCommitResponse {
    let group_id = request.group_id.0.to_string();
    let topics = broker.registry.snapshot();
    // Per partition: Ok(index into `commits`) or an error code decided here.
    let mut commits = Vec::new();
    let mut plan: Vec<(usize, i32, Result<usize, i16>)> = Vec::new();
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let name = topic.name.0.to_string();
        let known = topics.get(&name).map(|t| t.partitions);
        for partition in &topic.partitions {
            let index = partition.partition_index;
            if !known.is_some_and(|count| (0..count).contains(&index)) {
                plan.push((topic_index, index, Err(broker_code::UNKNOWN_TOPIC_OR_PARTITION)));
                continue;
            }
            plan.push((topic_index, index, Ok(commits.len())));
            commits.push(OffsetCommit {
                topic: name.clone(),
                partition: index,
                offset: partition.committed_offset,
                leader_epoch: partition.committed_leader_epoch,
                metadata: partition.committed_metadata.as_ref().map(|m| m.to_string()),
            });
        }
    }
    let who = MemberRef {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        generation_id: request.generation_id_or_member_epoch,
    };
    let codes: Result<Vec<i16>, i16> = if commits.is_empty() {
        Ok(Vec::new())
    } else {
        let partition = broker.group_partition(&group_id);
        let call = GroupCall::Commit { group_id: group_id.clone(), partition, who, commits };
        match broker.group_call(&group_id, call).await {
            Ok(GroupAnswer::Committed(result)) => result,
            _ => Err(error_code::COORDINATOR_NOT_AVAILABLE),
        }
    };
    let mut responses: Vec<OffsetCommitResponseTopic> =
        request.topics.iter().map(|t| OffsetCommitResponseTopic::default().with_name(t.name.clone())).collect();
    for (topic_index, partition, outcome) in plan {
        let code = match outcome {
            Err(code) => code,
            Ok(index) => match &codes {
                Ok(codes) => codes.get(index).copied().unwrap_or(error_code::NONE),
                Err(code) => *code,
            },
        };
        responses[topic_index]
            .partitions
            .push(OffsetCommitResponsePartition::default().with_partition_index(partition).with_error_code(code));
    }
    OffsetCommitResponse::default().with_topics(responses)
}
