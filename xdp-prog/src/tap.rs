//! Tap mode (a mirror/SPAN port): selected frames go to the AF_XDP socket of their RX queue,
//! tagged with a [`TapMeta`] in the XDP metadata area; the rest are dropped or passed
//! (`--tap-rest`). Never for a live host's own interface — the host would stop seeing its
//! selected packets — so the loader refuses interfaces that have IP addresses.

use aya_ebpf::{
    EbpfContext, bindings::xdp_action, helpers::generated::bpf_xdp_adjust_meta,
    programs::XdpContext,
};
use synscope_common::{Direction, TapMeta, stats};

use crate::{
    maps::{XSKS, count, tap_pass_rest},
    parse::parse_tcp,
    select::reason,
};

#[inline(always)]
fn rest() -> u32 {
    if tap_pass_rest() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// The tap verdict for one frame.
#[inline(always)]
pub fn tap(ctx: &XdpContext) -> u32 {
    count(stats::PACKETS);
    let tcp = match parse_tcp(ctx) {
        Ok(t) => t,
        Err(r) => {
            count(r);
            return rest();
        }
    };
    let Some(why) = reason(tcp.flags, tcp.flow_hash) else {
        count(stats::NOT_SELECTED);
        return rest();
    };
    count(stats::SELECTED);
    // SAFETY: `ctx.ctx` is the kernel's xdp_md for this invocation.
    let (ifindex, queue) = unsafe { ((*ctx.ctx).ingress_ifindex, (*ctx.ctx).rx_queue_index) };
    // SAFETY: the helper only moves data_meta within the frame's headroom and fails otherwise.
    let grown = unsafe { bpf_xdp_adjust_meta(ctx.as_ptr() as *mut _, -(TapMeta::SIZE as i32)) };
    if grown == 0 {
        let meta = ctx.metadata();
        // The verifier needs the metadata bounds checked against the packet start.
        if meta + TapMeta::SIZE <= ctx.data() {
            let m = meta as *mut TapMeta;
            // SAFETY: [meta, meta + SIZE) lies inside the metadata area just checked.
            unsafe {
                (*m).ts_ns = aya_ebpf::helpers::bpf_ktime_get_ns();
                (*m).flow_hash = tcp.flow_hash;
                (*m).ifindex = ifindex;
                (*m).rx_queue = queue;
                (*m).direction = Direction::Ingress as u8;
                (*m).reason = why as u8;
                (*m).vlan_depth = tcp.vlan_depth;
                (*m).magic = TapMeta::MAGIC;
            }
        } else {
            count(stats::TAP_META_FAILED);
        }
    } else {
        count(stats::TAP_META_FAILED);
    }
    match XSKS.redirect(queue, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) if action == xdp_action::XDP_REDIRECT => {
            count(stats::TAP_REDIRECTED);
            action
        }
        Ok(action) | Err(action) => {
            count(stats::TAP_NO_SOCKET);
            action
        }
    }
}
