//! Produce (key 0), v3–v11: one RecordBatch v2 per partition, validated, stamped and appended
//! on the partition's owner shard. `acks=0` gets no response at all (as in Kafka); `acks=1`
//! and `acks=-1` are answered once the batch is acknowledged by the partition's durability
//! policy (after its fdatasync under `flush = always`), or REQUEST_TIMED_OUT after
//! `timeout_ms`. Errors are per partition. Idempotent batches (producer id, epoch, sequence)
//! are checked by the owner; a retry of one of the last five is answered with its offsets.
//!
//! Two stages, so that a connection can pipeline: [`append`] puts every partition's batch in
//! its log (the connection runs this in request order, so one producer's batches keep their
//! order), and [`PendingProduce::finish`] waits for the acknowledgements (run later, while
//! the connection already appends the next requests).
//!
//! Runs on the connection's shard; partitions are appended concurrently on their owners.

use std::time::Duration;

use bytes::BytesMut;
use corelog_engine::log::TopicPartition;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{AppendReply, ShardBroker, ShardRequest, ShardResponse, error_code};

/// A produce whose batches are in their logs, waiting to be acknowledged.
pub struct PendingProduce {
    version: i16,
    /// No response at all (`acks=0`).
    silent: bool,
    timeout: Duration,
    appended: Vec<(TopicPartition, Result<AppendReply, i16>)>,
}

/// Stage one: appends every partition's batch on its owner (concurrently across partitions).
pub async fn append(broker: &ShardBroker, request: ProduceRequest, version: i16) -> PendingProduce {
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0).max(1));
    let mut appends = Vec::new();
    for topic in &request.topic_data {
        for data in &topic.partition_data {
            let partition = TopicPartition::new(topic.name.0.to_string(), data.index);
            let records = data.records.clone();
            appends.push(async move {
                let result = match records {
                    // Only the group coordinator writes its internal topic (Kafka: INVALID_TOPIC).
                    _ if partition.topic == crate::group::OFFSETS_TOPIC => Err(error_code::INVALID_TOPIC_EXCEPTION),
                    None => Err(error_code::INVALID_RECORD),
                    Some(records) => {
                        // The one copy on intake: the log stamps offsets in place.
                        let batch = BytesMut::from(&records[..]);
                        let request = ShardRequest::Append { partition: partition.clone(), batch };
                        match broker.partition_call(&partition, request).await {
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
    let appended = futures_util::future::join_all(appends).await;
    PendingProduce { version, silent: request.acks == 0, timeout, appended }
}

impl PendingProduce {
    /// Whether the request gets a response (`acks` is not 0).
    pub fn responds(&self) -> bool {
        !self.silent
    }

    /// Stage two: waits until every appended batch is acknowledged by its partition's policy
    /// (bounded by the request's timeout) and builds the response.
    pub async fn finish(self, broker: &ShardBroker) -> ProduceResponse {
        let timeout = self.timeout;
        let waits = self.appended.into_iter().map(|(partition, appended)| async move {
            let result = match appended {
                Ok(reply) => {
                    let next_offset = reply.last_offset + 1;
                    let request = ShardRequest::WaitDurable { partition: partition.clone(), next_offset, timeout };
                    match broker.partition_call(&partition, request).await {
                        Ok(ShardResponse::Acknowledged(Ok(()))) => Ok(reply),
                        Ok(ShardResponse::Acknowledged(Err(code))) | Err(code) => Err(code),
                        Ok(_) => Err(error_code::KAFKA_STORAGE_ERROR),
                    }
                }
                Err(code) => Err(code),
            };
            (partition, result)
        });
        let results = futures_util::future::join_all(waits).await;
        for (_, result) in &results {
            if let Err(code) = result {
                broker.metrics.partition_error(ApiKey::Produce as i16, *code);
            }
        }
        response(self.version, results)
    }
}

fn response(version: i16, results: Vec<(TopicPartition, Result<AppendReply, i16>)>) -> ProduceResponse {
    let mut responses: Vec<TopicProduceResponse> = Vec::new();
    for (partition, result) in results {
        let mut response = PartitionProduceResponse::default().with_index(partition.partition);
        response = match result {
            Ok(reply) => {
                let response = response.with_base_offset(reply.base_offset);
                if version >= 5 { response.with_log_start_offset(reply.log_start_offset) } else { response }
            }
            Err(code) => response.with_error_code(code).with_base_offset(-1),
        };
        match responses.iter_mut().find(|t| t.name.0.as_str() == partition.topic) {
            Some(topic) => topic.partition_responses.push(response),
            None => responses.push(
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_string(partition.topic)))
                    .with_partition_responses(vec![response]),
            ),
        }
    }
    ProduceResponse::default().with_responses(responses)
}
