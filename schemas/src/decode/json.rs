//! Plain JSON values, with the envelope fields read at configured JSON pointers.

use smallvec::SmallVec;

use super::common::{check_size, invalid_json, value_as_str, Scalar};
use super::config::JsonConfig;
use super::fields::FieldMap;
use super::pointer::{CaptureError, PathTree};
use super::Decoder;
use crate::{DecodeError, DecodeErrorClass, Envelope, RawRecord};

/// Decodes JSON values by reading the configured JSON pointers in one pass over the value.
#[derive(Debug)]
pub struct JsonDecoder {
    tree: PathTree,
    fields: FieldMap,
}

impl JsonDecoder {
    /// Builds the decoder. `config` should have passed [`crate::DecoderConfig::validate`]; a
    /// pointer not starting with `/` simply never matches.
    pub fn new(config: &JsonConfig) -> Self {
        let mut tree = PathTree::default();
        let fields = FieldMap::new(config, &mut tree);
        Self { tree, fields }
    }
}

impl Decoder for JsonDecoder {
    fn decode(&self, record: &RawRecord<'_>, out: &mut Envelope) -> Result<(), DecodeError> {
        let value = record.value.ok_or_else(|| {
            DecodeError::new(DecodeErrorClass::MissingValue, "record has no value")
        })?;
        check_size(value, self.fields.max_value_bytes())?;
        let text = value_as_str(value)?;

        let mut slots: SmallVec<[Scalar<'_>; 16]> =
            SmallVec::from_elem(Scalar::Missing, self.tree.slot_count());
        self.tree
            .capture(text, &mut slots)
            .map_err(|error| match error {
                CaptureError::Json(error) => invalid_json(&error),
                CaptureError::DuplicateKey(pointer) => DecodeError::new(
                    DecodeErrorClass::InvalidJson,
                    format!("key `{pointer}` appears more than once"),
                ),
            })?;
        self.fields.fill(record, &slots, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AttributeValue, DecoderConfig, TimeFallback, TraceContext};

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const OTHER_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

    fn record<'a>(
        headers: &'a [(&'a str, Option<&'a [u8]>)],
        value: Option<&'a [u8]>,
    ) -> RawRecord<'a> {
        RawRecord {
            topic: "payments",
            partition: 0,
            offset: 1,
            timestamp_ms: Some(1_700_000_000_000),
            key: None,
            value,
            headers,
        }
    }

    fn full_config() -> JsonConfig {
        let mut config = JsonConfig::new("/payment/id");
        config.time_path = Some("/payment/at".into());
        config.source_path = Some("/meta/source".into());
        config.type_path = Some("/meta/kind".into());
        config.subject_path = Some("/payment/account".into());
        config.sequence_path = Some("/meta/seq".into());
        config.traceparent_path = Some("/meta/trace".into());
        config.causation_id_path = Some("/meta/cause".into());
        config.correlation_id_path = Some("/meta/flow".into());
        config.attributes.insert("zone".into(), "/meta/zone".into());
        config
            .attributes
            .insert("amount".into(), "/payment/amount".into());
        config
            .attributes
            .insert("currency".into(), "/payment/currency".into());
        config
            .attributes
            .insert("first_line".into(), "/payment/lines/0/sku".into());
        config
            .attributes
            .insert("refunded".into(), "/payment/refunded".into());
        config
            .attributes
            .insert("absent".into(), "/payment/nope".into());
        config
            .attributes
            .insert("nested".into(), "/payment/lines".into());
        config
    }

    fn decode_with(config: &JsonConfig, record: &RawRecord<'_>) -> Result<Envelope, DecodeError> {
        let mut out = Envelope::default();
        JsonDecoder::new(config).decode(record, &mut out)?;
        Ok(out)
    }

    fn decode(config: &JsonConfig, value: &str) -> Result<Envelope, DecodeError> {
        decode_with(config, &record(&[], Some(value.as_bytes())))
    }

    #[test]
    fn reads_nested_paths() {
        let value = r#"{
            "payment": {
                "id": "pay-1",
                "at": "2024-05-01T14:00:00.250+02:00",
                "account": 991,
                "amount": 12.5,
                "currency": "EUR",
                "refunded": false,
                "lines": [{"sku": "A-1"}, {"sku": "B-2"}]
            },
            "meta": {
                "source": "checkout",
                "kind": "payment.settled",
                "seq": "0042",
                "trace": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "cause": "order-5",
                "flow": "flow-7",
                "zone": -3
            }
        }"#;
        let out = decode(&full_config(), value).unwrap();
        assert_eq!(
            out,
            Envelope {
                id: "pay-1".into(),
                source: "checkout".into(),
                event_type: "payment.settled".into(),
                subject: "991".into(),
                event_time_ms: 1_714_564_800_250,
                sequence: Some(42),
                trace: TraceContext::parse_traceparent(TRACEPARENT.as_bytes()),
                causation_id: "order-5".into(),
                correlation_id: "flow-7".into(),
                // Name order, as configured in a BTreeMap; absent and array values skipped.
                attributes: vec![
                    ("amount".into(), AttributeValue::Float(12.5)),
                    ("currency".into(), AttributeValue::String("EUR".into())),
                    ("first_line".into(), AttributeValue::String("A-1".into())),
                    ("refunded".into(), AttributeValue::Boolean(false)),
                    ("zone".into(), AttributeValue::Integer(-3)),
                ],
            }
        );
        assert!(out.trace.is_some());
    }

    #[test]
    fn integer_ids_times_and_sequences() {
        let mut config = JsonConfig::new("/id");
        config.time_path = Some("/t".into());
        config.sequence_path = Some("/seq".into());
        let out = decode(
            &config,
            r#"{"id": 12345678901, "t": 1714564800250, "seq": 7}"#,
        )
        .unwrap();
        assert_eq!(out.id, "12345678901");
        assert_eq!(out.event_time_ms, 1_714_564_800_250);
        assert_eq!(out.sequence, Some(7));

        let out = decode(
            &config,
            r#"{"id": -5, "t": -1000, "seq": "18446744073709551615"}"#,
        )
        .unwrap();
        assert_eq!(out.id, "-5");
        assert_eq!(out.event_time_ms, -1000);
        assert_eq!(out.sequence, Some(u64::MAX));

        let out = decode(
            &config,
            r#"{"id": "a", "t": "2024-05-01T12:00:00.123456Z"}"#,
        )
        .unwrap();
        assert_eq!(out.event_time_ms, 1_714_564_800_123);
        assert_eq!(out.sequence, None);
    }

    #[test]
    fn time_falls_back_per_policy() {
        let mut config = JsonConfig::new("/id");
        let no_time = br#"{"id": "a"}"#;
        assert_eq!(
            decode_with(&config, &record(&[], Some(no_time)))
                .unwrap()
                .event_time_ms,
            1_700_000_000_000
        );
        config.time_path = Some("/t".into());
        let null_time = br#"{"id": "a", "t": null}"#;
        assert_eq!(
            decode_with(&config, &record(&[], Some(null_time)))
                .unwrap()
                .event_time_ms,
            1_700_000_000_000
        );
        let mut without_timestamp = record(&[], Some(null_time));
        without_timestamp.timestamp_ms = None;
        let error = decode_with(&config, &without_timestamp).unwrap_err();
        assert_eq!(error.class, DecodeErrorClass::MissingField);
        assert!(error.message.contains("time_path `/t`"), "{error}");

        config.time_fallback = TimeFallback::Reject;
        let error = decode_with(&config, &record(&[], Some(null_time))).unwrap_err();
        assert_eq!(error.class, DecodeErrorClass::MissingField);
        config.time_path = None;
        let error = decode_with(&config, &record(&[], Some(no_time))).unwrap_err();
        assert_eq!(error.class, DecodeErrorClass::MissingField);
        assert!(error.message.contains("time_path"), "{error}");
    }

    #[test]
    fn traceparent_from_path_else_from_header() {
        let mut config = JsonConfig::new("/id");
        let header = [("traceparent", Some(OTHER_TRACEPARENT.as_bytes()))];
        let from_header = TraceContext::parse_traceparent(OTHER_TRACEPARENT.as_bytes());
        let from_body = TraceContext::parse_traceparent(TRACEPARENT.as_bytes());
        let value = format!(r#"{{"id": "a", "trace": "{TRACEPARENT}"}}"#);

        // No path: the header.
        let out = decode_with(&config, &record(&header, Some(value.as_bytes()))).unwrap();
        assert_eq!(out.trace, from_header);
        // Path present: the path wins.
        config.traceparent_path = Some("/trace".into());
        let out = decode_with(&config, &record(&header, Some(value.as_bytes()))).unwrap();
        assert_eq!(out.trace, from_body);
        // Path absent in the value: the header.
        let out = decode_with(&config, &record(&header, Some(br#"{"id": "a"}"#))).unwrap();
        assert_eq!(out.trace, from_header);
        // Neither.
        let out = decode_with(&config, &record(&[], Some(br#"{"id": "a"}"#))).unwrap();
        assert_eq!(out.trace, None);
        // A custom header name.
        config.traceparent_header = "x-trace".into();
        let custom = [("x-trace", Some(OTHER_TRACEPARENT.as_bytes()))];
        let out = decode_with(&config, &record(&custom, Some(br#"{"id": "a"}"#))).unwrap();
        assert_eq!(out.trace, from_header);
        let out = decode_with(&config, &record(&header, Some(br#"{"id": "a"}"#))).unwrap();
        assert_eq!(out.trace, None);
    }

    #[test]
    fn errors_of_every_reachable_class() {
        let config = full_config();
        let good_meta = r#""meta": {"source": "s"}"#;
        let cases: Vec<(String, DecodeErrorClass, &str)> = vec![
            (
                "{\"payment\": ".into(),
                DecodeErrorClass::InvalidJson,
                "line 1",
            ),
            ("{} {}".into(), DecodeErrorClass::InvalidJson, "JSON"),
            (
                r#"{"payment": {"id": "a", "id": "b"}}"#.into(),
                DecodeErrorClass::InvalidJson,
                "`/payment/id` appears more than once",
            ),
            (
                "[]".into(),
                DecodeErrorClass::MissingField,
                "id_path `/payment/id`",
            ),
            (
                r#"{"payment": {}}"#.into(),
                DecodeErrorClass::MissingField,
                "/payment/id",
            ),
            (
                r#"{"payment": {"id": ""}}"#.into(),
                DecodeErrorClass::MissingField,
                "/payment/id",
            ),
            (
                r#"{"payment": {"id": null}}"#.into(),
                DecodeErrorClass::MissingField,
                "/payment/id",
            ),
            (
                r#"{"payment": {"id": 1.5}}"#.into(),
                DecodeErrorClass::InvalidField,
                "/payment/id",
            ),
            (
                r#"{"payment": {"id": {"secret": 1}}}"#.into(),
                DecodeErrorClass::InvalidField,
                "/payment/id",
            ),
            (
                format!(r#"{{"payment": {{"id": "a", "at": "secret-time"}}, {good_meta}}}"#),
                DecodeErrorClass::InvalidField,
                "time_path `/payment/at`",
            ),
            (
                r#"{"payment": {"id": "a", "at": 1.5}}"#.into(),
                DecodeErrorClass::InvalidField,
                "/payment/at",
            ),
            (
                r#"{"payment": {"id": "a", "at": 18446744073709551615}}"#.into(),
                DecodeErrorClass::InvalidField,
                "/payment/at",
            ),
            (
                r#"{"payment": {"id": "a"}, "meta": {"seq": -1}}"#.into(),
                DecodeErrorClass::InvalidField,
                "sequence_path `/meta/seq`",
            ),
            (
                r#"{"payment": {"id": "a"}, "meta": {"seq": "secret"}}"#.into(),
                DecodeErrorClass::InvalidField,
                "/meta/seq",
            ),
            (
                r#"{"payment": {"id": "a", "account": [1]}}"#.into(),
                DecodeErrorClass::InvalidField,
                "subject_path `/payment/account`",
            ),
            (
                r#"{"payment": {"id": "a"}, "meta": {"kind": true}}"#.into(),
                DecodeErrorClass::InvalidField,
                "type_path",
            ),
            (
                r#"{"payment": {"id": "a"}, "meta": {"trace": "secret-trace"}}"#.into(),
                DecodeErrorClass::InvalidTraceContext,
                "traceparent_path `/meta/trace`",
            ),
            (
                r#"{"payment": {"id": "a"}, "meta": {"trace": 5}}"#.into(),
                DecodeErrorClass::InvalidTraceContext,
                "/meta/trace",
            ),
        ];
        for (value, expected, named) in cases {
            let error = decode(&config, &value).unwrap_err();
            assert_eq!(error.class, expected, "{value}: {error}");
            assert!(error.message.contains(named), "{value}: {error}");
            assert!(!error.message.contains("secret"), "{error}");
        }
    }

    #[test]
    fn record_level_errors() {
        let mut config = JsonConfig::new("/id");
        let error = decode_with(&config, &record(&[], None)).unwrap_err();
        assert_eq!(error.class, DecodeErrorClass::MissingValue);
        let id = decode(&config, "{\"id\": \"\u{e9}\"}").unwrap().id;
        assert_eq!(id, "\u{e9}");
        let error = decode_with(&config, &record(&[], Some(b"{\"id\": \"\xe9\"}"))).unwrap_err();
        assert_eq!(error.class, DecodeErrorClass::InvalidUtf8);
        assert_eq!(error.message, "value is not valid UTF-8 (at byte 8)");

        let bad_header = [("traceparent", Some(&[0xffu8, 0xfe][..]))];
        let error = decode_with(&config, &record(&bad_header, Some(br#"{"id": 1}"#))).unwrap_err();
        assert_eq!(error.class, DecodeErrorClass::InvalidUtf8);
        assert!(error.message.contains("traceparent"), "{error}");
        let bad_header = [("traceparent", Some(&b"00-00"[..]))];
        let error = decode_with(&config, &record(&bad_header, Some(br#"{"id": 1}"#))).unwrap_err();
        assert_eq!(error.class, DecodeErrorClass::InvalidTraceContext);
        assert!(error.message.contains("header `traceparent`"), "{error}");

        config.max_value_bytes = 10;
        let error = decode(&config, r#"{"id": "abcdef"}"#).unwrap_err();
        assert_eq!(error.class, DecodeErrorClass::Oversized);
        // Exactly at the limit is fine.
        assert!(decode(&config, r#"{"id":"a"}"#).is_ok());
    }

    #[test]
    fn whole_value_and_shared_paths() {
        let mut config = JsonConfig::new("");
        config.subject_path = Some(String::new());
        let out = decode(&config, "\"just-an-id\"").unwrap();
        assert_eq!(
            (out.id.as_str(), out.subject.as_str()),
            ("just-an-id", "just-an-id")
        );
        let out = decode(&config, "42").unwrap();
        assert_eq!(out.id, "42");
    }

    #[test]
    fn built_through_the_config_enum_and_reused() {
        let config: DecoderConfig = serde_json::from_value(serde_json::json!({
            "format": "json",
            "id_path": "/id",
            "attributes": {"b": "/b", "a": "/a"},
        }))
        .unwrap();
        assert!(config.validate("d").is_empty());
        let decoder = crate::build_decoder(&config).unwrap();
        let mut out = Envelope::default();
        decoder
            .decode(
                &record(&[], Some(br#"{"id": "one", "a": 1, "b": "x"}"#)),
                &mut out,
            )
            .unwrap();
        assert_eq!(
            out.attributes,
            [
                ("a".to_owned(), AttributeValue::Integer(1)),
                ("b".to_owned(), AttributeValue::String("x".into())),
            ]
        );
        out.clear();
        decoder
            .decode(&record(&[], Some(br#"{"b": true, "id": "two"}"#)), &mut out)
            .unwrap();
        assert_eq!(out.id, "two");
        assert_eq!(
            out.attributes,
            [("b".to_owned(), AttributeValue::Boolean(true))]
        );
    }
}
