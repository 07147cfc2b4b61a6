//! The fault suites' verifier (`common/invariants.rs`) checked against itself: each check is fed
//! an untampered observation, which must pass, and the same observation broken in one place (an
//! event lost, an output doubled, two events of a key swapped, a dead letter missing or doubled,
//! a ledger count or digest forged, state with a key differing, extra or missing, a canary in a
//! log or `/metrics`), which must be reported as a violation of that invariant and of no other.
//!
//! Plain data: no broker. The reports are rendered by the engine's own code (what `breadcrumb
//! verify` prints), so the parser is tested against the real format.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Result;
use breadcrumb_engine::ledger::{
    check as check_ledger, EntryKey, LedgerCounts, LedgerEntry, LedgerStage, Observable, Observed,
    LEDGER_FORMAT_VERSION,
};
use breadcrumb_engine::verify::Report;
use breadcrumb_integration_tests::ConsumedRecord;
use breadcrumb_state::{StateBackend, StateOptions, StoredValue};
use common::invariants::{
    local_state, only_committed, poison_coordinates, rebuild_from_changelog, Invariants,
    StoreContents, EMAIL_CANARY, PII_KEY_CANARY, SECRET_CANARY,
};

/// Which invariant a check charged: (lost, duplicated, out of order, dead letters, ledger,
/// state, canaries).
fn charged(found: &Invariants) -> [u64; 7] {
    [
        found.lost,
        found.duplicated,
        found.out_of_order,
        found.dead_letters_wrong,
        found.ledger_violations,
        found.state_mismatches,
        found.canaries_leaked,
    ]
}

const LOST: usize = 0;
const DUPLICATED: usize = 1;
const OUT_OF_ORDER: usize = 2;
const DEAD_LETTERS: usize = 3;
const LEDGER: usize = 4;
const STATE: usize = 5;
const CANARIES: usize = 6;

/// Asserts that `found` has exactly `count` violations, all of invariant `which`, and that
/// `ensure_none` fails (or passes, for 0) accordingly.
fn assert_only(found: &Invariants, which: usize, count: u64) {
    let mut expected = [0; 7];
    expected[which] = count;
    assert_eq!(charged(found), expected, "{:#?}", found);
    assert_eq!(found.total(), count);
    let mut with_output = found.clone();
    with_output.output_events = with_output.output_events.max(1);
    assert_eq!(
        with_output.ensure_none().is_ok(),
        count == 0,
        "{:#?}",
        found
    );
}

fn record(partition: i32, offset: i64, value: &[u8], headers: &[(&str, &str)]) -> ConsumedRecord {
    ConsumedRecord {
        partition,
        offset,
        key: None,
        value: Some(value.to_vec()),
        headers: headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Some(value.as_bytes().to_vec())))
            .collect(),
    }
}

// ---- no loss, no duplicates (`breadcrumb verify`'s report) ----

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|id| (*id).to_owned()).collect()
}

/// What `breadcrumb verify` prints and exits with for these observations.
fn verify_report(input: &[&str], output: &[(&str, u64)], dead_lettered: &[&str]) -> (bool, String) {
    let mut report = Report {
        input_records: input.len() as u64,
        distinct_input_ids: input.len() as u64,
        output_records: output.iter().map(|(_, n)| n).sum(),
        ..Report::default()
    };
    let counts: HashMap<String, u64> = output
        .iter()
        .map(|(id, n)| ((*id).to_owned(), *n))
        .collect();
    report.tally(&ids(input), &counts, &ids(dead_lettered));
    (report.exactly_once(), report.render())
}

fn exactly_once(success: bool, report: &str) -> Invariants {
    let mut found = Invariants::default();
    found.check_exactly_once_report(success, report).unwrap();
    found
}

#[test]
fn selftest_exactly_once_passes_the_untampered_run() {
    let (success, report) = verify_report(&["a", "b", "p"], &[("a", 1), ("b", 1)], &["p"]);
    assert!(success, "{report}");
    assert_only(&exactly_once(success, &report), LOST, 0);
}

#[test]
fn selftest_exactly_once_reports_a_lost_event() {
    let (success, report) = verify_report(&["a", "b", "c"], &[("a", 1), ("b", 1)], &[]);
    assert_only(&exactly_once(success, &report), LOST, 1);
}

#[test]
fn selftest_exactly_once_reports_a_duplicated_output() {
    let (success, report) = verify_report(&["a", "b"], &[("a", 1), ("b", 2)], &[]);
    assert_only(&exactly_once(success, &report), DUPLICATED, 1);
}

#[test]
fn selftest_exactly_once_reports_an_output_no_input_carries() {
    let (success, report) = verify_report(&["a"], &[("a", 1), ("forged", 1)], &[]);
    assert_only(&exactly_once(success, &report), LOST, 1);
}

#[test]
fn selftest_exactly_once_counts_every_id_past_the_twenty_examples() {
    let input: Vec<String> = (0..30).map(|i| format!("id-{i}")).collect();
    let input: Vec<&str> = input.iter().map(String::as_str).collect();
    let (success, report) = verify_report(&input, &[], &[]);
    assert_eq!(
        report.lines().filter(|l| l.starts_with("lost: ")).count(),
        20
    );
    assert_only(&exactly_once(success, &report), LOST, 30);
}

#[test]
fn selftest_exactly_once_does_not_read_a_failed_verify_as_clean() {
    // A failed exit whose counts read as zero (the format drifted from the parser).
    let (_, report) = verify_report(&["a"], &[("a", 1)], &[]);
    assert_only(&exactly_once(false, &report), LOST, 1);
    let drifted = report.replace("exactly once: yes", "exactly once: NO");
    assert_only(&exactly_once(true, &drifted), LOST, 1);
    // No summary line, or no verdict: not a clean run but an error.
    let mut found = Invariants::default();
    let summary_gone: String = report
        .lines()
        .filter(|line| !line.starts_with("lost "))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(found
        .check_exactly_once_report(true, &summary_gone)
        .is_err());
    assert!(found
        .check_exactly_once_report(true, "error: broker unreachable")
        .is_err());
}

// ---- per-key order ----

fn event(partition: i32, offset: i64, account: &str, sequence: u64) -> ConsumedRecord {
    let value = serde_json::json!({
        "specversion": "1.0",
        "id": format!("pay-{account}-{sequence}"),
        "subject": account,
        "sequence": sequence.to_string(),
    });
    record(partition, offset, value.to_string().as_bytes(), &[])
}

/// Two accounts on partition 0, one on partition 1, interleaved.
fn ordered_output() -> Vec<ConsumedRecord> {
    vec![
        event(0, 0, "acct-1", 1),
        event(0, 1, "acct-2", 1),
        event(0, 2, "acct-1", 2),
        event(0, 3, "acct-2", 2),
        event(0, 4, "acct-1", 3),
        event(1, 0, "acct-3", 1),
        event(1, 1, "acct-3", 2),
    ]
}

fn order(output: &[ConsumedRecord]) -> Invariants {
    let mut found = Invariants::default();
    found.check_order(output).unwrap();
    found
}

#[test]
fn selftest_order_passes_the_untampered_output() {
    let found = order(&ordered_output());
    assert_only(&found, OUT_OF_ORDER, 0);
    assert_eq!(found.output_events, 7);
}

#[test]
fn selftest_order_reports_two_events_of_a_key_swapped() {
    let mut output = ordered_output();
    // acct-1's 2 and 3 swapped (offsets 2 and 4).
    output[2] = event(0, 2, "acct-1", 3);
    output[4] = event(0, 4, "acct-1", 2);
    let found = order(&output);
    assert_only(&found, OUT_OF_ORDER, 1);
    assert!(
        found.details[0].contains("acct-1: 2 after 3"),
        "{:?}",
        found.details
    );
}

#[test]
fn selftest_order_reports_a_repeated_sequence() {
    let mut output = ordered_output();
    output.push(event(1, 2, "acct-3", 2));
    assert_only(&order(&output), OUT_OF_ORDER, 1);
}

// ---- dead letters exactly once ----

fn input_with_poison() -> Vec<ConsumedRecord> {
    let mut input: Vec<ConsumedRecord> = (0..6)
        .map(|o| event(0, o, "acct-1", 1 + o as u64))
        .collect();
    input.extend((0..4).map(|o| event(1, o, "acct-2", 1 + o as u64)));
    for (partition, offset) in [(0, 6), (1, 4), (1, 5)] {
        let mut poison = record(partition, offset, &[0xff, 0xfe, 0x00, 0x01], &[]);
        poison.key = Some(b"poison".to_vec());
        input.push(poison);
    }
    input
}

fn dead_letter(partition: i32, offset: i64, txn: &str) -> ConsumedRecord {
    record(
        0,
        0,
        b"",
        &[
            ("breadcrumb-txn", txn),
            (
                "breadcrumb-source-partition",
                partition.to_string().as_str(),
            ),
            ("breadcrumb-source-offset", offset.to_string().as_str()),
        ],
    )
}

fn dead_letters(records: Vec<ConsumedRecord>, produced: u64) -> Invariants {
    let committed: BTreeSet<String> = ["t:1", "t:2"].map(str::to_owned).into();
    let mut found = Invariants::default();
    found.check_dead_letters(
        &only_committed(records, &committed),
        &poison_coordinates(&input_with_poison()),
        produced,
    );
    found
}

fn all_dead_letters() -> Vec<ConsumedRecord> {
    vec![
        dead_letter(0, 6, "t:1"),
        dead_letter(1, 4, "t:1"),
        dead_letter(1, 5, "t:2"),
    ]
}

#[test]
fn selftest_dead_letters_pass_one_per_poison_record() {
    assert_eq!(poison_coordinates(&input_with_poison()).len(), 3);
    assert_only(&dead_letters(all_dead_letters(), 3), DEAD_LETTERS, 0);
    // A copy in an aborted transaction is no copy.
    let mut records = all_dead_letters();
    records.push(dead_letter(1, 5, "t:aborted"));
    assert_only(&dead_letters(records, 3), DEAD_LETTERS, 0);
}

#[test]
fn selftest_dead_letters_report_one_missing() {
    let mut records = all_dead_letters();
    records.remove(1);
    assert_only(&dead_letters(records, 3), DEAD_LETTERS, 1);
}

#[test]
fn selftest_dead_letters_report_one_doubled() {
    let mut records = all_dead_letters();
    records.push(dead_letter(1, 4, "t:2"));
    assert_only(&dead_letters(records, 3), DEAD_LETTERS, 1);
}

#[test]
fn selftest_dead_letters_report_a_good_record_dead_lettered_instead_of_a_poison_one() {
    // As many dead letters as poison records, but one names a decodable event.
    let mut records = all_dead_letters();
    records[2] = dead_letter(1, 2, "t:2");
    assert_only(&dead_letters(records, 3), DEAD_LETTERS, 2);
}

#[test]
fn selftest_dead_letters_report_a_poison_record_missing_from_the_input() {
    assert_only(&dead_letters(all_dead_letters(), 4), DEAD_LETTERS, 1);
}

// ---- the ledger (`breadcrumb verify --ledger`'s report) ----

fn ledger_entry(txn: &str, first: i64, last: i64, counts: LedgerCounts) -> LedgerEntry {
    LedgerEntry {
        version: LEDGER_FORMAT_VERSION,
        pipeline: "payments".into(),
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

/// Two transactions over offsets 0..=4: two outputs and a duplicate, then an output and a dead
/// letter; `tamper` forges the ledger. Returns what `verify --ledger` exits with and prints.
fn ledger_report(tamper: impl FnOnce(&mut Vec<LedgerEntry>)) -> (bool, String) {
    let mut first = LedgerCounts {
        input: 3,
        duplicates: 1,
        ..LedgerCounts::default()
    };
    first.add_output(b"a");
    first.add_output(b"b");
    let mut second = LedgerCounts {
        input: 2,
        dead_letters: 1,
        ..LedgerCounts::default()
    };
    second.add_output(b"c");
    let observed = |txn: &str, counts: &LedgerCounts| -> (EntryKey, Observed) {
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
    };
    let observed = HashMap::from([observed("t:1", &first), observed("t:2", &second)]);
    let inputs = BTreeMap::from([(("in".to_owned(), 0), vec![0, 1, 2, 3, 4])]);
    let mut entries = vec![
        ledger_entry("t:1", 0, 2, first),
        ledger_entry("t:2", 3, 4, second),
    ];
    tamper(&mut entries);
    let report = check_ledger(
        &entries,
        &inputs,
        &observed,
        0,
        Observable {
            duplicates: true,
            gaps: true,
        },
    );
    (report.consistent(), report.render())
}

fn ledger(success: bool, report: &str) -> Invariants {
    let mut found = Invariants::default();
    found.check_ledger_report(success, report).unwrap();
    found
}

#[test]
fn selftest_ledger_passes_the_untampered_ledger() {
    let (success, report) = ledger_report(|_| {});
    assert!(success, "{report}");
    assert_only(&ledger(success, &report), LEDGER, 0);
}

#[test]
fn selftest_ledger_reports_a_forged_count() {
    let (success, report) = ledger_report(|entries| {
        entries[1].counts.dead_letters += 1;
        entries[1].counts.input += 1;
    });
    let found = ledger(success, &report);
    assert_only(&found, LEDGER, 1);
    let line = &found.details[0];
    assert!(line.contains("dead letters 2 but 1 found"), "{line}");
    assert!(line.contains("in 3 but 2 input records"), "{line}");
}

#[test]
fn selftest_ledger_reports_a_forged_digest() {
    let (success, report) = ledger_report(|entries| {
        entries[0].counts.output_digest ^= 1;
    });
    let found = ledger(success, &report);
    assert_only(&found, LEDGER, 1);
    assert!(
        found.details[0].contains("output digest"),
        "{:?}",
        found.details
    );
}

#[test]
fn selftest_ledger_reports_a_range_that_skips_an_input_record() {
    let (success, report) = ledger_report(|entries| {
        entries[1].first_offset = Some(4);
        entries[1].counts.input = 1;
        entries[1].counts.dead_letters = 0;
    });
    let found = ledger(success, &report);
    assert_only(&found, LEDGER, 1);
    assert!(
        found.details[0].contains("in no range"),
        "{:?}",
        found.details
    );
}

#[test]
fn selftest_ledger_does_not_read_a_failed_check_as_clean() {
    let (_, report) = ledger_report(|_| {});
    assert_only(&ledger(false, &report), LEDGER, 1);
    let mut found = Invariants::default();
    assert!(found
        .check_ledger_report(true, "error: no ledger topic")
        .is_err());
}

// ---- local state vs the committed changelog ----

const STORE: &str = "dedupe";

fn changelog(
    partition: i32,
    offset: i64,
    key: &str,
    value: Option<(i64, &str)>,
    txn: &str,
) -> ConsumedRecord {
    ConsumedRecord {
        partition,
        offset,
        key: Some(key.as_bytes().to_vec()),
        value: value
            .map(|(expire, payload)| StoredValue::encode(expire, payload.as_bytes()).to_vec()),
        headers: vec![(
            breadcrumb_engine::headers::TRANSACTION.to_owned(),
            Some(txn.as_bytes().to_vec()),
        )],
    }
}

/// A changelog with an overwrite, a tombstone and an aborted transaction's writes.
fn changelog_records() -> Vec<ConsumedRecord> {
    vec![
        changelog(0, 0, "k1", Some((100, "v1")), "t:1"),
        changelog(0, 1, "k2", Some((100, "v2")), "t:1"),
        changelog(0, 2, "k3", Some((100, "v3")), "t:1"),
        changelog(0, 4, "k1", Some((200, "v1'")), "t:2"),
        changelog(0, 5, "k2", None, "t:2"),
        changelog(0, 7, "k3", Some((900, "aborted")), "t:aborted"),
        changelog(0, 8, "k4", Some((900, "aborted")), "t:aborted"),
        changelog(1, 0, "k1", Some((300, "w1")), "t:1"),
    ]
}

fn rebuilt() -> StoreContents {
    let committed: BTreeSet<String> = ["t:1", "t:2"].map(str::to_owned).into();
    rebuild_from_changelog(STORE, &changelog_records(), &committed).unwrap()
}

fn contents(entries: &[(i32, &str, i64, &str)]) -> StoreContents {
    entries
        .iter()
        .map(|(partition, key, expire, payload)| {
            (
                (*partition, key.as_bytes().to_vec()),
                (*expire, payload.as_bytes().to_vec()),
            )
        })
        .collect()
}

fn expected_state() -> StoreContents {
    contents(&[
        (0, "k1", 200, "v1'"),
        (0, "k3", 100, "v3"),
        (1, "k1", 300, "w1"),
    ])
}

fn state(local: &StoreContents) -> Invariants {
    let mut found = Invariants::default();
    found.check_store(STORE, local, &rebuilt());
    found
}

#[test]
fn selftest_state_passes_local_state_equal_to_the_committed_changelog() {
    assert_eq!(
        rebuilt(),
        expected_state(),
        "last write wins, tombstones delete, aborted ignored"
    );
    let found = state(&expected_state());
    assert_only(&found, STATE, 0);
    assert_eq!(found.state_keys_compared, 3);
}

#[test]
fn selftest_state_reports_a_differing_key() {
    let mut local = expected_state();
    local.insert((0, b"k1".to_vec()), (200, b"v1".to_vec()));
    assert_only(&state(&local), STATE, 1);
    // The expiry alone differs.
    let mut local = expected_state();
    local.insert((1, b"k1".to_vec()), (301, b"w1".to_vec()));
    assert_only(&state(&local), STATE, 1);
}

#[test]
fn selftest_state_reports_an_extra_key() {
    // The tombstoned key still there, an aborted write applied.
    let mut local = expected_state();
    local.insert((0, b"k2".to_vec()), (100, b"v2".to_vec()));
    assert_only(&state(&local), STATE, 1);
    let mut local = expected_state();
    local.insert((0, b"k4".to_vec()), (900, b"aborted".to_vec()));
    assert_only(&state(&local), STATE, 1);
}

#[test]
fn selftest_state_reports_a_missing_key() {
    let mut local = expected_state();
    local.remove(&(1, b"k1".to_vec()));
    let found = state(&local);
    assert_only(&found, STATE, 1);
    assert!(
        found.details[0].contains("partition 1 key k1: local absent"),
        "{:?}",
        found.details
    );
}

/// Local state written to RocksDB through the engine's state backend, read back the way
/// `check_state` reads it.
fn rocksdb_state(
    entries: &[(i32, &str, i64, &str)],
    partitions: Option<&[i32]>,
) -> Result<StoreContents> {
    let dir = tempfile::TempDir::new()?;
    let backend = StateBackend::open(dir.path(), &[STORE.to_owned()], &StateOptions::default())?;
    let id = backend.store_id(STORE)?;
    let mut batch = backend.commit_batch();
    for partition in 0..2 {
        let mut store = backend.partition_store(id, partition);
        for (offset, (_, key, expire, payload)) in entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.0 == partition)
        {
            store.put(key.as_bytes(), *expire, payload.as_bytes(), offset as i64);
        }
        store.commit_into(&mut batch);
    }
    batch.write()?;
    local_state(&backend, STORE, 2, partitions)
}

#[test]
fn selftest_state_reads_rocksdb_and_reports_a_tampered_store() -> Result<()> {
    let good = [
        (0, "k1", 200, "v1'"),
        (0, "k3", 100, "v3"),
        (1, "k1", 300, "w1"),
    ];
    assert_only(&state(&rocksdb_state(&good, None)?), STATE, 0);
    let differing = [
        (0, "k1", 200, "v1"),
        (0, "k3", 100, "v3"),
        (1, "k1", 300, "w1"),
    ];
    assert_only(&state(&rocksdb_state(&differing, None)?), STATE, 1);
    let extra = [
        (0, "k1", 200, "v1'"),
        (0, "k2", 100, "v2"),
        (0, "k3", 100, "v3"),
        (1, "k1", 300, "w1"),
    ];
    assert_only(&state(&rocksdb_state(&extra, None)?), STATE, 1);
    let missing = [(0, "k1", 200, "v1'"), (1, "k1", 300, "w1")];
    assert_only(&state(&rocksdb_state(&missing, None)?), STATE, 1);
    // Only the partitions asked for are read.
    assert_eq!(
        rocksdb_state(&good, Some(&[1]))?,
        contents(&[(1, "k1", 300, "w1")])
    );
    Ok(())
}

// ---- no canary in logs or /metrics ----

const CLEAN_LOG: &str = "2024-05-01T10:00:00Z INFO breadcrumb: Starting breadcrumb. kafka={\"sasl.password\": \"[redacted]\"}\n\
     2024-05-01T10:00:01Z INFO breadcrumb: Partitions assigned and restored.\n";
const CLEAN_METRICS: &str = "# TYPE breadcrumb_events_in_total counter\nbreadcrumb_events_in_total{pipeline=\"payments\"} 4200\n";

fn canaries(log: &str, metrics: &str) -> Invariants {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, log).unwrap();
    let mut found = Invariants::default();
    found.check_canaries(&[
        ("the engine log", &std::fs::read_to_string(&path).unwrap()),
        ("/metrics", metrics),
    ]);
    found
}

#[test]
fn selftest_canaries_pass_clean_logs_and_metrics() {
    let found = canaries(CLEAN_LOG, CLEAN_METRICS);
    assert_only(&found, CANARIES, 0);
    assert_eq!(
        found.canary_bytes_searched,
        (CLEAN_LOG.len() + CLEAN_METRICS.len()) as u64
    );
}

#[test]
fn selftest_canaries_report_each_canary_in_a_log_file() {
    for canary in [
        format!("acct-7.{EMAIL_CANARY}"),
        SECRET_CANARY.to_owned(),
        PII_KEY_CANARY.to_owned(),
    ] {
        let log = format!("{CLEAN_LOG}2024-05-01T10:00:02Z WARN decode failed: value={canary}\n");
        let found = canaries(&log, CLEAN_METRICS);
        assert_only(&found, CANARIES, 1);
        assert!(
            found.details[0].contains("the engine log"),
            "{:?}",
            found.details
        );
    }
}

#[test]
fn selftest_canaries_report_an_escaped_address() {
    let escaped = EMAIL_CANARY.replace('@', "%40");
    let log = format!("{CLEAN_LOG}uri=/lineage?email={escaped}\n");
    assert_only(&canaries(&log, CLEAN_METRICS), CANARIES, 1);
    let escaped = EMAIL_CANARY.replace('@', "\\u0040");
    let log = format!("{CLEAN_LOG}{{\"email\":\"{escaped}\"}}\n");
    assert_only(&canaries(&log, CLEAN_METRICS), CANARIES, 1);
}

#[test]
fn selftest_canaries_report_a_canary_in_metrics() {
    let metrics =
        format!("{CLEAN_METRICS}breadcrumb_dead_letters_total{{reason=\"{SECRET_CANARY}\"}} 1\n");
    let found = canaries(CLEAN_LOG, &metrics);
    assert_only(&found, CANARIES, 1);
    assert!(found.details[0].contains("/metrics"), "{:?}", found.details);
    // Every occurrence counts.
    let metrics = format!("{metrics}{metrics}");
    assert_only(&canaries(CLEAN_LOG, &metrics), CANARIES, 2);
}

// ---- the verdict ----

#[test]
fn selftest_no_output_at_all_is_no_pass() {
    let found = Invariants::default();
    assert_eq!(found.total(), 0);
    assert!(found.ensure_none().is_err());
}
