use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::json;

use super::*;

/// An assignment in the consumer protocol format, with user data after it.
fn encode_assignment(version: i16, topics: &[(&str, &[i32])], user_data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for (name, partitions) in topics {
        out.extend_from_slice(&(name.len() as i16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
        for partition in *partitions {
            out.extend_from_slice(&partition.to_be_bytes());
        }
    }
    out.extend_from_slice(&(user_data.len() as i32).to_be_bytes());
    out.extend_from_slice(user_data);
    out
}

#[test]
fn assignments_parse_in_every_protocol_version_and_reject_malformed_bytes() {
    for version in [0, 1, 3] {
        let bytes = encode_assignment(
            version,
            &[("app-orders-repartition", &[0, 3]), ("payments", &[7])],
            b"sticky user data",
        );
        assert_eq!(
            parse_assignment(&bytes).unwrap(),
            vec![
                ("app-orders-repartition".to_owned(), vec![0, 3]),
                ("payments".to_owned(), vec![7]),
            ]
        );
    }
    assert_eq!(parse_assignment(&[]).unwrap(), Vec::new());
    assert_eq!(
        parse_assignment(&encode_assignment(0, &[], &[])).unwrap(),
        Vec::new()
    );
    let bytes = encode_assignment(0, &[("t", &[1, 2])], &[]);
    for cut in 1..bytes.len() - 4 {
        assert!(
            matches!(
                parse_assignment(&bytes[..cut]),
                Err(AssignmentError::Truncated(_))
            ),
            "cut at {cut}"
        );
    }
    let mut negative = encode_assignment(0, &[], &[]);
    negative[2..6].copy_from_slice(&(-2i32).to_be_bytes());
    assert_eq!(
        parse_assignment(&negative),
        Err(AssignmentError::Negative(2))
    );
    // A huge count from the wire fails on the missing bytes, not on an allocation.
    let mut huge = encode_assignment(0, &[], &[]);
    huge[2..6].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(matches!(
        parse_assignment(&huge[..6]),
        Err(AssignmentError::Truncated(6))
    ));
    let mut bad_name = encode_assignment(0, &[("ab", &[1])], &[]);
    bad_name[8] = 0xff;
    assert_eq!(parse_assignment(&bad_name), Err(AssignmentError::TopicName));
}

#[test]
fn member_client_ids_round_trip_and_ignore_other_clients() {
    let id = member_client_id("node/a", Some("10.0.0.7:9464"));
    assert_eq!(id, "breadcrumb/node/a/10.0.0.7:9464");
    assert_eq!(
        parse_member_client_id(&id),
        Some(("node/a", Some("10.0.0.7:9464")))
    );
    let off = member_client_id("b", None);
    assert_eq!(parse_member_client_id(&off), Some(("b", None)));
    assert_eq!(parse_member_client_id("rdkafka"), None);
    assert_eq!(parse_member_client_id("breadcrumb/"), None);
    assert_eq!(parse_member_client_id(""), None);
}

#[test]
fn consistent_partition_is_crc32_of_the_key() {
    // The CRC-32 check value: crc32("123456789") = 0xCBF43926.
    assert_eq!(
        consistent_partition(b"123456789", i32::MAX),
        (0xCBF4_3926u32 % i32::MAX as u32) as i32
    );
    assert_eq!(
        consistent_partition(b"123456789", 10),
        (0xCBF4_3926u32 % 10) as i32
    );
    assert_eq!(consistent_partition(b"anything", 1), 0);
}

/// librdkafka itself places keys where `consistent_partition` says: produce keyed records
/// with the default partitioner to an in-process mock cluster and compare.
#[test]
fn consistent_partition_matches_librdkafkas_default_partitioner() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("placed", 7, 1).expect("topic");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .expect("producer");
    let keys: Vec<String> = (0..40)
        .map(|index| format!("{:032x}", 0x9e37_79b9_7f4a_7c15u128.wrapping_mul(index + 1)))
        .collect();
    for key in &keys {
        producer
            .send(BaseRecord::<_, _>::to("placed").key(key).payload("x"))
            .expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "placed-check")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["placed"]).expect("subscribed");
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen < keys.len() && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            let key = message.key().expect("keyed");
            assert_eq!(
                message.partition(),
                consistent_partition(key, 7),
                "key {}",
                String::from_utf8_lossy(key)
            );
            seen += 1;
        }
    }
    assert_eq!(seen, keys.len());
}

/// The librdkafka mock cluster has no ListGroups/DescribeGroups handler: the directory reports
/// an error instead of members, and a miss then answers "owner unknown".
#[test]
fn mock_cluster_does_not_describe_groups() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("socket.timeout.ms", "2000");
    let directory = KafkaDirectory::new(client, "some-group");
    match directory.members() {
        Err(error) => assert!(error.contains("DescribeGroups"), "{error}"),
        Ok(members) => assert!(members.is_empty(), "{members:?}"),
    }
}

fn searched(key: Option<&str>, local: &[i32]) -> Searched {
    Searched {
        pipeline: "orders".to_owned(),
        topic: "app-orders-repartition".to_owned(),
        local_partitions: local.to_vec(),
        routing_key: key.map(|key| key.as_bytes().to_vec()),
    }
}

fn member(id: &str, partitions: &[i32]) -> Member {
    Member {
        instance_id: id.to_owned(),
        address: Some(format!("{id}:9464")),
        assignment: vec![("app-orders-repartition".to_owned(), partitions.to_vec())],
    }
}

#[test]
fn misses_route_to_the_owner_only_when_the_partition_is_computable() {
    let key = "4bf92f3577b34da6a3ce929d0e0e4736";
    let partition = consistent_partition(key.as_bytes(), 4);
    let others: Vec<i32> = (0..4).filter(|p| *p != partition).collect();
    let members = vec![member("a", &others), member("b", &[partition])];

    let routed = route_miss(
        &searched(Some(key), &others),
        Some(Ok(4)),
        Ok(&members),
        "a",
    );
    assert_eq!(
        routed,
        PipelineRoute::Owner {
            pipeline: "orders".to_owned(),
            partition,
            member: members[1].clone(),
        }
    );
    assert_eq!(miss_status(&[routed]), StatusCode::MISDIRECTED_REQUEST);

    // Our own partition, searched: the key is unknown.
    let routed = route_miss(
        &searched(Some(key), &[partition]),
        Some(Ok(4)),
        Ok(&members),
        "b",
    );
    assert!(matches!(routed, PipelineRoute::LocalMiss { .. }));
    assert_eq!(miss_status(&[routed]), StatusCode::NOT_FOUND);

    // Not computable: the caller must ask the others.
    let routed = route_miss(&searched(None, &others), None, Ok(&members), "a");
    assert!(matches!(routed, PipelineRoute::Unroutable { .. }));
    assert_eq!(miss_status(&[routed]), StatusCode::NOT_FOUND);

    // Computable, but nobody reports the partition (a broker that does not describe members),
    // membership unavailable, or the partition count unknown: try again later.
    for routed in [
        route_miss(&searched(Some(key), &others), Some(Ok(4)), Ok(&[]), "a"),
        route_miss(&searched(Some(key), &others), Some(Ok(4)), Err("down"), "a"),
        route_miss(
            &searched(Some(key), &others),
            Some(Err("no metadata".into())),
            Ok(&members),
            "a",
        ),
    ] {
        assert!(
            matches!(routed, PipelineRoute::OwnerUnknown { .. }),
            "{routed:?}"
        );
        assert_eq!(miss_status(&[routed]), StatusCode::SERVICE_UNAVAILABLE);
    }

    // Membership still says it is ours while the processing thread does not have it.
    let routed = route_miss(
        &searched(Some(key), &others),
        Some(Ok(4)),
        Ok(&members),
        "b",
    );
    assert!(matches!(routed, PipelineRoute::OwnerUnknown { .. }));

    // Several pipelines: one unroutable pipeline turns a redirect into "ask the others".
    let owner = route_miss(
        &searched(Some(key), &others),
        Some(Ok(4)),
        Ok(&members),
        "a",
    );
    let unroutable = PipelineRoute::Unroutable {
        pipeline: "other".to_owned(),
    };
    assert_eq!(
        miss_status(&[owner.clone(), unroutable]),
        StatusCode::NOT_FOUND
    );
    let local = PipelineRoute::LocalMiss {
        pipeline: "other".to_owned(),
    };
    assert_eq!(
        miss_status(&[owner, local]),
        StatusCode::MISDIRECTED_REQUEST
    );
    assert_eq!(miss_status(&[]), StatusCode::NOT_FOUND);
}

#[test]
fn routing_keys_follow_the_repartition_key() {
    let trace = parse_trace_id("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let hex = b"4bf92f3577b34da6a3ce929d0e0e4736".to_vec();
    let id = ["id".to_owned()];
    let lineage = |trace_id| Query::LineageEvent {
        event_id: "e1".to_owned(),
        depth: 3,
        trace_id,
    };
    assert_eq!(
        lineage(Some(trace)).routing_key(Some(RepartitionKey::TraceId), &id),
        Some(hex.clone())
    );
    assert_eq!(
        lineage(None).routing_key(Some(RepartitionKey::TraceId), &id),
        None
    );
    let sampling = Query::SamplingTrace { trace_id: trace };
    assert_eq!(
        sampling.routing_key(Some(RepartitionKey::TraceId), &id),
        Some(hex)
    );
    assert_eq!(sampling.routing_key(None, &id), None);
    let dedupe = Query::Dedupe {
        key: "pay-1".to_owned(),
    };
    assert_eq!(
        dedupe.routing_key(Some(RepartitionKey::EventId), &id),
        Some(b"pay-1".to_vec())
    );
    assert_eq!(dedupe.routing_key(Some(RepartitionKey::Subject), &id), None);
    assert_eq!(
        dedupe.routing_key(
            Some(RepartitionKey::EventId),
            &["id".to_owned(), "source".to_owned()]
        ),
        None
    );
    assert_eq!(dedupe.routing_key(None, &id), None);
}

#[test]
fn requests_parse_into_queries_or_answer_400() {
    assert_eq!(
        parse_request("/lineage/events/inv%2F7", Some("depth=3")).unwrap(),
        Query::LineageEvent {
            event_id: "inv/7".to_owned(),
            depth: 3,
            trace_id: None,
        }
    );
    assert_eq!(
        parse_request("/lineage/events/e1", None).unwrap(),
        Query::LineageEvent {
            event_id: "e1".to_owned(),
            depth: DEFAULT_LINEAGE_DEPTH,
            trace_id: None,
        }
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    assert!(matches!(
        parse_request(
            "/lineage/events/e1",
            Some(&format!("trace_id={trace}&depth=0"))
        ),
        Ok(Query::LineageEvent {
            depth: 0,
            trace_id: Some(_),
            ..
        })
    ));
    assert!(matches!(
        parse_request(&format!("/sampling/traces/{trace}"), None),
        Ok(Query::SamplingTrace { .. })
    ));
    assert_eq!(
        parse_request("/dedupe/pay-1", None).unwrap(),
        Query::Dedupe {
            key: "pay-1".to_owned()
        }
    );
    for (path, query) in [
        ("/lineage/events/e1", Some("depth=65")),
        ("/lineage/events/e1", Some("depth=-1")),
        ("/lineage/events/e1", Some("trace_id=XYZ")),
        ("/sampling/traces/4BF92F3577B34DA6A3CE929D0E0E4736", None),
        ("/sampling/traces/00000000000000000000000000000000", None),
        ("/dedupe/%zz", None),
        ("/dedupe/%ff", None),
    ] {
        let response = parse_request(path, query).unwrap_err();
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{path}");
    }
    assert_eq!(
        parse_request("/lineage/nothing", None).unwrap_err().status,
        StatusCode::NOT_FOUND
    );
}

/// A directory with fixed answers.
struct FixedDirectory {
    members: Result<Vec<Member>, String>,
    partitions: i32,
}

impl Directory for FixedDirectory {
    fn members(&self) -> Result<Vec<Member>, String> {
        self.members.clone()
    }
    fn partition_count(&self, _topic: &str) -> Result<i32, String> {
        Ok(self.partitions)
    }
}

/// A processing thread that answers with `answer` until every sender is gone.
fn answering(
    receiver: QueryReceiver,
    answer: impl Fn(&Query) -> LocalAnswer + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while let Ok(request) = receiver.0.recv() {
            let _ = request.reply.send(answer(&request.query));
        }
    })
}

#[test]
fn the_service_answers_found_misdirected_not_found_busy_and_timeout() {
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let partition = consistent_partition(trace.as_bytes(), 4);
    let mine: Vec<i32> = (0..4).filter(|p| *p != partition).collect();
    let (sender, receiver) = channel();
    let local = mine.clone();
    let worker = answering(receiver, move |query| {
        let searched = vec![Searched {
            pipeline: "traces".to_owned(),
            topic: "app-traces-repartition".to_owned(),
            local_partitions: local.clone(),
            routing_key: query.routing_key(Some(RepartitionKey::TraceId), &[]),
        }];
        match query {
            Query::LineageEvent { event_id, .. } if event_id == "known" => LocalAnswer {
                found: vec![Found {
                    pipeline: "traces".to_owned(),
                    partition: local[0],
                    value: json!({ "event": { "event_id": "known" } }),
                }],
                searched,
                errors: Vec::new(),
            },
            _ => LocalAnswer {
                searched,
                ..LocalAnswer::default()
            },
        }
    });
    let members = vec![
        Member {
            instance_id: "a".to_owned(),
            address: Some("a:9464".to_owned()),
            assignment: vec![("app-traces-repartition".to_owned(), mine.clone())],
        },
        Member {
            instance_id: "b".to_owned(),
            address: Some("b:9464".to_owned()),
            assignment: vec![("app-traces-repartition".to_owned(), vec![partition])],
        },
    ];
    let service = QueryService::new(
        sender.clone(),
        "a",
        Some("a:9464"),
        Some(Arc::new(FixedDirectory {
            members: Ok(members),
            partitions: 4,
        })),
        true,
    );

    let found = service.get_blocking("/lineage/events/known", Some("depth=2"));
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    assert_eq!(found.body["instance"]["id"], "a");
    assert_eq!(found.body["answers"][0]["pipeline"], "traces");
    assert_eq!(
        found.body["answers"][0]["answer"]["event"]["event_id"],
        "known"
    );

    let misdirected = service.get_blocking(&format!("/sampling/traces/{trace}"), None);
    assert_eq!(
        misdirected.status,
        StatusCode::MISDIRECTED_REQUEST,
        "{}",
        misdirected.body
    );
    assert_eq!(misdirected.body["owner"]["instance"], "b");
    assert_eq!(misdirected.body["owner"]["address"], "b:9464");
    assert_eq!(misdirected.body["owner"]["partition"], partition);

    let unroutable = service.get_blocking("/lineage/events/unknown", None);
    assert_eq!(
        unroutable.status,
        StatusCode::NOT_FOUND,
        "{}",
        unroutable.body
    );
    assert_eq!(
        unroutable.body["ask"],
        json!([{ "instance": "b", "address": "b:9464" }])
    );

    let with_trace = service.get_blocking(
        "/lineage/events/unknown",
        Some(&format!("trace_id={trace}")),
    );
    assert_eq!(
        with_trace.status,
        StatusCode::MISDIRECTED_REQUEST,
        "{}",
        with_trace.body
    );

    // Nobody answers: the processing thread is gone.
    drop(service);
    drop(sender);
    worker.join().expect("worker");

    let (sender, receiver) = channel();
    let service = QueryService::new(sender, "a", None, None, true);
    let stalled = QueryService {
        inner: Arc::new(ServiceInner {
            timeout: Duration::from_millis(50),
            sender: service.inner.sender.clone(),
            instance_id: "a".to_owned(),
            advertised_address: None,
            directory: None,
            crc32_partitioner: true,
            cache: tokio::sync::Mutex::new(DirectoryCache::default()),
        }),
    };
    let timeout = stalled.get_blocking("/dedupe/x", None);
    assert_eq!(
        timeout.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        timeout.body
    );
    // The queue holds QUEUE_CAPACITY requests; the one that timed out still occupies a slot.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let busy = runtime.block_on(async {
        let mut waiting = Vec::new();
        for _ in 1..QUEUE_CAPACITY {
            let service = service.clone();
            waiting.push(tokio::spawn(
                async move { service.get("/dedupe/x", None).await },
            ));
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let busy = service.get("/dedupe/x", None).await;
        for task in waiting {
            task.abort();
        }
        busy
    });
    assert_eq!(
        busy.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        busy.body
    );
    drop(receiver);
    let stopped = service.get_blocking("/dedupe/x", None);
    assert_eq!(stopped.status, StatusCode::SERVICE_UNAVAILABLE);
}
