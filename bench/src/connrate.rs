//! Connection-rate overhead of inline mode (root): a client in one namespace opens connections
//! to a listener in the other as fast as it can (connect, read until the server closes, close:
//! the server closes first, so TIME_WAIT stays on its side and the client never runs out of
//! ports), with synscope attached to the server's veth and without, interleaved.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use synscope::lab::{Lab, in_netns, spawn_in_netns};

const PORT: u16 = 9999;

/// Connections completed in `secs` by `clients` threads.
fn burst(lab: &Lab, clients: usize, secs: f64) -> anyhow::Result<u64> {
    let to: SocketAddr = (lab.server_v4, PORT).into();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            spawn_in_netns(&lab.client_ns, move || {
                let end = Instant::now() + Duration::from_secs_f64(secs);
                let mut n = 0u64;
                let mut buf = [0u8; 16];
                while Instant::now() < end {
                    if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                        while matches!(s.read(&mut buf), Ok(k) if k > 0) {}
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread"))?
            .context("client netns")?;
    }
    Ok(total)
}

/// Runs `rounds` interleaved rounds of `secs` seconds each; prints the table.
pub fn run(bin: &str, rounds: u32, secs: f64) -> anyhow::Result<()> {
    let lab = Lab::create().context("lab (needs root)")?;
    // Keep the server's TIME_WAIT table small, so that every round starts from the same state
    // (at ~20k connections/s it would otherwise grow to the default cap and slow later rounds).
    let st = Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, "sysctl", "-qw"])
        .arg("net.ipv4.tcp_max_tw_buckets=4096")
        .status()?;
    anyhow::ensure!(st.success(), "sysctl tcp_max_tw_buckets");
    let stop = Arc::new(AtomicBool::new(false));
    let listener = in_netns(&lab.server_ns, || TcpListener::bind((lab.server_v4, PORT)))??;
    let st = stop.clone();
    let server = thread::spawn(move || {
        for c in listener.incoming() {
            if st.load(Ordering::Relaxed) {
                break;
            }
            // Accept and close at once: the server closes first.
            drop(c);
        }
    });
    // Warm up (ARP, caches).
    burst(&lab, 1, 0.5)?;
    let mut sums = [0f64; 2];
    println!("| round | not attached conn/s | synscope inline conn/s |");
    println!("|---|---|---|");
    for r in 1..=rounds {
        let mut row = [0f64; 2];
        for (i, attached) in [false, true].into_iter().enumerate() {
            let child = if attached {
                let mut c = Command::new("ip")
                    .args(["netns", "exec", &lab.server_ns, bin, "live", "--iface"])
                    .arg(&lab.server_if)
                    .args(["--json", "/dev/null"])
                    // Extra flags for experiments (e.g. "--workers 1").
                    .args(
                        std::env::var("SYNSCOPE_BENCH_ARGS")
                            .unwrap_or_default()
                            .split_whitespace(),
                    )
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("synscope")?;
                // Attached well before the burst starts.
                thread::sleep(Duration::from_millis(1500));
                if let Ok(Some(s)) = c.try_wait() {
                    anyhow::bail!("synscope exited early: {s}");
                }
                Some(c)
            } else {
                None
            };
            let n = burst(&lab, 1, secs)?;
            row[i] = n as f64 / secs;
            if let Some(mut c) = child {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGINT,
                )?;
                c.wait()?;
            }
            // Let TIME_WAIT sockets of the last burst age a little between runs.
            thread::sleep(Duration::from_millis(500));
        }
        println!("| {r} | {:.0} | {:.0} |", row[0], row[1]);
        sums[0] += row[0];
        sums[1] += row[1];
    }
    let (a, b) = (sums[0] / f64::from(rounds), sums[1] / f64::from(rounds));
    println!("| mean | {a:.0} | {b:.0} (ratio {:.3}) |", b / a);
    stop.store(true, Ordering::Relaxed);
    let _ = in_netns(&lab.client_ns, || {
        TcpStream::connect_timeout(&(lab.server_v4, PORT).into(), Duration::from_secs(1))
    });
    let _ = server.join();
    Ok(())
}
