//! Emitters: build valid IPv4/IPv6 + TCP packets (checksums included) for tests, the lab's
//! raw-packet clients and the benchmark generator.

use std::net::{IpAddr, Ipv6Addr};

use super::TcpFlags;

/// Everything needed to emit one IP+TCP packet.
#[derive(Debug, Clone)]
pub struct SegmentBuilder {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamps: Option<(u32, u32)>,
    pub ttl: u8,
    /// IPv4 identification (unused for IPv6).
    pub ip_id: u16,
    /// TCP Fast Open option (kind 34) with this cookie; empty = a cookie request.
    pub fastopen: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl SegmentBuilder {
    /// An IPv4 segment with no flags, window 64240, TTL 64.
    pub fn v4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self::new(IpAddr::from(src), sport, IpAddr::from(dst), dport)
    }
    /// An IPv6 segment with no flags, window 64240, hop limit 64.
    pub fn v6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Self {
        Self::new(IpAddr::V6(src), sport, IpAddr::V6(dst), dport)
    }
    /// A segment between two addresses of the same family.
    pub fn new(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            seq: 0,
            ack: 0,
            flags: TcpFlags::default(),
            window: 64240,
            mss: None,
            wscale: None,
            sack_permitted: false,
            timestamps: None,
            ttl: 64,
            ip_id: 0,
            fastopen: None,
            payload: Vec::new(),
        }
    }
    pub fn flags(mut self, f: TcpFlags) -> Self {
        self.flags = f;
        self
    }
    pub fn seq(mut self, v: u32) -> Self {
        self.seq = v;
        self
    }
    pub fn ack(mut self, v: u32) -> Self {
        self.ack = v;
        self
    }
    pub fn window(mut self, v: u16) -> Self {
        self.window = v;
        self
    }
    pub fn mss(mut self, v: u16) -> Self {
        self.mss = Some(v);
        self
    }
    pub fn wscale(mut self, v: u8) -> Self {
        self.wscale = Some(v);
        self
    }
    pub fn sack_permitted(mut self) -> Self {
        self.sack_permitted = true;
        self
    }
    pub fn timestamps(mut self, tsval: u32, tsecr: u32) -> Self {
        self.timestamps = Some((tsval, tsecr));
        self
    }
    pub fn ip_id(mut self, v: u16) -> Self {
        self.ip_id = v;
        self
    }
    /// A TCP Fast Open option carrying `cookie` (empty: a cookie request).
    pub fn fastopen(mut self, cookie: &[u8]) -> Self {
        self.fastopen = Some(cookie.to_vec());
        self
    }
    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    fn options(&self) -> Vec<u8> {
        let mut o = Vec::new();
        if let Some(m) = self.mss {
            o.extend_from_slice(&[2, 4]);
            o.extend_from_slice(&m.to_be_bytes());
        }
        if self.sack_permitted {
            o.extend_from_slice(&[4, 2]);
        }
        if let Some((v, e)) = self.timestamps {
            o.extend_from_slice(&[8, 10]);
            o.extend_from_slice(&v.to_be_bytes());
            o.extend_from_slice(&e.to_be_bytes());
        }
        if let Some(w) = self.wscale {
            o.extend_from_slice(&[1, 3, 3, w]);
        }
        if let Some(c) = &self.fastopen {
            o.extend_from_slice(&[34, 2 + c.len() as u8]);
            o.extend_from_slice(c);
        }
        while o.len() % 4 != 0 {
            o.push(1);
        }
        o
    }

    /// The TCP header, options and payload, with the checksum over the pseudo-header.
    pub fn tcp_bytes(&self) -> Vec<u8> {
        let opts = self.options();
        let hl = 20 + opts.len();
        let mut t = Vec::with_capacity(hl + self.payload.len());
        t.extend_from_slice(&self.sport.to_be_bytes());
        t.extend_from_slice(&self.dport.to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.push(((hl / 4) as u8) << 4);
        t.push(self.flags.0);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(&opts);
        t.extend_from_slice(&self.payload);
        let mut pseudo = Vec::with_capacity(40);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&[0, 6]);
                pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
            }
            (s, d) => {
                pseudo.extend_from_slice(&v6_octets(s));
                pseudo.extend_from_slice(&v6_octets(d));
                pseudo.extend_from_slice(&(t.len() as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 6]);
            }
        }
        let c = checksum(&[&pseudo, &t]);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        t
    }
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(hi) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The whole IP packet (IPv4 or IPv6 per the builder's addresses).
pub fn ip_tcp(b: &SegmentBuilder) -> Vec<u8> {
    let tcp = b.tcp_bytes();
    let mut p = Vec::with_capacity(40 + tcp.len());
    match (b.src, b.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + tcp.len()) as u16;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&b.ip_id.to_be_bytes());
            p.extend_from_slice(&[0x40, 0, b.ttl, 6, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let c = checksum(&[&p]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (s, d) => {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            p.extend_from_slice(&[6, b.ttl]);
            p.extend_from_slice(&v6_octets(s));
            p.extend_from_slice(&v6_octets(d));
        }
    }
    p.extend_from_slice(&tcp);
    p
}

/// TPID of an 802.1Q (customer) VLAN tag.
pub const TPID_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad (service, QinQ outer) VLAN tag.
pub const TPID_8021AD: u16 = 0x88a8;

/// The IP packet inside an Ethernet II frame from 02:00:00:00:00:01 to 02:00:00:00:00:02 (the
/// lab's client and server), behind VLAN `tags` (TPID, VLAN id), outermost first.
pub fn ethernet(b: &SegmentBuilder, tags: &[(u16, u16)]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (tpid, id) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    }
    let et: u16 = if b.src.is_ipv4() { 0x0800 } else { 0x86dd };
    f.extend_from_slice(&et.to_be_bytes());
    f.extend_from_slice(&ip_tcp(b));
    f
}

/// An Ethernet II frame (02:00:00:00:00:01 → 02:00:00:00:00:02) carrying `payload` as
/// `ethertype`.
pub fn eth_frame(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 or IPv6 header (by the addresses' family; checksummed, TTL 64, DF) around
/// `payload`, protocol/next header `proto`.
pub fn ip_wrap(src: IpAddr, dst: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + payload.len()) as u16;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let c = checksum(&[&p]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (s, d) => {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&v6_octets(s));
            p.extend_from_slice(&v6_octets(d));
        }
    }
    p.extend_from_slice(payload);
    p
}

/// IP-in-IP (LVS TUN mode, Katran): `inner` (an IP packet) behind an outer IP header,
/// protocol 4 for an inner IPv4 packet, 41 for IPv6.
pub fn ipip(outer_src: IpAddr, outer_dst: IpAddr, inner: &[u8]) -> Vec<u8> {
    let proto = if inner.first().is_some_and(|b| b >> 4 == 6) {
        41
    } else {
        4
    };
    ip_wrap(outer_src, outer_dst, proto, inner)
}

/// The optional GRE fields (RFC 2890).
#[derive(Debug, Clone, Copy, Default)]
pub struct GreFields {
    pub checksum: bool,
    pub key: Option<u32>,
    pub seq: Option<u32>,
}

/// GRE (version 0) inside IP, carrying `inner` as `proto` (an ethertype: 0x0800, 0x86dd,
/// 0x6558 for an Ethernet frame, 0x8847 for MPLS).
pub fn gre(
    outer_src: IpAddr,
    outer_dst: IpAddr,
    f: GreFields,
    proto: u16,
    inner: &[u8],
) -> Vec<u8> {
    let mut flags = 0u16;
    if f.checksum {
        flags |= 0x8000;
    }
    if f.key.is_some() {
        flags |= 0x2000;
    }
    if f.seq.is_some() {
        flags |= 0x1000;
    }
    let mut g = Vec::with_capacity(16 + inner.len());
    g.extend_from_slice(&flags.to_be_bytes());
    g.extend_from_slice(&proto.to_be_bytes());
    if f.checksum {
        g.extend_from_slice(&[0; 4]);
    }
    if let Some(k) = f.key {
        g.extend_from_slice(&k.to_be_bytes());
    }
    if let Some(s) = f.seq {
        g.extend_from_slice(&s.to_be_bytes());
    }
    g.extend_from_slice(inner);
    if f.checksum {
        let c = checksum(&[&g]);
        g[4..6].copy_from_slice(&c.to_be_bytes());
    }
    ip_wrap(outer_src, outer_dst, 47, &g)
}

/// A UDP datagram inside IP (checksum 0 over IPv4, computed over IPv6 where it is mandatory).
pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut u = Vec::with_capacity(usize::from(len));
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    if src.is_ipv6() {
        let mut pseudo = Vec::with_capacity(40);
        pseudo.extend_from_slice(&v6_octets(src));
        pseudo.extend_from_slice(&v6_octets(dst));
        pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        let c = match checksum(&[&pseudo, &u]) {
            0 => 0xffff,
            c => c,
        };
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    ip_wrap(src, dst, 17, &u)
}

/// VXLAN (UDP 4789, I flag, `vni`) carrying the Ethernet frame `inner`.
pub fn vxlan(outer_src: IpAddr, outer_dst: IpAddr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08, 0, 0, 0];
    v.extend_from_slice(&(vni << 8).to_be_bytes());
    v.extend_from_slice(inner);
    udp(outer_src, 49152, outer_dst, 4789, &v)
}

/// Geneve (UDP 6081, `vni`) with `options` (a multiple of 4 bytes) carrying `inner` as `proto`
/// (an ethertype; 0x6558 for an Ethernet frame).
pub fn geneve(
    outer_src: IpAddr,
    outer_dst: IpAddr,
    vni: u32,
    options: &[u8],
    proto: u16,
    inner: &[u8],
) -> Vec<u8> {
    assert!(
        options.len().is_multiple_of(4) && options.len() <= 252,
        "Geneve options"
    );
    let mut g = vec![(options.len() / 4) as u8, 0];
    g.extend_from_slice(&proto.to_be_bytes());
    g.extend_from_slice(&(vni << 8).to_be_bytes());
    g.extend_from_slice(options);
    g.extend_from_slice(inner);
    udp(outer_src, 49152, outer_dst, 6081, &g)
}

/// An MPLS label stack (outermost first, bottom of stack on the last, TTL 64) before `inner`.
pub fn mpls(labels: &[u32], inner: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(labels.len() * 4 + inner.len());
    for (i, l) in labels.iter().enumerate() {
        let bos = u32::from(i + 1 == labels.len());
        m.extend_from_slice(&((l & 0xfffff) << 12 | bos << 8 | 64).to_be_bytes());
    }
    m.extend_from_slice(inner);
    m
}

/// A BSD loopback frame (link types NULL and LOOP): the address family `af` as 4 bytes, in
/// little-endian (`le`) or network order, then `ip`.
pub fn null(af: u32, le: bool, ip: &[u8]) -> Vec<u8> {
    let mut f = if le {
        af.to_le_bytes().to_vec()
    } else {
        af.to_be_bytes().to_vec()
    };
    f.extend_from_slice(ip);
    f
}

/// A PPP frame, with the HDLC address and control bytes 0xff 0x03 when `hdlc`.
pub fn ppp(hdlc: bool, proto: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = if hdlc { vec![0xff, 0x03] } else { Vec::new() };
    f.extend_from_slice(&proto.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A Linux NFLOG record for `ip` (`family` 2 or 10): a packet-header TLV, a prefix TLV
/// ("syn\0\0", padded) and the payload TLV, lengths and types in little-endian (`le`) or
/// big-endian host order.
pub fn nflog(family: u8, le: bool, ip: &[u8]) -> Vec<u8> {
    let mut f = vec![family, 0, 0, 1];
    let mut tlv = |ty: u16, v: &[u8]| {
        let len = (4 + v.len()) as u16;
        let (l, t) = if le {
            (len.to_le_bytes(), ty.to_le_bytes())
        } else {
            (len.to_be_bytes(), ty.to_be_bytes())
        };
        f.extend_from_slice(&l);
        f.extend_from_slice(&t);
        f.extend_from_slice(v);
        while f.len() % 4 != 0 {
            f.push(0);
        }
    };
    let hw: u16 = if family == 10 { 0x86dd } else { 0x0800 };
    let mut hdr = hw.to_be_bytes().to_vec();
    hdr.extend_from_slice(&[1, 0]);
    tlv(1, &hdr);
    tlv(10, b"syn\0\0");
    tlv(9, ip);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 §3 example bytes sum to 0xddf2 (one's complement 0x220d).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), 0x220d);
    }

    #[test]
    fn emitted_ipv4_header_checksum_verifies() {
        let p = ip_tcp(&SegmentBuilder::v4([192, 0, 2, 1], 1, [192, 0, 2, 2], 2));
        assert_eq!(checksum(&[&p[..20]]), 0);
    }
}
