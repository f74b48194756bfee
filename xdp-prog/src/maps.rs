//! Every map and load-time setting of the selectors, each with its purpose.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruPerCpuHashMap, PerCpuArray, RingBuf, XskMap, ring_buf::RingBufEntry},
};
use synscope_common::{FloodSlot, KernelRecord, MAX_WORKERS, PacketRecord, stats};

/// Number of userspace workers (rings in use), set by the loader; 1 ≤ N ≤ MAX_WORKERS.
#[unsafe(no_mangle)]
static NWORKERS: u32 = 1;

/// The flow hash's secret key, drawn by the loader at load time (chosen 4-tuples cannot aim
/// at one worker without it).
#[unsafe(no_mangle)]
static HASH_KEY: [u32; 2] = [0; 2];

pub fn hash_key() -> [u32; 2] {
    // SAFETY: a valid static; volatile so the loader's value is read.
    unsafe { core::ptr::read_volatile(&HASH_KEY) }
}

/// Packets followed after a SYN or SYN-ACK (both directions), set by the loader.
#[unsafe(no_mangle)]
static FOLLOW_BUDGET: u32 = 4;

/// `FOLLOW` has `FOLLOW_MASK + 1` slots (a power of two), set by the loader.
#[unsafe(no_mangle)]
static FOLLOW_MASK: u32 = (1 << 16) - 1;

/// Flood sampling: SYNs per second to one endpoint, on one CPU, above which its SYNs and
/// SYN-ACKs are sampled (set by the loader from `--flood-sample-rate`; 0: never).
#[unsafe(no_mangle)]
static SAMPLE_ABOVE: u32 = 0;

pub fn sample_above() -> u32 {
    global(&SAMPLE_ABOVE)
}

/// Flood sampling state per server endpoint (folded address << 16 | port), per CPU; the
/// least recently used endpoints give way.
#[map]
pub static FLOOD: LruPerCpuHashMap<u64, FloodSlot> = LruPerCpuHashMap::with_max_entries(8192, 0);

/// Tap mode: what happens to frames that are not selected: 1 = pass to the kernel, 0 = drop.
#[unsafe(no_mangle)]
static TAP_PASS_REST: u32 = 0;

#[inline(always)]
fn global(v: &'static u32) -> u32 {
    // SAFETY: a valid static; volatile so the loader's value is read, not the compile-time one.
    unsafe { core::ptr::read_volatile(v) }
}

pub fn nworkers() -> u32 {
    global(&NWORKERS)
}
pub fn follow_budget() -> u32 {
    global(&FOLLOW_BUDGET)
}
pub fn follow_mask() -> u32 {
    global(&FOLLOW_MASK)
}
pub fn tap_pass_rest() -> bool {
    global(&TAP_PASS_REST) != 0
}

/// Tap mode: one AF_XDP socket per RX queue, indexed by queue. A queue without a socket
/// passes its frames to the kernel (the missing-socket default), so a dead consumer fails open.
#[map]
pub static XSKS: XskMap = XskMap::with_max_entries(64, 0);

/// The handshake follow window: a direct-mapped array of tagged slots indexed by the
/// symmetric flow hash. A slot holds `flow_hash << 32 | packets left`. Shared by ingress and
/// egress and by every CPU without locks: a race or a collision costs one record more or less,
/// never a packet.
#[map]
pub static FOLLOW: Array<u64> = Array::with_max_entries(1 << 16, 0);

/// Per-CPU verdict counters, indexed by `synscope_common::stats`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// Adds one to counter `idx` of this CPU.
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        // An atomic add even on this CPU's own slot: BPF programs run with migration, not
        // preemption, disabled, so another task's invocation of the same program can preempt
        // this one between a load and a store and lose an increment (seen under CPU load:
        // `selected` one above `tap_redirected + tap_no_socket`).
        // SAFETY: `p` points at a valid, 8-byte aligned u64 slot of a per-CPU array map that
        // lives as long as the program; the verifier accepts BPF_ATOMIC_ADD on map values.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p, 1,
            )
        };
    }
}

const BPF_RB_AVAIL_DATA: u64 = 0;

/// One ring buffer per worker (`RECORDS_<i>`): a flow's records always land in the ring of
/// worker `flow_hash % NWORKERS`, so workers never share flow state. The loader sizes the
/// rings in use (`--ring-size`) and shrinks the others to one page. A full ring costs a record
/// (counted in `RING_FULL`), never a packet.
macro_rules! worker_rings {
    ($($i:literal => $name:ident),* $(,)?) => {
        $(
            #[map]
            pub static $name: RingBuf = RingBuf::with_byte_size(4096, 0);
        )*

        /// Reserves a record in worker `w`'s ring.
        #[inline(always)]
        pub fn reserve(w: u32) -> Option<RingBufEntry<PacketRecord>> {
            match w {
                $( $i => $name.reserve::<PacketRecord>(0), )*
                _ => None,
            }
        }

        /// Reserves a kernel-reason record in worker `w`'s ring.
        #[inline(always)]
        pub fn reserve_kernel(w: u32) -> Option<RingBufEntry<KernelRecord>> {
            match w {
                $( $i => $name.reserve::<KernelRecord>(0), )*
                _ => None,
            }
        }

        /// Bytes in worker `w`'s ring not yet consumed (reserved records included).
        #[inline(always)]
        pub fn pending(w: u32) -> u64 {
            match w {
                $( $i => $name.query(BPF_RB_AVAIL_DATA), )*
                _ => 0,
            }
        }
    };
}

worker_rings! {
    0 => RECORDS_0, 1 => RECORDS_1, 2 => RECORDS_2, 3 => RECORDS_3,
    4 => RECORDS_4, 5 => RECORDS_5, 6 => RECORDS_6, 7 => RECORDS_7,
    8 => RECORDS_8, 9 => RECORDS_9, 10 => RECORDS_10, 11 => RECORDS_11,
    12 => RECORDS_12, 13 => RECORDS_13, 14 => RECORDS_14, 15 => RECORDS_15,
}

const _: () = assert!(MAX_WORKERS == 16);
