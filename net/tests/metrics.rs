//! Metrics through the real shard code: requests over real sockets on two shards move the
//! scraped counters by exactly what was sent (requests by API and result, bytes and records
//! in and out per topic, partition offsets, partition errors, group lag), and the storage,
//! connection and reactor series are there and consistent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use common::{Broker, Client, Options, create_topic};
use corelog_engine::batch;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, GroupId, OffsetCommitRequest, OffsetCommitResponse, ProduceRequest,
    ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn produce(client: &mut Client, topic: &str, partition: i32, records: &[u8]) -> i16 {
    let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![
        TopicProduceData::default().with_name(TopicName(text(topic))).with_partition_data(vec![
            PartitionProduceData::default().with_index(partition).with_records(Some(Bytes::copy_from_slice(records))),
        ]),
    ]);
    let response: ProduceResponse = client.call(ApiKey::Produce, 9, &request);
    response.responses[0].partition_responses[0].error_code
}

/// Fetches the partition from offset 0; returns the record bytes.
fn fetch(client: &mut Client, topic: &str, partition: i32) -> usize {
    let request =
        FetchRequest::default().with_max_wait_ms(0).with_min_bytes(1).with_max_bytes(50 << 20).with_topics(vec![
            FetchTopic::default().with_topic(TopicName(text(topic))).with_partitions(vec![
                FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20),
            ]),
        ]);
    let response: FetchResponse = client.call(ApiKey::Fetch, 12, &request);
    let data = &response.responses[0].partitions[0];
    assert_eq!(data.error_code, 0);
    data.records.as_ref().map_or(0, Bytes::len)
}

fn commit(client: &mut Client, group: &str, topic: &str, partition: i32, offset: i64) {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(text(""))
        .with_topics(vec![OffsetCommitRequestTopic::default().with_name(TopicName(text(topic))).with_partitions(
            vec![OffsetCommitRequestPartition::default().with_partition_index(partition).with_committed_offset(offset)],
        )]);
    let response: OffsetCommitResponse = client.call(ApiKey::OffsetCommit, 8, &request);
    assert_eq!(response.topics[0].partitions[0].error_code, 0);
}

/// `series{labels} value` lines of a scrape, keyed by the series as written.
fn series(scrape: &str) -> HashMap<String, f64> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn scrape(broker: &Broker) -> HashMap<String, f64> {
    let hub = broker.admin();
    let collected = hub.collect(Duration::from_secs(5));
    assert!(collected.all_up(), "every shard answers a scrape: down {:?}", collected.down);
    let text = corelog_net::admin::render_metrics(hub, collected);
    assert!(text.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
    series(&text)
}

fn value(scraped: &HashMap<String, f64>, key: &str) -> f64 {
    scraped.get(key).copied().unwrap_or_else(|| {
        let mut known: Vec<&String> =
            scraped.keys().filter(|k| k.starts_with(key.split('{').next().unwrap())).collect();
        known.sort();
        panic!("no series {key} in the scrape; of that name: {known:?}")
    })
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    value(after, key) - before.get(key).copied().unwrap_or(0.0)
}

#[test]
fn counters_move_by_what_clients_did() {
    let broker = Broker::start(Options { shards: 2, ..Options::default() });
    let mut client = broker.client();
    create_topic(&mut client, "metered", 2);
    let before = scrape(&broker);

    let small = batch::build_test_batch(10, b"0123456789", 1_700_000_000_000);
    let large = batch::build_test_batch(100, &[7u8; 100], 1_700_000_000_000);
    for _ in 0..3 {
        assert_eq!(produce(&mut client, "metered", 0, &small), 0);
    }
    assert_eq!(produce(&mut client, "metered", 1, &large), 0);
    assert_eq!(produce(&mut client, "metered", 9, &small), 3, "no partition 9: UNKNOWN_TOPIC_OR_PARTITION");
    let fetched = fetch(&mut client, "metered", 0) + fetch(&mut client, "metered", 1);
    assert_eq!(fetched, 3 * small.len() + large.len());
    commit(&mut client, "metered-group", "metered", 0, 10);

    let after = scrape(&broker);
    let requests =
        |api: &str, result: &str| format!("corelog_kafka_requests_total{{api=\"{api}\",result=\"{result}\"}}");
    assert_eq!(delta(&before, &after, &requests("Produce", "ok")), 5.0);
    assert_eq!(delta(&before, &after, &requests("Fetch", "ok")), 2.0);
    assert_eq!(delta(&before, &after, &requests("OffsetCommit", "ok")), 1.0);
    assert_eq!(delta(&before, &after, "corelog_kafka_request_duration_seconds_count{api=\"Produce\"}"), 5.0);
    // Buckets are cumulative: the +Inf one holds every request, and none holds more.
    let produce_buckets: Vec<f64> = after
        .iter()
        .filter(|(k, _)| {
            k.starts_with("corelog_kafka_request_duration_seconds_bucket{") && k.contains("api=\"Produce\"")
        })
        .map(|(_, v)| *v)
        .collect();
    let count = value(&after, "corelog_kafka_request_duration_seconds_count{api=\"Produce\"}");
    assert_eq!(produce_buckets.len(), corelog_engine::metrics::LATENCY_BOUNDS_SECONDS.len() + 1);
    assert!(produce_buckets.iter().all(|v| *v <= count), "{produce_buckets:?} over {count}");
    assert_eq!(value(&after, "corelog_kafka_request_duration_seconds_bucket{le=\"+Inf\",api=\"Produce\"}"), count);
    let unknown = "corelog_kafka_partition_errors_total{api=\"Produce\",error=\"UNKNOWN_TOPIC_OR_PARTITION\"}";
    assert_eq!(delta(&before, &after, unknown), 1.0);

    let topic = |name: &str| format!("{name}{{topic=\"metered\"}}");
    assert_eq!(delta(&before, &after, &topic("corelog_topic_bytes_in_total")), (3 * small.len() + large.len()) as f64);
    assert_eq!(delta(&before, &after, &topic("corelog_topic_records_in_total")), 130.0);
    assert_eq!(delta(&before, &after, &topic("corelog_topic_bytes_out_total")), fetched as f64);

    let partition = |name: &str, p: i32| format!("{name}{{topic=\"metered\",partition=\"{p}\"}}");
    assert_eq!(value(&after, &partition("corelog_partition_high_watermark", 0)), 30.0);
    assert_eq!(value(&after, &partition("corelog_partition_log_end_offset", 1)), 100.0);
    assert_eq!(value(&after, &partition("corelog_partition_log_start_offset", 0)), 0.0);
    assert_eq!(value(&after, &partition("corelog_partition_segments", 0)), 1.0);
    assert!(value(&after, &partition("corelog_partition_size_bytes", 1)) >= large.len() as f64);
    let group = "{group=\"metered-group\",topic=\"metered\",partition=\"0\"}";
    assert_eq!(value(&after, &format!("corelog_consumer_group_committed_offset{group}")), 10.0);
    assert_eq!(value(&after, &format!("corelog_consumer_group_lag{group}")), 20.0, "high watermark 30 − 10");

    for shard in ["0", "1"] {
        let of = |name: &str| format!("{name}{{shard=\"{shard}\"}}");
        assert_eq!(value(&after, &of("corelog_shard_up")), 1.0);
        // Every completed fdatasync is in the latency histogram, and a produce under
        // `flush = always` needs at least one per partition written.
        assert_eq!(
            value(&after, &of("corelog_storage_fsyncs_total")),
            value(&after, &of("corelog_storage_fsync_duration_seconds_count"))
        );
        assert!(value(&after, &of("corelog_storage_fsyncs_total")) >= 1.0);
        assert!(
            value(&after, &of("corelog_storage_journal_records_total")) >= 1.0,
            "acks=all goes through the journal"
        );
        assert!(value(&after, &of("corelog_reactor_cpu_seconds_total")) > 0.0);
        assert!(value(&after, &of("corelog_batch_cache_budget_bytes")) > 0.0);
        assert_eq!(value(&after, &format!("corelog_partitions{{shard=\"{shard}\",state=\"offline\"}}")), 0.0);
    }
    let connections: f64 =
        ["0", "1"].iter().map(|s| value(&after, &format!("corelog_connections_active{{shard=\"{s}\"}}"))).sum();
    assert_eq!(connections, 1.0, "the test's one connection");
    assert!(value(&after, "corelog_storage_disk_total_bytes") > 0.0);

    // A request with an unknown API key closes its connection and is counted as rejected.
    let mut stream = broker.connect();
    stream.write_all(&[0, 0, 0, 8, 0x03, 0xE7, 0, 0, 0, 0, 0, 1]).unwrap();
    assert!(common::is_closed(&mut stream));
    let rejected = scrape(&broker);
    assert_eq!(delta(&after, &rejected, &requests("unknown", "rejected")), 1.0);
    let closed: f64 = ["0", "1"]
        .iter()
        .map(|s| {
            delta(&after, &rejected, &format!("corelog_connections_closed_total{{shard=\"{s}\",reason=\"rejected\"}}"))
        })
        .sum();
    assert_eq!(closed, 1.0);
}

#[test]
fn the_reactor_probe_records_task_delay_and_busy_time() {
    let broker = Broker::start(Options::default());
    std::thread::sleep(Duration::from_millis(350));
    let scraped = scrape(&broker);
    assert!(value(&scraped, "corelog_reactor_task_delay_seconds_count{shard=\"0\"}") >= 2.0, "a probe every 100 ms");
    assert!(value(&scraped, "corelog_reactor_busy_seconds_total{shard=\"0\"}") > 0.0);
    assert!(value(&scraped, "corelog_reactor_tasks_total{shard=\"0\"}") > 0.0);
    assert_eq!(value(&scraped, "corelog_ready"), 1.0);
    assert!(broker.admin().ping(Duration::from_secs(5)).all_up(), "a health ping reaches every shard");
    let collected = broker.admin().collect(Duration::from_secs(5));
    let partitions = corelog_net::admin::partitions_json(&collected, Some("__consumer_offsets"));
    assert_eq!(partitions.as_array().map(Vec::len), Some(4), "the test broker's 4 offsets partitions: {partitions}");
}
