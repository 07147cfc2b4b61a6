//! The versioned payloads of the sampling store.
//!
//! Keys (within the partition's scope):
//! - `M`: [`PartitionMeta`], the partition's event time and rate budgets.
//! - `S` + trace id: a pending trace's [`TraceSummary`] and how many fragments it has stored.
//! - `F` + trace id + fragment number (u32 BE): `[1][bytes]`, the spans a commit added to a
//!   pending trace, as an `ExportTraceServiceRequest` encoding; a trace's buffer is its fragments
//!   concatenated in number order.
//! - `D` + trace id: [`StoredDecision`] (with its policy's name), expiring `decision_ttl_ms` of event time after it was
//!   made.
//!
//! Every payload starts with a version byte; a version this build does not know is an error.

use breadcrumb_schemas::otlp::{TraceId, TRACE_ID_LEN};
use smallvec::SmallVec;

use super::policy::{RateState, TraceSummary};
use crate::persist::corrupt;
use crate::{OperatorError, Result};

pub const META_KEY: &[u8] = b"M";
pub const SUMMARY_TAG: u8 = b'S';
pub const FRAGMENT_TAG: u8 = b'F';
pub const DECISION_TAG: u8 = b'D';

const VERSION: u8 = 1;

fn check_version(payload: &[u8], operator: &str) -> Result<()> {
    match payload.first() {
        Some(&VERSION) => Ok(()),
        Some(&found) => Err(OperatorError::UnsupportedPayload {
            operator: operator.to_owned(),
            found,
        }),
        None => Err(corrupt(operator, "empty payload")),
    }
}

/// Reads big-endian integers off a payload.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.rest.split_first_chunk::<N>()?;
        self.rest = rest;
        Some(*head)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take::<8>().map(i64::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_be_bytes)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take::<2>().map(u16::from_be_bytes)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[byte]| byte)
    }
}

pub fn trace_key(tag: u8, trace_id: &TraceId, out: &mut Vec<u8>) {
    out.clear();
    out.push(tag);
    out.extend_from_slice(trace_id);
}

pub fn fragment_key(trace_id: &TraceId, number: u32, out: &mut Vec<u8>) {
    trace_key(FRAGMENT_TAG, trace_id, out);
    out.extend_from_slice(&number.to_be_bytes());
}

/// The trace id (and fragment number) of a store key read back.
pub fn split_trace_key(key: &[u8]) -> Option<(TraceId, Option<u32>)> {
    let id: TraceId = key.get(1..1 + TRACE_ID_LEN)?.try_into().ok()?;
    match key.len() - 1 - TRACE_ID_LEN {
        0 => Some((id, None)),
        4 => Some((
            id,
            Some(u32::from_be_bytes(key[1 + TRACE_ID_LEN..].try_into().ok()?)),
        )),
        _ => None,
    }
}

/// A pending trace's summary as stored, with the number of its stored fragments.
pub fn encode_summary(summary: &TraceSummary, fragments: u32, out: &mut Vec<u8>) {
    out.clear();
    out.push(VERSION);
    out.extend_from_slice(&summary.first_seen_ms.to_be_bytes());
    out.extend_from_slice(&summary.last_seen_ms.to_be_bytes());
    out.extend_from_slice(&summary.span_count.to_be_bytes());
    out.extend_from_slice(&summary.min_start_ns.to_be_bytes());
    out.extend_from_slice(&summary.max_end_ns.to_be_bytes());
    out.push(u8::from(summary.root_seen));
    out.push(summary.status_mask);
    out.extend_from_slice(&summary.matched.to_be_bytes());
    out.extend_from_slice(&fragments.to_be_bytes());
}

pub fn decode_summary(payload: &[u8], operator: &str) -> Result<(TraceSummary, u32)> {
    check_version(payload, operator)?;
    let mut cursor = Cursor {
        rest: &payload[1..],
    };
    let decoded = (|| {
        let summary = TraceSummary {
            first_seen_ms: cursor.i64()?,
            last_seen_ms: cursor.i64()?,
            span_count: cursor.u32()?,
            min_start_ns: cursor.u64()?,
            max_end_ns: cursor.u64()?,
            root_seen: cursor.u8()? != 0,
            status_mask: cursor.u8()?,
            matched: cursor.u64()?,
        };
        Some((summary, cursor.u32()?))
    })();
    decoded.ok_or_else(|| corrupt(operator, "truncated trace summary"))
}

/// The fragment payload: version byte, then the span bytes.
pub fn encode_fragment_payload(bytes: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(VERSION);
    out.extend_from_slice(bytes);
}

pub fn decode_fragment_payload<'a>(payload: &'a [u8], operator: &str) -> Result<&'a [u8]> {
    check_version(payload, operator)?;
    Ok(&payload[1..])
}

/// How a trace was completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Root span ended and no span arrived for `quiet_period_ms`.
    QuietPeriod,
    /// `max_wait_ms` passed since the first span.
    MaxWait,
    /// Decided early by the overflow policy.
    Forced,
}

impl Completion {
    pub const ALL: [Completion; 3] = [
        Completion::QuietPeriod,
        Completion::MaxWait,
        Completion::Forced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Completion::QuietPeriod => "quiet_period",
            Completion::MaxWait => "max_wait",
            Completion::Forced => "forced",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(code as usize).copied()
    }
}

/// A decision remembered for late spans (and for the HTTP query API).
///
/// Version 1: `[1][keep][completion][decided_at_ms]`. Version 2 appends the deciding policy's
/// name (`[len u8][UTF-8]`, cut at 255 bytes), so a query can say which policy decided; version
/// 1 payloads still decode, with no policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredDecision {
    pub keep: bool,
    pub completion: Completion,
    pub decided_at_ms: i64,
}

const DECISION_VERSION_WITH_POLICY: u8 = 2;
/// Longest policy name stored with a decision, bytes.
const MAX_STORED_POLICY_BYTES: usize = 255;

impl StoredDecision {
    /// Encodes the decision with its policy's name; fits on the stack for names up to 52 bytes.
    pub fn encode(&self, policy: &str) -> SmallVec<[u8; 64]> {
        let mut cut = policy.len().min(MAX_STORED_POLICY_BYTES);
        while !policy.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut out = SmallVec::new();
        out.push(DECISION_VERSION_WITH_POLICY);
        out.push(u8::from(self.keep));
        out.push(self.completion.code());
        out.extend_from_slice(&self.decided_at_ms.to_be_bytes());
        out.push(cut as u8);
        out.extend_from_slice(&policy.as_bytes()[..cut]);
        out
    }

    pub fn decode(payload: &[u8], operator: &str) -> Result<Self> {
        Self::decode_with_policy(payload, operator).map(|(decision, _)| decision)
    }

    /// The decision and, from version 2 on, its policy's name.
    pub fn decode_with_policy<'a>(
        payload: &'a [u8],
        operator: &str,
    ) -> Result<(Self, Option<&'a str>)> {
        let version = match payload.first() {
            Some(&DECISION_VERSION_WITH_POLICY) => DECISION_VERSION_WITH_POLICY,
            _ => {
                check_version(payload, operator)?;
                VERSION
            }
        };
        let mut cursor = Cursor {
            rest: &payload[1..],
        };
        let decision = (|| {
            Some(Self {
                keep: cursor.u8()? != 0,
                completion: Completion::from_code(cursor.u8()?)?,
                decided_at_ms: cursor.i64()?,
            })
        })()
        .ok_or_else(|| corrupt(operator, "truncated decision"))?;
        if version == VERSION {
            return Ok((decision, None));
        }
        let policy = cursor
            .u8()
            .and_then(|len| cursor.rest.get(..usize::from(len)))
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .ok_or_else(|| corrupt(operator, "truncated decision policy"))?;
        Ok((decision, Some(policy)))
    }
}

/// The partition's event time and rate budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMeta {
    /// Highest span end time seen, milliseconds (`i64::MIN` before the first span).
    pub watermark_ms: i64,
    pub rates: Vec<RateState>,
}

impl PartitionMeta {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(VERSION);
        out.extend_from_slice(&self.watermark_ms.to_be_bytes());
        out.extend_from_slice(&(self.rates.len() as u16).to_be_bytes());
        for rate in &self.rates {
            out.extend_from_slice(&rate.second.to_be_bytes());
            out.extend_from_slice(&rate.spent.to_be_bytes());
        }
    }

    pub fn decode(payload: &[u8], operator: &str) -> Result<Self> {
        check_version(payload, operator)?;
        let mut cursor = Cursor {
            rest: &payload[1..],
        };
        (|| {
            let watermark_ms = cursor.i64()?;
            let count = cursor.u16()?;
            let rates = (0..count)
                .map(|_| {
                    Some(RateState {
                        second: cursor.i64()?,
                        spent: cursor.u64()?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Self {
                watermark_ms,
                rates,
            })
        })()
        .ok_or_else(|| corrupt(operator, "truncated partition meta"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_reject_unknown_versions() {
        let summary = TraceSummary {
            first_seen_ms: -5,
            last_seen_ms: 7,
            span_count: 3,
            min_start_ns: 11,
            max_end_ns: 13,
            root_seen: true,
            status_mask: 5,
            matched: 1 << 40,
        };
        let mut payload = Vec::new();
        encode_summary(&summary, 9, &mut payload);
        assert_eq!(decode_summary(&payload, "op").unwrap(), (summary, 9));
        assert!(decode_summary(&payload[..20], "op").is_err());
        payload[0] = 2;
        assert!(matches!(
            decode_summary(&payload, "op"),
            Err(OperatorError::UnsupportedPayload { found: 2, .. })
        ));

        let decision = StoredDecision {
            keep: true,
            completion: Completion::Forced,
            decided_at_ms: 42,
        };
        let encoded = decision.encode("errors");
        assert_eq!(
            StoredDecision::decode_with_policy(&encoded, "op").unwrap(),
            (decision, Some("errors"))
        );
        assert!(!encoded.spilled(), "a short policy name stays on the stack");
        assert!(StoredDecision::decode(&encoded[..encoded.len() - 1], "op").is_err());
        // Version 1 (no policy) still decodes.
        let mut v1 = vec![1, 1, Completion::Forced.code()];
        v1.extend_from_slice(&42i64.to_be_bytes());
        assert_eq!(
            StoredDecision::decode_with_policy(&v1, "op").unwrap(),
            (decision, None)
        );
        // A name longer than 255 bytes is cut at a character boundary.
        let long = "é".repeat(200);
        let encoded = decision.encode(&long);
        let (_, policy) = StoredDecision::decode_with_policy(&encoded, "op").unwrap();
        assert_eq!(policy.map(str::len), Some(254));

        let meta = PartitionMeta {
            watermark_ms: 99,
            rates: vec![RateState {
                second: 1,
                spent: 2,
            }],
        };
        meta.encode(&mut payload);
        assert_eq!(PartitionMeta::decode(&payload, "op").unwrap(), meta);

        let mut key = Vec::new();
        fragment_key(&[7; 16], 3, &mut key);
        assert_eq!(split_trace_key(&key), Some(([7; 16], Some(3))));
        trace_key(SUMMARY_TAG, &[7; 16], &mut key);
        assert_eq!(split_trace_key(&key), Some(([7; 16], None)));
        assert_eq!(split_trace_key(b"S12"), None);
    }
}
