//! Property test: random append / roll / retain / delete-records / restart (clean or crash)
//! sequences, checked after every step against an in-memory model of the log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use common::*;
use corelog_engine::batch;
use corelog_engine::log::LogConfig;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append { records: i32, value_bytes: usize },
    DeleteRecords { permille: u16 },
    Retain,
    Restart { clean: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1..6i32, 1..400usize).prop_map(|(records, value_bytes)| Op::Append { records, value_bytes }),
        1 => (0..1000u16).prop_map(|permille| Op::DeleteRecords { permille }),
        1 => Just(Op::Retain),
        1 => any::<bool>().prop_map(|clean| Op::Restart { clean }),
    ]
}

#[derive(Default)]
struct Model {
    batches: Vec<(i64, Vec<u8>)>,
    log_start: i64,
    next_offset: i64,
    seed: u64,
}

impl Model {
    fn visible(&self) -> Vec<(i64, Vec<u8>)> {
        self.batches
            .iter()
            .filter(|(_, b)| batch::validate_prefix(b).unwrap().last_offset() >= self.log_start)
            .cloned()
            .collect()
    }
}

fn check(ops: Vec<Op>, config: LogConfig) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    let mut at = 0;
    while at < ops.len() {
        let result: Result<(), TestCaseError> = run(async {
            let log = open_log(dir.path(), 16 << 10).await;
            log.open_partition(&tp(), config.clone()).await.unwrap();
            while at < ops.len() {
                let op = ops[at].clone();
                at += 1;
                match op {
                    Op::Append { records, value_bytes } => {
                        model.seed += 1;
                        let bytes = batch_for(model.seed, records, value_bytes);
                        let appended = log.append(&tp(), bytes.clone(), 0).unwrap();
                        appended.durable.await.unwrap();
                        prop_assert_eq!(appended.base_offset, model.next_offset);
                        let mut stored = bytes.to_vec();
                        batch::stamp(&mut stored, appended.base_offset, 0);
                        model.batches.push((appended.base_offset, stored));
                        model.next_offset = appended.last_offset + 1;
                    }
                    Op::DeleteRecords { permille } => {
                        let span = model.next_offset - model.log_start;
                        let target = model.log_start + span * i64::from(permille) / 1000;
                        let start = log.delete_records(&tp(), target).await.unwrap();
                        prop_assert!(start >= target);
                        model.log_start = start;
                    }
                    Op::Retain => {
                        log.settle().await;
                        log.enforce_retention(0).await.unwrap();
                        let start = log.offsets(&tp()).unwrap().log_start_offset;
                        prop_assert!(start >= model.log_start);
                        let boundary = start == model.log_start
                            || start == model.next_offset
                            || model.batches.iter().any(|(o, _)| *o == start);
                        prop_assert!(boundary, "retention moved the log start inside a batch: {}", start);
                        model.log_start = start;
                    }
                    Op::Restart { clean } => {
                        if clean {
                            log.close().await.unwrap();
                        }
                        return Ok(());
                    }
                }
                let offsets = log.offsets(&tp()).unwrap();
                prop_assert_eq!(offsets.log_end_offset, model.next_offset);
                prop_assert_eq!(offsets.high_watermark, model.next_offset);
                prop_assert_eq!(offsets.log_start_offset, model.log_start);
                prop_assert_eq!(read_all(&log, &tp(), model.log_start).await, model.visible());
            }
            log.close().await.unwrap();
            Ok(())
        });
        result?;
    }
    // A final restart sees exactly the model.
    run(async {
        let log = open_log(dir.path(), 0).await;
        log.open_partition(&tp(), config.clone()).await.unwrap();
        let offsets = log.offsets(&tp()).unwrap();
        prop_assert_eq!(offsets.log_end_offset, model.next_offset);
        prop_assert_eq!(offsets.log_start_offset, model.log_start);
        prop_assert_eq!(read_all(&log, &tp(), model.log_start).await, model.visible());
        log.close().await.unwrap();
        Ok(())
    })
}

proptest! {
    // A fixed seed keeps CI deterministic; PROPTEST_CASES and PROPTEST_RNG_SEED explore further.
    #![proptest_config(ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() { ProptestConfig::default().cases } else { 24 },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            ProptestConfig::default().rng_seed
        } else {
            proptest::test_runner::RngSeed::Fixed(0x00c0_4e10_6000_0002)
        },
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_log_behaves_like_its_model(
        ops in proptest::collection::vec(op(), 1..60),
        segment_bytes in 1500u64..8000,
        retention_kib in proptest::option::of(2u64..20),
    ) {
        let config = LogConfig {
            segment_bytes,
            index_interval_bytes: 512,
            retention_ms: None,
            retention_bytes: retention_kib.map(|k| k << 10),
            ..LogConfig::default()
        };
        check(ops, config)?;
    }
}
