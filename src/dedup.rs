//! The ventilator's duplicate detector: the set of 128-bit digests of the
//! order ids seen so far, and a queue that lets the reader look each one up
//! a few lines after it asked for it.
//!
//! With millions of distinct orders the set is far larger than the CPU's
//! caches, so every lookup is a trip to memory (~100 ns, most of the
//! reader's time once parsing is cheap). [`DigestSet::prefetch`] starts that
//! trip early; [`Pending`] holds the digests of the last few lines until
//! their slots have arrived, in input order, so "the first well-formed line
//! with an id is the order" still holds exactly.

use std::collections::VecDeque;

/// Open addressing with linear probing over a table of digests, sized once
/// when the input's size is known (growing doubles it and copies the whole
/// table). At most 3/4 full: 16 bytes per slot, 21 bytes per distinct order
/// when the estimate was right.
pub struct DigestSet {
    slots: Vec<u128>,
    len: usize,
}

/// Marks an empty slot. A digest equal to it is stored as [`ZERO_STANDIN`]
/// (two ids sharing a 128-bit digest is as likely as any other collision).
const EMPTY: u128 = 0;
const ZERO_STANDIN: u128 = 1;

impl DigestSet {
    /// A set with room for `expected` digests before it first grows.
    pub fn with_capacity(expected: usize) -> DigestSet {
        DigestSet {
            slots: table(expected.max(1024) * 4 / 3 + 1),
            len: 0,
        }
    }

    /// Backs every page of the table now. The kernel zeroes a page on its
    /// first write; done here, on a thread with nothing else to do, the
    /// first inserts do not wait for it (measured on a virtual machine:
    /// about 140 ms of the reader's time for 2M orders' table).
    pub fn prefault(&mut self) {
        const SLOTS_PER_PAGE: usize = 4096 / std::mem::size_of::<u128>();
        for slot in self.slots.iter_mut().step_by(SLOTS_PER_PAGE) {
            // black_box: a store of the value already there would be dropped.
            *slot = std::hint::black_box(EMPTY);
        }
    }

    /// How many distinct digests the set holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn home(&self, digest: u128) -> usize {
        // The digest is uniformly spread already: scale its low 64 bits to
        // the table (a multiply instead of a division, any table size).
        ((u128::from(digest as u64) * self.slots.len() as u128) >> 64) as usize
    }

    fn next(&self, at: usize) -> usize {
        if at + 1 == self.slots.len() {
            0
        } else {
            at + 1
        }
    }

    /// Asks the memory system for `digest`'s slot ahead of [`insert`](Self::insert).
    #[inline]
    pub fn prefetch(&self, digest: u128) {
        #[cfg(target_arch = "x86_64")]
        {
            let slot = &self.slots[self.home(digest)];
            // SAFETY: SSE is part of the x86_64 baseline, and a prefetch
            // only hints the cache: it reads nothing and cannot fault.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    (slot as *const u128).cast(),
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = digest;
    }

    /// Inserts `digest`; false when it was there already.
    pub fn insert(&mut self, digest: u128) -> bool {
        let digest = if digest == EMPTY {
            ZERO_STANDIN
        } else {
            digest
        };
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mut at = self.home(digest);
        loop {
            match self.slots[at] {
                EMPTY => {
                    self.slots[at] = digest;
                    self.len += 1;
                    return true;
                }
                d if d == digest => return false,
                _ => at = self.next(at),
            }
        }
    }

    fn grow(&mut self) {
        let bigger = table(self.slots.len() * 2);
        let old = std::mem::replace(&mut self.slots, bigger);
        for digest in old.into_iter().filter(|&d| d != EMPTY) {
            let mut at = self.home(digest);
            while self.slots[at] != EMPTY {
                at = self.next(at);
            }
            self.slots[at] = digest;
        }
    }
}

/// An empty table of `slots`. Large tables ask for huge pages: with 4 KiB
/// pages nearly every lookup would also miss the TLB and walk the page
/// table, which a prefetch does not hide (measured: the lookups cost half
/// as much with 2 MiB pages).
fn table(slots: usize) -> Vec<u128> {
    let table = vec![EMPTY; slots];
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 << 20;
        let start = table.as_ptr() as usize;
        let end = start + std::mem::size_of_val(&table[..]);
        let first = start.next_multiple_of(HUGE_PAGE);
        if first < end {
            // SAFETY: madvise only advises the kernel on how to back the
            // pages of a range inside this live allocation; it neither reads
            // nor writes memory, and a refusal changes nothing.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
    table
}

/// How many lines a lookup trails the line that asked for it: enough for
/// the slot to arrive while those lines are parsed and encoded.
pub const LOOKAHEAD: usize = 16;

/// Digests waiting for their lookup, oldest first, each with what the caller
/// needs to act on the answer.
pub struct Pending<T> {
    queue: VecDeque<(u128, T)>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            queue: VecDeque::with_capacity(LOOKAHEAD + 1),
        }
    }
}

impl<T> Pending<T> {
    /// Queues `digest` (prefetching its slot); once more than [`LOOKAHEAD`]
    /// wait, the oldest is looked up and returned with whether it was new.
    pub fn push(&mut self, set: &mut DigestSet, digest: u128, tag: T) -> Option<(bool, T)> {
        set.prefetch(digest);
        self.queue.push_back((digest, tag));
        if self.queue.len() > LOOKAHEAD {
            self.pop(set)
        } else {
            None
        }
    }

    /// Looks up the oldest waiting digest; `None` when nothing waits.
    pub fn pop(&mut self, set: &mut DigestSet) -> Option<(bool, T)> {
        let (digest, tag) = self.queue.pop_front()?;
        Some((set.insert(digest), tag))
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn agrees_with_a_hash_set_through_growth_and_collisions() {
        let mut set = DigestSet::with_capacity(0);
        let mut reference = HashSet::new();
        let mut x = 0x1234_5678_9abc_def0u64;
        for i in 0..50_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Few distinct low bits: long probe runs (and wrapping past the
            // table's end); some digests repeat.
            let low = (x % 20_000).wrapping_add(u64::MAX - 9_000);
            let digest = (u128::from(i % 7 + 1) << 64) | u128::from(low);
            assert_eq!(
                set.insert(digest),
                reference.insert(digest),
                "digest {digest:#x}"
            );
        }
        assert_eq!(set.len(), reference.len());
        assert!(set.slots.len() > 1024 * 4 / 3 + 1, "it grew");
        assert!(
            set.insert(0) && !set.insert(0),
            "zero is a digest like any other"
        );
    }

    #[test]
    fn pending_answers_in_order_and_drains() {
        let mut set = DigestSet::with_capacity(16);
        let mut pending = Pending::default();
        let mut answers = Vec::new();
        for (i, digest) in [5u128, 6, 5, 7, 6, 5]
            .into_iter()
            .cycle()
            .take(40)
            .enumerate()
        {
            if let Some(a) = pending.push(&mut set, digest, i) {
                answers.push(a);
            }
        }
        while let Some(a) = pending.pop(&mut set) {
            answers.push(a);
        }
        assert!(pending.is_empty());
        let tags: Vec<usize> = answers.iter().map(|a| a.1).collect();
        assert_eq!(
            tags,
            (0..40).collect::<Vec<_>>(),
            "answers come in input order"
        );
        let fresh: Vec<usize> = answers.iter().filter(|a| a.0).map(|a| a.1).collect();
        assert_eq!(fresh, vec![0, 1, 3], "only the first of each digest is new");
    }
}
