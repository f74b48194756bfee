//! Link layers in front of IP: Ethernet II with 802.1Q/802.1ad tags, Linux cooked capture
//! (SLL, SLL2: what `tcpdump -i any` writes), raw IP, BSD loopback (NULL, LOOP), PPP (plain
//! and in HDLC-like framing), Linux NFLOG, and MPLS label stacks behind Ethernet, SLL or PPP.

use super::WireError;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_MPLS_UC: u16 = 0x8847;
pub const ETH_P_MPLS_MC: u16 = 0x8848;
/// Transparent Ethernet bridging: an Ethernet frame follows (GRE, Geneve).
pub const ETH_P_TEB: u16 = 0x6558;
/// VLAN tags followed before giving up.
const MAX_TAGS: u8 = 2;
/// MPLS labels followed before the stack is declared too deep.
pub const MAX_MPLS_LABELS: u8 = 8;

/// PPP protocol numbers (RFC 1661 and the IANA PPP registry).
const PPP_IP: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;
const PPP_MPLS_UC: u16 = 0x0281;
const PPP_MPLS_MC: u16 = 0x0283;

/// NFLOG TLV type of the packet payload (`NFULA_PAYLOAD`).
const NFULA_PAYLOAD: u16 = 9;

/// Link-layer framing of a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    /// Raw IPv4 or IPv6, the version in the first nibble (LINKTYPE_RAW, _IPV4, _IPV6).
    RawIp,
    LinuxSll,
    LinuxSll2,
    /// BSD loopback: a 4-byte address family in the capturing host's byte order.
    Null,
    /// OpenBSD loopback: the same family in network byte order.
    Loop,
    /// PPP: protocol field, optionally behind the 0xff 0x03 HDLC address and control bytes.
    Ppp,
    /// PPP in HDLC-like framing (RFC 1662), or Cisco HDLC (address 0x0f/0x8f, an ethertype).
    PppHdlc,
    /// Linux NFLOG (`iptables -j NFLOG`, `tcpdump -i nflog:N`): TLVs, payload in type 9.
    Nflog,
}

impl LinkType {
    /// What synscope reads, for the error on any other link type.
    pub const SUPPORTED: &'static str = "Ethernet (1), raw IP (101, 228 IPv4, 229 IPv6), \
        Linux SLL (113), Linux SLL2 (276), BSD loopback NULL (0) and LOOP (108), PPP (9), \
        PPP in HDLC framing (50), NFLOG (239)";

    /// The framing of a pcap/pcapng link-type number (tcpdump.org's LINKTYPE_ values), or the
    /// number of one synscope does not read. Only the lower 16 bits name the link type: the
    /// upper ones are libpcap's `LT_LINKTYPE_EXT` (an FCS length and its "present" flag,
    /// `0x3000_0001` is Ethernet), which every libpcap reader masks off with
    /// `LT_LINKTYPE(x) = x & 0xffff`. The FCS bytes it announces trail the IP packet, whose own
    /// length bounds every parse, like Ethernet padding: nothing needs trimming.
    pub fn from_linktype(n: i32) -> Result<Self, u16> {
        let n = (n & 0xffff) as u16;
        Ok(match n {
            0 => Self::Null,
            1 => Self::Ethernet,
            9 => Self::Ppp,
            50 => Self::PppHdlc,
            101 | 228 | 229 => Self::RawIp,
            108 => Self::Loop,
            113 => Self::LinuxSll,
            239 => Self::Nflog,
            276 => Self::LinuxSll2,
            n => return Err(n),
        })
    }
}

/// Where a frame's first IP header starts, and what was crossed to reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct L2 {
    /// Offset of the IP header in the frame.
    pub ip: usize,
    /// 802.1Q/802.1ad tags skipped.
    pub vlan_tags: u8,
    /// MPLS labels skipped (0: no label stack).
    pub mpls_labels: u8,
}

fn be16(b: &[u8], i: usize) -> Result<u16, WireError> {
    let s = b.get(i..i + 2).ok_or(WireError::Truncated)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

/// An MPLS label stack at the start of `buf`: its length in bytes and label count. The bottom
/// of stack must come within [`MAX_MPLS_LABELS`], and IPv4 or IPv6 after it (first nibble).
pub fn mpls_stack(buf: &[u8]) -> Result<(usize, u8), WireError> {
    for n in 1..=MAX_MPLS_LABELS {
        let off = usize::from(n) * 4;
        let label = buf.get(off - 4..off).ok_or(WireError::Truncated)?;
        if label[2] & 1 != 0 {
            let first = *buf.get(off).ok_or(WireError::Truncated)?;
            return match first >> 4 {
                4 | 6 => Ok((off, n)),
                v => Err(WireError::MplsNotIp(v)),
            };
        }
    }
    Err(WireError::MplsStack)
}

/// What follows an ethertype at `off`: IP, or an MPLS label stack and then IP.
fn after_ethertype(proto: u16, frame: &[u8], off: usize, tags: u8) -> Result<L2, WireError> {
    match proto {
        ETH_P_IP | ETH_P_IPV6 => Ok(L2 {
            ip: off,
            vlan_tags: tags,
            mpls_labels: 0,
        }),
        ETH_P_MPLS_UC | ETH_P_MPLS_MC => {
            let (len, labels) = mpls_stack(frame.get(off..).ok_or(WireError::Truncated)?)?;
            Ok(L2 {
                ip: off + len,
                vlan_tags: tags,
                mpls_labels: labels,
            })
        }
        other => Err(WireError::NotIp(other)),
    }
}

/// An Ethernet II frame (up to two VLAN tags, optionally MPLS) down to its IP header.
pub fn ethernet(frame: &[u8]) -> Result<L2, WireError> {
    let mut off = 12;
    let mut tags = 0;
    let mut proto = be16(frame, off)?;
    while proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        if tags == MAX_TAGS {
            return Err(WireError::NotIp(proto));
        }
        tags += 1;
        off += 4;
        proto = be16(frame, off)?;
    }
    after_ethertype(proto, frame, off + 2, tags)
}

/// BSD loopback address family → IP. 2 is AF_INET everywhere; AF_INET6 is 24 (NetBSD,
/// OpenBSD), 28 (FreeBSD, DragonFly) or 30 (macOS).
fn loopback(af: u32) -> Result<L2, WireError> {
    match af {
        2 | 24 | 28 | 30 => Ok(L2 {
            ip: 4,
            ..L2::default()
        }),
        other => Err(WireError::NotIpFamily(other)),
    }
}

fn ppp(frame: &[u8]) -> Result<L2, WireError> {
    let off = if frame.starts_with(&[0xff, 0x03]) {
        2
    } else {
        0
    };
    let first = *frame.get(off).ok_or(WireError::Truncated)?;
    // Protocol-field compression (RFC 1661 §6.5): an odd first byte is a 1-byte protocol.
    let (proto, len) = if first & 1 == 1 {
        (u16::from(first), 1)
    } else {
        (be16(frame, off)?, 2)
    };
    let ip = off + len;
    match proto {
        PPP_IP | PPP_IPV6 => {
            frame.get(ip).ok_or(WireError::Truncated)?;
            Ok(L2 {
                ip,
                ..L2::default()
            })
        }
        PPP_MPLS_UC | PPP_MPLS_MC => after_ethertype(ETH_P_MPLS_UC, frame, ip, 0),
        other => Err(WireError::NotIpPpp(other)),
    }
}

/// NFLOG: a 4-byte header (family, version 0, resource id) and TLVs whose length and type
/// are in the capturing host's byte order, each padded to 4 bytes; the packet is type 9.
fn nflog(frame: &[u8]) -> Result<L2, WireError> {
    let h = frame.get(..4).ok_or(WireError::Truncated)?;
    if h[1] != 0 {
        return Err(WireError::BadNflog);
    }
    // TLV types are small: a big-endian writer's first type reads as ≥ 256 in little endian.
    let le = match frame.get(6..8) {
        Some(t) => u16::from_le_bytes([t[0], t[1]]) & 0x3fff <= 0xff,
        None => return Err(WireError::NflogNoPayload),
    };
    let rd = |i: usize| -> Result<u16, WireError> {
        let s = frame.get(i..i + 2).ok_or(WireError::Truncated)?;
        Ok(if le {
            u16::from_le_bytes([s[0], s[1]])
        } else {
            u16::from_be_bytes([s[0], s[1]])
        })
    };
    let mut off = 4;
    while off < frame.len() {
        let len = usize::from(rd(off)?);
        // Type bits 14 and 15 are netlink's nested/byte-order flags.
        let ty = rd(off + 2)? & 0x3fff;
        if len < 4 {
            return Err(WireError::BadNflog);
        }
        if ty == NFULA_PAYLOAD {
            if len == 4 {
                return Err(WireError::NflogNoPayload);
            }
            frame.get(off + 4).ok_or(WireError::Truncated)?;
            return Ok(L2 {
                ip: off + 4,
                ..L2::default()
            });
        }
        off += (len + 3) & !3;
    }
    Err(WireError::NflogNoPayload)
}

/// Where the IP header starts in `frame`.
pub fn ip_offset(link: LinkType, frame: &[u8]) -> Result<L2, WireError> {
    match link {
        LinkType::RawIp => Ok(L2::default()),
        LinkType::LinuxSll => {
            if frame.len() < 16 {
                return Err(WireError::Truncated);
            }
            after_ethertype(be16(frame, 14)?, frame, 16, 0)
        }
        LinkType::LinuxSll2 => {
            if frame.len() < 20 {
                return Err(WireError::Truncated);
            }
            after_ethertype(be16(frame, 0)?, frame, 20, 0)
        }
        LinkType::Ethernet => ethernet(frame),
        LinkType::Null => {
            let b = frame.get(..4).ok_or(WireError::Truncated)?;
            let le = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            // Host byte order of the writer: a family never exceeds 16 bits.
            loopback(if le > 0xffff { le.swap_bytes() } else { le })
        }
        LinkType::Loop => {
            let b = frame.get(..4).ok_or(WireError::Truncated)?;
            loopback(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        LinkType::Ppp => ppp(frame),
        LinkType::PppHdlc => match frame.first() {
            // Cisco HDLC: address (unicast 0x0f, broadcast 0x8f), control, ethertype.
            Some(0x0f | 0x8f) => after_ethertype(be16(frame, 2)?, frame, 4, 0),
            _ => ppp(frame),
        },
        LinkType::Nflog => nflog(frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::emit::{
        self, SegmentBuilder, TPID_8021AD, TPID_8021Q, ethernet as eth, ip_tcp,
    };

    fn syn4() -> SegmentBuilder {
        SegmentBuilder::v4([192, 0, 2, 1], 1, [192, 0, 2, 2], 2)
    }

    fn l2(ip: usize) -> L2 {
        L2 {
            ip,
            ..L2::default()
        }
    }

    #[test]
    fn qinq_tags_are_skipped() {
        let f = eth(&syn4(), &[(TPID_8021AD, 1), (TPID_8021Q, 2)]);
        assert_eq!(
            ip_offset(LinkType::Ethernet, &f),
            Ok(L2 {
                ip: 22,
                vlan_tags: 2,
                mpls_labels: 0
            })
        );
    }

    #[test]
    fn arp_is_not_ip_and_short_frames_are_truncated() {
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        f[13] = 0x06;
        assert_eq!(
            ip_offset(LinkType::Ethernet, &f),
            Err(WireError::NotIp(0x0806))
        );
        assert_eq!(
            ip_offset(LinkType::Ethernet, &f[..13]),
            Err(WireError::Truncated)
        );
        assert_eq!(
            ip_offset(LinkType::LinuxSll2, &[0x08, 0x00, 0]),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn cooked_headers_locate_ip() {
        let mut sll = vec![0u8; 16];
        sll[14] = 0x86;
        sll[15] = 0xdd;
        assert_eq!(ip_offset(LinkType::LinuxSll, &sll), Ok(l2(16)));
    }

    #[test]
    fn mpls_stacks_are_skipped_to_the_bottom_label() {
        let ip = ip_tcp(&syn4());
        let f = emit::eth_frame(ETH_P_MPLS_UC, &emit::mpls(&[100, 200, 300], &ip));
        assert_eq!(
            ip_offset(LinkType::Ethernet, &f),
            Ok(L2 {
                ip: 14 + 12,
                vlan_tags: 0,
                mpls_labels: 3
            })
        );
        let mut sll = vec![0u8; 16];
        sll[14..16].copy_from_slice(&ETH_P_MPLS_MC.to_be_bytes());
        sll.extend_from_slice(&emit::mpls(&[7], &ip));
        assert_eq!(ip_offset(LinkType::LinuxSll, &sll).unwrap().ip, 20);
        // No bottom of stack within the limit; a pseudowire (control word, nibble 0).
        let deep = emit::mpls(&[1; 9], &ip);
        let mut no_bos = deep.clone();
        no_bos[9 * 4 - 2] &= !1;
        assert_eq!(mpls_stack(&no_bos), Err(WireError::MplsStack));
        assert_eq!(
            mpls_stack(&emit::mpls(&[1], &[0, 0, 0, 0])),
            Err(WireError::MplsNotIp(0))
        );
        assert_eq!(mpls_stack(&deep[..6]), Err(WireError::Truncated));
    }

    #[test]
    fn loopback_families_in_either_byte_order() {
        let ip = ip_tcp(&syn4());
        for af in [2u32, 24, 28, 30] {
            for le in [true, false] {
                let f = emit::null(af, le, &ip);
                assert_eq!(ip_offset(LinkType::Null, &f), Ok(l2(4)), "af {af} le {le}");
            }
            assert_eq!(
                ip_offset(LinkType::Loop, &emit::null(af, false, &ip)),
                Ok(l2(4))
            );
        }
        assert_eq!(
            ip_offset(LinkType::Null, &emit::null(7, true, &ip)),
            Err(WireError::NotIpFamily(7))
        );
        // LOOP is always network order: a little-endian 2 is family 0x02000000.
        assert_eq!(
            ip_offset(LinkType::Loop, &emit::null(2, true, &ip)),
            Err(WireError::NotIpFamily(0x0200_0000))
        );
        assert_eq!(
            ip_offset(LinkType::Null, &[2, 0]),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn ppp_with_and_without_hdlc_bytes_and_compressed_protocol() {
        let ip = ip_tcp(&syn4());
        assert_eq!(
            ip_offset(LinkType::Ppp, &emit::ppp(true, 0x0021, &ip)),
            Ok(l2(4))
        );
        assert_eq!(
            ip_offset(LinkType::Ppp, &emit::ppp(false, 0x0057, &ip)),
            Ok(l2(2))
        );
        assert_eq!(
            ip_offset(LinkType::PppHdlc, &emit::ppp(true, 0x0021, &ip)),
            Ok(l2(4))
        );
        let mut pfc = vec![0x21];
        pfc.extend_from_slice(&ip);
        assert_eq!(ip_offset(LinkType::Ppp, &pfc), Ok(l2(1)));
        assert_eq!(
            ip_offset(LinkType::Ppp, &emit::ppp(true, 0xc021, &[1, 2, 3, 4])),
            Err(WireError::NotIpPpp(0xc021))
        );
        let mut cisco = vec![0x0f, 0x00, 0x08, 0x00];
        cisco.extend_from_slice(&ip);
        assert_eq!(ip_offset(LinkType::PppHdlc, &cisco), Ok(l2(4)));
        let mpls = emit::ppp(true, 0x0281, &emit::mpls(&[5], &ip));
        assert_eq!(ip_offset(LinkType::Ppp, &mpls).unwrap().ip, 8);
    }

    #[test]
    fn nflog_payload_tlv_in_either_byte_order() {
        let ip = ip_tcp(&syn4());
        for le in [true, false] {
            let f = emit::nflog(2, le, &ip);
            // Header, a packet-header TLV (8 bytes), a 5-byte prefix TLV padded to 12.
            assert_eq!(
                ip_offset(LinkType::Nflog, &f),
                Ok(l2(4 + 8 + 12 + 4)),
                "le {le}"
            );
        }
        let f = emit::nflog(2, true, &ip);
        // Without its payload TLV (cut after the prefix TLV); a TLV length below 4.
        assert_eq!(
            ip_offset(LinkType::Nflog, &f[..24]),
            Err(WireError::NflogNoPayload)
        );
        let mut bad = f.clone();
        bad[4] = 2;
        assert_eq!(ip_offset(LinkType::Nflog, &bad), Err(WireError::BadNflog));
        let mut ver = f;
        ver[1] = 1;
        assert_eq!(ip_offset(LinkType::Nflog, &ver), Err(WireError::BadNflog));
    }

    #[test]
    fn every_link_type_number_maps_or_is_refused() {
        for (n, l) in [
            (0, LinkType::Null),
            (1, LinkType::Ethernet),
            (9, LinkType::Ppp),
            (50, LinkType::PppHdlc),
            (101, LinkType::RawIp),
            (108, LinkType::Loop),
            (113, LinkType::LinuxSll),
            (228, LinkType::RawIp),
            (229, LinkType::RawIp),
            (239, LinkType::Nflog),
            (276, LinkType::LinuxSll2),
        ] {
            assert_eq!(LinkType::from_linktype(n), Ok(l), "{n}");
        }
        assert_eq!(LinkType::from_linktype(105), Err(105));
        // libpcap's FCS-length bits above the link type (LT_LINKTYPE masks them off).
        assert_eq!(LinkType::from_linktype(0x3000_0001), Ok(LinkType::Ethernet));
        assert_eq!(LinkType::from_linktype(0x5400_0001), Ok(LinkType::Ethernet));
        assert_eq!(LinkType::from_linktype(0x3000_00e5), Ok(LinkType::RawIp));
        assert_eq!(LinkType::from_linktype(0x3000_00bd), Err(189));
    }
}
