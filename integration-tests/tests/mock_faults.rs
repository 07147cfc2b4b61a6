//! Faults only a broker can make, injected by librdkafka's mock cluster into the real engine,
//! run in this process: a slow broker, request errors that librdkafka retries, errors that
//! make the transaction abortable, fatal (fencing) errors, transaction and group coordinators
//! moving between the brokers of a 3-broker cluster, partition leaders moving, and brokers
//! going down and coming back. Then log compaction of the changelogs: state restored from a
//! compacted changelog (tombstones kept or removed, compacted head with an
//! uncompacted tail, a restore resumed from a checkpoint) equals the engine's own.
//!
//! Every scenario ends with the shared verifier (`common/invariants.rs`, the one `faults.rs`
//! uses): no loss, no duplicates, per-key order, dead letters exactly once, the ledger, local
//! state equal to the committed changelogs, no canary in the logs or `/metrics`.
//!
//! Two things the mock does not do, and how the tests make up for them:
//! - it shows records of aborted transactions to `read_committed` readers: the engine journals
//!   transaction outcomes (`transaction_journal_path`) and every check counts committed
//!   transactions only;
//! - it does not store offsets committed inside a transaction (`TxnOffsetCommit` is answered and
//!   forgotten), which Kafka makes the group's when the transaction commits. An [`OffsetMirror`]
//!   does that from the journal; without it an engine that recreates its clients after a fatal
//!   error would rejoin at offset 0 and republish everything.
//!
//! Seeds are fixed (`BREADCRUMB_FAULT_SEED` replays another); run with `--nocapture` for the
//! tables. To see what librdkafka does, set `BREADCRUMB_TEST_KAFKA_DEBUG` to its `debug` contexts
//! (`eos,cgrp,broker`) and `BREADCRUMB_TEST_LOG` to a log filter that lets them through
//! (`info,librdkafka=debug`).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use breadcrumb_engine::config::EngineConfig;
use breadcrumb_engine::http::Health;
use breadcrumb_engine::metrics::Metrics;
use breadcrumb_engine::runtime::context::EndOfPartitionContext;
use breadcrumb_engine::runtime::restore::{restore_partition, RestoreMetrics, RestoreTarget};
use breadcrumb_engine::runtime::{self, pipeline::declared_store_names};
use breadcrumb_engine::verify::read_topic;
use breadcrumb_integration_tests::{
    base_config, committed_offsets, consume_all, watermarks, ConsumedRecord,
};
use breadcrumb_state::{StateBackend, StateOptions};
use common::invariants::{
    check_invariants, check_state, compare_states, plant_canaries, print_table,
    rebuild_from_changelog, Input, Invariants, Row,
};
use common::{committed_transactions, Scenario};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::bindings;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use RDKafkaRespErr::*;

const PARTITIONS: i32 = 4;
const CHUNK: usize = 250;
const BROKERS: i32 = 3;
/// Leads every partition of the input topic: the test's own producer talks to it only.
const INPUT_BROKER: i32 = 1;
/// Leads every partition the engine writes, so Produce errors injected into it meet the
/// engine and never the test's producer.
const ENGINE_BROKER: i32 = 2;
/// The mock's `group.initial.rebalance.delay.ms` (3 s by default).
const INITIAL_REBALANCE_DELAY_MS: i32 = 100;
/// Leads the changelog whose Produce requests fail in the compaction scenario.
const CHANGELOG_BROKER: i32 = 3;
/// Time for the engine to catch up with a chunk, faults included.
const CATCH_UP: Duration = Duration::from_secs(45);
/// The suite runs on a compressed clock (6 s sessions, brokers down for 0.5 to 2.5 s), and so do
/// its clients' reconnects: librdkafka's backoff doubles up to 10 s by default, which would keep
/// a member away from a group coordinator that is back for longer than its session lasts.
const RECONNECT_BACKOFF_MAX_MS: u64 = 1_000;

fn seed(default: u64) -> u64 {
    let seed = std::env::var("BREADCRUMB_FAULT_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default);
    println!("fault schedule seed {seed} (replay with BREADCRUMB_FAULT_SEED={seed})");
    seed
}

/// What the engines of this process logged (one subscriber per process, installed once).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("BREADCRUMB_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            ))
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        buffer
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // Echoed to stderr too, so a failing test shows what the engine said.
        let _ = std::io::stderr().write_all(bytes);
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs_text() -> String {
    String::from_utf8_lossy(
        &captured_logs()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
    .into_owned()
}

/// A mock cluster, owned by the client whose `test.mock.num.brokers` created it. The safe
/// [`MockCluster`] API lacks errors answered after a delay, so those go through the bindings.
struct Mock {
    client: BaseProducer,
}

impl Mock {
    fn new(brokers: i32) -> Result<Self> {
        let client: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .create()?;
        // A group's first member waits 3 s (`group.initial.rebalance.delay.ms`) for others to
        // join; every scenario's group starts with the offset mirror alone, then the engine.
        // SAFETY: the cluster lives as long as `client`.
        unsafe {
            bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(
                bindings::rd_kafka_handle_mock_cluster(client.client().native_ptr()),
                INITIAL_REBALANCE_DELAY_MS,
            );
        }
        Ok(Self { client })
    }

    fn cluster(&self) -> MockCluster<'_, DefaultProducerContext> {
        self.client
            .client()
            .mock_cluster()
            .expect("the client was created with test.mock.num.brokers")
    }

    /// The next requests of `api`, by any client to any broker, are answered with these errors
    /// (Produce errors go to [`ENGINE_BROKER`] only, so the test's producer never meets them).
    fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        if api == RDKafkaApiKey::Produce {
            let delayed: Vec<(RDKafkaRespErr, u32)> =
                errors.iter().map(|error| (*error, 0)).collect();
            self.errors_with_delay(ENGINE_BROKER, api, &delayed);
        } else {
            self.cluster().request_errors(api, errors);
        }
    }

    /// Broker `broker` answers the next requests of `api` with these errors, each after its
    /// delay (a slow failing broker).
    fn errors_with_delay(&self, broker: i32, api: RDKafkaApiKey, errors: &[(RDKafkaRespErr, u32)]) {
        for (error, delay_ms) in errors {
            // SAFETY: the cluster lives as long as `self.client`; one (error, rtt) pair is
            // passed, matching `cnt` = 1, as the C ints the variadic function reads.
            unsafe {
                let cluster =
                    bindings::rd_kafka_handle_mock_cluster(self.client.client().native_ptr());
                bindings::rd_kafka_mock_broker_push_request_error_rtts(
                    cluster,
                    broker,
                    api as i16,
                    1,
                    *error as std::os::raw::c_int,
                    *delay_ms as std::os::raw::c_int,
                );
            }
        }
    }
}

/// Makes the offsets of the engine's committed transactions the group's, as Kafka does when a
/// transaction commits (the mock forgets `TxnOffsetCommit`). A member of the engine's group,
/// subscribed to a topic of its own (so nothing the engine reads is assigned to it), commits
/// the offsets that the journal's `pending` line gave each transaction journaled `committed`.
/// It trusts the engine to journal the offsets it sent: a bug that sends others is not caught
/// here (the Nisshi suite covers it).
struct OffsetMirror {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64>>>,
}

impl OffsetMirror {
    fn start(bootstrap: &str, group: &str, own_topic: &str, journal: PathBuf) -> Result<Self> {
        let consumer: BaseConsumer = base_config(bootstrap)
            .set("group.id", group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set(
                "reconnect.backoff.max.ms",
                RECONNECT_BACKOFF_MAX_MS.to_string(),
            )
            .create()?;
        consumer.subscribe(&[own_topic])?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("offset-mirror".to_owned())
            .spawn(move || -> Result<u64> {
                let mut mirrored: BTreeMap<(String, i32), i64> = BTreeMap::new();
                let mut commits = 0;
                while !stopping.load(Ordering::Acquire) {
                    if let Some(Err(error)) = consumer.poll(Duration::from_millis(20)) {
                        tracing::debug!(%error, "offset mirror consumer error");
                    }
                    let target = journaled_offsets(&journal)?;
                    if target == mirrored {
                        continue;
                    }
                    let mut list = TopicPartitionList::new();
                    for ((topic, partition), offset) in &target {
                        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
                    }
                    // Refused while the group rebalances: tried again on the next round.
                    if consumer.commit(&list, CommitMode::Sync).is_ok() {
                        mirrored = target;
                        commits += 1;
                    }
                }
                Ok(commits)
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the mirror; returns how many commits it made.
    fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(outcome)) => outcome,
            Some(Err(_)) => bail!("offset mirror panicked"),
            None => Ok(0),
        }
    }
}

impl Drop for OffsetMirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The offsets of the journal's committed transactions: per input partition, the furthest.
fn journaled_offsets(journal: &Path) -> Result<BTreeMap<(String, i32), i64>> {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    let mut pending: BTreeMap<&str, Vec<(String, i32, i64)>> = BTreeMap::new();
    let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
    // A line is complete once it ends with a newline; the last one may be half written.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    for line in complete.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("pending"), Some(txn)) => {
                let mut list = Vec::new();
                for item in words.next().unwrap_or_default().split(',') {
                    let parsed = item.rsplit_once('=').and_then(|(place, offset)| {
                        let (topic, partition) = place.rsplit_once(':')?;
                        Some((
                            topic.to_owned(),
                            partition.parse().ok()?,
                            offset.parse().ok()?,
                        ))
                    });
                    list.extend(parsed);
                }
                pending.insert(txn, list);
            }
            (Some("committed"), Some(txn)) => {
                for (topic, partition, offset) in pending.remove(txn).unwrap_or_default() {
                    let entry = offsets.entry((topic, partition)).or_insert(offset);
                    *entry = (*entry).max(offset);
                }
            }
            _ => {}
        }
    }
    Ok(offsets)
}

/// The engine, run in this process as `breadcrumb run` runs it.
struct Engine {
    metrics: Metrics,
    shutdown: Arc<AtomicBool>,
    thread: JoinHandle<breadcrumb_engine::error::Result<()>>,
}

impl Engine {
    fn start(config: Arc<EngineConfig>) -> Result<Self> {
        captured_logs();
        let metrics = Metrics::new();
        let shutdown = Arc::new(AtomicBool::new(false));
        let thread = {
            let metrics = metrics.clone();
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name("breadcrumb-engine".to_owned())
                .spawn(move || runtime::run(config, metrics, Health::new(), shutdown))?
        };
        Ok(Self {
            metrics,
            shutdown,
            thread,
        })
    }

    fn stop(self) -> Result<Metrics> {
        self.shutdown.store(true, Ordering::Release);
        match self.thread.join() {
            Ok(outcome) => outcome.context("the engine failed")?,
            Err(_) => bail!("the engine thread panicked"),
        }
        Ok(self.metrics)
    }

    fn transactions(&self, outcome: &str) -> u64 {
        self.metrics
            .transactions
            .with_label_values(&[outcome])
            .get()
    }

    fn restarts(&self) -> u64 {
        self.metrics.producer_restarts.get()
    }
}

/// One scenario: a mock cluster, an ordering pipeline with canaries, the engine, the mirror.
struct Fixture {
    mock: Mock,
    dir: tempfile::TempDir,
    scenario: Scenario,
    config_path: PathBuf,
    config: Arc<EngineConfig>,
    journal: PathBuf,
    input: Input,
    mirror: Option<OffsetMirror>,
    engine: Option<Engine>,
    rng: StdRng,
    started: Instant,
}

impl Fixture {
    fn new(name: &str, seed: u64, input: Input, extra_toml: &str) -> Result<Self> {
        let started = Instant::now();
        let mock = Mock::new(BROKERS)?;
        let bootstrap = mock.cluster().bootstrap_servers();
        let dir = tempfile::TempDir::new()?;
        let mut scenario = Scenario::new(&bootstrap, name);
        scenario.commit_interval_ms = 50;
        scenario.session_timeout_ms = Some(6_000);
        scenario.kafka_toml =
            format!("\"reconnect.backoff.max.ms\" = \"{RECONNECT_BACKOFF_MAX_MS}\"");
        if let Ok(debug) = std::env::var("BREADCRUMB_TEST_KAFKA_DEBUG") {
            scenario.kafka_toml += &format!("\n\"debug\" = \"{debug}\"");
        }
        scenario.extra_toml = format!(
            r#"
[pipelines.payments.ordering]
first_sequence = 1
gap_timeout_ms = 20000
{extra_toml}"#
        );
        plant_canaries(&mut scenario, dir.path())?;
        let cluster = mock.cluster();
        cluster.create_topic(&scenario.input_topic, PARTITIONS, 1)?;
        let config_path = scenario.write_config(dir.path(), "a")?;
        let config = Arc::new(EngineConfig::load(&config_path)?);
        for partition in 0..PARTITIONS {
            cluster.partition_leader(&scenario.input_topic, partition, Some(INPUT_BROKER))?;
        }
        // The mock has no CreateTopics: create what the engine would.
        for spec in runtime::planned_topics(&config)? {
            cluster.create_topic(&spec.name, spec.partitions, 1)?;
            for partition in 0..spec.partitions {
                cluster.partition_leader(&spec.name, partition, Some(ENGINE_BROKER))?;
            }
        }
        let mirror_topic = format!("{}-offset-mirror", scenario.application_id);
        cluster.create_topic(&mirror_topic, 1, 1)?;
        let journal = scenario.journal(dir.path(), "a");
        let mirror = OffsetMirror::start(
            &bootstrap,
            &scenario.application_id,
            &mirror_topic,
            journal.clone(),
        )?;
        drop(cluster);
        Ok(Self {
            mock,
            dir,
            scenario,
            config_path,
            config,
            journal,
            input,
            mirror: Some(mirror),
            engine: None,
            rng: StdRng::seed_from_u64(seed),
            started,
        })
    }

    fn start_engine(&mut self) -> Result<()> {
        self.engine = Some(Engine::start(self.config.clone())?);
        Ok(())
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("engine started")
    }

    fn produce(&mut self, count: usize) -> Result<()> {
        self.input.produce(&self.scenario, count)
    }

    /// Waits until the group's committed offsets reach the end of every input partition.
    fn wait_consumed(&self, what: &str) -> Result<()> {
        let deadline = Instant::now() + CATCH_UP;
        loop {
            ensure!(
                !self.engine().thread.is_finished(),
                "the engine stopped during {what}"
            );
            let ends = watermarks(&self.scenario.bootstrap, &self.scenario.input_topic)?;
            let committed = committed_offsets(
                &self.scenario.bootstrap,
                &self.scenario.application_id,
                &self.scenario.input_topic,
            )
            .unwrap_or_default();
            let done = ends.iter().all(|(partition, (_, high))| {
                *high == 0
                    || committed
                        .get(partition)
                        .is_some_and(|offset| offset >= high)
            });
            if done {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "input not consumed within {CATCH_UP:?} of {what}: ends {ends:?}, committed {committed:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A chunk of input through the engine with `fault` applied first.
    fn chunk_with(&mut self, what: &str, fault: impl FnOnce(&Mock)) -> Result<()> {
        fault(&self.mock);
        self.produce(CHUNK)?;
        self.wait_consumed(what)
    }

    /// Stops the engine and the mirror, checks every invariant and prints the table.
    fn finish(mut self, title: &str, rows: &[Row]) -> Result<(Invariants, Metrics, Self)> {
        let engine = self.engine.take().context("engine never started")?;
        let metrics = engine.stop()?;
        let mirror_commits = self.mirror.take().map(OffsetMirror::stop).transpose()?;
        let journals = [self.journal.clone()];
        let mut found =
            check_invariants(&self.scenario, &self.config_path, &journals, &self.input)?;
        check_state(
            &mut found,
            &self.config_path,
            &self.scenario.state_dir(self.dir.path(), "a"),
            &journals,
            None,
        )?;
        found.check_canaries(&[
            ("the engine's logs", &logs_text()),
            ("/metrics", &metrics.render()),
        ]);
        print_table(
            &format!("{title} ({:.0?})", self.started.elapsed()),
            rows,
            self.input.produced,
            &found,
        );
        println!(
            "transactions: {} committed, {} aborted; client recreations: {}; offset mirror commits: {}",
            metrics.transactions.with_label_values(&["committed"]).get(),
            metrics.transactions.with_label_values(&["aborted"]).get(),
            metrics.producer_restarts.get(),
            mirror_commits.unwrap_or(0)
        );
        Ok((found, metrics, self))
    }
}

fn ordering_input(seed: u64, chunks: usize) -> Input {
    Input::new(seed, (chunks * CHUNK) as u64)
}

#[test]
fn mock_slow_brokers_and_retriable_errors_are_ridden_out() -> Result<()> {
    let seed = seed(0x6d6f_636b_0001);
    let chunks = 2 + BROKERS as usize + 6;
    let mut fixture = Fixture::new("mock-retriable", seed, ordering_input(seed, chunks), "")?;
    let txn_id = fixture.config.transactional_id();
    fixture
        .mock
        .cluster()
        .coordinator(MockCoordinator::Transaction(txn_id.clone()), 1)?;
    fixture.start_engine()?;
    fixture.chunk_with("warm-up", |_| {})?;

    // Slow brokers, one at a time: every request to it waits.
    let mut slow = 0;
    for broker in 1..=BROKERS {
        let delay = Duration::from_millis(fixture.rng.random_range(100..400));
        fixture.chunk_with("a slow broker", |mock| {
            mock.cluster()
                .broker_round_trip_time(broker, delay)
                .expect("rtt");
        })?;
        fixture
            .mock
            .cluster()
            .broker_round_trip_time(broker, Duration::ZERO)?;
        slow += 1;
    }

    // Errors librdkafka retries by itself, on every transactional API and on Produce.
    let retriable: [(RDKafkaApiKey, &[RDKafkaRespErr]); 5] = [
        (
            RDKafkaApiKey::Produce,
            &[
                RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            ],
        ),
        (
            RDKafkaApiKey::AddPartitionsToTxn,
            &[
                RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
                RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
            ],
        ),
        (
            RDKafkaApiKey::AddOffsetsToTxn,
            &[
                RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
                RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
                RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            ],
        ),
        (
            RDKafkaApiKey::TxnOffsetCommit,
            &[
                RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
                RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
                RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            ],
        ),
        (
            RDKafkaApiKey::EndTxn,
            &[
                RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
                RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
            ],
        ),
    ];
    let mut injected = 0;
    for (api, codes) in retriable {
        let count = fixture.rng.random_range(1..=3);
        let errors: Vec<RDKafkaRespErr> = (0..count)
            .map(|_| codes[fixture.rng.random_range(0..codes.len())])
            .collect();
        injected += errors.len() as u64;
        fixture.chunk_with(&format!("retriable {api:?} errors"), |mock| {
            mock.request_errors(api, &errors)
        })?;
    }
    // A slow coordinator that fails too: each EndTxn answered with a retriable error after
    // 300 to 800 ms.
    let delays: Vec<(RDKafkaRespErr, u32)> = (0..3)
        .map(|_| {
            (
                RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
                fixture.rng.random_range(300..800),
            )
        })
        .collect();
    injected += delays.len() as u64;
    fixture.chunk_with("slow EndTxn errors", |mock| {
        mock.errors_with_delay(1, RDKafkaApiKey::EndTxn, &delays)
    })?;

    let aborted = fixture.engine().transactions("aborted");
    let (found, _, _fixture) = fixture.finish(
        "mock cluster: slow brokers and retriable errors",
        &[
            Row {
                fault: "slow broker (100-400 ms per request)",
                runs: 1,
                injected: slow,
            },
            Row {
                fault: "retriable errors: Produce, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn (some answered after 300-800 ms)",
                runs: 1,
                injected,
            },
        ],
    )?;
    println!("{aborted} transactions aborted (retriable errors should abort none)");
    found.ensure_none()
}

#[test]
fn mock_abortable_errors_abort_rewind_and_commit_exactly_once() -> Result<()> {
    let seed = seed(0x6d6f_636b_0002);
    // Errors that fail the transaction but not the producer: the engine aborts, rewinds to the
    // last commit and processes the records again.
    let abortable: [(RDKafkaApiKey, RDKafkaRespErr); 6] = [
        (
            RDKafkaApiKey::Produce,
            RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        ),
        (RDKafkaApiKey::Produce, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE),
        (
            RDKafkaApiKey::AddPartitionsToTxn,
            RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        ),
        (
            RDKafkaApiKey::AddOffsetsToTxn,
            RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED,
        ),
        (
            RDKafkaApiKey::TxnOffsetCommit,
            RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID,
        ),
        (RDKafkaApiKey::EndTxn, RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID),
    ];
    let rounds = 2;
    let chunks = 1 + rounds * abortable.len();
    let mut fixture = Fixture::new("mock-abortable", seed, ordering_input(seed, chunks), "")?;
    fixture.start_engine()?;
    fixture.chunk_with("warm-up", |_| {})?;
    let mut order: Vec<(RDKafkaApiKey, RDKafkaRespErr)> =
        (0..rounds).flat_map(|_| abortable).collect();
    for index in (1..order.len()).rev() {
        order.swap(index, fixture.rng.random_range(0..=index));
    }
    let mut injected = 0;
    for (api, error) in order {
        let aborted_before = fixture.engine().transactions("aborted");
        fixture.chunk_with(&format!("{api:?} {error:?}"), |mock| {
            mock.request_errors(api, &[error])
        })?;
        injected += 1;
        let aborted = fixture.engine().transactions("aborted") - aborted_before;
        println!("{api:?} answered {error:?}: {aborted} transaction(s) aborted");
    }
    let aborted = fixture.engine().transactions("aborted");
    let restarts = fixture.engine().restarts();
    let (found, _, _fixture) = fixture.finish(
        "mock cluster: abortable errors",
        &[Row {
            fault: "abortable errors: Produce (topic authorization, message too large), AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit (unknown member), EndTxn (unknown producer id)",
            runs: 1,
            injected,
        }],
    )?;
    found.ensure_none()?;
    // Each injected error fails one transaction (an error on a request a transaction makes
    // several of may fail it once only): the faults did happen.
    ensure!(
        aborted >= injected / 2,
        "only {aborted} aborted transactions for {injected} abortable errors: the faults did not take"
    );
    println!("{aborted} transactions aborted, {restarts} client recreations");
    Ok(())
}

#[test]
fn mock_fatal_errors_recreate_the_clients_and_lose_nothing() -> Result<()> {
    let seed = seed(0x6d6f_636b_0003);
    // Errors that kill the transactional producer: the engine recreates its clients (a new
    // producer fences the old epoch), rejoins the group and resumes from the committed offsets.
    let fatal: [(RDKafkaApiKey, RDKafkaRespErr); 4] = [
        (RDKafkaApiKey::EndTxn, RD_KAFKA_RESP_ERR_PRODUCER_FENCED),
        (RDKafkaApiKey::EndTxn, RD_KAFKA_RESP_ERR_INVALID_TXN_STATE),
        (
            RDKafkaApiKey::AddPartitionsToTxn,
            RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH,
        ),
        (
            RDKafkaApiKey::TxnOffsetCommit,
            RD_KAFKA_RESP_ERR_INVALID_TXN_STATE,
        ),
    ];
    let chunks = 1 + fatal.len();
    let mut fixture = Fixture::new("mock-fatal", seed, ordering_input(seed, chunks), "")?;
    fixture.start_engine()?;
    fixture.chunk_with("warm-up", |_| {})?;
    let mut injected = 0;
    for (api, error) in fatal {
        let restarts_before = fixture.engine().restarts();
        fixture.chunk_with(&format!("{api:?} {error:?}"), |mock| {
            mock.request_errors(api, &[error])
        })?;
        injected += 1;
        let restarts = fixture.engine().restarts() - restarts_before;
        println!("{api:?} answered {error:?}: clients recreated {restarts} time(s)");
    }
    let restarts = fixture.engine().restarts();
    let (found, _, _fixture) = fixture.finish(
        "mock cluster: fatal errors",
        &[Row {
            fault: "fatal errors: EndTxn (producer fenced, invalid txn state), AddPartitionsToTxn (invalid epoch), TxnOffsetCommit (invalid txn state)",
            runs: 1,
            injected,
        }],
    )?;
    found.ensure_none()?;
    ensure!(
        restarts >= injected,
        "{restarts} client recreations for {injected} fatal errors: the faults did not take"
    );
    Ok(())
}

#[test]
fn mock_coordinator_moves_leader_moves_and_broker_outages() -> Result<()> {
    let seed = seed(0x6d6f_636b_0004);
    let moves = 6;
    let chunks = 1 + 2 * moves + 2 * BROKERS as usize;
    let mut fixture = Fixture::new("mock-coordinators", seed, ordering_input(seed, chunks), "")?;
    let txn_id = fixture.config.transactional_id();
    let group = fixture.scenario.application_id.clone();
    fixture.start_engine()?;
    fixture.chunk_with("warm-up", |_| {})?;

    // Coordinators move between brokers while transactions run.
    let mut coordinator_moves = 0;
    for _ in 0..moves {
        let transaction_to = fixture.rng.random_range(1..=BROKERS);
        let group_to = fixture.rng.random_range(1..=BROKERS);
        let (txn_id, group) = (txn_id.clone(), group.clone());
        fixture.chunk_with("coordinator moves", |mock| {
            let cluster = mock.cluster();
            cluster
                .coordinator(MockCoordinator::Transaction(txn_id), transaction_to)
                .expect("transaction coordinator");
            cluster
                .coordinator(MockCoordinator::Group(group), group_to)
                .expect("group coordinator");
        })?;
        coordinator_moves += 2;
    }

    // Partition leaders of the input, output and changelog topics move.
    let mut leader_moves = 0;
    let stores = declared_store_names(&fixture.config);
    let mut moved_topics = vec![
        fixture.scenario.input_topic.clone(),
        fixture.scenario.output_topic.clone(),
    ];
    moved_topics.extend(
        stores
            .iter()
            .map(|store| fixture.config.changelog_topic(store)),
    );
    for _ in 0..moves {
        let topic = moved_topics[fixture.rng.random_range(0..moved_topics.len())].clone();
        let partition = fixture.rng.random_range(0..PARTITIONS);
        let broker = fixture.rng.random_range(1..=BROKERS);
        fixture.chunk_with("a leader move", |mock| {
            mock.cluster()
                .partition_leader(&topic, partition, Some(broker))
                .expect("leader");
        })?;
        leader_moves += 1;
    }

    // Each broker down for a while (the transaction coordinator among them: it is moved to the
    // broker going down first), then up again. A broker down is missing from metadata, and a
    // producer that had it cached as the group coordinator can then wait forever in
    // send_offsets_to_transaction (librdkafka issue 5511): the engine gives the call up after
    // its timeout and recreates its clients (`runtime/producer.rs`), so this passes with or
    // without that happening.
    let mut outages = 0;
    for broker in 1..=BROKERS {
        fixture
            .mock
            .cluster()
            .coordinator(MockCoordinator::Transaction(txn_id.clone()), broker)?;
        fixture.produce(CHUNK)?;
        std::thread::sleep(Duration::from_millis(200));
        fixture.mock.cluster().broker_down(broker)?;
        std::thread::sleep(Duration::from_millis(
            fixture.rng.random_range(1_000..2_500),
        ));
        fixture.mock.cluster().broker_up(broker)?;
        fixture.wait_consumed("a broker outage")?;
        // And once more with the coordinator moved off the broker while it is down.
        fixture.produce(CHUNK)?;
        fixture.mock.cluster().broker_down(broker)?;
        fixture.mock.cluster().coordinator(
            MockCoordinator::Transaction(txn_id.clone()),
            broker % BROKERS + 1,
        )?;
        std::thread::sleep(Duration::from_millis(fixture.rng.random_range(500..1_500)));
        fixture.mock.cluster().broker_up(broker)?;
        fixture.wait_consumed("a broker outage with a coordinator move")?;
        outages += 2;
    }

    let (found, _, _fixture) = fixture.finish(
        "mock cluster: coordinator and leader moves, broker outages",
        &[
            Row {
                fault: "transaction and group coordinator moves (3 brokers)",
                runs: 1,
                injected: coordinator_moves,
            },
            Row {
                fault: "partition leader moves (input, output, changelogs)",
                runs: 1,
                injected: leader_moves,
            },
            Row {
                fault: "broker down 0.5-2.5 s, then up (transaction coordinator moved in half)",
                runs: 1,
                injected: outages,
            },
        ],
    )?;
    found.ensure_none()
}

/// A restore consumer as the engine configures one (in a group of its own).
fn restore_consumer(config: &EngineConfig) -> Result<BaseConsumer<EndOfPartitionContext>> {
    Ok(runtime::restore_consumer_config(config)
        .set(
            "group.id",
            breadcrumb_integration_tests::unique_name("restore"),
        )
        .create_with_context(EndOfPartitionContext)?)
}

/// How a changelog is left by log compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compaction {
    /// Committed records as written (the engine's own restore path).
    None,
    /// The latest record per key, tombstones kept (within `delete.retention.ms`).
    KeepTombstones,
    /// The latest record per key, tombstones removed (after `delete.retention.ms`).
    DropTombstones,
    /// The cleaner has compacted the first half (tombstones removed); the active tail is as
    /// written.
    HeadOnly,
}

/// What compaction leaves of one partition's committed records (in offset order).
fn compact(records: &[ConsumedRecord], how: Compaction) -> Vec<ConsumedRecord> {
    let compact_until = match how {
        Compaction::None => 0,
        Compaction::HeadOnly => records.len() / 2,
        Compaction::KeepTombstones | Compaction::DropTombstones => records.len(),
    };
    let (head, tail) = records.split_at(compact_until);
    let mut last: BTreeMap<&[u8], usize> = BTreeMap::new();
    for (index, record) in head.iter().enumerate() {
        last.insert(record.key.as_deref().unwrap_or_default(), index);
    }
    let keep_tombstones = how == Compaction::KeepTombstones;
    let mut kept: Vec<ConsumedRecord> = head
        .iter()
        .enumerate()
        .filter(|(index, record)| {
            last.get(record.key.as_deref().unwrap_or_default()) == Some(index)
                && (record.value.is_some() || keep_tombstones)
        })
        .map(|(_, record)| record.clone())
        .collect();
    kept.extend(tail.iter().cloned());
    kept
}

/// Writes each partition's records (in order) to `topic` in transactions of 1 to 8 records.
/// On Kafka the commit markers would leave offset gaps as compaction does; the mock writes no
/// markers, so the copies are contiguous (the `offset gaps` column shows it).
fn write_changelog_copy(
    bootstrap: &str,
    topic: &str,
    partitions: &[(i32, Vec<ConsumedRecord>)],
    rng: &mut StdRng,
) -> Result<()> {
    let producer: BaseProducer = base_config(bootstrap)
        .set(
            "transactional.id",
            breadcrumb_integration_tests::unique_name("compactor"),
        )
        // Each transaction is sent whole before it commits: nothing to linger for.
        .set("linger.ms", "0")
        .create()?;
    producer.init_transactions(Duration::from_secs(10))?;
    for (partition, records) in partitions {
        let mut index = 0;
        while index < records.len() {
            let size = rng.random_range(1..=8).min(records.len() - index);
            producer.begin_transaction()?;
            for record in &records[index..index + size] {
                let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
                for (name, value) in &record.headers {
                    headers = headers.insert(Header {
                        key: name,
                        value: value.as_deref(),
                    });
                }
                let mut base: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                    .partition(*partition)
                    .key(record.key.as_deref().unwrap_or_default())
                    .headers(headers);
                if let Some(value) = &record.value {
                    base = base.payload(value.as_slice());
                }
                producer.send(base).map_err(|(error, _)| error)?;
            }
            await_deliveries(&producer)?;
            producer.commit_transaction(Duration::from_secs(10))?;
            index += size;
        }
    }
    Ok(())
}

/// Serves the producer's delivery reports until none is outstanding. `commit_transaction`
/// flushes first, and rust-rdkafka's flush polls in 100 ms steps that each last their full
/// 100 ms: a commit whose reports are still unserved waits 100 ms, which over the thousands of
/// small transactions of the copies was minutes of idling.
fn await_deliveries(producer: &BaseProducer) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while producer.in_flight_count() > 0 {
        ensure!(
            Instant::now() < deadline,
            "{} deliveries still outstanding after 10 s",
            producer.in_flight_count()
        );
        producer.poll(Duration::from_millis(1));
    }
    Ok(())
}

/// Offset gaps between consecutive records of the same partition, in a copy read back to its
/// end (written and committed before: nothing more can arrive, so no quiet period is waited
/// for), which must hold the `written` records.
fn offset_gaps(bootstrap: &str, topic: &str, written: usize) -> Result<usize> {
    let mut reader = base_config(bootstrap);
    reader.set("fetch.wait.max.ms", "20");
    let mut records: Vec<(i32, i64)> = read_topic(&reader, topic, Duration::from_secs(30))?
        .iter()
        .map(|record| (record.partition(), record.offset()))
        .collect();
    ensure!(
        records.len() == written,
        "{topic} holds {} records, {written} were written",
        records.len()
    );
    records.sort_unstable();
    Ok(records
        .windows(2)
        .filter(|pair| pair[0].0 == pair[1].0 && pair[1].1 > pair[0].1 + 1)
        .count())
}

/// The main column family of `stores` in `backend`, as (partition, key) → (expiry, payload).
fn state_of(backend: &StateBackend, store: &str) -> Result<common::invariants::StoreContents> {
    let id = backend.store_id(store)?;
    let mut state = BTreeMap::new();
    for partition in 0..PARTITIONS {
        backend
            .partition_store(id, partition)
            .for_each_committed(|key, value| {
                state.insert(
                    (partition, key.to_vec()),
                    (value.expire_at_ms, value.payload.to_vec()),
                );
                Ok(())
            })?;
    }
    Ok(state)
}

#[test]
fn compacted_changelogs_restore_the_same_state() -> Result<()> {
    let seed = seed(0x6d6f_636b_0005);
    let chunks = 8;
    // Dedupe entries expire after 2 s of event time (the workload moves 10 ms per record), so
    // the changelog holds tombstones; no copies in the input, so expiry never lets one through.
    let input = Input::without_copies(seed, (chunks * CHUNK) as u64);
    let mut fixture = Fixture::new(
        "mock-compaction",
        seed,
        input,
        "\n[pipelines.payments.dedupe]\nttl_ms = 2000\n",
    )?;
    // Some aborted transactions too, whose changelog records must not be restored: the first
    // store's changelog is led by a broker of its own, whose Produce request fails at a commit,
    // after the other stores' changelog batches of that transaction were written.
    let stores = declared_store_names(&fixture.config);
    let failing_changelog = fixture.config.changelog_topic(&stores[0]);
    for partition in 0..PARTITIONS {
        fixture.mock.cluster().partition_leader(
            &failing_changelog,
            partition,
            Some(CHANGELOG_BROKER),
        )?;
    }
    fixture.start_engine()?;
    for chunk in 0..chunks {
        let abort = chunk % 3 == 1;
        fixture.chunk_with("a chunk", |mock| {
            if abort {
                mock.errors_with_delay(
                    CHANGELOG_BROKER,
                    RDKafkaApiKey::Produce,
                    &[(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, 0)],
                );
            }
        })?;
    }
    let (found, _, fixture) = fixture.finish(
        "mock cluster: the run whose changelogs are compacted",
        &[Row {
            fault: "abortable Produce error on a changelog (aborted records in the others)",
            runs: 1,
            injected: (0..chunks).filter(|chunk| chunk % 3 == 1).count() as u64,
        }],
    )?;
    found.ensure_none()?;

    let bootstrap = fixture.scenario.bootstrap.clone();
    let committed = committed_transactions(std::slice::from_ref(&fixture.journal))?;
    let input_ends = watermarks(&bootstrap, &fixture.scenario.input_topic)?;
    let engine_backend = StateBackend::open(
        &fixture.scenario.state_dir(fixture.dir.path(), "a"),
        &stores,
        &StateOptions::default(),
    )?;
    let consumer = restore_consumer(&fixture.config)?;
    let metrics = RestoreMetrics {
        applied: prometheus::IntCounter::new("applied", "applied")?,
        remaining: prometheus::IntGauge::new("remaining", "remaining")?,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = fixture.mock.cluster();
    println!("\n| store | changelog | records | tombstones | offset gaps | keys restored | ≠ engine state |");
    println!("|---|---|---|---|---|---|---|");
    let mut mismatches = 0;
    let mut all_tombstones = 0;
    let mut all_aborted = 0;
    for store in &stores {
        let topic = fixture.config.changelog_topic(store);
        let all = consume_all(&bootstrap, &topic, 0, Duration::from_secs(30))?;
        let committed_records: Vec<ConsumedRecord> = all
            .iter()
            .filter(|record| {
                record
                    .header(breadcrumb_engine::headers::TRANSACTION)
                    .is_some_and(|txn| committed.contains(&txn))
            })
            .cloned()
            .collect();
        let aborted = all.len() - committed_records.len();
        let engine_state = state_of(&engine_backend, store)?;
        ensure!(
            engine_state == rebuild_from_changelog(store, &all, &committed)?,
            "the engine's state is not its changelog's"
        );
        let tombstones = committed_records
            .iter()
            .filter(|record| record.value.is_none())
            .count();
        let variants = [
            Compaction::None,
            Compaction::KeepTombstones,
            Compaction::DropTombstones,
            Compaction::HeadOnly,
        ];
        for how in variants {
            let copy = format!("{topic}-{how:?}").to_lowercase();
            cluster.create_topic(&copy, PARTITIONS, 1)?;
            let compacted: Vec<(i32, Vec<ConsumedRecord>)> = (0..PARTITIONS)
                .map(|partition| {
                    let of_partition: Vec<ConsumedRecord> = committed_records
                        .iter()
                        .filter(|record| record.partition == partition)
                        .cloned()
                        .collect();
                    (partition, compact(&of_partition, how))
                })
                .collect();
            let records: usize = compacted.iter().map(|(_, kept)| kept.len()).sum();
            write_changelog_copy(&bootstrap, &copy, &compacted, &mut rng)?;
            let gaps = offset_gaps(&bootstrap, &copy, records)?;
            let restored_dir = tempfile::TempDir::new()?;
            let restored =
                StateBackend::open(restored_dir.path(), &stores, &StateOptions::default())?;
            let id = restored.store_id(store)?;
            for partition in 0..PARTITIONS {
                let committed_input = input_ends.get(&partition).map(|(_, high)| *high);
                restore_partition(
                    &consumer,
                    &restored,
                    RestoreTarget {
                        store: id,
                        changelog_topic: &copy,
                        partition,
                        committed_input,
                        committed_changelog_end: None,
                    },
                    Duration::from_secs(30),
                    &metrics,
                )?;
            }
            let state = state_of(&restored, store)?;
            let (differ, examples) = compare_states(&state, &engine_state);
            mismatches += differ;
            println!(
                "| {store} | {how:?} | {records} | {} | {gaps} | {} | {differ} |",
                kept_tombstones(how, tombstones),
                state.len()
            );
            for example in examples {
                println!("  {example}");
            }
        }
        // A restore resumed from a local checkpoint, over a log compacted after it: the head
        // (compacted) is restored, then the tail is written compacted (tombstones kept) and
        // restored from the checkpoint on.
        let copy = format!("{topic}-resumed");
        cluster.create_topic(&copy, PARTITIONS, 1)?;
        let restored_dir = tempfile::TempDir::new()?;
        let restored = StateBackend::open(restored_dir.path(), &stores, &StateOptions::default())?;
        let id = restored.store_id(store)?;
        for partition in 0..PARTITIONS {
            let of_partition: Vec<ConsumedRecord> = committed_records
                .iter()
                .filter(|record| record.partition == partition)
                .cloned()
                .collect();
            let (head, tail) = of_partition.split_at(of_partition.len() / 2);
            let committed_input = input_ends.get(&partition).map(|(_, high)| *high);
            let target = RestoreTarget {
                store: id,
                changelog_topic: &copy,
                partition,
                committed_input,
                committed_changelog_end: None,
            };
            write_changelog_copy(
                &bootstrap,
                &copy,
                &[(partition, compact(head, Compaction::DropTombstones))],
                &mut rng,
            )?;
            restore_partition(
                &consumer,
                &restored,
                target,
                Duration::from_secs(30),
                &metrics,
            )?;
            let checkpoint = restored
                .checkpoint(id, partition)?
                .context("no checkpoint")?;
            write_changelog_copy(
                &bootstrap,
                &copy,
                &[(partition, compact(tail, Compaction::KeepTombstones))],
                &mut rng,
            )?;
            restore_partition(
                &consumer,
                &restored,
                target,
                Duration::from_secs(30),
                &metrics,
            )?;
            let resumed = restored
                .checkpoint(id, partition)?
                .context("no checkpoint")?;
            ensure!(
                resumed.changelog_next_offset > checkpoint.changelog_next_offset || tail.is_empty(),
                "the second restore did not resume: {checkpoint:?} then {resumed:?}"
            );
        }
        let state = state_of(&restored, store)?;
        let (differ, examples) = compare_states(&state, &engine_state);
        mismatches += differ;
        println!(
            "| {store} | resumed from a checkpoint | - | - | - | {} | {differ} |",
            state.len()
        );
        for example in examples {
            println!("  {example}");
        }
        println!("({store}: {aborted} records of aborted transactions in the original changelog, left out of the copies)");
        all_tombstones += tombstones;
        all_aborted += aborted;
    }
    ensure!(
        all_tombstones > 0,
        "no tombstones in any changelog: expiry never ran, nothing tested"
    );
    ensure!(
        all_aborted > 0,
        "no records of aborted transactions in any changelog: their exclusion was not tested"
    );
    ensure!(
        mismatches == 0,
        "{mismatches} keys restored differently from a compacted changelog"
    );
    Ok(())
}

fn kept_tombstones(how: Compaction, tombstones: usize) -> String {
    match how {
        Compaction::None | Compaction::KeepTombstones => tombstones.to_string(),
        Compaction::DropTombstones => "0".to_owned(),
        Compaction::HeadOnly => "tail only".to_owned(),
    }
}
