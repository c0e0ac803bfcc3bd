//! Fetch (key 1), v4–v16: reads every requested partition from its owner shard, waiting up
//! to `max_wait_ms` until `min_bytes` are available, within `max_bytes` and each partition's
//! `partition_max_bytes` (the first batch of the first partition is returned whole even when
//! larger, as in Kafka). Offsets below the log start or beyond the log end get
//! OFFSET_OUT_OF_RANGE; high watermark, last stable offset and log start offset are reported.
//!
//! While fewer than `min_bytes` are there, the fetch waits on each partition's owner for its
//! high watermark to move (woken by the append or the fsync that moves it), then reads again.
//!
//! Incremental fetch sessions (v7+, KIP-227) decide which partitions are read and which the
//! response carries: see [`crate::handlers::fetch_session`].
//!
//! The partitions are read concurrently where the response's `max_bytes` allows it
//! ([`read_all`]). The response is encoded by hand ([`crate::handlers::fetch_response`]):
//! record batches go from the batch cache to the socket without being copied into a response
//! buffer, and data of the segment files is spliced ([`crate::socket_out`]).

use std::time::{Duration, Instant};

use corelog_engine::log::TopicPartition;
use kafka_protocol::messages::{ApiKey, FetchRequest, TopicName};

use crate::broker::{ShardBroker, ShardRequest, ShardResponse, error_code};
use crate::handlers::fetch_response::{FetchOut, PartitionOut, TopicOut};
use crate::handlers::fetch_session::{FetchTarget, PartitionState, Plan};
use crate::handlers::metadata::topic_uuid;

/// A topic of the fetch: as named on the wire (name, id), and its name once resolved.
type FetchedTopic = (TopicName, uuid::Uuid, Option<String>);

struct Wanted {
    topic_index: usize,
    partition: TopicPartition,
    offset: i64,
    max_bytes: usize,
}

/// Longest long poll honoured, whatever `max_wait_ms` asks (a bound on what one request holds).
const MAX_WAIT_MAX: Duration = Duration::from_secs(30);

pub async fn handle(broker: &ShardBroker, request: FetchRequest, version: i16) -> FetchOut {
    let started = Instant::now();
    let max_wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0)).min(MAX_WAIT_MAX);
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let max_bytes = usize::try_from(request.max_bytes).unwrap_or(0).clamp(1, broker.settings.fetch_max_bytes);
    let (plan, targets) = broker.fetch_sessions.borrow_mut().begin(&request, version, Instant::now());
    if let Plan::Refused { error_code } = plan {
        return FetchOut { error_code, ..FetchOut::default() };
    }
    let (topics, wanted) = resolve(broker, &targets, version);
    loop {
        let (results, total) = read_all(broker, version, &topics, &wanted, max_bytes).await;
        let errors = results.iter().any(Result::is_err);
        let remaining = max_wait.saturating_sub(started.elapsed());
        if total >= min_bytes.max(1)
            || errors
            || remaining.is_zero()
            || !wait_for_data(broker, &wanted, &results, remaining).await
        {
            return respond(broker, version, &plan, &topics, &wanted, results);
        }
    }
}

/// Reads every wanted partition within `max_bytes` in all, in request order: each partition
/// gets its own limit or what is left of the budget, and none is read once the budget is
/// spent. Runs of partitions whose full limits fit in what is left are read at once, so
/// their owner shards' reads (and the device reads they start) overlap; a partition that
/// might not fit waits for the run before it to know what is left. The outcome is that of
/// reading one partition after the other: a read returns at least one whole batch even when
/// larger than its limit, and should one do so, the partitions after it in its run are read
/// again with what is really left. Returns the results and the record bytes read.
async fn read_all(
    broker: &ShardBroker,
    version: i16,
    topics: &[FetchedTopic],
    wanted: &[Wanted],
    max_bytes: usize,
) -> (Vec<Result<Option<crate::broker::ReadReply>, i16>>, usize) {
    let mut results = Vec::with_capacity(wanted.len());
    let (mut budget, mut total) = (max_bytes, 0usize);
    let mut next = 0;
    while next < wanted.len() {
        let mut run = Vec::new();
        let mut reserved = 0usize;
        for want in &wanted[next..] {
            let fits = reserved.saturating_add(want.max_bytes) <= budget;
            if !run.is_empty() && !fits {
                break;
            }
            let limit = want.max_bytes.min(budget - reserved).max(1);
            reserved = reserved.saturating_add(limit).min(budget);
            let first_of_response = total == 0 && run.is_empty();
            run.push(read_one(broker, version, topics, want, limit, budget == 0 && !first_of_response));
        }
        let run_wanted = &wanted[next..next + run.len()];
        next += run.len();
        for (i, (want, mut result)) in run_wanted.iter().zip(futures_util::future::join_all(run).await).enumerate() {
            if i > 0 && budget < want.max_bytes {
                // A read before this one in the run returned more than its limit.
                let limit = want.max_bytes.min(budget).max(1);
                result = read_one(broker, version, topics, want, limit, budget == 0).await;
            }
            if let Ok(Some(reply)) = &result {
                let len = reply.records_len();
                total += len;
                budget = budget.saturating_sub(len);
            }
            results.push(result);
        }
    }
    (results, total)
}

/// Reads one partition (Ok(None): skipped, the response is full).
async fn read_one(
    broker: &ShardBroker,
    version: i16,
    topics: &[FetchedTopic],
    want: &Wanted,
    limit: usize,
    full: bool,
) -> Result<Option<crate::broker::ReadReply>, i16> {
    if topics[want.topic_index].2.is_none() {
        return Err(if version >= 13 { error_code::UNKNOWN_TOPIC_ID } else { error_code::UNKNOWN_TOPIC_OR_PARTITION });
    }
    if full {
        return Ok(None);
    }
    let request = ShardRequest::Read { partition: want.partition.clone(), offset: want.offset, max_bytes: limit };
    match broker.partition_call(&want.partition, request).await {
        Ok(ShardResponse::Read(Ok(reply))) => Ok(Some(reply)),
        Ok(ShardResponse::Read(Err(code))) => Err(code),
        Ok(_) => Err(error_code::KAFKA_STORAGE_ERROR),
        Err(code) => Err(code),
    }
}

/// Groups the partitions to read by topic (in order of first appearance) and resolves topic
/// names (v12 and below) or ids (v13+).
fn resolve(broker: &ShardBroker, targets: &[FetchTarget], version: i16) -> (Vec<FetchedTopic>, Vec<Wanted>) {
    let snapshot = broker.registry.snapshot();
    let mut topics: Vec<FetchedTopic> = Vec::new();
    let mut wanted = Vec::with_capacity(targets.len());
    for target in targets {
        // Requests (and sessions, mostly) list a topic's partitions together: try the last one first.
        let same = |(name, id, _): &FetchedTopic| *name == target.topic && *id == target.topic_id;
        let known = match topics.last() {
            Some(last) if same(last) => Some(topics.len() - 1),
            _ => topics.iter().position(same),
        };
        let topic_index = known.unwrap_or_else(|| {
            let name = if version >= 13 {
                snapshot.values().find(|r| topic_uuid(r) == target.topic_id).map(|r| r.name.clone())
            } else {
                Some(target.topic.0.to_string())
            };
            topics.push((target.topic.clone(), target.topic_id, name));
            topics.len() - 1
        });
        let name = topics[topic_index].2.clone().unwrap_or_default();
        wanted.push(Wanted {
            topic_index,
            partition: TopicPartition::new(name, target.partition),
            offset: target.fetch_offset,
            max_bytes: usize::try_from(target.max_bytes).unwrap_or(0),
        });
    }
    (topics, wanted)
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
    broker: &ShardBroker,
    version: i16,
    plan: &Plan,
    topics: &[FetchedTopic],
    wanted: &[Wanted],
    results: Vec<Result<Option<crate::broker::ReadReply>, i16>>,
) -> FetchOut {
    let included = match plan {
        Plan::Opened { .. } | Plan::Incremental { .. } => {
            broker.fetch_sessions.borrow_mut().finish(plan, &session_states(&results))
        }
        Plan::Sessionless | Plan::Refused { .. } => vec![true; results.len()],
    };
    let incremental = matches!(plan, Plan::Incremental { .. });
    let mut responses: Vec<TopicOut> = topics
        .iter()
        .map(|(name, id, _)| TopicOut {
            name: if version >= 13 { String::new() } else { name.0.to_string() },
            topic_id: if version >= 13 { *id } else { uuid::Uuid::nil() },
            partitions: Vec::new(),
        })
        .collect();
    for ((want, result), included) in wanted.iter().zip(results).zip(included) {
        if !included || (incremental && matches!(result, Ok(None))) {
            continue;
        }
        let base = PartitionOut { partition_index: want.partition.partition, ..PartitionOut::default() };
        let data = match result {
            Ok(Some(reply)) => {
                broker.metrics.bytes_out(&want.partition.topic, reply.records_len());
                let offsets = reply.offsets;
                PartitionOut {
                    high_watermark: offsets.high_watermark,
                    last_stable_offset: offsets.high_watermark,
                    log_start_offset: if version >= 5 { offsets.log_start_offset } else { -1 },
                    records: Some(reply.records),
                    ..base
                }
            }
            Ok(None) => PartitionOut { high_watermark: -1, ..base },
            Err(code) => {
                broker.metrics.partition_error(ApiKey::Fetch as i16, code);
                PartitionOut { error_code: code, high_watermark: -1, ..base }
            }
        };
        responses[want.topic_index].partitions.push(data);
    }
    if incremental {
        responses.retain(|topic| !topic.partitions.is_empty());
    }
    let session_id = if version >= 7 { plan.response_session_id() } else { 0 };
    FetchOut { session_id, topics: responses, ..FetchOut::default() }
}

/// What each partition's response says (and whether it carries records), for a fetch session
/// to compare with what it said last.
fn session_states(results: &[Result<Option<crate::broker::ReadReply>, i16>]) -> Vec<(Option<PartitionState>, bool)> {
    results
        .iter()
        .map(|result| match result {
            Ok(Some(reply)) => {
                let offsets = &reply.offsets;
                let state = PartitionState {
                    high_watermark: offsets.high_watermark,
                    last_stable_offset: offsets.high_watermark,
                    log_start_offset: offsets.log_start_offset,
                    error_code: error_code::NONE,
                };
                (Some(state), reply.records_len() > 0)
            }
            // Not read this time (the response was full): nothing to tell.
            Ok(None) => (None, false),
            Err(code) => {
                let state = PartitionState {
                    high_watermark: -1,
                    last_stable_offset: -1,
                    log_start_offset: -1,
                    error_code: *code,
                };
                (Some(state), false)
            }
        })
        .collect()
}
