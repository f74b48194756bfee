//! The selection decision and the record write, shared by the XDP ingress and TC egress hooks.

use synscope_common::{Direction, FloodSlot, Reason, SNAP_LEN, stats};

use crate::{
    maps::{
        FLOOD, FOLLOW, count, follow_budget, follow_mask, nworkers, pending, reserve, sample_above,
    },
    parse::{Packet, Tcp, parse_tcp},
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Whether flow `flow_hash` falls outside the recorded subset of an endpoint receiving `rate`
/// SYNs a second against threshold `above`: 1/n of flows are recorded, n the power of two
/// above rate / threshold (nested subsets: a flow recorded at a higher n is recorded at a
/// lower one).
#[inline(always)]
fn outside_sample(rate: u32, above: u32, flow_hash: u32) -> bool {
    if rate <= above {
        return false;
    }
    let mut v = rate / above;
    v |= v >> 1;
    v |= v >> 2;
    v |= v >> 4;
    v |= v >> 8;
    v |= v >> 16;
    let n = u64::from(v) + 1;
    // The hash's high bits pick the subset: its low bits pick the worker (`% NWORKERS`), and
    // a subset of even hashes would all land on one worker.
    u64::from(flow_hash.rotate_right(16)) & (n - 1) != 0
}

/// Whether the kernel's word about flow `flow_hash` of endpoint `key` (folded address << 16
/// | port) concerns a flow flood sampling leaves unrecorded (read-only: the selector on this
/// CPU counted the endpoint's rate). Such facts would join no connection.
#[inline(always)]
pub fn sampled_away(key: u64, flow_hash: u32) -> bool {
    let above = sample_above();
    if above == 0 {
        return false;
    }
    let Some(p) = FLOOD.get_ptr(&key) else {
        return false;
    };
    // SAFETY: this CPU's value of a live entry; a racing writer only makes it stale.
    let s = unsafe { &*p };
    // SAFETY: a helper without arguments.
    let sec = (unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() } / 1_000_000_000) as u32;
    // A rate this CPU counted more than a second ago says nothing about now.
    let rate = if s.sec == sec {
        if s.prev > s.syns { s.prev } else { s.syns }
    } else if s.sec.wrapping_add(1) == sec {
        s.syns
    } else {
        0
    };
    outside_sample(rate, above, flow_hash)
}

/// Flood sampling of SYNs to, and SYN-ACKs from, a server endpoint that receives more than
/// `sample_above()` SYNs a second on this CPU (this second or the last): only flows whose
/// hash falls in a 1/n subset (n a power of two above rate / threshold, so a SYN-ACK's flow is
/// recorded when its SYN was) are recorded. Skipped packets are counted in the endpoint's
/// [`FloodSlot`]; the next record carries them as its weight. None: skip this packet.
#[inline(always)]
fn sample(tcp: &Tcp) -> Option<u32> {
    let above = sample_above();
    if above == 0 {
        return Some(1);
    }
    let synack = tcp.flags & TCP_ACK != 0;
    let (addr, port) = if synack {
        (tcp.src, tcp.sport)
    } else {
        (tcp.dst, tcp.dport)
    };
    let key = (u64::from(addr) << 16) | u64::from(port);
    // SAFETY: a helper without arguments.
    let sec = (unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() } / 1_000_000_000) as u32;
    let slot = match FLOOD.get_ptr_mut(&key) {
        Some(p) => p,
        // Only SYNs make an endpoint known: a SYN-ACK of an endpoint without one is recorded.
        None if synack => return Some(1),
        None => {
            let fresh = FloodSlot {
                sec,
                ..Default::default()
            };
            if FLOOD.insert(&key, &fresh, 0).is_err() {
                return Some(1);
            }
            match FLOOD.get_ptr_mut(&key) {
                Some(p) => p,
                None => return Some(1),
            }
        }
    };
    // SAFETY: `slot` is this CPU's value of a live entry of a per-CPU map. Only the selectors
    // write it, and they do not interleave on one CPU (XDP runs in softirq; TC egress runs
    // with bottom halves disabled).
    let s = unsafe { &mut *slot };
    if s.sec != sec {
        s.prev = if s.sec.wrapping_add(1) == sec {
            s.syns
        } else {
            0
        };
        s.syns = 0;
        s.sec = sec;
    }
    if !synack {
        s.syns = s.syns.saturating_add(1);
    }
    let rate = if s.prev > s.syns { s.prev } else { s.syns };
    let (skipped, carried) = if synack {
        (&mut s.skipped_synack, &mut s.carried_synack)
    } else {
        (&mut s.skipped_syn, &mut s.carried_syn)
    };
    if outside_sample(rate, above, tcp.flow_hash) {
        *skipped += 1;
        return None;
    }
    let w = *skipped - *carried;
    *carried = *skipped;
    Some(if w >= u64::from(u32::MAX) {
        u32::MAX
    } else {
        w as u32 + 1
    })
}

/// Where the packet was seen.
pub struct Hook {
    pub direction: Direction,
    pub ifindex: u32,
    pub rx_queue: u32,
    /// VLAN tags the kernel already took off the packet data into the skb (TC hooks: 1 when
    /// `vlan_present`), added to the tags the parser walks.
    pub vlan_offloaded: u8,
}

/// Decides whether a TCP packet is selected, and why. Control packets always are; a SYN or
/// SYN-ACK (re)opens the flow's follow window; other packets are selected while their flow's
/// window has budget left.
#[inline(always)]
pub fn reason(flags: u8, flow_hash: u32) -> Option<Reason> {
    let idx = flow_hash & follow_mask();
    let slot = FOLLOW.get_ptr_mut(idx)?;
    if flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        if flags & TCP_SYN != 0 && flags & TCP_RST == 0 {
            let budget = follow_budget();
            if budget > 0 {
                // SAFETY: `slot` is a valid element of an array map; a concurrent writer can
                // only make the value stale, which costs a record, not safety.
                let old = unsafe { *slot };
                if old & 0xffff_ffff != 0 && (old >> 32) as u32 != flow_hash {
                    count(stats::FOLLOW_COLLISION);
                }
                // SAFETY: as above.
                unsafe { *slot = (u64::from(flow_hash) << 32) | u64::from(budget) };
            }
        }
        return Some(Reason::Control);
    }
    // SAFETY: as above.
    let v = unsafe { *slot };
    if (v >> 32) as u32 != flow_hash || v & 0xffff_ffff == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { *slot = v - 1 };
    count(stats::FOLLOWED);
    Some(Reason::Follow)
}

/// Counts the packet, and writes a record into its flow's worker ring when it is selected.
#[inline(always)]
pub fn select<P: Packet>(ctx: &P, hook: Hook) {
    count(stats::PACKETS);
    if hook.direction == Direction::Egress {
        count(stats::EGRESS);
    }
    let tcp = match parse_tcp(ctx) {
        Ok(t) => t,
        Err(reason) => {
            count(reason);
            return;
        }
    };
    let mut weight = 1;
    if tcp.flags & (TCP_SYN | TCP_RST) == TCP_SYN {
        match sample(&tcp) {
            Some(w) => weight = w,
            None => {
                count(stats::SAMPLED_OUT);
                return;
            }
        }
    } else if tcp.flags & TCP_RST != 0
        && sampled_away(
            (u64::from(tcp.src) << 16) | u64::from(tcp.sport),
            tcp.flow_hash,
        )
    {
        // A flooded endpoint's RST to a flow whose SYN was not recorded (a flood on a closed
        // port): it would join nothing, and one record per flood SYN is what sampling avoids.
        count(stats::SAMPLED_OUT);
        return;
    }
    let Some(why) = reason(tcp.flags, tcp.flow_hash) else {
        count(stats::NOT_SELECTED);
        return;
    };
    count(stats::SELECTED);
    let n = nworkers();
    let worker = if n > 1 { tcp.flow_hash % n } else { 0 };
    let Some(mut entry) = reserve(worker) else {
        count(stats::RING_FULL);
        return;
    };
    let rec = entry.as_mut_ptr();
    let wire_len = ctx.wire_len();
    let avail = wire_len.saturating_sub(tcp.l3_off);
    let mut cap = if tcp.hdr_len < avail {
        tcp.hdr_len
    } else {
        avail
    };
    if cap > SNAP_LEN {
        cap = SNAP_LEN;
    }
    // SAFETY: `rec` points at a reserved, exclusively owned ring-buffer slot of
    // size_of::<PacketRecord>() bytes; every field is written before submit.
    unsafe {
        (*rec).ts_ns = aya_ebpf::helpers::bpf_ktime_get_ns();
        (*rec).flow_hash = tcp.flow_hash;
        (*rec).ifindex = hook.ifindex;
        (*rec).rx_queue = hook.rx_queue;
        (*rec).wire_len = if wire_len > 0xffff {
            0xffff
        } else {
            wire_len as u16
        };
        (*rec).cap_len = cap as u16;
        (*rec).direction = hook.direction as u8;
        (*rec).reason = why as u8;
        (*rec).family = tcp.family;
        (*rec).vlan_depth = tcp.vlan_depth + hook.vlan_offloaded;
        (*rec).weight = weight;
    }
    // The verifier needs the copy length provably in [1, SNAP_LEN].
    if cap == 0 || cap > SNAP_LEN {
        count(stats::LOAD_FAILED);
        entry.discard(0);
        return;
    }
    // SAFETY: the destination is the record's `data` array (SNAP_LEN bytes) and cap ≤ SNAP_LEN.
    let rc = unsafe { ctx.load_raw(tcp.l3_off as u32, (*rec).data.as_mut_ptr(), cap as u32) };
    if rc != 0 {
        count(stats::LOAD_FAILED);
        entry.discard(0);
        return;
    }
    entry.submit(wakeup_flag(pending(worker)));
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// Unread bytes at which the worker is woken: ~146 records. Below it no record wakes the
/// worker (its poll times out every few ms instead): a wakeup per record (the ring's default
/// when the reader keeps up) costs an irq_work and a scheduler wakeup on the packet path.
const WAKEUP_BYTES: u64 = 32 * 1024;

/// Wake the reader when this record takes the backlog across [`WAKEUP_BYTES`] (and on every
/// record past four times that, in case a wakeup raced the reader going to sleep).
#[inline(always)]
fn wakeup_flag(pending: u64) -> u64 {
    let rec = core::mem::size_of::<synscope_common::PacketRecord>() as u64 + 8;
    if (pending >= WAKEUP_BYTES && pending < WAKEUP_BYTES + rec) || pending >= 4 * WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
