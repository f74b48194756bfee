//! Privileged end-to-end tests of inline mode: real kernels in network namespaces, the real
//! `synscope` binary attached to the server's veth.

mod support;

use std::{net::SocketAddr, process::Command, thread, time::Duration};

use support::*;
use synscope::{
    lab::Lab,
    wire::{
        TcpFlags,
        emit::{SegmentBuilder, TPID_8021AD, TPID_8021Q, ethernet},
    },
};

#[test]
fn records_exact_ingress_control_packets_of_real_connections() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let live = Live::start(&lab.server_ns, &lab.server_if, &[]);
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
        let recs: Vec<_> = lines
            .iter()
            .filter(|l| l["src"] == client.to_string())
            .collect();
        let flags: Vec<&str> = recs.iter().map(|l| l["flags"].as_str().unwrap()).collect();
        assert_eq!(flags, ["SYN", "FIN|ACK"], "records of {client}: {recs:?}");
        for r in &recs {
            assert_eq!(r["direction"], "ingress");
            assert_eq!(r["dst"].as_str().unwrap().rsplit(':').next(), Some("9000"));
        }
        let isn = recs[0]["seq"].as_u64().unwrap();
        assert_eq!(
            recs[0]["ack"],
            serde_json::Value::Null,
            "a SYN carries no ACK"
        );
        assert_eq!(recs[0]["payload_len"], 0);
        assert!(
            recs[0]["tsval"].as_u64().is_some(),
            "Linux SYNs carry timestamps"
        );
        // The FIN follows the data: seq = ISN + 1 (SYN) + bytes sent (RFC 9293 §3.4).
        assert_eq!(
            recs[1]["seq"].as_u64().unwrap(),
            (isn + 1 + data_len) % (1 << 32)
        );
    }
    let to_closed: Vec<_> = lines
        .iter()
        .filter(|l| l["dst"] == format!("{}:9001", lab.server_v4))
        .collect();
    assert_eq!(
        to_closed.len(),
        1,
        "one SYN to the closed port, no retransmission: {to_closed:?}"
    );
    assert_eq!(to_closed[0]["flags"], "SYN");
    assert_eq!(lines.len(), 5, "nothing else was recorded: {lines:#?}");
    assert_eq!(counter(&stderr, "selected"), 5);
    assert_eq!(counter(&stderr, "records_read"), 5);
    assert_eq!(counter(&stderr, "ring_full"), 0);
    assert!(
        !xdp_attached(&lab, &lab.server_ns, &lab.server_if),
        "detached on exit"
    );
}

#[test]
fn tagged_fragmented_and_truncated_frames_are_parsed_or_counted() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let live = Live::start(&lab.server_ns, &lab.server_if, &[]);
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
        ]
    );
    assert_eq!(lines[0]["tsval"], 5);
    assert_eq!(counter(&stderr, "unparsable_fragment"), 1);
    assert_eq!(counter(&stderr, "unparsable_truncated"), 1);
    assert_eq!(counter(&stderr, "selected"), 3);
}

#[test]
fn kill_9_leaves_nothing_attached_and_connections_still_work() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let mut live = Live::start(&lab.server_ns, &lab.server_if, &[]);
    assert!(xdp_attached(&lab, &lab.server_ns, &lab.server_if));
    live.child.kill().expect("SIGKILL");
    live.child.wait().expect("reap");
    // The bpf_link goes away with the last fd; allow the kernel a moment to release it.
    let mut attached = true;
    for _ in 0..50 {
        attached = xdp_attached(&lab, &lab.server_ns, &lab.server_if);
        if !attached {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(!attached, "XDP program still attached after kill -9");
    let server = echo_server(&lab, 9100, 1);
    let (_, back) = echo_once(&lab, (lab.server_v4, 9100).into(), b"after kill");
    server.join().expect("echo");
    assert_eq!(back, b"after kill");
}

#[test]
fn a_second_instance_refuses_to_replace_the_first() {
    if !require_root() {
        return;
    }
    let lab = Lab::create().expect("lab");
    let first = Live::start(&lab.server_ns, &lab.server_if, &[]);
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
            ])
            .args(extra)
            .output()
            .expect("run")
    };
    let second = live_again(&[]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains("already has an XDP program attached (prog id"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    // --force cannot take over a bpf_link another process owns: it says so.
    let forced = live_again(&["--force"]);
    let err = String::from_utf8_lossy(&forced.stderr);
    assert_eq!(forced.status.code(), Some(1), "{err}");
    assert!(err.contains("only its owner can remove"), "{err}");
    let (_, code, _) = first.stop();
    assert_eq!(code, 0, "the first instance kept running");
}
