//! CreateTopics (key 19), v2–v7: partitions, configs, `validate_only`; replication factor 1
//! (or -1, the default) on a single broker, INVALID_REPLICATION_FACTOR otherwise.
//!
//! Runs on the connection's shard; the creation itself happens on the controller shard.

use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{ShardBroker, TopicSpec};
use crate::handlers::metadata::topic_uuid;

pub async fn handle(broker: &ShardBroker, request: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
    let specs: Vec<TopicSpec> = request
        .topics
        .iter()
        .map(|topic| TopicSpec {
            name: topic.name.0.to_string(),
            partitions: topic.num_partitions,
            replication_factor: topic.replication_factor,
            configs: topic
                .configs
                .iter()
                .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
                .collect(),
            has_assignments: !topic.assignments.is_empty(),
        })
        .collect();
    let outcomes = broker.create_topics(specs, request.validate_only).await;
    let results = outcomes
        .into_iter()
        .map(|outcome| {
            let mut result = CreatableTopicResult::default()
                .with_name(TopicName(StrBytes::from_string(outcome.name)))
                .with_error_code(outcome.error_code)
                .with_error_message(outcome.message.map(StrBytes::from_string));
            match outcome.record {
                Some(record) => {
                    let configs = record
                        .configs
                        .iter()
                        .map(|(k, v)| {
                            CreatableTopicConfigs::default()
                                .with_name(StrBytes::from_string(k.clone()))
                                .with_value(Some(StrBytes::from_string(v.clone())))
                                .with_config_source(1) // DYNAMIC_TOPIC_CONFIG
                        })
                        .collect();
                    // v5 added partitions, replication factor and configs; v7 the topic id.
                    if version >= 5 {
                        result = result
                            .with_num_partitions(record.partitions)
                            .with_replication_factor(1)
                            .with_configs(Some(configs));
                    }
                    if version >= 7 {
                        result = result.with_topic_id(topic_uuid(&record));
                    }
                }
                None => result = result.with_num_partitions(-1).with_replication_factor(-1),
            }
            result
        })
        .collect();
    CreateTopicsResponse::default().with_topics(results)
}
