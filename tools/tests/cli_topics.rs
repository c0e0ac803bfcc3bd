//! `corelog topic …` end to end: the real binary against a real broker, checked through its
//! JSON output and, independently, through librdkafka (what a Kafka client sees).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::process::Command;

use common::kafka::{Node, flush, producer, send, topic_partitions, watermarks};
use rdkafka::producer::BaseRecord;
use serde_json::Value;

/// Runs `corelog topic ARGS --brokers ADDRESS`: (exit code, stdout, stderr).
fn topic(address: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .arg("topic")
        .args(args)
        .args(["--brokers", address, "--timeout", "10"])
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

fn json(address: &str, args: &[&str]) -> Value {
    let mut with_format = args.to_vec();
    with_format.extend(["--format", "json"]);
    let (code, out, err) = topic(address, &with_format);
    assert_eq!(code, 0, "corelog topic {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("corelog topic {args:?} printed no JSON ({e}): {out}"))
}

#[test]
fn topics_are_created_listed_described_changed_trimmed_and_deleted() {
    let node = Node::new("");
    let (broker, address) = node.start();

    // Create, with a config; a second create of the same name is refused with its Kafka name.
    let created = json(&address, &["create", "orders", "payments", "-p", "3", "-c", "retention.ms=3600000"]);
    assert_eq!(created, serde_json::json!([{"topic": "orders", "error": null}, {"topic": "payments", "error": null}]));
    assert_eq!(topic_partitions(&address, "orders"), Ok(3), "librdkafka sees the new topic");
    let (code, out, err) = topic(&address, &["create", "orders"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("TOPIC_ALREADY_EXISTS"), "{out}");
    assert_eq!(err.lines().count(), 1, "one line per refusal: {err}");
    assert!(err.contains("TOPIC_ALREADY_EXISTS") && err.contains("what to do"), "{err}");
    let (code, _, err) = topic(&address, &["create", "bad/name"]);
    assert_eq!(code, 1);
    assert!(err.contains("INVALID_TOPIC_EXCEPTION"), "{err}");

    // List: internal topics only on request; the table names every topic.
    let listed = json(&address, &["list"]);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["orders", "payments"]);
    assert_eq!(listed[0]["partitions"], 3);
    let all = json(&address, &["list", "--internal"]);
    assert!(all.as_array().unwrap().iter().any(|t| t["name"] == "__consumer_offsets" && t["internal"] == true));
    let (code, table, _) = topic(&address, &["list"]);
    assert_eq!(code, 0);
    assert!(table.starts_with("NAME") && table.contains("orders") && table.contains("payments"), "{table}");

    // Data in partition 1, then describe: offsets, leaders, the config and where it comes from.
    let producer = producer(&address, &[]);
    for i in 0..10u32 {
        send(
            &producer,
            BaseRecord::with_opaque_to("orders", i as usize).partition(1).payload(&i.to_be_bytes()[..]).key(&b"k"[..]),
        );
    }
    flush(&producer);
    let described = json(&address, &["describe", "orders"]);
    assert_eq!(described["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(described["partitions"][1]["high_watermark"], 10);
    assert_eq!(described["partitions"][1]["log_start_offset"], 0);
    assert_eq!(described["partitions"][0]["high_watermark"], 0);
    assert_eq!(described["partitions"][1]["leader"], 0);
    let config = |described: &Value, key: &str| {
        described["configs"].as_array().unwrap().iter().find(|c| c["name"] == key).cloned().unwrap()
    };
    assert_eq!(config(&described, "retention.ms")["value"], "3600000");
    assert_eq!(config(&described, "retention.ms")["source"], "DYNAMIC_TOPIC_CONFIG");

    // Alter: set one key, reset another to its default.
    json(&address, &["alter-config", "orders", "--set", "retention.bytes=1048576", "--delete", "retention.ms"]);
    let described = json(&address, &["describe", "orders"]);
    assert_eq!(config(&described, "retention.bytes")["value"], "1048576");
    assert_eq!(config(&described, "retention.ms")["source"], "DEFAULT_CONFIG");
    let (code, _, err) = topic(&address, &["alter-config", "orders", "--set", "retention.ms=soon"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("INVALID_CONFIG"), "{err}");

    // Add partitions: 3 + 2.
    let grown = json(&address, &["add-partitions", "orders", "-n", "2"]);
    assert_eq!((grown["partitions_before"].as_i64(), grown["partitions"].as_i64()), (Some(3), Some(5)));
    assert_eq!(topic_partitions(&address, "orders"), Ok(5));

    // Trim: records before offset 4 of partition 1 go; librdkafka sees the new log start.
    let trimmed = json(&address, &["trim", "orders", "--offset", "4", "--partitions", "1"]);
    assert_eq!(trimmed["partitions"], serde_json::json!([{"partition": 1, "log_start_offset": 4, "error": null}]));
    assert_eq!(watermarks(&address, "orders", 1), (4, 10));
    let trimmed = json(&address, &["trim", "orders", "--offset", "end"]);
    assert_eq!(trimmed["partitions"].as_array().unwrap().len(), 5);
    assert_eq!(watermarks(&address, "orders", 1), (10, 10));
    let (code, _, err) = topic(&address, &["trim", "orders", "--offset", "99", "--partitions", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("OFFSET_OUT_OF_RANGE"), "{err}");

    // Delete: a missing topic is refused by name, the rest are deleted.
    let (code, out, err) = topic(&address, &["delete", "payments", "nope", "--format", "json"]);
    assert_eq!(code, 1, "{err}");
    let deleted: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(deleted[0], serde_json::json!({"topic": "payments", "error": null}));
    assert_eq!(deleted[1]["error"]["name"], "UNKNOWN_TOPIC_OR_PARTITION");
    assert!(err.contains("nope") && err.contains("UNKNOWN_TOPIC_OR_PARTITION"), "{err}");
    let names: Vec<String> =
        json(&address, &["list"]).as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["orders"]);
    let (code, _, err) = topic(&address, &["describe", "payments"]);
    assert_eq!(code, 1);
    assert!(err.contains("UNKNOWN_TOPIC_OR_PARTITION"), "{err}");

    // Usage errors exit 2; nothing listening exits 3 with a hint.
    let (code, _, err) = topic(&address, &["alter-config", "orders"]);
    assert_eq!(code, 2, "{err}");
    broker.stop();
    let (code, _, err) = topic(&address, &["list"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("is the broker running"), "{err}");
}

/// Runs `corelog topic ARGS` with `input` on standard input.
fn topic_with_input(address: &str, args: &[&str], input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .arg("topic")
        .args(args)
        .args(["--brokers", address, "--timeout", "10"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

#[test]
fn lines_are_produced_and_consumed_back_with_keys_and_headers() {
    let node = Node::new("");
    let (broker, address) = node.start();
    json(&address, &["create", "logs", "-p", "3"]);
    let input: String = (0..1000).map(|i| format!("user-{}:event {i}\n", i % 10)).collect();
    let (code, out, err) = topic_with_input(
        &address,
        &["produce", "logs", "--key-separator", ":", "-H", "source=test", "--compression", "lz4", "--format", "json"],
        &input,
    );
    assert_eq!(code, 0, "{err}");
    let produced: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((produced["records"].as_u64(), produced["failed"].as_u64()), (Some(1000), Some(0)));
    let per_partition: u64 =
        produced["partitions"].as_array().unwrap().iter().map(|p| p["records"].as_u64().unwrap()).sum();
    assert_eq!(per_partition, 1000);
    // What librdkafka sees: the high watermarks add up.
    let total: i64 = (0..3).map(|p| watermarks(&address, "logs", p).1).sum();
    assert_eq!(total, 1000);

    // Everything back, as JSON lines: keys by the separator, the header, one key per partition.
    let (code, out, err) = topic(&address, &["consume", "logs", "--end", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 1000);
    let mut partition_of_key = std::collections::HashMap::new();
    for record in &records {
        let (key, value) = (record["key"].as_str().unwrap(), record["value"].as_str().unwrap());
        let i: usize = value.strip_prefix("event ").unwrap().parse().unwrap();
        assert_eq!(key, format!("user-{}", i % 10));
        assert_eq!(record["headers"], serde_json::json!([{"key": "source", "value": "test"}]));
        assert_eq!(
            *partition_of_key.entry(key.to_string()).or_insert(record["partition"].clone()),
            record["partition"]
        );
    }
    // Plain values, a count, a starting offset, a partition.
    let (code, out, _) = topic(&address, &["consume", "logs", "-p", "1", "-o", "2", "-n", "3"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3);
    assert!(out.lines().all(|l| l.starts_with("event ")), "{out}");
    let (code, out, _) = topic(&address, &["consume", "logs", "-o", "latest", "--end"]);
    assert_eq!((code, out.as_str()), (0, ""), "nothing after the end");

    // As a group member: a run stopped by --num commits exactly what it printed, the next
    // run goes on from there, and together they print every record once.
    let (code, first, err) = topic(&address, &["consume", "logs", "--group", "readers", "-n", "400"]);
    assert_eq!(code, 0, "{err}");
    let (code, rest, err) = topic(&address, &["consume", "logs", "--group", "readers", "--end"]);
    assert_eq!(code, 0, "{err}");
    let mut values: Vec<usize> =
        first.lines().chain(rest.lines()).map(|l| l.strip_prefix("event ").unwrap().parse().unwrap()).collect();
    assert_eq!((first.lines().count(), rest.lines().count()), (400, 600));
    values.sort();
    assert_eq!(values, (0..1000).collect::<Vec<_>>());
    let described = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["group", "describe", "readers", "--brokers", address.as_str(), "--format", "json"])
        .output()
        .unwrap();
    let described: Value = serde_json::from_slice(&described.stdout).unwrap();
    assert_eq!(described["total_lag"], 0, "{described}");
    assert_eq!(described["members"].as_array().map(Vec::len), Some(0), "the member left: {described}");
    let (code, _, err) = topic(&address, &["consume", "logs", "--group", "readers", "-o", "5"]);
    assert_eq!(code, 2, "an offset does not go with --group: {err}");

    // Producing to a topic that does not exist: one line naming the error, exit 1.
    let (code, _, err) = topic_with_input(&address, &["produce", "missing"], "x\n");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("UNKNOWN_TOPIC_OR_PARTITION"), "{err}");
    broker.stop();
}

#[test]
fn groups_are_listed_described_with_lag_moved_and_deleted_and_the_cluster_is_described() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let node = Node::new("");
    let (broker, address) = node.start();
    json(&address, &["create", "orders", "-p", "2"]);
    let (code, _, err) = topic_with_input(&address, &["produce", "orders", "--partition", "0"], &"x\n".repeat(10));
    assert_eq!(code, 0, "{err}");
    topic_with_input(&address, &["produce", "orders", "--partition", "1"], &"y\n".repeat(4));

    // Offsets for a group with no members: created by the seek.
    let group = |args: &[&str]| {
        let mut all = vec!["group"];
        all.extend_from_slice(args);
        let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
            .args(&all)
            .args(["--brokers", address.as_str(), "--timeout", "10"])
            .output()
            .unwrap();
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
    };
    let group_json = |args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let (code, out, err) = group(&all);
        assert_eq!(code, 0, "group {args:?}: {err}");
        serde_json::from_str(&out).unwrap()
    };
    let moved = group_json(&["seek", "audit", "--to", "3", "--topic", "orders"]);
    assert_eq!(moved["offsets"].as_array().unwrap().len(), 2);
    let described = group_json(&["describe", "audit"]);
    let lag: Vec<(i64, i64, i64)> = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (p["committed_offset"].as_i64().unwrap(), p["log_end_offset"].as_i64().unwrap(), p["lag"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(lag, vec![(3, 10, 7), (3, 4, 1)]);
    assert_eq!(described["total_lag"], 8);
    group_json(&["seek", "audit", "--to", "latest"]);
    assert_eq!(group_json(&["describe", "audit"])["total_lag"], 0);
    group_json(&["seek", "audit", "--to", "earliest"]);
    assert_eq!(group_json(&["describe", "audit"])["total_lag"], 14);
    let (code, table, _) = group(&["describe", "audit"]);
    assert_eq!(code, 0);
    assert!(table.contains("LAG") && table.contains("orders"), "{table}");

    // A librdkafka member: listed, described with its assignment; the group refuses seek and delete.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &address)
        .set("group.id", "live")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&["orders"]).unwrap();
    let deadline = std::time::Instant::now() + common::WAIT;
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) < 2 {
        assert!(std::time::Instant::now() < deadline, "no assignment");
        consumer.poll(std::time::Duration::from_millis(50));
    }
    let listed = group_json(&["list"]);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|g| g["group"].as_str().unwrap()).collect();
    assert!(names.contains(&"audit") && names.contains(&"live"), "{listed}");
    let live = group_json(&["describe", "live"]);
    assert_eq!(live["members"].as_array().unwrap().len(), 1, "{live}");
    assert_eq!(live["members"][0]["assignment"]["orders"], serde_json::json!([0, 1]), "{live}");
    assert_eq!(live["type"], "classic");
    let (code, _, err) = group(&["seek", "live", "--to", "earliest"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("members"), "{err}");
    let (code, _, err) = group(&["delete", "live"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NON_EMPTY_GROUP"), "{err}");
    drop(consumer);

    let (code, out, err) = group(&["delete", "audit"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted"));

    // The cluster: one broker, the controller, its configs.
    let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["cluster", "info", "--format", "json", "--brokers", &address])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["brokers"].as_array().unwrap().len(), 1);
    assert_eq!(info["controller"], info["brokers"][0]["id"]);
    let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["cluster", "config", "--format", "json", "--brokers", &address])
        .output()
        .unwrap();
    let config: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(config["configs"].as_array().unwrap().iter().any(|c| c["name"] == "num.partitions"), "{config}");
    broker.stop();
}
