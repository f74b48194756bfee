//! Types shared by synscope's BPF programs (`xdp-prog`) and its userspace inspector.
//!
//! Everything here is `#[repr(C)]`, `Copy`, explicitly padded and size-asserted, because the
//! kernel writes these bytes and userspace reads them. No `bool` or Rust enums cross the
//! boundary: small integers are converted with `TryFrom` on the user side.
#![cfg_attr(not(test), no_std)]

pub mod flow_hash;
pub mod record;
pub mod stats;

pub use flow_hash::symmetric_flow_hash;
pub use record::{
    Direction, FloodSlot, KERNEL_DROP, KERNEL_SEND_RESET, KernelRecord, PacketRecord, Reason,
    SNAP_LEN, TapMeta,
};

/// Ring buffers the kernel side declares (`RECORDS_0` …): the most userspace workers inline
/// mode can feed.
pub const MAX_WORKERS: u32 = 16;

/// Default number of packets followed after a SYN or SYN-ACK.
pub const DEFAULT_FOLLOW_BUDGET: u32 = 4;
