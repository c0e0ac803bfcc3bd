//! glommio 0.9 can park with tasks runnable when its preemption timer fires between arming
//! and the start of the task queues (see `engine/src/nudge.rs`). This test makes that likely
//! (two shards and two busy threads share one CPU, and the shard's work runs in a queue that
//! asks for 500 µs latency, which makes the timer that short) and checks that a nudger keeps
//! the appends completing. Without nudgers (the test's and the log's) it failed 4 runs out of
//! 4 here, a shard asleep for good within 180 of the 300 rounds; with them it passes in about
//! 12 s. A watchdog turns a hang into a failure with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use corelog_engine::log::LogConfig;
use corelog_engine::nudge::Nudger;

const SHARDS: u64 = 2;
const ROUNDS: u64 = 150;
/// A round takes milliseconds; this long without one finishing is a hang.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
fn appends_complete_while_the_shard_shares_its_cpu_with_busy_threads() {
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                pin_to(0);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let finished = Arc::new(AtomicU64::new(0));
    let watched = Arc::clone(&finished);
    let watchdog_stop = Arc::clone(&stop);
    let watchdog = std::thread::spawn(move || {
        let mut seen = 0;
        let mut since = Instant::now();
        while !watchdog_stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            let now = watched.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                since = Instant::now();
            } else if since.elapsed() > ROUND_DEADLINE {
                // Straight to the file descriptor: the test harness captures `eprintln!`, and
                // an abort would drop what it captured.
                let message = format!(
                    "round {} of {} made no progress in {ROUND_DEADLINE:?}: the shard's executor slept with \
                     work pending (a lost wake-up)\n",
                    now + 1,
                    SHARDS * ROUNDS
                );
                let _ = std::io::Write::write_all(&mut std::io::stderr(), message.as_bytes());
                std::process::abort();
            }
        }
    });

    // Two shards at once: twice the chances of a preemption at the wrong moment.
    let shards: Vec<_> = (0..SHARDS)
        .map(|shard| {
            let finished = Arc::clone(&finished);
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    one_round(shard * ROUNDS + round);
                    finished.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for shard in shards {
        shard.join().unwrap();
    }

    stop.store(true, Ordering::Relaxed);
    for thread in busy {
        thread.join().unwrap();
    }
    watchdog.join().unwrap();
}

/// One executor's life: a log opened, 12 batches appended (each awaited to durability), the
/// log closed, all in a queue that asks for 500 µs latency, and a nudger for the whole life
/// (each log has its own, but it only guards the executor while the log is open; the hangs
/// seen without one were as often just before the open or just after the close).
fn one_round(round: u64) {
    let dir = tempfile::tempdir().unwrap();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0)).make().expect("executor").run(async {
        let nudger = Nudger::start("test-nudge".into(), Duration::from_millis(1), Duration::from_millis(10)).unwrap();
        let target = glommio::spawn_local_into(nudger.target(|| true), glommio::TaskQueueHandle::default()).unwrap();
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::default(),
            glommio::Latency::Matters(Duration::from_micros(500)),
            "latency-sensitive",
        );
        glommio::spawn_local_into(appends(dir.path().to_path_buf(), round), queue).unwrap().await;
        nudger.stop();
        target.await;
    });
}

async fn appends(dir: std::path::PathBuf, round: u64) {
    let log = open_log_with_journal(&dir, 1 << 20, 0).await;
    // ~0.5 KiB batches in 2 KiB segments: rolls (a new file, a sealed one's indexes) in most
    // waves.
    let config = LogConfig { segment_bytes: 2048, ..small_segments() };
    log.open_partition(&tp(), config).await.unwrap();
    for seed in 0..12 {
        let appended = log.append(&tp(), batch_for(round * 100 + seed, 3, 150), 0).unwrap();
        appended.durable.await.unwrap();
    }
    log.close().await.unwrap();
}
