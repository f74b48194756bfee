//! Flow keys: both directions of a connection map to one key; [`Side`] says which end sent.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// An IP endpoint in a compact, hashable form (IPv4 stored v4-mapped).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Endpoint {
    pub ip: [u8; 16],
    pub port: u16,
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        let ip = match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        Self { ip, port: a.port() }
    }
}

impl Endpoint {
    /// The address as the operator knows it (IPv4 unmapped).
    pub fn ip_addr(&self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.ip);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
    /// `ip:port` / `[v6]:port`.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip_addr(), self.port)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.socket_addr().fmt(f)
    }
}

/// Which end of a [`FlowKey`] an endpoint is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Lo,
    Hi,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Lo => Side::Hi,
            Side::Hi => Side::Lo,
        }
    }
}

/// A connection's key: its two endpoints in canonical (sorted) order.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FlowKey {
    pub lo: Endpoint,
    pub hi: Endpoint,
}

impl std::hash::Hash for FlowKey {
    /// Five word writes instead of the derived byte-slice writes (length prefixes, 36 calls):
    /// this hash runs for every packet.
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let w = |b: &[u8; 16], i: usize| {
            u64::from_ne_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        // Every input bit reaches the seeded hasher: combining words before it would let an
        // attacker build equal inputs, which no seed can separate.
        h.write_u64(w(&self.lo.ip, 0));
        h.write_u64(w(&self.lo.ip, 8));
        h.write_u64(w(&self.hi.ip, 0));
        h.write_u64(w(&self.hi.ip, 8));
        h.write_u32((u32::from(self.lo.port) << 16) | u32::from(self.hi.port));
    }
}

impl FlowKey {
    /// The key of a packet from `src` to `dst`, and which side `src` is.
    pub fn of(src: Endpoint, dst: Endpoint) -> (FlowKey, Side) {
        // The derived order (address bytes, then port) as two integer compares: this runs
        // for every packet.
        let rank = |e: &Endpoint| (u128::from_be_bytes(e.ip), e.port);
        if rank(&src) <= rank(&dst) {
            (FlowKey { lo: src, hi: dst }, Side::Lo)
        } else {
            (FlowKey { lo: dst, hi: src }, Side::Hi)
        }
    }
    /// The endpoint on `side`.
    pub fn get(&self, side: Side) -> Endpoint {
        match side {
            Side::Lo => self.lo,
            Side::Hi => self.hi,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_share_a_key_and_know_their_side() {
        let a = Endpoint::from("192.0.2.1:40000".parse::<SocketAddr>().unwrap());
        let b = Endpoint::from("192.0.2.2:80".parse::<SocketAddr>().unwrap());
        let (k1, s1) = FlowKey::of(a, b);
        let (k2, s2) = FlowKey::of(b, a);
        assert_eq!(k1, k2);
        assert_eq!(s1, s2.peer());
        assert_eq!(k1.get(s1), a);
        // The canonical order is the derived one, whatever the bytes.
        for (x, y) in [
            ("[2001:db8::1]:80", "[2001:db8::1]:81"),
            ("[ff00::]:1", "[::ff]:2"),
            ("10.0.0.2:1", "10.0.0.1:2"),
            ("10.0.0.1:9", "10.0.0.1:9"),
        ] {
            let x = Endpoint::from(x.parse::<SocketAddr>().unwrap());
            let y = Endpoint::from(y.parse::<SocketAddr>().unwrap());
            assert_eq!(FlowKey::of(x, y).0.lo, x.min(y));
        }
        assert_eq!(a.to_string(), "192.0.2.1:40000");
    }
}
