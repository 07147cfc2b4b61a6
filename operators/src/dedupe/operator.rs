//! The dedupe decision and its state.

use std::collections::HashMap;

use breadcrumb_schemas::envelope::FieldRef;
use breadcrumb_schemas::{Envelope, RawRecord};
use breadcrumb_state::{PartitionStore, NO_EXPIRY};
use smallvec::SmallVec;
use xxhash_rust::xxh3::xxh3_64;

use super::config::DedupeConfig;
use super::filter::GenerationalFilter;
use crate::operator::{
    Disposition, Emitter, Header, Lookup, LookupKind, Operator, Port, StoreDeclaration,
};
use crate::{OperatorError, Result};

/// Stream time (ms) at which the event was first seen; on first copies and on duplicates.
pub const DEDUPE_FIRST_SEEN_HEADER: &str = "breadcrumb-first-seen-ms";
/// Input partition of the first copy; on duplicates and conflicts.
pub const DEDUPE_FIRST_PARTITION_HEADER: &str = "breadcrumb-first-partition";
/// Input offset of the first copy; on duplicates and conflicts.
pub const DEDUPE_FIRST_OFFSET_HEADER: &str = "breadcrumb-first-offset";

/// Store keys of events start with this byte; the operator's own metadata with another, so no
/// event key can collide with it.
const EVENT_KEY_TAG: u8 = b'k';
const STREAM_TIME_KEY: &[u8] = b"m:stream_time";
const PAYLOAD_VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 37;

/// What the store keeps about the first copy of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstSeen {
    /// Event time of the first copy.
    pub event_time_ms: i64,
    /// Partition stream time when the first copy arrived; the horizon counts from here.
    pub first_seen_ms: i64,
    /// Digest of the first copy's value, to tell a retry from a conflicting reuse of the id.
    pub digest: u64,
    pub partition: i32,
    pub offset: i64,
}

impl FirstSeen {
    fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(PAYLOAD_VERSION);
        out.extend_from_slice(&self.event_time_ms.to_be_bytes());
        out.extend_from_slice(&self.first_seen_ms.to_be_bytes());
        out.extend_from_slice(&self.digest.to_be_bytes());
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
    }

    /// Decodes a stored payload (public for state inspection, e.g. the HTTP query API).
    pub fn decode(bytes: &[u8], operator: &str) -> Result<Self> {
        match bytes.first() {
            Some(&PAYLOAD_VERSION) if bytes.len() == PAYLOAD_LEN => {}
            Some(&PAYLOAD_VERSION) | None => {
                return Err(OperatorError::CorruptPayload {
                    operator: operator.to_owned(),
                    reason: "dedupe payload has the wrong length",
                })
            }
            Some(&found) => {
                return Err(OperatorError::UnsupportedPayload {
                    operator: operator.to_owned(),
                    found,
                })
            }
        }
        let i64_at = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
        Ok(Self {
            event_time_ms: i64_at(1),
            first_seen_ms: i64_at(9),
            digest: u64::from_be_bytes(bytes[17..25].try_into().unwrap()),
            partition: i32::from_be_bytes(bytes[25..29].try_into().unwrap()),
            offset: i64_at(29),
        })
    }
}

/// Hot state of one partition.
struct PartitionState {
    /// Highest event time seen on the partition (`i64::MIN` before the first record).
    stream_time_ms: i64,
    /// Stream time as last written to the store, to skip unchanged writes.
    persisted_stream_time_ms: i64,
    filter: GenerationalFilter,
}

/// The dedupe operator: the first copy of an event id goes downstream, later copies within the
/// horizon go to the duplicates port (same payload digest) or the conflicts port (different
/// digest). Decisions depend only on record content and the partition's stream time, so a replay
/// decides exactly as the first run did.
pub struct Dedupe {
    name: String,
    store_name: String,
    config: DedupeConfig,
    partitions: HashMap<i32, PartitionState>,
    key: Vec<u8>,
    payload: Vec<u8>,
}

impl Dedupe {
    /// Builds the operator of pipeline `pipeline` from a validated config.
    pub fn new(pipeline: &str, config: DedupeConfig) -> Self {
        Self {
            name: format!("{pipeline}.dedupe"),
            store_name: format!("{pipeline}-dedupe"),
            config,
            partitions: HashMap::new(),
            key: Vec::with_capacity(64),
            payload: Vec::with_capacity(PAYLOAD_LEN),
        }
    }

    /// Name of the operator's store.
    pub fn store_name(&self) -> &str {
        &self.store_name
    }

    /// Stream time of a partition, if it is open and has seen a record.
    pub fn stream_time_ms(&self, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .map(|state| state.stream_time_ms)
            .filter(|time| *time != i64::MIN)
    }

    /// Bytes held by the bloom filters of all open partitions.
    pub fn filter_memory_bytes(&self) -> usize {
        self.partitions
            .values()
            .map(|state| state.filter.memory_bytes())
            .sum()
    }

    /// Builds the store key of an event into `key`; false when a key field is absent.
    fn build_key(key_fields: &[String], event: &Envelope, key: &mut Vec<u8>) -> bool {
        key.clear();
        key.push(EVENT_KEY_TAG);
        for field in key_fields {
            match event.field(field) {
                Some(value) => value.append_key_bytes(key),
                None => return false,
            }
        }
        true
    }

    /// The store key an event would have, for looking up its first copy.
    pub fn store_key(&self, event: &Envelope) -> Option<Vec<u8>> {
        let mut key = Vec::new();
        Self::build_key(&self.config.key_fields, event, &mut key).then_some(key)
    }

    fn load_stream_time(&mut self, store: &mut PartitionStore) -> Result<i64> {
        Ok(match store.get(STREAM_TIME_KEY, &mut self.payload)? {
            Some(_) if self.payload.len() == 8 => {
                i64::from_be_bytes(self.payload[..8].try_into().unwrap())
            }
            Some(_) => {
                return Err(OperatorError::CorruptPayload {
                    operator: self.name.clone(),
                    reason: "stream time is not 8 bytes",
                })
            }
            None => i64::MIN,
        })
    }
}

impl Operator for Dedupe {
    fn name(&self) -> &str {
        &self.name
    }

    fn stores(&self) -> Vec<StoreDeclaration> {
        vec![StoreDeclaration {
            name: self.store_name.clone(),
        }]
    }

    fn open_partition(&mut self, stores: &mut [PartitionStore]) -> Result<()> {
        let store = &mut stores[0];
        let stream_time_ms = self.load_stream_time(store)?;
        let mut filter = GenerationalFilter::new(
            self.config.ttl_ms,
            self.config.bloom_expected_keys_per_partition,
            self.config.bloom_false_positive_rate,
        );
        if stream_time_ms != i64::MIN {
            filter.advance(stream_time_ms);
        }
        // Rebuild the filter from the committed keys still within the horizon.
        let operator = self.name.as_str();
        store.for_each_committed(|key, value| {
            if key.first() == Some(&EVENT_KEY_TAG) && value.expire_at_ms > stream_time_ms {
                let first = FirstSeen::decode(value.payload, operator).map_err(|_| {
                    breadcrumb_state::StateError::Corrupt {
                        store: operator.to_owned(),
                        reason: "undecodable dedupe payload",
                    }
                })?;
                filter.insert(key, first.first_seen_ms);
            }
            Ok(())
        })?;
        self.partitions.insert(
            store.partition(),
            PartitionState {
                stream_time_ms,
                persisted_stream_time_ms: stream_time_ms,
                filter,
            },
        );
        Ok(())
    }

    fn process(
        &mut self,
        record: &RawRecord<'_>,
        event: &Envelope,
        stores: &mut [PartitionStore],
        out: &mut dyn Emitter,
    ) -> Result<Disposition> {
        if !Self::build_key(&self.config.key_fields, event, &mut self.key) {
            return Ok(Disposition::Rejected {
                reason: "missing_field",
                message: "a dedupe key field is absent",
            });
        }
        let store = &mut stores[0];
        let Some(state) = self.partitions.get_mut(&record.partition) else {
            return Err(OperatorError::PartitionNotOpen {
                operator: self.name.clone(),
                partition: record.partition,
            });
        };
        // Judged against committed-consistent stream time (restored with the state), never the
        // wall clock, so a replay rejects exactly the same events. A rejected event does not
        // move stream time.
        if state.stream_time_ms != i64::MIN {
            if let Some(ahead) = self.config.max_event_time_ahead_ms {
                if event.event_time_ms > state.stream_time_ms.saturating_add(ahead) {
                    return Ok(Disposition::Rejected {
                        reason: "event_time_future",
                        message: "event time is too far ahead of the partition's stream time",
                    });
                }
            }
            if let Some(behind) = self.config.max_event_time_behind_ms {
                if event.event_time_ms < state.stream_time_ms.saturating_sub(behind) {
                    return Ok(Disposition::Rejected {
                        reason: "event_time_past",
                        message: "event time is too far behind the partition's stream time",
                    });
                }
            }
        }
        state.stream_time_ms = state.stream_time_ms.max(event.event_time_ms);
        let stream_time_ms = state.stream_time_ms;
        state.filter.advance(stream_time_ms);
        let digest = xxh3_64(record.value.unwrap_or_default());
        // One hash of the key serves the filter's check and its insert.
        let key_hash = state.filter.hash(&self.key);

        if state.filter.may_contain_hash(key_hash) {
            if let Some(expire_at_ms) = store.get(&self.key, &mut self.payload)? {
                if expire_at_ms > stream_time_ms {
                    let first = FirstSeen::decode(&self.payload, &self.name)?;
                    let port = if first.digest == digest {
                        Port::Duplicates
                    } else {
                        Port::Conflicts
                    };
                    let mut seen = itoa::Buffer::new();
                    let mut partition = itoa::Buffer::new();
                    let mut offset = itoa::Buffer::new();
                    out.emit_current(
                        port,
                        &[
                            Header {
                                name: DEDUPE_FIRST_SEEN_HEADER,
                                value: seen.format(first.first_seen_ms).as_bytes(),
                            },
                            Header {
                                name: DEDUPE_FIRST_PARTITION_HEADER,
                                value: partition.format(first.partition).as_bytes(),
                            },
                            Header {
                                name: DEDUPE_FIRST_OFFSET_HEADER,
                                value: offset.format(first.offset).as_bytes(),
                            },
                        ],
                    );
                    return Ok(Disposition::Handled);
                }
            }
        }

        FirstSeen {
            event_time_ms: event.event_time_ms,
            first_seen_ms: stream_time_ms,
            digest,
            partition: record.partition,
            offset: record.offset,
        }
        .encode(&mut self.payload);
        store.put(
            &self.key,
            stream_time_ms.saturating_add(self.config.ttl_ms),
            &self.payload,
            record.offset,
        );
        state.filter.insert_hash(key_hash, stream_time_ms);
        let mut seen = itoa::Buffer::new();
        out.emit_current(
            Port::Main,
            &[Header {
                name: DEDUPE_FIRST_SEEN_HEADER,
                value: seen.format(stream_time_ms).as_bytes(),
            }],
        );
        Ok(Disposition::Handled)
    }

    fn checkpoint(&mut self, stores: &mut [PartitionStore], last_input_offset: i64) -> Result<()> {
        let store = &mut stores[0];
        let Some(state) = self.partitions.get_mut(&store.partition()) else {
            return Ok(());
        };
        if state.stream_time_ms == i64::MIN {
            return Ok(());
        }
        if state.stream_time_ms != state.persisted_stream_time_ms {
            store.put(
                STREAM_TIME_KEY,
                NO_EXPIRY,
                &state.stream_time_ms.to_be_bytes(),
                last_input_offset,
            );
            state.persisted_stream_time_ms = state.stream_time_ms;
        }
        store.expire_due(
            state.stream_time_ms,
            last_input_offset,
            self.config.max_expirations_per_commit,
        )?;
        Ok(())
    }

    fn abort_partition(&mut self, stores: &mut [PartitionStore]) -> Result<()> {
        // The filter may hold keys of the aborted transaction; a superset only costs RocksDB
        // reads, so it is kept rather than rebuilt. Stream time must roll back, and if the
        // aborted records moved the filter into a later generation it has dropped keys that are
        // live again at the rolled-back stream time: then it is rebuilt from committed state.
        let partition = stores[0].partition();
        let stream_time_ms = self.load_stream_time(&mut stores[0])?;
        match self.partitions.get_mut(&partition) {
            Some(state) if !state.filter.is_ahead_of(stream_time_ms) => {
                state.stream_time_ms = stream_time_ms;
                state.persisted_stream_time_ms = stream_time_ms;
                Ok(())
            }
            _ => {
                self.partitions.remove(&partition);
                self.open_partition(stores)
            }
        }
    }

    fn close_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    fn close(&mut self) {
        self.partitions.clear();
    }

    fn answers(&self, kind: LookupKind) -> bool {
        kind == LookupKind::DedupeKey
    }

    /// The first copy of a key within the horizon: `{"key", "event_time_ms", "first_seen_ms",
    /// "expires_at_ms", "first_copy": {"partition", "offset"}, "digest"}`. Only a single key
    /// field can be asked for by its text; an integer or boolean field by its decimal or
    /// `true`/`false` form.
    fn lookup(
        &mut self,
        stores: &mut [PartitionStore],
        lookup: &Lookup<'_>,
    ) -> Result<Option<serde_json::Value>> {
        let Lookup::DedupeKey { key: text } = *lookup else {
            return Ok(None);
        };
        if self.config.key_fields.len() != 1 {
            return Ok(None);
        }
        let store = &mut stores[0];
        // Stream time as the next record would see it: an entry past it counts as gone.
        let stream_time_ms = self
            .partitions
            .get(&store.partition())
            .map_or(i64::MIN, |state| state.stream_time_ms);
        // A text field is the usual case; the others are tried when the text reads as one.
        let mut candidates: SmallVec<[FieldRef<'_>; 2]> = SmallVec::new();
        candidates.push(FieldRef::Text(text));
        if let Ok(number) = text.parse::<i64>() {
            candidates.push(FieldRef::Integer(number));
        } else if let Ok(flag) = text.parse::<bool>() {
            candidates.push(FieldRef::Boolean(flag));
        }
        let mut key = Vec::with_capacity(text.len() + 8);
        let mut payload = Vec::with_capacity(PAYLOAD_LEN);
        for candidate in candidates {
            key.clear();
            key.push(EVENT_KEY_TAG);
            candidate.append_key_bytes(&mut key);
            let Some(expire_at_ms) = store.get(&key, &mut payload)? else {
                continue;
            };
            if expire_at_ms <= stream_time_ms {
                continue;
            }
            let first = FirstSeen::decode(&payload, &self.name)?;
            return Ok(Some(serde_json::json!({
                "key": text,
                "event_time_ms": first.event_time_ms,
                "first_seen_ms": first.first_seen_ms,
                "expires_at_ms": expire_at_ms,
                "first_copy": {
                    "partition": first.partition,
                    "offset": first.offset,
                },
                "digest": format!("{:016x}", first.digest),
            })));
        }
        Ok(None)
    }
}
