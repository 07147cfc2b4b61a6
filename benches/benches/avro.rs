//! Avro decoding into the envelope: breadcrumb's schema-compiled single-pass reader against the
//! usual approach, measured in the same run on the same records.
//!
//! Records: a 14-field `Order` (a nested customer record, an optional coupon, an array of three
//! line records, a map of four labels, an enum, a timestamp-micros), about 330 bytes each in the
//! Confluent wire format, encoded by apache-avro. The envelope takes the id, event time, subject,
//! sequence, type and two attributes, one of them inside the array.
//!
//! - `avro/breadcrumb_reader`: [`AvroDecoder`], schema fetched once and compiled against the
//!   configured paths; each record is walked once, skipping what no path needs.
//! - `avro/apache_avro_value_tree` (baseline): `apache_avro::from_avro_datum` into a `Value`
//!   tree, then the same fields read from the tree into the same envelope.
//!
//! Figures are reported by criterion (elements/s); nothing is asserted.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use apache_avro::types::{Record, Value};
use apache_avro::{from_avro_datum, to_avro_datum, Schema};
use breadcrumb_schemas::decode::avro::{AvroDecoder, Fetched, SchemaSource, Unavailable};
use breadcrumb_schemas::{
    AttributeValue, AvroConfig, AvroWireFormat, Decoder, Envelope, JsonConfig, RawRecord,
    RegistryConfig, TimeFallback,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SCHEMA: &str = r#"{
  "type": "record", "name": "Order", "namespace": "shop",
  "fields": [
    {"name": "id", "type": "string"},
    {"name": "sequence", "type": "long"},
    {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID", "SHIPPED"]}},
    {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
      {"name": "account", "type": "string"},
      {"name": "name", "type": "string"},
      {"name": "tier", "type": "int"}
    ]}},
    {"name": "coupon", "type": ["null", "string"], "default": null},
    {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "Line", "fields": [
      {"name": "sku", "type": "string"},
      {"name": "qty", "type": "int"},
      {"name": "price_cents", "type": "long"}
    ]}}},
    {"name": "labels", "type": {"type": "map", "values": "string"}},
    {"name": "total_cents", "type": "long"},
    {"name": "currency", "type": "string"},
    {"name": "note", "type": "string"},
    {"name": "gift", "type": "boolean"},
    {"name": "weight_kg", "type": "double"},
    {"name": "channel", "type": "string"}
  ]
}"#;

const RECORDS: usize = 10_000;
const SCHEMA_ID: u32 = 42;

#[derive(Debug)]
struct OneSchema;

impl SchemaSource for OneSchema {
    fn fetch(&self, id: u32) -> Result<Fetched, Unavailable> {
        Ok(if id == SCHEMA_ID {
            Fetched::Avro(SCHEMA.to_owned())
        } else {
            Fetched::Unknown
        })
    }
}

fn encode_records(schema: &Schema) -> Vec<Vec<u8>> {
    let Schema::Record(root) = schema else {
        unreachable!()
    };
    let customer_schema = &root.fields[4].schema;
    (0..RECORDS)
        .map(|index| {
            let mut customer = Record::new(customer_schema).unwrap();
            customer.put("account", format!("acct-{:08}", index % 5_000));
            customer.put("name", "Ada Lovelace");
            customer.put("tier", (index % 3) as i32);
            let mut record = Record::new(schema).unwrap();
            record.put("id", format!("order-{index:012}"));
            record.put("sequence", index as i64);
            record.put(
                "placed_at",
                Value::TimestampMicros(1_790_000_000_000_000 + index as i64 * 1_000),
            );
            record.put("status", Value::Enum(1, "PAID".into()));
            record.put("customer", customer);
            record.put("coupon", Value::Union(0, Box::new(Value::Null)));
            record.put(
                "lines",
                Value::Array(
                    (0..3)
                        .map(|line| {
                            Value::Record(vec![
                                ("sku".into(), Value::String(format!("sku-{line}-{index}"))),
                                ("qty".into(), Value::Int(line + 1)),
                                ("price_cents".into(), Value::Long(1_999)),
                            ])
                        })
                        .collect(),
                ),
            );
            record.put(
                "labels",
                Value::Map(HashMap::from([
                    ("region".to_owned(), Value::String("eu-west-1".into())),
                    ("store".to_owned(), Value::String("berlin-3".into())),
                    ("campaign".to_owned(), Value::String("winter".into())),
                    ("source".to_owned(), Value::String("app".into())),
                ])),
            );
            record.put("total_cents", 5_997i64);
            record.put("currency", "EUR");
            record.put("note", "leave at the door, ring twice");
            record.put("gift", false);
            record.put("weight_kg", 1.25f64);
            record.put("channel", "mobile");
            let body = to_avro_datum(schema, record).unwrap();
            let mut value = vec![0];
            value.extend_from_slice(&SCHEMA_ID.to_be_bytes());
            value.extend_from_slice(&body);
            value
        })
        .collect()
}

fn config() -> AvroConfig {
    let mut fields = JsonConfig::new("/id");
    fields.time_path = Some("/placed_at".into());
    fields.subject_path = Some("/customer/account".into());
    fields.sequence_path = Some("/sequence".into());
    fields.type_path = Some("/status".into());
    fields
        .attributes
        .insert("total_cents".into(), "/total_cents".into());
    fields
        .attributes
        .insert("first_sku".into(), "/lines/0/sku".into());
    fields.time_fallback = TimeFallback::Reject;
    AvroConfig {
        wire_format: AvroWireFormat::Confluent,
        registry: RegistryConfig {
            url: Some("http://unused".into()),
            directory: None,
            schema_file: None,
            username: None,
            password_file: None,
            request_timeout_ms: 1_000,
            attempts: 1,
            retry_backoff_ms: 1,
            max_cached_schemas: 16,
        },
        fields,
    }
}

fn record(value: &[u8]) -> RawRecord<'_> {
    RawRecord {
        topic: "orders",
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: None,
        value: Some(value),
        headers: &[],
    }
}

fn field<'a>(fields: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    fields
        .iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| value)
}

/// The baseline: a full value tree, then the same envelope fields read from it.
fn decode_with_value_tree(schema: &Schema, value: &[u8], out: &mut Envelope) {
    let tree = from_avro_datum(schema, &mut &value[5..], None).unwrap();
    let Value::Record(fields) = tree else {
        panic!("a record")
    };
    if let Some(Value::String(id)) = field(&fields, "id") {
        out.id.push_str(id);
    }
    if let Some(Value::TimestampMicros(micros)) = field(&fields, "placed_at") {
        out.event_time_ms = micros.div_euclid(1_000);
    }
    if let Some(Value::Record(customer)) = field(&fields, "customer") {
        if let Some(Value::String(account)) = field(customer, "account") {
            out.subject.push_str(account);
        }
    }
    if let Some(Value::Long(sequence)) = field(&fields, "sequence") {
        out.sequence = Some(*sequence as u64);
    }
    if let Some(Value::Enum(_, symbol)) = field(&fields, "status") {
        out.event_type.push_str(symbol);
    }
    if let Some(Value::Array(lines)) = field(&fields, "lines") {
        if let Some(Value::Record(line)) = lines.first() {
            if let Some(Value::String(sku)) = field(line, "sku") {
                out.attributes
                    .push(("first_sku".into(), AttributeValue::String(sku.clone())));
            }
        }
    }
    if let Some(Value::Long(total)) = field(&fields, "total_cents") {
        out.attributes
            .push(("total_cents".into(), AttributeValue::Integer(*total)));
    }
}

fn bench(criterion: &mut Criterion) {
    let schema = Schema::parse_str(SCHEMA).unwrap();
    let values = encode_records(&schema);
    let mean_bytes = values.iter().map(Vec::len).sum::<usize>() / values.len();
    println!("avro: {RECORDS} records, {mean_bytes} bytes each on average");
    let decoder = AvroDecoder::with_source(&config(), Arc::new(OneSchema));

    // Both paths fill the same envelope.
    let mut ours = Envelope::default();
    decoder.decode(&record(&values[7]), &mut ours).unwrap();
    let mut theirs = Envelope::default();
    decode_with_value_tree(&schema, &values[7], &mut theirs);
    assert_eq!(ours.id, theirs.id);
    assert_eq!(ours.subject, theirs.subject);
    assert_eq!(ours.event_time_ms, theirs.event_time_ms);
    assert_eq!(ours.attributes.len(), theirs.attributes.len());

    let mut group = criterion.benchmark_group("avro");
    group.throughput(Throughput::Elements(RECORDS as u64));
    let mut envelope = Envelope::default();
    group.bench_function("breadcrumb_reader", |bencher| {
        bencher.iter(|| {
            for value in &values {
                envelope.clear();
                decoder.decode(&record(value), &mut envelope).unwrap();
                black_box(&envelope);
            }
        })
    });
    group.bench_function("apache_avro_value_tree", |bencher| {
        bencher.iter(|| {
            for value in &values {
                envelope.clear();
                decode_with_value_tree(&schema, value, &mut envelope);
                black_box(&envelope);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
