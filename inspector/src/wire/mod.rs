//! Zero-copy, checked views over packet bytes, and emitters that build them.
//!
//! Each view is constructed with `new_checked`, which validates every length the accessors
//! rely on; after that the accessors cannot panic. Malformed input yields a [`WireError`] the
//! engine counts by reason. Captured records are usually cut after the TCP header (snap
//! length), so views never require the payload to be present: payload lengths come from the
//! IP length fields.

pub mod emit;
pub mod ipv4;
pub mod ipv6;
pub mod link;
pub mod tcp;
pub mod tunnel;

use std::net::{IpAddr, SocketAddr};

pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use tcp::{TcpFlags, TcpOptions, TcpPacket};
pub use tunnel::{Tunnel, TunnelKind};

/// Why bytes could not be parsed. The names are the stable `reason` labels of the parse-error
/// counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    #[error("truncated: the buffer ends inside a header")]
    Truncated,
    #[error("bad IP version {0}")]
    BadVersion(u8),
    #[error("IPv4 header length below 20 bytes or beyond the total length")]
    BadIpHeaderLen,
    #[error("IP total/payload length shorter than the headers it must hold")]
    BadIpTotalLen,
    #[error("not TCP (IP protocol {0})")]
    NotTcp(u8),
    #[error("non-first IP fragment: no TCP header")]
    Fragment,
    #[error("IPv6 extension header chain too long")]
    ExtChain,
    #[error("TCP data offset below 5 words")]
    BadTcpHeaderLen,
    #[error("TCP option with an impossible length")]
    BadTcpOption,
    #[error("not IP (ethertype {0:#06x})")]
    NotIp(u16),
    #[error("not IP (loopback address family {0})")]
    NotIpFamily(u32),
    #[error("not IP (PPP protocol {0:#06x})")]
    NotIpPpp(u16),
    #[error("NFLOG header or TLV malformed")]
    BadNflog,
    #[error("NFLOG record without a packet payload")]
    NflogNoPayload,
    #[error("MPLS label stack without bottom of stack within 8 labels")]
    MplsStack,
    #[error("MPLS payload is not IP (first nibble {0})")]
    MplsNotIp(u8),
    #[error("GRE header with a version or reserved bits other than 0")]
    BadGre,
    #[error("VXLAN header without the I (valid VNI) flag")]
    BadVxlan,
    #[error("Geneve header of an unknown version")]
    BadGeneve,
    #[error("more than 3 nested encapsulations")]
    TunnelDepth,
}

impl WireError {
    /// Stable label for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadVersion(_) => "bad_ip_version",
            Self::BadIpHeaderLen => "bad_ip_header_len",
            Self::BadIpTotalLen => "bad_ip_total_len",
            Self::NotTcp(_) => "not_tcp",
            Self::Fragment => "fragment",
            Self::ExtChain => "ipv6_ext_chain",
            Self::BadTcpHeaderLen => "bad_tcp_header_len",
            Self::BadTcpOption => "bad_tcp_option",
            Self::NotIp(_) => "not_ip",
            Self::NotIpFamily(_) => "not_ip_family",
            Self::NotIpPpp(_) => "not_ip_ppp",
            Self::BadNflog => "bad_nflog",
            Self::NflogNoPayload => "nflog_no_payload",
            Self::MplsStack => "mpls_label_stack",
            Self::MplsNotIp(_) => "mpls_not_ip",
            Self::BadGre => "bad_gre",
            Self::BadVxlan => "bad_vxlan",
            Self::BadGeneve => "bad_geneve",
            Self::TunnelDepth => "tunnel_depth",
        }
    }
}

/// The parts of an IP+TCP packet the engine works with, decoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub options: TcpOptions,
    /// TCP payload bytes according to the IP length field (may exceed what was captured).
    pub payload_len: u32,
    /// IPv4 identification (0 for IPv6): tells a segment captured twice from a
    /// retransmission, which carries a new one.
    pub ip_id: u16,
    /// The encapsulation the segment arrived in, if any (addresses above are the inner ones).
    pub tunnel: Option<Tunnel>,
}

/// Parses an IP packet (version taken from its first nibble) carrying TCP, directly or through
/// tunnels (IP-in-IP, GRE, VXLAN, Geneve, MPLS): the segment is the innermost one. `buf` may
/// be cut by a snap length: lengths come from the IP headers.
pub fn parse_ip_tcp(buf: &[u8]) -> Result<Segment, WireError> {
    parse_ip_tcp_in(buf, false, None)
}

/// As [`parse_ip_tcp`] for a buffer that holds the entire packet (no snap length cut it): an
/// IPv4 total length or IPv6 payload length of 0, as TSO/GRO and BIG TCP captures show, then
/// means the captured length.
pub fn parse_ip_tcp_whole(buf: &[u8]) -> Result<Segment, WireError> {
    parse_ip_tcp_in(buf, true, None)
}

/// The IP header's facts the segment and the tunnel walk need.
struct IpLayer<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// Non-first fragment: no upper-layer header.
    fragment: bool,
    ip_id: u16,
    /// The upper layer's captured bytes, cut at the IP length (no link padding).
    l4: &'a [u8],
    /// Everything captured after the IP header (TCP headers are checked against the IP
    /// length separately, as a length error rather than truncation).
    rest: &'a [u8],
    /// The upper layer's length per the IP header.
    l4_len: usize,
    /// All of the upper layer was captured.
    whole: bool,
}

fn ip_layer(buf: &[u8], whole: bool) -> Result<IpLayer<'_>, WireError> {
    let first = *buf.first().ok_or(WireError::Truncated)?;
    let (src, dst, proto, fragment, ip_id, off, end) = match first >> 4 {
        4 => {
            let ip = Ipv4Packet::checked(buf, whole)?;
            (
                IpAddr::V4(ip.src()),
                IpAddr::V4(ip.dst()),
                ip.protocol(),
                ip.frag_offset() != 0,
                ip.id(),
                ip.header_len(),
                ip.packet_len(),
            )
        }
        6 => {
            let ip = Ipv6Packet::checked(buf, whole)?;
            // A non-first fragment is Fragment whatever it carries.
            let (proto, off) = ip.upper_layer()?;
            let end = 40 + ip.payload_size();
            if off > end {
                return Err(WireError::BadIpTotalLen);
            }
            (
                IpAddr::V6(ip.src()),
                IpAddr::V6(ip.dst()),
                proto,
                false,
                0,
                off,
                end,
            )
        }
        v => return Err(WireError::BadVersion(v)),
    };
    let rest = buf.get(off..).ok_or(WireError::Truncated)?;
    let l4 = &rest[..(end - off).min(rest.len())];
    Ok(IpLayer {
        src,
        dst,
        proto,
        fragment,
        ip_id,
        l4,
        rest,
        l4_len: end - off,
        whole: buf.len() >= end,
    })
}

/// The tunnel walk: each round decodes one IP header; TCP ends it, an encapsulation leads to
/// the next IP header (at most [`tunnel::MAX_DEPTH`] layers).
pub(crate) fn parse_ip_tcp_in(
    mut buf: &[u8],
    mut whole: bool,
    mut tunnel: Option<Tunnel>,
) -> Result<Segment, WireError> {
    loop {
        let ip = ip_layer(buf, whole)?;
        let (kind, off, inner) = match ip.proto {
            ipv4::PROTO_TCP => {
                if ip.fragment {
                    return Err(WireError::Fragment);
                }
                return tcp_segment(&ip, tunnel);
            }
            ipv4::PROTO_IPIP | ipv4::PROTO_IPV6 | ipv4::PROTO_GRE | ipv4::PROTO_UDP
                if ip.fragment =>
            {
                return Err(WireError::Fragment);
            }
            ipv4::PROTO_IPIP | ipv4::PROTO_IPV6 => (
                TunnelKind::IpIp,
                0,
                tunnel::Inner {
                    off: 0,
                    mpls: false,
                },
            ),
            ipv4::PROTO_GRE => {
                let (len, inner) = tunnel::gre(ip.l4)?;
                (TunnelKind::Gre, len, inner)
            }
            ipv4::PROTO_UDP => match tunnel::udp(ip.l4)? {
                Some(t) => t,
                None => return Err(WireError::NotTcp(ip.proto)),
            },
            p => return Err(WireError::NotTcp(p)),
        };
        Tunnel::push(&mut tunnel, kind, Some((ip.src, ip.dst)))?;
        if inner.mpls {
            Tunnel::push(&mut tunnel, TunnelKind::Mpls, None)?;
        }
        let next = ip.l4.get(off + inner.off..).ok_or(WireError::Truncated)?;
        // IP-in-IP names the inner version: 4 carries IPv4, 41 IPv6.
        let want = match ip.proto {
            ipv4::PROTO_IPIP => Some(4),
            ipv4::PROTO_IPV6 => Some(6),
            _ => None,
        };
        if let (Some(w), Some(&b)) = (want, next.first())
            && b >> 4 != w
        {
            return Err(WireError::BadVersion(b >> 4));
        }
        buf = next;
        whole = ip.whole;
    }
}

fn tcp_segment(ip: &IpLayer<'_>, tunnel: Option<Tunnel>) -> Result<Segment, WireError> {
    let tcp = TcpPacket::new_checked(ip.rest)?;
    let hl = tcp.header_len();
    let payload_len = ip.l4_len.checked_sub(hl).ok_or(WireError::BadIpTotalLen)?;
    Ok(Segment {
        src: SocketAddr::new(ip.src, tcp.src_port()),
        dst: SocketAddr::new(ip.dst, tcp.dst_port()),
        flags: tcp.flags(),
        seq: tcp.seq(),
        ack: tcp.ack(),
        window: tcp.window(),
        options: tcp.options_lenient(),
        payload_len: payload_len as u32,
        ip_id: ip.ip_id,
        tunnel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use emit::{SegmentBuilder, ip_tcp};

    #[test]
    fn ipv4_segment_round_trips_through_emitter() {
        let b = SegmentBuilder::v4([192, 0, 2, 1], 40000, [192, 0, 2, 2], 80)
            .flags(TcpFlags::SYN)
            .seq(1000)
            .mss(1460)
            .wscale(7)
            .sack_permitted()
            .timestamps(77, 0);
        let bytes = ip_tcp(&b);
        let s = parse_ip_tcp(&bytes).unwrap();
        assert_eq!(s.src, "192.0.2.1:40000".parse().unwrap());
        assert_eq!(s.dst, "192.0.2.2:80".parse().unwrap());
        assert_eq!(s.flags, TcpFlags::SYN);
        assert_eq!(s.seq, 1000);
        assert_eq!(s.options.mss, Some(1460));
        assert_eq!(s.options.wscale, Some(7));
        assert!(s.options.sack_permitted);
        assert_eq!(s.options.timestamps, Some((77, 0)));
        assert_eq!(s.payload_len, 0);
    }

    #[test]
    fn ipv6_segment_with_payload_round_trips() {
        let b = SegmentBuilder::v6(
            "2001:db8::1".parse().unwrap(),
            1,
            "2001:db8::2".parse().unwrap(),
            2,
        )
        .flags(TcpFlags::ACK | TcpFlags::PSH)
        .ack(5)
        .payload(b"hello");
        let s = parse_ip_tcp(&ip_tcp(&b)).unwrap();
        assert_eq!(s.src, "[2001:db8::1]:1".parse().unwrap());
        assert_eq!(s.payload_len, 5);
        assert_eq!(s.ack, 5);
    }

    #[test]
    fn snapped_packet_keeps_payload_len_from_ip_header() {
        let b = SegmentBuilder::v4([192, 0, 2, 1], 1, [192, 0, 2, 2], 2)
            .flags(TcpFlags::ACK)
            .payload(&[0u8; 100]);
        let bytes = ip_tcp(&b);
        let s = parse_ip_tcp(&bytes[..40]).unwrap();
        assert_eq!(s.payload_len, 100);
    }

    #[test]
    fn every_prefix_of_a_packet_is_an_error_or_a_segment_never_a_panic() {
        let b = SegmentBuilder::v4([192, 0, 2, 1], 1, [192, 0, 2, 2], 2)
            .flags(TcpFlags::SYN)
            .timestamps(1, 2)
            .mss(1400);
        let bytes = ip_tcp(&b);
        for n in 0..bytes.len() {
            assert_eq!(
                parse_ip_tcp(&bytes[..n]),
                Err(WireError::Truncated),
                "prefix {n}"
            );
        }
        assert!(parse_ip_tcp(&bytes).is_ok());
    }

    #[test]
    fn not_tcp_and_bad_version_are_reported() {
        let mut bytes = ip_tcp(&SegmentBuilder::v4([192, 0, 2, 1], 1, [192, 0, 2, 2], 2));
        bytes[9] = 17;
        assert_eq!(parse_ip_tcp(&bytes), Err(WireError::NotTcp(17)));
        bytes[0] = 0x55;
        assert_eq!(parse_ip_tcp(&bytes), Err(WireError::BadVersion(5)));
    }

    fn inner_syn() -> SegmentBuilder {
        SegmentBuilder::v4([10, 0, 0, 1], 40000, [10, 0, 0, 2], 9001)
            .flags(TcpFlags::SYN)
            .seq(7)
    }

    fn ip(a: &str) -> IpAddr {
        a.parse().unwrap()
    }

    /// Every encapsulation synscope follows, around `inner_syn`, with its tunnel.
    fn tunnelled() -> Vec<(&'static str, Vec<u8>, Tunnel)> {
        use emit::{GreFields, eth_frame, geneve, gre, ipip, mpls, vxlan};
        let inner = ip_tcp(&inner_syn());
        let inner6 = ip_tcp(&SegmentBuilder::v6(
            "2001:db8::1".parse().unwrap(),
            40000,
            "2001:db8::2".parse().unwrap(),
            9001,
        ));
        let (a, b) = (ip("192.0.2.10"), ip("192.0.2.20"));
        let (a6, b6) = (ip("2001:db8:f::1"), ip("2001:db8:f::2"));
        let t = |kind, outer: (IpAddr, IpAddr), depth| Tunnel {
            kind,
            outer: Some(outer),
            depth,
        };
        let eth = eth_frame(0x0800, &inner);
        vec![
            ("ipip", ipip(a, b, &inner), t(TunnelKind::IpIp, (a, b), 1)),
            ("6in4", ipip(a, b, &inner6), t(TunnelKind::IpIp, (a, b), 1)),
            (
                "4in6",
                ipip(a6, b6, &inner),
                t(TunnelKind::IpIp, (a6, b6), 1),
            ),
            (
                "6in6",
                ipip(a6, b6, &inner6),
                t(TunnelKind::IpIp, (a6, b6), 1),
            ),
            (
                "gre",
                gre(a, b, GreFields::default(), 0x0800, &inner),
                t(TunnelKind::Gre, (a, b), 1),
            ),
            (
                "gre csum key seq",
                gre(
                    a6,
                    b6,
                    GreFields {
                        checksum: true,
                        key: Some(42),
                        seq: Some(9),
                    },
                    0x86dd,
                    &inner6,
                ),
                t(TunnelKind::Gre, (a6, b6), 1),
            ),
            (
                "gretap",
                gre(a, b, GreFields::default(), 0x6558, &eth),
                t(TunnelKind::Gre, (a, b), 1),
            ),
            (
                "gre mpls",
                gre(a, b, GreFields::default(), 0x8847, &mpls(&[16, 17], &inner)),
                t(TunnelKind::Gre, (a, b), 2),
            ),
            (
                "vxlan",
                vxlan(a, b, 5001, &eth),
                t(TunnelKind::Vxlan, (a, b), 1),
            ),
            (
                "vxlan6",
                vxlan(a6, b6, 5001, &eth),
                t(TunnelKind::Vxlan, (a6, b6), 1),
            ),
            (
                "geneve opts",
                geneve(a, b, 7, &[0x01, 0x02, 0x80, 0x01, 1, 2, 3, 4], 0x6558, &eth),
                t(TunnelKind::Geneve, (a, b), 1),
            ),
            (
                "geneve ip",
                geneve(a, b, 7, &[], 0x0800, &inner),
                t(TunnelKind::Geneve, (a, b), 1),
            ),
            (
                "vxlan in ipip",
                ipip(a6, b6, &vxlan(a, b, 1, &eth)),
                t(TunnelKind::IpIp, (a6, b6), 2),
            ),
        ]
    }

    #[test]
    fn every_tunnel_decodes_to_the_inner_segment() {
        for (name, bytes, tunnel) in tunnelled() {
            let s = parse_ip_tcp(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.tunnel, Some(tunnel), "{name}");
            assert_eq!(s.src.port(), 40000, "{name}");
            assert_eq!(s.dst.port(), 9001, "{name}");
            assert_eq!(s.payload_len, 0, "{name}");
            if s.src.is_ipv4() {
                assert_eq!(s.src, "10.0.0.1:40000".parse().unwrap(), "{name}");
                assert_eq!(s.flags, TcpFlags::SYN, "{name}");
                assert_eq!(s.seq, 7, "{name}");
            }
        }
        let plain = parse_ip_tcp(&ip_tcp(&inner_syn())).unwrap();
        assert_eq!(plain.tunnel, None);
    }

    #[test]
    fn tunnel_prefixes_and_byte_flips_are_errors_never_panics() {
        for (name, bytes, _) in tunnelled() {
            for n in 0..bytes.len() {
                assert!(parse_ip_tcp(&bytes[..n]).is_err(), "{name} prefix {n}");
            }
            for i in 0..bytes.len() {
                for v in [0x00, 0xff, bytes[i] ^ 0x80] {
                    let mut m = bytes.clone();
                    m[i] = v;
                    let _ = parse_ip_tcp(&m);
                    let _ = parse_ip_tcp_whole(&m);
                }
            }
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let (a, b) = (ip("192.0.2.10"), ip("192.0.2.20"));
        let mut p = ip_tcp(&inner_syn());
        for _ in 0..3 {
            p = emit::ipip(a, b, &p);
        }
        assert_eq!(parse_ip_tcp(&p).unwrap().tunnel.unwrap().depth, 3);
        p = emit::ipip(a, b, &p);
        assert_eq!(parse_ip_tcp(&p), Err(WireError::TunnelDepth));
        assert_eq!(WireError::TunnelDepth.reason(), "tunnel_depth");
    }

    #[test]
    fn malformed_tunnels_are_counted_by_reason() {
        let (a, b) = (ip("192.0.2.10"), ip("192.0.2.20"));
        let inner = ip_tcp(&inner_syn());
        // Protocol 4 announcing IPv4, carrying IPv6.
        let inner6 = ip_tcp(&SegmentBuilder::v6(
            "2001:db8::1".parse().unwrap(),
            1,
            "2001:db8::2".parse().unwrap(),
            2,
        ));
        let mut wrong = emit::ipip(a, b, &inner6);
        wrong[9] = 4;
        assert_eq!(parse_ip_tcp(&wrong), Err(WireError::BadVersion(6)));
        // UDP to another port is just not TCP.
        assert_eq!(
            parse_ip_tcp(&emit::udp(a, 1, b, 53, &inner)),
            Err(WireError::NotTcp(17))
        );
        // VXLAN without its I flag.
        let mut v = emit::vxlan(a, b, 1, &emit::eth_frame(0x0800, &inner));
        v[28] = 0;
        assert_eq!(parse_ip_tcp(&v).map_err(|e| e.reason()), Err("bad_vxlan"));
        // GRE version 1.
        let mut g = emit::gre(a, b, emit::GreFields::default(), 0x0800, &inner);
        g[21] = 1;
        assert_eq!(parse_ip_tcp(&g).map_err(|e| e.reason()), Err("bad_gre"));
        // A non-first fragment of a GRE packet has no GRE header.
        let mut f = emit::gre(a, b, emit::GreFields::default(), 0x0800, &inner);
        f[7] = 1;
        assert_eq!(parse_ip_tcp(&f), Err(WireError::Fragment));
        // ARP inside a VXLAN frame.
        let arp = emit::vxlan(a, b, 1, &emit::eth_frame(0x0806, &[0; 28]));
        assert_eq!(parse_ip_tcp(&arp), Err(WireError::NotIp(0x0806)));
    }

    #[test]
    fn tso_packets_with_zero_lengths_use_the_captured_bytes_when_whole() {
        let b = SegmentBuilder::v4([192, 0, 2, 1], 1, [192, 0, 2, 2], 2)
            .flags(TcpFlags::ACK)
            .payload(&[0u8; 3000]);
        let mut p = ip_tcp(&b);
        // GRO/TSO: longer than any MTU, stated length honoured.
        assert_eq!(parse_ip_tcp_whole(&p).unwrap().payload_len, 3000);
        p[2] = 0;
        p[3] = 0;
        assert_eq!(parse_ip_tcp_whole(&p).unwrap().payload_len, 3000);
        assert_eq!(parse_ip_tcp(&p), Err(WireError::BadIpTotalLen));
        let b6 = SegmentBuilder::v6(
            "2001:db8::1".parse().unwrap(),
            1,
            "2001:db8::2".parse().unwrap(),
            2,
        )
        .flags(TcpFlags::ACK)
        .payload(&[0u8; 70000 - 20]);
        let mut p6 = ip_tcp(&b6);
        p6[4] = 0;
        p6[5] = 0;
        assert_eq!(parse_ip_tcp_whole(&p6).unwrap().payload_len, 70000 - 20);
        assert_eq!(parse_ip_tcp(&p6), Err(WireError::BadIpTotalLen));
        // Inside a tunnel whose outer packet was captured whole.
        let outer = emit::ipip(ip("192.0.2.10"), ip("192.0.2.20"), &p);
        assert_eq!(parse_ip_tcp_whole(&outer).unwrap().payload_len, 3000);
    }
}
