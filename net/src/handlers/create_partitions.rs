//! CreatePartitions (key 37), v0–v3: grows topics to a larger partition count (new
//! partitions are placed and opened on their owner shards like a new topic's). Shrinking,
//! manual assignments and unknown topics are refused with Kafka's codes.
//!
//! Runs on the connection's shard; the change happens on the controller shard.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{PartitionGrowth, ShardBroker};

pub async fn handle(broker: &ShardBroker, request: CreatePartitionsRequest, _version: i16) -> CreatePartitionsResponse {
    let growths = request
        .topics
        .iter()
        .map(|topic| PartitionGrowth {
            name: topic.name.0.to_string(),
            count: topic.count,
            has_assignments: topic.assignments.as_ref().is_some_and(|a| !a.is_empty()),
        })
        .collect();
    let results = broker
        .create_partitions(growths, request.validate_only)
        .await
        .into_iter()
        .map(|outcome| {
            CreatePartitionsTopicResult::default()
                .with_name(TopicName(StrBytes::from_string(outcome.name)))
                .with_error_code(outcome.error_code)
                .with_error_message(outcome.message.map(StrBytes::from_string))
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
