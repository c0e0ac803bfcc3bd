//! A real broker (the same shard code as `corelog start`) on an ephemeral port and a temp
//! data dir, and a minimal Kafka client built on `kafka-protocol`.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test code

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corelog_engine::log::LogConfig;
use corelog_net::ConnectionLimits;
use corelog_net::server::{LocalBroker, ServerConfig};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

pub struct Broker {
    pub address: SocketAddr,
    local: Option<LocalBroker>,
    pub dir: tempfile::TempDir,
}

pub struct Options {
    pub shards: usize,
    pub limits: ConnectionLimits,
    pub max_connections_per_shard: usize,
    pub queued_max_request_bytes_per_shard: usize,
    pub connections_per_sec_max_per_shard: Option<f64>,
    pub fetch_max_bytes: usize,
    pub auto_create_topics: bool,
    pub group: corelog_net::group::classic::CoordinatorConfig,
    pub cache_budget_bytes_per_shard: usize,
    /// 0: no shard journal (every segment write goes out in its wave).
    pub journal_bytes_per_shard: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            shards: 1,
            limits: ConnectionLimits::default(),
            max_connections_per_shard: 1000,
            queued_max_request_bytes_per_shard: 256 << 20,
            connections_per_sec_max_per_shard: None,
            fetch_max_bytes: 55 << 20,
            auto_create_topics: true,
            // Tests do not wait for more members to join an empty group.
            group: corelog_net::group::classic::CoordinatorConfig {
                initial_rebalance_delay_ms: 0,
                ..Default::default()
            },
            cache_budget_bytes_per_shard: 16 << 20,
            journal_bytes_per_shard: 16 << 20,
        }
    }
}

impl Broker {
    pub fn start(options: Options) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), options)
    }

    pub fn start_in(dir: tempfile::TempDir, options: Options) -> Self {
        let config = ServerConfig {
            node_id: 0,
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertised: None,
            cache_budget_bytes_per_shard: options.cache_budget_bytes_per_shard,
            journal_bytes_per_shard: options.journal_bytes_per_shard,
            write_shape: Default::default(),
            limits: options.limits,
            max_connections_per_shard: options.max_connections_per_shard,
            queued_max_request_bytes_per_shard: options.queued_max_request_bytes_per_shard,
            connections_per_sec_max_per_shard: options.connections_per_sec_max_per_shard,
            fetch_max_bytes: options.fetch_max_bytes,
            default_log: LogConfig::default(),
            num_partitions: 1,
            auto_create_topics: options.auto_create_topics,
            retention_check_interval: Duration::from_secs(300),
            group: options.group.clone(),
            offsets_topic_partitions: 4,
        };
        let local = LocalBroker::start(config, options.shards).unwrap();
        Self { address: local.address, local: Some(local), dir }
    }

    /// Stops the broker cleanly and returns its data dir (to restart on it).
    pub fn stop(mut self) -> tempfile::TempDir {
        self.shutdown();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    fn shutdown(&mut self) {
        if let Some(local) = self.local.take() {
            local.stop().unwrap();
        }
    }

    /// What the admin API scrapes: the shards' metrics.
    pub fn admin(&self) -> &std::sync::Arc<corelog_net::admin::AdminHub> {
        &self.local.as_ref().expect("a running broker").admin
    }

    pub fn client(&self) -> Client {
        let stream = TcpStream::connect(self.address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client { stream, next_correlation_id: 1 }
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub struct Client {
    pub stream: TcpStream,
    next_correlation_id: i32,
}

pub fn request_frame<T: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Vec<u8> {
    let mut out = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("corelog-test")))
        .encode(&mut out, key.request_header_version(version))
        .unwrap();
    body.encode(&mut out, version).unwrap();
    let mut frame = (out.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&out);
    frame
}

pub fn read_frame(stream: &mut TcpStream) -> Bytes {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).unwrap();
    Bytes::from(body)
}

pub fn decode_response<R: Decodable>(mut body: Bytes, key: ApiKey, version: i16) -> (i32, R) {
    let header = ResponseHeader::decode(&mut body, key.response_header_version(version)).unwrap();
    let response = R::decode(&mut body, version).unwrap();
    assert!(body.is_empty(), "{} trailing bytes in the {key:?} v{version} response", body.len());
    (header.correlation_id, response)
}

impl Client {
    /// Sends one request and decodes its response, checking the correlation id.
    pub fn call<Req: Encodable, Resp: Decodable>(&mut self, key: ApiKey, version: i16, request: &Req) -> Resp {
        let id = self.next_correlation_id;
        self.next_correlation_id += 1;
        self.stream.write_all(&request_frame(key, version, id, request)).unwrap();
        let (correlation_id, response) = decode_response(read_frame(&mut self.stream), key, version);
        assert_eq!(correlation_id, id);
        response
    }
}

impl From<TcpStream> for Client {
    /// A client on an open connection whose earlier requests were all answered.
    fn from(stream: TcpStream) -> Self {
        Client { stream, next_correlation_id: 1_000 }
    }
}

/// True once the broker closed the connection (EOF, or a reset when it left data unread).
pub fn is_closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) => matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted),
        Ok(_) => false,
    }
}

/// Creates a topic (replication factor 1) and returns its id; panics on any error.
pub fn create_topic(client: &mut Client, topic: &str, partitions: i32) -> uuid::Uuid {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, TopicName};
    let request = CreateTopicsRequest::default()
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_num_partitions(partitions)
                .with_replication_factor(1),
        ])
        .with_timeout_ms(10_000);
    let response: CreateTopicsResponse = client.call(ApiKey::CreateTopics, 7, &request);
    assert_eq!(response.topics[0].error_code, 0, "creating {topic}: {response:?}");
    response.topics[0].topic_id
}
