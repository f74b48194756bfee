//! A health-probe client built from raw packets (the LVS probe leak): SYN, then — after the server's
//! SYN-ACK — a RST that overtakes the handshake-completing ACK, as LVS/keepalived probes do when
//! the network reorders them. With TSval 0 in the RST (kernels 3.18–4.10) the server's PAWS
//! check drops the RST, the late ACK completes the handshake, and the server keeps an
//! ESTABLISHED socket nobody will close. No kernel socket can produce this sequence, so the
//! client crafts it with the project's emitters on raw sockets; its own kernel's RSTs (it knows
//! no such connection) are dropped by an OUTPUT rule that spares the marked raw socket.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recv, sendto,
    setsockopt, socket, sockopt,
};

use super::Lab;
use crate::wire::{
    TcpFlags,
    emit::{SegmentBuilder, ip_tcp},
    parse_ip_tcp,
};

/// Packet mark of the probe's raw socket: the client's RST-dropping rule spares it.
const PROBE_MARK: u32 = 0x5c;

/// What the probe's RST carries in its timestamp option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RstStamp {
    /// TSval 0: fails the server's PAWS check (the kernel bug of 3.18-4.10 linger-close RSTs).
    Zero,
    /// A valid TSval (the SYN's + 1): the server accepts the RST.
    Valid,
    /// A well-behaved probe: the ACK, then a RST with a valid TSval (no reordering).
    AfterAck,
}

/// What happened, from both ends.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Whether the server answered the late ACK with RST.
    pub server_reset: bool,
    /// ESTABLISHED sockets on the server's port afterwards (`ss` in the server namespace).
    pub established_on_server: usize,
}

/// Installs, in the client namespace, the rule that drops the client kernel's own RSTs to
/// `port` (but not the probe's).
pub fn drop_client_kernel_resets(lab: &Lab, port: u16) -> anyhow::Result<()> {
    let rule = format!(
        "-A OUTPUT -p tcp --dport {port} --tcp-flags RST RST -m mark ! --mark {PROBE_MARK} -j DROP"
    );
    let args: Vec<&str> = rule.split_whitespace().collect();
    lab.exec(&lab.client_ns, &[&["iptables"], &args[..]].concat())
        .context("installing the client's RST-dropping rule")?;
    Ok(())
}

fn raw_socket(proto: SockProtocol) -> anyhow::Result<OwnedFd> {
    socket(AddressFamily::Inet, SockType::Raw, SockFlag::empty(), proto)
        .context("opening a raw socket (needs CAP_NET_RAW)")
}

/// Runs one probe from `client_port` of the lab's client to `port` on its server, from the
/// client namespace; call [`drop_client_kernel_resets`] for `port` first.
pub fn run(lab: &Lab, client_port: u16, port: u16, stamp: RstStamp) -> anyhow::Result<ProbeResult> {
    run_from(lab, lab.client_v4, client_port, port, stamp)
}

/// [`run`] from source address `src` (an address of the client namespace).
pub fn run_from(
    lab: &Lab,
    src: Ipv4Addr,
    client_port: u16,
    port: u16,
    stamp: RstStamp,
) -> anyhow::Result<ProbeResult> {
    let dst = lab.server_v4;
    let r = super::in_netns(&lab.client_ns, move || {
        exchange(src, client_port, dst, port, stamp)
    })??;
    // Let the server settle (a request socket promoted by the late ACK).
    std::thread::sleep(Duration::from_millis(100));
    let established_on_server = established(lab, port)?.len();
    Ok(ProbeResult {
        established_on_server,
        ..r
    })
}

/// The server's ESTABLISHED sockets on `port`, as `ss` lists them: (local, peer), sorted.
pub fn established(lab: &Lab, port: u16) -> anyhow::Result<Vec<(String, String)>> {
    let out = lab.exec(
        &lab.server_ns,
        &[
            "ss",
            "-Htn",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{port}"),
        ],
    )?;
    let mut v: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[2].to_owned(), f[3].to_owned()))
        })
        .collect();
    v.sort();
    Ok(v)
}

fn exchange(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    stamp: RstStamp,
) -> anyhow::Result<ProbeResult> {
    let rx = raw_socket(SockProtocol::Tcp)?;
    setsockopt(
        &rx,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 100_000),
    )?;
    let tx = raw_socket(SockProtocol::Raw)?;
    setsockopt(&tx, sockopt::Mark, &PROBE_MARK)?;
    let to = SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0));
    let send = |b: SegmentBuilder| -> anyhow::Result<()> {
        sendto(tx.as_raw_fd(), &ip_tcp(&b), &to, MsgFlags::empty())
            .context("sending a probe packet")?;
        Ok(())
    };
    let seg = |f: TcpFlags, seq: u32, ack: u32| {
        SegmentBuilder::v4(src.octets(), sport, dst.octets(), dport)
            .flags(f)
            .seq(seq)
            .ack(ack)
    };
    let isn: u32 = 0x5eed_0000;
    let tsval: u32 = 7_000_000;
    send(
        seg(TcpFlags::SYN, isn, 0)
            .mss(1460)
            .sack_permitted()
            .wscale(7)
            .timestamps(tsval, 0),
    )?;
    let (client, server) = (
        SocketAddr::new(IpAddr::V4(src), sport),
        SocketAddr::new(IpAddr::V4(dst), dport),
    );
    // Waits for a packet from the server to the probe's port matching `want`.
    let wait_for = |want: &dyn Fn(&crate::wire::Segment) -> bool, within: Duration| {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let Ok(n) = recv(rx.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
                continue;
            };
            if let Ok(s) = parse_ip_tcp(&buf[..n])
                && s.src == server
                && s.dst == client
                && want(&s)
            {
                return Some(s);
            }
        }
        None
    };
    let Some(synack) = wait_for(
        &|s| s.flags.contains(TcpFlags::SYN | TcpFlags::ACK),
        Duration::from_secs(3),
    ) else {
        bail!("no SYN-ACK from {server} within 3 s");
    };
    let srv_isn = synack.seq;
    let srv_ts = synack.options.timestamps.map_or(0, |t| t.0);
    let ack = seg(TcpFlags::ACK, isn + 1, srv_isn.wrapping_add(1)).timestamps(tsval, srv_ts);
    if stamp == RstStamp::AfterAck {
        send(ack)?;
        std::thread::sleep(Duration::from_millis(2));
        send(
            seg(
                TcpFlags::RST | TcpFlags::ACK,
                isn + 1,
                srv_isn.wrapping_add(1),
            )
            .timestamps(tsval + 1, srv_ts),
        )?;
        return Ok(ProbeResult {
            client,
            server,
            server_reset: false,
            established_on_server: 0,
        });
    }
    // The RST overtakes the ACK that was sent before it.
    let rst_ts = match stamp {
        RstStamp::Zero => 0,
        RstStamp::Valid | RstStamp::AfterAck => tsval + 1,
    };
    send(
        seg(
            TcpFlags::RST | TcpFlags::ACK,
            isn + 1,
            srv_isn.wrapping_add(1),
        )
        .timestamps(rst_ts, srv_ts),
    )?;
    std::thread::sleep(Duration::from_millis(20));
    send(ack)?;
    let server_reset = wait_for(
        &|s| s.flags.contains(TcpFlags::RST),
        Duration::from_millis(1200),
    )
    .is_some();
    Ok(ProbeResult {
        client,
        server,
        server_reset,
        established_on_server: 0,
    })
}

/// Sends one SYN from `client_port` of the lab's client to `port` with timestamp `tsval` (raw
/// socket, from the client namespace) and does not wait for an answer: a second host behind
/// the client's address, as seen through a NAT (PAWS behind NAT).
pub fn send_syn(lab: &Lab, client_port: u16, port: u16, tsval: u32) -> anyhow::Result<()> {
    let (src, dst) = (lab.client_v4, lab.server_v4);
    super::in_netns(&lab.client_ns, move || -> anyhow::Result<()> {
        let tx = raw_socket(SockProtocol::Raw)?;
        setsockopt(&tx, sockopt::Mark, &PROBE_MARK)?;
        let b = SegmentBuilder::v4(src.octets(), client_port, dst.octets(), port)
            .flags(TcpFlags::SYN)
            .seq(0x0bad_5eed)
            .mss(1460)
            .sack_permitted()
            .wscale(7)
            .timestamps(tsval, 0);
        let to = SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0));
        sendto(tx.as_raw_fd(), &ip_tcp(&b), &to, MsgFlags::empty()).context("sending the SYN")?;
        Ok(())
    })?
}
