//! `corelog topic produce` and `corelog topic consume`: records in and out through
//! corelog's own client.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use corelog_client::consumer::{Consumer, ConsumerConfig, StartAt};
use corelog_client::group_consumer::GroupConsumer;
use corelog_client::membership::GroupConfig;
use corelog_client::producer::{Delivery, Producer, ProducerConfig, now_ms};
use corelog_client::{Client, Error};
use futures_lite::StreamExt;
use serde_json::{Value, json};

use crate::cluster::OutputFormat;
use crate::topic::{Outcome, ProduceInput, table, with_hint};

/// Lines read on their own thread, so the executor keeps sending while input trickles in.
fn lines(file: Option<std::path::PathBuf>) -> Result<futures_channel::mpsc::Receiver<String>, Error> {
    let reader: Box<dyn BufRead + Send> = match &file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let (mut tx, rx) = futures_channel::mpsc::channel(1024);
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let ready = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| tx.poll_ready(cx)));
            if ready.is_err() || tx.start_send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

pub async fn produce(client: Rc<Client>, topic: &str, input: ProduceInput) -> Result<Outcome, Error> {
    let acks = match input.acks.as_str() {
        "all" | "-1" => -1,
        "1" => 1,
        "0" => 0,
        other => return Err(Error::Invalid(format!("--acks must be all, 1 or 0, not `{other}`"))),
    };
    let deliveries: Rc<RefCell<Vec<Delivery>>> = Rc::default();
    let sink = Rc::clone(&deliveries);
    let config = ProducerConfig { acks, idempotent: acks == -1, codec: input.compression, ..ProducerConfig::default() };
    let producer =
        Producer::new(client, config, Box::new(move |_, delivery| sink.borrow_mut().push(delivery.clone()))).await?;
    let headers: Vec<(String, Option<Bytes>)> =
        input.headers.iter().map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone())))).collect();
    let mut lines = lines(input.file)?;
    let mut sent = 0u64;
    while let Some(line) = lines.next().await {
        let (key, value) = match (&input.key_separator, &input.key) {
            (Some(separator), _) => match line.split_once(separator.as_str()) {
                Some((key, value)) => (Some(key.to_string()), value.to_string()),
                None => (None, line),
            },
            (None, key) => (key.clone(), line),
        };
        producer
            .send(
                topic,
                input.partition,
                key.as_deref().map(str::as_bytes),
                Some(value.as_bytes()),
                &headers,
                now_ms(),
                sent,
            )
            .await?;
        sent += 1;
    }
    producer.flush().await;
    let deliveries = deliveries.borrow();
    // Per partition: records, first and last offset.
    let mut partitions: BTreeMap<i32, (u64, i64, i64)> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for delivery in deliveries.iter() {
        match &delivery.error {
            None => {
                let entry = partitions.entry(delivery.partition).or_insert((0, i64::MAX, -1));
                entry.0 += 1;
                if delivery.offset >= 0 {
                    entry.1 = entry.1.min(delivery.offset);
                    entry.2 = entry.2.max(delivery.offset);
                }
            }
            Some(error) => *errors.entry(with_hint(error)).or_default() += 1,
        }
    }
    let show = |o: i64| if o < 0 || o == i64::MAX { "-".to_string() } else { o.to_string() };
    let rows: Vec<Vec<String>> = partitions
        .iter()
        .map(|(p, (count, first, last))| vec![p.to_string(), count.to_string(), show(*first), show(*last)])
        .collect();
    let json = json!({
        "topic": topic,
        "records": sent,
        "failed": errors.values().sum::<u64>(),
        "partitions": partitions.iter().map(|(p, (count, first, last))| json!({
            "partition": p, "records": count,
            "first_offset": (*first != i64::MAX && *first >= 0).then_some(*first),
            "last_offset": (*last >= 0).then_some(*last),
        })).collect::<Vec<_>>(),
    });
    let failures = errors.into_iter().map(|(error, count)| format!("{count} records not produced: {error}")).collect();
    Ok(Outcome { table: table(&["PARTITION", "RECORDS", "FIRST-OFFSET", "LAST-OFFSET"], &rows), json, failures })
}

fn start_at(text: &str) -> Result<StartAt, Error> {
    match text {
        "earliest" | "start" => Ok(StartAt::Earliest),
        "latest" | "end" => Ok(StartAt::Latest),
        text => {
            if let Some(time) = text.strip_prefix('@') {
                time.parse().map(StartAt::Timestamp).map_err(|_| Error::Invalid(format!("bad time in --offset {text}")))
            } else {
                text.parse::<i64>().ok().filter(|o| *o >= 0).map(StartAt::Offset).ok_or_else(|| {
                    Error::Invalid(format!("--offset must be earliest, latest, an offset or @TIME, not `{text}`"))
                })
            }
        }
    }
}

fn text(bytes: &Option<Bytes>) -> Value {
    bytes.as_ref().map_or(Value::Null, |b| Value::String(String::from_utf8_lossy(b).into_owned()))
}

/// What `topic consume` reads, and until when.
pub struct ConsumeInput {
    pub partitions: Vec<i32>,
    pub offset: String,
    pub num: Option<usize>,
    pub end: bool,
    pub group: Option<String>,
}

/// Assigned partitions, or a group member's.
enum Reader {
    Assigned(Consumer),
    Member(GroupConsumer),
}

impl Reader {
    async fn poll(&self) -> Result<Vec<corelog_client::consumer::Consumed>, Error> {
        match self {
            Reader::Assigned(consumer) => consumer.poll().await,
            Reader::Member(member) => member.poll().await,
        }
    }

    fn caught_up(&self) -> bool {
        match self {
            Reader::Assigned(consumer) => consumer.caught_up(),
            Reader::Member(member) => member.caught_up(),
        }
    }

    /// The group generation the partitions belong to (0 without a group).
    fn generation(&self) -> i32 {
        match self {
            Reader::Assigned(_) => 0,
            Reader::Member(member) => member.membership().generation(),
        }
    }

    /// A member commits what has been printed: the offset after the last printed record of
    /// each partition (a poll's records may be printed only in part, with --num).
    async fn commit(&self, printed: &BTreeMap<(Rc<str>, i32), i64>) -> Result<(), Error> {
        match self {
            Reader::Assigned(_) => Ok(()),
            Reader::Member(member) => {
                let offsets: Vec<(String, i32, i64)> =
                    printed.iter().map(|((topic, partition), next)| (topic.to_string(), *partition, *next)).collect();
                member.membership().commit(&offsets).await
            }
        }
    }
}

pub async fn consume(
    client: Rc<Client>,
    topic: &str,
    input: ConsumeInput,
    format: OutputFormat,
) -> Result<Outcome, Error> {
    let ConsumeInput { partitions, offset, num, end, group } = input;
    let start = start_at(&offset)?;
    let config = ConsumerConfig { max_wait: Duration::from_millis(500), ..ConsumerConfig::default() };
    let reader = match group {
        Some(group) => {
            if !matches!(start, StartAt::Earliest | StartAt::Latest) {
                return Err(Error::Invalid(
                    "with --group, --offset is earliest or latest (where a partition with no committed offset starts)"
                        .into(),
                ));
            }
            let topics = [topic.to_string()];
            Reader::Member(GroupConsumer::new(client, config, GroupConfig::new(&group), &topics, start))
        }
        None => {
            let consumer = Consumer::new(client, config);
            consumer.assign(topic, &partitions, start).await?;
            Reader::Assigned(consumer)
        }
    };
    let printed = print_records(&reader, num, end, format).await;
    // A member leaves whatever happened (it committed what it printed), so its partitions
    // move on at once.
    let left = match &reader {
        Reader::Member(member) => member.leave().await,
        Reader::Assigned(_) => Ok(()),
    };
    printed?;
    left?;
    Ok(Outcome { table: String::new(), json: Value::Null, failures: Vec::new() })
}

async fn print_records(reader: &Reader, num: Option<usize>, end: bool, format: OutputFormat) -> Result<(), Error> {
    let mut count = 0usize;
    let stdout = std::io::stdout();
    let mut printed: BTreeMap<(Rc<str>, i32), i64> = BTreeMap::new();
    let mut generation = reader.generation();
    let result = 'polling: loop {
        if num.is_some_and(|n| count >= n) || (end && reader.caught_up()) {
            break Ok(());
        }
        let records = match reader.poll().await {
            Ok(records) => records,
            Err(error) => break Err(error),
        };
        if reader.generation() != generation {
            // A rebalance: the partitions may have moved (the member committed what it had
            // read before giving them up); offsets printed before are not this member's to
            // commit any more.
            printed.clear();
            generation = reader.generation();
        }
        let mut out = stdout.lock();
        for consumed in records {
            let record = &consumed.record;
            let written = match format {
                OutputFormat::Table => {
                    let value = record.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned());
                    writeln!(out, "{}", value.unwrap_or_default())
                }
                OutputFormat::Json => {
                    let headers: Vec<Value> =
                        record.headers.iter().map(|(k, v)| json!({"key": k, "value": text(v)})).collect();
                    let line = json!({
                        "topic": &*consumed.topic, "partition": consumed.partition, "offset": record.offset,
                        "timestamp": record.timestamp, "key": text(&record.key), "value": text(&record.value),
                        "headers": headers,
                    });
                    writeln!(out, "{line}")
                }
            };
            if written.is_err() {
                break 'polling Ok(()); // the reader went away (a closed pipe)
            }
            printed.insert((Rc::clone(&consumed.topic), consumed.partition), record.offset + 1);
            count += 1;
            if num.is_some_and(|n| count >= n) {
                break;
            }
        }
        let _ = out.flush();
        drop(out);
        if let Err(error) = commit_printed(reader, &mut printed).await {
            break Err(error);
        }
    };
    // What was printed before a failure or a closed pipe is committed too.
    let committed = commit_printed(reader, &mut printed).await;
    result.and(committed)
}

/// Commits the offsets printed since the last commit, if any. A group that moved on (a
/// rebalance this member has not followed yet) refuses them: no error, the member rejoins
/// at its next poll, and those records go to the partitions' next owner again.
async fn commit_printed(reader: &Reader, printed: &mut BTreeMap<(Rc<str>, i32), i64>) -> Result<(), Error> {
    if printed.is_empty() {
        return Ok(());
    }
    match reader.commit(printed).await {
        Err(error) if !error.code().is_some_and(corelog_client::membership::group_moved_on) => return Err(error),
        _ => {}
    }
    printed.clear();
    Ok(())
}
