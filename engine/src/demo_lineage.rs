//! The demo's lineage side: commerce flows (order → payment → invoice, one trace each) joined
//! to their spans and parent events by a lineage pipeline; then the enriched and lineage topics
//! are read back and checked against what was produced.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::message::{Headers, Message};

use breadcrumb_operators::lineage::{OrphanReason, LINEAGE_TRACE_ID_HEADER};

use crate::config::EngineConfig;
use crate::error::Result;
use crate::generate_commerce::{CommerceManifest, Flow};
use crate::metrics::Metrics;
use crate::runtime::base_client_config;
use crate::verify;

pub const PIPELINE: &str = "commerce";
pub const EVENTS_TOPIC: &str = "commerce_events";
pub const SPANS_TOPIC: &str = "commerce_spans";
pub const PARTITIONS: i32 = 4;
pub const ENRICHED_TOPIC: &str = "commerce_events-enriched";
pub const LINEAGE_TOPIC: &str = "commerce_events-lineage";
/// Event time an event waits for its spans and parent: longer than the whole workload (300
/// flows 500 ms apart), because the demo's producer writes all of a topic's records at once and
/// the engine may read one topic (or one service's span partition) far ahead of another; the
/// join window has to cover that skew between where events and spans are read. The clock spans
/// come 10 minutes after the last flow, so every window still closes.
pub const JOIN_WINDOW_MS: i64 = 300_000;

/// The pipeline's section of the demo configuration.
pub fn config_section() -> String {
    format!(
        r#"
[pipelines.{PIPELINE}]
input_topics = ["{EVENTS_TOPIC}"]
span_topics = ["{SPANS_TOPIC}"]
repartition_by = "trace_id"
output_topic = "{ENRICHED_TOPIC}"
lineage_topic = "{LINEAGE_TOPIC}"

[pipelines.{PIPELINE}.decoder]
format = "cloudevents"

[pipelines.{PIPELINE}.lineage]
join_window_ms = {JOIN_WINDOW_MS}
"#
    )
}

/// One edge record, as read back.
#[derive(Debug, Clone, serde::Deserialize)]
struct EdgeRecord {
    edge_kind: String,
    event_id: String,
    copy_topic: Option<String>,
    copy_partition: Option<i32>,
    copy_offset: Option<i64>,
    service: Option<String>,
    operation: Option<String>,
    root_service: Option<String>,
    parent_event_id: Option<String>,
    #[serde(default)]
    ancestor_event_ids: Vec<String>,
    orphan_reason: Option<String>,
}

/// What the lineage pipeline did, from its metrics, and what its topics hold, read back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineageSummary {
    pub flows: u64,
    pub events_produced: u64,
    pub payments_lost: u64,
    pub flows_without_spans: u64,
    pub spans_produced: u64,
    pub span_records: u64,
    pub clock_spans: u64,
    pub events_in: u64,
    pub events_out: u64,
    /// Edges emitted, by kind, from the metrics.
    pub span_edges: u64,
    pub parent_edges: u64,
    /// Orphan edges by reason, from the metrics (non-zero ones).
    pub orphans: Vec<(String, u64)>,
    /// Events still held at shutdown.
    pub pending: u64,
    /// The enriched and lineage topics, read back and checked.
    pub check: LineageCheck,
    /// A lineage query asked of the running engine, and its answer.
    pub query: Option<QueryShown>,
}

/// A state query the demo asked, and what came back.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryShown {
    pub request: String,
    pub status: u16,
    pub body: serde_json::Value,
}

impl QueryShown {
    /// Event ids of the answer: the event, then its ancestors.
    pub fn event_ids(&self) -> Vec<String> {
        let answer = &self.body["answers"][0]["answer"];
        std::iter::once(&answer["event"])
            .chain(answer["ancestors"].as_array().into_iter().flatten())
            .filter_map(|node| node["event_id"].as_str().map(str::to_owned))
            .collect()
    }
}

impl LineageSummary {
    pub fn ok(&self) -> bool {
        self.check.problems.is_empty()
    }

    pub fn render_into(&self, text: &mut String) {
        text.push_str(&format!(
            "\n  commerce flows     {:>5}  order → payment → invoice, one trace each: {} events to `{EVENTS_TOPIC}` ({} payments lost on purpose)\n",
            self.flows, self.events_produced, self.payments_lost
        ));
        text.push_str(&format!(
            "                           {} spans in {} OTLP batches to `{SPANS_TOPIC}` (batches mix traces; {} flows' spans lost on purpose; + {} clock spans later in event time)\n",
            self.spans_produced, self.span_records, self.flows_without_spans, self.clock_spans
        ));
        text.push_str(&format!(
            "  in                 {:>5}  events read from `{EVENTS_TOPIC}`\n",
            self.events_in
        ));
        text.push_str(&format!(
            "  enriched           {:>5}  republished to `{ENRICHED_TOPIC}` with breadcrumb-lineage-* headers\n",
            self.events_out
        ));
        text.push_str(&format!(
            "  edges              {:>5}  {} span edges (event → producing span and trace root), {} parent edges (event → causing event), on `{LINEAGE_TOPIC}`\n",
            self.span_edges + self.parent_edges,
            self.span_edges,
            self.parent_edges
        ));
        let orphans: Vec<String> = self
            .orphans
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        text.push_str(&format!(
            "  orphans            {:>5}  {}\n",
            self.orphans.iter().map(|(_, count)| count).sum::<u64>(),
            if orphans.is_empty() {
                "none".to_owned()
            } else {
                orphans.join(", ")
            }
        ));
        text.push_str(&format!(
            "  pending            {:>5}  events still waiting for a span or parent\n",
            self.pending
        ));
        let check = &self.check;
        if !check.chain.is_empty() {
            text.push_str(&format!(
                "  a chain                   trace {} (root service {}):\n",
                check.chain_trace_id, check.chain_root_service
            ));
            for (depth, (id, service, operation)) in check.chain.iter().enumerate() {
                text.push_str(&format!(
                    "                           {}{id}  by {service} ({operation})\n",
                    if depth == 0 { "" } else { "↳ caused by " }
                ));
            }
        }
        if let Some(query) = &self.query {
            text.push_str(&format!(
                "  query                     {} → {} {}\n",
                query.request,
                query.status,
                query.event_ids().join(" ← ")
            ));
        }
        text.push_str(&format!(
            "\n  lineage check     {}\n",
            if self.ok() {
                format!(
                    "{} edge records read back read_committed: every event one span edge, every payment and invoice one parent edge, each naming the offset of its event's enriched copy; orphans exactly where the workload broke a link",
                    check.edge_records
                )
            } else {
                format!("FAILED: {}", check.problems.join("; "))
            }
        ));
    }
}

/// The edges a flow's events must have: `(event id, kind) → orphan reason`.
fn expected_edges(flows: &[Flow]) -> HashMap<(String, &'static str), Option<&'static str>> {
    let mut expected = HashMap::new();
    for flow in flows {
        let span_orphan = (!flow.spans_exported).then_some("trace_not_seen");
        expected.insert((flow.order_id.clone(), "span"), span_orphan);
        if flow.payment_produced {
            expected.insert((flow.payment_id.clone(), "span"), span_orphan);
            expected.insert((flow.payment_id.clone(), "parent"), None);
        }
        expected.insert((flow.invoice_id.clone(), "span"), span_orphan);
        expected.insert(
            (flow.invoice_id.clone(), "parent"),
            (!flow.payment_produced).then_some("parent_event_not_seen"),
        );
    }
    expected
}

/// The lineage block: metrics, then the enriched and lineage topics read back and checked.
pub fn summary(
    config: &EngineConfig,
    metrics: &Metrics,
    manifest: &CommerceManifest,
) -> Result<LineageSummary> {
    let handles = metrics.lineage.resolve(PIPELINE);
    let mut summary = LineageSummary {
        flows: manifest.flows.len() as u64,
        events_produced: manifest.events,
        payments_lost: manifest
            .flows
            .iter()
            .filter(|flow| !flow.payment_produced)
            .count() as u64,
        flows_without_spans: manifest
            .flows
            .iter()
            .filter(|flow| !flow.spans_exported)
            .count() as u64,
        spans_produced: manifest.spans,
        span_records: manifest.span_records,
        clock_spans: manifest.clock_spans,
        events_in: metrics
            .events_in
            .with_label_values(&[PIPELINE, EVENTS_TOPIC])
            .get(),
        events_out: metrics
            .events_out
            .with_label_values(&[PIPELINE, ENRICHED_TOPIC])
            .get(),
        span_edges: handles.edges[0].get(),
        parent_edges: handles.edges[1].get(),
        orphans: OrphanReason::ALL
            .iter()
            .map(|reason| {
                (
                    reason.as_str().to_owned(),
                    handles.orphans[reason.index()].get(),
                )
            })
            .filter(|(_, count)| *count > 0)
            .collect(),
        pending: handles.pending_events.get().max(0) as u64,
        ..LineageSummary::default()
    };

    let client = base_client_config(config);
    let timeout = Duration::from_secs(60);
    let enriched = verify::read_topic(&client, ENRICHED_TOPIC, timeout)?;
    let enriched: Vec<CopyRecord<'_>> = enriched
        .iter()
        .map(|message| CopyRecord {
            partition: message.partition(),
            offset: message.offset(),
            value: message.payload().unwrap_or_default(),
            has_trace_header: message.headers().is_some_and(|headers| {
                headers
                    .iter()
                    .any(|header| header.key == LINEAGE_TRACE_ID_HEADER)
            }),
        })
        .collect();
    let edges = verify::read_topic(&client, LINEAGE_TOPIC, timeout)?;
    let edges: Vec<&[u8]> = edges
        .iter()
        .map(|message| message.payload().unwrap_or_default())
        .collect();
    summary.check = check(manifest, ENRICHED_TOPIC, &enriched, &edges);
    Ok(summary)
}

/// An enriched copy as read back.
#[derive(Debug, Clone, Copy)]
pub struct CopyRecord<'a> {
    pub partition: i32,
    pub offset: i64,
    pub value: &'a [u8],
    /// Whether it carries `breadcrumb-lineage-trace-id`.
    pub has_trace_header: bool,
}

/// What the enriched and lineage topics were found to hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineageCheck {
    /// Edge records read.
    pub edge_records: u64,
    /// Failures, each a sentence; empty when every check passed.
    pub problems: Vec<String>,
    /// One complete chain, invoice first: `(event id, service, operation)`.
    pub chain: Vec<(String, String, String)>,
    pub chain_root_service: String,
    pub chain_trace_id: String,
}

/// Checks what lineage published for a commerce workload (committed records only): one
/// enriched copy per event, lineage headers on events of traced flows, exactly the edges the
/// workload's links call for with orphans exactly where it broke them, and every edge naming
/// the offset of its event's enriched copy on `enriched_topic`.
pub fn check(
    manifest: &CommerceManifest,
    enriched_topic: &str,
    enriched: &[CopyRecord<'_>],
    edges: &[&[u8]],
) -> LineageCheck {
    let mut result = LineageCheck {
        edge_records: edges.len() as u64,
        ..LineageCheck::default()
    };
    let traced: HashSet<&str> = manifest
        .flows
        .iter()
        .filter(|flow| flow.spans_exported)
        .flat_map(|flow| [&flow.order_id, &flow.payment_id, &flow.invoice_id])
        .map(String::as_str)
        .collect();
    // Where each enriched copy landed, and its event id.
    let mut copies: HashMap<(i32, i64), String> = HashMap::new();
    let mut headers_missing = 0;
    for copy in enriched {
        let id = serde_json::from_slice::<serde_json::Value>(copy.value)
            .ok()
            .and_then(|event| event.get("id")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        if traced.contains(id.as_str()) && !copy.has_trace_header {
            headers_missing += 1;
        }
        copies.insert((copy.partition, copy.offset), id);
    }
    let distinct: HashSet<&String> = copies.values().collect();
    if copies.len() as u64 != manifest.events || distinct.len() != copies.len() {
        result.problems.push(format!(
            "{} enriched copies ({} distinct ids) read back for {} events produced",
            copies.len(),
            distinct.len(),
            manifest.events
        ));
    }
    if headers_missing > 0 {
        result.problems.push(format!(
            "{headers_missing} enriched events of traced flows lack the lineage trace header"
        ));
    }

    let mut expected = expected_edges(&manifest.flows);
    let mut by_event: HashMap<String, Vec<EdgeRecord>> = HashMap::new();
    let mut unreadable = 0;
    for value in edges {
        match serde_json::from_slice::<EdgeRecord>(value) {
            Ok(edge) => by_event
                .entry(edge.event_id.clone())
                .or_default()
                .push(edge),
            Err(_) => unreadable += 1,
        }
    }
    if unreadable > 0 {
        result
            .problems
            .push(format!("{unreadable} edge records do not parse"));
    }
    let mut wrong = Vec::new();
    for edge in by_event.values().flatten() {
        let kind: &'static str = match edge.edge_kind.as_str() {
            "span" => "span",
            "parent" => "parent",
            _ => {
                wrong.push(format!(
                    "{} has an edge of kind {}",
                    edge.event_id, edge.edge_kind
                ));
                continue;
            }
        };
        match expected.remove(&(edge.event_id.clone(), kind)) {
            None => wrong.push(format!(
                "{} has an unexpected or repeated {kind} edge",
                edge.event_id
            )),
            Some(orphan) if orphan != edge.orphan_reason.as_deref() => wrong.push(format!(
                "{}'s {kind} edge says orphan {:?}, expected {orphan:?}",
                edge.event_id, edge.orphan_reason
            )),
            Some(_) => {}
        }
        let landed = match (
            edge.copy_topic.as_deref(),
            edge.copy_partition,
            edge.copy_offset,
        ) {
            (Some(topic), Some(partition), Some(offset)) if topic == enriched_topic => {
                copies.get(&(partition, offset))
            }
            _ => None,
        };
        if landed != Some(&edge.event_id) {
            wrong.push(format!(
                "{}'s {kind} edge names copy {:?}:{:?}:{:?}, which does not hold it",
                edge.event_id, edge.copy_topic, edge.copy_partition, edge.copy_offset
            ));
        }
    }
    if !expected.is_empty() {
        wrong.push(format!("{} expected edges missing", expected.len()));
    }
    if !wrong.is_empty() {
        wrong.sort();
        let shown: Vec<String> = wrong.iter().take(3).cloned().collect();
        result.problems.push(format!(
            "{} edge problems, e.g. {}",
            wrong.len(),
            shown.join(" | ")
        ));
    }

    // One chain from the edges alone, as a data team would walk it: the first complete flow.
    let span_edge = |id: &str| {
        by_event
            .get(id)
            .and_then(|edges| edges.iter().find(|edge| edge.edge_kind == "span"))
    };
    let Some(flow) = manifest
        .flows
        .iter()
        .find(|flow| flow.spans_exported && flow.payment_produced)
    else {
        return result;
    };
    let Some(invoice) = span_edge(&flow.invoice_id) else {
        return result;
    };
    result.chain_root_service = invoice.root_service.clone().unwrap_or_default();
    result.chain_trace_id = flow
        .trace_id
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let mut ids = vec![flow.invoice_id.clone()];
    if let Some(parent) = by_event
        .get(&flow.invoice_id)
        .and_then(|edges| edges.iter().find(|edge| edge.edge_kind == "parent"))
    {
        ids.extend(parent.ancestor_event_ids.iter().cloned());
        if parent.parent_event_id.as_deref() != Some(flow.payment_id.as_str())
            || parent.ancestor_event_ids != [flow.payment_id.clone(), flow.order_id.clone()]
        {
            result.problems.push(format!(
                "{}'s ancestry is {:?}, expected [{}, {}]",
                flow.invoice_id, parent.ancestor_event_ids, flow.payment_id, flow.order_id
            ));
        }
    }
    for id in ids {
        let (service, operation) = span_edge(&id)
            .map(|edge| {
                (
                    edge.service.clone().unwrap_or_default(),
                    edge.operation.clone().unwrap_or_default(),
                )
            })
            .unwrap_or_default();
        result.chain.push((id, service, operation));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(index: u32, spans_exported: bool, payment_produced: bool) -> Flow {
        Flow {
            trace_id: [index as u8; 16],
            span_ids: [[1; 8], [2; 8], [3; 8], [4; 8]],
            order_id: format!("ord-{index}"),
            payment_id: format!("pay-{index}"),
            invoice_id: format!("inv-{index}"),
            spans_exported,
            payment_produced,
        }
    }

    #[test]
    fn broken_flows_expect_orphans_exactly_where_links_are_missing() {
        let expected = expected_edges(&[flow(1, true, true), flow(2, false, false)]);
        assert_eq!(expected.len(), 5 + 3);
        assert_eq!(expected[&("inv-1".to_owned(), "parent")], None);
        assert_eq!(expected[&("ord-1".to_owned(), "span")], None);
        assert_eq!(
            expected[&("ord-2".to_owned(), "span")],
            Some("trace_not_seen")
        );
        assert_eq!(
            expected[&("inv-2".to_owned(), "parent")],
            Some("parent_event_not_seen")
        );
        assert!(!expected.contains_key(&("pay-2".to_owned(), "span")));
        assert!(!expected.contains_key(&("ord-1".to_owned(), "parent")));
    }

    #[test]
    fn a_failed_check_is_rendered_as_a_failure() {
        let mut summary = LineageSummary::default();
        let mut text = String::new();
        summary.render_into(&mut text);
        assert!(text.contains("lineage check") && !text.contains("FAILED"));
        summary
            .check
            .problems
            .push("3 expected edges missing".to_owned());
        let mut text = String::new();
        summary.render_into(&mut text);
        assert!(text.contains("FAILED: 3 expected edges missing"), "{text}");
        assert!(!summary.ok());
    }
}
