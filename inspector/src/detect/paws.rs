//! `paws_nat_collision`: a SYN whose TSval is older (PAWS sense) than the last one its source
//! IP sent in a connection to the same server IP that the **server closed first** (the server
//! then holds TIME_WAIT and remembers that TSval), less than `paws_window` before. Only a SYN
//! that then goes unanswered is reported: Linux clients randomize TSval offsets per
//! connection (since 4.10), so an answered older TSval is normal. On kernels without
//! `tcp_tw_recycle` the collision shows on the wire as the server's bare ACK answering the SYN
//! (PAWS reject in TIME_WAIT): the event says so in `server_answer`.

use super::{
    conn::C,
    engine::{Engine, MS},
    event::{Event, Kind},
};
use crate::evidence;

impl Engine {
    /// Returns (prev_tsval, prev_age_ns, tsval) when this SYN's TSval is older than the last
    /// one the same source IP sent in a connection to the same server IP that the server
    /// closed first, less than `paws_window` before (across workers). Rate-limited to one
    /// per (source, server) per `paws_window`.
    pub(super) fn paws_check(
        &mut self,
        src: [u8; 16],
        dst: [u8; 16],
        tsval: u32,
        now: u64,
    ) -> Option<(u32, u64, u32)> {
        self.ctx
            .shared
            .paws_check(src, dst, tsval, now, self.ctx.cfg.paws_window)
            .map(|(prev, age)| (prev, age, tsval))
    }

    /// Remembers the client's last TSval of a connection the server closed first.
    pub(super) fn paws_remember(&mut self, client: [u8; 16], server: [u8; 16], ts: u32, now: u64) {
        self.ctx
            .shared
            .paws_remember(client, server, ts, now, self.ctx.cfg.paws_window);
    }

    #[expect(clippy::too_many_arguments, reason = "evidence fields of one event")]
    pub(super) fn emit_paws(
        &mut self,
        out: &mut Vec<Event>,
        slot: u32,
        now: u64,
        prev: u32,
        age: u64,
        tsval: u32,
        answered: bool,
    ) {
        let answer = self
            .table
            .get(slot)
            .and_then(|c| c.bare_ack())
            .map(|_| "bare_ack");
        let ev = evidence! {
            "prev_tsval" => prev,
            "prev_age_ms" => age / MS,
            "tsval" => tsval,
            "answered" => answered,
            "server_answer" => answer,
        };
        self.emit(out, slot, Kind::PawsNatCollision, C, None, now, ev);
    }
}
