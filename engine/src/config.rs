//! Engine configuration: one TOML file, then `BREADCRUMB__SECTION__KEY` environment overrides.
//!
//! Layers, lowest first: the defaults below, the file, the environment. Structure errors (an
//! unknown key, a wrong type) are reported with the key's full path; then [`EngineConfig::validate`]
//! reports every cross-field problem at once, each naming its key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use breadcrumb_operators::dedupe::DedupeConfig;
use breadcrumb_operators::lineage::LineageConfig;
use breadcrumb_operators::ordering::OrderingConfig;
use breadcrumb_operators::pii::PiiConfig;
use breadcrumb_operators::sampling::SamplingConfig;
use breadcrumb_schemas::{DecoderConfig, RegistryConfig};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Prefix of environment overrides; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "BREADCRUMB";

/// Kafka Streams' default for exactly-once: short enough for low end-to-end latency, long enough
/// to amortise the transaction round trips.
pub const fn default_commit_interval_ms() -> u64 {
    100
}

/// Bounds the records one transaction carries (and so the overlay and producer queue).
pub const fn default_max_records_per_transaction() -> usize {
    100_000
}

/// librdkafka's default transaction timeout.
pub const fn default_transaction_timeout_ms() -> u64 {
    60_000
}

/// How much a consumer may prefetch per partition ahead of processing (librdkafka
/// `queued.max.messages.kbytes`).
pub const fn default_max_prefetch_kbytes() -> u64 {
    16 * 1024
}

pub const fn default_restore_timeout_ms() -> u64 {
    300_000
}

/// Half a minute of commits at most to replay after a crash.
pub const fn default_flush_interval_ms() -> u64 {
    30_000
}

pub fn default_state_dir() -> PathBuf {
    PathBuf::from("./breadcrumb-state")
}

pub fn default_metrics_address() -> String {
    "127.0.0.1:9464".to_owned()
}

/// `-1` asks the broker for its default replication factor (KIP-464).
pub const fn default_replication_factor() -> i32 {
    -1
}

pub const fn default_block_cache_bytes() -> usize {
    128 << 20
}

pub const fn default_write_buffer_bytes() -> usize {
    32 << 20
}

/// Keys longer than this are not business keys; 16 KiB leaves room for composite keys.
pub const fn default_max_key_bytes() -> usize {
    16 * 1024
}

/// Far above what real producers attach, far below what would slow a record down.
pub const fn default_max_headers() -> usize {
    256
}

/// Crashes at one offset before its record is quarantined: one crash may be a coincidence
/// (a kill, an OOM), three at the same record are not.
pub const fn default_quarantine_after_crashes() -> u32 {
    3
}

pub fn default_log_level() -> String {
    "info".to_owned()
}

/// Exactly-once (transactions) or at-least-once (plain commits after outputs are acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    #[default]
    ExactlyOnce,
    AtLeastOnce,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Consumer group id, transactional-id prefix and prefix of internal topics. Every instance
    /// of one deployment uses the same value.
    pub application_id: String,
    /// This instance's stable identity within the deployment; with `application_id` it forms the
    /// transactional id, so a restarted instance fences its previous incarnation. Defaults to the
    /// host name.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// `exactly_once` (default) or `at_least_once`.
    #[serde(default)]
    pub processing_guarantee: ProcessingGuarantee,
    /// How often the open transaction commits, in milliseconds.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// A transaction commits early once it holds this many input records; bounds how far
    /// processing runs ahead of the last commit.
    #[serde(default = "default_max_records_per_transaction")]
    pub max_records_per_transaction: usize,
    /// Kafka transaction timeout in milliseconds; a crashed instance's open transaction is
    /// aborted by the broker after this long.
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// Consumer prefetch bound per partition, in KiB.
    #[serde(default = "default_max_prefetch_kbytes")]
    pub max_prefetch_kbytes: u64,
    /// Dead-letter topic; defaults to `<application_id>-dlq`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Reconciliation ledger topic: one record per transaction and input partition (offset
    /// range, counts, output digest), written in the same transaction; defaults to
    /// `<application_id>-ledger`.
    #[serde(default)]
    pub ledger_topic: Option<String>,
    /// Replication factor of topics breadcrumb creates; -1 uses the broker default.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Append a line per transaction (its id, then whether it committed) to this file, so test
    /// harnesses can tell committed output from aborted output on brokers that leak the latter.
    #[serde(default)]
    pub transaction_journal_path: Option<PathBuf>,
    /// librdkafka properties passed as they are (`"bootstrap.servers"`, SASL, TLS...). In
    /// environment overrides, `_` stands for `.` (`BREADCRUMB__KAFKA__BOOTSTRAP_SERVERS`).
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
    /// librdkafka properties whose values are read from files at start-up: property → file
    /// path (`"sasl.password" = "/run/secrets/kafka-password"`). For secrets, which belong in
    /// files or the environment, never in the configuration file itself. A trailing newline is
    /// removed. A property may not be set both here and in `[kafka]`.
    #[serde(default)]
    pub kafka_secret_files: BTreeMap<String, PathBuf>,
    /// How generated records (gap records) are encoded.
    #[serde(default)]
    pub generated_records: GeneratedRecordsConfig,
    /// Limits on input records and crash quarantine.
    #[serde(default)]
    pub input: InputConfig,
    /// Local state.
    #[serde(default)]
    pub state: StateConfig,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// OpenLineage run events on a Kafka topic; absent: none are sent.
    #[serde(default)]
    pub openlineage: Option<OpenLineageConfig>,
    /// Pipelines by name.
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

/// `[state]`: RocksDB placement and memory bounds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the RocksDB instance; one per engine instance.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Shared block cache, bytes.
    #[serde(default = "default_block_cache_bytes")]
    pub block_cache_bytes: usize,
    /// Memtable size per store, bytes.
    #[serde(default = "default_write_buffer_bytes")]
    pub write_buffer_bytes: usize,
    /// Longest a partition's restore may take before the engine gives up and retries, ms.
    #[serde(default = "default_restore_timeout_ms")]
    pub restore_timeout_ms: u64,
    /// Memtables are flushed to disk at the first commit after this long, ms. The WAL is off
    /// (the changelog is the truth), so a crash loses what was not flushed and the restore
    /// replays it from the changelog: this bounds that replay. 0: only when memtables fill.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
            block_cache_bytes: default_block_cache_bytes(),
            write_buffer_bytes: default_write_buffer_bytes(),
            restore_timeout_ms: default_restore_timeout_ms(),
            flush_interval_ms: default_flush_interval_ms(),
        }
    }
}

/// How breadcrumb writes the records it generates itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GeneratedRecordsFormat {
    /// One JSON object per record.
    #[default]
    Json,
    /// Avro in the Confluent wire format, each schema (from `schemas/avro/`) registered under
    /// `<topic>-value`.
    Avro,
}

/// `[generated_records]`: the encoding of records breadcrumb generates (ordering gap records).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratedRecordsConfig {
    /// `json` or `avro`.
    #[serde(default)]
    pub format: GeneratedRecordsFormat,
    /// The Schema Registry the schemas are registered with (`format = "avro"`; `url` required).
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
}

/// `[input]`: what makes an input record poison before any decoder sees it, and when a record
/// that keeps crashing the engine is set aside.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Records with a longer key go to the dead-letter topic (reason `oversized_key`), without
    /// the key.
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    /// Records with more headers go to the dead-letter topic (reason `invalid_headers`), as do
    /// records with a header name that is not UTF-8.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// A record the engine crashed on this many times (at the same offset, counted in the state
    /// directory) goes to the dead-letter topic with reason `quarantined` instead of being
    /// processed again.
    #[serde(default = "default_quarantine_after_crashes")]
    pub quarantine_after_crashes: u32,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            max_key_bytes: default_max_key_bytes(),
            max_headers: default_max_headers(),
            quarantine_after_crashes: default_quarantine_after_crashes(),
        }
    }
}

/// `[http]`: Prometheus `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve the endpoints at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `host:port` to listen on.
    #[serde(default = "default_metrics_address")]
    pub listen_address: String,
    /// `host:port` where other instances and clients reach this one's query endpoints (like
    /// Kafka Streams' `application.server`); defaults to `listen_address`. Set it when
    /// listening on a wildcard address or behind NAT. Published in the group consumer's
    /// `client.id`, so every instance can name the owner of a key it does not hold.
    #[serde(default)]
    pub advertised_address: Option<String>,
}

impl HttpConfig {
    /// Where this instance's query endpoints are reached.
    pub fn advertised_address(&self) -> &str {
        self.advertised_address
            .as_deref()
            .unwrap_or(&self.listen_address)
    }
}

fn default_true() -> bool {
    true
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen_address: default_metrics_address(),
            advertised_address: None,
        }
    }
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `breadcrumb_engine=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

/// The namespace of breadcrumb's OpenLineage jobs unless configured.
pub fn default_openlineage_namespace() -> String {
    "breadcrumb".to_owned()
}

/// A RUNNING event a minute: often enough for a lineage UI to show live counts, rare enough to
/// be noise-free on the topic.
pub const fn default_openlineage_running_interval_ms() -> u64 {
    60_000
}

/// `[openlineage]`: OpenLineage run events (START, RUNNING, COMPLETE or FAIL) on a Kafka topic,
/// one job per pipeline. Metadata, not output: they are sent outside the transactions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpenLineageConfig {
    /// The topic the run events go to (created like the outputs when missing); the section's
    /// presence enables OpenLineage.
    pub topic: String,
    /// Namespace of the jobs; each pipeline is the job `<application_id>.<pipeline>` in it.
    #[serde(default = "default_openlineage_namespace")]
    pub namespace: String,
    /// How often a RUNNING event with the committed output counts is sent, in milliseconds.
    #[serde(default = "default_openlineage_running_interval_ms")]
    pub running_interval_ms: u64,
}

/// What a pipeline re-keys its input by before its stateful stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RepartitionKey {
    /// The event id: copies of one event meet on one partition whatever their Kafka key.
    EventId,
    /// The trace id of the event's `traceparent`.
    TraceId,
    /// The event subject (business key).
    Subject,
}

/// `[pipelines.<name>]`: input topics, decoding, operators, outputs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Topics read by this pipeline (they must exist). More than one requires `repartition_by`,
    /// so that state has a single owning topic.
    pub input_topics: Vec<String>,
    /// How input records are decoded.
    pub decoder: DecoderConfig,
    /// Re-key records through the internal topic `<application_id>-<pipeline>-repartition`
    /// before the operators, in the same transaction.
    #[serde(default)]
    pub repartition_by: Option<RepartitionKey>,
    /// Where first copies go.
    pub output_topic: String,
    /// Where duplicates go; when unset they are counted and not republished.
    #[serde(default)]
    pub duplicates_topic: Option<String>,
    /// Where conflicts (same id, different payload) go; defaults to `<output_topic>-conflicts`.
    #[serde(default)]
    pub conflicts_topic: Option<String>,
    /// The dedupe operator.
    #[serde(default)]
    pub dedupe: DedupeConfig,
    /// Personal data rewriting, run first in the chain; absent: records pass as they are. With
    /// it, the pipeline's dead letters carry no key, value or original headers.
    #[serde(default)]
    pub pii: Option<PiiConfig>,
    /// The ordering operator, run after dedupe in the same transaction; absent: no ordering.
    #[serde(default)]
    pub ordering: Option<OrderingConfig>,
    /// Where ordering sends events that arrive after their gap was given up; defaults to
    /// `<output_topic>-late`. Only with `ordering`.
    #[serde(default)]
    pub late_topic: Option<String>,
    /// Where ordering sends gap records; defaults to `<output_topic>-gaps`. Only with
    /// `ordering`.
    #[serde(default)]
    pub gaps_topic: Option<String>,
    /// Tail sampling of OTLP traces (decoder `otlp_proto` or `otlp_json`): the pipeline's only
    /// operator, instead of dedupe and ordering. `output_topic` receives the spans of kept
    /// traces.
    #[serde(default)]
    pub sampling: Option<SamplingConfig>,
    /// Where sampling sends one decision record per trace; defaults to
    /// `<output_topic>-decisions`. Only with `sampling`.
    #[serde(default)]
    pub decisions_topic: Option<String>,
    /// Record-level lineage, run last in the chain: each business event is joined to the span
    /// that produced it, its trace's root span and its parent event, republished with lineage
    /// headers, and described by edge records on `lineage_topic`. Requires
    /// `repartition_by = "trace_id"`, so a trace's spans and events meet on one partition.
    #[serde(default)]
    pub lineage: Option<LineageConfig>,
    /// OTLP trace topics (one `ExportTraceServiceRequest` in protobuf per record) whose spans
    /// lineage joins events to. They are split per trace into the repartition topic beside the
    /// events. Only with `lineage`.
    #[serde(default)]
    pub span_topics: Vec<String>,
    /// Where lineage edge records go; defaults to `<output_topic>-lineage`. Only with
    /// `lineage`.
    #[serde(default)]
    pub lineage_topic: Option<String>,
}

impl PipelineConfig {
    /// The late topic, when the pipeline orders.
    pub fn late_topic(&self) -> Option<String> {
        self.ordering.as_ref().map(|_| {
            self.late_topic
                .clone()
                .unwrap_or_else(|| format!("{}-late", self.output_topic))
        })
    }

    /// The gaps topic, when the pipeline orders.
    pub fn gaps_topic(&self) -> Option<String> {
        self.ordering.as_ref().map(|_| {
            self.gaps_topic
                .clone()
                .unwrap_or_else(|| format!("{}-gaps", self.output_topic))
        })
    }

    /// The decisions topic, when the pipeline samples.
    pub fn decisions_topic(&self) -> Option<String> {
        self.sampling.as_ref().map(|_| {
            self.decisions_topic
                .clone()
                .unwrap_or_else(|| format!("{}-decisions", self.output_topic))
        })
    }

    /// The lineage edge topic, when the pipeline joins lineage.
    pub fn lineage_topic(&self) -> Option<String> {
        self.lineage.as_ref().map(|_| {
            self.lineage_topic
                .clone()
                .unwrap_or_else(|| format!("{}-lineage", self.output_topic))
        })
    }

    pub fn conflicts_topic(&self) -> String {
        self.conflicts_topic
            .clone()
            .unwrap_or_else(|| format!("{}-conflicts", self.output_topic))
    }
}

impl EngineConfig {
    /// Loads `path` (TOML) with environment overrides, then validates.
    pub fn load(path: &Path) -> Result<Self> {
        let builder = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            );
        let layered = builder
            .build()
            .map_err(|error| EngineError::Config(vec![redact_config_error(&error.to_string())]))?;
        Self::from_layered(layered)
    }

    /// Parses a TOML string without environment overrides (tests, the embedded demo).
    pub fn from_toml(text: &str) -> Result<Self> {
        let layered = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|error| EngineError::Config(vec![error.to_string()]))?;
        Self::from_layered(layered)
    }

    fn from_layered(layered: config::Config) -> Result<Self> {
        // The `config` crate reads `"bootstrap.servers"` as a nested path; librdkafka keys are
        // flattened back to dotted names before typed deserialisation.
        let mut tree: serde_json::Value = layered
            .try_deserialize()
            .map_err(|error| EngineError::Config(vec![error.to_string()]))?;
        for table in ["kafka", "kafka_secret_files"] {
            if let Some(kafka) = tree.get_mut(table) {
                let mut flat = serde_json::Map::new();
                flatten_kafka(kafka, "", &mut flat);
                *kafka = serde_json::Value::Object(flat);
            }
        }
        let mut config: EngineConfig = serde_path_to_error::deserialize(tree).map_err(|error| {
            let path = error.path().to_string();
            EngineError::Config(vec![redact_config_error(&format!(
                "{path}: {}",
                error.inner()
            ))])
        })?;
        config.read_secret_files()?;
        let errors = config.validate();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(EngineError::Config(errors))
        }
    }

    /// Moves the contents of `kafka_secret_files` into `kafka`. Errors name the property and
    /// the file, never what the file holds.
    fn read_secret_files(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        for (property, path) in &self.kafka_secret_files {
            if self.kafka.contains_key(property) {
                errors.push(format!(
                    "kafka_secret_files.\"{property}\": also set in [kafka]; keep one"
                ));
                continue;
            }
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let value = text.trim_end_matches(['\n', '\r']).to_owned();
                    self.kafka.insert(property.clone(), value);
                }
                Err(error) => errors.push(format!(
                    "kafka_secret_files.\"{property}\": cannot read {}: {error}",
                    path.display()
                )),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Config(errors))
        }
    }

    /// Every cross-field problem, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.application_id.trim().is_empty() {
            errors.push("application_id: must not be empty".to_owned());
        }
        if !self
            .application_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            errors.push(
                "application_id: only ASCII letters, digits, '-', '_' and '.' (it names topics)"
                    .to_owned(),
            );
        }
        if self.commit_interval_ms == 0 {
            errors.push("commit_interval_ms: must be positive".to_owned());
        }
        if self.max_records_per_transaction == 0 {
            errors.push("max_records_per_transaction: must be positive".to_owned());
        }
        if self.transaction_timeout_ms <= self.commit_interval_ms {
            errors.push(format!(
                "transaction_timeout_ms: must exceed commit_interval_ms ({} <= {})",
                self.transaction_timeout_ms, self.commit_interval_ms
            ));
        }
        if let Some(address) = &self.http.advertised_address {
            let (host, port) = address.rsplit_once(':').unwrap_or_default();
            if host.is_empty()
                || port.parse::<u16>().is_err()
                || address.contains(|c: char| c == '/' || c.is_whitespace())
            {
                errors.push(format!(
                    "http.advertised_address: `{address}` is not `host:port`"
                ));
            }
        }
        if self.input.max_key_bytes == 0 {
            errors.push("input.max_key_bytes: must be positive".to_owned());
        }
        if self.input.quarantine_after_crashes == 0 {
            errors.push("input.quarantine_after_crashes: must be positive".to_owned());
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            errors.push("replication_factor: must be -1 (broker default) or positive".to_owned());
        }
        if !self.kafka.contains_key("bootstrap.servers") {
            errors.push("kafka.\"bootstrap.servers\": required".to_owned());
        }
        for reserved in [
            "group.id",
            "transactional.id",
            "enable.auto.commit",
            "isolation.level",
            "partition.assignment.strategy",
        ] {
            if self.kafka.contains_key(reserved) {
                errors.push(format!(
                    "kafka.\"{reserved}\": set by breadcrumb itself (exactly-once depends on it); remove it"
                ));
            }
        }
        if self.generated_records.format == GeneratedRecordsFormat::Avro
            && self
                .generated_records
                .registry
                .as_ref()
                .and_then(|registry| registry.url.as_ref())
                .is_none()
        {
            errors
                .push("generated_records.registry.url: required with format = \"avro\"".to_owned());
        }
        if self.pipelines.is_empty() {
            errors.push("pipelines: at least one pipeline is required".to_owned());
        }
        if let Some(openlineage) = &self.openlineage {
            errors.extend(self.validate_openlineage(openlineage));
        }
        let mut seen_inputs: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, pipeline) in &self.pipelines {
            let prefix = format!("pipelines.{name}");
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            {
                errors.push(format!(
                    "{prefix}: pipeline names use ASCII letters, digits, '-' and '_' (they name stores and topics)"
                ));
            }
            if pipeline.input_topics.is_empty() {
                errors.push(format!(
                    "{prefix}.input_topics: at least one topic is required"
                ));
            }
            if pipeline.input_topics.len() > 1 && pipeline.repartition_by.is_none() {
                errors.push(format!(
                    "{prefix}.repartition_by: required when a pipeline reads more than one topic, so its state has a single owning topic"
                ));
            }
            for topic in &pipeline.input_topics {
                if let Some(other) = seen_inputs.insert(topic, name) {
                    errors.push(format!(
                        "{prefix}.input_topics: `{topic}` is already read by pipeline `{other}`"
                    ));
                }
                if topic == &pipeline.output_topic {
                    errors.push(format!(
                        "{prefix}.output_topic: must differ from the input topic `{topic}`"
                    ));
                }
            }
            if pipeline.output_topic.trim().is_empty() {
                errors.push(format!("{prefix}.output_topic: must not be empty"));
            }
            for topic in &pipeline.span_topics {
                if let Some(other) = seen_inputs.insert(topic, name) {
                    errors.push(format!(
                        "{prefix}.span_topics: `{topic}` is already read by pipeline `{other}`"
                    ));
                }
            }
            match &pipeline.lineage {
                Some(lineage) => {
                    errors.extend(lineage.validate(&format!("{prefix}.lineage")));
                    if pipeline.repartition_by != Some(RepartitionKey::TraceId) {
                        errors.push(format!(
                            "{prefix}.repartition_by: lineage needs a trace's spans and events on one partition; set it to \"trace_id\""
                        ));
                    }
                    if pipeline.decoder.is_otlp() {
                        errors.push(format!(
                            "{prefix}.decoder.format: lineage joins business events; spans come from `{prefix}.span_topics`"
                        ));
                    }
                    if pipeline.sampling.is_some() {
                        errors.push(format!(
                            "{prefix}.sampling: a lineage pipeline has no sampling stage; sample its span topics in a pipeline of their own"
                        ));
                    }
                }
                None => {
                    for (key, set) in [
                        ("span_topics", !pipeline.span_topics.is_empty()),
                        ("lineage_topic", pipeline.lineage_topic.is_some()),
                    ] {
                        if set {
                            errors.push(format!(
                                "{prefix}.{key}: only used with `{prefix}.lineage`, which is not configured"
                            ));
                        }
                    }
                }
            }

            errors.extend(pipeline.decoder.validate(&format!("{prefix}.decoder")));
            errors.extend(pipeline.dedupe.validate(&format!("{prefix}.dedupe")));
            if let Some(pii) = &pipeline.pii {
                errors.extend(pii.validate(&format!("{prefix}.pii")));
                if !pii.fields.is_empty() && matches!(pipeline.decoder, DecoderConfig::Avro(_)) {
                    errors.push(format!(
                        "{prefix}.pii.fields: rewrites JSON values only; this pipeline decodes Avro (use `headers` and `key` rules, or rewrite upstream)"
                    ));
                }
            }
            match &pipeline.ordering {
                Some(ordering) => {
                    errors.extend(ordering.validate(&format!("{prefix}.ordering")));
                }
                None => {
                    for (key, set) in [
                        ("late_topic", pipeline.late_topic.is_some()),
                        ("gaps_topic", pipeline.gaps_topic.is_some()),
                    ] {
                        if set {
                            errors.push(format!(
                                "{prefix}.{key}: only used with `{prefix}.ordering`, which is not configured"
                            ));
                        }
                    }
                }
            }
            match &pipeline.sampling {
                Some(sampling) => {
                    errors.extend(sampling.validate(&format!("{prefix}.sampling")));
                    if !pipeline.decoder.is_otlp() {
                        errors.push(format!(
                            "{prefix}.decoder.format: sampling reads OTLP trace batches; use `otlp_proto` or `otlp_json`"
                        ));
                    }
                    if pipeline.ordering.is_some() {
                        errors.push(format!(
                            "{prefix}.ordering: a sampling pipeline has no ordering stage; remove it"
                        ));
                    }
                    match (pipeline.repartition_by, &pipeline.decoder) {
                        (None, _) => {}
                        (Some(RepartitionKey::TraceId), DecoderConfig::OtlpProto(_)) => {}
                        (Some(RepartitionKey::TraceId), _) => errors.push(format!(
                            "{prefix}.repartition_by: batches are split by trace id for `otlp_proto` only; convert `otlp_json` upstream or partition by trace id there"
                        )),
                        (Some(_), _) => errors.push(format!(
                            "{prefix}.repartition_by: a sampling pipeline re-keys by \"trace_id\" only"
                        )),
                    }
                    if pipeline.duplicates_topic.is_some() || pipeline.conflicts_topic.is_some() {
                        errors.push(format!(
                            "{prefix}.duplicates_topic: a sampling pipeline has no dedupe stage; remove duplicates_topic and conflicts_topic"
                        ));
                    }
                }
                None => {
                    if pipeline.decoder.is_otlp() {
                        errors.push(format!(
                            "{prefix}.sampling: OTLP decoders feed tail sampling; configure `{prefix}.sampling`"
                        ));
                    }
                    if pipeline.decisions_topic.is_some() {
                        errors.push(format!(
                            "{prefix}.decisions_topic: only used with `{prefix}.sampling`, which is not configured"
                        ));
                    }
                }
            }
        }
        errors
    }

    /// Problems of the `[openlineage]` section, each naming its key.
    fn validate_openlineage(&self, openlineage: &OpenLineageConfig) -> Vec<String> {
        let mut errors = Vec::new();
        let topic = openlineage.topic.as_str();
        if topic.trim().is_empty() {
            errors.push("openlineage.topic: must not be empty".to_owned());
        }
        if openlineage.namespace.trim().is_empty() {
            errors.push("openlineage.namespace: must not be empty".to_owned());
        }
        if openlineage.running_interval_ms == 0 {
            errors.push("openlineage.running_interval_ms: must be positive".to_owned());
        }
        // Run events on a topic a pipeline reads would be processed as business input, and on
        // one it writes they would be mixed into its output.
        for (name, pipeline) in &self.pipelines {
            if pipeline.input_topics.iter().any(|input| input == topic) {
                errors.push(format!(
                    "openlineage.topic: `{topic}` is an input of pipeline `{name}`; use a topic of its own"
                ));
            }
            let written = [
                Some(pipeline.output_topic.clone()),
                pipeline.duplicates_topic.clone(),
                Some(pipeline.conflicts_topic()),
                pipeline.late_topic(),
                pipeline.gaps_topic(),
                pipeline.decisions_topic(),
            ];
            if written.iter().flatten().any(|output| output == topic) {
                errors.push(format!(
                    "openlineage.topic: `{topic}` is written by pipeline `{name}`; use a topic of its own"
                ));
            }
        }
        if topic == self.dead_letter_topic() || topic == self.ledger_topic() {
            errors.push(format!(
                "openlineage.topic: `{topic}` is the dead-letter or ledger topic; use a topic of its own"
            ));
        }
        errors
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}-dlq", self.application_id))
    }

    /// The reconciliation ledger topic.
    pub fn ledger_topic(&self) -> String {
        self.ledger_topic
            .clone()
            .unwrap_or_else(|| format!("{}-ledger", self.application_id))
    }

    /// This instance's id.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(host_name)
    }

    /// The transactional id of this instance.
    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.application_id, self.instance_id())
    }

    /// The changelog topic of a store.
    pub fn changelog_topic(&self, store: &str) -> String {
        format!("{}-{store}-changelog", self.application_id)
    }

    /// The repartition topic of a pipeline.
    pub fn repartition_topic(&self, pipeline: &str) -> String {
        format!("{}-{pipeline}-repartition", self.application_id)
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "breadcrumb".to_owned())
}

/// Turns `{"bootstrap": {"servers": "x"}}` back into `{"bootstrap.servers": "x"}`; environment
/// keys (`bootstrap_servers`) map `_` to `.` since librdkafka property names have no `_`.
fn flatten_kafka(
    value: &serde_json::Value,
    prefix: &str,
    out: &mut serde_json::Map<String, serde_json::Value>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let key = key.replace('_', ".");
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten_kafka(child, &name, out);
            }
        }
        serde_json::Value::String(text) => {
            out.insert(prefix.to_owned(), serde_json::Value::String(text.clone()));
        }
        other => {
            out.insert(
                prefix.to_owned(),
                serde_json::Value::String(other.to_string()),
            );
        }
    }
}

/// librdkafka keys whose values are secrets: never logged, printed or put in errors.
pub fn is_secret_kafka_key(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key.ends_with(".key.pem")
        || key.contains("sasl.oauthbearer.config")
        || key == "ssl.key.pem"
}

/// The `[kafka]` table with secret values masked, for logs.
pub fn redacted_kafka(kafka: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    kafka
        .iter()
        .map(|(key, value)| {
            let shown = if is_secret_kafka_key(key) {
                "<redacted>".to_owned()
            } else {
                value.clone()
            };
            (key.clone(), shown)
        })
        .collect()
}

fn redact_config_error(message: &str) -> String {
    // The config crate may quote a value in a parse error; parse errors about the kafka table
    // are reduced to their location so a password can never be echoed.
    if message.contains("password") || message.contains("secret") {
        "configuration could not be parsed (details withheld: they may contain a secret)".to_owned()
    } else {
        message.to_owned()
    }
}

#[cfg(test)]
mod tests;
