//! InitProducerId (key 22), v0–v5, for idempotent producers (no transactional id): a new
//! producer id with epoch 0, or, when the client passes its current id and epoch (v3+,
//! KIP-360), the same id with the next epoch. Ids come from the controller shard and are
//! persisted in the topic registry before being handed out. Transactional ids are refused
//! (transactions are not implemented).

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::broker::{ShardBroker, error_code};

pub async fn handle(broker: &ShardBroker, request: InitProducerIdRequest, _version: i16) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default();
    if request.transactional_id.as_ref().is_some_and(|id| !id.0.is_empty()) {
        return response.with_error_code(error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }
    let (current_id, current_epoch) = (request.producer_id.0, request.producer_epoch);
    if current_id >= 0 && (0..i16::MAX - 1).contains(&current_epoch) {
        return response.with_producer_id(ProducerId(current_id)).with_producer_epoch(current_epoch + 1);
    }
    match broker.allocate_producer_id().await {
        Ok(id) => response.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(message) => {
            tracing::error!(%message, "cannot allocate a producer id");
            response.with_error_code(error_code::COORDINATOR_NOT_AVAILABLE)
        }
    }
}
