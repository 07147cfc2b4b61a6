//! Pipelines compiled from configuration: routes from topics to stages, decoders, operators and
//! their state stores, output topics and pre-resolved metric handles.

use breadcrumb_operators::dedupe::Dedupe;
use std::sync::Arc;

use breadcrumb_operators::lineage::{Lineage, LineageMetrics};
use breadcrumb_operators::ordering::{Ordering, OrderingMetrics};
use breadcrumb_operators::pii::Pii;
use breadcrumb_operators::sampling::{NoLineage, OtlpEncoding, Sampling, SamplingMetrics};
use breadcrumb_operators::{Operator, Port};
use breadcrumb_schemas::decode::avro::HttpRegistry;
use breadcrumb_schemas::encode::{
    AvroRecordEncoder, LINEAGE_EDGE_SCHEMA, ORDERING_GAP_SCHEMA, SAMPLING_DECISION_SCHEMA,
};
use breadcrumb_schemas::{build_decoder, DecodeErrorClass, Decoder, DecoderConfig, Envelope};
use breadcrumb_state::{StateBackend, StoreId};
use prometheus::{IntCounter, IntGauge};

use super::chain::OperatorChain;
use crate::config::{EngineConfig, GeneratedRecordsFormat, PipelineConfig, RepartitionKey};
use crate::error::{EngineError, Result};
use crate::metrics::Metrics;

/// Reasons a record is dead-lettered: every decode class plus what operators and the
/// repartition stage reject with. Indexes count dead letters per transaction without hashing.
pub const DEAD_LETTER_REASONS: [&str; 17] = [
    "missing_value",
    "invalid_utf8",
    "invalid_json",
    "invalid_protobuf",
    "missing_field",
    "invalid_field",
    "invalid_trace_context",
    "unsupported_format",
    "oversized",
    "invalid_avro",
    "unknown_schema",
    "oversized_key",
    "invalid_headers",
    "event_time_future",
    "event_time_past",
    "quarantined",
    "other",
];

pub fn dead_letter_reason_index(reason: &str) -> usize {
    DEAD_LETTER_REASONS
        .iter()
        .position(|known| *known == reason)
        .unwrap_or(DEAD_LETTER_REASONS.len() - 1)
}

pub fn decode_reason(class: DecodeErrorClass) -> &'static str {
    let label = class.as_str();
    DEAD_LETTER_REASONS[dead_letter_reason_index(label)]
}

/// What happens to a record of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Decode and re-key into the pipeline's repartition topic.
    Repartition { pipeline: usize },
    /// Decode and run the operators on the partition's state.
    Stateful { pipeline: usize },
}

/// A consumed topic and its stage.
#[derive(Debug, Clone)]
pub struct Route {
    pub topic: String,
    pub stage: Stage,
    /// Whether records arrive from breadcrumb's own repartition topic (and already carry source
    /// headers).
    pub internal: bool,
    /// Records are OTLP trace batches feeding lineage as side input (`span_topics`), not
    /// business events: split per trace into the repartition topic, never decoded as events.
    pub spans: bool,
    /// Input counter of this topic, resolved once.
    pub events_in: IntCounter,
}

/// Metric handles of one pipeline.
pub struct PipelineMetrics {
    pub events_out: IntCounter,
    /// Per operator of the chain and per port, the counter its emissions add to (main output of
    /// the last operator goes to `events_out`).
    pub ports: Vec<[Option<IntCounter>; Port::ALL.len()]>,
    pub dead_letters: Vec<IntCounter>,
    /// Events (traces, for sampling) and bytes held by the ordering or sampling operator, when
    /// the chain has one: its position and the gauges.
    pub waiting: Option<(usize, IntGauge, IntGauge)>,
}

/// A compiled pipeline.
pub struct Pipeline {
    pub name: String,
    /// Records are OTLP batches re-keyed by trace id: the repartition stage splits each into one
    /// request per trace instead of re-keying it whole.
    pub splits_traces: bool,
    /// Dead letters keep only their coordinates and reason: set when the pipeline rewrites
    /// personal data, which it cannot do for a record it could not read.
    pub withhold_dead_letter_payload: bool,
    /// The chain ends with the lineage operator: events without a trace are re-keyed by their
    /// id (lineage gives them a `no_trace_context` edge), and main output is tracked so edge
    /// records can name where each event's copy landed.
    pub joins_lineage: bool,
    pub decoder: Box<dyn Decoder>,
    pub chain: OperatorChain,
    /// Stores of the chain's operators, in chain and declaration order, with their changelog
    /// topics.
    pub stores: Vec<(StoreId, String)>,
    /// Topic per port (`Port::Main`, `Port::Duplicates`, `Port::Conflicts`).
    pub port_topics: [Option<String>; Port::ALL.len()],
    /// Per port, the Avro encoder of generated records (`generated_records.format = "avro"`).
    pub port_encoders: [Option<AvroRecordEncoder>; Port::ALL.len()],
    pub repartition: Option<(RepartitionKey, String)>,
    /// The topic whose partitions own this pipeline's state.
    pub state_topic: String,
    /// Whether an operator of the chain has a processing-time timeout configured.
    pub processing_time: bool,
    pub metrics: PipelineMetrics,
}

/// What publishing a pipeline's results reads of it, borrowed beside its chain (which operators
/// borrow mutably while they publish).
#[derive(Clone, Copy)]
pub struct PipelineOutputs<'a> {
    pub name: &'a str,
    pub port_topics: &'a [Option<String>; Port::ALL.len()],
    pub port_encoders: &'a [Option<AvroRecordEncoder>; Port::ALL.len()],
    pub decoder: &'a dyn Decoder,
    /// Main output is lineage's copies: their delivery reports are tracked for the edges.
    pub tracks_copies: bool,
    /// Dead letters carry coordinates only (the pipeline rewrites personal data).
    pub withhold_payload: bool,
    /// The operator whose main output leaves the pipeline.
    pub last_operator: usize,
}

impl Pipeline {
    /// The chain, and what publishing its results reads of the pipeline.
    pub fn chain_and_outputs(&mut self) -> (&mut OperatorChain, PipelineOutputs<'_>) {
        let outputs = PipelineOutputs {
            name: &self.name,
            port_topics: &self.port_topics,
            port_encoders: &self.port_encoders,
            decoder: self.decoder.as_ref(),
            tracks_copies: self.joins_lineage,
            withhold_payload: self.withhold_dead_letter_payload,
            last_operator: self.chain.len() - 1,
        };
        (&mut self.chain, outputs)
    }
}

pub fn port_index(port: Port) -> usize {
    port.index()
}

/// The operators a pipeline chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OperatorKind {
    Pii,
    Dedupe,
    Ordering,
    Sampling,
    Lineage,
}

/// The operators of a pipeline, in chain order. `metrics` is absent when only the declared
/// stores are wanted.
fn build_operators(
    name: &str,
    pipeline: &PipelineConfig,
    metrics: Option<&Metrics>,
) -> Result<Vec<(OperatorKind, Box<dyn Operator>)>> {
    if let Some(sampling) = &pipeline.sampling {
        let encoding = match pipeline.decoder {
            DecoderConfig::OtlpJson(_) => OtlpEncoding::Json,
            _ => OtlpEncoding::Proto,
        };
        let unregistered;
        let sampling_metrics = match metrics {
            Some(metrics) => &metrics.sampling,
            None => {
                unregistered = SamplingMetrics::unregistered();
                &unregistered
            }
        };
        // Until the lineage operator (issue 5) feeds references, the lineage policy keeps
        // nothing.
        return Ok(vec![(
            OperatorKind::Sampling,
            Box::new(Sampling::new(
                name,
                sampling.clone(),
                encoding,
                sampling_metrics,
                Arc::new(NoLineage),
            )),
        )]);
    }
    let mut operators: Vec<(OperatorKind, Box<dyn Operator>)> = Vec::new();
    // PII runs first, so no other operator, output or changelog sees the original values. It
    // keeps no state, so it is left out when only the declared stores are wanted (and its key
    // file is then not read).
    if let (Some(pii), Some(_)) = (&pipeline.pii, metrics) {
        let operator = Pii::new(pii)
            .map_err(|error| EngineError::Config(vec![format!("pipelines.{name}.pii.{error}")]))?;
        operators.push((OperatorKind::Pii, Box::new(operator)));
    }
    operators.push((
        OperatorKind::Dedupe,
        Box::new(Dedupe::new(name, pipeline.dedupe.clone())),
    ));
    if let Some(ordering) = &pipeline.ordering {
        let ordering_metrics = match metrics {
            Some(metrics) => OrderingMetrics {
                reorder_depth: metrics.ordering_reorder_depth.with_label_values(&[name]),
                time_in_buffer_seconds: metrics.ordering_buffer_seconds.with_label_values(&[name]),
            },
            None => OrderingMetrics::unregistered(),
        };
        operators.push((
            OperatorKind::Ordering,
            Box::new(Ordering::new(name, ordering.clone(), ordering_metrics)),
        ));
    }
    // Last, so it joins what dedupe let through, in the order ordering restored.
    if let Some(lineage) = &pipeline.lineage {
        let lineage_metrics = match metrics {
            Some(metrics) => metrics.lineage.resolve(name),
            None => LineageMetrics::unregistered(),
        };
        operators.push((
            OperatorKind::Lineage,
            Box::new(Lineage::new(name, lineage.clone(), lineage_metrics)),
        ));
    }
    Ok(operators)
}

/// Counters for what each operator of the chain emits, by port.
fn port_counters(
    name: &str,
    operators: &[(OperatorKind, Box<dyn Operator>)],
    metrics: &Metrics,
) -> Vec<[Option<IntCounter>; Port::ALL.len()]> {
    operators
        .iter()
        .map(|(kind, _)| {
            let mut counters: [Option<IntCounter>; Port::ALL.len()] = Default::default();
            match kind {
                OperatorKind::Pii => {}
                OperatorKind::Dedupe => {
                    counters[Port::Duplicates.index()] =
                        Some(metrics.duplicates.with_label_values(&[name]));
                    counters[Port::Conflicts.index()] =
                        Some(metrics.conflicts.with_label_values(&[name]));
                }
                OperatorKind::Ordering => {
                    counters[Port::Duplicates.index()] =
                        Some(metrics.ordering_repeats.with_label_values(&[name]));
                    counters[Port::Late.index()] =
                        Some(metrics.ordering_late.with_label_values(&[name]));
                    counters[Port::Gaps.index()] =
                        Some(metrics.ordering_gaps.with_label_values(&[name]));
                }
                // Decisions are counted by the operator itself, by policy.
                OperatorKind::Sampling => {}
                // A second copy of an event it still holds; edges are counted by the operator.
                OperatorKind::Lineage => {
                    counters[Port::Duplicates.index()] =
                        Some(metrics.duplicates.with_label_values(&[name]));
                }
            }
            counters
        })
        .collect()
}

/// Whether the pipeline's chain needs processing-time ticks.
fn uses_processing_time(pipeline: &PipelineConfig) -> bool {
    pipeline
        .ordering
        .as_ref()
        .is_some_and(|ordering| ordering.gap_timeout_processing_ms.is_some())
}

/// The store names every pipeline declares, for opening RocksDB before the pipelines exist.
pub fn declared_store_names(config: &EngineConfig) -> Vec<String> {
    config
        .pipelines
        .iter()
        .flat_map(|(name, pipeline)| declared_store_names_of(name, pipeline))
        .collect()
}

/// The store names one pipeline declares.
pub fn declared_store_names_of(name: &str, pipeline: &PipelineConfig) -> Vec<String> {
    build_operators(name, pipeline, None)
        .unwrap_or_default()
        .iter()
        .flat_map(|(_, operator)| operator.stores())
        .map(|store| store.name)
        .collect()
}

/// Compiles every pipeline and the routes of every consumed topic.
pub fn compile(
    config: &EngineConfig,
    backend: &StateBackend,
    metrics: &Metrics,
) -> Result<(Vec<Pipeline>, Vec<Route>)> {
    let mut pipelines = Vec::new();
    let mut routes = Vec::new();
    for (index, (name, pipeline_config)) in config.pipelines.iter().enumerate() {
        let operators = build_operators(name, pipeline_config, Some(metrics))?;
        let ports = port_counters(name, &operators, metrics);
        let waiting = operators
            .iter()
            .enumerate()
            .find_map(|(position, (kind, _))| match kind {
                OperatorKind::Ordering => Some((
                    position,
                    metrics.ordering_waiting_events.with_label_values(&[name]),
                    metrics.ordering_waiting_bytes.with_label_values(&[name]),
                )),
                OperatorKind::Sampling => Some((
                    position,
                    metrics.sampling_pending_traces.with_label_values(&[name]),
                    metrics.sampling_buffered_bytes.with_label_values(&[name]),
                )),
                // Lineage publishes its window state itself, at each checkpoint.
                OperatorKind::Pii | OperatorKind::Dedupe | OperatorKind::Lineage => None,
            });
        let mut stores = Vec::new();
        for declaration in operators.iter().flat_map(|(_, operator)| operator.stores()) {
            stores.push((
                backend.store_id(&declaration.name)?,
                config.changelog_topic(&declaration.name),
            ));
        }
        let repartition = pipeline_config
            .repartition_by
            .map(|key| (key, config.repartition_topic(name)));
        let state_topic = match &repartition {
            Some((_, topic)) => topic.clone(),
            None => pipeline_config.input_topics[0].clone(),
        };
        for topic in &pipeline_config.input_topics {
            routes.push(Route {
                topic: topic.clone(),
                stage: if repartition.is_some() {
                    Stage::Repartition { pipeline: index }
                } else {
                    Stage::Stateful { pipeline: index }
                },
                internal: false,
                spans: false,
                events_in: metrics.events_in.with_label_values(&[name, topic]),
            });
        }
        for topic in &pipeline_config.span_topics {
            routes.push(Route {
                topic: topic.clone(),
                stage: Stage::Repartition { pipeline: index },
                internal: false,
                spans: true,
                events_in: metrics.events_in.with_label_values(&[name, topic]),
            });
        }
        if let Some((_, topic)) = &repartition {
            routes.push(Route {
                topic: topic.clone(),
                stage: Stage::Stateful { pipeline: index },
                internal: true,
                spans: false,
                // Records of the repartition topic were counted when they entered the pipeline.
                events_in: IntCounter::new("unregistered_internal_in", "internal")
                    .expect("valid metric"),
            });
        }
        let output = pipeline_config.output_topic.clone();
        pipelines.push(Pipeline {
            name: name.clone(),
            withhold_dead_letter_payload: pipeline_config.pii.is_some(),
            splits_traces: pipeline_config.sampling.is_some() && repartition.is_some(),
            joins_lineage: pipeline_config.lineage.is_some(),
            decoder: build_decoder(&pipeline_config.decoder).map_err(|error| {
                EngineError::Config(vec![format!("pipelines.{name}.decoder.{error}")])
            })?,
            chain: OperatorChain::new(
                operators
                    .into_iter()
                    .map(|(_, operator)| operator)
                    .collect(),
            ),
            stores,
            metrics: PipelineMetrics {
                events_out: metrics.events_out.with_label_values(&[name, &output]),
                ports,
                waiting,
                dead_letters: DEAD_LETTER_REASONS
                    .iter()
                    .map(|reason| {
                        metrics
                            .dead_letters
                            .with_label_values(&[name.as_str(), reason])
                    })
                    .collect(),
            },
            port_encoders: generated_record_encoders(config, pipeline_config)?,
            port_topics: [
                Some(output),
                pipeline_config.duplicates_topic.clone(),
                pipeline_config
                    .sampling
                    .is_none()
                    .then(|| pipeline_config.conflicts_topic()),
                pipeline_config.late_topic(),
                pipeline_config.gaps_topic(),
                pipeline_config.decisions_topic(),
                pipeline_config.lineage_topic(),
            ],
            repartition,
            state_topic,
            processing_time: uses_processing_time(pipeline_config),
        });
    }
    Ok((pipelines, routes))
}

/// Avro encoders for the ports that carry generated records, their schemas registered under
/// `<topic>-value` (once, at start-up: the registry answers the same id every time).
fn generated_record_encoders(
    config: &EngineConfig,
    pipeline: &PipelineConfig,
) -> Result<[Option<AvroRecordEncoder>; Port::ALL.len()]> {
    let mut encoders: [Option<AvroRecordEncoder>; Port::ALL.len()] = Default::default();
    let (GeneratedRecordsFormat::Avro, Some(registry)) = (
        config.generated_records.format,
        config.generated_records.registry.as_ref(),
    ) else {
        return Ok(encoders);
    };
    let config_error =
        |message: String| EngineError::Config(vec![format!("generated_records.{message}")]);
    let client =
        HttpRegistry::from_config(registry).map_err(|error| config_error(error.to_string()))?;
    for (port, topic, schema) in [
        (Port::Gaps, pipeline.gaps_topic(), ORDERING_GAP_SCHEMA),
        (
            Port::Decisions,
            pipeline.decisions_topic(),
            SAMPLING_DECISION_SCHEMA,
        ),
        (Port::Lineage, pipeline.lineage_topic(), LINEAGE_EDGE_SCHEMA),
    ] {
        let Some(topic) = topic else {
            continue;
        };
        let subject = format!("{topic}-value");
        let id = client
            .register(&subject, schema)
            .map_err(|error| config_error(format!("registry: registering `{subject}`: {error}")))?;
        encoders[port.index()] = Some(
            AvroRecordEncoder::new(schema, id).map_err(|error| config_error(error.to_string()))?,
        );
    }
    Ok(encoders)
}

/// The repartition key of an event, if it has one.
pub fn repartition_key(key: RepartitionKey, event: &Envelope) -> Option<Vec<u8>> {
    match key {
        RepartitionKey::EventId => (!event.id.is_empty()).then(|| event.id.as_bytes().to_vec()),
        RepartitionKey::Subject => {
            (!event.subject.is_empty()).then(|| event.subject.as_bytes().to_vec())
        }
        RepartitionKey::TraceId => event.trace.map(|trace| trace.trace_id_hex().into_bytes()),
    }
}
