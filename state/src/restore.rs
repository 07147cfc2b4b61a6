//! Applying a changelog tail to local state.

use rocksdb::WriteBatch;

use crate::backend::{Checkpoint, StoreId};
use crate::expiry;
use crate::format::{partition_prefix, StoredValue, NO_EXPIRY};
use crate::{Result, StateBackend};

/// Records applied per RocksDB write during a restore: large enough to amortise the write,
/// small enough to keep the batch's memory bounded.
const RESTORE_BATCH_RECORDS: usize = 10_000;

/// Applies changelog records of one store's partition to RocksDB, in changelog order.
///
/// Records are written in bounded batches; the checkpoint is written last, so a restore cut short
/// by a crash simply runs again from the previous checkpoint (re-applying a record is harmless:
/// the last write per key wins, as it did in the changelog).
pub struct RestoreWriter {
    backend: StateBackend,
    store: StoreId,
    partition: i32,
    batch: WriteBatch,
    applied: u64,
    key_buffer: Vec<u8>,
    value_buffer: Vec<u8>,
    /// Expiry-index items of the records in `batch`: `(expire_at_ms, range in index_keys)`,
    /// grouped when the batch is written.
    index_items: Vec<(i64, std::ops::Range<usize>)>,
    index_keys: Vec<u8>,
}

impl RestoreWriter {
    pub fn new(backend: &StateBackend, store: StoreId, partition: i32) -> Self {
        Self {
            backend: backend.clone(),
            store,
            partition,
            batch: WriteBatch::default(),
            applied: 0,
            key_buffer: Vec::with_capacity(64),
            value_buffer: Vec::new(),
            index_items: Vec::new(),
            index_keys: Vec::new(),
        }
    }

    /// Applies one changelog record: `value` in the stored format, or `None` for a tombstone.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let inner = &self.backend.inner;
        self.key_buffer.clear();
        self.key_buffer
            .extend_from_slice(&partition_prefix(self.partition));
        self.key_buffer.extend_from_slice(key);
        match value {
            None => self
                .batch
                .delete_cf(inner.main_cf(self.store), &self.key_buffer),
            Some(bytes) => {
                let stored = StoredValue::decode(bytes, self.backend.store_name(self.store))?;
                if stored.expire_at_ms != NO_EXPIRY {
                    let start = self.index_keys.len();
                    self.index_keys.extend_from_slice(key);
                    self.index_items
                        .push((stored.expire_at_ms, start..self.index_keys.len()));
                }
                self.batch
                    .put_cf(inner.main_cf(self.store), &self.key_buffer, bytes);
            }
        }
        self.applied += 1;
        if self.batch.len() >= RESTORE_BATCH_RECORDS {
            self.put_index();
            self.backend.write(std::mem::take(&mut self.batch))?;
        }
        Ok(())
    }

    /// Adds the expiry index of the records in the batch to it. Applying a record again (after
    /// a restore cut short) may index it twice: a stale or repeated item is skipped by expiry.
    fn put_index(&mut self) {
        let inner = &self.backend.inner;
        let expiry_cf = inner.expiry_cf(self.store);
        self.index_items
            .sort_by_key(|(expire_at_ms, _)| *expire_at_ms);
        let keys = &self.index_keys;
        let batch = &mut self.batch;
        expiry::encode_groups(
            &partition_prefix(self.partition),
            self.index_items
                .iter()
                .map(|(expire_at_ms, range)| (*expire_at_ms, &keys[range.clone()])),
            &mut self.key_buffer,
            &mut self.value_buffer,
            |key, value| batch.put_cf(expiry_cf, key, value),
        );
        self.index_items.clear();
        self.index_keys.clear();
    }

    /// Records applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Writes what remains and the checkpoint the restore reached.
    pub fn finish(mut self, checkpoint: Checkpoint) -> Result<u64> {
        self.put_index();
        let mut commit = self.backend.commit_batch();
        commit.batch = std::mem::take(&mut self.batch);
        commit.set_checkpoint(self.store, self.partition, checkpoint);
        commit.write()?;
        Ok(self.applied)
    }
}
