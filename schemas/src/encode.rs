//! breadcrumb's own records (ordering gap records; decisions, lineage and ledger records as
//! they arrive) in Avro: the schemas in `schemas/avro/`, and an encoder from the records' JSON
//! form to the Confluent wire format under an id the registry assigned.

use apache_avro::types::Value;
use apache_avro::Schema;

use crate::decode::avro::WIRE_HEADER_BYTES;
use crate::error::{SchemasError, SchemasResult};

/// Gap records of the ordering operator.
pub const ORDERING_GAP_SCHEMA: &str = include_str!("../avro/ordering-gap.avsc");

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

    #[test]
    fn a_record_that_does_not_fit_is_an_error_not_a_panic() {
        let encoder = AvroRecordEncoder::new(ORDERING_GAP_SCHEMA, 1).unwrap();
        let mut out = Vec::new();
        assert!(encoder.encode_json(b"{\"type\":1}", &mut out).is_err());
        assert!(encoder.encode_json(b"not json", &mut out).is_err());
        assert!(out.is_empty());
    }
}
