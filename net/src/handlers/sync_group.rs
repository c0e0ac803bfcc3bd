//! SyncGroup (key 14), v0–v5: the leader's assignment in, each member's share out; forwarded
//! to the group's coordinator shard, where members wait for the leader.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{GroupAnswer, GroupCall, ShardBroker};
use crate::group::classic::{SyncOutcome, SyncRequest, error_code};

pub async fn handle(broker: &ShardBroker, request: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let group_id = request.group_id.0.to_string();
    let sync = SyncRequest {
        group_id: group_id.clone(),
        generation_id: request.generation_id,
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        protocol_type: request.protocol_type.as_ref().map(|p| p.to_string()),
        protocol_name: request.protocol_name.as_ref().map(|p| p.to_string()),
        assignments: request.assignments.iter().map(|a| (a.member_id.to_string(), a.assignment.clone())).collect(),
    };
    let outcome = match broker.group_call(&group_id, GroupCall::Sync { request: sync }).await {
        Ok(GroupAnswer::Sync(outcome)) => outcome,
        _ => SyncOutcome { error_code: error_code::COORDINATOR_NOT_AVAILABLE, ..SyncOutcome::default() },
    };
    let response = SyncGroupResponse::default().with_error_code(outcome.error_code).with_assignment(outcome.assignment);
    if version >= 5 {
        response
            .with_protocol_type(outcome.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(outcome.protocol_name.map(StrBytes::from_string))
    } else {
        response
    }
}
