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

use std::net::{IpAddr, SocketAddr};

pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use tcp::{TcpFlags, TcpOptions, TcpPacket};

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
}

/// Parses an IP packet (version taken from its first nibble) carrying TCP.
pub fn parse_ip_tcp(buf: &[u8]) -> Result<Segment, WireError> {
    let first = *buf.first().ok_or(WireError::Truncated)?;
    let (src, dst, l4, l4_len, ip_id) = match first >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(buf)?;
            if ip.protocol() != ipv4::PROTO_TCP {
                return Err(WireError::NotTcp(ip.protocol()));
            }
            if ip.frag_offset() != 0 {
                return Err(WireError::Fragment);
            }
            let hl = ip.header_len();
            (
                IpAddr::V4(ip.src()),
                IpAddr::V4(ip.dst()),
                &buf[hl..],
                usize::from(ip.total_len()) - hl,
                ip.id(),
            )
        }
        6 => {
            let ip = Ipv6Packet::new_checked(buf)?;
            let (proto, off) = ip.upper_layer()?;
            if proto != ipv4::PROTO_TCP {
                return Err(WireError::NotTcp(proto));
            }
            let l4_len = (40 + usize::from(ip.payload_len()))
                .checked_sub(off)
                .ok_or(WireError::BadIpTotalLen)?;
            (
                IpAddr::V6(ip.src()),
                IpAddr::V6(ip.dst()),
                &buf[off..],
                l4_len,
                0,
            )
        }
        v => return Err(WireError::BadVersion(v)),
    };
    let tcp = TcpPacket::new_checked(l4)?;
    let hl = tcp.header_len();
    let payload_len = l4_len.checked_sub(hl).ok_or(WireError::BadIpTotalLen)?;
    Ok(Segment {
        src: SocketAddr::new(src, tcp.src_port()),
        dst: SocketAddr::new(dst, tcp.dst_port()),
        flags: tcp.flags(),
        seq: tcp.seq(),
        ack: tcp.ack(),
        window: tcp.window(),
        options: tcp.options()?,
        payload_len: payload_len as u32,
        ip_id,
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
}
