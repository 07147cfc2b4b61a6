//! The persisted value format, shared by RocksDB and the changelog topics.
//!
//! ```text
//! value  = version:u8 (=1) | expire_at_ms:i64 BE | payload
//! ```
//! `expire_at_ms` is the event time at which the entry stops counting ([`NO_EXPIRY`] for never);
//! the payload belongs to the operator, which versions its own bytes. A changelog record's key is
//! the store key, its value this encoding (null for a tombstone), and its
//! [`INPUT_OFFSET_HEADER`] the offset of the input record whose processing wrote it.
//!
//! Migration is explicit: a reader matches on the version byte, and a version it does not know
//! is an error, never a guess.

use crate::{Result, StateError};

/// The format version written by this build.
pub const FORMAT_VERSION: u8 = 1;
/// `expire_at_ms` of an entry that never expires.
pub const NO_EXPIRY: i64 = i64::MAX;
/// Changelog header carrying the input offset that produced the record (8 bytes, big-endian).
pub const INPUT_OFFSET_HEADER: &str = "breadcrumb-input-offset";

const HEADER_LEN: usize = 9;

/// A decoded persisted value, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredValue<'a> {
    pub expire_at_ms: i64,
    pub payload: &'a [u8],
}

impl<'a> StoredValue<'a> {
    /// Decodes `bytes`, rejecting unknown versions and truncated values.
    pub fn decode(bytes: &'a [u8], store: &str) -> Result<Self> {
        let Some((&version, rest)) = bytes.split_first() else {
            return Err(corrupt(store, "empty value"));
        };
        match version {
            1 => {
                if bytes.len() < HEADER_LEN {
                    return Err(corrupt(store, "value shorter than its header"));
                }
                let mut expire = [0u8; 8];
                expire.copy_from_slice(&rest[..8]);
                Ok(StoredValue {
                    expire_at_ms: i64::from_be_bytes(expire),
                    payload: &bytes[HEADER_LEN..],
                })
            }
            found => Err(StateError::UnsupportedFormat {
                found,
                supported: FORMAT_VERSION,
            }),
        }
    }

    /// Encodes a value in the current format.
    pub fn encode(expire_at_ms: i64, payload: &[u8]) -> Box<[u8]> {
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(&value_header(expire_at_ms));
        bytes.extend_from_slice(payload);
        bytes.into_boxed_slice()
    }
}

/// The header of a value in the current format; the payload follows it.
pub(crate) fn value_header(expire_at_ms: i64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0] = FORMAT_VERSION;
    header[1..].copy_from_slice(&expire_at_ms.to_be_bytes());
    header
}

/// The expiry time of a value encoded by this build; `None` if it is not in the current format.
pub(crate) fn encoded_expire_at(bytes: &[u8]) -> Option<i64> {
    match bytes {
        [FORMAT_VERSION, expire @ ..] if expire.len() >= 8 => {
            Some(i64::from_be_bytes(expire[..8].try_into().ok()?))
        }
        _ => None,
    }
}

fn corrupt(store: &str, reason: &'static str) -> StateError {
    StateError::Corrupt {
        store: store.to_owned(),
        reason,
    }
}

/// Encodes the input offset for [`INPUT_OFFSET_HEADER`].
pub fn encode_input_offset(offset: i64) -> [u8; 8] {
    offset.to_be_bytes()
}

/// Decodes an [`INPUT_OFFSET_HEADER`] value; `None` when it is not 8 bytes.
pub fn decode_input_offset(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

/// Partition scope of a RocksDB key: 4 bytes, big-endian, so one partition's keys are contiguous.
pub(crate) fn partition_prefix(partition: i32) -> [u8; 4] {
    (partition as u32).to_be_bytes()
}

pub(crate) fn sortable_time(time_ms: i64) -> [u8; 8] {
    ((time_ms as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn time_from_sortable(bytes: &[u8]) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    (u64::from_be_bytes(raw) ^ (1 << 63)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_and_rejects_unknown_versions() {
        let bytes = StoredValue::encode(-5, b"payload");
        let value = StoredValue::decode(&bytes, "store").unwrap();
        assert_eq!(value.expire_at_ms, -5);
        assert_eq!(value.payload, b"payload");

        let mut future = bytes.to_vec();
        future[0] = 2;
        assert!(matches!(
            StoredValue::decode(&future, "store"),
            Err(StateError::UnsupportedFormat { found: 2, .. })
        ));
        assert!(matches!(
            StoredValue::decode(&bytes[..5], "store"),
            Err(StateError::Corrupt { .. })
        ));
        assert!(StoredValue::decode(&[], "store").is_err());
        assert_eq!(encoded_expire_at(&bytes), Some(-5));
        assert_eq!(encoded_expire_at(&future), None);
        assert_eq!(encoded_expire_at(&bytes[..5]), None);
    }

    #[test]
    fn sortable_time_orders_like_integers() {
        let times = [i64::MIN, -1_000, -1, 0, 1, 1_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(sortable_time(pair[0]) < sortable_time(pair[1]));
            assert_eq!(time_from_sortable(&sortable_time(pair[0])), pair[0]);
        }
    }

    #[test]
    fn input_offset_header_round_trips() {
        assert_eq!(decode_input_offset(&encode_input_offset(42)), Some(42));
        assert_eq!(decode_input_offset(b"short"), None);
    }
}
