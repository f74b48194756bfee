//! Per-server-endpoint counters and handshake latency histograms (HDR, µs).

use std::collections::HashMap;

use hdrhistogram::Histogram;

use super::{Kind, Phase, RstClass};
use crate::flow::Endpoint;

/// Latency measures of ANOMALIES.md.
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

/// Counters and histograms of one server endpoint.
#[derive(Clone, Debug)]
pub struct EndpointStats {
    pub syns: u64,
    pub established: u64,
    pub closed_normally: u64,
    pub anomalies: [u64; Kind::ALL.len()],
    /// RSTs by [class][phase][from: 0 client, 1 server].
    pub rsts: [[[u64; 2]; 4]; 5],
    pub latency: [Histogram<u64>; 3],
    /// Capture time of the last completed handshake (for accept-queue overflow, case b).
    pub last_handshake_ns: u64,
}

impl EndpointStats {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 600_000_000, 2).unwrap_or_else(|_| unreachable!());
        Self {
            syns: 0,
            established: 0,
            closed_normally: 0,
            anomalies: [0; Kind::ALL.len()],
            rsts: [[[0; 2]; 4]; 5],
            latency: [h(), h(), h()],
            last_handshake_ns: 0,
        }
    }

    /// Records a latency in ns (stored in µs, clamped to the histogram's range).
    pub fn record(&mut self, which: Latency, ns: u64) {
        let us = (ns / 1000).clamp(1, 600_000_000);
        let _ = self.latency[which as usize].record(us);
    }

    /// Counts a RST.
    pub fn count_rst(&mut self, class: RstClass, phase: Phase, from_client: bool) {
        self.rsts[class as usize][phase as usize][usize::from(!from_client)] += 1;
    }

    /// Adds another worker's counters and histograms for the same endpoint.
    pub fn merge(&mut self, o: &EndpointStats) {
        self.syns += o.syns;
        self.established += o.established;
        self.closed_normally += o.closed_normally;
        for (a, b) in self.anomalies.iter_mut().zip(o.anomalies) {
            *a += b;
        }
        for (a, b) in self
            .rsts
            .iter_mut()
            .flatten()
            .flatten()
            .zip(o.rsts.iter().flatten().flatten())
        {
            *a += b;
        }
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
#[derive(Debug)]
pub struct Endpoints {
    /// Looked up for most packets: a seeded foldhash, not SipHash (the map is bounded).
    map: HashMap<Endpoint, EndpointStats, foldhash::fast::RandomState>,
    other: EndpointStats,
    max: usize,
}

impl Endpoints {
    pub fn new(max: usize) -> Self {
        Self {
            map: HashMap::default(),
            other: EndpointStats::new(),
            max,
        }
    }

    /// The stats of `ep` (or of `other` when the table is full).
    pub fn get(&mut self, ep: Endpoint) -> &mut EndpointStats {
        if !self.map.contains_key(&ep) && self.map.len() >= self.max {
            return &mut self.other;
        }
        self.map.entry(ep).or_insert_with(EndpointStats::new)
    }

    /// Last completed handshake on `ep`, if known (never creates an entry).
    pub fn last_handshake(&self, ep: &Endpoint) -> Option<u64> {
        self.map
            .get(ep)
            .map(|s| s.last_handshake_ns)
            .filter(|&t| t != 0)
    }

    /// Adds another worker's endpoints (the same `max` bound applies).
    pub fn merge(&mut self, o: &Endpoints) {
        for (ep, st) in &o.map {
            self.get(*ep).merge(st);
        }
        self.other.merge(&o.other);
    }

    /// Endpoints sorted by address, then the `other` bucket if it saw anything.
    pub fn iter(&self) -> impl Iterator<Item = (Option<&Endpoint>, &EndpointStats)> {
        let mut v: Vec<_> = self.map.iter().collect();
        v.sort_by_key(|(k, _)| **k);
        let other = (self.other.syns + self.other.rsts.iter().flatten().flatten().sum::<u64>() > 0)
            .then_some((None, &self.other));
        v.into_iter().map(|(k, s)| (Some(k), s)).chain(other)
    }
}
