//! The handshake model (docs/anomalies.md v2) against REAL kernel TCP: each class of
//! real-world traffic that the first model got wrong, generated in a network-namespace lab,
//! captured by tcpdump on the server's veth, read back by `synscope pcap`, with exact
//! expectations (and tshark's view of the same packets where it has one). Needs root; the lab
//! is torn down even when an assertion fails.

mod support;

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::require_root;
use synscope::lab::{Lab, spawn_in_netns};

const BIN: &str = env!("CARGO_BIN_EXE_synscope");

/// tcpdump on the server's veth, writing `file` until dropped.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(lab: &Lab, name: &str, filter: &str) -> Capture {
        let file =
            std::env::temp_dir().join(format!("synscope-model-{}-{name}.pcap", std::process::id()));
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.server_ns,
                "tcpdump",
                "--immediate-mode",
                "-U",
            ])
            .args(["-i", &lab.server_if, "-s", "256", "-w"])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        // tcpdump says "listening on ..." once its socket is open.
        let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut err, &mut line).expect("tcpdump stderr");
        assert!(line.contains("listening"), "tcpdump: {line}");
        Capture { child, file }
    }

    /// Stops tcpdump (SIGINT: it flushes) and returns the file.
    fn stop(mut self) -> PathBuf {
        thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        std::mem::take(&mut self.file)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `synscope pcap FILE --json -`: the events and the summary.
fn synscope_pcap(file: &Path, extra: &[&str]) -> (Vec<Value>, String) {
    let out = Command::new(BIN)
        .arg("pcap")
        .arg(file)
        .args(["--json", "-"])
        .args(extra)
        .output()
        .expect("run synscope");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    (events, stderr)
}

fn kinds(ev: &[Value]) -> Vec<&str> {
    ev.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

/// tshark's view: one line of `fields` per packet matching `filter`.
fn tshark(file: &Path, filter: &str, fields: &[&str]) -> Vec<String> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file).args(["-Y", filter, "-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn sysctl(lab: &Lab, ns: &str, kv: &str) {
    lab.exec(ns, &["sysctl", "-qw", kv]).expect("sysctl");
}

fn iptables(lab: &Lab, ns: &str, rule: &str) {
    let args: Vec<&str> = rule.split_whitespace().collect();
    lab.exec(ns, &[&["iptables"], &args[..]].concat())
        .expect("iptables");
}

/// A listener in the server namespace that accepts and reads until EOF (a thread that ends
/// with the lab's namespace).
fn listen(lab: &Lab, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = spawn_in_netns(&lab.server_ns, move || {
        let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
        tx.send(()).unwrap();
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let _ = std::io::copy(&mut &s, &mut std::io::sink());
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("listening");
}

fn connect(lab: &Lab, port: u16, timeout: Duration) -> thread::JoinHandle<std::io::Result<()>> {
    let to = SocketAddr::new(lab.server_v4.into(), port);
    let h = spawn_in_netns(&lab.client_ns, move || {
        let mut s = TcpStream::connect_timeout(&to, timeout)?;
        std::io::Write::write_all(&mut s, b"hello")?;
        s.shutdown(std::net::Shutdown::Write)?;
        thread::sleep(Duration::from_millis(50));
        Ok(())
    });
    thread::spawn(move || h.join().expect("join").expect("netns"))
}

#[test]
fn a_syn_answered_after_the_old_deadline_is_never_unanswered() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let port = 9501;
    listen(&lab, port);
    iptables(
        &lab,
        &lab.server_ns,
        &format!("-A INPUT -p tcp --dport {port} --syn -j DROP"),
    );
    let cap = Capture::start(&lab, "retrans", &format!("tcp port {port}"));
    let client = connect(&lab, port, Duration::from_secs(20));
    // The client's SYNs at 0, 1, 2, 3 s are dropped; the one at ~4 s gets through: answered
    // 4 s after the first SYN, beyond the 3 s v1 deadline.
    thread::sleep(Duration::from_millis(3500));
    iptables(
        &lab,
        &lab.server_ns,
        &format!("-D INPUT -p tcp --dport {port} --syn -j DROP"),
    );
    client.join().unwrap().expect("the connection succeeds");
    let file = cap.stop();
    let syns = tshark(
        &file,
        "tcp.flags.syn == 1 && tcp.flags.ack == 0",
        &["frame.time_relative"],
    );
    assert!(syns.len() >= 5, "SYNs as tshark sees them: {syns:?}");
    let (ev, summary) = synscope_pcap(&file, &[]);
    assert_eq!(kinds(&ev), ["syn_retransmitted"], "{summary}");
    assert_eq!(ev[0]["evidence"]["syn_count"], syns.len());
    let delay = ev[0]["evidence"]["extra_delay_us"].as_u64().unwrap();
    assert!((3_500_000..5_000_000).contains(&delay), "{delay}");
    assert!(
        summary.contains(&format!(
            "{} SYNs (1 connection attempt, {} retransmissions), 1 established",
            syns.len(),
            syns.len() - 1
        )),
        "{summary}"
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_syn_stream_never_answered_is_reported_once_after_the_client_gave_up() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let port = 9502;
    sysctl(&lab, &lab.client_ns, "net.ipv4.tcp_syn_retries=2");
    iptables(
        &lab,
        &lab.server_ns,
        &format!("-A INPUT -p tcp --dport {port} -j DROP"),
    );
    let cap = Capture::start(&lab, "giveup", &format!("tcp port {port} or udp port 9"));
    let t0 = Instant::now();
    let r = connect(&lab, port, Duration::from_secs(60)).join().unwrap();
    let gave_up = t0.elapsed();
    assert!(r.is_err(), "the kernel gives up after 2 retransmissions");
    // Let the capture's clock pass the deadline: a datagram 4 s after connect() failed.
    thread::sleep(Duration::from_secs(4));
    let to = SocketAddr::new(lab.server_v4.into(), 9);
    let _ = spawn_in_netns(&lab.client_ns, move || {
        std::net::UdpSocket::bind("0.0.0.0:0").and_then(|u| u.send_to(b"tick", to))
    })
    .join();
    let file = cap.stop();
    let syns: Vec<f64> = tshark(&file, "tcp.flags.syn == 1", &["frame.time_epoch"])
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    assert!(syns.len() >= 3, "{syns:?}");
    let (ev, _) = synscope_pcap(&file, &[]);
    assert_eq!(kinds(&ev), ["syn_unanswered"]);
    let e = &ev[0];
    assert_eq!(
        e["evidence"]["syn_count"],
        syns.len(),
        "every SYN tshark sees"
    );
    assert_eq!(e["evidence"]["ended"], "gave_up");
    let span = e["evidence"]["span_ms"].as_u64().unwrap() as f64 / 1000.0;
    let (first, last) = (syns[0], syns[syns.len() - 1]);
    assert!(
        (span - (last - first)).abs() < 0.01,
        "{span} vs {}",
        last - first
    );
    // Reported after the client's last SYN and no later than 1.5 s after connect() failed.
    // `ts` is RFC 3339 UTC: compare its time of day with the SYNs' (mod one day).
    let tod = &e["ts"].as_str().unwrap()[11..26];
    let hms: Vec<f64> = tod.split(':').map(|x| x.parse().unwrap()).collect();
    let day = 86_400.0;
    let at_tod = hms[0] * 3600.0 + hms[1] * 60.0 + hms[2];
    let since_first = (at_tod - first.rem_euclid(day)).rem_euclid(day);
    assert!(
        since_first > last - first,
        "{since_first} after the first SYN"
    );
    assert!(
        since_first <= gave_up.as_secs_f64() + 1.5,
        "reported {:.2} s after the first SYN; connect() failed after {:.2} s",
        since_first,
        gave_up.as_secs_f64()
    );
    let _ = std::fs::remove_file(file);
}

/// A TCP Fast Open exchange in Python (the standard library has MSG_FASTOPEN and
/// TCP_FASTOPEN): `server` listens on the ports given, with TCP_FASTOPEN on those marked.
const TFO_SERVER: &str = r#"
import socket, sys, threading, time
def serve(p, tfo):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if tfo:
        l.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
    l.bind(("0.0.0.0", p))
    l.listen(16)
    while True:
        c, _ = l.accept()
        c.recv(100)
        c.sendall(b"ok")
        c.close()
for a in sys.argv[1:]:
    p, t = a.split(":")
    threading.Thread(target=serve, args=(int(p), t == "tfo"), daemon=True).start()
time.sleep(0.2)
print("ready", flush=True)
time.sleep(30)
"#;
const TFO_CLIENT: &str = r#"
import socket, sys
s = socket.socket()
s.sendto(b"hello over tfo", socket.MSG_FASTOPEN, (sys.argv[1], int(sys.argv[2])))
print(s.recv(10))
s.close()
"#;

#[test]
fn tcp_fast_open_handshakes_are_normal_handshakes() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let (tfo_port, plain_port) = (9503, 9504);
    sysctl(&lab, &lab.client_ns, "net.ipv4.tcp_fastopen=1");
    sysctl(&lab, &lab.server_ns, "net.ipv4.tcp_fastopen=3");
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, "python3", "-c", TFO_SERVER])
        .args([format!("{tfo_port}:tfo"), format!("{plain_port}:plain")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python server");
    let mut line = [0u8; 6];
    std::io::Read::read_exact(server.stdout.as_mut().unwrap(), &mut line).expect("ready");
    let cap = Capture::start(
        &lab,
        "tfo",
        &format!("tcp port {tfo_port} or tcp port {plain_port}"),
    );
    let server_ip = lab.server_v4.to_string();
    // 1: cookie request; 2: cookie + data, accepted; 3: the cached cookie + data to a
    // listener without TCP_FASTOPEN: the data is not accepted (SYN-ACK acks ISN+1 only).
    for port in [tfo_port, tfo_port, plain_port] {
        let out = lab
            .exec(
                &lab.client_ns,
                &["python3", "-c", TFO_CLIENT, &server_ip, &port.to_string()],
            )
            .expect("tfo client");
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    }
    let file = cap.stop();
    let _ = server.kill();
    let _ = server.wait();
    // tshark: three SYNs with the TFO option, two of them carrying the request's 14 bytes.
    let syns = tshark(
        &file,
        "tcp.flags.syn == 1 && tcp.flags.ack == 0",
        &["tcp.option_kind", "tcp.len"],
    );
    assert_eq!(syns.len(), 3, "{syns:?}");
    assert!(
        syns.iter().all(|l| l.contains("34")),
        "TFO option in every SYN: {syns:?}"
    );
    let data: Vec<&str> = syns
        .iter()
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect();
    assert_eq!(data, ["0", "14", "14"]);
    let (ev, summary) = synscope_pcap(&file, &[]);
    assert_eq!(kinds(&ev), Vec::<&str>::new(), "{summary}");
    assert!(
        summary.contains(&format!("server {server_ip}:{tfo_port}: 2 SYNs"))
            && summary.contains("TCP Fast Open: 2 SYNs with the option, 1 with data accepted"),
        "{summary}"
    );
    assert!(
        summary.contains("TCP Fast Open: 1 SYN with the option, 0 with data accepted"),
        "{summary}"
    );
    assert_eq!(
        summary.matches(", 1 closed normally").count()
            + summary.matches(", 2 closed normally").count(),
        2,
        "{summary}"
    );
    let _ = std::fs::remove_file(file);
}

fn scenario_pcaps() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pcaps");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("pcaps")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    v.sort();
    assert!(v.len() >= 10, "{v:?}");
    v
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("synscope-model-{}-{name}", std::process::id()))
}

#[test]
fn each_one_way_half_of_real_captures_claims_no_reverse_traffic_and_no_one_way_warning() {
    for pcap in scenario_pcaps() {
        let stem = pcap.file_stem().unwrap().to_string_lossy().into_owned();
        for (half, filter) in [
            ("server", "ip.src == 192.0.2.2 || udp"),
            ("client", "ip.src == 192.0.2.1 && !udp || udp"),
        ] {
            let out = tmp(&format!("{stem}-{half}.pcap"));
            let st = Command::new("tshark")
                .arg("-r")
                .arg(&pcap)
                .args(["-Y", filter, "-F", "pcap", "-w"])
                .arg(&out)
                .status()
                .expect("tshark");
            assert!(st.success());
            let (ev, summary) = synscope_pcap(&out, &[]);
            let _ = std::fs::remove_file(&out);
            for e in &ev {
                assert_eq!(
                    e["reverse_seen"], false,
                    "{stem} {half} half: nothing of the other host exists: {e}"
                );
                if matches!(
                    e["kind"].as_str(),
                    Some("synack_unacked" | "fin_unanswered")
                ) {
                    assert_eq!(e["severity"], "info", "{stem} {half}: {e}");
                    assert!(e["one_way"].is_string(), "{stem} {half}: {e}");
                }
            }
            if stem == "clean_connection" {
                assert_eq!(kinds(&ev), Vec::<&str>::new(), "{half}: {summary}");
            }
            if stem == "half_open" && half == "server" {
                assert_eq!(kinds(&ev), ["synack_unacked"], "{summary}");
            }
        }
    }
}

#[test]
fn every_packet_captured_twice_changes_no_verdict() {
    for pcap in scenario_pcaps() {
        let stem = pcap.file_stem().unwrap().to_string_lossy().into_owned();
        let twice = tmp(&format!("{stem}-twice.pcap"));
        // mergecap interleaves by time: each frame right after its copy, as a mirror port
        // that sees both switch ports of a path delivers it.
        let st = Command::new("mergecap")
            .args(["-F", "pcap", "-w"])
            .arg(&twice)
            .arg(&pcap)
            .arg(&pcap)
            .status()
            .expect("mergecap");
        assert!(st.success());
        let (once, s1) = synscope_pcap(&pcap, &[]);
        let (dup, s2) = synscope_pcap(&twice, &[]);
        let _ = std::fs::remove_file(&twice);
        let strip = |v: &[Value]| -> Vec<(String, Value)> {
            v.iter()
                .map(|e| {
                    (
                        e["kind"].as_str().unwrap().to_owned(),
                        e["evidence"].clone(),
                    )
                })
                .collect()
        };
        assert_eq!(strip(&once), strip(&dup), "{stem}: {s1}\n{s2}");
        let tcp = tshark(&pcap, "tcp", &["frame.number"]).len();
        assert!(
            s2.contains(&format!("{tcp} duplicates")),
            "{stem}: every one of the {tcp} TCP packets once more: {s2}"
        );
    }
}

/// A client in the client namespace that binds `port` first (so a test knows its 4-tuple),
/// connects, sends `hello` (then, with a 4th argument `half`, its FIN), reads to EOF, prints
/// the bytes it read and closes.
const BOUND_CLIENT: &str = r#"
import socket, sys
s = socket.socket()
s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(10)
s.connect((sys.argv[1], int(sys.argv[2])))
s.sendall(b"hello")
if sys.argv[4:] == ["half"]:
    s.shutdown(socket.SHUT_WR)
n = 0
while True:
    d = s.recv(100)
    if not d:
        break
    n += len(d)
print(n)
s.close()
"#;

/// The datagram that moves a capture's clock past the deadlines (nobody listens on 9).
fn tick(lab: &Lab) {
    let to = SocketAddr::new(lab.server_v4.into(), 9);
    let _ = spawn_in_netns(&lab.client_ns, move || {
        std::net::UdpSocket::bind("0.0.0.0:0").and_then(|u| u.send_to(b"tick", to))
    })
    .join();
}

/// A frame from the lab's server MAC to its client MAC.
fn to_client(b: &synscope::wire::emit::SegmentBuilder) -> Vec<u8> {
    let mut f = synscope::wire::emit::ethernet(b, &[]);
    let (dst, src) = f.split_at_mut(6);
    dst.swap_with_slice(&mut src[..6]);
    f
}

#[test]
fn blind_rsts_during_a_real_handshake_are_ignored_and_the_connection_lives() {
    use synscope::wire::{TcpFlags, emit::SegmentBuilder};
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let (port, cport) = (9505, 40105);
    listen(&lab, port);
    // The client misses the first SYN-ACK, so the handshake stays open ~1 s (until the
    // server retransmits it): time for the blind RSTs.
    iptables(
        &lab,
        &lab.client_ns,
        &format!("-A INPUT -p tcp --sport {port} --tcp-flags SYN,ACK SYN,ACK -j DROP"),
    );
    let cap = Capture::start(&lab, "blind", &format!("tcp port {port} or udp port 9"));
    let server_ip = lab.server_v4.to_string();
    let (ns, ip) = (lab.client_ns.clone(), server_ip.clone());
    let client = thread::spawn(move || {
        Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", BOUND_CLIENT, &ip])
            .args([port.to_string(), cport.to_string(), "half".to_owned()])
            .output()
            .expect("client")
    });
    thread::sleep(Duration::from_millis(300));
    let rst = |flags: TcpFlags, seq: u32, ack: u32| {
        to_client(
            &SegmentBuilder::v4(lab.server_v4.octets(), port, lab.client_v4.octets(), cport)
                .flags(flags)
                .seq(seq)
                .ack(ack),
        )
    };
    // Without ACK, and with an ACK that does not acknowledge the SYN: RFC 9293 §3.10.7.3
    // says drop both in SYN-SENT.
    lab.inject(
        &lab.server_ns,
        &lab.server_if,
        &[
            rst(TcpFlags::RST, 0x1234_5678, 0),
            rst(TcpFlags(0x14), 0, 0x0042_4242),
        ],
    )
    .expect("inject");
    thread::sleep(Duration::from_millis(200));
    iptables(
        &lab,
        &lab.client_ns,
        &format!("-D INPUT -p tcp --sport {port} --tcp-flags SYN,ACK SYN,ACK -j DROP"),
    );
    let out = client.join().unwrap();
    // connect(), send and the orderly close all worked: the client's kernel ignored both.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tick(&lab);
    let file = cap.stop();
    let rsts = tshark(&file, "tcp.flags.reset == 1", &["tcp.seq_raw"]);
    assert_eq!(rsts.len(), 2, "both blind RSTs on the wire: {rsts:?}");
    let data = tshark(&file, "tcp.len > 0 && tcp.dstport == 9505", &["tcp.len"]);
    assert_eq!(data, ["5"], "the client's data after the handshake");
    let (ev, summary) = synscope_pcap(&file, &[]);
    assert_eq!(kinds(&ev), ["reset", "reset"], "{summary}");
    for e in &ev {
        assert_eq!(
            (
                &e["evidence"]["rst_class"],
                &e["evidence"]["effect"],
                &e["evidence"]["phase"]
            ),
            (
                &Value::from("out_of_window"),
                &Value::from("none"),
                &Value::from("handshake")
            ),
            "{e}"
        );
    }
    assert!(summary.contains("1 established"), "{summary}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_syn_meeting_time_wait_behind_a_nat_is_answered_by_the_old_connections_ack() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let (port, cport) = (9506, 40106);
    // The server closes first: it keeps TIME_WAIT on the 4-tuple, with host A's TSval.
    let (tx, rx) = std::sync::mpsc::channel();
    let _server = spawn_in_netns(&lab.server_ns, move || {
        let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        // Read the request first: closing with unread data would send a RST, not a FIN.
        let mut req = [0u8; 5];
        let _ = std::io::Read::read_exact(&mut s, &mut req);
        let _ = std::io::Write::write_all(&mut s, b"bye");
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("listening");
    // Host A's TSval is its millisecond clock (no per-connection offset), so host B's
    // TSval 1 is older in the PAWS sense; host A's kernel must not reset the server's
    // ACK to B (that would end TIME_WAIT).
    sysctl(&lab, &lab.client_ns, "net.ipv4.tcp_timestamps=2");
    synscope::lab::probe::drop_client_kernel_resets(&lab, port).expect("rule");
    let nstat = |lab: &Lab| -> u64 {
        let out = lab
            .exec(&lab.server_ns, &["nstat", "-az", "TcpExtPAWSTimewait"])
            .expect("nstat");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("TcpExtPAWSTimewait"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let paws_before = nstat(&lab);
    let cap = Capture::start(&lab, "timewait", &format!("tcp port {port} or udp port 9"));
    let out = lab
        .exec(
            &lab.client_ns,
            &[
                "python3",
                "-c",
                BOUND_CLIENT,
                &lab.server_v4.to_string(),
                &port.to_string(),
                &cport.to_string(),
            ],
        )
        .expect("host A");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    thread::sleep(Duration::from_millis(200));
    let tw = lab
        .exec(&lab.server_ns, &["ss", "-Htan", "state", "time-wait"])
        .expect("ss");
    assert!(
        String::from_utf8_lossy(&tw.stdout).contains(&format!(":{cport}")),
        "the server holds TIME_WAIT: {}",
        String::from_utf8_lossy(&tw.stdout)
    );
    // Host B behind the same address and port: its SYN and the retransmission 1 s later.
    synscope::lab::probe::send_syn(&lab, cport, port, 1).expect("B's SYN");
    thread::sleep(Duration::from_secs(1));
    synscope::lab::probe::send_syn(&lab, cport, port, 1001).expect("B's retransmission");
    thread::sleep(Duration::from_secs(4));
    tick(&lab);
    let file = cap.stop();
    assert!(
        nstat(&lab) > paws_before,
        "the kernel counted a PAWS reject in TIME_WAIT"
    );
    // tshark: B's SYNs are answered by bare ACKs, never a SYN-ACK.
    let answers = tshark(
        &file,
        &format!("tcp.srcport == {port} && tcp.dstport == {cport} && frame.time_relative > 0.5"),
        &["tcp.flags.syn", "tcp.flags.ack", "tcp.len"],
    );
    assert!(!answers.is_empty(), "the server answered B");
    assert!(
        answers.iter().all(|l| l.starts_with("0\t1\t0")),
        "bare ACKs: {answers:?}"
    );
    let (ev, summary) = synscope_pcap(&file, &[]);
    assert_eq!(
        kinds(&ev),
        ["syn_tuple_reuse", "paws_nat_collision"],
        "{summary}"
    );
    // The collision is the verdict of B's attempt (not also syn_unanswered), told when its
    // SYN stream ends never answered by a SYN-ACK.
    assert_eq!(ev[0]["evidence"]["server_answer"], "bare_ack");
    assert_eq!(ev[0]["evidence"]["prev_state"], "closed");
    let p = &ev[1]["evidence"];
    assert_eq!(p["server_answer"], "bare_ack");
    assert_eq!(p["tsval"], 1);
    assert_eq!(p["answered"], false);
    let _ = std::fs::remove_file(file);
}
