//! Cross-check against an independent dissector: on every scenario pcap, tshark's per-stream
//! view of which handshake steps happened (`tcp.completeness`, two-pass) must agree with
//! synscope's per-connection verdicts, in both directions.

use std::{collections::BTreeMap, path::Path, process::Command};

const BIN: &str = env!("CARGO_BIN_EXE_synscope");

// tcp.completeness bits (Wireshark 4.0).
const SYN: u32 = 1;
const SYNACK: u32 = 2;
const ACK: u32 = 4;
const FIN: u32 = 16;
const RST: u32 = 32;

/// Client endpoint (`ip:port` of the first SYN's sender) → completeness of its stream.
fn tshark_streams(pcap: &Path) -> BTreeMap<String, u32> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args([
            "-2",
            "-Y",
            "tcp.flags.syn == 1 && tcp.flags.ack == 0",
            "-T",
            "fields",
        ])
        .args([
            "-e",
            "ip.src",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.completeness",
        ])
        .output()
        .expect("tshark (installed by scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some((
                format!("{}:{}", f.first()?, f.get(1)?),
                f.get(2)?.parse().ok()?,
            ))
        })
        .collect()
}

/// Client endpoint → synscope's event kinds for it.
fn synscope_verdicts(pcap: &Path) -> BTreeMap<String, Vec<String>> {
    let out = Command::new(BIN)
        .arg("pcap")
        .arg(pcap)
        .args(["--json", "-"])
        .output()
        .expect("run synscope");
    assert_eq!(out.status.code(), Some(0));
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("NDJSON");
        m.entry(v["client"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["kind"].as_str().unwrap().to_owned());
    }
    m
}

/// The handshake verdict tshark's completeness implies, if any.
fn implied(c: u32) -> Option<&'static [&'static str]> {
    match (c & SYNACK != 0, c & ACK != 0, c & RST != 0) {
        (false, _, false) => Some(&["syn_unanswered", "accept_queue_overflow"]),
        (false, _, true) => Some(&["syn_rejected"]),
        (true, false, false) => Some(&["synack_unacked"]),
        _ => None,
    }
}

const HANDSHAKE_VERDICTS: [&str; 3] = ["syn_unanswered", "syn_rejected", "synack_unacked"];

#[test]
fn tshark_completeness_agrees_with_synscope_on_every_scenario_pcap() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pcaps");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("pcaps")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    files.sort();
    assert!(files.len() >= 9, "{files:?}");
    let mut checked = 0;
    for f in &files {
        let streams = tshark_streams(f);
        let verdicts = synscope_verdicts(f);
        assert!(!streams.is_empty(), "{}: no streams", f.display());
        for (client, c) in &streams {
            assert_ne!(c & SYN, 0, "{client}: tshark saw its SYN");
            let got = verdicts.get(client).cloned().unwrap_or_default();
            let name = f.file_name().unwrap().to_string_lossy();
            match implied(*c) {
                Some(allowed) => assert!(
                    got.iter().any(|k| allowed.contains(&k.as_str())),
                    "{name} {client}: completeness {c} implies one of {allowed:?}, synscope said {got:?}"
                ),
                None => assert!(
                    !got.iter().any(|k| HANDSHAKE_VERDICTS.contains(&k.as_str())),
                    "{name} {client}: handshake complete for tshark ({c}), synscope said {got:?}"
                ),
            }
            // Probe verdicts need the whole SYN, SYN-ACK, ACK, RST story.
            if got.iter().any(|k| k.starts_with("probe_")) {
                assert_eq!(
                    c & (SYN | SYNACK | ACK | RST),
                    SYN | SYNACK | ACK | RST,
                    "{name} {client}"
                );
            }
            if got.iter().any(|k| k == "fin_unanswered") {
                assert_ne!(c & FIN, 0, "{name} {client}");
            }
            checked += 1;
        }
        // Every connection synscope judged is one tshark knows.
        for client in verdicts.keys() {
            assert!(
                streams.contains_key(client),
                "{}: {client} unknown to tshark",
                f.display()
            );
        }
    }
    assert!(checked >= 12, "streams checked: {checked}");
}
