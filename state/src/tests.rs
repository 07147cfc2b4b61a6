use tempfile::TempDir;

use crate::{Checkpoint, RestoreWriter, StateBackend, StateError, StateOptions, NO_EXPIRY};

fn open(dir: &TempDir) -> StateBackend {
    StateBackend::open(
        dir.path(),
        &["dedupe".to_owned(), "other".to_owned()],
        &StateOptions::default(),
    )
    .unwrap()
}

fn read(store: &mut crate::PartitionStore, key: &[u8]) -> Option<(i64, Vec<u8>)> {
    let mut payload = Vec::new();
    store
        .get(key, &mut payload)
        .unwrap()
        .map(|expire| (expire, payload))
}

#[test]
fn overlay_is_visible_but_reaches_rocksdb_only_on_commit() {
    let dir = TempDir::new().unwrap();
    let backend = open(&dir);
    let id = backend.store_id("dedupe").unwrap();
    let mut writer = backend.partition_store(id, 3);
    writer.put(b"a", 100, b"first", 7);
    assert_eq!(read(&mut writer, b"a"), Some((100, b"first".to_vec())));

    // A second handle sees committed state only.
    let mut reader = backend.partition_store(id, 3);
    assert_eq!(read(&mut reader, b"a"), None);

    let mut batch = backend.commit_batch();
    writer.commit_into(&mut batch);
    batch.set_checkpoint(
        id,
        3,
        Checkpoint {
            changelog_next_offset: 11,
            input_next_offset: 8,
        },
    );
    batch.write().unwrap();
    assert_eq!(read(&mut reader, b"a"), Some((100, b"first".to_vec())));
    assert_eq!(writer.dirty_len(), 0);
    assert_eq!(
        backend.checkpoint(id, 3).unwrap(),
        Some(Checkpoint {
            changelog_next_offset: 11,
            input_next_offset: 8
        })
    );
    assert_eq!(backend.checkpoint(id, 4).unwrap(), None);
}

#[test]
fn discard_drops_uncommitted_writes_and_deletes_shadow_committed_ones() {
    let dir = TempDir::new().unwrap();
    let backend = open(&dir);
    let id = backend.store_id("dedupe").unwrap();
    let mut store = backend.partition_store(id, 0);
    store.put(b"kept", NO_EXPIRY, b"v1", 1);
    let mut batch = backend.commit_batch();
    store.commit_into(&mut batch);
    batch.write().unwrap();

    store.delete(b"kept", 2);
    store.put(b"new", NO_EXPIRY, b"v2", 2);
    assert_eq!(read(&mut store, b"kept"), None);
    let dirty: Vec<_> = store
        .dirty()
        .map(|entry| {
            (
                entry.key.to_vec(),
                entry.value.is_some(),
                entry.input_offset,
            )
        })
        .collect();
    assert_eq!(dirty.len(), 2);
    assert!(dirty.contains(&(b"kept".to_vec(), false, 2)));
    store.discard();
    assert_eq!(read(&mut store, b"kept"), Some((NO_EXPIRY, b"v1".to_vec())));
    assert_eq!(read(&mut store, b"new"), None);
}

#[test]
fn partitions_and_stores_are_isolated() {
    let dir = TempDir::new().unwrap();
    let backend = open(&dir);
    let dedupe = backend.store_id("dedupe").unwrap();
    let other = backend.store_id("other").unwrap();
    let mut batch = backend.commit_batch();
    for (store, partition, value) in [(dedupe, 0, b"d0"), (dedupe, 1, b"d1"), (other, 0, b"o0")] {
        let mut handle = backend.partition_store(store, partition);
        handle.put(b"key", NO_EXPIRY, value, 0);
        handle.commit_into(&mut batch);
    }
    batch.write().unwrap();
    assert_eq!(
        read(&mut backend.partition_store(dedupe, 1), b"key")
            .unwrap()
            .1,
        b"d1"
    );
    assert_eq!(
        read(&mut backend.partition_store(other, 0), b"key")
            .unwrap()
            .1,
        b"o0"
    );
    assert_eq!(read(&mut backend.partition_store(other, 1), b"key"), None);

    backend.clear_partition(dedupe, 0).unwrap();
    assert_eq!(read(&mut backend.partition_store(dedupe, 0), b"key"), None);
    assert!(read(&mut backend.partition_store(dedupe, 1), b"key").is_some());

    let mut keys = Vec::new();
    backend
        .partition_store(dedupe, 1)
        .for_each_committed(|key, value| {
            keys.push((key.to_vec(), value.payload.to_vec()));
            Ok(())
        })
        .unwrap();
    assert_eq!(keys, vec![(b"key".to_vec(), b"d1".to_vec())]);
    assert!(matches!(
        backend.store_id("missing"),
        Err(StateError::UnknownStore(_))
    ));
}

#[test]
fn expiry_deletes_only_due_entries_and_respects_rewrites() {
    let dir = TempDir::new().unwrap();
    let backend = open(&dir);
    let id = backend.store_id("dedupe").unwrap();
    let mut store = backend.partition_store(id, 2);
    store.put(b"early", 100, b"", 0);
    store.put(b"late", 500, b"", 1);
    store.put(b"rewritten", 150, b"", 2);
    store.put(b"negative", -50, b"", 3);
    let mut batch = backend.commit_batch();
    store.commit_into(&mut batch);
    batch.write().unwrap();

    // `rewritten` moves its expiry past the horizon before the scan runs.
    store.put(b"rewritten", 900, b"", 4);
    let deleted = store.expire_due(200, 5, 100).unwrap();
    assert_eq!(deleted, 2, "early and negative are due; rewritten is not");
    let tombstones: Vec<_> = store
        .dirty()
        .filter(|entry| entry.value.is_none())
        .map(|entry| (entry.key.to_vec(), entry.input_offset))
        .collect();
    assert_eq!(tombstones.len(), 2);
    assert!(tombstones.contains(&(b"early".to_vec(), 5)));
    let mut batch = backend.commit_batch();
    store.commit_into(&mut batch);
    batch.write().unwrap();

    assert_eq!(read(&mut store, b"early"), None);
    assert_eq!(read(&mut store, b"late").map(|value| value.0), Some(500));
    assert_eq!(
        read(&mut store, b"rewritten").map(|value| value.0),
        Some(900)
    );
    // The stale index entry of `rewritten` (150) was cleaned up, so nothing more is due at 200.
    assert_eq!(store.expire_due(200, 6, 100).unwrap(), 0);
    // The limit bounds the work per call.
    assert_eq!(store.expire_due(1_000, 7, 1).unwrap(), 1);
}

#[test]
fn restore_writer_applies_changelog_and_survives_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let backend = open(&dir);
        let id = backend.store_id("dedupe").unwrap();
        let mut restore = RestoreWriter::new(&backend, id, 5);
        let value = crate::StoredValue::encode(1_000, b"x");
        restore.apply(b"a", Some(&value)).unwrap();
        restore.apply(b"b", Some(&value)).unwrap();
        restore.apply(b"a", None).unwrap();
        assert!(restore.apply(b"bad", Some(&[9, 9])).is_err());
        let applied = restore
            .finish(Checkpoint {
                changelog_next_offset: 3,
                input_next_offset: 40,
            })
            .unwrap();
        assert_eq!(applied, 3);
        backend.flush().unwrap();
    }
    let backend = open(&dir);
    let id = backend.store_id("dedupe").unwrap();
    let mut store = backend.partition_store(id, 5);
    assert_eq!(read(&mut store, b"a"), None);
    assert_eq!(read(&mut store, b"b"), Some((1_000, b"x".to_vec())));
    assert_eq!(
        backend
            .checkpoint(id, 5)
            .unwrap()
            .unwrap()
            .input_next_offset,
        40
    );
    // The restored entry is in the expiry index too.
    assert_eq!(store.expire_due(1_000, 41, 10).unwrap(), 1);
}

#[test]
fn prefix_scan_visits_only_committed_keys_of_the_prefix_and_partition() {
    let dir = TempDir::new().unwrap();
    let backend = open(&dir);
    let id = backend.store_id("dedupe").unwrap();
    // Partition 0x00ff and 0x0100 are adjacent in key order: the bound must not spill over.
    let mut store = backend.partition_store(id, 0xff);
    let mut next = backend.partition_store(id, 0x100);
    for key in [&b"h:a"[..], b"w:a", b"w:b", b"w\xff\xff", b"x"] {
        store.put(key, NO_EXPIRY, key, 0);
        next.put(key, NO_EXPIRY, key, 0);
    }
    let mut batch = backend.commit_batch();
    store.commit_into(&mut batch);
    next.commit_into(&mut batch);
    batch.write().unwrap();
    store.put(b"w:c", NO_EXPIRY, b"uncommitted", 1);

    let scan = |store: &crate::PartitionStore, prefix: &[u8]| {
        let mut keys = Vec::new();
        store
            .for_each_committed_with_prefix(prefix, |key, value| {
                assert_eq!(key, value.payload);
                keys.push(key.to_vec());
                Ok(())
            })
            .unwrap();
        keys
    };
    assert_eq!(
        scan(&store, b"w"),
        vec![b"w:a".to_vec(), b"w:b".to_vec(), b"w\xff\xff".to_vec()]
    );
    assert_eq!(scan(&store, b"w\xff"), vec![b"w\xff\xff".to_vec()]);
    assert_eq!(scan(&store, b"h"), vec![b"h:a".to_vec()]);
    assert!(scan(&store, b"z").is_empty());
    assert_eq!(scan(&store, b"").len(), 5);
}

mod overlay_model {
    //! The overlay, its commit and the expiry index against a plain model: random puts, deletes
    //! (including keys rewritten several times in one transaction), expiry passes with small
    //! limits, commits and discards on a small key space, over committed state that also holds
    //! expiry-index entries in the format of earlier builds (one entry per key).

    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use rocksdb::WriteBatch;
    use tempfile::TempDir;

    use super::{open, read};
    use crate::format::{partition_prefix, sortable_time};
    use crate::{PartitionStore, StateBackend, StoredValue, NO_EXPIRY};

    const PARTITION: i32 = 1;
    const KEYS: u8 = 24;

    #[derive(Debug, Clone)]
    enum Op {
        Put {
            key: u8,
            expire: i64,
            payload: u8,
        },
        Delete {
            key: u8,
        },
        /// A committed entry written (with its index entry) as an earlier build did.
        Legacy {
            key: u8,
            expire: i64,
            payload: u8,
        },
        Expire {
            now: i64,
            limit: usize,
        },
        Commit,
        Discard,
    }

    fn expire_time() -> impl Strategy<Value = i64> {
        prop_oneof![Just(NO_EXPIRY), -5i64..20, -3_000i64..3_000]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..KEYS, expire_time(), any::<u8>())
                .prop_map(|(key, expire, payload)| Op::Put { key, expire, payload }),
            2 => (0..KEYS).prop_map(|key| Op::Delete { key }),
            1 => (0..KEYS, -3_000i64..3_000, any::<u8>())
                .prop_map(|(key, expire, payload)| Op::Legacy { key, expire, payload }),
            2 => (-3_000i64..3_000, prop_oneof![1usize..4, Just(usize::MAX)])
                .prop_map(|(now, limit)| Op::Expire { now, limit }),
            2 => Just(Op::Commit),
            1 => Just(Op::Discard),
        ]
    }

    /// Keys of varied lengths sharing prefixes, so key order differs from write order.
    fn key(n: u8) -> Vec<u8> {
        let mut key = vec![b'k'; usize::from(n % 5)];
        key.push(n);
        key
    }

    fn payload(n: u8) -> Vec<u8> {
        vec![n; usize::from(n % 7)]
    }

    type Value = (i64, Vec<u8>);

    fn write_legacy(backend: &StateBackend, key: &[u8], expire: i64, payload: &[u8]) {
        let inner = &backend.inner;
        let id = backend.store_id("dedupe").unwrap();
        let mut main_key = partition_prefix(PARTITION).to_vec();
        main_key.extend_from_slice(key);
        let mut index_key = partition_prefix(PARTITION).to_vec();
        index_key.extend_from_slice(&sortable_time(expire));
        index_key.extend_from_slice(key);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            inner.main_cf(id),
            main_key,
            StoredValue::encode(expire, payload),
        );
        batch.put_cf(inner.expiry_cf(id), index_key, []);
        backend.write(batch).unwrap();
    }

    fn commit(backend: &StateBackend, store: &mut PartitionStore) {
        let mut batch = backend.commit_batch();
        store.commit_into(&mut batch);
        batch.write().unwrap();
    }

    fn dirty(store: &PartitionStore) -> BTreeMap<Vec<u8>, (Option<Value>, i64)> {
        store
            .dirty()
            .map(|entry| {
                let value = entry.value.map(|bytes| {
                    let value = StoredValue::decode(bytes, "").unwrap();
                    (value.expire_at_ms, value.payload.to_vec())
                });
                (entry.key.to_vec(), (value, entry.input_offset))
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|cases| cases.parse().ok())
                .unwrap_or(64),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn overlay_commits_and_expiry_match_a_model(ops in proptest::collection::vec(op(), 1..120)) {
            let dir = TempDir::new().unwrap();
            let backend = open(&dir);
            let id = backend.store_id("dedupe").unwrap();
            let mut store = backend.partition_store(id, PARTITION);
            let mut committed: BTreeMap<Vec<u8>, Value> = BTreeMap::new();
            let mut pending: BTreeMap<Vec<u8>, (Option<Value>, i64)> = BTreeMap::new();
            let visible = |committed: &BTreeMap<Vec<u8>, Value>,
                           pending: &BTreeMap<Vec<u8>, (Option<Value>, i64)>,
                           key: &[u8]| match pending.get(key) {
                Some((value, _)) => value.clone(),
                None => committed.get(key).cloned(),
            };
            for (offset, op) in ops.iter().enumerate() {
                let offset = offset as i64;
                match *op {
                    Op::Put { key: n, expire, payload: p } => {
                        store.put(&key(n), expire, &payload(p), offset);
                        pending.insert(key(n), (Some((expire, payload(p))), offset));
                    }
                    Op::Delete { key: n } => {
                        store.delete(&key(n), offset);
                        pending.insert(key(n), (None, offset));
                    }
                    Op::Legacy { key: n, expire, payload: p } => {
                        write_legacy(&backend, &key(n), expire, &payload(p));
                        committed.insert(key(n), (expire, payload(p)));
                    }
                    Op::Expire { now, limit } => {
                        let deleted = store.expire_due(now, offset, limit).unwrap();
                        prop_assert!(deleted <= limit);
                        // The new tombstones are of keys visible with an expiry at or before now.
                        let mut tombstones = 0;
                        for (key, (value, input_offset)) in dirty(&store) {
                            if value.is_none() && input_offset == offset {
                                let before = visible(&committed, &pending, &key);
                                prop_assert!(
                                    before.as_ref().is_some_and(|(expire, _)| *expire <= now),
                                    "{:?} deleted at {} while {:?}", key, now, before
                                );
                                pending.insert(key, (None, offset));
                                tombstones += 1;
                            }
                        }
                        prop_assert_eq!(deleted, tombstones);
                    }
                    Op::Commit => {
                        commit(&backend, &mut store);
                        for (key, (value, _)) in std::mem::take(&mut pending) {
                            match value {
                                Some(value) => committed.insert(key, value),
                                None => committed.remove(&key),
                            };
                        }
                    }
                    Op::Discard => {
                        store.discard();
                        pending.clear();
                    }
                }
                prop_assert_eq!(dirty(&store), pending.clone());
                prop_assert_eq!(store.dirty_len(), pending.len());
            }
            for n in 0..KEYS {
                prop_assert_eq!(read(&mut store, &key(n)), visible(&committed, &pending, &key(n)));
            }
            store.discard();
            let mut stored = BTreeMap::new();
            store
                .for_each_committed(|key, value| {
                    stored.insert(key.to_vec(), (value.expire_at_ms, value.payload.to_vec()));
                    Ok(())
                })
                .unwrap();
            prop_assert_eq!(&stored, &committed);

            // Every committed entry that expires is in the expiry index: passes without a limit
            // delete exactly the due ones, and nothing else.
            let now = 0;
            let due = committed.values().filter(|(expire, _)| *expire <= now).count();
            let mut deleted = 0;
            for _ in 0..3 {
                deleted += store.expire_due(now, 0, usize::MAX).unwrap();
                commit(&backend, &mut store);
            }
            prop_assert_eq!(deleted, due);
            for n in 0..KEYS {
                let expected = committed.get(&key(n)).filter(|(expire, _)| *expire > now).cloned();
                prop_assert_eq!(read(&mut store, &key(n)), expected);
            }
            prop_assert_eq!(store.expire_due(now, 0, usize::MAX).unwrap(), 0);
        }
    }
}

#[test]
fn put_same_expiry_keeps_the_committed_index_entry_and_expiry_still_finds_the_key() {
    let dir = TempDir::new().unwrap();
    let backend = open(&dir);
    let id = backend.store_id("dedupe").unwrap();
    let mut store = backend.partition_store(id, 0);
    let commit = |store: &mut crate::PartitionStore| {
        let mut batch = backend.commit_batch();
        store.commit_into(&mut batch);
        batch.write().unwrap();
    };
    store.put(b"head", 100, b"v1", 0);
    commit(&mut store);
    store.put_same_expiry(b"head", 100, b"v2", 1);
    commit(&mut store);
    assert_eq!(read(&mut store, b"head"), Some((100, b"v2".to_vec())));

    // Moved in this transaction, then vouched for: the new expiry's entry is still written.
    store.put(b"moved", 100, b"", 2);
    commit(&mut store);
    store.put(b"moved", 300, b"", 3);
    store.put_same_expiry(b"moved", 300, b"", 4);
    commit(&mut store);

    assert_eq!(store.expire_due(100, 5, 100).unwrap(), 1, "head is due");
    commit(&mut store);
    assert_eq!(read(&mut store, b"head"), None);
    assert_eq!(store.expire_due(300, 6, 100).unwrap(), 1, "moved is due");
}
