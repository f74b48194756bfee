//! IPv4 header view (RFC 791).

use std::net::Ipv4Addr;

use super::WireError;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP (VXLAN, Geneve).
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of IPv4 inside IP (IP-in-IP, RFC 2003).
pub const PROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6 inside IP (RFC 4213).
pub const PROTO_IPV6: u8 = 41;
/// IP protocol number of GRE (RFC 2784).
pub const PROTO_GRE: u8 = 47;

/// A checked view of an IPv4 header (options included) at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<'a> {
    buf: &'a [u8],
    /// The packet's length: the total length field, or the buffer's for a whole TSO packet.
    len: usize,
}

impl<'a> Ipv4Packet<'a> {
    /// Checks version, header length (≥ 20, present in `buf`, ≤ total length).
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, WireError> {
        Self::checked(buf, false)
    }

    /// As [`Self::new_checked`]; `whole` says `buf` holds the entire packet (no snap length
    /// cut it). Then a total length of 0, which captures of TSO/GRO and BIG TCP super-packets
    /// show, means the captured length.
    pub fn checked(buf: &'a [u8], whole: bool) -> Result<Self, WireError> {
        if buf.len() < 20 {
            return Err(WireError::Truncated);
        }
        if buf[0] >> 4 != 4 {
            return Err(WireError::BadVersion(buf[0] >> 4));
        }
        let mut p = Self { buf, len: 0 };
        let hl = p.header_len();
        if hl < 20 {
            return Err(WireError::BadIpHeaderLen);
        }
        if buf.len() < hl {
            return Err(WireError::Truncated);
        }
        p.len = match p.total_len() {
            0 if whole => buf.len(),
            t => usize::from(t),
        };
        if p.len < hl {
            return Err(WireError::BadIpTotalLen);
        }
        Ok(p)
    }

    /// The packet's length in bytes (header and payload): the total length field, or the
    /// captured length for a whole packet whose field is 0.
    pub fn packet_len(&self) -> usize {
        self.len
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buf[0] & 0x0f) * 4
    }
    /// Total length field: header plus payload, in bytes.
    pub fn total_len(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }
    /// Identification field.
    pub fn id(&self) -> u16 {
        u16::from_be_bytes([self.buf[4], self.buf[5]])
    }
    /// Fragment offset in 8-byte units (0 for unfragmented and first fragments).
    pub fn frag_offset(&self) -> u16 {
        u16::from_be_bytes([self.buf[6], self.buf[7]]) & 0x1fff
    }
    /// More-fragments flag.
    pub fn more_fragments(&self) -> bool {
        self.buf[6] & 0x20 != 0
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buf[8]
    }
    /// Upper-layer protocol number.
    pub fn protocol(&self) -> u8 {
        self.buf[9]
    }
    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.buf[12], self.buf[13], self.buf[14], self.buf[15])
    }
    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.buf[16], self.buf[17], self.buf[18], self.buf[19])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[3] = 20;
        h[9] = PROTO_TCP;
        h
    }

    #[test]
    fn header_length_below_20_is_rejected() {
        let mut h = header();
        h[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&h).unwrap_err(),
            WireError::BadIpHeaderLen
        );
    }

    #[test]
    fn options_beyond_the_buffer_are_truncation() {
        let mut h = header();
        h[0] = 0x46;
        h[3] = 24;
        assert_eq!(
            Ipv4Packet::new_checked(&h).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn total_length_shorter_than_header_is_rejected() {
        let mut h = header();
        h[3] = 10;
        assert_eq!(
            Ipv4Packet::new_checked(&h).unwrap_err(),
            WireError::BadIpTotalLen
        );
    }

    #[test]
    fn zero_total_length_is_the_captured_length_only_for_a_whole_packet() {
        let mut h = header().to_vec();
        h[3] = 0;
        h.extend_from_slice(&[0u8; 100]);
        assert_eq!(
            Ipv4Packet::new_checked(&h).unwrap_err(),
            WireError::BadIpTotalLen
        );
        assert_eq!(
            Ipv4Packet::checked(&h, false).unwrap_err(),
            WireError::BadIpTotalLen
        );
        assert_eq!(Ipv4Packet::checked(&h, true).unwrap().packet_len(), 120);
        // A stated length is kept even when more bytes follow (Ethernet padding).
        h[3] = 40;
        assert_eq!(Ipv4Packet::checked(&h, true).unwrap().packet_len(), 40);
    }

    #[test]
    fn fragment_fields_are_decoded() {
        let mut h = header();
        h[6] = 0x20 | 0x01;
        h[7] = 0x02;
        let p = Ipv4Packet::new_checked(&h).unwrap();
        assert!(p.more_fragments());
        assert_eq!(p.frag_offset(), 0x102);
    }
}
