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

/// The zeroed blocks of a filter. Large filters get their own anonymous mapping, advised to be
/// backed by huge pages: a check touches one random block of a filter of megabytes, so with
/// 4 KiB pages nearly every check also misses the TLB.
enum Blocks {
    Heap(Box<[Block]>),
    #[cfg(target_os = "linux")]
    Mapped(mapped::Mapping),
}

impl std::ops::Deref for Blocks {
    type Target = [Block];

    fn deref(&self) -> &[Block] {
        match self {
            Blocks::Heap(blocks) => blocks,
            #[cfg(target_os = "linux")]
            Blocks::Mapped(mapping) => mapping.blocks(),
        }
    }
}

impl std::ops::DerefMut for Blocks {
    fn deref_mut(&mut self) -> &mut [Block] {
        match self {
            Blocks::Heap(blocks) => blocks,
            #[cfg(target_os = "linux")]
            Blocks::Mapped(mapping) => mapping.blocks_mut(),
        }
    }
}

impl Blocks {
    fn zeroed(count: usize) -> Self {
        #[cfg(target_os = "linux")]
        if count.saturating_mul(std::mem::size_of::<Block>()) >= mapped::MIN_BYTES {
            if let Some(mapping) = mapped::Mapping::new(count) {
                return Blocks::Mapped(mapping);
            }
        }
        Blocks::Heap(vec![Block([0; 8]); count].into_boxed_slice())
    }
}

#[cfg(target_os = "linux")]
mod mapped {
    use std::ptr::NonNull;

    use super::Block;

    const HUGE_PAGE: usize = 2 << 20;
    /// Smaller filters stay on the heap.
    pub(super) const MIN_BYTES: usize = 4 << 20;

    /// An anonymous private mapping (zero-filled by the kernel), aligned to huge pages.
    pub(super) struct Mapping {
        base: NonNull<libc::c_void>,
        mapped_bytes: usize,
        blocks: NonNull<Block>,
        count: usize,
    }

    // SAFETY: the mapping is owned by this value alone, like a `Box<[Block]>`.
    unsafe impl Send for Mapping {}
    // SAFETY: shared access only reads, like `&[Block]`.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        pub(super) fn new(count: usize) -> Option<Self> {
            let bytes = count.checked_mul(std::mem::size_of::<Block>())?;
            let mapped_bytes = bytes.checked_add(HUGE_PAGE)?;
            // SAFETY: a fresh anonymous mapping; no existing memory is affected.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    mapped_bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return None;
            }
            let base = NonNull::new(base)?;
            let address = base.as_ptr() as usize;
            let offset = address.next_multiple_of(HUGE_PAGE) - address;
            // SAFETY: `offset < HUGE_PAGE`, so `offset + bytes` lies within the mapping.
            let start = unsafe { base.as_ptr().cast::<u8>().add(offset) };
            // SAFETY: advice on memory of this mapping; failure (no THP support) is harmless.
            unsafe {
                libc::madvise(start.cast(), bytes, libc::MADV_HUGEPAGE);
            }
            Some(Self {
                base,
                mapped_bytes,
                blocks: NonNull::new(start.cast::<Block>())?,
                count,
            })
        }

        pub(super) fn blocks(&self) -> &[Block] {
            // SAFETY: `count` zero-filled (all-zero is a valid `Block`), 64-byte aligned blocks
            // within the mapping owned by `self`.
            unsafe { std::slice::from_raw_parts(self.blocks.as_ptr(), self.count) }
        }

        pub(super) fn blocks_mut(&mut self) -> &mut [Block] {
            // SAFETY: as in `blocks`, and `&mut self` makes the access exclusive.
            unsafe { std::slice::from_raw_parts_mut(self.blocks.as_ptr(), self.count) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made in `new`; no reference outlives `self`.
            unsafe {
                libc::munmap(self.base.as_ptr(), self.mapped_bytes);
            }
        }
    }
}

/// A cache-blocked bloom filter over pre-computed 64-bit hashes: the upper 32 bits choose the
/// block, the lower 32 bits (remixed per probe) the bits within it.
struct BlockedBloom {
    blocks: Blocks,
    probes: u32,
}

impl BlockedBloom {
    fn new(shape: Shape) -> Self {
        Self {
            blocks: Blocks::zeroed(shape.blocks),
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
        std::mem::size_of_val::<[Block]>(&self.blocks)
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
            seed: std::collections::hash_map::RandomState::new().hash_one(0x0062_6c6f_6f6d_u64),
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
    fn large_filters_work_the_same() {
        let mut filter = GenerationalFilter::new(1_000, 10_000_000, 0.01);
        #[cfg(target_os = "linux")]
        assert!(matches!(filter.current.blocks, Blocks::Mapped(_)));
        assert!(filter.memory_bytes() > 12 << 20);
        filter.advance(0);
        for n in 0..10_000u32 {
            filter.insert(&n.to_be_bytes(), 0);
        }
        assert!((0..10_000u32).all(|n| filter.may_contain(&n.to_be_bytes())));
        let false_positives = (10_000..20_000u32)
            .filter(|n| filter.may_contain(&n.to_be_bytes()))
            .count();
        assert!(false_positives < 10, "{false_positives}");
        // Rotation drops (unmaps) the older filter.
        filter.advance(1_000);
        filter.advance(2_000);
        assert!(!filter.may_contain(&0u32.to_be_bytes()));
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
