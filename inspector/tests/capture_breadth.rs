//! Capture input breadth, end to end through `synscope pcap`: every link type it reads, every
//! encapsulation it follows (flows keyed on the inner headers), captures cut by a snap length
//! (written by hand, by `editcap -s 96`, and by a real `tcpdump -s 96` of kernel traffic), and
//! TSO super-packets. Where tshark has a view, it must decode the same inner TCP headers.

mod support;

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use synscope::{
    capture::pcap::{Record, read_file, write},
    wire::{
        TcpFlags,
        emit::{
            GreFields, SegmentBuilder, eth_frame, geneve, gre, ip_tcp, ipip, mpls, nflog, null,
            ppp, vxlan,
        },
    },
};

const BIN: &str = env!("CARGO_BIN_EXE_synscope");

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("synscope-breadth-{}-{name}", std::process::id()))
}

/// `synscope pcap FILE --json -`: (events, summary on stderr). Exit code 0 asserted.
fn synscope(path: &Path) -> (Vec<Value>, String) {
    let out = Command::new(BIN)
        .arg("pcap")
        .arg(path)
        .args(["--json", "-"])
        .output()
        .expect("run synscope");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}: {err}", path.display());
    let ev = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect();
    (ev, err)
}

fn kinds(ev: &[Value]) -> Vec<&str> {
    ev.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

/// tshark's decoding of each frame's innermost TCP: source port, destination port, flags,
/// innermost source address (`ip.src`, or `ipv6.src` when `v6`).
fn tshark_tcp(path: &Path, v6: bool) -> Vec<String> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(path)
        .args(["-Y", "tcp", "-T", "fields", "-E", "occurrence=l"])
        .args(["-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.flags"])
        .args(["-e", if v6 { "ipv6.src" } else { "ip.src" }])
        .output()
        .expect("tshark (installed by scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The inner client and server: a SYN to a closed port and the kernel's RST|ACK answer.
struct Inner {
    client: SocketAddr,
    server: SocketAddr,
}

const ISN: u32 = 0x1234_5678;

impl Inner {
    fn v4() -> Self {
        Self {
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:9001".parse().unwrap(),
        }
    }
    fn v6() -> Self {
        Self {
            client: "[2001:db8:1::1]:40000".parse().unwrap(),
            server: "[2001:db8:1::2]:9001".parse().unwrap(),
        }
    }
    fn syn(&self) -> Vec<u8> {
        ip_tcp(
            &SegmentBuilder::new(
                self.client.ip(),
                self.client.port(),
                self.server.ip(),
                self.server.port(),
            )
            .flags(TcpFlags::SYN)
            .seq(ISN)
            .mss(1460)
            .timestamps(1000, 0),
        )
    }
    fn rst(&self) -> Vec<u8> {
        ip_tcp(
            &SegmentBuilder::new(
                self.server.ip(),
                self.server.port(),
                self.client.ip(),
                self.client.port(),
            )
            .flags(TcpFlags::RST | TcpFlags::ACK)
            .ack(ISN.wrapping_add(1))
            .window(0),
        )
    }
    /// What tshark must print for the two packets.
    fn tshark_lines(&self) -> Vec<String> {
        vec![
            format!(
                "{}\t{}\t0x0002\t{}",
                self.client.port(),
                self.server.port(),
                self.client.ip()
            ),
            format!(
                "{}\t{}\t0x0014\t{}",
                self.server.port(),
                self.client.port(),
                self.server.ip()
            ),
        ]
    }
}

/// The two frames at t = 1 s and 1 s + 35 µs, whole, in a pcap of `link`.
fn two_frames(link: u32, syn: &[u8], rst: &[u8]) -> Vec<u8> {
    write::pcap(
        link,
        65535,
        &[
            (1_000_000_000, syn.len() as u32, syn),
            (1_000_035_000, rst.len() as u32, rst),
        ],
    )
}

/// synscope finds exactly the refused SYN, between the inner addresses; tshark decodes the
/// same inner TCP headers.
fn assert_refused_everywhere(name: &str, file: &[u8], inner: &Inner) {
    let path = tmp(&format!("{name}.pcap"));
    std::fs::write(&path, file).expect("write pcap");
    let (ev, summary) = synscope(&path);
    let lines = tshark_tcp(&path, inner.client.is_ipv6());
    let _ = std::fs::remove_file(&path);
    assert_eq!(kinds(&ev), ["syn_rejected"], "{name}: {summary}");
    for e in &ev {
        assert_eq!(e["client"], inner.client.to_string(), "{name}");
        assert_eq!(e["server"], inner.server.to_string(), "{name}");
    }
    assert_eq!(ev[0]["evidence"]["rst_class"], "refused", "{name}");
    assert_eq!(ev[0]["evidence"]["from"], "server", "{name}");
    assert_eq!(ev[0]["evidence"]["rst_ack"], u64::from(ISN) + 1, "{name}");
    assert!(!summary.contains("skipped frames"), "{name}: {summary}");
    assert_eq!(lines, inner.tshark_lines(), "{name}: tshark");
    // Events name the outermost encapsulation; link layers are none.
    let tunnel = match name {
        "ipip" | "6in4" | "4in6" | "vxlan_in_ipip" => Some("ipip"),
        n if n.starts_with("gre") => Some("gre"),
        n if n.starts_with("mpls") => Some("mpls"),
        "vxlan" | "geneve" => Some(name),
        _ => None,
    };
    for e in &ev {
        assert_eq!(
            e["evidence"]["tunnel"]["kind"].as_str(),
            tunnel,
            "{name}: {e}"
        );
    }
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_refused_syn_inside_every_tunnel_is_found_on_the_inner_addresses() {
    type Wrap = Box<dyn Fn(IpAddr, IpAddr, &[u8]) -> Vec<u8>>;
    let (lb, real) = (addr("192.0.2.10"), addr("192.0.2.20"));
    let (lb6, real6) = (addr("2001:db8:f::10"), addr("2001:db8:f::20"));
    let eth_ip = |ip: &[u8]| {
        let et = if ip[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
        eth_frame(et, ip)
    };
    let cases: Vec<(&str, Inner, bool, Wrap)> = vec![
        ("ipip", Inner::v4(), false, Box::new(ipip)),
        ("6in4", Inner::v6(), false, Box::new(ipip)),
        ("4in6", Inner::v4(), true, Box::new(ipip)),
        (
            "gre",
            Inner::v4(),
            false,
            Box::new(|s, d, ip: &[u8]| gre(s, d, GreFields::default(), 0x0800, ip)),
        ),
        (
            "gre_csum_key_seq",
            Inner::v6(),
            true,
            Box::new(|s, d, ip: &[u8]| {
                let f = GreFields {
                    checksum: true,
                    key: Some(0xabcd),
                    seq: Some(1),
                };
                gre(s, d, f, 0x86dd, ip)
            }),
        ),
        (
            "gretap",
            Inner::v4(),
            false,
            Box::new(move |s, d, ip: &[u8]| gre(s, d, GreFields::default(), 0x6558, &eth_ip(ip))),
        ),
        (
            "vxlan",
            Inner::v4(),
            false,
            Box::new(move |s, d, ip: &[u8]| vxlan(s, d, 5001, &eth_ip(ip))),
        ),
        (
            "geneve",
            Inner::v6(),
            false,
            Box::new(move |s, d, ip: &[u8]| {
                // One 8-byte option (class 0x0102, type 0x80, 4 bytes of data).
                let opt = [0x01, 0x02, 0x80, 0x01, 0xde, 0xad, 0xbe, 0xef];
                geneve(s, d, 77, &opt, 0x6558, &eth_ip(ip))
            }),
        ),
        (
            "vxlan_in_ipip",
            Inner::v4(),
            true,
            Box::new(move |s, d, ip: &[u8]| {
                ipip(
                    s,
                    d,
                    &vxlan(addr("198.51.100.1"), addr("198.51.100.2"), 1, &eth_ip(ip)),
                )
            }),
        ),
    ];
    for (name, inner, outer6, wrap) in cases {
        let (a, b) = if outer6 { (lb6, real6) } else { (lb, real) };
        let syn = wrap(a, b, &inner.syn());
        let rst = wrap(b, a, &inner.rst());
        let et = if outer6 { 0x86dd } else { 0x0800 };
        let file = two_frames(1, &eth_frame(et, &syn), &eth_frame(et, &rst));
        assert_refused_everywhere(name, &file, &inner);
    }
    // MPLS on Ethernet (two labels) and on Linux SLL (multicast ethertype, one label).
    let inner = Inner::v4();
    let f = |ip: &[u8]| eth_frame(0x8847, &mpls(&[1000, 2000], ip));
    assert_refused_everywhere(
        "mpls",
        &two_frames(1, &f(&inner.syn()), &f(&inner.rst())),
        &inner,
    );
    let sll = |ip: &[u8]| {
        let mut h = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x88, 0x48];
        h.extend_from_slice(&mpls(&[16], ip));
        h
    };
    assert_refused_everywhere(
        "mpls_sll",
        &two_frames(113, &sll(&inner.syn()), &sll(&inner.rst())),
        &inner,
    );
}

#[test]
fn a_refused_syn_is_found_in_every_link_type() {
    type Frame = Box<dyn Fn(&[u8]) -> Vec<u8>>;
    let fam = |ip: &[u8], v4: u32, v6: u32| if ip[0] >> 4 == 6 { v6 } else { v4 };
    let cases: Vec<(&str, u32, Inner, Frame)> = vec![
        (
            "null_le",
            0,
            Inner::v4(),
            Box::new(move |ip| null(fam(ip, 2, 30), true, ip)),
        ),
        (
            "null_be",
            0,
            Inner::v6(),
            Box::new(move |ip| null(fam(ip, 2, 24), false, ip)),
        ),
        (
            "loop",
            108,
            Inner::v4(),
            Box::new(move |ip| null(fam(ip, 2, 24), false, ip)),
        ),
        (
            "loop6",
            108,
            Inner::v6(),
            Box::new(move |ip| null(fam(ip, 2, 28), false, ip)),
        ),
        ("ppp", 9, Inner::v4(), Box::new(|ip| ppp(true, 0x0021, ip))),
        (
            "ppp6_no_hdlc",
            9,
            Inner::v6(),
            Box::new(|ip| ppp(false, 0x0057, ip)),
        ),
        (
            "ppp_hdlc",
            50,
            Inner::v6(),
            Box::new(|ip| ppp(true, 0x0057, ip)),
        ),
        ("nflog", 239, Inner::v4(), Box::new(|ip| nflog(2, true, ip))),
        (
            "nflog6",
            239,
            Inner::v6(),
            Box::new(|ip| nflog(10, true, ip)),
        ),
        ("raw", 101, Inner::v4(), Box::new(|ip| ip.to_vec())),
        ("ipv4", 228, Inner::v4(), Box::new(|ip| ip.to_vec())),
        ("ipv6", 229, Inner::v6(), Box::new(|ip| ip.to_vec())),
    ];
    for (name, link, inner, frame) in cases {
        let file = two_frames(link, &frame(&inner.syn()), &frame(&inner.rst()));
        assert_refused_everywhere(name, &file, &inner);
    }
}

#[test]
fn an_unsupported_link_type_lists_what_is_read() {
    let path = tmp("usb.pcap");
    std::fs::write(&path, write::pcap(189, 65535, &[])).expect("write");
    let out = Command::new(BIN)
        .arg("pcap")
        .arg(&path)
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("usb.pcap: unsupported link type 189: synscope reads Ethernet (1), raw IP (101, 228 IPv4, 229 IPv6), Linux SLL (113), Linux SLL2 (276), BSD loopback NULL (0) and LOOP (108), PPP (9), PPP in HDLC framing (50), NFLOG (239)"),
        "{err}"
    );
}

/// A pcapng interface of `link`, µs timestamps, no snap length.
fn idb(link: u16) -> write::Iface {
    write::Iface {
        link,
        snaplen: 0,
        tsresol: 6,
        tsoffset: 0,
    }
}

#[test]
fn an_unused_interface_of_an_unread_link_type_does_not_refuse_the_file() {
    // As Wireshark's dumpcap writes them: 126 interfaces declared, one of type 274 (unread by
    // synscope), packets on Ethernet only; then one packet on the 274 interface.
    let inner = Inner::v4();
    let syn = eth_frame(0x0800, &inner.syn());
    let rst = eth_frame(0x0800, &inner.rst());
    let mut ifaces = vec![idb(1); 126];
    ifaces[57] = idb(274);
    ifaces[58] = idb(113);
    let t = 1_725_966_494_956_327;
    for (name, odd, skipped) in [("unused", false, None), ("used", true, Some(1))] {
        let mut epbs: Vec<write::Epb<'_>> = vec![(0, t, syn.len() as u32, &syn)];
        if odd {
            epbs.push((57, t + 10, 4, &[1, 2, 3, 4]));
        }
        epbs.push((0, t + 35, rst.len() as u32, &rst));
        let path = tmp(&format!("dumpcap-{name}.pcapng"));
        std::fs::write(&path, write::pcapng_ifaces(&ifaces, &epbs)).expect("write");
        let (ev, summary) = synscope(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(kinds(&ev), ["syn_rejected"], "{name}: {summary}");
        assert_eq!(ev[0]["server"], inner.server.to_string(), "{name}");
        match skipped {
            None => assert!(!summary.contains("skipped frames"), "{name}: {summary}"),
            Some(n) => assert!(
                summary.contains(&format!("skipped frames: unsupported_link_type {n}\n")),
                "{name}: {summary}"
            ),
        }
    }
}

#[test]
fn fcs_length_bits_in_the_link_type_are_ethernet() {
    // libpcap's LT_LINKTYPE_EXT bits above link type 1, as in tcpdump's own test captures,
    // and the 4 FCS bytes they announce after each frame: tshark and synscope read the same.
    let inner = Inner::v4();
    let fcs = |ip: &[u8]| {
        let mut f = eth_frame(0x0800, ip);
        f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        f
    };
    for link in [0x3000_0001, 0x5000_0001] {
        assert_refused_everywhere(
            &format!("fcs_{link:x}"),
            &two_frames(link, &fcs(&inner.syn()), &fcs(&inner.rst())),
            &inner,
        );
    }
}

#[test]
fn a_syn_refused_22_us_later_on_a_clock_near_2_64_us_is_rejected_not_unanswered() {
    // PcapPlusPlus's pcapng example: µs timestamps near 2^64 (a writer's bug). Clamped to one
    // instant, every timer fired at once and the refused SYN was `syn_unanswered`.
    let inner = Inner::v4();
    let syn = eth_frame(0x0800, &inner.syn());
    let rst = eth_frame(0x0800, &inner.rst());
    let t = 18_446_744_073_204_160_194;
    let file = write::pcapng_ifaces(
        &[idb(1)],
        &[
            (0, t, syn.len() as u32, &syn),
            (0, t + 22, rst.len() as u32, &rst),
        ],
    );
    let path = tmp("clock-2-64.pcapng");
    std::fs::write(&path, file).expect("write");
    let (ev, summary) = synscope(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(kinds(&ev), ["syn_rejected"], "{summary}");
    assert_eq!(ev[0]["client"], inner.client.to_string());
    assert_eq!(ev[0]["evidence"]["rst_class"], "refused");
    // The time of day and fraction of the file's own clock (tshark: 586524-01-19
    // 07:53:24.160216), on 1970-01-02.
    assert_eq!(ev[0]["ts"], "1970-01-02T07:53:24.160216Z", "{summary}");
}

/// A data segment of `len` payload bytes from the server, as an Ethernet frame.
fn data_frame(inner: &Inner, len: usize) -> Vec<u8> {
    eth_frame(
        0x0800,
        &ip_tcp(
            &SegmentBuilder::new(
                inner.server.ip(),
                inner.server.port() + 1,
                inner.client.ip(),
                inner.client.port() + 1,
            )
            .flags(TcpFlags::ACK | TcpFlags::PSH)
            .payload(&vec![0x55; len]),
        ),
    )
}

#[test]
fn a_snap_length_capture_is_read_and_an_oversized_record_is_counted_and_skipped() {
    let inner = Inner::v4();
    let syn = eth_frame(0x0800, &inner.syn());
    let rst = eth_frame(0x0800, &inner.rst());
    let data = data_frame(&inner, 1400);
    let file = write::pcap(
        1,
        96,
        &[
            (1_000_000_000, syn.len() as u32, &syn),
            (1_000_010_000, data.len() as u32, &data[..96]),
            (1_000_020_000, data.len() as u32, &data[..200]),
            (1_000_035_000, rst.len() as u32, &rst),
        ],
    );
    let path = tmp("snap96.pcap");
    std::fs::write(&path, &file).expect("write");
    let (ev, summary) = synscope(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(kinds(&ev), ["syn_rejected"], "{summary}");
    assert_eq!(ev[0]["server"], "10.0.0.2:9001");
    assert!(
        summary.contains("engine: 4 frames, 3 TCP packets"),
        "{summary}"
    );
    assert!(
        summary.contains("skipped frames: caplen_over_snaplen 1\n"),
        "{summary}"
    );
}

#[test]
fn tso_super_packets_with_zero_lengths_count_only_when_cut() {
    let inner = Inner::v4();
    let syn = eth_frame(0x0800, &inner.syn());
    let rst = eth_frame(0x0800, &inner.rst());
    // A 64000-byte GRO/TSO segment: IPv4 total length 0 (BIG TCP writes it so).
    let mut big = data_frame(&inner, 64_000);
    big[14 + 2] = 0;
    big[14 + 3] = 0;
    let file = write::pcap(
        1,
        262_144,
        &[
            (1_000_000_000, syn.len() as u32, &syn),
            (1_000_010_000, big.len() as u32, &big),
            (1_000_020_000, big.len() as u32, &big[..128]),
            (1_000_035_000, rst.len() as u32, &rst),
        ],
    );
    let path = tmp("tso.pcap");
    std::fs::write(&path, &file).expect("write");
    let (ev, summary) = synscope(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(kinds(&ev), ["syn_rejected"], "{summary}");
    // The whole one is a TCP packet; the cut one cannot know its length.
    assert!(
        summary.contains("engine: 4 frames, 3 TCP packets"),
        "{summary}"
    );
    assert!(
        summary.contains("skipped frames: bad_ip_total_len 1\n"),
        "{summary}"
    );
}

/// (frames, frames cut by the snap length) of a capture, read by synscope's reader.
fn cut_frames(path: &Path) -> (u64, u64) {
    let mut cut = 0;
    let n = read_file(path, |r| {
        if let Record::Frame(f) = r
            && !f.whole()
        {
            cut += 1;
        }
    })
    .expect("read");
    (n, cut)
}

fn snaplen(path: &Path) -> u32 {
    let b = std::fs::read(path).expect("read");
    u32::from_le_bytes([b[16], b[17], b[18], b[19]])
}

/// `editcap -s 96` copies of `src`, as pcap and as pcapng (editcap's default, the snap length
/// in the interface block): the same events and skipped frames as `src`. Returns how many
/// frames the snap length cut (the same in both formats).
fn editcap_s96_same_events(src: &Path) -> u64 {
    let name = src.file_name().unwrap().to_string_lossy().into_owned();
    let (want, want_summary) = synscope(src);
    let (orig_frames, orig_cut) = cut_frames(src);
    assert_eq!(orig_cut, 0, "{name}");
    let mut cuts = Vec::new();
    for format in ["pcap", "pcapng"] {
        let dst = tmp(&format!("{name}-s96.{format}"));
        let out = Command::new("editcap")
            .args(["-F", format, "-s", "96"])
            .arg(src)
            .arg(&dst)
            .output()
            .expect("editcap (wireshark-common)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (got, summary) = synscope(&dst);
        let (frames, cut) = cut_frames(&dst);
        let sl = snaplen(&dst);
        let _ = std::fs::remove_file(&dst);
        if format == "pcap" {
            assert_eq!(sl, 96, "{name}");
        }
        assert_eq!(frames, orig_frames, "{name} {format}");
        assert_eq!(got, want, "{name} {format}");
        // The same frames skipped (e.g. the scenarios' UDP ticks), nothing more.
        let skipped = |s: &str| {
            s.lines()
                .find(|l| l.starts_with("skipped"))
                .map(str::to_owned)
        };
        assert_eq!(skipped(&summary), skipped(&want_summary), "{name} {format}");
        cuts.push(cut);
    }
    assert_eq!(cuts[0], cuts[1], "{name}: both formats cut the same frames");
    cuts[0]
}

#[test]
fn editcap_s96_copies_give_the_same_events() {
    // The scenario captures hold control packets only (at most 74 bytes): nothing is cut,
    // the snap-length headers are what changes.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pcaps");
    for name in [
        "accept_queue_full",
        "closed_port",
        "probe_leak",
        "fin_unanswered",
    ] {
        assert_eq!(
            editcap_s96_same_events(&dir.join(format!("{name}.pcap"))),
            0
        );
    }
    // A refused SYN among three 1454-byte data frames of another flow: those are cut.
    let inner = Inner::v4();
    let syn = eth_frame(0x0800, &inner.syn());
    let rst = eth_frame(0x0800, &inner.rst());
    let data = data_frame(&inner, 1400);
    let file = write::pcap(
        1,
        65535,
        &[
            (1_000_000_000, syn.len() as u32, &syn),
            (1_000_010_000, data.len() as u32, &data),
            (1_000_020_000, data.len() as u32, &data),
            (1_000_035_000, rst.len() as u32, &rst),
            (1_000_040_000, data.len() as u32, &data),
        ],
    );
    let src = tmp("data.pcap");
    std::fs::write(&src, file).expect("write");
    let cut = editcap_s96_same_events(&src);
    let (ev, _) = synscope(&src);
    let _ = std::fs::remove_file(&src);
    assert_eq!(cut, 3);
    assert_eq!(kinds(&ev), ["syn_rejected"]);
}

/// tcpdump in a namespace, stopped (SIGINT) and reaped on drop, even when a test fails.
struct Tcpdump(Child);

impl Tcpdump {
    fn start(ns: &str, iface: &str, snaplen: &str, file: &Path, filter: &str) -> Tcpdump {
        let mut c = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "--immediate-mode", "-U"])
            .args(["-i", iface, "-s", snaplen, "-w"])
            .arg(file)
            .arg(filter)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("tcpdump");
        let mut line = String::new();
        BufReader::new(c.stderr.take().expect("stderr"))
            .read_line(&mut line)
            .expect("tcpdump stderr");
        let t = Tcpdump(c);
        assert!(line.contains("listening"), "tcpdump: {line}");
        t
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_tcpdump_s96_capture_of_kernel_traffic_is_read() {
    if !support::require_root() {
        return;
    }
    let lab = synscope::lab::Lab::create().expect("lab");
    let file = tmp("tcpdump-s96.pcap");
    let full = tmp("tcpdump-full.pcap");
    let filter = "tcp port 9011 or tcp port 9012 or udp port 9";
    let dump = Tcpdump::start(&lab.server_ns, &lab.server_if, "96", &file, filter);
    let dump_full = Tcpdump::start(&lab.server_ns, &lab.server_if, "0", &full, filter);
    let srv = lab.server_v4;
    // A clean echo of 3000 bytes (data segments longer than 96 bytes), then a closed port.
    let echo = support::echo_server(&lab, 9012, 1);
    let (_, back) = support::echo_once(&lab, SocketAddr::new(srv.into(), 9012), &[7u8; 3000]);
    echo.join().expect("echo server");
    assert_eq!(back.len(), 3000);
    let refused = synscope::lab::in_netns(&lab.client_ns, move || {
        std::net::TcpStream::connect_timeout(&(srv, 9011).into(), Duration::from_secs(5))
            .map(|_| ())
            .map_err(|e| e.kind())
    })
    .expect("client netns");
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));
    thread::sleep(Duration::from_millis(300));
    synscope::lab::in_netns(&lab.client_ns, move || {
        let u = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        u.send_to(b"tick", (srv, 9)).expect("tick");
    })
    .expect("client netns");
    thread::sleep(Duration::from_millis(200));
    drop(dump);
    drop(dump_full);
    drop(lab);
    let (ev, summary) = synscope(&file);
    let (full_ev, _) = synscope(&full);
    let (frames, cut) = cut_frames(&file);
    let (full_frames, full_cut) = cut_frames(&full);
    let sl = snaplen(&file);
    let editcap_cut = editcap_s96_same_events(&full);
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&full);
    assert_eq!(sl, 96);
    // The data segments are longer than 96 bytes: cut by tcpdump live and by editcap alike.
    assert!(cut > 0, "{frames} frames, none cut");
    assert_eq!((frames, cut), (full_frames, editcap_cut));
    assert_eq!(full_cut, 0);
    // Two tcpdumps stamp the same packet independently (a µs apart): compare the rest.
    let no_ts = |ev: &[Value]| -> Vec<Value> {
        ev.iter()
            .map(|e| {
                let mut e = e.clone();
                e.as_object_mut().unwrap().remove("ts");
                e
            })
            .collect()
    };
    assert_eq!(
        no_ts(&ev),
        no_ts(&full_ev),
        "the -s 96 capture tells the same story as the full one"
    );
    assert_eq!(kinds(&ev), ["syn_rejected"], "{summary}");
    assert_eq!(ev[0]["server"], "192.0.2.2:9011");
    assert_eq!(ev[0]["evidence"]["rst_class"], "refused");
    // The UDP tick that moved capture time on is the only frame that is not TCP.
    assert!(summary.contains("skipped frames: not_tcp 1\n"), "{summary}");
}
