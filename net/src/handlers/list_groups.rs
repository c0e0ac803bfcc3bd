//! ListGroups (key 16), v0–v5: every group of every shard, filtered by state (v4+) and type
//! (v5+: "classic" or "consumer").

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::ShardBroker;

pub async fn handle(broker: &ShardBroker, request: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    let wanted_state = |state: &str| {
        request.states_filter.is_empty() || request.states_filter.iter().any(|s| s.eq_ignore_ascii_case(state))
    };
    let wanted_type = |group_type: &str| {
        request.types_filter.is_empty() || request.types_filter.iter().any(|t| t.eq_ignore_ascii_case(group_type))
    };
    let groups = broker
        .list_groups()
        .await
        .into_iter()
        .filter(|g| wanted_type(g.group_type) && wanted_state(g.state))
        .map(|g| {
            let mut group = ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(g.group_id)))
                .with_protocol_type(StrBytes::from_string(g.protocol_type));
            if version >= 4 {
                group = group.with_group_state(StrBytes::from_static_str(g.state));
            }
            if version >= 5 {
                group = group.with_group_type(StrBytes::from_static_str(g.group_type));
            }
            group
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}
