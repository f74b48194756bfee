//! The handshake state machine. `Engine::process` takes one packet and its capture time,
//! fires every timer due before it, updates the connection, and appends verdicts to `out`.
//!
//! Roles follow ANOMALIES.md: the client sent the first SYN without ACK; a flow first seen at
//! a SYN-ACK is oriented from it; a flow first seen at a FIN or RST is `midstream` (the lower
//! port is taken as the server's) and raises no handshake anomaly.

use std::sync::Arc;

use serde_json::Value;

use super::{
    aggregate::Tally,
    event::{Event, Kind},
    reset::{LastSeg, RstInput, RstWindows, classify},
    seq::{seq_lt, ts_older},
    shared::Shared,
    stats::{Endpoints, Latency},
};
use crate::{
    evidence,
    flow::{Endpoint, FlowKey, FlowTable, Side, TimerKind, table::FlowClass},
    wire::{Segment, TcpFlags},
};

const MS: u64 = 1_000_000;
/// One fixed hash for the distinct-source sketches, so every worker's sketches can be merged.
const SOURCE_HASH: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x5eed);
const SEC: u64 = 1_000_000_000;

/// Timeouts and thresholds, with the defaults of ANOMALIES.md (all in ns).
#[derive(Clone, Debug)]
pub struct Config {
    pub syn_timeout: u64,
    pub synack_timeout: u64,
    pub fin_timeout: u64,
    pub leak_confirm: u64,
    pub listener_alive: u64,
    pub probe_window: u64,
    pub race_window: u64,
    /// How long a closed connection stays in the table (tuple reuse is judged against 2·MSL).
    pub closed_linger: u64,
    /// How long a quiet established connection stays in the table.
    pub established_idle: u64,
    /// Window of the PAWS NAT-collision check.
    pub paws_window: u64,
    pub max_flows: usize,
    pub max_endpoints: usize,
    /// New half-open connections per second to one server endpoint that make a `syn_flood`.
    pub flood_rate: u64,
    /// RSTs per second from one host that make a `reset_storm`.
    pub rst_rate: u64,
    /// Every segment of a flow is visible (pcap, tap) rather than only control packets.
    pub full_visibility: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            syn_timeout: 3 * SEC,
            synack_timeout: 3 * SEC,
            fin_timeout: 5 * SEC,
            leak_confirm: SEC,
            listener_alive: 10 * SEC,
            probe_window: 50 * MS,
            race_window: MS,
            closed_linger: 60 * SEC,
            established_idle: 300 * SEC,
            paws_window: 60 * SEC,
            max_flows: 1 << 18,
            max_endpoints: 4096,
            flood_rate: 5000,
            rst_rate: 1000,
            full_visibility: true,
        }
    }
}

/// Engine counters (besides the table's own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub packets: u64,
    /// Non-control packets of flows not in the table (pre-existing or expired connections).
    pub unmatched: u64,
    pub events: u64,
    /// Per-connection events folded into a `syn_flood` / `reset_storm` episode.
    pub folded: u64,
    /// Connections dropped from a full table before their verdict was settled.
    pub evicted_pending: u64,
}

impl EngineCounters {
    /// Adds another worker's counters.
    pub fn add(&mut self, o: &EngineCounters) {
        self.packets += o.packets;
        self.unmatched += o.unmatched;
        self.events += o.events;
        self.folded += o.folded;
        self.evicted_pending += o.evicted_pending;
    }
}

/// What the summary shows of one engine or of several workers' engines added up.
pub struct Totals {
    pub endpoints: Endpoints,
    pub counters: EngineCounters,
    pub table: crate::flow::TableStats,
}

impl Totals {
    /// Adds up `engines` (one per worker).
    pub fn of<'a>(engines: impl IntoIterator<Item = &'a Engine>) -> Self {
        let mut t: Option<Totals> = None;
        for e in engines {
            let t = t.get_or_insert_with(|| Totals {
                endpoints: Endpoints::new(e.cfg.max_endpoints),
                counters: EngineCounters::default(),
                table: Default::default(),
            });
            t.endpoints.merge(&e.endpoints);
            t.counters.add(&e.counters);
            t.table.add(&e.table.stats());
        }
        t.unwrap_or_else(|| Totals {
            endpoints: Endpoints::new(0),
            counters: EngineCounters::default(),
            table: Default::default(),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    SynSent,
    SynReceived,
    Established,
    Closed,
    Midstream,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::SynSent => "syn_sent",
            State::SynReceived => "syn_received",
            State::Established => "established",
            State::Closed => "closed",
            State::Midstream => "midstream",
        }
    }
}

/// A client RST seen while the server was in SYN_RECV.
#[derive(Clone, Copy, Debug)]
struct EarlyRst {
    tsval: Option<u32>,
    seq_ok: bool,
    paws_fail: bool,
}

/// Evidence shared by `probe_rst_before_ack` and `probe_connection_leak`.
fn probe_evidence(early: &EarlyRst, syn_tsval: Option<u32>) -> serde_json::Map<String, Value> {
    evidence! {
        "rst_tsval" => early.tsval,
        "syn_tsval" => syn_tsval,
        "paws_reject_expected" => early.paws_fail,
        "rst_seq_ok" => early.seq_ok,
    }
}

const C: usize = 0;
const S: usize = 1;

/// One connection's state.
#[derive(Clone, Debug)]
struct Conn {
    client: Side,
    state: State,
    ifindex: u32,
    syn_first: u64,
    syn_last: u64,
    syn_count: u16,
    client_isn: u32,
    syn_tsval: Option<u32>,
    synack_first: u64,
    synack_last: u64,
    synack_count: u16,
    server_isn: u32,
    /// The ack number of the first SYN-ACK (the client ISN + 1 it answers).
    synack_ack: u32,
    ack_ns: u64,
    synack_after_ack: u16,
    /// Next sequence number of [client, server], when known.
    next_seq: [Option<u32>; 2],
    last: [Option<LastSeg>; 2],
    fin_ns: [u64; 2],
    fin_end: [u32; 2],
    fin_count: [u16; 2],
    fin_acked: [bool; 2],
    rst_seen: [bool; 2],
    data_seen: bool,
    early_rst: Option<EarlyRst>,
    late_ack_ns: u64,
    reverse_seen: bool,
    reported: u16,
    closed_ns: u64,
    /// The newest TSval the client sent (remembered for the PAWS check when the server
    /// closes first).
    client_tsval: Option<u32>,
    /// PAWS NAT collision pending its answer: (prev_tsval, prev_age_ns, tsval).
    paws: Option<(u32, u64, u32)>,
}

impl Conn {
    /// The first SYN of the handshake (ISN `isn`) at `now`.
    fn record_syn(&mut self, now: u64, isn: u32, tsval: Option<u32>) {
        self.syn_first = now;
        self.syn_last = now;
        self.syn_count = 1;
        self.client_isn = isn;
        self.syn_tsval = tsval;
    }

    fn new(client: Side, state: State, ifindex: u32) -> Self {
        Self {
            client,
            state,
            ifindex,
            syn_first: 0,
            syn_last: 0,
            syn_count: 0,
            client_isn: 0,
            syn_tsval: None,
            client_tsval: None,
            synack_first: 0,
            synack_last: 0,
            synack_count: 0,
            server_isn: 0,
            synack_ack: 0,
            ack_ns: 0,
            synack_after_ack: 0,
            next_seq: [None; 2],
            last: [None; 2],
            fin_ns: [0; 2],
            fin_end: [0; 2],
            fin_count: [0; 2],
            fin_acked: [false; 2],
            rst_seen: [false; 2],
            data_seen: false,
            early_rst: None,
            late_ack_ns: 0,
            reverse_seen: false,
            reported: 0,
            closed_ns: 0,
            paws: None,
        }
    }
}

/// The detection engine of one worker.
pub struct Engine {
    cfg: Config,
    table: FlowTable<Conn>,
    endpoints: Endpoints,
    shared: Arc<Shared>,
    counters: EngineCounters,
    now: u64,
    /// Counts of the current capture-time second for the aggregate anomalies.
    tally: Tally,
    tally_sec: u64,
    /// Finished seconds, for [`Engine::take_tallies`].
    tallies: Vec<Tally>,
}

/// One packet as the engine sees it.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    /// Capture time, ns since the Unix epoch.
    pub ts_ns: u64,
    pub ifindex: u32,
    pub seg: &'a Segment,
}

fn role_of(conn: &Conn, side: Side) -> usize {
    if side == conn.client { C } else { S }
}

fn seq_len(seg: &Segment) -> u32 {
    seg.payload_len
        + u32::from(seg.flags.contains(TcpFlags::SYN))
        + u32::from(seg.flags.contains(TcpFlags::FIN))
}

impl Engine {
    /// An engine with its own cross-flow state (one worker, pcap replay, tests).
    pub fn new(cfg: Config) -> Self {
        Self::with_shared(cfg, Arc::new(Shared::new()))
    }

    /// An engine that shares cross-flow state (listener liveness, PAWS) with the other
    /// workers' engines of the same capture.
    pub fn with_shared(cfg: Config, shared: Arc<Shared>) -> Self {
        Self {
            table: FlowTable::new(cfg.max_flows),
            endpoints: Endpoints::new(cfg.max_endpoints),
            shared,
            counters: EngineCounters::default(),
            now: 0,
            tally: Tally::default(),
            tally_sec: 0,
            tallies: Vec::new(),
            cfg,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }
    pub fn table_stats(&self) -> crate::flow::TableStats {
        self.table.stats()
    }
    pub fn table_memory_bytes(&self) -> usize {
        self.table.memory_bytes()
    }
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    fn emit(
        &mut self,
        out: &mut Vec<Event>,
        slot: u32,
        kind: Kind,
        ts: u64,
        evidence: serde_json::Map<String, Value>,
    ) {
        let key = self.table.key(slot);
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        if kind != Kind::Reset {
            if conn.reported & kind.bit() != 0 {
                return;
            }
            conn.reported |= kind.bit();
        }
        let client = key.get(conn.client);
        let server = key.get(conn.client.peer());
        let reverse_seen = conn.reverse_seen || self.shared.pair_seen(&server.ip, &client.ip);
        self.endpoints.get(server).anomalies[kind as usize] += 1;
        // While an aggregate episode lasts, its per-connection verdicts are counted, not sent.
        let folded = match kind {
            Kind::SynUnanswered
            | Kind::SynackUnacked
            | Kind::SynRejected
            | Kind::AcceptQueueOverflow => self.shared.flooding(&server, ts),
            Kind::Reset => {
                let sender = if evidence.get("from").and_then(Value::as_str) == Some("client") {
                    client.ip
                } else {
                    server.ip
                };
                self.shared.storming(&sender, ts)
            }
            _ => false,
        };
        if folded {
            self.counters.folded += 1;
            return;
        }
        let ev = Event {
            ts_ns: ts,
            kind,
            client: Some(client),
            server: Some(server),
            ifindex: conn.ifindex,
            reverse_seen,
            evidence,
        };
        self.counters.events += 1;
        out.push(ev);
    }

    /// Fires every timer due at or before `now`.
    pub fn advance(&mut self, now: u64, out: &mut Vec<Event>) {
        self.now = self.now.max(now);
        let sec = self.now / SEC;
        if sec > self.tally_sec {
            self.roll_tally(sec);
        }
        while let Some((kind, slot, deadline)) = self.table.pop_expired(now) {
            self.on_timer(kind, slot, deadline, out);
        }
    }

    /// End of input at capture time `now`: fires what is due; verdicts whose deadline lies
    /// beyond the capture stay undecided.
    pub fn finish(&mut self, now: u64, out: &mut Vec<Event>) {
        self.advance(now, out);
        self.roll_tally(self.tally_sec + 1);
    }

    fn roll_tally(&mut self, sec: u64) {
        let mut t = std::mem::take(&mut self.tally);
        if !t.is_empty() {
            t.second = self.tally_sec;
            self.tallies.push(t);
        }
        self.tally_sec = sec;
    }

    /// The aggregate counts of the seconds finished since the last call, and the watermark:
    /// every capture-time second below it is complete for this engine.
    pub fn take_tallies(&mut self) -> (Vec<Tally>, u64) {
        (std::mem::take(&mut self.tallies), self.tally_sec)
    }

    /// The cross-flow state this engine shares with the other workers.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Processes one packet.
    pub fn process(&mut self, p: &Packet<'_>, out: &mut Vec<Event>) {
        let now = p.ts_ns;
        self.advance(now, out);
        self.counters.packets += 1;
        let seg = p.seg;
        let src = Endpoint::from(seg.src);
        let dst = Endpoint::from(seg.dst);
        let (key, side) = FlowKey::of(src, dst);
        let f = seg.flags;
        let syn = f.contains(TcpFlags::SYN);
        let ack = f.contains(TcpFlags::ACK);
        let rst = f.contains(TcpFlags::RST);
        let fin = f.contains(TcpFlags::FIN);

        let slot = match self.table.find(&key) {
            Some(slot) => slot,
            None => {
                let (conn, class) = if syn && !ack && !rst {
                    (
                        Conn::new(side, State::SynSent, p.ifindex),
                        FlowClass::HalfOpen,
                    )
                } else if syn && ack && !rst {
                    (
                        Conn::new(side.peer(), State::SynReceived, p.ifindex),
                        FlowClass::HalfOpen,
                    )
                } else if rst || fin {
                    // Midstream: take the lower port as the server's.
                    let client = if src.port < dst.port {
                        side.peer()
                    } else {
                        side
                    };
                    (
                        Conn::new(client, State::Midstream, p.ifindex),
                        FlowClass::Open,
                    )
                } else {
                    self.counters.unmatched += 1;
                    return;
                };
                let (slot, evicted) = self.table.insert(key, conn, class);
                if let Some((_, old, _)) = evicted
                    && (matches!(old.state, State::SynSent | State::SynReceived)
                        || old.late_ack_ns != 0)
                {
                    self.counters.evicted_pending += 1;
                }
                if self
                    .table
                    .get(slot)
                    .is_some_and(|c| c.state == State::Midstream)
                {
                    self.table
                        .arm(slot, TimerKind::Expire, now + self.cfg.established_idle);
                }
                slot
            }
        };
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let role = role_of(conn, side);
        if role == S {
            if !conn.reverse_seen {
                // Once per flow: the host pair has reverse traffic (ANOMALIES: reverse_seen).
                self.shared.saw_pair(&src.ip, &dst.ip);
            }
            conn.reverse_seen = true;
        } else if let Some((ts, _)) = seg.options.timestamps {
            conn.client_tsval = Some(ts);
        }
        let server_ep = key.get(conn.client.peer());

        if syn && !ack && !rst && role == C {
            self.on_syn(slot, server_ep, p, out);
        } else if syn && ack && !rst && role == S {
            self.on_synack(slot, server_ep, p, out);
        } else if rst {
            self.on_rst(slot, role, server_ep, p, out);
        } else {
            self.on_segment(slot, role, server_ep, p, out);
        }
        // Bookkeeping common to every segment.
        if let Some(conn) = self.table.get_mut(slot) {
            let end = seg.seq.wrapping_add(seq_len(seg));
            if conn.next_seq[role].is_none_or(|n| seq_lt(n, end)) && !rst {
                conn.next_seq[role] = Some(end);
            }
            if seg.payload_len > 0 {
                conn.data_seen = true;
            }

            conn.last[role] = Some(LastSeg {
                seq: seg.seq,
                ack: seg.ack,
                has_ack: ack,
                seq_len: seq_len(seg),
            });
        }
    }

    fn on_syn(&mut self, slot: u32, server_ep: Endpoint, p: &Packet<'_>, out: &mut Vec<Event>) {
        let now = p.ts_ns;
        let seg = p.seg;
        let tsval = seg.options.timestamps.map(|t| t.0);
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        if conn.syn_count > 0 && seg.seq == conn.client_isn {
            // Retransmission of the same SYN.
            conn.syn_count = conn.syn_count.saturating_add(1);
            conn.syn_last = now;
            return;
        }
        if conn.syn_count == 0
            && matches!(conn.state, State::SynReceived | State::Established)
            && conn.synack_count > 0
            && conn.synack_ack == seg.seq.wrapping_add(1)
        {
            // The SYN of a handshake whose SYN-ACK was captured first (a tap whose RX queues
            // or mirror paths reorder the two directions): the same connection, not a reuse.
            conn.record_syn(now, seg.seq, tsval);
            self.endpoints.get(server_ep).syns += 1;
            return;
        }
        if conn.syn_count > 0 || conn.state != State::SynSent {
            // A new ISN on a tuple already known: report reuse unless the old connection
            // closed more than 2·MSL ago, then start over.
            let recent =
                conn.state != State::Closed || now.saturating_sub(conn.closed_ns) < 60 * SEC;
            let (prev_state, prev_isn) = (conn.state, conn.client_isn);
            let had_syn = conn.syn_count > 0;
            let client = conn.client;
            let ifindex = conn.ifindex;
            if recent {
                let ev = evidence! {
                    "prev_state" => prev_state.as_str(),
                    "prev_isn" => had_syn.then_some(prev_isn),
                    "isn" => seg.seq,
                };
                self.emit(out, slot, Kind::SynTupleReuse, now, ev);
            }
            let Some(conn) = self.table.get_mut(slot) else {
                return;
            };
            let reverse_seen = conn.reverse_seen;
            *conn = Conn::new(client, State::SynSent, ifindex);
            conn.reverse_seen = reverse_seen;
            for k in TimerKind::ALL {
                self.table.disarm(slot, k);
            }
            self.table.set_class(slot, FlowClass::HalfOpen);
        }
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        conn.record_syn(now, seg.seq, tsval);
        self.endpoints.get(server_ep).syns += 1;
        let client_ip = Endpoint::from(seg.src).ip;
        self.tally.syn(
            server_ep,
            std::hash::BuildHasher::hash_one(&SOURCE_HASH, client_ip),
        );
        self.table
            .arm(slot, TimerKind::Syn, now + self.cfg.syn_timeout);
        if let Some(t) = tsval
            && let Some(hit) = self.paws_check(client_ip, server_ep.ip, t, now)
            && let Some(conn) = self.table.get_mut(slot)
        {
            conn.paws = Some(hit);
        }
    }

    /// Returns (prev_tsval, prev_age_ns, tsval) when this SYN's TSval is older (PAWS sense)
    /// than the last one the same source IP sent in a connection to the same server IP that
    /// the server closed first, less than `paws_window` before (across workers).
    /// Rate-limited to one per (source, server) per `paws_window`.
    fn paws_check(
        &mut self,
        src: [u8; 16],
        dst: [u8; 16],
        tsval: u32,
        now: u64,
    ) -> Option<(u32, u64, u32)> {
        self.shared
            .paws_check(src, dst, tsval, now, self.cfg.paws_window)
            .map(|(prev, age)| (prev, age, tsval))
    }

    fn on_synack(&mut self, slot: u32, server_ep: Endpoint, p: &Packet<'_>, out: &mut Vec<Event>) {
        let now = p.ts_ns;
        let seg = p.seg;
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        match conn.state {
            State::SynSent => {
                let expected = conn.client_isn.wrapping_add(1);
                if conn.syn_count > 0 && seg.ack != expected {
                    let ev = evidence! { "expected_ack" => expected, "ack" => seg.ack };
                    self.emit(out, slot, Kind::SynackWrongAck, now, ev);
                    return;
                }
                let (syn_first, syn_last, syn_count, paws) = (
                    conn.syn_first,
                    conn.syn_last,
                    conn.syn_count,
                    conn.paws.take(),
                );
                conn.state = State::SynReceived;
                conn.server_isn = seg.seq;
                conn.synack_ack = seg.ack;
                conn.synack_first = now;
                conn.synack_last = now;
                conn.synack_count = 1;
                if syn_count > 0 {
                    self.tally.synack(server_ep);
                }
                self.table.disarm(slot, TimerKind::Syn);
                self.table
                    .arm(slot, TimerKind::SynAck, now + self.cfg.synack_timeout);
                if syn_count > 0 {
                    self.endpoints
                        .get(server_ep)
                        .record(Latency::SynToSynack, now.saturating_sub(syn_last));
                }
                if syn_count > 1 {
                    let ev = evidence! {
                        "syn_count" => syn_count,
                        "extra_delay_us" => syn_last.saturating_sub(syn_first) / 1000,
                    };
                    self.emit(out, slot, Kind::SynRetransmitted, now, ev);
                }
                // An answered SYN did no harm: since Linux 4.10 clients randomize the TSval
                // offset per connection, so backwards TSvals across connections are normal.
                // Only a SYN that then goes unanswered is reported (see the Syn timer).
                let _ = paws;
                // The client's completing ACK was captured before this SYN-ACK (a tap whose
                // queues invert the two directions): the handshake is complete now.
                let acked_early = self.table.get(slot).is_some_and(|c| {
                    c.last[C].is_some_and(|l| l.has_ack && l.ack == seg.seq.wrapping_add(1))
                });
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
                    .arm(slot, TimerKind::SynAck, now + self.cfg.synack_timeout);
            }
            State::SynReceived | State::Established if seg.seq == conn.server_isn => {
                conn.synack_count = conn.synack_count.saturating_add(1);
                conn.synack_last = now;
                if conn.ack_ns != 0 && conn.early_rst.is_none() {
                    conn.synack_after_ack = conn.synack_after_ack.saturating_add(1);
                    let ev = evidence! {
                        "signature" => "ack_dropped",
                        "synack_after_ack" => conn.synack_after_ack,
                        "stall_us" => now.saturating_sub(conn.ack_ns) / 1000,
                        "last_handshake_age_ms" => Value::Null,
                    };
                    self.emit(out, slot, Kind::AcceptQueueOverflow, now, ev);
                }
            }
            _ => {}
        }
    }

    #[expect(clippy::too_many_arguments, reason = "evidence fields of one event")]
    fn emit_paws(
        &mut self,
        out: &mut Vec<Event>,
        slot: u32,
        now: u64,
        prev: u32,
        age: u64,
        tsval: u32,
        answered: bool,
    ) {
        let ev = evidence! {
            "prev_tsval" => prev,
            "prev_age_ms" => age / MS,
            "tsval" => tsval,
            "answered" => answered,
        };
        self.emit(out, slot, Kind::PawsNatCollision, now, ev);
    }

    fn on_rst(
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
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let answers_syn = conn.state == State::SynSent && role == S;
        let input = RstInput {
            from_client: role == C,
            has_ack,
            seq: seg.seq,
            ack: seg.ack,
            answers_syn,
            expected_seq: conn.next_seq[role],
            full_visibility: self.cfg.full_visibility,
            peer_last: conn.last[1 - role],
            since_established: (conn.ack_ns != 0).then(|| now.saturating_sub(conn.ack_ns)),
            closing: conn.fin_ns.iter().any(|&t| t != 0),
            data_seen: conn.data_seen,
        };
        let windows = RstWindows {
            probe_window: self.cfg.probe_window,
            race_window: self.cfg.race_window,
        };
        let (class, phase) = classify(&input, &windows);
        self.tally.rst(Endpoint::from(seg.src).ip, class);
        let from = if role == C { "client" } else { "server" };
        self.endpoints
            .get(server_ep)
            .count_rst(class, phase, role == C);
        let ev = evidence! {
            "from" => from,
            "rst_class" => class.as_str(),
            "phase" => phase.as_str(),
            "seq" => seg.seq,
            "ack" => has_ack.then_some(seg.ack),
            "expected_seq" => input.expected_seq,
        };
        self.emit(out, slot, Kind::Reset, now, ev);

        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        conn.rst_seen[role] = true;
        if answers_syn {
            let ev = evidence! { "rst_ack" => has_ack.then_some(seg.ack) };
            self.table.disarm(slot, TimerKind::Syn);
            self.emit(out, slot, Kind::SynRejected, now, ev);
        } else if role == C
            && conn.state == State::SynReceived
            && conn.ack_ns == 0
            && conn.early_rst.is_none()
        {
            // The client resets while the server is in SYN_RECV: a probe, if an ACK follows.
            let tsval = seg.options.timestamps.map(|t| t.0);
            let paws_fail = match (conn.syn_tsval, tsval) {
                (Some(recent), Some(v)) => ts_older(recent, v),
                _ => false,
            };
            conn.early_rst = Some(EarlyRst {
                tsval,
                seq_ok: seg.seq == conn.client_isn.wrapping_add(1),
                paws_fail,
            });
            self.table.disarm(slot, TimerKind::SynAck);
            // Stay in SYN_RECV: a rejected RST leaves the server's request socket alive.
            return;
        } else if role == S && conn.late_ack_ns != 0 {
            // The server answered the probe's late ACK: no leak.
            self.table.disarm(slot, TimerKind::Leak);
        }
        if class == super::RstClass::OutOfWindow {
            return; // RFC 5961: ignored by the receiver, the connection lives on.
        }
        self.close(slot, now);
    }

    fn close(&mut self, slot: u32, now: u64) {
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        if conn.state == State::Closed {
            return;
        }
        conn.state = State::Closed;
        conn.closed_ns = now;
        // The server closed first: it now holds TIME_WAIT and (tcp_tw_recycle) remembers the
        // client's last TSval for the PAWS check of that host's next SYNs.
        let server_first =
            conn.fin_ns[S] != 0 && (conn.fin_ns[C] == 0 || conn.fin_ns[S] <= conn.fin_ns[C]);
        if server_first && let Some(ts) = conn.client_tsval {
            let client_side = conn.client;
            let key = self.table.key(slot);
            let (client, server) = (key.get(client_side), key.get(client_side.peer()));
            self.shared
                .paws_remember(client.ip, server.ip, ts, now, self.cfg.paws_window);
        }
        self.table.set_class(slot, FlowClass::Closed);
        self.table.disarm(slot, TimerKind::SynAck);
        self.table
            .arm(slot, TimerKind::Expire, now + self.cfg.closed_linger);
    }

    fn on_segment(
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
        // The client's handshake-completing ACK (possibly carrying data or a FIN).
        if role == C
            && ack
            && conn.state == State::SynReceived
            && seg.ack == conn.server_isn.wrapping_add(1)
        {
            if let Some(early) = conn.early_rst {
                if conn.late_ack_ns == 0 {
                    conn.late_ack_ns = now;
                    conn.state = State::Established;
                    let leak_expected = early.paws_fail || !early.seq_ok;
                    let ev = probe_evidence(&early, conn.syn_tsval);
                    self.emit(out, slot, Kind::ProbeRstBeforeAck, now, ev);
                    if leak_expected {
                        self.table
                            .arm(slot, TimerKind::Leak, now + self.cfg.leak_confirm);
                    } else {
                        self.table
                            .arm(slot, TimerKind::Expire, now + self.cfg.closed_linger);
                    }
                }
            } else {
                self.establish(slot, server_ep, now);
            }
        }
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let peer = 1 - role;
        if ack && conn.fin_ns[peer] != 0 && !seq_lt(seg.ack, conn.fin_end[peer]) {
            conn.fin_acked[peer] = true;
        }
        if fin {
            let end = seg.seq.wrapping_add(seq_len(seg));
            if conn.fin_ns[role] == 0 {
                conn.fin_ns[role] = now;
                conn.fin_end[role] = end;
                conn.fin_count[role] = 1;
                if conn.fin_ns[peer] == 0 {
                    self.table
                        .arm(slot, TimerKind::Fin, now + self.cfg.fin_timeout);
                }
            } else {
                conn.fin_count[role] = conn.fin_count[role].saturating_add(1);
            }
            let Some(conn) = self.table.get_mut(slot) else {
                return;
            };
            if conn.fin_ns[peer] != 0 {
                if conn.state == State::Established {
                    self.endpoints.get(server_ep).closed_normally += 1;
                }
                self.close(slot, now);
            }
        }
    }

    /// The handshake completed at `now` (the client's ACK of the SYN-ACK).
    fn establish(&mut self, slot: u32, server_ep: Endpoint, now: u64) {
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let (syn_first, synack_last) = (conn.syn_first, conn.synack_last);
        conn.state = State::Established;
        conn.ack_ns = now;
        self.table.disarm(slot, TimerKind::SynAck);
        self.table.set_class(slot, FlowClass::Open);
        self.table
            .arm(slot, TimerKind::Expire, now + self.cfg.established_idle);
        let st = self.endpoints.get(server_ep);
        st.established += 1;
        st.last_handshake_ns = now;
        self.shared.handshake_done(&server_ep, now);
        st.record(Latency::SynackToAck, now.saturating_sub(synack_last));
        if syn_first != 0 {
            st.record(Latency::ConnectTotal, now.saturating_sub(syn_first));
        }
    }

    fn on_timer(&mut self, kind: TimerKind, slot: u32, deadline: u64, out: &mut Vec<Event>) {
        let key = self.table.key(slot);
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let server_ep = key.get(conn.client.peer());
        match kind {
            TimerKind::Syn if conn.state == State::SynSent => {
                let (syn_count, isn, tsval, paws) = (
                    conn.syn_count,
                    conn.client_isn,
                    conn.syn_tsval,
                    conn.paws.take(),
                );
                // A SYN that collides with a remembered TSval has a more specific
                // explanation than a full accept queue: PAWS dropped it (seed 003).
                let alive = self
                    .shared
                    .last_handshake(&server_ep)
                    .filter(|&t| deadline.saturating_sub(t) < self.cfg.listener_alive)
                    .filter(|_| paws.is_none());
                if let Some(last) = alive {
                    let ev = evidence! {
                        "signature" => "syn_dropped",
                        "syn_count" => syn_count,
                        "synack_after_ack" => Value::Null,
                        "stall_us" => Value::Null,
                        "last_handshake_age_ms" => deadline.saturating_sub(last) / MS,
                    };
                    self.emit(out, slot, Kind::AcceptQueueOverflow, deadline, ev);
                } else {
                    let ev = evidence! { "syn_count" => syn_count, "isn" => isn, "tsval" => tsval };
                    self.emit(out, slot, Kind::SynUnanswered, deadline, ev);
                }
                if let Some((prev, age, ts)) = paws {
                    self.emit_paws(out, slot, deadline, prev, age, ts, false);
                }
                self.table
                    .arm(slot, TimerKind::Expire, deadline + self.cfg.closed_linger);
            }
            TimerKind::SynAck if conn.state == State::SynReceived && conn.early_rst.is_none() => {
                let ev = evidence! { "synack_count" => conn.synack_count };
                self.emit(out, slot, Kind::SynackUnacked, deadline, ev);
                self.table
                    .arm(slot, TimerKind::Expire, deadline + self.cfg.closed_linger);
            }
            TimerKind::Leak => {
                let Some(early) = conn.early_rst else { return };
                let late = conn.late_ack_ns;
                let mut ev = probe_evidence(&early, conn.syn_tsval);
                ev.insert(
                    "late_ack_delay_us".into(),
                    Value::from(late.saturating_sub(conn.synack_last) / 1000),
                );
                self.emit(out, slot, Kind::ProbeConnectionLeak, deadline, ev);
                self.table.arm(
                    slot,
                    TimerKind::Expire,
                    deadline + self.cfg.established_idle,
                );
            }
            TimerKind::Fin => {
                for role in [C, S] {
                    let peer = 1 - role;
                    if conn.fin_ns[role] != 0
                        && !conn.fin_acked[role]
                        && conn.fin_ns[peer] == 0
                        && !conn.rst_seen[peer]
                    {
                        let ev = evidence! {
                            "fin_count" => conn.fin_count[role],
                            "from" => if role == C { "client" } else { "server" },
                        };
                        self.emit(out, slot, Kind::FinUnanswered, deadline, ev);
                        break;
                    }
                }
            }
            TimerKind::Expire => {
                self.table.remove(slot);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
