//! One store's state for one input partition: committed state in RocksDB plus an in-memory
//! overlay of the writes of the open transaction.

use rocksdb::{Direction, IteratorMode, ReadOptions};

use crate::backend::{CommitBatch, StoreId};
use crate::expiry;
use crate::format::{
    encoded_expire_at, partition_prefix, sortable_time, value_header, StoredValue, NO_EXPIRY,
};
use crate::overlay::Overlay;
use crate::{Result, StateBackend};

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
    overlay: Overlay,
    /// Expiry-index entries found stale or expired, deleted at commit.
    index_deletes: Vec<Vec<u8>>,
    /// Items of those entries not handled yet (not due, or past the limit), indexed again at
    /// commit: `(expire_at_ms, store key)`.
    index_remainders: Vec<(i64, Vec<u8>)>,
    /// Scratch buffer for partition-prefixed RocksDB keys.
    key_buffer: Vec<u8>,
    /// Scratch buffer for expiry-index values.
    value_buffer: Vec<u8>,
    /// Scratch for [`PartitionStore::commit_into`]: overlay entries in key order.
    key_order: Vec<usize>,
    /// Scratch for [`PartitionStore::commit_into`]: (expiry time, entry) in index order.
    expiry_order: Vec<(i64, usize)>,
}

impl PartitionStore {
    pub(crate) fn new(backend: StateBackend, store: StoreId, partition: i32) -> Self {
        Self {
            backend,
            store,
            partition,
            prefix: partition_prefix(partition),
            overlay: Overlay::new(),
            index_deletes: Vec::new(),
            index_remainders: Vec::new(),
            key_buffer: Vec::with_capacity(64),
            value_buffer: Vec::new(),
            key_order: Vec::new(),
            expiry_order: Vec::new(),
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
        if let Some(entry) = self.overlay.get(key) {
            return match self.overlay.value(entry) {
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
        let header = value_header(expire_at_ms);
        self.overlay
            .write(key, Some(&[&header, payload]), input_offset);
    }

    /// Writes `key` like [`PartitionStore::put`], for a key whose committed value has the same
    /// `expire_at_ms`. The expiry index holds one entry per span of expiry times per commit, so a
    /// rewrite costs the same either way; the distinction is kept for callers that know it.
    pub fn put_same_expiry(
        &mut self,
        key: &[u8],
        expire_at_ms: i64,
        payload: &[u8],
        input_offset: i64,
    ) {
        self.put(key, expire_at_ms, payload, input_offset);
    }

    /// Deletes `key` in the overlay (a tombstone in the changelog).
    pub fn delete(&mut self, key: &[u8], input_offset: i64) {
        self.overlay.write(key, None, input_offset);
    }

    /// The writes of the open transaction, for the changelog, in the order of their first write.
    pub fn dirty(&self) -> impl Iterator<Item = DirtyEntry<'_>> {
        self.overlay.entries().iter().map(|entry| DirtyEntry {
            key: self.overlay.key(entry),
            value: self.overlay.value(entry),
            input_offset: entry.input_offset,
        })
    }

    /// Number of keys written by the open transaction.
    pub fn dirty_len(&self) -> usize {
        self.overlay.len()
    }

    /// Deletes committed entries whose expiry time is at or before `now_ms`, walking the expiry
    /// index (ordered by time) instead of the store, and visiting at most `limit` index items.
    /// Returns how many entries were deleted. Entries rewritten since with a later expiry are
    /// left alone.
    pub fn expire_due(&mut self, now_ms: i64, input_offset: i64, limit: usize) -> Result<usize> {
        if now_ms == NO_EXPIRY || limit == 0 {
            return Ok(0);
        }
        // Items due: (expire_at_ms, store key).
        let mut due: Vec<(i64, Vec<u8>)> = Vec::new();
        {
            let inner = &self.backend.inner;
            let store_name = self.backend.store_name(self.store);
            let mut read_options = ReadOptions::default();
            let mut upper = self.prefix.to_vec();
            upper.extend_from_slice(&sortable_time(now_ms.saturating_add(1)));
            read_options.set_iterate_upper_bound(upper);
            let iterator = inner.db.iterator_cf_opt(
                inner.expiry_cf(self.store),
                read_options,
                IteratorMode::From(&self.prefix, Direction::Forward),
            );
            let mut items = Vec::new();
            for item in iterator {
                if due.len() >= limit {
                    break;
                }
                let (index_key, value) = item?;
                if index_key.len() < expiry::INDEX_KEY_HEADER || index_key[..4] != self.prefix {
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
                let group = expiry::decode_entry(&index_key, &value, store_name, &mut items)?;
                let source: &[u8] = if group { &value } else { &index_key };
                // Items are sorted by time: the due ones within the limit come first, and the
                // rest is indexed again at commit.
                for (expire_at_ms, range) in items.drain(..) {
                    let key = source[range].to_vec();
                    if expire_at_ms <= now_ms && due.len() < limit {
                        due.push((expire_at_ms, key));
                    } else {
                        self.index_remainders.push((expire_at_ms, key));
                    }
                }
                self.index_deletes.push(index_key.to_vec());
            }
        }
        let mut deleted = 0;
        let mut payload = Vec::new();
        for (expire_at_ms, key) in due {
            if self.get(&key, &mut payload)? == Some(expire_at_ms) {
                self.delete(&key, input_offset);
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Moves the overlay into `batch`; call after the transaction that wrote it committed.
    ///
    /// Writes go into the batch in key order (and the expiry index in time order), so that
    /// RocksDB inserts each into its memtable next to the previous one instead of searching the
    /// skip list from the top; the expiry index gets one entry per span of times rather than one
    /// per key (see [`crate::expiry`]). The memtable insert is most of the cost of a commit.
    pub fn commit_into(&mut self, batch: &mut CommitBatch) {
        let Self {
            backend,
            store,
            prefix,
            overlay,
            index_deletes,
            index_remainders,
            key_buffer,
            value_buffer,
            key_order,
            expiry_order,
            ..
        } = self;
        let inner = &backend.inner;
        let main_cf = inner.main_cf(*store);
        let expiry_cf = inner.expiry_cf(*store);
        let entries = overlay.entries();

        key_order.clear();
        key_order.extend(0..entries.len());
        // Stable sort: adaptive to keys written in (nearly) ascending order, e.g. time-ordered ids.
        key_order.sort_by(|&a, &b| overlay.key(&entries[a]).cmp(overlay.key(&entries[b])));
        for &index in key_order.iter() {
            let entry = &entries[index];
            key_buffer.clear();
            key_buffer.extend_from_slice(&prefix[..]);
            key_buffer.extend_from_slice(overlay.key(entry));
            match overlay.value(entry) {
                None => batch.batch.delete_cf(main_cf, &key_buffer[..]),
                Some(bytes) => batch.batch.put_cf(main_cf, &key_buffer[..], bytes),
            }
        }

        // Index items in write order, which is close to time order when expiry times follow
        // stream time, so the stable sort by time is mostly a pass over runs.
        expiry_order.clear();
        for (index, entry) in entries.iter().enumerate() {
            if let Some(bytes) = overlay.value(entry) {
                // Encoded by `put`, so the header is known to be well formed.
                let expire_at_ms = encoded_expire_at(bytes).unwrap_or(NO_EXPIRY);
                if expire_at_ms != NO_EXPIRY {
                    expiry_order.push((expire_at_ms, index));
                }
            }
        }
        let mut items: Vec<(i64, &[u8])> = expiry_order
            .iter()
            .map(|&(expire_at_ms, index)| (expire_at_ms, overlay.key(&entries[index])))
            .chain(
                index_remainders
                    .iter()
                    .map(|(expire_at_ms, key)| (*expire_at_ms, key.as_slice())),
            )
            .collect();
        items.sort_by_key(|&(expire_at_ms, _)| expire_at_ms);
        expiry::encode_groups(prefix, items, key_buffer, value_buffer, |key, value| {
            batch.batch.put_cf(expiry_cf, key, value)
        });
        for index_key in index_deletes.drain(..) {
            batch.batch.delete_cf(expiry_cf, index_key);
        }
        index_remainders.clear();
        overlay.clear();
    }

    /// Drops the overlay; call after the transaction that wrote it aborted.
    pub fn discard(&mut self) {
        self.overlay.clear();
        self.index_deletes.clear();
        self.index_remainders.clear();
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
