//! Encapsulations that load balancers and overlays put around the TCP segment: IP-in-IP
//! (IPv4/IPv6 in IPv4/IPv6: LVS TUN mode, Katran), GRE (RFC 2784/2890), VXLAN (RFC 7348, UDP
//! 4789), Geneve (RFC 8926, UDP 6081) and MPLS. Flows are keyed on the inner headers; the
//! segment keeps the outermost tunnel's kind and addresses in a [`Tunnel`].

use std::net::IpAddr;

use super::{
    WireError,
    link::{ETH_P_IP, ETH_P_IPV6, ETH_P_MPLS_MC, ETH_P_MPLS_UC, ETH_P_TEB, ethernet, mpls_stack},
};

/// Encapsulation layers followed before a packet is refused ([`WireError::TunnelDepth`]).
pub const MAX_DEPTH: u8 = 3;
/// UDP destination port of VXLAN (IANA).
pub const UDP_PORT_VXLAN: u16 = 4789;
/// UDP destination port of Geneve (IANA).
pub const UDP_PORT_GENEVE: u16 = 6081;

/// The kind of an encapsulation; [`TunnelKind::name`] is its stable label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    IpIp,
    Gre,
    Vxlan,
    Geneve,
    Mpls,
}

impl TunnelKind {
    /// Stable label (`ipip`, `gre`, `vxlan`, `geneve`, `mpls`).
    pub fn name(self) -> &'static str {
        match self {
            Self::IpIp => "ipip",
            Self::Gre => "gre",
            Self::Vxlan => "vxlan",
            Self::Geneve => "geneve",
            Self::Mpls => "mpls",
        }
    }
}

/// How a segment was encapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    /// The outermost encapsulation.
    pub kind: TunnelKind,
    /// Source and destination of the outermost IP header (the tunnel endpoints); `None` when
    /// the only encapsulation is an MPLS label stack on the link.
    pub outer: Option<(IpAddr, IpAddr)>,
    /// Encapsulation layers crossed (1 ..= [`MAX_DEPTH`]).
    pub depth: u8,
}

impl Tunnel {
    /// Adds a layer (from the outside in); `outer` is the IP header that carried it, if any.
    pub(crate) fn push(
        tunnel: &mut Option<Tunnel>,
        kind: TunnelKind,
        outer: Option<(IpAddr, IpAddr)>,
    ) -> Result<(), WireError> {
        match tunnel {
            None => {
                *tunnel = Some(Tunnel {
                    kind,
                    outer,
                    depth: 1,
                })
            }
            Some(t) => {
                if t.depth == MAX_DEPTH {
                    return Err(WireError::TunnelDepth);
                }
                t.depth += 1;
                if t.outer.is_none() {
                    t.outer = outer;
                }
            }
        }
        Ok(())
    }
}

/// The IP packet an encapsulation carries: its offset in the payload, and whether an MPLS
/// label stack was crossed to reach it (another layer).
pub(crate) struct Inner {
    pub off: usize,
    pub mpls: bool,
}

/// An ethertype-identified payload (GRE, Geneve): IP, an Ethernet frame, or MPLS.
fn by_ethertype(proto: u16, payload: &[u8]) -> Result<Inner, WireError> {
    match proto {
        ETH_P_IP | ETH_P_IPV6 => Ok(Inner {
            off: 0,
            mpls: false,
        }),
        ETH_P_TEB => inner_ethernet(payload),
        ETH_P_MPLS_UC | ETH_P_MPLS_MC => Ok(Inner {
            off: mpls_stack(payload)?.0,
            mpls: true,
        }),
        other => Err(WireError::NotIp(other)),
    }
}

fn inner_ethernet(frame: &[u8]) -> Result<Inner, WireError> {
    let l2 = ethernet(frame)?;
    Ok(Inner {
        off: l2.ip,
        mpls: l2.mpls_labels > 0,
    })
}

/// A GRE header (RFC 2784 with RFC 2890's key and sequence number), version 0. Returns the
/// header length and the carried packet.
pub(crate) fn gre(buf: &[u8]) -> Result<(usize, Inner), WireError> {
    let h = buf.get(..4).ok_or(WireError::Truncated)?;
    let flags = u16::from_be_bytes([h[0], h[1]]);
    // Version 0 only (1 is PPTP's enhanced GRE). RFC 2784: bits 1-5 (routing, strict source
    // route, the first recursion bit of RFC 1701; key and sequence are RFC 2890's) must be 0
    // or the packet is discarded; bits 6-12 are ignored on receipt.
    if flags & 0x0007 != 0 || flags & 0x4c00 != 0 {
        return Err(WireError::BadGre);
    }
    let proto = u16::from_be_bytes([h[2], h[3]]);
    let mut len = 4;
    for bit in [0x8000, 0x2000, 0x1000] {
        // Checksum (+ reserved1), key, sequence number: 4 bytes each.
        if flags & bit != 0 {
            len += 4;
        }
    }
    let payload = buf.get(len..).ok_or(WireError::Truncated)?;
    Ok((len, by_ethertype(proto, payload)?))
}

/// A UDP datagram's destination port and payload offset (8), when it is a tunnel.
pub(crate) fn udp(buf: &[u8]) -> Result<Option<(TunnelKind, usize, Inner)>, WireError> {
    let h = buf.get(..8).ok_or(WireError::Truncated)?;
    let dport = u16::from_be_bytes([h[2], h[3]]);
    let payload = &buf[8..];
    match dport {
        UDP_PORT_VXLAN => {
            let v = payload.get(..8).ok_or(WireError::Truncated)?;
            // RFC 7348: the I flag (a valid VNI) must be set.
            if v[0] & 0x08 == 0 {
                return Err(WireError::BadVxlan);
            }
            let inner = inner_ethernet(&payload[8..])?;
            Ok(Some((TunnelKind::Vxlan, 16, inner)))
        }
        UDP_PORT_GENEVE => {
            let g = payload.get(..8).ok_or(WireError::Truncated)?;
            if g[0] >> 6 != 0 {
                return Err(WireError::BadGeneve);
            }
            let len = 8 + usize::from(g[0] & 0x3f) * 4;
            let proto = u16::from_be_bytes([g[2], g[3]]);
            let inner = by_ethertype(proto, payload.get(len..).ok_or(WireError::Truncated)?)?;
            Ok(Some((TunnelKind::Geneve, 8 + len, inner)))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gre_optional_fields_set_the_header_length() {
        let mut h = vec![0u8, 0, 0x08, 0x00];
        h.extend_from_slice(&[0x45; 4]);
        assert_eq!(gre(&h).map(|(l, _)| l), Ok(4));
        // Checksum, key and sequence number: 16 bytes.
        let mut h = vec![0xb0u8, 0, 0x86, 0xdd];
        h.extend_from_slice(&[0; 12]);
        h.push(0x60);
        assert_eq!(gre(&h).map(|(l, _)| l), Ok(16));
        assert_eq!(gre(&h[..15]).map(|(l, _)| l), Err(WireError::Truncated));
    }

    #[test]
    fn gre_version_1_routing_and_unknown_protocols_are_errors() {
        assert_eq!(
            gre(&[0, 1, 0x88, 0x0b, 0, 0, 0, 0]).err(),
            Some(WireError::BadGre)
        );
        assert_eq!(
            gre(&[0x40, 0, 0x08, 0, 0, 0, 0, 0]).err(),
            Some(WireError::BadGre)
        );
        assert_eq!(
            gre(&[0x08, 0, 0x08, 0, 0, 0, 0, 0]).err(),
            Some(WireError::BadGre)
        );
        // Reserved bits 6-12 are ignored on receipt.
        assert_eq!(gre(&[0x03, 0xf8, 0x08, 0, 0x45]).map(|(l, _)| l), Ok(4));
        assert_eq!(
            gre(&[0, 0, 0x08, 0x06, 0]).err(),
            Some(WireError::NotIp(0x0806))
        );
        assert_eq!(gre(&[0, 0, 0x08]).err(), Some(WireError::Truncated));
    }

    #[test]
    fn vxlan_needs_its_i_flag_and_geneve_version_0() {
        let mut v = vec![0u8, 1, 0x12, 0xb5, 0, 30, 0, 0];
        v.extend_from_slice(&[0u8; 8]);
        assert_eq!(udp(&v).err(), Some(WireError::BadVxlan));
        let mut g = vec![0u8, 1, 0x17, 0xc1, 0, 30, 0, 0];
        g.extend_from_slice(&[0x40, 0, 0x65, 0x58, 0, 0, 0, 0]);
        assert_eq!(udp(&g).err(), Some(WireError::BadGeneve));
        // Geneve options longer than the datagram.
        g[8] = 0x02;
        assert_eq!(udp(&g).err(), Some(WireError::Truncated));
        // Another port is not a tunnel.
        assert!(matches!(udp(&[0, 1, 0, 53, 0, 8, 0, 0]), Ok(None)));
    }

    #[test]
    fn depth_is_bounded_and_the_first_ip_header_is_the_outer_one() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut t = None;
        Tunnel::push(&mut t, TunnelKind::Mpls, None).unwrap();
        Tunnel::push(&mut t, TunnelKind::Gre, Some((a, b))).unwrap();
        Tunnel::push(&mut t, TunnelKind::IpIp, Some((b, a))).unwrap();
        assert_eq!(
            t,
            Some(Tunnel {
                kind: TunnelKind::Mpls,
                outer: Some((a, b)),
                depth: 3
            })
        );
        assert_eq!(
            Tunnel::push(&mut t, TunnelKind::Vxlan, None),
            Err(WireError::TunnelDepth)
        );
    }
}
