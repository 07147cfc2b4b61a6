//! End-to-end bench against a broker: exactly-once dedupe through the real engine, next to a raw
//! transactional consume→produce copy (no state, no decoding) measured in the same run on the
//! same input. Figures are reported, not asserted.
//!
//! Each system first drains the same backlog (throughput). Then, still running, it gets
//! `--latency-records` more records produced at `--latency-rate` per second (well below either
//! system's throughput, so nothing queues) and a read_committed consumer of its output measures
//! each output record's latency: the time it is received minus its timestamp, which is the
//! input's produce time (the engine keeps the input's timestamp on its outputs, as Kafka Streams
//! does, and the raw copy here does the same). Both commit every 100 ms, so the latency includes
//! up to one commit interval; the difference between the two is what breadcrumb adds.
//!
//! `cargo run --release -p breadcrumb-benches --bin e2e -- --records 200000`
//! (starts a Nisshi broker on SQLite storage unless `--bootstrap` names one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use breadcrumb_engine::config::EngineConfig;
use breadcrumb_engine::generate::{self, RecordKind, Workload, WorkloadSpec};
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
    /// Records of the latency phase (0: no latency phase).
    #[arg(long, default_value_t = 2_000)]
    latency_records: u64,
    /// Produce rate of the latency phase, records per second.
    #[arg(long, default_value_t = 500)]
    latency_rate: u64,
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

    let latency_spec = |seed: u64| WorkloadSpec {
        records: args.latency_records,
        duplicate_percent: 10.0,
        conflict_percent: 0.0,
        poison_percent: 0.0,
        seed,
        ..WorkloadSpec::default()
    };

    // The raw copy's latency records land in the engine's backlog too.
    let raw_latency = latency_spec(8);
    let (raw, raw_latencies) = raw_copy(
        &bootstrap,
        input,
        "bench-raw-output",
        total,
        args.latency_records,
        || {
            LatencyRun::start(
                &bootstrap,
                input,
                "bench-raw-output",
                raw_latency,
                args.latency_rate,
                args.latency_records,
            )
        },
    )?;
    let engine_backlog = total + args.latency_records;
    let engine_latency = latency_spec(9);
    let engine_outputs = Workload::new(engine_latency.clone())
        .filter(|record| record.kind == RecordKind::New)
        .count() as u64;
    let (engine, engine_latencies) =
        breadcrumb(&bootstrap, input, engine_backlog, dir.path(), || {
            LatencyRun::start(
                &bootstrap,
                input,
                "bench-deduped",
                engine_latency,
                args.latency_rate,
                engine_outputs,
            )
        })?;
    let raw_rate = total as f64 / raw.as_secs_f64();
    let engine_rate = engine_backlog as f64 / engine.as_secs_f64();
    println!(
        "raw transactional copy:      {:>9.0} records/s ({total} records in {:.2} s, group join included)",
        raw_rate,
        raw.as_secs_f64()
    );
    println!(
        "breadcrumb exactly-once dedupe: {:>6.0} records/s ({engine_backlog} records in {:.2} s, group join and restore included)",
        engine_rate,
        engine.as_secs_f64()
    );
    println!(
        "ratio: {:.0}% of the raw copy",
        100.0 * engine_rate / raw_rate
    );
    if args.latency_records > 0 {
        let raw_summary = LatencySummary::of(raw_latencies);
        let engine_summary = LatencySummary::of(engine_latencies);
        println!(
            "latency, input produced -> output received by a read_committed consumer, {} records at {}/s:",
            args.latency_records, args.latency_rate
        );
        raw_summary.print("raw transactional copy");
        engine_summary.print("breadcrumb exactly-once dedupe");
        if let (Some(raw_p99), Some(engine_p99)) = (raw_summary.p99, engine_summary.p99) {
            println!(
                "p99 added by breadcrumb over the raw copy: {} ms",
                engine_p99 - raw_p99
            );
        }
    }
    drop(broker);
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// The latency phase of one system: a paced producer into its input, and a read_committed
/// consumer of its output timing every output record produced during the phase.
struct LatencyRun {
    producer: JoinHandle<Result<()>>,
    probe: JoinHandle<Result<Vec<i64>>>,
}

impl LatencyRun {
    /// Starts the phase: `outputs` is how many output records the phase's input makes.
    fn start(
        bootstrap: &str,
        input: &str,
        output: &str,
        spec: WorkloadSpec,
        rate: u64,
        outputs: u64,
    ) -> Result<Self> {
        let since_ms = now_ms();
        let mut consumer_config = base_config(bootstrap);
        consumer_config
            .set("group.id", "bench-latency-probe")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer = consumer_config.create()?;
        // Start at the current end of every partition: the phase's outputs all come later.
        let metadata = consumer.fetch_metadata(Some(output), Duration::from_secs(10))?;
        let partitions = metadata
            .topics()
            .first()
            .map(|topic| topic.partitions().len())
            .unwrap_or(0);
        if partitions == 0 {
            bail!("topic {output} has no partitions");
        }
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions as i32 {
            let (_, high) =
                consumer.fetch_watermarks(output, partition, Duration::from_secs(10))?;
            assignment.add_partition_offset(output, partition, Offset::Offset(high))?;
        }
        consumer.assign(&assignment)?;
        let probe = std::thread::spawn(move || -> Result<Vec<i64>> {
            let mut latencies = Vec::with_capacity(outputs as usize);
            let deadline = Instant::now() + Duration::from_secs(120);
            while (latencies.len() as u64) < outputs && Instant::now() < deadline {
                if let Some(message) = consumer.poll(Duration::from_millis(5)) {
                    let message = message?;
                    if let Some(produced_ms) = message.timestamp().to_millis() {
                        if produced_ms >= since_ms {
                            latencies.push(now_ms() - produced_ms);
                        }
                    }
                }
            }
            Ok(latencies)
        });
        let client = base_config(bootstrap);
        let input = input.to_owned();
        let producer = std::thread::spawn(move || -> Result<()> {
            generate::produce(&client, &input, spec, rate, |_| {})?;
            Ok(())
        });
        Ok(Self { producer, probe })
    }

    /// Whether the probe has seen every output (or given up).
    fn is_finished(&self) -> bool {
        self.probe.is_finished()
    }

    fn finish(self) -> Result<Vec<i64>> {
        self.producer
            .join()
            .map_err(|_| anyhow::anyhow!("latency producer panicked"))??;
        self.probe
            .join()
            .map_err(|_| anyhow::anyhow!("latency probe panicked"))?
    }
}

struct LatencySummary {
    count: usize,
    p50: Option<i64>,
    p99: Option<i64>,
    max: Option<i64>,
}

impl LatencySummary {
    fn of(mut latencies: Vec<i64>) -> Self {
        latencies.sort_unstable();
        let at = |quantile: f64| {
            (!latencies.is_empty()).then(|| {
                let rank = (quantile * latencies.len() as f64).ceil() as usize;
                latencies[rank.clamp(1, latencies.len()) - 1]
            })
        };
        Self {
            count: latencies.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: latencies.last().copied(),
        }
    }

    fn print(&self, name: &str) {
        let show = |value: Option<i64>| value.map_or("-".to_owned(), |ms| format!("{ms} ms"));
        println!(
            "  {name}: p50 {}, p99 {}, max {} ({} outputs timed)",
            show(self.p50),
            show(self.p99),
            show(self.max),
            self.count
        );
    }
}

/// Copies `input` to `output` in transactions every 100 ms, offsets included, keeping each
/// record's timestamp. Returns the time from subscribing to the commit of the `backlog`-th record,
/// then runs the latency phase (`start_latency`, `extra` more records) and returns its latencies.
fn raw_copy(
    bootstrap: &str,
    input: &str,
    output: &str,
    backlog: u64,
    extra: u64,
    start_latency: impl FnOnce() -> Result<LatencyRun>,
) -> Result<(Duration, Vec<i64>)> {
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
    let mut start_latency = Some(start_latency);
    let started = Instant::now();
    producer.init_transactions(Duration::from_secs(30))?;
    consumer.subscribe(&[input])?;
    let mut copied = 0u64;
    let mut target = backlog;
    let mut backlog_elapsed = None;
    let mut latency = None;
    let mut open = false;
    let mut opened = Instant::now();
    let mut offsets: std::collections::BTreeMap<i32, i64> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if copied >= target && !open {
            if backlog_elapsed.is_some() {
                break;
            }
            backlog_elapsed = Some(started.elapsed());
            if extra == 0 {
                break;
            }
            latency = start_latency.take().map(|start| start()).transpose()?;
            target += extra;
        }
        if Instant::now() > deadline {
            bail!("raw copy did not finish: {copied}/{target}");
        }
        if copied < target {
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
                if let Some(timestamp) = message.timestamp().to_millis() {
                    record = record.timestamp(timestamp);
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
        if open && (opened.elapsed() >= Duration::from_millis(100) || copied >= target) {
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
    let latencies = match latency {
        Some(run) => run.finish()?,
        None => Vec::new(),
    };
    Ok((backlog_elapsed.unwrap_or_default(), latencies))
}

/// Runs the engine in-process on `input` until it has read the `backlog`; returns the time that
/// took, then runs the latency phase (`start_latency`) on the running engine and returns its
/// latencies.
fn breadcrumb(
    bootstrap: &str,
    input: &str,
    backlog: u64,
    dir: &std::path::Path,
    start_latency: impl FnOnce() -> Result<LatencyRun>,
) -> Result<(Duration, Vec<i64>)> {
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
    while events_in.get() < backlog {
        if Instant::now() > deadline || engine.is_finished() {
            bail!("engine did not finish: {}/{backlog}", events_in.get());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    let latency = start_latency()?;
    while !latency.is_finished() && !engine.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let latencies = latency.finish()?;
    shutdown.store(true, Ordering::Release);
    engine
        .join()
        .map_err(|_| anyhow::anyhow!("engine panicked"))??;
    Ok((elapsed, latencies))
}
