//! The end of a connection: FINs both ways, `fin_unanswered`, and what closing leaves behind
//! (the server that closed first holds TIME_WAIT: `paws.rs` remembers its client's TSval).

use super::{
    conn::{C, S, State},
    engine::{Engine, seq_len},
    event::{Event, Kind},
    seq::seq_lt,
};
use crate::{
    evidence,
    flow::{Endpoint, TimerKind, table::FlowClass},
    wire::TcpFlags,
};

const ONE_WAY_PEER: &str =
    "no packet from the peer host was captured: a one-way vantage cannot see the answer";

impl Engine {
    /// FIN and ACK bookkeeping of a segment from `role`.
    pub(super) fn on_fin_state(
        &mut self,
        slot: u32,
        role: usize,
        server_ep: Endpoint,
        p: &super::engine::Packet<'_>,
    ) {
        let now = p.ts_ns;
        let seg = p.seg;
        let ack = seg.flags.contains(TcpFlags::ACK);
        let fin = seg.flags.contains(TcpFlags::FIN);
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let peer = 1 - role;
        if ack && conn.half[peer].fin_ns != 0 && !seq_lt(seg.ack, conn.half[peer].fin_end) {
            conn.half[peer].fin_acked = true;
        }
        if !fin {
            return;
        }
        // A probe that closes gracefully: the client's FIN right after its handshake, no data.
        if role == C
            && conn.half[C].fin_ns == 0
            && conn.ack_ns != 0
            && !conn.data_by_seq(C, seg.seq, ack.then_some(seg.ack))
            && seg.payload_len == 0
            && now.saturating_sub(conn.ack_ns) <= self.ctx.cfg.probe_window
            && let Some(c) = self.ctx.probe(Endpoint::from(seg.src).ip, server_ep)
        {
            c.probes += 1;
        }
        let h = &mut conn.half[role];
        if h.fin_ns == 0 {
            h.fin_ns = now;
            h.fin_end = seg.seq.wrapping_add(seq_len(seg));
            h.fin_count = 1;
            h.acked_at_fin = ack.then_some(seg.ack);
            if conn.half[peer].fin_ns == 0 {
                self.table.arm(
                    slot,
                    TimerKind::Fin,
                    now.saturating_add(self.ctx.cfg.fin_timeout),
                );
            }
        } else {
            h.fin_count = h.fin_count.saturating_add(1);
            if conn.state == State::Closed {
                // A FIN retransmitted after the close (LAST_ACK waiting for its ACK): the
                // closed flow stays `closed_linger` after its last FIN, so a later
                // retransmission never starts a mid-stream flow whose FIN looks unanswered.
                self.table.arm(
                    slot,
                    TimerKind::Expire,
                    now.saturating_add(self.ctx.cfg.closed_linger),
                );
            }
        }
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        if conn.half[peer].fin_ns != 0 {
            if conn.state == State::Established {
                self.ctx.stats(conn, server_ep).closed_normally += 1;
            }
            self.close(slot, now);
        }
    }

    /// The connection is over at `now` (FIN both ways, or an accepted RST).
    pub(super) fn close(&mut self, slot: u32, now: u64) {
        let key = self.table.key(slot);
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        if conn.state == State::Closed {
            return;
        }
        conn.state = State::Closed;
        conn.closed_ns = now;
        // The server closed first: it now holds TIME_WAIT and remembers the client's last
        // TSval for the PAWS check of that host's next SYNs.
        let (fc, fs) = (conn.half[C].fin_ns, conn.half[S].fin_ns);
        let server_first = fs != 0 && (fc == 0 || fs <= fc);
        let remember = conn.client_tsval.filter(|_| server_first);
        let (client, server) = (key.get(conn.client), key.get(conn.client.peer()));
        if let Some(ts) = remember {
            self.paws_remember(client.ip, server.ip, ts, now);
        }
        self.table.set_class(slot, FlowClass::Closed);
        self.table.disarm(slot, TimerKind::Syn);
        self.table.disarm(slot, TimerKind::SynAck);
        self.table.arm(
            slot,
            TimerKind::Expire,
            now.saturating_add(self.ctx.cfg.closed_linger),
        );
    }

    /// `fin_timeout` after the first FIN: unanswered if neither acked nor answered by a FIN
    /// or RST. One-way when nothing from the peer host was ever captured.
    pub(super) fn on_fin_timer(&mut self, slot: u32, deadline: u64, out: &mut Vec<Event>) {
        let key = self.table.key(slot);
        let Some(conn) = self.table.get(slot) else {
            return;
        };
        // A flow first seen at its FIN: the FIN may answer one sent before the capture saw
        // the flow (a LAST_ACK retransmission after the closed flow left the table), so its
        // silence proves nothing. In scope: FINs of connections whose opening was captured.
        if conn.midstream {
            return;
        }
        for role in [C, S] {
            let (h, p) = (&conn.half[role], &conn.half[1 - role]);
            let peer_spoke =
                matches!((h.acked_at_fin, h.acked), (Some(a), Some(b)) if seq_lt(a, b));
            // A FIN whose own sender then reset the connection (Windows closes with FIN, then
            // RST) leaves nothing to answer.
            if h.fin_ns != 0
                && !h.fin_acked
                && p.fin_ns == 0
                && !p.rst_seen
                && !h.rst_seen
                && !peer_spoke
            {
                let one_way = (!self.ctx.reverse_seen(&key, conn, role)).then_some(ONE_WAY_PEER);
                let ev = evidence! {
                    "fin_count" => h.fin_count,
                    "from" => if role == C { "client" } else { "server" },
                };
                self.emit(out, slot, Kind::FinUnanswered, role, one_way, deadline, ev);
                break;
            }
        }
    }
}
