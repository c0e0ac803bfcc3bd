//! `corelog group …` (list, describe with lag, seek, delete) and `corelog cluster info|config`,
//! through corelog's own client, against any Kafka-compatible broker. Exit codes as for
//! `corelog topic`.

use std::collections::BTreeMap;
use std::rc::Rc;

use clap::Subcommand;
use corelog_client::admin::{EARLIEST, LATEST};
use corelog_client::{Client, Error};
use serde_json::{Value, json};

use crate::topic::{Outcome, table};

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List consumer groups (every broker).
    List,
    /// Members and assignments; per partition the committed offset, log end offset and lag.
    Describe { group: String },
    /// Move a group's committed offsets (the group must have no members).
    Seek {
        group: String,
        /// earliest, latest, an offset, or @TIME (ms since the epoch).
        #[arg(long)]
        to: String,
        /// Only this topic [default: every topic the group has committed offsets for].
        #[arg(long)]
        topic: Option<String>,
        /// Only these partitions of --topic, e.g. 0,1.
        #[arg(long, value_delimiter = ',', requires = "topic")]
        partitions: Vec<i32>,
    },
    /// Delete consumer groups (they must have no members).
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

pub async fn execute(client: Rc<Client>, command: GroupCommand) -> Result<Outcome, Error> {
    match command {
        GroupCommand::List => {
            let groups = client.list_groups().await?;
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|g| vec![g.group_id.clone(), g.state.clone(), g.group_type.clone(), g.protocol_type.clone()])
                .collect();
            let json: Vec<Value> = groups
                .iter()
                .map(|g| json!({"group": g.group_id, "state": g.state, "type": g.group_type, "protocol_type": g.protocol_type}))
                .collect();
            Ok(Outcome::ok(table(&["GROUP", "STATE", "TYPE", "PROTOCOL-TYPE"], &rows), Value::Array(json)))
        }
        GroupCommand::Describe { group } => {
            let d = client.describe_group(&group).await?;
            let mut out = table(
                &["GROUP", "STATE", "TYPE", "PROTOCOL/ASSIGNOR", "MEMBERS", "TOTAL-LAG"],
                &[vec![
                    d.group_id.clone(),
                    d.state.clone(),
                    d.group_type.clone(),
                    d.protocol.clone(),
                    d.members.len().to_string(),
                    d.partitions.iter().filter_map(|p| p.lag).sum::<i64>().to_string(),
                ]],
            );
            let members: Vec<Vec<String>> = d
                .members
                .iter()
                .map(|m| {
                    let assigned: Vec<String> =
                        m.assignment.iter().map(|(t, ps)| format!("{t}:{}", join(ps))).collect();
                    vec![m.member_id.clone(), m.client_id.clone(), m.client_host.clone(), assigned.join(" ")]
                })
                .collect();
            out.push('\n');
            out.push_str(&table(&["MEMBER", "CLIENT-ID", "HOST", "ASSIGNMENT"], &members));
            let show = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
            let partitions: Vec<Vec<String>> = d
                .partitions
                .iter()
                .map(|p| {
                    vec![
                        p.topic.clone(),
                        p.partition.to_string(),
                        if p.committed < 0 { "-".into() } else { p.committed.to_string() },
                        show(p.log_end),
                        show(p.lag),
                        p.member.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            out.push('\n');
            out.push_str(&table(&["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "MEMBER"], &partitions));
            let json = json!({
                "group": d.group_id, "state": d.state, "type": d.group_type, "protocol": d.protocol,
                "members": d.members.iter().map(|m| json!({
                    "member_id": m.member_id, "instance_id": m.instance_id, "client_id": m.client_id,
                    "client_host": m.client_host, "assignment": m.assignment,
                })).collect::<Vec<_>>(),
                "partitions": d.partitions.iter().map(|p| json!({
                    "topic": p.topic, "partition": p.partition,
                    "committed_offset": (p.committed >= 0).then_some(p.committed),
                    "log_end_offset": p.log_end, "lag": p.lag, "member": p.member,
                })).collect::<Vec<_>>(),
                "total_lag": d.partitions.iter().filter_map(|p| p.lag).sum::<i64>(),
            });
            Ok(Outcome::ok(out, json))
        }
        GroupCommand::Seek { group, to, topic, partitions } => seek(&client, &group, &to, topic, partitions).await,
        GroupCommand::Delete { groups } => {
            let mut results = Vec::new();
            for group in groups {
                match client.delete_group(&group).await {
                    Err(error) if error.code().is_none() => return Err(error), // not the group's doing
                    result => results.push((group, result)),
                }
            }
            Ok(crate::topic::per_item("group", results, "deleted"))
        }
    }
}

fn join(ids: &[i32]) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

async fn seek(
    client: &Client,
    group: &str,
    to: &str,
    topic: Option<String>,
    partitions: Vec<i32>,
) -> Result<Outcome, Error> {
    let before = client.describe_group(group).await?;
    if !before.members.is_empty() {
        return Err(Error::Refused(format!(
            "{group} has {} members: stop them before moving its offsets",
            before.members.len()
        )));
    }
    let committed: BTreeMap<(String, i32), i64> =
        before.partitions.iter().map(|p| ((p.topic.clone(), p.partition), p.committed)).collect();
    let mut targets: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    match topic {
        Some(topic) => {
            let wanted = if partitions.is_empty() {
                client.topic(&topic).await?.partitions.iter().map(|p| p.partition).collect()
            } else {
                partitions
            };
            targets.insert(topic, wanted);
        }
        None => {
            for (topic, partition) in committed.keys() {
                targets.entry(topic.clone()).or_default().push(*partition);
            }
        }
    }
    if targets.is_empty() {
        return Err(Error::Invalid(format!("{group} has no committed offsets: name a --topic")));
    }
    let timestamp = match to {
        "earliest" => Some(EARLIEST),
        "latest" => Some(LATEST),
        text => match text.strip_prefix('@') {
            Some(time) => Some(time.parse().map_err(|_| Error::Invalid(format!("bad time in --to {text}")))?),
            None => None,
        },
    };
    let fixed: Option<i64> =
        match timestamp {
            Some(_) => None,
            None => Some(to.parse().ok().filter(|o: &i64| *o >= 0).ok_or_else(|| {
                Error::Invalid(format!("--to must be earliest, latest, an offset or @TIME, not `{to}`"))
            })?),
        };
    let mut offsets = Vec::new();
    for (topic, partitions) in &targets {
        match (fixed, timestamp) {
            (Some(offset), _) => offsets.extend(partitions.iter().map(|p| (topic.clone(), *p, offset))),
            (None, Some(timestamp)) => {
                for (partition, offset) in client.list_offsets(topic, partitions, timestamp).await? {
                    let offset = match offset? {
                        // No record at or after the time: the end.
                        -1 => client
                            .list_offsets(topic, &[partition], LATEST)
                            .await?
                            .remove(&partition)
                            .unwrap_or(Ok(0))?,
                        offset => offset,
                    };
                    offsets.push((topic.clone(), partition, offset));
                }
            }
            (None, None) => {}
        }
    }
    client.seek_group(group, &offsets).await?;
    let rows: Vec<Vec<String>> = offsets
        .iter()
        .map(|(t, p, o)| {
            let old = committed.get(&(t.clone(), *p)).copied().filter(|c| *c >= 0);
            vec![t.clone(), p.to_string(), old.map_or("-".into(), |o| o.to_string()), o.to_string()]
        })
        .collect();
    let json = json!({
        "group": group,
        "offsets": offsets.iter().map(|(t, p, o)| json!({
            "topic": t, "partition": p, "offset": o,
            "previous": committed.get(&(t.clone(), *p)).copied().filter(|c| *c >= 0),
        })).collect::<Vec<_>>(),
    });
    Ok(Outcome::ok(table(&["TOPIC", "PARTITION", "OLD", "NEW"], &rows), json))
}

/// `corelog cluster info`: the brokers, the controller, what the cluster holds.
pub async fn cluster_info(client: Rc<Client>) -> Result<Outcome, Error> {
    let info = client.metadata(None).await?;
    let rows: Vec<Vec<String>> = info
        .brokers
        .values()
        .map(|b| {
            let role = if b.node_id == info.controller { "controller" } else { "" };
            vec![
                b.node_id.to_string(),
                b.host.clone(),
                b.port.to_string(),
                b.rack.clone().unwrap_or_default(),
                role.into(),
            ]
        })
        .collect();
    let partitions: usize = info.topics.values().map(|t| t.partitions.len()).sum();
    let mut out = format!(
        "CLUSTER     {}\nCONTROLLER  {}\nTOPICS      {} ({} partitions)\n\n",
        info.cluster_id.clone().unwrap_or_default(),
        info.controller,
        info.topics.len(),
        partitions
    );
    out.push_str(&table(&["ID", "HOST", "PORT", "RACK", "ROLE"], &rows));
    let json = json!({
        "cluster_id": info.cluster_id, "controller": info.controller,
        "brokers": info.brokers.values().map(|b| json!({"id": b.node_id, "host": b.host, "port": b.port, "rack": b.rack})).collect::<Vec<_>>(),
        "topics": info.topics.len(), "partitions": partitions,
    });
    Ok(Outcome::ok(out, json))
}

/// `corelog cluster config`: a broker's configs (the controller's by default).
pub async fn cluster_config(client: Rc<Client>, broker: Option<i32>) -> Result<Outcome, Error> {
    let node = match broker {
        Some(node) => node,
        None => client.metadata(Some(&[])).await?.controller,
    };
    let configs = client.broker_configs(node).await?;
    let value = |c: &corelog_client::admin::ConfigEntry| {
        if c.sensitive { "(sensitive)".to_string() } else { c.value.clone().unwrap_or_else(|| "(null)".into()) }
    };
    let rows: Vec<Vec<String>> = configs.iter().map(|c| vec![c.name.clone(), value(c), c.source.to_string()]).collect();
    let json = json!({
        "broker": node,
        "configs": configs.iter().map(|c| json!({
            "name": c.name, "value": if c.sensitive { None } else { c.value.clone() },
            "source": c.source, "read_only": c.read_only, "sensitive": c.sensitive,
        })).collect::<Vec<_>>(),
    });
    Ok(Outcome::ok(table(&["KEY", "VALUE", "SOURCE"], &rows), json))
}
