//! Topic administration: create, list, describe (partitions, offsets, configs), delete,
//! alter configs, add partitions, trim (delete records up to an offset). Topic changes go to
//! the controller; offsets and trims to each partition's leader.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreateTopicsRequest, DeleteRecordsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, IncrementalAlterConfigsRequest, ListOffsetsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::{Client, Connection, Error, TopicInfo, check};

/// Kafka's config resource types.
const TOPIC_RESOURCE: i8 = 2;
const BROKER_RESOURCE: i8 = 4;
/// ListOffsets timestamps.
pub const EARLIEST: i64 = -2;
pub const LATEST: i64 = -1;

#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    /// -1: the broker's default.
    pub partitions: i32,
    /// -1: the broker's default.
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

/// A topic config as DescribeConfigs reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    /// Kafka's source names: DYNAMIC_TOPIC_CONFIG, DEFAULT_CONFIG, STATIC_BROKER_CONFIG...
    pub source: &'static str,
    pub read_only: bool,
    pub sensitive: bool,
}

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_string()))
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn config_source(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        7 => "CLIENT_METRICS_CONFIG",
        8 => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

impl Client {
    /// Creates topics; one result per topic, in the order given.
    pub async fn create_topics(
        &self,
        topics: &[NewTopic],
        validate_only: bool,
    ) -> Result<Vec<(String, Result<(), Error>)>, Error> {
        let request = CreateTopicsRequest::default()
            .with_topics(
                topics
                    .iter()
                    .map(|t| {
                        CreatableTopic::default()
                            .with_name(name(&t.name))
                            .with_num_partitions(t.partitions)
                            .with_replication_factor(t.replication_factor)
                            .with_configs(
                                t.configs
                                    .iter()
                                    .map(|(k, v)| {
                                        CreatableTopicConfig::default().with_name(text(k)).with_value(Some(text(v)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
            .with_timeout_ms(self.timeout_ms())
            .with_validate_only(validate_only);
        let response = self.controller().await?.send(request).await?;
        let mut results: BTreeMap<String, Result<(), Error>> = response
            .topics
            .iter()
            .map(|t| (t.name.0.to_string(), check("CreateTopics", t.error_code, t.error_message.as_ref())))
            .collect();
        Ok(topics
            .iter()
            .map(|t| {
                let result = results
                    .remove(&t.name)
                    .unwrap_or_else(|| Err(Error::Invalid(format!("the broker did not answer for {}", t.name))));
                (t.name.clone(), result)
            })
            .collect())
    }

    /// Deletes topics by name; one result per topic, in the order given.
    pub async fn delete_topics(&self, names: &[String]) -> Result<Vec<(String, Result<(), Error>)>, Error> {
        let request = DeleteTopicsRequest::default()
            .with_topic_names(names.iter().map(|n| name(n)).collect())
            .with_topics(
                names
                    .iter()
                    .map(|n| {
                        kafka_protocol::messages::delete_topics_request::DeleteTopicState::default()
                            .with_name(Some(name(n)))
                    })
                    .collect(),
            )
            .with_timeout_ms(self.timeout_ms());
        let response = self.controller().await?.send(request).await?;
        let mut results: BTreeMap<String, Result<(), Error>> = response
            .responses
            .iter()
            .filter_map(|r| {
                let topic = r.name.as_ref()?.0.to_string();
                Some((topic, check("DeleteTopics", r.error_code, r.error_message.as_ref())))
            })
            .collect();
        Ok(names
            .iter()
            .map(|n| {
                let result = results
                    .remove(n)
                    .unwrap_or_else(|| Err(Error::Invalid(format!("the broker did not answer for {n}"))));
                (n.clone(), result)
            })
            .collect())
    }

    /// Every topic, by name (internal ones included: see [`TopicInfo::internal`]).
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, Error> {
        Ok(self.metadata(None).await?.topics.into_values().collect())
    }

    /// A topic's configs (all of them, with where each value comes from).
    pub async fn topic_configs(&self, topic: &str) -> Result<Vec<ConfigEntry>, Error> {
        let connection = self.any_broker().await?;
        self.configs(&connection, TOPIC_RESOURCE, topic).await
    }

    /// A broker's configs, asked of that broker.
    pub async fn broker_configs(&self, node_id: i32) -> Result<Vec<ConfigEntry>, Error> {
        let connection = self.broker(node_id).await?;
        self.configs(&connection, BROKER_RESOURCE, &node_id.to_string()).await
    }

    async fn configs(&self, connection: &Connection, resource_type: i8, name: &str) -> Result<Vec<ConfigEntry>, Error> {
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(text(name))
                .with_configuration_keys(None),
        ]);
        let response = connection.send(request).await?;
        let result = response
            .results
            .into_iter()
            .next()
            .ok_or_else(|| Error::Invalid("DescribeConfigs: no result in the response".into()))?;
        check("DescribeConfigs", result.error_code, result.error_message.as_ref())?;
        let mut configs: Vec<ConfigEntry> = result
            .configs
            .iter()
            .map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.as_ref().map(ToString::to_string),
                source: config_source(c.config_source),
                read_only: c.read_only,
                sensitive: c.is_sensitive,
            })
            .collect();
        configs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(configs)
    }

    /// Sets and removes (back to the default) topic configs, in one request.
    pub async fn alter_topic_config(
        &self,
        topic: &str,
        set: &[(String, String)],
        delete: &[String],
    ) -> Result<(), Error> {
        let configs = set
            .iter()
            .map(|(k, v)| {
                AlterableConfig::default().with_name(text(k)).with_config_operation(0).with_value(Some(text(v)))
            })
            .chain(delete.iter().map(|k| AlterableConfig::default().with_name(text(k)).with_config_operation(1)))
            .collect();
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(text(topic))
                .with_configs(configs),
        ]);
        let response = self.controller().await?.send(request).await?;
        for result in &response.responses {
            check("IncrementalAlterConfigs", result.error_code, result.error_message.as_ref())?;
        }
        Ok(())
    }

    /// Grows a topic to `total` partitions.
    pub async fn add_partitions(&self, topic: &str, total: i32) -> Result<(), Error> {
        let request = CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default().with_name(name(topic)).with_count(total)])
            .with_timeout_ms(self.timeout_ms());
        let response = self.controller().await?.send(request).await?;
        for result in &response.results {
            check("CreatePartitions", result.error_code, result.error_message.as_ref())?;
        }
        Ok(())
    }

    /// The offset of each partition at `timestamp` ([`EARLIEST`], [`LATEST`] or a time in
    /// ms), asked of each partition's leader.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<BTreeMap<i32, Result<i64, Error>>, Error> {
        let info = self.topic(topic).await?;
        let mut results = BTreeMap::new();
        for (leader, wanted) in by_leader(&info, partitions, &mut results) {
            let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![
                ListOffsetsTopic::default().with_name(name(topic)).with_partitions(
                    wanted
                        .iter()
                        .map(|p| ListOffsetsPartition::default().with_partition_index(*p).with_timestamp(timestamp))
                        .collect(),
                ),
            ]);
            let response = self.broker(leader).await?.send(request).await?;
            for t in &response.topics {
                for p in &t.partitions {
                    results.insert(p.partition_index, check("ListOffsets", p.error_code, None).map(|()| p.offset));
                }
            }
        }
        Ok(results)
    }

    /// Deletes the records before `offset` in each partition (`-1`: before the high
    /// watermark), at each leader. Returns each partition's new log start offset.
    pub async fn trim(&self, topic: &str, targets: &[(i32, i64)]) -> Result<BTreeMap<i32, Result<i64, Error>>, Error> {
        let info = self.topic(topic).await?;
        let partitions: Vec<i32> = targets.iter().map(|(p, _)| *p).collect();
        let offsets: BTreeMap<i32, i64> = targets.iter().copied().collect();
        let mut results = BTreeMap::new();
        for (leader, wanted) in by_leader(&info, &partitions, &mut results) {
            let request = DeleteRecordsRequest::default()
                .with_topics(vec![
                    DeleteRecordsTopic::default().with_name(name(topic)).with_partitions(
                        wanted
                            .iter()
                            .map(|p| DeleteRecordsPartition::default().with_partition_index(*p).with_offset(offsets[p]))
                            .collect(),
                    ),
                ])
                .with_timeout_ms(self.timeout_ms());
            let response = self.broker(leader).await?.send(request).await?;
            for t in &response.topics {
                for p in &t.partitions {
                    results.insert(
                        p.partition_index,
                        check("DeleteRecords", p.error_code, None).map(|()| p.low_watermark),
                    );
                }
            }
        }
        Ok(results)
    }

    fn timeout_ms(&self) -> i32 {
        i32::try_from(self.config.request_timeout.as_millis()).unwrap_or(i32::MAX)
    }
}

/// The wanted partitions grouped by leader; partitions without a leader (or unknown) get
/// their error in `results`.
fn by_leader(
    info: &TopicInfo,
    partitions: &[i32],
    results: &mut BTreeMap<i32, Result<i64, Error>>,
) -> BTreeMap<i32, Vec<i32>> {
    let mut grouped: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for partition in partitions {
        match info.partitions.iter().find(|p| p.partition == *partition) {
            Some(p) if p.leader >= 0 => grouped.entry(p.leader).or_default().push(*partition),
            Some(_) => {
                results.insert(*partition, Err(Error::kafka("Metadata", 5, None))); // LEADER_NOT_AVAILABLE
            }
            None => {
                results.insert(*partition, Err(Error::kafka("Metadata", 3, None))); // UNKNOWN_TOPIC_OR_PARTITION
            }
        }
    }
    grouped
}
