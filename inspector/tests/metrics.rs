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
