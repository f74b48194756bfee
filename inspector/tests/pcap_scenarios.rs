//! `synscope pcap` on captures of REAL kernel traffic (regenerate them with
//! `cargo run --example scenario_pcaps -- inspector/tests/pcaps`, as root): the exact events
//! each seed scenario must produce, and nothing else.

use std::{path::Path, process::Command};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_synscope");

fn events(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pcaps")
        .join(format!("{name}.pcap"));
    let out = Command::new(BIN)
        .arg("pcap")
        .arg(&path)
        .args(["--json", "-"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect()
}

fn kinds(ev: &[Value]) -> Vec<&str> {
    ev.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

#[test]
fn clean_connection_raises_nothing() {
    assert_eq!(kinds(&events("clean_connection")), Vec::<&str>::new());
}

#[test]
fn closed_port_is_refused() {
    let ev = events("closed_port");
    // One verdict per fact: the refusing RST is the rejection's evidence.
    assert_eq!(kinds(&ev), ["syn_rejected"]);
    assert_eq!(ev[0]["evidence"]["rst_class"], "refused");
    assert_eq!(ev[0]["evidence"]["from"], "server");
    assert_eq!(
        ev[0]["evidence"]["seq"], 0,
        "Linux answers a SYN to a closed port with seq 0"
    );
    assert_eq!(ev[0]["server"], "192.0.2.2:9001");
    assert_eq!(ev[0]["evidence"]["rst_ack"], ev[0]["evidence"]["ack"]);
    assert_eq!(ev[0]["severity"], "warning");
}

#[test]
fn firewall_dropped_syns_are_unanswered_without_reverse_traffic() {
    let ev = events("syn_dropped_by_firewall");
    assert_eq!(kinds(&ev), ["syn_unanswered"]);
    assert_eq!(
        ev[0]["evidence"]["syn_count"], 3,
        "SYNs at 0, 1 and 2 s (Linux 6.18 retransmits SYNs linearly first)"
    );
    assert_eq!(ev[0]["evidence"]["ended"], "capture_end");
    assert_eq!(ev[0]["reverse_seen"], false);
    assert!(ev[0]["hint"].as_str().unwrap().contains("TRACE"));
}

#[test]
fn client_dropping_its_acks_leaves_the_server_half_open() {
    let ev = events("half_open");
    assert_eq!(kinds(&ev), ["synack_unacked"]);
    assert_eq!(
        ev[0]["evidence"]["synack_count"], 3,
        "SYN-ACK and its retransmissions at 1 and 3 s"
    );
    assert_eq!(
        ev[0]["evidence"]["ended"], "capture_end",
        "the server retransmits for 63 s; the capture ends at 3.5 s"
    );
    assert_eq!(ev[0]["server"], "192.0.2.2:9003");
}

#[test]
fn full_accept_queue_drops_later_syns_of_a_live_listener() {
    let ev = events("accept_queue_full");
    assert_eq!(
        kinds(&ev),
        ["accept_queue_overflow", "accept_queue_overflow"]
    );
    for e in &ev {
        assert_eq!(e["evidence"]["signature"], "syn_dropped");
        assert_eq!(e["severity"], "critical");
        let age = e["evidence"]["last_handshake_age_ms"].as_u64().unwrap();
        // SYNs at ~0.2, 1.2, 2.2 s; the 2nd client's handshake was at ~0.1 s: the listener's
        // liveness is measured at the first SYN (v3), not at the verdict.
        assert!(
            (20..400).contains(&age),
            "handshake of the 2nd client ~0.1 s before the first SYN: {age}"
        );
        assert_eq!(e["evidence"]["syn_count"], 3);
        assert_eq!(e["evidence"]["ended"], "gave_up");
    }
}

#[test]
fn linger_zero_close_is_an_active_client_reset() {
    let ev = events("linger_zero_reset");
    assert_eq!(kinds(&ev), ["reset"]);
    let e = &ev[0]["evidence"];
    assert_eq!(
        (
            e["from"].as_str(),
            e["rst_class"].as_str(),
            e["phase"].as_str()
        ),
        (Some("client"), Some("active"), Some("established"))
    );
    assert_eq!(
        e["seq"], e["expected_seq"],
        "the RST carries the next sequence number"
    );
}

#[test]
fn fin_never_answered_is_reported_with_its_retransmissions() {
    let ev = events("fin_unanswered");
    assert_eq!(kinds(&ev), ["fin_unanswered"]);
    assert_eq!(ev[0]["evidence"]["from"], "client");
    assert_eq!(ev[0]["evidence"]["fin_count"], 6);
}

#[test]
fn probe_rst_with_tsval_0_before_the_ack_is_a_connection_leak() {
    // Captured while `ss` on the server showed the leaked ESTABLISHED socket.
    let ev = events("probe_leak");
    assert_eq!(
        kinds(&ev),
        ["reset", "probe_rst_before_ack", "probe_connection_leak"]
    );
    assert_eq!(
        (
            ev[0]["evidence"]["from"].as_str(),
            ev[0]["evidence"]["phase"].as_str()
        ),
        (Some("client"), Some("handshake"))
    );
    let e = &ev[2]["evidence"];
    assert_eq!(e["rst_tsval"], 0);
    assert_eq!(e["syn_tsval"], 7_000_000);
    assert_eq!(e["paws_reject_expected"], true);
    assert_eq!(e["rst_seq_ok"], true);
    let delay = e["late_ack_delay_us"].as_u64().unwrap();
    assert!(
        (20_000..25_000).contains(&delay),
        "ACK sent 20 ms after the RST: {delay}"
    );
    assert_eq!(ev[2]["severity"], "critical");
    assert_eq!(ev[2]["client"], "192.0.2.1:40001");
}

#[test]
fn probe_rst_with_a_valid_tsval_is_reordered_but_does_not_leak() {
    let ev = events("probe_valid");
    assert_eq!(kinds(&ev), ["reset", "probe_rst_before_ack", "reset"]);
    assert_eq!(ev[1]["evidence"]["paws_reject_expected"], false);
    assert_eq!(ev[1]["evidence"]["rst_tsval"], 7_000_001);
    // The server found no socket for the late ACK: a passive RST with seq = its ACK.
    let r = &ev[2]["evidence"];
    assert_eq!(
        (r["from"].as_str(), r["rst_class"].as_str()),
        (Some("server"), Some("passive"))
    );
    assert_eq!(r["seq"], r["expected_seq"]);
}

#[test]
fn an_older_tsval_through_a_nat_address_is_a_paws_collision() {
    // Host A (192.0.2.1:*, server closes first) then host B's SYN through the same address
    // with TSval 1, dropped as a tcp_tw_recycle server would (emulated by an INPUT rule).
    let ev = events("nat_paws_collision");
    assert_eq!(kinds(&ev), ["syn_unanswered", "paws_nat_collision"]);
    let e = &ev[1]["evidence"];
    assert_eq!(ev[1]["client"], "192.0.2.1:40003");
    assert_eq!(e["tsval"], 1);
    assert_eq!(e["answered"], false);
    assert!(
        e["prev_tsval"].as_u64().unwrap() > 1,
        "host A's last TSval: {e}"
    );
    let age = e["prev_age_ms"].as_u64().unwrap();
    assert!(
        (90..200).contains(&age),
        "B's SYN ~100 ms after A's close: {age}"
    );
    // The server did talk to this client host (host A): reverse visibility exists.
    assert_eq!(ev[0]["reverse_seen"], true);
}

#[test]
fn a_truncated_file_names_the_packet_after_reporting_what_was_processed() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pcaps/accept_queue_full.pcap");
    let bytes = std::fs::read(&src).expect("read");
    let cut = std::env::temp_dir().join(format!("synscope-truncated-{}.pcap", std::process::id()));
    std::fs::write(&cut, &bytes[..bytes.len() - 30]).expect("write");
    let out = Command::new(BIN)
        .arg("pcap")
        .arg(&cut)
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&cut);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("packet 17 is truncated or corrupt"), "{err}");
    assert!(err.contains("16 packets before it were processed"), "{err}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary
            .contains("server 192.0.2.2:9004: 8 SYNs (4 connection attempts, 4 retransmissions)"),
        "{summary}"
    );
    // The file ends 2.8 s after the last SYN stream began: too young for a verdict.
    assert!(summary.contains("0 events"), "{summary}");
}

#[test]
fn a_file_that_is_not_a_capture_is_a_clear_error() {
    let out = Command::new(BIN)
        .args(["pcap", "Cargo.toml"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Cargo.toml: not a pcap or pcapng file"),
        "{err}"
    );
}

#[test]
fn a_capture_cut_mid_packet_still_settles_what_the_packets_before_it_decide() {
    // tcpdump killed while writing: the refused connection's SYN and RST are whole, the
    // file ends inside the next record. The refusal (held for the reorder window) is still
    // reported, then the error.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pcaps/closed_port.pcap");
    let bytes = std::fs::read(&src).expect("read");
    let cut = std::env::temp_dir().join(format!("synscope-cut-{}.pcap", std::process::id()));
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).expect("write");
    let out = Command::new(BIN)
        .arg("pcap")
        .arg(&cut)
        .args(["--json", "-"])
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&cut);
    assert_eq!(out.status.code(), Some(1));
    let ev: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect();
    assert_eq!(kinds(&ev), ["syn_rejected"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is truncated or corrupt"));
}

#[test]
fn the_summary_json_reads_back_with_hdrhistogram_and_matches_the_text_summary() {
    use base64::Engine as _;
    use hdrhistogram::{Histogram, serialization::Deserializer};
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pcaps/accept_queue_full.pcap");
    let json = std::env::temp_dir().join(format!("synscope-summary-{}.json", std::process::id()));
    let out = Command::new(BIN)
        .arg("pcap")
        .arg(&src)
        .arg("--summary-json")
        .arg(&json)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&std::fs::read(&json).expect("written")).expect("JSON");
    let _ = std::fs::remove_file(&json);
    assert_eq!(v["mode"], "pcap");
    let ep = &v["endpoints"][0];
    assert_eq!(ep["server"], "192.0.2.2:9004");
    assert_eq!(
        (&ep["syns"], &ep["connection_attempts"], &ep["established"]),
        (&Value::from(8), &Value::from(4), &Value::from(2))
    );
    assert_eq!(ep["anomalies"]["accept_queue_overflow"], 2);
    for measure in ["syn_to_synack", "synack_to_ack", "connect_total"] {
        let m = &ep["latency"][measure];
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(m["hdr"].as_str().unwrap())
            .expect("base64");
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .expect("an HdrHistogram V2 (deflate) histogram");
        assert_eq!(h.len(), 2, "{measure}: both handshakes");
        assert_eq!(Value::from(h.max()), m["max"], "{measure}");
        assert_eq!(Value::from(h.value_at_quantile(0.5)), m["p50"], "{measure}");
    }
    // The text summary shows the same numbers.
    let text = String::from_utf8_lossy(&out.stdout);
    let p50 = ep["latency"]["connect_total"]["p50"].as_u64().unwrap();
    assert!(
        text.contains(&format!("connect_total  µs  p50 {p50} ")),
        "{text}"
    );
}

#[test]
fn the_unanswered_syn_hint_names_tools_that_exist_here() {
    let ev = events("syn_dropped_by_firewall");
    let hint = ev[0]["hint"].as_str().unwrap().to_owned();
    // Debian 12's iptables is iptables-nft: TRACE output goes to xtables-monitor, not dmesg.
    assert!(hint.contains("xtables-monitor --trace") && hint.contains("nft monitor trace"));
    let ok = |cmd: &[&str], want: &str| {
        let out = Command::new(cmd[0]).args(&cmd[1..]).output().expect(cmd[0]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(want), "{cmd:?}: {text}");
    };
    ok(&["xtables-monitor", "--help"], "--trace");
    ok(&["iptables", "--version"], "nf_tables");
    ok(&["nft", "--version"], "nftables");
    // Counters this kernel has (TcpExtPAWSPassive went with tcp_tw_recycle in 4.12).
    for counter in [
        "TcpExtListenDrops",
        "TcpExtListenOverflows",
        "TcpExtPAWSTimewait",
    ] {
        assert!(hint.contains(counter));
        ok(&["nstat", "-az", counter], counter);
    }
}

#[test]
fn long_reads_show_progress_on_a_terminal_and_nothing_otherwise() {
    // 18 MB of real connections (the clean capture's records 20,000 times over).
    let src = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pcaps/clean_connection.pcap"),
    )
    .unwrap();
    let mut big = src[..24].to_vec();
    for _ in 0..20_000 {
        big.extend_from_slice(&src[24..]);
    }
    let path = std::env::temp_dir().join(format!("synscope-progress-{}.pcap", std::process::id()));
    std::fs::write(&path, &big).unwrap();
    let piped = Command::new(BIN).arg("pcap").arg(&path).output().unwrap();
    assert!(!String::from_utf8_lossy(&piped.stderr).contains("ETA"));
    // `script` gives synscope a terminal.
    let tty = Command::new("script")
        .args([
            "-qec",
            &format!("{BIN} pcap {} > /dev/null", path.display()),
            "/dev/null",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(shown.contains("MiB") && shown.contains("ETA"), "{shown}");
}
