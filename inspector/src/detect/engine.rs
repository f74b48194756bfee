//! The dispatcher. `Engine::process` takes one packet and its capture time, fires every timer
//! due before it, finds (or creates) the connection and hands the packet to the rules of its
//! family; `Engine::advance` fires timers; `Engine::finish` settles what the end of input
//! decides. Each family's rules live in their own file:
//!
//! | file | verdicts |
//! |---|---|
//! | `handshake.rs` | `syn_unanswered`, `syn_retransmitted`, `synack_unacked`, `synack_wrong_ack`, `syn_tuple_reuse`, TCP Fast Open |
//! | `reset.rs` | `reset` (class, phase, effect) and `syn_rejected` |
//! | `probe.rs` | `probe_rst_before_ack`, `probe_connection_leak` |
//! | `overflow.rs` | `accept_queue_overflow` |
//! | `paws.rs` | `paws_nat_collision` |
//! | `close.rs` | FINs, `fin_unanswered`, the end of a connection |
//! | `aggregate.rs` | `syn_flood`, `reset_storm` |
//!
//! Roles follow `docs/anomalies.md`: the client sent the first SYN without ACK; a flow first
//! seen at a SYN-ACK is oriented from it; a flow first seen at a FIN or RST is `midstream`
//! (the lower port is taken as the server's) and raises no handshake anomaly.

use std::{hash::BuildHasher, sync::Arc};

use serde_json::Value;

use super::{
    aggregate::Tally,
    conn::{C, Conn, S, State},
    event::{Event, Kind},
    reset::LastSeg,
    seq::seq_lt,
    shared::Shared,
    stats::{EndpointStats, Endpoints},
};
use crate::{
    flow::{Endpoint, FlowKey, FlowTable, TimerKind, table::FlowClass},
    wire::{Segment, TcpFlags},
};

pub(super) const MS: u64 = 1_000_000;
pub(super) const SEC: u64 = 1_000_000_000;

/// Timeouts and thresholds, with the defaults of `docs/anomalies.md` (all in ns).
#[derive(Clone, Debug)]
pub struct Config {
    /// The least time a SYN stream stays unanswered before it is given up (the deadline
    /// then follows the client's backoff: see `handshake::quiet_deadline`).
    pub syn_timeout: u64,
    /// The same for the server's SYN-ACK stream.
    pub synack_timeout: u64,
    pub fin_timeout: u64,
    pub leak_confirm: u64,
    pub listener_alive: u64,
    pub probe_window: u64,
    pub race_window: u64,
    /// How late a reordered packet may still correct a verdict: the late ACK of a probe
    /// whose RST overtook it, or a handshake that completes after a RST refused its SYN.
    pub reorder_window: u64,
    /// Two copies of the same segment this close together are one packet captured twice
    /// (mirror ports, `tcpdump -i any`).
    pub duplicate_window: u64,
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
    /// Also report a `reset` event for a RST that refused a SYN (by default it is folded into
    /// the connection's `syn_rejected`, which carries its details).
    pub all_resets: bool,
    /// The names of the running kernel's RST and drop reasons, when its word is taken
    /// (inline mode with kernel reasons).
    pub kernel_names: Option<Arc<super::kernel::KernelNames>>,
    /// `--probe-source`: networks whose sources are health probers from their first probe.
    pub probe_sources: Vec<ipnet::IpNet>,
    /// The capture runs on one of the two hosts (inline mode): [`Packet::egress`] says which
    /// host sent a packet, so a probe's reordering can be placed at its source.
    pub host_vantage: bool,
    /// Capture time (ns) from which both directions are watched (inline mode: the egress
    /// program attaches after the ingress one). A connection first seen before it may have
    /// lost packets to the attach and raises no verdict (`unwatched` counts them); 0: always.
    pub watched_from: u64,
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
            reorder_window: 200 * MS,
            duplicate_window: 10 * MS,
            closed_linger: 60 * SEC,
            established_idle: 300 * SEC,
            paws_window: 60 * SEC,
            max_flows: 1 << 18,
            max_endpoints: 4096,
            flood_rate: 5000,
            rst_rate: 1000,
            full_visibility: true,
            all_resets: false,
            kernel_names: None,
            probe_sources: Vec::new(),
            host_vantage: false,
            watched_from: 0,
        }
    }
}

/// Engine counters (besides the table's own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub packets: u64,
    /// Non-control packets of flows not in the table (pre-existing or expired connections).
    pub unmatched: u64,
    /// Segments captured twice (the copy was skipped).
    pub duplicates: u64,
    pub events: u64,
    /// Per-connection events folded into a `syn_flood` / `reset_storm` episode, and by kind
    /// (the kinds of [`super::shared::FOLDABLE`]).
    pub folded: u64,
    pub folded_by: [u64; super::shared::FOLDABLE.len()],
    /// Verdicts not reported because their connection began before both directions were
    /// watched (attached under load: its SYN-ACK or answer may have gone by unseen).
    pub unwatched: u64,
    /// RSTs of a recognised prober's routine probes: counted in the prober table, no
    /// `reset` event each.
    pub probe_resets: u64,
    /// Connections dropped from a full table before their verdict was settled.
    pub evicted_pending: u64,
    /// Handshakes still open when the input ended, too young for a verdict.
    pub undecided: u64,
    /// Kernel reasons kept with their connection, and those whose flow was not in the table.
    pub kernel_joined: u64,
    pub kernel_unmatched: u64,
    /// Flood sampling: SYNs and SYN-ACKs the kernel skipped, counted through the records that
    /// carried them (`Packet::weight`).
    pub sampled_syns: u64,
    pub sampled_synacks: u64,
}

impl EngineCounters {
    /// Adds another worker's counters.
    pub fn add(&mut self, o: &EngineCounters) {
        self.packets += o.packets;
        self.unmatched += o.unmatched;
        self.duplicates += o.duplicates;
        self.events += o.events;
        self.folded += o.folded;
        for (a, b) in self.folded_by.iter_mut().zip(o.folded_by) {
            *a += b;
        }
        self.evicted_pending += o.evicted_pending;
        self.unwatched += o.unwatched;
        self.probe_resets += o.probe_resets;
        self.undecided += o.undecided;
        self.kernel_joined += o.kernel_joined;
        self.kernel_unmatched += o.kernel_unmatched;
        self.sampled_syns += o.sampled_syns;
        self.sampled_synacks += o.sampled_synacks;
    }
}

/// What the summary shows of one engine or of several workers' engines added up.
pub struct Totals {
    pub endpoints: Endpoints,
    pub counters: EngineCounters,
    pub table: crate::flow::TableStats,
    /// What the kernel said (inline mode with kernel reasons): (what, reason name) → count.
    pub kernel: std::collections::BTreeMap<(&'static str, String), u64>,
    /// Every worker's probe counts per (source, server endpoint), not yet added up.
    pub probes: Vec<(super::prober::Pair, super::prober::ProbeCounters)>,
}

impl Totals {
    /// Adds up `engines` (one per worker).
    pub fn of<'a>(engines: impl IntoIterator<Item = &'a Engine>) -> Self {
        let mut t: Option<Totals> = None;
        for e in engines {
            let t = t.get_or_insert_with(|| Totals {
                endpoints: Endpoints::new(e.ctx.cfg.max_endpoints),
                counters: EngineCounters::default(),
                table: Default::default(),
                kernel: Default::default(),
                probes: Vec::new(),
            });
            t.probes.extend(e.ctx.probers.export());
            t.endpoints.merge(&e.ctx.endpoints);
            t.counters.add(&e.ctx.counters);
            t.table.add(&e.table.stats());
            let names = e
                .ctx
                .cfg
                .kernel_names
                .as_deref()
                .cloned()
                .unwrap_or_default();
            for (&(said, reason), &n) in &e.ctx.kernel_said {
                *t.kernel
                    .entry((said.as_str(), names.name(said, reason)))
                    .or_default() += n;
            }
        }
        t.unwrap_or_else(|| Totals {
            endpoints: Endpoints::new(0),
            counters: EngineCounters::default(),
            table: Default::default(),
            kernel: Default::default(),
            probes: Vec::new(),
        })
    }
}

/// Why a pending handshake verdict was settled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Ended {
    /// Its deadline passed: the sender stopped retransmitting.
    GaveUp,
    /// The capture (or the live run) ended.
    CaptureEnd,
    /// A full flow table evicted the connection.
    Evicted,
    /// The client gave up and opened a new attempt on the same port (a new ISN).
    Replaced,
    /// The client's kernel answered a late SYN-ACK retransmission with a RST: it had given
    /// up the connection (a half-open handshake that ended at the client).
    ClientReset,
}

impl Ended {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Ended::GaveUp => "gave_up",
            Ended::CaptureEnd => "capture_end",
            Ended::Evicted => "evicted",
            Ended::Replaced => "replaced",
            Ended::ClientReset => "client_reset",
        }
    }
}

/// Everything the rules share besides the flow table (split from it so a rule can hold a
/// connection of the table and emit at once).
pub(super) struct Ctx {
    pub cfg: Config,
    pub endpoints: Endpoints,
    pub shared: Arc<Shared>,
    pub counters: EngineCounters,
    /// Counts of the current capture-time second for the aggregate anomalies.
    pub tally: Tally,
    /// What the kernel said, by what and reason (inline mode with kernel reasons).
    pub kernel_said: std::collections::BTreeMap<(super::kernel::Said, u32), u64>,
    /// Probe-shaped connections per (source, server endpoint).
    pub probers: super::prober::Probers,
}

/// One fixed hash for the distinct-source sketches, so every worker's sketches can be merged.
pub(super) const SOURCE_HASH: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x5eed);

impl Ctx {
    /// Whether the peer of `subject` (a role) was ever heard from: in this flow, or any
    /// packet from that host to the subject's host.
    pub(super) fn reverse_seen(&self, key: &FlowKey, conn: &Conn, subject: usize) -> bool {
        let other = 1 - subject;
        if conn.half[other].seen {
            return true;
        }
        let (subj, oth) = ends(key, conn, subject);
        self.shared.pair_seen(&oth.ip, &subj.ip)
    }

    /// The stats of `conn`'s server endpoint, `server`.
    pub(super) fn stats(&mut self, conn: &mut Conn, server: Endpoint) -> &mut EndpointStats {
        let id = *conn.ep.get_or_insert_with(|| self.endpoints.id(server));
        self.endpoints.at(id)
    }

    /// `n` SYNs to (SYN-ACKs from) `server` that flood sampling skipped: counted as SYN
    /// packets of the endpoint and in the flood tally, without connections or sources.
    pub(super) fn count_sampled(&mut self, server: Endpoint, n: u64, synack: bool) {
        if synack {
            self.counters.sampled_synacks += n;
            self.tally.synacks_unseen(server, n);
        } else {
            self.counters.sampled_syns += n;
            self.endpoints.get(server).syns += n;
            self.tally.syns_unseen(server, n);
        }
    }

    /// The probe counts of source `ip` at server endpoint `server` (None beyond the bound).
    pub(super) fn probe(
        &mut self,
        ip: [u8; 16],
        server: Endpoint,
    ) -> Option<&mut super::prober::ProbeCounters> {
        let configured = !self.cfg.probe_sources.is_empty()
            && super::prober::configured(super::prober::source_addr(&ip), &self.cfg.probe_sources);
        let c = self.probers.get((ip, server))?;
        c.configured |= configured;
        Some(c)
    }

    /// The SYN stream of `conn` is over (answered, refused, given up or replaced): it no longer
    /// counts in the `syn_retrying` gauge of `server`.
    pub(super) fn end_syn_retry(&mut self, conn: &mut Conn, server: Endpoint) {
        if std::mem::take(&mut conn.retrying) {
            self.stats(conn, server).syn_retry_ended += 1;
        }
    }

    /// Emits `kind` for `conn` (once per connection, except `reset`). `subject` is the role
    /// whose packet the verdict is about; `one_way` marks a verdict that needs a direction
    /// the vantage never captured.
    #[expect(clippy::too_many_arguments, reason = "the envelope of one event")]
    pub(super) fn emit(
        &mut self,
        out: &mut Vec<Event>,
        key: &FlowKey,
        conn: &mut Conn,
        kind: Kind,
        subject: usize,
        one_way: Option<&'static str>,
        ts: u64,
        mut evidence: serde_json::Map<String, Value>,
    ) {
        if let Some(k) = super::kernel::evidence(conn, self.cfg.kernel_names.as_ref()) {
            evidence.insert("kernel".into(), k);
        }
        // The reset's sender: a `reset`'s subject; the server that refused a SYN.
        let sender = match kind {
            Kind::Reset => Some(subject),
            Kind::SynRejected => Some(S),
            _ => None,
        };
        if let Some(sender) = sender
            && let Some(r) =
                super::kernel::reset_reason(conn, sender, self.cfg.kernel_names.as_ref())
        {
            evidence.insert("kernel_reason".into(), Value::String(r));
        }
        if let Some(t) = conn.tunnel() {
            let (src, dst) = t.outer.map_or((None, None), |(s, d)| {
                (Some(s.to_string()), Some(d.to_string()))
            });
            evidence.insert(
                "tunnel".into(),
                serde_json::json!({ "kind": t.kind.name(), "outer_src": src, "outer_dst": dst }),
            );
        }
        if kind != Kind::Reset {
            if conn.reported & kind.bit() != 0 {
                return;
            }
            conn.reported |= kind.bit();
            // Begun before both directions were watched: what looks missing may have passed
            // before the capture saw that way. Its RSTs are still classified.
            if conn.unwatched {
                self.counters.unwatched += 1;
                return;
            }
        }
        let client = key.get(conn.client);
        let server = key.get(conn.client.peer());
        let reverse_seen = self.reverse_seen(key, conn, subject);
        self.stats(conn, server).anomalies[kind as usize] += 1;
        // The verdicts of connections an aggregate episode is made of are counted, not sent:
        // a flood's connections are those begun during it, a storm's RSTs those sent during it.
        let folded = match kind {
            Kind::SynUnanswered
            | Kind::SynackUnacked
            | Kind::SynRejected
            | Kind::AcceptQueueOverflow => {
                let began = [conn.syn_first, conn.synack_first, ts]
                    .into_iter()
                    .find(|&t| t != 0)
                    .unwrap_or(ts);
                self.shared.flood_folds(&server, began, kind)
            }
            Kind::Reset => {
                let sender = if subject == C { client.ip } else { server.ip };
                self.shared.storm_folds(&sender, ts)
            }
            _ => false,
        };
        if folded {
            self.counters.folded += 1;
            if let Some(i) = super::shared::fold_index(kind) {
                self.counters.folded_by[i] += 1;
            }
            return;
        }
        self.counters.events += 1;
        out.push(Event {
            ts_ns: ts,
            kind,
            client: Some(client),
            server: Some(server),
            ifindex: conn.ifindex,
            reverse_seen,
            one_way,
            evidence,
        });
    }
}

/// (subject's endpoint, the other end's endpoint).
pub(super) fn ends(key: &FlowKey, conn: &Conn, subject: usize) -> (Endpoint, Endpoint) {
    let client = key.get(conn.client);
    let server = key.get(conn.client.peer());
    if subject == C {
        (client, server)
    } else {
        (server, client)
    }
}

/// The detection engine of one worker.
pub struct Engine {
    pub(super) table: FlowTable<Conn>,
    pub(super) ctx: Ctx,
    now: u64,
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
    /// Sent by the capturing host itself (inline mode's TC egress); false for received
    /// packets, taps and capture files.
    pub egress: bool,
    /// Packets this one stands for: > 1 for a SYN or SYN-ACK recorded in flood sampling,
    /// which carries the ones of its endpoint the kernel skipped before it.
    pub weight: u32,
}

/// A packet's flow key, which end sent it, and the table's hash of the key.
#[derive(Clone, Copy)]
struct Keyed {
    key: FlowKey,
    side: crate::flow::Side,
    hash: u64,
}

/// Sequence space a segment uses: payload plus one for SYN and for FIN.
pub(super) fn seq_len(seg: &Segment) -> u32 {
    seg.payload_len
        + u32::from(seg.flags.contains(TcpFlags::SYN))
        + u32::from(seg.flags.contains(TcpFlags::FIN))
}

/// What tells two captures of one segment from two segments: every header field a
/// retransmission would change (IPv4 ID, TSval) or a different segment would.
fn fingerprint(seg: &Segment) -> u64 {
    const H: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0xd0b1e);
    H.hash_one((
        seg.seq,
        seg.ack,
        seg.flags.0,
        seg.window,
        seg.payload_len,
        seg.ip_id,
        seg.options.timestamps,
    ))
}

impl Engine {
    /// An engine with its own cross-flow state (one worker, pcap replay, tests).
    pub fn new(cfg: Config) -> Self {
        let shared = Arc::new(Shared::for_flows(cfg.max_flows));
        Self::with_shared(cfg, shared)
    }

    /// An engine that shares cross-flow state (listener liveness, PAWS) with the other
    /// workers' engines of the same capture.
    pub fn with_shared(cfg: Config, shared: Arc<Shared>) -> Self {
        Self {
            table: FlowTable::new(cfg.max_flows),
            ctx: Ctx {
                endpoints: Endpoints::new(cfg.max_endpoints),
                shared,
                counters: EngineCounters::default(),
                tally: Tally::default(),
                kernel_said: Default::default(),
                probers: Default::default(),
                cfg,
            },
            now: 0,
            tally_sec: 0,
            tallies: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.ctx.cfg
    }
    pub fn counters(&self) -> EngineCounters {
        self.ctx.counters
    }
    pub fn table_stats(&self) -> crate::flow::TableStats {
        self.table.stats()
    }
    /// The most one engine's flow table can take with `max_flows` flows.
    pub fn table_bound_bytes(max_flows: usize) -> usize {
        FlowTable::<Conn>::bound_bytes(max_flows)
    }
    pub fn table_memory_bytes(&self) -> usize {
        self.table.memory_bytes()
    }
    pub fn endpoints(&self) -> &Endpoints {
        &self.ctx.endpoints
    }
    /// Probe counts per (source, server endpoint).
    pub fn probers(&self) -> &super::prober::Probers {
        &self.ctx.probers
    }
    /// The cross-flow state this engine shares with the other workers.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.ctx.shared
    }

    /// Emits `kind` for the connection in `slot` (see [`Ctx::emit`]).
    #[expect(clippy::too_many_arguments, reason = "the envelope of one event")]
    pub(super) fn emit(
        &mut self,
        out: &mut Vec<Event>,
        slot: u32,
        kind: Kind,
        subject: usize,
        one_way: Option<&'static str>,
        ts: u64,
        evidence: serde_json::Map<String, Value>,
    ) {
        let key = self.table.key(slot);
        if let Some(conn) = self.table.get_mut(slot) {
            self.ctx
                .emit(out, &key, conn, kind, subject, one_way, ts, evidence);
        }
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

    /// End of input at capture time `now`: fires what is due, then settles what the end
    /// decides: a RST held for the reorder window is final, a SYN or SYN-ACK stream that
    /// waited at least its timeout is unanswered (`ended: capture_end`), a younger one is
    /// counted as `undecided`.
    pub fn finish(&mut self, now: u64, out: &mut Vec<Event>) {
        self.advance(now, out);
        for slot in self.table.armed_slots(TimerKind::Settle) {
            self.table.disarm(slot, TimerKind::Settle);
            self.on_settle(slot, out);
        }
        for (kind, wait) in [
            (TimerKind::Syn, self.ctx.cfg.syn_timeout),
            (TimerKind::SynAck, self.ctx.cfg.synack_timeout),
        ] {
            for slot in self.table.armed_slots(kind) {
                let first = self.table.get(slot).map_or(now, |c| match kind {
                    TimerKind::Syn => c.syn_first,
                    _ => c.synack_first,
                });
                self.table.disarm(slot, kind);
                if now.saturating_sub(first) >= wait {
                    self.on_pending_end(kind, slot, now, super::engine::Ended::CaptureEnd, out);
                } else {
                    self.ctx.counters.undecided += 1;
                }
            }
        }
        self.roll_tally(self.tally_sec + 1);
    }

    fn roll_tally(&mut self, sec: u64) {
        let mut t = std::mem::take(&mut self.ctx.tally);
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

    /// Processes one packet.
    pub fn process(&mut self, p: &Packet<'_>, out: &mut Vec<Event>) {
        let k = self.key_of(p);
        self.process_keyed(p, &k, out);
    }

    fn key_of(&self, p: &Packet<'_>) -> Keyed {
        let src = Endpoint::from(p.seg.src);
        let dst = Endpoint::from(p.seg.dst);
        let (key, side) = FlowKey::of(src, dst);
        Keyed {
            key,
            side,
            hash: self.table.hash(&key),
        }
    }

    /// Processes `pkts` in order, exactly as [`Engine::process`] one by one would, but looks
    /// their flows up ahead of time: the index lines of a group of packets are requested
    /// together, and each flow's state a few packets before its turn, so the cache misses of
    /// a large table overlap instead of stalling one after another.
    pub fn process_batch(&mut self, pkts: &[Packet<'_>], out: &mut Vec<Event>) {
        const GROUP: usize = 16;
        const AHEAD: usize = 4;
        for group in pkts.chunks(GROUP) {
            let keyed: [Option<Keyed>; GROUP] = std::array::from_fn(|i| {
                let k = self.key_of(group.get(i)?);
                self.table.prefetch_index(k.hash);
                Some(k)
            });
            for (i, p) in group.iter().enumerate() {
                if let Some(Some(ahead)) = keyed.get(i + AHEAD) {
                    self.table.prefetch_slot(ahead.hash);
                } else if i == 0 {
                    for k in keyed.iter().take(AHEAD).flatten() {
                        self.table.prefetch_slot(k.hash);
                    }
                }
                if let Some(k) = &keyed[i] {
                    self.process_keyed(p, k, out);
                }
            }
        }
    }

    fn process_keyed(&mut self, p: &Packet<'_>, k: &Keyed, out: &mut Vec<Event>) {
        let now = p.ts_ns;
        self.advance(now, out);
        self.ctx.counters.packets += 1;
        let seg = p.seg;
        let Keyed { key, side, hash } = *k;
        let (src, dst) = (key.get(side), key.get(side.peer()));
        let f = seg.flags;
        let (syn, ack, rst, fin) = (
            f.contains(TcpFlags::SYN),
            f.contains(TcpFlags::ACK),
            f.contains(TcpFlags::RST),
            f.contains(TcpFlags::FIN),
        );

        let slot = match self.table.find_hashed(&key, hash) {
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
                    self.ctx.counters.unmatched += 1;
                    return;
                };
                let mut conn = conn;
                conn.unwatched = now < self.ctx.cfg.watched_from;
                let (slot, evicted) = self.table.insert(key, conn, class);
                if let Some((old_key, mut old, _)) = evicted {
                    self.on_evicted(&old_key, &mut old, now, out);
                }
                if self
                    .table
                    .get(slot)
                    .is_some_and(|c| c.state == State::Midstream)
                {
                    self.table.arm(
                        slot,
                        TimerKind::Expire,
                        now.saturating_add(self.ctx.cfg.established_idle),
                    );
                }
                slot
            }
        };
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let role = conn.role_of(side);
        // The SYNs (SYN-ACKs) a sampled record carries were skipped in the kernel: they count
        // whatever becomes of the record itself, a duplicate's included.
        let f = seg.flags;
        if p.weight > 1 && f.contains(TcpFlags::SYN) && !f.contains(TcpFlags::RST) {
            let server_ep = key.get(conn.client.peer());
            self.ctx.count_sampled(
                server_ep,
                u64::from(p.weight - 1),
                f.contains(TcpFlags::ACK),
            );
        }
        // The same segment captured twice (mirror ports, `-i any`): the copy is skipped. On
        // the host itself (inline) a packet passes each hook once: only a copy through the
        // other hook (a host forwarding out the interface it came in on) is the same packet;
        // two equal segments through one hook are two packets (a flood replaying its SYNs
        // faster than `duplicate_window`).
        let fp = (fingerprint(seg) & !1) | u64::from(p.egress);
        let h = &mut conn.half[role];
        if (!self.ctx.cfg.host_vantage || (h.fingerprint ^ fp) & 1 == 1)
            && h.seen
            && (h.fingerprint | 1) == (fp | 1)
            && now.saturating_sub(h.fingerprint_ns) <= self.ctx.cfg.duplicate_window
        {
            self.ctx.counters.duplicates += 1;
            return;
        }
        h.fingerprint = fp;
        h.fingerprint_ns = now;
        if !h.seen {
            h.seen = true;
            // Once per flow and direction: the host pair has traffic this way.
            self.ctx.shared.saw_pair(&src.ip, &dst.ip);
        }
        if seg.tunnel.is_some() && conn.tunnel().is_none() {
            conn.rare_mut().tunnel = seg.tunnel;
        }
        conn.client_tsval_before = conn.client_tsval;
        if role == C
            && let Some((ts, _)) = seg.options.timestamps
        {
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
            let h = &mut conn.half[role];
            let end = seg.seq.wrapping_add(seq_len(seg));
            if !rst {
                if h.next_seq.is_none_or(|n| seq_lt(n, end)) {
                    h.next_seq = Some(end);
                }
                if ack && h.acked.is_none_or(|a| seq_lt(a, seg.ack)) {
                    h.acked = Some(seg.ack);
                }
                h.window = seg.window;
                h.window_of_syn = syn;
            }
            if syn {
                h.wscale = seg.options.wscale;
            }
            if seg.payload_len > 0 {
                conn.data_seen = true;
            }
            conn.half[role].last = Some(LastSeg {
                seq: seg.seq,
                ack: seg.ack,
                has_ack: ack,
                seq_len: seq_len(seg),
            });
            let busy = matches!(conn.state, State::Established | State::Midstream)
                && conn.late_ack_ns == 0;
            // `established_idle` counts from the last packet: re-armed at most once a second.
            let idle = now.saturating_add(self.ctx.cfg.established_idle);
            if busy
                && self
                    .table
                    .deadline(slot, TimerKind::Expire)
                    .is_some_and(|d| d.saturating_add(SEC) < idle)
            {
                self.table.arm(slot, TimerKind::Expire, idle);
            }
        }
    }

    /// A full table pushed `conn` out: a handshake verdict it was waiting for is settled now
    /// (`ended: evicted`), so a flood of new flows cannot hide an unanswered SYN.
    fn on_evicted(&mut self, key: &FlowKey, conn: &mut Conn, now: u64, out: &mut Vec<Event>) {
        if !conn.pending() {
            return;
        }
        self.ctx.counters.evicted_pending += 1;
        match conn.state {
            State::SynSent if conn.syn_count > 0 => {
                let ev = super::handshake::unanswered_syn_evidence(conn, Ended::Evicted);
                let ctx = &mut self.ctx;
                ctx.emit(out, key, conn, Kind::SynUnanswered, C, None, now, ev);
            }
            State::SynReceived if conn.early_rst().is_none() => {
                let (kind, subject, one_way, ev) =
                    super::handshake::unacked_synack_verdict(&self.ctx, key, conn, Ended::Evicted);
                self.ctx
                    .emit(out, key, conn, kind, subject, one_way, now, ev);
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, kind: TimerKind, slot: u32, deadline: u64, out: &mut Vec<Event>) {
        match kind {
            TimerKind::Syn | TimerKind::SynAck => {
                self.on_pending_end(kind, slot, deadline, Ended::GaveUp, out)
            }
            TimerKind::Leak => self.on_leak_timer(slot, deadline, out),
            TimerKind::Fin => self.on_fin_timer(slot, deadline, out),
            TimerKind::Settle => self.on_settle(slot, out),
            TimerKind::Expire => {
                self.table.remove(slot);
            }
        }
    }

    /// The client's IP hashed for the distinct-source sketches.
    pub(super) fn source_hash(ip: [u8; 16]) -> u64 {
        SOURCE_HASH.hash_one(ip)
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
