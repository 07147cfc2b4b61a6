//! breadcrumb's own records (ordering gap records; decisions, lineage and ledger records as
//! they arrive) in Avro: the schemas in `schemas/avro/`, and an encoder from the records' JSON
//! form to the Confluent wire format under an id the registry assigned.

use apache_avro::types::Value;
use apache_avro::Schema;

use crate::decode::avro::WIRE_HEADER_BYTES;
use crate::error::{SchemasError, SchemasResult};

/// Gap records of the ordering operator.
pub const ORDERING_GAP_SCHEMA: &str = include_str!("../avro/ordering-gap.avsc");

/// Decision records of the tail-sampling operator.
pub const SAMPLING_DECISION_SCHEMA: &str = include_str!("../avro/sampling-decision.avsc");

/// Edge records of the lineage operator.
pub const LINEAGE_EDGE_SCHEMA: &str = include_str!("../avro/lineage-edge.avsc");

/// Encodes JSON records of one schema as Avro in the Confluent wire format.
#[derive(Debug, Clone)]
pub struct AvroRecordEncoder {
    schema: Schema,
    header: [u8; WIRE_HEADER_BYTES],
}

impl AvroRecordEncoder {
    /// `schema_id` is the id the registry gave `schema_text`.
    pub fn new(schema_text: &str, schema_id: u32) -> SchemasResult<Self> {
        let schema = Schema::parse_str(schema_text).map_err(|error| SchemasError::Config {
            key: "schema".into(),
            message: format!("does not parse: {error}"),
        })?;
        let mut header = [0; WIRE_HEADER_BYTES];
        header[1..].copy_from_slice(&schema_id.to_be_bytes());
        Ok(Self { schema, header })
    }

    /// Appends the wire-format encoding of `json` (one record of the schema) to `out`. An error
    /// means the JSON does not fit the schema: a bug in breadcrumb, reported, never a panic.
    pub fn encode_json(&self, json: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let document: serde_json::Value =
            serde_json::from_slice(json).map_err(|error| format!("not JSON: {error}"))?;
        let value = Value::from(document)
            .resolve(&self.schema)
            .map_err(|error| format!("does not fit the schema: {error}"))?;
        let body = apache_avro::to_avro_datum(&self.schema, value)
            .map_err(|error| format!("cannot be encoded: {error}"))?;
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::from_avro_datum;

    const GAP: &str = r#"{"type":"breadcrumb.ordering.gap","pipeline":"payments","key":{"subject":"account-7"},"epoch":null,"from_sequence":5,"to_sequence":7,"missing":3,"waited_ms":60000,"reason":"event_time_timeout","declared_at_ms":1700000060000,"source":{"topic":"payments","partition":0,"offset":42}}"#;

    #[test]
    fn gap_records_encode_and_read_back_with_apache_avro() {
        let encoder = AvroRecordEncoder::new(ORDERING_GAP_SCHEMA, 77).unwrap();
        let mut out = Vec::new();
        encoder.encode_json(GAP.as_bytes(), &mut out).unwrap();
        assert_eq!(&out[..5], &[0, 0, 0, 0, 77]);
        let schema = Schema::parse_str(ORDERING_GAP_SCHEMA).unwrap();
        let value = from_avro_datum(&schema, &mut &out[5..], None).unwrap();
        let Value::Record(fields) = value else {
            panic!("a record")
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(field, _)| field == name)
                .map(|(_, value)| value.clone())
                .unwrap()
        };
        assert_eq!(field("from_sequence"), Value::Long(5));
        assert_eq!(field("reason"), Value::Enum(0, "event_time_timeout".into()));
        assert_eq!(
            field("declared_at_ms"),
            Value::TimestampMillis(1_700_000_060_000)
        );
        assert_eq!(field("epoch"), Value::Union(0, Box::new(Value::Null)));
    }

    /// As the lineage operator writes them (`operators/src/lineage/format.rs`): a joined parent
    /// edge and an orphan span edge with nulls.
    const PARENT_EDGE: &str = r#"{"type":"breadcrumb.lineage.edge","pipeline":"orders","edge_kind":"parent","event_id":"invoice-1","event_type":"invoice.issued","event_source":"billing","copy_topic":null,"copy_partition":null,"copy_offset":null,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","service":"billing","operation":"POST /invoices","root_span_id":"1111111111111111","root_service":"gateway","parent_event_id":"payment-1","ancestor_event_ids":["payment-1","order-1"],"orphan_reason":null,"resolution":"complete","event_time_ms":1700000000000,"joined_at_ms":1700000001000,"waited_ms":1000,"source":{"topic":"events","partition":3,"offset":42}}"#;
    const ORPHAN_EDGE: &str = r#"{"type":"breadcrumb.lineage.edge","pipeline":"orders","edge_kind":"span","event_id":"e-9","event_type":"","event_source":"","copy_topic":"orders-out","copy_partition":1,"copy_offset":7,"trace_id":null,"span_id":null,"service":null,"operation":null,"root_span_id":null,"root_service":null,"parent_event_id":null,"ancestor_event_ids":[],"orphan_reason":"no_trace_context","resolution":"window","event_time_ms":5,"joined_at_ms":6,"waited_ms":1,"source":{"topic":"events","partition":0,"offset":0}}"#;

    #[test]
    fn lineage_edges_encode_and_read_back_with_apache_avro() {
        let encoder = AvroRecordEncoder::new(LINEAGE_EDGE_SCHEMA, 9).unwrap();
        let schema = Schema::parse_str(LINEAGE_EDGE_SCHEMA).unwrap();
        let read = |json: &str| {
            let mut out = Vec::new();
            encoder.encode_json(json.as_bytes(), &mut out).unwrap();
            assert_eq!(&out[..5], &[0, 0, 0, 0, 9]);
            let Value::Record(fields) = from_avro_datum(&schema, &mut &out[5..], None).unwrap()
            else {
                panic!("a record")
            };
            fields
        };
        let field = |fields: &[(String, Value)], name: &str| {
            fields
                .iter()
                .find(|(field, _)| field == name)
                .map(|(_, value)| value.clone())
                .unwrap()
        };
        let parent = read(PARENT_EDGE);
        assert_eq!(field(&parent, "edge_kind"), Value::Enum(1, "parent".into()));
        assert_eq!(
            field(&parent, "ancestor_event_ids"),
            Value::Array(vec![
                Value::String("payment-1".into()),
                Value::String("order-1".into())
            ])
        );
        assert_eq!(
            field(&parent, "root_service"),
            Value::Union(1, Box::new(Value::String("gateway".into())))
        );
        assert_eq!(
            field(&parent, "orphan_reason"),
            Value::Union(0, Box::new(Value::Null))
        );
        assert_eq!(
            field(&parent, "joined_at_ms"),
            Value::TimestampMillis(1_700_000_001_000)
        );
        let orphan = read(ORPHAN_EDGE);
        assert_eq!(
            field(&orphan, "orphan_reason"),
            Value::Union(1, Box::new(Value::Enum(0, "no_trace_context".into())))
        );
        assert_eq!(
            field(&orphan, "copy_partition"),
            Value::Union(1, Box::new(Value::Int(1)))
        );
        assert_eq!(
            field(&orphan, "trace_id"),
            Value::Union(0, Box::new(Value::Null))
        );
    }

    #[test]
    fn decision_records_encode_and_read_back_with_apache_avro() {
        let decision = r#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","decision":"keep","policy":"errors","span_count":5,"duration_ms":1250,"completion":"quiet_period","first_seen_ms":1700000000000,"decided_at_ms":1700000012000,"pipeline":"traces"}"#;
        let encoder = AvroRecordEncoder::new(SAMPLING_DECISION_SCHEMA, 9).unwrap();
        let mut out = Vec::new();
        encoder.encode_json(decision.as_bytes(), &mut out).unwrap();
        let schema = Schema::parse_str(SAMPLING_DECISION_SCHEMA).unwrap();
        let Value::Record(fields) = from_avro_datum(&schema, &mut &out[5..], None).unwrap() else {
            panic!("a record")
        };
        assert_eq!(fields[1].1, Value::Enum(0, "keep".into()));
        assert_eq!(fields[3].1, Value::Long(5));
        assert_eq!(fields[5].1, Value::Enum(0, "quiet_period".into()));
    }

    #[test]
    fn a_record_that_does_not_fit_is_an_error_not_a_panic() {
        let encoder = AvroRecordEncoder::new(ORDERING_GAP_SCHEMA, 1).unwrap();
        let mut out = Vec::new();
        assert!(encoder.encode_json(b"{\"type\":1}", &mut out).is_err());
        assert!(encoder.encode_json(b"not json", &mut out).is_err());
        assert!(out.is_empty());
    }
}
