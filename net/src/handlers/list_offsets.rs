//! ListOffsets (key 2), v1–v8: earliest (-2, and -4 "earliest local": the log start offset),
//! latest (-1: the high watermark), max timestamp (-3, v7+: the first record with the largest
//! timestamp) and by timestamp (the first record at or after it, found through the time index
//! and then inside its batch). Other negative timestamps get INVALID_REQUEST.
//!
//! Runs on the connection's shard; offsets come from each partition's owner.

use corelog_engine::log::TopicPartition;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::broker::{ShardBroker, ShardRequest, ShardResponse, TimeLookup, error_code};
use crate::handlers::offset_for_leader_epoch::LEADER_EPOCH;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

pub async fn handle(broker: &ShardBroker, request: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let mut topics = Vec::new();
    for topic in &request.topics {
        let mut partitions = Vec::new();
        for wanted in &topic.partitions {
            let partition = TopicPartition::new(topic.name.0.to_string(), wanted.partition_index);
            let lookup = match wanted.timestamp {
                LATEST | EARLIEST => Some(TimeLookup::None),
                EARLIEST_LOCAL if version >= 8 => Some(TimeLookup::None),
                MAX_TIMESTAMP if version >= 7 => Some(TimeLookup::MaxTimestamp),
                timestamp if timestamp >= 0 => Some(TimeLookup::AtOrAfter(timestamp)),
                _ => None,
            };
            let mut response = ListOffsetsPartitionResponse::default().with_partition_index(wanted.partition_index);
            let result = match lookup {
                None => Err(error_code::INVALID_REQUEST),
                Some(lookup) => {
                    match broker
                        .partition_call(&partition, ShardRequest::Offsets { partition: partition.clone(), lookup })
                        .await
                    {
                        Ok(ShardResponse::Offsets(result)) => result,
                        Ok(_) => Err(error_code::KAFKA_STORAGE_ERROR),
                        Err(code) => Err(code),
                    }
                }
            };
            response = match result {
                Err(code) => response.with_error_code(code),
                Ok(reply) => {
                    let (offset, found_timestamp) = match wanted.timestamp {
                        LATEST => (reply.offsets.high_watermark, -1),
                        EARLIEST | EARLIEST_LOCAL => (reply.offsets.log_start_offset, -1),
                        _ => reply.found.map_or((-1, -1), |record| (record.offset, record.timestamp)),
                    };
                    let response = response.with_offset(offset).with_timestamp(found_timestamp);
                    if version >= 4 { response.with_leader_epoch(LEADER_EPOCH) } else { response }
                }
            };
            partitions.push(response);
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(topic.name.clone()).with_partitions(partitions));
    }
    ListOffsetsResponse::default().with_topics(topics)
}
