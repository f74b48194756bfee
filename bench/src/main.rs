//! synscope benchmarks. `cargo run --release -p synscope-bench -- engine` measures the
//! detection engine alone on an in-memory packet array against a straightforward baseline
//! (std `HashMap`, one allocation per flow) in the same run. See bench/RESULTS.md.

use std::{collections::HashMap, hint::black_box, net::SocketAddr, time::Instant};

use anyhow::{Context, bail};
use synscope::{
    detect::{Config, Engine, engine::Packet},
    wire::{Segment, TcpFlags, emit::SegmentBuilder, parse_ip_tcp},
};

fn seg(b: SegmentBuilder) -> anyhow::Result<Segment> {
    parse_ip_tcp(&synscope::wire::emit::ip_tcp(&b)).context("emitted packet must parse")
}

/// `flows` concurrent connections, interleaved phase by phase so all are open at once:
/// 97% complete (SYN, SYN-ACK, ACK, FIN, FIN, ACK), 2% refused (SYN, RST|ACK), 1% SYN only.
fn workload(flows: usize) -> anyhow::Result<Vec<Segment>> {
    let addr = |i: usize| -> ([u8; 4], u16) {
        (
            [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
            1024 + (i % 60000) as u16,
        )
    };
    let server = [192, 0, 2, 2];
    let mut phases: Vec<Vec<Segment>> = vec![Vec::new(); 6];
    for i in 0..flows {
        let (cip, cport) = addr(i);
        let isn = (i as u32).wrapping_mul(2_654_435_761);
        let c = |f, seq, ack| {
            SegmentBuilder::v4(cip, cport, server, 80)
                .flags(f)
                .seq(seq)
                .ack(ack)
                .timestamps(i as u32, 0)
        };
        let s = |f, seq, ack| {
            SegmentBuilder::v4(server, 80, cip, cport)
                .flags(f)
                .seq(seq)
                .ack(ack)
        };
        phases[0].push(seg(c(TcpFlags::SYN, isn, 0))?);
        match i % 100 {
            0 | 1 => phases[1].push(seg(s(TcpFlags(0x14), 0, isn.wrapping_add(1)))?),
            2 => {}
            _ => {
                phases[1].push(seg(s(TcpFlags(0x12), 7, isn.wrapping_add(1)))?);
                phases[2].push(seg(c(TcpFlags::ACK, isn.wrapping_add(1), 8))?);
                phases[3].push(seg(c(TcpFlags(0x11), isn.wrapping_add(1), 8))?);
                phases[4].push(seg(s(TcpFlags(0x11), 8, isn.wrapping_add(2)))?);
                phases[5].push(seg(c(TcpFlags::ACK, isn.wrapping_add(2), 9))?);
            }
        }
    }
    Ok(phases.into_iter().flatten().collect())
}

/// The baseline: what one writes first. A std HashMap keyed by the sorted endpoint pair,
/// a boxed state per flow, the handshake steps and closes tracked, no timers, no events.
#[derive(Default)]
struct BaseConn {
    syn: u64,
    synack: u64,
    ack: u64,
    fins: u8,
    rst: bool,
}

fn baseline(pkts: &[Segment]) -> (f64, usize) {
    let mut map: HashMap<(SocketAddr, SocketAddr), Box<BaseConn>> = HashMap::new();
    let mut peak = 0;
    let t = Instant::now();
    for (n, s) in pkts.iter().enumerate() {
        let key = if s.src < s.dst {
            (s.src, s.dst)
        } else {
            (s.dst, s.src)
        };
        let f = s.flags;
        if f.contains(TcpFlags::SYN) && !f.contains(TcpFlags::ACK) {
            map.entry(key).or_default().syn = n as u64;
            peak = peak.max(map.len());
            continue;
        }
        let Some(c) = map.get_mut(&key) else { continue };
        if f.contains(TcpFlags::RST) {
            c.rst = true;
            map.remove(&key);
        } else if f.contains(TcpFlags::SYN) {
            c.synack = n as u64;
        } else if f.contains(TcpFlags::FIN) {
            c.fins += 1;
        } else if c.fins == 2 {
            map.remove(&key);
        } else {
            c.ack = n as u64;
        }
    }
    black_box(&map);
    let secs = t.elapsed().as_secs_f64();
    let per_flow = std::mem::size_of::<((SocketAddr, SocketAddr), Box<BaseConn>)>()
        + 1
        + std::mem::size_of::<BaseConn>();
    let _ = peak;
    (pkts.len() as f64 / secs, per_flow)
}

fn engine(pkts: &[Segment], flows: usize) -> (f64, usize, u64) {
    let mut e = Engine::new(Config {
        max_flows: flows + flows / 4,
        ..Config::default()
    });
    let mut out = Vec::with_capacity(1024);
    let mut events = 0u64;
    let t0 = 1_800_000_000_000_000_000u64;
    let t = Instant::now();
    for (n, s) in pkts.iter().enumerate() {
        e.process(
            &Packet {
                ts_ns: t0 + n as u64 * 100,
                ifindex: 1,
                seg: s,
            },
            &mut out,
        );
        events += out.len() as u64;
        out.clear();
    }
    let secs = t.elapsed().as_secs_f64();
    let per_flow = e.table_memory_bytes() / (flows + flows / 4);
    (pkts.len() as f64 / secs, per_flow, events)
}

fn main() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "engine".into());
    if what != "engine" {
        bail!("unknown benchmark `{what}`: available: engine");
    }
    println!(
        "| concurrent flows | packets | engine Mpps/core | baseline Mpps/core | ratio | engine bytes/flow | baseline bytes/flow (lower bound) | events |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for flows in [10_000usize, 1_000_000] {
        let pkts = workload(flows)?;
        // Warm-up pass for the small case, so page faults do not count.
        let (bpps, bbytes) = baseline(&pkts);
        let (epps, ebytes, events) = engine(&pkts, flows);
        println!(
            "| {flows} | {} | {:.2} | {:.2} | {:.2} | {ebytes} | {bbytes} | {events} |",
            pkts.len(),
            epps / 1e6,
            bpps / 1e6,
            epps / bpps
        );
    }
    Ok(())
}
