//! A hierarchical timing wheel that hands deadlines back in exact order.
//!
//! Two levels of 4096 buckets: level 0 holds the deadlines of the current block of 4096 ticks
//! (a tick is 2^16 ns ≈ 66 µs, a block ≈ 268 ms), level 1 those of the next 4095 blocks
//! (≈ 18 min), and a `far` list the rest. Inserting is O(1); a block's level-1 bucket is spread
//! into level 0 when the wheel enters it. Entries of the ticks already passed wait in a small
//! min-heap (`due`), so [`Wheel::pop`] returns them in deadline order, exactly like one big
//! heap would, at O(1) per entry instead of O(log n) over every live timer.
//!
//! The wheel knows nothing of flows: an entry is (deadline, slot, generation), and the flow
//! table decides whether a popped entry is still live.

use std::{cmp::Reverse, collections::BinaryHeap};

const TICK_SHIFT: u32 = 16;
const L0_BITS: u32 = 12;
const L1_BITS: u32 = 12;
const L0_MASK: u64 = (1 << L0_BITS) - 1;
const L1_MASK: u64 = (1 << L1_BITS) - 1;
const EPOCH_MASK: u64 = (1 << (L0_BITS + L1_BITS)) - 1;

/// Entries a bucket keeps room for once emptied: a burst of deadlines in one tick (every
/// connection of a flood's second) must not leave its memory behind in 8192 buckets.
const KEEP: usize = 64;

/// An emptied bucket, with its allocation kept unless it is larger than [`KEEP`].
fn recycle(mut v: Vec<Entry>) -> Vec<Entry> {
    v.clear();
    if v.capacity() > KEEP { Vec::new() } else { v }
}

/// One deadline of one flow-table slot.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Entry {
    pub deadline: u64,
    pub slot: u32,
    pub generation: u32,
}

/// Bits, one per bucket of a level.
type Bits = [u64; (1 << L0_BITS) / 64];

const _: () = assert!(L0_BITS == L1_BITS);

/// The first set bit of `bits` at or after `from`.
fn next_set(bits: &Bits, from: usize) -> Option<usize> {
    let mut w = from / 64;
    let mut word = bits.get(w)? & (!0u64 << (from % 64));
    loop {
        if word != 0 {
            return Some(w * 64 + word.trailing_zeros() as usize);
        }
        w += 1;
        word = *bits.get(w)?;
    }
}

/// See the module docs.
pub struct Wheel {
    /// The buckets of each level, allocated on the level's first entry (a wheel that never
    /// holds a deadline — a test, a fuzz input — costs no 8192 empty buckets).
    l0: Vec<Vec<Entry>>,
    l1: Vec<Vec<Entry>>,
    /// Level-0 buckets holding entries: [`Wheel::pop`] jumps to the next one instead of
    /// walking every tick between.
    l0_busy: Bits,
    /// Buckets that ever held an entry, per level: only these can own an allocation.
    l0_used: Bits,
    l1_used: Bits,
    far: Vec<Entry>,
    due: BinaryHeap<Reverse<Entry>>,
    /// The first tick whose entries have not been moved to `due`.
    cur: u64,
    /// Entries in `l0`, and in `l0`, `l1` and `far` together.
    l0_len: usize,
    len: usize,
}

impl Default for Wheel {
    fn default() -> Self {
        Self::new()
    }
}

impl Wheel {
    /// Buckets of the two levels together.
    pub const BUCKETS: usize = (1 << L0_BITS) + (1 << L1_BITS);

    pub fn new() -> Self {
        Self {
            l0: Vec::new(),
            l1: Vec::new(),
            l0_busy: [0; 64],
            l0_used: [0; 64],
            l1_used: [0; 64],
            far: Vec::new(),
            due: BinaryHeap::new(),
            cur: 0,
            l0_len: 0,
            len: 0,
        }
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.len + self.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, e: Entry) {
        let t = e.deadline >> TICK_SHIFT;
        if t < self.cur {
            self.due.push(Reverse(e));
        } else if t >> L0_BITS == self.cur >> L0_BITS {
            if self.l0.is_empty() {
                self.l0.resize_with(1 << L0_BITS, Vec::new);
            }
            let i = (t & L0_MASK) as usize;
            self.l0[i].push(e);
            self.l0_busy[i / 64] |= 1 << (i % 64);
            self.l0_used[i / 64] |= 1 << (i % 64);
            self.l0_len += 1;
            self.len += 1;
        } else if t >> (L0_BITS + L1_BITS) == self.cur >> (L0_BITS + L1_BITS) {
            if self.l1.is_empty() {
                self.l1.resize_with(1 << L1_BITS, Vec::new);
            }
            let b = ((t >> L0_BITS) & L1_MASK) as usize;
            self.l1[b].push(e);
            self.l1_used[b / 64] |= 1 << (b % 64);
            self.len += 1;
        } else {
            self.far.push(e);
            self.len += 1;
        }
    }

    /// Moves every entry of the ticks up to `now`'s into `due`.
    fn advance(&mut self, now: u64) {
        let target = now >> TICK_SHIFT;
        while self.cur <= target {
            if self.len == 0 {
                self.cur = target + 1;
                return;
            }
            if self.cur & L0_MASK == 0 {
                if self.cur & EPOCH_MASK == 0 && !self.far.is_empty() {
                    let far = std::mem::take(&mut self.far);
                    self.len -= far.len();
                    for e in far {
                        self.push(e);
                    }
                }
                let b = ((self.cur >> L0_BITS) & L1_MASK) as usize;
                if self.l1.get(b).is_some_and(|v| !v.is_empty()) {
                    let bucket = std::mem::take(&mut self.l1[b]);
                    self.len -= bucket.len();
                    for &e in &bucket {
                        self.push(e);
                    }
                    self.l1[b] = recycle(bucket);
                }
            }
            if self.l0_len == 0 {
                // Nothing left in this block at level 0: go to the next block at once, or to
                // the next epoch when only `far` holds entries.
                let mask = if self.len == self.far.len() {
                    EPOCH_MASK
                } else {
                    L0_MASK
                };
                self.cur = ((self.cur | mask) + 1).min(target + 1);
                continue;
            }
            // The next tick of this block with entries (every level-0 entry is in this block,
            // at or after `cur`), unless it is past `target`.
            let Some(i) = next_set(&self.l0_busy, (self.cur & L0_MASK) as usize) else {
                debug_assert!(false, "l0_len counts entries no bucket holds");
                self.cur += 1;
                continue;
            };
            let at = (self.cur & !L0_MASK) | i as u64;
            if at > target {
                self.cur = target + 1;
                return;
            }
            self.cur = at;
            self.l0_busy[i / 64] &= !(1 << (i % 64));
            let bucket = std::mem::take(&mut self.l0[i]);
            self.l0_len -= bucket.len();
            self.len -= bucket.len();
            self.due.extend(bucket.iter().copied().map(Reverse));
            self.l0[i] = recycle(bucket);
            self.cur += 1;
        }
    }

    /// The earliest entry due at or before `now`, removed.
    pub fn pop(&mut self, now: u64) -> Option<Entry> {
        if self.due.peek().is_none_or(|Reverse(e)| e.deadline > now) {
            if self.due.is_empty() && self.due.capacity() > KEEP {
                self.due = BinaryHeap::new(); // a burst is over: give its memory back
            }
            self.advance(now);
        }
        match self.due.peek() {
            Some(Reverse(e)) if e.deadline <= now => self.due.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Every entry, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.l0
            .iter()
            .chain(&self.l1)
            .flatten()
            .chain(&self.far)
            .chain(self.due.iter().map(|Reverse(e)| e))
    }

    /// Keeps only the entries `live` says yes to.
    pub fn retain(&mut self, mut live: impl FnMut(&Entry) -> bool) {
        let mut l0_len = 0;
        for (i, b) in self.l0.iter_mut().enumerate() {
            b.retain(&mut live);
            l0_len += b.len();
            if b.is_empty() {
                self.l0_busy[i / 64] &= !(1 << (i % 64));
            }
        }
        let mut len = l0_len;
        for b in &mut self.l1 {
            b.retain(&mut live);
            len += b.len();
        }
        self.far.retain(&mut live);
        len += self.far.len();
        self.due.retain(|Reverse(e)| live(e));
        self.l0_len = l0_len;
        self.len = len;
    }

    /// The most the buckets themselves take: their headers, and the room each keeps once
    /// emptied ([`KEEP`] entries); entries beyond are counted per flow.
    pub fn bound_bytes() -> usize {
        use std::mem::size_of;
        Self::BUCKETS * (size_of::<Vec<Entry>>() + KEEP * size_of::<Entry>())
    }

    /// Bytes allocated.
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let entries: usize = self
            .l0
            .iter()
            .chain(&self.l1)
            .map(Vec::capacity)
            .sum::<usize>()
            + self.far.capacity()
            + self.due.capacity();
        entries * size_of::<Entry>() + (self.l0.len() + self.l1.len()) * size_of::<Vec<Entry>>()
    }
}

impl Drop for Wheel {
    fn drop(&mut self) {
        // Only buckets that ever held an entry can own an allocation: drop those, and let the
        // rest (never-used `Vec::new()`s) go without visiting each of them.
        for (level, used) in [(&mut self.l0, &self.l0_used), (&mut self.l1, &self.l1_used)] {
            let mut from = 0;
            while let Some(i) = next_set(used, from) {
                if let Some(b) = level.get_mut(i) {
                    drop(std::mem::take(b));
                }
                from = i + 1;
            }
            // SAFETY: every element left is a `Vec::new()` that never held an entry (its bit in
            // `used` is clear), so it owns no allocation and needs no drop; shortening the
            // length to 0 only skips those no-op drops.
            unsafe { level.set_len(0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(deadline: u64, slot: u32) -> Entry {
        Entry {
            deadline,
            slot,
            generation: 0,
        }
    }

    /// The wheel against a plain heap on the same operations: same entries, same order.
    #[test]
    fn pops_in_the_order_one_heap_would() {
        let mut w = Wheel::new();
        let mut h = BinaryHeap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut now = 1_700_000_000_000_000_000u64;
        let mut slot = 0;
        for round in 0..20_000u32 {
            // Deadlines from "this tick" to beyond level 1's span (far), and jumps in time.
            let spread = [
                1_000,
                5_000_000,
                3_000_000_000,
                300_000_000_000,
                40_000_000_000_000,
            ];
            for _ in 0..(rnd() % 4) {
                let d = now + rnd() % spread[(rnd() % 5) as usize];
                slot += 1;
                w.push(e(d, slot));
                h.push(Reverse(e(d, slot)));
            }
            now += match round % 1000 {
                999 => 20_000_000_000_000, // a capture with hours of silence
                _ => rnd() % 3_000_000,
            };
            loop {
                let a = w.pop(now);
                let b = match h.peek() {
                    Some(Reverse(t)) if t.deadline <= now => h.pop().map(|Reverse(t)| t),
                    _ => None,
                };
                assert_eq!(a, b, "at {now}");
                if a.is_none() {
                    break;
                }
            }
        }
        assert_eq!(w.len(), h.len());
    }

    #[test]
    fn a_deadline_in_the_past_or_this_tick_is_due_at_once_and_in_order() {
        let mut w = Wheel::new();
        w.push(e(5_000_000, 1));
        assert_eq!(w.pop(4_000_000), None);
        w.push(e(4_100_000, 2)); // the same tick as `now`, after it
        w.push(e(1_000, 3)); // already passed
        assert_eq!(w.pop(4_000_000), Some(e(1_000, 3)));
        assert_eq!(w.pop(4_000_000), None);
        assert_eq!(w.pop(6_000_000), Some(e(4_100_000, 2)));
        assert_eq!(w.pop(6_000_000), Some(e(5_000_000, 1)));
        assert!(w.is_empty());
    }

    #[test]
    fn retain_drops_entries_everywhere_and_keeps_counts() {
        let mut w = Wheel::new();
        for (i, d) in [1u64 << 20, 1 << 34, 1 << 50].into_iter().enumerate() {
            w.push(e(d, i as u32));
        }
        w.push(e(0, 9));
        assert_eq!(w.pop(0), Some(e(0, 9)));
        w.retain(|e| e.slot != 1);
        assert_eq!(w.len(), 2);
        assert_eq!(w.pop(u64::MAX >> 1), Some(e(1 << 20, 0)));
        assert_eq!(w.pop(u64::MAX >> 1), Some(e(1 << 50, 2)));
        assert!(w.is_empty());
    }
}
