//! ConsumerGroupDescribe (key 69), v0–v1: groups of the consumer protocol (KIP-848) with
//! their epochs, assignor and members (subscriptions, current and target assignments).
//! A group that is not one gets GROUP_ID_NOT_FOUND.

use kafka_protocol::messages::consumer_group_describe_response::{Assignment, DescribedGroup, Member, TopicPartitions};
use kafka_protocol::messages::{ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{GroupAnswer, GroupCall, ShardBroker};
use crate::group::classic::error_code;
use crate::group::consumer;
use crate::handlers::metadata::{OPERATIONS_NOT_REQUESTED, topic_uuid};
use crate::registry::TopicMap;

fn assignment(topics: &TopicMap, assigned: consumer::Assignment) -> Assignment {
    Assignment::default().with_topic_partitions(
        assigned
            .into_iter()
            .map(|(topic, partitions)| {
                let id = topics.get(&topic).map(topic_uuid).unwrap_or_default();
                TopicPartitions::default()
                    .with_topic_id(id)
                    .with_topic_name(TopicName(StrBytes::from_string(topic)))
                    .with_partitions(partitions.into_iter().collect())
            })
            .collect(),
    )
}

pub async fn handle(
    broker: &ShardBroker,
    request: ConsumerGroupDescribeRequest,
    version: i16,
) -> ConsumerGroupDescribeResponse {
    let topics = broker.registry.snapshot();
    let mut groups = Vec::with_capacity(request.group_ids.len());
    for group_id in &request.group_ids {
        let described = DescribedGroup::default()
            .with_group_id(group_id.clone())
            .with_authorized_operations(OPERATIONS_NOT_REQUESTED);
        let call = GroupCall::ConsumerDescribe { group_id: group_id.0.to_string() };
        groups.push(match broker.group_call(&group_id.0, call).await {
            Ok(GroupAnswer::ConsumerDescribed(Some(group))) => described
                .with_group_state(StrBytes::from_static_str(group.state))
                .with_group_epoch(group.epoch)
                .with_assignment_epoch(group.assignment_epoch)
                .with_assignor_name(StrBytes::from_string(group.assignor))
                .with_members(
                    group
                        .members
                        .into_iter()
                        .map(|m| {
                            let member = Member::default()
                                .with_member_id(StrBytes::from_string(m.member_id))
                                .with_instance_id(m.instance_id.map(StrBytes::from_string))
                                .with_rack_id(m.rack_id.map(StrBytes::from_string))
                                .with_member_epoch(m.epoch)
                                .with_client_id(StrBytes::from_string(m.client_id))
                                .with_client_host(StrBytes::from_string(m.client_host))
                                .with_subscribed_topic_names(
                                    m.subscribed.into_iter().map(|t| TopicName(StrBytes::from_string(t))).collect(),
                                )
                                .with_subscribed_topic_regex(m.subscribed_regex.map(StrBytes::from_string))
                                .with_assignment(assignment(&topics, m.assigned))
                                .with_target_assignment(assignment(&topics, m.target));
                            // v1: 1 = a member of the consumer protocol.
                            if version >= 1 { member.with_member_type(1) } else { member }
                        })
                        .collect(),
                ),
            Ok(_) => described
                .with_error_code(error_code::GROUP_ID_NOT_FOUND)
                .with_error_message(Some(StrBytes::from_string(format!("{} is not a consumer group", group_id.0)))),
            Err(code) => described.with_error_code(code),
        });
    }
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}
