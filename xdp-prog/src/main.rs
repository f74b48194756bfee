//! synscope's BPF entry points. Each calls a `try_*` body and always lets the packet go on:
//! no path of these programs may drop a host's packet.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic add on map values: the BPF target offers no AtomicU64 read-modify-write methods.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod select;
#[cfg(target_arch = "bpf")]
mod tap;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{
        bindings::{TC_ACT_UNSPEC, xdp_action},
        macros::{classifier, raw_tracepoint, xdp},
        programs::{RawTracePointContext, TcContext, XdpContext},
    };
    use synscope_common::Direction;

    use crate::select::{Hook, select};

    /// XDP ingress selector for inline mode: records selected TCP packets, passes everything.
    /// Declared frags-aware (multi-buffer): every read goes through `bpf_xdp_load_bytes`, which
    /// handles fragments, and it lets drivers such as veth keep GSO/GRO packets whole instead
    /// of segmenting them for a single-buffer program (measured: a 6× throughput loss on veth).
    #[xdp(frags)]
    pub fn synscope_ingress(ctx: XdpContext) -> u32 {
        // SAFETY: `ctx.ctx` is the kernel's xdp_md for this invocation.
        let (ifindex, rx_queue) =
            unsafe { ((*ctx.ctx).ingress_ifindex, (*ctx.ctx).rx_queue_index) };
        select(
            &ctx,
            Hook {
                direction: Direction::Ingress,
                ifindex,
                rx_queue,
                vlan_offloaded: 0,
            },
        );
        xdp_action::XDP_PASS
    }

    /// Tap-mode selector (mirror port): selected frames to AF_XDP, the rest dropped or passed.
    #[xdp]
    pub fn synscope_tap(ctx: XdpContext) -> u32 {
        crate::tap::tap(&ctx)
    }

    /// Benchmark ceiling (bench/src/capture.rs): count every frame and drop it — what the XDP
    /// hook costs with no work at all. Never attached by `synscope` itself.
    #[xdp]
    pub fn synscope_count_drop(_ctx: XdpContext) -> u32 {
        crate::maps::count(synscope_common::stats::PACKETS);
        xdp_action::XDP_DROP
    }

    /// Benchmark ceiling for inline mode (bench/src/capture.rs): count every frame at TC
    /// ingress and pass it on to the stack — inline mode's hook on virtual devices, and the
    /// stack's own work on every packet, with no selection at all. Never attached by `synscope`.
    #[classifier]
    pub fn synscope_count_pass(_ctx: TcContext) -> i32 {
        crate::maps::count(synscope_common::stats::PACKETS);
        TC_ACT_UNSPEC
    }

    /// TC ingress selector for inline mode on virtual devices (veth, bridges, ...), where XDP
    /// is no driver fast path and generic XDP must copy cloned skbs (bench/RESULTS.md): the
    /// same selection on the skb as it is. Returns TC_ACT_UNSPEC (tcx's TCX_NEXT).
    #[classifier]
    pub fn synscope_ingress_tc(ctx: TcContext) -> i32 {
        select_skb(&ctx, Direction::Ingress)
    }

    /// TC egress selector for inline mode: the host's own SYN-ACKs, RSTs and ACKs only show up
    /// here. Returns "no verdict" (TC_ACT_UNSPEC, tcx's TCX_NEXT) so the packet goes on and any
    /// program attached after this one still runs.
    #[classifier]
    pub fn synscope_egress(ctx: TcContext) -> i32 {
        select_skb(&ctx, Direction::Egress)
    }

    /// The selector on an skb (TC hooks): a VLAN tag the kernel took off the data into the
    /// skb (ingress) or will insert (egress) counts as one more tag.
    #[inline(always)]
    fn select_skb(ctx: &TcContext, direction: Direction) -> i32 {
        // SAFETY: `ctx.skb.skb` is the kernel's __sk_buff for this invocation.
        let (ifindex, queue, vlan) = unsafe {
            let skb = &*ctx.skb.skb;
            (skb.ifindex, skb.queue_mapping, skb.vlan_present)
        };
        select(
            ctx,
            Hook {
                direction,
                ifindex,
                rx_queue: if direction == Direction::Ingress {
                    queue
                } else {
                    0
                },
                vlan_offloaded: u8::from(vlan != 0),
            },
        );
        TC_ACT_UNSPEC
    }

    /// Inline mode on the host itself: why the TCP stack sent a RST.
    #[raw_tracepoint(tracepoint = "tcp_send_reset")]
    pub fn synscope_send_reset(ctx: RawTracePointContext) -> i32 {
        crate::kernel::send_reset(&ctx);
        0
    }

    /// Inline mode on the host itself: why the TCP stack dropped a packet.
    #[raw_tracepoint(tracepoint = "kfree_skb")]
    pub fn synscope_kfree_skb(ctx: RawTracePointContext) -> i32 {
        crate::kernel::kfree_skb(&ctx);
        0
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // Unreachable: the verifier rejects programs that could panic at run time.
        loop {}
    }
}

/// Host builds (`cargo build --workspace`) compile this crate too; the program only exists
/// for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
