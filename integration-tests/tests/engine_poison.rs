//! Poison input through a real broker: every class of bad record goes to the dead-letter topic
//! once, with its reason and source coordinates, while good records around it come out exactly
//! once; and a record that keeps crashing the engine is quarantined instead of crash-looping.
//!
//! Not covered here: invalid protobuf and Avro / unknown schema id (those decoders are not on
//! this branch; their errors take the same decode-error path as invalid JSON).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use breadcrumb_engine::generate::{Workload, WorkloadSpec, CLOUDEVENTS_JSON};
use breadcrumb_engine::runtime::PANIC_ON_ID_ENV;
use breadcrumb_integration_tests::{
    consume_all, create_topics, produce, produce_with_raw_header_name, Broker, ConsumedRecord,
    Storage, TestRecord,
};
use common::{assert_ledger_consistent, committed_transactions, verify, EngineProcess, Scenario};

const CONSUME_TIMEOUT: Duration = Duration::from_secs(180);
const DAY_MS: i64 = 86_400_000;

fn good_records(records: u64, seed: u64) -> Vec<(String, TestRecord)> {
    Workload::new(WorkloadSpec {
        records,
        duplicate_percent: 0.0,
        conflict_percent: 0.0,
        poison_percent: 0.0,
        accounts: 40,
        seed,
        ..WorkloadSpec::default()
    })
    .map(|record| {
        (
            record.id,
            TestRecord::new(record.key, record.value).header("content-type", CLOUDEVENTS_JSON),
        )
    })
    .collect()
}

/// A CloudEvent in structured mode, with optional sequence and padding.
fn event(id: &str, time: &str, sequence: Option<u64>, padding: usize) -> Vec<u8> {
    let mut event = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/payments/gateway",
        "type": "com.example.payment.authorized",
        "subject": "acct-poison",
        "time": time,
        "data": {"padding": "x".repeat(padding)},
    });
    if let Some(sequence) = sequence {
        event["sequence"] = serde_json::Value::String(sequence.to_string());
    }
    event.to_string().into_bytes()
}

fn committed_dead_letters(
    scenario: &Scenario,
    journals: &[std::path::PathBuf],
    expected: usize,
) -> Result<Vec<ConsumedRecord>> {
    let committed = committed_transactions(journals)?;
    Ok(consume_all(
        &scenario.bootstrap,
        &scenario.dead_letter_topic,
        expected,
        Duration::from_secs(30),
    )?
    .into_iter()
    .filter(|record| {
        record
            .header("breadcrumb-txn")
            .is_some_and(|txn| committed.contains(&txn))
    })
    .collect())
}

#[test]
fn poison_classes_are_dead_lettered_with_reason_and_coordinates_while_good_records_flow(
) -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = Broker::start(Storage::Sqlite(dir.path().join("nisshi").join("broker.db")))?;
    let mut scenario = Scenario::new(&broker.bootstrap(), "poison");
    scenario.extra_toml = format!(
        r#"max_value_bytes = 4096

[pipelines.payments.dedupe]
max_event_time_ahead_ms = {DAY_MS}
max_event_time_behind_ms = {DAY_MS}

[pipelines.payments.ordering]
first_sequence = 1
gap_timeout_ms = 20000

[input]
max_key_bytes = 1024
max_headers = 16
"#
    );
    create_topics(&scenario.bootstrap, &[(&scenario.input_topic, 2)], false)?;
    let config = scenario.write_config(dir.path(), "a")?;
    let journal = scenario.journal(dir.path(), "a");

    // Good traffic first (it sets partition 0's stream time, around 2026-09), then every
    // poison class on partition 0, then good traffic again.
    let good = good_records(600, 31);
    let (first, second) = good.split_at(300);
    let records = |part: &[(String, TestRecord)]| -> Vec<TestRecord> {
        part.iter().map(|(_, record)| record.clone()).collect()
    };
    produce(&scenario.bootstrap, &scenario.input_topic, &records(first))?;
    let now = "2026-09-21T12:00:00Z";
    let structured = |key: &[u8], value: Vec<u8>| {
        TestRecord::new(key.to_vec(), value)
            .header("content-type", CLOUDEVENTS_JSON)
            .partition(0)
    };
    let mut many_headers = structured(b"poison-headers", event("p-headers", now, Some(1), 0));
    for index in 0..20 {
        many_headers = many_headers.header(format!("x-junk-{index}"), "j");
    }
    let poison: Vec<(&str, TestRecord)> = vec![
        (
            "invalid_json",
            structured(b"poison-json", br#"{"specversion":"1.0","id":"#.to_vec()),
        ),
        (
            "invalid_utf8",
            structured(b"poison-utf8", vec![0xff, 0xfe, 0x00, 0x01]),
        ),
        (
            "missing_field",
            structured(
                b"poison-no-id",
                br#"{"specversion":"1.0","source":"/payments","type":"x"}"#.to_vec(),
            ),
        ),
        (
            "missing_field",
            structured(b"poison-no-sequence", event("p-no-sequence", now, None, 0)),
        ),
        (
            "oversized",
            structured(b"poison-big", event("p-big", now, Some(1), 5_000)),
        ),
        (
            "oversized_key",
            structured(&[b'k'; 2_000], event("p-key", now, Some(1), 0)),
        ),
        ("invalid_headers", many_headers),
        (
            "event_time_future",
            structured(
                b"poison-future",
                event("p-future", "2999-01-01T00:00:00Z", Some(1), 0),
            ),
        ),
        (
            "event_time_past",
            structured(
                b"poison-past",
                event("p-past", "2001-01-01T00:00:00Z", Some(1), 0),
            ),
        ),
    ];
    let poison_records: Vec<TestRecord> = poison.iter().map(|(_, record)| record.clone()).collect();
    let coordinates = produce(&scenario.bootstrap, &scenario.input_topic, &poison_records)?;
    // A header name that is not UTF-8 (rdkafka's header iterator panics on it).
    produce_with_raw_header_name(
        &scenario.bootstrap,
        &scenario.input_topic,
        0,
        &event("p-garbage-header", now, Some(1), 0),
        b"\xff\xfe-garbage",
        b"v",
    )?;
    produce(&scenario.bootstrap, &scenario.input_topic, &records(second))?;

    let engine = EngineProcess::start(&config, &dir.path().join("a.log"))?;
    let consumed = scenario.wait_until_consumed(CONSUME_TIMEOUT);
    let log = engine.log_tail(80);
    consumed.with_context(|| log.clone())?;
    let status = engine.stop()?;
    ensure!(status.success(), "engine exited with {status}:\n{log}");
    ensure!(!log.contains("panicked"), "the engine panicked:\n{log}");

    let journals = [journal];
    let dead_letters = committed_dead_letters(&scenario, &journals, poison.len() + 1)?;
    let mut by_offset: BTreeMap<i64, &ConsumedRecord> = BTreeMap::new();
    for record in &dead_letters {
        ensure!(
            record.header("breadcrumb-source-partition").as_deref() == Some("0"),
            "every poison record was on partition 0: {record:?}"
        );
        let offset: i64 = record
            .header("breadcrumb-source-offset")
            .context("source offset")?
            .parse()?;
        ensure!(
            by_offset.insert(offset, record).is_none(),
            "offset {offset} dead-lettered twice"
        );
        ensure!(record.header("breadcrumb-dlq-message").is_some());
        ensure!(record.header("breadcrumb-dlq-pipeline").as_deref() == Some("payments"));
    }
    ensure!(
        dead_letters.len() == poison.len() + 1,
        "{} dead letters, expected {}: {:?}",
        dead_letters.len(),
        poison.len() + 1,
        dead_letters
            .iter()
            .map(|record| record.header("breadcrumb-dlq-reason"))
            .collect::<Vec<_>>()
    );
    for ((reason, sent), (partition, offset)) in poison.iter().zip(&coordinates) {
        assert_eq!(*partition, 0);
        let record = by_offset
            .get(offset)
            .with_context(|| format!("no dead letter for {reason} at offset {offset}"))?;
        assert_eq!(
            record.header("breadcrumb-dlq-reason").as_deref(),
            Some(*reason),
            "offset {offset}"
        );
        match *reason {
            "oversized_key" => assert_eq!(record.key, None, "the huge key is left out"),
            "oversized" => assert_eq!(record.value, None, "the huge value is left out"),
            _ => {
                assert_eq!(record.key, sent.key, "original key kept");
                assert_eq!(record.value, sent.value, "original value kept");
            }
        }
    }
    let garbage_offset = coordinates.last().unwrap().1 + 1;
    let garbage = by_offset
        .get(&garbage_offset)
        .context("no dead letter for the garbage header name")?;
    assert_eq!(
        garbage.header("breadcrumb-dlq-reason").as_deref(),
        Some("invalid_headers")
    );

    let (exactly_once, report) = verify(&config, &journals)?;
    ensure!(exactly_once, "verify failed:\n{report}");
    ensure!(
        report.contains("dead-lettered: 5 input ids"),
        "the decodable poison ids are accounted for by their dead letters:\n{report}"
    );
    assert_ledger_consistent(&config, &journals)?;
    Ok(())
}

#[test]
fn a_record_that_keeps_crashing_the_engine_is_quarantined() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = Broker::start(Storage::Sqlite(dir.path().join("nisshi").join("broker.db")))?;
    let mut scenario = Scenario::new(&broker.bootstrap(), "quarantine");
    scenario.session_timeout_ms = Some(6_000);
    create_topics(&scenario.bootstrap, &[(&scenario.input_topic, 2)], false)?;
    let config = scenario.write_config(dir.path(), "a")?;
    let journal = scenario.journal(dir.path(), "a");
    let log = dir.path().join("a.log");
    let good = good_records(400, 37);
    let (crasher, crasher_record) = good[150].clone();
    let records: Vec<TestRecord> = good.iter().map(|(_, record)| record.clone()).collect();
    let coordinates = produce(&scenario.bootstrap, &scenario.input_topic, &records)?;
    let (crash_partition, crash_offset) = coordinates[150];
    let env = [(PANIC_ON_ID_ENV, crasher.clone())];

    // Restart after every crash, as a supervisor would; the fourth run must get past it.
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    let mut crashes = 0;
    let engine = loop {
        let mut engine = EngineProcess::start_with_env(&config, &log, &env)?;
        loop {
            if let Some(status) = engine.exited() {
                ensure!(!status.success(), "the engine stopped on its own");
                crashes += 1;
                break;
            }
            if scenario
                .wait_until_consumed(Duration::from_millis(1))
                .is_ok()
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "not consumed in time after {crashes} crashes ({}):\n{}",
                log.display(),
                common::log_tail(&log, 80)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        if engine.is_running() {
            break engine;
        }
        ensure!(crashes <= 5, "crash loop:\n{}", engine.log_tail(60));
    };
    ensure!(engine.stop()?.success());
    assert_eq!(crashes, 3, "quarantine_after_crashes = 3 (the default)");
    let text = std::fs::read_to_string(&log)?;
    assert_eq!(text.matches(PANIC_ON_ID_ENV).count(), 3, "three panics");

    let journals = [journal];
    let dead_letters = committed_dead_letters(&scenario, &journals, 1)?;
    assert_eq!(dead_letters.len(), 1, "{dead_letters:?}");
    let quarantined = &dead_letters[0];
    assert_eq!(
        quarantined.header("breadcrumb-dlq-reason").as_deref(),
        Some("quarantined")
    );
    assert_eq!(
        quarantined.header("breadcrumb-source-partition"),
        Some(crash_partition.to_string())
    );
    assert_eq!(
        quarantined.header("breadcrumb-source-offset"),
        Some(crash_offset.to_string())
    );
    assert_eq!(
        quarantined.value, crasher_record.value,
        "original value kept"
    );

    let (exactly_once, report) = verify(&config, &journals)?;
    ensure!(exactly_once, "verify failed:\n{report}");
    ensure!(report.contains("dead-lettered: 1 input ids"), "{report}");
    assert_ledger_consistent(&config, &journals)?;
    Ok(())
}
