//! Regenerates the scenario pcaps of `inspector/tests/pcaps/` from REAL kernel traffic: a
//! netns lab, tcpdump on the server's veth, one capture per seed scenario. Needs root.
//!
//!     cargo run --example scenario_pcaps -- inspector/tests/pcaps
//!
//! Each capture ends with a UDP datagram sent after the scenario's timeouts, so the capture's
//! clock passes every deadline the expected verdict depends on.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use synscope::lab::{
    Lab, in_netns,
    probe::{self, RstStamp},
    scenarios,
};

fn capture(
    lab: &Lab,
    dir: &Path,
    name: &str,
    port: u16,
    after: Duration,
    scenario: impl FnOnce(),
) -> anyhow::Result<()> {
    let file = dir.join(format!("{name}.pcap"));
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.server_ns,
            "tcpdump",
            "--immediate-mode",
            "-i",
            &lab.server_if,
            "-U",
            "-s",
            "256",
            "-w",
        ])
        .arg(&file)
        .arg(format!("tcp port {port} or udp port 9"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting tcpdump")?;
    let mut err = BufReader::new(tcpdump.stderr.take().context("tcpdump stderr")?);
    let mut line = String::new();
    err.read_line(&mut line)?;
    if !line.contains("listening") {
        bail!("tcpdump: {line}");
    }
    scenario();
    thread::sleep(after);
    let srv = lab.server_v4;
    in_netns(&lab.client_ns, move || {
        let u = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        u.send_to(b"tick", (srv, 9)).expect("tick");
    })?;
    thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tcpdump.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    tcpdump.wait()?;
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    println!(
        "{}: {}",
        file.display(),
        rest.lines().next().unwrap_or_default()
    );
    Ok(())
}

/// A listener that lives as long as the generator (see `scenarios::listener`).
fn listener(lab: &Lab, port: u16, backlog: i32, accept: bool) -> thread::JoinHandle<()> {
    let forever = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    scenarios::listener(lab, lab.server_v4.into(), port, backlog, accept, forever)
        .expect("listener")
}

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "inspector/tests/pcaps".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let lab = Lab::create()?;
    let srv = lab.server_v4;
    let to = |port| SocketAddr::from((srv, port));

    // A clean echo connection: no anomaly.
    let _l = listener(&lab, 9000, 128, true);
    capture(
        &lab,
        &dir,
        "clean_connection",
        9000,
        Duration::from_millis(300),
        || {
            in_netns(&lab.client_ns, || {
                let mut s = TcpStream::connect(to(9000)).expect("connect");
                s.write_all(b"hello").expect("write");
                s.shutdown(std::net::Shutdown::Write).expect("shutdown");
                let mut b = Vec::new();
                s.read_to_end(&mut b).expect("read");
            })
            .expect("netns");
        },
    )?;

    capture(
        &lab,
        &dir,
        "closed_port",
        9001,
        Duration::from_millis(300),
        || {
            let r = in_netns(&lab.client_ns, || {
                TcpStream::connect_timeout(&to(9001), Duration::from_secs(2)).is_err()
            });
            assert_eq!(r.ok(), Some(true));
        },
    )?;

    lab.exec(
        &lab.server_ns,
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9002", "-j", "DROP",
        ],
    )?;
    capture(
        &lab,
        &dir,
        "syn_dropped_by_firewall",
        9002,
        Duration::from_millis(900),
        || {
            let _ = in_netns(&lab.client_ns, || {
                TcpStream::connect_timeout(&to(9002), Duration::from_millis(2500))
            });
        },
    )?;

    let _l = listener(&lab, 9003, 128, true);
    lab.exec(
        &lab.client_ns,
        &[
            "iptables", "-A", "OUTPUT", "-p", "tcp", "--dport", "9003", "!", "--syn", "-j", "DROP",
        ],
    )?;
    capture(
        &lab,
        &dir,
        "half_open",
        9003,
        Duration::from_millis(3500),
        || {
            let s = in_netns(&lab.client_ns, || {
                TcpStream::connect(to(9003)).expect("connect")
            });
            // Keep the client socket open until the capture ends.
            thread::spawn(move || {
                let _s = s;
                thread::sleep(Duration::from_secs(6));
            });
        },
    )?;

    let _l = listener(&lab, 9004, 1, false);
    capture(
        &lab,
        &dir,
        "accept_queue_full",
        9004,
        Duration::from_millis(1500),
        || {
            let hs: Vec<_> = (0..4)
                .map(|i| {
                    thread::sleep(Duration::from_millis(100));
                    let ns = lab.client_ns.clone();
                    let addr = to(9004);
                    thread::spawn(move || {
                        let _ = in_netns(&ns, move || {
                            let s = TcpStream::connect_timeout(&addr, Duration::from_millis(2500));
                            thread::sleep(Duration::from_millis(3000 - 100 * i));
                            drop(s);
                        });
                    })
                })
                .collect();
            for h in hs {
                let _ = h.join();
            }
        },
    )?;

    let _l = listener(&lab, 9005, 128, true);
    capture(
        &lab,
        &dir,
        "linger_zero_reset",
        9005,
        Duration::from_millis(300),
        || {
            in_netns(&lab.client_ns, || {
                let mut s = TcpStream::connect(to(9005)).expect("connect");
                s.write_all(b"request").expect("write");
                thread::sleep(Duration::from_millis(100));
                synscope::lab::set_linger_zero(&s).expect("linger");
            })
            .expect("netns");
        },
    )?;

    let _l = listener(&lab, 9006, 128, true);
    capture(
        &lab,
        &dir,
        "fin_unanswered",
        9006,
        Duration::from_millis(5500),
        || {
            let s = in_netns(&lab.client_ns, || {
                TcpStream::connect(to(9006)).expect("connect")
            })
            .expect("netns");
            thread::sleep(Duration::from_millis(50));
            lab.exec(
                &lab.server_ns,
                &[
                    "iptables", "-A", "OUTPUT", "-p", "tcp", "--sport", "9006", "-j", "DROP",
                ],
            )
            .expect("rule");
            s.shutdown(std::net::Shutdown::Write).expect("FIN");
            thread::spawn(move || {
                let _s = s;
                thread::sleep(Duration::from_secs(7));
            });
        },
    )?;
    // Seed 002: a health probe's RST overtakes its ACK. TSval 0 leaks a server socket; a
    // valid TSval does not (the server answers the late ACK with RST).
    for (name, port, client_port, stamp) in [
        ("probe_leak", 9007, 40_001, RstStamp::Zero),
        ("probe_valid", 9008, 40_002, RstStamp::Valid),
    ] {
        let _l = listener(&lab, port, 128, false);
        probe::drop_client_kernel_resets(&lab, port)?;
        capture(&lab, &dir, name, port, Duration::from_millis(1300), || {
            let r = probe::run(&lab, client_port, port, stamp).expect("probe");
            println!("{name}: {r:?}");
        })?;
    }
    // Seed 003: two hosts behind one NAT address. Host A's connection is closed by the server
    // first (the server keeps TIME_WAIT and, with tcp_tw_recycle, A's last TSval); host B's SYN
    // through the same address carries a much older TSval and is dropped. Kernels >= 4.12 have
    // no tcp_tw_recycle, so the drop is emulated by an INPUT rule on B's source port.
    {
        let port = 9009;
        let (tx, rx) = std::sync::mpsc::channel();
        let server = synscope::lab::spawn_in_netns(&lab.server_ns, move || {
            let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
            tx.send(()).expect("ready");
            // Server-first close: accept, say something, close.
            let (mut s, _) = l.accept().expect("accept");
            let _ = s.write_all(b"bye");
            drop(s);
            thread::sleep(Duration::from_secs(3));
        });
        rx.recv().expect("server ready");
        lab.exec(
            &lab.server_ns,
            &[
                "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9009", "--sport", "40003",
                "--syn", "-j", "DROP",
            ],
        )?;
        // Host A without a per-connection TSval offset (tcp_timestamps=2): its TSval is the
        // client's millisecond clock, so host B's TSval 1 is older in the PAWS sense.
        lab.exec(
            &lab.client_ns,
            &["sysctl", "-qw", "net.ipv4.tcp_timestamps=2"],
        )?;
        capture(
            &lab,
            &dir,
            "nat_paws_collision",
            port,
            Duration::from_millis(3300),
            || {
                in_netns(&lab.client_ns, || {
                    let mut s = TcpStream::connect(to(port)).expect("connect");
                    let mut b = Vec::new();
                    let _ = s.read_to_end(&mut b);
                })
                .expect("netns");
                thread::sleep(Duration::from_millis(100));
                probe::send_syn(&lab, 40_003, port, 1).expect("SYN of host B");
            },
        )?;
        let _ = server.join();
    }
    Ok(())
}
