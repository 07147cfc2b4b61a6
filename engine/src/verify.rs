//! The exactly-once checker: every distinct input id appears exactly once in the output.
//!
//! Reads input and output topics `read_committed` to their ends. On brokers that show aborted
//! records to such readers, pass the engines' transaction journals: output records whose
//! `breadcrumb-txn` header names a transaction not journaled as committed are then ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use breadcrumb_schemas::{build_decoder, Envelope, RawRecord};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::headers;
use crate::journal;
use crate::runtime::base_client_config;
use crate::runtime::context::EndOfPartitionContext;

/// What `verify` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Input records read.
    pub input_records: u64,
    /// Distinct ids among the decodable input records.
    pub distinct_input_ids: u64,
    /// Input records that do not decode (they belong in the dead-letter topic).
    pub undecodable_input: u64,
    /// Output records read (committed ones, when journals are given).
    pub output_records: u64,
    /// Output records ignored as belonging to aborted transactions.
    pub aborted_output_records: u64,
    /// Input ids missing from the output.
    pub lost: Vec<String>,
    /// Ids found more than once in the output, with their count.
    pub duplicated: Vec<(String, u64)>,
    /// Output ids that no input record carries.
    pub unexpected: Vec<String>,
}

impl Report {
    pub fn exactly_once(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.unexpected.is_empty()
    }
}

/// Reads every record of `topic` (all partitions, from the start to the end at call time).
pub fn read_topic(
    client_config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<OwnedMessage>> {
    let mut config = client_config.clone();
    config
        .set(
            "group.id",
            format!("breadcrumb-verify-{}", rand::random::<u32>()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer<EndOfPartitionContext> =
        config.create_with_context(EndOfPartitionContext)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic)
        .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
        .collect();
    if partitions.is_empty() {
        return Err(EngineError::Topic {
            topic: topic.to_owned(),
            reason: "does not exist".to_owned(),
        });
    }
    let mut assignment = TopicPartitionList::new();
    let mut open = BTreeSet::new();
    for partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *partition, Duration::from_secs(10))?;
        if high > low {
            assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
            open.insert(*partition);
        }
    }
    if open.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    while !open.is_empty() {
        if Instant::now() > deadline {
            return Err(EngineError::Topic {
                topic: topic.to_owned(),
                reason: format!("not read to its end within {timeout:?}"),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => records.push(message.detach()),
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
            }
            Some(Err(error)) => return Err(error.into()),
            None => {}
        }
    }
    Ok(records)
}

fn header_text(message: &OwnedMessage, name: &str) -> Option<String> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .filter(|header| header.key == name)
            .last()
            .and_then(|header| header.value)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    })
}

/// Decodes `message` with `decoder`, returning its id.
fn decoded_id(
    decoder: &dyn breadcrumb_schemas::Decoder,
    message: &OwnedMessage,
    envelope: &mut Envelope,
) -> Option<String> {
    let header_pairs: Vec<(&str, Option<&[u8]>)> = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| (header.key, header.value))
                .collect()
        })
        .unwrap_or_default();
    let record = RawRecord {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key(),
        value: message.payload(),
        headers: &header_pairs,
    };
    envelope.clear();
    decoder.decode(&record, envelope).ok()?;
    Some(envelope.id.clone())
}

/// Checks one pipeline of `config`.
pub fn verify(
    config: &EngineConfig,
    pipeline_name: &str,
    journals: &[PathBuf],
    timeout: Duration,
) -> Result<Report> {
    let pipeline = config.pipelines.get(pipeline_name).ok_or_else(|| {
        EngineError::Config(vec![format!("pipelines.{pipeline_name}: no such pipeline")])
    })?;
    if pipeline.sampling.is_some() {
        // A sample is not meant to hold every input: its check is the decision records.
        return Err(EngineError::Config(vec![format!(
            "pipelines.{pipeline_name}: verify checks that every input id leaves exactly once, \
             which a sampling pipeline does not promise"
        )]));
    }
    let client_config = base_client_config(config);
    let decoder = build_decoder(&pipeline.decoder).map_err(|error| {
        EngineError::Config(vec![format!("pipelines.{pipeline_name}.decoder.{error}")])
    })?;
    let mut envelope = Envelope::default();
    let mut report = Report::default();

    let mut input_ids: BTreeSet<String> = BTreeSet::new();
    for topic in &pipeline.input_topics {
        for message in read_topic(&client_config, topic, timeout)? {
            report.input_records += 1;
            match decoded_id(decoder.as_ref(), &message, &mut envelope) {
                Some(id) => {
                    input_ids.insert(id);
                }
                None => report.undecodable_input += 1,
            }
        }
    }
    report.distinct_input_ids = input_ids.len() as u64;

    let mut committed: Option<BTreeMap<String, bool>> = None;
    for path in journals {
        let (outcomes, _) = journal::read(path)?;
        committed.get_or_insert_with(BTreeMap::new).extend(outcomes);
    }
    let mut output_counts: HashMap<String, u64> = HashMap::new();
    for message in read_topic(&client_config, &pipeline.output_topic, timeout)? {
        if let Some(outcomes) = &committed {
            let transaction = header_text(&message, headers::TRANSACTION).unwrap_or_default();
            if outcomes.get(&transaction) != Some(&true) {
                report.aborted_output_records += 1;
                continue;
            }
        }
        report.output_records += 1;
        let id = decoded_id(decoder.as_ref(), &message, &mut envelope).unwrap_or_default();
        *output_counts.entry(id).or_default() += 1;
    }
    for id in &input_ids {
        if !output_counts.contains_key(id) {
            report.lost.push(id.clone());
        }
    }
    let mut duplicated: Vec<(String, u64)> = output_counts
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, count)| (id.clone(), *count))
        .collect();
    duplicated.sort();
    report.duplicated = duplicated;
    let mut unexpected: Vec<String> = output_counts
        .keys()
        .filter(|id| !input_ids.contains(*id))
        .cloned()
        .collect();
    unexpected.sort();
    report.unexpected = unexpected;
    Ok(report)
}
