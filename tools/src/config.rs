//! Broker configuration: defaults, a TOML file, `CORELOG_*` environment variables and
//! command-line flags. Precedence, highest first: flag, environment variable, file, default.
//! An invalid value stops start-up with a message naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use corelog_engine::log::{FlushPolicy, LogConfig};
use serde::Deserialize;

/// The `[log]` table: defaults for every partition's storage.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub segment_bytes: Option<u64>,
    pub segment_ms: Option<u64>,
    pub index_interval_bytes: Option<u64>,
    /// -1 keeps data forever, as in Kafka.
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
    pub max_message_bytes: Option<usize>,
    /// `always`, `none` or `interval:<ms>`.
    pub flush: Option<String>,
    pub retention_check_interval_ms: Option<u64>,
}

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node_id: Option<i32>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    /// Address given to clients in Metadata (`advertised.listeners`); default: the listener.
    pub advertised_listen: Option<String>,
    pub cores: Option<usize>,
    /// `num.partitions` of auto-created topics.
    pub num_partitions: Option<i32>,
    /// `auto.create.topics.enable`.
    pub auto_create_topics_enable: Option<bool>,
    pub cache_budget_bytes_per_shard: Option<usize>,
    /// Ring size of each shard's journal of `flush = always` appends; 0 turns it off.
    pub journal_bytes_per_shard: Option<u64>,
    pub channel_capacity: Option<usize>,
    /// `socket.request.max.bytes`: largest request frame.
    pub socket_request_max_bytes: Option<usize>,
    /// `connections.max.idle.ms`.
    pub connections_max_idle_ms: Option<u64>,
    pub max_connections_per_shard: Option<usize>,
    /// `queued.max.request.bytes`, per shard: request bytes read and not yet answered.
    pub queued_max_request_bytes_per_shard: Option<usize>,
    /// `fetch.max.bytes`: the most record bytes one Fetch response carries.
    pub fetch_max_bytes: Option<usize>,
    /// `max.connection.creation.rate`: new connections per second, for the whole broker.
    pub max_connection_creation_rate: Option<f64>,
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets` when it is created.
    pub offsets_topic_num_partitions: Option<i32>,
    /// `group.initial.rebalance.delay.ms`.
    pub group_initial_rebalance_delay_ms: Option<i64>,
    /// `group.min.session.timeout.ms`.
    pub group_min_session_timeout_ms: Option<i32>,
    /// `group.max.session.timeout.ms`.
    pub group_max_session_timeout_ms: Option<i32>,
    /// `offsets.retention.minutes`: committed offsets of an empty group expire after this.
    pub offsets_retention_minutes: Option<i64>,
    /// `group.consumer.heartbeat.interval.ms` (KIP-848 groups).
    pub group_consumer_heartbeat_interval_ms: Option<i32>,
    /// `group.consumer.session.timeout.ms` (KIP-848 groups).
    pub group_consumer_session_timeout_ms: Option<i64>,
    /// Requests read from one connection and not yet answered (pipelining depth).
    pub max_in_flight_requests_per_connection: Option<usize>,
    /// Request bytes read from one connection and not yet answered.
    pub max_in_flight_bytes_per_connection: Option<usize>,
    /// The admin HTTP API (metrics, health, partitions): `HOST:PORT`, or `none` for no API.
    pub admin_listen: Option<String>,
    /// What the broker logs: a `tracing` filter such as `info` or `info,corelog_net=debug`.
    pub log_level: Option<String>,
    /// `human` or `json`.
    pub log_format: Option<String>,
    #[serde(default)]
    pub log: LogSection,
}

/// Values given on the command line or in the environment (clap merges those two).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub cores: Option<usize>,
    pub config: Option<PathBuf>,
    pub admin_listen: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerConfig {
    pub node_id: i32,
    /// None: no admin API.
    pub admin_listen: Option<SocketAddr>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub advertised_listen: Option<SocketAddr>,
    pub num_partitions: i32,
    pub auto_create_topics_enable: bool,
    /// None = every CPU this process may run on.
    pub cores: Option<usize>,
    pub cache_budget_bytes_per_shard: usize,
    pub journal_bytes_per_shard: u64,
    pub channel_capacity: usize,
    pub socket_request_max_bytes: usize,
    pub connections_max_idle_ms: u64,
    pub max_connections_per_shard: usize,
    pub queued_max_request_bytes_per_shard: usize,
    pub fetch_max_bytes: usize,
    /// None: no limit (Kafka's default).
    pub max_connection_creation_rate: Option<f64>,
    pub max_in_flight_requests_per_connection: usize,
    pub max_in_flight_bytes_per_connection: usize,
    pub offsets_topic_num_partitions: i32,
    pub group_initial_rebalance_delay_ms: i64,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    pub group_consumer_heartbeat_interval_ms: i32,
    pub group_consumer_session_timeout_ms: i64,
    pub offsets_retention_minutes: i64,
    pub log: LogConfig,
    pub retention_check_interval_ms: u64,
    /// Where the settings came from, for the start-up log.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

pub const DEFAULT_DATA_DIR: &str = "./corelog-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9092";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9644";
pub const DEFAULT_LOG_LEVEL: &str = "info";

impl BrokerConfig {
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = match &overrides.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let source = match &overrides.config {
            Some(path) => format!("file {} + environment + flags", path.display()),
            None => "defaults + environment + flags".to_string(),
        };
        Self::resolve(file, overrides, source)
    }

    pub fn resolve(file: FileConfig, overrides: &Overrides, source: String) -> Result<Self, ConfigError> {
        let listen_text = overrides.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr =
            listen_text.parse().map_err(|e| invalid("listen", format!("{listen_text:?} is not HOST:PORT ({e})")))?;
        let advertised_listen = match &file.advertised_listen {
            None => None,
            Some(text) => Some(
                text.parse().map_err(|e| invalid("advertised_listen", format!("{text:?} is not HOST:PORT ({e})")))?,
            ),
        };
        let admin_text =
            overrides.admin_listen.clone().or(file.admin_listen).unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string());
        let admin_listen = match admin_text.as_str() {
            "none" => None,
            text => Some(
                text.parse()
                    .map_err(|e| invalid("admin_listen", format!("{text:?} is neither HOST:PORT nor `none` ({e})")))?,
            ),
        };
        let log_level = overrides.log_level.clone().or(file.log_level).unwrap_or_else(|| DEFAULT_LOG_LEVEL.into());
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            return Err(invalid("log_level", format!("{log_level:?}: {error}")));
        }
        let log_format = match (overrides.log_format, file.log_format.as_deref()) {
            (Some(format), _) => format,
            (None, None | Some("human")) => LogFormat::Human,
            (None, Some("json")) => LogFormat::Json,
            (None, Some(other)) => return Err(invalid("log_format", format!("{other:?}: expected human or json"))),
        };
        let num_partitions = file.num_partitions.unwrap_or(1);
        if num_partitions < 1 {
            return Err(invalid("num_partitions", "must be at least 1"));
        }
        let cores = overrides.cores.or(file.cores);
        if cores == Some(0) {
            return Err(invalid("cores", "must be at least 1"));
        }
        let data_dir = overrides.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let cache = file.cache_budget_bytes_per_shard.unwrap_or(256 << 20);
        let channel_capacity = file.channel_capacity.unwrap_or(1024);
        if channel_capacity == 0 {
            return Err(invalid("channel_capacity", "must be at least 1"));
        }
        let socket_request_max_bytes = file.socket_request_max_bytes.unwrap_or(100 << 20);
        if !(1024..=i32::MAX as usize).contains(&socket_request_max_bytes) {
            return Err(invalid("socket_request_max_bytes", "must be between 1024 and 2147483647"));
        }
        let connections_max_idle_ms = file.connections_max_idle_ms.unwrap_or(600_000);
        if connections_max_idle_ms == 0 {
            return Err(invalid("connections_max_idle_ms", "must be positive"));
        }
        let max_connections_per_shard = file.max_connections_per_shard.unwrap_or(10_000);
        if max_connections_per_shard == 0 {
            return Err(invalid("max_connections_per_shard", "must be at least 1"));
        }
        let queued_max_request_bytes_per_shard = file.queued_max_request_bytes_per_shard.unwrap_or(256 << 20);
        if queued_max_request_bytes_per_shard == 0 {
            return Err(invalid("queued_max_request_bytes_per_shard", "must be at least 1"));
        }
        // Kafka's default: 55 MiB.
        let fetch_max_bytes = file.fetch_max_bytes.unwrap_or(55 << 20);
        if !(1024..=i32::MAX as usize).contains(&fetch_max_bytes) {
            return Err(invalid("fetch_max_bytes", "must be between 1024 and 2147483647"));
        }
        let max_connection_creation_rate = file.max_connection_creation_rate;
        if max_connection_creation_rate.is_some_and(|rate| !(rate.is_finite() && rate > 0.0)) {
            return Err(invalid("max_connection_creation_rate", "must be a positive number of connections per second"));
        }
        let max_in_flight_requests_per_connection = file.max_in_flight_requests_per_connection.unwrap_or(64);
        if max_in_flight_requests_per_connection == 0 {
            return Err(invalid("max_in_flight_requests_per_connection", "must be at least 1"));
        }
        let max_in_flight_bytes_per_connection = file.max_in_flight_bytes_per_connection.unwrap_or(100 << 20);
        if max_in_flight_bytes_per_connection == 0 {
            return Err(invalid("max_in_flight_bytes_per_connection", "must be at least 1"));
        }
        let offsets_topic_num_partitions = file.offsets_topic_num_partitions.unwrap_or(50);
        if !(1..=1000).contains(&offsets_topic_num_partitions) {
            return Err(invalid("offsets_topic_num_partitions", "must be between 1 and 1000"));
        }
        let group_initial_rebalance_delay_ms = file.group_initial_rebalance_delay_ms.unwrap_or(3_000);
        if group_initial_rebalance_delay_ms < 0 {
            return Err(invalid("group_initial_rebalance_delay_ms", "must not be negative"));
        }
        let group_min_session_timeout_ms = file.group_min_session_timeout_ms.unwrap_or(6_000);
        let group_max_session_timeout_ms = file.group_max_session_timeout_ms.unwrap_or(1_800_000);
        if group_min_session_timeout_ms <= 0 || group_max_session_timeout_ms < group_min_session_timeout_ms {
            return Err(invalid(
                "group_min_session_timeout_ms",
                "must be positive and at most group_max_session_timeout_ms",
            ));
        }
        let group_consumer_heartbeat_interval_ms = file.group_consumer_heartbeat_interval_ms.unwrap_or(5_000);
        let group_consumer_session_timeout_ms = file.group_consumer_session_timeout_ms.unwrap_or(45_000);
        if group_consumer_heartbeat_interval_ms <= 0
            || group_consumer_session_timeout_ms <= i64::from(group_consumer_heartbeat_interval_ms)
        {
            return Err(invalid(
                "group_consumer_heartbeat_interval_ms",
                "must be positive and below group_consumer_session_timeout_ms",
            ));
        }
        let offsets_retention_minutes = file.offsets_retention_minutes.unwrap_or(7 * 24 * 60);
        if offsets_retention_minutes <= 0 {
            return Err(invalid("offsets_retention_minutes", "must be positive"));
        }
        let log = log_config(&file.log)?;
        let retention_check_interval_ms = file.log.retention_check_interval_ms.unwrap_or(300_000);
        if retention_check_interval_ms == 0 {
            return Err(invalid("log.retention_check_interval_ms", "must be positive"));
        }
        Ok(Self {
            node_id: file.node_id.unwrap_or(0),
            admin_listen,
            log_level,
            log_format,
            data_dir,
            listen,
            advertised_listen,
            num_partitions,
            auto_create_topics_enable: file.auto_create_topics_enable.unwrap_or(true),
            cores,
            cache_budget_bytes_per_shard: cache,
            journal_bytes_per_shard: file
                .journal_bytes_per_shard
                .unwrap_or(corelog_engine::log::shard_log::JOURNAL_BYTES_DEFAULT),
            channel_capacity,
            socket_request_max_bytes,
            connections_max_idle_ms,
            max_connections_per_shard,
            queued_max_request_bytes_per_shard,
            fetch_max_bytes,
            max_connection_creation_rate,
            max_in_flight_requests_per_connection,
            max_in_flight_bytes_per_connection,
            offsets_topic_num_partitions,
            group_initial_rebalance_delay_ms,
            group_min_session_timeout_ms,
            group_max_session_timeout_ms,
            group_consumer_heartbeat_interval_ms,
            group_consumer_session_timeout_ms,
            offsets_retention_minutes,
            log,
            retention_check_interval_ms,
            source,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Read { path: path.to_path_buf(), message: e.to_string() })?;
    toml::from_str(&text)
        .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim().to_string() })
}

fn log_config(section: &LogSection) -> Result<LogConfig, ConfigError> {
    let defaults = LogConfig::default();
    let segment_bytes = section.segment_bytes.unwrap_or(defaults.segment_bytes);
    if !(14..=i32::MAX as u64).contains(&segment_bytes) {
        return Err(invalid("log.segment_bytes", "must be between 14 and 2147483647"));
    }
    let segment_ms = section.segment_ms.unwrap_or(defaults.segment_ms);
    if segment_ms == 0 {
        return Err(invalid("log.segment_ms", "must be positive"));
    }
    let optional_limit = |value: Option<i64>, default: Option<u64>, key: &'static str| match value {
        None => Ok(default),
        Some(-1) => Ok(None),
        Some(v) if v >= 0 => Ok(Some(v as u64)),
        Some(v) => Err(invalid(key, format!("{v} is neither -1 nor a non-negative number"))),
    };
    let flush = match &section.flush {
        None => defaults.flush,
        Some(text) => FlushPolicy::parse(text)
            .ok_or_else(|| invalid("log.flush", format!("{text:?}: expected always, none or interval:<ms>")))?,
    };
    let max_message_bytes = section.max_message_bytes.unwrap_or(defaults.max_message_bytes);
    if max_message_bytes < 61 {
        return Err(invalid("log.max_message_bytes", "must hold at least one batch header (61 bytes)"));
    }
    Ok(LogConfig {
        segment_bytes,
        segment_ms,
        index_interval_bytes: section.index_interval_bytes.unwrap_or(defaults.index_interval_bytes),
        retention_ms: optional_limit(section.retention_ms, defaults.retention_ms, "log.retention_ms")?,
        retention_bytes: optional_limit(section.retention_bytes, defaults.retention_bytes, "log.retention_bytes")?,
        max_message_bytes,
        flush,
        preallocate_bytes: defaults.preallocate_bytes.min(segment_bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml_text: &str, overrides: Overrides) -> Result<BrokerConfig, ConfigError> {
        let file: FileConfig = toml::from_str(toml_text)
            .map_err(|e| ConfigError::Parse { path: "test.toml".into(), message: e.to_string() })?;
        BrokerConfig::resolve(file, &overrides, "test".into())
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = resolve("", Overrides::default()).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("./corelog-data"));
        assert_eq!(config.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(config.cores, None);
        assert_eq!(config.log.flush, FlushPolicy::Always);
    }

    #[test]
    fn flags_and_environment_beat_the_file() {
        let overrides = Overrides { listen: Some("127.0.0.1:1234".into()), cores: Some(1), ..Overrides::default() };
        let config = resolve("listen = \"0.0.0.0:9\"\ncores = 2\ndata_dir = \"/x\"", overrides).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:1234");
        assert_eq!(config.cores, Some(1));
        assert_eq!(config.data_dir, PathBuf::from("/x"));
    }

    #[test]
    fn errors_name_the_key() {
        let err = resolve("[log]\nflush = \"sometimes\"", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("log.flush"), "{err}");
        let err = resolve("listen = \"nowhere\"", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("`listen`"), "{err}");
        let err = resolve("[log]\nretention_ms = -5", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("log.retention_ms"), "{err}");
        let err = resolve("segment_bytes = 5", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("segment_bytes"), "unknown keys are named: {err}");
        let err = resolve("cores = 0", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("`cores`"), "{err}");
    }

    #[test]
    fn limits_of_hostile_clients_are_read_and_checked() {
        let config = resolve("", Overrides::default()).unwrap();
        assert_eq!(config.queued_max_request_bytes_per_shard, 256 << 20);
        assert_eq!(config.fetch_max_bytes, 55 << 20);
        assert_eq!(config.max_connection_creation_rate, None, "no limit by default, as in Kafka");
        let text =
            "queued_max_request_bytes_per_shard = 1048576\nfetch_max_bytes = 4096\nmax_connection_creation_rate = 50.5";
        let config = resolve(text, Overrides::default()).unwrap();
        assert_eq!(config.queued_max_request_bytes_per_shard, 1 << 20);
        assert_eq!(config.fetch_max_bytes, 4096);
        assert_eq!(config.max_connection_creation_rate, Some(50.5));
        for (text, key) in [
            ("queued_max_request_bytes_per_shard = 0", "queued_max_request_bytes_per_shard"),
            ("fetch_max_bytes = 10", "fetch_max_bytes"),
            ("max_connection_creation_rate = 0.0", "max_connection_creation_rate"),
        ] {
            let err = resolve(text, Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn admin_listener_and_logging_are_configured_with_the_usual_precedence() {
        let config = resolve("", Overrides::default()).unwrap();
        assert_eq!(config.admin_listen.map(|a| a.to_string()), Some("127.0.0.1:9644".to_string()));
        assert_eq!((config.log_level.as_str(), config.log_format), ("info", LogFormat::Human));
        let text = "admin_listen = \"none\"\nlog_level = \"debug\"\nlog_format = \"json\"";
        let config = resolve(text, Overrides::default()).unwrap();
        assert_eq!(config.admin_listen, None);
        assert_eq!((config.log_level.as_str(), config.log_format), ("debug", LogFormat::Json));
        let overrides = Overrides {
            admin_listen: Some("127.0.0.1:0".into()),
            log_level: Some("warn,corelog_net=trace".into()),
            log_format: Some(LogFormat::Human),
            ..Overrides::default()
        };
        let config = resolve(text, overrides).unwrap();
        assert_eq!(config.admin_listen.map(|a| a.to_string()), Some("127.0.0.1:0".to_string()));
        assert_eq!((config.log_level.as_str(), config.log_format), ("warn,corelog_net=trace", LogFormat::Human));
        for (text, key) in [
            ("admin_listen = \"somewhere\"", "`admin_listen`"),
            ("log_level = \"info,[[\"", "`log_level`"),
            ("log_format = \"xml\"", "`log_format`"),
        ] {
            let err = resolve(text, Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn minus_one_means_unlimited_retention() {
        let config = resolve("[log]\nretention_ms = -1\nretention_bytes = 1000", Overrides::default()).unwrap();
        assert_eq!(config.log.retention_ms, None);
        assert_eq!(config.log.retention_bytes, Some(1000));
    }
}
