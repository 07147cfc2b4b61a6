use breadcrumb_schemas::{Envelope, RawRecord, TraceContext};
use breadcrumb_state::{PartitionStore, StateBackend, StateOptions};
use tempfile::TempDir;

use super::*;
use crate::operator::{Disposition, Operator, Port};
use crate::testing::RecordingEmitter;

/// One input: a business event or a span.
#[derive(Debug, Clone)]
pub(super) enum Input {
    Event {
        id: String,
        /// `(trace, producing span)`.
        trace: Option<(u8, u8)>,
        causation: Option<String>,
        time_ms: i64,
    },
    Span {
        trace: u8,
        span: u8,
        parent: Option<u8>,
        service: String,
        time_ms: i64,
    },
}

pub(super) fn trace_id(trace: u8) -> [u8; 16] {
    let mut id = [0x11; 16];
    id[15] = trace;
    id
}

pub(super) fn span_id(span: u8) -> [u8; 8] {
    let mut id = [0x22; 8];
    id[7] = span;
    id
}

pub(super) fn event(
    id: &str,
    trace: Option<(u8, u8)>,
    causation: Option<&str>,
    time_ms: i64,
) -> Input {
    Input::Event {
        id: id.to_owned(),
        trace,
        causation: causation.map(str::to_owned),
        time_ms,
    }
}

pub(super) fn span(trace: u8, span: u8, parent: Option<u8>, service: &str, time_ms: i64) -> Input {
    Input::Span {
        trace,
        span,
        parent,
        service: service.to_owned(),
        time_ms,
    }
}

/// What an edge said, readably.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct EdgeSeen {
    pub event_id: String,
    pub kind: String,
    pub orphan: Option<String>,
    pub service: Option<String>,
    pub operation: Option<String>,
    pub root_service: Option<String>,
    pub parent: Option<String>,
    pub ancestors: Vec<String>,
}

/// Everything emitted, split: event ids released on main (with their headers), edges, repeats.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    pub released: Vec<(String, Vec<(String, String)>)>,
    pub edges: Vec<EdgeSeen>,
    pub repeats: Vec<String>,
}

pub(super) struct Harness {
    backend: StateBackend,
    pub operator: Lineage,
    config: LineageConfig,
    stores: Vec<PartitionStore>,
    pub offset: i64,
    _dir: TempDir,
}

impl Harness {
    pub fn new(config: LineageConfig) -> Self {
        assert!(
            config.validate("t").is_empty(),
            "{:?}",
            config.validate("t")
        );
        let dir = TempDir::new().unwrap();
        let operator = Lineage::new("orders", config.clone(), LineageMetrics::unregistered());
        let names: Vec<String> = operator.stores().into_iter().map(|s| s.name).collect();
        let backend = StateBackend::open(dir.path(), &names, &StateOptions::default()).unwrap();
        let mut harness = Self {
            _dir: dir,
            stores: Vec::new(),
            backend,
            operator,
            config,
            offset: 0,
        };
        harness.reopen();
        harness
    }

    /// A new operator over the committed state (a crash and restart): hot state and overlay gone.
    pub fn reopen(&mut self) {
        self.operator = Lineage::new(
            "orders",
            self.config.clone(),
            LineageMetrics::unregistered(),
        );
        let id = self.backend.store_id("orders-lineage").unwrap();
        self.stores = vec![self.backend.partition_store(id, 0)];
        self.operator.open_partition(&mut self.stores).unwrap();
    }

    pub fn commit(&mut self) {
        self.operator
            .checkpoint(&mut self.stores, self.offset - 1)
            .unwrap();
        let mut batch = self.backend.commit_batch();
        self.stores[0].commit_into(&mut batch);
        batch.write().unwrap();
    }

    pub fn feed(&mut self, input: &Input, seen: &mut Seen) {
        let mut out = RecordingEmitter::default();
        match input {
            Input::Event {
                id,
                trace,
                causation,
                time_ms,
            } => {
                let value = id.clone();
                let headers: [(&str, Option<&[u8]>); 1] = [("upstream", Some(b"kept"))];
                let record = RawRecord {
                    topic: "events",
                    partition: 0,
                    offset: self.offset,
                    timestamp_ms: Some(*time_ms),
                    key: None,
                    value: Some(value.as_bytes()),
                    headers: &headers,
                };
                let envelope = Envelope {
                    id: id.clone(),
                    event_type: format!("type-of-{id}"),
                    source: "shop".into(),
                    event_time_ms: *time_ms,
                    trace: trace.map(|(trace, span)| TraceContext {
                        trace_id: trace_id(trace),
                        span_id: span_id(span),
                        flags: 1,
                    }),
                    causation_id: causation.clone().unwrap_or_default(),
                    ..Envelope::default()
                };
                let disposition = self
                    .operator
                    .process(&record, &envelope, &mut self.stores, &mut out)
                    .unwrap();
                assert_eq!(disposition, Disposition::Handled);
                // The current record is the event itself.
                collect(&out, Some(id), seen);
            }
            Input::Span {
                trace,
                span,
                parent,
                service,
                time_ms,
            } => {
                let operation = format!("op-{span}");
                let span = Span {
                    trace_id: trace_id(*trace),
                    span_id: span_id(*span),
                    parent_span_id: parent.map(span_id),
                    service,
                    operation: &operation,
                    start_time_ms: time_ms - 1,
                    end_time_ms: *time_ms,
                };
                self.operator
                    .process_span(&span, &mut self.stores, &mut out)
                    .unwrap();
                collect(&out, None, seen);
            }
        }
        self.offset += 1;
    }

    pub fn run(&mut self, inputs: &[Input]) -> Seen {
        let mut seen = Seen::default();
        for input in inputs {
            self.feed(input, &mut seen);
        }
        seen
    }

    pub fn waiting(&self) -> crate::Waiting {
        self.operator.waiting(0)
    }

    pub fn query(&mut self, id: &str, depth: usize) -> Option<Vec<LineageEntry>> {
        self.operator.query(&mut self.stores, id, depth).unwrap()
    }
}

fn text(value: &serde_json::Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

fn collect(out: &RecordingEmitter, current: Option<&String>, seen: &mut Seen) {
    for emission in &out.emitted {
        let id = match &emission.record {
            None => current.expect("only events are emitted as current").clone(),
            Some(record) => String::from_utf8(record.value.clone().unwrap()).unwrap(),
        };
        match emission.port {
            Port::Main => {
                if let Some(record) = &emission.record {
                    assert!(record.headers.iter().any(|(name, value)| name == "upstream"
                        && value.as_deref() == Some(&b"kept"[..])));
                }
                let headers = emission
                    .headers
                    .iter()
                    .map(|(name, value)| {
                        (name.to_string(), String::from_utf8(value.clone()).unwrap())
                    })
                    .collect();
                seen.released.push((id, headers));
            }
            Port::Lineage => {
                let record = emission.record.as_ref().unwrap();
                let edge: serde_json::Value =
                    serde_json::from_slice(record.value.as_ref().unwrap()).unwrap();
                assert_eq!(
                    record.key.as_deref(),
                    edge["event_id"].as_str().map(str::as_bytes)
                );
                // Parent edges repeat the event's span fields; span edges are where they are checked.
                let span_field = |name: &str| {
                    if edge["edge_kind"] == "span" {
                        text(&edge[name])
                    } else {
                        None
                    }
                };
                seen.edges.push(EdgeSeen {
                    event_id: text(&edge["event_id"]).unwrap(),
                    kind: text(&edge["edge_kind"]).unwrap(),
                    orphan: text(&edge["orphan_reason"]),
                    service: span_field("service"),
                    operation: span_field("operation"),
                    root_service: span_field("root_service"),
                    parent: text(&edge["parent_event_id"]),
                    ancestors: edge["ancestor_event_ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|id| text(id).unwrap())
                        .collect(),
                });
            }
            Port::Duplicates => seen.repeats.push(id),
            other => panic!("unexpected port {other:?}"),
        }
    }
}

fn edge(event_id: &str, kind: &str) -> EdgeSeen {
    EdgeSeen {
        event_id: event_id.into(),
        kind: kind.into(),
        orphan: None,
        service: None,
        operation: None,
        root_service: None,
        parent: None,
        ancestors: Vec::new(),
    }
}

fn joined_span(
    event_id: &str,
    service: &str,
    span: u8,
    root: &str,
    parent: Option<&str>,
) -> EdgeSeen {
    EdgeSeen {
        service: Some(service.into()),
        operation: Some(format!("op-{span}")),
        root_service: Some(root.into()),
        parent: parent.map(Into::into),
        ..edge(event_id, "span")
    }
}

fn parent_edge(event_id: &str, ancestors: &[&str]) -> EdgeSeen {
    EdgeSeen {
        parent: Some(ancestors[0].into()),
        ancestors: ancestors.iter().map(|id| id.to_string()).collect(),
        ..edge(event_id, "parent")
    }
}

const WINDOW_MS: i64 = 10_000;

fn config() -> LineageConfig {
    LineageConfig {
        join_window_ms: WINDOW_MS,
        event_ttl_ms: 100 * WINDOW_MS,
        ..LineageConfig::default()
    }
}

/// The demo's chain: order → payment → invoice, one trace, spans exported after the events.
fn chain() -> Vec<Input> {
    vec![
        event("order-1", Some((1, 2)), None, 1_000),
        event("payment-1", Some((1, 3)), Some("order-1"), 1_100),
        event("invoice-1", Some((1, 4)), Some("payment-1"), 1_200),
        span(1, 2, Some(1), "orders", 1_050),
        span(1, 3, Some(2), "payments", 1_150),
        span(1, 4, Some(3), "billing", 1_250),
        span(1, 1, None, "gateway", 1_300),
    ]
}

#[test]
fn a_chain_is_joined_to_its_spans_root_and_parents_when_the_root_span_arrives() {
    let mut harness = Harness::new(config());
    let seen = harness.run(&chain()[..6]);
    assert!(
        seen.released.is_empty() && seen.edges.is_empty(),
        "{seen:?}"
    );
    assert_eq!(harness.waiting().events, 3);

    let seen = harness.run(&chain()[6..]);
    let released: Vec<&str> = seen.released.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(released, ["order-1", "payment-1", "invoice-1"]);
    let headers: Vec<(String, String)> = seen.released[2].1.clone();
    assert_eq!(
        headers,
        vec![
            (LINEAGE_TRACE_ID_HEADER.into(), "11".repeat(15) + "01"),
            (LINEAGE_SERVICE_HEADER.into(), "billing".into()),
            (LINEAGE_ROOT_SERVICE_HEADER.into(), "gateway".into()),
            (LINEAGE_PARENT_EVENT_HEADER.into(), "payment-1".into()),
        ]
    );
    assert_eq!(
        seen.edges,
        vec![
            joined_span("order-1", "orders", 2, "gateway", None),
            joined_span("payment-1", "payments", 3, "gateway", Some("order-1")),
            parent_edge("payment-1", &["order-1"]),
            joined_span("invoice-1", "billing", 4, "gateway", Some("payment-1")),
            parent_edge("invoice-1", &["payment-1", "order-1"]),
        ]
    );
    assert_eq!(harness.waiting().events, 0);

    // The query answers the chain from hot state, then (after a commit and restart) the store.
    for restart in [false, true] {
        if restart {
            harness.commit();
            harness.reopen();
        }
        let answer = harness.query("invoice-1", 5).unwrap();
        let ids: Vec<&str> = answer.iter().map(|entry| &*entry.event_id).collect();
        assert_eq!(ids, ["invoice-1", "payment-1", "order-1"]);
        assert_eq!(answer[0].node.span.root_service.as_deref(), Some("gateway"));
        assert_eq!(harness.query("invoice-1", 1).unwrap().len(), 2);
        assert!(harness.query("nope", 5).is_none());
    }
}

#[test]
fn events_arriving_after_their_spans_leave_at_once() {
    let mut harness = Harness::new(config());
    let mut inputs = chain()[3..].to_vec();
    inputs.extend_from_slice(&chain()[..3]);
    let mut seen = Seen::default();
    for input in &inputs {
        let before = seen.released.len();
        harness.feed(input, &mut seen);
        if matches!(input, Input::Event { .. }) {
            assert_eq!(seen.released.len(), before + 1, "released on arrival");
        }
    }
    assert_eq!(seen.edges.len(), 5);
    assert!(seen.edges.iter().all(|edge| edge.orphan.is_none()));
}

#[test]
fn every_missing_link_becomes_an_orphan_edge_with_its_reason() {
    let mut harness = Harness::new(config());
    let inputs = vec![
        event("no-trace", None, None, 1_000),
        event("lost-trace", Some((7, 1)), None, 1_000),
        event("lost-span", Some((1, 9)), None, 1_000),
        event("lost-root", Some((2, 3)), None, 1_000),
        event("lost-parent", Some((1, 2)), Some("never"), 1_000),
        span(1, 1, None, "gateway", 1_000),
        span(1, 2, Some(1), "orders", 1_000),
        span(2, 3, Some(1), "payments", 1_000),
    ];
    let seen = harness.run(&inputs);
    // Only the event without a trace context is decided on arrival.
    assert_eq!(seen.released.len(), 1);
    assert_eq!(
        seen.edges,
        vec![EdgeSeen {
            orphan: Some("no_trace_context".into()),
            ..edge("no-trace", "span")
        }]
    );
    assert_eq!(harness.waiting().events, 4);
    // Nothing moves until the window passed in stream time.
    let seen = harness.run(&[span(9, 1, None, "clock", 1_000 + WINDOW_MS - 1)]);
    assert!(seen.edges.is_empty());
    let seen = harness.run(&[span(9, 2, None, "clock", 1_000 + WINDOW_MS)]);
    let released: Vec<&str> = seen.released.iter().map(|(id, _)| id.as_str()).collect();
    // Deadline order, then id order.
    assert_eq!(
        released,
        ["lost-parent", "lost-root", "lost-span", "lost-trace"]
    );
    assert_eq!(
        seen.edges,
        vec![
            joined_span("lost-parent", "orders", 2, "gateway", Some("never")),
            EdgeSeen {
                parent: Some("never".into()),
                orphan: Some("parent_event_not_seen".into()),
                ..edge("lost-parent", "parent")
            },
            EdgeSeen {
                orphan: Some("root_span_not_seen".into()),
                service: Some("payments".into()),
                operation: Some("op-3".into()),
                ..edge("lost-root", "span")
            },
            EdgeSeen {
                orphan: Some("span_not_seen".into()),
                root_service: Some("gateway".into()),
                ..edge("lost-span", "span")
            },
            EdgeSeen {
                orphan: Some("trace_not_seen".into()),
                ..edge("lost-trace", "span")
            },
        ]
    );
    let metrics = &harness.operator.metrics();
    assert_eq!(metrics.orphans[OrphanReason::TraceNotSeen.index()].get(), 1);
    assert_eq!(
        metrics.orphans[OrphanReason::ParentEventNotSeen.index()].get(),
        1
    );
    assert_eq!(metrics.edges[0].get(), 5);
}

#[test]
fn held_events_survive_a_restart_and_uncommitted_work_is_replayed() {
    let mut harness = Harness::new(config());
    let inputs = chain();
    harness.run(&inputs[..4]);
    harness.commit();
    // Processed but never committed: lost in the crash, replayed after it.
    harness.run(&inputs[4..6]);
    harness.reopen();
    harness.offset = 4;
    assert_eq!(harness.waiting().events, 3);
    let seen = harness.run(&inputs[4..]);
    assert_eq!(seen.released.len(), 3);
    assert_eq!(
        seen.edges[4],
        parent_edge("invoice-1", &["payment-1", "order-1"])
    );
    assert!(seen.edges.iter().all(|edge| edge.orphan.is_none()));
}

#[test]
fn a_second_copy_of_a_held_event_is_a_repeat_and_budgets_force_orphans() {
    let mut harness = Harness::new(LineageConfig {
        max_pending_events_per_partition: 2,
        ..config()
    });
    let seen = harness.run(&[
        event("a", Some((1, 1)), None, 1_000),
        event("a", Some((1, 1)), None, 1_001),
        event("b", Some((1, 1)), None, 1_002),
        event("c", Some((1, 1)), None, 1_003),
    ]);
    assert_eq!(seen.repeats, ["a"]);
    // The third held event pushes out the one whose window ends first.
    let released: Vec<&str> = seen.released.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(released, ["a"]);
    assert_eq!(seen.edges[0].orphan.as_deref(), Some("trace_not_seen"));
    assert_eq!(harness.waiting().events, 2);
}

#[test]
fn spans_over_budget_are_forgotten_oldest_first() {
    let mut harness = Harness::new(LineageConfig {
        max_spans_per_partition: 2,
        ..config()
    });
    harness.run(&[
        span(1, 1, None, "a", 1_000),
        span(1, 2, Some(1), "b", 1_001),
        span(1, 3, Some(1), "c", 1_002),
    ]);
    assert_eq!(harness.operator.spans_held(0), 2);
    assert_eq!(harness.operator.metrics().spans_evicted.get(), 1);
    // The root was forgotten: the event's span edge says so once the window passes.
    let mut seen = harness.run(&[event("e", Some((1, 3)), None, 1_003)]);
    assert!(seen.edges.is_empty());
    harness.feed(&span(9, 1, None, "clock", 1_003 + WINDOW_MS), &mut seen);
    assert_eq!(seen.edges[0].orphan.as_deref(), Some("root_span_not_seen"));
}

#[test]
fn lookup_answers_the_node_and_its_ancestors_as_json() {
    let mut harness = Harness::new(config());
    assert!(harness.operator.answers(crate::LookupKind::LineageEvent));
    assert!(!harness.operator.answers(crate::LookupKind::SamplingTrace));
    let lookup = |harness: &mut Harness, event_id: &str, depth: usize| {
        harness
            .operator
            .lookup(
                &mut harness.stores,
                &crate::Lookup::LineageEvent { event_id, depth },
            )
            .unwrap()
    };
    // Held, waiting for its spans: the node is known, its sides not decided yet.
    harness.run(&chain()[..3]);
    let waiting = lookup(&mut harness, "invoice-1", 3).unwrap();
    assert_eq!(
        waiting["event"]["span"]["resolution"],
        serde_json::Value::Null
    );
    assert_eq!(waiting["event"]["parent_event_id"], "payment-1");
    let before = harness.waiting();

    harness.run(&chain()[3..]);
    for restart in [false, true] {
        if restart {
            harness.commit();
            harness.reopen();
        }
        let answer = lookup(&mut harness, "invoice-1", 3).unwrap();
        let event = &answer["event"];
        assert_eq!(event["event_id"], "invoice-1");
        assert_eq!(event["event_type"], "type-of-invoice-1");
        assert_eq!(event["trace_id"], "11".repeat(15) + "01");
        assert_eq!(event["span_id"], "22".repeat(7) + "04");
        assert_eq!(event["span"]["resolution"], "complete");
        assert_eq!(event["span"]["orphan"], serde_json::Value::Null);
        assert_eq!(event["span"]["service"], "billing");
        assert_eq!(event["span"]["operation"], "op-4");
        assert_eq!(event["span"]["root_span_id"], "22".repeat(7) + "01");
        assert_eq!(event["span"]["root_service"], "gateway");
        assert_eq!(event["parent_event_id"], "payment-1");
        assert_eq!(event["parent"]["state"], "complete");
        assert_eq!(event["parent"]["orphan"], false);
        let ancestors: Vec<&str> = answer["ancestors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|node| node["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(ancestors, ["payment-1", "order-1"]);
        assert_eq!(
            answer["ancestors"][1]["parent_event_id"],
            serde_json::Value::Null
        );
        assert_eq!(
            lookup(&mut harness, "invoice-1", 1).unwrap()["ancestors"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(lookup(&mut harness, "nope", 3), None);
    }
    assert_eq!(before.events, 3);
    assert_eq!(harness.waiting().events, 0);
    let other = harness
        .operator
        .lookup(&mut harness.stores, &crate::Lookup::DedupeKey { key: "x" })
        .unwrap();
    assert_eq!(other, None);
}
