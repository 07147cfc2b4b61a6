//! Bloom filters in front of RocksDB, rotated with the horizon.

use bloomfilter::Bloom;

/// Two bloom filters covering consecutive generations of one horizon each. A key is inserted in
/// the generation of its first-seen stream time; keys of older generations have all expired, so
/// their filter is dropped when stream time enters a new generation. A filter answers "maybe"
/// or "certainly not": only "maybe" costs a RocksDB read.
pub struct GenerationalFilter {
    ttl_ms: i64,
    expected_keys: usize,
    false_positive_rate: f64,
    /// Generation number of `current`; `previous` is `current_generation - 1`.
    current_generation: i64,
    current: Bloom<[u8]>,
    previous: Option<Bloom<[u8]>>,
}

impl GenerationalFilter {
    pub fn new(ttl_ms: i64, expected_keys: usize, false_positive_rate: f64) -> Self {
        Self {
            ttl_ms,
            expected_keys,
            false_positive_rate,
            current_generation: i64::MIN,
            current: Self::fresh(expected_keys, false_positive_rate),
            previous: None,
        }
    }

    fn fresh(expected_keys: usize, false_positive_rate: f64) -> Bloom<[u8]> {
        Bloom::new_for_fp_rate(expected_keys, false_positive_rate)
            .expect("validated: expected keys > 0 and 0 < rate < 1")
    }

    fn generation(&self, stream_time_ms: i64) -> i64 {
        stream_time_ms.div_euclid(self.ttl_ms)
    }

    /// Whether the filter has moved past the generation of `stream_time_ms`, dropping keys that
    /// are still live at that stream time (after a rollback of stream time, it must be rebuilt).
    pub fn is_ahead_of(&self, stream_time_ms: i64) -> bool {
        self.current_generation != i64::MIN
            && (stream_time_ms == i64::MIN
                || self.current_generation > self.generation(stream_time_ms))
    }

    /// Moves to the generation of `stream_time_ms`, dropping filters whose keys have all expired.
    pub fn advance(&mut self, stream_time_ms: i64) {
        let generation = self.generation(stream_time_ms);
        if generation <= self.current_generation {
            return;
        }
        if self.current_generation == i64::MIN {
            self.current_generation = generation;
            return;
        }
        let fresh = Self::fresh(self.expected_keys, self.false_positive_rate);
        let old_current = std::mem::replace(&mut self.current, fresh);
        self.previous = (generation == self.current_generation + 1).then_some(old_current);
        self.current_generation = generation;
    }

    /// Records a key first seen at `first_seen_ms` (rebuilding after a restore may insert keys of
    /// the previous generation; older ones are skipped as expired).
    pub fn insert(&mut self, key: &[u8], first_seen_ms: i64) {
        let generation = self.generation(first_seen_ms);
        if generation >= self.current_generation {
            self.current.set(key);
        } else if generation == self.current_generation - 1 {
            self.previous
                .get_or_insert_with(|| Self::fresh(self.expected_keys, self.false_positive_rate))
                .set(key);
        }
    }

    /// Whether the key may have been seen within the horizon.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.current.check(key)
            || self
                .previous
                .as_ref()
                .is_some_and(|filter| filter.check(key))
    }

    /// Bytes held by the filters.
    pub fn memory_bytes(&self) -> usize {
        self.current.as_slice().len() + self.previous.as_ref().map_or(0, |f| f.as_slice().len())
    }
}
