//! `group-bench [--quick] [--repeat N] [DIR]`: offset-commit throughput of one shard's group
//! coordinator, as a markdown table for `docs/benchmarks.md` (median of N runs; each run
//! measures the device's serial write+fdatasync rate first).
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark harness

use corelog_benches::groups::{commit_scenario, device_sync_rate, local_broker, rebalance_scenario};
use corelog_benches::{BenchArgs, hardware_report, median, on_shard};

fn main() {
    let BenchArgs { quick, repeat, base, .. } = BenchArgs::parse();
    let commits_each: u64 = if quick { 200 } else { 2_000 };
    println!("## Offset commits (one shard)\n");
    println!("{}\n", hardware_report(&base));
    println!(
        "Median of {repeat} runs; every run first measures serial 4 KiB O_DIRECT write + fdatasync operations per second.\n"
    );
    println!("| committers in flight | commits/s | device syncs/s | commits per sync | p50 / p99 µs |");
    println!("|---:|---:|---:|---:|---:|");
    for committers in [1usize, 64, 512] {
        let mut rates = Vec::new();
        let mut devices = Vec::new();
        let mut per_sync = Vec::new();
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for _ in 0..repeat {
            let dir = tempfile::tempdir_in(&base).expect("temp dir");
            let (device, report) = on_shard(async {
                let device = device_sync_rate(dir.path(), 500).await;
                (device, commit_scenario(dir.path(), committers, commits_each).await)
            });
            devices.push(device);
            rates.push(report.commits_per_sec());
            per_sync.push(report.commits as f64 / report.syncs.max(1) as f64);
            p50.push(report.latency_us_p50 as f64);
            p99.push(report.latency_us_p99 as f64);
        }
        println!(
            "| {committers} | {:.0} | {:.0} | {:.1} | {:.0} / {:.0} |",
            median(rates),
            median(devices),
            median(per_sync),
            median(p50),
            median(p99)
        );
    }
    println!("\n## Rebalance of a 3-member group (librdkafka, classic protocol)\n");
    println!(
        "Broker defaults (group.initial.rebalance.delay.ms 3000); librdkafka heartbeat.interval.ms 3000; \
         12 partitions; median of {repeat} runs.\n"
    );
    println!("| phase | median ms | target ms |");
    println!("|---|---:|---:|");
    let mut first = Vec::new();
    let mut leave = Vec::new();
    for run in 0..repeat {
        let dir = tempfile::tempdir_in(&base).expect("temp dir");
        let broker = local_broker(dir.path(), Default::default());
        let address = broker.address.to_string();
        let topic = format!("rebalance-{run}");
        let report = rebalance_scenario(&address, &topic, 12, 3, 3_000, std::time::Duration::from_secs(120));
        first.push(report.first_generation.as_secs_f64() * 1e3);
        leave.push(report.after_leave.as_secs_f64() * 1e3);
        broker.stop().expect("stop the broker");
    }
    println!(
        "| 3 members join an empty group, each owns its share | {:.0} | < 6000 (delay + one heartbeat) |",
        median(first)
    );
    println!("| one member leaves, the other two own everything | {:.0} | < 3000 (one heartbeat) |", median(leave));
}
