//! The fixed-size record a BPF selector writes for every selected packet.

/// Bytes of the packet, from the start of the IP header, copied into each record: enough for
/// an IPv4 header with options (≤ 60) or an IPv6 header with a few extension headers, plus a
/// TCP header with all its options (≤ 60).
pub const SNAP_LEN: usize = 192;

/// One selected packet, as written by the kernel into a ring buffer.
///
/// `data[..cap_len]` holds the packet from its IP header on (`family` says which version);
/// link-layer headers are not copied. `wire_len` is the frame's full length at the hook.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PacketRecord {
    /// `bpf_ktime_get_ns()` at the hook: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// [`crate::symmetric_flow_hash`] of the packet's addresses and ports.
    pub flow_hash: u32,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    /// RX queue (ingress) or 0 (egress).
    pub rx_queue: u32,
    /// Length of the whole frame (link layer included) at the hook.
    pub wire_len: u16,
    /// Valid bytes in `data`.
    pub cap_len: u16,
    /// [`Direction`] as `u8`.
    pub direction: u8,
    /// [`Reason`] as `u8`.
    pub reason: u8,
    /// IP version of `data`: 4 or 6.
    pub family: u8,
    /// Number of 802.1Q/802.1ad tags that were skipped.
    pub vlan_depth: u8,
    /// Packets this record stands for: flood sampling skips SYNs (SYN-ACKs) of a flooded
    /// endpoint and the next recorded one carries their count (see [`FloodSlot`]). 0 or 1:
    /// itself alone.
    pub weight: u32,
    /// The packet from its IP header on, `cap_len` bytes valid.
    pub data: [u8; SNAP_LEN],
}

const _: () = assert!(core::mem::size_of::<PacketRecord>() == 32 + SNAP_LEN);
const _: () = assert!(core::mem::align_of::<PacketRecord>() == 8);

impl PacketRecord {
    /// Size of a record in bytes, as the ring buffer carries it.
    pub const SIZE: usize = core::mem::size_of::<PacketRecord>();
}

/// Where the packet was seen relative to the host the program is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    /// Received by the interface (XDP).
    Ingress = 0,
    /// Sent by the host through the interface (TC egress).
    Egress = 1,
}

impl TryFrom<u8> for Direction {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            0 => Ok(Self::Ingress),
            1 => Ok(Self::Egress),
            other => Err(other),
        }
    }
}

/// Why the selector kept the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// SYN, FIN or RST set.
    Control = 1,
    /// Inside a flow's handshake follow window (the packets right after a SYN or SYN-ACK).
    Follow = 2,
}

impl TryFrom<u8> for Reason {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(Self::Control),
            2 => Ok(Self::Follow),
            other => Err(other),
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: PacketRecord is repr(C), Copy, has no padding bytes left implicit (asserted above)
// and every bit pattern is a valid value of each field.
unsafe impl aya::Pod for PacketRecord {}

/// The tag tap mode writes in front of each redirected frame (XDP metadata area,
/// `bpf_xdp_adjust_meta`): AF_XDP copies it into the UMEM right before the frame's data.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TapMeta {
    /// `bpf_ktime_get_ns()` at the hook: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// [`crate::symmetric_flow_hash`] of the packet's addresses and ports.
    pub flow_hash: u32,
    /// Interface the frame arrived on.
    pub ifindex: u32,
    /// RX queue the frame arrived on.
    pub rx_queue: u32,
    /// [`Direction`] as `u8` (always ingress on a tap).
    pub direction: u8,
    /// [`Reason`] as `u8`.
    pub reason: u8,
    /// Number of 802.1Q/802.1ad tags in front of the IP header.
    pub vlan_depth: u8,
    /// Set to [`TapMeta::MAGIC`], so userspace can tell a tagged frame from a stale headroom.
    pub magic: u8,
}

const _: () = assert!(core::mem::size_of::<TapMeta>() == 24);

impl TapMeta {
    /// Size in bytes (a multiple of 4, as `bpf_xdp_adjust_meta` requires).
    pub const SIZE: usize = core::mem::size_of::<TapMeta>();
    pub const MAGIC: u8 = 0x5c;
}

/// What the kernel said about a connection, from a tracing program on the host's TCP stack:
/// a RST it sent (`tcp:tcp_send_reset`, with its `sk_rst_reason`) or a TCP packet it dropped
/// (`skb:kfree_skb`, with its `skb_drop_reason`). Written into the same worker ring as the
/// flow's packet records (the flow hash picks it), so it reaches the worker in order with
/// them: after the packet it is about, before the RST it announces.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelRecord {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// `KERNEL_SEND_RESET` or `KERNEL_DROP`.
    pub kind: u8,
    /// 4 or 6.
    pub family: u8,
    /// The dropped packet's TCP flags (drops; 0 for a RST sent).
    pub tcp_flags: u8,
    /// The socket's state (`TCP_*` as the kernel numbers them), 0 when no socket.
    pub state: u8,
    /// `sk_rst_reason` or `skb_drop_reason`, as this kernel numbers them.
    pub reason: u32,
    /// Source and destination of the packet concerned: the RST sent, or the packet dropped.
    /// IPv4 addresses in the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub _pad: [u8; 4],
}

/// [`KernelRecord::kind`]: a RST the host sent.
pub const KERNEL_SEND_RESET: u8 = 1;
/// [`KernelRecord::kind`]: a TCP packet the host dropped.
pub const KERNEL_DROP: u8 = 2;

const _: () = assert!(core::mem::size_of::<KernelRecord>() == 56);
const _: () = assert!(core::mem::size_of::<KernelRecord>() != core::mem::size_of::<PacketRecord>());

impl KernelRecord {
    /// Size of a record in bytes, as the ring buffer carries it.
    pub const SIZE: usize = core::mem::size_of::<KernelRecord>();
}

#[cfg(feature = "user")]
// SAFETY: KernelRecord is repr(C), Copy, its padding is an explicit field (size asserted
// above) and every bit pattern is a valid value of each field.
unsafe impl aya::Pod for KernelRecord {}

/// Flood sampling state of one server endpoint on one CPU (the `FLOOD` per-CPU LRU hash,
/// keyed by the endpoint's folded address << 16 | port). When an endpoint receives more SYNs
/// per second than the loader's threshold, only flows whose hash falls in a 1/n subset are
/// recorded; the skipped SYNs and SYN-ACKs are counted here and the next record of the
/// endpoint carries them in its `weight`, so counts stay exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodSlot {
    /// `bpf_ktime_get_ns()` second of `syns`.
    pub sec: u32,
    /// SYNs to the endpoint in second `sec`, and in the second before.
    pub syns: u32,
    pub prev: u32,
    pub _pad: u32,
    /// SYNs / SYN-ACKs skipped so far, and of those, the ones a record already carried.
    pub skipped_syn: u64,
    pub carried_syn: u64,
    pub skipped_synack: u64,
    pub carried_synack: u64,
}

const _: () = assert!(core::mem::size_of::<FloodSlot>() == 48);

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, only integers, no padding (size asserted above): every bit pattern is
// valid.
unsafe impl aya::Pod for FloodSlot {}
