//! DescribeCluster (key 60), v0–v2: the cluster id, this broker (the only one, also the
//! controller) and its advertised address.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::ShardBroker;
use crate::handlers::metadata::OPERATIONS_NOT_REQUESTED;

pub async fn handle(broker: &ShardBroker, request: DescribeClusterRequest, version: i16) -> DescribeClusterResponse {
    let settings = &broker.settings;
    let node = DescribeClusterBroker::default()
        .with_broker_id(BrokerId(settings.node_id))
        .with_host(StrBytes::from_string(settings.advertised.ip().to_string()))
        .with_port(i32::from(settings.advertised.port()));
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(broker.registry.cluster_id().to_string()))
        .with_controller_id(BrokerId(settings.node_id))
        .with_brokers(vec![node])
        .with_cluster_authorized_operations(OPERATIONS_NOT_REQUESTED);
    if version >= 1 {
        // One node is both the broker and the controller, whichever endpoints are asked for.
        response = response.with_endpoint_type(request.endpoint_type);
    }
    response
}
