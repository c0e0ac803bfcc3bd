//! iotune in tiny mode on a scratch dir, and the profile file round trip.
//!
//! The scratch dir lives under Cargo's target tmp dir, which sits on a real filesystem (O_DIRECT
//! is refused by tmpfs, which some systems mount on /tmp).

// Helpers outside #[test] functions are test code too (clippy.toml allows unwrap in tests).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use corelog_hardware::iotune::{self, IoProfile, IotuneConfig, SCRATCH_FILE_NAME};

fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn tiny_run_measures_every_figure_and_round_trips() {
    let dir = scratch_dir();
    let data_dir = dir.path().join("data");
    let mut phases = Vec::new();
    let config = IotuneConfig::tiny();
    let profile = iotune::run(&data_dir, &config, &mut |line| phases.push(line.to_string())).unwrap();

    assert!(profile.write_bandwidth_bytes_per_sec > 0);
    assert!(profile.read_bandwidth_bytes_per_sec > 0);
    assert!(profile.fill_write_bandwidth_bytes_per_sec > 0);
    assert!(profile.random_read_iops > 0);
    let latency = profile.fdatasync_latency_us;
    assert!(latency.samples > 0);
    assert!(latency.p50 > 0 && latency.p50 <= latency.p99 && latency.p99 <= latency.max);
    // 2 block sizes × 2 depths × 2 directions.
    assert_eq!(profile.sweep.len(), 8);
    assert!(config.block_sizes_bytes.contains(&profile.knee_block_size_bytes));
    assert!(config.queue_depths.contains(&profile.knee_queue_depth));
    assert!(
        profile.write_knee.bandwidth_bytes_per_sec as f64
            >= 0.9 * profile.write_knee.peak_bandwidth_bytes_per_sec as f64
    );
    assert_eq!(profile.file_size_bytes, config.file_size_bytes);
    assert!(phases.len() >= 6, "{phases:?}");
    assert!(!data_dir.join(SCRATCH_FILE_NAME).exists(), "scratch file must be removed");

    let path = IoProfile::default_path(&data_dir);
    assert_eq!(path, data_dir.join("io-profile.json"));
    assert_eq!(IoProfile::load(&path).unwrap(), None);
    profile.save(&path).unwrap();
    assert_eq!(IoProfile::load(&path).unwrap(), Some(profile.clone()));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(json["fdatasync_latency_us"]["p99"].as_u64().is_some());
    assert!(json["write_bandwidth_bytes_per_sec"].as_u64().is_some());
}

#[test]
fn load_rejects_garbage_and_unknown_versions() {
    let dir = scratch_dir();
    let path = dir.path().join("io-profile.json");
    std::fs::write(&path, "{ not json").unwrap();
    let error = IoProfile::load(&path).unwrap_err().to_string();
    assert!(error.contains("io-profile.json"), "{error}");

    std::fs::write(&path, r#"{"format_version": 99}"#).unwrap();
    assert!(IoProfile::load(&path).is_err());
}

#[test]
fn unusable_data_dir_is_a_clear_error() {
    let dir = scratch_dir();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let error = iotune::run(&file.join("data"), &IotuneConfig::tiny(), &mut |_| {}).unwrap_err().to_string();
    assert!(error.contains("a-file"), "{error}");
    assert!(!Path::new(&file).join("data").exists());
}
