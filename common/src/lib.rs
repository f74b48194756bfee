//! Types shared by synscope's BPF programs (`xdp-prog`) and its userspace inspector.
//!
//! Everything here is `#[repr(C)]`, `Copy`, explicitly padded and size-asserted, because the
//! kernel writes these bytes and userspace reads them. No `bool` or Rust enums cross the
//! boundary: small integers are converted with `TryFrom` on the user side.
#![no_std]

pub mod flow_hash;
pub mod record;
pub mod stats;

pub use flow_hash::symmetric_flow_hash;
pub use record::{Direction, PacketRecord, Reason, SNAP_LEN};
