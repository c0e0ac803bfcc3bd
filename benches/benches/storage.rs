//! Criterion micro-benchmarks of the storage engine: batch intake (validation + stamping)
//! and one-shard append throughput. `storage-bench` produces the report with device ratios.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark harness: failures abort the run

use std::time::{Duration, Instant};

use bytes::BytesMut;
use corelog_benches::{AppendScenario, append_scenario, on_shard, template_batch};
use corelog_engine::batch;
use corelog_engine::log::FlushPolicy;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn intake(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_intake");
    for size in [16 << 10, 1 << 20] {
        let template = template_batch(size);
        group.throughput(Throughput::Bytes(template.len() as u64));
        group.bench_function(format!("validate_and_stamp_{}KiB", size >> 10), |b| {
            let mut buffer = BytesMut::from(&template[..]);
            b.iter(|| {
                let header = batch::validate_produced(&buffer, 2 << 20).expect("valid");
                batch::stamp(&mut buffer, header.base_offset + 1, 0);
                header
            })
        });
    }
    group.finish();
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_append");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let total: u64 = 64 << 20;
    group.throughput(Throughput::Bytes(total));
    for (batch_bytes, policy) in [
        (16 << 10, FlushPolicy::Always),
        (256 << 10, FlushPolicy::Always),
        (1 << 20, FlushPolicy::Always),
        (1 << 20, FlushPolicy::None),
    ] {
        let name = format!("{}KiB_{:?}", batch_bytes >> 10, policy).to_lowercase();
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iterations {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let started = Instant::now();
                    on_shard(append_scenario(
                        dir.path(),
                        &AppendScenario {
                            partitions: 1,
                            batch_bytes,
                            policy,
                            total_bytes: total,
                            in_flight_per_partition: 8,
                            rate_bytes_per_sec: None,
                            journal_bytes: corelog_engine::log::shard_log::JOURNAL_BYTES_DEFAULT,
                        },
                    ));
                    elapsed += started.elapsed();
                }
                elapsed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, intake, append);
criterion_main!(benches);
