//! OffsetFetch (key 9), v1–v9: committed offsets of one group (v1–v7) or several (v8+), for
//! the requested partitions or (topics null) every partition with a commit. A partition
//! without one answers offset -1 and empty metadata, as Kafka does.

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{GroupAnswer, GroupCall, ShardBroker};
use crate::group::classic::{Committed, error_code};

type Fetched = Result<Vec<(String, i32, Option<Committed>)>, i16>;

async fn fetch(
    broker: &ShardBroker,
    group_id: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
    member: Option<(String, i32)>,
) -> Fetched {
    let call = GroupCall::FetchOffsets { group_id: group_id.to_string(), wanted, member };
    match broker.group_call(group_id, call).await {
        Ok(GroupAnswer::Offsets(offsets)) => Ok(offsets),
        Ok(GroupAnswer::Code(code)) => Err(code),
        Ok(_) => Err(error_code::COORDINATOR_NOT_AVAILABLE),
        Err(code) => Err(code),
    }
}

/// (offset, leader epoch, metadata) as the response carries them.
fn fields(committed: Option<Committed>) -> (i64, i32, StrBytes) {
    match committed {
        Some(c) => (c.offset, c.leader_epoch, StrBytes::from_string(c.metadata)),
        None => (-1, -1, StrBytes::default()),
    }
}

pub async fn handle(broker: &ShardBroker, request: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for group in &request.groups {
            let wanted = group
                .topics
                .as_ref()
                .map(|topics| topics.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect());
            let response = OffsetFetchResponseGroup::default().with_group_id(group.group_id.clone());
            // v9: a consumer-protocol member names itself and its epoch.
            let member = group.member_id.as_ref().map(|m| (m.to_string(), group.member_epoch));
            groups.push(match fetch(broker, &group.group_id.0, wanted, member).await {
                Err(code) => response.with_error_code(code),
                Ok(offsets) => {
                    let mut topics: Vec<OffsetFetchResponseTopics> = Vec::new();
                    for (topic, partition, committed) in offsets {
                        let (offset, epoch, metadata) = fields(committed);
                        let entry = OffsetFetchResponsePartitions::default()
                            .with_partition_index(partition)
                            .with_committed_offset(offset)
                            .with_committed_leader_epoch(epoch)
                            .with_metadata(Some(metadata));
                        match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                            Some(t) => t.partitions.push(entry),
                            None => topics.push(
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(StrBytes::from_string(topic)))
                                    .with_partitions(vec![entry]),
                            ),
                        }
                    }
                    response.with_topics(topics)
                }
            });
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let group_id: &GroupId = &request.group_id;
    let wanted = request
        .topics
        .as_ref()
        .map(|topics| topics.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect());
    match fetch(broker, &group_id.0, wanted, None).await {
        Err(code) => {
            let response = OffsetFetchResponse::default();
            if version >= 2 { response.with_error_code(code) } else { response }
        }
        Ok(offsets) => {
            let mut topics: Vec<OffsetFetchResponseTopic> = Vec::new();
            for (topic, partition, committed) in offsets {
                let (offset, epoch, metadata) = fields(committed);
                let mut entry = OffsetFetchResponsePartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(offset)
                    .with_metadata(Some(metadata));
                if version >= 5 {
                    entry = entry.with_committed_leader_epoch(epoch);
                }
                match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                    Some(t) => t.partitions.push(entry),
                    None => topics.push(
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(StrBytes::from_string(topic)))
                            .with_partitions(vec![entry]),
                    ),
                }
            }
            OffsetFetchResponse::default().with_topics(topics)
        }
    }
}
