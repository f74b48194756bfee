//! `synscope demo`: the embedded default run. Builds a lab, attaches inline mode to the
//! server's veth, drives real kernel TCP through the seed scenarios, prints what was captured
//! per scenario, and tears the lab down (also on Ctrl-C or failure: the lab is dropped).

use std::{
    io::{Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{
    capture::{CapturedPacket, clock::MonoToWall},
    cli::{DemoArgs, JsonSink},
    lab::{Lab, spawn_in_netns},
    live::{self, LiveReport},
    loader::{self, AttachMode, InlineOptions},
    output::ndjson::{PacketLine, write_line},
};

const ECHO_PORT: u16 = 8080;
const CLOSED_PORT: u16 = 8081;
const FILTERED_PORT: u16 = 8082;

/// What one scenario did and when, so captured packets can be attributed to it.
struct ScenarioRun {
    title: &'static str,
    expect: &'static str,
    outcome: String,
    start_ns: i128,
    end_ns: i128,
}

fn now_unix_ns() -> i128 {
    MonoToWall::now().to_unix_ns(MonoToWall::monotonic_now_ns())
}

fn stopped() -> bool {
    crate::STOP.load(Ordering::Relaxed)
}

/// An echo server on [::]:port (dual-stack) in the server namespace: reads until EOF, echoes.
fn start_echo_server(ns: &str, stop: Arc<AtomicBool>) -> anyhow::Result<thread::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel();
    let h = spawn_in_netns(ns, move || {
        let l = match TcpListener::bind(("::", ECHO_PORT)) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = l.set_nonblocking(true);
        let _ = tx.send(Ok(()));
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    thread::spawn(move || {
                        let mut buf = Vec::new();
                        if s.read_to_end(&mut buf).is_ok() {
                            let _ = s.write_all(&buf);
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("echo server did not start")?
        .context("echo server bind")?;
    Ok(thread::spawn(move || {
        let _ = h.join();
    }))
}

fn echo(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"hello synscope")?;
    s.shutdown(Shutdown::Write)?;
    let mut back = String::new();
    s.read_to_string(&mut back)?;
    Ok(format!("connected, echoed {} bytes, closed", back.len()))
}

fn linger_zero_reset(addr: SocketAddr) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    crate::lab::set_linger_zero(&s)?;
    drop(s);
    Ok("connected, then closed with SO_LINGER 0".to_owned())
}

fn connect_outcome(addr: SocketAddr, timeout: Duration) -> String {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => "connected".to_owned(),
        Err(e) => format!("connect failed: {e}"),
    }
}

/// Runs the scenarios from the client namespace, one after another.
fn run_scenarios(lab: &Lab) -> anyhow::Result<Vec<ScenarioRun>> {
    type Step = (
        &'static str,
        &'static str,
        Box<dyn FnOnce() -> String + Send>,
    );
    let v4 = IpAddr::V4(lab.server_v4);
    let v6 = IpAddr::V6(lab.server_v6);
    lab.exec(
        &lab.server_ns,
        &[
            "iptables",
            "-I",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &FILTERED_PORT.to_string(),
            "-j",
            "DROP",
        ],
    )
    .context("installing the firewall rule of the dropped-SYN scenario")?;
    let steps: Vec<Step> = vec![
        (
            "echo connection over IPv4",
            "SYN, then the client's FIN (a complete, clean connection)",
            Box::new(move || fmt(echo(SocketAddr::new(v4, ECHO_PORT)))),
        ),
        (
            "echo connection over IPv6",
            "the same over IPv6",
            Box::new(move || fmt(echo(SocketAddr::new(v6, ECHO_PORT)))),
        ),
        (
            "closed port",
            "one SYN; the server's RST goes out on egress (not captured in this build)",
            Box::new(move || {
                connect_outcome(SocketAddr::new(v4, CLOSED_PORT), Duration::from_secs(3))
            }),
        ),
        (
            "SYN dropped by an iptables INPUT rule",
            "the SYN and its retransmission 1 s later, never answered (client stuck in SYN_SENT)",
            Box::new(move || {
                connect_outcome(
                    SocketAddr::new(v4, FILTERED_PORT),
                    Duration::from_millis(1500),
                )
            }),
        ),
        (
            "SO_LINGER 0 close",
            "SYN, then the client's RST|ACK (an active reset)",
            Box::new(move || fmt(linger_zero_reset(SocketAddr::new(v4, ECHO_PORT)))),
        ),
    ];
    let mut runs = Vec::new();
    for (title, expect, step) in steps {
        if stopped() {
            bail!("interrupted");
        }
        let start_ns = now_unix_ns();
        let outcome = crate::lab::in_netns(&lab.client_ns, step)?;
        // Let the last packets of the scenario reach the ring before the window closes.
        thread::sleep(Duration::from_millis(150));
        runs.push(ScenarioRun {
            title,
            expect,
            outcome,
            start_ns,
            end_ns: now_unix_ns(),
        });
    }
    Ok(runs)
}

fn fmt(r: std::io::Result<String>) -> String {
    r.unwrap_or_else(|e| format!("failed: {e}"))
}

fn packet_line(p: &CapturedPacket, t0: i128) -> String {
    let s = &p.segment;
    let mut line = format!(
        "    +{:>9.3} ms  {:>21} > {:<21} {:<12} seq={}",
        (p.ts_unix_ns - t0) as f64 / 1e6,
        s.src.to_string(),
        s.dst.to_string(),
        s.flags.names(),
        s.seq
    );
    if s.flags.contains(crate::wire::TcpFlags::ACK) {
        line.push_str(&format!(" ack={}", s.ack));
    }
    if let Some((v, e)) = s.options.timestamps {
        line.push_str(&format!(" tsval={v} tsecr={e}"));
    }
    line
}

/// Runs the demo; see the module docs.
pub fn run(a: &DemoArgs) -> anyhow::Result<()> {
    if !loader::has_bpf_privileges() {
        return Err(loader::LoadError::NotPrivileged.into());
    }
    let lab = Lab::create().context("building the demo lab")?;
    println!(
        "synscope demo: lab namespaces {} (client {}) and {} (server {}), veth {} <-> {}",
        lab.client_ns, lab.client_v4, lab.server_ns, lab.server_v4, lab.client_if, lab.server_if
    );
    let stop = Arc::new(AtomicBool::new(false));
    let packets: Arc<Mutex<Vec<CapturedPacket>>> = Arc::default();
    let (ready_tx, ready_rx) = mpsc::channel();
    let opts = InlineOptions {
        iface: lab.server_if.clone(),
        ring_bytes: 1 << 22,
        force: false,
        attach: AttachMode::Auto,
    };
    let capture = {
        let stop = stop.clone();
        let packets = packets.clone();
        spawn_in_netns(&lab.server_ns, move || -> anyhow::Result<LiveReport> {
            let mut inline = loader::attach_inline(&opts)?;
            let _ = ready_tx.send(inline.attach_mode);
            let stop_fn = || stop.load(Ordering::Relaxed) || stopped();
            live::capture(&mut inline, None, &stop_fn, None, |p| {
                if let Ok(mut v) = packets.lock() {
                    v.push(p.clone());
                }
            })
        })
    };
    let mode = match ready_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(m) => m,
        Err(_) => {
            let err = match capture.join() {
                Ok(Ok(Err(e))) => e,
                Ok(Err(e)) => e.into(),
                _ => anyhow::anyhow!("the capture thread did not start"),
            };
            return Err(err.context("attaching to the lab's server interface"));
        }
    };
    println!(
        "attached XDP ({mode} mode) to {} in {}\n",
        lab.server_if, lab.server_ns
    );
    let server_stop = Arc::new(AtomicBool::new(false));
    let server = start_echo_server(&lab.server_ns, server_stop.clone())?;
    let runs = run_scenarios(&lab);
    stop.store(true, Ordering::Relaxed);
    server_stop.store(true, Ordering::Relaxed);
    let report = capture
        .join()
        .map_err(|_| anyhow::anyhow!("capture thread panicked"))?
        .context("capture")??;
    let _ = server.join();
    let runs = runs?;
    let packets = packets.lock().map(|v| v.clone()).unwrap_or_default();

    let mut json = a
        .json
        .as_deref()
        .map(JsonSink::parse)
        .as_ref()
        .map(live::open_sink)
        .transpose()?;
    for (i, r) in runs.iter().enumerate() {
        let mine: Vec<&CapturedPacket> = packets
            .iter()
            .filter(|p| p.ts_unix_ns >= r.start_ns && p.ts_unix_ns < r.end_ns)
            .collect();
        println!("[{}] {}: {}", i + 1, r.title, r.outcome);
        println!("    expected: {}", r.expect);
        println!(
            "    captured {} control packet(s) on the server's ingress:",
            mine.len()
        );
        for p in &mine {
            println!("{}", packet_line(p, r.start_ns));
            if let Some(out) = json.as_mut() {
                write_line(out, &PacketLine::from(*p))?;
            }
        }
        println!();
    }
    if let Some(out) = json.as_mut() {
        out.flush()?;
    }
    print!("{}", report.render());
    drop(lab);
    println!("lab torn down");
    Ok(())
}
