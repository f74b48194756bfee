//! Privileged end-to-end tests of inline mode: real kernels in network namespaces, the real
//! `synscope` binary attached to the server's veth.

mod support;

use std::{net::SocketAddr, process::Command, thread, time::Duration};

use support::*;
use synscope::{
    lab::{Lab, scenarios},
    wire::{
        TcpFlags,
        emit::{SegmentBuilder, TPID_8021AD, TPID_8021Q, ethernet},
    },
};

#[test]
fn records_exact_control_packets_of_real_connections_in_both_directions() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    // Control packets only: the follow-ups are timing-dependent (delayed ACKs).
    let live = Live::start(&lab.server_ns, &lab.server_if, &["--follow", "0"]);
    // A veth is a virtual device: `auto` attaches a TC ingress program there (XDP on veth
    // copies packets; see bench/RESULTS.md).
    assert!(live.stderr.contains("mode=\"tc\""), "{}", live.stderr);
    let server = echo_server(&lab, 9000, 2);
    let v4: SocketAddr = (lab.server_v4, 9000).into();
    let v6: SocketAddr = (lab.server_v6, 9000).into();
    let (c4, back4) = echo_once(&lab, v4, b"0123456789");
    let (c6, back6) = echo_once(&lab, v6, b"abc");
    server.join().expect("echo server");
    // Every connection made while attached succeeded and carried its data intact.
    assert_eq!(back4, b"0123456789");
    assert_eq!(back6, b"abc");
    let refused = synscope::lab::in_netns(&lab.client_ns, || {
        std::net::TcpStream::connect_timeout(&(lab.server_v4, 9001).into(), Duration::from_secs(3))
            .map(|_| ())
            .map_err(|e| e.kind())
    })
    .expect("netns");
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));
    thread::sleep(Duration::from_millis(200));
    let (lines, code, stderr) = live.stop();
    assert_eq!(code, 0, "stderr:\n{stderr}");

    for (client, data_len) in [(c4, 10u64), (c6, 3)] {
        let from: Vec<_> = lines
            .iter()
            .filter(|l| l["src"] == client.to_string())
            .collect();
        let flags: Vec<&str> = from.iter().map(|l| l["flags"].as_str().unwrap()).collect();
        assert_eq!(flags, ["SYN", "FIN|ACK"], "records of {client}: {from:?}");
        for r in &from {
            assert_eq!(r["direction"], "ingress");
            assert_eq!(r["reason"], "control");
            assert_eq!(r["dst"].as_str().unwrap().rsplit(':').next(), Some("9000"));
        }
        let isn = from[0]["seq"].as_u64().unwrap();
        assert_eq!(
            from[0]["ack"],
            serde_json::Value::Null,
            "a SYN carries no ACK"
        );
        assert_eq!(from[0]["payload_len"], 0);
        assert!(
            from[0]["tsval"].as_u64().is_some(),
            "Linux SYNs carry timestamps"
        );
        // The FIN follows the data: seq = ISN + 1 (SYN) + bytes sent (RFC 9293 §3.4).
        assert_eq!(
            from[1]["seq"].as_u64().unwrap(),
            (isn + 1 + data_len) % (1 << 32)
        );
        // The server's side only shows up on egress: its SYN-ACK acks ISN+1, then its FIN.
        let to: Vec<_> = lines
            .iter()
            .filter(|l| l["dst"] == client.to_string())
            .collect();
        assert_eq!(to.len(), 2, "records to {client}: {to:?}");
        assert_eq!(to[0]["flags"], "SYN|ACK");
        assert_eq!(to[0]["ack"].as_u64().unwrap(), (isn + 1) % (1 << 32));
        assert!(to[1]["flags"].as_str().unwrap().contains("FIN"), "{to:?}");
        assert!(to.iter().all(|r| r["direction"] == "egress"));
    }
    let closed: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| {
            l["dst"] == format!("{}:9001", lab.server_v4)
                || l["src"] == format!("{}:9001", lab.server_v4)
        })
        .map(|l| {
            (
                l["direction"].as_str().unwrap(),
                l["flags"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        closed,
        [("ingress", "SYN"), ("egress", "RST|ACK")],
        "one SYN to the closed port, answered by RST"
    );
    assert_eq!(lines.len(), 10, "nothing else was recorded: {lines:#?}");
    assert_eq!(counter(&stderr, "selected"), 10);
    assert_eq!(counter(&stderr, "records_read"), 10);
    assert_eq!(counter(&stderr, "followed"), 0);
    assert_eq!(counter(&stderr, "ring_full"), 0);
    assert!(
        !xdp_attached(&lab, &lab.server_ns, &lab.server_if),
        "detached on exit"
    );
}

#[test]
fn the_follow_window_records_the_packets_that_complete_a_handshake() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let live = Live::start(&lab.server_ns, &lab.server_if, &["--follow", "1"]);
    let server = echo_server(&lab, 9000, 1);
    let (client, _) = echo_once(&lab, (lab.server_v4, 9000).into(), b"x");
    server.join().expect("echo server");
    thread::sleep(Duration::from_millis(200));
    let (lines, code, stderr) = live.stop();
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let followed: Vec<_> = lines.iter().filter(|l| l["reason"] == "follow").collect();
    // Budget 1, renewed by the SYN-ACK: exactly the client's completing ACK.
    assert_eq!(followed.len(), 1, "{followed:#?}");
    assert_eq!(followed[0]["src"], client.to_string());
    assert_eq!(followed[0]["flags"], "ACK");
    assert_eq!(followed[0]["payload_len"], 0);
    assert_eq!(counter(&stderr, "followed"), 1);
}

#[test]
fn every_seed_scenario_is_detected_live_with_its_evidence() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let live = Live::events(&lab.server_ns, &lab.server_if, &["--workers", "2"]);
    let stderr = detect_seed_scenarios(&lab, live, 9200);
    // The kernel's and the workers' counts add up.
    let selected = counter(&stderr, "selected");
    assert_eq!(
        selected,
        counter(&stderr, "records_read")
            + counter(&stderr, "ring_full")
            + counter(&stderr, "load_failed")
    );
    assert_eq!(counter(&stderr, "ring_full"), 0);
    assert_eq!(counter(&stderr, "dropped_messages"), 0);
    assert_eq!(counter(&stderr, "workers"), 2);
}

#[test]
fn seed_scenarios_reach_prometheus_and_evidence_pcaps() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let addr = "127.0.0.1:9464";
    let dir = std::env::temp_dir().join(format!("synscope-live-evidence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let live = Live::events(
        &lab.server_ns,
        &lab.server_if,
        &[
            "--workers",
            "2",
            "--metrics",
            addr,
            "--evidence",
            dir.to_str().unwrap(),
        ],
    );
    let prom = Prometheus::start(Some(&lab.server_ns), 9090, addr);
    let ((text, before_end), events, _) = detect_seed_scenarios_then(&lab, live, 9300, |_| {
        // One snapshot period and one scrape after the last verdict.
        thread::sleep(Duration::from_millis(2500));
        let text = scrape(Some(&lab.server_ns), addr).expect("scrape synscope");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        (text, now)
    });
    promtool_check_metrics(&text);
    assert_prometheus_matches_events(&prom, &events, Some(before_end));
    // Inline mode exports the kernel's counters and both workers' engines.
    // Asked at a time synscope still ran: once it stops, the failed scrape marks its series
    // stale and a query for "now" may find nothing.
    let at = |q: &str| prom.query_at(q, Some(before_end));
    let selected = at("synscope_kernel_packets_total{counter=\"selected\"}");
    assert!(selected[0].1 > 0.0, "{selected:?}");
    assert_eq!(at("synscope_packets_total").len(), 2);
    assert_eq!(at("synscope_build_info{mode=\"inline\"}")[0].1, 1.0);
    // Evidence: every flagged connection's pcap holds only its packets; the refused one is
    // exactly the SYN and the RST-ACK that refused it.
    let files = assert_evidence_files(&events);
    let refused = events
        .iter()
        .position(|e| {
            e["kind"] == "syn_rejected"
                && e["server"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!(":{}", 9300 + scenarios::CLOSED_PORT.offset))
        })
        .expect("syn_rejected");
    let pkts = &files
        .iter()
        .find(|f| f.0 == refused)
        .expect("its evidence")
        .1;
    let flags: Vec<&str> = pkts.iter().map(|p| p.split(' ').nth(3).unwrap()).collect();
    assert_eq!(flags, ["0x0002", "0x0014"], "{pkts:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_interval_view_prints_each_endpoints_counts_once() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    // stdout is a pipe here: plain lines, one per active endpoint and interval.
    let live = Live::plain(&lab.server_ns, &lab.server_if, &["--interval", "1"]);
    let server = echo_server(&lab, 9010, 5);
    let to: SocketAddr = (lab.server_v4, 9010).into();
    for _ in 0..5 {
        echo_once(&lab, to, b"x");
    }
    server.join().expect("echo server");
    let refused = synscope::lab::in_netns(&lab.client_ns, || {
        std::net::TcpStream::connect_timeout(&(lab.server_v4, 9011).into(), Duration::from_secs(3))
            .is_err()
    })
    .expect("netns");
    assert!(refused);
    // Two intervals and a snapshot period after the last packet.
    thread::sleep(Duration::from_millis(3500));
    let (out, code, stderr) = live.stop_raw();
    assert_eq!(code, 0, "{stderr}");
    let field = |l: &str, k: &str| -> u64 {
        l.split(' ')
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {l}"))
    };
    let of = |port: u16| -> Vec<&str> {
        let needle = format!(" server={}:{port} ", lab.server_v4);
        out.lines()
            .filter(|l| l.contains(&needle) && !l.contains(" offender="))
            .collect()
    };
    let sum = |lines: &[&str], k: &str| -> u64 { lines.iter().map(|l| field(l, k)).sum() };
    let echo = of(9010);
    assert_eq!(
        (
            sum(&echo, "syns"),
            sum(&echo, "established"),
            sum(&echo, "rsts")
        ),
        (5, 5, 0),
        "{out}"
    );
    assert!(
        echo.iter()
            .all(|l| l.contains("anomalies= ") || l.ends_with("anomalies=")),
        "{out}"
    );
    let closed = of(9011);
    assert_eq!(
        (sum(&closed, "syns"), sum(&closed, "rsts")),
        (1, 1),
        "{out}"
    );
    assert_eq!(
        closed
            .iter()
            .filter(|l| l.ends_with("anomalies=syn_rejected:1"))
            .count(),
        1,
        "{out}"
    );
}

#[test]
fn two_thousand_connections_succeed_with_a_minimal_ring_and_the_loss_is_counted() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    // One page per ring: 18 records. Connections must not notice.
    let live = Live::start(
        &lab.server_ns,
        &lab.server_if,
        &["--ring-size", "4096", "--workers", "1"],
    );
    const N: usize = 2000;
    let server = echo_server(&lab, 9300, N);
    let to: SocketAddr = (lab.server_v4, 9300).into();
    let ok = synscope::lab::in_netns(&lab.client_ns, move || {
        (0..N)
            .filter(|i| {
                let msg = format!("connection {i}");
                let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
                    .expect("connect");
                use std::io::{Read, Write};
                s.write_all(msg.as_bytes()).expect("write");
                s.shutdown(std::net::Shutdown::Write).expect("shutdown");
                let mut back = String::new();
                s.read_to_string(&mut back).expect("read");
                back == msg
            })
            .count()
    })
    .expect("netns");
    server.join().expect("echo server");
    assert_eq!(ok, N, "every connection carried its data");
    thread::sleep(Duration::from_millis(200));
    let (lines, code, stderr) = live.stop();
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let (selected, read, full) = (
        counter(&stderr, "selected"),
        counter(&stderr, "records_read"),
        counter(&stderr, "ring_full"),
    );
    assert_eq!(read, lines.len() as u64);
    assert_eq!(selected, read + full + counter(&stderr, "load_failed"));
    // 2000 connections: at least SYN, SYN-ACK, 2 FINs each are selected.
    assert!(selected >= 4 * N as u64, "{stderr}");
}

#[test]
fn tagged_fragmented_and_truncated_frames_are_parsed_or_counted() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let live = Live::start(&lab.server_ns, &lab.server_if, &["--workers", "1"]);
    let syn = |sport| {
        SegmentBuilder::v4([192, 0, 2, 1], sport, [192, 0, 2, 2], 7000)
            .flags(TcpFlags::SYN)
            .seq(1000)
            .timestamps(5, 0)
    };
    let v6_rst = SegmentBuilder::v6(lab.client_v6, 7001, lab.server_v6, 7000)
        .flags(TcpFlags::RST)
        .seq(77);
    let mut fragment = ethernet(&syn(7003), &[]);
    fragment[14 + 6] = 0x00;
    fragment[14 + 7] = 0x10; // fragment offset 16 × 8 bytes: no TCP header here
    let mut truncated = ethernet(&syn(7004), &[]);
    truncated.truncate(14 + 20 + 8); // IPv4 header, then 8 bytes of TCP
    let frames = vec![
        ethernet(&syn(7001), &[(TPID_8021Q, 100)]),
        ethernet(&syn(7002), &[(TPID_8021AD, 10), (TPID_8021Q, 100)]),
        ethernet(&v6_rst, &[(TPID_8021Q, 5)]),
        fragment,
        truncated,
        ethernet(&syn(7005).flags(TcpFlags::ACK), &[]),
    ];
    lab.inject(&lab.client_ns, &lab.client_if, &frames)
        .expect("inject");
    thread::sleep(Duration::from_millis(200));
    let (lines, code, stderr) = live.stop();
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let got: Vec<(String, String, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["src"].as_str().unwrap().to_owned(),
                l["flags"].as_str().unwrap().to_owned(),
                l["vlan_depth"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("192.0.2.1:7001".to_owned(), "SYN".to_owned(), 1),
            ("192.0.2.1:7002".to_owned(), "SYN".to_owned(), 2),
            ("[2001:db8::1]:7001".to_owned(), "RST".to_owned(), 1),
            // The untagged ACK reached the server's TCP stack (closed port): its RST leaves
            // on egress. Tagged frames never reach it (no VLAN device), so no other answer.
            ("192.0.2.2:7000".to_owned(), "RST".to_owned(), 0),
        ]
    );
    assert_eq!(lines[3]["direction"], "egress");
    assert_eq!(lines[3]["dst"], "192.0.2.1:7005");
    assert_eq!(lines[0]["tsval"], 5);
    assert_eq!(counter(&stderr, "unparsable_fragment"), 1);
    assert_eq!(counter(&stderr, "unparsable_truncated"), 1);
    assert_eq!(counter(&stderr, "selected"), 4);
}

#[test]
fn kill_9_leaves_nothing_attached_and_connections_still_work() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    // Both ingress attachments: TC (auto on a veth) and XDP.
    for (args, xdp) in [(&[][..], false), (&["--xdp-mode", "generic"][..], true)] {
        let mut live = Live::start(&lab.server_ns, &lab.server_if, args);
        assert_eq!(xdp_attached(&lab, &lab.server_ns, &lab.server_if), xdp);
        let (ingress_id, tc_id) = (
            log_field(&live.stderr, "ingress_prog_id"),
            log_field(&live.stderr, "egress_prog_id"),
        );
        assert!(prog_linked(ingress_id) && prog_linked(tc_id));
        live.child.kill().expect("SIGKILL");
        live.child.wait().expect("reap");
        // The links go away with the last fd; allow the kernel a moment to release them.
        let mut left = true;
        for _ in 0..50 {
            left = xdp_attached(&lab, &lab.server_ns, &lab.server_if)
                || prog_linked(ingress_id)
                || prog_linked(tc_id);
            if !left {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !left,
            "{args:?}: an ingress or egress link is left after kill -9"
        );
        let port = if xdp { 9101 } else { 9100 };
        let server = echo_server(&lab, port, 1);
        let (_, back) = echo_once(&lab, (lab.server_v4, port).into(), b"after kill");
        server.join().expect("echo");
        assert_eq!(back, b"after kill");
    }
}

#[test]
fn a_second_instance_refuses_to_replace_the_first() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let live_again = |extra: &[&str]| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.server_ns,
                BIN,
                "live",
                "--iface",
                &lab.server_if,
                "--duration",
                "1",
            ])
            .args(extra)
            .output()
            .expect("run")
    };
    let first = Live::start(&lab.server_ns, &lab.server_if, &[]);
    for extra in [&[][..], &["--xdp-mode", "generic"]] {
        let second = live_again(extra);
        let err = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!("synscope already runs on {}", lab.server_if)),
            "{err}"
        );
    }
    let (_, code, _) = first.stop();
    assert_eq!(code, 0, "the first instance kept running");

    // A foreign XDP program (held by this test through its own bpf_link).
    let foreign = synscope::lab::in_netns(&lab.server_ns, || {
        synscope::loader::attach_count_drop(&lab.server_if)
    })
    .expect("netns")
    .expect("foreign XDP program");
    let second = live_again(&["--xdp-mode", "generic"]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains("already has an XDP program attached (prog id"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    // --force cannot take over a bpf_link another process owns: it says so.
    let forced = live_again(&["--xdp-mode", "generic", "--force"]);
    let err = String::from_utf8_lossy(&forced.stderr);
    assert_eq!(forced.status.code(), Some(1), "{err}");
    assert!(err.contains("only its owner can remove"), "{err}");
    // TC ingress (auto on a veth) runs beside it.
    let beside = live_again(&[]);
    let err = String::from_utf8_lossy(&beside.stderr);
    assert_eq!(beside.status.code(), Some(0), "{err}");
    drop(foreign);
}

#[test]
fn probe_rst_before_ack_with_tsval_0_leaks_a_server_socket_and_is_reported() {
    if !require_root() {
        return;
    }
    use synscope::lab::probe::{self, RstStamp};
    let lab = Lab::create().expect("lab");
    let live = Live::events(&lab.server_ns, &lab.server_if, &["--workers", "2"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = 9400;
    let _l = scenarios::listener(&lab, "::".parse().unwrap(), port, 128, false, stop.clone())
        .expect("listener");
    probe::drop_client_kernel_resets(&lab, port).expect("rule");
    let leak = probe::run(&lab, 40001, port, RstStamp::Zero).expect("probe, TSval 0");
    assert!(
        !leak.server_reset,
        "the server stays silent to the late ACK"
    );
    assert_eq!(
        leak.established_on_server, 1,
        "ss: the leaked ESTABLISHED socket"
    );
    let ok = probe::run(&lab, 40002, port, RstStamp::Valid).expect("probe, valid TSval");
    assert!(ok.server_reset, "the late ACK finds no socket: RST");
    assert_eq!(
        ok.established_on_server, 1,
        "no new socket, the leaked one remains"
    );
    thread::sleep(Duration::from_millis(1300));
    let (events, code, stderr) = live.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let of = |c: SocketAddr| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["client"] == c.to_string())
            .collect()
    };
    let kinds = |v: &[&serde_json::Value]| -> Vec<String> {
        v.iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    let e = of(leak.client);
    assert_eq!(
        kinds(&e),
        ["reset", "probe_rst_before_ack", "probe_connection_leak"]
    );
    let leaked = &e[2]["evidence"];
    assert_eq!(leaked["rst_tsval"], 0);
    assert_eq!(leaked["syn_tsval"], 7_000_000);
    assert_eq!(leaked["paws_reject_expected"], true);
    assert_eq!(leaked["rst_seq_ok"], true);
    assert_eq!(e[2]["severity"], "critical");
    let e = of(ok.client);
    assert_eq!(kinds(&e), ["reset", "probe_rst_before_ack", "reset"]);
    assert_eq!(e[1]["evidence"]["paws_reject_expected"], false);
    assert_eq!(e[2]["evidence"]["from"], "server");
    assert_eq!(events.len(), 6, "{events:#?}");
}

/// SYNs from spoofed sources (192.0.2.10–249, random ports) to `port`, `per_sec` for `secs`.
fn syn_flood(lab: &Lab, port: u16, per_sec: usize, secs: usize) {
    let mut frames = Vec::with_capacity(per_sec * secs);
    for i in 0..per_sec * secs {
        let src = [192, 0, 2, 10 + (i % 240) as u8];
        let b = SegmentBuilder::v4(src, 10_000 + (i / 240) as u16, [192, 0, 2, 2], port)
            .flags(TcpFlags::SYN)
            .seq(i as u32 * 7919)
            .timestamps(i as u32, 0);
        frames.push(ethernet(&b, &[]));
    }
    // 10 batches a second.
    lab.inject_paced(&lab.client_ns, &lab.client_if, &frames, per_sec / 10, 100)
        .expect("inject");
}

#[test]
fn a_syn_flood_is_one_episode_and_its_connections_fold_into_it() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _l = scenarios::listener(&lab, lab.server_v4.into(), 9500, 128, true, stop.clone())
        .expect("listener");
    let live = Live::events(
        &lab.server_ns,
        &lab.server_if,
        &[
            "--workers",
            "2",
            "--flood-rate",
            "1000",
            "--syn-timeout",
            "1",
        ],
    );
    syn_flood(&lab, 9500, 2000, 3);
    thread::sleep(Duration::from_millis(3500));
    let (events, code, stderr) = live.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["evidence"]["phase"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // The spoofed sources never resolve (no ARP answer): no SYN-ACK leaves the server.
    let unanswered_first_second = kinds.iter().filter(|k| k.0 == "syn_unanswered").count();
    let agg: Vec<_> = kinds.iter().filter(|k| k.0 == "syn_flood").collect();
    assert_eq!(
        agg,
        [&("syn_flood", "start"), &("syn_flood", "end")],
        "{kinds:?}"
    );
    let start = events.iter().find(|e| e["kind"] == "syn_flood").unwrap();
    assert_eq!(start["server"], "192.0.2.2:9500");
    assert_eq!(start["client"], serde_json::Value::Null);
    assert_eq!(start["evidence"]["share_unanswered"], 1.0);
    let rate = start["evidence"]["rate"].as_u64().unwrap();
    // The first second above the rate may be a partial one of the flood.
    assert!(
        (1000..=2100).contains(&rate),
        "≥ flood rate, ≤ ~2000 SYNs/s: {rate}"
    );
    let sources = start["evidence"]["distinct_sources"].as_u64().unwrap();
    assert!(
        (225..=255).contains(&sources),
        "240 spoofed source IPs: {sources}"
    );
    let end = events.iter().rfind(|e| e["kind"] == "syn_flood").unwrap();
    let syns = end["evidence"]["syns"].as_u64().unwrap();
    // The seconds above the rate: at least the 2 full ones of the 3 s flood.
    assert!((3000..=6000).contains(&syns), "{syns}");
    assert_eq!(end["evidence"]["share_unanswered"], 1.0);
    let peak = end["evidence"]["peak_rate"].as_u64().unwrap();
    assert!(
        (1500..=2100).contains(&peak),
        "a full second of ~2000 SYNs/s: {peak}"
    );
    // Verdicts of SYNs sent before the episode was recognised still come out; every later
    // one is folded and counted.
    assert!(unanswered_first_second < 2600, "{unanswered_first_second}");
    let folded = counter(&stderr, "events_folded");
    assert!(folded >= 3000, "{stderr}");
    assert_eq!(
        folded + unanswered_first_second as u64,
        6000,
        "every SYN got its verdict"
    );
    // The summary counts every line written, episodes included.
    assert_eq!(counter(&stderr, "events"), events.len() as u64, "{stderr}");
}

#[test]
fn tunnelled_handshakes_are_followed_to_the_inner_tcp_by_tc_and_by_xdp() {
    if !require_root() {
        return;
    }
    for mode in ["tc", "native"] {
        let lab = Lab::create().expect("lab");
        let live = Live::events(
            &lab.server_ns,
            &lab.server_if,
            &["--workers", "2", "--xdp-mode", mode],
        );
        let (frames, kinds) = tunnel_frames(&lab);
        lab.inject(&lab.client_ns, &lab.client_if, &frames)
            .expect("inject");
        // The refusals are held for the reorder window (0.2 s).
        thread::sleep(Duration::from_millis(800));
        let (events, code, stderr) = live.stop();
        assert_eq!(code, 0, "{mode}: {stderr}");
        assert_tunnel_events(&events, &kinds);
        assert_eq!(
            counter(&stderr, "selected"),
            frames.len() as u64,
            "{mode}: {stderr}"
        );
    }
}

#[test]
fn loopback_sees_every_packet_once() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let live = Live::events(&lab.server_ns, "lo", &[]);
    assert!(
        live.stderr.contains("loopback: ingress only"),
        "{}",
        live.stderr
    );
    let r = synscope::lab::in_netns(&lab.server_ns, || {
        std::net::TcpStream::connect_timeout(
            &"127.0.0.1:9999".parse().unwrap(),
            Duration::from_secs(2),
        )
    })
    .expect("netns");
    assert!(r.is_err());
    thread::sleep(Duration::from_millis(800));
    let (events, code, stderr) = live.stop();
    assert_eq!(code, 0, "{stderr}");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["syn_rejected"], "one RST, once");
    assert!(
        events.iter().all(|e| e["iface"] == "lo"),
        "events name the interface"
    );
}

#[test]
fn a_vanished_interface_ends_the_run_non_zero_and_a_restart_attaches_when_it_is_back() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let metrics = format!("127.0.0.1:{}", free_port());
    let live = Live::events(&lab.server_ns, &lab.server_if, &["--metrics", &metrics]);
    thread::sleep(Duration::from_millis(1500));
    let text = scrape(Some(&lab.server_ns), &metrics).expect("scrape");
    assert!(
        text.contains(&format!(
            "synscope_attached{{iface=\"{}\"}} 1",
            lab.server_if
        )),
        "{text}"
    );
    let t0 = std::time::Instant::now();
    lab.exec(&lab.server_ns, &["ip", "link", "del", &lab.server_if])
        .expect("delete the veth");
    let (code, stderr) = live.wait_exit(Duration::from_secs(5));
    assert_eq!(
        code, 1,
        "non-zero, for systemd's Restart=on-failure: {stderr}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(stderr.contains("the interface went away"), "{stderr}");
    assert!(
        stderr.contains("records_read"),
        "the summary is printed: {stderr}"
    );
    // What Restart= does next: while the interface is missing, starting fails clearly...
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.server_ns,
            BIN,
            "live",
            "--iface",
            &lab.server_if,
        ])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and once it is back, a start attaches and sees connections again.
    lab.add_veth().expect("recreate the veth");
    let live = Live::events(&lab.server_ns, &lab.server_if, &[]);
    refused(&lab, 9444);
    thread::sleep(Duration::from_millis(800));
    let (events, code, stderr) = live.stop();
    assert_eq!(code, 0, "{stderr}");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["syn_rejected"]);
}

#[test]
fn syn_counts_match_iptables_own_packet_counters() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let port = 9555;
    let rule = format!("INPUT -p tcp --dport {port} --syn -j DROP");
    let ipt = |args: &str| {
        let a: Vec<&str> = args.split_whitespace().collect();
        lab.exec(&lab.server_ns, &[&["iptables"], &a[..]].concat())
            .expect("iptables")
    };
    ipt(&format!("-A {rule}"));
    let json = std::env::temp_dir().join(format!("synscope-ipt-{}.json", std::process::id()));
    let live = Live::events(
        &lab.server_ns,
        &lab.server_if,
        &["--summary-json", json.to_str().unwrap()],
    );
    // A client hammering a black-holed port: its SYN retransmissions for 4.5 s, twice.
    for _ in 0..2 {
        let to: SocketAddr = (lab.server_v4, port).into();
        let r = synscope::lab::in_netns(&lab.client_ns, move || {
            std::net::TcpStream::connect_timeout(&to, Duration::from_millis(4500))
        })
        .expect("netns");
        assert!(r.is_err());
    }
    thread::sleep(Duration::from_millis(300));
    let (_, code, stderr) = live.stop();
    assert_eq!(code, 0, "{stderr}");
    let listing = String::from_utf8_lossy(&ipt("-L INPUT -v -x -n").stdout).into_owned();
    let dropped: u64 = listing
        .lines()
        .find(|l| l.contains(&format!("dpt:{port}")))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{listing}"));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("summary json")).unwrap();
    let _ = std::fs::remove_file(&json);
    let ep = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["server"] == format!("192.0.2.2:{port}"))
        .expect("the endpoint");
    assert!(dropped >= 8, "{listing}");
    assert_eq!(ep["syns"], dropped, "SYN packets, as iptables counts them");
    assert_eq!(ep["connection_attempts"], 2);
    assert_eq!(
        stderr
            .matches(&format!(
                "server 192.0.2.2:{port}: {dropped} SYNs (2 connection attempts"
            ))
            .count(),
        1,
        "{stderr}"
    );
}

/// The text of tmux session `s`'s pane.
fn pane(s: &str) -> String {
    let out = Command::new("tmux")
        .args(["capture-pane", "-p", "-t", s])
        .output()
        .expect("tmux capture-pane");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_live_view_fills_80_and_160_columns_and_q_quits_to_a_clean_screen() {
    if !require_root() {
        return;
    }
    for width in [80u16, 160] {
        let lab = Lab::create().expect("lab");
        let session = format!("synscope-view-{}-{width}", std::process::id());
        struct Kill(String);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = Command::new("tmux")
                    .args(["kill-session", "-t", &self.0])
                    .status();
            }
        }
        let cmd = format!(
            "ip netns exec {} {BIN} live -i {} --interval 1s --duration 60s; echo EXIT=$?; sleep 60",
            lab.server_ns, lab.server_if
        );
        let st = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &session,
                "-x",
                &width.to_string(),
                "-y",
                "30",
                &cmd,
            ])
            .status()
            .expect("tmux");
        assert!(st.success());
        let _kill = Kill(session.clone());
        let attached = (0..100).any(|_| {
            thread::sleep(Duration::from_millis(100));
            pane(&session).contains("q quits")
        });
        assert!(attached, "{}", pane(&session));
        for port in [9771, 9772] {
            refused(&lab, port);
        }
        thread::sleep(Duration::from_millis(2500));
        let screen = pane(&session);
        let header = screen
            .lines()
            .find(|l| l.contains("server") && l.contains("syn/s"))
            .unwrap_or_else(|| panic!("no table header at {width}:\n{screen}"));
        assert!(
            header.contains("anomalies"),
            "the header fits on one line: {header}"
        );
        assert!(
            screen.contains("192.0.2.2:9771") && screen.contains("192.0.2.2:9772"),
            "{screen}"
        );
        if width >= 120 {
            assert!(
                screen.contains("syn_rejected:1"),
                "kinds at {width}:\n{screen}"
            );
        }
        assert!(
            screen
                .lines()
                .all(|l| l.chars().count() <= usize::from(width))
        );
        // q quits: the alternate screen goes, the summary is printed, the exit code is 0.
        Command::new("tmux")
            .args(["send-keys", "-t", &session, "q"])
            .status()
            .unwrap();
        let done = (0..100).any(|_| {
            thread::sleep(Duration::from_millis(100));
            pane(&session).contains("EXIT=")
        });
        // The whole scrollback: the summary is longer than the pane.
        let after = String::from_utf8_lossy(
            &Command::new("tmux")
                .args(["capture-pane", "-p", "-S", "-", "-t", &session])
                .output()
                .expect("tmux")
                .stdout,
        )
        .into_owned();
        assert!(done, "{after}");
        assert!(after.contains("EXIT=0"), "{after}");
        assert!(
            !after.contains("q quits"),
            "the view left no frame behind:\n{after}"
        );
        assert!(after.contains("server 192.0.2.2:9771: 1 SYN"), "{after}");
        assert!(
            after.contains("attached; stop with Ctrl-C") && after.contains("detached"),
            "the logs held while the view owned the terminal come after it: {after}"
        );
    }
}
