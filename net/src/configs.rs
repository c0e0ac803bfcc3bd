//! The catalogue of topic configs corelog understands, and how configs are described
//! (DescribeConfigs) and changed (AlterConfigs, IncrementalAlterConfigs).
//!
//! A topic's explicit configs are Kafka strings in the registry; every other key takes the
//! broker default (`[log]` in the broker config, itself defaulting to Kafka's defaults).
//! This module is pure: the handlers and the controller do the I/O.

use std::collections::BTreeMap;

use corelog_engine::log::{FlushPolicy, LogConfig};

/// Kafka `ConfigSource` values (DescribeConfigs v1+).
pub mod source {
    pub const DYNAMIC_TOPIC_CONFIG: i8 = 1;
    pub const STATIC_BROKER_CONFIG: i8 = 4;
    pub const DEFAULT_CONFIG: i8 = 5;
}

/// Kafka `ConfigType` values (DescribeConfigs v3+).
pub mod config_type {
    pub const BOOLEAN: i8 = 1;
    pub const STRING: i8 = 2;
    pub const INT: i8 = 3;
    pub const LONG: i8 = 5;
    pub const LIST: i8 = 7;
}

/// Kafka resource types in the config APIs.
pub mod resource_type {
    pub const TOPIC: i8 = 2;
    pub const BROKER: i8 = 4;
}

/// IncrementalAlterConfigs operations.
pub mod operation {
    pub const SET: i8 = 0;
    pub const DELETE: i8 = 1;
    pub const APPEND: i8 = 2;
    pub const SUBTRACT: i8 = 3;
}

/// One topic config key.
pub struct TopicConfigKey {
    pub name: &'static str,
    /// The broker-level key whose value is this key's default.
    pub broker_name: &'static str,
    pub config_type: i8,
    pub documentation: &'static str,
    /// The key's value in a log config, as Kafka prints it.
    render: fn(&LogConfig) -> String,
}

fn limit(value: Option<u64>) -> String {
    value.map_or_else(|| "-1".to_string(), |v| v.to_string())
}

pub fn render_flush_policy(policy: FlushPolicy) -> String {
    match policy {
        FlushPolicy::Always => "always".into(),
        FlushPolicy::None => "none".into(),
        FlushPolicy::IntervalMs(ms) => format!("interval:{ms}"),
    }
}

/// Every topic config corelog accepts; anything else is refused with INVALID_CONFIG.
pub const TOPIC_CONFIGS: &[TopicConfigKey] = &[
    TopicConfigKey {
        name: "cleanup.policy",
        broker_name: "log.cleanup.policy",
        config_type: config_type::LIST,
        documentation: "delete: old segments are removed by retention (compact is not supported yet)",
        render: |_| "delete".into(),
    },
    TopicConfigKey {
        name: "corelog.flush.policy",
        broker_name: "corelog.log.flush.policy",
        config_type: config_type::STRING,
        documentation: "when a produce is acknowledged: always (after fdatasync), interval:<ms>, or none",
        render: |c| render_flush_policy(c.flush),
    },
    TopicConfigKey {
        name: "index.interval.bytes",
        broker_name: "log.index.interval.bytes",
        config_type: config_type::INT,
        documentation: "bytes of log between two offset-index entries",
        render: |c| c.index_interval_bytes.to_string(),
    },
    TopicConfigKey {
        name: "max.message.bytes",
        broker_name: "message.max.bytes",
        config_type: config_type::INT,
        documentation: "largest record batch accepted",
        render: |c| c.max_message_bytes.to_string(),
    },
    TopicConfigKey {
        name: "message.timestamp.type",
        broker_name: "log.message.timestamp.type",
        config_type: config_type::STRING,
        documentation: "CreateTime: records keep the producer's timestamps",
        render: |_| "CreateTime".into(),
    },
    TopicConfigKey {
        name: "min.insync.replicas",
        broker_name: "min.insync.replicas",
        config_type: config_type::INT,
        documentation: "replicas that must acknowledge an acks=all produce (1 on a single broker)",
        render: |_| "1".into(),
    },
    TopicConfigKey {
        name: "retention.bytes",
        broker_name: "log.retention.bytes",
        config_type: config_type::LONG,
        documentation: "oldest segments are deleted while a partition is larger (-1: no limit)",
        render: |c| limit(c.retention_bytes),
    },
    TopicConfigKey {
        name: "retention.ms",
        broker_name: "log.retention.ms",
        config_type: config_type::LONG,
        documentation: "segments whose newest record is older are deleted (-1: kept forever)",
        render: |c| limit(c.retention_ms),
    },
    TopicConfigKey {
        name: "segment.bytes",
        broker_name: "log.segment.bytes",
        config_type: config_type::INT,
        documentation: "a segment file is rolled before it grows past this",
        render: |c| c.segment_bytes.to_string(),
    },
    TopicConfigKey {
        name: "segment.ms",
        broker_name: "log.roll.ms",
        config_type: config_type::LONG,
        documentation: "a segment is rolled once its first record is this old",
        render: |c| c.segment_ms.to_string(),
    },
];

pub fn topic_config_key(name: &str) -> Option<&'static TopicConfigKey> {
    TOPIC_CONFIGS.iter().find(|k| k.name == name)
}

/// One described config, ready for a DescribeConfigs response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedConfig {
    pub name: String,
    pub value: String,
    pub source: i8,
    pub read_only: bool,
    pub config_type: i8,
    pub documentation: &'static str,
    /// (name, value, source), most specific first (DescribeConfigs `include_synonyms`).
    pub synonyms: Vec<(String, String, i8)>,
}

/// A topic's configs: explicit ones as set, the rest from the broker defaults.
pub fn describe_topic(explicit: &BTreeMap<String, String>, broker_defaults: &LogConfig) -> Vec<DescribedConfig> {
    let builtin = LogConfig::default();
    TOPIC_CONFIGS
        .iter()
        .map(|key| {
            let broker_value = (key.render)(broker_defaults);
            let builtin_value = (key.render)(&builtin);
            let mut synonyms = Vec::new();
            if let Some(value) = explicit.get(key.name) {
                synonyms.push((key.name.to_string(), value.clone(), source::DYNAMIC_TOPIC_CONFIG));
            }
            if broker_value != builtin_value {
                synonyms.push((key.broker_name.to_string(), broker_value, source::STATIC_BROKER_CONFIG));
            }
            synonyms.push((key.broker_name.to_string(), builtin_value, source::DEFAULT_CONFIG));
            let (_, value, source) = synonyms[0].clone();
            DescribedConfig {
                name: key.name.to_string(),
                value,
                source,
                read_only: false,
                config_type: key.config_type,
                documentation: key.documentation,
                synonyms,
            }
        })
        .collect()
}

/// The broker's configs (all read-only: they come from the config file, flags and
/// environment at start): the log defaults under their broker names, then `others`.
pub fn describe_broker(broker_defaults: &LogConfig, others: &[(&'static str, String, i8)]) -> Vec<DescribedConfig> {
    let builtin = LogConfig::default();
    let mut configs: Vec<DescribedConfig> = TOPIC_CONFIGS
        .iter()
        .map(|key| {
            let value = (key.render)(broker_defaults);
            let source =
                if value == (key.render)(&builtin) { source::DEFAULT_CONFIG } else { source::STATIC_BROKER_CONFIG };
            DescribedConfig {
                name: key.broker_name.to_string(),
                value: value.clone(),
                source,
                read_only: true,
                config_type: key.config_type,
                documentation: key.documentation,
                synonyms: vec![(key.broker_name.to_string(), value, source)],
            }
        })
        .collect();
    for (name, value, source) in others {
        if configs.iter().any(|c| c.name == *name) {
            continue;
        }
        configs.push(DescribedConfig {
            name: name.to_string(),
            value: value.clone(),
            source: *source,
            read_only: true,
            config_type: if value == "true" || value == "false" { config_type::BOOLEAN } else { config_type::STRING },
            documentation: "",
            synonyms: vec![(name.to_string(), value.clone(), *source)],
        });
    }
    configs.sort_by(|a, b| a.name.cmp(&b.name));
    configs
}

/// One IncrementalAlterConfigs change.
#[derive(Debug, Clone)]
pub struct ConfigChange {
    pub name: String,
    pub operation: i8,
    pub value: Option<String>,
}

/// Applies incremental changes to a topic's explicit configs. The result still has to pass
/// `registry::log_config`. Errors are (Kafka error code, message).
pub fn apply_incremental(
    explicit: &BTreeMap<String, String>,
    changes: &[ConfigChange],
) -> Result<BTreeMap<String, String>, (i16, String)> {
    use crate::broker::error_code::{INVALID_CONFIG, INVALID_REQUEST};
    let mut configs = explicit.clone();
    for (i, change) in changes.iter().enumerate() {
        if changes[..i].iter().any(|c| c.name == change.name) {
            return Err((INVALID_REQUEST, format!("{} appears more than once", change.name)));
        }
        let Some(key) = topic_config_key(&change.name) else {
            return Err((INVALID_CONFIG, format!("unknown topic config {}", change.name)));
        };
        match change.operation {
            operation::SET => {
                let value =
                    change.value.clone().ok_or((INVALID_REQUEST, format!("{}: SET needs a value", change.name)))?;
                configs.insert(change.name.clone(), value);
            }
            operation::DELETE => {
                configs.remove(&change.name);
            }
            operation::APPEND | operation::SUBTRACT => {
                if key.config_type != config_type::LIST {
                    return Err((
                        INVALID_CONFIG,
                        format!("{} is not a list: APPEND and SUBTRACT do not apply", key.name),
                    ));
                }
                let current = configs.get(key.name).cloned().unwrap_or_else(|| (key.render)(&LogConfig::default()));
                let mut items: Vec<String> =
                    current.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
                let given = change.value.clone().unwrap_or_default();
                for item in given.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if change.operation == operation::APPEND {
                        if !items.iter().any(|i| i == item) {
                            items.push(item.to_string());
                        }
                    } else {
                        items.retain(|i| i != item);
                    }
                }
                configs.insert(change.name.clone(), items.join(","));
            }
            other => return Err((INVALID_REQUEST, format!("{}: unknown operation {other}", change.name))),
        }
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_topic_describes_explicit_values_over_broker_and_builtin_defaults() {
        let broker = LogConfig { retention_ms: Some(3_600_000), ..LogConfig::default() };
        let described = describe_topic(&map(&[("segment.bytes", "1048576")]), &broker);
        assert_eq!(described.len(), TOPIC_CONFIGS.len());
        let get = |name: &str| described.iter().find(|c| c.name == name).unwrap().clone();
        let segment = get("segment.bytes");
        assert_eq!((segment.value.as_str(), segment.source), ("1048576", source::DYNAMIC_TOPIC_CONFIG));
        assert_eq!(segment.synonyms.len(), 2, "{:?}", segment.synonyms);
        let retention = get("retention.ms");
        assert_eq!((retention.value.as_str(), retention.source), ("3600000", source::STATIC_BROKER_CONFIG));
        assert_eq!(retention.synonyms[1], ("log.retention.ms".into(), "604800000".into(), source::DEFAULT_CONFIG));
        let bytes = get("retention.bytes");
        assert_eq!((bytes.value.as_str(), bytes.source), ("-1", source::DEFAULT_CONFIG));
        assert_eq!(get("corelog.flush.policy").value, "always");
    }

    #[test]
    fn incremental_changes_set_delete_and_edit_lists() {
        let explicit = map(&[("retention.ms", "1000"), ("segment.ms", "60000")]);
        let change = |name: &str, operation, value: Option<&str>| ConfigChange {
            name: name.into(),
            operation,
            value: value.map(String::from),
        };
        let out = apply_incremental(
            &explicit,
            &[change("retention.ms", operation::DELETE, None), change("segment.bytes", operation::SET, Some("4096"))],
        )
        .unwrap();
        assert_eq!(out, map(&[("segment.bytes", "4096"), ("segment.ms", "60000")]));
        let listed = apply_incremental(&explicit, &[change("cleanup.policy", operation::APPEND, Some("delete"))]);
        assert_eq!(listed.unwrap()["cleanup.policy"], "delete");
        let refused = [
            vec![change("retention.ms", operation::APPEND, Some("5"))],
            vec![change("bogus", operation::SET, Some("1"))],
            vec![change("retention.ms", operation::SET, None)],
            vec![change("retention.ms", 9, Some("1"))],
            vec![change("retention.ms", operation::SET, Some("1")), change("retention.ms", operation::DELETE, None)],
        ];
        for changes in refused {
            let (code, message) = apply_incremental(&explicit, &changes).unwrap_err();
            assert!(code == 40 || code == 42, "{code} {message}");
        }
    }
}
