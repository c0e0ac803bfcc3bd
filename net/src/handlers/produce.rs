//! Produce (key 0), v3–v11: one RecordBatch v2 per partition, validated, stamped and appended
//! on the partition's owner shard. `acks=0` gets no response at all (as in Kafka); `acks=1`
//! and `acks=-1` are answered once the batch is acknowledged by the partition's durability
//! policy (after its fdatasync under `flush = always`), or REQUEST_TIMED_OUT after
//! `timeout_ms`. Errors are per partition.
//!
//! Runs on the connection's shard; partitions are appended concurrently on their owners.
//! Not yet: idempotent and transactional produce (InitProducerId is not advertised, so
//! clients do not send producer ids).

use std::time::Duration;

use bytes::BytesMut;
use corelog_engine::log::TopicPartition;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use crate::broker::{ShardBroker, ShardRequest, ShardResponse, error_code};

/// The response, and whether to send it (`acks=0` sends nothing).
pub async fn handle(broker: &ShardBroker, request: ProduceRequest, version: i16) -> (ProduceResponse, bool) {
    let wait = request.acks != 0;
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0).max(1));
    let mut appends = Vec::new();
    for topic in &request.topic_data {
        for data in &topic.partition_data {
            let partition = TopicPartition::new(topic.name.0.to_string(), data.index);
            let records = data.records.clone();
            appends.push(async move {
                let result = match records {
                    None => Err(error_code::INVALID_RECORD),
                    Some(records) => {
                        // The one copy on intake: the log stamps offsets in place.
                        let batch = BytesMut::from(&records[..]);
                        match broker
                            .partition_call(
                                &partition,
                                ShardRequest::Append { partition: partition.clone(), batch, wait, timeout },
                            )
                            .await
                        {
                            Ok(ShardResponse::Appended(result)) => result,
                            Ok(_) => Err(error_code::KAFKA_STORAGE_ERROR),
                            Err(code) => Err(code),
                        }
                    }
                };
                (partition, result)
            });
        }
    }
    let results = futures_util::future::join_all(appends).await;
    let mut responses: Vec<TopicProduceResponse> = Vec::new();
    for (partition, result) in results {
        let mut response = PartitionProduceResponse::default().with_index(partition.partition);
        response = match result {
            Ok((base_offset, log_start_offset)) => {
                let response = response.with_base_offset(base_offset);
                if version >= 5 { response.with_log_start_offset(log_start_offset) } else { response }
            }
            Err(code) => response.with_error_code(code).with_base_offset(-1),
        };
        match responses.iter_mut().find(|t| t.name.0.as_str() == partition.topic) {
            Some(topic) => topic.partition_responses.push(response),
            None => responses.push(
                TopicProduceResponse::default()
                    .with_name(kafka_protocol::messages::TopicName(kafka_protocol::protocol::StrBytes::from_string(
                        partition.topic,
                    )))
                    .with_partition_responses(vec![response]),
            ),
        }
    }
    (ProduceResponse::default().with_responses(responses), wait)
}
