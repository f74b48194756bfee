//! synscope benchmarks (results in bench/RESULTS.md):
//!
//! - `cargo run --release -p synscope-bench -- engine`: the detection engine alone on an
//!   in-memory packet array against a straightforward baseline (std `HashMap`, one allocation
//!   per flow) in the same run.
//! - `cargo build --release && cargo run --release -p synscope-bench -- pcap`: `synscope pcap`
//!   against `tshark -r` and `tcpdump -r` on the same multi-million-packet capture: wall time.

use std::{collections::HashMap, hint::black_box, net::SocketAddr, time::Instant};

use anyhow::{Context, bail};
use synscope::{
    detect::{Config, Engine, engine::Packet},
    wire::{Segment, TcpFlags, emit::SegmentBuilder, parse_ip_tcp},
};

fn seg(b: SegmentBuilder) -> Vec<u8> {
    synscope::wire::emit::ip_tcp(&b)
}

/// [`workload_ip`] parsed.
fn workload(flows: usize) -> anyhow::Result<Vec<Segment>> {
    workload_ip(flows)?
        .iter()
        .map(|ip| parse_ip_tcp(ip).context("emitted packet must parse"))
        .collect()
}

/// `flows` concurrent connections, interleaved phase by phase so all are open at once:
/// 97% complete (SYN, SYN-ACK, ACK, FIN, FIN, ACK), 2% refused (SYN, RST|ACK), 1% SYN only.
/// Each packet from its IP header on.
fn workload_ip(flows: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let addr = |i: usize| -> ([u8; 4], u16) {
        (
            [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
            1024 + (i % 60000) as u16,
        )
    };
    let server = [192, 0, 2, 2];
    let mut phases: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 6];
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
        phases[0].push(seg(c(TcpFlags::SYN, isn, 0)));
        match i % 100 {
            0 | 1 => phases[1].push(seg(s(TcpFlags(0x14), 0, isn.wrapping_add(1)))),
            2 => {}
            _ => {
                phases[1].push(seg(s(TcpFlags(0x12), 7, isn.wrapping_add(1))));
                phases[2].push(seg(c(TcpFlags::ACK, isn.wrapping_add(1), 8)));
                phases[3].push(seg(c(TcpFlags(0x11), isn.wrapping_add(1), 8)));
                phases[4].push(seg(s(TcpFlags(0x11), 8, isn.wrapping_add(2))));
                phases[5].push(seg(c(TcpFlags::ACK, isn.wrapping_add(2), 9)));
            }
        }
    }
    Ok(phases.into_iter().flatten().collect())
}

/// The worker's path for ring-buffer records, as `runtime::inline` runs it: decode the
/// record the BPF program wrote, keep its bytes in the evidence ring (`--evidence`), run the
/// engine; `evidence` and `engine` say which of the last two run. Returns records/s.
fn worker_path(
    records: &[Vec<u8>],
    flows: usize,
    rounds: u64,
    evidence: bool,
    engine: bool,
) -> f64 {
    use synscope::{
        capture::{decode_record, record::record_ip_bytes},
        output::evidence::{Recorder, conn_key},
    };
    let mut e = Engine::new(Config {
        max_flows: flows + flows / 4,
        ..Config::default()
    });
    let mut recorder = Recorder::new(64 << 20);
    let mut out = Vec::with_capacity(1024);
    let t0 = 1_800_000_000_000_000_000i128;
    let mut pending = Vec::with_capacity(64);
    let t = Instant::now();
    for r in 0..rounds {
        let base = t0 + i128::from(r) * 61_000_000_000;
        for (n, bytes) in records.iter().enumerate() {
            let Ok(p) = decode_record(bytes, |ns| base + i128::from(ns) + n as i128 * 100) else {
                continue;
            };
            if evidence {
                let key = conn_key(&p.segment.src.into(), &p.segment.dst.into());
                let ts = u64::try_from(p.ts_unix_ns).unwrap_or(0);
                recorder.push(key, ts, record_ip_bytes(bytes));
            }
            if !engine {
                black_box(&p);
                continue;
            }
            // As `WorkerCore` does: the engine takes 64 packets at a time.
            pending.push(p);
            if pending.len() == 64 || n + 1 == records.len() {
                let batch: Vec<Packet> = pending
                    .iter()
                    .map(|p| Packet {
                        ts_ns: u64::try_from(p.ts_unix_ns).unwrap_or(0),
                        ifindex: p.ifindex,
                        seg: &p.segment,
                        egress: false,
                        weight: 1,
                    })
                    .collect();
                e.process_batch(&batch, &mut out);
                out.clear();
                drop(batch);
                pending.clear();
            }
        }
    }
    records.len() as f64 * rounds as f64 / t.elapsed().as_secs_f64()
}

/// `worker [FLOWS]`: [`worker_path`] stage by stage, and the engine alone, at 10k flows.
fn worker_bench(flows: usize) -> anyhow::Result<()> {
    let ips = workload_ip(flows)?;
    let records: Vec<Vec<u8>> = ips
        .iter()
        .map(|ip| {
            let mut data = [0u8; synscope_common::SNAP_LEN];
            let n = ip.len().min(data.len());
            data[..n].copy_from_slice(&ip[..n]);
            synscope::capture::record::encode_record(&synscope_common::PacketRecord {
                ts_ns: 0,
                flow_hash: 0,
                ifindex: 1,
                rx_queue: 0,
                wire_len: (ip.len() + 14) as u16,
                cap_len: n as u16,
                direction: 0,
                reason: 1,
                family: 4,
                vlan_depth: 0,
                weight: 1,
                data,
            })
        })
        .collect();
    let rounds = (60_000_000 / records.len()).max(1) as u64;
    println!(
        "worker path, {flows} concurrent flows, {} records:\n",
        records.len() as u64 * rounds
    );
    println!("| stages | M records/s/core |");
    println!("|---|---|");
    for (evidence, engine, name) in [
        (false, false, "decode"),
        (true, false, "decode + evidence ring"),
        (
            false,
            true,
            "decode + engine (the worker path, default flags)",
        ),
        (
            true,
            true,
            "decode + evidence ring + engine (the worker path with `--evidence`)",
        ),
    ] {
        let rate = worker_path(&records, flows, rounds, evidence, engine);
        println!("| {name} | {:.2} |", rate / 1e6);
    }
    let pkts = workload(flows)?;
    let (epps, _, _) = engine(&pkts, flows, rounds, true);
    println!(
        "| engine alone (decoded packets, batches of 64) | {:.2} |",
        epps / 1e6
    );
    Ok(())
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

/// Runs the packets `rounds` times, 61 s of capture time apart, so every round's connections
/// are new (the previous round's closed flows have expired and been removed).
fn engine(pkts: &[Segment], flows: usize, rounds: u64, batch: bool) -> (f64, usize, u64) {
    let mut e = Engine::new(Config {
        max_flows: flows + flows / 4,
        ..Config::default()
    });
    let mut out = Vec::with_capacity(1024);
    let mut events = 0u64;
    let t0 = 1_800_000_000_000_000_000u64;
    let t = Instant::now();
    for r in 0..rounds {
        let base = t0 + r * 61_000_000_000;
        let packet = |(n, s)| Packet {
            ts_ns: base + n as u64 * 100,
            ifindex: 1,
            seg: s,
            egress: false,
            weight: 1,
        };
        if batch {
            // As a worker drains its ring: up to 64 records at a time.
            let mut batch = Vec::with_capacity(64);
            for (c, chunk) in pkts.chunks(64).enumerate() {
                batch.clear();
                batch.extend(
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, s)| packet((c * 64 + i, s))),
                );
                e.process_batch(&batch, &mut out);
                events += out.len() as u64;
                out.clear();
            }
        } else {
            for p in pkts.iter().enumerate().map(packet) {
                e.process(&p, &mut out);
                events += out.len() as u64;
                out.clear();
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let per_flow = e.table_memory_bytes() / (flows + flows / 4);
    (pkts.len() as f64 * rounds as f64 / secs, per_flow, events)
}

/// The baseline, `rounds` times over (it removes closed flows itself).
fn baseline_rounds(pkts: &[Segment], rounds: u64) -> (f64, usize) {
    let mut pps = 0.0;
    let mut bytes = 0;
    for _ in 0..rounds {
        let (p, b) = baseline(pkts);
        pps += p;
        bytes = b;
    }
    (pps / rounds as f64, bytes)
}

/// Writes `pkts` as an Ethernet pcap, 10 µs apart, and returns its path.
fn write_pcap(pkts: &[Segment], flows: usize) -> anyhow::Result<std::path::PathBuf> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let path = std::env::temp_dir().join(format!("synscope-bench-{flows}.pcap"));
    let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut w = PcapWriter::with_header(
        file,
        PcapHeader {
            snaplen: 256,
            ..Default::default()
        },
    )?;
    let t0 = std::time::Duration::from_secs(1_795_000_000);
    for (n, s) in pkts.iter().enumerate() {
        let b = SegmentBuilder::new(s.src.ip(), s.src.port(), s.dst.ip(), s.dst.port())
            .flags(s.flags)
            .seq(s.seq)
            .ack(s.ack);
        let frame = synscope::wire::emit::ethernet(&b, &[]);
        w.write_packet(&PcapPacket::new(
            t0 + std::time::Duration::from_micros(10 * n as u64),
            frame.len() as u32,
            &frame,
        ))?;
    }
    Ok(path)
}

/// Wall time of one command (stdout to /dev/null), best of `runs`.
fn time_cmd(cmd: &str, args: &[&str], runs: usize) -> anyhow::Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        let st = std::process::Command::new(cmd)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running {cmd}"))?;
        if !st.success() {
            bail!("{cmd} {args:?} failed: {st}");
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn pcap_bench() -> anyhow::Result<()> {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/synscope");
    if !bin.exists() {
        bail!(
            "{} missing: run `cargo build --release` first",
            bin.display()
        );
    }
    let flows = 500_000;
    let pkts = workload(flows)?;
    let path = write_pcap(&pkts, flows)?;
    let f = path.to_str().context("temp path is UTF-8")?;
    let bin = bin.to_str().context("path is UTF-8")?;
    let size = std::fs::metadata(&path)?.len();
    println!(
        "capture: {} packets, {flows} connections, {:.0} MB ({f})\n",
        pkts.len(),
        size as f64 / 1e6
    );
    println!("| tool | command | wall s | packets/s | synscope speed-up (packets/s ratio) |");
    println!("|---|---|---|---|---|");
    let ours = time_cmd(bin, &["pcap", f, "--json", "/dev/null"], 3)?;
    // tcpdump's decoder spends ~130 µs per packet on this capture (linear in packets, not in
    // connections: measured 100k vs 200k), so it runs once on the first 200k packets and its
    // rate is compared per packet.
    const SLICE: usize = 200_000;
    let slice = SLICE.to_string();
    let filter = "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0";
    let rows: [(&str, &str, Vec<&str>, usize, usize); 4] = [
        (
            "synscope",
            bin,
            vec!["pcap", f, "--json", "/dev/null"],
            3,
            pkts.len(),
        ),
        (
            "tshark",
            "tshark",
            vec!["-n", "-r", f, "-q", "-z", "conv,tcp"],
            3,
            pkts.len(),
        ),
        (
            "tcpdump (decode)",
            "tcpdump",
            vec!["-n", "-r", f, "-c", &slice],
            1,
            SLICE,
        ),
        (
            "tcpdump (filter only)",
            "tcpdump",
            vec!["-r", f, "-w", "/dev/null", filter],
            3,
            pkts.len(),
        ),
    ];
    let our_rate = pkts.len() as f64 / ours;
    for (name, cmd, args, runs, n) in rows {
        let secs = if name == "synscope" {
            ours
        } else {
            time_cmd(cmd, &args, runs)?
        };
        let rate = n as f64 / secs;
        println!(
            "| {name} | `{} {}` | {secs:.2} ({n} pkts, best of {runs}) | {:.3} M | {:.2}× |",
            if name == "synscope" { "synscope" } else { cmd },
            args.join(" ").replace(f, "FILE"),
            rate / 1e6,
            our_rate / rate
        );
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// `hashflood`: an attacker who knows the hash function and a seed crafts 4,000 connections
/// whose keys all start their index probe at one position. Inserted into a table with that
/// seed they form one long probe chain; inserted into the engine's table (a random seed per
/// table) they are as good as random keys. Prints the p50/p99 insert cost of each against
/// random keys in the same run.
fn hashflood() -> anyhow::Result<()> {
    use synscope::flow::{Endpoint, FlowKey, FlowTable, table::FlowClass};
    const MAX: usize = 16_384;
    const N: usize = 4_000;
    const SEED: u64 = 0x05ee_d0fa_77ac;
    let key = |i: u32| {
        let c = Endpoint {
            ip: std::net::Ipv4Addr::from(0x0a00_0000 | (i >> 8))
                .to_ipv6_mapped()
                .octets(),
            port: 1024 + (i & 0xff) as u16,
        };
        let s = Endpoint {
            ip: std::net::Ipv4Addr::new(192, 0, 2, 2)
                .to_ipv6_mapped()
                .octets(),
            port: 80,
        };
        FlowKey::of(c, s).0
    };
    // The attacker's search: keys whose probe starts where the first one's does.
    let known: FlowTable<()> = FlowTable::with_known_seed(MAX, SEED);
    let target = known.probe_start(&key(0));
    let crafted: Vec<FlowKey> = (0u32..)
        .map(key)
        .filter(|k| known.probe_start(k) == target)
        .take(N)
        .collect();
    let random: Vec<FlowKey> = (0..N as u32)
        .map(|i| key(i.wrapping_mul(2_654_435_761)))
        .collect();
    // Per-insert cost in ns: p50 and p99 over `keys`, best of 5 runs.
    let cost = |keys: &[FlowKey], seed: Option<u64>| -> (f64, f64) {
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let mut t: FlowTable<()> = match seed {
                Some(s) => FlowTable::with_known_seed(MAX, s),
                None => FlowTable::new(MAX),
            };
            let mut ns: Vec<f64> = keys
                .iter()
                .map(|k| {
                    let t0 = Instant::now();
                    black_box(t.insert(*k, (), FlowClass::HalfOpen));
                    t0.elapsed().as_nanos() as f64
                })
                .collect();
            ns.sort_by(f64::total_cmp);
            let q = |f: f64| ns[((ns.len() as f64 * f) as usize).min(ns.len() - 1)];
            best = (best.0.min(q(0.5)), best.1.min(q(0.99)));
        }
        best
    };
    let base = cost(&random, None);
    println!(
        "{N} inserts into a {MAX}-flow table; the crafted keys all start their probe at one index position under the attacker's seed\n"
    );
    println!("| keys | table seed | p50 ns | p99 ns | p99 / random keys' p99 |");
    println!("|---|---|---|---|---|");
    println!(
        "| random | random (the engine's) | {:.0} | {:.0} | 1.00 |",
        base.0, base.1
    );
    for (name, seed) in [
        ("random (the engine's)", None),
        ("the attacker's (known)", Some(SEED)),
    ] {
        let c = cost(&crafted, seed);
        println!(
            "| crafted | {name} | {:.0} | {:.0} | {:.2} |",
            c.0,
            c.1,
            c.1 / base.1
        );
    }
    Ok(())
}

mod capture;
mod connrate;
mod traffic;

/// `gen IFACE WORKLOAD PPS|max COUNT`: the generator alone (in the caller's namespace).
fn gen_cmd(args: &[String]) -> anyhow::Result<()> {
    let [iface, w, pps, count] = args else {
        bail!("usage: synscope-bench gen IFACE syn|mix|data PPS|max COUNT");
    };
    let frames = traffic::frames(traffic::Workload::parse(w)?);
    let pps = (pps != "max").then(|| pps.parse()).transpose()?;
    let (sent, secs) = traffic::Sender::open(iface)?.run(
        &frames,
        count.parse()?,
        pps,
        std::time::Duration::from_secs(600),
    )?;
    println!(
        "sent {sent} frames in {secs:.3} s: {:.0} pps",
        sent as f64 / secs
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).cloned().unwrap_or_else(|| "engine".into());
    match what.as_str() {
        "engine" => {}
        "pcap" => return pcap_bench(),
        "hashflood" => return hashflood(),
        "pcap-file" => {
            // pcap-file: writes the `pcap` benchmark's capture and prints its path (profiling).
            let flows = 500_000;
            println!("{}", write_pcap(&workload(flows)?, flows)?.display());
            return Ok(());
        }
        "worker" => {
            let flows = args.get(2).map_or(Ok(10_000), |s| s.parse())?;
            return worker_bench(flows);
        }
        "gen" => return gen_cmd(&args[2..]),
        "connrate" => {
            // connrate [ROUNDS] [SECS]
            let rounds = args.get(2).map_or(Ok(5), |s| s.parse())?;
            let secs = args.get(3).map_or(Ok(3.0), |s| s.parse())?;
            return connrate::run("./target/release/synscope", rounds, secs);
        }
        what @ ("xdp-drop" | "tc-pass") => {
            // xdp-drop IFACE: the XDP count-and-drop ceiling; tc-pass IFACE: inline mode's own
            // (TC ingress count-and-pass). Until Ctrl-C; prints the count.
            let iface = args
                .get(2)
                .with_context(|| format!("usage: synscope-bench {what} IFACE"))?;
            synscope::install_stop_handler()?;
            let c = if what == "xdp-drop" {
                synscope::loader::attach_count_drop(iface)?
            } else {
                synscope::loader::attach_count_pass(iface)?
            };
            eprintln!("attached {what} to {iface}");
            while !synscope::STOP.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            println!("packets {}", c.packets()?);
            return Ok(());
        }
        "capture" => {
            // capture [SECS] [RATES, comma-separated pps] [ROUNDS at the maximum rate]
            let secs = args.get(2).map_or(Ok(2), |s| s.parse())?;
            let rates: Vec<u64> = args
                .get(3)
                .map_or("100000,200000,400000", String::as_str)
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            let rounds = args.get(4).map_or(Ok(3), |s| s.parse())?;
            return capture::run(
                "./target/release/synscope",
                "./target/release/synscope-bench",
                secs,
                &rates,
                rounds,
            );
        }
        _ => bail!(
            "unknown benchmark `{what}`: available: engine, worker, hashflood, pcap, pcap-file, gen, capture, connrate, xdp-drop, tc-pass"
        ),
    }
    println!(
        "| concurrent flows | packets | engine Mpps/core (batches of 64) | one by one | baseline Mpps/core | ratio (batches) | engine bytes/flow | baseline bytes/flow (lower bound) | events |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // 10k concurrent flows: 100 rounds of new connections (5.9M packets) for a stable figure.
    // `engine [FLOWS]`: one size only (for `perf record`).
    let only: Option<usize> = args.get(2).map(|s| s.parse()).transpose()?;
    for (flows, rounds) in [(10_000usize, 100u64), (1_000_000, 1)] {
        if only.is_some_and(|n| n != flows) {
            continue;
        }
        let pkts = workload(flows)?;
        let (bpps, bbytes) = baseline_rounds(&pkts, rounds);
        let (epps, ebytes, events) = engine(&pkts, flows, rounds, true);
        let (single, _, events_single) = engine(&pkts, flows, rounds, false);
        if events != events_single {
            bail!("batched and one-by-one runs disagree: {events} vs {events_single} events");
        }
        println!(
            "| {flows} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {ebytes} | {bbytes} | {events} |",
            pkts.len() as u64 * rounds,
            epps / 1e6,
            single / 1e6,
            bpps / 1e6,
            epps / bpps
        );
    }
    Ok(())
}
