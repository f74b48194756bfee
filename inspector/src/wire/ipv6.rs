//! IPv6 header view (RFC 8200) with the common extension headers.

use std::net::Ipv6Addr;

use super::WireError;

/// Extension headers followed before the chain is declared too long.
pub const MAX_EXT_HEADERS: usize = 8;

/// A checked view of a fixed IPv6 header at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<'a> {
    buf: &'a [u8],
    /// Payload length: the field, a jumbo payload option's, or the captured bytes' (whole
    /// BIG TCP packets).
    len: usize,
}

/// Hop-by-hop option type of a jumbo payload (RFC 2675).
const OPT_JUMBO: u8 = 0xc2;

impl<'a> Ipv6Packet<'a> {
    /// Checks the version and that the 40-byte fixed header is present.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, WireError> {
        Self::checked(buf, false)
    }

    /// As [`Self::new_checked`]; `whole` says `buf` holds the entire packet. A payload length
    /// of 0 is a jumbogram's (RFC 2675: the hop-by-hop jumbo option holds the length) or, in
    /// a whole packet without that option, a BIG TCP/GSO super-packet's: the captured bytes.
    pub fn checked(buf: &'a [u8], whole: bool) -> Result<Self, WireError> {
        if buf.len() < 40 {
            return Err(WireError::Truncated);
        }
        if buf[0] >> 4 != 6 {
            return Err(WireError::BadVersion(buf[0] >> 4));
        }
        let mut p = Self { buf, len: 0 };
        p.len = match p.payload_len() {
            0 => match p.jumbo_len() {
                Some(j) => j,
                None if whole => buf.len() - 40,
                None => 0,
            },
            n => usize::from(n),
        };
        Ok(p)
    }

    /// The jumbo payload length, when a hop-by-hop header carries the option.
    fn jumbo_len(&self) -> Option<usize> {
        if self.next_header() != 0 {
            return None;
        }
        let h = self.buf.get(40..42)?;
        let end = 40 + (usize::from(h[1]) + 1) * 8;
        let opts = self.buf.get(42..end)?;
        let mut i = 0;
        while i < opts.len() {
            match opts[i] {
                0 => i += 1,
                t => {
                    let l = usize::from(*opts.get(i + 1)?);
                    if t == OPT_JUMBO && l == 4 {
                        let v = opts.get(i + 2..i + 6)?;
                        return Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize);
                    }
                    i += 2 + l;
                }
            }
        }
        None
    }

    /// Payload length field (extension headers included), in bytes.
    pub fn payload_len(&self) -> u16 {
        u16::from_be_bytes([self.buf[4], self.buf[5]])
    }

    /// The payload's length in bytes (extension headers included): the field, or what
    /// [`Self::checked`] derived for a length of 0.
    pub fn payload_size(&self) -> usize {
        self.len
    }
    /// Next header of the fixed header.
    pub fn next_header(&self) -> u8 {
        self.buf[6]
    }
    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buf[7]
    }
    /// Source address.
    pub fn src(&self) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.buf[8..24]).unwrap_or([0; 16]))
    }
    /// Destination address.
    pub fn dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.buf[24..40]).unwrap_or([0; 16]))
    }

    /// Walks hop-by-hop (0), routing (43), fragment (44), AH (51) and destination-options
    /// (60) headers; returns the upper-layer protocol and its offset from the buffer start.
    /// A non-first fragment has no upper-layer header: [`WireError::Fragment`].
    pub fn upper_layer(&self) -> Result<(u8, usize), WireError> {
        let mut next = self.next_header();
        let mut off = 40usize;
        for _ in 0..MAX_EXT_HEADERS {
            let len = match next {
                0 | 43 | 60 => {
                    let h = self.buf.get(off..off + 2).ok_or(WireError::Truncated)?;
                    (usize::from(h[1]) + 1) * 8
                }
                44 => {
                    let h = self.buf.get(off..off + 8).ok_or(WireError::Truncated)?;
                    if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                        return Err(WireError::Fragment);
                    }
                    8
                }
                51 => {
                    let h = self.buf.get(off..off + 2).ok_or(WireError::Truncated)?;
                    (usize::from(h[1]) + 2) * 4
                }
                proto => return Ok((proto, off)),
            };
            next = self.buf[off];
            off += len;
            if off > 40 + self.len {
                return Err(WireError::BadIpTotalLen);
            }
        }
        Err(WireError::ExtChain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ext(ext: &[u8], first_next: u8, payload_len: u16) -> Vec<u8> {
        let mut v = vec![0u8; 40];
        v[0] = 0x60;
        v[4..6].copy_from_slice(&payload_len.to_be_bytes());
        v[6] = first_next;
        v.extend_from_slice(ext);
        v
    }

    #[test]
    fn hop_by_hop_then_tcp_is_found() {
        let ext = [6u8, 0, 0, 0, 0, 0, 0, 0];
        let b = with_ext(&ext, 0, 28);
        assert_eq!(
            Ipv6Packet::new_checked(&b).unwrap().upper_layer(),
            Ok((6, 48))
        );
    }

    #[test]
    fn non_first_fragment_has_no_tcp_header() {
        let ext = [6u8, 0, 0x00, 0x08, 0, 0, 0, 1];
        let b = with_ext(&ext, 44, 28);
        assert_eq!(
            Ipv6Packet::new_checked(&b).unwrap().upper_layer(),
            Err(WireError::Fragment)
        );
    }

    #[test]
    fn endless_chain_is_rejected() {
        let mut ext = Vec::new();
        for _ in 0..=MAX_EXT_HEADERS {
            ext.extend_from_slice(&[60u8, 0, 0, 0, 0, 0, 0, 0]);
        }
        let b = with_ext(&ext, 60, ext.len() as u16);
        assert_eq!(
            Ipv6Packet::new_checked(&b).unwrap().upper_layer(),
            Err(WireError::ExtChain)
        );
    }

    #[test]
    fn zero_payload_length_is_a_jumbogram_or_the_whole_capture() {
        let mut b = with_ext(&[0u8; 60], 6, 0);
        assert_eq!(Ipv6Packet::checked(&b, false).unwrap().payload_size(), 0);
        assert_eq!(Ipv6Packet::checked(&b, true).unwrap().payload_size(), 60);
        // Hop-by-hop with a jumbo payload option of 100000 bytes: the option wins.
        b[6] = 0;
        b[40..48].copy_from_slice(&[6, 0, OPT_JUMBO, 4, 0, 1, 0x86, 0xa0]);
        let p = Ipv6Packet::checked(&b, true).unwrap();
        assert_eq!(p.payload_size(), 100_000);
        assert_eq!(p.upper_layer(), Ok((6, 48)));
    }

    #[test]
    fn extension_header_beyond_buffer_is_truncation() {
        let b = with_ext(&[6u8], 0, 8);
        assert_eq!(
            Ipv6Packet::new_checked(&b).unwrap().upper_layer(),
            Err(WireError::Truncated)
        );
    }
}
