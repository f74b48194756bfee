//! synscope's BPF entry points. Each calls a `try_*` body and always lets the packet go on:
//! no path of these programs may drop a host's packet.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod select;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

    /// XDP ingress selector for inline mode: records TCP control packets, passes everything.
    #[xdp]
    pub fn synscope_ingress(ctx: XdpContext) -> u32 {
        crate::select::try_ingress(&ctx);
        xdp_action::XDP_PASS
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
