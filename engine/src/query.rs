//! State queries over HTTP: `/lineage/events/{id}`, `/dedupe/{key}` and
//! `/sampling/traces/{trace_id}`, answered from this instance's partitions.
//!
//! Stores belong to the processing thread (`&mut`, single-threaded), so a query travels there
//! through a bounded channel that the processing loop polls between records (a few per loop
//! iteration); the HTTP handler waits for the reply with a timeout. The processing thread only
//! reads local state and reports which of its partitions it searched; everything that may block
//! on Kafka (who owns a partition, how many partitions a topic has) happens here, on the HTTP
//! side, in `spawn_blocking` behind a small cache.
//!
//! Instances find each other through Kafka, not a cluster of their own: each group member's
//! `client.id` is `breadcrumb/<instance_id>/<advertised_address>` ([`member_client_id`]), and
//! the group's members and assignments come from DescribeGroups ([`KafkaDirectory`]). When a
//! key's partition can be computed (a key of an internal repartition topic, which librdkafka's
//! default `consistent_random` partitioner places at CRC32(key) mod partitions) and another
//! member owns it, the answer is `421 Misdirected Request` naming that member. When it cannot
//! be computed and this instance does not know the key, the `404` lists the other instances.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use breadcrumb_operators::Lookup;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::config::RepartitionKey;

/// Queries waiting for the processing thread at most; more get `503`.
pub const QUEUE_CAPACITY: usize = 64;
/// Queries the processing loop answers per iteration at most, so queries never starve records.
pub const QUERIES_PER_ITERATION: usize = 4;
/// How long a handler waits for the processing thread (which may be inside a commit or a
/// restore) before answering `504`.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Ancestors a lineage query returns when `depth` is not given.
pub const DEFAULT_LINEAGE_DEPTH: usize = 8;
/// Largest `depth` a lineage query may ask for: each ancestor is a point read on the
/// processing thread.
pub const MAX_LINEAGE_DEPTH: usize = 64;
/// How long the group's members and assignments are reused: they change only on a rebalance,
/// and a stale answer costs the client one more hop.
const MEMBERS_TTL: Duration = Duration::from_secs(2);
/// How long a topic's partition count is reused (counts only ever grow).
const PARTITION_COUNT_TTL: Duration = Duration::from_secs(60);
/// Bound on each Kafka call of the directory (DescribeGroups, metadata).
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(3);
/// Prefix of the group consumer's `client.id` that marks a breadcrumb member.
const CLIENT_ID_PREFIX: &str = "breadcrumb/";

// ---------------------------------------------------------------------------------------------
// Queries and the channel to the processing thread

/// A state query, owned so it can cross to the processing thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// An event's lineage. `trace_id` (when the caller knows it) makes its partition
    /// computable.
    LineageEvent {
        event_id: String,
        depth: usize,
        trace_id: Option<[u8; 16]>,
    },
    /// Dedupe's first copy of a key (the event id by default).
    Dedupe { key: String },
    /// Tail sampling's decision for a trace.
    SamplingTrace { trace_id: [u8; 16] },
}

impl Query {
    /// The operator-level question.
    pub fn lookup(&self) -> Lookup<'_> {
        match self {
            Query::LineageEvent {
                event_id, depth, ..
            } => Lookup::LineageEvent {
                event_id,
                depth: *depth,
            },
            Query::Dedupe { key } => Lookup::DedupeKey { key },
            Query::SamplingTrace { trace_id } => Lookup::SamplingTrace {
                trace_id: *trace_id,
            },
        }
    }

    /// The Kafka key the queried item has on the pipeline's state topic, when the pipeline
    /// re-keys into an internal repartition topic by something the query names; `None` when
    /// its partition cannot be computed (the producer of an input topic chose it).
    pub fn routing_key(
        &self,
        repartition: Option<RepartitionKey>,
        dedupe_key_fields: &[String],
    ) -> Option<Vec<u8>> {
        let repartition = repartition?;
        match self {
            Query::LineageEvent {
                trace_id: Some(trace_id),
                ..
            }
            | Query::SamplingTrace { trace_id } => {
                (repartition == RepartitionKey::TraceId).then(|| hex(trace_id).into_bytes())
            }
            Query::LineageEvent { trace_id: None, .. } => None,
            Query::Dedupe { key } => {
                let field = match repartition {
                    RepartitionKey::EventId => "id",
                    RepartitionKey::Subject => "subject",
                    RepartitionKey::TraceId => return None,
                };
                (dedupe_key_fields.len() == 1 && dedupe_key_fields[0] == field)
                    .then(|| key.as_bytes().to_vec())
            }
        }
    }

    fn describe(&self) -> Value {
        match self {
            Query::LineageEvent {
                event_id,
                depth,
                trace_id,
            } => json!({
                "lineage_event": event_id,
                "depth": depth,
                "trace_id": trace_id.as_ref().map(hex),
            }),
            Query::Dedupe { key } => json!({ "dedupe_key": key }),
            Query::SamplingTrace { trace_id } => json!({ "sampling_trace": hex(trace_id) }),
        }
    }
}

/// What the processing thread found for a query on this instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalAnswer {
    pub found: Vec<Found>,
    /// Every pipeline that could answer the query, found or not.
    pub searched: Vec<Searched>,
    /// Lookups that failed (a corrupt payload, a RocksDB error), as messages.
    pub errors: Vec<String>,
}

/// One local partition's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub pipeline: String,
    pub partition: i32,
    pub value: Value,
}

/// A pipeline able to answer the query, and where this instance looked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Searched {
    pub pipeline: String,
    /// The topic whose partitions own the pipeline's state.
    pub topic: String,
    /// Partitions of `topic` assigned here (and restored), all searched.
    pub local_partitions: Vec<i32>,
    /// See [`Query::routing_key`].
    pub routing_key: Option<Vec<u8>>,
}

/// A query on its way to the processing thread.
pub struct QueryRequest {
    pub query: Query,
    reply: oneshot::Sender<LocalAnswer>,
}

/// Why the processing thread did not answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AskError {
    #[error("{QUEUE_CAPACITY} queries are already waiting for the processing thread")]
    Busy,
    #[error("the processing thread did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the processing thread is not running")]
    Stopped,
}

/// The HTTP side of the query channel.
#[derive(Clone)]
pub struct QuerySender(SyncSender<QueryRequest>);

/// The processing thread's side of the query channel.
pub struct QueryReceiver(Receiver<QueryRequest>);

/// A bounded query channel of [`QUEUE_CAPACITY`].
pub fn channel() -> (QuerySender, QueryReceiver) {
    let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
    (QuerySender(sender), QueryReceiver(receiver))
}

impl QuerySender {
    /// Queues `query` without waiting for room and waits at most `timeout` for the answer.
    pub async fn ask(&self, query: Query, timeout: Duration) -> Result<LocalAnswer, AskError> {
        let (reply, answer) = oneshot::channel();
        self.0
            .try_send(QueryRequest { query, reply })
            .map_err(|error| match error {
                TrySendError::Full(_) => AskError::Busy,
                TrySendError::Disconnected(_) => AskError::Stopped,
            })?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            // The processing loop dropped the request: it is restarting or stopping.
            Ok(Err(_)) => Err(AskError::Stopped),
            Err(_) => Err(AskError::Timeout(timeout)),
        }
    }
}

impl QueryReceiver {
    /// Answers at most `max` waiting queries with `answer`, without blocking.
    pub fn serve(&self, max: usize, mut answer: impl FnMut(&Query) -> LocalAnswer) {
        for _ in 0..max {
            match self.0.try_recv() {
                Ok(request) => {
                    // A handler that timed out no longer listens; nothing to do about it.
                    let _ = request.reply.send(answer(&request.query));
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Membership: who owns which partition, through Kafka

/// `client.id` of the group consumer: names the instance and where it answers queries.
pub fn member_client_id(instance_id: &str, advertised_address: Option<&str>) -> String {
    format!(
        "{CLIENT_ID_PREFIX}{instance_id}/{}",
        advertised_address.unwrap_or_default()
    )
}

/// The instance id and advertised address in a member's `client.id`; `None` for a client that
/// is not a breadcrumb instance. The address is the last `/`-separated part (an address has no
/// `/`), so an instance id may contain one.
pub fn parse_member_client_id(client_id: &str) -> Option<(&str, Option<&str>)> {
    let rest = client_id.strip_prefix(CLIENT_ID_PREFIX)?;
    let (instance, address) = rest.rsplit_once('/')?;
    (!instance.is_empty()).then_some((instance, (!address.is_empty()).then_some(address)))
}

/// Why a member's assignment could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssignmentError {
    #[error("assignment truncated at byte {0}")]
    Truncated(usize),
    #[error("assignment has a negative count or length at byte {0}")]
    Negative(usize),
    #[error("assignment topic name is not UTF-8")]
    TopicName,
}

/// Partitions by topic, as a member's assignment lists them.
pub type Assignment = Vec<(String, Vec<i32>)>;

/// Reads a member assignment in the Kafka consumer protocol format (every version so far):
/// `i16 version`, `i32 topic count`, per topic an `i16`-length name, an `i32` count and that
/// many `i32` partitions; the user data after that is left unread. An empty buffer is an empty
/// assignment (a member that has none yet).
pub fn parse_assignment(bytes: &[u8]) -> Result<Assignment, AssignmentError> {
    struct Reader<'a> {
        bytes: &'a [u8],
        at: usize,
    }
    impl Reader<'_> {
        fn take<const N: usize>(&mut self) -> Result<[u8; N], AssignmentError> {
            let chunk = self
                .bytes
                .get(self.at..self.at + N)
                .ok_or(AssignmentError::Truncated(self.at))?;
            self.at += N;
            Ok(chunk.try_into().expect("N bytes"))
        }
        fn count(&mut self, width: usize) -> Result<usize, AssignmentError> {
            let at = self.at;
            let value = if width == 2 {
                i32::from(i16::from_be_bytes(self.take()?))
            } else {
                i32::from_be_bytes(self.take()?)
            };
            usize::try_from(value).map_err(|_| AssignmentError::Negative(at))
        }
    }
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut reader = Reader { bytes, at: 0 };
    let _version: [u8; 2] = reader.take()?;
    let topics = reader.count(4)?;
    // Each topic takes at least 6 bytes: a count from the wire never sizes an allocation
    // beyond what the buffer can hold.
    let mut assignment = Vec::with_capacity(topics.min(bytes.len() / 6));
    for _ in 0..topics {
        let length = reader.count(2)?;
        let name = bytes
            .get(reader.at..reader.at + length)
            .ok_or(AssignmentError::Truncated(reader.at))?;
        let name = std::str::from_utf8(name).map_err(|_| AssignmentError::TopicName)?;
        reader.at += length;
        let count = reader.count(4)?;
        let mut partitions = Vec::with_capacity(count.min(bytes.len() / 4));
        for _ in 0..count {
            partitions.push(i32::from_be_bytes(reader.take()?));
        }
        assignment.push((name.to_owned(), partitions));
    }
    Ok(assignment)
}

/// A breadcrumb instance in the consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub instance_id: String,
    /// Where it answers queries; `None` when its HTTP server is off.
    pub address: Option<String>,
    pub assignment: Assignment,
}

impl Member {
    pub fn owns(&self, topic: &str, partition: i32) -> bool {
        self.assignment
            .iter()
            .any(|(name, partitions)| name == topic && partitions.contains(&partition))
    }

    fn to_json(&self) -> Value {
        json!({ "instance": self.instance_id, "address": self.address })
    }
}

/// Where group membership and partition counts come from. Calls may block (bounded); they
/// run in `spawn_blocking`.
pub trait Directory: Send + Sync {
    /// The breadcrumb instances in the group with their assignments.
    fn members(&self) -> Result<Vec<Member>, String>;
    /// Partitions of `topic`.
    fn partition_count(&self, topic: &str) -> Result<i32, String>;
}

/// The group's members from Kafka's DescribeGroups (librdkafka `rd_kafka_list_groups`) and
/// partition counts from metadata, through a client of its own that joins no group.
pub struct KafkaDirectory {
    client: ClientConfig,
    group: String,
    /// Created on first use, so an instance that is never asked opens no connection.
    consumer: Mutex<Option<Arc<BaseConsumer>>>,
}

impl KafkaDirectory {
    /// `client` carries the connection settings (`[kafka]`); `group` is the application id.
    pub fn new(client: ClientConfig, group: &str) -> Self {
        Self {
            client,
            group: group.to_owned(),
            consumer: Mutex::new(None),
        }
    }

    fn consumer(&self) -> Result<Arc<BaseConsumer>, String> {
        let mut slot = self.consumer.lock().expect("directory lock poisoned");
        if let Some(consumer) = slot.as_ref() {
            return Ok(consumer.clone());
        }
        let mut client = self.client.clone();
        client.set("client.id", "breadcrumb-query-directory");
        let consumer: BaseConsumer = client.create().map_err(|error| error.to_string())?;
        let consumer = Arc::new(consumer);
        *slot = Some(consumer.clone());
        Ok(consumer)
    }
}

impl Directory for KafkaDirectory {
    fn members(&self) -> Result<Vec<Member>, String> {
        let groups = self
            .consumer()?
            .fetch_group_list(Some(&self.group), DIRECTORY_TIMEOUT)
            .map_err(|error| format!("DescribeGroups `{}`: {error}", self.group))?;
        let mut members = Vec::new();
        for group in groups
            .groups()
            .iter()
            .filter(|group| group.name() == self.group)
        {
            for member in group.members() {
                let Some((instance_id, address)) = parse_member_client_id(member.client_id())
                else {
                    continue;
                };
                let assignment = match parse_assignment(member.assignment().unwrap_or_default()) {
                    Ok(assignment) => assignment,
                    Err(error) => {
                        tracing::debug!(instance_id, %error, "Unreadable member assignment.");
                        Vec::new()
                    }
                };
                members.push(Member {
                    instance_id: instance_id.to_owned(),
                    address: address.map(str::to_owned),
                    assignment,
                });
            }
        }
        Ok(members)
    }

    fn partition_count(&self, topic: &str) -> Result<i32, String> {
        let metadata = self
            .consumer()?
            .fetch_metadata(Some(topic), DIRECTORY_TIMEOUT)
            .map_err(|error| format!("metadata of `{topic}`: {error}"))?;
        match metadata.topics().iter().find(|found| found.name() == topic) {
            Some(found) if !found.partitions().is_empty() => Ok(found.partitions().len() as i32),
            _ => Err(format!("topic `{topic}` has no partitions")),
        }
    }
}

/// The partition librdkafka's default partitioner (`consistent_random`) gives a non-empty key:
/// CRC32 (IEEE, as zlib) of the key bytes, modulo the partition count.
pub fn consistent_partition(key: &[u8], partitions: i32) -> i32 {
    (crc32fast::hash(key) % partitions.max(1) as u32) as i32
}

// ---------------------------------------------------------------------------------------------
// Routing: the answer when this instance did not find the key

/// Where a pipeline's copy of the key lives, as far as this instance can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineRoute {
    /// The key's partition is assigned here and does not know the key.
    LocalMiss { pipeline: String },
    /// Another member owns the key's partition.
    Owner {
        pipeline: String,
        partition: i32,
        member: Member,
    },
    /// The key's partition is known but not who owns it (rebalancing, the partition just
    /// moved, or the broker does not describe group members).
    OwnerUnknown {
        pipeline: String,
        partition: i32,
        reason: String,
    },
    /// The key's partition cannot be computed, and the local partitions do not know the key.
    Unroutable { pipeline: String },
}

/// What a miss answers, from each pipeline's route: `421` when other members own every
/// computable partition and nothing is left unroutable; `503` when an owner is unknown; `404`
/// otherwise (listing the other instances when a pipeline was unroutable).
pub fn miss_status(routes: &[PipelineRoute]) -> StatusCode {
    let any = |test: fn(&PipelineRoute) -> bool| routes.iter().any(test);
    if any(|route| matches!(route, PipelineRoute::OwnerUnknown { .. })) {
        StatusCode::SERVICE_UNAVAILABLE
    } else if any(|route| matches!(route, PipelineRoute::Unroutable { .. })) {
        StatusCode::NOT_FOUND
    } else if any(|route| matches!(route, PipelineRoute::Owner { .. })) {
        StatusCode::MISDIRECTED_REQUEST
    } else {
        StatusCode::NOT_FOUND
    }
}

/// Routes one pipeline's miss. `partition_count` is `Err` when the count is not available;
/// `members` is `Err` when membership is not.
pub fn route_miss(
    searched: &Searched,
    partition_count: Option<Result<i32, String>>,
    members: Result<&[Member], &str>,
    self_instance: &str,
) -> PipelineRoute {
    let pipeline = searched.pipeline.clone();
    let (Some(key), Some(count)) = (&searched.routing_key, partition_count) else {
        return PipelineRoute::Unroutable { pipeline };
    };
    let count = match count {
        Ok(count) => count,
        Err(reason) => {
            return PipelineRoute::OwnerUnknown {
                pipeline,
                partition: -1,
                reason,
            }
        }
    };
    let partition = consistent_partition(key, count);
    if searched.local_partitions.contains(&partition) {
        return PipelineRoute::LocalMiss { pipeline };
    }
    let members = match members {
        Ok(members) => members,
        Err(reason) => {
            return PipelineRoute::OwnerUnknown {
                pipeline,
                partition,
                reason: reason.to_owned(),
            }
        }
    };
    match members
        .iter()
        .find(|member| member.owns(&searched.topic, partition))
    {
        // Membership says it is ours but the processing thread does not have it (yet):
        // still restoring, or the assignment is changing.
        Some(member) if member.instance_id == self_instance => PipelineRoute::OwnerUnknown {
            pipeline,
            partition,
            reason: "assigned here but not restored yet".to_owned(),
        },
        Some(member) => PipelineRoute::Owner {
            pipeline,
            partition,
            member: member.clone(),
        },
        None => PipelineRoute::OwnerUnknown {
            pipeline,
            partition,
            reason: "no group member reports this partition (rebalancing, or the broker does \
                     not describe group members)"
                .to_owned(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The service behind the HTTP routes

/// A query's HTTP answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResponse {
    pub status: StatusCode,
    pub body: Value,
}

impl QueryResponse {
    fn error(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": error, "message": message.into() }),
        }
    }
}

#[derive(Default)]
struct DirectoryCache {
    members: Option<(Instant, Result<Vec<Member>, String>)>,
    partition_counts: HashMap<String, (Instant, i32)>,
}

/// Answers queries: asks the processing thread, then routes misses. Cheap to clone.
#[derive(Clone)]
pub struct QueryService {
    inner: Arc<ServiceInner>,
}

struct ServiceInner {
    sender: QuerySender,
    instance_id: String,
    advertised_address: Option<String>,
    directory: Option<Arc<dyn Directory>>,
    /// Whether repartition topics are partitioned by CRC32 of the key (librdkafka's default
    /// partitioner); with another `partitioner` no partition is computable.
    crc32_partitioner: bool,
    timeout: Duration,
    /// Held across a refresh, so concurrent misses make one Kafka call, not one each.
    cache: tokio::sync::Mutex<DirectoryCache>,
}

impl QueryService {
    /// `directory`: where to learn the group's members (`None`: every miss is a plain `404`).
    pub fn new(
        sender: QuerySender,
        instance_id: &str,
        advertised_address: Option<&str>,
        directory: Option<Arc<dyn Directory>>,
        crc32_partitioner: bool,
    ) -> Self {
        Self {
            inner: Arc::new(ServiceInner {
                sender,
                instance_id: instance_id.to_owned(),
                advertised_address: advertised_address.map(str::to_owned),
                directory,
                crc32_partitioner,
                timeout: ANSWER_TIMEOUT,
                cache: tokio::sync::Mutex::new(DirectoryCache::default()),
            }),
        }
    }

    /// Answers `GET <path>?<query>` for the three query routes (path percent-encoded, as on
    /// the wire). For in-process use (the demo) as much as for the HTTP routes.
    pub async fn get(&self, path: &str, query: Option<&str>) -> QueryResponse {
        match parse_request(path, query) {
            Ok(parsed) => self.answer(parsed).await,
            Err(response) => response,
        }
    }

    /// [`QueryService::get`] from a thread outside any tokio runtime.
    pub fn get_blocking(&self, path: &str, query: Option<&str>) -> QueryResponse {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        runtime.block_on(self.get(path, query))
    }

    async fn answer(&self, query: Query) -> QueryResponse {
        let inner = &self.inner;
        let local = match inner.sender.ask(query.clone(), inner.timeout).await {
            Ok(local) => local,
            Err(error @ AskError::Timeout(_)) => {
                return QueryResponse::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    error.to_string(),
                )
            }
            Err(error) => {
                return QueryResponse::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    error.to_string(),
                )
            }
        };
        let instance = json!({
            "id": inner.instance_id,
            "address": inner.advertised_address,
        });
        if !local.found.is_empty() {
            let answers: Vec<Value> = local
                .found
                .iter()
                .map(|found| {
                    json!({
                        "pipeline": found.pipeline,
                        "partition": found.partition,
                        "answer": found.value,
                    })
                })
                .collect();
            return QueryResponse {
                status: StatusCode::OK,
                body: json!({ "query": query.describe(), "instance": instance, "answers": answers }),
            };
        }
        if !local.errors.is_empty() {
            return QueryResponse {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: json!({
                    "error": "lookup_failed",
                    "message": local.errors.join("; "),
                    "instance": instance,
                }),
            };
        }
        if local.searched.is_empty() {
            return QueryResponse {
                status: StatusCode::NOT_FOUND,
                body: json!({
                    "error": "not_found",
                    "message": "no pipeline of this application answers this query",
                    "query": query.describe(),
                    "instance": instance,
                }),
            };
        }
        let routes = self.route(&local).await;
        let status = miss_status(&routes.routes);
        let owners: Vec<Value> = routes
            .routes
            .iter()
            .filter_map(|route| match route {
                PipelineRoute::Owner {
                    pipeline,
                    partition,
                    member,
                } => Some(json!({
                    "pipeline": pipeline,
                    "partition": partition,
                    "instance": member.instance_id,
                    "address": member.address,
                })),
                _ => None,
            })
            .collect();
        let unknown: Vec<Value> = routes
            .routes
            .iter()
            .filter_map(|route| match route {
                PipelineRoute::OwnerUnknown {
                    pipeline,
                    partition,
                    reason,
                } => {
                    Some(json!({ "pipeline": pipeline, "partition": partition, "reason": reason }))
                }
                _ => None,
            })
            .collect();
        let searched: Vec<Value> = local
            .searched
            .iter()
            .map(|searched| {
                json!({
                    "pipeline": searched.pipeline,
                    "topic": searched.topic,
                    "partitions": searched.local_partitions,
                })
            })
            .collect();
        let mut body = json!({
            "query": query.describe(),
            "instance": instance,
            "searched": searched,
        });
        let fields = body.as_object_mut().expect("an object");
        let (error, message) = match status {
            StatusCode::MISDIRECTED_REQUEST => {
                fields.insert("owner".to_owned(), owners[0].clone());
                (
                    "misdirected",
                    format!(
                        "owned by instance `{}`",
                        owners[0]["instance"].as_str().unwrap_or_default()
                    ),
                )
            }
            StatusCode::SERVICE_UNAVAILABLE => (
                "owner_unknown",
                "the owner of the key's partition is not known right now".to_owned(),
            ),
            _ => ("not_found", "not known to this instance".to_owned()),
        };
        fields.insert("error".to_owned(), json!(error));
        fields.insert("message".to_owned(), json!(message));
        if !owners.is_empty() {
            fields.insert("owners".to_owned(), json!(owners));
        }
        if !unknown.is_empty() {
            fields.insert("owner_unknown".to_owned(), json!(unknown));
        }
        if routes
            .routes
            .iter()
            .any(|route| matches!(route, PipelineRoute::Unroutable { .. }))
        {
            let ask: Vec<Value> = routes
                .members
                .iter()
                .filter(|member| member.instance_id != inner.instance_id)
                .map(Member::to_json)
                .collect();
            fields.insert("ask".to_owned(), json!(ask));
            if let Some(reason) = routes.members_error {
                fields.insert("ask_unknown".to_owned(), json!(reason));
            }
        }
        QueryResponse { status, body }
    }

    /// Routes every searched pipeline of a miss, fetching partition counts and members (cached)
    /// only as far as they are needed.
    async fn route(&self, local: &LocalAnswer) -> Routes {
        let inner = &self.inner;
        let Some(directory) = inner.directory.clone() else {
            return Routes {
                routes: local
                    .searched
                    .iter()
                    .map(|searched| PipelineRoute::Unroutable {
                        pipeline: searched.pipeline.clone(),
                    })
                    .collect(),
                members: Vec::new(),
                members_error: Some("instance discovery is off".to_owned()),
            };
        };
        let mut cache = inner.cache.lock().await;
        let mut counts = Vec::with_capacity(local.searched.len());
        for searched in &local.searched {
            counts.push(match (&searched.routing_key, inner.crc32_partitioner) {
                (Some(_), true) => {
                    Some(partition_count(&directory, &mut cache, &searched.topic).await)
                }
                _ => None,
            });
        }
        let members = members(&directory, &mut cache).await;
        drop(cache);
        let members_ref = members.as_deref().map_err(String::as_str);
        let routes = local
            .searched
            .iter()
            .zip(counts)
            .map(|(searched, count)| route_miss(searched, count, members_ref, &inner.instance_id))
            .collect();
        let (members, members_error) = match members {
            Ok(members) => (members, None),
            Err(error) => (Vec::new(), Some(error)),
        };
        Routes {
            routes,
            members,
            members_error,
        }
    }
}

struct Routes {
    routes: Vec<PipelineRoute>,
    members: Vec<Member>,
    members_error: Option<String>,
}

async fn members(
    directory: &Arc<dyn Directory>,
    cache: &mut DirectoryCache,
) -> Result<Vec<Member>, String> {
    if let Some((at, members)) = &cache.members {
        if at.elapsed() < MEMBERS_TTL {
            return members.clone();
        }
    }
    let directory = directory.clone();
    let fetched = blocking(move || directory.members()).await;
    cache.members = Some((Instant::now(), fetched.clone()));
    fetched
}

async fn partition_count(
    directory: &Arc<dyn Directory>,
    cache: &mut DirectoryCache,
    topic: &str,
) -> Result<i32, String> {
    if let Some((at, count)) = cache.partition_counts.get(topic) {
        if at.elapsed() < PARTITION_COUNT_TTL {
            return Ok(*count);
        }
    }
    let directory = directory.clone();
    let owned = topic.to_owned();
    let count = blocking(move || directory.partition_count(&owned)).await?;
    cache
        .partition_counts
        .insert(topic.to_owned(), (Instant::now(), count));
    Ok(count)
}

/// Runs a directory call off the async workers, bounded even if librdkafka overruns its own
/// timeout.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let task = tokio::task::spawn_blocking(call);
    match tokio::time::timeout(DIRECTORY_TIMEOUT * 2, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => Err(format!("directory call failed: {error}")),
        Err(_) => Err("directory call timed out".to_owned()),
    }
}

// ---------------------------------------------------------------------------------------------
// Request parsing

/// The query a request names, or the `400`/`404` it gets.
fn parse_request(path: &str, query: Option<&str>) -> Result<Query, QueryResponse> {
    let bad =
        |message: String| QueryResponse::error(StatusCode::BAD_REQUEST, "bad_request", message);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let decoded = |segment: &str| {
        percent_decode(segment)
            .filter(|text| !text.is_empty())
            .ok_or_else(|| bad(format!("`{segment}` is not a valid path segment")))
    };
    let params = parse_params(query.unwrap_or_default());
    match segments.as_slice() {
        ["lineage", "events", id] => {
            let depth = match params.get("depth") {
                None => DEFAULT_LINEAGE_DEPTH,
                Some(text) => match text.parse::<usize>() {
                    Ok(depth) if depth <= MAX_LINEAGE_DEPTH => depth,
                    _ => {
                        return Err(bad(format!(
                            "depth must be a whole number up to {MAX_LINEAGE_DEPTH}"
                        )))
                    }
                },
            };
            let trace_id = match params.get("trace_id") {
                None => None,
                Some(text) => Some(parse_trace_id(text).ok_or_else(|| {
                    bad("trace_id must be 32 lower-case hex digits, not all zero".to_owned())
                })?),
            };
            Ok(Query::LineageEvent {
                event_id: decoded(id)?,
                depth,
                trace_id,
            })
        }
        ["dedupe", key] => Ok(Query::Dedupe { key: decoded(key)? }),
        ["sampling", "traces", trace_id] => Ok(Query::SamplingTrace {
            trace_id: parse_trace_id(trace_id).ok_or_else(|| {
                bad("the trace id must be 32 lower-case hex digits, not all zero".to_owned())
            })?,
        }),
        _ => Err(QueryResponse::error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no query at `{path}`"),
        )),
    }
}

fn parse_params(query: &str) -> HashMap<&str, &str> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect()
}

/// A W3C trace id: 32 lower-case hex digits, not all zero.
pub fn parse_trace_id(text: &str) -> Option<[u8; 16]> {
    let bytes = text.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let digit = |byte: u8| match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    };
    let mut id = [0u8; 16];
    for (index, pair) in bytes.chunks_exact(2).enumerate() {
        id[index] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    (id != [0; 16]).then_some(id)
}

fn hex(bytes: &[u8; 16]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Decodes `%XX` escapes; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let digits = bytes.get(at + 1..at + 3)?;
            if !digits.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let digits = std::str::from_utf8(digits).ok()?;
            out.push(u8::from_str_radix(digits, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
