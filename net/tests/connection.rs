//! The connection layer through real sockets: ApiVersions at every version, the KIP-511
//! fallback, pipelined requests answered in order, and hostile input closing only the
//! offending connection.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corelog_net::{ConnectionLimits, Listener};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

struct Broker {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Broker {
    fn start(limits: ConnectionLimits, max_connections: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .make()
                .unwrap();
            executor.run(async move {
                let listener =
                    Listener::bind("127.0.0.1:0".parse().unwrap(), limits, max_connections)
                        .unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                listener
                    .run(async {
                        while !flag.load(Ordering::Acquire) {
                            glommio::timer::sleep(Duration::from_millis(10)).await;
                        }
                    })
                    .await;
            });
        });
        let address = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            address,
            stop,
            thread: Some(thread),
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn api_versions_request(version: i16, correlation_id: i32) -> Vec<u8> {
    let key = ApiKey::ApiVersions;
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("test")))
        .encode(&mut body, key.request_header_version(version))
        .unwrap();
    let mut request = ApiVersionsRequest::default();
    if version >= 3 {
        request = request
            .with_client_software_name(StrBytes::from_static_str("corelog-test"))
            .with_client_software_version(StrBytes::from_static_str("1.0"));
    }
    request.encode(&mut body, version).unwrap();
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn read_response(stream: &mut TcpStream) -> Bytes {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).unwrap();
    Bytes::from(body)
}

fn decode_api_versions(mut body: Bytes, version: i16) -> (i32, ApiVersionsResponse) {
    let header = ResponseHeader::decode(
        &mut body,
        ApiKey::ApiVersions.response_header_version(version),
    )
    .unwrap();
    let response = ApiVersionsResponse::decode(&mut body, version).unwrap();
    assert!(body.is_empty(), "trailing bytes in the response");
    (header.correlation_id, response)
}

/// True once the broker closed the connection (EOF, or a reset when it left data unread).
fn is_closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
        Ok(_) => false,
    }
}

#[test]
fn api_versions_answers_every_version_and_advertises_itself() {
    let broker = Broker::start(ConnectionLimits::default(), 100);
    let mut stream = broker.connect();
    for version in 0..=4 {
        stream
            .write_all(&api_versions_request(version, 100 + i32::from(version)))
            .unwrap();
        let (correlation_id, response) = decode_api_versions(read_response(&mut stream), version);
        assert_eq!(correlation_id, 100 + i32::from(version));
        assert_eq!(response.error_code, 0);
        let own = response
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::ApiVersions as i16)
            .unwrap();
        assert_eq!((own.min_version, own.max_version), (0, 4));
    }
}

#[test]
fn an_unknown_api_versions_version_gets_the_kip_511_fallback() {
    let broker = Broker::start(ConnectionLimits::default(), 100);
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
    let broker = Broker::start(ConnectionLimits::default(), 100);
    let mut stream = broker.connect();
    let mut burst = Vec::new();
    for id in 0..50 {
        burst.extend(api_versions_request((id % 5) as i16, id));
    }
    stream.write_all(&burst).unwrap();
    for id in 0..50 {
        assert_eq!(
            decode_api_versions(read_response(&mut stream), (id % 5) as i16).0,
            id
        );
    }
}

#[test]
fn hostile_input_closes_only_that_connection() {
    let broker = Broker::start(
        ConnectionLimits {
            max_frame_bytes: 1 << 20,
            ..ConnectionLimits::default()
        },
        100,
    );
    let mut healthy = broker.connect();
    let hostile_inputs: Vec<Vec<u8>> = vec![
        i32::MAX.to_be_bytes().to_vec(), // claims 2 GiB
        (-4i32).to_be_bytes().to_vec(),  // negative size
        [4i32.to_be_bytes().to_vec(), vec![0, 18, 0, 0]].concat(), // shorter than a header
        [
            8i32.to_be_bytes().to_vec(),
            vec![0x7f, 0x7f, 0, 0, 0, 0, 0, 1],
        ]
        .concat(), // unknown API key
        [8i32.to_be_bytes().to_vec(), vec![0, 3, 0, 12, 0, 0, 0, 1]].concat(), // Metadata: not implemented yet
        {
            let mut garbled = api_versions_request(3, 1);
            let len = garbled.len();
            garbled[len - 3] = 0xff; // a compact string length past the end
            garbled
        },
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect(), // random bytes
    ];
    for input in hostile_inputs {
        let mut stream = broker.connect();
        stream.write_all(&input).unwrap();
        assert!(
            is_closed(&mut stream),
            "connection not closed after {:?}",
            &input[..input.len().min(12)]
        );
        // the healthy client is still served
        healthy.write_all(&api_versions_request(3, 42)).unwrap();
        assert_eq!(decode_api_versions(read_response(&mut healthy), 3).0, 42);
    }
}

#[test]
fn connections_beyond_the_limit_are_closed_and_idle_ones_time_out() {
    let limits = ConnectionLimits {
        idle_timeout: Duration::from_millis(300),
        ..ConnectionLimits::default()
    };
    let broker = Broker::start(limits, 2);
    let mut first = broker.connect();
    let _second = broker.connect();
    first.write_all(&api_versions_request(3, 1)).unwrap();
    read_response(&mut first);
    let mut third = broker.connect();
    assert!(is_closed(&mut third), "a third connection must be refused");
    std::thread::sleep(Duration::from_millis(600));
    assert!(is_closed(&mut first), "an idle connection must be closed");
}
