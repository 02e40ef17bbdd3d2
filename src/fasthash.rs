//! Hashers for the hot maps: a word-at-a-time multiply-xorshift hash for
//! short keys such as SKUs (FxHash's speed, with the high bits folded back
//! so that keys differing only in their last bytes do not collide), and a
//! multiplicative hash for sequential numbers (the ventilator's seqs).
//!
//! Neither resists keys chosen to collide; the keys come from the run's own
//! input, which only key holders can feed to the grid.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// Fast for short keys.
#[derive(Clone, Copy)]
pub struct FxHasher(u64);

impl Default for FxHasher {
    fn default() -> Self {
        // Not zero: a zero state would ignore leading zero words.
        FxHasher(SEED)
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        let h = (self.0 ^ word).wrapping_mul(SEED);
        self.0 = h ^ (h >> 29);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while let Some((chunk, rest)) = bytes.split_first_chunk::<8>() {
            self.add(u64::from_le_bytes(*chunk));
            bytes = rest;
        }
        if let Some((chunk, rest)) = bytes.split_first_chunk::<4>() {
            self.add(u64::from(u32::from_le_bytes(*chunk)));
            bytes = rest;
        }
        for &b in bytes {
            self.add(u64::from(b));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// For sequential numbers (seqs): one multiply spreads them over the table.
#[derive(Default, Clone, Copy)]
pub struct SeqHasher(u64);

impl Hasher for SeqHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing spreads sequential numbers over the table.
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
pub type SeqMap<K, V> = HashMap<K, V, BuildHasherDefault<SeqHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::Hash;

    fn fx(key: &str) -> u64 {
        let mut h = FxHasher::default();
        key.hash(&mut h);
        h.finish()
    }

    #[test]
    fn distinct_skus_hash_apart() {
        let hashes: HashSet<u64> = (0..10_000).map(|i| fx(&format!("SKU-{i:05}"))).collect();
        assert_eq!(hashes.len(), 10_000);
        assert_ne!(fx("A"), fx("B"));
        assert_ne!(fx(""), fx("\0"));
    }

    #[test]
    fn maps_work_with_both() {
        let mut m: FxMap<String, i64> = FxMap::default();
        *m.entry("SKU-1".into()).or_default() -= 2;
        assert_eq!(m["SKU-1"], -2);
        let mut s: SeqMap<u64, u8> = SeqMap::default();
        for i in 0..1000 {
            s.insert(i, 1);
        }
        assert_eq!(s.len(), 1000);
    }
}
