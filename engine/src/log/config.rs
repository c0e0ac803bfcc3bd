//! Per-partition log configuration: the Kafka topic configs the storage engine obeys.

use std::time::Duration;

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlushPolicy {
    /// Acknowledged ⇒ on stable storage: an append completes after the `fdatasync` that
    /// covers it. The default.
    Always,
    /// Appends complete at once; written data is synced at least every `ms` milliseconds.
    /// A crash can lose up to that window.
    IntervalMs(u64),
    /// Appends complete at once; data is written promptly but never synced by the broker
    /// (the device and the kernel decide). For comparison with Kafka's default.
    None,
}

impl FlushPolicy {
    /// Parses `always`, `none` or `interval:<ms>` (the topic config `corelog.flush.policy`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "always" => Some(Self::Always),
            "none" => Some(Self::None),
            other => other.strip_prefix("interval:").and_then(|ms| ms.parse().ok()).map(Self::IntervalMs),
        }
    }

    pub fn acknowledges_after_sync(self) -> bool {
        matches!(self, Self::Always)
    }
}

/// Storage settings of one partition. Defaults are Kafka's topic defaults, except the flush
/// policy (corelog syncs before acknowledging by default).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment's first append is older than this.
    pub segment_ms: u64,
    /// `index.interval.bytes`: bytes between sparse index entries.
    pub index_interval_bytes: u64,
    /// `retention.ms`: delete closed segments whose newest timestamp is older; None = forever.
    pub retention_ms: Option<u64>,
    /// `retention.bytes`: delete oldest closed segments while the log is larger; None = no limit.
    pub retention_bytes: Option<u64>,
    /// `max.message.bytes`: largest batch accepted.
    pub max_message_bytes: usize,
    pub flush: FlushPolicy,
    /// Bytes reserved ahead of the write position with fallocate, so extent allocation is
    /// not paid on the write path.
    pub preallocate_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            max_message_bytes: 1_048_588,
            flush: FlushPolicy::Always,
            preallocate_bytes: 64 << 20,
        }
    }
}

impl LogConfig {
    pub fn segment_age_max(&self) -> Duration {
        Duration::from_millis(self.segment_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policy_parses_its_three_forms() {
        assert_eq!(FlushPolicy::parse("always"), Some(FlushPolicy::Always));
        assert_eq!(FlushPolicy::parse("none"), Some(FlushPolicy::None));
        assert_eq!(FlushPolicy::parse("interval:250"), Some(FlushPolicy::IntervalMs(250)));
        assert_eq!(FlushPolicy::parse("interval:"), None);
        assert_eq!(FlushPolicy::parse("sometimes"), None);
    }
}
