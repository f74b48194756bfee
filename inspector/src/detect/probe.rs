//! Health probes whose RST overtakes their ACK: `probe_rst_before_ack` and
//! `probe_connection_leak`. The client resets while the server is in SYN_RECV; the server
//! (Linux `tcp_check_req`) drops that RST if it fails PAWS against the SYN's timestamp or lies
//! outside its receive window, and then the late ACK completes a connection nobody will
//! close. The late ACK must follow the RST within `reorder_window`: later, it is no
//! reordering.

use serde_json::{Map, Value};

use super::{
    conn::{C, EarlyRst, State},
    engine::Engine,
    event::{Event, Kind},
};
use crate::{evidence, flow::TimerKind};

/// Evidence shared by `probe_rst_before_ack` and `probe_connection_leak`.
fn probe_evidence(early: &EarlyRst, syn_tsval: Option<u32>) -> Map<String, Value> {
    evidence! {
        "rst_tsval" => early.tsval,
        "syn_tsval" => syn_tsval,
        "paws_reject_expected" => early.paws_fail,
        "rst_seq_ok" => early.seq_ok,
    }
}

impl Engine {
    /// Counts what `count` says for the probe's (source, server endpoint) and names its
    /// source in the evidence (`prober`).
    fn count_probe(
        &mut self,
        slot: u32,
        ev: &mut Map<String, Value>,
        count: impl FnOnce(&mut super::prober::ProbeCounters),
    ) {
        let key = self.table.key(slot);
        let Some(conn) = self.table.get(slot) else {
            return;
        };
        let (client, server) = (key.get(conn.client), key.get(conn.client.peer()));
        ev.insert("prober".into(), Value::from(client.ip_addr().to_string()));
        if let Some(c) = self.ctx.probe(client.ip, server) {
            count(c);
        }
    }

    /// The client's ACK of the SYN-ACK after its own RST.
    pub(super) fn on_late_ack(&mut self, slot: u32, now: u64, out: &mut Vec<Event>) {
        let reorder = self.ctx.cfg.reorder_window;
        let key = self.table.key(slot);
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let Some(early) = conn.early_rst() else {
            return;
        };
        if conn.late_ack_ns != 0 {
            return;
        }
        // A server that dropped the RST takes the ACK: its kernel completes the handshake
        // (TcpPassiveOpens), which counts as established here too.
        let taken = early.paws_fail || !early.seq_ok;
        if taken {
            let server = key.get(conn.client.peer());
            self.ctx.stats(conn, server).established += 1;
        }
        if now.saturating_sub(early.ns) > reorder {
            // Too late to be the RST's reordered predecessor: an ACK of its own.
            conn.rare_mut().early_rst = None;
            conn.state = State::Established;
            conn.ack_ns = now;
            return;
        }
        // The late ACK completes the server's side only: the probe's RSTs stay in the handshake
        // phase (a server RST answering it is no ehash race right after a handshake).
        conn.late_ack_ns = now;
        conn.state = State::Established;
        let leak_expected = early.paws_fail || !early.seq_ok;
        let mut ev = probe_evidence(&early, conn.syn_tsval);
        if self.ctx.cfg.host_vantage {
            // On a host: the prober's own egress (its stack put the RST before the ACK), or
            // the server's ingress (the reordering happened on the way, or at the prober).
            let at = if early.sent_here { "prober" } else { "server" };
            ev.insert("vantage".into(), Value::from(at));
        }
        self.count_probe(slot, &mut ev, |c| c.rst_before_ack += 1);
        self.emit(out, slot, Kind::ProbeRstBeforeAck, C, None, now, ev);
        if leak_expected {
            self.table.arm(
                slot,
                TimerKind::Leak,
                now.saturating_add(self.ctx.cfg.leak_confirm),
            );
        } else {
            self.table.arm(
                slot,
                TimerKind::Expire,
                now.saturating_add(self.ctx.cfg.closed_linger),
            );
        }
    }

    /// `leak_confirm` after the late ACK and the server never reset it: the leak.
    pub(super) fn on_leak_timer(&mut self, slot: u32, deadline: u64, out: &mut Vec<Event>) {
        let Some(conn) = self.table.get(slot) else {
            return;
        };
        let Some(early) = conn.early_rst() else {
            return;
        };
        let mut ev = probe_evidence(&early, conn.syn_tsval);
        ev.insert(
            "late_ack_delay_us".into(),
            Value::from(conn.late_ack_ns.saturating_sub(conn.synack_last) / 1000),
        );
        self.count_probe(slot, &mut ev, |c| c.leaks += 1);
        self.emit(out, slot, Kind::ProbeConnectionLeak, C, None, deadline, ev);
        self.table.arm(
            slot,
            TimerKind::Expire,
            deadline.saturating_add(self.ctx.cfg.established_idle),
        );
    }
}
