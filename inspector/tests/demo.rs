//! `synscope demo` end to end: it builds its lab, captures each scenario's packets from real
//! kernel traffic, reports them, and leaves no namespace behind.

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
    let expected = [
        (
            "[1] echo connection over IPv4: connected, echoed 14 bytes, closed",
            2,
        ),
        (
            "[2] echo connection over IPv6: connected, echoed 14 bytes, closed",
            2,
        ),
        ("[3] closed port: connect failed: Connection refused", 1),
        (
            "[4] SYN dropped by an iptables INPUT rule: connect failed: connection timed out",
            2,
        ),
        (
            "[5] SO_LINGER 0 close: connected, then closed with SO_LINGER 0",
            2,
        ),
    ];
    let blocks: Vec<&str> = stdout.split("\n\n").collect();
    for (title, n) in expected {
        let block = blocks
            .iter()
            .find(|b| b.trim_start().starts_with(title))
            .unwrap_or_else(|| panic!("no block for {title:?} in:\n{stdout}"));
        assert!(
            block.contains(&format!("captured {n} control packet(s)")),
            "{title}: expected {n} packets:\n{block}"
        );
    }
    let linger = blocks.iter().find(|b| b.contains("[5] SO_LINGER")).unwrap();
    assert!(linger.contains("RST|ACK"), "{linger}");
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
