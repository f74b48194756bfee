//! Health probers: who probes which server endpoint, and how often their probes reorder and
//! leak (LVS/keepalived health checks connect, then RST; a RST that overtakes the ACK with a bad
//! timestamp leaves the real server an ESTABLISHED socket nobody closes).
//!
//! A **probe** is a connection whose client ends it right after the handshake without data:
//! a RST or FIN within `probe_window` of its completing ACK, or a RST while the server is still
//! in SYN_RECV (the RST overtook the ACK). Each worker counts probes, RST-before-ACK
//! reorderings and leaks per (client address, server endpoint); the counts of all workers add
//! up (a prober's connections hash to every worker). A source is a **prober** of an endpoint
//! once it made [`RECOGNIZED_AFTER`] probes to it, or from the start when it lies in a
//! `--probe-source` network.

use std::{collections::HashMap, net::IpAddr};

use crate::flow::Endpoint;

/// Probes from one source to one endpoint that make the source a prober of that endpoint.
pub const RECOGNIZED_AFTER: u64 = 3;

/// (client address, server endpoint) pairs one worker keeps at most; beyond, new pairs are
/// counted in `untracked` only (a spoofed flood of probe-shaped connections cannot grow it).
pub const MAX_PAIRS: usize = 4096;

/// What one source did to one server endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Probe-shaped connections.
    pub probes: u64,
    /// Of those, RSTs that overtook the handshake's ACK (`probe_rst_before_ack`).
    pub rst_before_ack: u64,
    /// Of those, leaked connections (`probe_connection_leak`).
    pub leaks: u64,
    /// The source lies in a `--probe-source` network.
    pub configured: bool,
}

impl ProbeCounters {
    pub fn add(&mut self, o: &ProbeCounters) {
        self.probes += o.probes;
        self.rst_before_ack += o.rst_before_ack;
        self.leaks += o.leaks;
        self.configured |= o.configured;
    }
}

/// A (client address, server endpoint) pair.
pub type Pair = ([u8; 16], Endpoint);

/// The address of a pair's client.
pub fn source_addr(ip: &[u8; 16]) -> IpAddr {
    Endpoint { ip: *ip, port: 0 }.ip_addr()
}

/// One worker's probe counts.
#[derive(Debug, Default)]
pub struct Probers {
    pairs: HashMap<Pair, ProbeCounters, foldhash::fast::RandomState>,
    /// Probe events of pairs beyond [`MAX_PAIRS`].
    pub untracked: u64,
}

impl Probers {
    /// The counters of `pair`, if there is room for it.
    pub fn get(&mut self, pair: Pair) -> Option<&mut ProbeCounters> {
        if self.pairs.len() >= MAX_PAIRS && !self.pairs.contains_key(&pair) {
            self.untracked += 1;
            return None;
        }
        Some(self.pairs.entry(pair).or_default())
    }

    /// Every pair's counters, in no order.
    pub fn export(&self) -> Vec<(Pair, ProbeCounters)> {
        self.pairs.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// Whether `ip` lies in one of the `--probe-source` networks.
pub fn configured(ip: IpAddr, sources: &[ipnet::IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    sources.iter().any(|n| n.contains(&ip))
}

/// The probers among `pairs` (all workers' counts added up), most probes first.
pub fn probers<'a>(
    pairs: impl IntoIterator<Item = &'a (Pair, ProbeCounters)>,
) -> Vec<(Pair, ProbeCounters)> {
    let mut sum: HashMap<Pair, ProbeCounters> = HashMap::new();
    for (k, v) in pairs {
        sum.entry(*k).or_default().add(v);
    }
    let mut v: Vec<_> = sum
        .into_iter()
        .filter(|(_, c)| c.configured || c.probes >= RECOGNIZED_AFTER)
        .collect();
    v.sort_by(|a, b| b.1.probes.cmp(&a.1.probes).then(a.0.cmp(&b.0)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(ip: [u8; 4], port: u16) -> Pair {
        let c = Endpoint::from(std::net::SocketAddr::from((ip, 1)));
        (
            c.ip,
            Endpoint::from(std::net::SocketAddr::from(([10, 0, 0, 9], port))),
        )
    }

    #[test]
    fn sources_become_probers_by_count_across_workers_or_by_configuration() {
        let nets: Vec<ipnet::IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
        let n = |ip: [u8; 4], probes| {
            (
                pair(ip, 80),
                ProbeCounters {
                    probes,
                    configured: configured(ip.into(), &nets),
                    ..Default::default()
                },
            )
        };
        let got = probers(&[
            n([192, 0, 2, 1], 2),
            n([192, 0, 2, 1], 1), // another worker: 3 in all
            n([192, 0, 2, 2], 2), // 2: not yet
            n([10, 1, 3, 4], 1),  // configured
        ]);
        let rows: Vec<(String, u64, bool)> = got
            .iter()
            .map(|(k, c)| (source_addr(&k.0).to_string(), c.probes, c.configured))
            .collect();
        assert_eq!(
            rows,
            [
                ("192.0.2.1".to_owned(), 3, false),
                ("10.1.3.4".to_owned(), 1, true)
            ]
        );
    }

    #[test]
    fn pairs_beyond_the_bound_are_only_counted() {
        let mut p = Probers::default();
        for i in 0..MAX_PAIRS as u32 {
            p.get(pair(i.to_be_bytes(), 80)).unwrap().probes += 1;
        }
        assert!(p.get(pair([255, 0, 0, 1], 80)).is_none());
        assert!(
            p.get(pair(0u32.to_be_bytes(), 80)).is_some(),
            "known pairs go on"
        );
        assert_eq!((p.export().len(), p.untracked), (MAX_PAIRS, 1));
    }

    #[test]
    fn v4_mapped_sources_match_v4_networks() {
        let nets: Vec<ipnet::IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
        let (k, _) = pair([10, 1, 0, 7], 80);
        assert!(configured(source_addr(&k), &nets));
        let (k, _) = pair([10, 2, 0, 7], 80);
        assert!(!configured(source_addr(&k), &nets));
    }
}
