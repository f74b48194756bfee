//! Rule tests: each anomaly with its exact evidence, and the nearest case that must not fire.

use super::*;
use crate::detect::stats::Latency;
use crate::evidence;
use crate::wire::{emit::SegmentBuilder, parse_ip_tcp};
use serde_json::Value;

const T0: u64 = 1_800_000_000 * SEC;
const CLIENT: [u8; 4] = [192, 0, 2, 1];
const SERVER: [u8; 4] = [192, 0, 2, 2];

struct Sim {
    eng: Engine,
    out: Vec<Event>,
}

fn seg(b: SegmentBuilder) -> Segment {
    parse_ip_tcp(&crate::wire::emit::ip_tcp(&b)).expect("emitted packet parses")
}

impl Sim {
    fn new() -> Self {
        Self::with(Config::default())
    }
    fn with(cfg: Config) -> Self {
        Self {
            eng: Engine::new(cfg),
            out: Vec::new(),
        }
    }
    fn at(&mut self, ms: u64, b: SegmentBuilder) -> &mut Self {
        let s = seg(b);
        self.eng.process(
            &Packet {
                ts_ns: T0 + ms * MS,
                ifindex: 3,
                seg: &s,
                egress: false,
                weight: 1,
            },
            &mut self.out,
        );
        self
    }
    fn until(&mut self, ms: u64) -> &mut Self {
        self.eng.advance(T0 + ms * MS, &mut self.out);
        self
    }
    fn kinds(&self) -> Vec<&'static str> {
        self.out.iter().map(|e| e.kind.as_str()).collect()
    }
    fn one(&self, kind: Kind) -> &Event {
        let v: Vec<_> = self.out.iter().filter(|e| e.kind == kind).collect();
        assert_eq!(v.len(), 1, "exactly one {kind:?} in {:?}", self.kinds());
        v[0]
    }
}

fn c(port: u16, flags: TcpFlags, seq: u32, ack: u32) -> SegmentBuilder {
    SegmentBuilder::v4(CLIENT, port, SERVER, 80)
        .flags(flags)
        .seq(seq)
        .ack(ack)
}
fn s(port: u16, flags: TcpFlags, seq: u32, ack: u32) -> SegmentBuilder {
    SegmentBuilder::v4(SERVER, 80, CLIENT, port)
        .flags(flags)
        .seq(seq)
        .ack(ack)
}
/// A [`Sim`] whose per-second tallies go through the aggregator (`flood_rate` 1000/s).
struct Flood {
    sim: Sim,
    agg: crate::detect::aggregate::Aggregator,
}

impl Flood {
    fn new() -> Self {
        use crate::detect::aggregate::{Aggregator, Rates};
        let cfg = Config {
            flood_rate: 1000,
            ..Config::default()
        };
        let sim = Sim::with(cfg.clone());
        let agg = Aggregator::new(Rates::of(&cfg), 1, sim.eng.shared().clone());
        Self { sim, agg }
    }
    /// Hands the finished seconds to the aggregator.
    fn feed(&mut self) {
        let (t, w) = self.sim.eng.take_tallies();
        self.agg.feed(0, t, w, &mut self.sim.out);
    }
    /// Runs the clock to `ms` and closes open episodes.
    fn finish(mut self, ms: u64) -> Sim {
        self.sim.until(ms);
        self.feed();
        self.agg.finish(&mut self.sim.out);
        self.sim
    }
}

const SYN: TcpFlags = TcpFlags::SYN;
const SA: TcpFlags = TcpFlags(0x12);
const ACK: TcpFlags = TcpFlags::ACK;
const RA: TcpFlags = TcpFlags(0x14);
const FA: TcpFlags = TcpFlags(0x11);
use crate::detect::RstClass;

/// A complete handshake on client port `p` at `t` ms: ISNs 1000 (client) and 5000 (server).
fn handshake(sim: &mut Sim, p: u16, t: u64) {
    sim.at(t, c(p, SYN, 1000, 0).timestamps(100, 0))
        .at(t + 1, s(p, SA, 5000, 1001))
        .at(t + 2, c(p, ACK, 1001, 5001));
}

#[test]
fn syn_answered_by_rst_is_rejected_and_refused() {
    let mut sim = Sim::new();
    sim.at(0, c(40000, SYN, 1000, 0))
        .at(1, s(40000, RA, 0, 1001));
    assert!(sim.out.is_empty(), "held for the reorder window");
    sim.until(201);
    // One verdict per fact: the refusing RST is syn_rejected's evidence.
    assert_eq!(sim.kinds(), ["syn_rejected"]);
    let r = sim.one(Kind::SynRejected);
    assert_eq!(r.ts_ns, T0 + MS, "the RST's own time");
    assert_eq!(r.ev("rst_class"), "refused");
    assert_eq!(r.ev("effect"), "reset");
    assert_eq!(r.ev("phase"), "handshake");
    assert_eq!(r.ev("from"), "server");
    assert_eq!(r.ev("rst_ack"), 1001);
    assert_eq!(r.client.unwrap().to_string(), "192.0.2.1:40000");
    assert_eq!(r.server.unwrap().to_string(), "192.0.2.2:80");
    assert!(r.reverse_seen);
}

#[test]
fn unanswered_syns_fire_once_when_the_client_gave_up_with_their_count() {
    let mut sim = Sim::new();
    sim.at(0, c(40000, SYN, 1000, 0).timestamps(77, 0))
        .at(1000, c(40000, SYN, 1000, 0));
    // After a 1 s gap the next SYN is due 1 s (linear) or 2 s (doubling) later: the stream
    // is given up at 1 s + 2 s + 0.5 s.
    sim.until(3499);
    assert!(sim.out.is_empty(), "not before the client gave up");
    sim.until(3500).until(10_000);
    let e = sim.one(Kind::SynUnanswered);
    assert_eq!(
        e.evidence,
        evidence! { "syn_count" => 2, "isn" => 1000, "tsval" => 77, "span_ms" => 1000,
        "ended" => "gave_up", "server_answer" => Value::Null }
    );
    assert_eq!(e.ts_ns, T0 + 3500 * MS);
    assert!(!e.reverse_seen, "the server never sent anything");
    assert_eq!(e.severity(), "warning");
    let st = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!(
        (
            st.syns,
            st.syn_retransmits,
            st.syn_retry_started,
            st.syn_retry_ended
        ),
        (2, 1, 1, 1)
    );
}

/// Linux's SYN schedule with `tcp_syn_retries` = 6: 0, 1, 3, 7, 15, 31, 63 s.
const LINUX_SYNS: [u64; 7] = [0, 1000, 3000, 7000, 15_000, 31_000, 63_000];

#[test]
fn a_syn_answered_on_its_second_retransmission_is_never_unanswered() {
    let mut sim = Sim::new();
    for t in &LINUX_SYNS[..3] {
        sim.at(*t, c(1, SYN, 1000, 0));
        sim.until(t + 999);
        if *t == 1000 {
            let st = sim.eng.endpoints().iter().next().unwrap().1;
            assert_eq!(
                st.syn_retry_started - st.syn_retry_ended,
                1,
                "in retry: the early signal"
            );
        }
    }
    sim.at(3001, s(1, SA, 5000, 1001))
        .at(3002, c(1, ACK, 1001, 5001))
        .until(200_000);
    assert_eq!(sim.kinds(), ["syn_retransmitted"]);
    assert_eq!(sim.out[0].ev("syn_count"), 3);
    assert_eq!(sim.out[0].ev("extra_delay_us"), 3_000_000);
    let st = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!((st.syn_retry_started, st.syn_retry_ended), (1, 1));
}

#[test]
fn windows_backoff_answered_at_9_s_is_never_unanswered() {
    let mut sim = Sim::new();
    for t in [0, 3000, 9000] {
        sim.at(t, c(1, SYN, 1000, 0));
    }
    sim.at(9002, s(1, SA, 5000, 1001))
        .at(9003, c(1, ACK, 1001, 5001))
        .until(100_000);
    assert_eq!(sim.kinds(), ["syn_retransmitted"]);
}

#[test]
fn a_linux_client_that_never_gets_an_answer_is_reported_once_when_it_gives_up() {
    let mut sim = Sim::new();
    for t in LINUX_SYNS {
        sim.at(t, c(1, SYN, 1000, 0));
    }
    sim.until(63_000 + 64_000 + 999);
    assert!(sim.out.is_empty(), "{:?}", sim.kinds());
    sim.until(63_000 + 64_000 + 1000);
    let e = sim.one(Kind::SynUnanswered);
    assert_eq!(e.ev("syn_count"), 7);
    assert_eq!(e.ev("span_ms"), 63_000);
    assert_eq!(e.ts_ns, T0 + 128_000 * MS, "1 s after connect() failed");
}

#[test]
fn the_end_of_the_capture_settles_old_enough_syn_streams_and_counts_young_ones() {
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0)).at(1000, c(1, SYN, 1000, 0));
    sim.at(2700, c(2, SYN, 2000, 0));
    sim.eng.finish(T0 + 3200 * MS, &mut sim.out);
    let e = sim.one(Kind::SynUnanswered);
    assert_eq!(e.client.unwrap().port, 1);
    assert_eq!(e.ev("ended"), "capture_end");
    assert_eq!(sim.eng.counters().undecided, 1, "the 0.5 s old SYN");
}

#[test]
fn a_pending_syn_pushed_out_of_a_full_table_is_settled_as_evicted() {
    let mut sim = Sim::with(Config {
        max_flows: 1,
        ..Config::default()
    });
    sim.at(0, c(1, SYN, 1000, 0)).at(10, c(2, SYN, 2000, 0));
    let e = sim.one(Kind::SynUnanswered);
    assert_eq!(e.client.unwrap().port, 1);
    assert_eq!(e.ev("ended"), "evicted");
    assert_eq!(sim.eng.counters().evicted_pending, 1);
}

#[test]
fn retransmitted_then_answered_syn_reports_the_extra_delay() {
    let mut sim = Sim::new();
    sim.at(0, c(40000, SYN, 1000, 0))
        .at(1000, c(40000, SYN, 1000, 0))
        .at(1001, s(40000, SA, 5000, 1001));
    assert_eq!(sim.kinds(), ["syn_retransmitted"]);
    assert_eq!(sim.out[0].ev("syn_count"), 2);
    assert_eq!(sim.out[0].ev("extra_delay_us"), 1_000_000);
}

#[test]
fn synack_without_ack_is_half_open_but_not_when_acked() {
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, s(1, SA, 5000, 1001))
        .at(1001, s(1, SA, 5000, 1001));
    handshake(&mut sim, 2, 0);
    sim.until(5000);
    assert_eq!(sim.kinds(), ["synack_unacked"]);
    assert_eq!(sim.out[0].ev("synack_count"), 2);
    assert_eq!(sim.out[0].client.unwrap().port, 1);
}

#[test]
fn synack_acking_the_wrong_isn_is_flagged() {
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0)).at(1, s(1, SA, 5000, 777));
    assert_eq!(sim.kinds(), ["synack_wrong_ack"]);
    assert_eq!(sim.out[0].ev("expected_ack"), 1001);
    assert_eq!(sim.out[0].ev("ack"), 777);
}

#[test]
fn synack_retransmitted_while_the_clients_data_goes_unacked_is_accept_queue_overflow() {
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(3, c(1, ACK, 1001, 5001).payload(b"GET / HTTP/1.1\r\n\r\n"))
        .at(1003, s(1, SA, 5000, 1001));
    // The first retransmission may cross a slow ACK: told at the second.
    assert!(sim.out.is_empty());
    sim.at(3003, s(1, SA, 5000, 1001));
    let e = sim.one(Kind::AcceptQueueOverflow);
    assert_eq!(e.ev("signature"), "ack_dropped");
    assert_eq!(e.ev("synack_after_ack"), 2);
    assert_eq!(e.ev("stall_us"), 3_001_000);
}

#[test]
fn synack_retransmitted_after_a_bare_ack_or_a_retransmitted_syn_is_no_overflow() {
    // TCP_DEFER_ACCEPT drops the bare ACK and resends its SYN-ACK; the data is then taken.
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(1010, s(1, SA, 5000, 1001))
        .at(1011, c(1, ACK, 1001, 5001))
        .at(2500, c(1, ACK, 1001, 5001).payload(b"GET"))
        .at(2501, s(1, ACK, 5001, 1004))
        .until(10_000);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
    // High RTT: the second SYN-ACK answers the retransmitted SYN.
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1000, c(1, SYN, 1000, 0))
        .at(1200, s(1, SA, 5000, 1001))
        .at(1201, c(1, ACK, 1001, 5001))
        .at(1210, c(1, ACK, 1001, 5001).payload(b"GET"))
        .at(1250, s(1, SA, 5000, 1001))
        .until(10_000);
    assert_eq!(sim.kinds(), ["syn_retransmitted"]);
}

#[test]
fn unanswered_syn_to_a_live_listener_is_accept_queue_overflow_not_syn_unanswered() {
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(100, c(2, SYN, 9000, 0))
        .at(1100, c(2, SYN, 9000, 0))
        .until(6000);
    assert_eq!(sim.kinds(), ["accept_queue_overflow"]);
    assert_eq!(sim.out[0].ev("signature"), "syn_dropped");
    // Measured at the SYN, not at the verdict: a handshake landing between two identical
    // streams' deadlines cannot change their verdicts.
    assert_eq!(sim.out[0].ev("last_handshake_age_ms"), 98);
    // The same SYN to a listener idle for longer than listener_alive is syn_unanswered.
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(20_000, c(2, SYN, 9000, 0))
        .at(21_000, c(2, SYN, 9000, 0))
        .until(30_000);
    assert_eq!(sim.kinds(), ["syn_unanswered"]);
    // A lone SYN (a stateless scanner's) to a live listener proves nothing of its queue.
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(100, c(2, SYN, 9000, 0)).until(6000);
    assert_eq!(sim.kinds(), ["syn_unanswered"]);
}

fn probe(rst_tsval: Option<u32>, rst_seq: u32) -> Sim {
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0).timestamps(1_000_000, 0))
        .at(1, s(1, SA, 5000, 1001).timestamps(9, 1_000_000));
    let mut rst = c(1, TcpFlags::RST, rst_seq, 0);
    if let Some(v) = rst_tsval {
        rst = rst.timestamps(v, 9);
    }
    sim.at(2, rst)
        .at(3, c(1, ACK, 1001, 5001).timestamps(1_000_001, 9));
    sim
}

#[test]
fn rst_before_ack_with_zero_tsval_is_a_leak() {
    let mut sim = probe(Some(0), 1001);
    sim.until(5000);
    assert_eq!(
        sim.kinds(),
        ["reset", "probe_rst_before_ack", "probe_connection_leak"]
    );
    let e = sim.one(Kind::ProbeConnectionLeak);
    assert_eq!(e.ev("rst_tsval"), 0);
    assert_eq!(e.ev("syn_tsval"), 1_000_000);
    assert_eq!(e.ev("paws_reject_expected"), true);
    assert_eq!(e.ev("rst_seq_ok"), true);
    assert_eq!(e.ev("late_ack_delay_us"), 2000);
    assert_eq!(e.ts_ns, T0 + 1003 * MS);
}

#[test]
fn rst_before_ack_with_a_valid_timestamp_is_no_leak() {
    let mut sim = probe(Some(1_000_001), 1001);
    sim.until(5000);
    assert_eq!(sim.kinds(), ["reset", "probe_rst_before_ack"]);
    assert_eq!(sim.out[1].ev("paws_reject_expected"), false);
}

#[test]
fn rst_before_ack_outside_the_servers_window_is_a_leak() {
    // Linux `tcp_check_req` drops a RST outside [RCV.NXT, RCV.NXT + window).
    let mut sim = probe(None, 1001 + 100_000);
    sim.until(5000);
    assert_eq!(
        sim.kinds(),
        ["reset", "probe_rst_before_ack", "probe_connection_leak"]
    );
    assert_eq!(sim.out[0].ev("rst_class"), "out_of_window");
    assert_eq!(sim.out[0].ev("effect"), "none");
    assert_eq!(sim.out[2].ev("rst_seq_ok"), false);
    assert_eq!(sim.out[2].ev("rst_tsval"), &Value::Null);
}

#[test]
fn rst_before_ack_inside_the_window_is_accepted_and_no_leak() {
    let mut sim = probe(None, 1500);
    sim.until(5000);
    assert_eq!(sim.kinds(), ["reset", "probe_rst_before_ack"]);
    assert_eq!(sim.out[1].ev("rst_seq_ok"), true);
}

#[test]
fn an_ack_long_after_the_rst_is_no_reordering() {
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0).timestamps(1_000_000, 0))
        .at(1, s(1, SA, 5000, 1001).timestamps(9, 1_000_000))
        .at(2, c(1, TcpFlags::RST, 1001, 0).timestamps(0, 9))
        .at(15_002, c(1, ACK, 1001, 5001).timestamps(1_015_000, 9))
        .until(30_000);
    assert_eq!(
        sim.kinds(),
        ["reset"],
        "15 s later: not the RST's predecessor"
    );
}

#[test]
fn server_rst_answering_the_late_ack_cancels_the_leak() {
    let mut sim = probe(Some(0), 1001);
    sim.at(4, s(1, TcpFlags::RST, 5001, 0)).until(5000);
    assert_eq!(sim.kinds(), ["reset", "probe_rst_before_ack", "reset"]);
    assert_eq!(sim.out[2].ev("rst_class"), "passive");
    assert_eq!(
        sim.out[2].ev("phase"),
        "handshake",
        "answering a probe's late ACK is no ehash race right after a handshake"
    );
}

/// A connection from client port `port` with client TSval `ts`, closed by `closer` first.
fn closed_with_tsval(sim: &mut Sim, port: u16, at: u64, ts: u32, server_first: bool) {
    let (a, f) = (TcpFlags::ACK, TcpFlags::FIN | TcpFlags::ACK);
    sim.at(at, c(port, SYN, 1000, 0).timestamps(ts, 0))
        .at(at + 1, s(port, SA, 5000, 1001))
        .at(at + 2, c(port, a, 1001, 5001).timestamps(ts + 1, 0));
    if server_first {
        sim.at(at + 3, s(port, f, 5001, 1001))
            .at(at + 4, c(port, f, 1001, 5002).timestamps(ts + 2, 0))
            .at(at + 5, s(port, a, 5002, 1002));
    } else {
        sim.at(at + 3, c(port, f, 1001, 5001).timestamps(ts + 2, 0))
            .at(at + 4, s(port, f, 5001, 1002))
            .at(at + 5, c(port, a, 1002, 5002).timestamps(ts + 3, 0));
    }
}

#[test]
fn older_tsval_after_a_server_closed_connection_is_a_nat_collision() {
    let mut sim = Sim::new();
    closed_with_tsval(&mut sim, 1, 0, 500_000, true);
    sim.at(10, c(2, SYN, 7000, 0).timestamps(100, 0))
        .until(5000);
    let e = sim.one(Kind::PawsNatCollision);
    assert_eq!(
        e.ev("prev_tsval"),
        500_002,
        "the client's last TSval, from its FIN"
    );
    assert_eq!(e.ev("tsval"), 100);
    assert_eq!(e.ev("prev_age_ms"), 6);
    assert_eq!(e.ev("answered"), false);
    assert_eq!(e.client.unwrap().port, 2);
    assert!(sim.kinds().contains(&"syn_unanswered"));
    // The client closed first: the server holds no TIME_WAIT, nothing to collide with.
    let mut sim = Sim::new();
    closed_with_tsval(&mut sim, 1, 0, 500_000, false);
    sim.at(10, c(2, SYN, 7000, 0).timestamps(100, 0))
        .at(1010, c(2, SYN, 7000, 0).timestamps(1100, 0))
        .until(6000);
    assert_eq!(
        sim.kinds(),
        ["accept_queue_overflow"],
        "a live listener silently dropping a SYN, and no PAWS explanation"
    );
    // Concurrent connections of one host with randomized TSval offsets: no closed
    // connection, no collision (this fired on every busy client before).
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0).timestamps(500_000, 0))
        .at(1, s(1, SA, 5000, 1001));
    sim.at(10, c(2, SYN, 7000, 0).timestamps(100, 0))
        .until(5000);
    assert_eq!(sim.kinds(), ["synack_unacked", "syn_unanswered"]);
    // An answered SYN with an older TSval is not reported: modern clients randomize TSval
    // offsets per connection.
    let mut sim = Sim::new();
    closed_with_tsval(&mut sim, 1, 0, 500_000, true);
    sim.at(10, c(2, SYN, 7000, 0).timestamps(100, 0))
        .at(11, s(2, SA, 1, 7001))
        .until(5000);
    assert!(
        !sim.kinds().contains(&"paws_nat_collision"),
        "{:?}",
        sim.kinds()
    );
}

#[test]
fn a_new_isn_the_servers_time_wait_rejects_is_reuse_and_harmless_reuse_is_not() {
    // The server closed first (it holds TIME_WAIT); the new SYN's ISN lies behind the old
    // connection's sequence space and carries no timestamp: rejected (RFC 6191).
    let server_closes_first = |sim: &mut Sim| {
        handshake(sim, 1, 0);
        sim.at(10, s(1, FA, 5001, 1001))
            .at(11, c(1, FA, 1001, 5002))
            .at(12, s(1, ACK, 5002, 1002));
    };
    let mut sim = Sim::new();
    server_closes_first(&mut sim);
    sim.at(10_000, c(1, SYN, 500, 0));
    assert!(sim.out.is_empty(), "decided by the server's answer");
    sim.until(20_000);
    // Unanswered: the collision is the verdict (not also syn_unanswered).
    assert_eq!(sim.kinds(), ["syn_tuple_reuse"]);
    let e = sim.one(Kind::SynTupleReuse);
    assert_eq!(e.ev("prev_state"), "closed");
    assert_eq!(e.ev("prev_isn"), 1000);
    assert_eq!(e.ev("isn"), 500);
    assert_eq!(e.ev("server_answer"), &Value::Null);
    let ep = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!((ep.syns, ep.established, ep.closed_normally), (2, 1, 1));
    // Linux accepts a SYN beyond the old sequence space in TIME_WAIT: no collision.
    let mut sim = Sim::new();
    server_closes_first(&mut sim);
    sim.at(10_000, c(1, SYN, 900_000, 0));
    assert_eq!(sim.kinds(), Vec::<&str>::new());
    // The client closed first (the server holds nothing), a RST ended it, or the old attempt
    // was never answered: no collision either.
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(10, c(1, FA, 1001, 5001))
        .at(11, s(1, FA, 5001, 1002))
        .at(12, c(1, ACK, 1002, 5002))
        .at(10_000, c(1, SYN, 500, 0));
    handshake(&mut sim, 2, 0);
    sim.at(500, c(2, RA, 1001, 5001))
        .at(2000, c(2, SYN, 500, 0));
    sim.at(0, c(3, SYN, 7000, 0)).at(20_000, c(3, SYN, 9000, 0));
    sim.until(100_000);
    assert!(
        !sim.kinds().contains(&"syn_tuple_reuse"),
        "{:?}",
        sim.kinds()
    );
    // The same rejected SYN answered by TIME_WAIT's bare ACK, and never by a SYN-ACK.
    let mut sim = Sim::new();
    server_closes_first(&mut sim);
    sim.at(10_000, c(1, SYN, 500, 0))
        .at(10_001, s(1, ACK, 5002, 1002))
        .until(20_000);
    assert_eq!(sim.kinds(), ["syn_tuple_reuse"]);
    let e = sim.one(Kind::SynTupleReuse);
    assert_eq!(e.ev("server_answer"), "bare_ack");
    // The client's RST to that ACK ends TIME_WAIT and its retransmission is answered: the
    // collision cost a second (syn_retransmitted says so), it did not lose the connection.
    let mut sim = Sim::new();
    server_closes_first(&mut sim);
    sim.at(10_000, c(1, SYN, 500, 0))
        .at(10_001, s(1, ACK, 5002, 1002))
        .at(10_002, c(1, TcpFlags::RST, 1002, 0))
        .at(11_000, c(1, SYN, 500, 0))
        .at(11_001, s(1, SA, 9000, 501))
        .at(11_002, c(1, ACK, 501, 9001))
        .until(30_000);
    assert_eq!(sim.kinds(), ["reset", "syn_retransmitted"]);
    // Whatever the synscope thought of the old connection, a SYN the server answers with a
    // SYN-ACK is never a collision.
    let mut sim = Sim::new();
    server_closes_first(&mut sim);
    sim.at(10_000, c(1, SYN, 500, 0))
        .at(10_001, s(1, SA, 8000, 501))
        .at(10_002, c(1, ACK, 501, 8001))
        .until(30_000);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
    // A second ISN while the first SYN still waits is the client's new attempt, judged on
    // its own; the first was abandoned unanswered.
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(500, c(1, SYN, 77, 0))
        .at(501, s(1, SA, 8000, 78))
        .at(502, c(1, ACK, 78, 8001))
        .until(10_000);
    assert_eq!(sim.kinds(), ["syn_unanswered"]);
    assert_eq!(sim.out[0].ev("ended"), "replaced");
    assert_eq!(sim.out[0].ev("isn"), 1000);
}

#[test]
fn an_abandoned_syn_keeps_its_verdict_when_the_client_reuses_its_port() {
    // A health checker gives up a SYN a firewall dropped (after 2 s) and reuses the port:
    // the abandoned attempt is unanswered, the new one (answered) is a plain connection.
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1000, c(1, SYN, 1000, 0))
        .at(2000, c(1, SYN, 4242, 0));
    assert_eq!(sim.kinds(), ["syn_unanswered"]);
    let e = sim.one(Kind::SynUnanswered);
    assert_eq!(e.ev("ended"), "replaced");
    assert_eq!(e.ev("syn_count"), 2);
    assert_eq!(e.ev("isn"), 1000);
    assert_eq!(e.ts_ns, T0 + 2000 * MS);
    sim.at(2001, s(1, SA, 8000, 4243))
        .at(2002, c(1, ACK, 4243, 8001))
        .until(20_000);
    assert_eq!(sim.kinds(), ["syn_unanswered"]);
    let ep = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!((ep.syns, ep.established), (3, 1));
}

#[test]
fn a_reconnect_in_the_same_millisecond_is_taken_by_time_wait() {
    // The server closed first; the client reconnects at once from the same port with the
    // same TSval and a higher ISN: Linux's TIME_WAIT takes it (PAWS passes an equal TSval,
    // the ISN lies beyond the old sequence space; RFC 6191).
    let reconnect = |answered: bool| {
        let mut sim = Sim::new();
        sim.at(0, c(1, SYN, 1000, 0).timestamps(100, 0))
            .at(1, s(1, SA, 5000, 1001).timestamps(7, 100))
            .at(2, c(1, ACK, 1001, 5001).timestamps(100, 7))
            .at(3, s(1, FA, 5001, 1001).timestamps(8, 100))
            .at(3, c(1, FA, 1001, 5002).timestamps(100, 8))
            .at(3, s(1, ACK, 5002, 1002).timestamps(8, 100))
            .at(3, c(1, SYN, 90_000, 0).timestamps(100, 0));
        if answered {
            sim.at(4, s(1, SA, 70_000, 90_001).timestamps(9, 100))
                .at(4, c(1, ACK, 90_001, 70_001).timestamps(100, 9));
        }
        sim.until(20_000);
        sim
    };
    let sim = reconnect(true);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
    let ep = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!((ep.syns, ep.established, ep.closed_normally), (2, 2, 1));
    // Unanswered, it is the server's silence, never a reuse.
    let sim = reconnect(false);
    assert_eq!(sim.kinds(), ["syn_unanswered"]);
}

#[test]
fn a_new_syn_on_an_established_tuple_answered_by_a_challenge_ack_is_a_collision() {
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(1000, c(1, SYN, 77_000, 0))
        .at(1001, s(1, ACK, 5001, 1001))
        .until(10_000);
    let e = sim.one(Kind::SynTupleReuse);
    assert_eq!(e.ev("prev_state"), "established");
    assert_eq!(e.ev("server_answer"), "bare_ack");
}

#[test]
fn fin_without_answer_fires_after_fin_timeout() {
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(100, c(1, FA, 1001, 5001)).until(5099);
    assert!(sim.out.is_empty());
    sim.until(5100);
    let e = sim.one(Kind::FinUnanswered);
    assert_eq!(e.ev("from"), "client");
    assert_eq!(e.ev("fin_count"), 1);
    // Answered by the peer's FIN: nothing.
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(100, c(1, FA, 1001, 5001))
        .at(101, s(1, FA, 5001, 1002))
        .until(10_000);
    assert!(sim.out.is_empty(), "{:?}", sim.kinds());
}

#[test]
fn resets_are_classified_by_phase_and_sender() {
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(10, c(1, RA, 1001, 5001)); // right after the handshake, no data: a probe abort
    handshake(&mut sim, 2, 0);
    sim.at(0, c(2, ACK, 1001, 5001).payload(b"GET"))
        .at(5000, s(2, RA, 5001, 1004)); // active
    assert_eq!(sim.out[0].ev("rst_class"), "probe_abort");
    assert_eq!(sim.out[0].ev("from"), "client");
    assert_eq!(sim.out[1].ev("rst_class"), "active");
    assert_eq!(sim.out[1].ev("phase"), "established");
    assert_eq!(sim.out[1].ev("expected_seq"), 5001);
}

#[test]
fn latency_histograms_record_each_handshake_step() {
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1000, c(1, SYN, 1000, 0))
        .at(1003, s(1, SA, 5000, 1001))
        .at(1010, c(1, ACK, 1001, 5001));
    let (_, st) = sim.eng.endpoints().iter().next().unwrap();
    let p = |l: Latency| st.latency[l as usize].value_at_quantile(0.5);
    assert!(
        (2990..=3010).contains(&p(Latency::SynToSynack)),
        "{}",
        p(Latency::SynToSynack)
    );
    assert!((6950..=7050).contains(&p(Latency::SynackToAck)));
    assert!((1_000_000..=1_020_000).contains(&p(Latency::ConnectTotal)));
}

#[test]
fn midstream_rst_is_classified_but_raises_no_handshake_anomaly() {
    let mut sim = Sim::new();
    sim.at(0, s(40000, RA, 7, 9)).until(100_000);
    assert_eq!(sim.kinds(), ["reset"]);
    assert_eq!(sim.out[0].ev("from"), "server");
}

#[test]
fn a_flood_folds_the_per_connection_verdicts_of_its_endpoint() {
    let mut f = Flood::new();
    // 1500 SYNs/s for 2 s, never answered.
    for i in 0..3000u64 {
        f.sim.at(i * 2 / 3, c(10_000 + i as u16, SYN, i as u32, 0));
        f.feed();
    }
    let sim = f.finish(10_000);
    let k = sim.kinds();
    assert_eq!(
        k.iter().filter(|k| **k == "syn_flood").count(),
        2,
        "start and end"
    );
    // Second 0's SYNs time out at 3-4 s, after the episode was recognised at 1 s: folded.
    assert_eq!(k.iter().filter(|k| **k == "syn_unanswered").count(), 0);
    assert_eq!(sim.eng.counters().folded, 3000);
}

#[test]
fn a_syn_captured_after_its_synack_is_the_same_handshake() {
    let mut sim = Sim::new();
    sim.at(0, s(1, SA, 5000, 1001))
        .at(1, c(1, SYN, 1000, 0))
        .at(2, c(1, ACK, 1001, 5001))
        .until(10_000);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
    let st = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!((st.syns, st.established), (1, 1));
    // A SYN whose ISN does not match the SYN-ACK's ack, and that the server never answers,
    // is a reuse of a tuple whose handshake was still open.
    let mut sim = Sim::new();
    sim.at(0, s(1, SA, 5000, 1001))
        .at(1, c(1, SYN, 7000, 0))
        .until(10_000);
    assert_eq!(sim.kinds(), ["syn_tuple_reuse"]);
}

#[test]
fn a_syn_captured_after_its_synack_and_the_first_data_is_still_the_same_handshake() {
    let mut sim = Sim::new();
    sim.at(0, s(1, SA, 5000, 1001))
        .at(1, c(1, ACK, 1001, 5001))
        .at(2, s(1, ACK, 5001, 1011))
        .at(3, c(1, SYN, 1000, 0))
        .until(10_000);
    assert!(
        !sim.kinds().contains(&"syn_tuple_reuse"),
        "{:?}",
        sim.kinds()
    );
}

#[test]
fn a_completing_ack_captured_before_its_synack_still_completes_the_handshake() {
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(2, c(1, ACK, 1001, 5001))
        .at(3, s(1, SA, 5000, 1001))
        .at(200, c(1, TcpFlags(0x14), 1001, 5001))
        .until(10_000);
    assert_eq!(sim.kinds(), ["reset"]);
    assert_eq!(sim.out[0].ev("phase"), "established");
    let st = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!(st.established, 1);
}

#[test]
fn fast_open_handshakes_complete_whether_the_data_was_accepted_or_not() {
    for (synack_ack, accepted) in [(1011, 1), (1001, 0)] {
        let mut sim = Sim::new();
        sim.at(
            0,
            c(1, SYN, 1000, 0).fastopen(&[7; 8]).payload(b"0123456789"),
        )
        .at(1, s(1, SA, 5000, synack_ack))
        .at(2, c(1, ACK, 1011, 5001))
        .at(50, c(1, FA, 1011, 5001))
        .at(51, s(1, FA, 5001, 1012))
        .at(52, c(1, ACK, 1012, 5002))
        .until(100_000);
        assert_eq!(
            sim.kinds(),
            Vec::<&str>::new(),
            "ack {synack_ack}: {:?}",
            sim.out
        );
        let st = sim.eng.endpoints().iter().next().unwrap().1;
        assert_eq!(
            (
                st.established,
                st.closed_normally,
                st.tfo_syns,
                st.tfo_data_accepted
            ),
            (1, 1, 1, accepted)
        );
    }
    // A cookie request (no data): an ordinary handshake.
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0).fastopen(&[]))
        .at(1, s(1, SA, 5000, 1001).fastopen(&[1; 8]))
        .at(2, c(1, ACK, 1001, 5001))
        .until(100_000);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
    // Acking more than the SYN carried is still wrong.
    let mut sim = Sim::new();
    sim.at(
        0,
        c(1, SYN, 1000, 0).fastopen(&[7; 8]).payload(b"0123456789"),
    )
    .at(1, s(1, SA, 5000, 1012));
    assert_eq!(sim.kinds(), ["synack_wrong_ack"]);
}

#[test]
fn a_blind_rst_in_syn_sent_has_no_effect_and_the_handshake_goes_on() {
    for blind in [
        s(1, TcpFlags::RST, 0, 0), // no ACK: dropped in SYN-SENT
        s(1, RA, 0, 4242),         // an ACK that does not ack the SYN
    ] {
        let mut sim = Sim::new();
        sim.at(0, c(1, SYN, 1000, 0))
            .at(1, blind)
            .at(20, s(1, SA, 5000, 1001))
            .at(21, c(1, ACK, 1001, 5001))
            .at(22, c(1, ACK, 1001, 5001).payload(b"data"))
            .until(100_000);
        assert_eq!(sim.kinds(), ["reset"]);
        let r = &sim.out[0];
        assert_eq!(
            (r.ev("rst_class"), r.ev("effect"), r.ev("phase")),
            (
                &Value::from("out_of_window"),
                &Value::from("none"),
                &Value::from("handshake")
            )
        );
        let st = sim.eng.endpoints().iter().next().unwrap().1;
        assert_eq!(st.established, 1);
    }
}

#[test]
fn an_acceptable_looking_rst_overruled_by_a_completed_handshake_had_no_effect() {
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, s(1, RA, 0, 1001)) // forged with the right ack, or lost before the client
        .at(30, s(1, SA, 5000, 1001))
        .at(31, c(1, ACK, 1001, 5001))
        .until(100_000);
    assert_eq!(sim.kinds(), ["reset"], "no syn_rejected");
    assert_eq!(sim.out[0].ev("effect"), "none");
    assert_eq!(sim.out[0].ts_ns, T0 + MS);
    // After the reorder window the refusal stands.
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, s(1, RA, 0, 1001))
        .at(500, s(1, SA, 5000, 1001));
    assert_eq!(sim.kinds(), ["syn_rejected"]);
    // With all_resets the RST is reported on its own too.
    let mut sim = Sim::with(Config {
        all_resets: true,
        ..Config::default()
    });
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, s(1, RA, 0, 1001))
        .until(1000);
    assert_eq!(sim.kinds(), ["reset", "syn_rejected"]);
}

#[test]
fn every_rst_answering_a_retransmitted_syn_is_refused_and_rejected_once() {
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, s(1, RA, 0, 1001))
        .at(1000, c(1, SYN, 1000, 0)) // the client never got the first RST
        .at(1001, s(1, RA, 0, 1001))
        .until(10_000);
    assert_eq!(sim.kinds(), ["syn_rejected"]);
    assert_eq!(sim.out[0].ev("rst_class"), "refused");
    let st = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!((st.syns, st.rsts_of(RstClass::Refused)), (2, 2));
}

#[test]
fn a_server_only_capture_marks_client_dependent_verdicts_one_way() {
    let mut sim = Sim::new();
    sim.at(0, s(1, SA, 5000, 1001))
        .at(1000, s(1, SA, 5000, 1001))
        .at(3000, s(1, SA, 5000, 1001));
    sim.eng.finish(T0 + 4000 * MS, &mut sim.out);
    let e = sim.one(Kind::SynackUnacked);
    assert!(!e.reverse_seen, "no packet from the client exists");
    assert!(e.one_way.is_some());
    assert_eq!(e.severity(), "info");
    assert_eq!(e.ev("synack_count"), 3);
    // A server FIN nobody answers, seen one way only.
    let mut sim = Sim::new();
    sim.at(0, s(1, SA, 5000, 1001))
        .at(2, s(1, ACK, 5001, 1001).payload(b"hello"))
        .at(3, s(1, FA, 5006, 1001))
        .until(20_000);
    let e = sim.one(Kind::FinUnanswered);
    assert_eq!((e.reverse_seen, e.severity()), (false, "info"));
    assert_eq!(
        sim.kinds(),
        ["fin_unanswered"],
        "the data proved the handshake"
    );
}

#[test]
fn a_client_only_capture_of_a_clean_connection_raises_nothing() {
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(2, c(1, ACK, 1001, 5001))
        .at(3, c(1, ACK, 1001, 5001).payload(b"GET"))
        .at(10, c(1, FA, 1004, 5100))
        .at(12, c(1, ACK, 1005, 5101))
        .until(100_000);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
    let st = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!(st.established, 1);
}

#[test]
fn a_segment_captured_twice_counts_once() {
    let mut once = Sim::new();
    let mut twice = Sim::new();
    let pkts = [
        (0, c(1, SYN, 1000, 0).ip_id(1)),
        (1, s(2, RA, 0, 1001).ip_id(0)),
        (1, s(1, RA, 0, 1001).ip_id(0)),
    ];
    once.at(0, c(2, SYN, 7, 0).ip_id(9));
    twice.at(0, c(2, SYN, 7, 0).ip_id(9));
    for (t, p) in &pkts {
        once.at(*t, p.clone());
        twice.at(*t, p.clone()).at(*t, p.clone());
    }
    once.until(10_000);
    twice.until(10_000);
    assert_eq!(once.kinds(), twice.kinds());
    assert_eq!(twice.eng.counters().duplicates, 3);
    // A retransmission (new IP ID, 1 s later) is no duplicate.
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0).ip_id(1))
        .at(1000, c(1, SYN, 1000, 0).ip_id(2));
    assert_eq!(sim.eng.counters().duplicates, 0);
}

#[test]
fn a_flow_first_seen_mid_stream_says_so() {
    let mut sim = Sim::new();
    sim.at(0, c(40000, ACK, 7, 9).payload(b"x"))
        .at(1, c(40000, RA, 8, 9))
        .until(10_000);
    assert_eq!(sim.kinds(), ["reset"]);
    assert_eq!(sim.out[0].ev("phase"), "midstream");
    // A new connection on the tuple later is not a reuse of a connection never seen.
    sim.at(20_000, c(40000, SYN, 100, 0))
        .at(20_001, s(40000, SA, 1, 101));
    assert!(!sim.kinds().contains(&"syn_tuple_reuse"));
}

#[test]
fn a_passive_rst_with_data_still_in_flight_is_accepted() {
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(10, s(1, ACK, 5001, 1001).payload(&[0; 100])) // in flight, never acked
        .at(20, c(1, ACK, 1001, 5001).payload(b"more")) // the client acks only 5001
        .at(21, s(1, TcpFlags::RST, 5001, 0)) // server lost its socket: seq = the client's ack
        .until(10_000);
    let r = sim.one(Kind::Reset);
    assert_eq!(
        (r.ev("rst_class"), r.ev("effect"), r.ev("expected_seq")),
        (
            &Value::from("passive"),
            &Value::from("reset"),
            &Value::from(5001)
        )
    );
}

#[test]
fn a_half_open_probe_leaves_the_table_and_a_later_reuse_is_no_collision() {
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, s(1, SA, 5000, 1001))
        .at(2, c(1, TcpFlags::RST, 1001, 0)) // nmap -sS, half-open monitors
        .until(120_000);
    assert_eq!(sim.eng.table_stats().live, 0, "expired");
    sim.at(1_800_000, c(1, SYN, 77, 0));
    assert!(
        !sim.kinds().contains(&"syn_tuple_reuse"),
        "{:?}",
        sim.kinds()
    );
}

#[test]
fn a_banner_or_an_accepted_rst_after_the_late_ack_is_no_leak() {
    // The server speaks first (SSH): the client's kernel resets the connection.
    let mut sim = probe(Some(0), 1001);
    sim.at(10, s(1, ACK, 5001, 1001).payload(b"SSH-2.0-"))
        .at(11, c(1, TcpFlags::RST, 1001, 0))
        .until(5000);
    assert_eq!(
        sim.kinds(),
        ["reset", "probe_rst_before_ack", "reset"],
        "no probe_connection_leak"
    );
}

#[test]
fn a_busy_connection_outlives_the_idle_timeout_counted_from_its_handshake() {
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    let mut seq = 1001u32;
    for t in (10_000..=390_000).step_by(10_000) {
        sim.at(t, c(1, ACK, seq, 5001).payload(b"ping"));
        seq += 4;
    }
    sim.at(405_000, s(1, RA, 5001, seq));
    let r = sim.one(Kind::Reset);
    assert_eq!(r.ev("phase"), "established", "{:?}", r.evidence);
    assert_eq!(r.ev("expected_seq"), 5001);
}

#[test]
fn a_fast_open_clients_first_ack_may_cover_the_servers_early_data() {
    let mut sim = Sim::new();
    sim.at(
        0,
        c(1, SYN, 1000, 0).fastopen(&[7; 8]).payload(b"0123456789"),
    )
    .at(1, s(1, SA, 5000, 1011))
    .at(2, s(1, ACK, 5001, 1011).payload(b"response"))
    .at(30, c(1, ACK, 1011, 5009))
    .until(100_000);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
    assert_eq!(sim.eng.endpoints().iter().next().unwrap().1.established, 1);
}

#[test]
fn capture_times_near_the_end_of_the_clock_do_not_overflow() {
    let mut sim = Sim::new();
    let s1 = seg(c(1, SYN, 1000, 0));
    let s2 = seg(s(1, SA, 5000, 1001));
    let s3 = seg(c(1, ACK, 1001, 5001));
    for (i, sg) in [&s1, &s2, &s3].into_iter().enumerate() {
        sim.eng.process(
            &Packet {
                ts_ns: u64::MAX - 10 + i as u64,
                ifindex: 1,
                seg: sg,
                egress: false,
                weight: 1,
            },
            &mut sim.out,
        );
    }
    sim.eng.finish(u64::MAX, &mut sim.out);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
}

#[test]
fn a_flood_replaying_the_same_syns_is_counted_in_packets_for_its_whole_length() {
    let mut f = Flood::new();
    // 500 distinct SYNs, replayed every 250 ms for 4 s: 2000 SYN packets/s.
    for round in 0..16u64 {
        for i in 0..500u64 {
            f.sim.at(
                round * 250 + i / 2,
                c(20_000 + i as u16, SYN, i as u32, 0).ip_id(round as u16),
            );
        }
        f.feed();
    }
    let sim = f.finish(200_000);
    let end = sim
        .out
        .iter()
        .find(|e| e.kind == Kind::SynFlood && e.ev("phase") == "end")
        .expect("an episode end");
    assert_eq!(end.ev("syns"), 8000, "every SYN packet of the episode");
    assert_eq!(
        end.ev("duration_s"),
        4,
        "the whole replay, not its first second"
    );
    let st = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!(st.syns, 8000);
}

/// `process_batch` is `process` packet by packet: the same events in the same order and the
/// same counters, on a random mix of segments over more flows than the table holds (evictions,
/// slot reuse, timers firing mid-batch), in batches of every size.
#[test]
fn batches_decide_exactly_what_packets_one_by_one_do() {
    let cfg = Config {
        max_flows: 64,
        ..Config::default()
    };
    let mut x: u64 = 0x853c_49e6_748f_ea9b;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let flags = [0x02, 0x12, 0x10, 0x14, 0x04, 0x11, 0x18];
    let mut segs = Vec::new();
    let mut times = Vec::new();
    let mut ms = 0;
    for _ in 0..20_000 {
        ms += rnd(400);
        let port = 1024 + rnd(300) as u16;
        let f = TcpFlags(flags[rnd(flags.len() as u64) as usize]);
        let (seq, ack) = (rnd(4) as u32 * 1000, rnd(4) as u32 * 1000);
        let b = if rnd(2) == 0 {
            c(port, f, seq, ack)
        } else {
            s(port, f, seq, ack)
        };
        segs.push(seg(b.timestamps(rnd(1000) as u32, 0)));
        times.push(T0 + ms * MS);
    }
    let pkts: Vec<Packet> = segs
        .iter()
        .zip(&times)
        .map(|(s, &t)| Packet {
            ts_ns: t,
            ifindex: 3,
            seg: s,
            egress: false,
            weight: 1,
        })
        .collect();
    let mut one = Sim::with(cfg.clone());
    for p in &pkts {
        one.eng.process(p, &mut one.out);
    }
    let mut batched = Sim::with(cfg);
    let mut rest = &pkts[..];
    while !rest.is_empty() {
        let n = (1 + rnd(40) as usize).min(rest.len());
        batched.eng.process_batch(&rest[..n], &mut batched.out);
        rest = &rest[n..];
    }
    for sim in [&mut one, &mut batched] {
        sim.eng.finish(T0 + (ms + 600_000) * MS, &mut sim.out);
    }
    assert!(
        one.out.len() > 100,
        "the mix decides things: {}",
        one.out.len()
    );
    assert!(one.eng.table_stats().evicted.iter().sum::<u64>() > 100);
    assert_eq!(one.out, batched.out);
    assert_eq!(one.eng.counters(), batched.eng.counters());
    assert_eq!(one.eng.table_stats(), batched.eng.table_stats());
}

/// The kernel's word joins the connection it is about: its events carry it in order, the
/// refusing RST carries its sender's reason, the server endpoint counts it by slot and host,
/// and a fact about a flow not in the table is only counted.
#[test]
fn kernel_facts_join_their_connection_and_count_per_endpoint() {
    use crate::detect::kernel::{KernelFact, KernelNames, Said, slot_name};
    use std::collections::BTreeMap;
    let names = KernelNames::new(
        BTreeMap::from([(1, "NO_SOCKET".into()), (17, "MPTCP_RST_EUNSPEC".into())]),
        BTreeMap::from([(2, "NO_SOCKET".into()), (250, "SOMETHING_NEW".into())]),
    );
    let mut sim = Sim::with(Config {
        kernel_names: Some(std::sync::Arc::new(names)),
        ..Config::default()
    });
    let ep = |ip: [u8; 4], port| Endpoint::from(std::net::SocketAddr::from((ip, port)));
    let fact = |said, reason, src, dst, tcp_flags| KernelFact {
        ts_ns: T0,
        said,
        reason,
        src,
        dst,
        tcp_flags,
    };
    sim.at(0, c(40000, SYN, 1000, 0));
    // The server's kernel dropped the SYN for want of a socket and sent the RST.
    let (cl, sv) = (ep(CLIENT, 40000), ep(SERVER, 80));
    sim.eng.kernel_fact(&fact(Said::Drop, 2, cl, sv, SYN.0));
    sim.eng.kernel_fact(&fact(Said::SendReset, 1, sv, cl, 0));
    // Reasons this list does not name count as `other`; unknown numbers too.
    sim.eng.kernel_fact(&fact(Said::SendReset, 17, sv, cl, 0));
    sim.eng.kernel_fact(&fact(Said::Drop, 250, cl, sv, SYN.0));
    // Not a tracked flow.
    sim.eng
        .kernel_fact(&fact(Said::SendReset, 1, sv, ep(CLIENT, 40001), 0));
    sim.at(1, s(40000, RA, 0, 1001)).until(201);
    let r = sim.one(Kind::SynRejected);
    assert_eq!(
        *r.ev("kernel"),
        serde_json::json!([
            {"said": "drop", "reason": "NO_SOCKET", "by": "server", "flags": "SYN"},
            {"said": "send_reset", "reason": "NO_SOCKET", "by": "server"},
            {"said": "send_reset", "reason": "MPTCP_RST_EUNSPEC", "by": "server"},
            {"said": "drop", "reason": "SOMETHING_NEW", "by": "server", "flags": "SYN"},
        ])
    );
    assert_eq!(
        r.ev("kernel_reason"),
        "MPTCP_RST_EUNSPEC",
        "the latest RST's"
    );
    let counted: Vec<(String, &str, u64)> = sim
        .eng
        .endpoints()
        .export()
        .into_iter()
        .flat_map(|(_, c)| {
            c.kernel
                .into_iter()
                .enumerate()
                .flat_map(|(slot, by)| {
                    let (said, reason) = slot_name(slot);
                    [("client", by[0]), ("server", by[1])]
                        .into_iter()
                        .filter(|(_, n)| *n > 0)
                        .map(move |(h, n)| (format!("{} {reason}", said.as_str()), h, n))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        counted,
        [
            ("send_reset NO_SOCKET".to_owned(), "server", 1),
            ("send_reset other".to_owned(), "server", 1),
            ("drop NO_SOCKET".to_owned(), "server", 1),
            ("drop other".to_owned(), "server", 1),
        ]
    );
    let k = sim.eng.counters();
    assert_eq!((k.kernel_joined, k.kernel_unmatched), (4, 1));
}

#[test]
fn a_busy_server_completing_every_handshake_is_no_flood() {
    // 3 s of 2,000 connections/s (twice flood_rate), every handshake completed.
    let mut f = Flood::new();
    for i in 0..6000u64 {
        let t = i / 2;
        let p = 10_000 + (i % 50_000) as u16;
        f.sim.at(t, c(p, SYN, i as u32, 0));
        f.sim.at(t, s(p, SA, 7, i as u32 + 1));
        f.sim.at(t, c(p, ACK, i as u32 + 1, 8));
        f.feed();
    }
    let sim = f.finish(10_000);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
    let ep = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!((ep.syns, ep.established), (6000, 6000));
}

#[test]
fn verdicts_of_connections_begun_after_a_flood_are_reported() {
    let mut f = Flood::new();
    // 1500 SYNs/s for 2 s, never answered: one episode.
    for i in 0..3000u64 {
        f.sim.at(i * 2 / 3, c(10_000 + i as u16, SYN, i as u32, 0));
        f.feed();
    }
    // 3 s after the flood's last second: three refusals and an unanswered SYN.
    for i in 0..3u16 {
        f.sim.at(5000 + u64::from(i), c(50_000 + i, SYN, 1, 0));
        f.sim.at(5001 + u64::from(i), s(50_000 + i, RA, 0, 2));
        f.feed();
    }
    f.sim.at(5100, c(51_000, SYN, 1, 0));
    let sim = f.finish(20_000);
    let k = sim.kinds();
    let n = |kind: &str| k.iter().filter(|x| **x == kind).count();
    assert_eq!(n("syn_flood"), 2, "{k:?}");
    assert_eq!(n("syn_rejected"), 3, "{k:?}");
    assert_eq!(n("syn_unanswered"), 1, "{k:?}");
    // The flood's own connections stay folded, counted by kind.
    let c = sim.eng.counters();
    assert_eq!(c.folded, 3000);
    assert_eq!(c.folded_by[0], 3000, "syn_unanswered");
}

#[test]
fn the_episode_end_counts_what_it_folded_by_kind() {
    let mut f = Flood::new();
    for i in 0..3000u64 {
        f.sim.at(i * 2 / 3, c(10_000 + i as u16, SYN, i as u32, 0));
        f.feed();
    }
    // Time passes in seconds without SYNs: the unanswered verdicts come, then the end.
    for t in (2000..12_000).step_by(500) {
        f.sim.until(t);
        f.feed();
    }
    let sim = f.finish(20_000);
    let end = sim
        .out
        .iter()
        .find(|e| e.kind == Kind::SynFlood && e.ev("phase") == "end")
        .expect("an end");
    let folded = end.ev("folded");
    assert!(folded["syn_unanswered"].as_u64().unwrap() > 0, "{folded}");
    assert_eq!(end.ev("completed"), 0);
    assert_eq!(end.ev("share_incomplete"), 1.0);
}

#[test]
fn connections_begun_before_both_directions_were_watched_raise_nothing() {
    let cfg = Config {
        watched_from: T0 + 300 * MS,
        ..Config::default()
    };
    let mut sim = Sim::with(cfg);
    // Ingress only before 300 ms: SYNs whose SYN-ACKs were never seen, a FIN never answered,
    // a reuse of such a tuple.
    sim.at(0, c(1, SYN, 1000, 0))
        .at(100, c(2, SYN, 1000, 0))
        .at(200, c(3, FA, 1000, 5000))
        .at(400, c(2, SYN, 9000, 0))
        .at(401, s(2, SA, 100, 9001))
        .at(402, c(2, ACK, 9001, 101));
    // After: a real unanswered SYN still counts (its listener idle for longer than
    // listener_alive).
    sim.at(15_000, c(4, SYN, 1000, 0)).until(30_000);
    assert_eq!(sim.kinds(), ["syn_unanswered"]);
    assert_eq!(sim.out[0].client.unwrap().port, 4);
    // Port 1's SYN and port 2's first (abandoned) SYN are not told; port 3's FIN began a
    // mid-stream flow, which raises nothing.
    assert_eq!(sim.eng.counters().unwatched, 2);
}

#[test]
fn a_fin_whose_sender_then_reset_is_not_unanswered() {
    // Windows closes with FIN, then RST (seq = FIN + 1) 14 µs later.
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(100, c(1, FA, 1001, 5001))
        .at(100, c(1, RA, 1002, 5001))
        .until(20_000);
    assert_eq!(sim.kinds(), ["reset"]);
}

#[test]
fn a_half_open_handshake_ended_by_the_clients_rst_is_synack_unacked() {
    // The SYN-ACKs never reach the client (retransmitted at 1 s and 3 s); when one finally
    // does, the client's kernel, which gave up, answers RST.
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, s(1, SA, 5000, 1001))
        .at(1001, s(1, SA, 5000, 1001))
        .at(3001, s(1, SA, 5000, 1001))
        .at(3002, c(1, TcpFlags::RST, 1001, 0))
        .until(60_000);
    assert_eq!(sim.kinds(), ["reset", "synack_unacked"]);
    let e = sim.one(Kind::SynackUnacked);
    assert_eq!(e.ev("ended"), "client_reset");
    assert_eq!(e.ev("synack_count"), 3);
    assert_eq!(e.ts_ns, T0 + 3002 * MS);
    assert!(sim.eng.probers().export().is_empty(), "no probe");
    // A RST right after a single SYN-ACK stays a probe's (no verdict of its own).
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, s(1, SA, 5000, 1001))
        .at(2, c(1, TcpFlags::RST, 1001, 0))
        .until(60_000);
    assert_eq!(sim.kinds(), ["reset"]);
}

#[test]
fn a_client_fin_acking_beyond_the_synack_completes_the_handshake() {
    // A capture of SYN/FIN/RST only: the client's FIN acks the server's response.
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, s(1, SA, 5000, 1001))
        .at(50, c(1, FA, 1101, 5801))
        .at(51, s(1, FA, 5801, 1102))
        .until(60_000);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
    let st = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!((st.established, st.closed_normally), (1, 1));
}

#[test]
fn a_duplicated_synack_is_no_overflow_while_the_data_waits() {
    // A copy of the SYN-ACK 15 ms after the first, the client's data not acked yet.
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(3, c(1, ACK, 1001, 5001).payload(&[7; 100]))
        .at(16, s(1, SA, 5000, 1001).ip_id(9))
        .at(20, s(1, ACK, 5001, 1101))
        .until(20_000);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
}

#[test]
fn an_overflow_verdict_needs_the_hosts_counters_to_agree_when_they_are_heard() {
    let run = |rose: Option<u64>| {
        let mut sim = Sim::new();
        sim.eng.shared().hear_listen_counters();
        if let Some(ms) = rose {
            sim.eng.shared().listen_counters_rose(T0 + ms * MS);
        }
        handshake(&mut sim, 1, 0);
        sim.at(100, c(2, SYN, 9000, 0))
            .at(1100, c(2, SYN, 9000, 0))
            .until(6000);
        sim.kinds()
    };
    // A firewall dropped the SYN in front of a busy listener: the kernel counted nothing.
    assert_eq!(run(None), ["syn_unanswered"]);
    assert_eq!(run(Some(50)), ["syn_unanswered"], "a rise before the SYN");
    assert_eq!(run(Some(150)), ["accept_queue_overflow"]);
}

#[test]
fn a_leaked_probes_late_ack_is_an_established_handshake_as_the_kernel_counts_it() {
    let mut sim = probe(Some(0), 1001);
    sim.until(5000);
    let st = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!(
        st.established, 1,
        "the server took the late ACK (TcpPassiveOpens)"
    );
    // A RST the server took: the late ACK meets no socket, nothing is established.
    let mut sim = probe(Some(1_000_001), 1001);
    sim.until(5000);
    let st = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!(st.established, 0);
}

#[test]
fn a_recognised_probers_routine_probes_are_counted_not_told() {
    // HAProxy's TCP check: SYN, SYN-ACK, RST|ACK (no final ACK), every 100 ms.
    let mut sim = Sim::new();
    for i in 0..10u16 {
        let t = u64::from(i) * 100;
        sim.at(t, c(1000 + i, SYN, 1000, 0))
            .at(t + 1, s(1000 + i, SA, 5000, 1001))
            .at(t + 2, c(1000 + i, RA, 1001, 5001));
    }
    sim.until(20_000);
    assert_eq!(
        sim.kinds(),
        ["reset", "reset", "reset"],
        "until the source is recognised"
    );
    assert_eq!(sim.eng.counters().probe_resets, 7);
    let probes: u64 = sim
        .eng
        .probers()
        .export()
        .iter()
        .map(|(_, c)| c.probes)
        .sum();
    assert_eq!(probes, 10);
}

#[test]
fn a_fin_whose_sequence_numbers_show_data_is_no_probe() {
    // Inline mode sees no data segments: the client's FIN 10 ms after the handshake carries
    // seq and ack beyond the ISNs, so a request and a response went by.
    let mut sim = Sim::new();
    sim.eng.ctx.cfg.full_visibility = false;
    handshake(&mut sim, 1, 0);
    sim.at(12, c(1, FA, 1001 + 80, 5001 + 600))
        .at(13, s(1, FA, 5001 + 600, 1002 + 80))
        .until(20_000);
    assert!(sim.eng.probers().export().is_empty());
    // The same with bare ISNs is a graceful probe.
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(12, c(1, FA, 1001, 5001))
        .at(13, s(1, FA, 5001, 1002))
        .until(20_000);
    let probes: u64 = sim
        .eng
        .probers()
        .export()
        .iter()
        .map(|(_, c)| c.probes)
        .sum();
    assert_eq!(probes, 1);
}

#[test]
fn a_last_ack_fin_retransmitted_for_minutes_is_never_unanswered() {
    // Both sides closed; the client's last ACK is lost and the server retransmits its FIN
    // (LAST_ACK) with backoff for over two minutes: a close both sides agreed on, and the
    // outcome does not depend on when the closed flow leaves the table.
    let mut sim = Sim::new();
    handshake(&mut sim, 1, 0);
    sim.at(10, c(1, FA, 1001, 5001))
        .at(11, s(1, FA, 5001, 1002));
    for t in [1_011u64, 3_011, 7_011, 15_011, 31_011, 63_011, 127_011] {
        sim.at(t, s(1, FA, 5001, 1002));
    }
    sim.until(400_000);
    assert_eq!(sim.kinds(), Vec::<&str>::new(), "{:?}", sim.out);
    // The retransmission after the closed flow left the table starts a mid-stream flow,
    // whose FIN raises nothing either.
    assert_eq!(sim.eng.table_stats().created, 2);
}

#[test]
fn on_the_host_two_equal_segments_are_two_packets() {
    // Inline, every packet passes its hook once: a flood replaying the same SYN within
    // duplicate_window is SYN packets all the same (a mirror port's copy is not).
    let run = |host_vantage: bool| {
        let mut sim = Sim::with(Config {
            host_vantage,
            ..Config::default()
        });
        for t in 0..5 {
            sim.at(t, c(1, SYN, 1000, 0));
        }
        let c = sim.eng.counters();
        let st = sim.eng.endpoints().iter().next().unwrap().1;
        (st.syns, c.duplicates)
    };
    assert_eq!(run(true), (5, 0));
    assert_eq!(run(false), (1, 4));
}

#[test]
fn a_flood_beside_a_busy_legitimate_load_is_still_a_flood() {
    // 1,500 completed connections/s and 1,200 spoofed SYNs/s (flood_rate 1000): the
    // incomplete SYNs alone make the flood.
    let mut f = Flood::new();
    for i in 0..3000u64 {
        let t = i / 3 * 2;
        let p = 10_000 + (i % 30_000) as u16;
        f.sim.at(t, c(p, SYN, i as u32, 0));
        f.sim.at(t, s(p, SA, 7, i as u32 + 1));
        f.sim.at(t, c(p, ACK, i as u32 + 1, 8));
        f.feed();
    }
    for i in 0..2400u64 {
        let src = [198, 51, 100, (i % 200) as u8];
        f.sim.at(
            i * 2000 / 2400,
            SegmentBuilder::v4(src, 40_000 + i as u16, SERVER, 80)
                .flags(SYN)
                .seq(i as u32),
        );
        f.feed();
    }
    let sim = f.finish(20_000);
    let n = sim.kinds().iter().filter(|k| **k == "syn_flood").count();
    assert_eq!(n, 2, "start and end: {:?}", sim.kinds());
}

#[test]
fn a_forwarded_segment_seen_at_both_hooks_counts_once_inline() {
    // A host forwarding out the interface it came in on: ingress, then egress, one packet.
    let mut sim = Sim::with(Config {
        host_vantage: true,
        ..Config::default()
    });
    let syn = seg(c(1, SYN, 1000, 0));
    for egress in [false, true] {
        sim.eng.process(
            &Packet {
                ts_ns: T0,
                ifindex: 3,
                seg: &syn,
                egress,
                weight: 1,
            },
            &mut sim.out,
        );
    }
    let st = sim.eng.endpoints().iter().next().unwrap().1;
    assert_eq!((st.syns, sim.eng.counters().duplicates), (1, 1));
}

#[test]
fn a_probes_rst_after_a_synack_answering_its_retransmitted_syn_is_a_probe() {
    // SYN, SYN-ACK lost, SYN again at 1 s, SYN-ACK, the prober's RST|ACK.
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, s(1, SA, 5000, 1001))
        .at(1000, c(1, SYN, 1000, 0))
        .at(1001, s(1, SA, 5000, 1001))
        .at(1002, c(1, RA, 1001, 5001))
        .until(60_000);
    assert!(
        !sim.kinds().contains(&"synack_unacked"),
        "{:?}",
        sim.kinds()
    );
}

#[test]
fn a_synack_copy_does_not_bring_the_half_open_deadline_forward() {
    // A copy 15 ms after the SYN-ACK; the client's ACK and data come at 2 s (a slow client).
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, s(1, SA, 5000, 1001))
        .at(16, s(1, SA, 5000, 1001).ip_id(7))
        .at(2000, c(1, ACK, 1001, 5001))
        .until(60_000);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
}

#[test]
fn a_replacement_with_no_time_for_an_answer_or_after_one_keeps_no_verdict() {
    // A new ISN 1 ms after the SYN: nothing could have answered yet.
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, c(1, SYN, 2000, 0))
        .at(2, s(1, SA, 8000, 2001))
        .at(3, c(1, ACK, 2001, 8001))
        .until(20_000);
    assert_eq!(sim.kinds(), Vec::<&str>::new());
    // The server answered with a RST the client did not take (a blind one), and the client
    // retried at once: answered, not abandoned unanswered.
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(1, s(1, TcpFlags::RST, 0, 0))
        .at(500, c(1, SYN, 2000, 0))
        .at(501, s(1, SA, 8000, 2001))
        .at(502, c(1, ACK, 2001, 8001))
        .until(20_000);
    assert!(
        !sim.kinds().contains(&"syn_unanswered"),
        "{:?}",
        sim.kinds()
    );
}

#[test]
fn a_capture_that_never_heard_the_server_host_is_no_overflow() {
    // Client → server only: the handshake is inferred from the client's ACK, the next
    // SYN stream is unanswered in this vantage; it is syn_unanswered, not an overflow.
    let mut sim = Sim::new();
    sim.at(0, c(1, SYN, 1000, 0))
        .at(2, c(1, ACK, 1001, 5001))
        .at(100, c(2, SYN, 9000, 0))
        .at(1100, c(2, SYN, 9000, 0))
        .until(6000);
    assert_eq!(sim.kinds(), ["syn_unanswered"]);
}
