//! State that spans flows, shared by every worker's engine without locks.
//!
//! Workers own flows (the kernel shards by flow hash), but two verdicts look across flows:
//! accept-queue overflow case (b) needs "did this server endpoint complete a handshake
//! recently?", and the PAWS NAT check needs "the newest SYN TSval from this source IP to this
//! server IP". Both live in fixed-size, direct-mapped arrays of atomic slots indexed by a
//! randomly seeded hash: bounded memory whatever the traffic, no locks, and a collision or a
//! race between workers only replaces an older entry (a missed check, never a crash).

use std::{
    hash::BuildHasher,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use super::{event::Kind, seq::ts_older};

/// The per-connection verdicts an episode folds: a flood's handshake verdicts, a storm's RSTs.
pub const FOLDABLE: [Kind; 5] = [
    Kind::SynUnanswered,
    Kind::SynackUnacked,
    Kind::SynRejected,
    Kind::AcceptQueueOverflow,
    Kind::Reset,
];

/// Where `kind` stands in [`FOLDABLE`] (the index of its fold counts).
pub fn fold_index(kind: Kind) -> Option<usize> {
    FOLDABLE.iter().position(|k| *k == kind)
}

/// An episode's slot: which connections it folds (begun in `[from, until)`, ns) and how many
/// verdicts it folded, by [`FOLDABLE`] kind.
struct EpisodeSlot {
    tag: AtomicU64,
    from: AtomicU64,
    until: AtomicU64,
    folded: [AtomicU64; FOLDABLE.len()],
}

impl EpisodeSlot {
    fn new() -> Self {
        Self {
            tag: AtomicU64::new(0),
            from: AtomicU64::new(0),
            until: AtomicU64::new(0),
            folded: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

const MS: u64 = 1_000_000;

struct Slot {
    /// Hash of the key, never 0 (0 marks an empty slot).
    tag: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        Self {
            tag: AtomicU64::new(0),
            a: AtomicU64::new(0),
            b: AtomicU64::new(0),
        }
    }
}

/// Cross-flow state of one capture, shared by its workers' engines.
pub struct Shared {
    hasher: foldhash::quality::RandomState,
    listeners: Box<[Slot]>,
    paws: Box<[Slot]>,
    /// Endpoints in a SYN flood and hosts in a reset storm (which connections' verdicts they
    /// fold), set by the aggregator; the workers fold into them and count what they folded.
    episodes: Box<[EpisodeSlot]>,
    /// The host's own listen-queue counters (inline mode): whether they are heard, and the
    /// capture time when they were last seen to rise (TcpExtListenOverflows/ListenDrops).
    listen_counters: std::sync::atomic::AtomicBool,
    listen_rise_ns: AtomicU64,
    /// Host pairs (from, to) with at least one captured packet: `reverse_seen` is about hosts.
    pairs: Box<[Slot]>,
}

/// Slots per array (a power of two): 2 × 64 K × 24 bytes = 3 MiB.
const SLOTS: usize = 1 << 16;

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    pub fn new() -> Self {
        Self::with_slots(SLOTS)
    }

    /// Cross-flow state sized for a table of `max_flows` flows (a quarter of it, between
    /// 1 K and the default 64 K slots per array): a small engine (tests, the fuzzer, a tiny
    /// `--max-flows`) need not clear 5 MiB.
    pub fn for_flows(max_flows: usize) -> Self {
        Self::with_slots((max_flows / 4).next_power_of_two().clamp(1 << 10, SLOTS))
    }

    fn with_slots(n: usize) -> Self {
        Self {
            hasher: foldhash::quality::RandomState::default(),
            listeners: (0..n).map(|_| Slot::new()).collect(),
            paws: (0..n).map(|_| Slot::new()).collect(),
            episodes: (0..(n / 16).max(64)).map(|_| EpisodeSlot::new()).collect(),
            pairs: (0..n).map(|_| Slot::new()).collect(),
            listen_counters: std::sync::atomic::AtomicBool::new(false),
            listen_rise_ns: AtomicU64::new(0),
        }
    }

    /// Memory held, in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.listeners.len() + self.paws.len() + self.pairs.len()) * size_of::<Slot>()
            + self.episodes.len() * size_of::<EpisodeSlot>()
    }

    fn locate<'s, T>(&self, slots: &'s [T], key: &impl std::hash::Hash) -> (&'s T, u64) {
        let h = self.hasher.hash_one(key) | 1;
        (&slots[(h >> 7) as usize & (slots.len() - 1)], h)
    }

    fn mark(&self, key: &impl std::hash::Hash, from: u64, until: u64, starting: bool) {
        let (s, tag) = self.locate(&self.episodes, key);
        if starting || s.tag.load(Relaxed) != tag {
            for f in &s.folded {
                f.store(0, Relaxed);
            }
        }
        s.from.store(from, Relaxed);
        s.until.store(until, Relaxed);
        s.tag.store(tag, Relaxed);
    }

    /// Whether the episode of `key` folds a verdict of `kind` about a connection begun at
    /// `began`; if so it is counted as folded.
    fn fold(&self, key: &impl std::hash::Hash, began: u64, kind: Kind) -> bool {
        let (s, tag) = self.locate(&self.episodes, key);
        let folds = s.tag.load(Relaxed) == tag
            && s.from.load(Relaxed) <= began
            && began < s.until.load(Relaxed);
        if folds && let Some(i) = fold_index(kind) {
            s.folded[i].fetch_add(1, Relaxed);
        }
        folds
    }

    /// Takes the fold counts of the episode of `key` (its end).
    fn take_folded(&self, key: &impl std::hash::Hash) -> [(Kind, u64); FOLDABLE.len()] {
        let (s, tag) = self.locate(&self.episodes, key);
        let mine = s.tag.load(Relaxed) == tag;
        std::array::from_fn(|i| {
            let n = if mine {
                s.folded[i].swap(0, Relaxed)
            } else {
                0
            };
            (FOLDABLE[i], n)
        })
    }

    /// Server endpoint `ep` is in a SYN flood: verdicts of connections begun in
    /// `[from, until)` (ns) fold into it.
    /// `starting`: a new episode (its fold counts start from zero).
    pub fn set_flooding(&self, ep: &impl std::hash::Hash, from: u64, until: u64, starting: bool) {
        self.mark(&(0u8, ep), from, until, starting);
    }

    /// Whether the flood of `ep` folds a `kind` verdict of a connection begun at `began`
    /// (counted when it does).
    pub fn flood_folds(&self, ep: &impl std::hash::Hash, began: u64, kind: Kind) -> bool {
        self.fold(&(0u8, ep), began, kind)
    }

    /// What the flood of `ep` folded so far, by kind (taken: the counts restart).
    pub fn flood_folded(&self, ep: &impl std::hash::Hash) -> [(Kind, u64); FOLDABLE.len()] {
        self.take_folded(&(0u8, ep))
    }

    /// Host `ip` is in a reset storm: its RSTs sent in `[from, until)` fold into it.
    pub fn set_storming(&self, ip: &[u8; 16], from: u64, until: u64, starting: bool) {
        self.mark(&(1u8, ip), from, until, starting);
    }

    /// Whether the storm of `ip` folds a RST it sent at `at` (counted when it does).
    pub fn storm_folds(&self, ip: &[u8; 16], at: u64) -> bool {
        self.fold(&(1u8, ip), at, Kind::Reset)
    }

    /// What the storm of `ip` folded so far.
    pub fn storm_folded(&self, ip: &[u8; 16]) -> [(Kind, u64); FOLDABLE.len()] {
        self.take_folded(&(1u8, ip))
    }

    /// The host's listen-queue counters are heard from now on (inline mode).
    pub fn hear_listen_counters(&self) {
        self.listen_counters.store(true, Relaxed);
    }

    /// Whether the host's listen-queue counters are heard (inline mode).
    pub fn listen_counters_heard(&self) -> bool {
        self.listen_counters.load(Relaxed)
    }

    /// The host's listen-queue overflows or drops rose; seen at capture time `now` (ns).
    pub fn listen_counters_rose(&self, now: u64) {
        self.listen_rise_ns.fetch_max(now, Relaxed);
    }

    /// Whether the host may have dropped a handshake at a listener since `since`: always
    /// when its counters are not heard (a capture file), else only if they rose since.
    pub fn listen_drops_since(&self, since: u64) -> bool {
        !self.listen_counters.load(Relaxed) || self.listen_rise_ns.load(Relaxed) >= since
    }

    /// A packet from host `from` to host `to` was captured.
    pub fn saw_pair(&self, from: &[u8; 16], to: &[u8; 16]) {
        let (s, tag) = self.locate(&self.pairs, &(from, to));
        s.tag.store(tag, Relaxed);
    }

    /// Whether a packet from `from` to `to` was ever captured (a collision can only make an
    /// older pair forgotten, never a new one seen).
    pub fn pair_seen(&self, from: &[u8; 16], to: &[u8; 16]) -> bool {
        let (s, tag) = self.locate(&self.pairs, &(from, to));
        s.tag.load(Relaxed) == tag
    }

    /// Records a completed handshake on server endpoint `ep` at `now` (ns).
    pub fn handshake_done(&self, ep: &impl std::hash::Hash, now: u64) {
        let (s, tag) = self.locate(&self.listeners, ep);
        if s.tag.load(Relaxed) == tag {
            s.a.fetch_max(now, Relaxed);
        } else {
            s.a.store(now, Relaxed);
            s.tag.store(tag, Relaxed);
        }
    }

    /// The last completed handshake on `ep`, if one is remembered.
    pub fn last_handshake(&self, ep: &impl std::hash::Hash) -> Option<u64> {
        let (s, tag) = self.locate(&self.listeners, ep);
        let t = s.a.load(Relaxed);
        (s.tag.load(Relaxed) == tag && t != 0).then_some(t)
    }

    /// Remembers the last TSval `src` sent in a connection to `dst` that the server closed
    /// first: what a server in TIME_WAIT (and `tcp_tw_recycle`'s per-peer memory) keeps. The
    /// newest TSval wins while it is younger than `window`.
    pub fn paws_remember(&self, src: [u8; 16], dst: [u8; 16], tsval: u32, now: u64, window: u64) {
        let (s, tag) = self.locate(&self.paws, &(src, dst));
        // Times are kept in ms, mod 2^32 (49 days): only ages below `window` matter.
        let now_ms = ((now / MS) as u32).max(1);
        if s.tag.load(Relaxed) == tag {
            let v = s.a.load(Relaxed);
            let (prev, at_ms) = ((v >> 32) as u32, v as u32);
            if u64::from(now_ms.wrapping_sub(at_ms)) < window / MS && ts_older(prev, tsval) {
                return;
            }
        } else {
            s.b.store(0, Relaxed);
        }
        s.a.store((u64::from(tsval) << 32) | u64::from(now_ms), Relaxed);
        s.tag.store(tag, Relaxed);
    }

    /// The PAWS NAT check of a SYN from `src` to `dst` with `tsval` at `now`: returns
    /// (remembered tsval, its age in ns) when `tsval` is older (PAWS sense) than the TSval
    /// remembered by [`Shared::paws_remember`] less than `window` ago, at most once per
    /// `window` per pair.
    pub fn paws_check(
        &self,
        src: [u8; 16],
        dst: [u8; 16],
        tsval: u32,
        now: u64,
        window: u64,
    ) -> Option<(u32, u64)> {
        let (s, tag) = self.locate(&self.paws, &(src, dst));
        if s.tag.load(Relaxed) != tag {
            return None;
        }
        let now_ms = ((now / MS) as u32).max(1);
        let window_ms = window / MS;
        let v = s.a.load(Relaxed);
        let (prev, at_ms) = ((v >> 32) as u32, v as u32);
        let age_ms = u64::from(now_ms.wrapping_sub(at_ms));
        if age_ms >= window_ms || !ts_older(prev, tsval) {
            return None;
        }
        let last = s.b.load(Relaxed);
        let due = last == 0 || u64::from(now_ms.wrapping_sub(last as u32)) >= window_ms;
        // One worker wins the right to report.
        let won = due
            && s.b
                .compare_exchange(last, u64::from(now_ms), Relaxed, Relaxed)
                .is_ok();
        won.then_some((prev, age_ms * MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn listener_liveness_is_per_endpoint_and_keeps_the_newest() {
        let s = Shared::new();
        assert_eq!(s.last_handshake(&1u32), None);
        s.handshake_done(&1u32, 5 * SEC);
        s.handshake_done(&1u32, 3 * SEC);
        assert_eq!(s.last_handshake(&1u32), Some(5 * SEC));
        assert_eq!(s.last_handshake(&2u32), None);
    }

    #[test]
    fn paws_reports_an_older_tsval_once_per_window() {
        let s = Shared::new();
        let (a, b) = ([1; 16], [2; 16]);
        let w = 60 * SEC;
        assert_eq!(
            s.paws_check(a, b, 10, 100 * SEC, w),
            None,
            "nothing remembered"
        );
        s.paws_remember(a, b, 1000, 100 * SEC, w);
        s.paws_remember(a, b, 990, 100 * SEC, w);
        assert_eq!(
            s.paws_check(a, b, 900, 101 * SEC, w),
            Some((1000, SEC)),
            "older TSval 1 s later"
        );
        assert_eq!(s.paws_check(a, b, 800, 102 * SEC, w), None, "rate-limited");
        assert_eq!(s.paws_check(a, b, 2000, 103 * SEC, w), None, "newer passes");
        assert_eq!(
            s.paws_check([3; 16], b, 10, 103 * SEC, w),
            None,
            "other source"
        );
        assert_eq!(
            s.paws_check(a, b, 900, 170 * SEC, w),
            None,
            "remembered too long ago"
        );
    }
}
