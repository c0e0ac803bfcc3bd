//! `corelog topic …`: topic administration through corelog's own Kafka client, against
//! corelog or any Kafka-compatible broker.
//!
//! Output is a table, or JSON with `--format json`. Exit codes: 0 done; 1 the broker refused
//! something (each refusal is one line on stderr: the Kafka error name, its message, what to
//! do); 2 usage; 3 no broker answered.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use corelog_client::admin::{ConfigEntry, EARLIEST, LATEST, NewTopic};
use corelog_client::{Client, ClientConfig, Error, TopicInfo};
use serde_json::{Value, json};

use crate::cluster::OutputFormat;

#[derive(Args, Debug, Clone)]
pub struct Connect {
    /// Brokers to bootstrap from, HOST:PORT[,HOST:PORT…].
    #[arg(long, global = true, env = "CORELOG_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// table (default) or json.
    #[arg(long, global = true, default_value = "table")]
    pub format: OutputFormat,
    /// Seconds a request may take.
    #[arg(long, global = true, default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create topics.
    Create {
        #[arg(required = true)]
        topics: Vec<String>,
        /// Partitions per topic [default: the broker's num.partitions].
        #[arg(short, long, default_value_t = -1)]
        partitions: i32,
        /// Replicas per partition [default: the broker's default.replication.factor].
        #[arg(short, long, default_value_t = -1)]
        replicas: i16,
        /// A topic config, KEY=VALUE (repeatable), e.g. retention.ms=3600000.
        #[arg(short, long = "config", value_parser = key_value)]
        configs: Vec<(String, String)>,
        /// Check the request without creating anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// List topics with their partition and replica counts.
    List {
        /// Show internal topics (`__consumer_offsets`) too.
        #[arg(short = 'i', long)]
        internal: bool,
    },
    /// A topic's partitions (leader, replicas, offsets) and configs.
    Describe { topic: String },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        topics: Vec<String>,
    },
    /// Set or remove (back to the default) topic configs.
    AlterConfig {
        topic: String,
        /// KEY=VALUE to set (repeatable).
        #[arg(long = "set", value_parser = key_value)]
        set: Vec<(String, String)>,
        /// KEY to remove (repeatable).
        #[arg(long = "delete")]
        delete: Vec<String>,
    },
    /// Add partitions to a topic.
    AddPartitions {
        topic: String,
        /// How many partitions to add.
        #[arg(short, long)]
        num: i32,
    },
    /// Produce records: one per line of standard input (or of --file).
    Produce {
        topic: String,
        /// Read the lines from this file instead of standard input.
        #[arg(short, long)]
        file: Option<std::path::PathBuf>,
        /// A key for every record.
        #[arg(short, long, conflicts_with = "key_separator")]
        key: Option<String>,
        /// Split each line at the first SEP into key and value.
        #[arg(long, value_name = "SEP")]
        key_separator: Option<String>,
        /// A header KEY=VALUE on every record (repeatable).
        #[arg(short = 'H', long = "header", value_parser = key_value)]
        headers: Vec<(String, String)>,
        /// The partition [default: by key, else spread].
        #[arg(short, long)]
        partition: Option<i32>,
        /// all, 1 or 0.
        #[arg(long, default_value = "all")]
        acks: String,
        /// none, gzip, snappy, lz4 or zstd.
        #[arg(long, default_value = "none")]
        compression: corelog_client::records::Codec,
    },
    /// Consume records: values one per line, or one JSON object per record (--format json).
    Consume {
        topic: String,
        /// Partitions, e.g. 0,1 [default: all].
        #[arg(short, long, value_delimiter = ',')]
        partitions: Vec<i32>,
        /// Where to start: earliest, latest, an offset, or @TIME (ms since the epoch).
        #[arg(short, long, default_value = "earliest")]
        offset: String,
        /// Stop after this many records.
        #[arg(short, long)]
        num: Option<usize>,
        /// Stop once every partition is read to its end.
        #[arg(short, long)]
        end: bool,
        /// Consume as a member of this consumer group (classic protocol, range assignor): the
        /// group decides the partitions, each starts at the group's committed offset (with
        /// none, at --offset: earliest or latest), positions are committed as records are
        /// printed, and the member leaves the group when done.
        #[arg(short, long, conflicts_with = "partitions")]
        group: Option<String>,
    },
    /// Delete the records before an offset (all partitions, or those given).
    Trim {
        topic: String,
        /// Records before this offset go; `end` deletes up to the high watermark.
        #[arg(short, long)]
        offset: String,
        /// Partitions, e.g. 0,1,2 [default: all].
        #[arg(short, long, value_delimiter = ',')]
        partitions: Vec<i32>,
    },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

/// What `topic produce` reads and how.
pub struct ProduceInput {
    pub file: Option<std::path::PathBuf>,
    pub key: Option<String>,
    pub key_separator: Option<String>,
    pub headers: Vec<(String, String)>,
    pub partition: Option<i32>,
    pub acks: String,
    pub compression: corelog_client::records::Codec,
}

/// What a command did: what to print, and the refusals to report.
pub struct Outcome {
    pub table: String,
    pub json: Value,
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn ok(table: String, json: Value) -> Self {
        Self { table, json, failures: Vec::new() }
    }
}

pub fn run(command: TopicCommand, connect: Connect) -> ExitCode {
    let format = connect.format;
    run_with_client(connect, move |client| async move {
        match command {
            TopicCommand::Produce { topic, file, key, key_separator, headers, partition, acks, compression } => {
                let input = ProduceInput { file, key, key_separator, headers, partition, acks, compression };
                crate::records_cli::produce(client, &topic, input).await
            }
            TopicCommand::Consume { topic, partitions, offset, num, end, group } => {
                let wanted = crate::records_cli::ConsumeInput { partitions, offset, num, end, group };
                crate::records_cli::consume(client, &topic, wanted, format).await
            }
            command => execute(&client, command).await,
        }
    })
}

/// Connects, runs `work`, prints its outcome (table or JSON) and its refusals, and turns it
/// into the exit code: 0 done, 1 refused, 2 usage, 3 no broker.
pub fn run_with_client<F, Fut>(connect: Connect, work: F) -> ExitCode
where
    F: FnOnce(std::rc::Rc<Client>) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome, Error>>,
{
    let format = connect.format;
    let result = crate::client::block_on(async move {
        let mut config = ClientConfig::new(&connect.brokers);
        config.request_timeout = Duration::from_secs(connect.timeout.max(1));
        let client = std::rc::Rc::new(Client::connect(config).await?);
        work(client).await
    });
    match result {
        Ok(outcome) => {
            match format {
                OutputFormat::Table => print!("{}", outcome.table),
                OutputFormat::Json if outcome.json.is_null() => {}
                OutputFormat::Json => println!("{}", outcome.json),
            }
            for failure in &outcome.failures {
                eprintln!("corelog: {failure}");
            }
            if outcome.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(error) => crate::client::report(&error),
    }
}

async fn execute(client: &Client, command: TopicCommand) -> Result<Outcome, Error> {
    match command {
        TopicCommand::Create { topics, partitions, replicas, configs, dry_run } => {
            let specs: Vec<NewTopic> = topics
                .iter()
                .map(|name| NewTopic {
                    name: name.clone(),
                    partitions,
                    replication_factor: replicas,
                    configs: configs.clone(),
                })
                .collect();
            let results = client.create_topics(&specs, dry_run).await?;
            Ok(per_topic(results, if dry_run { "valid" } else { "created" }))
        }
        TopicCommand::List { internal } => {
            let topics: Vec<TopicInfo> =
                client.list_topics().await?.into_iter().filter(|t| internal || !t.internal).collect();
            let rows: Vec<Vec<String>> = topics
                .iter()
                .map(|t| vec![t.name.clone(), t.partitions.len().to_string(), replicas(t).to_string()])
                .collect();
            let json: Vec<Value> = topics
                .iter()
                .map(|t| {
                    json!({"name": t.name, "id": t.id, "partitions": t.partitions.len(),
                           "replicas": replicas(t), "internal": t.internal})
                })
                .collect();
            Ok(Outcome::ok(table(&["NAME", "PARTITIONS", "REPLICAS"], &rows), Value::Array(json)))
        }
        TopicCommand::Describe { topic } => describe(client, &topic).await,
        TopicCommand::Delete { topics } => Ok(per_topic(client.delete_topics(&topics).await?, "deleted")),
        TopicCommand::AlterConfig { topic, set, delete } => {
            if set.is_empty() && delete.is_empty() {
                return Err(Error::Invalid("nothing to change: give --set KEY=VALUE or --delete KEY".into()));
            }
            client.alter_topic_config(&topic, &set, &delete).await?;
            let changed: Vec<Vec<String>> = set
                .iter()
                .map(|(k, v)| vec![k.clone(), v.clone()])
                .chain(delete.iter().map(|k| vec![k.clone(), "(default)".into()]))
                .collect();
            let json = json!({"topic": topic, "set": set.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
                              "deleted": delete});
            Ok(Outcome::ok(table(&["KEY", "VALUE"], &changed), json))
        }
        TopicCommand::AddPartitions { topic, num } => {
            if num < 1 {
                return Err(Error::Invalid("--num must be at least 1".into()));
            }
            let before = client.topic(&topic).await?.partitions.len() as i32;
            let total = before.saturating_add(num);
            client.add_partitions(&topic, total).await?;
            let json = json!({"topic": topic, "partitions_before": before, "partitions": total});
            Ok(Outcome::ok(table(&["TOPIC", "PARTITIONS"], &[vec![topic, format!("{before} -> {total}")]]), json))
        }
        TopicCommand::Produce { .. } | TopicCommand::Consume { .. } => {
            Err(Error::Invalid("produce and consume run on their own".into()))
        }
        TopicCommand::Trim { topic, offset, partitions } => {
            let offset: i64 = match offset.as_str() {
                "end" => -1,
                text => text.parse().ok().filter(|o: &i64| *o >= 0).ok_or_else(|| {
                    Error::Invalid(format!("--offset must be an offset (>= 0) or `end`, not `{text}`"))
                })?,
            };
            let info = client.topic(&topic).await?;
            let partitions: Vec<i32> =
                if partitions.is_empty() { info.partitions.iter().map(|p| p.partition).collect() } else { partitions };
            let targets: Vec<(i32, i64)> = partitions.iter().map(|p| (*p, offset)).collect();
            let results = client.trim(&topic, &targets).await?;
            let mut outcome = Outcome::ok(String::new(), Value::Null);
            let mut rows = Vec::new();
            let mut json = Vec::new();
            for (partition, result) in results {
                match result {
                    Ok(start) => {
                        rows.push(vec![partition.to_string(), start.to_string()]);
                        json.push(json!({"partition": partition, "log_start_offset": start, "error": null}));
                    }
                    Err(error) => {
                        rows.push(vec![partition.to_string(), error_name(&error)]);
                        json.push(json!({"partition": partition, "error": error_json(&error)}));
                        outcome.failures.push(format!("trim {topic}-{partition}: {}", with_hint(&error)));
                    }
                }
            }
            outcome.table = table(&["PARTITION", "LOG-START-OFFSET"], &rows);
            outcome.json = json!({"topic": topic, "partitions": json});
            Ok(outcome)
        }
    }
}

async fn describe(client: &Client, topic: &str) -> Result<Outcome, Error> {
    let info = client.topic(topic).await?;
    let all: Vec<i32> = info.partitions.iter().map(|p| p.partition).collect();
    let starts = client.list_offsets(topic, &all, EARLIEST).await?;
    let ends = client.list_offsets(topic, &all, LATEST).await?;
    let configs = client.topic_configs(topic).await?;
    let offset = |map: &std::collections::BTreeMap<i32, Result<i64, Error>>, p: i32| match map.get(&p) {
        Some(Ok(offset)) => Some(*offset),
        _ => None,
    };
    let show = |o: Option<i64>| o.map_or_else(|| "-".to_string(), |o| o.to_string());
    let mut out = table(
        &["NAME", "ID", "PARTITIONS", "REPLICAS", "INTERNAL"],
        &[vec![
            info.name.clone(),
            info.id.clone(),
            info.partitions.len().to_string(),
            replicas(&info).to_string(),
            info.internal.to_string(),
        ]],
    );
    let rows: Vec<Vec<String>> = info
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                p.leader.to_string(),
                p.leader_epoch.to_string(),
                join(&p.replicas),
                join(&p.isr),
                show(offset(&starts, p.partition)),
                show(offset(&ends, p.partition)),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &["PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR", "LOG-START-OFFSET", "HIGH-WATERMARK"],
        &rows,
    ));
    let config_rows: Vec<Vec<String>> =
        configs.iter().map(|c| vec![c.name.clone(), config_value(c), c.source.to_string()]).collect();
    out.push('\n');
    out.push_str(&table(&["KEY", "VALUE", "SOURCE"], &config_rows));
    let json = json!({
        "name": info.name, "id": info.id, "internal": info.internal,
        "partitions": info.partitions.iter().map(|p| json!({
            "partition": p.partition, "leader": p.leader, "leader_epoch": p.leader_epoch,
            "replicas": p.replicas, "isr": p.isr,
            "log_start_offset": offset(&starts, p.partition), "high_watermark": offset(&ends, p.partition),
        })).collect::<Vec<_>>(),
        "configs": configs.iter().map(|c| json!({
            "name": c.name, "value": if c.sensitive { None } else { c.value.clone() }, "source": c.source,
            "read_only": c.read_only, "sensitive": c.sensitive,
        })).collect::<Vec<_>>(),
    });
    Ok(Outcome::ok(out, json))
}

fn config_value(config: &ConfigEntry) -> String {
    if config.sensitive { "(sensitive)".into() } else { config.value.clone().unwrap_or_else(|| "(null)".into()) }
}

fn replicas(topic: &TopicInfo) -> usize {
    topic.partitions.first().map_or(0, |p| p.replicas.len())
}

fn join(ids: &[i32]) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// One line per topic: done, or the Kafka error.
fn per_topic(results: Vec<(String, Result<(), Error>)>, done: &str) -> Outcome {
    per_item("topic", results, done)
}

/// One line per item (`kind`: "topic", "group"): done, or the Kafka error.
pub fn per_item(kind: &str, results: Vec<(String, Result<(), Error>)>, done: &str) -> Outcome {
    let mut outcome = Outcome::ok(String::new(), Value::Null);
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for (item, result) in results {
        match result {
            Ok(()) => {
                rows.push(vec![item.clone(), done.to_string()]);
                json.push(json!({kind: item, "error": null}));
            }
            Err(error) => {
                rows.push(vec![item.clone(), error_name(&error)]);
                json.push(json!({kind: item, "error": error_json(&error)}));
                outcome.failures.push(format!("{item}: {}", with_hint(&error)));
            }
        }
    }
    outcome.table = table(&[&kind.to_uppercase(), "STATUS"], &rows);
    outcome.json = Value::Array(json);
    outcome
}

fn error_name(error: &Error) -> String {
    match error {
        Error::Kafka { name, .. } => name.clone(),
        other => other.to_string(),
    }
}

fn error_json(error: &Error) -> Value {
    match error {
        Error::Kafka { code, name, description, message, .. } => {
            json!({"code": code, "name": name, "message": message.clone().unwrap_or_else(|| description.clone())})
        }
        other => json!({"code": null, "name": null, "message": other.to_string()}),
    }
}

/// The error, and what to do about it.
pub fn with_hint(error: &Error) -> String {
    let hint = match error.code() {
        Some(36) => "choose another name, or look at it with `corelog topic describe`",
        Some(3) => "check the name with `corelog topic list`",
        Some(37) => "give a partition count above the current one (or above 0 for a new topic)",
        Some(38) => "use --replicas 1 on a single broker (or at most the broker count)",
        Some(40) => "check the key and value against `corelog topic describe`",
        Some(17) => "topic names are 1 to 249 characters of [a-zA-Z0-9._-], not `.` or `..`",
        Some(29) | Some(31) => "this client is not allowed to do that: check the broker's ACLs",
        Some(7) => "the broker took too long: retry, or raise --timeout",
        Some(41) => "the request went to a broker that is not the controller: retry",
        Some(35) => "the broker does not support this request version",
        _ => "",
    };
    if hint.is_empty() { error.to_string() } else { format!("{error} (what to do: {hint})") }
}

/// Columns left-aligned, two spaces apart (the hardware commands' tables).
pub use corelog_hardware::cli::render_table as table;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_key_value_pairs() {
        assert_eq!(key_value("retention.ms=1000"), Ok(("retention.ms".into(), "1000".into())));
        assert_eq!(key_value("cleanup.policy=compact,delete").unwrap().1, "compact,delete");
        assert!(key_value("=1").is_err());
        assert!(key_value("retention.ms").is_err());
    }

    #[test]
    fn kafka_errors_are_named_and_come_with_what_to_do() {
        let error = Error::kafka("CreateTopics", 36, None);
        assert_eq!(error_name(&error), "TOPIC_ALREADY_EXISTS");
        let line = with_hint(&error);
        assert!(line.starts_with("CreateTopics: TOPIC_ALREADY_EXISTS: "), "{line}");
        assert!(line.contains("what to do"), "{line}");
    }
}
