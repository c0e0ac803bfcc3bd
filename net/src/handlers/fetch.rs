//! Fetch (key 1), v4–v16: reads every requested partition from its owner shard, waiting up
//! to `max_wait_ms` until `min_bytes` are available, within `max_bytes` and each partition's
//! `partition_max_bytes` (the first batch of the first partition is returned whole even when
//! larger, as in Kafka). Offsets below the log start or beyond the log end get
//! OFFSET_OUT_OF_RANGE; high watermark, last stable offset and log start offset are reported.
//!
//! While fewer than `min_bytes` are there, the fetch waits on each partition's owner for its
//! high watermark to move (woken by the append or the fsync that moves it), then reads again.
//!
//! Not yet (issue 3): incremental fetch sessions (session id 0 is returned, which clients
//! treat as "no session" and keep sending full requests) and the hand-written zero-copy
//! response (records are copied into the response here).

use std::time::{Duration, Instant};

use bytes::Bytes;
use corelog_engine::log::TopicPartition;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};

use crate::broker::{ShardBroker, ShardRequest, ShardResponse, error_code};
use crate::handlers::metadata::topic_uuid;

struct Wanted {
    topic_index: usize,
    partition: TopicPartition,
    offset: i64,
    max_bytes: usize,
}

/// Longest long poll honoured, whatever `max_wait_ms` asks (a bound on what one request holds).
const MAX_WAIT_MAX: Duration = Duration::from_secs(30);

pub async fn handle(broker: &ShardBroker, request: FetchRequest, version: i16) -> FetchResponse {
    let started = Instant::now();
    let max_wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0)).min(MAX_WAIT_MAX);
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let max_bytes = usize::try_from(request.max_bytes).unwrap_or(0).clamp(1, broker.settings.fetch_max_bytes);
    let snapshot = broker.registry.snapshot();
    // Resolve names (v12 and below) or topic ids (v13+).
    let mut topics: Vec<(TopicName, uuid::Uuid, Option<String>)> = Vec::new();
    let mut wanted = Vec::new();
    for topic in &request.topics {
        let name = if version >= 13 {
            snapshot.values().find(|r| topic_uuid(r) == topic.topic_id).map(|r| r.name.clone())
        } else {
            Some(topic.topic.0.to_string())
        };
        let topic_index = topics.len();
        topics.push((topic.topic.clone(), topic.topic_id, name.clone()));
        for partition in &topic.partitions {
            wanted.push(Wanted {
                topic_index,
                partition: TopicPartition::new(name.clone().unwrap_or_default(), partition.partition),
                offset: partition.fetch_offset,
                max_bytes: usize::try_from(partition.partition_max_bytes).unwrap_or(0),
            });
        }
    }
    loop {
        let mut budget = max_bytes;
        let mut results = Vec::with_capacity(wanted.len());
        let mut total = 0usize;
        for want in &wanted {
            let result = if topics[want.topic_index].2.is_none() {
                Err(if version >= 13 { error_code::UNKNOWN_TOPIC_ID } else { error_code::UNKNOWN_TOPIC_OR_PARTITION })
            } else if budget == 0 && total > 0 {
                Ok(None)
            } else {
                let limit = want.max_bytes.min(budget).max(1);
                let request =
                    ShardRequest::Read { partition: want.partition.clone(), offset: want.offset, max_bytes: limit };
                match broker.partition_call(&want.partition, request).await {
                    Ok(ShardResponse::Read(Ok(reply))) => Ok(Some(reply)),
                    Ok(ShardResponse::Read(Err(code))) => Err(code),
                    Ok(_) => Err(error_code::KAFKA_STORAGE_ERROR),
                    Err(code) => Err(code),
                }
            };
            if let Ok(Some(reply)) = &result {
                total += reply.records.len();
                budget = budget.saturating_sub(reply.records.len());
            }
            results.push(result);
        }
        let errors = results.iter().any(Result::is_err);
        let remaining = max_wait.saturating_sub(started.elapsed());
        if total >= min_bytes.max(1) || errors || remaining.is_zero() {
            return respond(version, &topics, &wanted, results);
        }
        if !wait_for_data(broker, &wanted, &results, remaining).await {
            return respond(version, &topics, &wanted, results);
        }
    }
}

/// Waits until one of the partitions has data beyond what this pass saw, or `remaining`
/// has passed. False when a wait failed (partition gone, shard stopping): answer now.
async fn wait_for_data(
    broker: &ShardBroker,
    wanted: &[Wanted],
    results: &[Result<Option<crate::broker::ReadReply>, i16>],
    remaining: Duration,
) -> bool {
    let waits: Vec<_> = wanted
        .iter()
        .zip(results)
        .filter_map(|(want, result)| {
            let seen = match result {
                Ok(Some(reply)) => reply.offsets.high_watermark.max(want.offset),
                _ => return None,
            };
            let request =
                ShardRequest::WaitForData { partition: want.partition.clone(), offset: seen, timeout: remaining };
            Some(Box::pin(broker.partition_call(&want.partition, request)))
        })
        .collect();
    if waits.is_empty() {
        glommio::timer::sleep(remaining).await;
        return true;
    }
    futures_lite::future::or(
        async { matches!(futures_util::future::select_all(waits).await.0, Ok(ShardResponse::Done(Ok(())))) },
        async {
            glommio::timer::sleep(remaining).await;
            true
        },
    )
    .await
}

fn respond(
    version: i16,
    topics: &[(TopicName, uuid::Uuid, Option<String>)],
    wanted: &[Wanted],
    results: Vec<Result<Option<crate::broker::ReadReply>, i16>>,
) -> FetchResponse {
    let mut responses: Vec<FetchableTopicResponse> = topics
        .iter()
        .map(|(name, id, _)| {
            let response = FetchableTopicResponse::default();
            if version >= 13 { response.with_topic_id(*id) } else { response.with_topic(name.clone()) }
        })
        .collect();
    for (want, result) in wanted.iter().zip(results) {
        let mut data = PartitionData::default().with_partition_index(want.partition.partition);
        data = match result {
            Ok(Some(reply)) => {
                let offsets = reply.offsets;
                let data = data
                    .with_high_watermark(offsets.high_watermark)
                    .with_last_stable_offset(offsets.high_watermark)
                    .with_records(Some(reply.records));
                if version >= 5 { data.with_log_start_offset(offsets.log_start_offset) } else { data }
            }
            Ok(None) => data.with_high_watermark(-1).with_records(Some(Bytes::new())),
            Err(code) => data.with_error_code(code).with_high_watermark(-1).with_records(Some(Bytes::new())),
        };
        responses[want.topic_index].partitions.push(data);
    }
    FetchResponse::default().with_responses(responses)
}
