//! Privileged end-to-end tests on a real load-balancer node built from Debian's own programs in
//! network namespaces: wrk (client) → HAProxy (LB, TCP health checks every 100 ms) → two nginx
//! real servers that close every connection after one request. synscope runs inline on the
//! first real server's veth, inside its namespace, and what it reports is compared with that
//! namespace's kernel counters (`/proc/net/snmp`, `/proc/net/netstat`: what `nstat` reads) and
//! with tcpdump on the same interface.
//!
//! ```text
//!  client ns               LB ns                        real server 1 ns (watched)
//!  198.51.100.1 ──veth── 198.51.100.2  192.0.2.1 ──veth── 192.0.2.2:80  nginx, synscope
//!   wrk                   HAProxy :80  198.51.100.129 ──veth── 198.51.100.130:80  nginx
//!                                                       real server 2 ns
//! ```
//!
//! Scenarios (each its own test, one at a time: each drives the machine at its maximum rate):
//! clean load, attach on a busy node, a random SYN drop, a stopped server, a real accept-queue
//! overflow, port reuse into TIME_WAIT. The whole file takes about 70 s on 2 cores. Every check of a test is evaluated and printed (`ok` / `FAIL`) before the test
//! fails, so one run shows every broken expectation with its numbers.

mod support;

use std::{
    collections::BTreeMap,
    fmt::Debug,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;
use synscope::lab::{Lab, run};

/// The LB's address towards the clients (HAProxy's frontend).
const FRONTEND: &str = "198.51.100.2";
const CLIENT: &str = "198.51.100.1";
/// The LB's address towards the watched real server (the source of its health checks).
const LB_TO_RS1: &str = "192.0.2.1";
/// The watched real server (the lab's server end) and the other one.
const RS1: &str = "192.0.2.2";
const RS2: &str = "198.51.100.130";
const LB_TO_RS2: &str = "198.51.100.129";
const PORT: u16 = 80;

/// The scenarios drive the machine at its maximum rate: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Root (the support convention) and the node's programs. They come with scripts/setup.sh:
/// a missing one is a setup error, never a skipped test.
fn preflight() -> Option<std::sync::MutexGuard<'static, ()>> {
    if !require_root() {
        return None;
    }
    for tool in ["haproxy", "nginx", "wrk", "tcpdump", "iptables", "ss"] {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/sbin"])
            .any(|d| Path::new(d).join(tool).is_file());
        assert!(
            found,
            "{tool} is not installed: the LB node tests need haproxy, nginx and wrk \
             (./scripts/setup.sh installs them: apt-get install haproxy nginx wrk)"
        );
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A program of the node, killed (and waited for) when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` inside `ns` (`ip netns exec` execs it: the child is the program itself),
    /// stdout and stderr to `log`.
    fn start(name: &str, ns: &str, cmd: &[&str], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .unwrap_or_else(|e| panic!("{sig} to {}: {e}", self.name));
    }

    /// Sends `sig` and waits up to 10 s for the program to end (then kills it).
    fn stop_with(mut self, sig: nix::sys::signal::Signal) -> String {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }

    /// Panics with the program's log unless it is still running.
    fn assert_running(&mut self) {
        if let Some(s) = self.child.try_wait().expect("wait") {
            panic!("{} exited ({s}):\n{}", self.name, self.log());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node: the lab's two namespaces are the LB (its client end) and the watched real
/// server; the client and the second real server get namespaces of their own, named like the
/// lab's (`synscope-<pid>-...`: a later lab removes them if this process dies without its
/// Drop). Dropping the node deletes all four and the veth pairs with them.
struct Node {
    client_ns: String,
    rs2_ns: String,
    dir: PathBuf,
    lab: Lab,
}

impl Node {
    fn create() -> Node {
        let lab = Lab::create().expect("lab (LB and real server 1)");
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = (pid * 16 + n) % 10_000_000;
        let dir = std::env::temp_dir().join(format!("synscope-lb-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("node directory");
        let node = Node {
            client_ns: format!("synscope-{pid}-lb{n}-client"),
            rs2_ns: format!("synscope-{pid}-lb{n}-rs2"),
            dir,
            lab,
        };
        // From here on, Drop removes whatever was created.
        let lb = node.lab.client_ns.clone();
        let (client_if, lb_client_if) = (format!("slc{id}"), format!("sll{id}"));
        let (lb_rs2_if, rs2_if) = (format!("slm{id}"), format!("slr{id}"));
        for (ns, a, peer_ns, b) in [
            (&node.client_ns, &client_if, &lb, &lb_client_if),
            (&lb, &lb_rs2_if, &node.rs2_ns, &rs2_if),
        ] {
            for n in [ns, peer_ns] {
                if !Path::new(&format!("/var/run/netns/{n}")).exists() {
                    run("ip", &["netns", "add", n]).expect("netns");
                }
            }
            run(
                "ip",
                &[
                    "link", "add", a, "netns", ns, "type", "veth", "peer", "name", b, "netns",
                    peer_ns,
                ],
            )
            .expect("veth");
        }
        for (ns, ifname, addr) in [
            (&node.client_ns, &client_if, format!("{CLIENT}/25")),
            (&lb, &lb_client_if, format!("{FRONTEND}/25")),
            (&lb, &lb_rs2_if, format!("{LB_TO_RS2}/25")),
            (&node.rs2_ns, &rs2_if, format!("{RS2}/25")),
        ] {
            run("ip", &["-n", ns, "link", "set", "lo", "up"]).expect("lo up");
            run("ip", &["-n", ns, "addr", "add", &addr, "dev", ifname]).expect("address");
            run("ip", &["-n", ns, "link", "set", ifname, "up"]).expect("link up");
        }
        assert_eq!(node.lab.client_v4.to_string(), LB_TO_RS1);
        assert_eq!(node.lab.server_v4.to_string(), RS1);
        node
    }

    fn lb_ns(&self) -> &str {
        &self.lab.client_ns
    }

    fn rs1_ns(&self) -> &str {
        &self.lab.server_ns
    }

    /// The watched interface: real server 1's veth, in its namespace.
    fn rs1_if(&self) -> &str {
        &self.lab.server_if
    }

    /// nginx on real server `rs` (1 or 2), one process, one request per connection
    /// (`keepalive_timeout 0`: nginx closes first), with `listen_opts` (e.g. `backlog=16`).
    /// Returns once it listens.
    fn nginx(&self, rs: u8, listen_opts: &str) -> Proc {
        let (ns, addr) = match rs {
            1 => (self.rs1_ns(), RS1),
            _ => (self.rs2_ns.as_str(), RS2),
        };
        let d = self.dir.join(format!("nginx{rs}"));
        std::fs::create_dir_all(&d).expect("nginx dir");
        let p = d.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_timeout 0;\n\
             client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
             fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
             server {{ listen {addr}:{PORT} {listen_opts}; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let err = format!("{p}/error.log");
        let mut proc = Proc::start(
            &format!("nginx (real server {rs})"),
            ns,
            &["nginx", "-e", &err, "-c", conf_path.to_str().unwrap()],
            d.join("stdout.log"),
        );
        self.wait_listening(ns, PORT, &mut proc);
        proc
    }

    /// HAProxy on the LB: HTTP mode, round robin over both real servers with a TCP health check
    /// every 100 ms (connect, then RST: what HAProxy's `check` does without `option httpchk`).
    /// `rs1_opts` are added to real server 1's line (e.g. a `source` port range). Returns once
    /// its frontend listens.
    fn haproxy(&self, rs1_opts: &str) -> Haproxy {
        let d = self.dir.join("haproxy");
        std::fs::create_dir_all(&d).expect("haproxy dir");
        let sock = d.join("admin.sock");
        let conf = format!(
            "global\n  maxconn 4000\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fe\n  bind {FRONTEND}:{PORT}\n  default_backend be\n\
             backend be\n  balance roundrobin\n\
             \x20 server rs1 {RS1}:{PORT} check inter 100 {rs1_opts}\n\
             \x20 server rs2 {RS2}:{PORT} check inter 100\n",
            sock.display()
        );
        let conf_path = d.join("haproxy.cfg");
        std::fs::write(&conf_path, conf).expect("haproxy.cfg");
        let mut proc = Proc::start(
            "haproxy",
            self.lb_ns(),
            &["haproxy", "-db", "-f", conf_path.to_str().unwrap()],
            d.join("haproxy.log"),
        );
        self.wait_listening(self.lb_ns(), PORT, &mut proc);
        Haproxy { proc, sock }
    }

    fn wait_listening(&self, ns: &str, port: u16, proc: &mut Proc) {
        let t0 = Instant::now();
        loop {
            proc.assert_running();
            let out = self
                .lab
                .exec(ns, &["ss", "-Hltn", &format!("sport = :{port}")])
                .expect("ss");
            if !out.stdout.is_empty() {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{} does not listen on :{port}:\n{}",
                proc.name,
                proc.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts wrk in the client namespace: one thread, `conns` connections, `secs` seconds,
    /// through HAProxy.
    fn wrk(&self, conns: u32, secs: u32) -> Wrk {
        let log = self
            .dir
            .join(format!("wrk-{}.log", SEQ.fetch_add(1, Ordering::Relaxed)));
        Wrk(Proc::start(
            "wrk",
            &self.client_ns,
            &[
                "wrk",
                "-t1",
                &format!("-c{conns}"),
                &format!("-d{secs}s"),
                "--timeout",
                "10s",
                &format!("http://{FRONTEND}:{PORT}/"),
            ],
            log,
        ))
    }

    /// tcpdump on the watched interface writing `<dir>/<name>.pcap` (SYNs and RSTs: the
    /// handshake's control packets); returns once it captures.
    fn tcpdump(&self, name: &str) -> Tcpdump {
        let pcap = self.dir.join(format!("{name}.pcap"));
        let log = self.dir.join(format!("{name}.tcpdump.log"));
        let mut p = Proc::start(
            "tcpdump",
            self.rs1_ns(),
            &[
                "tcpdump",
                "-i",
                self.rs1_if(),
                "-n",
                "-s",
                "96",
                "-B",
                "16384",
                "-U",
                "-w",
                pcap.to_str().unwrap(),
                "tcp[tcpflags] & (tcp-syn|tcp-rst) != 0",
            ],
            log,
        );
        let t0 = Instant::now();
        while !p.log().contains("listening on") {
            p.assert_running();
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "tcpdump: {}",
                p.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        Tcpdump { proc: p, pcap }
    }

    /// The TCP counters of namespace `ns` (`/proc/net/snmp` and `/proc/net/netstat` read
    /// inside it: `TcpPassiveOpens`, `TcpExtListenOverflows`, ...).
    fn counters(&self, ns: &str) -> Counters {
        let out = self
            .lab
            .exec(ns, &["cat", "/proc/net/snmp", "/proc/net/netstat"])
            .expect("/proc/net/snmp");
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        let mut m = BTreeMap::new();
        for pair in lines.windows(2) {
            let (Some((p1, names)), Some((p2, values))) =
                (pair[0].split_once(':'), pair[1].split_once(':'))
            else {
                continue;
            };
            if p1 != p2 || names.split_whitespace().next().is_some_and(is_number) {
                continue;
            }
            if !values.split_whitespace().all(is_number) {
                continue;
            }
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                m.insert(format!("{p1}{n}"), v.parse().unwrap_or(0));
            }
        }
        assert!(m.contains_key("TcpPassiveOpens"), "{text}");
        Counters(m)
    }
}

fn is_number(s: &str) -> bool {
    s.parse::<i64>().is_ok()
}

impl Drop for Node {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.rs2_ns] {
            let _ = run("ip", &["netns", "del", ns]);
        }
        if thread::panicking() {
            eprintln!("lb node: logs and captures kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // The lab (LB and real server 1) goes with its own Drop.
    }
}

/// Counters of one namespace at one moment.
#[derive(Clone)]
struct Counters(BTreeMap<String, i64>);

impl Counters {
    /// How much `name` rose from `before` to `self`.
    fn since(&self, before: &Counters, name: &str) -> i64 {
        let get = |c: &Counters| {
            *c.0.get(name)
                .unwrap_or_else(|| panic!("no counter {name} in /proc/net/snmp or netstat"))
        };
        get(self) - get(before)
    }
}

struct Haproxy {
    proc: Proc,
    /// Its admin socket (a unix socket in the node's directory).
    sock: PathBuf,
}

impl Haproxy {
    /// Sends `cmd` to the admin socket; returns the answer.
    fn admin(&self, cmd: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.sock)
            .unwrap_or_else(|e| panic!("haproxy admin socket: {e}\n{}", self.proc.log()));
        s.write_all(format!("{cmd}\n").as_bytes())
            .expect("admin write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// Stops the health checks of both servers, lets the last one end, then stops HAProxy
    /// (SIGTERM: its connections close at once); returns its log. A check cut short by the stop
    /// would end with a FIN after its handshake instead of a RST in SYN_RECV.
    fn stop(self) -> String {
        for rs in ["rs1", "rs2"] {
            let out = self.admin(&format!("disable health be/{rs}"));
            assert!(out.trim().is_empty(), "disable health be/{rs}: {out}");
        }
        thread::sleep(Duration::from_millis(300));
        self.proc.stop_with(nix::sys::signal::Signal::SIGTERM)
    }
}

struct Wrk(Proc);

impl Wrk {
    /// Waits for wrk to end; returns (requests completed, its output).
    fn finish(mut self) -> (u64, String) {
        let t0 = Instant::now();
        while self.0.child.try_wait().expect("wait").is_none() {
            assert!(t0.elapsed() < Duration::from_secs(60), "wrk hangs");
            thread::sleep(Duration::from_millis(50));
        }
        let out = self.0.log();
        let requests = out
            .lines()
            .find_map(|l| l.split(" requests in ").next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("wrk output without a request count:\n{out}"));
        (requests, out)
    }
}

struct Tcpdump {
    proc: Proc,
    pcap: PathBuf,
}

impl Tcpdump {
    /// Stops the capture (SIGINT: it flushes and prints its statistics); fails the test if the
    /// kernel dropped any packet of it (a comparison with an incomplete capture means nothing).
    fn stop(self) -> PathBuf {
        let log = self.proc.stop_with(nix::sys::signal::Signal::SIGINT);
        let dropped: Option<u64> = log.lines().find_map(|l| {
            l.strip_suffix(" packets dropped by kernel")?
                .trim()
                .parse()
                .ok()
        });
        assert_eq!(dropped, Some(0), "tcpdump lost packets:\n{log}");
        self.pcap
    }
}

/// Packets of `pcap` matching the BPF `filter`, as tcpdump reads them.
fn tcpdump_count(pcap: &Path, filter: &str) -> u64 {
    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(pcap)
        .arg(filter)
        .output()
        .expect("tcpdump -r");
    assert!(
        out.status.success(),
        "tcpdump -r {}: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

/// `synscope live` on the watched interface with `--json -` and `--summary-json`.
fn synscope(node: &Node) -> (Live, PathBuf) {
    let summary = node.dir.join(format!(
        "summary-{}.json",
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let live = Live::events(
        node.rs1_ns(),
        node.rs1_if(),
        &["--summary-json", summary.to_str().unwrap()],
    );
    (live, summary)
}

/// What a synscope run reported.
struct Report {
    events: Vec<Value>,
    stderr: String,
    summary: Value,
}

impl Report {
    fn collect(live: Live, summary: &Path) -> Report {
        let (events, code, stderr) = live.stop();
        assert_eq!(code, 0, "synscope failed:\n{stderr}");
        // Kept beside the summary for a look after a failure (the node keeps its directory).
        let mut ndjson = String::new();
        for e in &events {
            ndjson.push_str(&e.to_string());
            ndjson.push('\n');
        }
        let _ = std::fs::write(summary.with_extension("events.ndjson"), ndjson);
        let _ = std::fs::write(summary.with_extension("stderr.txt"), &stderr);
        let summary = serde_json::from_str(
            &std::fs::read_to_string(summary).expect("--summary-json written"),
        )
        .expect("summary JSON");
        Report {
            events,
            stderr,
            summary,
        }
    }

    /// The watched endpoint's counters in `--summary-json`.
    fn endpoint(&self) -> Value {
        let name = format!("{RS1}:{PORT}");
        self.summary["endpoints"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["server"] == name.as_str()))
            .cloned()
            .unwrap_or_else(|| panic!("no endpoint {name} in the summary:\n{}", self.stderr))
    }

    fn of(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == kind).collect()
    }

    /// Events above `info` (warnings and criticals): false alarms where nothing is wrong.
    fn alarms(&self) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["severity"] != "info")
            .collect()
    }

    /// Events by `kind (severity)`.
    fn by_kind(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in &self.events {
            *m.entry(format!(
                "{} ({})",
                e["kind"].as_str().unwrap_or("?"),
                e["severity"].as_str().unwrap_or("?")
            ))
            .or_default() += 1;
        }
        m
    }

    /// Probes the summary's prober table counts from `source` to the watched endpoint.
    fn probes_from(&self, source: &str) -> u64 {
        let prefix = format!("{source} -> {RS1}:{PORT}: ");
        self.stderr
            .lines()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix(&prefix)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    fn counter(&self, name: &str) -> u64 {
        counter(&self.stderr, name)
    }

    /// Prints the events by kind, the watched endpoint's summary and a few alarms.
    fn print(&self, scenario: &str) {
        eprintln!("[{scenario}] events by kind: {:?}", self.by_kind());
        let mut resets = BTreeMap::<String, usize>::new();
        for e in self.of("reset") {
            let ev = &e["evidence"];
            *resets
                .entry(format!(
                    "{}/{}/from {}",
                    ev["rst_class"].as_str().unwrap_or("?"),
                    ev["phase"].as_str().unwrap_or("?"),
                    ev["from"].as_str().unwrap_or("?")
                ))
                .or_default() += 1;
        }
        eprintln!("[{scenario}] reset events by class/phase/sender: {resets:?}");
        let ep = self.endpoint();
        eprintln!(
            "[{scenario}] synscope on {RS1}:{PORT}: syns {} (retransmissions {}), established {}, closed normally {}, anomalies {}, resets {}; events_folded {} {}; ring_full {}",
            ep["syns"],
            ep["syn_retransmissions"],
            ep["established"],
            ep["closed_normally"],
            ep["anomalies"],
            ep["resets"],
            self.summary["events_folded"],
            self.summary["events_folded_by_kind"],
            self.counter("ring_full")
        );
        eprintln!(
            "[{scenario}] follow_collision {}, selected {}, records_read {}",
            self.counter("follow_collision"),
            self.counter("selected"),
            self.counter("records_read")
        );
        for l in self.stderr.lines().filter(|l| {
            l.contains(" probes, ")
                || l.starts_with("kernel said")
                || l.starts_with("host TCP counters")
                || l.starts_with("engine:")
        }) {
            eprintln!("[{scenario}] summary: {}", l.trim());
        }
        let mut shown = BTreeMap::<&str, usize>::new();
        for e in self.alarms() {
            let k = e["kind"].as_str().unwrap_or("?");
            let n = shown.entry(k).or_default();
            *n += 1;
            if *n <= 2 {
                eprintln!("[{scenario}] e.g. {e}");
            }
        }
    }
}

/// Every check of a scenario, evaluated and printed; the test fails at the end with all the
/// failed ones.
struct Checks {
    scenario: &'static str,
    failed: Vec<String>,
}

impl Checks {
    fn new(scenario: &'static str) -> Checks {
        Checks {
            scenario,
            failed: Vec::new(),
        }
    }

    fn that(&mut self, what: &str, ok: bool, detail: impl std::fmt::Display) {
        let line = format!("{what}: {detail}");
        eprintln!(
            "[{}] {} {line}",
            self.scenario,
            if ok { "ok  " } else { "FAIL" }
        );
        if !ok {
            self.failed.push(line);
        }
    }

    fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        let ok = got == want;
        self.that(what, ok, format!("got {got:?}, want {want:?}"));
    }

    fn finish(self) {
        assert!(
            self.failed.is_empty(),
            "{}: {} check(s) failed:\n  {}",
            self.scenario,
            self.failed.len(),
            self.failed.join("\n  ")
        );
    }
}

fn kinds_count(events: &[&Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(e["kind"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    m
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// An event's `ts` ("YYYY-MM-DDTHH:MM:SS.ffffffZ") as seconds into its UTC day.
fn ts_of_day(e: &Value) -> Option<f64> {
    let ts = e["ts"].as_str()?;
    let t = ts.get(11..)?.trim_end_matches('Z');
    let mut it = t.split(':');
    let (h, m, s): (f64, f64, f64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

/// 1. Clean load at the machine's maximum rate, synscope attached before it: nothing is
///    wrong, so no warning at all, and synscope's counts equal the kernel's and tcpdump's.
///
/// The window: tcpdump and synscope start (and the kernel baseline is read) before HAProxy
/// starts, so neither a health check nor a request reaches the real server before all three
/// watch; wrk and then HAProxy stop (no more checks) and the connections settle before the
/// counters are read again and synscope stops. Compared exactly:
/// - established handshakes on 192.0.2.2:80 = the namespace's `TcpPassiveOpens` delta;
/// - SYNs to 192.0.2.2:80 = the SYNs tcpdump captured on the same veth;
/// - probes counted from the LB (HAProxy's checks: SYN, SYN-ACK, RST) = `TcpExtEmbryonicRsts`
///   delta (a RST while the request is in SYN_RECV);
/// - `TcpExtListenOverflows` delta = 0 (the lab really is clean).
#[test]
fn clean_load_at_full_rate_is_quiet_and_counts_equal_the_kernel() {
    let Some(_serial) = preflight() else {
        return;
    };
    let node = Node::create();
    let _rs1 = node.nginx(1, "");
    let _rs2 = node.nginx(2, "");
    let dump = node.tcpdump("clean");
    let (live, summary) = synscope(&node);
    let before = node.counters(node.rs1_ns());
    let haproxy = node.haproxy("");
    let (requests, wrk_out) = node.wrk(32, 5).finish();
    let haproxy_log = haproxy.stop();
    thread::sleep(Duration::from_millis(1500));
    let after = node.counters(node.rs1_ns());
    let r = Report::collect(live, &summary);
    let pcap = dump.stop();

    let d = |n: &str| after.since(&before, n);
    let syns_seen = tcpdump_count(
        &pcap,
        &format!(
            "dst host {RS1} and dst port {PORT} and tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0"
        ),
    );
    eprintln!(
        "[clean] wrk: {requests} requests in 5 s ({} /s)",
        requests / 5
    );
    eprintln!("{wrk_out}");
    eprintln!(
        "[clean] kernel (real server 1): TcpPassiveOpens +{}, TcpExtEmbryonicRsts +{}, TcpAttemptFails +{}, TcpExtListenOverflows +{}, TcpExtListenDrops +{}, TcpOutRsts +{}, TcpExtTW +{}, TcpExtPAWSTimewait +{}",
        d("TcpPassiveOpens"),
        d("TcpExtEmbryonicRsts"),
        d("TcpAttemptFails"),
        d("TcpExtListenOverflows"),
        d("TcpExtListenDrops"),
        d("TcpOutRsts"),
        d("TcpExtTW"),
        d("TcpExtPAWSTimewait"),
    );
    eprintln!("[clean] tcpdump on {}: {syns_seen} SYNs", node.rs1_if());
    r.print("clean");
    let ep = r.endpoint();
    let mut c = Checks::new("clean");
    c.that(
        "the load ran",
        requests > 1000,
        format!("{requests} requests; haproxy log:\n{haproxy_log}"),
    );
    c.eq(
        "kernel: TcpExtListenOverflows delta",
        d("TcpExtListenOverflows"),
        0,
    );
    c.eq("ring_full", r.counter("ring_full"), 0);
    c.eq(
        "warnings (severity above info) by kind",
        kinds_count(&r.alarms()),
        BTreeMap::new(),
    );
    c.eq(
        "established on the endpoint vs kernel TcpPassiveOpens delta",
        ep["established"].as_i64().unwrap_or(-1),
        d("TcpPassiveOpens"),
    );
    c.eq(
        "SYNs on the endpoint vs tcpdump's SYNs",
        ep["syns"].as_u64().unwrap_or(0),
        syns_seen,
    );
    c.eq(
        "probes from the LB vs kernel TcpExtEmbryonicRsts delta",
        r.probes_from(LB_TO_RS1) as i64,
        d("TcpExtEmbryonicRsts"),
    );
    c.finish();
}

/// 2. Attach on a busy node, twice: first with only HAProxy's health checks running, then
///    under wrk's full-rate load (started 2.5 s before synscope). Each run lasts longer than
///    `fin_timeout` (5 s), so a FIN sent before the attach whose answer synscope missed would
///    be reported, and stops while the traffic still runs. Nothing is wrong, so no warning:
///    flows begun before synscope watched both directions raise nothing.
#[test]
fn attach_under_load_raises_no_warning() {
    let Some(_serial) = preflight() else {
        return;
    };
    let node = Node::create();
    let _rs1 = node.nginx(1, "");
    let _rs2 = node.nginx(2, "");
    let _haproxy = node.haproxy("");
    let mut c = Checks::new("attach");
    thread::sleep(Duration::from_millis(1000));
    let checks_only = attach_once(&node, "attach, checks only", Duration::from_millis(6500));
    c.eq(
        "checks only: warnings (severity above info) by kind",
        checks_only,
        BTreeMap::new(),
    );
    let wrk = node.wrk(32, 10);
    thread::sleep(Duration::from_millis(2500));
    let loaded = attach_once(&node, "attach, under load", Duration::from_millis(6500));
    let (requests, _) = wrk.finish();
    c.that(
        "the load ran",
        requests > 1000,
        format!("{requests} requests in 10 s"),
    );
    c.eq(
        "under load: warnings (severity above info) by kind",
        loaded,
        BTreeMap::new(),
    );
    c.finish();
}

/// Starts synscope on the busy node, runs it `run`, stops it while the traffic goes on;
/// returns its warnings by kind (after printing them by settle time).
fn attach_once(node: &Node, label: &str, run: Duration) -> BTreeMap<String, usize> {
    let (live, summary) = synscope(node);
    let attached = unix_now();
    let before = node.counters(node.rs1_ns());
    thread::sleep(run);
    let after = node.counters(node.rs1_ns());
    let stopping = unix_now();
    let r = Report::collect(live, &summary);
    let d = |n: &str| after.since(&before, n);
    eprintln!(
        "[{label}] kernel during the run: TcpPassiveOpens +{}, TcpExtEmbryonicRsts +{}, TcpExtListenOverflows +{}",
        d("TcpPassiveOpens"),
        d("TcpExtEmbryonicRsts"),
        d("TcpExtListenOverflows")
    );
    r.print(label);
    // When each alarm's verdict was settled, in whole seconds after the attach (diagnostics:
    // a verdict about a flow begun before the attach comes at a timeout after it).
    let day = |t: f64| t % 86_400.0;
    let mut when = BTreeMap::<String, usize>::new();
    for e in r.alarms() {
        let Some(ts) = ts_of_day(e) else { continue };
        let after_attach = (ts - day(attached)).floor() as i64;
        *when
            .entry(format!(
                "{} at +{after_attach} s",
                e["kind"].as_str().unwrap_or("?")
            ))
            .or_default() += 1;
    }
    eprintln!(
        "[{label}] warnings by settle time (stopped at +{:.1} s): {when:?}",
        stopping - attached
    );
    assert_eq!(
        d("TcpExtListenOverflows"),
        0,
        "{label}: the node overflowed, the run is no clean one"
    );
    assert_eq!(r.counter("ring_full"), 0, "{label}: ring_full");
    kinds_count(&r.alarms())
}

/// 3. A random SYN drop: an iptables rule in the real server's namespace drops 1% of the SYNs
///    to port 80 while the listener is alive and busy. HAProxy's connections retransmit and
///    are answered (`syn_retransmitted`); its health checks give a dropped SYN up after 100 ms
///    (`syn_unanswered`). The accept queue never overflows (`TcpExtListenOverflows` delta 0),
///    so there is no `accept_queue_overflow`; and every SYN the rule dropped is accounted for:
///    Σ (syn_count − 1) over `syn_retransmitted` + Σ syn_count over `syn_unanswered` = the
///    rule's packet counter.
#[test]
fn random_syn_drop_is_retransmission_not_overflow() {
    let Some(_serial) = preflight() else {
        return;
    };
    let node = Node::create();
    let _rs1 = node.nginx(1, "");
    let _rs2 = node.nginx(2, "");
    let (live, summary) = synscope(&node);
    let before = node.counters(node.rs1_ns());
    let rule = [
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "80",
        "--syn",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.01",
        "-j",
        "DROP",
    ];
    let mut add = vec!["iptables", "-w", "-A"];
    add.extend(rule);
    node.lab.exec(node.rs1_ns(), &add).expect("iptables rule");
    let haproxy = node.haproxy("");
    let (requests, _) = node.wrk(32, 5).finish();
    haproxy.stop();
    // A check's abandoned SYN is given up 3.75 s after it was sent.
    thread::sleep(Duration::from_millis(4500));
    let after = node.counters(node.rs1_ns());
    let out = node
        .lab
        .exec(
            node.rs1_ns(),
            &["iptables", "-w", "-nvxL", "INPUT", "--line-numbers"],
        )
        .expect("iptables -L");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let dropped: u64 = listing
        .lines()
        .find(|l| l.contains("statistic"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("the rule's counter: {listing}"));
    let r = Report::collect(live, &summary);

    let d = |n: &str| after.since(&before, n);
    let syn_count = |e: &&Value| e["evidence"]["syn_count"].as_u64().unwrap_or(0);
    let retransmitted = r.of("syn_retransmitted");
    let unanswered = r.of("syn_unanswered");
    let overflow = r.of("accept_queue_overflow");
    let accounted = retransmitted.iter().map(|e| syn_count(e) - 1).sum::<u64>()
        + unanswered.iter().map(syn_count).sum::<u64>();
    let overflow_syns = overflow.iter().map(syn_count).sum::<u64>();
    eprintln!(
        "[syn_drop] wrk: {requests} requests; iptables dropped {dropped} SYNs; kernel: TcpExtListenOverflows +{}, TcpExtListenDrops +{}, TcpPassiveOpens +{}, TcpExtEmbryonicRsts +{}",
        d("TcpExtListenOverflows"),
        d("TcpExtListenDrops"),
        d("TcpPassiveOpens"),
        d("TcpExtEmbryonicRsts")
    );
    eprintln!(
        "[syn_drop] synscope: {} syn_retransmitted, {} syn_unanswered ({accounted} dropped SYNs accounted), {} accept_queue_overflow ({overflow_syns} SYNs)",
        retransmitted.len(),
        unanswered.len(),
        overflow.len()
    );
    r.print("syn_drop");
    let mut c = Checks::new("syn_drop");
    c.that(
        "the load ran",
        requests > 1000,
        format!("{requests} requests"),
    );
    c.that("the rule dropped SYNs", dropped > 0, format!("{dropped}"));
    c.eq(
        "kernel: TcpExtListenOverflows delta",
        d("TcpExtListenOverflows"),
        0,
    );
    c.eq("ring_full", r.counter("ring_full"), 0);
    c.that(
        "syn_retransmitted events",
        !retransmitted.is_empty(),
        format!("{}", retransmitted.len()),
    );
    c.eq("accept_queue_overflow events", overflow.len(), 0);
    c.eq(
        "SYNs the rule dropped, accounted by syn_retransmitted and syn_unanswered",
        accounted,
        dropped,
    );
    c.finish();
}

/// 4. A stopped server: under load, nginx on the watched real server is killed; until
///    HAProxy's checks mark it down (and after, for each check) every SYN to it is refused.
///    Every refusal is its own `syn_rejected` event, none folded or hidden.
///
/// Compared exactly (over the whole run, tcpdump and synscope watching from before the
/// first packet to after the last):
/// - `syn_rejected` events = the RSTs tcpdump saw real server 1 send that answer a SYN (the
///   kernel's reset of a segment without ACK: seq 0, RFC 9293 §3.10.7.1);
/// - the namespace's `TcpOutRsts` delta = all RSTs tcpdump saw real server 1 send (the
///   refusals plus the aborts of the connections nginx held when it was killed), so the
///   refusal count above is the kernel's count minus those aborts;
/// - `events_folded` = 0 (there is no flood and no storm to fold into).
#[test]
fn stopped_server_every_refusal_is_reported() {
    let Some(_serial) = preflight() else {
        return;
    };
    let node = Node::create();
    let rs1 = node.nginx(1, "");
    let _rs2 = node.nginx(2, "");
    let dump = node.tcpdump("stopped");
    let (live, summary) = synscope(&node);
    let before = node.counters(node.rs1_ns());
    let haproxy = node.haproxy("");
    let wrk = node.wrk(32, 5);
    thread::sleep(Duration::from_millis(2500));
    rs1.stop_with(nix::sys::signal::Signal::SIGKILL);
    let (requests, _) = wrk.finish();
    haproxy.stop();
    thread::sleep(Duration::from_millis(1000));
    let after = node.counters(node.rs1_ns());
    let r = Report::collect(live, &summary);
    let pcap = dump.stop();

    let d = |n: &str| after.since(&before, n);
    let rsts = tcpdump_count(
        &pcap,
        &format!("src host {RS1} and tcp[tcpflags] & tcp-rst != 0"),
    );
    let refusals = tcpdump_count(
        &pcap,
        &format!("src host {RS1} and tcp[tcpflags] & tcp-rst != 0 and tcp[4:4] = 0"),
    );
    let rejected = r.of("syn_rejected");
    eprintln!(
        "[stopped] wrk: {requests} requests; kernel: TcpOutRsts +{}, TcpPassiveOpens +{}, TcpExtEmbryonicRsts +{}; tcpdump: {rsts} RSTs from {RS1}, {refusals} of them refusals (seq 0)",
        d("TcpOutRsts"),
        d("TcpPassiveOpens"),
        d("TcpExtEmbryonicRsts")
    );
    r.print("stopped");
    let mut c = Checks::new("stopped");
    c.that(
        "the load ran",
        requests > 1000,
        format!("{requests} requests"),
    );
    c.that("refusals happened", refusals > 0, format!("{refusals}"));
    c.eq("ring_full", r.counter("ring_full"), 0);
    c.eq(
        "kernel TcpOutRsts delta vs tcpdump's RSTs from the real server",
        d("TcpOutRsts"),
        rsts as i64,
    );
    c.eq(
        "syn_rejected events vs tcpdump's refusing RSTs",
        rejected.len() as u64,
        refusals,
    );
    c.eq(
        "events_folded",
        r.summary["events_folded"].as_u64().unwrap_or(u64::MAX),
        0,
    );
    c.finish();
}

/// 5. A real accept-queue overflow: nginx with `backlog=16` on the watched real server is
///    stopped (SIGSTOP) for 2 s under load, so its accept queue fills and the kernel drops
///    SYNs and handshake-completing ACKs (`TcpExtListenOverflows` rises), then it goes on
///    (SIGCONT). `accept_queue_overflow` events appear, each agreeing with the host's counter
///    (`host_counters_since_start.ListenOverflows` > 0), never more than the kernel's drops.
#[test]
fn real_accept_queue_overflow_is_reported() {
    let Some(_serial) = preflight() else {
        return;
    };
    let node = Node::create();
    let rs1 = node.nginx(1, "backlog=16");
    let _rs2 = node.nginx(2, "");
    let (live, summary) = synscope(&node);
    let before = node.counters(node.rs1_ns());
    let haproxy = node.haproxy("");
    let wrk = node.wrk(32, 7);
    thread::sleep(Duration::from_millis(2000));
    rs1.signal(nix::sys::signal::Signal::SIGSTOP);
    let stalled = node.counters(node.rs1_ns());
    thread::sleep(Duration::from_millis(2000));
    rs1.signal(nix::sys::signal::Signal::SIGCONT);
    let (requests, _) = wrk.finish();
    haproxy.stop();
    // Unanswered SYN streams are settled once their sender gave up (≤ 3.75 s).
    thread::sleep(Duration::from_millis(4500));
    let after = node.counters(node.rs1_ns());
    let r = Report::collect(live, &summary);
    drop(rs1);

    let d = |n: &str| after.since(&before, n);
    let overflows = d("TcpExtListenOverflows");
    let events = r.of("accept_queue_overflow");
    let mut signatures = BTreeMap::<String, usize>::new();
    for e in &events {
        *signatures
            .entry(
                e["evidence"]["signature"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
            )
            .or_default() += 1;
    }
    eprintln!(
        "[overflow] wrk: {requests} requests; kernel: TcpExtListenOverflows +{overflows} (+{} before the stall), TcpExtListenDrops +{}, TcpPassiveOpens +{}; synscope: {} accept_queue_overflow {signatures:?}",
        stalled.since(&before, "TcpExtListenOverflows"),
        d("TcpExtListenDrops"),
        d("TcpPassiveOpens"),
        events.len()
    );
    r.print("overflow");
    let mut c = Checks::new("overflow");
    c.that(
        "the load ran",
        requests > 1000,
        format!("{requests} requests"),
    );
    c.that(
        "kernel: TcpExtListenOverflows rose",
        overflows > 0,
        format!("+{overflows}"),
    );
    c.eq("ring_full", r.counter("ring_full"), 0);
    c.that(
        "accept_queue_overflow events",
        !events.is_empty() && events.len() as i64 <= overflows,
        format!("{} (kernel: +{overflows})", events.len()),
    );
    let disagree: Vec<&&Value> = events
        .iter()
        .filter(|e| {
            e["evidence"]["host_counters_since_start"]["ListenOverflows"]
                .as_u64()
                .unwrap_or(0)
                == 0
        })
        .collect();
    c.that(
        "every accept_queue_overflow agrees with the host's ListenOverflows",
        disagree.is_empty(),
        format!("{} disagree, e.g. {:?}", disagree.len(), disagree.first()),
    );
    c.finish();
}

/// 6. Port reuse at full rate: HAProxy connects to the watched real server from 16 source
///    ports only (`source 192.0.2.1:40000-40015`), so every port is reused within
///    milliseconds — some within the same millisecond, with an equal TSval — while the real
///    server still holds the previous connection in TIME_WAIT (nginx closes first). Linux
///    accepts each such SYN (its ISN is beyond the old connection: RFC 6191,
///    `tcp_timewait_state_process`) and answers with a SYN-ACK: a new connection, no
///    collision. No warning, and the counts stay exact (established = `TcpPassiveOpens`
///    delta, SYNs = tcpdump's).
#[test]
fn port_reuse_into_time_wait_is_a_new_connection() {
    let Some(_serial) = preflight() else {
        return;
    };
    let node = Node::create();
    let _rs1 = node.nginx(1, "");
    let _rs2 = node.nginx(2, "");
    let dump = node.tcpdump("reuse");
    let (live, summary) = synscope(&node);
    let before = node.counters(node.rs1_ns());
    let haproxy = node.haproxy(&format!("source {LB_TO_RS1}:40000-40015"));
    let (requests, _) = node.wrk(32, 5).finish();
    haproxy.stop();
    thread::sleep(Duration::from_millis(1500));
    let after = node.counters(node.rs1_ns());
    let r = Report::collect(live, &summary);
    let pcap = dump.stop();

    let d = |n: &str| after.since(&before, n);
    // The SYNs as tcpdump prints them: source port and TSval, in capture order.
    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&pcap)
        .arg(format!(
            "dst host {RS1} and dst port {PORT} and tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0"
        ))
        .output()
        .expect("tcpdump -r");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut last_ts = BTreeMap::<String, String>::new();
    let (mut syns, mut reused, mut same_tsval) = (0u64, 0u64, 0u64);
    for l in text.lines() {
        let Some(port) = l
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.rsplit('.').next())
        else {
            continue;
        };
        let tsval = l
            .split("TS val ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .unwrap_or("")
            .to_owned();
        syns += 1;
        if let Some(prev) = last_ts.insert(port.to_owned(), tsval.clone()) {
            reused += 1;
            same_tsval += u64::from(prev == tsval);
        }
    }
    eprintln!(
        "[reuse] wrk: {requests} requests; tcpdump: {syns} SYNs from {} source ports, {reused} reusing a port, {same_tsval} with the TSval of the port's previous SYN; kernel: TcpPassiveOpens +{}, TcpExtEmbryonicRsts +{}, TcpExtTW +{}, TcpExtPAWSTimewait +{}, TcpOutRsts +{}",
        last_ts.len(),
        d("TcpPassiveOpens"),
        d("TcpExtEmbryonicRsts"),
        d("TcpExtTW"),
        d("TcpExtPAWSTimewait"),
        d("TcpOutRsts")
    );
    r.print("reuse");
    let ep = r.endpoint();
    let mut c = Checks::new("reuse");
    c.that(
        "the load ran",
        requests > 1000,
        format!("{requests} requests"),
    );
    c.that(
        "ports were reused",
        last_ts.len() <= 16 && reused > 1000,
        format!(
            "{} ports, {reused} reuses ({same_tsval} with the TSval of the port's previous SYN)",
            last_ts.len()
        ),
    );
    c.eq(
        "kernel: TcpExtPAWSTimewait delta (no SYN rejected by TIME_WAIT)",
        d("TcpExtPAWSTimewait"),
        0,
    );
    c.eq("ring_full", r.counter("ring_full"), 0);
    c.eq(
        "warnings (severity above info) by kind",
        kinds_count(&r.alarms()),
        BTreeMap::new(),
    );
    c.eq(
        "established on the endpoint vs kernel TcpPassiveOpens delta",
        ep["established"].as_i64().unwrap_or(-1),
        d("TcpPassiveOpens"),
    );
    c.eq(
        "SYNs on the endpoint vs tcpdump's SYNs",
        ep["syns"].as_u64().unwrap_or(0),
        syns,
    );
    c.finish();
}
