//! The reconciliation ledger: with every transaction, one record per input partition it read,
//! written to the ledger topic in that same transaction, so the ledger is exactly as committed
//! as the output it describes.
//!
//! A record says which offsets were consumed and what became of them:
//!
//! `in = out + duplicates + conflicts + late + dead_letters + sampled_out + repartitioned
//!       + side_input + (waiting_after - waiting_before)`
//!
//! (`duplicates` includes ordering's repeats: both go to the duplicates topic; `waiting` counts
//! events an operator holds in state behind a gap; `repartitioned` is the first stage of a
//! repartitioned pipeline; `side_input` counts span records lineage keeps in state without
//! output of their own: a span batch at the first stage, each trace's part of it at the second).
//! Gap records are generated, not consumed, so they are counted but are
//! not part of the identity. `output_digest` is the wrapping sum of the xxh3-64 hashes of the
//! ids of the events published to the output topic: order-independent (transactions interleave
//! partitions and a checker reads them in any order) and, unlike XOR, not blind to an id
//! published twice (XOR cancels the pair; a sum adds its hash again).
//!
//! `breadcrumb verify --ledger` ([`check`]) compares the ledger with the topics.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Version of the ledger record format; readers reject versions they do not know. Version 2
/// added `side_input` (absent, so 0, in version 1 records).
pub const LEDGER_FORMAT_VERSION: u32 = 2;

/// Which stage of a pipeline consumed the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerStage {
    /// Decode and re-key into the repartition topic.
    Repartition,
    /// The operator chain.
    Stateful,
}

/// What one transaction did with one input partition (the open transaction's tallies).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCounts {
    /// Input records consumed.
    #[serde(rename = "in")]
    pub input: u64,
    /// Events published to the output topic (held ones released included).
    pub out: u64,
    /// Copies of an event already seen (dedupe duplicates and ordering repeats).
    pub duplicates: u64,
    /// Same id, different payload.
    pub conflicts: u64,
    /// Arrived after their gap was given up.
    pub late: u64,
    /// Gap records generated (not part of the identity: they are not input).
    pub gaps: u64,
    /// Sent to the dead-letter topic.
    pub dead_letters: u64,
    /// Dropped by a sampling decision (0 until a sampling operator exists).
    pub sampled_out: u64,
    /// Re-keyed into the repartition topic (first stage of a repartitioned pipeline).
    pub repartitioned: u64,
    /// Span records lineage keeps as side input: they leave no output of their own.
    #[serde(default)]
    pub side_input: u64,
    /// Wrapping sum of xxh3-64 of the output event ids.
    pub output_digest: u64,
}

impl LedgerCounts {
    /// Adds an output event id to the digest.
    pub fn add_output(&mut self, id: &[u8]) {
        self.out += 1;
        self.output_digest = self.output_digest.wrapping_add(id_hash(id));
    }

    /// Whether the transaction did anything with the partition.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Hash of one event id in the output digest.
pub fn id_hash(id: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id)
}

/// One ledger record (JSON on the ledger topic; `schemas/avro/ledger.avsc` describes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    pub version: u32,
    pub pipeline: String,
    pub stage: LedgerStage,
    /// The consumed topic and partition.
    pub topic: String,
    pub partition: i32,
    /// First and last offset consumed in the transaction; absent when the transaction only
    /// released held events of the partition (a processing-time timeout).
    pub first_offset: Option<i64>,
    pub last_offset: Option<i64>,
    /// The transaction (`breadcrumb-txn` of everything it published).
    pub transaction: String,
    #[serde(flatten)]
    pub counts: LedgerCounts,
    /// Events held in state for the partition when the transaction began and when it committed.
    pub waiting_before: u64,
    pub waiting_after: u64,
}

impl LedgerEntry {
    /// `in` minus everything it became; 0 when the record balances.
    pub fn imbalance(&self) -> i128 {
        let c = &self.counts;
        c.input as i128
            - (c.out + c.duplicates + c.conflicts + c.late + c.dead_letters) as i128
            - (c.sampled_out + c.repartitioned + c.side_input) as i128
            - (self.waiting_after as i128 - self.waiting_before as i128)
    }

    /// Ledger record key: the consumed partition, so one partition's records stay in order.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.pipeline, self.topic, self.partition)
    }
}

/// What `verify --ledger` found published by one transaction for one consumed partition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub out: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub late: u64,
    pub gaps: u64,
    pub dead_letters: u64,
    pub repartitioned: u64,
    pub output_digest: u64,
}

/// Which tallies the checker can observe: a pipeline without a duplicates topic counts
/// duplicates without publishing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observable {
    pub duplicates: bool,
    /// Gap records of a repartitioned pipeline name no source partition.
    pub gaps: bool,
}

/// The ledger check of one pipeline.
#[derive(Debug, Default, Clone)]
pub struct LedgerReport {
    /// One line per ledger record, in (topic, partition, offset) order.
    pub ranges: Vec<String>,
    /// Everything that does not reconcile.
    pub violations: Vec<String>,
    pub entries: u64,
    pub input_records: u64,
}

impl LedgerReport {
    pub fn consistent(&self) -> bool {
        self.violations.is_empty()
    }

    /// The report `breadcrumb verify --ledger` prints (the fault suites' verifier parses it):
    /// one line per range, one `violation: ` line per violation, the totals and the verdict.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut text = String::new();
        for line in &self.ranges {
            let _ = writeln!(text, "{line}");
        }
        for violation in &self.violations {
            let _ = writeln!(text, "violation: {violation}");
        }
        let _ = writeln!(
            text,
            "ledger: {} committed records over {} input records, {} violations",
            self.entries,
            self.input_records,
            self.violations.len()
        );
        let verdict = if self.consistent() { "yes" } else { "NO" };
        let _ = writeln!(text, "ledger consistent: {verdict}");
        text
    }
}

/// Identifies a ledger record: transaction, consumed topic, partition.
pub type EntryKey = (String, String, i32);

/// Checks committed ledger `entries` of a pipeline against the input offsets found per consumed
/// (topic, partition) and what each (transaction, topic, partition) was seen publishing.
/// Input offsets are those a `read_committed` reader sees, as the engine did.
pub fn check(
    entries: &[LedgerEntry],
    inputs: &BTreeMap<(String, i32), Vec<i64>>,
    observed: &HashMap<EntryKey, Observed>,
    unattributed: u64,
    observable: Observable,
) -> LedgerReport {
    let mut report = LedgerReport {
        entries: entries.len() as u64,
        input_records: inputs.values().map(|offsets| offsets.len() as u64).sum(),
        ..LedgerReport::default()
    };
    let mut by_partition: BTreeMap<(String, i32), Vec<&LedgerEntry>> = BTreeMap::new();
    let mut seen_keys: HashMap<EntryKey, usize> = HashMap::new();
    for entry in entries {
        by_partition
            .entry((entry.topic.clone(), entry.partition))
            .or_default()
            .push(entry);
        *seen_keys
            .entry((
                entry.transaction.clone(),
                entry.topic.clone(),
                entry.partition,
            ))
            .or_default() += 1;
    }
    for (key, count) in &seen_keys {
        if *count > 1 {
            report.violations.push(format!(
                "{} {}[{}]: {count} ledger records for one transaction",
                key.0, key.1, key.2
            ));
        }
    }
    for (key, _) in observed
        .iter()
        .filter(|(key, _)| !seen_keys.contains_key(*key))
    {
        report.violations.push(format!(
            "{} {}[{}]: committed output without a ledger record",
            key.0, key.1, key.2
        ));
    }
    if unattributed > 0 {
        report.violations.push(format!(
            "{unattributed} committed records name no consumed partition"
        ));
    }
    let no_offsets = Vec::new();
    for ((topic, partition), mut list) in by_partition {
        list.sort_by_key(|entry| entry.first_offset.unwrap_or(i64::MIN));
        let offsets = inputs
            .get(&(topic.clone(), partition))
            .unwrap_or(&no_offsets);
        let mut covered_until: Option<i64> = None;
        for entry in list {
            let found = observed
                .get(&(entry.transaction.clone(), topic.clone(), partition))
                .copied()
                .unwrap_or_default();
            let mut problems = Vec::new();
            let range = match (entry.first_offset, entry.last_offset) {
                (Some(first), Some(last)) => {
                    if last < first {
                        problems.push("empty offset range".to_owned());
                    }
                    if let Some(until) = covered_until {
                        if first <= until {
                            problems.push(format!("overlaps the range ending at {until}"));
                        } else {
                            let skipped = count_in(offsets, until + 1, first - 1);
                            if skipped > 0 {
                                problems.push(format!(
                                    "{skipped} input records between {} and {} in no range",
                                    until + 1,
                                    first - 1
                                ));
                            }
                        }
                    } else {
                        let skipped = count_in(offsets, i64::MIN, first - 1);
                        if skipped > 0 {
                            problems.push(format!(
                                "{skipped} input records before {first} in no range"
                            ));
                        }
                    }
                    covered_until = Some(covered_until.map_or(last, |until| until.max(last)));
                    let records = count_in(offsets, first, last);
                    if records != entry.counts.input {
                        problems.push(format!(
                            "in {} but {records} input records in the range",
                            entry.counts.input
                        ));
                    }
                    format!("{first}..={last}")
                }
                (None, None) => {
                    if entry.counts.input != 0 {
                        problems.push("records in, but no offset range".to_owned());
                    }
                    "(no input)".to_owned()
                }
                _ => {
                    problems.push("half an offset range".to_owned());
                    "?".to_owned()
                }
            };
            if entry.imbalance() != 0 {
                problems.push(format!("identity off by {}", entry.imbalance()));
            }
            let c = &entry.counts;
            let mut compare = |name: &str, claimed: u64, seen: u64| {
                if claimed != seen {
                    problems.push(format!("{name} {claimed} but {seen} found"));
                }
            };
            compare("out", c.out, found.out);
            if observable.duplicates {
                compare("duplicates", c.duplicates, found.duplicates);
            }
            compare("conflicts", c.conflicts, found.conflicts);
            compare("late", c.late, found.late);
            if observable.gaps {
                compare("gaps", c.gaps, found.gaps);
            }
            compare("dead letters", c.dead_letters, found.dead_letters);
            compare("repartitioned", c.repartitioned, found.repartitioned);
            if c.output_digest != found.output_digest {
                problems.push(format!(
                    "output digest {:016x} but {:016x} found",
                    c.output_digest, found.output_digest
                ));
            }
            let line = format!(
                "{topic}[{partition}] {range} {}: in {} = out {} + dup {} + conf {} + late {} + dl {} + sampled {} + repart {} + side {} + waiting {:+}; gaps {}; digest {:016x}: {}",
                entry.transaction,
                c.input,
                c.out,
                c.duplicates,
                c.conflicts,
                c.late,
                c.dead_letters,
                c.sampled_out,
                c.repartitioned,
                c.side_input,
                entry.waiting_after as i64 - entry.waiting_before as i64,
                c.gaps,
                c.output_digest,
                if problems.is_empty() { "ok".to_owned() } else { problems.join("; ") },
            );
            if !problems.is_empty() {
                report.violations.push(line.clone());
            }
            report.ranges.push(line);
        }
    }
    report
}

/// Input records below the group's committed offset of their partition that follow the last
/// committed ledger range: processed and committed, yet accounted for by no ledger record (a
/// last ledger record lost, or records skipped after it). Gaps between ranges are [`check`]'s.
pub fn check_committed_coverage(
    entries: &[LedgerEntry],
    inputs: &BTreeMap<(String, i32), Vec<i64>>,
    committed: &BTreeMap<(String, i32), i64>,
) -> Vec<String> {
    let mut covered_until: HashMap<(&str, i32), i64> = HashMap::new();
    for entry in entries {
        if let Some(last) = entry.last_offset {
            let until = covered_until
                .entry((entry.topic.as_str(), entry.partition))
                .or_insert(last);
            *until = (*until).max(last);
        }
    }
    let mut violations = Vec::new();
    for ((topic, partition), next) in committed {
        let Some(offsets) = inputs.get(&(topic.clone(), *partition)) else {
            continue;
        };
        let from = covered_until
            .get(&(topic.as_str(), *partition))
            .map_or(i64::MIN, |last| last + 1);
        let uncovered = count_in(offsets, from, next - 1);
        if uncovered > 0 {
            violations.push(format!(
                "{topic}[{partition}]: {uncovered} input records below the committed offset {next} in no ledger range"
            ));
        }
    }
    violations
}

/// Offsets of `sorted` within `[first, last]`.
fn count_in(sorted: &[i64], first: i64, last: i64) -> u64 {
    if last < first {
        return 0;
    }
    let start = sorted.partition_point(|offset| *offset < first);
    let end = sorted.partition_point(|offset| *offset <= last);
    (end - start) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(txn: &str, first: i64, last: i64, counts: LedgerCounts) -> LedgerEntry {
        LedgerEntry {
            version: LEDGER_FORMAT_VERSION,
            pipeline: "p".into(),
            stage: LedgerStage::Stateful,
            topic: "in".into(),
            partition: 0,
            first_offset: Some(first),
            last_offset: Some(last),
            transaction: txn.into(),
            counts,
            waiting_before: 0,
            waiting_after: 0,
        }
    }

    fn outputs(ids: &[&str]) -> LedgerCounts {
        let mut counts = LedgerCounts::default();
        for id in ids {
            counts.add_output(id.as_bytes());
        }
        counts
    }

    fn seen(txn: &str, counts: &LedgerCounts) -> (EntryKey, Observed) {
        (
            (txn.into(), "in".into(), 0),
            Observed {
                out: counts.out,
                duplicates: counts.duplicates,
                dead_letters: counts.dead_letters,
                output_digest: counts.output_digest,
                ..Observed::default()
            },
        )
    }

    const ALL: Observable = Observable {
        duplicates: true,
        gaps: true,
    };

    #[test]
    fn ledger_digest_is_order_independent_and_sees_a_repeated_id() {
        assert_eq!(
            outputs(&["a", "b", "c"]).output_digest,
            outputs(&["c", "a", "b"]).output_digest
        );
        assert_ne!(
            outputs(&["a", "b"]).output_digest,
            outputs(&["a", "b", "b", "b"]).output_digest,
            "a sum, unlike XOR, does not cancel a doubled id"
        );
        assert_ne!(outputs(&["a"]).output_digest, outputs(&["b"]).output_digest);
    }

    #[test]
    fn ledger_entry_round_trips_as_flat_json() {
        let mut counts = outputs(&["x"]);
        counts.input = 3;
        counts.duplicates = 1;
        counts.dead_letters = 1;
        let original = entry("t:1", 10, 12, counts);
        let json = serde_json::to_string(&original).unwrap();
        assert!(json.contains("\"in\":3"), "{json}");
        assert!(json.contains("\"output_digest\":"), "{json}");
        let back: LedgerEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, original);
        assert_eq!(back.imbalance(), 0);
    }

    #[test]
    fn ledger_check_accepts_a_consistent_ledger() {
        let mut first = outputs(&["a", "b"]);
        first.input = 3;
        first.duplicates = 1;
        let mut second = outputs(&["c"]);
        second.input = 2;
        second.dead_letters = 1;
        let entries = vec![entry("t:1", 0, 2, first), entry("t:2", 3, 5, second)];
        // Offset 4 is a transaction marker: no record, inside the range.
        let inputs = BTreeMap::from([(("in".to_owned(), 0), vec![0, 1, 2, 3, 5])]);
        let observed = HashMap::from([seen("t:1", &first), seen("t:2", &second)]);
        let report = check(&entries, &inputs, &observed, 0, ALL);
        assert!(report.consistent(), "{:?}", report.violations);
        assert_eq!(report.ranges.len(), 2);
        assert!(report.ranges[0].contains("0..=2"), "{}", report.ranges[0]);
    }

    #[test]
    fn ledger_check_reports_gaps_overlaps_and_mismatches() {
        let mut first = outputs(&["a", "b"]);
        first.input = 2;
        let mut second = outputs(&["c"]);
        second.input = 1;
        let inputs = BTreeMap::from([(("in".to_owned(), 0), vec![0, 1, 2, 3])]);

        // Offset 2 belongs to no range.
        let entries = vec![entry("t:1", 0, 1, first), entry("t:2", 3, 3, second)];
        let observed = HashMap::from([seen("t:1", &first), seen("t:2", &second)]);
        let report = check(&entries, &inputs, &observed, 0, ALL);
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
        assert!(report.violations[0].contains("in no range"));

        // Overlapping ranges.
        let entries = vec![entry("t:1", 0, 1, first), entry("t:2", 1, 1, second)];
        let report = check(&entries, &inputs, &observed, 0, ALL);
        assert!(report.violations.iter().any(|v| v.contains("overlaps")));

        // An output the ledger does not claim (same count, other id): the digest differs.
        let entries = vec![
            entry("t:1", 0, 1, first),
            entry("t:2", 2, 3, {
                let mut c = outputs(&["c"]);
                c.input = 2;
                c.dead_letters = 1;
                c
            }),
        ];
        let mut wrong = outputs(&["d"]);
        wrong.dead_letters = 1;
        let observed = HashMap::from([seen("t:1", &first), seen("t:2", &wrong)]);
        let report = check(&entries, &inputs, &observed, 0, ALL);
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
        assert!(report.violations[0].contains("output digest"));

        // Identity broken, output of a transaction without a ledger record, unattributed.
        let mut broken = first;
        broken.input = 3;
        let entries = vec![entry("t:1", 0, 1, broken)];
        let observed = HashMap::from([seen("t:1", &first), seen("t:9", &second)]);
        let report = check(&entries, &inputs, &observed, 2, ALL);
        let text = report.violations.join("\n");
        assert!(text.contains("identity off by 1"), "{text}");
        assert!(text.contains("in 3 but 2 input records"), "{text}");
        assert!(
            text.contains("t:9 in[0]: committed output without a ledger record"),
            "{text}"
        );
        assert!(
            text.contains("2 committed records name no consumed partition"),
            "{text}"
        );
    }

    #[test]
    fn ledger_avro_schema_names_exactly_the_json_fields() {
        let schema =
            apache_avro::Schema::parse_str(include_str!("../../schemas/avro/ledger.avsc")).unwrap();
        let apache_avro::Schema::Record(record) = schema else {
            panic!("a record schema");
        };
        let mut in_schema: Vec<&str> = record.fields.iter().map(|f| f.name.as_str()).collect();
        let json = serde_json::to_value(entry("t", 0, 1, outputs(&["a"]))).unwrap();
        let mut in_json: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        in_schema.sort_unstable();
        in_json.sort_unstable();
        assert_eq!(in_schema, in_json);
    }

    #[test]
    fn ledger_identity_counts_what_waits_in_state() {
        let mut counts = outputs(&["a"]);
        counts.input = 3;
        let mut held = entry("t:1", 0, 2, counts);
        held.waiting_before = 1;
        held.waiting_after = 3;
        assert_eq!(held.imbalance(), 0, "1 out, 2 more held");
        held.waiting_after = 2;
        assert_eq!(held.imbalance(), 1);
    }

    type Inputs = BTreeMap<(String, i32), Vec<i64>>;

    /// A consistent two-transaction ledger, its inputs and what the topics show.
    fn consistent_ledger() -> (Vec<LedgerEntry>, Inputs, HashMap<EntryKey, Observed>) {
        let mut first = outputs(&["a", "b"]);
        first.input = 3;
        first.duplicates = 1;
        let mut second = outputs(&["c"]);
        second.input = 2;
        second.dead_letters = 1;
        let entries = vec![entry("t:1", 0, 2, first), entry("t:2", 3, 4, second)];
        let inputs = BTreeMap::from([(("in".to_owned(), 0), vec![0, 1, 2, 3, 4])]);
        let observed = HashMap::from([seen("t:1", &first), seen("t:2", &second)]);
        (entries, inputs, observed)
    }

    fn violations_of(
        entries: &[LedgerEntry],
        inputs: &Inputs,
        observed: &HashMap<EntryKey, Observed>,
    ) -> String {
        let report = check(entries, inputs, observed, 0, ALL);
        let text = report.render();
        assert_eq!(
            report.consistent(),
            text.ends_with("ledger consistent: yes\n"),
            "{text}"
        );
        report.violations.join("\n")
    }

    #[test]
    fn ledger_check_rejects_each_tampered_count() {
        let (entries, inputs, observed) = consistent_ledger();
        assert_eq!(violations_of(&entries, &inputs, &observed), "");

        // The ledger claims one output more (a forged count, digest untouched).
        let mut tampered = entries.clone();
        tampered[0].counts.out += 1;
        tampered[0].counts.duplicates -= 1;
        let text = violations_of(&tampered, &inputs, &observed);
        assert!(text.contains("out 3 but 2 found"), "{text}");
        assert!(!text.contains("identity"), "still balanced: {text}");

        // One duplicate more than the duplicates topic holds.
        let mut tampered = entries.clone();
        tampered[0].counts.duplicates += 1;
        tampered[0].counts.input += 1;
        let text = violations_of(&tampered, &inputs, &observed);
        assert!(text.contains("duplicates 2 but 1 found"), "{text}");
        // ... which a pipeline without a duplicates topic cannot see; the range still can.
        let blind = check(
            &tampered,
            &inputs,
            &observed,
            0,
            Observable {
                duplicates: false,
                gaps: true,
            },
        );
        let blind = blind.violations.join("\n");
        assert!(!blind.contains("duplicates 2"), "{blind}");
        assert!(blind.contains("in 4 but 3 input records"), "{blind}");

        // A dead letter the ledger does not claim (the topic holds one more).
        let mut more = observed.clone();
        more.get_mut(&("t:2".to_owned(), "in".to_owned(), 0))
            .unwrap()
            .dead_letters += 1;
        let text = violations_of(&entries, &inputs, &more);
        assert!(text.contains("dead letters 1 but 2 found"), "{text}");

        // The digest alone: same count, the ledger hashed another id.
        let mut tampered = entries.clone();
        tampered[1].counts.output_digest = outputs(&["z"]).output_digest;
        let text = violations_of(&tampered, &inputs, &observed);
        assert!(text.contains("output digest"), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");

        // An output published twice: count and digest both differ.
        let mut doubled = observed.clone();
        let found = doubled
            .get_mut(&("t:1".to_owned(), "in".to_owned(), 0))
            .unwrap();
        found.out += 1;
        found.output_digest = found.output_digest.wrapping_add(id_hash(b"b"));
        let text = violations_of(&entries, &inputs, &doubled);
        assert!(text.contains("out 2 but 3 found"), "{text}");
        assert!(text.contains("output digest"), "{text}");

        // Waiting counts that do not balance the identity.
        let mut tampered = entries.clone();
        tampered[1].waiting_after = 1;
        let text = violations_of(&tampered, &inputs, &observed);
        assert!(text.contains("identity off by -1"), "{text}");

        // A record written twice for one transaction, and half an offset range.
        let mut tampered = entries.clone();
        tampered.push(tampered[1].clone());
        let text = violations_of(&tampered, &inputs, &observed);
        assert!(
            text.contains("t:2 in[0]: 2 ledger records for one transaction"),
            "{text}"
        );
        let mut tampered = entries.clone();
        tampered[1].last_offset = None;
        let text = violations_of(&tampered, &inputs, &observed);
        assert!(text.contains("half an offset range"), "{text}");

        // The last ledger record dropped: its transaction's output has no ledger record.
        let text = violations_of(&entries[..1], &inputs, &observed);
        assert!(
            text.contains("t:2 in[0]: committed output without a ledger record"),
            "{text}"
        );
        // Its input offsets, below the group's committed offset, are in no range either (this
        // alone catches a dropped record whose transaction published nothing).
        let mut committed = BTreeMap::new();
        let (topic, offsets) = inputs.iter().next().expect("one input partition");
        committed.insert(topic.clone(), offsets.last().expect("input") + 1);
        assert!(check_committed_coverage(&entries, &inputs, &committed).is_empty());
        let uncovered = check_committed_coverage(&entries[..1], &inputs, &committed);
        assert_eq!(uncovered.len(), 1, "{uncovered:?}");
        assert!(
            uncovered[0].contains("below the committed offset"),
            "{uncovered:?}"
        );
        // Offsets past the committed one may still be in flight: not reported.
        committed.insert(topic.clone(), entries[0].last_offset.expect("range") + 1);
        assert!(check_committed_coverage(&entries[..1], &inputs, &committed).is_empty());
    }

    #[test]
    fn ledger_report_renders_what_verify_prints() {
        let (mut entries, inputs, observed) = consistent_ledger();
        let report = check(&entries, &inputs, &observed, 0, ALL);
        let text = report.render();
        assert!(text.contains("ledger: 2 committed records over 5 input records, 0 violations\nledger consistent: yes\n"), "{text}");
        entries[0].counts.out += 1;
        let report = check(&entries, &inputs, &observed, 0, ALL);
        let text = report.render();
        assert_eq!(
            text.lines()
                .filter(|line| line.starts_with("violation: "))
                .count(),
            1,
            "{text}"
        );
        assert!(
            text.ends_with(", 1 violations\nledger consistent: NO\n"),
            "{text}"
        );
    }
}
