//! `corelog bench` under `cargo test`: tiny workloads against the real broker; the JSON result
//! holds sane, non-zero figures and the HTML report its charts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::process::Command;

use common::kafka::Node;
use serde_json::Value;

fn bench(address: &str, dir: &std::path::Path, args: &[&str]) -> Value {
    let json = dir.join("result.json");
    let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .arg("bench")
        .args(["--brokers", address, "--quiet", "--json", json.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "corelog bench {args:?}: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("MSG/S") && stdout.contains("produce"), "the summary table: {stdout}");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

fn assert_ordered_latencies(latency: &Value, what: &str) {
    let get = |k: &str| latency[k].as_f64().unwrap_or_else(|| panic!("{what}: no {k} in {latency}"));
    assert!(latency["samples"].as_u64().unwrap() > 0, "{what}: {latency}");
    assert!(get("p50") > 0.0, "{what}: {latency}");
    assert!(get("p50") <= get("p99") && get("p99") <= get("p999") && get("p999") <= get("max"), "{what}: {latency}");
}

#[test]
fn a_fixed_rate_run_reports_throughput_and_latency_percentiles() {
    let node = Node::new("");
    let (broker, address) = node.start();
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let result = bench(
        &address,
        dir.path(),
        &[
            "--rate",
            "1000",
            "--duration",
            "2",
            "--partitions",
            "2",
            "--message-size",
            "200",
            "--keys",
            "zipf:20",
            "--html",
            html.to_str().unwrap(),
        ],
    );
    let produce = &result["produce"];
    assert_eq!(produce["errors"], 0, "{produce}");
    let rate = produce["messages_per_sec"].as_f64().unwrap();
    assert!((700.0..=1300.0).contains(&rate), "about the target rate: {rate}");
    assert!(produce["mb_per_sec"].as_f64().unwrap() > 0.1, "{produce}");
    assert_ordered_latencies(&produce["latency_ms"], "publish");
    assert_ordered_latencies(&result["e2e"]["latency_ms"], "end to end");
    assert!(result["consume"]["mb_per_sec"].as_f64().unwrap() > 0.1, "{}", result["consume"]);
    assert_eq!(result["workload"]["message_size"], 200);
    assert_eq!(result["workload"]["acks"], "all");
    assert!(result["hardware"]["online_cpus"].as_u64().unwrap() >= 1);
    assert!(result["client"]["cpu_seconds"].as_f64().unwrap() > 0.0);
    assert!(!result["timeline"].as_array().unwrap().is_empty());
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.contains("<svg") && page.contains("polyline") && page.contains("corelog bench"), "{page}");
    broker.stop();
}

#[test]
fn max_rate_and_backlog_drain_runs_move_data() {
    let node = Node::new("");
    let (broker, address) = node.start();
    let dir = tempfile::tempdir().unwrap();
    // Unkeyed at full speed: sticky partitions, many requests in flight per connection (an
    // idempotent producer's batches must reach each partition in sequence order).
    let max = bench(&address, dir.path(), &["--workload", "max-100b", "--duration", "2", "--compression", "lz4"]);
    assert!(max["produce"]["messages"].as_u64().unwrap() > 1000, "{}", max["produce"]);
    assert_eq!(max["produce"]["errors"], 0, "{}", max["produce"]);
    assert_eq!(max["workload"]["compression"], "lz4");
    let drain =
        bench(&address, dir.path(), &["--backlog-bytes", "2000000", "--message-size", "1000", "--consumers", "1"]);
    let (produced, consumed) =
        (drain["produce"]["messages"].as_u64().unwrap(), drain["consume"]["messages"].as_u64().unwrap());
    assert!(produced >= 1900, "{}", drain["produce"]);
    assert_eq!(consumed, produced, "the drain read the whole backlog");
    assert!(drain["consume"]["mb_per_sec"].as_f64().unwrap() > 0.0);
    broker.stop();
}

fn groups_json(address: &str, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .arg("group")
        .args(args)
        .args(["--brokers", address, "--format", "json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "group {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn bench_groups(address: &str) -> Vec<String> {
    let listed = groups_json(address, &["list"]);
    let names = listed.as_array().unwrap().iter().map(|g| g["group"].as_str().unwrap().to_string());
    names.filter(|name| name.starts_with("corelog-bench-")).collect()
}

#[test]
fn consumers_in_groups_each_group_reads_every_message() {
    let node = Node::new("");
    let (broker, address) = node.start();
    let dir = tempfile::tempdir().unwrap();
    // Three consumers in two groups: one group of two members sharing the partitions, one of
    // one member reading them all.
    let args = ["--rate", "500", "--duration", "2", "--partitions", "4", "--consumers", "3", "--consumer-groups", "2"];
    let result = bench(&address, dir.path(), &args);
    assert_eq!(result["workload"]["consumer_groups"], 2);
    let produced = result["produce"]["messages"].as_u64().unwrap();
    let consumed = result["consume"]["messages"].as_u64().unwrap();
    assert!(produced > 500, "{}", result["produce"]);
    // Counted over the same window: each message once per group.
    assert!((produced * 3 / 2..=produced * 5 / 2).contains(&consumed), "produced {produced}, consumed {consumed}");
    assert_ordered_latencies(&result["e2e"]["latency_ms"], "end to end");
    assert!(bench_groups(&address).is_empty(), "the run's groups are deleted with its topics");

    // Kept: the members committed where they stopped, which is the end of every partition.
    let mut kept = args[..args.len() - 1].to_vec();
    kept.extend(["1", "--keep-topics"]);
    let result = bench(&address, dir.path(), &kept);
    assert_eq!(result["workload"]["consumer_groups"], 1);
    let groups = bench_groups(&address);
    assert_eq!(groups.len(), 1, "{groups:?}");
    let described = groups_json(&address, &["describe", &groups[0]]);
    let partitions = described["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 4, "{described}");
    for partition in partitions {
        assert!(partition["log_end_offset"].as_i64().unwrap() > 0, "{described}");
        assert_eq!(partition["committed_offset"], partition["log_end_offset"], "{described}");
    }
    assert_eq!(described["members"].as_array().unwrap().len(), 0, "the members left: {described}");
    broker.stop();
}
