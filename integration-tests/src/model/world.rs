//! One seeded schedule: the real processing core of up to two engine instances over the model
//! log, with crashes at any I/O step, lost local state, rebalances (1 → 2 → 1), a paused
//! instance that resumes as a zombie after its partitions moved, and transaction timeouts; then
//! every invariant checked against the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use breadcrumb_engine::config::EngineConfig;
use breadcrumb_engine::error::EngineError;
use breadcrumb_engine::generate::{RecordKind, Workload, WorkloadSpec, CLOUDEVENTS_JSON};
use breadcrumb_engine::http::Health;
use breadcrumb_engine::metrics::Metrics;
use breadcrumb_engine::runtime::pipeline::{compile, declared_store_names};
use breadcrumb_engine::runtime::{planned_topics_for, Core, CoreParts, StallFlag};
use breadcrumb_engine::verify::{verify_ledger_over, Report};
use breadcrumb_schemas::{build_decoder, Envelope, RawRecord};
use breadcrumb_state::{StateBackend, StateOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
use rdkafka::TopicPartitionList;

use super::log::{Cluster, ModelConsumer, ModelCrash, ModelMessage, ModelProducer, StoredRecord};
use crate::invariants::{
    local_state, poison_coordinates, rebuild_from_changelog, Invariants, StoreContents,
    EMAIL_CANARY, PII_KEY_CANARY, SECRET_CANARY,
};
use crate::ConsumedRecord;

const INPUT_TOPIC: &str = "payments";
const PIPELINE: &str = "payments";
const INSTANCES: [&str; 2] = ["a", "b"];

/// What a schedule does.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleSpec {
    pub seed: u64,
    /// Input records (copies and poison included).
    pub records: u64,
    pub input_partitions: i32,
    /// Route through a repartition topic (two stages, the second reading the first's
    /// transactional output).
    pub repartition: bool,
    /// Faults to inject (crashes, state losses, rebalances, pauses, timeouts).
    pub faults: u32,
}

impl ScheduleSpec {
    /// The schedule of `seed`: its shape is drawn from the seed too.
    pub fn from_seed(seed: u64, records: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5ced_u64);
        Self {
            seed,
            records,
            input_partitions: rng.random_range(1..=3),
            repartition: rng.random_bool(0.5),
            faults: rng.random_range(1..=6),
        }
    }
}

/// Every invariant a schedule is checked for.
pub const INVARIANTS: [&str; 10] = [
    "no aborted read",
    "no loss",
    "no duplicates",
    "per-key order",
    "dead letters once",
    "deterministic output",
    "ledger",
    "state equals changelog",
    "liveness",
    "no canary in logs or metrics",
];

/// What one schedule did and found.
#[derive(Debug, Default, Clone)]
pub struct ScheduleReport {
    pub seed: u64,
    pub steps: u64,
    pub crashes: u64,
    pub crashes_in_commit: u64,
    pub state_losses: u64,
    pub compactions: u64,
    pub rebalances: u64,
    pub client_restarts: u64,
    pub zombies: u64,
    pub zombie_commits_refused: u64,
    /// Offsets a member sent with a stale group generation (refused: KIP-447 fencing).
    pub stale_generation_commits: u64,
    pub fenced_calls: u64,
    pub injected_errors: u64,
    pub transaction_timeouts: u64,
    pub unstable_offset_fetches: u64,
    /// Restores that waited out an open transaction hiding committed changelog records.
    pub blocked_restores: u64,
    pub committed_transactions: u64,
    pub aborted_transactions: u64,
    pub aborted_records: u64,
    pub events_in: u64,
    pub events_out: u64,
    pub dead_letters: u64,
    /// Bytes of engine logs searched for canaries.
    pub log_bytes: u64,
    /// Violations found, by invariant.
    pub violations: BTreeMap<&'static str, Vec<String>>,
    /// The last actions, for a failure report.
    pub trace: Vec<String>,
}

impl ScheduleReport {
    /// Adds `other`'s counts to these totals.
    pub fn add(&mut self, other: &ScheduleReport) {
        self.steps += other.steps;
        self.crashes += other.crashes;
        self.crashes_in_commit += other.crashes_in_commit;
        self.state_losses += other.state_losses;
        self.compactions += other.compactions;
        self.rebalances += other.rebalances;
        self.client_restarts += other.client_restarts;
        self.zombies += other.zombies;
        self.zombie_commits_refused += other.zombie_commits_refused;
        self.stale_generation_commits += other.stale_generation_commits;
        self.fenced_calls += other.fenced_calls;
        self.injected_errors += other.injected_errors;
        self.transaction_timeouts += other.transaction_timeouts;
        self.unstable_offset_fetches += other.unstable_offset_fetches;
        self.blocked_restores += other.blocked_restores;
        self.committed_transactions += other.committed_transactions;
        self.aborted_transactions += other.aborted_transactions;
        self.aborted_records += other.aborted_records;
        self.events_in += other.events_in;
        self.events_out += other.events_out;
        self.dead_letters += other.dead_letters;
        self.log_bytes += other.log_bytes;
    }

    /// These totals over `schedules` as a markdown table of faults and one of invariants.
    pub fn table(&self, schedules: u64, violations: &BTreeMap<&'static str, usize>) -> String {
        let mut out = String::from("| fault | injected |\n|---|---|\n");
        for (fault, count) in [
            ("crash at a random I/O step", self.crashes),
            ("… of which inside a commit", self.crashes_in_commit),
            ("local state directory deleted", self.state_losses),
            ("changelogs compacted", self.compactions),
            ("rebalances", self.rebalances),
            ("paused instance resumed as a zombie", self.zombies),
            (
                "zombie offsets refused (stale generation)",
                self.stale_generation_commits,
            ),
            ("calls of fenced producers refused", self.fenced_calls),
            ("abortable broker errors", self.injected_errors),
            (
                "transactions timed out by the coordinator",
                self.transaction_timeouts,
            ),
            ("unstable offset fetches", self.unstable_offset_fetches),
            (
                "restores waiting out an open transaction",
                self.blocked_restores,
            ),
            ("client restarts after fatal errors", self.client_restarts),
        ] {
            out.push_str(&format!("| {fault} | {count} |\n"));
        }
        out.push_str(&format!(
            "\n{schedules} schedules, {} I/O steps, {} transactions committed, {} aborted ({} records), {} events in, {} distinct out, {} dead letters, {} log bytes searched\n\n| invariant | violations |\n|---|---|\n",
            self.steps,
            self.committed_transactions,
            self.aborted_transactions,
            self.aborted_records,
            self.events_in,
            self.events_out,
            self.dead_letters,
            self.log_bytes
        ));
        for invariant in INVARIANTS {
            out.push_str(&format!(
                "| {invariant} | {} |\n",
                violations.get(invariant).copied().unwrap_or(0)
            ));
        }
        out
    }

    pub fn violation_count(&self) -> usize {
        self.violations.values().map(Vec::len).sum()
    }

    fn violation(&mut self, invariant: &'static str, detail: String) {
        self.violations.entry(invariant).or_default().push(detail);
    }
}

/// A running engine incarnation: the core, its group consumer and its state.
struct Engine {
    core: Core<ModelProducer>,
    consumer: ModelConsumer,
}

enum Status {
    Down,
    Running(Engine),
    /// Stopped (SIGSTOP): it does nothing; the group moves its partitions on.
    Paused(Engine),
    /// Resumed after its partitions moved, not yet told: it goes on with what it had for a few
    /// more actions.
    Zombie(Engine, u32),
}

struct Instance {
    name: &'static str,
    config: Arc<EngineConfig>,
    state_dir: PathBuf,
    status: Status,
    /// The state backend, kept across client restarts (as the runtime keeps it) and dropped
    /// with a crash.
    backend: Option<StateBackend>,
    metrics: Option<Metrics>,
}

/// How an engine call ended.
enum Call {
    Ok,
    Crashed,
    /// A fatal error: the runtime recreates its clients.
    Failed(String),
}

/// Runs `work`, turning an injected crash into [`Call::Crashed`]; other panics propagate.
fn guarded(work: impl FnOnce() -> breadcrumb_engine::error::Result<()>) -> Call {
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(())) => Call::Ok,
        Ok(Err(error)) => Call::Failed(error.to_string()),
        Err(payload) => {
            if payload.downcast_ref::<ModelCrash>().is_some() {
                Call::Crashed
            } else {
                std::panic::resume_unwind(payload)
            }
        }
    }
}

/// Silences the default panic message for injected crashes (they are expected by the
/// thousand); every other panic still prints.
pub fn quiet_injected_crashes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<ModelCrash>().is_none() {
                default(info);
            }
        }));
    });
}

fn engine_config(
    key_file: &Path,
    dir: &Path,
    instance: &str,
    spec: &ScheduleSpec,
    max_records: u64,
) -> Result<EngineConfig> {
    let repartition = if spec.repartition {
        "repartition_by = \"subject\"\n"
    } else {
        ""
    };
    let text = format!(
        r#"
application_id = "model"
instance_id = "{instance}"
commit_interval_ms = 3600000
transaction_timeout_ms = 7200000
max_records_per_transaction = {max_records}
replication_factor = 1
dead_letter_topic = "model-dlq"

[kafka]
"bootstrap.servers" = "model.invalid:9092"
"sasl.password" = "{SECRET_CANARY}"

[state]
dir = "{state}"
block_cache_bytes = 1048576
write_buffer_bytes = 1048576

[input]
quarantine_after_crashes = 1000000

[http]
enabled = false

[pipelines.{PIPELINE}]
input_topics = ["{INPUT_TOPIC}"]
output_topic = "payments-out"
duplicates_topic = "payments-dups"
{repartition}
[pipelines.{PIPELINE}.decoder]
format = "cloudevents"

[pipelines.{PIPELINE}.pii]
key_file = "{key_file}"
fields = [{{ path = "/data/email", action = "tokenize" }}]

[pipelines.{PIPELINE}.ordering]
first_sequence = 1
gap_timeout_ms = 600000
"#,
        state = dir.join(format!("state-{instance}")).display(),
        key_file = key_file.display(),
    );
    Ok(EngineConfig::from_toml(&text)?)
}

/// One schedule over its own log and state directories.
pub struct World {
    spec: ScheduleSpec,
    rng: StdRng,
    cluster: Rc<Cluster>,
    instances: Vec<Instance>,
    /// Stateful topics (the input, or the repartition topic) and every consumed topic.
    subscribed: Vec<String>,
    incarnations: u64,
    report: ScheduleReport,
    /// Ids of new events in the input (each must come out once).
    new_ids: BTreeSet<String>,
    poison: u64,
    /// `/metrics` text of every engine incarnation that went away, searched for canaries.
    metrics_text: String,
}

impl World {
    /// Makes the schedule's log show aborted records to `read_committed` readers, as the
    /// test brokers do: the checks must then find violations.
    pub fn with_aborted_records_shown(self) -> Self {
        self.cluster.show_aborted_records();
        self
    }

    pub fn new(spec: ScheduleSpec, dir: &Path, faults_enabled: bool) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let max_records = rng.random_range(3..=40);
        let cluster = Cluster::new();
        std::fs::create_dir_all(dir)?;
        let key_file = dir.join("pii-key");
        std::fs::write(&key_file, format!("{PII_KEY_CANARY}\n"))?;
        let mut instances = Vec::new();
        for name in INSTANCES {
            let config = engine_config(&key_file, dir, name, &spec, max_records)?;
            instances.push(Instance {
                name,
                state_dir: config.state.dir.clone(),
                config: Arc::new(config),
                status: Status::Down,
                backend: None,
                metrics: None,
            });
        }
        let config = &instances[0].config;
        let mut counts = BTreeMap::new();
        counts.insert(INPUT_TOPIC.to_owned(), spec.input_partitions);
        cluster.create_topic(INPUT_TOPIC, spec.input_partitions);
        for topic in planned_topics_for(config, &counts)? {
            cluster.create_topic(&topic.name, topic.partitions);
        }
        let mut subscribed = vec![INPUT_TOPIC.to_owned()];
        if spec.repartition {
            subscribed.push(config.repartition_topic(PIPELINE));
        }

        // The input: a payments workload with copies, conflicts, poison and shuffled accounts.
        let mut new_ids = BTreeSet::new();
        let mut poison = 0;
        let workload = Workload::new(WorkloadSpec {
            records: spec.records,
            duplicate_percent: 6.0,
            // A conflict of this generator names another account as its subject, so under
            // `repartition_by = "subject"` it is another account's event, not a conflict.
            conflict_percent: if spec.repartition { 0.0 } else { 1.0 },
            poison_percent: 2.0,
            accounts: 12,
            shuffled_accounts_percent: 25.0,
            seed: spec.seed,
            ..WorkloadSpec::default()
        });
        for record in workload {
            match record.kind {
                RecordKind::New => {
                    new_ids.insert(record.id.clone());
                }
                RecordKind::Poison => poison += 1,
                _ => {}
            }
            let mut value = record.value;
            if let Ok(mut event) = serde_json::from_slice::<serde_json::Value>(&value) {
                // Per account, so copies of an event stay byte-identical.
                let email = format!(
                    "{}.{EMAIL_CANARY}",
                    event["subject"].as_str().unwrap_or("none")
                );
                if let Some(data) = event["data"].as_object_mut() {
                    data.insert("email".to_owned(), email.into());
                    value = event.to_string().into_bytes();
                }
            }
            let partition = cluster.partition_of(INPUT_TOPIC, &record.key);
            cluster.produce(
                INPUT_TOPIC,
                partition,
                Some(&record.key),
                Some(&value),
                vec![(
                    b"content-type".to_vec(),
                    Some(CLOUDEVENTS_JSON.as_bytes().to_vec()),
                )],
                None,
            );
        }
        let mut world = Self {
            spec,
            rng,
            cluster,
            instances,
            subscribed,
            incarnations: 0,
            report: ScheduleReport {
                seed: spec.seed,
                events_in: spec.records,
                ..ScheduleReport::default()
            },
            new_ids,
            poison,
            metrics_text: String::new(),
        };
        if !faults_enabled {
            world.spec.faults = 0;
        }
        Ok(world)
    }

    fn trace(&mut self, line: String) {
        if self.report.trace.len() >= 400 {
            self.report.trace.remove(0);
        }
        self.report.trace.push(line);
    }

    fn schedule_crash(&mut self) {
        let steps = self.cluster.stats().steps;
        let at = steps + self.rng.random_range(1..=1_500);
        self.cluster.crash_at(Some(at));
    }

    /// Starts instance `index`'s clients (and its state backend, if it has none).
    fn start(&mut self, index: usize) -> Result<()> {
        let cluster = self.cluster.clone();
        self.incarnations += 1;
        let incarnation = format!("{:08x}", self.incarnations);
        let instance = &mut self.instances[index];
        if instance.backend.is_none() {
            std::fs::create_dir_all(&instance.state_dir)?;
            instance.backend = Some(StateBackend::open(
                &instance.state_dir,
                &declared_store_names(&instance.config),
                &StateOptions {
                    block_cache_bytes: instance.config.state.block_cache_bytes,
                    write_buffer_bytes: instance.config.state.write_buffer_bytes,
                    ..StateOptions::default()
                },
            )?);
            instance.metrics = Some(Metrics::new());
        }
        let backend = instance.backend.clone().expect("opened above");
        let metrics = instance.metrics.clone().expect("created with the backend");
        let config = instance.config.clone();
        let mut built = None;
        let outcome = guarded(|| {
            let (pipelines, routes) = compile(&config, &backend, &metrics)?;
            let producer = ModelProducer::init(cluster.clone(), &config.transactional_id());
            built = Some(Engine {
                core: Core::new(CoreParts {
                    config: config.clone(),
                    pipelines,
                    routes,
                    backend: backend.clone(),
                    io: producer,
                    journal: None,
                    metrics: metrics.clone(),
                    health: Health::new(),
                    incarnation,
                    stall: StallFlag::default(),
                }),
                consumer: ModelConsumer::new(cluster.clone(), instance.name),
            });
            Ok(())
        });
        match outcome {
            Call::Ok => {
                instance.status = Status::Running(built.expect("built"));
                Ok(())
            }
            Call::Crashed => {
                self.crashed(index, "starting");
                Ok(())
            }
            Call::Failed(error) => Err(anyhow!(
                "instance {} failed to start: {error}",
                instance.name
            )),
        }
    }

    /// An injected crash took instance `index` down: everything in memory is gone.
    fn crashed(&mut self, index: usize, during: &str) {
        self.report.crashes += 1;
        if during == "commit" {
            self.report.crashes_in_commit += 1;
        }
        let instance = &mut self.instances[index];
        instance.status = Status::Down;
        instance.backend = None;
        if let Some(metrics) = instance.metrics.take() {
            self.metrics_text.push_str(&metrics.render());
        }
        let instance = &self.instances[index];
        let line = format!("crash of {} during {during}", instance.name);
        self.trace(line);
        if self.report.crashes < u64::from(self.spec.faults) {
            self.schedule_crash();
        }
    }

    /// A fatal error: the runtime closes the core and recreates the clients, keeping state.
    fn restart_clients(&mut self, index: usize, error: &str) -> Result<()> {
        self.report.client_restarts += 1;
        let line = format!(
            "{} recreates its clients after: {error}",
            self.instances[index].name
        );
        self.trace(line);
        let status = std::mem::replace(&mut self.instances[index].status, Status::Down);
        if let Status::Running(mut engine)
        | Status::Zombie(mut engine, _)
        | Status::Paused(mut engine) = status
        {
            engine.core.close();
        }
        self.start(index)?;
        self.rebalance()
    }

    fn running(&self) -> Vec<usize> {
        (0..self.instances.len())
            .filter(|index| matches!(self.instances[*index].status, Status::Running(_)))
            .collect()
    }

    fn all_partitions(&self) -> Vec<(String, i32)> {
        let mut all = Vec::new();
        for topic in &self.subscribed {
            for partition in 0..self.cluster.partitions(topic) {
                all.push((topic.clone(), partition));
            }
        }
        all
    }

    /// The group rebalances over the running instances: partitions leaving a member are
    /// revoked (it commits), the generation moves on, new ones are assigned (restored).
    fn rebalance(&mut self) -> Result<()> {
        for _attempt in 0..20 {
            self.report.rebalances += 1;
            let members = self.running();
            let all = self.all_partitions();
            let rotate = self.rng.random_range(0..all.len().max(1));
            let mut target: BTreeMap<usize, Vec<(String, i32)>> = BTreeMap::new();
            if !members.is_empty() {
                for (position, partition) in all.iter().enumerate() {
                    let member = members[(position + rotate) % members.len()];
                    target.entry(member).or_default().push(partition.clone());
                }
            }
            let mut changed = false;
            // Revocations first, in the old generation.
            for &member in &members {
                let Status::Running(engine) = &mut self.instances[member].status else {
                    changed = true;
                    continue;
                };
                let wanted = target.get(&member).cloned().unwrap_or_default();
                let leaving: Vec<(String, i32)> = engine
                    .consumer
                    .assignment()
                    .into_iter()
                    .filter(|partition| !wanted.contains(partition))
                    .collect();
                if leaving.is_empty() {
                    continue;
                }
                let list = partition_list(&leaving);
                let outcome = guarded(|| {
                    engine.core.on_revoke(&engine.consumer, &list, false);
                    match engine.core.fatal.take() {
                        Some(error) => Err(error),
                        None => Ok(()),
                    }
                });
                match outcome {
                    Call::Ok => engine.consumer.unassign(&leaving),
                    Call::Crashed => {
                        self.crashed(member, "revoke");
                        changed = true;
                    }
                    Call::Failed(error) => {
                        self.restart_clients(member, &error)?;
                        return Ok(());
                    }
                }
            }
            if changed {
                continue;
            }
            let names: Vec<&str> = members
                .iter()
                .map(|member| self.instances[*member].name)
                .collect();
            let generation = self.cluster.rebalance(&names);
            for &member in &members {
                if let Status::Running(engine) = &self.instances[member].status {
                    engine.consumer.generation.set(generation);
                    engine.consumer.lost.set(false);
                }
            }
            for &member in &members {
                let Status::Running(engine) = &mut self.instances[member].status else {
                    changed = true;
                    continue;
                };
                let current = engine.consumer.assignment();
                let arriving: Vec<(String, i32)> = target
                    .get(&member)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|partition| !current.contains(partition))
                    .collect();
                if arriving.is_empty() {
                    continue;
                }
                engine.consumer.assign(&arriving);
                let list = partition_list(&arriving);
                let outcome = guarded(|| {
                    engine.core.on_assign(&engine.consumer, &list);
                    match engine.core.fatal.take() {
                        Some(error) => Err(error),
                        None => Ok(()),
                    }
                });
                match outcome {
                    Call::Ok => {}
                    Call::Crashed => {
                        self.crashed(member, "restore");
                        changed = true;
                    }
                    Call::Failed(error) => {
                        // An unstable offset fetch (a transaction still holds offsets for the
                        // partition), or a restore that must read past an open transaction,
                        // fails the assignment; the member rejoins.
                        self.trace(format!("assignment failed: {error}"));
                        // The member retries until the transaction holding the offsets ends:
                        // its owner resumes, or the coordinator times it out. Time passes.
                        for index in 0..self.instances.len() {
                            if !matches!(self.instances[index].status, Status::Running(_)) {
                                let id = self.instances[index].config.transactional_id();
                                if self.cluster.time_out_transaction(&id) {
                                    self.report.transaction_timeouts += 1;
                                }
                            }
                        }
                        let status =
                            std::mem::replace(&mut self.instances[member].status, Status::Down);
                        if let Status::Running(mut engine) = status {
                            engine.core.close();
                        }
                        self.report.client_restarts += 1;
                        self.start(member)?;
                        changed = true;
                    }
                }
            }
            if !changed {
                return Ok(());
            }
        }
        Err(anyhow!("the group did not settle in 20 rebalances"))
    }

    /// One record through instance `index` (running or zombie), then a commit if one is due.
    fn process(&mut self, index: usize) -> Result<()> {
        let (engine, zombie) = match &mut self.instances[index].status {
            Status::Running(engine) => (engine, false),
            Status::Zombie(engine, _) => (engine, true),
            _ => return Ok(()),
        };
        let mut polled: Option<ModelMessage> = None;
        let outcome = guarded(|| {
            polled = engine.consumer.poll();
            if let Some(message) = &polled {
                match engine.core.process(message) {
                    Ok(()) => {}
                    Err(EngineError::Kafka(_) | EngineError::SchemaUnavailable(_)) => {
                        engine.core.abort(&engine.consumer, &[])?;
                    }
                    Err(other) => return Err(other),
                }
            }
            engine.core.maybe_commit(&engine.consumer)?;
            match engine.core.fatal.take() {
                Some(error) => Err(error),
                None => Ok(()),
            }
        });
        self.after_call(index, outcome, "process", zombie)
    }

    /// Commits what instance `index` has open (the commit interval passed).
    fn commit(&mut self, index: usize) -> Result<()> {
        let (engine, zombie) = match &mut self.instances[index].status {
            Status::Running(engine) => (engine, false),
            Status::Zombie(engine, _) => (engine, true),
            _ => return Ok(()),
        };
        let outcome = guarded(|| engine.core.commit(&engine.consumer));
        self.after_call(index, outcome, "commit", zombie)
    }

    fn after_call(
        &mut self,
        index: usize,
        outcome: Call,
        during: &str,
        zombie: bool,
    ) -> Result<()> {
        match outcome {
            Call::Ok => Ok(()),
            Call::Crashed => {
                self.crashed(index, during);
                if !zombie {
                    self.rebalance()?;
                }
                Ok(())
            }
            Call::Failed(error) => {
                if zombie {
                    self.report.zombie_commits_refused += 1;
                }
                self.restart_clients(index, &error)
            }
        }
    }

    /// A zombie learns its assignment was lost: its partitions are revoked as lost (abort,
    /// no commit) and it rejoins.
    fn zombie_told(&mut self, index: usize) -> Result<()> {
        let status = std::mem::replace(&mut self.instances[index].status, Status::Down);
        let Status::Zombie(mut engine, _) = status else {
            self.instances[index].status = status;
            return Ok(());
        };
        let leaving = engine.consumer.assignment();
        let list = partition_list(&leaving);
        engine.consumer.lost.set(true);
        let outcome = guarded(|| {
            engine.core.on_revoke(&engine.consumer, &list, true);
            match engine.core.fatal.take() {
                Some(error) => Err(error),
                None => Ok(()),
            }
        });
        engine.consumer.unassign(&leaving);
        self.instances[index].status = Status::Running(engine);
        match outcome {
            Call::Ok => self.rebalance(),
            Call::Crashed => {
                self.crashed(index, "lost revoke");
                self.rebalance()
            }
            Call::Failed(error) => self.restart_clients(index, &error),
        }
    }

    /// Whether every consumed partition has been read and committed to its end, and nothing is
    /// open.
    fn finished(&self) -> bool {
        if self.cluster.open_transactions() > 0 {
            return false;
        }
        self.all_partitions().iter().all(|(topic, partition)| {
            let committed = self
                .cluster
                .committed_offset(topic, *partition)
                .unwrap_or(0);
            self.cluster.fetch(topic, *partition, committed).0.is_none()
        })
    }

    fn inject_fault(&mut self) -> Result<()> {
        let choice = self.rng.random_range(0..8);
        match choice {
            // 1 → 2 → 1: the second instance joins or leaves cleanly.
            0 => {
                let b = 1;
                match &self.instances[b].status {
                    Status::Down => {
                        self.trace("b joins".to_owned());
                        self.start(b)?;
                        self.rebalance()?;
                    }
                    Status::Running(_) if self.running().len() > 1 => {
                        self.trace("b leaves".to_owned());
                        let status = std::mem::replace(&mut self.instances[b].status, Status::Down);
                        if let Status::Running(mut engine) = status {
                            let outcome = guarded(|| engine.core.commit(&engine.consumer));
                            engine.core.close();
                            drop(engine);
                            if let Call::Crashed = outcome {
                                self.crashed(b, "commit");
                            }
                        }
                        self.rebalance()?;
                    }
                    _ => {}
                }
            }
            // Pause an instance while another runs: its partitions move on.
            1 => {
                let running = self.running();
                if running.len() > 1 {
                    let index = running[self.rng.random_range(0..running.len())];
                    self.trace(format!("{} paused", self.instances[index].name));
                    let status = std::mem::replace(&mut self.instances[index].status, Status::Down);
                    if let Status::Running(engine) = status {
                        self.instances[index].status = Status::Paused(engine);
                    }
                    self.report.zombies += 1;
                    self.rebalance()?;
                }
            }
            // Local state lost: a down instance's directory is deleted.
            2 => {
                if let Some(index) = (0..self.instances.len())
                    .find(|index| matches!(self.instances[*index].status, Status::Down))
                {
                    let instance = &mut self.instances[index];
                    instance.backend = None;
                    if instance.state_dir.exists() {
                        std::fs::remove_dir_all(&instance.state_dir)?;
                        self.report.state_losses += 1;
                        let line = format!("{} lost its state directory", instance.name);
                        self.trace(line);
                    }
                }
            }
            // The coordinator times out transactions of instances that are down or paused.
            3 => {
                for index in 0..self.instances.len() {
                    if matches!(
                        self.instances[index].status,
                        Status::Down | Status::Paused(_)
                    ) && self
                        .cluster
                        .time_out_transaction(&self.instances[index].config.transactional_id())
                    {
                        self.report.transaction_timeouts += 1;
                        let line =
                            format!("{}'s transaction timed out", self.instances[index].name);
                        self.trace(line);
                    }
                }
            }
            // A paused instance resumes as a zombie.
            4 => {
                if let Some(index) = (0..self.instances.len())
                    .find(|index| matches!(self.instances[*index].status, Status::Paused(_)))
                {
                    let actions = self.rng.random_range(0..6);
                    let status = std::mem::replace(&mut self.instances[index].status, Status::Down);
                    if let Status::Paused(engine) = status {
                        // Sometimes librdkafka has already noticed.
                        engine.consumer.lost.set(self.rng.random_bool(0.3));
                        self.instances[index].status = Status::Zombie(engine, actions);
                    }
                    let line = format!(
                        "{} resumes as a zombie for {actions} actions",
                        self.instances[index].name
                    );
                    self.trace(line);
                }
            }
            // The changelogs are compacted (offset gaps, aborted records and markers gone).
            5 => {
                let config = self.instances[0].config.clone();
                let mut removed = 0;
                for store in declared_store_names(&config) {
                    removed += self.cluster.compact(&config.changelog_topic(&store));
                }
                self.report.compactions += 1;
                self.trace(format!("changelogs compacted: {removed} records removed"));
            }
            // A broker refuses one of the next producer calls (abortable).
            6 => {
                let at = self.cluster.stats().steps + self.rng.random_range(1..=300);
                self.cluster.fail_call_at(at);
                self.trace(format!("a producer call at or after step {at} will fail"));
            }
            // A down instance restarts and rejoins.
            _ => self.restart_down()?,
        }
        Ok(())
    }

    fn restart_down(&mut self) -> Result<()> {
        for index in 0..self.instances.len() {
            if matches!(self.instances[index].status, Status::Down)
                && (index == 0 || self.running().is_empty() || self.rng.random_bool(0.5))
            {
                let line = format!("{} restarts", self.instances[index].name);
                self.trace(line);
                self.start(index)?;
                self.rebalance()?;
            }
        }
        Ok(())
    }

    /// Runs the schedule to the end with the engine's logs captured, and checks it.
    pub fn run(self, reference: Option<&Outputs>) -> Result<(ScheduleReport, Outputs)> {
        let logs = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(logs.clone())
            .finish();
        let (mut report, outputs, metrics_text) =
            tracing::subscriber::with_default(subscriber, || self.run_logged(reference))?;
        let logs = logs.take();
        let mut found = Invariants::default();
        found.check_canaries(&[("the logs", &logs), ("/metrics", &metrics_text)]);
        if found.canaries_leaked > 0 {
            report.violation("no canary in logs or metrics", found.details.join("\n"));
        }
        report.log_bytes = logs.len() as u64;
        Ok((report, outputs))
    }

    fn run_logged(
        mut self,
        reference: Option<&Outputs>,
    ) -> Result<(ScheduleReport, Outputs, String)> {
        self.start(0)?;
        self.rebalance()?;
        if self.spec.faults > 0 {
            self.schedule_crash();
        }
        let mut faults_left = self.spec.faults;
        let budget = 200_000 + self.spec.records * 200;
        let mut actions = 0u64;
        loop {
            actions += 1;
            if actions > budget {
                self.report
                    .violation("liveness", format!("not finished after {budget} actions"));
                break;
            }
            if faults_left == 0 {
                // Past the faults: nothing stays paused or down.
                self.heal()?;
            }
            if faults_left > 0 && self.rng.random_bool(0.01) {
                faults_left -= 1;
                self.inject_fault()?;
                continue;
            }
            // Zombies act until they are told.
            if let Some(index) = (0..self.instances.len())
                .find(|index| matches!(self.instances[*index].status, Status::Zombie(_, _)))
            {
                let left = match &mut self.instances[index].status {
                    Status::Zombie(_, left) => {
                        let now = *left;
                        *left = left.saturating_sub(1);
                        now
                    }
                    _ => 0,
                };
                if left == 0 {
                    self.zombie_told(index)?;
                } else if self.rng.random_bool(0.7) {
                    self.process(index)?;
                } else {
                    self.commit(index)?;
                }
                continue;
            }
            let running = self.running();
            if running.is_empty() {
                self.restart_down()?;
                continue;
            }
            let index = running[self.rng.random_range(0..running.len())];
            if self.rng.random_bool(0.05) {
                self.commit(index)?;
            } else {
                self.process(index)?;
            }
            if faults_left == 0 && self.finished_after_commits()? {
                break;
            }
        }
        self.cluster.crash_at(None);
        let outputs = self.check(reference)?;
        let stats = self.cluster.stats();
        self.report.steps = stats.steps;
        self.report.fenced_calls = stats.fenced_calls;
        self.report.injected_errors = stats.injected_errors;
        self.report.committed_transactions = stats.committed_transactions;
        self.report.aborted_transactions = stats.aborted_transactions;
        self.report.unstable_offset_fetches = stats.unstable_offset_fetches;
        self.report.blocked_restores = stats.blocked_restores;
        self.report.stale_generation_commits = stats.stale_generation_commits;
        self.report.aborted_records = self.cluster.aborted_records();
        // Close what runs, as a shutdown would.
        for instance in &mut self.instances {
            if let Status::Running(engine) | Status::Paused(engine) | Status::Zombie(engine, _) =
                &mut instance.status
            {
                engine.core.close();
            }
            if let Some(metrics) = &instance.metrics {
                self.metrics_text.push_str(&metrics.render());
            }
        }
        Ok((self.report, outputs, self.metrics_text))
    }

    /// Past the fault budget: paused instances resume, down ones restart.
    fn heal(&mut self) -> Result<()> {
        for index in 0..self.instances.len() {
            if let Status::Paused(_) = self.instances[index].status {
                let status = std::mem::replace(&mut self.instances[index].status, Status::Down);
                if let Status::Paused(engine) = status {
                    self.instances[index].status = Status::Zombie(engine, 1);
                }
            }
        }
        if self.running().is_empty()
            && !(0..self.instances.len())
                .any(|index| matches!(self.instances[index].status, Status::Zombie(_, _)))
        {
            self.restart_down()?;
        }
        Ok(())
    }

    /// Now and then, as the commit interval would: every running instance commits, and the
    /// transactions of instances still down time out. Then whether the input is all through.
    fn finished_after_commits(&mut self) -> Result<bool> {
        if self.finished() {
            return Ok(true);
        }
        if !self.rng.random_bool(0.02) {
            return Ok(false);
        }
        for index in self.running() {
            self.commit(index)?;
        }
        for index in 0..self.instances.len() {
            if matches!(self.instances[index].status, Status::Down) {
                let id = self.instances[index].config.transactional_id();
                self.cluster.time_out_transaction(&id);
            }
        }
        Ok(self.finished())
    }

    /// Checks every invariant against the log: the shared verifier's checks
    /// ([`crate::invariants`]) over the model's records, then what only the model can check.
    fn check(&mut self, reference: Option<&Outputs>) -> Result<Outputs> {
        let config = self.instances[0].config.clone();
        let pipeline = &config.pipelines[PIPELINE];
        let outputs = Outputs::read(&self.cluster, &config)?;
        let mut found = Invariants::default();

        // No loss, no duplicates: `breadcrumb verify`'s tally and report.
        let input = consumed_records(&self.cluster, INPUT_TOPIC);
        let output = consumed_records(&self.cluster, &pipeline.output_topic);
        let dead_letters = consumed_records(&self.cluster, &config.dead_letter_topic());
        let mut exactly_once = Report {
            input_records: input.len() as u64,
            distinct_input_ids: self.new_ids.len() as u64,
            output_records: output.len() as u64,
            ..Report::default()
        };
        let mut output_counts: HashMap<String, u64> = HashMap::new();
        for (_, id, _) in outputs.main.values().flatten() {
            *output_counts.entry(id.clone()).or_default() += 1;
        }
        exactly_once.tally(&self.new_ids, &output_counts, &BTreeSet::new());
        found.check_exactly_once_report(exactly_once.exactly_once(), &exactly_once.render())?;
        self.report.events_out = output_counts.len() as u64;
        // Per-key order and dead letters exactly once, by the poison records' coordinates.
        found.check_order(&output)?;
        found.check_dead_letters(&dead_letters, &poison_coordinates(&input), self.poison);
        self.report.dead_letters = dead_letters.len() as u64;

        // The reconciliation ledger: `breadcrumb verify --ledger` over the model's topics, with
        // the group's committed offsets.
        let cluster = self.cluster.clone();
        let committed_offsets: BTreeMap<(String, i32), i64> = self
            .all_partitions()
            .into_iter()
            .filter_map(|(topic, partition)| {
                let offset = cluster.committed_offset(&topic, partition)?;
                Some(((topic, partition), offset))
            })
            .collect();
        let ledger =
            verify_ledger_over(&config, PIPELINE, &None, &committed_offsets, &mut |topic| {
                Ok(owned_messages(&cluster, topic))
            })?;
        found.check_ledger_report(ledger.consistent(), &ledger.render())?;

        self.check_state(&config, &mut found)?;
        self.record(&found);

        // What only the model can check: nothing read from an aborted transaction, and the
        // same output as the fault-free run.
        let aborted_reads = self.cluster.stats().aborted_reads;
        if aborted_reads > 0 {
            self.report.violation(
                "no aborted read",
                format!("the engine read {aborted_reads} records of aborted transactions"),
            );
        }
        if let Some(reference) = reference {
            self.check_against(reference, &outputs);
        }
        Ok(outputs)
    }

    /// Files the shared verifier's findings under the invariants' names.
    fn record(&mut self, found: &Invariants) {
        for (invariant, count) in [
            ("no loss", found.lost),
            ("no duplicates", found.duplicated),
            ("per-key order", found.out_of_order),
            ("dead letters once", found.dead_letters_wrong),
            ("ledger", found.ledger_violations),
            ("state equals changelog", found.state_mismatches),
            ("no canary in logs or metrics", found.canaries_leaked),
        ] {
            if count > 0 {
                self.report.violation(
                    invariant,
                    format!("{count} found: {}", found.details.join("\n")),
                );
            }
        }
    }

    /// The same output whatever the schedule. Without a repartition topic the only
    /// interleaving is the input's own order, so every key's output must match the fault-free
    /// run; with one, stage two's interleaving of stage one's partitions is the schedule's.
    fn check_against(&mut self, reference: &Outputs, outputs: &Outputs) {
        if !self.spec.repartition && reference.main != outputs.main {
            let differing: Vec<&String> = reference
                .main
                .keys()
                .chain(outputs.main.keys())
                .filter(|key| reference.main.get(*key) != outputs.main.get(*key))
                .take(3)
                .collect();
            self.report.violation(
                "deterministic output",
                format!("output differs from the fault-free run for keys {differing:?}"),
            );
        }
        if reference.dead_letters != outputs.dead_letters
            || reference.duplicates != outputs.duplicates
        {
            self.report.violation(
                "deterministic output",
                format!(
                    "dead letters {} vs {}, duplicates {} vs {}",
                    outputs.dead_letters.len(),
                    reference.dead_letters.len(),
                    outputs.duplicates,
                    reference.duplicates
                ),
            );
        }
    }

    /// Every running instance's RocksDB state, for the partitions it owns, against the state
    /// rebuilt from the committed changelog.
    fn check_state(&mut self, config: &EngineConfig, found: &mut Invariants) -> Result<()> {
        let stateful_topic = self.subscribed.last().expect("subscribed").clone();
        let partitions = self.cluster.partitions(&stateful_topic);
        for index in 0..self.instances.len() {
            let Status::Running(engine) = &self.instances[index].status else {
                continue;
            };
            let owned: Vec<i32> = engine
                .consumer
                .assignment()
                .into_iter()
                .filter(|(topic, _)| *topic == stateful_topic)
                .map(|(_, partition)| partition)
                .collect();
            let backend = self.instances[index].backend.clone().expect("running");
            for store in declared_store_names(config) {
                let changelog = consumed_records(&self.cluster, &config.changelog_topic(&store));
                // Every record a read_committed reader sees committed.
                let committed: BTreeSet<String> = changelog
                    .iter()
                    .filter_map(|record| record.header(breadcrumb_engine::headers::TRANSACTION))
                    .collect();
                let rebuilt: StoreContents =
                    rebuild_from_changelog(&store, &changelog, &committed)?
                        .into_iter()
                        .filter(|((partition, _), _)| owned.contains(partition))
                        .collect();
                let local = local_state(&backend, &store, partitions, Some(&owned))?;
                found.check_store(&store, &local, &rebuilt);
            }
        }
        Ok(())
    }
}

/// What a schedule published, as compared between runs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outputs {
    /// Per key: (sequence, event id, value) in output order.
    pub main: BTreeMap<String, Vec<(u64, String, Vec<u8>)>>,
    pub duplicates: u64,
    /// (source coordinates, reason) of each dead letter.
    pub dead_letters: Vec<(String, String)>,
}

impl Outputs {
    fn read(cluster: &Cluster, config: &EngineConfig) -> Result<Self> {
        let pipeline = &config.pipelines[PIPELINE];
        let decoder = build_decoder(&pipeline.decoder).map_err(|error| anyhow!("{error}"))?;
        let mut envelope = Envelope::default();
        let mut outputs = Outputs::default();
        for (partition, record) in cluster.read_committed(&pipeline.output_topic) {
            let key =
                String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
            let header_pairs: Vec<(String, Option<Vec<u8>>)> = record
                .headers
                .iter()
                .map(|(name, value)| (String::from_utf8_lossy(name).into_owned(), value.clone()))
                .collect();
            let header_refs: Vec<(&str, Option<&[u8]>)> = header_pairs
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref()))
                .collect();
            envelope.clear();
            decoder
                .decode(
                    &RawRecord {
                        topic: &pipeline.output_topic,
                        partition,
                        offset: record.offset,
                        timestamp_ms: record.timestamp_ms,
                        key: record.key.as_deref(),
                        value: record.value.as_deref(),
                        headers: &header_refs,
                    },
                    &mut envelope,
                )
                .map_err(|error| anyhow!("an output record does not decode: {}", error.message))?;
            let sequence = serde_json::from_slice::<serde_json::Value>(
                record.value.as_deref().unwrap_or_default(),
            )
            .ok()
            .and_then(|value| {
                value["sequence"]
                    .as_str()
                    .and_then(|text| text.parse().ok())
            })
            .context("an output event without a sequence")?;
            outputs.main.entry(key).or_default().push((
                sequence,
                envelope.id.clone(),
                record.value.clone().unwrap_or_default(),
            ));
        }
        if let Some(topic) = &pipeline.duplicates_topic {
            outputs.duplicates = cluster.read_committed(topic).len() as u64;
        }
        for (_, record) in cluster.read_committed(&config.dead_letter_topic()) {
            outputs.dead_letters.push((
                format!(
                    "{}/{}/{}",
                    record.header("breadcrumb-source-topic").unwrap_or_default(),
                    record
                        .header("breadcrumb-source-partition")
                        .unwrap_or_default(),
                    record
                        .header("breadcrumb-source-offset")
                        .unwrap_or_default()
                ),
                record.header("breadcrumb-dlq-reason").unwrap_or_default(),
            ));
        }
        outputs.dead_letters.sort();
        Ok(outputs)
    }
}

fn partition_list(partitions: &[(String, i32)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    list
}

/// A topic's committed records as rdkafka messages (for the ledger checker).
fn owned_messages(cluster: &Cluster, topic: &str) -> Vec<OwnedMessage> {
    cluster
        .read_committed(topic)
        .into_iter()
        .map(|(partition, record): (i32, StoredRecord)| {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                headers = headers.insert(Header {
                    key: &String::from_utf8_lossy(name),
                    value: value.as_deref(),
                });
            }
            OwnedMessage::new(
                record.value.clone(),
                record.key.clone(),
                topic.to_owned(),
                record
                    .timestamp_ms
                    .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
                partition,
                record.offset,
                Some(headers),
            )
        })
        .collect()
}

/// Where a schedule's engine logs go: a shared buffer.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().expect("log buffer")))
            .into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

/// A topic's committed records as the shared verifier takes them, by partition and offset.
fn consumed_records(cluster: &Cluster, topic: &str) -> Vec<ConsumedRecord> {
    cluster
        .read_committed(topic)
        .into_iter()
        .map(|(partition, record)| ConsumedRecord {
            partition,
            offset: record.offset,
            key: record.key,
            value: record.value,
            headers: record
                .headers
                .into_iter()
                .map(|(name, value)| (String::from_utf8_lossy(&name).into_owned(), value))
                .collect(),
        })
        .collect()
}
