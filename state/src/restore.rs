//! Applying a changelog tail to local state.

use rocksdb::WriteBatch;

use crate::backend::{Checkpoint, StoreId};
use crate::format::{expiry_index_key, partition_prefix, StoredValue, NO_EXPIRY};
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
                    self.batch.put_cf(
                        inner.expiry_cf(self.store),
                        expiry_index_key(self.partition, stored.expire_at_ms, key),
                        [],
                    );
                }
                self.batch
                    .put_cf(inner.main_cf(self.store), &self.key_buffer, bytes);
            }
        }
        self.applied += 1;
        if self.batch.len() >= RESTORE_BATCH_RECORDS {
            self.backend.write(std::mem::take(&mut self.batch))?;
        }
        Ok(())
    }

    /// Records applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Writes what remains and the checkpoint the restore reached.
    pub fn finish(mut self, checkpoint: Checkpoint) -> Result<u64> {
        let mut commit = self.backend.commit_batch();
        commit.batch = std::mem::take(&mut self.batch);
        commit.set_checkpoint(self.store, self.partition, checkpoint);
        commit.write()?;
        Ok(self.applied)
    }
}
