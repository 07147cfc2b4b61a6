//! Personal data through the engine: canary values planted in event fields, the Kafka key and a
//! malformed record must reach no topic the engine writes (outputs, duplicates, dead letters,
//! changelogs; committed or aborted), no log line and no metric, while dedupe still works on
//! tokenized values.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use breadcrumb_integration_tests::{
    base_config, consume_all, consume_all_read_uncommitted, create_topics, produce, Broker,
    Storage, TestRecord,
};
use common::{EngineProcess, Scenario};
use rdkafka::consumer::{BaseConsumer, Consumer};

const EMAIL_CANARY: &str = "canary.person.3e7f@example.org";
const CARD_CANARY: &str = "4000056655665556";
const BROKEN_CANARY: &str = "canary-in-broken-json-91c2";
const EVENTS: usize = 120;

fn event(index: usize) -> String {
    serde_json::json!({
        "specversion": "1.0",
        "id": format!("evt-{index}"),
        "source": "/shop",
        "type": "order.placed",
        "time": "2026-11-21T10:00:00Z",
        "subject": format!("acct-{}", index % 7),
        "datacontenttype": "application/json",
        "data": {
            // A different address per account: tokens must stay distinct and stable.
            "email": format!("{}.{}", index % 7, EMAIL_CANARY),
            "card": CARD_CANARY,
            "amount_cents": index * 10,
        }
    })
    .to_string()
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn scrape(port: u16) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

#[test]
fn planted_canaries_reach_no_topic_log_or_metric() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = Broker::start(Storage::Sqlite(dir.path().join("broker.db")))?;
    let mut scenario = Scenario::new(&broker.bootstrap(), "pii");
    let key_file = dir.path().join("pii-key");
    std::fs::write(&key_file, "pii-test-key-at-least-16-bytes\n")?;
    let http_port = free_port()?;
    scenario.http_port = Some(http_port);
    scenario.extra_toml = format!(
        r#"
[pipelines.payments.pii]
key_file = "{key}"
key = "tokenize"
fields = [
  {{ path = "/data/email", action = "tokenize" }},
  {{ path = "/data/card", action = "mask" }},
]
"#,
        key = key_file.display()
    );
    create_topics(&scenario.bootstrap, &[(&scenario.input_topic, 2)], false)?;
    let mut records: Vec<TestRecord> = (0..EVENTS)
        .map(|index| {
            TestRecord::new(format!("{}.{}", index % 7, EMAIL_CANARY), event(index))
                .header("content-type", "application/cloudevents+json")
        })
        .collect();
    // Every tenth event again: a duplicate to catch on its (untouched) id.
    for index in (0..EVENTS).step_by(10) {
        records.push(
            TestRecord::new(format!("{}.{}", index % 7, EMAIL_CANARY), event(index))
                .header("content-type", "application/cloudevents+json"),
        );
    }
    records.push(
        TestRecord::new(EMAIL_CANARY, format!("{{\"id\": \"{BROKEN_CANARY}\""))
            .header("content-type", "application/cloudevents+json")
            .header("x-email", EMAIL_CANARY),
    );
    produce(&scenario.bootstrap, &scenario.input_topic, &records)?;

    let config = scenario.write_config(dir.path(), "a")?;
    let log = dir.path().join("a.log");
    let engine = EngineProcess::start(&config, &log)?;
    let consumed = scenario.wait_until_consumed(Duration::from_secs(120));
    let tail = engine.log_tail(60);
    consumed.with_context(|| tail.clone())?;
    let metrics = scrape(http_port).context("scraping /metrics")?;
    let status = engine.stop()?;
    ensure!(status.success(), "engine exited with {status}:\n{tail}");

    // Dedupe still works on rewritten records.
    let output = consume_all(
        &scenario.bootstrap,
        &scenario.output_topic,
        EVENTS,
        Duration::from_secs(30),
    )?;
    let ids: std::collections::BTreeSet<String> = output
        .iter()
        .filter_map(|record| {
            let value: serde_json::Value = serde_json::from_slice(record.value.as_ref()?).ok()?;
            Some(value["id"].as_str()?.to_owned())
        })
        .collect();
    ensure!(ids.len() == EVENTS, "{} distinct ids out", ids.len());
    let first: serde_json::Value = serde_json::from_slice(output[0].value.as_ref().unwrap())?;
    ensure!(
        first["data"]["email"]
            .as_str()
            .is_some_and(|token| token.starts_with("tok_")),
        "{first}"
    );
    ensure!(first["data"]["card"] == "****************", "{first}");
    ensure!(
        output[0].header("breadcrumb-pii").as_deref() == Some("rewritten"),
        "rewritten records are marked"
    );

    // Every topic the engine wrote, aborted transactions included.
    let consumer: BaseConsumer = base_config(&scenario.bootstrap).create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let written: Vec<String> = metadata
        .topics()
        .iter()
        .map(|topic| topic.name().to_owned())
        .filter(|name| name.starts_with(&scenario.application_id) && *name != scenario.input_topic)
        .collect();
    ensure!(
        written.iter().any(|name| name.ends_with("-changelog")),
        "changelog topics are among those checked: {written:?}"
    );
    let mut dead_letters = 0;
    let mut checked = 0;
    for topic in &written {
        for record in
            consume_all_read_uncommitted(&scenario.bootstrap, topic, 0, Duration::from_secs(5))?
        {
            let mut bytes = Vec::new();
            bytes.extend(record.key.iter().flatten());
            bytes.extend(record.value.iter().flatten());
            for (name, value) in &record.headers {
                bytes.extend(name.as_bytes());
                bytes.extend(value.iter().flatten());
            }
            let text = String::from_utf8_lossy(&bytes);
            checked += 1;
            for canary in [EMAIL_CANARY, CARD_CANARY, BROKEN_CANARY] {
                ensure!(!text.contains(canary), "`{canary}` reached topic {topic}");
            }
            if *topic == scenario.dead_letter_topic {
                dead_letters += 1;
                ensure!(record.value.is_none() && record.key.is_none());
                ensure!(record.header("breadcrumb-dlq-reason").as_deref() == Some("invalid_json"));
                ensure!(record.header("breadcrumb-source-offset").is_some());
            }
        }
    }
    ensure!(
        dead_letters == 1,
        "the broken record is dead-lettered once, as coordinates"
    );
    // Outputs, duplicates and one changelog record per new id at least.
    ensure!(
        checked >= 2 * EVENTS + EVENTS / 10,
        "only {checked} records checked"
    );

    let log_text = std::fs::read_to_string(&log)?;
    for canary in [EMAIL_CANARY, CARD_CANARY, BROKEN_CANARY, "pii-test-key"] {
        ensure!(!log_text.contains(canary), "`{canary}` reached the log");
        ensure!(!metrics.contains(canary), "`{canary}` reached /metrics");
    }
    ensure!(
        metrics.contains("breadcrumb_events_in_total"),
        "metrics were scraped: {metrics}"
    );
    Ok(())
}
