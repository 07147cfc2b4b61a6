//! Smoke tests of the harness against a real Nisshi 0.7.0 broker. Each test starts (and stops)
//! its own broker, so they run in parallel. They also pin down the Nisshi behaviours the engine
//! relies on or must work around (transactions, fencing, aborted-record leak, restart,
//! cooperative rebalancing); see the comments on each test.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use breadcrumb_integration_tests::{
    base_config, committed_offsets, consume_all, consume_all_read_uncommitted, create_topics,
    describe_topic_config, produce, unique_name, watermarks, Broker, Storage, TestRecord,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(10);

/// Polls a (subscribed or assigned) consumer until it has returned `n` records.
fn poll_records(
    consumer: &BaseConsumer,
    n: usize,
    timeout: Duration,
) -> Result<Vec<(i32, i64, Vec<u8>)>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        if Instant::now() >= deadline {
            bail!("got {} of {n} records within {timeout:?}", out.len());
        }
        match consumer.poll(Duration::from_millis(100)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Ok(m)) => out.push((
                m.partition(),
                m.offset(),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Some(Err(e)) => bail!("poll: {e}"),
        }
    }
    Ok(out)
}

fn transactional_producer(
    bootstrap: &str,
    transactional_id: &str,
) -> Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(base_config(bootstrap)
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", "30000")
        .set("linger.ms", "5")
        .create()?)
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &str,
    value: &str,
) -> Result<()> {
    producer
        .send(BaseRecord::to(topic).key(key).payload(value))
        .map_err(|(e, _)| anyhow::anyhow!("send to {topic}: {e}"))
}

fn values(records: &[breadcrumb_integration_tests::ConsumedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.value_str().unwrap_or_default())
        .collect()
}

/// (a) Produce with keys, headers, explicit partitions, a tombstone; read back read_committed.
#[test]
fn round_trip_with_headers() -> Result<()> {
    let broker = Broker::start_memory()?;
    let bs = broker.bootstrap();
    let topic = unique_name("roundtrip");
    create_topics(&bs, &[(&topic, 3)], false)?;

    let records = vec![
        TestRecord::new("k0", "v0")
            .header("trace", "t0")
            .header("bin", vec![0u8, 255])
            .partition(0),
        TestRecord::new("k1", "v1")
            .header("trace", "t1")
            .partition(1),
        TestRecord::new("k2", "v2").partition(2),
        TestRecord::value_only("no-key").partition(0),
        TestRecord::tombstone("k1")
            .header("deleted", "yes")
            .partition(1),
        TestRecord::new("k0", "v0b").partition(0),
    ];
    let delivered = produce(&bs, &topic, &records)?;
    assert_eq!(
        delivered,
        vec![(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (0, 2)]
    );

    let got = consume_all(&bs, &topic, records.len(), Duration::from_secs(20))?;
    assert_eq!(got.len(), 6, "{got:?}");
    // Sorted by (partition, offset).
    let summary: Vec<_> = got
        .iter()
        .map(|r| (r.partition, r.offset, r.key_str(), r.value_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, 0, Some("k0".into()), Some("v0".into())),
            (0, 1, None, Some("no-key".into())),
            (0, 2, Some("k0".into()), Some("v0b".into())),
            (1, 0, Some("k1".into()), Some("v1".into())),
            (1, 1, Some("k1".into()), None),
            (2, 0, Some("k2".into()), Some("v2".into())),
        ]
    );
    assert_eq!(got[0].header("trace").as_deref(), Some("t0"));
    assert_eq!(got[0].headers[1], ("bin".to_owned(), Some(vec![0u8, 255])));
    assert_eq!(got[3].header("trace").as_deref(), Some("t1"));
    assert_eq!(got[4].header("deleted").as_deref(), Some("yes"));
    assert_eq!(got[5].header("trace"), None);
    assert!(got[5].headers.is_empty());

    // fetch_watermarks answers for every partition (but see `list_offsets_latest_...` for how
    // wrong `high` is on memory storage).
    let wm = watermarks(&bs, &topic)?;
    assert_eq!(wm.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    assert!(
        wm.values().all(|(low, high)| *low == 0 && *high >= 1),
        "{wm:?}"
    );
    Ok(())
}

/// Writes 5 records as ONE batch (linger 200 ms), then 1 more record, and returns the high
/// watermark reported by ListOffsets (fetch_watermarks) after each step.
fn high_watermarks_after_batches(broker: &Broker) -> Result<(i64, i64)> {
    let bs = broker.bootstrap();
    let topic = unique_name("watermark");
    create_topics(&bs, &[(&topic, 1)], false)?;
    let producer: ThreadedProducer<DefaultProducerContext> = base_config(&bs)
        .set("enable.idempotence", "true")
        .set("linger.ms", "200")
        .create()?;
    for i in 0..5 {
        send(&producer, &topic, "k", &i.to_string())?;
    }
    producer.flush(T)?;
    let after_batch = watermarks(&bs, &topic)?[&0].1;
    send(&producer, &topic, "k", "5")?;
    producer.flush(T)?;
    let after_single = watermarks(&bs, &topic)?[&0].1;
    assert_eq!(
        consume_all(&bs, &topic, 6, Duration::from_secs(20))?.len(),
        6
    );
    Ok((after_batch, after_single))
}

/// NISSHI 0.7.0 BUG, pinned down: with memory:// storage, ListOffsets(LATEST) (what
/// `fetch_watermarks`, `Offset::End` and `auto.offset.reset=latest` use) answers the base
/// offset of the last batch + 1, not the last offset + 1. After one 5-record batch it says 1
/// instead of 5; after one more single-record batch it is right again (6). sqlite:// storage
/// answers correctly. (The high watermark in Fetch responses is correct on both.)
#[test]
fn list_offsets_latest_is_wrong_for_multi_record_batches_on_memory_storage() -> Result<()> {
    let memory = Broker::start_memory()?;
    assert_eq!(high_watermarks_after_batches(&memory)?, (1, 6));

    let dir = tempfile::tempdir()?;
    let sqlite = Broker::start(Storage::Sqlite(dir.path().join("nisshi.db")))?;
    assert_eq!(high_watermarks_after_batches(&sqlite)?, (5, 6));
    Ok(())
}

/// (b) consume-transform-produce: a transactional producer writes to B and commits the
/// consumer's offsets on A with send_offsets_to_transaction (using the subscribed consumer's
/// group metadata). Committed -> the group's offset moves; aborted -> it does not.
#[test]
fn transaction_commits_offsets_and_abort_does_not() -> Result<()> {
    let broker = Broker::start_memory()?;
    let bs = broker.bootstrap();
    let (a, b, group) = (
        unique_name("txn-in"),
        unique_name("txn-out"),
        unique_name("txn-group"),
    );
    create_topics(&bs, &[(&a, 1), (&b, 1)], false)?;
    let input: Vec<_> = (0..10)
        .map(|i| TestRecord::new(format!("k{i}"), format!("v{i}")))
        .collect();
    produce(&bs, &a, &input)?;

    let consumer: BaseConsumer = base_config(&bs)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[&a])?;
    let t0 = Instant::now();
    let first = poll_records(&consumer, 10, Duration::from_secs(30))?;
    eprintln!("subscribe -> 10 records took {:?}", t0.elapsed());
    assert_eq!(
        first.iter().map(|r| r.1).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );

    let producer = transactional_producer(&bs, &unique_name("txn-id"))?;
    let t0 = Instant::now();
    producer.init_transactions(T)?;
    eprintln!("init_transactions took {:?}", t0.elapsed());

    // Transaction 1: commit.
    producer.begin_transaction()?;
    for (_, offset, value) in &first {
        send(
            &producer,
            &b,
            &format!("k{offset}"),
            &String::from_utf8_lossy(value).to_uppercase(),
        )?;
    }
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(&a, 0, Offset::Offset(10))?;
    let metadata = consumer
        .group_metadata()
        .expect("subscribed consumer has group metadata");
    producer.send_offsets_to_transaction(&offsets, &metadata, T)?;
    producer.commit_transaction(T)?;

    assert_eq!(
        committed_offsets(&bs, &group, &a)?,
        BTreeMap::from([(0, 10)])
    );
    let out = consume_all(&bs, &b, 10, Duration::from_secs(20))?;
    assert_eq!(
        values(&out),
        (0..10).map(|i| format!("V{i}")).collect::<Vec<_>>()
    );

    // Transaction 2: abort. The committed offset stays at 10.
    produce(
        &bs,
        &a,
        &(10..15)
            .map(|i| TestRecord::new(format!("k{i}"), format!("v{i}")))
            .collect::<Vec<_>>(),
    )?;
    let second = poll_records(&consumer, 5, Duration::from_secs(20))?;
    assert_eq!(
        second.iter().map(|r| r.1).collect::<Vec<_>>(),
        (10..15).collect::<Vec<_>>()
    );
    producer.begin_transaction()?;
    for (_, offset, value) in &second {
        send(
            &producer,
            &b,
            &format!("k{offset}"),
            &String::from_utf8_lossy(value).to_uppercase(),
        )?;
    }
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(&a, 0, Offset::Offset(15))?;
    producer.send_offsets_to_transaction(&offsets, &consumer.group_metadata().unwrap(), T)?;
    producer.abort_transaction(T)?;
    assert_eq!(
        committed_offsets(&bs, &group, &a)?,
        BTreeMap::from([(0, 10)])
    );

    // Transaction 3 on the same producer: commit again; the offset moves to 15.
    producer.begin_transaction()?;
    send(&producer, &b, "k-retry", "RETRY")?;
    producer.send_offsets_to_transaction(&offsets, &consumer.group_metadata().unwrap(), T)?;
    producer.commit_transaction(T)?;
    assert_eq!(
        committed_offsets(&bs, &group, &a)?,
        BTreeMap::from([(0, 15)])
    );
    Ok(())
}

/// (c) KNOWN NISSHI LEAK, pinned down here: committed txn [c1 c2 c3], aborted txn [a1 a2],
/// committed txn [c4]. A `read_committed` reader on real Kafka sees c1 c2 c3 c4; on Nisshi 0.7.0
/// it ALSO sees the aborted records a1 a2 (in log order, at their offsets), i.e. Nisshi does not
/// filter aborted transactions (no aborted-transactions list in Fetch responses). The engine's
/// end-to-end tests must therefore not assert that aborted output is invisible when running on
/// Nisshi. Control records (markers) are not returned to either reader, but they do take offsets.
#[test]
fn aborted_transaction_is_visible_to_read_committed_on_nisshi() -> Result<()> {
    let broker = Broker::start_memory()?;
    let bs = broker.bootstrap();
    let topic = unique_name("abort-leak");
    create_topics(&bs, &[(&topic, 1)], false)?;

    let producer = transactional_producer(&bs, &unique_name("leak-id"))?;
    producer.init_transactions(T)?;
    producer.begin_transaction()?;
    for v in ["c1", "c2", "c3"] {
        send(&producer, &topic, v, v)?;
    }
    producer.commit_transaction(T)?;
    producer.begin_transaction()?;
    for v in ["a1", "a2"] {
        send(&producer, &topic, v, v)?;
    }
    producer.flush(T)?;
    producer.abort_transaction(T)?;
    producer.begin_transaction()?;
    send(&producer, &topic, "c4", "c4")?;
    producer.commit_transaction(T)?;

    let committed = consume_all(&bs, &topic, 4, Duration::from_secs(20))?;
    let uncommitted = consume_all_read_uncommitted(&bs, &topic, 4, Duration::from_secs(20))?;
    let offsets = |rs: &[breadcrumb_integration_tests::ConsumedRecord]| {
        rs.iter()
            .map(|r| (r.offset, r.value_str().unwrap()))
            .collect::<Vec<_>>()
    };
    eprintln!("read_committed   sees {:?}", offsets(&committed));
    eprintln!("read_uncommitted sees {:?}", offsets(&uncommitted));
    eprintln!("watermarks {:?}", watermarks(&bs, &topic)?);

    // What Nisshi 0.7.0 really does (Kafka would give ["c1", "c2", "c3", "c4"]):
    assert_eq!(values(&committed), ["c1", "c2", "c3", "a1", "a2", "c4"]);
    assert_eq!(values(&uncommitted), ["c1", "c2", "c3", "a1", "a2", "c4"]);
    Ok(())
}

/// (d) Fencing, zombie case: P1 is initialised, P2 with the same transactional.id calls
/// init_transactions, and only then P1 starts a transaction. P1's AddPartitionsToTxn is
/// refused and its commit fails with a FATAL `Fenced` error, as on Kafka.
#[test]
fn zombie_fenced_before_its_transaction_gets_fatal_fenced_error() -> Result<()> {
    let broker = Broker::start_memory()?;
    let bs = broker.bootstrap();
    let topic = unique_name("fence");
    create_topics(&bs, &[(&topic, 1)], false)?;
    let id = unique_name("fence-id");

    let p1 = transactional_producer(&bs, &id)?;
    p1.init_transactions(T)?;
    let p2 = transactional_producer(&bs, &id)?;
    p2.init_transactions(T)?;

    p1.begin_transaction()?;
    send(&p1, &topic, "p1", "zombie")?;
    let _ = p1.flush(T);
    let err = p1
        .commit_transaction(T)
        .expect_err("the fenced producer must not commit");
    eprintln!("zombie commit error: {err:?}");
    let KafkaError::Transaction(e) = &err else {
        panic!("expected a transaction error, got {err:?}");
    };
    assert!(e.is_fatal(), "must be fatal: {e:?}");
    assert_eq!(e.code(), RDKafkaErrorCode::Fenced);

    p2.begin_transaction()?;
    send(&p2, &topic, "p2", "from-p2")?;
    p2.commit_transaction(T)?;
    assert_eq!(
        values(&consume_all(&bs, &topic, 1, Duration::from_secs(20))?),
        ["from-p2"]
    );
    Ok(())
}

/// (d') Fencing mid-transaction, NISSHI 0.7.0 QUIRK pinned down: P1 has produced (and flushed)
/// inside an open transaction when P2 calls init_transactions with the same id. P2's init
/// succeeds (after ~0.5 s) and aborts P1's transaction (an abort marker is written). P1's
/// next commit_transaction then does NOT fail with a fatal PRODUCER_FENCED as on Kafka: Nisshi
/// answers the stale-epoch EndTxn by closing the connection (broker log: `ERROR
/// nisshi_broker::broker: error=Storage(Api(ProducerFenced))`), librdkafka retries, and the
/// call ends with a RETRIABLE `OperationTimedOut` ("Timed out waiting for operation to finish,
/// retry call to resume") after the full timeout, every time it is retried. (abort_transaction
/// behaves the same; a Produce from the fenced P1 is refused with an abortable
/// `ProducerFenced`.) An engine must therefore treat a commit that keeps timing out as fatal
/// for that producer. The aborted record stays visible to read_committed readers (the leak,
/// see test (c)).
#[test]
fn fenced_mid_transaction_commit_times_out_instead_of_fatal_on_nisshi() -> Result<()> {
    let broker = Broker::start_memory()?;
    let bs = broker.bootstrap();
    let topic = unique_name("fence");
    create_topics(&bs, &[(&topic, 1)], false)?;
    let id = unique_name("fence-id");

    let p1 = transactional_producer(&bs, &id)?;
    p1.init_transactions(T)?;
    p1.begin_transaction()?;
    send(&p1, &topic, "p1", "from-p1")?;
    p1.flush(T)?;

    let p2 = transactional_producer(&bs, &id)?;
    let t0 = Instant::now();
    p2.init_transactions(T)?;
    eprintln!("fencing init_transactions took {:?}", t0.elapsed());

    for (attempt, timeout) in [(1, Duration::from_secs(3)), (2, Duration::from_secs(2))] {
        let t0 = Instant::now();
        let err = p1
            .commit_transaction(timeout)
            .expect_err("the fenced producer must not commit");
        eprintln!(
            "fenced commit attempt {attempt}: {err:?} after {:?}",
            t0.elapsed()
        );
        let KafkaError::Transaction(e) = &err else {
            panic!("expected a transaction error, got {err:?}");
        };
        // On Kafka this would be: e.is_fatal() && code == ProducerFenced.
        assert_eq!(e.code(), RDKafkaErrorCode::OperationTimedOut, "{e:?}");
        assert!(e.is_retriable() && !e.is_fatal(), "{e:?}");
    }

    p2.begin_transaction()?;
    send(&p2, &topic, "p2", "from-p2")?;
    p2.commit_transaction(T)?;
    // Offsets: 0 from-p1 (aborted by P2's init), 1 abort marker, 2 from-p2, 3 commit marker.
    let seen = consume_all(&bs, &topic, 2, Duration::from_secs(20))?;
    let seen: Vec<_> = seen
        .iter()
        .map(|r| (r.offset, r.value_str().unwrap()))
        .collect();
    assert_eq!(seen, [(0, "from-p1".to_owned()), (2, "from-p2".to_owned())]);
    Ok(())
}

/// (e) SQLite storage survives a broker restart: topics, records, committed offsets, and new
/// records continue at the next offset.
#[test]
fn sqlite_storage_survives_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = Broker::start(Storage::Sqlite(dir.path().join("nisshi.db")))?;
    let bs = broker.bootstrap();
    let topic = unique_name("durable");
    let group = unique_name("durable-group");
    create_topics(&bs, &[(&topic, 2)], false)?;
    let records: Vec<_> = (0..6)
        .map(|i| {
            TestRecord::new(format!("k{i}"), format!("v{i}"))
                .header("n", i.to_string())
                .partition(i % 2)
        })
        .collect();
    produce(&bs, &topic, &records)?;

    // A plain (non-transactional) OffsetCommit by a consumer that only assigns.
    {
        let consumer: BaseConsumer = base_config(&bs)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(2))?;
        tpl.add_partition_offset(&topic, 1, Offset::Offset(1))?;
        consumer.commit(&tpl, CommitMode::Sync)?;
    }
    assert_eq!(
        committed_offsets(&bs, &group, &topic)?,
        BTreeMap::from([(0, 2), (1, 1)])
    );
    let before = consume_all(&bs, &topic, 6, Duration::from_secs(20))?;
    assert_eq!(before.len(), 6);

    let t0 = Instant::now();
    broker.restart()?;
    eprintln!("restart took {:?}", t0.elapsed());
    assert_eq!(broker.bootstrap(), bs, "restart keeps the port");

    let after = consume_all(&bs, &topic, 6, Duration::from_secs(20))?;
    assert_eq!(after, before);
    assert_eq!(after[0].header("n").as_deref(), Some("0"));
    assert_eq!(
        committed_offsets(&bs, &group, &topic)?,
        BTreeMap::from([(0, 2), (1, 1)])
    );
    let more = produce(&bs, &topic, &[TestRecord::new("k6", "v6").partition(0)])?;
    assert_eq!(more, vec![(0, 3)]);

    // A crash (SIGKILL) loses nothing that was acknowledged either.
    broker.kill()?;
    assert!(!broker.is_running());
    broker.restart()?;
    let after_crash = consume_all(&bs, &topic, 7, Duration::from_secs(20))?;
    assert_eq!(after_crash.len(), 7);
    assert_eq!(after_crash[3].value_str().as_deref(), Some("v6"));
    assert_eq!(
        committed_offsets(&bs, &group, &topic)?,
        BTreeMap::from([(0, 2), (1, 1)])
    );

    broker.stop()?;
    assert!(!broker.is_running());
    Ok(())
}

/// In-memory storage does not survive a restart (the topic is gone).
#[test]
fn memory_storage_is_empty_after_restart() -> Result<()> {
    let mut broker = Broker::start_memory()?;
    let bs = broker.bootstrap();
    let topic = unique_name("volatile");
    create_topics(&bs, &[(&topic, 1)], false)?;
    produce(&bs, &topic, &[TestRecord::new("k", "v")])?;
    broker.restart()?;
    let topics: Vec<String> = {
        let c: BaseConsumer = base_config(&bs).create()?;
        c.fetch_metadata(None, T)?
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .collect()
    };
    assert!(!topics.contains(&topic), "{topics:?}");
    Ok(())
}

/// Topic creation with `cleanup.policy=compact` is accepted; DescribeConfigs reports it.
#[test]
fn compacted_topic_creation_and_describe_configs() -> Result<()> {
    let broker = Broker::start_memory()?;
    let bs = broker.bootstrap();
    let compacted = unique_name("changelog");
    let plain = unique_name("plain");
    create_topics(&bs, &[(&compacted, 2)], true)?;
    create_topics(&bs, &[(&plain, 1)], false)?;

    let cfg = describe_topic_config(&bs, &compacted)?;
    eprintln!("compacted topic DescribeConfigs: {cfg:?}");
    assert_eq!(cfg.get("cleanup.policy"), Some(&Some("compact".to_owned())));
    let plain_cfg = describe_topic_config(&bs, &plain)?;
    eprintln!("plain topic DescribeConfigs: {plain_cfg:?}");
    // Known Nisshi limit: a config not given at creation is missing (Kafka would report
    // cleanup.policy=delete as a default).
    assert_eq!(plain_cfg.get("cleanup.policy"), None);

    // Records with a repeated key are all readable (no compaction happens within a test).
    produce(
        &bs,
        &compacted,
        &[
            TestRecord::new("k", "1").partition(0),
            TestRecord::new("k", "2").partition(0),
            TestRecord::tombstone("k").partition(0),
        ],
    )?;
    let got = consume_all(&bs, &compacted, 3, Duration::from_secs(20))?;
    assert_eq!(
        got.iter().map(|r| r.value_str()).collect::<Vec<_>>(),
        [Some("1".into()), Some("2".into()), None]
    );
    Ok(())
}

fn assigned(consumer: &BaseConsumer) -> Result<Vec<i32>> {
    let mut ps: Vec<i32> = consumer
        .assignment()?
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    ps.sort();
    Ok(ps)
}

fn cooperative_consumer(bs: &str, group: &str) -> Result<BaseConsumer> {
    Ok(base_config(bs)
        .set("group.id", group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500")
        .create()?)
}

/// Cooperative-sticky group: c1 alone gets all 4 partitions; c2 joins and both hold a disjoint
/// non-empty share; c2 leaves (close) and c1 gets all 4 back.
#[test]
fn cooperative_sticky_rebalance() -> Result<()> {
    let broker = Broker::start_memory()?;
    let bs = broker.bootstrap();
    let topic = unique_name("coop");
    let group = unique_name("coop-group");
    create_topics(&bs, &[(&topic, 4)], false)?;

    let c1 = cooperative_consumer(&bs, &group)?;
    c1.subscribe(&[&topic])?;
    let t0 = Instant::now();
    while assigned(&c1)? != [0, 1, 2, 3] {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "c1 never got all partitions: {:?}",
            assigned(&c1)?
        );
        c1.poll(Duration::from_millis(50));
    }
    eprintln!("c1 alone: all 4 partitions after {:?}", t0.elapsed());

    let c2 = cooperative_consumer(&bs, &group)?;
    c2.subscribe(&[&topic])?;
    let t0 = Instant::now();
    loop {
        c1.poll(Duration::from_millis(25));
        c2.poll(Duration::from_millis(25));
        let (p1, p2) = (assigned(&c1)?, assigned(&c2)?);
        if !p1.is_empty() && !p2.is_empty() {
            let mut all: Vec<i32> = p1.iter().chain(&p2).copied().collect();
            all.sort();
            if all == [0, 1, 2, 3] {
                eprintln!("c2 joined: c1={p1:?} c2={p2:?} after {:?}", t0.elapsed());
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no shared assignment: c1={p1:?} c2={p2:?}"
        );
    }
    assert!(matches!(
        c1.rebalance_protocol(),
        rdkafka::consumer::RebalanceProtocol::Cooperative
    ));

    let t0 = Instant::now();
    drop(c2); // close(): LeaveGroup
    while assigned(&c1)? != [0, 1, 2, 3] {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "c1 did not get the partitions back: {:?}",
            assigned(&c1)?
        );
        c1.poll(Duration::from_millis(50));
    }
    eprintln!("c2 left: c1 has all 4 again after {:?}", t0.elapsed());
    Ok(())
}
