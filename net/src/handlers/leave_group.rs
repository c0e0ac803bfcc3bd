//! LeaveGroup (key 13), v0–v5: one member (v0–v2) or a batch, dynamic or static (v3+).

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use crate::broker::{GroupAnswer, GroupCall, ShardBroker};
use crate::group::classic::{MemberRef, error_code};

pub async fn handle(broker: &ShardBroker, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let group_id = request.group_id.0.to_string();
    let members: Vec<MemberRef> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| MemberRef {
                member_id: m.member_id.to_string(),
                instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
                generation_id: -1,
            })
            .collect()
    } else {
        vec![MemberRef { member_id: request.member_id.to_string(), instance_id: None, generation_id: -1 }]
    };
    let codes = match broker
        .group_call(&group_id, GroupCall::Leave { group_id: group_id.clone(), members: members.clone() })
        .await
    {
        Ok(GroupAnswer::Codes(codes)) => codes,
        _ => return LeaveGroupResponse::default().with_error_code(error_code::COORDINATOR_NOT_AVAILABLE),
    };
    if version < 3 {
        return LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(error_code::NONE));
    }
    let responses = members
        .into_iter()
        .zip(codes)
        .map(|(member, code)| {
            MemberResponse::default()
                .with_member_id(kafka_protocol::protocol::StrBytes::from_string(member.member_id))
                .with_group_instance_id(member.instance_id.map(kafka_protocol::protocol::StrBytes::from_string))
                .with_error_code(code)
        })
        .collect();
    LeaveGroupResponse::default().with_members(responses)
}
