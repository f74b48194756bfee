//! The kernel's own word (inline mode): raw tracepoints on the host's TCP stack that say why it
//! sent a RST (`tcp_send_reset`) or dropped a TCP packet (`kfree_skb`), written as
//! [`KernelRecord`]s into the ring of the worker that owns the flow.
//!
//! Raw tracepoints get the tracepoint's C arguments (`struct sock *`, `struct sk_buff *`,
//! the reason); the few struct offsets needed to read addresses and ports from them come from
//! the running kernel's BTF, read by the loader and set here as globals. Nothing here touches a
//! packet: these programs only read.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::map, maps::PerCpuArray, programs::RawTracePointContext,
};
use synscope_common::{
    KERNEL_DROP, KERNEL_SEND_RESET, KernelRecord, flow_hash::fold_addr, symmetric_flow_hash,
};

use crate::maps::{hash_key, nworkers, reserve_kernel};

/// Offsets (bytes) the loader reads from the kernel's BTF; `SKB_HEAD == 0` means "unset":
/// the programs do nothing.
#[unsafe(no_mangle)]
static SKB_HEAD: u32 = 0;
#[unsafe(no_mangle)]
static SKB_NETWORK_HEADER: u32 = 0;
#[unsafe(no_mangle)]
static SKB_TRANSPORT_HEADER: u32 = 0;
#[unsafe(no_mangle)]
static SKC_DADDR: u32 = 0;
#[unsafe(no_mangle)]
static SKC_RCV_SADDR: u32 = 0;
#[unsafe(no_mangle)]
static SKC_DPORT: u32 = 0;
/// `inet_sock.inet_sport` (network order): unlike `skc_num` it survives the unhashing a
/// socket goes through when it closes before sending its RST (SO_LINGER 0).
#[unsafe(no_mangle)]
static INET_SPORT: u32 = 0;
#[unsafe(no_mangle)]
static SKC_FAMILY: u32 = 0;
#[unsafe(no_mangle)]
static SKC_STATE: u32 = 0;
#[unsafe(no_mangle)]
static SKC_V6_DADDR: u32 = 0;
#[unsafe(no_mangle)]
static SKC_V6_RCV_SADDR: u32 = 0;

/// For the network namespace filter: `sock_common.skc_net`, `sk_buff.dev`, `sk_buff.sk`,
/// `net_device.nd_net`, and `net.ns` + `ns_common.inum` (the namespace's inode number).
#[unsafe(no_mangle)]
static SKC_NET: u32 = 0;
#[unsafe(no_mangle)]
static SKB_DEV: u32 = 0;
#[unsafe(no_mangle)]
static SKB_SK: u32 = 0;
#[unsafe(no_mangle)]
static DEV_ND_NET: u32 = 0;
#[unsafe(no_mangle)]
static NET_NS_INUM: u32 = 0;
/// The inode number of the network namespace synscope watches (that of its interface): the
/// tracepoints fire for every namespace of the host, and containers reuse addresses. 0: all.
#[unsafe(no_mangle)]
static NETNS: u32 = 0;

/// Kernel-reason facts one CPU writes per second at most (set by the loader; 0: no limit).
#[unsafe(no_mangle)]
static FACTS_PER_SEC: u32 = 0;

/// Per CPU: the second (`bpf_ktime_get_ns() / 1e9`) and the facts written in it.
#[map]
static FACT_BUDGET: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Whether this CPU may write one more fact this second.
#[inline(always)]
fn within_budget() -> bool {
    let limit = global(&FACTS_PER_SEC);
    if limit == 0 {
        return true;
    }
    let Some(p) = FACT_BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a helper without arguments.
    let sec = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() } / 1_000_000_000;
    // SAFETY: this CPU's slot of a per-CPU array; a racing writer only makes it stale.
    let b = unsafe { &mut *p };
    if b[0] != sec {
        b[0] = sec;
        b[1] = 0;
    }
    if b[1] >= limit {
        crate::maps::count(synscope_common::stats::KERNEL_FACTS_LIMITED);
        return false;
    }
    b[1] += 1;
    true
}

/// The `skb_drop_reason`s worth a record (bit n: reason n), set by the loader from the
/// reasons' names: `kfree_skb` fires for every dropped packet of every protocol.
#[unsafe(no_mangle)]
static DROP_REASONS: [u64; 4] = [0; 4];

#[inline(always)]
fn global(v: &'static u32) -> u64 {
    // SAFETY: a valid static; volatile so the loader's value is read, not the compile-time one.
    u64::from(unsafe { core::ptr::read_volatile(v) })
}

/// Reads a `T` at kernel address `addr` (0 on failure: a faulting read is no error here).
#[inline(always)]
fn read<T: Default>(addr: u64) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly on a bad one.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.unwrap_or_default()
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The addresses, ports and flags of the packet in `skb` (from its network and transport
/// headers). None when the skb has no IP/TCP headers set.
#[inline(always)]
fn from_skb(skb: u64, rec: &mut KernelRecord) -> Option<()> {
    let head: u64 = read(skb + global(&SKB_HEAD));
    let nh: u16 = read(skb + global(&SKB_NETWORK_HEADER));
    let th: u16 = read(skb + global(&SKB_TRANSPORT_HEADER));
    if head == 0 || nh == 0xffff || th == 0xffff {
        return None;
    }
    let ip = head + u64::from(nh);
    let version: u8 = read::<u8>(ip) >> 4;
    match version {
        4 => {
            let proto: u8 = read(ip + 9);
            if proto != 6 {
                return None;
            }
            rec.family = 4;
            let s: [u8; 4] = read(ip + 12);
            let d: [u8; 4] = read(ip + 16);
            rec.saddr[..4].copy_from_slice(&s);
            rec.daddr[..4].copy_from_slice(&d);
        }
        6 => {
            let next: u8 = read(ip + 6);
            if next != 6 {
                return None;
            }
            rec.family = 6;
            rec.saddr = read(ip + 8);
            rec.daddr = read(ip + 24);
        }
        _ => return None,
    }
    let tcp = head + u64::from(th);
    let ports: [u8; 4] = read(tcp);
    rec.sport = u16::from_be_bytes([ports[0], ports[1]]);
    rec.dport = u16::from_be_bytes([ports[2], ports[3]]);
    rec.tcp_flags = read(tcp + 13);
    Some(())
}

/// The local → remote addresses and ports of socket `sk` (`struct sock_common`, and the
/// local port from `struct inet_sock`).
#[inline(always)]
fn from_sock(sk: u64, rec: &mut KernelRecord) -> Option<()> {
    let family: u16 = read(sk + global(&SKC_FAMILY));
    match family {
        AF_INET => {
            rec.family = 4;
            let s: [u8; 4] = read(sk + global(&SKC_RCV_SADDR));
            let d: [u8; 4] = read(sk + global(&SKC_DADDR));
            rec.saddr[..4].copy_from_slice(&s);
            rec.daddr[..4].copy_from_slice(&d);
        }
        AF_INET6 => {
            let d: [u8; 16] = read(sk + global(&SKC_V6_DADDR));
            let mapped = d[..10].iter().all(|b| *b == 0) && d[10] == 0xff && d[11] == 0xff;
            if mapped {
                // A dual-stack socket (`[::]` listener) carrying IPv4: its packets, and so the
                // selector's hash and flood keys, are IPv4 (the v4 fields are set too).
                rec.family = 4;
                let s: [u8; 4] = read(sk + global(&SKC_RCV_SADDR));
                rec.saddr[..4].copy_from_slice(&s);
                rec.daddr[..4].copy_from_slice(&d[12..16]);
            } else {
                rec.family = 6;
                rec.saddr = read(sk + global(&SKC_V6_RCV_SADDR));
                rec.daddr = d;
            }
        }
        _ => return None,
    }
    rec.sport = u16::from_be(read(sk + global(&INET_SPORT)));
    rec.dport = u16::from_be(read(sk + global(&SKC_DPORT)));
    Some(())
}

/// The namespace inode of `struct net *` at `net_ptr_at` (0 when unreadable).
#[inline(always)]
fn inum_at(net_ptr_at: u64) -> u32 {
    let net: u64 = read(net_ptr_at);
    if net == 0 {
        return 0;
    }
    read(net + global(&NET_NS_INUM))
}

/// Whether a fact about socket `sk` (or, without one, packet `skb`: its device's namespace,
/// else its socket's) belongs to the watched network namespace.
#[inline(always)]
fn watched(sk: u64, skb: u64) -> bool {
    let want = global(&NETNS) as u32;
    if want == 0 {
        return true;
    }
    let ns = if sk != 0 {
        inum_at(sk + global(&SKC_NET))
    } else if skb != 0 {
        let dev: u64 = read(skb + global(&SKB_DEV));
        if dev != 0 {
            inum_at(dev + global(&DEV_ND_NET))
        } else {
            let owner: u64 = read(skb + global(&SKB_SK));
            if owner == 0 {
                return false;
            }
            inum_at(owner + global(&SKC_NET))
        }
    } else {
        0
    };
    ns == want
}

/// Into the ring of the worker that owns the flow (the selectors' keyed flow hash).
#[inline(always)]
fn submit(rec: &KernelRecord) {
    let words = |a: &[u8; 16]| {
        [
            u32::from_be_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_be_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_be_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_be_bytes([a[12], a[13], a[14], a[15]]),
        ]
    };
    let (s, d) = if rec.family == 4 {
        (words(&rec.saddr)[0], words(&rec.daddr)[0])
    } else {
        (fold_addr(&words(&rec.saddr)), fold_addr(&words(&rec.daddr)))
    };
    let hash = symmetric_flow_hash(hash_key(), s, rec.sport, d, rec.dport);
    // A flood's flows the selector does not record: their facts would join nothing.
    let key = |a: u32, p: u16| (u64::from(a) << 16) | u64::from(p);
    if crate::select::sampled_away(key(s, rec.sport), hash)
        || crate::select::sampled_away(key(d, rec.dport), hash)
    {
        return;
    }
    if !within_budget() {
        return;
    }
    let n = nworkers();
    let worker = if n > 1 { hash % n } else { 0 };
    if let Some(mut entry) = reserve_kernel(worker) {
        entry.write(*rec);
        entry.submit(0);
    }
}

#[inline(always)]
fn blank(kind: u8, reason: u64) -> KernelRecord {
    KernelRecord {
        // SAFETY: a helper without arguments.
        ts_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
        kind,
        family: 0,
        tcp_flags: 0,
        state: 0,
        reason: reason as u32,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        _pad: [0; 4],
    }
}

/// `tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason)`:
/// with `skb` the RST answers that packet (its addresses are swapped to give the RST's); else
/// the socket aborts its own connection.
pub fn send_reset(ctx: &RawTracePointContext) {
    if global(&SKB_HEAD) == 0 {
        return;
    }
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    if !watched(sk, skb) {
        return;
    }
    let mut rec = blank(KERNEL_SEND_RESET, ctx.arg(2));
    if skb != 0 && from_skb(skb, &mut rec).is_some() {
        core::mem::swap(&mut rec.saddr, &mut rec.daddr);
        core::mem::swap(&mut rec.sport, &mut rec.dport);
        rec.tcp_flags = 0;
    } else if sk == 0 || from_sock(sk, &mut rec).is_none() {
        return;
    }
    if sk != 0 {
        rec.state = read(sk + global(&SKC_STATE));
    }
    submit(&rec);
}

/// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason, struct sock *)`:
/// only the reasons the loader asked for, only TCP.
pub fn kfree_skb(ctx: &RawTracePointContext) {
    if global(&SKB_HEAD) == 0 {
        return;
    }
    let reason: u64 = ctx.arg(2);
    if reason >= 256 {
        return;
    }
    // SAFETY: a valid static; volatile so the loader's value is read.
    let mask = unsafe { core::ptr::read_volatile(&DROP_REASONS) };
    if mask[(reason / 64) as usize & 3] & (1 << (reason % 64)) == 0 {
        return;
    }
    let skb: u64 = ctx.arg(0);
    // The receiving socket when the kernel names one, else the packet's device.
    let rx_sk: u64 = ctx.arg(3);
    if !watched(rx_sk, skb) {
        return;
    }
    let mut rec = blank(KERNEL_DROP, reason);
    if from_skb(skb, &mut rec).is_some() {
        submit(&rec);
    }
}
