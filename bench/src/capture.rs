//! End-to-end capture benchmark on a veth pair (root): the generator in the client namespace
//! offers a workload at stepped rates to the server's veth, where one consumer at a time
//! listens: synscope inline (1 and 2 workers), synscope tap, the ceilings — an XDP program that
//! only counts and drops (`synscope_count_drop`; xdp-tools' `xdp-bench` needs a bpffs and kernel BTF for tracepoints that this machine's netns lack), an AF_XDP consumer that only counts
//! (synscope's own tap sockets and XDP program with workers that only count frames) — and
//! `tcpdump -w /dev/null` with the equivalent filter. For every step: packets offered, seen,
//! selected, processed, and where any were lost. Then the highest loss-free rate of each and
//! synscope's ratios to the ceilings and to tcpdump.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use synscope::lab::{Lab, in_netns};

use crate::traffic::{Sender, Workload, frames};

/// One listener on the server's veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumer {
    Inline(u32),
    Tap,
    XdpDrop,
    TcPass,
    XskCount,
    Tcpdump,
}

impl Consumer {
    pub fn name(self) -> String {
        match self {
            Self::Inline(n) => format!(
                "synscope inline, {n} worker{}",
                if n == 1 { "" } else { "s" }
            ),
            Self::Tap => "synscope tap".into(),
            Self::XdpDrop => "(a) XDP count+drop".into(),
            Self::TcPass => "(d) TC count+pass".into(),
            Self::XskCount => "(b) AF_XDP count-only".into(),
            Self::Tcpdump => "(c) tcpdump -w /dev/null".into(),
        }
    }
}

/// What one step measured.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub offered: u64,
    pub offered_pps: f64,
    /// Frames the consumer's first hook saw (XDP `packets`, tcpdump "received by filter").
    pub seen: u64,
    pub selected: u64,
    /// Records/frames the consumer's userspace handled.
    pub processed: u64,
    /// Where packets were lost (empty: loss-free).
    pub lost: Vec<(String, u64)>,
    pub latency: Option<String>,
}

impl Step {
    pub fn loss_free(&self) -> bool {
        self.lost.is_empty()
    }
}

struct Running {
    child: Child,
    stdout: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
}

/// Starts `argv` in `ns`; waits until a stderr or stdout line contains `ready`.
fn start(ns: &str, env: &[(&str, &str)], argv: &[&str], ready: &str) -> anyhow::Result<Running> {
    // Extra synscope flags for experiments (e.g. "--xdp-mode native").
    let extra = std::env::var("SYNSCOPE_BENCH_ARGS").unwrap_or_default();
    let extra: Vec<&str> = if argv.get(1) == Some(&"live") {
        extra.split_whitespace().collect()
    } else {
        Vec::new()
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {argv:?}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = |r: Box<dyn Read + Send>, tx: mpsc::Sender<String>| {
        thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        })
    };
    let stdout = reader(Box::new(child.stdout.take().context("stdout")?), tx.clone());
    let stderr = reader(Box::new(child.stderr.take().context("stderr")?), tx);
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains(ready) => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                bail!("{argv:?} did not get ready");
            }
        }
    }
    // Let it settle (XDP attached, sockets filled).
    thread::sleep(Duration::from_millis(300));
    Ok(Running {
        child,
        stdout,
        stderr,
    })
}

impl Running {
    /// SIGINT, wait; (stdout, stderr).
    fn stop(mut self) -> anyhow::Result<(String, String)> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        self.child.wait()?;
        let out = self.stdout.join().unwrap_or_default();
        let err = self.stderr.join().unwrap_or_default();
        Ok((out, err))
    }
}

/// The number after `name` on a summary line `  name   N`.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(name)).then(|| it.next()?.parse().ok())?
        })
        .unwrap_or(0)
}

/// The number before `suffix` on the line containing it (tcpdump's exit statistics).
fn number_before(text: &str, suffix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_suffix(suffix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Dropped packets of the veth receive backlog (`/proc/net/softnet_stat`, 2nd column, all CPUs).
fn backlog_drops(ns: &str) -> u64 {
    in_netns(ns, || {
        std::fs::read_to_string("/proc/net/softnet_stat")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
            .sum()
    })
    .unwrap_or(0)
}

/// Runs one step: `consumer` listening, `offered` frames of `frames` at `pps`.
/// The test bed: the lab and the two binaries.
pub struct Bed<'a> {
    pub lab: &'a Lab,
    /// `synscope`.
    pub bin: &'a str,
    /// `synscope-bench` (its `xdp-drop` ceiling).
    pub bench: &'a str,
}

pub fn step(
    bed: &Bed<'_>,
    consumer: Consumer,
    frames: &[Vec<u8>],
    pps: Option<u64>,
    count: u64,
) -> anyhow::Result<Step> {
    let Bed { lab, bin, bench } = *bed;
    let ns = &lab.server_ns;
    let iface = lab.server_if.as_str();
    let run = match consumer {
        Consumer::Inline(n) => start(
            ns,
            &[],
            &[
                bin,
                "live",
                "--iface",
                iface,
                "--workers",
                &n.to_string(),
                "--json",
                "/dev/null",
            ],
            "attached",
        )?,
        Consumer::Tap | Consumer::XskCount => start(
            ns,
            if consumer == Consumer::XskCount {
                &[("SYNSCOPE_TAP_COUNT_ONLY", "1")]
            } else {
                &[]
            },
            &[
                bin,
                "live",
                "--mode",
                "tap",
                "--tap-on-addressed-interface",
                "--iface",
                iface,
                "--json",
                "/dev/null",
            ],
            "attached",
        )?,
        Consumer::XdpDrop => start(ns, &[], &[bench, "xdp-drop", iface], "attached")?,
        Consumer::TcPass => start(ns, &[], &[bench, "tc-pass", iface], "attached")?,
        Consumer::Tcpdump => start(
            ns,
            &[],
            &[
                "tcpdump",
                "-i",
                iface,
                "-n",
                "-w",
                "/dev/null",
                "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0",
            ],
            "listening on",
        )?,
    };
    let drops_before = backlog_drops(ns);
    let client_if = lab.client_if.clone();
    let (sent, secs) = in_netns(&lab.client_ns, || -> anyhow::Result<(u64, f64)> {
        Sender::open(&client_if)?.run(frames, count, pps, Duration::from_secs(20))
    })??;
    // Let the consumer drain what is in flight.
    thread::sleep(Duration::from_millis(1500));
    let backlog = backlog_drops(ns).saturating_sub(drops_before);
    let (out, err) = run.stop()?;
    let text = format!("{out}\n{err}");
    if std::env::var_os("SYNSCOPE_BENCH_VERBOSE").is_some() {
        eprintln!("--- {}:\n{text}", consumer.name());
    }
    let mut s = Step {
        offered: sent,
        offered_pps: sent as f64 / secs,
        ..Default::default()
    };
    if backlog > 0 {
        s.lost.push(("veth backlog".into(), backlog));
    }
    let expect_selected = control_frames(frames, sent);
    match consumer {
        Consumer::Inline(_) | Consumer::Tap | Consumer::XskCount => {
            s.seen = counter(&text, "packets");
            s.selected = counter(&text, "selected");
            s.processed = counter(&text, "records_read");
            if s.seen < sent {
                s.lost.push(("before XDP".into(), sent - s.seen));
            }
            for c in [
                "ring_full",
                "load_failed",
                "dropped_messages",
                "tap_no_socket",
            ] {
                let n = counter(&text, c);
                if n > 0 {
                    s.lost.push((c.into(), n));
                }
            }
            let xsk_dropped: u64 = text
                .lines()
                .filter_map(|l| {
                    l.split("rx_dropped ")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum();
            if xsk_dropped > 0 {
                s.lost.push(("AF_XDP rx_dropped".into(), xsk_dropped));
            }
            // Selected frames already counted lost on their way to the workers.
            let accounted: u64 = s
                .lost
                .iter()
                .filter(|l| l.0.starts_with("AF_XDP") || l.0 == "ring_full" || l.0 == "load_failed")
                .map(|l| l.1)
                .sum();
            if s.processed + accounted < s.selected {
                s.lost
                    .push(("not read".into(), s.selected - s.processed - accounted));
            }
            s.latency = text
                .lines()
                .find_map(|l| l.split("event out): ").nth(1))
                .map(str::to_owned);
        }
        Consumer::XdpDrop | Consumer::TcPass => {
            s.seen = counter(&text, "packets");
            s.selected = s.seen;
            s.processed = s.seen;
            if s.seen < sent {
                s.lost.push(("not counted".into(), sent - s.seen));
            }
        }
        Consumer::Tcpdump => {
            s.seen = number_before(&text, " packets received by filter");
            s.processed = number_before(&text, " packets captured");
            s.selected = s.processed;
            let dropped = number_before(&text, " packets dropped by kernel");
            if dropped > 0 {
                s.lost.push(("tcpdump kernel drops".into(), dropped));
            }
            if s.processed < expect_selected {
                s.lost
                    .push(("not captured".into(), expect_selected - s.processed));
            }
        }
    }
    Ok(s)
}

/// One row of a step table.
fn print_step(c: Consumer, s: &Step, max: bool) {
    let lost = if s.loss_free() {
        "none".to_owned()
    } else {
        s.lost
            .iter()
            .map(|(w, n)| format!("{w} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| {} | {:.0}{} | {} | {} | {} | {} | {} | {} |",
        c.name(),
        s.offered_pps,
        if max { " (max)" } else { "" },
        s.offered,
        s.seen,
        s.selected,
        s.processed,
        lost,
        s.latency.as_deref().unwrap_or("-")
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Runs the whole benchmark and prints its tables: per workload, every consumer at the fixed
/// `rates`, then `rounds` interleaved rounds of every consumer at the generator's maximum
/// (on a veth the receive side runs in the sender's context, so a consumer's per-packet cost
/// throttles the sender: the maximum is the consumer's throughput, loss or not).
pub fn run(bin: &str, bench: &str, secs: u64, rates: &[u64], rounds: u32) -> anyhow::Result<()> {
    let lab = Lab::create().context("lab (needs root)")?;
    let bed = Bed {
        lab: &lab,
        bin,
        bench,
    };
    println!(
        "capture benchmark: veth pair, generator (AF_PACKET sendmmsg) in the client namespace, {secs} s per step\n"
    );
    let only = std::env::var("SYNSCOPE_BENCH_ONLY").unwrap_or_default();
    // (consumer, workload, loss-free pps)
    let mut loss_free: Vec<(String, &'static str, f64)> = Vec::new();
    for (workload, consumers) in [
        (
            Workload::SynFlood,
            vec![
                Consumer::XdpDrop,
                Consumer::TcPass,
                Consumer::Inline(1),
                Consumer::Inline(2),
                Consumer::XskCount,
                Consumer::Tap,
                Consumer::Tcpdump,
            ],
        ),
        (
            Workload::Mix,
            vec![
                Consumer::XdpDrop,
                Consumer::TcPass,
                Consumer::Inline(1),
                Consumer::Tcpdump,
            ],
        ),
        // What inline mode costs traffic it does not select.
        (
            Workload::Data,
            vec![Consumer::XdpDrop, Consumer::TcPass, Consumer::Inline(1)],
        ),
    ] {
        // SYNSCOPE_BENCH_ONLY: comma-separated parts of consumer names; SYNSCOPE_BENCH_WORKLOAD:
        // one workload (for experiments).
        let consumers: Vec<Consumer> = consumers
            .into_iter()
            .filter(|c| only.split(',').any(|o| c.name().contains(o)))
            .collect();
        if std::env::var("SYNSCOPE_BENCH_WORKLOAD").is_ok_and(|w| w != workload.name()) {
            continue;
        }
        let frames = frames(workload);
        let share = selected_share(&frames);
        println!(
            "### workload {} ({:.0}% of frames are control packets)\n",
            workload.name(),
            share * 100.0
        );
        println!(
            "| consumer | offered pps | offered | seen | selected | processed | lost (where) | detection latency |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let mut best_fixed = vec![0f64; consumers.len()];
        for (i, c) in consumers.iter().enumerate() {
            for &r in rates {
                let s = step(&bed, *c, &frames, Some(r), r * secs)?;
                print_step(*c, &s, false);
                if s.loss_free() {
                    best_fixed[i] = best_fixed[i].max(s.offered_pps);
                }
            }
        }
        let mut maxes = vec![Vec::new(); consumers.len()];
        let mut max_clean = vec![true; consumers.len()];
        for _ in 0..rounds {
            for (i, c) in consumers.iter().enumerate() {
                let s = step(&bed, *c, &frames, None, secs * 3_000_000)?;
                print_step(*c, &s, true);
                maxes[i].push(s.offered_pps);
                max_clean[i] &= s.loss_free();
            }
        }
        println!();
        println!("| consumer | median max pps ({rounds} rounds) | loss at max | loss-free pps |");
        println!("|---|---|---|---|");
        for (i, c) in consumers.iter().enumerate() {
            let m = median(&mut maxes[i]);
            let lf = if max_clean[i] {
                m.max(best_fixed[i])
            } else {
                best_fixed[i]
            };
            println!(
                "| {} | {m:.0} | {} | {lf:.0} |",
                c.name(),
                if max_clean[i] { "none" } else { "yes" }
            );
            loss_free.push((c.name(), workload.name(), lf));
        }
        println!();
    }
    let get = |c: Consumer, w: &str| {
        loss_free
            .iter()
            .find(|(n, ww, _)| *n == c.name() && *ww == w)
            .map(|x| x.2)
    };
    println!("### ratios of loss-free rates\n");
    println!("| ours | baseline | workload | ratio |");
    println!("|---|---|---|---|");
    for (ours, base, w) in [
        (Consumer::Inline(1), Consumer::XdpDrop, "syn"),
        (Consumer::Inline(2), Consumer::XdpDrop, "syn"),
        (Consumer::Inline(1), Consumer::XdpDrop, "mix"),
        (Consumer::Tap, Consumer::XskCount, "syn"),
        (Consumer::Tap, Consumer::Tcpdump, "syn"),
        (Consumer::Inline(1), Consumer::Tcpdump, "syn"),
        (Consumer::Inline(1), Consumer::Tcpdump, "mix"),
        (Consumer::Inline(1), Consumer::XdpDrop, "data"),
        // The same hook, the same stack work on every packet, no selection: what selection
        // and the records cost inline mode.
        (Consumer::Inline(1), Consumer::TcPass, "syn"),
        (Consumer::Inline(1), Consumer::TcPass, "mix"),
        (Consumer::Inline(1), Consumer::TcPass, "data"),
    ] {
        if let (Some(a), Some(b)) = (get(ours, w), get(base, w))
            && b > 0.0
        {
            println!("| {} | {} | {w} | {:.2} |", ours.name(), base.name(), a / b);
        }
    }
    Ok(())
}

/// Whether an emitted frame (Ethernet, 20-byte IPv4 header) carries SYN, FIN or RST.
fn is_control(f: &[u8]) -> bool {
    f.len() > 47 && f[47] & 0x07 != 0
}

/// Control frames among the first `sent` frames of the cycle through `frames`.
fn control_frames(frames: &[Vec<u8>], sent: u64) -> u64 {
    let per_cycle = frames.iter().filter(|f| is_control(f)).count() as u64;
    let len = frames.len() as u64;
    let rest = frames[..(sent % len) as usize]
        .iter()
        .filter(|f| is_control(f))
        .count() as u64;
    sent / len * per_cycle + rest
}

/// The share of control packets (SYN/FIN/RST) in a workload's frames.
fn selected_share(frames: &[Vec<u8>]) -> f64 {
    let control = frames.iter().filter(|f| is_control(f)).count();
    control as f64 / frames.len() as f64
}
