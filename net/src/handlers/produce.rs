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
//!
//! Intake copies nothing: each partition's records become their own mutable piece of the
//! request frame ([`split_batches`]), which the owner validates, stamps in place and keeps.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
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
/// `body` is the request body the request was decoded from (see [`split_batches`]).
pub async fn append(broker: &ShardBroker, request: ProduceRequest, version: i16, body: Bytes) -> PendingProduce {
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0).max(1));
    let silent = request.acks == 0;
    let appends = split_batches(request, body).into_iter().map(|(partition, batch)| async move {
        let result = match batch {
            // Only the group coordinator writes its internal topic (Kafka: INVALID_TOPIC).
            _ if partition.topic == crate::group::OFFSETS_TOPIC => Err(error_code::INVALID_TOPIC_EXCEPTION),
            None => Err(error_code::INVALID_RECORD),
            Some(batch) => {
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
    let appended = futures_util::future::join_all(appends).await;
    PendingProduce { version, silent, timeout, appended }
}

/// Each partition's records (None when null), in request order, as a mutable `BytesMut` the
/// log can stamp in place. `request` was decoded from `body`, so its records are slices of
/// it: once the request is dropped and `body` is the allocation's only handle, the body
/// becomes mutable and is cut into disjoint pieces, one per partition, without a copy. When
/// it cannot be (another handle to the frame is alive, or a slice lies elsewhere), each
/// batch is copied instead — correct, only slower.
pub fn split_batches(request: ProduceRequest, body: Bytes) -> Vec<(TopicPartition, Option<BytesMut>)> {
    let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
    let mut batches: Vec<(TopicPartition, Option<Bytes>)> = Vec::new();
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        for data in topic.partition_data {
            batches.push((TopicPartition::new(name.clone(), data.index), data.records));
        }
    }
    // (position in the body, length, index in `batches`) of every slice of the body.
    let mut ranges: Vec<(usize, usize, usize)> = Vec::with_capacity(batches.len());
    for (index, (_, records)) in batches.iter().enumerate() {
        if let Some(records) = records.as_ref().filter(|r| !r.is_empty()) {
            let at = records.as_ptr() as usize;
            if at >= start && at + records.len() <= end {
                ranges.push((at - start, records.len(), index));
            }
        }
    }
    ranges.sort_unstable();
    let disjoint = ranges.windows(2).all(|pair| pair[0].0 + pair[0].1 <= pair[1].0);
    let mut pieces: Vec<Option<BytesMut>> = (0..batches.len()).map(|_| None).collect();
    if disjoint && !ranges.is_empty() {
        // Drop the request's handles to the body first: only then is the body unique.
        for &(_, _, index) in &ranges {
            batches[index].1 = None;
        }
        match body.try_into_mut() {
            Ok(mut rest) => {
                let mut consumed = 0usize;
                for &(at, len, index) in &ranges {
                    bytes::Buf::advance(&mut rest, at - consumed);
                    pieces[index] = Some(rest.split_to(len));
                    consumed = at + len;
                }
            }
            Err(body) => {
                for &(at, len, index) in &ranges {
                    pieces[index] = Some(BytesMut::from(&body[at..at + len]));
                }
            }
        }
    }
    batches
        .into_iter()
        .zip(pieces)
        .map(|((partition, records), piece)| (partition, piece.or_else(|| records.map(|r| BytesMut::from(&r[..])))))
        .collect()
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

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::protocol::{Decodable, Encodable};

    use super::*;

    const VERSION: i16 = 9;

    /// A Produce body with two topics: `a` partitions 0 (`aaaa…`) and 1 (null), `b` partition 3
    /// (`bbbb…`), frozen from a fresh buffer as a received frame is.
    fn body() -> Bytes {
        let partition = |index: i32, records: Option<&'static [u8]>| {
            PartitionProduceData::default().with_index(index).with_records(records.map(Bytes::from_static))
        };
        let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(1000).with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("a")))
                .with_partition_data(vec![partition(0, Some(&[b'a'; 100])), partition(1, None)]),
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("b")))
                .with_partition_data(vec![partition(3, Some(&[b'b'; 50]))]),
        ]);
        let mut out = BytesMut::new();
        request.encode(&mut out, VERSION).expect("encodes");
        out.freeze()
    }

    fn decode(body: &Bytes) -> ProduceRequest {
        ProduceRequest::decode(&mut body.clone(), VERSION).expect("decodes")
    }

    fn check(batches: &[(TopicPartition, Option<BytesMut>)]) {
        let summary: Vec<_> = batches.iter().map(|(p, b)| (p.topic.as_str(), p.partition, b.as_deref())).collect();
        assert_eq!(summary, vec![("a", 0, Some(&[b'a'; 100][..])), ("a", 1, None), ("b", 3, Some(&[b'b'; 50][..]))]);
    }

    #[test]
    fn a_unique_body_is_cut_into_its_batches_in_place() {
        let body = body();
        let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
        let request = decode(&body);
        let batches = split_batches(request, body);
        check(&batches);
        for (_, batch) in &batches {
            if let Some(batch) = batch {
                let at = batch.as_ptr() as usize;
                assert!(at >= start && at + batch.len() <= end, "a batch was copied out of the body");
            }
        }
        // Each piece is its own: stamping one leaves the others as they were.
        let mut batches = batches;
        if let Some(batch) = batches[0].1.as_mut() {
            batch[..8].copy_from_slice(&7i64.to_be_bytes());
        }
        assert_eq!(batches[2].1.as_deref(), Some(&[b'b'; 50][..]));
    }

    #[test]
    fn a_shared_body_is_copied_with_the_same_batches() {
        let body = body();
        let other_handle = body.clone();
        let request = decode(&body);
        let batches = split_batches(request, body);
        check(&batches);
        let (start, end) = (other_handle.as_ptr() as usize, other_handle.as_ptr() as usize + other_handle.len());
        for (_, batch) in batches.iter().filter_map(|(p, b)| b.as_ref().map(|b| (p, b))) {
            let at = batch.as_ptr() as usize;
            assert!(at + batch.len() <= start || at >= end, "a batch aliases a body someone else holds");
        }
    }
}
