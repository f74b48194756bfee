//! Helpers for the privileged end-to-end tests: run the real `synscope` binary inside a lab
//! namespace, wait until it is attached, stop it, and collect its NDJSON and summary.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use synscope::lab::{Lab, spawn_in_netns};

pub const BIN: &str = env!("CARGO_BIN_EXE_synscope");

/// Privileged tests need root. Running them unprivileged is a setup error, not a pass: they
/// fail unless SYNSCOPE_SKIP_PRIVILEGED=1 asks to skip them explicitly.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("SYNSCOPE_SKIP_PRIVILEGED").is_some() {
        eprintln!("skipping a privileged test (SYNSCOPE_SKIP_PRIVILEGED set)");
        return false;
    }
    panic!("privileged end-to-end tests need root (or SYNSCOPE_SKIP_PRIVILEGED=1 to skip)");
}

/// A running `synscope live` inside a namespace.
pub struct Live {
    pub child: Child,
    stderr_rx: mpsc::Receiver<String>,
    pub stderr: String,
    /// Reads stdout as it comes (a full pipe would stall synscope's output thread).
    stdout: Option<thread::JoinHandle<String>>,
}

impl Live {
    /// Starts `synscope live --iface IF --records - ARGS...` in `ns` (one NDJSON line per
    /// captured record) and waits for `attached`.
    pub fn start(ns: &str, iface: &str, args: &[&str]) -> Live {
        Self::spawn(ns, iface, &["--records", "-"], args)
    }

    /// Starts `synscope live --iface IF --json - ARGS...` in `ns` (one NDJSON line per anomaly
    /// event) and waits for `attached`.
    pub fn events(ns: &str, iface: &str, args: &[&str]) -> Live {
        Self::spawn(ns, iface, &["--json", "-"], args)
    }

    /// Starts `synscope live --iface IF ARGS...` in `ns` (stdout is whatever ARGS make it).
    pub fn plain(ns: &str, iface: &str, args: &[&str]) -> Live {
        Self::spawn(ns, iface, &[], args)
    }

    /// Starts `synscope live --iface IF --json - ARGS...` in `ns` through `wrapper` (e.g.
    /// `setpriv ...` to run it as a service would).
    pub fn wrapped(ns: &str, wrapper: &[&str], iface: &str, args: &[&str]) -> Live {
        Self::spawn_with(ns, wrapper, iface, &["--json", "-"], args)
    }

    fn spawn(ns: &str, iface: &str, output: &[&str], args: &[&str]) -> Live {
        Self::spawn_with(ns, &[], iface, output, args)
    }

    fn spawn_with(ns: &str, wrapper: &[&str], iface: &str, output: &[&str], args: &[&str]) -> Live {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(wrapper)
            .args([BIN, "live", "--iface", iface])
            .args(output)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn synscope");
        let stderr = child.stderr.take().expect("stderr");
        let mut out = child.stdout.take().expect("stdout");
        let stdout = thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut live = Live {
            child,
            stderr_rx: rx,
            stderr: String::new(),
            stdout: Some(stdout),
        };
        loop {
            match live.stderr_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    live.stderr.push_str(&line);
                    live.stderr.push('\n');
                    if line.contains("attached") {
                        return live;
                    }
                }
                Err(_) => {
                    let _ = live.child.kill();
                    panic!("synscope did not attach; stderr:\n{}", live.stderr);
                }
            }
        }
    }

    /// Waits up to `limit` for synscope to end on its own; returns (exit code, stderr).
    pub fn wait_exit(mut self, limit: Duration) -> (i32, String) {
        let t0 = std::time::Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                panic!("synscope did not end within {limit:?}:\n{}", self.stderr);
            }
            thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.stderr_rx.recv_timeout(Duration::from_secs(2)) {
            self.stderr.push_str(&line);
            self.stderr.push('\n');
        }
        (status.code().unwrap_or(-1), self.stderr.clone())
    }

    /// Kills synscope with SIGKILL (no cleanup of its own) and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `sig` to synscope.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal");
    }

    /// Sends SIGINT, waits, and returns (NDJSON objects, exit code, full stderr).
    pub fn stop(self) -> (Vec<serde_json::Value>, i32, String) {
        let (out, code, stderr) = self.stop_raw();
        let lines = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON {l:?}: {e}")))
            .collect();
        (lines, code, stderr)
    }

    /// Sends SIGINT, waits, and returns (stdout, exit code, full stderr).
    pub fn stop_raw(mut self) -> (String, i32, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
        let status = self.child.wait().expect("wait");
        let out = self
            .stdout
            .take()
            .expect("stdout reader")
            .join()
            .expect("stdout reader thread");
        while let Ok(line) = self.stderr_rx.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push_str(&line);
            self.stderr.push('\n');
        }
        (
            out,
            status.code().unwrap_or(-1),
            std::mem::take(&mut self.stderr),
        )
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A counter value from the summary synscope prints on stderr.
pub fn counter(summary: &str, name: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(name))
                .then(|| it.next()?.parse().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("counter {name} not in summary:\n{summary}"))
}

/// An echo server on [::]:port in the lab's server namespace, serving `conns` connections.
pub fn echo_server(lab: &Lab, port: u16, conns: usize) -> thread::JoinHandle<()> {
    let (tx, rx) = mpsc::channel();
    let h = spawn_in_netns(&lab.server_ns, move || {
        let l = TcpListener::bind(("::", port)).expect("bind echo");
        tx.send(()).expect("ready");
        for _ in 0..conns {
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).expect("read");
            s.write_all(&buf).expect("echo");
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("echo server ready");
    thread::spawn(move || h.join().expect("echo thread").expect("netns"))
}

/// Connects from the client namespace, sends `data`, half-closes, and returns (local address,
/// echoed bytes).
pub fn echo_once(lab: &Lab, to: SocketAddr, data: &[u8]) -> (SocketAddr, Vec<u8>) {
    let data = data.to_vec();
    synscope::lab::in_netns(&lab.client_ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(&data).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut back = Vec::new();
        s.read_to_end(&mut back).expect("read echo");
        (s.local_addr().expect("local addr"), back)
    })
    .expect("client netns")
}

/// A `key=value` field of synscope's "attached" log line.
pub fn log_field(stderr: &str, key: &str) -> u32 {
    stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}="))?.parse().ok())
        .unwrap_or_else(|| panic!("{key}= not in:\n{stderr}"))
}

/// Whether any BPF link (XDP, tcx, …) still holds program `prog_id`.
pub fn prog_linked(prog_id: u32) -> bool {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("bpftool link");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v.as_array()
        .is_some_and(|a| a.iter().any(|l| l["prog_id"] == prog_id))
}

/// Whether `ip` reports an XDP program on `iface` in `ns`.
pub fn xdp_attached(lab: &Lab, ns: &str, iface: &str) -> bool {
    let out = lab
        .exec(ns, &["ip", "-d", "-j", "link", "show", "dev", iface])
        .expect("ip link");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip json");
    v[0].get("xdp").is_some()
}

/// Runs every seed scenario against the lab on ports from `base` while `live` (started with
/// `--json -`) watches, lets the verdicts settle, stops synscope — before the listeners:
/// closing a listener resets its queued connections — and asserts the exact events. Returns
/// synscope's stderr (logs and summary) for the caller's counter checks.
pub fn detect_seed_scenarios(lab: &Lab, live: Live, base: u16) -> String {
    detect_seed_scenarios_then(lab, live, base, |_| ()).2
}

/// [`detect_seed_scenarios`], with `settled` called once the verdicts have settled, before
/// synscope stops; returns its result, the events and synscope's stderr.
pub fn detect_seed_scenarios_then<T>(
    lab: &Lab,
    live: Live,
    base: u16,
    settled: impl FnOnce(&Live) -> T,
) -> (T, Vec<serde_json::Value>, String) {
    use synscope::lab::scenarios;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outcomes = scenarios::run_all(lab, base, stop.clone()).expect("scenarios");
    thread::sleep(scenarios::SETTLE);
    let t = settled(&live);
    let (events, code, stderr) = live.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert_seed_events(&events, &outcomes, base);
    (t, events, stderr)
}

/// The exact events of every seed scenario of `lab::scenarios::run_all` on ports from `base`:
/// what inline and tap mode must both report.
pub fn assert_seed_events(
    events: &[serde_json::Value],
    outcomes: &[synscope::lab::scenarios::Outcome],
    base: u16,
) {
    use synscope::lab::scenarios;
    let at = |s: scenarios::Scenario| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| {
                e["server"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!(":{}", base + s.offset))
            })
            .collect()
    };
    let kinds = |v: &[&serde_json::Value]| -> Vec<String> {
        v.iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        outcomes[0].client_view.contains("echoed 14 bytes"),
        "{outcomes:?}"
    );
    assert_eq!(kinds(&at(scenarios::CLEAN_V4)), Vec::<String>::new());
    assert_eq!(kinds(&at(scenarios::CLEAN_V6)), Vec::<String>::new());

    let e = at(scenarios::CLOSED_PORT);
    assert_eq!(kinds(&e), ["syn_rejected"]);
    assert_eq!(e[0]["evidence"]["rst_class"], "refused");
    assert_eq!(e[0]["evidence"]["from"], "server");
    assert_eq!(e[0]["reverse_seen"], true);

    let e = at(scenarios::FIREWALL_DROP);
    assert_eq!(kinds(&e), ["syn_unanswered"]);
    // connect() gives up after 2.5 s: SYNs at 0, 1 and 2 s (6.18 retransmits linearly
    // first), settled 2.5 s after the last one.
    assert_eq!(e[0]["evidence"]["syn_count"], 3);
    assert_eq!(e[0]["evidence"]["ended"], "gave_up");
    // The server answered this client host in the other scenarios: reverse_seen is about the
    // host pair (docs/anomalies.md), so the verdict is not a one-way-vantage one.
    assert_eq!(e[0]["reverse_seen"], true);

    let e = at(scenarios::HALF_OPEN);
    assert_eq!(kinds(&e), ["synack_unacked"]);
    // The server retransmits its SYN-ACK for ~63 s (1, 3, 7, ... s): the verdict comes when
    // synscope stops, with every retransmission seen until then.
    let n = e[0]["evidence"]["synack_count"].as_u64().unwrap();
    assert!((3..=6).contains(&n), "SYN-ACKs at 0, 1, 3, 7 s ...: {n}");
    assert_eq!(e[0]["evidence"]["ended"], "capture_end");

    let e = at(scenarios::ACCEPT_QUEUE);
    assert_eq!(
        kinds(&e),
        ["accept_queue_overflow", "accept_queue_overflow"]
    );
    for x in &e {
        assert_eq!(x["evidence"]["signature"], "syn_dropped");
    }

    let e = at(scenarios::LINGER_ZERO);
    assert_eq!(kinds(&e), ["reset"]);
    let ev = &e[0]["evidence"];
    assert_eq!(
        (
            ev["from"].as_str(),
            ev["rst_class"].as_str(),
            ev["phase"].as_str()
        ),
        (Some("client"), Some("active"), Some("established"))
    );
    assert_eq!(ev["seq"], ev["expected_seq"]);

    let e = at(scenarios::FIN_UNANSWERED);
    assert_eq!(kinds(&e), ["fin_unanswered"]);
    assert_eq!(e[0]["evidence"]["from"], "client");
    assert_eq!(e[0]["evidence"]["fin_count"], 6);

    let e = at(scenarios::PROBE_LEAK);
    assert_eq!(
        kinds(&e),
        ["reset", "probe_rst_before_ack", "probe_connection_leak"]
    );
    assert!(
        outcomes[8].client_view.ends_with("1 ESTABLISHED socket(s)"),
        "{outcomes:?}"
    );
    let e = at(scenarios::PROBE_VALID);
    assert_eq!(kinds(&e), ["reset", "probe_rst_before_ack", "reset"]);
    assert!(
        outcomes[9].client_view.ends_with("0 ESTABLISHED socket(s)"),
        "{outcomes:?}"
    );

    assert_eq!(events.len(), 13, "nothing else: {events:#?}");
}

/// A real Prometheus server (Debian's `prometheus`), started on a loopback port with a
/// temporary config and data directory that scrapes `target` every second; killed and its
/// directory removed on drop.
pub struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
    ns: Option<String>,
    port: u16,
}

impl Prometheus {
    /// Starts Prometheus (inside `ns` when given, where `target` must be reachable) on `port`
    /// and waits until it is ready.
    pub fn start(ns: Option<&str>, port: u16, target: &str) -> Prometheus {
        Self::start_with_rules(ns, port, target, None)
    }

    /// [`Prometheus::start`], also evaluating the alert rules in `rules` every second.
    pub fn start_with_rules(
        ns: Option<&str>,
        port: u16,
        target: &str,
        rules: Option<&std::path::Path>,
    ) -> Prometheus {
        Self::start_fleet(ns, port, &[target], rules)
    }

    /// [`Prometheus::start_with_rules`] scraping several synscope instances (a fleet).
    pub fn start_fleet(
        ns: Option<&str>,
        port: u16,
        targets: &[&str],
        rules: Option<&std::path::Path>,
    ) -> Prometheus {
        let target = targets.join("', '");
        let dir = std::env::temp_dir().join(format!("synscope-prom-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n{}scrape_configs:\n  - job_name: synscope\n    static_configs:\n      - targets: ['{target}']\n",
                rules.map_or_else(String::new, |r| format!(
                    "rule_files:\n  - '{}'\n",
                    r.display()
                ))
            ),
        )
        .expect("prometheus config");
        let child = in_ns(ns, "prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).expect("prometheus log"))
            .spawn()
            .expect("start prometheus (apt-get install prometheus)");
        let p = Prometheus {
            child,
            dir,
            ns: ns.map(str::to_owned),
            port,
        };
        for _ in 0..300 {
            if p.get("/-/ready").is_some_and(|b| b.contains("Ready")) {
                return p;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus did not get ready: {}", p.log());
    }

    /// GET a path of Prometheus's HTTP API (through curl, in the namespace).
    fn get(&self, path_and_query: &str) -> Option<String> {
        let out = curl(self.ns.as_deref())
            .args(["-sf", "-G"])
            .arg(format!("http://127.0.0.1:{}{}", self.port, path_and_query))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An instant PromQL query: the result vector as (labels, value) pairs.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        self.query_at(promql, None)
    }

    /// [`Prometheus::query`] evaluated at Unix time `at` (seconds) instead of now.
    pub fn query_at(&self, promql: &str, at: Option<f64>) -> Vec<(serde_json::Value, f64)> {
        let mut cmd = curl(self.ns.as_deref());
        cmd.args(["-sf", "-G", "--data-urlencode"])
            .arg(format!("query={promql}"));
        if let Some(t) = at {
            cmd.args(["--data-urlencode", &format!("time={t:.3}")]);
        }
        let out = cmd
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "query {promql} failed: {}",
            self.log()
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"]
            .as_array()
            .expect("vector")
            .iter()
            .map(|r| {
                (
                    r["metric"].clone(),
                    r["value"][1].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }

    /// The alerts in state `firing`, as (alertname, labels).
    pub fn firing(&self) -> Vec<(String, serde_json::Value)> {
        let body = self.get("/api/v1/alerts").unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| x["state"] == "firing")
                    .map(|x| {
                        (
                            x["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                            x["labels"].clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `promql` returns at least one series (Prometheus has scraped it).
    pub fn wait_for(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        for _ in 0..200 {
            let r = self.query(promql);
            if !r.is_empty() {
                return r;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("no series for {promql}; prometheus log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program`, run inside `ns` when given.
pub fn in_ns(ns: Option<&str>, program: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

fn curl(ns: Option<&str>) -> Command {
    in_ns(ns, "curl")
}

/// `GET http://addr/metrics` (classic text format), inside `ns` when given.
pub fn scrape(ns: Option<&str>, addr: &str) -> Option<String> {
    let out = curl(ns)
        .args(["-sf", &format!("http://{addr}/metrics")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TCP port free on the host's loopback right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `promtool check metrics` on a metrics text; panics with its complaints.
pub fn promtool_check_metrics(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n--- metrics:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that Prometheus holds exactly the anomaly and RST counts the NDJSON `events` imply:
/// `synscope_anomalies_total` by (server, kind) and `synscope_resets_total` by (server, class).
/// Live, the comparison is made `before_end` (Unix seconds, a time before synscope stopped):
/// verdicts that only the end of the run settles (`"ended":"capture_end"`, e.g. a half-open
/// connection whose server still retransmits its SYN-ACK) come after it. `synscope pcap`
/// serves after the end (None).
pub fn assert_prometheus_matches_events(
    prom: &Prometheus,
    events: &[serde_json::Value],
    before_end: Option<f64>,
) {
    let scraped_before_end = before_end.is_some();
    use std::collections::BTreeMap;
    type Counts = BTreeMap<(String, String), f64>;
    let mut anomalies = Counts::new();
    let mut resets = Counts::new();
    for e in events
        .iter()
        .filter(|e| !scraped_before_end || e["evidence"]["ended"] != "capture_end")
    {
        let server = e["server"].as_str().unwrap_or_default().to_owned();
        match e["kind"].as_str().unwrap() {
            "reset" => {
                let class = e["evidence"]["rst_class"].as_str().unwrap().to_owned();
                *resets.entry((server, class)).or_default() += 1.0;
            }
            "syn_flood" | "reset_storm" => {}
            k => {
                // A refusal's RST is folded into its syn_rejected, which names its class.
                if let Some(class) = e["evidence"]["rst_class"].as_str() {
                    *resets
                        .entry((server.clone(), class.to_owned()))
                        .or_default() += 1.0;
                }
                *anomalies.entry((server, k.to_owned())).or_default() += 1.0
            }
        }
    }
    let got = |q: &str, label: &str| -> Counts {
        prom.query_at(q, before_end)
            .into_iter()
            .map(|(m, v)| {
                let s = m["server"].as_str().unwrap().to_owned();
                ((s, m[label].as_str().unwrap().to_owned()), v)
            })
            .collect()
    };
    assert_eq!(
        got("synscope_anomalies_total > 0", "kind"),
        anomalies,
        "anomalies: Prometheus vs events"
    );
    assert_eq!(
        got(
            "sum by (server, class) (synscope_resets_total) > 0",
            "class"
        ),
        resets,
        "resets: Prometheus vs events"
    );
}

/// The TCP packets of a pcap as tshark dissects them, one `src > dst flags seq` string each
/// (absolute sequence numbers), only those of the connection `conn` when given.
pub fn tshark_packets(
    pcap: &std::path::Path,
    conn: Option<(SocketAddr, SocketAddr)>,
) -> Vec<String> {
    let filter = match conn {
        None => "tcp".to_owned(),
        Some((a, b)) => {
            let fam = if a.is_ipv4() { "ip" } else { "ipv6" };
            format!(
                "tcp && {fam}.addr == {} && {fam}.addr == {} && tcp.port == {} && tcp.port == {}",
                a.ip(),
                b.ip(),
                a.port(),
                b.port()
            )
        }
    };
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-o", "tcp.relative_sequence_numbers:FALSE", "-Y", &filter])
        .args(["-T", "fields", "-E", "separator=,"])
        .args(["-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport"])
        .args(["-e", "ip.dst", "-e", "ipv6.dst", "-e", "tcp.dstport"])
        .args(["-e", "tcp.flags", "-e", "tcp.seq"])
        .output()
        .expect("tshark (installed by scripts/setup.sh)");
    assert!(
        out.status.success(),
        "tshark -r {}: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let ep = |v4: &str, v6: &str, port: &str| {
                if v4.is_empty() {
                    format!("[{v6}]:{port}")
                } else {
                    format!("{v4}:{port}")
                }
            };
            format!(
                "{} > {} {} {}",
                ep(f[0], f[1], f[2]),
                ep(f[3], f[4], f[5]),
                f[6],
                f[7]
            )
        })
        .collect()
}

/// Every event of a flagged connection names an evidence pcap that tshark opens and that holds
/// only that connection's packets, the first of them its client's SYN; returns the files'
/// packets by event index.
pub fn assert_evidence_files(events: &[serde_json::Value]) -> Vec<(usize, Vec<String>)> {
    let mut files = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let (Some(c), Some(s)) = (e["client"].as_str(), e["server"].as_str()) else {
            assert!(e["evidence_file"].is_null(), "{e}");
            continue;
        };
        let path = e["evidence_file"]
            .as_str()
            .unwrap_or_else(|| panic!("no evidence_file: {e}"));
        let pkts = tshark_packets(std::path::Path::new(path), None);
        assert_eq!(
            e["evidence_packets"].as_u64(),
            Some(pkts.len() as u64),
            "{e}"
        );
        assert!(!pkts.is_empty(), "{path}");
        for p in &pkts {
            assert!(
                p.starts_with(&format!("{c} > {s} ")) || p.starts_with(&format!("{s} > {c} ")),
                "{path}: {p} is not of {c} <> {s}"
            );
        }
        files.push((i, pkts));
    }
    files
}

/// One refused handshake (SYN, then RST+ACK acking it) inside each tunnel an LB node carries,
/// as Ethernet frames from the lab's client to its server: IP-in-IP (LVS TUN, Katran), IPv6
/// in IPv4, GRE (IP and bridged Ethernet), VXLAN, Geneve, MPLS. Returns the frames and, per
/// tunnel, its name and the inner client port.
pub fn tunnel_frames(lab: &Lab) -> (Vec<Vec<u8>>, Vec<(&'static str, u16)>) {
    use std::net::IpAddr;
    use synscope::wire::{
        TcpFlags,
        emit::{
            GreFields, SegmentBuilder, eth_frame, ethernet, geneve, gre, ip_tcp, ipip, mpls, vxlan,
        },
    };
    let (o_src, o_dst) = (IpAddr::V4(lab.client_v4), IpAddr::V4(lab.server_v4));
    let v6 = |a: &str| a.parse::<std::net::Ipv6Addr>().unwrap();
    let pair = |port: u16, six: bool| -> [SegmentBuilder; 2] {
        let (c, s): (IpAddr, IpAddr) = if six {
            (
                IpAddr::V6(v6("2001:db8:1::1")),
                IpAddr::V6(v6("2001:db8:2::2")),
            )
        } else {
            ([10, 1, 0, 1].into(), [10, 2, 0, 2].into())
        };
        [
            SegmentBuilder::new(c, port, s, 80)
                .flags(TcpFlags::SYN)
                .seq(1000),
            SegmentBuilder::new(s, 80, c, port)
                .flags(TcpFlags(0x14))
                .ack(1001),
        ]
    };
    let kinds: [(&str, u16); 7] = [
        ("ipip", 41001),
        ("ip6_in_ip4", 41002),
        ("gre", 41003),
        ("gre_ethernet", 41004),
        ("vxlan", 41005),
        ("geneve", 41006),
        ("mpls", 41007),
    ];
    let mut frames = Vec::new();
    for (name, port) in kinds {
        for b in pair(port, name == "ip6_in_ip4") {
            let ip = ip_tcp(&b);
            let f = match name {
                "ipip" | "ip6_in_ip4" => eth_frame(0x0800, &ipip(o_src, o_dst, &ip)),
                "gre" => eth_frame(
                    0x0800,
                    &gre(
                        o_src,
                        o_dst,
                        GreFields {
                            key: Some(7),
                            ..Default::default()
                        },
                        0x0800,
                        &ip,
                    ),
                ),
                "gre_ethernet" => eth_frame(
                    0x0800,
                    &gre(
                        o_src,
                        o_dst,
                        GreFields::default(),
                        0x6558,
                        &ethernet(&b, &[]),
                    ),
                ),
                "vxlan" => eth_frame(0x0800, &vxlan(o_src, o_dst, 42, &ethernet(&b, &[]))),
                "geneve" => eth_frame(0x0800, &geneve(o_src, o_dst, 42, &[0; 8], 0x0800, &ip)),
                _ => eth_frame(0x8847, &mpls(&[100, 200], &ip)),
            };
            frames.push(f);
        }
    }
    (frames, kinds.to_vec())
}

/// Asserts that `events` are exactly a refused handshake per tunnel of [`tunnel_frames`], on
/// the inner addresses.
pub fn assert_tunnel_events(events: &[serde_json::Value], kinds: &[(&str, u16)]) {
    for (name, port) in kinds {
        let client = if *name == "ip6_in_ip4" {
            format!("[2001:db8:1::1]:{port}")
        } else {
            format!("10.1.0.1:{port}")
        };
        let got: Vec<&str> = events
            .iter()
            .filter(|e| e["client"] == client.as_str())
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(got, ["syn_rejected"], "{name}: {events:?}");
        let e = events
            .iter()
            .find(|e| e["client"] == client.as_str())
            .unwrap();
        let t = &e["evidence"]["tunnel"];
        let kind = match *name {
            "ip6_in_ip4" => "ipip",
            "gre_ethernet" => "gre",
            n => n,
        };
        if kind == "mpls" {
            assert_eq!(
                t["outer_src"],
                serde_json::Value::Null,
                "no IP around MPLS: {e}"
            );
        } else {
            assert_eq!(
                (t["outer_src"].as_str(), t["outer_dst"].as_str()),
                (Some("192.0.2.1"), Some("192.0.2.2")),
                "{name}: {e}"
            );
        }
    }
    assert_eq!(events.len(), kinds.len(), "{events:?}");
}

/// Connects from the lab's client to a closed port of its server: refused at once.
pub fn refused(lab: &Lab, port: u16) {
    let to = std::net::SocketAddr::new(lab.server_v4.into(), port);
    let r = spawn_in_netns(&lab.client_ns, move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
    })
    .join()
    .expect("join")
    .expect("netns");
    assert!(r.is_err(), "port {port} is closed");
}
