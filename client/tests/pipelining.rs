//! The client against a whole broker in this process: many requests in flight on one
//! connection each get their own response; a connection that dies fails what waits on it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::Duration;

use corelog_client::admin::NewTopic;
use corelog_client::{Client, ClientConfig, Connection, Error};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

mod common;
use common::{broker, run};

fn metadata_for(topic: &str) -> MetadataRequest {
    MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(topic.to_string())))),
    ]))
}

#[test]
fn pipelined_requests_each_get_their_own_response() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let address = broker.address.to_string();
    run(async move {
        let client = Client::connect(ClientConfig::new(&address)).await.unwrap();
        let topics: Vec<NewTopic> = (0..4)
            .map(|i| NewTopic { name: format!("t{i}"), partitions: i + 1, replication_factor: 1, configs: vec![] })
            .collect();
        for (name, result) in client.create_topics(&topics, false).await.unwrap() {
            result.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let connection = Connection::connect(&address, "pipelining", Duration::from_secs(10)).await.unwrap();
        // 400 requests written before any response is read.
        let requests = (0..400).map(|i| {
            let name = format!("t{}", i % 5); // t4 does not exist
            let connection = &connection;
            async move { (name.clone(), connection.send(metadata_for(&name)).await.unwrap()) }
        });
        for (name, response) in futures_util::future::join_all(requests).await {
            let topic = &response.topics[0];
            assert_eq!(topic.name.as_ref().unwrap().0.as_str(), name);
            if name == "t4" {
                assert_eq!(topic.error_code, 3, "unknown topic");
            } else {
                let index: usize = name[1..].parse().unwrap();
                assert_eq!((topic.error_code, topic.partitions.len()), (0, index + 1), "{name}");
            }
        }
    });
    broker.stop().unwrap();
}

/// A fake broker: answers ApiVersions, then reads one more request and either closes the
/// connection or never answers.
fn fake_broker(close_after_versions: bool) -> String {
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestHeader, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, Encodable};
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let read_frame = |stream: &mut std::net::TcpStream| {
            let mut size = [0u8; 4];
            stream.read_exact(&mut size).ok()?;
            let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
            stream.read_exact(&mut body).ok()?;
            Some(bytes::Bytes::from(body))
        };
        let mut request = read_frame(&mut stream).unwrap();
        let header = RequestHeader::decode(&mut request, 2).unwrap();
        let version = header.request_api_version;
        let response = ApiVersionsResponse::default().with_api_keys(vec![
            ApiVersion::default().with_api_key(ApiKey::ApiVersions as i16).with_max_version(3),
            ApiVersion::default().with_api_key(ApiKey::Metadata as i16).with_max_version(12),
        ]);
        let mut out = bytes::BytesMut::new();
        ResponseHeader::default().with_correlation_id(header.correlation_id).encode(&mut out, 0).unwrap();
        response.encode(&mut out, version).unwrap();
        stream.write_all(&(out.len() as i32).to_be_bytes()).unwrap();
        stream.write_all(&out).unwrap();
        let _next = read_frame(&mut stream);
        if close_after_versions {
            drop(stream);
        } else {
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    address
}

#[test]
fn a_connection_that_dies_fails_its_requests_at_once_and_a_silent_one_times_out() {
    let closing = fake_broker(true);
    run(async move {
        let connection = Connection::connect(&closing, "dies", Duration::from_secs(30)).await.unwrap();
        let started = std::time::Instant::now();
        let error = connection.send(metadata_for("x")).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "failed when the connection closed, not at the timeout");
        assert!(matches!(error, Error::Closed | Error::Io { .. }), "{error:?}");
        assert!(connection.is_broken());
        assert!(matches!(connection.send(metadata_for("x")).await, Err(Error::Closed)), "later requests fail at once");
    });
    let silent = fake_broker(false);
    run(async move {
        let connection = Connection::connect(&silent, "silent", Duration::from_millis(300)).await.unwrap();
        let error = connection.send(metadata_for("x")).await.unwrap_err();
        assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    });
    // Nothing listens: connecting says so.
    let refused = run(async move { Client::connect(ClientConfig::new("127.0.0.1:1")).await.err().unwrap() });
    assert!(matches!(refused, Error::NoBroker(_)), "{refused:?}");
}
