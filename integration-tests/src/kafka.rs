//! Blocking rdkafka helpers for tests: topics, produce, read back, offsets.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// `consume_all` stops once it has enough records and nothing new arrived for this long.
const QUIET: Duration = Duration::from_secs(1);

/// Client settings registered per bootstrap address (a secured broker's TLS and SASL
/// settings), applied by [`base_config`] so every helper can talk to that broker. Keyed by
/// address, so tests sharing a process never see each other's settings.
static CLIENT_SETTINGS: Mutex<BTreeMap<String, Vec<(String, String)>>> =
    Mutex::new(BTreeMap::new());

/// Makes every helper connect to `bootstrap` with `settings` added (e.g. `security.protocol`).
pub fn register_client_settings(bootstrap: &str, settings: &[(String, String)]) {
    CLIENT_SETTINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(bootstrap.to_owned(), settings.to_vec());
}

/// A `ClientConfig` with `bootstrap.servers`, IPv4 only (Nisshi listens on 127.0.0.1), and any
/// settings registered for this address.
pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4");
    if let Some(settings) = CLIENT_SETTINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(bootstrap)
    {
        for (key, value) in settings {
            config.set(key, value);
        }
    }
    config
}

/// `<prefix>-<random hex>`: unique topic / group / transactional.id names per test.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}-{:012x}-{n}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    )
}

/// A record to produce. Build with struct syntax or the small builder:
/// `TestRecord::new("k", "v").header("h", "x").partition(0)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// `None`: librdkafka's default partitioner (murmur2-random, i.e. by key hash).
    pub partition: Option<i32>,
}

impl TestRecord {
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        TestRecord {
            key: Some(key.into()),
            value: Some(value.into()),
            ..TestRecord::default()
        }
    }

    /// A record without a key.
    pub fn value_only(value: impl Into<Vec<u8>>) -> Self {
        TestRecord {
            value: Some(value.into()),
            ..TestRecord::default()
        }
    }

    /// A tombstone (key, no value).
    pub fn tombstone(key: impl Into<Vec<u8>>) -> Self {
        TestRecord {
            key: Some(key.into()),
            ..TestRecord::default()
        }
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// A record read back from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ConsumedRecord {
    /// The first header named `name`, as (lossy) UTF-8. `None` if absent or null.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The last header named `name`, as (lossy) UTF-8: the one breadcrumb's last stage added,
    /// when a record went through a repartition topic (which keeps the first stage's headers).
    pub fn last_header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rfind(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The key as (lossy) UTF-8.
    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// The value as (lossy) UTF-8.
    pub fn value_str(&self) -> Option<String> {
        self.value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Creates topics (replication factor 1). `compacted` sets `cleanup.policy=compact` on all of
/// them. A topic that already exists is not an error. Returns once metadata shows every topic
/// with its partitions.
pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)], compacted: bool) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(bootstrap)
        .create()
        .context("creating AdminClient")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            let topic = NewTopic::new(name, *partitions, TopicReplication::Fixed(1));
            if compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    let results = block_on(admin.create_topics(new_topics.iter(), &options))
        .context("CreateTopics request")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name:?} failed: {code:?} ({code})"),
        }
    }

    // Wait until metadata agrees, so producers/consumers do not race topic creation.
    let deadline = Instant::now() + METADATA_TIMEOUT;
    for (name, partitions) in topics {
        loop {
            match partition_count_with(admin.inner(), name) {
                Ok(n) if n == *partitions as usize => break,
                Ok(n) if Instant::now() >= deadline => {
                    bail!("topic {name:?} shows {n} partitions in metadata, expected {partitions}")
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("topic {name:?} never showed up in metadata")))
                }
                _ => thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    Ok(())
}

/// The topic's configuration as reported by `DescribeConfigs` (name -> value).
pub fn describe_topic_config(
    bootstrap: &str,
    topic: &str,
) -> Result<BTreeMap<String, Option<String>>> {
    let admin: AdminClient<DefaultClientContext> = base_config(bootstrap)
        .create()
        .context("creating AdminClient")?;
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let resource = ResourceSpecifier::Topic(topic);
    let results = block_on(admin.describe_configs([&resource], &options))
        .context("DescribeConfigs request")?;
    let resource = results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("DescribeConfigs returned no resource"))?
        .map_err(|code| anyhow!("DescribeConfigs for {topic:?} failed: {code:?}"))?;
    Ok(resource
        .entries
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect())
}

/// Number of partitions of `topic` according to metadata.
pub fn partition_count(bootstrap: &str, topic: &str) -> Result<usize> {
    let consumer: BaseConsumer = base_config(bootstrap).create()?;
    partition_count_with(consumer.client(), topic)
}

fn partition_count_with<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<usize> {
    let md = client
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .with_context(|| format!("metadata for {topic:?}"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow!("topic {topic:?} not in metadata"))?;
    if let Some(err) = t.error() {
        bail!(
            "topic {topic:?} metadata error: {:?}",
            RDKafkaErrorCode::from(err)
        );
    }
    if t.partitions().is_empty() {
        bail!("topic {topic:?} has no partitions in metadata");
    }
    Ok(t.partitions().len())
}

/// Outcome of one delivery: (input index, (partition, offset) or error text).
type Delivery = (usize, Result<(i32, i64), String>);

#[derive(Default)]
struct DeliveryLog {
    results: Mutex<Vec<Delivery>>,
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let entry = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.results.lock().unwrap().push((index, entry));
    }
}

/// Produces `records` to `topic` with an idempotent producer (`acks=all`) and waits for every
/// delivery. Returns `(partition, offset)` of each record, in input order.
pub fn produce(bootstrap: &str, topic: &str, records: &[TestRecord]) -> Result<Vec<(i32, i64)>> {
    let producer: ThreadedProducer<DeliveryLog> = base_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create_with_context(DeliveryLog::default())
        .context("creating producer")?;

    for (index, record) in records.iter().enumerate() {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (k, v) in &record.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        let mut base: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, index).headers(headers);
        if let Some(key) = &record.key {
            base = base.key(key.as_slice());
        }
        if let Some(value) = &record.value {
            base = base.payload(value.as_slice());
        }
        if let Some(partition) = record.partition {
            base = base.partition(partition);
        }
        let mut pending = base;
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    pending = back;
                    thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => bail!("producing record #{index} to {topic:?}: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing producer")?;

    let mut results = std::mem::take(&mut *producer.context().results.lock().unwrap());
    results.sort_by_key(|(i, _)| *i);
    if results.len() != records.len() {
        bail!(
            "only {} of {} deliveries reported",
            results.len(),
            records.len()
        );
    }
    results
        .into_iter()
        .map(|(i, r)| r.map_err(|e| anyhow!("record #{i} to {topic:?} failed: {e}")))
        .collect()
}

/// Reads `topic` from the beginning of every partition with `isolation.level=read_committed`
/// (manual assignment, throwaway group id, nothing committed), until it has at least
/// `expected_min` records, every partition has reached its end, and no new record arrived for
/// ~1 s; or until `timeout`. On timeout it returns what it has (check the length). Records are
/// sorted by (partition, offset).
pub fn consume_all(
    bootstrap: &str,
    topic: &str,
    expected_min: usize,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>> {
    consume_with_isolation(bootstrap, topic, expected_min, timeout, "read_committed")
}

/// Like [`consume_all`] but `isolation.level=read_uncommitted`: also shows records of open and
/// aborted transactions.
pub fn consume_all_read_uncommitted(
    bootstrap: &str,
    topic: &str,
    expected_min: usize,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>> {
    consume_with_isolation(bootstrap, topic, expected_min, timeout, "read_uncommitted")
}

fn consume_with_isolation(
    bootstrap: &str,
    topic: &str,
    expected_min: usize,
    timeout: Duration,
    isolation: &str,
) -> Result<Vec<ConsumedRecord>> {
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer = base_config(bootstrap)
        .set("group.id", unique_name("harness-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100")
        .create()
        .context("creating consumer")?;
    let partitions = partition_count_with(consumer.client(), topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl).context("assigning partitions")?;

    let mut out = Vec::new();
    let mut at_eof: BTreeSet<i32> = BTreeSet::new();
    let mut last_activity = Instant::now();
    loop {
        let now = Instant::now();
        if out.len() >= expected_min
            && at_eof.len() == partitions
            && now.duration_since(last_activity) >= QUIET
        {
            break;
        }
        if now >= deadline {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                at_eof.remove(&m.partition());
                last_activity = Instant::now();
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(ConsumedRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_eof.insert(p);
            }
            Some(Err(e)) => bail!("consuming {topic:?}: {e}"),
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// The committed offsets of `group` on `topic` (partition -> next offset to read). Partitions
/// without a committed offset are absent.
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = base_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating consumer")?;
    let partitions = partition_count_with(consumer.client(), topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, METADATA_TIMEOUT)
        .with_context(|| format!("OffsetFetch for group {group:?} on {topic:?}"))?;
    let mut out = BTreeMap::new();
    for e in committed.elements() {
        if let Err(err) = e.error() {
            bail!("committed offset of {topic}[{}]: {err}", e.partition());
        }
        if let Offset::Offset(o) = e.offset() {
            out.insert(e.partition(), o);
        }
    }
    Ok(out)
}

/// Low and high watermarks of every partition of `topic` (partition -> (low, high)), via
/// `ListOffsets` (`fetch_watermarks`, `isolation.level=read_uncommitted`, so `high` is the high
/// watermark, not the last stable offset).
///
/// NISSHI 0.7.0 BUG: with `memory://` storage `high` is the base offset of the *last batch* + 1,
/// i.e. too low whenever the last batch held more than one record (5 records in one batch ->
/// high = 1). `sqlite://` storage answers correctly. The high watermark a consumer learns from
/// Fetch responses is correct on both.
pub fn watermarks(bootstrap: &str, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>> {
    let consumer: BaseConsumer = base_config(bootstrap)
        .set("isolation.level", "read_uncommitted")
        .create()?;
    let partitions = partition_count_with(consumer.client(), topic)?;
    (0..partitions as i32)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, METADATA_TIMEOUT)
                .map(|w| (p, w))
                .with_context(|| format!("watermarks of {topic}[{p}]"))
        })
        .collect()
}

/// Minimal executor for rdkafka's admin futures (they are completed by librdkafka's thread, so
/// no runtime is needed).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => thread::park_timeout(Duration::from_millis(100)),
        }
    }
}

/// Produces one record whose header name is arbitrary bytes (`name` must not contain NUL). The
/// safe rdkafka API only takes `&str` names, so this goes through librdkafka's `produceva`:
/// the way a non-Rust producer can put garbage header names on a topic.
pub fn produce_with_raw_header_name(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    value: &[u8],
    name: &[u8],
    header_value: &[u8],
) -> Result<()> {
    use rdkafka::bindings as rdsys;
    use std::ffi::CString;
    let producer: rdkafka::producer::BaseProducer = base_config(bootstrap)
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating producer")?;
    let topic_name = CString::new(topic)?;
    let header_name = CString::new(name).context("header name contains NUL")?;
    let mut vus: Vec<rdsys::rd_kafka_vu_t> = Vec::new();
    let mut push = |vtype, u| vus.push(rdsys::rd_kafka_vu_t { vtype, u });
    push(
        rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TOPIC,
        rdsys::rd_kafka_vu_s__bindgen_ty_1 {
            cstr: topic_name.as_ptr(),
        },
    );
    push(
        rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION,
        rdsys::rd_kafka_vu_s__bindgen_ty_1 { i32_: partition },
    );
    push(
        rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
        rdsys::rd_kafka_vu_s__bindgen_ty_1 {
            mem: rdsys::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
                ptr: value.as_ptr() as *mut std::ffi::c_void,
                size: value.len(),
            },
        },
    );
    push(
        rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
        rdsys::rd_kafka_vu_s__bindgen_ty_1 {
            i: rdsys::RD_KAFKA_MSG_F_COPY as std::ffi::c_int,
        },
    );
    push(
        rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADER,
        rdsys::rd_kafka_vu_s__bindgen_ty_1 {
            header: rdsys::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 {
                name: header_name.as_ptr(),
                val: header_value.as_ptr().cast(),
                size: header_value.len() as isize,
            },
        },
    );
    // SAFETY: every pointer outlives the call (librdkafka copies value and header with
    // RD_KAFKA_MSG_F_COPY / always copies headers).
    let error = unsafe {
        rdsys::rd_kafka_produceva(producer.client().native_ptr(), vus.as_ptr(), vus.len())
    };
    if !error.is_null() {
        let message = unsafe { std::ffi::CStr::from_ptr(rdsys::rd_kafka_error_string(error)) }
            .to_string_lossy()
            .into_owned();
        unsafe { rdsys::rd_kafka_error_destroy(error) };
        bail!("produceva: {message}");
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing producer")?;
    Ok(())
}
