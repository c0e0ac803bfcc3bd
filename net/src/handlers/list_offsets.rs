//! ListOffsets (key 2), v1–v8: earliest (-2: the log start offset), latest (-1: the high
//! watermark) and by timestamp (the first batch whose max timestamp is at or after it; its base
//! offset is returned — narrowing to the exact record inside the batch is still to do).
//! Max timestamp (-3, v7+) is answered with INVALID_REQUEST for now.
//!
//! Runs on the connection's shard; offsets come from each partition's owner.

use corelog_engine::log::TopicPartition;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::broker::{ShardBroker, ShardRequest, ShardResponse, error_code};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

pub async fn handle(broker: &ShardBroker, request: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let mut topics = Vec::new();
    for topic in &request.topics {
        let mut partitions = Vec::new();
        for wanted in &topic.partitions {
            let partition = TopicPartition::new(topic.name.0.to_string(), wanted.partition_index);
            let timestamp = (wanted.timestamp >= 0).then_some(wanted.timestamp);
            let mut response = ListOffsetsPartitionResponse::default().with_partition_index(wanted.partition_index);
            let result = if wanted.timestamp < EARLIEST {
                Err(error_code::INVALID_REQUEST)
            } else {
                match broker
                    .partition_call(&partition, ShardRequest::Offsets { partition: partition.clone(), timestamp })
                    .await
                {
                    Ok(ShardResponse::Offsets(result)) => result,
                    Ok(_) => Err(error_code::KAFKA_STORAGE_ERROR),
                    Err(code) => Err(code),
                }
            };
            response = match result {
                Err(code) => response.with_error_code(code),
                Ok(reply) => {
                    let (offset, found_timestamp) = match wanted.timestamp {
                        LATEST => (reply.offsets.high_watermark, -1),
                        EARLIEST => (reply.offsets.log_start_offset, -1),
                        timestamp => match reply.offset_for_timestamp {
                            Some(offset) => (offset, timestamp),
                            None => (-1, -1),
                        },
                    };
                    let response = response.with_offset(offset).with_timestamp(found_timestamp);
                    if version >= 4 { response.with_leader_epoch(0) } else { response }
                }
            };
            partitions.push(response);
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(topic.name.clone()).with_partitions(partitions));
    }
    ListOffsetsResponse::default().with_topics(topics)
}
