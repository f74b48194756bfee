//! Regenerates the scenario pcaps of `inspector/tests/pcaps/` from REAL kernel traffic: a
//! netns lab, tcpdump on the server's veth, one capture per seed scenario. Needs root.
//!
//!     cargo run --example scenario_pcaps -- inspector/tests/pcaps
//!
//! Each capture ends with a UDP datagram sent after the scenario's timeouts, so the capture's
//! clock passes every deadline the expected verdict depends on.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use synscope::lab::{Lab, in_netns, spawn_in_netns};

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

fn listener(lab: &Lab, port: u16, backlog: i32, accept: bool) -> thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = spawn_in_netns(&lab.server_ns, move || {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
        // Re-listen with the scenario's backlog (std uses 128).
        nix::sys::socket::listen(
            &l,
            nix::sys::socket::Backlog::new(backlog).expect("backlog"),
        )
        .expect("listen");
        tx.send(()).expect("ready");
        if !accept {
            thread::sleep(Duration::from_secs(8));
            return;
        }
        l.set_nonblocking(true).expect("nonblocking");
        let deadline = std::time::Instant::now() + Duration::from_secs(8);
        while std::time::Instant::now() < deadline {
            if let Ok((mut s, _)) = l.accept() {
                thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let mut b = Vec::new();
                    let _ = s.read_to_end(&mut b);
                    let _ = s.write_all(&b);
                });
            }
            thread::sleep(Duration::from_millis(2));
        }
    });
    rx.recv().expect("listener ready");
    thread::spawn(move || {
        let _ = h.join();
    })
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
    Ok(())
}
