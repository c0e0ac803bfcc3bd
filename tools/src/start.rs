//! `corelog start`: the composition root. Config → shard plan → data dir lock → shards, each
//! opening its storage and the partitions it owns → wait for SIGINT/SIGTERM → graceful stop
//! (every shard flushes and syncs everything, writes its indexes) → exit 0.
//!
//! Exit codes: 0 clean stop, 2 invalid configuration or usage, 70 fatal environment error
//! (fail-stop: data dir unusable, storage failing at start-up).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use corelog_engine::log::{ShardLog, ShardLogConfig, TopicPartition};
use corelog_engine::runtime::{self, PlacementTable, Runtime, RuntimeConfig, ShardContext};
use nix::sys::signal::{SigSet, Signal};

use std::sync::OnceLock;

use corelog_net::{ConnectionLimits, Listener};

use crate::config::{BrokerConfig, ConfigError, Overrides};

pub const EXIT_USAGE: u8 = 2;

/// Messages between shards. The Kafka shim (issue 3) adds partition requests here.
#[derive(Debug)]
pub enum ShardRequest {
    Ping,
}

#[derive(Debug)]
pub enum ShardResponse {
    Pong,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// CPUs this process may run on (its affinity mask), ascending.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size of a cpu_set_t.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..count).collect();
    }
    // SAFETY: CPU_ISSET reads the set filled above.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Holds an exclusive flock on `DATA_DIR/.lock` for the life of the broker, so that two
/// brokers never share a data dir.
struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    fn acquire(data_dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create data dir {}: {e}", data_dir.display()))?;
        let path = data_dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // SAFETY: flock on a valid fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "data dir {} is in use by another corelog process (lock {} is held)",
                data_dir.display(),
                path.display()
            ));
        }
        Ok(Self { _file: file })
    }
}

/// Partition directories found in the data dir.
fn discover_partitions(data_dir: &Path) -> Result<Vec<TopicPartition>, String> {
    let entries = std::fs::read_dir(data_dir)
        .map_err(|e| format!("cannot list data dir {}: {e}", data_dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| format!("cannot list data dir {}: {e}", data_dir.display()))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if let (true, Some(name)) = (
            is_dir,
            entry
                .file_name()
                .to_str()
                .and_then(TopicPartition::from_dir_name),
        ) {
            found.push(name);
        }
    }
    found.sort();
    Ok(found)
}

enum ShardEvent {
    Ready { shard: usize, partitions: usize },
    Failed { shard: usize, reason: String },
}

pub fn run(overrides: &Overrides) -> ExitCode {
    let config = match BrokerConfig::load(overrides) {
        Ok(config) => config,
        Err(error) => return usage_error(&error),
    };
    match start(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => runtime::fail_stop(&reason),
    }
}

fn usage_error(error: &ConfigError) -> ExitCode {
    eprintln!("corelog: {error}");
    ExitCode::from(EXIT_USAGE)
}

fn start(config: BrokerConfig) -> Result<(), String> {
    let allowed = allowed_cpus();
    let shards = config
        .cores
        .unwrap_or(allowed.len())
        .min(allowed.len().max(1))
        .max(1);
    if config.cores.is_some_and(|c| c > allowed.len()) {
        tracing::warn!(
            requested = config.cores,
            available = allowed.len(),
            "fewer CPUs than requested cores: using {shards}"
        );
    }
    let cpus: Vec<usize> = allowed.iter().copied().take(shards).collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.source,
        data_dir = %config.data_dir.display(),
        node_id = config.node_id,
        "starting corelog"
    );
    tracing::info!(shards, cpus = ?cpus, cache_budget_bytes_per_shard = config.cache_budget_bytes_per_shard, "shard plan");
    let _lock = DataDirLock::acquire(&config.data_dir)?;
    let partitions = discover_partitions(&config.data_dir)?;
    let placement = PlacementTable::new(shards);
    for partition in &partitions {
        placement.assign(partition);
    }

    // Signals are blocked before any thread starts, so only this thread receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;

    let (events_tx, events_rx) = mpsc::channel::<ShardEvent>();
    let listen_address: Arc<OnceLock<std::net::SocketAddr>> = Arc::new(OnceLock::new());
    let runtime_config = RuntimeConfig {
        shards,
        cpus: Some(cpus),
        channel_capacity: config.channel_capacity,
        ..RuntimeConfig::default()
    };
    let shard_config = Arc::new(config.clone());
    let bound = Arc::clone(&listen_address);
    let runtime = Runtime::start(&runtime_config, Arc::clone(&placement), move |ctx| {
        let (config, events, bound) = (
            Arc::clone(&shard_config),
            events_tx.clone(),
            Arc::clone(&bound),
        );
        shard_main(ctx, config, events, bound)
    })
    .map_err(|e| e.to_string())?;

    let mut ready = 0;
    while ready < shards {
        match events_rx.recv_timeout(Duration::from_secs(600)) {
            Ok(ShardEvent::Ready { shard, partitions }) => {
                tracing::info!(shard, partitions, "shard ready");
                ready += 1;
            }
            Ok(ShardEvent::Failed { shard, reason }) => {
                return Err(format!("shard {shard} failed to start: {reason}"));
            }
            Err(_) => return Err("shards did not become ready".into()),
        }
    }
    let listen = listen_address.get().copied().unwrap_or(config.listen);
    tracing::info!(
        %listen,
        partitions = partitions.len(),
        "corelog ready (Kafka listener: ApiVersions only until the wire protocol lands)"
    );

    let signal = signals
        .wait()
        .map_err(|e| format!("waiting for signals failed: {e}"))?;
    tracing::info!(?signal, "stopping: flushing every partition");
    // A second signal during the stop ends the process at once.
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            eprintln!("corelog: second signal, exiting without a clean stop");
            std::process::exit(130);
        }
    });
    runtime.stop();
    let results = runtime.join().map_err(|e| e.to_string())?;
    if let Some(Err(reason)) = results.into_iter().find(Result::is_err) {
        return Err(reason);
    }
    while let Ok(event) = events_rx.try_recv() {
        if let ShardEvent::Failed { shard, reason } = event {
            return Err(format!("shard {shard}: {reason}"));
        }
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// One shard: open its storage and partitions, serve peers, enforce retention, and on stop
/// flush and close everything.
async fn shard_main(
    ctx: ShardContext<ShardRequest, ShardResponse>,
    config: Arc<BrokerConfig>,
    events: mpsc::Sender<ShardEvent>,
    bound: Arc<OnceLock<std::net::SocketAddr>>,
) -> Result<(), String> {
    let shard = ctx.id;
    let fail = |reason: String| {
        let _ = events.send(ShardEvent::Failed {
            shard,
            reason: reason.clone(),
        });
        Err(reason)
    };
    let log = match ShardLog::open(ShardLogConfig {
        data_dir: config.data_dir.clone(),
        cache_budget_bytes: config.cache_budget_bytes_per_shard,
    })
    .await
    {
        Ok(log) => log,
        Err(error) => return fail(error.to_string()),
    };
    let owned: Vec<TopicPartition> = {
        let table = ctx.placement.table();
        let mut all = discover_partitions(&config.data_dir).unwrap_or_default();
        all.retain(|p| table.lookup(p) == Some(shard));
        all
    };
    for partition in &owned {
        match log.open_partition(partition, config.log.clone()).await {
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
    ctx.serve(|request| async move {
        match request {
            ShardRequest::Ping => ShardResponse::Pong,
        }
    });
    // Every shard can reach every other one before we report ready.
    for peer in 0..ctx.shard_count {
        if let Err(error) = ctx.call(peer, ShardRequest::Ping).await {
            return fail(format!("shard {peer} unreachable: {error}"));
        }
    }
    // Shard 0 binds first (resolving port 0); the others join the same port (SO_REUSEPORT).
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
    let limits = ConnectionLimits {
        max_frame_bytes: config.socket_request_max_bytes,
        idle_timeout: Duration::from_millis(config.connections_max_idle_ms),
    };
    let listener = match Listener::bind(address, limits, config.max_connections_per_shard) {
        Ok(listener) => listener,
        Err(error) => return fail(format!("cannot listen on {address}: {error}")),
    };
    if shard == 0 {
        match listener.local_addr() {
            Ok(actual) => {
                let _ = bound.set(actual);
            }
            Err(error) => return fail(format!("cannot read the listener address: {error}")),
        }
    }
    let _ = events.send(ShardEvent::Ready {
        shard,
        partitions: owned.len(),
    });

    let retention_log = std::rc::Rc::clone(&log);
    let interval = Duration::from_millis(config.retention_check_interval_ms);
    let retention = glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(interval).await;
            match retention_log.enforce_retention(now_ms()).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(shard, deleted, "retention deleted segments"),
                Err(error) => tracing::error!(shard, %error, "retention failed"),
            }
        }
    })
    .detach();

    listener.run(ctx.stopped()).await;
    retention.cancel();
    if let Err(error) = log.close().await {
        return fail(format!("clean stop failed: {error}"));
    }
    let stats = log.stats();
    tracing::info!(
        shard,
        appends = stats.appends,
        syncs = stats.syncs,
        "shard stopped"
    );
    Ok(())
}
