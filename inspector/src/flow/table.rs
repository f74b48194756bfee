//! The per-worker flow table: preallocated, bounded, single-writer, with O(1) timers.
//!
//! - Index: open addressing ([`super::index`]) keyed by a randomly seeded hash (`foldhash`),
//!   since attackers choose 5-tuples. It is sized up front and the table never holds more
//!   than `max_flows` entries, so it never grows. [`FlowTable::prefetch`] lets a batch of
//!   packets bring their flows' cache lines in before they are processed.
//! - Slots: one arena entry per flow holds its key, generation, eviction class, armed
//!   deadlines and state together, so finding a flow and reading it touch the same cache
//!   lines (they were five parallel arrays: a lookup at 1M flows missed the cache in each).
//!   The generation invalidates wheel and queue entries of a slot that was reused.
//! - Timers: a slot has at most one deadline per [`TimerKind`] and one entry in a
//!   hierarchical timing wheel ([`super::wheel`]) for the earliest of them. Arming a later
//!   deadline touches only the slot; the wheel entry, when it comes due, finds what is
//!   really due and queues the slot again for its next deadline. Deadlines fire in exact
//!   order (a SYN stream's deadline follows its client's backoff, so they differ per flow).
//!   Entries made stale by re-arming or removal are skipped when popped, and a wheel that
//!   grows past twice the table's capacity is compacted, so memory stays bounded under any
//!   traffic.
//! - Eviction when full (counted by reason): the oldest **closed** flow first (it carries the
//!   least information), then the oldest **half-open** one (SYN floods must not push out
//!   established connections), then the oldest remaining flow.

use std::{collections::VecDeque, hash::BuildHasher};

use super::{
    FlowKey,
    index::{Index, prefetch_addr},
    wheel::{Entry, Wheel},
};

/// The timeouts the detectors arm.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum TimerKind {
    /// SYN sent, no SYN-ACK/RST yet.
    Syn = 0,
    /// SYN-ACK sent, no completing ACK/RST yet.
    SynAck = 1,
    /// A FIN waiting for its answer.
    Fin = 2,
    /// A probe's late ACK waiting for the server's RST.
    Leak = 3,
    /// End of the flow's life in the table (closed linger, idle).
    Expire = 4,
    /// A RST's verdicts held for the reorder window, so a later packet can correct them.
    Settle = 5,
}

impl TimerKind {
    pub const COUNT: usize = 6;
    pub const ALL: [TimerKind; Self::COUNT] = [
        Self::Syn,
        Self::SynAck,
        Self::Fin,
        Self::Leak,
        Self::Expire,
        Self::Settle,
    ];
}

/// Eviction priority classes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum FlowClass {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

/// Why a flow left the table early.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EvictReason {
    Closed = 0,
    HalfOpen = 1,
    Oldest = 2,
}

impl EvictReason {
    pub const NAMES: [&'static str; 3] = ["closed", "half_open", "oldest"];
}

/// Table counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub live: u64,
    pub created: u64,
    pub removed: u64,
    pub evicted: [u64; 3],
}

impl TableStats {
    /// Adds `o` (another worker's table) to these counters.
    pub fn add(&mut self, o: &TableStats) {
        self.live += o.live;
        self.created += o.created;
        self.removed += o.removed;
        for (a, b) in self.evicted.iter_mut().zip(o.evicted) {
            *a += b;
        }
    }
}

#[derive(Clone, Copy)]
struct Aged {
    slot: u32,
    generation: u32,
}

/// One flow's place in the arena.
struct Slot<V> {
    key: FlowKey,
    generation: u32,
    class: FlowClass,
    /// The deadline of this slot's live wheel entry (0: none). Never later than the earliest
    /// armed deadline.
    queued: u64,
    /// Armed deadline per [`TimerKind`] (0: not armed).
    armed: [u64; TimerKind::COUNT],
    val: Option<V>,
}

/// A bounded flow table holding values of type `V`.
pub struct FlowTable<V> {
    hasher: foldhash::fast::SeedableRandomState,
    index: Index,
    slots: Vec<Slot<V>>,
    free: Vec<u32>,
    wheel: Wheel,
    queues: [VecDeque<Aged>; 3],
    max: usize,
    stats: TableStats,
}

impl<V> FlowTable<V> {
    /// A table for at most `max_flows` flows (at least 1), allocated now, with a random
    /// hash seed.
    pub fn new(max_flows: usize) -> Self {
        Self::with_hasher(max_flows, foldhash::fast::SeedableRandomState::random())
    }

    /// A table whose hash seed is `seed`: what an attacker who knew the seed could flood.
    /// For benchmarks of hash flooding only; the engine's tables are always [`FlowTable::new`].
    pub fn with_known_seed(max_flows: usize, seed: u64) -> Self {
        Self::with_hasher(
            max_flows,
            foldhash::fast::SeedableRandomState::with_seed(
                seed,
                foldhash::SharedSeed::global_fixed(),
            ),
        )
    }

    /// Where the index probe for `key` starts (benchmarks of hash flooding).
    pub fn probe_start(&self, key: &FlowKey) -> usize {
        self.index.home_of(self.hash(key))
    }

    fn with_hasher(max_flows: usize, hasher: foldhash::fast::SeedableRandomState) -> Self {
        let max = max_flows.max(1);
        let mut free: Vec<u32> = (0..max as u32).collect();
        free.reverse();
        Self {
            hasher,
            index: Index::new(max),
            slots: (0..max)
                .map(|_| Slot {
                    key: FlowKey::default(),
                    generation: 0,
                    class: FlowClass::Open,
                    queued: 0,
                    armed: [0; TimerKind::COUNT],
                    val: None,
                })
                .collect(),
            free,
            wheel: Wheel::new(),
            queues: std::array::from_fn(|_| VecDeque::new()),
            max,
            stats: TableStats::default(),
        }
    }

    /// Counters, with `live` current.
    pub fn stats(&self) -> TableStats {
        TableStats {
            live: self.index.len() as u64,
            ..self.stats
        }
    }

    /// Capacity in flows.
    pub fn capacity(&self) -> usize {
        self.max
    }

    /// The table's (seeded) hash of `key`.
    pub fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The slot of `key`, if present.
    pub fn find(&self, key: &FlowKey) -> Option<u32> {
        self.find_hashed(key, self.hash(key))
    }

    /// [`FlowTable::find`] with the key's hash at hand.
    pub fn find_hashed(&self, key: &FlowKey, hash: u64) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(hash, |s| slots[s as usize].key == *key)
    }

    /// First step of a lookup ahead of time: brings the index line of `hash` into the cache.
    pub fn prefetch_index(&self, hash: u64) {
        self.index.prefetch(hash);
    }

    /// Second step, once the index line has arrived: brings in the first cache lines of the
    /// flow `hash` most likely names (nothing when no entry matches).
    pub fn prefetch_slot(&self, hash: u64) {
        if let Some(s) = self.index.candidate(hash)
            && let Some(slot) = self.slots.get(s as usize)
        {
            // Every line of the slot (key, deadlines, the state the rules read), by address:
            // reading the slot here would wait for it.
            let base: *const Slot<V> = slot;
            for line in (0..std::mem::size_of::<Slot<V>>()).step_by(64) {
                prefetch_addr(base.cast::<u8>().wrapping_add(line));
            }
        }
    }

    /// The value in `slot`.
    pub fn get(&self, slot: u32) -> Option<&V> {
        self.slots.get(slot as usize)?.val.as_ref()
    }

    /// The value in `slot`, mutably.
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut V> {
        self.slots.get_mut(slot as usize)?.val.as_mut()
    }

    /// The key in `slot`.
    pub fn key(&self, slot: u32) -> FlowKey {
        self.slots[slot as usize].key
    }

    /// Inserts a new flow (the key must not be present). When the table is full, first
    /// evicts one flow by the policy in the module docs and returns it with its reason.
    pub fn insert(
        &mut self,
        key: FlowKey,
        val: V,
        class: FlowClass,
    ) -> (u32, Option<(FlowKey, V, EvictReason)>) {
        let evicted = if self.free.is_empty() {
            self.evict_one()
        } else {
            None
        };
        let Some(slot) = self.free.pop() else {
            unreachable!("evict_one frees a slot whenever the table is full")
        };
        let h = self.hash(&key);
        let s = &mut self.slots[slot as usize];
        s.key = key;
        s.val = Some(val);
        s.armed = [0; TimerKind::COUNT];
        s.queued = 0;
        self.index.insert(h, slot);
        self.stats.created += 1;
        self.set_class(slot, class);
        (slot, evicted)
    }

    /// Removes the flow in `slot`, returning its key and value.
    pub fn remove(&mut self, slot: u32) -> Option<(FlowKey, V)> {
        let s = self.slots.get_mut(slot as usize)?;
        let val = s.val.take()?;
        let key = s.key;
        s.generation = s.generation.wrapping_add(1);
        self.index.remove(self.hash(&key), slot);
        self.free.push(slot);
        self.stats.removed += 1;
        Some((key, val))
    }

    /// Puts the flow in eviction class `class` (as of now: it queues behind older ones).
    pub fn set_class(&mut self, slot: u32, class: FlowClass) {
        let s = &mut self.slots[slot as usize];
        s.class = class;
        let q = &mut self.queues[class as usize];
        q.push_back(Aged {
            slot,
            generation: s.generation,
        });
        if q.len() > 2 * self.max + 16 {
            let slots = &self.slots;
            q.retain(|a| {
                let s = &slots[a.slot as usize];
                s.generation == a.generation && s.class == class
            });
        }
    }

    fn evict_one(&mut self) -> Option<(FlowKey, V, EvictReason)> {
        for (class, reason) in [
            (FlowClass::Closed, EvictReason::Closed),
            (FlowClass::HalfOpen, EvictReason::HalfOpen),
            (FlowClass::Open, EvictReason::Oldest),
        ] {
            while let Some(a) = self.queues[class as usize].pop_front() {
                let s = &self.slots[a.slot as usize];
                if s.generation == a.generation && s.class == class && s.val.is_some() {
                    let (k, v) = self.remove(a.slot)?;
                    self.stats.removed -= 1;
                    self.stats.evicted[reason as usize] += 1;
                    return Some((k, v, reason));
                }
            }
        }
        None
    }

    /// Queues `slot` in the wheel for `deadline`.
    fn enqueue(&mut self, slot: u32, deadline: u64) {
        let s = &mut self.slots[slot as usize];
        s.queued = deadline;
        self.wheel.push(Entry {
            deadline,
            slot,
            generation: s.generation,
        });
        if self.wheel.len() > 2 * self.max + 16 {
            let slots = &self.slots;
            self.wheel.retain(|e| Self::live(slots, e));
        }
    }

    fn live(slots: &[Slot<V>], e: &Entry) -> bool {
        let s = &slots[e.slot as usize];
        s.generation == e.generation && s.queued == e.deadline && s.val.is_some()
    }

    /// Arms (or re-arms) timer `kind` of `slot` for `deadline` (ns). Deadline 0 disarms.
    pub fn arm(&mut self, slot: u32, kind: TimerKind, deadline: u64) {
        let s = &mut self.slots[slot as usize];
        s.armed[kind as usize] = deadline;
        if deadline != 0 && (s.queued == 0 || deadline < s.queued) {
            self.enqueue(slot, deadline);
        }
    }

    /// The deadline of timer `kind` of `slot`, if armed.
    pub fn deadline(&self, slot: u32, kind: TimerKind) -> Option<u64> {
        let d = self.slots[slot as usize].armed[kind as usize];
        (d != 0).then_some(d)
    }

    /// Disarms timer `kind` of `slot`.
    pub fn disarm(&mut self, slot: u32, kind: TimerKind) {
        self.slots[slot as usize].armed[kind as usize] = 0;
    }

    /// Whether timer `kind` of `slot` is armed.
    pub fn is_armed(&self, slot: u32, kind: TimerKind) -> bool {
        self.slots[slot as usize].armed[kind as usize] != 0
    }

    /// The earliest live timer due at or before `now`, disarmed and returned as
    /// (kind, slot, deadline).
    pub fn pop_expired(&mut self, now: u64) -> Option<(TimerKind, u32, u64)> {
        while let Some(e) = self.wheel.pop(now) {
            if !Self::live(&self.slots, &e) {
                continue;
            }
            let s = &mut self.slots[e.slot as usize];
            s.queued = 0;
            // The earliest armed kind (the lowest kind first among equal deadlines).
            let Some((k, d)) = s
                .armed
                .iter()
                .enumerate()
                .filter(|&(_, &d)| d != 0)
                .min_by_key(|&(k, &d)| (d, k))
                .map(|(k, &d)| (k, d))
            else {
                continue;
            };
            if d > now {
                self.enqueue(e.slot, d);
                continue;
            }
            s.armed[k] = 0;
            if let Some(next) = s.armed.iter().copied().filter(|&d| d != 0).min() {
                self.enqueue(e.slot, next);
            }
            return Some((TimerKind::ALL[k], e.slot, d));
        }
        None
    }

    /// Slots whose timer `kind` is armed (end of input: what is still pending), in slot
    /// order: from the arena when it has fewer slots than the wheel has buckets (small tables:
    /// tests, the fuzzer, short captures), else from the wheel's entries, proportional to the
    /// timers rather than to the table's capacity.
    pub fn armed_slots(&self, kind: TimerKind) -> Vec<u32> {
        if self.slots.len() <= Wheel::BUCKETS {
            self.armed_from_arena(kind)
        } else {
            self.armed_from_wheel(kind)
        }
    }

    fn armed_from_arena(&self, kind: TimerKind) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&i| {
                let s = &self.slots[i as usize];
                s.val.is_some() && s.armed[kind as usize] != 0
            })
            .collect()
    }

    fn armed_from_wheel(&self, kind: TimerKind) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .wheel
            .iter()
            .filter(|e| {
                Self::live(&self.slots, e) && self.slots[e.slot as usize].armed[kind as usize] != 0
            })
            .map(|e| e.slot)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The most a table of `max_flows` flows can take: its arena and index, with the timer
    /// wheel and eviction queues at the size where they are compacted.
    pub fn bound_bytes(max_flows: usize) -> usize {
        use std::mem::size_of;
        let per_flow = 2 * size_of::<u64>() // the index, at load ½
            + size_of::<Slot<V>>()
            + 2 * size_of::<Entry>()
            + 2 * 3 * size_of::<Aged>();
        max_flows
            .max(1)
            .saturating_mul(per_flow)
            .saturating_add(Wheel::bound_bytes())
    }

    /// Bytes this table allocated (index, arena, timer wheel and eviction queues).
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let index = self.index.memory_bytes();
        let arena = self.slots.capacity() * size_of::<Slot<V>>();
        let queues: usize = self
            .queues
            .iter()
            .map(|q| q.capacity() * size_of::<Aged>())
            .sum();
        index + arena + self.wheel.memory_bytes() + queues
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Endpoint;

    fn key(n: u16) -> FlowKey {
        FlowKey::of(
            Endpoint {
                ip: [1; 16],
                port: n,
            },
            Endpoint {
                ip: [2; 16],
                port: 80,
            },
        )
        .0
    }

    #[test]
    fn insert_find_remove() {
        let mut t = FlowTable::new(4);
        let (s, ev) = t.insert(key(1), 10u32, FlowClass::Open);
        assert!(ev.is_none());
        assert_eq!(t.find(&key(1)), Some(s));
        assert_eq!(t.get(s), Some(&10));
        assert_eq!(t.remove(s), Some((key(1), 10)));
        assert_eq!(t.find(&key(1)), None);
        assert_eq!(t.stats().live, 0);
    }

    #[test]
    fn full_table_evicts_closed_then_half_open_then_oldest() {
        let mut t = FlowTable::new(3);
        t.insert(key(1), 1u32, FlowClass::Open);
        let (h, _) = t.insert(key(2), 2, FlowClass::HalfOpen);
        let (c, _) = t.insert(key(3), 3, FlowClass::Open);
        t.set_class(c, FlowClass::Closed);
        let (_, ev) = t.insert(key(4), 4, FlowClass::Open);
        assert_eq!(ev.map(|e| (e.1, e.2)), Some((3, EvictReason::Closed)));
        let (_, ev) = t.insert(key(5), 5, FlowClass::Open);
        assert_eq!(ev.map(|e| (e.1, e.2)), Some((2, EvictReason::HalfOpen)));
        assert_eq!(t.find(&key(2)), None);
        let _ = h;
        let (_, ev) = t.insert(key(6), 6, FlowClass::Open);
        assert_eq!(ev.map(|e| (e.1, e.2)), Some((1, EvictReason::Oldest)));
        assert_eq!(t.stats().evicted, [1, 1, 1]);
        assert_eq!(t.stats().live, 3);
    }

    #[test]
    fn timers_fire_in_deadline_order_and_rearming_supersedes() {
        let mut t = FlowTable::new(4);
        let (a, _) = t.insert(key(1), (), FlowClass::Open);
        let (b, _) = t.insert(key(2), (), FlowClass::Open);
        t.arm(a, TimerKind::Syn, 100);
        t.arm(b, TimerKind::Fin, 50);
        t.arm(a, TimerKind::Syn, 200); // re-armed: the 100 entry is dead
        assert_eq!(t.pop_expired(150), Some((TimerKind::Fin, b, 50)));
        assert_eq!(t.pop_expired(150), None);
        assert_eq!(t.pop_expired(250), Some((TimerKind::Syn, a, 200)));
        assert_eq!(t.pop_expired(1000), None);
    }

    #[test]
    fn deadlines_of_one_kind_fire_in_order_whatever_order_they_were_armed_in() {
        let mut t = FlowTable::new(4);
        let (a, _) = t.insert(key(1), (), FlowClass::Open);
        let (b, _) = t.insert(key(2), (), FlowClass::Open);
        t.arm(a, TimerKind::Syn, 128_000); // a retransmitting client's late deadline
        t.arm(b, TimerKind::Syn, 3_750); // a fresh SYN's
        assert_eq!(t.armed_slots(TimerKind::Syn), vec![a, b]);
        assert_eq!(t.pop_expired(4_000), Some((TimerKind::Syn, b, 3_750)));
        assert_eq!(t.pop_expired(4_000), None);
        assert_eq!(t.pop_expired(200_000), Some((TimerKind::Syn, a, 128_000)));
        assert!(t.armed_slots(TimerKind::Syn).is_empty());
    }

    #[test]
    fn armed_slots_from_the_arena_and_from_the_wheel_agree() {
        let mut t = FlowTable::new(256);
        let mut slots = Vec::new();
        for i in 0..200u16 {
            let (s, _) = t.insert(key(i), (), FlowClass::Open);
            slots.push(s);
            t.arm(s, TimerKind::Syn, 1_000 + u64::from(i) * 97);
            if i % 3 == 0 {
                t.arm(s, TimerKind::Fin, 5_000 + u64::from(i));
            }
        }
        for (i, &s) in slots.iter().enumerate() {
            if i % 5 == 0 {
                t.arm(s, TimerKind::Syn, 0); // disarmed
            }
            if i % 7 == 0 {
                t.remove(s);
            }
        }
        while t
            .pop_expired(8_000)
            .is_some_and(|(k, _, _)| k == TimerKind::Syn)
        {}
        for kind in [TimerKind::Syn, TimerKind::Fin] {
            assert_eq!(
                t.armed_from_arena(kind),
                t.armed_from_wheel(kind),
                "{kind:?}"
            );
        }
        assert!(!t.armed_from_arena(TimerKind::Fin).is_empty());
    }

    #[test]
    fn timers_of_removed_flows_never_fire() {
        let mut t = FlowTable::new(2);
        let (a, _) = t.insert(key(1), (), FlowClass::Open);
        t.arm(a, TimerKind::Syn, 10);
        t.remove(a);
        let (a2, _) = t.insert(key(2), (), FlowClass::Open);
        assert_eq!(a, a2, "slot reused");
        assert_eq!(t.pop_expired(100), None);
    }

    #[test]
    fn queues_stay_bounded_under_churn() {
        let mut t = FlowTable::new(8);
        for i in 0..10_000u32 {
            let (s, _) = t.insert(key(i as u16), (), FlowClass::HalfOpen);
            t.arm(s, TimerKind::Syn, 1_000_000 + u64::from(i));
        }
        assert!(t.wheel.len() <= 2 * 8 + 17);
        assert!(t.queues[1].len() <= 2 * 8 + 17);
        assert_eq!(t.stats().live, 8);
        assert_eq!(t.stats().evicted[1], 10_000 - 8);
    }
}
