//! `corelog start` end to end: the real binary on a temp data dir, stopped by signals.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use corelog_engine::batch;
use corelog_engine::log::{LogConfig, ShardLog, ShardLogConfig, TopicPartition};

const WAIT: Duration = Duration::from_secs(60);

struct Broker {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Broker {
    fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corelog"))
            .arg("start")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("CORELOG_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corelog");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, seen: Vec::new() }
    }

    /// Waits for a log line containing `needle`; panics with everything seen on timeout.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!("no line containing {needle:?} within {WAIT:?}; saw:\n{}", self.seen.join("\n"));
    }

    fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for exit; returns the code and everything printed.
    fn wait_exit(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return (status.code(), self.seen.join("\n"));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("corelog did not exit within {WAIT:?}; saw:\n{}", self.seen.join("\n"));
            }
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

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
    let ready = broker.wait_for("corelog ready");
    let address = ready
        .split_whitespace()
        .find_map(|word| word.strip_prefix("listen="))
        .expect("the ready line names the listener")
        .to_string();
    assert!(!address.ends_with(":0"), "port 0 must be resolved: {ready}");
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
