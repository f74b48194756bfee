//! Per-server-endpoint counters and handshake latency histograms (HDR, µs).

use std::collections::HashMap;

use hdrhistogram::Histogram;

use super::{Kind, Phase, RstClass};
use crate::flow::Endpoint;

/// Latency measures of docs/anomalies.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// Last SYN → SYN-ACK: the server's response time, network included.
    SynToSynack = 0,
    /// SYN-ACK → completing ACK: the client-side round trip.
    SynackToAck = 1,
    /// First SYN → completing ACK, retransmissions included.
    ConnectTotal = 2,
}

impl Latency {
    pub const ALL: [Latency; 3] = [Self::SynToSynack, Self::SynackToAck, Self::ConnectTotal];
    pub fn as_str(self) -> &'static str {
        ["syn_to_synack", "synack_to_ack", "connect_total"][self as usize]
    }
}

/// Upper bounds (ns) of the fixed latency buckets the metrics export (Prometheus `le`, in
/// seconds there): 10 µs (a LAN or loopback handshake) to 30 s, so SYN retransmissions (1 s, 3 s, 7 s) land in their own.
pub const LATENCY_BOUNDS_NS: [u64; 20] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// One latency measure in fixed buckets: small and `Copy`, so workers can ship it to the
/// output thread every second (the HDR histograms stay with the engine for the summary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buckets {
    /// Non-cumulative counts; the last one is above every bound (+Inf).
    pub counts: [u64; LATENCY_BOUNDS_NS.len() + 1],
    pub sum_ns: u64,
}

impl Buckets {
    pub fn record(&mut self, ns: u64) {
        let i = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
        self.counts[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The bound (ns) at or below which a fraction `q` of the values lie (`u64::MAX` for the
    /// +Inf bucket, None when empty): what a bucketed histogram can honestly say.
    pub fn quantile_bound(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_NS.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

/// The exported part of [`EndpointStats`]: counters and bucketed latencies, no HDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointCounters {
    /// SYN packets: first transmissions and retransmissions.
    pub syns: u64,
    /// Of `syns`, retransmissions (same ISN).
    pub syn_retransmits: u64,
    /// Connections whose client started retransmitting its SYN / whose SYN stream then ended
    /// (answered or given up): the difference is the connections in SYN retry right now.
    pub syn_retry_started: u64,
    pub syn_retry_ended: u64,
    /// SYNs with a TCP Fast Open option, and TFO handshakes whose SYN data the server acked.
    pub tfo_syns: u64,
    pub tfo_data_accepted: u64,
    pub established: u64,
    pub closed_normally: u64,
    pub anomalies: [u64; Kind::ALL.len()],
    /// RSTs by [class][phase][from: 0 client, 1 server].
    pub rsts: [[[u64; 2]; 5]; 5],
    pub latency: [Buckets; 3],
    /// What the host's kernel said about this endpoint's connections (inline mode), by
    /// [`super::kernel::slot_name`] slot and host (0 client, 1 server).
    pub kernel: [[u64; 2]; super::kernel::SLOTS],
}

impl Default for EndpointCounters {
    fn default() -> Self {
        Self {
            syns: 0,
            syn_retransmits: 0,
            syn_retry_started: 0,
            syn_retry_ended: 0,
            tfo_syns: 0,
            tfo_data_accepted: 0,
            established: 0,
            closed_normally: 0,
            anomalies: [0; Kind::ALL.len()],
            rsts: [[[0; 2]; 5]; 5],
            latency: [Buckets::default(); 3],
            kernel: [[0; 2]; super::kernel::SLOTS],
        }
    }
}

impl EndpointCounters {
    /// Adds another worker's (or endpoint's) counters.
    pub fn add(&mut self, o: &EndpointCounters) {
        self.combine(o, u64::wrapping_add);
    }

    /// What was counted since `earlier` (a previous snapshot of the same counters).
    pub fn since(&self, earlier: &EndpointCounters) -> EndpointCounters {
        let mut d = *self;
        d.combine(earlier, u64::saturating_sub);
        d
    }

    /// Applies `f(self, o)` to every counter and latency bucket.
    fn combine(&mut self, o: &EndpointCounters, f: fn(u64, u64) -> u64) {
        let mine = [
            &mut self.syns,
            &mut self.syn_retransmits,
            &mut self.syn_retry_started,
            &mut self.syn_retry_ended,
            &mut self.tfo_syns,
            &mut self.tfo_data_accepted,
            &mut self.established,
            &mut self.closed_normally,
        ]
        .into_iter()
        .chain(self.anomalies.iter_mut())
        .chain(self.rsts.iter_mut().flatten().flatten())
        .chain(
            self.latency
                .iter_mut()
                .flat_map(|b| b.counts.iter_mut().chain([&mut b.sum_ns])),
        )
        .chain(self.kernel.iter_mut().flatten());
        let theirs = [
            o.syns,
            o.syn_retransmits,
            o.syn_retry_started,
            o.syn_retry_ended,
            o.tfo_syns,
            o.tfo_data_accepted,
            o.established,
            o.closed_normally,
        ]
        .into_iter()
        .chain(o.anomalies)
        .chain(o.rsts.iter().flatten().flatten().copied())
        .chain(
            o.latency
                .iter()
                .flat_map(|b| b.counts.iter().copied().chain([b.sum_ns])),
        )
        .chain(o.kernel.iter().flatten().copied());
        for (a, b) in mine.zip(theirs) {
            *a = f(*a, b);
        }
    }
}

/// Counters and histograms of one server endpoint: the exported [`EndpointCounters`] (reached
/// through `Deref`) plus the HDR histograms of the summary.
#[derive(Clone, Debug)]
pub struct EndpointStats {
    pub counters: EndpointCounters,
    pub latency: [Histogram<u64>; 3],
    /// Capture time of the last completed handshake (for accept-queue overflow, case b).
    pub last_handshake_ns: u64,
}

impl std::ops::Deref for EndpointStats {
    type Target = EndpointCounters;
    fn deref(&self) -> &EndpointCounters {
        &self.counters
    }
}

impl std::ops::DerefMut for EndpointStats {
    fn deref_mut(&mut self) -> &mut EndpointCounters {
        &mut self.counters
    }
}

impl EndpointStats {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 600_000_000, 2).unwrap_or_else(|_| unreachable!());
        Self {
            counters: EndpointCounters::default(),
            latency: [h(), h(), h()],
            last_handshake_ns: 0,
        }
    }

    /// Records a latency in ns (HDR in µs, clamped to its range; and the exported buckets).
    pub fn record(&mut self, which: Latency, ns: u64) {
        let us = (ns / 1000).clamp(1, 600_000_000);
        let _ = self.latency[which as usize].record(us);
        self.counters.latency[which as usize].record(ns);
    }

    /// Counts a RST.
    pub fn count_rst(&mut self, class: RstClass, phase: Phase, from_client: bool) {
        self.rsts[class as usize][phase as usize][usize::from(!from_client)] += 1;
    }

    /// Adds another worker's counters and histograms for the same endpoint.
    pub fn merge(&mut self, o: &EndpointStats) {
        self.counters.add(&o.counters);
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            // Same bounds on both sides: adding cannot fail.
            let _ = a.add(b);
        }
        self.last_handshake_ns = self.last_handshake_ns.max(o.last_handshake_ns);
    }

    /// Total RSTs of `class`.
    pub fn rsts_of(&self, class: RstClass) -> u64 {
        self.rsts[class as usize].iter().flatten().sum()
    }
}

/// Stats per server endpoint, bounded: beyond `max` endpoints, new ones fold into `other`.
///
/// Each endpoint has a small id ([`Endpoints::id`]) that a connection keeps, so the rules
/// reach its counters by index instead of hashing the endpoint for every packet.
#[derive(Debug)]
pub struct Endpoints {
    ids: HashMap<Endpoint, u32, foldhash::fast::RandomState>,
    stats: Vec<(Endpoint, EndpointStats)>,
    other: EndpointStats,
    max: usize,
}

impl Endpoints {
    /// The id of the `other` bucket.
    pub const OTHER: u32 = u32::MAX;

    pub fn new(max: usize) -> Self {
        Self {
            ids: HashMap::default(),
            stats: Vec::new(),
            other: EndpointStats::new(),
            max,
        }
    }

    /// The id of `ep`'s stats ([`Endpoints::OTHER`] when the table is full), created on first
    /// use. An endpoint keeps its id for good.
    pub fn id(&mut self, ep: Endpoint) -> u32 {
        if let Some(&id) = self.ids.get(&ep) {
            return id;
        }
        if self.stats.len() >= self.max || self.stats.len() >= Self::OTHER as usize {
            return Self::OTHER;
        }
        let id = self.stats.len() as u32;
        self.stats.push((ep, EndpointStats::new()));
        self.ids.insert(ep, id);
        id
    }

    /// The stats with id `id`.
    pub fn at(&mut self, id: u32) -> &mut EndpointStats {
        match self.stats.get_mut(id as usize) {
            Some((_, st)) => st,
            None => &mut self.other,
        }
    }

    /// The stats of `ep` (or of `other` when the table is full).
    pub fn get(&mut self, ep: Endpoint) -> &mut EndpointStats {
        let id = self.id(ep);
        self.at(id)
    }

    /// Last completed handshake on `ep`, if known (never creates an entry).
    pub fn last_handshake(&self, ep: &Endpoint) -> Option<u64> {
        self.ids
            .get(ep)
            .map(|&id| self.stats[id as usize].1.last_handshake_ns)
            .filter(|&t| t != 0)
    }

    /// Adds another worker's endpoints (the same `max` bound applies).
    pub fn merge(&mut self, o: &Endpoints) {
        for (ep, st) in &o.stats {
            self.get(*ep).merge(st);
        }
        self.other.merge(&o.other);
    }

    /// Every endpoint's exported counters (None: the `other` bucket), in no order.
    pub fn export(&self) -> Vec<(Option<Endpoint>, EndpointCounters)> {
        self.stats
            .iter()
            .map(|(k, s)| (Some(*k), s.counters))
            .chain(std::iter::once((None, self.other.counters)))
            .collect()
    }

    /// Endpoints sorted by address, then the `other` bucket if it saw anything.
    pub fn iter(&self) -> impl Iterator<Item = (Option<&Endpoint>, &EndpointStats)> {
        let mut v: Vec<_> = self.stats.iter().map(|(k, s)| (k, s)).collect();
        v.sort_by_key(|(k, _)| **k);
        let other = (self.other.syns + self.other.rsts.iter().flatten().flatten().sum::<u64>() > 0)
            .then_some((None, &self.other));
        v.into_iter().map(|(k, s)| (Some(k), s)).chain(other)
    }
}
