//! The topic registry: which topics exist, their ids, partition counts and configs.
//!
//! This is the one metadata interface the controller's Raft log will later implement. Today
//! it is a file, `DATA_DIR/__corelog/topics.json`, written atomically (temp file, fsync,
//! rename, directory fsync) by the controller shard only; every shard reads lock-free
//! snapshots (a version counter, and the lock only when it moved).
//!
//! Topic configs are kept as Kafka's strings and turned into a `LogConfig` with
//! [`log_config`], which is also the validation of CreateTopics and AlterConfigs input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use corelog_engine::log::{FlushPolicy, LogConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    /// Kafka topic id (UUID), as 32 hex digits.
    pub id: String,
    pub partitions: i32,
    /// Topic configs set explicitly (Kafka names), all others take broker defaults.
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RegistryFile {
    cluster_id: String,
    topics: BTreeMap<String, TopicRecord>,
    /// The next idempotent-producer id to hand out.
    #[serde(default)]
    next_producer_id: i64,
}

pub type TopicMap = BTreeMap<String, TopicRecord>;

pub struct Registry {
    path: PathBuf,
    cluster_id: String,
    next_producer_id: std::sync::atomic::AtomicI64,
    version: AtomicU64,
    topics: RwLock<Arc<TopicMap>>,
}

/// 16 random bytes from the kernel.
pub fn random_id() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < 16 {
        // SAFETY: getrandom writes at most the given length into our buffer.
        let n = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), 16 - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex_id(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Registry {
    /// Loads the registry of `data_dir`, creating it (with a new cluster id) on first start.
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, String> {
        let dir = data_dir.join("__corelog");
        let path = dir.join("topics.json");
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<RegistryFile>(&bytes)
                .map_err(|e| format!("{} is unreadable: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file = RegistryFile {
                    cluster_id: cluster_id_text(&random_id()),
                    topics: BTreeMap::new(),
                    next_producer_id: 0,
                };
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                write_atomically(&path, &file).map_err(|e| e.message)?;
                file
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Arc::new(Self {
            path,
            next_producer_id: std::sync::atomic::AtomicI64::new(file.next_producer_id),
            cluster_id: file.cluster_id,
            version: AtomicU64::new(1),
            topics: RwLock::new(Arc::new(file.topics)),
        }))
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<TopicMap> {
        match self.topics.read() {
            Ok(topics) => Arc::clone(&topics),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the topic map durably. Controller shard only (blocking: call it from the
    /// blocking pool).
    pub fn store(&self, topics: TopicMap) -> Result<(), String> {
        let file = RegistryFile {
            cluster_id: self.cluster_id.clone(),
            topics,
            next_producer_id: self.next_producer_id.load(Ordering::Acquire),
        };
        match write_atomically(&self.path, &file) {
            // A full disk must not stop the one thing that frees space: deleting topics.
            // Giving up the reserve makes room for this write.
            Err(WriteError { out_of_space: true, .. }) if self.release_space_reserve() => {
                write_atomically(&self.path, &file).map_err(|e| e.message)?
            }
            result => result.map_err(|e| e.message)?,
        }
        let mut guard = match self.topics.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(file.topics);
        self.version.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

impl Registry {
    /// Hands out a new producer id, durably (an id is never given twice, even across a crash).
    /// Controller shard only (blocking: call it from the blocking pool).
    pub fn allocate_producer_id(&self) -> Result<i64, String> {
        let id = self.next_producer_id.fetch_add(1, Ordering::AcqRel);
        self.store((*self.snapshot()).clone())?;
        Ok(id)
    }
}

/// Kafka cluster ids are 22-character URL-safe base64 of 16 bytes.
fn cluster_id_text(bytes: &[u8; 16]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u128 = u128::from_be_bytes(*bytes);
    let mut out = Vec::with_capacity(22);
    for _ in 0..22 {
        out.push(ALPHABET[(bits & 63) as usize]);
        bits >>= 6;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Bytes kept allocated in `__corelog/space-reserve` and given up when a registry write finds
/// the disk full, so that topics can still be deleted (which frees their space).
const SPACE_RESERVE_BYTES: usize = 4 << 20;

impl Registry {
    fn space_reserve_path(&self) -> std::path::PathBuf {
        self.path.with_file_name("space-reserve")
    }

    /// Creates the space reserve if it is missing (at start, and after topics are deleted).
    /// Best effort: on a full disk it stays missing until there is room.
    pub fn ensure_space_reserve(&self) {
        use std::io::Write;
        let path = self.space_reserve_path();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() as usize >= SPACE_RESERVE_BYTES) {
            return;
        }
        let zeros = vec![0u8; 64 << 10];
        let written = std::fs::File::create(&path).and_then(|mut file| {
            for _ in 0..SPACE_RESERVE_BYTES / zeros.len() {
                file.write_all(&zeros)?;
            }
            file.sync_all()
        });
        match written {
            Ok(()) => tracing::debug!(path = %path.display(), "space reserve in place"),
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(path = %path.display(), %error, "no room for the space reserve yet");
            }
        }
    }

    /// Removes the space reserve; true if there was one to give up.
    fn release_space_reserve(&self) -> bool {
        let path = self.space_reserve_path();
        let released = std::fs::remove_file(&path).is_ok();
        if released {
            tracing::warn!(path = %path.display(), "disk full: gave up the space reserve to write the topic registry");
        }
        released
    }
}

/// A failed registry write: what to tell, and whether it failed for lack of space.
struct WriteError {
    message: String,
    out_of_space: bool,
}

fn write_atomically(path: &Path, file: &RegistryFile) -> Result<(), WriteError> {
    use std::io::Write;
    let text = serde_json::to_vec_pretty(file)
        .map_err(|e| WriteError { message: format!("cannot encode the topic registry: {e}"), out_of_space: false })?;
    let tmp = path.with_extension("json.tmp");
    let fail = |what: &str, e: std::io::Error| WriteError {
        message: format!("{what} {}: {e}", tmp.display()),
        out_of_space: matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)),
    };
    let mut out = std::fs::File::create(&tmp).map_err(|e| fail("cannot create", e))?;
    out.write_all(&text).map_err(|e| fail("cannot write", e))?;
    out.sync_all().map_err(|e| fail("cannot sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| fail("cannot rename", e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WriteError { message: format!("cannot sync {}: {e}", dir.display()), out_of_space: false })?;
    }
    Ok(())
}

/// A new topic record with a fresh id.
pub fn new_topic(name: &str, partitions: i32, configs: BTreeMap<String, String>) -> TopicRecord {
    TopicRecord { name: name.to_string(), id: hex(&random_id()), partitions, configs }
}

/// Kafka's topic name rule: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Applies topic configs over the broker defaults; an error names the key and the problem.
pub fn log_config(defaults: &LogConfig, configs: &BTreeMap<String, String>) -> Result<LogConfig, String> {
    let mut config = defaults.clone();
    for (key, value) in configs {
        let number = || value.parse::<i64>().map_err(|_| format!("{key}: {value:?} is not a number"));
        let positive =
            || number().and_then(|n| if n > 0 { Ok(n as u64) } else { Err(format!("{key} must be positive")) });
        let limit = || {
            number().and_then(|n| match n {
                -1 => Ok(None),
                n if n >= 0 => Ok(Some(n as u64)),
                _ => Err(format!("{key} must be -1 or non-negative")),
            })
        };
        match key.as_str() {
            "retention.ms" => config.retention_ms = limit()?,
            "retention.bytes" => config.retention_bytes = limit()?,
            "segment.bytes" => {
                let bytes = positive()?;
                if !(14..=i32::MAX as u64).contains(&bytes) {
                    return Err("segment.bytes must be between 14 and 2147483647".into());
                }
                config.segment_bytes = bytes;
                config.preallocate_bytes = config.preallocate_bytes.min(bytes);
            }
            "segment.ms" => config.segment_ms = positive()?,
            "index.interval.bytes" => config.index_interval_bytes = number()?.max(0) as u64,
            "max.message.bytes" => config.max_message_bytes = positive()? as usize,
            "cleanup.policy" if value == "delete" => {}
            "cleanup.policy" => {
                return Err(format!("cleanup.policy={value} is not supported yet (only delete)"));
            }
            "message.timestamp.type" if value == "CreateTime" => {}
            "message.timestamp.type" => {
                return Err(format!("message.timestamp.type={value} is not supported yet (only CreateTime)"));
            }
            "min.insync.replicas" if value == "1" => {}
            "min.insync.replicas" => {
                return Err("min.insync.replicas must be 1 on a single broker".into());
            }
            "corelog.flush.policy" => {
                config.flush = FlushPolicy::parse(value)
                    .ok_or_else(|| format!("corelog.flush.policy={value}: expected always, none or interval:<ms>"))?;
            }
            _ => return Err(format!("unknown topic config {key}")),
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(valid_topic_name("orders.v1_EU-2"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("a/b"));
        assert!(!valid_topic_name(&"x".repeat(250)));
    }

    #[test]
    fn configs_map_onto_the_log_config_and_refuse_the_unknown() {
        let configs: BTreeMap<String, String> =
            [("retention.ms", "-1"), ("segment.bytes", "1048576"), ("corelog.flush.policy", "none")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let config = log_config(&LogConfig::default(), &configs).unwrap();
        assert_eq!(config.retention_ms, None);
        assert_eq!(config.segment_bytes, 1 << 20);
        assert_eq!(config.flush, FlushPolicy::None);
        for (key, value) in
            [("bogus", "1"), ("segment.bytes", "x"), ("cleanup.policy", "compact"), ("retention.ms", "-7")]
        {
            let configs = BTreeMap::from([(key.to_string(), value.to_string())]);
            let err = log_config(&LogConfig::default(), &configs).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn the_registry_persists_topics_and_its_cluster_id() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path()).unwrap();
        let cluster = registry.cluster_id().to_string();
        assert_eq!(cluster.len(), 22);
        let mut topics = TopicMap::new();
        topics.insert("a".into(), new_topic("a", 3, BTreeMap::new()));
        registry.store(topics).unwrap();
        let reopened = Registry::open(dir.path()).unwrap();
        assert_eq!(reopened.cluster_id(), cluster);
        assert_eq!(reopened.snapshot().get("a").map(|t| t.partitions), Some(3));
        assert!(parse_hex_id(&reopened.snapshot()["a"].id).is_some());
    }
}
