//! End-to-end bench against a broker: exactly-once dedupe through the real engine, next to a raw
//! transactional consume→produce copy (no state, no decoding) measured in the same run on the
//! same input. Figures are reported, not asserted.
//!
//! `cargo run --release -p breadcrumb-benches --bin e2e -- --records 200000`
//! (starts a Nisshi broker on SQLite storage unless `--bootstrap` names one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use breadcrumb_engine::config::EngineConfig;
use breadcrumb_engine::generate::{self, WorkloadSpec};
use breadcrumb_engine::http::Health;
use breadcrumb_engine::metrics::Metrics;
use breadcrumb_engine::runtime;
use breadcrumb_integration_tests::{base_config, create_topics, Broker, Storage};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Parser)]
struct Args {
    /// An existing broker; otherwise a Nisshi broker is started.
    #[arg(long)]
    bootstrap: Option<String>,
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::TempDir::new()?;
    let mut broker = None;
    let bootstrap = match &args.bootstrap {
        Some(bootstrap) => bootstrap.clone(),
        None => {
            let started = Broker::start(Storage::Sqlite(dir.path().join("nisshi").join("b.db")))?;
            let bootstrap = started.bootstrap();
            broker = Some(started);
            bootstrap
        }
    };
    let input = "bench-input";
    create_topics(
        &bootstrap,
        &[
            (input, args.partitions),
            ("bench-raw-output", args.partitions),
        ],
        false,
    )?;
    let produced = generate::produce(
        &base_config(&bootstrap),
        input,
        WorkloadSpec {
            records: args.records,
            duplicate_percent: 10.0,
            conflict_percent: 0.0,
            poison_percent: 0.0,
            ..WorkloadSpec::default()
        },
        0,
        |_| {},
    )?;
    let total = produced.total();
    println!(
        "input: {total} records ({} duplicates), {} partitions",
        produced.duplicates, args.partitions
    );

    let raw = raw_copy(&bootstrap, input, "bench-raw-output", total)?;
    let engine = breadcrumb(&bootstrap, input, total, dir.path())?;
    let rate = |elapsed: Duration| total as f64 / elapsed.as_secs_f64();
    println!(
        "raw transactional copy:      {:>9.0} records/s ({:.2} s, group join included)",
        rate(raw),
        raw.as_secs_f64()
    );
    println!(
        "breadcrumb exactly-once dedupe: {:>6.0} records/s ({:.2} s, group join and restore included)",
        rate(engine),
        engine.as_secs_f64()
    );
    println!(
        "ratio: {:.0}% of the raw copy",
        100.0 * rate(engine) / rate(raw)
    );
    drop(broker);
    Ok(())
}

/// Copies `input` to `output` in transactions every 100 ms, offsets included; returns the time
/// from subscribing to the last commit.
fn raw_copy(bootstrap: &str, input: &str, output: &str, expected: u64) -> Result<Duration> {
    let mut consumer_config = base_config(bootstrap);
    consumer_config
        .set("group.id", "bench-raw-copy")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = consumer_config.create()?;
    let mut producer_config = base_config(bootstrap);
    producer_config
        .set("transactional.id", "bench-raw-copy")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    let producer: ThreadedProducer<DefaultProducerContext> = producer_config.create()?;
    let started = Instant::now();
    producer.init_transactions(Duration::from_secs(30))?;
    consumer.subscribe(&[input])?;
    let mut copied = 0u64;
    let mut open = false;
    let mut opened = Instant::now();
    let mut offsets: std::collections::BTreeMap<i32, i64> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(600);
    while copied < expected || open {
        if Instant::now() > deadline {
            bail!("raw copy did not finish: {copied}/{expected}");
        }
        if copied < expected {
            if let Some(message) = consumer.poll(Duration::from_millis(20)) {
                let message = message?;
                if !open {
                    producer.begin_transaction()?;
                    open = true;
                    opened = Instant::now();
                }
                let headers = message.headers().map(|headers| headers.detach());
                let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(output);
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if let Some(value) = message.payload() {
                    record = record.payload(value);
                }
                if let Some(headers) = headers {
                    record = record.headers(headers);
                }
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err((error, _)) => return Err(error.into()),
                    }
                }
                offsets.insert(message.partition(), message.offset() + 1);
                copied += 1;
            }
        }
        if open && (opened.elapsed() >= Duration::from_millis(100) || copied >= expected) {
            let mut list = TopicPartitionList::new();
            for (partition, offset) in &offsets {
                list.add_partition_offset(input, *partition, Offset::Offset(*offset))?;
            }
            let metadata = consumer.group_metadata().expect("group member");
            producer.send_offsets_to_transaction(&list, &metadata, Duration::from_secs(30))?;
            producer.commit_transaction(Duration::from_secs(30))?;
            open = false;
        }
    }
    Ok(started.elapsed())
}

/// Runs the engine in-process on `input` until every record's transaction committed.
fn breadcrumb(
    bootstrap: &str,
    input: &str,
    expected: u64,
    dir: &std::path::Path,
) -> Result<Duration> {
    let config = EngineConfig::from_toml(&format!(
        r#"
application_id = "bench-breadcrumb"
instance_id = "bench"
replication_factor = 1

[kafka]
"bootstrap.servers" = "{bootstrap}"
"broker.address.family" = "v4"

[state]
dir = "{state}"

[http]
enabled = false

[pipelines.payments]
input_topics = ["{input}"]
output_topic = "bench-deduped"
duplicates_topic = "bench-duplicates"

[pipelines.payments.decoder]
format = "cloudevents"
"#,
        state = dir.join("state").display()
    ))?;
    let config = Arc::new(config);
    let topics = runtime::planned_topics(&config)?;
    for spec in &topics {
        create_topics(bootstrap, &[(&spec.name, spec.partitions)], spec.compacted)?;
    }
    let metrics = Metrics::new();
    let shutdown = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let engine = {
        let (config, metrics, shutdown) = (config.clone(), metrics.clone(), shutdown.clone());
        std::thread::spawn(move || runtime::run(config, metrics, Health::new(), shutdown))
    };
    let events_in = metrics.events_in.with_label_values(&["payments", input]);
    let deadline = Instant::now() + Duration::from_secs(600);
    while events_in.get() < expected {
        if Instant::now() > deadline || engine.is_finished() {
            bail!("engine did not finish: {}/{expected}", events_in.get());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    shutdown.store(true, Ordering::Release);
    engine
        .join()
        .map_err(|_| anyhow::anyhow!("engine panicked"))??;
    Ok(elapsed)
}
