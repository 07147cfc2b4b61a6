//! The engine against a real Kafka-protocol broker (Nisshi), through the built `breadcrumb`
//! binary: end-to-end dedupe, dead letters, a rebalance, SIGKILL and restart, and a lost state
//! directory. Every scenario ends with `breadcrumb verify`.
//!
//! Nisshi shows records of aborted transactions to `read_committed` readers, so engines journal
//! their transaction outcomes and checks count only output of committed transactions.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use breadcrumb_engine::generate::{self, ProducedCounts, WorkloadSpec};
use breadcrumb_engine::runtime::restore::ChangelogEnds;
use breadcrumb_integration_tests::{
    base_config, consume_all, create_topics, Broker, ConsumedRecord, Storage,
};
use common::{
    assert_ledger_consistent, committed_transactions, is_committed, verify, EngineProcess, Scenario,
};

const CONSUME_TIMEOUT: Duration = Duration::from_secs(180);

/// A broker on SQLite storage: its watermarks are exact (the in-memory storage of Nisshi 0.7.0
/// under-reports high watermarks), and it starts transactions faster.
fn start_broker(dir: &std::path::Path) -> Result<Broker> {
    Broker::start(Storage::Sqlite(dir.join("nisshi").join("broker.db")))
}

fn produce_workload(scenario: &Scenario, records: u64, seed: u64) -> Result<ProducedCounts> {
    Ok(generate::produce(
        &base_config(&scenario.bootstrap),
        &scenario.input_topic,
        WorkloadSpec {
            records,
            duplicate_percent: 10.0,
            conflict_percent: 1.0,
            poison_percent: 1.0,
            accounts: 200,
            seed,
            ..WorkloadSpec::default()
        },
        0,
        |_| {},
    )?)
}

/// Records of `topic` written by committed transactions.
fn committed_records(
    scenario: &Scenario,
    topic: &str,
    journals: &[PathBuf],
    expected_min: usize,
) -> Result<Vec<ConsumedRecord>> {
    let committed = committed_transactions(journals)?;
    let records = consume_all(
        &scenario.bootstrap,
        topic,
        expected_min,
        Duration::from_secs(30),
    )?;
    Ok(records
        .into_iter()
        .filter(|record| {
            record
                .header("breadcrumb-txn")
                .is_some_and(|txn| committed.contains(&txn))
        })
        .collect())
}

fn assert_verified(config: &std::path::Path, journals: &[PathBuf]) -> Result<()> {
    let (exactly_once, report) = verify(config, journals)?;
    ensure!(exactly_once, "verify failed:\n{report}");
    ensure!(report.contains("exactly once: yes"), "{report}");
    let ledger = assert_ledger_consistent(config, journals)?;
    ensure!(
        !ledger.contains("ledger: 0 committed records"),
        "the ledger is not empty:\n{ledger}"
    );
    Ok(())
}

#[test]
fn engine_dedupes_end_to_end_and_dead_letters_poison() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = start_broker(dir.path())?;
    let scenario = Scenario::new(&broker.bootstrap(), "e2e");
    create_topics(&scenario.bootstrap, &[(&scenario.input_topic, 4)], false)?;
    let config = scenario.write_config(dir.path(), "a")?;
    let journal = scenario.journal(dir.path(), "a");
    let produced = produce_workload(&scenario, 4_000, 1)?;

    let engine = EngineProcess::start(&config, &dir.path().join("a.log"))?;
    let consumed = scenario.wait_until_consumed(CONSUME_TIMEOUT);
    let log = engine.log_tail(80);
    consumed.with_context(|| log.clone())?;
    let status = engine.stop()?;
    ensure!(status.success(), "engine exited with {status}:\n{log}");

    assert_verified(&config, std::slice::from_ref(&journal))?;
    let journals = [journal];

    let output = committed_records(
        &scenario,
        &scenario.output_topic,
        &journals,
        produced.new as usize,
    )?;
    assert_eq!(output.len() as u64, produced.new, "first copies");
    for record in &output {
        assert!(record.header("breadcrumb-first-seen-ms").is_some());
        assert_eq!(
            record.header("breadcrumb-source-topic").as_deref(),
            Some(scenario.input_topic.as_str())
        );
        assert_eq!(
            record.header("content-type").as_deref(),
            Some(generate::CLOUDEVENTS_JSON),
            "original headers are kept"
        );
    }
    let duplicates = committed_records(
        &scenario,
        &scenario.duplicates_topic,
        &journals,
        produced.duplicates as usize,
    )?;
    assert_eq!(
        duplicates.len() as u64,
        produced.duplicates,
        "producer retries"
    );
    for record in &duplicates {
        let first_offset: i64 = record
            .header("breadcrumb-first-offset")
            .context("duplicate names its first copy")?
            .parse()?;
        let source_offset: i64 = record.header("breadcrumb-source-offset").unwrap().parse()?;
        assert!(first_offset < source_offset, "the first copy came earlier");
    }

    let dead_letters = committed_records(
        &scenario,
        &scenario.dead_letter_topic,
        &journals,
        produced.poison as usize,
    )?;
    assert_eq!(
        dead_letters.len() as u64,
        produced.poison,
        "every poison record, once"
    );
    let offsets: BTreeSet<(i32, i64)> = dead_letters
        .iter()
        .map(|record| {
            (
                record
                    .header("breadcrumb-source-partition")
                    .unwrap()
                    .parse()
                    .unwrap(),
                record
                    .header("breadcrumb-source-offset")
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(
        offsets.len(),
        dead_letters.len(),
        "distinct source coordinates"
    );
    for record in &dead_letters {
        let reason = record
            .header("breadcrumb-dlq-reason")
            .context("reason header")?;
        assert!(
            ["invalid_json", "invalid_utf8", "missing_field"].contains(&reason.as_str()),
            "unexpected reason {reason}"
        );
        assert!(record.header("breadcrumb-dlq-message").is_some());
        assert_eq!(
            record.key_str().as_deref(),
            Some("poison"),
            "original key kept"
        );
    }

    // Each committed input offset carries where its task's changelogs end: the offset after the
    // last record a committed transaction wrote there, which a restore must reach.
    let committed = committed_transactions(&journals)?;
    let stored = broker.stored_offset_metadata(&scenario.application_id, &scenario.input_topic)?;
    ensure!(stored.len() == 4, "committed offsets' metadata: {stored:?}");
    for (partition, metadata) in &stored {
        let ends = ChangelogEnds::parse(metadata);
        ensure!(
            ends.ends().count() > 0,
            "partition {partition}: no changelog ends in the committed metadata {metadata:?}"
        );
        for (store, end) in ends.ends() {
            let changelog = format!("{}-{store}-changelog", scenario.application_id);
            let last = consume_all(&scenario.bootstrap, &changelog, 1, Duration::from_secs(30))?
                .into_iter()
                .filter(|record| record.partition == *partition && is_committed(record, &committed))
                .map(|record| record.offset)
                .max()
                .with_context(|| format!("{changelog}[{partition}] has no committed record"))?;
            assert_eq!(end, last + 1, "{changelog}[{partition}]: ends {metadata:?}");
        }
    }
    Ok(())
}

#[test]
fn engine_survives_sigkill_mid_stream_without_loss_or_duplicates() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = start_broker(dir.path())?;
    let mut scenario = Scenario::new(&broker.bootstrap(), "kill");
    scenario.commit_interval_ms = 50;
    create_topics(&scenario.bootstrap, &[(&scenario.input_topic, 4)], false)?;
    let config = scenario.write_config(dir.path(), "a")?;
    let journal = scenario.journal(dir.path(), "a");
    let log = dir.path().join("a.log");
    let mut produced = produce_workload(&scenario, 20_000, 2)?;

    let mut kills = 0;
    for round in 0..3 {
        let mut engine = EngineProcess::start(&config, &log)?;
        // Kill once some, but not all, input is committed: mid-stream, with a transaction open.
        let deadline = std::time::Instant::now() + CONSUME_TIMEOUT;
        loop {
            let committed: i64 = scenario.committed()?.values().sum();
            if committed > 0 || std::time::Instant::now() > deadline || !engine.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ensure!(engine.is_running(), "engine died:\n{}", engine.log_tail(60));
        std::thread::sleep(Duration::from_millis(150 * (round + 1)));
        engine.kill()?;
        kills += 1;
        // More input arrives while the engine is down.
        let more = produce_workload(&scenario, 2_000, 100 + round)?;
        produced.new += more.new;
        produced.duplicates += more.duplicates;
        produced.conflicts += more.conflicts;
        produced.poison += more.poison;
    }
    let engine = EngineProcess::start(&config, &log)?;
    let consumed = scenario.wait_until_consumed(CONSUME_TIMEOUT);
    let tail = engine.log_tail(80);
    consumed.with_context(|| tail.clone())?;
    let status = engine.stop()?;
    ensure!(status.success(), "engine exited with {status}:\n{tail}");
    assert_eq!(kills, 3);

    assert_verified(&config, std::slice::from_ref(&journal))?;
    let (outcomes, pending) = breadcrumb_engine::journal::read(&journal)?;
    ensure!(
        pending.is_empty(),
        "every transaction open at a kill was resolved: {pending:?}"
    );
    // Output of uncommitted transactions (visible on this broker) comes only from transactions
    // the journal knows were aborted: the ones open at each kill, or aborted by the engine.
    let all_output = consume_all(
        &scenario.bootstrap,
        &scenario.output_topic,
        1,
        Duration::from_secs(30),
    )?;
    for record in &all_output {
        let txn = record
            .header("breadcrumb-txn")
            .context("every output names its transaction")?;
        ensure!(
            outcomes.contains_key(&txn),
            "output of unknown transaction {txn}"
        );
    }
    let committed_output = committed_records(&scenario, &scenario.output_topic, &[journal], 1)?;
    assert_eq!(committed_output.len() as u64, produced.new);
    Ok(())
}

/// The restore starts of one engine run's log: the `from` changelog offset of each
/// "Restoring state from changelog." line.
fn restore_starts(log: &std::path::Path) -> Result<Vec<i64>> {
    let raw = std::fs::read_to_string(log)?;
    // Without a terminal the text format still colours field names: drop the escapes.
    let mut text = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            text.push(c);
        }
    }
    Ok(text
        .lines()
        .filter(|line| line.contains("Restoring state from changelog."))
        .filter_map(|line| {
            let from = line.split("from=").nth(1)?;
            from.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect())
}

/// With the WAL off, a SIGKILL loses what the memtables held; memtables flushed at commits
/// (`state.flush_interval_ms`) make the restart replay only the changelog's tail, not all of it.
#[test]
fn engine_restart_after_sigkill_replays_only_the_changelog_tail() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = start_broker(dir.path())?;
    let mut scenario = Scenario::new(&broker.bootstrap(), "flush");
    scenario.commit_interval_ms = 50;
    create_topics(&scenario.bootstrap, &[(&scenario.input_topic, 2)], false)?;
    let config = scenario.write_config(dir.path(), "a")?;
    let journal = scenario.journal(dir.path(), "a");
    let env = [("BREADCRUMB__STATE__FLUSH_INTERVAL_MS", "1".to_owned())];
    produce_workload(&scenario, 2_000, 21)?;
    let first_log = dir.path().join("first.log");
    let engine = EngineProcess::start_with_env(&config, &first_log, &env)?;
    scenario
        .wait_until_consumed(CONSUME_TIMEOUT)
        .with_context(|| engine.log_tail(60))?;
    engine.kill()?;
    produce_workload(&scenario, 500, 22)?;
    let second_log = dir.path().join("second.log");
    let engine = EngineProcess::start_with_env(&config, &second_log, &env)?;
    scenario
        .wait_until_consumed(CONSUME_TIMEOUT)
        .with_context(|| engine.log_tail(60))?;
    let status = engine.stop()?;
    ensure!(status.success(), "engine exited with {status}");
    assert_verified(&config, std::slice::from_ref(&journal))?;
    // The first run restored empty changelogs; the restart resumes every store partition
    // from its flushed checkpoint.
    let starts = restore_starts(&second_log)?;
    ensure!(!starts.is_empty(), "the restart restored nothing");
    ensure!(
        starts.iter().all(|from| *from > 0),
        "a restart after SIGKILL replayed a changelog from its start: {starts:?}"
    );
    Ok(())
}

#[test]
fn engine_restores_state_from_changelog_when_local_state_is_lost() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = start_broker(dir.path())?;
    let scenario = Scenario::new(&broker.bootstrap(), "restore");
    create_topics(&scenario.bootstrap, &[(&scenario.input_topic, 3)], false)?;
    let config = scenario.write_config(dir.path(), "a")?;
    let journal = scenario.journal(dir.path(), "a");
    let log = dir.path().join("a.log");
    let first = produce_workload(&scenario, 3_000, 3)?;

    let engine = EngineProcess::start(&config, &log)?;
    scenario
        .wait_until_consumed(CONSUME_TIMEOUT)
        .with_context(|| engine.log_tail(60))?;
    ensure!(engine.stop()?.success());

    std::fs::remove_dir_all(scenario.state_dir(dir.path(), "a"))?;
    // The same workload again: every event is now a copy of one seen before the state was lost.
    produce_workload(&scenario, 3_000, 3)?;
    let engine = EngineProcess::start(&config, &log)?;
    scenario
        .wait_until_consumed(CONSUME_TIMEOUT)
        .with_context(|| engine.log_tail(60))?;
    ensure!(engine.stop()?.success());

    let restored = std::fs::read_to_string(&log)?
        .lines()
        .filter(|line| line.contains("Restored state."))
        .count();
    ensure!(restored > 0, "the second run restored from the changelog");
    assert_verified(&config, std::slice::from_ref(&journal))?;
    let output = committed_records(
        &scenario,
        &scenario.output_topic,
        std::slice::from_ref(&journal),
        1,
    )?;
    assert_eq!(
        output.len() as u64,
        first.new,
        "no event republished after the state loss"
    );
    let duplicates = committed_records(&scenario, &scenario.duplicates_topic, &[journal], 1)?;
    assert_eq!(
        duplicates.len() as u64,
        first.duplicates * 2 + first.new,
        "second run: every first copy is now a duplicate, plus the retries again"
    );
    Ok(())
}

#[test]
fn engine_keeps_exactly_once_across_a_rebalance() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = start_broker(dir.path())?;
    let scenario = Scenario::new(&broker.bootstrap(), "rebalance");
    create_topics(&scenario.bootstrap, &[(&scenario.input_topic, 4)], false)?;
    let config_a = scenario.write_config(dir.path(), "a")?;
    let config_b = scenario.write_config(dir.path(), "b")?;
    let journals = [
        scenario.journal(dir.path(), "a"),
        scenario.journal(dir.path(), "b"),
    ];
    let mut produced = produce_workload(&scenario, 4_000, 4)?;

    let engine_a = EngineProcess::start(&config_a, &dir.path().join("a.log"))?;
    scenario
        .wait_until_consumed(CONSUME_TIMEOUT)
        .with_context(|| engine_a.log_tail(60))?;
    // A second instance joins: partitions (and their state) move to it.
    let engine_b = EngineProcess::start(&config_b, &dir.path().join("b.log"))?;
    std::thread::sleep(Duration::from_secs(5));
    let second = produce_workload(&scenario, 4_000, 4)?;
    produced.duplicates += second.duplicates + second.new;
    scenario
        .wait_until_consumed(CONSUME_TIMEOUT)
        .with_context(|| format!("{}\n---\n{}", engine_a.log_tail(40), engine_b.log_tail(40)))?;
    let b_assigned = std::fs::read_to_string(dir.path().join("b.log"))?
        .contains("Partitions assigned and restored.");
    // It leaves again: its partitions return to the first instance.
    ensure!(engine_b.stop()?.success());
    let third = produce_workload(&scenario, 2_000, 5)?;
    produced.new += third.new;
    scenario
        .wait_until_consumed(CONSUME_TIMEOUT)
        .with_context(|| engine_a.log_tail(60))?;
    ensure!(engine_a.stop()?.success());

    ensure!(b_assigned, "the second instance received partitions");
    assert_verified(&config_a, &journals)?;
    let output = committed_records(&scenario, &scenario.output_topic, &journals, 1)?;
    assert_eq!(output.len() as u64, produced.new);
    Ok(())
}
