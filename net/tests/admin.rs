//! The admin APIs through real sockets against the real shard code: DescribeConfigs,
//! AlterConfigs, IncrementalAlterConfigs, CreatePartitions, DescribeCluster and
//! OffsetForLeaderEpoch, on two shards, across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use bytes::Bytes;
use common::{Broker, Client, Options, create_topic};
use corelog_engine::batch;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, CreatePartitionsRequest, CreatePartitionsResponse,
    DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, MetadataRequest, MetadataResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ProduceRequest, ProduceResponse, TopicName,
    alter_configs_request, incremental_alter_configs_request,
};
use kafka_protocol::protocol::StrBytes;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn describe(client: &mut Client, version: i16, kind: i8, name: &str, keys: Option<&[&str]>) -> DescribeConfigsResult {
    let resource = DescribeConfigsResource::default()
        .with_resource_type(kind)
        .with_resource_name(text(name))
        .with_configuration_keys(keys.map(|keys| keys.iter().map(|k| text(k)).collect()));
    let request = DescribeConfigsRequest::default()
        .with_resources(vec![resource])
        .with_include_synonyms(true)
        .with_include_documentation(version >= 3);
    let response: DescribeConfigsResponse = client.call(ApiKey::DescribeConfigs, version, &request);
    response.results.into_iter().next().unwrap()
}

/// (value, source) of one described config.
fn value_of(result: &DescribeConfigsResult, key: &str) -> (String, i8) {
    let config =
        result.configs.iter().find(|c| c.name.as_str() == key).unwrap_or_else(|| panic!("{key} in {result:?}"));
    (config.value.as_ref().unwrap().to_string(), config.config_source)
}

fn incremental(
    client: &mut Client,
    topic: &str,
    changes: &[(&str, i8, Option<&str>)],
    validate_only: bool,
) -> (i16, String) {
    let configs = changes
        .iter()
        .map(|(name, operation, value)| {
            incremental_alter_configs_request::AlterableConfig::default()
                .with_name(text(name))
                .with_config_operation(*operation)
                .with_value(value.map(text))
        })
        .collect();
    let resource = incremental_alter_configs_request::AlterConfigsResource::default()
        .with_resource_type(TOPIC)
        .with_resource_name(text(topic))
        .with_configs(configs);
    let request =
        IncrementalAlterConfigsRequest::default().with_resources(vec![resource]).with_validate_only(validate_only);
    let response: IncrementalAlterConfigsResponse = client.call(ApiKey::IncrementalAlterConfigs, 1, &request);
    let result = &response.responses[0];
    (result.error_code, result.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default())
}

fn produce(client: &mut Client, topic: &str, partition: i32, records: Vec<u8>) -> i16 {
    let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![
        TopicProduceData::default().with_name(TopicName(text(topic))).with_partition_data(vec![
            PartitionProduceData::default().with_index(partition).with_records(Some(Bytes::from(records))),
        ]),
    ]);
    let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request);
    response.responses[0].partition_responses[0].error_code
}

fn partition_count(client: &mut Client, topic: &str) -> usize {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(TopicName(text(topic))))]));
    let response: MetadataResponse = client.call(ApiKey::Metadata, 12, &request);
    response.topics[0].partitions.len()
}

#[test]
fn topic_configs_are_described_altered_applied_and_kept_across_a_restart() {
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    create_topic(&mut client, "orders", 2);

    for version in 1..=4 {
        let described = describe(&mut client, version, TOPIC, "orders", None);
        assert_eq!(described.error_code, 0);
        assert_eq!(value_of(&described, "retention.ms"), ("604800000".into(), 5), "v{version}: Kafka's default");
        assert_eq!(value_of(&described, "corelog.flush.policy"), ("always".into(), 5));
        assert!(described.configs.iter().all(|c| !c.read_only && !c.synonyms.is_empty()));
        if version >= 3 {
            let config = described.configs.iter().find(|c| c.name.as_str() == "retention.ms").unwrap();
            assert_eq!(config.config_type, 5, "LONG");
            assert!(config.documentation.is_some());
        }
    }
    let filtered = describe(&mut client, 4, TOPIC, "orders", Some(&["segment.bytes", "no.such.key"]));
    assert_eq!(filtered.configs.len(), 1);

    // IncrementalAlterConfigs: validate_only changes nothing; SET applies; bad values name the key.
    let set = [("max.message.bytes", 0, Some("2000")), ("retention.ms", 0, Some("3600000"))];
    assert_eq!(incremental(&mut client, "orders", &set, true).0, 0);
    assert_eq!(value_of(&describe(&mut client, 4, TOPIC, "orders", None), "retention.ms").1, 5);
    assert_eq!(incremental(&mut client, "orders", &set, false).0, 0);
    let described = describe(&mut client, 4, TOPIC, "orders", None);
    assert_eq!(value_of(&described, "retention.ms"), ("3600000".into(), 1), "DYNAMIC_TOPIC_CONFIG");
    let (code, message) = incremental(&mut client, "orders", &[("segment.bytes", 0, Some("lots"))], false);
    assert_eq!(code, 40, "INVALID_CONFIG");
    assert!(message.contains("segment.bytes"), "{message}");
    assert_eq!(incremental(&mut client, "orders", &[("retention.ms", 2, Some("1"))], false).0, 40, "APPEND on a long");
    assert_eq!(incremental(&mut client, "missing", &[("retention.ms", 0, Some("1"))], false).0, 3);

    // The new max.message.bytes is enforced by both partitions' owners (one per shard).
    for partition in 0..2 {
        assert_eq!(produce(&mut client, "orders", partition, batch::build_test_batch(1, &[7; 4000], 1)), 10);
        assert_eq!(produce(&mut client, "orders", partition, batch::build_test_batch(1, &[7; 100], 1)), 0);
    }

    // AlterConfigs replaces the explicit set: retention.ms goes back to its default.
    let resource = alter_configs_request::AlterConfigsResource::default()
        .with_resource_type(TOPIC)
        .with_resource_name(text("orders"))
        .with_configs(vec![
            alter_configs_request::AlterableConfig::default()
                .with_name(text("segment.ms"))
                .with_value(Some(text("600000"))),
        ]);
    let broker_resource = alter_configs_request::AlterConfigsResource::default()
        .with_resource_type(BROKER)
        .with_resource_name(text("0"))
        .with_configs(vec![]);
    let request = AlterConfigsRequest::default().with_resources(vec![resource, broker_resource]);
    let response: AlterConfigsResponse = client.call(ApiKey::AlterConfigs, 2, &request);
    assert_eq!(response.responses[0].error_code, 0);
    assert_eq!(response.responses[1].error_code, 42, "broker configs are read-only");
    let described = describe(&mut client, 4, TOPIC, "orders", None);
    assert_eq!(value_of(&described, "retention.ms").1, 5);
    assert_eq!(value_of(&described, "segment.ms"), ("600000".into(), 1));
    assert_eq!(produce(&mut client, "orders", 1, batch::build_test_batch(1, &[7; 4000], 1)), 0, "limit reverted");

    drop(client);
    let broker = Broker::start_in(broker.stop(), Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    assert_eq!(value_of(&describe(&mut client, 4, TOPIC, "orders", None), "segment.ms"), ("600000".into(), 1));
}

#[test]
fn broker_configs_are_read_only_and_unknown_resources_get_errors() {
    let broker = Broker::start(Options::default());
    let mut client = broker.client();
    let described = describe(&mut client, 4, BROKER, "0", None);
    assert_eq!(described.error_code, 0);
    assert!(described.configs.iter().all(|c| c.read_only));
    assert_eq!(value_of(&described, "log.retention.ms"), ("604800000".into(), 5));
    assert_eq!(value_of(&described, "num.partitions"), ("1".into(), 5));
    assert!(value_of(&described, "listeners").0.starts_with("PLAINTEXT://127.0.0.1:"));
    assert_eq!(describe(&mut client, 4, BROKER, "", None).configs.len(), 0, "no dynamic cluster defaults");
    assert_eq!(describe(&mut client, 4, BROKER, "7", None).error_code, 42);
    assert_eq!(describe(&mut client, 4, TOPIC, "missing", None).error_code, 3);
    assert_eq!(describe(&mut client, 4, 99, "x", None).error_code, 42);
}

#[test]
fn partitions_are_added_on_their_owner_shards_and_survive_a_restart() {
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    create_topic(&mut client, "grow", 1);
    let grow = |client: &mut Client, topics: &[(&str, i32)], validate_only: bool| -> Vec<i16> {
        let topics = topics
            .iter()
            .map(|(name, count)| CreatePartitionsTopic::default().with_name(TopicName(text(name))).with_count(*count))
            .collect();
        let request = CreatePartitionsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(10_000)
            .with_validate_only(validate_only);
        let response: CreatePartitionsResponse = client.call(ApiKey::CreatePartitions, 3, &request);
        response.results.iter().map(|r| r.error_code).collect()
    };
    assert_eq!(grow(&mut client, &[("grow", 4)], true), vec![0]);
    assert_eq!(partition_count(&mut client, "grow"), 1, "validate_only changes nothing");
    assert_eq!(grow(&mut client, &[("grow", 4), ("missing", 2)], false), vec![0, 3]);
    assert_eq!(partition_count(&mut client, "grow"), 4);
    assert_eq!(grow(&mut client, &[("grow", 4)], false), vec![37], "INVALID_PARTITIONS: not larger");
    assert_eq!(grow(&mut client, &[("grow", 2)], false), vec![37]);
    assert_eq!(grow(&mut client, &[("grow", 1_000_000)], false), vec![37]);
    assert_eq!(grow(&mut client, &[("grow", 5), ("grow", 6)], false), vec![42, 42], "duplicates");
    for partition in 0..4 {
        assert_eq!(produce(&mut client, "grow", partition, batch::build_test_batch(2, b"new", 1)), 0, "p{partition}");
    }
    drop(client);
    let broker = Broker::start_in(broker.stop(), Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    assert_eq!(partition_count(&mut client, "grow"), 4);
    assert_eq!(produce(&mut client, "grow", 3, batch::build_test_batch(1, b"again", 1)), 0);
}

#[test]
fn describe_cluster_and_offset_for_leader_epoch_answer_for_the_single_node() {
    let broker = Broker::start(Options::default());
    let mut client = broker.client();
    for version in 0..=2 {
        let response: DescribeClusterResponse =
            client.call(ApiKey::DescribeCluster, version, &DescribeClusterRequest::default());
        assert_eq!(response.error_code, 0);
        assert_eq!(response.cluster_id.len(), 22);
        assert_eq!(response.brokers.len(), 1);
        assert_eq!(response.brokers[0].port, i32::from(broker.address.port()));
    }
    create_topic(&mut client, "epochs", 1);
    for _ in 0..3 {
        assert_eq!(produce(&mut client, "epochs", 0, batch::build_test_batch(5, b"e", 1)), 0);
    }
    let ask = |client: &mut Client, version: i16, partition: i32, current: i32, epoch: i32| {
        let request = OffsetForLeaderEpochRequest::default().with_topics(vec![
            OffsetForLeaderTopic::default().with_topic(TopicName(text("epochs"))).with_partitions(vec![
                OffsetForLeaderPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(current)
                    .with_leader_epoch(epoch),
            ]),
        ]);
        let response: OffsetForLeaderEpochResponse = client.call(ApiKey::OffsetForLeaderEpoch, version, &request);
        let answer = &response.topics[0].partitions[0];
        (answer.error_code, answer.leader_epoch, answer.end_offset)
    };
    for version in 2..=4 {
        assert_eq!(ask(&mut client, version, 0, 0, 0), (0, 0, 15));
        assert_eq!(ask(&mut client, version, 0, -1, 0), (0, 0, 15), "no current epoch: no fencing");
    }
    assert_eq!(ask(&mut client, 4, 0, 3, 0), (75, -1, -1), "UNKNOWN_LEADER_EPOCH");
    assert_eq!(ask(&mut client, 4, 0, 0, 2), (0, -1, -1), "an epoch the log never had");
    assert_eq!(ask(&mut client, 4, 9, 0, 0).0, 3, "UNKNOWN_TOPIC_OR_PARTITION");
}
