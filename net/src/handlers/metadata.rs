//! Metadata (key 3), v0–v13: brokers (this node), cluster id, controller, and topics with
//! their partitions, leaders, replicas and topic ids. Unknown topics are created when the
//! request allows it and `auto.create.topics.enable` is on (Kafka's default), with
//! `num.partitions` partitions.
//!
//! Runs on the shard that owns the connection; reads the registry snapshot; creation goes
//! through the controller shard.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{ShardBroker, TopicSpec, error_code};
use crate::registry::{self, TopicRecord};

/// Kafka's "authorized operations not requested" marker.
pub const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

pub fn topic_uuid(record: &TopicRecord) -> uuid::Uuid {
    registry::parse_hex_id(&record.id).map_or(uuid::Uuid::nil(), uuid::Uuid::from_bytes)
}

/// Fields a version does not carry stay at their defaults (the encoder refuses them).
fn topic_response(record: &TopicRecord, node_id: i32, version: i16) -> MetadataResponseTopic {
    let partitions = (0..record.partitions)
        .map(|index| {
            let partition = MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(BrokerId(node_id))
                .with_replica_nodes(vec![BrokerId(node_id)])
                .with_isr_nodes(vec![BrokerId(node_id)]);
            if version >= 7 {
                partition.with_leader_epoch(crate::handlers::offset_for_leader_epoch::LEADER_EPOCH)
            } else {
                partition
            }
        })
        .collect();
    let topic = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(record.name.clone()))))
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED)
        .with_is_internal(version >= 1 && record.name == crate::group::OFFSETS_TOPIC);
    if version >= 10 { topic.with_topic_id(topic_uuid(record)) } else { topic }
}

fn error_topic(name: &str, error_code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error_code)
        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
        .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED)
}

enum Wanted {
    Name(String),
    Id(uuid::Uuid),
}

pub async fn handle(broker: &ShardBroker, request: MetadataRequest, version: i16) -> MetadataResponse {
    let settings = &broker.settings;
    // v0: an empty list means all topics; v1+: null means all, empty means none. From v10 a
    // topic may be asked for by id alone (clients resolve assigned topic ids this way).
    let requested: Option<Vec<Wanted>> = match request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(
            topics
                .into_iter()
                .filter_map(|t| match t.name {
                    Some(name) => Some(Wanted::Name(name.0.to_string())),
                    None if !t.topic_id.is_nil() => Some(Wanted::Id(t.topic_id)),
                    None => None,
                })
                .collect(),
        ),
    };
    let auto_create = settings.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    let mut topics = Vec::new();
    match requested {
        None => {
            let snapshot = broker.registry.snapshot();
            topics.extend(snapshot.values().map(|record| topic_response(record, settings.node_id, version)));
        }
        Some(wanted) => {
            let snapshot = broker.registry.snapshot();
            let missing: Vec<String> = wanted
                .iter()
                .filter_map(|w| match w {
                    Wanted::Name(n) if !snapshot.contains_key(n) && registry::valid_topic_name(n) => Some(n.clone()),
                    _ => None,
                })
                .collect();
            if auto_create && !missing.is_empty() {
                let specs = missing
                    .iter()
                    .map(|name| TopicSpec {
                        name: name.clone(),
                        partitions: -1,
                        replication_factor: -1,
                        configs: Default::default(),
                        has_assignments: false,
                    })
                    .collect();
                // Outcomes (including a concurrent creation) are read back from the registry.
                broker.create_topics(specs, false).await;
            }
            let snapshot = broker.registry.snapshot();
            for want in &wanted {
                topics.push(match want {
                    Wanted::Name(name) => match snapshot.get(name) {
                        Some(record) => topic_response(record, settings.node_id, version),
                        None if !registry::valid_topic_name(name) => {
                            error_topic(name, error_code::INVALID_TOPIC_EXCEPTION)
                        }
                        None => error_topic(name, error_code::UNKNOWN_TOPIC_OR_PARTITION),
                    },
                    Wanted::Id(id) => match snapshot.values().find(|r| topic_uuid(r) == *id) {
                        Some(record) => topic_response(record, settings.node_id, version),
                        None => MetadataResponseTopic::default()
                            .with_error_code(error_code::UNKNOWN_TOPIC_ID)
                            .with_topic_id(*id)
                            .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED),
                    },
                });
            }
        }
    }
    let advertised = settings.advertised;
    let mut response = MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(settings.node_id))
                .with_host(StrBytes::from_string(advertised.ip().to_string()))
                .with_port(i32::from(advertised.port())),
        ])
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_NOT_REQUESTED);
    if version >= 1 {
        response = response.with_controller_id(BrokerId(settings.node_id));
    }
    if version >= 2 {
        response = response.with_cluster_id(Some(StrBytes::from_string(broker.registry.cluster_id().to_string())));
    }
    response
}
