//! The RocksDB instance, its column families, and atomic commits of partition overlays.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, FlushOptions, Options, WriteBatch,
    WriteOptions, DB,
};

use crate::format::partition_prefix;
use crate::store::PartitionStore;
use crate::{Result, StateError};

const CHECKPOINT_CF: &str = "breadcrumb-checkpoints";
const EXPIRY_SUFFIX: &str = "__expiry";
const CHECKPOINT_VERSION: u8 = 1;
/// Most bytes a commit batch reserves up front (its size is a hint taken from the last commit).
const MAX_BATCH_RESERVE: usize = 64 << 20;

/// Sizing of the RocksDB instance. Every figure bounds memory: nothing here grows with key count.
#[derive(Debug, Clone)]
pub struct StateOptions {
    /// Shared LRU block cache for all stores, index and filter blocks included.
    pub block_cache_bytes: usize,
    /// Memtable size per column family.
    pub write_buffer_bytes: usize,
    /// Memtables per column family before writes stall on flushes.
    pub max_write_buffers: i32,
}

impl Default for StateOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 128 << 20,
            write_buffer_bytes: 32 << 20,
            max_write_buffers: 3,
        }
    }
}

/// Index of a declared store, resolved once so lookups on the hot path need no name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreId(pub(crate) usize);

/// What a partition's local state reflects: the changelog read or written up to
/// `changelog_next_offset` (exclusive), and the input consumed up to `input_next_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub changelog_next_offset: i64,
    pub input_next_offset: i64,
}

pub(crate) struct StoreNames {
    pub(crate) name: String,
    pub(crate) expiry_cf: String,
}

pub(crate) struct Inner {
    pub(crate) db: DB,
    pub(crate) stores: Vec<StoreNames>,
    pub(crate) write_options: WriteOptions,
    /// Size of the last commit batch written, reserved by the next one so that building it does
    /// not regrow (and copy) its buffer step by step.
    last_batch_bytes: AtomicUsize,
}

impl Inner {
    pub(crate) fn main_cf(&self, store: StoreId) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(&self.stores[store.0].name)
            .expect("column family opened for every declared store")
    }

    pub(crate) fn expiry_cf(&self, store: StoreId) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(&self.stores[store.0].expiry_cf)
            .expect("expiry column family opened for every declared store")
    }

    fn checkpoint_cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CHECKPOINT_CF)
            .expect("checkpoint column family always opened")
    }
}

/// One RocksDB instance holding every store of this engine process.
///
/// Writes skip the WAL: state is written once per committed transaction and the changelog is the
/// source of truth, so a crash that loses the memtable only rolls local state back to an older
/// checkpoint, which restore then replays forward. Atomic flush keeps the column families and the
/// checkpoints consistent with each other across such a crash.
#[derive(Clone)]
pub struct StateBackend {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for StateBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StateBackend")
            .field("path", &self.inner.db.path())
            .field("stores", &self.inner.stores.len())
            .finish()
    }
}

impl StateBackend {
    /// Opens (or creates) the state directory with the given stores declared.
    pub fn open(path: &Path, store_names: &[String], options: &StateOptions) -> Result<Self> {
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut table_options = BlockBasedOptions::default();
        table_options.set_block_cache(&cache);
        table_options.set_bloom_filter(10.0, false);
        // Index and filter blocks count against the cache, so memory stays bounded however many
        // keys the stores hold.
        table_options.set_cache_index_and_filter_blocks(true);
        table_options.set_pin_l0_filter_and_index_blocks_in_cache(true);

        let mut cf_options = Options::default();
        cf_options.set_block_based_table_factory(&table_options);
        cf_options.set_write_buffer_size(options.write_buffer_bytes);
        cf_options.set_max_write_buffer_number(options.max_write_buffers);
        cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // L0 holds each flushed memtable until the next L0 compaction reads it back: compressing
        // it costs the flush and that compaction CPU (LZ4 was a fifth of the flush thread) for
        // files that live seconds. The levels below keep LZ4.
        cf_options.set_compression_per_level(&[
            rocksdb::DBCompressionType::None,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
        ]);

        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_atomic_flush(true);
        db_options.set_max_background_jobs(2);

        let stores: Vec<StoreNames> = store_names
            .iter()
            .map(|name| StoreNames {
                name: name.clone(),
                expiry_cf: format!("{name}{EXPIRY_SUFFIX}"),
            })
            .collect();
        let mut cf_names: Vec<String> = vec![CHECKPOINT_CF.to_owned()];
        for store in &stores {
            cf_names.push(store.name.clone());
            cf_names.push(store.expiry_cf.clone());
        }
        // RocksDB must open every existing column family, including those of stores this
        // configuration no longer declares; they stay untouched.
        if let Ok(existing) = DB::list_cf(&db_options, path) {
            for name in existing {
                if name != "default" && !cf_names.contains(&name) {
                    cf_names.push(name);
                }
            }
        }
        let descriptors = cf_names
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(name, cf_options.clone()));
        let db = DB::open_cf_descriptors(&db_options, path, descriptors)?;

        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                stores,
                write_options,
                last_batch_bytes: AtomicUsize::new(0),
            }),
        })
    }

    /// Resolves a declared store name.
    pub fn store_id(&self, name: &str) -> Result<StoreId> {
        self.inner
            .stores
            .iter()
            .position(|store| store.name == name)
            .map(StoreId)
            .ok_or_else(|| StateError::UnknownStore(name.to_owned()))
    }

    /// The name of a store.
    pub fn store_name(&self, store: StoreId) -> &str {
        &self.inner.stores[store.0].name
    }

    /// A handle on one store's state for one partition, with an empty overlay.
    pub fn partition_store(&self, store: StoreId, partition: i32) -> PartitionStore {
        PartitionStore::new(self.clone(), store, partition)
    }

    /// The checkpoint of a store's partition, if local state has one.
    pub fn checkpoint(&self, store: StoreId, partition: i32) -> Result<Option<Checkpoint>> {
        let inner = &self.inner;
        let key = checkpoint_key(&inner.stores[store.0].name, partition);
        let Some(bytes) = inner.db.get_pinned_cf(inner.checkpoint_cf(), key)? else {
            return Ok(None);
        };
        decode_checkpoint(&bytes)
            .map(Some)
            .ok_or_else(|| StateError::Corrupt {
                store: inner.stores[store.0].name.clone(),
                reason: "malformed checkpoint",
            })
    }

    /// Deletes all local state of a store's partition, its checkpoint included (when local state
    /// cannot be trusted and must be rebuilt from the start of the changelog).
    pub fn clear_partition(&self, store: StoreId, partition: i32) -> Result<()> {
        let inner = &self.inner;
        let start = partition_prefix(partition);
        // The end bound is the next partition's prefix; past the last partition, a key longer
        // than any prefix of 0xff bytes.
        let end: Vec<u8> = match (partition as u32).checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            None => vec![0xff; 5],
        };
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(inner.main_cf(store), start.as_slice(), end.as_slice());
        batch.delete_range_cf(inner.expiry_cf(store), start.as_slice(), end.as_slice());
        batch.delete_cf(
            inner.checkpoint_cf(),
            checkpoint_key(&inner.stores[store.0].name, partition),
        );
        inner.db.write_opt(batch, &inner.write_options)?;
        Ok(())
    }

    /// Starts a batch that moves committed overlays and checkpoints into RocksDB atomically.
    pub fn commit_batch(&self) -> CommitBatch {
        let reserve = self.inner.last_batch_bytes.load(Ordering::Relaxed);
        CommitBatch {
            backend: self.clone(),
            batch: WriteBatch::with_capacity_bytes(reserve.min(MAX_BATCH_RESERVE)),
        }
    }

    /// Flushes memtables so a clean shutdown leaves local state at its last checkpoint.
    pub fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        let mut handles = vec![inner.checkpoint_cf()];
        for index in 0..inner.stores.len() {
            handles.push(inner.main_cf(StoreId(index)));
            handles.push(inner.expiry_cf(StoreId(index)));
        }
        let mut flush_options = FlushOptions::default();
        flush_options.set_wait(true);
        inner.db.flush_cfs_opt(&handles, &flush_options)?;
        Ok(())
    }

    /// RocksDB's estimate of keys in a store (all partitions), for the state-keys gauge.
    pub fn estimated_keys(&self, store: StoreId) -> u64 {
        let inner = &self.inner;
        inner
            .db
            .property_int_value_cf(inner.main_cf(store), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    pub(crate) fn write(&self, batch: WriteBatch) -> Result<()> {
        self.inner.db.write_opt(batch, &self.inner.write_options)?;
        Ok(())
    }
}

/// One atomic RocksDB write: the overlays of every partition store committed by one Kafka
/// transaction, plus their new checkpoints.
pub struct CommitBatch {
    pub(crate) backend: StateBackend,
    pub(crate) batch: WriteBatch,
}

impl CommitBatch {
    /// Records the checkpoint of a store's partition.
    pub fn set_checkpoint(&mut self, store: StoreId, partition: i32, checkpoint: Checkpoint) {
        let inner = &self.backend.inner;
        self.batch.put_cf(
            inner.checkpoint_cf(),
            checkpoint_key(&inner.stores[store.0].name, partition),
            encode_checkpoint(checkpoint),
        );
    }

    /// Number of writes in the batch.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Writes the batch.
    pub fn write(self) -> Result<()> {
        let bytes = self.batch.size_in_bytes();
        // Leave some headroom over the last size, so a slightly larger next commit does not regrow.
        self.backend
            .inner
            .last_batch_bytes
            .store(bytes + bytes / 8, Ordering::Relaxed);
        self.backend.write(self.batch)
    }
}

fn checkpoint_key(store: &str, partition: i32) -> Vec<u8> {
    let mut key = Vec::with_capacity(store.len() + 5);
    key.extend_from_slice(store.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition_prefix(partition));
    key
}

fn encode_checkpoint(checkpoint: Checkpoint) -> [u8; 17] {
    let mut bytes = [0u8; 17];
    bytes[0] = CHECKPOINT_VERSION;
    bytes[1..9].copy_from_slice(&checkpoint.changelog_next_offset.to_be_bytes());
    bytes[9..17].copy_from_slice(&checkpoint.input_next_offset.to_be_bytes());
    bytes
}

fn decode_checkpoint(bytes: &[u8]) -> Option<Checkpoint> {
    if bytes.len() != 17 || bytes[0] != CHECKPOINT_VERSION {
        return None;
    }
    Some(Checkpoint {
        changelog_next_offset: i64::from_be_bytes(bytes[1..9].try_into().ok()?),
        input_next_offset: i64::from_be_bytes(bytes[9..17].try_into().ok()?),
    })
}
