//! `corelog start`: the composition root. Config → shard plan → data dir lock → shards, each
//! opening its storage and the partitions it owns → wait for SIGINT/SIGTERM → graceful stop
//! (every shard flushes and syncs everything, writes its indexes) → exit 0.
//!
//! Exit codes: 0 clean stop, 2 invalid configuration or usage, 70 fatal environment error
//! (fail-stop: data dir unusable, storage failing at start-up).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use corelog_engine::log::WriteShape;
use corelog_engine::runtime::{self, PlacementTable, Runtime, RuntimeConfig};
use corelog_hardware::iotune::IoProfile;
use corelog_net::ConnectionLimits;
use corelog_net::admin::AdminHub;
use corelog_net::group::classic::CoordinatorConfig;
use corelog_net::group::consumer::ConsumerConfig;
use corelog_net::server::{self, ServerConfig, ShardEvent};
use nix::sys::signal::{SigSet, Signal};

use crate::admin::{AdminServer, AdminState};
use crate::config::{BrokerConfig, ConfigError, Overrides};
use crate::logging::LogControl;

pub const EXIT_USAGE: u8 = 2;

/// CPUs this process may run on (its affinity mask), ascending.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size of a cpu_set_t.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..count).collect();
    }
    // SAFETY: CPU_ISSET reads the set filled above.
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

/// Every connection is a file descriptor: raises the soft `RLIMIT_NOFILE` to the hard limit
/// (as much as an unprivileged process may), and warns when even that cannot hold
/// `connections` plus the segment files, so that accept failures do not come as a surprise.
fn raise_open_files_limit(connections: usize) {
    // Connections plus a margin for segment files, indexes and the runtime's own descriptors.
    let wanted = connections as u64 + 4096;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open files limit");
    }
    let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
    let mut now = soft;
    let raised = hard.min(wanted.max(soft));
    if raised > soft {
        let new = libc::rlimit { rlim_cur: raised, rlim_max: hard };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            now = raised;
        } else {
            let error = std::io::Error::last_os_error();
            tracing::warn!(%error, soft, hard, "cannot raise the open files limit");
        }
    }
    if now < wanted {
        tracing::warn!(
            open_files_limit = now,
            wanted,
            "the open files limit is below max_connections_per_shard × shards plus files: raise `ulimit -n`"
        );
    } else {
        tracing::debug!(open_files_limit = now, "open files limit");
    }
}

/// Holds an exclusive flock on `DATA_DIR/.lock` for the life of the broker, so that two
/// brokers never share a data dir.
struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    fn acquire(data_dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create data dir {}: {e}", data_dir.display()))?;
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

pub fn run(overrides: &Overrides) -> ExitCode {
    let config = match BrokerConfig::load(overrides) {
        Ok(config) => config,
        Err(error) => return usage_error(&error),
    };
    let log = crate::logging::init(config.log_format, &config.log_level);
    match start(config, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => runtime::fail_stop(&reason),
    }
}

fn usage_error(error: &ConfigError) -> ExitCode {
    eprintln!("corelog: {error}");
    ExitCode::from(EXIT_USAGE)
}

/// The shard CPUs: the hardware plan's, restricted to this process's affinity mask.
fn plan_cpus(config: &BrokerConfig) -> Vec<usize> {
    let allowed = allowed_cpus();
    let planned = match corelog_hardware::probe::probe(Path::new("/"), std::slice::from_ref(&config.data_dir)) {
        Ok(machine) => {
            let plan = corelog_hardware::plan::plan_shards(&machine, config.cores);
            for line in plan.to_string().lines() {
                tracing::info!("{line}");
            }
            plan.shard_cpus.into_iter().filter(|cpu| allowed.contains(cpu)).collect()
        }
        Err(error) => {
            tracing::warn!(%error, "hardware probe failed: one shard per allowed CPU");
            Vec::new()
        }
    };
    if !planned.is_empty() {
        return planned;
    }
    let shards = config.cores.unwrap_or(allowed.len()).clamp(1, allowed.len().max(1));
    allowed.into_iter().take(shards).collect()
}

/// How flush waves cut their writes: from `DATA_DIR/io-profile.json` (written by
/// `corelog hardware iotune`) when present — chunks of the device's knee block size, its knee
/// queue depth in flight — else 1 MiB chunks, 16 in flight.
fn write_shape(config: &BrokerConfig) -> WriteShape {
    let path = IoProfile::default_path(&config.data_dir);
    match IoProfile::load(&path) {
        Ok(Some(profile)) => {
            let chunk_bytes = (profile.knee_block_size_bytes as usize).clamp(64 << 10, 4 << 20);
            let queue_depth = (profile.knee_queue_depth as usize).clamp(1, 64);
            tracing::info!(
                profile = %path.display(),
                write_mb_per_sec = profile.write_bandwidth_bytes_per_sec / 1_000_000,
                fdatasync_p99_us = profile.fdatasync_latency_us.p99,
                chunk_bytes,
                queue_depth,
                "I/O profile loaded"
            );
            WriteShape { chunk_bytes, queue_depth, ..WriteShape::default() }
        }
        Ok(None) => {
            tracing::info!("no I/O profile (run `corelog hardware iotune`): default write shape");
            WriteShape::default()
        }
        Err(error) => {
            tracing::warn!(%error, "unreadable I/O profile: default write shape");
            WriteShape::default()
        }
    }
}

fn start(config: BrokerConfig, log: Option<Arc<LogControl>>) -> Result<(), String> {
    // Signals are blocked before any thread starts (the admin API's, the shards'), so that
    // only this thread receives them: one delivered to another thread would kill the process.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(|e| format!("cannot block signals: {e}"))?;
    // The lock creates the data dir, which the hardware probe then maps to its device.
    let _lock = DataDirLock::acquire(&config.data_dir)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.source,
        data_dir = %config.data_dir.display(),
        node_id = config.node_id,
        listen = %config.listen,
        advertised_listen = ?config.advertised_listen,
        admin_listen = ?config.admin_listen,
        log_level = %config.log_level,
        "starting corelog"
    );
    let cpus = plan_cpus(&config);
    let shards = cpus.len();
    tracing::info!(shards, cpus = ?cpus, cache_budget_bytes_per_shard = config.cache_budget_bytes_per_shard, "shards");
    raise_open_files_limit(shards * config.max_connections_per_shard);
    let placement = PlacementTable::new(shards);
    let registry = server::prepare(&config.data_dir, &placement)?;
    let hub = AdminHub::new(shards, config.data_dir.clone());
    let admin_state = Arc::new(AdminState {
        hub: Arc::clone(&hub),
        log,
        config: serde_json::json!({ "source": config.source, "config": config }),
        broker: Mutex::new(serde_json::json!({
            "node_id": config.node_id,
            "kafka_address": null,
            "admin_address": null,
            "version": env!("CARGO_PKG_VERSION"),
            "shards": shards,
            "data_dir": config.data_dir.display().to_string(),
        })),
    });
    // Bound before the shards start, so that a taken port stops start-up at once; it answers
    // "not ready" while partitions recover.
    let admin = match config.admin_listen {
        Some(address) => {
            let admin = AdminServer::start(address, Arc::clone(&admin_state))?;
            tracing::info!(admin = %admin.address, "admin API listening");
            Some(admin)
        }
        None => None,
    };
    let admin_address = admin.as_ref().map_or_else(|| "none".to_string(), |a| a.address.to_string());
    let topics = registry.snapshot().len();

    let (events_tx, events_rx) = mpsc::channel::<ShardEvent>();
    let runtime_config = RuntimeConfig {
        shards,
        cpus: Some(cpus),
        channel_capacity: config.channel_capacity,
        ..RuntimeConfig::default()
    };
    let server_config = Arc::new(ServerConfig {
        node_id: config.node_id,
        data_dir: config.data_dir.clone(),
        listen: config.listen,
        advertised: config.advertised_listen,
        cache_budget_bytes_per_shard: config.cache_budget_bytes_per_shard,
        journal_bytes_per_shard: config.journal_bytes_per_shard,
        write_shape: write_shape(&config),
        limits: ConnectionLimits {
            max_frame_bytes: config.socket_request_max_bytes,
            idle_timeout: Duration::from_millis(config.connections_max_idle_ms),
            max_in_flight_requests: config.max_in_flight_requests_per_connection,
            max_in_flight_bytes: config.max_in_flight_bytes_per_connection,
            ..ConnectionLimits::default()
        },
        max_connections_per_shard: config.max_connections_per_shard,
        queued_max_request_bytes_per_shard: config.queued_max_request_bytes_per_shard,
        connections_per_sec_max_per_shard: config.max_connection_creation_rate.map(|rate| rate / shards as f64),
        fetch_max_bytes: config.fetch_max_bytes,
        default_log: config.log.clone(),
        num_partitions: config.num_partitions,
        auto_create_topics: config.auto_create_topics_enable,
        retention_check_interval: Duration::from_millis(config.retention_check_interval_ms),
        group: CoordinatorConfig {
            session_timeout_min_ms: config.group_min_session_timeout_ms,
            session_timeout_max_ms: config.group_max_session_timeout_ms,
            initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
            offsets_retention_ms: config.offsets_retention_minutes.saturating_mul(60_000),
            consumer: ConsumerConfig {
                heartbeat_interval_ms: config.group_consumer_heartbeat_interval_ms,
                session_timeout_ms: config.group_consumer_session_timeout_ms,
                ..ConsumerConfig::default()
            },
            ..CoordinatorConfig::default()
        },
        offsets_topic_partitions: config.offsets_topic_num_partitions,
    });
    let bound = Arc::new(OnceLock::new());
    let shard_hub = Arc::clone(&hub);
    let runtime = Runtime::start(&runtime_config, Arc::clone(&placement), move |ctx| {
        server::run_shard(
            ctx,
            Arc::clone(&server_config),
            Arc::clone(&registry),
            Arc::clone(&bound),
            events_tx.clone(),
            Arc::clone(&shard_hub),
        )
    })
    .map_err(|e| e.to_string())?;

    let mut ready = 0;
    let mut listen = config.listen;
    while ready < shards {
        match events_rx.recv_timeout(Duration::from_secs(600)) {
            Ok(ShardEvent::Ready { shard, partitions, listen: bound }) => {
                tracing::info!(shard, partitions, "shard ready");
                listen = bound;
                ready += 1;
            }
            Ok(ShardEvent::Failed { shard, reason }) => {
                return Err(format!("shard {shard} failed to start: {reason}"));
            }
            Err(_) => return Err("shards did not become ready".into()),
        }
    }
    {
        let mut broker = admin_state.broker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        broker["kafka_address"] = serde_json::json!(config.advertised_listen.unwrap_or(listen).to_string());
        broker["admin_address"] = serde_json::json!(admin_address);
    }
    hub.set_ready(true);
    tracing::info!(%listen, admin = %admin_address, topics, "corelog ready");

    let signal = signals.wait().map_err(|e| format!("waiting for signals failed: {e}"))?;
    hub.set_ready(false);
    tracing::info!(?signal, "stopping: flushing every partition");
    // A second signal during the stop ends the process at once.
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            eprintln!("corelog: second signal, exiting without a clean stop");
            std::process::exit(130);
        }
    });
    runtime.stop();
    let results = runtime.join().map_err(|e| e.to_string());
    if let Some(admin) = admin {
        admin.stop();
    }
    let results = results?;
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
