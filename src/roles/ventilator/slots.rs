//! The dispatch core's table of orders by seq. Seqs are handed out in line
//! order and mostly acknowledged in about that order, so the table is a
//! ring indexed by `seq - base`: admitting, sending and acknowledging an
//! order touch memory in sequence and hash nothing. A straggler does not
//! hold the ring open: once the ring spans more than `span` seqs, its oldest
//! live entries move to a map, where they stay until they are removed.

use crate::fasthash::SeqMap;
use std::collections::VecDeque;

/// Values by seq: a ring for the recent seqs, a map for older stragglers.
pub struct SeqSlots<V> {
    /// The seq of `ring[0]`.
    base: u64,
    ring: VecDeque<Option<V>>,
    /// `Some` entries in `ring`.
    in_ring: usize,
    /// Entries for seqs below `base`.
    stragglers: SeqMap<u64, V>,
    /// The most seqs the ring spans before its front moves to `stragglers`.
    span: usize,
}

impl<V> SeqSlots<V> {
    /// An empty table whose ring spans at most `span` (at least 1) seqs.
    pub fn new(span: usize) -> SeqSlots<V> {
        SeqSlots {
            base: 0,
            ring: VecDeque::new(),
            in_ring: 0,
            stragglers: SeqMap::default(),
            span: span.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.in_ring + self.stragglers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets the value of `seq`; returns the one it replaces.
    pub fn insert(&mut self, seq: u64, value: V) -> Option<V> {
        if self.in_ring == 0 {
            self.ring.clear();
            self.base = seq;
        }
        if seq < self.base {
            return self.stragglers.insert(seq, value);
        }
        if seq - self.base >= self.span as u64 {
            self.spill(seq);
        }
        let at = (seq - self.base) as usize;
        if at >= self.ring.len() {
            self.ring.resize_with(at + 1, || None);
        }
        let old = self.ring[at].replace(value);
        if old.is_none() {
            self.in_ring += 1;
        }
        old
    }

    /// Moves the ring's front to the stragglers until `seq` fits in the span.
    fn spill(&mut self, seq: u64) {
        let keep_from = seq + 1 - self.span as u64;
        while self.base < keep_from {
            let Some(front) = self.ring.pop_front() else {
                self.base = keep_from;
                break;
            };
            if let Some(value) = front {
                self.stragglers.insert(self.base, value);
                self.in_ring -= 1;
            }
            self.base += 1;
        }
        self.trim();
    }

    pub fn get(&self, seq: &u64) -> Option<&V> {
        match seq.checked_sub(self.base) {
            Some(at) => self.ring.get(at as usize)?.as_ref(),
            None => self.stragglers.get(seq),
        }
    }

    pub fn get_mut(&mut self, seq: &u64) -> Option<&mut V> {
        match seq.checked_sub(self.base) {
            Some(at) => self.ring.get_mut(at as usize)?.as_mut(),
            None => self.stragglers.get_mut(seq),
        }
    }

    pub fn remove(&mut self, seq: &u64) -> Option<V> {
        let Some(at) = seq.checked_sub(self.base) else {
            return self.stragglers.remove(seq);
        };
        let value = self.ring.get_mut(at as usize)?.take()?;
        self.in_ring -= 1;
        self.trim();
        Some(value)
    }

    /// Drops the empty entries at the ring's front.
    fn trim(&mut self) {
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.base += 1;
        }
    }

    /// Every seq held (stragglers first, then the ring in seq order).
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        let base = self.base;
        let ring = self.ring.iter().enumerate();
        let ring = ring.filter_map(move |(i, v)| v.as_ref().map(|_| base + i as u64));
        self.stragglers.keys().copied().chain(ring)
    }

    /// Every entry, mutable (stragglers first, then the ring in seq order).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut V)> + '_ {
        let base = self.base;
        let ring = self.ring.iter_mut().enumerate();
        let ring = ring.filter_map(move |(i, v)| Some((base + i as u64, v.as_mut()?)));
        self.stragglers.iter_mut().map(|(&s, v)| (s, v)).chain(ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Random inserts and removals, mostly near the front as acks are, with
    /// stragglers and jumps: the table always agrees with a plain map.
    #[test]
    fn agrees_with_a_map_whatever_the_order() {
        for span in [1, 3, 64] {
            let mut rng = crate::generator::Rng::new(span as u64);
            let mut slots = SeqSlots::new(span);
            let mut model = BTreeMap::new();
            let mut next = 0u64;
            for _ in 0..20_000 {
                match rng.index(10) {
                    0..=3 => {
                        let seq = if rng.one_in(50) { next + 500 } else { next };
                        next = seq + 1;
                        assert_eq!(slots.insert(seq, seq * 10), model.insert(seq, seq * 10));
                    }
                    4 => {
                        // An older seq again (a reader started over).
                        let seq = rng.index(next as usize + 1) as u64;
                        assert_eq!(slots.insert(seq, seq * 7), model.insert(seq, seq * 7));
                    }
                    5..=7 => {
                        let seq = model.keys().next().copied().unwrap_or(next);
                        assert_eq!(slots.remove(&seq), model.remove(&seq));
                    }
                    8 => {
                        let seq = rng.index(next as usize + 2) as u64;
                        assert_eq!(slots.remove(&seq), model.remove(&seq));
                    }
                    _ => {
                        let seq = rng.index(next as usize + 2) as u64;
                        assert_eq!(slots.get(&seq), model.get(&seq));
                        if let (Some(a), Some(b)) = (slots.get_mut(&seq), model.get_mut(&seq)) {
                            *a += 1;
                            *b += 1;
                        }
                    }
                }
                assert_eq!(slots.len(), model.len());
                assert!(slots.ring.len() <= span.max(1) || slots.in_ring == 0);
            }
            let mut keys: Vec<u64> = slots.keys().collect();
            keys.sort_unstable();
            assert_eq!(keys, model.keys().copied().collect::<Vec<_>>());
            for (seq, v) in slots.iter_mut() {
                assert_eq!(Some(&*v), model.get(&seq));
            }
        }
    }

    #[test]
    fn a_straggler_moves_out_of_the_ring_and_stays_found() {
        let mut slots = SeqSlots::new(4);
        for seq in 0..10u64 {
            slots.insert(seq, seq);
            if seq > 0 {
                slots.remove(&seq);
            }
        }
        // Seq 0 was never removed: the ring moved past it.
        assert_eq!(slots.len(), 1);
        assert_eq!(slots.get(&0), Some(&0));
        assert!(slots.stragglers.contains_key(&0));
        assert_eq!(slots.remove(&0), Some(0));
        assert!(slots.is_empty());
    }
}
