//! DescribeGroups (key 15), v0–v5: state, protocol and members (with their metadata and
//! assignments) of each group, from its coordinator shard. An unknown group is "Dead".

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{GroupAnswer, GroupCall, ShardBroker};
use crate::handlers::metadata::OPERATIONS_NOT_REQUESTED;

pub async fn handle(broker: &ShardBroker, request: DescribeGroupsRequest, version: i16) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(request.groups.len());
    for group_id in &request.groups {
        let mut described = DescribedGroup::default().with_group_id(group_id.clone());
        if version >= 3 {
            described = described.with_authorized_operations(OPERATIONS_NOT_REQUESTED);
        }
        let call = GroupCall::Describe { group_id: group_id.0.to_string() };
        described = match broker.group_call(&group_id.0, call).await {
            Ok(GroupAnswer::Described(Some(group))) => {
                let members = group
                    .members
                    .into_iter()
                    .map(|m| {
                        let member = DescribedGroupMember::default()
                            .with_member_id(StrBytes::from_string(m.member_id))
                            .with_client_id(StrBytes::from_string(m.client_id))
                            .with_client_host(StrBytes::from_string(m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment);
                        if version >= 4 {
                            member.with_group_instance_id(m.instance_id.map(StrBytes::from_string))
                        } else {
                            member
                        }
                    })
                    .collect();
                described
                    .with_group_state(StrBytes::from_static_str(group.state))
                    .with_protocol_type(StrBytes::from_string(group.protocol_type))
                    .with_protocol_data(StrBytes::from_string(group.protocol))
                    .with_members(members)
            }
            Ok(_) => described.with_group_state(StrBytes::from_static_str("Dead")),
            Err(code) => described.with_error_code(code),
        };
        groups.push(described);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}
