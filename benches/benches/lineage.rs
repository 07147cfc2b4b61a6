//! Throughput of the lineage operator in-process, over its real RocksDB state, on one thread.
//!
//! Workload: traces of 4 spans (a root and three children, services `svc-0..3`), each with
//! three business events (order → payment → invoice, each produced by one child span and caused
//! by the previous one). Per trace, the events arrive first and the spans after them, the root
//! span last (as exporters deliver them: a root span ends after the work it covers), so every
//! event is held and joined when its trace completes. Traces are interleaved 64 at a time. Event
//! time advances 1 ms per 100 records; the 5-minute window never passes, so every edge is
//! joined (the run checks it). The transaction cost is included: `checkpoint`, `commit_into`
//! and the batch `write` every 10,000 records; producing to Kafka is not.
//!
//! Measurements, one run, over the same record stream:
//! - `lineage/hashmap_join`: the baseline: a plain in-memory hash join of the same events and
//!   spans (maps of spans and events by id, no held records, no state store, no edge records);
//! - `lineage/operator`: the operator.
//!
//! Throughput counts records (events + spans). Figures are reported, never asserted.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use breadcrumb_operators::lineage::{Lineage, LineageConfig, LineageMetrics, Span};
use breadcrumb_operators::testing::CountingEmitter;
use breadcrumb_operators::Operator;
use breadcrumb_schemas::{Envelope, RawRecord, TraceContext};
use breadcrumb_state::{PartitionStore, StateBackend, StateOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tempfile::TempDir;

const BASE_TIME_MS: i64 = 1_700_000_000_000;
const TRACES_IN_FLIGHT: u64 = 64;
const COMMIT_EVERY: u64 = 10_000;
const VALUE: &[u8] = &[b'x'; 200];
const SERVICES: [&str; 4] = ["gateway", "orders", "payments", "billing"];

#[derive(Clone)]
enum Input {
    Event {
        id: String,
        trace: u64,
        span: u8,
        cause: Option<String>,
    },
    Span {
        trace: u64,
        span: u8,
    },
}

fn trace_id(trace: u64) -> [u8; 16] {
    let mut id = [0xab; 16];
    id[8..].copy_from_slice(&(trace + 1).to_be_bytes());
    id
}

fn span_id(span: u8) -> [u8; 8] {
    [0xcd, 0, 0, 0, 0, 0, 0, span + 1]
}

/// `traces` traces, `TRACES_IN_FLIGHT` interleaved at a time: events first, spans after, the
/// root last.
fn stream(first_trace: u64, traces: u64) -> Vec<Input> {
    let mut out = Vec::new();
    for group in (first_trace..first_trace + traces).step_by(TRACES_IN_FLIGHT as usize) {
        let members = group..(group + TRACES_IN_FLIGHT).min(first_trace + traces);
        for step in 0..3u8 {
            for trace in members.clone() {
                out.push(Input::Event {
                    id: format!("t{trace}-e{step}"),
                    trace,
                    span: step + 1,
                    cause: (step > 0).then(|| format!("t{trace}-e{}", step - 1)),
                });
            }
        }
        for span in [1u8, 2, 3, 0] {
            for trace in members.clone() {
                out.push(Input::Span { trace, span });
            }
        }
    }
    out
}

struct Run {
    backend: StateBackend,
    operator: Lineage,
    stores: Vec<PartitionStore>,
    offset: i64,
    out: CountingEmitter,
    envelope: Envelope,
    _dir: TempDir,
}

impl Run {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let operator = Lineage::new(
            "bench",
            LineageConfig::default(),
            LineageMetrics::unregistered(),
        );
        let names: Vec<String> = operator.stores().into_iter().map(|s| s.name).collect();
        let backend = StateBackend::open(dir.path(), &names, &StateOptions::default()).unwrap();
        let id = backend.store_id(operator.store_name()).unwrap();
        let mut stores = vec![backend.partition_store(id, 0)];
        let mut operator = operator;
        operator.open_partition(&mut stores).unwrap();
        Self {
            backend,
            operator,
            stores,
            offset: 0,
            out: CountingEmitter::default(),
            envelope: Envelope::default(),
            _dir: dir,
        }
    }

    fn feed(&mut self, input: &Input) {
        let time = BASE_TIME_MS + self.offset / 100;
        match input {
            Input::Event {
                id,
                trace,
                span,
                cause,
            } => {
                let envelope = &mut self.envelope;
                envelope.clear();
                envelope.id.push_str(id);
                envelope.event_type.push_str("shop.event");
                envelope.event_time_ms = time;
                envelope.trace = Some(TraceContext {
                    trace_id: trace_id(*trace),
                    span_id: span_id(*span),
                    flags: 1,
                });
                if let Some(cause) = cause {
                    envelope.causation_id.push_str(cause);
                }
                let record = RawRecord {
                    topic: "events",
                    partition: 0,
                    offset: self.offset,
                    timestamp_ms: Some(time),
                    key: Some(id.as_bytes()),
                    value: Some(VALUE),
                    headers: &[],
                };
                self.operator
                    .process(&record, &self.envelope, &mut self.stores, &mut self.out)
                    .unwrap();
            }
            Input::Span { trace, span } => {
                let span = Span {
                    trace_id: trace_id(*trace),
                    span_id: span_id(*span),
                    parent_span_id: (*span > 0).then(|| span_id(0)),
                    service: SERVICES[*span as usize],
                    operation: "handle",
                    start_time_ms: time - 5,
                    end_time_ms: time,
                };
                self.operator
                    .process_span(&span, &mut self.stores, &mut self.out)
                    .unwrap();
            }
        }
        self.offset += 1;
        if (self.offset as u64).is_multiple_of(COMMIT_EVERY) {
            self.operator
                .checkpoint(&mut self.stores, self.offset - 1)
                .unwrap();
            let mut batch = self.backend.commit_batch();
            self.stores[0].commit_into(&mut batch);
            batch.write().unwrap();
        }
    }
}

/// The baseline: a hash join of spans and events, no state store, no held records.
#[derive(Default)]
struct HashJoin {
    spans: HashMap<([u8; 16], [u8; 8]), &'static str>,
    roots: HashMap<[u8; 16], &'static str>,
    waiting: HashMap<[u8; 16], Vec<([u8; 8], String)>>,
    events: HashMap<String, [u8; 16]>,
    joined: u64,
}

impl HashJoin {
    fn feed(&mut self, input: &Input) {
        match input {
            Input::Event {
                id,
                trace,
                span,
                cause,
            } => {
                let trace = trace_id(*trace);
                if let Some(cause) = cause {
                    black_box(self.events.get(cause));
                }
                self.events.insert(id.clone(), trace);
                self.waiting
                    .entry(trace)
                    .or_default()
                    .push((span_id(*span), id.clone()));
            }
            Input::Span { trace, span } => {
                let trace = trace_id(*trace);
                let service = SERVICES[*span as usize];
                self.spans.insert((trace, span_id(*span)), service);
                if *span == 0 {
                    self.roots.insert(trace, service);
                }
                if self.roots.contains_key(&trace) {
                    if let Some(waiting) = self.waiting.remove(&trace) {
                        for (span, id) in waiting {
                            black_box((self.spans.get(&(trace, span)), id));
                            self.joined += 1;
                        }
                    }
                }
            }
        }
    }
}

fn bench(criterion: &mut Criterion) {
    let quick = std::env::var("BREADCRUMB_BENCH_QUICK").is_ok_and(|value| value == "1");
    let traces_per_chunk: u64 = if quick { 2_000 } else { 10_000 };
    let records_per_chunk = traces_per_chunk * 7;
    let mut group = criterion.benchmark_group("lineage");
    group.throughput(Throughput::Elements(records_per_chunk));
    group.sample_size(10);

    let mut join = HashJoin::default();
    let mut next_trace = 0;
    group.bench_function("hashmap_join", |bencher| {
        bencher.iter_custom(|iterations| {
            let mut elapsed = std::time::Duration::ZERO;
            for _ in 0..iterations {
                let inputs = stream(next_trace, traces_per_chunk);
                next_trace += traces_per_chunk;
                let start = Instant::now();
                for input in &inputs {
                    join.feed(input);
                }
                elapsed += start.elapsed();
            }
            elapsed
        })
    });

    let mut run = Run::new();
    let mut next_trace = 0;
    group.bench_function("operator", |bencher| {
        bencher.iter_custom(|iterations| {
            let mut elapsed = std::time::Duration::ZERO;
            for _ in 0..iterations {
                let inputs = stream(next_trace, traces_per_chunk);
                next_trace += traces_per_chunk;
                let start = Instant::now();
                for input in &inputs {
                    run.feed(input);
                }
                elapsed += start.elapsed();
            }
            elapsed
        })
    });
    group.finish();
    let out = run.out;
    println!(
        "lineage: {} events released, {} edges, {} still held; baseline joined {}",
        out.main,
        out.lineage,
        run.operator.waiting(0).events,
        join.joined
    );
    assert_eq!(
        out.lineage,
        out.main * 2 - out.main / 3,
        "every event's edges"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
