use breadcrumb_schemas::{AttributeValue, Envelope, RawRecord};
use breadcrumb_state::{PartitionStore, StateBackend, StateOptions};
use tempfile::TempDir;

use super::*;
use crate::operator::{Disposition, Operator, Port, Waiting};
use crate::testing::RecordingEmitter;

const SECOND_MS: i64 = 1_000;

/// One input event: `key` is the subject, the value is `key:sequence` so outputs are readable.
#[derive(Debug, Clone)]
struct Event {
    key: &'static str,
    sequence: Option<u64>,
    time_ms: i64,
    epoch: Option<i64>,
}

fn ev(key: &'static str, sequence: u64, time_ms: i64) -> Event {
    Event {
        key,
        sequence: Some(sequence),
        time_ms,
        epoch: None,
    }
}

fn ev_epoch(key: &'static str, epoch: i64, sequence: u64, time_ms: i64) -> Event {
    Event {
        epoch: Some(epoch),
        ..ev(key, sequence, time_ms)
    }
}

/// What came out, readably: `main key:seq`, `late key:seq (reason)`, `dup key:seq (of)`,
/// `gap key from..=to reason`.
fn describe(event: &Event, out: &RecordingEmitter) -> Vec<String> {
    out.emitted
        .iter()
        .enumerate()
        .map(|(index, emission)| {
            let label = match &emission.record {
                None => format!("{}:{}", event.key, event.sequence.unwrap()),
                Some(record) if emission.port == Port::Gaps => {
                    let value: serde_json::Value =
                        serde_json::from_slice(record.value.as_ref().unwrap()).unwrap();
                    return format!(
                        "gap {} {}..={} {}",
                        String::from_utf8_lossy(record.key.as_ref().unwrap()),
                        value["from_sequence"],
                        value["to_sequence"],
                        value["reason"].as_str().unwrap()
                    );
                }
                Some(record) => String::from_utf8(record.value.clone().unwrap()).unwrap(),
            };
            match emission.port {
                Port::Main => format!("main {label}"),
                Port::Late => format!(
                    "late {label} ({})",
                    out.header(index, ORDERING_LATE_REASON_HEADER).unwrap()
                ),
                Port::Duplicates => format!(
                    "dup {label} ({})",
                    out.header(index, ORDERING_REPEAT_HEADER).unwrap()
                ),
                other => format!("{} {label}", other.as_str()),
            }
        })
        .collect()
}

struct Harness {
    backend: StateBackend,
    operator: Ordering,
    config: OrderingConfig,
    stores: Vec<PartitionStore>,
    offset: i64,
    /// Last, so RocksDB closes before its directory goes.
    _dir: TempDir,
}

impl Harness {
    fn new(config: OrderingConfig) -> Self {
        assert!(
            config.validate("test").is_empty(),
            "{:?}",
            config.validate("test")
        );
        let dir = TempDir::new().unwrap();
        let operator = Ordering::new("pay", config.clone(), OrderingMetrics::unregistered());
        let names: Vec<String> = operator.stores().into_iter().map(|s| s.name).collect();
        let backend = StateBackend::open(dir.path(), &names, &StateOptions::default()).unwrap();
        let mut harness = Self {
            _dir: dir,
            stores: Vec::new(),
            backend,
            operator,
            config,
            offset: 0,
        };
        harness.reopen();
        harness
    }

    /// A new operator instance over the committed state (a restart): hot state and overlay gone.
    fn reopen(&mut self) {
        self.operator = Ordering::new("pay", self.config.clone(), OrderingMetrics::unregistered());
        let id = self.backend.store_id("pay-ordering").unwrap();
        self.stores = vec![self.backend.partition_store(id, 0)];
        self.operator.open_partition(&mut self.stores).unwrap();
    }

    fn commit(&mut self) {
        self.operator
            .checkpoint(&mut self.stores, self.offset - 1)
            .unwrap();
        let mut batch = self.backend.commit_batch();
        self.stores[0].commit_into(&mut batch);
        batch.write().unwrap();
    }

    fn abort(&mut self) {
        self.stores[0].discard();
        self.operator.abort_partition(&mut self.stores).unwrap();
    }

    fn try_process(&mut self, event: &Event) -> (Disposition, RecordingEmitter) {
        let value = format!("{}:{}", event.key, event.sequence.unwrap_or(0));
        let headers: [(&str, Option<&[u8]>); 1] = [("upstream", Some(b"kept"))];
        let record = RawRecord {
            topic: "payments",
            partition: 0,
            offset: self.offset,
            timestamp_ms: Some(event.time_ms),
            key: Some(event.key.as_bytes()),
            value: Some(value.as_bytes()),
            headers: &headers,
        };
        self.offset += 1;
        let mut envelope = Envelope {
            id: format!("id-{}", record.offset),
            subject: event.key.to_owned(),
            event_time_ms: event.time_ms,
            sequence: event.sequence,
            ..Envelope::default()
        };
        if let Some(epoch) = event.epoch {
            envelope
                .attributes
                .push(("epoch".to_owned(), AttributeValue::Integer(epoch)));
        }
        let mut out = RecordingEmitter::default();
        let disposition = self
            .operator
            .process(&record, &envelope, &mut self.stores, &mut out)
            .unwrap();
        (disposition, out)
    }

    fn process(&mut self, event: Event) -> Vec<String> {
        let (disposition, out) = self.try_process(&event);
        assert_eq!(disposition, Disposition::Handled);
        describe(&event, &out)
    }

    /// Processes events in order, returning everything emitted.
    fn run(&mut self, events: impl IntoIterator<Item = Event>) -> Vec<String> {
        events
            .into_iter()
            .flat_map(|event| self.process(event))
            .collect()
    }

    fn tick(&mut self, now_ms: i64) -> (Vec<String>, RecordingEmitter) {
        let mut out = RecordingEmitter::default();
        self.operator
            .on_processing_time(&mut self.stores, now_ms, &mut out)
            .unwrap();
        let placeholder = ev("-", 0, 0);
        (describe(&placeholder, &out), out)
    }

    fn waiting(&self) -> Waiting {
        self.operator.waiting(0)
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

fn first_sequence(first: u64) -> OrderingConfig {
    OrderingConfig {
        first_sequence: Some(first),
        ..OrderingConfig::default()
    }
}

#[test]
fn ordering_in_order_events_pass_at_once_and_held_ones_follow_when_the_gap_fills() {
    let mut harness = Harness::new(OrderingConfig::default());
    assert_eq!(harness.process(ev("a", 7, 0)), strings(&["main a:7"]));
    assert_eq!(harness.process(ev("b", 1, 1)), strings(&["main b:1"]));
    assert_eq!(harness.process(ev("a", 10, 2)), Vec::<String>::new());
    assert_eq!(harness.process(ev("a", 9, 3)), Vec::<String>::new());
    assert_eq!(harness.process(ev("b", 2, 4)), strings(&["main b:2"]));
    assert_eq!(
        harness.waiting(),
        Waiting {
            events: 2,
            bytes: harness.waiting().bytes
        }
    );
    assert!(harness.waiting().bytes > 0);
    assert_eq!(
        harness.process(ev("a", 8, 5)),
        strings(&["main a:8", "main a:9", "main a:10"])
    );
    assert_eq!(harness.waiting(), Waiting::default());
    assert_eq!(harness.process(ev("a", 11, 6)), strings(&["main a:11"]));
}

#[test]
fn ordering_released_records_keep_their_value_and_headers() {
    let mut harness = Harness::new(first_sequence(1));
    harness.process(ev("a", 2, 0));
    let (_, out) = harness.try_process(&ev("a", 1, 1));
    assert_eq!(out.emitted.len(), 2);
    assert_eq!(
        out.emitted[0].record, None,
        "the filling event is the current one"
    );
    let released = out.emitted[1].record.as_ref().unwrap();
    assert_eq!(released.value.as_deref(), Some(&b"a:2"[..]));
    assert_eq!(released.key.as_deref(), Some(&b"a"[..]));
    assert_eq!((released.topic.as_str(), released.offset), ("payments", 0));
    assert_eq!(released.timestamp_ms, Some(0));
    assert_eq!(
        released.headers,
        vec![("upstream".to_owned(), Some(b"kept".to_vec()))]
    );
    assert!(out.emitted[1].headers.is_empty());
}

#[test]
fn ordering_repeats_of_emitted_or_held_sequences_are_duplicates() {
    let mut harness = Harness::new(first_sequence(1));
    harness.run([ev("a", 1, 0), ev("a", 2, 0), ev("a", 5, 0)]);
    assert_eq!(
        harness.process(ev("a", 2, 1)),
        strings(&["dup a:2 (emitted)"])
    );
    assert_eq!(
        harness.process(ev("a", 5, 1)),
        strings(&["dup a:5 (waiting)"])
    );
    let (_, out) = harness.try_process(&ev("a", 1, 1));
    assert_eq!(
        out.header(0, ORDERING_NEXT_SEQUENCE_HEADER).as_deref(),
        Some("3")
    );
    assert_eq!(harness.waiting().events, 1, "the copy is not held again");
}

#[test]
fn ordering_event_time_timeout_gives_up_the_gap_and_later_arrivals_are_late() {
    let mut harness = Harness::new(OrderingConfig {
        gap_timeout_ms: 10 * SECOND_MS,
        ..first_sequence(1)
    });
    harness.run([
        ev("a", 1, 0),
        ev("a", 4, SECOND_MS),
        ev("a", 5, 2 * SECOND_MS),
    ]);
    // Another key moves stream time to just before the deadline: nothing happens.
    assert_eq!(
        harness.process(ev("b", 1, 11 * SECOND_MS - 1)),
        strings(&["main b:1"])
    );
    let (_, out) = harness.try_process(&ev("b", 2, 11 * SECOND_MS));
    assert_eq!(
        describe(&ev("b", 2, 0), &out),
        strings(&[
            "main b:2",
            "gap a 2..=3 event_time_timeout",
            "main a:4",
            "main a:5"
        ])
    );
    let gap = out.emitted[1].record.as_ref().unwrap();
    let value: serde_json::Value = serde_json::from_slice(gap.value.as_ref().unwrap()).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "type": "breadcrumb.ordering.gap", "pipeline": "pay", "key": {"subject": "a"},
            "epoch": null, "from_sequence": 2, "to_sequence": 3, "missing": 2,
            "waited_ms": 10_000, "reason": "event_time_timeout",
            "declared_at_ms": 11_000,
            "source": {"topic": "payments", "partition": 0, "offset": 4}
        })
    );
    assert_eq!(
        out.header(1, ORDERING_GAP_REASON_HEADER).as_deref(),
        Some("event_time_timeout")
    );
    assert_eq!((gap.partition, gap.offset), (0, 4), "source coordinates");
    assert_eq!(gap.timestamp_ms, Some(11_000));

    assert_eq!(
        harness.process(ev("a", 3, 12 * SECOND_MS)),
        strings(&["late a:3 (gap_declared)"])
    );
    assert_eq!(
        harness.process(ev("a", 5, 12 * SECOND_MS)),
        strings(&["dup a:5 (emitted)"])
    );
    assert_eq!(
        harness.process(ev("a", 6, 12 * SECOND_MS)),
        strings(&["main a:6"])
    );
}

#[test]
fn ordering_no_event_waits_longer_than_the_timeout_across_several_holes() {
    let mut harness = Harness::new(OrderingConfig {
        gap_timeout_ms: 100,
        ..first_sequence(1)
    });
    // Holes at 1 and 3; 4 arrives later than 2.
    harness.run([ev("a", 2, 0), ev("a", 4, 50)]);
    // At 100 the first hole is given up (2 waited 100); 4 has waited 50 only.
    assert_eq!(
        harness.process(ev("z", 1, 100)),
        strings(&["main z:1", "gap a 1..=1 event_time_timeout", "main a:2"])
    );
    assert_eq!(harness.waiting().events, 1);
    assert_eq!(
        harness.process(ev("z", 2, 150)),
        strings(&["main z:2", "gap a 3..=3 event_time_timeout", "main a:4"])
    );
    // A jump past both deadlines at once gives up both holes, in order.
    harness.run([ev("a", 6, 200), ev("a", 8, 210)]);
    assert_eq!(
        harness.process(ev("z", 3, 1_000)),
        strings(&[
            "main z:3",
            "gap a 5..=5 event_time_timeout",
            "main a:6",
            "gap a 7..=7 event_time_timeout",
            "main a:8"
        ])
    );
}

#[test]
fn ordering_timeouts_of_several_keys_fire_in_deadline_then_key_order() {
    let mut harness = Harness::new(OrderingConfig {
        gap_timeout_ms: 100,
        ..first_sequence(1)
    });
    harness.run([ev("c", 2, 0), ev("b", 2, 10), ev("a", 2, 10)]);
    assert_eq!(
        harness.process(ev("z", 1, 500)),
        strings(&[
            "main z:1",
            "gap c 1..=1 event_time_timeout",
            "main c:2",
            "gap a 1..=1 event_time_timeout",
            "main a:2",
            "gap b 1..=1 event_time_timeout",
            "main b:2",
        ])
    );
}

#[test]
fn ordering_the_record_that_moves_stream_time_fills_its_gap_before_timers_fire() {
    let mut harness = Harness::new(OrderingConfig {
        gap_timeout_ms: 100,
        ..first_sequence(1)
    });
    harness.process(ev("a", 2, 0));
    assert_eq!(
        harness.process(ev("a", 1, 100)),
        strings(&["main a:1", "main a:2"])
    );
}

#[test]
fn ordering_processing_time_timeout_gives_up_gaps_when_stream_time_stalls() {
    let mut harness = Harness::new(OrderingConfig {
        gap_timeout_processing_ms: Some(30 * SECOND_MS),
        ..first_sequence(1)
    });
    harness.run([ev("a", 3, 0), ev("a", 4, 0)]);
    // The first tick starts the key's processing-time clock.
    assert!(harness.tick(1_000_000).0.is_empty());
    assert!(harness.tick(1_029_999).0.is_empty());
    let (described, out) = harness.tick(1_030_000);
    assert_eq!(
        described,
        strings(&[
            "gap a 1..=2 processing_time_timeout",
            "main a:3",
            "main a:4"
        ])
    );
    let gap = out.emitted[0].record.as_ref().unwrap();
    let value: serde_json::Value = serde_json::from_slice(gap.value.as_ref().unwrap()).unwrap();
    assert_eq!(value["waited_ms"], 30_000);
    assert_eq!(value["declared_at_ms"], 1_030_000);
    // No triggering record: attributed to the first record released.
    assert_eq!(value["source"]["offset"], 0);
    assert_eq!(harness.waiting(), Waiting::default());

    // Without the setting, processing time changes nothing.
    let mut event_time_only = Harness::new(first_sequence(1));
    event_time_only.process(ev("a", 3, 0));
    event_time_only.tick(0);
    assert!(event_time_only.tick(i64::MAX / 2).0.is_empty());
    assert_eq!(event_time_only.waiting().events, 1);
}

#[test]
fn ordering_per_key_overflow_forces_a_gap_and_may_release_the_current_record() {
    let mut harness = Harness::new(OrderingConfig {
        max_waiting_events_per_key: 3,
        ..first_sequence(1)
    });
    harness.run([ev("a", 5, 0), ev("a", 6, 0), ev("a", 9, 0)]);
    // A fourth held event for `a`: the hole below the lowest (now 3) is given up.
    assert_eq!(
        harness.process(ev("a", 3, 1)),
        strings(&["gap a 1..=2 overflow", "main a:3"])
    );
    assert_eq!(harness.waiting().events, 3);
    assert_eq!(
        harness.process(ev("a", 10, 2)),
        strings(&["gap a 4..=4 overflow", "main a:5", "main a:6"])
    );
    assert_eq!(harness.waiting().events, 2, "9 and 10 wait for 7 and 8");
    // The released current record was never written to the store: a restart holds 9 and 10.
    harness.commit();
    harness.reopen();
    assert_eq!(harness.waiting().events, 2);
    assert_eq!(harness.process(ev("a", 7, 3)), strings(&["main a:7"]));
    assert_eq!(
        harness.process(ev("a", 8, 3)),
        strings(&["main a:8", "main a:9", "main a:10"])
    );
}

#[test]
fn ordering_partition_byte_budget_gives_up_the_longest_waiting_key() {
    let mut probe = Harness::new(first_sequence(1));
    probe.process(ev("a", 3, 0));
    let one = probe.waiting().bytes as usize;

    let mut harness = Harness::new(OrderingConfig {
        max_waiting_bytes_per_partition: 3 * one,
        ..first_sequence(1)
    });
    harness.run([ev("a", 3, 0), ev("b", 2, 5), ev("c", 4, 10)]);
    assert_eq!(harness.waiting().bytes as usize, 3 * one);
    assert_eq!(
        harness.process(ev("d", 2, 20)),
        strings(&["gap a 1..=2 overflow", "main a:3"])
    );
    assert_eq!(harness.waiting().events, 3);
    assert!(harness.waiting().bytes as usize <= 3 * one);
}

#[test]
fn ordering_a_higher_epoch_restarts_the_key_and_a_lower_one_is_late() {
    let mut harness = Harness::new(OrderingConfig {
        epoch_field: Some("epoch".to_owned()),
        ..OrderingConfig::default()
    });
    harness.run([
        ev_epoch("a", 1, 10, 0),
        ev_epoch("a", 1, 13, 0),
        ev_epoch("a", 1, 15, 0),
    ]);
    // Epoch 2 starts at whatever sequence it brings; epoch 1's holes are given up in order.
    assert_eq!(
        harness.process(ev_epoch("a", 2, 100, 1)),
        strings(&[
            "gap a 11..=12 epoch_change",
            "main a:13",
            "gap a 14..=14 epoch_change",
            "main a:15",
            "main a:100"
        ])
    );
    assert_eq!(
        harness.process(ev_epoch("a", 1, 16, 2)),
        strings(&["late a:16 (stale_epoch)"])
    );
    assert_eq!(
        harness.process(ev_epoch("a", 2, 99, 2)),
        strings(&["late a:99 (before_start)"])
    );
    assert_eq!(
        harness.process(ev_epoch("a", 2, 101, 2)),
        strings(&["main a:101"])
    );

    let (_, out) = harness.try_process(&ev_epoch("a", 2, 103, 3));
    assert!(out.emitted.is_empty());
    let (_, out) = harness.try_process(&ev_epoch("a", 3, 0, 4));
    let value: serde_json::Value = serde_json::from_slice(
        out.emitted[0]
            .record
            .as_ref()
            .unwrap()
            .value
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(value["epoch"], 2, "the gap belongs to the old epoch");
    assert_eq!(value["reason"], "epoch_change");
}

#[test]
fn ordering_first_sequence_holds_a_key_whose_first_event_is_ahead() {
    let mut harness = Harness::new(first_sequence(0));
    assert!(harness.process(ev("a", 2, 0)).is_empty());
    assert_eq!(harness.process(ev("a", 0, 0)), strings(&["main a:0"]));
    assert_eq!(
        harness.process(ev("a", 1, 0)),
        strings(&["main a:1", "main a:2"])
    );

    let mut from_one = Harness::new(first_sequence(1));
    assert_eq!(
        from_one.process(ev("a", 0, 0)),
        strings(&["late a:0 (before_start)"])
    );
}

#[test]
fn ordering_without_first_sequence_earlier_sequences_than_the_first_seen_are_late() {
    let mut harness = Harness::new(OrderingConfig::default());
    assert_eq!(harness.process(ev("a", 5, 0)), strings(&["main a:5"]));
    assert_eq!(
        harness.process(ev("a", 4, 0)),
        strings(&["late a:4 (before_start)"])
    );
}

#[test]
fn ordering_forgotten_gap_history_sends_unknown_old_sequences_to_late() {
    let mut harness = Harness::new(OrderingConfig {
        max_gap_ranges_per_key: 1,
        gap_timeout_ms: 10,
        ..first_sequence(1)
    });
    harness.run([ev("a", 1, 0), ev("a", 3, 0), ev("z", 1, 100)]); // gives up 2
    harness.run([ev("a", 4, 100), ev("a", 6, 100), ev("z", 2, 200)]); // gives up 5; 2 forgotten
    assert_eq!(
        harness.process(ev("a", 2, 200)),
        strings(&["late a:2 (gap_history_forgotten)"])
    );
    assert_eq!(
        harness.process(ev("a", 1, 200)),
        strings(&["late a:1 (gap_history_forgotten)"]),
        "below a forgotten range, an emitted sequence cannot be told from a missed one"
    );
    assert_eq!(
        harness.process(ev("a", 5, 200)),
        strings(&["late a:5 (gap_declared)"])
    );
    assert_eq!(
        harness.process(ev("a", 6, 200)),
        strings(&["dup a:6 (emitted)"])
    );
}

#[test]
fn ordering_rejects_events_without_key_or_sequence() {
    let mut harness = Harness::new(OrderingConfig::default());
    let no_sequence = Event {
        sequence: None,
        ..ev("a", 0, 0)
    };
    let (disposition, out) = harness.try_process(&no_sequence);
    assert!(matches!(
        disposition,
        Disposition::Rejected {
            reason: "missing_field",
            ..
        }
    ));
    assert!(out.emitted.is_empty());
    let (disposition, _) = harness.try_process(&ev("", 1, 0));
    assert!(matches!(
        disposition,
        Disposition::Rejected {
            reason: "missing_field",
            ..
        }
    ));

    let mut with_epoch = Harness::new(OrderingConfig {
        epoch_field: Some("epoch".to_owned()),
        ..OrderingConfig::default()
    });
    let (disposition, _) = with_epoch.try_process(&ev("a", 1, 0));
    assert!(matches!(
        disposition,
        Disposition::Rejected {
            reason: "missing_field",
            ..
        }
    ));
    assert_eq!(with_epoch.waiting(), Waiting::default());
}

#[test]
fn ordering_reads_sequence_and_epoch_attributes_as_integers_or_integer_strings() {
    let config = OrderingConfig {
        key_fields: vec!["tenant".to_owned(), "subject".to_owned()],
        sequence_field: "seq".to_owned(),
        epoch_field: Some("gen".to_owned()),
        first_sequence: Some(1),
        ..OrderingConfig::default()
    };
    let mut harness = Harness::new(config);
    let mut decide = |seq: AttributeValue, generation: AttributeValue| {
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
            subject: "a".into(),
            attributes: vec![
                ("tenant".into(), AttributeValue::String("t1".into())),
                ("seq".into(), seq),
                ("gen".into(), generation),
            ],
            ..Envelope::default()
        };
        let mut out = RecordingEmitter::default();
        let disposition = harness
            .operator
            .process(&record, &event, &mut harness.stores, &mut out)
            .unwrap();
        (disposition, out.ports())
    };
    use AttributeValue::{Boolean, Integer, String as Text};
    assert_eq!(
        decide(Integer(1), Integer(0)),
        (Disposition::Handled, vec![Port::Main])
    );
    assert_eq!(
        decide(Text(" 2 ".into()), Text("0".into())),
        (Disposition::Handled, vec![Port::Main])
    );
    for (seq, generation) in [
        (Integer(-1), Integer(0)),
        (Text("x".into()), Integer(0)),
        (Boolean(true), Integer(0)),
        (Integer(3), Text("new".into())),
    ] {
        assert!(matches!(
            decide(seq, generation).0,
            Disposition::Rejected {
                reason: "invalid_field",
                ..
            }
        ));
    }
}

#[test]
fn ordering_held_events_survive_commit_and_restart() {
    let mut harness = Harness::new(first_sequence(1));
    harness.run([ev("a", 1, 0), ev("a", 3, 1), ev("a", 4, 2), ev("b", 2, 3)]);
    let before = harness.waiting();
    harness.commit();
    harness.reopen();
    assert_eq!(harness.waiting(), before);
    assert_eq!(before.events, 3);
    assert_eq!(harness.operator.stream_time_ms(0), Some(3));
    assert_eq!(
        harness.process(ev("a", 2, 4)),
        strings(&["main a:2", "main a:3", "main a:4"])
    );
    assert_eq!(
        harness.process(ev("a", 4, 4)),
        strings(&["dup a:4 (emitted)"])
    );
    assert_eq!(
        harness.process(ev("b", 1, 4)),
        strings(&["main b:1", "main b:2"])
    );
    assert_eq!(harness.waiting(), Waiting::default());

    // Released events are gone from the store too.
    harness.commit();
    harness.reopen();
    assert_eq!(harness.waiting(), Waiting::default());
    assert_eq!(harness.process(ev("a", 5, 5)), strings(&["main a:5"]));
}

#[test]
fn ordering_timers_restart_from_the_stored_hold_times() {
    let mut harness = Harness::new(OrderingConfig {
        gap_timeout_ms: 100,
        ..first_sequence(1)
    });
    harness.run([ev("a", 2, 0), ev("z", 1, 60)]);
    harness.commit();
    harness.reopen();
    assert_eq!(harness.process(ev("z", 2, 99)), strings(&["main z:2"]));
    assert_eq!(
        harness.process(ev("z", 3, 100)),
        strings(&["main z:3", "gap a 1..=1 event_time_timeout", "main a:2"])
    );
}

#[test]
fn ordering_abort_drops_the_open_transaction_and_keeps_what_committed() {
    let mut harness = Harness::new(first_sequence(1));
    harness.run([ev("a", 3, 0), ev("b", 1, 0)]);
    harness.commit();
    // The aborted transaction releases a:3 (filling a:1, a:2), holds a:5 and b:3, moves b on.
    harness.run([
        ev("a", 1, 5),
        ev("a", 2, 5),
        ev("a", 5, 5),
        ev("b", 3, 5),
        ev("b", 2, 5),
    ]);
    assert_eq!(harness.waiting().events, 1);
    harness.abort();
    assert_eq!(harness.waiting().events, 1, "a:3 is held again");
    assert_eq!(harness.operator.stream_time_ms(0), Some(0));
    // Replayed after the abort, the same input decides the same way.
    assert_eq!(
        harness.run([ev("a", 1, 5), ev("a", 2, 5)]),
        strings(&["main a:1", "main a:2", "main a:3"])
    );
    assert_eq!(harness.process(ev("b", 2, 5)), strings(&["main b:2"]));
    harness.commit();
    harness.reopen();
    assert_eq!(harness.waiting(), Waiting::default());
    assert_eq!(harness.process(ev("a", 4, 6)), strings(&["main a:4"]));
    assert_eq!(
        harness.process(ev("b", 2, 6)),
        strings(&["dup b:2 (emitted)"])
    );
}

#[test]
fn ordering_abort_after_checkpoint_forgets_heads_written_by_the_checkpoint() {
    let mut harness = Harness::new(first_sequence(1));
    harness.run([ev("a", 1, 0)]);
    harness.commit();
    harness.run([ev("a", 2, 0)]);
    harness
        .operator
        .checkpoint(&mut harness.stores, harness.offset - 1)
        .unwrap();
    harness.abort();
    assert_eq!(harness.process(ev("a", 2, 0)), strings(&["main a:2"]));
}

#[test]
fn ordering_idle_keys_expire_after_the_ttl_and_start_afresh() {
    let mut harness = Harness::new(OrderingConfig {
        key_ttl_ms: 1_000,
        gap_timeout_ms: 100,
        ..OrderingConfig::default()
    });
    // Expiries round up to a sixteenth of the TTL (62 ms): `a`, changed at 0, expires at 1054.
    assert_eq!(head_expiry(0, 1_000), 1_054);
    assert_eq!(head_expiry(-1, 1_000), 1_054);
    assert_eq!(head_expiry(992, 1_000), 2_046);
    harness.run([ev("a", 5, 0), ev("b", 1, 500)]);
    harness.commit();
    harness.process(ev("b", 2, 1_053));
    harness
        .operator
        .checkpoint(&mut harness.stores, harness.offset - 1)
        .unwrap();
    assert!(
        harness.stores[0].dirty().all(|entry| entry.value.is_some()),
        "not yet due"
    );
    harness.process(ev("b", 3, 1_054));
    harness
        .operator
        .checkpoint(&mut harness.stores, harness.offset - 1)
        .unwrap();
    let tombstones: Vec<Vec<u8>> = harness.stores[0]
        .dirty()
        .filter(|entry| entry.value.is_none())
        .map(|entry| entry.key.to_vec())
        .collect();
    let a_head = harness
        .operator
        .head_store_key(&Envelope {
            subject: "a".into(),
            ..Envelope::default()
        })
        .unwrap();
    assert_eq!(tombstones, vec![a_head]);
    // `a` starts afresh at whatever comes first.
    assert_eq!(harness.process(ev("a", 2, 1_054)), strings(&["main a:2"]));
}

#[test]
fn ordering_a_key_with_held_events_never_expires_before_its_gap_is_given_up() {
    let mut harness = Harness::new(OrderingConfig {
        key_ttl_ms: 1_000,
        gap_timeout_ms: 900,
        ..first_sequence(1)
    });
    harness.process(ev("a", 2, 0));
    // The jump passes both the gap deadline and the head's expiry: the held record arrives
    // first and joins the key's held events, then the gap is given up.
    assert_eq!(
        harness.process(ev("a", 3, 5_000)),
        strings(&["gap a 1..=1 event_time_timeout", "main a:2", "main a:3"])
    );
}

#[test]
fn ordering_head_cache_stays_bounded_and_decisions_do_not_depend_on_it() {
    let config = OrderingConfig {
        head_cache_keys_per_partition: 3,
        ..first_sequence(1)
    };
    let mut small = Harness::new(config);
    let mut roomy = Harness::new(first_sequence(1));
    let keys = ["a", "b", "c", "d", "e", "f", "g"];
    for round in 0..4u64 {
        for (index, key) in keys.iter().enumerate() {
            // Every other key's events arrive swapped in pairs: 2,1,4,3,...
            let pair = if index % 2 == 0 {
                [2 * round + 2, 2 * round + 1]
            } else {
                [2 * round + 1, 2 * round + 2]
            };
            for sequence in pair {
                let event = ev(key, sequence, round as i64);
                assert_eq!(small.process(event.clone()), roomy.process(event));
            }
            assert!(small.operator.cached_heads() <= 3 + 1);
        }
        if round == 1 {
            small.commit();
            roomy.commit();
        }
    }
    assert_eq!(small.waiting(), roomy.waiting());
}

#[test]
fn ordering_metrics_observe_held_events_only() {
    let metrics = OrderingMetrics::unregistered();
    let dir = TempDir::new().unwrap();
    let mut operator = Ordering::new("pay", first_sequence(1), metrics.clone());
    let names: Vec<String> = operator.stores().into_iter().map(|s| s.name).collect();
    let backend = StateBackend::open(dir.path(), &names, &StateOptions::default()).unwrap();
    let mut stores = vec![backend.partition_store(backend.store_id("pay-ordering").unwrap(), 0)];
    operator.open_partition(&mut stores).unwrap();
    for (offset, (sequence, time_ms)) in [(1, 0), (4, 1_000), (2, 1_500), (3, 3_000)]
        .into_iter()
        .enumerate()
    {
        let record = RawRecord {
            topic: "t",
            partition: 0,
            offset: offset as i64,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: &[],
        };
        let event = Envelope {
            subject: "a".into(),
            sequence: Some(sequence),
            event_time_ms: time_ms,
            ..Envelope::default()
        };
        operator
            .process(
                &record,
                &event,
                &mut stores,
                &mut RecordingEmitter::default(),
            )
            .unwrap();
    }
    assert_eq!(metrics.reorder_depth.get_sample_count(), 1);
    assert_eq!(
        metrics.reorder_depth.get_sample_sum(),
        2.0,
        "4 arrived when 2 was next"
    );
    assert_eq!(metrics.time_in_buffer_seconds.get_sample_count(), 1);
    assert_eq!(metrics.time_in_buffer_seconds.get_sample_sum(), 2.0);
}
