//! Link layers in front of IP: Ethernet II with 802.1Q/802.1ad tags, Linux cooked capture
//! (SLL, SLL2: what `tcpdump -i any` writes), and raw IP.

use super::WireError;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags followed before giving up.
const MAX_TAGS: u8 = 2;

/// Link-layer framing of a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    RawIp,
    LinuxSll,
    LinuxSll2,
}

fn be16(b: &[u8], i: usize) -> Result<u16, WireError> {
    let s = b.get(i..i + 2).ok_or(WireError::Truncated)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

fn ip_ethertype(proto: u16) -> Result<(), WireError> {
    match proto {
        ETH_P_IP | ETH_P_IPV6 => Ok(()),
        other => Err(WireError::NotIp(other)),
    }
}

/// Offset of the IP header in `frame`, and the number of VLAN tags skipped.
pub fn ip_offset(link: LinkType, frame: &[u8]) -> Result<(usize, u8), WireError> {
    match link {
        LinkType::RawIp => Ok((0, 0)),
        LinkType::LinuxSll => {
            ip_ethertype(be16(frame, 14)?)?;
            Ok((16, 0))
        }
        LinkType::LinuxSll2 => {
            ip_ethertype(be16(frame, 0)?)?;
            if frame.len() < 20 {
                return Err(WireError::Truncated);
            }
            Ok((20, 0))
        }
        LinkType::Ethernet => {
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
            ip_ethertype(proto)?;
            Ok((off + 2, tags))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::emit::{SegmentBuilder, TPID_8021AD, TPID_8021Q, ethernet};

    #[test]
    fn qinq_tags_are_skipped() {
        let f = ethernet(
            &SegmentBuilder::v4([192, 0, 2, 1], 1, [192, 0, 2, 2], 2),
            &[(TPID_8021AD, 1), (TPID_8021Q, 2)],
        );
        assert_eq!(ip_offset(LinkType::Ethernet, &f), Ok((22, 2)));
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
        assert_eq!(ip_offset(LinkType::LinuxSll, &sll), Ok((16, 0)));
    }
}
