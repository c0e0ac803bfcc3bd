//! A disk that really fills up: the real broker on a 64 MiB ext4 filesystem (a loop-mounted
//! image file), an acks=all producer writing until there is no room left.
//!
//! What must hold: producers get an error (KAFKA_STORAGE_ERROR, or a timeout for the batch
//! caught by the full disk) and nothing that was not written and synced is acknowledged; the
//! broker keeps serving reads of everything acknowledged; once space returns (a topic is
//! deleted) the same partition takes writes again without a restart; and after a restart
//! every acknowledged record is still there, in order, once (a full disk never corrupts a
//! segment).
//!
//! Mounting needs root (CI runs as root). Elsewhere the test says it cannot run and passes,
//! unless `CI` is set, where not being able to mount fails it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::kafka::*;
use common::{Broker, WAIT};
use futures_lite::future::block_on;
use rdkafka::producer::Producer;

/// A small ext4 filesystem in an image file, mounted through a loop device; unmounted on drop.
struct SmallFilesystem {
    mount_point: PathBuf,
    _root: tempfile::TempDir,
}

impl SmallFilesystem {
    fn mount(size_mib: u64) -> Result<Self, String> {
        let root = tempfile::tempdir().unwrap();
        let image = root.path().join("disk.img");
        let mount_point = root.path().join("mnt");
        std::fs::create_dir(&mount_point).unwrap();
        std::fs::File::create(&image).unwrap().set_len(size_mib << 20).unwrap();
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()])?;
        run("mount", &["-o", "loop", image.to_str().unwrap(), mount_point.to_str().unwrap()])?;
        Ok(Self { mount_point, _root: root })
    }

    fn available_bytes(&self) -> u64 {
        // SAFETY: statvfs fills the struct we own; the path is a valid C string.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(self.mount_point.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stats) }, 0, "statvfs");
        stats.f_bavail * stats.f_frsize
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", self.mount_point.to_str().unwrap()]);
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

fn start(data_dir: &Path, config: &Path) -> (Broker, String) {
    let mut broker = Broker::start(data_dir, &["--config", config.to_str().unwrap(), "--cores", "1"]);
    let address = broker.wait_ready();
    (broker, address)
}

/// Sends sequenced messages to `topic` until `done` says so (checked after every flush).
fn produce_until(
    producer: &rdkafka::producer::BaseProducer<Deliveries>,
    topic: &str,
    next: &mut usize,
    done: impl Fn(&Deliveries) -> bool,
) {
    let deadline = Instant::now() + WAIT * 2;
    while !done(producer.context()) {
        assert!(Instant::now() < deadline, "{topic}: not done within {:?}", WAIT * 2);
        for _ in 0..5_000 {
            send_sequenced(producer, topic, 1, *next);
            *next += 1;
        }
        flush(producer);
    }
}

#[test]
fn a_full_disk_refuses_writes_keeps_what_was_acknowledged_and_writes_again_when_room_returns() {
    let filesystem = match SmallFilesystem::mount(64) {
        Ok(filesystem) => filesystem,
        Err(error) if std::env::var_os("CI").is_none() => {
            eprintln!("disk full: cannot mount a loop filesystem here ({error}); run as root to test this");
            return;
        }
        Err(error) => panic!("CI runs as root and must be able to mount a loop filesystem: {error}"),
    };
    let data_dir = filesystem.mount_point.join("data");
    let config = filesystem.mount_point.join("corelog.toml");
    std::fs::write(&config, "offsets_topic_num_partitions = 1\n[log]\nsegment_bytes = 4194304\n").unwrap();
    let (broker, address) = start(&data_dir, &config);
    create_topic(&address, "ballast", 1);
    create_topic(&address, "filler", 1);

    // About a quarter of the room goes to a topic that is deleted later.
    let ballast = producer(&address, &[("acks", "all"), ("linger.ms", "5")]);
    let mut ballast_next = 0;
    produce_until(&ballast, "ballast", &mut ballast_next, |d| d.acked_count() * 130 > 14 << 20);
    drop(ballast);

    // The rest fills up. Retries are off, so the broker's answer reaches the delivery report; a
    // batch caught by the full disk waits for room and times out (its outcome is unknown, as
    // after any timeout), the ones after it are refused.
    let settings = [("acks", "all"), ("linger.ms", "5"), ("retries", "0"), ("request.timeout.ms", "3000")];
    let producer = producer(&address, &settings);
    let mut next = 0;
    let refused = |error: &str| error.contains("KafkaStorageError");
    produce_until(&producer, "filler", &mut next, |d| d.failed().iter().any(|(_, error)| refused(error)));
    let failed = producer.context().failed();
    let acked_when_full = producer.context().acked();
    // The batches caught by the full disk time out; later ones are refused at once.
    let timed_out = failed.iter().filter(|(_, error)| error.contains("RequestTimedOut")).count();
    let storage_errors = failed.iter().filter(|(_, error)| refused(error)).count();
    eprintln!(
        "disk full: {} acknowledged, then {} failed ({timed_out} timed out, {storage_errors} KAFKA_STORAGE_ERROR); \
         {} KiB left",
        acked_when_full.len(),
        failed.len(),
        filesystem.available_bytes() >> 10
    );
    assert_eq!(timed_out + storage_errors, failed.len(), "unexpected errors: {:?}", &failed[..failed.len().min(5)]);
    // Everything acknowledged is readable while the disk is full.
    check_sequenced(&address, "filler", 1, &acked_when_full, next);

    // Room returns: the same partition takes writes again, without a restart.
    let deleted = block_on(admin(&address).delete_topics(&["ballast"], &admin_options())).unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    let resumed = Instant::now();
    let acked_before = producer.context().acked_count();
    produce_until(&producer, "filler", &mut next, |d| d.acked_count() >= acked_before + 1_000);
    eprintln!("disk full: writes resumed {:?} after the delete", resumed.elapsed());
    let acked = producer.context().acked();
    check_sequenced(&address, "filler", 1, &acked, next);
    drop(producer);

    // After a restart, every acknowledged record is still there, once and in order.
    let high_watermark = watermarks(&address, "filler", 0).1;
    broker.stop();
    let (broker, address) = start(&data_dir, &config);
    assert_eq!(watermarks(&address, "filler", 0).1, high_watermark, "the log end survived the restart");
    check_sequenced(&address, "filler", 1, &acked, next);
    broker.stop();
}
