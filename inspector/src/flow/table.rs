//! The per-worker flow table: preallocated, bounded, single-writer, with O(1) timers.
//!
//! - Index: open addressing (`hashbrown::HashTable` of slot numbers) keyed by a randomly
//!   seeded hash (`foldhash`), since attackers choose 5-tuples. Capacity is reserved up front
//!   and the table never holds more than `max_flows` entries, so it never grows.
//! - Slots: flows live in a preallocated arena; a generation number per slot invalidates
//!   timers and queue entries of a slot that was reused.
//! - Timers: one min-heap of (deadline, slot, generation, kind). Deadlines differ per flow
//!   (a SYN stream's deadline follows its client's retransmission backoff), so a FIFO per
//!   kind would fire them out of order. A slot has at most one live deadline per kind;
//!   superseded entries are skipped when popped, and a heap that grows past twice the
//!   table's capacity per kind is rebuilt from its live entries, so memory stays bounded under
//!   any traffic.
//! - Eviction when full (counted by reason): the oldest **closed** flow first (it carries the
//!   least information), then the oldest **half-open** one (SYN floods must not push out
//!   established connections), then the oldest remaining flow.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    hash::BuildHasher,
};

use hashbrown::HashTable;

use super::FlowKey;

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

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    deadline: u64,
    slot: u32,
    generation: u32,
    kind: u8,
}

#[derive(Clone, Copy)]
struct Aged {
    slot: u32,
    generation: u32,
}

/// A bounded flow table holding values of type `V`.
pub struct FlowTable<V> {
    hasher: foldhash::fast::RandomState,
    index: HashTable<u32>,
    keys: Vec<FlowKey>,
    vals: Vec<Option<V>>,
    gens: Vec<u32>,
    class: Vec<FlowClass>,
    armed: Vec<[u64; TimerKind::COUNT]>,
    free: Vec<u32>,
    timers: BinaryHeap<Reverse<Timer>>,
    queues: [VecDeque<Aged>; 3],
    max: usize,
    stats: TableStats,
}

impl<V> FlowTable<V> {
    /// A table for at most `max_flows` flows (at least 1), allocated now.
    pub fn new(max_flows: usize) -> Self {
        let max = max_flows.max(1);
        let mut free: Vec<u32> = (0..max as u32).collect();
        free.reverse();
        Self {
            hasher: foldhash::fast::RandomState::default(),
            index: HashTable::with_capacity(max),
            keys: vec![FlowKey::default(); max],
            vals: (0..max).map(|_| None).collect(),
            gens: vec![0; max],
            class: vec![FlowClass::Open; max],
            armed: vec![[0; TimerKind::COUNT]; max],
            free,
            timers: BinaryHeap::new(),
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

    fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The slot of `key`, if present.
    pub fn find(&self, key: &FlowKey) -> Option<u32> {
        let keys = &self.keys;
        self.index
            .find(self.hash(key), |&s| keys[s as usize] == *key)
            .copied()
    }

    /// The value in `slot`.
    pub fn get(&self, slot: u32) -> Option<&V> {
        self.vals.get(slot as usize)?.as_ref()
    }

    /// The value in `slot`, mutably.
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut V> {
        self.vals.get_mut(slot as usize)?.as_mut()
    }

    /// The key in `slot`.
    pub fn key(&self, slot: u32) -> FlowKey {
        self.keys[slot as usize]
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
        let s = slot as usize;
        self.keys[s] = key;
        self.vals[s] = Some(val);
        self.armed[s] = [0; TimerKind::COUNT];
        let h = self.hash(&key);
        let keys = &self.keys;
        let hasher = &self.hasher;
        self.index
            .insert_unique(h, slot, |&x| hasher.hash_one(keys[x as usize]));
        self.stats.created += 1;
        self.set_class(slot, class);
        (slot, evicted)
    }

    /// Removes the flow in `slot`, returning its key and value.
    pub fn remove(&mut self, slot: u32) -> Option<(FlowKey, V)> {
        let s = slot as usize;
        let val = self.vals.get_mut(s)?.take()?;
        let key = self.keys[s];
        let h = self.hash(&key);
        if let Ok(e) = self.index.find_entry(h, |&x| x == slot) {
            e.remove();
        }
        self.gens[s] = self.gens[s].wrapping_add(1);
        self.free.push(slot);
        self.stats.removed += 1;
        Some((key, val))
    }

    /// Puts the flow in eviction class `class` (as of now: it queues behind older ones).
    pub fn set_class(&mut self, slot: u32, class: FlowClass) {
        let s = slot as usize;
        self.class[s] = class;
        let q = &mut self.queues[class as usize];
        q.push_back(Aged {
            slot,
            generation: self.gens[s],
        });
        if q.len() > 2 * self.max + 16 {
            let (gens, cls) = (&self.gens, &self.class);
            q.retain(|a| gens[a.slot as usize] == a.generation && cls[a.slot as usize] == class);
        }
    }

    fn evict_one(&mut self) -> Option<(FlowKey, V, EvictReason)> {
        for (class, reason) in [
            (FlowClass::Closed, EvictReason::Closed),
            (FlowClass::HalfOpen, EvictReason::HalfOpen),
            (FlowClass::Open, EvictReason::Oldest),
        ] {
            while let Some(a) = self.queues[class as usize].pop_front() {
                let s = a.slot as usize;
                if self.gens[s] == a.generation && self.class[s] == class && self.vals[s].is_some()
                {
                    let (k, v) = self.remove(a.slot)?;
                    self.stats.removed -= 1;
                    self.stats.evicted[reason as usize] += 1;
                    return Some((k, v, reason));
                }
            }
        }
        None
    }

    /// Arms (or re-arms) timer `kind` of `slot` for `deadline` (ns). Deadline 0 is "never".
    pub fn arm(&mut self, slot: u32, kind: TimerKind, deadline: u64) {
        let s = slot as usize;
        self.armed[s][kind as usize] = deadline;
        self.timers.push(Reverse(Timer {
            deadline,
            slot,
            generation: self.gens[s],
            kind: kind as u8,
        }));
        if self.timers.len() > 2 * TimerKind::COUNT * self.max + 16 {
            let (gens, armed) = (&self.gens, &self.armed);
            self.timers.retain(|Reverse(t)| Self::live(gens, armed, t));
        }
    }

    fn live(gens: &[u32], armed: &[[u64; TimerKind::COUNT]], t: &Timer) -> bool {
        let s = t.slot as usize;
        gens[s] == t.generation && armed[s][usize::from(t.kind)] == t.deadline
    }

    /// The deadline of timer `kind` of `slot`, if armed.
    pub fn deadline(&self, slot: u32, kind: TimerKind) -> Option<u64> {
        let d = self.armed[slot as usize][kind as usize];
        (d != 0).then_some(d)
    }

    /// Disarms timer `kind` of `slot`.
    pub fn disarm(&mut self, slot: u32, kind: TimerKind) {
        self.armed[slot as usize][kind as usize] = 0;
    }

    /// Whether timer `kind` of `slot` is armed.
    pub fn is_armed(&self, slot: u32, kind: TimerKind) -> bool {
        self.armed[slot as usize][kind as usize] != 0
    }

    /// The earliest live timer due at or before `now`, disarmed and returned as
    /// (kind, slot, deadline).
    pub fn pop_expired(&mut self, now: u64) -> Option<(TimerKind, u32, u64)> {
        while let Some(&Reverse(t)) = self.timers.peek() {
            if !Self::live(&self.gens, &self.armed, &t) {
                self.timers.pop();
                continue;
            }
            if t.deadline > now {
                return None;
            }
            self.timers.pop();
            let kind = TimerKind::ALL[usize::from(t.kind)];
            self.armed[t.slot as usize][kind as usize] = 0;
            return Some((kind, t.slot, t.deadline));
        }
        None
    }

    /// Slots whose timer `kind` is armed (end of input: what is still pending), from the
    /// heap's live entries: proportional to the timers, not to the table's capacity.
    pub fn armed_slots(&self, kind: TimerKind) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .timers
            .iter()
            .filter(|Reverse(t)| {
                t.kind == kind as u8
                    && self.vals[t.slot as usize].is_some()
                    && Self::live(&self.gens, &self.armed, t)
            })
            .map(|Reverse(t)| t.slot)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The most a table of `max_flows` flows can take: its arena and index, with the timer
    /// heap and eviction queues at the size where they are compacted.
    pub fn bound_bytes(max_flows: usize) -> usize {
        use std::mem::size_of;
        let per_flow = (size_of::<u32>() + 1) * 8 / 7 // index at hashbrown's load factor
            + size_of::<FlowKey>()
            + size_of::<Option<V>>()
            + size_of::<u32>() * 2
            + size_of::<FlowClass>()
            + size_of::<[u64; TimerKind::COUNT]>()
            + 2 * TimerKind::COUNT * size_of::<Timer>()
            + 2 * 3 * size_of::<Aged>();
        max_flows.max(1).saturating_mul(per_flow)
    }

    /// Bytes this table allocated (index, arena, timer and eviction queues).
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let index = self.index.capacity() * (size_of::<u32>() + 1);
        let arena = self.max
            * (size_of::<FlowKey>()
                + size_of::<Option<V>>()
                + size_of::<u32>() * 2
                + size_of::<FlowClass>()
                + size_of::<[u64; TimerKind::COUNT]>());
        let timers = self.timers.capacity() * size_of::<Timer>();
        let queues: usize = self
            .queues
            .iter()
            .map(|q| q.capacity() * size_of::<Aged>())
            .sum();
        index + arena + timers + queues
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
        assert!(t.timers.len() <= 2 * TimerKind::COUNT * 8 + 17);
        assert!(t.queues[1].len() <= 2 * 8 + 17);
        assert_eq!(t.stats().live, 8);
        assert_eq!(t.stats().evicted[1], 10_000 - 8);
    }
}
