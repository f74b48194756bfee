//! `--metrics`: a real Prometheus server scrapes synscope and the series read back through its
//! HTTP API match what synscope reported as NDJSON; `promtool check metrics` accepts the
//! exposition.

mod support;

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use support::{
    BIN, Prometheus, assert_prometheus_matches_events, free_port, promtool_check_metrics, scrape,
};

const PCAPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pcaps");

#[test]
fn pcap_metrics_are_scraped_by_prometheus_and_match_the_events() {
    let dir = std::env::temp_dir().join(format!("synscope-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("events.ndjson");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BIN)
        .args(["pcap", &format!("{PCAPS}/probe_leak.pcap"), "--json"])
        .arg(&json)
        .args(["--metrics", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Serving starts before the files are read; the counters are complete once the events
    // file is (it is flushed when the replay ends).
    let mut text = None;
    for _ in 0..100 {
        text = scrape(None, &addr).filter(|t| t.contains("synscope_packets_total{worker=\"0\"} 4"));
        if text.is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let text = text.expect("synscope served no complete metrics");
    promtool_check_metrics(&text);
    assert!(
        text.contains("# TYPE synscope_handshake_latency_seconds histogram"),
        "{text}"
    );

    let prom = Prometheus::start(None, free_port(), &addr);
    prom.wait_for("synscope_anomalies_total");
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["reset", "probe_rst_before_ack", "probe_connection_leak"]
    );
    assert_prometheus_matches_events(&prom, &events, None);
    // One handshake's server response time, in the bucket the capture's timing puts it in.
    let h = prom.query(
        "synscope_handshake_latency_seconds_count{measure=\"syn_to_synack\",server=\"192.0.2.2:9007\"}",
    );
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].1, 1.0);
    let up = prom.query("up{job=\"synscope\"}");
    assert_eq!(up[0].1, 1.0);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_busy_metrics_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args([
            "pcap",
            &format!("{PCAPS}/probe_leak.pcap"),
            "--metrics",
            &addr,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")),
        "{err}"
    );
}

/// A v1 memory cgroup (this machine's layout) holding one process, removed when dropped.
struct MemCgroup(std::path::PathBuf);

impl MemCgroup {
    fn new(limit: u64) -> Option<Self> {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/cgroup/memory/synscope-test-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).ok()?;
        Some(Self(dir))
    }
    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("join the cgroup");
    }
    fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.0.join("memory.oom_control"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hostile_clients_neither_grow_memory_nor_kill_the_listener() {
    use std::io::Write;
    if !support::require_root() {
        return;
    }
    let cg = MemCgroup::new(256 << 20).expect("a memory cgroup (v1 at /sys/fs/cgroup/memory)");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BIN)
        .args([
            "pcap",
            &format!("{PCAPS}/probe_leak.pcap"),
            "--metrics",
            &addr,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cg.add(child.id());
    let ready = (0..100).any(|_| {
        thread::sleep(Duration::from_millis(100));
        scrape(None, &addr).is_some_and(|t| t.contains("synscope_packets_total{worker=\"0\"} 4"))
    });
    assert!(ready, "synscope never served");
    // Whatever the process holds open itself, plus 16: fewer than the connection limit (32), so
    // accept() is sure to meet EMFILE. (A fixed limit of 40 at start was borderline: on a machine
    // where the process held fewer descriptors the test passed without ever hitting EMFILE.)
    let held = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .count();
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", child.id()))
        .arg(format!("--nofile={0}:{0}", held + 16))
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit failed");
    let rss_before = rss_kib(child.id());
    // 60 clients sending 10 MB of headers each.
    let big: Vec<thread::JoinHandle<()>> = (0..60)
        .map(|_| {
            let addr = addr.clone();
            thread::spawn(move || {
                let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
                    return;
                };
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
                let chunk = vec![b'a'; 64 * 1024];
                for _ in 0..160 {
                    if s.write_all(&chunk).is_err() {
                        return; // the server closed it: what it should do
                    }
                }
            })
        })
        .collect();
    // 60 slowloris clients: far beyond the fd limit, each holding half a request head.
    let mut slow = Vec::new();
    let sa: std::net::SocketAddr = addr.parse().unwrap();
    for _ in 0..60 {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(300)) {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
            slow.push(s);
        }
    }
    for h in big {
        let _ = h.join();
    }
    let rss_during = rss_kib(child.id());
    assert!(
        child.try_wait().unwrap().is_none(),
        "synscope died under the attack"
    );
    assert!(
        rss_during < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_during} KiB"
    );
    drop(slow);
    // The listener survived EMFILE: once the clients are gone, scrapes work again.
    let back = (0..100).any(|_| {
        thread::sleep(Duration::from_millis(100));
        scrape(None, &addr).is_some_and(|t| t.contains("synscope_packets_total"))
    });
    assert!(back, "the metrics listener did not come back");
    assert_eq!(cg.oom_kills(), 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("cannot accept a connection"),
        "EMFILE was logged: {stderr}"
    );
}

#[test]
fn metrics_on_a_bare_port_take_ipv4_too_even_with_bindv6only() {
    if !support::require_root() {
        return;
    }
    let ns = format!("synscope-v6only-{}", std::process::id());
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    let _ns = Ns(ns.clone());
    let exec = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .output()
            .unwrap()
    };
    exec(&["ip", "link", "set", "lo", "up"]);
    exec(&["sysctl", "-qw", "net.ipv6.bindv6only=1"]);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, BIN, "pcap"])
        .arg(format!("{PCAPS}/closed_port.pcap"))
        .args(["--metrics", ":19466"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ok = (0..50).any(|_| {
        thread::sleep(Duration::from_millis(100));
        let out = exec(&["curl", "-sf", "http://127.0.0.1:19466/metrics"]);
        String::from_utf8_lossy(&out.stdout).contains("synscope_build_info")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "IPv4 scrape of --metrics :PORT with bindv6only=1");
}
