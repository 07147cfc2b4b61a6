//! The expiry index of a store (column family `<store>__expiry`): which keys expire when.
//!
//! Keys start with the partition prefix and the time (sign bit flipped, big-endian, so entries
//! sort by partition, then time). Two kinds of entries, told apart by their value:
//!
//! ```text
//! single (version 1, empty value; written by earlier builds, still read):
//!   key   = partition:4 | expire_at_ms:8 | store key
//! group (version 2):
//!   key   = partition:4 | expire_at_ms of its first item:8 | xxh3-128 of the value:16
//!   value = 2 | item*      item = (expire_at_ms - first):varint | key length:varint | store key
//! ```
//!
//! A group holds the items of one commit (or restore batch) whose times fall in one span of
//! [`GROUP_SPAN_MS`], sorted by time, at most [`GROUP_MAX_ITEMS`] of them: one RocksDB write per
//! span instead of one per key. Its key is derived from its content, so writing the same group
//! twice (a restore applying records again) writes the same entry, and two different groups
//! never overwrite each other. An item, like a single entry, may be stale (its key rewritten with
//! another time, or deleted since): expiry checks the stored value before deleting anything.
//!
//! Migration is explicit: single entries are read as before; a value of another version is an
//! error, never a guess.

use std::ops::Range;

use xxhash_rust::xxh3::xxh3_128;

use crate::format::{sortable_time, time_from_sortable};
use crate::{Result, StateError};

const GROUP_VERSION: u8 = 2;
/// Items whose times fall in one span of this many milliseconds share a group.
pub(crate) const GROUP_SPAN_MS: i64 = 1_000;
/// Bounds a group's value (and the work of rewriting what remains of one, see
/// [`crate::PartitionStore::expire_due`]).
pub(crate) const GROUP_MAX_ITEMS: usize = 1_024;
/// Partition prefix and time.
pub(crate) const INDEX_KEY_HEADER: usize = 12;

/// Encodes index items (`(expire_at_ms, store key)`, sorted by time) as groups, calling
/// `put(index key, value)` for each. The buffers are scratch space.
pub(crate) fn encode_groups<'a>(
    prefix: &[u8; 4],
    items: impl IntoIterator<Item = (i64, &'a [u8])>,
    key: &mut Vec<u8>,
    value: &mut Vec<u8>,
    mut put: impl FnMut(&[u8], &[u8]),
) {
    let mut first = 0i64;
    let mut count = 0usize;
    let mut flush = |value: &mut Vec<u8>, first: i64, key: &mut Vec<u8>| {
        key.clear();
        key.extend_from_slice(prefix);
        key.extend_from_slice(&sortable_time(first));
        key.extend_from_slice(&xxh3_128(value).to_be_bytes());
        put(key, value);
        value.clear();
    };
    value.clear();
    for (time, store_key) in items {
        if count > 0
            && (count == GROUP_MAX_ITEMS
                || time.div_euclid(GROUP_SPAN_MS) != first.div_euclid(GROUP_SPAN_MS))
        {
            flush(value, first, key);
            count = 0;
        }
        if count == 0 {
            first = time;
            value.push(GROUP_VERSION);
        }
        debug_assert!(time >= first, "items are sorted by time");
        put_varint(value, time.wrapping_sub(first) as u64);
        put_varint(value, store_key.len() as u64);
        value.extend_from_slice(store_key);
        count += 1;
    }
    if count > 0 {
        flush(value, first, key);
    }
}

/// Decodes one index entry into `items` (cleared first): `(expire_at_ms, range of the store key
/// in `index_key` or `value`)`. Returns whether the entry is a group (ranges into `value`) or a
/// single entry (one range into `index_key`).
pub(crate) fn decode_entry(
    index_key: &[u8],
    value: &[u8],
    store: &str,
    items: &mut Vec<(i64, Range<usize>)>,
) -> Result<bool> {
    items.clear();
    if index_key.len() < INDEX_KEY_HEADER {
        return Err(corrupt(store, "expiry index key shorter than its header"));
    }
    let time = time_from_sortable(&index_key[4..INDEX_KEY_HEADER]);
    let Some((&version, mut rest)) = value.split_first() else {
        items.push((time, INDEX_KEY_HEADER..index_key.len()));
        return Ok(false);
    };
    if version != GROUP_VERSION {
        return Err(StateError::UnsupportedFormat {
            found: version,
            supported: GROUP_VERSION,
        });
    }
    while !rest.is_empty() {
        let delta = take_varint(&mut rest).ok_or_else(|| corrupt(store, "bad expiry group"))?;
        let len = take_varint(&mut rest).ok_or_else(|| corrupt(store, "bad expiry group"))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= rest.len())
            .ok_or_else(|| corrupt(store, "bad expiry group"))?;
        let start = value.len() - rest.len();
        items.push((time.wrapping_add(delta as i64), start..start + len));
        rest = &rest[len..];
    }
    Ok(true)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn corrupt(store: &str, reason: &'static str) -> StateError {
    StateError::Corrupt {
        store: store.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(items: &[(i64, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        encode_groups(
            &[0, 0, 0, 7],
            items.iter().copied(),
            &mut Vec::new(),
            &mut Vec::new(),
            |key, value| out.push((key.to_vec(), value.to_vec())),
        );
        out
    }

    fn decode(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<(i64, Vec<u8>)> {
        let mut items = Vec::new();
        let mut out = Vec::new();
        for (key, value) in entries {
            let group = decode_entry(key, value, "s", &mut items).unwrap();
            for (time, range) in &items {
                let bytes = if group {
                    &value[range.clone()]
                } else {
                    &key[range.clone()]
                };
                out.push((*time, bytes.to_vec()));
            }
        }
        out
    }

    #[test]
    fn groups_round_trip_split_by_span_and_size() {
        let keys: Vec<Vec<u8>> = (0..3_000u32).map(|n| n.to_be_bytes().to_vec()).collect();
        let mut items: Vec<(i64, &[u8])> = vec![(-1_500, b"neg"), (-1, b""), (0, b"zero")];
        items.extend(keys.iter().map(|key| (5_000, key.as_slice())));
        items.push((5_999, b"end of span"));
        items.push((6_000, b"next span"));
        items.push((i64::MAX - 1, b"far"));
        let entries = encode(&items);
        // Spans -2, -1 and 0; three groups of span 5 (3,001 items); spans 6 and the last one.
        let groups: Vec<usize> = entries
            .iter()
            .map(|(key, value)| {
                let mut decoded = Vec::new();
                decode_entry(key, value, "s", &mut decoded).unwrap();
                decoded.len()
            })
            .collect();
        assert_eq!(groups, vec![1, 1, 1, 1_024, 1_024, 953, 1, 1]);
        assert_eq!(
            decode(&entries),
            items
                .iter()
                .map(|(time, key)| (*time, key.to_vec()))
                .collect::<Vec<_>>()
        );
        for (key, _) in &entries {
            assert_eq!(&key[..4], &[0, 0, 0, 7]);
            assert_eq!(key.len(), INDEX_KEY_HEADER + 16);
        }
        // Keys follow content: the same items give the same entries, other items other keys.
        assert_eq!(encode(&items), entries);
        let other = encode(&[(0, b"zero"), (1, b"one")]);
        assert!(entries.iter().all(|entry| entry.0 != other[0].0));
    }

    #[test]
    fn single_entries_of_earlier_builds_are_read_and_unknown_versions_rejected() {
        let mut key = vec![0, 0, 0, 7];
        key.extend_from_slice(&sortable_time(42));
        key.extend_from_slice(b"store key");
        assert_eq!(
            decode(&[(key.clone(), Vec::new())]),
            vec![(42, b"store key".to_vec())]
        );
        let mut items = Vec::new();
        assert!(matches!(
            decode_entry(&key, &[3, 0, 0], "s", &mut items),
            Err(StateError::UnsupportedFormat { found: 3, .. })
        ));
        assert!(matches!(
            decode_entry(&key, &[GROUP_VERSION, 0, 9, 1], "s", &mut items),
            Err(StateError::Corrupt { .. })
        ));
        assert!(decode_entry(&key[..8], &[], "s", &mut items).is_err());
    }
}
