//! One connection's state, as the rules of the other files of `detect/` read and write it.

use super::reset::{Effect, LastSeg, Phase, RstClass};
use crate::flow::Side;

/// Index of the client's / server's half in per-direction arrays.
pub(super) const C: usize = 0;
pub(super) const S: usize = 1;

/// Where the handshake stands, as the capture shows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum State {
    SynSent,
    SynReceived,
    Established,
    Closed,
    /// First seen at a FIN or RST: no handshake verdicts.
    Midstream,
}

impl State {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            State::SynSent => "syn_sent",
            State::SynReceived => "syn_received",
            State::Established => "established",
            State::Closed => "closed",
            State::Midstream => "midstream",
        }
    }
}

/// What one side sent, as far as it was captured.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Half {
    /// A packet of this direction was captured.
    pub seen: bool,
    /// Next sequence number after what this side sent.
    pub next_seq: Option<u32>,
    /// Highest ack this side sent: its RCV.NXT as it told the peer.
    pub acked: Option<u32>,
    /// Last advertised window (raw) and the window scale this side offered in its SYN.
    pub window: u16,
    /// The last segment was a SYN or SYN-ACK, whose window is never scaled.
    pub window_of_syn: bool,
    pub wscale: Option<u8>,
    pub last: Option<LastSeg>,
    pub fin_ns: u64,
    pub fin_end: u32,
    pub fin_count: u16,
    pub fin_acked: bool,
    /// What this side had acked of its peer when it sent its FIN: an ack beyond it later
    /// shows the peer sent more (data or its FIN) even where the capture did not show it.
    pub acked_at_fin: Option<u32>,
    pub rst_seen: bool,
    /// Fingerprint and capture time of the last segment (a copy of it is a duplicate).
    /// Its lowest bit: the segment came through the egress hook (inline).
    pub fingerprint: u64,
    pub fingerprint_ns: u64,
}

/// A client RST seen while the server was in SYN_RECV (a probe, if an ACK follows).
#[derive(Clone, Copy, Debug)]
pub(super) struct EarlyRst {
    pub ns: u64,
    pub tsval: Option<u32>,
    /// The seq lies in the server's receive window (Linux `tcp_check_req` accepts it there).
    pub seq_ok: bool,
    /// The timestamp fails PAWS against the SYN's: the server drops the RST.
    pub paws_fail: bool,
    /// Inline on the prober itself: this host sent the RST (TC egress).
    pub sent_here: bool,
}

/// A RST that refused the SYN, held for the reorder window: a handshake that completes
/// after it shows the client never took it.
#[derive(Clone, Copy, Debug)]
pub(super) struct HeldRst {
    pub ns: u64,
    pub class: RstClass,
    pub phase: Phase,
    pub effect: Effect,
    pub seq: u32,
    pub ack: Option<u32>,
    pub expected_seq: Option<u32>,
}

/// One connection.
#[derive(Clone, Debug)]
pub(super) struct Conn {
    pub client: Side,
    /// The server endpoint's stats id ([`super::stats::Endpoints::id`]), taken on first use.
    pub ep: Option<u32>,
    pub state: State,
    pub ifindex: u32,
    pub half: [Half; 2],
    pub syn_first: u64,
    pub syn_last: u64,
    /// Gap between the last two SYNs (the client's current backoff), 0 with one SYN.
    pub syn_gap: u64,
    pub syn_count: u16,
    /// How long before the first SYN (ms) the endpoint last completed a handshake, `u32::MAX`
    /// when none is remembered: a listener alive before the SYN (accept-queue overflow (b)).
    pub listener_age_ms: u32,
    /// The SYN was retransmitted and no answer came yet (the `syn_retrying` gauge).
    pub retrying: bool,
    /// First seen mid-stream: no handshake verdicts, RST phase `midstream`.
    pub midstream: bool,
    /// First seen before both directions were watched (`Config::watched_from`): no verdicts.
    pub unwatched: bool,
    pub client_isn: u32,
    pub syn_tsval: Option<u32>,
    /// Payload carried by the SYN (TCP Fast Open), and its TFO option's cookie length.
    pub syn_data: u32,
    pub tfo: Option<u8>,
    pub synack_first: u64,
    pub synack_last: u64,
    pub synack_gap: u64,
    pub synack_count: u16,
    pub server_isn: u32,
    /// The ack number of the first SYN-ACK.
    pub synack_ack: u32,
    pub ack_ns: u64,
    pub synack_after_ack: u16,
    pub data_seen: bool,
    /// What only a few connections need (probes, refusals held for reordering, PAWS
    /// collisions, bare-ACK answers, tunnels): boxed, so the common connection stays small.
    pub rare: Option<Box<Rare>>,
    pub late_ack_ns: u64,
    /// Kinds already reported on this connection (bits of `Kind::bit`).
    pub reported: u32,
    pub closed_ns: u64,
    /// An accepted RST ended the connection: nobody holds TIME_WAIT.
    pub closed_by_rst: bool,
    /// The newest TSval the client sent (remembered for the PAWS check when the server
    /// closes first).
    pub client_tsval: Option<u32>,
    /// `client_tsval` before the packet being processed (what a TIME_WAIT remembers).
    pub client_tsval_before: Option<u32>,
}

/// The rarely needed part of a connection.
#[derive(Clone, Debug, Default)]
pub(super) struct Rare {
    /// A client RST seen while the server was in SYN_RECV.
    pub early_rst: Option<EarlyRst>,
    /// A RST that refused the SYN, held for the reorder window.
    pub held_rst: Option<HeldRst>,
    /// PAWS NAT collision pending its answer: (prev_tsval, prev_age_ns, tsval).
    pub paws: Option<(u32, u64, u32)>,
    /// The server answered the SYN with a bare ACK (no SYN): what Linux does when PAWS or its
    /// sequence check rejects a SYN that hits a TIME_WAIT socket.
    pub bare_ack: Option<(u32, u32)>,
    /// This attempt reused the tuple of a connection that was still alive or whose TIME_WAIT
    /// rejects it: (prev_state, prev_isn). A collision only if the server does not answer the
    /// new SYN with a SYN-ACK.
    pub reuse: Option<(State, Option<u32>)>,
    /// SYNs the SYN's record stood for when more than one (flood sampling: the ones the
    /// kernel skipped too); 0 otherwise.
    pub syn_weight: u32,
    /// The encapsulation the connection was seen in.
    pub tunnel: Option<crate::wire::Tunnel>,
    /// What the host's kernel said about the connection's packets (inline mode).
    pub kernel: Vec<super::kernel::Note>,
}

impl Conn {
    /// The rare part, created on first use.
    pub(super) fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }
    pub(super) fn early_rst(&self) -> Option<EarlyRst> {
        self.rare.as_ref().and_then(|r| r.early_rst)
    }
    /// SYNs the connection's SYN record stood for (1 unless flood sampling skipped some).
    pub(super) fn syn_weight(&self) -> u32 {
        self.rare.as_ref().map_or(1, |r| r.syn_weight.max(1))
    }
    pub(super) fn reuse(&self) -> Option<(State, Option<u32>)> {
        self.rare.as_ref().and_then(|r| r.reuse)
    }
    pub(super) fn bare_ack(&self) -> Option<(u32, u32)> {
        self.rare.as_ref().and_then(|r| r.bare_ack)
    }
    pub(super) fn tunnel(&self) -> Option<crate::wire::Tunnel> {
        self.rare.as_ref().and_then(|r| r.tunnel)
    }

    pub(super) fn new(client: Side, state: State, ifindex: u32) -> Self {
        Self {
            client,
            ep: None,
            state,
            ifindex,
            half: [Half::default(); 2],
            syn_first: 0,
            syn_last: 0,
            syn_gap: 0,
            syn_count: 0,
            listener_age_ms: u32::MAX,
            retrying: false,
            midstream: state == State::Midstream,
            unwatched: false,
            client_isn: 0,
            syn_tsval: None,
            syn_data: 0,
            tfo: None,
            synack_first: 0,
            synack_last: 0,
            synack_gap: 0,
            synack_count: 0,
            server_isn: 0,
            synack_ack: 0,
            ack_ns: 0,
            synack_after_ack: 0,
            data_seen: false,
            rare: None,
            late_ack_ns: 0,
            reported: 0,
            closed_ns: 0,
            closed_by_rst: false,
            client_tsval: None,
            client_tsval_before: None,
        }
    }

    /// Role (C or S) of the sender on `side`.
    pub(super) fn role_of(&self, side: Side) -> usize {
        if side == self.client { C } else { S }
    }

    /// The handshake is still open: a SYN or SYN-ACK waits for its answer.
    pub(super) fn pending(&self) -> bool {
        matches!(self.state, State::SynSent | State::SynReceived)
            || (self.late_ack_ns != 0 && self.early_rst().is_some())
    }

    /// Whether a segment from `role` with `seq` and (if it carries one) `ack` shows data
    /// exchanged after the handshake, from its sequence numbers alone: a live capture sees no
    /// data segments, and a follow-table collision may lose the few it would have seen.
    pub(super) fn data_by_seq(&self, role: usize, seq: u32, ack: Option<u32>) -> bool {
        if self.synack_count == 0 || self.syn_count == 0 {
            return self.data_seen;
        }
        let (own_next, peer_next) = if role == C {
            (
                self.client_isn.wrapping_add(1).wrapping_add(self.syn_data),
                self.server_isn.wrapping_add(1),
            )
        } else {
            (
                self.server_isn.wrapping_add(1),
                self.client_isn.wrapping_add(1).wrapping_add(self.syn_data),
            )
        };
        self.data_seen || seq != own_next || ack.is_some_and(|a| a != peer_next)
    }

    /// The receive window `role` advertised last, scaled when both SYNs offered scaling
    /// (RFC 7323 §2.2; a SYN's own window is never scaled).
    pub(super) fn window_of(&self, role: usize) -> u32 {
        let h = &self.half[role];
        let scale = match (self.half[C].wscale, self.half[S].wscale) {
            (Some(_), Some(_)) if !h.window_of_syn => h.wscale.unwrap_or(0).min(14),
            _ => 0,
        };
        u32::from(h.window) << scale
    }
}
