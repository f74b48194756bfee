//! Every RST: its class (refused, passive, active, probe_abort, out_of_window), the phase it
//! hit and its effect on the receiver, decided by the receiver's acceptance rules; then what
//! it does to the connection (`syn_rejected`, a probe's early RST, the end). A RST that
//! refuses a SYN is held for `reorder_window`: if the handshake completes after it, the
//! client never took it and it is reported with effect `none` instead.

use serde_json::Value;

use super::{
    conn::{C, EarlyRst, HeldRst, S, State},
    engine::{Engine, Packet},
    event::{Event, Kind},
    seq::syn_recv_paws_reject,
};
use crate::{
    evidence,
    flow::{Endpoint, TimerKind},
    wire::TcpFlags,
};

/// Class of a RST; `as_str` is the stable `rst_class` value.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum RstClass {
    Refused = 0,
    Passive = 1,
    Active = 2,
    ProbeAbort = 3,
    OutOfWindow = 4,
}

impl RstClass {
    pub const ALL: [RstClass; 5] = [
        Self::Refused,
        Self::Passive,
        Self::Active,
        Self::ProbeAbort,
        Self::OutOfWindow,
    ];
    pub fn as_str(self) -> &'static str {
        [
            "refused",
            "passive",
            "active",
            "probe_abort",
            "out_of_window",
        ][self as usize]
    }
}

/// Where in its life the connection was when the RST came.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Phase {
    Handshake = 0,
    JustEstablished = 1,
    Established = 2,
    Closing = 3,
    /// A flow first seen mid-stream (no handshake captured).
    Midstream = 4,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Self::Handshake,
        Self::JustEstablished,
        Self::Established,
        Self::Closing,
        Self::Midstream,
    ];
    pub fn as_str(self) -> &'static str {
        [
            "handshake",
            "just_established",
            "established",
            "closing",
            "midstream",
        ][self as usize]
    }
}

/// What a RST did to its receiver (RFC 9293 §3.10.7, RFC 5961 §3.2).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Effect {
    /// Acceptable: the receiver's connection is gone.
    Reset,
    /// In the window but not at RCV.NXT: answered by a challenge ACK, connection unharmed.
    ChallengeAck,
    /// Not acceptable (outside the window, a SYN-SENT RST whose ACK does not acknowledge the
    /// SYN, or a later packet showed the receiver carried on): ignored.
    None,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reset => "reset",
            Self::ChallengeAck => "challenge_ack",
            Self::None => "none",
        }
    }
}

/// The last segment seen from one side (for the passive-RST rule).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LastSeg {
    pub seq: u32,
    pub ack: u32,
    pub has_ack: bool,
    /// Sequence space the segment used: payload plus one for SYN and for FIN.
    pub seq_len: u32,
}

/// What the classifier needs to know about the RST and its connection.
#[derive(Clone, Copy, Debug)]
pub struct RstInput {
    pub from_client: bool,
    pub has_ack: bool,
    pub seq: u32,
    pub ack: u32,
    /// The RST answers the client's SYN: the server never sent a SYN-ACK. Then `syn_acks`
    /// is the range of acceptable ack numbers (ISN+1 ..= ISN+1+SYN data).
    pub answers_syn: Option<(u32, u32)>,
    /// The receiver's RCV.NXT as far as the capture shows it: the highest ack the receiver
    /// sent, or else the sender's next sequence number.
    pub expected_seq: Option<u32>,
    /// The sender's next sequence number (what it sent, which may still be in flight).
    pub sender_next: Option<u32>,
    /// The receiver's last advertised window, scaled (bytes).
    pub rcv_wnd: u32,
    /// The receiver got a FIN from the sender (Linux also accepts RCV.NXT − 1 then).
    pub fin_received: bool,
    /// Whether every segment of the flow is visible (pcap, tap). Inline mode sees only
    /// control packets and the follow window, so only a seq *behind* the expected one is
    /// known to be outside.
    pub full_visibility: bool,
    pub peer_last: Option<LastSeg>,
    /// ns since the completing ACK, if the handshake completed.
    pub since_established: Option<u64>,
    pub closing: bool,
    pub midstream: bool,
    pub data_seen: bool,
}

/// Windows of the classification (ns).
#[derive(Clone, Copy, Debug)]
pub struct RstWindows {
    pub probe_window: u64,
    pub race_window: u64,
}

/// The RST's effect by the receiver's acceptance rules (RFC 9293 §3.10.7.3-4, RFC 5961 §3.2,
/// Linux `tcp_validate_incoming`): a seq between the receiver's acknowledged point and what
/// the sender had sent could be exactly RCV.NXT when it arrived (acks in flight), so it
/// resets; elsewhere in the window it draws a challenge ACK; outside, it is dropped.
pub fn effect(r: &RstInput) -> Effect {
    if let Some((lo, hi)) = r.answers_syn {
        // SYN-SENT: only a RST whose ACK acknowledges the SYN is acceptable.
        let ok = r.has_ack && !super::seq::seq_lt(r.ack, lo) && !super::seq::seq_lt(hi, r.ack);
        return if ok { Effect::Reset } else { Effect::None };
    }
    let Some(exp) = r.expected_seq else {
        return Effect::Reset;
    };
    let off = r.seq.wrapping_sub(exp);
    if r.seq == exp || (r.fin_received && r.seq == exp.wrapping_sub(1)) {
        return Effect::Reset;
    }
    if !r.full_visibility {
        return if super::seq::seq_lt(r.seq, exp) {
            Effect::None
        } else {
            Effect::Reset
        };
    }
    if let Some(next) = r.sender_next
        && !super::seq::seq_lt(r.seq, exp)
        && !super::seq::seq_lt(next, r.seq)
    {
        return Effect::Reset;
    }
    if off < r.rcv_wnd.max(1) {
        Effect::ChallengeAck
    } else {
        Effect::None
    }
}

/// Classifies a RST. Rules in order: refused (answers a SYN, acceptable); out_of_window (the
/// receiver does not take it: [`effect`] is not `reset`); probe_abort (client RST within
/// `probe_window` of the completing ACK, no data); passive (RST without ACK whose seq is the
/// ack of the peer's last segment, or RST+ACK acking exactly a peer segment that had no
/// ACK); otherwise active with ACK, passive without.
pub fn classify(r: &RstInput, w: &RstWindows) -> (RstClass, Phase, Effect) {
    let phase = match r.since_established {
        None if r.midstream => Phase::Midstream,
        None => Phase::Handshake,
        Some(_) if r.closing => Phase::Closing,
        Some(d) if d <= w.race_window => Phase::JustEstablished,
        Some(_) => Phase::Established,
    };
    let eff = effect(r);
    if r.answers_syn.is_some() && !r.from_client && eff == Effect::Reset {
        return (RstClass::Refused, Phase::Handshake, eff);
    }
    if eff != Effect::Reset {
        return (RstClass::OutOfWindow, phase, eff);
    }
    if r.from_client && !r.data_seen && r.since_established.is_some_and(|d| d <= w.probe_window) {
        return (RstClass::ProbeAbort, phase, eff);
    }
    if let Some(p) = r.peer_last {
        if !r.has_ack && p.has_ack && r.seq == p.ack {
            return (RstClass::Passive, phase, eff);
        }
        if r.has_ack && !p.has_ack && r.ack == p.seq.wrapping_add(p.seq_len) {
            return (RstClass::Passive, phase, eff);
        }
    }
    let class = if r.has_ack {
        RstClass::Active
    } else {
        RstClass::Passive
    };
    (class, phase, eff)
}

fn reset_evidence(
    from_client: bool,
    class: RstClass,
    phase: Phase,
    effect: Effect,
    seq: u32,
    ack: Option<u32>,
    expected_seq: Option<u32>,
) -> serde_json::Map<String, Value> {
    evidence! {
        "from" => if from_client { "client" } else { "server" },
        "rst_class" => class.as_str(),
        "phase" => phase.as_str(),
        "effect" => effect.as_str(),
        "seq" => seq,
        "ack" => ack,
        "expected_seq" => expected_seq,
    }
}

impl Engine {
    pub(super) fn on_rst(
        &mut self,
        slot: u32,
        role: usize,
        server_ep: Endpoint,
        p: &Packet<'_>,
        out: &mut Vec<Event>,
    ) {
        let now = p.ts_ns;
        let seg = p.seg;
        let has_ack = seg.flags.contains(TcpFlags::ACK);
        let cfg = &self.ctx.cfg;
        let windows = RstWindows {
            probe_window: cfg.probe_window,
            race_window: cfg.race_window,
        };
        let (full_visibility, reorder) = (cfg.full_visibility, cfg.reorder_window);
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let receiver = 1 - role;
        // The server never sent a SYN-ACK: this RST answers the client's SYN (retransmitted
        // ones too, after an earlier refusal).
        let answers_syn = (role == S
            && conn.syn_count > 0
            && conn.synack_count == 0
            && conn.ack_ns == 0
            && matches!(conn.state, State::SynSent | State::Closed))
        .then(|| {
            let lo = conn.client_isn.wrapping_add(1);
            (lo, lo.wrapping_add(conn.syn_data))
        });
        let in_syn_recv = role == C
            && conn.state == State::SynReceived
            && conn.ack_ns == 0
            && conn.early_rst().is_none();
        let input = RstInput {
            from_client: role == C,
            has_ack,
            seq: seg.seq,
            ack: seg.ack,
            answers_syn,
            expected_seq: conn.half[receiver].acked.or(conn.half[role].next_seq),
            sender_next: conn.half[role].next_seq,
            rcv_wnd: conn.window_of(receiver),
            fin_received: conn.half[role].fin_ns != 0,
            full_visibility,
            peer_last: conn.half[receiver].last,
            since_established: (conn.ack_ns != 0).then(|| now.saturating_sub(conn.ack_ns)),
            closing: conn.half.iter().any(|h| h.fin_ns != 0),
            midstream: conn.midstream,
            data_seen: conn.data_by_seq(role, seg.seq, has_ack.then_some(seg.ack)),
        };
        let (mut class, phase, mut eff) = classify(&input, &windows);
        // A server in SYN_RECV (Linux `tcp_check_req`) ignores a RST+ACK whose ack is not its
        // ISN+1, drops one that fails PAWS (window 0) or lies outside [RCV.NXT, RCV.NXT +
        // window), and otherwise resets the request: no challenge ACK there.
        let tsval = seg.options.timestamps.map(|t| t.0);
        let paws_fail = in_syn_recv
            && matches!((conn.syn_tsval, tsval), (Some(recent), Some(v)) if syn_recv_paws_reject(recent, v));
        let in_window = eff != Effect::None;
        if in_syn_recv {
            let bad_ack = has_ack && seg.ack != conn.server_isn.wrapping_add(1);
            (class, eff) = if paws_fail || !in_window || bad_ack {
                (RstClass::OutOfWindow, Effect::None)
            } else if has_ack {
                (RstClass::Active, Effect::Reset)
            } else {
                (RstClass::Passive, Effect::Reset)
            };
        }
        // The client resets a handshake whose SYN-ACK the server had to retransmit: its kernel
        // no longer knows the connection (it gave up; the SYN-ACKs were lost on the way). No
        // probe: the failed handshake is a half-open `synack_unacked`, ended by the client.
        // Only a no-socket RST (no ACK flag: the kernel's answer to a segment with one) after a
        // server-timer retransmission (>= 900 ms, not answering a retransmitted SYN): a
        // prober's RST|ACK after a SYN-ACK that answered its retransmitted SYN is a probe.
        let half_open_end = in_syn_recv
            && !has_ack
            && conn.synack_count > 1
            && conn.synack_gap >= 900 * super::engine::MS
            && conn.synack_last.saturating_sub(conn.syn_last) >= 900 * super::engine::MS;
        let first_rst = !conn.half[role].rst_seen;
        conn.half[role].rst_seen = true;
        // A probe: the client resets right after its handshake without data (its FIN, if it
        // sent one first, counted already), or while the server is still in SYN_RECV. Its
        // first RST only: a second one is the same probe.
        let mut routine_probe = false;
        if role == C
            && first_rst
            && !half_open_end
            && (in_syn_recv || (class == RstClass::ProbeAbort && conn.half[C].fin_ns == 0))
            && let Some(c) = self.ctx.probe(Endpoint::from(seg.src).ip, server_ep)
        {
            c.probes += 1;
            // A recognised prober's routine probe is counted (prober table, metrics), not
            // told: a 100 ms health check would be 864,000 events a day per real server.
            // What goes wrong with a probe (reordering, leak) is still an event.
            routine_probe = c.configured || c.probes > super::prober::RECOGNIZED_AFTER;
        }
        self.ctx.tally.rst(Endpoint::from(seg.src).ip, class);
        let ack = has_ack.then_some(seg.ack);
        if answers_syn.is_some() && class == RstClass::Refused {
            // Held: a handshake completing within the reorder window overrules it.
            conn.rare_mut().held_rst = Some(HeldRst {
                ns: now,
                class,
                phase,
                effect: eff,
                seq: seg.seq,
                ack,
                expected_seq: input.expected_seq,
            });
            self.ctx.end_syn_retry(conn, server_ep);
            self.table.disarm(slot, TimerKind::Syn);
            self.table
                .arm(slot, TimerKind::Settle, now.saturating_add(reorder));
            return;
        }
        self.ctx
            .endpoints
            .get(server_ep)
            .count_rst(class, phase, role == C);
        let ev = reset_evidence(
            role == C,
            class,
            phase,
            eff,
            seg.seq,
            ack,
            input.expected_seq,
        );
        if routine_probe {
            self.ctx.counters.probe_resets += 1;
        } else {
            self.emit(out, slot, Kind::Reset, role, None, now, ev);
        }
        if half_open_end {
            let key = self.table.key(slot);
            let Some(conn) = self.table.get_mut(slot) else {
                return;
            };
            let (kind, subject, one_way, ev) = super::handshake::unacked_synack_verdict(
                &self.ctx,
                &key,
                conn,
                super::engine::Ended::ClientReset,
            );
            self.ctx
                .emit(out, &key, conn, kind, subject, one_way, now, ev);
            self.table.disarm(slot, TimerKind::SynAck);
            if eff == Effect::Reset {
                self.close(slot, now);
            } else {
                self.table.arm(
                    slot,
                    TimerKind::Expire,
                    now.saturating_add(self.ctx.cfg.closed_linger),
                );
            }
            return;
        }
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        if in_syn_recv {
            // The client resets while the server is in SYN_RECV: a probe, if an ACK follows.
            conn.rare_mut().early_rst = Some(EarlyRst {
                ns: now,
                tsval,
                seq_ok: in_window,
                paws_fail,
                sent_here: self.ctx.cfg.host_vantage && p.egress,
            });
            self.table.disarm(slot, TimerKind::SynAck);
            // Stay in SYN_RECV: a rejected RST leaves the server's request socket alive. The
            // flow leaves the table unless the late ACK comes.
            self.table.arm(
                slot,
                TimerKind::Expire,
                now.saturating_add(reorder)
                    .saturating_add(self.ctx.cfg.closed_linger),
            );
            return;
        }
        if role == C && conn.state == State::SynSent {
            // A client in SYN-SENT resets what it could not accept (a stale ACK, a SYN-ACK
            // of another connection) and keeps trying: its attempt is not over.
            return;
        }
        if eff == Effect::Reset && conn.state != State::Closed {
            conn.closed_by_rst = true;
        }
        if conn.late_ack_ns != 0 && (role == S || eff == Effect::Reset) {
            // The server answered the probe's late ACK, or took a RST after it: no leak.
            self.table.disarm(slot, TimerKind::Leak);
        }
        if eff == Effect::Reset {
            self.close(slot, now);
        }
    }

    /// The reorder window after a RST that refused a SYN is over: the refusal stands unless
    /// the handshake completed meanwhile.
    pub(super) fn on_settle(&mut self, slot: u32, out: &mut Vec<Event>) {
        let key = self.table.key(slot);
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let Some(h) = conn.rare.as_mut().and_then(|r| r.held_rst.take()) else {
            return;
        };
        let server_ep = key.get(conn.client.peer());
        let taken = conn.ack_ns == 0;
        let (class, effect) = if taken {
            (h.class, h.effect)
        } else {
            (RstClass::OutOfWindow, Effect::None)
        };
        self.ctx
            .endpoints
            .get(server_ep)
            .count_rst(class, h.phase, false);
        let ev = reset_evidence(false, class, h.phase, effect, h.seq, h.ack, h.expected_seq);
        if taken {
            // One verdict per fact: the refusing RST is the evidence of `syn_rejected` (its
            // `reset` event only with `all_resets`).
            if self.ctx.cfg.all_resets {
                self.emit(out, slot, Kind::Reset, S, None, h.ns, ev.clone());
            }
            let mut rej = evidence! { "rst_ack" => h.ack };
            rej.extend(ev);
            self.emit(out, slot, Kind::SynRejected, C, None, h.ns, rej);
            self.close(slot, h.ns);
        } else {
            self.emit(out, slot, Kind::Reset, S, None, h.ns, ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: RstWindows = RstWindows {
        probe_window: 50_000_000,
        race_window: 1_000_000,
    };

    fn base() -> RstInput {
        RstInput {
            from_client: false,
            has_ack: true,
            seq: 1000,
            ack: 2000,
            answers_syn: None,
            expected_seq: Some(1000),
            sender_next: Some(1000),
            rcv_wnd: 65535,
            fin_received: false,
            full_visibility: true,
            peer_last: None,
            since_established: Some(10_000_000_000),
            closing: false,
            midstream: false,
            data_seen: true,
        }
    }

    fn cls(r: &RstInput) -> (RstClass, Phase) {
        let (c, p, _) = classify(r, &W);
        (c, p)
    }

    #[test]
    fn rst_answering_a_syn_is_refused_only_if_it_acks_the_syn() {
        let r = RstInput {
            answers_syn: Some((1001, 1001)),
            ack: 1001,
            since_established: None,
            ..base()
        };
        assert_eq!(
            classify(&r, &W),
            (RstClass::Refused, Phase::Handshake, Effect::Reset)
        );
        // RFC 9293 §3.10.7.3: in SYN-SENT a RST without an acceptable ACK is dropped.
        let blind = RstInput { ack: 77, ..r };
        assert_eq!(
            classify(&blind, &W),
            (RstClass::OutOfWindow, Phase::Handshake, Effect::None)
        );
        let no_ack = RstInput {
            has_ack: false,
            ..r
        };
        assert_eq!(classify(&no_ack, &W).2, Effect::None);
        // TCP Fast Open: the SYN's data may be acked too.
        let tfo = RstInput {
            answers_syn: Some((1001, 1101)),
            ack: 1101,
            ..r
        };
        assert_eq!(classify(&tfo, &W).0, RstClass::Refused);
    }

    #[test]
    fn rst_ack_on_established_is_active() {
        assert_eq!(
            classify(&base(), &W),
            (RstClass::Active, Phase::Established, Effect::Reset)
        );
    }

    #[test]
    fn rst_without_ack_at_the_peers_ack_is_passive() {
        let r = RstInput {
            has_ack: false,
            peer_last: Some(LastSeg {
                seq: 5,
                ack: 1000,
                has_ack: true,
                seq_len: 10,
            }),
            ..base()
        };
        assert_eq!(cls(&r), (RstClass::Passive, Phase::Established));
    }

    #[test]
    fn passive_rst_while_the_sender_had_data_in_flight_is_accepted() {
        // The sender sent up to 1500 and lost its socket; the receiver had acked 1000 and the
        // RST carries the ack the receiver sent: RCV.NXT, not out of window.
        let r = RstInput {
            has_ack: false,
            seq: 1000,
            expected_seq: Some(1000),
            sender_next: Some(1500),
            peer_last: Some(LastSeg {
                seq: 5,
                ack: 1000,
                has_ack: true,
                seq_len: 0,
            }),
            ..base()
        };
        assert_eq!(classify(&r, &W).0, RstClass::Passive);
        // Anywhere between the receiver's ack and the sender's next seq may be RCV.NXT.
        let mid = RstInput { seq: 1200, ..r };
        assert_eq!(classify(&mid, &W).2, Effect::Reset);
    }

    #[test]
    fn client_rst_right_after_handshake_without_data_is_a_probe_abort() {
        let r = RstInput {
            from_client: true,
            data_seen: false,
            since_established: Some(2_000_000),
            ..base()
        };
        assert_eq!(cls(&r), (RstClass::ProbeAbort, Phase::Established));
        let late = RstInput {
            since_established: Some(60_000_000),
            ..r
        };
        assert_eq!(cls(&late).0, RstClass::Active, "outside the probe window");
    }

    #[test]
    fn server_passive_rst_within_the_race_window_is_just_established() {
        let r = RstInput {
            has_ack: false,
            since_established: Some(500_000),
            peer_last: Some(LastSeg {
                seq: 5,
                ack: 1000,
                has_ack: true,
                seq_len: 0,
            }),
            ..base()
        };
        assert_eq!(cls(&r), (RstClass::Passive, Phase::JustEstablished));
    }

    #[test]
    fn in_window_rst_draws_a_challenge_ack_and_outside_is_ignored() {
        let ahead = RstInput {
            seq: 1500,
            ..base()
        };
        assert_eq!(
            classify(&ahead, &W),
            (
                RstClass::OutOfWindow,
                Phase::Established,
                Effect::ChallengeAck
            )
        );
        let far = RstInput {
            seq: 1000 + 70_000,
            ..base()
        };
        assert_eq!(classify(&far, &W).2, Effect::None);
        let behind = RstInput { seq: 500, ..base() };
        assert_eq!(classify(&behind, &W).2, Effect::None);
        let ahead_inline = RstInput {
            full_visibility: false,
            ..ahead
        };
        assert_eq!(
            cls(&ahead_inline).0,
            RstClass::Active,
            "unseen data may explain it"
        );
        let behind_inline = RstInput {
            seq: 500,
            full_visibility: false,
            ..base()
        };
        assert_eq!(cls(&behind_inline).0, RstClass::OutOfWindow);
    }

    #[test]
    fn rst_after_fin_is_in_the_closing_phase_and_may_sit_on_the_fin() {
        let r = RstInput {
            closing: true,
            ..base()
        };
        assert_eq!(cls(&r), (RstClass::Active, Phase::Closing));
        let on_fin = RstInput {
            seq: 999,
            fin_received: true,
            ..r
        };
        assert_eq!(classify(&on_fin, &W).2, Effect::Reset);
    }

    #[test]
    fn midstream_flows_say_so() {
        let r = RstInput {
            since_established: None,
            midstream: true,
            expected_seq: None,
            ..base()
        };
        assert_eq!(cls(&r).1, Phase::Midstream);
    }
}
