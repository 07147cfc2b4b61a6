use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rdkafka::message::Message;
use serde_json::Value;

use super::*;
use crate::config::EngineConfig;
use crate::http::Health;

const CONFIG: &str = r#"
application_id = "billing"

[kafka]
"bootstrap.servers" = "SASL_SSL://broker-a:9093,broker-b:9093"
"sasl.password" = "hunter2-secret"

[openlineage]
topic = "lineage"

[pipelines.payments]
input_topics = ["payments"]
output_topic = "payments-deduped"
duplicates_topic = "payments-duplicates"

[pipelines.payments.decoder]
format = "cloudevents"

[pipelines.payments.ordering]

[pipelines.traces]
input_topics = ["otlp_spans"]
output_topic = "otlp_spans-sampled"

[pipelines.traces.decoder]
format = "otlp_proto"

[pipelines.traces.sampling]
[[pipelines.traces.sampling.policies]]
name = "all"
type = "always_sample"
"#;

fn config() -> EngineConfig {
    EngineConfig::from_toml(CONFIG).unwrap()
}

fn event_for<'a>(events: &'a [(String, Value)], job: &str) -> &'a Value {
    &events
        .iter()
        .find(|(_, event)| event["job"]["name"] == job)
        .unwrap_or_else(|| panic!("no event for job {job}: {events:?}"))
        .1
}

fn output<'a>(event: &'a Value, topic: &str) -> &'a Value {
    event["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|dataset| dataset["name"] == topic)
        .unwrap_or_else(|| panic!("no output {topic}: {event}"))
}

#[test]
fn openlineage_dataset_namespace_is_the_first_bootstrap_server() {
    for (servers, namespace) in [
        ("broker-a:9092,broker-b:9092", "kafka://broker-a:9092"),
        ("SASL_SSL://broker:9093", "kafka://broker:9093"),
        (
            "PLAINTEXT://broker-a:9092, broker-b:9092",
            "kafka://broker-a:9092",
        ),
        (" broker ", "kafka://broker:9092"),
        (",10.0.0.1:19092", "kafka://10.0.0.1:19092"),
        ("[::1]:9094", "kafka://[::1]:9094"),
        ("[::1]", "kafka://[::1]:9092"),
        ("ssl://kafka.example.com", "kafka://kafka.example.com:9092"),
        ("", "kafka://localhost:9092"),
    ] {
        assert_eq!(kafka_dataset_namespace(servers), namespace, "{servers:?}");
    }
}

#[test]
fn openlineage_events_name_one_job_per_pipeline_and_its_topics() {
    let config = config();
    let events = RunEvents::new(&config, "breadcrumb");
    let metrics = Metrics::new();
    let start = events.events(RunState::Start, &metrics, OffsetDateTime::now_utc());
    assert_eq!(start.len(), 2, "one job per pipeline");
    let payments = event_for(&start, "billing.payments");
    assert_eq!(payments["eventType"], "START");
    assert_eq!(payments["job"]["namespace"], "breadcrumb");
    assert_eq!(
        payments["job"]["facets"]["jobType"]["processingType"],
        "STREAMING"
    );
    assert_eq!(
        payments["job"]["facets"]["jobType"]["integration"],
        "BREADCRUMB"
    );
    assert_eq!(payments["job"]["facets"]["jobType"]["jobType"], "JOB");
    assert_eq!(
        payments["inputs"],
        json!([{ "namespace": "kafka://broker-a:9093", "name": "payments" }])
    );
    let names: Vec<&str> = payments["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|dataset| dataset["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "payments-deduped",
            "payments-duplicates",
            "payments-deduped-conflicts",
            "payments-deduped-late",
            "payments-deduped-gaps",
            "billing-dlq",
        ]
    );
    assert!(
        payments["outputs"][0].get("outputFacets").is_none(),
        "START carries no statistics"
    );
    let traces = event_for(&start, "billing.traces");
    let names: Vec<&str> = traces["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|dataset| dataset["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "otlp_spans-sampled",
            "otlp_spans-sampled-decisions",
            "billing-dlq"
        ]
    );

    // One run per job and process run: the run id stays for later events, and is a UUIDv7.
    let complete = events.events(RunState::Complete, &metrics, OffsetDateTime::now_utc());
    let run_id = payments["run"]["runId"].as_str().unwrap();
    assert_eq!(
        event_for(&complete, "billing.payments")["run"]["runId"],
        run_id
    );
    assert_ne!(traces["run"]["runId"], run_id);
    assert_eq!(Uuid::parse_str(run_id).unwrap().get_version_num(), 7);
    assert_eq!(start[0].0, "run:breadcrumb/billing.payments");
}

#[test]
fn openlineage_running_statistics_are_the_committed_counters() {
    let config = config();
    let events = RunEvents::new(&config, "breadcrumb");
    let metrics = Metrics::new();
    metrics
        .events_out
        .with_label_values(&["payments", "payments-deduped"])
        .inc_by(40);
    metrics
        .duplicates
        .with_label_values(&["payments"])
        .inc_by(5);
    metrics
        .ordering_repeats
        .with_label_values(&["payments"])
        .inc_by(2);
    metrics.conflicts.with_label_values(&["payments"]).inc_by(3);
    metrics.ordering_gaps.with_label_values(&["payments"]).inc();
    metrics
        .dead_letters
        .with_label_values(&["payments", "invalid_json"])
        .inc_by(4);
    metrics
        .dead_letters
        .with_label_values(&["payments", "missing_id"])
        .inc_by(6);
    metrics
        .dead_letters
        .with_label_values(&["traces", "invalid_protobuf"])
        .inc_by(100);
    metrics
        .events_out
        .with_label_values(&["traces", "otlp_spans-sampled"])
        .inc_by(9);
    metrics
        .sampling
        .decisions
        .with_label_values(&["traces", "all", "keep"])
        .inc_by(11);
    // Another engine's pipeline of the same name in the same registry would not exist; a
    // counter of another pipeline must not leak into this one's counts.
    let running = events.events(RunState::Running, &metrics, OffsetDateTime::now_utc());
    let payments = event_for(&running, "billing.payments");
    assert_eq!(payments["eventType"], "RUNNING");
    let rows = |event: &Value, topic: &str| {
        let statistics = &output(event, topic)["outputFacets"]["outputStatistics"];
        assert_eq!(statistics["_schemaURL"], OUTPUT_STATISTICS_FACET_URL);
        statistics["rowCount"].as_u64().unwrap()
    };
    assert_eq!(rows(payments, "payments-deduped"), 40);
    assert_eq!(
        rows(payments, "payments-duplicates"),
        7,
        "dedupe and ordering repeats"
    );
    assert_eq!(rows(payments, "payments-deduped-conflicts"), 3);
    assert_eq!(rows(payments, "payments-deduped-gaps"), 1);
    assert_eq!(rows(payments, "payments-deduped-late"), 0);
    assert_eq!(
        rows(payments, "billing-dlq"),
        10,
        "this pipeline's dead letters only"
    );
    let traces = event_for(&running, "billing.traces");
    assert_eq!(rows(traces, "otlp_spans-sampled"), 9);
    assert_eq!(rows(traces, "otlp_spans-sampled-decisions"), 11);
    assert_eq!(rows(traces, "billing-dlq"), 100);
    // Reading the counts creates no series: /metrics shows only outputs that saw records.
    assert!(!metrics.render().contains("topic=\"payments-duplicates\""));
}

#[test]
fn openlineage_fail_event_carries_the_error_without_secrets() {
    let config = config();
    let events = RunEvents::new(&config, "breadcrumb");
    let error = EngineError::Fatal("broker said: bad password hunter2-secret".to_owned());
    let message = redact_secrets(&error.to_string(), &config.kafka);
    assert!(!message.contains("hunter2-secret"), "{message}");
    assert!(message.contains("<redacted>"), "{message}");
    let fail = events.events(
        RunState::Fail(&message),
        &Metrics::new(),
        OffsetDateTime::now_utc(),
    );
    let payments = event_for(&fail, "billing.payments");
    assert_eq!(payments["eventType"], "FAIL");
    let facet = &payments["run"]["facets"]["errorMessage"];
    assert_eq!(facet["message"], message.as_str());
    assert_eq!(facet["programmingLanguage"], "RUST");
    assert!(!payments.to_string().contains("hunter2"));

    let long = "é".repeat(MAX_ERROR_MESSAGE_BYTES);
    assert!(redact_secrets(&long, &config.kafka).len() <= MAX_ERROR_MESSAGE_BYTES);
}

/// The official OpenLineage schemas (see `engine/tests/openlineage-spec/README.md`), compiled.
struct Spec {
    core: jsonschema::Validator,
    job_type: jsonschema::Validator,
    output_statistics: jsonschema::Validator,
    error_message: jsonschema::Validator,
}

impl Spec {
    fn load() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openlineage-spec");
        let read = |file: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
        };
        let core = read("OpenLineage.json");
        let core_id = core["$id"].as_str().unwrap().to_owned();
        assert!(
            SCHEMA_URL.starts_with(&format!("{core_id}#")),
            "events name the vendored spec version"
        );
        // Facets refer to the core schema by its `$id`: resolve it from the file, offline.
        let registry = jsonschema::Registry::new()
            .add(core_id, core.clone())
            .unwrap()
            .prepare()
            .unwrap();
        let compile = |schema: &Value, facet_url: Option<&str>| {
            if let Some(url) = facet_url {
                let id = schema["$id"].as_str().unwrap();
                assert!(
                    url.starts_with(&format!("{id}#")),
                    "{url} names the vendored {id}"
                );
            }
            jsonschema::options()
                .offline()
                .should_validate_formats(true)
                .with_registry(&registry)
                .build(schema)
                .unwrap()
        };
        Self {
            core: compile(&core, None),
            job_type: compile(
                &read("facets/JobTypeJobFacet.json"),
                Some(JOB_TYPE_FACET_URL),
            ),
            output_statistics: compile(
                &read("facets/OutputStatisticsOutputDatasetFacet.json"),
                Some(OUTPUT_STATISTICS_FACET_URL),
            ),
            error_message: compile(
                &read("facets/ErrorMessageRunFacet.json"),
                Some(ERROR_MESSAGE_FACET_URL),
            ),
        }
    }

    /// Every schema violation of `event`: the core schema for the event, each facet's own
    /// schema for its facets.
    fn violations(&self, event: &Value) -> Vec<String> {
        let mut violations: Vec<String> = Vec::new();
        let mut check = |validator: &jsonschema::Validator, instance: &Value, what: &str| {
            violations.extend(
                validator
                    .iter_errors(instance)
                    .map(|error| format!("{what}: {error} at {}", error.instance_path())),
            );
        };
        check(&self.core, event, "event");
        check(&self.job_type, &event["job"]["facets"], "job facets");
        if let Some(facets) = event["run"].get("facets") {
            check(&self.error_message, facets, "run facets");
        }
        for dataset in event["outputs"].as_array().into_iter().flatten() {
            if let Some(facets) = dataset.get("outputFacets") {
                check(&self.output_statistics, facets, "output facets");
            }
        }
        violations
    }
}

/// START, RUNNING with statistics, COMPLETE and FAIL events as the module builds them.
fn every_kind_of_event() -> Vec<Value> {
    let config = config();
    let events = RunEvents::new(&config, "breadcrumb");
    let metrics = Metrics::new();
    metrics
        .events_out
        .with_label_values(&["payments", "payments-deduped"])
        .inc_by(12);
    let now = OffsetDateTime::now_utc();
    [
        RunState::Start,
        RunState::Running,
        RunState::Complete,
        RunState::Fail("kafka: Transaction error: fenced"),
    ]
    .into_iter()
    .flat_map(|state| events.events(state, &metrics, now))
    .map(|(_, event)| event)
    .collect()
}

#[test]
fn openlineage_events_are_valid_against_the_official_schemas() {
    let spec = Spec::load();
    let events = every_kind_of_event();
    assert_eq!(events.len(), 8);
    for event in &events {
        let violations = spec.violations(event);
        assert!(violations.is_empty(), "{violations:#?}\n{event:#}");
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|event| event["eventType"].as_str().unwrap())
        .collect();
    for kind in ["START", "RUNNING", "COMPLETE", "FAIL"] {
        assert!(kinds.contains(&kind));
    }
}

#[test]
fn openlineage_schema_check_rejects_broken_events() {
    let spec = Spec::load();
    let events = every_kind_of_event();
    let running = events
        .iter()
        .find(|event| event["eventType"] == "RUNNING")
        .unwrap();
    let fail = events
        .iter()
        .find(|event| event["eventType"] == "FAIL")
        .unwrap();
    type Break = fn(&mut Value);
    let breaks: [(&str, &Value, Break); 8] = [
        ("unknown event type", running, |event| {
            event["eventType"] = json!("STARTED")
        }),
        ("event time not ISO-8601", running, |event| {
            event["eventTime"] = json!("yesterday")
        }),
        ("run id not a UUID", running, |event| {
            event["run"]["runId"] = json!("run-1")
        }),
        ("no job name", running, |event| {
            event["job"].as_object_mut().unwrap().remove("name");
        }),
        ("job type without processing type", running, |event| {
            event["job"]["facets"]["jobType"]
                .as_object_mut()
                .unwrap()
                .remove("processingType");
        }),
        ("row count not an integer", running, |event| {
            event["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] = json!("12")
        }),
        ("facet without _producer", running, |event| {
            event["outputs"][0]["outputFacets"]["outputStatistics"]
                .as_object_mut()
                .unwrap()
                .remove("_producer");
        }),
        ("error message without language", fail, |event| {
            event["run"]["facets"]["errorMessage"]
                .as_object_mut()
                .unwrap()
                .remove("programmingLanguage");
        }),
    ];
    for (what, event, breaking) in breaks {
        let mut broken = event.clone();
        breaking(&mut broken);
        assert!(
            !spec.violations(&broken).is_empty(),
            "a broken event passed: {what}\n{broken:#}"
        );
    }
}

/// The engine on librdkafka's mock cluster: START once the clients exist, RUNNING with the
/// committed count while it runs, COMPLETE at the clean stop, all on the configured topic.
#[test]
fn openlineage_engine_emits_start_running_complete_on_its_topic() {
    use rdkafka::mocking::MockCluster;

    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let state_dir = tempfile::TempDir::new().unwrap();
    let text = format!(
        r#"
application_id = "ol-test"
instance_id = "one"

[kafka]
"bootstrap.servers" = "{bootstrap}"

[state]
dir = "{}"

[http]
enabled = false

[openlineage]
topic = "lineage-events"
running_interval_ms = 200

[pipelines.payments]
input_topics = ["payments"]
output_topic = "payments-deduped"

[pipelines.payments.decoder]
format = "json"
id_path = "/id"
"#,
        state_dir.path().display()
    );
    let config = Arc::new(EngineConfig::from_toml(&text).unwrap());
    cluster.create_topic("payments", 2, 1).unwrap();
    let planned = crate::runtime::planned_topics(&config).unwrap();
    assert!(planned.iter().any(|spec| spec.name == "lineage-events"));
    // The mock cluster has no CreateTopics API: create what the engine would.
    for spec in planned {
        cluster
            .create_topic(&spec.name, spec.partitions, 1)
            .unwrap();
    }
    let client = base_client_config(&config);
    let producer: rdkafka::producer::BaseProducer = client.create().unwrap();
    for id in 0..20 {
        let payload = format!(r#"{{"id":"p-{}"}}"#, id % 15);
        producer
            .send(BaseRecord::to("payments").key("k").payload(&payload))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let metrics = Metrics::new();
    let shutdown = Arc::new(AtomicBool::new(false));
    let engine = {
        let (config, metrics, shutdown) = (config.clone(), metrics.clone(), shutdown.clone());
        std::thread::spawn(move || crate::runtime::run(config, metrics, Health::new(), shutdown))
    };
    let events_in = metrics
        .events_in
        .with_label_values(&["payments", "payments"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while events_in.get() < 20 && Instant::now() < deadline && !engine.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(events_in.get(), 20);
    // Long enough for RUNNING events that see the committed count.
    std::thread::sleep(Duration::from_millis(600));
    shutdown.store(true, Ordering::Release);
    engine.join().unwrap().unwrap();

    let records =
        crate::verify::read_topic(&client, "lineage-events", Duration::from_secs(30)).unwrap();
    let events: Vec<Value> = records
        .iter()
        .map(|record| {
            assert_eq!(record.key(), Some(&b"run:breadcrumb/ol-test.payments"[..]));
            serde_json::from_slice(record.payload().unwrap()).unwrap()
        })
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|event| event["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"START"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"COMPLETE"), "{kinds:?}");
    assert!(kinds[1..kinds.len() - 1]
        .iter()
        .all(|kind| *kind == "RUNNING"));
    assert!(kinds.len() >= 3, "at least one RUNNING: {kinds:?}");
    let run_id = &events[0]["run"]["runId"];
    assert!(events.iter().all(|event| &event["run"]["runId"] == run_id));
    let complete = events.last().unwrap();
    assert_eq!(
        output(complete, "payments-deduped")["outputFacets"]["outputStatistics"]["rowCount"],
        15,
        "15 distinct ids committed"
    );
    assert_eq!(
        complete["inputs"][0]["namespace"],
        kafka_dataset_namespace(&bootstrap)
    );
    let spec = Spec::load();
    for event in &events {
        let violations = spec.violations(event);
        assert!(violations.is_empty(), "{violations:#?}\n{event:#}");
    }
}
