//! OffsetForLeaderEpoch (key 23), v2–v4: the end offset of a leader epoch, which clients use
//! to detect log truncation after a leader change. A single broker has had one leader epoch,
//! 0, for every partition: epoch 0 ends at the log end offset; a client that knows a newer
//! epoch gets UNKNOWN_LEADER_EPOCH, an older current epoch FENCED_LEADER_EPOCH.
//!
//! Runs on the connection's shard; offsets come from each partition's owner.

use corelog_engine::log::TopicPartition;
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use crate::broker::{ShardBroker, ShardRequest, ShardResponse, TimeLookup, error_code};

/// Every partition's leader epoch on a single broker.
pub const LEADER_EPOCH: i32 = 0;

const FENCED_LEADER_EPOCH: i16 = 74;
const UNKNOWN_LEADER_EPOCH: i16 = 75;

pub async fn handle(
    broker: &ShardBroker,
    request: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for wanted in &topic.partitions {
            let answer = EpochEndOffset::default().with_partition(wanted.partition);
            // -1: the client does not know the current epoch and skips the fencing check.
            let fenced = match wanted.current_leader_epoch {
                epoch if epoch > LEADER_EPOCH => Some(UNKNOWN_LEADER_EPOCH),
                epoch if (0..LEADER_EPOCH).contains(&epoch) => Some(FENCED_LEADER_EPOCH),
                _ => None,
            };
            let partition = TopicPartition::new(topic.topic.0.to_string(), wanted.partition);
            let result = match fenced {
                Some(code) => Err(code),
                None => match broker
                    .partition_call(
                        &partition,
                        ShardRequest::Offsets { partition: partition.clone(), lookup: TimeLookup::None },
                    )
                    .await
                {
                    Ok(ShardResponse::Offsets(Ok(reply))) => Ok(reply.offsets.log_end_offset),
                    Ok(ShardResponse::Offsets(Err(code))) | Err(code) => Err(code),
                    Ok(_) => Err(error_code::KAFKA_STORAGE_ERROR),
                },
            };
            partitions.push(match result {
                // An epoch this log has never had (newer, or -1) has no end offset (Kafka: -1, -1).
                Ok(_) if wanted.leader_epoch != LEADER_EPOCH => answer.with_leader_epoch(-1).with_end_offset(-1),
                Ok(end_offset) => answer.with_leader_epoch(LEADER_EPOCH).with_end_offset(end_offset),
                Err(code) => answer.with_error_code(code).with_leader_epoch(-1).with_end_offset(-1),
            });
        }
        topics.push(OffsetForLeaderTopicResult::default().with_topic(topic.topic.clone()).with_partitions(partitions));
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
