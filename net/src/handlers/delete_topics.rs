//! DeleteTopics (key 20), v1–v6, by name (v0–v5) or by name or topic id (v6).
//!
//! Runs on the connection's shard; the deletion happens on the controller shard, which
//! removes the topic from the registry first and then each partition's files on its owner.

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker::ShardBroker;
use crate::handlers::metadata::topic_uuid;

pub async fn handle(broker: &ShardBroker, request: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let snapshot = broker.registry.snapshot();
    let mut names: Vec<String> = request.topic_names.iter().map(|n| n.0.to_string()).collect();
    let mut unknown_ids = Vec::new();
    for state in &request.topics {
        match &state.name {
            Some(name) => names.push(name.0.to_string()),
            None => match snapshot.values().find(|r| topic_uuid(r) == state.topic_id) {
                Some(record) => names.push(record.name.clone()),
                None => unknown_ids.push(state.topic_id),
            },
        }
    }
    let mut responses: Vec<DeletableTopicResult> = broker
        .delete_topics(names)
        .await
        .into_iter()
        .map(|outcome| {
            let mut result = DeletableTopicResult::default()
                .with_name(Some(TopicName(StrBytes::from_string(outcome.name))))
                .with_error_code(outcome.error_code);
            // v5 added the error message, v6 the topic id.
            if version >= 5 {
                result = result.with_error_message(outcome.message.map(StrBytes::from_string));
            }
            if version >= 6 {
                result = result.with_topic_id(outcome.record.as_ref().map_or(uuid::Uuid::nil(), topic_uuid));
            }
            result
        })
        .collect();
    responses.extend(unknown_ids.into_iter().map(|id| {
        DeletableTopicResult::default()
            .with_topic_id(id)
            .with_error_code(100) // UNKNOWN_TOPIC_ID
            .with_error_message(Some(StrBytes::from_static_str("unknown topic id")))
    }));
    DeleteTopicsResponse::default().with_responses(responses)
}
