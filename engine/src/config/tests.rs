use super::*;

const MINIMAL: &str = r#"
application_id = "billing-dedupe"

[kafka]
"bootstrap.servers" = "localhost:9092"
"sasl.password" = "hunter2"

[pipelines.payments]
input_topics = ["payments"]
output_topic = "payments-deduped"

[pipelines.payments.decoder]
format = "cloudevents"
"#;

#[test]
fn config_minimal_file_gets_named_defaults() {
    let config = EngineConfig::from_toml(MINIMAL).unwrap();
    assert_eq!(config.commit_interval_ms, default_commit_interval_ms());
    assert_eq!(
        config.processing_guarantee,
        ProcessingGuarantee::ExactlyOnce
    );
    assert_eq!(config.dead_letter_topic(), "billing-dedupe-dlq");
    assert_eq!(config.ledger_topic(), "billing-dedupe-ledger");
    assert_eq!(
        config.kafka.get("bootstrap.servers").map(String::as_str),
        Some("localhost:9092"),
        "dotted librdkafka keys survive the config crate's nesting"
    );
    let pipeline = &config.pipelines["payments"];
    assert_eq!(pipeline.conflicts_topic(), "payments-deduped-conflicts");
    assert_eq!(pipeline.dedupe.ttl_ms, 7 * 24 * 3_600_000);
    assert_eq!(
        config.changelog_topic("payments-dedupe"),
        "billing-dedupe-payments-dedupe-changelog"
    );
}

#[test]
fn config_unknown_key_is_rejected_with_its_path() {
    let text = MINIMAL.replace(
        "output_topic = \"payments-deduped\"",
        "output_topic = \"payments-deduped\"\noutput_topics = \"x\"",
    );
    let error = EngineConfig::from_toml(&text).unwrap_err().to_string();
    assert!(error.contains("pipelines.payments"), "{error}");
    assert!(error.contains("output_topics"), "{error}");
}

#[test]
fn config_validation_reports_every_problem_naming_keys() {
    let text = r#"
application_id = "bad id"
commit_interval_ms = 0

[kafka]
"group.id" = "mine"

[pipelines.payments]
input_topics = ["a", "b"]
output_topic = "a"

[pipelines.payments.decoder]
format = "json"
id_path = "payment/id"

[pipelines.payments.dedupe]
ttl_ms = -1
"#;
    let EngineError::Config(errors) = EngineConfig::from_toml(text).unwrap_err() else {
        panic!("expected a configuration error");
    };
    let joined = errors.join("\n");
    for key in [
        "application_id",
        "commit_interval_ms",
        "kafka.\"bootstrap.servers\"",
        "kafka.\"group.id\"",
        "pipelines.payments.repartition_by",
        "pipelines.payments.output_topic",
        "pipelines.payments.decoder.id_path",
        "pipelines.payments.dedupe.ttl_ms",
    ] {
        assert!(
            errors.iter().any(|error| error.starts_with(key)),
            "no error names `{key}`:\n{joined}"
        );
    }
}

#[test]
fn config_secrets_are_redacted_for_logs() {
    let config = EngineConfig::from_toml(MINIMAL).unwrap();
    let shown = format!("{:?}", redacted_kafka(&config.kafka));
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"));
}

#[test]
fn config_environment_overrides_the_file() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("breadcrumb.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    // Environment variables are process-wide; these names are used by this test only.
    std::env::set_var("BREADCRUMB__COMMIT_INTERVAL_MS", "250");
    std::env::set_var("BREADCRUMB__KAFKA__BOOTSTRAP_SERVERS", "broker-a:9092");
    let loaded = EngineConfig::load(&path);
    std::env::remove_var("BREADCRUMB__COMMIT_INTERVAL_MS");
    std::env::remove_var("BREADCRUMB__KAFKA__BOOTSTRAP_SERVERS");
    let config = loaded.unwrap();
    assert_eq!(config.commit_interval_ms, 250);
    assert_eq!(
        config.kafka.get("bootstrap.servers").map(String::as_str),
        Some("broker-a:9092")
    );
}

#[test]
fn config_example_file_in_the_repository_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../breadcrumb.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    EngineConfig::from_toml(&text).unwrap();

    // The commented Avro and PII pipeline at the end is valid once uncommented.
    let (head, tail) = text
        .split_once("# An Avro pipeline")
        .expect("the example ends with an Avro pipeline");
    let uncommented: String = tail
        .lines()
        .skip(1)
        .map(|line| line.strip_prefix("# ").unwrap_or(line))
        .map(|line| format!("{line}\n"))
        .collect();
    let config = EngineConfig::from_toml(&format!("{head}{uncommented}")).unwrap();
    let orders = &config.pipelines["orders"];
    assert!(matches!(
        orders.decoder,
        breadcrumb_schemas::DecoderConfig::Avro(_)
    ));
    assert_eq!(
        config.pipelines["customers"]
            .pii
            .as_ref()
            .map(|pii| pii.fields.len()),
        Some(2)
    );
}

#[test]
fn config_secrets_come_from_files_and_errors_never_show_them() {
    let dir = tempfile::TempDir::new().unwrap();
    let secret = dir.path().join("kafka-password");
    std::fs::write(&secret, "s3cret-canary\n").unwrap();
    let text = |path: &std::path::Path| {
        MINIMAL
            .replace("\"sasl.password\" = \"hunter2\"\n", "")
            .replace(
                "[pipelines.payments]",
                &format!(
                    "[kafka_secret_files]\n\"sasl.password\" = \"{}\"\n\n[pipelines.payments]",
                    path.display()
                ),
            )
    };
    let config = EngineConfig::from_toml(&text(&secret)).unwrap();
    assert_eq!(
        config.kafka.get("sasl.password").map(String::as_str),
        Some("s3cret-canary"),
        "read from the file, trailing newline removed"
    );
    assert!(!format!("{:?}", redacted_kafka(&config.kafka)).contains("s3cret-canary"));

    let error = EngineConfig::from_toml(&text(&dir.path().join("missing")))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("kafka_secret_files.\"sasl.password\": cannot read"),
        "{error}"
    );

    // Set in both places: refused, without echoing either value.
    let both = text(&secret).replace(
        "\"bootstrap.servers\" = \"localhost:9092\"",
        "\"bootstrap.servers\" = \"localhost:9092\"\n\"sasl.password\" = \"inline-canary\"",
    );
    let error = EngineConfig::from_toml(&both).unwrap_err().to_string();
    assert!(error.contains("also set in [kafka]"), "{error}");
    assert!(!error.contains("canary"), "{error}");
}

#[test]
fn config_sampling_pipelines_need_otlp_input_and_no_other_stage() {
    let sampling = r#"
application_id = "traces"

[kafka]
"bootstrap.servers" = "localhost:9092"

[pipelines.traces]
input_topics = ["spans"]
output_topic = "spans-sampled"

[pipelines.traces.decoder]
format = "otlp_json"

[pipelines.traces.sampling]
[[pipelines.traces.sampling.policies]]
name = "all"
type = "always_sample"
"#;
    let config = EngineConfig::from_toml(sampling).unwrap();
    let pipeline = &config.pipelines["traces"];
    assert_eq!(
        pipeline.decisions_topic().as_deref(),
        Some("spans-sampled-decisions")
    );
    assert_eq!(
        crate::runtime::pipeline::declared_store_names_of("traces", pipeline),
        vec!["traces-sampling"],
        "the sampling operator is the chain: no dedupe store"
    );

    let wrong_decoder = sampling.replace("otlp_json", "cloudevents");
    let Err(EngineError::Config(errors)) = EngineConfig::from_toml(&wrong_decoder) else {
        panic!("a sampling pipeline needs an OTLP decoder");
    };
    assert!(
        errors[0].starts_with("pipelines.traces.decoder.format:"),
        "{errors:?}"
    );

    let without_sampling = MINIMAL
        .replace("format = \"cloudevents\"", "format = \"otlp_proto\"")
        .replace(
            "output_topic = \"payments-deduped\"",
            "output_topic = \"payments-deduped\"\ndecisions_topic = \"x\"",
        );
    let Err(EngineError::Config(errors)) = EngineConfig::from_toml(&without_sampling) else {
        panic!("OTLP input needs sampling");
    };
    assert!(
        errors
            .iter()
            .any(|error| error.starts_with("pipelines.payments.sampling:"))
            && errors
                .iter()
                .any(|error| error.starts_with("pipelines.payments.decisions_topic:")),
        "{errors:?}"
    );
}

#[test]
fn config_lineage_pipelines_repartition_by_trace_and_own_their_span_topics() {
    let lineage = r#"
application_id = "commerce"

[kafka]
"bootstrap.servers" = "localhost:9092"

[pipelines.commerce]
input_topics = ["orders"]
span_topics = ["spans"]
repartition_by = "trace_id"
output_topic = "orders-enriched"

[pipelines.commerce.decoder]
format = "cloudevents"

[pipelines.commerce.lineage]
"#;
    let config = EngineConfig::from_toml(lineage).unwrap();
    let pipeline = &config.pipelines["commerce"];
    assert_eq!(
        pipeline.lineage_topic().as_deref(),
        Some("orders-enriched-lineage")
    );
    assert_eq!(
        crate::runtime::pipeline::declared_store_names_of("commerce", pipeline),
        vec!["commerce-dedupe", "commerce-lineage"],
        "dedupe, then lineage"
    );

    let by_event = lineage.replace(
        "repartition_by = \"trace_id\"",
        "repartition_by = \"event_id\"",
    );
    let Err(EngineError::Config(errors)) = EngineConfig::from_toml(&by_event) else {
        panic!("lineage needs trace-id partitioning");
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("pipelines.commerce.repartition_by:"),
        "{errors:?}"
    );

    let shared_spans = format!(
        "{lineage}\n[pipelines.other]\ninput_topics = [\"spans\"]\noutput_topic = \"x\"\n[pipelines.other.decoder]\nformat = \"cloudevents\"\n"
    );
    let Err(EngineError::Config(errors)) = EngineConfig::from_toml(&shared_spans) else {
        panic!("a span topic is read by one pipeline");
    };
    assert!(
        errors
            .iter()
            .any(|error| error.contains("`spans` is already read by pipeline")),
        "{errors:?}"
    );

    let without_lineage = MINIMAL.replace(
        "output_topic = \"payments-deduped\"",
        "output_topic = \"payments-deduped\"\nspan_topics = [\"s\"]\nlineage_topic = \"l\"",
    );
    let Err(EngineError::Config(errors)) = EngineConfig::from_toml(&without_lineage) else {
        panic!("span_topics and lineage_topic need lineage");
    };
    assert!(
        errors
            .iter()
            .any(|error| error.starts_with("pipelines.payments.span_topics:"))
            && errors
                .iter()
                .any(|error| error.starts_with("pipelines.payments.lineage_topic:")),
        "{errors:?}"
    );
}

#[test]
fn config_openlineage_section_gets_named_defaults() {
    assert!(EngineConfig::from_toml(MINIMAL)
        .unwrap()
        .openlineage
        .is_none());
    let config =
        EngineConfig::from_toml(&format!("{MINIMAL}\n[openlineage]\ntopic = \"lineage\"\n"))
            .unwrap();
    let openlineage = config.openlineage.expect("the section enables it");
    assert_eq!(openlineage.topic, "lineage");
    assert_eq!(openlineage.namespace, default_openlineage_namespace());
    assert_eq!(
        openlineage.running_interval_ms,
        default_openlineage_running_interval_ms()
    );
}

#[test]
fn config_openlineage_problems_name_their_keys() {
    let text = format!(
        "{MINIMAL}\n[openlineage]\ntopic = \"payments-deduped\"\nnamespace = \"\"\nrunning_interval_ms = 0\n"
    );
    let error = EngineConfig::from_toml(&text).unwrap_err().to_string();
    assert!(
        error.contains("openlineage.namespace: must not be empty"),
        "{error}"
    );
    assert!(
        error.contains("openlineage.running_interval_ms: must be positive"),
        "{error}"
    );
    assert!(
        error.contains("openlineage.topic: `payments-deduped` is written by pipeline `payments`"),
        "{error}"
    );
    let text = format!("{MINIMAL}\n[openlineage]\ntopic = \"lineage\"\nport = 1\n");
    let error = EngineConfig::from_toml(&text).unwrap_err().to_string();
    assert!(
        error.contains("openlineage") && error.contains("port"),
        "{error}"
    );
}

#[test]
fn config_http_advertised_address_defaults_to_the_listen_address_and_must_be_host_port() {
    let config = EngineConfig::from_toml(MINIMAL).unwrap();
    assert_eq!(config.http.advertised_address(), "127.0.0.1:9464");
    let with = |address: &str| {
        MINIMAL.replace(
            "[kafka]",
            &format!("[http]\nlisten_address = \"0.0.0.0:9464\"\nadvertised_address = \"{address}\"\n\n[kafka]"),
        )
    };
    let config = EngineConfig::from_toml(&with("node-3.breadcrumb:9464")).unwrap();
    assert_eq!(config.http.advertised_address(), "node-3.breadcrumb:9464");
    for bad in [
        "node-3",
        "node-3:http",
        ":9464",
        "http://node-3:9464",
        "node 3:9464",
    ] {
        let error = EngineConfig::from_toml(&with(bad)).unwrap_err().to_string();
        assert!(error.contains("http.advertised_address"), "{bad}: {error}");
    }
}
