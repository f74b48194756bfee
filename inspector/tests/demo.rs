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
