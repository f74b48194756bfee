//! Aggregate anomalies of docs/anomalies.md: `syn_flood` (SYNs to one server endpoint above
//! `flood_rate`/s for ≥ 1 s **of which most never complete a handshake**: a busy server that
//! completes what it is sent is no flood, however many SYNs it takes) and `reset_storm` (RSTs
//! from one host above `rst_rate`/s for ≥ 1 s), one event at the start and one at the end of
//! each episode.
//!
//! Each engine counts per capture-time second into a [`Tally`]; the [`Aggregator`] adds up the
//! tallies of every worker for a second (workers shard flows, so a flood spreads over them)
//! once all of them have moved past it, and decides. Tallies are bounded (`MAX_KEYS` per
//! kind per second, the rest counted), so memory does not grow with attack traffic.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{Event, Kind, RstClass, shared::Shared};
use crate::{evidence, flow::Endpoint};

const SEC: u64 = 1_000_000_000;
/// Keys tracked per kind per second per engine.
const MAX_KEYS: usize = 4096;
/// Bits of the distinct-source sketch (linear counting): accurate to tens of thousands.
const SKETCH_BITS: usize = 1 << 14;

/// Distinct-count sketch (linear counting, Whang et al. 1990): one bit per hashed source.
#[derive(Clone, Debug)]
pub struct Sketch(Box<[u64; SKETCH_BITS / 64]>);

impl Default for Sketch {
    fn default() -> Self {
        Self(Box::new([0; SKETCH_BITS / 64]))
    }
}

impl Sketch {
    pub fn insert(&mut self, hash: u64) {
        // splitmix64's finalizer: whatever the input hash, the bit index is uniform.
        let mut z = hash;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let b = (z % SKETCH_BITS as u64) as usize;
        self.0[b / 64] |= 1 << (b % 64);
    }
    pub fn union(&mut self, o: &Sketch) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a |= b;
        }
    }
    /// Estimated number of distinct sources (saturates near 10 × SKETCH_BITS).
    pub fn estimate(&self) -> u64 {
        let m = SKETCH_BITS as f64;
        let zeros = m - self.0.iter().map(|w| w.count_ones() as f64).sum::<f64>();
        if zeros < 1.0 {
            return (m * m.ln()) as u64;
        }
        (m * (m / zeros).ln()).round() as u64
    }
}

/// New connections to one server endpoint within a second.
#[derive(Clone, Debug, Default)]
pub struct SynCount {
    pub syns: u64,
    /// Of those, answered by a SYN-ACK (first SYN-ACK of a connection).
    pub synacks: u64,
    /// Handshakes to the endpoint completed within the second (the client's ACK).
    pub completed: u64,
    pub sources: Sketch,
}

impl SynCount {
    /// SYN packets of the second that no completed handshake accounts for.
    pub fn incomplete(&self) -> u64 {
        self.syns.saturating_sub(self.completed)
    }

    /// A flood second: at least `rate` SYNs that no completed handshake accounts for
    /// (unanswered, half-open, refused, spoofed), whatever legitimate load runs beside them.
    /// Completions lag their SYNs by a round trip, so a steady busy load balances within the
    /// second.
    pub fn flooding(&self, rate: u64) -> bool {
        self.incomplete() >= rate
    }
}

/// RSTs sent by one host within a second.
#[derive(Clone, Debug, Default)]
pub struct RstCount {
    pub rsts: u64,
    pub by_class: [u64; 5],
}

/// One engine's counts for one capture-time second.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub second: u64,
    pub syn: HashMap<Endpoint, SynCount>,
    pub rst: HashMap<[u8; 16], RstCount>,
    /// Hits not counted because the second already tracked `MAX_KEYS` keys.
    pub overflow: u64,
}

impl Tally {
    pub fn is_empty(&self) -> bool {
        self.syn.is_empty() && self.rst.is_empty() && self.overflow == 0
    }
    /// A new connection (first SYN) from `src_hash` to `server`.
    pub fn syn(&mut self, server: Endpoint, src_hash: u64) {
        if self.syn.len() >= MAX_KEYS && !self.syn.contains_key(&server) {
            self.overflow += 1;
            return;
        }
        let c = self.syn.entry(server).or_default();
        c.syns += 1;
        c.sources.insert(src_hash);
    }
    /// `n` SYNs to `server` the capture skipped (flood sampling: their sources are unknown).
    pub fn syns_unseen(&mut self, server: Endpoint, n: u64) {
        if self.syn.len() >= MAX_KEYS && !self.syn.contains_key(&server) {
            self.overflow += n;
            return;
        }
        self.syn.entry(server).or_default().syns += n;
    }
    /// `n` SYN-ACKs from `server` the capture skipped (flood sampling).
    pub fn synacks_unseen(&mut self, server: Endpoint, n: u64) {
        if let Some(c) = self.syn.get_mut(&server) {
            c.synacks += n;
        }
    }
    /// The first SYN-ACK of a connection to `server`.
    pub fn synack(&mut self, server: Endpoint) {
        if let Some(c) = self.syn.get_mut(&server) {
            c.synacks += 1;
        }
    }
    /// `n` handshakes to `server` completed (more than one when the connection's SYN record
    /// stood for SYNs the kernel's flood sampling skipped).
    pub fn completed(&mut self, server: Endpoint, n: u64) {
        if let Some(c) = self.syn.get_mut(&server) {
            c.completed += n;
        }
    }
    /// A RST sent by `host`.
    pub fn rst(&mut self, host: [u8; 16], class: RstClass) {
        if self.rst.len() >= MAX_KEYS && !self.rst.contains_key(&host) {
            self.overflow += 1;
            return;
        }
        let c = self.rst.entry(host).or_default();
        c.rsts += 1;
        c.by_class[class as usize] += 1;
    }
    fn merge(&mut self, o: Tally) {
        for (k, v) in o.syn {
            let c = self.syn.entry(k).or_default();
            c.syns += v.syns;
            c.synacks += v.synacks;
            c.completed += v.completed;
            c.sources.union(&v.sources);
        }
        for (k, v) in o.rst {
            let c = self.rst.entry(k).or_default();
            c.rsts += v.rsts;
            for (a, b) in c.by_class.iter_mut().zip(v.by_class) {
                *a += b;
            }
        }
        self.overflow += o.overflow;
    }
}

/// An episode in progress.
#[derive(Debug, Default)]
struct Episode {
    start_sec: u64,
    last_sec: u64,
    peak: u64,
    total: u64,
    answered: u64,
    completed: u64,
    sources: Sketch,
    by_class: [u64; 5],
}

impl Episode {
    fn new(start_sec: u64) -> Self {
        Self {
            start_sec,
            ..Default::default()
        }
    }

    /// Second `sec` was above the rate with `n` hits; true when it starts the episode.
    fn second_above(&mut self, sec: u64, n: u64) -> bool {
        let starting = self.total == 0;
        self.last_sec = sec;
        self.peak = self.peak.max(n);
        self.total += n;
        starting
    }
}

/// Thresholds (per second), and how long after an episode's last second decided so far new
/// connections (RSTs) still fold into it: the second being decided. A connection that began
/// later is not the episode's, and its verdict is reported.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub flood_rate: u64,
    pub rst_rate: u64,
    pub fold_for: u64,
    /// Quiet seconds before an episode's end is told: the verdicts of its connections settle
    /// a timeout after their SYNs, so the end event can count what was folded; a flood that
    /// resumes within them is the same episode.
    pub quiet_secs: u64,
}

impl Rates {
    /// The rates of an engine configuration.
    pub fn of(cfg: &super::Config) -> Self {
        Self {
            flood_rate: cfg.flood_rate,
            rst_rate: cfg.rst_rate,
            fold_for: SEC,
            quiet_secs: (cfg.syn_timeout.max(cfg.synack_timeout) + 2 * SEC).div_ceil(SEC),
        }
    }
}

/// Adds up the tallies of `sources` engines and reports episodes.
pub struct Aggregator {
    rates: Rates,
    shared: std::sync::Arc<Shared>,
    /// Per source: every second below this is complete.
    watermarks: Vec<u64>,
    pending: BTreeMap<u64, Tally>,
    floods: HashMap<Endpoint, Episode>,
    storms: HashMap<[u8; 16], Episode>,
    /// Hits the tallies could not count (too many keys in a second).
    pub overflow: u64,
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    ((whole.saturating_sub(part)) as f64 / whole as f64 * 1000.0).round() / 1000.0
}

fn ip_string(ip: [u8; 16]) -> String {
    let v6 = std::net::Ipv6Addr::from(ip);
    v6.to_ipv4_mapped()
        .map_or_else(|| v6.to_string(), |v4| v4.to_string())
}

impl Aggregator {
    pub fn new(rates: Rates, sources: usize, shared: std::sync::Arc<Shared>) -> Self {
        Self {
            rates,
            shared,
            watermarks: vec![0; sources.max(1)],
            pending: BTreeMap::new(),
            floods: HashMap::new(),
            storms: HashMap::new(),
            overflow: 0,
        }
    }

    /// Takes source `src`'s finished tallies and its watermark (every second below it is
    /// complete), and reports what the seconds now complete for every source settle.
    pub fn feed(&mut self, src: usize, tallies: Vec<Tally>, watermark: u64, out: &mut Vec<Event>) {
        for t in tallies {
            self.pending.entry(t.second).or_default().merge(t);
        }
        if let Some(w) = self.watermarks.get_mut(src) {
            *w = (*w).max(watermark);
        }
        let done = self.watermarks.iter().copied().min().unwrap_or(0);
        while let Some((&sec, _)) = self.pending.first_key_value() {
            if sec >= done {
                break;
            }
            let t = self.pending.pop_first().map(|(_, t)| t).unwrap_or_default();
            self.second(sec, t, out);
        }
        // Quiet seconds end episodes too.
        if done > 0 {
            self.close_quiet(done - 1, out);
        }
    }

    /// End of input: every open episode ends (the input went quiet).
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        let last = self.pending.keys().next_back().copied();
        while let Some((sec, t)) = self.pending.pop_first() {
            self.second(sec, t, out);
        }
        let end = last
            .into_iter()
            .chain(self.floods.values().map(|e| e.last_sec))
            .chain(self.storms.values().map(|e| e.last_sec))
            .max();
        if let Some(end) = end {
            self.close_quiet(end.saturating_add(1 + self.rates.quiet_secs), out);
        }
    }

    fn second(&mut self, sec: u64, t: Tally, out: &mut Vec<Event>) {
        self.overflow += t.overflow;
        let ts = (sec + 1) * SEC;
        for (ep, c) in t.syn {
            if !c.flooding(self.rates.flood_rate) {
                continue;
            }
            let ep_state = self.floods.entry(ep).or_insert_with(|| Episode::new(sec));
            let starting = ep_state.second_above(sec, c.syns);
            ep_state.answered += c.synacks;
            ep_state.completed += c.completed;
            ep_state.sources.union(&c.sources);
            // Per-connection verdicts of connections begun during the episode fold into it.
            let from = ep_state.start_sec * SEC;
            self.shared
                .set_flooding(&ep, from, ts + self.rates.fold_for, starting);
            if starting {
                out.push(Event {
                    ts_ns: ts,
                    kind: Kind::SynFlood,
                    client: None,
                    server: Some(ep),
                    ifindex: 0,
                    reverse_seen: c.synacks > 0,
                    one_way: None,
                    evidence: evidence! {
                        "phase" => "start",
                        "rate" => c.syns,
                        "completed" => c.completed,
                        "distinct_sources" => c.sources.estimate(),
                        "share_unanswered" => share(c.synacks, c.syns),
                        "share_incomplete" => share(c.completed, c.syns),
                    },
                });
            }
        }
        for (host, c) in t.rst {
            if c.rsts < self.rates.rst_rate {
                continue;
            }
            let e = self.storms.entry(host).or_insert_with(|| Episode::new(sec));
            let starting = e.second_above(sec, c.rsts);
            for (a, b) in e.by_class.iter_mut().zip(c.by_class) {
                *a += b;
            }
            let from = e.start_sec * SEC;
            self.shared
                .set_storming(&host, from, ts + self.rates.fold_for, starting);
            if starting {
                out.push(Event {
                    ts_ns: ts,
                    kind: Kind::ResetStorm,
                    client: None,
                    server: None,
                    ifindex: 0,
                    reverse_seen: false,
                    one_way: None,
                    evidence: evidence! {
                        "phase" => "start",
                        "host" => ip_string(host),
                        "rate" => c.rsts,
                        "dominant_rst_class" => dominant(&c.by_class),
                    },
                });
            }
        }
        self.close_quiet(sec, out);
    }

    /// Ends every episode that was not above its rate in second `sec` or later, nor in the
    /// `quiet_secs` before it.
    fn close_quiet(&mut self, sec: u64, out: &mut Vec<Event>) {
        let sec = sec.saturating_sub(self.rates.quiet_secs);
        for (ep, e) in take_ended(&mut self.floods, sec) {
            let folded = folded_map(self.shared.flood_folded(&ep));
            out.push(Event {
                ts_ns: (e.last_sec + 1) * SEC,
                kind: Kind::SynFlood,
                client: None,
                server: Some(ep),
                ifindex: 0,
                reverse_seen: e.answered > 0,
                one_way: None,
                evidence: evidence! {
                    "phase" => "end",
                    "duration_s" => (e.last_sec + 1).saturating_sub(e.start_sec),
                    "peak_rate" => e.peak,
                    "syns" => e.total,
                    "completed" => e.completed,
                    "distinct_sources" => e.sources.estimate(),
                    "share_unanswered" => share(e.answered, e.total),
                    "share_incomplete" => share(e.completed, e.total),
                    "folded" => folded,
                },
            });
        }
        for (host, e) in take_ended(&mut self.storms, sec) {
            let folded = folded_map(self.shared.storm_folded(&host));
            out.push(Event {
                ts_ns: (e.last_sec + 1) * SEC,
                kind: Kind::ResetStorm,
                client: None,
                server: None,
                ifindex: 0,
                reverse_seen: false,
                one_way: None,
                evidence: evidence! {
                    "phase" => "end",
                    "host" => ip_string(host),
                    "duration_s" => (e.last_sec + 1).saturating_sub(e.start_sec),
                    "peak_rate" => e.peak,
                    "rsts" => e.total,
                    "dominant_rst_class" => dominant(&e.by_class),
                    "folded" => folded,
                },
            });
        }
    }
}

/// Removes and returns the episodes whose last second above the rate is before `sec`.
fn take_ended<K: Copy + Eq + std::hash::Hash>(
    episodes: &mut HashMap<K, Episode>,
    sec: u64,
) -> Vec<(K, Episode)> {
    let keys: Vec<K> = episodes
        .iter()
        .filter(|(_, e)| e.last_sec < sec)
        .map(|(k, _)| *k)
        .collect();
    keys.into_iter()
        .filter_map(|k| episodes.remove(&k).map(|e| (k, e)))
        .collect()
}

/// The per-connection verdicts folded into an episode so far, by kind (verdicts of its
/// connections decided after the end event still count in the summary and the metrics).
fn folded_map(counts: [(Kind, u64); super::shared::FOLDABLE.len()]) -> Value {
    Value::Object(
        counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.as_str().to_string(), Value::from(*n)))
            .collect(),
    )
}

fn dominant(by_class: &[u64; 5]) -> Value {
    RstClass::ALL
        .iter()
        .zip(by_class)
        .filter(|(_, n)| **n > 0)
        .max_by_key(|(_, n)| **n)
        .map_or(Value::Null, |(c, _)| Value::from(c.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ep(port: u16) -> Endpoint {
        Endpoint { ip: [9; 16], port }
    }

    fn tally(sec: u64, syns: u64, sources: u64) -> Tally {
        let mut t = Tally {
            second: sec,
            ..Default::default()
        };
        for i in 0..syns {
            t.syn(ep(80), i % sources);
        }
        t
    }

    #[test]
    fn sketch_counts_distinct_sources_within_a_few_percent() {
        let mut s = Sketch::default();
        for i in 0..20_000u64 {
            s.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        let n = s.estimate();
        assert!((19_000..21_000).contains(&n), "{n}");
    }

    #[test]
    fn a_flood_spread_over_two_workers_is_one_episode_with_start_and_end() {
        let rates = Rates {
            flood_rate: 100,
            rst_rate: 100,
            fold_for: SEC,
            quiet_secs: 0,
        };
        let mut a = Aggregator::new(rates, 2, Arc::new(Shared::new()));
        let mut out = Vec::new();
        // Seconds 10 and 11: 60 + 60 SYNs per second (each worker below the rate alone).
        a.feed(
            0,
            vec![tally(10, 60, 1000), tally(11, 60, 1000)],
            12,
            &mut out,
        );
        assert!(out.is_empty(), "worker 1 has not reported yet");
        a.feed(1, vec![tally(10, 60, 1000)], 11, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, Kind::SynFlood);
        assert_eq!(out[0].ev("phase"), "start");
        assert_eq!(out[0].ev("rate"), 120);
        assert_eq!(out[0].ts_ns, 11 * SEC);
        assert_eq!(out[0].ev("share_unanswered"), 1.0);
        a.feed(1, vec![tally(11, 60, 1000), tally(12, 5, 5)], 13, &mut out);
        a.feed(0, vec![], 13, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1].ev("phase"), "end");
        assert_eq!(out[1].ev("duration_s"), 2);
        assert_eq!(out[1].ev("peak_rate"), 120);
        assert_eq!(out[1].ev("syns"), 240);
        let d = out[1].ev("distinct_sources").as_u64().unwrap();
        assert!((55..=65).contains(&d), "60 distinct source hashes: {d}");
    }

    #[test]
    fn below_the_rate_or_shorter_than_a_second_is_no_flood() {
        let rates = Rates {
            flood_rate: 100,
            rst_rate: 100,
            fold_for: SEC,
            quiet_secs: 0,
        };
        let mut a = Aggregator::new(rates, 1, Arc::new(Shared::new()));
        let mut out = Vec::new();
        a.feed(
            0,
            vec![tally(1, 99, 10), tally(2, 50, 10), tally(3, 50, 10)],
            4,
            &mut out,
        );
        a.finish(&mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn reset_storm_names_the_host_and_the_dominant_class() {
        let rates = Rates {
            flood_rate: 100,
            rst_rate: 10,
            fold_for: SEC,
            quiet_secs: 0,
        };
        let mut a = Aggregator::new(rates, 1, Arc::new(Shared::new()));
        let mut t = Tally {
            second: 5,
            ..Default::default()
        };
        let host = std::net::Ipv4Addr::new(192, 0, 2, 2)
            .to_ipv6_mapped()
            .octets();
        for i in 0..12 {
            t.rst(
                host,
                if i < 9 {
                    RstClass::Refused
                } else {
                    RstClass::Active
                },
            );
        }
        let mut out = Vec::new();
        a.feed(0, vec![t], 6, &mut out);
        a.finish(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].ev("host"), "192.0.2.2");
        assert_eq!(out[0].ev("dominant_rst_class"), "refused");
        assert_eq!(out[1].ev("phase"), "end");
        assert_eq!(out[1].ev("rsts"), 12);
    }
}
