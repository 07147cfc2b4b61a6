//! Avro events in the Confluent wire format through a Schema Registry, end to end: the engine
//! starts while the registry is down (it must wait, not dead-letter), then dedupes once the
//! registry answers; malformed values go to the dead-letter topic with their reason.
//!
//! Values are encoded by `apache-avro`, independently of breadcrumb's own Avro reader. The
//! registry is the harness's ([`SchemaRegistry`]): no registry server installs from the
//! package registries reachable here.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use apache_avro::types::Record;
use apache_avro::{to_avro_datum, Schema};
use breadcrumb_integration_tests::{
    consume_all, create_topics, produce, Broker, SchemaRegistry, Storage, TestRecord,
};
use common::{committed_transactions, verify, EngineProcess, Scenario};

const PAYMENT_SCHEMA: &str = r#"{
  "type": "record", "name": "Payment", "namespace": "billing",
  "fields": [
    {"name": "id", "type": "string"},
    {"name": "account", "type": "string"},
    {"name": "amount_cents", "type": "long"},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "note", "type": ["null", "string"], "default": null}
  ]
}"#;

const UNIQUE: usize = 300;
const DUPLICATES: usize = 30;

fn payment(schema: &Schema, index: usize) -> Result<Vec<u8>> {
    let mut record = Record::new(schema).context("record schema")?;
    record.put("id", format!("pay-{index:05}"));
    record.put("account", format!("acct-{}", index % 17));
    record.put("amount_cents", (index as i64) * 100 + 7);
    record.put(
        "at",
        apache_avro::types::Value::TimestampMillis(1_790_000_000_000 + index as i64),
    );
    record.put(
        "note",
        apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
    );
    Ok(to_avro_datum(schema, record)?)
}

fn framed(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut value = vec![0];
    value.extend_from_slice(&schema_id.to_be_bytes());
    value.extend_from_slice(body);
    value
}

#[test]
fn avro_through_a_schema_registry_survives_an_outage_and_dead_letters_bad_values() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = Broker::start(Storage::Sqlite(dir.path().join("broker.db")))?;
    let registry = SchemaRegistry::start()?;
    let mut scenario = Scenario::new(&broker.bootstrap(), "avro");
    let schema_id = registry.register(&format!("{}-value", scenario.input_topic), PAYMENT_SCHEMA);
    scenario.decoder_toml = format!(
        r#"format = "avro"
[pipelines.payments.decoder.registry]
url = "{url}"
attempts = 2
retry_backoff_ms = 50
request_timeout_ms = 2000
[pipelines.payments.decoder.fields]
id_path = "/id"
subject_path = "/account"
time_path = "/at"
time_fallback = "reject"
attributes = {{ amount_cents = "/amount_cents" }}
"#,
        url = registry.url()
    );
    create_topics(&scenario.bootstrap, &[(&scenario.input_topic, 2)], false)?;

    let schema = Schema::parse_str(PAYMENT_SCHEMA)?;
    let mut records = Vec::new();
    for index in 0..UNIQUE {
        let value = framed(schema_id, &payment(&schema, index)?);
        records.push(TestRecord::new(format!("acct-{}", index % 17), value));
    }
    // Producer retries: the same bytes again, later in the stream.
    for index in (0..UNIQUE).step_by(UNIQUE / DUPLICATES) {
        let value = framed(schema_id, &payment(&schema, index)?);
        records.push(TestRecord::new(format!("acct-{}", index % 17), value));
    }
    let good_body = payment(&schema, 0)?;
    let poison: [(&str, Vec<u8>); 4] = [
        ("invalid_avro", vec![0, 0, 0]),
        ("unsupported_format", {
            let mut value = framed(schema_id, &good_body);
            value[0] = 1;
            value
        }),
        ("unknown_schema", framed(999, &good_body)),
        (
            "invalid_avro",
            framed(schema_id, &good_body[..good_body.len() - 3]),
        ),
    ];
    for (_, value) in &poison {
        records.push(TestRecord::new("poison", value.clone()));
    }
    produce(&scenario.bootstrap, &scenario.input_topic, &records)?;

    // The registry is down when the engine starts: nothing may be committed or dead-lettered.
    registry.set_down(true);
    let config = scenario.write_config(dir.path(), "a")?;
    let journal = scenario.journal(dir.path(), "a");
    let log = dir.path().join("a.log");
    let engine = EngineProcess::start(&config, &log)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while registry.requests() < 6 {
        ensure!(
            Instant::now() < deadline,
            "the engine never asked the registry:\n{}",
            engine.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let committed = scenario.committed().unwrap_or_default();
    ensure!(
        committed.values().all(|offset| *offset <= 0),
        "offsets advanced while the registry was down: {committed:?}"
    );
    let text = std::fs::read_to_string(&log)?;
    ensure!(
        text.contains("Schema source unavailable"),
        "the outage is logged:\n{}",
        engine.log_tail(40)
    );

    registry.set_down(false);
    let consumed = scenario.wait_until_consumed(Duration::from_secs(120));
    let tail = engine.log_tail(60);
    consumed.with_context(|| tail.clone())?;
    let status = engine.stop()?;
    ensure!(status.success(), "engine exited with {status}:\n{tail}");

    let (exactly_once, report) = verify(&config, std::slice::from_ref(&journal))?;
    ensure!(exactly_once, "verify failed:\n{report}");

    let committed_txns = committed_transactions(std::slice::from_ref(&journal))?;
    let committed_only = |topic: &str, at_least: usize| -> Result<Vec<_>> {
        Ok(consume_all(
            &scenario.bootstrap,
            topic,
            at_least,
            Duration::from_secs(30),
        )?
        .into_iter()
        .filter(|record| {
            record
                .header("breadcrumb-txn")
                .is_some_and(|txn| committed_txns.contains(&txn))
        })
        .collect())
    };
    let output = committed_only(&scenario.output_topic, UNIQUE)?;
    assert_eq!(output.len(), UNIQUE, "each payment once");
    let duplicates = committed_only(&scenario.duplicates_topic, DUPLICATES)?;
    assert_eq!(duplicates.len(), DUPLICATES, "each retry caught");

    let dead_letters = committed_only(&scenario.dead_letter_topic, poison.len())?;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for record in &dead_letters {
        *reasons
            .entry(record.header("breadcrumb-dlq-reason").unwrap_or_default())
            .or_default() += 1;
        assert!(record.header("breadcrumb-source-offset").is_some());
    }
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for (reason, _) in &poison {
        *expected.entry((*reason).to_owned()).or_default() += 1;
    }
    assert_eq!(reasons, expected, "each bad value once, with its reason");
    Ok(())
}

fn sequenced_event(id: &str, account: &str, sequence: u64, time: &str) -> String {
    serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/billing",
        "type": "payment.settled",
        "subject": account,
        "time": time,
        "sequence": sequence.to_string(),
        "data": {"amount_cents": sequence * 100},
    })
    .to_string()
}

/// Gap records written as Avro: the schema in `schemas/avro/` registered under
/// `<gaps topic>-value`, each record in the wire format with that id, readable by apache-avro.
#[test]
fn gap_records_are_written_as_registered_avro() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = Broker::start(Storage::Sqlite(dir.path().join("broker.db")))?;
    let registry = SchemaRegistry::start()?;
    let mut scenario = Scenario::new(&broker.bootstrap(), "avro-gaps");
    let gaps_topic = format!("{}-gaps", scenario.output_topic);
    scenario.extra_toml = format!(
        r#"
[pipelines.payments.ordering]
first_sequence = 1
gap_timeout_ms = 1000

[generated_records]
format = "avro"
[generated_records.registry]
url = "{url}"
"#,
        url = registry.url()
    );
    create_topics(&scenario.bootstrap, &[(&scenario.input_topic, 1)], false)?;
    let events = [
        ("a-1", "acct-a", 1, "2026-11-21T10:00:00Z"),
        ("a-2", "acct-a", 2, "2026-11-21T10:00:01Z"),
        ("a-4", "acct-a", 4, "2026-11-21T10:00:02Z"),
        // Another key an hour later moves stream time past acct-a's gap timeout.
        ("b-1", "acct-b", 1, "2026-11-21T11:00:00Z"),
    ];
    let records: Vec<TestRecord> = events
        .iter()
        .map(|(id, account, sequence, time)| {
            TestRecord::new(*account, sequenced_event(id, account, *sequence, time))
                .header("content-type", "application/cloudevents+json")
        })
        .collect();
    produce(&scenario.bootstrap, &scenario.input_topic, &records)?;

    let config = scenario.write_config(dir.path(), "a")?;
    let engine = EngineProcess::start(&config, &dir.path().join("a.log"))?;
    let consumed = scenario.wait_until_consumed(Duration::from_secs(90));
    let tail = engine.log_tail(60);
    consumed.with_context(|| tail.clone())?;
    engine.stop()?;

    let gaps = consume_all(&scenario.bootstrap, &gaps_topic, 1, Duration::from_secs(20))?;
    ensure!(
        gaps.len() == 1,
        "one gap record, got {}:\n{tail}",
        gaps.len()
    );
    let value = gaps[0].value.clone().context("a value")?;
    // The id the engine registered is the one the registry gives the same schema again.
    let schema_text = breadcrumb_schemas::encode::ORDERING_GAP_SCHEMA;
    let id = registry.register(&format!("{gaps_topic}-value"), schema_text);
    ensure!(value[0] == 0, "magic byte");
    ensure!(
        u32::from_be_bytes(value[1..5].try_into()?) == id,
        "the registered schema id"
    );
    let schema = Schema::parse_str(schema_text)?;
    let record = apache_avro::from_avro_datum(&schema, &mut &value[5..], None)?;
    let apache_avro::types::Value::Record(fields) = record else {
        anyhow::bail!("not a record: {record:?}");
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.clone())
    };
    ensure!(field("from_sequence") == Some(apache_avro::types::Value::Long(3)));
    ensure!(field("to_sequence") == Some(apache_avro::types::Value::Long(3)));
    ensure!(
        field("reason")
            == Some(apache_avro::types::Value::Enum(
                0,
                "event_time_timeout".into()
            )),
        "{fields:?}"
    );
    Ok(())
}
