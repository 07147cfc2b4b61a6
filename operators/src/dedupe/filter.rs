//! Bloom filters in front of RocksDB, rotated with the horizon.
//!
//! The filters are cache-blocked: a key's probes all fall in one 64-byte block chosen by its
//! hash, so a check or an insert touches one cache line however large the filter is (a filter
//! sized for 10M keys is 12 MiB, far beyond the caches; a classic bloom filter costs one cache
//! miss per probe). The key is hashed once (xxh3) and the hash serves both the check and the
//! insert of a record. For the same false-positive rate a blocked filter needs slightly more
//! bits per key than a classic one (keys do not spread evenly over blocks); the sizing accounts
//! for it. Filters are never persisted: they are rebuilt from committed state when a partition
//! opens, so their layout is free to change.

use std::hash::BuildHasher;

use xxhash_rust::xxh3::xxh3_64_with_seed;

const BLOCK_BITS: u32 = 512;
const MAX_PROBES: u32 = 16;

/// One cache line of filter bits.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u64; 8]);

/// Blocks and probes of a filter, derived from the expected keys and the target rate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Shape {
    blocks: usize,
    probes: u32,
}

impl Shape {
    /// The smallest filter (to a quarter bit per key) whose estimated false-positive rate at
    /// `expected_keys` keys is at most `false_positive_rate`.
    fn for_rate(expected_keys: usize, false_positive_rate: f64) -> Self {
        let keys = expected_keys.max(1) as f64;
        let rate = false_positive_rate.clamp(1e-12, 0.5);
        // The classic filter's optimum is a lower bound for the blocked one.
        let mut bits_per_key = (-rate.ln() / std::f64::consts::LN_2.powi(2)).max(1.0);
        loop {
            let best = (1..=MAX_PROBES)
                .map(|probes| (blocked_fp_rate(bits_per_key, probes), probes))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .expect("at least one probe count");
            if best.0 <= rate || bits_per_key >= 128.0 {
                let bits = (keys * bits_per_key).ceil();
                let blocks = (bits / f64::from(BLOCK_BITS)).ceil();
                return Self {
                    blocks: (blocks as usize).clamp(1, u32::MAX as usize),
                    probes: best.1,
                };
            }
            bits_per_key += 0.25;
        }
    }
}

/// Estimated false-positive rate of a blocked filter: the keys per block follow a Poisson law,
/// and within a block of `b` bits holding `n` keys a probe hits a set bit with probability
/// `1 - exp(-probes * n / b)`.
fn blocked_fp_rate(bits_per_key: f64, probes: u32) -> f64 {
    let bits = f64::from(BLOCK_BITS);
    let mean = bits / bits_per_key;
    let last = (mean + 12.0 * mean.sqrt() + 20.0).ceil() as u32;
    let mut log_pmf = -mean; // ln P(n = 0)
    let mut rate = 0.0;
    for n in 0..=last {
        if n > 0 {
            log_pmf += mean.ln() - f64::from(n).ln();
        }
        let per_probe = 1.0 - (-f64::from(probes) * f64::from(n) / bits).exp();
        rate += log_pmf.exp() * per_probe.powi(probes as i32);
    }
    rate
}

/// A cache-blocked bloom filter over pre-computed 64-bit hashes: the upper 32 bits choose the
/// block, the lower 32 bits (remixed per probe) the bits within it.
struct BlockedBloom {
    blocks: Box<[Block]>,
    probes: u32,
}

impl BlockedBloom {
    fn new(shape: Shape) -> Self {
        Self {
            blocks: vec![Block([0; 8]); shape.blocks].into_boxed_slice(),
            probes: shape.probes,
        }
    }

    fn block_index(&self, hash: u64) -> usize {
        // Multiply-shift range reduction, no division.
        (((hash >> 32) * self.blocks.len() as u64) >> 32) as usize
    }

    fn set(&mut self, hash: u64) {
        let index = self.block_index(hash);
        let block = &mut self.blocks[index].0;
        let mut bits = hash as u32;
        for _ in 0..self.probes {
            bits = bits.wrapping_mul(0x9E37_79B9);
            let bit = bits >> (32 - 9);
            block[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
    }

    fn check(&self, hash: u64) -> bool {
        let block = &self.blocks[self.block_index(hash)].0;
        let mut bits = hash as u32;
        for _ in 0..self.probes {
            bits = bits.wrapping_mul(0x9E37_79B9);
            let bit = bits >> (32 - 9);
            if block[(bit >> 6) as usize] & (1 << (bit & 63)) == 0 {
                return false;
            }
        }
        true
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.blocks)
    }
}

/// Two bloom filters covering consecutive generations of one horizon each. A key is inserted in
/// the generation of its first-seen stream time; keys of older generations have all expired, so
/// their filter is dropped when stream time enters a new generation. A filter answers "maybe"
/// or "certainly not": only "maybe" costs a RocksDB read.
pub struct GenerationalFilter {
    ttl_ms: i64,
    shape: Shape,
    /// Keyed per filter so that chosen ids cannot aim at false positives.
    seed: u64,
    /// Generation number of `current`; `previous` is `current_generation - 1`.
    current_generation: i64,
    current: BlockedBloom,
    previous: Option<BlockedBloom>,
}

impl GenerationalFilter {
    pub fn new(ttl_ms: i64, expected_keys: usize, false_positive_rate: f64) -> Self {
        let shape = Shape::for_rate(expected_keys, false_positive_rate);
        Self {
            ttl_ms,
            shape,
            seed: std::collections::hash_map::RandomState::new().hash_one(0x626c_6f6f_6du64),
            current_generation: i64::MIN,
            current: BlockedBloom::new(shape),
            previous: None,
        }
    }

    fn generation(&self, stream_time_ms: i64) -> i64 {
        stream_time_ms.div_euclid(self.ttl_ms)
    }

    /// The hash of a key, for [`Self::may_contain_hash`] and [`Self::insert_hash`].
    pub fn hash(&self, key: &[u8]) -> u64 {
        xxh3_64_with_seed(key, self.seed)
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
        let fresh = BlockedBloom::new(self.shape);
        let old_current = std::mem::replace(&mut self.current, fresh);
        self.previous = (generation == self.current_generation + 1).then_some(old_current);
        self.current_generation = generation;
    }

    /// Records a key first seen at `first_seen_ms` (rebuilding after a restore may insert keys of
    /// the previous generation; older ones are skipped as expired).
    pub fn insert(&mut self, key: &[u8], first_seen_ms: i64) {
        self.insert_hash(self.hash(key), first_seen_ms);
    }

    /// [`Self::insert`] of a key by its [`Self::hash`].
    pub fn insert_hash(&mut self, hash: u64, first_seen_ms: i64) {
        let generation = self.generation(first_seen_ms);
        if generation >= self.current_generation {
            self.current.set(hash);
        } else if generation == self.current_generation - 1 {
            let shape = self.shape;
            self.previous
                .get_or_insert_with(|| BlockedBloom::new(shape))
                .set(hash);
        }
    }

    /// Whether the key may have been seen within the horizon.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.may_contain_hash(self.hash(key))
    }

    /// [`Self::may_contain`] of a key by its [`Self::hash`].
    pub fn may_contain_hash(&self, hash: u64) -> bool {
        self.current.check(hash)
            || self
                .previous
                .as_ref()
                .is_some_and(|filter| filter.check(hash))
    }

    /// Bytes held by the filters.
    pub fn memory_bytes(&self) -> usize {
        self.current.memory_bytes() + self.previous.as_ref().map_or(0, BlockedBloom::memory_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_meets_the_rate_in_about_the_classic_memory() {
        for (rate, max_bits_per_key) in [(0.1, 6.0), (0.01, 11.0), (0.001, 16.5), (1e-6, 40.0)] {
            let shape = Shape::for_rate(1_000_000, rate);
            let bits_per_key = (shape.blocks * BLOCK_BITS as usize) as f64 / 1e6;
            let classic = -f64::ln(rate) / std::f64::consts::LN_2.powi(2);
            assert!(
                bits_per_key >= classic && bits_per_key <= max_bits_per_key,
                "rate {rate}: {bits_per_key} bits per key, {} probes",
                shape.probes
            );
        }
        assert_eq!(Shape::for_rate(1, 0.01).blocks, 1);
    }

    #[test]
    fn no_false_negatives_and_about_the_configured_false_positive_rate() {
        let keys = 200_000u64;
        let mut filter = GenerationalFilter::new(1_000, keys as usize, 0.01);
        filter.advance(0);
        for n in 0..keys {
            filter.insert(format!("key-{n}").as_bytes(), 0);
        }
        for n in 0..keys {
            assert!(filter.may_contain(format!("key-{n}").as_bytes()));
        }
        let probes = 200_000u64;
        let false_positives = (keys..keys + probes)
            .filter(|n| filter.may_contain(format!("key-{n}").as_bytes()))
            .count();
        let rate = false_positives as f64 / probes as f64;
        assert!(rate < 0.0125, "false-positive rate {rate}");
    }

    #[test]
    fn generations_rotate_with_the_horizon() {
        let mut filter = GenerationalFilter::new(100, 1_000, 0.01);
        filter.advance(50);
        filter.insert(b"old", 50);
        filter.advance(150);
        filter.insert(b"new", 150);
        assert!(filter.may_contain(b"old") && filter.may_contain(b"new"));
        assert!(filter.is_ahead_of(50) && !filter.is_ahead_of(199));
        filter.advance(250);
        assert!(!filter.may_contain(b"old"));
        assert!(filter.may_contain(b"new"));
        // Two generations at once drop both filters.
        filter.advance(450);
        assert!(!filter.may_contain(b"new"));
        // Rebuilding inserts keys of the previous generation; older ones are expired.
        filter.insert(b"previous", 350);
        filter.insert(b"expired", 250);
        assert!(filter.may_contain(b"previous"));
        assert!(!filter.may_contain(b"expired"));
    }
}
