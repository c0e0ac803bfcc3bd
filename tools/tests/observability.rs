//! The admin API of the real `corelog` binary: `/metrics` scraped around a librdkafka produce
//! and group consume moves by what the clients did; health answers during the load; brokers,
//! partitions, config and the run-time log level; the Grafana dashboard, the alert rules and
//! the metrics reference name only metrics the broker exposes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::http::{self, get};
use common::kafka::{Node, consumer_with, create_topic, flush, producer, send};
use common::{Broker, WAIT};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, Producer};

const MESSAGES: usize = 10_000;
const VALUE_BYTES: usize = 200;

/// `series{labels} value` lines of a scrape.
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

/// Every name a scrape can show: the families as declared, counters with `_total`,
/// histograms with `_bucket`, `_sum` and `_count`.
fn exposed_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        names.insert(name.to_string());
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {}
        }
    }
    names
}

fn scrape(admin: &str) -> (String, HashMap<String, f64>) {
    let response = get(admin, "/metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.content_type.starts_with("application/openmetrics-text"), "{}", response.content_type);
    let scraped = series(&response.body);
    (response.body, scraped)
}

fn value(scraped: &HashMap<String, f64>, key: &str) -> f64 {
    *scraped.get(key).unwrap_or_else(|| panic!("no series {key} in the scrape"))
}

/// Metric names a document mentions (`corelog_…`, `process_…`), without PromQL functions.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &text[at..];
        let starts = (rest.starts_with("corelog_") || rest.starts_with("process_"))
            && (at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_'));
        if starts {
            let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            names.insert(rest[..len].to_string());
            at += len;
        } else {
            at += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    names
}

#[test]
fn metrics_move_with_a_real_client_load_and_the_admin_api_answers_during_it() {
    let node = Node::new("group_initial_rebalance_delay_ms = 0\n");
    let (mut broker, address) = node.start();
    let admin = broker.admin_address();
    create_topic(&address, "observed", 2);
    let (_, before) = scrape(&admin);

    // Health is asked all through the load, and always answers ready.
    let loading = Arc::new(AtomicBool::new(true));
    let checker = {
        let (admin, loading) = (admin.clone(), Arc::clone(&loading));
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while loading.load(Ordering::Acquire) {
                let started = Instant::now();
                let response = get(&admin, "/v1/health/ready");
                answers.push((response.status, started.elapsed(), response.body));
                std::thread::sleep(Duration::from_millis(20));
            }
            answers
        })
    };

    let producer = producer(&address, &[("acks", "all"), ("linger.ms", "5")]);
    let payload = [b'v'; VALUE_BYTES];
    for sequence in 0..MESSAGES {
        let key = format!("key-{sequence}");
        send(&producer, BaseRecord::with_opaque_to("observed", sequence).key(key.as_bytes()).payload(&payload[..]));
        producer.poll(Duration::ZERO);
    }
    flush(&producer);
    assert_eq!(producer.context().acked_count(), MESSAGES, "{:?}", producer.context().failed());

    let consumer = consumer_with(
        &address,
        &[("group.id", "observers"), ("auto.offset.reset", "earliest"), ("enable.auto.offset.store", "true")],
    );
    consumer.subscribe(&["observed"]).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut consumed = 0;
    while consumed < MESSAGES {
        assert!(Instant::now() < deadline, "consumed {consumed} of {MESSAGES} within {WAIT:?}");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message.unwrap();
            consumed += 1;
        }
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    loading.store(false, Ordering::Release);
    let answers = checker.join().unwrap();
    assert!(answers.len() >= 5, "health was asked during the load: {} answers", answers.len());
    for (status, took, body) in &answers {
        assert_eq!(*status, 200, "ready during the load: {body}");
        assert!(*took < Duration::from_secs(5), "a health check took {took:?}");
    }

    let (text, after) = scrape(&admin);
    let delta = |key: &str| value(&after, key) - before.get(key).copied().unwrap_or(0.0);
    assert_eq!(delta("corelog_topic_records_in_total{topic=\"observed\"}"), MESSAGES as f64);
    let bytes_in = delta("corelog_topic_bytes_in_total{topic=\"observed\"}");
    assert!(bytes_in >= (MESSAGES * VALUE_BYTES) as f64, "batch bytes hold every value: {bytes_in}");
    assert!(delta("corelog_topic_bytes_out_total{topic=\"observed\"}") >= bytes_in, "everything was fetched once");
    assert!(delta("corelog_kafka_requests_total{api=\"Produce\",result=\"ok\"}") >= 1.0);
    assert!(delta("corelog_kafka_requests_total{api=\"Fetch\",result=\"ok\"}") >= 1.0);
    assert!(delta("corelog_kafka_requests_total{api=\"JoinGroup\",result=\"ok\"}") >= 1.0);
    let high_watermarks: f64 = (0..2)
        .map(|p| value(&after, &format!("corelog_partition_high_watermark{{topic=\"observed\",partition=\"{p}\"}}")))
        .sum();
    assert_eq!(high_watermarks, MESSAGES as f64);
    for partition in 0..2 {
        let labels = format!("{{group=\"observers\",topic=\"observed\",partition=\"{partition}\"}}");
        assert_eq!(value(&after, &format!("corelog_consumer_group_lag{labels}")), 0.0, "committed after consuming");
    }
    assert_eq!(value(&after, "corelog_consumer_group_members{group=\"observers\"}"), 1.0);
    for shard in 0..2 {
        assert_eq!(value(&after, &format!("corelog_shard_up{{shard=\"{shard}\"}}")), 1.0);
    }
    assert!(value(&after, "process_resident_memory_bytes") > 0.0);

    // The dashboard, the alert rules and the reference name only metrics the broker exposes.
    let exposed = exposed_names(&text);
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let dashboard_text = std::fs::read_to_string(docs.join("grafana/corelog-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).expect("the Grafana dashboard parses");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 10), "the dashboard has its panels");
    for file in ["grafana/corelog-dashboard.json", "alerts/corelog-alerts.yml", "metrics.md"] {
        let text = std::fs::read_to_string(docs.join(file)).unwrap();
        // YAML comments may sketch rules for metrics to come (under-replicated partitions).
        let text: String = if file.ends_with(".yml") {
            text.lines().filter(|line| !line.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n")
        } else {
            text
        };
        // Crate names in log filters (`corelog_net=debug`) and name prefixes (`corelog_partition_`)
        // are not metrics.
        let crates = ["corelog_net", "corelog_engine", "corelog_tools", "corelog_hardware", "corelog_benches"];
        let named: BTreeSet<String> =
            metric_names_in(&text).into_iter().filter(|n| !n.ends_with('_') && !crates.contains(&n.as_str())).collect();
        assert!(!named.is_empty(), "{file} names metrics");
        let unknown: Vec<&String> =
            named.iter().filter(|n| !exposed.contains(*n) && !exposed.contains(&format!("{n}_total"))).collect();
        assert!(unknown.is_empty(), "{file} names metrics the broker does not expose: {unknown:?}");
    }

    // The rest of the API.
    let brokers = get(&admin, "/v1/brokers").json();
    assert_eq!(brokers[0]["kafka_address"], serde_json::json!(address));
    assert_eq!(brokers[0]["admin_address"], serde_json::json!(admin));
    assert_eq!(brokers[0]["shards"], serde_json::json!(2));
    let partitions = get(&admin, "/v1/partitions?topic=observed").json();
    let rows = partitions.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{partitions}");
    assert_eq!(rows.iter().map(|r| r["high_watermark"].as_i64().unwrap()).sum::<i64>(), MESSAGES as i64);
    assert!(rows.iter().all(|r| r["state"] == "online" && r["segments"] == 1));
    let shards: BTreeSet<i64> = rows.iter().map(|r| r["shard"].as_i64().unwrap()).collect();
    assert_eq!(shards.len(), 2, "the two partitions live on the two shards");
    let config = get(&admin, "/v1/config").json();
    assert_eq!(config["config"]["group_initial_rebalance_delay_ms"], serde_json::json!(0));
    assert_eq!(config["config"]["admin_listen"], serde_json::json!("127.0.0.1:0"));
    assert!(config["source"].as_str().unwrap().contains("corelog.toml"), "{config}");
    let health = get(&admin, "/v1/health");
    assert_eq!((health.status, health.json()["ready"].clone()), (200, serde_json::json!(true)));
    assert_eq!(get(&admin, "/v1/health/live").status, 200);
    assert_eq!(get(&admin, "/nowhere").status, 404);
    assert_eq!(http::request(&admin, "POST", "/metrics", "").status, 405);

    // The log level changes while the broker runs; a bad filter changes nothing.
    assert_eq!(get(&admin, "/v1/log-level").json()["filter"], "info");
    let changed = http::request(&admin, "PUT", "/v1/log-level", "info,corelog_net=debug");
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(get(&admin, "/v1/log-level").json()["filter"], "info,corelog_net=debug");
    let refused = http::request(&admin, "PUT", "/v1/log-level", "info,[[");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.json()["error"].as_str().unwrap().contains("invalid log filter"));
    assert_eq!(get(&admin, "/v1/log-level").json()["filter"], "info,corelog_net=debug");
    // A body over 4 KiB is refused whole, not cut short and applied.
    let oversized = format!("info,corelog_net=debug{}", ",corelog_engine=info".repeat(300));
    assert_eq!(http::request(&admin, "PUT", "/v1/log-level", &oversized).status, 413);
    assert_eq!(get(&admin, "/v1/log-level").json()["filter"], "info,corelog_net=debug");
    // A connection closed for a bad frame is logged at debug by the net crate: visible now.
    {
        use std::io::Write;
        let mut bad = std::net::TcpStream::connect(&address).unwrap();
        bad.write_all(&[0, 0, 0, 0]).unwrap();
    }
    wait_for_line(&mut broker, "closing connection", "corelog_net debug lines after the change");

    // `corelog cluster health` asks the same API.
    let (code, out) = cluster_health(&admin, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("READY  yes") && out.contains("1      up"), "{out}");
    let (code, out) = cluster_health(&admin, &["--format", "json"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["ready"], true);

    drop(consumer);
    drop(producer);
    broker.stop();
    let (code, out) = cluster_health(&admin, &[]);
    assert_eq!(code, Some(3), "a stopped broker's admin API does not answer: {out}");
    assert!(out.contains("did not answer"), "{out}");
}

/// Runs `corelog cluster health --admin ADDRESS`; returns its exit code and its output.
fn cluster_health(admin: &str, extra: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["cluster", "health", "--admin", admin])
        .args(extra)
        .output()
        .expect("run corelog cluster health");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

fn wait_for_line(broker: &mut Broker, needle: &str, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !broker.log_lines().iter().any(|line| line.contains(needle)) {
        assert!(Instant::now() < deadline, "{what}: no line with {needle:?} within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_taken_admin_port_stops_start_up_with_a_message_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (code, output) = Broker::start(dir.path(), &["--cores", "1", "--admin-listen", &port]).wait_exit();
    assert_eq!(code, Some(70), "{output}");
    assert!(output.contains("admin_listen") && output.contains(&port), "{output}");
}
