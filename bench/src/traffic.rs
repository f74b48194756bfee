//! Traffic generator: prebuilt Ethernet frames (the project's own emitters) sent through an
//! AF_PACKET socket with `sendmmsg` in batches, bypassing the qdisc, at a paced or maximal
//! rate, bounded in count and time. Runs in the client namespace of a lab; every address is
//! in the benchmark range 198.18.0.0/15 and never leaves the namespaces.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::libc;
use synscope::wire::{TcpFlags, emit::SegmentBuilder};

/// Frames per `sendmmsg`.
const BATCH: usize = 64;
/// Distinct frames per workload (cycled).
const FRAMES: usize = 1 << 17;
/// The destination MAC of generated frames: not the receiver's, so its kernel drops them right
/// after the capture hooks (PACKET_OTHERHOST) and every consumer is measured on the same,
/// small, kernel cost.
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x98];

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// SYNs from random spoofed sources to one server endpoint: every frame is selected.
    SynFlood,
    /// Complete connections (SYN, SYN-ACK, ACK, data both ways, FIN both ways, ACK) plus a few
    /// percent of anomalies (unanswered SYNs, refused SYNs, half-open, probe RST before ACK).
    Mix,
    /// Established-flow data segments only: nothing is selected.
    Data,
}

impl Workload {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "syn" => Self::SynFlood,
            "mix" => Self::Mix,
            "data" => Self::Data,
            _ => bail!("workload `{s}`: syn, mix or data"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::SynFlood => "syn",
            Self::Mix => "mix",
            Self::Data => "data",
        }
    }
}

fn frame(b: &SegmentBuilder) -> Vec<u8> {
    let mut f = Vec::with_capacity(80);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&synscope::wire::emit::ip_tcp(b));
    f
}

/// A small deterministic PRNG (xorshift64*): the workloads are the same every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

const SERVER: [u8; 4] = [198, 19, 255, 1];

/// The workload's frames, in sending order.
pub fn frames(w: Workload) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5eed_5c0e);
    let mut out = Vec::with_capacity(FRAMES);
    let client = |rng: &mut Rng| -> ([u8; 4], u16) {
        let r = rng.next();
        (
            [198, 18 + (r >> 62) as u8 % 2, (r >> 8) as u8, r as u8],
            1024 + (r >> 16) as u16 % 60000,
        )
    };
    let payload = [0x5au8; 1000];
    let mut conn = 0u32;
    while out.len() < FRAMES {
        let (cip, cport) = client(&mut rng);
        let isn = rng.next() as u32;
        let sisn = rng.next() as u32;
        let c = |f: TcpFlags, seq: u32, ack: u32| {
            SegmentBuilder::v4(cip, cport, SERVER, 80)
                .flags(f)
                .seq(seq)
                .ack(ack)
                .window(64240)
        };
        let s = |f: TcpFlags, seq: u32, ack: u32| {
            SegmentBuilder::v4(SERVER, 80, cip, cport)
                .flags(f)
                .seq(seq)
                .ack(ack)
                .window(65160)
        };
        let (c1, s1) = (isn.wrapping_add(1), sisn.wrapping_add(1));
        let ack = TcpFlags::ACK;
        match w {
            Workload::SynFlood => out.push(frame(&c(TcpFlags::SYN, isn, 0).mss(1460))),
            Workload::Data => out.push(frame(
                &c(TcpFlags(0x18), c1, s1).payload(&payload[..(rng.next() % 1000) as usize]),
            )),
            Workload::Mix => {
                conn += 1;
                out.push(frame(&c(TcpFlags::SYN, isn, 0).mss(1460)));
                match conn % 100 {
                    // 2%: nobody answers.
                    0 | 1 => {}
                    // 1%: refused.
                    2 => out.push(frame(&s(TcpFlags(0x14), 0, c1))),
                    // 1%: half-open (the client never ACKs).
                    3 => out.push(frame(&s(TcpFlags(0x12), sisn, c1).mss(1460))),
                    // 1%: probe RST before the ACK.
                    4 => {
                        out.push(frame(&s(TcpFlags(0x12), sisn, c1).mss(1460)));
                        out.push(frame(&c(TcpFlags(0x14), c1, s1)));
                        out.push(frame(&c(ack, c1, s1)));
                    }
                    _ => {
                        let (c2, s2) = (c1.wrapping_add(100), s1.wrapping_add(500));
                        out.push(frame(&s(TcpFlags(0x12), sisn, c1).mss(1460)));
                        out.push(frame(&c(ack, c1, s1)));
                        out.push(frame(&c(TcpFlags(0x18), c1, s1).payload(&payload[..100])));
                        out.push(frame(&s(ack, s1, c2)));
                        out.push(frame(&s(TcpFlags(0x18), s1, c2).payload(&payload[..500])));
                        out.push(frame(&c(ack, c2, s2)));
                        out.push(frame(&c(TcpFlags(0x11), c2, s2)));
                        out.push(frame(&s(TcpFlags(0x11), s2, c2.wrapping_add(1))));
                        out.push(frame(&c(ack, c2.wrapping_add(1), s2.wrapping_add(1))));
                    }
                }
            }
        }
    }
    out
}

/// An AF_PACKET socket bound to one interface of the calling thread's namespace.
pub struct Sender {
    fd: OwnedFd,
}

impl Sender {
    pub fn open(iface: &str) -> anyhow::Result<Self> {
        let ifindex =
            nix::net::if_::if_nametoindex(iface).with_context(|| format!("no {iface}"))?;
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        if raw < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: PACKET_QDISC_BYPASS takes an int; pointer and length describe `one`.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid starting value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and the length is its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            bail!("binding to {iface}: {}", std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Sends `count` frames cycling through `frames`, at `pps` packets per second (None: as
    /// fast as possible), stopping early after `max`. Returns (frames sent, seconds).
    pub fn run(
        &self,
        frames: &[Vec<u8>],
        count: u64,
        pps: Option<u64>,
        max: Duration,
    ) -> anyhow::Result<(u64, f64)> {
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(BATCH);
        // SAFETY: mmsghdr is plain data; zeroed is valid (no name, no control).
        let mut msgs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        let start = Instant::now();
        let mut sent = 0u64;
        let mut next = 0usize;
        while sent < count && start.elapsed() < max {
            if let Some(pps) = pps {
                // Pace per batch: wait until this batch is due.
                let due = Duration::from_secs_f64(sent as f64 / pps as f64);
                while start.elapsed() < due {
                    std::hint::spin_loop();
                }
            }
            let n = BATCH.min((count - sent) as usize);
            iov.clear();
            for i in 0..n {
                let f = &frames[(next + i) % frames.len()];
                iov.push(libc::iovec {
                    iov_base: f.as_ptr() as *mut _,
                    iov_len: f.len(),
                });
            }
            for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: the first `n` headers each point at one iovec describing a live frame;
            // the kernel only reads them.
            let r = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS)
                    || e.kind() == std::io::ErrorKind::WouldBlock
                {
                    continue;
                }
                bail!("sendmmsg: {e}");
            }
            sent += r as u64;
            next = (next + r as usize) % frames.len();
        }
        Ok((sent, start.elapsed().as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(f: &[u8]) -> synscope::wire::Segment {
        assert_eq!(&f[..6], &DST_MAC);
        synscope::wire::parse_ip_tcp(&f[14..]).expect("generated frames parse")
    }

    #[test]
    fn workloads_are_what_they_say() {
        let syn = frames(Workload::SynFlood);
        assert_eq!(syn.len(), FRAMES);
        assert!(syn.iter().all(|f| parse(f).flags == TcpFlags::SYN));
        let data = frames(Workload::Data);
        assert!(data.iter().all(|f| {
            let s = parse(f);
            s.flags == TcpFlags(0x18) && s.flags.0 & 0x07 == 0
        }));
        // Mix: 95% complete connections of 10 packets, 2% lone SYNs, 1% refused (2), 1%
        // half-open (2), 1% probes (4): SYNs are one per connection.
        let mix = frames(Workload::Mix);
        let segs: Vec<_> = mix.iter().map(|f| parse(f)).collect();
        let syns = segs.iter().filter(|s| s.flags == TcpFlags::SYN).count();
        let per_conn = mix.len() as f64 / syns as f64;
        assert!((per_conn - 9.6).abs() < 0.01, "{per_conn}");
        // Every address stays in the benchmark range.
        assert!(segs.iter().all(|s| match (s.src.ip(), s.dst.ip()) {
            (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) =>
                a.octets()[0] == 198 && b.octets()[0] == 198,
            _ => false,
        }));
    }
}
