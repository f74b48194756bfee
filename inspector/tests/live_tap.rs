//! Privileged end-to-end tests of tap mode: the server's veth traffic (both directions) is
//! mirrored with `tc ... action mirred egress mirror` into a 2-queue capture veth pair, and
//! synscope reads it through AF_XDP sockets on the capture side.

mod support;

use support::*;
use synscope::lab::Lab;

/// Creates `cap0`/`cap1` (2 RX/TX queues each) in the server namespace and mirrors the server
/// veth's ingress and egress into `cap0`; frames arrive on `cap1`. Returns `cap1`.
fn mirror_port(lab: &Lab) -> &'static str {
    let ns = &lab.server_ns;
    for cmd in [
        vec![
            "ip",
            "link",
            "add",
            "cap0",
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "type",
            "veth",
            "peer",
            "name",
            "cap1",
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
        ],
        vec!["ip", "link", "set", "cap0", "up"],
        vec!["ip", "link", "set", "cap1", "up"],
        vec!["tc", "qdisc", "add", "dev", &lab.server_if, "clsact"],
    ] {
        lab.exec(ns, &cmd).expect("mirror setup");
    }
    // cls_u32 matching everything: this kernel has no matchall/flower (no modules).
    for dir in ["ingress", "egress"] {
        lab.exec(
            ns,
            &[
                "tc",
                "filter",
                "add",
                "dev",
                &lab.server_if,
                dir,
                "u32",
                "match",
                "u32",
                "0",
                "0",
                "action",
                "mirred",
                "egress",
                "mirror",
                "dev",
                "cap0",
            ],
        )
        .expect("mirred filter");
    }
    "cap1"
}

#[test]
fn every_seed_scenario_is_detected_through_af_xdp_on_a_mirror_port() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let cap = mirror_port(&lab);
    let dir = std::env::temp_dir().join(format!("synscope-tap-evidence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let live = Live::events(
        &lab.server_ns,
        cap,
        &["--mode", "tap", "--evidence", dir.to_str().unwrap()],
    );
    assert!(live.stderr.contains("queues=2"), "{}", live.stderr);
    let ((), events, stderr) = detect_seed_scenarios_then(&lab, live, 9600, |_| ());
    // Evidence from full frames: every flagged connection's pcap holds only its packets.
    assert!(!assert_evidence_files(&events).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
    // Every selected frame reached a socket and was read; the two workers handed each other
    // the flows whose frames arrived on the other's queue.
    let selected = counter(&stderr, "selected");
    assert!(selected > 50, "{stderr}");
    assert_eq!(counter(&stderr, "tap_redirected"), selected);
    assert_eq!(counter(&stderr, "tap_no_socket"), 0);
    assert_eq!(counter(&stderr, "tap_meta_failed"), 0);
    assert_eq!(counter(&stderr, "records_read"), selected);
    assert!(!stderr.contains("decode_error"), "{stderr}");
    let handed: u64 = stderr
        .lines()
        .filter_map(|l| l.split("handed over ").nth(1))
        .filter_map(|r| r.split(',').next()?.parse::<u64>().ok())
        .sum();
    assert!(handed > 0, "cross-worker hand-off exercised: {stderr}");
    assert!(stderr.contains("rx_dropped 0, rx_ring_full 0"), "{stderr}");
}

#[test]
fn tunnelled_handshakes_on_a_mirror_port_are_followed_to_the_inner_tcp() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let cap = mirror_port(&lab);
    let live = Live::events(&lab.server_ns, cap, &["--mode", "tap"]);
    let (frames, kinds) = tunnel_frames(&lab);
    lab.inject(&lab.client_ns, &lab.client_if, &frames)
        .expect("inject");
    std::thread::sleep(std::time::Duration::from_millis(800));
    let (events, code, stderr) = live.stop();
    assert_eq!(code, 0, "{stderr}");
    assert_tunnel_events(&events, &kinds);
}

#[test]
fn tap_mode_refuses_an_interface_with_addresses() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.server_ns,
            BIN,
            "live",
            "--mode",
            "tap",
            "--iface",
        ])
        .arg(&lab.server_if)
        .args(["--duration", "1"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("looks like a live host interface"), "{err}");
    assert!(!xdp_attached(&lab, &lab.server_ns, &lab.server_if));
}
