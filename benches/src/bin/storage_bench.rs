//! `storage-bench`: runs the storage scenarios of issue 2 against a data dir and prints a
//! Markdown report (the source of docs/benchmarks.md), with the device's sequential write
//! bandwidth measured in the same run and each result's ratio to it.
//!
//! Usage: storage-bench [DATA_DIR] [--repeat N] [--quick] [--only TEXT]

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark harness: failures abort the run

// The broker's allocator (no transparent huge pages, see docs/operations.md): the engine's
// latencies are measured as it runs in the binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use corelog_benches::{
    AppendScenario, BenchArgs, append_scenario, device_write_bandwidth, hardware_report, median, on_shard,
    read_scenario,
};
use corelog_engine::log::FlushPolicy;
use corelog_engine::log::shard_log::JOURNAL_BYTES_DEFAULT;

fn main() {
    let BenchArgs { quick, repeat, base, only } = BenchArgs::parse();
    let wanted = |label: &str| only.as_deref().is_none_or(|only| label.contains(only));
    let scale: u64 = if quick { 1 } else { 8 };
    let gib = |mib: u64| mib << 20;
    println!("## Storage engine (one shard)\n");
    println!("{}\n", hardware_report(&base));
    println!(
        "Median of {repeat} runs; every run measures the device first (O_DIRECT sequential write, 1 MiB blocks, queue depth 16).\n"
    );
    println!("| scenario | throughput MB/s | device MB/s | ratio | durable p50 / p99 / max µs | syncs | appends |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let scenarios: Vec<(&str, AppendScenario)> = vec![
        (
            "1 partition, 1 MiB batches, always",
            AppendScenario {
                partitions: 1,
                batch_bytes: 1 << 20,
                policy: FlushPolicy::Always,
                total_bytes: gib(128 * scale),
                in_flight_per_partition: 16,
                rate_bytes_per_sec: None,
                journal_bytes: JOURNAL_BYTES_DEFAULT,
            },
        ),
        (
            "1 partition, 256 KiB batches, always",
            AppendScenario {
                partitions: 1,
                batch_bytes: 256 << 10,
                policy: FlushPolicy::Always,
                total_bytes: gib(64 * scale),
                in_flight_per_partition: 16,
                rate_bytes_per_sec: None,
                journal_bytes: JOURNAL_BYTES_DEFAULT,
            },
        ),
        (
            "1 partition, 16 KiB batches, always",
            AppendScenario {
                partitions: 1,
                batch_bytes: 16 << 10,
                policy: FlushPolicy::Always,
                total_bytes: gib(32 * scale),
                in_flight_per_partition: 64,
                rate_bytes_per_sec: None,
                journal_bytes: JOURNAL_BYTES_DEFAULT,
            },
        ),
        (
            "1 partition, 1 MiB batches, none",
            AppendScenario {
                partitions: 1,
                batch_bytes: 1 << 20,
                policy: FlushPolicy::None,
                total_bytes: gib(128 * scale),
                in_flight_per_partition: 16,
                rate_bytes_per_sec: None,
                journal_bytes: JOURNAL_BYTES_DEFAULT,
            },
        ),
        (
            "1 partition, 16 KiB batches, none",
            AppendScenario {
                partitions: 1,
                batch_bytes: 16 << 10,
                policy: FlushPolicy::None,
                total_bytes: gib(32 * scale),
                in_flight_per_partition: 64,
                rate_bytes_per_sec: None,
                journal_bytes: JOURNAL_BYTES_DEFAULT,
            },
        ),
        (
            "100 partitions, 16 KiB batches, always",
            AppendScenario {
                partitions: 100,
                batch_bytes: 16 << 10,
                policy: FlushPolicy::Always,
                total_bytes: gib(64 * scale),
                in_flight_per_partition: 5,
                rate_bytes_per_sec: None,
                journal_bytes: JOURNAL_BYTES_DEFAULT,
            },
        ),
        (
            // Several producers writing the same partitions (four with a `max.in.flight` of 5
            // each): how far the shard goes when more appends wait than one producer keeps
            // in flight.
            "100 partitions, 16 KiB batches, always, 4 producers (20 in flight per partition)",
            AppendScenario {
                partitions: 100,
                batch_bytes: 16 << 10,
                policy: FlushPolicy::Always,
                total_bytes: gib(64 * scale),
                in_flight_per_partition: 20,
                rate_bytes_per_sec: None,
                journal_bytes: JOURNAL_BYTES_DEFAULT,
            },
        ),
        (
            "1 partition, 1 MiB batches, always, no journal",
            AppendScenario {
                partitions: 1,
                batch_bytes: 1 << 20,
                policy: FlushPolicy::Always,
                total_bytes: gib(128 * scale),
                in_flight_per_partition: 16,
                rate_bytes_per_sec: None,
                journal_bytes: 0,
            },
        ),
        (
            "100 partitions, 16 KiB batches, always, no journal",
            AppendScenario {
                partitions: 100,
                batch_bytes: 16 << 10,
                policy: FlushPolicy::Always,
                total_bytes: gib(64 * scale),
                in_flight_per_partition: 5,
                rate_bytes_per_sec: None,
                journal_bytes: 0,
            },
        ),
    ];
    let mut max_rate_100 = 0.0;
    for (label, scenario) in scenarios.iter().filter(|(label, _)| wanted(label)) {
        let mut device = Vec::new();
        let mut runs = Vec::new();
        for _ in 0..repeat {
            let dir = tempfile::tempdir_in(&base).expect("temp dir");
            let (bw, report) = on_shard(async {
                let bw = device_write_bandwidth(dir.path(), gib(256 * scale.min(4)), 1 << 20, 16).await;
                (bw, append_scenario(dir.path(), scenario).await)
            });
            device.push(bw);
            runs.push(report);
        }
        runs.sort_by(|a, b| a.bytes_per_sec().total_cmp(&b.bytes_per_sec()));
        let mid = &runs[runs.len() / 2];
        let device = median(device);
        // The paced runs go at half of the one-producer rate.
        if scenario.partitions == 100 && scenario.in_flight_per_partition == 5 && scenario.journal_bytes > 0 {
            max_rate_100 = mid.bytes_per_sec();
        }
        println!(
            "| {label} | {:.0} | {:.0} | {:.2} | {} / {} / {} | {} | {} |",
            mid.bytes_per_sec() / 1e6,
            device / 1e6,
            mid.bytes_per_sec() / device,
            mid.latency_us_p50,
            mid.latency_us_p99,
            mid.latency_us_max,
            mid.syncs,
            mid.appends
        );
    }
    // Latency at half the measured 100-partition max rate (with the journal), paced (no
    // coordinated omission), with and without the journal.
    let paced_runs = [("", JOURNAL_BYTES_DEFAULT), (", no journal", 0)];
    for (suffix, journal_bytes) in
        paced_runs.into_iter().filter(|_| max_rate_100 > 0.0 && wanted("100 partitions, 16 KiB, always, paced"))
    {
        let mut paced = Vec::new();
        for _ in 0..repeat {
            let dir = tempfile::tempdir_in(&base).expect("temp dir");
            let scenario = AppendScenario {
                partitions: 100,
                batch_bytes: 16 << 10,
                policy: FlushPolicy::Always,
                total_bytes: ((max_rate_100 / 2.0) * if quick { 2.0 } else { 5.0 }) as u64,
                in_flight_per_partition: 64,
                rate_bytes_per_sec: Some(max_rate_100 / 2.0),
                journal_bytes,
            };
            paced.push(on_shard(append_scenario(dir.path(), &scenario)));
        }
        paced.sort_by_key(|r| r.latency_us_p99);
        let mid = &paced[paced.len() / 2];
        println!(
            "| 100 partitions, 16 KiB, always, paced at {:.0} MB/s (half of max){suffix} | {:.0} | – | – | {} / {} / {} | {} | {} |",
            max_rate_100 / 2e6,
            mid.bytes_per_sec() / 1e6,
            mid.latency_us_p50,
            mid.latency_us_p99,
            mid.latency_us_max,
            mid.syncs,
            mid.appends
        );
    }
    for (label, from_cache) in
        [("read 1 MiB batches from the batch cache", true), ("read 1 MiB batches from segment files (O_DIRECT)", false)]
            .into_iter()
            .filter(|(label, _)| wanted(label))
    {
        let mut rates = Vec::new();
        for _ in 0..repeat {
            let dir = tempfile::tempdir_in(&base).expect("temp dir");
            rates.push(on_shard(read_scenario(dir.path(), gib(64 * scale.min(4)), 1 << 20, from_cache)));
        }
        println!("| {label} | {:.0} | – | – | – | – | – |", median(rates) / 1e6);
    }
}
