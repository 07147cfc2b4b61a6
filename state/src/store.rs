//! One store's state for one input partition: committed state in RocksDB plus an in-memory
//! overlay of the writes of the open transaction.

use std::collections::HashMap;

use rocksdb::{Direction, IteratorMode, ReadOptions};

use crate::backend::{CommitBatch, StoreId};
use crate::format::{
    expiry_index_key, partition_prefix, sortable_time, time_from_sortable, StoredValue, NO_EXPIRY,
};
use crate::{Result, StateBackend};

/// A write of the open transaction.
struct Pending {
    /// Encoded value ([`StoredValue`] format), or `None` for a delete.
    value: Option<Box<[u8]>>,
    /// The input offset whose processing made this write (the last one, if several did).
    input_offset: i64,
    /// Whether the commit writes the value's expiry-index entry (false when the writer vouched
    /// that the committed value has the same expiry, so the entry exists).
    write_index: bool,
}

/// A write of the open transaction, as the engine turns it into a changelog record.
#[derive(Debug, Clone, Copy)]
pub struct DirtyEntry<'a> {
    pub key: &'a [u8],
    /// Encoded value, or `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    pub input_offset: i64,
}

/// The state of one store for one input partition.
///
/// Reads see the overlay first, then RocksDB. Writes only touch the overlay until the engine's
/// transaction commits and [`PartitionStore::commit_into`] moves them into a [`CommitBatch`]; an
/// abort calls [`PartitionStore::discard`]. Only the last write per key is kept, so the overlay
/// is bounded by the distinct keys one transaction touches.
pub struct PartitionStore {
    backend: StateBackend,
    store: StoreId,
    partition: i32,
    prefix: [u8; 4],
    overlay: HashMap<Box<[u8]>, Pending>,
    /// Expiry-index entries found stale or expired, deleted at commit.
    index_deletes: Vec<Vec<u8>>,
    /// Scratch buffer for partition-prefixed RocksDB keys.
    key_buffer: Vec<u8>,
}

impl PartitionStore {
    pub(crate) fn new(backend: StateBackend, store: StoreId, partition: i32) -> Self {
        Self {
            backend,
            store,
            partition,
            prefix: partition_prefix(partition),
            overlay: HashMap::new(),
            index_deletes: Vec::new(),
            key_buffer: Vec::with_capacity(64),
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn store(&self) -> StoreId {
        self.store
    }

    /// The name of the store.
    pub fn store_name(&self) -> &str {
        self.backend.store_name(self.store)
    }

    /// Reads `key`: on a hit, copies its payload into `payload` (cleared first) and returns its
    /// expiry time.
    pub fn get(&mut self, key: &[u8], payload: &mut Vec<u8>) -> Result<Option<i64>> {
        payload.clear();
        if let Some(pending) = self.overlay.get(key) {
            return match &pending.value {
                None => Ok(None),
                Some(bytes) => {
                    let value = StoredValue::decode(bytes, self.backend.store_name(self.store))?;
                    payload.extend_from_slice(value.payload);
                    Ok(Some(value.expire_at_ms))
                }
            };
        }
        self.fill_key_buffer(key);
        let inner = &self.backend.inner;
        match inner
            .db
            .get_pinned_cf(inner.main_cf(self.store), &self.key_buffer)?
        {
            None => Ok(None),
            Some(bytes) => {
                let value = StoredValue::decode(&bytes, self.backend.store_name(self.store))?;
                payload.extend_from_slice(value.payload);
                Ok(Some(value.expire_at_ms))
            }
        }
    }

    /// Writes `key` in the overlay.
    pub fn put(&mut self, key: &[u8], expire_at_ms: i64, payload: &[u8], input_offset: i64) {
        let value = Some(StoredValue::encode(expire_at_ms, payload));
        self.write(key, value, input_offset, true);
    }

    /// Writes `key` like [`PartitionStore::put`], for a key whose committed value has the same
    /// `expire_at_ms`: its expiry-index entry exists, so the commit does not write it again
    /// (one RocksDB write fewer per rewrite of a long-lived key). Only for callers that know
    /// the committed expiry: were it different, the entry would never be expired.
    pub fn put_same_expiry(
        &mut self,
        key: &[u8],
        expire_at_ms: i64,
        payload: &[u8],
        input_offset: i64,
    ) {
        let value = Some(StoredValue::encode(expire_at_ms, payload));
        self.write(key, value, input_offset, false);
    }

    /// Deletes `key` in the overlay (a tombstone in the changelog).
    pub fn delete(&mut self, key: &[u8], input_offset: i64) {
        self.write(key, None, input_offset, true);
    }

    fn write(
        &mut self,
        key: &[u8],
        value: Option<Box<[u8]>>,
        input_offset: i64,
        write_index: bool,
    ) {
        if let Some(pending) = self.overlay.get_mut(key) {
            pending.value = value;
            pending.input_offset = input_offset;
            // An earlier write of this transaction may have moved the expiry: keep writing the
            // index entry then (rewriting an existing one is harmless).
            pending.write_index |= write_index;
        } else {
            self.overlay.insert(
                key.into(),
                Pending {
                    value,
                    input_offset,
                    write_index,
                },
            );
        }
    }

    /// The writes of the open transaction, for the changelog.
    pub fn dirty(&self) -> impl Iterator<Item = DirtyEntry<'_>> {
        self.overlay.iter().map(|(key, pending)| DirtyEntry {
            key,
            value: pending.value.as_deref(),
            input_offset: pending.input_offset,
        })
    }

    /// Number of keys written by the open transaction.
    pub fn dirty_len(&self) -> usize {
        self.overlay.len()
    }

    /// Deletes up to `limit` committed entries whose expiry time is at or before `now_ms`,
    /// walking the expiry index (ordered by time) instead of the store. Returns how many
    /// entries were deleted. Entries rewritten since with a later expiry are left alone.
    pub fn expire_due(&mut self, now_ms: i64, input_offset: i64, limit: usize) -> Result<usize> {
        if now_ms == NO_EXPIRY || limit == 0 {
            return Ok(0);
        }
        let mut due: Vec<(Vec<u8>, i64)> = Vec::new();
        {
            let inner = &self.backend.inner;
            let mut read_options = ReadOptions::default();
            let mut upper = self.prefix.to_vec();
            upper.extend_from_slice(&sortable_time(now_ms.saturating_add(1)));
            read_options.set_iterate_upper_bound(upper);
            let iterator = inner.db.iterator_cf_opt(
                inner.expiry_cf(self.store),
                read_options,
                IteratorMode::From(&self.prefix, Direction::Forward),
            );
            for item in iterator {
                let (index_key, _) = item?;
                if index_key.len() < 12 || index_key[..4] != self.prefix {
                    break;
                }
                if self
                    .index_deletes
                    .last()
                    .is_some_and(|last| last.as_slice() >= &index_key[..])
                {
                    // Already handled earlier in this transaction.
                    continue;
                }
                due.push((index_key.to_vec(), time_from_sortable(&index_key[4..12])));
                if due.len() >= limit {
                    break;
                }
            }
        }
        let mut deleted = 0;
        let mut payload = Vec::new();
        for (index_key, expire_at_ms) in due {
            let key = &index_key[12..];
            if self.get(key, &mut payload)? == Some(expire_at_ms) {
                self.delete(key, input_offset);
                deleted += 1;
            }
            self.index_deletes.push(index_key);
        }
        Ok(deleted)
    }

    /// Moves the overlay into `batch`; call after the transaction that wrote it committed.
    ///
    /// Entries go into the batch in key order (and the expiry index's in its own order): RocksDB
    /// inserts a batch into its memtable in batch order, and its skiplist inserts keys that
    /// follow the previous insert far more cheaply than keys at random places.
    pub fn commit_into(&mut self, batch: &mut CommitBatch) {
        let inner = &self.backend.inner;
        let main_cf = inner.main_cf(self.store);
        let expiry_cf = inner.expiry_cf(self.store);
        let mut entries: Vec<(Box<[u8]>, Pending)> = self.overlay.drain().collect();
        entries.sort_unstable_by(|left, right| left.0.cmp(&right.0));
        let mut index_puts: Vec<Vec<u8>> = Vec::new();
        for (key, pending) in &entries {
            self.key_buffer.clear();
            self.key_buffer.extend_from_slice(&self.prefix);
            self.key_buffer.extend_from_slice(key);
            match &pending.value {
                None => batch.batch.delete_cf(main_cf, &self.key_buffer),
                Some(bytes) => {
                    // Encoded by `put`, so the header is known to be well formed.
                    let expire_at_ms = StoredValue::decode(bytes, "")
                        .map(|value| value.expire_at_ms)
                        .unwrap_or(NO_EXPIRY);
                    if expire_at_ms != NO_EXPIRY && pending.write_index {
                        index_puts.push(expiry_index_key(self.partition, expire_at_ms, key));
                    }
                    batch.batch.put_cf(main_cf, &self.key_buffer, bytes);
                }
            }
        }
        index_puts.sort_unstable();
        for index_key in &index_puts {
            batch.batch.put_cf(expiry_cf, index_key, []);
        }
        self.index_deletes.sort_unstable();
        for index_key in self.index_deletes.drain(..) {
            batch.batch.delete_cf(expiry_cf, index_key);
        }
    }

    /// Drops the overlay; call after the transaction that wrote it aborted.
    pub fn discard(&mut self) {
        self.overlay.clear();
        self.index_deletes.clear();
    }

    /// Visits every committed entry of this partition (not the overlay), in key order: for
    /// rebuilding in-memory structures after a restore.
    pub fn for_each_committed(
        &self,
        mut visit: impl FnMut(&[u8], StoredValue<'_>) -> Result<()>,
    ) -> Result<()> {
        let inner = &self.backend.inner;
        let mut read_options = ReadOptions::default();
        read_options.fill_cache(false);
        if let Some(next) = (self.partition as u32).checked_add(1) {
            read_options.set_iterate_upper_bound(next.to_be_bytes().to_vec());
        }
        let iterator = inner.db.iterator_cf_opt(
            inner.main_cf(self.store),
            read_options,
            IteratorMode::From(&self.prefix, Direction::Forward),
        );
        let store_name = self.backend.store_name(self.store);
        for item in iterator {
            let (key, value) = item?;
            if key.len() < 4 || key[..4] != self.prefix {
                break;
            }
            visit(&key[4..], StoredValue::decode(&value, store_name)?)?;
        }
        Ok(())
    }

    /// Visits the committed entries of this partition whose key starts with `prefix` (not the
    /// overlay), in key order: for loading a bounded subset of a store, such as held records,
    /// without walking every key.
    pub fn for_each_committed_with_prefix(
        &self,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], StoredValue<'_>) -> Result<()>,
    ) -> Result<()> {
        let inner = &self.backend.inner;
        let mut start = self.prefix.to_vec();
        start.extend_from_slice(prefix);
        let mut read_options = ReadOptions::default();
        read_options.fill_cache(false);
        if let Some(upper) = prefix_successor(&start) {
            read_options.set_iterate_upper_bound(upper);
        }
        let iterator = inner.db.iterator_cf_opt(
            inner.main_cf(self.store),
            read_options,
            IteratorMode::From(&start, Direction::Forward),
        );
        let store_name = self.backend.store_name(self.store);
        for item in iterator {
            let (key, value) = item?;
            if !key.starts_with(&start) {
                break;
            }
            visit(&key[4..], StoredValue::decode(&value, store_name)?)?;
        }
        Ok(())
    }

    fn fill_key_buffer(&mut self, key: &[u8]) {
        self.key_buffer.clear();
        self.key_buffer.extend_from_slice(&self.prefix);
        self.key_buffer.extend_from_slice(key);
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` when there is none
/// (the prefix is all `0xff`).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last != u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}
