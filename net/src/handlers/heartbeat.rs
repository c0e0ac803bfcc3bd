//! Heartbeat (key 12), v0–v4: keeps a member's session alive; REBALANCE_IN_PROGRESS tells it
//! to rejoin.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use crate::broker::{GroupAnswer, GroupCall, ShardBroker};
use crate::group::classic::{MemberRef, error_code};

pub async fn handle(broker: &ShardBroker, request: HeartbeatRequest, _version: i16) -> HeartbeatResponse {
    let group_id = request.group_id.0.to_string();
    let who = MemberRef {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        generation_id: request.generation_id,
    };
    let code = match broker.group_call(&group_id, GroupCall::Heartbeat { group_id: group_id.clone(), who }).await {
        Ok(GroupAnswer::Code(code)) => code,
        _ => error_code::COORDINATOR_NOT_AVAILABLE,
    };
    HeartbeatResponse::default().with_error_code(code)
}
