//! The broker as one shard sees it: the shard's storage, the topic registry, the other
//! shards, and the controller operations (topic creation and deletion) that shard 0 performs
//! for everyone.
//!
//! Owner: one `ShardBroker` per shard, in an `Rc`. Partition work for a partition owned by
//! another shard travels as a [`ShardRequest`] to that shard.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use corelog_engine::log::{LogConfig, PartitionOffsets, ReadData, ShardLog, TopicPartition};
use corelog_engine::records::RecordStamp;
use corelog_engine::runtime::{ShardContext, ShardId};

use crate::configs::{self, ConfigChange};
use crate::group::classic::{Committed, JoinOutcome, JoinRequest, MemberRef, SyncOutcome, SyncRequest};
use crate::group::{self, GroupDescription, GroupService, OFFSETS_TOPIC, OffsetCommit};
use crate::handlers::fetch_response::Chunk;
use crate::metrics::ShardMetrics;
use crate::registry::{self, Registry, TopicRecord};

/// Most partitions one topic may have: creating a topic is sequential work on the controller
/// shard, and a request asking for millions would hold every metadata change behind it.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;

/// The controller shard: it serialises every metadata change.
pub const CONTROLLER_SHARD: ShardId = 0;

/// Kafka error codes used by the control-plane handlers.
pub mod error_code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REQUEST: i16 = 42;
    pub const INVALID_RECORD: i16 = 87;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
    pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
}

/// Broker-wide settings the handlers need.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub node_id: i32,
    /// The address clients are told to connect to (Metadata brokers list).
    pub advertised: SocketAddr,
    pub default_log: LogConfig,
    /// `num.partitions` for auto-created topics.
    pub num_partitions: i32,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets`.
    pub offsets_topic_partitions: i32,
    /// `fetch.max.bytes`: the most record bytes one Fetch response carries, whatever it asks.
    pub fetch_max_bytes: usize,
    /// Other read-only broker configs DescribeConfigs reports: (Kafka name, value, source).
    pub broker_configs: Vec<(&'static str, String, i8)>,
}

/// A topic to create, as requested.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    /// -1: the broker default.
    pub partitions: i32,
    /// -1: the broker default (1).
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
    pub has_assignments: bool,
}

/// The outcome for one topic of a create or delete.
#[derive(Debug, Clone)]
pub struct TopicOutcome {
    pub name: String,
    pub error_code: i16,
    pub message: Option<String>,
    pub record: Option<TopicRecord>,
}

impl TopicOutcome {
    fn error(name: &str, error_code: i16, message: impl Into<String>) -> Self {
        Self { name: name.to_string(), error_code, message: Some(message.into()), record: None }
    }
}

/// Messages between shards.
#[derive(Debug)]
pub enum ShardRequest {
    Ping,
    /// Open (recover) a partition on its owner; `fresh` first removes leftovers of a topic
    /// that was deleted before a crash.
    OpenPartition {
        partition: TopicPartition,
        config: LogConfig,
        fresh: bool,
    },
    DeletePartition {
        partition: TopicPartition,
    },
    /// To the controller shard.
    CreateTopics {
        topics: Vec<TopicSpec>,
        validate_only: bool,
    },
    /// To the controller shard.
    DeleteTopics {
        names: Vec<String>,
    },
    /// Append a produced batch on the partition's owner; the reply comes once it is in the
    /// log (offsets assigned), before it is acknowledged: see `WaitDurable`.
    Append {
        partition: TopicPartition,
        batch: bytes::BytesMut,
    },
    /// Reply once offsets below `next_offset` are acknowledged by the partition's durability
    /// policy, or REQUEST_TIMED_OUT after `timeout`.
    WaitDurable {
        partition: TopicPartition,
        next_offset: i64,
        timeout: std::time::Duration,
    },
    /// Read from `offset` on the partition's owner.
    Read {
        partition: TopicPartition,
        offset: i64,
        max_bytes: usize,
    },
    /// Answer once the partition's high watermark is beyond `offset`, or after `timeout`
    /// (the long poll of Fetch, on the partition's owner).
    WaitForData {
        partition: TopicPartition,
        offset: i64,
        timeout: std::time::Duration,
    },
    /// Offsets of a partition and, when asked, a record found by time.
    Offsets {
        partition: TopicPartition,
        lookup: TimeLookup,
    },
    /// Move the log start offset (DeleteRecords); -1 means the high watermark.
    DeleteRecords {
        partition: TopicPartition,
        offset: i64,
    },
    /// To the controller shard: a new idempotent-producer id.
    AllocateProducerId,
    /// To the controller shard: change topics' configs.
    AlterTopicConfigs {
        edits: Vec<(String, ConfigEdit)>,
        validate_only: bool,
    },
    /// To the controller shard: grow topics to `count` partitions each.
    CreatePartitions {
        topics: Vec<PartitionGrowth>,
        validate_only: bool,
    },
    /// To the coordinator shard of a group (the owner of its `__consumer_offsets` partition).
    Group(GroupCall),
    /// Replace a partition's log config on its owner (after the registry has the change).
    UpdatePartitionConfig {
        partition: TopicPartition,
        config: LogConfig,
    },
}

/// A consumer-group request, run on the group's coordinator shard.
#[derive(Debug)]
pub enum GroupCall {
    Join {
        request: JoinRequest,
        partition: i32,
    },
    Sync {
        request: SyncRequest,
    },
    Heartbeat {
        group_id: String,
        who: MemberRef,
    },
    Leave {
        group_id: String,
        members: Vec<MemberRef>,
    },
    Commit {
        group_id: String,
        partition: i32,
        who: MemberRef,
        commits: Vec<OffsetCommit>,
    },
    FetchOffsets {
        group_id: String,
        wanted: Option<Vec<(String, Vec<i32>)>>,
        /// OffsetFetch v9 from a consumer-protocol member: (member id, member epoch).
        member: Option<(String, i32)>,
    },
    Describe {
        group_id: String,
    },
    /// Every group of the receiving shard.
    List,
    Delete {
        group_id: String,
        partition: i32,
    },
    DeleteOffsets {
        group_id: String,
        partition: i32,
        targets: Vec<(String, i32)>,
    },
    ConsumerHeartbeat {
        request: group::consumer::HeartbeatRequest,
        partition: i32,
    },
    ConsumerDescribe {
        group_id: String,
    },
}

#[derive(Debug)]
pub enum GroupAnswer {
    Join(JoinOutcome),
    Sync(SyncOutcome),
    Code(i16),
    Codes(Vec<i16>),
    Committed(Result<Vec<i16>, i16>),
    Offsets(Vec<(String, i32, Option<Committed>)>),
    Described(Option<GroupDescription>),
    Listed(Vec<group::ListedGroup>),
    ConsumerHeartbeat(group::consumer::HeartbeatOutcome),
    ConsumerDescribed(Option<group::ConsumerGroupView>),
    Deleted(Result<(), i16>),
}

/// How a topic's explicit configs change.
#[derive(Debug, Clone)]
pub enum ConfigEdit {
    /// AlterConfigs: the given configs replace all explicit ones.
    Replace(BTreeMap<String, String>),
    /// IncrementalAlterConfigs: set, delete, append to or subtract from single keys.
    Incremental(Vec<ConfigChange>),
}

/// A CreatePartitions request for one topic.
#[derive(Debug, Clone)]
pub struct PartitionGrowth {
    pub name: String,
    /// The partition count wanted (must be larger than the current one).
    pub count: i32,
    pub has_assignments: bool,
}

/// Where an appended batch went.
#[derive(Debug, Clone, Copy)]
pub struct AppendReply {
    pub base_offset: i64,
    pub last_offset: i64,
    pub log_start_offset: i64,
}

/// A partition read, as sent back to the connection's shard.
#[derive(Debug)]
pub struct ReadReply {
    pub offsets: PartitionOffsets,
    /// Batches, in order: the batch cache's own buffers (shared, not copied, also across
    /// shards), a slice of a segment file for the connection's shard to splice, or (rarely)
    /// one buffer an O_DIRECT read filled.
    pub records: Vec<Chunk>,
}

impl ReadReply {
    pub fn records_len(&self) -> usize {
        self.records.iter().map(Chunk::len).sum()
    }
}

/// A record to find by time along with a partition's offsets (ListOffsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLookup {
    None,
    /// The first record whose timestamp is at or after this one.
    AtOrAfter(i64),
    /// The first record with the largest timestamp (KIP-734).
    MaxTimestamp,
}

/// Offsets of a partition, and the answer to a timestamp lookup.
#[derive(Debug)]
pub struct OffsetsReply {
    pub offsets: PartitionOffsets,
    /// The record the lookup found (None: none matches, or no lookup).
    pub found: Option<RecordStamp>,
}

#[derive(Debug)]
pub enum ShardResponse {
    Pong,
    Done(Result<(), String>),
    Topics(Vec<TopicOutcome>),
    Appended(Result<AppendReply, i16>),
    /// An acknowledgement (`WaitDurable`), or a Kafka error code.
    Acknowledged(Result<(), i16>),
    Read(Result<ReadReply, i16>),
    Offsets(Result<OffsetsReply, i16>),
    /// The new log start offset (low watermark), or a Kafka error code.
    RecordsDeleted(Result<i64, i16>),
    ProducerId(Result<i64, String>),
    Group(GroupAnswer),
}

pub struct ShardBroker {
    pub ctx: ShardContext<ShardRequest, ShardResponse>,
    pub log: Rc<ShardLog>,
    pub registry: Arc<Registry>,
    pub settings: Arc<BrokerSettings>,
    pub groups: Rc<GroupService>,
    /// Incremental fetch sessions of the connections this shard accepted.
    pub fetch_sessions: std::cell::RefCell<crate::handlers::fetch_session::FetchSessions>,
    /// The shard's request counters, read by scrapes (see `crate::admin`).
    pub metrics: Rc<ShardMetrics>,
    controller_lock: glommio::sync::Semaphore,
}

impl ShardBroker {
    /// Builds the shard's broker and starts serving requests from other shards.
    pub fn start(
        ctx: ShardContext<ShardRequest, ShardResponse>,
        log: Rc<ShardLog>,
        registry: Arc<Registry>,
        settings: Arc<BrokerSettings>,
        groups: Rc<GroupService>,
    ) -> Rc<Self> {
        let controller_lock = glommio::sync::Semaphore::new(1);
        let fetch_sessions = Default::default();
        let metrics = ShardMetrics::new();
        let broker = Rc::new(Self { ctx, log, registry, settings, groups, fetch_sessions, metrics, controller_lock });
        let handler = Rc::clone(&broker);
        broker.ctx.serve(move |request| Rc::clone(&handler).on_shard_request(request));
        broker
    }

    pub fn shard_id(&self) -> ShardId {
        self.ctx.id
    }

    /// The owner shard of a partition, if the partition exists.
    pub fn owner(&self, partition: &TopicPartition) -> Option<ShardId> {
        self.ctx.placement.owner(partition)
    }

    async fn on_shard_request(self: Rc<Self>, request: ShardRequest) -> ShardResponse {
        match request {
            ShardRequest::Ping => ShardResponse::Pong,
            ShardRequest::OpenPartition { partition, config, fresh } => {
                let result = async {
                    if fresh {
                        self.log.delete_partition(&partition).await.map_err(|e| e.to_string())?;
                    }
                    self.log.open_partition(&partition, config).await.map(|_| ()).map_err(|e| e.to_string())
                }
                .await;
                ShardResponse::Done(result)
            }
            ShardRequest::DeletePartition { partition } => {
                ShardResponse::Done(self.log.delete_partition(&partition).await.map_err(|e| e.to_string()))
            }
            ShardRequest::CreateTopics { topics, validate_only } => {
                ShardResponse::Topics(self.controller_create_topics(topics, validate_only).await)
            }
            ShardRequest::DeleteTopics { names } => ShardResponse::Topics(self.controller_delete_topics(names).await),
            ShardRequest::Append { partition, batch } => ShardResponse::Appended(self.append_local(&partition, batch)),
            ShardRequest::WaitDurable { partition, next_offset, timeout } => {
                ShardResponse::Acknowledged(self.wait_durable_local(&partition, next_offset, timeout).await)
            }
            ShardRequest::Read { partition, offset, max_bytes } => {
                ShardResponse::Read(self.read_local(&partition, offset, max_bytes).await)
            }
            ShardRequest::WaitForData { partition, offset, timeout } => {
                let result = match self.log.wait_for_data_beyond(&partition, offset) {
                    Ok(arrived) => {
                        // Timing out is an answer too: the fetch then responds with what it has.
                        let _ = glommio::timer::timeout(timeout, async { Ok(arrived.await) }).await;
                        Ok(())
                    }
                    Err(error) => Err(error.to_string()),
                };
                ShardResponse::Done(result)
            }
            ShardRequest::Offsets { partition, lookup } => {
                ShardResponse::Offsets(self.offsets_local(&partition, lookup).await)
            }
            ShardRequest::AllocateProducerId => {
                let _permit = self.controller_lock.acquire_permit(1).await;
                let registry = Arc::clone(&self.registry);
                ShardResponse::ProducerId(
                    glommio::executor().spawn_blocking(move || registry.allocate_producer_id()).await,
                )
            }
            ShardRequest::DeleteRecords { partition, offset } => ShardResponse::RecordsDeleted(
                self.log.delete_records(&partition, offset).await.map_err(|e| e.kafka_error_code()),
            ),
            ShardRequest::AlterTopicConfigs { edits, validate_only } => {
                ShardResponse::Topics(self.controller_alter_configs(edits, validate_only).await)
            }
            ShardRequest::CreatePartitions { topics, validate_only } => {
                ShardResponse::Topics(self.controller_create_partitions(topics, validate_only).await)
            }
            ShardRequest::Group(call) => ShardResponse::Group(self.on_group_call(call).await),
            ShardRequest::UpdatePartitionConfig { partition, config } => {
                ShardResponse::Done(self.log.update_config(&partition, config).map_err(|e| e.to_string()))
            }
        }
    }

    /// Creates topics through the controller shard.
    pub async fn create_topics(&self, topics: Vec<TopicSpec>, validate_only: bool) -> Vec<TopicOutcome> {
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        match self.ctx.call(CONTROLLER_SHARD, ShardRequest::CreateTopics { topics, validate_only }).await {
            Ok(ShardResponse::Topics(outcomes)) => outcomes,
            other => unavailable(&names, &format!("controller unavailable: {other:?}")),
        }
    }

    /// Deletes topics through the controller shard.
    pub async fn delete_topics(&self, names: Vec<String>) -> Vec<TopicOutcome> {
        match self.ctx.call(CONTROLLER_SHARD, ShardRequest::DeleteTopics { names: names.clone() }).await {
            Ok(ShardResponse::Topics(outcomes)) => outcomes,
            other => unavailable(&names, &format!("controller unavailable: {other:?}")),
        }
    }

    /// Changes topic configs through the controller shard.
    pub async fn alter_topic_configs(
        &self,
        edits: Vec<(String, ConfigEdit)>,
        validate_only: bool,
    ) -> Vec<TopicOutcome> {
        let names: Vec<String> = edits.iter().map(|(name, _)| name.clone()).collect();
        match self.ctx.call(CONTROLLER_SHARD, ShardRequest::AlterTopicConfigs { edits, validate_only }).await {
            Ok(ShardResponse::Topics(outcomes)) => outcomes,
            other => unavailable(&names, &format!("controller unavailable: {other:?}")),
        }
    }

    /// Adds partitions to topics through the controller shard.
    pub async fn create_partitions(&self, topics: Vec<PartitionGrowth>, validate_only: bool) -> Vec<TopicOutcome> {
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        match self.ctx.call(CONTROLLER_SHARD, ShardRequest::CreatePartitions { topics, validate_only }).await {
            Ok(ShardResponse::Topics(outcomes)) => outcomes,
            other => unavailable(&names, &format!("controller unavailable: {other:?}")),
        }
    }

    fn validate(&self, spec: &TopicSpec, existing: &registry::TopicMap) -> Result<(i32, LogConfig), (i16, String)> {
        let name = spec.name.as_str();
        if !registry::valid_topic_name(name) {
            return Err((error_code::INVALID_TOPIC_EXCEPTION, format!("invalid topic name {name:?}")));
        }
        if existing.contains_key(name) {
            return Err((error_code::TOPIC_ALREADY_EXISTS, format!("topic {name} already exists")));
        }
        if spec.has_assignments {
            return Err((error_code::INVALID_REQUEST, "manual replica assignments are not supported".into()));
        }
        let partitions = if spec.partitions == -1 { self.settings.num_partitions } else { spec.partitions };
        if partitions <= 0 {
            return Err((error_code::INVALID_PARTITIONS, "number of partitions must be at least 1".into()));
        }
        if partitions > PARTITIONS_PER_TOPIC_MAX {
            return Err((
                error_code::INVALID_PARTITIONS,
                format!("{partitions} partitions: at most {PARTITIONS_PER_TOPIC_MAX} per topic"),
            ));
        }
        if !(spec.replication_factor == -1 || spec.replication_factor == 1) {
            return Err((
                error_code::INVALID_REPLICATION_FACTOR,
                format!("replication factor {} is larger than the 1 available broker", spec.replication_factor),
            ));
        }
        let config = registry::log_config(&self.settings.default_log, &spec.configs)
            .map_err(|message| (error_code::INVALID_CONFIG, message))?;
        Ok((partitions, config))
    }

    async fn controller_create_topics(&self, specs: Vec<TopicSpec>, validate_only: bool) -> Vec<TopicOutcome> {
        let Ok(_permit) = self.controller_lock.acquire_permit(1).await else {
            return unavailable(&specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>(), "controller stopping");
        };
        let mut topics = (*self.registry.snapshot()).clone();
        let mut outcomes = Vec::with_capacity(specs.len());
        let mut created = Vec::new();
        for spec in specs {
            let (partitions, config) = match self.validate(&spec, &topics) {
                Ok(valid) => valid,
                Err((code, message)) => {
                    outcomes.push(TopicOutcome::error(&spec.name, code, message));
                    continue;
                }
            };
            let record = registry::new_topic(&spec.name, partitions, spec.configs.clone());
            if !validate_only {
                if let Err(message) = self.open_partitions(&record, &config).await {
                    tracing::warn!(topic = %spec.name, %message, "cannot create the topic's partitions");
                    outcomes.push(TopicOutcome::error(&spec.name, error_code::KAFKA_STORAGE_ERROR, message));
                    continue;
                }
                topics.insert(spec.name.clone(), record.clone());
                created.push(spec.name.clone());
            }
            outcomes.push(TopicOutcome {
                name: spec.name,
                error_code: error_code::NONE,
                message: None,
                record: Some(record),
            });
        }
        if !created.is_empty() {
            let registry = Arc::clone(&self.registry);
            let stored = glommio::executor().spawn_blocking(move || registry.store(topics)).await;
            if let Err(message) = stored {
                tracing::error!(topics = ?created, %message, "cannot persist the topic registry: topics not created");
                for outcome in outcomes.iter_mut().filter(|o| created.contains(&o.name)) {
                    *outcome = TopicOutcome::error(&outcome.name, error_code::KAFKA_STORAGE_ERROR, message.clone());
                }
            } else {
                tracing::info!(topics = ?created, "created topics");
            }
        }
        outcomes
    }

    async fn open_partitions(&self, record: &TopicRecord, config: &LogConfig) -> Result<(), String> {
        self.open_partition_range(record, 0..record.partitions, config).await
    }

    async fn open_partition_range(
        &self,
        record: &TopicRecord,
        indexes: std::ops::Range<i32>,
        config: &LogConfig,
    ) -> Result<(), String> {
        let table = self.ctx.placement.table();
        for index in indexes {
            let partition = TopicPartition::new(record.name.clone(), index);
            let owner = table.assign(&partition);
            let request =
                ShardRequest::OpenPartition { partition: partition.clone(), config: config.clone(), fresh: true };
            match self.ctx.call(owner, request).await {
                Ok(ShardResponse::Done(Ok(()))) => {}
                Ok(ShardResponse::Done(Err(message))) => {
                    return Err(format!("partition {partition}: {message}"));
                }
                other => {
                    return Err(format!("partition {partition}: shard {owner} answered {other:?}"));
                }
            }
        }
        Ok(())
    }

    async fn controller_delete_topics(&self, names: Vec<String>) -> Vec<TopicOutcome> {
        let Ok(_permit) = self.controller_lock.acquire_permit(1).await else {
            return unavailable(&names, "controller stopping");
        };
        let mut topics = (*self.registry.snapshot()).clone();
        let mut outcomes = Vec::new();
        let mut removed = Vec::new();
        for name in names {
            if name == OFFSETS_TOPIC {
                let message = format!("{OFFSETS_TOPIC} is internal: it holds every group's state");
                outcomes.push(TopicOutcome::error(&name, error_code::INVALID_REQUEST, message));
                continue;
            }
            match topics.remove(&name) {
                Some(record) => {
                    removed.push(record.clone());
                    outcomes.push(TopicOutcome {
                        name,
                        error_code: error_code::NONE,
                        message: None,
                        record: Some(record),
                    });
                }
                None => outcomes.push(TopicOutcome::error(
                    &name,
                    error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("unknown topic {name}"),
                )),
            }
        }
        if removed.is_empty() {
            return outcomes;
        }
        // The registry is the truth: once the topic is gone from it, leftover partition
        // directories are removed (now, or at the next start after a crash).
        let registry = Arc::clone(&self.registry);
        if let Err(message) = glommio::executor().spawn_blocking(move || registry.store(topics)).await {
            return unavailable(&removed.iter().map(|r| r.name.clone()).collect::<Vec<_>>(), &message);
        }
        for record in &removed {
            for index in 0..record.partitions {
                let partition = TopicPartition::new(record.name.clone(), index);
                if let Some(owner) = self.owner(&partition) {
                    let outcome =
                        self.ctx.call(owner, ShardRequest::DeletePartition { partition: partition.clone() }).await;
                    if !matches!(outcome, Ok(ShardResponse::Done(Ok(())))) {
                        tracing::warn!(%partition, ?outcome, "partition files not removed; they go at the next start");
                    }
                }
            }
        }
        // The space just freed refills the reserve a full disk may have used up.
        let registry = Arc::clone(&self.registry);
        glommio::executor().spawn_blocking(move || registry.ensure_space_reserve()).await;
        tracing::info!(topics = ?removed.iter().map(|r| &r.name).collect::<Vec<_>>(), "deleted topics");
        outcomes
    }
}

impl ShardBroker {
    /// Applies config edits: each topic's new explicit configs are validated as a whole,
    /// stored in the registry (the truth, read again at start), then pushed to the owners of
    /// its partitions.
    async fn controller_alter_configs(
        &self,
        edits: Vec<(String, ConfigEdit)>,
        validate_only: bool,
    ) -> Vec<TopicOutcome> {
        let Ok(_permit) = self.controller_lock.acquire_permit(1).await else {
            return unavailable(&edits.into_iter().map(|(n, _)| n).collect::<Vec<_>>(), "controller stopping");
        };
        let mut topics = (*self.registry.snapshot()).clone();
        let mut outcomes = Vec::with_capacity(edits.len());
        let mut changed: Vec<(TopicRecord, LogConfig)> = Vec::new();
        for (name, edit) in edits {
            if name == OFFSETS_TOPIC {
                let message = format!("{OFFSETS_TOPIC} is internal: its configs are fixed");
                outcomes.push(TopicOutcome::error(&name, error_code::INVALID_REQUEST, message));
                continue;
            }
            let Some(record) = topics.get(&name) else {
                let message = format!("unknown topic {name}");
                outcomes.push(TopicOutcome::error(&name, error_code::UNKNOWN_TOPIC_OR_PARTITION, message));
                continue;
            };
            let explicit = match edit {
                ConfigEdit::Replace(configs) => Ok(configs),
                ConfigEdit::Incremental(changes) => configs::apply_incremental(&record.configs, &changes),
            };
            let validated = explicit.and_then(|explicit| {
                registry::log_config(&self.settings.default_log, &explicit)
                    .map(|config| (explicit, config))
                    .map_err(|message| (error_code::INVALID_CONFIG, message))
            });
            match validated {
                Ok((explicit, config)) => {
                    if !validate_only {
                        let record = TopicRecord { configs: explicit, ..record.clone() };
                        topics.insert(name.clone(), record.clone());
                        changed.push((record, config));
                    }
                    outcomes.push(TopicOutcome { name, error_code: error_code::NONE, message: None, record: None });
                }
                Err((code, message)) => outcomes.push(TopicOutcome::error(&name, code, message)),
            }
        }
        if changed.is_empty() {
            return outcomes;
        }
        let registry = Arc::clone(&self.registry);
        if let Err(message) = glommio::executor().spawn_blocking(move || registry.store(topics)).await {
            let names: Vec<String> = changed.iter().map(|(r, _)| r.name.clone()).collect();
            tracing::error!(topics = ?names, %message, "cannot persist the topic registry: configs not changed");
            for outcome in outcomes.iter_mut().filter(|o| names.contains(&o.name)) {
                *outcome = TopicOutcome::error(&outcome.name, error_code::KAFKA_STORAGE_ERROR, message.clone());
            }
            return outcomes;
        }
        for (record, config) in &changed {
            for index in 0..record.partitions {
                let partition = TopicPartition::new(record.name.clone(), index);
                let request =
                    ShardRequest::UpdatePartitionConfig { partition: partition.clone(), config: config.clone() };
                let outcome = self.partition_call(&partition, request).await;
                if !matches!(outcome, Ok(ShardResponse::Done(Ok(())))) {
                    // The registry has the change, so the next start applies it.
                    tracing::warn!(%partition, ?outcome, "config change not applied to the open partition");
                }
            }
            tracing::info!(topic = %record.name, configs = ?record.configs, "altered topic configs");
        }
        outcomes
    }

    /// Grows topics: opens the new partitions on their owners, then records the new count.
    /// A crash in between leaves directories the next start removes (they are beyond the
    /// registry's count).
    async fn controller_create_partitions(
        &self,
        growths: Vec<PartitionGrowth>,
        validate_only: bool,
    ) -> Vec<TopicOutcome> {
        let Ok(_permit) = self.controller_lock.acquire_permit(1).await else {
            return unavailable(&growths.into_iter().map(|g| g.name).collect::<Vec<_>>(), "controller stopping");
        };
        let mut topics = (*self.registry.snapshot()).clone();
        let mut outcomes = Vec::with_capacity(growths.len());
        let mut grown = Vec::new();
        for (i, growth) in growths.iter().enumerate() {
            let name = growth.name.as_str();
            if growths[..i].iter().chain(&growths[i + 1..]).any(|g| g.name == growth.name) {
                let message = format!("topic {name} appears more than once in the request");
                outcomes.push(TopicOutcome::error(name, error_code::INVALID_REQUEST, message));
                continue;
            }
            if name == OFFSETS_TOPIC {
                let message = format!("{OFFSETS_TOPIC} is internal: groups are placed by its partition count");
                outcomes.push(TopicOutcome::error(name, error_code::INVALID_REQUEST, message));
                continue;
            }
            let Some(record) = topics.get(name).cloned() else {
                let message = format!("unknown topic {name}");
                outcomes.push(TopicOutcome::error(name, error_code::UNKNOWN_TOPIC_OR_PARTITION, message));
                continue;
            };
            let refusal = if growth.has_assignments {
                Some((error_code::INVALID_REPLICA_ASSIGNMENT, "manual replica assignments are not supported".into()))
            } else if growth.count <= record.partitions {
                Some((
                    error_code::INVALID_PARTITIONS,
                    format!(
                        "topic {name} has {} partitions; the new count must be larger, not {}",
                        record.partitions, growth.count
                    ),
                ))
            } else if growth.count > PARTITIONS_PER_TOPIC_MAX {
                Some((
                    error_code::INVALID_PARTITIONS,
                    format!("{} partitions: at most {PARTITIONS_PER_TOPIC_MAX} per topic", growth.count),
                ))
            } else {
                None
            };
            if let Some((code, message)) = refusal {
                outcomes.push(TopicOutcome::error(name, code, message));
                continue;
            }
            if !validate_only {
                let config = match registry::log_config(&self.settings.default_log, &record.configs) {
                    Ok(config) => config,
                    Err(message) => {
                        outcomes.push(TopicOutcome::error(name, error_code::INVALID_CONFIG, message));
                        continue;
                    }
                };
                if let Err(message) = self.open_partition_range(&record, record.partitions..growth.count, &config).await
                {
                    outcomes.push(TopicOutcome::error(name, error_code::KAFKA_STORAGE_ERROR, message));
                    continue;
                }
                topics.insert(record.name.clone(), TopicRecord { partitions: growth.count, ..record });
                grown.push(growth.name.clone());
            }
            outcomes.push(TopicOutcome {
                name: growth.name.clone(),
                error_code: error_code::NONE,
                message: None,
                record: None,
            });
        }
        if grown.is_empty() {
            return outcomes;
        }
        let registry = Arc::clone(&self.registry);
        if let Err(message) = glommio::executor().spawn_blocking(move || registry.store(topics)).await {
            tracing::error!(topics = ?grown, %message, "cannot persist the topic registry: partitions not added");
            for outcome in outcomes.iter_mut().filter(|o| grown.contains(&o.name)) {
                *outcome = TopicOutcome::error(&outcome.name, error_code::KAFKA_STORAGE_ERROR, message.clone());
            }
        } else {
            tracing::info!(topics = ?grown, "added partitions");
        }
        outcomes
    }
}

impl ShardBroker {
    /// Appends on this shard (the owner). Errors are Kafka codes.
    fn append_local(&self, partition: &TopicPartition, batch: bytes::BytesMut) -> Result<AppendReply, i16> {
        let now_ms = corelog_engine::now_ms();
        // The append's own `durable` is let go: a produce waits with `WaitDurable`, so that a
        // connection can append its pipelined requests in order and wait for them together.
        let appended = self.log.append(partition, batch, now_ms).map_err(|e| e.kafka_error_code())?;
        let log_start_offset = self.log.offsets(partition).map(|o| o.log_start_offset).unwrap_or(-1);
        Ok(AppendReply { base_offset: appended.base_offset, last_offset: appended.last_offset, log_start_offset })
    }

    async fn wait_durable_local(
        &self,
        partition: &TopicPartition,
        next_offset: i64,
        timeout: std::time::Duration,
    ) -> Result<(), i16> {
        let durable = self.log.wait_durable(partition, next_offset).map_err(|e| e.kafka_error_code())?;
        // The storage's queue runs next, so the flusher starts this write now rather than
        // after every other runnable connection (its queue is not preempted sooner than
        // glommio's 100 ms period: see `FLUSHER_LATENCY` in the engine).
        glommio::executor().yield_task_queue_now().await;
        match glommio::timer::timeout(timeout, async { Ok(durable.await) }).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.kafka_error_code()),
            Err(_) => Err(error_code::REQUEST_TIMED_OUT),
        }
    }

    /// Reads on this shard (the owner). File data goes back as a slice to splice; only what
    /// a response needs from the partial last page of an active segment is read (O_DIRECT)
    /// and copied.
    async fn read_local(&self, partition: &TopicPartition, offset: i64, max_bytes: usize) -> Result<ReadReply, i16> {
        let result = self.log.read(partition, offset, max_bytes).await.map_err(|e| e.kafka_error_code())?;
        let records = match result.data {
            ReadData::Empty => Vec::new(),
            ReadData::Cached(batches) => batches.into_iter().map(Chunk::Memory).collect(),
            ReadData::File(range) => {
                let (slice, rest) = range.split_for_splice();
                let mut chunks = Vec::with_capacity(2);
                if let Some(slice) = slice {
                    slice.prefetch();
                    self.metrics.file_read(true, slice.len);
                    chunks.push(Chunk::File(slice));
                }
                if let Some(rest) = rest {
                    let bytes = rest.read_to_vec().await.map_err(|_| error_code::KAFKA_STORAGE_ERROR)?;
                    self.metrics.file_read(false, bytes.len() as u64);
                    chunks.push(Chunk::Memory(bytes::Bytes::from(bytes)));
                }
                chunks
            }
        };
        Ok(ReadReply { offsets: result.offsets, records })
    }

    async fn offsets_local(&self, partition: &TopicPartition, lookup: TimeLookup) -> Result<OffsetsReply, i16> {
        let offsets = self.log.offsets(partition).map_err(|e| e.kafka_error_code())?;
        let found = match lookup {
            TimeLookup::None => Ok(None),
            TimeLookup::AtOrAfter(timestamp) => self.log.offset_for_timestamp(partition, timestamp).await,
            TimeLookup::MaxTimestamp => self.log.max_timestamp_record(partition).await,
        };
        Ok(OffsetsReply { offsets, found: found.map_err(|e| e.kafka_error_code())? })
    }

    /// A new producer id from the controller shard.
    pub async fn allocate_producer_id(&self) -> Result<i64, String> {
        match self.ctx.call(CONTROLLER_SHARD, ShardRequest::AllocateProducerId).await {
            Ok(ShardResponse::ProducerId(result)) => result,
            other => Err(format!("controller unavailable: {other:?}")),
        }
    }

    /// Sends a partition request to the partition's owner (or runs it here).
    pub async fn partition_call(
        &self,
        partition: &TopicPartition,
        request: ShardRequest,
    ) -> Result<ShardResponse, i16> {
        let owner = self.owner(partition).ok_or(error_code::UNKNOWN_TOPIC_OR_PARTITION)?;
        self.ctx.call(owner, request).await.map_err(|_| error_code::KAFKA_STORAGE_ERROR)
    }
}

impl ShardBroker {
    /// The `__consumer_offsets` partition of a group.
    pub fn group_partition(&self, group_id: &str) -> i32 {
        group::partition_for(group_id, self.settings.offsets_topic_partitions)
    }

    /// Sends a group request to the group's coordinator shard. COORDINATOR_NOT_AVAILABLE
    /// while `__consumer_offsets` does not exist yet.
    pub async fn group_call(&self, group_id: &str, call: GroupCall) -> Result<GroupAnswer, i16> {
        let partition = TopicPartition::new(OFFSETS_TOPIC, self.group_partition(group_id));
        let owner = self.owner(&partition).ok_or(group::classic::error_code::COORDINATOR_NOT_AVAILABLE)?;
        match self.ctx.call(owner, ShardRequest::Group(call)).await {
            Ok(ShardResponse::Group(answer)) => Ok(answer),
            _ => Err(group::classic::error_code::COORDINATOR_NOT_AVAILABLE),
        }
    }

    /// Every shard's groups (ListGroups).
    pub async fn list_groups(&self) -> Vec<group::ListedGroup> {
        let mut all = Vec::new();
        for shard in 0..self.ctx.shard_count {
            if let Ok(ShardResponse::Group(GroupAnswer::Listed(groups))) =
                self.ctx.call(shard, ShardRequest::Group(GroupCall::List)).await
            {
                all.extend(groups);
            }
        }
        all.sort();
        all
    }

    async fn on_group_call(&self, call: GroupCall) -> GroupAnswer {
        let groups = &self.groups;
        match call {
            GroupCall::Join { request, partition } => GroupAnswer::Join(groups.join(request, partition).await),
            GroupCall::Sync { request } => GroupAnswer::Sync(groups.sync(request).await),
            GroupCall::Heartbeat { group_id, who } => GroupAnswer::Code(groups.heartbeat(&group_id, &who)),
            GroupCall::Leave { group_id, members } => GroupAnswer::Codes(groups.leave(&group_id, &members).await),
            GroupCall::Commit { group_id, partition, who, commits } => {
                GroupAnswer::Committed(groups.commit(&group_id, partition, &who, &commits).await)
            }
            GroupCall::FetchOffsets { group_id, wanted, member } => {
                match groups.check_member_epoch(&group_id, member) {
                    Ok(()) => GroupAnswer::Offsets(groups.fetch_offsets(&group_id, wanted.as_deref())),
                    Err(code) => GroupAnswer::Code(code),
                }
            }
            GroupCall::Describe { group_id } => GroupAnswer::Described(groups.describe(&group_id)),
            GroupCall::List => GroupAnswer::Listed(groups.list()),
            GroupCall::Delete { group_id, partition } => {
                GroupAnswer::Code(groups.delete_group(&group_id, partition).await)
            }
            GroupCall::DeleteOffsets { group_id, partition, targets } => {
                GroupAnswer::Deleted(groups.delete_offsets(&group_id, partition, &targets).await)
            }
            GroupCall::ConsumerHeartbeat { request, partition } => {
                GroupAnswer::ConsumerHeartbeat(groups.consumer_heartbeat(request, partition).await)
            }
            GroupCall::ConsumerDescribe { group_id } => {
                GroupAnswer::ConsumerDescribed(groups.describe_consumer_group(&group_id))
            }
        }
    }
}

fn unavailable(names: &[String], message: &str) -> Vec<TopicOutcome> {
    names.iter().map(|n| TopicOutcome::error(n, error_code::KAFKA_STORAGE_ERROR, message)).collect()
}
