//! corelog's own Kafka client, written on `kafka-protocol` and glommio: it speaks the Kafka
//! wire protocol to corelog or any Kafka-compatible broker (so every command and benchmark
//! can be pointed at Apache Kafka or Redpanda too).
//!
//! - [`Connection`]: one socket, requests pipelined, versions negotiated.
//! - [`Client`]: bootstrap, the cluster's metadata, a connection per broker.
//! - [`admin`]: topics (create, list, describe, delete, configs, partitions, trim).
//!
//! Owner: one glommio executor thread (nothing here is `Send`).

pub mod admin;
pub mod connection;
pub mod consumer;
pub mod fetch_session;
pub mod group_consumer;
pub mod groups;
pub mod membership;
pub mod producer;
pub mod records;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

pub use connection::Connection;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{address}: {reason}")]
    Io { address: String, reason: String },
    #[error("{address}: no answer to {what} in time")]
    Timeout { address: String, what: String },
    #[error("the connection closed")]
    Closed,
    #[error("{address} does not support {api} at a version this client knows")]
    Unsupported { address: String, api: &'static str },
    #[error("{address} sent a malformed {api} response: {reason}")]
    Malformed { address: String, api: &'static str, reason: String },
    #[error("cannot encode {api}: {reason}")]
    Encode { api: &'static str, reason: String },
    /// A Kafka error code, named as Kafka names it (`TOPIC_ALREADY_EXISTS`).
    #[error("{api}: {name}{}", message.as_deref().or(Some(description.as_str())).filter(|m| !m.is_empty()).map(|m| format!(": {m}")).unwrap_or_default())]
    Kafka { api: &'static str, code: i16, name: String, description: String, message: Option<String> },
    #[error("no broker reachable: {0}")]
    NoBroker(String),
    #[error("{0}")]
    Invalid(String),
    /// Refused for the state things are in (not a usage error), e.g. moving the offsets of
    /// a group that has members.
    #[error("{0}")]
    Refused(String),
}

impl Error {
    fn io(address: &str, error: std::io::Error) -> Self {
        Error::Io { address: address.to_string(), reason: error.to_string() }
    }

    /// The error for a non-zero Kafka error code.
    pub fn kafka(api: &'static str, code: i16, message: Option<&StrBytes>) -> Self {
        let (name, description) = error_name(code);
        Error::Kafka { api, code, name, description, message: message.map(|m| m.to_string()).filter(|m| !m.is_empty()) }
    }

    /// The Kafka error code, if this is one.
    pub fn code(&self) -> Option<i16> {
        match self {
            Error::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Ok for error code 0, else the named Kafka error.
pub fn check(api: &'static str, code: i16, message: Option<&StrBytes>) -> Result<(), Error> {
    if code == 0 { Ok(()) } else { Err(Error::kafka(api, code, message)) }
}

/// A Kafka error code's name in Kafka's spelling (`UNKNOWN_TOPIC_OR_PARTITION`) and its
/// description.
pub fn error_name(code: i16) -> (String, String) {
    match ResponseError::try_from_code(code) {
        None => ("NONE".into(), String::new()),
        Some(ResponseError::Unknown(code)) => {
            (format!("UNKNOWN_ERROR_CODE_{code}"), "an error code this client does not know".into())
        }
        Some(error) => {
            let camel = format!("{error:?}");
            let mut name = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            (name, description(code).to_string())
        }
    }
}

/// What the common error codes mean, in a few words ("" for the rest).
fn description(code: i16) -> &'static str {
    match code {
        -1 => "the broker failed unexpectedly",
        1 => "the offset is outside the partition's records",
        3 => "no such topic or partition",
        5 => "the partition has no leader right now",
        6 => "this broker does not lead the partition",
        7 => "the broker did not finish in time",
        10 => "the record batch is larger than the topic allows",
        15 => "the group coordinator is not available",
        16 => "this broker is not the group's coordinator",
        17 => "the topic name is not valid",
        19 | 20 => "too few in-sync replicas",
        22 => "the member's generation is not the group's",
        25 => "the group does not know this member",
        27 => "the group is rebalancing",
        29 => "not authorised for this topic",
        30 => "not authorised for this group",
        35 => "the broker does not support this request version",
        36 => "a topic of this name exists",
        37 => "the partition count is not valid",
        38 => "the replication factor is not valid",
        40 => "a config key or value is not valid",
        41 => "this broker is not the controller",
        42 => "the request is not valid",
        44 => "refused by the broker's policy",
        45 => "a batch's sequence number is out of order",
        56 => "the partition's storage failed",
        69 => "no such group",
        _ => "",
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// HOST:PORT of one or more brokers.
    pub bootstrap: Vec<String>,
    pub client_id: String,
    /// How long a request may wait for its response.
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub fn new(bootstrap: &str) -> Self {
        Self {
            bootstrap: bootstrap.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            client_id: "corelog".into(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A broker as metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerInfo {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub error_code: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// The topic id as Kafka prints it (UUID), empty when the broker sends none.
    pub id: String,
    /// The same id, as requests carry it (nil when the broker sends none).
    pub uuid: uuid::Uuid,
    pub internal: bool,
    pub partitions: Vec<PartitionInfo>,
    pub error_code: i16,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterInfo {
    pub cluster_id: Option<String>,
    pub controller: i32,
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
}

/// The cluster as seen from one client: a connection per broker, made when first needed.
pub struct Client {
    config: ClientConfig,
    /// The connection bootstrap found, used for cluster-wide requests.
    bootstrap: RefCell<Option<Rc<Connection>>>,
    by_node: RefCell<HashMap<i32, Rc<Connection>>>,
    /// Nodes being connected to, with who waits for it: one connection per broker, even
    /// when several tasks want it at once (a producer's ordering relies on it).
    connecting: RefCell<HashMap<i32, Vec<futures_channel::oneshot::Sender<()>>>>,
    metadata: RefCell<ClusterInfo>,
}

impl Client {
    /// Connects to the first bootstrap broker that answers and reads the cluster's brokers.
    pub async fn connect(config: ClientConfig) -> Result<Self, Error> {
        if config.bootstrap.is_empty() {
            return Err(Error::Invalid("no broker address given".into()));
        }
        let client = Self {
            config,
            bootstrap: RefCell::new(None),
            by_node: RefCell::new(HashMap::new()),
            connecting: RefCell::new(HashMap::new()),
            metadata: RefCell::new(ClusterInfo::default()),
        };
        client.any_broker().await?;
        client.metadata(Some(&[])).await?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// A live connection to some broker (the bootstrap one while it works).
    pub async fn any_broker(&self) -> Result<Rc<Connection>, Error> {
        if let Some(connection) = self.bootstrap.borrow().as_ref().filter(|c| !c.is_broken()) {
            return Ok(Rc::clone(connection));
        }
        let known: Vec<String> = self.metadata.borrow().brokers.values().map(BrokerInfo::address).collect();
        let mut failures = Vec::new();
        for address in self.config.bootstrap.iter().chain(known.iter()) {
            match Connection::connect(address, &self.config.client_id, self.config.request_timeout).await {
                Ok(connection) => {
                    *self.bootstrap.borrow_mut() = Some(Rc::clone(&connection));
                    return Ok(connection);
                }
                Err(error) => failures.push(error.to_string()),
            }
        }
        Err(Error::NoBroker(failures.join("; ")))
    }

    /// A live connection to broker `node_id` (as metadata last named it).
    pub async fn broker(&self, node_id: i32) -> Result<Rc<Connection>, Error> {
        loop {
            if let Some(connection) = self.by_node.borrow().get(&node_id).filter(|c| !c.is_broken()) {
                return Ok(Rc::clone(connection));
            }
            let waiting = match self.connecting.borrow_mut().get_mut(&node_id) {
                Some(waiters) => {
                    let (tx, rx) = futures_channel::oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                None => None,
            };
            match waiting {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => break,
            }
        }
        self.connecting.borrow_mut().insert(node_id, Vec::new());
        let connected = self.connect_to(node_id).await;
        for waiter in self.connecting.borrow_mut().remove(&node_id).unwrap_or_default() {
            let _ = waiter.send(());
        }
        connected
    }

    async fn connect_to(&self, node_id: i32) -> Result<Rc<Connection>, Error> {
        let known = self.metadata.borrow().brokers.get(&node_id).cloned();
        let broker = match known {
            Some(broker) => broker,
            None => {
                self.metadata(Some(&[])).await?;
                self.metadata
                    .borrow()
                    .brokers
                    .get(&node_id)
                    .cloned()
                    .ok_or_else(|| Error::Invalid(format!("broker {node_id} is not in the cluster's metadata")))?
            }
        };
        let connection =
            Connection::connect(&broker.address(), &self.config.client_id, self.config.request_timeout).await?;
        self.by_node.borrow_mut().insert(node_id, Rc::clone(&connection));
        Ok(connection)
    }

    /// The cluster's controller (where topic changes go).
    pub async fn controller(&self) -> Result<Rc<Connection>, Error> {
        let controller = self.metadata.borrow().controller;
        if controller < 0 { self.any_broker().await } else { self.broker(controller).await }
    }

    /// Metadata for `topics` (None: every topic; an empty slice: brokers only). Updates
    /// what the client knows and returns it.
    pub async fn metadata(&self, topics: Option<&[String]>) -> Result<ClusterInfo, Error> {
        let request =
            MetadataRequest::default().with_allow_auto_topic_creation(false).with_topics(topics.map(|names| {
                names
                    .iter()
                    .map(|n| {
                        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(n.clone()))))
                    })
                    .collect()
            }));
        let response: MetadataResponse = self.any_broker().await?.send(request).await?;
        check("Metadata", response.error_code, None)?;
        let mut info = self.metadata.borrow_mut();
        info.cluster_id = response.cluster_id.as_ref().map(ToString::to_string);
        info.controller = response.controller_id.0;
        info.brokers = response
            .brokers
            .iter()
            .map(|b| {
                let broker = BrokerInfo {
                    node_id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    rack: b.rack.as_ref().map(ToString::to_string),
                };
                (broker.node_id, broker)
            })
            .collect();
        if topics.is_none() {
            info.topics.clear();
        }
        for topic in &response.topics {
            let Some(name) = topic.name.as_ref().map(|n| n.0.to_string()) else { continue };
            let mut partitions: Vec<PartitionInfo> = topic
                .partitions
                .iter()
                .map(|p| PartitionInfo {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|n| n.0).collect(),
                    isr: p.isr_nodes.iter().map(|n| n.0).collect(),
                    error_code: p.error_code,
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            let id = if topic.topic_id.is_nil() { String::new() } else { topic.topic_id.to_string() };
            let topic = TopicInfo {
                name: name.clone(),
                id,
                uuid: topic.topic_id,
                internal: topic.is_internal,
                partitions,
                error_code: topic.error_code,
            };
            info.topics.insert(name, topic);
        }
        Ok(info.clone())
    }

    /// One topic's metadata; UNKNOWN_TOPIC_OR_PARTITION if it does not exist.
    pub async fn topic(&self, name: &str) -> Result<TopicInfo, Error> {
        let info = self.metadata(Some(&[name.to_string()])).await?;
        let topic = info.topics.get(name).cloned().ok_or_else(|| Error::kafka("Metadata", 3, None))?;
        check("Metadata", topic.error_code, None)?;
        Ok(topic)
    }
}
