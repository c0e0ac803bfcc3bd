//! `corelog start` end to end: the real binary on a temp data dir, stopped by signals.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::Broker;
use corelog_engine::batch;
use corelog_engine::log::{LogConfig, ShardLog, ShardLogConfig, TopicPartition};

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().unwrap().run(f)
}

fn events() -> TopicPartition {
    TopicPartition::new("events", 0)
}

#[test]
fn starts_and_stops_cleanly_on_sigterm_and_sigint() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker::start(dir.path(), &["--cores", "2"]);
        broker.wait_for("corelog ready");
        broker.signal(signal);
        let (code, output) = broker.wait_exit();
        assert_eq!(code, Some(0), "{output}");
        assert!(output.contains("stopped cleanly"), "{output}");
        assert!(dir.path().join(".device-probe").exists());
    }
}

#[test]
fn recovers_partitions_after_a_crash_and_leaves_them_clean_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    // The topic exists in the registry (partition directories of unknown topics are removed).
    let registry = corelog_net::registry::Registry::open(dir.path()).unwrap();
    let mut topics = corelog_net::registry::TopicMap::new();
    topics.insert("events".into(), corelog_net::registry::new_topic("events", 1, Default::default()));
    registry.store(topics).unwrap();
    // A leftover of a deleted topic, which the start must remove.
    std::fs::create_dir_all(dir.path().join("gone-0")).unwrap();
    // Write 30 acknowledged batches, then "crash" (no clean close).
    run(async {
        let log = ShardLog::open(ShardLogConfig::new(dir.path().to_path_buf(), 0)).await.unwrap();
        log.open_partition(&events(), LogConfig::default()).await.unwrap();
        for seed in 0..30 {
            let bytes = BytesMut::from(&batch::build_test_batch(2, &[seed as u8; 100], 5)[..]);
            log.append(&events(), bytes, 0).unwrap().durable.await.unwrap();
        }
    });
    let mut broker = Broker::start(dir.path(), &["--cores", "1"]);
    let line = broker.wait_for("partition recovered");
    assert!(line.contains("events-0") && line.contains("log_end_offset=60"), "{line}");
    assert!(line.contains("segments_scanned=1"), "a crashed active segment is scanned: {line}");
    broker.wait_for("corelog ready");
    broker.signal(libc::SIGTERM);
    let (code, output) = broker.wait_exit();
    assert_eq!(code, Some(0), "{output}");
    assert!(!dir.path().join("gone-0").exists(), "files of an unknown topic must be removed");
    // The clean stop left valid indexes: the next open trusts them.
    run(async {
        let log = ShardLog::open(ShardLogConfig::new(dir.path().to_path_buf(), 0)).await.unwrap();
        let report = log.open_partition(&events(), LogConfig::default()).await.unwrap();
        assert_eq!(report.segments_scanned, 0, "{report:?}");
        assert_eq!(log.offsets(&events()).unwrap().log_end_offset, 60);
        log.close().await.unwrap();
    });
}

#[test]
fn an_invalid_config_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corelog.toml");
    std::fs::write(&config, "[log]\nflush = \"sometimes\"\n").unwrap();
    let broker = Broker::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let (code, output) = broker.wait_exit();
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("log.flush"), "{output}");

    std::fs::write(&config, "cores = 1\nunknown_key = 3\n").unwrap();
    let (code, output) = Broker::start(dir.path(), &["--config", config.to_str().unwrap()]).wait_exit();
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("unknown_key"), "{output}");
}

#[test]
fn a_second_broker_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Broker::start(dir.path(), &["--cores", "1"]);
    first.wait_for("corelog ready");
    let (code, output) = Broker::start(dir.path(), &["--cores", "1"]).wait_exit();
    assert_eq!(code, Some(70), "{output}");
    assert!(output.contains("in use by another corelog"), "{output}");
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit().0, Some(0));
}

#[test]
fn a_second_broker_on_a_port_in_use_is_refused_instead_of_sharing_it() {
    // SO_REUSEPORT lets the shards share the port; it must not let another process in.
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = Broker::start(first_dir.path(), &["--cores", "1"]);
    let address = first.wait_ready();
    let (code, output) = Broker::start_on(second_dir.path(), &address, &["--cores", "1"]).wait_exit();
    assert_eq!(code, Some(70), "{output}");
    assert!(output.contains("already in use"), "{output}");
    first.stop();
}

#[test]
fn an_unusable_data_dir_is_a_fail_stop_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let (code, output) = Broker::start(&file, &["--cores", "1"]).wait_exit();
    assert_eq!(code, Some(70), "{output}");
    assert!(output.contains("not-a-dir"), "the message names the path: {output}");
}

#[test]
fn the_kafka_port_answers_api_versions_on_every_shard() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &["--cores", "2"]);
    let address = broker.wait_ready();
    // Many connections, so that both shards' listeners (SO_REUSEPORT) get some.
    for correlation_id in 0..20i32 {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // ApiVersions v0: size, api key 18, version 0, correlation id, null client id.
        let mut request = 10i32.to_be_bytes().to_vec();
        request.extend_from_slice(&[0, 18, 0, 0]);
        request.extend_from_slice(&correlation_id.to_be_bytes());
        request.extend_from_slice(&[0xff, 0xff]);
        stream.write_all(&request).unwrap();
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).unwrap();
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut body).unwrap();
        assert_eq!(&body[0..4], &correlation_id.to_be_bytes(), "correlation id echoed");
        assert_eq!(&body[4..6], &[0, 0], "error code NONE");
    }
    broker.signal(libc::SIGTERM);
    let (code, output) = broker.wait_exit();
    assert_eq!(code, Some(0), "{output}");
}
