//! The seed scenarios, driven against the real kernel TCP stacks of a [`Lab`]: used by
//! `synscope demo` and by the live end-to-end tests. Each scenario has its own server port
//! (`base + offset`), so they run side by side and every event is attributed by port.

use std::{
    io::{Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;

use super::{Lab, in_netns, probe::RstStamp, set_linger_zero, spawn_in_netns};

/// One scenario: what it does and what synscope must report for it.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    /// Server port = base + offset.
    pub offset: u16,
    pub title: &'static str,
    /// The events expected, in words (the tests assert them exactly).
    pub expect: &'static str,
}

pub const CLEAN_V4: Scenario = Scenario {
    name: "clean_v4",
    offset: 0,
    title: "echo connection over IPv4",
    expect: "nothing: a complete, clean connection",
};
pub const CLEAN_V6: Scenario = Scenario {
    name: "clean_v6",
    offset: 1,
    title: "echo connection over IPv6",
    expect: "nothing",
};
pub const CLOSED_PORT: Scenario = Scenario {
    name: "closed_port",
    offset: 2,
    title: "SYN to a closed port",
    expect: "syn_rejected, its evidence the server's `refused` RST",
};
pub const FIREWALL_DROP: Scenario = Scenario {
    name: "firewall_drop",
    offset: 3,
    title: "SYNs dropped by an iptables INPUT rule on the server",
    expect: "syn_unanswered with 3 SYNs (0, 1, 2 s) once the client gave up, no reverse traffic",
};
pub const HALF_OPEN: Scenario = Scenario {
    name: "half_open",
    offset: 4,
    title: "client drops its own ACKs with an OUTPUT rule",
    expect: "synack_unacked with the SYN-ACK and its retransmissions (settled when synscope stops: the server retries for ~63 s)",
};
pub const ACCEPT_QUEUE: Scenario = Scenario {
    name: "accept_queue",
    offset: 5,
    title: "listener with backlog 1 that never accepts, 4 clients",
    expect: "accept_queue_overflow (syn_dropped) for the 2 clients beyond the queue",
};
pub const LINGER_ZERO: Scenario = Scenario {
    name: "linger_zero",
    offset: 6,
    title: "client sends a request, then closes with SO_LINGER 0",
    expect: "one `active` reset from the client, phase established",
};
pub const FIN_UNANSWERED: Scenario = Scenario {
    name: "fin_unanswered",
    offset: 7,
    title: "client FIN while the server's replies are dropped by an OUTPUT rule",
    expect: "fin_unanswered from the client, with its retransmissions",
};

pub const PROBE_LEAK: Scenario = Scenario {
    name: "probe_leak",
    offset: 8,
    title: "health probe: RST with TSval 0 overtakes the ACK (raw packets)",
    expect: "probe_rst_before_ack, then probe_connection_leak: the server keeps an ESTABLISHED socket",
};
pub const PROBE_VALID: Scenario = Scenario {
    name: "probe_valid",
    offset: 9,
    title: "health probe: RST with a valid TSval overtakes the ACK",
    expect: "probe_rst_before_ack, then the server's RST to the late ACK: no leak",
};

pub const ALL: [Scenario; 10] = [
    CLEAN_V4,
    CLEAN_V6,
    CLOSED_PORT,
    FIREWALL_DROP,
    HALF_OPEN,
    ACCEPT_QUEUE,
    LINGER_ZERO,
    FIN_UNANSWERED,
    PROBE_LEAK,
    PROBE_VALID,
];

/// How long after [`run_all`] returns the last verdict can still be due (FIN timeout 5 s;
/// the firewall scenario's SYN stream is given up 3.75 s after its last SYN at ~2 s).
pub const SETTLE: Duration = Duration::from_millis(5600);

/// A TCP listener in the server namespace with `backlog`; when `accept` it serves echo
/// connections (read to EOF, echo back). Runs until `stop`.
pub fn listener(
    lab: &Lab,
    addr: IpAddr,
    port: u16,
    backlog: i32,
    accept: bool,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel();
    let h = spawn_in_netns(&lab.server_ns, move || {
        let bound = TcpListener::bind((addr, port)).and_then(|l| {
            // Re-listen with the scenario's backlog (std uses 128).
            let b = nix::sys::socket::Backlog::new(backlog).map_err(std::io::Error::from)?;
            nix::sys::socket::listen(&l, b)?;
            l.set_nonblocking(true)?;
            Ok(l)
        });
        let l = match bound {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = tx.send(Ok(()));
        while !stop.load(Ordering::Relaxed) {
            if accept && let Ok((mut s, _)) = l.accept() {
                thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(8)));
                    let mut b = Vec::new();
                    if s.read_to_end(&mut b).is_ok() {
                        let _ = s.write_all(&b);
                    }
                });
            }
            thread::sleep(Duration::from_millis(2));
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("listener did not start")?
        .with_context(|| format!("listening on port {port}"))?;
    Ok(thread::spawn(move || {
        let _ = h.join();
    }))
}

fn echo(to: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"hello synscope")?;
    s.shutdown(Shutdown::Write)?;
    let mut back = String::new();
    s.read_to_string(&mut back)?;
    Ok(format!("connected, echoed {} bytes, closed", back.len()))
}

fn connect_outcome(to: SocketAddr, timeout: Duration, hold: Duration) -> String {
    match TcpStream::connect_timeout(&to, timeout) {
        Ok(s) => {
            thread::sleep(hold);
            drop(s);
            "connected".to_owned()
        }
        Err(e) => format!("connect failed: {e}"),
    }
}

fn ipt(lab: &Lab, ns: &str, rule: &str) -> anyhow::Result<()> {
    let args: Vec<&str> = rule.split_whitespace().collect();
    lab.exec(ns, &[&["iptables"], &args[..]].concat())
        .with_context(|| format!("iptables {rule}"))?;
    Ok(())
}

/// The outcome of one scenario as the client saw it.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub scenario: Scenario,
    pub port: u16,
    pub client_view: String,
}

/// Runs every scenario against ports `base..base+10` of the lab's server, side by side, and
/// returns when every client is done (verdicts may still be due for up to [`SETTLE`]).
/// Listeners and rules live until the lab is dropped or `stop` is set.
pub fn run_all(lab: &Lab, base: u16, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<Outcome>> {
    let v4 = IpAddr::V4(lab.server_v4);
    let v6 = IpAddr::V6(lab.server_v6);
    let port = |s: Scenario| base + s.offset;
    let any: IpAddr = "::".parse().unwrap_or(v6);
    let mut servers = Vec::new();
    for s in [CLEAN_V4, CLEAN_V6, HALF_OPEN, LINGER_ZERO, FIN_UNANSWERED] {
        servers.push(listener(lab, any, port(s), 128, true, stop.clone())?);
    }
    servers.push(listener(
        lab,
        any,
        port(ACCEPT_QUEUE),
        1,
        false,
        stop.clone(),
    )?);
    for s in [PROBE_LEAK, PROBE_VALID] {
        // Never accepts: a leaked connection stays visible in the accept queue.
        servers.push(listener(lab, any, port(s), 128, false, stop.clone())?);
        super::probe::drop_client_kernel_resets(lab, port(s))?;
    }
    ipt(
        lab,
        &lab.server_ns,
        &format!("-A INPUT -p tcp --dport {} -j DROP", port(FIREWALL_DROP)),
    )?;
    ipt(
        lab,
        &lab.client_ns,
        &format!(
            "-A OUTPUT -p tcp --dport {} ! --syn -j DROP",
            port(HALF_OPEN)
        ),
    )?;
    let to = |s: Scenario, ip: IpAddr| SocketAddr::new(ip, port(s));
    let mut drivers: Vec<(Scenario, thread::JoinHandle<String>)> = Vec::new();
    let mut spawn = |s: Scenario, f: Box<dyn FnOnce() -> String + Send>| -> anyhow::Result<()> {
        let h = spawn_in_netns(&lab.client_ns, f);
        drivers.push((
            s,
            thread::spawn(move || h.join().ok().and_then(Result::ok).unwrap_or_default()),
        ));
        Ok(())
    };
    let (a, b, c) = (to(CLEAN_V4, v4), to(CLEAN_V6, v6), to(CLOSED_PORT, v4));
    spawn(CLEAN_V4, Box::new(move || fmt(echo(a))))?;
    spawn(CLEAN_V6, Box::new(move || fmt(echo(b))))?;
    spawn(
        CLOSED_PORT,
        Box::new(move || connect_outcome(c, Duration::from_secs(3), Duration::ZERO)),
    )?;
    let d = to(FIREWALL_DROP, v4);
    spawn(
        FIREWALL_DROP,
        Box::new(move || connect_outcome(d, Duration::from_millis(2500), Duration::ZERO)),
    )?;
    let e = to(HALF_OPEN, v4);
    spawn(
        HALF_OPEN,
        Box::new(move || {
            connect_outcome(e, Duration::from_secs(3), Duration::from_millis(4500))
                + " (its ACKs never left)"
        }),
    )?;
    let f = to(LINGER_ZERO, v4);
    spawn(
        LINGER_ZERO,
        Box::new(move || {
            fmt((|| {
                let mut s = TcpStream::connect_timeout(&f, Duration::from_secs(3))?;
                s.write_all(b"request")?;
                thread::sleep(Duration::from_millis(100));
                set_linger_zero(&s)?;
                drop(s);
                Ok("connected, sent a request, closed with SO_LINGER 0".to_owned())
            })())
        }),
    )?;
    // Accept queue: 4 clients 100 ms apart, each holding its socket ~3 s.
    let g = to(ACCEPT_QUEUE, v4);
    for i in 0..4u64 {
        thread::sleep(Duration::from_millis(100));
        spawn(
            ACCEPT_QUEUE,
            Box::new(move || {
                connect_outcome(
                    g,
                    Duration::from_millis(2500),
                    Duration::from_millis(3000 - 100 * i),
                )
            }),
        )?;
    }
    // FIN unanswered: connect, then the server's replies are dropped, then the client's FIN.
    let h = to(FIN_UNANSWERED, v4);
    let s = in_netns(&lab.client_ns, move || {
        TcpStream::connect_timeout(&h, Duration::from_secs(3))
    })?
    .context("connecting for the FIN scenario")?;
    thread::sleep(Duration::from_millis(50));
    ipt(
        lab,
        &lab.server_ns,
        &format!("-A OUTPUT -p tcp --sport {} -j DROP", port(FIN_UNANSWERED)),
    )?;
    s.shutdown(Shutdown::Write)?;
    let fin_sent = Instant::now();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for (scenario, h) in drivers {
        let view = h.join().unwrap_or_else(|_| "driver panicked".to_owned());
        match outcomes
            .iter_mut()
            .find(|o| o.scenario.name == scenario.name)
        {
            Some(o) => {
                o.client_view.push_str("; ");
                o.client_view.push_str(&view);
            }
            None => outcomes.push(Outcome {
                scenario,
                port: port(scenario),
                client_view: view,
            }),
        }
    }
    for (s, client_port, stamp) in [
        (PROBE_LEAK, 40_001, RstStamp::Zero),
        (PROBE_VALID, 40_002, RstStamp::Valid),
    ] {
        let r = super::probe::run(lab, client_port, port(s), stamp)?;
        outcomes.push(Outcome {
            scenario: s,
            port: port(s),
            client_view: format!(
                "SYN, SYN-ACK, RST (TSval {}), late ACK; server {}; `ss` on the server: {} ESTABLISHED socket(s)",
                if stamp == RstStamp::Zero { "0" } else { "valid" },
                if r.server_reset { "answered RST" } else { "stayed silent" },
                r.established_on_server
            ),
        });
    }
    // Keep the half-closed socket open past the FIN timeout.
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(7).saturating_sub(fin_sent.elapsed()));
        drop(s);
    });
    outcomes.push(Outcome {
        scenario: FIN_UNANSWERED,
        port: port(FIN_UNANSWERED),
        client_view: "connected, sent FIN; the server's answers are dropped".to_owned(),
    });
    outcomes.sort_by_key(|o| o.scenario.offset);
    drop(servers);
    Ok(outcomes)
}

fn fmt(r: std::io::Result<String>) -> String {
    r.unwrap_or_else(|e| format!("failed: {e}"))
}
