//! Throughput of the dedupe operator in-process, over its real RocksDB state, on one thread.
//!
//! Workload: ids `pay-{n:012}` with `n` counting up, 200-byte JSON values carrying the id (so
//! every event's digest differs), event time `BASE + n` ms. After every 9 new ids comes one copy
//! (same value, same event time, so a late retry) of an id among the last 10,000: 10% of the
//! records are duplicates. The default 7-day horizon keeps every key live, so the state only
//! grows; the bloom filter is sized for the total key count, as a deployment expecting that many
//! keys per horizon would configure it. The engine's transaction cost is included: every
//! 10,000 records (`BREADCRUMB_BENCH_COMMIT_EVERY` overrides it) `checkpoint`, a pass over the
//! dirty entries (which the engine turns into changelog records), `commit_into` with the
//! partition checkpoint, and the batch `write` (WAL off, as the engine runs it). Producing the
//! changelog and the output to Kafka is not included. RocksDB's flushes and compactions run on
//! its background threads (the machine's other core).
//!
//! Three measurements, one run, the same workload:
//! - `dedupe/floor_key_and_hash`: the loop with the operator replaced by building the store key
//!   and hashing the value: the cost floor of any per-record work.
//! - `dedupe/hashmap_<N>_keys`: the baseline, a plain in-memory dedupe (a std `HashMap` from
//!   store key to first-seen time and digest, no persistence, no transactions) over the same
//!   records, so the operator's figure has something to be compared with on the same machine
//!   in the same run.
//! - `dedupe/rocksdb_<N>_keys`: the operator.
//!
//! The last two run one chunk of `N / 11` new keys (plus their 10% copies, about 1.01M records at
//! N = 10M) per iteration over a state that keeps growing across iterations. The warm-up is
//! exactly one chunk and the 10 samples are one chunk each (flat sampling; criterion warns that
//! it cannot complete 10 samples in the 1 ms target: that target is what forces one chunk per
//! sample), so the samples measure the state growing from `N / 11` to `N` distinct keys, and the
//! run ends with `N` keys stored.
//!
//! Criterion's figures are wall-clock. The machine is often shared, so the summary printed at the
//! end also gives the measured chunks' throughput per CPU-second of the thread that ran them (the
//! issue's "events/s on one core"), the CPU the whole process spent (RocksDB's background
//! threads included), and the operator's ratio to the baseline. It also checks that the operator
//! decided as the workload dictates (a wrong decision makes the figures meaningless).
//!
//! `N` is 10M; `BREADCRUMB_BENCH_QUICK=1` makes it 1M, for quick checks. For investigation:
//! `BREADCRUMB_BENCH_RANDOM_IDS=1` (ids in random key order), `BREADCRUMB_BENCH_COMMIT_EVERY`, `BREADCRUMB_BENCH_WRITE_BUFFER_MB`,
//! `BREADCRUMB_BENCH_BLOCK_CACHE_MB`, and `BREADCRUMB_BENCH_KEEP_STATE=1` (keeps the RocksDB
//! directory, to read its `LOG`).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use breadcrumb_operators::dedupe::{Dedupe, DedupeConfig};
use breadcrumb_operators::testing::CountingEmitter;
use breadcrumb_operators::{Disposition, Operator};
use breadcrumb_schemas::{Envelope, RawRecord};
use breadcrumb_state::{Checkpoint, PartitionStore, StateBackend, StateOptions, StoreId};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tempfile::TempDir;

const PARTITION: i32 = 0;
const DEFAULT_COMMIT_EVERY: usize = 10_000;
const VALUE_LEN: usize = 200;
/// Copies are of one of the last this many new ids.
const RECENT: u64 = 10_000;
/// One copy after this many new ids: 10% of the records.
const NEW_PER_COPY: u64 = 9;
/// Warm-up chunk plus 10 samples.
const CHUNKS: u64 = 11;
const BASE_TIME_MS: i64 = 1_700_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Sizes {
    label: &'static str,
    total_keys: u64,
    /// New keys per chunk, a multiple of [`NEW_PER_COPY`] so every chunk has as many records.
    new_per_chunk: u64,
    /// Records per transaction.
    commit_every: usize,
}

impl Sizes {
    fn from_env() -> Self {
        let quick = std::env::var("BREADCRUMB_BENCH_QUICK").is_ok_and(|value| value == "1");
        let (label, total_keys): (&str, u64) = if quick {
            ("1M", 1_000_000)
        } else {
            ("10M", 10_000_000)
        };
        let new_per_chunk = total_keys.div_ceil(CHUNKS).div_ceil(NEW_PER_COPY) * NEW_PER_COPY;
        let commit_every = std::env::var("BREADCRUMB_BENCH_COMMIT_EVERY")
            .ok()
            .and_then(|value| value.parse().ok())
            .filter(|&records: &usize| records > 0)
            .unwrap_or(DEFAULT_COMMIT_EVERY);
        Self {
            label,
            total_keys,
            new_per_chunk,
            commit_every,
        }
    }

    fn records_per_chunk(&self) -> u64 {
        self.new_per_chunk + self.new_per_chunk / NEW_PER_COPY
    }
}

fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec; the clocks used exist on every Linux.
    let result = unsafe { libc::clock_gettime(clock, &mut time) };
    assert_eq!(result, 0, "clock_gettime");
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// Wall and CPU time of the measured chunks (the warm-up chunk excluded).
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    records: u64,
    wall: Duration,
    thread_cpu: Duration,
    process_cpu: Duration,
}

/// Clocks read around one timed chunk.
struct Stopwatch {
    wall: Instant,
    thread_cpu: Duration,
    process_cpu: Duration,
}

impl Stopwatch {
    fn start() -> Self {
        Self {
            thread_cpu: cpu_time(libc::CLOCK_THREAD_CPUTIME_ID),
            process_cpu: cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID),
            wall: Instant::now(),
        }
    }

    /// Stops the clocks; adds the chunk to `tally` unless it is the warm-up chunk.
    fn stop(self, tally: &mut Tally, records: u64, warm_up: bool) -> Duration {
        let wall = self.wall.elapsed();
        if !warm_up {
            tally.records += records;
            tally.wall += wall;
            tally.thread_cpu += cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - self.thread_cpu;
            tally.process_cpu += cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - self.process_cpu;
        }
        wall
    }
}

impl Tally {
    fn per_second(records: u64, time: Duration) -> f64 {
        records as f64 / time.as_secs_f64().max(1e-9)
    }

    fn wall_rate(&self) -> f64 {
        Self::per_second(self.records, self.wall)
    }

    fn cpu_rate(&self) -> f64 {
        Self::per_second(self.records, self.thread_cpu)
    }

    fn print(&self, name: &str) {
        eprintln!(
            "{name}: {} records measured: {:.0}/s wall, {:.0}/s per CPU-second of the \
             running thread; process CPU {:.2}s for {:.2}s wall ({:.2} cores)",
            self.records,
            self.wall_rate(),
            self.cpu_rate(),
            self.process_cpu.as_secs_f64(),
            self.wall.as_secs_f64(),
            self.process_cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9),
        );
    }
}

/// The id sequence, generated chunk by chunk outside the timed sections.
struct Workload {
    next_new: u64,
    rng: u64,
}

impl Workload {
    fn new() -> Self {
        Self {
            next_new: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// Splitmix64: cheap, deterministic, good enough to pick a recent id.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The id numbers of the next chunk: `new_keys` new ids, one copy after every 9.
    fn chunk(&mut self, new_keys: u64, ids: &mut Vec<u64>) {
        ids.clear();
        for _ in 0..new_keys {
            ids.push(self.next_new);
            self.next_new += 1;
            if self.next_new.is_multiple_of(NEW_PER_COPY) {
                let back = self.next_random() % self.next_new.min(RECENT);
                ids.push(self.next_new - 1 - back);
            }
        }
    }
}

/// Fills the envelope and the value of event `n`, as a decoder reusing its buffers would.
struct EventBuilder {
    event: Envelope,
    value: Vec<u8>,
    id_at: usize,
    /// `BREADCRUMB_BENCH_RANDOM_IDS=1`: the id of event `n` is a fixed permutation of `n`, so
    /// ids arrive in random key order (like UUIDs) instead of ascending (like time-ordered ids).
    random_ids: bool,
}

impl EventBuilder {
    fn new() -> Self {
        let mut value = String::from(
            r#"{"specversion":"1.0","id":"pay-000000000000","source":"/payments","type":"payment.captured","data":{"amount":1234,"currency":"EUR","pad":""#,
        );
        let id_at = value.find("000000000000").unwrap();
        while value.len() < VALUE_LEN - 3 {
            value.push('x');
        }
        value.push_str(r#""}}"#);
        assert_eq!(value.len(), VALUE_LEN);
        Self {
            event: Envelope::default(),
            value: value.into_bytes(),
            id_at,
            random_ids: std::env::var("BREADCRUMB_BENCH_RANDOM_IDS")
                .is_ok_and(|value| value == "1"),
        }
    }

    fn fill(&mut self, n: u64) {
        const IDS: u128 = 1_000_000_000_000;
        // Coprime with 10^12, so n -> n * A mod 10^12 is a bijection.
        const A: u128 = 780_291_637_733;
        let id = if self.random_ids {
            (u128::from(n) * A % IDS) as u64
        } else {
            n
        };
        let digits = digits12(id);
        self.event.id.clear();
        self.event.id.push_str("pay-");
        self.event
            .id
            .extend(digits.iter().map(|&digit| digit as char));
        self.event.event_time_ms = BASE_TIME_MS + n as i64;
        self.value[self.id_at..self.id_at + 12].copy_from_slice(&digits);
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

/// Stand-in for the operator's xxh3 in the floor (the benches crate does not depend on
/// xxhash-rust): a multiply-fold over 8-byte words, of the same order of cost on 200 bytes.
fn floor_hash(bytes: &[u8]) -> u64 {
    let mut hash = 0x9E37_79B9_7F4A_7C15u64 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().unwrap());
        let product = u128::from(hash ^ word) * 0xA076_1D64_78BD_642F_u128;
        hash = (product as u64) ^ ((product >> 64) as u64);
    }
    for &byte in words.remainder() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

/// The cost floor: build the event, its store key and the value's hash; nothing else.
struct Floor {
    sizes: Sizes,
    workload: Workload,
    ids: Vec<u64>,
    builder: EventBuilder,
    key: Vec<u8>,
}

impl Floor {
    fn new(sizes: Sizes) -> Self {
        Self {
            sizes,
            workload: Workload::new(),
            ids: Vec::new(),
            builder: EventBuilder::new(),
            key: Vec::with_capacity(64),
        }
    }

    fn run_chunk(&mut self) -> Duration {
        self.workload.chunk(self.sizes.new_per_chunk, &mut self.ids);
        let started = Instant::now();
        for &n in &self.ids {
            self.builder.fill(n);
            // What `Dedupe` builds: the event tag, then the tagged id field.
            self.key.clear();
            self.key.push(b'k');
            self.builder
                .event
                .field("id")
                .unwrap()
                .append_key_bytes(&mut self.key);
            black_box((&self.key, floor_hash(&self.builder.value)));
        }
        started.elapsed()
    }
}

/// The baseline: a plain in-memory dedupe over the same records, with what the operator keeps
/// per key (first-seen time and digest) and the same horizon check, but no persistence.
struct HashMapRun {
    sizes: Sizes,
    seen: HashMap<Vec<u8>, (i64, u64)>,
    workload: Workload,
    ids: Vec<u64>,
    builder: EventBuilder,
    key: Vec<u8>,
    stream_time_ms: i64,
    first: u64,
    duplicates: u64,
    chunks: u64,
    tally: Tally,
}

impl HashMapRun {
    fn new(sizes: Sizes) -> Self {
        Self {
            sizes,
            seen: HashMap::new(),
            workload: Workload::new(),
            ids: Vec::new(),
            builder: EventBuilder::new(),
            key: Vec::with_capacity(64),
            stream_time_ms: i64::MIN,
            first: 0,
            duplicates: 0,
            chunks: 0,
            tally: Tally::default(),
        }
    }

    fn run_chunk(&mut self) -> Duration {
        const TTL_MS: i64 = 7 * 24 * 60 * 60 * 1000;
        self.workload.chunk(self.sizes.new_per_chunk, &mut self.ids);
        let clocks = Stopwatch::start();
        for &n in &self.ids {
            self.builder.fill(n);
            self.key.clear();
            self.key.push(b'k');
            self.builder
                .event
                .field("id")
                .unwrap()
                .append_key_bytes(&mut self.key);
            self.stream_time_ms = self.stream_time_ms.max(self.builder.event.event_time_ms);
            let digest = floor_hash(&self.builder.value);
            match self.seen.get(self.key.as_slice()) {
                Some(&(first_seen, _)) if first_seen + TTL_MS > self.stream_time_ms => {
                    self.duplicates += 1;
                }
                _ => {
                    self.seen
                        .insert(self.key.clone(), (self.stream_time_ms, digest));
                    self.first += 1;
                }
            }
        }
        let records = self.ids.len() as u64;
        let elapsed = clocks.stop(&mut self.tally, records, self.chunks == 0);
        self.chunks += 1;
        black_box((self.first, self.duplicates));
        elapsed
    }
}

/// The state options: the defaults, or `BREADCRUMB_BENCH_WRITE_BUFFER_MB` /
/// `BREADCRUMB_BENCH_BLOCK_CACHE_MB` (the engine's `[state]` sizes) to try others.
fn state_options() -> StateOptions {
    let mebibytes = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse::<usize>().ok())
            .map(|value| value << 20)
    };
    let defaults = StateOptions::default();
    StateOptions {
        write_buffer_bytes: mebibytes("BREADCRUMB_BENCH_WRITE_BUFFER_MB")
            .unwrap_or(defaults.write_buffer_bytes),
        block_cache_bytes: mebibytes("BREADCRUMB_BENCH_BLOCK_CACHE_MB")
            .unwrap_or(defaults.block_cache_bytes),
        ..defaults
    }
}

/// The operator over RocksDB, committing as the engine does.
struct DedupeRun {
    sizes: Sizes,
    backend: StateBackend,
    store: StoreId,
    operator: Dedupe,
    stores: Vec<PartitionStore>,
    workload: Workload,
    ids: Vec<u64>,
    builder: EventBuilder,
    out: CountingEmitter,
    next_offset: i64,
    since_commit: usize,
    changelog_next: i64,
    chunks: u64,
    commits: u64,
    tally: Tally,
    /// Thread CPU of the measured chunks' commits: checkpoint and changelog pass, `commit_into`,
    /// RocksDB write.
    commit_cpu: [Duration; 3],
    /// Deleted at the end unless `BREADCRUMB_BENCH_KEEP_STATE=1` (to read RocksDB's `LOG`).
    /// Last, so that it is dropped after every handle on the database: deleting the directory
    /// under a live RocksDB left a directory of the files its background jobs still wrote.
    _dir: TempDir,
}

impl DedupeRun {
    fn new(sizes: Sizes) -> Self {
        let mut dir = TempDir::new().expect("temp dir");
        if std::env::var("BREADCRUMB_BENCH_KEEP_STATE").is_ok_and(|value| value == "1") {
            eprintln!("dedupe: state kept in {}", dir.path().display());
            dir.disable_cleanup(true);
        }
        let operator = Dedupe::new(
            "pay",
            DedupeConfig {
                bloom_expected_keys_per_partition: sizes.total_keys as usize,
                ..DedupeConfig::default()
            },
        );
        let names: Vec<String> = operator.stores().into_iter().map(|s| s.name).collect();
        let backend = StateBackend::open(dir.path(), &names, &state_options()).expect("open state");
        let store = backend.store_id(operator.store_name()).unwrap();
        let mut run = Self {
            sizes,
            _dir: dir,
            stores: vec![backend.partition_store(store, PARTITION)],
            backend,
            store,
            operator,
            workload: Workload::new(),
            ids: Vec::new(),
            builder: EventBuilder::new(),
            out: CountingEmitter::default(),
            next_offset: 0,
            since_commit: 0,
            changelog_next: 0,
            chunks: 0,
            commits: 0,
            tally: Tally::default(),
            commit_cpu: [Duration::ZERO; 3],
        };
        run.operator
            .open_partition(&mut run.stores)
            .expect("open partition");
        run
    }

    fn run_chunk(&mut self) -> Duration {
        let mut ids = std::mem::take(&mut self.ids);
        self.workload.chunk(self.sizes.new_per_chunk, &mut ids);
        let clocks = Stopwatch::start();
        for &n in &ids {
            self.builder.fill(n);
            let record = RawRecord {
                topic: "payments",
                partition: PARTITION,
                offset: self.next_offset,
                timestamp_ms: None,
                key: None,
                value: Some(&self.builder.value),
                headers: &[],
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
            if self.since_commit == self.sizes.commit_every {
                self.commit();
            }
        }
        if self.since_commit > 0 {
            self.commit();
        }
        let elapsed = clocks.stop(&mut self.tally, ids.len() as u64, self.chunks == 0);
        self.ids = ids;
        self.chunks += 1;
        elapsed
    }

    /// What the engine does to the partition at a transaction commit, minus Kafka.
    fn commit(&mut self) {
        let started = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
        let last = self.next_offset - 1;
        self.operator
            .checkpoint(&mut self.stores, last)
            .expect("checkpoint");
        // The engine reads every dirty entry to produce the changelog records.
        let mut changelog_bytes = 0;
        for entry in self.stores[0].dirty() {
            changelog_bytes += entry.key.len() + entry.value.map_or(0, <[u8]>::len);
            self.changelog_next += 1;
        }
        black_box(changelog_bytes);
        let changelog_done = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
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
        let batch_done = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
        batch.write().expect("commit");
        let written = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
        if self.chunks > 0 {
            self.commit_cpu[0] += changelog_done - started;
            self.commit_cpu[1] += batch_done - changelog_done;
            self.commit_cpu[2] += written - batch_done;
        }
        self.since_commit = 0;
        self.commits += 1;
    }

    /// Prints what the run reached and checks the operator decided as the workload dictates.
    fn report(&self) {
        if self.chunks == 0 {
            return;
        }
        let records = self.next_offset as u64;
        let distinct = self.workload.next_new;
        eprintln!(
            "dedupe/rocksdb_{}_keys: {} chunks, {records} records, {distinct} distinct keys \
             stored ({} main, {} duplicates, {} conflicts), {} commits of {} records, RocksDB \
             estimate {} keys",
            self.sizes.label,
            self.chunks,
            self.out.main,
            self.out.duplicates,
            self.out.conflicts,
            self.commits,
            self.sizes.commit_every,
            self.backend.estimated_keys(self.store),
        );
        assert_eq!(self.out.main, distinct, "every new id is a first copy");
        assert_eq!(
            self.out.duplicates,
            records - distinct,
            "every copy is a duplicate"
        );
        assert_eq!(self.out.conflicts, 0);
    }
}

fn dedupe(c: &mut Criterion) {
    let sizes = Sizes::from_env();
    let mut group = c.benchmark_group("dedupe");
    group.throughput(Throughput::Elements(sizes.records_per_chunk()));

    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut floor = Floor::new(sizes);
    group.bench_function("floor_key_and_hash", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| floor.run_chunk()).sum())
    });

    // One chunk of warm-up, then one chunk per sample: see the module comment.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_nanos(1))
        .measurement_time(Duration::from_millis(1));
    let mut baseline = HashMapRun::new(sizes);
    group.bench_function(format!("hashmap_{}_keys", sizes.label), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| baseline.run_chunk()).sum())
    });
    let baseline_tally = baseline.tally;
    let baseline_consistent = baseline.first == baseline.workload.next_new;
    drop(baseline);

    let mut run = DedupeRun::new(sizes);
    group.bench_function(format!("rocksdb_{}_keys", sizes.label), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run.run_chunk()).sum())
    });
    group.finish();

    eprintln!();
    if baseline_tally.records > 0 {
        baseline_tally.print(&format!("dedupe/hashmap_{}_keys", sizes.label));
    }
    if run.tally.records > 0 {
        run.tally
            .print(&format!("dedupe/rocksdb_{}_keys", sizes.label));
        let per_record = |time: Duration| time.as_nanos() as f64 / run.tally.records as f64;
        let [changelog, batch, write] = run.commit_cpu;
        eprintln!(
            "dedupe/rocksdb_{}_keys thread CPU per record: {:.0} ns, of which processing {:.0} ns, \
             checkpoint + changelog pass {:.0} ns, commit_into {:.0} ns, RocksDB write {:.0} ns",
            sizes.label,
            per_record(run.tally.thread_cpu),
            per_record(run.tally.thread_cpu - changelog - batch - write),
            per_record(changelog),
            per_record(batch),
            per_record(write),
        );
    }
    if baseline_tally.records > 0 && run.tally.records > 0 {
        eprintln!(
            "dedupe/rocksdb_{}_keys vs hashmap: {:.2}x the baseline's time per record (wall), \
             {:.2}x per CPU-second of the running thread",
            sizes.label,
            baseline_tally.wall_rate() / run.tally.wall_rate(),
            baseline_tally.cpu_rate() / run.tally.cpu_rate(),
        );
    }
    assert!(baseline_consistent, "the baseline saw every new id once");
    run.report();
}

criterion_group!(benches, dedupe);
criterion_main!(benches);
