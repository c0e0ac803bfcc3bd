//! Consumer groups through real sockets against the real shard code: FindCoordinator, the
//! classic join/sync/heartbeat/leave cycle, offset commits and fetches, describe, list and
//! delete, across two shards and a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use bytes::Bytes;
use common::{Broker, Client, Options, create_topic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, MetadataRequest,
    MetadataResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn group(id: &str) -> GroupId {
    GroupId(text(id))
}

fn join(client: &mut Client, group_id: &str, member_id: &str) -> JoinGroupResponse {
    let request = JoinGroupRequest::default()
        .with_group_id(group(group_id))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(text(member_id))
        .with_protocol_type(text("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default().with_name(text("range")).with_metadata(Bytes::from_static(b"sub")),
        ]);
    client.call(ApiKey::JoinGroup, 9, &request)
}

fn sync(
    client: &mut Client,
    group_id: &str,
    member_id: &str,
    generation: i32,
    assignment: &[(&str, &'static [u8])],
) -> SyncGroupResponse {
    let request = SyncGroupRequest::default()
        .with_group_id(group(group_id))
        .with_generation_id(generation)
        .with_member_id(text(member_id))
        .with_protocol_type(Some(text("consumer")))
        .with_protocol_name(Some(text("range")))
        .with_assignments(
            assignment
                .iter()
                .map(|(m, a)| {
                    SyncGroupRequestAssignment::default().with_member_id(text(m)).with_assignment(Bytes::from_static(a))
                })
                .collect(),
        );
    client.call(ApiKey::SyncGroup, 5, &request)
}

fn commit(
    client: &mut Client,
    group_id: &str,
    member_id: &str,
    generation: i32,
    offsets: &[(&str, i32, i64)],
) -> Vec<i16> {
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for (topic, partition, offset) in offsets {
        let entry = OffsetCommitRequestPartition::default()
            .with_partition_index(*partition)
            .with_committed_offset(*offset)
            .with_committed_leader_epoch(0)
            .with_committed_metadata(Some(text("meta")));
        match topics.iter_mut().find(|t| t.name.0.as_str() == *topic) {
            Some(t) => t.partitions.push(entry),
            None => topics.push(
                OffsetCommitRequestTopic::default().with_name(TopicName(text(topic))).with_partitions(vec![entry]),
            ),
        }
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(group(group_id))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(text(member_id))
        .with_topics(topics);
    let response: OffsetCommitResponse = client.call(ApiKey::OffsetCommit, 8, &request);
    response.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code)).collect()
}

fn fetch_offsets(client: &mut Client, group_id: &str, topic: &str, partitions: &[i32]) -> Vec<(i32, i64, String)> {
    let request = OffsetFetchRequest::default().with_group_id(group(group_id)).with_topics(Some(vec![
        OffsetFetchRequestTopic::default()
            .with_name(TopicName(text(topic)))
            .with_partition_indexes(partitions.to_vec()),
    ]));
    let response: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, 7, &request);
    assert_eq!(response.error_code, 0);
    response.topics[0]
        .partitions
        .iter()
        .map(|p| {
            (p.partition_index, p.committed_offset, p.metadata.as_ref().map(|m| m.to_string()).unwrap_or_default())
        })
        .collect()
}

#[test]
fn the_coordinator_is_found_and_offsets_topic_is_internal() {
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    for version in 0..=3 {
        let request = FindCoordinatorRequest::default().with_key(text("g1"));
        let response: FindCoordinatorResponse = client.call(ApiKey::FindCoordinator, version, &request);
        assert_eq!(response.error_code, 0, "v{version}");
        assert_eq!(response.port, i32::from(broker.address.port()));
    }
    let request = FindCoordinatorRequest::default().with_coordinator_keys(vec![text("a"), text("b"), text("")]);
    let response: FindCoordinatorResponse = client.call(ApiKey::FindCoordinator, 6, &request);
    let codes: Vec<i16> = response.coordinators.iter().map(|c| c.error_code).collect();
    assert_eq!(codes, vec![0, 0, 24]);
    let transactions = FindCoordinatorRequest::default().with_key_type(1).with_coordinator_keys(vec![text("tx")]);
    let response: FindCoordinatorResponse = client.call(ApiKey::FindCoordinator, 6, &transactions);
    assert_eq!(response.coordinators[0].error_code, 15);
    let metadata: MetadataResponse = client.call(ApiKey::Metadata, 12, &MetadataRequest::default().with_topics(None));
    let internal =
        metadata.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "__consumer_offsets"));
    assert!(internal.is_some_and(|t| t.is_internal && t.partitions.len() == 4), "{metadata:?}");
}

#[test]
fn two_members_form_a_group_commit_and_the_offsets_survive_a_restart() {
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut a = broker.client();
    let mut b = broker.client();
    create_topic(&mut a, "events", 2);

    // KIP-394: the first join hands out a member id.
    let first = join(&mut a, "g1", "");
    assert_eq!(first.error_code, 79);
    let a_id = first.member_id.to_string();
    let joined = join(&mut a, "g1", &a_id);
    assert_eq!((joined.error_code, joined.generation_id, joined.leader.as_str()), (0, 1, a_id.as_str()));
    assert_eq!(sync(&mut a, "g1", &a_id, 1, &[(&a_id, b"both")]).assignment, Bytes::from_static(b"both"));

    // b joins on its own thread (its join waits for a to rejoin).
    let b_id = join(&mut b, "g1", "").member_id.to_string();
    let b_thread = std::thread::spawn(move || {
        let joined = join(&mut b, "g1", &b_id);
        (b, b_id, joined)
    });
    let heartbeat = |client: &mut Client, member: &str, generation: i32| -> i16 {
        let request = HeartbeatRequest::default()
            .with_group_id(group("g1"))
            .with_member_id(text(member))
            .with_generation_id(generation);
        let response: HeartbeatResponse = client.call(ApiKey::Heartbeat, 4, &request);
        response.error_code
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while heartbeat(&mut a, &a_id, 1) != 27 {
        assert!(std::time::Instant::now() < deadline, "no rebalance announced");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let rejoined = join(&mut a, "g1", &a_id);
    let (mut b, b_id, b_joined) = b_thread.join().unwrap();
    assert_eq!((rejoined.generation_id, b_joined.generation_id), (2, 2));
    assert_eq!(rejoined.members.len(), 2, "the leader sees both members");
    assert!(b_joined.members.is_empty());
    let b_member = b_id.clone();
    let b_sync = std::thread::spawn(move || {
        let response = sync(&mut b, "g1", &b_id, 2, &[]);
        (b, b_id, response)
    });
    assert_eq!(
        sync(&mut a, "g1", &a_id, 2, &[(&a_id, b"p0"), (&b_member, b"p1")]).assignment,
        Bytes::from_static(b"p0")
    );
    let (mut b, b_id, b_synced) = b_sync.join().unwrap();
    assert_eq!((b_synced.error_code, b_synced.assignment), (0, Bytes::from_static(b"p1")));

    // Commits: members of the current generation only; unknown partitions refused per partition.
    assert_eq!(commit(&mut a, "g1", &a_id, 2, &[("events", 0, 17), ("events", 1, 5), ("nope", 0, 1)]), vec![0, 0, 3]);
    assert_eq!(commit(&mut b, "g1", &b_id, 1, &[("events", 1, 9)]), vec![22], "ILLEGAL_GENERATION");
    assert_eq!(commit(&mut b, "g1", "stranger", 2, &[("events", 1, 9)]), vec![25], "UNKNOWN_MEMBER_ID");
    assert_eq!(fetch_offsets(&mut b, "g1", "events", &[0, 1]), vec![(0, 17, "meta".into()), (1, 5, "meta".into())]);

    let described: DescribeGroupsResponse = a.call(
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default().with_groups(vec![group("g1"), group("none")]),
    );
    assert_eq!(described.groups[0].group_state.as_str(), "Stable");
    assert_eq!(described.groups[0].members.len(), 2);
    assert_eq!(described.groups[1].group_state.as_str(), "Dead");
    let listed: ListGroupsResponse = a.call(ApiKey::ListGroups, 5, &ListGroupsRequest::default());
    assert_eq!(listed.groups.iter().map(|g| g.group_id.0.as_str()).collect::<Vec<_>>(), vec!["g1"]);

    // Both leave; the empty group keeps its offsets across a restart, then can be deleted.
    for (client, member) in [(&mut a, &a_id), (&mut b, &b_id)] {
        let request = LeaveGroupRequest::default().with_group_id(group("g1")).with_member_id(text(member));
        let response: LeaveGroupResponse = client.call(ApiKey::LeaveGroup, 2, &request);
        assert_eq!(response.error_code, 0);
    }
    drop((a, b));
    let broker = Broker::start_in(broker.stop(), Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    assert_eq!(
        fetch_offsets(&mut client, "g1", "events", &[0, 1, 2]),
        vec![(0, 17, "meta".into()), (1, 5, "meta".into()), (2, -1, String::new())]
    );
    let deleted: DeleteGroupsResponse = client.call(
        ApiKey::DeleteGroups,
        2,
        &DeleteGroupsRequest::default().with_groups_names(vec![group("g1"), group("g1")]),
    );
    assert_eq!(deleted.results.iter().map(|r| r.error_code).collect::<Vec<_>>(), vec![0, 69]);
    assert_eq!(fetch_offsets(&mut client, "g1", "events", &[0]), vec![(0, -1, String::new())]);
}

#[test]
fn a_long_run_of_commits_is_snapshotted_and_replayed_from_the_snapshot() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
    let options = || Options {
        group: corelog_net::group::classic::CoordinatorConfig {
            initial_rebalance_delay_ms: 0,
            offsets_snapshot_records_min: 50,
            ..Default::default()
        },
        ..Options::default()
    };
    let broker = Broker::start(options());
    let mut client = broker.client();
    create_topic(&mut client, "busy", 3);
    for round in 0..200i64 {
        let offsets = [("busy", 0, round), ("busy", 1, 2 * round), ("busy", 2, 3 * round)];
        assert_eq!(commit(&mut client, "snap", "", -1, &offsets), vec![0, 0, 0], "round {round}");
    }
    let partition = corelog_net::group::partition_for("snap", 4);
    let log_start = |client: &mut Client| {
        let request = ListOffsetsRequest::default().with_topics(vec![
            ListOffsetsTopic::default().with_name(TopicName(text("__consumer_offsets"))).with_partitions(vec![
                ListOffsetsPartition::default().with_partition_index(partition).with_timestamp(-2),
            ]),
        ]);
        let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 8, &request);
        response.topics[0].partitions[0].offset
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log_start(&mut client) == 0 {
        assert!(std::time::Instant::now() < deadline, "the log start never moved");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(log_start(&mut client) > 400, "most of the 600 records are gone: {}", log_start(&mut client));
    drop(client);
    let broker = Broker::start_in(broker.stop(), options());
    let mut client = broker.client();
    let expected = vec![(0, 199, "meta".into()), (1, 398, "meta".into()), (2, 597, "meta".into())];
    assert_eq!(fetch_offsets(&mut client, "snap", "busy", &[0, 1, 2]), expected);
}

#[test]
fn consumer_protocol_members_are_checked_by_epoch_and_offsets_can_be_deleted_once_unsubscribed() {
    use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
    use kafka_protocol::messages::offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic};
    use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopics};
    use kafka_protocol::messages::{
        ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
        ConsumerGroupHeartbeatResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    };
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    create_topic(&mut client, "cp", 2);
    let heartbeat = |client: &mut Client, epoch: i32, owned: Option<Vec<TopicPartitions>>| {
        let request = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(group("cg"))
            .with_member_id(text("member-1"))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(5_000)
            .with_subscribed_topic_names((epoch == 0).then(|| vec![TopicName(text("cp"))]))
            .with_topic_partitions(owned);
        let response: ConsumerGroupHeartbeatResponse = client.call(ApiKey::ConsumerGroupHeartbeat, 1, &request);
        response
    };
    let joined = heartbeat(&mut client, 0, Some(Vec::new()));
    assert_eq!((joined.error_code, joined.member_epoch), (0, 1));
    let assigned = joined.assignment.unwrap().topic_partitions;
    assert_eq!(assigned.len(), 1);
    assert_eq!(assigned[0].partitions, vec![0, 1], "the only member gets both partitions at once");

    // Commits carry the member epoch.
    assert_eq!(commit(&mut client, "cg", "member-1", 1, &[("cp", 0, 10), ("cp", 1, 20)]), vec![0, 0]);
    assert_eq!(commit(&mut client, "cg", "member-1", 0, &[("cp", 0, 11)]), vec![113], "STALE_MEMBER_EPOCH");
    assert_eq!(commit(&mut client, "cg", "member-1", 9, &[("cp", 0, 11)]), vec![110], "FENCED_MEMBER_EPOCH");
    assert_eq!(commit(&mut client, "cg", "intruder", 1, &[("cp", 0, 11)]), vec![25], "UNKNOWN_MEMBER_ID");
    let fetch_v9 = |client: &mut Client, epoch: i32| {
        let request = OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(group("cg"))
                .with_member_id(Some(text("member-1")))
                .with_member_epoch(epoch)
                .with_topics(Some(vec![
                    OffsetFetchRequestTopics::default()
                        .with_name(TopicName(text("cp")))
                        .with_partition_indexes(vec![0, 1]),
                ])),
        ]);
        let response: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, 9, &request);
        let group = &response.groups[0];
        let offsets: Vec<i64> =
            group.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.committed_offset)).collect();
        (group.error_code, offsets)
    };
    assert_eq!(fetch_v9(&mut client, 1), (0, vec![10, 20]));
    assert_eq!(fetch_v9(&mut client, 0).0, 113, "STALE_MEMBER_EPOCH");
    assert_eq!(fetch_v9(&mut client, 9).0, 110, "FENCED_MEMBER_EPOCH");

    let described: ConsumerGroupDescribeResponse = client.call(
        ApiKey::ConsumerGroupDescribe,
        1,
        &ConsumerGroupDescribeRequest::default().with_group_ids(vec![group("cg"), group("nope")]),
    );
    assert_eq!(described.groups[0].group_state.as_str(), "stable");
    assert_eq!(described.groups[0].members[0].assignment.topic_partitions[0].partitions, vec![0, 1]);
    assert_eq!(described.groups[1].error_code, 69, "GROUP_ID_NOT_FOUND");
    let listed: ListGroupsResponse = client.call(ApiKey::ListGroups, 5, &ListGroupsRequest::default());
    let cg = listed.groups.iter().find(|g| g.group_id.0.as_str() == "cg").unwrap();
    assert_eq!((cg.group_type.as_str(), cg.group_state.as_str()), ("consumer", "stable"));

    let delete = |client: &mut Client| {
        let request = OffsetDeleteRequest::default().with_group_id(group("cg")).with_topics(vec![
            OffsetDeleteRequestTopic::default()
                .with_name(TopicName(text("cp")))
                .with_partitions(vec![OffsetDeleteRequestPartition::default().with_partition_index(0)]),
        ]);
        let response: OffsetDeleteResponse = client.call(ApiKey::OffsetDelete, 0, &request);
        (response.error_code, response.topics.first().map(|t| t.partitions[0].error_code))
    };
    assert_eq!(delete(&mut client), (0, Some(86)), "GROUP_SUBSCRIBED_TO_TOPIC while a member consumes it");
    let left = heartbeat(&mut client, -1, None);
    assert_eq!((left.error_code, left.member_epoch), (0, -1));
    assert_eq!(delete(&mut client), (0, Some(0)));
    assert_eq!(fetch_offsets(&mut client, "cg", "cp", &[0, 1]), vec![(0, -1, String::new()), (1, 20, "meta".into())]);
}

#[test]
fn a_pipelined_commit_is_seen_by_the_offset_fetch_behind_it() {
    use std::io::Write;
    let broker = Broker::start(Options::default());
    let mut client = broker.client();
    create_topic(&mut client, "seq", 1);
    let mut stream = broker.connect();
    let mut wire = Vec::new();
    for round in 0..20i64 {
        let request = OffsetCommitRequest::default()
            .with_group_id(group("piped"))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default().with_name(TopicName(text("seq"))).with_partitions(
                vec![OffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(round)],
            )]);
        wire.extend(common::request_frame(ApiKey::OffsetCommit, 8, (2 * round) as i32, &request));
        let fetch = OffsetFetchRequest::default().with_group_id(group("piped")).with_topics(Some(vec![
            OffsetFetchRequestTopic::default().with_name(TopicName(text("seq"))).with_partition_indexes(vec![0]),
        ]));
        wire.extend(common::request_frame(ApiKey::OffsetFetch, 7, (2 * round + 1) as i32, &fetch));
    }
    stream.write_all(&wire).unwrap();
    for round in 0..20i64 {
        let (id, committed): (i32, OffsetCommitResponse) =
            common::decode_response(common::read_frame(&mut stream), ApiKey::OffsetCommit, 8);
        assert_eq!((id, committed.topics[0].partitions[0].error_code), ((2 * round) as i32, 0));
        let (id, fetched): (i32, OffsetFetchResponse) =
            common::decode_response(common::read_frame(&mut stream), ApiKey::OffsetFetch, 7);
        assert_eq!(id, (2 * round + 1) as i32);
        assert_eq!(fetched.topics[0].partitions[0].committed_offset, round, "the fetch sees the commit before it");
    }
}

#[test]
fn offsets_of_an_empty_group_expire_and_stay_expired_after_a_restart() {
    let options = || Options {
        group: corelog_net::group::classic::CoordinatorConfig {
            initial_rebalance_delay_ms: 0,
            offsets_retention_ms: 300,
            offsets_retention_check_interval_ms: 50,
            ..Default::default()
        },
        ..Options::default()
    };
    let broker = Broker::start(options());
    let mut client = broker.client();
    create_topic(&mut client, "aging", 1);
    assert_eq!(commit(&mut client, "old", "", -1, &[("aging", 0, 42)]), vec![0]);
    assert_eq!(fetch_offsets(&mut client, "old", "aging", &[0]), vec![(0, 42, "meta".into())]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fetch_offsets(&mut client, "old", "aging", &[0])[0].1 != -1 {
        assert!(std::time::Instant::now() < deadline, "the offset never expired");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(200)); // the tombstone is persisted in the background
    drop(client);
    let broker = Broker::start_in(broker.stop(), options());
    let mut client = broker.client();
    // Replayed from the tombstone (or, had it been lost, expired again at the first check).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fetch_offsets(&mut client, "old", "aging", &[0])[0].1 != -1 {
        assert!(std::time::Instant::now() < deadline, "the expired offset came back after the restart");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_internal_topic_refuses_produce_delete_growth_and_config_changes() {
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        CreatePartitionsRequest, CreatePartitionsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
        IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ProduceRequest, ProduceResponse,
    };
    let broker = Broker::start(Options::default());
    let mut client = broker.client();
    let internal = || TopicName(text("__consumer_offsets"));
    let records = Bytes::from(corelog_engine::batch::build_test_batch(1, b"forged group state", 1));
    let produce = ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(internal())
            .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(records))]),
    ]);
    let produced: ProduceResponse = client.call(ApiKey::Produce, 9, &produce);
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 17, "INVALID_TOPIC_EXCEPTION");
    let deleted: DeleteTopicsResponse =
        client.call(ApiKey::DeleteTopics, 4, &DeleteTopicsRequest::default().with_topic_names(vec![internal()]));
    assert_eq!(deleted.responses[0].error_code, 42);
    let grow = CreatePartitionsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![CreatePartitionsTopic::default().with_name(internal()).with_count(8)]);
    let grown: CreatePartitionsResponse = client.call(ApiKey::CreatePartitions, 3, &grow);
    assert_eq!(grown.results[0].error_code, 42);
    let alter = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(text("__consumer_offsets"))
            .with_configs(vec![
                AlterableConfig::default().with_name(text("retention.ms")).with_value(Some(text("1000"))),
            ]),
    ]);
    let altered: IncrementalAlterConfigsResponse = client.call(ApiKey::IncrementalAlterConfigs, 1, &alter);
    assert_eq!(altered.responses[0].error_code, 42);
    // Groups keep working.
    create_topic(&mut client, "still", 1);
    assert_eq!(commit(&mut client, "after", "", -1, &[("still", 0, 3)]), vec![0]);
}

#[test]
fn a_consumer_protocol_member_subscribed_by_regular_expression_gets_topics_created_later() {
    use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
    use kafka_protocol::messages::{
        ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
        ConsumerGroupHeartbeatResponse,
    };
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    let first = create_topic(&mut client, "metrics-cpu", 2);
    create_topic(&mut client, "logs", 1);
    let heartbeat = |client: &mut Client, epoch: i32, regex: Option<&str>, owned: Vec<TopicPartitions>| {
        let request = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(group("rx"))
            .with_member_id(text("member-1"))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(5_000)
            .with_subscribed_topic_regex(regex.map(|r| StrBytes::from_string(r.to_string())))
            .with_topic_partitions(Some(owned));
        let response: ConsumerGroupHeartbeatResponse = client.call(ApiKey::ConsumerGroupHeartbeat, 1, &request);
        response
    };
    let joined = heartbeat(&mut client, 0, Some("metrics-.*"), Vec::new());
    assert_eq!(joined.error_code, 0, "{:?}", joined.error_message);
    let assigned = joined.assignment.unwrap().topic_partitions;
    assert_eq!(assigned.iter().map(|t| t.topic_id).collect::<Vec<_>>(), [first], "only the matching topic");
    assert_eq!(assigned[0].partitions, vec![0, 1]);

    // A topic created later that matches is assigned at a later heartbeat (no new subscription sent).
    let second = create_topic(&mut client, "metrics-disk", 1);
    let as_owned = |assigned: &[kafka_protocol::messages::consumer_group_heartbeat_response::TopicPartitions]| {
        assigned
            .iter()
            .map(|t| TopicPartitions::default().with_topic_id(t.topic_id).with_partitions(t.partitions.clone()))
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (mut epoch, mut owned) = (joined.member_epoch, assigned);
    while !owned.iter().any(|t| t.topic_id == second) {
        assert!(std::time::Instant::now() < deadline, "metrics-disk was never assigned: {owned:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let response = heartbeat(&mut client, epoch, None, as_owned(&owned));
        assert_eq!(response.error_code, 0, "{:?}", response.error_message);
        epoch = response.member_epoch;
        if let Some(assignment) = response.assignment {
            owned = assignment.topic_partitions;
        }
    }

    let described: ConsumerGroupDescribeResponse = client.call(
        ApiKey::ConsumerGroupDescribe,
        1,
        &ConsumerGroupDescribeRequest::default().with_group_ids(vec![group("rx")]),
    );
    let member = &described.groups[0].members[0];
    assert_eq!(member.subscribed_topic_regex.as_deref(), Some("metrics-.*"));

    let invalid = heartbeat(&mut client, 0, Some("metrics-("), Vec::new());
    assert_eq!(invalid.error_code, 128, "INVALID_REGULAR_EXPRESSION");

    // A subscription too large to store (over 64 KiB of names) is refused; the member and the
    // connection carry on.
    let huge: Vec<kafka_protocol::messages::TopicName> =
        (0..1_000).map(|i| kafka_protocol::messages::TopicName(text(&format!("{i:0>100}")))).collect();
    let request = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(group("big"))
        .with_member_id(text("member-2"))
        .with_member_epoch(0)
        .with_rebalance_timeout_ms(5_000)
        .with_subscribed_topic_names(Some(huge))
        .with_topic_partitions(Some(Vec::new()));
    let refused: ConsumerGroupHeartbeatResponse = client.call(ApiKey::ConsumerGroupHeartbeat, 1, &request);
    assert_eq!(refused.error_code, 42, "INVALID_REQUEST: {:?}", refused.error_message);
    let still = heartbeat(&mut client, epoch, None, as_owned(&owned));
    assert_eq!(still.error_code, 0, "{:?}", still.error_message);
}
