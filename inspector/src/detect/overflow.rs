//! `accept_queue_overflow`: a live listener that drops what completes or opens handshakes.
//! (a) `ack_dropped`: the client's completing ACK was seen, the client sent data the server
//! never acknowledged, and the server still retransmits its SYN-ACK (Linux drops the ACK — and
//! everything after it — of a full accept queue with `tcp_abort_on_overflow=0`). A SYN-ACK
//! retransmitted after a bare ACK alone is no evidence: `TCP_DEFER_ACCEPT` listeners (nginx
//! `deferred`, Apache's `AcceptFilter`) drop bare ACKs by design, and an ACK lost after the
//! tap looks the same; nor is a SYN-ACK that answers a retransmitted SYN.
//! (a) is told at the second such retransmission: the first may cross a slow ACK.
//! (b) `syn_dropped`: a retransmitted SYN stream to an endpoint that completed other handshakes
//! less than `listener_alive` before its first SYN ends unanswered: the listener is alive but
//! drops SYNs (a lone SYN, a stateless scanner's, proves nothing).
//! Where the host's own counters are heard (inline), both need the kernel to have counted a
//! listen-queue overflow or drop since the connection began: a SYN a firewall dropped in
//! front of a busy listener is `syn_unanswered`, not an overflow.

use serde_json::Value;

use super::{
    conn::{C, S},
    engine::{Ended, Engine, MS},
    event::{Event, Kind},
    seq::seq_lt,
};
use crate::evidence;

impl Engine {
    /// A SYN-ACK retransmission after the client's completing ACK (`prev_synack`: when the
    /// SYN-ACK before it was seen): case (a).
    pub(super) fn check_ack_dropped(
        &mut self,
        slot: u32,
        now: u64,
        prev_synack: u64,
        out: &mut Vec<Event>,
    ) {
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        // The server's own retransmission timer starts at 1 s (TCP_TIMEOUT_INIT): a SYN-ACK
        // sooner than that after the previous one answers a retransmitted SYN or is a copy on
        // the path, and so is one that follows a later SYN.
        let not_timer = conn.syn_last > prev_synack || now.saturating_sub(prev_synack) < 900 * MS;
        if conn.ack_ns == 0 || conn.early_rst().is_some() || not_timer {
            return;
        }
        if !self.ctx.shared.listen_drops_since(conn.ack_ns) {
            return;
        }
        let first_data = conn.client_isn.wrapping_add(1).wrapping_add(conn.syn_data);
        let sent = conn.half[C].next_seq.filter(|&n| seq_lt(first_data, n));
        let unacked = sent.is_some_and(|n| conn.half[S].acked.is_none_or(|a| seq_lt(a, n)));
        if !unacked {
            return;
        }
        // The first retransmission may cross a slow ACK (a 1.5 s round trip is longer than the
        // server's 1 s timer); a listener that drops the ACK and the data retransmits again.
        // Inline the host's counters confirm it already (checked above): the first counts.
        conn.synack_after_ack = conn.synack_after_ack.saturating_add(1);
        let needed = if self.ctx.shared.listen_counters_heard() {
            1
        } else {
            2
        };
        if conn.synack_after_ack < needed {
            return;
        }
        let ev = evidence! {
            "signature" => "ack_dropped",
            "synack_after_ack" => conn.synack_after_ack,
            "stall_us" => now.saturating_sub(conn.ack_ns) / 1000,
            "last_handshake_age_ms" => Value::Null,
        };
        self.emit(out, slot, Kind::AcceptQueueOverflow, S, None, now, ev);
    }

    /// A SYN stream of `slot` ended unanswered at `at`: case (b) if the listener is alive
    /// and PAWS does not explain the silence better, else `syn_unanswered`; then the PAWS
    /// collision it may carry.
    pub(super) fn unanswered_syn(
        &mut self,
        slot: u32,
        at: u64,
        ended: Ended,
        out: &mut Vec<Event>,
    ) {
        let key = self.table.key(slot);
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let paws = conn.rare.as_mut().and_then(|r| r.paws.take());
        if conn.reuse().is_some() {
            // The new attempt on a reused tuple was not taken: the collision is the verdict
            // (and the PAWS collision it may carry).
            self.report_reuse(slot, at, out);
            if let Some((prev, age, ts)) = paws {
                self.emit_paws(out, slot, at, prev, age, ts, false);
            }
            return;
        }
        let bare_ack = conn.bare_ack();
        // A capture that never saw the server's host answer anything cannot tell a queue that
        // drops SYNs from a direction it does not see.
        let server_heard = self.ctx.reverse_seen(&key, conn, C);
        // A stream a real client retransmitted: a lone SYN (a stateless scanner's) that goes
        // unanswered says nothing about the listener's queue, unless the host's counters say.
        let heard = self.ctx.shared.listen_counters_heard();
        let alive = Some(conn.listener_age_ms)
            .filter(|&age| age != u32::MAX)
            .filter(|&age| u64::from(age) * MS < self.ctx.cfg.listener_alive)
            .filter(|_| server_heard)
            .filter(|_| conn.syn_count > 1 || heard)
            .filter(|_| paws.is_none() && bare_ack.is_none())
            .filter(|_| self.ctx.shared.listen_drops_since(conn.syn_first));
        if let Some(last) = alive {
            let ev = evidence! {
                "signature" => "syn_dropped",
                "syn_count" => conn.syn_count,
                "span_ms" => conn.syn_last.saturating_sub(conn.syn_first) / MS,
                "ended" => ended.as_str(),
                "synack_after_ack" => Value::Null,
                "stall_us" => Value::Null,
                "last_handshake_age_ms" => last,
            };
            self.emit(out, slot, Kind::AcceptQueueOverflow, C, None, at, ev);
        } else {
            let ev = super::handshake::unanswered_syn_evidence(conn, ended);
            self.emit(out, slot, Kind::SynUnanswered, C, None, at, ev);
        }
        if let Some((prev, age, ts)) = paws {
            self.emit_paws(out, slot, at, prev, age, ts, false);
        }
    }
}
