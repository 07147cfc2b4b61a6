//! The Avro decoder against records encoded by `apache-avro` (an independent encoder).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use apache_avro::types::{Record, Value};
use apache_avro::{to_avro_datum, Schema};
use proptest::prelude::*;

use super::*;
use crate::{AttributeValue, AvroConfig, AvroWireFormat, JsonConfig, RegistryConfig, TimeFallback};

const ORDER_SCHEMA: &str = r#"{
  "type": "record", "name": "Order", "namespace": "shop",
  "fields": [
    {"name": "order", "type": {"type": "record", "name": "Body", "fields": [
      {"name": "id", "type": "string"},
      {"name": "account", "type": ["null", "string"], "default": null},
      {"name": "amount", "type": "double"}
    ]}},
    {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "sequence", "type": "long"},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
    {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "Line",
      "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}]}}},
    {"name": "labels", "type": {"type": "map", "values": "string"}},
    {"name": "traceparent", "type": ["null", "string"], "default": null},
    {"name": "blob", "type": "bytes"},
    {"name": "urgent", "type": "boolean"}
  ]
}"#;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// An in-memory registry that counts lookups and can be switched off.
#[derive(Debug, Default)]
struct TestRegistry {
    schemas: HashMap<u32, Fetched>,
    fetches: AtomicUsize,
    down: AtomicBool,
}

impl SchemaSource for TestRegistry {
    fn fetch(&self, id: u32) -> Result<Fetched, Unavailable> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(Unavailable("connection refused".into()));
        }
        Ok(self.schemas.get(&id).cloned().unwrap_or(Fetched::Unknown))
    }
}

fn fields() -> JsonConfig {
    let mut fields = JsonConfig::new("/order/id");
    fields.subject_path = Some("/order/account".into());
    fields.time_path = Some("/placed_at".into());
    fields.sequence_path = Some("/sequence".into());
    fields.type_path = Some("/status".into());
    fields.traceparent_path = Some("/traceparent".into());
    fields
        .attributes
        .insert("amount".into(), "/order/amount".into());
    fields
        .attributes
        .insert("first_sku".into(), "/lines/0/sku".into());
    fields
        .attributes
        .insert("third_qty".into(), "/lines/2/qty".into());
    fields
        .attributes
        .insert("region".into(), "/labels/region".into());
    fields.attributes.insert("urgent".into(), "/urgent".into());
    fields.time_fallback = TimeFallback::Reject;
    fields
}

fn config(fields: JsonConfig) -> AvroConfig {
    AvroConfig {
        wire_format: AvroWireFormat::Confluent,
        registry: RegistryConfig {
            url: Some("http://unused".into()),
            directory: None,
            schema_file: None,
            username: None,
            password_file: None,
            request_timeout_ms: 1000,
            attempts: 1,
            retry_backoff_ms: 1,
            max_cached_schemas: 4,
        },
        fields,
    }
}

fn order(account: Option<&str>, line_count: usize) -> Value {
    let schema = Schema::parse_str(ORDER_SCHEMA).unwrap();
    let Schema::Record(root) = &schema else {
        unreachable!()
    };
    let body_schema = &root.fields[0].schema;
    let mut body = Record::new(body_schema).unwrap();
    body.put("id", "order-17");
    body.put(
        "account",
        match account {
            Some(account) => Value::Union(1, Box::new(Value::String(account.into()))),
            None => Value::Union(0, Box::new(Value::Null)),
        },
    );
    body.put("amount", 12.5f64);
    let mut record = Record::new(&schema).unwrap();
    record.put("order", body);
    record.put("placed_at", Value::TimestampMicros(1_714_564_800_250_999));
    record.put("sequence", 42i64);
    record.put("status", Value::Enum(1, "PAID".into()));
    let lines = (0..line_count)
        .map(|index| {
            Value::Record(vec![
                ("sku".into(), Value::String(format!("sku-{index}"))),
                ("qty".into(), Value::Int(index as i32 * 10)),
            ])
        })
        .collect();
    record.put("lines", Value::Array(lines));
    record.put(
        "labels",
        Value::Map(HashMap::from([
            ("env".to_owned(), Value::String("prod".into())),
            ("region".to_owned(), Value::String("eu-west".into())),
        ])),
    );
    record.put(
        "traceparent",
        Value::Union(1, Box::new(Value::String(TRACEPARENT.into()))),
    );
    record.put("blob", Value::Bytes(vec![0, 159, 146, 150]));
    record.put("urgent", true);
    record.into()
}

fn encode(value: Value) -> Vec<u8> {
    let schema = Schema::parse_str(ORDER_SCHEMA).unwrap();
    to_avro_datum(&schema, value).unwrap()
}

fn framed(id: u32, body: &[u8]) -> Vec<u8> {
    let mut value = vec![0];
    value.extend_from_slice(&id.to_be_bytes());
    value.extend_from_slice(body);
    value
}

fn registry() -> Arc<TestRegistry> {
    Arc::new(TestRegistry {
        schemas: HashMap::from([
            (1, Fetched::Avro(ORDER_SCHEMA.into())),
            (2, Fetched::NotAvro("PROTOBUF".into())),
            (3, Fetched::Avro("{not a schema".into())),
        ]),
        ..TestRegistry::default()
    })
}

fn record(value: &[u8]) -> RawRecord<'_> {
    RawRecord {
        topic: "orders",
        partition: 0,
        offset: 7,
        timestamp_ms: Some(1),
        key: None,
        value: Some(value),
        headers: &[],
    }
}

fn decode(decoder: &AvroDecoder, value: &[u8]) -> Result<Envelope, DecodeError> {
    let mut envelope = Envelope::default();
    decoder.decode(&record(value), &mut envelope)?;
    Ok(envelope)
}

#[test]
fn reads_nested_union_enum_array_and_map_paths() {
    let source = registry();
    let decoder = AvroDecoder::with_source(&config(fields()), source.clone());
    let envelope = decode(&decoder, &framed(1, &encode(order(Some("acct-9"), 3)))).unwrap();
    assert_eq!(envelope.id, "order-17");
    assert_eq!(envelope.subject, "acct-9");
    // timestamp-micros truncated to milliseconds.
    assert_eq!(envelope.event_time_ms, 1_714_564_800_250);
    assert_eq!(envelope.sequence, Some(42));
    assert_eq!(envelope.event_type, "PAID");
    assert_eq!(
        envelope.trace.unwrap().trace_id_hex(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        envelope.attributes,
        vec![
            ("amount".to_owned(), AttributeValue::Float(12.5)),
            (
                "first_sku".to_owned(),
                AttributeValue::String("sku-0".into())
            ),
            (
                "region".to_owned(),
                AttributeValue::String("eu-west".into())
            ),
            ("third_qty".to_owned(), AttributeValue::Integer(20)),
            ("urgent".to_owned(), AttributeValue::Boolean(true)),
        ]
    );
    // A null union branch is an absent field; a missing array item is an absent attribute.
    let envelope = decode(&decoder, &framed(1, &encode(order(None, 1)))).unwrap();
    assert_eq!(envelope.subject, "");
    assert!(!envelope
        .attributes
        .iter()
        .any(|(name, _)| name == "third_qty"));
    // The schema was fetched once for both records.
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
}

#[test]
fn wire_header_problems_are_rejections_not_panics() {
    let decoder = AvroDecoder::with_source(&config(fields()), registry());
    for short in [&[][..], &[0][..], &[0, 0, 0, 1][..]] {
        let error = decode(&decoder, short).unwrap_err();
        assert_eq!(error.class, DecodeErrorClass::InvalidAvro, "{short:?}");
        assert!(error.message.contains("wire header"), "{}", error.message);
    }
    let error = decode(&decoder, &[1, 0, 0, 0, 1, 2]).unwrap_err();
    assert_eq!(error.class, DecodeErrorClass::UnsupportedFormat);
    let body = encode(order(Some("a"), 2));
    assert_eq!(
        decode(&decoder, &framed(99, &body)).unwrap_err().class,
        DecodeErrorClass::UnknownSchema
    );
    assert_eq!(
        decode(&decoder, &framed(2, &body)).unwrap_err().class,
        DecodeErrorClass::UnsupportedFormat
    );
    assert_eq!(
        decode(&decoder, &framed(3, &body)).unwrap_err().class,
        DecodeErrorClass::UnknownSchema
    );
}

#[test]
fn malformed_bodies_are_invalid_avro() {
    let decoder = AvroDecoder::with_source(&config(fields()), registry());
    let body = encode(order(Some("acct"), 3));
    // Every truncation fails cleanly.
    for cut in 0..body.len() {
        let error = decode(&decoder, &framed(1, &body[..cut])).unwrap_err();
        assert!(
            matches!(
                error.class,
                DecodeErrorClass::InvalidAvro | DecodeErrorClass::InvalidUtf8
            ),
            "cut at {cut}: {error}"
        );
    }
    let mut trailing = body.clone();
    trailing.push(0);
    let error = decode(&decoder, &framed(1, &trailing)).unwrap_err();
    assert_eq!(error.class, DecodeErrorClass::InvalidAvro);
    assert!(error.message.contains("left after the datum"), "{error}");
}

#[test]
fn an_unavailable_registry_is_retryable_and_not_cached() {
    let source = registry();
    let decoder = AvroDecoder::with_source(&config(fields()), source.clone());
    let value = framed(1, &encode(order(Some("acct"), 1)));
    source.down.store(true, Ordering::SeqCst);
    let error = decode(&decoder, &value).unwrap_err();
    assert_eq!(error.class, DecodeErrorClass::SchemaUnavailable);
    assert!(!DecodeErrorClass::ALL.contains(&DecodeErrorClass::SchemaUnavailable));
    source.down.store(false, Ordering::SeqCst);
    assert_eq!(decode(&decoder, &value).unwrap().id, "order-17");
}

#[test]
fn the_schema_cache_is_bounded() {
    let source = registry();
    let decoder = AvroDecoder::with_source(&config(fields()), source.clone());
    let body = encode(order(Some("a"), 1));
    for id in 10..30 {
        let _ = decode(&decoder, &framed(id, &body));
    }
    assert!(decoder.cache.read().unwrap().len() <= 4);
    // The plan of a real schema survives a flood of unknown ids.
    decode(&decoder, &framed(1, &body)).unwrap();
    for id in 30..60 {
        let _ = decode(&decoder, &framed(id, &body));
    }
    let fetches = source.fetches.load(Ordering::SeqCst);
    decode(&decoder, &framed(1, &body)).unwrap();
    assert_eq!(source.fetches.load(Ordering::SeqCst), fetches);
}

#[test]
fn raw_bodies_use_the_configured_schema_file() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("order.avsc");
    std::fs::write(&path, ORDER_SCHEMA).unwrap();
    let mut config = config(fields());
    config.wire_format = AvroWireFormat::Raw;
    config.registry.url = None;
    config.registry.schema_file = Some(path.to_str().unwrap().to_owned());
    let decoder = AvroDecoder::from_config(&config).unwrap();
    let envelope = decode(&decoder, &encode(order(Some("acct-1"), 0))).unwrap();
    assert_eq!(envelope.subject, "acct-1");

    config.registry.schema_file = Some("/nonexistent.avsc".into());
    let error = AvroDecoder::from_config(&config).unwrap_err();
    assert!(
        error.to_string().starts_with("registry.schema_file:"),
        "{error}"
    );
}

#[test]
fn schema_directory_serves_ids_from_file_names() {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("5-order.avsc"), ORDER_SCHEMA).unwrap();
    let mut config = config(fields());
    config.registry.url = None;
    config.registry.directory = Some(directory.path().to_str().unwrap().to_owned());
    let decoder = AvroDecoder::from_config(&config).unwrap();
    let body = encode(order(Some("acct-5"), 1));
    assert_eq!(
        decode(&decoder, &framed(5, &body)).unwrap().subject,
        "acct-5"
    );
    assert_eq!(
        decode(&decoder, &framed(6, &body)).unwrap_err().class,
        DecodeErrorClass::UnknownSchema
    );
}

#[test]
fn recursive_schemas_are_bounded_in_depth() {
    let schema_text = r#"{"type":"record","name":"Chain","fields":[
        {"name":"id","type":"string"},
        {"name":"next","type":["null","Chain"]}]}"#;
    let source = Arc::new(TestRegistry {
        schemas: HashMap::from([(1, Fetched::Avro(schema_text.into()))]),
        ..TestRegistry::default()
    });
    let mut fields = JsonConfig::new("/next/next/id");
    fields.time_fallback = TimeFallback::RecordTimestamp;
    let decoder = AvroDecoder::with_source(&config(fields), source);
    // id "a" -> next -> id "b" -> next -> id "c" -> null
    let mut body = Vec::new();
    for id in ["a", "b", "c"] {
        body.extend_from_slice(&[2, id.as_bytes()[0]]);
        body.push(if id == "c" { 0 } else { 2 });
    }
    assert_eq!(decode(&decoder, &framed(1, &body)).unwrap().id, "c");
    // A chain deeper than the limit is refused, not a stack overflow.
    let mut deep = Vec::new();
    for _ in 0..10_000 {
        deep.extend_from_slice(&[2, b'x', 2]);
    }
    deep.extend_from_slice(&[2, b'x', 0]);
    let error = decode(&decoder, &framed(1, &deep)).unwrap_err();
    assert_eq!(error.class, DecodeErrorClass::InvalidAvro);
}

proptest! {
    /// Whatever the values, the fields read equal what apache-avro wrote.
    #[test]
    fn reads_back_what_apache_avro_wrote(
        account in proptest::option::of("[a-z0-9\u{e9}]{0,12}"),
        line_count in 0usize..6,
    ) {
        let decoder = AvroDecoder::with_source(&config(fields()), registry());
        let envelope = decode(&decoder, &framed(1, &encode(order(account.as_deref(), line_count)))).unwrap();
        prop_assert_eq!(envelope.subject, account.unwrap_or_default());
        let third = envelope.attributes.iter().find(|(name, _)| name == "third_qty").cloned();
        prop_assert_eq!(third.is_some(), line_count >= 3);
    }

    /// Noise after a valid header never panics.
    #[test]
    fn noise_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let decoder = AvroDecoder::with_source(&config(fields()), registry());
        let _ = decode(&decoder, &framed(1, &body));
    }
}
