//! JoinGroup (key 11), v0–v9: forwarded to the group's coordinator shard, where it may wait
//! for the rest of the group (the rebalance) before it is answered. v4+ members without an
//! id get one with MEMBER_ID_REQUIRED first (KIP-394).

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{GroupAnswer, GroupCall, ShardBroker};
use crate::connection::ClientInfo;
use crate::group::classic::{JoinOutcome, JoinRequest};

pub async fn handle(
    broker: &ShardBroker,
    request: JoinGroupRequest,
    version: i16,
    client: &ClientInfo,
) -> JoinGroupResponse {
    let group_id = request.group_id.0.to_string();
    let join = JoinRequest {
        group_id: group_id.clone(),
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        client_id: client.client_id.clone(),
        client_host: client.host.clone(),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version >= 1 { request.rebalance_timeout_ms } else { request.session_timeout_ms },
        protocol_type: request.protocol_type.to_string(),
        protocols: request.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect(),
        version,
    };
    let partition = broker.group_partition(&group_id);
    let outcome = match broker.group_call(&group_id, GroupCall::Join { request: join, partition }).await {
        Ok(GroupAnswer::Join(outcome)) => outcome,
        Ok(_) | Err(_) => JoinOutcome {
            error_code: crate::group::classic::error_code::COORDINATOR_NOT_AVAILABLE,
            generation_id: -1,
            member_id: request.member_id.to_string(),
            ..JoinOutcome::default()
        },
    };
    let text = |s: Option<String>| s.map(StrBytes::from_string);
    let members = outcome
        .members
        .into_iter()
        .map(|m| {
            let member = JoinGroupResponseMember::default()
                .with_member_id(StrBytes::from_string(m.member_id))
                .with_metadata(m.metadata);
            if version >= 5 { member.with_group_instance_id(text(m.instance_id)) } else { member }
        })
        .collect();
    let mut response = JoinGroupResponse::default()
        .with_error_code(outcome.error_code)
        .with_generation_id(outcome.generation_id)
        .with_leader(StrBytes::from_string(outcome.leader))
        .with_member_id(StrBytes::from_string(outcome.member_id))
        .with_members(members);
    response = if version >= 7 {
        response.with_protocol_type(text(outcome.protocol_type)).with_protocol_name(text(outcome.protocol_name))
    } else {
        response.with_protocol_name(Some(StrBytes::from_string(outcome.protocol_name.unwrap_or_default())))
    };
    if version >= 9 {
        response = response.with_skip_assignment(outcome.skip_assignment);
    }
    response
}
