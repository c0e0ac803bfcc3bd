//! DeleteGroups (key 42), v0–v2: an empty group and its committed offsets are removed
//! (tombstones in `__consumer_offsets`); a group with members gets NON_EMPTY_GROUP, an
//! unknown one GROUP_ID_NOT_FOUND.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use crate::broker::{GroupAnswer, GroupCall, ShardBroker};
use crate::group::classic::error_code;

pub async fn handle(broker: &ShardBroker, request: DeleteGroupsRequest, _version: i16) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in &request.groups_names {
        let partition = broker.group_partition(&group_id.0);
        let call = GroupCall::Delete { group_id: group_id.0.to_string(), partition };
        let code = match broker.group_call(&group_id.0, call).await {
            Ok(GroupAnswer::Code(code)) => code,
            Ok(_) => error_code::COORDINATOR_NOT_AVAILABLE,
            Err(code) => code,
        };
        results.push(DeletableGroupResult::default().with_group_id(group_id.clone()).with_error_code(code));
    }
    DeleteGroupsResponse::default().with_results(results)
}
