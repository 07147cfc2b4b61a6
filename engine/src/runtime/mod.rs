//! The runtime: builds the Kafka clients and the processing core, runs the processing loop on a
//! dedicated thread, and rebuilds clients after fencing or fatal errors.
//!
//! The loop, on one thread:
//! 1. `poll` the consumer; rebalance callbacks run inside it (commit or abort before partitions
//!    leave, restore before new ones are processed);
//! 2. process the record, if any, inside the open transaction;
//! 3. commit when `commit_interval_ms` has passed or the transaction is full.

mod chain;
pub mod context;
mod core;
mod edges;
pub mod io;
pub mod pipeline;
mod producer;
mod quarantine;
pub mod restore;
mod split;
mod stall;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use breadcrumb_state::{StateBackend, StateOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use self::context::{DeliveryContext, EndOfPartitionContext, EngineContext};
pub use self::core::{Core, CoreParts, COMMIT_DELAY_ENV, PANIC_ON_ID_ENV};
use self::io::RdKafkaIo;
use self::producer::TransactionalProducer;
pub use self::stall::StallFlag;
use crate::config::{EngineConfig, ProcessingGuarantee};
use crate::error::{EngineError, Result};
use crate::http::Health;
use crate::journal::{self, Journal};
use crate::metrics::Metrics;
use crate::openlineage::Emitter;
use crate::query::{self, QueryReceiver, QUERIES_PER_ITERATION};
use crate::topics::{self, TopicSpec};

const INIT_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// librdkafka settings common to every client, from the `[kafka]` passthrough.
pub fn base_client_config(config: &EngineConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in &config.kafka {
        client.set(key, value);
    }
    client
}

fn consumer_config(config: &EngineConfig) -> ClientConfig {
    let mut client = base_client_config(config);
    client
        .set("group.id", &config.application_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set(
            "queued.max.messages.kbytes",
            config.max_prefetch_kbytes.to_string(),
        )
        .set("statistics.interval.ms", "5000")
        // How other instances find this one's query endpoint: DescribeGroups lists every
        // member's client id with its assignment (see `crate::query`).
        .set(
            "client.id",
            query::member_client_id(
                &config.instance_id(),
                config
                    .http
                    .enabled
                    .then(|| config.http.advertised_address()),
            ),
        );
    client
}

/// The consumer that restores state from changelogs, one store partition at a time.
pub fn restore_consumer_config(config: &EngineConfig) -> ClientConfig {
    let mut client = base_client_config(config);
    client
        .set("group.id", format!("{}-restore", config.application_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    // A restore ends at the partition's end, which a fetch reports only after waiting
    // `fetch.wait.max.ms` for more data (500 ms by default), and the next partition's
    // watermark query can queue behind that wait: 0.5 to 1 s per store partition, empty or
    // not, at every assignment.
    if !config.kafka.contains_key("fetch.wait.max.ms") {
        client.set("fetch.wait.max.ms", RESTORE_FETCH_WAIT_MS.to_string());
    }
    client
}

/// `fetch.wait.max.ms` of the restore consumer (unless `[kafka]` sets one).
const RESTORE_FETCH_WAIT_MS: u64 = 20;

fn producer_config(config: &EngineConfig) -> ClientConfig {
    let mut client = base_client_config(config);
    client.set("enable.idempotence", "true");
    if !config.kafka.contains_key("linger.ms") {
        client.set("linger.ms", "5");
    }
    if config.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
        client
            .set("transactional.id", config.transactional_id())
            .set(
                "transaction.timeout.ms",
                config.transaction_timeout_ms.to_string(),
            );
    }
    client
}

/// The topics breadcrumb writes, shaped after the inputs.
pub fn planned_topics(config: &EngineConfig) -> Result<Vec<TopicSpec>> {
    let inputs: Vec<String> = config
        .pipelines
        .values()
        .flat_map(|pipeline| {
            pipeline
                .input_topics
                .iter()
                .chain(&pipeline.span_topics)
                .cloned()
        })
        .collect();
    let counts = topics::partition_counts(&base_client_config(config), &inputs)?;
    planned_topics_for(config, &counts)
}

/// [`planned_topics`] with the input topics' partition counts given.
pub fn planned_topics_for(
    config: &EngineConfig,
    counts: &BTreeMap<String, i32>,
) -> Result<Vec<TopicSpec>> {
    let mut specs = Vec::new();
    let mut max_partitions = 1;
    for (name, pipeline) in &config.pipelines {
        let mut partitions = None;
        for topic in pipeline.input_topics.iter().chain(&pipeline.span_topics) {
            let count = *counts.get(topic).ok_or_else(|| EngineError::Topic {
                topic: topic.clone(),
                reason: format!("input of pipeline `{name}` does not exist"),
            })?;
            partitions = Some(partitions.map_or(count, |known: i32| known.max(count)));
        }
        let partitions = partitions.unwrap_or(1);
        max_partitions = max_partitions.max(partitions);
        let mut add = |topic: String, compacted: bool, exact: bool| {
            specs.push(TopicSpec {
                name: topic,
                partitions,
                compacted,
                exact_partitions: exact,
            })
        };
        add(pipeline.output_topic.clone(), false, false);
        if let Some(topic) = &pipeline.duplicates_topic {
            add(topic.clone(), false, false);
        }
        if pipeline.sampling.is_none() {
            add(pipeline.conflicts_topic(), false, false);
        }
        for topic in [
            pipeline.late_topic(),
            pipeline.gaps_topic(),
            pipeline.decisions_topic(),
            pipeline.lineage_topic(),
        ]
        .into_iter()
        .flatten()
        {
            add(topic, false, false);
        }
        if pipeline.repartition_by.is_some() {
            add(config.repartition_topic(name), false, true);
        }
        for store in pipeline::declared_store_names_of(name, pipeline) {
            add(config.changelog_topic(&store), true, true);
        }
    }
    // The OpenLineage topic is sized like the dead-letter topic when breadcrumb creates it; an
    // existing one (often shared by many producers of run events) is used as it is.
    let openlineage_topic = config.openlineage.as_ref().map(|ol| ol.topic.clone());
    for name in [config.dead_letter_topic(), config.ledger_topic()]
        .into_iter()
        .chain(openlineage_topic)
    {
        specs.push(TopicSpec {
            name,
            partitions: max_partitions,
            compacted: false,
            exact_partitions: false,
        });
    }
    specs.dedup_by(|a, b| a.name == b.name);
    Ok(specs)
}

/// Runs the engine until `shutdown` is set; recreates the Kafka clients after fatal errors.
pub fn run(
    config: Arc<EngineConfig>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: Arc<AtomicBool>,
) -> Result<()> {
    run_with_queries(config, metrics, health, shutdown, None)
}

/// [`run`], also answering the state queries that arrive on `queries` (a few per loop
/// iteration, between records).
pub fn run_with_queries(
    config: Arc<EngineConfig>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: Arc<AtomicBool>,
    queries: Option<QueryReceiver>,
) -> Result<()> {
    std::fs::create_dir_all(&config.state.dir)?;
    let backend = StateBackend::open(
        &config.state.dir,
        &pipeline::declared_store_names(&config),
        &StateOptions {
            block_cache_bytes: config.state.block_cache_bytes,
            write_buffer_bytes: config.state.write_buffer_bytes,
            ..StateOptions::default()
        },
    )?;
    let session_timeout_ms = config
        .kafka
        .get("session.timeout.ms")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(core::DEFAULT_SESSION_TIMEOUT_MS);
    // Half the session timeout: the group may already be rebalancing by then.
    let stall = StallFlag::watch(Duration::from_millis(session_timeout_ms / 2));
    let lineage = Emitter::from_config(&config, &metrics);
    let outcome = loop {
        match run_once(
            &config,
            &backend,
            &metrics,
            &health,
            &shutdown,
            &stall,
            lineage.as_ref(),
            queries.as_ref(),
        ) {
            Ok(()) => break Ok(()),
            Err(
                error @ (EngineError::Fatal(_)
                | EngineError::Kafka(_)
                | EngineError::RestoreTimeout { .. }),
            ) => {
                tracing::warn!(%error, "Recreating Kafka clients and rejoining the group.");
                metrics.producer_restarts.inc();
                health.set_ready(false);
                if shutdown.load(Ordering::Acquire) {
                    break Ok(());
                }
                std::thread::sleep(RESTART_BACKOFF);
            }
            Err(error) => break Err(error),
        }
    };
    let outcome = backend.flush().map_err(EngineError::from).and(outcome);
    health.set_dead();
    if let Some(lineage) = &lineage {
        lineage.finish(outcome.as_ref().err(), &config.kafka);
    }
    outcome
}

// The run's shared handles, each passed through once; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn run_once(
    config: &Arc<EngineConfig>,
    backend: &StateBackend,
    metrics: &Metrics,
    health: &Arc<Health>,
    shutdown: &AtomicBool,
    stall: &StallFlag,
    lineage: Option<&Emitter>,
    queries: Option<&QueryReceiver>,
) -> Result<()> {
    // A stop seen before this run's clients existed concerns the clients just replaced.
    stall.take();
    let (pipelines, routes) = pipeline::compile(config, backend, metrics)?;
    let producer: ThreadedProducer<DeliveryContext> =
        producer_config(config).create_with_context(DeliveryContext::default())?;
    if config.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
        // Fences any previous incarnation of this instance and completes or aborts its open
        // transaction before anything else happens.
        producer.init_transactions(INIT_TIMEOUT)?;
    }
    let restore_consumer: BaseConsumer<EndOfPartitionContext> =
        restore_consumer_config(config).create_with_context(EndOfPartitionContext)?;
    let journal = match &config.transaction_journal_path {
        Some(path) => Some(Journal::open(path)?),
        None => None,
    };
    let incarnation = format!("{:08x}", rand::random::<u32>());
    let core = Core::new(CoreParts {
        config: config.clone(),
        pipelines,
        routes,
        backend: backend.clone(),
        io: RdKafkaIo {
            producer: TransactionalProducer::new(
                producer,
                Duration::from_millis(config.transaction_timeout_ms),
            ),
            restore_consumer,
        },
        journal,
        metrics: metrics.clone(),
        health: health.clone(),
        incarnation,
        stall: stall.clone(),
    });
    let topics = core.subscribed_topics();
    let consumer: BaseConsumer<EngineContext> =
        consumer_config(config).create_with_context(EngineContext {
            core: Mutex::new(core),
            consumer_lag: metrics.consumer_lag.clone(),
        })?;
    if let Some(path) = &config.transaction_journal_path {
        resolve_journal(&consumer, path)?;
    }
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(
        group = %config.application_id,
        transactional_id = %config.transactional_id(),
        topics = ?topics,
        "Joined the consumer group."
    );
    // An instance with nothing assigned yet is still ready to serve.
    health.set_ready(true);
    if let Some(lineage) = lineage {
        lineage.start();
    }

    let result = process_until_shutdown(&consumer, shutdown, queries);
    let mut core = consumer.context().core.lock().expect("core lock poisoned");
    match &result {
        Ok(()) => {
            if let Err(error) = core.commit(&consumer) {
                tracing::warn!(%error, "Final commit failed; aborting.");
                let _ = core.abort(&consumer, &[]);
            }
        }
        Err(_) => {
            core.fatal = Some(EngineError::Fatal(
                "shutting down after an error".to_owned(),
            ));
        }
    }
    let flushed = core.io().producer.flush(Duration::from_secs(10));
    if let Err(error) = flushed {
        tracing::debug!(%error, "Producer flush at shutdown.");
    }
    core.close();
    drop(core);
    consumer.unsubscribe();
    result
}

fn process_until_shutdown(
    consumer: &BaseConsumer<EngineContext>,
    shutdown: &AtomicBool,
    queries: Option<&QueryReceiver>,
) -> Result<()> {
    let mut schema_backoff = SCHEMA_BACKOFF_INITIAL;
    while !shutdown.load(Ordering::Acquire) {
        let message = consumer.poll(POLL_INTERVAL);
        let mut core = consumer.context().core.lock().expect("core lock poisoned");
        if let Some(error) = core.fatal.take() {
            return Err(error);
        }
        core.fence_if_stalled(consumer)?;
        match message {
            Some(Ok(message)) => match core.process(&message) {
                Ok(()) => schema_backoff = SCHEMA_BACKOFF_INITIAL,
                Err(EngineError::Kafka(kafka)) => {
                    tracing::warn!(error = %kafka, "Send failed; aborting the transaction.");
                    core.abort(consumer, &[])?;
                }
                Err(EngineError::SchemaUnavailable(reason)) => {
                    // The record is good as far as anyone knows: rewind the transaction and
                    // read it again later, never dead-letter it.
                    core.abort(consumer, &[])?;
                    core.metrics().schema_unavailable.inc();
                    drop(core);
                    tracing::warn!(
                        %reason,
                        retry_in_ms = schema_backoff.as_millis() as u64,
                        "Schema source unavailable; transaction rewound, retrying."
                    );
                    sleep_unless_shutdown(schema_backoff, shutdown);
                    schema_backoff = (schema_backoff * 2).min(SCHEMA_BACKOFF_MAX);
                    continue;
                }
                Err(other) => return Err(other),
            },
            Some(Err(error)) => {
                tracing::warn!(%error, "Consumer error.");
            }
            None => {}
        }
        if let Err(error) = core.tick() {
            match error {
                EngineError::Kafka(kafka) => {
                    tracing::warn!(error = %kafka, "Send failed; aborting the transaction.");
                    core.abort(consumer, &[])?;
                }
                other => return Err(other),
            }
        }
        core.maybe_commit(consumer)?;
        if let Some(queries) = queries {
            queries.serve(QUERIES_PER_ITERATION, |query| core.answer_query(query));
        }
    }
    Ok(())
}

/// First wait after a schema source failed to answer; doubled up to [`SCHEMA_BACKOFF_MAX`].
const SCHEMA_BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Longest wait between retries of an unavailable schema source: well under librdkafka's
/// `max.poll.interval.ms`, so the instance keeps its partitions through an outage.
const SCHEMA_BACKOFF_MAX: Duration = Duration::from_secs(30);

fn sleep_unless_shutdown(duration: Duration, shutdown: &AtomicBool) {
    let deadline = std::time::Instant::now() + duration;
    while !shutdown.load(Ordering::Acquire) {
        let now = std::time::Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}

/// Decides the transaction a previous incarnation left pending, from the group's committed
/// offsets (after `init_transactions` has completed or aborted it).
fn resolve_journal(consumer: &BaseConsumer<EngineContext>, path: &std::path::Path) -> Result<()> {
    let (_, pending) = journal::read(path)?;
    if pending.is_empty() {
        return Ok(());
    }
    let mut request = TopicPartitionList::new();
    for entry in pending.iter().filter(|entry| !entry.offsets.is_empty()) {
        for (topic, partition, _) in &entry.offsets {
            request.add_partition(topic, *partition);
        }
    }
    let committed_list = if request.count() > 0 {
        consumer.committed_offsets(request, INIT_TIMEOUT)?
    } else {
        TopicPartitionList::new()
    };
    let mut committed = BTreeMap::new();
    for element in committed_list.elements() {
        if let Offset::Offset(offset) = element.offset() {
            committed.insert((element.topic().to_owned(), element.partition()), offset);
        }
    }
    let mut writer = Journal::open(path)?;
    for entry in &pending {
        let outcome = journal::resolve_pending(entry, &committed);
        tracing::info!(txn = %entry.txn, committed = outcome, "Resolved a transaction left open by a previous run.");
        writer.outcome(&entry.txn, outcome)?;
    }
    Ok(())
}
