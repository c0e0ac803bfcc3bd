//! DeleteRecords (key 21), v0–v2: moves each partition's log start offset forward (-1: to the
//! high watermark) on its owner shard, durably (a checkpoint file is synced before the answer),
//! and deletes the segments wholly below it. Offsets beyond the high watermark get
//! OFFSET_OUT_OF_RANGE.

use corelog_engine::log::TopicPartition;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::broker::{ShardBroker, ShardRequest, ShardResponse, error_code};

pub async fn handle(broker: &ShardBroker, request: DeleteRecordsRequest, _version: i16) -> DeleteRecordsResponse {
    let mut topics = Vec::new();
    for topic in &request.topics {
        let mut partitions = Vec::new();
        for wanted in &topic.partitions {
            let partition = TopicPartition::new(topic.name.0.to_string(), wanted.partition_index);
            let request = ShardRequest::DeleteRecords { partition: partition.clone(), offset: wanted.offset };
            let result = match broker.partition_call(&partition, request).await {
                Ok(ShardResponse::RecordsDeleted(result)) => result,
                Ok(_) => Err(error_code::KAFKA_STORAGE_ERROR),
                Err(code) => Err(code),
            };
            let response = DeleteRecordsPartitionResult::default().with_partition_index(wanted.partition_index);
            partitions.push(match result {
                Ok(low_watermark) => response.with_low_watermark(low_watermark),
                Err(code) => response.with_error_code(code).with_low_watermark(-1),
            });
        }
        topics.push(DeleteRecordsTopicResult::default().with_name(topic.name.clone()).with_partitions(partitions));
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
