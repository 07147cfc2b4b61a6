//! Throughput of the tail-sampling operator in-process, over its real RocksDB state, on one
//! thread, and its memory per in-flight trace beyond the span bytes.
//!
//! Workload: OTLP batches of 50 spans (10 traces of 5 spans: 4 children then the root, each
//! span with 3 attributes, about 150 bytes encoded), two resources per batch, event time
//! advancing 1 ms per batch. Policies: `status_code` ERROR (1 trace in 50 has an error span),
//! `latency` 500 ms (1 in 20 is slow), a `string_attribute` regex on `http.route`, and
//! `probabilistic` 10%. `quiet_period_ms` 2 000: about 20 000 traces are pending at any time.
//! Every 200 batches (10 000 spans) the engine's transaction cost is paid: `checkpoint` (pending
//! traces' fragments and summaries, decisions), `commit_into` and the batch `write` (WAL off);
//! producing outputs and changelogs to Kafka is not included.
//!
//! Measurements, one run:
//! - `sampling/walk_only`: the baseline: walking the same batches (`parse_request`) and nothing
//!   else;
//! - `sampling/operator`: the operator, spans/s (criterion's element throughput);
//! - `sampling/operator_quiet_50ms`: the same with a 50 ms quiet period, so that traces are
//!   decided within the transaction that saw them and their spans never reach the store (only
//!   decisions do): the share of the cost that is durable buffering;
//! - printed before them: bytes of heap per in-flight trace beyond its buffered span bytes, with
//!   50 000 traces pending (a counting global allocator; RocksDB's C++ memory is not included,
//!   and nothing is committed during the measurement).
//!
//! Figures are reported, never asserted. `BREADCRUMB_BENCH_QUICK=1` shortens the run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breadcrumb_operators::sampling::{
    NoLineage, OtlpEncoding, PolicyConfig, Sampling, SamplingConfig, SamplingMetrics,
    StatusCodeName,
};
use breadcrumb_operators::testing::CountingEmitter;
use breadcrumb_operators::Operator;
use breadcrumb_schemas::otlp::builder::{encode_request, ResourceSpans, Span, Value};
use breadcrumb_schemas::otlp::{parse_request, Batch};
use breadcrumb_schemas::{Envelope, RawRecord};
use breadcrumb_state::{PartitionStore, StateBackend, StateOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tempfile::TempDir;

/// Counts live heap bytes, for the per-trace overhead.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, AtomicOrdering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, AtomicOrdering::Relaxed);
        unsafe { System.dealloc(pointer, layout) }
    }
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            AtomicOrdering::Relaxed,
        );
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SPANS_PER_TRACE: usize = 5;
const TRACES_PER_BATCH: usize = 10;
const BATCHES_PER_COMMIT: usize = 200;
const BASE_MS: u64 = 1_700_000_000_000;
const MS: u64 = 1_000_000;

/// Generates batches with fresh trace ids.
struct Workload {
    next_trace: u64,
    batch: u64,
}

impl Workload {
    fn trace_id(number: u64) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&number.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        id[8..].copy_from_slice(&number.to_be_bytes());
        id
    }

    /// A batch; with `roots = false` the roots are left out, so no trace ever completes early.
    fn batch(&mut self, roots: bool, out: &mut Vec<u8>) {
        let now = BASE_MS + self.batch;
        self.batch += 1;
        let mut gateway = Vec::new();
        let mut backend = Vec::new();
        for _ in 0..TRACES_PER_BATCH {
            let number = self.next_trace;
            self.next_trace += 1;
            let trace_id = Self::trace_id(number);
            let duration = if number.is_multiple_of(20) { 700 } else { 40 };
            let start = (now - duration) * MS;
            for child in 0..SPANS_PER_TRACE - 1 {
                backend.push(Span {
                    trace_id,
                    span_id: [child as u8 + 2, 0, 0, 0, 0, 0, 0, 1],
                    parent_span_id: Some([1, 0, 0, 0, 0, 0, 0, 1]),
                    name: "SELECT orders".into(),
                    start_time_unix_nano: start + child as u64 * MS,
                    end_time_unix_nano: start + (child as u64 + 5) * MS,
                    status_code: if number.is_multiple_of(50) && child == 0 {
                        2
                    } else {
                        0
                    },
                    attributes: vec![
                        ("db.system".into(), Value::Str("postgresql".into())),
                        ("db.rows".into(), Value::Int(12)),
                        ("net.peer.name".into(), Value::Str("orders-db".into())),
                    ],
                });
            }
            if roots {
                gateway.push(Span {
                    trace_id,
                    span_id: [1, 0, 0, 0, 0, 0, 0, 1],
                    parent_span_id: None,
                    name: "GET /checkout".into(),
                    start_time_unix_nano: start,
                    end_time_unix_nano: now * MS,
                    status_code: 0,
                    attributes: vec![
                        ("http.route".into(), Value::Str("/checkout".into())),
                        ("http.status_code".into(), Value::Int(200)),
                        ("retry".into(), Value::Bool(false)),
                    ],
                });
            }
        }
        out.clear();
        encode_request(
            &[
                ResourceSpans {
                    resource: vec![("service.name".into(), Value::Str("orders".into()))],
                    scope_name: "sqlx".into(),
                    spans: backend,
                },
                ResourceSpans {
                    resource: vec![("service.name".into(), Value::Str("gateway".into()))],
                    scope_name: "axum".into(),
                    spans: gateway,
                },
            ],
            out,
        );
    }
}

fn policies() -> Vec<PolicyConfig> {
    vec![
        PolicyConfig::StatusCode {
            name: "errors".into(),
            status_codes: vec![StatusCodeName::Error],
        },
        PolicyConfig::Latency {
            name: "slow".into(),
            threshold_ms: 500,
            upper_threshold_ms: None,
        },
        PolicyConfig::StringAttribute {
            name: "admin".into(),
            key: "http.route".into(),
            values: vec!["^/admin".into()],
            regex: true,
            invert_match: false,
        },
        PolicyConfig::Probabilistic {
            name: "sample".into(),
            sampling_percentage: 10.0,
            hash_salt: "bench".into(),
        },
    ]
}

struct Rig {
    operator: Sampling,
    stores: Vec<PartitionStore>,
    backend: StateBackend,
    offset: i64,
    _dir: TempDir,
}

impl Rig {
    fn new(config: SamplingConfig) -> Self {
        let dir = TempDir::new().expect("temp dir");
        let operator = Sampling::new(
            "bench",
            config,
            OtlpEncoding::Proto,
            &SamplingMetrics::unregistered(),
            Arc::new(NoLineage),
        );
        let names: Vec<String> = operator
            .stores()
            .into_iter()
            .map(|store| store.name)
            .collect();
        let backend =
            StateBackend::open(dir.path(), &names, &StateOptions::default()).expect("open state");
        let id = backend.store_id("bench-sampling").expect("declared");
        let mut stores = vec![backend.partition_store(id, 0)];
        let mut operator = operator;
        operator
            .open_partition(&mut stores)
            .expect("open partition");
        Self {
            operator,
            stores,
            backend,
            offset: 0,
            _dir: dir,
        }
    }

    fn process(&mut self, value: &[u8], out: &mut CountingEmitter) {
        let record = RawRecord {
            topic: "spans",
            partition: 0,
            offset: self.offset,
            timestamp_ms: None,
            key: None,
            value: Some(value),
            headers: &[],
        };
        self.offset += 1;
        self.operator
            .process(&record, &Envelope::default(), &mut self.stores, out)
            .expect("process");
    }

    fn commit(&mut self) {
        self.operator
            .checkpoint(&mut self.stores, self.offset - 1)
            .expect("checkpoint");
        let mut batch = self.backend.commit_batch();
        self.stores[0].commit_into(&mut batch);
        batch.write().expect("write");
    }
}

fn memory_per_trace() {
    let traces = 50_000usize;
    let mut rig = Rig::new(SamplingConfig {
        quiet_period_ms: 600_000,
        max_wait_ms: 3_600_000,
        ..SamplingConfig::with_policies(policies())
    });
    let mut workload = Workload {
        next_trace: 1,
        batch: 0,
    };
    let batches: Vec<Vec<u8>> = (0..traces / TRACES_PER_BATCH)
        .map(|_| {
            let mut value = Vec::new();
            workload.batch(false, &mut value);
            value
        })
        .collect();
    let mut out = CountingEmitter::default();
    // Warm the scratch buffers first, so they do not count.
    rig.process(&batches[0], &mut out);
    let before = LIVE_BYTES.load(AtomicOrdering::Relaxed);
    let held_before = rig.operator.waiting(0);
    for batch in &batches[1..] {
        rig.process(batch, &mut out);
    }
    let after = LIVE_BYTES.load(AtomicOrdering::Relaxed);
    let held = rig.operator.waiting(0);
    let added_traces = held.events - held_before.events;
    let added_payload = held.bytes - held_before.bytes;
    let overhead = (after - before) as f64 - added_payload as f64;
    println!(
        "sampling/memory: {added_traces} traces pending, {:.0} B of spans each, {:.0} B of heap \
         per trace beyond its spans (target <= 2048)",
        added_payload as f64 / added_traces as f64,
        overhead / added_traces as f64,
    );
}

fn throughput(criterion: &mut Criterion) {
    memory_per_trace();
    let quick = std::env::var("BREADCRUMB_BENCH_QUICK").is_ok_and(|value| value == "1");
    let batches_per_iteration = if quick { 200 } else { 1_000 };
    let spans_per_iteration = (batches_per_iteration * TRACES_PER_BATCH * SPANS_PER_TRACE) as u64;
    let mut group = criterion.benchmark_group("sampling");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(if quick { 3 } else { 10 }))
        .throughput(Throughput::Elements(spans_per_iteration));

    let mut workload = Workload {
        next_trace: 1,
        batch: 0,
    };
    let mut values: Vec<Vec<u8>> = vec![Vec::new(); batches_per_iteration];
    let mut parsed = Batch::default();
    group.bench_function("walk_only", |bencher| {
        bencher.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                for value in values.iter_mut() {
                    workload.batch(true, value);
                }
                let started = Instant::now();
                for value in &values {
                    parse_request(value, &mut parsed).expect("valid batch");
                    black_box(parsed.spans.len());
                }
                total += started.elapsed();
            }
            total
        })
    });

    // Traces pending across commits (a 2 s quiet period, commits every 200 ms of event time):
    // each trace's spans are written to the store once; and traces decided within the commit
    // that saw them (50 ms): only decisions are written.
    for (name, quiet_period_ms) in [("operator", 2_000), ("operator_quiet_50ms", 50)] {
        let mut rig = Rig::new(SamplingConfig {
            quiet_period_ms,
            max_wait_ms: 30_000,
            ..SamplingConfig::with_policies(policies())
        });
        let mut out = CountingEmitter::default();
        let mut since_commit = 0;
        group.bench_function(name, |bencher| {
            bencher.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    for value in values.iter_mut() {
                        workload.batch(true, value);
                    }
                    let started = Instant::now();
                    for value in &values {
                        rig.process(value, &mut out);
                        since_commit += 1;
                        if since_commit == BATCHES_PER_COMMIT {
                            rig.commit();
                            since_commit = 0;
                        }
                    }
                    total += started.elapsed();
                }
                total
            })
        });
        let waiting = rig.operator.waiting(0);
        println!(
            "sampling/{name}: {} trace batches out (kept), {} decision records, {} traces \
             pending ({} KiB buffered) at the end",
            out.main,
            out.decisions,
            waiting.events,
            waiting.bytes / 1024
        );
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
