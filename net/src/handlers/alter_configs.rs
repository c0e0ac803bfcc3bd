//! AlterConfigs (key 33), v0–v2, and IncrementalAlterConfigs (key 44), v0–v1, for topics:
//! the new configs are validated as a whole (INVALID_CONFIG names the key), stored in the
//! registry by the controller shard, and applied to the open partitions. Broker configs are
//! read-only (they come from the config file at start): INVALID_REQUEST.
//!
//! Runs on the connection's shard; the change happens on the controller shard.

use std::collections::BTreeMap;

use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    alter_configs_response, incremental_alter_configs_response,
};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{ConfigEdit, ShardBroker, error_code};
use crate::configs::{ConfigChange, resource_type};

/// One resource's outcome: (type, name, error code, message).
type Outcome = (i8, StrBytes, i16, Option<String>);

pub async fn handle(broker: &ShardBroker, request: AlterConfigsRequest, _version: i16) -> AlterConfigsResponse {
    let resources = request.resources.iter().map(|r| {
        let configs: Option<BTreeMap<String, String>> =
            r.configs.iter().map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string()))).collect();
        let edit = configs.map(ConfigEdit::Replace).ok_or("a topic config value cannot be null");
        (r.resource_type, r.resource_name.clone(), edit)
    });
    let outcomes = alter(broker, resources.collect(), request.validate_only).await;
    let responses = outcomes
        .into_iter()
        .map(|(kind, name, code, message)| {
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(kind)
                .with_resource_name(name)
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string))
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn handle_incremental(
    broker: &ShardBroker,
    request: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let resources = request.resources.iter().map(|r| {
        let changes = r
            .configs
            .iter()
            .map(|c| ConfigChange {
                name: c.name.to_string(),
                operation: c.config_operation,
                value: c.value.as_ref().map(|v| v.to_string()),
            })
            .collect();
        (r.resource_type, r.resource_name.clone(), Ok(ConfigEdit::Incremental(changes)))
    });
    let outcomes = alter(broker, resources.collect(), request.validate_only).await;
    let responses = outcomes
        .into_iter()
        .map(|(kind, name, code, message)| {
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(kind)
                .with_resource_name(name)
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string))
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// Sends the topic edits to the controller in one call; answers every resource in request
/// order.
async fn alter(
    broker: &ShardBroker,
    resources: Vec<(i8, StrBytes, Result<ConfigEdit, &'static str>)>,
    validate_only: bool,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(resources.len());
    let mut edits = Vec::new();
    for (i, (kind, name, edit)) in resources.iter().enumerate() {
        let refusal = if resources.iter().enumerate().any(|(j, (k, n, _))| j != i && k == kind && n == name) {
            Some(format!("{name} appears more than once in the request"))
        } else {
            match (*kind, edit) {
                (resource_type::TOPIC, Ok(edit)) => {
                    edits.push((name.to_string(), edit.clone()));
                    None
                }
                (resource_type::TOPIC, Err(message)) => Some(message.to_string()),
                (resource_type::BROKER, _) => Some("broker configs are read-only: set them in the config file".into()),
                (other, _) => Some(format!("resource type {other} has no configs here")),
            }
        };
        let (code, message) = match refusal {
            Some(message) => (error_code::INVALID_REQUEST, Some(message)),
            None => (error_code::NONE, None),
        };
        outcomes.push((*kind, name.clone(), code, message));
    }
    if edits.is_empty() {
        return outcomes;
    }
    let mut results = broker.alter_topic_configs(edits, validate_only).await.into_iter();
    for outcome in outcomes.iter_mut().filter(|o| o.0 == resource_type::TOPIC && o.2 == error_code::NONE) {
        if let Some(result) = results.next() {
            outcome.2 = result.error_code;
            outcome.3 = result.message;
        }
    }
    outcomes
}
