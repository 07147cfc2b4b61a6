//! CloudEvents over Kafka (CloudEvents Kafka protocol binding 1.0), binary and structured mode.
//!
//! - Structured mode: header `content-type` is `application/cloudevents+json` (any case, optional
//!   parameters such as `; charset=utf-8`). The value is the event as a JSON object; it is read in
//!   one pass without building a `serde_json::Value`, and `data` / `data_base64` are skipped.
//! - Binary mode: anything else. The attributes are `ce_*` headers and the value is opaque data,
//!   never parsed (it may be null).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use smallvec::SmallVec;

use super::common::{
    check_size, fallback_time, header_as_str, invalid_json, parse_decimal_u64, parse_json,
    parse_rfc3339_ms, scalar_to_sequence, value_as_str, Scalar, ScalarSeed,
};
use super::config::CloudEventsConfig;
use super::Decoder;
use crate::{AttributeValue, DecodeError, DecodeErrorClass, Envelope, RawRecord, TraceContext};

/// The only CloudEvents version read.
const SPEC_VERSION: &str = "1.0";
/// Structured-mode media type.
const STRUCTURED_CONTENT_TYPE: &[u8] = b"application/cloudevents+json";
/// Binary-mode attribute header prefix.
const HEADER_PREFIX: &str = "ce_";
/// Attributes that describe `data` rather than the event; not copied into the envelope.
const DATA_ATTRIBUTES: [&str; 4] = ["data", "data_base64", "datacontenttype", "dataschema"];

/// Decodes CloudEvents 1.0 records, detecting binary or structured mode per record.
#[derive(Debug, Clone)]
pub struct CloudEventsDecoder {
    config: CloudEventsConfig,
}

impl CloudEventsDecoder {
    pub fn new(config: CloudEventsConfig) -> Self {
        Self { config }
    }
}

impl Decoder for CloudEventsDecoder {
    fn decode(&self, record: &RawRecord<'_>, out: &mut Envelope) -> Result<(), DecodeError> {
        if let Some(value) = record.value {
            check_size(value, self.config.max_value_bytes)?;
        }
        if is_structured(record) {
            self.decode_structured(record, out)
        } else {
            self.decode_binary(record, out)
        }
    }
}

/// Whether the last `content-type` header (name matched in any case) names the structured JSON
/// format.
fn is_structured(record: &RawRecord<'_>) -> bool {
    let content_type = record
        .headers
        .iter()
        .rev()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, value)| *value);
    let Some(content_type) = content_type else {
        return false;
    };
    let media_type = content_type
        .split(|&byte| byte == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    media_type.eq_ignore_ascii_case(STRUCTURED_CONTENT_TYPE)
}

/// Where the attributes came from, for messages.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Structured,
    Binary,
}

impl Mode {
    fn name(self, attribute: &str) -> String {
        match self {
            Mode::Structured => format!("attribute `{attribute}`"),
            Mode::Binary => format!("header `{HEADER_PREFIX}{attribute}`"),
        }
    }
}

/// The attributes both modes fill the envelope from, already type-checked.
#[derive(Debug, Default)]
struct Attributes<'a> {
    id: Option<&'a str>,
    source: Option<&'a str>,
    event_type: Option<&'a str>,
    subject: Option<&'a str>,
    time: Option<&'a str>,
    sequence: Option<u64>,
    traceparent: Option<&'a str>,
    causation_id: Option<&'a str>,
    correlation_id: Option<&'a str>,
}

impl CloudEventsDecoder {
    fn decode_binary(&self, record: &RawRecord<'_>, out: &mut Envelope) -> Result<(), DecodeError> {
        let mode = Mode::Binary;
        let header = |attribute: &str| -> Result<Option<&str>, DecodeError> {
            let name = binary_header_name(attribute);
            record
                .header(name)
                .map(|value| header_as_str(name, value))
                .transpose()
        };
        match header("specversion")? {
            None => {
                return Err(DecodeError::new(
                    DecodeErrorClass::UnsupportedFormat,
                    "neither a `ce_specversion` header (binary mode) nor content-type \
                     application/cloudevents+json (structured mode)",
                ))
            }
            Some(SPEC_VERSION) => {}
            Some(_) => {
                return Err(DecodeError::new(
                    DecodeErrorClass::UnsupportedFormat,
                    "header `ce_specversion` is not 1.0",
                ))
            }
        }
        let sequence = match header("sequence")? {
            None => None,
            Some(text) => Some(parse_decimal_u64(text).ok_or_else(|| {
                DecodeError::new(
                    DecodeErrorClass::InvalidField,
                    "header `ce_sequence` is not a string of decimal digits",
                )
            })?),
        };
        let attributes = Attributes {
            id: header("id")?,
            source: header("source")?,
            event_type: header("type")?,
            subject: header("subject")?,
            time: header("time")?,
            sequence,
            traceparent: header("traceparent")?,
            causation_id: header("causationid")?,
            correlation_id: header("correlationid")?,
        };
        self.fill(record, mode, &attributes, out)?;
        extension_headers(record, out)
    }

    fn decode_structured(
        &self,
        record: &RawRecord<'_>,
        out: &mut Envelope,
    ) -> Result<(), DecodeError> {
        let mode = Mode::Structured;
        let value = record.value.ok_or_else(|| {
            DecodeError::new(
                DecodeErrorClass::MissingValue,
                "structured-mode CloudEvent has no value",
            )
        })?;
        let text = value_as_str(value)?;

        let mut state = StructuredState {
            attributes: &mut out.attributes,
            extension_names: SmallVec::new(),
            duplicate: None,
        };
        let parsed = parse_json(text, StructuredSeed { state: &mut state });
        if let Some(name) = state.duplicate {
            return Err(duplicate_attribute(name));
        }
        let event = match parsed {
            Ok(Some(event)) => event,
            Ok(None) => {
                return Err(DecodeError::new(
                    DecodeErrorClass::InvalidJson,
                    "structured-mode CloudEvent is not a JSON object",
                ))
            }
            Err(error) => return Err(invalid_json(&error)),
        };
        if let Some(name) = first_duplicate(&mut state.extension_names) {
            return Err(duplicate_attribute(&name));
        }

        match &event.specversion {
            Scalar::Str(version) if version == SPEC_VERSION => {}
            Scalar::Str(_) => {
                return Err(DecodeError::new(
                    DecodeErrorClass::UnsupportedFormat,
                    "attribute `specversion` is not 1.0",
                ))
            }
            Scalar::Missing | Scalar::Null => {
                return Err(DecodeError::new(
                    DecodeErrorClass::MissingField,
                    "attribute `specversion` is absent",
                ))
            }
            _ => {
                return Err(DecodeError::new(
                    DecodeErrorClass::InvalidField,
                    "attribute `specversion` must be a string",
                ))
            }
        }
        let sequence = if event.sequence.is_absent() {
            None
        } else {
            Some(scalar_to_sequence(&event.sequence).ok_or_else(|| {
                DecodeError::new(
                    DecodeErrorClass::InvalidField,
                    "attribute `sequence` must be a string of decimal digits or a non-negative \
                     integer",
                )
            })?)
        };
        let traceparent = match &event.traceparent {
            Scalar::Missing | Scalar::Null => None,
            Scalar::Str(text) => Some(text.as_ref()),
            _ => {
                return Err(DecodeError::new(
                    DecodeErrorClass::InvalidTraceContext,
                    "attribute `traceparent` must be a string",
                ))
            }
        };
        let text = |value, attribute| text_attribute(value, attribute, mode);
        let attributes = Attributes {
            id: text(&event.id, "id")?,
            source: text(&event.source, "source")?,
            event_type: text(&event.event_type, "type")?,
            subject: text(&event.subject, "subject")?,
            time: text(&event.time, "time")?,
            sequence,
            traceparent,
            causation_id: text(&event.causation_id, "causationid")?,
            correlation_id: text(&event.correlation_id, "correlationid")?,
        };
        self.fill(record, mode, &attributes, out)
    }

    /// Copies the attributes into `out`, checking required ones and parsing time and trace.
    fn fill(
        &self,
        record: &RawRecord<'_>,
        mode: Mode,
        attributes: &Attributes<'_>,
        out: &mut Envelope,
    ) -> Result<(), DecodeError> {
        for (value, field, attribute) in [
            (attributes.id, &mut out.id, "id"),
            (attributes.source, &mut out.source, "source"),
            (attributes.event_type, &mut out.event_type, "type"),
        ] {
            match value {
                Some(text) if !text.is_empty() => field.push_str(text),
                _ => {
                    return Err(DecodeError::new(
                        DecodeErrorClass::MissingField,
                        format!("{} is absent or empty", mode.name(attribute)),
                    ))
                }
            }
        }
        out.event_time_ms = match attributes.time {
            Some(text) => parse_rfc3339_ms(text).ok_or_else(|| {
                DecodeError::new(
                    DecodeErrorClass::InvalidField,
                    format!("{} is not an RFC 3339 timestamp", mode.name("time")),
                )
            })?,
            None => fallback_time(self.config.time_fallback, record, &mode.name("time"))?,
        };
        out.trace = match attributes.traceparent {
            Some(text) => Some(TraceContext::parse_traceparent(text.as_bytes()).ok_or_else(
                || {
                    DecodeError::new(
                        DecodeErrorClass::InvalidTraceContext,
                        format!(
                            "{} is not a valid W3C traceparent",
                            mode.name("traceparent")
                        ),
                    )
                },
            )?),
            None => None,
        };
        out.sequence = attributes.sequence;
        for (value, field) in [
            (attributes.subject, &mut out.subject),
            (attributes.causation_id, &mut out.causation_id),
            (attributes.correlation_id, &mut out.correlation_id),
        ] {
            if let Some(text) = value {
                field.push_str(text);
            }
        }
        Ok(())
    }
}

/// A string attribute of a structured-mode event: `None` when absent or null.
fn text_attribute<'a>(
    value: &'a Scalar<'_>,
    attribute: &str,
    mode: Mode,
) -> Result<Option<&'a str>, DecodeError> {
    match value {
        Scalar::Missing | Scalar::Null => Ok(None),
        Scalar::Str(text) => Ok(Some(text.as_ref())),
        _ => Err(DecodeError::new(
            DecodeErrorClass::InvalidField,
            format!("{} must be a string", mode.name(attribute)),
        )),
    }
}

/// The header carrying a binary-mode attribute.
fn binary_header_name(attribute: &str) -> &'static str {
    match attribute {
        "specversion" => "ce_specversion",
        "id" => "ce_id",
        "source" => "ce_source",
        "type" => "ce_type",
        "subject" => "ce_subject",
        "time" => "ce_time",
        "sequence" => "ce_sequence",
        "traceparent" => "ce_traceparent",
        "causationid" => "ce_causationid",
        "correlationid" => "ce_correlationid",
        // Only called with the names above.
        _ => "ce_",
    }
}

/// Attributes with a dedicated envelope field (or none, for the data attributes).
fn is_known_attribute(name: &str) -> bool {
    matches!(
        name,
        "specversion"
            | "id"
            | "source"
            | "type"
            | "subject"
            | "time"
            | "sequence"
            | "traceparent"
            | "causationid"
            | "correlationid"
    ) || DATA_ATTRIBUTES.contains(&name)
}

/// Copies the other `ce_*` headers into string attributes, in order of first appearance, each with
/// its last value (a header may repeat; a null last value drops the attribute, as for
/// [`RawRecord::header`]).
fn extension_headers(record: &RawRecord<'_>, out: &mut Envelope) -> Result<(), DecodeError> {
    let mut extensions: SmallVec<[(&str, usize); 16]> = record
        .headers
        .iter()
        .enumerate()
        .filter_map(|(position, (name, _))| {
            let attribute = name.strip_prefix(HEADER_PREFIX)?;
            (!attribute.is_empty() && !is_known_attribute(attribute))
                .then_some((attribute, position))
        })
        .collect();
    if extensions.is_empty() {
        return Ok(());
    }
    // Group by name: the first position orders the attribute, the last one gives its value.
    extensions.sort_unstable();
    let mut groups: SmallVec<[(usize, usize); 16]> = extensions
        .chunk_by(|left, right| left.0 == right.0)
        .filter_map(|group| Some((group.first()?.1, group.last()?.1)))
        .collect();
    groups.sort_unstable();
    for (_, last) in groups {
        let Some((name, value)) = record.headers.get(last) else {
            continue;
        };
        let (Some(attribute), Some(value)) = (name.strip_prefix(HEADER_PREFIX), value) else {
            continue;
        };
        let text = header_as_str(name, value)?;
        out.attributes.push((
            attribute.to_owned(),
            AttributeValue::String(text.to_owned()),
        ));
    }
    Ok(())
}

fn duplicate_attribute(name: &str) -> DecodeError {
    DecodeError::new(
        DecodeErrorClass::InvalidJson,
        format!("attribute `{name}` appears more than once"),
    )
}

/// A name that appears twice in `names`, if any (sorts `names`).
fn first_duplicate(names: &mut [Cow<'_, str>]) -> Option<String> {
    if names.len() < 2 {
        return None;
    }
    names.sort_unstable();
    names
        .windows(2)
        .find(|pair| pair.first() == pair.last())
        .and_then(|pair| pair.first())
        .map(|name| name.as_ref().to_owned())
}

/// The attributes of a structured-mode event that have dedicated envelope fields.
#[derive(Debug, Default)]
struct StructuredEvent<'de> {
    specversion: Scalar<'de>,
    id: Scalar<'de>,
    source: Scalar<'de>,
    event_type: Scalar<'de>,
    subject: Scalar<'de>,
    time: Scalar<'de>,
    sequence: Scalar<'de>,
    traceparent: Scalar<'de>,
    causation_id: Scalar<'de>,
    correlation_id: Scalar<'de>,
}

impl<'de> StructuredEvent<'de> {
    fn slot(&mut self, name: &str) -> Option<&mut Scalar<'de>> {
        Some(match name {
            "specversion" => &mut self.specversion,
            "id" => &mut self.id,
            "source" => &mut self.source,
            "type" => &mut self.event_type,
            "subject" => &mut self.subject,
            "time" => &mut self.time,
            "sequence" => &mut self.sequence,
            "traceparent" => &mut self.traceparent,
            "causationid" => &mut self.causation_id,
            "correlationid" => &mut self.correlation_id,
            _ => return None,
        })
    }
}

struct StructuredState<'a, 'de> {
    /// Extension attributes go straight into the envelope, in the order the event lists them.
    attributes: &'a mut Vec<(String, AttributeValue)>,
    /// Every extension member name, to detect repeats after parsing.
    extension_names: SmallVec<[Cow<'de, str>; 16]>,
    /// A repeated known or data attribute, found while parsing.
    duplicate: Option<&'static str>,
}

/// Reads a structured-mode event; `None` when the value is well-formed JSON but not an object.
struct StructuredSeed<'s, 'a, 'de> {
    state: &'s mut StructuredState<'a, 'de>,
}

impl<'de> DeserializeSeed<'de> for StructuredSeed<'_, '_, 'de> {
    type Value = Option<StructuredEvent<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StructuredSeed<'_, '_, 'de> {
    type Value = Option<StructuredEvent<'de>>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a CloudEvent JSON object")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let state = self.state;
        let mut event = StructuredEvent::default();
        let mut data_seen = [false; DATA_ATTRIBUTES.len()];
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if let Some(slot) = event.slot(&key) {
                let value = map.next_value_seed(ScalarSeed)?;
                if *slot != Scalar::Missing {
                    state.duplicate = known_name(&key);
                    return Err(de::Error::custom("duplicate attribute"));
                }
                *slot = value;
            } else if let Some(position) = DATA_ATTRIBUTES.iter().position(|name| *name == key) {
                map.next_value::<IgnoredAny>()?;
                if let Some(seen) = data_seen.get_mut(position) {
                    if *seen {
                        state.duplicate = DATA_ATTRIBUTES.get(position).copied();
                        return Err(de::Error::custom("duplicate attribute"));
                    }
                    *seen = true;
                }
            } else {
                let value = map.next_value_seed(ScalarSeed)?;
                if !key.is_empty() {
                    if let Some(value) = value.to_attribute() {
                        state.attributes.push((key.as_ref().to_owned(), value));
                    }
                }
                state.extension_names.push(key);
            }
        }
        Ok(Some(event))
    }
}

/// The static name of a known attribute, for the duplicate message.
fn known_name(name: &str) -> Option<&'static str> {
    [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "sequence",
        "traceparent",
        "causationid",
        "correlationid",
    ]
    .into_iter()
    .find(|known| *known == name)
}

/// An object member name, borrowed from the input when it needs no unescaping.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an attribute name")
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::TimeFallback;

    type Headers<'a> = Vec<(&'a str, Option<&'a [u8]>)>;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const STRUCTURED: &str = "application/cloudevents+json";

    fn record<'a>(
        headers: &'a [(&'a str, Option<&'a [u8]>)],
        value: Option<&'a [u8]>,
    ) -> RawRecord<'a> {
        RawRecord {
            topic: "payments",
            partition: 3,
            offset: 17,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"k"),
            value,
            headers,
        }
    }

    fn decode_with(
        config: CloudEventsConfig,
        record: &RawRecord<'_>,
    ) -> Result<Envelope, DecodeError> {
        let mut out = Envelope::default();
        CloudEventsDecoder::new(config).decode(record, &mut out)?;
        Ok(out)
    }

    fn decode(record: &RawRecord<'_>) -> Result<Envelope, DecodeError> {
        decode_with(CloudEventsConfig::default(), record)
    }

    fn structured(value: &str) -> Result<Envelope, DecodeError> {
        let headers = [("content-type", Some(STRUCTURED.as_bytes()))];
        decode(&record(&headers, Some(value.as_bytes())))
    }

    fn class(result: Result<Envelope, DecodeError>) -> DecodeErrorClass {
        result.expect_err("decode should fail").class
    }

    fn text(value: &str) -> AttributeValue {
        AttributeValue::String(value.to_owned())
    }

    /// Headers of a complete binary-mode event, with `overrides` replacing or adding headers.
    fn binary_headers<'a>(
        overrides: &[(&'a str, Option<&'a [u8]>)],
    ) -> Vec<(&'a str, Option<&'a [u8]>)> {
        let mut headers: Vec<(&str, Option<&[u8]>)> = vec![
            ("ce_specversion", Some(b"1.0")),
            ("ce_id", Some(b"evt-1")),
            ("ce_source", Some(b"/payments")),
            ("ce_type", Some(b"payment.settled")),
        ];
        for (name, value) in overrides {
            headers.retain(|(existing, _)| existing != name);
            headers.push((name, *value));
        }
        headers
    }

    #[test]
    fn binary_mode_reads_every_attribute() {
        let headers: Vec<(&str, Option<&[u8]>)> = vec![
            ("content-type", Some(b"application/octet-stream")),
            ("ce_specversion", Some(b"1.0")),
            ("ce_id", Some(b"evt-1")),
            ("ce_source", Some(b"/payments")),
            ("ce_type", Some(b"payment.settled")),
            ("ce_region", Some(b"eu")),
            ("ce_subject", Some(b"account-9")),
            ("ce_time", Some(b"2024-05-01T14:00:00.250+02:00")),
            ("ce_sequence", Some(b"00042")),
            ("ce_traceparent", Some(TRACEPARENT.as_bytes())),
            ("ce_causationid", Some(b"evt-0")),
            ("ce_correlationid", Some(b"flow-7")),
            ("ce_dataschema", Some(b"https://schemas.example/p")),
            ("ce_tenant", Some(b"acme")),
            ("other", Some(b"ignored")),
        ];
        // The value is opaque data in binary mode: not even JSON.
        let out = decode(&record(&headers, Some(&[0xff, 0x00, 0x7b]))).unwrap();
        assert_eq!(
            out,
            Envelope {
                id: "evt-1".into(),
                source: "/payments".into(),
                event_type: "payment.settled".into(),
                subject: "account-9".into(),
                event_time_ms: 1_714_564_800_250,
                sequence: Some(42),
                trace: TraceContext::parse_traceparent(TRACEPARENT.as_bytes()),
                causation_id: "evt-0".into(),
                correlation_id: "flow-7".into(),
                attributes: vec![
                    ("region".into(), text("eu")),
                    ("tenant".into(), text("acme"))
                ],
            }
        );
        assert!(out.trace.is_some());
    }

    #[test]
    fn binary_mode_allows_a_null_value_and_falls_back_to_the_record_time() {
        let headers = binary_headers(&[]);
        let out = decode(&record(&headers, None)).unwrap();
        assert_eq!(out.id, "evt-1");
        assert_eq!(out.event_time_ms, 1_700_000_000_000);
        assert_eq!(out.sequence, None);
        assert_eq!(out.trace, None);
        assert!(out.subject.is_empty() && out.attributes.is_empty());
    }

    #[test]
    fn binary_extensions_keep_first_position_and_last_value() {
        let headers: Vec<(&str, Option<&[u8]>)> = vec![
            ("ce_b", Some(b"1")),
            ("ce_specversion", Some(b"1.0")),
            ("ce_a", Some(b"1")),
            ("ce_id", Some(b"x")),
            ("ce_b", Some(b"2")),
            ("ce_gone", Some(b"1")),
            ("ce_source", Some(b"s")),
            ("ce_type", Some(b"t")),
            ("ce_gone", None),
            ("ce_", Some(b"empty name")),
            ("ce_datacontenttype", Some(b"application/json")),
            ("CE_upper", Some(b"not a binding header")),
            ("ce_c", None),
            ("ce_c", Some(b"3")),
        ];
        let out = decode(&record(&headers, None)).unwrap();
        assert_eq!(
            out.attributes,
            [
                ("b".to_owned(), text("2")),
                ("a".to_owned(), text("1")),
                ("c".to_owned(), text("3")),
            ]
        );
        // Decoding is deterministic.
        let again = decode(&record(&headers, None)).unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn binary_mode_with_many_extension_headers() {
        let names: Vec<String> = (0..100)
            .map(|index| format!("ce_x{}", 99 - index))
            .collect();
        let mut headers = binary_headers(&[]);
        for name in &names {
            headers.push((name, Some(b"v")));
        }
        let out = decode(&record(&headers, None)).unwrap();
        assert_eq!(out.attributes.len(), 100);
        assert_eq!(out.attributes[0].0, "x99");
        assert_eq!(out.attributes[99].0, "x0");
    }

    #[test]
    fn binary_mode_errors() {
        let bad_utf8: &[u8] = &[0xc3, 0x28];
        let cases: Vec<(Headers<'_>, DecodeErrorClass, &str)> = vec![
            (
                vec![("ce_id", Some(b"x"))],
                DecodeErrorClass::UnsupportedFormat,
                "ce_specversion",
            ),
            (
                vec![("content-type", Some(b"application/cloudevents-batch+json"))],
                DecodeErrorClass::UnsupportedFormat,
                "ce_specversion",
            ),
            (
                binary_headers(&[("ce_specversion", Some(b"0.3"))]),
                DecodeErrorClass::UnsupportedFormat,
                "ce_specversion",
            ),
            (
                binary_headers(&[("ce_specversion", Some(bad_utf8))]),
                DecodeErrorClass::InvalidUtf8,
                "ce_specversion",
            ),
            (
                binary_headers(&[("ce_id", Some(b""))]),
                DecodeErrorClass::MissingField,
                "ce_id",
            ),
            (
                binary_headers(&[("ce_source", None)]),
                DecodeErrorClass::MissingField,
                "ce_source",
            ),
            (
                binary_headers(&[("ce_type", Some(bad_utf8))]),
                DecodeErrorClass::InvalidUtf8,
                "ce_type",
            ),
            (
                binary_headers(&[("ce_time", Some(b"2024-05-01 12:00"))]),
                DecodeErrorClass::InvalidField,
                "ce_time",
            ),
            (
                binary_headers(&[("ce_sequence", Some(b"-4"))]),
                DecodeErrorClass::InvalidField,
                "ce_sequence",
            ),
            (
                binary_headers(&[("ce_traceparent", Some(b"00-zz"))]),
                DecodeErrorClass::InvalidTraceContext,
                "ce_traceparent",
            ),
            (
                binary_headers(&[("ce_region", Some(bad_utf8))]),
                DecodeErrorClass::InvalidUtf8,
                "ce_region",
            ),
        ];
        for (headers, expected, named) in cases {
            let error = decode(&record(&headers, Some(b"data"))).unwrap_err();
            assert_eq!(error.class, expected, "{headers:?}: {error}");
            assert!(error.message.contains(named), "{error}");
        }
    }

    #[test]
    fn oversized_values_are_rejected_in_both_modes() {
        let config = CloudEventsConfig {
            max_value_bytes: 8,
            ..CloudEventsConfig::default()
        };
        let headers = binary_headers(&[]);
        assert_eq!(
            class(decode_with(
                config.clone(),
                &record(&headers, Some(b"123456789"))
            )),
            DecodeErrorClass::Oversized
        );
        assert!(decode_with(config.clone(), &record(&headers, Some(b"12345678"))).is_ok());
        let headers = [("content-type", Some(STRUCTURED.as_bytes()))];
        let error = decode_with(config, &record(&headers, Some(b"{\"id\": \"x\"}"))).unwrap_err();
        assert_eq!(error.class, DecodeErrorClass::Oversized);
        assert_eq!(
            error.message,
            "value is 11 bytes, above the limit of 8 bytes"
        );
    }

    #[test]
    fn time_fallback_policies() {
        let headers = binary_headers(&[]);
        let mut without_timestamp = record(&headers, None);
        without_timestamp.timestamp_ms = None;
        let error = decode(&without_timestamp).unwrap_err();
        assert_eq!(error.class, DecodeErrorClass::MissingField);
        assert!(error.message.contains("ce_time"), "{error}");

        let reject = CloudEventsConfig {
            time_fallback: TimeFallback::Reject,
            ..CloudEventsConfig::default()
        };
        assert_eq!(
            class(decode_with(reject.clone(), &record(&headers, None))),
            DecodeErrorClass::MissingField
        );
        let with_time = binary_headers(&[("ce_time", Some(b"1970-01-01T00:00:01Z"))]);
        let out = decode_with(reject, &record(&with_time, None)).unwrap();
        assert_eq!(out.event_time_ms, 1000);
    }

    #[test]
    fn structured_mode_reads_every_attribute() {
        let value = r#"{
            "specversion": "1.0",
            "id": "evt-\u0031",
            "source": "/payments",
            "type": "payment.settled",
            "region": "eu",
            "subject": "account-9",
            "time": "2024-05-01T12:00:00.5Z",
            "sequence": 42,
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "causationid": "evt-0",
            "correlationid": "flow-7",
            "datacontenttype": "application/json",
            "dataschema": "https://schemas.example/p",
            "data": {"amount": 10, "nested": [1, {"id": "not the event id"}]},
            "count": 3,
            "huge": 18446744073709551615,
            "ratio": 0.5,
            "flag": false,
            "nothing": null,
            "object": {"a": 1},
            "list": [1],
            "": "unnamed",
            "esc\"aped": "v"
        }"#;
        let headers = [(
            "content-type",
            Some(&b"Application/CloudEvents+JSON; charset=utf-8"[..]),
        )];
        let out = decode(&record(&headers, Some(value.as_bytes()))).unwrap();
        assert_eq!(
            out,
            Envelope {
                id: "evt-1".into(),
                source: "/payments".into(),
                event_type: "payment.settled".into(),
                subject: "account-9".into(),
                event_time_ms: 1_714_564_800_500,
                sequence: Some(42),
                trace: TraceContext::parse_traceparent(TRACEPARENT.as_bytes()),
                causation_id: "evt-0".into(),
                correlation_id: "flow-7".into(),
                attributes: vec![
                    ("region".into(), text("eu")),
                    ("count".into(), AttributeValue::Integer(3)),
                    ("huge".into(), AttributeValue::Float(u64::MAX as f64)),
                    ("ratio".into(), AttributeValue::Float(0.5)),
                    ("flag".into(), AttributeValue::Boolean(false)),
                    ("esc\"aped".into(), text("v")),
                ],
            }
        );
    }

    #[test]
    fn structured_mode_ignores_binary_headers_and_takes_sequence_strings() {
        let headers = [
            ("ce_id", Some(&b"from-header"[..])),
            ("content-type", Some(STRUCTURED.as_bytes())),
        ];
        let value = br#"{"specversion":"1.0","id":"from-body","source":"s","type":"t",
            "sequence":"0007","data_base64":"AAEC"}"#;
        let out = decode(&record(&headers, Some(value))).unwrap();
        assert_eq!(out.id, "from-body");
        assert_eq!(out.sequence, Some(7));
        assert_eq!(out.event_time_ms, 1_700_000_000_000);
        assert!(out.attributes.is_empty());
        assert_eq!(
            out.field("sequence"),
            Some(crate::envelope::FieldRef::Integer(7))
        );
    }

    #[test]
    fn structured_mode_errors() {
        let base = r#""specversion":"1.0","id":"evt-1","source":"s","type":"t""#;
        let with = |extra: &str| format!("{{{base},{extra}}}");
        let cases: Vec<(String, DecodeErrorClass, &str)> = vec![
            ("{\"id\": ".into(), DecodeErrorClass::InvalidJson, "line 1"),
            (
                format!("{{{base}}} trailing"),
                DecodeErrorClass::InvalidJson,
                "JSON",
            ),
            (
                "[1, 2]".into(),
                DecodeErrorClass::InvalidJson,
                "not a JSON object",
            ),
            (
                "\"text\"".into(),
                DecodeErrorClass::InvalidJson,
                "not a JSON object",
            ),
            (
                with(r#""id":"again""#),
                DecodeErrorClass::InvalidJson,
                "`id` appears more",
            ),
            (
                with(r#""x":1,"x":2"#),
                DecodeErrorClass::InvalidJson,
                "`x` appears more",
            ),
            (
                with(r#""data":1,"data":2"#),
                DecodeErrorClass::InvalidJson,
                "`data` appears",
            ),
            (
                r#"{"id":"evt-1","source":"s","type":"t"}"#.into(),
                DecodeErrorClass::MissingField,
                "specversion",
            ),
            (
                r#"{"specversion":"0.3","id":"evt-1","source":"s","type":"t"}"#.into(),
                DecodeErrorClass::UnsupportedFormat,
                "specversion",
            ),
            (
                r#"{"specversion":1.0,"id":"evt-1","source":"s","type":"t"}"#.into(),
                DecodeErrorClass::InvalidField,
                "specversion",
            ),
            (
                r#"{"specversion":"1.0","source":"s","type":"t"}"#.into(),
                DecodeErrorClass::MissingField,
                "`id`",
            ),
            (
                r#"{"specversion":"1.0","id":"","source":"s","type":"t"}"#.into(),
                DecodeErrorClass::MissingField,
                "`id`",
            ),
            (
                r#"{"specversion":"1.0","id":null,"source":"s","type":"t"}"#.into(),
                DecodeErrorClass::MissingField,
                "`id`",
            ),
            (
                r#"{"specversion":"1.0","id":7,"source":"s","type":"t"}"#.into(),
                DecodeErrorClass::InvalidField,
                "`id`",
            ),
            (
                r#"{"specversion":"1.0","id":"e","type":"t"}"#.into(),
                DecodeErrorClass::MissingField,
                "`source`",
            ),
            (
                r#"{"specversion":"1.0","id":"e","source":"s"}"#.into(),
                DecodeErrorClass::MissingField,
                "`type`",
            ),
            (
                with(r#""subject":{}"#),
                DecodeErrorClass::InvalidField,
                "`subject`",
            ),
            (
                with(r#""time":"secret-time""#),
                DecodeErrorClass::InvalidField,
                "`time`",
            ),
            (
                with(r#""time":1714564800000"#),
                DecodeErrorClass::InvalidField,
                "`time`",
            ),
            (
                with(r#""sequence":"12a""#),
                DecodeErrorClass::InvalidField,
                "`sequence`",
            ),
            (
                with(r#""sequence":-1"#),
                DecodeErrorClass::InvalidField,
                "`sequence`",
            ),
            (
                with(r#""sequence":1.5"#),
                DecodeErrorClass::InvalidField,
                "`sequence`",
            ),
            (
                with(r#""traceparent":"secret-trace""#),
                DecodeErrorClass::InvalidTraceContext,
                "`traceparent`",
            ),
            (
                with(r#""traceparent":17"#),
                DecodeErrorClass::InvalidTraceContext,
                "`traceparent`",
            ),
            (
                with(r#""causationid":true"#),
                DecodeErrorClass::InvalidField,
                "`causationid`",
            ),
        ];
        for (value, expected, named) in cases {
            let error = structured(&value).unwrap_err();
            assert_eq!(error.class, expected, "{value}: {error}");
            assert!(error.message.contains(named), "{value}: {error}");
            assert!(!error.message.contains("secret"), "{error}");
        }
    }

    #[test]
    fn structured_mode_needs_a_utf8_value() {
        let headers = [("content-type", Some(STRUCTURED.as_bytes()))];
        assert_eq!(
            class(decode(&record(&headers, None))),
            DecodeErrorClass::MissingValue
        );
        assert_eq!(
            class(decode(&record(&headers, Some(b"{\"id\":\"\xff\"}")))),
            DecodeErrorClass::InvalidUtf8
        );
    }

    #[test]
    fn structured_detection_uses_the_media_type_only() {
        for content_type in [
            "application/cloudevents+json",
            "APPLICATION/CLOUDEVENTS+JSON",
            "application/cloudevents+json;charset=UTF-8",
            " application/cloudevents+json ; charset=utf-8",
        ] {
            let headers = [("content-type", Some(content_type.as_bytes()))];
            let record = record(&headers, Some(b"{}"));
            assert!(is_structured(&record), "{content_type}");
        }
        for content_type in [
            "application/json",
            "application/cloudevents+jsonx",
            "application/cloudevents-batch+json",
            "",
        ] {
            let headers = [("content-type", Some(content_type.as_bytes()))];
            let record = record(&headers, Some(b"{}"));
            assert!(!is_structured(&record), "{content_type}");
        }
        let headers = [("Content-Type", Some(STRUCTURED.as_bytes()))];
        assert!(is_structured(&record(&headers, None)));
        // The last content-type header counts, even a null one.
        let headers = [
            ("content-type", Some(STRUCTURED.as_bytes())),
            ("content-type", None),
        ];
        assert!(!is_structured(&record(&headers, None)));
    }

    #[test]
    fn reused_envelope_gives_the_same_result() {
        let decoder = CloudEventsDecoder::new(CloudEventsConfig::default());
        let first = binary_headers(&[("ce_region", Some(b"eu")), ("ce_subject", Some(b"a"))]);
        let second = binary_headers(&[("ce_id", Some(b"evt-2"))]);
        let mut out = Envelope::default();
        decoder.decode(&record(&first, None), &mut out).unwrap();
        out.clear();
        decoder.decode(&record(&second, None), &mut out).unwrap();
        assert_eq!(out, decode(&record(&second, None)).unwrap());
        assert_eq!(out.id, "evt-2");
        assert!(out.attributes.is_empty() && out.subject.is_empty());
    }
}
