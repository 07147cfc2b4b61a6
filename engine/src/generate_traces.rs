//! A synthetic telemetry workload for the demo's tail-sampling pipeline: OTLP traces (one
//! `ExportTraceServiceRequest` per trace, keyed by its trace id in hex) with errors, slow ones,
//! health checks and plain ones, deterministic for a given seed.

use std::collections::HashMap;
use std::time::Duration;

use breadcrumb_schemas::otlp::builder::{self, ResourceSpans, Span, Value};
use breadcrumb_schemas::otlp::{trace_id_hex, TraceId, STATUS_ERROR, STATUS_OK, STATUS_UNSET};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

use crate::error::Result;

/// Shape of the telemetry workload.
#[derive(Debug, Clone)]
pub struct TraceWorkloadSpec {
    /// Real traces to produce (the clock traces come on top).
    pub traces: u64,
    /// Percentage of traces with a span whose status is ERROR.
    pub error_percent: f64,
    /// Percentage of traces whose root lasts longer than `slow_threshold_ms`.
    pub slow_percent: f64,
    /// Percentage of traces that are health checks (`http.route` under `/health`).
    pub health_percent: f64,
    /// The latency a slow trace's root exceeds (and every other trace stays below), ms.
    pub slow_threshold_ms: i64,
    /// Start of the first trace, ms since the epoch.
    pub start_time_ms: i64,
    /// Event time between the starts of consecutive traces, ms.
    pub time_step_ms: i64,
    /// How far after the last trace's start the clock traces are, ms: beyond every real trace's
    /// quiet period and maximum wait, so that every real trace completes in event time.
    pub clock_after_ms: i64,
    /// Partitions of the input topic: one clock trace goes to each.
    pub partitions: i32,
    pub seed: u64,
}

impl Default for TraceWorkloadSpec {
    fn default() -> Self {
        Self {
            traces: 2_000,
            error_percent: 10.0,
            slow_percent: 10.0,
            health_percent: 5.0,
            slow_threshold_ms: 1_000,
            start_time_ms: 1_790_000_000_000,
            time_step_ms: 20,
            clock_after_ms: 10 * 60 * 1_000,
            partitions: 4,
            seed: 11,
        }
    }
}

/// What a generated trace is, by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceKind {
    /// One span has status ERROR; the trace is otherwise plain.
    Error,
    /// The root lasts longer than the slow threshold; no error.
    Slow,
    /// A health check: `http.route` under `/health`, fast, no error.
    Health,
    /// Fast, no error, a business route.
    Plain,
    /// One span far later in event time, on an explicit partition, that moves the partition's
    /// event time past every real trace; it stays pending itself.
    Clock,
}

/// One generated trace: a whole Kafka record.
#[derive(Debug, Clone)]
pub struct GeneratedTrace {
    pub kind: TraceKind,
    pub trace_id: TraceId,
    pub span_ids: Vec<[u8; 8]>,
    /// Latest span end minus earliest span start, ms.
    pub duration_ms: i64,
    /// The trace id in lower-case hex.
    pub key: Vec<u8>,
    /// An `ExportTraceServiceRequest` holding every span of the trace.
    pub value: Vec<u8>,
    /// The partition to send to, for clock traces; others go by key.
    pub partition: Option<i32>,
}

/// The root's service; children are spread over the others.
const SERVICES: [&str; 5] = ["frontend", "checkout", "payments", "inventory", "postgres"];
const ROUTES: [(&str, &str); 4] = [
    ("POST", "/checkout"),
    ("GET", "/cart"),
    ("GET", "/orders/{id}"),
    ("GET", "/search"),
];
const HEALTH_ROUTES: [&str; 2] = ["/healthz", "/health/ready"];
const CHILD_OPERATIONS: [&str; 4] = ["call", "query", "reserve", "publish"];
const NANOS_PER_MS: u64 = 1_000_000;

/// Generates the traces in start order, then one clock trace per partition.
pub struct TraceWorkload {
    spec: TraceWorkloadSpec,
    rng: StdRng,
    produced: u64,
    clocks_produced: i32,
}

impl TraceWorkload {
    pub fn new(spec: TraceWorkloadSpec) -> Self {
        Self {
            rng: StdRng::seed_from_u64(spec.seed),
            produced: 0,
            clocks_produced: 0,
            spec,
        }
    }

    fn trace_id(&mut self) -> TraceId {
        let mut id = [0u8; 16];
        self.rng.fill(&mut id);
        // An all-zero trace id is invalid in OTLP.
        id[15] |= 1;
        id
    }

    fn span_id(&mut self) -> [u8; 8] {
        let mut id = [0u8; 8];
        self.rng.fill(&mut id);
        id[7] |= 1;
        id
    }

    fn kind(&mut self) -> TraceKind {
        let roll: f64 = self.rng.random_range(0.0..100.0);
        let error_bound = self.spec.error_percent;
        let slow_bound = error_bound + self.spec.slow_percent;
        let health_bound = slow_bound + self.spec.health_percent;
        if roll < error_bound {
            TraceKind::Error
        } else if roll < slow_bound {
            TraceKind::Slow
        } else if roll < health_bound {
            TraceKind::Health
        } else {
            TraceKind::Plain
        }
    }

    fn trace(&mut self, kind: TraceKind, start_ms: i64) -> GeneratedTrace {
        let threshold_ms = self.spec.slow_threshold_ms.max(2);
        let duration_ms = match kind {
            // Below the threshold by a margin, so only slow traces are slow.
            TraceKind::Error | TraceKind::Plain => {
                self.rng.random_range(15..=(threshold_ms * 4 / 5).max(16))
            }
            TraceKind::Health => self.rng.random_range(1..=(threshold_ms / 20).max(2)),
            TraceKind::Slow => self
                .rng
                .random_range(threshold_ms + threshold_ms / 5..=threshold_ms * 4),
            TraceKind::Clock => 1,
        };
        let span_count = match kind {
            TraceKind::Clock => 1,
            TraceKind::Health => self.rng.random_range(3..=4),
            _ => self.rng.random_range(3..=8usize),
        };
        let trace_id = self.trace_id();
        let start_ns = start_ms as u64 * NANOS_PER_MS;
        let duration_ns = duration_ms as u64 * NANOS_PER_MS;
        let (method, route) = match kind {
            TraceKind::Health => ("GET", HEALTH_ROUTES[self.rng.random_range(0..2)]),
            TraceKind::Clock => ("GET", "/clock"),
            _ => ROUTES[self.rng.random_range(0..ROUTES.len())],
        };
        let error_child = (kind == TraceKind::Error).then(|| self.rng.random_range(1..span_count));
        let mut spans: Vec<(usize, Span)> = Vec::with_capacity(span_count);
        let root_id = self.span_id();
        spans.push((
            0,
            Span {
                trace_id,
                span_id: root_id,
                parent_span_id: None,
                name: format!("{method} {route}"),
                start_time_unix_nano: start_ns,
                end_time_unix_nano: start_ns + duration_ns,
                status_code: if kind == TraceKind::Error {
                    STATUS_UNSET
                } else {
                    STATUS_OK
                },
                attributes: vec![
                    (
                        "http.request.method".to_owned(),
                        Value::Str(method.to_owned()),
                    ),
                    ("http.route".to_owned(), Value::Str(route.to_owned())),
                    (
                        "http.response.status_code".to_owned(),
                        Value::Int(if kind == TraceKind::Error { 500 } else { 200 }),
                    ),
                ],
            },
        ));
        for index in 1..span_count {
            let service = self.rng.random_range(1..SERVICES.len());
            let parent = spans[self.rng.random_range(0..index)].1.span_id;
            // Children lie within the root, so the trace lasts exactly as long as its root.
            let offset_ns = self.rng.random_range(0..duration_ns / 2 + 1);
            let length_ns = self.rng.random_range(1..=duration_ns - offset_ns);
            let errored = error_child == Some(index);
            let mut attributes = vec![(
                "peer.service".to_owned(),
                Value::Str(SERVICES[service].to_owned()),
            )];
            if errored {
                attributes.push((
                    "exception.type".to_owned(),
                    Value::Str("TimeoutError".to_owned()),
                ));
            }
            let span_id = self.span_id();
            spans.push((
                service,
                Span {
                    trace_id,
                    span_id,
                    parent_span_id: Some(parent),
                    name: format!(
                        "{} {}",
                        SERVICES[service],
                        CHILD_OPERATIONS[self.rng.random_range(0..CHILD_OPERATIONS.len())]
                    ),
                    start_time_unix_nano: start_ns + offset_ns,
                    end_time_unix_nano: start_ns + offset_ns + length_ns,
                    status_code: if errored { STATUS_ERROR } else { STATUS_UNSET },
                    attributes,
                },
            ));
        }
        let span_ids = spans.iter().map(|(_, span)| span.span_id).collect();
        // One ResourceSpans per service, as an SDK per process would export them.
        let resources: Vec<ResourceSpans> = SERVICES
            .iter()
            .enumerate()
            .filter_map(|(service, service_name)| {
                let service_spans: Vec<Span> = spans
                    .iter()
                    .filter(|(owner, _)| *owner == service)
                    .map(|(_, span)| span.clone())
                    .collect();
                (!service_spans.is_empty()).then(|| ResourceSpans {
                    resource: vec![
                        (
                            "service.name".to_owned(),
                            Value::Str(if kind == TraceKind::Clock {
                                "clock".to_owned()
                            } else {
                                (*service_name).to_owned()
                            }),
                        ),
                        (
                            "deployment.environment".to_owned(),
                            Value::Str("demo".to_owned()),
                        ),
                    ],
                    scope_name: "breadcrumb-demo".to_owned(),
                    spans: service_spans,
                })
            })
            .collect();
        let mut value = Vec::new();
        builder::encode_request(&resources, &mut value);
        GeneratedTrace {
            kind,
            trace_id,
            span_ids,
            duration_ms,
            key: trace_id_hex(&trace_id).to_vec(),
            value,
            partition: None,
        }
    }
}

impl Iterator for TraceWorkload {
    type Item = GeneratedTrace;

    fn next(&mut self) -> Option<GeneratedTrace> {
        if self.produced < self.spec.traces {
            let start_ms = self.spec.start_time_ms + self.produced as i64 * self.spec.time_step_ms;
            self.produced += 1;
            let kind = self.kind();
            return Some(self.trace(kind, start_ms));
        }
        if self.clocks_produced < self.spec.partitions {
            let last_start_ms = self.spec.start_time_ms
                + self.spec.traces.saturating_sub(1) as i64 * self.spec.time_step_ms;
            let mut clock = self.trace(TraceKind::Clock, last_start_ms + self.spec.clock_after_ms);
            clock.partition = Some(self.clocks_produced);
            self.clocks_produced += 1;
            return Some(clock);
        }
        None
    }
}

/// Counts of what was produced, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TraceCounts {
    pub error: u64,
    pub slow: u64,
    pub health: u64,
    pub plain: u64,
    pub clock: u64,
    /// Spans of the real traces (clock traces not included).
    pub spans: u64,
}

impl TraceCounts {
    /// Real traces (clock traces not included).
    pub fn traces(&self) -> u64 {
        self.error + self.slow + self.health + self.plain
    }

    /// Kafka records produced, clock traces included.
    pub fn records(&self) -> u64 {
        self.traces() + self.clock
    }
}

/// What the checks need to know of a produced trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedTrace {
    pub kind: TraceKind,
    pub trace_id: TraceId,
    pub span_ids: Vec<[u8; 8]>,
}

/// Everything produced: counts, and each trace by its id in hex.
#[derive(Debug, Default, Clone)]
pub struct TraceManifest {
    pub counts: TraceCounts,
    pub traces: HashMap<String, ProducedTrace>,
}

impl TraceManifest {
    fn record(&mut self, trace: &GeneratedTrace) {
        let counts = &mut self.counts;
        match trace.kind {
            TraceKind::Error => counts.error += 1,
            TraceKind::Slow => counts.slow += 1,
            TraceKind::Health => counts.health += 1,
            TraceKind::Plain => counts.plain += 1,
            TraceKind::Clock => counts.clock += 1,
        }
        if trace.kind != TraceKind::Clock {
            counts.spans += trace.span_ids.len() as u64;
        }
        self.traces.insert(
            String::from_utf8_lossy(&trace.key).into_owned(),
            ProducedTrace {
                kind: trace.kind,
                trace_id: trace.trace_id,
                span_ids: trace.span_ids.clone(),
            },
        );
    }
}

/// Produces the telemetry workload to `topic`; `on_progress` is called every thousand records.
pub fn produce(
    client_config: &ClientConfig,
    topic: &str,
    spec: TraceWorkloadSpec,
    mut on_progress: impl FnMut(u64),
) -> Result<TraceManifest> {
    let mut producer_config = client_config.clone();
    producer_config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    let producer: ThreadedProducer<DefaultProducerContext> = producer_config.create()?;
    let mut manifest = TraceManifest::default();
    for trace in TraceWorkload::new(spec) {
        manifest.record(&trace);
        let mut pending = BaseRecord::to(topic)
            .key(&trace.key[..])
            .payload(&trace.value[..]);
        if let Some(partition) = trace.partition {
            pending = pending.partition(partition);
        }
        crate::generate::send_when_queue_has_room(&producer, pending)?;
        let sent = manifest.counts.records();
        if sent.is_multiple_of(1_000) {
            on_progress(sent);
        }
    }
    producer.flush(Duration::from_secs(60))?;
    on_progress(manifest.counts.records());
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use breadcrumb_schemas::otlp::{attributes, parse_request, AttributeValue, Batch};

    #[test]
    fn traces_are_deterministic_and_each_kind_is_what_it_claims() {
        let spec = TraceWorkloadSpec {
            traces: 4_000,
            ..TraceWorkloadSpec::default()
        };
        let first: Vec<_> = TraceWorkload::new(spec.clone()).collect();
        let second: Vec<_> = TraceWorkload::new(spec.clone()).collect();
        assert_eq!(first.len(), 4_004);
        assert!(first
            .iter()
            .zip(&second)
            .all(|(a, b)| a.value == b.value && a.key == b.key));
        let count = |kind| first.iter().filter(|trace| trace.kind == kind).count();
        assert!((300..500).contains(&count(TraceKind::Error)));
        assert!((300..500).contains(&count(TraceKind::Slow)));
        assert!((120..280).contains(&count(TraceKind::Health)));
        assert_eq!(count(TraceKind::Clock), 4);

        let mut batch = Batch::default();
        let mut previous_start = 0;
        for trace in &first {
            parse_request(&trace.value, &mut batch).expect("a valid ExportTraceServiceRequest");
            assert_eq!(batch.spans.len(), trace.span_ids.len());
            if trace.kind == TraceKind::Clock {
                assert_eq!(batch.spans.len(), 1);
            } else {
                assert!((3..=8).contains(&batch.spans.len()));
            }
            assert!(batch
                .spans
                .iter()
                .all(|span| span.trace_id == trace.trace_id));
            assert_eq!(trace.key, trace_id_hex(&trace.trace_id).to_vec());
            let roots: Vec<_> = batch.spans.iter().filter(|span| !span.has_parent).collect();
            assert_eq!(roots.len(), 1);
            let root = roots[0];
            // Trace starts advance by the step; the clock traces lie far beyond.
            assert!(root.start_time_unix_nano >= previous_start);
            previous_start = root.start_time_unix_nano;
            let start = batch
                .spans
                .iter()
                .map(|span| span.start_time_unix_nano)
                .min();
            let end = batch.spans.iter().map(|span| span.end_time_unix_nano).max();
            assert_eq!(start, Some(root.start_time_unix_nano));
            assert_eq!(end, Some(root.end_time_unix_nano));
            let duration_ms =
                ((root.end_time_unix_nano - root.start_time_unix_nano) / NANOS_PER_MS) as i64;
            assert_eq!(duration_ms, trace.duration_ms);
            assert_eq!(
                duration_ms >= spec.slow_threshold_ms,
                trace.kind == TraceKind::Slow,
                "{:?} lasting {duration_ms} ms",
                trace.kind
            );
            let errors = batch
                .spans
                .iter()
                .filter(|span| span.status_code == STATUS_ERROR)
                .count();
            assert_eq!(errors, usize::from(trace.kind == TraceKind::Error));
            let route = attributes(&trace.value[root.content.clone()], 9)
                .find(|(key, _)| *key == "http.route")
                .map(|(_, value)| value);
            let Some(AttributeValue::Str(route)) = route else {
                panic!("root without http.route");
            };
            assert_eq!(
                route.starts_with("/health"),
                trace.kind == TraceKind::Health,
                "{route}"
            );
        }
        let clocks: Vec<_> = first.iter().filter_map(|trace| trace.partition).collect();
        assert_eq!(clocks, vec![0, 1, 2, 3]);
    }
}
