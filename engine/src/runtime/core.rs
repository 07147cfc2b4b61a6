//! The processing core: one record at a time through decode and operators, outputs into the open
//! transaction, and the commit that makes outputs, changelogs and input offsets visible together.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breadcrumb_operators::lineage::Span;
use breadcrumb_operators::{Header as OperatorHeader, Port};
use breadcrumb_schemas::otlp::{parse_request, service_name, span_identity, Batch};
use breadcrumb_schemas::{DecodeErrorClass, Envelope, HeaderRef, RawRecord};
use breadcrumb_state::format::encode_input_offset;
use breadcrumb_state::{Checkpoint, PartitionStore, StateBackend, INPUT_OFFSET_HEADER};
use rdkafka::error::{KafkaError, RDKafkaError};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use smallvec::SmallVec;

use super::chain::{Sink, MAX_OPERATORS};
use super::edges::{fill_copy, CopyCoordinates, EdgeBuffer};
use super::io::{GroupIo, Incoming, KafkaIo, OutRecord, RdKafkaIo};
use super::pipeline::{
    dead_letter_reason_index, decode_reason, port_index, repartition_key, Pipeline,
    PipelineOutputs, Route, Stage, DEAD_LETTER_REASONS,
};
use super::quarantine::{CrashGuard, Verdict};
use super::restore::{restore_partition, ChangelogEnds, RestoreMetrics, RestoreTarget};
use super::split::{SplitError, TraceSplitter};
use super::stall::StallFlag;
use crate::config::{EngineConfig, InputConfig, ProcessingGuarantee};
use crate::error::{EngineError, Result};
use crate::headers;
use crate::http::Health;
use crate::journal::Journal;
use crate::ledger::{LedgerCounts, LedgerEntry, LedgerStage, LEDGER_FORMAT_VERSION};
use crate::metrics::Metrics;

/// Bound on each blocking Kafka call of the commit protocol.
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Retries of a commit that timed out (librdkafka allows retrying the same commit). A producer
/// fenced mid-transaction may only ever see timeouts from some brokers, so after these the
/// producer is treated as failed and recreated.
const COMMIT_RETRIES: usize = 2;

/// Test-only fault hook: the engine panics on a record whose event id equals this variable's
/// value (read once at start; inert unless set). Used to prove crash quarantine.
pub const PANIC_ON_ID_ENV: &str = "BREADCRUMB_TEST_PANIC_ON_ID";
/// Test-only fault hook: sleep this many milliseconds between `send_offsets_to_transaction` and
/// `commit_transaction`, so a test can kill the engine inside a commit (inert unless set).
pub const COMMIT_DELAY_ENV: &str = "BREADCRUMB_TEST_COMMIT_DELAY_MS";

/// Transactions aborted in a row before the producer is recreated: a broker can keep failing a
/// producer's transactions at one epoch (seen with Nisshi 0.7: after a `TxnOffsetCommit` hit a
/// unique-constraint error, every later one of that producer failed), and a new producer starts
/// at a new epoch.
const ABORTS_BEFORE_NEW_PRODUCER: u32 = 3;

/// librdkafka's default `session.timeout.ms`.
pub(super) const DEFAULT_SESSION_TIMEOUT_MS: u64 = 45_000;

/// State of one input partition of a pipeline.
struct Task {
    stores: Vec<PartitionStore>,
    /// Changelog offset each store's checkpoint has reached.
    changelog_next: Vec<i64>,
    /// Whether the open transaction processed records of this partition.
    touched: bool,
    last_offset: i64,
    committed_next: i64,
}

/// Consumption progress of one assigned topic partition.
#[derive(Debug, Clone, Copy)]
struct Position {
    /// First offset processed in the open transaction: where to rewind on abort.
    first_in_transaction: Option<i64>,
    last_processed: i64,
    /// What the open transaction did with the partition, for its ledger record.
    ledger: LedgerCounts,
    /// Events held in state for the partition as of the last commit.
    waiting_committed: u64,
}

impl Position {
    fn new(last_processed: i64) -> Self {
        Self {
            first_in_transaction: None,
            last_processed,
            ledger: LedgerCounts::default(),
            waiting_committed: 0,
        }
    }
}

/// Outcomes of the open transaction per pipeline, published to metrics only once it commits so
/// the counters describe committed output exactly.
#[derive(Debug, Default, Clone)]
struct PipelineCounts {
    /// Emissions per operator of the chain and per port.
    ports: [[u64; Port::ALL.len()]; MAX_OPERATORS],
    dead_letters: [u64; DEAD_LETTER_REASONS.len()],
}

/// The processing core over its Kafka I/O: the rdkafka clients in production, the in-memory
/// model log under test.
pub struct Core<Io: KafkaIo = RdKafkaIo> {
    config: Arc<EngineConfig>,
    guarantee: ProcessingGuarantee,
    pipelines: Vec<Pipeline>,
    routes: Vec<Route>,
    route_by_topic: HashMap<String, usize>,
    /// The route whose partitions own each pipeline's state.
    state_route: Vec<usize>,
    /// Changelog topic per slot; slot of each (pipeline, store index).
    changelog_topics: Vec<String>,
    changelog_slot: Vec<Vec<usize>>,
    restore_metrics: Vec<RestoreMetrics>,
    backend: StateBackend,
    io: Io,
    // Ordered maps: commits walk them, and the same input must give the same sequence of
    // Kafka calls (the model tier replays crash schedules by call number).
    tasks: BTreeMap<(usize, i32), Task>,
    positions: BTreeMap<(usize, i32), Position>,
    transaction_open: bool,
    transaction_started: Instant,
    transaction_records: usize,
    transaction_sequence: u64,
    transactional_id: String,
    incarnation: String,
    transaction_header: Vec<u8>,
    journal: Option<Journal>,
    pipeline_counts: Vec<PipelineCounts>,
    route_counts: Vec<u64>,
    dead_letter_topic: String,
    ledger_topic: String,
    envelope: Envelope,
    /// Splits OTLP batches by trace id for repartitioning (buffers reused).
    trace_splitter: TraceSplitter,
    /// Decodes records released from state for their output id.
    released_envelope: Envelope,
    /// Lineage edges of the open transaction, waiting for their copies' coordinates.
    lineage_edges: EdgeBuffer,
    /// Reused: the span record being handed to lineage, and an edge record being completed.
    span_batch: Batch,
    edge_value: Vec<u8>,
    metrics: Metrics,
    health: Arc<Health>,
    /// An error raised inside a rebalance callback, for the loop to act on.
    pub fatal: Option<EngineError>,
    commit_interval: Duration,
    /// When operators last saw processing time.
    last_tick: Instant,
    /// When memtables were last flushed, and how often they are (`None`: only when full).
    last_flush: Instant,
    flush_interval: Option<Duration>,
    input_limits: InputConfig,
    crash_guard: CrashGuard,
    /// Commit at the next opportunity (a quarantined record must not be processed again).
    commit_now: bool,
    panic_on_id: Option<String>,
    commit_delay: Option<Duration>,
    /// The consumer's session timeout: a transaction open longer may belong to a zombie.
    session_timeout: Duration,
    /// Transactions aborted since the last commit.
    aborts_in_a_row: u32,
    /// Set when the whole process was stopped long enough to lose its group membership.
    stall: StallFlag,
}

pub struct CoreParts<Io> {
    pub config: Arc<EngineConfig>,
    pub pipelines: Vec<Pipeline>,
    pub routes: Vec<Route>,
    pub backend: StateBackend,
    /// The transactional producer (transactions initialised) and the restore reader.
    pub io: Io,
    pub journal: Option<Journal>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub incarnation: String,
    pub stall: StallFlag,
}

impl<Io: KafkaIo> Core<Io> {
    pub fn new(parts: CoreParts<Io>) -> Self {
        let CoreParts {
            config,
            pipelines,
            routes,
            backend,
            io,
            journal,
            metrics,
            health,
            incarnation,
            stall,
        } = parts;
        let route_by_topic: HashMap<String, usize> = routes
            .iter()
            .enumerate()
            .map(|(index, route)| (route.topic.clone(), index))
            .collect();
        let state_route = pipelines
            .iter()
            .map(|pipeline| route_by_topic[&pipeline.state_topic])
            .collect();
        let mut changelog_topics = Vec::new();
        let mut changelog_slot = Vec::new();
        let mut restore_metrics = Vec::new();
        for pipeline in &pipelines {
            let mut slots = Vec::new();
            for (store, topic) in &pipeline.stores {
                slots.push(changelog_topics.len());
                changelog_topics.push(topic.clone());
                let name = backend.store_name(*store);
                restore_metrics.push(RestoreMetrics {
                    applied: metrics.restore_records.with_label_values(&[name]),
                    remaining: metrics.restore_remaining.with_label_values(&[name]),
                });
            }
            changelog_slot.push(slots);
        }
        let pipeline_count = pipelines.len();
        let route_count = routes.len();
        Self {
            guarantee: config.processing_guarantee,
            transactional_id: config.transactional_id(),
            dead_letter_topic: config.dead_letter_topic(),
            ledger_topic: config.ledger_topic(),
            commit_interval: Duration::from_millis(config.commit_interval_ms),
            pipelines,
            routes,
            route_by_topic,
            state_route,
            changelog_topics,
            changelog_slot,
            restore_metrics,
            backend,
            io,
            tasks: BTreeMap::new(),
            positions: BTreeMap::new(),
            transaction_open: false,
            transaction_started: Instant::now(),
            transaction_records: 0,
            transaction_sequence: 0,
            incarnation,
            transaction_header: Vec::new(),
            journal,
            pipeline_counts: vec![PipelineCounts::default(); pipeline_count],
            route_counts: vec![0; route_count],
            envelope: Envelope::default(),
            trace_splitter: TraceSplitter::default(),
            released_envelope: Envelope::default(),
            lineage_edges: EdgeBuffer::default(),
            span_batch: Batch::default(),
            edge_value: Vec::new(),
            metrics,
            health,
            fatal: None,
            last_tick: Instant::now(),
            last_flush: Instant::now(),
            flush_interval: (config.state.flush_interval_ms > 0)
                .then(|| Duration::from_millis(config.state.flush_interval_ms)),
            input_limits: config.input.clone(),
            crash_guard: CrashGuard::new(
                &config.state.dir,
                config.input.quarantine_after_crashes,
                config.max_records_per_transaction,
            ),
            commit_now: false,
            panic_on_id: std::env::var(PANIC_ON_ID_ENV)
                .ok()
                .filter(|id| !id.is_empty()),
            commit_delay: std::env::var(COMMIT_DELAY_ENV)
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis),
            aborts_in_a_row: 0,
            stall,
            session_timeout: Duration::from_millis(
                config
                    .kafka
                    .get("session.timeout.ms")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(DEFAULT_SESSION_TIMEOUT_MS),
            ),
            config,
        }
    }

    /// Topics the consumer subscribes to.
    pub fn subscribed_topics(&self) -> Vec<String> {
        self.routes
            .iter()
            .map(|route| route.topic.clone())
            .collect()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The Kafka I/O (the producer, for the flush at shutdown).
    pub fn io(&self) -> &Io {
        &self.io
    }

    fn begin_if_needed(&mut self) -> Result<()> {
        if self.transaction_open {
            return Ok(());
        }
        if self.guarantee == ProcessingGuarantee::ExactlyOnce {
            if let Err(error) = self.io.begin_transaction() {
                // Each failed begin is rewound like an abort; a producer that cannot begin
                // again and again is replaced instead of being asked forever (the model tier
                // found a fenced producer asked 200,000 times).
                self.aborts_in_a_row += 1;
                if self.aborts_in_a_row >= ABORTS_BEFORE_NEW_PRODUCER {
                    return Err(EngineError::Fatal(format!(
                        "{} transactions could not begin in a row, the last with: {error}",
                        self.aborts_in_a_row
                    )));
                }
                return Err(fatal_unless_retriable(error));
            }
        }
        self.transaction_sequence += 1;
        self.transaction_header.clear();
        self.transaction_header.extend_from_slice(
            format!(
                "{}:{}:{}",
                self.transactional_id, self.incarnation, self.transaction_sequence
            )
            .as_bytes(),
        );
        if let Some(journal) = self.journal.as_mut() {
            journal.begin(&String::from_utf8_lossy(&self.transaction_header))?;
        }
        self.transaction_open = true;
        self.transaction_started = Instant::now();
        self.transaction_records = 0;
        Ok(())
    }

    /// Processes one consumed record inside the open transaction.
    pub fn process<M: Incoming>(&mut self, message: &M) -> Result<()> {
        let Some(&route_index) = self.route_by_topic.get(message.topic()) else {
            return Ok(());
        };
        let outcome = self.process_record(route_index, message);
        // Processed, well or not: a crash from here on is not this record's doing.
        self.crash_guard.after(route_index, message.partition())?;
        outcome
    }

    fn process_record<M: Incoming>(&mut self, route_index: usize, message: &M) -> Result<()> {
        let partition = message.partition();
        let offset = message.offset();
        // Where an abort rewinds to is recorded before anything can fail, the transaction's
        // begin included: the consumer has moved past this record, and a record that fails
        // half-way (a send error, a schema that cannot be fetched) must be read again. (The
        // model tier found a record skipped after an abortable error from `begin`.)
        self.positions
            .entry((route_index, partition))
            .or_insert_with(|| Position::new(offset - 1))
            .first_in_transaction
            .get_or_insert(offset);
        self.begin_if_needed()?;
        let verdict = self.crash_guard.before(route_index, partition, offset)?;
        let mut header_refs: SmallVec<[HeaderRef<'_>; 16]> = SmallVec::new();
        let invalid_header_names = message.read_headers(&mut header_refs);
        let record = RawRecord {
            topic: message.topic(),
            partition,
            offset,
            timestamp_ms: message.timestamp_ms(),
            key: message.key(),
            value: message.payload(),
            headers: &header_refs,
        };

        let Self {
            pipelines,
            routes,
            tasks,
            positions,
            io: producer,
            transaction_header,

            pipeline_counts,
            envelope,
            released_envelope,
            dead_letter_topic,
            trace_splitter,
            panic_on_id,
            lineage_edges,
            span_batch,
            ..
        } = self;
        let position = positions
            .get_mut(&(route_index, partition))
            .expect("inserted above");
        let ledger = &mut position.ledger;
        ledger.input += 1;
        let route = &routes[route_index];
        let add_source_headers = !route.internal;
        envelope.clear();
        let rejected_early = match verdict {
            Verdict::Quarantine { crashes } => {
                self.commit_now = true;
                tracing::error!(
                    topic = record.topic,
                    partition,
                    offset,
                    crashes,
                    "Quarantining a record that crashed the engine repeatedly."
                );
                Some((
                    "quarantined",
                    "the engine crashed on this record repeatedly",
                ))
            }
            Verdict::Process if invalid_header_names > 0 => Some((
                "invalid_headers",
                "header names that are not UTF-8 (left out of this dead letter)",
            )),
            Verdict::Process if header_refs.len() > self.input_limits.max_headers => {
                Some(("invalid_headers", "more headers than input.max_headers"))
            }
            Verdict::Process
                if record.key.map_or(0, <[u8]>::len) > self.input_limits.max_key_bytes =>
            {
                Some((
                    "oversized_key",
                    "key longer than input.max_key_bytes (left out of this dead letter)",
                ))
            }
            Verdict::Process => None,
        };
        if let Some((reason, message)) = rejected_early {
            let index = match route.stage {
                Stage::Repartition { pipeline } | Stage::Stateful { pipeline } => pipeline,
            };
            DeadLetters::new(
                producer,
                dead_letter_topic,
                &pipelines[index],
                transaction_header,
                add_source_headers,
            )
            .send(
                &record,
                reason,
                message,
                &mut pipeline_counts[index],
                ledger,
            )?;
        } else {
            match route.stage {
                Stage::Repartition { pipeline: index } if route.spans => {
                    // Lineage's span side input: split per trace, never decoded as an event.
                    let pipeline = &pipelines[index];
                    let (_, topic) = pipeline
                        .repartition
                        .as_ref()
                        .expect("a lineage pipeline repartitions");
                    let split =
                        trace_splitter.split(record.value.unwrap_or_default(), |key, part| {
                            send_record(
                                producer,
                                topic,
                                &RawRecord {
                                    value: Some(part),
                                    ..record
                                },
                                Some(key),
                                &[(headers::RECORD_KIND, headers::KIND_SPANS)],
                                add_source_headers,
                                transaction_header,
                            )
                        });
                    match split {
                        Ok(()) => ledger.side_input += 1,
                        Err(SplitError::Emit(error)) => return Err(error.into()),
                        Err(SplitError::Batch(error)) => DeadLetters::new(
                            producer,
                            dead_letter_topic,
                            pipeline,
                            transaction_header,
                            add_source_headers,
                        )
                        .send(
                            &record,
                            "invalid_protobuf",
                            error.message(),
                            &mut pipeline_counts[index],
                            ledger,
                        )?,
                    }
                }
                Stage::Repartition { pipeline: index } => {
                    let pipeline = &mut pipelines[index];
                    let counts = &mut pipeline_counts[index];
                    let dead_letters = DeadLetters::new(
                        producer,
                        dead_letter_topic,
                        pipeline,
                        transaction_header,
                        add_source_headers,
                    );
                    match pipeline.decoder.decode(&record, envelope) {
                        Err(error) if error.class == DecodeErrorClass::SchemaUnavailable => {
                            return Err(EngineError::SchemaUnavailable(error.message));
                        }
                        Err(error) => dead_letters.send(
                            &record,
                            decode_reason(error.class),
                            &error.message,
                            counts,
                            ledger,
                        )?,
                        Ok(()) if pipeline.splits_traces => {
                            let (_, topic) = pipeline
                                .repartition
                                .as_ref()
                                .expect("repartition stage has a repartition topic");
                            let split = trace_splitter.split(
                                record.value.unwrap_or_default(),
                                |key, part| {
                                    ledger.repartitioned += 1;
                                    send_record(
                                        producer,
                                        topic,
                                        &RawRecord {
                                            value: Some(part),
                                            ..record
                                        },
                                        Some(key),
                                        &[],
                                        add_source_headers,
                                        transaction_header,
                                    )
                                },
                            );
                            match split {
                                Ok(()) => {}
                                Err(SplitError::Emit(error)) => return Err(error.into()),
                                Err(SplitError::Batch(error)) => dead_letters.send(
                                    &record,
                                    "invalid_protobuf",
                                    error.message(),
                                    counts,
                                    ledger,
                                )?,
                            }
                        }
                        Ok(()) => {
                            let (key_kind, topic) = pipeline
                                .repartition
                                .as_ref()
                                .expect("repartition stage has a repartition topic");
                            // Lineage gives an event without a trace a `no_trace_context` edge:
                            // any partition will do, its id spreads them.
                            let key = repartition_key(*key_kind, envelope).or_else(|| {
                                (pipeline.joins_lineage && !envelope.id.is_empty())
                                    .then(|| envelope.id.as_bytes().to_vec())
                            });
                            match key {
                                None => dead_letters.send(
                                    &record,
                                    "missing_field",
                                    "the repartition key field is absent",
                                    counts,
                                    ledger,
                                )?,
                                Some(key) => {
                                    ledger.repartitioned += 1;
                                    send_record(
                                        producer,
                                        topic,
                                        &record,
                                        Some(key.as_slice()),
                                        &[],
                                        add_source_headers,
                                        transaction_header,
                                    )?
                                }
                            }
                        }
                    }
                }
                Stage::Stateful { pipeline: index }
                    if route.internal
                        && pipelines[index].joins_lineage
                        && is_span_record(&record) =>
                {
                    let pipeline = &mut pipelines[index];
                    let counts = &mut pipeline_counts[index];
                    let value = record.value.unwrap_or_default();
                    // Split parts were checked when split; a part that does not read now was
                    // not written by breadcrumb, and is refused whole before any span counts.
                    let readable = parse_request(value, span_batch).is_ok()
                        && span_batch
                            .spans
                            .iter()
                            .all(|span| span_identity(&value[span.content.clone()]).is_some());
                    if !readable {
                        DeadLetters::new(
                            producer,
                            dead_letter_topic,
                            pipeline,
                            transaction_header,
                            add_source_headers,
                        )
                        .send(
                            &record,
                            "invalid_protobuf",
                            "a span record that is not an OTLP request of joinable spans",
                            counts,
                            ledger,
                        )?;
                    } else {
                        let task = tasks.get_mut(&(index, partition)).ok_or_else(|| {
                            EngineError::Fatal(format!(
                                "record of {} partition {partition} before its state was opened",
                                record.topic
                            ))
                        })?;
                        task.touched = true;
                        task.last_offset = offset;
                        ledger.side_input += 1;
                        let (chain, outputs) = pipeline.chain_and_outputs();
                        let mut publisher = Publisher {
                            producer,
                            transaction: transaction_header,
                            dead_letter_topic,
                            outputs,
                            pipeline_index: index,
                            add_source_headers,
                            counts,
                            ledger,
                            released_envelope,
                            edges: lineage_edges,
                            error: None,
                        };
                        for span_ref in &span_batch.spans {
                            let identity = span_identity(&value[span_ref.content.clone()])
                                .expect("checked above");
                            let resource = span_batch.scopes[span_ref.scope as usize].resource;
                            let service = span_batch.resources[resource as usize]
                                .resource
                                .clone()
                                .and_then(|range| service_name(&value[range]))
                                .unwrap_or_default();
                            let span = Span {
                                trace_id: span_ref.trace_id,
                                span_id: identity.span_id,
                                parent_span_id: identity.parent_span_id,
                                service,
                                operation: identity.name,
                                start_time_ms: (span_ref.start_time_unix_nano / 1_000_000) as i64,
                                end_time_ms: (span_ref.end_time_unix_nano / 1_000_000) as i64,
                            };
                            chain.process_span(
                                &span,
                                &mut task.stores,
                                outputs.decoder,
                                &mut publisher,
                            )?;
                            if let Some(error) = publisher.error.take() {
                                return Err(error.into());
                            }
                        }
                    }
                }
                Stage::Stateful { pipeline: index } => {
                    let pipeline = &mut pipelines[index];
                    let counts = &mut pipeline_counts[index];
                    if let Err(error) = pipeline.decoder.decode(&record, envelope) {
                        if error.class == DecodeErrorClass::SchemaUnavailable {
                            return Err(EngineError::SchemaUnavailable(error.message));
                        }
                        DeadLetters::new(
                            producer,
                            dead_letter_topic,
                            pipeline,
                            transaction_header,
                            add_source_headers,
                        )
                        .send(
                            &record,
                            decode_reason(error.class),
                            &error.message,
                            counts,
                            ledger,
                        )?;
                    } else {
                        let task = tasks.get_mut(&(index, partition)).ok_or_else(|| {
                            EngineError::Fatal(format!(
                                "record of {} partition {partition} before its state was opened",
                                record.topic
                            ))
                        })?;
                        task.touched = true;
                        task.last_offset = offset;
                        let (chain, outputs) = pipeline.chain_and_outputs();
                        let mut publisher = Publisher {
                            producer,
                            transaction: transaction_header,
                            dead_letter_topic,
                            outputs,
                            pipeline_index: index,
                            add_source_headers,
                            counts,
                            ledger,
                            released_envelope,
                            edges: lineage_edges,
                            error: None,
                        };
                        chain.process(
                            &record,
                            envelope,
                            &mut task.stores,
                            outputs.decoder,
                            &mut publisher,
                        )?;
                        if let Some(error) = publisher.error {
                            return Err(error.into());
                        }
                        if let (Some(id), false) = (panic_on_id.as_deref(), envelope.id.is_empty())
                        {
                            if id == envelope.id {
                                panic!("test fault hook {PANIC_ON_ID_ENV}: record {offset}");
                            }
                        }
                    }
                }
            }
        }

        let position = self
            .positions
            .get_mut(&(route_index, partition))
            .expect("inserted above");
        position.first_in_transaction.get_or_insert(offset);
        position.last_processed = offset;
        self.route_counts[route_index] += 1;
        self.transaction_records += 1;
        Ok(())
    }

    /// Lets operators with a processing-time timeout act, about once per commit interval. A
    /// partition holding nothing is skipped, so an idle engine opens no transaction.
    pub fn tick(&mut self) -> Result<()> {
        if !self
            .pipelines
            .iter()
            .any(|pipeline| pipeline.processing_time)
            || self.last_tick.elapsed() < self.commit_interval
        {
            return Ok(());
        }
        self.last_tick = Instant::now();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis() as i64)
            .unwrap_or_default();
        let due: Vec<(usize, i32)> = self
            .tasks
            .keys()
            .filter(|(index, partition)| {
                let chain = &self.pipelines[*index].chain;
                self.pipelines[*index].processing_time
                    && (0..chain.len())
                        .any(|operator| chain.waiting(operator, *partition).events > 0)
            })
            .copied()
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        self.begin_if_needed()?;
        for (index, partition) in due {
            let Self {
                pipelines,
                tasks,
                positions,
                state_route,
                io: producer,
                transaction_header,
                pipeline_counts,
                released_envelope,
                dead_letter_topic,
                lineage_edges,
                ..
            } = self;
            let ledger = &mut positions
                .get_mut(&(state_route[index], partition))
                .expect("a task's partition is assigned")
                .ledger;
            let pipeline = &mut pipelines[index];
            let task = tasks.get_mut(&(index, partition)).expect("due task exists");
            task.touched = true;
            // Records of a repartition topic already carry their source headers.
            let add_source_headers = pipeline.repartition.is_none();
            let (chain, outputs) = pipeline.chain_and_outputs();
            let mut publisher = Publisher {
                producer,
                transaction: transaction_header,
                dead_letter_topic,
                outputs,
                pipeline_index: index,
                add_source_headers,
                counts: &mut pipeline_counts[index],
                ledger,
                released_envelope,
                edges: lineage_edges,
                error: None,
            };
            chain.on_processing_time(&mut task.stores, now_ms, outputs.decoder, &mut publisher)?;
            if let Some(error) = publisher.error {
                return Err(error.into());
            }
        }
        Ok(())
    }

    /// Commits when the interval has passed or the transaction is full.
    pub fn maybe_commit<C: GroupIo<Metadata = Io::GroupMetadata>>(
        &mut self,
        consumer: &C,
    ) -> Result<()> {
        if self.transaction_open
            && (self.commit_now
                || self.transaction_records >= self.config.max_records_per_transaction
                || self.transaction_started.elapsed() >= self.commit_interval)
        {
            self.commit(consumer)?;
        }
        Ok(())
    }

    /// Commits the open transaction: operators checkpoint, their writes go to the changelogs,
    /// the input offsets join the transaction, and once Kafka has committed, local state follows
    /// in one RocksDB write. A failure that Kafka says needs an abort aborts and rewinds.
    pub fn commit<C: GroupIo<Metadata = Io::GroupMetadata>>(&mut self, consumer: &C) -> Result<()> {
        if !self.transaction_open {
            return Ok(());
        }
        let started = Instant::now();
        if self.membership_in_doubt(consumer) {
            return self.abort_in_doubt(consumer);
        }
        let written = self.publish_lineage_edges().and_then(|()| {
            let changelog_records = self.write_changelogs()?;
            self.write_ledger()?;
            Ok(changelog_records)
        });
        let changelog_records = match written {
            Ok(records) => records,
            Err(EngineError::Kafka(kafka)) => return self.recover(consumer, kafka),
            Err(other) => return Err(other),
        };
        // The changelog records' offsets must be known before the input offsets join the
        // transaction: their metadata carries where each changelog now ends.
        if changelog_records > 0 || self.guarantee == ProcessingGuarantee::AtLeastOnce {
            if let Err(error) = self.io.flush(KAFKA_CALL_TIMEOUT) {
                return self.recover(consumer, error);
            }
        }
        let delivered = self.io.deliveries().take_changelog_offsets();
        let mut offsets = TopicPartitionList::new();
        let mut journal_offsets = Vec::new();
        for ((route, partition), position) in &self.positions {
            if position.first_in_transaction.is_some() {
                let topic = &self.routes[*route].topic;
                offsets.add_partition_offset(
                    topic,
                    *partition,
                    Offset::Offset(position.last_processed + 1),
                )?;
                if let Some(metadata) = self.changelog_ends(*route, *partition, &delivered) {
                    if let Some(mut element) = offsets.find_partition(topic, *partition) {
                        element.set_metadata(metadata);
                    }
                }
                journal_offsets.push((topic.clone(), *partition, position.last_processed + 1));
            }
        }
        match self.guarantee {
            ProcessingGuarantee::ExactlyOnce => {
                if !journal_offsets.is_empty() {
                    let metadata = consumer.group_metadata().ok_or_else(|| {
                        EngineError::Fatal("consumer has no group metadata".to_owned())
                    })?;
                    if let Err(error) =
                        self.io
                            .send_offsets_to_transaction(&offsets, metadata, KAFKA_CALL_TIMEOUT)
                    {
                        return self.recover(consumer, error);
                    }
                }
                if let Some(journal) = self.journal.as_mut() {
                    let header = String::from_utf8_lossy(&self.transaction_header).into_owned();
                    journal.pending(&header, &journal_offsets)?;
                }
                if let Some(delay) = self.commit_delay {
                    std::thread::sleep(delay);
                }
                if self.membership_in_doubt(consumer) {
                    return self.abort_in_doubt(consumer);
                }
                let mut attempt = 0;
                loop {
                    match self.io.commit_transaction(KAFKA_CALL_TIMEOUT) {
                        Ok(()) => break,
                        Err(error) if is_retriable(&error) && attempt < COMMIT_RETRIES => {
                            attempt += 1;
                            tracing::warn!(%error, attempt, "Commit timed out; retrying.");
                        }
                        Err(error) => return self.recover(consumer, error),
                    }
                }
            }
            ProcessingGuarantee::AtLeastOnce => {
                if self.io.deliveries().take_failed() {
                    return self.recover(
                        consumer,
                        KafkaError::MessageProduction(RDKafkaErrorCode::Fail),
                    );
                }
                if !journal_offsets.is_empty() {
                    consumer.commit_offsets(&offsets)?;
                }
            }
        }
        self.after_commit(started, &delivered)
    }

    /// The metadata committed with input partition `partition` of `route`: where each of its
    /// task's changelogs ends once this transaction commits (see [`ChangelogEnds`]).
    fn changelog_ends(
        &self,
        route: usize,
        partition: i32,
        delivered: &HashMap<(usize, i32), i64>,
    ) -> Option<String> {
        let Stage::Stateful { pipeline } = self.routes[route].stage else {
            return None;
        };
        let task = self.tasks.get(&(pipeline, partition))?;
        let ends =
            self.pipelines[pipeline]
                .stores
                .iter()
                .enumerate()
                .map(|(store_index, (store, _))| {
                    let slot = self.changelog_slot[pipeline][store_index];
                    let end = delivered
                        .get(&(slot, partition))
                        .map_or(task.changelog_next[store_index], |offset| offset + 1);
                    (self.backend.store_name(*store), end)
                });
        ChangelogEnds::encode(ends)
    }

    /// Whether the group may have given this instance's partitions to another member while the
    /// open transaction was being filled: librdkafka says the assignment is lost, or the
    /// transaction has been open longer than the session timeout (the whole process was stopped,
    /// so not even the background heartbeats ran). Committing then could publish a zombie's
    /// output next to the new owner's: Apache Kafka fences it by the group generation in
    /// `TxnOffsetCommit`, test brokers may not, and aborting is always safe.
    fn membership_in_doubt<C: GroupIo<Metadata = Io::GroupMetadata>>(&self, consumer: &C) -> bool {
        self.guarantee == ProcessingGuarantee::ExactlyOnce
            && (self.stall.is_set()
                || consumer.assignment_lost()
                || self.transaction_started.elapsed() >= self.session_timeout)
    }

    fn abort_in_doubt<C: GroupIo<Metadata = Io::GroupMetadata>>(
        &mut self,
        consumer: &C,
    ) -> Result<()> {
        tracing::warn!(
            open_ms = self.transaction_started.elapsed().as_millis() as u64,
            lost = consumer.assignment_lost(),
            stopped = self.stall.is_set(),
            "The group may have moved this instance's partitions while the transaction was open; aborting it instead of committing."
        );
        self.abort(consumer, &[])?;
        self.fence_if_stalled(consumer)
    }

    /// After the process was stopped, nothing this member believes it owns can be trusted
    /// until it has rejoined: abort what is open and have the clients recreated (a new
    /// producer epoch, a new group member), whatever librdkafka has noticed so far.
    pub fn fence_if_stalled<C: GroupIo<Metadata = Io::GroupMetadata>>(
        &mut self,
        consumer: &C,
    ) -> Result<()> {
        if self.guarantee != ProcessingGuarantee::ExactlyOnce || !self.stall.take() {
            return Ok(());
        }
        self.abort(consumer, &[])?;
        Err(EngineError::Fatal(
            "the process was stopped longer than half the session timeout; rejoining the group"
                .to_owned(),
        ))
    }

    /// Sends the open transaction's lineage edges, each naming where its event's copy landed:
    /// the producer is flushed first (inside the transaction, so nothing is visible yet), which
    /// makes every copy's delivery report known.
    fn publish_lineage_edges(&mut self) -> Result<()> {
        if self.lineage_edges.is_empty() {
            return Ok(());
        }
        self.io.flush(KAFKA_CALL_TIMEOUT)?;
        if self.io.deliveries().take_failed() {
            return Err(EngineError::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::Fail,
            )));
        }
        let copies = self.io.deliveries().take_copies();
        let mut avro = Vec::new();
        for (edge, key, json) in self.lineage_edges.iter() {
            let pipeline = &self.pipelines[edge.pipeline];
            let (Some(output), Some(topic)) = (
                &pipeline.port_topics[Port::Main.index()],
                &pipeline.port_topics[Port::Lineage.index()],
            ) else {
                continue;
            };
            let copy = copies
                .get(edge.copy)
                .copied()
                .flatten()
                .map(|(partition, offset)| CopyCoordinates {
                    topic: output,
                    partition,
                    offset,
                });
            fill_copy(json, copy, &mut self.edge_value);
            let mut record_headers: SmallVec<[HeaderRef<'_>; 2]> =
                SmallVec::from_slice(&[(headers::TRANSACTION, Some(&self.transaction_header[..]))]);
            let payload = match &pipeline.port_encoders[Port::Lineage.index()] {
                Some(encoder) => match encoder.encode_json(&self.edge_value, &mut avro) {
                    Ok(()) => &avro[..],
                    Err(problem) => {
                        tracing::warn!(%problem, topic, "A lineage edge does not fit its Avro schema; sent as JSON.");
                        record_headers.push((headers::ENCODING_FALLBACK, Some(&b"json"[..])));
                        &self.edge_value[..]
                    }
                },
                None => &self.edge_value[..],
            };
            self.io.send(&OutRecord {
                topic,
                partition: None,
                key: Some(key),
                value: Some(payload),
                headers: &record_headers,
                timestamp_ms: edge.timestamp_ms,
                tag: 0,
            })?;
        }
        self.lineage_edges.clear();
        Ok(())
    }

    /// Writes the operators' checkpoints and every dirty store entry to the changelogs;
    /// returns how many records it sent.
    fn write_changelogs(&mut self) -> Result<usize> {
        let mut sent = 0;
        for ((pipeline_index, partition), task) in self.tasks.iter_mut() {
            if !task.touched {
                continue;
            }
            self.pipelines[*pipeline_index]
                .chain
                .checkpoint(&mut task.stores, task.last_offset)?;
            for (store_index, store) in task.stores.iter().enumerate() {
                let slot = self.changelog_slot[*pipeline_index][store_index];
                let topic = &self.changelog_topics[slot];
                for entry in store.dirty() {
                    let input_offset = encode_input_offset(entry.input_offset);
                    self.io.send(&OutRecord {
                        topic,
                        partition: Some(*partition),
                        key: Some(entry.key),
                        value: entry.value,
                        headers: &[
                            (INPUT_OFFSET_HEADER, Some(&input_offset[..])),
                            (headers::TRANSACTION, Some(&self.transaction_header[..])),
                        ],
                        timestamp_ms: None,
                        tag: slot + 1,
                    })?;
                    sent += 1;
                }
            }
        }
        Ok(sent)
    }

    /// Writes a ledger record for every partition the open transaction touched (after the
    /// operators' checkpoints, so what waits in state is final).
    fn write_ledger(&mut self) -> Result<()> {
        for ((route_index, partition), position) in self.positions.iter_mut() {
            if position.first_in_transaction.is_none() && position.ledger.is_empty() {
                continue;
            }
            let route = &self.routes[*route_index];
            let (pipeline_index, stage) = match route.stage {
                Stage::Repartition { pipeline } => (pipeline, LedgerStage::Repartition),
                Stage::Stateful { pipeline } => (pipeline, LedgerStage::Stateful),
            };
            let pipeline = &self.pipelines[pipeline_index];
            let waiting_after = match stage {
                LedgerStage::Repartition => 0,
                LedgerStage::Stateful => chain_waiting(pipeline, *partition),
            };
            let (first_offset, last_offset) = match position.first_in_transaction {
                Some(first) => (Some(first), Some(position.last_processed)),
                None => (None, None),
            };
            let entry = LedgerEntry {
                version: LEDGER_FORMAT_VERSION,
                pipeline: pipeline.name.clone(),
                stage,
                topic: route.topic.clone(),
                partition: *partition,
                first_offset,
                last_offset,
                transaction: String::from_utf8_lossy(&self.transaction_header).into_owned(),
                counts: position.ledger,
                waiting_before: position.waiting_committed,
                waiting_after,
            };
            let value = serde_json::to_vec(&entry)
                .map_err(|error| EngineError::Fatal(format!("ledger record: {error}")))?;
            let key = entry.key();
            self.io.send(&OutRecord {
                topic: &self.ledger_topic,
                partition: None,
                key: Some(key.as_bytes()),
                value: Some(&value[..]),
                headers: &[(headers::TRANSACTION, Some(&self.transaction_header[..]))],
                timestamp_ms: None,
                tag: 0,
            })?;
        }
        Ok(())
    }

    fn after_commit(
        &mut self,
        started: Instant,
        delivered: &HashMap<(usize, i32), i64>,
    ) -> Result<()> {
        let mut batch = self.backend.commit_batch();
        for ((pipeline_index, partition), task) in self.tasks.iter_mut() {
            if !task.touched {
                continue;
            }
            for (store_index, store) in task.stores.iter_mut().enumerate() {
                let slot = self.changelog_slot[*pipeline_index][store_index];
                if let Some(offset) = delivered.get(&(slot, *partition)) {
                    task.changelog_next[store_index] = offset + 1;
                }
                store.commit_into(&mut batch);
                batch.set_checkpoint(
                    store.store(),
                    *partition,
                    Checkpoint {
                        changelog_next_offset: task.changelog_next[store_index],
                        input_next_offset: task.last_offset + 1,
                    },
                );
            }
            task.committed_next = task.last_offset + 1;
            task.touched = false;
        }
        batch.write()?;
        if self
            .flush_interval
            .is_some_and(|interval| self.last_flush.elapsed() >= interval)
        {
            // Processing time decides only when local state reaches the disk, never what it is.
            self.backend.flush()?;
            self.last_flush = Instant::now();
        }
        if let Some(journal) = self.journal.as_mut() {
            let header = String::from_utf8_lossy(&self.transaction_header).into_owned();
            journal.outcome(&header, true)?;
        }
        for ((route_index, partition), position) in self.positions.iter_mut() {
            position.first_in_transaction = None;
            position.ledger = LedgerCounts::default();
            if let Stage::Stateful { pipeline } = self.routes[*route_index].stage {
                position.waiting_committed = chain_waiting(&self.pipelines[pipeline], *partition);
            }
        }
        for (route, count) in self.routes.iter().zip(self.route_counts.iter_mut()) {
            route.events_in.inc_by(std::mem::take(count));
        }
        for (pipeline, counts) in self.pipelines.iter().zip(self.pipeline_counts.iter_mut()) {
            let counts = std::mem::take(counts);
            let last = pipeline.chain.len() - 1;
            pipeline
                .metrics
                .events_out
                .inc_by(counts.ports[last][Port::Main.index()]);
            for (operator_counts, counters) in counts.ports.iter().zip(&pipeline.metrics.ports) {
                for (count, counter) in operator_counts.iter().zip(counters) {
                    if let (true, Some(counter)) = (*count > 0, counter) {
                        counter.inc_by(*count);
                    }
                }
            }
            for (counter, count) in pipeline
                .metrics
                .dead_letters
                .iter()
                .zip(counts.dead_letters)
            {
                if count > 0 {
                    counter.inc_by(count);
                }
            }
        }
        self.publish_waiting();
        self.commit_now = false;
        self.aborts_in_a_row = 0;
        self.metrics
            .transactions
            .with_label_values(&["committed"])
            .inc();
        self.metrics
            .transaction_records
            .observe(self.transaction_records as f64);
        self.metrics
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        self.transaction_open = false;
        Ok(())
    }

    /// Sets the gauges of events held by ordering operators, as of the commit just made.
    fn publish_waiting(&self) {
        for (index, pipeline) in self.pipelines.iter().enumerate() {
            let Some((position, events, bytes)) = &pipeline.metrics.waiting else {
                continue;
            };
            let (mut held_events, mut held_bytes) = (0, 0);
            for (task_pipeline, partition) in self.tasks.keys() {
                if *task_pipeline == index {
                    let waiting = pipeline.chain.waiting(*position, *partition);
                    held_events += waiting.events;
                    held_bytes += waiting.bytes;
                }
            }
            events.set(held_events as i64);
            bytes.set(held_bytes as i64);
        }
    }

    /// Handles a failed transactional call: abortable errors abort and rewind; anything else is
    /// fatal for this producer.
    fn recover<C: GroupIo<Metadata = Io::GroupMetadata>>(
        &mut self,
        consumer: &C,
        error: KafkaError,
    ) -> Result<()> {
        let abortable = match &error {
            KafkaError::Transaction(inner) => inner.txn_requires_abort(),
            // A delivery or send failure inside the transaction: abort it.
            KafkaError::MessageProduction(_) => true,
            _ => self.guarantee == ProcessingGuarantee::AtLeastOnce,
        };
        if !abortable {
            return Err(EngineError::Fatal(error.to_string()));
        }
        if self.aborts_in_a_row + 1 >= ABORTS_BEFORE_NEW_PRODUCER {
            return Err(EngineError::Fatal(format!(
                "{} transactions failed in a row, the last with: {error}",
                self.aborts_in_a_row + 1
            )));
        }
        tracing::warn!(%error, "Transaction failed; aborting and rewinding to the last commit.");
        self.abort(consumer, &[])
    }

    /// Aborts the open transaction, rewinds every partition it read to where it began, and
    /// returns operator state to the last commit. Partitions in `leaving` are not rewound.
    pub fn abort<C: GroupIo<Metadata = Io::GroupMetadata>>(
        &mut self,
        consumer: &C,
        leaving: &[(usize, i32)],
    ) -> Result<()> {
        // Records read while no transaction could be opened are rewound all the same.
        let open = self.transaction_open;
        if open && self.guarantee == ProcessingGuarantee::ExactlyOnce {
            let mut attempt = 0;
            loop {
                match self.io.abort_transaction(KAFKA_CALL_TIMEOUT) {
                    Ok(()) => break,
                    Err(error) if is_retriable(&error) && attempt < COMMIT_RETRIES => attempt += 1,
                    Err(error) => return Err(EngineError::Fatal(error.to_string())),
                }
            }
        } else if open {
            // Outputs may already be out; at-least-once accepts re-sending them.
            let _ = self.io.flush(KAFKA_CALL_TIMEOUT);
        }
        let deliveries = self.io.deliveries();
        deliveries.take_changelog_offsets();
        deliveries.take_failed();
        deliveries.take_copies();
        self.lineage_edges.clear();
        for ((route, partition), position) in self.positions.iter_mut() {
            position.ledger = LedgerCounts::default();
            if let Some(first) = position.first_in_transaction.take() {
                position.last_processed = first - 1;
                self.crash_guard.rewound(*route, *partition);
                if leaving.contains(&(*route, *partition)) {
                    continue;
                }
                consumer
                    .seek(
                        &self.routes[*route].topic,
                        *partition,
                        first,
                        KAFKA_CALL_TIMEOUT,
                    )
                    .map_err(|error| {
                        EngineError::Fatal(format!("rewind after abort failed: {error}"))
                    })?;
            }
        }
        for ((pipeline_index, _), task) in self.tasks.iter_mut() {
            if task.touched {
                for store in &mut task.stores {
                    store.discard();
                }
                self.pipelines[*pipeline_index]
                    .chain
                    .abort_partition(&mut task.stores)?;
                task.touched = false;
                task.last_offset = task.committed_next - 1;
            }
        }
        for counts in &mut self.pipeline_counts {
            *counts = PipelineCounts::default();
        }
        self.route_counts.iter_mut().for_each(|count| *count = 0);
        if !open {
            return Ok(());
        }
        if let Some(journal) = self.journal.as_mut() {
            let header = String::from_utf8_lossy(&self.transaction_header).into_owned();
            journal.outcome(&header, false)?;
        }
        self.metrics
            .transactions
            .with_label_values(&["aborted"])
            .inc();
        self.aborts_in_a_row += 1;
        self.transaction_open = false;
        Ok(())
    }

    /// Partitions are leaving: commit what was done (or abort, if they were lost), then drop
    /// their state.
    pub fn on_revoke<C: GroupIo<Metadata = Io::GroupMetadata>>(
        &mut self,
        consumer: &C,
        partitions: &TopicPartitionList,
        lost: bool,
    ) {
        let leaving: Vec<(usize, i32)> = partitions
            .elements()
            .iter()
            .filter_map(|element| {
                self.route_by_topic
                    .get(element.topic())
                    .map(|route| (*route, element.partition()))
            })
            .collect();
        if self.fatal.is_none() && self.transaction_open {
            let outcome = if lost {
                self.abort(consumer, &leaving)
            } else {
                self.commit(consumer)
            };
            if let Err(error) = outcome {
                self.fatal = Some(error);
            }
        }
        for (route, partition) in leaving {
            self.positions.remove(&(route, partition));
            self.crash_guard.revoke(route, partition);
            if let Stage::Stateful { pipeline } = self.routes[route].stage {
                if self.tasks.remove(&(pipeline, partition)).is_some() {
                    self.pipelines[pipeline].chain.close_partition(partition);
                }
            }
        }
        self.metrics
            .assigned_partitions
            .set(self.positions.len() as i64);
        tracing::info!(revoked = partitions.count(), lost, "Partitions revoked.");
    }

    /// Partitions arrived: restore their state before any of their records is processed.
    pub fn on_assign<C: GroupIo<Metadata = Io::GroupMetadata>>(
        &mut self,
        consumer: &C,
        partitions: &TopicPartitionList,
    ) {
        if self.fatal.is_some() {
            return;
        }
        self.health.set_ready(false);
        if let Err(error) = self.assign(consumer, partitions) {
            tracing::error!(%error, "Assignment failed; the engine will rejoin.");
            self.fatal = Some(error);
            return;
        }
        self.metrics
            .assigned_partitions
            .set(self.positions.len() as i64);
        self.health.set_ready(true);
        tracing::info!(
            assigned = partitions.count(),
            "Partitions assigned and restored."
        );
    }

    fn assign<C: GroupIo<Metadata = Io::GroupMetadata>>(
        &mut self,
        consumer: &C,
        partitions: &TopicPartitionList,
    ) -> Result<()> {
        let mut consumed = TopicPartitionList::new();
        for element in partitions.elements() {
            if self.route_by_topic.contains_key(element.topic()) {
                consumed.add_partition(element.topic(), element.partition());
            }
        }
        let committed = if consumed.count() > 0 {
            consumer.committed_offsets(consumed, KAFKA_CALL_TIMEOUT)?
        } else {
            TopicPartitionList::new()
        };
        let restore_timeout = Duration::from_millis(self.config.state.restore_timeout_ms);
        for element in partitions.elements() {
            let Some(&route) = self.route_by_topic.get(element.topic()) else {
                continue;
            };
            let partition = element.partition();
            self.positions.insert((route, partition), Position::new(-1));
            let found = committed.find_partition(element.topic(), partition);
            let committed_input = found.as_ref().and_then(|found| match found.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            });
            let changelog_ends = found
                .filter(|_| committed_input.is_some())
                .map(|found| ChangelogEnds::parse(found.metadata()))
                .unwrap_or_default();
            self.crash_guard
                .assign(route, element.topic(), partition, committed_input)?;
            let Stage::Stateful { pipeline: index } = self.routes[route].stage else {
                continue;
            };
            self.metrics.restoring_partitions.inc();
            let mut changelog_next = Vec::new();
            let pipeline = &mut self.pipelines[index];
            for (store_index, (store, topic)) in pipeline.stores.iter().enumerate() {
                let slot = self.changelog_slot[index][store_index];
                let reached = restore_partition(
                    self.io.changelogs(),
                    &self.backend,
                    RestoreTarget {
                        store: *store,
                        changelog_topic: topic,
                        partition,
                        committed_input,
                        committed_changelog_end: changelog_ends
                            .end_of(self.backend.store_name(*store)),
                    },
                    restore_timeout,
                    &self.restore_metrics[slot],
                );
                match reached {
                    Ok(offset) => changelog_next.push(offset),
                    Err(error) => {
                        self.metrics.restoring_partitions.dec();
                        return Err(error);
                    }
                }
            }
            self.metrics.restoring_partitions.dec();
            let mut stores: Vec<PartitionStore> = pipeline
                .stores
                .iter()
                .map(|(store, _)| self.backend.partition_store(*store, partition))
                .collect();
            pipeline.chain.open_partition(&mut stores)?;
            if let Some(position) = self.positions.get_mut(&(route, partition)) {
                position.waiting_committed = chain_waiting(pipeline, partition);
            }
            for (store, _) in &pipeline.stores {
                self.metrics
                    .state_keys
                    .with_label_values(&[self.backend.store_name(*store)])
                    .set(self.backend.estimated_keys(*store) as i64);
            }
            let committed_next = committed_input.unwrap_or(0);
            self.tasks.insert(
                (index, partition),
                Task {
                    stores,
                    changelog_next,
                    touched: false,
                    last_offset: committed_next - 1,
                    committed_next,
                },
            );
        }
        Ok(())
    }

    /// Closes operators at shutdown.
    pub fn close(&mut self) {
        self.crash_guard.close();
        for pipeline in &mut self.pipelines {
            pipeline.chain.close();
        }
        self.tasks.clear();
    }
}

/// Sends what leaves an operator chain into the open transaction.
struct Publisher<'a, Io> {
    producer: &'a Io,
    transaction: &'a [u8],
    dead_letter_topic: &'a str,
    outputs: PipelineOutputs<'a>,
    pipeline_index: usize,
    add_source_headers: bool,
    counts: &'a mut PipelineCounts,
    ledger: &'a mut LedgerCounts,
    released_envelope: &'a mut Envelope,
    edges: &'a mut EdgeBuffer,
    error: Option<KafkaError>,
}

impl<Io: KafkaIo> Sink for Publisher<'_, Io> {
    fn send(
        &mut self,
        operator: usize,
        port: Port,
        record: &RawRecord<'_>,
        event: Option<&Envelope>,
        extra: &[OperatorHeader<'_>],
    ) {
        debug_assert!(port != Port::Main || operator == self.outputs.last_operator);
        let index = port_index(port);
        self.counts.ports[operator][index] += 1;
        match port {
            Port::Main => match event {
                Some(event) => self.ledger.add_output(event.id.as_bytes()),
                None => {
                    // Released from state: decoding is deterministic, so this is the id the
                    // event had when it arrived (a checker decodes the output the same way).
                    self.released_envelope.clear();
                    let _ = self.outputs.decoder.decode(record, self.released_envelope);
                    self.ledger.add_output(self.released_envelope.id.as_bytes());
                }
            },
            Port::Duplicates => self.ledger.duplicates += 1,
            Port::Conflicts => self.ledger.conflicts += 1,
            Port::Late => self.ledger.late += 1,
            Port::Gaps => self.ledger.gaps += 1,
            // Generated records about the stream, not input: outside the ledger's identity.
            // (Sampling pipelines are not reconciled by the ledger yet.)
            Port::Decisions | Port::Lineage => {}
        }
        let Some(topic) = &self.outputs.port_topics[index] else {
            return;
        };
        if self.error.is_some() {
            return;
        }
        if port == Port::Lineage {
            // Sent at commit, once the copy it describes has landed.
            self.edges.hold(
                self.pipeline_index,
                record.key.unwrap_or_default(),
                record.value.unwrap_or_default(),
                record.timestamp_ms,
            );
            return;
        }
        let tag = if port == Port::Main && self.outputs.tracks_copies {
            self.edges.next_copy_tag()
        } else {
            0
        };
        let mut pairs: SmallVec<[(&str, &[u8]); 4]> = SmallVec::new();
        for header in extra {
            pairs.push((header.name, header.value));
        }
        // Generated records (rare: gap records) are re-encoded when the port has an encoder.
        let encoded;
        let mut avro = Vec::new();
        let record = match &self.outputs.port_encoders[index] {
            Some(encoder) => match encoder.encode_json(record.value.unwrap_or_default(), &mut avro)
            {
                Ok(()) => {
                    encoded = RawRecord {
                        value: Some(&avro),
                        ..*record
                    };
                    &encoded
                }
                Err(problem) => {
                    // A bug, not bad input: the record still goes out, as JSON, and says so.
                    tracing::warn!(%problem, topic, "A generated record does not fit its Avro schema; sent as JSON.");
                    pairs.push((headers::ENCODING_FALLBACK, b"json"));
                    record
                }
            },
            None => record,
        };
        if let Err(error) = send_tagged_record(
            self.producer,
            topic,
            record,
            None,
            &pairs,
            self.add_source_headers,
            self.transaction,
            tag,
        ) {
            self.error = Some(error);
        }
    }

    fn reject(&mut self, record: &RawRecord<'_>, reason: &'static str, message: &str) {
        if self.error.is_some() {
            return;
        }
        let dead_letters = DeadLetters {
            producer: self.producer,
            topic: self.dead_letter_topic,
            pipeline: self.outputs.name,
            withhold_payload: self.outputs.withhold_payload,
            transaction: self.transaction,
            add_source_headers: self.add_source_headers,
        };
        if let Err(error) = dead_letters.send(record, reason, message, self.counts, self.ledger) {
            self.error = Some(error);
        }
    }
}

/// Republishes `record` (original key, value and headers) to `topic` with breadcrumb's headers.
fn send_record<Io: KafkaIo>(
    producer: &Io,
    topic: &str,
    record: &RawRecord<'_>,
    key_override: Option<&[u8]>,
    extra: &[(&str, &[u8])],
    add_source_headers: bool,
    transaction: &[u8],
) -> std::result::Result<(), KafkaError> {
    send_tagged_record(
        producer,
        topic,
        record,
        key_override,
        extra,
        add_source_headers,
        transaction,
        0,
    )
}

/// [`send_record`] with a delivery tag (a lineage copy's, see [`super::edges`]).
#[allow(clippy::too_many_arguments)] // send_record's arguments plus the tag; called twice.
fn send_tagged_record<Io: KafkaIo>(
    producer: &Io,
    topic: &str,
    record: &RawRecord<'_>,
    key_override: Option<&[u8]>,
    extra: &[(&str, &[u8])],
    add_source_headers: bool,
    transaction: &[u8],
    tag: usize,
) -> std::result::Result<(), KafkaError> {
    let mut partition = itoa::Buffer::new();
    let mut offset = itoa::Buffer::new();
    let mut out_headers: SmallVec<[HeaderRef<'_>; 16]> = SmallVec::new();
    out_headers.extend_from_slice(record.headers);
    out_headers.extend(extra.iter().map(|(key, value)| (*key, Some(*value))));
    if add_source_headers {
        out_headers.extend_from_slice(&[
            (headers::SOURCE_TOPIC, Some(record.topic.as_bytes())),
            (
                headers::SOURCE_PARTITION,
                Some(partition.format(record.partition).as_bytes()),
            ),
            (
                headers::SOURCE_OFFSET,
                Some(offset.format(record.offset).as_bytes()),
            ),
        ]);
    }
    out_headers.push((headers::TRANSACTION, Some(transaction)));
    // Outputs keep the input's timestamp, as Kafka Streams does: event time stays event time,
    // and end-to-end latency stays measurable downstream.
    producer.send(&OutRecord {
        topic,
        partition: None,
        key: key_override.or(record.key),
        value: record.value,
        headers: &out_headers,
        timestamp_ms: record.timestamp_ms,
        tag,
    })
}

/// Where one pipeline's dead letters go within the open transaction.
struct DeadLetters<'a, Io> {
    producer: &'a Io,
    topic: &'a str,
    pipeline: &'a str,
    /// Keep only coordinates and reason (the pipeline rewrites personal data).
    withhold_payload: bool,
    transaction: &'a [u8],
    add_source_headers: bool,
}

impl<'a, Io: KafkaIo> DeadLetters<'a, Io> {
    fn new(
        producer: &'a Io,
        topic: &'a str,
        pipeline: &'a Pipeline,
        transaction: &'a [u8],
        add_source_headers: bool,
    ) -> Self {
        Self {
            producer,
            topic,
            pipeline: &pipeline.name,
            withhold_payload: pipeline.withhold_dead_letter_payload,
            transaction,
            add_source_headers,
        }
    }

    fn send(
        &self,
        record: &RawRecord<'_>,
        reason: &'static str,
        message: &str,
        counts: &mut PipelineCounts,
        ledger: &mut LedgerCounts,
    ) -> std::result::Result<(), KafkaError> {
        counts.dead_letters[dead_letter_reason_index(reason)] += 1;
        ledger.dead_letters += 1;
        // What made the record too big stays out of the dead letter, which must fit the
        // producer's limits; the source coordinates point at the original. A pipeline that
        // rewrites personal data cannot rewrite what it could not read: its dead letters keep
        // only their coordinates.
        let kept = if self.withhold_payload {
            RawRecord {
                key: None,
                value: None,
                headers: &[],
                ..*record
            }
        } else {
            RawRecord {
                key: record.key.filter(|_| reason != "oversized_key"),
                value: record.value.filter(|_| reason != "oversized"),
                ..*record
            }
        };
        send_record(
            self.producer,
            self.topic,
            &kept,
            None,
            &[
                (headers::DLQ_REASON, reason.as_bytes()),
                (headers::DLQ_MESSAGE, message.as_bytes()),
                (headers::DLQ_PIPELINE, self.pipeline.as_bytes()),
            ],
            self.add_source_headers,
            self.transaction,
        )
    }
}

/// Whether a record of a lineage pipeline's repartition topic is a span part, not an event.
fn is_span_record(record: &RawRecord<'_>) -> bool {
    record
        .headers
        .iter()
        .any(|(name, value)| *name == headers::RECORD_KIND && *value == Some(headers::KIND_SPANS))
}

/// Events every operator of the pipeline holds for `partition`.
fn chain_waiting(pipeline: &Pipeline, partition: i32) -> u64 {
    (0..pipeline.chain.len())
        .map(|operator| pipeline.chain.waiting(operator, partition).events)
        .sum()
}

fn is_retriable(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(inner) if inner.is_retriable())
}

fn fatal_unless_retriable(error: KafkaError) -> EngineError {
    let fatal = match &error {
        KafkaError::Transaction(inner) => is_fatal(inner),
        // A fenced producer never recovers, whatever wraps the code.
        other => matches!(
            other.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        ),
    };
    if fatal {
        EngineError::Fatal(error.to_string())
    } else {
        EngineError::Kafka(error)
    }
}

fn is_fatal(error: &RDKafkaError) -> bool {
    error.is_fatal()
}

/// State queries (the HTTP query API, `crate::query`), answered between records.
impl<Io: KafkaIo> Core<Io> {
    /// Answers `query` from every restored local partition of the pipelines that can answer
    /// it. Reads only; a failing lookup is reported in the answer, never fatal to the loop.
    pub fn answer_query(&mut self, query: &crate::query::Query) -> crate::query::LocalAnswer {
        let lookup = query.lookup();
        let mut answer = crate::query::LocalAnswer::default();
        for (index, pipeline) in self.pipelines.iter_mut().enumerate() {
            if !pipeline.chain.answers(lookup.kind()) {
                continue;
            }
            let mut local: Vec<i32> = self
                .tasks
                .keys()
                .filter(|(owner, _)| *owner == index)
                .map(|(_, partition)| *partition)
                .collect();
            local.sort_unstable();
            for &partition in &local {
                let task = self
                    .tasks
                    .get_mut(&(index, partition))
                    .expect("listed above");
                match pipeline.chain.lookup(&mut task.stores, &lookup) {
                    Ok(Some(value)) => answer.found.push(crate::query::Found {
                        pipeline: pipeline.name.clone(),
                        partition,
                        value,
                    }),
                    Ok(None) => {}
                    Err(error) => answer
                        .errors
                        .push(format!("{} partition {partition}: {error}", pipeline.name)),
                }
            }
            let dedupe_key_fields = self
                .config
                .pipelines
                .get(&pipeline.name)
                .map_or(&[][..], |config| config.dedupe.key_fields.as_slice());
            answer.searched.push(crate::query::Searched {
                pipeline: pipeline.name.clone(),
                topic: pipeline.state_topic.clone(),
                local_partitions: local,
                routing_key: query.routing_key(
                    pipeline.repartition.as_ref().map(|(key, _)| *key),
                    dedupe_key_fields,
                ),
            });
        }
        answer
    }
}
