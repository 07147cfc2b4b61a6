use std::collections::HashSet;
use std::sync::Arc;

use breadcrumb_schemas::otlp::builder::{encode_request, ResourceSpans, Span, Value};
use breadcrumb_schemas::otlp::{parse_request, Batch, TraceId};
use breadcrumb_schemas::{Envelope, RawRecord};
use breadcrumb_state::{PartitionStore, StateBackend, StateOptions};
use tempfile::TempDir;

use super::policy::Policies;
use super::*;
use crate::operator::{Disposition, Operator, Port};
use crate::testing::{Emission, RecordingEmitter};

pub(super) const MS: u64 = 1_000_000;

/// Drives the operator like the engine: records by offset, commits, aborts and restarts that
/// replay input from the last commit; only outputs of committed transactions count.
pub(super) struct Harness {
    pub backend: StateBackend,
    pub operator: Sampling,
    pub config: SamplingConfig,
    pub encoding: OtlpEncoding,
    pub metrics: SamplingMetrics,
    pub lineage: Arc<dyn LineageReferences>,
    pub stores: Vec<PartitionStore>,
    pub inputs: Vec<Vec<u8>>,
    pub committed_offset: usize,
    pub uncommitted: Vec<Emission>,
    pub committed: Vec<Emission>,
    pub dispositions: Vec<Disposition>,
    /// Last, so RocksDB closes before its directory goes.
    _dir: TempDir,
}

impl Harness {
    pub fn new(config: SamplingConfig) -> Self {
        Self::with(config, OtlpEncoding::Proto, Arc::new(NoLineage))
    }

    pub fn with(
        config: SamplingConfig,
        encoding: OtlpEncoding,
        lineage: Arc<dyn LineageReferences>,
    ) -> Self {
        let errors = config.validate("test");
        assert!(errors.is_empty(), "{errors:?}");
        let dir = TempDir::new().unwrap();
        let metrics = SamplingMetrics::unregistered();
        let operator = Sampling::new("t", config.clone(), encoding, &metrics, lineage.clone());
        let names: Vec<String> = operator.stores().into_iter().map(|s| s.name).collect();
        let backend = StateBackend::open(dir.path(), &names, &StateOptions::default()).unwrap();
        let mut harness = Self {
            backend,
            operator,
            config,
            encoding,
            metrics,
            lineage,
            stores: Vec::new(),
            inputs: Vec::new(),
            committed_offset: 0,
            uncommitted: Vec::new(),
            committed: Vec::new(),
            dispositions: Vec::new(),
            _dir: dir,
        };
        harness.restart();
        harness
    }

    fn run(&mut self, offset: usize) -> Disposition {
        let record = RawRecord {
            topic: "spans",
            partition: 0,
            offset: offset as i64,
            timestamp_ms: None,
            key: None,
            value: Some(&self.inputs[offset]),
            headers: &[],
        };
        let mut out = RecordingEmitter::default();
        let disposition = self
            .operator
            .process(&record, &Envelope::default(), &mut self.stores, &mut out)
            .unwrap();
        self.uncommitted.extend(out.emitted);
        disposition
    }

    /// Processes a new record.
    pub fn feed(&mut self, value: Vec<u8>) -> Disposition {
        self.inputs.push(value);
        let disposition = self.run(self.inputs.len() - 1);
        self.dispositions.push(disposition);
        disposition
    }

    pub fn commit(&mut self) {
        self.operator
            .checkpoint(&mut self.stores, self.inputs.len() as i64 - 1)
            .unwrap();
        let mut batch = self.backend.commit_batch();
        self.stores[0].commit_into(&mut batch);
        batch.write().unwrap();
        self.committed.append(&mut self.uncommitted);
        self.committed_offset = self.inputs.len();
    }

    fn replay(&mut self) {
        for offset in self.committed_offset..self.inputs.len() {
            self.run(offset);
        }
    }

    /// The open transaction aborts; the engine rewinds and processes its records again.
    pub fn abort(&mut self) {
        self.stores[0].discard();
        self.uncommitted.clear();
        self.operator.abort_partition(&mut self.stores).unwrap();
        self.replay();
    }

    /// A crash: a new operator over the committed state, then the uncommitted input again.
    pub fn restart(&mut self) {
        self.uncommitted.clear();
        self.operator = Sampling::new(
            "t",
            self.config.clone(),
            self.encoding,
            &self.metrics,
            self.lineage.clone(),
        );
        let id = self.backend.store_id("t-sampling").unwrap();
        self.stores = vec![self.backend.partition_store(id, 0)];
        self.operator.open_partition(&mut self.stores).unwrap();
        self.replay();
    }

    /// Committed decision records, as JSON.
    pub fn decisions(&self) -> Vec<serde_json::Value> {
        self.committed
            .iter()
            .filter(|emission| emission.port == Port::Decisions)
            .map(|emission| {
                serde_json::from_slice(emission.record.as_ref().unwrap().value.as_ref().unwrap())
                    .unwrap()
            })
            .collect()
    }

    /// Committed sampled spans: (trace id, span id) of every span emitted on the main port.
    pub fn sampled_spans(&self) -> Vec<(TraceId, [u8; 8])> {
        let mut spans = Vec::new();
        let mut batch = Batch::default();
        for emission in &self.committed {
            if emission.port != Port::Main {
                continue;
            }
            let value = emission.record.as_ref().unwrap().value.as_ref().unwrap();
            parse_request(value, &mut batch).expect("sampled output is a valid request");
            for span in &batch.spans {
                spans.push((span.trace_id, span_id_of(&value[span.content.clone()])));
            }
        }
        spans
    }
}

/// The span id (field 2) of an encoded span.
pub(super) fn span_id_of(span: &[u8]) -> [u8; 8] {
    let mut reader = breadcrumb_schemas::otlp::WireReader::new(span);
    while let Some((field, value)) = reader.next_field().unwrap() {
        if field == 2 {
            return value.bytes().unwrap().try_into().unwrap();
        }
    }
    panic!("span without id")
}

pub(super) fn span(trace: u8, id: u8, parent: Option<u8>, start_ms: u64, end_ms: u64) -> Span {
    Span {
        trace_id: [trace; 16],
        span_id: [trace ^ 0x80, id, 0, 0, 0, 0, 0, 1],
        parent_span_id: parent.map(|parent| [trace ^ 0x80, parent, 0, 0, 0, 0, 0, 1]),
        name: format!("op-{id}"),
        start_time_unix_nano: start_ms * MS,
        end_time_unix_nano: end_ms * MS,
        status_code: 0,
        attributes: Vec::new(),
    }
}

pub(super) fn request(spans: Vec<Span>) -> Vec<u8> {
    request_with_resource(
        vec![("service.name".into(), Value::Str("checkout".into()))],
        spans,
    )
}

fn request_with_resource(resource: Vec<(String, Value)>, spans: Vec<Span>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request(
        &[ResourceSpans {
            resource,
            scope_name: "test".into(),
            spans,
        }],
        &mut out,
    );
    out
}

fn config(policies: Vec<PolicyConfig>) -> SamplingConfig {
    SamplingConfig {
        quiet_period_ms: 1_000,
        max_wait_ms: 10_000,
        ..SamplingConfig::with_policies(policies)
    }
}

fn always() -> PolicyConfig {
    PolicyConfig::AlwaysSample { name: "all".into() }
}

/// A span of another trace ending at `time_ms`: moves the partition's event time.
fn tick(time_ms: u64) -> Vec<u8> {
    request(vec![span(0xEE, 1, Some(0), time_ms, time_ms)])
}

fn decision_of(harness: &Harness, trace: u8) -> Option<serde_json::Value> {
    let hex = format!("{:02x}", trace).repeat(16);
    harness
        .decisions()
        .into_iter()
        .find(|decision| decision["trace_id"] == hex.as_str())
}

#[test]
fn a_trace_completes_after_its_quiet_period_and_is_emitted_whole() {
    let mut harness = Harness::new(config(vec![always()]));
    harness.feed(request(vec![
        span(1, 2, Some(1), 100, 200),
        span(2, 1, None, 0, 50),
    ]));
    harness.feed(request(vec![span(1, 1, None, 0, 300)]));
    harness.feed(tick(1_299));
    harness.commit();
    assert!(decision_of(&harness, 1).is_none(), "quiet period not over");
    assert_eq!(
        harness.operator.waiting(0).events,
        2,
        "trace 1 and the tick trace"
    );

    harness.feed(tick(1_300));
    harness.commit();
    let decision = decision_of(&harness, 1).unwrap();
    assert_eq!(decision["decision"], "keep");
    assert_eq!(decision["policy"], "all");
    assert_eq!(decision["completion"], "quiet_period");
    assert_eq!(decision["span_count"], 2);
    assert_eq!(decision["duration_ms"], 300);
    assert_eq!(decision["pipeline"], "t");
    // The decision records fit their Avro schema (`generated_records.format = "avro"`).
    let encoder = breadcrumb_schemas::encode::AvroRecordEncoder::new(
        breadcrumb_schemas::encode::SAMPLING_DECISION_SCHEMA,
        1,
    )
    .unwrap();
    for decision in harness.decisions() {
        let mut avro = Vec::new();
        encoder
            .encode_json(decision.to_string().as_bytes(), &mut avro)
            .unwrap_or_else(|problem| panic!("{decision}: {problem}"));
    }
    // Trace 2 (a root only, arrived at event time 200) completed first.
    assert_eq!(
        decision_of(&harness, 2).unwrap()["completion"],
        "quiet_period"
    );
    let spans: HashSet<_> = harness.sampled_spans().into_iter().collect();
    assert!(spans.contains(&([1; 16], [0x81, 1, 0, 0, 0, 0, 0, 1])));
    assert!(spans.contains(&([1; 16], [0x81, 2, 0, 0, 0, 0, 0, 1])));
    assert_eq!(
        harness.operator.waiting(0).events,
        1,
        "only the tick trace waits"
    );
}

#[test]
fn a_trace_without_root_completes_at_max_wait() {
    let mut harness = Harness::new(config(vec![always()]));
    harness.feed(request(vec![span(3, 2, Some(1), 0, 100)]));
    harness.feed(tick(10_099));
    harness.commit();
    assert!(decision_of(&harness, 3).is_none());
    harness.feed(tick(10_100));
    harness.commit();
    assert_eq!(decision_of(&harness, 3).unwrap()["completion"], "max_wait");
}

/// Runs one trace (its spans, one batch) through `policies` and returns (decision, policy).
fn decide(policies: Vec<PolicyConfig>, spans: Vec<Span>) -> (String, String) {
    decide_with(policies, request(spans), Arc::new(NoLineage))
}

fn decide_with(
    policies: Vec<PolicyConfig>,
    value: Vec<u8>,
    lineage: Arc<dyn LineageReferences>,
) -> (String, String) {
    let mut harness = Harness::with(config(policies), OtlpEncoding::Proto, lineage);
    assert_eq!(harness.feed(value), Disposition::Handled);
    harness.feed(request(vec![span(0xEE, 1, Some(0), 100_000, 100_000)]));
    harness.commit();
    let decision = decision_of(&harness, 1).expect("decided");
    (
        decision["decision"].as_str().unwrap().to_owned(),
        decision["policy"].as_str().unwrap().to_owned(),
    )
}

fn keep(policy: &str) -> (String, String) {
    ("keep".to_owned(), policy.to_owned())
}

fn dropped() -> (String, String) {
    ("drop".to_owned(), "none".to_owned())
}

fn with_status(mut span: Span, status_code: u8) -> Span {
    span.status_code = status_code;
    span
}

fn with_attribute(mut span: Span, key: &str, value: Value) -> Span {
    span.attributes.push((key.to_owned(), value));
    span
}

#[test]
fn status_code_policy_keeps_traces_with_a_matching_span() {
    let errors = || {
        vec![PolicyConfig::StatusCode {
            name: "errors".into(),
            status_codes: vec![StatusCodeName::Error],
        }]
    };
    let root = || span(1, 1, None, 0, 10);
    let child = |code| with_status(span(1, 2, Some(1), 1, 5), code);
    assert_eq!(decide(errors(), vec![root(), child(2)]), keep("errors"));
    assert_eq!(decide(errors(), vec![root(), child(1)]), dropped());
    let ok = vec![PolicyConfig::StatusCode {
        name: "ok".into(),
        status_codes: vec![StatusCodeName::Ok, StatusCodeName::Unset],
    }];
    assert_eq!(decide(ok, vec![root()]), keep("ok"));
}

#[test]
fn latency_policy_uses_threshold_and_upper_bound() {
    let slow = |upper| {
        vec![PolicyConfig::Latency {
            name: "slow".into(),
            threshold_ms: 500,
            upper_threshold_ms: upper,
        }]
    };
    // Duration spans the earliest start to the latest end across spans.
    let trace = |end| vec![span(1, 1, None, 100, 200), span(1, 2, Some(1), 150, end)];
    assert_eq!(decide(slow(None), trace(600)), keep("slow"));
    assert_eq!(decide(slow(None), trace(599)), dropped());
    assert_eq!(decide(slow(Some(1_000)), trace(1_099)), keep("slow"));
    assert_eq!(decide(slow(Some(1_000)), trace(1_100)), dropped());
}

#[test]
fn attribute_policies_match_exact_regex_range_and_invert() {
    let string = |values: Vec<&str>, regex, invert_match| {
        vec![PolicyConfig::StringAttribute {
            name: "route".into(),
            key: "http.route".into(),
            values: values.into_iter().map(str::to_owned).collect(),
            regex,
            invert_match,
        }]
    };
    let trace = |route: &str| {
        vec![
            span(1, 1, None, 0, 10),
            with_attribute(
                span(1, 2, Some(1), 0, 5),
                "http.route",
                Value::Str(route.into()),
            ),
        ]
    };
    assert_eq!(
        decide(string(vec!["/pay"], false, false), trace("/pay")),
        keep("route")
    );
    assert_eq!(
        decide(string(vec!["/pay"], false, false), trace("/payment")),
        dropped()
    );
    assert_eq!(
        decide(string(vec!["^/pay"], true, false), trace("/payment")),
        keep("route")
    );
    assert_eq!(
        decide(string(vec!["/pay"], false, true), trace("/pay")),
        dropped()
    );
    assert_eq!(
        decide(string(vec!["/pay"], false, true), trace("/health")),
        keep("route")
    );

    let numeric = |min, max, invert_match| {
        vec![PolicyConfig::NumericAttribute {
            name: "http5xx".into(),
            key: "http.status_code".into(),
            min_value: min,
            max_value: max,
            invert_match,
        }]
    };
    let status = |code| {
        vec![with_attribute(
            span(1, 1, None, 0, 10),
            "http.status_code",
            Value::Int(code),
        )]
    };
    assert_eq!(
        decide(numeric(Some(500.0), Some(599.0), false), status(503)),
        keep("http5xx")
    );
    assert_eq!(
        decide(numeric(Some(500.0), Some(599.0), false), status(404)),
        dropped()
    );
    assert_eq!(
        decide(numeric(Some(500.0), None, true), status(404)),
        keep("http5xx")
    );
    let ratio = vec![with_attribute(
        span(1, 1, None, 0, 10),
        "ratio",
        Value::Double(0.75),
    )];
    let ratio_policy = vec![PolicyConfig::NumericAttribute {
        name: "ratio".into(),
        key: "ratio".into(),
        min_value: None,
        max_value: Some(0.8),
        invert_match: false,
    }];
    assert_eq!(decide(ratio_policy, ratio), keep("ratio"));

    let boolean = |value| {
        vec![PolicyConfig::BooleanAttribute {
            name: "debug".into(),
            key: "debug".into(),
            value,
            invert_match: false,
        }]
    };
    let flagged = || {
        vec![with_attribute(
            span(1, 1, None, 0, 10),
            "debug",
            Value::Bool(true),
        )]
    };
    assert_eq!(decide(boolean(true), flagged()), keep("debug"));
    assert_eq!(decide(boolean(false), flagged()), dropped());

    // Resource attributes count like span attributes.
    let tenant = vec![PolicyConfig::StringAttribute {
        name: "checkout".into(),
        key: "service.name".into(),
        values: vec!["checkout".into()],
        regex: false,
        invert_match: false,
    }];
    assert_eq!(
        decide(tenant, vec![span(1, 1, None, 0, 10)]),
        keep("checkout")
    );
}

#[test]
fn probabilistic_policy_is_a_stable_function_of_trace_id_and_salt() {
    let policy = |percentage: f64, salt: &str| {
        Policies::compile(
            &[PolicyConfig::Probabilistic {
                name: "p".into(),
                sampling_percentage: percentage,
                hash_salt: salt.into(),
            }],
            Arc::new(NoLineage),
        )
    };
    let summary = TraceSummary::new(0);
    let kept = |policies: &Policies, trace: u32| {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&trace.to_be_bytes());
        id[15] = 1;
        policies
            .decide(
                &policy::Subject {
                    trace_id: &id,
                    summary: &summary,
                    now_ms: 0,
                },
                &mut [],
            )
            .keep
    };
    let quarter = policy(25.0, "a");
    let first: Vec<bool> = (0..4_000).map(|trace| kept(&quarter, trace)).collect();
    let again: Vec<bool> = (0..4_000)
        .map(|trace| kept(&policy(25.0, "a"), trace))
        .collect();
    assert_eq!(first, again, "same trace, same answer");
    let share = first.iter().filter(|kept| **kept).count();
    assert!(
        (800..1_200).contains(&share),
        "about a quarter kept: {share}"
    );
    let salted: Vec<bool> = (0..4_000)
        .map(|trace| kept(&policy(25.0, "b"), trace))
        .collect();
    assert_ne!(first, salted, "another salt picks another subset");
    assert!((0..1_000).all(|trace| kept(&policy(100.0, ""), trace)));
    assert!((0..1_000).all(|trace| !kept(&policy(0.0, ""), trace)));
}

#[test]
fn rate_limiting_counts_kept_spans_per_second_of_event_time() {
    let mut harness = Harness::new(config(vec![PolicyConfig::RateLimiting {
        name: "rate".into(),
        spans_per_second: 3,
    }]));
    // Five two-span traces decided in the same second of event time: only the first fits...
    for trace in 1..=5u8 {
        harness.feed(request(vec![
            span(trace, 1, None, 0, 10),
            span(trace, 2, Some(1), 0, 10),
        ]));
    }
    harness.feed(tick(5_000));
    // ...and in the next second the budget is fresh.
    harness.feed(request(vec![span(6, 1, None, 5_000, 5_010)]));
    harness.feed(request(vec![
        span(7, 1, None, 5_000, 5_010),
        span(7, 2, Some(1), 5_000, 5_010),
    ]));
    harness.feed(tick(7_500));
    harness.commit();
    let decided: Vec<String> = (1..=7)
        .map(|trace| {
            decision_of(&harness, trace).unwrap()["decision"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        decided,
        ["keep", "drop", "drop", "drop", "drop", "keep", "keep"]
    );
}

#[test]
fn span_count_and_and_and_drop_policies_compose() {
    let count = |min, max| PolicyConfig::SpanCount {
        name: "count".into(),
        min_spans: min,
        max_spans: max,
    };
    let three = || {
        vec![
            span(1, 1, None, 0, 10),
            span(1, 2, Some(1), 0, 5),
            with_status(span(1, 3, Some(1), 0, 5), 2),
        ]
    };
    assert_eq!(decide(vec![count(3, None)], three()), keep("count"));
    assert_eq!(decide(vec![count(1, Some(2))], three()), dropped());

    let errors = || PolicyConfig::StatusCode {
        name: "errors".into(),
        status_codes: vec![StatusCodeName::Error],
    };
    let both = |min| {
        vec![PolicyConfig::And {
            name: "both".into(),
            policies: vec![errors(), count(min, None)],
        }]
    };
    assert_eq!(decide(both(3), three()), keep("both"));
    assert_eq!(decide(both(4), three()), dropped());

    // A matching drop policy wins over a keeping one, wherever it is listed.
    let drop_big = |min| PolicyConfig::Drop {
        name: "no-big".into(),
        policies: vec![count(min, None)],
    };
    assert_eq!(
        decide(vec![always(), drop_big(3)], three()),
        ("drop".to_owned(), "no-big".to_owned())
    );
    assert_eq!(decide(vec![always(), drop_big(4)], three()), keep("all"));
}

#[test]
fn composite_policy_shares_its_rate_between_sub_policies() {
    let composite = PolicyConfig::Composite {
        name: "mix".into(),
        max_total_spans_per_second: 10,
        policies: vec![
            PolicyConfig::StatusCode {
                name: "errors".into(),
                status_codes: vec![StatusCodeName::Error],
            },
            always(),
        ],
        rate_allocation: vec![
            RateAllocation {
                policy: "errors".into(),
                percent: 60,
            },
            RateAllocation {
                policy: "all".into(),
                percent: 40,
            },
        ],
    };
    let mut harness = Harness::new(config(vec![composite]));
    // Error traces of 3 spans: two fit the 6-span share of `errors`; the third falls through to
    // `all` (4 spans), which then has no room for another 3.
    for trace in 1..=4u8 {
        harness.feed(request(vec![
            span(trace, 1, None, 0, 10),
            span(trace, 2, Some(1), 0, 5),
            with_status(span(trace, 3, Some(1), 0, 5), 2),
        ]));
    }
    harness.feed(tick(5_000));
    harness.commit();
    let decided: Vec<(String, String)> = (1..=4)
        .map(|trace| {
            let decision = decision_of(&harness, trace).unwrap();
            (
                decision["decision"].as_str().unwrap().to_owned(),
                decision["policy"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        decided,
        vec![
            keep("mix/errors"),
            keep("mix/errors"),
            keep("mix/all"),
            dropped()
        ]
    );
}

struct HandMade(Vec<(TraceId, &'static str)>);

impl LineageReferences for HandMade {
    fn references(&self, trace_id: &TraceId, event_type: &str) -> bool {
        self.0
            .iter()
            .any(|(id, kind)| id == trace_id && *kind == event_type)
    }
}

#[test]
fn lineage_policy_keeps_traces_referenced_by_business_events_of_its_types() {
    let policy = || {
        vec![PolicyConfig::Lineage {
            name: "refunds".into(),
            event_types: vec!["payment.refunded".into()],
        }]
    };
    let trace = || request(vec![span(1, 1, None, 0, 10)]);
    let referenced = Arc::new(HandMade(vec![([1; 16], "payment.refunded")]));
    assert_eq!(decide_with(policy(), trace(), referenced), keep("refunds"));
    let other_type = Arc::new(HandMade(vec![([1; 16], "payment.created")]));
    assert_eq!(decide_with(policy(), trace(), other_type), dropped());
    assert_eq!(
        decide_with(policy(), trace(), Arc::new(NoLineage)),
        dropped()
    );
}

#[test]
fn late_spans_follow_the_decision() {
    let mut harness = Harness::new(config(vec![PolicyConfig::StatusCode {
        name: "errors".into(),
        status_codes: vec![StatusCodeName::Error],
    }]));
    harness.feed(request(vec![
        with_status(span(1, 1, None, 0, 10), 2),
        span(2, 1, None, 0, 10),
    ]));
    harness.feed(tick(2_000));
    harness.feed(request(vec![
        span(1, 2, Some(1), 0, 5),
        span(2, 2, Some(1), 0, 5),
    ]));
    harness.commit();
    assert_eq!(decision_of(&harness, 1).unwrap()["decision"], "keep");
    assert_eq!(decision_of(&harness, 2).unwrap()["decision"], "drop");
    let late: Vec<_> = harness
        .committed
        .iter()
        .filter(|emission| {
            emission
                .headers
                .iter()
                .any(|(name, _)| *name == SAMPLING_LATE_HEADER)
        })
        .collect();
    assert_eq!(late.len(), 1, "only the kept trace's late span is emitted");
    let spans = harness.sampled_spans();
    assert_eq!(
        spans.iter().filter(|(trace, _)| *trace == [1; 16]).count(),
        2
    );
    assert!(spans.iter().all(|(trace, _)| *trace != [2; 16]));
    let late_spans = |outcome: &str| {
        harness
            .metrics
            .late_spans
            .with_label_values(&["t", outcome])
            .get()
    };
    assert_eq!((late_spans("kept"), late_spans("dropped")), (1, 1));
    assert_eq!(
        harness
            .metrics
            .decisions
            .with_label_values(&["t", "errors", "keep"])
            .get(),
        1
    );
}

#[test]
fn a_full_buffer_forces_the_oldest_trace_to_a_decision() {
    for (overflow, expected) in [
        (OverflowPolicy::DecideOldest, keep("all")),
        (
            OverflowPolicy::DropOldest,
            ("drop".to_owned(), "overflow".to_owned()),
        ),
    ] {
        let mut harness = Harness::new(SamplingConfig {
            max_pending_traces_per_partition: 2,
            overflow,
            ..config(vec![always()])
        });
        for trace in 1..=3u8 {
            harness.feed(request(vec![span(trace, 2, Some(1), 0, 10)]));
        }
        harness.commit();
        let decision = decision_of(&harness, 1).expect("the oldest is forced");
        assert_eq!(decision["completion"], "forced");
        assert_eq!(
            (
                decision["decision"].as_str().unwrap().to_owned(),
                decision["policy"].as_str().unwrap().to_owned()
            ),
            expected
        );
        assert!(decision_of(&harness, 2).is_none());
        assert_eq!(harness.operator.waiting(0).events, 2);
    }

    let mut harness = Harness::new(SamplingConfig {
        max_buffered_bytes_per_partition: 300,
        ..config(vec![always()])
    });
    for trace in 1..=5u8 {
        harness.feed(request(vec![span(trace, 2, Some(1), 0, 10)]));
        assert!(harness.operator.waiting(0).bytes <= 300);
    }
    harness.commit();
    assert!(harness
        .decisions()
        .iter()
        .all(|d| d["completion"] == "forced"));
    assert!(!harness.decisions().is_empty());
}

#[test]
fn pending_traces_and_decisions_survive_restarts_and_aborts() {
    let mut harness = Harness::new(config(vec![always()]));
    harness.feed(request(vec![
        span(1, 2, Some(1), 0, 10),
        span(2, 1, None, 0, 10),
    ]));
    harness.commit();
    harness.feed(request(vec![span(1, 3, Some(1), 0, 20)]));
    harness.commit();
    harness.feed(request(vec![span(1, 1, None, 0, 30)]));
    // Crash with the root's batch uncommitted: it is replayed after the restart.
    harness.restart();
    assert_eq!(harness.operator.waiting(0).events, 2);
    harness.feed(tick(5_000));
    harness.abort();
    harness.commit();
    let mut spans = harness.sampled_spans();
    spans.sort();
    let ids: Vec<u8> = spans
        .iter()
        .filter(|(trace, _)| *trace == [1; 16])
        .map(|(_, id)| id[1])
        .collect();
    assert_eq!(
        ids,
        vec![1, 2, 3],
        "every span once, across fragments and the restart"
    );
    assert_eq!(harness.decisions().len(), 2);
    // The decision itself is state: a late span after a restart still follows it.
    harness.restart();
    harness.feed(request(vec![span(1, 4, Some(1), 0, 40)]));
    harness.commit();
    assert_eq!(
        harness
            .sampled_spans()
            .iter()
            .filter(|(trace, _)| *trace == [1; 16])
            .count(),
        4
    );
    assert_eq!(harness.decisions().len(), 2);
}

#[test]
fn bad_batches_are_rejected_before_touching_state() {
    let mut harness = Harness::new(config(vec![always()]));
    let mut truncated = request(vec![span(1, 1, None, 0, 10)]);
    truncated.pop();
    assert!(matches!(
        harness.feed(truncated),
        Disposition::Rejected {
            reason: "invalid_protobuf",
            ..
        }
    ));
    assert!(matches!(
        harness.feed(request(vec![span(0, 1, None, 0, 10)])),
        Disposition::Rejected {
            reason: "invalid_field",
            ..
        }
    ));
    assert_eq!(harness.operator.waiting(0).events, 0);
}

#[test]
fn otlp_json_batches_are_sampled_like_protobuf_ones() {
    let mut harness = Harness::with(
        config(vec![always()]),
        OtlpEncoding::Json,
        Arc::new(NoLineage),
    );
    let batch = br#"{"resourceSpans":[{"resource":{"attributes":[]},"scopeSpans":[{"spans":[
        {"traceId":"01010101010101010101010101010101","spanId":"0000000000000001","name":"root",
         "startTimeUnixNano":"0","endTimeUnixNano":"10000000"}]}]}]}"#;
    assert_eq!(harness.feed(batch.to_vec()), Disposition::Handled);
    let later = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[
        {"traceId":"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee","spanId":"0000000000000002","parentSpanId":"0000000000000003",
         "startTimeUnixNano":"5000000000","endTimeUnixNano":"5000000000"}]}]}]}"#;
    harness.feed(later.to_vec());
    assert!(matches!(
        harness.feed(b"{not json".to_vec()),
        Disposition::Rejected {
            reason: "invalid_json",
            ..
        }
    ));
    harness.commit();
    assert_eq!(decision_of(&harness, 1).unwrap()["decision"], "keep");
    assert_eq!(
        harness.sampled_spans(),
        vec![([1; 16], [0, 0, 0, 0, 0, 0, 0, 1])]
    );
}

fn lookup_trace(harness: &mut Harness, trace: u8) -> Option<serde_json::Value> {
    harness
        .operator
        .lookup(
            &mut harness.stores,
            &crate::Lookup::SamplingTrace {
                trace_id: [trace; 16],
            },
        )
        .unwrap()
}

#[test]
fn lookup_answers_pending_then_the_decision_with_its_policy_until_it_expires() {
    let mut harness = Harness::new(SamplingConfig {
        decision_ttl_ms: 5_000,
        ..config(vec![always()])
    });
    assert!(harness.operator.answers(crate::LookupKind::SamplingTrace));
    assert!(!harness.operator.answers(crate::LookupKind::DedupeKey));
    assert_eq!(lookup_trace(&mut harness, 1), None, "never seen");

    harness.feed(request(vec![span(1, 1, None, 0, 300)]));
    let pending = lookup_trace(&mut harness, 1).unwrap();
    assert_eq!(pending["decision"], "pending");
    assert_eq!(pending["trace_id"], "01".repeat(16));
    assert_eq!(pending["span_count"], 1);
    assert_eq!(pending["deadline_ms"], 1_300);
    assert_eq!(pending["root_seen"], true);

    harness.feed(tick(1_300));
    // Decided in the open transaction: the lookup reads through the overlay.
    let decided = lookup_trace(&mut harness, 1).unwrap();
    assert_eq!(decided["decision"], "keep");
    assert_eq!(decided["policy"], "all");
    assert_eq!(decided["completion"], "quiet_period");
    assert_eq!(decided["decided_at_ms"], 1_300);
    assert_eq!(decided["expires_at_ms"], 6_300);
    harness.commit();
    harness.restart();
    assert_eq!(
        lookup_trace(&mut harness, 1).unwrap(),
        decided,
        "from the store"
    );

    // Looking up changed nothing: the same commit as without it.
    let before = harness.committed.len();
    harness.feed(tick(6_299));
    harness.commit();
    assert_eq!(harness.committed.len(), before);
    assert_eq!(lookup_trace(&mut harness, 1).unwrap()["decision"], "keep");
    harness.feed(tick(6_300));
    assert_eq!(lookup_trace(&mut harness, 1), None, "the decision expired");

    let other = harness
        .operator
        .lookup(&mut harness.stores, &crate::Lookup::DedupeKey { key: "x" })
        .unwrap();
    assert_eq!(other, None);
}
