//! Privileged end-to-end test of probe-leak hunting on a real server (inline mode): two
//! probers against a real listener, one well-behaved (ACK, then RST), one whose RST overtakes
//! its ACK with TSval 0 (seed 002). Every leak goes to the right prober, the gauge equals what
//! `ss` shows, `--reap-leaks` closes exactly the leaked sockets and leaves a normal
//! connection to the same port alone.

mod support;

use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, atomic::AtomicBool},
    thread,
    time::{Duration, Instant},
};

use support::*;
use synscope::lab::{
    Lab,
    probe::{self, RstStamp},
    scenarios,
};

fn established(lab: &Lab, port: u16) -> Vec<(String, String)> {
    probe::established(lab, port).expect("ss")
}

/// A listener on `port` that never accepts, and the client's rule that keeps its kernel from
/// resetting the raw probes' SYN-ACKs: what the probes need. Stop it with the flag.
fn probed_listener(lab: &Lab, port: u16) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let l = scenarios::listener(
        lab,
        "0.0.0.0".parse().unwrap(),
        port,
        128,
        false,
        stop.clone(),
    )
    .expect("listener");
    probe::drop_client_kernel_resets(lab, port).expect("rule");
    (stop, l)
}

/// The value of the series `name{labels}` in a scrape (None when absent).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn probe_leaks_are_attributed_confirmed_against_ss_and_reaped() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let port = 9410;
    let bad = Ipv4Addr::new(192, 0, 2, 3);
    lab.exec(
        &lab.client_ns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{bad}/24"),
            "dev",
            &lab.client_if,
        ],
    )
    .expect("second client address");
    let (stop, _l) = probed_listener(&lab, port);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let live = Live::events(
        &lab.server_ns,
        &lab.server_if,
        &[
            "--reap-leaks",
            "3s",
            "--probe-source",
            &format!("{bad}/32"),
            "--metrics",
            &metrics_addr,
        ],
    );
    // The well-behaved prober, recognised by its count; the leaking one, configured.
    for p in 0..3 {
        probe::run_from(&lab, lab.client_v4, 41_001 + p, port, RstStamp::AfterAck)
            .expect("good probe");
    }
    let mut leaked = Vec::new();
    for p in 0..2 {
        let r = probe::run_from(&lab, bad, 42_001 + p, port, RstStamp::Zero).expect("bad probe");
        assert!(!r.server_reset);
        leaked.push(r.client.to_string());
    }
    // A normal connection to the same port, with data, kept open.
    let mut normal = synscope::lab::in_netns(&lab.client_ns, || {
        std::net::TcpStream::connect((lab.server_v4, port)).expect("connect")
    })
    .unwrap();
    normal.write_all(b"hello").unwrap();
    let normal_addr = normal.local_addr().unwrap().to_string();
    let mut before = established(&lab, port);
    let peers: Vec<String> = before.iter().map(|(_, p)| p.clone()).collect();
    let mut want = leaked.clone();
    want.push(normal_addr.clone());
    want.sort();
    let mut sorted = peers.clone();
    sorted.sort();
    assert_eq!(sorted, want, "ss: the two leaks and the normal connection");
    // The leaks are confirmed (leak_confirm after the late ACK) and the gauge shows what ss
    // shows, per prober.
    let server = format!("{}:{port}", lab.server_v4);
    let gauge = |p: &str| format!("synscope_leaked_sockets{{server=\"{server}\",prober=\"{p}\"}}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut m = String::new();
    while Instant::now() < deadline {
        m = scrape(Some(&lab.server_ns), &metrics_addr).unwrap_or_default();
        if sample(&m, &gauge(&bad.to_string())) == Some(2.0) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(sample(&m, &gauge(&bad.to_string())), Some(2.0), "{m}");
    assert_eq!(sample(&m, &gauge(&lab.client_v4.to_string())), None, "{m}");
    // Reaped: 3 s after confirmation, at the next 5 s re-check.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && established(&lab, port).len() > 1 {
        thread::sleep(Duration::from_millis(250));
    }
    before.retain(|(_, p)| *p == normal_addr);
    assert_eq!(
        established(&lab, port),
        before,
        "only the normal connection is left"
    );
    // ... and it still works.
    normal
        .write_all(b" again")
        .expect("the normal connection is untouched");
    thread::sleep(Duration::from_millis(1200));
    let m = scrape(Some(&lab.server_ns), &metrics_addr).unwrap_or_default();
    let probes = |fam: &str, p: &str| {
        sample(
            &m,
            &format!("synscope_{fam}_total{{server=\"{server}\",prober=\"{p}\"}}"),
        )
    };
    let good = lab.client_v4.to_string();
    let bads = bad.to_string();
    assert_eq!(probes("probes", &good), Some(3.0), "{m}");
    assert_eq!(probes("probe_rst_before_ack", &good), Some(0.0), "{m}");
    assert_eq!(probes("probe_leaks", &good), Some(0.0), "{m}");
    assert_eq!(probes("probes", &bads), Some(2.0), "{m}");
    assert_eq!(probes("probe_rst_before_ack", &bads), Some(2.0), "{m}");
    assert_eq!(probes("probe_leaks", &bads), Some(2.0), "{m}");
    assert_eq!(probes("leaks_reaped", &bads), Some(2.0), "{m}");
    assert_eq!(
        sample(&m, &gauge(&bads)),
        None,
        "no leak open any more: {m}"
    );
    let (events, code, stderr) = live.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(code, 0, "{stderr}");
    let leaks: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "probe_connection_leak")
        .collect();
    let mut clients: Vec<String> = leaks
        .iter()
        .map(|e| e["client"].as_str().unwrap().to_owned())
        .collect();
    clients.sort();
    leaked.sort();
    assert_eq!(clients, leaked, "{events:#?}");
    // On the real server, the reordering arrived from the network.
    let reordered: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "probe_rst_before_ack")
        .collect();
    assert_eq!(reordered.len(), 2, "{events:#?}");
    for e in &reordered {
        assert_eq!(e["evidence"]["vantage"], "server", "{e}");
    }
    for e in &leaks {
        let ev = &e["evidence"];
        assert_eq!(ev["prober"], bads.as_str());
        assert_eq!(ev["socket_confirmed"], true, "{e}");
        assert_eq!(ev["socket"]["state"], "ESTAB", "{e}");
        assert_eq!(ev["socket"]["bytes_received"], 0, "{e}");
    }
    assert!(
        stderr.contains(
            "probe leaks in the socket table: 2 confirmed (0 not found), 0 still open at exit, 2 reaped"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{good} -> {server}: 3 probes, 0 RST before ACK, 0 leaks (0.0%)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{bads} -> {server}: 2 probes, 2 RST before ACK, 2 leaks (100.0%), --probe-source"
        )),
        "{stderr}"
    );
    let _: SocketAddr = normal_addr.parse().unwrap();
}

/// The director's side: synscope inline on the prober's own interface sees its probes leave.
/// The one whose RST leaves before its ACK is reported at the source (`vantage: prober`, a
/// hint about fixing the probe client); the well-behaved one is not.
#[test]
fn the_prober_itself_sees_its_rst_leave_before_the_ack() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let port = 9411;
    let (stop, _l) = probed_listener(&lab, port);
    let live = Live::events(&lab.client_ns, &lab.client_if, &[]);
    let good =
        probe::run_from(&lab, lab.client_v4, 41_101, port, RstStamp::AfterAck).expect("good probe");
    let bad =
        probe::run_from(&lab, lab.client_v4, 41_102, port, RstStamp::Zero).expect("bad probe");
    thread::sleep(Duration::from_millis(1300));
    let (events, code, stderr) = live.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(code, 0, "{stderr}");
    let of = |c: SocketAddr, kind: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["client"] == c.to_string() && e["kind"] == kind)
            .collect()
    };
    assert!(
        of(good.client, "probe_rst_before_ack").is_empty(),
        "{events:#?}"
    );
    let r = of(bad.client, "probe_rst_before_ack");
    assert_eq!(r.len(), 1, "{events:#?}");
    assert_eq!(r[0]["evidence"]["vantage"], "prober");
    assert_eq!(r[0]["evidence"]["prober"], lab.client_v4.to_string());
    assert!(
        r[0]["hint"]
            .as_str()
            .unwrap()
            .starts_with("this host is the prober"),
        "{}",
        r[0]
    );
}
