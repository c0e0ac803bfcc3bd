//! FindCoordinator (key 10), v0–v6: every group's coordinator is this broker (the shard that
//! owns the group's `__consumer_offsets` partition answers it; any shard forwards to it).
//! Batched keys (v4+) get one answer each. Transaction coordinators do not exist yet:
//! COORDINATOR_NOT_AVAILABLE.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::ShardBroker;
use crate::group::OFFSETS_TOPIC;
use crate::group::classic::error_code::{COORDINATOR_NOT_AVAILABLE, INVALID_GROUP_ID, NONE};

const GROUP: i8 = 0;

pub async fn handle(broker: &ShardBroker, request: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let settings = &broker.settings;
    let ready = broker.registry.snapshot().contains_key(OFFSETS_TOPIC);
    let answer = |key: &str| -> (i16, Option<&'static str>) {
        if request.key_type != GROUP {
            (COORDINATOR_NOT_AVAILABLE, Some("transactions are not supported yet"))
        } else if key.is_empty() {
            (INVALID_GROUP_ID, Some("the group id is empty"))
        } else if !ready {
            (COORDINATOR_NOT_AVAILABLE, Some("__consumer_offsets is being created"))
        } else {
            (NONE, None)
        }
    };
    let host = StrBytes::from_string(settings.advertised.ip().to_string());
    let port = i32::from(settings.advertised.port());
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let (code, message) = answer(key);
                let coordinator = Coordinator::default()
                    .with_key(key.clone())
                    .with_error_code(code)
                    .with_error_message(message.map(StrBytes::from_static_str));
                if code == NONE {
                    coordinator.with_node_id(BrokerId(settings.node_id)).with_host(host.clone()).with_port(port)
                } else {
                    coordinator.with_node_id(BrokerId(-1)).with_port(-1)
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let (code, message) = answer(&request.key);
    let response = FindCoordinatorResponse::default().with_error_code(code);
    let response =
        if version >= 1 { response.with_error_message(message.map(StrBytes::from_static_str)) } else { response };
    if code == NONE {
        response.with_node_id(BrokerId(settings.node_id)).with_host(host).with_port(port)
    } else {
        response.with_node_id(BrokerId(-1)).with_port(-1)
    }
}
