//! OffsetDelete (key 47), v0: removes committed offsets of a group that is not consuming
//! (GROUP_SUBSCRIBED_TO_TOPIC while it has members).

use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use crate::broker::{GroupAnswer, GroupCall, ShardBroker};
use crate::group::classic::error_code;

pub async fn handle(broker: &ShardBroker, request: OffsetDeleteRequest, _version: i16) -> OffsetDeleteResponse {
    let group_id = request.group_id.0.to_string();
    let targets: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), p.partition_index)))
        .collect();
    let partition = broker.group_partition(&group_id);
    let call = GroupCall::DeleteOffsets { group_id: group_id.clone(), partition, targets };
    let result = match broker.group_call(&group_id, call).await {
        Ok(GroupAnswer::Deleted(result)) => result,
        Ok(_) => Err(error_code::COORDINATOR_NOT_AVAILABLE),
        Err(code) => Err(code),
    };
    let (group_code, partition_code) = match result {
        Ok(()) => (error_code::NONE, error_code::NONE),
        Err(error_code::GROUP_SUBSCRIBED_TO_TOPIC) => (error_code::NONE, error_code::GROUP_SUBSCRIBED_TO_TOPIC),
        Err(code) => (code, error_code::NONE),
    };
    if group_code != error_code::NONE {
        return OffsetDeleteResponse::default().with_error_code(group_code);
    }
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(partition_code)
                })
                .collect();
            OffsetDeleteResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
