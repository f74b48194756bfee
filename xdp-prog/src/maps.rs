//! Every map of the selector, each with its purpose.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use synscope_common::stats;

/// Records of selected packets for userspace. Userspace sets the size at load time
/// (`--ring-size`); a full ring costs a record (counted in `RING_FULL`), never a packet.
#[map]
pub static RECORDS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-CPU verdict counters, indexed by `synscope_common::stats`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// Adds one to counter `idx` of this CPU.
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot: only this CPU's program invocation touches it, and BPF programs
        // are not preempted on the same CPU while running.
        unsafe { *p += 1 };
    }
}
