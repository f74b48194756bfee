//! The three-way handshake: SYN streams and their retransmission backoff, SYN-ACKs (TCP Fast
//! Open included), the completing ACK, and the verdicts `syn_unanswered`,
//! `syn_retransmitted`, `synack_unacked`, `synack_wrong_ack` and `syn_tuple_reuse`.
//!
//! Timing (`docs/anomalies.md`, "Timing"): a SYN stream is unanswered only once its client
//! stopped retransmitting. After each SYN the next one is due one backoff later (Linux 6.18:
//! 1 s, four times, then doubling; classic Linux: 1 s, then doubling; Windows: 3 s, then
//! doubling), so the stream is given up when nothing came within `syn_timeout` (+ a quarter,
//! ≤ 1 s) of a single SYN, or within twice the last gap (at least 1 s, + half the gap, ≤ 1 s)
//! of a retransmission. The same rule, with `synack_timeout`, settles the server's SYN-ACK
//! stream.

use serde_json::{Map, Value};

use super::{
    conn::{C, Conn, S, State},
    engine::{Ctx, Ended, Engine, MS, Packet, SEC},
    event::{Event, Kind},
    seq::seq_lt,
    stats::Latency,
};
use crate::{
    evidence,
    flow::{Endpoint, FlowKey, TimerKind, table::FlowClass},
    wire::TcpFlags,
};

/// When a stream whose last transmission was at `last`, `gap` after the one before (0 for
/// the first), counts as given up: after the first, `base` plus a quarter (at most 1 s); after
/// a retransmission, twice the gap (the next backoff; at least 1 s, the kernels' initial RTO)
/// plus half the gap (at most 1 s) for jitter.
pub(super) fn quiet_deadline(last: u64, gap: u64, base: u64) -> u64 {
    let (wait, slack) = if gap == 0 {
        (base, (base / 4).min(SEC))
    } else {
        (gap.saturating_mul(2).max(SEC), (gap / 2).min(SEC))
    };
    last.saturating_add(wait.saturating_add(slack))
}

const ONE_WAY_CLIENT: &str =
    "no packet from the client host was captured: a one-way vantage cannot see the answer";

impl Engine {
    pub(super) fn on_syn(
        &mut self,
        slot: u32,
        server_ep: Endpoint,
        p: &Packet<'_>,
        out: &mut Vec<Event>,
    ) {
        let now = p.ts_ns;
        let seg = p.seg;
        let tsval = seg.options.timestamps.map(|t| t.0);
        let cfg_syn = self.ctx.cfg.syn_timeout;
        let pending_syn = self.table.is_armed(slot, TimerKind::Syn);
        let pending_synack = self.table.is_armed(slot, TimerKind::SynAck);
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        if conn.syn_count > 0 && seg.seq == conn.client_isn {
            // A retransmission of the same SYN: the deadline moves with the backoff. A copy
            // sooner than any retransmission timer (a network duplicate) counts but does not
            // move it.
            let gap = now.saturating_sub(conn.syn_last);
            // A flood that replays the same SYNs is SYN packets all the same.
            let client_ip = Endpoint::from(seg.src).ip;
            self.ctx
                .tally
                .syn(server_ep, Engine::source_hash(client_ip));
            let Some(conn) = self.table.get_mut(slot) else {
                return;
            };
            if gap < 200 * MS {
                conn.syn_count = conn.syn_count.saturating_add(1);
                let ep = self.ctx.stats(conn, server_ep);
                ep.syns += 1;
                ep.syn_retransmits += 1;
                return;
            }
            conn.syn_count = conn.syn_count.saturating_add(1);
            conn.syn_gap = gap;
            conn.syn_last = now;
            let ep = self.ctx.stats(conn, server_ep);
            ep.syns += 1;
            ep.syn_retransmits += 1;
            if conn.state == State::SynSent && !conn.retrying {
                conn.retrying = true;
                ep.syn_retry_started += 1;
            }
            if conn.state == State::SynSent && self.table.is_armed(slot, TimerKind::Syn) {
                self.table
                    .arm(slot, TimerKind::Syn, quiet_deadline(now, gap, cfg_syn));
            }
            return;
        }
        let data = seg.payload_len;
        if conn.syn_count == 0
            && matches!(conn.state, State::SynReceived | State::Established)
            && conn.synack_count > 0
            && (conn.synack_ack == seg.seq.wrapping_add(1)
                || conn.synack_ack == seg.seq.wrapping_add(1 + data))
        {
            // The SYN of a handshake whose SYN-ACK was captured first (a tap whose RX queues
            // or mirror paths reorder the two directions): the same connection, not a reuse.
            record_syn(conn, now, seg.seq, tsval, data, seg.options.fastopen);
            self.ctx.stats(conn, server_ep).syns += 1;
            return;
        }
        if conn.syn_count > 0 || conn.state != State::SynSent {
            // A new ISN on a tuple already known. An attempt the client abandoned gets its own
            // verdict first: nobody answered it while it lived (a health check's short
            // connect timeout, then the same port again).
            // Not a replacement too fast for any answer, and not an attempt the server
            // answered in any way (a RST it sent, even one the client did not take).
            let server_silent = !conn.half[S].seen || conn.half[S].fingerprint_ns < conn.syn_first;
            if conn.state == State::SynSent
                && pending_syn
                && !conn.midstream
                && server_silent
                && now.saturating_sub(conn.syn_first) >= 100 * MS
            {
                self.ctx.end_syn_retry(conn, server_ep);
                self.table.disarm(slot, TimerKind::Syn);
                self.unanswered_syn(slot, now, Ended::Replaced, out);
            }
            let Some(conn) = self.table.get_mut(slot) else {
                return;
            };
            // A collision only where the old connection is still alive or its TIME_WAIT
            // rejects the SYN, and only if the server then never answers it with a SYN-ACK
            // (a SYN-ACK clears `Rare::reuse` in `on_synack`; `unanswered_syn` reports it).
            let candidate = !conn.midstream
                && match conn.state {
                    State::SynReceived => conn.early_rst().is_none() && pending_synack,
                    State::Established => true,
                    State::SynSent | State::Midstream => false,
                    State::Closed => time_wait_rejects(conn, now, seg.seq, tsval),
                };
            let reuse =
                candidate.then(|| (conn.state, (conn.syn_count > 0).then_some(conn.client_isn)));
            self.ctx.end_syn_retry(conn, server_ep);
            let mut fresh = Conn::new(conn.client, State::SynSent, conn.ifindex);
            for (f, o) in fresh.half.iter_mut().zip(&conn.half) {
                f.seen = o.seen;
                f.fingerprint = o.fingerprint;
                f.fingerprint_ns = o.fingerprint_ns;
            }
            if reuse.is_some() {
                fresh.rare_mut().reuse = reuse;
            }
            fresh.unwatched = now < self.ctx.cfg.watched_from;
            *conn = fresh;
            for k in TimerKind::ALL {
                self.table.disarm(slot, k);
            }
            self.table.set_class(slot, FlowClass::HalfOpen);
        }
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        record_syn(conn, now, seg.seq, tsval, data, seg.options.fastopen);
        if p.weight > 1 {
            conn.rare_mut().syn_weight = p.weight;
        }
        conn.listener_age_ms = self
            .ctx
            .shared
            .last_handshake(&server_ep)
            .map_or(u32::MAX, |t| {
                u32::try_from(now.saturating_sub(t) / MS).unwrap_or(u32::MAX - 1)
            });
        let ep = self.ctx.stats(conn, server_ep);
        ep.syns += 1;
        if seg.options.fastopen.is_some() {
            ep.tfo_syns += 1;
        }
        let client_ip = Endpoint::from(seg.src).ip;
        self.ctx
            .tally
            .syn(server_ep, Engine::source_hash(client_ip));
        self.table
            .arm(slot, TimerKind::Syn, quiet_deadline(now, 0, cfg_syn));
        if let Some(t) = tsval
            && let Some(hit) = self.paws_check(client_ip, server_ep.ip, t, now)
            && let Some(conn) = self.table.get_mut(slot)
        {
            conn.rare_mut().paws = Some(hit);
        }
    }

    pub(super) fn on_synack(
        &mut self,
        slot: u32,
        server_ep: Endpoint,
        p: &Packet<'_>,
        out: &mut Vec<Event>,
    ) {
        let now = p.ts_ns;
        let seg = p.seg;
        let cfg_synack = self.ctx.cfg.synack_timeout;
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        match conn.state {
            State::SynSent if conn.syn_count > 0 || conn.synack_count == 0 => {
                // RFC 7413: a Fast Open SYN-ACK acks the SYN's data (accepted) or only the
                // SYN (not accepted); both complete the handshake.
                let lo = conn.client_isn.wrapping_add(1);
                let hi = lo.wrapping_add(conn.syn_data);
                if conn.syn_count > 0 && seg.ack != lo && seg.ack != hi {
                    let ev = evidence! { "expected_ack" => lo, "ack" => seg.ack };
                    self.emit(out, slot, Kind::SynackWrongAck, S, None, now, ev);
                    return;
                }
                let tfo_accepted = conn.syn_data > 0 && seg.ack == hi;
                let (syn_first, syn_last, syn_count) =
                    (conn.syn_first, conn.syn_last, conn.syn_count);
                // An answered SYN did no harm: since Linux 4.10 clients randomize the TSval
                // offset per connection, so backwards TSvals across connections are normal.
                // Only a SYN that then goes unanswered is reported (see `paws.rs`).
                // Nor is a reused tuple: the server took the new SYN (a SYN the server
                // answers with a SYN-ACK is never a collision).
                if let Some(r) = conn.rare.as_mut() {
                    r.paws = None;
                    r.reuse = None;
                }
                conn.state = State::SynReceived;
                conn.server_isn = seg.seq;
                conn.synack_ack = seg.ack;
                conn.synack_first = now;
                conn.synack_last = now;
                conn.synack_count = 1;
                let acked_early = conn.half[C]
                    .last
                    .is_some_and(|l| l.has_ack && l.ack == seg.seq.wrapping_add(1));
                self.ctx.end_syn_retry(conn, server_ep);
                let ep = self.ctx.stats(conn, server_ep);
                if tfo_accepted {
                    ep.tfo_data_accepted += 1;
                }
                if syn_count > 0 {
                    ep.record(Latency::SynToSynack, now.saturating_sub(syn_last));
                    self.ctx.tally.synack(server_ep);
                }
                self.table.disarm(slot, TimerKind::Syn);
                self.table
                    .arm(slot, TimerKind::SynAck, quiet_deadline(now, 0, cfg_synack));
                if syn_count > 1 {
                    let ev = evidence! {
                        "syn_count" => syn_count,
                        "extra_delay_us" => syn_last.saturating_sub(syn_first) / 1000,
                    };
                    self.emit(out, slot, Kind::SynRetransmitted, C, None, now, ev);
                }
                // The client's completing ACK was captured before this SYN-ACK (a tap whose
                // queues invert the two directions): the handshake is complete now.
                if acked_early {
                    self.establish(slot, server_ep, now);
                }
            }
            State::SynReceived if conn.synack_count == 0 => {
                // A flow first seen at its SYN-ACK (oriented from it): the handshake's
                // server side, without the SYN (it may still come, reordered).
                conn.server_isn = seg.seq;
                conn.synack_ack = seg.ack;
                conn.synack_first = now;
                conn.synack_last = now;
                conn.synack_count = 1;
                self.table
                    .arm(slot, TimerKind::SynAck, quiet_deadline(now, 0, cfg_synack));
            }
            State::Established if conn.synack_count == 0 && seg.seq == conn.server_isn => {
                // The SYN-ACK of a handshake whose completing ACK was captured first (the
                // client's ACK proved an answer this capture had not shown yet).
                conn.synack_ack = seg.ack;
                conn.synack_first = now;
                conn.synack_last = now;
                conn.synack_count = 1;
            }
            State::SynReceived | State::Established if seg.seq == conn.server_isn => {
                let prev = conn.synack_last;
                let gap = now.saturating_sub(conn.synack_last);
                conn.synack_count = conn.synack_count.saturating_add(1);
                if gap < 200 * MS {
                    // A copy on the path (no retransmission timer is that short): counted,
                    // but it neither moves the deadline nor is a retransmission.
                    return;
                }
                conn.synack_gap = gap;
                conn.synack_last = now;
                // A SYN-ACK answering a retransmitted SYN never brings the deadline forward.
                let due = quiet_deadline(now, gap, cfg_synack);
                if conn.state == State::SynReceived
                    && let Some(d) = self.table.deadline(slot, TimerKind::SynAck)
                {
                    self.table.arm(slot, TimerKind::SynAck, due.max(d));
                }
                self.check_ack_dropped(slot, now, prev, out);
            }
            _ => {}
        }
    }

    /// Non-control segments: the completing ACK (or what proves a handshake the capture
    /// did not fully show), a probe's late ACK, a bare ACK answering a SYN, then FINs.
    pub(super) fn on_segment(
        &mut self,
        slot: u32,
        role: usize,
        server_ep: Endpoint,
        p: &Packet<'_>,
        out: &mut Vec<Event>,
    ) {
        let now = p.ts_ns;
        let seg = p.seg;
        let ack = seg.flags.contains(TcpFlags::ACK);
        let fin = seg.flags.contains(TcpFlags::FIN);
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        // The server's socket talks after a probe's late ACK (a banner: SSH, SMTP, FTP): the
        // client's kernel will reset it, nothing leaks.
        if role == S && conn.late_ack_ns != 0 && (seg.payload_len > 0 || fin) {
            self.table.disarm(slot, TimerKind::Leak);
        }
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        // A completing ACK acks the SYN-ACK; with TCP Fast Open it may also ack data the
        // server sent right after it (Linux accepts any ack in (ISN, SND.NXT] there).
        // From the client, an ack beyond the SYN-ACK proves it too: the server sends data only
        // once the handshake is complete (a capture of control packets only, or a live one
        // whose follow-up was lost, shows the client's FIN first).
        // Bounded, with the client's own seq in its sequence space: a segment of an older
        // connection on the tuple, or a blind one, does not complete it.
        const SPAN: u32 = 1 << 28;
        let in_span = |from: u32, x: u32| !seq_lt(x, from) && x.wrapping_sub(from) < SPAN;
        let client_next = conn.client_isn.wrapping_add(1).wrapping_add(conn.syn_data);
        let beyond_by_client = role == C
            && in_span(conn.server_isn, seg.ack)
            && (conn.syn_count == 0 || in_span(client_next, seg.seq));
        let completes = ack
            && (seg.ack == conn.server_isn.wrapping_add(1)
                || (seq_lt(conn.server_isn.wrapping_add(1), seg.ack)
                    && (beyond_by_client
                        || conn.half[S].next_seq.is_some_and(|n| !seq_lt(n, seg.ack)))));
        match conn.state {
            State::SynReceived if role == C && completes => {
                if conn.early_rst().is_some() {
                    self.on_late_ack(slot, now, out);
                } else {
                    self.establish(slot, server_ep, now);
                }
            }
            State::SynSent if role == C && ack && conn.syn_count > 0 => {
                // A client in SYN-SENT sends nothing but SYNs: an ACK proves it received a
                // SYN-ACK this vantage did not capture (one-way, or lost after the tap).
                conn.server_isn = seg.ack.wrapping_sub(1);
                self.establish(slot, server_ep, now);
            }
            State::SynSent
                if role == S && ack && conn.syn_count > 0 && conn.bare_ack().is_none() =>
            {
                // A bare ACK in answer to a SYN: the server holds an older connection on this
                // tuple (Linux answers a SYN that PAWS or its sequence check rejects in
                // TIME_WAIT this way, `tcp_timewait_state_process`).
                // On a reused tuple that is the collision's evidence; whether it cost the
                // connection is known at the stream's end: a retransmission may still be
                // answered (the client's RST to this ACK ends TIME_WAIT).
                conn.rare_mut().bare_ack = Some((seg.seq, seg.ack));
            }
            State::SynReceived
                if role == S && (seg.payload_len > 0 || fin) && !conn.half[C].seen =>
            {
                // Server-only vantage: the server sends data or closes, so its peer completed
                // the handshake (a one-way capture never shows the client's ACK).
                self.establish(slot, server_ep, now);
            }
            _ => {}
        }
        self.on_fin_state(slot, role, server_ep, p);
    }

    /// The handshake completed at `now` (the client's ACK of the SYN-ACK).
    pub(super) fn establish(&mut self, slot: u32, server_ep: Endpoint, now: u64) {
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let (syn_first, synack_last) = (conn.syn_first, conn.synack_last);
        self.ctx
            .tally
            .completed(server_ep, u64::from(conn.syn_weight()));
        conn.state = State::Established;
        conn.ack_ns = now;
        self.ctx.end_syn_retry(conn, server_ep);
        let st = self.ctx.stats(conn, server_ep);
        st.established += 1;
        st.last_handshake_ns = now;
        if synack_last != 0 {
            st.record(Latency::SynackToAck, now.saturating_sub(synack_last));
        }
        if syn_first != 0 {
            st.record(Latency::ConnectTotal, now.saturating_sub(syn_first));
        }
        self.ctx.shared.handshake_done(&server_ep, now);
        self.table.disarm(slot, TimerKind::Syn);
        self.table.disarm(slot, TimerKind::SynAck);
        self.table.set_class(slot, FlowClass::Open);
        self.table.arm(
            slot,
            TimerKind::Expire,
            now.saturating_add(self.ctx.cfg.established_idle),
        );
    }

    /// A SYN or SYN-ACK stream's deadline passed (or the input ended, or the flow was
    /// evicted) without an answer.
    pub(super) fn on_pending_end(
        &mut self,
        kind: TimerKind,
        slot: u32,
        at: u64,
        ended: Ended,
        out: &mut Vec<Event>,
    ) {
        let key = self.table.key(slot);
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        match kind {
            TimerKind::Syn if conn.state == State::SynSent && conn.syn_count > 0 => {
                self.ctx.end_syn_retry(conn, key.get(conn.client.peer()));
                self.unanswered_syn(slot, at, ended, out);
                self.table.arm(
                    slot,
                    TimerKind::Expire,
                    at.saturating_add(self.ctx.cfg.closed_linger),
                );
            }
            TimerKind::SynAck if conn.state == State::SynReceived && conn.early_rst().is_none() => {
                let (kind, subject, one_way, ev) =
                    unacked_synack_verdict(&self.ctx, &key, conn, ended);
                self.emit(out, slot, kind, subject, one_way, at, ev);
                self.table.arm(
                    slot,
                    TimerKind::Expire,
                    at.saturating_add(self.ctx.cfg.closed_linger),
                );
            }
            _ => {}
        }
    }

    /// The SYN of a reused tuple was not taken (a bare ACK answered it, or nothing did):
    /// `syn_tuple_reuse`.
    pub(super) fn report_reuse(&mut self, slot: u32, at: u64, out: &mut Vec<Event>) {
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let Some((prev_state, prev_isn)) = conn.reuse() else {
            return;
        };
        let ev = evidence! {
            "prev_state" => prev_state.as_str(),
            "prev_isn" => prev_isn,
            "isn" => conn.client_isn,
            "server_answer" => conn.bare_ack().map(|_| "bare_ack"),
        };
        self.emit(out, slot, Kind::SynTupleReuse, C, None, at, ev);
    }
}

/// The evidence of `syn_unanswered`.
pub(super) fn unanswered_syn_evidence(conn: &Conn, ended: Ended) -> Map<String, Value> {
    evidence! {
        "syn_count" => conn.syn_count,
        "isn" => conn.client_isn,
        "tsval" => conn.syn_tsval,
        "span_ms" => conn.syn_last.saturating_sub(conn.syn_first) / MS,
        "ended" => ended.as_str(),
        "server_answer" => conn.bare_ack().map(|_| "bare_ack"),
    }
}

/// `synack_unacked`: one-way when nothing from the client host was ever captured.
pub(super) fn unacked_synack_verdict(
    ctx: &Ctx,
    key: &FlowKey,
    conn: &Conn,
    ended: Ended,
) -> (Kind, usize, Option<&'static str>, Map<String, Value>) {
    let one_way = (!ctx.reverse_seen(key, conn, S)).then_some(ONE_WAY_CLIENT);
    let ev = evidence! {
        "synack_count" => conn.synack_count,
        "span_ms" => conn.synack_last.saturating_sub(conn.synack_first) / MS,
        "ended" => ended.as_str(),
    };
    (Kind::SynackUnacked, S, one_way, ev)
}

/// Whether the server's TIME_WAIT from the connection that closed on this tuple rejects a new
/// SYN (Linux `tcp_timewait_state_process`, RFC 6191): only the side that closed first holds
/// TIME_WAIT (none after a RST), for 2·MSL; it takes a SYN whose TSval is newer, or without
/// timestamps one whose ISN lies beyond the old connection's sequence space.
fn time_wait_rejects(conn: &Conn, now: u64, isn: u32, tsval: Option<u32>) -> bool {
    let (fc, fs) = (conn.half[C].fin_ns, conn.half[S].fin_ns);
    let server_first = fs != 0 && (fc == 0 || fs <= fc);
    if conn.ack_ns == 0
        || conn.closed_by_rst
        || !server_first
        || now.saturating_sub(conn.closed_ns) >= 60 * SEC
    {
        return false;
    }
    let rcv_nxt = conn.half[C].next_seq;
    let beyond = rcv_nxt.map(|n| seq_lt(n, isn));
    match (conn.client_tsval_before, tsval) {
        // PAWS in TIME_WAIT (window 0): an older TSval is rejected; an equal one passes PAWS
        // and is then taken with an ISN beyond the old sequence space, a newer one always.
        (Some(recent), Some(v)) => {
            let d = recent.wrapping_sub(v) as i32;
            d > 0 || (d == 0 && beyond == Some(false))
        }
        _ => beyond == Some(false),
    }
}

/// The first SYN of a handshake.
fn record_syn(conn: &mut Conn, now: u64, isn: u32, tsval: Option<u32>, data: u32, tfo: Option<u8>) {
    conn.syn_first = now;
    conn.syn_last = now;
    conn.syn_gap = 0;
    conn.syn_count = 1;
    conn.client_isn = isn;
    conn.syn_tsval = tsval;
    conn.syn_data = data;
    conn.tfo = tfo;
}
