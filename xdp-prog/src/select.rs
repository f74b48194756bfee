//! The selection decision and the record write.

use aya_ebpf::{EbpfContext, helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use synscope_common::{Direction, PacketRecord, Reason, SNAP_LEN, stats};

use crate::{
    maps::{RECORDS, count},
    parse::parse_tcp,
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

/// Counts the packet, and writes a record when it is a TCP control packet.
#[inline(always)]
pub fn try_ingress(ctx: &XdpContext) {
    count(stats::PACKETS);
    let tcp = match parse_tcp(ctx) {
        Ok(t) => t,
        Err(reason) => {
            count(reason);
            return;
        }
    };
    if tcp.flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
        count(stats::NOT_SELECTED);
        return;
    }
    count(stats::SELECTED);
    let Some(mut entry) = RECORDS.reserve::<PacketRecord>(0) else {
        count(stats::RING_FULL);
        return;
    };
    let rec = entry.as_mut_ptr();
    let wire_len = ctx.data_end() - ctx.data();
    let avail = wire_len - tcp.l3_off;
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
        (*rec).ifindex = (*ctx.ctx).ingress_ifindex;
        (*rec).rx_queue = (*ctx.ctx).rx_queue_index;
        (*rec).wire_len = wire_len as u16;
        (*rec).cap_len = cap as u16;
        (*rec).direction = Direction::Ingress as u8;
        (*rec).reason = Reason::Control as u8;
        (*rec).family = tcp.family;
        (*rec).vlan_depth = tcp.vlan_depth;
        (*rec)._pad = [0; 4];
    }
    // The verifier needs the copy length provably in [1, SNAP_LEN].
    if cap == 0 || cap > SNAP_LEN {
        count(stats::LOAD_FAILED);
        entry.discard(0);
        return;
    }
    // SAFETY: the destination is the record's `data` array (SNAP_LEN bytes) and cap ≤ SNAP_LEN;
    // the helper itself bounds-checks the packet side.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.as_ptr() as *mut _,
            tcp.l3_off as u32,
            (*rec).data.as_mut_ptr() as *mut _,
            cap as u32,
        )
    };
    if rc != 0 {
        count(stats::LOAD_FAILED);
        entry.discard(0);
        return;
    }
    entry.submit(0);
}
