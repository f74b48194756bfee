//! TCP header view with options (RFC 9293 §3.1, RFC 7323 for timestamps and window scale).

use super::WireError;

/// TCP flag bits (the low byte of the flags field; NS is ignored).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: Self = Self(0x01);
    pub const SYN: Self = Self(0x02);
    pub const RST: Self = Self(0x04);
    pub const PSH: Self = Self(0x08);
    pub const ACK: Self = Self(0x10);
    pub const URG: Self = Self(0x20);
    pub const ECE: Self = Self(0x40);
    pub const CWR: Self = Self(0x80);

    const NAMES: [(Self, &'static str); 8] = [
        (Self::SYN, "SYN"),
        (Self::FIN, "FIN"),
        (Self::RST, "RST"),
        (Self::PSH, "PSH"),
        (Self::ACK, "ACK"),
        (Self::URG, "URG"),
        (Self::ECE, "ECE"),
        (Self::CWR, "CWR"),
    ];

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// Whether SYN, FIN or RST is set (what the kernel selector picks).
    pub fn is_control(self) -> bool {
        self.0 & (Self::SYN.0 | Self::FIN.0 | Self::RST.0) != 0
    }
    /// Flag names joined by `|`, e.g. `SYN|ACK`; `none` when no flag is set.
    pub fn names(self) -> String {
        let parts: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(f, _)| self.contains(*f))
            .map(|(_, n)| *n)
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join("|")
        }
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl std::fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.names())
    }
}

/// The options synscope uses, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpOptions {
    /// Maximum segment size (kind 2).
    pub mss: Option<u16>,
    /// Window scale shift (kind 3).
    pub wscale: Option<u8>,
    /// SACK permitted (kind 4).
    pub sack_permitted: bool,
    /// Number of SACK blocks (kind 5).
    pub sack_blocks: u8,
    /// Timestamps (kind 8): (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
    /// TCP Fast Open (RFC 7413, kind 34, or the experimental kind 254 with magic 0xF989):
    /// the cookie's length in bytes, 0 for a cookie request.
    pub fastopen: Option<u8>,
}

/// A checked view of a TCP header (options included) at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<'a> {
    buf: &'a [u8],
}

impl<'a> TcpPacket<'a> {
    /// Checks that the header, options included, is in `buf` and its data offset is ≥ 5.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, WireError> {
        if buf.len() < 20 {
            return Err(WireError::Truncated);
        }
        let p = Self { buf };
        if p.header_len() < 20 {
            return Err(WireError::BadTcpHeaderLen);
        }
        if buf.len() < p.header_len() {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.buf[0], self.buf[1]])
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }
    /// Sequence number.
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]])
    }
    /// Acknowledgment number (meaningful only with ACK set).
    pub fn ack(&self) -> u32 {
        u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
    }
    /// Header length in bytes (data offset × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buf[12] >> 4) * 4
    }
    /// Flags.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buf[13])
    }
    /// Window (unscaled).
    pub fn window(&self) -> u16 {
        u16::from_be_bytes([self.buf[14], self.buf[15]])
    }

    /// Decodes the options the way a receiver does (Linux `tcp_parse_options`): a malformed
    /// option ends the list and the segment keeps what came before it. Dropping the whole
    /// segment would turn a SYN-ACK with one odd option into an unanswered SYN.
    pub fn options_lenient(&self) -> TcpOptions {
        let mut o = TcpOptions::default();
        let _ = self.parse_options(&mut o);
        o
    }

    /// Decodes the options. An option whose length is below 2 or runs past the header is an
    /// error; unknown kinds are skipped; EOL ends the list (RFC 9293 §3.1).
    pub fn options(&self) -> Result<TcpOptions, WireError> {
        let mut o = TcpOptions::default();
        self.parse_options(&mut o)?;
        Ok(o)
    }

    fn parse_options(&self, o: &mut TcpOptions) -> Result<(), WireError> {
        let opts = &self.buf[20..self.header_len()];
        let mut i = 0;
        while i < opts.len() {
            match opts[i] {
                0 => break,
                1 => {
                    i += 1;
                    continue;
                }
                kind => {
                    let len = usize::from(*opts.get(i + 1).ok_or(WireError::BadTcpOption)?);
                    if len < 2 || i + len > opts.len() {
                        return Err(WireError::BadTcpOption);
                    }
                    let body = &opts[i + 2..i + len];
                    match (kind, body.len()) {
                        (2, 2) => o.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                        (3, 1) => o.wscale = Some(body[0]),
                        (4, 0) => o.sack_permitted = true,
                        (5, n) if n % 8 == 0 => o.sack_blocks = (n / 8) as u8,
                        (8, 8) => {
                            let v = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                            let e = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                            o.timestamps = Some((v, e));
                        }
                        (34, n) => o.fastopen = Some(n as u8),
                        (254, n) if n >= 2 && body[..2] == [0xf9, 0x89] => {
                            o.fastopen = Some((n - 2) as u8)
                        }
                        (2 | 3 | 4 | 5 | 8, _) => return Err(WireError::BadTcpOption),
                        _ => {}
                    }
                    i += len;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opts: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[12] = (((20 + opts.len()) / 4) as u8) << 4;
        h[13] = 0x12;
        h.extend_from_slice(opts);
        h
    }

    #[test]
    fn flags_print_in_a_fixed_order() {
        assert_eq!((TcpFlags::ACK | TcpFlags::SYN).names(), "SYN|ACK");
        assert_eq!(TcpFlags(0).names(), "none");
    }

    #[test]
    fn nop_padded_timestamps_decode() {
        let h = header(&[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]);
        let o = TcpPacket::new_checked(&h).unwrap().options().unwrap();
        assert_eq!(o.timestamps, Some((5, 6)));
    }

    #[test]
    fn zero_length_option_is_an_error_not_a_loop() {
        let h = header(&[9, 0, 0, 0]);
        assert_eq!(
            TcpPacket::new_checked(&h).unwrap().options(),
            Err(WireError::BadTcpOption)
        );
    }

    #[test]
    fn option_running_past_the_header_is_an_error() {
        let h = header(&[8, 10, 0, 0]);
        assert_eq!(
            TcpPacket::new_checked(&h).unwrap().options(),
            Err(WireError::BadTcpOption)
        );
    }

    #[test]
    fn wrong_length_for_a_known_kind_is_an_error() {
        let h = header(&[2, 3, 5, 0]);
        assert_eq!(
            TcpPacket::new_checked(&h).unwrap().options(),
            Err(WireError::BadTcpOption)
        );
    }

    #[test]
    fn fast_open_cookie_and_request_decode() {
        let h = header(&[34, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 1]);
        let o = TcpPacket::new_checked(&h).unwrap().options().unwrap();
        assert_eq!(o.fastopen, Some(8));
        let h = header(&[34, 2, 1, 1]);
        let o = TcpPacket::new_checked(&h).unwrap().options().unwrap();
        assert_eq!(o.fastopen, Some(0), "cookie request");
        let h = header(&[254, 4, 0xf9, 0x89]);
        let o = TcpPacket::new_checked(&h).unwrap().options().unwrap();
        assert_eq!(o.fastopen, Some(0), "experimental kind with magic");
    }

    #[test]
    fn a_malformed_option_ends_the_list_leniently() {
        let h = header(&[2, 4, 5, 0xb4, 8, 3, 0, 0]);
        let p = TcpPacket::new_checked(&h).unwrap();
        assert_eq!(p.options(), Err(WireError::BadTcpOption));
        assert_eq!(p.options_lenient().mss, Some(1460), "what came before it");
    }

    #[test]
    fn eol_ends_the_list() {
        let h = header(&[0, 8, 99, 99]);
        assert_eq!(
            TcpPacket::new_checked(&h).unwrap().options(),
            Ok(TcpOptions::default())
        );
    }

    #[test]
    fn data_offset_below_five_is_rejected() {
        let mut h = header(&[]);
        h[12] = 4 << 4;
        assert_eq!(
            TcpPacket::new_checked(&h).unwrap_err(),
            WireError::BadTcpHeaderLen
        );
    }

    #[test]
    fn options_beyond_the_buffer_are_truncation() {
        let mut h = header(&[]);
        h[12] = 8 << 4;
        assert_eq!(
            TcpPacket::new_checked(&h).unwrap_err(),
            WireError::Truncated
        );
    }
}
