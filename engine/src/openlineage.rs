//! OpenLineage run events: what breadcrumb's pipelines read and write, for lineage catalogs
//! (Marquez, DataHub, ...), sent on a Kafka topic.
//!
//! Each pipeline is one **job**, `<application_id>.<pipeline>` in the configured namespace: the
//! pipelines of one engine share nothing but the process, so one job per pipeline keeps each
//! output connected to its own inputs only. Each engine process run is one **run** of every
//! job, with its own UUIDv7 run id; instances of one deployment each report their own run.
//!
//! A run sends START once the engine's Kafka clients exist, RUNNING every
//! `running_interval_ms` with the output counts committed so far (the `outputStatistics` facet,
//! read from the Prometheus counters, which count only committed transactions), then COMPLETE
//! at a clean stop or FAIL (with the `errorMessage` facet) when the engine stops on an error.
//! Datasets are Kafka topics: namespace `kafka://<first bootstrap server>`, name = the topic.
//!
//! The events are metadata, not output: they go through a plain idempotent producer of their
//! own, outside the exactly-once transactions. A failure to send is logged (at most once a
//! minute) and never stops processing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::IntCounterVec;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::{is_secret_kafka_key, EngineConfig};
use crate::error::EngineError;
use crate::metrics::Metrics;
use crate::runtime::base_client_config;

/// The OpenLineage spec version the events follow (the `RunEvent` definition of 2-0-2, the
/// first 2-0-x with `RUNNING`), as its JSON pointer URL.
pub const SCHEMA_URL: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
/// `job.facets.jobType`.
pub const JOB_TYPE_FACET_URL: &str =
    "https://openlineage.io/spec/facets/2-0-3/JobTypeJobFacet.json#/$defs/JobTypeJobFacet";
/// `outputs[].outputFacets.outputStatistics`.
pub const OUTPUT_STATISTICS_FACET_URL: &str = "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet";
/// `run.facets.errorMessage`.
pub const ERROR_MESSAGE_FACET_URL: &str =
    "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";
/// The `producer` of every event and facet: breadcrumb and its version, as a URN (the project
/// has no canonical URL to point at).
pub const PRODUCER: &str = concat!("urn:breadcrumb:engine:", env!("CARGO_PKG_VERSION"));

/// librdkafka's default port, for a bootstrap server given without one.
const DEFAULT_KAFKA_PORT: u16 = 9092;
/// Longest the final COMPLETE or FAIL waits for delivery: a stop must not hang on a catalog.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one log line per this long about failed sends; the rest are counted in it.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Longest error message carried by a FAIL event.
const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// The state transition an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState<'a> {
    Start,
    Running,
    Complete,
    /// The engine stopped on this error (already free of secrets: see [`redact_secrets`]).
    Fail(&'a str),
}

impl RunState<'_> {
    fn event_type(self) -> &'static str {
        match self {
            RunState::Start => "START",
            RunState::Running => "RUNNING",
            RunState::Complete => "COMPLETE",
            RunState::Fail(_) => "FAIL",
        }
    }
}

/// Which committed counter measures the records a pipeline writes to one of its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowCounter {
    /// `breadcrumb_events_out_total{pipeline, topic}`: first copies on the output topic.
    EventsOut,
    /// `breadcrumb_duplicates_total` and `breadcrumb_ordering_repeats_total`: both operators
    /// send to the duplicates topic.
    Duplicates,
    Conflicts,
    Late,
    Gaps,
    Decisions,
    /// `breadcrumb_lineage_edges_total{pipeline}`, every kind.
    LineageEdges,
    /// `breadcrumb_dead_letters_total{pipeline}`, every reason: the pipeline's share of the
    /// shared dead-letter topic.
    DeadLetters,
}

/// One output dataset of a job and the counters that add up to its row count.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Output {
    topic: String,
    counters: Vec<RowCounter>,
}

/// One pipeline as an OpenLineage job.
#[derive(Debug, Clone)]
struct Job {
    pipeline: String,
    name: String,
    run_id: Uuid,
    inputs: Vec<String>,
    outputs: Vec<Output>,
}

/// The jobs of one engine process run, resolved from the configuration once; builds the
/// events.
#[derive(Debug, Clone)]
pub struct RunEvents {
    namespace: String,
    dataset_namespace: String,
    jobs: Vec<Job>,
}

impl RunEvents {
    /// The jobs of `config`'s pipelines in `namespace`, each with a fresh run id.
    pub fn new(config: &EngineConfig, namespace: &str) -> Self {
        let dead_letter_topic = config.dead_letter_topic();
        let jobs = config
            .pipelines
            .iter()
            .map(|(name, pipeline)| {
                let mut outputs: Vec<Output> = Vec::new();
                let mut add = |topic: String, counter: RowCounter| {
                    // Two ports may share a topic (duplicates and dead letters, say): one
                    // dataset, counted by both.
                    match outputs.iter_mut().find(|output| output.topic == topic) {
                        Some(output) => output.counters.push(counter),
                        None => outputs.push(Output {
                            topic,
                            counters: vec![counter],
                        }),
                    }
                };
                add(pipeline.output_topic.clone(), RowCounter::EventsOut);
                if let Some(topic) = &pipeline.duplicates_topic {
                    add(topic.clone(), RowCounter::Duplicates);
                }
                if pipeline.sampling.is_none() {
                    add(pipeline.conflicts_topic(), RowCounter::Conflicts);
                }
                if let Some(topic) = pipeline.late_topic() {
                    add(topic, RowCounter::Late);
                }
                if let Some(topic) = pipeline.gaps_topic() {
                    add(topic, RowCounter::Gaps);
                }
                if let Some(topic) = pipeline.decisions_topic() {
                    add(topic, RowCounter::Decisions);
                }
                if let Some(topic) = pipeline.lineage_topic() {
                    add(topic, RowCounter::LineageEdges);
                }
                add(dead_letter_topic.clone(), RowCounter::DeadLetters);
                // The ledger, changelog and repartition topics are breadcrumb's own bookkeeping,
                // not data anyone consumes: they are left out of the lineage graph.
                Job {
                    pipeline: name.clone(),
                    name: format!("{}.{name}", config.application_id),
                    run_id: Uuid::now_v7(),
                    inputs: pipeline
                        .input_topics
                        .iter()
                        .chain(&pipeline.span_topics)
                        .cloned()
                        .collect(),
                    outputs,
                }
            })
            .collect();
        Self {
            namespace: namespace.to_owned(),
            dataset_namespace: kafka_dataset_namespace(
                config
                    .kafka
                    .get("bootstrap.servers")
                    .map_or("", String::as_str),
            ),
            jobs,
        }
    }

    /// One event per job, keyed `run:<namespace>/<job>` so a job's events stay in order on
    /// one partition. START carries no statistics (nothing is committed yet); the others carry
    /// the committed counts of `metrics`.
    pub fn events(
        &self,
        state: RunState<'_>,
        metrics: &Metrics,
        now: OffsetDateTime,
    ) -> Vec<(String, Value)> {
        let event_time = now
            .format(&Rfc3339)
            .expect("a current UTC time formats as RFC 3339");
        let counts = (state != RunState::Start).then(|| CommittedCounts::read(metrics));
        self.jobs
            .iter()
            .map(|job| {
                let key = format!("run:{}/{}", self.namespace, job.name);
                (key, self.event(job, state, &event_time, counts.as_ref()))
            })
            .collect()
    }

    fn event(
        &self,
        job: &Job,
        state: RunState<'_>,
        event_time: &str,
        counts: Option<&CommittedCounts>,
    ) -> Value {
        let mut run = json!({ "runId": job.run_id.to_string() });
        if let RunState::Fail(message) = state {
            run["facets"] = json!({
                "errorMessage": {
                    "_producer": PRODUCER,
                    "_schemaURL": ERROR_MESSAGE_FACET_URL,
                    "message": message,
                    "programmingLanguage": "RUST",
                }
            });
        }
        let inputs: Vec<Value> = job
            .inputs
            .iter()
            .map(|topic| json!({ "namespace": self.dataset_namespace, "name": topic }))
            .collect();
        let outputs: Vec<Value> = job
            .outputs
            .iter()
            .map(|output| {
                let mut dataset =
                    json!({ "namespace": self.dataset_namespace, "name": output.topic });
                if let Some(counts) = counts {
                    let rows: u64 = output
                        .counters
                        .iter()
                        .map(|counter| counts.get(&job.pipeline, &output.topic, *counter))
                        .sum();
                    dataset["outputFacets"] = json!({
                        "outputStatistics": {
                            "_producer": PRODUCER,
                            "_schemaURL": OUTPUT_STATISTICS_FACET_URL,
                            "rowCount": rows,
                        }
                    });
                }
                dataset
            })
            .collect();
        json!({
            "eventType": state.event_type(),
            "eventTime": event_time,
            "run": run,
            "job": {
                "namespace": self.namespace,
                "name": job.name,
                "facets": {
                    "jobType": {
                        "_producer": PRODUCER,
                        "_schemaURL": JOB_TYPE_FACET_URL,
                        "processingType": "STREAMING",
                        "integration": "BREADCRUMB",
                        "jobType": "JOB",
                    }
                }
            },
            "inputs": inputs,
            "outputs": outputs,
            "producer": PRODUCER,
            "schemaURL": SCHEMA_URL,
        })
    }
}

/// The committed counters, read without creating label sets (`with_label_values` would add
/// zero series to `/metrics` for outputs that never saw a record).
struct CommittedCounts {
    /// Counter family → (pipeline, topic or "") → sum over the other labels.
    families: BTreeMap<&'static str, BTreeMap<(String, String), u64>>,
}

impl CommittedCounts {
    fn read(metrics: &Metrics) -> Self {
        let mut families = BTreeMap::new();
        for (family, counter) in [
            ("events_out", &metrics.events_out),
            ("duplicates", &metrics.duplicates),
            ("ordering_repeats", &metrics.ordering_repeats),
            ("conflicts", &metrics.conflicts),
            ("ordering_late", &metrics.ordering_late),
            ("ordering_gaps", &metrics.ordering_gaps),
            ("decisions", &metrics.sampling.decisions),
            ("lineage_edges", metrics.lineage.edges_family()),
            ("dead_letters", &metrics.dead_letters),
        ] {
            families.insert(family, sum_by_pipeline_and_topic(counter));
        }
        Self { families }
    }

    fn family(&self, family: &str, pipeline: &str, topic: &str) -> u64 {
        self.families
            .get(family)
            .and_then(|sums| sums.get(&(pipeline.to_owned(), topic.to_owned())))
            .copied()
            .unwrap_or(0)
    }

    fn get(&self, pipeline: &str, topic: &str, counter: RowCounter) -> u64 {
        match counter {
            RowCounter::EventsOut => self.family("events_out", pipeline, topic),
            RowCounter::Duplicates => {
                self.family("duplicates", pipeline, "")
                    + self.family("ordering_repeats", pipeline, "")
            }
            RowCounter::Conflicts => self.family("conflicts", pipeline, ""),
            RowCounter::Late => self.family("ordering_late", pipeline, ""),
            RowCounter::Gaps => self.family("ordering_gaps", pipeline, ""),
            RowCounter::Decisions => self.family("decisions", pipeline, ""),
            RowCounter::LineageEdges => self.family("lineage_edges", pipeline, ""),
            RowCounter::DeadLetters => self.family("dead_letters", pipeline, ""),
        }
    }
}

/// Sums a counter family by its `pipeline` and `topic` labels (`""` when it has no topic).
fn sum_by_pipeline_and_topic(counter: &IntCounterVec) -> BTreeMap<(String, String), u64> {
    let mut sums = BTreeMap::new();
    for family in counter.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|pair| pair.name() == name)
                    .map(|pair| pair.value().to_owned())
                    .unwrap_or_default()
            };
            *sums.entry((label("pipeline"), label("topic"))).or_default() +=
                metric.get_counter().get_value() as u64;
        }
    }
    sums
}

/// `kafka://host:port` of the first bootstrap server: the dataset namespace OpenLineage's
/// naming convention gives Kafka topics. A `PROTOCOL://` prefix (librdkafka accepts
/// `SASL_SSL://host:port`) is dropped and a missing port is librdkafka's default.
pub fn kafka_dataset_namespace(bootstrap_servers: &str) -> String {
    let first = bootstrap_servers
        .split(',')
        .map(str::trim)
        .find(|server| !server.is_empty())
        .unwrap_or("localhost");
    let address = first.split_once("://").map_or(first, |(_, rest)| rest);
    let address = address.trim_end_matches('/');
    // `[::1]:9092` has a port; `[::1]` and `host` do not.
    let has_port = match address.rfind(']') {
        Some(bracket) => address[bracket..].contains(':'),
        None => address.contains(':'),
    };
    if has_port {
        format!("kafka://{address}")
    } else {
        format!("kafka://{address}:{DEFAULT_KAFKA_PORT}")
    }
}

/// `message` with the value of every secret `[kafka]` property replaced, for the FAIL event's
/// error facet (it leaves the process; a client error could quote a property), and bounded in
/// length.
pub fn redact_secrets(message: &str, kafka: &BTreeMap<String, String>) -> String {
    let mut redacted = message.to_owned();
    for (key, value) in kafka {
        if is_secret_kafka_key(key) && !value.is_empty() {
            redacted = redacted.replace(value.as_str(), "<redacted>");
        }
    }
    if redacted.len() > MAX_ERROR_MESSAGE_BYTES {
        let mut end = MAX_ERROR_MESSAGE_BYTES;
        while !redacted.is_char_boundary(end) {
            end -= 1;
        }
        redacted.truncate(end);
    }
    redacted
}

/// Logs failed sends at most once per [`FAILURE_LOG_INTERVAL`]: a catalog topic that is down
/// for an hour must not flood the engine's log.
#[derive(Default)]
struct FailureLog {
    last_logged: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl FailureLog {
    fn report(&self, error: &KafkaError, what: &str) {
        let mut last = self.last_logged.lock().expect("failure log lock poisoned");
        if last.is_some_and(|at| at.elapsed() < FAILURE_LOG_INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            %error,
            what,
            suppressed_since_last_report = suppressed,
            "Could not send an OpenLineage run event; processing goes on."
        );
    }
}

/// Delivery reports and client errors of the OpenLineage producer go to the rate-limited log.
struct EmitContext {
    failures: Arc<FailureLog>,
}

impl ClientContext for EmitContext {
    fn error(&self, error: KafkaError, _reason: &str) {
        self.failures.report(&error, "client error");
    }
}

impl ProducerContext for EmitContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failures.report(error, "delivery failed");
        }
    }
}

/// What the RUNNING thread and the engine share.
struct Shared {
    events: RunEvents,
    topic: String,
    producer: ThreadedProducer<EmitContext>,
    metrics: Metrics,
    failures: Arc<FailureLog>,
}

impl Shared {
    fn send(&self, state: RunState<'_>) {
        for (key, event) in self
            .events
            .events(state, &self.metrics, OffsetDateTime::now_utc())
        {
            let payload = event.to_string();
            let record = BaseRecord::to(&self.topic).key(&key).payload(&payload);
            if let Err((error, _)) = self.producer.send(record) {
                self.failures.report(&error, "send");
            }
        }
    }
}

/// Sends a run's events for the engine: [`Emitter::start`] once the Kafka clients exist, RUNNING
/// from a thread of its own, [`Emitter::finish`] at the end.
pub struct Emitter {
    shared: Arc<Shared>,
    interval: Duration,
    started: AtomicBool,
    /// Dropping or sending on the sender wakes the RUNNING thread to stop.
    ticker: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl Emitter {
    /// The emitter `[openlineage]` asks for, if any. A producer that cannot be created is
    /// logged and OpenLineage is off for this run: lineage never stops processing.
    pub fn from_config(config: &EngineConfig, metrics: &Metrics) -> Option<Self> {
        let openlineage = config.openlineage.as_ref()?;
        let failures = Arc::new(FailureLog::default());
        let mut client = base_client_config(config);
        client.set("enable.idempotence", "true");
        let producer = match client.create_with_context(EmitContext {
            failures: failures.clone(),
        }) {
            Ok(producer) => producer,
            Err(error) => {
                tracing::warn!(%error, "No OpenLineage producer; run events are off for this run.");
                return None;
            }
        };
        Some(Self {
            shared: Arc::new(Shared {
                events: RunEvents::new(config, &openlineage.namespace),
                topic: openlineage.topic.clone(),
                producer,
                metrics: metrics.clone(),
                failures,
            }),
            interval: Duration::from_millis(openlineage.running_interval_ms),
            started: AtomicBool::new(false),
            ticker: Mutex::new(None),
        })
    }

    /// Sends START and starts the RUNNING events; later calls (after the clients were
    /// recreated) do nothing, since it is still the same run.
    pub fn start(&self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.send(RunState::Start);
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = self.shared.clone();
        let interval = self.interval;
        let thread = std::thread::Builder::new()
            .name("breadcrumb-openlineage".to_owned())
            // Anything but a time-out (a message, or the sender dropped by `finish`) stops it.
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    shared.send(RunState::Running);
                }
            });
        match thread {
            Ok(thread) => {
                *self.ticker.lock().expect("ticker lock poisoned") = Some((stop, thread));
            }
            Err(error) => {
                tracing::warn!(%error, "No OpenLineage RUNNING thread; START and the final event are still sent.");
            }
        }
    }

    /// Stops the RUNNING events and sends COMPLETE (`outcome` `None`) or FAIL with the error
    /// (secrets redacted), then waits a bounded time for delivery.
    pub fn finish(&self, outcome: Option<&EngineError>, kafka: &BTreeMap<String, String>) {
        if let Some((stop, thread)) = self.ticker.lock().expect("ticker lock poisoned").take() {
            drop(stop);
            let _ = thread.join();
        }
        match outcome {
            None => self.shared.send(RunState::Complete),
            Some(error) => {
                let message = redact_secrets(&error.to_string(), kafka);
                self.shared.send(RunState::Fail(&message));
            }
        }
        if let Err(error) = self.shared.producer.flush(FLUSH_TIMEOUT) {
            self.shared
                .failures
                .report(&error, "flush of the final event");
        }
    }
}

#[cfg(test)]
mod tests;
