//! Pieces shared by the decoders: a borrowed JSON scalar, field parsers and error helpers.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::config::TimeFallback;
use crate::{AttributeValue, DecodeError, DecodeErrorClass, RawRecord};

/// One JSON value as far as a decoder cares: scalars kept (strings borrowed from the input when
/// they need no unescaping), objects and arrays reduced to their kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum Scalar<'de> {
    /// Not present at all.
    #[default]
    Missing,
    Null,
    Str(Cow<'de, str>),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    Object,
    Array,
}

impl Scalar<'_> {
    /// Absent or JSON null.
    pub(crate) fn is_absent(&self) -> bool {
        matches!(self, Scalar::Missing | Scalar::Null)
    }

    /// The attribute value of a string, number or boolean; `None` for anything else. Integers
    /// beyond `i64` become floats.
    pub(crate) fn to_attribute(&self) -> Option<AttributeValue> {
        match self {
            Scalar::Str(text) => Some(AttributeValue::String(text.as_ref().to_owned())),
            Scalar::I64(number) => Some(AttributeValue::Integer(*number)),
            Scalar::U64(number) => Some(match i64::try_from(*number) {
                Ok(number) => AttributeValue::Integer(number),
                Err(_) => AttributeValue::Float(*number as f64),
            }),
            Scalar::F64(number) => Some(AttributeValue::Float(*number)),
            Scalar::Bool(flag) => Some(AttributeValue::Boolean(*flag)),
            Scalar::Missing | Scalar::Null | Scalar::Object | Scalar::Array => None,
        }
    }
}

/// Deserializes any JSON value into a [`Scalar`], skipping over the contents of objects and
/// arrays.
pub(crate) struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(value))
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(value)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

/// An RFC 3339 timestamp (`2024-05-01T12:00:00.250+02:00`) as milliseconds since the Unix epoch,
/// sub-millisecond digits truncated toward the past.
pub(crate) fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let time = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// A sequence number written as decimal digits only (leading zeros allowed, no sign).
pub(crate) fn parse_decimal_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A sequence number from a JSON string of decimal digits or a non-negative integer.
pub(crate) fn scalar_to_sequence(value: &Scalar<'_>) -> Option<u64> {
    match value {
        Scalar::Str(text) => parse_decimal_u64(text),
        Scalar::U64(number) => Some(*number),
        Scalar::I64(number) => u64::try_from(*number).ok(),
        _ => None,
    }
}

/// The event time when the event has none, per `fallback`. `what` names the missing field.
pub(crate) fn fallback_time(
    fallback: TimeFallback,
    record: &RawRecord<'_>,
    what: &str,
) -> Result<i64, DecodeError> {
    match (fallback, record.timestamp_ms) {
        (TimeFallback::RecordTimestamp, Some(timestamp_ms)) => Ok(timestamp_ms),
        (TimeFallback::RecordTimestamp, None) => Err(DecodeError::new(
            DecodeErrorClass::MissingField,
            format!("{what} is absent and the record has no timestamp"),
        )),
        (TimeFallback::Reject, _) => Err(DecodeError::new(
            DecodeErrorClass::MissingField,
            format!("{what} is absent"),
        )),
    }
}

/// Rejects values above the configured size, before any parsing.
pub(crate) fn check_size(value: &[u8], max_value_bytes: usize) -> Result<(), DecodeError> {
    if value.len() > max_value_bytes {
        return Err(DecodeError::new(
            DecodeErrorClass::Oversized,
            format!(
                "value is {} bytes, above the limit of {max_value_bytes} bytes",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// The value as text, or `InvalidUtf8` naming the byte offset of the first bad sequence.
pub(crate) fn value_as_str(value: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(value).map_err(|error| {
        DecodeError::new(
            DecodeErrorClass::InvalidUtf8,
            format!("value is not valid UTF-8 (at byte {})", error.valid_up_to()),
        )
    })
}

/// A header value as text, or `InvalidUtf8` naming the header.
pub(crate) fn header_as_str<'a>(name: &str, value: &'a [u8]) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(value).map_err(|_| {
        DecodeError::new(
            DecodeErrorClass::InvalidUtf8,
            format!("header `{name}` is not valid UTF-8"),
        )
    })
}

/// `InvalidJson` for a syntax error, with its position only: serde_json messages for type errors
/// may quote the input, which must not reach logs or headers.
pub(crate) fn invalid_json(error: &serde_json::Error) -> DecodeError {
    DecodeError::new(
        DecodeErrorClass::InvalidJson,
        format!(
            "value is not well-formed JSON (line {}, column {})",
            error.line(),
            error.column()
        ),
    )
}

/// Parses the whole of `text` with `seed`: trailing characters other than whitespace are an error.
pub(crate) fn parse_json<'de, S: DeserializeSeed<'de>>(
    text: &'de str,
    seed: S,
) -> Result<S::Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = seed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:00:00Z"),
            Some(1_714_564_800_000)
        );
        // Offsets move the instant.
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T14:00:00+02:00"),
            Some(1_714_564_800_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T07:30:00-04:30"),
            Some(1_714_564_800_000)
        );
        // Fractional seconds, of any length; below a millisecond is truncated.
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:00:00.25Z"),
            Some(1_714_564_800_250)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:00:00.123456789Z"),
            Some(1_714_564_800_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:00:00.1+02:00"),
            Some(1_714_564_800_100 - 7_200_000)
        );
        // Before the epoch, truncation is toward the past.
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59.9995Z"), Some(-1));
        // Lower-case separators are allowed by RFC 3339.
        assert_eq!(
            parse_rfc3339_ms("2024-05-01t12:00:00z"),
            Some(1_714_564_800_000)
        );
    }

    #[test]
    fn malformed_times() {
        for text in [
            "",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2024-05-01 12:00:00",
            "2024-13-01T12:00:00Z",
            "2024-05-01T25:00:00Z",
            "2024-05-01T12:00:00+2:00",
            "1714564800000",
            "yesterday",
            "2024-05-01T12:00:00Zjunk",
        ] {
            assert_eq!(parse_rfc3339_ms(text), None, "{text}");
        }
    }

    #[test]
    fn sequences() {
        assert_eq!(parse_decimal_u64("0"), Some(0));
        assert_eq!(parse_decimal_u64("000042"), Some(42));
        assert_eq!(parse_decimal_u64("18446744073709551615"), Some(u64::MAX));
        for text in [
            "",
            "+1",
            "-1",
            "1.0",
            " 1",
            "18446744073709551616",
            "1e3",
            "٣",
        ] {
            assert_eq!(parse_decimal_u64(text), None, "{text}");
        }
        assert_eq!(scalar_to_sequence(&Scalar::I64(-1)), None);
        assert_eq!(scalar_to_sequence(&Scalar::I64(7)), Some(7));
        assert_eq!(scalar_to_sequence(&Scalar::U64(u64::MAX)), Some(u64::MAX));
        assert_eq!(scalar_to_sequence(&Scalar::F64(1.0)), None);
        assert_eq!(scalar_to_sequence(&Scalar::Bool(true)), None);
    }

    #[test]
    fn scalars_borrow_unescaped_strings() {
        let text = r#"["plain", "esc\"aped", {"a": [1]}, [], null, -3, 3, 1.5, true]"#;
        let values: Vec<Scalar<'_>> = parse_json(text, SeqOfScalars).unwrap();
        assert!(matches!(&values[0], Scalar::Str(Cow::Borrowed("plain"))));
        assert!(matches!(&values[1], Scalar::Str(Cow::Owned(text)) if text == "esc\"aped"));
        assert_eq!(
            values[2..],
            [
                Scalar::Object,
                Scalar::Array,
                Scalar::Null,
                Scalar::I64(-3),
                Scalar::U64(3),
                Scalar::F64(1.5),
                Scalar::Bool(true)
            ]
        );
    }

    #[test]
    fn attribute_conversion() {
        assert_eq!(
            Scalar::U64(u64::MAX).to_attribute(),
            Some(AttributeValue::Float(u64::MAX as f64))
        );
        assert_eq!(
            Scalar::U64(5).to_attribute(),
            Some(AttributeValue::Integer(5))
        );
        assert_eq!(Scalar::Null.to_attribute(), None);
        assert_eq!(Scalar::Object.to_attribute(), None);
    }

    struct SeqOfScalars;

    impl<'de> DeserializeSeed<'de> for SeqOfScalars {
        type Value = Vec<Scalar<'de>>;

        fn deserialize<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for SeqOfScalars {
        type Value = Vec<Scalar<'de>>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("an array")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(value) = seq.next_element_seed(ScalarSeed)? {
                out.push(value);
            }
            Ok(out)
        }
    }
}
