//! The flow table's index: open addressing with linear probing over 8-byte entries, sized
//! once at twice the table's capacity (load ≤ ½), so a lookup is one cache line of the index
//! and one of the arena.
//!
//! An entry is the upper 32 bits of the flow's (seeded) hash, which also choose its home
//! position, and its arena slot + 1 (0 is an empty entry). The hash part filters almost
//! every non-matching entry without touching the arena; removal shifts the entries behind
//! back (no tombstones, so probe lengths never degrade under churn). Written by hand rather
//! than hashbrown's `HashTable` because the batch path needs to prefetch an entry's cache line
//! before it looks at it, which hashbrown does not expose.

/// See the module docs.
pub struct Index {
    entries: Box<[u64]>,
    len: usize,
}

fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl Index {
    /// An index for up to `max` entries.
    pub fn new(max: usize) -> Self {
        Self {
            entries: vec![0; max.max(8) * 2].into_boxed_slice(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated.
    pub fn memory_bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<u64>()
    }

    /// The home position of a hash part: its share of the table (multiply-shift).
    fn home(&self, tag: u32) -> usize {
        ((u64::from(tag) * self.entries.len() as u64) >> 32) as usize
    }

    /// Where the probe for `hash` starts.
    pub fn home_of(&self, hash: u64) -> usize {
        self.home(tag(hash))
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.entries.len() {
            0
        } else {
            i + 1
        }
    }

    /// Asks the CPU to bring the cache line where `hash`'s probe starts.
    pub fn prefetch(&self, hash: u64) {
        prefetch(&self.entries[self.home(tag(hash))]);
    }

    /// The first slot whose hash part matches `hash` (the likely answer of [`Index::find`]),
    /// read without probing further: for prefetching the arena.
    pub fn candidate(&self, hash: u64) -> Option<u32> {
        let t = tag(hash);
        let e = self.entries[self.home(t)];
        (e != 0 && tag(e) == t).then(|| (e as u32).wrapping_sub(1))
    }

    /// The slot of the entry with `hash` for which `is` says yes.
    pub fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let t = tag(hash);
        let mut i = self.home(t);
        loop {
            let e = self.entries[i];
            if e == 0 {
                return None;
            }
            let slot = (e as u32).wrapping_sub(1);
            if tag(e) == t && is(slot) {
                return Some(slot);
            }
            i = self.next(i);
        }
    }

    /// Adds `slot` under `hash`. The caller keeps at most `max` entries (the table's
    /// capacity), so a free position always exists.
    pub fn insert(&mut self, hash: u64, slot: u32) {
        debug_assert!(self.len < self.entries.len() / 2);
        let mut i = self.home(tag(hash));
        while self.entries[i] != 0 {
            i = self.next(i);
        }
        self.entries[i] = (hash & 0xffff_ffff_0000_0000) | u64::from(slot + 1);
        self.len += 1;
    }

    /// Removes `slot`, stored under `hash`. Returns whether it was there.
    pub fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let t = tag(hash);
        let mut i = self.home(t);
        loop {
            let e = self.entries[i];
            if e == 0 {
                return false;
            }
            if tag(e) == t && (e as u32).wrapping_sub(1) == slot {
                break;
            }
            i = self.next(i);
        }
        // Backward shift: move each following entry whose home is not in (i, j] into the hole.
        let mut j = i;
        loop {
            j = self.next(j);
            let e = self.entries[j];
            if e == 0 {
                break;
            }
            let k = self.home(tag(e));
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.entries[i] = e;
                i = j;
            }
        }
        self.entries[i] = 0;
        self.len -= 1;
        true
    }
}

/// A hint that `*p` will be read soon (no effect where the target has no prefetch).
#[inline(always)]
pub fn prefetch<T>(p: &T) {
    prefetch_addr((p as *const T).cast());
}

/// A hint that the cache line of address `p` will be read soon. Any address will do: a
/// prefetch never faults.
#[inline(always)]
pub fn prefetch_addr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address, and changes no state the program
    // can observe.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index against a `HashMap` under random inserts and removals, with hashes that
    /// crowd a few home positions (long probe chains, wrap-around, shifts across the end).
    #[test]
    fn agrees_with_a_map_under_churn_and_crowding() {
        let max = 1000;
        let mut ix = Index::new(max);
        let mut map = std::collections::HashMap::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut free: Vec<u32> = (0..max as u32).collect();
        for _ in 0..200_000 {
            // Few distinct hash parts, biased to the top of the table (wrap-around).
            let hash = (u64::from(u32::MAX - (rnd() % 64) as u32 * 1_000_000) << 32) | (rnd() % 4);
            if rnd() % 2 == 0 && !free.is_empty() {
                let slot = free.pop().unwrap();
                ix.insert(hash, slot);
                map.insert(slot, hash);
            } else if let Some(&slot) = map.keys().next() {
                let h = map.remove(&slot).unwrap();
                assert!(ix.remove(h, slot));
                free.push(slot);
            }
            assert_eq!(ix.len(), map.len());
        }
        for (&slot, &h) in &map {
            assert_eq!(ix.find(h, |s| s == slot), Some(slot));
        }
        assert_eq!(ix.find(1 << 32, |_| true), None);
        assert!(!ix.remove(1 << 32, 0));
    }
}
