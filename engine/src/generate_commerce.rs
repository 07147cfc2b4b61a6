//! A synthetic commerce workload for the demo's lineage pipeline: flows of order → payment →
//! invoice CloudEvents, each flow one trace whose spans (storefront root, then orders, payments
//! and billing spans) are exported as OTLP batches to a span topic. Deterministic for a seed.
//!
//! Some flows break on purpose, so lineage has orphans to report: a flow whose spans were never
//! exported (every event's span edge is `trace_not_seen`), and a flow whose payment event was
//! lost (the invoice's parent edge is `parent_event_not_seen`).

use std::time::Duration;

use breadcrumb_schemas::otlp::builder::{self, ResourceSpans, Span, Value};
use breadcrumb_schemas::otlp::TraceId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

use crate::error::Result;
use crate::generate::CLOUDEVENTS_JSON;

/// Shape of the commerce workload.
#[derive(Debug, Clone)]
pub struct CommerceSpec {
    /// Flows (an order, its payment and its invoice) to produce.
    pub flows: u64,
    /// Percentage of flows whose spans are never exported.
    pub spans_lost_percent: f64,
    /// Percentage of flows whose payment event is lost (its span is still exported).
    pub payment_lost_percent: f64,
    /// Flows whose spans one OTLP batch per service holds: batches mix traces, as an exporter's
    /// do, so breadcrumb must split them.
    pub flows_per_batch: u64,
    /// Event time of the first flow, ms since the epoch.
    pub start_time_ms: i64,
    /// Event time between the starts of consecutive flows, ms.
    pub time_step_ms: i64,
    /// How far after the last flow the clock spans are, ms: beyond the join window, so every
    /// partition's stream time passes every flow's window.
    pub clock_after_ms: i64,
    /// Clock spans, each in a trace of its own: enough that every partition of the
    /// repartition topic gets one (trace ids spread by hash).
    pub clock_spans: u64,
    pub seed: u64,
}

impl Default for CommerceSpec {
    fn default() -> Self {
        Self {
            flows: 300,
            spans_lost_percent: 4.0,
            payment_lost_percent: 3.0,
            flows_per_batch: 10,
            start_time_ms: 1_790_000_000_000,
            time_step_ms: 500,
            clock_after_ms: 10 * 60 * 1_000,
            clock_spans: 64,
            seed: 23,
        }
    }
}

/// Services of a flow's spans, root first.
pub const SERVICES: [&str; 4] = ["storefront", "orders", "payments", "billing"];
/// Operations of a flow's spans, root first.
pub const OPERATIONS: [&str; 4] = [
    "POST /checkout",
    "create-order",
    "charge-card",
    "issue-invoice",
];

/// One generated flow, as produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub trace_id: TraceId,
    /// Span ids in [`SERVICES`] order: the root, then the spans that produced the order, the
    /// payment and the invoice.
    pub span_ids: [[u8; 8]; 4],
    pub order_id: String,
    pub payment_id: String,
    pub invoice_id: String,
    pub spans_exported: bool,
    pub payment_produced: bool,
}

/// What was produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommerceManifest {
    pub flows: Vec<Flow>,
    /// Event records produced.
    pub events: u64,
    /// OTLP batch records produced (clock batch included).
    pub span_records: u64,
    /// Spans produced (clock spans included).
    pub spans: u64,
    pub clock_spans: u64,
}

/// A record to produce.
#[derive(Debug, Clone)]
pub struct CommerceRecord {
    /// `true` for an event, `false` for a span batch.
    pub event: bool,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn rfc3339(time_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(time_ms as i128 * 1_000_000)
        .ok()
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// Generates the workload: the manifest, the records in production order (each batch of
/// flows' events, then that batch's spans, one OTLP request per service), and the clock batch,
/// to be produced once the rest has been read (on a partition of its own, it could otherwise be
/// read first and close every window before the spans arrive).
pub fn generate(
    spec: &CommerceSpec,
) -> (
    CommerceManifest,
    Vec<CommerceRecord>,
    Option<CommerceRecord>,
) {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut manifest = CommerceManifest::default();
    let mut records = Vec::new();
    let mut batch_spans: [Vec<Span>; 4] = Default::default();
    for index in 0..spec.flows {
        let start = spec.start_time_ms + index as i64 * spec.time_step_ms;
        let trace_id: TraceId = rng.random();
        let span_ids: [[u8; 8]; 4] = rng.random();
        let flow = Flow {
            trace_id,
            span_ids,
            order_id: format!("ord-{index:05}"),
            payment_id: format!("pay-{index:05}"),
            invoice_id: format!("inv-{index:05}"),
            spans_exported: !rng.random_bool(spec.spans_lost_percent / 100.0),
            payment_produced: !rng.random_bool(spec.payment_lost_percent / 100.0),
        };
        // (span index, event id, type, cause, event time) of the flow's three events.
        let events = [
            (1, &flow.order_id, "com.example.order.created", None, 50),
            (
                2,
                &flow.payment_id,
                "com.example.payment.captured",
                Some(&flow.order_id),
                240,
            ),
            (
                3,
                &flow.invoice_id,
                "com.example.invoice.issued",
                Some(&flow.payment_id),
                370,
            ),
        ];
        for (span, id, event_type, cause, offset_ms) in events {
            if span == 2 && !flow.payment_produced {
                continue;
            }
            let mut event = serde_json::json!({
                "specversion": "1.0",
                "id": id,
                "source": format!("/{}", SERVICES[span]),
                "type": event_type,
                "subject": format!("customer-{}", index % 50),
                "time": rfc3339(start + offset_ms),
                "traceparent": format!("00-{}-{}-01", hex(&trace_id), hex(&span_ids[span])),
                "datacontenttype": "application/json",
                "data": {"order": flow.order_id, "amount_cents": 1_000 + index * 7},
            });
            if let Some(cause) = cause {
                event["causationid"] = serde_json::Value::from(cause.as_str());
            }
            records.push(CommerceRecord {
                event: true,
                key: flow.order_id.as_bytes().to_vec(),
                value: event.to_string().into_bytes(),
            });
            manifest.events += 1;
        }
        if flow.spans_exported {
            // (start, end) after the flow's start, per span.
            let times = [(0, 400), (10, 60), (100, 250), (300, 380)];
            for (span, (from, to)) in times.into_iter().enumerate() {
                batch_spans[span].push(Span {
                    trace_id,
                    span_id: span_ids[span],
                    parent_span_id: (span > 0).then_some(span_ids[0]),
                    name: OPERATIONS[span].to_owned(),
                    start_time_unix_nano: ((start + from) * 1_000_000) as u64,
                    end_time_unix_nano: ((start + to) * 1_000_000) as u64,
                    status_code: 0,
                    attributes: vec![],
                });
            }
        }
        manifest.flows.push(flow);
        if (index + 1) % spec.flows_per_batch == 0 || index + 1 == spec.flows {
            for (service, spans) in SERVICES.iter().zip(batch_spans.iter_mut()) {
                if spans.is_empty() {
                    continue;
                }
                manifest.spans += spans.len() as u64;
                records.push(span_batch(service, std::mem::take(spans)));
                manifest.span_records += 1;
            }
        }
    }
    let clock_time =
        spec.start_time_ms + spec.flows as i64 * spec.time_step_ms + spec.clock_after_ms;
    let clocks: Vec<Span> = (0..spec.clock_spans)
        .map(|_| Span {
            trace_id: rng.random(),
            span_id: rng.random(),
            parent_span_id: None,
            name: "tick".to_owned(),
            start_time_unix_nano: (clock_time * 1_000_000) as u64,
            end_time_unix_nano: (clock_time * 1_000_000) as u64,
            status_code: 0,
            attributes: vec![],
        })
        .collect();
    let clock = (!clocks.is_empty()).then(|| {
        manifest.spans += clocks.len() as u64;
        manifest.clock_spans = clocks.len() as u64;
        manifest.span_records += 1;
        span_batch("clock", clocks)
    });
    (manifest, records, clock)
}

fn span_batch(service: &str, spans: Vec<Span>) -> CommerceRecord {
    let mut value = Vec::new();
    builder::encode_request(
        &[ResourceSpans {
            resource: vec![("service.name".into(), Value::Str(service.to_owned()))],
            scope_name: "breadcrumb-demo".into(),
            spans,
        }],
        &mut value,
    );
    CommerceRecord {
        event: false,
        key: service.as_bytes().to_vec(),
        value,
    }
}

/// Produces the workload but its clock batch: events to `events_topic` (CloudEvents,
/// structured JSON), span batches to `spans_topic`. The manifest counts the clock batch too.
pub fn produce(
    client_config: &ClientConfig,
    events_topic: &str,
    spans_topic: &str,
    spec: &CommerceSpec,
) -> Result<CommerceManifest> {
    let (manifest, records, _) = generate(spec);
    send(client_config, events_topic, spans_topic, &records)?;
    Ok(manifest)
}

/// Produces the clock batch of the workload to `spans_topic`: after everything else was read,
/// it closes every flow's join window.
pub fn produce_clock(
    client_config: &ClientConfig,
    spans_topic: &str,
    spec: &CommerceSpec,
) -> Result<()> {
    let (_, _, clock) = generate(spec);
    send(client_config, spans_topic, spans_topic, clock.as_slice())
}

fn send(
    client_config: &ClientConfig,
    events_topic: &str,
    spans_topic: &str,
    records: &[CommerceRecord],
) -> Result<()> {
    let mut producer_config = client_config.clone();
    producer_config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    let producer: ThreadedProducer<DefaultProducerContext> = producer_config.create()?;
    for record in records {
        let mut pending = BaseRecord::to(if record.event {
            events_topic
        } else {
            spans_topic
        })
        .key(&record.key[..])
        .payload(&record.value[..]);
        if record.event {
            pending = pending.headers(OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(CLOUDEVENTS_JSON),
            }));
        }
        crate::generate::send_when_queue_has_room(&producer, pending)?;
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use breadcrumb_schemas::otlp::{parse_request, span_identity, Batch};

    #[test]
    fn flows_are_deterministic_and_break_as_declared() {
        let spec = CommerceSpec {
            flows: 400,
            ..CommerceSpec::default()
        };
        let (first, mut records, clock) = generate(&spec);
        let (second, _, _) = generate(&spec);
        records.extend(clock);
        assert_eq!(first, second);
        let lost_spans = first
            .flows
            .iter()
            .filter(|flow| !flow.spans_exported)
            .count();
        let lost_payments = first
            .flows
            .iter()
            .filter(|flow| !flow.payment_produced)
            .count();
        assert!((4..40).contains(&lost_spans), "{lost_spans}");
        assert!((2..30).contains(&lost_payments), "{lost_payments}");
        assert_eq!(first.events, 3 * 400 - lost_payments as u64);

        // Every event names its flow's trace and span, and its cause.
        let mut batch = Batch::default();
        let mut spans = 0;
        for record in &records {
            if record.event {
                let event: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
                let id = event["id"].as_str().unwrap();
                let flow = first
                    .flows
                    .iter()
                    .find(|flow| {
                        [&flow.order_id, &flow.payment_id, &flow.invoice_id]
                            .contains(&&id.to_owned())
                    })
                    .unwrap();
                let traceparent = event["traceparent"].as_str().unwrap();
                assert!(traceparent.contains(&hex(&flow.trace_id)), "{traceparent}");
                if id == flow.invoice_id {
                    assert_eq!(event["causationid"], flow.payment_id.as_str());
                    assert!(traceparent.contains(&hex(&flow.span_ids[3])));
                }
            } else {
                parse_request(&record.value, &mut batch).unwrap();
                for span in &batch.spans {
                    assert!(span_identity(&record.value[span.content.clone()]).is_some());
                }
                spans += batch.spans.len() as u64;
            }
        }
        assert_eq!(spans, first.spans);
        assert_eq!(
            first.spans,
            4 * (400 - lost_spans as u64) + spec.clock_spans
        );
    }
}
