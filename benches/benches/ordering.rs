//! Throughput of the ordering operator in-process, over its real RocksDB state, on one thread.
//!
//! Workload: `K` accounts (subjects `acct-{n:012}`), each event for an account picked at
//! random (splitmix64, uniform), 200-byte JSON values, event time advancing 1 ms per 100 events
//! (a busy partition). Each account produces its sequences from 0 in order, except that one
//! event in ten arrives early: the account's next two sequences are swapped, the second sent at
//! once and the first 1 to 8 records later, so the early one is held in state and released when
//! its predecessor arrives. The default config applies with `first_sequence = 0` (60 s gap
//! timeout: no gap is given up in this workload, which the run checks). The engine's
//! transaction cost is included: `checkpoint`, `commit_into` with the partition checkpoint, and
//! the batch `write` (WAL off, as the engine runs it) every 10,000 records, or every 100,000 (the engine's default `max_records_per_transaction`, which its
//! 100 ms commit interval amounts to at 1M events/s); producing the changelog and the output to
//! Kafka is not.
//!
//! Measurements, one run, all over the same event stream generator:
//! - `ordering/model_sort_per_key`: the baseline: a plain in-memory sort per key (a hash map of
//!   key -> next sequence and held events, no state store, no commits) over the 10%
//!   out-of-order stream;
//! - `ordering/in_order_<K>_keys_commit_<N>`: the operator, every event in order (nothing held);
//! - `ordering/out_of_order_10pct_<K>_keys_commit_<N>`: the operator on the 10% out-of-order
//!   stream.
//!
//! One iteration is one chunk of records (100,000; 20,000 with `BREADCRUMB_BENCH_QUICK=1`) over
//! state that carries across iterations. `K` is 10,000 (every key's head stays in the operator's
//! cache; a transaction of 10,000 records changes about 6,300 heads) and 1,000,000 (ten times
//! the cache: most records read their head from RocksDB). A commit writes one head per key
//! changed in the transaction: the run prints changelog records per input record. Figures are
//! reported, never asserted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hint::black_box;
use std::time::{Duration, Instant};

use breadcrumb_operators::ordering::{Ordering, OrderingConfig, OrderingMetrics};
use breadcrumb_operators::testing::CountingEmitter;
use breadcrumb_operators::{Disposition, Operator};
use breadcrumb_schemas::{Envelope, RawRecord};
use breadcrumb_state::{Checkpoint, PartitionStore, StateBackend, StateOptions, StoreId};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tempfile::TempDir;

const PARTITION: i32 = 0;
const VALUE_LEN: usize = 200;
const BASE_TIME_MS: i64 = 1_700_000_000_000;
const EVENTS_PER_MS: u64 = 100;
/// One new pick in this many swaps the account's next two sequences: with `q = 1/9`, one event
/// in ten arrives early (`q / (1 + q)`).
const SWAP_ONE_IN: u64 = 9;

#[derive(Debug, Clone, Copy)]
struct Sizes {
    records_per_chunk: u64,
    quick: bool,
}

impl Sizes {
    fn from_env() -> Self {
        let quick = std::env::var("BREADCRUMB_BENCH_QUICK").is_ok_and(|value| value == "1");
        Self {
            records_per_chunk: if quick { 20_000 } else { 100_000 },
            quick,
        }
    }
}

/// One event of the stream: account and sequence.
#[derive(Debug, Clone, Copy)]
struct Pick {
    account: u64,
    sequence: u64,
}

/// The event stream: accounts at random; with `out_of_order`, one event in ten arrives early:
/// an account's next two sequences are swapped, the second sent now and the first 1 to 8
/// records later (reordering in transit, whatever the key count).
struct Workload {
    rng: u64,
    keys: u64,
    out_of_order: bool,
    /// Per account: next sequence to produce.
    next: Vec<u64>,
    /// Events held back by a swap, with the record index they are due at, in due order.
    delayed: VecDeque<(u64, Pick)>,
    produced: u64,
    early: u64,
}

impl Workload {
    fn new(keys: u64, out_of_order: bool) -> Self {
        Self {
            rng: 0x9E37_79B9_7F4A_7C15,
            keys,
            out_of_order,
            next: vec![0; keys as usize],
            delayed: VecDeque::new(),
            produced: 0,
            early: 0,
        }
    }

    /// Splitmix64: cheap, deterministic.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chunk(&mut self, records: u64, picks: &mut Vec<Pick>) {
        picks.clear();
        for _ in 0..records {
            let pick = match self.delayed.front() {
                Some(&(due, pick)) if due <= self.produced => {
                    self.delayed.pop_front();
                    pick
                }
                _ => {
                    let random = self.next_random();
                    let account = random % self.keys;
                    let slot = account as usize;
                    let sequence = self.next[slot];
                    if self.out_of_order && (random >> 40).is_multiple_of(SWAP_ONE_IN) {
                        self.next[slot] += 2;
                        self.early += 1;
                        // Due order is kept by never scheduling before the last delayed event.
                        let delay = 1 + (random >> 20) % 8;
                        let due = (self.produced + delay)
                            .max(self.delayed.back().map_or(0, |(due, _)| *due));
                        self.delayed.push_back((due, Pick { account, sequence }));
                        Pick {
                            account,
                            sequence: sequence + 1,
                        }
                    } else {
                        self.next[slot] += 1;
                        Pick { account, sequence }
                    }
                }
            };
            picks.push(pick);
            self.produced += 1;
        }
    }
}

/// Fills the envelope and the record of one event, as a decoder reusing its buffers would.
struct EventBuilder {
    event: Envelope,
    value: Vec<u8>,
    account_at: usize,
}

impl EventBuilder {
    fn new() -> Self {
        let mut value = String::from(
            r#"{"specversion":"1.0","id":"x","source":"/payments","subject":"acct-000000000000","type":"payment.captured","data":{"amount":1234,"pad":""#,
        );
        let account_at = value.find("000000000000").unwrap();
        while value.len() < VALUE_LEN - 3 {
            value.push('x');
        }
        value.push_str(r#""}}"#);
        assert_eq!(value.len(), VALUE_LEN);
        Self {
            event: Envelope::default(),
            value: value.into_bytes(),
            account_at,
        }
    }

    fn fill(&mut self, pick: Pick, index: u64) {
        let digits = digits12(pick.account);
        self.event.subject.clear();
        self.event.subject.push_str("acct-");
        self.event
            .subject
            .extend(digits.iter().map(|&digit| digit as char));
        self.event.sequence = Some(pick.sequence);
        self.event.event_time_ms = BASE_TIME_MS + (index / EVENTS_PER_MS) as i64;
        self.value[self.account_at..self.account_at + 12].copy_from_slice(&digits);
    }
}

fn digits12(mut n: u64) -> [u8; 12] {
    let mut out = [b'0'; 12];
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out
}

/// What dedupe appends before the record reaches ordering in the engine's chain.
const HEADERS: [(&str, Option<&[u8]>); 1] = [("breadcrumb-first-seen-ms", Some(b"1700000000000"))];

/// The baseline: a plain sort per key in memory, no store, no commits.
struct Model {
    sizes: Sizes,
    workload: Workload,
    picks: Vec<Pick>,
    builder: EventBuilder,
    keys: HashMap<String, (u64, BTreeMap<u64, Vec<u8>>)>,
    emitted: u64,
    index: u64,
}

impl Model {
    fn new(sizes: Sizes, keys: u64) -> Self {
        Self {
            sizes,
            workload: Workload::new(keys, true),
            picks: Vec::new(),
            builder: EventBuilder::new(),
            keys: HashMap::new(),
            emitted: 0,
            index: 0,
        }
    }

    fn run_chunk(&mut self) -> Duration {
        let mut picks = std::mem::take(&mut self.picks);
        self.workload
            .chunk(self.sizes.records_per_chunk, &mut picks);
        let started = Instant::now();
        for &pick in &picks {
            self.builder.fill(pick, self.index);
            self.index += 1;
            let event = &self.builder.event;
            let sequence = event.sequence.unwrap();
            let entry = match self.keys.get_mut(&event.subject) {
                Some(entry) => entry,
                None => self
                    .keys
                    .entry(event.subject.clone())
                    .or_insert((0, BTreeMap::new())),
            };
            if sequence == entry.0 {
                entry.0 += 1;
                self.emitted += 1;
                while let Some(held) = entry.1.remove(&entry.0) {
                    black_box(held);
                    entry.0 += 1;
                    self.emitted += 1;
                }
            } else if sequence > entry.0 {
                entry.1.insert(sequence, self.builder.value.clone());
            }
        }
        let elapsed = started.elapsed();
        self.picks = picks;
        elapsed
    }
}

/// The operator over RocksDB, committing as the engine does.
struct OrderingRun {
    label: String,
    sizes: Sizes,
    backend: StateBackend,
    store: StoreId,
    operator: Ordering,
    stores: Vec<PartitionStore>,
    workload: Workload,
    picks: Vec<Pick>,
    builder: EventBuilder,
    out: CountingEmitter,
    next_offset: i64,
    commit_every: usize,
    since_commit: usize,
    changelog_next: i64,
    commits: u64,
    /// Last, so RocksDB closes before its directory goes.
    _dir: TempDir,
}

impl OrderingRun {
    fn new(
        sizes: Sizes,
        keys: u64,
        out_of_order: bool,
        commit_every: usize,
        label: String,
    ) -> Self {
        let dir = TempDir::new().expect("temp dir");
        let operator = Ordering::new(
            "pay",
            OrderingConfig {
                first_sequence: Some(0),
                ..OrderingConfig::default()
            },
            OrderingMetrics::unregistered(),
        );
        let names: Vec<String> = operator.stores().into_iter().map(|s| s.name).collect();
        let backend =
            StateBackend::open(dir.path(), &names, &StateOptions::default()).expect("open state");
        let store = backend.store_id(operator.store_name()).unwrap();
        let mut run = Self {
            label,
            sizes,
            _dir: dir,
            stores: vec![backend.partition_store(store, PARTITION)],
            backend,
            store,
            operator,
            workload: Workload::new(keys, out_of_order),
            picks: Vec::new(),
            builder: EventBuilder::new(),
            out: CountingEmitter::default(),
            next_offset: 0,
            commit_every,
            since_commit: 0,
            changelog_next: 0,
            commits: 0,
        };
        run.operator
            .open_partition(&mut run.stores)
            .expect("open partition");
        run
    }

    fn run_chunk(&mut self) -> Duration {
        let mut picks = std::mem::take(&mut self.picks);
        self.workload
            .chunk(self.sizes.records_per_chunk, &mut picks);
        let started = Instant::now();
        for &pick in &picks {
            self.builder.fill(pick, self.next_offset as u64);
            let record = RawRecord {
                topic: "payments",
                partition: PARTITION,
                offset: self.next_offset,
                timestamp_ms: None,
                key: Some(self.builder.event.subject.as_bytes()),
                value: Some(&self.builder.value),
                headers: &HEADERS,
            };
            let disposition = self
                .operator
                .process(
                    &record,
                    &self.builder.event,
                    &mut self.stores,
                    &mut self.out,
                )
                .expect("process");
            debug_assert_eq!(disposition, Disposition::Handled);
            self.next_offset += 1;
            self.since_commit += 1;
            if self.since_commit == self.commit_every {
                self.commit();
            }
        }
        // Transactions span chunks: a chunk pays for the commits that fall in it.
        let elapsed = started.elapsed();
        self.picks = picks;
        elapsed
    }

    /// What the engine does to the partition at a transaction commit, minus Kafka.
    fn commit(&mut self) {
        let last = self.next_offset - 1;
        self.operator
            .checkpoint(&mut self.stores, last)
            .expect("checkpoint");
        self.changelog_next += self.stores[0].dirty_len() as i64;
        let mut batch = self.backend.commit_batch();
        self.stores[0].commit_into(&mut batch);
        batch.set_checkpoint(
            self.store,
            PARTITION,
            Checkpoint {
                changelog_next_offset: self.changelog_next,
                input_next_offset: last + 1,
            },
        );
        batch.write().expect("commit");
        self.since_commit = 0;
        self.commits += 1;
    }

    /// Prints what the run did and checks every event went downstream in order.
    fn report(&self) {
        if self.next_offset == 0 {
            return;
        }
        let waiting = self.operator.waiting(PARTITION);
        eprintln!(
            "{}: {} records ({} early), {} main, {} still held, {} gaps, {} late, {} repeats; \
             {} commits, {} changelog records ({:.2} per record)",
            self.label,
            self.next_offset,
            self.workload.early,
            self.out.main,
            waiting.events,
            self.out.gaps,
            self.out.late,
            self.out.duplicates,
            self.commits,
            self.changelog_next,
            self.changelog_next as f64 / self.next_offset as f64,
        );
        assert_eq!(self.out.main + waiting.events, self.next_offset as u64);
        assert_eq!(self.out.gaps + self.out.late + self.out.duplicates, 0);
    }
}

fn ordering(c: &mut Criterion) {
    let sizes = Sizes::from_env();
    let mut group = c.benchmark_group("ordering");
    group
        .throughput(Throughput::Elements(sizes.records_per_chunk))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(if sizes.quick { 2 } else { 5 }));

    let mut model = Model::new(sizes, 10_000);
    group.bench_function("model_sort_per_key", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| model.run_chunk()).sum())
    });
    black_box(model.emitted);

    // (keys, commit every, label): 10,000 records per transaction as the dedupe bench commits;
    // 100,000 is the engine's `max_records_per_transaction`, which is what its 100 ms commit
    // interval amounts to at 1M events/s.
    let runs: &[(u64, usize, &str)] = &[
        (10_000, 10_000, "10k_keys_commit_10k"),
        (10_000, 100_000, "10k_keys_commit_100k"),
        (1_000_000, 10_000, "1M_keys_commit_10k"),
    ];
    for &(keys, commit_every, suffix) in runs {
        for (out_of_order, name) in [(false, "in_order"), (true, "out_of_order_10pct")] {
            let label = format!("ordering/{name}_{suffix}");
            let mut run = OrderingRun::new(sizes, keys, out_of_order, commit_every, label);
            group.bench_function(format!("{name}_{suffix}"), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| run.run_chunk()).sum())
            });
            run.report();
        }
    }
    group.finish();
}

criterion_group!(benches, ordering);
criterion_main!(benches);
