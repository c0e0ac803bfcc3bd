//! The connection layer through real sockets: ApiVersions at every version, the KIP-511
//! fallback, pipelined requests answered in order, and hostile input closing only the
//! offending connection.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use common::{Broker, Options, decode_response, is_closed, read_frame};
use corelog_net::ConnectionLimits;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::StrBytes;

fn api_versions_request(version: i16, correlation_id: i32) -> Vec<u8> {
    let mut request = ApiVersionsRequest::default();
    if version >= 3 {
        request = request
            .with_client_software_name(StrBytes::from_static_str("corelog-test"))
            .with_client_software_version(StrBytes::from_static_str("1.0"));
    }
    common::request_frame(ApiKey::ApiVersions, version, correlation_id, &request)
}

fn read_response(stream: &mut std::net::TcpStream) -> Bytes {
    read_frame(stream)
}

fn decode_api_versions(body: Bytes, version: i16) -> (i32, ApiVersionsResponse) {
    decode_response(body, ApiKey::ApiVersions, version)
}

#[test]
fn api_versions_answers_every_version_and_advertises_itself() {
    let broker = Broker::start(Options::default());
    let mut stream = broker.connect();
    for version in 0..=4 {
        stream.write_all(&api_versions_request(version, 100 + i32::from(version))).unwrap();
        let (correlation_id, response) = decode_api_versions(read_response(&mut stream), version);
        assert_eq!(correlation_id, 100 + i32::from(version));
        assert_eq!(response.error_code, 0);
        let own = response.api_keys.iter().find(|k| k.api_key == ApiKey::ApiVersions as i16).unwrap();
        assert_eq!((own.min_version, own.max_version), (0, 4));
    }
}

#[test]
fn an_unknown_api_versions_version_gets_the_kip_511_fallback() {
    let broker = Broker::start(Options::default());
    let mut stream = broker.connect();
    // A future client sends v9 with a header and body we cannot parse.
    let mut frame = api_versions_request(4, 7);
    frame[6..8].copy_from_slice(&9i16.to_be_bytes());
    stream.write_all(&frame).unwrap();
    let (correlation_id, response) = decode_api_versions(read_response(&mut stream), 0);
    assert_eq!(correlation_id, 7);
    assert_eq!(response.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(!response.api_keys.is_empty());
    // The connection stays usable for the retry.
    stream.write_all(&api_versions_request(3, 8)).unwrap();
    assert_eq!(decode_api_versions(read_response(&mut stream), 3).0, 8);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let broker = Broker::start(Options::default());
    let mut stream = broker.connect();
    let mut burst = Vec::new();
    for id in 0..50 {
        burst.extend(api_versions_request((id % 5) as i16, id));
    }
    stream.write_all(&burst).unwrap();
    for id in 0..50 {
        assert_eq!(decode_api_versions(read_response(&mut stream), (id % 5) as i16).0, id);
    }
}

#[test]
fn hostile_input_closes_only_that_connection() {
    let broker = Broker::start(Options {
        limits: ConnectionLimits { max_frame_bytes: 1 << 20, ..ConnectionLimits::default() },
        ..Options::default()
    });
    let mut healthy = broker.connect();
    let hostile_inputs: Vec<Vec<u8>> = vec![
        i32::MAX.to_be_bytes().to_vec(),                           // claims 2 GiB
        (-4i32).to_be_bytes().to_vec(),                            // negative size
        [4i32.to_be_bytes().to_vec(), vec![0, 18, 0, 0]].concat(), // shorter than a header
        [8i32.to_be_bytes().to_vec(), vec![0x7f, 0x7f, 0, 0, 0, 0, 0, 1]].concat(), // unknown API key
        [8i32.to_be_bytes().to_vec(), vec![0, 3, 0, 12, 0, 0, 0, 1]].concat(), // Metadata: not implemented yet
        {
            let mut garbled = api_versions_request(3, 1);
            let len = garbled.len();
            garbled[len - 3] = 0xff; // a compact string length past the end
            garbled
        },
        (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect(), // random bytes
    ];
    for input in hostile_inputs {
        let mut stream = broker.connect();
        stream.write_all(&input).unwrap();
        assert!(is_closed(&mut stream), "connection not closed after {:?}", &input[..input.len().min(12)]);
        // the healthy client is still served
        healthy.write_all(&api_versions_request(3, 42)).unwrap();
        assert_eq!(decode_api_versions(read_response(&mut healthy), 3).0, 42);
    }
}

#[test]
fn connections_beyond_the_limit_are_closed_and_idle_ones_time_out() {
    let limits = ConnectionLimits { idle_timeout: Duration::from_millis(300), ..ConnectionLimits::default() };
    let broker = Broker::start(Options { limits, max_connections_per_shard: 2, ..Options::default() });
    let mut first = broker.connect();
    let _second = broker.connect();
    first.write_all(&api_versions_request(3, 1)).unwrap();
    read_response(&mut first);
    let mut third = broker.connect();
    assert!(is_closed(&mut third), "a third connection must be refused");
    std::thread::sleep(Duration::from_millis(600));
    assert!(is_closed(&mut first), "an idle connection must be closed");
}

#[test]
fn a_spent_request_budget_holds_every_connection_of_the_shard_back_until_it_is_released() {
    // One shard, 64 KiB of request memory. A client announces a 1 MiB frame (granted: the
    // budget had room) and sends half of it: that reservation spends the budget.
    let broker = Broker::start(Options { queued_max_request_bytes_per_shard: 64 << 10, ..Options::default() });
    let mut big = broker.connect();
    let mut frame = api_versions_request(0, 1);
    let padding = (1 << 20) - (frame.len() - 4);
    frame.extend(std::iter::repeat_n(0u8, padding)); // ignored trailing bytes (librdkafka#5049)
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    big.write_all(&frame[..frame.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    // Another connection's small request now waits: nothing is read while the budget is spent.
    let mut small = broker.connect();
    small.write_all(&api_versions_request(3, 2)).unwrap();
    small.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut byte = [0u8; 1];
    let waited = std::io::Read::read(&mut small, &mut byte);
    assert!(
        waited
            .as_ref()
            .is_err_and(|e| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "a request was read while the shard's request budget was spent: {waited:?}"
    );

    // The big frame completes and is answered (releasing its reservation): the small one goes on.
    big.write_all(&frame[frame.len() / 2..]).unwrap();
    let (correlation_id, _) = decode_api_versions(read_response(&mut big), 0);
    assert_eq!(correlation_id, 1);
    small.set_read_timeout(None).unwrap();
    let (correlation_id, response) = decode_api_versions(read_response(&mut small), 3);
    assert_eq!((correlation_id, response.error_code), (2, 0));
}

#[test]
fn a_stalled_frame_gives_its_request_memory_up_when_others_wait() {
    // As above, but the big frame never completes: once another connection waits for the
    // memory, a body arriving slower than the limit is given up and its connection closed.
    let limits = ConnectionLimits { slow_frame_window: Duration::from_millis(200), ..ConnectionLimits::default() };
    let broker = Broker::start(Options { limits, queued_max_request_bytes_per_shard: 64 << 10, ..Options::default() });
    let mut stalled = broker.connect();
    stalled.write_all(&(1i32 << 20).to_be_bytes()).unwrap();
    stalled.write_all(&[0u8; 1000]).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let started = std::time::Instant::now();
    let mut waiting = broker.connect();
    waiting.write_all(&api_versions_request(3, 5)).unwrap();
    let (correlation_id, response) = decode_api_versions(read_response(&mut waiting), 3);
    assert_eq!((correlation_id, response.error_code), (5, 0));
    assert!(started.elapsed() < Duration::from_secs(5), "answered only after {:?}", started.elapsed());
    assert!(is_closed(&mut stalled), "the stalled frame's connection is closed");
}

#[test]
fn new_connections_are_accepted_at_most_at_the_configured_rate() {
    // 20 a second after a burst of 20: 50 new connections are all served only after 1.5 s,
    // while a connection made before keeps being served at once.
    let broker = Broker::start(Options { connections_per_sec_max_per_shard: Some(20.0), ..Options::default() });
    let mut existing = broker.connect();
    existing.write_all(&api_versions_request(3, 1)).unwrap();
    read_response(&mut existing);
    let started = std::time::Instant::now();
    let mut storm: Vec<_> = (0..50)
        .map(|i| {
            let mut stream = broker.connect();
            stream.write_all(&api_versions_request(0, i)).unwrap();
            stream
        })
        .collect();
    existing.write_all(&api_versions_request(3, 2)).unwrap();
    let (correlation_id, _) = decode_api_versions(read_response(&mut existing), 3);
    assert_eq!(correlation_id, 2);
    let existing_served = started.elapsed();
    for stream in &mut storm {
        read_response(stream);
    }
    let storm_served = started.elapsed();
    assert!(storm_served >= Duration::from_millis(1_400), "50 connections served within {storm_served:?}");
    assert!(existing_served < storm_served, "the existing connection waited for the storm");
}
