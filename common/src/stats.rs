//! Indices of the per-CPU verdict counters (`STATS` map) and their names.
//!
//! Every packet the selector sees increments `PACKETS` and exactly one of the outcome
//! counters (`SELECTED`, `NOT_SELECTED`, `SAMPLED_OUT`, `NOT_TCP` or one `UNPARSABLE_*`); a selected packet
//! whose record could not be written also increments `RING_FULL` or `LOAD_FAILED`.
//! `EGRESS` counts the subset of `PACKETS` seen by the TC egress program, `FOLLOWED` the subset
//! of `SELECTED` chosen by the handshake follow window rather than a control flag.
//! Every packet is passed on to the kernel whatever its outcome.

/// Packets seen (and passed on: the selector never drops).
pub const PACKETS: u32 = 0;
/// TCP packets selected (a record was attempted).
pub const SELECTED: u32 = 1;
/// TCP packets that were not selected (no control flag, not followed).
pub const NOT_SELECTED: u32 = 2;
/// Frames that are not IPv4/IPv6 TCP.
pub const NOT_TCP: u32 = 3;
/// Frame ended inside a header.
pub const UNPARSABLE_TRUNCATED: u32 = 4;
/// Non-first IP fragment: the TCP header is elsewhere.
pub const UNPARSABLE_FRAGMENT: u32 = 5;
/// IPv6 extension header chain longer than the selector follows.
pub const UNPARSABLE_EXT_CHAIN: u32 = 6;
/// IP header with an impossible length field.
pub const UNPARSABLE_BAD_HEADER: u32 = 7;
/// Ring buffer full: the record was lost, the packet was not.
pub const RING_FULL: u32 = 8;
/// Copying the headers into the record failed (record discarded).
pub const LOAD_FAILED: u32 = 9;

/// Packets seen by the egress program (a subset of `PACKETS`).
pub const EGRESS: u32 = 10;
/// Selected because the flow was inside its handshake follow window (a subset of `SELECTED`).
pub const FOLLOWED: u32 = 11;
/// A SYN or SYN-ACK took over a follow slot another flow still had budget in: that flow's
/// remaining follow-ups are not recorded (a bigger `--follow-slots` makes this rarer).
pub const FOLLOW_COLLISION: u32 = 12;

/// Tap mode: selected frames redirected to an AF_XDP socket (a subset of `SELECTED`).
pub const TAP_REDIRECTED: u32 = 13;
/// Tap mode: selected frames on a queue without a socket, passed to the kernel instead.
pub const TAP_NO_SOCKET: u32 = 14;
/// Tap mode: the metadata area could not be grown; the frame went untagged.
pub const TAP_META_FAILED: u32 = 15;

/// Flood sampling: SYNs (to) and SYN-ACKs (from) a flooded endpoint that were not recorded;
/// the next record of the endpoint carries their count (`PacketRecord::weight`). An outcome
/// of its own: not part of `SELECTED`.
pub const SAMPLED_OUT: u32 = 16;

/// Kernel-reason facts not written because this CPU already wrote its share for the second
/// (a flood of packets the host drops or resets would otherwise make records without limit).
pub const KERNEL_FACTS_LIMITED: u32 = 17;

/// Number of counters.
pub const COUNT: u32 = 18;

/// Stable names (metric labels, summary lines), indexed by counter.
pub const NAMES: [&str; COUNT as usize] = [
    "packets",
    "selected",
    "not_selected",
    "not_tcp",
    "unparsable_truncated",
    "unparsable_fragment",
    "unparsable_ext_chain",
    "unparsable_bad_header",
    "ring_full",
    "load_failed",
    "egress",
    "followed",
    "follow_collision",
    "tap_redirected",
    "tap_no_socket",
    "tap_meta_failed",
    "sampled_out",
    "kernel_facts_limited",
];
