//! Metadata, CreateTopics and DeleteTopics through real sockets against the real shard code,
//! on one and on two shards, across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use common::{Broker, Client, Options};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, MetadataRequest,
    MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_string()))
}

fn creatable(topic: &str, partitions: i32, replication_factor: i16, configs: &[(&str, &str)]) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(replication_factor)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.to_string()))
                        .with_value(Some(StrBytes::from_string(v.to_string())))
                })
                .collect(),
        )
}

fn create(client: &mut Client, topics: Vec<CreatableTopic>, validate_only: bool) -> CreateTopicsResponse {
    let request =
        CreateTopicsRequest::default().with_topics(topics).with_timeout_ms(10_000).with_validate_only(validate_only);
    client.call(ApiKey::CreateTopics, 7, &request)
}

fn metadata(client: &mut Client, version: i16, topics: Option<&[&str]>, auto_create: bool) -> MetadataResponse {
    let mut topics: Option<Vec<MetadataRequestTopic>> =
        topics.map(|names| names.iter().map(|n| MetadataRequestTopic::default().with_name(Some(name(n)))).collect());
    if version == 0 && topics.is_none() {
        topics = Some(Vec::new()); // v0 has no null: an empty list means all
    }
    let request =
        MetadataRequest::default().with_topics(topics).with_allow_auto_topic_creation(auto_create || version < 4);
    client.call(ApiKey::Metadata, version, &request)
}

fn error_of(response: &CreateTopicsResponse, topic: &str) -> i16 {
    response.topics.iter().find(|t| t.name.0.as_str() == topic).unwrap().error_code
}

#[test]
fn created_topics_appear_in_metadata_and_bad_requests_get_kafka_codes() {
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    let response = create(
        &mut client,
        vec![
            creatable("orders", 4, 1, &[("retention.ms", "3600000"), ("corelog.flush.policy", "always")]),
            creatable("default-sized", -1, -1, &[]),
            creatable("replicated", 1, 3, &[]),
            creatable("bad config", 1, 1, &[]),
            creatable("bad-config", 1, 1, &[("no.such.config", "1")]),
            creatable("empty", 0, 1, &[]),
            creatable("huge", 10_001, 1, &[]),
        ],
        false,
    );
    assert_eq!(error_of(&response, "orders"), 0);
    assert_eq!(error_of(&response, "default-sized"), 0);
    assert_eq!(error_of(&response, "replicated"), 38, "INVALID_REPLICATION_FACTOR");
    assert_eq!(error_of(&response, "bad config"), 17, "INVALID_TOPIC_EXCEPTION");
    assert_eq!(error_of(&response, "bad-config"), 40, "INVALID_CONFIG");
    assert_eq!(error_of(&response, "empty"), 37, "INVALID_PARTITIONS");
    assert_eq!(error_of(&response, "huge"), 37, "more than the per-topic partition limit");
    let orders = response.topics.iter().find(|t| t.name.0.as_str() == "orders").unwrap();
    assert_eq!(orders.num_partitions, 4);
    assert!(!orders.topic_id.is_nil());

    let again = create(&mut client, vec![creatable("orders", 4, 1, &[])], false);
    assert_eq!(error_of(&again, "orders"), 36, "TOPIC_ALREADY_EXISTS");
    let dry = create(&mut client, vec![creatable("dry-run", 2, 1, &[])], true);
    assert_eq!(error_of(&dry, "dry-run"), 0);

    for version in 0..=13 {
        let response = metadata(&mut client, version, None, false);
        let mut names: Vec<String> = response.topics.iter().map(|t| t.name.as_ref().unwrap().0.to_string()).collect();
        names.sort();
        assert_eq!(names, vec!["__consumer_offsets", "default-sized", "orders"], "v{version}");
        let orders = response.topics.iter().find(|t| t.name.as_ref().unwrap().0.as_str() == "orders").unwrap();
        assert_eq!(orders.partitions.len(), 4);
        assert!(orders.partitions.iter().all(|p| p.leader_id.0 == 0 && p.isr_nodes.len() == 1));
        assert_eq!(response.brokers.len(), 1);
        assert_eq!(response.brokers[0].port, i32::from(broker.address.port()));
        if version >= 2 {
            assert_eq!(response.cluster_id.as_ref().map(|c| c.len()), Some(22));
        }
        if version >= 10 {
            assert_eq!(
                orders.topic_id,
                response.topics.iter().find(|t| t.name.as_ref().unwrap().0.as_str() == "orders").unwrap().topic_id
            );
            assert!(!orders.topic_id.is_nil());
        }
    }
    // every partition has a directory on its owner shard
    for partition in 0..4 {
        assert!(broker.dir.path().join(format!("orders-{partition}")).is_dir());
    }
    assert!(!broker.dir.path().join("dry-run-0").exists());
}

#[test]
fn metadata_creates_unknown_topics_only_when_allowed() {
    let broker = Broker::start(Options::default());
    let mut client = broker.client();
    let response = metadata(&mut client, 12, Some(&["not-allowed"]), false);
    assert_eq!(response.topics[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    let response = metadata(&mut client, 12, Some(&["auto"]), true);
    assert_eq!(response.topics[0].error_code, 0);
    assert_eq!(response.topics[0].partitions.len(), 1, "num.partitions default");
    let response = metadata(&mut client, 12, Some(&["in/valid"]), true);
    assert_eq!(response.topics[0].error_code, 17);
    // v1+: an empty list asks for no topics
    assert!(metadata(&mut client, 12, Some(&[]), true).topics.is_empty());

    let disabled = Broker::start(Options { auto_create_topics: false, ..Options::default() });
    let mut client = disabled.client();
    assert_eq!(metadata(&mut client, 12, Some(&["auto"]), true).topics[0].error_code, 3);
}

#[test]
fn topics_survive_a_restart_and_deletion_removes_them() {
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    let created = create(&mut client, vec![creatable("keep", 3, 1, &[]), creatable("drop", 2, 1, &[])], false);
    let keep_id = created.topics.iter().find(|t| t.name.0.as_str() == "keep").unwrap().topic_id;
    drop(client);
    let dir = broker.stop();

    let broker = Broker::start_in(dir, Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    let response = metadata(&mut client, 12, Some(&["keep", "drop"]), false);
    assert!(response.topics.iter().all(|t| t.error_code == 0));
    assert_eq!(response.topics[0].topic_id, keep_id, "topic ids are stable");

    let deleted: DeleteTopicsResponse = client.call(
        ApiKey::DeleteTopics,
        5,
        &DeleteTopicsRequest::default().with_topic_names(vec![name("drop"), name("never-was")]),
    );
    let code = |topic: &str| {
        deleted.responses.iter().find(|r| r.name.as_ref().unwrap().0.as_str() == topic).unwrap().error_code
    };
    assert_eq!(code("drop"), 0);
    assert_eq!(code("never-was"), 3);
    assert_eq!(metadata(&mut client, 12, Some(&["drop"]), false).topics[0].error_code, 3);
    assert!(!broker.dir.path().join("drop-0").exists());
    assert!(broker.dir.path().join("keep-0").exists());
    // a topic of the same name starts again from nothing
    assert_eq!(error_of(&create(&mut client, vec![creatable("drop", 1, 1, &[])], false), "drop"), 0);
}

#[test]
fn every_version_of_create_and_delete_encodes() {
    let broker = Broker::start(Options::default());
    let mut client = broker.client();
    for version in 2..=7i16 {
        let topic = format!("v{version}");
        let request =
            CreateTopicsRequest::default().with_topics(vec![creatable(&topic, 2, 1, &[])]).with_timeout_ms(5000);
        let response: CreateTopicsResponse = client.call(ApiKey::CreateTopics, version, &request);
        assert_eq!(response.topics[0].error_code, 0, "CreateTopics v{version}");
        // errors too (their message field exists from v1)
        let response: CreateTopicsResponse = client.call(ApiKey::CreateTopics, version, &request);
        assert_eq!(response.topics[0].error_code, 36, "CreateTopics v{version}");
    }
    for version in 1..=6i16 {
        let topic = format!("v{}", version + 1);
        let request = if version >= 6 {
            DeleteTopicsRequest::default().with_topics(vec![
                kafka_protocol::messages::delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(name(&topic))),
            ])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![name(&topic), name("missing")])
        };
        let response: DeleteTopicsResponse = client.call(ApiKey::DeleteTopics, version, &request);
        assert_eq!(response.responses[0].error_code, 0, "DeleteTopics v{version}");
        if version < 6 {
            assert_eq!(response.responses[1].error_code, 3, "DeleteTopics v{version}");
        }
    }
}
