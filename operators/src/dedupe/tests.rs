use breadcrumb_schemas::{Envelope, RawRecord};
use breadcrumb_state::{PartitionStore, StateBackend, StateOptions};
use tempfile::TempDir;

use super::operator::{DEDUPE_FIRST_OFFSET_HEADER, DEDUPE_FIRST_PARTITION_HEADER};
use super::*;
use crate::operator::{Disposition, Operator, Port};
use crate::testing::RecordingEmitter;

const HOUR_MS: i64 = 3_600_000;

struct Harness {
    _dir: TempDir,
    backend: StateBackend,
    operator: Dedupe,
    stores: Vec<PartitionStore>,
}

impl Harness {
    fn new(config: DedupeConfig) -> Self {
        let dir = TempDir::new().unwrap();
        let operator = Dedupe::new("pay", config);
        let names: Vec<String> = operator.stores().into_iter().map(|s| s.name).collect();
        let backend = StateBackend::open(dir.path(), &names, &StateOptions::default()).unwrap();
        let mut harness = Self {
            _dir: dir,
            stores: Vec::new(),
            backend,
            operator,
        };
        harness.reopen();
        harness
    }

    /// Drops hot state and overlay, and opens partition 0 from committed state.
    fn reopen(&mut self) {
        let id = self.backend.store_id("pay-dedupe").unwrap();
        self.operator.close_partition(0);
        self.stores = vec![self.backend.partition_store(id, 0)];
        self.operator.open_partition(&mut self.stores).unwrap();
    }

    fn commit(&mut self, last_offset: i64) {
        self.operator
            .checkpoint(&mut self.stores, last_offset)
            .unwrap();
        let mut batch = self.backend.commit_batch();
        self.stores[0].commit_into(&mut batch);
        batch.write().unwrap();
    }

    fn process(&mut self, offset: i64, id: &str, time_ms: i64, value: &[u8]) -> RecordingEmitter {
        let record = RawRecord {
            topic: "payments",
            partition: 0,
            offset,
            timestamp_ms: None,
            key: None,
            value: Some(value),
            headers: &[],
        };
        let event = Envelope {
            id: id.to_owned(),
            event_time_ms: time_ms,
            ..Envelope::default()
        };
        let mut out = RecordingEmitter::default();
        let disposition = self
            .operator
            .process(&record, &event, &mut self.stores, &mut out)
            .unwrap();
        assert_eq!(disposition, Disposition::Handled);
        out
    }
}

#[test]
fn dedupe_first_copy_passes_retries_are_duplicates_and_changed_payloads_conflict() {
    let mut harness = Harness::new(DedupeConfig::default());
    let first = harness.process(10, "pay-1", HOUR_MS, b"amount=5");
    assert_eq!(first.ports(), vec![Port::Main]);
    assert_eq!(
        first.header(0, DEDUPE_FIRST_SEEN_HEADER).as_deref(),
        Some("3600000")
    );

    let retry = harness.process(11, "pay-1", HOUR_MS, b"amount=5");
    assert_eq!(retry.ports(), vec![Port::Duplicates]);
    assert_eq!(
        retry.header(0, DEDUPE_FIRST_OFFSET_HEADER).as_deref(),
        Some("10")
    );
    assert_eq!(
        retry.header(0, DEDUPE_FIRST_PARTITION_HEADER).as_deref(),
        Some("0")
    );

    let conflict = harness.process(12, "pay-1", HOUR_MS, b"amount=6");
    assert_eq!(conflict.ports(), vec![Port::Conflicts]);

    let other = harness.process(13, "pay-2", HOUR_MS, b"amount=5");
    assert_eq!(other.ports(), vec![Port::Main]);
}

#[test]
fn dedupe_copy_after_the_horizon_is_new_again() {
    let mut harness = Harness::new(DedupeConfig {
        ttl_ms: HOUR_MS,
        ..DedupeConfig::default()
    });
    assert_eq!(harness.process(0, "a", 0, b"x").ports(), vec![Port::Main]);
    // Stream time moves on through another id.
    harness.process(1, "b", HOUR_MS - 1, b"x");
    assert_eq!(
        harness.process(2, "a", 0, b"x").ports(),
        vec![Port::Duplicates]
    );
    harness.process(3, "c", HOUR_MS, b"x");
    assert_eq!(
        harness.process(4, "a", 0, b"x").ports(),
        vec![Port::Main],
        "stream time reached first-seen + ttl"
    );
}

#[test]
fn dedupe_decisions_survive_commit_and_reopen_but_not_abort() {
    let mut harness = Harness::new(DedupeConfig::default());
    harness.process(0, "committed", 1_000, b"x");
    harness.commit(0);
    harness.process(1, "aborted", 2_000, b"x");
    // Abort: overlay discarded, hot state rolled back.
    harness.stores[0].discard();
    harness
        .operator
        .abort_partition(&mut harness.stores)
        .unwrap();
    assert_eq!(harness.operator.stream_time_ms(0), Some(1_000));
    assert_eq!(
        harness.process(1, "aborted", 2_000, b"x").ports(),
        vec![Port::Main]
    );
    harness.commit(1);

    // A fresh operator over the committed state decides the same way.
    harness.reopen();
    assert_eq!(harness.operator.stream_time_ms(0), Some(2_000));
    assert_eq!(
        harness.process(2, "committed", 2_000, b"x").ports(),
        vec![Port::Duplicates]
    );
    assert_eq!(
        harness.process(3, "aborted", 2_000, b"x").ports(),
        vec![Port::Duplicates]
    );
}

#[test]
fn dedupe_expiry_tombstones_old_keys_at_checkpoint() {
    let mut harness = Harness::new(DedupeConfig {
        ttl_ms: 100,
        ..DedupeConfig::default()
    });
    harness.process(0, "old", 0, b"x");
    harness.commit(0);
    harness.process(1, "new", 500, b"x");
    harness.operator.checkpoint(&mut harness.stores, 1).unwrap();
    let tombstones: Vec<Vec<u8>> = harness.stores[0]
        .dirty()
        .filter(|entry| entry.value.is_none())
        .map(|entry| entry.key.to_vec())
        .collect();
    assert_eq!(tombstones.len(), 1, "only `old` expired");
    assert!(tombstones[0].ends_with(b"old"));
}

#[test]
fn dedupe_missing_key_field_is_rejected_not_an_error() {
    let mut harness = Harness::new(DedupeConfig {
        key_fields: vec!["id".into(), "tenant".into()],
        ..DedupeConfig::default()
    });
    let record = RawRecord {
        topic: "t",
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: None,
        value: None,
        headers: &[],
    };
    let event = Envelope {
        id: "x".into(),
        ..Envelope::default()
    };
    let mut out = RecordingEmitter::default();
    let disposition = harness
        .operator
        .process(&record, &event, &mut harness.stores, &mut out)
        .unwrap();
    assert!(matches!(
        disposition,
        Disposition::Rejected {
            reason: "missing_field",
            ..
        }
    ));
    assert!(out.emitted.is_empty());
}

#[test]
fn dedupe_abort_after_the_filter_rotated_keeps_old_keys_findable() {
    let mut harness = Harness::new(DedupeConfig {
        ttl_ms: 100,
        ..DedupeConfig::default()
    });
    harness.process(0, "early", 50, b"x");
    harness.commit(0);
    // The aborted transaction moves stream time two generations on: the filter drops the
    // generation holding `early`.
    harness.process(1, "jump", 290, b"x");
    harness.stores[0].discard();
    harness
        .operator
        .abort_partition(&mut harness.stores)
        .unwrap();
    // Stream time is back at 50, where `early` is live: a copy is still a duplicate.
    assert_eq!(
        harness.process(1, "early", 60, b"x").ports(),
        vec![Port::Duplicates]
    );
}

#[test]
fn dedupe_rejects_event_times_far_from_stream_time_after_a_reopen_too() {
    let mut harness = Harness::new(DedupeConfig {
        max_event_time_ahead_ms: Some(HOUR_MS),
        max_event_time_behind_ms: Some(2 * HOUR_MS),
        ..DedupeConfig::default()
    });
    let base = 1_700_000_000_000;
    harness.process(0, "a", base, b"x");
    harness.commit(0);
    harness.reopen();
    let judge = |harness: &mut Harness, offset: i64, id: &str, time_ms: i64| {
        let record = RawRecord {
            topic: "payments",
            partition: 0,
            offset,
            timestamp_ms: None,
            key: None,
            value: Some(b"x"),
            headers: &[],
        };
        let event = Envelope {
            id: id.to_owned(),
            event_time_ms: time_ms,
            ..Envelope::default()
        };
        let mut out = RecordingEmitter::default();
        let disposition = harness
            .operator
            .process(&record, &event, &mut harness.stores, &mut out)
            .unwrap();
        (disposition, out.emitted.len())
    };
    // Stream time (restored from the store, not the wall clock) is `base`.
    let (disposition, emitted) = judge(&mut harness, 1, "future", base + HOUR_MS + 1);
    assert!(
        matches!(
            disposition,
            Disposition::Rejected {
                reason: "event_time_future",
                ..
            }
        ),
        "{disposition:?}"
    );
    assert_eq!(emitted, 0);
    let (disposition, _) = judge(&mut harness, 2, "past", base - 2 * HOUR_MS - 1);
    assert!(
        matches!(
            disposition,
            Disposition::Rejected {
                reason: "event_time_past",
                ..
            }
        ),
        "{disposition:?}"
    );
    // The rejected future event did not move stream time: an event at its edge is fine.
    assert_eq!(
        harness.process(3, "edge", base + HOUR_MS, b"x").ports(),
        vec![Port::Main]
    );
    assert_eq!(
        harness.process(4, "late-ok", base - HOUR_MS, b"x").ports(),
        vec![Port::Main],
        "within the bound behind the new stream time"
    );
}

fn lookup(harness: &mut Harness, key: &str) -> Option<serde_json::Value> {
    harness
        .operator
        .lookup(&mut harness.stores, &crate::Lookup::DedupeKey { key })
        .unwrap()
}

#[test]
fn lookup_answers_the_first_copy_within_the_horizon_without_changing_state() {
    let mut harness = Harness::new(DedupeConfig {
        ttl_ms: HOUR_MS,
        ..DedupeConfig::default()
    });
    assert!(harness.operator.answers(crate::LookupKind::DedupeKey));
    assert!(!harness.operator.answers(crate::LookupKind::LineageEvent));
    assert_eq!(lookup(&mut harness, "pay-1"), None);

    harness.process(10, "pay-1", 1_000, b"amount=5");
    // Uncommitted: read through the overlay.
    let first = lookup(&mut harness, "pay-1").unwrap();
    assert_eq!(first["key"], "pay-1");
    assert_eq!(first["event_time_ms"], 1_000);
    assert_eq!(first["first_seen_ms"], 1_000);
    assert_eq!(first["expires_at_ms"], 1_000 + HOUR_MS);
    assert_eq!(first["first_copy"]["partition"], 0);
    assert_eq!(first["first_copy"]["offset"], 10);
    assert_eq!(
        first["digest"],
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(b"amount=5"))
    );
    harness.commit(10);
    harness.reopen();
    assert_eq!(lookup(&mut harness, "pay-1").unwrap(), first);

    // The lookup wrote nothing and the next copy is still a duplicate of offset 10.
    let retry = harness.process(11, "pay-1", 2_000, b"amount=5");
    assert_eq!(retry.ports(), vec![Port::Duplicates]);
    assert_eq!(
        retry.header(0, DEDUPE_FIRST_OFFSET_HEADER).as_deref(),
        Some("10")
    );
    assert_eq!(lookup(&mut harness, "pay-2"), None);

    // Past the horizon the key counts as new again, and the lookup agrees.
    harness.process(12, "pay-3", 1_000 + HOUR_MS, b"x");
    assert_eq!(lookup(&mut harness, "pay-1"), None);
    assert!(lookup(&mut harness, "pay-3").is_some());

    let other = harness
        .operator
        .lookup(
            &mut harness.stores,
            &crate::Lookup::SamplingTrace { trace_id: [1; 16] },
        )
        .unwrap();
    assert_eq!(other, None);
}

#[test]
fn lookup_of_a_multi_field_key_is_not_answered() {
    let mut harness = Harness::new(DedupeConfig {
        key_fields: vec!["id".to_owned(), "source".to_owned()],
        ..DedupeConfig::default()
    });
    assert_eq!(lookup(&mut harness, "pay-1"), None);
}
