//! The writes of the open transaction of one partition store, kept in an arena.
//!
//! Every key and every encoded value is appended to one byte arena, and a hash table maps keys to
//! entries: a write costs no allocation of its own (the arena and the tables grow geometrically
//! and keep their capacity across transactions), and the entries keep the order of their first
//! write. A rewrite of a key appends its new value and leaves the old bytes unused until the
//! overlay is cleared, which bounds the arena by the bytes written in one transaction.

use std::hash::BuildHasher;
use std::ops::Range;

use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// One key of the overlay.
pub(crate) struct Entry {
    hash: u64,
    key: Range<usize>,
    /// Encoded value ([`crate::StoredValue`] format), or `None` for a delete.
    value: Option<Range<usize>>,
    /// The input offset whose processing made this write (the last one, if several did).
    pub(crate) input_offset: i64,
}

pub(crate) struct Overlay {
    /// Keyed per overlay so the table's layout cannot be steered by chosen event ids.
    seed: u64,
    /// Indices into `entries`.
    table: HashTable<usize>,
    entries: Vec<Entry>,
    arena: Vec<u8>,
}

impl Overlay {
    pub(crate) fn new() -> Self {
        Self {
            seed: std::collections::hash_map::RandomState::new()
                .hash_one(0x6f76_6572_6c61_7921_u64),
            table: HashTable::new(),
            entries: Vec::new(),
            arena: Vec::new(),
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        xxh3_64_with_seed(key, self.seed)
    }

    /// The entry of `key`, if the open transaction wrote it.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Entry> {
        let hash = self.hash(key);
        let (entries, arena) = (&self.entries, &self.arena);
        self.table
            .find(hash, |&index| {
                let entry = &entries[index];
                entry.hash == hash && arena[entry.key.clone()] == *key
            })
            .map(|&index| &entries[index])
    }

    /// Writes `key`: `value` is the encoded value written as the concatenation of `parts`, or
    /// `None` for a delete.
    pub(crate) fn write(&mut self, key: &[u8], value: Option<&[&[u8]]>, input_offset: i64) {
        let hash = self.hash(key);
        let Self {
            table,
            entries,
            arena,
            ..
        } = self;
        let value = value.map(|parts| {
            let start = arena.len();
            for part in parts {
                arena.extend_from_slice(part);
            }
            start..arena.len()
        });
        let found = table.find(hash, |&index| {
            let entry = &entries[index];
            entry.hash == hash && arena[entry.key.clone()] == *key
        });
        match found {
            Some(&index) => {
                let entry = &mut entries[index];
                entry.value = value;
                entry.input_offset = input_offset;
            }
            None => {
                let start = arena.len();
                arena.extend_from_slice(key);
                let index = entries.len();
                entries.push(Entry {
                    hash,
                    key: start..arena.len(),
                    value,
                    input_offset,
                });
                table.insert_unique(hash, index, |&index| entries[index].hash);
            }
        }
    }

    pub(crate) fn key(&self, entry: &Entry) -> &[u8] {
        &self.arena[entry.key.clone()]
    }

    pub(crate) fn value(&self, entry: &Entry) -> Option<&[u8]> {
        entry.value.clone().map(|range| &self.arena[range])
    }

    /// The entries in the order of their first write.
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets every write, keeping the capacity for the next transaction.
    pub(crate) fn clear(&mut self) {
        self.table.clear();
        self.entries.clear();
        self.arena.clear();
    }
}
