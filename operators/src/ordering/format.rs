//! What the ordering operator keeps in its store, and the gap records it generates.
//!
//! Store keys (the ordering key is the tagged field bytes of
//! [`breadcrumb_schemas::envelope::FieldRef::append_key_bytes`], self-delimiting):
//! - `h` + key: the key's [`Head`] (expires `key_ttl_ms` of stream time after its last change);
//! - `w` + key + sequence (u64 big-endian): a held record ([`Held`] header, then the
//!   [`breadcrumb_schemas::StoredRecord`] encoding), never expiring: it is deleted when released;
//! - `m:partition`: the partition's stream time and last input offset ([`crate::persist::PartitionMeta`]).
//!
//! Every payload starts with its own version byte. Reading dispatches on it: a new format adds a
//! `decode_vN` and converts to the current struct in `decode` (the migration hook), so old state
//! stays readable and is rewritten in the new format the next time it changes. An unknown version
//! is an error, never a guess.

use smallvec::SmallVec;

use crate::persist::corrupt;
use crate::{OperatorError, Result};

pub(crate) const HEAD_TAG: u8 = b'h';
pub(crate) const HELD_TAG: u8 = b'w';

const HEAD_VERSION: u8 = 1;
const HELD_VERSION: u8 = 1;
const HEAD_FIXED_LEN: usize = 1 + 8 + 8 + 8 + 1 + 8 + 1;
const HELD_HEADER_LEN: usize = 1 + 8 + 8 + 8;

/// A range of sequences given up as missing (both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapRange {
    pub from: u64,
    pub to: u64,
}

/// Where one key stands: its epoch, the next sequence to emit, and the ranges given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The key's current epoch (`0` without an epoch field).
    pub epoch: i64,
    /// First sequence of the epoch: anything below was never expected.
    pub start: u64,
    /// The next sequence to emit; every sequence from `start` below it was emitted or given up.
    pub next: u64,
    /// The highest sequence of a gap range dropped from `gaps` (oldest first) for want of room:
    /// at or below it, a sequence outside `gaps` may have been emitted or given up.
    pub forgotten_through: Option<u64>,
    /// The most recent gap ranges of the epoch, in sequence order, adjacent ranges merged.
    pub gaps: SmallVec<[GapRange; 2]>,
}

impl Head {
    /// A key (or a key's new epoch) starting at `start`.
    pub fn starting(epoch: i64, start: u64) -> Self {
        Self {
            epoch,
            start,
            next: start,
            forgotten_through: None,
            gaps: SmallVec::new(),
        }
    }

    /// Gives up `from..=to` (just below `next`), keeping at most `max_ranges` ranges.
    pub fn give_up(&mut self, from: u64, to: u64, max_ranges: usize) {
        match self.gaps.last_mut() {
            Some(last) if last.to.checked_add(1) == Some(from) => last.to = to,
            _ => self.gaps.push(GapRange { from, to }),
        }
        while self.gaps.len() > max_ranges {
            let dropped = self.gaps.remove(0);
            self.forgotten_through = Some(
                self.forgotten_through
                    .map_or(dropped.to, |through| through.max(dropped.to)),
            );
        }
    }

    /// Whether `sequence` (below `next`) lies in a remembered gap range.
    pub fn in_gap(&self, sequence: u64) -> bool {
        // Few ranges, sorted: a linear scan from the newest is the common case's shortest.
        self.gaps
            .iter()
            .rev()
            .any(|range| range.from <= sequence && sequence <= range.to)
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(HEAD_VERSION);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.start.to_be_bytes());
        out.extend_from_slice(&self.next.to_be_bytes());
        out.push(u8::from(self.forgotten_through.is_some()));
        out.extend_from_slice(&self.forgotten_through.unwrap_or(0).to_be_bytes());
        // `max_gap_ranges_per_key` is validated to at most 255.
        out.push(self.gaps.len() as u8);
        for range in &self.gaps {
            out.extend_from_slice(&range.from.to_be_bytes());
            out.extend_from_slice(&range.to.to_be_bytes());
        }
    }

    /// Decodes a stored head of any known version (public for state inspection).
    pub fn decode(bytes: &[u8], operator: &str) -> Result<Self> {
        match bytes.first() {
            Some(&HEAD_VERSION) => Self::decode_v1(bytes, operator),
            Some(&found) => Err(OperatorError::UnsupportedPayload {
                operator: operator.to_owned(),
                found,
            }),
            None => Err(corrupt(operator, "empty ordering head")),
        }
    }

    fn decode_v1(bytes: &[u8], operator: &str) -> Result<Self> {
        if bytes.len() < HEAD_FIXED_LEN {
            return Err(corrupt(operator, "ordering head shorter than its fields"));
        }
        let count = bytes[HEAD_FIXED_LEN - 1] as usize;
        if bytes.len() != HEAD_FIXED_LEN + 16 * count {
            return Err(corrupt(operator, "ordering head has the wrong length"));
        }
        let gaps = (0..count)
            .map(|index| {
                let at = HEAD_FIXED_LEN + 16 * index;
                GapRange {
                    from: u64_at(bytes, at),
                    to: u64_at(bytes, at + 8),
                }
            })
            .collect();
        Ok(Self {
            epoch: u64_at(bytes, 1) as i64,
            start: u64_at(bytes, 9),
            next: u64_at(bytes, 17),
            forgotten_through: (bytes[25] != 0).then(|| u64_at(bytes, 26)),
            gaps,
        })
    }
}

/// The header of a held record's payload; the record's encoding follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Epoch of the key when the record was held.
    pub epoch: i64,
    /// Partition stream time when the record was held: its gap timeout counts from here.
    pub held_at_ms: i64,
    pub event_time_ms: i64,
}

impl Held {
    /// Writes the header, then `record` (a `StoredRecord` encoding), into `out`.
    pub(crate) fn encode(&self, record: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.push(HELD_VERSION);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.held_at_ms.to_be_bytes());
        out.extend_from_slice(&self.event_time_ms.to_be_bytes());
        out.extend_from_slice(record);
    }

    /// Decodes a held payload of any known version into its header and record bytes.
    pub fn decode<'a>(bytes: &'a [u8], operator: &str) -> Result<(Self, &'a [u8])> {
        match bytes.first() {
            Some(&HELD_VERSION) if bytes.len() > HELD_HEADER_LEN => Ok((
                Self {
                    epoch: u64_at(bytes, 1) as i64,
                    held_at_ms: u64_at(bytes, 9) as i64,
                    event_time_ms: u64_at(bytes, 17) as i64,
                },
                &bytes[HELD_HEADER_LEN..],
            )),
            Some(&HELD_VERSION) | None => Err(corrupt(operator, "held record is truncated")),
            Some(&found) => Err(OperatorError::UnsupportedPayload {
                operator: operator.to_owned(),
                found,
            }),
        }
    }
}

/// Builds `h` + key into `out`.
pub(crate) fn head_key(key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(HEAD_TAG);
    out.extend_from_slice(key);
}

/// Builds `w` + key + sequence into `out`.
pub(crate) fn held_key(key: &[u8], sequence: u64, out: &mut Vec<u8>) {
    out.clear();
    out.push(HELD_TAG);
    out.extend_from_slice(key);
    out.extend_from_slice(&sequence.to_be_bytes());
}

/// Splits a held record's store key (without the tag) into the ordering key and the sequence.
pub(crate) fn split_held_key(key: &[u8]) -> Option<(&[u8], u64)> {
    let at = key.len().checked_sub(8)?;
    let (key, sequence) = key.split_at(at);
    Some((key, u64::from_be_bytes(sequence.try_into().ok()?)))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("length checked"))
}

// ---------------------------------------------------------------------------------------------
// Gap records

/// Why a gap was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GapReason {
    /// The partition's stream time passed `gap_timeout_ms` after the oldest held event.
    EventTimeTimeout,
    /// `gap_timeout_processing_ms` of processing time passed with the key waiting.
    ProcessingTimeTimeout,
    /// The key's or the partition's waiting budget was exceeded.
    Overflow,
    /// A higher epoch started for the key: the old epoch's holes are given up.
    EpochChange,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::EventTimeTimeout => "event_time_timeout",
            GapReason::ProcessingTimeTimeout => "processing_time_timeout",
            GapReason::Overflow => "overflow",
            GapReason::EpochChange => "epoch_change",
        }
    }
}

/// Everything a gap record says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gap<'a> {
    pub pipeline: &'a str,
    pub key_fields: &'a [String],
    /// The ordering key's tagged field bytes.
    pub key: &'a [u8],
    /// `None` without an epoch field.
    pub epoch: Option<i64>,
    pub from_sequence: u64,
    pub to_sequence: u64,
    pub waited_ms: i64,
    pub reason: GapReason,
    /// Stream time (or processing time, for processing-time timeouts) when it was given up.
    pub declared_at_ms: i64,
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
}

/// One field of a tagged key, read back.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KeyPart<'a> {
    Text(&'a str),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Bytes that do not follow the tagged format (never written by this crate).
    Unreadable,
}

/// Splits `len` bytes off the front of `bytes`.
fn fixed(bytes: &[u8], len: usize) -> Option<(&[u8], &[u8])> {
    (bytes.len() >= len).then(|| bytes.split_at(len))
}

/// Reads the fields of a key built with `append_key_bytes`.
fn key_parts(mut bytes: &[u8]) -> impl Iterator<Item = KeyPart<'_>> {
    std::iter::from_fn(move || {
        let (&tag, rest) = bytes.split_first()?;
        let (part, rest) = match tag {
            b's' => fixed(rest, 4).and_then(|(len, rest)| {
                let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
                let (text, rest) = fixed(rest, len)?;
                Some((KeyPart::Text(std::str::from_utf8(text).ok()?), rest))
            }),
            b'i' => fixed(rest, 8).map(|(value, rest)| {
                (
                    KeyPart::Integer(i64::from_be_bytes(value.try_into().unwrap())),
                    rest,
                )
            }),
            b'f' => fixed(rest, 8).map(|(value, rest)| {
                (
                    KeyPart::Float(f64::from_bits(u64::from_be_bytes(
                        value.try_into().unwrap(),
                    ))),
                    rest,
                )
            }),
            b'b' => fixed(rest, 1).map(|(value, rest)| (KeyPart::Boolean(value[0] != 0), rest)),
            _ => None,
        }
        .unwrap_or((KeyPart::Unreadable, &[][..]));
        bytes = rest;
        Some(part)
    })
}

fn write_part(part: KeyPart<'_>, quoted: bool, out: &mut Vec<u8>) {
    match part {
        KeyPart::Text(text) if quoted => write_json_string(text, out),
        KeyPart::Text(text) => out.extend_from_slice(text.as_bytes()),
        KeyPart::Integer(number) => {
            out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes())
        }
        KeyPart::Float(number) if number.is_finite() => {
            out.extend_from_slice(format!("{number}").as_bytes())
        }
        KeyPart::Float(_) | KeyPart::Unreadable => out.extend_from_slice(b"null"),
        KeyPart::Boolean(flag) => out.extend_from_slice(if flag { b"true" } else { b"false" }),
    }
}

fn write_json_string(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &byte in text.as_bytes() {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(byte >> 4) as usize]);
                out.push(HEX[(byte & 0xf) as usize]);
            }
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

impl Gap<'_> {
    /// The gap record's Kafka key: the key field's value as text for a one-field key, a JSON
    /// array of the values otherwise, so gaps of one key land on one partition.
    pub(crate) fn write_key(&self, out: &mut Vec<u8>) {
        out.clear();
        if self.key_fields.len() == 1 {
            if let Some(part) = key_parts(self.key).next() {
                write_part(part, false, out);
            }
            return;
        }
        out.push(b'[');
        for (index, part) in key_parts(self.key).enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_part(part, true, out);
        }
        out.push(b']');
    }

    /// The gap record's value, JSON (one line):
    ///
    /// ```json
    /// {"type":"breadcrumb.ordering.gap","pipeline":"payments","key":{"subject":"account-7"},
    ///  "epoch":null,"from_sequence":5,"to_sequence":7,"missing":3,"waited_ms":60000,
    ///  "reason":"event_time_timeout","declared_at_ms":1700000060000,
    ///  "source":{"topic":"payments","partition":0,"offset":42}}
    /// ```
    pub(crate) fn write_value(&self, out: &mut Vec<u8>) {
        let mut number = itoa::Buffer::new();
        out.clear();
        out.extend_from_slice(br#"{"type":"breadcrumb.ordering.gap","pipeline":"#);
        write_json_string(self.pipeline, out);
        out.extend_from_slice(br#","key":{"#);
        for (index, (field, part)) in self.key_fields.iter().zip(key_parts(self.key)).enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_json_string(field, out);
            out.push(b':');
            write_part(part, true, out);
        }
        out.extend_from_slice(br#"},"epoch":"#);
        match self.epoch {
            Some(epoch) => out.extend_from_slice(number.format(epoch).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","from_sequence":"#);
        out.extend_from_slice(number.format(self.from_sequence).as_bytes());
        out.extend_from_slice(br#","to_sequence":"#);
        out.extend_from_slice(number.format(self.to_sequence).as_bytes());
        out.extend_from_slice(br#","missing":"#);
        let missing = u128::from(self.to_sequence - self.from_sequence) + 1;
        out.extend_from_slice(number.format(missing).as_bytes());
        out.extend_from_slice(br#","waited_ms":"#);
        out.extend_from_slice(number.format(self.waited_ms).as_bytes());
        out.extend_from_slice(br#","reason":""#);
        out.extend_from_slice(self.reason.as_str().as_bytes());
        out.extend_from_slice(br#"","declared_at_ms":"#);
        out.extend_from_slice(number.format(self.declared_at_ms).as_bytes());
        out.extend_from_slice(br#","source":{"topic":"#);
        write_json_string(self.source_topic, out);
        out.extend_from_slice(br#","partition":"#);
        out.extend_from_slice(number.format(self.source_partition).as_bytes());
        out.extend_from_slice(br#","offset":"#);
        out.extend_from_slice(number.format(self.source_offset).as_bytes());
        out.extend_from_slice(b"}}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use breadcrumb_schemas::envelope::FieldRef;

    #[test]
    fn head_round_trips_and_rejects_unknown_versions() {
        let mut head = Head::starting(-3, 10);
        head.next = 40;
        head.give_up(12, 13, 2);
        head.give_up(14, 15, 2); // merged with the previous range
        head.give_up(20, 21, 2);
        head.give_up(30, 31, 2); // drops 12..=15
        assert_eq!(
            head.gaps.as_slice(),
            &[GapRange { from: 20, to: 21 }, GapRange { from: 30, to: 31 }]
        );
        assert_eq!(head.forgotten_through, Some(15));
        assert!(head.in_gap(21) && head.in_gap(30) && !head.in_gap(25) && !head.in_gap(13));

        let mut bytes = Vec::new();
        head.encode(&mut bytes);
        assert_eq!(Head::decode(&bytes, "t").unwrap(), head);
        assert!(Head::decode(&bytes[..bytes.len() - 1], "t").is_err());
        assert!(Head::decode(&[], "t").is_err());
        bytes[0] = 2;
        assert!(matches!(
            Head::decode(&bytes, "t"),
            Err(OperatorError::UnsupportedPayload { found: 2, .. })
        ));
    }

    #[test]
    fn held_and_meta_round_trip() {
        let held = Held {
            epoch: 2,
            held_at_ms: -5,
            event_time_ms: 7,
        };
        let mut bytes = Vec::new();
        held.encode(b"record", &mut bytes);
        assert_eq!(Held::decode(&bytes, "t").unwrap(), (held, &b"record"[..]));
        assert!(Held::decode(&bytes[..HELD_HEADER_LEN], "t").is_err());
        bytes[0] = 9;
        assert!(Held::decode(&bytes, "t").is_err());

        let mut key = Vec::new();
        held_key(b"sabc", 42, &mut key);
        assert_eq!(split_held_key(&key[1..]), Some((&b"sabc"[..], 42)));
    }

    #[test]
    fn gap_record_renders_typed_keys_as_json() {
        let mut key = Vec::new();
        FieldRef::Text("acc\"7\n").append_key_bytes(&mut key);
        FieldRef::Integer(-4).append_key_bytes(&mut key);
        FieldRef::Boolean(true).append_key_bytes(&mut key);
        FieldRef::Float(1.5).append_key_bytes(&mut key);
        let fields = [
            "subject".to_owned(),
            "tenant".into(),
            "vip".into(),
            "w".into(),
        ];
        let gap = Gap {
            pipeline: "pay",
            key_fields: &fields,
            key: &key,
            epoch: Some(2),
            from_sequence: 5,
            to_sequence: 7,
            waited_ms: 60_000,
            reason: GapReason::Overflow,
            declared_at_ms: 1_000,
            source_topic: "payments",
            source_partition: 3,
            source_offset: 42,
        };
        let mut out = Vec::new();
        gap.write_value(&mut out);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "breadcrumb.ordering.gap", "pipeline": "pay",
                "key": {"subject": "acc\"7\n", "tenant": -4, "vip": true, "w": 1.5},
                "epoch": 2, "from_sequence": 5, "to_sequence": 7, "missing": 3,
                "waited_ms": 60000, "reason": "overflow", "declared_at_ms": 1000,
                "source": {"topic": "payments", "partition": 3, "offset": 42}
            })
        );
        gap.write_key(&mut out);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
            serde_json::json!(["acc\"7\n", -4, true, 1.5])
        );

        let mut single = Vec::new();
        FieldRef::Text("account-7").append_key_bytes(&mut single);
        let one = Gap {
            key_fields: &fields[..1],
            key: &single,
            epoch: None,
            ..gap
        };
        one.write_key(&mut out);
        assert_eq!(out, b"account-7");
        one.write_value(&mut out);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["key"], serde_json::json!({"subject": "account-7"}));
        assert_eq!(value["epoch"], serde_json::Value::Null);
    }
}
