//! Dedupe → ordering through a real broker: shuffled per-account sequences in, strictly
//! increasing sequences per account out, gap records exactly where the input skipped numbers,
//! across SIGKILLs and restarts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use breadcrumb_engine::generate::CLOUDEVENTS_JSON;
use breadcrumb_engine::generate::{self, RecordKind, Workload, WorkloadSpec};
use breadcrumb_integration_tests::{
    base_config, consume_all, create_topics, produce, Broker, Storage, TestRecord,
};
use common::{
    assert_ledger_consistent, committed_transactions, is_committed, verify, EngineProcess, Scenario,
};

const CONSUME_TIMEOUT: Duration = Duration::from_secs(180);
/// Partitions of the input topic.
const CLOCK_PARTITIONS: i32 = 4;

fn spec() -> WorkloadSpec {
    WorkloadSpec {
        records: 12_000,
        duplicate_percent: 5.0,
        conflict_percent: 0.0,
        poison_percent: 0.5,
        accounts: 60,
        shuffled_accounts_percent: 40.0,
        sequence_gap_percent: 0.5,
        seed: 23,
        ..WorkloadSpec::default()
    }
}

/// `(subject, sequence)` of a CloudEvents JSON value.
fn subject_and_sequence(value: &[u8]) -> Option<(String, u64)> {
    let event: serde_json::Value = serde_json::from_slice(value).ok()?;
    let subject = event.get("subject")?.as_str()?.to_owned();
    let sequence = event.get("sequence")?.as_str()?.parse().ok()?;
    Some((subject, sequence))
}

#[test]
fn ordering_releases_shuffled_sequences_in_order_and_reports_only_real_gaps_across_kills(
) -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = Broker::start(Storage::Sqlite(dir.path().join("nisshi").join("broker.db")))?;
    let mut scenario = Scenario::new(&broker.bootstrap(), "ordering");
    scenario.commit_interval_ms = 50;
    scenario.extra_toml = r#"
[pipelines.payments.ordering]
first_sequence = 1
gap_timeout_ms = 20000
"#
    .to_owned();
    create_topics(
        &scenario.bootstrap,
        &[(&scenario.input_topic, CLOCK_PARTITIONS)],
        false,
    )?;
    let produced = generate::produce(
        &base_config(&scenario.bootstrap),
        &scenario.input_topic,
        spec(),
        0,
        |_| {},
    )?;
    ensure!(
        produced.reordered > 500 && produced.sequence_gaps > 20,
        "{produced:?}"
    );

    // What the input really lacks: per account, the numbers below its last one never sent.
    let mut sent: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for record in Workload::new(spec()) {
        if record.kind == RecordKind::New {
            sent.entry(String::from_utf8(record.key)?)
                .or_default()
                .insert(record.sequence);
        }
    }
    let mut really_missing: BTreeSet<(String, u64)> = BTreeSet::new();
    for (account, sequences) in &sent {
        let last = *sequences.last().expect("non-empty");
        for sequence in 1..last {
            if !sequences.contains(&sequence) {
                really_missing.insert((account.clone(), sequence));
            }
        }
    }

    let config = scenario.write_config(dir.path(), "a")?;
    let journal = scenario.journal(dir.path(), "a");
    let log = dir.path().join("a.log");
    for round in 0..2u64 {
        let mut engine = EngineProcess::start(&config, &log)?;
        let deadline = std::time::Instant::now() + CONSUME_TIMEOUT;
        let target = 2_000 * (round as i64 + 1);
        loop {
            let committed: i64 = scenario.committed()?.values().sum();
            if committed >= target || std::time::Instant::now() > deadline || !engine.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ensure!(engine.is_running(), "engine died:\n{}", engine.log_tail(60));
        engine.kill()?;
    }
    // Events held behind the last gaps leave when stream time passes their gap timeout: one
    // later event per partition (on a key of its own) moves every partition's stream time on.
    // Event time, not a processing-time timeout: a processing-time gap given up in a
    // transaction that a kill aborts cannot be told from a committed one on a broker that shows
    // aborted records to the restore consumer (Nisshi), so it would make this test flaky.
    let clock: Vec<TestRecord> = (0..CLOCK_PARTITIONS)
        .map(|partition| {
            let event = serde_json::json!({
                "specversion": "1.0",
                "id": format!("clock-{partition}"),
                "source": "/tests/clock",
                "type": "com.example.clock",
                "subject": format!("clock-{partition}"),
                "time": "2026-09-21T16:00:00Z",
                "sequence": "1",
            });
            TestRecord::new(format!("clock-{partition}"), event.to_string())
                .header("content-type", CLOUDEVENTS_JSON)
                .partition(partition)
        })
        .collect();
    produce(&scenario.bootstrap, &scenario.input_topic, &clock)?;
    let engine = EngineProcess::start(&config, &log)?;
    let consumed = scenario.wait_until_consumed(CONSUME_TIMEOUT);
    let tail = engine.log_tail(80);
    consumed.with_context(|| tail.clone())?;
    let status = engine.stop()?;
    ensure!(status.success(), "engine exited with {status}:\n{tail}");

    let (exactly_once, report) = verify(&config, std::slice::from_ref(&journal))?;
    ensure!(exactly_once, "verify failed:\n{report}");
    assert_ledger_consistent(&config, std::slice::from_ref(&journal))?;

    let committed = committed_transactions(&[journal])?;
    // Per account, output sequence numbers strictly increase (one account, one key, one
    // partition: offset order is output order).
    let mut output = consume_all(
        &scenario.bootstrap,
        &scenario.output_topic,
        1,
        Duration::from_secs(30),
    )?;
    output.retain(|record| is_committed(record, &committed));
    output.sort_by_key(|record| (record.partition, record.offset));
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for record in &output {
        let (subject, sequence) = subject_and_sequence(record.value.as_deref().unwrap_or_default())
            .context("output records are payments")?;
        if let Some(previous) = last.insert(subject.clone(), sequence) {
            ensure!(
                sequence > previous,
                "{subject}: {sequence} after {previous} at partition {} offset {}",
                record.partition,
                record.offset
            );
        }
    }
    ensure!(
        output.len() as u64 == produced.new + CLOCK_PARTITIONS as u64,
        "{} out",
        output.len()
    );

    // Gap records name exactly the numbers the input never had.
    let gaps_topic = format!("{}-gaps", scenario.output_topic);
    let gaps = consume_all(&scenario.bootstrap, &gaps_topic, 1, Duration::from_secs(30))?;
    let mut reported: BTreeSet<(String, u64)> = BTreeSet::new();
    for record in gaps
        .iter()
        .filter(|record| is_committed(record, &committed))
    {
        let gap: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
        let account = gap["key"]["subject"]
            .as_str()
            .context("gap key names the subject")?
            .to_owned();
        let from = gap["from_sequence"].as_u64().context("from_sequence")?;
        let to = gap["to_sequence"].as_u64().context("to_sequence")?;
        for sequence in from..=to {
            ensure!(
                reported.insert((account.clone(), sequence)),
                "{account} {sequence} reported twice"
            );
        }
    }
    ensure!(
        reported == really_missing,
        "reported but not missing: {:?}\nmissing but not reported: {:?}",
        reported
            .difference(&really_missing)
            .take(10)
            .collect::<Vec<_>>(),
        really_missing
            .difference(&reported)
            .take(10)
            .collect::<Vec<_>>()
    );
    let late_topic = format!("{}-late", scenario.output_topic);
    let late_records = consume_all(&scenario.bootstrap, &late_topic, 0, Duration::from_secs(5))?;
    let late = late_records
        .iter()
        .filter(|record| is_committed(record, &committed))
        .count();
    ensure!(
        late == 0,
        "{late} events arrived after their gap was given up"
    );
    Ok(())
}
