//! Bounds-checked header walking: Ethernet, up to two VLAN tags, MPLS, IPv4 (options), IPv6
//! (common extension headers), one tunnel (IP-in-IP, GRE, VXLAN, Geneve), TCP. Every byte is copied out by the hook's load helper ([`Packet`]).

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
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_GRE: u8 = 47;
const IPPROTO_UDP: u8 = 17;
const ETH_P_MPLS_UC: u16 = 0x8847;
const ETH_P_MPLS_MC: u16 = 0x8848;
/// Transparent Ethernet bridging: an Ethernet frame inside GRE or Geneve.
const ETH_P_TEB: u16 = 0x6558;
const VXLAN_PORT: u16 = 4789;
const GENEVE_PORT: u16 = 6081;
/// MPLS labels followed before giving up.
const MAX_MPLS_LABELS: usize = 4;
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
    /// Source and destination: IPv4 addresses, or IPv6 ones folded to 32 bits; ports.
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
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

/// An IP header walked: the protocol after it (extension headers skipped) and where it starts.
struct L3 {
    next: u8,
    /// IPv6 extension headers walked.
    ext: usize,
    l4_off: usize,
    family: u8,
    src: u32,
    dst: u32,
}

/// Walks the IPv4 or IPv6 header (by `ethertype`) at `off`, following at most `EXT` IPv6
/// extension headers (the verifier explores every path: a tunnel's inner header gets none).
#[inline(always)]
fn parse_l3<const EXT: usize, P: Packet>(ctx: &P, off: usize, ethertype: u16) -> Result<L3, u32> {
    match ethertype {
        ETH_P_IP => {
            let ip = load::<20, P>(ctx, off)?;
            let ihl = ((ip[0] & 0x0f) as usize) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 {
                return Err(stats::UNPARSABLE_BAD_HEADER);
            }
            if be16(&ip, 6) & 0x1fff != 0 {
                return Err(stats::UNPARSABLE_FRAGMENT);
            }
            Ok(L3 {
                next: ip[9],
                ext: 0,
                l4_off: off + ihl,
                family: 4,
                src: be32(&ip, 12),
                dst: be32(&ip, 16),
            })
        }
        ETH_P_IPV6 => {
            let ip = load::<40, P>(ctx, off)?;
            let mut next = ip[6];
            let s = fold_addr(&[be32(&ip, 8), be32(&ip, 12), be32(&ip, 16), be32(&ip, 20)]);
            let d = fold_addr(&[be32(&ip, 24), be32(&ip, 28), be32(&ip, 32), be32(&ip, 36)]);
            let mut l4 = off + 40;
            let mut i = 0;
            while matches!(next, 0 | 43 | 44 | 51 | 60) {
                if i == EXT {
                    return Err(stats::UNPARSABLE_EXT_CHAIN);
                }
                i += 1;
                let ext = load::<8, P>(ctx, l4)?;
                let len = match next {
                    // Fragment header: only the first fragment carries the TCP header.
                    44 => {
                        if be16(&ext, 2) & 0xfff8 != 0 {
                            return Err(stats::UNPARSABLE_FRAGMENT);
                        }
                        8
                    }
                    // Authentication header: length in 4-octet units, minus 2.
                    51 => (ext[1] as usize + 2) * 4,
                    // Hop-by-hop, routing, destination options: length in 8-octet units.
                    _ => (ext[1] as usize + 1) * 8,
                };
                next = ext[0];
                l4 += len;
            }
            Ok(L3 {
                next,
                ext: i,
                l4_off: l4,
                family: 6,
                src: s,
                dst: d,
            })
        }
        _ => Err(stats::NOT_TCP),
    }
}

/// The ethertype after an inner Ethernet header at `off` (VXLAN, GRE/Geneve bridging).
#[inline(always)]
fn inner_ethernet<P: Packet>(ctx: &P, off: usize) -> Result<(usize, u16), u32> {
    let eth = load::<ETH_HLEN, P>(ctx, off)?;
    Ok((off + ETH_HLEN, be16(&eth, 12)))
}

/// Where the packet carried by a tunnel header at `off` (after an IP header whose protocol is
/// `proto`) starts, and its ethertype: IP-in-IP (LVS TUN, Katran), GRE (RFC 2784/2890),
/// VXLAN (UDP 4789), Geneve (UDP 6081).
#[inline(always)]
fn tunnel<P: Packet>(ctx: &P, proto: u8, off: usize) -> Result<(usize, u16), u32> {
    match proto {
        IPPROTO_IPIP => Ok((off, ETH_P_IP)),
        IPPROTO_IPV6 => Ok((off, ETH_P_IPV6)),
        IPPROTO_GRE => {
            let gre = load::<4, P>(ctx, off)?;
            if gre[1] & 0x07 != 0 {
                return Err(stats::NOT_TCP); // GRE version 1 (PPTP) carries no IP here
            }
            // Checksum (C), key (K) and sequence (S) fields: 4 bytes each when present.
            let f = gre[0] as usize;
            let hl = 4 + 4 * ((f >> 7) & 1) + 4 * ((f >> 5) & 1) + 4 * ((f >> 4) & 1);
            match be16(&gre, 2) {
                ETH_P_TEB => inner_ethernet(ctx, off + hl),
                t => Ok((off + hl, t)),
            }
        }
        IPPROTO_UDP => {
            let udp = load::<8, P>(ctx, off)?;
            match be16(&udp, 2) {
                VXLAN_PORT => inner_ethernet(ctx, off + 16),
                GENEVE_PORT => {
                    let g = load::<8, P>(ctx, off + 8)?;
                    let opts = ((g[0] & 0x3f) as usize) * 4;
                    match be16(&g, 2) {
                        ETH_P_TEB => inner_ethernet(ctx, off + 16 + opts),
                        t => Ok((off + 16 + opts, t)),
                    }
                }
                _ => Err(stats::NOT_TCP),
            }
        }
        _ => Err(stats::NOT_TCP),
    }
}

/// Walks the headers of an Ethernet frame, through one tunnel (IP-in-IP, GRE, VXLAN, Geneve;
/// MPLS labels in front of IP): the TCP packet found is the inner one, hashed on its own
/// addresses, and recorded from the outer IP header on (userspace decapsulates it the same
/// way and keeps the outer addresses for the evidence). `Err` carries the stats index of the
/// reason the frame is not a parsable TCP packet.
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
    // MPLS: labels up to the bottom of the stack, then IPv4 or IPv6 by the version nibble.
    if proto == ETH_P_MPLS_UC || proto == ETH_P_MPLS_MC {
        let mut i = 0;
        loop {
            if i == MAX_MPLS_LABELS {
                return Err(stats::NOT_TCP);
            }
            i += 1;
            let label = load::<4, P>(ctx, off)?;
            off += 4;
            if label[2] & 0x01 != 0 {
                break;
            }
        }
        let v = load::<1, P>(ctx, off)?;
        proto = match v[0] >> 4 {
            4 => ETH_P_IP,
            6 => ETH_P_IPV6,
            _ => return Err(stats::NOT_TCP),
        };
    }
    let l3_off = off;
    let mut l3 = parse_l3::<MAX_EXT_HEADERS, P>(ctx, off, proto)?;
    if l3.next != IPPROTO_TCP {
        // Tunnels only right after the outer header: an extension chain before them would
        // multiply the paths the verifier walks past its limit.
        if l3.ext != 0 {
            return Err(stats::NOT_TCP);
        }
        let (inner, ethertype) = tunnel(ctx, l3.next, l3.l4_off)?;
        l3 = parse_l3::<0, P>(ctx, inner, ethertype)?;
        if l3.next != IPPROTO_TCP {
            return Err(stats::NOT_TCP);
        }
    }
    let l4_off = l3.l4_off;
    let tcp = load::<20, P>(ctx, l4_off)?;
    let doff = ((tcp[12] >> 4) as usize) * 4;
    if doff < 20 {
        return Err(stats::UNPARSABLE_BAD_HEADER);
    }
    let (sport, dport) = (be16(&tcp, 0), be16(&tcp, 2));
    let flow_hash = symmetric_flow_hash(crate::maps::hash_key(), l3.src, sport, l3.dst, dport);
    Ok(Tcp {
        l3_off,
        hdr_len: l4_off - l3_off + doff,
        family: l3.family,
        vlan_depth,
        flags: tcp[13],
        flow_hash,
        src: l3.src,
        dst: l3.dst,
        sport,
        dport,
    })
}
