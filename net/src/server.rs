//! One shard of a running broker, start to stop: storage, partitions, the shard's broker,
//! its Kafka listener, retention, and the graceful stop. The `corelog` binary and the
//! end-to-end tests run exactly this.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use corelog_engine::log::{LogConfig, ShardLog, ShardLogConfig, TopicPartition, WriteShape};
use corelog_engine::runtime::{PlacementTable, ShardContext};

use crate::admin::AdminHub;
use crate::broker::{BrokerSettings, ShardBroker, ShardRequest, ShardResponse, TopicSpec};
use crate::connection::ConnectionLimits;
use crate::group::classic::CoordinatorConfig;
use crate::group::{GroupService, OFFSETS_TOPIC};
use crate::listener::Listener;
use crate::registry::{self, Registry};

/// How often each shard's probe timer measures the delay of its task queue.
const TASK_DELAY_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Everything a shard needs to run, shared by all shards.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Address given to clients; None = the bound listener address.
    pub advertised: Option<SocketAddr>,
    pub cache_budget_bytes_per_shard: usize,
    /// Ring size of each shard's journal; 0 runs without (a sync per segment file per wave).
    pub journal_bytes_per_shard: u64,
    /// How flush waves cut their writes (from the device's I/O profile when there is one).
    pub write_shape: WriteShape,
    pub limits: ConnectionLimits,
    pub max_connections_per_shard: usize,
    /// Request bytes read and not yet answered, over all connections of a shard
    /// (`queued.max.request.bytes`, per shard).
    pub queued_max_request_bytes_per_shard: usize,
    /// New connections a shard accepts per second at most (`max.connection.creation.rate`
    /// divided among the shards); None: no limit.
    pub connections_per_sec_max_per_shard: Option<f64>,
    /// `fetch.max.bytes`: the most record bytes one Fetch response carries.
    pub fetch_max_bytes: usize,
    pub default_log: LogConfig,
    pub num_partitions: i32,
    pub auto_create_topics: bool,
    pub retention_check_interval: Duration,
    /// The group coordinator's limits and delays.
    pub group: CoordinatorConfig,
    /// `offsets.topic.num.partitions`, used when `__consumer_offsets` is created.
    pub offsets_topic_partitions: i32,
}

/// What shards report to the process that started them.
#[derive(Debug)]
pub enum ShardEvent {
    Ready { shard: usize, partitions: usize, listen: SocketAddr },
    Failed { shard: usize, reason: String },
}

/// Start-up work done once, before the shards: load the registry, remove partition
/// directories of topics no longer in it (a delete interrupted by a crash), and assign every
/// partition to a shard.
pub fn prepare(data_dir: &Path, placement: &PlacementTable) -> Result<Arc<Registry>, String> {
    let registry = Registry::open(data_dir)?;
    registry.ensure_space_reserve();
    // Every shard journal (also those of shards a restart with fewer cores no longer has)
    // goes into the segment files before any shard opens a partition.
    let replayed = corelog_engine::log::journal::replay_all(data_dir)
        .map_err(|e| format!("cannot replay the shard journals in {}: {e}", data_dir.display()))?;
    if replayed.batches_restored > 0 {
        tracing::info!(
            batches_restored = replayed.batches_restored,
            bytes_restored = replayed.bytes_restored,
            "shard journals replayed into segment files"
        );
    }
    let topics = registry.snapshot();
    let entries =
        std::fs::read_dir(data_dir).map_err(|e| format!("cannot list data dir {}: {e}", data_dir.display()))?;
    for entry in entries.flatten() {
        let Some(partition) = entry.file_name().to_str().and_then(TopicPartition::from_dir_name) else {
            continue;
        };
        let known = topics.get(&partition.topic).is_some_and(|t| partition.partition < t.partitions);
        if !known && entry.file_type().is_ok_and(|t| t.is_dir()) {
            tracing::warn!(%partition, "removing the files of a deleted topic");
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| format!("cannot remove {}: {e}", entry.path().display()))?;
        }
    }
    for topic in topics.values() {
        for index in 0..topic.partitions {
            placement.assign(&TopicPartition::new(topic.name.clone(), index));
        }
    }
    Ok(registry)
}

/// Runs one shard until the runtime stops it.
pub async fn run_shard(
    ctx: ShardContext<ShardRequest, ShardResponse>,
    config: Arc<ServerConfig>,
    registry: Arc<Registry>,
    bound: Arc<OnceLock<SocketAddr>>,
    events: mpsc::Sender<ShardEvent>,
    admin: Arc<AdminHub>,
) -> Result<(), String> {
    let shard = ctx.id;
    let io_memory_bytes = ctx.io_memory_bytes;
    let fail = |reason: String| {
        let _ = events.send(ShardEvent::Failed { shard, reason: reason.clone() });
        Err(reason)
    };
    let log = match ShardLog::open(ShardLogConfig {
        write_shape: config.write_shape,
        shard,
        journal_bytes: config.journal_bytes_per_shard,
        ..ShardLogConfig::new(config.data_dir.clone(), config.cache_budget_bytes_per_shard)
    })
    .await
    {
        Ok(log) => log,
        Err(error) => return fail(error.to_string()),
    };
    let owned: Vec<(TopicPartition, LogConfig)> = {
        let table = ctx.placement.table();
        let mut owned = Vec::new();
        for topic in registry.snapshot().values() {
            let topic_config = match registry::log_config(&config.default_log, &topic.configs) {
                Ok(c) => c,
                Err(message) => return fail(format!("topic {}: {message}", topic.name)),
            };
            for index in 0..topic.partitions {
                let partition = TopicPartition::new(topic.name.clone(), index);
                if table.lookup(&partition) == Some(shard) {
                    owned.push((partition, topic_config.clone()));
                }
            }
        }
        owned
    };
    for (partition, partition_config) in &owned {
        match log.open_partition(partition, partition_config.clone()).await {
            Ok(report) => {
                let offsets = log.offsets(partition).map_err(|e| e.to_string())?;
                tracing::info!(
                    shard,
                    %partition,
                    log_start_offset = offsets.log_start_offset,
                    log_end_offset = offsets.log_end_offset,
                    segments_trusted = report.segments_trusted,
                    segments_scanned = report.segments_scanned,
                    bytes_truncated = report.bytes_truncated,
                    "partition recovered"
                );
            }
            Err(error) => return fail(format!("partition {partition}: {error}")),
        }
    }

    // Shard 0 binds first (resolving port 0); the others join its port (SO_REUSEPORT).
    let address = if shard == 0 {
        config.listen
    } else {
        loop {
            if let Some(address) = bound.get() {
                break *address;
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
    };
    if shard == 0
        && let Err(error) = crate::listener::check_address_free(address)
    {
        return fail(error.to_string());
    }
    let listener_limits = crate::listener::ListenerLimits {
        max_connections: config.max_connections_per_shard,
        queued_max_request_bytes: config.queued_max_request_bytes_per_shard,
        connections_per_sec_max: config.connections_per_sec_max_per_shard,
    };
    let listener = match Listener::bind(address, config.limits.clone(), listener_limits) {
        Ok(listener) => Rc::new(listener),
        Err(error) => return fail(format!("cannot listen on {address}: {error}")),
    };
    let actual = match listener.local_addr() {
        Ok(actual) => actual,
        Err(error) => return fail(format!("cannot read the listener address: {error}")),
    };
    if shard == 0 {
        let _ = bound.set(actual);
    }
    let settings = Arc::new(BrokerSettings {
        node_id: config.node_id,
        advertised: config.advertised.unwrap_or(actual),
        default_log: config.default_log.clone(),
        num_partitions: config.num_partitions,
        auto_create_topics: config.auto_create_topics,
        // The partition count of an existing `__consumer_offsets` wins: groups are placed by it.
        offsets_topic_partitions: registry
            .snapshot()
            .get(OFFSETS_TOPIC)
            .map_or(config.offsets_topic_partitions, |t| t.partitions),
        fetch_max_bytes: config.fetch_max_bytes,
        broker_configs: broker_configs(&config, actual),
    });
    let member_id_prefix =
        format!("{:08x}", u32::from_be_bytes(registry::random_id()[..4].try_into().unwrap_or([0; 4])));
    let groups = GroupService::new(Rc::clone(&log), Arc::clone(&registry), config.group.clone(), member_id_prefix);
    for (partition, _) in owned.iter().filter(|(p, _)| p.topic == OFFSETS_TOPIC) {
        match groups.load(partition.partition).await {
            Ok((replayed, skipped)) => {
                if replayed > 0 || skipped > 0 {
                    tracing::info!(shard, %partition, replayed, skipped, "group state loaded");
                }
            }
            Err(error) => return fail(format!("loading groups from {partition}: {error}")),
        }
    }
    let group_timers = glommio::spawn_local(Rc::clone(&groups).run_timers()).detach();
    let broker = ShardBroker::start(ctx, Rc::clone(&log), registry, settings, groups);
    for peer in 0..broker.ctx.shard_count {
        if let Err(error) = broker.ctx.call(peer, ShardRequest::Ping).await {
            return fail(format!("shard {peer} unreachable: {error}"));
        }
    }
    if shard == 0
        && !broker.registry.snapshot().contains_key(OFFSETS_TOPIC)
        && let Err(reason) = create_offsets_topic(&broker).await
    {
        return fail(reason);
    }
    let admin_requests = admin.register(shard);
    let snapshot_broker = Rc::clone(&broker);
    let snapshot_listener = Rc::clone(&listener);
    let budget_limit_bytes = config.queued_max_request_bytes_per_shard;
    let admin_task = glommio::spawn_local(crate::admin::serve_shard(admin_requests, move || {
        let (broker, listener) = (&snapshot_broker, &snapshot_listener);
        let topics = broker.registry.snapshot();
        broker.metrics.forget_topics(|topic| topics.contains_key(topic));
        let mut snapshot = broker.metrics.snapshot(shard);
        snapshot.storage = broker.log.stats();
        snapshot.storage_histograms = broker.log.histograms();
        snapshot.partitions = broker.log.partition_metrics();
        snapshot.connections.listener = listener.stats();
        snapshot.connections.budget = listener.request_budget_stats();
        snapshot.connections.budget_limit_bytes = budget_limit_bytes;
        snapshot.io_memory_bytes = io_memory_bytes;
        snapshot.groups = broker.groups.metrics();
        snapshot
    }))
    .detach();
    let delay_probe =
        glommio::spawn_local(crate::metrics::probe_task_delay(Rc::clone(&broker.metrics), TASK_DELAY_PROBE_INTERVAL))
            .detach();
    let _ = events.send(ShardEvent::Ready { shard, partitions: owned.len(), listen: actual });

    let retention_log = Rc::clone(&log);
    let interval = config.retention_check_interval;
    let retention = glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(interval).await;
            let now_ms = corelog_engine::now_ms();
            match retention_log.enforce_retention(now_ms).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(shard, deleted, "retention deleted segments"),
                Err(error) => tracing::error!(shard, %error, "retention failed"),
            }
        }
    })
    .detach();

    listener.run(Rc::clone(&broker), broker.ctx.stopped()).await;
    retention.cancel();
    group_timers.cancel();
    admin_task.cancel();
    delay_probe.cancel();
    if let Err(error) = log.close().await {
        return fail(format!("clean stop failed: {error}"));
    }
    let stats = log.stats();
    tracing::info!(shard, appends = stats.appends, syncs = stats.syncs, "shard stopped");
    Ok(())
}

/// The broker configs DescribeConfigs shows besides the log defaults. Values set at start
/// (config file, flags, environment) are STATIC_BROKER_CONFIG; the rest Kafka's defaults.
fn broker_configs(config: &ServerConfig, listen: SocketAddr) -> Vec<(&'static str, String, i8)> {
    use crate::configs::source::{DEFAULT_CONFIG, STATIC_BROKER_CONFIG};
    let defaults = ConnectionLimits::default();
    let chosen = |differs: bool| if differs { STATIC_BROKER_CONFIG } else { DEFAULT_CONFIG };
    let advertised = config.advertised.unwrap_or(listen);
    vec![
        ("node.id", config.node_id.to_string(), STATIC_BROKER_CONFIG),
        ("broker.id", config.node_id.to_string(), STATIC_BROKER_CONFIG),
        ("log.dirs", config.data_dir.display().to_string(), STATIC_BROKER_CONFIG),
        ("listeners", format!("PLAINTEXT://{listen}"), STATIC_BROKER_CONFIG),
        ("advertised.listeners", format!("PLAINTEXT://{advertised}"), chosen(config.advertised.is_some())),
        ("num.partitions", config.num_partitions.to_string(), chosen(config.num_partitions != 1)),
        ("auto.create.topics.enable", config.auto_create_topics.to_string(), chosen(!config.auto_create_topics)),
        ("default.replication.factor", "1".into(), DEFAULT_CONFIG),
        (
            "socket.request.max.bytes",
            config.limits.max_frame_bytes.to_string(),
            chosen(config.limits.max_frame_bytes != defaults.max_frame_bytes),
        ),
        (
            "connections.max.idle.ms",
            config.limits.idle_timeout.as_millis().to_string(),
            chosen(config.limits.idle_timeout != defaults.idle_timeout),
        ),
        ("queued.max.request.bytes", config.queued_max_request_bytes_per_shard.to_string(), STATIC_BROKER_CONFIG),
        ("fetch.max.bytes", config.fetch_max_bytes.to_string(), STATIC_BROKER_CONFIG),
    ]
}

/// Creates `__consumer_offsets` at the first start: offsets and group state are kept forever
/// (never deleted by time or size), in 100 MiB segments as Kafka does.
async fn create_offsets_topic(broker: &ShardBroker) -> Result<(), String> {
    let spec = TopicSpec {
        name: OFFSETS_TOPIC.to_string(),
        partitions: broker.settings.offsets_topic_partitions,
        replication_factor: 1,
        configs: [("retention.ms", "-1"), ("retention.bytes", "-1"), ("segment.bytes", "104857600")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        has_assignments: false,
    };
    let outcome = broker.create_topics(vec![spec], false).await;
    match outcome.first() {
        Some(o) if o.error_code == 0 || o.error_code == crate::broker::error_code::TOPIC_ALREADY_EXISTS => Ok(()),
        other => Err(format!("cannot create {OFFSETS_TOPIC}: {other:?}")),
    }
}

/// A whole broker (every shard) inside this process: what the integration tests and the
/// benchmarks run. `corelog start` composes the same pieces with signals and the hardware plan.
pub struct LocalBroker {
    pub address: SocketAddr,
    /// Scrapes of the shards' metrics (what the admin API serves).
    pub admin: Arc<AdminHub>,
    runtime: Option<corelog_engine::runtime::Runtime<Result<(), String>>>,
}

impl LocalBroker {
    /// Starts `shards` shards with `config` and waits until every one is ready.
    pub fn start(config: ServerConfig, shards: usize) -> Result<Self, String> {
        let placement = PlacementTable::new(shards);
        let registry = prepare(&config.data_dir, &placement)?;
        let admin = AdminHub::new(shards, config.data_dir.clone());
        let shard_admin = Arc::clone(&admin);
        let config = Arc::new(config);
        let (tx, rx) = mpsc::channel();
        let bound = Arc::new(OnceLock::new());
        let runtime_config =
            corelog_engine::runtime::RuntimeConfig { shards, ..corelog_engine::runtime::RuntimeConfig::default() };
        let runtime = corelog_engine::runtime::Runtime::start(&runtime_config, placement, move |ctx| {
            run_shard(
                ctx,
                Arc::clone(&config),
                Arc::clone(&registry),
                Arc::clone(&bound),
                tx.clone(),
                Arc::clone(&shard_admin),
            )
        })
        .map_err(|e| e.to_string())?;
        let mut broker = Self { address: SocketAddr::from(([127, 0, 0, 1], 0)), admin, runtime: Some(runtime) };
        for _ in 0..shards {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(ShardEvent::Ready { listen, .. }) => broker.address = listen,
                Ok(ShardEvent::Failed { shard, reason }) => return Err(format!("shard {shard} failed: {reason}")),
                Err(_) => return Err("the shards did not start within 60 s".into()),
            }
        }
        broker.admin.set_ready(true);
        Ok(broker)
    }

    /// Stops every shard cleanly (everything written and synced).
    pub fn stop(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        let Some(runtime) = self.runtime.take() else { return Ok(()) };
        self.admin.set_ready(false);
        runtime.stop();
        for result in runtime.join().map_err(|e| e.to_string())? {
            result?;
        }
        Ok(())
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::error!(%error, "local broker did not stop cleanly");
        }
    }
}
