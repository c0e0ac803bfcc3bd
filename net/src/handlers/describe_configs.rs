//! DescribeConfigs (key 32), v1–v4: topic configs (explicit values, then broker defaults,
//! then Kafka's defaults, with synonyms on request) and this broker's read-only configs.
//!
//! Runs on the connection's shard from the registry snapshot; no other shard is involved.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{ShardBroker, error_code};
use crate::configs::{self, DescribedConfig, resource_type};

pub async fn handle(broker: &ShardBroker, request: DescribeConfigsRequest, version: i16) -> DescribeConfigsResponse {
    let results = request
        .resources
        .iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match describe(broker, resource.resource_type, &name) {
                Ok(described) => {
                    let wanted = resource.configuration_keys.as_ref();
                    let configs = described
                        .iter()
                        .filter(|c| wanted.is_none_or(|keys| keys.iter().any(|k| k.as_str() == c.name)))
                        .map(|c| encode(c, version, request.include_synonyms, request.include_documentation))
                        .collect();
                    result.with_configs(configs)
                }
                Err((code, message)) => {
                    result.with_error_code(code).with_error_message(Some(StrBytes::from_string(message)))
                }
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe(broker: &ShardBroker, kind: i8, name: &str) -> Result<Vec<DescribedConfig>, (i16, String)> {
    let settings = &broker.settings;
    match kind {
        resource_type::TOPIC => {
            let topics = broker.registry.snapshot();
            let record = topics
                .get(name)
                .ok_or_else(|| (error_code::UNKNOWN_TOPIC_OR_PARTITION, format!("unknown topic {name}")))?;
            Ok(configs::describe_topic(&record.configs, &settings.default_log))
        }
        // An empty name asks for the cluster-wide dynamic defaults, of which there are none.
        resource_type::BROKER if name.is_empty() => Ok(Vec::new()),
        resource_type::BROKER if name == settings.node_id.to_string() => {
            Ok(configs::describe_broker(&settings.default_log, &settings.broker_configs))
        }
        resource_type::BROKER => {
            Err((error_code::INVALID_REQUEST, format!("this is broker {}, not {name}", settings.node_id)))
        }
        other => Err((error_code::INVALID_REQUEST, format!("resource type {other} has no configs here"))),
    }
}

fn encode(
    config: &DescribedConfig,
    version: i16,
    synonyms: bool,
    documentation: bool,
) -> DescribeConfigsResourceResult {
    let mut result = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(config.name.clone()))
        .with_value(Some(StrBytes::from_string(config.value.clone())))
        .with_read_only(config.read_only)
        .with_config_source(config.source);
    if synonyms {
        result = result.with_synonyms(
            config
                .synonyms
                .iter()
                .map(|(name, value, source)| {
                    DescribeConfigsSynonym::default()
                        .with_name(StrBytes::from_string(name.clone()))
                        .with_value(Some(StrBytes::from_string(value.clone())))
                        .with_source(*source)
                })
                .collect(),
        );
    }
    if version >= 3 {
        result = result.with_config_type(config.config_type);
        if documentation && !config.documentation.is_empty() {
            result = result.with_documentation(Some(StrBytes::from_static_str(config.documentation)));
        }
    }
    result
}
