//! Every benchmark scenario in tiny mode, so that the benches cannot rot.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use corelog_benches::*;
use corelog_engine::log::FlushPolicy;

#[test]
fn device_bandwidth_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    let bw = on_shard(device_write_bandwidth(dir.path(), 8 << 20, 1 << 20, 8));
    assert!(bw > 1e6, "implausible device bandwidth {bw}");
}

#[test]
fn append_scenarios_run_under_every_policy() {
    let journal = corelog_engine::log::shard_log::JOURNAL_BYTES_DEFAULT;
    for (partitions, batch_bytes, policy, rate, journal_bytes) in [
        (1, 1 << 20, FlushPolicy::Always, None, journal),
        (1, 1 << 20, FlushPolicy::Always, None, 0),
        (1, 16 << 10, FlushPolicy::None, None, journal),
        (10, 16 << 10, FlushPolicy::Always, None, journal),
        (10, 16 << 10, FlushPolicy::Always, None, 0),
        (10, 16 << 10, FlushPolicy::Always, Some(20e6), journal),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let scenario = AppendScenario {
            partitions,
            batch_bytes,
            policy,
            total_bytes: 4 << 20,
            in_flight_per_partition: 4,
            rate_bytes_per_sec: rate,
            journal_bytes,
        };
        let report = on_shard(append_scenario(dir.path(), &scenario));
        assert!(report.appends >= partitions as u64);
        assert!(report.bytes_per_sec() > 0.0);
        assert!(report.latency_us_p99 >= report.latency_us_p50);
        if policy == FlushPolicy::Always {
            assert!(report.syncs > 0);
        }
    }
}

#[test]
fn read_scenarios_read_everything() {
    for from_cache in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let rate = on_shard(read_scenario(dir.path(), 4 << 20, 256 << 10, from_cache));
        assert!(rate > 0.0);
    }
}

#[test]
fn the_hardware_report_names_the_cpu() {
    assert!(hardware_report(std::path::Path::new("/tmp")).contains("CPU:"));
}

#[test]
fn the_commit_scenario_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (sync_rate, report) = on_shard(async {
        let rate = groups::device_sync_rate(dir.path(), 20).await;
        (rate, groups::commit_scenario(dir.path(), 8, 20).await)
    });
    assert!(sync_rate > 0.0);
    assert_eq!(report.commits, 160);
    assert!(report.syncs > 0 && report.syncs <= 160, "{}", report.syncs);
    assert!(report.commits_per_sec() > 0.0 && report.latency_us_p99 >= report.latency_us_p50);
}

#[test]
fn the_rebalance_scenario_runs() {
    let dir = tempfile::tempdir().unwrap();
    let group = corelog_net::group::classic::CoordinatorConfig { initial_rebalance_delay_ms: 0, ..Default::default() };
    let broker = groups::local_broker(dir.path(), group);
    let address = broker.address.to_string();
    let report = groups::rebalance_scenario(&address, "tiny-rebalance", 6, 3, 100, std::time::Duration::from_secs(60));
    assert!(report.first_generation > std::time::Duration::ZERO && report.after_leave > std::time::Duration::ZERO);
    broker.stop().unwrap();
}

#[test]
fn the_hostile_scenarios_run() {
    use corelog_benches::hostile::{Attack, calm_client, fill_fetch_topic, start_attack};
    let dir = tempfile::tempdir().unwrap();
    let broker = corelog_benches::hostile::bench_broker(dir.path(), None);
    let address = broker.address.to_string();
    fill_fetch_topic(&address, "fetched");
    let attacks = [
        Attack::Quiet,
        Attack::SlowLoris { connections: 5 },
        Attack::IdleConnections { connections: 20 },
        Attack::HugeFrames,
        Attack::RandomBytes { senders: 1 },
        Attack::NeverReads { clients: 2 },
    ];
    for (index, attack) in attacks.into_iter().enumerate() {
        let running = start_attack(attack, &address, "fetched");
        let figures = calm_client(&address, &format!("calm-{index}"), 100, std::time::Duration::from_millis(200));
        running.stop();
        assert!(figures.max_rate_messages_per_sec > 0.0, "{attack:?}: {figures:?}");
        assert!(figures.latency_ms_p99 >= figures.latency_ms_p50 && figures.latency_ms_p50 > 0.0, "{figures:?}");
    }
    broker.stop().unwrap();
}
