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
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::headers;
use crate::journal;
use crate::ledger::{
    id_hash, EntryKey, LedgerEntry, LedgerReport, Observable, Observed, LEDGER_FORMAT_VERSION,
};
use crate::raw_headers::read_headers;
use crate::runtime::base_client_config;
use crate::runtime::context::EndOfPartitionContext;
use crate::topics::partition_counts;

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
    /// Input ids found only in the dead-letter topic (every copy rejected: accounted for, not
    /// lost).
    pub dead_lettered_ids: u64,
    /// Input ids missing from the output and the dead-letter topic.
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

    /// The report `breadcrumb verify` prints (the fault suites' verifier parses it): the
    /// totals, up to 20 examples of each kind, the counts and the verdict, one line each.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "input: {} records, {} distinct ids, {} undecodable",
            self.input_records, self.distinct_input_ids, self.undecodable_input
        );
        let _ = writeln!(
            text,
            "output: {} committed records ({} from aborted transactions ignored)",
            self.output_records, self.aborted_output_records
        );
        let _ = writeln!(
            text,
            "dead-lettered: {} input ids had every copy sent to the dead-letter topic",
            self.dead_lettered_ids
        );
        for id in self.lost.iter().take(20) {
            let _ = writeln!(text, "lost: {id}");
        }
        for (id, count) in self.duplicated.iter().take(20) {
            let _ = writeln!(text, "duplicated: {id} ({count} times)");
        }
        for id in self.unexpected.iter().take(20) {
            let _ = writeln!(text, "unexpected: {id}");
        }
        let _ = writeln!(
            text,
            "lost {}, duplicated {}, unexpected {}",
            self.lost.len(),
            self.duplicated.len(),
            self.unexpected.len()
        );
        let verdict = if self.exactly_once() { "yes" } else { "NO" };
        let _ = writeln!(text, "exactly once: {verdict}");
        text
    }

    /// Fills `lost`, `duplicated`, `unexpected` and `dead_lettered_ids` from the distinct input
    /// ids, the committed output ids with their counts, and the ids found (committed) in the
    /// dead-letter topic.
    pub fn tally(
        &mut self,
        input_ids: &BTreeSet<String>,
        output_counts: &HashMap<String, u64>,
        dead_lettered: &BTreeSet<String>,
    ) {
        for id in input_ids {
            if !output_counts.contains_key(id) {
                if dead_lettered.contains(id) {
                    self.dead_lettered_ids += 1;
                } else {
                    self.lost.push(id.clone());
                }
            }
        }
        let mut duplicated: Vec<(String, u64)> = output_counts
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(id, count)| (id.clone(), *count))
            .collect();
        duplicated.sort();
        self.duplicated = duplicated;
        let mut unexpected: Vec<String> = output_counts
            .keys()
            .filter(|id| !input_ids.contains(*id))
            .cloned()
            .collect();
        unexpected.sort();
        self.unexpected = unexpected;
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
    let mut pairs: Vec<(&str, Option<&[u8]>)> = Vec::new();
    read_headers(message.headers()?.as_borrowed(), &mut pairs);
    pairs
        .into_iter()
        .rfind(|(key, _)| *key == name)
        .and_then(|(_, value)| value)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// Decodes `message` with `decoder`, returning its id.
fn decoded_id(
    decoder: &dyn breadcrumb_schemas::Decoder,
    message: &OwnedMessage,
    envelope: &mut Envelope,
) -> Option<String> {
    let mut header_pairs: Vec<(&str, Option<&[u8]>)> = Vec::new();
    if let Some(headers) = message.headers() {
        if read_headers(headers.as_borrowed(), &mut header_pairs) > 0 {
            // The engine dead-letters such a record before decoding it.
            return None;
        }
    }
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

    let committed = committed_transactions(journals)?;
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
    let mut dead_lettered: BTreeSet<String> = BTreeSet::new();
    for message in read_topic(&client_config, &config.dead_letter_topic(), timeout)? {
        if header_text(&message, headers::DLQ_PIPELINE).as_deref() != Some(pipeline_name)
            || committed_transaction(&message, &committed).is_none()
        {
            continue;
        }
        if let Some(id) = decoded_id(decoder.as_ref(), &message, &mut envelope) {
            dead_lettered.insert(id);
        }
    }
    report.tally(&input_ids, &output_counts, &dead_lettered);
    Ok(report)
}

/// Committed transactions of the journals; `None` without journals (every record counts).
fn committed_transactions(journals: &[PathBuf]) -> Result<Option<BTreeMap<String, bool>>> {
    let mut committed: Option<BTreeMap<String, bool>> = None;
    for path in journals {
        let (outcomes, _) = journal::read(path)?;
        committed.get_or_insert_with(BTreeMap::new).extend(outcomes);
    }
    Ok(committed)
}

/// The transaction of `message`, if it committed (always, without journals).
fn committed_transaction(
    message: &OwnedMessage,
    committed: &Option<BTreeMap<String, bool>>,
) -> Option<String> {
    let transaction = header_text(message, headers::TRANSACTION)?;
    match committed {
        Some(outcomes) if outcomes.get(&transaction) != Some(&true) => None,
        _ => Some(transaction),
    }
}

/// A ledger record read at `partition`:`offset` of the ledger topic; the violation to report
/// when it does not parse or has a version this build does not know.
fn parse_ledger_record(
    payload: &[u8],
    partition: i32,
    offset: i64,
) -> std::result::Result<LedgerEntry, String> {
    match serde_json::from_slice::<LedgerEntry>(payload) {
        // Version 1 records read as version 2 ones without side input.
        Ok(entry) if !(1..=LEDGER_FORMAT_VERSION).contains(&entry.version) => Err(format!(
            "ledger record at {partition}:{offset} has unknown version {}",
            entry.version
        )),
        Ok(entry) => Ok(entry),
        Err(error) => Err(format!(
            "ledger record at {partition}:{offset} does not parse: {error}"
        )),
    }
}

/// Source coordinates breadcrumb put on a record it published.
fn source_of(message: &OwnedMessage) -> Option<(String, i32, i64)> {
    Some((
        header_text(message, headers::SOURCE_TOPIC)?,
        header_text(message, headers::SOURCE_PARTITION)?
            .parse()
            .ok()?,
        header_text(message, headers::SOURCE_OFFSET)?.parse().ok()?,
    ))
}

/// Which tally a published record adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tally {
    Out,
    Duplicates,
    Conflicts,
    Late,
    Gaps,
    DeadLetters,
}

/// Checks a pipeline's reconciliation ledger against its topics: every committed input offset
/// in exactly one committed ledger range, each range's `in` equal to the input records in it,
/// the identity `in = out + ...` holding, and each count and the output digest equal to what
/// that transaction is seen to have published for that partition.
pub fn verify_ledger(
    config: &EngineConfig,
    pipeline_name: &str,
    journals: &[PathBuf],
    timeout: Duration,
) -> Result<LedgerReport> {
    let client_config = base_client_config(config);
    let committed = committed_transactions(journals)?;
    let committed_offsets = group_committed_offsets(config, pipeline_name, timeout)?;
    verify_ledger_over(
        config,
        pipeline_name,
        &committed,
        &committed_offsets,
        &mut |topic| read_topic(&client_config, topic, timeout),
    )
}

/// The engine group's committed offsets of the topics `pipeline_name` consumes.
fn group_committed_offsets(
    config: &EngineConfig,
    pipeline_name: &str,
    timeout: Duration,
) -> Result<BTreeMap<(String, i32), i64>> {
    let Some(pipeline) = config.pipelines.get(pipeline_name) else {
        return Ok(BTreeMap::new());
    };
    let mut consumed: Vec<String> = pipeline.input_topics.clone();
    consumed.extend(pipeline.span_topics.iter().cloned());
    if pipeline.repartition_by.is_some() {
        consumed.push(config.repartition_topic(pipeline_name));
    }
    let mut client_config = base_client_config(config);
    client_config
        .set("group.id", &config.application_id)
        .set("enable.auto.commit", "false");
    let mut request = TopicPartitionList::new();
    for (topic, partitions) in partition_counts(&client_config, &consumed)? {
        for partition in 0..partitions {
            request.add_partition(&topic, partition);
        }
    }
    let consumer: BaseConsumer = client_config.create()?;
    let mut committed = BTreeMap::new();
    for element in consumer.committed_offsets(request, timeout)?.elements() {
        if let Offset::Offset(offset) = element.offset() {
            committed.insert((element.topic().to_owned(), element.partition()), offset);
        }
    }
    Ok(committed)
}

/// [`verify_ledger`] over records read by `read_topic` (every record of a topic, as a
/// `read_committed` reader sees it), with the transactions' outcomes known (`committed`) or,
/// without journals, taken as committed, and the group's committed offsets (every input record
/// below them must be in a ledger range). The deterministic model tier reads its in-memory log.
pub fn verify_ledger_over(
    config: &EngineConfig,
    pipeline_name: &str,
    committed: &Option<BTreeMap<String, bool>>,
    committed_offsets: &BTreeMap<(String, i32), i64>,
    read_topic: &mut dyn FnMut(&str) -> Result<Vec<OwnedMessage>>,
) -> Result<LedgerReport> {
    let pipeline = config.pipelines.get(pipeline_name).ok_or_else(|| {
        EngineError::Config(vec![format!("pipelines.{pipeline_name}: no such pipeline")])
    })?;
    let decoder = build_decoder(&pipeline.decoder).map_err(|error| {
        EngineError::Config(vec![format!("pipelines.{pipeline_name}.decoder.{error}")])
    })?;
    let mut envelope = Envelope::default();

    let mut entries = Vec::new();
    let mut bad_records = Vec::new();
    for message in read_topic(&config.ledger_topic())? {
        if committed_transaction(&message, committed).is_none() {
            continue;
        }
        match parse_ledger_record(
            message.payload().unwrap_or_default(),
            message.partition(),
            message.offset(),
        ) {
            Ok(entry) => {
                if entry.pipeline == pipeline_name {
                    entries.push(entry);
                }
            }
            Err(bad) => bad_records.push(bad),
        }
    }

    let repartition_topic = pipeline
        .repartition_by
        .map(|_| config.repartition_topic(pipeline_name));
    let mut inputs: BTreeMap<(String, i32), Vec<i64>> = BTreeMap::new();
    let mut consumed: Vec<String> = pipeline.input_topics.clone();
    consumed.extend(pipeline.span_topics.iter().cloned());
    consumed.extend(repartition_topic.clone());
    // Where each original record went in the repartition topic: its outputs are attributed to
    // that partition of the stateful stage.
    let mut repartitioned_to: HashMap<(String, i32, i64), i32> = HashMap::new();
    let mut observed: HashMap<EntryKey, Observed> = HashMap::new();
    let mut unattributed = 0;
    for topic in &consumed {
        for message in read_topic(topic)? {
            inputs
                .entry((topic.clone(), message.partition()))
                .or_default()
                .push(message.offset());
            if Some(topic) == repartition_topic.as_ref() {
                let Some(source) = source_of(&message) else {
                    unattributed += 1;
                    continue;
                };
                // Lineage's span parts are side input, not re-keyed events: the ledger counts
                // them as `side_input`, which leaves nothing to observe on an output topic.
                if header_text(&message, headers::RECORD_KIND).as_deref()
                    == std::str::from_utf8(headers::KIND_SPANS).ok()
                {
                    continue;
                }
                repartitioned_to.insert(source.clone(), message.partition());
                if let Some(transaction) = committed_transaction(&message, committed) {
                    observed
                        .entry((transaction, source.0, source.1))
                        .or_default()
                        .repartitioned += 1;
                }
            }
        }
    }
    for offsets in inputs.values_mut() {
        offsets.sort_unstable();
    }

    let mut published: Vec<(String, Tally)> = vec![
        (pipeline.output_topic.clone(), Tally::Out),
        (pipeline.conflicts_topic(), Tally::Conflicts),
    ];
    if let Some(topic) = &pipeline.duplicates_topic {
        published.push((topic.clone(), Tally::Duplicates));
    }
    if let Some(topic) = pipeline.late_topic() {
        published.push((topic, Tally::Late));
    }
    if let Some(topic) = pipeline.gaps_topic() {
        published.push((topic, Tally::Gaps));
    }
    published.push((config.dead_letter_topic(), Tally::DeadLetters));
    for (topic, tally) in &published {
        for message in read_topic(topic)? {
            if *tally == Tally::DeadLetters
                && header_text(&message, headers::DLQ_PIPELINE).as_deref() != Some(pipeline_name)
            {
                continue;
            }
            let Some(transaction) = committed_transaction(&message, committed) else {
                continue;
            };
            let Some(source) = source_of(&message) else {
                // Gap records of a repartitioned pipeline name no source partition.
                if !(*tally == Tally::Gaps && repartition_topic.is_some()) {
                    unattributed += 1;
                }
                continue;
            };
            let key = match (&repartition_topic, repartitioned_to.get(&source)) {
                (Some(topic), Some(partition)) => (transaction, topic.clone(), *partition),
                _ => (transaction, source.0, source.1),
            };
            let found = observed.entry(key).or_default();
            match tally {
                Tally::Out => {
                    found.out += 1;
                    let id =
                        decoded_id(decoder.as_ref(), &message, &mut envelope).unwrap_or_default();
                    found.output_digest = found.output_digest.wrapping_add(id_hash(id.as_bytes()));
                }
                Tally::Duplicates => found.duplicates += 1,
                Tally::Conflicts => found.conflicts += 1,
                Tally::Late => found.late += 1,
                Tally::Gaps => found.gaps += 1,
                Tally::DeadLetters => found.dead_letters += 1,
            }
        }
    }
    let mut report = crate::ledger::check(
        &entries,
        &inputs,
        &observed,
        unattributed,
        Observable {
            duplicates: pipeline.duplicates_topic.is_some(),
            gaps: repartition_topic.is_none(),
        },
    );
    report.violations.extend(bad_records);
    report
        .violations
        .extend(crate::ledger::check_committed_coverage(
            &entries,
            &inputs,
            committed_offsets,
        ));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|id| (*id).to_owned()).collect()
    }

    fn counts(list: &[(&str, u64)]) -> HashMap<String, u64> {
        list.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect()
    }

    fn tallied(input: &[&str], output: &[(&str, u64)], dead_lettered: &[&str]) -> (Report, String) {
        let mut report = Report::default();
        report.tally(&ids(input), &counts(output), &ids(dead_lettered));
        let text = report.render();
        (report, text)
    }

    #[test]
    fn verify_passes_every_input_out_once_or_dead_lettered() {
        let (report, text) = tallied(&["a", "b", "c"], &[("a", 1), ("b", 1)], &["c"]);
        assert!(report.exactly_once(), "{text}");
        assert_eq!(report.dead_lettered_ids, 1);
        assert!(
            text.ends_with("lost 0, duplicated 0, unexpected 0\nexactly once: yes\n"),
            "{text}"
        );
    }

    #[test]
    fn verify_reports_a_lost_event() {
        let (report, text) = tallied(&["a", "b", "c"], &[("a", 1), ("b", 1)], &[]);
        assert_eq!(report.lost, vec!["c".to_owned()]);
        assert!(!report.exactly_once());
        assert!(text.contains("\nlost: c\n"), "{text}");
        assert!(text.contains("lost 1, duplicated 0, unexpected 0\nexactly once: NO\n"));
    }

    #[test]
    fn verify_reports_a_duplicated_output() {
        let (report, text) = tallied(&["a", "b"], &[("a", 1), ("b", 2)], &[]);
        assert_eq!(report.duplicated, vec![("b".to_owned(), 2)]);
        assert!(report.lost.is_empty() && report.unexpected.is_empty());
        assert!(text.contains("duplicated: b (2 times)"), "{text}");
        assert!(text.contains("lost 0, duplicated 1, unexpected 0\nexactly once: NO\n"));
    }

    #[test]
    fn verify_reports_an_output_no_input_carries() {
        let (report, text) = tallied(&["a"], &[("a", 1), ("z", 1)], &[]);
        assert_eq!(report.unexpected, vec!["z".to_owned()]);
        assert!(text.contains("lost 0, duplicated 0, unexpected 1\nexactly once: NO\n"));
    }

    #[test]
    fn verify_does_not_excuse_an_output_copy_by_a_dead_letter() {
        // Dead-lettered and also out twice: the dead letter accounts for nothing.
        let (report, _) = tallied(&["a"], &[("a", 2)], &["a"]);
        assert_eq!(report.duplicated, vec![("a".to_owned(), 2)]);
        assert_eq!(report.dead_lettered_ids, 0);
    }

    #[test]
    fn verify_ledger_rejects_unknown_versions_and_garbage() {
        let entry = crate::ledger::LedgerEntry {
            version: LEDGER_FORMAT_VERSION,
            pipeline: "p".into(),
            stage: crate::ledger::LedgerStage::Stateful,
            topic: "in".into(),
            partition: 0,
            first_offset: Some(0),
            last_offset: Some(0),
            transaction: "t:1".into(),
            counts: crate::ledger::LedgerCounts {
                input: 1,
                ..Default::default()
            },
            waiting_before: 0,
            waiting_after: 1,
        };
        let good = serde_json::to_vec(&entry).unwrap();
        assert_eq!(parse_ledger_record(&good, 0, 7), Ok(entry.clone()));
        let future = serde_json::to_vec(&crate::ledger::LedgerEntry {
            version: LEDGER_FORMAT_VERSION + 1,
            ..entry.clone()
        })
        .unwrap();
        assert_eq!(
            parse_ledger_record(&future, 0, 7),
            Err(format!(
                "ledger record at 0:7 has unknown version {}",
                LEDGER_FORMAT_VERSION + 1
            ))
        );
        let zero = String::from_utf8(good.clone()).unwrap().replace(
            &format!("\"version\":{LEDGER_FORMAT_VERSION}"),
            "\"version\":0",
        );
        assert!(parse_ledger_record(zero.as_bytes(), 1, 2)
            .unwrap_err()
            .contains("unknown version 0"));
        let extra = String::from_utf8(good)
            .unwrap()
            .replacen('{', "{\"forged\":1,", 1);
        assert!(parse_ledger_record(extra.as_bytes(), 1, 2)
            .unwrap_err()
            .starts_with("ledger record at 1:2 does not parse"));
        assert!(parse_ledger_record(b"not json", 1, 3).is_err());
    }
}
