//! Bounds-checked header walking: Ethernet, up to two VLAN tags, IPv4 (options), IPv6 (common
//! extension headers), TCP. Every byte is copied out by the hook's load helper ([`Packet`]).

use core::mem::MaybeUninit;

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use synscope_common::{flow_hash::fold_addr, stats, symmetric_flow_hash};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers the walker follows before giving up (counted).
const MAX_EXT_HEADERS: usize = 4;

/// A parsed TCP packet: where its IP header starts and what the selector needs.
pub struct Tcp {
    pub l3_off: usize,
    /// Bytes from the IP header start through the end of the TCP header (options included).
    pub hdr_len: usize,
    pub family: u8,
    pub vlan_depth: u8,
    pub flags: u8,
    pub flow_hash: u32,
}

/// A packet both hooks can read: XDP (ingress) and TC (egress) differ only in the helper that
/// copies bytes out and in how they tell the packet's length.
pub trait Packet {
    /// Copies `len` bytes at `off` to `dst`; non-zero when the range is not inside the packet.
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes of writes.
    unsafe fn load_raw(&self, off: u32, dst: *mut u8, len: u32) -> i64;
    /// Length of the whole frame on the wire (from the Ethernet header).
    fn wire_len(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    unsafe fn load_raw(&self, off: u32, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: the caller guarantees `dst`; the helper bounds-checks the packet side.
        unsafe { bpf_xdp_load_bytes(self.as_ptr() as *mut _, off, dst as *mut _, len) }
    }
    #[inline(always)]
    fn wire_len(&self) -> usize {
        self.data_end() - self.data()
    }
}

impl Packet for TcContext {
    #[inline(always)]
    unsafe fn load_raw(&self, off: u32, dst: *mut u8, len: u32) -> i64 {
        // SAFETY: the caller guarantees `dst`; the helper bounds-checks the packet side and
        // reads paged (non-linear) skb data too.
        unsafe { bpf_skb_load_bytes(self.as_ptr() as *const _, off, dst as *mut _, len) }
    }
    #[inline(always)]
    fn wire_len(&self) -> usize {
        self.len() as usize
    }
}

/// Copies `N` packet bytes at `off` onto the stack. The helper bounds-checks the packet side,
/// which keeps the verifier happy with the variable offsets of options and extension headers
/// (direct packet pointers at variable offsets get re-derived by LLVM and rejected).
#[inline(always)]
fn load<const N: usize, P: Packet>(ctx: &P, off: usize) -> Result<[u8; N], u32> {
    let mut buf = MaybeUninit::<[u8; N]>::uninit();
    // SAFETY: the destination is a stack buffer of exactly N bytes.
    let rc = unsafe { ctx.load_raw(off as u32, buf.as_mut_ptr() as *mut u8, N as u32) };
    if rc != 0 {
        return Err(stats::UNPARSABLE_TRUNCATED);
    }
    // SAFETY: the helper returned 0, so all N bytes were written.
    Ok(unsafe { buf.assume_init() })
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

#[inline(always)]
fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Walks the headers of an Ethernet frame. `Err` carries the stats index of the reason the
/// frame is not a parsable TCP packet.
#[inline(always)]
pub fn parse_tcp<P: Packet>(ctx: &P) -> Result<Tcp, u32> {
    let eth = load::<ETH_HLEN, P>(ctx, 0)?;
    let mut off = ETH_HLEN;
    let mut proto = be16(&eth, 12);
    let mut vlan_depth = 0u8;
    // 802.1ad outer tag, then 802.1Q inner tag: at most two.
    if proto == ETH_P_8021AD || proto == ETH_P_8021Q {
        let tag = load::<4, P>(ctx, off)?;
        proto = be16(&tag, 2);
        off += 4;
        vlan_depth += 1;
        if proto == ETH_P_8021AD || proto == ETH_P_8021Q {
            let tag = load::<4, P>(ctx, off)?;
            proto = be16(&tag, 2);
            off += 4;
            vlan_depth += 1;
        }
    }
    let l3_off = off;
    let (l4_off, family, src, dst) = match proto {
        ETH_P_IP => {
            let ip = load::<20, P>(ctx, off)?;
            let ihl = ((ip[0] & 0x0f) as usize) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 {
                return Err(stats::UNPARSABLE_BAD_HEADER);
            }
            if ip[9] != IPPROTO_TCP {
                return Err(stats::NOT_TCP);
            }
            if be16(&ip, 6) & 0x1fff != 0 {
                return Err(stats::UNPARSABLE_FRAGMENT);
            }
            (off + ihl, 4u8, be32(&ip, 12), be32(&ip, 16))
        }
        ETH_P_IPV6 => {
            let ip = load::<40, P>(ctx, off)?;
            let mut next = ip[6];
            let s = fold_addr(&[be32(&ip, 8), be32(&ip, 12), be32(&ip, 16), be32(&ip, 20)]);
            let d = fold_addr(&[be32(&ip, 24), be32(&ip, 28), be32(&ip, 32), be32(&ip, 36)]);
            let mut l4 = off + 40;
            let mut i = 0;
            while next != IPPROTO_TCP {
                if i == MAX_EXT_HEADERS {
                    return Err(stats::UNPARSABLE_EXT_CHAIN);
                }
                i += 1;
                let ext = load::<8, P>(ctx, l4)?;
                let len = match next {
                    // Hop-by-hop, routing, destination options: length in 8-octet units.
                    0 | 43 | 60 => (ext[1] as usize + 1) * 8,
                    // Fragment header: only the first fragment carries the TCP header.
                    44 => {
                        if be16(&ext, 2) & 0xfff8 != 0 {
                            return Err(stats::UNPARSABLE_FRAGMENT);
                        }
                        8
                    }
                    // Authentication header: length in 4-octet units, minus 2.
                    51 => (ext[1] as usize + 2) * 4,
                    _ => return Err(stats::NOT_TCP),
                };
                next = ext[0];
                l4 += len;
            }
            (l4, 6u8, s, d)
        }
        _ => return Err(stats::NOT_TCP),
    };
    let tcp = load::<20, P>(ctx, l4_off)?;
    let doff = ((tcp[12] >> 4) as usize) * 4;
    if doff < 20 {
        return Err(stats::UNPARSABLE_BAD_HEADER);
    }
    let flow_hash = symmetric_flow_hash(src, be16(&tcp, 0), dst, be16(&tcp, 2));
    Ok(Tcp {
        l3_off,
        hdr_len: l4_off - l3_off + doff,
        family,
        vlan_depth,
        flags: tcp[13],
        flow_hash,
    })
}
