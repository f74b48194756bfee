//! `synscope demo` end to end: it builds its lab, drives each seed scenario through real
//! kernel TCP, reports what it detected live, and leaves no namespace behind.

mod support;

use std::process::Command;

#[test]
fn demo_reports_every_scenario_and_tears_the_lab_down() {
    if !support::require_root() {
        return;
    }
    let out = Command::new(support::BIN)
        .arg("demo")
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Each scenario's block lists what was found, by kind, in this order.
    let expected: [(&str, &[&str]); 10] = [
        ("[1] echo connection over IPv4", &[]),
        ("[2] echo connection over IPv6", &[]),
        ("[3] SYN to a closed port", &["syn_rejected"]),
        (
            "[4] SYNs dropped by an iptables INPUT rule",
            &["syn_unanswered"],
        ),
        ("[5] client drops its own ACKs", &["synack_unacked"]),
        (
            "[6] listener with backlog 1",
            &["accept_queue_overflow", "accept_queue_overflow"],
        ),
        (
            "[7] client sends a request, then closes with SO_LINGER 0",
            &["reset"],
        ),
        (
            "[8] client FIN while the server's replies are dropped",
            &["fin_unanswered"],
        ),
        (
            "[9] health probe: RST with TSval 0",
            &["reset", "probe_rst_before_ack", "probe_connection_leak"],
        ),
        (
            "[10] health probe: RST with a valid TSval",
            &["reset", "probe_rst_before_ack", "reset"],
        ),
    ];
    let blocks: Vec<&str> = stdout.split("\n\n").collect();
    for (title, kinds) in expected {
        let block = blocks
            .iter()
            .find(|b| b.trim_start().starts_with(title))
            .unwrap_or_else(|| panic!("no block for {title:?} in:\n{stdout}"));
        let found: Vec<&str> = block
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("found:"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(found, kinds, "{title}:\n{block}");
        if kinds.is_empty() {
            assert!(block.contains("found:    nothing"), "{block}");
        }
    }
    assert!(stdout.contains("lab torn down"), "{stdout}");
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let list = String::from_utf8_lossy(&netns.stdout);
    let lab_line = stdout.lines().next().unwrap_or_default();
    let lab_ns = lab_line.split_whitespace().nth(4).unwrap_or_default();
    assert!(
        lab_ns.starts_with("synscope-"),
        "first line names the lab: {lab_line}"
    );
    assert!(
        !list.contains(lab_ns),
        "lab namespace {lab_ns} left behind:\n{list}"
    );
}

/// Inline mode on the host itself: the seed scenarios' events carry what the server's kernel
/// said. The closed port's refusal is the kernel's NO_SOCKET reset; the leaking probe's RST was
/// dropped by PAWS on the server (TCP_RFC7323_PAWS, the RST|ACK); the late ACK of the probe
/// whose RST was accepted is reset by the listener (TCP_FLAGS); the client's kernel, in another
/// namespace, is not heard; the backlog overflows are confirmed by the host's ListenOverflows
/// counter, which rose by exactly the SYNs the events counted.
#[test]
fn demo_events_carry_the_kernels_reasons() {
    if !support::require_root() {
        return;
    }
    let json = std::env::temp_dir().join(format!(
        "synscope-demo-kernel-{}.ndjson",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&json);
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = Remove(json.clone());
    let out = Command::new(support::BIN)
        .arg("demo")
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |kind: &str, port: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["kind"] == kind && e["server"].as_str().unwrap().ends_with(port))
            .collect()
    };
    let said = |e: &serde_json::Value| -> Vec<String> {
        e["evidence"]["kernel"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|k| {
                        format!(
                            "{} {} by {}{}",
                            k["said"].as_str().unwrap(),
                            k["reason"].as_str().unwrap(),
                            k["by"].as_str().unwrap(),
                            k["flags"]
                                .as_str()
                                .map(|f| format!(" {f}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // [3] a closed port: the server's kernel sent the RST for want of a socket, and dropped
    // the SYN for the same reason.
    let refused = of("syn_rejected", ":8082");
    assert_eq!(refused.len(), 1, "{stdout}");
    assert_eq!(
        said(refused[0]),
        [
            "send_reset NO_SOCKET by server",
            "drop NO_SOCKET by server SYN"
        ]
    );
    assert_eq!(refused[0]["evidence"]["kernel_reason"], "NO_SOCKET");
    // [9] the leaking probe: its RST reached the server, whose kernel dropped it by PAWS.
    let leak = of("probe_connection_leak", ":8088");
    assert_eq!(leak.len(), 1, "{stdout}");
    assert!(
        said(leak[0]).contains(&"drop TCP_RFC7323_PAWS by server RST|ACK".to_owned()),
        "{:?}",
        said(leak[0])
    );
    // [10] the probe whose RST was accepted: the late ACK reached a listener that no longer
    // held its request, and the server's kernel answered it with a reset (TCP_FLAGS: an ACK
    // in LISTEN).
    let passive = of("reset", ":8089");
    let server_reset: Vec<_> = passive
        .iter()
        .filter(|e| e["evidence"]["from"] == "server")
        .collect();
    assert_eq!(server_reset.len(), 1, "{stdout}");
    assert_eq!(server_reset[0]["evidence"]["kernel_reason"], "TCP_FLAGS");
    // Only the server's kernel is heard: the client is another network namespace (another
    // host), whose SO_LINGER 0 reset ([7], TCP_STATE) and SYN-ACK drops ([5]) the tracepoints
    // also see, and leave out.
    for e in &events {
        assert!(!said(e).iter().any(|s| s.contains(" by client")), "{e}");
    }
    assert!(!stdout.contains("TCP_STATE"), "{stdout}");
    assert!(stdout.contains(", 0 for flows not tracked)"), "{stdout}");
    // [6] the backlog: every SYN the overflow events counted is one the host's listen queue
    // refused (ListenOverflows), as of the last event.
    let overflow = of("accept_queue_overflow", ":8085");
    assert_eq!(overflow.len(), 2, "{stdout}");
    let syns: u64 = overflow
        .iter()
        .map(|e| e["evidence"]["syn_count"].as_u64().unwrap())
        .sum();
    let last = &overflow[1]["evidence"]["host_counters_since_start"];
    assert_eq!(last["ListenOverflows"].as_u64(), Some(syns), "{last}");
    assert!(stdout.contains("kernel said: "), "{stdout}");
}
