//! `synscope live --mode tap`: a mirror/SPAN port or a capture interface fed by `tc mirred`.
//! The tap XDP program redirects selected frames, tagged with a [`TapMeta`], to one AF_XDP
//! socket per RX queue (xsk-rs); one pinned worker per socket. A flow belongs to worker
//! `flow_hash % N`: a worker that receives another worker's flow hands the packet over on a
//! bounded lock-free `crossbeam` queue (a full queue costs the packet, counted).

use std::{
    num::NonZeroU32,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use synscope_common::{Direction, Reason, TapMeta};
use xsk_rs::{
    FillQueue, FrameDesc, RxQueue, Socket, Umem,
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
};

use crate::{
    capture::{
        CapturedPacket,
        pcap::{Frame, parse_frame},
    },
    detect::{Config, Engine},
    loader::{self, Tap, TapOptions},
    runtime::{Crew, LiveReport, Sinks, WorkerCore, WorkerReport, XskReport},
    wire::{TcpFlags, link::LinkType},
};

/// UMEM frames per socket, and the depth of its fill and RX rings (32 MiB of UMEM per queue:
/// 4096 frames overflowed the RX ring at 400k frames/s in bench/RESULTS.md, 16384 did not).
const FRAMES: u32 = 16384;
/// Frames consumed per `poll_and_consume` batch (fewer ring updates per frame).
const BATCH: usize = 256;
/// UMEM chunk size (xsk-rs default, aligned chunks).
const FRAME_SIZE: usize = 2048;
/// Capacity of each worker's hand-over queue.
const HANDOVER_CAP: usize = 8192;
/// How long a worker holds packets to put them back in capture order: the two directions of a
/// flow may arrive on different queues, and a hand-over adds latency, so a SYN could otherwise
/// reach the engine after its own SYN-ACK or RST. On the 2-vCPU test machine 10 ms was not
/// enough and 50 ms failed 1 run in 5 (a queue's NAPI or a worker can be descheduled that
/// long); events are delayed by as much.
const REORDER_NS: i128 = 100_000_000;

/// A packet waiting in a worker's reorder buffer, ordered by capture time, then arrival.
struct Pending(i128, u64, CapturedPacket);

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap, the oldest packet must come out first.
        (o.0, o.1).cmp(&(self.0, self.1))
    }
}

/// A worker's reorder buffer: packets in, packets older than the window out in time order.
/// Timestamps come from the XDP hook of the tap's RX queues, so two queues can also invert
/// them: an answer (SYN-ACK, RST) stamped before its own SYN. When an answer comes out while
/// a SYN of its flow is still held, that SYN goes first.
#[derive(Default)]
struct Reorder {
    heap: std::collections::BinaryHeap<Pending>,
    seq: u64,
    /// Pure SYNs held, per flow hash.
    syns: std::collections::HashMap<u32, u32>,
}

fn is_syn(p: &CapturedPacket) -> bool {
    let f = p.segment.flags;
    f.contains(TcpFlags::SYN) && !f.contains(TcpFlags::ACK)
}

fn answers(answer: &CapturedPacket, syn: &CapturedPacket) -> bool {
    answer.flow_hash == syn.flow_hash
        && answer.segment.src == syn.segment.dst
        && answer.segment.dst == syn.segment.src
        && answer.segment.flags.contains(TcpFlags::ACK)
        && answer.segment.ack == syn.segment.seq.wrapping_add(1)
}

impl Reorder {
    fn push(&mut self, p: CapturedPacket) {
        self.seq += 1;
        if is_syn(&p) {
            *self.syns.entry(p.flow_hash).or_default() += 1;
        }
        self.heap.push(Pending(p.ts_unix_ns, self.seq, p));
    }

    fn pop(&mut self) -> Option<CapturedPacket> {
        let Pending(_, _, p) = self.heap.pop()?;
        if is_syn(&p)
            && let Some(n) = self.syns.get_mut(&p.flow_hash)
        {
            *n -= 1;
            if *n == 0 {
                self.syns.remove(&p.flow_hash);
            }
        }
        Some(p)
    }

    /// Takes the held SYN that `answer` answers, if any (rare: a scan of the buffer).
    fn take_syn_for(&mut self, answer: &CapturedPacket) -> Option<CapturedPacket> {
        if !self.syns.contains_key(&answer.flow_hash) {
            return None;
        }
        let mut items = std::mem::take(&mut self.heap).into_vec();
        let i = items
            .iter()
            .position(|x| is_syn(&x.2) && answers(answer, &x.2));
        let found = i.map(|i| items.swap_remove(i));
        self.heap = items.into();
        let Pending(_, _, syn) = found?;
        if let Some(n) = self.syns.get_mut(&syn.flow_hash) {
            *n -= 1;
            if *n == 0 {
                self.syns.remove(&syn.flow_hash);
            }
        }
        Some(syn)
    }

    /// Hands every packet captured before `now - REORDER_NS` (all of them with `None`) to `f`.
    fn release(&mut self, now: Option<i128>, mut f: impl FnMut(CapturedPacket)) {
        while let Some(top) = self.heap.peek() {
            if now.is_some_and(|n| top.0 > n - REORDER_NS) {
                break;
            }
            let Some(p) = self.pop() else { break };
            if !is_syn(&p)
                && let Some(syn) = self.take_syn_for(&p)
            {
                f(syn);
            }
            f(p);
        }
    }
}

/// The RX queues of `iface` (`/sys/class/net/IF/queues/rx-*`).
pub fn rx_queues(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// One queue's socket and UMEM, ready for its worker.
struct QueueSocket {
    queue: u32,
    umem: Umem,
    descs: Vec<FrameDesc>,
    rx: RxQueue,
    fq: FillQueue,
    bind_mode: &'static str,
}

/// Creates the AF_XDP socket of `queue`: zero-copy if the driver supports it, copy otherwise.
fn open_socket(iface: &str, queue: u32) -> anyhow::Result<QueueSocket> {
    let name: Interface = iface
        .parse()
        .map_err(|e| anyhow::anyhow!("interface name {iface}: {e:?}"))?;
    let mut last_err = None;
    for (flags, mode) in [
        (BindFlags::XDP_ZEROCOPY, "zero-copy"),
        (BindFlags::XDP_COPY, "copy"),
    ] {
        let ring = QueueSize::new(FRAMES).map_err(|e| anyhow::anyhow!("ring size: {e}"))?;
        // The fill ring holds every frame: all of them wait for the kernel at start.
        let chunk =
            FrameSize::new(FRAME_SIZE as u32).map_err(|e| anyhow::anyhow!("frame size: {e}"))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(chunk)
            .fill_queue_size(ring)
            .build()
            .map_err(|e| anyhow::anyhow!("UMEM config: {e}"))?;
        let (umem, descs) = Umem::new(
            umem_cfg,
            NonZeroU32::new(FRAMES).context("frame count")?,
            false,
        )
        .map_err(|e| anyhow::anyhow!("creating the UMEM for queue {queue}: {e}"))?;
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(flags | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        // SAFETY: this process binds exactly one socket per (interface, queue) pair, and the
        // UMEM is used by this socket only.
        match unsafe { Socket::new(sock_cfg, &umem, &name, queue) } {
            Ok((_tx, rx, Some((mut fq, _cq)))) => {
                // Every frame goes to the kernel now, before the socket is registered in
                // XSKS: a frame redirected to a socket with an empty fill ring is lost.
                // SAFETY: the descriptors belong to this UMEM and are handed over once.
                let filled = unsafe { fq.produce(&descs) };
                if filled != descs.len() {
                    bail!(
                        "queue {queue}: only {filled} of {} frames fit the fill ring",
                        descs.len()
                    );
                }
                return Ok(QueueSocket {
                    queue,
                    umem,
                    descs,
                    rx,
                    fq,
                    bind_mode: mode,
                });
            }
            Ok(_) => bail!("AF_XDP socket of queue {queue} came without a fill queue"),
            Err(e) => last_err = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "binding an AF_XDP socket to {iface} queue {queue} failed in zero-copy and copy mode: {}",
        last_err.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Attaches tap mode to `opts.iface` and runs until `stop` or `duration`.
pub fn run_tap(
    opts: &TapOptions,
    cfg: Config,
    duration: Option<Duration>,
    stop: &AtomicBool,
    sinks: Sinks<'_>,
) -> anyhow::Result<LiveReport> {
    let mut tap = loader::attach_tap(opts)?;
    let queues = rx_queues(&opts.iface);
    let mut sockets = Vec::new();
    for q in 0..queues {
        let s = open_socket(&opts.iface, q)?;
        tap.xsks
            .set(q, s.rx.fd().as_raw_fd(), 0)
            .with_context(|| format!("registering the socket of queue {q} in XSKS"))?;
        sockets.push(s);
    }
    tracing::info!(
        iface = %opts.iface,
        ifindex = tap.ifindex,
        mode = tap.attach_mode,
        queues,
        xsk = sockets.first().map_or("", |s| s.bind_mode),
        xdp_prog_id = tap.prog_id,
        "attached (tap); stop with Ctrl-C"
    );
    // `run` detaches before the workers' last drain; dropping `tap` closes the rest.
    run(
        &mut tap,
        sockets,
        cfg,
        duration,
        &|| stop.load(Ordering::Relaxed),
        sinks,
    )
}

fn run(
    tap: &mut Tap,
    sockets: Vec<QueueSocket>,
    cfg: Config,
    duration: Option<Duration>,
    stop: &dyn Fn() -> bool,
    sinks: Sinks<'_>,
) -> anyhow::Result<LiveReport> {
    let deadline = duration.map(|d| Instant::now() + d);
    let crew = Crew::new(&sinks);
    let n = sockets.len();
    let (inbox_tx, inbox_rx): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| bounded::<CapturedPacket>(HANDOVER_CAP))
        .unzip();
    let xsk_reports: Vec<Arc<std::sync::Mutex<XskReport>>> = sockets
        .iter()
        .map(|s| {
            Arc::new(std::sync::Mutex::new(XskReport {
                queue: s.queue,
                bind_mode: s.bind_mode,
                ..Default::default()
            }))
        })
        .collect();
    // Each worker's progress: the capture time up to which it has read its queue and handed
    // every foreign frame over (i128::MAX once it ends).
    let progress: Arc<Vec<AtomicI64>> = Arc::new((0..n).map(|_| AtomicI64::new(0)).collect());
    let mut handles = Vec::new();
    for (i, (sock, inbox)) in sockets.into_iter().zip(inbox_rx).enumerate() {
        let mut core = crew.worker(i, &cfg);
        let (quit, pin) = (crew.quit.clone(), crew.core(i));
        let peers = inbox_tx.clone();
        let xr = xsk_reports[i].clone();
        let progress = progress.clone();
        let h = thread::Builder::new()
            .name(format!("synscope-tap{i}"))
            .spawn(move || {
                core.pin(pin);
                let mates = Mates {
                    me: i,
                    peers: &peers,
                    progress: &progress,
                };
                tap_worker(sock, inbox, &mates, core, &quit, &xr)
            })
            .context("spawning a tap worker")?;
        handles.push(h);
    }
    drop(inbox_tx);
    let super::CrewResult {
        totals,
        reports: workers,
        detection_latency,
        output_errors,
        interface_lost,
        ran,
        ..
    } = crew.output(
        &cfg,
        handles,
        deadline,
        stop,
        super::Source {
            kernel: &|| tap.stats().ok(),
            detach: &|| tap.detach(),
            iface: &tap.iface,
            ifindex: tap.ifindex,
        },
        sinks,
    )?;
    Ok(LiveReport {
        detection_latency,
        kernel: tap.stats()?,
        workers,
        totals,
        attach_mode: tap.attach_mode,
        egress: false,
        output_errors,
        interface_lost,
        ran,
        xsk: xsk_reports
            .iter()
            .map(|x| x.lock().map(|g| g.clone()).unwrap_or_default())
            .collect(),
        host_tcp: None,
        leaks: None,
    })
}

/// Decodes one tapped frame: its tag (in the headroom right before the data) and its packet.
/// With `keep_ip`, the packet's IP bytes are kept for the evidence recorder.
fn decode(
    meta: &[u8],
    data: &[u8],
    keep_ip: bool,
    unix_ns: impl Fn(u64) -> i128,
) -> Option<CapturedPacket> {
    if meta.len() != TapMeta::SIZE || meta[23] != TapMeta::MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_ne_bytes([meta[i], meta[i + 1], meta[i + 2], meta[i + 3]]);
    let ts = u64::from_ne_bytes(meta[0..8].try_into().ok()?);
    let frame = Frame {
        ts_ns: 0,
        ifindex: u32_at(12),
        link: LinkType::Ethernet,
        orig_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
        data,
    };
    let (segment, vlan_depth, ip) = parse_frame(&frame).ok()?;
    Some(CapturedPacket {
        ts_unix_ns: unix_ns(ts),
        ifindex: u32_at(12),
        rx_queue: u32_at(16),
        direction: Direction::try_from(meta[20]).ok()?,
        reason: Reason::try_from(meta[21]).ok()?,
        flow_hash: u32_at(8),
        wire_len: u16::try_from(data.len()).unwrap_or(u16::MAX),
        vlan_depth,
        weight: 1,
        segment,
        ip: keep_ip.then(|| ip[..ip.len().min(crate::output::evidence::SNAP)].into()),
    })
}

/// What a tap worker knows of the others.
struct Mates<'a> {
    me: usize,
    /// Every worker's hand-over queue, by worker.
    peers: &'a [Sender<CapturedPacket>],
    /// Every worker's progress (capture time, ns), by worker.
    progress: &'a [AtomicI64],
}

impl Mates<'_> {
    /// Capture time up to which every worker has handed its foreign frames over: packets older
    /// than this (minus the reorder window) can no longer be overtaken by a hand-over. A
    /// stalled worker holds the others back, by at most [`MAX_HOLD_NS`].
    fn horizon(&self, now: i128) -> i128 {
        let slowest = self
            .progress
            .iter()
            .map(|p| i128::from(p.load(Ordering::Acquire)))
            .min()
            .unwrap_or(now);
        slowest.clamp(now - MAX_HOLD_NS, now)
    }
}

/// The longest a worker waits for a stalled one before releasing packets anyway.
const MAX_HOLD_NS: i128 = 2_000_000_000;

/// One tap worker: consumes its socket's RX ring, keeps its own flows, hands the others to
/// their owners, and takes what the others hand it.
fn tap_worker(
    mut sock: QueueSocket,
    inbox: Receiver<CapturedPacket>,
    mates: &Mates<'_>,
    mut core: WorkerCore,
    quit: &AtomicBool,
    xr: &std::sync::Mutex<XskReport>,
) -> anyhow::Result<(Engine, WorkerReport)> {
    let (me, peers) = (mates.me, mates.peers);
    // Benchmark hook (bench/src/capture.rs): the AF_XDP I/O ceiling — the same sockets and
    // XDP program, frames only counted and recycled.
    let count_only = std::env::var_os("SYNSCOPE_TAP_COUNT_ONLY").is_some();
    let n = peers.len().max(1);
    let mut batch: Vec<FrameDesc> = sock.descs[..BATCH.min(sock.descs.len())].to_vec();
    let (mut handed, mut full) = (0u64, 0u64);
    let mut last_tick = Instant::now();
    let mut reorder = Reorder::default();
    loop {
        let done = quit.load(Ordering::Acquire);
        // SAFETY: `batch` descriptors are filled by the kernel from this socket's RX ring.
        let got = unsafe {
            sock.rx
                .poll_and_consume(&mut batch, if done { 0 } else { 5 })
        }
        .context("polling the AF_XDP socket")?;
        for desc in batch.iter_mut().take(got) {
            core.report.records += 1;
            if count_only {
                continue;
            }
            // SAFETY: `desc` came from this UMEM's RX ring and is ours until it goes back to
            // the fill ring below.
            let data = unsafe { sock.umem.data(desc) };
            let bytes = data.contents();
            // The kernel puts the XDP metadata right before the frame's data, inside the
            // XDP_PACKET_HEADROOM (256 bytes) of the same UMEM chunk; xsk-rs exposes only the
            // data, so the tag is read through the data pointer.
            let meta: &[u8] = if desc.addr() % FRAME_SIZE >= TapMeta::SIZE {
                // SAFETY: the TapMeta::SIZE bytes before the data lie in the same chunk (the
                // offset check above), inside the one mmap'd UMEM region, and the kernel wrote
                // them before posting the descriptor; nothing writes them while we hold it.
                unsafe {
                    std::slice::from_raw_parts(bytes.as_ptr().sub(TapMeta::SIZE), TapMeta::SIZE)
                }
            } else {
                &[]
            };
            match decode(meta, bytes, core.keeps_evidence(), |ns| core.unix_ns(ns)) {
                Some(p) => {
                    let owner = p.flow_hash as usize % n;
                    if owner == me {
                        reorder.push(p);
                    } else {
                        match peers[owner].try_send(p) {
                            Ok(()) => handed += 1,
                            Err(TrySendError::Full(_)) => full += 1,
                            Err(TrySendError::Disconnected(_)) => {}
                        }
                    }
                }
                None => *core.report.decode_errors.entry("tap_frame").or_default() += 1,
            }
        }
        if got > 0 {
            // SAFETY: the consumed descriptors go back to the kernel, each exactly once.
            unsafe { sock.fq.produce(&batch[..got]) };
        }
        if sock.fq.needs_wakeup() {
            let _ = sock.fq.wakeup(sock.rx.fd_mut(), 0);
        }
        while let Ok(p) = inbox.try_recv() {
            reorder.push(p);
        }
        let now = core.unix_ns(crate::capture::clock::MonoToWall::monotonic_now_ns());
        // Everything this worker read before `now` is handed over or held here.
        mates.progress[me].store(i64::try_from(now).unwrap_or(i64::MAX), Ordering::Release);
        reorder.release((!done).then(|| mates.horizon(now)), |p| core.packet(p));
        if done || last_tick.elapsed() >= Duration::from_millis(50) {
            core.tick();
            last_tick = Instant::now();
        }
        // At the end, read what the RX ring still holds (a worker that was behind has more
        // than one batch there).
        if done && got == 0 {
            break;
        }
    }
    // This worker hands nothing over any more: it holds no one back.
    mates.progress[me].store(i64::MAX, Ordering::Release);
    // Hand-overs that raced the quit flag, then everything still held.
    while let Ok(p) = inbox.try_recv() {
        reorder.push(p);
    }
    reorder.release(None, |p| core.packet(p));
    core.tick();
    if let Ok(mut x) = xr.lock() {
        if let Ok(st) = sock.rx.fd().xdp_statistics() {
            x.rx_dropped = st.rx_dropped();
            x.rx_ring_full = st.rx_ring_full();
            x.rx_invalid_descs = st.rx_invalid_descs();
        }
        x.handed_over = handed;
        x.handover_full = full;
    }
    Ok(core.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{emit::SegmentBuilder, parse_ip_tcp};

    fn pkt(ts: i128, b: SegmentBuilder) -> CapturedPacket {
        CapturedPacket {
            ts_unix_ns: ts,
            ifindex: 1,
            rx_queue: 0,
            direction: Direction::Ingress,
            reason: Reason::Control,
            flow_hash: 7,
            wire_len: 60,
            vlan_depth: 0,
            weight: 1,
            segment: parse_ip_tcp(&crate::wire::emit::ip_tcp(&b)).expect("parses"),
            ip: None,
        }
    }

    #[test]
    fn reorder_releases_in_time_order_and_puts_a_syn_before_its_inverted_answer() {
        let c = |f, seq, ack| {
            SegmentBuilder::v4([192, 0, 2, 1], 5000, [192, 0, 2, 2], 80)
                .flags(f)
                .seq(seq)
                .ack(ack)
        };
        let s = |f, seq, ack| {
            SegmentBuilder::v4([192, 0, 2, 2], 80, [192, 0, 2, 1], 5000)
                .flags(f)
                .seq(seq)
                .ack(ack)
        };
        let mut r = Reorder::default();
        // Arrival order: ACK (ts 30), RST|ACK answering the SYN (ts 10), SYN (ts 20: stamped
        // after its own answer by another queue).
        r.push(pkt(30, c(TcpFlags::ACK, 1, 1)));
        r.push(pkt(10, s(TcpFlags(0x14), 0, 101)));
        r.push(pkt(20, c(TcpFlags::SYN, 100, 0)));
        let mut out = Vec::new();
        r.release(Some(25 + REORDER_NS), |p| out.push(p.ts_unix_ns));
        assert_eq!(
            out,
            [20, 10],
            "the SYN first, then its answer; ts 30 still held"
        );
        r.release(None, |p| out.push(p.ts_unix_ns));
        assert_eq!(out, [20, 10, 30]);
        assert!(r.syns.is_empty());
    }
}

#[cfg(test)]
mod mates_tests {
    use super::*;

    #[test]
    fn the_horizon_waits_for_the_slowest_worker_but_not_forever() {
        let now: i128 = 1_000_000_000_000;
        let progress = [AtomicI64::new(0), AtomicI64::new(0)];
        let mates = Mates {
            me: 0,
            peers: &[],
            progress: &progress,
        };
        progress[0].store((now - 1_000_000) as i64, Ordering::Relaxed);
        progress[1].store((now - 50_000_000) as i64, Ordering::Relaxed);
        assert_eq!(mates.horizon(now), now - 50_000_000);
        progress[1].store((now - 10_000_000_000) as i64, Ordering::Relaxed);
        assert_eq!(mates.horizon(now), now - MAX_HOLD_NS);
        progress[1].store(i64::MAX, Ordering::Relaxed);
        assert_eq!(mates.horizon(now), now - 1_000_000);
    }
}
