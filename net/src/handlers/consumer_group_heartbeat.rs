//! ConsumerGroupHeartbeat (key 68), v0–v1: the consumer group protocol of KIP-848 (librdkafka
//! and the Java client with `group.protocol=consumer`). Joins, leaves and heartbeats of one
//! member; the coordinator shard answers with the member's epoch and, when it changed, the
//! partitions it owns now. Topics travel as ids on the wire and as names inside.

use std::collections::BTreeMap;

use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{GroupAnswer, GroupCall, ShardBroker};
use crate::connection::ClientInfo;
use crate::group::classic::error_code;
use crate::group::consumer::{self, HeartbeatRequest};
use crate::handlers::metadata::topic_uuid;

pub async fn handle(
    broker: &ShardBroker,
    request: ConsumerGroupHeartbeatRequest,
    version: i16,
    client: &ClientInfo,
) -> ConsumerGroupHeartbeatResponse {
    let group_id = request.group_id.0.to_string();
    let topics = broker.registry.snapshot();
    let refuse = |code: i16, message: &str| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(code)
            .with_error_message(Some(StrBytes::from_string(message.to_string())))
            .with_member_epoch(-1)
    };
    if version >= 1 && request.member_epoch == 0 && request.member_id.is_empty() {
        return refuse(error_code::INVALID_REQUEST, "from version 1 the member chooses its member id");
    }
    // Owned partitions of topics that no longer exist are simply not owned any more.
    let owned = request.topic_partitions.as_ref().map(|owned| {
        let by_id: BTreeMap<uuid::Uuid, &str> = if owned.is_empty() {
            BTreeMap::new()
        } else {
            topics.values().map(|t| (topic_uuid(t), t.name.as_str())).collect()
        };
        owned
            .iter()
            .filter_map(|tp| {
                by_id.get(&tp.topic_id).map(|name| (name.to_string(), tp.partitions.iter().copied().collect()))
            })
            .collect::<consumer::Assignment>()
    });
    let heartbeat = HeartbeatRequest {
        group_id: group_id.clone(),
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.as_ref().map(|i| i.to_string()),
        rack_id: request.rack_id.as_ref().map(|r| r.to_string()),
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        subscribed_topics: request
            .subscribed_topic_names
            .as_ref()
            .map(|names| names.iter().map(|n| n.0.to_string()).collect()),
        // librdkafka sends an empty one when it subscribes by name only.
        subscribed_regex: request.subscribed_topic_regex.as_ref().map(|regex| regex.to_string()),
        server_assignor: request.server_assignor.as_ref().map(|a| a.to_string()),
        owned,
        client_id: client.client_id.clone(),
        client_host: client.host.clone(),
    };
    let partition = broker.group_partition(&group_id);
    let outcome =
        match broker.group_call(&group_id, GroupCall::ConsumerHeartbeat { request: heartbeat, partition }).await {
            Ok(GroupAnswer::ConsumerHeartbeat(outcome)) => outcome,
            Ok(_) => return refuse(error_code::COORDINATOR_NOT_AVAILABLE, "coordinator unavailable"),
            Err(code) => return refuse(code, "coordinator unavailable"),
        };
    let assignment = outcome.assignment.map(|assigned| {
        Assignment::default().with_topic_partitions(
            assigned
                .into_iter()
                .filter_map(|(topic, partitions)| {
                    topics.get(&topic).map(|record| {
                        TopicPartitions::default()
                            .with_topic_id(topic_uuid(record))
                            .with_partitions(partitions.into_iter().collect())
                    })
                })
                .collect(),
        )
    });
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(outcome.error_code)
        .with_error_message(outcome.error_message.map(StrBytes::from_string))
        .with_member_id(Some(StrBytes::from_string(outcome.member_id)))
        .with_member_epoch(outcome.member_epoch)
        .with_heartbeat_interval_ms(outcome.heartbeat_interval_ms)
        .with_assignment(assignment)
}
