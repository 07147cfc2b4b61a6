//! A synthetic payments workload: CloudEvents (structured mode) with producer-retry duplicates,
//! conflicting reuses of ids and poison records, deterministic for a given seed.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

use crate::error::Result;

/// Shape of the workload.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Records to produce, copies and poison included.
    pub records: u64,
    /// Percentage of records that are exact copies of an earlier event (producer retries).
    pub duplicate_percent: f64,
    /// Percentage of records that reuse an earlier id with a different payload.
    pub conflict_percent: f64,
    /// Percentage of records that cannot be decoded or lack an id.
    pub poison_percent: f64,
    /// Distinct accounts (the Kafka key, so each account's events share a partition).
    pub accounts: u64,
    /// Event time of the first event, ms since the epoch.
    pub start_time_ms: i64,
    /// Event time step between events, ms.
    pub time_step_ms: i64,
    /// Percentage of accounts whose payments arrive shuffled: about half of their events are
    /// held back and sent after the account's next event.
    pub shuffled_accounts_percent: f64,
    /// Percentage of new events whose account skips a sequence number first (a real gap).
    pub sequence_gap_percent: f64,
    pub seed: u64,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self {
            records: 10_000,
            duplicate_percent: 8.0,
            conflict_percent: 0.5,
            poison_percent: 0.5,
            accounts: 500,
            start_time_ms: 1_790_000_000_000,
            time_step_ms: 10,
            shuffled_accounts_percent: 0.0,
            sequence_gap_percent: 0.0,
            seed: 7,
        }
    }
}

/// What kind of record the generator produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    New,
    Duplicate,
    Conflict,
    Poison,
}

/// One generated record.
#[derive(Debug, Clone)]
pub struct WorkloadRecord {
    pub kind: RecordKind,
    /// The event id (empty for poison).
    pub id: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The account's sequence number of the event (the CloudEvents `sequence` extension).
    pub sequence: u64,
    /// Whether the event was held back and arrives after a later event of its account.
    pub reordered: bool,
    /// Whether its account skipped a sequence number just before it (a gap that never fills).
    pub gap_before: bool,
}

/// The content type of structured-mode CloudEvents.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// Generates the workload's records in order.
pub struct Workload {
    spec: WorkloadSpec,
    rng: StdRng,
    produced: u64,
    /// Earlier events (id, key, value, sequence) that copies are drawn from; bounded.
    recent: Vec<(String, Vec<u8>, Vec<u8>, u64)>,
    next_event: u64,
    /// Next sequence number per account.
    next_sequence: Vec<u64>,
    /// Per account, an event held back to arrive after the account's next one.
    held: Vec<Option<WorkloadRecord>>,
    /// Events due before any new one is generated.
    ready: std::collections::VecDeque<WorkloadRecord>,
}

const RECENT_EVENTS: usize = 4_096;

impl Workload {
    pub fn new(spec: WorkloadSpec) -> Self {
        Self {
            rng: StdRng::seed_from_u64(spec.seed),
            produced: 0,
            recent: Vec::with_capacity(RECENT_EVENTS),
            next_event: 0,
            next_sequence: vec![1; spec.accounts.max(1) as usize],
            held: vec![None; spec.accounts.max(1) as usize],
            ready: std::collections::VecDeque::new(),
            spec,
        }
    }

    fn is_shuffled(&self, account: u64) -> bool {
        (account as f64) < self.spec.accounts as f64 * self.spec.shuffled_accounts_percent / 100.0
    }

    /// Makes `record` visible as sent: later copies may be drawn from it.
    fn sent(&mut self, record: WorkloadRecord) -> WorkloadRecord {
        let entry = (
            record.id.clone(),
            record.key.clone(),
            record.value.clone(),
            record.sequence,
        );
        if self.recent.len() < RECENT_EVENTS {
            self.recent.push(entry);
        } else {
            let slot = self.rng.random_range(0..RECENT_EVENTS);
            self.recent[slot] = entry;
        }
        record
    }

    fn event(
        &mut self,
        id: &str,
        account: u64,
        amount_cents: u64,
        index: u64,
        sequence: u64,
    ) -> Vec<u8> {
        let time_ms = self.spec.start_time_ms + index as i64 * self.spec.time_step_ms;
        let time = time::OffsetDateTime::from_unix_timestamp_nanos(time_ms as i128 * 1_000_000)
            .ok()
            .and_then(|time| {
                time.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned());
        serde_json::json!({
            "specversion": "1.0",
            "id": id,
            "source": "/payments/gateway",
            "type": "com.example.payment.authorized",
            "subject": format!("acct-{account}"),
            "time": time,
            "sequence": sequence.to_string(),
            "datacontenttype": "application/json",
            "data": {
                "account": format!("acct-{account}"),
                "amount_cents": amount_cents,
                "currency": "EUR",
                "merchant": format!("merchant-{}", account % 37),
            }
        })
        .to_string()
        .into_bytes()
    }
}

impl Iterator for Workload {
    type Item = WorkloadRecord;

    fn next(&mut self) -> Option<WorkloadRecord> {
        if let Some(record) = self.ready.pop_front() {
            return Some(self.sent(record));
        }
        if self.produced >= self.spec.records {
            // Whatever is still held back arrives last.
            let mut held = self.held.iter_mut().find_map(Option::take)?;
            // Nothing of its account overtook it after all.
            held.reordered = false;
            return Some(self.sent(held));
        }
        self.produced += 1;
        let roll: f64 = self.rng.random_range(0.0..100.0);
        let duplicate_bound = self.spec.duplicate_percent;
        let conflict_bound = duplicate_bound + self.spec.conflict_percent;
        let poison_bound = conflict_bound + self.spec.poison_percent;
        if roll < duplicate_bound && !self.recent.is_empty() {
            let pick = self.rng.random_range(0..self.recent.len());
            let (id, key, value, sequence) = self.recent[pick].clone();
            return Some(WorkloadRecord {
                kind: RecordKind::Duplicate,
                id,
                key,
                value,
                sequence,
                reordered: false,
                gap_before: false,
            });
        }
        if roll < conflict_bound && roll >= duplicate_bound && !self.recent.is_empty() {
            let pick = self.rng.random_range(0..self.recent.len());
            let (id, key, _, sequence) = self.recent[pick].clone();
            let account = self.rng.random_range(0..self.spec.accounts.max(1));
            let index = self.next_event;
            let value = self.event(&id, account, 1_000_000 + self.produced, index, sequence);
            return Some(WorkloadRecord {
                kind: RecordKind::Conflict,
                id,
                key,
                value,
                sequence,
                reordered: false,
                gap_before: false,
            });
        }
        if roll < poison_bound && roll >= conflict_bound {
            let value = match self.rng.random_range(0..3) {
                0 => b"{\"specversion\":\"1.0\",\"id\":".to_vec(),
                1 => br#"{"specversion":"1.0","source":"/payments","type":"x"}"#.to_vec(),
                _ => vec![0xff, 0xfe, 0x00, 0x01],
            };
            return Some(WorkloadRecord {
                kind: RecordKind::Poison,
                id: String::new(),
                key: b"poison".to_vec(),
                value,
                sequence: 0,
                reordered: false,
                gap_before: false,
            });
        }
        let index = self.next_event;
        self.next_event += 1;
        let id = format!("pay-{:016x}-{index}", self.spec.seed);
        let account = self.rng.random_range(0..self.spec.accounts.max(1));
        let amount = self.rng.random_range(100..100_000);
        let gap_before = self.rng.random_range(0.0..100.0) < self.spec.sequence_gap_percent;
        if gap_before {
            self.next_sequence[account as usize] += 1;
        }
        let sequence = self.next_sequence[account as usize];
        self.next_sequence[account as usize] += 1;
        let value = self.event(&id, account, amount, index, sequence);
        let key = format!("acct-{account}").into_bytes();
        let mut record = WorkloadRecord {
            kind: RecordKind::New,
            id,
            key,
            value,
            sequence,
            reordered: false,
            gap_before,
        };
        let slot = account as usize;
        if let Some(held) = self.held[slot].take() {
            // The held event follows the one that overtook it.
            self.ready.push_back(held);
        } else if self.is_shuffled(account) && self.rng.random_bool(0.5) {
            record.reordered = true;
            self.held[slot] = Some(record);
            return self.next();
        }
        Some(self.sent(record))
    }
}

/// Counts of what was produced, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProducedCounts {
    pub new: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub poison: u64,
    /// New events that arrived after a later event of their account.
    pub reordered: u64,
    /// Sequence numbers skipped (gaps that never fill).
    pub sequence_gaps: u64,
}

impl ProducedCounts {
    pub fn total(&self) -> u64 {
        self.new + self.duplicates + self.conflicts + self.poison
    }
}

/// Produces a workload to `topic`, at most `rate_per_second` records per second (0: no limit).
/// `on_progress` is called every thousand records.
pub fn produce(
    client_config: &ClientConfig,
    topic: &str,
    spec: WorkloadSpec,
    rate_per_second: u64,
    mut on_progress: impl FnMut(u64),
) -> Result<ProducedCounts> {
    let mut producer_config = client_config.clone();
    producer_config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    let producer: ThreadedProducer<DefaultProducerContext> = producer_config.create()?;
    let mut counts = ProducedCounts::default();
    let started = Instant::now();
    for (index, record) in Workload::new(spec).enumerate() {
        match record.kind {
            RecordKind::New => {
                counts.new += 1;
                counts.reordered += u64::from(record.reordered);
                counts.sequence_gaps += u64::from(record.gap_before);
            }
            RecordKind::Duplicate => counts.duplicates += 1,
            RecordKind::Conflict => counts.conflicts += 1,
            RecordKind::Poison => counts.poison += 1,
        }
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(CLOUDEVENTS_JSON),
        });
        let pending = BaseRecord::to(topic)
            .key(&record.key[..])
            .payload(&record.value[..])
            .headers(headers);
        send_when_queue_has_room(&producer, pending)?;
        let sent = index as u64 + 1;
        if rate_per_second > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate_per_second as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if sent.is_multiple_of(1_000) {
            on_progress(sent);
        }
    }
    producer.flush(Duration::from_secs(60))?;
    on_progress(counts.total());
    Ok(counts)
}

/// Sends `record`, waiting while the producer's queue is full: the generators produce as fast as
/// the broker takes records, and a full queue is their back-pressure.
pub(crate) fn send_when_queue_has_room(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                returned,
            )) => {
                record = returned;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_is_deterministic_and_mixes_kinds_as_asked() {
        let spec = WorkloadSpec {
            records: 20_000,
            duplicate_percent: 10.0,
            conflict_percent: 2.0,
            poison_percent: 1.0,
            ..WorkloadSpec::default()
        };
        let first: Vec<_> = Workload::new(spec.clone()).collect();
        let second: Vec<_> = Workload::new(spec).collect();
        assert_eq!(first.len(), 20_000);
        assert!(first.iter().zip(&second).all(|(a, b)| a.value == b.value));
        let count = |kind| first.iter().filter(|record| record.kind == kind).count();
        assert!((1_700..2_300).contains(&count(RecordKind::Duplicate)));
        assert!((300..500).contains(&count(RecordKind::Conflict)));
        assert!((100..300).contains(&count(RecordKind::Poison)));
        assert!(first
            .iter()
            .all(|record| !record.reordered && !record.gap_before));
        // Copies are byte-identical to an earlier event with the same id.
        for (index, record) in first.iter().enumerate() {
            if record.kind == RecordKind::Duplicate {
                assert!(first[..index]
                    .iter()
                    .any(|earlier| earlier.kind == RecordKind::New
                        && earlier.id == record.id
                        && earlier.value == record.value));
            }
        }
    }

    #[test]
    fn shuffled_accounts_arrive_out_of_order_with_the_asked_gaps() {
        let spec = WorkloadSpec {
            records: 20_000,
            accounts: 100,
            shuffled_accounts_percent: 20.0,
            sequence_gap_percent: 1.0,
            ..WorkloadSpec::default()
        };
        let records: Vec<_> = Workload::new(spec).collect();
        let new: Vec<_> = records
            .iter()
            .filter(|record| record.kind == RecordKind::New)
            .collect();
        let mut per_account: std::collections::HashMap<&[u8], Vec<&WorkloadRecord>> =
            Default::default();
        for record in &new {
            per_account.entry(&record.key).or_default().push(record);
        }
        let mut out_of_order = 0;
        for (key, events) in &per_account {
            let account: u64 = std::str::from_utf8(&key[5..]).unwrap().parse().unwrap();
            for pair in events.windows(2) {
                if pair[1].sequence < pair[0].sequence {
                    out_of_order += 1;
                    assert!(account < 20, "only the first 20% of accounts are shuffled");
                    assert!(pair[1].reordered);
                }
            }
            // Every sequence number from 1 up arrives once, except the skipped ones.
            let mut sequences: Vec<u64> = events.iter().map(|record| record.sequence).collect();
            sequences.sort_unstable();
            let skipped = events.iter().filter(|record| record.gap_before).count() as u64;
            assert_eq!(
                *sequences.last().unwrap(),
                sequences.len() as u64 + skipped,
                "account {account}"
            );
            sequences.dedup();
            assert_eq!(sequences.len(), events.len());
        }
        let reordered = new.iter().filter(|record| record.reordered).count();
        assert_eq!(out_of_order, reordered);
        assert!(reordered > 500, "{reordered} reordered");
        let gaps = new.iter().filter(|record| record.gap_before).count();
        assert!((100..300).contains(&gaps), "{gaps} gaps");
    }
}
