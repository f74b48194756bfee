//! `--evidence DIR`: every flagged connection of every scenario pcap gets a pcap that tshark
//! opens and that holds exactly that connection's packets of the source capture.

mod support;

use std::{net::SocketAddr, path::Path, process::Command};

use support::{BIN, assert_evidence_files, tshark_packets};

const PCAPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pcaps");

#[test]
fn every_flagged_connection_of_every_scenario_pcap_gets_exactly_its_packets() {
    let dir = std::env::temp_dir().join(format!("synscope-evidence-{}", std::process::id()));
    let mut checked = 0;
    for entry in std::fs::read_dir(PCAPS).unwrap() {
        let pcap = entry.unwrap().path();
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(BIN)
            .arg("pcap")
            .arg(&pcap)
            .args(["--json", "-", "--evidence"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for (i, pkts) in assert_evidence_files(&events) {
            let e = &events[i];
            let c: SocketAddr = e["client"].as_str().unwrap().parse().unwrap();
            let s: SocketAddr = e["server"].as_str().unwrap().parse().unwrap();
            // Exactly the source's packets of this connection up to the event's (evidence is
            // written when the verdict is settled: later packets are not in it).
            let mut want = tshark_packets(&pcap, Some((c, s)));
            want.truncate(pkts.len());
            assert_eq!(pkts, want, "{}: {e}", pcap.display());
            assert!(e["evidence_partial"].is_null(), "{e}");
            checked += 1;
        }
        let files = std::fs::read_dir(&dir).map_or(0, |d| d.count());
        assert_eq!(
            files,
            events
                .iter()
                .filter(|e| !e["evidence_file"].is_null())
                .count(),
            "{}",
            pcap.display()
        );
    }
    // The per-connection events of the ten scenario pcaps (pcap_scenarios.rs asserts each;
    // the closed port's refusing RST is folded into its syn_rejected: one pcap per fact).
    assert_eq!(checked, 15);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_probe_leak_evidence_is_the_four_packets_of_seed_002() {
    let dir = std::env::temp_dir().join(format!("synscope-evidence-leak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(BIN)
        .args([
            "pcap",
            &format!("{PCAPS}/probe_leak.pcap"),
            "--json",
            "-",
            "--evidence",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let leak: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["kind"] == "probe_connection_leak")
        .unwrap();
    let pkts = tshark_packets(Path::new(leak["evidence_file"].as_str().unwrap()), None);
    let flags: Vec<&str> = pkts.iter().map(|p| p.split(' ').nth(3).unwrap()).collect();
    // SYN, SYN-ACK, the RST (TSval 0) and the late ACK the server drops.
    assert_eq!(flags, ["0x0002", "0x0012", "0x0014", "0x0010"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unusable_evidence_directory_is_a_clear_error() {
    let out = Command::new(BIN)
        .args([
            "pcap",
            &format!("{PCAPS}/probe_leak.pcap"),
            "--evidence",
            "/proc/synscope",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot use evidence directory /proc/synscope"),
        "{err}"
    );
}
