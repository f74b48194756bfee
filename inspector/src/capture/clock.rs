//! Converting kernel CLOCK_MONOTONIC timestamps (`bpf_ktime_get_ns`) to wall-clock time.

use nix::time::{ClockId, clock_gettime};

/// Offset between CLOCK_REALTIME and CLOCK_MONOTONIC, sampled once at start.
#[derive(Debug, Clone, Copy)]
pub struct MonoToWall {
    offset_ns: i128,
}

fn ns(id: ClockId) -> i128 {
    clock_gettime(id)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
        .unwrap_or(0)
}

impl MonoToWall {
    /// Samples both clocks now.
    pub fn now() -> Self {
        let mono = ns(ClockId::CLOCK_MONOTONIC);
        let real = ns(ClockId::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
        }
    }
    /// Nanoseconds since the Unix epoch for a monotonic timestamp.
    pub fn to_unix_ns(&self, mono_ns: u64) -> i128 {
        i128::from(mono_ns) + self.offset_ns
    }
    /// The current monotonic time in nanoseconds.
    pub fn monotonic_now_ns() -> u64 {
        ns(ClockId::CLOCK_MONOTONIC) as u64
    }
}
