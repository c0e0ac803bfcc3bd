//! The produce intake path for one 1 MiB Produce request (issue 3's target: ≥ 5 GB/s per
//! core): the frame arriving in a buffer of its own (a copy stands in for the socket read),
//! frame header and body decoding with `kafka-protocol`, cutting the body into its
//! partitions' batches (`split_batches`, no copy), the owner-shard lookup, RecordBatch v2
//! validation with CRC32C, and offset stamping. The append into the log is measured by the
//! `storage` benches.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark harness: failures abort the run

use bytes::{Bytes, BytesMut};
use corelog_benches::template_batch;
use corelog_engine::batch;
use corelog_engine::log::TopicPartition;
use corelog_engine::runtime::{PlacementTable, PlacementView};
use corelog_net::handlers::produce::split_batches;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

const VERSION: i16 = 9;

fn request_body(records: Bytes) -> Bytes {
    let mut out = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("bench")))
        .encode(&mut out, ApiKey::Produce.request_header_version(VERSION))
        .unwrap();
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("bench")))
                .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(records))]),
        ])
        .encode(&mut out, VERSION)
        .unwrap();
    out.freeze()
}

/// One request through the intake path; returns the stamped batches (so nothing is optimised away).
fn intake(frame: &[u8], placement: &PlacementView, next_offset: i64) -> usize {
    let mut body = Bytes::from(frame.to_vec());
    RequestHeader::decode(&mut body, ApiKey::Produce.request_header_version(VERSION)).unwrap();
    let request = ProduceRequest::decode(&mut body.clone(), VERSION).unwrap();
    let mut stamped = 0;
    for (partition, batch) in split_batches(request, body) {
        let _owner = placement.owner(&partition).expect("placed");
        let mut batch = batch.expect("records");
        let header = batch::validate_produced(&batch, 2 << 20).expect("valid");
        batch::stamp(&mut batch, next_offset, header.partition_leader_epoch);
        stamped += batch.len();
    }
    stamped
}

fn produce_intake(c: &mut Criterion) {
    let table = PlacementTable::new(1);
    table.assign(&TopicPartition::new("bench", 0));
    let placement = PlacementView::new(table);
    let mut group = c.benchmark_group("produce_intake");
    for size in [16 << 10, 1 << 20] {
        let frame = request_body(Bytes::from(template_batch(size)));
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(format!("request_{}KiB", size >> 10), |b| {
            let mut offset = 0i64;
            b.iter(|| {
                offset += 1;
                intake(&frame, &placement, offset)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, produce_intake);
criterion_main!(benches);
